"""CPU seconds per visit and step from the workflow's own ``benchmark:`` files.

After a run (e.g. ``make demo``), sums Snakemake's ``cpu_time`` of every per-visit
preprocessing job (``results/benchmarks/<rule>/trial-<t>_sub-<s>_ses-<v>.tsv``: one job
per visit and step) per visit, and prints the mean per step for baseline and follow-up
visits and over all visits. Runs made before the per-contrast jobs were merged (files
``..._ses-<v>_<T1w|T2w|FLAIR>.tsv`` and a ``normalise`` step) are read too, for comparison. This is the figure the rules actually cost, Python start-up of each job
included (``benchmarks/bench_preprocess.py`` measures the steps in one process).

Snakemake samples a job's process tree every 0.5 s for its first 15 s, then every 30 s, so
its ``cpu_time`` misses up to 0.5 s of a short job and up to 30 s of CPU at the end of a
job that ran longer than 15 s wall (a merged per-visit job on a loaded machine). Where the
job's log (``results/logs/<rule>/<same name>.log``) ends with the CPU line that
``t2lesion.logs.rule_log`` writes (exact: the job's own process and children, start-up
included), that figure is used instead; ``--benchmark-only`` ignores the logs. Wall seconds
are shown beside it.

    .venv/bin/python benchmarks/rule_cpu.py [results/benchmarks] [--logs results/logs]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

# n4 and coregister (now one job), normalise, resample_gt and qc: rules of their own in older
# runs, until they joined n4_coregister and resample
# (resample and resample_with_gt write their benchmarks and logs under resample/)
STEPS = ("n4_coregister", "n4", "coregister", "skull_strip", "register_mni", "register_baseline", "resample", "resample_gt",
         "qc", "normalise")
NAME = re.compile(r"trial-(?P<trial>[^_]+)_sub-(?P<sub>[^_]+)_ses-(?P<ses>[^_.]+)(?:_(?P<mod>T1w|T2w|FLAIR))?\.tsv")


CPU_LOG = re.compile(r"job CPU seconds: (?P<cpu>[0-9.]+)\s*$")


def log_cpu(path: Path) -> float | None:
    """The CPU seconds a job's log ends with (``t2lesion.logs.CPU_LINE``), or None."""
    if not path.is_file():
        return None
    lines = path.read_text(errors="replace").strip().splitlines()
    m = CPU_LOG.search(lines[-1]) if lines else None
    return float(m["cpu"]) if m else None


def collect(root: Path, logs: Path | None = None) -> pd.DataFrame:
    """One row per job: step, trial, sub, ses, cpu seconds (the log's exact figure where
    ``logs`` has it, else the benchmark's sampled ``cpu_time``), where from, wall seconds."""
    rows = []
    for step in STEPS:
        for f in sorted((root / step).glob("*.tsv")):
            m = NAME.fullmatch(f.name)
            if m is None:
                continue
            bench = pd.read_csv(f, sep="\t")
            exact = log_cpu(logs / step / f.with_suffix(".log").name) if logs is not None else None
            rows.append({"step": step, **m.groupdict(),
                         "cpu_s": bench["cpu_time"].iloc[-1] if exact is None else exact,
                         "from_log": exact is not None, "wall_s": bench["s"].iloc[-1]})
    if not rows:
        raise SystemExit(f"{root}: no per-visit benchmark files of the steps {STEPS}")
    return pd.DataFrame(rows)


def per_visit(jobs: pd.DataFrame) -> pd.DataFrame:
    """Mean seconds per visit and step, for baseline, follow-up and all visits."""
    visit = jobs.groupby(["trial", "sub", "ses", "step"])[["cpu_s", "wall_s"]].sum().unstack("step", fill_value=0.0)
    kind = pd.Series(["baseline" if s == "w000" else "follow-up" for s in visit.index.get_level_values("ses")],
                     index=visit.index)
    out = {}
    everyone = pd.Series(True, index=kind.index)
    for label, sel in (("baseline", kind == "baseline"), ("follow-up", kind == "follow-up"), ("all", everyone)):
        sub = visit[sel.to_numpy()]
        if len(sub):
            col = sub["cpu_s"].mean()
            col["total"] = sub["cpu_s"].sum(axis=1).mean()
            col["total wall"] = sub["wall_s"].sum(axis=1).mean()
            col["visits"] = len(sub)
            out[label] = col
    steps = [s for s in STEPS if s in visit["cpu_s"].columns]
    return pd.DataFrame(out).reindex([*steps, "total", "total wall", "visits"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default="results/benchmarks", type=Path)
    ap.add_argument("--logs", type=Path, default=None, help="the jobs' logs (default: logs/ beside root)")
    ap.add_argument("--benchmark-only", action="store_true", help="only the benchmark files' sampled cpu_time")
    args = ap.parse_args()
    logs = None if args.benchmark_only else (args.logs or args.root.parent / "logs")
    jobs = collect(args.root, logs)
    table = per_visit(jobs)
    print(f"CPU seconds per visit (mean over visits; 'total wall' = summed job wall seconds); "
          f"{int(jobs['from_log'].sum())} of {len(jobs)} jobs' CPU from their logs, the rest from benchmark files")
    print(table.round(1).to_markdown())


if __name__ == "__main__":
    main()
