"""Backend-independent model/loss checks, runnable in a subprocess under any Keras backend.

    KERAS_BACKEND=torch python tests/_backend_check.py OUT.json [--load SAVED.keras INPUT.npy EXPECTED.npy]

Prints nothing essential; writes a JSON report to OUT.json. ``tests/test_model.py`` runs it
under TensorFlow in-process (by importing ``run_checks``) and under PyTorch in a subprocess
(the Keras backend is fixed at import time).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# 4-level tiny model (full structure, tiny widths) for shape/MC checks ...
TINY = {
    "patch_size": (8, 32, 32),
    "widths": (4, 8, 8, 8),
    "dropout_rate": 0.3,
    "seed": 3,
}
# ... and a 3-level one for the training run: TF's one-off graph tracing of a 4-level
# train step costs about a minute on 2 CPU cores; the code path is the same.
TRAIN_TINY = dict(
    TINY,
    widths=(4, 8, 8),
    strides=((1, 2, 2), (2, 2, 2)),
    block_kernels=(((1, 3, 3), (3, 3, 3)),) * 3,
    supervision_levels=2,
)


def tiny_config(train: bool = False, **kw):
    from t2lesion.unet.model import ModelConfig

    return ModelConfig.from_dict({**(TRAIN_TINY if train else TINY), **kw})


def synthetic_batch(cfg, batch: int = 2, seed: int = 0):
    """Images with bright blobs (lesions) in FLAIR/T2w, the packed [mask, alpha] target."""
    from t2lesion.unet.losses import alpha_map, pack_targets

    rng = np.random.default_rng(seed)
    z, y, x = cfg.patch_size
    zz, yy, xx = np.meshgrid(np.arange(z), np.arange(y), np.arange(x), indexing="ij")
    imgs = rng.normal(0, 0.3, (batch, z, y, x, 3)).astype("float32")
    masks = np.zeros((batch, z, y, x), "float32")
    for b in range(batch):
        for _ in range(3):
            c = rng.uniform([1, 4, 4], [z - 1, y - 4, x - 4])
            r = rng.uniform(1.0, 3.0)
            blob = ((zz - c[0]) * 3) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= (r * 2) ** 2
            masks[b][blob] = 1
    imgs[..., 0] += 1.5 * masks  # T2w
    imgs[..., 1] += 2.0 * masks  # FLAIR
    imgs[..., 2] -= 0.5 * masks  # T1w
    alpha = np.stack([alpha_map(m) for m in masks])
    return imgs, pack_targets(masks, alpha)


def train_steps(model, x, t, steps: int = 6, lr: float = 0.05):
    """Fixed-batch SGD steps through the compiled ``train_on_batch`` path; returns the losses.
    SGD rather than Adam: graph tracing dominates the CPU test time. ``jit_compile`` as
    ``train_fold`` sets it on the CPU (``train.jit_setting``): no XLA on TensorFlow; jitted on
    JAX, whose un-jitted steps compile op by op (the JAX check took 1.6× the wall time and
    1.4× the CPU that way, BENCHMARKS.md)."""
    import keras

    from t2lesion.unet.losses import make_loss
    from t2lesion.unet.train import jit_setting

    n_out = len(model.outputs)
    losses_fn, _ = make_loss(n_epochs=5, n_outputs=n_out, model=model)
    model.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9), loss=losses_fn, jit_compile=jit_setting(gpu=False))
    losses = []
    for _ in range(steps):
        out = model.train_on_batch(x, [t] * n_out, return_dict=True)
        losses.append(float(out["loss"]))
    return losses


def run_checks(out_json: str | None = None, load: tuple[str, str, str] | None = None) -> dict:
    import keras

    from t2lesion.unet import model as M

    rep: dict = {"backend": keras.backend.backend()}
    t0 = time.time()

    # --- cross-backend load: a model saved by another backend predicts identically here
    if load is not None:
        path, inp, expected = load
        m = M.load_model(path)
        pred = [np.asarray(p) for p in m.predict_on_batch(np.load(inp))]
        exp = np.load(expected)
        rep["cross_load_max_abs_diff"] = float(np.max(np.abs(np.asarray(pred[0]) - exp)))

    cfg = tiny_config(train=True)
    keras.utils.set_random_seed(0)
    model = M.build_multiarm_unet(cfg)
    x, t = synthetic_batch(cfg)
    rep["output_shapes"] = [list(o.shape[1:]) for o in model.outputs]
    preds = model.predict_on_batch(x)
    rep["pred_shapes"] = [list(np.asarray(p).shape) for p in preds]

    # --- training reduces the loss (fixed seed, tiny model, fixed batch)
    losses = train_steps(model, x, t)
    rep["train_losses"] = losses
    rep["finite"] = bool(np.all(np.isfinite(losses)))

    # --- save / load round trip predicts identically
    tmp = Path(os.environ.get("T2L_TMP", "/tmp"))
    path = tmp / f"t2l_model_{keras.backend.backend()}.keras"
    model.save(path)
    loaded = M.load_model(path)
    a = [np.asarray(p) for p in model.predict_on_batch(x)]
    b = [np.asarray(p) for p in loaded.predict_on_batch(x)]
    rep["save_load_max_abs_diff"] = float(max(np.max(np.abs(u - v)) for u, v in zip(a, b)))

    # --- MC dropout: BN in inference mode, dropout on
    enc, dec = M.split_encoder_decoder(loaded)
    _, mc0 = M.split_encoder_decoder(loaded, mc=True, rate=0.0)
    np_ = keras.ops.convert_to_numpy
    feats = enc(x, training=False)
    det = np_(dec(feats, training=False)[0])
    rep["mc0_vs_det_max_abs_diff"] = float(np.max(np.abs(np_(mc0(feats)[0]) - det)))
    rep["det_vs_full_model_max_abs_diff"] = float(np.max(np.abs(det - b[0])))
    bn_before = [np_(v) for v in loaded.non_trainable_weights if "seed_generator" not in v.path]
    _, mc = M.split_encoder_decoder(loaded, mc=True)
    pred = M.build_mc_predictor(enc, mc, n_samples=4, mode="samples")
    M.set_mc_seed(mc, 1)
    samples = np.asarray(pred.predict_on_batch(x))
    rep["mc_samples_shape"] = list(samples.shape)
    rep["mc_sample_spread"] = float(np.max(np.abs(samples[:, 0] - samples[:, 1])))
    M.set_mc_seed(mc, 1)
    again = np.asarray(pred.predict_on_batch(x))
    rep["mc_reproducible_max_abs_diff"] = float(np.max(np.abs(samples - again)))
    M.set_mc_seed(mc, 3 * 2**32 + 1)  # large seeds (folds x windows x passes) neither overflow nor alias seed 1
    other = np.asarray(pred.predict_on_batch(x))
    rep["mc_other_seed_max_abs_diff"] = float(np.max(np.abs(samples - other)))
    bn_after = [np_(v) for v in loaded.non_trainable_weights if "seed_generator" not in v.path]
    rep["bn_stats_unchanged_by_mc"] = bool(all(np.array_equal(u, v) for u, v in zip(bn_before, bn_after)))
    rep["seconds"] = time.time() - t0

    if out_json:
        Path(out_json).write_text(json.dumps(rep, indent=1))
    return rep


def schedule_checks(out_json: str | None = None) -> dict:
    """The loss schedule is model state: γ/β set between epochs reach the compiled train and
    test steps without rebuilding them (no JAX recompile), and survive save/load.

    A 1×1×1-conv model with the ``LossScheduleState`` layer and SGD at lr 0 (fixed
    predictions), so each epoch's logged loss is Eq. 1 at that epoch's γ/β exactly."""
    import warnings

    import keras

    from t2lesion.unet import losses as L
    from t2lesion.unet import model as M

    rep: dict = {"backend": keras.backend.backend()}
    rng = np.random.default_rng(0)
    shape = (4, 8, 8)
    m = (rng.uniform(size=(4,) + shape) > 0.8).astype("float32")
    t = L.pack_targets(m)  # α = 1: the γ/β terms are not swamped by α up to 100
    x = rng.normal(size=(4,) + shape + (1,)).astype("float32")

    def build():
        inp = keras.Input(shape + (1,))
        h = L.LossScheduleState(name="loss_schedule")(inp)
        out = keras.layers.Conv3D(1, 1, activation="sigmoid", kernel_initializer="ones", bias_initializer="zeros")(h)
        return keras.Model(inp, out)

    model = build()
    n_epochs = 4
    losses, cb = L.make_loss(n_epochs=n_epochs, n_outputs=1, model=model)
    calls = [0]
    call = losses[0].call

    def counting_call(*a, **k):  # Python side effect: runs once per trace on TF/JAX, per step on torch
        calls[0] += 1
        return call(*a, **k)

    losses[0].call = counting_call
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=losses[0])
    fn_ids, trace_counts = [], []

    class Probe(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            fn_ids.append(id(self.model.train_function))
            trace_counts.append(calls[0])

    hist = model.fit(x, t, epochs=n_epochs, batch_size=4, verbose=0, shuffle=False, validation_data=(x, t),
                     callbacks=[cb, Probe()])
    p = keras.ops.convert_to_numpy(model(x))

    def ref(g, b):
        return float(keras.ops.convert_to_numpy(L.LesionSegLoss(gamma=g, beta=b)(t, p)))

    expected = [ref(g, b) for _, g, b in cb.history]
    rep["epoch_gamma_beta"] = [[e, g, b] for e, g, b in cb.history]
    rep["loss"] = [float(v) for v in hist.history["loss"]]
    rep["val_loss"] = [float(v) for v in hist.history["val_loss"]]
    rep["expected"] = expected
    rep["train_function_ids_distinct"] = len(set(fn_ids))
    rep["loss_traces_per_epoch"] = trace_counts
    # evaluate() after fit: the test step reads the state as it is now
    test_fn = model.test_function
    state = L.find_schedule_state(model)
    ev = []
    for g, b in ((0.05, 0.3), (0.12, 0.9)):
        state.set(9, g, b)
        ev.append([float(model.evaluate(x, t, batch_size=4, verbose=0)), ref(g, b)])
    rep["evaluate_vs_expected"] = ev
    rep["test_function_rebuilt"] = model.test_function is not test_fn
    # save / load: the state comes back and the deserialised loss is bound to it
    tmp = Path(os.environ.get("T2L_TMP", "/tmp"))
    path = tmp / f"t2l_schedule_{keras.backend.backend()}.keras"
    state.set(2, 0.11, 0.77)
    model.save(path)
    loaded = M.load_model(path)
    lstate = L.find_schedule_state(loaded)
    rep["loaded_state"] = list(lstate.values())
    rep["loaded_loss_bound"] = loaded.loss.state is lstate
    lstate.set(3, 0.15, 1.0)
    rep["loaded_evaluate_vs_expected"] = [float(loaded.evaluate(x, t, batch_size=4, verbose=0)), ref(0.15, 1.0)]
    # plain keras loading leaves the loss unbound: it warns instead of silently freezing γ/β
    raw = keras.saving.load_model(path)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        raw.evaluate(x, t, batch_size=4, verbose=0)
    rep["unbound_warns"] = any("without its schedule state" in str(v.message) for v in w)
    if out_json:
        Path(out_json).write_text(json.dumps(rep, indent=1))
    return rep


def _timeit(fn, reps: int, warm: int = 2) -> float:
    for _ in range(warm):
        fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def _bench_one(kind: str, rng, train_batch: int, windows: int, mc_windows: int, mc_samples: int,
               reps: int) -> dict:
    import keras

    from t2lesion.unet import model as M
    from t2lesion.unet.losses import make_loss, pack_targets

    cfg = M.ModelConfig()
    t0 = time.perf_counter()
    model = M.build_model(cfg, kind)
    r = {"params": M.count_params(model), "build_s": time.perf_counter() - t0}
    x = rng.normal(size=(windows, *cfg.patch_size, 3)).astype("float32")
    r["predict_ms_per_window"] = 1e3 * _timeit(lambda: model.predict_on_batch(x), reps) / windows
    enc, dec = M.split_encoder_decoder(model, mc=True)
    pred = M.build_mc_predictor(enc, dec, mc_samples, mode="moments")
    xm = x[:mc_windows]
    r["mc_fused_ms_per_window"] = 1e3 * _timeit(lambda: pred.predict_on_batch(xm), reps) / mc_windows
    xn = np.concatenate([xm] * mc_samples)
    r["mc_naive_ms_per_window"] = 1e3 * _timeit(lambda: model.predict_on_batch(xn), reps) / mc_windows
    xt = rng.normal(size=(train_batch, *cfg.patch_size, 3)).astype("float32")
    tt = pack_targets(rng.uniform(size=(train_batch, *cfg.patch_size)) > 0.995)
    ys = [tt] * len(model.outputs)
    losses, _ = make_loss(n_outputs=len(model.outputs), model=model)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=losses)
    t0 = time.perf_counter()
    model.train_on_batch(xt, ys)
    r["train_first_step_s"] = time.perf_counter() - t0
    r["train_ms_per_step"] = 1e3 * _timeit(lambda: model.train_on_batch(xt, ys), reps, warm=1)
    return r


def bench(out_json: str | None = None, train_batch: int = 10, windows: int = 4, mc_windows: int = 2,
          mc_samples: int = 10, reps: int = 5) -> dict:
    """Timings of the default-width models on the current backend/device (GPU check, not a test):
    full-model prediction, fused MC prediction (encoder once, decoder ``mc_samples``x batched),
    the same MC work done naively (whole model on every sample), and ``train_on_batch``."""
    import keras

    rep: dict = {"backend": keras.backend.backend()}
    try:
        import torch

        rep["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:
        rep["device"] = "unknown (no torch)"
    rng = np.random.default_rng(0)
    for kind in ("multiarm", "plain"):
        rep[kind] = _bench_one(kind, rng, train_batch, windows, mc_windows, mc_samples, reps)
        print(json.dumps({kind: rep[kind]}), flush=True)
    if out_json:
        Path(out_json).write_text(json.dumps(rep, indent=1))
    return rep


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--schedule":
        print(json.dumps(schedule_checks(args[1] if len(args) > 1 else None)))
        sys.exit(0)
    if args and args[0] == "--bench":
        print(json.dumps(bench(args[1] if len(args) > 1 else None)))
        sys.exit(0)
    load = None
    if "--load" in args:
        i = args.index("--load")
        load = tuple(args[i + 1 : i + 4])
        args = args[:i] + args[i + 4 :]
    r = run_checks(args[0] if args else None, load)
    print(json.dumps(r))
