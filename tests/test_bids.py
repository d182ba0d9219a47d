"""BIDS discovery and validation (docs/DESIGN.md §1): every problem reported at once, by file/row."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from tests.conftest import make_bids, write_image
from t2lesion.bids import Visit, gt_mask_path, image_path, validate, write_summary, write_visit_files
from t2lesion.config import trials_from_config
from t2lesion.errors import InputError

ARMS = ["PLA", "OCR"]


def write_nibabel(path, arr):
    """Write as other tools do (nibabel keeps NaN and 4-D as they are)."""
    import nibabel as nib

    nib.save(nib.Nifti1Image(arr, np.diag([1.0, 1.0, 3.0, 1.0])), str(path))


def test_valid_tree_lists_every_visit(bids_tree, tmp_path):
    layout = validate(bids_tree, ARMS)
    assert layout.visits == [Visit("001", "w000"), Visit("001", "w024"), Visit("002", "w000"), Visit("002", "w024")]
    assert all(layout.has_gt.values())
    assert layout.visits[1].week == 24
    write_summary(layout, tmp_path / "v.tsv")
    assert len(pd.read_csv(tmp_path / "v.tsv", sep="\t")) == 4


def _break_everything(bids):
    """The issue's list of broken inputs, all in one tree."""
    image_path(bids, "001", "w024", "FLAIR").unlink()  # missing modality
    nan = np.ones((12, 10, 6), np.float32)
    nan[1, 1, 1] = np.nan
    write_nibabel(image_path(bids, "002", "w024", "T2w"), nan)  # NaN voxel
    write_image(image_path(bids, "002", "w000", "T1w"), np.zeros((6, 10, 12), np.float32))  # empty
    write_image(gt_mask_path(bids, "001", "w000"), np.zeros((6, 11, 12), np.uint8))  # geometry mismatch
    base = bids / "sub-002" / "ses-w000"
    # a subject without baseline: rename sub-001's baseline? keep sub-001 intact; add sub-003 with only w024
    (bids / "sub-003" / "ses-w024" / "anat").mkdir(parents=True)
    for mod in ("T1w", "T2w", "FLAIR"):
        write_image(image_path(bids, "003", "w024", mod), np.ones((6, 10, 12), np.float32))
    part = pd.read_csv(bids / "participants.tsv", sep="\t")
    extra = pd.DataFrame(
        [
            {"participant_id": "sub-003", "arm": "XYZ", "age": 30, "sex": "F", "region": "US", "edss_bl": 2},
            {"participant_id": "sub-../../etc", "arm": "PLA", "age": 30, "sex": "F", "region": "US", "edss_bl": 2},
            {"participant_id": "sub-001", "arm": "PLA", "age": 30, "sex": "F", "region": "US", "edss_bl": 2},
        ]
    )
    pd.concat([part, extra]).to_csv(bids / "participants.tsv", sep="\t", index=False)
    out = pd.read_csv(bids / "phenotype" / "outcomes.tsv", sep="\t")
    out.loc[len(out)] = ["sub-999", "CDP24", 10.0, 0]
    out.loc[len(out)] = ["sub-002", "9HPT24", -3.0, 1]
    out.to_csv(bids / "phenotype" / "outcomes.tsv", sep="\t", index=False)
    return base


def test_broken_tree_reports_every_problem_by_file(bids_tree):
    _break_everything(bids_tree)
    with pytest.raises(InputError) as err:
        validate(bids_tree, ARMS)
    msg = str(err.value)
    expected = [
        ("sub-001_ses-w024_FLAIR.nii.gz", "missing FLAIR"),
        ("sub-002_ses-w024_T2w.nii.gz", "NaN/Inf"),
        ("sub-002_ses-w000_T1w.nii.gz", "empty"),
        ("sub-001_ses-w000_desc-lesion_mask.nii.gz", "geometry differs from its FLAIR"),
        ("sub-003", "no baseline visit"),
        ("participants.tsv, row 4", "unknown arm 'XYZ'"),
        ("participants.tsv, row 5", "letters and digits only"),
        ("participants.tsv, row 6", "duplicate participant_id 'sub-001'"),
        ("outcomes.tsv, row", "unknown participant 'sub-999'"),
        ("outcomes.tsv, row", "negative time_weeks -3"),
    ]
    lines = msg.splitlines()
    for where, what in expected:
        assert any(where in line and what in line for line in lines), f"no line with {where!r} and {what!r} in:\n{msg}"
    assert len(err.value.problems) == len(expected)


def test_structural_check_does_not_open_images(bids_tree):
    write_nibabel(image_path(bids_tree, "002", "w024", "T2w"), np.full((12, 10, 6), np.nan, np.float32))
    validate(bids_tree, ARMS, check_images=False)  # NaN only found when images are opened
    with pytest.raises(InputError, match="NaN"):
        validate(bids_tree, ARMS, check_images=True)


def test_four_d_and_corrupt_images_are_named(bids_tree):
    write_nibabel(image_path(bids_tree, "001", "w000", "T1w"), np.ones((12, 10, 6, 2), np.float32))
    image_path(bids_tree, "002", "w000", "T2w").write_bytes(b"not a nifti at all")
    with pytest.raises(InputError) as err:
        validate(bids_tree, ARMS)
    msg = str(err.value)
    assert "sub-001_ses-w000_T1w.nii.gz: expected a 3-D image, found 4-D" in msg
    assert "sub-002_ses-w000_T2w.nii.gz: cannot be read as a NIfTI image" in msg


def test_an_image_without_orientation_is_named(bids_tree):
    """qform_code = sform_code = 0: ITK reads an identity orientation, nibabel a flipped one;
    left and right are unknown, and no later step could tell a mirrored brain."""
    import nibabel as nib

    path = image_path(bids_tree, "002", "w024", "FLAIR")
    original = nib.load(str(path))
    img = nib.Nifti1Image(np.asarray(original.dataobj), original.affine)
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)
    nib.save(img, str(path))
    assert (int(nib.load(str(path)).header["qform_code"]), int(nib.load(str(path)).header["sform_code"])) == (0, 0)
    with pytest.raises(InputError) as err:
        validate(bids_tree, ARMS)
    assert err.value.problems == [f"{path}: its header gives no orientation (qform_code and sform_code are both 0), "
                                  "so left and right are unknown; convert the image again from its DICOMs "
                                  "(e.g. dcm2niix)"]
    img.set_qform(original.affine, code=1)  # one of the two is enough
    nib.save(img, str(path))
    validate(bids_tree, ARMS)


def test_a_single_slice_and_a_flair_outside_the_t1w_are_named_before_any_preprocessing(bids_tree):
    """Both passed validation once, then crashed N4 (zero spacing) or the registration (no overlap)
    with an ITK traceback naming neither file."""
    import SimpleITK as sitk

    write_image(image_path(bids_tree, "001", "w024", "FLAIR"), np.ones((1, 10, 12), np.float32))
    flair = image_path(bids_tree, "002", "w024", "FLAIR")
    img = sitk.ReadImage(str(flair))
    img.SetOrigin((300.0, 0.0, 0.0))  # 300 mm away: a broken header
    sitk.WriteImage(img, str(flair))
    with pytest.raises(InputError) as err:
        validate(bids_tree, ARMS)
    msg = str(err.value)
    assert "sub-001_ses-w024_FLAIR.nii.gz: size (12, 10, 1) is not a 3-D volume" in msg
    assert "sub-002_ses-w024_FLAIR.nii.gz: its field of view shares 0 % with the visit's T1w" in msg
    assert "sub-002_ses-w024_T2w" not in msg  # the T2w lies where the T1w is
    # half a field of view away still aligns (its GT mask on its grid)
    for path in (flair, gt_mask_path(bids_tree, "002", "w024")):
        moved = sitk.ReadImage(str(path))
        moved.SetOrigin((6.0, 0.0, 0.0))  # 12 voxels of 1 mm: shares 50 %
        sitk.WriteImage(moved, str(path))
    write_image(image_path(bids_tree, "001", "w024", "FLAIR"), np.ones((6, 10, 12), np.float32))
    assert validate(bids_tree, ARMS) is not None


def test_missing_tables_and_columns(bids_tree):
    (bids_tree / "phenotype" / "outcomes.tsv").unlink()
    pd.read_csv(bids_tree / "participants.tsv", sep="\t").drop(columns="arm").to_csv(
        bids_tree / "participants.tsv", sep="\t", index=False
    )
    with pytest.raises(InputError) as err:
        validate(bids_tree, ARMS, check_images=False)
    msg = str(err.value)
    assert "outcomes.tsv: file not found" in msg
    assert "participants.tsv: missing column(s) arm" in msg


def test_participant_without_mri_is_a_warning_and_a_no_mri_row(tmp_path):
    """A participant of participants.tsv with no MRI (no folder, or a folder without images)
    is a one-line warning and an exclusion "no MRI"; its outcome rows are no error."""

    bids = make_bids(tmp_path / "bids", subjects=("001", "002", "003", "004"))
    shutil.rmtree(bids / "sub-003")  # no folder at all
    for f in (bids / "sub-004").rglob("*.nii.gz"):  # session folders left, no image in them
        f.unlink()
    assert set(pd.read_csv(bids / "phenotype" / "outcomes.tsv", sep="\t").participant_id) >= {"sub-003", "sub-004"}
    layout = validate(bids, ARMS)
    assert [v.prefix for v in layout.visits] == ["sub-001_ses-w000", "sub-001_ses-w024", "sub-002_ses-w000",
                                                 "sub-002_ses-w024"]
    assert layout.no_mri == ["sub-003", "sub-004"] and layout.excluded == {}
    # a config exclusion of a session folder without images (the old workaround) is no problem
    moot = [{"participant_id": "sub-004", "session": "ses-w000", "reason": "no scan"}]
    assert validate(bids, ARMS, check_images=False, exclude=moot).no_mri == ["sub-003", "sub-004"]
    for pid, what in (("sub-003", "no imaging folder"), ("sub-004", "no image under")):
        lines = [w for w in layout.warnings if f"participant {pid!r} has no MRI" in w]
        assert len(lines) == 1 and "\n" not in lines[0], layout.warnings
        assert lines[0].startswith(f"{bids / 'participants.tsv'}: ") and what in lines[0] and "'no MRI'" in lines[0]
    write_summary(layout, tmp_path / "visits.tsv")
    table = pd.read_csv(tmp_path / "visits.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert table.participant_id.tolist() == ["sub-001"] * 2 + ["sub-002"] * 2 + ["sub-003", "sub-004"]
    rows = table[table.excluded != ""]
    assert rows[["participant_id", "session", "week", "source_session", "has_gt", "excluded"]].values.tolist() == [
        ["sub-003", "n/a", "n/a", "n/a", "False", "no MRI"], ["sub-004", "n/a", "n/a", "n/a", "False", "no MRI"]]

    # while the DAG is built: the trial runs with its imaged participants, the warning shown
    cfg = {"trials": {"t": {"role": "test", "bids": str(bids), "control_arm": "PLA", "treatment_arms": ["OCR"]}}}
    trials, warnings = trials_from_config(cfg)
    assert trials["t"].problems == () and len(trials["t"].visits) == 4 and trials["t"].subjects() == ["001", "002"]
    assert sum("'sub-003' has no MRI" in w for w in warnings) == 1


def test_what_still_stops_a_trial_beside_a_participant_without_mri(tmp_path):
    bids = make_bids(tmp_path / "bids", subjects=("001", "002", "003"))
    shutil.rmtree(bids / "sub-003")
    # an image in the wrong place is an image (reported as misplaced), not "no MRI"
    flair = image_path(bids, "002", "w024", "FLAIR")
    flair.rename(flair.parent.parent / flair.name)
    # a folder that participants.tsv does not list stays an error even without images
    (bids / "sub-009" / "ses-w000" / "anat").mkdir(parents=True)
    with pytest.raises(InputError) as err:
        validate(bids, ARMS, check_images=False)
    problems = err.value.problems
    assert not any("sub-003" in p for p in problems), problems  # the one without MRI is no problem
    assert any("sub-002_ses-w024_FLAIR.nii.gz: missing FLAIR" in p for p in problems)
    assert any("sub-009: participant 'sub-009' is not listed in" in p for p in problems)
    # nobody with MRI: nothing to run
    shutil.rmtree(bids / "sub-009")
    for sub in ("001", "002"):
        shutil.rmtree(bids / f"sub-{sub}")
    with pytest.raises(InputError, match="no participant of .*participants.tsv has MRI"):
        validate(bids, ARMS, check_images=False)


def test_visit_files_record_each_raw_file_with_its_size_and_time(bids_tree, tmp_path):
    import os

    files = {"t1w": image_path(bids_tree, "001", "w000", "T1w"), "gt": gt_mask_path(bids_tree, "001", "w000")}
    os.utime(files["gt"], (1_700_000_000, 1_700_000_000))
    out = tmp_path / "rec" / "sub-001_ses-w000_files.tsv"
    write_visit_files(files, out, tmp_path / "logs" / "visit.log")
    assert (tmp_path / "logs" / "visit.log").read_text() == f"{out}: 2 raw files recorded (t1w, gt)\n"
    rec = pd.read_csv(out, sep="\t")
    assert list(rec.columns) == ["role", "path", "bytes", "modified_utc"]
    assert list(rec["role"]) == ["t1w", "gt"] and list(rec["path"]) == [str(files["t1w"]), str(files["gt"])]
    assert list(rec["bytes"]) == [files["t1w"].stat().st_size, files["gt"].stat().st_size]
    assert rec["modified_utc"].iloc[1] == "2023-11-14T22:13:20+00:00"


def test_an_empty_arm_participants_without_outcomes_and_an_implausible_age_are_said_at_start(bids_tree):
    part = pd.read_csv(bids_tree / "participants.tsv", sep="\t")
    part["arm"] = "PLA"  # every participant in the control arm
    part.to_csv(bids_tree / "participants.tsv", sep="\t", index=False)
    out = pd.read_csv(bids_tree / "phenotype/outcomes.tsv", sep="\t")
    out[out["participant_id"] != "sub-002"].to_csv(bids_tree / "phenotype/outcomes.tsv", sep="\t", index=False)
    layout = validate(bids_tree, ARMS, check_images=False)
    assert any(w.endswith("participants.tsv: no participant in arm 'OCR': the analyses that compare it with the "
                          "control arm are skipped") for w in layout.warnings), layout.warnings
    assert any("outcomes.tsv: 1 of 2 participants have no outcome row (sub-002)" in w for w in layout.warnings)
    part.loc[0, "age"] = 378
    part.to_csv(bids_tree / "participants.tsv", sep="\t", index=False)
    with pytest.raises(InputError, match=r"participants.tsv, row 2: age '378' for 'sub-001' is not an age in years \(0-120, or n/a\)"):
        validate(bids_tree, ARMS, check_images=False)


def test_a_comma_separated_table_is_named_as_such(bids_tree):
    part = pd.read_csv(bids_tree / "participants.tsv", sep="\t")
    part.to_csv(bids_tree / "participants.tsv", index=False)
    with pytest.raises(InputError, match=r"participants.tsv: comma-separated; BIDS tables are tab-separated "
                                         r"\(its header: 'participant_id,arm,age,sex,region,edss_bl'\)"):
        validate(bids_tree, ARMS, check_images=False)


def test_a_missing_image_names_a_file_that_differs_only_in_case(bids_tree):
    flair = image_path(bids_tree, "002", "w024", "FLAIR")
    flair.rename(flair.with_name("sub-002_ses-w024_flair.nii.gz"))
    with pytest.raises(InputError, match=r"sub-002_ses-w024_FLAIR.nii.gz: missing FLAIR image \(or .nii\); found "
                                         r"'sub-002_ses-w024_flair.nii.gz': BIDS names are case-sensitive"):
        validate(bids_tree, ARMS, check_images=False)
