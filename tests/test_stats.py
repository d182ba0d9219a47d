"""Tests of the endpoint statistics (t2lesion.stats, docs/DESIGN.md §9) and their figures.

Known answers come from the tabular synthetic cohort (t2lesion.synth.clinical), whose
true Cox coefficients and ANCOVA treatment effects are known; lifelines and
statsmodels results are reproduced by independent implementations (statsmodels
PHReg / survdiff / SurvfuncRight, numpy least squares, scipy t tests).
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from t2lesion import stats
from t2lesion.errors import InputError
from t2lesion.synth.clinical import CohortParams, long_table_from_trajectory, simulate_cohort, true_coefficients


def make_tables(n_per_arm, seed, params=None, pred=True):
    """participants (typed), long table with gt (+ a noisy 'classical' source), outcomes."""
    params = params or CohortParams()
    p, tl, o = simulate_cohort(n_per_arm, seed, params)
    rng = np.random.default_rng(seed + 1000)
    gt = long_table_from_trajectory(tl, "gt", rng)
    parts = [gt]
    if pred:
        pr = gt.copy()
        pr["source"] = "classical"
        pr["tlv_ml"] = pr["tlv_ml"] * np.exp(rng.normal(0.05, 0.05, len(pr)))
        parts.append(pr)
    long = pd.concat(parts, ignore_index=True)
    participants = stats.validate_participants(p.drop(columns="tlv_bl_ml"))
    return participants, stats.validate_long(long, participants), stats.validate_outcomes(o, participants)


def write_inputs(tmp_path, participants, long, outcomes):
    paths = {k: tmp_path / f"{k}.tsv" for k in ("participants", "long", "outcomes")}
    participants.to_csv(paths["participants"], sep="\t", index=False)
    long.to_csv(paths["long"], sep="\t", index=False)
    outcomes.to_csv(paths["outcomes"], sep="\t", index=False)
    return paths


@pytest.fixture(scope="module")
def big():
    """3000 subjects, GT source only (tabular known-answer tests)."""
    return make_tables(1500, seed=2023, pred=False)


@pytest.fixture(scope="module")
def small():
    return make_tables(60, seed=7)


# ------------------------------------------------------------------ known answers


def test_ancova_arm_effect_known_answer(big):
    participants, long, _ = big
    truth = true_coefficients(CohortParams())["ancova_arm_effect_pct"]["OCR"]
    coef, anova_t = stats.ancova(stats.compute_change(long), participants, "PLA")
    arm = coef[coef["term"] == "arm_OCR"].set_index("week")
    assert list(arm.index) == [24, 48, 96]
    assert (arm["status"] == "ok").all() and (arm["n"] == 3000).all()
    for w, true in truth.items():
        r = arm.loc[w]
        assert r["ci_low"] <= true <= r["ci_high"], (w, true, r["ci_low"], r["ci_high"])
    assert arm.loc[96, "p"] < 1e-10
    # covariates have no true effect: their CIs cover 0 at week 96
    cov = coef[(coef["week"] == 96) & (coef["term_type"] == "covariate")]
    assert set(cov["term"]) == {"baseline_tlv_ml", "region_US", "age_gt45"}
    assert ((cov["ci_low"] < 0) & (cov["ci_high"] > 0)).all()
    assert set(anova_t["term"]) == {"arm", "baseline_tlv_ml", "region_US", "age_gt45", "Residual"}


def test_change_summary_known_answer(big):
    participants, long, _ = big
    s = stats.summarize_change(stats.compute_change(long), participants, "PLA")
    truth = true_coefficients(CohortParams())["mean_pct_change"]
    for r in s.itertuples():
        if r.week > 0:
            assert r.ci_low_pct_change <= truth[r.arm][r.week] <= r.ci_high_pct_change, r
    sep = s[(s.arm == "OCR") & (s.week == 96)].iloc[0]
    assert sep.separation_ci_low <= 10.0 <= sep.separation_ci_high
    assert s[s.arm == "PLA"]["separation_pct"].isna().all()


def test_cox_log_tlv_and_arm_known_answer(big):
    participants, long, outcomes = big
    truth = true_coefficients(CohortParams())["cox"]
    bl = stats.baseline_lesions(long)
    cox = stats.cox_models(bl, participants, outcomes, "PLA", endpoints=["CDP24", "CCDP24"],
                           models=["multivariable"])
    assert (cox["status"] == "ok").all()
    z = stats.sps.norm.ppf(0.975)
    for ep in ("CDP24", "CCDP24"):
        m = cox[cox.endpoint == ep].set_index("term")
        assert list(m.index) == ["arm_OCR", "sex_M", "region_US", "edss_lt4", "age", "log_tlv", "arm_OCR_x_log_tlv"]
        for term in ("log_tlv", "arm_OCR"):
            lo, hi = m.loc[term, "coef"] - z * m.loc[term, "se"], m.loc[term, "coef"] + z * m.loc[term, "se"]
            assert lo <= truth[term] <= hi, (ep, term, lo, truth[term], hi)
            assert m.loc[term, "hr_ci_low"] == pytest.approx(math.exp(lo))
        # every coefficient within 3.5 SE of its true value
        for term, r in m.iterrows():
            assert abs(r["coef"] - truth[term]) < 3.5 * r["se"], (ep, term)
        assert m.loc["log_tlv", "p"] < 1e-6


def test_cox_codings_with_nonzero_covariate_effects():
    """Covariate directions/codings: all true effects non-zero, interaction included."""
    params = CohortParams(beta_male=math.log(1.4), beta_us=math.log(1.6), beta_edss_lt4=math.log(0.6),
                          beta_age_per_year=0.03, beta_arm_x_log_tlv=math.log(0.75), beta_arm=math.log(1.3))
    participants, long, outcomes = make_tables(1200, seed=5, params=params, pred=False)
    truth = true_coefficients(params)["cox"]
    cox = stats.cox_models(stats.baseline_lesions(long), participants, outcomes, "PLA", endpoints=["CCDP24"],
                           models=["multivariable"]).set_index("term")
    # log TLV is centred (stats.center_log_tlv): the arm effect is the one at the centre
    centre = cox["log_tlv_centre"].iloc[0]
    assert centre == pytest.approx(stats.baseline_lesions(long)["log_tlv"].mean(), rel=1e-12)
    truth["arm_OCR"] += truth["arm_OCR_x_log_tlv"] * centre
    for term, r in cox.iterrows():
        assert abs(r["coef"] - truth[term]) < 3.5 * r["se"], (term, r["coef"], truth[term])
        assert np.sign(r["coef"]) == np.sign(truth[term]), term


def test_cox_univariable_known_answer_when_only_tlv_matters():
    params = CohortParams(beta_arm=0.0)
    participants, long, outcomes = make_tables(800, seed=9, params=params, pred=False)
    cox = stats.cox_models(stats.baseline_lesions(long), participants, outcomes, "PLA", endpoints=["CDP24"],
                           models=["univariable_log_tlv"])
    r = cox.iloc[0]
    assert r["term"] == "log_tlv" and r["status"] == "ok"
    assert r["hr_ci_low"] <= 1.5 <= r["hr_ci_high"]
    assert r["n"] == 1600 and r["events"] == outcomes.query("endpoint == 'CDP24'")["event"].sum()


# ------------------------------------------------------------------ null simulations


def test_ancova_null_rejection_rate():
    """No treatment effect: the arm p-value is ~uniform (200 replicates, same code path)."""
    params = CohortParams(tlv_pct_per_96w_treated=10.0, weeks=[0, 96])
    pvals = []
    for rep in range(200):
        p, tl, _ = simulate_cohort(40, seed=10_000 + rep, params=params)
        long = long_table_from_trajectory(tl, "gt", np.random.default_rng(rep))
        coef, _ = stats.ancova(stats.compute_change(long), p, "PLA", weeks=[96])
        pvals.append(float(coef.loc[coef.term == "arm_OCR", "p"].iloc[0]))
    pvals = np.asarray(pvals)
    rate = float(np.mean(pvals < 0.05))
    assert 0.02 <= rate <= 0.09, rate
    assert sps.kstest(pvals, "uniform").pvalue > 0.01


def test_cox_null_rejection_rate():
    """No log-TLV effect: univariable Cox p-value ~uniform (200 replicates, same fit_cox)."""
    params = CohortParams(beta_log_tlv=0.0, beta_arm=0.0)
    pvals = []
    for rep in range(200):
        p, _, o = simulate_cohort(40, seed=20_000 + rep, params=params)
        d = o[o.endpoint == "CDP24"].merge(p, on="participant_id")
        d["log_tlv"] = np.log(d["tlv_bl_ml"] + 0.01)
        X, _ = stats.cox_design(d, "univariable_log_tlv", ["PLA", "OCR"])
        s, status, _ = stats.fit_cox(X, d["time_weeks"].to_numpy(), d["event"].to_numpy())
        assert status == "ok"
        pvals.append(float(s.loc["log_tlv", "p"]))
    pvals = np.asarray(pvals)
    rate = float(np.mean(pvals < 0.05))
    assert 0.02 <= rate <= 0.09, rate
    assert sps.kstest(pvals, "uniform").pvalue > 0.01


# ------------------------------------------------------- independent implementations


def _sig_equal(a, b, digits=6):
    a, b = np.asarray(a, float), np.asarray(b, float)
    np.testing.assert_allclose(a, b, rtol=10.0 ** (-digits), atol=0)


def test_cox_matches_statsmodels_phreg_efron_with_ties(small):
    from statsmodels.duration.hazard_regression import PHReg

    participants, long, outcomes = small
    o = outcomes.copy()
    o["time_weeks"] = np.ceil(o["time_weeks"] / 6) * 6  # visit-grid times: many ties
    bl = stats.baseline_lesions(long)
    cox = stats.cox_models(bl, participants, o, "PLA", endpoints=["CCDP24"])
    d = o[o.endpoint == "CCDP24"].merge(participants, on="participant_id").merge(bl[bl.source == "gt"])
    assert d["time_weeks"].duplicated().sum() > 50
    for model in stats.COX_MODELS:
        X, _ = stats.cox_design(d, model, ["PLA", "OCR"], log_tlv_centre=cox["log_tlv_centre"].max())
        ref = PHReg(d["time_weeks"].to_numpy(), X.to_numpy(), status=d["event"].to_numpy(), ties="efron").fit(
            tol=1e-13, maxiter=200)
        got = cox[(cox.source == "gt") & (cox.model == model)]
        assert list(got["term"]) == list(X.columns)
        _sig_equal(got["coef"], ref.params)
        _sig_equal(got["se"], ref.bse)
        _sig_equal(got["p"], ref.pvalues)


def test_logrank_and_km_match_statsmodels(small):
    from statsmodels.duration.survfunc import SurvfuncRight, survdiff

    participants, long, outcomes = small
    bl = stats.baseline_lesions(long)
    tests, curves, at_risk = stats.km_analysis(bl, participants, outcomes, "PLA")
    assert len(tests) == 2 * 4 * 2  # sources x endpoints x arms
    for src in ("gt", "classical"):
        b = bl[bl.source == src]
        median = np.median(b["tlv_bl_ml"])
        for ep in ("CDP24", "9HPT24"):
            d = outcomes[outcomes.endpoint == ep].merge(b).merge(participants[["participant_id", "arm"]])
            for arm in ("PLA", "OCR"):
                da = d[d.arm == arm]
                grp = (da["tlv_bl_ml"] > median).astype(int).to_numpy()
                chi2, p = survdiff(da["time_weeks"].to_numpy(), da["event"].to_numpy(), grp)
                r = tests[(tests.source == src) & (tests.endpoint == ep) & (tests.arm == arm)].iloc[0]
                assert r["median_bl_tlv_ml"] == pytest.approx(median)
                assert (r["n_low"], r["n_high"]) == ((grp == 0).sum(), (grp == 1).sum())
                _sig_equal(r["chi2"], chi2)
                _sig_equal(r["p"], p)
                for g, name in ((0, "low"), (1, "high")):
                    sel = da[grp == g]
                    sf = SurvfuncRight(sel["time_weeks"].to_numpy(), sel["event"].to_numpy())
                    c = curves[(curves.source == src) & (curves.endpoint == ep) & (curves.arm == arm)
                               & (curves.group == name)]
                    surv_at = np.interp(sf.surv_times, c["time"], c["survival"])  # exact at jump times
                    idx = np.searchsorted(c["time"].to_numpy(), sf.surv_times)
                    _sig_equal(c["survival"].to_numpy()[idx], sf.surv_prob)
                    assert np.allclose(surv_at, sf.surv_prob)
                    ar = at_risk[(at_risk.source == src) & (at_risk.endpoint == ep) & (at_risk.arm == arm)
                                 & (at_risk.group == name)]
                    for t, n in zip(ar["time"], ar["n_at_risk"]):
                        assert n == (sel["time_weeks"] >= t).sum()


def test_ancova_matches_numpy_least_squares_and_nested_f(small):
    participants, long, _ = small
    change = stats.compute_change(long)
    coef, anova_t = stats.ancova(change, participants, "PLA", weeks=[48])
    d = change[(change.week == 48) & (change.source == "classical")].merge(participants)
    y = d["pct_change"].to_numpy()
    cols = {
        "Intercept": np.ones(len(d)),
        "arm_OCR": (d.arm == "OCR").to_numpy(float),
        "baseline_tlv_ml": d["tlv_bl_ml"].to_numpy(),
        "region_US": (d.region == "US").to_numpy(float),
        "age_gt45": (d.age > 45).to_numpy(float),
    }
    X = np.column_stack(list(cols.values()))
    beta, rss, *_ = np.linalg.lstsq(X, y, rcond=None)
    n, k = X.shape
    sigma2 = rss[0] / (n - k)
    se = np.sqrt(np.diag(sigma2 * np.linalg.inv(X.T @ X)))
    got = coef[coef.source == "classical"].set_index("term").loc[list(cols)]
    _sig_equal(got["estimate"], beta, digits=8)
    _sig_equal(got["se"], se, digits=8)
    tcrit = sps.t.ppf(0.975, n - k)
    _sig_equal(got["ci_low"], beta - tcrit * se, digits=8)
    _sig_equal(got["p"], 2 * sps.t.sf(np.abs(beta / se), n - k), digits=7)
    # Type II F for each single-column term = nested-model F
    av = anova_t[anova_t.source == "classical"].set_index("term")
    for j, term in enumerate(cols):
        if term == "Intercept":
            continue
        Xr = np.delete(X, j, axis=1)
        rss_r = np.sum((y - Xr @ np.linalg.lstsq(Xr, y, rcond=None)[0]) ** 2)
        F = (rss_r - rss[0]) / (rss[0] / (n - k))
        key = "arm" if term == "arm_OCR" else term
        _sig_equal(av.loc[key, "F"], F, digits=8)
        _sig_equal(av.loc[key, "p"], sps.f.sf(F, 1, n - k), digits=7)
    assert av.loc["Residual", "df"] == n - k


def test_ancova_matches_statsmodels_formula_and_anova_lm_three_arms():
    """Independent statsmodels route (formula OLS + anova_lm typ=2), with a 2-df arm term."""
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    params = CohortParams(arms=["PLA", "OCR", "RTX"])
    participants, long, _ = make_tables(50, seed=31, params=params, pred=False)
    change = stats.compute_change(long)
    coef, anova_t = stats.ancova(change, participants, "PLA", weeks=[96])
    d = change[change.week == 96].merge(participants)
    d["region_US"] = (d.region == "US").astype(float)
    d["age_gt45"] = (d.age > 45).astype(float)
    fit = smf.ols("pct_change ~ C(arm, Treatment(reference='PLA')) + tlv_bl_ml + region_US + age_gt45", d).fit()
    got = coef.set_index("term")
    for arm in ("OCR", "RTX"):
        name = f"C(arm, Treatment(reference='PLA'))[T.{arm}]"
        _sig_equal(got.loc[f"arm_{arm}", ["estimate", "se", "p"]].to_numpy(float),
                   [fit.params[name], fit.bse[name], fit.pvalues[name]], digits=8)
    ref = anova_lm(fit, typ=2)
    av = anova_t.set_index("term")
    for mine, theirs in (("arm", "C(arm, Treatment(reference='PLA'))"), ("baseline_tlv_ml", "tlv_bl_ml"),
                         ("region_US", "region_US"), ("age_gt45", "age_gt45"), ("Residual", "Residual")):
        _sig_equal(av.loc[mine, ["sum_sq", "df"]].to_numpy(float), ref.loc[theirs, ["sum_sq", "df"]], digits=8)
        if mine != "Residual":
            _sig_equal(av.loc[mine, ["F", "p"]].to_numpy(float), ref.loc[theirs, ["F", "PR(>F)"]], digits=8)
    assert av.loc["arm", "df"] == 2


def test_change_summary_matches_scipy(small):
    participants, long, _ = small
    change = stats.compute_change(long)
    s = stats.summarize_change(change, participants, "PLA", conf_level=0.9)
    d = change.merge(participants[["participant_id", "arm"]])
    for src in ("gt", "classical"):
        a = d[(d.source == src) & (d.week == 96) & (d.arm == "OCR")]["pct_change"].to_numpy()
        c = d[(d.source == src) & (d.week == 96) & (d.arm == "PLA")]["pct_change"].to_numpy()
        r = s[(s.source == src) & (s.week == 96) & (s.arm == "OCR")].iloc[0]
        lo, hi = sps.t.interval(0.9, len(a) - 1, loc=a.mean(), scale=sps.sem(a))
        _sig_equal([r.mean_pct_change, r.ci_low_pct_change, r.ci_high_pct_change], [a.mean(), lo, hi], digits=10)
        welch = sps.ttest_ind(c, a, equal_var=False)
        _sig_equal(r.separation_pct, c.mean() - a.mean(), digits=10)
        _sig_equal(r.separation_p, welch.pvalue, digits=8)
        ci = welch.confidence_interval(0.9)
        _sig_equal([r.separation_ci_low, r.separation_ci_high], [ci.low, ci.high], digits=8)


@settings(max_examples=40, deadline=None)
@given(bl=st.floats(0, 100), fu=st.floats(0, 100))
def test_compute_change_formula(bl, fu):
    long = pd.DataFrame({"participant_id": ["sub-1", "sub-1"], "session": ["w000", "w024"], "week": [0, 24],
                         "source": "gt", "tlv_ml": [bl, fu], "tlc": [1, 2]})
    c = stats.compute_change(long).set_index("week")
    assert c.loc[24, "abs_change_ml"] == pytest.approx(fu - bl)
    assert c.loc[24, "tlc_change"] == 1
    if bl == 0:
        assert bool(c.loc[24, "excluded_bl0"]) and np.isnan(c.loc[24, "pct_change"])
    else:
        assert c.loc[24, "pct_change"] == pytest.approx(100 * (fu - bl) / bl)
        assert c.loc[0, "pct_change"] == 0


# ------------------------------------------------------------------ degenerate inputs


def test_baseline_zero_excluded_and_counted(small):
    participants, long, _ = small
    long = long.copy()
    zero = ["sub-001", "sub-002", "sub-003"]
    long.loc[long.participant_id.isin(zero) & (long.source == "gt"), ["tlv_ml", "tlc"]] = [0.0, 0]
    change = stats.compute_change(long)
    s = stats.summarize_change(change, participants, "PLA")
    arms0 = participants.set_index("participant_id").loc[zero, "arm"].value_counts()
    for arm, k in arms0.items():
        r = s[(s.source == "gt") & (s.arm == arm) & (s.week == 96)].iloc[0]
        assert r.n_excluded_bl0 == k and r.n_pct == r.n - k
        assert "baseline TLV 0" in r.note
    assert (s[s.source == "classical"]["n_excluded_bl0"] == 0).all()
    coef, _ = stats.ancova(change, participants, "PLA", weeks=[96])
    g = coef[(coef.source == "gt") & (coef.term == "arm_OCR")].iloc[0]
    assert g.n == 120 - 3 and g.n_excluded_bl0 == 3
    # log TLV of a zero baseline is log(offset), finite
    bl = stats.baseline_lesions(long, log_tlv_offset_ml=0.01)
    assert np.allclose(bl.loc[bl.participant_id.isin(zero) & (bl.source == "gt"), "log_tlv"], math.log(0.01))


def test_arm_with_no_subjects_is_reported_and_others_run(small):
    participants, long, outcomes = small
    arms = ["PLA", "OCR", "RTX"]
    change = stats.compute_change(long)
    s = stats.summarize_change(change, participants, "PLA", arms=arms)
    rtx = s[s.arm == "RTX"]
    assert (rtx.status == "skipped").all() and rtx.note.str.contains("arm RTX has no subjects").all()
    coef, anova_t = stats.ancova(change, participants, "PLA", arms=arms)
    assert (coef.status == "skipped").all() and coef.note.str.contains("arm RTX has no subjects").all()
    bl = stats.baseline_lesions(long)
    cox = stats.cox_models(bl, participants, outcomes, "PLA", arms=arms, endpoints=["CDP24"])
    mv = cox[cox.model == "multivariable"]
    assert (mv.status == "skipped").all() and mv.note.str.contains("arm RTX has no subjects").all()
    assert (cox[cox.model != "multivariable"].status == "ok").all()
    tests, _, _ = stats.km_analysis(bl, participants, outcomes, "PLA", arms=arms, endpoints=["CDP24"])
    assert (tests[tests.arm == "RTX"].status == "skipped").all()
    assert (tests[tests.arm != "RTX"].status == "ok").all()
    # control arm absent
    part2 = participants[participants.arm == "OCR"]
    long2 = long[long.participant_id.isin(part2.participant_id)]
    coef2, _ = stats.ancova(stats.compute_change(long2), part2, "PLA")
    assert coef2.note.str.contains("arm PLA has no subjects").all()


def test_covariate_with_one_level(small):
    participants, long, outcomes = small
    p1 = participants.assign(region="ROW")
    coef, anova_t = stats.ancova(stats.compute_change(long), p1, "PLA", weeks=[48])
    assert (coef.status == "skipped").all()
    assert coef.note.iloc[0] == "covariate region has one level (none US (all rest of world))"
    cox = stats.cox_models(stats.baseline_lesions(long), p1, outcomes, "PLA", endpoints=["CDP24"])
    mv = cox[cox.model == "multivariable"]
    assert (mv.status == "skipped").all() and "region_US" in mv.note.iloc[0]
    assert (cox[cox.model == "univariable_log_tlv"].status == "ok").all()
    p2 = participants.assign(age=30.0)
    coef2, _ = stats.ancova(stats.compute_change(long), p2, "PLA", weeks=[48])
    assert "age group has one level (all <= 45)" in coef2.note.iloc[0]


def test_no_events_and_all_censored(small):
    participants, long, outcomes = small
    o = outcomes.copy()
    o.loc[o.endpoint == "T25FW24", "event"] = 0
    bl = stats.baseline_lesions(long)
    cox = stats.cox_models(bl, participants, o, "PLA")
    t25 = cox[cox.endpoint == "T25FW24"]
    assert (t25.status == "skipped").all() and len(t25) == 2 * 3
    assert t25.note.str.startswith("no events for T25FW24 (all 120 participants censored)").all()
    assert (cox[cox.endpoint != "T25FW24"].status == "ok").all()
    tests, _, _ = stats.km_analysis(bl, participants, o, "PLA")
    assert (tests[tests.endpoint == "T25FW24"].status == "skipped").all()
    assert (tests[tests.endpoint != "T25FW24"].status == "ok").all()
    # everything censored: every Cox/KM analysis skipped, nothing raises
    o_all = outcomes.assign(event=0)
    assert (stats.cox_models(bl, participants, o_all, "PLA").status == "skipped").all()
    assert (stats.km_analysis(bl, participants, o_all, "PLA")[0].status == "skipped").all()
    # endpoint with no rows at all
    cox3 = stats.cox_models(bl, participants, outcomes[outcomes.endpoint != "9HPT24"], "PLA", endpoints=["9HPT24"])
    assert cox3.note.str.contains("no outcome rows for endpoint 9HPT24").all()


def test_too_few_subjects(small):
    """Two subjects per arm, both age groups and both regions present: the ANCOVA's 5 parameters
    and the multivariable Cox model's 7 terms need more than 4 subjects."""
    participants, long, outcomes = small
    keep = participants.groupby("arm").head(2).assign(age=[30.0, 50.0, 30.0, 50.0], region=["US", "ROW", "ROW", "US"])
    lg = long[long.participant_id.isin(keep.participant_id)]
    coef, _ = stats.ancova(stats.compute_change(lg), keep, "PLA", min_n_per_arm=2)
    assert (coef.status == "skipped").all() and len(coef) == 2 * 3  # 2 sources x 3 weeks
    assert set(coef.note) == {"too few subjects: n=4 for 5 model parameters"}
    coef4, _ = stats.ancova(stats.compute_change(lg), keep, "PLA", min_n_per_arm=4)
    assert coef4.note.str.contains("min_n_per_arm=4").all()
    o = outcomes[outcomes.participant_id.isin(keep.participant_id)]
    cox = stats.cox_models(stats.baseline_lesions(lg), keep, o, "PLA", endpoints=["CCDP24"],
                           models=["multivariable"])
    assert (cox.status == "skipped").all() and len(cox) == 2
    assert set(cox.note) == {"too few subjects: n=4 for 7 terms"}


# ------------------------------------------------------------------ bad input


def test_bad_inputs_raise_input_error(tmp_path, small):
    participants, long, outcomes = small
    paths = write_inputs(tmp_path, participants, long, outcomes)
    out = {"out_tsv": tmp_path / "c.tsv", "out_table4_tsv": tmp_path / "t4.tsv"}
    # missing column, naming the file
    long.drop(columns="tlc").to_csv(tmp_path / "nolc.tsv", sep="\t", index=False)
    with pytest.raises(InputError, match=r"nolc\.tsv: missing column\(s\) tlc"):
        stats.run_cox(tmp_path / "nolc.tsv", paths["participants"], paths["outcomes"], control_arm="PLA", **out)
    # unknown participant in the long table, naming the row
    lg = long.copy()
    lg.loc[5, "participant_id"] = "sub-999"
    lg.to_csv(tmp_path / "unk.tsv", sep="\t", index=False)
    with pytest.raises(InputError, match=r"unk\.tsv, row 7: unknown participant 'sub-999'"):
        stats.run_change(tmp_path / "unk.tsv", paths["participants"], tmp_path / "a.tsv", tmp_path / "b.tsv",
                         tmp_path / "c.png", "PLA")
    # negative time, naming the row
    o = outcomes.copy()
    o.loc[3, "time_weeks"] = -1.0
    o.to_csv(tmp_path / "neg.tsv", sep="\t", index=False)
    with pytest.raises(InputError, match=r"neg\.tsv, row 5: negative time_weeks -1"):
        stats.run_cox(paths["long"], paths["participants"], tmp_path / "neg.tsv", control_arm="PLA", **out)
    # subject without baseline
    lg = long[~((long.participant_id == "sub-004") & (long.week == 0) & (long.source == "gt"))]
    with pytest.raises(InputError, match="sub-004 has no baseline"):
        stats.validate_long(lg, participants)
    with pytest.raises(InputError, match="duplicate row"):
        stats.validate_long(pd.concat([long, long.iloc[[0]]]), participants)
    with pytest.raises(InputError, match="unknown arm 'OCR'"):
        stats.validate_participants(participants, arms=["PLA", "RTX"])
    with pytest.raises(InputError, match="sex"):
        stats.validate_participants(participants.assign(sex="X"))
    with pytest.raises(InputError, match="event"):
        stats.validate_outcomes(outcomes.assign(event=2), participants)
    with pytest.raises(InputError, match="not present"):
        stats.resolve_sources(long, ["gt", "unet"])
    with pytest.raises(InputError, match="control arm"):
        stats.resolve_arms(participants, "PLA", ["OCR", "RTX"])
    with pytest.raises(InputError, match="file not found"):
        stats.read_participants(tmp_path / "nope.tsv")
    with pytest.raises(InputError, match=r"\{endpoint\}"):
        stats.run_km(paths["long"], paths["participants"], paths["outcomes"], tmp_path / "k.tsv",
                     tmp_path / "kc.tsv", tmp_path / "km.png", "PLA")


# ------------------------------------------------------------------ entry points, layout


def test_entry_points_write_side_by_side_outputs(tmp_path, small):
    participants, long, outcomes = small
    paths = write_inputs(tmp_path, participants, long, outcomes)
    summ = stats.run_change(paths["long"], paths["participants"], tmp_path / "change.tsv", tmp_path / "summ.tsv",
                            tmp_path / "change.png", "PLA")
    assert list(dict.fromkeys(summ.source)) == ["gt", "classical"]
    assert (tmp_path / "change.png").stat().st_size > 10_000
    ch = pd.read_csv(tmp_path / "change.tsv", sep="\t")
    assert len(ch) == len(long)
    coef, _ = stats.run_ancova(paths["long"], paths["participants"], tmp_path / "anc.tsv", tmp_path / "anova.tsv",
                               "PLA", out_wide_tsv=tmp_path / "anc_wide.tsv")
    wide = pd.read_csv(tmp_path / "anc_wide.tsv", sep="\t")
    assert {"gt.estimate", "classical.estimate", "gt.p", "classical.p"} <= set(wide.columns)
    assert list(wide.week) == [24, 48, 96]
    written = pd.read_csv(tmp_path / "anc.tsv", sep="\t")
    assert written.coding.str.contains("reference ROW").any()
    assert written.coding.str.contains("reference <= 45").any()
    cox = stats.run_cox(paths["long"], paths["participants"], paths["outcomes"], tmp_path / "cox.tsv",
                        tmp_path / "t4.tsv", "PLA", endpoints=["CDP24", "9HPT24"])
    t4 = pd.read_csv(tmp_path / "t4.tsv", sep="\t", keep_default_na=False)
    assert len(t4) == 2 * (1 + 1 + 7)
    for src in ("gt", "classical"):
        for col in ("hr_ci", "hr", "p", "n", "events", "concordance", "ph_p", "log_tlv_centre"):
            assert f"{src}.{col}" in t4.columns
    r = t4[(t4.endpoint == "CDP24") & (t4.term == "log_tlv") & (t4.model == "multivariable")].iloc[0]
    tidy = cox[(cox.endpoint == "CDP24") & (cox.term == "log_tlv") & (cox.model == "multivariable")]
    assert float(r["classical.hr"]) == pytest.approx(tidy[tidy.source == "classical"].hr.iloc[0], rel=1e-9)
    from t2lesion.formatting import fmt_num

    assert r["gt.hr_ci"] == f"{fmt_num(r['gt.hr'])} ({fmt_num(r['gt.hr_ci_low'])}, {fmt_num(r['gt.hr_ci_high'])})"
    tests = stats.run_km(paths["long"], paths["participants"], paths["outcomes"], tmp_path / "km.tsv",
                         tmp_path / "kmc.tsv", str(tmp_path / "km_{endpoint}.png"), "PLA", endpoints=["CDP24"])
    assert (tmp_path / "km_CDP24.png").stat().st_size > 10_000
    kc = pd.read_csv(tmp_path / "kmc.tsv", sep="\t")
    assert set(kc.kind) == {"curve", "at_risk"}
    assert len(tests) == 4


def test_entry_points_survive_degenerate_data(tmp_path, small):
    participants, long, outcomes = small
    o = outcomes.assign(event=0)
    paths = write_inputs(tmp_path, participants.assign(region="US"), long, o)
    cox = stats.run_cox(paths["long"], paths["participants"], paths["outcomes"], tmp_path / "cox.tsv",
                        tmp_path / "t4.tsv", "PLA")
    assert (cox.status == "skipped").all() and (tmp_path / "t4.tsv").exists()
    stats.run_km(paths["long"], paths["participants"], paths["outcomes"], tmp_path / "km.tsv", tmp_path / "kmc.tsv",
                 str(tmp_path / "km_{endpoint}.png"), "PLA", endpoints=["CDP24"])
    assert (tmp_path / "km_CDP24.png").exists()
    coef, _ = stats.run_ancova(paths["long"], paths["participants"], tmp_path / "a.tsv", tmp_path / "b.tsv", "PLA",
                               out_wide_tsv=tmp_path / "w.tsv")
    assert (coef.status == "skipped").all() and coef.note.str.contains("all US").all()
    summ = stats.run_change(paths["long"], paths["participants"], tmp_path / "c.tsv", tmp_path / "s.tsv",
                            tmp_path / "c.png", "PLA")
    assert (summ.status == "ok").all()


def test_fit_options_reach_full_convergence(small):
    """Default options converge far tighter than lifelines' defaults (which stop at ~1e-5)."""
    participants, long, outcomes = small
    bl = stats.baseline_lesions(long)
    d = outcomes[outcomes.endpoint == "CCDP24"].merge(participants).merge(bl[bl.source == "gt"])
    X, _ = stats.cox_design(d, "multivariable", ["PLA", "OCR"])
    tight, status, _ = stats.fit_cox(X, d.time_weeks.to_numpy(), d.event.to_numpy())
    tighter, _, _ = stats.fit_cox(X, d.time_weeks.to_numpy(), d.event.to_numpy(),
                                  {"precision": 1e-14, "r_precision": 1e-16, "max_steps": 2000})
    assert status == "ok"
    _sig_equal(tight["coef"], tighter["coef"], digits=8)


def _volumes(tmp_path, rows, source):
    """One single-row volume TSV per visit, as the volume rules write them."""
    paths = []
    for pid, ses, week, tlv, tlc in rows:
        p = tmp_path / source / f"{pid}_{ses}.tsv"
        p.parent.mkdir(exist_ok=True)
        pd.DataFrame([{"participant_id": pid, "session": ses, "week": week, "tlv_ml": tlv, "tlc": tlc}]).to_csv(
            p, sep="\t", index=False)
        paths.append(p)
    return paths


def _visits(tmp_path, rows):
    p = tmp_path / "visits.tsv"
    pd.DataFrame(rows, columns=["participant_id", "session", "week", "has_gt", "excluded", "source_session"]).to_csv(
        p, sep="\t", index=False)
    return p


PRED = [("sub-001", "ses-w000", 0, 1.2, 3), ("sub-001", "ses-w024", 24, 1.3, 5), ("sub-002", "ses-w000", 0, 0.1, 1),
        ("sub-002", "ses-w024", 24, 0.2, 1), ("sub-003", "ses-w000", 0, 2.0, 4), ("sub-003", "ses-w024", 24, 2.5, 6)]


def test_long_table_from_per_visit_volumes(tmp_path):
    """New contract (issue 10): per-source per-visit volume rows, gt a source like any other."""
    gt = [("sub-001", "ses-w000", 0, 1.0, 3), ("sub-001", "ses-w024", 24, 1.1, 4), ("sub-003", "ses-w000", 0, 1.9, 4)]
    vols = {"classical": _volumes(tmp_path, PRED, "classical"),
            "unet": _volumes(tmp_path, [(a, b, c, 2 * d, e) for a, b, c, d, e in PRED], "unet"),
            "gt": _volumes(tmp_path, gt, "gt")}
    visits = _visits(tmp_path, [
        ("sub-001", "ses-w000", 0, True, "", "ses-w000"), ("sub-001", "ses-w024", 24, True, "", "ses-w024"),
        ("sub-002", "ses-w000", 0, False, "", "ses-w000"), ("sub-002", "ses-w024", 24, False, "", "ses-w024"),
        ("sub-003", "ses-w000", 0, True, "", "ses-w000"), ("sub-003", "ses-w024", 24, False, "", "ses-w024"),
        ("sub-004", "ses-w000", 0, True, "motion artefacts", "ses-01")])
    out = stats.run_long_table(vols, tmp_path / "long.tsv", visits_tsv=visits, exclusions_tsv=tmp_path / "ex.tsv")
    assert list(out.columns) == list(stats.LONG_COLUMNS)
    assert list(dict.fromkeys(out.source)) == ["gt", "classical", "unet"]
    assert len(out) == 3 + 6 + 6
    back = pd.read_csv(tmp_path / "long.tsv", sep="\t")
    u = back[back.source == "unet"].set_index(["participant_id", "session"])
    assert u.loc[("sub-001", "ses-w000"), "tlv_ml"] == 2.4
    ex = pd.read_csv(tmp_path / "ex.tsv", sep="\t", keep_default_na=False)
    assert list(ex.columns) == list(stats.EXCLUSION_COLUMNS) and set(ex.analysis) == {"tlv_long"}
    rows = set(zip(ex.participant_id, ex.source, ex.scope, ex.reason))
    assert ("sub-002", "gt", "", "no GT at baseline") in rows
    assert ("sub-003", "gt", "week 24", "no GT mask for visit ses-w024") in rows
    for src in ("gt", "classical", "unet"):
        assert ("sub-004", src, "", "baseline visit ses-01 excluded by the user: motion artefacts") in rows
    # the result is a valid stats input; sub-004 (excluded by the user) is carried, not an error
    parts = pd.DataFrame({"participant_id": ["sub-001", "sub-002", "sub-003", "sub-004"], "arm": ["PLA", "OCR"] * 2,
                          "age": [40, 50, 60, 30], "sex": ["M", "F", "male", "Female"],
                          "region": ["US", "ROW", "n/a", ""], "edss_bl": [3.0, 4.5, "n/a", 2]})
    vp = stats.validate_participants(parts)
    with pytest.raises(InputError, match="participant sub-004 of participants.tsv has no rows"):
        stats.validate_long(back, vp)
    stats.validate_long(back, vp, excluded_participants={"sub-004": "excluded by the user"})
    cov = stats.coverage_exclusions(back, vp, ["gt", "classical"], ex)
    assert set(zip(cov.participant_id, cov.source)) == {("sub-002", "gt"), ("sub-004", "gt"),
                                                        ("sub-004", "classical")}
    assert cov.set_index(["participant_id", "source"]).loc[("sub-004", "classical"), "reason"].startswith(
        "baseline visit ses-01 excluded")


def test_long_table_without_gt_and_its_errors(tmp_path):
    vols = {"classical": _volumes(tmp_path, PRED, "classical")}
    out = stats.run_long_table(vols, tmp_path / "long.tsv", exclusions_tsv=tmp_path / "ex.tsv")
    assert set(out.source) == {"classical"} and len(out) == 6
    assert stats.resolve_sources(out) == ["classical"]
    assert len(pd.read_csv(tmp_path / "ex.tsv", sep="\t")) == 0
    # a prediction source missing a participant (or a visit of the visit list) is an error naming it
    short = _volumes(tmp_path, PRED[:4], "unet")
    with pytest.raises(InputError, match="prediction source 'unet' has no volumes for sub-003"):
        stats.run_long_table({"classical": vols["classical"], "unet": short}, tmp_path / "l2.tsv")
    visits = _visits(tmp_path, [(p, s, w, False, "", s) for p, s, w, _, _ in PRED]
                     + [("sub-005", "ses-w000", 0, False, "", "ses-w000")])
    with pytest.raises(InputError, match="no 'classical' volume for sub-005 ses-w000"):
        stats.run_long_table(vols, tmp_path / "l3.tsv", visits_tsv=visits)
    # one row per file, named columns, duplicates named with both files
    bad = tmp_path / "bad.tsv"
    pd.DataFrame({"participant_id": ["sub-001"] * 2, "session": "ses-w000", "week": 0, "tlv_ml": 1.0,
                  "tlc": 1}).to_csv(bad, sep="\t", index=False)
    with pytest.raises(InputError, match=r"bad\.tsv: 2 rows"):
        stats.run_long_table({"classical": [bad]}, tmp_path / "l4.tsv")
    pd.DataFrame({"participant_id": ["sub-001"], "session": "ses-w000", "week": 0}).to_csv(bad, sep="\t",
                                                                                          index=False)
    with pytest.raises(InputError, match=r"bad\.tsv: missing column\(s\) tlv_ml, tlc"):
        stats.run_long_table({"classical": [bad]}, tmp_path / "l5.tsv")
    with pytest.raises(InputError, match="duplicate volume for sub-001 week 0"):
        stats.run_long_table({"classical": vols["classical"] + vols["classical"][:1]}, tmp_path / "l6.tsv")
    # a prediction source without the baseline volume
    with pytest.raises(InputError, match="sub-001 has no baseline"):
        stats.run_long_table({"classical": vols["classical"][1:]}, tmp_path / "l7.tsv")
    assert not any((tmp_path / f"l{i}.tsv").exists() for i in range(2, 8))


def test_participants_covariates_may_be_missing_sex_spellings(small):
    participants, _, _ = small
    p = participants.astype({"age": object, "sex": object, "region": object, "edss_bl": object}).copy()
    p.loc[0, ["age", "sex", "region", "edss_bl"]] = ["n/a", "n/a", "", "n/a"]
    p.loc[1, "sex"], p.loc[2, "sex"] = "female", "MALE"
    v = stats.validate_participants(p)
    assert np.isnan(v.loc[0, "age"]) and v.loc[0, "sex"] is None and v.loc[0, "region"] is None
    assert (v.loc[1, "sex"], v.loc[2, "sex"]) == ("F", "M")
    with pytest.raises(InputError, match=r"row 5: sex 'X' for sub-004"):
        stats.validate_participants(p.assign(sex=["M", "F", "M", "X"] + ["F"] * (len(p) - 4)))
    with pytest.raises(InputError, match="missing arm for sub-001"):
        stats.validate_participants(p.assign(arm=["n/a"] + list(p.arm[1:])))
    assert set(stats.validate_outcomes(pd.DataFrame({"participant_id": ["sub-001"] * 2, "endpoint": ["A", "B"],
                                                     "time_weeks": [1, 2], "event": ["1.0", "0"]}),
                                       v).event) == {0, 1}


def test_missing_covariate_is_excluded_not_coded_rest_of_world(small):
    """A region n/a is left out of the models using region (counted), kept in the univariable/KM ones."""
    participants, long, outcomes = small
    p = participants.copy()
    p.loc[p.participant_id == "sub-001", "region"] = None
    ex = stats.Exclusions("cox")
    bl = stats.baseline_lesions(long)
    cox = stats.cox_models(bl, p, outcomes, "PLA", endpoints=["CDP24"], exclusions=ex)
    n = cox.groupby("model")["n"].first()
    assert n["multivariable"] == 119 and n["univariable_log_tlv"] == 120
    f = ex.frame()
    assert set(f.scope) == {"CDP24 multivariable"} and set(f.participant_id) == {"sub-001"}
    assert set(f.source) == {"gt", "classical"} and f.reason.str.contains("missing covariate region").all()
    coef, _, lsm, exa = stats.ancova_full(stats.compute_change(long), p, "PLA", weeks=[96])
    assert (coef.n == 119).all() and lsm.n_missing_covariate.sum() == 2  # one per source
    assert set(exa.participant_id) == {"sub-001"}
    tests, _, _ = stats.km_analysis(bl, p, outcomes, "PLA", endpoints=["CDP24"])
    assert (tests.n_low + tests.n_high).sum() == 2 * 120


def test_participant_missing_from_long_table_or_outcomes(tmp_path, small):
    participants, long, outcomes = small
    paths = write_inputs(tmp_path, participants, long[long.participant_id != "sub-007"], outcomes)
    # absent from the whole TLV table: an error naming the participant
    with pytest.raises(InputError, match="participant sub-007 of participants.tsv has no rows at all"):
        stats.run_cox(paths["long"], paths["participants"], paths["outcomes"], tmp_path / "c.tsv",
                      tmp_path / "t.tsv", "PLA")
    # ... unless the long-table stage excluded it with a reason: then counted in every analysis
    lex = tmp_path / "lex.tsv"
    pd.DataFrame([{"participant_id": "sub-007", "source": s, "analysis": "tlv_long", "scope": "",
                   "reason": "baseline visit ses-w000 excluded by the user: consent withdrawn"}
                  for s in ("gt", "classical")]).to_csv(lex, sep="\t", index=False)
    cox = stats.run_cox(paths["long"], paths["participants"], paths["outcomes"], tmp_path / "c.tsv",
                        tmp_path / "t.tsv", "PLA", endpoints=["CDP24"], long_exclusions_tsv=lex,
                        out_exclusions_tsv=tmp_path / "xc.tsv")
    assert (cox.n == 119).all()
    xc = pd.read_csv(tmp_path / "xc.tsv", sep="\t", keep_default_na=False)
    assert set(zip(xc.participant_id, xc.source)) == {("sub-007", "gt"), ("sub-007", "classical")}
    assert xc.reason.str.contains("consent withdrawn").all()
    for run, kw in ((stats.run_change, dict(out_change_tsv=tmp_path / "ch.tsv", out_summary_tsv=tmp_path / "s.tsv",
                                            out_png=tmp_path / "c.png")),
                    (stats.run_ancova, dict(out_coef_tsv=tmp_path / "a.tsv", out_anova_tsv=tmp_path / "b.tsv",
                                            weeks=[96]))):
        run(paths["long"], paths["participants"], control_arm="PLA", long_exclusions_tsv=lex,
            out_exclusions_tsv=tmp_path / "x.tsv", **kw)
        x = pd.read_csv(tmp_path / "x.tsv", sep="\t", keep_default_na=False)
        assert ("sub-007", "classical", "") in set(zip(x.participant_id, x.source, x.scope))
    # without an outcome row: counted per endpoint in Cox and KM, n lower by exactly that
    o = outcomes[~((outcomes.participant_id == "sub-009") & (outcomes.endpoint == "CDP24"))]
    paths = write_inputs(tmp_path, participants, long, o)
    cox = stats.run_cox(paths["long"], paths["participants"], paths["outcomes"], tmp_path / "c.tsv",
                        tmp_path / "t.tsv", "PLA", endpoints=["CDP24", "CCDP24"], out_exclusions_tsv=tmp_path / "x.tsv")
    assert (cox[cox.endpoint == "CDP24"].n == 119).all() and (cox[cox.endpoint == "CCDP24"].n == 120).all()
    x = pd.read_csv(tmp_path / "x.tsv", sep="\t")
    assert list(zip(x.participant_id, x.scope)) == [("sub-009", "CDP24")] * 2
    stats.run_km(paths["long"], paths["participants"], paths["outcomes"], tmp_path / "k.tsv", tmp_path / "kc.tsv",
                 str(tmp_path / "k_{endpoint}.png"), "PLA", endpoints=["CDP24"], out_exclusions_tsv=tmp_path / "y.tsv")
    y = pd.read_csv(tmp_path / "y.tsv", sep="\t")
    assert list(zip(y.participant_id, y.scope, y.analysis)) == [("sub-009", "CDP24", "km")] * 2
    with pytest.raises(InputError, match="km_conf_type"):
        stats.km_estimate(np.array([1.0]), np.array([1]), conf_type="arcsine")


def test_participant_without_mri_through_every_reader_of_the_visit_list(tmp_path):
    """A participant of participants.tsv without MRI: its "no MRI" row of the validated visit
    list becomes the long table's exclusion (every source), a row of Table 1, the new-lesion
    analysis's reason, and is no training visit."""
    from tests.conftest import make_bids
    from t2lesion.bids import validate, write_summary
    from t2lesion.stats.table1 import run_table1
    from t2lesion.stats.counts import VISIT_REQUIRED, run_new_lesions
    from t2lesion.unet.stage import training_participants

    bids = make_bids(tmp_path / "bids", subjects=("001", "002", "003"))  # arms PLA, OCR, PLA
    shutil.rmtree(bids / "sub-003")
    visits_tsv, part = tmp_path / "visits.tsv", bids / "participants.tsv"
    write_summary(validate(bids, ["PLA", "OCR"], check_images=False), visits_tsv)
    visits, no_mri = stats.read_visit_list(visits_tsv)
    assert no_mri == {"sub-003": "no MRI"} and len(visits) == 4 and visits.week.dtype.kind == "i"
    assert stats.read_visits(visits_tsv).equals(visits)
    rows = [(f"sub-{s}", f"ses-w{w:03d}", w, 1.0 + w / 24, 3) for s in ("001", "002") for w in (0, 24)]
    vols = {src: _volumes(tmp_path, rows, src) for src in ("gt", "classical")}
    out = stats.run_long_table(vols, tmp_path / "long.tsv", visits_tsv=visits_tsv, exclusions_tsv=tmp_path / "ex.tsv")
    assert set(out.participant_id) == {"sub-001", "sub-002"}
    ex = pd.read_csv(tmp_path / "ex.tsv", sep="\t", keep_default_na=False)
    assert set(zip(ex.participant_id, ex.source, ex.analysis, ex.scope, ex.reason)) == {
        ("sub-003", "gt", "tlv_long", "", "no MRI"), ("sub-003", "classical", "tlv_long", "", "no MRI")}
    # a volume of a participant the list names as without MRI is an error naming it
    odd = _volumes(tmp_path, [("sub-003", "ses-w000", 0, 1.0, 1)], "odd")
    with pytest.raises(InputError, match="volume of sub-003, whom the visit list names as without MRI"):
        stats.run_long_table({"classical": vols["classical"] + odd}, tmp_path / "l2.tsv", visits_tsv=visits_tsv)

    # Table 1: every patient of participants.tsv, those without MRI also on a row of their own
    t = run_table1(part, tmp_path / "long.tsv", visits_tsv, tmp_path / "t1.tsv", control_arm="PLA",
                   arms=["PLA", "OCR"], long_exclusions_tsv=tmp_path / "ex.tsv").set_index("characteristic")
    assert t.loc["Patients", ["PLA", "OCR", "all"]].tolist() == ["2", "1", "3"]
    assert t.loc["Patients without MRI", ["PLA", "OCR", "all"]].tolist() == ["1", "0", "1"]
    assert t.loc["Visits", ["PLA", "OCR", "all"]].tolist() == ["2", "2", "4"]
    assert [c for c in t.index if c.startswith("Visits at")] == ["Visits at week 0", "Visits at week 24"]

    # new and enlarging lesions: the reason comes from the visit list when the rule gives it
    tracking = []
    for sub in ("001", "002"):
        path = tmp_path / f"track-{sub}.tsv"
        pd.DataFrame([[f"sub-{sub}", "ses-w000", 0, "", 3, 0, 0, 0, 0.0], [f"sub-{sub}", "ses-w024", 24, "ses-w000", 4,
                       1, 0, 1, 0.1]], columns=VISIT_REQUIRED).to_csv(path, sep="\t", index=False)
        tracking.append(path)
    outputs = {k: str(tmp_path / f"nl_{k}.{'png' if k.startswith('fig') else 'tsv'}")
               for k in ("subjects", "visits", "by_arm", "nb", "exclusions", "fig_rates", "fig_forest")}
    for validated, reason in ((visits_tsv, "no MRI"), (None, "no lesion mask of source classical")):
        run_new_lesions({"classical": tracking}, part, outputs, "PLA", ["PLA", "OCR"], validated_visits_tsv=validated)
        x = pd.read_csv(outputs["exclusions"], sep="\t", keep_default_na=False)
        assert x.loc[x.participant_id == "sub-003", "reason"].tolist() == [reason]

    # the U-Net's fold split reads the list too: the row is no visit with a GT mask
    assert training_participants(visits_tsv, part, ["PLA", "OCR"]).participant_id.tolist() == ["sub-001", "sub-002"]


def test_participant_without_mri_is_listed_by_every_analysis_and_its_outcomes_are_no_error(tmp_path, small):
    from t2lesion.bids import TrialLayout, Visit, write_summary

    participants, long, outcomes = small
    pid = "sub-007"
    assert pid in set(outcomes.participant_id)  # its outcome rows stay in outcomes.tsv
    imaged = long[long.participant_id != pid]
    layout = TrialLayout(bids=tmp_path, participants=participants, outcomes=None, no_mri=[pid],
                         visits=[Visit(p[4:], f"w{w:03d}") for p, w in sorted(set(zip(imaged.participant_id,
                                                                                      imaged.week)))])
    layout.gt = dict.fromkeys(layout.visits, tmp_path)
    write_summary(layout, tmp_path / "visits.tsv")
    visits, no_mri = stats.read_visit_list(tmp_path / "visits.tsv")
    lt, lex = stats.long_table_from_volumes(imaged.assign(file="-"), ["gt", "classical"], visits, 0, no_mri)
    paths = write_inputs(tmp_path, participants, lt, outcomes)
    stats.write_exclusions(lex, tmp_path / "lex.tsv")
    kw = dict(control_arm="PLA", long_exclusions_tsv=tmp_path / "lex.tsv")
    cox = stats.run_cox(paths["long"], paths["participants"], paths["outcomes"], tmp_path / "c.tsv", tmp_path / "t.tsv",
                        endpoints=["CDP24"], out_exclusions_tsv=tmp_path / "x_cox.tsv", **kw)
    assert (cox.n == 119).all()  # 120 participants, one without MRI
    km = stats.run_km(paths["long"], paths["participants"], paths["outcomes"], tmp_path / "k.tsv", tmp_path / "kc.tsv",
                      str(tmp_path / "k_{endpoint}.png"), endpoints=["CDP24"], out_exclusions_tsv=tmp_path / "x_km.tsv",
                      **kw)
    assert (km.groupby("source")[["n_low", "n_high"]].sum().sum(axis=1) == 119).all()
    stats.run_change(paths["long"], paths["participants"], tmp_path / "ch.tsv", tmp_path / "s.tsv", tmp_path / "c.png",
                     out_exclusions_tsv=tmp_path / "x_change.tsv", **kw)
    coef, _ = stats.run_ancova(paths["long"], paths["participants"], tmp_path / "a.tsv", tmp_path / "b.tsv", weeks=[96],
                               out_exclusions_tsv=tmp_path / "x_ancova.tsv", **kw)
    assert (coef[coef.term == "arm_OCR"].n == 119).all()
    for analysis in ("cox", "km", "change", "ancova"):
        x = pd.read_csv(tmp_path / f"x_{analysis}.tsv", sep="\t", keep_default_na=False)
        mine = x[x.participant_id == pid]
        assert set(zip(mine.source, mine.analysis, mine.scope, mine.reason)) == {
            ("gt", analysis, "", "no MRI"), ("classical", analysis, "", "no MRI")}, (analysis, mine)
        assert len(mine) == 2  # listed once per source, under no other reason

def test_aliased_columns_names_each_combination_in_column_order():
    from t2lesion.stats.common import aliased_columns

    arm = np.array([0, 0, 1, 1, 0, 1], float)
    X = pd.DataFrame({"Intercept": 1.0, "arm_OCR": arm, "tlv": [1.0, 2, 3, 4, 5, 7], "region_US": 1 - arm,
                      "age_gt45": [0.0, 1, 0, 1, 1, 0], "twice_tlv": [2.0, 4, 6, 8, 10, 14]})
    assert aliased_columns(X) == ["region_US = a combination of Intercept, arm_OCR",
                                  "twice_tlv = a combination of tlv"]
    assert aliased_columns(X.drop(columns=["region_US", "twice_tlv"])) == []
    # without an intercept column: a Cox model's baseline hazard is its constant
    assert aliased_columns(X[["arm_OCR", "region_US"]]) == []
    assert aliased_columns(X[["arm_OCR", "region_US"]], constant=True) == [
        "region_US = a combination of the constant, arm_OCR"]


def test_region_matches_the_us_label_in_any_case(small):
    participants, long, _ = small
    change = stats.compute_change(long)
    mixed = participants.copy()
    us = mixed["region"] == "US"
    mixed.loc[us, "region"] = np.where(np.arange(us.sum()) % 2, "us", " Us ")
    a = stats.ancova(change, participants, "PLA", weeks=[48])[0]
    b = stats.ancova(change, mixed, "PLA", weeks=[48])[0]
    assert us.sum() > 10 and (a["status"] == "ok").all()
    np.testing.assert_array_equal(a["estimate"].to_numpy(), b["estimate"].to_numpy())


def test_ancova_with_arm_confounded_with_region_is_skipped_not_split(small):
    """Every control subject in the US: region_US = Intercept - arm_OCR. R's lm reports region_US
    as NA (aliased); a minimum-norm least-squares solution would split the arm effect arbitrarily."""
    participants, long, _ = small
    p = participants.assign(region=np.where(participants["arm"] == "PLA", "US", "ROW"))
    coef, anova_t = stats.ancova(stats.compute_change(long), p, "PLA", weeks=[48])
    assert (coef["status"] == "skipped").all() and (anova_t["status"] == "skipped").all()
    assert coef["note"].str.endswith("not identifiable: region_US = a combination of Intercept, arm_OCR").all()


def test_ancova_of_a_single_arm_is_skipped(small):
    participants, long, _ = small
    one = participants[participants["arm"] == "PLA"]
    coef, _ = stats.ancova(stats.compute_change(long), one, "PLA", weeks=[48])
    assert (coef["status"] == "skipped").all()
    assert coef["note"].str.startswith("one arm only (PLA): no treatment arm").all()


def test_cox_multivariable_skips_an_arm_without_events_and_a_confounded_design(small):
    participants, long, outcomes = small
    bl = stats.baseline_lesions(long)
    o = outcomes[outcomes.endpoint == "CDP24"].copy()
    ocr = o["participant_id"].isin(participants.loc[participants["arm"] == "OCR", "participant_id"])
    o.loc[ocr, "event"] = 0
    cox = stats.cox_models(bl, participants, o, "PLA", endpoints=["CDP24"])
    multi = cox[cox.model == "multivariable"]
    assert (multi.status == "skipped").all()
    assert multi.note.str.fullmatch(r"arm OCR has no CDP24 events: its hazard ratio is 0 or infinite "
                                    r"\(monotone likelihood\), not estimable").all()
    assert (cox[cox.model != "multivariable"].status == "ok").all()
    p = participants.assign(region=np.where(participants["arm"] == "PLA", "US", "ROW"))
    cox = stats.cox_models(bl, p, outcomes, "PLA", endpoints=["CDP24"], models=["multivariable"])
    assert (cox.status == "skipped").all()
    assert cox.note.str.endswith("not identifiable: region_US = a combination of the constant, arm_OCR").all()


def test_cox_separation_is_a_warning_not_a_crash():
    """Events only (and earliest) in the highest-TLV subjects: monotone likelihood."""
    n = 12
    participants = stats.validate_participants(pd.DataFrame({
        "participant_id": [f"sub-{i:03d}" for i in range(n)], "arm": ["PLA", "OCR"] * (n // 2),
        "age": np.linspace(30, 60, n), "sex": ["M", "F", "F"] * (n // 3), "region": ["US", "ROW", "ROW"] * (n // 3),
        "edss_bl": [3.0, 5.0] * (n // 2)}))
    tlv = np.linspace(1, 20, n)
    long = stats.validate_long(pd.DataFrame({
        "participant_id": participants.participant_id, "session": "w000", "week": 0, "source": "gt",
        "tlv_ml": tlv, "tlc": np.arange(n) + 1}), participants)
    ev = (tlv > 10).astype(int)
    outcomes = stats.validate_outcomes(pd.DataFrame({
        "participant_id": participants.participant_id, "endpoint": "CDP24",
        "time_weeks": np.where(ev == 1, 10.0 + n - np.arange(n), 120.0), "event": ev}), participants)
    cox = stats.cox_models(stats.baseline_lesions(long), participants, outcomes, "PLA", endpoints=["CDP24"],
                           models=["univariable_log_tlv"])
    r = cox.iloc[0]
    assert r["status"] == "warning" and r["note"]
    assert r["coef"] > 5  # diverging towards +inf


def test_cox_with_fewer_events_than_terms_is_skipped(small):
    participants, long, outcomes = small
    o = outcomes[outcomes.endpoint == "CDP24"].copy()
    o.loc[o.index[o.event == 1][3:], "event"] = 0  # 3 events left
    bl = stats.baseline_lesions(long)
    cox = stats.cox_models(bl, participants, o, "PLA", endpoints=["CDP24"])
    multi = cox[cox.model == "multivariable"]
    assert len(multi) == bl.source.nunique() and (multi.status == "skipped").all()
    assert multi.note.str.fullmatch(r"too few events: 3 for 7 terms \(stats.min_events_per_term=1\)").all()
    assert (cox[cox.model != "multivariable"].status == "ok").all()
    # the 10-events-per-term rule of thumb: univariable models need 10 events
    full = outcomes[outcomes.endpoint == "CDP24"]
    events = int(full.event.sum())
    assert 10 <= events < 70
    ten = stats.cox_models(bl, participants, full, "PLA", endpoints=["CDP24"], min_events_per_term=10)
    assert (ten[ten.model != "multivariable"].status == "ok").all()
    assert ten[ten.model == "multivariable"].note.str.startswith(f"too few events: {events} for 7 terms").all()


def test_participants_with_bom_crlf_and_blanks_read_as_validation_reads_them(tmp_path):
    """Statistics read the BIDS tables with the validator's reader: a table it accepts is read the same."""
    from t2lesion.stats import read_participants

    text = ("participant_id\tarm\tage\tsex\tregion\tedss_bl\tsite\r\n"
            "sub-001 \tPLA\t40\tmale\tn/a\t3.5\tBasel\r\n"
            "sub-002\tOCR\t51\tF\tUS\t2\tBoston\r\n")
    path = tmp_path / "participants.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    p = read_participants(path, ["PLA", "OCR"])
    assert p["participant_id"].tolist() == ["sub-001", "sub-002"]
    assert p["sex"].tolist() == ["M", "F"] and p["region"].isna().tolist() == [True, False]


def test_ph_test_with_one_distinct_event_time_is_nan_with_a_note_not_a_crash():
    """R's cox.zph stops ("computationally singular") when all events share one time:
    g(t) minus its mean is 0. Here that term's test is NaN and the row says why."""
    from t2lesion.stats.survival import cox_zph_km

    rng = np.random.default_rng(1)
    X = rng.normal(size=(12, 2))
    time = np.r_[np.full(3, 10.0), rng.uniform(20, 40, 9)]
    event = np.r_[np.ones(3, int), np.zeros(9, int)]
    chi2, glob = cox_zph_km(X, time, event, np.array([0.1, -0.2]))
    assert np.isnan(chi2).all() and np.isnan(glob)


def test_table4_text_has_three_significant_digits_as_every_table():
    from t2lesion.stats.survival import table4

    cox = pd.DataFrame({"source": "unet", "endpoint": "CDP24", "model": "multivariable", "term": ["arm", "log_tlv"],
                        "label": ["Arm", "BL T2 TLV (log)"], "hr": [1.23456, 12.3456], "hr_ci_low": [0.98765, 0.0123456],
                        "hr_ci_high": [1.5432, 123.456], "p": 0.5, "n": 40, "events": 10, "concordance": 0.6,
                        "ph_p": 0.4, "log_tlv_centre": 1.7, "status": "ok", "note": ""})
    t = table4(cox, conf_level=0.9)
    assert list(t["unet.hr_ci"]) == ["1.23 (0.988, 1.54)", "12.3 (0.0123, 123)"]
    assert set(t.ci_level) == {0.9}
