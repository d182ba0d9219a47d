"""Multi-arm 3-D U-Net (docs/DESIGN.md §4): shapes, parameter counts, receptive field, MC dropout,
save/load, and the same training run on the TensorFlow, PyTorch and JAX backends."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from t2lesion.unet import model as M

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _backend_check as BC

REPO = Path(__file__).resolve().parent.parent
np_ = keras.ops.convert_to_numpy


# --------------------------------------------------------------------------- defaults


@pytest.fixture(scope="module")
def default_model():
    return M.build_multiarm_unet(M.ModelConfig())


def test_default_parameter_count_and_output_shapes(default_model):
    cfg = M.ModelConfig()
    n = M.count_params(default_model)
    assert n == 6_094_131  # docs/model.md; the paper reports about 5.9 M
    # Keras also counts the loss schedule's three scalars (γ, β, epoch): model state, not parameters
    assert default_model.count_params() == n + 3
    assert len(default_model.get_layer(M.SCHEDULE_LAYER).weights) == 3
    # the encoder/decoder sub-models partition the weights of the full model
    enc, dec = M.split_encoder_decoder(default_model)
    assert (M.count_params(enc), M.count_params(dec)) == (5_007_440, 1_086_691)
    assert M.count_params(enc) + M.count_params(dec) == n

    x = np.random.default_rng(0).normal(size=(1, 32, 96, 96, 3)).astype("float32")
    out = default_model.predict_on_batch(x)
    expected = [(1, 32, 96, 96, 1), (1, 32, 48, 48, 1), (1, 16, 24, 24, 1)]
    assert [tuple(np.asarray(o).shape) for o in out] == expected
    assert [(1,) + s for s in M.output_shapes(cfg)] == expected
    for o in out:
        o = np.asarray(o)
        assert np.all((o >= 0) & (o <= 1)) and np.all(np.isfinite(o))


def _sources(tensors, is_source) -> set[str]:
    """Names of the layers matching ``is_source`` whose outputs reach ``tensors`` along graph
    paths that pass no other such layer (walks the functional graph backwards)."""
    found: set[str] = set()
    stack = list(tensors)
    while stack:
        op = stack.pop()._keras_history.operation
        if is_source(op.name):
            found.add(op.name)
        elif not isinstance(op, keras.layers.InputLayer):
            stack.extend(op.input if isinstance(op.input, (list, tuple)) else [op.input])
    return found


def _depths(names, pattern: re.Pattern, group: int = 1) -> list[int]:
    return sorted(int(pattern.match(n).group(group)) for n in names)


def _connectivity(cfg: M.ModelConfig) -> dict:
    """For each encoder arm/depth, the depths whose block outputs feed its block (dense input);
    for each encoder output S_d, the depths whose projected skips it sums (dense skip); for each
    decoder depth, the deeper decoder levels upsampled into it (decoder shortcuts)."""
    enc, dec, D = M.build_multiarm_encoder(cfg), M.build_multiarm_decoder(cfg), cfg.depth
    block = re.compile(r"e(\d)_d(\d)_block_relu2$")
    proj = re.compile(r"skip_d(\d)_proj_relu$")
    drop = re.compile(r"dec_d(\d)_dropout$")
    dense_in = {}
    for a in range(1, len(cfg.arms) + 1):
        for d in range(2, D + 1):
            block_in = enc.get_layer(f"e{a}_d{d}_block_conv1").input
            dense_in[(a, d)] = _depths(_sources([block_in], lambda n: bool(block.match(n))), block, 2)
    dense_skip = {d: _depths(_sources([enc.outputs[d - 1]], lambda n: bool(proj.match(n))), proj)
                  for d in range(1, D + 1)}
    shortcuts = {d: _depths(_sources([dec.get_layer(f"dec_d{d}_concat").input[0]], lambda n: bool(drop.match(n))), drop)
                 for d in range(1, D)}
    return {"dense_input": dense_in, "dense_skip": dense_skip, "decoder_shortcuts": shortcuts}


def test_dense_input_skip_and_decoder_connectivity_are_in_the_graph():
    """Graph structure, which the receptive-field test cannot see (a chain through every level
    has the same receptive field as the dense sums)."""
    cfg = BC.tiny_config()  # default structure, tiny widths
    D = cfg.depth
    conn = _connectivity(cfg)
    # dense input: the block of every arm at depth d gets every shallower depth
    assert conn["dense_input"] == {(a, d): list(range(1, d)) for a in (1, 2, 3) for d in range(2, D + 1)}
    # dense skips: every skip is the sum of the projected skips of all depths
    assert conn["dense_skip"] == {d: list(range(1, D + 1)) for d in range(1, D + 1)}
    # decoder shortcuts: every decoder depth gets every deeper decoder level
    assert conn["decoder_shortcuts"] == {d: list(range(d + 1, D + 1)) for d in range(1, D)}
    # the same walk on the ablations sees the connections disappear (the test can fail)
    plain = _connectivity(M.with_overrides(cfg, dense_input=False, dense_skip=False, decoder_shortcuts=False))
    assert plain["dense_input"] == {(a, d): [d - 1] for a in (1, 2, 3) for d in range(2, D + 1)}
    assert plain["dense_skip"] == {d: [d] for d in range(1, D + 1)}
    assert plain["decoder_shortcuts"] == {d: [d + 1] for d in range(1, D)}


def test_plain_unet_baseline_is_buildable_and_larger():
    plain = M.build_plain_unet(M.ModelConfig())
    n = M.count_params(plain)
    assert 7.0e6 <= n <= 8.5e6, n  # paper: 7.7 M
    assert [tuple(o.shape[1:]) for o in plain.outputs] == [(32, 96, 96, 1), (32, 48, 48, 1), (16, 24, 24, 1)]
    _, dec = M.split_encoder_decoder(plain, mc=True)
    assert any(isinstance(l, M.MCDropout) and l.always_on for l in dec.layers)


def test_three_arms_see_the_right_channels(default_model):
    enc = default_model.get_layer("encoder")
    sel = {l.name: l.indices for l in enc.layers if isinstance(l, M.ChannelSelect)}
    # channel order [T2w, FLAIR, T1w]: E1 all, E2 FLAIR, E3 T2w
    assert sel == {"e1_all_select": [0, 1, 2], "e2_FLAIR_select": [1], "e3_T2w_select": [0]}


def test_config_roundtrip_and_validation():
    cfg = M.ModelConfig()
    assert M.ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model config keys"):
        M.ModelConfig.from_dict({"widht": [1, 2]})
    with pytest.raises(ValueError, match="strides needs 3"):
        M.ModelConfig.from_dict({"strides": [[1, 2, 2]]})
    with pytest.raises(ValueError, match="not divisible"):
        M.ModelConfig.from_dict({"patch_size": [30, 96, 96]})
    with pytest.raises(ValueError, match="not in channel_order"):
        M.ModelConfig.from_dict({"arms": [["x", ["PD"]]], "arm_fractions": [1.0]})
    # the config.yaml "model:" section: kind + ModelConfig fields
    plain = M.build_from_config({"kind": "plain", **BC.TRAIN_TINY})
    assert plain.name == "plain_unet" and len(plain.outputs) == 2
    with pytest.raises(ValueError, match="unknown model kind"):
        M.build_from_config({"kind": "unet++"})


def test_no_tensorflow_or_torch_in_graph_code():
    """Model and loss use keras / keras.ops only (numpy/scipy only for data-side helpers)."""
    import ast

    for name in ("model.py", "layers.py", "receptive_field.py", "losses.py", "train.py", "hparams.py"):
        tree = ast.parse((REPO / "t2lesion" / "unet" / name).read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
        assert imported <= {"__future__", "collections", "dataclasses", "math", "typing", "keras", "numpy", "scipy",
                            "t2lesion", "warnings", "hashlib", "json", "logging", "os", "shutil", "time", "pathlib",
                            "importlib", "matplotlib"}, (name, imported)
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert not names & {"tf", "tensorflow", "torch", "jax"}, name


# --------------------------------------------------------------------------- components


def _reference_linear_upsample(a: np.ndarray, axis: int, f: int) -> np.ndarray:
    """Half-pixel-centre linear interpolation with edge clamping, index by index."""
    n = a.shape[axis]
    out = []
    for o in range(n * f):
        u = min(max((o + 0.5) / f - 0.5, 0.0), n - 1)
        i0 = int(np.floor(u))
        i1 = min(i0 + 1, n - 1)
        w = u - i0
        out.append((1 - w) * np.take(a, i0, axis=axis) + w * np.take(a, i1, axis=axis))
    return np.stack(out, axis=axis)


@pytest.mark.parametrize("factors", [(1, 2, 2), (2, 2, 2), (2, 4, 4), (1, 3, 1)])
def test_linear_upsample_matches_reference(factors):
    a = np.random.default_rng(1).normal(size=(2, 3, 4, 5, 2)).astype("float32")
    got = np_(M.LinearUpsample3D(factors)(a))
    ref = a.astype("float64")
    for ax, f in enumerate(factors):
        if f > 1:
            ref = _reference_linear_upsample(ref, ax + 1, f)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_receptive_field_defaults_roughly_isotropic_in_mm():
    rf = M.receptive_field(M.ModelConfig())
    z, y, x = rf["finest_mm"]
    assert y == x
    assert abs(z - y) / y < 0.1, rf  # designed to be about equal along the three axes
    assert rf["voxels"][0] == [39, 123, 123] and rf["mm"][0] == [117.0, 123.0, 123.0]
    assert rf["min_voxels"][0] == [35, 115, 115]
    for head in range(3):
        assert all(lo <= hi for lo, hi in zip(rf["min_voxels"][head], rf["voxels"][head]))
    # a plain U-Net of 3x3x3 convs would be strongly anisotropic in mm (z 3 mm voxels)
    zp, yp, _ = M.receptive_field(M.ModelConfig(), "plain")["finest_mm"]
    assert zp / yp > 1.4


def _empirical_rf(model, shape) -> list[int]:
    """Extent (voxels, per axis) of the input region that influences the finest head's logit at
    the centre voxel. In float64 with every BN set to scale 0.1, offset 10, all ReLUs are active,
    so the network is affine in x and the gradient support is exactly the receptive field."""
    import tensorflow as tf

    for w in model.weights:
        if w.path.endswith("/gamma"):
            w.assign(np.full(w.shape, 0.1))
        elif w.path.endswith("/beta"):
            w.assign(np.full(w.shape, 10.0))
    enc, dec = model.get_layer("encoder"), model.get_layer("decoder")
    logit = keras.Model(dec.inputs, dec.get_layer("prob_d1_conv").output)
    x = tf.constant(np.random.default_rng(0).normal(size=(1,) + shape + (3,)))
    with tf.GradientTape() as tape:
        tape.watch(x)
        o = logit(enc(x, training=False), training=False)
        c = [s // 2 for s in o.shape[1:4]]
        val = o[0, c[0], c[1], c[2], 0]
    g = np.abs(tape.gradient(val, x).numpy())[0].sum(-1)
    ext = []
    for ax in range(3):
        prof = g.sum(axis=tuple(a for a in range(3) if a != ax))
        nz = np.nonzero(prof > 0)[0]
        assert nz[0] > 0 and nz[-1] < shape[ax] - 1, "receptive field touches the input border"
        ext.append(int(nz[-1] - nz[0] + 1))
    return ext


@pytest.mark.parametrize("kind,shape", [("multiarm", (48, 128, 128))])
def test_receptive_field_matches_gradient_support(kind, shape):
    # ("plain", (64, 128, 128)) passes too (checked while writing this; 17 s more of CI time)
    # default kernels/strides/connectivity, 1-channel widths, input larger than the receptive field
    cfg = M.ModelConfig.from_dict({"widths": [1, 1, 1, 1], "patch_size": list(shape), "dropout_rate": 0.0})
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    try:
        model = M.build_model(cfg, kind)
    finally:
        keras.config.set_dtype_policy(policy)
    rf = M.receptive_field(cfg, kind, input_size=shape)
    assert _empirical_rf(model, shape) == rf["centre_voxels"][0]


# --------------------------------------------------------------------------- MC dropout


@pytest.fixture(scope="module")
def tiny():
    cfg = BC.tiny_config()
    model = M.build_multiarm_unet(cfg)
    # make moving statistics differ clearly from any batch statistics
    rng = np.random.default_rng(7)
    for w in model.non_trainable_weights:
        if w.path.endswith("moving_mean"):
            w.assign(rng.normal(0, 0.5, w.shape).astype("float32"))
        elif w.path.endswith("moving_variance"):
            w.assign(rng.uniform(0.5, 2.0, w.shape).astype("float32"))
    # standardise the heads' logits on this batch so probabilities are not saturated
    # (keeps every comparison below sensitive)
    x, _ = BC.synthetic_batch(cfg, batch=3, seed=2)
    enc, dec = model.get_layer("encoder"), model.get_layer("decoder")
    feats = enc(x, training=False)
    for d in range(cfg.supervision_levels):
        conv = dec.get_layer(f"prob_d{d + 1}_conv")
        logits = np_(keras.Model(dec.inputs, conv.output)(feats))
        k, b = conv.kernel, conv.bias
        k.assign(np_(k) / logits.std())
        b.assign((np_(b) - logits.mean()) / logits.std())
    p = np.asarray(model.predict_on_batch(x)[0])
    assert 0.05 < np.median(p) < 0.95 and p.std() > 0.05
    return cfg, model, x


def test_mc_decoder_shares_weights(tiny):
    _, model, _ = tiny
    enc, dec = M.split_encoder_decoder(model)
    _, mc = M.split_encoder_decoder(model, mc=True)
    assert enc is model.get_layer("encoder") and dec is model.get_layer("decoder")
    ids = {id(v) for v in dec.weights}
    mc_vars = [v for v in mc.weights if "seed_generator" not in v.path]
    assert len(mc_vars) == len([v for v in dec.weights if "seed_generator" not in v.path])
    assert all(id(v) in ids for v in mc_vars)
    assert sum(isinstance(l, M.MCDropout) and l.always_on for l in mc.layers) == 4


def test_mc_rate0_equals_deterministic_and_uses_moving_statistics(tiny):
    _, model, x = tiny
    enc, dec = M.split_encoder_decoder(model)
    _, mc0 = M.split_encoder_decoder(model, mc=True, rate=0.0)
    feats = enc(x, training=False)
    det = [np_(o) for o in dec(feats, training=False)]
    mc = [np_(o) for o in mc0(feats)]
    for a, b in zip(det, mc):
        np.testing.assert_array_equal(a, b)
    # deterministic == full model prediction
    np.testing.assert_allclose(det[0], np.asarray(model.predict_on_batch(x)[0]), atol=1e-5)
    # MC output of a window does not depend on the other windows of the batch (no batch stats)
    feats0 = enc(x[:1], training=False)
    np.testing.assert_allclose(np_(mc0(feats0)[0]), mc[0][:1], atol=1e-5)
    # batch-statistics mode (training=True, what MC must not use) gives something else
    # (and updates the moving statistics: restore them for the other tests)
    saved = [np_(v).copy() for v in model.non_trainable_weights]
    train_mode = np_(dec(feats, training=True)[0])
    for v, a in zip(model.non_trainable_weights, saved):
        v.assign(a)
    assert np.max(np.abs(train_mode - det[0])) > 1e-2


def test_mc_samples_differ_only_through_dropout(tiny):
    _, model, x = tiny
    enc, mc = M.split_encoder_decoder(model, mc=True)
    stats_before = [np_(v).copy() for v in model.non_trainable_weights if "moving" in v.path]
    pred = M.build_mc_predictor(enc, mc, n_samples=5, mode="samples")

    def draw(seed):
        M.set_mc_seed(mc, seed)
        return np.asarray(pred.predict_on_batch(x))

    s1 = draw(11)
    assert s1.shape == (3, 5, 8, 32, 32, 1)
    # samples differ from each other (dropout) ...
    assert np.max(np.abs(s1[:, 0] - s1[:, 1])) > 1e-2
    # ... reproducibly for a seed, differently for another seed
    np.testing.assert_array_equal(s1, draw(11))
    assert np.max(np.abs(s1 - draw(12))) > 1e-2
    # seeds past 2**32 (folds x windows x passes) work, are reproducible and do not alias
    big = draw(4_300_000_000 + 11)
    np.testing.assert_array_equal(big, draw(4_300_000_000 + 11))
    assert np.max(np.abs(s1 - big)) > 1e-2 and np.max(np.abs(big - draw(2**40))) > 1e-2
    # mc_predict (from the model's own decoder) in moments mode: statistics of the same draws
    mom = M.mc_predict(enc, model.get_layer("decoder"), x, n_samples=5, seed=11, mode="moments")
    assert mom.shape == (3, 8, 32, 32, 3)
    np.testing.assert_allclose(mom[..., 0], s1.mean(1)[..., 0], atol=1e-5)
    np.testing.assert_allclose(mom[..., 1], (s1**2).mean(1)[..., 0], atol=1e-5)
    pc = np.clip(s1[..., 0], 1e-7, 1 - 1e-7)
    ent = -(pc * np.log(pc) + (1 - pc) * np.log(1 - pc))
    np.testing.assert_allclose(mom[..., 2], ent.mean(1), atol=1e-4)
    # MC inference never updates the BN moving statistics
    stats_after = [np_(v) for v in model.non_trainable_weights if "moving" in v.path]
    assert all(np.array_equal(a, b) for a, b in zip(stats_before, stats_after))


def test_mc_predictor_runs_encoder_once_on_windows_and_decoder_on_repeated_batch(tiny):
    _, model, x = tiny
    enc, dec = M.split_encoder_decoder(model, mc=True)
    pred = M.build_mc_predictor(enc, dec, n_samples=4, mode="samples")
    assert sum(l is enc for l in pred.layers) == 1 and sum(l is dec for l in pred.layers) == 1
    # the decoder input is the encoder output repeated n times along the batch (sample-major)
    feats = enc(x, training=False)
    rep = M.RepeatBatch(4)(feats[0])
    assert tuple(rep.shape) == (12,) + tuple(feats[0].shape[1:])
    np.testing.assert_array_equal(np_(rep)[3:6], np_(feats[0]))


# --------------------------------------------------------------------------- training, save/load, backends


def test_tensorflow_training_reduces_loss_and_save_load(tmp_path, monkeypatch):
    monkeypatch.setenv("T2L_TMP", str(tmp_path))
    rep = BC.run_checks(str(tmp_path / "tf.json"))
    _assert_backend_report(rep, "tensorflow")


def _assert_backend_report(rep: dict, backend: str):
    assert rep["backend"] == backend
    assert rep["finite"]
    losses = rep["train_losses"]
    assert min(losses[-2:]) < 0.5 * losses[0], losses
    assert rep["pred_shapes"] == [[2, 8, 32, 32, 1], [2, 8, 16, 16, 1]]
    assert rep["save_load_max_abs_diff"] == 0.0
    assert rep["mc0_vs_det_max_abs_diff"] == 0.0
    assert rep["det_vs_full_model_max_abs_diff"] < 1e-5
    assert rep["mc_samples_shape"] == [2, 4, 8, 32, 32, 1]
    assert rep["mc_sample_spread"] > 1e-3  # the MC samples differ from each other ...
    assert rep["mc_other_seed_max_abs_diff"] > 1e-3  # ... and between seeds (even past 2**32)
    assert rep["mc_reproducible_max_abs_diff"] == 0.0
    assert rep["bn_stats_unchanged_by_mc"]


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_other_backend_same_run_and_loads_tensorflow_model(backend, tmp_path):
    # a fresh (untrained, non-saturated) TF model: the torch run must load it and predict the same
    cfg = BC.tiny_config()
    m = M.build_multiarm_unet(cfg)
    x, _ = BC.synthetic_batch(cfg, seed=5)
    exp = np.asarray(m.predict_on_batch(x)[0])
    assert exp.std() > 1e-3
    m.save(tmp_path / "tf_model.keras")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "exp.npy", exp)
    env = {**os.environ, "KERAS_BACKEND": backend, "T2L_TMP": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, str(Path(BC.__file__)), str(tmp_path / f"{backend}.json"), "--load",
         str(tmp_path / "tf_model.keras"), str(tmp_path / "x.npy"), str(tmp_path / "exp.npy")],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rep = json.loads((tmp_path / f"{backend}.json").read_text())
    _assert_backend_report(rep, backend)
    assert rep["cross_load_max_abs_diff"] < 1e-5


def bf16_training_steps_are_finite():
    """``set_precision("on")``: bf16 compute, float32 variables, float32 heads (so a float32
    loss), and two training steps with finite loss that move the weights and leave them finite.
    (Eager train step: TF's one-off graph tracing of this model costs over a minute on 2 CPU
    cores; the GPU check runs the compiled one.)"""
    before = keras.config.dtype_policy().name
    try:
        assert M.set_precision("auto", gpu=False) == "float32"
        assert M.set_precision("off", gpu=True) == "float32"
        assert M.set_precision("auto", gpu=True) == "mixed_bfloat16"
        with pytest.raises(ValueError):
            M.set_precision("fp16")
        cfg = BC.tiny_config(train=True, patch_size=(4, 16, 16))
        model = M.build_multiarm_unet(cfg)
    finally:
        keras.config.set_dtype_policy(before)
    from t2lesion.unet.losses import make_loss

    conv = model.get_layer("encoder").get_layer("e1_d1_block_conv1")
    assert conv.compute_dtype == "bfloat16" and conv.kernel.dtype == "float32"
    assert [o.dtype for o in model.outputs] == ["float32", "float32"]
    x, t = BC.synthetic_batch(cfg, batch=2)
    losses, _ = make_loss(n_epochs=2, n_outputs=2, model=model)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=losses, run_eagerly=True)
    w0 = [np_(v).copy() for v in model.trainable_variables]
    logs = [model.train_on_batch(x, [t, t], return_dict=True)["loss"] for _ in range(2)]
    assert np.all(np.isfinite(logs)), logs
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    moved = [float(np.max(np.abs(np_(v) - a))) for v, a in zip(model.trainable_variables, w0)]
    assert all(np.isfinite(moved)) and max(moved) > 1e-3, [
        v.path for v, m in zip(model.trainable_variables, moved) if not np.isfinite(m)]
    preds = model.predict_on_batch(x)
    assert all(np.asarray(p).dtype == np.float32 and np.all(np.isfinite(p)) for p in preds)


def test_bf16_mixed_precision_training_step_is_finite(caplog):
    """bf16 training on this machine, as a user gets it. Where TensorFlow's oneDNN bf16 kernels
    run on a CPU with AVX512-BF16 and no AMX (:func:`M.onednn_bf16_suspect`), two steps left NaN
    in a conv kernel (measured on an AMD EPYC, 2026-12-06): there ``set_precision`` warns, and the
    same steps are checked with the remedy the warning gives (``TF_ENABLE_ONEDNN_OPTS=0``)."""
    if not M.onednn_bf16_suspect():
        bf16_training_steps_are_finite()
        return
    before = keras.config.dtype_policy().name
    try:
        M.set_precision("on", gpu=False)
    finally:
        keras.config.set_dtype_policy(before)
    assert "TF_ENABLE_ONEDNN_OPTS=0" in caplog.text
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "KERAS_BACKEND": "tensorflow",
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    code = "from tests.test_model import bf16_training_steps_are_finite as f; f()"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_onednn_bf16_suspect_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    assert M.onednn_bf16_suspect("flags : fpu avx512f avx512_bf16 avx512_vnni") == (keras.backend.backend() == "tensorflow")
    assert not M.onednn_bf16_suspect("flags : fpu avx512f avx512_bf16 amx_bf16 amx_tile")  # a Xeon with AMX
    assert not M.onednn_bf16_suspect("flags : fpu avx2 fma")
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    assert not M.onednn_bf16_suspect("flags : fpu avx512f avx512_bf16")


def test_output_prior_sets_the_heads_bias_and_an_untrained_model_predicts_background():
    x, _ = BC.synthetic_batch(M.ModelConfig.from_dict(BC.TRAIN_TINY), batch=2, seed=3)
    plain = M.build_from_config({**BC.TRAIN_TINY, "seed": 4})
    prior = M.build_from_config({**BC.TRAIN_TINY, "seed": 4, "output_prior": 0.01})
    logit = np.log(0.01 / 0.99)
    for d in range(len(prior.outputs)):
        bias = np.asarray(prior.get_layer("decoder").get_layer(f"prob_d{d + 1}_conv").bias)
        np.testing.assert_allclose(bias, [logit], rtol=1e-6)
        assert np.asarray(plain.get_layer("decoder").get_layer(f"prob_d{d + 1}_conv").bias) == 0
    p0 = np.asarray(plain.predict_on_batch(x)[0])
    p1 = np.asarray(prior.predict_on_batch(x)[0])
    # same weights otherwise: the logits move by exactly the bias
    np.testing.assert_allclose(np.log(p1 / (1 - p1)) - np.log(p0 / (1 - p0)), logit, atol=2e-3)
    assert np.median(p1) < 0.1
    with pytest.raises(ValueError, match="output_prior"):
        M.ModelConfig.from_dict({"output_prior": 1.0})
