"""The multi-arm U-Net written in plain PyTorch (no Keras): a peer for timing the pipeline's
Keras model against hand-written torch on the same device (``benchmarks/bench_gpu.py`` and the
``__main__`` below).

The same graph as ``t2lesion.unet.model.build_multiarm_unet`` for a ``ModelConfig``: three arms
with dense input connectivity, per-depth concat + 1×1×1 projection, dense skips, decoder
shortcuts from all deeper levels, residual blocks, dropout closing each decoder depth, sigmoid
deep-supervision heads (finest first); TensorFlow's 'same' padding (asymmetric for strided
convs), Keras's batch-norm momentum and epsilon, trilinear upsampling with half-pixel centres
(what ``LinearUpsample3D`` computes). Every conv and batch norm is registered under its Keras
layer name, so :func:`load_keras_weights` copies a Keras model's weights in and the two give
the same probabilities (tests/test_torch_peer.py). Tensors are channels-first (N, C, z, y, x).

    .venv/bin/python benchmarks/torch_unet.py [--widths 32 64 128 256] [--patch 32 96 96] [--batch 2] [--mc 10]
        [--device cuda] [--steps 10] [--compile]

times training steps (Adam, BCE on the finest head) and MC-dropout inference (encoder once, the
decoder on the ``--mc``-fold repeated features) and prints one line each.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from t2lesion.unet.hparams import ModelConfig  # noqa: E402  (no Keras import)


def _down_kernel(stride, rule: str):
    return tuple(int(s) for s in stride) if rule == "stride" else tuple(int(s) + 1 if s > 1 else 1 for s in stride)


def _ratio(a, b):
    return tuple(int(x // y) for x, y in zip(a, b))


class SameConv3d(nn.Conv3d):
    """Conv3d with TensorFlow's 'same' padding: total ``max((ceil(n/s) − 1)·s + k − n, 0)`` per
    axis, the smaller half before."""

    def forward(self, x):
        pads = []
        for n, k, s in zip(reversed(x.shape[2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


class MultiArmUNet(nn.Module):
    """``forward(x, mc=False)`` → list of (N, 1, z, y, x) probabilities, finest first.
    ``encode`` / ``decode(skips, mc)`` are the two halves (dropout is on in ``decode`` when
    training or ``mc``; batch norm follows ``self.training``)."""

    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()
        self.cfg = (cfg or ModelConfig()).validate()
        self.layers = nn.ModuleDict()
        self._building = True
        with torch.no_grad():  # create every layer by running the graph once (as Keras builds)
            self.forward(torch.zeros((1, len(self.cfg.channel_order)) + tuple(self.cfg.patch_size)))
        self._building = False
        self.train()

    # -- layers, created on first use with the Keras names
    def _layer(self, name: str, make):
        if name not in self.layers:
            if not self._building:
                raise KeyError(f"layer {name} was not built")
            self.layers[name] = make()
        return self.layers[name]

    def _conv(self, x, width, kernel, name, strides=(1, 1, 1), bias=False):
        conv = self._layer(name, lambda: SameConv3d(x.shape[1], width, tuple(kernel), stride=tuple(strides), bias=bias))
        return conv(x)

    def _bn(self, x, name):
        c = self.cfg
        return self._layer(name, lambda: nn.BatchNorm3d(x.shape[1], eps=c.bn_epsilon, momentum=1.0 - c.bn_momentum))(x)

    def _block(self, x, width, kernels, name):
        shortcut = x
        if x.shape[1] != width:
            shortcut = self._bn(self._conv(x, width, (1, 1, 1), f"{name}_short"), f"{name}_short_bn")
        h = F.relu(self._bn(self._conv(x, width, kernels[0], f"{name}_conv1"), f"{name}_bn1"))
        h = self._bn(self._conv(h, width, kernels[1], f"{name}_conv2"), f"{name}_bn2")
        return F.relu(h + shortcut)

    def _down(self, x, width, src, dst, name):
        h, c = x, self.cfg
        for t in range(src, dst):
            last = t == dst - 1
            w = width if last else x.shape[1]
            h = self._conv(h, w, _down_kernel(c.strides[t], c.down_kernel), f"{name}_s{t + 1}", strides=c.strides[t])
            h = self._bn(h, f"{name}_s{t + 1}_bn")
            if not last:
                h = F.relu(h)
        return h

    def _up(self, x, width, src, dst, name):
        tot = self.cfg.total_strides()
        h = self._bn(self._conv(x, width, (1, 1, 1), f"{name}_conv"), f"{name}_bn")
        return F.interpolate(h, scale_factor=_ratio(tot[src], tot[dst]), mode="trilinear", align_corners=False)

    # -- the graph
    def encode(self, x):
        c, D = self.cfg, self.cfg.depth
        arm_feats = []
        for ai, (_, chans) in enumerate(c.arms):
            widths = c.arm_widths(ai)
            h = x[:, [c.channel_order.index(ch) for ch in chans]]
            feats = []
            for d in range(D):
                tag = f"e{ai + 1}_d{d + 1}"
                if d > 0:
                    srcs = range(d) if c.dense_input else [d - 1]
                    h = F.relu(sum(self._down(feats[a], widths[d], a, d, f"{tag}_down_from{a + 1}") for a in srcs))
                h = self._block(h, widths[d], c.block_kernels[d], f"{tag}_block")
                feats.append(h)
            arm_feats.append(feats)
        proj = []
        for d in range(D):
            parts = [f[d] for f in arm_feats]
            h = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
            proj.append(F.relu(self._bn(self._conv(h, c.widths[d], (1, 1, 1), f"skip_d{d + 1}_proj"),
                                        f"skip_d{d + 1}_proj_bn")))
        skips = []
        for d in range(D):
            terms = []
            for a in (range(D) if c.dense_skip else [d]):
                if a == d:
                    terms.append(proj[a])
                elif a < d:
                    terms.append(self._down(proj[a], c.widths[d], a, d, f"skip_d{d + 1}_from{a + 1}"))
                else:
                    terms.append(self._up(proj[a], c.widths[d], a, d, f"skip_d{d + 1}_from{a + 1}"))
            skips.append(sum(terms))
        return skips

    def decode(self, skips, mc: bool = False):
        c, D = self.cfg, self.cfg.depth
        on = self.training or mc
        g = {D - 1: F.dropout(skips[D - 1], c.dropout_rate, on)}
        for d in range(D - 2, -1, -1):
            srcs = range(d + 1, D) if c.decoder_shortcuts else [d + 1]
            u = sum(self._up(g[b], c.widths[d], b, d, f"dec_d{d + 1}_up_from{b + 1}") for b in srcs)
            h = self._block(torch.cat([u, skips[d]], 1), c.widths[d], c.block_kernels[d], f"dec_d{d + 1}_block")
            g[d] = F.dropout(h, c.dropout_rate, on)
        return [torch.sigmoid(self._conv(g[d], 1, (1, 1, 1), f"prob_d{d + 1}_conv", bias=True))
                for d in range(c.supervision_levels)]

    def forward(self, x, mc: bool = False):
        return self.decode(self.encode(x), mc)

    @torch.no_grad()
    def mc_moments(self, x, n: int):
        """Encoder once, the decoder on the n-fold repeated skips (dropout on, BN frozen):
        [E p, E p², E H(p)] of the finest head over the n passes, (N, 3, z, y, x)."""
        was = self.training
        self.eval()
        try:
            skips = [s.repeat_interleave(n, 0) for s in self.encode(x)]
            p = self.decode(skips, mc=True)[0].reshape(x.shape[0], n, *x.shape[2:]).clamp(1e-7, 1 - 1e-7)
            h = -(p * p.log() + (1 - p) * (-p).log1p())
            return torch.stack([p.mean(1), (p * p).mean(1), h.mean(1)], 1)
        finally:
            self.train(was)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, batch-norm moving statistics) of the torch model."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stats = sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    return trainable, stats


def load_keras_weights(model: MultiArmUNet, keras_model) -> int:
    """Copy a Keras multi-arm model's conv and batch-norm weights in (by layer name); returns the
    number of layers copied. Every torch layer must find its Keras layer."""
    by_name = {}
    for sub in ("encoder", "decoder"):
        for layer in keras_model.get_layer(sub).layers:
            if layer.weights:
                by_name[layer.name] = [np.asarray(w) for w in layer.weights]
    copied = 0
    with torch.no_grad():
        for name, mod in model.layers.items():
            ws = [torch.as_tensor(w) for w in by_name[name]]
            if isinstance(mod, nn.Conv3d):
                mod.weight.copy_(ws[0].permute(4, 3, 0, 1, 2))
                if mod.bias is not None:
                    mod.bias.copy_(ws[1])
            else:  # Keras BN: gamma, beta, moving mean, moving variance
                mod.weight.copy_(ws[0])
                mod.bias.copy_(ws[1])
                mod.running_mean.copy_(ws[2])
                mod.running_var.copy_(ws[3])
            copied += 1
    return copied


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128, 256])
    ap.add_argument("--patch", type=int, nargs=3, default=[32, 96, 96])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--mc", type=int, default=10)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    a = ap.parse_args(argv)
    cfg = ModelConfig.from_dict({"widths": a.widths, "patch_size": a.patch})
    dev = torch.device(a.device)
    model = MultiArmUNet(cfg).to(dev)
    run = torch.compile(model) if a.compile else model
    trainable, stats = count_parameters(model)
    print(f"torch {torch.__version__}, {dev}, widths {a.widths}, patch {a.patch}: {trainable:,} parameters")
    x = torch.randn(a.batch, 3, *a.patch, device=dev)
    y = (torch.rand(a.batch, 1, *a.patch, device=dev) > 0.95).float()
    opt = torch.optim.Adam(model.parameters(), 1e-3)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for k in range(a.steps + 1):
        if k == 1:
            sync()
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy(run(x)[0], y)
        loss.backward()
        opt.step()
    sync()
    print(f"train: {(time.perf_counter() - t0) / a.steps:.3f} s per step of {a.batch} windows (after one warm-up)")
    model.mc_moments(x, a.mc)
    sync()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        model.mc_moments(x, a.mc)
    sync()
    print(f"infer: {(time.perf_counter() - t0) / a.steps:.3f} s per {a.batch} windows x {a.mc} MC passes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
