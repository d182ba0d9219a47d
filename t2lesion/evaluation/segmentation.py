"""Segmentation and lesion-detection metrics of one visit's masks, on arrays (docs/DESIGN.md §8).

Implements the evaluation of Krishnan et al. 2023, Methods "Evaluation metrics",
Table 2 (voxel and lesion metrics, r_vol, r_count), Table 3 (ISBI-2015 score, as
an option) and Fig. 3a–c (lesion DC, LTPR, LFPR by lesion size group). Every
table is computed per *mask source* (``classical``, ``unet``) against the GT mask.
This module holds the definitions and the per-visit maths; the aggregation over
visits is :mod:`t2lesion.evaluation.table2`, the file-level entry points
:mod:`t2lesion.evaluation.files`.

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

import math
from typing import NamedTuple

import cc3d
import numpy as np
import pandas as pd

from t2lesion.errors import InputError

CONNECTIVITIES = (6, 18, 26)
DEFAULT_SIZE_GROUPS: tuple[tuple[int, int | None], ...] = ((3, 10), (11, 50), (51, 100), (101, None))

# Paper defaults (Methods, "Evaluation metrics"); config keys metrics.connectivity,
# metrics.min_size, metrics.overlap.
CONNECTIVITY = 18
MIN_SIZE = 3
OVERLAP = 0.10

# Columns of the per-visit row that carry the parameters, so that a dataset
# never silently mixes visits evaluated under different rules.
PARAM_COLUMNS = ("connectivity", "min_size", "overlap", "fp_overlap", "clean_voxel_metrics")

LESION_COLUMNS = [
    "kind", "lesion_id", "n_voxels", "volume_ml", "size_group", "overlap_fraction",
    "matched", "false_positive", "lesion_dc", "centroid_z", "centroid_y", "centroid_x",
]


# --------------------------------------------------------------------------- parameters


def connectivity_structure(connectivity: int) -> np.ndarray:
    """SciPy's structuring element of a 3-D ``connectivity``: 6, 18 or 26 neighbours (faces,
    edges, corners), for ``ndimage.label`` or ``binary_dilation`` to agree with cc3d's."""
    rank = {6: 1, 18: 2, 26: 3}.get(int(connectivity))
    if rank is None:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    from scipy import ndimage

    return ndimage.generate_binary_structure(3, rank)


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
