"""Table 2 aggregation: the per-visit metrics of one dataset summarised over its visits (docs/DESIGN.md §8).

Mean ± SD of every metric (NaN excluded and counted), r_vol and r_count (Pearson r
with a Fisher-z CI), Bland–Altman agreement, the ISBI-2015 score (Table 3, as an
option) and the size-group table of Fig. 3a–c. Works on tables (the visit rows of
:func:`t2lesion.evaluation.segmentation.evaluate_visit`, the per-lesion rows of
:func:`~t2lesion.evaluation.segmentation.lesion_metrics`); reads and writes no file.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from t2lesion.evaluation.segmentation import (DEFAULT_SIZE_GROUPS, _ratio, assign_size_groups,
                                              normalise_size_groups, size_group_labels)
from t2lesion.formatting import fmt_num

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


#: z of the 95 % limits of agreement
LOA_Z = 1.96


def bland_altman(gt, pred) -> dict:
    """Bland–Altman bias (mean of pred − gt) and 95 % limits of agreement (bias ± 1.96 SD)."""
    d = np.asarray(pred, float) - np.asarray(gt, float)
    d = d[np.isfinite(d)]
    bias = float(d.mean()) if d.size else math.nan
    sd = float(d.std(ddof=1)) if d.size > 1 else math.nan
    return {"bias": bias, "sd_diff": sd, "loa_low": bias - LOA_Z * sd, "loa_high": bias + LOA_Z * sd}


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
    ``"0.720 ± 0.120"`` (or ``"0.969"`` for a correlation row), in 3 significant digits
    (t2lesion.formatting).
    """
    rows = []
    for block, name, col in TABLE2_ROWS:
        ms = mean_sd(visits[col])
        rows.append({"block": block, "metric": name, "column": col, **ms,
                     "summary": f"{fmt_num(ms['mean'])} ± {fmt_num(ms['sd'])}"})
    if isbi_score:
        ms = mean_sd(isbi2015_scores(visits))
        rows.append({"block": "isbi2015", "metric": "ISBI-2015 score", "column": "isbi_score", **ms,
                     "summary": f"{fmt_num(ms['mean'])} ± {fmt_num(ms['sd'])}"})
    for block, name, g, p in (("segmentation", "r_vol", "gt_tlv_ml", "pred_tlv_ml"),
                              ("detection", "r_count", "gt_tlc", "pred_tlc")):
        pc = pearson_ci(visits[g], visits[p], confidence)
        rows.append({"block": block, "metric": name, "column": f"{g}~{p}", "mean": pc["r"], "sd": math.nan,
                     "n": pc["n"], "n_nan": pc["n_nan"], "summary": fmt_num(pc["r"])})
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
