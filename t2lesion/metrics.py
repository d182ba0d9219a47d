"""Segmentation and lesion-detection metrics per visit and per dataset (SPEC §8).

Implements the evaluation of Krishnan et al. 2023, Methods "Evaluation metrics",
Table 2 (voxel and lesion metrics, r_vol, r_count), Table 3 (ISBI-2015 score, as
an option) and Fig. 3a–c (lesion DC, LTPR, LFPR by lesion size group). Every
table is computed per *mask source* (``baseline``, ``unet``) against the GT mask.

Definitions (G = GT mask, P = predicted mask, |·| = voxel count)
------------------------------------------------------------------

=============  =======================================================  ==========================
metric         definition                                               NaN (undefined) when
=============  =======================================================  ==========================
DC             2|G∩P| / (|G| + |P|)                                     |G| + |P| = 0
PPV            |G∩P| / |P|                                              |P| = 0
TPR            |G∩P| / |G|                                              |G| = 0
AVD            | |P| − |G| | / |G|  (ISBI 2015, a fraction)             |G| = 0
TLV (mL)       voxels × voxel volume from the image header              never
TLC            number of lesions (see "Lesions" below)                  never
LTPR           detected GT lesions / GT lesions                         no GT lesion
LPPV           true-positive predicted lesions / predicted lesions      no predicted lesion
LFPR           false-positive predicted lesions / predicted lesions     no predicted lesion
lesion DC      per lesion L of one mask against the other cleaned       never
               mask M: 2|L∩M| / (|L| + Σ sizes of M's lesions touching L)
=============  =======================================================  ==========================

Lesions: connected components with ``connectivity`` (default **18**, paper
Methods) after dropping components of fewer than ``min_size`` voxels (default
**3**), in GT and prediction alike. The lesion-level rules use the *cleaned*
masks (small components gone) on both sides. The voxel metrics and TLV use the
masks as given unless ``clean_voxel_metrics=True`` (interpretation: the paper
says the 3-voxel rule for lesions only).

Matching rule, explicit. The *covered fraction* of a lesion is the share of its
own voxels that lie inside the other (cleaned) mask. A lesion *matches* at
threshold t when its covered fraction is > 0 and ≥ t (so t = 0 means "shares
at least one voxel").

* a GT lesion is **detected** when it matches at ``overlap`` (default **0.10**,
  the paper's "minimum overlap of 10 %");
* a predicted lesion is a **true positive** when it matches at ``overlap``;
* a predicted lesion is a **false positive** when it does *not* match at
  ``fp_overlap``; ``fp_overlap=None`` (default) means ``overlap``, so that
  LFPR = 1 − LPPV exactly.

The ISBI-2015 challenge (Carass et al., NeuroImage 148:77–102, 2017) counts any
shared voxel: ``overlap=0, fp_overlap=0`` is its matching rule (LTPR = GT
lesions sharing a voxel with the prediction / GT lesions; LFPR = predicted
lesions sharing no voxel with GT / predicted lesions). With one rule LPPV +
LFPR = 1 on every visit (both are NaN on the same visits), yet the paper's
Table 2 has mean LPPV + LFPR > 1, so its two rules differed; which pair it used
is not stated. With ``fp_overlap`` > ``overlap`` a predicted lesion whose
covered fraction lies in [``overlap``, ``fp_overlap``) counts as both, and
LPPV + LFPR exceeds 1 by their share. Interpretation: change with config
``metrics.overlap`` / ``metrics.fp_overlap``.

Empty masks: nothing divides by zero; undefined ratios are NaN (table above),
are excluded from dataset means and counted in ``n_nan``. For example an empty
GT with a non-empty prediction gives DC 0, PPV 0, TPR/AVD/LTPR NaN, LPPV 0,
LFPR 1; two empty masks give NaN for every ratio and TLV 0, TLC 0.

Size groups (Fig. 3a–c): lesions are grouped by their own size in voxels,
inclusive bounds, default 3–10, 11–50, 51–100, >100. Lesion DC and LTPR are
over GT lesions of the group, LFPR over predicted lesions of the group.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import cc3d
import numpy as np
import pandas as pd

from t2lesion import io
from t2lesion.errors import InputError

log = logging.getLogger(__name__)

CONNECTIVITIES = (6, 18, 26)
DEFAULT_SIZE_GROUPS: tuple[tuple[int, int | None], ...] = ((3, 10), (11, 50), (51, 100), (101, None))

# Paper defaults (Methods, "Evaluation metrics"); config keys metrics.connectivity,
# metrics.min_size, metrics.overlap.
CONNECTIVITY = 18
MIN_SIZE = 3
OVERLAP = 0.10

#: File names written by :func:`run_dataset` inside its output folder.
DATASET_OUTPUTS = {
    "visits": "visits.tsv",
    "lesions": "lesions.tsv",
    "size_groups": "size_groups.tsv",
    "table2": "table2.tsv",
    "correlation": "correlation.tsv",
    "fig_tlv": "tlv_agreement.png",
    "fig_size_groups": "size_groups.png",
}

# Columns of the per-visit row that carry the parameters, so that a dataset
# never silently mixes visits evaluated under different rules.
PARAM_COLUMNS = ("connectivity", "min_size", "overlap", "fp_overlap", "clean_voxel_metrics")

LESION_COLUMNS = [
    "kind", "lesion_id", "n_voxels", "volume_ml", "size_group", "overlap_fraction",
    "matched", "false_positive", "lesion_dc", "centroid_z", "centroid_y", "centroid_x",
]

# Table 2 layout: (block, display name, visit column).
TABLE2_ROWS = (
    ("segmentation", "PPV", "ppv"),
    ("segmentation", "TPR", "tpr"),
    ("segmentation", "DC", "dc"),
    ("segmentation", "AVD", "avd"),
    ("detection", "LPPV", "lppv"),
    ("detection", "LTPR", "ltpr"),
    ("detection", "LFPR", "lfpr"),
    ("volume", "GT TLV (mL)", "gt_tlv_ml"),
    ("volume", "predicted TLV (mL)", "pred_tlv_ml"),
    ("volume", "GT TLC", "gt_tlc"),
    ("volume", "predicted TLC", "pred_tlc"),
)

_SESSION = re.compile(r"^(?:ses-)?w(\d+)$")


# --------------------------------------------------------------------------- parameters


def _check_params(connectivity, min_size, overlap, fp_overlap) -> None:
    problems = []
    if connectivity not in CONNECTIVITIES:
        problems.append(f"connectivity must be one of {CONNECTIVITIES} (3-D), got {connectivity!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 1:
        problems.append(f"min_size must be an integer ≥ 1, got {min_size!r}")
    for name, val in (("overlap", overlap), ("fp_overlap", fp_overlap)):
        if val is None and name == "fp_overlap":
            continue
        if not isinstance(val, (int, float, np.floating)) or not 0.0 <= float(val) <= 1.0:
            problems.append(f"{name} must be a fraction in [0, 1], got {val!r}")
    if problems:
        raise InputError(problems, header="metrics parameters:")


def normalise_size_groups(size_groups) -> list[tuple[int, float]]:
    """Validate size groups given as ``[[lo, hi], ...]`` (voxels, inclusive; ``hi`` None = no bound).

    Returns ``[(lo, hi_or_inf), ...]``. Groups must be increasing and not overlap.
    """
    out: list[tuple[int, float]] = []
    try:
        for lo, hi in size_groups:
            hi = math.inf if hi is None else hi
            if int(lo) != lo or (hi != math.inf and int(hi) != hi) or lo < 1 or hi < lo:
                raise ValueError
            out.append((int(lo), float(hi)))
    except (TypeError, ValueError):
        raise InputError(f"size_groups must be [[low, high], ...] of voxel counts, high ≥ low ≥ 1 "
                         f"(high null = no bound); got {size_groups!r}") from None
    if not out:
        raise InputError("size_groups is empty")
    for (_, hi), (lo2, _) in zip(out, out[1:]):
        if lo2 <= hi:
            raise InputError(f"size_groups must be increasing and disjoint; got {size_groups!r}")
    return out


def size_group_labels(size_groups) -> list[str]:
    """Display labels: ``"3-10"``, ..., ``">100"`` for an open upper bound."""
    return [f">{lo - 1}" if hi == math.inf else f"{lo}-{int(hi)}" for lo, hi in normalise_size_groups(size_groups)]


def assign_size_groups(n_voxels, size_groups=DEFAULT_SIZE_GROUPS) -> np.ndarray:
    """Size-group label of each lesion size (object array; ``""`` where no group holds it)."""
    groups = normalise_size_groups(size_groups)
    labels = size_group_labels(size_groups)
    n = np.asarray(n_voxels, dtype=float)
    out = np.full(n.shape, "", dtype=object)
    for (lo, hi), lab in zip(groups, labels):
        out[(n >= lo) & (n <= hi)] = lab
    return out


def week_from_session(session: str) -> int:
    """Week number of a session label ``ses-wNNN`` (or ``wNNN``)."""
    m = _SESSION.match(str(session))
    if not m:
        raise InputError(f"session {session!r}: expected 'ses-w<NNN>' (week number)")
    return int(m.group(1))


# --------------------------------------------------------------------------- array functions


def _as_mask(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 3:
        raise ValueError(f"{name}: expected a 3-D mask, got shape {a.shape}")
    return a if a.dtype == bool else a != 0


def _mask_pair(gt, pred) -> tuple[np.ndarray, np.ndarray]:
    g, p = _as_mask(gt, "gt"), _as_mask(pred, "pred")
    if g.shape != p.shape:
        raise ValueError(f"gt and pred shapes differ: {g.shape} vs {p.shape}")
    return g, p


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else math.nan


def voxel_metrics(gt, pred, voxel_ml: float) -> dict:
    """Voxel-level DC, PPV, TPR, AVD and TLV (mL) of two binary masks of one visit.

    Non-zero voxels are lesion. Undefined ratios are NaN (module table). Keys:
    ``gt_voxels, pred_voxels, tp_voxels, dc, ppv, tpr, avd, gt_tlv_ml, pred_tlv_ml``.
    """
    g, p = _mask_pair(gt, pred)
    ng, npred = int(np.count_nonzero(g)), int(np.count_nonzero(p))
    tp = int(np.count_nonzero(g & p))
    return {
        "gt_voxels": ng,
        "pred_voxels": npred,
        "tp_voxels": tp,
        "dc": _ratio(2 * tp, ng + npred),
        "ppv": _ratio(tp, npred),
        "tpr": _ratio(tp, ng),
        "avd": _ratio(abs(npred - ng), ng),
        "gt_tlv_ml": ng * float(voxel_ml),
        "pred_tlv_ml": npred * float(voxel_ml),
    }


def label_lesions(mask, connectivity: int = CONNECTIVITY,
                  min_size: int = MIN_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Connected lesions of a binary mask, components of fewer than ``min_size`` voxels dropped.

    Returns ``(labels, sizes)``: a uint32 array with 0 for background and lesions
    numbered 1..n (raster order of their first voxel), and ``sizes[k - 1]`` = voxels
    of lesion k. ``connectivity`` is 6 (faces), 18 (faces + edges) or 26 (+ corners).
    """
    _check_params(connectivity, min_size, 0.0, None)
    les = _label(_as_mask(mask, "mask"), connectivity, min_size)
    return les.labels, les.sizes


class _Lesions(NamedTuple):
    labels: np.ndarray  # uint32 label volume, 0 = background
    sizes: np.ndarray  # voxels of lesion k at [k - 1]
    idx: np.ndarray  # flat indices of all lesion voxels
    lab: np.ndarray  # their labels


def _label(m: np.ndarray, connectivity: int, min_size: int) -> _Lesions:
    if connectivity == 26 and 1 in m.shape:
        # With a singleton axis no two voxels can differ in all three coordinates, so 26 ≡ 18;
        # and cc3d 4.1.1 raises "maximum length exception" for 26 on (1, 1, n)-like arrays.
        connectivity = 18
    # C order in, C order out: lesions numbered in C raster order, and the flat
    # indices below address the label volume in place.
    m = np.ascontiguousarray(m)
    labels = cc3d.connected_components(m, connectivity=connectivity, out_dtype=np.uint32)
    # Everything after labelling works on the lesion voxels only, a small share of the volume.
    idx = np.flatnonzero(m)
    lab = labels.ravel()[idx]
    sizes = np.bincount(lab, minlength=1)
    keep = sizes >= min_size
    keep[0] = False
    if keep[1:].all():
        return _Lesions(labels, sizes[1:].astype(np.int64), idx, lab)
    remap = np.zeros(sizes.size, dtype=np.uint32)
    remap[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    lab = remap[lab]
    labels.reshape(-1)[idx] = lab
    kept = lab != 0
    return _Lesions(labels, sizes[keep].astype(np.int64), idx[kept], lab[kept])


def _lesion_side(les: _Lesions, other_sizes, pairs_self, pairs_other, covered):
    """Per-lesion covered fraction, lesion DC and centroid for one side of the comparison."""
    n = les.sizes.size
    frac = covered / np.maximum(les.sizes, 1)
    # Sum of the sizes of the other side's lesions that touch each lesion (each pair once).
    touching = np.bincount(pairs_self, weights=other_sizes[pairs_other - 1], minlength=n + 1)[1:]
    dc = 2.0 * covered / (les.sizes + touching)
    cent = [np.bincount(les.lab, weights=c, minlength=n + 1)[1:] / np.maximum(les.sizes, 1)
            for c in np.unravel_index(les.idx, les.labels.shape)]
    return frac, dc, cent


def _matches(frac: np.ndarray, t: float) -> np.ndarray:
    return (frac > 0) & (frac >= t)


def lesion_metrics(gt, pred, voxel_ml: float = 1.0, *, connectivity: int = CONNECTIVITY, min_size: int = MIN_SIZE,
                   overlap: float = OVERLAP, fp_overlap: float | None = None,
                   size_groups=DEFAULT_SIZE_GROUPS) -> tuple[dict, pd.DataFrame]:
    """Lesion-level metrics (LTPR, LPPV, LFPR, TLC) and the per-lesion table of one visit.

    Rules as in the module docstring: components by ``connectivity``, fewer than
    ``min_size`` voxels dropped, a GT lesion is detected / a predicted lesion is a
    true positive when ≥ ``overlap`` of its own voxels (and at least one) lie in
    the other cleaned mask, a predicted lesion is a false positive when it does
    not match at ``fp_overlap`` (None: same as ``overlap``, LFPR = 1 − LPPV).

    Returns ``(row, lesions)``. ``row`` has ``gt_tlc, pred_tlc, gt_detected,
    pred_tp, pred_fp, ltpr, lppv, lfpr``; ``lesions`` has one row per GT lesion
    (``kind="gt"``) and per predicted lesion (``kind="pred"``) with columns
    :data:`LESION_COLUMNS` (``matched`` = detected / true positive;
    ``false_positive`` always False for GT lesions; centroids in voxel indices).
    """
    _check_params(connectivity, min_size, overlap, fp_overlap)
    g, p = _mask_pair(gt, pred)
    return _compare_lesions(_label(g, connectivity, min_size), _label(p, connectivity, min_size),
                            voxel_ml, overlap, fp_overlap, size_groups)


def _compare_lesions(g: _Lesions, p: _Lesions, voxel_ml, overlap, fp_overlap, size_groups):
    gs, ps = g.sizes, p.sizes
    fp_t = overlap if fp_overlap is None else fp_overlap
    # Label pairs at the voxels where a GT and a predicted lesion overlap.
    p_at_g = p.labels.ravel()[g.idx]
    hit = p_at_g != 0
    gi, pj = g.lab[hit].astype(np.int64), p_at_g[hit].astype(np.int64)
    cov_g = np.bincount(gi, minlength=gs.size + 1)[1:]
    cov_p = np.bincount(pj, minlength=ps.size + 1)[1:]
    pairs = np.unique(gi * (ps.size + 1) + pj)
    pg, pp = pairs // (ps.size + 1), pairs % (ps.size + 1)

    g_frac, g_dc, g_cent = _lesion_side(g, ps, pg, pp, cov_g)
    p_frac, p_dc, p_cent = _lesion_side(p, gs, pp, pg, cov_p)
    detected = _matches(g_frac, overlap)
    tp = _matches(p_frac, overlap)
    fp = ~_matches(p_frac, fp_t)

    row = {
        "gt_tlc": int(gs.size),
        "pred_tlc": int(ps.size),
        "gt_detected": int(detected.sum()),
        "pred_tp": int(tp.sum()),
        "pred_fp": int(fp.sum()),
        "ltpr": _ratio(detected.sum(), gs.size),
        "lppv": _ratio(tp.sum(), ps.size),
        "lfpr": _ratio(fp.sum(), ps.size),
    }

    def side(kind, sizes, frac, matched, false_pos, dc, cent):
        return pd.DataFrame({
            "kind": kind,
            "lesion_id": np.arange(1, sizes.size + 1, dtype=np.int64),
            "n_voxels": sizes,
            "volume_ml": sizes * float(voxel_ml),
            "size_group": assign_size_groups(sizes, size_groups),
            "overlap_fraction": frac,
            "matched": matched,
            "false_positive": false_pos,
            "lesion_dc": dc,
            "centroid_z": cent[0],
            "centroid_y": cent[1],
            "centroid_x": cent[2],
        }, columns=LESION_COLUMNS)

    lesions = pd.concat([
        side("gt", gs, g_frac, detected, np.zeros(gs.size, bool), g_dc, g_cent),
        side("pred", ps, p_frac, tp, fp, p_dc, p_cent),
    ], ignore_index=True)
    return row, lesions


def lesion_load(mask, voxel_ml: float, *, connectivity: int = CONNECTIVITY, min_size: int = MIN_SIZE,
                clean_voxel_metrics: bool = False) -> dict:
    """TLV (mL) and TLC of one mask, with no reference: what every source gives every visit.

    The same definitions as the GT-vs-prediction metrics (:func:`evaluate_visit`
    writes ``gt_tlv_ml``/``pred_tlv_ml`` and ``gt_tlc``/``pred_tlc`` of exactly these
    values): TLC counts lesions of at least ``min_size`` voxels (``connectivity``);
    TLV counts every lesion voxel, or only those of the counted lesions with
    ``clean_voxel_metrics``. Keys: ``tlv_ml, tlc, voxels``.
    """
    _check_params(connectivity, min_size, 0.0, None)
    les = _label(_as_mask(mask, "mask"), connectivity, min_size)
    voxels = int(les.sizes.sum()) if clean_voxel_metrics else int(np.count_nonzero(mask))
    return {"tlv_ml": voxels * float(voxel_ml), "tlc": int(les.sizes.size), "voxels": voxels}


def evaluate_visit(gt, pred, voxel_ml: float, *, connectivity: int = CONNECTIVITY, min_size: int = MIN_SIZE,
                   overlap: float = OVERLAP, fp_overlap: float | None = None,
                   size_groups=DEFAULT_SIZE_GROUPS,
                   clean_voxel_metrics: bool = False) -> tuple[dict, pd.DataFrame]:
    """All metrics of one visit: ``(visit_row, lesions)``.

    ``visit_row`` merges :func:`voxel_metrics` and :func:`lesion_metrics` and
    records the parameters (``connectivity, min_size, overlap, fp_overlap,
    clean_voxel_metrics``). ``clean_voxel_metrics=True`` computes the voxel
    metrics and TLV on the masks with components < ``min_size`` removed
    (default False: masks as given).
    """
    _check_params(connectivity, min_size, overlap, fp_overlap)
    g, p = _mask_pair(gt, pred)
    g_les, p_les = _label(g, connectivity, min_size), _label(p, connectivity, min_size)
    les_row, lesions = _compare_lesions(g_les, p_les, voxel_ml, overlap, fp_overlap, size_groups)
    if clean_voxel_metrics:
        g, p = g_les.labels != 0, p_les.labels != 0
    row = {"voxel_ml": float(voxel_ml), **voxel_metrics(g, p, voxel_ml), **les_row,
           "connectivity": int(connectivity), "min_size": int(min_size), "overlap": float(overlap),
           "fp_overlap": math.nan if fp_overlap is None else float(fp_overlap),
           "clean_voxel_metrics": bool(clean_voxel_metrics)}
    return row, lesions


# --------------------------------------------------------------------------- dataset functions


def mean_sd(values) -> dict:
    """Mean and SD (ddof 1) over finite values; ``n`` used and ``n_nan`` excluded."""
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    n = int(ok.sum())
    return {
        "mean": float(v[ok].mean()) if n else math.nan,
        "sd": float(v[ok].std(ddof=1)) if n > 1 else math.nan,
        "n": n,
        "n_nan": int((~ok).sum()),
    }


def pearson_ci(x, y, confidence: float = 0.95) -> dict:
    """Pearson r with a Fisher-z confidence interval and two-sided p.

    Pairs with a NaN are dropped (counted in ``n_nan``). r is NaN with fewer than
    3 pairs or a constant variable; the CI needs ≥ 4 pairs (SE = 1/√(n − 3)).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    out = {"n": int(ok.sum()), "n_nan": int((~ok).sum()), "r": math.nan,
           "ci_low": math.nan, "ci_high": math.nan, "p": math.nan}
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    from scipy import stats as sps  # here, not at import: 1.3 CPU-s of every per-visit job's start-up

    res = sps.pearsonr(x, y)
    out["r"], out["p"] = float(res.statistic), float(res.pvalue)
    if x.size > 3:
        ci = res.confidence_interval(confidence_level=confidence)
        out["ci_low"], out["ci_high"] = float(ci.low), float(ci.high)
    return out


def bland_altman(gt, pred) -> dict:
    """Bland–Altman bias (mean of pred − gt) and 95 % limits of agreement (bias ± 1.96 SD)."""
    d = np.asarray(pred, float) - np.asarray(gt, float)
    d = d[np.isfinite(d)]
    bias = float(d.mean()) if d.size else math.nan
    sd = float(d.std(ddof=1)) if d.size > 1 else math.nan
    return {"bias": bias, "sd_diff": sd, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd}


def correlation_table(visits: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Pearson r (GT vs predicted) with CI for TLV and TLC, plus Bland–Altman statistics."""
    rows = []
    for name, g, p in (("TLV (mL)", "gt_tlv_ml", "pred_tlv_ml"), ("TLC", "gt_tlc", "pred_tlc")):
        rows.append({"measure": name, **pearson_ci(visits[g], visits[p], confidence),
                     "confidence": confidence, **bland_altman(visits[g], visits[p])})
    return pd.DataFrame(rows)


def isbi2015_scores(visits: pd.DataFrame) -> pd.Series:
    """ISBI-2015 challenge score per visit (Carass et al., NeuroImage 148:77–102, 2017, Eq. of §"Scoring").

    score = 100 · (DC/8 + PPV/8 + (1 − LFPR)/4 + LTPR/4 + r/4), with r the Pearson
    correlation of predicted vs GT TLV over all visits of the dataset; the challenge
    averages this over subjects (and raters). LTPR and LFPR are taken as computed
    under this run's matching rule (``overlap=0, fp_overlap=0`` is the challenge's
    own). The challenge website further rescales scores against inter-rater
    agreement, which needs a second rater; that step is not applied here, so values
    are not on the scale of the paper's Table 3. NaN where any term is NaN.
    """
    r = pearson_ci(visits["gt_tlv_ml"], visits["pred_tlv_ml"])["r"]
    s = visits["dc"] / 8 + visits["ppv"] / 8 + (1 - visits["lfpr"]) / 4 + visits["ltpr"] / 4 + r / 4
    return (100 * s).rename("isbi_score")


def table2(visits: pd.DataFrame, isbi_score: bool = False, confidence: float = 0.95) -> pd.DataFrame:
    """Table 2 layout: mean ± SD over visits of each metric (NaN excluded, counted), r_vol and r_count.

    Columns: ``block, metric, column, mean, sd, n, n_nan, summary`` where summary is
    ``"0.720 ± 0.120"`` (or ``"0.969"`` for a correlation row).
    """
    rows = []
    for block, name, col in TABLE2_ROWS:
        ms = mean_sd(visits[col])
        rows.append({"block": block, "metric": name, "column": col, **ms,
                     "summary": f"{ms['mean']:.3f} ± {ms['sd']:.3f}"})
    if isbi_score:
        ms = mean_sd(isbi2015_scores(visits))
        rows.append({"block": "isbi2015", "metric": "ISBI-2015 score", "column": "isbi_score", **ms,
                     "summary": f"{ms['mean']:.2f} ± {ms['sd']:.2f}"})
    for block, name, g, p in (("segmentation", "r_vol", "gt_tlv_ml", "pred_tlv_ml"),
                              ("detection", "r_count", "gt_tlc", "pred_tlc")):
        pc = pearson_ci(visits[g], visits[p], confidence)
        rows.append({"block": block, "metric": name, "column": f"{g}~{p}", "mean": pc["r"], "sd": math.nan,
                     "n": pc["n"], "n_nan": pc["n_nan"], "summary": f"{pc['r']:.3f}"})
    order = {"segmentation": 0, "detection": 1, "volume": 2, "isbi2015": 3}
    out = pd.DataFrame(rows)
    return out.sort_values("block", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def size_group_table(lesions: pd.DataFrame, visits: pd.DataFrame | None = None,
                     size_groups=DEFAULT_SIZE_GROUPS) -> pd.DataFrame:
    """Lesion DC, LTPR and LFPR per size group (Fig. 3a–c), pooled and as mean ± SD over visits.

    Groups are (re)assigned from ``n_voxels`` (GT lesions by their size, predicted
    lesions by theirs). ``lesion_dc_mean/sd/n``: over the group's GT lesions.
    ``ltpr_mean/sd/n``, ``lfpr_mean/sd/n``: each visit's group LTPR (LFPR) over its
    GT (predicted) lesions of the group, averaged over the visits that have such
    lesions (``_n`` of ``n_visits``; the others are NaN, excluded). Pooled over the
    dataset: ``ltpr_pooled`` = detected / GT lesions, ``lfpr_pooled`` = false
    positives / predicted lesions. ``visits`` (participant_id, session) supplies
    ``n_visits`` including visits without any lesion.
    """
    labels = size_group_labels(size_groups)
    groups = normalise_size_groups(size_groups)
    les = lesions.copy()
    les["size_group"] = assign_size_groups(les["n_voxels"], size_groups)
    keys = ["participant_id", "session"]
    all_visits = (visits[keys] if visits is not None else les[keys]).drop_duplicates()
    n_vis = len(all_visits)
    rows = []
    for (lo, hi), lab in zip(groups, labels):
        grp = les[les["size_group"] == lab]
        g, p = grp[grp["kind"] == "gt"], grp[grp["kind"] == "pred"]
        ltpr_v = g.groupby(keys)["matched"].mean()
        lfpr_v = p.groupby(keys)["false_positive"].mean()
        row = {"size_group": lab, "min_voxels": lo, "max_voxels": None if hi == math.inf else int(hi),
               "n_gt": len(g), "n_detected": int(g["matched"].sum()),
               "ltpr_pooled": _ratio(g["matched"].sum(), len(g)),
               "n_pred": len(p), "n_fp": int(p["false_positive"].sum()),
               "lfpr_pooled": _ratio(p["false_positive"].sum(), len(p))}
        for name, series in (("lesion_dc", g["lesion_dc"]), ("ltpr", ltpr_v), ("lfpr", lfpr_v)):
            ms = mean_sd(series)
            row[f"{name}_mean"], row[f"{name}_sd"], row[f"{name}_n"] = ms["mean"], ms["sd"], ms["n"]
        row["n_visits"] = n_vis
        rows.append(row)
    out = pd.DataFrame(rows)
    out["max_voxels"] = out["max_voxels"].astype("Int64")
    return out


# --------------------------------------------------------------------------- path-level entry points


def _write_tsv(df: pd.DataFrame, path: str | Path) -> None:
    io.write_tsv(df, path, na_rep="n/a")


def _read_mask(path: str | Path):
    arr, img = io.read_array(path, dtype=np.float32)
    bad = (arr < 0) | ((arr > 0) & (arr < 1)) | (arr != np.round(arr))
    if bad.any():
        raise InputError(f"{path}: not a binary/label mask ({int(bad.sum())} voxels neither 0 nor a "
                         f"positive integer; a probability map must be thresholded first)")
    return arr > 0, img


def run_visit(gt_mask_path, pred_mask_path, out_visit_tsv, out_lesions_tsv, participant_id: str,
              session: str, **params) -> dict:
    """Evaluate one visit's predicted mask against its GT mask and write two TSVs.

    Reads both masks with :mod:`t2lesion.io` and requires the same geometry (size,
    spacing, origin, direction), else :class:`InputError` naming both files. The
    voxel volume (mL) comes from the GT header. ``params`` are those of
    :func:`evaluate_visit`. Writes one row to ``out_visit_tsv`` (participant_id,
    session, week, metrics, parameters) and the per-lesion table to
    ``out_lesions_tsv``. Returns the visit row.
    """
    week = week_from_session(session)
    gt, gimg = _read_mask(gt_mask_path)
    pred, pimg = _read_mask(pred_mask_path)
    if not io.same_geometry(gimg, pimg):
        raise InputError(
            f"{pred_mask_path}: geometry differs from GT mask {gt_mask_path} "
            f"(size {pimg.GetSize()} vs {gimg.GetSize()}, spacing {tuple(round(s, 4) for s in pimg.GetSpacing())} "
            f"vs {tuple(round(s, 4) for s in gimg.GetSpacing())}, origin/direction checked too)")
    row, lesions = evaluate_visit(gt, pred, io.voxel_volume_ml(gimg), **params)
    ids = {"participant_id": participant_id, "session": session, "week": week}
    row = {**ids, **row}
    lesions.insert(0, "participant_id", participant_id)
    lesions.insert(1, "session", session)
    _write_tsv(pd.DataFrame([row]), out_visit_tsv)
    _write_tsv(lesions, out_lesions_tsv)
    log.info("%s %s: DC %.3f LTPR %.3f LFPR %.3f, %d GT / %d predicted lesions", participant_id, session,
             row["dc"], row["ltpr"], row["lfpr"], row["gt_tlc"], row["pred_tlc"])
    return row


VOLUME_COLUMNS = ("participant_id", "session", "week", "tlv_ml", "tlc", "voxels", "voxel_ml")


def run_volume(mask_path, out_tsv, participant_id: str, session: str, *, connectivity: int = CONNECTIVITY,
               min_size: int = MIN_SIZE, clean_voxel_metrics: bool = False) -> dict:
    """Lesion load (TLV, TLC) of one visit's mask from any source, GT or prediction; one-row TSV.

    Needs no ground truth: this is the per-visit volume table that the endpoint
    statistics read, for every source and every visit: written by the job that writes the
    mask (rules ``segment_baseline``, ``infer_*``) or, for the GT, by ``metrics_visit``.
    """
    mask, img = _read_mask(mask_path)
    voxel_ml = io.voxel_volume_ml(img)
    load = lesion_load(mask, voxel_ml, connectivity=connectivity, min_size=min_size,
                       clean_voxel_metrics=clean_voxel_metrics)
    row = {"participant_id": participant_id, "session": session, "week": week_from_session(session),
           **load, "voxel_ml": voxel_ml}
    _write_tsv(pd.DataFrame([row], columns=list(VOLUME_COLUMNS)), out_tsv)
    log.info("%s %s: TLV %.3f mL, TLC %d (%s)", participant_id, session, row["tlv_ml"], row["tlc"], mask_path)
    return row


VISIT_REQUIRED = ("participant_id", "session", "week", *(c for _, _, c in TABLE2_ROWS), *PARAM_COLUMNS)
LESION_REQUIRED = ("participant_id", "session", "kind", "n_voxels", "matched", "false_positive", "lesion_dc")


def _read_tables(paths: Iterable, what: str, required: Sequence[str]) -> pd.DataFrame:
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError(f"no {what} tables given")
    frames, problems = [], []
    for p in paths:
        try:
            df = pd.read_csv(p, sep="\t", na_values=["n/a"], dtype={"participant_id": str, "session": str})
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            problems.append(f"{p}: cannot be read as a TSV ({type(exc).__name__})")
            continue
        missing = [c for c in required if c not in df.columns]
        if missing:
            problems.append(f"{p}: missing columns {missing}")
        frames.append(df)
    if problems:
        raise InputError(problems, header=f"unreadable {what} tables:")
    # Header-only tables (visits without lesions) would only blur the column dtypes.
    return pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)


def dataset_outputs(out_dir: str | Path) -> dict[str, Path]:
    """Paths :func:`run_dataset` writes under ``out_dir`` (keys of :data:`DATASET_OUTPUTS`)."""
    return {k: Path(out_dir) / v for k, v in DATASET_OUTPUTS.items()}


def run_dataset(visit_tsvs: Sequence, lesion_tsvs: Sequence, out_dir: str | Path, *, source: str, trial: str,
                size_groups=DEFAULT_SIZE_GROUPS, isbi_score: bool = False, confidence: float = 0.95,
                outputs: Mapping[str, str | Path] | None = None) -> dict[str, Path]:
    """Per-dataset tables and figures for one mask source of one trial.

    Reads the per-visit TSVs of :func:`run_visit` and writes (names in
    :data:`DATASET_OUTPUTS`, or explicit paths in ``outputs`` by the same keys):
    ``visits.tsv`` (all visits, + source, trial, and isbi_score when asked),
    ``lesions.tsv``, ``size_groups.tsv`` (:func:`size_group_table`), ``table2.tsv``
    (:func:`table2`), ``correlation.tsv`` (:func:`correlation_table`) and the
    figures ``tlv_agreement.png`` (scatter + Bland–Altman of TLV) and
    ``size_groups.png`` (Fig. 3a–c style bars). Visits evaluated with different
    parameters, or duplicated, raise :class:`InputError`. Returns the paths.
    """
    from t2lesion.plots import metrics as plots  # matplotlib only when figures are made

    paths = dataset_outputs(out_dir)
    paths.update({k: Path(v) for k, v in (outputs or {}).items()})
    unknown = set(outputs or {}) - set(DATASET_OUTPUTS)
    if unknown:
        raise InputError(f"unknown output keys {sorted(unknown)}; known: {sorted(DATASET_OUTPUTS)}")
    visits = _read_tables(visit_tsvs, "visit", VISIT_REQUIRED)
    lesions = _read_tables(lesion_tsvs, "lesion", LESION_REQUIRED)
    lesions[["matched", "false_positive"]] = lesions[["matched", "false_positive"]].astype(bool)
    keys = ["participant_id", "session"]
    dup = visits[visits.duplicated(keys, keep=False)]
    if len(dup):
        raise InputError([f"{a} {b}: visit given more than once" for a, b in dup[keys].drop_duplicates().values],
                         header="duplicate visits:")
    problems = []
    for col in PARAM_COLUMNS:
        vals = visits[col].astype(str).unique()
        if len(vals) > 1:
            problems.append(f"{col}: visits were evaluated with different values {sorted(vals)}")
    if problems:
        raise InputError(problems, header="visit tables mix metric parameters (re-run the stale visits):")

    visits = visits.sort_values(["participant_id", "week"], kind="stable").reset_index(drop=True)
    visits.insert(0, "source", source)
    visits.insert(1, "trial", trial)
    if isbi_score:
        visits["isbi_score"] = isbi2015_scores(visits)
    lesions.insert(0, "source", source)
    lesions.insert(1, "trial", trial)
    lesions["size_group"] = assign_size_groups(lesions["n_voxels"], size_groups)
    groups = size_group_table(lesions, visits, size_groups)
    t2 = table2(visits, isbi_score=isbi_score, confidence=confidence)
    corr = correlation_table(visits, confidence)
    for tab in (groups, t2, corr):
        tab.insert(0, "source", source)
        tab.insert(1, "trial", trial)

    title = f"trial-{trial}, source {source}"
    plots.plot_agreement(visits["gt_tlv_ml"], visits["pred_tlv_ml"], paths["fig_tlv"],
                         quantity="TLV", unit="mL", title=title)
    plots.plot_size_groups({f"{trial} / {source}": groups}, paths["fig_size_groups"], title=title)
    _write_tsv(visits, paths["visits"])
    _write_tsv(lesions, paths["lesions"])
    _write_tsv(groups, paths["size_groups"])
    _write_tsv(t2, paths["table2"])
    _write_tsv(corr, paths["correlation"])
    log.info("%s: %d visits, %d lesion rows; DC %s", title, len(visits), len(lesions),
             t2.loc[t2["column"] == "dc", "summary"].iloc[0])
    return paths


def run_compare(dataset_dirs: Mapping[str, str | Path], out_table2: str | Path, out_size_groups_png: str | Path,
                out_tlv_png: str | Path, *, trial: str) -> pd.DataFrame:
    """The sources of one trial side by side: Table 2 with one block of rows per source, and the
    size-group bars and TLV agreement of every source in one figure each.

    ``dataset_dirs`` maps each source to the folder :func:`run_dataset` wrote for it.
    """
    from t2lesion.plots import metrics as plots

    tables, groups, visits = [], {}, {}
    for source, folder in dataset_dirs.items():
        paths = dataset_outputs(folder)
        tables.append(pd.read_csv(paths["table2"], sep="\t"))
        groups[source] = pd.read_csv(paths["size_groups"], sep="\t")
        visits[source] = pd.read_csv(paths["visits"], sep="\t")
    t2 = pd.concat(tables, ignore_index=True)
    _write_tsv(t2, out_table2)
    title = f"trial-{trial}: " + " vs ".join(dataset_dirs)
    plots.plot_size_groups(groups, out_size_groups_png, title=title)
    plots.plot_agreement_sources(visits, out_tlv_png, title=title)
    for source in dataset_dirs:
        dc = t2.loc[(t2["source"] == source) & (t2["column"] == "dc"), "summary"]
        log.info("%s: DC %s", source, dc.iloc[0] if len(dc) else "n/a")
    return t2
