"""Cox proportional-hazards models of Table 4 (docs/DESIGN.md §9); the Kaplan–Meier curves of
Fig. 4 are in :mod:`t2lesion.stats.km`."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from t2lesion.formatting import fmt_ci
from t2lesion.stats.common import (
    DEFAULT_COX_FIT_OPTIONS, FAILED, GT_SOURCE, OK, SKIPPED, WARNING, Exclusions, _write_tsv, confounded_reason,
    region_is_us, resolve_arms, resolve_sources, side_by_side, write_exclusions,
)
from t2lesion.stats.inputs import _load
from t2lesion.synth.clinical import ENDPOINTS, log_tlv

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
    log_tlv_offset_ml: float = 0.01, log_tlv_centre: float = 0.0,
) -> tuple[pd.DataFrame, dict[str, tuple[str, str]]]:
    """Covariate matrix of one Cox model and ``{term: (label, coding)}``.

    ``d`` holds participants' columns plus log_tlv and tlc_bl (no missing values in
    the columns the model uses). Term names match
    :func:`t2lesion.synth.clinical.true_coefficients`. In the multivariable model log TLV
    enters as ``log_tlv - log_tlv_centre`` (``stats.center_log_tlv``; see
    :func:`log_tlv_centre`), so the arm HR is the arm HR at that log TLV; the
    univariable models are invariant to centring and stay uncentred.
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
        c = float(log_tlv_centre)
        at = (f"at log TLV = {c:.15g} (TLV = {math.exp(c) - log_tlv_offset_ml:.6g} mL)" if c else
              "at log TLV = 0 (uncentred)")
        for arm in arms[1:]:
            X[f"arm_{arm}"] = (d["arm"] == arm).astype(float)
            info[f"arm_{arm}"] = (f"Arm: {arm}", f"arm {arm} = 1 vs control {control} = 0 (reference {control}); "
                                                 f"HR {at}")
        X["sex_M"] = (d["sex"] == "M").astype(float)
        info["sex_M"] = ("Sex: M", "M = 1 vs F = 0 (reference F)")
        X["region_US"] = region_is_us(d["region"], us_label)
        info["region_US"] = (f"Region: {us_label}", f"{us_label} = 1 vs rest of world = 0 (reference ROW)")
        X["edss_lt4"] = (d["edss_bl"].astype(float) < edss_cutoff).astype(float)
        info["edss_lt4"] = (f"BL EDSS: < {edss_cutoff:g}",
                            f"EDSS < {edss_cutoff:g} = 1 vs >= {edss_cutoff:g} = 0 (reference >= {edss_cutoff:g})")
        X["age"] = d["age"].astype(float)
        info["age"] = ("Age", "years, per year (uncentred)")
        X["log_tlv"] = d["log_tlv"].astype(float) - c
        info["log_tlv"] = ("BL T2 TLV (log)", lt_coding + (f", centred at {c:.15g}" if c else "")
                           + "; HR in the control arm")
        for arm in arms[1:]:
            X[f"arm_{arm}_x_log_tlv"] = X[f"arm_{arm}"] * X["log_tlv"]
            info[f"arm_{arm}_x_log_tlv"] = (f"Arm {arm}: BL T2 TLV",
                                            f"interaction arm {arm} × log TLV: ratio of log-TLV HRs")
    else:
        raise ValueError(f"unknown Cox model {model!r}")
    return X, info


#: Covariates each Cox model uses (a participant missing one is left out of that model).
COX_COVARIATES = {"univariable_log_tlv": (), "univariable_tlc": (),
                  "multivariable": ("sex", "region", "edss_bl", "age")}


def log_tlv_centre(baseline: pd.DataFrame, sources: Sequence[str]) -> float:
    """One centre of log TLV for every source: the mean log baseline TLV of the ``gt``
    cohort (every participant with a GT baseline) when ``gt`` is present, otherwise of
    the first source, so that side-by-side arm HRs refer to about the same TLV."""
    src = GT_SOURCE if GT_SOURCE in set(baseline["source"]) else list(sources)[0]
    return float(baseline.loc[baseline["source"] == src, "log_tlv"].mean())


def concordance_harrell(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> tuple[float, int]:
    """Harrell's C of a risk score (higher risk = earlier event), R ``survival::concordance``.

    Comparable pairs: the shorter time is an event; at equal times an event and a
    censored time are comparable (the censored one outlived), two events are not.
    C = (concordant + tied_risk/2) / (concordant + discordant + tied_risk): the
    value ``coxph`` reports as ``concordance``. Returns (C, comparable pairs).
    """
    t, e, r = (np.asarray(a, float) for a in (time, event, risk))
    conc = disc = tied = 0.0
    for i in np.flatnonzero(e == 1):
        later = (t > t[i]) | ((t == t[i]) & (e == 0))
        rr = r[later]
        conc += np.sum(r[i] > rr)
        disc += np.sum(r[i] < rr)
        tied += np.sum(r[i] == rr)
    total = conc + disc + tied
    return (float((conc + tied / 2) / total) if total else np.nan), int(total)


def cox_zph_km(X: np.ndarray, time: np.ndarray, event: np.ndarray, beta: np.ndarray
               ) -> tuple[np.ndarray, float]:
    """Proportional-hazards score tests of R ``cox.zph(fit, transform = "km")`` (survival >= 3).

    For each term j the score test, at the fitted coefficients, of adding the
    time-varying covariate x_j·g(t), with g(t) = 1 − KM(t−) (Kaplan–Meier of all
    subjects, left limit) centred at its mean over the events, Efron ties; the
    information is that of the expanded model restricted to all original terms plus
    the new one (R's Czph1 + the per-term solve), and the global test uses all new
    terms. Returns (chi2 per term (1 df each), global chi2 (p df)).
    """
    X = np.asarray(X, float)
    t, e = np.asarray(time, float), np.asarray(event, int)
    n, p = X.shape
    eta = X @ np.asarray(beta, float)
    w = np.exp(eta - eta.max())
    uts = np.unique(t[e == 1])
    # g(t) = 1 - S(t-) with S the KM of all subjects
    g, s = {}, 1.0
    for u in uts:
        g[u] = 1.0 - s
        s *= 1.0 - np.sum((t == u) & (e == 1)) / np.sum(t >= u)
    gbar = float(np.mean([g[u] for u in t[e == 1]]))
    order = np.argsort(-t, kind="stable")
    ts, ws, Xs = t[order], w[order], X[order]
    c0 = np.cumsum(ws)
    c1 = np.cumsum(ws[:, None] * Xs, axis=0)
    c2 = np.cumsum(ws[:, None, None] * Xs[:, :, None] * Xs[:, None, :], axis=0)
    U = np.zeros(p)
    I11, I12, I22 = np.zeros((p, p)), np.zeros((p, p)), np.zeros((p, p))
    for u in uts:
        k = int(np.searchsorted(-ts, -u, side="right")) - 1  # last index with time >= u
        D = (t == u) & (e == 1)
        nd = int(D.sum())
        wd, xd = w[D], X[D]
        d0, d1 = wd.sum(), (wd[:, None] * xd).sum(0)
        d2 = (wd[:, None, None] * xd[:, :, None] * xd[:, None, :]).sum(0)
        uk, Mk = xd.sum(0), np.zeros((p, p))
        for r in range(nd):
            f = r / nd
            S0, a, B = c0[k] - f * d0, c1[k] - f * d1, c2[k] - f * d2
            uk = uk - a / S0
            Mk += B / S0 - np.outer(a, a) / S0**2
        gk = g[u] - gbar
        U += gk * uk
        I11 += Mk
        I12 += gk * Mk
        I22 += gk * gk * Mk
    chi2 = np.zeros(p)
    for j in range(p):
        imat = np.block([[I11, I12[:, [j]]], [I12[[j], :], I22[[j]][:, [j]]]])
        chi2[j] = _score_chi2(np.r_[np.zeros(p), U[j]], imat)
    full = np.block([[I11, I12], [I12.T, I22]])
    return chi2, _score_chi2(np.r_[np.zeros(p), U], full)


def _score_chi2(u: np.ndarray, imat: np.ndarray) -> float:
    """u' I^-1 u, or NaN where the information is singular (R's cox.zph stops there with
    "system is computationally singular": e.g. one distinct event time leaves g(t) - mean 0)."""
    if np.linalg.cond(imat) > 1.0 / np.finfo(float).eps:  # R's solve(): reciprocal condition < eps
        return np.nan
    try:
        return float(u @ np.linalg.solve(imat, u))
    except np.linalg.LinAlgError:
        return np.nan


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
    center_log_tlv: bool = True,
    exclusions: Exclusions | None = None,
    ph_test: bool = True,
) -> pd.DataFrame:
    """Cox PH models per source × endpoint (paper Table 4; docs/DESIGN.md §9).

    ``baseline`` from :func:`baseline_lesions`. Models: univariable log TLV,
    univariable TLC, and multivariable (arm, sex, region, EDSS < 4, age, log TLV
    centred at :func:`log_tlv_centre` when ``center_log_tlv``, arm × log TLV);
    codings in the package docstring and the ``coding`` column. One row per term:
    coef (log HR), se, hr, hr_ci_low, hr_ci_high (Wald, ``conf_level``), z, p, n,
    events, log_likelihood, concordance (Harrell's C of the model,
    :func:`concordance_harrell`), ph_chi2/ph_p (the term's Schoenfeld test,
    :func:`cox_zph_km`) and ph_global_chi2/ph_global_df/ph_global_p,
    log_tlv_centre; status, note. A model that cannot run (no outcome rows, no
    events, a covariate with one level, an arm with no subjects or no events, n <= number of
    terms, fewer than ``min_events_per_term`` events per term, covariates confounded
    (:func:`~t2lesion.stats.common.aliased_columns`), lifelines convergence error) gives one
    row with empty term, status "skipped"/"failed" and the reason.

    Participants without an outcome row for the endpoint, and (multivariable model)
    participants with a missing covariate, are left out and recorded in
    ``exclusions`` (when given) with the reason; n counts the participants fitted.
    """
    from lifelines.exceptions import ConvergenceError

    arms = resolve_arms(participants, control_arm, arms)
    sources = resolve_sources(baseline, sources)
    excl = exclusions if exclusions is not None else Exclusions("cox")
    centre = log_tlv_centre(baseline, sources) if center_log_tlv else 0.0
    z = float(sps.norm.ppf(0.5 + conf_level / 2))
    rows = []
    part = participants.loc[participants["arm"].isin(arms), ["participant_id", "arm", "age", "sex", "region",
                                                             "edss_bl"]]
    for src in sources:
        bs = baseline[baseline["source"] == src]
        dsrc = part.merge(bs, on="participant_id")
        for ep in endpoints:
            oe = outcomes[outcomes["endpoint"] == ep]
            if len(oe):
                excl.add(sorted(set(dsrc["participant_id"]) - set(oe["participant_id"])), src,
                         f"no {ep} outcome row in outcomes.tsv", ep)
            d_ep = oe.merge(dsrc, on="participant_id").reset_index(drop=True)
            for model in models:
                d = d_ep
                miss = np.zeros(len(d), bool)
                for cov in COX_COVARIATES[model]:
                    m = d[cov].isna().to_numpy()
                    excl.add(list(d.loc[m & ~miss, "participant_id"]), src,
                             f"missing covariate {cov} (n/a in participants.tsv)", f"{ep} {model}")
                    miss |= m
                d = d[~miss].reset_index(drop=True)
                n, events = len(d), int(d["event"].sum()) if len(d) else 0
                base = {"source": src, "endpoint": ep, "model": model, "n": n, "events": events,
                        "log_tlv_centre": centre if model == "multivariable" else np.nan}
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
                    no_event = [a for a in arms if not d.loc[d["arm"] == a, "event"].any()]
                    if empty:
                        reason = f"arm {empty[0]} has no subjects with {ep} outcomes and {src} lesion data"
                    elif no_event:
                        reason = (f"arm {no_event[0]} has no {ep} events: its hazard ratio is 0 or infinite "
                                  f"(monotone likelihood), not estimable")
                if reason is None:
                    X, info = cox_design(d, model, arms, edss_cutoff, us_label, log_tlv_offset_ml, centre)
                    reason = _one_level(X, info, arms)
                    if reason is None and n <= X.shape[1]:
                        reason = f"too few subjects: n={n} for {X.shape[1]} terms"
                    elif reason is None and events < min_events_per_term * X.shape[1]:
                        reason = (f"too few events: {events} for {X.shape[1]} terms "
                                  f"(stats.min_events_per_term={min_events_per_term:g})")
                    if reason is None:
                        reason = confounded_reason(X, constant=True)
                if reason:
                    log.warning("Cox %s skipped for source %s, endpoint %s: %s", model, src, ep, reason)
                    rows.append({**base, "term": "", "status": SKIPPED, "note": reason})
                    continue
                time_, event_ = d["time_weeks"].to_numpy(float), d["event"].to_numpy(int)
                try:
                    s, status, note = fit_cox(X, time_, event_, fit_options)
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
                beta = s["coef"].to_numpy(float)
                with np.errstate(over="ignore", invalid="ignore"):
                    hr = np.exp(beta)
                    lo = np.exp((s["coef"] - z * s["se"]).to_numpy(float))
                    hi = np.exp((s["coef"] + z * s["se"]).to_numpy(float))
                    conc, _ = concordance_harrell(time_, event_, X.to_numpy(float) @ beta)
                    ph, ph_glob = (cox_zph_km(X.to_numpy(float), time_, event_, beta) if ph_test and status == OK
                                   else (np.full(len(beta), np.nan), np.nan))
                if ph_test and status == OK and not np.all(np.isfinite([*ph, ph_glob])):
                    note = "; ".join(x for x in (note, "PH test not computable: singular information "
                                                       "(too few distinct event times)") if x)
                k = len(beta)
                for j, (term, r) in enumerate(s.iterrows()):
                    label, coding = info[term]
                    rows.append({
                        **base, "term": term, "label": label, "coding": coding,
                        "coef": r["coef"], "se": r["se"], "hr": hr[j], "hr_ci_low": lo[j], "hr_ci_high": hi[j],
                        "z": r["z"], "p": r["p"], "log_likelihood": r["log_likelihood"], "concordance": conc,
                        "ph_chi2": ph[j], "ph_p": float(sps.chi2.sf(ph[j], 1)), "ph_global_chi2": ph_glob,
                        "ph_global_df": k, "ph_global_p": float(sps.chi2.sf(ph_glob, k)),
                        "status": status, "note": note,
                    })
    cols = ["source", "endpoint", "model", "term", "label", "coding", "coef", "se", "hr", "hr_ci_low",
            "hr_ci_high", "z", "p", "n", "events", "log_likelihood", "concordance", "ph_chi2", "ph_p",
            "ph_global_chi2", "ph_global_df", "ph_global_p", "log_tlv_centre", "status", "note"]
    out = pd.DataFrame(rows).reindex(columns=cols)
    out.attrs["conf_level"] = conf_level
    return out


#: What the Cox table's PH columns are (written into the Table 4 notes).
PH_TEST_NOTE = ("PH test: score test of x·g(t), g = 1 - KM(t-) centred at its mean over events, at the fitted "
                "coefficients, Efron ties: R survival >= 3 cox.zph(fit, transform = 'km', terms = FALSE)")


def table4(cox: pd.DataFrame, sources: Sequence[str] | None = None,
           conf_level: float | None = None) -> pd.DataFrame:
    """Table 4 layout: endpoint, model, term, label; per source ``<src>.hr_ci`` ("HR (low, high)"
    at level ``conf_level``, 3 significant digits as every table and figure of the run:
    :func:`t2lesion.formatting.fmt_ci`), hr, hr_ci_low, hr_ci_high, p, n, events,
    concordance, ph_p, log_tlv_centre, status, note. The column ``ci_level`` gives the level and
    ``ph_test`` what the PH test is."""
    t = cox.copy()
    level = conf_level if conf_level is not None else cox.attrs.get("conf_level", 0.95)

    def fmt(r):
        if pd.isna(r["hr"]) or not np.isfinite(r["hr"]):
            return ""
        return fmt_ci(r["hr"], r["hr_ci_low"], r["hr_ci_high"])

    t["hr_ci"] = t.apply(fmt, axis=1) if len(t) else []
    out = side_by_side(t, ["endpoint", "model", "term", "label"],
                       ["hr_ci", "hr", "hr_ci_low", "hr_ci_high", "p", "n", "events", "concordance", "ph_p",
                        "log_tlv_centre", "status", "note"], sources)
    out.insert(4, "ci_level", level)
    out["ph_test"] = PH_TEST_NOTE
    return out


def _carry(excl: Exclusions, carried: pd.DataFrame, sources: Sequence[str]) -> None:
    """Participant × source pairs without lesion data (reasons from the long-table stage)."""
    for r in carried[carried["source"].isin(list(sources)) & (carried["scope"].astype(str) == "")].itertuples():
        excl.add(r.participant_id, r.source, r.reason)


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
    center_log_tlv: bool = True,
    out_exclusions_tsv: str | Path | None = None,
    long_exclusions_tsv: str | Path | None = None,
) -> pd.DataFrame:
    """Cox PH models (see :func:`cox_models`): tidy table, Table 4 wide layout, exclusions."""
    participants, long, outcomes, carried = _load(long_tsv, participants_tsv, outcomes_tsv, arms, baseline_week,
                                                  long_exclusions_tsv)
    srcs = resolve_sources(long, sources)
    excl = Exclusions("cox")
    _carry(excl, carried, srcs)
    bl = baseline_lesions(long, baseline_week, log_tlv_offset_ml)
    cox = cox_models(bl, participants, outcomes, control_arm, arms, endpoints, edss_cutoff, us_label, conf_level,
                     fit_options, log_tlv_offset_ml, srcs, min_events_per_term=min_events_per_term,
                     center_log_tlv=center_log_tlv, exclusions=excl)
    _write_tsv(cox, out_tsv)
    _write_tsv(table4(cox, srcs, conf_level=conf_level), out_table4_tsv)
    write_exclusions(excl, out_exclusions_tsv)
    return cox
