"""Custom Keras layers of the multi-arm U-Net (docs/DESIGN.md §4, §7): channel selection
for the arms, trilinear upsampling, MC dropout, and the batched MC-dropout repeat and reduce.

``keras.layers`` / ``keras.ops`` only, registered for serialisation under the package name
``t2lesion`` (saved models name them ``t2lesion>ClassName``, whichever module holds them).
"""

from __future__ import annotations

import keras
from keras import layers, ops

PKG = "t2lesion"


@keras.saving.register_keras_serializable(package=PKG)
class ChannelSelect(layers.Layer):
    """Pick input channels by index (static), e.g. FLAIR only for arm E2."""

    def __init__(self, indices, **kwargs):
        super().__init__(**kwargs)
        self.indices = [int(i) for i in indices]

    def call(self, x):
        idx = self.indices
        if idx == list(range(idx[0], idx[0] + len(idx))):
            return x[..., idx[0] : idx[0] + len(idx)]
        return ops.take(x, idx, axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (len(self.indices),)

    def get_config(self):
        return {**super().get_config(), "indices": self.indices}


def _shift(x, axis: int, offset: int):
    """x shifted by one along ``axis`` with edge replication: offset -1 -> x[i-1], +1 -> x[i+1]."""
    n = x.shape[axis]
    sl = [slice(None)] * len(x.shape)
    if offset < 0:
        sl_body = list(sl)
        sl_body[axis] = slice(0, n - 1)
        sl_edge = list(sl)
        sl_edge[axis] = slice(0, 1)
        return ops.concatenate([x[tuple(sl_edge)], x[tuple(sl_body)]], axis=axis)
    sl_body = list(sl)
    sl_body[axis] = slice(1, n)
    sl_edge = list(sl)
    sl_edge[axis] = slice(n - 1, n)
    return ops.concatenate([x[tuple(sl_body)], x[tuple(sl_edge)]], axis=axis)


def linear_upsample_axis(x, axis: int, factor: int):
    """Linear interpolation by an integer factor along one spatial axis.

    Half-pixel centres with edge clamping, i.e. identical to
    ``torch.nn.functional.interpolate(mode="linear", align_corners=False)``. Pure keras.ops
    (slices, weighted sums, stack + reshape), no host round-trip; needs a static size along
    ``axis`` (the other dims may be dynamic).
    """
    if factor == 1:
        return x
    n = x.shape[axis]
    if n is None:
        raise ValueError("linear_upsample_axis needs a static size along the upsampled axis")
    prev = _shift(x, axis, -1) if n > 1 else x
    nxt = _shift(x, axis, +1) if n > 1 else x
    phases = []
    for r in range(factor):
        delta = (2 * r + 1 - factor) / (2.0 * factor)
        if delta < 0:
            phases.append((1.0 + delta) * x + (-delta) * prev)
        elif delta > 0:
            phases.append((1.0 - delta) * x + delta * nxt)
        else:
            phases.append(x)
    y = ops.stack(phases, axis=axis + 1)
    shape = list(y.shape)
    dyn = ops.shape(y)
    new_shape = []
    for i, s in enumerate(shape):
        if i == axis:
            new_shape.append(n * factor)
        elif i == axis + 1:
            continue
        elif i == 0:
            new_shape.append(-1)
        else:
            new_shape.append(s if s is not None else dyn[i])
    return ops.reshape(y, new_shape)


@keras.saving.register_keras_serializable(package=PKG)
class LinearUpsample3D(layers.Layer):
    """Trilinear upsampling by integer factors (z, y, x), channels-last, separable keras.ops."""

    def __init__(self, factors, **kwargs):
        super().__init__(**kwargs)
        self.factors = tuple(int(f) for f in factors)

    def call(self, x):
        for ax, f in enumerate(self.factors):
            x = linear_upsample_axis(x, ax + 1, f)
        return x

    def compute_output_shape(self, input_shape):
        out = list(input_shape)
        for ax, f in enumerate(self.factors):
            if out[ax + 1] is not None:
                out[ax + 1] = out[ax + 1] * f
        return tuple(out)

    def get_config(self):
        return {**super().get_config(), "factors": list(self.factors)}


@keras.saving.register_keras_serializable(package=PKG)
class MCDropout(layers.Layer):
    """Dropout whose activity does not depend on batch-norm mode.

    ``always_on=False``: ordinary dropout (active only when ``training=True``).
    ``always_on=True``: active in every call, including ``training=False`` — the MC-dropout
    decoder is built from this variant so batch norm stays in inference mode while dropout
    samples. Both variants are stateless except for their seed generator.
    """

    def __init__(self, rate: float, always_on: bool = False, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.always_on = bool(always_on)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def call(self, x, training=None):
        if self.rate <= 0.0:
            return x
        if self.always_on or training:
            return keras.random.dropout(x, self.rate, seed=self.seed_generator)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "always_on": self.always_on, "seed": self.seed}


@keras.saving.register_keras_serializable(package=PKG)
class RepeatBatch(layers.Layer):
    """(B, ...) -> (n*B, ...), sample-major: row s*B + b is sample s of window b."""

    def __init__(self, n: int, **kwargs):
        super().__init__(**kwargs)
        self.n = int(n)

    def call(self, x):
        return ops.concatenate([x] * self.n, axis=0) if self.n > 1 else x

    def compute_output_shape(self, input_shape):
        b = input_shape[0]
        return (None if b is None else b * self.n,) + tuple(input_shape[1:])

    def get_config(self):
        return {**super().get_config(), "n": self.n}


@keras.saving.register_keras_serializable(package=PKG)
class MCReduce(layers.Layer):
    """(n*B, z, y, x, 1) sample-major -> per-window statistics over the n MC samples.

    mode "samples": (B, n, z, y, x, 1).
    mode "moments": (B, z, y, x, 3) = [mean p, mean p², mean binary entropy H(p) (nats)] —
    the sufficient statistics to pool folds and derive mean, SD, predictive entropy and
    mutual information (docs/DESIGN.md §7) without shipping every sample to the host.
    """

    def __init__(self, n: int, mode: str = "moments", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("samples", "moments"):
            raise ValueError(f"mode must be 'samples' or 'moments', got {mode!r}")
        self.n = int(n)
        self.mode = mode

    def call(self, p):
        shape = tuple(p.shape[1:])
        s = ops.reshape(p, (self.n, -1) + shape)  # (n, B, ...)
        if self.mode == "samples":
            return ops.moveaxis(s, 0, 1)
        s = ops.cast(s, "float32")
        eps = 1e-7
        pc = ops.clip(s, eps, 1.0 - eps)
        ent = -(pc * ops.log(pc) + (1.0 - pc) * ops.log(1.0 - pc))
        return ops.concatenate(
            [ops.mean(s, axis=0), ops.mean(ops.square(s), axis=0), ops.mean(ent, axis=0)], axis=-1
        )

    def compute_output_shape(self, input_shape):
        b = input_shape[0]
        b = None if b is None else b // self.n
        if self.mode == "samples":
            return (b, self.n) + tuple(input_shape[1:])
        return (b,) + tuple(input_shape[1:-1]) + (3 * input_shape[-1],)

    def get_config(self):
        return {**super().get_config(), "n": self.n, "mode": self.mode}
