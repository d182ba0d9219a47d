"""The GT masks' new lesions against the generator's truth (t2lesion.validation.new_lesion_truth):
known answers on hand-built truth tables and QC maps."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from t2lesion.errors import InputError
from t2lesion.validation.new_lesion_truth import (
    choose_floor, enlarge_floor_table, floor_table, match_visit, native_to_grid, nearest_component, run_new_lesion_truth, size_table,
    truth_lesions,
)

V = 0.003  # mL per voxel


def _truth() -> pd.DataFrame:
    rows = [
        # id 1: unchanged 12 voxels nominal; native 12 then 20 (the grid makes it look enlarging)
        ("w000", 1, 12, 12, 0), ("w024", 1, 20, 12, 0),
        # id 2: onset at week 24, nominal 4 voxels, native 3
        ("w024", 2, 3, 4, 24),
        # id 3: existed from baseline but had no voxel there; 2 native voxels at week 24
        ("w024", 3, 2, 1.5, 0),
        # id 4: grows 10 -> 20 voxels nominal (enlarging)
        ("w000", 4, 10, 10, 0), ("w024", 4, 19, 20, 0),
        # id 5: onset at week 24, nominal 30 voxels
        ("w024", 5, 29, 30, 24),
    ]
    return pd.DataFrame({
        "participant_id": "sub-001", "session": [r[0] for r in rows], "lesion_id": [r[1] for r in rows],
        "volume_ml": [r[2] * V for r in rows], "nominal_volume_ml": [r[3] * V for r in rows],
        "onset_week": [r[4] for r in rows],
        "x_native": 0.0, "y_native": 0.0, "z_native": 0.0,
    })


def test_truth_and_native_classes():
    t = truth_lesions(_truth(), {"sub-001": ["ses-w000", "ses-w024"]}, voxel_ml=V).set_index("lesion_id")
    assert t.loc[[1, 2, 3, 4, 5], "truth_class"].tolist() == ["stable", "new", "undrawn", "enlarging", "new"]
    assert t.loc[[1, 2, 3, 4, 5], "native_class"].tolist() == ["enlarging", "new", "new", "enlarging", "new"]
    assert t.loc[2, "nominal_voxels"] == pytest.approx(4) and t.loc[2, "native_voxels"] == pytest.approx(3)
    assert t.loc[1, "native_reference_voxels"] == pytest.approx(12) and np.isnan(t.loc[2, "nominal_reference_voxels"])
    assert set(t["reference_session"]) == {"ses-w000"}


def test_nearest_component_and_grid_placement():
    lab = np.zeros((5, 20, 20), np.int64)
    lab[2, 5, 5] = 7
    lab[3, 5, 9] = 8
    got, d = nearest_component(lab, np.array([[2, 5, 6.5], [2.2, 5, 8.6], [2, 5, 8.4]]), (3.0, 1.0, 1.0))
    assert got.tolist() == [7, 8, 0]
    assert d[0] == pytest.approx(1.5) and d[1] == pytest.approx(np.hypot(2.4, 0.4)) and np.isnan(d[2])  # 8 lies 3.06 mm away
    # identity transform: the native point (x, y, z) mm lands at ((z - oz)/3, (y - oy)/1, (x - ox)/1)
    grid = sitk.Image(20, 20, 5, sitk.sitkUInt8)
    grid.SetSpacing((1.0, 1.0, 3.0))
    grid.SetOrigin((-10.0, -5.0, 0.0))
    idx = native_to_grid(np.array([[0.0, 0.0, 6.0]]), sitk.Euler3DTransform(), grid)
    assert idx[0] == pytest.approx([2.0, 5.0, 10.0])
    # a translation T (grid -> native, ITK's convention) moves the point by -T in the grid
    tx = sitk.TranslationTransform(3, (2.0, 0.0, 3.0))
    assert native_to_grid(np.array([[0.0, 0.0, 6.0]]), tx, grid)[0] == pytest.approx([1.0, 5.0, 8.0])
    # any grid direction, as ITK places the point
    grid.SetDirection((0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
    pts = np.array([[1.5, -2.0, 4.0], [-3.0, 7.0, -6.0]])
    want = [grid.TransformPhysicalPointToContinuousIndex(tuple(p - (2.0, 0.0, 3.0)))[::-1] for p in pts]
    assert native_to_grid(pts, tx, grid) == pytest.approx(np.array(want))


def _scene():
    """One follow-up: QC map with a true new lesion (id 5, 30 voxels), a false new lesion (8 voxels,
    where no truth-new lesion lies), a small true new lesion below a floor (id 2, QC label 4), the
    enlarging lesion id 4 and the unchanged id 1 called 'other'."""
    qc = np.zeros((6, 40, 40), np.int16)
    qc[1:4, 2:5, 2:6] = 1  # 36 voxels: new (id 5 at its centre)
    qc[2, 10:12, 2:6] = 1  # 8 voxels: new, false
    qc[2, 20, 2:6] = 4  # 4 voxels: new below the floor (id 2)
    qc[2, 30:33, 2:6] = 2  # enlarging (id 4)
    qc[2, 30:33, 20:24] = 3  # other (id 1)
    centres = {5: (2, 3, 3.5), 2: (2, 20, 3.5), 4: (2, 31, 3.5), 1: (2, 31, 21.5), 3: (5, 38, 38)}
    lesions = truth_lesions(_truth(), {"sub-001": ["ses-w000", "ses-w024"]}, voxel_ml=V)
    idx = np.array([centres[i] for i in lesions["lesion_id"]], float)
    return lesions, qc, idx


def test_match_visit_classes_and_true_new_lesions():
    lesions, qc, idx = _scene()
    les, masks = match_visit(lesions, qc, idx, (3.0, 1.0, 1.0))
    m = les.set_index("lesion_id")
    assert m.loc[[5, 2, 4, 1, 3], "mask_class"].tolist() == ["new", "new", "enlarging", "other", "missed"]
    assert m.loc[5, "mask_voxels"] == 36 and m.loc[3, "mask_voxels"] == 0
    assert sorted(masks["n_voxels"]) == [4, 8, 36]
    assert masks.set_index("n_voxels").loc[[4, 8, 36], "true_new"].tolist() == [True, False, True]
    assert masks.set_index("n_voxels").loc[36, "truth_lesion_ids"] == "5"


def test_size_and_floor_tables_and_the_floor_rule():
    lesions, qc, idx = _scene()
    les, masks = match_visit(lesions, qc, idx, (3.0, 1.0, 1.0))
    for c, v in (("participant_id", "sub-001"), ("session", "ses-w024")):
        masks.insert(0, c, v)
    sizes = size_table(les, masks).set_index(["side", "bin"])
    assert sizes.loc[("truth_new", "[3, 5)"), ["n", "n_new_in_masks", "n_native_new"]].tolist() == [1, 1, 1]
    assert sizes.loc[("truth_new", "[20, 50)"), "n"] == 1
    # the unchanged id 1 (12 voxels) looks enlarging in the native grid, not in the masks
    assert sizes.loc[("truth_unchanged", "[10, 20)"), ["n", "n_native_new", "n_enlarging_in_masks"]].tolist() == [
        1, 1, 0]
    assert sizes.loc[("masks_new", "[5, 10)"), ["n", "n_true"]].tolist() == [1, 0]
    fl = floor_table(les, masks, masks[["participant_id", "session"]], floors=(3, 5, 10)).set_index("floor")
    # floor 3: masks 3 new (36, 8, 4), truth 2 (30, 4 nominal): unequal; floor 5 and 10: 1 (36) vs 1 (30)
    assert fl["n_masks"].tolist() == [3, 2, 1] and fl["n_truth"].tolist() == [2, 1, 1]
    assert fl["n_equal"].tolist() == [0, 0, 1]
    assert fl.loc[3, "precision"] == pytest.approx(2 / 3) and fl.loc[10, "sensitivity"] == 1.0
    assert fl["chosen"].tolist() == [False, False, True] and choose_floor(fl.reset_index()) == 10
    assert choose_floor(fl.reset_index().assign(share_equal=0.5)) is None


def _tracked() -> pd.DataFrame:
    """The GT tracking's lesion table of sub-001's follow-up: a lesion grown by 12 voxels, one by
    4 (the grid's noise) and a stable one."""
    return pd.DataFrame({"participant_id": "sub-001", "session": "ses-w024", "lesion": [1, 2, 3],
                         "class": ["enlarging", "enlarging", "stable"], "n_voxels": [24, 10, 30],
                         "reference_voxels": [12.0, 6.0, 30.0]})


def test_enlarge_floor_table_counts_growth_of_at_least_the_floor():
    lesions = truth_lesions(_truth(), {"sub-001": ["ses-w000", "ses-w024"]}, voxel_ml=V)
    # truth: id 4 grows 10 voxels nominal (9 native); id 1 is stable but grows 8 in the native grid
    fu = pd.DataFrame({"participant_id": ["sub-001", "sub-002"], "session": "ses-w024"})  # sub-002: nothing anywhere
    t = enlarge_floor_table(lesions, _tracked(), fu, floors=(3, 5, 10, 15)).set_index("floor")
    assert t["n_masks"].tolist() == [2, 1, 1, 0]
    assert t["n_truth"].tolist() == [1, 1, 1, 0]
    assert t["n_native"].tolist() == [2, 2, 0, 0]
    assert t["n_equal"].tolist() == [1, 2, 2, 2] and t["share_equal"].tolist() == [0.5, 1.0, 1.0, 1.0]
    assert t["n_equal_native"].tolist() == [1, 1, 1, 2]
    assert t["chosen"].tolist() == [False, True, False, False]  # the new-lesion rule: smallest with >= 90 % equal
    with pytest.raises(InputError, match=r"lacks column\(s\) \['reference_voxels'\]"):
        enlarge_floor_table(lesions, _tracked().drop(columns="reference_voxels"), fu)


def test_path_entry_point_writes_the_tables(tmp_path):
    lesions, qc, idx = _scene()
    img = sitk.GetImageFromArray(qc)
    img.SetSpacing((1.0, 1.0, 3.0))
    qpath = tmp_path / "qc.nii.gz"
    sitk.WriteImage(img, str(qpath))
    # native points = the grid's physical points (identity transform)
    truth = _truth()
    cent = dict(zip(lesions["lesion_id"], idx))
    for i, (z, y, x) in cent.items():
        sel = (truth["lesion_id"] == i) & (truth["session"] == "w024")
        truth.loc[sel, ["x_native", "y_native", "z_native"]] = [x, y, 3.0 * z]
    tpath, xpath = tmp_path / "lesions.tsv", tmp_path / "xfm.tfm"
    truth.to_csv(tpath, sep="\t", index=False)
    sitk.WriteTransform(sitk.Euler3DTransform(), str(xpath))
    key = ("sub-001", "ses-w024")
    outs = [tmp_path / f"{k}.tsv" for k in ("lesions", "masks", "sizes", "floors")]
    sessions = {"sub-001": ["ses-w000", "ses-w024"]}
    tracked, enl = tmp_path / "sub-001_lesions.tsv", tmp_path / "enlarge_floors.tsv"
    _tracked().to_csv(tracked, sep="\t", index=False)
    fl = run_new_lesion_truth(tpath, {key: str(qpath)}, {key: str(xpath)}, sessions, *outs, floors=(3, 10),
                              tracked=[tracked], out_enlarge_floors_tsv=enl, enlarge_floors=(3, 5))
    assert fl["n_equal"].tolist() == [0, 1] and all(p.is_file() for p in outs)
    assert pd.read_csv(enl, sep="\t")[["floor", "n_masks", "n_truth", "chosen"]].values.tolist() == [
        [3, 2, 1, False], [5, 1, 1, True]]
    with pytest.raises(ValueError, match="give both tracked"):
        run_new_lesion_truth(tpath, {key: str(qpath)}, {key: str(xpath)}, sessions, *outs, tracked=[tracked])
    # a tracking table without its reference volumes: one line naming it, and no table written
    _tracked().drop(columns="reference_voxels").to_csv(tracked, sep="\t", index=False)
    fresh = [tmp_path / "again" / p.name for p in (*outs, enl)]
    with pytest.raises(InputError, match=re.escape(f"{tracked}: lacks column(s) ['reference_voxels']")):
        run_new_lesion_truth(tpath, {key: str(qpath)}, {key: str(xpath)}, sessions, *fresh[:4], tracked=[tracked],
                             out_enlarge_floors_tsv=fresh[4])
    assert not any(p.exists() for p in fresh)
    back = pd.read_csv(outs[0], sep="\t").set_index("lesion_id")
    assert back.loc[[5, 2, 4, 1, 3], "mask_class"].tolist() == ["new", "new", "enlarging", "other", "missed"]
