"""CPU seconds per visit and step from the workflow's own ``benchmark:`` files.

After a run (e.g. ``make demo``), sums Snakemake's ``cpu_time`` of every per-visit
preprocessing job (``results/benchmarks/<rule>/trial-<t>_sub-<s>_ses-<v>[_<mod>].tsv``)
per visit, and prints the mean per step for baseline and follow-up visits and over all
visits. This is the figure the rules actually cost, Python start-up of each job
included (``benchmarks/bench_preprocess.py`` measures the steps in one process).

Snakemake samples a job's process tree about once a second, so a job of a few seconds
can be under-counted by up to a second; wall seconds are shown beside it.

    .venv/bin/python benchmarks/rule_cpu.py [results/benchmarks]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

STEPS = ("n4", "coregister", "skull_strip", "register_mni", "register_baseline", "resample", "resample_gt",
         "normalise", "qc")
NAME = re.compile(r"trial-(?P<trial>[^_]+)_sub-(?P<sub>[^_]+)_ses-(?P<ses>[^_.]+)(?:_(?P<mod>[^.]+))?\.tsv")


def collect(root: Path) -> pd.DataFrame:
    """One row per job: step, trial, sub, ses, cpu_time, wall seconds."""
    rows = []
    for step in STEPS:
        for f in sorted((root / step).glob("*.tsv")):
            m = NAME.fullmatch(f.name)
            if m is None:
                continue
            bench = pd.read_csv(f, sep="\t")
            rows.append({"step": step, **m.groupdict(), "cpu_s": bench["cpu_time"].iloc[-1],
                         "wall_s": bench["s"].iloc[-1]})
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
    table = per_visit(collect(ap.parse_args().root))
    print("CPU seconds per visit (mean over visits; 'total wall' = summed job wall seconds)")
    print(table.round(1).to_markdown())


if __name__ == "__main__":
    main()
