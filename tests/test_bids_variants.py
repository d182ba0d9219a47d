"""Real-world input variants (issue 10): built at test time from the synthetic generator's
output. Realistic variants must be accepted; broken ones rejected with one line that says
what is wrong and where."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from t2lesion import synth
from t2lesion.bids import MODALITIES, Visit, gt_mask_path, image_path, validate, write_summary
from t2lesion.errors import InputError

ARMS = ["PLA", "OCR"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """One tiny synthetic trial (2 subjects x weeks 0, 24), copied by every variant."""
    root = tmp_path_factory.mktemp("variants") / "trial"
    synth.generate_trial(root, synth.SynthParams.tiny(seed=3, arms=ARMS), n_jobs=1, progress=False)
    return root / "bids"


@pytest.fixture
def bids(generated, tmp_path) -> Path:
    return Path(shutil.copytree(generated, tmp_path / "bids"))


def visits(layout) -> list[str]:
    return [v.prefix for v in layout.visits]


ALL = ["sub-001_ses-w000", "sub-001_ses-w024", "sub-002_ses-w000", "sub-002_ses-w024"]


def one_problem(bids_dir, **kw) -> str:
    with pytest.raises(InputError) as err:
        validate(bids_dir, ARMS, **kw)
    assert len(err.value.problems) == 1, err.value.problems
    return err.value.problems[0]


# ------------------------------------------------------------------ accepted


def test_the_generated_trial_as_it_is(bids):
    layout = validate(bids, ARMS)
    assert visits(layout) == ALL and len(layout.gt) == 4 and layout.warnings == []


def test_t1w_at_1mm_isotropic_beside_1x1x3_t2w_and_flair(bids):
    path = image_path(bids, "001", "w000", "T1w")
    img = sitk.ReadImage(str(path))
    size = [int(round(n * s)) for n, s in zip(img.GetSize(), img.GetSpacing())]
    iso = sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(), (1.0, 1.0, 1.0),
                        img.GetDirection())
    sitk.WriteImage(iso, str(path))
    assert visits(validate(bids, ARMS)) == ALL


def test_int16_with_scaling_and_permuted_lps_axes(bids):
    path = image_path(bids, "002", "w024", "FLAIR")
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    scaled = nib.Nifti1Image(np.round(data / data.max() * 30000).astype(np.int16), img.affine)
    scaled.header.set_slope_inter(data.max() / 30000, 0.0)
    nib.save(scaled, str(path))
    t2w = image_path(bids, "002", "w024", "T2w")
    nib.save(nib.load(str(t2w)).as_reoriented([[1, -1], [2, -1], [0, 1]]), str(t2w))  # permuted, flipped
    assert visits(validate(bids, ARMS)) == ALL


def test_uncompressed_nii_images_and_masks(bids):
    for path in [image_path(bids, "001", "w024", m) for m in MODALITIES] + [gt_mask_path(bids, "001", "w024")]:
        with gzip.open(path) as src:
            path.with_suffix("").write_bytes(src.read())  # .nii.gz -> .nii
        path.unlink()
    layout = validate(bids, ARMS)
    assert visits(layout) == ALL
    assert layout.images[Visit("001", "w024")]["FLAIR"].name == "sub-001_ses-w024_FLAIR.nii"
    assert layout.gt[Visit("001", "w024")].suffix == ".nii"


def test_run_and_acq_entities(bids):
    for mod in MODALITIES:
        p = image_path(bids, "002", "w000", mod)
        p.rename(p.with_name(f"sub-002_ses-w000_acq-3D_run-1_{mod}.nii.gz"))
    layout = validate(bids, ARMS)
    assert layout.images[Visit("002", "w000")]["T1w"].name == "sub-002_ses-w000_acq-3D_run-1_T1w.nii.gz"


def _rename_session(bids: Path, sub: str, old: str, new: str) -> None:
    """Rename a session folder and the files in it (images and GT)."""
    for root in (bids, bids / "derivatives" / "lesions"):
        folder = root / f"sub-{sub}" / f"ses-{old}"
        for f in folder.rglob("*.nii*"):
            f.rename(f.with_name(f.name.replace(f"ses-{old}", f"ses-{new}")))
        folder.rename(folder.with_name(f"ses-{new}"))


def test_sessions_mapped_to_weeks_by_sessions_tsv_and_by_config(bids, tmp_path):
    for sub in ("001", "002"):
        _rename_session(bids, sub, "w000", "baseline")
        _rename_session(bids, sub, "w024", "m06")
    pd.DataFrame({"session_id": ["ses-baseline", "ses-m06"], "week": [0, 24]}).to_csv(
        bids / "sub-001" / "sub-001_sessions.tsv", sep="\t", index=False)
    problem = one_problem(bids, check_images=False)  # sub-002 has no mapping yet
    assert "sub-002/ses-baseline: session(s) 'ses-baseline', 'ses-m06' not of the form 'ses-w<NNN>'" in problem
    assert "sub-002_sessions.tsv (columns session_id, week)" in problem and "trials.<name>.sessions" in problem
    layout = validate(bids, ARMS, sessions={"baseline": 0, "m06": 24})
    assert visits(layout) == ALL and len(layout.gt) == 4
    assert layout.session_labels[Visit("002", "w024")] == "m06"
    write_summary(layout, tmp_path / "visits.tsv")
    table = pd.read_csv(tmp_path / "visits.tsv", sep="\t")
    assert table["session"].tolist() == ["ses-w000", "ses-w024"] * 2
    assert table["source_session"].tolist() == ["ses-baseline", "ses-m06"] * 2


def test_crlf_bom_extra_columns_and_conventional_spellings(bids):
    part = pd.read_csv(bids / "participants.tsv", sep="\t", dtype=str)
    part["site"] = ["Basel", "Boston"]
    part["sex"] = ["male", "Female"]
    part["region"] = ["n/a", part["region"][1]]  # a missing covariate is allowed (counted by the statistics)
    text = part.to_csv(sep="\t", index=False, lineterminator="\r\n")
    (bids / "participants.tsv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    out = pd.read_csv(bids / "phenotype" / "outcomes.tsv", sep="\t", dtype=str)
    out["event"] = out["event"].map({"0": "0.0", "1": "1.0"})
    out.to_csv(bids / "phenotype" / "outcomes.tsv", sep="\t", index=False)
    layout = validate(bids, ARMS)
    assert list(layout.participants["participant_id"]) == ["sub-001", "sub-002"]
    assert "site" in layout.participants.columns


def test_three_visits_baseline_only_and_no_gt(bids, generated, tmp_path):
    for sub in ("001", "002"):  # a third visit (a copy of week 24 is fine for validation)
        shutil.copytree(bids / f"sub-{sub}" / "ses-w024", bids / f"sub-{sub}" / "ses-w048")
        for f in (bids / f"sub-{sub}" / "ses-w048").rglob("*.nii.gz"):
            f.rename(f.with_name(f.name.replace("w024", "w048")))
    layout = validate(bids, ARMS)
    assert len(layout.visits) == 6 and len(layout.gt) == 4  # no GT at week 48

    baseline_only = Path(shutil.copytree(generated, tmp_path / "bl"))
    for sub in ("001", "002"):
        shutil.rmtree(baseline_only / f"sub-{sub}" / "ses-w024")
        shutil.rmtree(baseline_only / "derivatives" / "lesions" / f"sub-{sub}" / "ses-w024")
    assert visits(validate(baseline_only, ARMS)) == ["sub-001_ses-w000", "sub-002_ses-w000"]

    no_gt = Path(shutil.copytree(generated, tmp_path / "nogt"))
    shutil.rmtree(no_gt / "derivatives")
    layout = validate(no_gt, ARMS)
    assert visits(layout) == ALL and layout.gt == {} and not any(layout.has_gt.values())


def test_excluded_visits_are_left_out_with_their_reason(bids, tmp_path):
    bad = image_path(bids, "001", "w024", "FLAIR")
    bad.write_bytes(b"truncated")  # a broken visit the user chose to exclude
    exclude = [{"participant_id": "sub-001", "session": "ses-w024", "reason": "motion, unreadable FLAIR"},
               {"participant_id": "sub-002", "session": "ses-w000", "reason": "consent withdrawn"}]
    layout = validate(bids, ARMS, exclude=exclude)
    assert visits(layout) == ["sub-001_ses-w000"]
    assert layout.excluded[Visit("001", "w024")] == "motion, unreadable FLAIR"
    assert layout.excluded[Visit("002", "w024")] == "baseline visit excluded (consent withdrawn)"
    write_summary(layout, tmp_path / "visits.tsv")
    table = pd.read_csv(tmp_path / "visits.tsv", sep="\t", keep_default_na=False)
    assert (table["excluded"] != "").sum() == 3


# ------------------------------------------------------------------ rejected, one line each


def test_two_runs_of_one_modality_name_both_files(bids):
    p = image_path(bids, "001", "w000", "T2w")
    shutil.copy(p, p.with_name("sub-001_ses-w000_run-2_T2w.nii.gz"))
    problem = one_problem(bids, check_images=False)
    assert "two T2w images for one visit" in problem
    assert "sub-001_ses-w000_T2w.nii.gz" in problem and "sub-001_ses-w000_run-2_T2w.nii.gz" in problem


def test_session_weeks_that_cannot_be_used(bids):
    _rename_session(bids, "001", "w024", "m06")
    pd.DataFrame({"session_id": ["ses-m06"], "week": ["six months"]}).to_csv(
        bids / "sub-001" / "sub-001_sessions.tsv", sep="\t", index=False)
    assert "week 'six months' of session 'ses-m06' is not a whole number" in one_problem(bids, check_images=False)
    assert "six months" in one_problem(bids, check_images=False, sessions={"m06": 24})  # sessions.tsv wins
    pd.DataFrame({"session_id": ["ses-m06"], "week": [0]}).to_csv(
        bids / "sub-001" / "sub-001_sessions.tsv", sep="\t", index=False)
    problem = one_problem(bids, check_images=False)
    assert "sessions 'ses-m06' and 'ses-w000' are both week 0" in problem


def test_probabilistic_gt_says_threshold_it(bids):
    gt = gt_mask_path(bids, "002", "w000")
    img = sitk.ReadImage(str(gt))
    prob = sitk.Cast(img, sitk.sitkFloat32) * 0.8
    sitk.WriteImage(prob, str(gt))
    problem = one_problem(bids)
    assert "sub-002_ses-w000_desc-lesion_mask.nii.gz: probability map" in problem and "threshold it" in problem


def test_gt_on_another_origin_names_the_origin(bids):
    gt = gt_mask_path(bids, "002", "w024")
    img = sitk.ReadImage(str(gt))
    img.SetOrigin(tuple(o + 5.0 for o in img.GetOrigin()))
    sitk.WriteImage(img, str(gt))
    problem = one_problem(bids)
    assert "header geometry differs from its FLAIR (origin" in problem and "size" not in problem


def test_bad_ids_are_quoted_and_sex_must_be_recognised(bids):
    part = pd.read_csv(bids / "participants.tsv", sep="\t", dtype=str)
    part.loc[1, "sex"] = "X"
    part.loc[2] = ["sub-00 3", "PLA", "40", "F", "US", "2"]
    part.to_csv(bids / "participants.tsv", sep="\t", index=False)
    with pytest.raises(InputError) as err:
        validate(bids, ARMS, check_images=False)
    problems = err.value.problems
    assert any("participant_id 'sub-00 3'" in p for p in problems), problems
    assert any("row 3: sex 'X' for 'sub-002' must be M/F or male/female" in p for p in problems), problems
    assert len(problems) == 2


def test_unreadable_participants_table_is_one_problem(bids):
    (bids / "participants.tsv").write_text("participant_id;arm;age\nsub-001;PLA;40\n")
    problem = one_problem(bids, check_images=False)
    assert "participants.tsv: missing column(s)" in problem  # and no "outcome for unknown participant" lines


def test_misnamed_or_orphan_gt_is_a_warning(bids):
    gt = gt_mask_path(bids, "001", "w024")
    gt.rename(gt.with_name("sub-001_ses-w024_desc-lesions_mask.nii.gz"))
    orphan = gt_mask_path(bids, "002", "w096")
    orphan.parent.mkdir(parents=True)
    shutil.copy(gt_mask_path(bids, "002", "w024"), orphan)
    layout = validate(bids, ARMS, check_images=False)
    assert Visit("001", "w024") not in layout.gt
    assert len(layout.warnings) == 2
    assert "sub-001_ses-w024_desc-lesions_mask.nii.gz: not used as a GT lesion mask; expected" in layout.warnings[0]
    assert "sub-002_ses-w096_desc-lesion_mask.nii.gz: GT lesion mask for a visit with no images" in layout.warnings[1]


def test_exclusion_of_an_unknown_visit(bids):
    problem = one_problem(bids, check_images=False,
                          exclude=[{"participant_id": "sub-001", "session": "ses-w096", "reason": "x"}])
    assert problem.startswith("visits to exclude: sub-001 ses-w096 is not a visit of")
