"""Multi-arm 3-D U-Net with dense input and skip connectivity (Krishnan et al. 2023, Fig. 1).

docs/DESIGN.md §4. Everything in the graph is ``keras.layers`` / ``keras.ops``, so the same code
builds and trains on the TensorFlow, PyTorch and JAX backends. No ``tf.*`` here.

Layout
------
Input ``(batch, z, y, x, 3)`` channels-last, axes (slices, rows, cols), channels
``[T2w, FLAIR, T1w]`` (``ModelConfig.channel_order``). Voxels are 3 × 1 × 1 mm (z, y, x).

The full model is literally ``decoder(encoder(x))``:

* ``encoder`` (a sub-model named ``"encoder"``): the three arms (E1 all contrasts, E2
  FLAIR, E3 T2w) with dense input connectivity, per-depth concat + 1×1×1 projection,
  and dense skip connectivity. Outputs the four skip tensors ``[S1, S2, S3, S4]``
  (finest first). Deterministic: no dropout.
* ``decoder`` (a sub-model named ``"decoder"``): interpolation upsampling, decoder
  shortcuts from all deeper decoder levels, residual refinement, dropout, and the
  sigmoid deep-supervision heads. Outputs ``[P1, P2, P3]`` (finest first).

``split_encoder_decoder(model, mc=True)`` returns the encoder and an MC-dropout copy of
the decoder that *shares every weight* with the model (only the stateless dropout layers
are new): dropout on, batch norm in inference mode (moving statistics). ``mc_predict``
/ ``build_mc_predictor`` fuse "encoder once, decoder n times (batched)" into one graph.

The custom layers live in :mod:`t2lesion.unet.layers`, the receptive-field arithmetic in
:mod:`t2lesion.unet.receptive_field` (both re-exported here). See docs/model.md for the design
decisions, receptive field and parameter counts.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from t2lesion.unet.hparams import ModelConfig, split_model_section
from t2lesion.unet.layers import ChannelSelect, LinearUpsample3D, MCDropout, MCReduce, RepeatBatch
from t2lesion.unet.losses import LossScheduleState, bind_losses
from t2lesion.unet.receptive_field import _down_kernel, _ratio, output_shapes, receptive_field

log = logging.getLogger(__name__)

SCHEDULE_LAYER = "loss_schedule"

# --------------------------------------------------------------------------- building blocks


def _bn(cfg: ModelConfig, name: str):
    return layers.BatchNormalization(momentum=cfg.bn_momentum, epsilon=cfg.bn_epsilon, name=name)


def _conv(width, kernel, name, strides=(1, 1, 1), use_bias=False):
    return layers.Conv3D(
        width,
        tuple(kernel),
        strides=tuple(strides),
        padding="same",
        use_bias=use_bias,
        kernel_initializer="he_normal",
        name=name,
    )


def residual_block(x, width: int, kernels, cfg: ModelConfig, name: str):
    """conv(k1)-BN-ReLU-conv(k2)-BN + shortcut (1×1×1 conv + BN if the width changes), ReLU."""
    shortcut = x
    if x.shape[-1] != width:
        shortcut = _conv(width, (1, 1, 1), f"{name}_short")(x)
        shortcut = _bn(cfg, f"{name}_short_bn")(shortcut)
    h = _conv(width, kernels[0], f"{name}_conv1")(x)
    h = _bn(cfg, f"{name}_bn1")(h)
    h = layers.ReLU(name=f"{name}_relu1")(h)
    h = _conv(width, kernels[1], f"{name}_conv2")(h)
    h = _bn(cfg, f"{name}_bn2")(h)
    h = layers.Add(name=f"{name}_add")([h, shortcut])
    return layers.ReLU(name=f"{name}_relu2")(h)


def _sum(xs, name):
    return xs[0] if len(xs) == 1 else layers.Add(name=name)(xs)


def _downsample(x, width, src, dst, cfg: ModelConfig, name):
    """HRNet-style: a chain of (dst - src) strided convs, one per level step; intermediate
    convs keep the source width (+BN+ReLU), the last maps to ``width`` (+BN, no ReLU)."""
    h = x
    for t in range(src, dst):
        last = t == dst - 1
        w = width if last else x.shape[-1]
        h = _conv(w, _down_kernel(cfg.strides[t], cfg.down_kernel), f"{name}_s{t + 1}", strides=cfg.strides[t])(h)
        h = _bn(cfg, f"{name}_s{t + 1}_bn")(h)
        if not last:
            h = layers.ReLU(name=f"{name}_s{t + 1}_relu")(h)
    return h


def _upsample(x, width, src, dst, cfg: ModelConfig, name):
    """1×1×1 conv + BN to the target width (at the coarse resolution: cheap), then trilinear."""
    tot = cfg.total_strides()
    h = _conv(width, (1, 1, 1), f"{name}_conv")(x)
    h = _bn(cfg, f"{name}_bn")(h)
    return LinearUpsample3D(_ratio(tot[src], tot[dst]), name=f"{name}_interp")(h)


def _head(x, name, cfg: ModelConfig):
    """Sigmoid head; with ``cfg.output_prior`` its bias starts at that probability's logit, so an
    untrained model predicts background (a short training then starts from the right side)."""
    prior = cfg.output_prior
    bias = "zeros" if prior is None else keras.initializers.Constant(math.log(prior / (1.0 - prior)))
    h = layers.Conv3D(1, 1, padding="same", bias_initializer=bias, name=f"{name}_conv")(x)
    return layers.Activation("sigmoid", dtype="float32", name=name)(h)


# --------------------------------------------------------------------------- multi-arm U-Net


def build_multiarm_encoder(cfg: ModelConfig) -> keras.Model:
    """x (B, z, y, x, C) -> [S1, ..., S_depth] dense skip features (finest first)."""
    cfg.validate()
    D = cfg.depth
    x = keras.Input(shape=tuple(cfg.patch_size) + (len(cfg.channel_order),), name="image")
    arm_feats: list[list] = []
    for ai, (arm_name, chans) in enumerate(cfg.arms):
        widths = cfg.arm_widths(ai)
        idx = [cfg.channel_order.index(c) for c in chans]
        h = ChannelSelect(idx, name=f"e{ai + 1}_{arm_name}_select")(x)
        feats = []
        for d in range(D):
            tag = f"e{ai + 1}_d{d + 1}"
            if d > 0:
                srcs = range(d) if cfg.dense_input else [d - 1]
                ins = [_downsample(feats[a], widths[d], a, d, cfg, f"{tag}_down_from{a + 1}") for a in srcs]
                h = _sum(ins, f"{tag}_in_sum")
                h = layers.ReLU(name=f"{tag}_in_relu")(h)
            h = residual_block(h, widths[d], cfg.block_kernels[d], cfg, f"{tag}_block")
            feats.append(h)
        arm_feats.append(feats)

    # per-depth concat of the arms + 1x1x1 projection
    proj = []
    for d in range(D):
        parts = [f[d] for f in arm_feats]
        h = layers.Concatenate(name=f"skip_d{d + 1}_concat")(parts) if len(parts) > 1 else parts[0]
        h = _conv(cfg.widths[d], (1, 1, 1), f"skip_d{d + 1}_proj")(h)
        h = _bn(cfg, f"skip_d{d + 1}_proj_bn")(h)
        proj.append(layers.ReLU(name=f"skip_d{d + 1}_proj_relu")(h))

    # dense skip connectivity: S_d = sum over all depths a of P_a resampled to depth d
    skips = []
    for d in range(D):
        terms = []
        srcs = range(D) if cfg.dense_skip else [d]
        for a in srcs:
            if a == d:
                terms.append(proj[a])
            elif a < d:
                terms.append(_downsample(proj[a], cfg.widths[d], a, d, cfg, f"skip_d{d + 1}_from{a + 1}"))
            else:
                terms.append(_upsample(proj[a], cfg.widths[d], a, d, cfg, f"skip_d{d + 1}_from{a + 1}"))
        skips.append(_sum(terms, f"skip_d{d + 1}_sum"))
    return keras.Model(x, skips, name="encoder")


def _skip_inputs(cfg: ModelConfig) -> list:
    """The decoder's inputs: one skip tensor per depth, at that depth's grid and width."""
    tot = cfg.total_strides()
    return [
        keras.Input(shape=tuple(p // s for p, s in zip(cfg.patch_size, tot[d])) + (cfg.widths[d],), name=f"skip{d + 1}")
        for d in range(cfg.depth)
    ]


def _decoder_dropout(cfg: ModelConfig, d: int) -> MCDropout:
    """The MC-dropout layer closing decoder depth ``d`` (0-based; seeded per depth)."""
    return MCDropout(cfg.dropout_rate, seed=cfg.seed + d + 1, name=f"dec_d{d + 1}_dropout")


def build_multiarm_decoder(cfg: ModelConfig) -> keras.Model:
    """[S1, ..., S_depth] -> [P1, ..., P_L] sigmoid lesion probabilities, finest first."""
    cfg.validate()
    D = cfg.depth
    ins = _skip_inputs(cfg)
    g: dict[int, object] = {D - 1: _decoder_dropout(cfg, D - 1)(ins[D - 1])}
    for d in range(D - 2, -1, -1):
        srcs = range(d + 1, D) if cfg.decoder_shortcuts else [d + 1]
        ups = [_upsample(g[b], cfg.widths[d], b, d, cfg, f"dec_d{d + 1}_up_from{b + 1}") for b in srcs]
        u = _sum(ups, f"dec_d{d + 1}_up_sum")
        h = layers.Concatenate(name=f"dec_d{d + 1}_concat")([u, ins[d]])
        h = residual_block(h, cfg.widths[d], cfg.block_kernels[d], cfg, f"dec_d{d + 1}_block")
        g[d] = _decoder_dropout(cfg, d)(h)
    outs = [_head(g[d], f"prob_d{d + 1}", cfg) for d in range(cfg.supervision_levels)]
    return keras.Model(ins, outs, name="decoder")


def _compose(encoder: keras.Model, decoder: keras.Model, cfg: ModelConfig, name: str) -> keras.Model:
    """``decoder(encoder(x))``, with the loss schedule's state (an identity layer at the input
    owning γ, β and the epoch as non-trainable weights) so that it is saved with the model."""
    x = keras.Input(shape=tuple(cfg.patch_size) + (len(cfg.channel_order),), name="image")
    h = LossScheduleState(name=SCHEDULE_LAYER)(x)
    # named float32 pass-throughs: Keras logs one loss per head (p1_loss, p2_loss, ...)
    outs = [layers.Identity(dtype="float32", name=f"p{i + 1}")(o) for i, o in enumerate(decoder(encoder(h)))]
    return keras.Model(x, outs, name=name)


def build_multiarm_unet(cfg: ModelConfig | None = None) -> keras.Model:
    """The paper's network: ``x -> [P1, P2, P3]`` (finest first), ``decoder(encoder(x))``."""
    cfg = (cfg or ModelConfig()).validate()
    keras.utils.set_random_seed(cfg.seed)
    return _compose(build_multiarm_encoder(cfg), build_multiarm_decoder(cfg), cfg, "multiarm_unet")


# --------------------------------------------------------------------------- plain U-Net baseline


def _conv_bn_relu(x, width, kernel, cfg, name, strides=(1, 1, 1)):
    h = _conv(width, kernel, f"{name}_conv", strides=strides)(x)
    h = _bn(cfg, f"{name}_bn")(h)
    return layers.ReLU(name=f"{name}_relu")(h)


def build_plain_encoder(cfg: ModelConfig) -> keras.Model:
    """Single-arm 3-D U-Net encoder (Çiçek et al. 2016 style): two 3×3×3 conv-BN-ReLU per depth,
    strided 3×3×3 conv downsampling; outputs the plain skips [E1, ..., E_depth]."""
    cfg.validate()
    x = keras.Input(shape=tuple(cfg.patch_size) + (len(cfg.channel_order),), name="image")
    h, feats = x, []
    for d in range(cfg.depth):
        if d > 0:
            k = tuple(3 if s > 1 else 1 for s in cfg.strides[d - 1])
            h = _conv_bn_relu(h, cfg.widths[d], k, cfg, f"e_d{d + 1}_down", strides=cfg.strides[d - 1])
        h = _conv_bn_relu(h, cfg.widths[d], (3, 3, 3), cfg, f"e_d{d + 1}_c1")
        h = _conv_bn_relu(h, cfg.widths[d], (3, 3, 3), cfg, f"e_d{d + 1}_c2")
        feats.append(h)
    return keras.Model(x, feats, name="encoder")


def build_plain_decoder(cfg: ModelConfig) -> keras.Model:
    """Transposed-conv upsampling, concat skip, two 3×3×3 conv-BN-ReLU, dropout, heads."""
    cfg.validate()
    D = cfg.depth
    ins = _skip_inputs(cfg)
    g = {D - 1: _decoder_dropout(cfg, D - 1)(ins[D - 1])}
    for d in range(D - 2, -1, -1):
        s = cfg.strides[d]
        u = layers.Conv3DTranspose(cfg.widths[d], s, strides=s, padding="same", name=f"dec_d{d + 1}_upconv")(g[d + 1])
        h = layers.Concatenate(name=f"dec_d{d + 1}_concat")([u, ins[d]])
        h = _conv_bn_relu(h, cfg.widths[d], (3, 3, 3), cfg, f"dec_d{d + 1}_c1")
        h = _conv_bn_relu(h, cfg.widths[d], (3, 3, 3), cfg, f"dec_d{d + 1}_c2")
        g[d] = _decoder_dropout(cfg, d)(h)
    outs = [_head(g[d], f"prob_d{d + 1}", cfg) for d in range(cfg.supervision_levels)]
    return keras.Model(ins, outs, name="decoder")


def build_plain_unet(cfg: ModelConfig | None = None) -> keras.Model:
    """Plain 3-D U-Net with the same widths/strides/heads/dropout (ablation baseline)."""
    cfg = (cfg or ModelConfig()).validate()
    keras.utils.set_random_seed(cfg.seed)
    return _compose(build_plain_encoder(cfg), build_plain_decoder(cfg), cfg, "plain_unet")


def build_from_config(model_section: dict | None, seed: int | None = None) -> keras.Model:
    """Build from the ``model:`` mapping of config.yaml (``kind`` + ``ModelConfig`` fields).
    ``seed`` replaces a null ``model.seed`` (a fold's seed: ``t2lesion.unet.hparams.fold_seed``)."""
    kind, cfg = split_model_section(model_section, seed)
    return build_model(cfg, kind)


def build_model(cfg: ModelConfig | None = None, kind: str = "multiarm") -> keras.Model:
    if kind == "multiarm":
        return build_multiarm_unet(cfg)
    if kind == "plain":
        return build_plain_unet(cfg)
    raise ValueError(f"unknown model kind {kind!r} (use 'multiarm' or 'plain')")


# --------------------------------------------------------------------------- split / MC dropout


def make_mc_decoder(decoder: keras.Model, rate: float | None = None, seed: int = 0) -> keras.Model:
    """A copy of ``decoder``'s graph that reuses every layer (so every weight) of ``decoder``
    except the dropout layers, which become always-on ``MCDropout`` (new seed generators).

    Call it with ``training=False`` (the default): batch norm then uses its moving statistics
    while dropout still samples. ``rate`` overrides the dropout rate (e.g. 0 for a check).
    """
    counter = [0]

    def clone(layer):
        if isinstance(layer, (MCDropout, layers.Dropout)):
            counter[0] += 1
            r = layer.rate if rate is None else rate
            return MCDropout(r, always_on=True, seed=_seed_state(seed, counter[0]), name=f"{layer.name}_mc")
        return layer

    mc = keras.models.clone_model(decoder, clone_function=clone)
    mc.name = f"{decoder.name}_mc"
    return mc


def split_encoder_decoder(model: keras.Model, mc: bool = False, rate: float | None = None, seed: int = 0):
    """``(encoder, decoder)`` sub-models sharing weights with ``model``.

    ``mc=False``: the model's own decoder (dropout only with ``training=True``).
    ``mc=True``: an MC-dropout decoder (``make_mc_decoder``): dropout on, BN in inference mode.
    """
    encoder = model.get_layer("encoder")
    decoder = model.get_layer("decoder")
    if mc:
        decoder = make_mc_decoder(decoder, rate=rate, seed=seed)
    return encoder, decoder


def _seed_state(seed: int, k: int) -> int:
    """A generator seed in [0, 2**31) from any integer ``seed`` and a layer index (no overflow)."""
    ss = np.random.SeedSequence([int(seed) % 2**64, int(k)])
    return int(ss.generate_state(1, dtype=np.uint32)[0] >> 1)


def reseed_dropout(model: keras.Model, seed: int, only_mc: bool = False) -> int:
    """Reset the seed generators of the model's dropout layers (``MCDropout``, nested models
    included) from ``seed``: reproducible draws for any integer seed. Returns the count."""
    k = 0
    for layer in _walk(model):
        if isinstance(layer, MCDropout) and (layer.always_on or not only_mc):
            k += 1
            state = layer.seed_generator.state
            state.assign(np.array([_seed_state(seed, k), 0], dtype=state.dtype))
    return k


def _walk(model):
    for layer in getattr(model, "layers", []):
        yield layer
        if hasattr(layer, "layers"):
            yield from _walk(layer)


def set_mc_seed(decoder: keras.Model, seed: int) -> None:
    """Reset the seed generators of the always-on dropout layers (reproducible MC draws).
    Any integer seed (folds x windows x passes may exceed 2**32)."""
    reseed_dropout(decoder, seed, only_mc=True)


def _is_mc(decoder: keras.Model) -> bool:
    return any(isinstance(l, MCDropout) and l.always_on for l in decoder.layers)


def build_mc_predictor(encoder: keras.Model, decoder: keras.Model, n_samples: int, mode: str = "moments",
                       level: int = 0) -> keras.Model:
    """One graph: encoder once per window, MC decoder on the n-fold repeated features (one batch).

    ``decoder`` must be an MC decoder (``make_mc_decoder``); a training decoder is converted.
    Output: see ``MCReduce`` (``mode``) for the supervision head ``level`` (0 = finest).
    """
    if not _is_mc(decoder):
        decoder = make_mc_decoder(decoder)
    x = keras.Input(shape=tuple(encoder.input.shape[1:]), name="image")
    feats = encoder(x)
    feats = [RepeatBatch(n_samples, name=f"mc_repeat{i + 1}")(f) for i, f in enumerate(feats)]
    probs = decoder(feats)
    out = MCReduce(n_samples, mode=mode, name=f"mc_{mode}")(probs[level])
    return keras.Model(x, out, name=f"mc_predictor_n{n_samples}")


def mc_predict(encoder: keras.Model, decoder: keras.Model, x, n_samples: int = 10, seed: int = 0,
               mode: str = "samples", level: int = 0) -> np.ndarray:
    """MC-dropout prediction for a batch of windows ``x`` (B, z, y, x, C).

    Runs the encoder once per window and the (MC) decoder on the n-fold repeated features in
    a single batched graph call. ``mode="samples"`` -> (B, n, z, y, x, 1); ``"moments"`` ->
    (B, z, y, x, 3) = [mean p, mean p², mean H(p)]. For repeated calls build the predictor once
    with ``build_mc_predictor`` and use ``predict_on_batch`` directly (this helper rebuilds it).
    """
    if not _is_mc(decoder):
        decoder = make_mc_decoder(decoder, seed=seed)
    pred = build_mc_predictor(encoder, decoder, n_samples, mode=mode, level=level)
    set_mc_seed(decoder, seed)
    return np.asarray(pred.predict_on_batch(np.asarray(x, dtype="float32")))


# --------------------------------------------------------------------------- analysis helpers


def count_params(model: keras.Model) -> int:
    """Parameters: weights and BN statistics, not the loss schedule's 3 scalars
    (``model.count_params()`` counts those too)."""
    sched = find_schedule_state_vars(model)
    return int(sum(int(np.prod(w.shape)) for w in model.weights
                   if "seed_generator" not in w.path and id(w) not in sched))


def find_schedule_state_vars(model) -> set[int]:
    return {id(v) for layer in _walk(model) if isinstance(layer, LossScheduleState) for v in layer.weights}


def load_model(path, compile: bool = True) -> keras.Model:
    """``keras.saving.load_model`` with this package's custom objects registered; a compiled
    model's ``LesionSegLoss``es are re-bound to the model's saved ``LossScheduleState`` (so a
    resumed training continues the schedule instead of freezing γ/β at their saved values)."""
    model = keras.saving.load_model(path, compile=compile)
    if compile:
        bind_losses(model)
    return model


def set_precision(mode: str = "auto", gpu: bool = False) -> str:
    """Global Keras dtype policy for models built (or loaded) afterwards; returns its name.

    ``"on"``: ``mixed_bfloat16`` (bf16 compute, float32 variables); ``"off"``: ``float32``;
    ``"auto"``: mixed on a GPU, float32 on the CPU. The heads' sigmoids are float32 layers in
    every policy, so predictions and the loss are float32. bf16 rather than fp16: no loss
    scaling needed.
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"mixed_precision must be 'auto', 'on' or 'off', got {mode!r}")
    on = mode == "on" or (mode == "auto" and bool(gpu))
    policy = "mixed_bfloat16" if on else "float32"
    if on and not gpu and onednn_bf16_suspect():
        log.warning("mixed_bfloat16 on this CPU: TensorFlow's oneDNN bf16 kernels on a CPU with AVX512-BF16 "
                    "and no AMX gave NaN weights after 2 training steps (tests/test_model.py); train with "
                    "training.mixed_precision: off, or with TF_ENABLE_ONEDNN_OPTS=0")
    keras.config.set_dtype_policy(policy)
    return policy


def onednn_bf16_suspect(cpuinfo: str | None = None) -> bool:
    """TensorFlow with its oneDNN kernels on a CPU with AVX512-BF16 but no AMX: measured on such a
    CPU (AMD EPYC, 2026-12-06), two bf16 training steps left NaN in a conv kernel while the loss
    stayed finite; with ``TF_ENABLE_ONEDNN_OPTS=0``, or on JAX, or on a Xeon with AMX, they do not."""
    if keras.backend.backend() != "tensorflow" or os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") == "0":
        return False
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set(cpuinfo.split())
    return "avx512_bf16" in flags and "amx_bf16" not in flags


def with_overrides(cfg: ModelConfig, **kw) -> ModelConfig:
    return dataclasses.replace(cfg, **kw).validate()


__all__ = [
    "ChannelSelect",
    "LinearUpsample3D",
    "MCDropout",
    "MCReduce",
    "ModelConfig",
    "RepeatBatch",
    "build_from_config",
    "build_mc_predictor",
    "build_model",
    "build_multiarm_decoder",
    "build_multiarm_encoder",
    "build_multiarm_unet",
    "build_plain_unet",
    "count_params",
    "load_model",
    "make_mc_decoder",
    "mc_predict",
    "output_shapes",
    "receptive_field",
    "reseed_dropout",
    "set_mc_seed",
    "set_precision",
    "split_encoder_decoder",
    "with_overrides",
]
