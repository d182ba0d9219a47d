"""ANCOVA of percent TLV change per follow-up week."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from t2lesion.stats.change import compute_change
from t2lesion.stats.common import (
    OK, SKIPPED, Exclusions, _write_tsv, confounded_reason, region_is_us, resolve_arms, resolve_sources, side_by_side,
    write_exclusions,
)
from t2lesion.stats.inputs import _load

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
    X["region_US"] = region_is_us(d["region"], us_label)
    X["age_gt45"] = (d["age"].to_numpy(float) > age_cutoff_years).astype(float)
    terms = {"arm": [f"arm_{a}" for a in arms[1:]], "baseline_tlv_ml": ["baseline_tlv_ml"],
             "region_US": ["region_US"], "age_gt45": ["age_gt45"]}
    return d["pct_change"].to_numpy(float), X, terms


def _ancova_skip_reason(d: pd.DataFrame, X: pd.DataFrame, arms: list[str], min_n_per_arm: int, us_label: str,
                        age_cutoff_years: float) -> str | None:
    if len(arms) < 2:
        return f"one arm only ({arms[0]}): no treatment arm to compare with the control arm"
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
    return confounded_reason(X)


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


def ancova(change: pd.DataFrame, participants: pd.DataFrame, control_arm: str, *args, **kwargs
           ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(coefficients, type II table)`` of :func:`ancova_full` (same arguments)."""
    coef, anova_t, _, _ = ancova_full(change, participants, control_arm, *args, **kwargs)
    return coef, anova_t


def lsmeans(fit, X: pd.DataFrame, arms: list[str], conf_level: float) -> list[dict]:
    """Least-squares (adjusted) means per arm, R ``emmeans`` convention.

    The reference grid sets the continuous covariate (baseline TLV) at its mean over
    the analysed subjects and weights the two levels of each factor covariate
    (region US/ROW, age group) equally, i.e. their 0/1 codes at 0.5 — what
    ``emmeans(lm(pct ~ arm + tlv_bl + region + agegrp), "arm")`` gives with region and
    age group as factors. SE = sqrt(L V Lᵀ), t-based CI with the residual df.
    """
    beta, V = fit.params.to_numpy(float), fit.cov_params().to_numpy(float)
    grid = {"Intercept": 1.0, "baseline_tlv_ml": float(X["baseline_tlv_ml"].mean()), "region_US": 0.5,
            "age_gt45": 0.5}
    q = float(sps.t.ppf(0.5 + conf_level / 2, fit.df_resid))
    out = []
    for arm in arms:
        L = np.array([grid.get(c, 1.0 if c == f"arm_{arm}" else 0.0) for c in X.columns])
        est, se = float(L @ beta), float(np.sqrt(L @ V @ L))
        out.append({"arm": arm, "lsmean": est, "se": se, "df": float(fit.df_resid), "ci_low": est - q * se,
                    "ci_high": est + q * se,
                    "grid": f"baseline TLV at its mean ({grid['baseline_tlv_ml']:.6g} mL); region and age group "
                            f"levels equally weighted (emmeans)"})
    return out


def ancova_full(
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
    carried: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """ANCOVA of percent TLV change per source × follow-up week (paper Methods/Results).

    ``pct_change ~ arm + baseline_tlv_ml + region_US + age_gt45`` by OLS
    (``statsmodels.api.OLS`` on an explicit design matrix); codings in the package
    docstring and in the ``coding`` column. ``weeks`` (``stats.ancova_weeks``)
    defaults to every follow-up week present.

    Every participant of ``participants`` (in ``arms``) is analysed or excluded with
    a reason, per source × week: no lesion data for the source (``carried``: the
    long-table stage's reasons, see :func:`t2lesion.stats.inputs._load`), no visit
    that week, baseline TLV 0 (no percent change), a missing covariate (region or
    age ``n/a``: left out of the model, as R's ``na.omit``).

    Returns ``(coefficients, anova, lsmeans, exclusions)``: coefficients has one row
    per term (term_type "arm" rows are the treatment effects: estimate = adjusted
    difference treated − control in percentage points) with estimate, se, ci_low,
    ci_high (t-based, ``conf_level``), t, p, n, df_resid; anova is the Type II F
    table (:func:`type2_anova_table`; empty when ``type2_anova`` is False); lsmeans
    has per source × week × arm the LS mean (:func:`lsmeans`) with its CI, the
    adjusted difference from the control arm with its CI and p, and n_arm,
    n_analysed, n_missing (= n_arm − n_analysed) split into n_no_lesion_data,
    n_no_visit, n_excluded_bl0, n_missing_covariate; exclusions has participant_id,
    source, analysis "ancova", scope, reason. Skipped source × week combinations get
    one row with status "skipped" and the reason in ``note``.
    """
    import statsmodels.api as sm

    arms = resolve_arms(participants, control_arm, arms)
    sources = resolve_sources(change, sources)
    excl = Exclusions("ancova")
    part = participants[participants["arm"].isin(arms)][["participant_id", "arm", "region", "age"]]
    d_all = change.merge(part, on="participant_id", how="inner")
    coef_rows, anova_rows, lsm_rows = [], [], []
    codings = {k: v.format(c=age_cutoff_years, us=us_label) for k, v in ANCOVA_CODINGS.items()}
    labels = {"Intercept": "Intercept", "baseline_tlv_ml": "Baseline TLV (mL)",
              "region_US": f"Region: {us_label} vs rest of world",
              "age_gt45": f"Age > {age_cutoff_years:g} vs <= {age_cutoff_years:g}"}
    for arm in arms[1:]:
        labels[f"arm_{arm}"] = f"Arm: {arm} vs {control_arm}"
        codings[f"arm_{arm}"] = f"arm: {arm} = 1 vs control {control_arm} = 0 (reference {control_arm})"
    cov_missing = {
        "region": set(part.loc[part["region"].isna(), "participant_id"]),
        "age": set(part.loc[part["age"].isna(), "participant_id"]),
    }
    arm_of = dict(zip(part["participant_id"], part["arm"]))
    carried = carried if carried is not None else pd.DataFrame(columns=["participant_id", "source", "scope",
                                                                        "reason"])
    for src in sources:
        ds = d_all[d_all["source"] == src]
        have = set(ds["participant_id"])
        no_data = [p for p in part["participant_id"] if p not in have]
        cs = carried[carried["source"] == src]
        whole = {r.participant_id: r.reason for r in cs.itertuples() if not str(r.scope)}
        by_reason = {}
        for pid in no_data:
            by_reason.setdefault(whole.get(pid, f"no {src} lesion data"), []).append(pid)
        for why, pids in by_reason.items():
            excl.add(pids, src, why)
        bl0 = sorted(set(ds.loc[ds["excluded_bl0"], "participant_id"]))
        excl.add(bl0, src, "baseline TLV 0: no percent change")
        for cov, pids in cov_missing.items():
            excl.add(sorted((pids & have) - set(bl0)), src, f"missing covariate {cov} (n/a in participants.tsv)")
        wk = sorted(ds["week"].unique()) if weeks is None else list(weeks)
        wk = [w for w in wk if w != baseline_week]
        for w in wk:
            dw = ds[ds["week"] == w]
            n_bl0 = int(dw["excluded_bl0"].sum())
            at_w = set(dw["participant_id"])
            visit_reason = {r.participant_id: r.reason for r in cs.itertuples() if str(r.scope) == f"week {w}"}
            no_visit = sorted(have - at_w)
            by_reason: dict[str, list[str]] = {}
            for pid in no_visit:
                by_reason.setdefault(visit_reason.get(pid, f"no week {w} visit"), []).append(pid)
            for why, pids in by_reason.items():
                excl.add(pids, src, why, f"week {w}")
            miss_cov = dw["region"].isna() | dw["age"].isna()
            n_cov = dw.loc[miss_cov & dw["pct_change"].notna(), "participant_id"]
            dw = dw[dw["pct_change"].notna() & ~miss_cov]
            base = {"source": src, "week": int(w), "n": len(dw), "n_excluded_bl0": n_bl0}
            no_data_s, no_visit_s, bl0_at_w = set(no_data), set(no_visit), set(bl0) & at_w
            for arm in arms:
                ids = [p for p, a in arm_of.items() if a == arm]
                n_an = int((dw["arm"] == arm).sum())
                lsm_rows.append({
                    "source": src, "week": int(w), "arm": arm, "n_arm": len(ids), "n_analysed": n_an,
                    "n_missing": len(ids) - n_an, "n_no_lesion_data": sum(p in no_data_s for p in ids),
                    "n_no_visit": sum(p in no_visit_s for p in ids),
                    "n_excluded_bl0": sum(p in bl0_at_w for p in ids),
                    "n_missing_covariate": int(sum(arm_of[p] == arm for p in n_cov)),
                    "conf_level": conf_level, "status": SKIPPED, "note": "",
                })
            y, X, terms = _ancova_design(dw, arms, age_cutoff_years, us_label)
            reason = (f"no visits at week {w}" if len(dw) == 0 else
                      _ancova_skip_reason(dw, X, arms, min_n_per_arm, us_label, age_cutoff_years))
            lsm_new = lsm_rows[-len(arms):]
            if reason:
                log.warning("ANCOVA skipped for source %s, week %s: %s", src, w, reason)
                coef_rows.append({**base, "term": "", "status": SKIPPED, "note": reason})
                anova_rows.append({**base, "term": "", "status": SKIPPED, "note": reason})
                for r in lsm_new:
                    r["note"] = reason
                continue
            fit = sm.OLS(y, X).fit()
            ci = fit.conf_int(alpha=1 - conf_level)
            notes = [f"{n_bl0} with baseline TLV 0 excluded" if n_bl0 else "",
                     f"{len(n_cov)} with a missing covariate excluded" if len(n_cov) else ""]
            note = "; ".join(x for x in notes if x)
            for name in X.columns:
                ttype = "arm" if name.startswith("arm_") else ("intercept" if name == "Intercept" else "covariate")
                coef_rows.append({
                    **base, "term": name, "term_type": ttype, "label": labels[name], "coding": codings[name],
                    "estimate": float(fit.params[name]), "se": float(fit.bse[name]),
                    "ci_low": float(ci.loc[name, 0]), "ci_high": float(ci.loc[name, 1]),
                    "t": float(fit.tvalues[name]), "p": float(fit.pvalues[name]),
                    "df_resid": float(fit.df_resid), "status": OK, "note": note,
                })
            for r, lm in zip(lsm_new, lsmeans(fit, X, arms, conf_level)):
                r.update(lm, status=OK, note=note)
                name = f"arm_{r['arm']}"
                if name in X.columns:
                    r.update(diff_vs_control=float(fit.params[name]), diff_ci_low=float(ci.loc[name, 0]),
                             diff_ci_high=float(ci.loc[name, 1]), diff_p=float(fit.pvalues[name]))
            if type2_anova:
                for name, r in type2_anova_table(y, X, terms).iterrows():
                    anova_rows.append({
                        **base, "term": name, "sum_sq": r["sum_sq"], "df": r["df"], "F": r["F"],
                        "p": r["PR(>F)"], "status": OK, "note": "Type II sums of squares",
                    })
    coef_cols = ["source", "week", "term", "term_type", "label", "coding", "estimate", "se", "ci_low", "ci_high",
                 "t", "p", "n", "n_excluded_bl0", "df_resid", "status", "note"]
    anova_cols = ["source", "week", "term", "sum_sq", "df", "F", "p", "n", "n_excluded_bl0", "status", "note"]
    lsm_cols = ["source", "week", "arm", "lsmean", "se", "df", "ci_low", "ci_high", "conf_level",
                "diff_vs_control", "diff_ci_low", "diff_ci_high", "diff_p", "n_arm", "n_analysed", "n_missing",
                "n_no_lesion_data", "n_no_visit", "n_excluded_bl0", "n_missing_covariate", "grid", "status", "note"]
    return (pd.DataFrame(coef_rows).reindex(columns=coef_cols),
            pd.DataFrame(anova_rows).reindex(columns=anova_cols),
            pd.DataFrame(lsm_rows).reindex(columns=lsm_cols), excl.frame())


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
    out_lsmeans_tsv: str | Path | None = None,
    out_exclusions_tsv: str | Path | None = None,
    long_exclusions_tsv: str | Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ANCOVA of percent TLV change per follow-up week (see :func:`ancova_full`).

    Writes the coefficient table, the Type II F table and, optionally, a wide table
    of the arm effects with one column block per source, the LS-means table (with
    n analysed/missing per arm and week) and the exclusions table.
    ``long_exclusions_tsv``: the long-table stage's exclusions (reasons carried).
    """
    participants, long, _, carried = _load(long_tsv, participants_tsv, None, arms, baseline_week,
                                           long_exclusions_tsv)
    srcs = resolve_sources(long, sources)
    change = compute_change(long[long["source"].isin(srcs)], baseline_week)
    coef, anova_t, lsm, excl = ancova_full(change, participants, control_arm, arms, weeks, baseline_week,
                                           age_cutoff_years, us_label, conf_level, min_n_per_arm, srcs,
                                           carried=carried)
    _write_tsv(coef, out_coef_tsv)
    _write_tsv(anova_t, out_anova_tsv)
    if out_wide_tsv is not None:
        arm_rows = coef[(coef["term_type"] == "arm") | (coef["status"] != OK)]
        _write_tsv(side_by_side(arm_rows, ["week", "term", "label"],
                                ["estimate", "ci_low", "ci_high", "p", "n", "status", "note"], srcs), out_wide_tsv)
    if out_lsmeans_tsv is not None:
        _write_tsv(lsm, out_lsmeans_tsv)
    write_exclusions(excl, out_exclusions_tsv)
    return coef, anova_t
