"""Loss of Krishnan et al. 2023 (Eq. 1–2, SPEC §5) and its schedules.

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
γ (truncation point) and β (background weight) are non-trainable ``keras.Variable`` scalars
owned by the loss and updated each epoch by ``LossScheduleCallback`` (γ linear 0.02 → 0.15;
β sigmoid growth). TF (tf.function captures variables by reference) and PyTorch (eager) see
the new values without retracing; on JAX, where a jitted train step would bake them in as
constants, the callback rebuilds the train function after each update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np
from keras import ops

PKG = "t2lesion"

# --------------------------------------------------------------------------- schedules (pure Python)


@dataclass(frozen=True)
class LossConfig:
    """Loss hyper-parameters (SPEC §5). Midpoints/slopes are interpretations (docs/model.md)."""

    gamma_start: float = 0.02
    gamma_end: float = 0.15
    beta_min: float = 0.1
    beta_max: float = 1.0
    beta_midpoint: float = 0.5  # fraction of the training epochs
    beta_width: float = 0.1  # sigmoid scale, fraction of the training epochs
    alpha_max: float = 100.0
    alpha_min: float = 1.0
    alpha_midpoint_voxels: float = 30.0  # 30 voxels = 90 µL at 1×1×3 mm
    alpha_slope_voxels: float = 10.0
    alpha_connectivity: int = 18
    dice_smooth: float = 1.0

    @classmethod
    def from_dict(cls, d: dict | None) -> LossConfig:
        import dataclasses

        d = dict(d or {})
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown loss config keys: {unknown}")
        return cls(**d)


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

    m = np.asarray(mask) > 0
    if m.ndim != 3:
        raise ValueError(f"alpha_map expects a 3-D mask, got shape {m.shape}")
    rank = {6: 1, 18: 2, 26: 3}.get(int(connectivity))
    if rank is None:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    labels, n = ndimage.label(m, structure=ndimage.generate_binary_structure(3, rank))
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
class LesionSegLoss(keras.losses.Loss):
    """α·L_FG-ST + β·L_BG-ST + L_dice for one supervision output; returns one value per sample.

    L_FG-ST = Σ_fg α_i·L_ST(p_i) / N_fg (0 if the sample has no lesion voxel),
    L_BG-ST = Σ_bg L_ST(1-p_i) / N_bg (0 if it has no background voxel),
    L_dice  = soft Dice of (p, mask) over the sample's voxels.
    ``gamma``/``beta`` are scalar ``keras.Variable``s (``self.gamma``, ``self.beta``).
    """

    def __init__(self, gamma=0.02, beta=0.1, dice_smooth: float = 1.0,
                 name: str = "lesion_seg_loss", reduction: str = "sum_over_batch_size", **kwargs):
        super().__init__(name=name, reduction=reduction, **kwargs)
        self.dice_smooth = float(dice_smooth)
        # pass existing keras.Variables to share one schedule between the per-level losses
        self.gamma = gamma if isinstance(gamma, keras.Variable) else keras.Variable(
            float(gamma), trainable=False, dtype="float32", name="st_gamma")
        self.beta = beta if isinstance(beta, keras.Variable) else keras.Variable(
            float(beta), trainable=False, dtype="float32", name="st_beta")

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        y_true = ops.cast(y_true, "float32")
        y_true = _pool_to(y_true, y_pred.shape)
        q = y_true[..., 0:1]
        alpha = y_true[..., 1:2] if y_true.shape[-1] >= 2 else q
        p = ops.clip(y_pred, 0.0, 1.0)
        axes = tuple(range(1, len(p.shape)))
        gamma = ops.convert_to_tensor(self.gamma)
        beta = ops.convert_to_tensor(self.beta)
        bgm = 1.0 - q
        n_fg = ops.sum(q, axis=axes)
        n_bg = ops.sum(bgm, axis=axes)
        fg = ops.sum(q * alpha * smooth_truncated_ce(p, gamma), axis=axes) / ops.maximum(n_fg, 1.0)
        bg = ops.sum(bgm * smooth_truncated_ce(1.0 - p, gamma), axis=axes) / ops.maximum(n_bg, 1.0)
        dice = soft_dice_loss(p, q, axes, self.dice_smooth)
        return fg + beta * bg + dice

    def get_config(self):
        return {
            "name": self.name,
            "reduction": self.reduction,
            "gamma": float(ops.convert_to_numpy(self.gamma)),
            "beta": float(ops.convert_to_numpy(self.beta)),
            "dice_smooth": self.dice_smooth,
        }


class LossScheduleCallback(keras.callbacks.Callback):
    """Sets γ and β of ``losses`` at the start of every epoch from ``LossConfig`` and ``n_epochs``."""

    def __init__(self, losses, n_epochs: int, cfg: LossConfig | None = None):
        super().__init__()
        losses = losses if isinstance(losses, (list, tuple)) else [losses]
        self.variables = []
        for l in losses:
            for v in (l.gamma, l.beta):
                if not any(v is u for _, u in self.variables):
                    self.variables.append(("gamma" if v is l.gamma else "beta", v))
        self.n_epochs = int(n_epochs)
        self.cfg = cfg or LossConfig()
        self.history: list[tuple[int, float, float]] = []

    def values(self, epoch: int) -> tuple[float, float]:
        c = self.cfg
        return (
            gamma_schedule(epoch, self.n_epochs, c.gamma_start, c.gamma_end),
            beta_schedule(epoch, self.n_epochs, c.beta_min, c.beta_max, c.beta_midpoint, c.beta_width),
        )

    def apply(self, epoch: int) -> tuple[float, float]:
        g, b = self.values(epoch)
        for kind, v in self.variables:
            v.assign(g if kind == "gamma" else b)
        return g, b

    def on_epoch_begin(self, epoch, logs=None):
        g, b = self.apply(epoch)
        self.history.append((int(epoch), g, b))
        if keras.backend.backend() == "jax" and self.model is not None and epoch > 0:
            # a jitted JAX step captures non-model variables as constants: retrace with new values
            self.model.make_train_function(force=True)


def make_loss(cfg: LossConfig | None = None, n_epochs: int = 30, n_outputs: int = 3):
    """Per-supervision-level losses (sharing one γ and one β variable; distinct names so Keras
    logs each level) and the callback that schedules them, initialised to epoch-0 values.

    Use: ``model.compile(optimizer, loss=losses)``; ``model.fit(x, [t] * n_outputs,
    callbacks=[cb])`` with ``t`` the packed full-resolution target (``pack_targets``).
    """
    cfg = cfg or LossConfig()
    first = LesionSegLoss(dice_smooth=cfg.dice_smooth, name="loss_d1")
    losses = [first] + [
        LesionSegLoss(gamma=first.gamma, beta=first.beta, dice_smooth=cfg.dice_smooth, name=f"loss_d{i + 1}")
        for i in range(1, n_outputs)
    ]
    cb = LossScheduleCallback(losses, n_epochs, cfg)
    cb.apply(0)
    return losses, cb


__all__ = [
    "LesionSegLoss",
    "LossConfig",
    "LossScheduleCallback",
    "alpha_map",
    "alpha_weight",
    "beta_schedule",
    "gamma_schedule",
    "make_loss",
    "pack_targets",
    "smooth_truncated_ce",
    "soft_dice_loss",
]
