"""Loader-only throughput of t2lesion.unet.data.PatchDataset, per CPU core.

One synthetic visit the size of the MNI 1x1x3 grid (t2lesion.preprocess._common.target_grid,
63 × 233 × 197 z, y, x) with a brain ellipsoid and ~40 lesions is stored in the training layout
(patches.store_visit's .npy: 3 contrasts, mask, α) and memory-mapped; batches of 10 are drawn
in one thread (BLAS limited to one thread), so patches/s is per core. Reported per patch size
and augmentation share: wall-clock rate and the rate per CPU-second (robust when other jobs
share the machine).

``--workers N`` then times the loader as training runs it, at the paper's window: N batches at
once from as many threads as Keras gives the dataset, in Keras-style worker threads
(``training.loader: threads``) and in worker processes over shared memory (``processes``),
wall-clock patches/s and the training process's own CPU-seconds per patch (the processes'
work is not in it). Threads share the interpreter lock for the Python parts; processes do not.

    .venv/bin/python benchmarks/bench_loader.py [--batches 6] [--seed 0] [--workers 2 [--rounds 4]]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from t2lesion.unet.data import PatchDataset  # noqa: E402
from t2lesion.unet.losses import alpha_map  # noqa: E402
from t2lesion.unet.patches import CHANNELS, index_windows  # noqa: E402

FALLBACK_GRID = (63, 233, 197)


def grid_shape() -> tuple[int, int, int]:
    try:
        import SimpleITK as sitk

        from t2lesion.preprocess._common import target_grid

        return tuple(int(n) for n in sitk.GetArrayViewFromImage(target_grid()).shape)
    except Exception:  # nilearn's template absent: the known size
        return FALLBACK_GRID


def synthetic_visit(path: Path, shape, seed: int) -> None:
    """A stored visit (the brain box of an ellipsoid brain) with random ellipsoidal lesions."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    c = [(n - 1) / 2 for n in shape]
    brain = ((zz - c[0]) / (0.45 * shape[0])) ** 2 + ((yy - c[1]) / (0.42 * shape[1])) ** 2 \
        + ((xx - c[2]) / (0.40 * shape[2])) ** 2 <= 1
    gt = np.zeros(shape, bool)
    inside = np.argwhere(brain)
    for centre in inside[rng.choice(len(inside), 40, replace=False)]:
        r = rng.uniform([1, 2, 2], [3, 8, 8])
        gt |= ((zz - centre[0]) / r[0]) ** 2 + ((yy - centre[1]) / r[1]) ** 2 + ((xx - centre[2]) / r[2]) ** 2 <= 1
    gt &= brain
    idx = np.nonzero(brain)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    arr = np.empty(tuple(s.stop - s.start for s in box) + (len(CHANNELS),), np.float32)
    for ch in range(3):
        arr[..., ch] = np.where(brain, rng.normal(0, 1, shape), 0)[box] + (1.5 - ch) * gt[box]
    arr[..., 3] = gt[box]
    arr[..., 4] = alpha_map(gt)[box]
    np.save(path, arr)


def visit_windows(npy: Path, patch):
    """The stored visit's window index (20 % overlap), as the loader reads it."""
    windows = index_windows(npy, patch, 0.2)
    windows.insert(0, "path", str(npy))
    windows.insert(0, "session", "w000")
    windows.insert(0, "participant_id", "sub-bench")
    return windows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=6, help="timed batches of 10 per setting")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=0, help="also time N threads against N worker processes")
    ap.add_argument("--rounds", type=int, default=4, help="alternated rounds of --workers timings")
    args = ap.parse_args(argv)

    shape = grid_shape()
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "visit.npy"
        synthetic_visit(npy, shape, args.seed)
        stored = np.load(npy, mmap_mode="r").shape
        print(f"grid {shape} (z, y, x), stored brain box {stored[:3]}, python {platform.python_version()}, "
              f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
        print(f"{'patch':>12} {'augmented':>9} {'windows':>7} {'ms/patch':>9} {'patches/s':>9} {'per CPU-s':>9}")
        for patch in ((32, 96, 96), (16, 48, 48)):
            windows = visit_windows(npy, patch)
            for frac in (0.0, 0.5, 1.0):
                ds = PatchDataset(windows, patch, batch_size=10, augment_fraction=frac, seed=args.seed,
                                  steps=args.batches + 1)
                ds[0]  # warm: open the memory map, fault in pages
                w0, c0 = time.perf_counter(), time.process_time()
                for i in range(1, args.batches + 1):
                    ds[i]
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                n = 10 * args.batches
                print(f"{'×'.join(map(str, patch)):>12} {frac:>9.1f} {len(windows):>7d} {1000 * wall / n:>9.1f} "
                      f"{n / wall:>9.1f} {n / cpu:>9.1f}")
        if args.workers:
            time_workers(npy, args.workers, max(2 * args.batches, 2 * args.workers), args.seed, args.rounds)
    return 0


def time_workers(npy: Path, workers: int, batches: int, seed: int, rounds: int, patch=(32, 96, 96)) -> None:
    """N batches at once, as Keras' threads ask for them: threads against worker processes,
    alternated ``rounds`` times (a shared machine's speed drifts); median and range."""
    windows = visit_windows(npy, patch)
    print(f"\n{workers} workers, batches of 10 of {'×'.join(map(str, patch))}, {batches} timed batches, "
          f"{rounds} rounds alternated")
    rates: dict[tuple[float, str], list[float]] = {}
    parent: dict[tuple[float, str], list[float]] = {}
    for _ in range(rounds):
        for frac in (0.5, 1.0):
            for kind in ("threads", "processes"):
                ds = PatchDataset(windows, patch, batch_size=10, augment_fraction=frac, seed=seed, steps=10_000,
                                  workers=workers, use_multiprocessing=kind == "processes")
                try:
                    with ThreadPoolExecutor(ds.workers) as pool:
                        list(pool.map(lambda i: ds[i][0].shape, range(ds.workers)))  # warm: start, map the visit
                        w0, c0 = time.perf_counter(), time.process_time()
                        list(pool.map(lambda i: ds[i][0].shape, range(ds.workers, ds.workers + batches)))
                        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                finally:
                    ds.close()
                rates.setdefault((frac, kind), []).append(10 * batches / wall)
                parent.setdefault((frac, kind), []).append(1000 * cpu / (10 * batches))
    print(f"{'loader':>10} {'augmented':>9} {'patches/s (median, range)':>26} {'parent CPU-ms/patch':>19}")
    for (frac, kind), r in rates.items():
        print(f"{kind:>10} {frac:>9.1f} {statistics.median(r):>10.1f} ({min(r):.1f}–{max(r):.1f}){'':>3} "
              f"{statistics.median(parent[frac, kind]):>19.1f}")


if __name__ == "__main__":
    raise SystemExit(main())
