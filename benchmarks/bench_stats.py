"""CPU seconds of the endpoint statistics (t2lesion.stats) as a trial grows.

    .venv/bin/python benchmarks/bench_stats.py [--n-per-arm 4 150 1500] [--seed 0]

For each size, the tabular synthetic cohort (``t2lesion.synth.clinical.simulate_cohort``: two arms,
weeks 0/24/48/96, the four endpoints) gives a long table with two sources (``gt`` and a
noisy prediction), participants and outcomes, written as the TSVs the rules read. Then the
path-level entry points the stats rules call run one after the other in this process, each
timed in wall and CPU seconds (this process; tables and figures written to a temporary
folder): ``run_change`` (+ figure), ``run_ancova``, ``run_cox`` (univariable and
multivariable models, every endpoint), ``run_km`` (+ one figure per endpoint); and the count
model of the new/enlarging lesions (``count_endpoint`` on ``simulate_counts``, one source).
The first size also pays the libraries' first use (lifelines, statsmodels, matplotlib), which
is printed apart as the imports' time.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd


def timed(fn, *args, **kwargs) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    fn(*args, **kwargs)
    return time.perf_counter() - w0, time.process_time() - c0


def write_inputs(folder: Path, n_per_arm: int, seed: int) -> dict[str, Path]:
    from t2lesion.synth.clinical import long_table_from_trajectory, simulate_cohort

    participants, tlv_long, outcomes = simulate_cohort(n_per_arm, seed)
    rng = np.random.default_rng(seed + 1000)
    gt = long_table_from_trajectory(tlv_long, "gt", rng)
    pred = gt.assign(source="pred", tlv_ml=gt["tlv_ml"] * np.exp(rng.normal(0.05, 0.05, len(gt))))
    paths = {k: folder / f"{k}.tsv" for k in ("participants", "long", "outcomes")}
    participants.drop(columns="tlv_bl_ml").to_csv(paths["participants"], sep="\t", index=False)
    pd.concat([gt, pred], ignore_index=True).to_csv(paths["long"], sep="\t", index=False)
    outcomes.to_csv(paths["outcomes"], sep="\t", index=False)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-per-arm", type=int, nargs="+", default=[4, 150, 1500])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the skipped models' notes would bury the figures
    warnings.simplefilter("ignore")

    w0, c0 = time.perf_counter(), time.process_time()
    import lifelines  # noqa: F401
    import matplotlib.pyplot  # noqa: F401
    import statsmodels.api  # noqa: F401

    from t2lesion import stats
    from t2lesion.stats.counts import count_endpoint, simulate_counts
    print(f"imports: {time.perf_counter() - w0:.2f} s wall, {time.process_time() - c0:.2f} CPU-s")
    print(f"load average {os.getloadavg()[0]:.1f}")
    print("n per arm | analysis | wall s | CPU-s")
    for n in args.n_per_arm:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            p = write_inputs(out, n, args.seed)
            rows = {
                "change (+ figure)": timed(stats.run_change, p["long"], p["participants"], out / "c.tsv",
                                           out / "cs.tsv", out / "c.png", "PLA"),
                "ANCOVA": timed(stats.run_ancova, p["long"], p["participants"], out / "a.tsv", out / "aa.tsv", "PLA"),
                "Cox (4 endpoints x 3 models)": timed(stats.run_cox, p["long"], p["participants"], p["outcomes"],
                                                      out / "x.tsv", out / "t4.tsv", "PLA"),
                "KM + log-rank (+ 4 figures)": timed(stats.run_km, p["long"], p["participants"], p["outcomes"],
                                                     out / "k.tsv", out / "kc.tsv", str(out / "km_{endpoint}.png"),
                                                     "PLA"),
                "negative binomial (counts)": timed(count_endpoint, simulate_counts(n, seed=args.seed), "PLA"),
            }
        for name, (wall, cpu) in rows.items():
            print(f"{n} | {name} | {wall:.2f} | {cpu:.2f}")
        print(f"{n} | total | {sum(r[0] for r in rows.values()):.2f} | {sum(r[1] for r in rows.values()):.2f}")


if __name__ == "__main__":
    main()
