"""JAX's persistent compilation cache (config ``dl.compile_cache``): a job's start without and
with the compilations of an earlier job.

Runs the same job ``--runs`` times, each a fresh process on the JAX backend as Snakemake runs
it, all with one empty cache folder (set by ``t2lesion.unet.backend.compile_cache``, as
``start_job`` does): import and build a multi-arm U-Net, then the pipeline's MC predictor
(``infer.FoldPredictor``) on a batch of windows twice. Reports per run: Keras import + model
build (its ops are compiled too), compile + first prediction, a second prediction, and the
cache's entries; then one run with the cache off (``--off``).

    .venv/bin/python benchmarks/bench_compile_cache.py [--widths 4 8 8] [--patch 8 32 32] [--runs 3] [--off]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
t0 = time.perf_counter()
from t2lesion.unet import backend
spec = json.loads(sys.argv[1])
backend.compile_cache(spec["cache"], "jax")
import numpy as np
from t2lesion.unet.infer import FoldPredictor
from t2lesion.unet.model import ModelConfig, build_model
n = len(spec["widths"])
cfg = ModelConfig.from_dict({"patch_size": spec["patch"], "widths": spec["widths"],
                             "strides": [[1, 2, 2]] + [[2, 2, 2]] * (n - 2),
                             "block_kernels": [[[1, 3, 3], [3, 3, 3]]] * n, "supervision_levels": 1, "seed": 3})
model = build_model(cfg)
t1 = time.perf_counter()
pred = FoldPredictor(model, mc_samples=spec["mc"])
x = np.random.default_rng(0).normal(size=(spec["batch"], *spec["patch"], 3)).astype("float32")
pred.moments(x, 5)
t2 = time.perf_counter()
pred.moments(x, 6)
t3 = time.perf_counter()
print("RESULT " + json.dumps({"build_s": t1 - t0, "first_s": t2 - t1, "second_s": t3 - t2}))
"""


def run(spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "KERAS_BACKEND": "jax", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], env=env, capture_output=True, text=True,
                         cwd=REPO, check=True)
    return json.loads(res.stdout.split("RESULT ", 1)[1].splitlines()[0])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[4, 8, 8])
    ap.add_argument("--patch", type=int, nargs=3, default=[8, 32, 32])
    ap.add_argument("--mc", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--off", action="store_true", help="also one run with the cache off")
    a = ap.parse_args(argv)
    print(f"# widths {a.widths}, windows {a.batch}×{a.patch}, {a.mc} MC passes; load {os.getloadavg()[0]:.1f}")
    print("| run | cache | import + build | compile + first call | second call | entries after |")
    print("|---|---|---:|---:|---:|---:|")
    spec = {"widths": a.widths, "patch": a.patch, "mc": a.mc, "batch": a.batch}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "jax"
        for k in range(1, a.runs + 1):
            before = len(list(cache.iterdir())) if cache.is_dir() else 0
            t = run({**spec, "cache": str(cache)})
            after = len(list(cache.iterdir()))
            print(f"| {k} | {'empty' if before == 0 else f'{before} entries'} | {t['build_s']:.1f} s | "
                  f"{t['first_s']:.2f} s | {t['second_s']:.3f} s | {after} |", flush=True)
    if a.off:
        t = run({**spec, "cache": None})
        print(f"| - | off | {t['build_s']:.1f} s | {t['first_s']:.2f} s | {t['second_s']:.3f} s | - |")
    return 0


if __name__ == "__main__":
    t0 = time.perf_counter()
    code = main()
    print(f"# {time.perf_counter() - t0:.0f} s in all")
    raise SystemExit(code)
