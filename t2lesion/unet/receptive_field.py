"""Exact receptive field of the U-Net's supervision heads, per axis, without building it
(docs/DESIGN.md §4; docs/model.md lists the figures): numpy interval arithmetic over the
network's graph, from its :class:`~t2lesion.unet.hparams.ModelConfig` alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from t2lesion.unet.hparams import ModelConfig, Triple


def _down_kernel(stride: Sequence[int], rule: str) -> Triple:
    if rule == "stride":
        return tuple(int(s) for s in stride)
    return tuple(int(s) + 1 if s > 1 else 1 for s in stride)


def _ratio(a: Sequence[int], b: Sequence[int]) -> Triple:
    return tuple(int(x // y) for x, y in zip(a, b))


class _RF1D:
    """Exact receptive-field intervals along one axis: for every position of a feature grid,
    the [lo, hi] range of input voxels it depends on (TF/Keras 'same' padding conventions)."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray):
        self.lo, self.hi = lo, hi

    @classmethod
    def identity(cls, n: int) -> _RF1D:
        i = np.arange(n)
        return cls(i.copy(), i.copy())

    def __len__(self):
        return len(self.lo)

    def gather(self, idx: list[np.ndarray]) -> _RF1D:
        lo = np.array([self.lo[i].min() if len(i) else np.iinfo(np.int64).max for i in idx])
        hi = np.array([self.hi[i].max() if len(i) else np.iinfo(np.int64).min for i in idx])
        return _RF1D(lo, hi)

    def conv(self, k: int, s: int = 1) -> _RF1D:
        n = len(self)
        n_out = -(-n // s)
        pad_before = max((n_out - 1) * s + k - n, 0) // 2
        idx = []
        for i in range(n_out):
            w = np.arange(i * s - pad_before, i * s - pad_before + k)
            idx.append(w[(w >= 0) & (w < n)])
        return self.gather(idx)

    def interp(self, f: int) -> _RF1D:
        if f == 1:
            return self
        n = len(self)
        idx = []
        for o in range(n * f):
            u = min(max((o + 0.5) / f - 0.5, 0.0), n - 1.0)
            i0 = math.floor(u)
            w = u - i0
            i1 = min(i0 + 1, n - 1)
            idx.append(np.array(([i0] if w < 1 else []) + ([i1] if w > 0 else []), dtype=int))
        return self.gather(idx)

    def repeat(self, f: int) -> _RF1D:  # transposed conv with kernel = stride
        return self.gather([np.array([o // f]) for o in range(len(self) * f)])

    def block(self, kernels) -> _RF1D:
        out = self
        for k in kernels:
            out = out.conv(k)
        return out.union(self)

    def union(self, *others) -> _RF1D:
        lo, hi = self.lo.copy(), self.hi.copy()
        for o in others:
            lo, hi = np.minimum(lo, o.lo), np.maximum(hi, o.hi)
        return _RF1D(lo, hi)

    def extents(self, n_in: int) -> np.ndarray:
        """Extent at every position whose receptive field does not reach the input border."""
        ok = (self.lo > 0) & (self.hi < n_in - 1)
        return (self.hi - self.lo + 1)[ok]

    def centre_extent(self) -> int:
        c = len(self) // 2
        return int(self.hi[c] - self.lo[c] + 1)


def _rf_heads_1d(cfg: ModelConfig, kind: str, ax: int, n_in: int) -> list[_RF1D]:
    D = cfg.depth
    J = [t[ax] for t in cfg.total_strides()]
    st = [s[ax] for s in cfg.strides]
    kern = [[k[ax] for k in bk] for bk in cfg.block_kernels]
    dk = [_down_kernel(s, cfg.down_kernel)[ax] for s in cfg.strides]
    x = _RF1D.identity(n_in)
    if kind == "plain":
        enc = []
        for d in range(D):
            h = x if d == 0 else enc[-1].conv(3 if st[d - 1] > 1 else 1, st[d - 1])
            enc.append(h.conv(3).conv(3))
        g = {D - 1: enc[D - 1]}
        for d in range(D - 2, -1, -1):
            g[d] = g[d + 1].repeat(st[d]).union(enc[d]).conv(3).conv(3)
        return [g[d] for d in range(cfg.supervision_levels)]
    if kind != "multiarm":
        raise ValueError(f"unknown model kind {kind!r}")

    def down(r: _RF1D, a: int, d: int) -> _RF1D:
        for t in range(a, d):
            r = r.conv(dk[t], st[t])
        return r

    enc = []
    for d in range(D):
        if d == 0:
            h = x
        else:
            srcs = list(range(d)) if cfg.dense_input else [d - 1]
            parts = [down(enc[a], a, d) for a in srcs]
            h = parts[0].union(*parts[1:])
        enc.append(h.block(kern[d]))
    skip = []
    for d in range(D):
        srcs = list(range(D)) if cfg.dense_skip else [d]
        parts = []
        for a in srcs:
            if a == d:
                parts.append(enc[a])
            elif a < d:
                parts.append(down(enc[a], a, d))
            else:
                parts.append(enc[a].interp(J[a] // J[d]))
        skip.append(parts[0].union(*parts[1:]))
    g = {D - 1: skip[D - 1]}
    for d in range(D - 2, -1, -1):
        srcs = list(range(d + 1, D)) if cfg.decoder_shortcuts else [d + 1]
        ups = [g[b].interp(J[b] // J[d]) for b in srcs]
        g[d] = skip[d].union(*ups).block(kern[d])
    return [g[d] for d in range(cfg.supervision_levels)]


def receptive_field(cfg: ModelConfig | None = None, kind: str = "multiarm", input_size=None) -> dict:
    """Receptive field of each supervision head, per axis (z, y, x), in voxels and mm.

    Computed exactly by propagating, along each axis, the interval of input voxels every feature
    position depends on through the network's graph (convs with Keras 'same' padding, strided
    convs, trilinear interpolation, transposed convs, sums/concatenations = unions). Because
    upsampling maps neighbouring fine positions to the same coarse ones, the extent depends a
    little on the position; ``voxels``/``mm`` give the maximum over positions away from the
    borders (the theoretical receptive field), ``min_voxels`` the minimum, and ``centre_voxels``
    the extent at the centre voxel of an input of ``input_size`` (default: large enough).
    """
    cfg = (cfg or ModelConfig()).validate()
    tot = cfg.total_strides()[-1]
    sizes = tuple(input_size) if input_size is not None else tuple(64 * t for t in tot)
    per_axis = [_rf_heads_1d(cfg, kind, ax, sizes[ax]) for ax in range(3)]
    L = cfg.supervision_levels
    vmax = [[int(per_axis[ax][h].extents(sizes[ax]).max()) for ax in range(3)] for h in range(L)]
    vmin = [[int(per_axis[ax][h].extents(sizes[ax]).min()) for ax in range(3)] for h in range(L)]
    centre = [[per_axis[ax][h].centre_extent() for ax in range(3)] for h in range(L)]
    mm = [[float(v * s) for v, s in zip(row, cfg.spacing_mm)] for row in vmax]
    return {"voxels": vmax, "mm": mm, "min_voxels": vmin, "centre_voxels": centre, "finest_mm": mm[0]}


def output_shapes(cfg: ModelConfig | None = None) -> list[tuple[int, int, int, int]]:
    """(z, y, x, 1) of each supervision head, finest first, for ``cfg.patch_size``."""
    cfg = (cfg or ModelConfig()).validate()
    tot = cfg.total_strides()
    return [tuple(p // s for p, s in zip(cfg.patch_size, tot[d])) + (1,) for d in range(cfg.supervision_levels)]
