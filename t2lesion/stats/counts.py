"""Count endpoint: new and enlarging T2 lesions (docs/DESIGN.md §9b; issue 16; OPERA's MRI endpoint).

Inputs are the per-visit tables of :mod:`t2lesion.tracking` (one per subject and
source) and participants.tsv. Per source and subject:

* ``count``   total new or enlarging T2 lesions over the follow-up visits (the
  ``n_new_or_enlarging`` of each follow-up against its reference visit, summed);
* ``n_scans`` number of follow-up scans (offset ``log(n_scans)``);
* ``tlc_bl``  baseline T2 lesion count of that source (lesions of the week-0 mask,
  18-connected, >= 3 voxels), entering as ``log(tlc_bl + 1)``.

Negative-binomial regression (NB2, log link)::

    log E[count] = log(n_scans) + b0 + b_arm·arm + b_tlc·log(tlc_bl + 1) + b_us·region_US + b_age·age_gt45

arm treatment-coded against the control arm (one column per treated arm);
region_US = 1 if region is ``us_label`` (``stats.us_label``, any case), else 0 (rest of world);
age_gt45 = 1 if age > ``age_cutoff_years`` (``stats.age_cutoff``). The rate ratio of a
treated arm is exp(b_arm), adjusted for the covariates.

Estimation follows R's ``MASS::glm.nb`` convention: θ (Var = μ + μ²/θ) by maximum
likelihood jointly with β (here: the root of the profile score of θ, each β(θ)
by IRLS to full convergence); then coefficients, **standard errors conditional on
θ̂** from the NB GLM at that θ (Fisher information XᵀWX, W = μ/(1 + μ/θ),
dispersion 1), Wald z tests and Wald CIs exp(b ± z_{1-α/2}·SE). The θ SE is
``theta.ml``'s observed-information SE. Note: statsmodels' discrete
``NegativeBinomial`` gives the same β and θ but SEs from the joint Hessian with α,
which differ from R's in the 2nd-3rd digit; the table says which convention it
reports (``se_convention``). R's ``confint()`` on a glm.nb fit profiles the
likelihood; the CIs here are Wald intervals, as ``summary()`` implies.

Sensitivity rows: the Poisson GLM with the same terms and offset, and the
Wilcoxon rank-sum (Mann-Whitney) test of the lesions per follow-up scan of each
treated arm against the control arm (R ``wilcox.test`` defaults: exact below 50
per group without ties, else the normal approximation with continuity correction).

Exclusions, never silent (``exclusions_new_lesions.tsv``, the columns of every
``exclusions_<analysis>.tsv``: participant_id, source, analysis, scope, reason): no MRI at all
(from the validated visit list, when given), no mask of the source at all, no baseline (week 0) mask, no follow-up
scan, an arm outside the analysed arms, a missing (``n/a``) covariate the model uses
(age, region; arm). A covariate with one level among the analysed subjects is
dropped from that source's model, and the note says so. One arm only, an arm with fewer than
``min_n_per_arm`` subjects, or no lesion at all skips every row of the source; an arm with no
lesion (rate ratio 0 or infinite, not estimable), too few subjects for the parameters, or arm and
covariates confounded (a column a linear combination of others: not identifiable) skips the NB
and Poisson models, and the rank-sum test still runs. The reason is in ``note``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import special as spc
from scipy import stats as sps

from t2lesion.bids import is_missing
from t2lesion.errors import InputError
from t2lesion.formatting import fmt_num
from t2lesion.io import write_tsv
from t2lesion.stats.common import EXCLUSION_COLUMNS, confounded_reason, region_is_us, write_exclusions
from t2lesion.stats.inputs import read_participants, read_visit_list
from t2lesion.tracking import counts_as_integers

log = logging.getLogger(__name__)

GT_SOURCE = "gt"
OK, SKIPPED, WARNING = "ok", "skipped", "warning"
SE_CONVENTION = "R MASS::glm.nb: SEs from the NB GLM at the ML theta (conditional on theta), Wald z"
THETA_BOUNDS = (1e-6, 1e8)
#: Above this θ the profile score is numerically flat (no overdispersion): flagged, NB ≈ Poisson.
THETA_LARGE = 1e6
VISIT_REQUIRED = ("participant_id", "session", "week", "reference_session", "n_lesions", "n_new", "n_enlarging",
                  "n_new_or_enlarging", "new_volume_ml")
SUBJECT_COLUMNS = ["source", "participant_id", "arm", "age", "region", "tlc_bl", "n_scans", "n_new",
                   "n_enlarging", "count", "count_per_scan", "new_volume_ml"]
ANALYSIS = "new_lesions"  # the analysis column of exclusions_new_lesions.tsv (stats convention)
RESULT_COLUMNS = ["source", "model", "term", "term_type", "label", "coef", "se", "rate_ratio", "ci_low", "ci_high",
                  "z", "p", "statistic", "theta", "theta_se", "two_log_likelihood", "n", "n_excluded",
                  "mean_per_scan_control", "mean_per_scan_arm", "se_convention", "status", "note"]


# ----------------------------------------------------------------------------- fitting


def nb_two_log_likelihood(y, mu, theta: float) -> float:
    """2 × log-likelihood of NB2 counts (as ``glm.nb``'s ``twologlik``)."""
    y, mu = np.asarray(y, float), np.asarray(mu, float)
    ll = (spc.gammaln(theta + y) - spc.gammaln(theta) - spc.gammaln(y + 1) + theta * np.log(theta)
          + spc.xlogy(y, mu) - (theta + y) * np.log(theta + mu))
    return float(2.0 * ll.sum())


def _loglik(y, mu, theta):
    if theta is None:
        return float(np.sum(spc.xlogy(y, mu) - mu - spc.gammaln(y + 1)))
    return 0.5 * nb_two_log_likelihood(y, mu, theta)


def irls(y, X, offset=None, theta: float | None = None, beta0=None, tol: float = 1e-13,
         maxit: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Log-link GLM by IRLS: Poisson (``theta`` None) or NB2 at fixed ``theta``.

    Returns ``(beta, mu, cov, converged)``; ``cov`` = (XᵀWX)⁻¹ at the final μ
    (dispersion 1). Converged when no coefficient moves by more than
    ``tol`` × (1 + |β|); a step that lowers the likelihood is halved.
    """
    y = np.asarray(y, float)
    X = np.asarray(X, float)
    off = np.zeros(len(y)) if offset is None else np.asarray(offset, float)
    if beta0 is None:
        eta = np.log(y + 0.1)  # R's poisson mustart
        beta = np.linalg.lstsq(X, eta - off, rcond=None)[0]
    else:
        beta = np.asarray(beta0, float).copy()
    mu = np.exp(X @ beta + off)
    ll = _loglik(y, mu, theta)
    converged = False
    for _ in range(maxit):
        w = mu if theta is None else mu / (1.0 + mu / theta)
        z = X @ beta + (y - mu) / mu
        sw = np.sqrt(w)
        new = np.linalg.lstsq(X * sw[:, None], z * sw, rcond=None)[0]
        for _half in range(40):
            mu_new = np.exp(np.clip(X @ new + off, -700, 700))
            ll_new = _loglik(y, mu_new, theta)
            if np.isfinite(ll_new) and ll_new >= ll - 1e-12 * (1 + abs(ll)):
                break
            new = 0.5 * (new + beta)
        step = np.max(np.abs(new - beta) / (1.0 + np.abs(new)))
        beta, mu, ll = new, mu_new, ll_new
        if step <= tol:
            converged = True
            break
    w = mu if theta is None else mu / (1.0 + mu / theta)
    cov = np.linalg.inv((X * w[:, None]).T @ X)
    return beta, mu, cov, converged


def _theta_score(y, mu, theta):
    return float(np.sum(spc.digamma(y + theta) - spc.digamma(theta) + np.log(theta) + 1.0
                        - np.log(theta + mu) - (y + theta) / (theta + mu)))


def _theta_info(y, mu, theta):
    """Observed information of θ at fixed μ (MASS::theta.ml)."""
    return float(np.sum(-spc.polygamma(1, theta + y) + spc.polygamma(1, theta) - 1.0 / theta
                        + 2.0 / (mu + theta) - (y + theta) / (mu + theta) ** 2))


def fit_negbin(y, X, offset=None) -> dict:
    """NB2 regression with θ by maximum likelihood, reported as ``MASS::glm.nb`` reports it.

    θ̂ is the root of the profile score d/dθ max_β ℓ(β, θ) (= the θ score at β̂(θ)),
    found by Brent's method on log θ to machine precision; β̂ and the SEs are those
    of the NB GLM at θ̂ (:func:`irls`). Without overdispersion the likelihood rises
    towards θ = ∞ (Poisson): θ̂ > :data:`THETA_LARGE` sets ``theta_at_bound`` (R's
    glm.nb warns "iteration limit reached" there). Keys: ``beta, se, cov, theta, theta_se,
    two_log_likelihood, mu, converged, theta_at_bound``.
    """
    y = np.asarray(y, float)
    X = np.asarray(X, float)
    beta_p, mu_p, _, _ = irls(y, X, offset)

    def g(t):
        # A pure function of t (every fit starts from the Poisson fit): brentq evaluates the
        # bracket's ends again, and a warm start carried over from the last evaluation could
        # flip the sign of a score that is rounding noise (near θ = ∞, where it is ~1e-16).
        th = math.exp(t)
        _, mu, _, _ = irls(y, X, offset, th, beta0=beta_p)
        return _theta_score(y, mu, th)

    lo, hi = math.log(THETA_BOUNDS[0]), math.log(THETA_BOUNDS[1])
    grid = np.linspace(lo, hi, 29)
    vals = [g(t) for t in grid]
    at_bound = False
    sign_change = [i for i in range(len(grid) - 1) if vals[i] > 0 >= vals[i + 1]]
    if sign_change:
        i = sign_change[0]
        t_hat = optimize.brentq(g, grid[i], grid[i + 1], xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500)
    else:
        # no interior maximum: the score keeps its sign (no overdispersion: theta -> infinity)
        t_hat = hi if vals[-1] > 0 else lo
        at_bound = True
    theta = math.exp(t_hat)
    at_bound = at_bound or theta > THETA_LARGE
    beta, mu, cov, conv = irls(y, X, offset, theta, beta0=beta_p)
    info = _theta_info(y, mu, theta)
    return {
        "beta": beta, "se": np.sqrt(np.diag(cov)), "cov": cov, "theta": theta,
        "theta_se": math.sqrt(1.0 / info) if info > 0 else math.nan,
        "two_log_likelihood": nb_two_log_likelihood(y, mu, theta), "mu": mu, "converged": conv,
        "theta_at_bound": at_bound,
    }


def fit_poisson(y, X, offset=None) -> dict:
    """Poisson log-link GLM (R ``glm(family = poisson)``). Keys: ``beta, se, cov, two_log_likelihood, converged``."""
    beta, mu, cov, conv = irls(y, X, offset)
    return {"beta": beta, "se": np.sqrt(np.diag(cov)), "cov": cov, "converged": conv,
            "two_log_likelihood": 2.0 * _loglik(np.asarray(y, float), mu, None)}


def wilcoxon_rank_sum(x, y) -> tuple[float, float, str]:
    """Two-sided rank-sum test of x vs y as R ``wilcox.test(x, y)``: (W, p, method)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ties = len(np.unique(np.concatenate([x, y]))) < len(x) + len(y)
    exact = len(x) < 50 and len(y) < 50 and not ties
    method = "exact" if exact else "asymptotic"
    res = sps.mannwhitneyu(x, y, alternative="two-sided", use_continuity=True, method=method)
    return float(res.statistic), float(res.pvalue), (
        "exact" if exact else "normal approximation with continuity correction")


# ------------------------------------------------------------------------- subjects


def read_visit_tables(paths_by_source: Mapping[str, Sequence]) -> pd.DataFrame:
    """Concatenate the tracking visit tables of every source (a ``source`` column first)."""
    frames, problems = [], []
    for src, paths in paths_by_source.items():
        for p in paths:
            try:
                df = pd.read_csv(p, sep="\t", na_values=["n/a"], keep_default_na=False,
                                 dtype={"participant_id": str, "session": str, "reference_session": str})
            except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
                problems.append(f"{p}: cannot be read as a TSV ({type(exc).__name__})")
                continue
            missing = [c for c in VISIT_REQUIRED if c not in df.columns]
            if missing:
                problems.append(f"{p}: missing column(s) {', '.join(missing)}")
                continue
            problems += _visit_table_problems(df, p)
            df.insert(0, "source", src)
            frames.append(df)
    if problems:
        raise InputError(problems, header="tracking visit tables:")
    if not frames:
        raise InputError("no tracking visit tables given")
    out = pd.concat(frames, ignore_index=True)
    out["reference_session"] = out["reference_session"].fillna("")
    return out


#: Numbers every follow-up row of a tracking visit table must have (the baseline row: n_lesions).
VISIT_NUMBERS = ("week", "n_lesions", "n_new", "n_enlarging", "n_new_or_enlarging", "new_volume_ml")


def _visit_table_problems(df: pd.DataFrame, path) -> list[str]:
    """A missing or non-numeric count would be summed as 0 or crash the models: name each one."""
    out = []
    follow_up = df["reference_session"].fillna("").astype(str) != ""
    for col in VISIT_NUMBERS:
        num = pd.to_numeric(df[col], errors="coerce")
        need = follow_up | (col in ("week", "n_lesions"))
        for i in np.flatnonzero(need & num.isna().to_numpy())[:5]:
            v = df[col].iloc[i]
            out.append(f"{path}: row {i + 2} (session {df['session'].iloc[i]}): {col} is "
                       f"{'n/a' if pd.isna(v) else repr(v)}, not a number")
    return out


def subject_counts(visits: pd.DataFrame, participants: pd.DataFrame, arms: Sequence[str],
                   baseline_week: int = 0, no_mri: Mapping[str, str] | None = None
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per source × subject totals, and the exclusions (module docstring).

    Returns ``(subjects, exclusions)``; ``subjects`` has :data:`SUBJECT_COLUMNS`
    with age as a number (NaN when missing) and region as written, for every subject
    that has a baseline and at least one follow-up of the source. The model's own
    covariate exclusions happen in :func:`count_endpoint`. ``no_mri``: participant ->
    reason for those without any MRI (:func:`t2lesion.stats.inputs.read_visit_list`),
    listed with that reason instead of "no lesion mask".
    """
    no_mri = dict(no_mri or {})
    known = set(participants["participant_id"])
    unknown = sorted(set(visits["participant_id"]) - known)
    if unknown:
        raise InputError([f"{p}: tracked but not in participants.tsv" for p in unknown[:50]],
                         header="tracking tables name unknown participants:")
    part = participants.set_index("participant_id")
    rows, excl = [], []
    for src in dict.fromkeys(visits["source"]):
        vs = visits[visits["source"] == src]
        for pid in participants["participant_id"]:
            arm = part.at[pid, "arm"]
            if is_missing(arm) or arm not in arms:
                excl.append({"source": src, "participant_id": pid, "analysis": ANALYSIS, "scope": "",
                             "reason": f"arm {arm!r} is not one of the analysed arms {list(arms)}"})
                continue
            v = vs[vs["participant_id"] == pid].sort_values("week")
            if v.empty:
                excl.append({"source": src, "participant_id": pid, "analysis": ANALYSIS, "scope": "",
                             "reason": no_mri.get(pid, f"no lesion mask of source {src}")})
                continue
            first = v.iloc[0]
            if int(first["week"]) != baseline_week or first["reference_session"] != "":
                excl.append({"source": src, "participant_id": pid, "analysis": ANALYSIS, "scope": "",
                             "reason": f"no baseline (week {baseline_week}) mask of source {src}"})
                continue
            fu = v[v["reference_session"] != ""]
            if fu.empty:
                excl.append({"source": src, "participant_id": pid, "analysis": ANALYSIS, "scope": "",
                             "reason": "no follow-up scan"})
                continue
            age = part.at[pid, "age"]
            try:
                age_num = math.nan if is_missing(age) else float(age)
            except ValueError:
                raise InputError(f"participants.tsv: age {age!r} of {pid} is not a number") from None
            n_scans = len(fu)
            count = int(fu["n_new_or_enlarging"].sum())
            rows.append({"source": src, "participant_id": pid, "arm": arm, "age": age_num,
                         "region": part.at[pid, "region"], "tlc_bl": int(first["n_lesions"]), "n_scans": n_scans,
                         "n_new": int(fu["n_new"].sum()), "n_enlarging": int(fu["n_enlarging"].sum()),
                         "count": count, "count_per_scan": count / n_scans,
                         "new_volume_ml": float(fu["new_volume_ml"].sum())})
    return (pd.DataFrame(rows).reindex(columns=SUBJECT_COLUMNS),
            pd.DataFrame(excl).reindex(columns=list(EXCLUSION_COLUMNS)))


# ------------------------------------------------------------------------- endpoint


def _design(d: pd.DataFrame, arms: Sequence[str], age_cutoff_years: float, us_label: str):
    X = pd.DataFrame({"Intercept": np.ones(len(d))}, index=d.index)
    for arm in arms[1:]:
        X[f"arm_{arm}"] = (d["arm"].to_numpy() == arm).astype(float)
    X["log_tlc_bl1"] = np.log(d["tlc_bl"].to_numpy(float) + 1.0)
    X["region_US"] = region_is_us(d["region"], us_label)
    X["age_gt45"] = (d["age"].to_numpy(float) > age_cutoff_years).astype(float)
    return X


def _skip_reason(d: pd.DataFrame, arms: Sequence[str], min_n_per_arm: int) -> str | None:
    """Why no analysis of the source runs (NB, Poisson and the rank-sum test alike), or None."""
    if len(arms) < 2:
        return f"one arm only ({arms[0]}): no treatment arm to compare with the control arm"
    for arm in arms:
        k = int((d["arm"] == arm).sum())
        if k < min_n_per_arm:
            return f"arm {arm} has {k} subject(s) with a follow-up (< stats.min_n_per_arm={min_n_per_arm})"
    if d["count"].sum() == 0:
        return "no new or enlarging lesion in any subject: nothing to compare"
    return None


def _model_skip_reason(d: pd.DataFrame, X: pd.DataFrame, arms: Sequence[str]) -> str | None:
    """Why the NB and Poisson models cannot be fitted while the rank-sum test still runs, or None."""
    for arm in arms:
        if d.loc[d["arm"] == arm, "count"].sum() == 0:
            return f"arm {arm} has no new or enlarging lesion: its rate ratio is 0 or infinite, not estimable"
    if len(X) <= X.shape[1] + 1:
        return f"too few subjects: n={len(X)} for {X.shape[1] + 1} parameters (with theta)"
    return confounded_reason(X)


def count_endpoint(subjects: pd.DataFrame, control_arm: str, arms: Sequence[str] | None = None,
                   age_cutoff_years: float = 45.0, us_label: str = "US", conf_level: float = 0.95,
                   min_n_per_arm: int = 2, sources: Sequence[str] | None = None
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Negative-binomial rate ratios (+ Poisson and Wilcoxon rows) per source.

    ``subjects`` as from :func:`subject_counts`. Returns ``(results, exclusions)``:
    results with :data:`RESULT_COLUMNS` (every model term; term_type "arm" rows are
    the rate ratios), exclusions for missing covariates.
    """
    arms = [control_arm] + [a for a in (arms or sorted(set(subjects["arm"]))) if a != control_arm]
    sources = list(dict.fromkeys(subjects["source"])) if sources is None else list(sources)
    zq = sps.norm.ppf(0.5 + conf_level / 2.0)
    labels = {"Intercept": "Intercept (control arm, log rate per scan)",
              "log_tlc_bl1": "log(baseline T2 lesion count + 1)",
              "region_US": f"Region: {us_label} vs rest of world",
              "age_gt45": f"Age > {age_cutoff_years:g} vs <= {age_cutoff_years:g}"}
    for arm in arms[1:]:
        labels[f"arm_{arm}"] = f"Arm: {arm} vs {control_arm}"
    rows, excl = [], []
    for src in sources:
        d = subjects[(subjects["source"] == src) & subjects["arm"].isin(arms)].copy()
        miss_age = d["age"].isna().to_numpy()
        miss_region = d["region"].map(is_missing).to_numpy(bool)
        for pid, ma, mr in zip(d["participant_id"], miss_age, miss_region):
            if ma or mr:
                what = " and ".join(n for n, m in (("age", ma), ("region", mr)) if m)
                excl.append({"source": src, "participant_id": pid, "analysis": ANALYSIS,
                             "scope": "negative_binomial, poisson, wilcoxon",
                             "reason": f"missing {what} (n/a): left out of the NB, Poisson and Wilcoxon analyses"})
        n_excl = int((miss_age | miss_region).sum())
        d = d[~(miss_age | miss_region)]
        mean_ctrl = _rate(d, control_arm)
        base = {"source": src, "n": len(d), "n_excluded": n_excl, "mean_per_scan_control": mean_ctrl,
                "se_convention": ""}
        reason = _skip_reason(d, arms, min_n_per_arm)
        if reason:
            log.warning("new-lesion endpoint skipped for source %s: %s", src, reason)
            for model in ("negative_binomial", "poisson", "wilcoxon"):
                rows.append({**base, "model": model, "term": "", "status": SKIPPED, "note": reason})
            continue
        X = _design(d, arms, age_cutoff_years, us_label)
        dropped = [c for c in ("log_tlc_bl1", "region_US", "age_gt45") if X[c].nunique() < 2]
        X = X.drop(columns=dropped)
        note = (f"covariate(s) {', '.join(dropped)} with one level among the analysed subjects: dropped"
                if dropped else "")
        fits = []
        reason = _model_skip_reason(d, X, arms)
        if reason:  # the rank-sum test below still runs
            log.warning("new-lesion NB and Poisson models skipped for source %s: %s", src, reason)
            for model in ("negative_binomial", "poisson"):
                rows.append({**base, "model": model, "term": "", "status": SKIPPED, "note": reason})
        else:
            y = d["count"].to_numpy(float)
            off = np.log(d["n_scans"].to_numpy(float))
            fits = [("negative_binomial", fit_negbin(y, X.to_numpy(), off)),
                    ("poisson", fit_poisson(y, X.to_numpy(), off))]
        for model, fit in fits:
            status, mnote = OK, note
            if not fit["converged"]:
                status, mnote = WARNING, "; ".join(filter(None, [note, "IRLS did not converge"]))
            if model == "negative_binomial" and fit["theta_at_bound"]:
                status = WARNING
                mnote = "; ".join(filter(None, [mnote, f"theta {fmt_num(fit['theta'])} (> {THETA_LARGE:g}): no "
                                                       f"overdispersion, the NB fit is the Poisson fit"]))
            for k, name in enumerate(X.columns):
                b, se = float(fit["beta"][k]), float(fit["se"][k])
                ttype = "arm" if name.startswith("arm_") else ("intercept" if name == "Intercept" else "covariate")
                z = b / se
                rows.append({
                    **base, "model": model, "term": name, "term_type": ttype, "label": labels[name], "coef": b,
                    "se": se, "rate_ratio": math.exp(b), "ci_low": math.exp(b - zq * se),
                    "ci_high": math.exp(b + zq * se), "z": z, "p": float(2 * sps.norm.sf(abs(z))),
                    "theta": fit.get("theta", math.nan), "theta_se": fit.get("theta_se", math.nan),
                    "two_log_likelihood": fit["two_log_likelihood"],
                    "mean_per_scan_arm": _rate(d, name[4:]) if ttype == "arm" else math.nan,
                    "se_convention": SE_CONVENTION if model == "negative_binomial" else "Poisson GLM, Wald z",
                    "status": status, "note": mnote,
                })
        for arm in arms[1:]:
            w, p, method = wilcoxon_rank_sum(d.loc[d["arm"] == arm, "count_per_scan"],
                                             d.loc[d["arm"] == control_arm, "count_per_scan"])
            rows.append({**base, "model": "wilcoxon", "term": f"arm_{arm}", "term_type": "arm",
                         "label": labels[f"arm_{arm}"], "statistic": w, "p": p,
                         "mean_per_scan_arm": _rate(d, arm), "se_convention": "",
                         "status": OK, "note": f"rank-sum test of lesions per follow-up scan, {arm} vs "
                                               f"{control_arm} (unadjusted), {method}"})
    return (pd.DataFrame(rows).reindex(columns=RESULT_COLUMNS),
            pd.DataFrame(excl).reindex(columns=list(EXCLUSION_COLUMNS)))


def _rate(d: pd.DataFrame, arm: str) -> float:
    a = d[d["arm"] == arm]
    return float(a["count"].sum() / a["n_scans"].sum()) if len(a) else math.nan


def rates_by_arm(subjects: pd.DataFrame, visits: pd.DataFrame, arms: Sequence[str],
                 conf_level: float = 0.95) -> pd.DataFrame:
    """Mean new/enlarging lesions per scan by source × arm, per follow-up week and pooled.

    Per week: mean count over the subjects scanned that week, t-based CI. Pooled
    (``week`` empty): total count / total scans with the ratio estimator's CI
    (t, n − 1 df). Only subjects in ``subjects`` (the analysed ones) count.
    """
    rows = []
    keep = subjects[["source", "participant_id", "arm"]]
    fu = visits[visits["reference_session"] != ""].merge(keep, on=["source", "participant_id"])
    q = lambda n: sps.t.ppf(0.5 + conf_level / 2.0, n - 1) if n > 1 else math.nan  # noqa: E731
    for src in dict.fromkeys(subjects["source"]):
        for arm in arms:
            s = subjects[(subjects["source"] == src) & (subjects["arm"] == arm)]
            n = len(s)
            c, m = s["count"].to_numpy(float), s["n_scans"].to_numpy(float)
            r = c.sum() / m.sum() if n else math.nan
            se = (math.sqrt(np.sum((c - r * m) ** 2) / (n * (n - 1))) / m.mean()) if n > 1 else math.nan
            rows.append({"source": src, "arm": arm, "week": math.nan, "n_subjects": n, "n_scans": int(m.sum()),
                         "count": int(c.sum()), "mean_per_scan": r, "ci_low": r - q(n) * se,
                         "ci_high": r + q(n) * se})
            f = fu[(fu["source"] == src) & (fu["arm"] == arm)]
            for week, g in f.groupby("week"):
                x = g["n_new_or_enlarging"].to_numpy(float)
                k = len(x)
                mean = float(x.mean())
                half = q(k) * x.std(ddof=1) / math.sqrt(k) if k > 1 else math.nan
                rows.append({"source": src, "arm": arm, "week": int(week), "n_subjects": k, "n_scans": k,
                             "count": int(x.sum()), "mean_per_scan": mean, "ci_low": mean - half,
                             "ci_high": mean + half})
    return pd.DataFrame(rows, columns=["source", "arm", "week", "n_subjects", "n_scans", "count", "mean_per_scan",
                                       "ci_low", "ci_high"])


def run_new_lesions(visit_tsvs_by_source: Mapping[str, Sequence], participants_tsv, outputs: Mapping[str, str],
                    control_arm: str, arms: Sequence[str] | None = None, age_cutoff_years: float = 45.0,
                    us_label: str = "US", conf_level: float = 0.95, min_n_per_arm: int = 2,
                    validated_visits_tsv: str | Path | None = None) -> pd.DataFrame:
    """Path-level entry point (rule ``new_lesions``): tables and figures of one trial, every source.

    ``outputs`` keys: ``subjects`` (per source × subject counts), ``visits`` (every
    tracking visit row), ``by_arm`` (:func:`rates_by_arm`), ``nb`` (:func:`count_endpoint`),
    ``exclusions``, ``fig_rates`` and ``fig_forest``. Returns the results table.
    ``validated_visits_tsv``: the trial's validated visit list, whose participants without
    MRI are then excluded with reason "no MRI" (without it: "no lesion mask of source").
    """

    from t2lesion.plots.new_lesions import plot_rate_ratios, plot_rates_by_visit

    participants = read_participants(participants_tsv)
    arms = [control_arm] + [a for a in (arms or sorted(set(participants["arm"]))) if a != control_arm]
    visits = read_visit_tables(visit_tsvs_by_source)
    sources = ([GT_SOURCE] if GT_SOURCE in visit_tsvs_by_source else []) + [
        s for s in visit_tsvs_by_source if s != GT_SOURCE]
    no_mri = read_visit_list(validated_visits_tsv)[1] if validated_visits_tsv is not None else None
    subjects, excl = subject_counts(visits, participants, arms, no_mri=no_mri)
    results, excl2 = count_endpoint(subjects, control_arm, arms, age_cutoff_years, us_label, conf_level,
                                    min_n_per_arm, [s for s in sources if s in set(subjects["source"])])
    missing_src = [s for s in sources if s not in set(subjects["source"])]
    for s in missing_src:
        results = pd.concat([results, pd.DataFrame([{"source": s, "model": m, "status": SKIPPED,
                                                     "note": "no subject with a baseline and a follow-up"}
                                                    for m in ("negative_binomial", "poisson", "wilcoxon")])],
                            ignore_index=True)
    exclusions = pd.concat([excl, excl2], ignore_index=True)
    analysed = subjects.merge(excl2[["source", "participant_id"]], how="left", indicator=True)
    analysed = analysed[analysed["_merge"] == "left_only"].drop(columns="_merge")
    by_arm = rates_by_arm(analysed, visits, arms, conf_level)
    write_tsv(subjects, outputs["subjects"], na_rep="n/a", float_format="%.15g")
    write_tsv(counts_as_integers(visits), outputs["visits"], na_rep="n/a", float_format="%.15g")
    write_tsv(by_arm, outputs["by_arm"], na_rep="n/a", float_format="%.15g")
    write_tsv(results, outputs["nb"], na_rep="n/a", float_format="%.15g")
    write_exclusions(exclusions, outputs["exclusions"])
    plot_rates_by_visit(by_arm, outputs["fig_rates"], arms=arms, sources=sources, conf_level=conf_level)
    plot_rate_ratios(results, outputs["fig_forest"], control_arm=control_arm, sources=sources,
                     conf_level=conf_level)
    for r in results[(results["term_type"] == "arm") & (results["model"] == "negative_binomial")].itertuples():
        log.info("%s %s: rate ratio %.3f (%.3f, %.3f), p %.3g, theta %.3g", r.source, r.term, r.rate_ratio,
                 r.ci_low, r.ci_high, r.p, r.theta)
    return results


# ------------------------------------------------------------------------ simulation


def simulate_counts(n_per_arm: int, rate_ratio: float = 0.5, theta: float = 1.5, rate_per_scan: float = 1.0,
                    coef_log_tlc: float = 0.3, coef_us: float = 0.2, coef_age: float = -0.3,
                    arms: Sequence[str] = ("PLA", "OCR"), max_scans: int = 3, seed: int = 0) -> pd.DataFrame:
    """A tabular cohort of new/enlarging lesion counts with known rate ratio (NB2, given θ).

    Covariates from :func:`t2lesion.synth.clinical.draw_participants`; baseline lesion count
    negative binomial (mean 15); 1..``max_scans`` follow-up scans (uniform);
    ``log μ = log(n_scans) + log(rate_per_scan) + log(rate_ratio)·treated + coef_log_tlc·
    (log(tlc+1) − log 16) + coef_us·US + coef_age·age>45``. Returns the
    per-subject table of :func:`subject_counts` (``source`` = "sim").
    """
    from t2lesion.synth.clinical import CohortParams, draw_participants

    rng = np.random.default_rng(seed)
    part = draw_participants(n_per_arm, CohortParams(arms=list(arms)), rng)
    n = len(part)
    tlc = rng.negative_binomial(2.0, 2.0 / (2.0 + 15.0), n)
    scans = rng.integers(1, max_scans + 1, n)
    treated = (part["arm"].to_numpy() != arms[0]).astype(float)
    eta = (np.log(scans) + math.log(rate_per_scan) + math.log(rate_ratio) * treated
           + coef_log_tlc * (np.log(tlc + 1.0) - math.log(16.0)) + coef_us * (part["region"].to_numpy() == "US")
           + coef_age * (part["age"].to_numpy() > 45))
    mu = np.exp(eta)
    count = rng.poisson(rng.gamma(theta, mu / theta))
    return pd.DataFrame({"source": "sim", "participant_id": part["participant_id"], "arm": part["arm"],
                         "age": part["age"], "region": part["region"], "tlc_bl": tlc, "n_scans": scans,
                         "n_new": count, "n_enlarging": 0, "count": count, "count_per_scan": count / scans,
                         "new_volume_ml": math.nan}).reindex(columns=SUBJECT_COLUMNS)
