"""Preprocessing (docs/DESIGN.md §2, issue 3) checked against the synthetic trial's known truth.

One tiny synthetic subject (2 visits, 1 x 1 x 3 mm native, random pose, bias, noise) is
preprocessed once per module with the ``template`` skull stripper; every extractor's brain
mask is then scored on both visits (deepbet, the default, runs offline; ROBEX: slow marker).
The checks: follow-up alignment error vs the true pose, lesion centroids across
visits, brain-mask Dice per extractor, N4 residual bias, GT lesion volume, outputs and their grid,
normalisation, QC figure, thread settings and input errors naming the file.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from t2lesion.errors import InputError
from t2lesion.plots.qc import qc_png
from t2lesion.preprocess import (
    METHODS,
    compose,
    coregister_to_t1w,
    n4,
    normalise,
    normalise_array,
    preprocess_visit,
    register_to_baseline,
    register_to_mni,
    resample_mask,
    resample_visit,
    set_threads,
    skull_strip,
    target_grid,
)
from t2lesion.preprocess.n4 import residual_bias_cv
from t2lesion.preprocess import skullstrip as ss
from t2lesion.preprocess._common import (
    matrix_to_transform,
    mni_brain_mask,
    mni_template,
    nib_to_sitk,
    transform_to_matrix,
)

MODS = ("T1w", "T2w", "FLAIR")
THREADS = 2


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Two visits of one tiny synthetic subject, written as BIDS-like native files."""
    from t2lesion.synth import SynthParams, simulate_subject_visits

    root = tmp_path_factory.mktemp("synth")
    params = SynthParams.tiny(tlv_median_ml=8.0)
    visits = simulate_subject_visits(params, 0)
    out = []
    for v in visits:
        prefix = f"{v.participant_id}_ses-{v.session}"
        paths = {}
        for m in MODS:
            paths[m] = root / f"{prefix}_{m}.nii.gz"
            sitk.WriteImage(sitk.Cast(v.image(m), sitk.sitkInt16), str(paths[m]))
        paths["gt"] = root / f"{prefix}_desc-lesion_mask.nii.gz"
        sitk.WriteImage(v.to_image(v.lesion_mask), str(paths["gt"]))
        out.append((v, prefix, paths))
    return out


@pytest.fixture(scope="module")
def processed(synth, tmp_path_factory):
    """Both visits through every step (template skull stripping; every visit its own brain
    mask, so that each extractor is scored on both), outputs + CPU times."""
    out_dir = tmp_path_factory.mktemp("preproc")
    results, baseline = [], None
    for v, prefix, p in synth:
        outs, times = preprocess_visit(
            p["T1w"], p["T2w"], p["FLAIR"], out_dir, prefix, gt_mask=p["gt"], baseline=baseline,
            skull_strip_method="template", followup_mask="own", threads=THREADS,
        )
        baseline = baseline or outs
        results.append((outs, times))
    return results


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def _arr(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _matrix(path) -> np.ndarray:
    return transform_to_matrix(sitk.ReadTransform(str(path)))


# ----------------------------------------------------------------------------- registration
def test_followup_alignment_error_below_1mm(synth, processed):
    (v0, _, _), (v1, _, _) = synth
    a_bl = _matrix(processed[0][0]["xfm_T1w"])  # MNI -> baseline native
    a_fu = _matrix(processed[1][0]["xfm_T1w"])  # MNI -> follow-up native
    estimated = a_fu @ np.linalg.inv(a_bl)  # baseline native -> follow-up native
    truth = np.linalg.inv(v1.native_to_subject) @ v0.native_to_subject
    pts = v0.brain_points()
    err = np.linalg.norm((pts @ estimated.T - pts @ truth.T)[:, :3], axis=1)
    assert err.mean() < 1.0, f"follow-up alignment error {err.mean():.2f} mm"


def test_same_lesion_centroids_land_within_1_5mm(synth, processed):
    tables = [v.lesions.set_index("lesion_id") for v, _, _ in synth]
    common = tables[0].index.intersection(tables[1].index)
    assert len(common) >= 5
    cols = ["x_native", "y_native", "z_native"]
    mni = []
    for (outs, _), t in zip(processed, tables):
        to_native = _matrix(outs["xfm_FLAIR"])  # GT lies on the FLAIR grid
        x = np.c_[t.loc[common, cols].to_numpy(float), np.ones(len(common))]
        mni.append((x @ np.linalg.inv(to_native).T)[:, :3])
    dist = np.linalg.norm(mni[0] - mni[1], axis=1)
    assert dist.mean() < 1.5, f"mean centroid distance {dist.mean():.2f} mm"


def test_baseline_lands_near_mni(synth, processed):
    """Subject space is MNI up to a smooth deformation and head scaling: a few mm at most."""
    v0 = synth[0][0]
    a_bl = _matrix(processed[0][0]["xfm_T1w"])
    pts = v0.brain_points()
    subject = pts @ v0.native_to_subject.T
    err = np.linalg.norm((subject @ a_bl.T - pts)[:, :3], axis=1)
    assert err.mean() < 5.0, f"baseline -> MNI differs from the subject frame by {err.mean():.1f} mm"


def test_composed_transforms_chain_the_steps(processed):
    outs0, _ = processed[0]
    outs1, _ = processed[1]
    expected = compose(_matrix(outs0["to_mni"]), _matrix(outs1["to_baseline"]), _matrix(outs1["to_t1w_FLAIR"]))
    np.testing.assert_allclose(_matrix(outs1["xfm_FLAIR"]), expected, atol=1e-6)
    # every composed transform is rigid
    for m in MODS:
        r = _matrix(outs1[f"xfm_{m}"])[:3, :3]
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-6)


def test_compose_order_matches_sequential_application():
    rng = np.random.default_rng(0)
    txs = []
    for _ in range(3):
        tx = sitk.Euler3DTransform()
        tx.SetRotation(*rng.uniform(-0.3, 0.3, 3))
        tx.SetTranslation(tuple(rng.uniform(-10, 10, 3)))
        tx.SetCenter(tuple(rng.uniform(-50, 50, 3)))
        txs.append(tx)
    p = (12.0, -7.0, 30.0)
    seq = txs[2].TransformPoint(txs[1].TransformPoint(txs[0].TransformPoint(p)))
    m = compose(*txs)
    np.testing.assert_allclose(m @ np.r_[p, 1.0], np.r_[seq, 1.0], atol=1e-9)
    np.testing.assert_allclose(matrix_to_transform(m).TransformPoint(p), seq, atol=1e-9)


def test_followup_registration_with_baseline_mask_only(synth, processed, tmp_path, caplog):
    """followup_mask='baseline': the follow-up head is matched to the baseline brain, and the fit
    is checked: the baseline's brain, carried over, must lie inside the follow-up's head."""
    import logging

    from t2lesion.preprocess.register import MIN_BRAIN_OVERLAP, _check_overlap, brain_overlap, visit_head

    (v0, _, _), (v1, _, _) = synth
    outs0, outs1 = processed[0][0], processed[1][0]
    xfm = tmp_path / "to_baseline.tfm"
    with caplog.at_level(logging.INFO, logger="t2lesion"):
        register_to_baseline(outs1["n4_T1w"], None, outs0["n4_T1w"], outs0["native_mask"], xfm, threads=THREADS)
    estimated = _matrix(xfm)
    truth = np.linalg.inv(v1.native_to_subject) @ v0.native_to_subject
    pts = v0.brain_points()
    assert np.linalg.norm((pts @ estimated.T - pts @ truth.T)[:, :3], axis=1).mean() < 1.0
    good = float(re.search(r"share of the baseline's brain inside this visit's head (\d\.\d+)", caplog.text)[1])
    assert good > 0.99, caplog.text
    # the same check of a fit 40 mm off (left-right): an error; the scalp's margin hides small misfits
    head = visit_head(sitk.ReadImage(str(outs1["n4_T1w"])))
    bl_mask = sitk.ReadImage(str(outs0["native_mask"]))
    fit = sitk.ReadTransform(str(xfm))
    off = brain_overlap(head, bl_mask, sitk.CompositeTransform([fit, sitk.TranslationTransform(3, (40.0, 0, 0))])
                        .GetInverse())[1]
    assert off < MIN_BRAIN_OVERLAP["baseline_head"], off
    with pytest.raises(InputError, match=r"sub-7_ses-w024_T1w\.nii: rigid registration to baseline failed \(share of "
                                         r"the baseline's brain inside this visit's head 0\.\d\d < 0\.9\)"):
        _check_overlap(off, "baseline_head", "sub-7_ses-w024_T1w.nii")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="t2lesion"):
        _check_overlap(0.95, "baseline_head", "sub-7_ses-w024_T1w.nii")
    assert "sub-7_ses-w024_T1w.nii: after registration to the baseline only 95.0% of the baseline's brain" in caplog.text
    # and the baseline mask carried through baseline -> MNI matches the follow-up's own
    out = {m: tmp_path / f"{m}.nii.gz" for m in MODS}
    resample_visit(
        images={m: outs1[f"n4_{m}"] for m in MODS},
        to_t1w={m: outs1[f"to_t1w_{m}"] for m in ("T2w", "FLAIR")},
        brain_mask=outs0["native_mask"], brain_mask_space="baseline",
        baseline_to_mni=outs0["to_mni"], to_baseline=xfm,
        out_images=out, out_mask=tmp_path / "mask.nii.gz",
        out_xfms={m: tmp_path / f"{m}.tfm" for m in MODS}, threads=THREADS,
    )
    assert _dice(_arr(tmp_path / "mask.nii.gz"), _arr(outs0["mask"])) > 0.97


def test_coregistration_recovers_a_known_motion(synth, processed, tmp_path):
    """The synthetic contrasts share the visit's pose: move the FLAIR by a known rigid motion
    and the T2w by another; coregistration must find them (docs/DESIGN.md §2, intra-visit)."""
    v0 = synth[0][0]
    outs0 = processed[0][0]
    t1w = sitk.ReadImage(str(outs0["n4_T1w"]))
    centre = t1w.TransformContinuousIndexToPhysicalPoint(tuple((np.array(t1w.GetSize()) - 1) / 2.0))
    pts = v0.brain_points()
    for m, angles_deg, shift_mm in (("FLAIR", (2.0, -1.5, 1.0), (1.5, -2.0, 2.0)),
                                    ("T2w", (-1.0, 0.5, -2.5), (-2.5, 1.0, -1.0))):
        motion = sitk.Euler3DTransform()
        motion.SetCenter(centre)
        motion.SetRotation(*np.deg2rad(angles_deg))
        motion.SetTranslation(shift_mm)
        img = sitk.ReadImage(str(outs0[f"n4_{m}"]), sitk.sitkFloat32)
        # the moved image shows at p what the original shows at motion(p): a T1w point p
        # lies at motion^-1(p) in it
        sitk.WriteImage(sitk.Resample(img, img, motion, sitk.sitkLinear, 0.0), str(tmp_path / f"{m}.nii.gz"))
        coregister_to_t1w(tmp_path / f"{m}.nii.gz", outs0["n4_T1w"], tmp_path / f"{m}.tfm", threads=THREADS)
        truth = np.linalg.inv(transform_to_matrix(motion))
        err = np.linalg.norm((pts @ (_matrix(tmp_path / f"{m}.tfm") - truth).T)[:, :3], axis=1)
        assert err.mean() < 0.5, f"{m}: coregistration error {err.mean():.2f} mm"


def test_oblique_and_mismatched_grids_are_coregistered_by_their_headers(synth, processed, tmp_path):
    """The same head stored on other grids: a FLAIR on an oblique grid (turned 20 and -15
    degrees, 1 x 1 x 3 mm) and a T2w with 0.9 x 0.9 x 4 mm voxels and a smaller field of view.
    Their headers place them where they are: coregistration must stay at the identity."""
    v0 = synth[0][0]
    outs0 = processed[0][0]
    pts = v0.brain_points()
    turn = sitk.Euler3DTransform()
    turn.SetRotation(np.deg2rad(20.0), np.deg2rad(-15.0), 0.0)
    for m in ("FLAIR", "T2w"):
        img = sitk.ReadImage(str(outs0[f"n4_{m}"]), sitk.sitkFloat32)
        size, spacing = np.array(img.GetSize()), np.array(img.GetSpacing())
        centre = np.array(img.TransformContinuousIndexToPhysicalPoint(tuple((size - 1) / 2.0)))
        if m == "FLAIR":
            d = np.array(turn.GetMatrix()).reshape(3, 3) @ np.array(img.GetDirection()).reshape(3, 3)
            new_spacing, new_size = spacing, size
        else:
            d = np.array(img.GetDirection()).reshape(3, 3)
            new_spacing = np.array([0.9, 0.9, 4.0])
            new_size = np.ceil(size * spacing / new_spacing * 0.85).astype(int)  # 85 % of the field of view
        ref = sitk.Image([int(n) for n in new_size], sitk.sitkFloat32)
        ref.SetSpacing(tuple(float(x) for x in new_spacing))
        ref.SetDirection(tuple(d.ravel()))
        ref.SetOrigin(tuple(centre - d @ (new_spacing * (new_size - 1) / 2.0)))
        moved = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkBSpline, 0.0, sitk.sitkFloat32)
        sitk.WriteImage(moved, str(tmp_path / f"{m}.nii.gz"))
        coregister_to_t1w(tmp_path / f"{m}.nii.gz", outs0["n4_T1w"], tmp_path / f"{m}.tfm", threads=THREADS)
        err = np.linalg.norm((pts @ (_matrix(tmp_path / f"{m}.tfm") - np.eye(4)).T)[:, :3], axis=1)
        assert err.mean() < 0.5, f"{m}: {err.mean():.2f} mm off the identity"


def test_coregistration_is_checked_by_the_contrasts_whole_heads(synth, processed, tmp_path, caplog):
    """Intra-visit fits are checked: the contrast's whole head, carried onto the T1w, must lie
    inside the T1w's. Good fits and a slab pass, a header turned by 90 degrees stops the job
    naming the raw file, a fit 10 mm off warns (docs/DESIGN.md §2)."""
    import logging

    from t2lesion.preprocess.register import _check_overlap, brain_overlap, coregister_visit, whole_head

    outs0 = processed[0][0]
    t1w = sitk.ReadImage(str(outs0["n4_T1w"]))
    heads = {m: sitk.GetArrayFromImage(whole_head(sitk.ReadImage(str(outs0[f"n4_{m}"])))) for m in MODS}
    for m in ("T2w", "FLAIR"):  # one head across the contrasts (the Otsu head_mask is not: T2w's is the scalp)
        assert _dice(heads["T1w"], heads[m]) > 0.99, m
    # the same head from the same voxels stored along other axes (a sagittal acquisition)
    sag = sitk.PermuteAxes(t1w, [2, 0, 1])
    back = sitk.Resample(whole_head(sag), t1w, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    assert _dice(sitk.GetArrayFromImage(back), heads["T1w"]) > 0.99

    with caplog.at_level(logging.INFO, logger="t2lesion"):
        coregister_visit({m: outs0[f"n4_{m}"] for m in ("T2w", "FLAIR")}, outs0["n4_T1w"],
                         {m: tmp_path / f"{m}.tfm" for m in ("T2w", "FLAIR")}, threads=THREADS,
                         sources={"T2w": "sub-1_T2w.nii.gz", "FLAIR": "sub-1_FLAIR.nii.gz"})
    shares = [float(x) for x in re.findall(r"share of its head inside the T1w's head (\d\.\d+)", caplog.text)]
    assert len(shares) == 2 and min(shares) > 0.99, caplog.text
    # a FLAIR slab (a third of the slices, the middle ones) lies inside the T1w's head
    flair = sitk.ReadImage(str(outs0["n4_FLAIR"]))
    nz = flair.GetSize()[2]
    sitk.WriteImage(flair[:, :, nz // 3: 2 * nz // 3], str(tmp_path / "slab.nii"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="t2lesion"):
        coregister_visit({"FLAIR": tmp_path / "slab.nii"}, outs0["n4_T1w"], {"FLAIR": tmp_path / "slab.tfm"},
                         threads=THREADS)
    share = float(re.search(r"share of its head inside the T1w's head (\d\.\d+)", caplog.text)[1])
    assert share > 0.99 and "WARNING" not in caplog.text, caplog.text
    # the FLAIR's header turned by 90 degrees about left-right: the identity start cannot reach it.
    # Turned about its first voxel (the direction changed, the origin kept) the images do not
    # overlap, which ITK reports as an exception: an error naming the file. Turned about the image's centre the heads overlap;
    # a head is round enough that 95 % of the turned one still lies inside: a warning only
    turn = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])
    centre = np.array(flair.TransformContinuousIndexToPhysicalPoint(tuple((np.array(flair.GetSize()) - 1) / 2)))
    for pivot in (np.array(flair.GetOrigin()), centre):
        turned = sitk.Image(flair)
        turned.SetDirection(tuple((turn @ np.array(flair.GetDirection()).reshape(3, 3)).ravel()))
        turned.SetOrigin(tuple(pivot + turn @ (np.array(flair.GetOrigin()) - pivot)))
        sitk.WriteImage(turned, str(tmp_path / "turned.nii"))
        args = ({"FLAIR": tmp_path / "turned.nii"}, outs0["n4_T1w"], {"FLAIR": tmp_path / "turned.tfm"})
        if pivot is centre:
            break
        with pytest.raises(InputError, match=r"sub-1_FLAIR\.nii\.gz: rigid registration failed: the image does not "
                                             r"overlap its target .*; check its header's origin and orientation"):
            coregister_visit({"T2w": outs0["n4_T2w"], **args[0]}, args[1],
                             {"T2w": tmp_path / "t2w_ok.tfm", **args[2]}, threads=THREADS,
                             sources={"FLAIR": "sub-1_FLAIR.nii.gz", "T2w": "sub-1_T2w.nii.gz"})
        # neither transform written, not even the T2w's, whose fit came first and passed
        assert not (tmp_path / "turned.tfm").exists() and not (tmp_path / "t2w_ok.tfm").exists()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="t2lesion"):
        coregister_visit(*args, threads=THREADS, sources={"FLAIR": "sub-1_FLAIR.nii.gz"})
    assert re.search(r"sub-1_FLAIR\.nii\.gz: after registration to the visit's T1w only 9\d\.\d% of this image's "
                     r"head lies inside the T1w's head", caplog.text), caplog.text
    # a fit 10 mm off warns, 40 mm off fails
    fit = sitk.ReadTransform(str(outs0["to_t1w_FLAIR"]))
    t1w_head = sitk.BinaryDilate(whole_head(t1w), [3, 3, 1])
    off = {mm: brain_overlap(t1w_head, whole_head(flair),
                             sitk.CompositeTransform([fit, sitk.TranslationTransform(3, (mm, 0.0, 0.0))]))[1]
           for mm in (10.0, 40.0)}
    assert 0.85 < off[10.0] < 0.97 and off[40.0] < 0.85, off
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="t2lesion"):
        _check_overlap(off[10.0], "coregister", "sub-1_FLAIR.nii.gz")
    assert "sub-1_FLAIR.nii.gz: after registration to the visit's T1w only 9" in caplog.text
    with pytest.raises(InputError, match=r"sub-1_FLAIR\.nii\.gz: rigid registration to the visit's T1w failed"):
        _check_overlap(off[40.0], "coregister", "sub-1_FLAIR.nii.gz")


def test_failed_registration_is_reported():
    from t2lesion.preprocess.register import _check_overlap, brain_overlap

    arr = np.zeros((20, 60, 60), np.uint8)
    arr[5:15, 15:45, 15:45] = 1
    mask = sitk.GetImageFromArray(arr)
    mask.SetSpacing((1.0, 1.0, 3.0))
    shift = sitk.TranslationTransform(3, (20.0, 0.0, 0.0))
    assert brain_overlap(mask, mask, sitk.Transform()) == (1.0, 1.0)
    dice, inside = brain_overlap(mask, mask, shift)
    assert dice < 0.5 and inside < 0.5
    with pytest.raises(InputError, match=r"sub-7_T1w\.nii\.gz: rigid registration to baseline failed"):
        _check_overlap(dice, "baseline", "sub-7_T1w.nii.gz")


def test_rotation_search_recovers_large_pose(tmp_path):
    """A 25 degree head tilt (beyond the descent's basin) is still registered to MNI."""
    tpl = mni_template(2)
    m = np.eye(4)
    tx = sitk.Euler3DTransform()
    tx.SetRotation(np.deg2rad(25), np.deg2rad(-10), np.deg2rad(20))
    tx.SetTranslation((8.0, -12.0, 5.0))
    tx.SetCenter((0.0, -18.0, 18.0))
    m = transform_to_matrix(tx)  # native -> MNI
    moved = sitk.Resample(tpl, tpl, tx, sitk.sitkLinear, 0.0) * 1000.0
    sitk.WriteImage(moved, str(tmp_path / "t1.nii.gz"))
    sitk.WriteImage(sitk.Cast(moved > 150, sitk.sitkUInt8), str(tmp_path / "mask.nii.gz"))
    register_to_mni(tmp_path / "t1.nii.gz", tmp_path / "mask.nii.gz", tmp_path / "x.tfm", threads=THREADS,
                    template_resolution=2)
    est = _matrix(tmp_path / "x.tfm")  # MNI -> native
    truth = np.linalg.inv(m)
    arr = sitk.GetArrayFromImage(tpl)
    idx = np.argwhere(arr > 0.2)[::50][:, ::-1]
    pts = np.array([tpl.TransformIndexToPhysicalPoint([int(i) for i in q]) for q in idx])
    pts = np.c_[pts, np.ones(len(pts))]
    assert np.linalg.norm((pts @ est.T - pts @ truth.T)[:, :3], axis=1).mean() < 1.5


# ----------------------------------------------------------------------------- skull stripping
#: Minimum brain-mask Dice against the generator's truth, per extractor and visit.
MIN_BRAIN_DICE = {"deepbet": 0.97, "robex": 0.93, "template": 0.93}


@pytest.fixture(scope="module")
def stripped(synth, processed, tmp_path_factory):
    """Brain masks of both visits' N4 T1w by each extractor, made once (lazily) per module;
    ROBEX, at about 100 CPU-s a visit, strips the baseline only."""
    out_dir = tmp_path_factory.mktemp("stripped")
    cache: dict[str, list[np.ndarray]] = {}

    def get(method: str) -> list[np.ndarray]:
        if method not in cache:
            masks = []
            for (v, _, _), (outs, _) in list(zip(synth, processed))[: 1 if method == "robex" else None]:
                if method == "template":  # the processed fixture's own masks
                    masks.append(_arr(outs["native_mask"]))
                    continue
                out = out_dir / f"{method}_{v.session}.nii.gz"
                skull_strip(outs["n4_T1w"], out, method=method, threads=THREADS)
                masks.append(_arr(out))
            cache[method] = masks
        return cache[method]

    return get


@pytest.mark.parametrize(
    "method", [pytest.param(m, marks=pytest.mark.slow) if m == "robex" else m for m in METHODS]
)
def test_skull_strip_dice_against_truth(synth, stripped, method):
    """Every extractor, every visit (ROBEX: the baseline), against the generator's true brain mask."""
    assert set(METHODS) == set(MIN_BRAIN_DICE)
    for (v, _, _), mask in zip(synth, stripped(method)):
        d = _dice(mask, v.brain_mask)
        assert d >= MIN_BRAIN_DICE[method], f"{v.session}: {method} brain-mask Dice {d:.3f}"


@pytest.mark.slow
def test_deepbet_not_below_robex(synth, stripped):
    for (v, _, _), db, rb in zip(synth, stripped("deepbet"), stripped("robex")):
        d_db, d_rb = _dice(db, v.brain_mask), _dice(rb, v.brain_mask)
        print(f"{v.session}: brain-mask Dice deepbet {d_db:.4f}, ROBEX {d_rb:.4f}")
        assert d_db >= d_rb - 0.01, f"{v.session}: deepbet Dice {d_db:.3f} < ROBEX {d_rb:.3f} - 0.01"


def test_deepbet_runs_offline_and_deterministically(processed, stripped, monkeypatch, tmp_path):
    """No network: every socket connection fails; the weights come from the installed wheel.
    The same image gives the same mask (here at another thread count, too)."""
    import socket

    def no_network(*args, **kwargs):
        raise OSError("network access attempted during skull stripping")

    for name in ("connect", "connect_ex", "sendto"):
        monkeypatch.setattr(socket.socket, name, no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    out = tmp_path / "mask.nii.gz"
    skull_strip(processed[0][0]["n4_T1w"], out, method="deepbet", threads=1)
    np.testing.assert_array_equal(_arr(out), stripped("deepbet")[0])


def test_deepbet_weights_ship_inside_the_package():
    import deepbet

    paths = ss.deepbet_weights()
    assert sorted(p.name for p in paths.values()) == ["bbox_model.pt", "model.pt"]
    site = Path(deepbet.__file__).resolve().parents[1]
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 1_000_000 and site in p.resolve().parents


def test_missing_deepbet_weight_file_is_named(processed, monkeypatch, tmp_path):
    import deepbet.utils

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(b"")
    monkeypatch.setattr(deepbet.utils, "DATA_PATH", str(tmp_path))
    out = tmp_path / "mask.nii.gz"
    with pytest.raises(RuntimeError, match=r"skull stripping \(deepbet\) failed: deepbet weight file\(s\) missing: "
                       + str(tmp_path / "models" / "bbox_model.pt").replace(".", r"\.")):
        skull_strip(processed[0][0]["n4_T1w"], out, method="deepbet")
    assert not out.exists()


def test_deepbet_uses_the_rule_threads_on_cpu(monkeypatch):
    """torch runs with the rule's thread count and deterministic algorithms, on the CPU,
    and the caller's torch settings come back afterwards."""
    import torch
    from deepbet.bet import BrainExtraction

    seen = {}

    def fake_run_model(self, x, *args, **kwargs):
        seen.update(threads=torch.get_num_threads(), det=torch.are_deterministic_algorithms_enabled(),
                    device=next(self.model.parameters()).device.type)
        self.bbox = (slice(None),) * 3
        return (x > 0).astype(np.float32)

    monkeypatch.setattr(BrainExtraction, "run_model", fake_run_model)
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    arr = np.zeros((8, 32, 32), np.float32)
    arr[2:6, 8:24, 8:20] = 500
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 3.0))
    img.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))  # not axis-aligned to RAS
    want = 3 if before[0] != 3 else 2
    mask = ss._strip_deepbet(img, threads=want)
    assert seen == {"threads": want, "det": True, "device": "cpu"}
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before
    # the mask comes back on the image's own voxel grid, whatever its orientation
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), arr > 0)
    assert mask.GetDirection() == img.GetDirection() and mask.GetSpacing() == img.GetSpacing()


def test_deepbet_without_a_head_is_an_input_error(tmp_path):
    src = tmp_path / "sub-9_T1w.nii.gz"
    sitk.WriteImage(sitk.Image([32, 32, 8], sitk.sitkInt16), str(src))
    with pytest.raises(InputError, match=r"sub-9_T1w\.nii\.gz: skull stripping \(deepbet\) failed"):
        skull_strip(src, tmp_path / "m.nii.gz", method="deepbet")


def test_rescale_for_robex_is_scanner_like():
    img = sitk.GetImageFromArray(np.random.default_rng(0).uniform(0, 1, (8, 16, 16)).astype(np.float32))
    out = sitk.GetArrayFromImage(ss.rescale_scanner_like(img))
    assert out.dtype == np.int16 and out.min() >= 0 and 900 <= np.percentile(out, 99.5) <= 1000


def test_robex_gets_the_thread_count(monkeypatch, tmp_path):
    """ROBEX runs as a subprocess: it must see ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS."""
    seen = {}

    def fake_run(args, capture_output, text, env, check):
        seen.update(env)
        img = sitk.ReadImage(args[1])
        sitk.WriteImage(sitk.Cast(img > 0, sitk.sitkUInt8), args[3])

        class P:
            returncode, stdout, stderr = 0, "", ""

        return P()

    monkeypatch.setattr(ss.subprocess, "run", fake_run)
    arr = np.zeros((8, 32, 32), np.float32)
    arr[2:6, 8:24, 8:24] = 500
    mask = ss._strip_robex(sitk.GetImageFromArray(arr), threads=1)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), arr > 0)  # cropped, then pasted back
    assert seen["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] == "1"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_implausible_brain_volume_fails_loudly(monkeypatch, tmp_path, method):
    img = sitk.GetImageFromArray(np.full((10, 20, 20), 500, np.int16))
    img.SetSpacing((1.0, 1.0, 3.0))
    src = tmp_path / "sub-1_T1w.nii.gz"
    sitk.WriteImage(img, str(src))
    # a 12 mL "brain": the whole tiny image
    monkeypatch.setitem(ss.METHODS, method, lambda t1w, threads: sitk.Cast(t1w > 0, sitk.sitkUInt8))
    with pytest.raises(InputError, match=r"sub-1_T1w\.nii\.gz.*implausible brain volume of 12 mL"):
        skull_strip(src, tmp_path / "mask.nii.gz", method=method)
    assert not (tmp_path / "mask.nii.gz").exists()
    with pytest.raises(InputError, match="unknown skull-strip method"):
        skull_strip(src, tmp_path / "mask.nii.gz", method="bet")


# ----------------------------------------------------------------------------- N4
def _block_cv(ratio: np.ndarray, wm: np.ndarray) -> float:
    cv, n_blocks = residual_bias_cv(ratio, wm)
    assert n_blocks >= 20
    return cv


def _pure_wm(visit) -> np.ndarray:
    """Pure white matter: clean T1w within 5 % of its WM peak (T1w: WM > GM > CSF)."""
    t1, brain = visit.clean["T1w"], visit.brain_mask > 0
    hist, edges = np.histogram(t1[brain], 200)
    level = edges[np.argmax(hist)]
    return brain & (np.abs(t1 / level - 1) < 0.05)


@pytest.mark.parametrize("modality", MODS)
def test_n4_halves_residual_bias(synth, processed, modality):
    v, _, p = synth[0]
    wm = _pure_wm(v)
    safe = np.where(v.clean[modality] > 0, v.clean[modality], 1.0)
    raw = _arr(p[modality]).astype(np.float64)
    corrected = _arr(processed[0][0][f"n4_{modality}"]).astype(np.float64)
    before = _block_cv(raw / safe, wm)
    after = _block_cv(corrected / safe, wm)
    assert after <= 0.5 * before, f"{modality}: residual bias CV {before:.4f} -> {after:.4f}"


# ----------------------------------------------------------------------------- outputs
def test_gt_volume_kept_within_5_percent(synth, processed):
    for (v, _, _), (outs, _) in zip(synth, processed):
        truth_ml = float(v.lesions["volume_ml"].sum())
        img = sitk.ReadImage(str(outs["gt"]))
        ml = float(sitk.GetArrayViewFromImage(img).sum()) * np.prod(img.GetSpacing()) / 1000
        assert abs(ml / truth_ml - 1) < 0.05, f"{v.session}: GT {ml:.3f} mL vs truth {truth_ml:.3f} mL"


def test_outputs_on_target_grid_and_normalised(processed):
    grid = target_grid()
    assert grid.GetSpacing() == (1.0, 1.0, 3.0)
    assert grid.GetSize() == (197, 233, 63)
    for outs, times in processed:
        mask_img = sitk.ReadImage(str(outs["mask"]))
        assert mask_img.GetPixelID() == sitk.sitkUInt8
        mask = sitk.GetArrayFromImage(mask_img).astype(bool)
        assert 800 < mask.sum() * 3e-3 < 2200
        for m in MODS:
            img = sitk.ReadImage(str(outs[f"preproc_{m}"]))
            for a, b in [(img.GetSize(), grid.GetSize()), (img.GetOrigin(), grid.GetOrigin()),
                         (img.GetDirection(), grid.GetDirection())]:
                np.testing.assert_allclose(a, b, atol=1e-4)
            arr = sitk.GetArrayFromImage(img)
            assert arr.dtype == np.float32
            assert not arr[~mask].any()
            v = arr[mask]
            core = v[(v >= np.percentile(v, 1)) & (v <= np.percentile(v, 99))]
            assert abs(core.mean()) < 1e-3 and abs(core.std() - 1) < 1e-3
            assert sitk.ReadTransform(str(outs[f"xfm_{m}"])).GetDimension() == 3
        assert outs["qc"].stat().st_size > 10_000
        assert outs["qc"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert set(times) >= {"n4", "coregister", "skull_strip", "register", "resample", "total"}


def test_template_read_directly_equals_nilearn():
    """The 1 mm template is read from nilearn's shipped file without importing nilearn."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    from t2lesion.io import same_geometry

    ours, theirs = mni_template(1), nib_to_sitk(load_mni152_template(resolution=1))
    assert same_geometry(ours, theirs)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs))
    mask = nib_to_sitk(load_mni152_brain_mask(resolution=1), np.uint8)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mni_brain_mask(1)), sitk.GetArrayFromImage(mask))


def test_normalise_array_clips_and_zscores():
    rng = np.random.default_rng(1)
    arr = rng.normal(100, 10, (10, 20, 20)).astype(np.float32)
    mask = np.zeros(arr.shape, bool)
    mask[2:8, 4:16, 4:16] = True
    arr[5, 10, 10] = 1e6  # outlier inside the brain
    out = normalise_array(arr, mask, clip_percentiles=(0.5, 99.5))
    assert not out[~mask].any()
    assert out.max() < 5  # the outlier was clipped before the statistics
    core = out[mask][(out[mask] >= np.percentile(out[mask], 1)) & (out[mask] <= np.percentile(out[mask], 99))]
    assert abs(core.mean()) < 1e-4 and abs(core.std() - 1) < 1e-4
    with pytest.raises(ValueError, match="constant"):
        normalise_array(np.ones_like(arr), mask)
    with pytest.raises(ValueError, match="clip_percentiles"):
        normalise_array(arr, mask, clip_percentiles=(99.5, 0.5))


def test_qc_png_without_gt_and_bad_geometry(processed, tmp_path):
    outs, _ = processed[0]
    png = qc_png(outs["preproc_T1w"], outs["preproc_T2w"], outs["preproc_FLAIR"], outs["mask"], None,
                 tmp_path / "qc.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InputError, match="desc-n4_T1w"):
        qc_png(outs["preproc_T1w"], outs["preproc_T2w"], outs["preproc_FLAIR"], outs["n4_T1w"], None,
               tmp_path / "qc2.png")


def test_resample_mask_path_level_matches_visit_gt(synth, processed, tmp_path):
    _, _, p = synth[1]
    outs, _ = processed[1]
    out = resample_mask(p["gt"], outs["xfm_FLAIR"], outs["mask"], tmp_path / "gt.nii.gz", threads=1)
    np.testing.assert_array_equal(_arr(out), _arr(outs["gt"]))


def test_resample_normalises_exactly_as_the_path_level_normalise(processed, tmp_path):
    """The resample job normalises in memory; the same as resampling, writing, then normalise()."""
    outs, _ = processed[0]
    plain = {m: tmp_path / f"resampled_{m}.nii.gz" for m in MODS}
    resample_visit(
        images={m: outs[f"n4_{m}"] for m in MODS},
        to_t1w={m: outs[f"to_t1w_{m}"] for m in ("T2w", "FLAIR")},
        brain_mask=outs["native_mask"], baseline_to_mni=outs["to_mni"],
        out_images=plain, out_mask=tmp_path / "mask.nii.gz",
        out_xfms={m: tmp_path / f"{m}.tfm" for m in MODS}, threads=THREADS, normalise=False,
    )
    np.testing.assert_array_equal(_arr(tmp_path / "mask.nii.gz"), _arr(outs["mask"]))
    for m in MODS:
        normalise(plain[m], tmp_path / "mask.nii.gz", tmp_path / f"preproc_{m}.nii.gz")
        np.testing.assert_array_equal(_arr(tmp_path / f"preproc_{m}.nii.gz"), _arr(outs[f"preproc_{m}"]))


def test_a_contrast_covering_part_of_the_brain_is_normalised_on_that_part_or_stopped(processed, tmp_path, caplog):
    """A FLAIR slab (its top slices cut off): below MIN_BRAIN_COVERAGE of the brain the visit
    stops naming the file; above, the job warns and z-scores on the covered brain only, and the
    uncovered brain is 0 (before, its zeros entered the statistics and shifted every z-score)."""
    import logging

    from t2lesion.preprocess.resample import MIN_BRAIN_COVERAGE, WARN_BRAIN_COVERAGE

    outs, _ = processed[0]
    flair = sitk.ReadImage(str(outs["n4_FLAIR"]))
    mask = _arr(outs["mask"]) > 0

    def run(keep_slices: int, name: str):
        cut = tmp_path / f"{name}_slab.nii"  # not <out>.nii: ITK would read a.nii.gz's voxels from a.nii beside it
        sitk.WriteImage(flair[:, :, :keep_slices], str(cut))
        out = {m: tmp_path / f"{name}_{m}.nii.gz" for m in MODS}
        resample_visit(
            images={**{m: outs[f"n4_{m}"] for m in MODS}, "FLAIR": cut},
            to_t1w={m: outs[f"to_t1w_{m}"] for m in ("T2w", "FLAIR")},
            brain_mask=outs["native_mask"], baseline_to_mni=outs["to_mni"],
            out_images=out, out_mask=tmp_path / f"{name}_mask.nii.gz",
            out_xfms={m: tmp_path / f"{name}_{m}.tfm" for m in MODS}, threads=THREADS,
        )
        return out, cut

    n = flair.GetSize()[2]
    with pytest.raises(InputError, match=r"half_slab\.nii: its field of view covers \d+\.\d% of the brain"):
        run(n // 2, "half")
    # a few slices fewer: most of the brain covered
    for keep in range(n - 1, n // 2, -1):
        try:
            with caplog.at_level(logging.WARNING, logger="t2lesion"):
                out, cut = run(keep, f"k{keep}")
        except InputError:
            pytest.fail(f"{keep} of {n} slices")
        covered = _arr(out["FLAIR"]) != 0
        share = (covered & mask).sum() / mask.sum()
        if share < WARN_BRAIN_COVERAGE:
            break
    assert MIN_BRAIN_COVERAGE <= share < WARN_BRAIN_COVERAGE, share
    assert f"{cut}: its field of view covers" in caplog.text
    z = _arr(out["FLAIR"])[covered & mask]
    core = z[(z >= np.percentile(z, 1)) & (z <= np.percentile(z, 99))]
    assert abs(core.mean()) < 0.05 and abs(core.std() - 1) < 0.05, (core.mean(), core.std())
    assert not _arr(out["FLAIR"])[mask & ~covered].any()


def test_gt_geometry_mismatch_is_reported(processed, tmp_path):
    outs, _ = processed[0]
    bad = tmp_path / "sub-9_desc-lesion_mask.nii.gz"
    sitk.WriteImage(sitk.Image([10, 10, 10], sitk.sitkUInt8), str(bad))
    with pytest.raises(InputError, match=r"sub-9_desc-lesion_mask\.nii\.gz: mask geometry"):
        resample_visit(
            images={m: outs[f"n4_{m}"] for m in MODS},
            to_t1w={m: outs[f"to_t1w_{m}"] for m in ("T2w", "FLAIR")},
            brain_mask=outs["native_mask"], baseline_to_mni=outs["to_mni"],
            out_images={m: tmp_path / f"{m}.nii.gz" for m in MODS}, out_mask=tmp_path / "mask.nii.gz",
            out_xfms={m: tmp_path / f"{m}.tfm" for m in MODS}, gt_mask=bad, out_gt_mask=tmp_path / "gt.nii.gz",
        )


# ----------------------------------------------------------------------------- threads and input errors
def test_threads_are_passed_to_itk():
    try:
        set_threads(1)
        assert sitk.ProcessObject_GetGlobalDefaultNumberOfThreads() == 1
        assert os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] == "1"
        set_threads(2)
        assert sitk.ProcessObject_GetGlobalDefaultNumberOfThreads() == 2
    finally:
        set_threads(THREADS)


def _bad_files(d: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    corrupt = d / "sub-c_T1w.nii.gz"
    corrupt.write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    truncated = d / "sub-t_T1w.nii.gz"
    good = sitk.GetImageFromArray(np.ones((8, 16, 16), np.int16))
    sitk.WriteImage(good, str(d / "good.nii"))
    truncated.write_bytes(gzip.compress((d / "good.nii").read_bytes()[:600]))
    four_d = d / "sub-4_T1w.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([good, good]), str(four_d))
    empty = d / "sub-0_T1w.nii"
    hdr = bytearray((d / "good.nii").read_bytes()[:352])
    hdr[40:56] = np.array([3, 0, 16, 8, 1, 1, 1, 1], "<i2").tobytes()  # NIfTI-1 dim[]: x extent 0
    empty.write_bytes(bytes(hdr))
    return {"corrupt": corrupt, "truncated": truncated, "4-D": four_d, "zero extent": empty}


@pytest.mark.parametrize("kind", ["corrupt", "truncated", "4-D", "zero extent"])
def test_bad_inputs_fail_naming_the_file(kind, processed, tmp_path):
    bad = _bad_files(tmp_path / "bad")[kind]
    outs, _ = processed[0]
    calls = [
        lambda: n4(bad, tmp_path / "o.nii.gz"),
        lambda: coregister_to_t1w(bad, outs["n4_T1w"], tmp_path / "x.tfm"),
        lambda: coregister_to_t1w(outs["n4_T2w"], bad, tmp_path / "x.tfm"),
        lambda: skull_strip(bad, tmp_path / "m.nii.gz", method="template"),
        lambda: register_to_mni(bad, outs["native_mask"], tmp_path / "x.tfm"),
        lambda: register_to_mni(outs["n4_T1w"], bad, tmp_path / "x.tfm"),
        lambda: register_to_baseline(bad, None, outs["n4_T1w"], outs["native_mask"], tmp_path / "x.tfm"),
        lambda: normalise(bad, outs["mask"], tmp_path / "o.nii.gz"),
        lambda: resample_mask(bad, outs["xfm_FLAIR"], outs["mask"], tmp_path / "o.nii.gz"),
        lambda: qc_png(bad, outs["preproc_T2w"], outs["preproc_FLAIR"], outs["mask"], None, tmp_path / "q.png"),
    ]
    if kind == "truncated":
        # ITK reads a truncated NIfTI without complaint; the steps that read raw BIDS files
        # (N4 for the images, the GT carriers for the masks) check the voxel data as well.
        calls = [calls[0], calls[8]]
    for call in calls:
        with pytest.raises(InputError) as exc:
            call()
        assert bad.name in str(exc.value)
    assert not (tmp_path / "o.nii.gz").exists() and not (tmp_path / "x.tfm").exists()


def test_bad_transform_file_is_named(processed, tmp_path):
    outs, _ = processed[0]
    bad = tmp_path / "sub-x_from-T1w_to-MNI_xfm.tfm"
    bad.write_text("#Insight Transform File V1.0\nnonsense\n")
    with pytest.raises(InputError, match="sub-x_from-T1w_to-MNI_xfm.tfm"):
        resample_mask(outs["native_mask"], bad, outs["mask"], tmp_path / "o.nii.gz")
