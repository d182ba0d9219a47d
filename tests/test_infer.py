"""Ensembled MC-dropout inference (docs/DESIGN.md §7): sliding window, blending, moments, ensemble,
cached encoder, outputs on the MNI and native grids."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst
import SimpleITK as sitk

from t2lesion.errors import InputError
from t2lesion.io import same_geometry
from t2lesion.preprocess._common import matrix_to_transform, write_transform
from t2lesion.unet import infer as I
from t2lesion.unet import model as M
from t2lesion.unet.windows import bounding_box, window_batches

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _backend_check as BC  # noqa: E402

FLAIR = 1  # index of FLAIR in ModelConfig.channel_order (T2w, FLAIR, T1w)


def flair_identity(x):
    """A deterministic "model": the probability is the window's FLAIR channel."""
    return np.asarray(x)[..., FLAIR]


def identity_keras_model(patch=(8, 16, 16), rate=0.0):
    """``decoder(encoder(x))`` like the real model: encoder = FLAIR channel, decoder = dropout."""
    x_in = keras.Input(patch + (3,))
    enc = keras.Model(x_in, [M.ChannelSelect([FLAIR], name="pick_flair")(x_in)], name="encoder")
    f_in = keras.Input(patch + (1,))
    dec = keras.Model([f_in], [M.MCDropout(rate, name="drop")(f_in)], name="decoder")
    x = keras.Input(patch + (3,), name="image")
    return keras.Model(x, dec(enc(x)), name="identity")


# --------------------------------------------------------------------------- sliding window


def test_blend_weights_known_values():
    w = I.blend_weights((8, 16, 16), "gaussian")
    assert w.shape == (8, 16, 16) and w.dtype == np.float32
    assert w.max() == pytest.approx(1.0, abs=1e-6) and w.min() > 0
    np.testing.assert_allclose(w, w[::-1, ::-1, ::-1], rtol=1e-6)  # centred
    # sigma = window/8: 1 voxel along z (centre 3.5), 2 in-plane (centre 7.5)
    assert w[0, 7, 7] / w[3, 7, 7] == pytest.approx(math.exp(-0.5 * (3.5**2 - 0.5**2)), rel=1e-5)
    assert w[3, 7, 1] / w[3, 7, 7] == pytest.approx(math.exp(-0.5 * ((6.5 / 2) ** 2 - (0.5 / 2) ** 2)), rel=1e-5)
    assert np.array_equal(I.blend_weights((8, 16, 16), "uniform"), np.ones((8, 16, 16), np.float32))
    with pytest.raises(ValueError, match="blending"):
        I.blend_weights((8, 8, 8), "cosine")


@pytest.mark.parametrize("blending", ["gaussian", "uniform"])
def test_identity_model_reconstructs_the_input_exactly_borders_included(blending):
    rng = np.random.default_rng(1)
    # z smaller than the window (padded), box touching the volume's borders in y and x
    img = rng.normal(size=(6, 41, 37, 3)).astype(np.float32)
    brain = np.zeros(img.shape[:3], bool)
    brain[1:5, 0:41, 3:37] = True
    st = {}
    out = I.predict_visit([flair_identity], img, brain, (8, 16, 16), overlap=0.3, blending=blending,
                          mc_samples=1, batch_size=4, stats=st)
    exp = np.zeros(img.shape[:3], np.float32)
    exp[1:5, :, 3:] = img[1:5, :, 3:, FLAIR]
    np.testing.assert_allclose(out["prob"], exp, atol=2e-6, rtol=0)
    assert st["windows"] == 1 * 4 * 3  # 41 -> starts 0, 11, 22, 25; 34 -> 3, 14, 21
    # everything 0 outside the brain box
    for k in ("prob", "sd", "entropy", "mi", "mask"):
        assert out[k].shape == img.shape[:3] and not out[k][0].any() and not out[k][:, :, :3].any()
    # a constant prediction is reproduced exactly (normalised weights)
    const = I.predict_visit([lambda x: np.full(x.shape[:-1], 0.3, np.float32)], img, brain, (8, 16, 16),
                            overlap=0.3, blending=blending, mc_samples=1, batch_size=5)
    np.testing.assert_allclose(const["prob"][brain], 0.3, rtol=1e-6)


def test_box_smaller_than_a_window_and_volume_smaller_on_every_axis():
    rng = np.random.default_rng(2)
    img = rng.normal(size=(5, 12, 40, 3)).astype(np.float32)
    brain = np.zeros(img.shape[:3], bool)
    brain[2:4, 3:9, 30:35] = True  # 2 x 6 x 5 box near the x border
    st = {}
    out = I.predict_visit([flair_identity], img, brain, (8, 16, 16), overlap=0.5, blending="gaussian",
                          mc_samples=1, batch_size=2, stats=st)
    exp = np.zeros(img.shape[:3], np.float32)
    exp[2:4, 3:9, 30:35] = img[2:4, 3:9, 30:35, FLAIR]
    np.testing.assert_allclose(out["prob"], exp, atol=2e-6, rtol=0)
    assert st["windows"] == 1


@given(n=hst.integers(0, 200), b=hst.integers(1, 40))
@settings(max_examples=300, deadline=None)
def test_window_batches_cover_every_window_once_with_few_shapes(n, b):
    plan = window_batches(n, b)
    assert [s for s, _ in plan] == list(np.cumsum([0] + [k for _, k in plan])[:-1])  # contiguous
    assert sum(k for _, k in plan) == n
    full = [k for _, k in plan if k == b]
    rest = [k for _, k in plan][len(full):]
    assert len(full) == n // b and all(k < b for k in rest)
    assert rest == sorted(rest, reverse=True) and len(set(rest)) == len(rest)  # distinct, largest first
    assert all(k & (k - 1) == 0 for k in rest)  # powers of two
    assert len({k for _, k in plan}) <= 1 + int(math.log2(b))


def test_window_batches_known_plans_and_errors():
    assert window_batches(12, 8) == [(0, 8), (8, 4)]
    assert window_batches(13, 8) == [(0, 8), (8, 4), (12, 1)]
    assert window_batches(80, 8) == [(s, 8) for s in range(0, 80, 8)]
    assert window_batches(7, 6) == [(0, 6), (6, 1)] and window_batches(0, 8) == []
    with pytest.raises(ValueError, match="batch_size"):
        window_batches(3, 0)


def test_no_empty_window_is_computed_and_the_maps_do_not_depend_on_batch_size():
    """The model is called with exactly the planned batches (12 windows at 8: 8 + 4, not 16),
    and a deterministic model's maps are the same at every batch size."""
    rng = np.random.default_rng(5)
    img = rng.uniform(0, 1, size=(14, 30, 20, 3)).astype(np.float32)  # 2 x 3 x 2 windows of 8 x 16 x 16
    brain = np.ones(img.shape[:3], bool)
    sizes = []

    def recording(x):
        sizes.append(len(x))
        assert np.abs(x).sum(axis=(1, 2, 3, 4)).min() > 0  # no empty (all-zero) window
        return x[..., FLAIR] * x[..., 0]

    args = dict(patch_size=(8, 16, 16), overlap=0.3, blending="gaussian", mc_samples=1)
    st_ = {}
    ref = I.predict_visit([recording], img, brain, batch_size=8, stats=st_, **args)
    assert st_["windows"] == 12 and sizes == [8, 4] and st_["batches"] == 2
    for b in (1, 3, 5, 12, 32):
        sizes.clear()
        out = I.predict_visit([recording], img, brain, batch_size=b, **args)
        assert sizes == [k for _, k in window_batches(12, b)]
        for k in ("prob", "sd", "entropy", "mi"):
            np.testing.assert_allclose(out[k], ref[k], atol=1e-6, rtol=0, err_msg=f"{k} at batch {b}")


def test_gaussian_blending_weights_overlapping_windows():
    # every window predicts its own mean z index; the voxel z=5 lies in window [0, 8) at
    # position 5 and in window [4, 12) at position 1 (sigma_z = 1, centre 3.5)
    z = np.broadcast_to(np.arange(12, dtype=np.float32)[:, None, None], (12, 16, 16))
    img = np.stack([z, z, z], axis=-1)
    brain = np.ones(img.shape[:3], bool)

    def window_mean(x):
        return np.broadcast_to(x[..., FLAIR].mean(axis=(1, 2, 3), keepdims=True), x.shape[:-1])

    args = dict(patch_size=(8, 16, 16), overlap=0.5, mc_samples=1, batch_size=1)
    uni = I.predict_visit([window_mean], img, brain, blending="uniform", **args)["prob"]
    gau = I.predict_visit([window_mean], img, brain, blending="gaussian", **args)["prob"]
    assert uni[5, 3, 3] == pytest.approx((3.5 + 7.5) / 2, abs=1e-5)
    wa, wb = math.exp(-0.5 * 1.5**2), math.exp(-0.5 * 2.5**2)
    assert gau[5, 3, 3] == pytest.approx((3.5 * wa + 7.5 * wb) / (wa + wb), abs=1e-5)
    assert gau[2, 0, 0] == pytest.approx(3.5, abs=1e-5) and gau[10, 15, 15] == pytest.approx(7.5, abs=1e-5)


def test_keras_identity_model_through_the_mc_path():
    rng = np.random.default_rng(3)
    img = rng.uniform(0, 1, size=(10, 20, 30, 3)).astype(np.float32)
    brain = np.ones(img.shape[:3], bool)
    out = I.predict_visit([identity_keras_model()], img, brain, overlap=0.2, blending="gaussian",
                          mc_samples=3, batch_size=3)
    np.testing.assert_allclose(out["prob"], img[..., FLAIR], atol=2e-6, rtol=0)
    np.testing.assert_array_equal(out["mask"], (img[..., FLAIR] >= 0.5).astype(np.uint8))
    # a deterministic model (rate 0): no spread, up to float32 rounding of E p² - (E p)²
    assert out["sd"].max() <= 1e-3 and out["mi"].max() <= 1e-5
    assert out["mask"].dtype == np.uint8 and all(out[k].dtype == np.float32 for k in ("prob", "sd", "entropy", "mi"))


def test_derive_maps_known_values_and_seeds():
    h = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p))  # noqa: E731
    # one window, two equally likely samples 0.2 and 0.6: mean 0.4, SD 0.2 (both definitions)
    one = [0.4, (0.04 + 0.36) / 2, (h(0.2) + h(0.6)) / 2, 0.16, h(0.4)]
    for unc, m in (("mixture", one[:3]), ("within", one)):
        d = I.derive_maps(np.array([m], np.float32), uncertainty=unc)
        assert d["prob"][0] == pytest.approx(0.4) and d["sd"][0] == pytest.approx(0.2, rel=1e-5)
        assert d["entropy"][0] == pytest.approx(h(0.4), rel=1e-5)
        assert d["mi"][0] == pytest.approx(h(0.4) - (h(0.2) + h(0.6)) / 2, rel=1e-4)
    # two windows, equal weights, each certain (0.2 and 0.6): no within-window spread; the
    # mixture counts their disagreement
    two = np.array([[0.4, 0.2, (h(0.2) + h(0.6)) / 2, (0.04 + 0.36) / 2, (h(0.2) + h(0.6)) / 2]], np.float32)
    d = I.derive_maps(two, uncertainty="within")
    assert d["sd"][0] == pytest.approx(0.0, abs=1e-3) and d["mi"][0] == pytest.approx(0.0, abs=1e-6)
    d = I.derive_maps(two, uncertainty="mixture")
    assert d["sd"][0] == pytest.approx(0.2, rel=1e-4) and d["mi"][0] > 0.05
    # rounding that makes E p² < (E p)² or E H(p) > H(E p) is clamped at 0
    d = I.derive_maps(np.array([[0.5, 0.2499, h(0.5) + 1e-4]], np.float32), uncertainty="mixture")
    assert d["sd"][0] == 0.0 and d["mi"][0] == 0.0
    with pytest.raises(ValueError, match="5 blended channels"):
        I.derive_maps(np.array([one[:3]], np.float32))
    seeds = {I.derive_seed(7, v, f, b) for v in range(3) for f in range(3) for b in range(20)}
    assert len(seeds) == 180 and all(0 <= s < I.MAX_SEED for s in seeds)
    assert I.derive_seed(7, 1, 2, 3) == I.derive_seed(7, 1, 2, 3) != I.derive_seed(8, 1, 2, 3)


# --------------------------------------------------------------------------- MC dropout on a tiny model


def _tiny(seed):
    return M.build_multiarm_unet(BC.tiny_config(train=True, seed=seed))  # 3 levels, widths 4-8, rate 0.3


@pytest.fixture(scope="module")
def tiny():
    models = [_tiny(3), _tiny(4)]
    rng = np.random.default_rng(5)
    img = rng.normal(0, 1, size=(16, 64, 64, 3)).astype(np.float32)
    return models, img, [I.FoldPredictor(m, 3) for m in models]


def test_mc_at_rate_0_equals_a_plain_forward_pass_with_zero_sd_and_mi(tiny):
    models, img, preds = tiny
    m = models[0]
    brain = np.ones(img.shape[:3], bool)
    plain = lambda x: np.asarray(m(x, training=False)[0])  # noqa: E731  (deterministic, eager)
    mc0 = I.FoldPredictor(m, 3, dropout_rate=0.0)
    # exact 2 x 2 x 2 tiling (overlap 0): one window per voxel, so no window disagreement
    args = dict(patch_size=(8, 32, 32), overlap=0.0, blending="gaussian", mc_samples=3, batch_size=4, seed=1)
    ref = I.predict_visit([plain], img, brain, **args)
    out0 = I.predict_visit([mc0], img, brain, **args)
    np.testing.assert_allclose(out0["prob"], ref["prob"], atol=1e-5)
    assert out0["prob"].std() > 0.01
    assert out0["sd"].max() <= 1e-3 and out0["mi"].max() <= 1e-5
    np.testing.assert_allclose(out0["entropy"], ref["entropy"], atol=1e-4)
    # the same model at its trained rate (0.3) has a clear spread: the check above can fail
    out = I.predict_visit([preds[0]], img, brain, **args)
    assert out["sd"].mean() > 0.01 and out["mi"].mean() > 1e-3
    # overlapping windows: the mean still equals the plain sliding-window prediction and the
    # within-window SD/MI stay 0; the mixture definition adds the windows' disagreement
    args.update(overlap=0.5)
    img, brain = img[:12, :48, :48], brain[:12, :48, :48]  # 2 x 2 x 2 windows, each voxel in up to 8
    within = I.predict_visit([mc0], img, brain, **args)
    np.testing.assert_allclose(within["prob"], I.predict_visit([plain], img, brain, **args)["prob"], atol=1e-5)
    assert within["sd"].max() <= 1e-3 and within["mi"].max() <= 1e-5
    mixture = I.predict_visit([mc0], img, brain, uncertainty="mixture", **args)
    np.testing.assert_array_equal(mixture["prob"], within["prob"])
    assert mixture["sd"].max() > 0.05


def test_ensemble_mean_equals_the_mean_of_members_computed_separately(tiny):
    _, img, preds = tiny
    brain = np.zeros(img.shape[:3], bool)
    brain[2:15, 5:60, 8:50] = True
    args = dict(overlap=0.25, blending="gaussian", mc_samples=3, batch_size=3, seed=11)
    ens = I.predict_visit(preds, img, brain, uncertainty="mixture", **args)
    a = I.predict_visit([preds[0]], img, brain, fold_ids=[0], uncertainty="mixture", **args)
    b = I.predict_visit([preds[1]], img, brain, fold_ids=[1], uncertainty="mixture", **args)
    assert np.abs(a["prob"] - b["prob"]).max() > 0.05  # the members differ
    np.testing.assert_allclose(ens["prob"], (a["prob"] + b["prob"]) / 2, atol=1e-5)

    def pooled_sd2(a, b, mean):  # the ensemble pools the members' second moments
        m2 = ((a["sd"] ** 2 + a["prob"] ** 2) + (b["sd"] ** 2 + b["prob"] ** 2)) / 2
        return np.maximum(m2 - mean**2, 0)

    np.testing.assert_allclose(ens["sd"] ** 2, pooled_sd2(a, b, ens["prob"]), atol=1e-4)
    assert (ens["sd"] ** 2).mean() > ((a["sd"] ** 2 + b["sd"] ** 2) / 2).mean()  # disagreement adds
    # default (within-window) uncertainty: the same pooling where windows do not overlap
    assert not ens["prob"][~brain].any() and not ens["sd"][~brain].any()
    tiled = dict(args, overlap=0.0)
    img8, brain8 = img[:8], np.ones((8, 64, 64), bool)  # exactly 1 x 2 x 2 windows
    ens0 = I.predict_visit(preds, img8, brain8, **tiled)
    a0 = I.predict_visit([preds[0]], img8, brain8, fold_ids=[0], **tiled)
    b0 = I.predict_visit([preds[1]], img8, brain8, fold_ids=[1], **tiled)
    np.testing.assert_allclose(ens0["prob"], (a0["prob"] + b0["prob"]) / 2, atol=1e-5)
    np.testing.assert_allclose(ens0["sd"] ** 2, pooled_sd2(a0, b0, ens0["prob"]), atol=1e-4)
    # reproducible for a seed, different for another
    again = I.predict_visit(preds, img8, brain8, **tiled)
    assert np.array_equal(again["sd"], ens0["sd"])
    other = I.predict_visit(preds, img8, brain8, **{**tiled, "seed": 12})
    assert np.abs(other["sd"] - ens0["sd"]).max() > 1e-3


def test_cached_encoder_path_equals_full_model_path_for_the_same_seeds(tiny):
    models, img, preds = tiny
    brain = np.ones(img.shape[:3], bool)
    naive = I.FoldPredictor(models[0], 3, cache_encoder=False)
    args = dict(overlap=0.2, blending="uniform", mc_samples=3, batch_size=4, seed=3)
    a = I.predict_visit([preds[0]], img[:12], brain[:12], **args)
    b = I.predict_visit([naive], img[:12], brain[:12], **args)
    assert a["sd"].mean() > 0.01
    for k in ("prob", "sd", "entropy", "mi"):
        np.testing.assert_allclose(a[k], b[k], atol=2e-5, err_msg=k)


def test_prefetched_model_calls_give_the_same_maps_bit_for_bit_from_one_worker_thread(tiny):
    """With prefetch (the default) every model call runs in one worker thread, in batch order
    with the same seeds, and the maps equal those of calls in the caller's thread bit for bit;
    a model's error reaches the caller unchanged."""
    import threading

    models, img, _ = tiny
    brain = np.zeros(img.shape[:3], bool)
    brain[2:15, 5:60, 3:50] = True

    class Recording(I.FoldPredictor):
        def __init__(self, model, calls):
            super().__init__(model, 3)
            self.calls = calls

        def moments(self, x, seed):
            self.calls.append((threading.get_ident(), len(x), seed))
            return super().moments(x, seed)

    args = dict(overlap=0.3, blending="gaussian", mc_samples=3, batch_size=4, seed=9)
    runs = {}
    for prefetch in (False, True):
        calls = []
        st_ = {}
        out = I.predict_visit([Recording(m, calls) for m in models], img, brain, prefetch=prefetch, stats=st_,
                              **args)
        runs[prefetch] = (out, calls)
    (a, calls_a), (b, calls_b) = runs[False], runs[True]
    assert st_["batches"] >= 3 and a["sd"].max() > 0.01
    assert [c[1:] for c in calls_a] == [c[1:] for c in calls_b]  # same sizes and seeds, same order
    assert {c[0] for c in calls_a} == {threading.get_ident()}
    assert len({c[0] for c in calls_b}) == 1 and calls_b[0][0] != threading.get_ident()
    for k in ("prob", "sd", "entropy", "mi", "mask"):
        assert np.array_equal(a[k], b[k]), k

    class Failing(I.FoldPredictor):
        def moments(self, x, seed):
            raise RuntimeError("device lost")

    with pytest.raises(RuntimeError, match="device lost"):
        I.predict_visit([Failing(models[0], 3)], img, brain, **args)


@given(hst.lists(hst.tuples(hst.integers(0, 6), hst.integers(0, 9), hst.integers(0, 7)), max_size=6),
       hst.sampled_from([bool, np.uint8, np.float32]))
@settings(max_examples=200, deadline=None)
def test_bounding_box_equals_the_extent_of_the_nonzero_voxels(points, dtype):
    mask = np.zeros((7, 10, 8), dtype)
    for p in points:
        mask[p] = 1
    lo, hi = bounding_box(mask)
    if not points:
        assert (lo, hi) == ((0, 0, 0), (7, 10, 8))
    else:
        idx = np.argwhere(mask)
        assert lo == tuple(int(v) for v in idx.min(0)) and hi == tuple(int(v) + 1 for v in idx.max(0))


# --------------------------------------------------------------------------- files: MNI and native grids


MNI_ORIGIN = (-24.0, -28.0, -24.0)
BLOBS = [((-6.0, 2.0, -3.0), (9.0, 7.0, 10.0)), ((9.0, -8.0, 6.0), (6.0, 8.0, 8.0))]  # centre, radii (mm, LPS)


def _in_blobs(pts):
    inside = np.zeros(len(pts), bool)
    for c, r in BLOBS:
        inside |= (((pts - np.asarray(c)) / np.asarray(r)) ** 2).sum(1) <= 1.0
    return inside


def _image(arr, spacing, origin, direction=None):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


def _phys_points(img):
    size = img.GetSize()
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in size], indexing="ij"), -1).reshape(-1, 3)  # (x, y, z)
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    pts = np.asarray(img.GetOrigin()) + (idx * np.asarray(img.GetSpacing())) @ d.T
    return pts, idx


def _rigid(angles_deg, translation):
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    m = np.eye(4)
    m[:3, :3] = rz @ ry @ rx
    m[:3, 3] = translation
    return m


def _write_visit(root: Path, vid: str, rng, mni_to_native: np.ndarray) -> dict:
    """A preprocessed visit (MNI grid 48 x 56 x 16 at 1 x 1 x 3 mm) whose FLAIR is 1 in two
    ellipsoids and 0 elsewhere, a native FLAIR grid (0.9 x 0.9 x 2.5 mm, oblique) and the
    composed transform (MNI point -> native point). No GT anywhere."""
    size = (48, 56, 16)  # x, y, z
    ref = _image(np.zeros(size[::-1], np.float32), (1.0, 1.0, 3.0), MNI_ORIGIN)
    pts, idx = _phys_points(ref)
    flair = np.zeros(size[::-1], np.float32)
    flair[idx[:, 2], idx[:, 1], idx[:, 0]] = _in_blobs(pts)
    brain = np.zeros(size[::-1], np.uint8)
    brain[1:15, 4:52, 3:45] = 1
    paths = {"id": vid}
    for name, arr in (("T2w", rng.normal(size=flair.shape)), ("FLAIR", flair), ("T1w", rng.normal(size=flair.shape)),
                      ("brain_mask", brain)):
        p = root / f"{vid}_space-MNI1x1x3_desc-{'brain_mask' if name == 'brain_mask' else 'preproc_' + name}.nii.gz"
        img = _image(arr.astype(np.uint8 if name == "brain_mask" else np.float32), (1.0, 1.0, 3.0), MNI_ORIGIN)
        sitk.WriteImage(img, str(p))
        paths[name] = str(p)
    # native grid: oblique direction, centred on the image of the MNI centre
    d = _rigid((0, 0, 20), (0, 0, 0))[:3, :3]
    spacing, nsize = np.array([0.9, 0.9, 2.5]), np.array([64, 70, 24])
    centre = (mni_to_native @ np.array([0.0, 0.0, 0.0, 1.0]))[:3]
    origin = centre - d @ (spacing * (nsize - 1) / 2)
    native = _image(np.zeros(nsize[::-1], np.float32), tuple(spacing), tuple(origin), tuple(d.ravel()))
    paths["native_flair"] = str(root / f"{vid}_FLAIR.nii.gz")
    sitk.WriteImage(native, paths["native_flair"])
    paths["flair_xfm"] = str(root / f"{vid}_from-FLAIR_to-MNI1x1x3_xfm.tfm")
    write_transform(matrix_to_transform(mni_to_native), paths["flair_xfm"])
    for k in ("prob", "mask", "sd", "entropy", "mi"):
        paths[f"out_{k}"] = str(root / "out" / f"{vid}_space-MNI1x1x3_desc-{k}.nii.gz")
    paths["out_native_mask"] = str(root / "out" / f"{vid}_desc-unet_mask.nii.gz")
    return paths


def test_predict_visits_files_geometry_and_native_mask_without_gt(tmp_path, monkeypatch):
    model_path = tmp_path / "fold-0" / "model.keras"
    model_path.parent.mkdir()
    identity_keras_model((8, 32, 32)).save(model_path)
    xfm = _rigid((6, -4, 10), (7.0, -5.0, 4.0))
    rng = np.random.default_rng(4)
    visits = [_write_visit(tmp_path, f"sub-0{i}_ses-w000", rng, xfm) for i in (1, 2)]
    loads = []
    real_load = M.load_model
    monkeypatch.setattr(M, "load_model", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    recs = I.predict_visits(visits, [model_path, model_path], {"mc_samples": 2, "batch_size": 4, "threads": 1},
                            seed=0, log=None)
    assert len(loads) == 2  # each fold model loaded once, not once per visit
    assert [r["id"] for r in recs] == [v["id"] for v in visits]
    for v in visits:
        ref = sitk.ReadImage(v["brain_mask"])
        for k in ("prob", "mask", "sd", "entropy", "mi"):
            out = sitk.ReadImage(v[f"out_{k}"])
            assert same_geometry(out, ref, tol=1e-6), k
            assert out.GetPixelID() == (sitk.sitkUInt8 if k == "mask" else sitk.sitkFloat32), k
        mask = sitk.GetArrayFromImage(sitk.ReadImage(v["out_mask"]))
        flair = sitk.GetArrayFromImage(sitk.ReadImage(v["FLAIR"]))
        brain = sitk.GetArrayFromImage(ref)
        assert np.array_equal(mask, ((flair >= 0.5) & (brain > 0)).astype(np.uint8))
        ml_mni = mask.sum() * 3.0 / 1000
        assert ml_mni > 2.0
        native_ref = sitk.ReadImage(v["native_flair"])
        native = sitk.ReadImage(v["out_native_mask"])
        assert same_geometry(native, native_ref, tol=1e-6) and native.GetPixelID() == sitk.sitkUInt8
        nat = sitk.GetArrayFromImage(native)
        ml_nat = nat.sum() * np.prod(native.GetSpacing()) / 1000
        assert abs(ml_nat - ml_mni) <= 0.03 * ml_mni, (ml_nat, ml_mni)
        # where: the native mask covers the blobs seen through the transform (native -> MNI)
        pts, idx = _phys_points(native)
        back = np.c_[pts, np.ones(len(pts))] @ np.linalg.inv(xfm).T
        truth = np.zeros_like(nat)
        truth[idx[:, 2], idx[:, 1], idx[:, 0]] = _in_blobs(back[:, :3])
        dice = 2 * (truth & nat).sum() / (truth.sum() + nat.sum())
        assert dice > 0.85, dice


def test_bad_inputs_name_the_file(tmp_path):
    rng = np.random.default_rng(6)
    v = _write_visit(tmp_path, "sub-09_ses-w000", rng, np.eye(4))
    with pytest.raises(InputError, match="fold-1/model.keras: fold model not found"):
        I.predict_visits([v], [tmp_path / "fold-1" / "model.keras"], {}, seed=0, log=None)
    sitk.WriteImage(_image(np.zeros((16, 56, 40), np.float32), (1.0, 1.0, 3.0), MNI_ORIGIN), v["T1w"])
    with pytest.raises(InputError, match="preproc_T1w.nii.gz: geometry"):
        I.predict_visits([v], [], {}, seed=0, log=None, models=[flair_identity])
    with pytest.raises(ValueError, match="unknown keys \\['gt_mask'\\]"):
        I.predict_visits([{**v, "gt_mask": "x"}], [], {}, seed=0, log=None, models=[flair_identity])
    with pytest.raises(ValueError, match="unknown inference config keys"):
        I.predict_visits([v], [], {"overlapp": 0.5}, seed=0, log=None, models=[flair_identity])
    with pytest.raises(ValueError, match="blending must be one of"):
        I.predict_visits([v], [], {"blending": "cosine"}, seed=0, log=None, models=[flair_identity])


def test_workflow_script_calls_predict_visits_inside_the_rule_log(tmp_path, monkeypatch):
    import runpy
    from types import SimpleNamespace

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
                "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        monkeypatch.setenv(var, "2")  # restored after the test (rule_log sets them)
    model_path = tmp_path / "model.keras"
    identity_keras_model((8, 32, 32)).save(model_path)
    visit = _write_visit(tmp_path, "sub-03_ses-w024", np.random.default_rng(8), _rigid((0, 0, 5), (2.0, 1.0, 0.0)))
    log_path = tmp_path / "logs" / "infer.log"
    volume = tmp_path / "volumes" / "sub-03_ses-w024_volume.tsv"
    smk = SimpleNamespace(log=[str(log_path)], threads=1, input=SimpleNamespace(models=[str(model_path)]),
                          output=SimpleNamespace(volumes=[str(volume)]),
                          params=SimpleNamespace(visits=[visit], cfg={"mc_samples": 1, "overlap": 0.5}, seed=3,
                                                 volume={"connectivity": 18, "min_size": 3}))
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "workflow_scripts" / "infer.py"),
                   init_globals={"snakemake": smk})
    for k in ("out_prob", "out_mask", "out_sd", "out_entropy", "out_mi", "out_native_mask"):
        assert Path(visit[k]).is_file(), k
    text = log_path.read_text()
    # the same visit dict (the rule's params do not change), the optional maps not among the
    # job's declared outputs (inference.uncertainty_maps: []): they are not written
    for k in ("out_prob", "out_mask", "out_sd", "out_entropy", "out_mi", "out_native_mask"):
        Path(visit[k]).unlink()
    smk.output.masks = [visit[k] for k in ("out_prob", "out_mask", "out_mi", "out_native_mask")]
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "workflow_scripts" / "infer.py"),
                   init_globals={"snakemake": smk})
    assert all(Path(p).is_file() for p in smk.output.masks)
    assert not Path(visit["out_sd"]).exists() and not Path(visit["out_entropy"]).exists()
    assert I.declared_maps([visit], None) == [visit]
    with pytest.raises(ValueError, match=r"lacks \['out_mi'\]"):  # MI is no optional map
        I.predict_visits(I.declared_maps([{k: v for k, v in visit.items() if k != "out_mi"}], []),
                         [str(model_path)], {"mc_samples": 1}, seed=3)
    assert "visit 1/1 sub-03_ses-w024" in text and "overlap 0.50" in text
    # the predicted mask's lesion load, for the endpoint statistics: the mask's own voxels
    row = pd.read_csv(volume, sep="\t").iloc[0]
    assert (row["participant_id"], row["session"]) == ("sub-03", "ses-w024")
    mask = sitk.GetArrayFromImage(sitk.ReadImage(visit["out_mask"])) > 0
    spacing = sitk.ReadImage(visit["out_mask"]).GetSpacing()
    assert row["voxels"] == mask.sum() > 0  # the mask as given (metrics.clean_voxel_metrics: false)
    assert row["voxel_ml"] == pytest.approx(np.prod(spacing) / 1000.0)
    assert row["tlv_ml"] == pytest.approx(row["voxels"] * row["voxel_ml"])


@pytest.mark.parametrize("setting, fold_thresholds, applied, line", [
    ("auto", [0.8, 0.7], 0.75, "U-Net masks: probability >= 0.75 (threshold chosen on each fold's held-out "
                               "visits, mean of folds 0.80, 0.70)"),
    ("auto", None, 0.5, "WARNING t2lesion.infer: U-Net masks: probability >= 0.5 (fixed at 0.5: inference.threshold "
                        "is auto but the fold models in MODELS come without fold-<k>/threshold.json (0 of 2)"),
    (0.5, [0.8, 0.7], 0.5, "U-Net masks: probability >= 0.5 (fixed at 0.5 by inference.threshold)"),
])
def test_workflow_script_cuts_at_the_fold_thresholds_or_the_configured_one(tmp_path, monkeypatch, setting,
                                                                          fold_thresholds, applied, line):
    """inference.threshold: auto reads each fold's threshold.json (their mean), falls back to 0.5
    in one log line without them; a number overrides them. The volume row records it."""
    import json
    import runpy
    from types import SimpleNamespace

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
                "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        monkeypatch.setenv(var, "2")
    models, thresholds = [], []
    for k in (1, 2):
        path = tmp_path / "models" / f"fold-{k}" / "model.keras"
        path.parent.mkdir(parents=True)
        identity_keras_model((8, 32, 32)).save(path)
        models.append(str(path))
        if fold_thresholds:
            thresholds.append(str(path.parent / "threshold.json"))
            Path(thresholds[-1]).write_text(json.dumps({"threshold": fold_thresholds[k - 1]}))
    visit = _write_visit(tmp_path, "sub-04_ses-w000", np.random.default_rng(9), np.eye(4))
    del visit["out_native_mask"]
    # a FLAIR (= the probability) of 0.005, 0.015, ..., 0.995: no voxel within rounding of a threshold
    grades = (np.random.default_rng(10).integers(0, 100, size=(16, 56, 48)) + 0.5) / 100
    sitk.WriteImage(_image(grades.astype(np.float32), (1.0, 1.0, 3.0), MNI_ORIGIN), visit["FLAIR"])
    log_path = tmp_path / "logs" / "infer.log"
    volume = tmp_path / "volumes" / "sub-04_ses-w000_volume.tsv"
    cfg = {"models": str(tmp_path / "models"), "mc_samples": 1, "threshold": setting}
    smk = SimpleNamespace(log=[str(log_path)], threads=1,
                          input=SimpleNamespace(models=models, thresholds=thresholds),
                          output=SimpleNamespace(volumes=[str(volume)]),
                          params=SimpleNamespace(visits=[visit], cfg=cfg, seed=3,
                                                 volume={"connectivity": 18, "min_size": 3}))
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "workflow_scripts" / "infer.py"),
                   init_globals={"snakemake": smk})
    text = log_path.read_text()
    assert line.replace("MODELS", str(tmp_path / "models")) in text
    assert sum("U-Net masks:" in t for t in text.splitlines()) == 1
    mask = sitk.GetArrayFromImage(sitk.ReadImage(visit["out_mask"]))
    brain = sitk.GetArrayFromImage(sitk.ReadImage(visit["brain_mask"])) > 0
    assert np.array_equal(mask, ((grades >= applied) & brain).astype(np.uint8))
    row = pd.read_csv(volume, sep="\t").iloc[0]
    assert row["threshold"] == pytest.approx(applied)


def test_write_maps_on_threads_writes_the_same_files_as_one_thread(tmp_path, monkeypatch):
    """The maps of a visit are written one per thread (ITK gzips without the GIL): the same
    images (the same bytes) as one after another, the native mask included, and a failing write
    is raised after the others have finished (no half-written visit left behind unnoticed)."""
    rng = np.random.default_rng(2)
    (tmp_path / "a").mkdir()
    v = _write_visit(tmp_path / "a", "sub-05_ses-w000", rng, _rigid((3, 0, 5), (2.0, 1.0, 0.0)))
    ref = sitk.ReadImage(v["brain_mask"])
    shape = sitk.GetArrayFromImage(ref).shape
    maps = {k: rng.random(shape).astype(np.float32) for k in ("prob", "sd", "entropy", "mi")}
    maps["mask"] = (maps["prob"] > 0.7).astype(np.uint8)
    keys = [f"out_{k}" for k in I.MAPS] + ["out_native_mask"]
    other = {**v, **{k: v[k].replace(str(tmp_path / "a"), str(tmp_path / "b")) for k in keys}}
    threads = []
    real = sitk.WriteImage
    monkeypatch.setattr(sitk, "WriteImage", lambda *a, **k: threads.append(__import__("threading").get_ident())
                        or real(*a, **k))
    I.write_maps(maps, ref, v, threads=1)
    assert len(set(threads)) == 1 and len(threads) == 6
    threads.clear()
    I.write_maps(maps, ref, other, threads=4)
    assert len(set(threads)) > 1 and len(threads) == 6
    for k in keys:
        assert Path(v[k]).read_bytes() == Path(other[k]).read_bytes(), k
    for k in I.MAPS:
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(v[f"out_{k}"])), maps[k])
    broken = {**other, "native_flair": str(tmp_path / "missing.nii.gz")}
    for k in keys:
        Path(broken[k]).unlink()
    with pytest.raises(InputError, match="missing.nii.gz: file not found"):
        I.write_maps(maps, ref, broken, threads=4)
    assert all(Path(broken[f"out_{k}"]).is_file() for k in I.MAPS)
