"""Readers' corrections flowing back in: the `reviewed` source (t2lesion.corrections, docs/DESIGN.md §14)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from t2lesion import corrections as C
from t2lesion.evaluation.segmentation import voxel_metrics

SHAPE = (8, 24, 24)


def img(arr, spacing=(1.0, 1.0, 3.0), origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    out = sitk.GetImageFromArray(np.asarray(arr, np.float32))
    out.SetSpacing(spacing)
    out.SetOrigin(origin)
    return out


def write(arr, path, **kw) -> str:
    sitk.WriteImage(img(arr, **kw), str(path))
    return str(path)


def identity() -> sitk.Transform:
    return sitk.AffineTransform(3)


def box(z, y, x, n=3) -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    m[z : z + 2, y : y + n, x : x + n] = 1
    return m


def test_correction_path_mirrors_the_flair():
    p = C.correction_path("/b", "/b/sub-01/ses-w024/anat/sub-01_ses-w024_FLAIR.nii.gz")
    assert p == Path("/b/derivatives/lesions-reviewed/sub-01/ses-w024/anat/"
                     "sub-01_ses-w024_space-FLAIR_desc-lesion_mask.nii.gz")


def test_unmatched_corrections_are_one_line_each(tmp_path):
    good = C.correction_path(tmp_path, tmp_path / "sub-01/ses-w000/anat/sub-01_ses-w000_FLAIR.nii.gz")
    stray = tmp_path / C.REVIEWED_FOLDER / "sub-09/ses-w000/anat/sub-09_ses-w000_space-FLAIR_desc-lesion_mask.nii.gz"
    renamed = good.with_name(good.name.replace("_mask.nii.gz", "_mask_corrected.nii.gz"))  # "under a new name"
    sidecar = good.with_suffix("").with_suffix(".json")
    for p in (good, stray, renamed, sidecar):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    lines = C.unmatched_corrections(tmp_path, [good], "t")
    assert len(lines) == 2 and lines[0].startswith(f"{renamed}: a reviewed mask that names no visit of trial t")
    assert lines[1].startswith(f"{stray}: a reviewed mask that names no visit of trial t")
    assert C.unmatched_corrections(tmp_path / "nothing", [], "t") == []


def test_a_correction_equal_to_the_mask_changes_nothing_and_edits_apply():
    unet = box(2, 4, 4) | box(4, 14, 14)
    mni = img(unet)
    same, added, removed = C.apply_correction(mni, img(unet), img(unet), identity())
    assert np.array_equal(same, unet) and added == removed == 0
    corr = box(2, 4, 4) | box(2, 10, 16)  # reader removes one lesion, draws another
    out, added, removed = C.apply_correction(mni, img(unet), img(corr), identity())
    assert np.array_equal(out, corr) and added == 18 and removed == 18


def test_bad_corrections_are_rejected_with_one_line(tmp_path, capfd):
    """One line naming the file on the job's stderr (Snakemake's output), also from inside the
    job's rule_log, which sends sys.stderr to the log; and in the log."""
    from t2lesion.logs import rule_log

    unet = box(2, 4, 4)
    paths = {"unet_mni": write(unet, tmp_path / "mni.nii.gz"), "unet_native": write(unet, tmp_path / "nat.nii.gz"),
             "flair": write(np.random.default_rng(0).random(SHAPE), tmp_path / "flair.nii.gz")}
    xfm = tmp_path / "x.tfm"
    sitk.WriteTransform(identity(), str(xfm))
    cases = {"grid.nii.gz": (unet[:, :12], "not on the grid of the visit's FLAIR"),
             "values.nii.gz": (unet * 2.0, "voxels are neither 0 nor 1")}
    for name, (arr, why) in cases.items():
        corr = write(arr, tmp_path / name)
        with rule_log(tmp_path / f"{name}.log"):
            row = C.run_apply_review(paths["unet_mni"], tmp_path / "out.nii.gz", tmp_path / "status.tsv",
                                     participant_id="sub-01", session="ses-w000", unet_native=paths["unet_native"],
                                     flair=paths["flair"], xfm=str(xfm), correction=corr)
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"{corr}: ") and why in err[0]
        assert f"{corr}: " in (tmp_path / f"{name}.log").read_text()
        assert row["status"].startswith("rejected") and why in row["status"]
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out.nii.gz"))), unet)
    good = write(box(2, 10, 10), tmp_path / "good.nii.gz")
    sidecar = tmp_path / "good.json"
    sidecar.write_text(json.dumps({"Rater": "AB"}))
    row = C.run_apply_review(paths["unet_mni"], tmp_path / "out.nii.gz", tmp_path / "status.tsv",
                             participant_id="sub-01", session="ses-w000", unet_native=paths["unet_native"],
                             flair=paths["flair"], xfm=str(xfm), correction=good, sidecar=str(sidecar))
    status = pd.read_csv(tmp_path / "status.tsv", sep="\t")
    assert row["status"] == "applied" and status.loc[0, "rater"] == "AB" and status.loc[0, "added_voxels"] == 18
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out.nii.gz"))), box(2, 10, 10))
    assert capfd.readouterr().err == ""
    # a blank save: applied (a reader may erase every lesion), and said, in case it was an accident
    blank = write(np.zeros(SHAPE), tmp_path / "blank.nii.gz")
    row = C.run_apply_review(paths["unet_mni"], tmp_path / "out.nii.gz", tmp_path / "status.tsv",
                             participant_id="sub-01", session="ses-w000", unet_native=paths["unet_native"],
                             flair=paths["flair"], xfm=str(xfm), correction=blank)
    assert row["status"] == "applied" and row["removed_voxels"] == 18 and row["reviewed_tlv_ml"] == 0
    assert capfd.readouterr().err.strip() == (f"{blank}: an empty correction: every lesion of sub-01 ses-w000 removed "
                                              "(18 voxels); applied")


def test_a_simulated_reader_improves_on_the_unet():
    """The GT replaces the mask of the queue's top visits: the reviewed masks agree better with GT."""
    from t2lesion import review

    rng = np.random.default_rng(4)
    brain = np.ones(SHAPE, bool)
    rows, masks = [], {}
    for s in range(1, 7):
        gt = box(2, 3 + s, 4) | box(4, 14, 3 + s)
        unet = gt.copy()
        mi = np.where(gt > 0, 0.02, 0.0)
        if s in (2, 5):  # two visits the U-Net got wrong: it missed a lesion and doubted itself
            unet = box(2, 3 + s, 4)
            mi = np.where(gt > 0, 0.4, 0.0)
        masks[f"sub-{s:02d}"] = (gt, unet)
        row = review.visit_features(unet, brain, 0.003, mi=mi, other=gt | (rng.random(SHAPE) < 0.002))
        rows.append({**row, "participant_id": f"sub-{s:02d}", "session": "ses-w000", "week": 0, "source": "unet",
                     "other_source": "classical", "reg_kind": "mni"})
    queue = review.build_queue(pd.DataFrame(rows).reindex(columns=review.FEATURE_COLUMNS))
    top = list(queue["participant_id"].head(2))
    assert sorted(top) == ["sub-02", "sub-05"]
    dice = {"unet": [], "reviewed": []}
    for sub, (gt, unet) in masks.items():
        reviewed = unet
        if sub in top:
            reviewed, _, _ = C.apply_correction(img(unet), img(unet), img(gt), identity())
        dice["unet"].append(voxel_metrics(gt, unet, 0.003)["dc"])
        dice["reviewed"].append(voxel_metrics(gt, reviewed, 0.003)["dc"])
    assert np.mean(dice["reviewed"]) > np.mean(dice["unet"]) and min(dice["reviewed"]) == 1.0


def test_endpoint_changes_pair_the_sources_on_their_keys():
    ancova = pd.DataFrame({"source": ["gt", "unet", "reviewed", "unet", "reviewed"], "week": [48, 48, 48, 96, 96],
                           "estimate": [-0.3, -0.2, -0.28, -0.4, -0.4], "note": ["", "", "x", "", ""]})
    out = C.endpoint_changes({"ancova_arm_effect": ancova, "no_source": pd.DataFrame({"a": [1]})})
    assert list(out["key"]) == ["week=48", "week=96"] and set(out["quantity"]) == {"estimate"}
    assert list(out["difference"].round(6)) == [-0.08, 0.0]
    assert list(out["unet"]) == [-0.2, -0.4] and list(out["reviewed"]) == [-0.28, -0.4]
    long = pd.DataFrame({"participant_id": ["sub-1"] * 4, "week": [0, 0, 24, 24],
                         "source": ["unet", "reviewed"] * 2, "tlv_ml": [1.0, 1.0, 2.0, 2.5]})
    out = C.endpoint_changes({"tlv_long": long})
    assert list(out["key"]) == ["participant_id=sub-1, week=24"] and list(out["difference"]) == [0.5]



def test_endpoint_changes_read_the_side_by_side_tables_too():
    """The ANCOVA arm effect and Table 4 are written side by side (``<source>.<value>``, no source
    column), as stats.side_by_side and table4 make them: their rows are compared too."""
    from t2lesion.stats.common import side_by_side
    from t2lesion.stats.survival import table4

    tidy = pd.DataFrame({"source": ["unet", "reviewed", "classical"], "week": [48] * 3, "term": ["arm_OCR"] * 3,
                         "estimate": [-5.0, -6.5, -4.0], "p": [0.2, 0.1, 0.3]})
    arm = side_by_side(tidy, ["week", "term"], ["estimate", "p"])
    assert "source" not in arm.columns and "unet.estimate" in arm.columns
    cox = pd.DataFrame({"source": ["unet", "reviewed"], "endpoint": ["CCDP24"] * 2, "model": ["univariable"] * 2,
                        "term": ["log_tlv"] * 2, "label": ["log TLV"] * 2, "hr": [1.5, 1.8], "hr_ci_low": [1.1, 1.2],
                        "hr_ci_high": [2.0, 2.7], "p": [0.01, 0.02], "n": [40, 40], "events": [10, 10],
                        "concordance": [0.6, 0.62], "ph_p": [0.5, 0.4], "log_tlv_centre": [0.0, 0.0],
                        "status": ["ok", "ok"], "note": ["", ""]})
    out = C.endpoint_changes({"ancova_arm_effect": arm, "table4": table4(cox)})
    got = out.set_index(["table", "quantity"])["difference"].round(6)
    assert got[("ancova_arm_effect", "estimate")] == -1.5 and got[("table4", "hr")] == 0.3
    assert all(k.startswith("endpoint=CCDP24, model=univariable, term=log_tlv, label=log TLV")
               for k in out.loc[out["table"] == "table4", "key"])
    assert "hr_ci" not in set(out["quantity"])  # each source's own text


def test_an_erased_lesion_leaves_no_rim_in_mni():
    """A reader deletes every lesion on a grid turned against MNI: nothing of them is left
    (removals go by nearest neighbour; B-spline + 0.5 left a rim of 21 of 354 voxels)."""
    rng = np.random.default_rng(1)
    unet = np.zeros(SHAPE, np.uint8)
    for z, y, x in rng.integers([1, 3, 3], [7, 21, 21], size=(6, 3)):
        unet[z - 1:z + 2, y - 2:y + 2, x - 2:x + 2] = 1
    native = img(unet)
    tx = sitk.Euler3DTransform()
    tx.SetRotation(0.05, -0.08, 0.1)
    tx.SetCenter(native.TransformContinuousIndexToPhysicalPoint(tuple((np.array(SHAPE[::-1]) - 1) / 2.0)))
    mni = sitk.Resample(native, native, tx, sitk.sitkNearestNeighbor, 0)  # the U-Net's MNI mask, as predicted
    out, added, removed = C.apply_correction(mni, native, img(np.zeros_like(unet)), tx)
    assert removed == int(unet.sum()) and added == 0
    assert sitk.GetArrayFromImage(mni).sum() > 0 and out.sum() == 0


def test_endpoint_changes_pair_table2_rows_whose_summary_text_differs():
    """Table 2's ``summary`` column ("0.015 ± 0.006") is each source's own text, not a key."""
    t2 = pd.DataFrame({"source": ["unet", "reviewed"], "trial": ["t", "t"], "metric": ["DC", "DC"],
                       "column": ["dc", "dc"], "mean": [0.0152, 0.4672], "sd": [0.0059, 0.5],
                       "summary": ["0.0152 ± 0.00593", "0.467 ± 0.500"]})
    out = C.endpoint_changes({"table2": t2})
    assert list(out["key"]) == ["trial=t, metric=DC, column=dc"] * 2 and list(out["quantity"]) == ["mean", "sd"]
    assert out["difference"].round(4).tolist() == [0.452, 0.4941]


def test_a_reviewed_training_mask_is_carried_into_mni_or_rejected_with_the_same_line(tmp_path, capfd):
    """trials.<t>.training_masks: reviewed: a good reader's mask is carried into MNI as the GT is;
    a bad one (grid, values) stops the job with the line the `reviewed` source gives, naming the
    file, with what it means for training."""
    import pytest

    from t2lesion.errors import InputError

    flair = write(np.random.default_rng(0).random(SHAPE), tmp_path / "flair.nii.gz")
    grid = write(np.zeros(SHAPE), tmp_path / "grid.nii.gz")
    xfm = tmp_path / "x.tfm"
    sitk.WriteTransform(identity(), str(xfm))
    sidecar = tmp_path / "good.json"
    sidecar.write_text(json.dumps({"Rater": "AB"}))
    good = write(box(2, 10, 10), tmp_path / "good.nii.gz")
    n = C.run_training_mask(good, flair, str(xfm), grid, str(tmp_path / "mni.nii.gz"), trial="tr",
                            sidecar=str(sidecar), interpolation="bspline")
    assert n == 18 and np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "mni.nii.gz"))),
                                      box(2, 10, 10))
    unet = box(2, 4, 4)
    paths = {"unet_mni": write(unet, tmp_path / "umni.nii.gz"), "unet_native": write(unet, tmp_path / "nat.nii.gz")}
    for name, arr in {"grid.nii.gz": unet[:, :12], "values.nii.gz": unet * 2.0}.items():
        bad = write(arr, tmp_path / f"bad-{name}")
        C.run_apply_review(paths["unet_mni"], tmp_path / "out.nii.gz", tmp_path / "status.tsv",
                           participant_id="sub-01", session="ses-w000", unet_native=paths["unet_native"],
                           flair=flair, xfm=str(xfm), correction=bad)
        source_line = capfd.readouterr().err.strip()
        with pytest.raises(InputError) as exc:
            C.run_training_mask(bad, flair, str(xfm), grid, str(tmp_path / "bad-mni.nii.gz"), trial="tr")
        line = str(exc.value)
        assert "\n" not in line and line.startswith(f"{bad}: ")
        problem = source_line.rsplit("; ", 1)[0]
        assert line == f"{problem}; not usable as training GT of trial tr (fix it, or remove it to leave the visit " \
                       f"out of training)"
        assert not (tmp_path / "bad-mni.nii.gz").exists()
