"""How long `snakemake -n` takes to build the whole workflow's DAG as a trial grows (issue 15).

    .venv/bin/python benchmarks/bench_dag_scale.py [--visits 100 1000 3000] [--repeat 1]
        [--profile N] [--keep DIR] [--timeout 900]

For each size, a synthetic BIDS tree of zero-byte images (3 visits per subject,
ses-w000/w024/w048, a GT mask per visit, valid tables; ``bench_dag.make_tree``) is the only
(test) trial of a user config, and ``snakemake -n --quiet rules --cores 1`` of the whole
workflow is timed from process start to exit (Python start-up and Snakefile parsing
included). Prints one line per size: visits, jobs, wall seconds and CPU seconds (user +
system of the snakemake process; the better figure on a shared machine), each the best of
``--repeat`` runs, the load average before the run, and in the note how many of the wall
seconds Snakemake spent building the DAG ("Building DAG of jobs...", timed by
``snakemake_phases.py``); the rest is start-up and the dry run's needrun, scheduling and
printing of every job.

``--floor`` also times, after each size, a generated workflow with as many jobs but nothing
of ours (script rules with a log, a benchmark and string inputs): Snakemake's own cost per
job, which no change to this workflow's rules can remove.

``--profile N`` also runs the N-visit dry run under cProfile and prints the functions with
the largest own time and how much of the total is spent in the project's own code
(``rules/*.smk``, ``t2lesion/``) versus Snakemake's.
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from bench_dag import job_total, make_tree, snakemake_cmd, write_config  # noqa: E402


def env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}


PHASES = str(HERE / "snakemake_phases.py")
BUILD = re.compile(r"DAG built in ([0-9.]+) s")


def _phased(args: list[str]) -> list[str]:
    """``-m snakemake ...`` run through snakemake_phases.py, which reports the DAG-building time."""
    return [PHASES, *args[2:]] if args[:2] == ["-m", "snakemake"] else args


def _timed(args: list[str], timeout: float, work: Path) -> tuple[float, float, int | None, str]:
    """Run ``python args`` once: wall and CPU seconds (user + system of the child), job count, a
    note on failure (and, for a snakemake command, the seconds it spent building the DAG);
    ``work`` is removed afterwards."""
    try:
        r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        res = subprocess.run([sys.executable, *_phased(args)], capture_output=True, text=True, timeout=timeout,
                             env=env())
        wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        out = res.stdout + res.stderr
        note = "" if res.returncode == 0 else f"rc={res.returncode}: {out.strip().splitlines()[-1][:160]}"
        build = BUILD.search(out)
        if build:
            note = f"DAG built in {float(build.group(1)):.1f} s {note}".strip()
        return wall, cpu, job_total(out), note
    except subprocess.TimeoutExpired:
        return float("nan"), float("nan"), None, f"timeout > {timeout:.0f} s"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def dry_run(bids: Path, timeout: float, profile: Path | None = None) -> tuple[float, float, int | None, str]:
    """Wall and CPU seconds (user + system of the snakemake process), job count, a note on failure."""
    work = Path(tempfile.mkdtemp(prefix="bench-dag-scale-"))
    cfg = write_config(work, bids)
    pre = ["-m", "cProfile", "-o", str(profile)] if profile else []
    return _timed([*pre, *snakemake_cmd(work, cfg)], timeout, work)


FLOOR_SNAKEFILE = """
# Snakemake's own cost per job: the same number of jobs as the workflow, each a rule with a
# script, a log, a benchmark and threads like ours, but plain string inputs (no input
# functions, no validation, no config).
N, K = {n_visits}, {per_visit}
VISITS = [f"v{{i:05d}}" for i in range(N)]

rule all:
    input:
        expand("out/{{v}}/r{{k}}.txt", v=VISITS, k=K - 1),

for k in range(K):

    rule:
        name:
            f"r{{k}}"
        input:
            [f"out/{{{{v}}}}/r{{k - 1}}.txt"] if k else []
        output:
            f"out/{{{{v}}}}/r{{k}}.txt"
        log:
            f"logs/r{{k}}/{{{{v}}}}.log"
        benchmark:
            f"bench/r{{k}}/{{{{v}}}}.tsv"
        threads: 1
        script:
            "noop.py"
"""


def floor_dry_run(n_visits: int, jobs: int, timeout: float) -> tuple[float, float, int | None, str]:
    """``snakemake -n`` of FLOOR_SNAKEFILE with about ``jobs`` jobs (``jobs / n_visits`` per visit)."""
    work = Path(tempfile.mkdtemp(prefix="bench-dag-floor-"))
    per_visit = max(1, round((jobs - 1) / n_visits))
    (work / "Snakefile").write_text(FLOOR_SNAKEFILE.format(n_visits=n_visits, per_visit=per_visit))
    (work / "noop.py").write_text("")
    cmd = ["-m", "snakemake", "--snakefile", str(work / "Snakefile"), "--directory", str(work),
           "--cores", "1", "-n", "--quiet", "rules"]
    return _timed(cmd, timeout, work)


def ours(file: str) -> bool:
    return file.startswith(str(REPO)) and "site-packages" not in file


def print_profile(path: Path, top: int) -> None:
    st = pstats.Stats(str(path))
    rows = [(f"{f}:{ln}({fn})" if f != "~" else fn, nc, tt, ct, f)
            for (f, ln, fn), (cc, nc, tt, ct, _) in st.stats.items()]
    total = sum(r[2] for r in rows)
    own = sum(r[2] for r in rows if ours(r[4]))
    print(f"\nprofile: {total:.1f} s of own time in all, {own:.2f} s ({100 * own / total:.1f} %) in this "
          f"project's code (rules/*.smk, t2lesion/), the rest in Snakemake, the standard library and builtins")
    print(f"{'own s':>8} {'cum s':>8} {'calls':>10}  function")
    for label, nc, tt, ct, _ in sorted(rows, key=lambda r: r[2], reverse=True)[:top]:
        label = re.sub(r".*/site-packages/", "", label).replace(str(REPO) + "/", "")
        print(f"{tt:8.2f} {ct:8.2f} {nc:10,}  {label}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--visits", type=int, nargs="+", default=[100, 1000, 3000])
    ap.add_argument("--repeat", type=int, default=1, help="runs per size; the best is printed")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per dry run")
    ap.add_argument("--profile", type=int, metavar="N", help="also cProfile the dry run at N visits")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--floor", action="store_true",
                    help="after each size, time a plain workflow with as many jobs (Snakemake's own cost)")
    ap.add_argument("--keep", type=Path, help="write the trees here and keep them (reused when present)")
    args = ap.parse_args(argv)

    base = args.keep or Path(tempfile.mkdtemp(prefix="bench-dag-scale-bids-"))
    sizes = sorted(set(args.visits))
    try:
        print(f"{'visits':>7} {'jobs':>7} {'wall s':>8} {'CPU s':>8} {'load':>5}  note", flush=True)
        for n in sizes:
            bids = base / f"visits-{n}" / "bids"
            if not bids.exists():
                make_tree(bids, n)
            best, best_cpu, jobs, note = float("inf"), float("inf"), None, ""
            load = os.getloadavg()[0]
            for _ in range(args.repeat):
                wall, cpu, j, note = dry_run(bids, args.timeout)
                best, best_cpu, jobs = min(best, wall), min(best_cpu, cpu), j if j is not None else jobs
            print(f"{n:>7,} {jobs or 0:>7,} {best:>8.1f} {best_cpu:>8.1f} {load:>5.1f}  {note}", flush=True)
            if args.floor and jobs:
                wall, cpu, fjobs, note = floor_dry_run(n, jobs, args.timeout)
                print(f"{'(floor)':>7} {fjobs or 0:>7,} {wall:>8.1f} {cpu:>8.1f} {os.getloadavg()[0]:>5.1f}  "
                      f"Snakemake alone: as many script jobs, string inputs {note}", flush=True)
        if args.profile:
            bids = base / f"visits-{args.profile}" / "bids"
            if not bids.exists():
                make_tree(bids, args.profile)
            prof = base / "dag.prof"
            wall, _, jobs, note = dry_run(bids, args.timeout * 3, profile=prof)
            print(f"\ncProfile of the {args.profile:,}-visit dry run: {wall:.1f} s under the profiler, {jobs} jobs {note}")
            print_profile(prof, args.top)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
