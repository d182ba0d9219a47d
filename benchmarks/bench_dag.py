"""BIDS indexing and DAG building at trial scale (issue 10; reused by the HPC issue).

    .venv/bin/python benchmarks/bench_dag.py [--visits 100 1000 3000]
        [--pybids-python /tmp/bidslibs/bin/python] [--bids2table-python /tmp/b2t/bin/python]
        [--snakebids-python /tmp/sbids/bin/python]
        [--dry-run] [--dry-run-max 1000] [--profile 1000] [--keep DIR]

For each size it writes a synthetic BIDS tree of zero-byte images into a temporary folder
(3 visits per subject, ses-w000/w024/w048, the last subject fewer so that the visit count
is exact; T1w, T2w, FLAIR under anat/, a GT lesion mask per visit under
derivatives/lesions, valid participants.tsv and phenotype/outcomes.tsv), then times:

* ``ours``: the project's indexer, ``t2lesion.bids.validate(bids, ["PLA", "OCR"],
  check_images=False)`` (what the Snakefile runs at start-up for a real trial);
* each kept BIDS library whose interpreter is given (the libraries are not in the project's
  lock: install each in a throwaway venv and pass its python): pybids ``BIDSLayout(root,
  validate=False)`` with metadata indexing on and off, and building / reloading a layout
  database; bids2table's ``index_dataset``; snakebids' ``generate_inputs`` (pybids inside);
* with ``--dry-run``: ``snakemake -n --quiet rules`` of the whole workflow with that tree as
  the only (test) trial, wall seconds and job count, for sizes up to ``--dry-run-max``;
* with ``--profile N``: a cProfile of that dry run at N visits, cumulative seconds of the
  parts of DAG building (our validation, input functions, wildcard matching, ...).

Prints Markdown tables. Seconds are wall time of one run each (the machine is shared: the
load average is printed alongside).
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WEEKS = (0, 24, 48)
MODALITIES = ("T1w", "T2w", "FLAIR")
ARMS = ("PLA", "OCR")


# --------------------------------------------------------------------------- tree


def make_tree(root: Path, n_visits: int) -> Path:
    """A valid BIDS trial of exactly ``n_visits`` visits with zero-byte images."""
    root.mkdir(parents=True, exist_ok=True)
    desc = {"Name": f"bench {n_visits} visits", "BIDSVersion": "1.9.0", "DatasetType": "raw"}
    (root / "dataset_description.json").write_text(json.dumps(desc))
    deriv = root / "derivatives" / "lesions"
    deriv.mkdir(parents=True)
    (deriv / "dataset_description.json").write_text(
        json.dumps({"Name": "lesions", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
                    "GeneratedBy": [{"Name": "manual"}]})
    )
    n_subjects = -(-n_visits // len(WEEKS))
    part = ["participant_id\tarm\tage\tsex\tregion\tedss_bl"]
    outcomes = ["participant_id\tendpoint\ttime_weeks\tevent"]
    left = n_visits
    for i in range(n_subjects):
        sub = f"{i + 1:05d}"
        part.append(f"sub-{sub}\t{ARMS[i % 2]}\t{25 + i % 40}\t{'MF'[i % 2]}\t{'US' if i % 3 else 'ROW'}\t{(i % 13) / 2:g}")
        outcomes.append(f"sub-{sub}\tCDP24\t{48 + i % 50}\t{i % 2}")
        sessions = []
        for week in WEEKS[: min(len(WEEKS), left)]:
            ses = f"w{week:03d}"
            sessions.append(f"ses-{ses}\t{week}")
            anat = root / f"sub-{sub}" / f"ses-{ses}" / "anat"
            anat.mkdir(parents=True)
            for mod in MODALITIES:
                (anat / f"sub-{sub}_ses-{ses}_{mod}.nii.gz").touch()
            gt = deriv / f"sub-{sub}" / f"ses-{ses}" / "anat"
            gt.mkdir(parents=True)
            (gt / f"sub-{sub}_ses-{ses}_desc-lesion_mask.nii.gz").touch()
            left -= 1
        (root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv").write_text(
            "session_id\tweek\n" + "\n".join(sessions) + "\n"
        )
    (root / "participants.tsv").write_text("\n".join(part) + "\n")
    (root / "phenotype").mkdir()
    (root / "phenotype" / "outcomes.tsv").write_text("\n".join(outcomes) + "\n")
    return root


# --------------------------------------------------------------------------- indexers


def time_ours(bids: Path) -> dict:
    from t2lesion.bids import validate

    t0 = time.perf_counter()
    layout = validate(bids, list(ARMS), check_images=False)
    wall = time.perf_counter() - t0
    return {"ours": (wall, len(layout.visits))}


# Each probe runs in the library's own interpreter and prints {label: [seconds, visits]}.
# "visits" is the number of FLAIR images the library found (a sanity check).
PROBES = {
    "pybids": r"""
import json, sys, time, tempfile, shutil
from bids import BIDSLayout, BIDSLayoutIndexer
root = sys.argv[1]; out = {}
def n_flair(layout):
    return len(layout.get(suffix="FLAIR", extension=".nii.gz", return_type="filename"))
t0 = time.perf_counter(); lay = BIDSLayout(root, validate=False)
out["pybids BIDSLayout(validate=False)"] = [time.perf_counter() - t0, n_flair(lay)]
t0 = time.perf_counter(); lay = BIDSLayout(root, validate=False, derivatives=True)
out["pybids + derivatives=True"] = [time.perf_counter() - t0, len(lay.get(
    scope="derivatives", desc="lesion", suffix="mask", extension=".nii.gz", return_type="filename"))]
t0 = time.perf_counter()
lay = BIDSLayout(root, indexer=BIDSLayoutIndexer(validate=False, index_metadata=False))
out["pybids index_metadata=False"] = [time.perf_counter() - t0, n_flair(lay)]
db = tempfile.mkdtemp()
try:
    t0 = time.perf_counter()
    lay = BIDSLayout(root, database_path=db, indexer=BIDSLayoutIndexer(validate=False, index_metadata=False))
    out["pybids database_path, build"] = [time.perf_counter() - t0, n_flair(lay)]
    del lay
    t0 = time.perf_counter(); lay = BIDSLayout(root, database_path=db)
    out["pybids database_path, reload"] = [time.perf_counter() - t0, n_flair(lay)]
finally:
    shutil.rmtree(db, ignore_errors=True)
print(json.dumps(out))
""",
    "bids2table": r"""
import json, os, sys, time
import bids2table as b2t
root = sys.argv[1]; out = {}
def count(tab, suffix):
    return sum(1 for s in tab.column("suffix").to_pylist() if s == suffix)
t0 = time.perf_counter(); tab = b2t.index_dataset(root)
out["bids2table index_dataset"] = [time.perf_counter() - t0, count(tab, "FLAIR")]
t0 = time.perf_counter(); der = b2t.index_dataset(os.path.join(root, "derivatives", "lesions"))
out["bids2table, derivatives/lesions"] = [time.perf_counter() - t0, count(der, "mask")]
print(json.dumps(out))
""",
    "snakebids": r"""
import json, sys, time
from snakebids import generate_inputs
root = sys.argv[1]; out = {}
spec = {m: {"filters": {"suffix": m, "extension": ".nii.gz", "datatype": "anat"},
            "wildcards": ["subject", "session"]} for m in ("T1w", "T2w", "FLAIR")}
t0 = time.perf_counter()
inputs = generate_inputs(bids_dir=root, pybids_inputs=spec)
out["snakebids generate_inputs"] = [time.perf_counter() - t0, len(inputs["FLAIR"].zip_lists["subject"])]
print(json.dumps(out))
""",
}


def time_library(name: str, python: str, bids: Path, timeout: float) -> dict:
    try:
        res = subprocess.run([python, "-c", PROBES[name], str(bids)], capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        return {name: (float("nan"), f"timeout > {timeout:.0f} s")}
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["?"])[-1]
        return {name: (float("nan"), f"failed: {last[:120]}")}
    return {k: tuple(v) for k, v in json.loads(res.stdout.strip().splitlines()[-1]).items()}


# --------------------------------------------------------------------------- dry run


def write_config(workdir: Path, bids: Path) -> Path:
    import yaml

    cfg = {"trials": {"big": {"role": "test", "bids": str(bids), "control_arm": "PLA", "treatment_arms": ["OCR"]}}}
    path = workdir / "config.yaml"  # also the Snakefile's `configfile:`, so the demo trial is not merged in
    path.write_text(yaml.safe_dump(cfg))
    return path


def snakemake_cmd(workdir: Path, configfile: Path) -> list[str]:
    return ["-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(configfile), "--cores", "1", "-n", "--quiet", "rules"]


def job_total(output: str) -> int | None:
    m = re.search(r"^total\s+(\d+)\s*$", output, re.M)
    return int(m.group(1)) if m else None


def dry_run(bids: Path, timeout: float) -> tuple[float, int | None, str]:
    work = Path(tempfile.mkdtemp(prefix="bench-dag-"))
    try:
        cfg = write_config(work, bids)
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, *snakemake_cmd(work, cfg)], capture_output=True, text=True,
                             timeout=timeout)
        wall = time.perf_counter() - t0
        out = res.stdout + res.stderr
        note = "" if res.returncode == 0 else f"rc={res.returncode}: {out.strip().splitlines()[-1][:120]}"
        return wall, job_total(out), note
    except subprocess.TimeoutExpired:
        return float("nan"), None, f"timeout > {timeout:.0f} s"
    finally:
        shutil.rmtree(work, ignore_errors=True)


# Parts of DAG building, matched against "file:line(function)" of cProfile entries;
# cumulative seconds (a part may contain another: they do not add up to the total).
PARTS = [
    ("our validation (t2lesion.bids.validate)", r"t2lesion/bids\.py:\d+\(validate\)"),
    ("trials_from_config (schema + validation)", r"t2lesion/config\.py:\d+\(trials_from_config\)"),
    ("parse Snakefile + rules", r"snakemake/workflow\.py:\d+\(include\)"),
    ("DAG init (all jobs)", r"snakemake/dag\.py:\d+\(init\)"),
    ("DAG update (per job, recursive)", r"snakemake/dag\.py:\d+\(update_\)"),
    ("rule.expand_input (input functions)", r"snakemake/rules\.py:\d+\(expand_input\)"),
    ("input functions in rules/*.smk", r"common\.smk:\d+\("),
    ("rule.is_producer (wildcard regex match)", r"snakemake/rules\.py:\d+\(is_producer\)"),
    ("rule.get_wildcards", r"snakemake/rules\.py:\d+\(get_wildcards\)"),
    ("regex match (re.Pattern.match)", r"<method 'match' of 're\.Pattern'"),
    ("Job() construction", r"snakemake/jobs\.py:\d+\(__init__\)"),
    ("os.stat (file existence)", r"<built-in method posix\.stat>"),
    ("DAG postprocess", r"snakemake/dag\.py:\d+\(postprocess\)"),
    ("needrun / update_needrun", r"snakemake/dag\.py:\d+\(update_needrun\)"),
]


def profile_dry_run(bids: Path, timeout: float, top: int = 15) -> tuple[float, list, list]:
    work = Path(tempfile.mkdtemp(prefix="bench-prof-"))
    prof = work / "dag.prof"
    try:
        cfg = write_config(work, bids)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cProfile", "-o", str(prof), *snakemake_cmd(work, cfg)],
                       capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t0
        stats = pstats.Stats(str(prof))
        entries = []
        for (file, line, func), (cc, nc, tt, ct, _) in stats.stats.items():
            label = f"{file}:{line}({func})" if file != "~" else func
            entries.append((label, nc, tt, ct))
        parts = []
        for name, pat in PARTS:
            rx = re.compile(pat)
            hits = [e for e in entries if rx.search(e[0])]
            if not hits:
                continue
            if len(hits) > 1 and "smk" in pat:  # several input functions: add them up
                parts.append((name, sum(e[1] for e in hits), sum(e[3] for e in hits)))
            else:  # one function (or same-named ones): the outermost, largest cumulative
                best = max(hits, key=lambda e: e[3])
                parts.append((name, best[1], best[3]))
        by_tottime = sorted(entries, key=lambda e: e[2], reverse=True)[:top]
        hot = max(stats.stats, key=lambda k: stats.stats[k][2])
        callers = sorted(
            ((f"{f}:{l}({fn})", v[1], v[3]) for (f, l, fn), v in stats.stats[hot][4].items()),
            key=lambda c: c[2], reverse=True,
        )[:5]
        return wall, parts, by_tottime, (f"{hot[0]}:{hot[1]}({hot[2]})", callers)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def short(label: str) -> str:
    label = re.sub(r".*/site-packages/", "", label)
    return label.replace(str(REPO) + "/", "")


# --------------------------------------------------------------------------- main


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--visits", type=int, nargs="+", default=[100, 1000, 3000])
    for lib in PROBES:
        ap.add_argument(f"--{lib}-python", metavar="PYTHON", help=f"interpreter of a venv with {lib} installed")
    ap.add_argument("--lib-timeout", type=float, default=900, help="seconds per library probe")
    ap.add_argument("--dry-run", action="store_true", help="time `snakemake -n` of the whole workflow")
    ap.add_argument("--dry-run-max", type=int, default=1000, help="largest size to dry-run (default 1000)")
    ap.add_argument("--dry-run-timeout", type=float, default=600)
    ap.add_argument("--profile", type=int, metavar="N", help="cProfile the dry run at N visits")
    ap.add_argument("--keep", type=Path, help="write the trees here and keep them")
    args = ap.parse_args(argv)

    base = args.keep or Path(tempfile.mkdtemp(prefix="bench-bids-"))
    sizes = sorted(set(args.visits) | ({args.profile} if args.profile else set()))
    results: dict[str, dict[int, tuple]] = {}
    extra: dict[int, dict] = {}
    try:
        for n in sizes:
            bids = base / f"visits-{n}" / "bids"
            t0 = time.perf_counter()
            if not bids.exists():
                make_tree(bids, n)
            extra[n] = {"make": time.perf_counter() - t0, "load": os.getloadavg()[0]}
            if n in args.visits:
                rows = time_ours(bids)
                for lib in PROBES:
                    py = getattr(args, f"{lib.replace('-', '_')}_python")
                    if py:
                        rows.update(time_library(lib, py, bids, args.lib_timeout))
                if args.dry_run and n <= args.dry_run_max:
                    wall, jobs, note = dry_run(bids, args.dry_run_timeout)
                    rows["snakemake -n (whole workflow)"] = (wall, f"{jobs} jobs" if jobs else note)
                for k, v in rows.items():
                    results.setdefault(k, {})[n] = v
                    print(f"# {n} visits  {k}: {v[0]:.2f} s ({v[1]})", file=sys.stderr, flush=True)
            if args.profile == n:
                extra[n]["profile"] = profile_dry_run(bids, args.dry_run_timeout)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    shown = [n for n in sizes if n in args.visits]
    print("| indexer / step | " + " | ".join(f"{n:,} visits" for n in shown) + " |")
    print("|---|" + "---:|" * len(shown))
    for k, by_n in results.items():
        cells = []
        for n in shown:
            if n not in by_n:
                cells.append("–")
                continue
            s, what = by_n[n]
            cell = "n/a" if s != s else f"{s:.2f} s"
            if isinstance(what, str):
                cell += f" ({what})"
            elif what != n:
                cell += f" (found {what})"
            cells.append(cell)
        print(f"| {k} | " + " | ".join(cells) + " |")
    print("| (tree: seconds to write / load average) | "
          + " | ".join(f"{extra[n]['make']:.1f} / {extra[n]['load']:.1f}" for n in shown) + " |")

    if args.profile:
        wall, parts, top, (hot, callers) = extra[args.profile]["profile"]
        print(f"\ncProfile of `snakemake -n` at {args.profile:,} visits ({wall:.1f} s wall under the profiler); "
              "cumulative seconds, parts nest:\n")
        print("| part of DAG building | calls | cumulative s |")
        print("|---|---:|---:|")
        for name, calls, ct in parts:
            print(f"| {name} | {calls:,} | {ct:.2f} |")
        print("\nTop own-time (tottime) entries:\n")
        print("| function | calls | own s | cumulative s |")
        print("|---|---:|---:|---:|")
        for label, nc, tt, ct in top:
            print(f"| `{short(label)}` | {nc:,} | {tt:.2f} | {ct:.2f} |")
        print(f"\nCallers of `{short(hot)}` (the largest own time):\n")
        print("| caller | calls | cumulative s |")
        print("|---|---:|---:|")
        for label, nc, ct in callers:
            print(f"| `{short(label)}` | {nc:,} | {ct:.2f} |")


if __name__ == "__main__":
    main()
