"""Benchmark of t2lesion.evaluation.segmentation.evaluate_visit on a trial-sized visit.

A 64 × 240 × 200 (z, y, x) visit at 1 × 1 × 3 mm with several hundred lesions,
timed against a naive reference (scipy.ndimage.label, then one full-volume
boolean mask per lesion) that computes the same numbers, and across the 6/18/26
connectivity options. Run standalone:

    .venv/bin/python benchmarks/bench_metrics.py [--lesions 600] [--repeats 5]

``make_visit`` and ``naive_evaluate`` are also the independent reference of
tests/test_metrics.py.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from t2lesion.evaluation.segmentation import evaluate_visit, label_lesions  # noqa: E402

_RANK = {6: 1, 18: 2, 26: 3}


def draw_ellipsoid(mask, centre, radii):
    """Set an axis-aligned ellipsoid (radii in voxels, z y x) inside ``mask``, clipped at the border."""
    lo = [max(int(math.floor(c - r)), 0) for c, r in zip(centre, radii)]
    hi = [min(int(math.ceil(c + r)) + 1, s) for c, r, s in zip(centre, radii, mask.shape)]
    if any(h <= l for l, h in zip(lo, hi)):
        return
    zz, yy, xx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    inside = (((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2
              + ((xx - centre[2]) / radii[2]) ** 2) <= 1.0
    mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] |= inside


def make_visit(shape=(64, 240, 200), n_lesions=600, seed=0, miss=0.15, extra=0.15):
    """GT and a plausible prediction: ellipsoid lesions, sizes skewed small (1×1×3 mm voxels).

    The prediction jitters each GT lesion's centre and radii, misses a share ``miss``
    of them and adds ``extra`` × n_lesions false blobs.
    """
    rng = np.random.default_rng(seed)
    gt = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    margin = np.array([2, 10, 10])
    for _ in range(n_lesions):
        c = rng.uniform(margin, np.array(shape) - margin)
        r_mm = rng.lognormal(mean=0.9, sigma=0.5)
        radii = np.array([max(r_mm / 3, 0.5), r_mm, r_mm]) * rng.uniform(0.7, 1.3, 3)
        draw_ellipsoid(gt, c, radii)
        if rng.random() > miss:
            draw_ellipsoid(pred, c + rng.normal(0, 0.7, 3) * [0.3, 1, 1], radii * rng.uniform(0.7, 1.3, 3))
    for _ in range(int(extra * n_lesions)):
        c = rng.uniform(margin, np.array(shape) - margin)
        r_mm = rng.lognormal(mean=0.6, sigma=0.4)
        draw_ellipsoid(pred, c, np.array([max(r_mm / 3, 0.5), r_mm, r_mm]))
    return gt, pred


def naive_evaluate(gt, pred, connectivity=18, min_size=3, overlap=0.10, fp_overlap=None):
    """Straightforward per-lesion loop with scipy.ndimage; same definitions as
    t2lesion.evaluation.segmentation.

    Returns a dict with the lesion-level counts and rates and the per-lesion arrays
    (``gt_sizes, gt_frac, gt_dc, pred_sizes, pred_frac, pred_dc``), lesions in
    raster order of their first voxel.
    """
    fp_t = overlap if fp_overlap is None else fp_overlap
    structure = ndi.generate_binary_structure(3, _RANK[connectivity])

    def components(mask):
        labels, n = ndi.label(mask, structure)
        kept = np.zeros_like(labels)
        k = 0
        for i in range(1, n + 1):
            m = labels == i
            if m.sum() >= min_size:
                k += 1
                kept[m] = k
        return kept, k

    gl, ng = components(gt)
    pl, npred = components(pred)

    def side(labels, n, other_labels):
        other_clean = other_labels > 0
        sizes, frac, dc = [], [], []
        for i in range(1, n + 1):
            m = labels == i
            size = int(m.sum())
            cov = int((m & other_clean).sum())
            touching = np.unique(other_labels[m])
            touching = touching[touching > 0]
            union = sum(int((other_labels == j).sum()) for j in touching)
            sizes.append(size)
            frac.append(cov / size)
            dc.append(2 * cov / (size + union))
        return np.array(sizes), np.array(frac), np.array(dc)

    gs, gf, gd = side(gl, ng, pl)
    ps, pf, pd_ = side(pl, npred, gl)

    def matches(f, t):
        return (f > 0) & (f >= t)

    detected, tp, fp = matches(gf, overlap), matches(pf, overlap), ~matches(pf, fp_t)
    return {
        "gt_tlc": ng, "pred_tlc": npred,
        "ltpr": detected.mean() if ng else math.nan,
        "lppv": tp.mean() if npred else math.nan,
        "lfpr": fp.mean() if npred else math.nan,
        "gt_sizes": gs, "gt_frac": gf, "gt_dc": gd,
        "pred_sizes": ps, "pred_frac": pf, "pred_dc": pd_,
    }


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _best(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lesions", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    gt, pred = make_visit(n_lesions=args.lesions, seed=args.seed)
    print(f"machine: {_cpu()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"numpy {np.__version__}; visit {gt.shape} (z, y, x), "
          f"{gt.sum()} GT / {pred.sum()} predicted lesion voxels")

    t_fast, (row, lesions) = _best(lambda: evaluate_visit(gt, pred, 0.003), args.repeats)
    print(f"evaluate_visit (cc3d, 18-conn): {t_fast * 1e3:8.1f} ms  "
          f"({row['gt_tlc']} GT, {row['pred_tlc']} predicted lesions; DC {row['dc']:.3f}, "
          f"LTPR {row['ltpr']:.3f}, LPPV {row['lppv']:.3f}, LFPR {row['lfpr']:.3f})")

    t_naive, ref = _best(lambda: naive_evaluate(gt, pred), 1)
    agree = all(math.isclose(row[k], ref[k]) for k in ("ltpr", "lppv", "lfpr")) and \
        row["gt_tlc"] == ref["gt_tlc"] and row["pred_tlc"] == ref["pred_tlc"] and \
        np.allclose(lesions.loc[lesions["kind"] == "gt", "lesion_dc"], ref["gt_dc"])
    print(f"naive scipy.ndimage loop:       {t_naive * 1e3:8.1f} ms  -> ratio naive / fast = "
          f"{t_naive / t_fast:.0f}x; results agree: {agree}")

    for conn in (6, 18, 26):
        t, (r, _) = _best(lambda c=conn: evaluate_visit(gt, pred, 0.003, connectivity=c), args.repeats)
        print(f"evaluate_visit connectivity {conn:2d}: {t * 1e3:8.1f} ms  ({r['gt_tlc']} GT lesions)")

    structure = ndi.generate_binary_structure(3, 2)
    t_cc, _ = _best(lambda: label_lesions(gt, 18, 3), args.repeats)
    t_nd, _ = _best(lambda: ndi.label(gt, structure), args.repeats)
    print(f"labelling only: label_lesions (cc3d + size filter) {t_cc * 1e3:.1f} ms, "
          f"scipy.ndimage.label {t_nd * 1e3:.1f} ms -> ratio {t_nd / t_cc:.1f}x")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
