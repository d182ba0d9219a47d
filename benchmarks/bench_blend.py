"""The host's share of a visit's inference (t2lesion.unet.infer.predict_visit), without a model.

On a GPU the model's calls are the device's work; everything else in ``predict_visit`` runs on
one host core between them: cutting the windows, averaging the folds' moments, the window
statistics (μ_w², H(μ_w)), the blending, the maps (prob, SD, entropy, MI) and the mask. This
script times that share alone: the folds are stand-ins that return fixed moments (what
``FoldPredictor.moments`` hands back from the device), so only host work is measured. The
visit: the MNI 1×1×3 mm grid (63×233×197), a brain box of 57×195×157 (the GPU benchmark's),
the paper's 32×96×96 windows at 20 % overlap (12 windows), batch 8, 3 folds.

Run it with the code to measure first on ``PYTHONPATH`` to compare two versions in one
session (e.g. a worktree of the commit before)::

    PYTHONPATH=/tmp/old .venv/bin/python benchmarks/bench_blend.py --repeat 7
    .venv/bin/python benchmarks/bench_blend.py --repeat 7

``--device-s S`` makes each fold's call wait S seconds without holding the GIL, as a call
waiting on a GPU does, and times the visit with the model calls in the caller's thread and
prefetched in a worker thread (``predict_visit(prefetch=...)``), to show how much of the host's
work the prefetch hides behind the device's. A stand-in, not a GPU measurement.

Prints the median seconds per visit and the CPU seconds; ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH: a worktree there wins

from t2lesion.unet import infer as I  # noqa: E402


class FixedMoments(I.FoldPredictor):
    """A fold that returns the same moments for every window (no model, no host work)."""

    def __init__(self, patch, batch, rng, device_s=0.0):
        self.kind, self.n_channels, self.patch_size, self.mc_samples = "mc", 3, tuple(patch), 10
        self.device_s = float(device_s)
        p = rng.uniform(0.01, 0.99, size=(batch,) + tuple(patch)).astype(np.float32)
        self.fixed = np.stack([p, p * p + 0.01 * p, I.binary_entropy(p).astype(np.float32)], axis=-1)

    def moments(self, x, seed):
        if self.device_s:
            time.sleep(self.device_s)  # releases the GIL, like waiting on the device
        return self.fixed[: len(x)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[63, 233, 197])
    ap.add_argument("--box", type=int, nargs=3, default=[57, 195, 157])
    ap.add_argument("--patch", type=int, nargs=3, default=[32, 96, 96])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--device-s", type=float, default=0.0, help="seconds each fold's call waits (stand-in device)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    images = rng.normal(size=tuple(args.shape) + (3,)).astype(np.float32)
    brain = np.zeros(args.shape, bool)
    lo = [(s - b) // 2 for s, b in zip(args.shape, args.box)]
    brain[tuple(slice(a, a + b) for a, b in zip(lo, args.box))] = True
    folds = [FixedMoments(args.patch, args.batch, rng, args.device_s) for _ in range(args.folds)]
    kw = dict(patch_size=args.patch, overlap=0.2, blending="gaussian", mc_samples=10, batch_size=args.batch,
              seed=0, threshold=0.5)
    code = str(Path(I.__file__).resolve().parents[2])
    has_prefetch = "prefetch" in inspect.signature(I.predict_visit).parameters
    modes = ([False, True] if args.device_s else [True]) if has_prefetch else [None]
    rep = {"code": code, "device_s": args.device_s, "repeat": args.repeat, "runs": {}}
    for prefetch in modes:
        extra = {} if prefetch is None else {"prefetch": prefetch}
        st: dict = {}
        I.predict_visit(folds, images, brain, stats=st, **extra, **kw)  # warm-up
        wall, cpu = [], []
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            I.predict_visit(folds, images, brain, **extra, **kw)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        run = {"windows": st["windows"], "batches": st.get("batches"), "s_per_visit": statistics.median(wall),
               "cpu_s_per_visit": statistics.median(cpu)}
        rep["runs"][str(prefetch)] = run
        device = len(folds) * run["batches"] * args.device_s
        print(f"{code}: prefetch {prefetch}: {run['windows']} windows in {run['batches']} batches, "
              f"{run['s_per_visit']:.3f} s per visit (median of {args.repeat}; stand-in device {device:.2f} s), "
              f"{run['cpu_s_per_visit']:.3f} CPU-s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
