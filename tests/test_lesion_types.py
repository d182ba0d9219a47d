"""Which of the generator's lesions a mask finds, by contrast type and location
(t2lesion.validation.lesion_types): known answers on a hand-built grid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from t2lesion.errors import InputError
from t2lesion.validation.lesion_types import found_in, run_lesion_types, type_table


def _grid(a: np.ndarray, path) -> str:
    img = sitk.GetImageFromArray(a.astype(np.uint8))
    img.SetSpacing((1.0, 1.0, 3.0))
    sitk.WriteImage(img, str(path))
    return str(path)


def test_found_within_the_radius_and_only_real_components():
    m = np.zeros((4, 20, 20), np.uint8)
    m[1, 5, 5:8] = 1  # 3 voxels
    m[2, 15, 15:17] = 1  # 2 voxels: below the metrics' minimum, not a lesion
    idx = np.array([[1, 5, 6], [1, 6.4, 6], [1, 7, 6], [2, 15, 15.5]], float)
    assert found_in(m, idx, (3.0, 1.0, 1.0), radius_mm=1.5).tolist() == [True, True, False, False]
    assert found_in(m, idx, (3.0, 1.0, 1.0), radius_mm=1.5, min_size=1).tolist() == [True, True, False, True]
    assert found_in(m, idx, (3.0, 1.0, 1.0)).tolist() == [True, True, True, False]  # default: 3 mm, one slice


def test_run_lesion_types_by_contrast_and_location(tmp_path):
    gt = np.zeros((4, 20, 20), np.uint8)
    unet = np.zeros_like(gt)
    for z, y, x in ((1, 3, 3), (1, 10, 10), (2, 16, 4), (2, 4, 16)):
        gt[z, y - 1:y + 2, x - 1:x + 2] = 1
    unet[1, 2:5, 2:5] = 1  # finds the first lesion only
    unet[2, 15:18, 3:6] = 1  # and the third
    truth = pd.DataFrame({
        "participant_id": "sub-001", "session": "w000", "lesion_id": [1, 2, 3, 4, 5],
        "n_voxels": [9, 9, 9, 9, 2], "nominal_volume_ml": [0.027, 0.027, 0.03, 0.03, 0.006],
        "x_native": [3.0, 10.0, 4.0, 16.0, 1.0], "y_native": [3.0, 10.0, 16.0, 4.0, 1.0],
        "z_native": [3.0, 3.0, 6.0, 6.0, 0.0],
        "contrast_type": ["standard", "faint", "standard", "faint", "faint"],
        "location": ["white_matter", "white_matter", "juxtacortical", "juxtacortical", "white_matter"],
    })
    tpath, xpath = tmp_path / "lesions.tsv", tmp_path / "x.tfm"
    truth.to_csv(tpath, sep="\t", index=False)
    sitk.WriteTransform(sitk.Euler3DTransform(), str(xpath))
    visits = [{"participant_id": "sub-001", "session": "ses-w000", "xfm": str(xpath),
               "masks": {"gt": _grid(gt, tmp_path / "gt.nii.gz"), "unet": _grid(unet, tmp_path / "u.nii.gz")}}]
    t = run_lesion_types(tpath, visits, tmp_path / "les.tsv", tmp_path / "tab.tsv").set_index(
        ["group", "value", "source"])
    assert t.loc[("all", "all", "gt"), ["n", "n_found"]].tolist() == [4, 4]  # lesion 5 (2 voxels) left out
    assert t.loc[("all", "all", "unet"), "sensitivity"] == pytest.approx(0.5)
    assert t.loc[("contrast_type", "standard", "unet"), "n_found"] == 2
    assert t.loc[("contrast_type", "faint", "unet"), "n_found"] == 0
    assert t.loc[("location", "juxtacortical", "unet"), "sensitivity"] == pytest.approx(0.5)
    assert t.loc[("contrast_type", "faint", "unet"), "median_voxels"] == pytest.approx(9.5)
    with pytest.raises(InputError, match="lacks column"):
        truth.drop(columns="x_native").to_csv(tpath, sep="\t", index=False)
        run_lesion_types(tpath, visits, tmp_path / "l2.tsv", tmp_path / "t2.tsv")


def test_type_table_groups_absent_columns_are_skipped():
    les = pd.DataFrame({"found_a": [True, False], "nominal_voxels": [4.0, 6.0], "location": ["x", "y"]})
    t = type_table(les, ["a"])
    assert set(t["group"]) == {"all", "location"} and t[t["group"] == "all"]["n_found"].tolist() == [1]
