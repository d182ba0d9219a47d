"""ANCOVA of percent TLV change per follow-up week."""

from __future__ import annotations

import logging
import math
import re
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from t2lesion.errors import InputError
from t2lesion.io import write_tsv  # noqa: F401
from t2lesion.stats.inputs import _load
from t2lesion.stats.change import compute_change
from t2lesion.stats.common import (
    FAILED, GT_SOURCE, LONG_COLUMNS, OK, OUTCOME_COLUMNS, PARTICIPANT_COLUMNS, SKIPPED, SOURCE_RE, SUB_RE,
    DEFAULT_COX_FIT_OPTIONS, WARNING, _write_tsv, resolve_arms, resolve_sources, side_by_side,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------- ANCOVA

ANCOVA_CODINGS = {
    "baseline_tlv_ml": "baseline TLV in mL (uncentred)",
    "region_US": "region: {us} = 1 vs rest of world = 0 (reference ROW)",
    "age_gt45": "age group: > {c:g} years = 1 vs <= {c:g} years = 0 (reference <= {c:g})",
    "Intercept": "control arm, baseline TLV 0, ROW, age <= {c:g}",
}


def _ancova_design(
    d: pd.DataFrame, arms: list[str], age_cutoff_years: float, us_label: str
) -> tuple[np.ndarray, pd.DataFrame, dict[str, list[str]]]:
    """Response, design matrix (with intercept) and term → columns for the ANCOVA."""
    X = pd.DataFrame({"Intercept": np.ones(len(d))}, index=d.index)
    for arm in arms[1:]:
        X[f"arm_{arm}"] = (d["arm"].to_numpy() == arm).astype(float)
    X["baseline_tlv_ml"] = d["tlv_bl_ml"].to_numpy(float)
    X["region_US"] = (d["region"].to_numpy() == us_label).astype(float)
    X["age_gt45"] = (d["age"].to_numpy(float) > age_cutoff_years).astype(float)
    terms = {"arm": [f"arm_{a}" for a in arms[1:]], "baseline_tlv_ml": ["baseline_tlv_ml"],
             "region_US": ["region_US"], "age_gt45": ["age_gt45"]}
    return d["pct_change"].to_numpy(float), X, terms


def _ancova_skip_reason(d: pd.DataFrame, X: pd.DataFrame, arms: list[str], min_n_per_arm: int, us_label: str,
                        age_cutoff_years: float) -> str | None:
    counts = d["arm"].value_counts()
    for arm in arms:
        k = int(counts.get(arm, 0))
        if k == 0:
            return f"arm {arm} has no subjects with a percent change"
        if k < min_n_per_arm:
            return f"arm {arm} has {k} subject(s) with a percent change (< stats.min_n_per_arm={min_n_per_arm})"
    if X["baseline_tlv_ml"].nunique() < 2:
        return "covariate baseline_tlv_ml has one value"
    if X["region_US"].nunique() < 2:
        lvl = f"all {us_label}" if X["region_US"].iloc[0] else f"none {us_label} (all rest of world)"
        return f"covariate region has one level ({lvl})"
    if X["age_gt45"].nunique() < 2:
        lvl = f"all > {age_cutoff_years:g}" if X["age_gt45"].iloc[0] else f"all <= {age_cutoff_years:g}"
        return f"covariate age group has one level ({lvl})"
    if len(X) <= X.shape[1]:
        return f"too few subjects: n={len(X)} for {X.shape[1]} model parameters"
    return None


def type2_anova_table(y: np.ndarray, X: pd.DataFrame, terms: Mapping[str, list[str]]) -> pd.DataFrame:
    """Type II F table of an OLS model without interactions (statsmodels OLS fits).

    For a main-effects model Type II equals dropping each term (all its columns)
    from the full model: sum_sq = RSS(reduced) − RSS(full), F = (sum_sq/df) /
    (RSS(full)/df_resid). Same numbers as ``statsmodels.stats.anova.anova_lm(typ=2)``
    on the equivalent formula model (checked in the tests), without formula parsing.
    Columns sum_sq, df, F, PR(>F); last row "Residual".
    """
    import statsmodels.api as sm

    full = sm.OLS(y, X.to_numpy()).fit()
    rss, dfr = float(full.ssr), float(full.df_resid)
    rows = {}
    for term, cols in terms.items():
        red = sm.OLS(y, X.drop(columns=list(cols)).to_numpy()).fit()
        ss, k = float(red.ssr) - rss, float(len(cols))
        F = (ss / k) / (rss / dfr)
        rows[term] = {"sum_sq": ss, "df": k, "F": F, "PR(>F)": float(sps.f.sf(F, k, dfr))}
    rows["Residual"] = {"sum_sq": rss, "df": dfr, "F": np.nan, "PR(>F)": np.nan}
    return pd.DataFrame.from_dict(rows, orient="index")


def ancova(
    change: pd.DataFrame,
    participants: pd.DataFrame,
    control_arm: str,
    arms: Sequence[str] | None = None,
    weeks: Sequence[int] | None = None,
    baseline_week: int = 0,
    age_cutoff_years: float = 45.0,
    us_label: str = "US",
    conf_level: float = 0.95,
    min_n_per_arm: int = 2,
    sources: Sequence[str] | None = None,
    type2_anova: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ANCOVA of percent TLV change per source × follow-up week (paper Methods/Results).

    ``pct_change ~ arm + baseline_tlv_ml + region_US + age_gt45`` by OLS
    (``statsmodels.api.OLS`` on an explicit design matrix); codings in the module
    docstring and in the ``coding`` column. ``weeks`` (``stats.ancova_weeks``)
    defaults to every follow-up week present. Participants with baseline TLV 0
    are excluded and counted (``n_excluded_bl0``).

    Returns ``(coefficients, anova)``: coefficients has one row per term (term_type
    "arm" rows are the treatment effects: estimate = adjusted difference treated −
    control in percentage points) with estimate, se, ci_low, ci_high (t-based,
    ``conf_level``), t, p, n, df_resid; anova is the Type II F table
    (:func:`type2_anova_table`: sum_sq, df, F, p per term and the residual; left
    empty when ``type2_anova`` is False, which only saves time in simulations).
    Skipped source × week combinations get one row with status "skipped" and the
    reason in ``note``.
    """
    import statsmodels.api as sm

    arms = resolve_arms(participants, control_arm, arms)
    sources = resolve_sources(change, sources)
    d_all = change.merge(participants[["participant_id", "arm", "region", "age"]], on="participant_id", how="left")
    coef_rows, anova_rows = [], []
    codings = {k: v.format(c=age_cutoff_years, us=us_label) for k, v in ANCOVA_CODINGS.items()}
    labels = {"Intercept": "Intercept", "baseline_tlv_ml": "Baseline TLV (mL)",
              "region_US": f"Region: {us_label} vs rest of world",
              "age_gt45": f"Age > {age_cutoff_years:g} vs <= {age_cutoff_years:g}"}
    for arm in arms[1:]:
        labels[f"arm_{arm}"] = f"Arm: {arm} vs {control_arm}"
        codings[f"arm_{arm}"] = f"arm: {arm} = 1 vs control {control_arm} = 0 (reference {control_arm})"
    for src in sources:
        ds = d_all[d_all["source"] == src]
        wk = sorted(ds["week"].unique()) if weeks is None else list(weeks)
        wk = [w for w in wk if w != baseline_week]
        for w in wk:
            dw = ds[ds["week"] == w]
            n_bl0 = int(dw["excluded_bl0"].sum())
            dw = dw[dw["pct_change"].notna() & dw["arm"].isin(arms)]
            base = {"source": src, "week": int(w), "n": len(dw), "n_excluded_bl0": n_bl0}
            y, X, terms = _ancova_design(dw, arms, age_cutoff_years, us_label)
            reason = (f"no visits at week {w}" if len(dw) == 0 else
                      _ancova_skip_reason(dw, X, arms, min_n_per_arm, us_label, age_cutoff_years))
            if reason:
                log.warning("ANCOVA skipped for source %s, week %s: %s", src, w, reason)
                coef_rows.append({**base, "term": "", "status": SKIPPED, "note": reason})
                anova_rows.append({**base, "term": "", "status": SKIPPED, "note": reason})
                continue
            fit = sm.OLS(y, X).fit()
            ci = fit.conf_int(alpha=1 - conf_level)
            note = f"{n_bl0} with baseline TLV 0 excluded" if n_bl0 else ""
            for name in X.columns:
                ttype = "arm" if name.startswith("arm_") else ("intercept" if name == "Intercept" else "covariate")
                coef_rows.append({
                    **base, "term": name, "term_type": ttype, "label": labels[name], "coding": codings[name],
                    "estimate": float(fit.params[name]), "se": float(fit.bse[name]),
                    "ci_low": float(ci.loc[name, 0]), "ci_high": float(ci.loc[name, 1]),
                    "t": float(fit.tvalues[name]), "p": float(fit.pvalues[name]),
                    "df_resid": float(fit.df_resid), "status": OK, "note": note,
                })
            if type2_anova:
                for name, r in type2_anova_table(y, X, terms).iterrows():
                    anova_rows.append({
                        **base, "term": name, "sum_sq": r["sum_sq"], "df": r["df"], "F": r["F"],
                        "p": r["PR(>F)"], "status": OK, "note": "Type II sums of squares",
                    })
    coef_cols = ["source", "week", "term", "term_type", "label", "coding", "estimate", "se", "ci_low", "ci_high",
                 "t", "p", "n", "n_excluded_bl0", "df_resid", "status", "note"]
    anova_cols = ["source", "week", "term", "sum_sq", "df", "F", "p", "n", "n_excluded_bl0", "status", "note"]
    return (pd.DataFrame(coef_rows).reindex(columns=coef_cols),
            pd.DataFrame(anova_rows).reindex(columns=anova_cols))



def run_ancova(
    long_tsv: str | Path,
    participants_tsv: str | Path,
    out_coef_tsv: str | Path,
    out_anova_tsv: str | Path,
    control_arm: str,
    arms: Sequence[str] | None = None,
    weeks: Sequence[int] | None = None,
    baseline_week: int = 0,
    age_cutoff_years: float = 45.0,
    us_label: str = "US",
    conf_level: float = 0.95,
    min_n_per_arm: int = 2,
    sources: Sequence[str] | None = None,
    out_wide_tsv: str | Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ANCOVA of percent TLV change per follow-up week (see :func:`ancova`).

    Writes the coefficient table, the Type II F table and, optionally, a wide table
    of the arm effects with one column block per source.
    """
    participants, long, _ = _load(long_tsv, participants_tsv, None, arms, baseline_week)
    srcs = resolve_sources(long, sources)
    change = compute_change(long[long["source"].isin(srcs)], baseline_week)
    coef, anova_t = ancova(change, participants, control_arm, arms, weeks, baseline_week, age_cutoff_years,
                           us_label, conf_level, min_n_per_arm, srcs)
    _write_tsv(coef, out_coef_tsv)
    _write_tsv(anova_t, out_anova_tsv)
    if out_wide_tsv is not None:
        arm_rows = coef[(coef["term_type"] == "arm") | (coef["status"] != OK)]
        _write_tsv(side_by_side(arm_rows, ["week", "term", "label"],
                                ["estimate", "ci_low", "ci_high", "p", "n", "status", "note"], srcs), out_wide_tsv)
    return coef, anova_t


