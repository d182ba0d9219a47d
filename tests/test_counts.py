"""Count endpoint of new/enlarging T2 lesions (issue 16): R's MASS::glm.nb known answers
(tests/data/, made by tests/data/nb_glmnb.R), rate-ratio recovery on a large tabular
cohort, exclusions and degenerate cohorts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from t2lesion.stats.counts import (count_endpoint, fit_negbin, fit_poisson, run_new_lesions, simulate_counts,
                                   subject_counts, wilcoxon_rank_sum)

DATA = Path(__file__).resolve().parent / "data"
R_TERMS = {"(Intercept)": "Intercept", "armOCR": "arm_OCR", "log_tlc_bl1": "log_tlc_bl1",
           "region_US": "region_US", "age_gt45": "age_gt45"}


@pytest.fixture(scope="module")
def fitted():
    d = pd.read_csv(DATA / "nb_cohort.tsv", sep="\t")
    d["source"] = "sim"
    d["count_per_scan"] = d["count"] / d["n_scans"]
    res, excl = count_endpoint(d, "PLA", ["PLA", "OCR"])
    assert excl.empty
    ref = pd.read_csv(DATA / "nb_glmnb_reference.tsv", sep="\t", na_values=["n/a"])
    ref["term"] = ref["term"].map(R_TERMS)
    return res, ref


def _sig_digits(a, b):
    return -math.log10(abs(a - b) / abs(b)) if a != b else 16.0


@pytest.mark.parametrize("r_model", ["glm.nb", "glm.nb_tight"])
def test_negative_binomial_matches_r_glm_nb(fitted, r_model):
    res, ref = fitted
    nb = res[res["model"] == "negative_binomial"].set_index("term")
    r = ref[ref["model"] == r_model].set_index("term")
    assert (nb["status"] == "ok").all()
    # >= 6 significant digits against R's defaults, ~9 against R converged tightly
    digits = 6 if r_model == "glm.nb" else 8
    for term in R_TERMS.values():
        for ours, theirs in (("coef", "coef"), ("se", "se"), ("p", "p"), ("z", "z")):
            assert _sig_digits(nb.at[term, ours], r.at[term, theirs]) >= digits, (term, ours)
        assert _sig_digits(nb.at[term, "rate_ratio"], math.exp(r.at[term, "coef"])) >= digits
    assert _sig_digits(nb["theta"].iloc[0], r["theta"].iloc[0]) >= digits
    # MASS::theta.ml evaluates the information at the Newton iterate before its last step
    # (tolerance .Machine$double.eps^0.25), so R's SE of theta is good to ~5 digits only
    assert _sig_digits(nb["theta_se"].iloc[0], r["theta_se"].iloc[0]) >= 4
    assert _sig_digits(nb["two_log_likelihood"].iloc[0], r["two_log_likelihood"].iloc[0]) >= 10
    assert nb.at["arm_OCR", "se_convention"].startswith("R MASS::glm.nb")


def test_poisson_and_wilcoxon_sensitivity_rows_match_r(fitted):
    res, ref = fitted
    po = res[res["model"] == "poisson"].set_index("term")
    # R's default glm() stops at a relative deviance change of 1e-8 and takes the SEs from the
    # weights of the step before: its SEs are good to ~4 digits (and a p of 1e-25 to ~2); with
    # glm.control(epsilon = 1e-14) R and this fit agree to 14 digits (coef) and 9 (SE).
    limits = {"poisson_tight": {"coef": 13, "se": 8, "p": 6}, "poisson": {"coef": 7, "se": 4}}
    for r_model, cols in limits.items():
        r = ref[ref["model"] == r_model].set_index("term")
        for term in R_TERMS.values():
            for col, digits in cols.items():
                assert _sig_digits(po.at[term, col], r.at[term, col]) >= digits, (r_model, term, col)
    w = res[res["model"] == "wilcoxon"].iloc[0]
    rw = ref[ref["model"] == "wilcoxon"].iloc[0]
    assert _sig_digits(w["p"], rw["p"]) >= 8
    assert w["statistic"] == rw["statistic"]


def test_wilcoxon_exact_without_ties_like_r():
    # R 4.2.2: wilcox.test(c(1.5, 2.5, 4, 7), c(0.1, 0.2, 3)) -> W = 10, p-value = 0.228571428571429 (exact)
    w, p, method = wilcoxon_rank_sum([1.5, 2.5, 4, 7], [0.1, 0.2, 3])
    assert (w, method) == (10.0, "exact") and p == pytest.approx(0.228571428571429, rel=1e-12)


def test_large_tabular_cohort_recovers_the_true_rate_ratio():
    true_rr = 0.45
    sim = simulate_counts(2500, rate_ratio=true_rr, theta=1.0, seed=11)
    res, _ = count_endpoint(sim, "PLA", ["PLA", "OCR"])
    arm = res[(res["model"] == "negative_binomial") & (res["term"] == "arm_OCR")].iloc[0]
    assert arm["ci_low"] < true_rr < arm["ci_high"], arm[["rate_ratio", "ci_low", "ci_high"]]
    assert arm["ci_high"] / arm["ci_low"] < 1.3  # thousands of subjects: a narrow interval
    assert arm["theta"] == pytest.approx(1.0, rel=0.15)


def test_coverage_of_the_rate_ratio_interval_over_replicates():
    """The Wald interval with R's SE convention covers the truth at about the nominal rate."""
    true_rr, hits, reps = 0.6, 0, 40
    for seed in range(reps):
        res, _ = count_endpoint(simulate_counts(150, rate_ratio=true_rr, theta=1.5, seed=100 + seed), "PLA")
        a = res[(res["model"] == "negative_binomial") & (res["term"] == "arm_OCR")].iloc[0]
        hits += a["ci_low"] < true_rr < a["ci_high"]
    assert hits >= 34  # 95 % nominal: P(<= 33 of 40) < 1 %


def test_no_overdispersion_puts_theta_at_its_bound_with_a_warning():
    rng = np.random.default_rng(0)
    n = 400
    X = np.column_stack([np.ones(n), rng.integers(0, 2, n)])
    y = rng.poisson(np.exp(0.5 - 0.4 * X[:, 1]))
    fit = fit_negbin(y, X)
    assert fit["theta"] > 20  # Poisson data: a large theta, or none at all (the bound)
    # underdispersed counts: no finite theta; flagged, and the NB fit is the Poisson fit
    y2 = np.repeat([2, 3], n // 2)
    fit2, po = fit_negbin(y2, X), fit_poisson(y2, X)
    assert fit2["theta_at_bound"] and fit2["beta"] == pytest.approx(po["beta"], rel=1e-5)
    sim = simulate_counts(10, seed=4)
    sim["count"] = 2 + (np.arange(len(sim)) % 2)
    res, _ = count_endpoint(sim, "PLA", ["PLA", "OCR"])
    nb = res[res["model"] == "negative_binomial"]
    assert (nb["status"] == "warning").all() and nb["note"].str.contains("no overdispersion").all()


def test_an_underdispersed_small_trial_whose_score_is_rounding_noise_near_the_bound_fits():
    # The demo's U-Net counts at f1f54ca (8 subjects; intercept, arm, log baseline TLV, two
    # covariates): the theta score stays positive up to ~1e7, where it is rounding noise of
    # either sign. brentq re-evaluates its bracket; with a warm start carried over between
    # evaluations the noise flipped sign and brentq stopped the job ("f(a) and f(b) must
    # have different signs").
    X = np.array([[1, 0, 3.258096538021482, 1, 0], [1, 1, 3.9318256327243257, 1, 0],
                  [1, 1, 4.574710978503383, 0, 0], [1, 0, 3.2188758248682006, 1, 1],
                  [1, 1, 3.4339872044851463, 1, 0], [1, 1, 4.060443010546419, 0, 0],
                  [1, 0, 4.23410650459726, 0, 0], [1, 0, 2.995732273553991, 0, 0]])
    y = np.array([4, 2, 8, 2, 4, 5, 8, 1])
    fit, po = fit_negbin(y, X), fit_poisson(y, X)
    assert fit["theta_at_bound"] and fit["converged"]
    assert fit["beta"] == pytest.approx(po["beta"], rel=1e-6)
    assert fit["se"] == pytest.approx(po["se"], rel=1e-4)


def _visits(rows):
    cols = ["participant_id", "session", "week", "reference_session", "n_lesions", "n_new", "n_enlarging",
            "n_new_or_enlarging", "new_volume_ml"]
    return pd.DataFrame(rows, columns=cols)


def test_exclusions_are_rows_never_silent(tmp_path):
    part = pd.DataFrame({
        "participant_id": ["sub-01", "sub-02", "sub-03", "sub-04", "sub-05", "sub-06", "sub-07"],
        "arm": ["PLA", "OCR", "PLA", "OCR", "PLA", "OCR", "OCR"],
        "age": ["30", "n/a", "50", "41", "38", "47", "52"],
        "sex": ["F", "M", "n/a", "F", "M", "F", "F"],
        "region": ["US", "ROW", "ROW", "", "US", "ROW", "US"],
        "edss_bl": ["2", "3", "n/a", "4", "3", "2", "2"],
    })
    ptsv = tmp_path / "participants.tsv"
    part.to_csv(ptsv, sep="\t", index=False)
    rows = []
    for i, pid in enumerate(part["participant_id"]):
        rows.append([pid, "ses-w000", 0, "", 5 + i, None, None, None, None])
        if pid != "sub-03":  # sub-03: baseline only
            rows.append([pid, "ses-w024", 24, "ses-w000", 6 + i, i % 3, 1, i % 3 + 1, 0.01 * (i % 3)])
            rows.append([pid, "ses-w048", 48, "ses-w024", 6 + i, 1, 0, 1, 0.01])
    gt = tmp_path / "gt.tsv"
    _visits(rows).to_csv(gt, sep="\t", index=False, na_rep="n/a")
    base = tmp_path / "baseline.tsv"
    _visits([r for r in rows if r[0] != "sub-07"]).to_csv(base, sep="\t", index=False, na_rep="n/a")
    outs = {k: tmp_path / f"{k}.out" for k in ("subjects", "visits", "by_arm", "nb", "exclusions")}
    outs.update(fig_rates=tmp_path / "rates.png", fig_forest=tmp_path / "forest.png")
    res = run_new_lesions({"gt": [gt], "classical": [base]}, ptsv, outs, "PLA", ["PLA", "OCR"])
    excl = pd.read_csv(outs["exclusions"], sep="\t")
    reasons = {(r.source, r.participant_id): r.reason for r in excl.itertuples()}
    assert reasons[("gt", "sub-03")] == "no follow-up scan"
    assert "missing age" in reasons[("gt", "sub-02")]
    assert "missing region" in reasons[("gt", "sub-04")]
    assert reasons[("classical", "sub-07")] == "no lesion mask of source classical"
    subjects = pd.read_csv(outs["subjects"], sep="\t")
    s1 = subjects[(subjects["source"] == "gt") & (subjects["participant_id"] == "sub-01")].iloc[0]
    assert (s1["count"], s1["n_scans"], s1["tlc_bl"]) == (2, 2, 5)
    # every participant is analysed or excluded, per source
    for src in ("gt", "classical"):
        nb = res[(res["source"] == src) & (res["model"] == "negative_binomial")]
        n_excl = (excl["source"] == src).sum()
        assert nb["n"].iloc[0] + n_excl == len(part)
    assert outs["fig_rates"].stat().st_size > 0 and outs["fig_forest"].stat().st_size > 0
    assert list(dict.fromkeys(res["source"])) == ["gt", "classical"]


def test_degenerate_cohorts_are_skipped_with_a_reason():
    sim = simulate_counts(20, seed=1)
    sim[["count", "count_per_scan"]] = 0
    res, _ = count_endpoint(sim, "PLA", ["PLA", "OCR"])
    assert (res["status"] == "skipped").all() and res["note"].str.contains("no new or enlarging").all()
    small = simulate_counts(1, seed=1)
    res, _ = count_endpoint(small, "PLA", ["PLA", "OCR"])
    assert (res["status"] == "skipped").all() and res["note"].str.contains("min_n_per_arm").all()
    one = simulate_counts(20, seed=1)
    res, _ = count_endpoint(one[one["arm"] == "PLA"], "PLA")
    assert (res["status"] == "skipped").all() and res["note"].str.startswith("one arm only (PLA)").all()


def test_an_arm_without_lesions_skips_the_models_and_keeps_the_rank_sum_test():
    """A highly effective arm: its rate ratio is 0 (not estimable), the rank-sum test is not.
    R: wilcox.test(rep(0, 20), <the control arm's lesions per scan>): W = 40, p = 1.09030616320275e-06."""
    sim = simulate_counts(20, seed=1)
    sim.loc[sim["arm"] == "OCR", ["count", "count_per_scan"]] = 0
    res, _ = count_endpoint(sim, "PLA", ["PLA", "OCR"])
    models = res.set_index("model")
    for m in ("negative_binomial", "poisson"):
        assert models.at[m, "status"] == "skipped"
        assert models.at[m, "note"].startswith("arm OCR has no new or enlarging lesion")
    w = models.loc["wilcoxon"]
    assert w["status"] == "ok" and w["statistic"] == 40.0
    assert w["p"] == pytest.approx(1.09030616320275e-06, rel=1e-12)


@pytest.mark.parametrize("confound", ["region", "age"])
def test_arm_confounded_with_a_covariate_skips_the_models_naming_the_combination(confound):
    """Every control subject in the US (or over 45): region_US (age_gt45) = Intercept - arm_OCR,
    which R's glm.nb reports as an NA coefficient; a fit would hit a singular information."""
    sim = simulate_counts(10, seed=3)
    if confound == "region":
        sim["region"] = np.where(sim["arm"] == "PLA", "US", "ROW")
    else:
        sim["age"] = np.where(sim["arm"] == "PLA", 60.0, 30.0)
    res, _ = count_endpoint(sim, "PLA", ["PLA", "OCR"])
    models = res.set_index("model")
    col = {"region": "region_US", "age": "age_gt45"}[confound]
    for m in ("negative_binomial", "poisson"):
        assert models.at[m, "status"] == "skipped"
        assert models.at[m, "note"].endswith(f"not identifiable: {col} = a combination of Intercept, arm_OCR")
    assert models.at["wilcoxon", "status"] == "ok"


def test_a_missing_count_in_a_tracking_table_is_an_error_naming_file_and_row(tmp_path):
    from t2lesion.errors import InputError
    from t2lesion.stats.counts import read_visit_tables

    v = _visits([["sub-1", "ses-w000", 0, "", 3, None, None, None, None],
                 ["sub-1", "ses-w048", 48, "ses-w000", 4, 1, None, None, 0.1]])
    path = tmp_path / "sub-1_visits.tsv"
    v.to_csv(path, sep="\t", index=False, na_rep="n/a")
    with pytest.raises(InputError) as err:
        read_visit_tables({"gt": [path]})
    msg = str(err.value)
    assert f"{path}: row 3 (session ses-w048): n_enlarging is n/a, not a number" in msg
    assert "n_new_or_enlarging is n/a" in msg and "ses-w000" not in msg  # the baseline has no counts


def test_subject_counts_requires_known_participants():
    from t2lesion.errors import InputError

    v = _visits([["sub-9", "ses-w000", 0, "", 3, None, None, None, None]]).assign(source="gt")
    with pytest.raises(InputError, match="sub-9"):
        subject_counts(v, pd.DataFrame({"participant_id": ["sub-1"], "arm": ["PLA"], "age": ["3"],
                                        "region": ["US"]}), ["PLA", "OCR"])


def test_the_rate_ratio_forest_plot_labels_its_log_axis_readably(tmp_path, monkeypatch):
    """Plain labels at 1-2-5 steps, no minor labels: matplotlib's 2x10^-1, 3x10^-1, ... overlapped."""
    import t2lesion.plots.new_lesions as nl

    figs = []
    monkeypatch.setattr(nl, "_save", lambda fig, path: figs.append(fig))
    res, _ = count_endpoint(simulate_counts(30, seed=1), "PLA", ["PLA", "OCR"])
    nl.plot_rate_ratios(res.assign(source="sim"), tmp_path / "forest.png", "PLA")
    ax = figs[0].axes[0]
    figs[0].canvas.draw()
    lo, hi = ax.get_xlim()
    major = [t.get_text() for t in ax.get_xticklabels()]
    assert major and all(t in {"0.01", "0.02", "0.05", "0.1", "0.2", "0.5", "1", "2", "5", "10"} for t in major), major
    assert [float(t) for t in major] == [v for v in nl.LOG_TICKS if lo <= v <= hi]
    assert not any(t.get_text() for t in ax.get_xticklabels(minor=True))
