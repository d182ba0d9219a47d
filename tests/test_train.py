"""Training of one fold (t2lesion.unet.train.train_fold) on a tiny synthetic task: outputs,
learning (validation loss at fixed γ/β falls, held-out Dice in inference mode ≥ 0.3), kill
and resume equal to an uninterrupted run, commit recovery, refusal of changed settings, and the
TensorFlow-trained fold predicting the same in a JAX process.

One uninterrupted run (module fixture) is the reference for every test. Model: the multi-arm
network at two levels and widths 8/16 (TF traces a deeper model's train step for over a
minute on 2 CPU cores); patches 8×32×32, batch 4, 3 epochs × 12 steps, Adam at lr 1e-2
(the paper's 1e-4 needs thousands of steps), BN momentum 0.9 (docs/model.md: 0.99 does not
settle in tens of steps), the paper's loss and schedules.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from t2lesion.unet import losses as L
from t2lesion.unet import model as M
from t2lesion.unet import train as T
from tests.conftest import REPO

PATCH = (8, 32, 32)
MODEL = {
    "patch_size": list(PATCH), "widths": [8, 16], "strides": [[1, 2, 2]],
    "block_kernels": [[[1, 3, 3], [3, 3, 3]]] * 2, "supervision_levels": 1, "bn_momentum": 0.9,
    "dropout_rate": 0.1,
}
TRAINING = {"epochs": 3, "steps_per_epoch": None, "learning_rate": 1e-2, "mixed_precision": "auto"}
SEED = 1234
np_ = keras.ops.convert_to_numpy


def make_blobs(n: int, seed: int, noise: float = 0.3):
    """``n`` windows with 1–3 bright ellipsoidal lesions (3:1 mm voxels) in FLAIR and T2w,
    darker in T1w, and the packed [mask, α] targets."""
    rng = np.random.default_rng(seed)
    z, y, x = PATCH
    zz, yy, xx = np.meshgrid(np.arange(z), np.arange(y), np.arange(x), indexing="ij")
    imgs = rng.normal(0, noise, (n, z, y, x, 3)).astype("float32")
    masks = np.zeros((n, z, y, x), "float32")
    for b in range(n):
        for _ in range(rng.integers(1, 4)):
            c = rng.uniform([1, 4, 4], [z - 1, y - 4, x - 4])
            r = rng.uniform(1.0, 3.0)
            masks[b][((zz - c[0]) * 3) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= (2 * r) ** 2] = 1
    imgs[..., 0] += 1.0 * masks  # T2w
    imgs[..., 1] += 1.5 * masks  # FLAIR
    imgs[..., 2] -= 0.5 * masks  # T1w
    return imgs, L.pack_targets(masks, np.stack([L.alpha_map(m) for m in masks]))


class Blobs(keras.utils.PyDataset):
    """The loader's contract: ``(x, (t,) * n_outputs)`` batches and ``set_epoch``; the order
    is a function of (seed, epoch), so a resumed run sees the batches an uninterrupted one saw.

    ``snapshot``: {epoch: (training folder, copy)}: when told that epoch starts, copy the
    training folder as a kill at that moment would leave it (every earlier epoch committed)."""

    def __init__(self, n, batch, seed, n_outputs=1, shuffle=True, snapshot=None):
        super().__init__()
        self.x, self.t = make_blobs(n, seed)
        self.batch, self.n_outputs, self.seed, self.shuffle = batch, n_outputs, seed, shuffle
        self.snapshot = snapshot or {}
        self.epochs_seen: list[int] = []
        self.set_epoch(0)

    def set_epoch(self, epoch):
        if epoch in self.snapshot and self.epochs_seen:
            import shutil

            shutil.copytree(*self.snapshot[epoch])
        self.epochs_seen.append(epoch)
        n = len(self.x)
        self.order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    def __len__(self):
        return len(self.x) // self.batch

    def __getitem__(self, i):
        idx = self.order[i * self.batch:(i + 1) * self.batch]
        return self.x[idx], (self.t[idx],) * self.n_outputs


def _data(snapshot=None):
    return Blobs(48, 4, seed=1, snapshot=snapshot), Blobs(16, 8, seed=2, shuffle=False)


def _train(out, data=None, training=None, **kw):
    tr, va = data or _data()
    return T.train_fold(tr, va, out, dict(MODEL), {}, {**TRAINING, **(training or {})}, SEED,
                        log=logging.getLogger("test_train"), **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run; its folder is also copied as a kill after epoch 1 leaves it."""
    out = tmp_path_factory.mktemp("uninterrupted")
    killed = tmp_path_factory.mktemp("killed") / "fold"
    tr, va = _data(snapshot={1: (out, killed)})
    res = _train(out, (tr, va))
    return out, res, tr, killed


def _rows(out):
    return json.loads((out / T.STATE).read_text())["history"]


def _weights(path):
    m = M.load_model(path)
    return m, [np_(v) for v in m.weights]


# --------------------------------------------------------------------------- outputs and learning


def test_outputs_are_written(reference):
    out, res, tr, _ = reference
    for name in ("model.keras", "last.keras", "history.tsv", "training_curve.png", T.STATE):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*tmp*")) and not (out / T.NEXT_STATE).exists()
    assert (out / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (out / "history.tsv").read_text().splitlines()
    assert lines[0].split("\t") == T.HISTORY_COLUMNS and len(lines) == 4
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["iterations"] for r in rows] == [12, 24, 36]  # one pass of 12 batches per epoch
    assert [r["gamma"] for r in rows] == pytest.approx([0.02, 0.085, 0.15])  # the schedules of docs/DESIGN.md §5
    assert [r["beta"] for r in rows] == pytest.approx([L.beta_schedule(e, 3) for e in range(3)])
    assert all(r["lr"] == pytest.approx(1e-2) for r in rows)
    assert tr.epochs_seen == [0, 0, 1, 2]  # set_epoch before every epoch (0 also at construction)
    assert res["completed"] == 3 and res["iterations"] == 36 and not res["resumed"]
    assert res["precision"] == "float32" and res["gpu"] is False  # mixed precision 'auto' on a CPU
    # model.keras is the epoch with the best validation Dice
    best = max(rows, key=lambda r: r["val_dice"])
    assert res["best_epoch"] == best["epoch"] and [r["best"] for r in rows][best["epoch"] - 1]


def test_short_training_lowers_validation_loss_and_reaches_dice(reference):
    """Validation loss compared at fixed γ/β falls; held-out Dice of model.keras in inference
    mode (recomputed here from the saved model on fresh windows) is at least 0.3."""
    out, res, _, _ = reference
    rows = _rows(out)
    assert rows[-1]["val_loss"] < rows[0]["val_loss"], rows
    model = M.load_model(out / "model.keras")
    held_out = Blobs(16, 8, seed=3, shuffle=False)
    g, b = T.fixed_validation_loss_values(L.LossConfig())
    fixed = [L.LesionSegLoss(g, b)]
    v = T.validate(model, held_out, fixed, fixed)
    assert v["val_dice"] >= 0.3, (v, rows)
    # the history's Dice is what the saved model gives on the validation windows
    again = T.validate(model, _data()[1], fixed, fixed)
    assert again["val_dice"] == pytest.approx(res["best_val_dice"], abs=1e-6)
    assert again["val_loss"] == pytest.approx(rows[res["best_epoch"] - 1]["val_loss"], rel=1e-5)


# --------------------------------------------------------------------------- resume


def test_kill_and_resume_equals_uninterrupted_run(reference):
    """The folder a kill after epoch 1 left, rerun: it continues at epoch 2 with the same
    optimizer step count, γ/β, history and (closely) weights as the uninterrupted run."""
    ref_out, _, _, out = reference
    assert [r["epoch"] for r in _rows(out)] == [1]
    _, s1 = _weights(out / "last.keras")
    assert L.find_schedule_state(M.load_model(out / "last.keras")).values()[0] == 0
    res = _train(out)  # the rerun
    assert res["resumed"] and res["started_at_epoch"] == 1 and res["completed"] == 3
    a, b = _rows(ref_out), _rows(out)
    for ra, rb in zip(a, b, strict=True):
        assert [rb[k] for k in ("epoch", "iterations", "best")] == [ra[k] for k in ("epoch", "iterations", "best")]
        for key in ("loss", "val_loss", "val_loss_sched", "val_dice", "gamma", "beta", "lr"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-5), (key, ra, rb)
    ma, wa = _weights(ref_out / "last.keras")
    mb, wb = _weights(out / "last.keras")
    assert int(np_(mb.optimizer.iterations)) == int(np_(ma.optimizer.iterations)) == 36
    sa, sb = L.find_schedule_state(ma).values(), L.find_schedule_state(mb).values()
    assert sb == (2, pytest.approx(0.15), pytest.approx(L.beta_schedule(2, 3))) and sa[0] == sb[0]
    assert sb[1:] == pytest.approx(sa[1:])
    for u, v in zip(wa, wb, strict=True):
        np.testing.assert_allclose(v, u, rtol=1e-4, atol=1e-5)
    # the resumed epoch really trained (the weights moved from the killed run's checkpoint)
    assert max(float(np.max(np.abs(u - v))) for u, v in zip(s1, wb)) > 1e-3
    # a completed run returns at once, building nothing
    again = _train(out, data=(object(), object()))
    assert again["already_complete"] and again["completed"] == 3


def test_commit_interrupted_after_checkpoint_rename_is_recovered(reference, tmp_path):
    """Killed between renaming last.keras and promoting the next state file: the rerun finds
    the checkpoint's epoch in the next state and completes that commit."""
    import shutil

    src, _, _, _ = reference
    out = tmp_path / "mid_commit"
    shutil.copytree(src, out)
    state = json.loads((out / T.STATE).read_text())
    (out / T.NEXT_STATE).write_text(json.dumps(state))
    older = {**state, "completed": 2, "history": state["history"][:2], "best_epoch": 1,
             "best_val_dice": state["history"][0]["val_dice"]}
    (out / T.STATE).write_text(json.dumps(older))
    res = _train(out)
    assert res["completed"] == 3 and not (out / T.NEXT_STATE).exists()
    assert json.loads((out / T.STATE).read_text()) == state


def test_other_settings_in_the_same_folder_are_refused(reference):
    out, _, _, _ = reference
    with pytest.raises(T.TrainingSettingsChanged, match="learning_rate"):
        _train(out, training={"learning_rate": 1e-3})
    with pytest.raises(ValueError, match="model.seed"):
        T.train_fold(None, None, out, {**MODEL, "seed": 5}, {}, TRAINING, SEED)


def test_cosine_learning_rate_decays_over_the_fold_and_resumes_on_its_curve(tmp_path):
    """lr_schedule cosine: Adam's rate after step i of n is lr·(1 + cos(π i / n)) / 2, in the
    history and in the checkpoint; a fold killed after epoch 1 resumes on the same curve."""
    out, killed = tmp_path / "cosine", tmp_path / "killed"
    cosine = {"epochs": 2, "steps_per_epoch": 3, "lr_schedule": "cosine"}
    data = (Blobs(48, 4, seed=1, snapshot={1: (out, killed)}), Blobs(16, 8, seed=2, shuffle=False))
    _train(out, data, training=cosine)
    n, lr0 = 6, TRAINING["learning_rate"]
    expected = [lr0 * (1 + np.cos(np.pi * i / n)) / 2 for i in (3, 6)]  # after epochs 1 and 2
    assert [r["lr"] for r in _rows(out)] == pytest.approx(expected, abs=1e-9)
    assert [r["iterations"] for r in _rows(out)] == [3, 6]
    resumed = _train(killed, training=cosine)
    assert resumed["resumed"] and [r["lr"] for r in _rows(killed)] == pytest.approx(expected, abs=1e-9)
    # the constant rate's folders and this one are told apart
    with pytest.raises(T.TrainingSettingsChanged, match="lr_schedule"):
        _train(out, training={**cosine, "lr_schedule": "constant"})


def test_learning_rate_schedule_names_its_problems():
    assert T.learning_rate_schedule(1e-3) == 1e-3
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        T.learning_rate_schedule(1e-3, "step")
    with pytest.raises(ValueError, match="number of training steps"):
        T.learning_rate_schedule(1e-3, "cosine", None)


def test_a_model_has_every_training_variable_before_its_first_step(tmp_path):
    """TensorFlow traces a train step that creates variables twice (T.build_for_training).
    With deep supervision Keras' compiled loss keeps a mean per output, built lazily in the
    step unless built before: a new model has all its variables before fit, and a step creates
    none; a loaded checkpoint, built, has the same."""
    from t2lesion.unet.hparams import split_model_section

    kind, mcfg = split_model_section({**MODEL, "widths": [8, 16, 16], "strides": [[1, 2, 2]] * 2,
                                      "block_kernels": [[[1, 3, 3], [3, 3, 3]]] * 3, "supervision_levels": 2,
                                      "seed": SEED})

    def variables(m):
        return len(m.variables), len(m.optimizer.variables), sorted(v.path for v in m.metrics_variables)

    model = T.new_compiled_model(kind, mcfg, L.LossConfig(), 1, 1e-2, SEED, T.jit_setting(gpu=False))
    before = variables(model)
    assert [m.name for m in model.metrics] == ["loss", "p1_loss", "p2_loss"]  # the loss means of both outputs
    model.fit(Blobs(8, 4, seed=1, n_outputs=len(model.outputs)), epochs=1, steps_per_epoch=1, verbose=0)
    assert variables(model) == before
    model.save(tmp_path / "last.keras")
    loaded = M.load_model(tmp_path / "last.keras")
    assert variables(loaded) != before  # Keras loads the model and Adam, not the loss's means
    T.build_for_training(loaded)
    assert variables(loaded) == before


def test_tensorflow_trained_fold_predicts_the_same_under_jax(reference, tmp_path):
    """The fold model train_fold wrote under TensorFlow (BN statistics, dropout, the project's
    custom layers), loaded by a fresh JAX process, gives TensorFlow's probabilities."""
    out = reference[0]
    x = _data()[1].x[:8]
    tf_pred = [np.asarray(p) for p in M.load_model(out / "model.keras", compile=False).predict_on_batch(x)]
    assert (tf_pred[0] > 0.5).any() and (tf_pred[0] < 0.5).any()  # a trained, not a constant, map
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, numpy as np, keras; from t2lesion.unet.model import load_model; "
            "m = load_model(sys.argv[1], compile=False); "
            "pred = m.predict_on_batch(np.load(sys.argv[2])); "
            "np.savez(sys.argv[3], keras.backend.backend(), *[np.asarray(p) for p in pred])")
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([sys.executable, "-c", code, str(out / "model.keras"), str(tmp_path / "x.npy"),
                          str(tmp_path / "jax.npz")], env=env, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    got = np.load(tmp_path / "jax.npz")
    assert str(got["arr_0"]) == "jax"
    assert len(got.files) - 1 == len(tf_pred)
    for k, tf in enumerate(tf_pred):
        np.testing.assert_allclose(got[f"arr_{k + 1}"], tf, atol=1e-4, rtol=0, err_msg=f"output {k}")


# --------------------------------------------------------------------------- device query


def test_backend_without_a_device_query_trains_on_the_cpu_and_says_why(monkeypatch, caplog):
    import keras.src.distribution.distribution_lib as kdl

    # as Keras leaves it for the numpy and openvino backends: no distribution_lib
    monkeypatch.setattr(keras.backend, "backend", lambda: "numpy")
    monkeypatch.setattr(kdl, "distribution_lib", None)
    with caplog.at_level(logging.WARNING, logger="test_train"):
        assert T.gpu_visible(logging.getLogger("test_train")) is False
    assert "numpy backend has no device query (AttributeError: 'NoneType' object has no attribute" in caplog.text


def test_device_query_errors_are_not_taken_for_a_cpu(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")

    def broken(device_type=None):
        raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version")

    monkeypatch.setattr(keras.distribution, "list_devices", broken)
    with pytest.raises(RuntimeError, match="CUDA driver version is insufficient"):
        T.gpu_visible()
    monkeypatch.setattr(keras.distribution, "list_devices", lambda device_type=None: ["gpu:0", "gpu:1"])
    assert T.gpu_visible() is True
    monkeypatch.setattr(keras.distribution, "list_devices", lambda device_type=None: ["cpu:0"])
    assert T.gpu_visible() is False


def test_loader_and_cpu_threads_never_reset_a_folds_checkpoints(tmp_path):
    """training.workers, loader and threads set speed only: the checkpoint folder survives a
    change of them (and the train rule's params leave them out), any other training key resets it."""
    from t2lesion.unet.stage import TRAINING_SPEED_KEYS, prepare_resume_dir, training_params

    training = {"epochs": 3, "learning_rate": 1e-4, "workers": 4, "loader": "threads", "threads": 4}
    assert training_params(training) == {"epochs": 3, "learning_rate": 1e-4}
    assert set(TRAINING_SPEED_KEYS) == {"workers", "loader", "threads"}
    folder = prepare_resume_dir(tmp_path / "ckpt", training=training_params(training), seed=1)
    (folder / "last.keras").write_text("a checkpoint")
    faster = {**training, "workers": 16, "loader": "processes", "threads": 8}
    prepare_resume_dir(tmp_path / "ckpt", training=training_params(faster), seed=1)
    assert (folder / "last.keras").is_file()
    prepare_resume_dir(tmp_path / "ckpt", training=training_params({**faster, "epochs": 4}), seed=1)
    assert not (folder / "last.keras").exists()


def test_a_train_job_reserves_a_core_per_loader_process():
    """The train rule's threads: training.threads for the model, plus one core per loader
    worker process (threads share the model's cores); the workflow script caps the model's
    libraries at training.threads."""
    from t2lesion.unet.stage import train_job_threads

    assert train_job_threads({"threads": 4, "workers": 4, "loader": "threads"}) == 4
    assert train_job_threads({"threads": 4, "workers": 4}) == 4
    assert train_job_threads({"threads": 4, "workers": 4, "loader": "processes"}) == 8
    assert train_job_threads({"threads": 2, "workers": 0, "loader": "processes"}) == 3  # one process at least


def test_inference_speed_keys_are_keys_the_predictor_ignores():
    """The infer and calibrate rules leave stage.INFERENCE_SPEED_KEYS out of their params, and
    infer.predict_visits ignores infer.CFG_IGNORED; two lists (one import would be a cycle) kept
    in step here: a speed key the predictor read would be a setting that never reruns inference."""
    from t2lesion.unet.infer import CFG_DEFAULTS, CFG_IGNORED
    from t2lesion.unet.stage import INFERENCE_SPEED_KEYS, inference_params

    assert set(INFERENCE_SPEED_KEYS) <= set(CFG_IGNORED)
    assert not set(INFERENCE_SPEED_KEYS) & set(CFG_DEFAULTS)
    section = {**CFG_DEFAULTS, "threads": 8, "visits_per_job": 4}
    assert inference_params(section) == CFG_DEFAULTS


def test_auto_precision_uses_bf16_only_on_gpus_with_native_bf16(caplog):
    """mixed_precision auto: bf16 on compute capability >= 8.0 (A100, H100), float32 on a V100
    (7.0, the paper's card) or T4 (7.5), where bf16 is emulated; capabilities as each backend
    reports them."""
    from t2lesion.unet.backend import gpu_compute_capabilities, parse_compute_capability

    assert parse_compute_capability("9.0") == (9, 0) and parse_compute_capability((7, 5)) == (7, 5)
    assert parse_compute_capability("8") == (8, 0)
    with pytest.raises(ValueError):
        parse_compute_capability(None)
    log = logging.getLogger("t2lesion.test")
    with caplog.at_level(logging.INFO, logger="t2lesion.test"):
        assert T.bf16_native([(8, 0), (9, 0)], log) and T.bf16_native([], log)
        assert not caplog.records
        assert not T.bf16_native([(9, 0), (7, 0)], log)
    assert "compute capability 7.0 is below 8.0 (no native bf16)" in caplog.text
    assert gpu_compute_capabilities() == []  # this machine's backend sees no GPU
