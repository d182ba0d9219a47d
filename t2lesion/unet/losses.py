"""Loss of Krishnan et al. 2023 (Eq. 1–2, docs/DESIGN.md §5) and its schedules.

    L = α·L_FG-ST + β·L_BG-ST + L_dice        per supervision level; levels summed (Keras sums
                                              the per-output losses with weight 1).

Graph part (``LesionSegLoss``, ``smooth_truncated_ce``, ``soft_dice_loss``) uses ``keras.ops``
only, so it runs on every Keras backend. Data-side helpers (``alpha_map``, ``pack_targets``)
are numpy/scipy and run in the data loader, never in the graph.

Targets
-------
``y_true`` is the *packed* target ``(B, z, y, x, 2)`` = ``[mask, alpha]`` at full patch
resolution (``pack_targets``): channel 0 the binary GT mask, channel 1 the per-voxel α map
(``alpha_map``: sigmoid decay with the voxel's connected-component volume; 0 on background).
A 1-channel mask is accepted too (α = 1). The same full-resolution target is given for every
supervision output (``y = [t, t, t]``); the loss max-pools it in the graph to the output's
grid when the shapes differ (mask: max-pool, i.e. a coarse voxel is lesion if any fine voxel
is; α: max-pool, i.e. the weight of the smallest lesion touching the coarse voxel).

Schedules
---------
γ (truncation point) and β (background weight) live in the **model**: ``LossScheduleState``
is an identity layer at the model's input that owns three non-trainable scalar weights
(γ, β and the epoch they were set for). The losses read them (``LesionSegLoss.bind``), and
``LossScheduleCallback`` / the training loop assign them at each epoch start (γ linear
0.02 → 0.15; β sigmoid growth). Being model state they are saved in every ``.keras`` file
and restored with it (``t2lesion.unet.model.load_model`` re-binds the deserialised losses;
a scheduled loss used unbound warns), and every backend sees new values without rebuilding
its train/test functions: TF captures the variables by reference, PyTorch runs eagerly, and
JAX's trainer passes the model's non-trainable variables to the jitted step as inputs (the
loss reads them inside the trainer's stateless scope), so no recompile per epoch; the
compiled validation loss (``evaluate``) uses the current values too.
"""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np
from keras import ops

from t2lesion.unet.hparams import LossConfig

PKG = "t2lesion"

# --------------------------------------------------------------------------- schedules (pure Python)

def _sigmoid(t: float) -> float:
    return 1.0 / (1.0 + math.exp(-t)) if t >= 0 else math.exp(t) / (1.0 + math.exp(t))


def gamma_schedule(epoch: int, n_epochs: int, start: float = 0.02, end: float = 0.15) -> float:
    """γ rises linearly from ``start`` (first epoch) to ``end`` (last epoch)."""
    if n_epochs <= 1:
        return float(end)
    f = min(max(epoch / (n_epochs - 1), 0.0), 1.0)
    return float(start + (end - start) * f)


def beta_schedule(epoch: int, n_epochs: int, beta_min: float = 0.1, beta_max: float = 1.0,
                  midpoint: float = 0.5, width: float = 0.1) -> float:
    """β grows as a sigmoid over training progress f = epoch/(n_epochs-1):
    β = β_min + (β_max-β_min)·σ((f - midpoint)/width)."""
    f = 1.0 if n_epochs <= 1 else epoch / (n_epochs - 1)
    return float(beta_min + (beta_max - beta_min) * _sigmoid((f - midpoint) / width))


def alpha_weight(volume_voxels, max_weight: float = 100.0, min_weight: float = 1.0,
                 midpoint_voxels: float = 30.0, slope_voxels: float = 10.0):
    """α for a lesion of the given volume: sigmoid decay from ≈max_weight (tiny lesions) to
    min_weight (large ones): α = min + (max-min)·σ((midpoint - V)/slope)."""
    v = np.asarray(volume_voxels, dtype=np.float64)
    z = (midpoint_voxels - v) / slope_voxels
    sig = np.where(z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z))))
    return min_weight + (max_weight - min_weight) * sig


def alpha_map(mask: np.ndarray, connectivity: int = 18, max_weight: float = 100.0, min_weight: float = 1.0,
              midpoint_voxels: float = 30.0, slope_voxels: float = 10.0) -> np.ndarray:
    """Per-voxel foreground weight for a 3-D GT mask (data side, numpy/scipy).

    Each lesion voxel gets ``alpha_weight(V)`` with V the voxel count of its connected component
    (``connectivity`` 6, 18 or 26 in 3-D) *in the given mask*; background voxels get 0. Compute it
    on the whole visit's mask (not per patch) so a lesion cut by a patch border keeps its true
    volume, then crop it with the patch.
    """
    from scipy import ndimage

    from t2lesion.evaluation.segmentation import connectivity_structure

    m = np.asarray(mask) > 0
    if m.ndim != 3:
        raise ValueError(f"alpha_map expects a 3-D mask, got shape {m.shape}")
    labels, n = ndimage.label(m, structure=connectivity_structure(connectivity))
    out = np.zeros(m.shape, dtype=np.float32)
    if n == 0:
        return out
    sizes = np.bincount(labels.ravel())
    w = alpha_weight(sizes, max_weight, min_weight, midpoint_voxels, slope_voxels).astype(np.float32)
    w[0] = 0.0
    return w[labels]


def pack_targets(mask: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
    """(…, z, y, x) mask [+ α map] -> (…, z, y, x, 2) float32 ``[mask, alpha]``."""
    m = (np.asarray(mask) > 0).astype(np.float32)
    a = np.ones_like(m) * m if alpha is None else np.asarray(alpha, dtype=np.float32)
    if a.shape != m.shape:
        raise ValueError(f"alpha shape {a.shape} != mask shape {m.shape}")
    return np.stack([m, a], axis=-1)


# --------------------------------------------------------------------------- graph part (keras.ops)


def smooth_truncated_ce(p_t, gamma):
    """Smooth truncated cross-entropy of the probability of the true class ``p_t``:
    ``-log γ + ½(1 - p_t²/γ²)`` if ``p_t < γ`` else ``-log p_t``. Continuous in value and slope
    at γ; no NaN/Inf for p_t in [0, 1] (gradient finite everywhere)."""
    gamma = ops.cast(gamma, p_t.dtype)
    ce = -ops.log(ops.maximum(p_t, gamma))  # safe: the log branch never sees p_t < γ
    quad = -ops.log(gamma) + 0.5 * (1.0 - ops.square(p_t) / ops.square(gamma))
    return ops.where(p_t < gamma, quad, ce)


def soft_dice_loss(p, q, axis, smooth: float = 1.0):
    """V-Net soft Dice with squared denominator: 1 - (2Σpq + s)/(Σp² + Σq² + s)."""
    num = 2.0 * ops.sum(p * q, axis=axis) + smooth
    den = ops.sum(ops.square(p), axis=axis) + ops.sum(ops.square(q), axis=axis) + smooth
    return 1.0 - num / den


def _pool_to(t, target_shape):
    """Max-pool a (B, z, y, x, C) tensor by integer factors to ``target_shape[1:4]`` (static)."""
    src = tuple(t.shape[1:4])
    dst = tuple(target_shape[1:4])
    if None in src or None in dst or src == dst:
        return t
    f = []
    for a, b in zip(src, dst):
        if a % b:
            raise ValueError(f"target grid {src} is not an integer multiple of the output grid {dst}")
        f.append(a // b)
    return ops.max_pool(t, pool_size=tuple(f), strides=tuple(f), padding="valid")


@keras.saving.register_keras_serializable(package=PKG)
class LossScheduleState(keras.layers.Layer):
    """Identity layer owning the loss schedule's state as non-trainable model weights.

    ``gamma``, ``beta`` (float32 scalars) and ``epoch`` (int32: the 0-based epoch they were set
    for, -1 before training). Put it in the model's graph (``build_model`` does, at the input)
    so the state is saved/restored with the model and is part of the model's non-trainable
    variables, which JAX's trainer passes to the jitted train/test steps as inputs.
    """

    def __init__(self, gamma: float = 0.02, beta: float = 0.1, **kwargs):
        kwargs.setdefault("dtype", "float32")  # a pure pass-through under any precision policy
        super().__init__(**kwargs)
        self.gamma_init = float(gamma)
        self.beta_init = float(beta)
        self.gamma = self.add_weight(shape=(), dtype="float32", trainable=False, name="gamma",
                                     initializer=keras.initializers.Constant(self.gamma_init))
        self.beta = self.add_weight(shape=(), dtype="float32", trainable=False, name="beta",
                                    initializer=keras.initializers.Constant(self.beta_init))
        self.epoch = self.add_weight(shape=(), dtype="int32", trainable=False, name="epoch",
                                     initializer=keras.initializers.Constant(-1))

    def call(self, x):
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def set(self, epoch: int, gamma: float, beta: float) -> None:
        self.gamma.assign(float(gamma))
        self.beta.assign(float(beta))
        self.epoch.assign(int(epoch))

    def values(self) -> tuple[int, float, float]:
        """(epoch, γ, β) as Python numbers."""
        f = ops.convert_to_numpy
        return int(f(self.epoch)), float(f(self.gamma)), float(f(self.beta))

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma_init, "beta": self.beta_init}


def find_schedule_state(model) -> LossScheduleState | None:
    """The model's ``LossScheduleState`` layer (searched in nested models too), or None."""
    if isinstance(model, LossScheduleState):
        return model
    for layer in getattr(model, "layers", []):
        found = find_schedule_state(layer)
        if found is not None:
            return found
    return None


@keras.saving.register_keras_serializable(package=PKG)
class LesionSegLoss(keras.losses.Loss):
    """α·L_FG-ST + β·L_BG-ST + L_dice for one supervision output; returns one value per sample.

    L_FG-ST = Σ_fg α_i·L_ST(p_i) / N_fg (0 if the sample has no lesion voxel),
    L_BG-ST = Σ_bg L_ST(1-p_i) / N_bg (0 if it has no background voxel),
    L_dice  = soft Dice of (p, mask) over the sample's voxels.

    Unbound, γ and β are the fixed numbers given (e.g. the validation loss at fixed γ/β).
    ``bind(state)`` makes the loss read them from a ``LossScheduleState`` (the model's) on every
    call. The config records ``scheduled``; a scheduled loss deserialised without its model
    state (``keras.saving.load_model`` instead of ``t2lesion.unet.model.load_model``) warns
    when it is used, instead of silently training with frozen γ/β.
    """

    def __init__(self, gamma: float = 0.02, beta: float = 0.1, dice_smooth: float = 1.0, scheduled: bool = False,
                 name: str = "lesion_seg_loss", reduction: str = "sum_over_batch_size", **kwargs):
        super().__init__(name=name, reduction=reduction, **kwargs)
        self.dice_smooth = float(dice_smooth)
        self.fixed_gamma = float(gamma)
        self.fixed_beta = float(beta)
        self.scheduled = bool(scheduled)
        self.state: LossScheduleState | None = None
        self._warned = False

    def bind(self, state: LossScheduleState) -> LesionSegLoss:
        if not isinstance(state, LossScheduleState):
            raise TypeError(f"bind() needs a LossScheduleState, got {type(state).__name__}")
        self.state = state
        self.scheduled = True
        return self

    @property
    def gamma(self):
        return self.state.gamma if self.state is not None else self.fixed_gamma

    @property
    def beta(self):
        return self.state.beta if self.state is not None else self.fixed_beta

    def current(self) -> tuple[float, float]:
        """(γ, β) this loss uses now, as Python floats."""
        if self.state is None:
            return self.fixed_gamma, self.fixed_beta
        _, g, b = self.state.values()
        return g, b

    def call(self, y_true, y_pred):
        if self.state is None and self.scheduled and not self._warned:
            self._warned = True
            warnings.warn(
                f"{self.name}: a scheduled LesionSegLoss is used without its schedule state; γ/β stay "
                f"frozen at {self.fixed_gamma:g}/{self.fixed_beta:g}. Load models with "
                "t2lesion.unet.model.load_model (re-binds the model's LossScheduleState) or call bind().",
                RuntimeWarning, stacklevel=2)
        y_pred = ops.cast(y_pred, "float32")
        y_true = ops.cast(y_true, "float32")
        y_true = _pool_to(y_true, y_pred.shape)
        q = y_true[..., 0:1]
        alpha = y_true[..., 1:2] if y_true.shape[-1] >= 2 else q
        p = ops.clip(y_pred, 0.0, 1.0)
        axes = tuple(range(1, len(p.shape)))
        gamma = ops.cast(ops.convert_to_tensor(self.gamma), "float32")
        beta = ops.cast(ops.convert_to_tensor(self.beta), "float32")
        bgm = 1.0 - q
        n_fg = ops.sum(q, axis=axes)
        n_bg = ops.sum(bgm, axis=axes)
        fg = ops.sum(q * alpha * smooth_truncated_ce(p, gamma), axis=axes) / ops.maximum(n_fg, 1.0)
        bg = ops.sum(bgm * smooth_truncated_ce(1.0 - p, gamma), axis=axes) / ops.maximum(n_bg, 1.0)
        dice = soft_dice_loss(p, q, axes, self.dice_smooth)
        return fg + beta * bg + dice

    def get_config(self):
        g, b = self.current()
        return {
            "name": self.name,
            "reduction": self.reduction,
            "gamma": g,
            "beta": b,
            "dice_smooth": self.dice_smooth,
            "scheduled": self.scheduled,
        }


def bind_losses(model) -> int:
    """Bind the ``LesionSegLoss``es a model was compiled with to the model's
    ``LossScheduleState``; returns how many were bound (0 if the model has none)."""
    state = find_schedule_state(model)
    bound = 0
    for loss in _flat(getattr(model, "loss", None)):
        if isinstance(loss, LesionSegLoss) and state is not None:
            loss.bind(state)
            bound += 1
    return bound


def _flat(x):
    if isinstance(x, (list, tuple)):
        return [y for e in x for y in _flat(e)]
    if isinstance(x, dict):
        return [y for e in x.values() for y in _flat(e)]
    return [] if x is None else [x]


def schedule_values(epoch: int, n_epochs: int, cfg: LossConfig | None = None) -> tuple[float, float]:
    """(γ, β) of the schedules of ``cfg`` at 0-based ``epoch`` of ``n_epochs``."""
    c = cfg or LossConfig()
    return (
        gamma_schedule(epoch, n_epochs, c.gamma_start, c.gamma_end),
        beta_schedule(epoch, n_epochs, c.beta_min, c.beta_max, c.beta_midpoint, c.beta_width),
    )


class LossScheduleCallback(keras.callbacks.Callback):
    """Sets the model's γ and β (``LossScheduleState``) at the start of every epoch from
    ``LossConfig`` and ``n_epochs``. ``state`` defaults to the state layer of the model being
    fitted. No train function is rebuilt on any backend."""

    def __init__(self, n_epochs: int, cfg: LossConfig | None = None, state: LossScheduleState | None = None):
        super().__init__()
        self.n_epochs = int(n_epochs)
        self.cfg = cfg or LossConfig()
        self.state = state
        self.history: list[tuple[int, float, float]] = []

    def values(self, epoch: int) -> tuple[float, float]:
        return schedule_values(epoch, self.n_epochs, self.cfg)

    def _state(self) -> LossScheduleState:
        if self.state is None and self.model is not None:
            self.state = find_schedule_state(self.model)
        if self.state is None:
            raise ValueError("LossScheduleCallback: the model has no LossScheduleState layer")
        return self.state

    def apply(self, epoch: int) -> tuple[float, float]:
        g, b = self.values(epoch)
        self._state().set(epoch, g, b)
        return g, b

    def on_epoch_begin(self, epoch, logs=None):
        g, b = self.apply(epoch)
        self.history.append((int(epoch), g, b))


def make_loss(cfg: LossConfig | None = None, n_epochs: int = 30, n_outputs: int = 3, model=None):
    """Per-supervision-level losses bound to ``model``'s ``LossScheduleState`` (distinct names so
    Keras logs each level) and the callback that schedules them; the state is set to epoch 0's
    values. ``model`` may also be the state layer itself.

    Use: ``model.compile(optimizer, loss=losses)``; ``model.fit(x, [t] * n_outputs,
    callbacks=[cb])`` with ``t`` the packed full-resolution target (``pack_targets``).
    """
    cfg = cfg or LossConfig()
    state = find_schedule_state(model) if model is not None else None
    if state is None:
        raise ValueError("make_loss needs a model with a LossScheduleState layer (build_model adds one)")
    losses = [LesionSegLoss(dice_smooth=cfg.dice_smooth, name=f"loss_d{i + 1}").bind(state) for i in range(n_outputs)]
    cb = LossScheduleCallback(n_epochs, cfg, state)
    g, b = cb.values(0)
    state.set(-1, g, b)
    return losses, cb


__all__ = [
    "LesionSegLoss",
    "LossConfig",
    "LossScheduleCallback",
    "LossScheduleState",
    "bind_losses",
    "find_schedule_state",
    "schedule_values",
    "alpha_map",
    "alpha_weight",
    "beta_schedule",
    "gamma_schedule",
    "make_loss",
    "pack_targets",
    "smooth_truncated_ce",
    "soft_dice_loss",
]
