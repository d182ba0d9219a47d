"""Loader-only throughput of t2lesion.unet.data.PatchDataset, per CPU core.

One synthetic visit the size of the MNI 1x1x3 grid (t2lesion.preprocess._common.target_grid,
63 × 233 × 197 z, y, x) with a brain ellipsoid and ~40 lesions is stored in the training layout
(patches.store_visit's .npy: 3 contrasts, mask, α) and memory-mapped; batches of 10 are drawn
in one thread (BLAS limited to one thread), so patches/s is per core. A GPU node's loader
capacity is this number times the cores given to loader workers (workers scale as processes;
threads share the GIL for the Python parts). Reported per patch size and augmentation share:
wall-clock rate and the rate per CPU-second (robust when other jobs share the machine).

    .venv/bin/python benchmarks/bench_loader.py [--batches 6] [--seed 0]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=6, help="timed batches of 10 per setting")
    ap.add_argument("--seed", type=int, default=0)
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
            windows = index_windows(npy, patch, 0.2)
            windows.insert(0, "path", str(npy))
            windows.insert(0, "session", "w000")
            windows.insert(0, "participant_id", "sub-bench")
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
