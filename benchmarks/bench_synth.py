"""Speed of the synthetic trial generator (t2lesion.synth) at demo and test size.

    .venv/bin/python benchmarks/bench_synth.py [--n-jobs 2] [--demo-subjects-per-arm 2] [--skip-demo]

Writes each trial to a temporary folder (deleted afterwards) and prints, per size, the
visit count, wall seconds, seconds per visit and per 10 visits, and the CPU seconds of
this process and its workers (CPU time is what to compare when the machine is shared;
the load average is printed alongside).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from t2lesion import synth  # noqa: E402


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run(name: str, params: synth.SynthParams, n_jobs: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-synth-"))
    try:
        # the template is prepared once per process (cached) and shared with forked
        # workers; time it separately so per-visit figures are not dominated by it
        t0, c0 = time.perf_counter(), cpu_seconds()
        synth._get_template(params)
        t_template = time.perf_counter() - t0
        load0 = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), cpu_seconds()
        summary = synth.generate_trial(tmp / "trial", params, n_jobs=n_jobs, progress=False)
        wall = time.perf_counter() - t0
        cpu = cpu_seconds() - c0
        load1 = os.getloadavg()[0]
        size_mb = sum(f.stat().st_size for f in (tmp / "trial").rglob("*") if f.is_file()) / 1e6
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = summary["n_visits"]
    n_x, vox, _ = synth._native_geometry(params)
    row = {
        "size": name,
        "template_mm": params.template_resolution_mm,
        "native_voxels": f"{n_x[0]}x{n_x[1]}x{n_x[2]}",
        "participants": summary["n_participants"],
        "visits": n,
        "n_jobs": n_jobs,
        "template_prep_s": round(t_template, 1),
        "wall_s": round(wall, 1),
        "wall_s_per_visit": round(wall / n, 2),
        "wall_s_per_10_visits": round(10 * wall / n, 1),
        "cpu_s_per_visit": round(cpu / n, 2),
        "output_mb": round(size_mb, 1),
        "loadavg_start_end": f"{load0:.1f}/{load1:.1f}",
    }
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--demo-subjects-per-arm", type=int, default=2)
    ap.add_argument("--demo-weeks", type=int, nargs="+", default=[0, 24, 48])
    ap.add_argument("--skip-demo", action="store_true")
    args = ap.parse_args(argv)
    print(f"cores: {os.cpu_count()}  n_jobs: {args.n_jobs}", flush=True)
    rows = []
    test = synth.SynthParams.tiny(seed=3, subjects_per_arm=1, weeks=[0, 24])
    rows.append(run("test (SynthParams.tiny)", test, args.n_jobs))
    print(rows[-1], flush=True)
    if not args.skip_demo:
        demo = synth.SynthParams.from_dict(
            {"seed": 7, "subjects_per_arm": args.demo_subjects_per_arm, "weeks": args.demo_weeks}
        )
        rows.append(run("demo (defaults, 1 mm template)", demo, args.n_jobs))
        print(rows[-1], flush=True)
    keys = list(rows[0])
    print()
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
