"""TLV agreement of a segmentation source with GT, visit by visit (docs/DESIGN.md §15).

Intraclass correlation (Shrout & Fleiss, Psychol. Bull. 86:420–428, 1979; McGraw & Wong,
Psychol. Methods 1:30–46, 1996). Data: n targets (visits) rated by k raters (here k = 2: GT and
the source), x[i, j]. Two-way ANOVA without replication:

* BMS = k · Σ_i (x̄_i· − x̄)² / (n − 1)          between targets
* JMS = n · Σ_j (x̄_·j − x̄)² / (k − 1)          between raters (judges)
* EMS = Σ (x_ij − x̄_i· − x̄_·j + x̄)² / ((n − 1)(k − 1))   residual

* **ICC(2,1)**, two-way random, *absolute agreement*, single measure:
  (BMS − EMS) / (BMS + (k − 1) EMS + k (JMS − EMS) / n). A systematic offset of the source
  (a bias) lowers it.
* **ICC(3,1)**, two-way mixed, *consistency*, single measure: (BMS − EMS) / (BMS + (k − 1) EMS).
  Blind to a constant offset: only the ranking and spread of the visits count.

Confidence intervals (level 1 − α), F quantiles F_q(df1, df2) at q = 1 − α/2:

* ICC(3,1): F0 = BMS / EMS, FL = F0 / F_q(n − 1, (n − 1)(k − 1)), FU = F0 · F_q((n − 1)(k − 1),
  n − 1); bounds (FL − 1) / (FL + k − 1) and (FU − 1) / (FU + k − 1).
* ICC(2,1), Satterthwaite's degrees of freedom (Shrout & Fleiss Eq. 10–11): with ρ = ICC(2,1),
  Fj = JMS / EMS, a = kρ / (n (1 − ρ)), b = 1 + kρ (n − 1) / (n (1 − ρ)),
  v = (a Fj + b)² / ((a Fj)² / (k − 1) + b² / ((n − 1)(k − 1))); F* = F_q(n − 1, v),
  F** = F_q(v, n − 1); lower = n (BMS − F* EMS) / (F* (k JMS + (kn − k − n) EMS) + n BMS),
  upper = n (F** BMS − EMS) / (k JMS + (kn − k − n) EMS + n F** BMS).

Undefined (NaN) with fewer than 2 complete targets, or when every value is equal (0 / 0); visits
with a missing value in any rater are dropped and counted (``n_nan``).

Bland–Altman (Bland & Altman, Lancet 1986): d_i = source − GT; bias = mean d, SD of d (ddof 1),
95 % limits of agreement bias ± 1.96 SD. In percent: ``bias_pct_gt`` = 100 · bias / mean GT TLV
(the issue's "TLV bias within ±10 %"), and the percent-difference plot's
p_i = 100 · d_i / ((source_i + GT_i) / 2) with its own bias and limits (visits whose mean is 0
are left out of p, counted in ``n_pct_undefined``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps

from t2lesion.evaluation.table2 import LOA_Z, bland_altman

#: Columns of :func:`tlv_agreement_table`.
AGREEMENT_COLUMNS = [
    "source", "n", "n_nan", "mean_gt", "mean_source", "icc21", "icc21_ci_low", "icc21_ci_high", "icc31",
    "icc31_ci_low", "icc31_ci_high", "confidence", "bias", "sd_diff", "loa_low", "loa_high", "bias_pct_gt",
    "pct_bias", "pct_sd", "pct_loa_low", "pct_loa_high", "n_pct_undefined",
]


def _ratings(x) -> tuple[np.ndarray, int]:
    x = np.asarray(x, dtype=float)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"ratings must be a 2-D array of targets x raters (>= 2 raters), got shape {x.shape}")
    ok = np.isfinite(x).all(axis=1)
    return x[ok], int((~ok).sum())


def mean_squares(x) -> dict:
    """Two-way ANOVA mean squares of a targets × raters table (rows with a NaN dropped)."""
    x, n_nan = _ratings(x)
    n, k = x.shape
    out = {"n": n, "k": k, "n_nan": n_nan, "bms": math.nan, "jms": math.nan, "ems": math.nan}
    if n < 2:
        return out
    g = x.mean()
    rows, cols = x.mean(axis=1), x.mean(axis=0)
    resid = x - rows[:, None] - cols[None, :] + g
    out.update(bms=float(k * ((rows - g) ** 2).sum() / (n - 1)), jms=float(n * ((cols - g) ** 2).sum() / (k - 1)),
               ems=float((resid ** 2).sum() / ((n - 1) * (k - 1))))
    return out


def _div(a: float, b: float) -> float:
    return a / b if b != 0 and math.isfinite(a) and math.isfinite(b) else math.nan


def icc(x, confidence: float = 0.95) -> dict:
    """ICC(2,1) and ICC(3,1) of a targets × raters table with their CIs (module docstring).

    Keys: ``n, k, n_nan, bms, jms, ems, icc21, icc21_ci_low, icc21_ci_high, icc31,
    icc31_ci_low, icc31_ci_high, confidence``. Identical raters with varying targets give 1.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    ms = mean_squares(x)
    n, k, bms, jms, ems = ms["n"], ms["k"], ms["bms"], ms["jms"], ms["ems"]
    out = {**ms, "icc21": math.nan, "icc21_ci_low": math.nan, "icc21_ci_high": math.nan, "icc31": math.nan,
           "icc31_ci_low": math.nan, "icc31_ci_high": math.nan, "confidence": confidence}
    if n < 2:
        return out
    r21 = _div(bms - ems, bms + (k - 1) * ems + k * (jms - ems) / n)
    r31 = _div(bms - ems, bms + (k - 1) * ems)
    out.update(icc21=r21, icc31=r31)
    q = 1 - (1 - confidence) / 2
    dfn, dfe = n - 1, (n - 1) * (k - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if ems == 0:
            # No residual: the ranking is perfect (F0 infinite); both bounds of ICC(3,1) are 1.
            if bms > 0:
                out.update(icc31_ci_low=1.0, icc31_ci_high=1.0)
                if jms == 0:
                    out.update(icc21_ci_low=1.0, icc21_ci_high=1.0)
            return out
        f0 = bms / ems
        fl, fu = f0 / sps.f.ppf(q, dfn, dfe), f0 * sps.f.ppf(q, dfe, dfn)
        out.update(icc31_ci_low=float((fl - 1) / (fl + k - 1)), icc31_ci_high=float((fu - 1) / (fu + k - 1)))
        if math.isfinite(r21) and r21 < 1:
            fj = jms / ems
            a = k * r21 / (n * (1 - r21))
            b = 1 + k * r21 * (n - 1) / (n * (1 - r21))
            v = (a * fj + b) ** 2 / ((a * fj) ** 2 / (k - 1) + b ** 2 / dfe)
            f1, f2 = sps.f.ppf(q, dfn, v), sps.f.ppf(q, v, dfn)
            c = k * jms + (k * n - k - n) * ems
            out.update(icc21_ci_low=float(n * (bms - f1 * ems) / (f1 * c + n * bms)),
                       icc21_ci_high=float(n * (f2 * bms - ems) / (c + n * f2 * bms)))
    return out


def bland_altman_pct(gt, source) -> dict:
    """Bland–Altman in the data's unit and in percent (module docstring); pairs with a NaN dropped.

    Keys: ``n, bias, sd_diff, loa_low, loa_high, bias_pct_gt, pct_bias, pct_sd, pct_loa_low,
    pct_loa_high, n_pct_undefined``.
    """
    g, s = np.asarray(gt, float), np.asarray(source, float)
    if g.shape != s.shape:
        raise ValueError(f"gt and source differ in length: {g.shape} vs {s.shape}")
    ok = np.isfinite(g) & np.isfinite(s)
    g, s = g[ok], s[ok]
    n = g.size
    ba = bland_altman(g, s)
    m = (s + g) / 2
    defined = m != 0
    # the percent differences' own Bland-Altman: differences of 100 (s - g) / mean against 0
    p = 100 * (s - g)[defined] / m[defined]
    pct = bland_altman(np.zeros_like(p), p)
    return {"n": n, **ba,
            "bias_pct_gt": _div(100 * ba["bias"], float(g.mean())) if n else math.nan,
            "pct_bias": pct["bias"], "pct_sd": pct["sd_diff"], "pct_loa_low": pct["loa_low"],
            "pct_loa_high": pct["loa_high"], "n_pct_undefined": int((~defined).sum())}


def tlv_agreement(gt, source, confidence: float = 0.95) -> dict:
    """ICC(2,1), ICC(3,1) (raters GT and source) and Bland–Altman of one source's TLV against GT's."""
    g, s = np.asarray(gt, float), np.asarray(source, float)
    if g.shape != s.shape or g.ndim != 1:
        raise ValueError(f"gt and source must be 1-D of one length, got {g.shape} vs {s.shape}")
    ic = icc(np.column_stack([g, s]), confidence)
    ba = bland_altman_pct(g, s)
    ok = np.isfinite(g) & np.isfinite(s)
    return {"n": ic["n"], "n_nan": ic["n_nan"], "mean_gt": float(g[ok].mean()) if ok.any() else math.nan,
            "mean_source": float(s[ok].mean()) if ok.any() else math.nan,
            **{k: ic[k] for k in AGREEMENT_COLUMNS if k.startswith("icc")}, "confidence": confidence,
            **{k: v for k, v in ba.items() if k != "n"}}


def tlv_agreement_table(visits: pd.DataFrame, confidence: float = 0.95, gt: str = "gt",
                        value: str = "tlv_ml") -> pd.DataFrame:
    """One row per non-GT source (columns :data:`AGREEMENT_COLUMNS`) from a long visit table.

    ``visits`` has ``participant_id, session, source`` and ``value`` (the stats stage's
    ``tlv_long.tsv``); a source is paired with GT on (participant_id, session).
    """
    need = {"participant_id", "session", "source", value}
    missing = sorted(need - set(visits.columns))
    if missing:
        raise ValueError(f"visit table lacks column(s) {missing}")
    if gt not in set(visits["source"]):
        raise ValueError(f"visit table has no {gt!r} source to compare with")
    key = ["participant_id", "session"]
    ref = visits.loc[visits["source"] == gt, key + [value]]
    rows = []
    for src in dict.fromkeys(visits["source"]):
        if src == gt:
            continue
        m = ref.merge(visits.loc[visits["source"] == src, key + [value]], on=key, suffixes=("_gt", "_src"))
        rows.append({"source": src, **tlv_agreement(m[f"{value}_gt"], m[f"{value}_src"], confidence)})
    return pd.DataFrame(rows).reindex(columns=AGREEMENT_COLUMNS)


__all__ = ["AGREEMENT_COLUMNS", "LOA_Z", "bland_altman_pct", "icc", "mean_squares", "tlv_agreement",
           "tlv_agreement_table"]
