"""Does each source follow the truth's lesion-volume change (t2lesion.validation.change_response):
known answers on hand-built masks, truth tables and visits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from t2lesion.errors import InputError
from t2lesion.validation.change_response import (
    lesion_changes, response_table, run_change_response, visit_lesions,
)

SPACING = (3.0, 1.0, 1.0)  # z, y, x mm


def _gt(a_len: int) -> np.ndarray:
    """GT of one visit: lesion A (1 slice x 2 rows x ``a_len`` columns, alone) and a confluent
    component B that holds two truth lesions."""
    gt = np.zeros((5, 20, 30), np.uint8)
    gt[2, 3:5, 3:3 + a_len] = 1  # A
    gt[2, 12:14, 3:15] = 1  # B
    return gt


def _truth(session: str, nominal_a: float) -> pd.DataFrame:
    return pd.DataFrame({"participant_id": "sub-001", "session": session, "lesion_id": [1, 2, 3, 4],
                         "nominal_volume_ml": [nominal_a * 0.003, 0.036, 0.036, 0.01]})


CENTRES = np.array([[2, 3.5, 5.0], [2, 12.5, 5.0], [2, 13.0, 12.0], [4, 19.0, 29.0]])  # A; B twice; nowhere


def test_visit_lesions_measures_the_component_and_its_shell_only_for_lone_lesions():
    gt = _gt(6)
    src = gt.copy()
    src[2, 5, 3:9] = 1  # six voxels of A's shell (the row below it)
    src[2, 3:5, 9] = 1  # two more, beside A's end
    src[0, 0, 0] = 1  # far from any lesion: not counted
    les = visit_lesions(_truth("ses-w000", 12), gt, {"unet": src > 0}, CENTRES, SPACING).set_index("lesion_id")
    assert les["shared"].tolist() == [1, 2, 2, 0]
    assert les.loc[1, "gt"] == 12 and les.loc[1, "unet"] == 12 + 6 + 2
    assert les.loc[[2, 3, 4], ["gt", "unet"]].isna().all().all()  # confluent or not found: no volumes


def test_changes_and_the_response_table_against_hand_counts():
    rows = []
    # participant 1 (PLA): A shrinks 12 -> 8 voxels nominal, GT 12 -> 8, the source 16 -> 15
    # participant 2 (OCR): its lesion grows 10 -> 20 nominal, GT 10 -> 19, the source 12 -> 20;
    #                      another stays at 30, GT 30 -> 29, the source 33 -> 33
    for pid, arm, lid, ses, nominal, gt, src in [
        ("sub-001", "PLA", 1, "ses-w000", 12, 12, 16), ("sub-001", "PLA", 1, "ses-w024", 8, 8, 15),
        ("sub-002", "OCR", 1, "ses-w000", 10, 10, 12), ("sub-002", "OCR", 1, "ses-w024", 20, 19, 20),
        ("sub-002", "OCR", 2, "ses-w000", 30, 30, 33), ("sub-002", "OCR", 2, "ses-w024", 30, 29, 33),
        ("sub-002", "OCR", 3, "ses-w024", 9, 9, 9),  # new at week 24: no baseline, left out
    ]:
        rows.append({"participant_id": pid, "arm": arm, "session": ses, "lesion_id": lid, "nominal_voxels": nominal,
                     "shared": 1, "gt": gt, "unet": src})
    rows.append({**rows[0], "lesion_id": 9, "shared": 2, "gt": np.nan, "unet": np.nan})  # confluent: left out
    ch = lesion_changes(pd.DataFrame(rows), ["unet"]).set_index(["participant_id", "lesion_id"])
    assert len(ch) == 3 and set(ch["week"]) == {24}
    assert ch.loc[("sub-001", 1), ["nominal_voxels", "gt", "unet", "class"]].tolist() == [-4, -4, -1, "shrinking"]
    assert ch.loc[("sub-001", 1), "relative"] == pytest.approx(-4 / 12)
    assert ch.loc[("sub-002", 1), "class"] == "growing" and ch.loc[("sub-002", 2), "class"] == "unchanged"
    t = response_table(ch.reset_index(), ["unet"], voxel_ml=0.003, min_ratio_voxels=1).set_index(["arm", "class"])
    assert t.loc[("PLA", "shrinking"), "over_gt"] == pytest.approx(1 / 4)
    assert t.loc[("PLA", "shrinking"), "excess_ml_mean"] == pytest.approx(3 * 0.003)
    assert t.loc[("OCR", "growing"), ["gt_voxels", "source_voxels", "over_gt"]].tolist() == pytest.approx([9, 8, 8 / 9])
    # OCR all: GT +9 - 1 = +8, the source +8 + 0 = +8; one participant, no standard error
    assert t.loc[("OCR", "all"), ["n_lesions", "n_participants", "over_gt"]].tolist() == [2, 1, 1.0]
    assert np.isnan(t.loc[("OCR", "all"), "excess_ml_se"])
    assert t.loc[("OCR", "unchanged"), ["gt_voxels", "source_voxels", "over_gt"]].tolist() == [-1, 0, 0]
    default = response_table(ch.reset_index(), ["unet"], voxel_ml=0.003).set_index(["arm", "class"])
    assert default["over_gt"].isna().all()  # every GT change here is under the default 50 voxels


def _write(arr, path, spacing=(1.0, 1.0, 3.0)):
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))


def test_path_entry_point_over_two_visits(tmp_path):
    truth = pd.concat([_truth("w000", 12), _truth("w024", 8)], ignore_index=True)
    for lid, (z, y, x) in zip([1, 2, 3, 4], CENTRES):  # native points = the grid's physical points
        truth.loc[truth["lesion_id"] == lid, ["x_native", "y_native", "z_native"]] = [x, y, 3.0 * z]
    tpath, ppath, xpath = tmp_path / "lesions.tsv", tmp_path / "participants.tsv", tmp_path / "xfm.tfm"
    truth.to_csv(tpath, sep="\t", index=False)
    pd.DataFrame({"participant_id": ["sub-001"], "arm": ["PLA"]}).to_csv(ppath, sep="\t", index=False)
    sitk.WriteTransform(sitk.Euler3DTransform(), str(xpath))
    visits = []
    # A shrinks from 6 to 4 columns; the source from 6 to 5 (one column of A's shell kept)
    for ses, a_len, src_len in (("ses-w000", 6, 6), ("ses-w024", 4, 5)):
        gt = _gt(a_len)
        src = gt.copy()
        src[2, 3:5, 3:3 + src_len] = 1
        _write(gt, tmp_path / f"{ses}_gt.nii.gz")
        _write(src, tmp_path / f"{ses}_unet.nii.gz")
        visits.append({"participant_id": "sub-001", "session": ses, "xfm": str(xpath),
                       "masks": {"gt": str(tmp_path / f"{ses}_gt.nii.gz"), "unet": str(tmp_path / f"{ses}_unet.nii.gz")}})
    out_l, out_t = tmp_path / "l.tsv", tmp_path / "t.tsv"
    table = run_change_response(tpath, ppath, visits, out_l, out_t).set_index("class")
    assert table.loc["shrinking", ["n_lesions", "nominal_voxels", "gt_voxels", "source_voxels"]].tolist() == \
        pytest.approx([1, -4, -4, -2])
    assert pd.read_csv(out_l, sep="\t")["shared"].tolist() == [1, 2, 2, 0] * 2 and out_t.is_file()
    pd.DataFrame({"participant_id": ["sub-009"], "arm": ["PLA"]}).to_csv(ppath, sep="\t", index=False)
    with pytest.raises(InputError, match="no row for sub-001"):
        run_change_response(tpath, ppath, visits, out_l, out_t)
    truth.drop(columns="x_native").to_csv(tpath, sep="\t", index=False)
    with pytest.raises(InputError, match=r"lacks column\(s\) \['x_native'\]"):
        run_change_response(tpath, ppath, visits, out_l, out_t)
