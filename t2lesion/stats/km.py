"""Kaplan–Meier curves and log-rank tests of Fig. 4 (docs/DESIGN.md §9): per source, endpoint
and arm, subjects split at the cohort-wide median baseline TLV; intervals as R ``survfit``'s."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from t2lesion.errors import InputError
from t2lesion.formatting import fmt_num
from t2lesion.stats.common import (
    OK, SKIPPED, Exclusions, _write_tsv, resolve_arms, resolve_sources, write_exclusions,
)
from t2lesion.stats.inputs import _load
from t2lesion.stats.survival import _carry, baseline_lesions
from t2lesion.synth.clinical import ENDPOINTS

log = logging.getLogger(__name__)

KM_CONF_TYPES = ("log-log", "log", "plain")


def km_estimate(time: np.ndarray, event: np.ndarray, conf_level: float = 0.95, conf_type: str = "log-log"
                ) -> pd.DataFrame:
    """Kaplan–Meier estimate with the confidence interval of R ``survfit(conf.type = ...)``.

    Rows: time 0 (survival 1) and every distinct observed time (event or censored),
    with n_risk, n_event, survival and ci_low/ci_high. The interval uses Greenwood's
    variance of the cumulative hazard, se² = Σ d/(n(n−d)), and z = Φ⁻¹(½ + level/2):

    * ``log-log`` (default; lifelines' "exponential Greenwood"):
      S^exp(±z·se/log S), undefined (NaN) where S is 0 or 1, as in R;
    * ``log``: S·exp(±z·se), upper limit capped at 1 (R's default type);
    * ``plain``: S ± z·se·S, clipped to [0, 1].

    Where the last subjects all have the event (S = 0, se infinite) the limits are NaN
    (log-log, log) or clipped (plain), as in R.
    """
    if conf_type not in KM_CONF_TYPES:
        raise InputError(f"config: stats.km_conf_type {conf_type!r} must be one of {', '.join(KM_CONF_TYPES)}")
    t, e = np.asarray(time, float), np.asarray(event, int)
    ut = np.unique(t)
    nrisk = np.array([np.sum(t >= u) for u in ut], float)
    nev = np.array([np.sum((t == u) & (e == 1)) for u in ut], float)
    surv = np.cumprod(1.0 - nev / nrisk)
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.sqrt(np.cumsum(np.where(nev > 0, nev / (nrisk * (nrisk - nev)), 0.0)))
        zq = float(sps.norm.ppf(0.5 + conf_level / 2))
        if conf_type == "plain":
            lo, hi = np.maximum(surv - zq * se * surv, 0.0), np.minimum(surv + zq * se * surv, 1.0)
        elif conf_type == "log":
            s = np.where(surv == 0, np.nan, surv)
            lo, hi = np.exp(np.log(s) - zq * se), np.minimum(np.exp(np.log(s) + zq * se), 1.0)
        else:
            s = np.where((surv == 0) | (surv == 1), np.nan, surv)
            lo = np.exp(-np.exp(np.log(-np.log(s)) - zq * se / np.log(s)))
            hi = np.exp(-np.exp(np.log(-np.log(s)) + zq * se / np.log(s)))
    out = pd.DataFrame({"time": ut, "n_risk": nrisk.astype(int), "n_event": nev.astype(int), "survival": surv,
                        "ci_low": lo, "ci_high": hi})
    if len(ut) == 0 or ut[0] > 0:
        out = pd.concat([pd.DataFrame({"time": [0.0], "n_risk": [len(t)], "n_event": [0], "survival": [1.0],
                                       "ci_low": [np.nan if conf_type != "plain" else 1.0],
                                       "ci_high": [np.nan if conf_type != "plain" else 1.0]}), out],
                        ignore_index=True)
    if conf_type == "log":
        out.loc[out["survival"] == 1, ["ci_low", "ci_high"]] = 1.0
    return out


def km_analysis(
    baseline: pd.DataFrame,
    participants: pd.DataFrame,
    outcomes: pd.DataFrame,
    control_arm: str,
    arms: Sequence[str] | None = None,
    endpoints: Sequence[str] = ENDPOINTS,
    at_risk_step_weeks: float = 24.0,
    sources: Sequence[str] | None = None,
    conf_level: float = 0.95,
    conf_type: str = "log-log",
    exclusions: Exclusions | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Kaplan–Meier by median baseline TLV, per arm, with log-rank p (paper Fig. 4).

    The split is the median baseline TLV over the whole cohort of the source (all
    arms; "low": TLV ≤ median, "high": TLV > median), applied to each arm. Within
    each arm the low and high curves are compared by the log-rank test (lifelines
    ``logrank_test``, = R ``survdiff``). Curves and their pointwise intervals come
    from :func:`km_estimate` (``conf_type``: log-log, log or plain, as R's
    ``survfit``; ``conf_level``). Participants without an outcome row for the
    endpoint are recorded in ``exclusions``. Returns ``(tests, curves, at_risk)``:
    tests: source, endpoint, arm, median_bl_tlv_ml, split, n_low, n_high, events_low,
    events_high, chi2, p, status, note; curves: source, endpoint, arm, group, time,
    survival, ci_low, ci_high, conf_type, conf_level (step function incl. time 0);
    at_risk: source, endpoint, arm, group, time, n_at_risk at 0, step, 2·step, … .
    """
    from lifelines.statistics import logrank_test

    arms = resolve_arms(participants, control_arm, arms)
    sources = resolve_sources(baseline, sources)
    excl = exclusions if exclusions is not None else Exclusions("km")
    test_rows, curve_rows, risk_rows = [], [], []
    for src in sources:
        bs = baseline[baseline["source"] == src].merge(participants[["participant_id", "arm"]], on="participant_id")
        median = float(np.median(bs["tlv_bl_ml"])) if len(bs) else np.nan
        for ep in endpoints:
            oe = outcomes[outcomes["endpoint"] == ep]
            if len(oe):
                excl.add(sorted(set(bs["participant_id"]) - set(oe["participant_id"])), src,
                         f"no {ep} outcome row in outcomes.tsv", ep)
            d = oe.merge(bs, on="participant_id")
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
                       "conf_type": conf_type, "conf_level": conf_level, "status": OK, "note": ""}
                for grp, g in (("low", lo), ("high", hi)):
                    if len(g) == 0:
                        continue
                    km = km_estimate(g["time_weeks"].to_numpy(), g["event"].to_numpy(), conf_level, conf_type)
                    for r in km.itertuples():
                        curve_rows.append({"source": src, "endpoint": ep, "arm": arm, "group": grp,
                                           "time": float(r.time), "n_risk": int(r.n_risk), "n_event": int(r.n_event),
                                           "survival": float(r.survival), "ci_low": float(r.ci_low),
                                           "ci_high": float(r.ci_high), "conf_type": conf_type,
                                           "conf_level": conf_level})
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
                    reason = f"all {len(da)} subjects of arm {arm} are {which} the median ({fmt_num(median)} mL)"
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
    curves = pd.DataFrame(curve_rows, columns=["source", "endpoint", "arm", "group", "time", "n_risk", "n_event",
                                               "survival", "ci_low", "ci_high", "conf_type", "conf_level"])
    at_risk = pd.DataFrame(risk_rows, columns=["source", "endpoint", "arm", "group", "time", "n_at_risk"])
    return pd.DataFrame(test_rows), curves, at_risk




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
    conf_level: float = 0.95,
    conf_type: str = "log-log",
    out_exclusions_tsv: str | Path | None = None,
    long_exclusions_tsv: str | Path | None = None,
) -> pd.DataFrame:
    """Kaplan–Meier curves and log-rank tests (see :func:`km_analysis`).

    Writes the tests table, the curves table (with the number-at-risk rows appended
    as ``kind = "at_risk"``), the exclusions table and one PNG per endpoint:
    ``out_png_template`` must contain ``{endpoint}`` (one panel per source, curves per
    arm × TLV group, log-rank p and numbers at risk underneath). Returns the tests.
    """
    if "{endpoint}" not in str(out_png_template):
        raise InputError(f"out_png_template {out_png_template!r} must contain '{{endpoint}}'")
    if conf_type not in KM_CONF_TYPES:
        raise InputError(f"config: stats.km_conf_type {conf_type!r} must be one of {', '.join(KM_CONF_TYPES)}")
    participants, long, outcomes, carried = _load(long_tsv, participants_tsv, outcomes_tsv, arms, baseline_week,
                                                  long_exclusions_tsv)
    srcs = resolve_sources(long, sources)
    excl = Exclusions("km")
    _carry(excl, carried, srcs)
    bl = baseline_lesions(long, baseline_week)
    tests, curves, at_risk = km_analysis(bl, participants, outcomes, control_arm, arms, endpoints,
                                         at_risk_step_weeks, srcs, conf_level, conf_type, excl)
    _write_tsv(tests, out_tests_tsv)
    both = pd.concat([curves.assign(kind="curve"), at_risk.assign(kind="at_risk")], ignore_index=True)
    _write_tsv(both, out_curves_tsv)
    write_exclusions(excl, out_exclusions_tsv)
    from t2lesion.plots.stats import plot_km

    arm_order = resolve_arms(participants, control_arm, arms)
    for ep in endpoints:
        plot_km(tests, curves, at_risk, ep, str(out_png_template).format(endpoint=ep), arms=arm_order,
                sources=srcs)
    return tests
