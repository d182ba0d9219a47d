"""The review queue (t2lesion.review, docs/DESIGN.md §14): doubt components, score, ranking, bundles."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from t2lesion import io, review
from t2lesion.errors import InputError

SHAPE = (8, 32, 32)
WEEKS = (0, 24, 48)


def blobs(rng, n=4, shape=SHAPE) -> np.ndarray:
    """A subject's lesions: ``n`` boxes of a few voxels inside the brain."""
    m = np.zeros(shape, bool)
    for _ in range(n):
        z, y, x = rng.integers(2, 6), rng.integers(8, 22), rng.integers(8, 22)
        m[z : z + 2, y : y + 3, x : x + 3] = True
    return m


def brain(shape=SHAPE) -> np.ndarray:
    b = np.zeros(shape, bool)
    b[1:7, 4:28, 4:28] = True
    return b


def trial_features(broken: tuple[str, str] | None, *, with_unet: bool = True, seed: int = 0) -> pd.DataFrame:
    """Per-visit rows of a hand-made trial of 5 subjects x 3 visits, as rule review_visit
    writes them; ``broken``: one visit whose FLAIR was made faint, so that the U-Net finds
    little there, doubts what it sees, and disagrees with the classical masks."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(1, 6):
        sub = f"sub-{s:03d}"
        les = blobs(rng, n=3 + s % 3)
        masks, mis, others = [], [], []
        for w in WEEKS:
            ses = f"ses-w{w:03d}"
            unet = les.copy()
            unet[rng.random(SHAPE) < 0.01] = True  # a few specks: normal noise between visits
            other = les.copy()
            other[..., 10] |= rng.random(SHAPE[:2]) < 0.05
            mi = np.where(unet, 0.02 + 0.01 * rng.random(SHAPE), 0.005 * rng.random(SHAPE))
            if (sub, ses) == broken:
                unet = np.zeros(SHAPE, bool)
                unet[les.nonzero()[0][:2], les.nonzero()[1][:2], les.nonzero()[2][:2]] = True
                mi = np.where(les, 0.4, 0.02)
            masks.append(unet)
            mis.append(mi if with_unet else None)
            others.append(other if with_unet else None)
        for k, w in enumerate(WEEKS):
            prev = masks[k - 1] if k else None
            nxt = masks[k + 1] if k + 1 < len(WEEKS) else None
            row = review.visit_features(masks[k], brain(), 0.003, mi=mis[k], other=others[k], prev=prev, nxt=nxt,
                                        native_brain_ml=1200 + rng.normal(0, 20) if k == 0 else math.nan,
                                        reg_cost=-0.5 + rng.normal(0, 0.02))
            rows.append({**row, "participant_id": sub, "session": f"ses-w{w:03d}", "week": w,
                         "source": "unet" if with_unet else "classical",
                         "other_source": "classical" if with_unet else "", "reg_kind": "mni" if k == 0 else "baseline"})
    return pd.DataFrame(rows).reindex(columns=review.FEATURE_COLUMNS)


@pytest.mark.parametrize("broken", [("sub-002", "ses-w024"), ("sub-004", "ses-w024"), ("sub-005", "ses-w000")])
def test_a_visit_with_a_faint_flair_ranks_first(broken):
    queue = review.build_queue(trial_features(broken))
    first = queue.iloc[0]
    assert (first["participant_id"], first["session"]) == broken, queue.head(3).T
    assert first["rank"] == 1 and first["score"] > 2 * queue.iloc[1]["score"]
    # one column per component, and the contributions add up to the score
    zcols = [f"z_{c}" for c in review.COMPONENTS]
    assert set(zcols + list(review.COMPONENTS)) <= set(queue.columns)
    assert np.allclose(queue[zcols].sum(axis=1), queue["score"])
    assert first["top_reason"] in review.COMPONENTS
    assert first["z_uncertain_ml"] > 0 and first["z_dice_sources"] > 0
    assert list(queue["score"]) == sorted(queue["score"], reverse=True)


def test_without_a_defect_no_visit_stands_out():
    queue = review.build_queue(trial_features(None))
    assert queue["score"].max() < review.build_queue(trial_features(("sub-002", "ses-w024")))["score"].max() / 2


def test_without_the_unet_the_queue_ranks_on_what_is_left():
    """classical alone: no MI, no disagreement; a middle visit that lost its lesions still leads
    on the flicker and TLV change."""
    queue = review.build_queue(trial_features(("sub-003", "ses-w024"), with_unet=False))
    assert queue[["mi_mean", "dice_sources"]].isna().all().all()
    assert (queue["z_mi_mean"] == 0).all() and (queue["z_dice_sources"] == 0).all()
    assert tuple(queue.iloc[0][["participant_id", "session"]]) == ("sub-003", "ses-w024")
    assert queue.iloc[0]["n_flicker"] > 0


def test_flicker_counts_lesions_that_vanish_and_come_back():
    prev = np.zeros(SHAPE, bool)
    prev[2:4, 5:8, 5:8] = True
    prev[2:4, 15:18, 15:18] = True
    cur = np.zeros(SHAPE, bool)
    cur[3, 6, 6] = True  # touches the first lesion only
    assert review.visit_features(cur, brain(), 1.0, prev=prev, nxt=prev)["n_flicker"] == 1
    assert review.visit_features(prev, brain(), 1.0, prev=prev, nxt=prev)["n_flicker"] == 0
    assert math.isnan(review.visit_features(cur, brain(), 1.0, prev=prev)["n_flicker"])  # last visit


def test_two_empty_masks_agree():
    empty = np.zeros(SHAPE, bool)
    f = review.visit_features(empty, brain(), 1.0, other=empty, mi=np.zeros(SHAPE))
    assert f["dice_sources"] == 1.0 and f["tlv_diff_ml"] == 0 and math.isnan(f["mi_mean"])


def test_robust_z():
    assert np.allclose(review.robust_z([1, 1, 1, 1]), 0)
    z = review.robust_z([0, 0, 0, 0, 3])  # MAD 0: the SD
    assert z[-1] > 1.5 and np.allclose(z[:-1], z[0])
    z = review.robust_z([1.0, np.nan, 2.0, 3.0])
    assert math.isnan(z[1]) and z[2] == 0 and z[0] == -z[3]
    assert np.isnan(review.robust_z([5.0])).all()


def test_registration_cost_is_the_last_metric_line(tmp_path):
    log = tmp_path / "reg.log"
    log.write_text("x INFO t2lesion: rigid registration: metric -0.4100 after 30 iterations (a)\n"
                   "x INFO t2lesion: rigid registration: metric -0.5234 after 12 iterations (b)\n")
    assert review.registration_cost(log) == pytest.approx(-0.5234)
    assert math.isnan(review.registration_cost(tmp_path / "absent.log"))
    assert math.isnan(review.registration_cost(None))


def test_queue_sources():
    assert review.queue_sources(["classical", "unet"]) == ("unet", "classical")
    assert review.queue_sources(["unet"]) == ("unet", None)
    assert review.queue_sources(["classical"]) == ("classical", None)


def _write(arr, path, spacing=(1.0, 1.0, 3.0)):
    img = sitk.GetImageFromArray(np.asarray(arr, np.float32))
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return str(path)


def test_files_in_queue_out(tmp_path):
    """The path-level entry points: per-visit rows, then the queue file; a mask on another grid
    is one error naming it."""
    rng = np.random.default_rng(1)
    les = blobs(rng)
    tsvs = []
    for w in WEEKS:
        d = tmp_path / f"w{w}"
        d.mkdir()
        m = les if w != 24 else np.zeros(SHAPE, bool)
        paths = {"mask": _write(m, d / "mask.nii.gz"), "brain": _write(brain(), d / "brain.nii.gz"),
                 "mi": _write(np.where(les, 0.3 if w == 24 else 0.01, 0.0), d / "mi.nii.gz"),
                 "other": _write(les, d / "other.nii.gz")}
        if w == 24:
            paths["prev"] = paths["next"] = _write(les, d / "nb.nii.gz")
        out = d / "row.tsv"
        review.run_visit_features(paths, out, participant_id="sub-001", session=f"ses-w{w:03d}", week=w,
                                  source="unet", other_source="classical", reg_kind="mni" if w == 0 else "baseline")
        tsvs.append(out)
    row = pd.read_csv(tsvs[1], sep="\t")
    assert row.loc[0, "n_flicker"] == len(np.unique(review._label(les, 18, 3).lab))
    assert row.loc[0, "tlv_other_ml"] == pytest.approx(les.sum() * 0.003)
    queue = review.run_queue(tsvs, tmp_path / "queue.tsv")
    assert queue.iloc[0]["session"] == "ses-w024"
    assert review.top_ids(tmp_path / "queue.tsv", 1) == ["sub-001_ses-w024"]
    assert len(review.top_ids(tmp_path / "queue.tsv", None)) == 3
    bad = _write(les[:, :16], tmp_path / "small.nii.gz")
    with pytest.raises(InputError, match="small.nii.gz: other is not on the grid"):
        review.run_visit_features({"mask": _write(les, tmp_path / "m.nii.gz"), "brain": bad.replace("small", "m"),
                                   "other": bad}, tmp_path / "x.tsv", participant_id="sub-001",
                                  session="ses-w000", week=0, source="unet", other_source="classical",
                                  reg_kind="mni")


def test_review_figure_draws_the_top_visits(tmp_path):
    rng = np.random.default_rng(2)
    les = blobs(rng)
    flair = _write(rng.random(SHAPE) + les, tmp_path / "flair.nii.gz")
    a, b = _write(les, tmp_path / "a.nii.gz"), _write(np.zeros(SHAPE), tmp_path / "b.nii.gz")
    q = pd.DataFrame({"rank": [1, 2], "participant_id": ["sub-001", "sub-002"], "session": ["ses-w000"] * 2,
                      "score": [5.0, 1.0], "top_reason": ["dice_sources", ""]})
    q.to_csv(tmp_path / "queue.tsv", sep="\t", index=False)
    ids = ["sub-001_ses-w000", "sub-002_ses-w000"]
    shown = review.run_review_figure(tmp_path / "queue.tsv", ids, [flair] * 2, [a] * 2, [b] * 2,
                                     tmp_path / "fig.png", n_visits=1, trial="t")
    assert len(shown) == 1 and shown[0].startswith("#1 sub-001_ses-w000")
    assert (tmp_path / "fig.png").stat().st_size > 1000
    with pytest.raises(InputError, match="sub-001_ses-w000 is not a visit of trial t"):
        review.run_review_figure(tmp_path / "queue.tsv", ids[1:], [flair], [a], [b], tmp_path / "f.png", trial="t")
    # one source (classical alone): its mask in blue, none of it drawn as overlap with itself
    from matplotlib.image import imread

    review.run_review_figure(tmp_path / "queue.tsv", ids, [flair] * 2, [a] * 2, [a] * 2, tmp_path / "one.png",
                             n_visits=1, names=("classical", "classical"), trial="t")
    review.run_review_figure(tmp_path / "queue.tsv", ids, [flair] * 2, [a] * 2, [a] * 2, tmp_path / "self.png",
                             n_visits=1, names=("classical", "unet"), trial="t")

    def pixels(png, hue):  # blue: the source alone; purple: overlap (the legend too draws its colours)
        r, g, b = np.moveaxis(imread(png)[..., :3], -1, 0)
        return int(((b - r > 0.3) if hue == "blue" else (np.minimum(r, b) - g > 0.2)).sum())

    assert pixels(tmp_path / "one.png", "blue") > 50 and pixels(tmp_path / "one.png", "purple") == 0
    assert pixels(tmp_path / "self.png", "purple") > 50


def test_review_bundle_opens_in_itksnap_with_relative_paths(tmp_path):
    """A bundle per visit of the queue's top k: the workspace is valid XML, names files that exist
    beside it by relative paths, with the FLAIR as main image and the mask as segmentation; the
    maps come back on the native FLAIR grid."""
    import xml.etree.ElementTree as ET

    rng = np.random.default_rng(3)
    native = tmp_path / "native"
    native.mkdir()
    les = blobs(rng)
    raw = tmp_path / "bids/sub-002/ses-w000/anat"
    raw.mkdir(parents=True)
    flair = _write(rng.random(SHAPE) + les, raw / "sub-002_ses-w000_FLAIR.nii.gz", spacing=(0.9, 0.9, 3.0))
    flair_arr = sitk.GetArrayFromImage(sitk.ReadImage(flair))
    # the T1w and T2w show the same head moved between the sequences: anatomy at FLAIR point p
    # lies at p + shift in them (whole voxels, so that the resampling is exact inside)
    shifts = {"t1w": np.array([1.8, -2.7, 3.0]), "t2w": np.array([-3.6, 0.9, -3.0])}
    moved = {}
    for key, shift in shifts.items():
        img = sitk.GetImageFromArray(flair_arr.astype(np.int16) * 100)
        img.SetSpacing((0.9, 0.9, 3.0))
        img.SetOrigin(tuple(shift))
        moved[key] = str(native / f"{key}.nii.gz")
        sitk.WriteImage(img, moved[key])
    coreg = {"flair_to_t1w": -shifts["t1w"], "t2w_to_t1w": shifts["t2w"] - shifts["t1w"]}  # T1w points -> the contrast's
    for key, t in coreg.items():
        sitk.WriteTransform(sitk.TranslationTransform(3, tuple(t)), str(native / f"{key}.tfm"))
    inputs = {"flair": [], "t1w": [], "t2w": [], "mask": [], "prob": [], "mi": [], "xfm": [], "flair_to_t1w": [],
              "t2w_to_t1w": []}
    ids = []
    for s in (1, 2):
        ids.append(f"sub-00{s}_ses-w000")
        inputs["flair"].append(flair)
        inputs["t1w"].append(moved["t1w"])
        inputs["t2w"].append(moved["t2w"])
        inputs["flair_to_t1w"].append(str(native / "flair_to_t1w.tfm"))
        inputs["t2w_to_t1w"].append(str(native / "t2w_to_t1w.tfm"))
        inputs["mask"].append(_write(les, native / f"mask{s}.nii.gz", spacing=(0.9, 0.9, 3.0)))
        inputs["prob"].append(_write(les * 0.8, native / f"prob{s}.nii.gz", spacing=(0.9, 0.9, 3.0)))
        inputs["mi"].append(_write(les * 0.3, native / f"mi{s}.nii.gz", spacing=(0.9, 0.9, 3.0)))
        xfm = native / f"xfm{s}.tfm"
        sitk.WriteTransform(sitk.AffineTransform(3), str(xfm))  # the MNI grid is the native one here
        inputs["xfm"].append(str(xfm))
    q = pd.DataFrame({"rank": [1, 2], "participant_id": ["sub-002", "sub-001"], "session": ["ses-w000"] * 2,
                      "score": [3.0, 1.0]})
    q.to_csv(tmp_path / "queue.tsv", sep="\t", index=False)
    out = tmp_path / "bundles"
    table = review.run_bundles(tmp_path / "queue.tsv", ids, inputs, out, top_k=1)
    assert list(table["visit"]) == ["sub-002_ses-w000"] and not (out / "sub-001_ses-w000").exists()
    ws = out / table.loc[0, "workspace"]
    # where the reader saves the correction: the raw FLAIR's path under derivatives/lesions-reviewed
    assert table.loc[0, "save_correction_as"] == str(
        tmp_path / "bids/derivatives/lesions-reviewed/sub-002/ses-w000/anat/"
                   "sub-002_ses-w000_space-FLAIR_desc-lesion_mask.nii.gz")
    assert pd.read_csv(out / "bundles.tsv", sep="\t").loc[0, "save_correction_as"] == table.loc[0, "save_correction_as"]
    root = ET.parse(ws).getroot()  # valid XML
    layers = root.find("folder[@key='Layers']").findall("folder")
    found = {}
    for layer in layers:
        path = layer.find("entry[@key='AbsolutePath']").get("value")
        role = layer.find("entry[@key='Role']").get("value")
        assert not Path(path).is_absolute() and (ws.parent / path).is_file(), path
        found[role] = found.get(role, []) + [path]
    assert len(layers) == 6 and found["MainRole"] == ["sub-002_ses-w000_FLAIR.nii.gz"], found
    assert found["SegmentationRole"] == ["sub-002_ses-w000_space-FLAIR_desc-lesion_mask.nii.gz"]
    prob = sitk.ReadImage(str(ws.parent / "sub-002_ses-w000_space-FLAIR_desc-lesion_probseg.nii.gz"))
    assert prob.GetSpacing() == pytest.approx((0.9, 0.9, 3.0))
    assert np.allclose(sitk.GetArrayFromImage(prob), les * 0.8, atol=1e-5)
    # the T1w and T2w on the FLAIR's grid, placed by the coregistration: the FLAIR's own voxels
    # (x 100, in their int16) wherever the moved images cover the FLAIR's
    for key in ("T1w", "T2w"):
        img = sitk.ReadImage(str(ws.parent / f"sub-002_ses-w000_space-FLAIR_{key}.nii.gz"))
        assert io.same_geometry(img, sitk.ReadImage(flair)) and img.GetPixelID() == sitk.sitkInt16, key
        arr = sitk.GetArrayFromImage(img)
        assert np.array_equal(arr[1:-1, 4:-4, 4:-4], (flair_arr.astype(np.int16) * 100)[1:-1, 4:-4, 4:-4]), key
    # a native mask off the FLAIR's grid is one error naming it
    inputs["mask"][1] = _write(les, native / "bad.nii.gz")
    with pytest.raises(InputError, match="bad.nii.gz: not on the grid of the native FLAIR"):
        review.run_bundles(tmp_path / "queue.tsv", ids, inputs, tmp_path / "b2", top_k=None)
