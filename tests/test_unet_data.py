"""Data half of U-Net training (docs/DESIGN.md §3, §6): fold split, visit store, window index, loader
and augmentation, on tiny synthetic visits (24 × 48 × 48 at 3 × 1 × 1 mm)."""

from __future__ import annotations

import json
import math
import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from t2lesion.errors import InputError
from t2lesion.unet.augment import augment, copy_channels, draw_augmentation, resample_region, warp, warp_sample
from t2lesion.unet.data import PatchDataset
from t2lesion.unet.folds import read_folds, split_folds, write_folds
from t2lesion.unet.losses import LossConfig, alpha_map
from t2lesion.unet.patches import (
    INDEX_COLUMNS,
    build_index,
    index_windows,
    read_index,
    store_visit,
    write_fold_indices,
)
from t2lesion.unet.windows import window_corners

SHAPE = (24, 48, 48)
PATCH = (8, 16, 16)


# --------------------------------------------------------------------------- synthetic visits


def _write(path, arr, spacing=(1.0, 1.0, 3.0), origin=(0.0, 0.0, 0.0)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))
    return path


def _ellipsoid(shape, centre, radii):
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return ((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 + ((xx - centre[2]) / radii[2]) ** 2 <= 1


def make_visit(folder, name="v", seed=0, lesions=True):
    """Brain: an ellipsoid inside the volume; lesions: a big cuboid, a small one, an ellipsoid,
    and a lesion that sticks out of the brain box (to tell whole-visit α from cropped α)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    brain = _ellipsoid(SHAPE, (11.5, 24, 24), (9, 18, 17))
    gt = np.zeros(SHAPE, bool)
    if lesions:
        gt[8:12, 14:22, 12:20] = True  # 256 voxels
        gt[14:15, 30:32, 28:30] = True  # 4 voxels
        gt |= _ellipsoid(SHAPE, (12, 26, 34), (2, 3, 3))
        gt[10:12, 20:24, 2:10] = True  # crosses the brain box's x edge (box starts at x = 7)
    paths = {}
    for i, mod in enumerate(("T2w", "FLAIR", "T1w")):
        img = np.where(brain, rng.normal(0, 1, SHAPE), 0.0) + (2.0 - i) * gt
        paths[mod] = _write(folder / f"{name}_{mod}.nii.gz", img.astype(np.float32))
    paths["brain"] = _write(folder / f"{name}_brain.nii.gz", brain.astype(np.uint8))
    paths["gt"] = _write(folder / f"{name}_gt.nii.gz", gt.astype(np.uint8))
    return paths, brain, gt


def store(paths, out, cfg=None, patch=PATCH):
    images = {m: paths[m] for m in ("T2w", "FLAIR", "T1w")}
    return store_visit(images, paths["brain"], paths["gt"], out, cfg or LossConfig(), patch)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """Three stored visits of two patients and their index (fold = patient number)."""
    root = tmp_path_factory.mktemp("visits")
    rows = []
    for k, (pid, ses, seed) in enumerate([("sub-01", "w000", 1), ("sub-01", "w024", 2), ("sub-02", "w000", 3)]):
        paths, brain, gt = make_visit(root / f"{pid}_{ses}", seed=seed)
        npy = root / f"{pid}_{ses}.npy"
        store(paths, npy)
        rows.append({"participant_id": pid, "session": ses, "path": str(npy), "fold": int(pid[-1]) - 1})
    visits = pd.DataFrame(rows)
    return visits, build_index(visits, PATCH, 0.2)


# --------------------------------------------------------------------------- folds


def _participants(sizes={"PLA": 7, "OCR": 5, "IFN": 4}):
    rows = [(f"sub-{a}{i:02d}", a) for a, n in sizes.items() for i in range(n)]
    return pd.DataFrame(rows, columns=["participant_id", "arm"])


def test_folds_patient_level_balanced_and_seeded(tmp_path):
    p = _participants()
    f = split_folds(p, 3, seed=7)
    assert list(f.columns) == ["participant_id", "arm", "fold"]
    assert list(f["participant_id"]) == list(p["participant_id"])
    assert set(f["fold"]) == {1, 2, 3}
    # every visit of a patient in one fold
    visits = p.loc[p.index.repeat(3)].assign(session=["w000", "w024", "w048"] * len(p))
    per_patient = visits.merge(f, on=["participant_id", "arm"]).groupby("participant_id")["fold"].nunique()
    assert (per_patient == 1).all()
    # folds differ by ≤ 1 overall (16 = 6 + 5 + 5) and within each arm (7 = 3+2+2, 5 = 2+2+1, 4 = 2+1+1)
    sizes = f["fold"].value_counts().reindex(range(1, 4), fill_value=0)
    assert sorted(sizes) == [5, 5, 6]
    for arm, n in {"PLA": 7, "OCR": 5, "IFN": 4}.items():
        counts = f.loc[f["arm"] == arm, "fold"].value_counts().reindex(range(1, 4), fill_value=0)
        assert counts.sum() == n and counts.max() - counts.min() <= 1, (arm, counts.tolist())
    # seeded: same seed, same split, whatever the row order; another seed, another split
    shuffled = p.sample(frac=1, random_state=3)
    g = split_folds(shuffled, 3, seed=7).set_index("participant_id")["fold"]
    assert g.to_dict() == f.set_index("participant_id")["fold"].to_dict()
    others = [split_folds(p, 3, seed=s)["fold"].tolist() for s in (8, 9, 10)]
    assert any(o != f["fold"].tolist() for o in others)
    # TSV round trip
    write_folds(f, tmp_path / "folds.tsv")
    pd.testing.assert_frame_equal(read_folds(tmp_path / "folds.tsv"), f)


def test_folds_errors():
    with pytest.raises(InputError, match="2 participant.*3 folds"):
        split_folds(_participants({"PLA": 1, "OCR": 1}), 3, seed=0)
    dup = pd.DataFrame({"participant_id": ["sub-1", "sub-1", "sub-2"], "arm": ["A", "A", "B"]})
    with pytest.raises(InputError, match="more than once.*sub-1"):
        split_folds(dup, 2, seed=0)
    with pytest.raises(InputError, match="lacks column"):
        split_folds(pd.DataFrame({"participant_id": ["a", "b"]}), 2, seed=0)


# --------------------------------------------------------------------------- store and index


def test_store_layout_sidecar_and_whole_visit_alpha(tmp_path):
    paths, brain, gt = make_visit(tmp_path / "v")
    meta = store(paths, tmp_path / "v.npy")
    arr = np.load(tmp_path / "v.npy", mmap_mode="r")
    assert isinstance(arr, np.memmap) and arr.dtype == np.float32 and arr.shape[3] == 5
    side = json.loads((tmp_path / "v.json").read_text())
    assert side == meta and side["full_shape"] == list(SHAPE) and list(arr.shape) == side["shape"]
    assert side["sources"]["FLAIR"] == str(paths["FLAIR"]) and side["sources"]["gt_mask"] == str(paths["gt"])
    # cropped to the brain box: known extent of the ellipsoid
    zz, yy, xx = np.nonzero(brain)
    assert side["crop_lo"] == [int(zz.min()), int(yy.min()), int(xx.min())]
    assert list(arr.shape[:3]) == [int(zz.max() - zz.min() + 1), int(yy.max() - yy.min() + 1), int(xx.max() - xx.min() + 1)]
    # array_origin maps the array back onto the full grid, every channel
    o = side["array_origin"]
    full = {m: sitk.GetArrayFromImage(sitk.ReadImage(str(paths[m]))) for m in ("T2w", "FLAIR", "T1w")}
    box = tuple(slice(a, a + n) for a, n in zip(o, arr.shape[:3]))
    for c, m in enumerate(("T2w", "FLAIR", "T1w")):
        np.testing.assert_array_equal(arr[..., c], full[m][box])
    np.testing.assert_array_equal(arr[..., 3], gt[box])
    # α of the whole visit (the lesion cut by the crop keeps its full volume) ...
    expected = alpha_map(gt, connectivity=18)[box]
    np.testing.assert_allclose(arr[..., 4], expected, rtol=1e-6)
    assert not np.allclose(arr[..., 4], alpha_map(gt[box], connectivity=18))
    assert side["lesion_voxels"] == int(gt.sum()) > side["lesion_voxels_in_array"]
    # ... with the loss.alpha_* values actually passed
    cfg = LossConfig(alpha_max=50.0, alpha_min=2.0, alpha_midpoint_voxels=10.0, alpha_slope_voxels=3.0, alpha_connectivity=6)
    store(paths, tmp_path / "w.npy", cfg)
    a2 = np.load(tmp_path / "w.npy")[..., 4]
    np.testing.assert_allclose(a2, alpha_map(gt, 6, 50.0, 2.0, 10.0, 3.0)[box], rtol=1e-6)
    assert a2.max() < 50.0 < arr[..., 4].max()  # the 4-voxel lesion: ≈ 50 vs ≈ 92
    assert json.loads((tmp_path / "w.json").read_text())["alpha"]["max_weight"] == 50.0


def test_store_pads_to_patch(tmp_path):
    paths, brain, gt = make_visit(tmp_path / "v")
    meta = store(paths, tmp_path / "big.npy", patch=(32, 16, 40))
    arr = np.load(tmp_path / "big.npy")
    assert arr.shape[0] == 32 and arr.shape[2] == 40 and arr.shape[1] == meta["crop_hi"][1] - meta["crop_lo"][1]
    # padded voxels are zero, the original sits at pad_before
    pz = meta["pad_before"][0]
    assert pz > 0 and not arr[:pz].any() and meta["array_origin"][0] == meta["crop_lo"][0] - pz
    assert arr[..., 3].sum() == meta["lesion_voxels_in_array"]


def test_store_geometry_mismatch_names_the_files(tmp_path):
    paths, brain, gt = make_visit(tmp_path / "v")
    flair = sitk.GetArrayFromImage(sitk.ReadImage(str(paths["FLAIR"])))
    _write(paths["FLAIR"], flair, spacing=(1.0, 1.0, 2.5))
    _write(paths["gt"], gt.astype(np.uint8), origin=(0.0, 4.0, 0.0))
    with pytest.raises(InputError) as err:
        store(paths, tmp_path / "v.npy")
    msg = str(err.value)
    assert "share one grid" in msg and str(paths["FLAIR"]) in msg and str(paths["gt"]) in msg
    assert str(paths["T1w"]) not in msg.split("differ", 1)[1].split(":", 1)[1]  # T1w matches: not listed
    assert not (tmp_path / "v.npy").exists()
    _write(paths["FLAIR"], flair[:, :, :40])
    with pytest.raises(InputError, match="size"):
        store(paths, tmp_path / "v.npy")


def test_index_windows_inside_with_lesions_and_complete(stored):
    visits, index = stored
    assert list(index.columns) == INDEX_COLUMNS and len(index) > 0
    for row in visits.itertuples():
        arr = np.load(row.path)
        mask = arr[..., 3] > 0.5
        got = index.loc[index["path"] == row.path]
        assert (got["participant_id"] == row.participant_id).all() and (got["fold"] == row.fold).all()
        # brute force over every window of the grid: the kept set is exactly the lesion windows
        expected = {}
        for c in window_corners(arr.shape[:3], PATCH, 0.2):
            n = int(mask[c[0]:c[0] + PATCH[0], c[1]:c[1] + PATCH[1], c[2]:c[2] + PATCH[2]].sum())
            if n:
                expected[tuple(int(v) for v in c)] = n
        kept = {(r.corner_z, r.corner_y, r.corner_x): r.lesion_voxels for r in got.itertuples()}
        assert kept == expected
        corners = got[["corner_z", "corner_y", "corner_x"]].to_numpy()
        assert (corners >= 0).all() and (corners + PATCH <= np.array(arr.shape[:3])).all()
        assert (got["lesion_voxels"] >= 1).all()
        # every lesion voxel is in some kept window
        covered = np.zeros(mask.shape, bool)
        for c in corners:
            covered[c[0]:c[0] + PATCH[0], c[1]:c[1] + PATCH[1], c[2]:c[2] + PATCH[2]] = True
        assert covered[mask].all()


def test_index_no_lesions_and_fold_files(tmp_path, stored):
    paths, _, _ = make_visit(tmp_path / "clean", lesions=False)
    store(paths, tmp_path / "clean.npy")
    assert len(index_windows(tmp_path / "clean.npy", PATCH, 0.2)) == 0
    _, index = stored
    out = write_fold_indices(index, str(tmp_path / "index_fold-{fold}.tsv"), folds=[0, 1, 2])
    assert sorted(out) == [0, 1, 2]
    back = [read_index(out[k]) for k in range(3)]
    assert len(back[2]) == 0 and list(back[2].columns) == INDEX_COLUMNS
    assert len(back[0]) + len(back[1]) == len(index) and (back[1]["participant_id"] == "sub-02").all()
    with pytest.raises(InputError, match="smaller than the patch"):
        index_windows(tmp_path / "clean.npy", (64, 16, 16), 0.2)


# --------------------------------------------------------------------------- augmentation


def _dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_augment_keeps_image_mask_alpha_aligned(stored):
    visits, index = stored
    arr = np.load(visits["path"][0], mmap_mode="r")
    # an image channel equal to the mask, warped linearly, must match the nearest-warped mask
    image = np.concatenate([arr[..., 3:4], arr[..., :2]], axis=-1)
    labels = arr[..., 3:5]
    lesion_centre = np.argwhere(arr[..., 3] > 0).mean(0)
    for s in range(6):
        rng = np.random.default_rng(s)
        img, lab = augment(image, labels, rng, out_shape=(16, 32, 32), center=lesion_centre,
                           rotation_inplane_deg=30, rotation_outplane_deg=8)
        assert img.dtype == lab.dtype == np.float32 and img.shape == (16, 32, 32, 3) and lab.shape == (16, 32, 32, 2)
        mask = lab[..., 0] > 0.5
        assert mask.sum() > 100
        assert _dice(img[..., 0] > 0.5, mask) >= 0.95
        np.testing.assert_array_equal(lab[..., 1] > 0, mask)  # α nonzero exactly on the mask
        assert set(np.unique(lab[..., 0])) <= {0.0, 1.0}
        assert set(np.unique(lab[..., 1])) <= set(np.unique(arr[..., 4]))  # nearest: α values kept
        # and it is not the identity
        box = tuple(slice(int(round(c - n / 2 + 0.5)), int(round(c - n / 2 + 0.5)) + n) for c, n in zip(lesion_centre, (16, 32, 32)))
        assert not np.array_equal(mask, arr[box][..., 3] > 0.5)


def test_warp_known_answers():
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(9, 27, 27, 2)).astype(np.float32)
    lab = (rng.random((9, 27, 27, 1)) > 0.5).astype(np.float32)
    # zero ranges: augment is the plain window
    img, l2 = augment(vol, lab, rng, out_shape=(5, 11, 11), center=(4, 13, 13), rotation_inplane_deg=0,
                      rotation_outplane_deg=0, scale_range=(1, 1), translation_mm=(0, 0, 0), elastic_sigma_mm=(0, 0, 0))
    np.testing.assert_allclose(img, vol[2:7, 8:19, 8:19], atol=1e-5)
    np.testing.assert_array_equal(l2, lab[2:7, 8:19, 8:19])
    # 90° in the axial plane: out[z, y, x] = in[z, 26 - x, y]
    img, l2 = warp(vol, lab, rotation=(math.pi / 2, 0, 0))
    np.testing.assert_allclose(img, vol[:, ::-1, :].transpose(0, 2, 1, 3), atol=1e-4)
    np.testing.assert_array_equal(l2, lab[:, ::-1, :].transpose(0, 2, 1, 3))
    # one slice of translation is 3 mm
    img, _ = warp(vol, lab, shift_mm=(3.0, 0, 0))
    np.testing.assert_allclose(img[:-1], vol[1:], atol=1e-5)
    assert not img[-1].any()  # beyond the input: 0
    # a tilt in millimetres: 90° about x maps out z (3 mm steps) to in y (3 voxels per slice)
    zlin = np.broadcast_to(np.arange(9, dtype=np.float32)[:, None, None, None], (9, 27, 27, 1))
    ylin = np.broadcast_to(np.arange(27, dtype=np.float32)[None, :, None, None], (9, 27, 27, 1))
    out, _ = warp(np.concatenate([zlin, ylin], -1), lab, rotation=(0, 0, math.pi / 2), out_shape=(3, 7, 3),
                  center=(4, 13, 13))
    oz, oy = np.meshgrid(np.arange(3) - 1, np.arange(7) - 3, indexing="ij")
    np.testing.assert_allclose(out[..., 1, 0], 4 - oy / 3.0, atol=1e-4)  # in z = centre − y mm / 3
    np.testing.assert_allclose(out[..., 1, 1], 13 + 3 * oz, atol=1e-4)  # in y = centre + z mm


def test_resample_region_is_scipys_per_channel_resampling(monkeypatch):
    """The loader's NumPy resampling against map_coordinates (constant mode, cval 0, no
    prefilter): linear channels to float32 rounding, nearest ones exactly, at the edges of the
    region too (points just inside and outside, on the last voxel, halves), and on a region
    one voxel thick; the same bits whatever the chunks the points go in."""
    from scipy import ndimage

    import t2lesion.unet.augment as augment_module

    rng = np.random.default_rng(5)
    for shape in ((7, 12, 10), (1, 9, 8)):
        region = rng.normal(size=shape + (5,)).astype(np.float32)
        region[..., 3:] = rng.integers(0, 4, shape + (2,))
        n = np.array(shape, np.float32)[:, None]
        c = rng.uniform(-0.2, 1.2, (3, 4000)).astype(np.float32) * n - 0.5
        # every combination of per-axis edge values: just outside, the first voxel, halves, the
        # last voxel exactly, just beyond it
        edges = [np.float32([-1e-6, 0.0, 0.5, k - 1.5, k - 1.0, k - 0.5, k - 1.0 + 1e-5]) for k in shape]
        grid = np.stack(np.meshgrid(*edges, indexing="ij")).reshape(3, -1)
        c[:, :grid.shape[1]] = grid
        coords = c.reshape(3, 40, 100)
        got = resample_region(region, 3, coords)
        for ch in range(5):
            ref = ndimage.map_coordinates(region[..., ch], coords, order=1 if ch < 3 else 0, mode="constant",
                                          cval=0.0, prefilter=False)
            if ch < 3:
                np.testing.assert_allclose(got[..., ch], ref, atol=2e-6, rtol=0)
            else:
                np.testing.assert_array_equal(got[..., ch], ref)
        assert (got[..., 0] == 0).any() and (got[..., 0] != 0).any()  # both inside and outside were hit
        # a box of a larger array (not contiguous) and a float64 copy give the same numbers
        big = np.zeros((shape[0] + 2, shape[1] + 3, shape[2] + 4, 5), np.float32)
        big[1:-1, 2:-1, 3:-1] = region
        view = big[1:-1, 2:-1, 3:-1]
        assert not view.flags.c_contiguous
        np.testing.assert_array_equal(resample_region(view, 3, coords), got)
        np.testing.assert_array_equal(resample_region(region.astype(np.float64), 3, coords), got)
        assert augment_module.RESAMPLE_CHUNK >= coords[0].size  # got: the points in one chunk
        for chunk in (7, 1000):  # uneven: a short last chunk
            monkeypatch.setattr(augment_module, "RESAMPLE_CHUNK", chunk)
            np.testing.assert_array_equal(resample_region(region, 3, coords), got)
        monkeypatch.undo()


def test_loader_batches_equal_the_per_sample_reference(stored):
    """Each batch of the loader (its augmented samples warped together, NumPy resampling) is
    the stack of the per-sample reference (PatchDataset.sample: augment, SciPy) of the same
    draws: images to float32 rounding, mask and α exactly; windows at the visit's edges and
    stronger transforms included."""
    _, index = stored
    for kw in ({}, {"rotation_inplane_deg": 40, "scale_range": (0.7, 1.3), "translation_mm": (9, 20, 20)}):
        ds = PatchDataset(index, PATCH, batch_size=6, augment_fraction=0.7, seed=21, steps=5, augment_kwargs=kw)
        augmented = 0
        for i in range(len(ds)):
            x, (t, *_) = ds[i]
            for b in range(ds.batch_size):
                rx, rt = ds.sample(i * ds.batch_size + b)
                np.testing.assert_allclose(x[b], rx, atol=1e-5, rtol=0)
                np.testing.assert_array_equal(t[b], rt)
                box = tuple(slice(int(c), int(c) + p) for c, p in zip(ds.corners[ds.window_of(i * 6 + b)], PATCH))
                augmented += not np.array_equal(rx, np.load(ds.paths[ds.window_of(i * 6 + b)])[box][..., :3])
        assert 10 <= augmented < 30, augmented


def test_warp_sample_is_warp():
    """The loader's NumPy warp of one stored array (image and labels as channels) gives warp's
    numbers: images to float32 rounding, labels exactly; inside, at a corner, outside."""
    rng = np.random.default_rng(9)
    vols = [rng.normal(size=(9, 27, 27, 4)).astype(np.float32) for _ in range(3)]
    for v in vols:
        v[..., 2:] = rng.random((9, 27, 27, 2)) > 0.6
    draws = [draw_augmentation(np.random.default_rng(s), (5, 11, 11), rotation_inplane_deg=30) for s in range(3)]
    centers = [(4, 13, 13), (0.5, 2, 25), (30, 40, 40)]  # inside, at a corner, outside the volume
    out = [warp_sample(v, 2, d, c, (5, 11, 11)) for v, d, c in zip(vols, draws, centers)]
    for v, d, c, o in zip(vols, draws, centers, out):
        img, lab = warp(v[..., :2], v[..., 2:], out_shape=(5, 11, 11), center=c, **d)
        np.testing.assert_allclose(o[..., :2], img, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(o[..., 2:], lab)
    assert not out[2].any() and out[0].any() and out[1].any()
    with pytest.raises(ValueError, match="does not match"):
        warp_sample(vols[0], 2, draws[0], centers[0], (5, 11, 12))


def test_copy_channels_copies_any_layout():
    """copy_channels equals a plain assignment from a strided window, channel planes and a
    transposed view; it refuses another shape."""
    rng = np.random.default_rng(2)
    vol = rng.normal(size=(9, 12, 11, 5)).astype(np.float32)
    planes = rng.normal(size=(3, 4, 6, 5)).astype(np.float32)
    for src in (vol[1:5, 2:8, 3:8, :3], vol[1:5, 2:8, 3:8, 3:], np.moveaxis(planes, 0, -1)):
        dst = np.empty(src.shape, np.float32)
        copy_channels(dst, src)
        np.testing.assert_array_equal(dst, src)
    with pytest.raises(ValueError, match="into"):
        copy_channels(np.empty((4, 6, 5, 2), np.float32), np.moveaxis(planes, 0, -1))


# --------------------------------------------------------------------------- loader


def _batches(ds, order):
    return {i: ds[i] for i in order}


def test_dataset_shapes_and_plain_windows(stored):
    _, index = stored
    ds = PatchDataset(index, PATCH, batch_size=4, augment_fraction=0.0, shuffle=False, seed=1)
    assert len(ds) == math.ceil(len(index) / 4)
    x, t = ds[0]
    assert x.shape == (4,) + PATCH + (3,) and x.dtype == np.float32
    assert isinstance(t, tuple) and len(t) == 3 and all(a is t[0] for a in t)
    assert t[0].shape == (4,) + PATCH + (2,) and t[0].dtype == np.float32
    # validation mode: exactly the indexed windows, in index order
    for b in range(4):
        r = index.iloc[b]
        arr = np.load(r["path"], mmap_mode="r")
        win = arr[r.corner_z:r.corner_z + PATCH[0], r.corner_y:r.corner_y + PATCH[1], r.corner_x:r.corner_x + PATCH[2]]
        np.testing.assert_array_equal(x[b], win[..., :3])
        np.testing.assert_array_equal(t[0][b], win[..., 3:5])
        assert t[0][b][..., 0].sum() == r.lesion_voxels
    # the last batch is full: it wraps to the first windows
    xl, _ = ds[len(ds) - 1]
    assert xl.shape[0] == 4
    assert PatchDataset(index, PATCH, n_outputs=1)[0][1].__len__() == 1


def test_dataset_deterministic_per_seed_and_epoch(stored, tmp_path):
    _, index = stored
    index.to_csv(tmp_path / "index.tsv", sep="\t", index=False)
    kw = dict(patch_size=PATCH, batch_size=3, augment_fraction=0.5, seed=11, steps=4)
    a = PatchDataset(index, **kw)
    b = PatchDataset(tmp_path / "index.tsv", **kw)
    first = _batches(a, range(4))
    # another instance, reverse order, concurrent threads, and a pickled copy (process workers)
    rev = _batches(b, reversed(range(4)))
    with ThreadPoolExecutor(4) as pool:
        threaded = dict(zip(range(4), pool.map(b.__getitem__, range(4))))
    pickled = pickle.loads(pickle.dumps(a))
    assert pickled._cache == {}
    for other in (rev, threaded, _batches(pickled, range(4))):
        for i in range(4):
            np.testing.assert_array_equal(first[i][0], other[i][0])
            np.testing.assert_array_equal(first[i][1][0], other[i][1][0])
    # another epoch gives other batches; coming back to epoch 0 gives the first ones again
    a.on_epoch_end()
    np.testing.assert_array_equal(a[0][0], first[0][0])  # on_epoch_end alone changes nothing
    a.epoch_callback().on_epoch_begin(1)
    assert a.epoch == 1
    assert not np.array_equal(a[0][0], first[0][0])
    a.set_epoch(0)
    np.testing.assert_array_equal(a[2][0], first[2][0])
    assert not np.array_equal(PatchDataset(index, **{**kw, "seed": 12})[0][0], first[0][0])


def test_worker_processes_give_the_same_batches(stored, tmp_path):
    """Batches built by worker processes in shared memory are those built in the training
    thread, bit for bit: every epoch, concurrent calls, a pickled copy; the shared file is
    gone once the workers have mapped it, and the workers exit at close."""
    _, index = stored
    kw = dict(patch_size=PATCH, batch_size=3, augment_fraction=0.5, seed=7, steps=5)
    ref = PatchDataset(index, **kw)
    ds = PatchDataset(index, **kw, workers=2, use_multiprocessing=True, shm_dir=tmp_path)
    assert ds.workers == 2 and ds.use_multiprocessing is False  # Keras' threads wait on the processes
    for epoch in (0, 3):
        ref.set_epoch(epoch)
        ds.set_epoch(epoch)
        with ThreadPoolExecutor(3) as pool:
            got = list(pool.map(ds.__getitem__, range(5)))
        for i, (x, ts) in enumerate(got):
            rx, rts = ref[i]
            np.testing.assert_array_equal(x, rx)
            assert len(ts) == 3 and all(a is ts[0] for a in ts)
            np.testing.assert_array_equal(ts[0], rts[0])
    assert list(tmp_path.iterdir()) == []
    procs = list(ds.batch_workers()._procs)
    assert len(procs) == 2 and all(p.poll() is None for p in procs)
    copy = pickle.loads(pickle.dumps(ds))  # a copy starts its own workers, if any
    assert copy._batch_workers is None and copy.processes == 2
    ds.close()
    assert all(p.poll() == 0 for p in procs)
    with pytest.raises(IndexError, match="out of range"):
        ds[5]
    np.testing.assert_array_equal(ds[4][0], ref[4][0])  # started again after close
    ds.close()
    ref.set_epoch(0)
    one = PatchDataset(index, **kw, workers=1, use_multiprocessing=True)
    assert one.workers == 2 and one.processes == 1  # a second thread keeps the process busy
    np.testing.assert_array_equal(one[1][0], ref[1][0])
    one.close()


def test_worker_process_errors(stored, tmp_path, monkeypatch):
    """A worker's input error reaches the caller as that InputError and the workers go on; a
    worker that dies is reported with its exit code, also one that never starts (and nothing
    is left in shared memory); too little shared memory is said first."""
    import sys

    _, index = stored
    bad = index.copy()
    bad.loc[1, "path"] = str(tmp_path / "gone.npy")
    ds = PatchDataset(bad, PATCH, batch_size=1, augment_fraction=0, shuffle=False, workers=1,
                      use_multiprocessing=True)
    with pytest.raises(InputError, match="gone.npy: stored visit not found"):
        ds[1]
    np.testing.assert_array_equal(ds[0][0], PatchDataset(index, PATCH, batch_size=1, augment_fraction=0,
                                                         shuffle=False)[0][0])
    ds.batch_workers()._procs[0].kill()
    ds.batch_workers()._procs[0].wait()
    with pytest.raises(RuntimeError, match=r"loader worker process 0 \(pid \d+\) exited with code -9"):
        ds[2]
    with pytest.raises(RuntimeError, match="exited with code -9"):
        ds[0]  # no further batches from a broken pool
    ds.close()
    with pytest.raises(RuntimeError, match=r"need \d+ MiB of shared memory in .*nowhere, which has 0 MiB free"):
        PatchDataset(index, PATCH, workers=2, use_multiprocessing=True, shm_dir=tmp_path / "nowhere")[0]
    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.setattr(sys, "executable", "/bin/false")  # a worker that exits at once
    with pytest.raises(RuntimeError, match=r"loader worker process 0 \(pid \d+\) exited with code 1 while starting"):
        PatchDataset(index, PATCH, workers=1, use_multiprocessing=True, shm_dir=shm)[0]
    assert list(shm.iterdir()) == []


def test_worker_modules_import_no_keras():
    """A loader worker process imports the batch source and augmentation, not Keras."""
    import subprocess
    import sys

    code = "import sys, t2lesion.unet.batches; print(sorted(m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_dataset_order_cycles_and_augments_a_fraction(stored):
    _, index = stored
    n = len(index)
    ds = PatchDataset(index, PATCH, batch_size=5, seed=3, steps=math.ceil(2.5 * n / 5), augment_fraction=0.5)
    rows = [ds.window_of(p) for p in range(len(ds) * 5)]
    assert sorted(rows[:n]) == list(range(n)) and sorted(rows[n:2 * n]) == list(range(n))
    assert rows[:n] != rows[n:2 * n] and rows[:n] != list(range(n))
    # about half of the samples differ from their plain window
    plain = PatchDataset(index, PATCH, batch_size=5, seed=3, steps=len(ds), augment_fraction=0.0)
    changed = sum(not np.array_equal(ds.sample(p)[0], plain.sample(p)[0]) for p in range(60))
    assert 18 <= changed <= 42
    everything = PatchDataset(index, PATCH, seed=3, augment_fraction=1.0)
    assert all(not np.array_equal(everything.sample(p)[0], plain.sample(p)[0]) for p in range(5))


def test_dataset_errors(tmp_path, stored):
    _, index = stored
    with pytest.raises(InputError, match="no windows"):
        PatchDataset(index.iloc[:0], PATCH)
    with pytest.raises(InputError, match="lacks column"):
        PatchDataset(index.drop(columns="corner_x"), PATCH)
    bad = index.copy()
    bad.loc[0, "corner_y"] = 1000
    with pytest.raises(InputError, match="outside the stored array"):
        PatchDataset(bad, PATCH, augment_fraction=0, shuffle=False)[0]
    missing = index.assign(path=str(tmp_path / "gone.npy"))
    with pytest.raises(InputError, match="gone.npy: stored visit not found"):
        PatchDataset(missing, PATCH)[0]
