"""Lesion metrics (docs/DESIGN.md §8): hand-built masks with known answers, properties, an independent reference."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from medpy.metric import binary as medpy_binary
from scipy import stats as sps

from tests.conftest import REPO, write_image
from t2lesion.errors import InputError
from t2lesion.evaluation import files as F
from t2lesion.evaluation import segmentation as S
from t2lesion.evaluation import table2 as T


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_metrics", REPO / "benchmarks" / "bench_metrics.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


BENCH = _load_bench()


def empty(shape=(8, 12, 12)):
    return np.zeros(shape, bool)


def block(shape, z, y, x):
    m = empty(shape)
    m[z, y, x] = True
    return m


# --------------------------------------------------------------------------- connectivity and size


def test_edge_touching_cubes_are_one_lesion_under_18_two_under_6():
    m = empty()
    m[0:2, 0:2, 0:2] = True
    m[0:2, 2:4, 2:4] = True  # shares only edges (differs in y and x) with the first cube
    labels, sizes = S.label_lesions(m, connectivity=18)
    assert sizes.tolist() == [16] and labels.max() == 1
    assert S.label_lesions(m, connectivity=6)[1].tolist() == [8, 8]
    assert S.label_lesions(m, connectivity=26)[1].tolist() == [16]
    assert S.evaluate_visit(m, m, 0.003)[0]["gt_tlc"] == 1
    assert S.evaluate_visit(m, m, 0.003, connectivity=6)[0]["gt_tlc"] == 2


def test_corner_touching_cubes_are_two_lesions_under_18_one_under_26():
    m = empty()
    m[0:2, 0:2, 0:2] = True
    m[2:4, 2:4, 2:4] = True  # one shared corner only
    assert S.label_lesions(m, connectivity=18)[1].tolist() == [8, 8]
    assert S.label_lesions(m, connectivity=26)[1].tolist() == [16]


def test_line_shaped_volume_under_26_connectivity():
    # cc3d 4.1.1 raises on (1, 1, n) arrays with 26-connectivity; with a singleton axis 26 ≡ 18
    m = np.array([[[True, False, True, False, True]]])
    assert S.label_lesions(m, connectivity=26, min_size=1)[1].tolist() == [1, 1, 1]


def test_fortran_ordered_and_transposed_masks_give_the_same_lesions():
    gt, pred = BENCH.make_visit(shape=(12, 40, 40), n_lesions=30, seed=5)
    ref_row, ref_les = S.evaluate_visit(gt, pred, 1)
    row, les = S.evaluate_visit(np.asfortranarray(gt), np.asfortranarray(pred), 1)
    assert row == pytest.approx(ref_row, nan_ok=True)
    pd.testing.assert_frame_equal(les, ref_les)
    labels, sizes = S.label_lesions(np.asfortranarray(gt))
    np.testing.assert_array_equal(labels, S.label_lesions(gt)[0])
    t_row, _ = S.evaluate_visit(gt.transpose(2, 1, 0), pred.transpose(2, 1, 0), 1)
    assert t_row["gt_tlc"] == ref_row["gt_tlc"] and t_row["dc"] == ref_row["dc"]


def test_two_voxel_speck_vanishes_from_lesions_but_not_from_voxel_metrics():
    gt = empty()
    gt[1:3, 1:3, 1:3] = True  # 8-voxel lesion
    gt[6, 10, 10:12] = True  # 2-voxel speck
    pred = gt.copy()
    labels, sizes = S.label_lesions(gt)
    assert sizes.tolist() == [8] and not labels[6, 10, 10:12].any()
    row, les = S.evaluate_visit(gt, pred, 0.003)
    assert row["gt_tlc"] == row["pred_tlc"] == 1
    assert les["n_voxels"].tolist() == [8, 8]
    assert row["gt_voxels"] == 10 and row["gt_tlv_ml"] == pytest.approx(0.030)
    clean = S.evaluate_visit(gt, pred, 0.003, clean_voxel_metrics=True)[0]
    assert clean["gt_voxels"] == 8 and clean["gt_tlv_ml"] == pytest.approx(0.024)
    assert S.evaluate_visit(gt, pred, 0.003, min_size=2)[0]["gt_tlc"] == 2
    # a speck in the prediction that covers a GT lesion does not detect it
    p2 = empty()
    p2[1, 1, 1:3] = True
    assert S.evaluate_visit(gt, p2, 0.003)[0]["ltpr"] == 0.0


# --------------------------------------------------------------------------- the 10 % overlap rule


def _gt100():
    gt = empty((8, 20, 20))
    gt[0:4, 0:5, 0:5] = True  # 100 voxels
    return gt


@pytest.mark.parametrize("covered, detected", [(9, False), (10, True), (11, True)])
def test_gt_lesion_detected_at_ten_percent_of_its_voxels(covered, detected):
    gt = _gt100()
    pred = empty(gt.shape)
    pred.reshape(-1)[np.flatnonzero(gt)[:covered]] = True  # one connected run inside the GT lesion
    assert S.label_lesions(pred)[1].tolist() == [covered]
    row, les = S.evaluate_visit(gt, pred, 0.003)
    assert row["ltpr"] == (1.0 if detected else 0.0)
    # the predicted lesion lies wholly inside GT: a true positive either way
    assert (row["lppv"], row["lfpr"]) == (1.0, 0.0)
    g = les[les["kind"] == "gt"].iloc[0]
    assert g["overlap_fraction"] == pytest.approx(covered / 100)
    assert g["lesion_dc"] == pytest.approx(2 * covered / (100 + covered))


@pytest.mark.parametrize("covered, tp", [(9, False), (11, True)])
def test_predicted_lesion_true_positive_at_ten_percent_of_its_voxels(covered, tp):
    pred = _gt100()
    gt = empty(pred.shape)
    gt.reshape(-1)[np.flatnonzero(pred)[:covered]] = True
    row, les = S.evaluate_visit(gt, pred, 0.003)
    assert row["ltpr"] == 1.0  # the small GT lesion is fully covered
    assert row["lppv"] == (1.0 if tp else 0.0)
    assert row["lfpr"] == (0.0 if tp else 1.0)
    p = les[les["kind"] == "pred"].iloc[0]
    assert bool(p["matched"]) == tp and bool(p["false_positive"]) == (not tp)


def test_overlap_parameters_change_the_rule():
    pred = _gt100()
    gt = empty(pred.shape)
    gt.reshape(-1)[np.flatnonzero(pred)[:5]] = True  # predicted lesion 5 % covered
    assert S.evaluate_visit(gt, pred, 1, overlap=0.05)[0]["lppv"] == 1.0
    assert S.evaluate_visit(gt, pred, 1, overlap=0.06)[0]["lppv"] == 0.0
    # ISBI 2015: any shared voxel matches
    isbi = S.evaluate_visit(gt, pred, 1, overlap=0, fp_overlap=0)[0]
    assert (isbi["lppv"], isbi["lfpr"]) == (1.0, 0.0)
    # different TP and FP rules: the lesion is both, so LPPV + LFPR > 1 (as in the paper's Table 2)
    mixed = S.evaluate_visit(gt, pred, 1, overlap=0, fp_overlap=0.10)[0]
    assert (mixed["lppv"], mixed["lfpr"]) == (1.0, 1.0)
    # a disjoint prediction is a false positive under every rule
    far = block(pred.shape, slice(5, 8), slice(15, 18), slice(15, 18))
    assert S.evaluate_visit(gt, far, 1, overlap=0, fp_overlap=0)[0]["lfpr"] == 1.0


def test_lesion_dc_counts_every_touching_lesion_of_the_other_mask():
    gt = empty()
    gt[0:2, 0:2, 0:2] = True  # 8
    gt[0:2, 0:2, 5:7] = True  # 8
    pred = empty()
    pred[0:2, 0:2, 0:7] = True  # 28, merges both GT lesions
    row, les = S.evaluate_visit(gt, pred, 1)
    g = les[les["kind"] == "gt"]
    assert g["lesion_dc"].tolist() == pytest.approx([2 * 8 / (8 + 28)] * 2)
    p = les[les["kind"] == "pred"].iloc[0]
    assert p["lesion_dc"] == pytest.approx(2 * 16 / (28 + 16))
    assert p["overlap_fraction"] == pytest.approx(16 / 28)
    assert (row["ltpr"], row["lppv"], row["gt_tlc"], row["pred_tlc"]) == (1.0, 1.0, 2, 1)
    # centroids in voxel indices
    assert g[["centroid_z", "centroid_y", "centroid_x"]].values.tolist() == [[0.5, 0.5, 0.5], [0.5, 0.5, 5.5]]


# --------------------------------------------------------------------------- empty masks


def test_empty_masks_give_nan_where_undefined_and_never_divide_by_zero():
    gt = block((8, 12, 12), slice(0, 2), slice(0, 2), slice(0, 2))
    e = empty()
    nan = math.nan
    both = S.evaluate_visit(e, e, 0.003)[0]
    assert all(math.isnan(both[k]) for k in ("dc", "ppv", "tpr", "avd", "ltpr", "lppv", "lfpr"))
    assert (both["gt_tlv_ml"], both["gt_tlc"], both["pred_tlc"]) == (0.0, 0, 0)
    no_gt = S.evaluate_visit(e, gt, 0.003)[0]
    expect = {"dc": 0.0, "ppv": 0.0, "tpr": nan, "avd": nan, "ltpr": nan, "lppv": 0.0, "lfpr": 1.0}
    assert {k: no_gt[k] for k in expect} == pytest.approx(expect, nan_ok=True)
    no_pred = S.evaluate_visit(gt, e, 0.003)[0]
    expect = {"dc": 0.0, "ppv": nan, "tpr": 0.0, "avd": 1.0, "ltpr": 0.0, "lppv": nan, "lfpr": nan}
    assert {k: no_pred[k] for k in expect} == pytest.approx(expect, nan_ok=True)
    les = S.evaluate_visit(e, e, 0.003)[1]
    assert len(les) == 0 and list(les.columns) == S.LESION_COLUMNS


def test_voxel_metrics_known_values():
    gt = block((4, 4, 4), slice(0, 2), slice(0, 2), slice(0, 2))  # 8
    pred = block((4, 4, 4), slice(0, 2), slice(0, 2), slice(0, 3))  # 12, 8 shared
    v = S.voxel_metrics(gt, pred, 0.003)
    assert v["dc"] == pytest.approx(16 / 20) and v["ppv"] == pytest.approx(8 / 12)
    assert v["tpr"] == 1.0 and v["avd"] == pytest.approx(0.5)
    assert (v["gt_tlv_ml"], v["pred_tlv_ml"]) == pytest.approx((0.024, 0.036))


def test_bad_parameters_raise_input_error():
    m = empty()
    with pytest.raises(InputError, match="connectivity"):
        S.evaluate_visit(m, m, 1, connectivity=4)
    with pytest.raises(InputError, match="overlap"):
        S.evaluate_visit(m, m, 1, overlap=1.5)
    with pytest.raises(InputError, match="min_size"):
        S.label_lesions(m, min_size=0)
    with pytest.raises(InputError, match="increasing"):
        S.normalise_size_groups([[3, 10], [10, 50]])
    with pytest.raises(ValueError, match="shapes differ"):
        S.evaluate_visit(m, empty((8, 12, 13)), 1)


# --------------------------------------------------------------------------- size groups, sessions


def test_size_group_boundaries_are_inclusive():
    got = S.assign_size_groups([2, 3, 10, 11, 50, 51, 100, 101, 5000])
    assert got.tolist() == ["", "3-10", "3-10", "11-50", "11-50", "51-100", "51-100", ">100", ">100"]
    assert S.size_group_labels([[1, 5], [6, None]]) == ["1-5", ">5"]


def test_size_group_table_known_answer():
    rows = [  # visit A: two small GT lesions (one detected), one large; visit B: one small missed
        ("A", "gt", 5, True, False, 0.5), ("A", "gt", 8, False, False, 0.0), ("A", "gt", 200, True, False, 0.9),
        ("A", "pred", 4, True, False, 0.6), ("A", "pred", 6, False, True, 0.0),
        ("B", "gt", 3, False, False, 0.0), ("B", "pred", 40, False, True, 0.0),
    ]
    les = pd.DataFrame(rows, columns=["participant_id", "kind", "n_voxels", "matched", "false_positive", "lesion_dc"])
    les["session"] = "ses-w000"
    visits = pd.DataFrame({"participant_id": ["A", "B", "C"], "session": "ses-w000"})
    t = T.size_group_table(les, visits).set_index("size_group")
    small = t.loc["3-10"]
    assert (small["n_gt"], small["n_detected"], small["n_pred"], small["n_fp"]) == (3, 1, 2, 1)
    assert small["ltpr_pooled"] == pytest.approx(1 / 3) and small["lfpr_pooled"] == pytest.approx(0.5)
    assert small["ltpr_mean"] == pytest.approx(0.25) and small["ltpr_n"] == 2  # A: 1/2, B: 0/1
    assert small["lfpr_mean"] == pytest.approx(0.5) and small["lfpr_n"] == 1
    assert small["lesion_dc_mean"] == pytest.approx(0.5 / 3)
    assert small["n_visits"] == 3
    assert t.loc["11-50", "lfpr_mean"] == 1.0 and t.loc["11-50", "n_gt"] == 0
    assert math.isnan(t.loc["11-50", "ltpr_pooled"]) and math.isnan(t.loc["51-100", "lesion_dc_mean"])
    assert t.loc[">100", "ltpr_pooled"] == 1.0


def test_week_from_session():
    assert F.week_from_session("ses-w024") == 24 and F.week_from_session("w000") == 0
    with pytest.raises(InputError, match="ses-m06"):
        F.week_from_session("ses-m06")


# --------------------------------------------------------------------------- dataset statistics


def test_pearson_ci_matches_fisher_z_by_hand():
    rng = np.random.default_rng(3)
    x = rng.normal(size=30)
    y = x + rng.normal(scale=0.5, size=30)
    got = T.pearson_ci(x, y)
    r = np.corrcoef(x, y)[0, 1]
    half = sps.norm.ppf(0.975) / math.sqrt(30 - 3)
    assert got["r"] == pytest.approx(r)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((math.tanh(math.atanh(r) - half),
                                                             math.tanh(math.atanh(r) + half)), rel=1e-6)
    nan_pair = T.pearson_ci([1, 2, np.nan, 4, 5], [1, 3, 2, 4, 6])
    assert (nan_pair["n"], nan_pair["n_nan"]) == (4, 1)
    assert math.isnan(T.pearson_ci([1, 1, 1, 1], [1, 2, 3, 4])["r"])  # constant: undefined


def _visit_rows():
    return pd.DataFrame({
        "participant_id": ["sub-001", "sub-001", "sub-002", "sub-003"],
        "session": ["ses-w000", "ses-w024", "ses-w000", "ses-w000"],
        "dc": [0.8, 0.6, np.nan, 0.7], "ppv": [0.9, 0.7, 0.0, 0.8], "tpr": [0.7, 0.5, np.nan, 0.6],
        "avd": [0.1, 0.2, np.nan, 0.3], "ltpr": [1.0, 0.5, np.nan, 0.75], "lppv": [0.8, 0.6, 0.0, 0.9],
        "lfpr": [0.2, 0.4, 1.0, 0.1], "gt_tlv_ml": [1.0, 2.0, 0.0, 4.0], "pred_tlv_ml": [1.2, 1.9, 0.3, 3.5],
        "gt_tlc": [3, 5, 0, 8], "pred_tlc": [4, 5, 1, 7],
    })


def test_table2_means_exclude_and_count_nan():
    t = T.table2(_visit_rows(), isbi_score=True).set_index("metric")
    assert t.loc["DC", "mean"] == pytest.approx(0.7) and t.loc["DC", "sd"] == pytest.approx(0.1)
    assert (t.loc["DC", "n"], t.loc["DC", "n_nan"]) == (3, 1)
    assert t.loc["DC", "summary"] == "0.700 ± 0.100"
    assert (t.loc["LFPR", "n"], t.loc["LFPR", "n_nan"]) == (4, 0)
    assert t.loc["r_vol", "mean"] == pytest.approx(np.corrcoef([1, 2, 0, 4], [1.2, 1.9, 0.3, 3.5])[0, 1])
    assert list(t["block"].unique()) == ["segmentation", "detection", "volume", "isbi2015"]
    # ISBI 2015: 100 (DC/8 + PPV/8 + (1 - LFPR)/4 + LTPR/4 + r/4), NaN where a term is NaN
    v = _visit_rows()
    s = T.isbi2015_scores(v)
    r = t.loc["r_vol", "mean"]
    assert s.iloc[0] == pytest.approx(100 * (0.8 / 8 + 0.9 / 8 + 0.8 / 4 + 1.0 / 4 + r / 4))
    assert math.isnan(s.iloc[2])
    assert t.loc["ISBI-2015 score", "n_nan"] == 1


def test_correlation_table_has_ci_and_bland_altman():
    c = T.correlation_table(_visit_rows()).set_index("measure")
    d = np.array([1.2, 1.9, 0.3, 3.5]) - np.array([1.0, 2.0, 0.0, 4.0])
    assert c.loc["TLV (mL)", "bias"] == pytest.approx(d.mean())
    assert c.loc["TLV (mL)", "loa_high"] == pytest.approx(d.mean() + 1.96 * d.std(ddof=1))
    assert c.loc["TLC", "r"] == pytest.approx(np.corrcoef([3, 5, 0, 8], [4, 5, 1, 7])[0, 1])
    assert c.loc["TLC", "ci_low"] < c.loc["TLC", "r"] < c.loc["TLC", "ci_high"]


# --------------------------------------------------------------------------- properties (hypothesis)

small_masks = arrays(np.bool_, st.tuples(st.integers(1, 5), st.integers(1, 7), st.integers(1, 7)))


@st.composite
def mask_pairs(draw):
    shape = draw(st.tuples(st.integers(1, 5), st.integers(1, 7), st.integers(1, 7)))
    return draw(arrays(np.bool_, shape)), draw(arrays(np.bool_, shape))


@given(mask_pairs())
@settings(max_examples=150, deadline=None)
def test_dc_symmetric_bounded_and_one_for_identical(pair):
    g, p = pair
    a, b = S.voxel_metrics(g, p, 1)["dc"], S.voxel_metrics(p, g, 1)["dc"]
    if g.any() or p.any():
        assert a == b and 0.0 <= a <= 1.0
    else:
        assert math.isnan(a) and math.isnan(b)
    if g.any():
        assert S.voxel_metrics(g, g, 1)["dc"] == 1.0


@given(small_masks, st.sampled_from([6, 18, 26]))
@settings(max_examples=150, deadline=None)
def test_mask_against_itself_has_ltpr_one_and_lfpr_zero(m, conn):
    row, les = S.evaluate_visit(m, m, 1, connectivity=conn)
    if row["gt_tlc"]:
        assert (row["ltpr"], row["lppv"], row["lfpr"]) == (1.0, 1.0, 0.0)
        assert (les["lesion_dc"] == 1.0).all()
    else:
        assert math.isnan(row["ltpr"]) and math.isnan(row["lfpr"])


@given(mask_pairs(), st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)))
@settings(max_examples=100, deadline=None)
def test_metrics_invariant_to_translating_both_masks(pair, shift):
    g, p = pair
    big = tuple(s + 3 for s in g.shape)

    def moved(m):
        out = np.zeros(big, bool)
        out[shift[0]:shift[0] + m.shape[0], shift[1]:shift[1] + m.shape[1], shift[2]:shift[2] + m.shape[2]] = m
        return out

    r0, l0 = S.evaluate_visit(g, p, 0.003)
    r1, l1 = S.evaluate_visit(moved(g), moved(p), 0.003)
    assert r0 == pytest.approx(r1, nan_ok=True)
    cols = ["kind", "n_voxels", "overlap_fraction", "matched", "false_positive", "lesion_dc"]
    pd.testing.assert_frame_equal(l0[cols], l1[cols])
    np.testing.assert_allclose(l1["centroid_z"] - l0["centroid_z"], shift[0])


@given(mask_pairs())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_voxel_metrics_agree_with_medpy(pair):
    g, p = pair
    v = S.voxel_metrics(g, p, 1)
    if g.any() or p.any():
        assert v["dc"] == pytest.approx(medpy_binary.dc(p, g))
    if p.any():
        assert v["ppv"] == pytest.approx(medpy_binary.precision(p, g))
    if g.any():
        assert v["tpr"] == pytest.approx(medpy_binary.recall(p, g))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("conn, overlap, fp_overlap", [(18, 0.10, None), (6, 0.0, 0.0), (26, 0.3, 0.05)])
def test_lesion_metrics_agree_with_naive_reference(seed, conn, overlap, fp_overlap):
    gt, pred = BENCH.make_visit(shape=(16, 64, 64), n_lesions=60, seed=seed)
    row, les = S.evaluate_visit(gt, pred, 1, connectivity=conn, overlap=overlap, fp_overlap=fp_overlap)
    ref = BENCH.naive_evaluate(gt, pred, connectivity=conn, overlap=overlap, fp_overlap=fp_overlap)
    assert (row["gt_tlc"], row["pred_tlc"]) == (ref["gt_tlc"], ref["pred_tlc"]) and row["gt_tlc"] > 10
    assert {k: row[k] for k in ("ltpr", "lppv", "lfpr")} == pytest.approx(
        {k: ref[k] for k in ("ltpr", "lppv", "lfpr")})
    for kind in ("gt", "pred"):
        sub = les[les["kind"] == kind]
        np.testing.assert_array_equal(sub["n_voxels"], ref[f"{kind}_sizes"])
        np.testing.assert_allclose(sub["overlap_fraction"], ref[f"{kind}_frac"])
        np.testing.assert_allclose(sub["lesion_dc"], ref[f"{kind}_dc"])


# --------------------------------------------------------------------------- files


def _write_masks(tmp_path, gt, pred, spacing=(1.0, 1.0, 3.0), pred_spacing=None):
    gp, pp = tmp_path / "gt.nii.gz", tmp_path / "pred.nii.gz"
    write_image(gp, gt.astype(np.uint8), spacing)
    write_image(pp, pred.astype(np.uint8), pred_spacing or spacing)
    return gp, pp


def test_run_visit_writes_rows_with_volume_from_header(tmp_path):
    gt = block((8, 12, 12), slice(0, 2), slice(0, 2), slice(0, 2))
    pred = block((8, 12, 12), slice(0, 2), slice(0, 2), slice(0, 3))
    gp, pp = _write_masks(tmp_path, gt, pred, spacing=(1.0, 1.0, 3.0))
    row = F.run_visit(gp, pp, tmp_path / "v.tsv", tmp_path / "l.tsv", "sub-001", "ses-w048")
    v = pd.read_csv(tmp_path / "v.tsv", sep="\t")
    assert len(v) == 1 and v.loc[0, "week"] == 48 and row["voxel_ml"] == pytest.approx(0.003)
    for col in ("participant_id", "session", "week", "gt_tlv_ml", "pred_tlv_ml", "gt_tlc", "pred_tlc",
                "dc", "ppv", "tpr", "avd", "lppv", "ltpr", "lfpr"):
        assert col in v.columns
    assert v.loc[0, "gt_tlv_ml"] == pytest.approx(8 * 0.003) and v.loc[0, "pred_tlv_ml"] == pytest.approx(0.036)
    les = pd.read_csv(tmp_path / "l.tsv", sep="\t")
    assert les[["participant_id", "session", "kind"]].values.tolist() == [
        ["sub-001", "ses-w048", "gt"], ["sub-001", "ses-w048", "pred"]]


def test_run_visit_rejects_mismatched_geometry_naming_both_files(tmp_path):
    m = block((8, 12, 12), slice(0, 2), slice(0, 2), slice(0, 2))
    gp, pp = _write_masks(tmp_path, m, m, pred_spacing=(1.0, 1.0, 2.0))
    with pytest.raises(InputError) as exc:
        F.run_visit(gp, pp, tmp_path / "v.tsv", tmp_path / "l.tsv", "sub-001", "ses-w000")
    assert str(gp) in str(exc.value) and str(pp) in str(exc.value)
    assert not (tmp_path / "v.tsv").exists() and not (tmp_path / "l.tsv").exists()


def test_run_visit_rejects_a_probability_map(tmp_path):
    gp = tmp_path / "gt.nii.gz"
    write_image(gp, np.zeros((4, 5, 6), np.uint8))
    pp = tmp_path / "prob.nii.gz"
    write_image(pp, np.full((4, 5, 6), 0.4, np.float32))
    with pytest.raises(InputError, match="prob.nii.gz: not a binary"):
        F.run_visit(gp, pp, tmp_path / "v.tsv", tmp_path / "l.tsv", "sub-001", "ses-w000")


def _dataset(tmp_path, n_visits=6, **params):
    rng = np.random.default_rng(7)
    vt, lt = [], []
    for i in range(n_visits):
        sub, ses = f"sub-{i // 2 + 1:03d}", f"ses-w{24 * (i % 2):03d}"
        gt, pred = BENCH.make_visit(shape=(10, 40, 40), n_lesions=int(rng.integers(3, 15)), seed=i)
        d = tmp_path / sub / ses
        d.mkdir(parents=True)
        gp, pp = _write_masks(d, gt, pred)
        vt.append(d / "visit.tsv")
        lt.append(d / "lesions.tsv")
        F.run_visit(gp, pp, vt[-1], lt[-1], sub, ses, **params)
    return vt, lt


def test_run_dataset_writes_every_table_and_figure(tmp_path):
    vt, lt = _dataset(tmp_path)
    # an empty-prediction visit: its LPPV/LFPR are NaN and must be counted, not averaged
    e = empty((10, 40, 40))
    g = block((10, 40, 40), slice(0, 2), slice(0, 3), slice(0, 3))
    # and a visit with both masks empty: a header-only lesion table
    for sub, gt in (("sub-009", g), ("sub-010", e)):
        d = tmp_path / sub / "ses-w000"
        d.mkdir(parents=True)
        gp, pp = _write_masks(d, gt, e)
        F.run_visit(gp, pp, d / "visit.tsv", d / "lesions.tsv", sub, "ses-w000")
        vt.append(d / "visit.tsv")
        lt.append(d / "lesions.tsv")
    assert len(pd.read_csv(lt[-1], sep="\t")) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = F.run_dataset(vt, lt, tmp_path / "out", source="classical", trial="A", isbi_score=True)
    assert set(out) == set(F.DATASET_OUTPUTS) and all(p.is_file() for p in out.values())
    visits = pd.read_csv(out["visits"], sep="\t")
    assert len(visits) == 8 and (visits["source"] == "classical").all() and (visits["trial"] == "A").all()
    assert visits["week"].tolist() == [0, 24, 0, 24, 0, 24, 0, 0]
    t2 = pd.read_csv(out["table2"], sep="\t").set_index("metric")
    assert t2.loc["DC", "mean"] == pytest.approx(visits["dc"].mean())
    assert (t2.loc["DC", "n"], t2.loc["DC", "n_nan"]) == (7, 1)
    assert (t2.loc["LPPV", "n"], t2.loc["LPPV", "n_nan"]) == (6, 2)
    assert not visits["isbi_score"].iloc[:6].isna().any()
    corr = pd.read_csv(out["correlation"], sep="\t").set_index("measure")
    assert corr.loc["TLV (mL)", "r"] == pytest.approx(np.corrcoef(visits["gt_tlv_ml"], visits["pred_tlv_ml"])[0, 1])
    groups = pd.read_csv(out["size_groups"], sep="\t")
    lesions = pd.read_csv(out["lesions"], sep="\t")
    assert groups["n_gt"].sum() == (lesions["kind"] == "gt").sum() == visits["gt_tlc"].sum()
    assert groups["size_group"].tolist() == ["3-10", "11-50", "51-100", ">100"]
    assert (groups["n_visits"] == 8).all()


def test_run_dataset_refuses_mixed_parameters_and_duplicates(tmp_path):
    vt, lt = _dataset(tmp_path / "a", n_visits=2)
    vt2, lt2 = _dataset(tmp_path / "b", n_visits=2, connectivity=6)
    with pytest.raises(InputError, match="connectivity"):
        F.run_dataset(vt[:1] + vt2[1:], lt[:1] + lt2[1:], tmp_path / "out", source="classical", trial="A")
    with pytest.raises(InputError, match="sub-001 ses-w000: visit given more than once"):
        F.run_dataset(vt + vt[:1], lt + lt[:1], tmp_path / "out", source="classical", trial="A")
    bad = tmp_path / "bad.tsv"
    pd.read_csv(vt[0], sep="\t").drop(columns=["dc", "overlap"]).to_csv(bad, sep="\t", index=False)
    with pytest.raises(InputError, match=r"bad.tsv: missing columns \['dc', 'overlap'\]"):
        F.run_dataset([bad], lt[:1], tmp_path / "out", source="classical", trial="A")
    assert not (tmp_path / "out").exists()


def test_metrics_stage_never_imports_a_deep_learning_framework():
    code = ("import sys, t2lesion.evaluation.files, t2lesion.classical, t2lesion.plots.segmentation_figs; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_per_visit_jobs_load_neither_scipy_stats_nor_matplotlib():
    """What rules metrics_visit and segment_classical import: scipy.stats comes with the first
    pearson_ci call (1.3 CPU-s of each job's start-up otherwise), matplotlib with the figures."""
    code = ("import sys, t2lesion.logs, t2lesion.classical, t2lesion.evaluation.files, t2lesion.tracking; "
            "print([m for m in ('scipy.stats', 'matplotlib') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("clean", [False, True])
def test_lesion_load_needs_no_gt_and_equals_the_gt_comparison(clean, tmp_path):
    """The per-visit volume table (every source, every visit) and Table 2 use one definition."""
    from t2lesion.evaluation.files import run_volume
    from t2lesion.evaluation.segmentation import evaluate_visit, lesion_load

    rng = np.random.default_rng(4)
    gt = rng.random((12, 30, 30)) > 0.93
    pred = rng.random((12, 30, 30)) > 0.95
    row, _ = evaluate_visit(gt, pred, 0.003, clean_voxel_metrics=clean)
    for side, mask in (("gt", gt), ("pred", pred)):
        load = lesion_load(mask, 0.003, clean_voxel_metrics=clean)
        assert load["tlv_ml"] == pytest.approx(row[f"{side}_tlv_ml"]) and load["tlc"] == row[f"{side}_tlc"]
    assert lesion_load(np.zeros((4, 4, 4), bool), 0.003) == {"tlv_ml": 0.0, "tlc": 0, "voxels": 0}
    # a 2-voxel speck is no lesion, but its voxels count in TLV unless clean_voxel_metrics
    speck = np.zeros((4, 4, 4), bool)
    speck[1, 1, 1:3] = True
    assert lesion_load(speck, 1.0) == {"tlv_ml": 2.0, "tlc": 0, "voxels": 2}
    assert lesion_load(speck, 1.0, clean_voxel_metrics=True)["tlv_ml"] == 0.0

    import SimpleITK as sitk

    img = sitk.GetImageFromArray(pred.astype(np.uint8))
    img.SetSpacing((1.0, 1.0, 3.0))
    sitk.WriteImage(img, str(tmp_path / "pred.nii.gz"))
    out = run_volume(tmp_path / "pred.nii.gz", tmp_path / "v.tsv", "sub-001", "ses-w024", clean_voxel_metrics=clean)
    table = pd.read_csv(tmp_path / "v.tsv", sep="\t")
    assert len(table) == 1 and table["participant_id"][0] == out["participant_id"] == "sub-001"
    assert table["week"][0] == 24 and table["tlc"][0] == row["pred_tlc"]
    assert table["tlv_ml"][0] == pytest.approx(row["pred_tlv_ml"])


def test_run_compare_puts_every_source_side_by_side(tmp_path):
    vt, lt = _dataset(tmp_path / "a", n_visits=4)
    dirs = {}
    for source in ("classical", "unet"):
        F.run_dataset(vt, lt, tmp_path / source, source=source, trial="A")
        dirs[source] = tmp_path / source
    out = tmp_path / "cmp"
    t2 = F.run_compare(dirs, out / "table2.tsv", out / "size_groups.png", out / "tlv.png", trial="A")
    back = pd.read_csv(out / "table2.tsv", sep="\t")
    assert back["source"].tolist() == t2["source"].tolist()
    assert list(dict.fromkeys(back["source"])) == ["classical", "unet"]
    per_source = [pd.read_csv(dirs[s] / "table2.tsv", sep="\t") for s in dirs]
    pd.testing.assert_frame_equal(back, pd.concat(per_source, ignore_index=True))
    assert (out / "size_groups.png").stat().st_size > 1000 and (out / "tlv.png").stat().st_size > 1000


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_connectivity_structure_labels_as_cc3d_does(connectivity):
    """The SciPy element that alpha_map and the change check dilate or label with gives cc3d's
    components (the pipeline's lesions) on a speckled mask with every kind of contact."""
    import cc3d
    from scipy import ndimage

    m = np.random.default_rng(connectivity).random((12, 14, 16)) < 0.3
    labels, n = ndimage.label(m, structure=S.connectivity_structure(connectivity))
    ref = cc3d.connected_components(m, connectivity=connectivity)
    assert n == ref.max() > 1
    pairs = set(zip(labels[m].tolist(), ref[m].tolist()))
    assert len(pairs) == n  # the same partition of the voxels
    with pytest.raises(ValueError, match="6, 18 or 26"):
        S.connectivity_structure(8)
