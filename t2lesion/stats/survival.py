"""Survival analyses: Cox PH models (Table 4) and Kaplan–Meier curves (Fig. 4)."""

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

from t2lesion.cohort import ENDPOINTS, log_tlv
from t2lesion.errors import InputError
from t2lesion.io import write_tsv  # noqa: F401
from t2lesion.stats.inputs import _load
from t2lesion.stats.inputs import MAX_PROBLEMS  # noqa: F401
from t2lesion.stats.common import (
    FAILED, GT_SOURCE, LONG_COLUMNS, OK, OUTCOME_COLUMNS, PARTICIPANT_COLUMNS, SKIPPED, SOURCE_RE, SUB_RE,
    DEFAULT_COX_FIT_OPTIONS, WARNING, _write_tsv, resolve_arms, resolve_sources, side_by_side,
)

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------- Cox

COX_MODELS = ("univariable_log_tlv", "univariable_tlc", "multivariable")


def baseline_lesions(long: pd.DataFrame, baseline_week: int = 0, log_tlv_offset_ml: float = 0.01) -> pd.DataFrame:
    """Baseline TLV/TLC per source × participant: source, participant_id, tlv_bl_ml, tlc_bl, log_tlv."""
    bl = long.loc[long["week"] == baseline_week, ["source", "participant_id", "tlv_ml", "tlc"]]
    bl = bl.rename(columns={"tlv_ml": "tlv_bl_ml", "tlc": "tlc_bl"}).reset_index(drop=True)
    bl["log_tlv"] = log_tlv(bl["tlv_bl_ml"], log_tlv_offset_ml)
    return bl


def cox_design(
    d: pd.DataFrame, model: str, arms: list[str], edss_cutoff: float = 4.0, us_label: str = "US",
    log_tlv_offset_ml: float = 0.01,
) -> tuple[pd.DataFrame, dict[str, tuple[str, str]]]:
    """Covariate matrix of one Cox model and ``{term: (label, coding)}``.

    ``d`` holds participants' columns plus log_tlv and tlc_bl. Term names match
    :func:`t2lesion.cohort.true_coefficients`.
    """
    control = arms[0]
    X = pd.DataFrame(index=d.index)
    info: dict[str, tuple[str, str]] = {}
    lt_coding = f"log(baseline TLV mL + {log_tlv_offset_ml:g}), per unit (HR per e-fold TLV)"
    if model == "univariable_log_tlv":
        X["log_tlv"] = d["log_tlv"].astype(float)
        info["log_tlv"] = ("BL T2 TLV (log)", lt_coding)
    elif model == "univariable_tlc":
        X["tlc"] = d["tlc_bl"].astype(float)
        info["tlc"] = ("BL T2 TLC", "baseline lesion count, per lesion")
    elif model == "multivariable":
        for arm in arms[1:]:
            X[f"arm_{arm}"] = (d["arm"] == arm).astype(float)
            info[f"arm_{arm}"] = (f"Arm: {arm}", f"arm {arm} = 1 vs control {control} = 0 (reference {control})")
        X["sex_M"] = (d["sex"] == "M").astype(float)
        info["sex_M"] = ("Sex: M", "M = 1 vs F = 0 (reference F)")
        X["region_US"] = (d["region"] == us_label).astype(float)
        info["region_US"] = (f"Region: {us_label}", f"{us_label} = 1 vs rest of world = 0 (reference ROW)")
        X["edss_lt4"] = (d["edss_bl"].astype(float) < edss_cutoff).astype(float)
        info["edss_lt4"] = (f"BL EDSS: < {edss_cutoff:g}",
                            f"EDSS < {edss_cutoff:g} = 1 vs >= {edss_cutoff:g} = 0 (reference >= {edss_cutoff:g})")
        X["age"] = d["age"].astype(float)
        info["age"] = ("Age", "years, per year (uncentred)")
        X["log_tlv"] = d["log_tlv"].astype(float)
        info["log_tlv"] = ("BL T2 TLV (log)", lt_coding + "; HR in the control arm")
        for arm in arms[1:]:
            X[f"arm_{arm}_x_log_tlv"] = X[f"arm_{arm}"] * X["log_tlv"]
            info[f"arm_{arm}_x_log_tlv"] = (f"Arm {arm}: BL T2 TLV",
                                            f"interaction arm {arm} × log TLV (uncentred): ratio of log-TLV HRs")
    else:
        raise ValueError(f"unknown Cox model {model!r}")
    return X, info


def _one_level(X: pd.DataFrame, info: dict, arms: list[str]) -> str | None:
    for col in X.columns:
        if "_x_" in col:
            continue
        vals = X[col].unique()
        if len(vals) < 2:
            if col.startswith("arm_"):
                arm = col[4:]
                return (f"arm {arm} has no subjects" if vals[0] == 0 else
                        f"control arm {arms[0]} has no subjects")
            return f"covariate {col} has one level ({vals[0]:g} for all)"
    return None


def fit_cox(
    X: pd.DataFrame, time: np.ndarray, event: np.ndarray, fit_options: Mapping | None = None
) -> tuple[pd.DataFrame, str, str]:
    """Fit lifelines CoxPHFitter (Efron ties) tightly; return (summary, status, note).

    summary has index = term and columns coef, se, z, p (Wald), log_likelihood. ``status``
    is "ok", or "warning" with lifelines' convergence warning text in ``note``.
    """
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceWarning

    opts = dict(DEFAULT_COX_FIT_OPTIONS)
    opts.update(fit_options or {})
    df = X.copy()
    df["__time"] = np.asarray(time, float)
    df["__event"] = np.asarray(event, int)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cph = CoxPHFitter().fit(df, duration_col="__time", event_col="__event", fit_options=opts)
    msgs = [str(w.message).strip().splitlines()[0] for w in caught if issubclass(w.category, ConvergenceWarning)]
    coef, se = cph.params_.astype(float), cph.standard_errors_.astype(float)
    z = coef / se
    # Wald test as in lifelines' summary (chi2(1) of z^2 == two-sided normal)
    out = pd.DataFrame({"coef": coef, "se": se, "z": z, "p": 2 * sps.norm.sf(np.abs(z))})
    out["log_likelihood"] = float(cph.log_likelihood_)
    return out, (WARNING if msgs else OK), "; ".join(dict.fromkeys(msgs))


def cox_models(
    baseline: pd.DataFrame,
    participants: pd.DataFrame,
    outcomes: pd.DataFrame,
    control_arm: str,
    arms: Sequence[str] | None = None,
    endpoints: Sequence[str] = ENDPOINTS,
    edss_cutoff: float = 4.0,
    us_label: str = "US",
    conf_level: float = 0.95,
    fit_options: Mapping | None = None,
    log_tlv_offset_ml: float = 0.01,
    sources: Sequence[str] | None = None,
    models: Sequence[str] = COX_MODELS,
    min_events_per_term: float = 1.0,
) -> pd.DataFrame:
    """Cox PH models per source × endpoint (paper Table 4; SPEC §9).

    ``baseline`` from :func:`baseline_lesions`. Models: univariable log TLV,
    univariable TLC, and multivariable (arm, sex, region, EDSS < 4, age, log TLV,
    arm × log TLV), codings in the module docstring and the ``coding`` column.
    One row per term: coef (log HR), se, hr, hr_ci_low, hr_ci_high (Wald,
    ``conf_level``), z, p, n, events, status, note. A model that cannot run
    (no outcome rows, no events, a covariate with one level, an arm with no
    subjects, n <= number of terms, fewer than ``min_events_per_term`` events per
    term, lifelines convergence error) gives one row with empty term, status
    "skipped"/"failed" and the reason.
    """
    from lifelines.exceptions import ConvergenceError

    arms = resolve_arms(participants, control_arm, arms)
    sources = resolve_sources(baseline, sources)
    z = float(sps.norm.ppf(0.5 + conf_level / 2))
    rows = []
    part = participants[["participant_id", "arm", "age", "sex", "region", "edss_bl"]]
    for src in sources:
        bs = baseline[baseline["source"] == src]
        for ep in endpoints:
            oe = outcomes[outcomes["endpoint"] == ep]
            d = oe.merge(part, on="participant_id").merge(bs, on="participant_id")
            d = d[d["arm"].isin(arms)].reset_index(drop=True)
            n, events = len(d), int(d["event"].sum()) if len(d) else 0
            for model in models:
                base = {"source": src, "endpoint": ep, "model": model, "n": n, "events": events}
                if len(oe) == 0:
                    reason = f"no outcome rows for endpoint {ep}"
                elif n == 0:
                    reason = f"no participants with both {ep} outcomes and {src} lesion data"
                elif events == 0:
                    reason = f"no events for {ep} (all {n} participants censored)"
                else:
                    reason = None
                X = info = None
                if reason is None and model == "multivariable":
                    empty = [a for a in arms if not (d["arm"] == a).any()]
                    if empty:
                        reason = f"arm {empty[0]} has no subjects with {ep} outcomes and {src} lesion data"
                if reason is None:
                    X, info = cox_design(d, model, arms, edss_cutoff, us_label, log_tlv_offset_ml)
                    reason = _one_level(X, info, arms)
                    if reason is None and n <= X.shape[1]:
                        reason = f"too few subjects: n={n} for {X.shape[1]} terms"
                    elif reason is None and events < min_events_per_term * X.shape[1]:
                        reason = (f"too few events: {events} for {X.shape[1]} terms "
                                  f"(stats.min_events_per_term={min_events_per_term:g})")
                if reason:
                    log.warning("Cox %s skipped for source %s, endpoint %s: %s", model, src, ep, reason)
                    rows.append({**base, "term": "", "status": SKIPPED, "note": reason})
                    continue
                try:
                    s, status, note = fit_cox(X, d["time_weeks"].to_numpy(), d["event"].to_numpy(), fit_options)
                except (ConvergenceError, np.linalg.LinAlgError) as exc:
                    msg = str(exc).strip().splitlines()[0]
                    log.warning("Cox %s failed for source %s, endpoint %s: %s", model, src, ep, msg)
                    rows.append({**base, "term": "", "status": FAILED, "note": f"fit failed: {msg}"})
                    continue
                if not np.all(np.isfinite(s[["coef", "se"]].to_numpy())) or (s["coef"].abs() > 20).any():
                    status = WARNING
                    note = "; ".join(x for x in (note, "non-finite or |log HR| > 20: possible separation") if x)
                if status != OK:
                    log.warning("Cox %s for source %s, endpoint %s: %s", model, src, ep, note)
                with np.errstate(over="ignore", invalid="ignore"):
                    hr = np.exp(s["coef"].to_numpy(float))
                    lo = np.exp((s["coef"] - z * s["se"]).to_numpy(float))
                    hi = np.exp((s["coef"] + z * s["se"]).to_numpy(float))
                for j, (term, r) in enumerate(s.iterrows()):
                    label, coding = info[term]
                    rows.append({
                        **base, "term": term, "label": label, "coding": coding,
                        "coef": r["coef"], "se": r["se"], "hr": hr[j], "hr_ci_low": lo[j], "hr_ci_high": hi[j],
                        "z": r["z"], "p": r["p"], "log_likelihood": r["log_likelihood"],
                        "status": status, "note": note,
                    })
    cols = ["source", "endpoint", "model", "term", "label", "coding", "coef", "se", "hr", "hr_ci_low",
            "hr_ci_high", "z", "p", "n", "events", "log_likelihood", "status", "note"]
    return pd.DataFrame(rows).reindex(columns=cols)



def table4(cox: pd.DataFrame, sources: Sequence[str] | None = None, digits: int = 3) -> pd.DataFrame:
    """Table 4 layout: endpoint, model, term, label; per source ``<src>.hr_95ci`` ("HR (low, high)",
    ``digits`` decimals), hr, hr_ci_low, hr_ci_high, p, n, events, status, note."""
    t = cox.copy()

    def fmt(r):
        if pd.isna(r["hr"]) or not np.isfinite(r["hr"]):
            return ""
        return f"{r['hr']:.{digits}f} ({r['hr_ci_low']:.{digits}f}, {r['hr_ci_high']:.{digits}f})"

    t["hr_95ci"] = t.apply(fmt, axis=1) if len(t) else []
    return side_by_side(t, ["endpoint", "model", "term", "label"],
                        ["hr_95ci", "hr", "hr_ci_low", "hr_ci_high", "p", "n", "events", "status", "note"], sources)


# -------------------------------------------------------------------- Kaplan–Meier


def km_analysis(
    baseline: pd.DataFrame,
    participants: pd.DataFrame,
    outcomes: pd.DataFrame,
    control_arm: str,
    arms: Sequence[str] | None = None,
    endpoints: Sequence[str] = ENDPOINTS,
    at_risk_step_weeks: float = 24.0,
    sources: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Kaplan–Meier by median baseline TLV, per arm, with log-rank p (paper Fig. 4).

    The split is the median baseline TLV over the whole cohort of the source (all
    arms; "low": TLV ≤ median, "high": TLV > median), applied to each arm. Within
    each arm the low and high curves are compared by the log-rank test (lifelines
    ``logrank_test``). Returns ``(tests, curves, at_risk)``:
    tests: source, endpoint, arm, median_bl_tlv_ml, split, n_low, n_high, events_low,
    events_high, chi2, p, status, note; curves: source, endpoint, arm, group, time,
    survival, ci_low, ci_high (step function incl. time 0); at_risk: source,
    endpoint, arm, group, time, n_at_risk at 0, step, 2·step, … .
    """
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import logrank_test

    arms = resolve_arms(participants, control_arm, arms)
    sources = resolve_sources(baseline, sources)
    test_rows, curve_rows, risk_rows = [], [], []
    for src in sources:
        bs = baseline[baseline["source"] == src].merge(participants[["participant_id", "arm"]], on="participant_id")
        median = float(np.median(bs["tlv_bl_ml"])) if len(bs) else np.nan
        for ep in endpoints:
            d = outcomes[outcomes["endpoint"] == ep].merge(bs, on="participant_id")
            d["group"] = np.where(d["tlv_bl_ml"] > median, "high", "low")
            tmax = float(d["time_weeks"].max()) if len(d) else 0.0
            grid = np.arange(0.0, tmax + 1e-9, at_risk_step_weeks) if len(d) else np.array([0.0])
            for arm in arms:
                da = d[d["arm"] == arm]
                lo, hi = da[da["group"] == "low"], da[da["group"] == "high"]
                row = {"source": src, "endpoint": ep, "arm": arm, "median_bl_tlv_ml": median,
                       "split": "low: baseline TLV <= median, high: > median (median over all arms of the source)",
                       "n_low": len(lo), "n_high": len(hi), "events_low": int(lo["event"].sum()),
                       "events_high": int(hi["event"].sum()), "chi2": np.nan, "p": np.nan,
                       "status": OK, "note": ""}
                for grp, g in (("low", lo), ("high", hi)):
                    if len(g) == 0:
                        continue
                    kmf = KaplanMeierFitter().fit(g["time_weeks"], g["event"])
                    sf = kmf.survival_function_.iloc[:, 0]
                    ci = kmf.confidence_interval_survival_function_
                    for t_, s_, cl, ch in zip(sf.index, sf.to_numpy(), ci.iloc[:, 0], ci.iloc[:, 1]):
                        curve_rows.append({"source": src, "endpoint": ep, "arm": arm, "group": grp,
                                           "time": float(t_), "survival": float(s_),
                                           "ci_low": float(cl), "ci_high": float(ch)})
                    tt = g["time_weeks"].to_numpy()
                    for t_ in grid:
                        risk_rows.append({"source": src, "endpoint": ep, "arm": arm, "group": grp,
                                          "time": float(t_), "n_at_risk": int((tt >= t_).sum())})
                if not (outcomes["endpoint"] == ep).any():
                    reason = f"no outcome rows for endpoint {ep}"
                elif len(da) == 0:
                    reason = f"arm {arm} has no subjects with {ep} outcomes and {src} lesion data"
                elif len(lo) == 0 or len(hi) == 0:
                    which = "above" if len(lo) == 0 else "at or below"
                    reason = f"all {len(da)} subjects of arm {arm} are {which} the median ({median:.3g} mL)"
                elif row["events_low"] + row["events_high"] == 0:
                    reason = f"no events for {ep} in arm {arm} (all censored)"
                else:
                    reason = None
                if reason:
                    log.warning("log-rank skipped for source %s, endpoint %s, arm %s: %s", src, ep, arm, reason)
                    row.update(status=SKIPPED, note=reason)
                else:
                    r = logrank_test(lo["time_weeks"], hi["time_weeks"], lo["event"], hi["event"])
                    row.update(chi2=float(r.test_statistic), p=float(r.p_value))
                test_rows.append(row)
    curves = pd.DataFrame(curve_rows, columns=["source", "endpoint", "arm", "group", "time", "survival",
                                               "ci_low", "ci_high"])
    at_risk = pd.DataFrame(risk_rows, columns=["source", "endpoint", "arm", "group", "time", "n_at_risk"])
    return pd.DataFrame(test_rows), curves, at_risk



def run_cox(
    long_tsv: str | Path,
    participants_tsv: str | Path,
    outcomes_tsv: str | Path,
    out_tsv: str | Path,
    out_table4_tsv: str | Path,
    control_arm: str,
    arms: Sequence[str] | None = None,
    endpoints: Sequence[str] = ENDPOINTS,
    baseline_week: int = 0,
    log_tlv_offset_ml: float = 0.01,
    edss_cutoff: float = 4.0,
    us_label: str = "US",
    conf_level: float = 0.95,
    fit_options: Mapping | None = None,
    sources: Sequence[str] | None = None,
    min_events_per_term: float = 1.0,
) -> pd.DataFrame:
    """Cox PH models (see :func:`cox_models`): tidy table and Table 4 wide layout."""
    participants, long, outcomes = _load(long_tsv, participants_tsv, outcomes_tsv, arms, baseline_week)
    srcs = resolve_sources(long, sources)
    bl = baseline_lesions(long, baseline_week, log_tlv_offset_ml)
    cox = cox_models(bl, participants, outcomes, control_arm, arms, endpoints, edss_cutoff, us_label, conf_level,
                     fit_options, log_tlv_offset_ml, srcs, min_events_per_term=min_events_per_term)
    _write_tsv(cox, out_tsv)
    _write_tsv(table4(cox, srcs), out_table4_tsv)
    return cox


def run_km(
    long_tsv: str | Path,
    participants_tsv: str | Path,
    outcomes_tsv: str | Path,
    out_tests_tsv: str | Path,
    out_curves_tsv: str | Path,
    out_png_template: str,
    control_arm: str,
    arms: Sequence[str] | None = None,
    endpoints: Sequence[str] = ENDPOINTS,
    baseline_week: int = 0,
    at_risk_step_weeks: float = 24.0,
    sources: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Kaplan–Meier curves and log-rank tests (see :func:`km_analysis`).

    Writes the tests table, the curves table (with the number-at-risk rows appended
    as ``kind = "at_risk"``) and one PNG per endpoint: ``out_png_template`` must
    contain ``{endpoint}`` (one panel per source, curves per arm × TLV group,
    log-rank p and numbers at risk underneath). Returns the tests table.
    """
    if "{endpoint}" not in str(out_png_template):
        raise InputError(f"out_png_template {out_png_template!r} must contain '{{endpoint}}'")
    participants, long, outcomes = _load(long_tsv, participants_tsv, outcomes_tsv, arms, baseline_week)
    srcs = resolve_sources(long, sources)
    bl = baseline_lesions(long, baseline_week)
    tests, curves, at_risk = km_analysis(bl, participants, outcomes, control_arm, arms, endpoints,
                                         at_risk_step_weeks, srcs)
    _write_tsv(tests, out_tests_tsv)
    both = pd.concat([curves.assign(kind="curve"), at_risk.assign(kind="at_risk")], ignore_index=True)
    _write_tsv(both, out_curves_tsv)
    from t2lesion.plots.stats import plot_km

    arm_order = resolve_arms(participants, control_arm, arms)
    for ep in endpoints:
        plot_km(tests, curves, at_risk, ep, str(out_png_template).format(endpoint=ep), arms=arm_order,
                sources=srcs)
    return tests
