"""New-lesion detection in the MSSEG-2 manner, lesion by lesion (docs/DESIGN.md §15).

Inputs per follow-up visit: a GT and a predicted *new-lesion* mask (e.g. labels 1 and 4 of the
tracking QC maps, :data:`t2lesion.tracking.QC_LABELS`; or a source's new or enlarging lesions,
labels 1 and 2). Lesions are connected components as everywhere in the project
(:func:`t2lesion.evaluation.segmentation.label_lesions`, ``connectivity`` 18); components of
fewer than ``min_size`` voxels (the size floor, default 3, docs/DESIGN.md §8) are dropped on both
sides before anything is counted.

* a GT lesion is **detected** when at least one voxel of it (and ≥ ``overlap`` of its voxels;
  the default 0 means "any voxel", the MSSEG-2 rule) lies in the cleaned predicted mask;
* a predicted lesion is a **true positive** when it matches the cleaned GT mask by the same rule.

Sensitivity = detected GT lesions / GT lesions; precision = true-positive predicted lesions /
predicted lesions; F1 = 2 · sensitivity · precision / (sensitivity + precision) (NaN when either
is undefined; 0 when both are 0). Counts are pooled over visits (lesion-wise, not a mean of
per-visit ratios), so a visit without new lesions still adds its false positives.

Size bins: a lesion falls in bin [lo, hi) by its own size in voxels (GT lesions for
sensitivity, predicted lesions for precision). Default :data:`DEFAULT_BINS` = [3, 10), [10, 50),
[50, ∞): small lesions near the floor (the flicker of a few voxels that the tracking docstring
describes), medium, large; the issue's target "F1 ≥ 0.6 for lesions ≥ 10 voxels" is the pool of
the bins from 10 up (:func:`pooled`). Bins must be increasing and non-overlapping; lesions
outside every bin count only in the ``all`` row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from t2lesion.evaluation.segmentation import CONNECTIVITY, MIN_SIZE, _as_mask, _check_params, _label, _matches

#: Default size bins, voxels, half-open [lo, hi); None = no upper bound.
DEFAULT_BINS: tuple[tuple[int, int | None], ...] = ((3, 10), (10, 50), (50, None))
#: Default matching threshold: any shared voxel (MSSEG-2).
OVERLAP = 0.0
COUNT_COLUMNS = ["n_gt", "n_gt_detected", "n_pred", "n_pred_tp"]
#: Columns of :func:`detect_visit` rows and :func:`detection_table`.
BIN_COLUMNS = ["bin", "size_low", "size_high"]
TABLE_COLUMNS = ["source", *BIN_COLUMNS, *COUNT_COLUMNS, "sensitivity", "precision", "f1", "n_visits", "min_size",
                 "overlap", "connectivity"]


def check_bins(bins) -> tuple[tuple[int, int | None], ...]:
    """``bins`` as a tuple of (lo, hi) with hi None for ∞; ValueError naming the bad bin."""
    out: list[tuple[int, int | None]] = []
    for b in bins:
        try:
            lo, hi = b
        except (TypeError, ValueError):
            raise ValueError(f"size bin {b!r} is not a (low, high) pair") from None
        if isinstance(lo, bool) or not isinstance(lo, (int, np.integer)) or lo < 1:
            raise ValueError(f"size bin {b!r}: low must be an integer >= 1")
        if hi is not None and (isinstance(hi, bool) or not isinstance(hi, (int, np.integer)) or hi <= lo):
            raise ValueError(f"size bin {b!r}: high must be an integer > low, or None for no bound")
        if out and out[-1][1] is None:
            raise ValueError(f"size bin {b!r} follows an unbounded bin")
        if out and lo < out[-1][1]:
            raise ValueError(f"size bin {b!r} overlaps or precedes the bin before it")
        out.append((int(lo), None if hi is None else int(hi)))
    return tuple(out)


def bin_label(lo: int, hi: int | None) -> str:
    """``[10,50)``, ``[50,inf)``."""
    return f"[{lo},{'inf' if hi is None else hi})"


def _in_bin(sizes: np.ndarray, lo: int, hi: int | None) -> np.ndarray:
    return (sizes >= lo) & (sizes < hi) if hi is not None else sizes >= lo


def lesion_hits(gt, pred, *, min_size: int = MIN_SIZE, overlap: float = OVERLAP,
                connectivity: int = CONNECTIVITY) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-lesion sizes and hits of one visit: ``(gt_sizes, gt_detected, pred_sizes, pred_tp)``."""
    _check_params(connectivity, min_size, overlap, None)
    g, p = _as_mask(gt, "gt"), _as_mask(pred, "pred")
    if g.shape != p.shape:
        raise ValueError(f"gt and pred shapes differ: {g.shape} vs {p.shape}")
    lg, lp = _label(g, connectivity, min_size), _label(p, connectivity, min_size)
    in_p = np.zeros(g.size, bool)
    in_p[lp.idx] = True
    in_g = np.zeros(g.size, bool)
    in_g[lg.idx] = True
    cov_g = np.bincount(lg.lab[in_p[lg.idx]], minlength=lg.sizes.size + 1)[1:]
    cov_p = np.bincount(lp.lab[in_g[lp.idx]], minlength=lp.sizes.size + 1)[1:]
    det = _matches(cov_g / np.maximum(lg.sizes, 1), overlap)
    tp = _matches(cov_p / np.maximum(lp.sizes, 1), overlap)
    return lg.sizes, det, lp.sizes, tp


def detect_visit(gt, pred, bins=DEFAULT_BINS, *, min_size: int = MIN_SIZE, overlap: float = OVERLAP,
                 connectivity: int = CONNECTIVITY) -> pd.DataFrame:
    """Lesion counts of one visit, one row per size bin plus ``all``: columns
    ``bin, size_low, size_high, n_gt, n_gt_detected, n_pred, n_pred_tp``."""
    bins = check_bins(bins)
    gs, det, ps, tp = lesion_hits(gt, pred, min_size=min_size, overlap=overlap, connectivity=connectivity)
    rows = []
    for lo, hi in ((min_size, None), *bins):
        ig, ip = _in_bin(gs, lo, hi), _in_bin(ps, lo, hi)
        rows.append({"bin": "all" if not rows else bin_label(lo, hi), "size_low": lo, "size_high": hi,
                     "n_gt": int(ig.sum()), "n_gt_detected": int((ig & det).sum()),
                     "n_pred": int(ip.sum()), "n_pred_tp": int((ip & tp).sum())})
    return pd.DataFrame(rows, columns=BIN_COLUMNS + COUNT_COLUMNS)


def rates(n_gt, n_gt_detected, n_pred, n_pred_tp) -> dict:
    """Sensitivity, precision and F1 from lesion counts (module docstring)."""
    sens = n_gt_detected / n_gt if n_gt else math.nan
    prec = n_pred_tp / n_pred if n_pred else math.nan
    if math.isnan(sens) or math.isnan(prec):
        f1 = math.nan
    else:
        f1 = 2 * sens * prec / (sens + prec) if sens + prec > 0 else 0.0
    return {"sensitivity": sens, "precision": prec, "f1": f1}


def detection_table(visit_rows: pd.DataFrame, *, min_size: int = MIN_SIZE, overlap: float = OVERLAP,
                    connectivity: int = CONNECTIVITY) -> pd.DataFrame:
    """Counts of :func:`detect_visit` rows (with a ``source`` column) pooled per source × bin, with
    sensitivity, precision and F1 (columns :data:`TABLE_COLUMNS`)."""
    need = {"source", *BIN_COLUMNS, *COUNT_COLUMNS}
    missing = sorted(need - set(visit_rows.columns))
    if missing:
        raise ValueError(f"detection rows lack column(s) {missing}")
    rows = []
    for (src, b), d in visit_rows.groupby(["source", "bin"], sort=False):
        c = {k: int(d[k].sum()) for k in COUNT_COLUMNS}
        rows.append({"source": src, "bin": b, "size_low": d["size_low"].iloc[0], "size_high": d["size_high"].iloc[0],
                     **c, **rates(*c.values()), "n_visits": len(d), "min_size": min_size, "overlap": overlap,
                     "connectivity": connectivity})
    return pd.DataFrame(rows).reindex(columns=TABLE_COLUMNS)


def pooled(table: pd.DataFrame, source: str, min_voxels: int) -> dict:
    """Counts and rates of ``source`` over the bins of :func:`detection_table` that start at or
    above ``min_voxels`` (the ``all`` row excluded). ValueError when those bins do not cover
    [min_voxels, ∞) without a gap, so that "lesions ≥ 10 voxels" means exactly that."""
    t = table[(table["source"] == source) & (table["bin"] != "all")]
    t = t[pd.to_numeric(t["size_low"]) >= min_voxels].sort_values("size_low")
    edges = [float(min_voxels)]
    for r in t.itertuples():
        hi = pd.to_numeric(r.size_high, errors="coerce")
        if float(r.size_low) != edges[-1]:
            raise ValueError(f"detection bins of {source!r} do not cover [{min_voxels}, inf) without a gap")
        edges.append(math.inf if pd.isna(hi) else float(hi))
    if not len(t) or edges[-1] != math.inf:
        raise ValueError(f"detection bins of {source!r} do not cover [{min_voxels}, inf)")
    c = {k: int(t[k].sum()) for k in COUNT_COLUMNS}
    return {**c, **rates(*c.values())}


def sources_of(table: pd.DataFrame) -> Sequence[str]:
    """The sources of a detection table, in order of appearance."""
    return list(dict.fromkeys(table["source"]))


__all__ = ["BIN_COLUMNS", "COUNT_COLUMNS", "DEFAULT_BINS", "OVERLAP", "TABLE_COLUMNS", "bin_label", "check_bins",
           "detect_visit", "detection_table", "lesion_hits", "pooled", "rates", "sources_of"]
