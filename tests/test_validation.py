"""The validation study's analyses (t2lesion.validation, docs/DESIGN.md §15) on known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from t2lesion.validation import agreement, detection, document, uncertainty

# --------------------------------------------------------------------------- agreement

#: Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges.
SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])


def test_icc_shrout_fleiss_published_values():
    r = agreement.icc(SHROUT_FLEISS)
    assert round(r["icc21"], 2) == 0.29
    assert round(r["icc31"], 2) == 0.71
    # the mean squares of their Table 3: BMS 11.24, JMS 32.49, EMS 1.02
    assert (round(r["bms"], 2), round(r["jms"], 2), round(r["ems"], 2)) == (11.24, 32.49, 1.02)
    # the F-distribution intervals (the values R's psych::ICC prints for this table)
    assert r["icc21_ci_low"] == pytest.approx(0.019, abs=0.001)
    assert r["icc21_ci_high"] == pytest.approx(0.76, abs=0.005)
    assert r["icc31_ci_low"] == pytest.approx(0.342, abs=0.001)
    assert r["icc31_ci_high"] == pytest.approx(0.95, abs=0.005)
    assert r["icc21_ci_low"] < r["icc21"] < r["icc21_ci_high"]
    wider = agreement.icc(SHROUT_FLEISS, confidence=0.99)
    assert wider["icc31_ci_low"] < r["icc31_ci_low"] and wider["icc31_ci_high"] > r["icc31_ci_high"]


def test_identical_raters_agree_fully_and_an_offset_costs_absolute_agreement_only():
    gt = np.array([1.0, 2.5, 4.0, 7.0, 3.0])
    same = agreement.tlv_agreement(gt, gt.copy())
    assert same["icc21"] == 1 and same["icc31"] == 1
    assert same["bias"] == 0 and same["sd_diff"] == 0 and same["bias_pct_gt"] == 0
    shifted = agreement.tlv_agreement(gt, gt + 1.0)
    assert shifted["icc31"] == pytest.approx(1.0)
    assert shifted["icc21"] < 0.95
    assert shifted["bias"] == pytest.approx(1.0) and shifted["loa_low"] == pytest.approx(1.0)


def test_bland_altman_percent_by_hand():
    ba = agreement.bland_altman_pct([10, 20, 30, np.nan], [11, 22, 33, 5])
    assert ba["n"] == 3 and ba["bias"] == pytest.approx(2.0)
    assert ba["bias_pct_gt"] == pytest.approx(10.0)  # 2 mL of a mean GT TLV of 20 mL
    assert ba["pct_bias"] == pytest.approx(100 / 10.5)  # every pair differs by 1/10.5 of its mean
    assert ba["pct_sd"] == pytest.approx(0.0, abs=1e-12)
    assert ba["sd_diff"] == pytest.approx(1.0)
    assert ba["loa_high"] == pytest.approx(2 + 1.96)
    zero = agreement.bland_altman_pct([0, 10], [0, 12])
    assert zero["n_pct_undefined"] == 1 and zero["pct_bias"] == pytest.approx(100 * 2 / 11)


def test_agreement_table_pairs_visits_with_gt():
    rows = []
    for i, (g, u, c) in enumerate([(10, 11, 5), (20, 21, 15), (30, 31, 40)]):
        for src, v in (("gt", g), ("unet", u), ("classical", c)):
            rows.append({"participant_id": f"s{i}", "session": "ses-01", "source": src, "tlv_ml": v})
    rows.append({"participant_id": "s9", "session": "ses-01", "source": "unet", "tlv_ml": 99})  # no GT: unpaired
    t = agreement.tlv_agreement_table(pd.DataFrame(rows))
    assert list(t.columns) == agreement.AGREEMENT_COLUMNS
    assert list(t["source"]) == ["unet", "classical"]
    u = t.set_index("source").loc["unet"]
    assert u["n"] == 3 and u["bias"] == pytest.approx(1.0) and u["bias_pct_gt"] == pytest.approx(5.0)
    with pytest.raises(ValueError, match="'gt'"):
        agreement.tlv_agreement_table(pd.DataFrame(rows[1:3]))


def test_icc_undefined_cases():
    assert math.isnan(agreement.icc([[1.0, 1.0]])["icc21"])  # one target
    assert math.isnan(agreement.icc([[2.0, 2.0], [2.0, 2.0]])["icc31"])  # no variance at all
    with pytest.raises(ValueError, match="2-D"):
        agreement.icc([1.0, 2.0])


# --------------------------------------------------------------------------- uncertainty


def test_auroc_known_answers():
    err = np.array([0, 0, 1, 1, 0, 1, 0, 0], bool)
    assert uncertainty.auroc(err.astype(float), err) == 1.0
    assert uncertainty.auroc(-err.astype(float), err) == 0.0
    assert uncertainty.auroc(np.full(err.size, 0.3), err) == 0.5
    # by hand: positives {0.35, 0.8} vs negatives {0.1, 0.4}: 3 of 4 pairs ordered
    assert uncertainty.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # a tie counts one half: positives {0.5, 0.9} vs negatives {0.5, 0.2}: (0.5 + 1 + 1 + 1) / 4
    assert uncertainty.auroc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == pytest.approx(0.875)
    assert math.isnan(uncertainty.auroc([0.1, 0.2], [0, 0]))
    with pytest.raises(ValueError, match="NaN"):
        uncertainty.auroc([np.nan, 1.0], [0, 1])


def test_auroc_matches_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 300).astype(float)  # many ties
    y = rng.random(300) < 0.3
    assert uncertainty.auroc(s, y) == pytest.approx(sklearn_metrics.roc_auc_score(y, s))


def test_voxel_errors_only_inside_the_brain():
    gt = np.zeros((1, 2, 4), bool)
    gt[0, 0, :2] = True
    pred = gt.copy()
    pred[0, 1, 0] = True  # a false positive
    pred[0, 0, 1] = False  # a false negative
    pred[0, 1, 3] = True  # an error outside the brain
    brain = np.ones_like(gt)
    brain[0, 1, 3] = False
    mi = (gt != pred).astype(float)
    mi[0, 1, 3] = 0.0  # would make the AUROC < 1 if it counted
    v = uncertainty.visit_uncertainty(mi, pred, gt, brain)
    assert (v["n_brain"], v["n_errors"], v["n_fp"], v["n_fn"]) == (7, 2, 1, 1)
    assert v["auroc"] == 1.0 and uncertainty.voxel_error_auroc(mi, pred, gt, brain) == 1.0
    assert v["mean_mi_errors"] == 1.0 and v["mean_mi_correct"] == 0.0
    assert uncertainty.voxel_error_auroc(mi, pred, gt) < 1.0  # without the brain mask it counts
    with pytest.raises(ValueError, match="shape"):
        uncertainty.visit_uncertainty(mi[..., :2], pred, gt, brain)


def test_dice_against_mean_uncertainty():
    r = uncertainty.dice_vs_uncertainty([0.9, 0.8, 0.5, 0.3, np.nan], [0.01, 0.02, 0.05, 0.3, 0.1])
    assert r["n"] == 4 and r["rho"] == pytest.approx(-1.0)
    assert math.isnan(uncertainty.dice_vs_uncertainty([0.9, 0.8], [0.1, 0.2])["rho"])
    visits = pd.DataFrame({"auroc": [0.9, 0.7, np.nan], "mean_mi": [0.1, 0.2, 0.3], "n_errors": [5, 3, 0],
                           "dc": [0.8, 0.7, 0.6]})
    s = uncertainty.uncertainty_summary(visits).iloc[0]
    assert s["n_auroc"] == 2 and s["n_auroc_nan"] == 1 and s["auroc_mean"] == pytest.approx(0.8)
    assert s["spearman_rho"] == pytest.approx(-1.0)


# --------------------------------------------------------------------------- detection


def _lesion_masks():
    """Hand-placed GT and predicted new lesions in one slice (rows apart, so no two touch)."""
    g = np.zeros((1, 40, 40), bool)
    p = np.zeros_like(g)
    g[0, 1, 1:5] = True  # A: 4 voxels, [3,10)
    p[0, 1, 4:9] = True  # P1: 5 voxels, shares one voxel with A
    g[0, 5:7, 1:7] = True  # B: 12 voxels, [10,50)
    p[0, 5:7, 1:7] = True  # P2 = B
    g[0, 10:13, 1:6] = True  # C: 15 voxels, [10,50)
    p[0, 10, 1:3] = True  # P4: 2 voxels inside C, below the floor
    g[0, 15, 1:3] = True  # D: 2 voxels, below the floor
    g[0, 20:26, 1:11] = True  # E: 60 voxels, [50,inf), missed
    p[0, 30:34, 20:25] = True  # P3: 20 voxels, a false positive
    return g, p


def test_detection_counts_by_size_bin():
    g, p = _lesion_masks()
    rows = detection.detect_visit(g, p).set_index("bin")
    assert list(rows.index) == ["all", "[3,10)", "[10,50)", "[50,inf)"]
    counts = rows[detection.COUNT_COLUMNS].to_numpy().tolist()
    assert counts == [[4, 2, 3, 2], [1, 1, 1, 1], [2, 1, 2, 1], [1, 0, 0, 0]]
    # the floor: with min_size 1, D and the speck P4 count, and P4 finds C
    floor1 = detection.detect_visit(g, p, min_size=1).set_index("bin")
    assert floor1.loc["all", detection.COUNT_COLUMNS].tolist() == [5, 3, 4, 3]
    # a coverage threshold: A (1 of 4 voxels covered) and P1 (1 of 5) no longer match at 0.5
    half = detection.detect_visit(g, p, overlap=0.5).set_index("bin")
    assert half.loc["[3,10)", detection.COUNT_COLUMNS].tolist() == [1, 0, 1, 0]


def test_detection_table_pools_visits_and_target_bins():
    g, p = _lesion_masks()
    empty = np.zeros_like(g)
    visits = pd.concat([detection.detect_visit(g, p).assign(source="unet"),
                        detection.detect_visit(empty, p).assign(source="unet")], ignore_index=True)
    t = detection.detection_table(visits)
    assert list(t.columns) == detection.TABLE_COLUMNS
    a = t.set_index("bin").loc["all"]
    assert (a["n_gt"], a["n_gt_detected"], a["n_pred"], a["n_pred_tp"], a["n_visits"]) == (4, 2, 6, 2, 2)
    assert a["sensitivity"] == pytest.approx(0.5) and a["precision"] == pytest.approx(1 / 3)
    one = detection.detection_table(visits.iloc[:4])
    big = detection.pooled(one, "unet", 10)  # [10,50) and [50,inf): GT 1 of 3, predicted 1 of 2
    assert big["sensitivity"] == pytest.approx(1 / 3) and big["precision"] == pytest.approx(0.5)
    assert big["f1"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="cover"):
        detection.pooled(one, "unet", 20)


def test_rates_and_bins_edge_cases():
    assert detection.rates(0, 0, 0, 0)["f1"] != detection.rates(0, 0, 0, 0)["f1"]  # NaN
    assert detection.rates(2, 0, 3, 0)["f1"] == 0.0
    assert detection.check_bins([[3, 10], [10, None]]) == ((3, 10), (10, None))
    for bad in ([(3, 10), (5, 20)], [(3, None), (10, 20)], [(10, 3)], [(0, 3)], ["x"]):
        with pytest.raises(ValueError, match="size bin"):
            detection.check_bins(bad)


# --------------------------------------------------------------------------- document


def _write(folder, name, rows):
    pd.DataFrame(rows).to_csv(folder / name, sep="\t", index=False, na_rep="n/a")


@pytest.fixture
def validation_folder(tmp_path):
    d = tmp_path / "validation"
    d.mkdir()
    _write(d, "table2.tsv", [
        {"source": s, "trial": "t", "block": "segmentation", "metric": "DC", "column": "dc", "mean": m, "sd": 0.1,
         "n": 10, "n_nan": 0, "summary": ""} for s, m in (("classical", 0.72), ("unet", 0.80))])
    _write(d, "tlv_agreement.tsv", [{"source": "unet", "n": 10, "icc21": 0.9, "icc21_ci_low": 0.8,
                                     "icc21_ci_high": 0.95, "icc31": 0.92, "icc31_ci_low": 0.85,
                                     "icc31_ci_high": 0.97, "bias": 0.2, "loa_low": -1, "loa_high": 1.4,
                                     "bias_pct_gt": 4.0, "pct_loa_low": -8, "pct_loa_high": 16}])
    an = []
    for src, w, est, lo, hi, p in (("gt", 24, -10, -20, 0, 0.04), ("unet", 24, -12, -22, -2, 0.03),
                                   ("gt", 48, -15, -25, -5, 0.01), ("unet", 48, -3, -13, 7, 0.2)):
        an.append({"source": src, "week": w, "term": "arm_B", "term_type": "arm", "estimate": est, "ci_low": lo,
                   "ci_high": hi, "p": p})
        an.append({"source": src, "week": w, "term": "baseline_tlv_ml", "term_type": "covariate", "estimate": 1,
                   "ci_low": 0, "ci_high": 2, "p": 0.5})
    _write(d, "ancova.tsv", an)
    g, p = _lesion_masks()
    det = detection.detection_table(detection.detect_visit(g, p).assign(source="unet"))
    det.to_csv(d / "new_lesion_detection.tsv", sep="\t", index=False, na_rep="n/a")
    (d / "fig_b.png").write_bytes(b"png")
    (d / "fig_a.png").write_bytes(b"png")
    return d


def test_document_verdicts(validation_folder):
    rows = {r["target"]: r for r in document.evaluate_targets(document.read_tables(validation_folder))}
    dc = rows["unet DC ≥ 0.750"]
    assert dc["met"] is True and dc["verdict"] == "met (margin 0.0500)"
    over = rows["unet DC ≥ classical DC + 0.100"]
    assert over["met"] is False and over["verdict"] == "missed by 0.0200"
    tlv = rows["unet TLV bias within ±10.0 % of GT TLV"]
    assert tlv["met"] is True and tlv["verdict"] == "met (margin 6.00)"
    w24 = [r for t, r in rows.items() if "week 24" in t][0]
    assert w24["met"] is True and w24["verdict"] == "met (margin 8.00)"
    w48 = [r for t, r in rows.items() if "week 48" in t][0]
    assert w48["met"] is False and "differs from GT's" in w48["verdict"] and "outside the CI by 2.00" in w48["verdict"]
    f1 = rows["unet new-lesion F1 ≥ 0.600 (lesions ≥ 10 voxels)"]
    assert f1["met"] is False and f1["verdict"] == "missed by 0.200"


def test_document_text_is_reproducible(validation_folder, tmp_path):
    out = tmp_path / "docs" / "VALIDATION.md"
    text = document.write_document(validation_folder, out, commit="abc1234", config="configs/validation.yaml")
    assert out.read_text(encoding="utf-8") == text
    assert document.build_document(validation_folder, commit="abc1234", config="configs/validation.yaml") == text
    assert "`abc1234`" in text and "`configs/validation.yaml`" in text
    assert "| unet DC ≥ 0.750 | 0.800 | ≥ 0.750 | met (margin 0.0500) |" in text
    assert "3 met, 3 missed, 0 not evaluated." in text
    assert text.index("validation/fig_a.png") < text.index("validation/fig_b.png")
    assert "Not available: no cox.tsv" in text and "baseline_tlv_ml" not in text
    # a missing table leaves its targets not evaluated, named
    (validation_folder / "tlv_agreement.tsv").unlink()
    again = document.build_document(validation_folder, commit="abc1234", config="c")
    assert "not evaluated: no tlv_agreement.tsv" in again


def test_document_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        document.build_document(tmp_path / "nope", commit="x", config="y")
    _write(tmp_path, "table2.tsv", [{"source": "unet", "mean": 0.8}])
    with pytest.raises(ValueError, match=r"table2.tsv: missing column\(s\) \['column'\]"):
        document.build_document(tmp_path, commit="x", config="y")
