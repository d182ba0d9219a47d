"""The U-Net's decision threshold (t2lesion.unet.threshold, docs/DESIGN.md §6, §7): each fold's
choice on its held-out visits, the curve files, and the threshold inference applies."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from t2lesion.errors import InputError
from t2lesion.unet import threshold as T

GRID = list(T.THRESHOLD_GRID)


def test_the_grid_runs_from_0_30_to_0_95_in_steps_of_0_05_then_to_0_99_in_steps_of_0_01():
    assert GRID[0] == 0.3 and GRID[-1] == 0.99 and len(GRID) == 18 and 0.5 in GRID and 0.8 in GRID
    assert np.allclose(np.diff(GRID[:14]), 0.05) and np.allclose(np.diff(GRID[13:]), 0.01)


def test_a_curve_still_rising_at_the_grid_top_is_flagged(tmp_path):
    rising = {"a": np.linspace(0.4, 0.7, len(GRID)), "b": np.linspace(0.5, 0.8, len(GRID))}
    outputs = {"threshold": tmp_path / "t.json", "curve": tmp_path / "c.tsv"}
    info = T.write_calibration(T.threshold_curve(rising, GRID), outputs, fold=2)
    assert info["best_threshold"] == 0.99 and info["best_at_grid_top"] is True
    peaked = {"a": -(np.array(GRID) - 0.7) ** 2, "b": -(np.array(GRID) - 0.7) ** 2 + 0.1}
    info = T.write_calibration(T.threshold_curve(peaked, GRID), outputs, fold=2)
    assert info["best_threshold"] == 0.7 and info["best_at_grid_top"] is False


def test_dice_curve_cuts_inside_the_brain_and_is_nan_when_both_masks_are_empty():
    prob = np.zeros((2, 4, 4), np.float32)
    gt = np.zeros(prob.shape, bool)
    brain = np.ones(prob.shape, bool)
    prob[0, :2, :2] = 0.81  # 4 lesion voxels
    gt[0, :2, :2] = True
    prob[1, :2, :] = 0.6  # 8 false positives down to 0.6
    prob[1, 3, 3] = 0.99  # a false positive outside the brain: never counted
    brain[1, 3, 3] = False
    d = T.dice_curve(prob, gt, brain, [0.5, 0.6, 0.65, 0.8, 0.85])
    assert d[:2] == pytest.approx([2 * 4 / (4 + 12)] * 2)
    assert d[2:4] == pytest.approx([1.0, 1.0]) and d[4] == 0.0
    # GT outside the brain counts as missed (the mask is cut inside the brain, Table 2 uses the whole GT)
    gt[1, 3, 3] = True
    assert T.dice_curve(prob, gt, brain, [0.8])[0] == pytest.approx(2 * 4 / (5 + 4))
    assert math.isnan(T.dice_curve(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), np.ones((1, 2, 2)), [0.5])[0])
    with pytest.raises(ValueError, match="differ in shape"):
        T.dice_curve(prob, gt[0], brain)


def test_the_best_mean_dice_wins_and_ties_go_to_the_threshold_closest_to_0_5():
    d = np.zeros(len(GRID))
    d[GRID.index(0.8)] = 0.9
    assert T.choose_threshold(d) == (0.8, 0.9)
    flat = np.full(len(GRID), 0.7)
    assert T.choose_threshold(flat) == (0.5, 0.7)
    plateau = np.where(np.array(GRID) >= 0.6, 0.8, 0.2)  # 0.60 ... 0.99 equally good
    assert T.choose_threshold(plateau)[0] == 0.6
    low = np.where(np.array(GRID) <= 0.4, 0.8, 0.2)  # 0.30 ... 0.40
    assert T.choose_threshold(low)[0] == 0.4
    both = np.full(len(GRID), 0.1)
    both[GRID.index(0.45)] = both[GRID.index(0.55)] = 0.6  # equally far from 0.5: the lower
    assert T.choose_threshold(both)[0] == 0.45
    # NaN never wins; no defined Dice at all: the paper's 0.5
    nan = np.full(len(GRID), np.nan)
    nan[GRID.index(0.9)] = 0.1
    assert T.choose_threshold(nan) == (0.9, 0.1)
    t, best = T.choose_threshold(np.full(len(GRID), np.nan))
    assert t == 0.5 and math.isnan(best)
    with pytest.raises(ValueError, match=f"3 Dice values for {len(GRID)} thresholds"):
        T.choose_threshold([0.1, 0.2, 0.3])


# --------------------------------------------------------------------------- calibration of a fold


def _image(arr, path: Path) -> str:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 3.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return str(path)


def _visit(root: Path, vid: str, prob: np.ndarray, gt: np.ndarray, brain: np.ndarray) -> dict:
    """A preprocessed visit whose FLAIR is ``prob`` (the identity model's prediction)."""
    rng = np.random.default_rng(0)
    out = {"id": vid, "trial": "tr", "participant_id": vid.split("_")[0]}
    for name, arr in (("T2w", rng.normal(size=prob.shape)), ("FLAIR", prob), ("T1w", rng.normal(size=prob.shape))):
        out[name] = _image(arr.astype(np.float32), root / f"{vid}_desc-preproc_{name}.nii.gz")
    out["brain_mask"] = _image(brain.astype(np.uint8), root / f"{vid}_desc-brain_mask.nii.gz")
    out["gt"] = _image(gt.astype(np.uint8), root / f"{vid}_desc-lesionGT_mask.nii.gz")
    return out


def _known_visits(root: Path) -> list[dict]:
    """Visit 1: GT exactly where prob > 0.8 in the brain (lesion 0.81, a rim 0.775 just below it,
    background 0.1, and 0.95 in the brain's box but outside the brain, where inference never
    cuts): only 0.80 gives it exactly.
    Visit 2: no lesion and nothing above 0.3: its Dice is undefined everywhere."""
    shape = (10, 40, 40)
    brain = np.zeros(shape, bool)
    brain[1:9, 4:36, 4:36] = True
    brain[1:9, 4:10, 4:10] = False  # a corner of the box outside the brain
    prob = np.where(brain, 0.1, 0.0).astype(np.float32)
    prob[1:9, 4:10, 4:10] = 0.95
    prob[3:7, 15:27, 15:27] = 0.775
    prob[4:6, 18:24, 18:24] = 0.81
    gt = (prob > 0.8) & brain
    assert gt.sum() == 2 * 6 * 6
    v1 = _visit(root, "sub-01_ses-w000", prob, gt, brain)
    v2 = _visit(root, "sub-01_ses-w048", np.where(brain, 0.1, 0.0), np.zeros(shape, bool), brain)
    return [v1, v2]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    from tests.test_infer import identity_keras_model

    root = tmp_path_factory.mktemp("calibrate")
    visits = _known_visits(root)
    outputs = {k: str(root / "fold-1" / n) for k, n in
               (("threshold", "threshold.json"), ("curve", "threshold_curve.tsv"), ("plot", "threshold_curve.png"))}
    info = T.calibrate_fold(None, visits, 1, {"mc_samples": 2, "batch_size": 4, "threshold": "auto", "threads": 1},
                            seed=0, outputs=outputs, model=identity_keras_model((8, 16, 16)))
    return info, outputs, visits


def test_one_standard_error_rule_keeps_to_0_5_unless_the_gain_is_real():
    """Best mean Dice 0.80 at 0.9 with a standard error of 0.02 there: 0.7 (0.785) and 0.8
    (0.79) lie within it, 0.6 (0.77) does not, so 0.7 (closest to 0.5) is chosen; with an SE
    of 0.001 only the best qualifies; an undefined SE (one visit) leaves the plain maximum."""
    grid = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    d = [0.70, 0.77, 0.785, 0.79, 0.80, 0.795]
    assert T.choose_threshold(d, grid, se=[0.0, 0.0, 0.0, 0.0, 0.02, 0.0]) == (0.7, 0.785)
    assert T.choose_threshold(d, grid, se=[0.0] * 4 + [0.001, 0.0]) == (0.9, 0.80)
    assert T.choose_threshold(d, grid, se=[np.nan] * 6) == (0.9, 0.80)
    with pytest.raises(ValueError, match="standard errors"):
        T.choose_threshold(d, grid, se=[0.01])


def test_the_standard_error_is_over_the_visits_with_a_defined_dice():
    curve = T.threshold_curve({"a": [0.6, 0.8], "b": [0.8, np.nan], "c": [1.0, 0.7]}, grid=[0.5, 0.9])
    se = T.dice_se(curve)
    assert se[0] == pytest.approx(np.std([0.6, 0.8, 1.0], ddof=1) / np.sqrt(3))
    assert se[1] == pytest.approx(np.std([0.8, 0.7], ddof=1) / np.sqrt(2))
    assert np.isnan(T.dice_se(T.threshold_curve({"a": [0.6, 0.8]}, grid=[0.5, 0.9]))).all()


def test_a_fold_chooses_the_threshold_that_cuts_its_held_out_gt_exactly(calibrated):
    info, outputs, _ = calibrated
    assert info["threshold"] == 0.8 and info["mean_dice"] == pytest.approx(1.0)
    # one visit with a defined Dice: no standard error, the plain maximum
    assert info["rule"] == "one standard error" and info["se_at_best"] is None and info["best_threshold"] == 0.8
    assert info["best_at_grid_top"] is False
    assert json.loads(Path(outputs["threshold"]).read_text()) == info
    assert info["n_visits"] == 2 and info["grid"] == GRID and info["fold"] == 1 and info["mc_samples"] == 2
    # at 0.5 the rim (0.775) is predicted too: a 4 x 12 x 12 mask around the 72 lesion voxels
    assert info["mean_dice_at_0.5"] == pytest.approx(2 * 72 / (72 + 4 * 12 * 12), abs=1e-6)
    assert Path(outputs["plot"]).read_bytes()[:4] == b"\x89PNG"


def test_the_curve_file_has_every_threshold_the_mean_and_each_visit(calibrated):
    _, outputs, visits = calibrated
    curve = pd.read_csv(outputs["curve"], sep="\t", na_values=["n/a"])
    assert list(curve.columns) == ["threshold", "mean_dice", "n", visits[0]["id"], visits[1]["id"]]
    assert curve["threshold"].tolist() == pytest.approx(GRID)
    v1 = curve[visits[0]["id"]].to_numpy()
    assert v1[GRID.index(0.8)] == pytest.approx(1.0) and v1[GRID.index(0.85)] == 0.0
    assert (v1[: GRID.index(0.8)] < 1).all()
    # visit 2 has neither GT nor a mask at any threshold: undefined, left out of the mean
    assert curve[visits[1]["id"]].isna().all() and (curve["n"] == 1).all()
    np.testing.assert_allclose(curve["mean_dice"], v1, rtol=1e-5)


def test_a_fold_without_held_out_visits_is_an_error(tmp_path):
    with pytest.raises(InputError, match="fold 2: no held-out GT visit"):
        T.calibrate_fold(None, [], 2, {}, 0, {"threshold": str(tmp_path / "t.json"), "curve": str(tmp_path / "c")})


def test_the_fold_keeps_the_visits_of_its_own_participants(tmp_path):
    from t2lesion.unet.folds import write_folds
    from t2lesion.unet.stage import held_out_visits

    for trial, folds in (("a", [1, 2]), ("b", [2, 1])):
        write_folds(pd.DataFrame({"participant_id": ["sub-001", "sub-002"], "arm": ["PLA", "OCR"], "fold": folds}),
                    tmp_path / f"{trial}.tsv")
    visits = [{"trial": t, "participant_id": p, "id": f"{t}-{p}-{s}"} for t in "ab" for p in ("sub-001", "sub-002")
              for s in ("w000", "w048")]
    held = held_out_visits({"a": tmp_path / "a.tsv", "b": tmp_path / "b.tsv"}, visits, 1)
    assert [v["id"] for v in held] == ["a-sub-001-w000", "a-sub-001-w048", "b-sub-002-w000", "b-sub-002-w048"]


# --------------------------------------------------------------------------- the threshold inference applies


def _threshold_file(path: Path, t) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"threshold": t, "mean_dice": 0.7, "n_visits": 4, "grid": GRID}))
    return str(path)


def test_auto_is_the_mean_of_the_fold_thresholds(tmp_path):
    files = [_threshold_file(tmp_path / f"fold-{k}/threshold.json", t) for k, t in ((1, 0.8), (2, 0.7), (3, 0.9))]
    choice = T.resolve_threshold("auto", files, 3)
    assert choice.value == pytest.approx(0.8) and choice.rule == "auto" and choice.folds == (0.8, 0.7, 0.9)
    assert choice.line() == ("U-Net masks: probability >= 0.8 (threshold chosen on each fold's held-out visits, "
                             "mean of folds 0.80, 0.70, 0.90)")


def test_a_number_overrides_the_fold_thresholds(tmp_path):
    files = [_threshold_file(tmp_path / "fold-1/threshold.json", 0.8)]
    choice = T.resolve_threshold(0.5, files, 1)
    assert (choice.value, choice.rule) == (0.5, "fixed")
    assert choice.line() == "U-Net masks: probability >= 0.5 (fixed at 0.5 by inference.threshold)"
    with pytest.raises(InputError, match="inference.threshold: 1.5 is not in"):
        T.resolve_threshold(1.5, [], 1)


def test_models_without_threshold_files_fall_back_to_0_5(tmp_path):
    choice = T.resolve_threshold("auto", [], 2, tmp_path / "models")
    assert (choice.value, choice.rule) == (0.5, "fallback")
    assert f"the fold models in {tmp_path / 'models'} come without fold-<k>/threshold.json (0 of 2)" in choice.line()
    # one fold's file is not enough for a mean of the ensemble
    one = [_threshold_file(tmp_path / "fold-1/threshold.json", 0.8)]
    assert T.resolve_threshold("auto", one, 2).value == 0.5


@pytest.mark.parametrize("content, message", [
    ("{", "not a threshold file"),
    ('{"mean_dice": 0.7}', "not a threshold file"),
    ('{"threshold": 1.2}', "threshold 1.2 is not in"),
])
def test_a_bad_threshold_file_is_one_line_naming_it(tmp_path, content, message):
    path = tmp_path / "fold-1" / "threshold.json"
    path.parent.mkdir()
    path.write_text(content)
    with pytest.raises(InputError, match=message) as err:
        T.resolve_threshold("auto", [path], 1)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
