"""Loss of Eq. 1–2 (docs/DESIGN.md §5): smooth truncated CE, soft Dice, α map, schedules, callback."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from keras import ops

from t2lesion.unet import losses as L

np_ = ops.convert_to_numpy


def st_ref(p, g):
    p = np.asarray(p, dtype=np.float64)
    return np.where(p < g, -np.log(g) + 0.5 * (1 - p**2 / g**2), -np.log(np.maximum(p, g)))


# --------------------------------------------------------------------------- smooth truncated CE


def test_smooth_truncated_ce_hand_values_both_branches():
    g = 0.1
    p = np.array([0.0, 0.05, 0.1, 0.5, 1.0], "float32")
    got = np_(L.smooth_truncated_ce(ops.convert_to_tensor(p), g))
    expected = [
        -math.log(0.1) + 0.5,  # p = 0: quadratic branch
        -math.log(0.1) + 0.5 * (1 - 0.25),  # 2.302585 + 0.375
        -math.log(0.1),  # at γ both branches meet
        math.log(2.0),  # log branch: -log 0.5 (NOT -log γ as in the transcribed paper)
        0.0,
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def _grad(fn, x):
    import tensorflow as tf

    x = tf.constant(x)
    with tf.GradientTape() as t:
        t.watch(x)
        y = tf.reduce_sum(fn(x))
    return t.gradient(y, x).numpy()


@pytest.mark.parametrize("g", [0.02, 0.15])
def test_smooth_truncated_ce_continuous_in_value_and_slope_at_gamma(g):
    eps = 1e-7
    p = np.array([g - eps, g, g + eps], "float64")
    val = np_(L.smooth_truncated_ce(ops.convert_to_tensor(p), g))
    assert np.max(np.abs(val - (-math.log(g)))) < 1e-5
    slope = _grad(lambda x: L.smooth_truncated_ce(x, g), p)
    np.testing.assert_allclose(slope, [-1 / g] * 3, rtol=1e-5)
    # the two branches' own slopes: -p/γ² below, -1/p above
    below = _grad(lambda x: L.smooth_truncated_ce(x, g), np.array([g / 2]))
    above = _grad(lambda x: L.smooth_truncated_ce(x, g), np.array([2 * g]))
    np.testing.assert_allclose(below, [-(g / 2) / g**2], rtol=1e-6)
    np.testing.assert_allclose(above, [-1 / (2 * g)], rtol=1e-6)


# --------------------------------------------------------------------------- Dice


def test_soft_dice_zero_for_perfect_prediction_and_one_for_disjoint():
    q = np.zeros((2, 4, 4, 4, 1), "float32")
    q[0, 1:3, 1:3, 1:3] = 1
    axes = (1, 2, 3, 4)
    np.testing.assert_allclose(np_(L.soft_dice_loss(q, q, axes)), [0.0, 0.0], atol=1e-7)  # empty/empty too
    p = np.zeros_like(q)
    p[0, 0, 0, 0] = 1
    d = np_(L.soft_dice_loss(p, q, axes, smooth=0.0))
    assert d[0] == pytest.approx(1.0)
    # squared denominator: p = 0.5 everywhere on the lesion -> 1 - 2·0.5·8 / (8·0.25 + 8)
    p2 = 0.5 * q
    assert np_(L.soft_dice_loss(p2, q, axes, smooth=0.0))[0] == pytest.approx(1 - 8 / 10)


# --------------------------------------------------------------------------- full loss


def _ref_loss(t, p, g, b, smooth=1.0):
    q, a = t[..., 0], t[..., 1]
    p = p[..., 0].astype(np.float64)
    out = []
    for i in range(len(p)):
        fg_n, bg_n = q[i].sum(), (1 - q[i]).sum()
        fg = (q[i] * a[i] * st_ref(p[i], g)).sum() / max(fg_n, 1)
        bg = ((1 - q[i]) * st_ref(1 - p[i], g)).sum() / max(bg_n, 1)
        dice = 1 - (2 * (p[i] * q[i]).sum() + smooth) / ((p[i] ** 2).sum() + (q[i] ** 2).sum() + smooth)
        out.append(fg + b * bg + dice)
    return np.array(out)


def _example(seed=0, shape=(3, 4, 8, 8)):
    rng = np.random.default_rng(seed)
    m = np.zeros(shape, "float32")
    m[0, 1:3, 2:5, 2:5] = 1
    m[1, 0, 0, 0] = 1
    m[1, 2:4, 4:8, 4:8] = 1  # sample 2 (index 2) has no lesion: FG term guarded
    alpha = np.stack([L.alpha_map(x) for x in m])
    t = L.pack_targets(m, alpha)
    p = rng.uniform(0, 1, shape + (1,)).astype("float32")
    p[0, 0, 0, 0] = 0.0
    p[0, 1, 2, 2] = 1.0
    return t, p


def test_loss_matches_hand_computation_per_sample():
    t, p = _example()
    loss = L.LesionSegLoss(gamma=0.1, beta=0.7, reduction=None)
    got = np_(loss(t, p))
    np.testing.assert_allclose(got, _ref_loss(t, p, 0.1, 0.7), rtol=1e-5)
    assert np.all(np.isfinite(got))
    # default reduction: mean over the batch
    assert float(np_(L.LesionSegLoss(gamma=0.1, beta=0.7)(t, p))) == pytest.approx(got.mean(), rel=1e-5)


def test_loss_is_dice_only_for_perfect_prediction():
    t, _ = _example()
    p = t[..., :1].copy()
    got = np_(L.LesionSegLoss(gamma=0.05, beta=1.0, reduction=None)(t, p))
    np.testing.assert_allclose(got, 0.0, atol=1e-6)


def test_deep_supervision_targets_are_max_pooled_in_graph():
    t, _ = _example(shape=(2, 4, 8, 8))
    p = np.random.default_rng(3).uniform(0, 1, (2, 2, 4, 4, 1)).astype("float32")
    loss = L.LesionSegLoss(gamma=0.1, beta=0.5, reduction=None)
    pooled = t.reshape(2, 2, 2, 4, 2, 4, 2, 2).max(axis=(2, 4, 6))
    np.testing.assert_allclose(np_(loss(t, p)), _ref_loss(pooled, p, 0.1, 0.5), rtol=1e-5)
    with pytest.raises(ValueError, match="integer multiple"):
        loss(t, p[:, :, :3])


def test_loss_gradients_finite_including_saturated_predictions():
    import tensorflow as tf

    t, p = _example()
    p[..., 0][t[..., 0] > 0] = 0.0  # worst case: lesions predicted 0
    p[0, 0] = 1.0  # and background predicted 1
    loss = L.LesionSegLoss(gamma=0.02, beta=1.0)
    x = tf.constant(p)
    with tf.GradientTape() as tape:
        tape.watch(x)
        v = loss(t, x)
    g = tape.gradient(v, x).numpy()
    assert np.isfinite(float(v)) and np.all(np.isfinite(g))
    assert np.any(g != 0)


def test_loss_serialization_roundtrip():
    loss = L.LesionSegLoss(gamma=0.07, beta=0.3, dice_smooth=2.0, name="x")
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, L.LesionSegLoss)
    t, p = _example()
    np.testing.assert_allclose(np_(again(t, p)), np_(loss(t, p)), rtol=1e-6)


# --------------------------------------------------------------------------- α map and schedules


def test_alpha_map_uses_connected_component_volume():
    m = np.zeros((6, 20, 20), np.uint8)
    m[1, 1, 1:4] = 1  # 3-voxel lesion
    m[2:5, 8:18, 8:18] = 1  # 300-voxel lesion
    m[0, 10, 2] = 1  # isolated voxel ...
    m[1, 11, 2] = 1  # ... edge-neighbour (18-connected, not 6-connected) of this one
    m[5, 0, 0] = m[4, 1, 1] = 1  # corner neighbours: separate lesions at 18, one at 26
    a = L.alpha_map(m)
    assert a[m == 0].max() == 0
    w3, w300, w2 = L.alpha_weight([3, 300, 2])
    np.testing.assert_allclose(a[1, 1, 1:4], w3, rtol=1e-6)
    np.testing.assert_allclose(a[2:5, 8:18, 8:18], w300, rtol=1e-6)
    w1 = L.alpha_weight(1)
    np.testing.assert_allclose([a[0, 10, 2], a[1, 11, 2]], [w2, w2], rtol=1e-6)
    np.testing.assert_allclose([a[5, 0, 0], a[4, 1, 1]], [w1, w1], rtol=1e-6)
    a6 = L.alpha_map(m, connectivity=6)
    np.testing.assert_allclose([a6[0, 10, 2], a6[1, 11, 2]], [w1, w1], rtol=1e-6)
    a26 = L.alpha_map(m, connectivity=26)
    np.testing.assert_allclose([a26[5, 0, 0], a26[4, 1, 1]], [w2, w2], rtol=1e-6)
    assert w3 > 90 and w300 < 1.01 and w3 <= 100
    with pytest.raises(ValueError):
        L.alpha_map(m, connectivity=8)


def test_alpha_weight_sigmoid_decay():
    w = L.alpha_weight(np.arange(1, 500))
    assert np.all(np.diff(w) <= 0) and np.all(np.diff(w[:150]) < 0) and w.max() <= 100 and w.min() >= 1
    assert L.alpha_weight(30) == pytest.approx((100 + 1) / 2)  # midpoint
    assert L.alpha_weight(30, max_weight=50, min_weight=0) == pytest.approx(25)


def test_gamma_and_beta_schedules():
    g = [L.gamma_schedule(e, 30) for e in range(30)]
    assert g[0] == pytest.approx(0.02) and g[-1] == pytest.approx(0.15)
    assert np.all(np.diff(g) > 0)
    b = [L.beta_schedule(e, 31) for e in range(31)]
    assert np.all(np.diff(b) > 0)
    assert b[15] == pytest.approx((0.1 + 1.0) / 2)  # sigmoid midpoint at half of training
    assert b[0] < 0.11 and b[-1] > 0.99


def test_schedule_callback_drives_the_compiled_loss():
    """With lr = 0 the prediction is fixed, so each epoch's logged loss is the Eq. 1 value at
    that epoch's γ and β: proves the compiled train step reads the model's schedule state."""
    t, _ = _example(shape=(2, 4, 8, 8))
    x = np.random.default_rng(1).normal(size=(2, 4, 8, 8, 1)).astype("float32")
    inp = keras.Input((4, 8, 8, 1))
    h = L.LossScheduleState()(inp)
    out = keras.layers.Conv3D(1, 1, activation="sigmoid", kernel_initializer="ones", bias_initializer="zeros")(h)
    model = keras.Model(inp, out)
    losses, cb = L.make_loss(n_epochs=4, n_outputs=1, model=model)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=losses[0])
    hist = model.fit(x, t, epochs=4, batch_size=2, verbose=0, shuffle=False, callbacks=[cb])
    p = 1 / (1 + np.exp(-x))
    expected = [_ref_loss(t, p, g, b).mean() for _, g, b in cb.history]
    np.testing.assert_allclose(hist.history["loss"], expected, rtol=1e-4)
    assert [h[0] for h in cb.history] == [0, 1, 2, 3]
    assert cb.history[-1][1] == pytest.approx(0.15)
    assert L.find_schedule_state(model).values()[0] == 3
    assert float(np_(losses[0].gamma)) == pytest.approx(0.15)


def test_make_loss_binds_every_level_to_the_model_state():
    inp = keras.Input((4, 8, 8, 1))
    state = L.LossScheduleState(name="s")
    model = keras.Model(inp, keras.layers.Conv3D(1, 1)(state(inp)))
    losses, cb = L.make_loss(n_epochs=10, n_outputs=3, model=model)
    assert [l.name for l in losses] == ["loss_d1", "loss_d2", "loss_d3"]
    assert all(l.state is state and l.scheduled for l in losses)
    assert state.values() == (-1, pytest.approx(0.02), pytest.approx(L.beta_schedule(0, 10)))
    cb.on_epoch_begin(9)
    assert all(l.current()[0] == pytest.approx(0.15) for l in losses)
    # the config records the current values and that the loss is scheduled
    assert losses[0].get_config()["gamma"] == pytest.approx(0.15) and losses[0].get_config()["scheduled"]
    with pytest.raises(ValueError, match="LossScheduleState"):
        L.make_loss(model=keras.Model(inp, keras.layers.Conv3D(1, 1)(inp)))


def _schedule_report(backend: str, tmp_path) -> dict:
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _backend_check as BC

    if backend == keras.backend.backend():
        os.environ["T2L_TMP"] = str(tmp_path)
        return BC.schedule_checks()
    env = {**os.environ, "KERAS_BACKEND": backend, "T2L_TMP": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    out = tmp_path / f"{backend}.json"
    proc = subprocess.run([sys.executable, BC.__file__, "--schedule", str(out)], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("backend", ["tensorflow", "torch", "jax"])
def test_schedule_is_model_state_on_every_backend(backend, tmp_path):
    """γ/β changed between epochs reach the compiled train and test steps without rebuilding
    them (JAX: no recompile per epoch), validation loss uses the current values, and the
    state survives save/load with the deserialised loss bound to it (unbound: a warning)."""
    rep = _schedule_report(backend, tmp_path)
    assert rep["backend"] == backend
    exp = rep["expected"]
    assert min(abs(a - b) for a, b in zip(exp, exp[1:])) > 0.05  # the check is sensitive
    np.testing.assert_allclose(rep["loss"], exp, rtol=1e-5)
    np.testing.assert_allclose(rep["val_loss"], exp, rtol=1e-5)  # validation at the epoch's γ/β
    assert rep["train_function_ids_distinct"] == 1  # never rebuilt
    if backend in ("tensorflow", "jax"):  # traced once, never retraced for new γ/β
        assert len(set(rep["loss_traces_per_epoch"])) == 1, rep["loss_traces_per_epoch"]
    for got, want in rep["evaluate_vs_expected"] + [rep["loaded_evaluate_vs_expected"]]:
        assert got == pytest.approx(want, rel=1e-5)
    assert abs(rep["evaluate_vs_expected"][0][0] - rep["evaluate_vs_expected"][1][0]) > 0.05
    assert not rep["test_function_rebuilt"]
    assert rep["loaded_state"] == [2, pytest.approx(0.11), pytest.approx(0.77)]
    assert rep["loaded_loss_bound"] and rep["unbound_warns"]


def test_pack_targets():
    m = np.zeros((2, 3, 4), np.uint8)
    m[0, 1, 1] = 1
    t = L.pack_targets(m)
    assert t.shape == (2, 3, 4, 2) and t.dtype == np.float32
    np.testing.assert_array_equal(t[..., 0], m)
    np.testing.assert_array_equal(t[..., 1], m)  # α = 1 on lesion voxels by default
    with pytest.raises(ValueError):
        L.pack_targets(m, np.zeros((2, 3, 5)))
