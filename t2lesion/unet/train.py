"""Training of one fold (docs/DESIGN.md §6): Adam, deep supervision, the α/β/γ schedules, validation in
inference mode, per-epoch checkpoints, resume.

``train_fold`` is backend-agnostic (``keras`` / ``keras.ops``; the only backend-specific line
asks torch whether CUDA is visible, since Keras has no device query for torch). The data are
``keras.utils.PyDataset``s yielding ``(x, (t,) * n_outputs)``: ``x`` (B, z, y, x, 3) float32
and ``t`` (B, z, y, x, 2) = [mask, α] at full patch resolution (``losses.pack_targets``); a
dataset with ``set_epoch(epoch)`` is told the epoch (0-based) before each one, so its
shuffling and augmentation are a function of (seed, epoch) and a resumed run sees the same
batches as an uninterrupted one.

Outputs in ``out_dir``
----------------------
``model.keras``      the epoch with the best validation Dice in inference mode (finest head,
                     threshold 0.5, pooled over every validation window); what inference uses.
``last.keras``       the last epoch's checkpoint, optimizer state included.
``train_state.json`` completed epochs, best epoch, the history rows and the run's settings (a
                     rerun with other settings in the same folder is refused).
``history.tsv``      one row per epoch (``HISTORY_COLUMNS``).
``training_curve.png``

Every epoch is committed atomically: the new files are written under temporary names, the
next state is written to ``train_state.next.json``, then ``last.keras`` (and, on a new best,
``model.keras``) are renamed into place and the next state becomes ``train_state.json``. A
run killed at any point resumes from a consistent epoch (the checkpoint's own epoch counter,
in the model's ``LossScheduleState``, tells which state file it belongs to).

Resume: with ``last.keras`` present training continues at the next epoch with the restored
optimizer (same step count) and the γ/β the schedule gives for that epoch; dropout is reseeded
from (seed, epoch) every epoch, so an interrupted run repeats an uninterrupted one. A completed
run returns at once without importing data or building anything.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np
from keras import ops

from t2lesion.unet import losses as L
from t2lesion.unet import model as M
from t2lesion.unet.backend import gpu_compute_capabilities, job_line
from t2lesion.unet.hparams import LossConfig, split_model_section

#: the schema's training defaults (schemas/config.schema.yaml), for callers passing a partial dict
TRAINING_DEFAULTS = {"epochs": 30, "steps_per_epoch": None, "learning_rate": 1e-4, "lr_schedule": "constant",
                     "mixed_precision": "auto"}
LR_SCHEDULES = ("constant", "cosine")

HISTORY_COLUMNS = ["epoch", "loss", "val_loss", "val_loss_sched", "val_dice", "gamma", "beta", "lr", "iterations",
                   "seconds", "best"]
HISTORY_DOC = {
    "epoch": "1-based epoch",
    "loss": "training loss (sum of the per-head losses, mean over the epoch's steps, at the epoch's γ/β, "
            "training mode: dropout on, BN batch statistics)",
    "val_loss": "validation loss in inference mode at FIXED γ = loss.gamma_end, β = loss.beta_max (comparable "
                "across epochs), summed over heads, mean over windows",
    "val_loss_sched": "the same at the epoch's scheduled γ/β",
    "val_dice": "Dice of the finest head > 0.5 in inference mode, pooled over all validation windows",
    "gamma": "γ of the epoch", "beta": "β of the epoch", "lr": "Adam learning rate at the epoch's last step",
    "iterations": "optimizer steps after the epoch", "seconds": "wall time of the epoch (training + validation)",
    "best": "1 if model.keras holds this epoch",
}

STATE = "train_state.json"
NEXT_STATE = "train_state.next.json"
_TMP_LAST = ".last.tmp.keras"
_TMP_BEST = ".model.tmp.keras"


class TrainingSettingsChanged(RuntimeError):
    """``out_dir`` holds a run made with other settings."""


def gpu_visible(log: logging.Logger | None = None) -> bool:
    """Whether the Keras backend sees a GPU.

    torch is asked directly (Keras has no device query for it); tensorflow and jax through
    ``keras.distribution.list_devices``. A backend without a device query (numpy, openvino:
    Keras' ``distribution_lib`` is None there, so the call raises AttributeError, or
    NotImplementedError) runs on the CPU, and ``log`` says why; any other error propagates.
    """
    log = log or logging.getLogger("t2lesion.train")
    backend = keras.backend.backend()
    if backend == "torch":
        import importlib

        return bool(importlib.import_module("torch").cuda.is_available())
    try:
        devices = keras.distribution.list_devices()
    except (AttributeError, NotImplementedError) as err:
        log.warning("the %s backend has no device query (%s: %s): taken as CPU-only", backend,
                    type(err).__name__, err)
        return False
    return any(d.split(":")[0].lower() in ("gpu", "cuda", "tpu") for d in devices)


#: NVIDIA's first compute capability with bf16 tensor cores (Ampere, e.g. A100); older cards
#: (V100: 7.0, T4: 7.5) run bf16 emulated, slower than float32.
BF16_MIN_COMPUTE_CAPABILITY = (8, 0)


def bf16_native(capabilities: list[tuple[int, int]], log: logging.Logger | None = None) -> bool:
    """Whether ``mixed_precision: auto`` may use bf16 on these GPUs: every one at compute
    capability 8.0 or above (unknown: assumed so)."""
    old = [c for c in capabilities if c < BF16_MIN_COMPUTE_CAPABILITY]
    if old and log is not None:
        log.info("mixed_precision auto: float32, since the GPU's compute capability %s is below %s "
                 "(no native bf16)", ".".join(map(str, old[0])), ".".join(map(str, BF16_MIN_COMPUTE_CAPABILITY)))
    return not old


def fixed_validation_loss_values(loss_cfg: LossConfig) -> tuple[float, float]:
    """γ, β of the history's ``val_loss``: the end of the schedules (the objective training
    converges to), the same for every epoch."""
    return float(loss_cfg.gamma_end), float(loss_cfg.beta_max)


# --------------------------------------------------------------------------- state files


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _save_model_atomic(model: keras.Model, tmp: Path) -> None:
    if tmp.exists():
        tmp.unlink()
    model.save(tmp)


def write_history(out: Path, rows: list[dict]) -> None:
    lines = ["\t".join(HISTORY_COLUMNS)]
    for r in rows:
        lines.append("\t".join(_fmt(r[c]) for c in HISTORY_COLUMNS))
    tmp = out / ".history.tsv.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out / "history.tsv")


def _fmt(v) -> str:
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def plot_history(out: Path, rows: list[dict]) -> None:
    """training_curve.png: losses (left), validation Dice with the chosen epoch (right)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ep = [r["epoch"] for r in rows]
    fig = Figure(figsize=(9, 3.6))
    FigureCanvasAgg(fig)
    a1, a2 = fig.subplots(1, 2)
    a1.plot(ep, [r["loss"] for r in rows], "o-", label="train (scheduled γ/β)")
    a1.plot(ep, [r["val_loss"] for r in rows], "s-", label="validation (fixed γ/β)")
    a1.plot(ep, [r["val_loss_sched"] for r in rows], ":", color="grey", label="validation (scheduled γ/β)")
    a1.set_xlabel("epoch")
    a1.set_ylabel("loss (sum over heads)")
    a1.legend(fontsize=8)
    a2.plot(ep, [r["val_dice"] for r in rows], "o-", color="C2")
    best = [r for r in rows if r["best"]]
    if best:
        b = max(best, key=lambda r: r["epoch"])
        a2.plot([b["epoch"]], [b["val_dice"]], "*", ms=14, color="C3", label=f"model.keras (epoch {b['epoch']})")
        a2.legend(fontsize=8)
    a2.set_xlabel("epoch")
    a2.set_ylabel("validation Dice (inference mode)")
    a2.set_ylim(0, 1)
    from matplotlib.ticker import MaxNLocator

    for ax in (a1, a2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    tmp = out / ".training_curve.tmp.png"
    fig.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, out / "training_curve.png")


# --------------------------------------------------------------------------- validation


def validate(model: keras.Model, val_data, fixed_losses, sched_losses) -> dict:
    """One pass over ``val_data`` in inference mode (BN moving statistics, no dropout).

    Returns ``val_loss`` (``fixed_losses``, summed over heads, mean over windows),
    ``val_loss_sched`` (``sched_losses``) and ``val_dice`` (finest head > 0.5, voxel counts
    pooled over all windows; 1.0 if neither prediction nor truth has a lesion voxel).
    """
    n = 0
    lf = ls = 0.0
    tp = pp = gg = 0
    for i in range(len(val_data)):
        x, ys = val_data[i]
        ys = list(ys) if isinstance(ys, (list, tuple)) else [ys]
        preds = model.predict_on_batch(x)
        preds = list(preds) if isinstance(preds, (list, tuple)) else [preds]
        b = int(np.asarray(x).shape[0])
        for k, p in enumerate(preds):
            t = ys[min(k, len(ys) - 1)]
            lf += b * float(ops.convert_to_numpy(fixed_losses[k](t, p)))
            ls += b * float(ops.convert_to_numpy(sched_losses[k](t, p)))
        p0 = np.asarray(preds[0])[..., 0] > 0.5
        m0 = np.asarray(ys[0])[..., 0] > 0.5
        tp += int(np.count_nonzero(p0 & m0))
        pp += int(np.count_nonzero(p0))
        gg += int(np.count_nonzero(m0))
        n += b
    if n == 0:
        raise ValueError("validation data is empty")
    dice = 2.0 * tp / (pp + gg) if pp + gg else 1.0
    return {"val_loss": lf / n, "val_loss_sched": ls / n, "val_dice": dice}


# --------------------------------------------------------------------------- training


def _settings(kind, mcfg, lcfg, tr, seed) -> dict:
    return {
        "kind": kind,
        "model": mcfg.to_dict(),
        "loss": lcfg.to_dict(),
        "epochs": int(tr["epochs"]),
        "steps_per_epoch": tr.get("steps_per_epoch"),
        "learning_rate": float(tr["learning_rate"]),
        "seed": int(seed),
        # only when not the default, so that folds trained before the key existed still match
        **({"lr_schedule": tr["lr_schedule"]} if tr.get("lr_schedule", "constant") != "constant" else {}),
    }


def _summary(out: Path, state: dict, started_at: int, extra: dict | None = None) -> dict:
    hist = state["history"]
    best = next((r for r in hist if r["epoch"] == state["best_epoch"]), None)
    return {
        "out_dir": str(out),
        "model": str(out / "model.keras"),
        "last": str(out / "last.keras"),
        "history_tsv": str(out / "history.tsv"),
        "curve": str(out / "training_curve.png"),
        "epochs": state["settings"]["epochs"],
        "completed": state["completed"],
        "started_at_epoch": started_at,
        "best_epoch": state["best_epoch"],
        "best_val_dice": None if best is None else best["val_dice"],
        "iterations": hist[-1]["iterations"] if hist else 0,
        "history": hist,
        **(extra or {}),
    }


def _recover(out: Path, model: keras.Model | None, log: logging.Logger) -> dict | None:
    """Bring the state files in line with ``last.keras`` after a kill; returns the state."""
    cur, nxt = _read_json(out / STATE), _read_json(out / NEXT_STATE)
    if model is None:
        for p in (out / NEXT_STATE, out / _TMP_LAST, out / _TMP_BEST):
            p.unlink(missing_ok=True)
        return cur
    done = L.find_schedule_state(model).values()[0] + 1
    if nxt is not None and nxt["completed"] == done:
        # killed after last.keras was renamed: finish that epoch's commit
        if nxt["best_epoch"] == done and (out / _TMP_BEST).exists():
            os.replace(out / _TMP_BEST, out / "model.keras")
        os.replace(out / NEXT_STATE, out / STATE)
        log.info("recovered the commit of epoch %d", done)
        cur = nxt
    for p in (out / NEXT_STATE, out / _TMP_LAST, out / _TMP_BEST):
        p.unlink(missing_ok=True)
    if cur is None or cur["completed"] != done:
        raise RuntimeError(
            f"{out}: last.keras holds {done} epoch(s) but {STATE} says "
            f"{None if cur is None else cur['completed']}; remove the folder to train this fold afresh")
    return cur


def jit_setting(gpu: bool):
    """``jit_compile`` for a training model: off for TensorFlow on the CPU (XLA is slower
    there), Keras' own choice otherwise."""
    return False if (keras.backend.backend() == "tensorflow" and not gpu) else "auto"


def learning_rate_schedule(learning_rate: float, schedule: str = "constant", total_steps: int | None = None):
    """Adam's learning rate: the number itself (``constant``, the paper's), or a cosine decay
    from it to 0 over ``total_steps`` optimizer steps (``cosine``; docs/model.md measures it on
    the demo). The decay is a function of the optimizer's step count, which the checkpoint
    keeps, so a resumed fold continues on the same curve."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"training.lr_schedule must be one of {list(LR_SCHEDULES)}, got {schedule!r}")
    if schedule == "constant":
        return float(learning_rate)
    if not total_steps or int(total_steps) < 1:
        raise ValueError(f"a cosine learning-rate schedule needs the number of training steps, got {total_steps!r}")
    return keras.optimizers.schedules.CosineDecay(float(learning_rate), decay_steps=int(total_steps), alpha=0.0)


def new_compiled_model(kind: str, mcfg, lcfg: LossConfig, n_epochs: int, learning_rate: float, seed: int, jit,
                       lr_schedule: str = "constant", total_steps: int | None = None):
    """A freshly initialised model (seeded), compiled with the paper's loss and Adam, as
    :func:`train_fold` starts a fold (``lr_schedule``/``total_steps``: see
    :func:`learning_rate_schedule`), built for training (:func:`build_for_training`).
    """
    keras.utils.set_random_seed(int(seed))
    model = M.build_model(mcfg, kind)
    losses, _ = L.make_loss(lcfg, n_epochs, len(model.outputs), model=model)
    lr = learning_rate_schedule(learning_rate, lr_schedule, total_steps)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=losses, jit_compile=jit)
    build_for_training(model)
    return model


def build_for_training(model) -> None:
    """Create the variables a compiled model's first train step would otherwise create inside
    its trace: Adam's, and the compiled loss's per-output means (Keras builds that loss lazily,
    in the step, on TensorFlow). TensorFlow traces a step function that creates variables a
    second time, the whole step again: building each here saves a trace of the step (on one
    CPU thread, the demo's first step: Adam 87 -> 52 s by ``train_on_batch``; the loss
    56 -> 35 s by ``fit``, as a fold trains; BENCHMARKS.md). The loss is built on one window
    of constant targets and predictions (every output gets the window's packed ``[mask, α]``
    targets, as the loader gives them), and the means it fed are reset; no random draw, so
    the same weights and results."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    target = L.pack_targets(np.zeros((1, *model.inputs[0].shape[1:-1]), "float32"))
    y_true = (target,) * len(model.outputs)
    y_pred = [np.full((1, *o.shape[1:]), 0.5, "float32") for o in model.outputs]
    model.compute_loss(y=y_true, y_pred=y_pred)
    model.reset_metrics()


def train_fold(train_data, val_data, out_dir, model_cfg: dict, loss_cfg: dict, training: dict, seed: int,
               log: logging.Logger | None = None) -> dict:
    """Train (or resume, or return at once if complete) one fold's model in ``out_dir``.

    model_cfg / loss_cfg / training: the ``model:``, ``loss:`` and ``training:`` sections of the
    config (``training`` uses epochs, steps_per_epoch, learning_rate, mixed_precision; batch
    size, workers and augmentation belong to the datasets; threads to the job). ``seed``: the
    fold's seed (``config.fold_seed``); it builds the model (weights, dropout) unless
    ``model_cfg['seed']`` is set, which must then equal it. Returns a summary dict (paths,
    completed epochs, best epoch and Dice, optimizer iterations, history rows, device, precision).
    """
    log = log or logging.getLogger("t2lesion.train")
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tr = {**TRAINING_DEFAULTS, **(training or {})}
    n_epochs = int(tr["epochs"])
    if n_epochs < 1:
        raise ValueError(f"training.epochs must be >= 1, got {n_epochs}")
    explicit = (model_cfg or {}).get("seed")
    if explicit is not None and int(explicit) != int(seed):
        raise ValueError(f"model.seed {explicit} is set but train_fold got seed {seed}: resolve it with fold_seed")
    kind, mcfg = split_model_section({**(model_cfg or {}), "seed": int(seed)})
    lcfg = LossConfig.from_dict(loss_cfg)
    settings = _settings(kind, mcfg, lcfg, tr, seed)

    cur = _read_json(out / STATE)
    if cur is not None and cur["settings"] != settings:
        raise TrainingSettingsChanged(
            f"{out} holds a run with other settings ({_diff(cur['settings'], settings)}); "
            "remove the folder to train this fold afresh")
    if (cur is not None and cur["completed"] >= n_epochs and (out / "model.keras").exists()
            and not (out / NEXT_STATE).exists()):
        log.info("fold already trained: %d/%d epochs, best epoch %s", cur["completed"], n_epochs, cur["best_epoch"])
        log.info("%s", job_line(f"{cur.get('precision', 'unknown')} (the finished run's)"))
        if not (out / "history.tsv").exists():
            write_history(out, cur["history"])
        if not (out / "training_curve.png").exists():
            plot_history(out, cur["history"])
        return _summary(out, cur, cur["completed"], {"resumed": False, "already_complete": True})

    steps = tr.get("steps_per_epoch") or len(train_data)
    if steps > len(train_data):
        log.warning("steps_per_epoch %d > %d batches in the training data: using %d", steps, len(train_data),
                    len(train_data))
        steps = len(train_data)

    gpu = gpu_visible(log)
    bf16 = not gpu or tr["mixed_precision"] != "auto" or bf16_native(gpu_compute_capabilities(), log)
    policy = M.set_precision(tr["mixed_precision"], gpu and bf16)
    jit = jit_setting(gpu)
    log.info("%s", job_line(policy))

    if (out / "last.keras").exists():
        model = M.load_model(out / "last.keras")
        cur = _recover(out, model, log)
        if cur["settings"] != settings:
            raise TrainingSettingsChanged(f"{out} holds a run with other settings; remove it to train afresh")
        if L.bind_losses(model) != len(model.outputs):
            raise RuntimeError(f"{out / 'last.keras'}: not a compiled checkpoint of this project's model")
        model.jit_compile = jit
        build_for_training(model)
        start = int(cur["completed"])
        step = int(ops.convert_to_numpy(model.optimizer.iterations))
        if start < n_epochs:
            log.info("resuming at epoch %d/%d (optimizer step %d)", start + 1, n_epochs, step)
        else:
            log.info("all %d epochs were already done (optimizer step %d)", n_epochs, step)
    else:
        _recover(out, None, log)
        model = new_compiled_model(kind, mcfg, lcfg, n_epochs, float(tr["learning_rate"]), int(seed), jit,
                                   tr["lr_schedule"], n_epochs * steps)
        cur = {"settings": settings, "completed": 0, "best_epoch": None, "best_val_dice": None, "history": []}
        start = 0
        log.info("new model: %s, %s parameters, seed %d", kind, f"{M.count_params(model):,}", seed)

    state_layer = L.find_schedule_state(model)
    n_out = len(model.outputs)
    g_fix, b_fix = fixed_validation_loss_values(lcfg)
    fixed_losses = [L.LesionSegLoss(g_fix, b_fix, lcfg.dice_smooth) for _ in range(n_out)]
    sched_losses = [L.LesionSegLoss(dice_smooth=lcfg.dice_smooth).bind(state_layer) for _ in range(n_out)]

    for epoch in range(start, n_epochs):
        t0 = time.perf_counter()
        g, b = L.schedule_values(epoch, n_epochs, lcfg)
        state_layer.set(epoch, g, b)
        if hasattr(train_data, "set_epoch"):
            train_data.set_epoch(epoch)
        # every random draw of the epoch is a function of (seed, epoch): a resumed run repeats it
        keras.utils.set_random_seed(_epoch_seed(seed, epoch))
        M.reseed_dropout(model, _epoch_seed(seed, epoch))
        # shuffle=False: the batch order is the dataset's (set_epoch), not Keras' global RNG
        hist = model.fit(train_data, initial_epoch=epoch, epochs=epoch + 1, steps_per_epoch=steps, verbose=2,
                         shuffle=False)
        loss = float(hist.history["loss"][-1])
        if not math.isfinite(loss):
            raise FloatingPointError(f"epoch {epoch + 1}: training loss is {loss}")
        v = validate(model, val_data, fixed_losses, sched_losses)
        prev_best = cur["best_val_dice"]
        is_best = prev_best is None or v["val_dice"] > prev_best
        row = {
            "epoch": epoch + 1, "loss": loss, **v, "gamma": g, "beta": b,
            "lr": float(ops.convert_to_numpy(model.optimizer.learning_rate)),
            "iterations": int(ops.convert_to_numpy(model.optimizer.iterations)),
            "seconds": round(time.perf_counter() - t0, 2), "best": bool(is_best),
        }
        nxt = {**cur, "completed": epoch + 1, "history": [*cur["history"], row], "precision": policy}
        if is_best:
            nxt["best_epoch"], nxt["best_val_dice"] = epoch + 1, v["val_dice"]
        # commit: temporaries, next state, renames (last.keras first), state
        _save_model_atomic(model, out / _TMP_LAST)
        if is_best:  # the same model: a copy of the file, not a second serialisation
            shutil.copyfile(out / _TMP_LAST, out / _TMP_BEST)
        _write_json_atomic(out / NEXT_STATE, nxt)
        os.replace(out / _TMP_LAST, out / "last.keras")
        if is_best:
            os.replace(out / _TMP_BEST, out / "model.keras")
        os.replace(out / NEXT_STATE, out / STATE)
        cur = nxt
        write_history(out, cur["history"])
        plot_history(out, cur["history"])
        log.info("epoch %d/%d: loss %.4f, val_loss %.4f (fixed γ/β), val_dice %.3f%s, γ %.3f, β %.3f, step %d, %.1f s",
                 epoch + 1, n_epochs, loss, v["val_loss"], v["val_dice"], " (best)" if is_best else "", g, b,
                 row["iterations"], row["seconds"])
    return _summary(out, cur, start, {"resumed": start > 0, "already_complete": False, "precision": policy,
                                      "gpu": gpu, "seconds": round(time.perf_counter() - t_start, 2)})


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 100_003 + int(epoch)) % (2**31 - 1)


def _diff(a: dict, b: dict) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys)[:300]


__all__ = ["HISTORY_COLUMNS", "HISTORY_DOC", "LR_SCHEDULES", "TRAINING_DEFAULTS", "TrainingSettingsChanged",
           "build_for_training", "fixed_validation_loss_values", "gpu_visible", "learning_rate_schedule",
           "plot_history", "train_fold", "validate", "write_history"]
