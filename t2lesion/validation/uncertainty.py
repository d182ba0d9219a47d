"""Does the uncertainty map flag the U-Net's errors? (docs/DESIGN.md §15)

Voxel level: inside the brain mask, a voxel is an *error* when the prediction differs from GT
(false positive or false negative). The AUROC of the uncertainty (the ensemble's mutual
information, MI) for the errors is the probability that a random error voxel has a higher MI
than a random correct voxel, ties counting one half. Computed exactly from ranks (Mann–Whitney
U): with R₊ the sum of the error voxels' ranks among all brain voxels (ties get the average
rank), n₊ errors and n₋ correct voxels,

    AUROC = (R₊ − n₊ (n₊ + 1) / 2) / (n₊ n₋)

1 = every error is more uncertain than every correct voxel, 0.5 = no better than chance (a
constant map gives exactly 0.5), 0 = reversed. Undefined (NaN) with no error or no correct voxel.

Visit level: Spearman's rank correlation of the per-visit Dice with the visit's mean MI over the
brain; a useful map gives a negative ρ (the worse-segmented visits are the more uncertain).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps

#: Columns of :func:`visit_uncertainty`'s rows.
VISIT_COLUMNS = ["n_brain", "n_errors", "n_fp", "n_fn", "auroc", "mean_mi", "mean_mi_errors", "mean_mi_correct"]


def auroc(scores, labels) -> float:
    """Exact AUROC of ``scores`` for the binary ``labels`` (ranks, ties averaged); NaN if one class is empty.

    NaN scores are not allowed (they have no rank): raises ValueError.
    """
    s = np.asarray(scores, dtype=float).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in size: {s.size} vs {y.size}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    r = sps.rankdata(s, method="average")
    u = r[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _masks(pred, gt, brain, uncertainty=None):
    p, g = np.asarray(pred) != 0, np.asarray(gt) != 0
    b = np.ones(p.shape, bool) if brain is None else np.asarray(brain) != 0
    shapes = {a.shape for a in (p, g, b)} | ({np.shape(uncertainty)} if uncertainty is not None else set())
    if len(shapes) != 1:
        raise ValueError(f"pred, gt, brain mask and uncertainty map differ in shape: {sorted(shapes)}")
    return p, g, b


def voxel_error_auroc(uncertainty, pred, gt, brain=None) -> float:
    """AUROC of the uncertainty map for the voxel errors (pred ≠ gt) inside ``brain`` (None: every voxel)."""
    p, g, b = _masks(pred, gt, brain, uncertainty)
    return auroc(np.asarray(uncertainty, float)[b], (p != g)[b])


def visit_uncertainty(uncertainty, pred, gt, brain=None) -> dict:
    """One visit's uncertainty summary (keys :data:`VISIT_COLUMNS`): brain and error voxel counts,
    the AUROC, and the mean MI over the brain, its error voxels and its correct voxels."""
    p, g, b = _masks(pred, gt, brain, uncertainty)
    u = np.asarray(uncertainty, float)[b]
    err = (p != g)[b]
    fp = int((p & ~g)[b].sum())

    def mean(a):
        return float(a.mean()) if a.size else math.nan

    return {"n_brain": int(b.sum()), "n_errors": int(err.sum()), "n_fp": fp, "n_fn": int(err.sum()) - fp,
            "auroc": auroc(u, err), "mean_mi": mean(u), "mean_mi_errors": mean(u[err]),
            "mean_mi_correct": mean(u[~err])}


def dice_vs_uncertainty(dice, mean_mi) -> dict:
    """Spearman ρ (two-sided p) of per-visit Dice against per-visit mean MI; pairs with a NaN dropped.

    Keys ``n, rho, p``; ρ is NaN with fewer than 3 pairs or a constant variable.
    """
    d, m = np.asarray(dice, float), np.asarray(mean_mi, float)
    if d.shape != m.shape:
        raise ValueError(f"dice and mean_mi differ in length: {d.shape} vs {m.shape}")
    ok = np.isfinite(d) & np.isfinite(m)
    d, m = d[ok], m[ok]
    out = {"n": int(ok.sum()), "rho": math.nan, "p": math.nan}
    if d.size < 3 or np.ptp(d) == 0 or np.ptp(m) == 0:
        return out
    res = sps.spearmanr(d, m)
    out.update(rho=float(res.statistic), p=float(res.pvalue))
    return out


def uncertainty_summary(visits: pd.DataFrame, dice: str = "dc") -> pd.DataFrame:
    """One-row table over the visit rows (:func:`visit_uncertainty` plus a ``dice`` column):
    n_visits, the AUROC's mean, SD, min and max over visits (NaN visits excluded, counted),
    and Spearman ρ of Dice against mean MI with its p."""
    for col in ("auroc", "mean_mi", "n_errors", dice):
        if col not in visits.columns:
            raise ValueError(f"uncertainty visit table lacks column {col!r}")
    a = visits["auroc"].to_numpy(float)
    ok = np.isfinite(a)
    sp = dice_vs_uncertainty(visits[dice], visits["mean_mi"])
    return pd.DataFrame([{
        "n_visits": len(visits), "n_auroc": int(ok.sum()), "n_auroc_nan": int((~ok).sum()),
        "auroc_mean": float(a[ok].mean()) if ok.any() else math.nan,
        "auroc_sd": float(a[ok].std(ddof=1)) if ok.sum() > 1 else math.nan,
        "auroc_min": float(a[ok].min()) if ok.any() else math.nan,
        "auroc_max": float(a[ok].max()) if ok.any() else math.nan,
        "spearman_n": sp["n"], "spearman_rho": sp["rho"], "spearman_p": sp["p"],
    }])


__all__ = ["VISIT_COLUMNS", "auroc", "dice_vs_uncertainty", "uncertainty_summary", "visit_uncertainty",
           "voxel_error_auroc"]
