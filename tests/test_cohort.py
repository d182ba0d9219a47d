"""Tests of the tabular synthetic cohort (t2lesion.synth.clinical)."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from t2lesion.synth.clinical import (
    ENDPOINTS,
    CohortParams,
    draw_outcomes,
    draw_participants,
    draw_tlv_trajectory,
    linear_predictor,
    log_tlv,
    long_table_from_trajectory,
    simulate_cohort,
    true_coefficients,
)
from t2lesion.errors import InputError


@pytest.fixture(scope="module")
def big():
    return simulate_cohort(3000, seed=11)


def test_participants_columns_and_values():
    p = draw_participants(40, CohortParams(), np.random.default_rng(0))
    assert list(p.columns) == ["participant_id", "arm", "age", "sex", "region", "edss_bl", "tlv_bl_ml"]
    assert len(p) == 80
    assert p["participant_id"].is_unique
    assert all(re.fullmatch(r"sub-[A-Za-z0-9]+", s) for s in p["participant_id"])
    assert p["participant_id"].iloc[0] == "sub-001"
    assert p["arm"].value_counts().to_dict() == {"PLA": 40, "OCR": 40}
    assert set(p["sex"]) <= {"M", "F"} and set(p["region"]) <= {"US", "ROW"}
    assert p["age"].between(18, 65).all()
    assert (p["tlv_bl_ml"] > 0).all()
    assert set(p["edss_bl"]) <= set(np.arange(0, 6.51, 0.5))


def test_participant_distributions(big):
    p = big[0]
    assert abs(np.median(p["tlv_bl_ml"]) - 6.0) < 0.4
    assert abs(np.std(np.log(p["tlv_bl_ml"])) - 1.0) < 0.05
    assert abs((p["sex"] == "M").mean() - 0.4) < 0.03
    assert abs((p["region"] == "US").mean() - 0.3) < 0.03
    assert abs(p["age"].mean() - 40) < 0.6


def test_seed_determinism_and_difference():
    a = simulate_cohort(50, seed=3)
    b = simulate_cohort(50, seed=3)
    c = simulate_cohort(50, seed=4)
    for x, y in zip(a, b):
        pd.testing.assert_frame_equal(x, y)
    assert not a[0]["tlv_bl_ml"].equals(c[0]["tlv_bl_ml"])


def test_trajectory_baseline_and_known_mean_change(big):
    p, tl, _ = big
    params = CohortParams()
    assert sorted(tl["week"].unique()) == [0, 24, 48, 96]
    assert len(tl) == 4 * len(p)
    w0 = tl[tl.week == 0].set_index("participant_id")["tlv_ml"]
    np.testing.assert_allclose(w0.loc[p.participant_id].to_numpy(), p["tlv_bl_ml"].to_numpy())
    m = tl.merge(p[["participant_id", "arm", "tlv_bl_ml"]])
    m["pct"] = 100 * (m["tlv_ml"] / m["tlv_bl_ml"] - 1)
    means = m.groupby(["arm", "week"])["pct"].mean()
    truth = true_coefficients(params)["mean_pct_change"]
    for arm in params.arms:
        for w in params.weeks:
            # se of the mean at week 96 is sqrt(8^2+3^2)/sqrt(3000) ≈ 0.16
            assert abs(means[(arm, w)] - truth[arm][w]) < 0.6, (arm, w)
    assert truth["PLA"][96] == pytest.approx(10.0) and truth["OCR"][96] == 0.0
    assert true_coefficients(params)["ancova_arm_effect_pct"]["OCR"][48] == pytest.approx(-5.0)


def test_outcomes_structure_and_event_rates(big):
    p, _, o = big
    assert list(o.columns) == ["participant_id", "endpoint", "time_weeks", "event"]
    assert len(o) == 4 * len(p)
    assert set(o["endpoint"]) == set(ENDPOINTS)
    assert (o["time_weeks"] > 0).all() and (o["time_weeks"] <= 120).all()
    assert set(o["event"]) == {0, 1}
    rates = o.groupby("endpoint")["event"].mean()
    for ep in ("CDP24", "T25FW24", "9HPT24"):
        assert 0.25 <= rates[ep] <= 0.45, (ep, rates[ep])
    # administrative censoring at 120 w plus some random drop-out before it
    cens = o[(o.event == 0) & (o.endpoint == "CDP24")]
    assert (cens["time_weeks"] == 120).mean() > 0.7
    assert (cens["time_weeks"] < 120).sum() > 0


def test_ccdp24_is_earliest_component(big):
    o = big[2]
    wide_t = o.pivot(index="participant_id", columns="endpoint", values="time_weeks")
    wide_e = o.pivot(index="participant_id", columns="endpoint", values="event")
    comps = ["CDP24", "T25FW24", "9HPT24"]
    np.testing.assert_allclose(wide_t["CCDP24"], wide_t[comps].min(axis=1))
    np.testing.assert_array_equal(wide_e["CCDP24"], wide_e[comps].max(axis=1))


def test_draw_outcomes_uses_given_log_tlv():
    params = CohortParams(beta_arm=0.0)
    rng = np.random.default_rng(5)
    p = draw_participants(2000, params, rng)
    lo = p.assign(log_tlv=np.log(0.5))
    hi = p.assign(log_tlv=np.log(50.0))
    ev_lo = draw_outcomes(lo, params, np.random.default_rng(1)).query("endpoint == 'CDP24'")["event"].mean()
    ev_hi = draw_outcomes(hi, params, np.random.default_rng(1)).query("endpoint == 'CDP24'")["event"].mean()
    assert ev_hi > ev_lo + 0.3
    # a custom column name is honoured
    alt = p.assign(my_log=np.log(50.0))
    ev_alt = draw_outcomes(alt, params, np.random.default_rng(1), log_tlv_col="my_log")
    assert ev_alt.query("endpoint == 'CDP24'")["event"].mean() == ev_hi


def test_reference_event_probability_is_calibrated():
    """Reference profile (control, median TLV, F/ROW/EDSS>=4, mean age) without drop-out."""
    params = CohortParams(dropout_prob=0.0, beta_male=0.3, beta_age_per_year=0.02)
    n = 40000
    p = pd.DataFrame(
        {
            "participant_id": [f"sub-{i}" for i in range(n)],
            "arm": "PLA",
            "age": params.age_mean,
            "sex": "F",
            "region": "ROW",
            "edss_bl": 5.0,
            "tlv_bl_ml": params.tlv_median_ml,
        }
    )
    o = draw_outcomes(p, params, np.random.default_rng(2))
    rates = o.groupby("endpoint")["event"].mean()
    for ep, prob in params.event_prob_ref.items():
        assert abs(rates[ep] - prob) < 0.015
    # CCDP24: 1 - prod(1 - p_k) for independent components
    expect = 1 - np.prod([1 - v for v in params.event_prob_ref.values()])
    assert abs(rates["CCDP24"] - expect) < 0.015


def test_linear_predictor_coding():
    params = CohortParams(beta_male=0.1, beta_us=0.2, beta_edss_lt4=0.3, beta_age_per_year=0.01,
                          beta_arm_x_log_tlv=0.5)
    p = pd.DataFrame({"arm": ["PLA", "OCR"], "sex": ["M", "F"], "region": ["ROW", "US"],
                      "edss_bl": [3.5, 4.0], "age": [30.0, 50.0]})
    lp = linear_predictor(p, params, [1.0, 2.0])
    assert lp[0] == pytest.approx(0.1 + 0.3 + 0.3 + params.beta_log_tlv * 1.0)
    assert lp[1] == pytest.approx(params.beta_arm + 0.2 + 0.5 + params.beta_log_tlv * 2.0 + 0.5 * 2.0)


def test_true_coefficients_names():
    params = CohortParams(arms=["PLA", "OCR", "RTX"])
    tc = true_coefficients(params)
    assert set(tc["cox"]) == {"arm_OCR", "arm_RTX", "sex_M", "region_US", "edss_lt4", "age", "log_tlv",
                              "arm_OCR_x_log_tlv", "arm_RTX_x_log_tlv"}
    assert tc["cox_hr"]["log_tlv"] == pytest.approx(1.5)
    assert tc["cox_hr"]["arm_OCR"] == pytest.approx(0.7)
    assert tc["control_arm"] == "PLA"
    import json
    json.dumps(tc)  # serialisable for truth/params.json


def test_log_tlv_transform():
    assert log_tlv(0.0) == pytest.approx(math.log(0.01))
    assert log_tlv(1.0, 0.0) == pytest.approx(0.0)
    s = log_tlv(pd.Series([0.0, 5.0]), 0.5)
    assert isinstance(s, pd.Series) and s.iloc[1] == pytest.approx(math.log(5.5))


def test_long_table_layout():
    p, tl, _ = simulate_cohort(5, seed=0)
    lt = long_table_from_trajectory(tl, source="gt")
    assert list(lt.columns) == ["participant_id", "session", "week", "source", "tlv_ml", "tlc"]
    assert set(lt["session"]) == {"w000", "w024", "w048", "w096"}
    assert (lt["tlc"] >= 1).all()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"arms": ["PLA"]},
        {"arms": ["PLA", "PLA"]},
        {"event_prob_ref": {"CDP24": 0.4}},
        {"event_prob_ref": {"CDP24": 1.0, "T25FW24": 0.3, "9HPT24": 0.3}},
        {"weeks": [24, 48]},
        {"dropout_prob": 1.0},
    ],
)
def test_bad_params_raise(kwargs):
    with pytest.raises(InputError):
        CohortParams(**kwargs)


def test_bad_inputs_raise():
    with pytest.raises(InputError):
        draw_participants(0, CohortParams(), np.random.default_rng(0))
    p = draw_participants(3, CohortParams(), np.random.default_rng(0))
    with pytest.raises(InputError, match="tlv_bl_ml"):
        draw_outcomes(p.drop(columns="tlv_bl_ml"), CohortParams(), np.random.default_rng(0))
    with pytest.raises(InputError, match="arm"):
        draw_tlv_trajectory(p.drop(columns="arm"), CohortParams(), np.random.default_rng(0))
