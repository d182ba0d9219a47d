"""Sliding windows over a visit's brain box: one corner generator for training and inference.

Arrays are (z, y, x) = (slices, rows, cols), the model's axis order (docs/DESIGN.md §2). Pure numpy,
no Keras import.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Triple = tuple[int, int, int]


def axis_starts(length: int, window: int, overlap: float) -> list[int]:
    """Window starts along one axis of ``length`` voxels: step ``window * (1 - overlap)``
    (at least 1), the last window flush with the end so that the border is covered.

    A window longer than the axis gives the single start 0 (the caller pads).
    """
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if length <= window:
        return [0]
    step = max(1, int(round(window * (1.0 - overlap))))
    starts = list(range(0, length - window + 1, step))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def window_corners(shape: Sequence[int], window: Sequence[int], overlap: float,
                   lo: Sequence[int] = (0, 0, 0), hi: Sequence[int] | None = None) -> np.ndarray:
    """Corners (n, 3) of windows of size ``window`` covering the box ``[lo, hi)`` of an array of
    ``shape`` at ``overlap``. Every window lies inside the array when ``shape >= window`` on each
    axis (a box near the array's edge is widened inwards); every voxel of the box is covered.
    """
    hi = tuple(shape) if hi is None else tuple(hi)
    per_axis = []
    for ax in range(3):
        n, w = int(shape[ax]), int(window[ax])
        a, b = int(lo[ax]), int(hi[ax])
        if w > n:
            raise ValueError(f"window {tuple(window)} is larger than the array {tuple(shape)} on axis {ax}")
        if b - a < w:  # widen the box to one window, kept inside the array
            a = min(max(0, (a + b - w) // 2), n - w)
            b = a + w
        per_axis.append([a + s for s in axis_starts(b - a, w, overlap)])
    grid = np.meshgrid(*per_axis, indexing="ij")
    return np.stack([g.ravel() for g in grid], axis=1).astype(np.int64)


def bounding_box(mask: np.ndarray) -> tuple[Triple, Triple]:
    """``(lo, hi)`` of the non-zero voxels of ``mask`` (hi exclusive); the whole array if empty.

    From projections, each over the box found so far (no voxel index list is built)."""
    mask = np.asarray(mask)
    lo, hi = [], []
    box = mask
    for ax in range(3):
        proj = np.flatnonzero(box.any(axis=tuple(a for a in range(3) if a != ax)))
        if proj.size == 0:
            return (0, 0, 0), tuple(int(s) for s in mask.shape)
        lo.append(int(proj[0]))
        hi.append(int(proj[-1]) + 1)
        box = box[(slice(None),) * ax + (slice(lo[-1], hi[-1]),)]
    return tuple(lo), tuple(hi)


def pad_to(array: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, Triple]:
    """Zero-pad ``array``'s first three axes symmetrically up to at least ``shape``.
    Returns the padded array and the offset of the original inside it."""
    before, widths = [], []
    for ax in range(3):
        extra = max(0, int(shape[ax]) - array.shape[ax])
        before.append(extra // 2)
        widths.append((extra // 2, extra - extra // 2))
    widths += [(0, 0)] * (array.ndim - 3)
    if not any(sum(w) for w in widths):
        return array, (0, 0, 0)
    return np.pad(array, widths), tuple(before)


def window_batches(n_windows: int, batch_size: int) -> list[tuple[int, int]]:
    """``(start, size)`` of the batches that send ``n_windows`` windows to the model: full
    batches of ``batch_size``, then the remainder split into powers of two, largest first
    (12 windows at 8: 8 + 4; 13: 8 + 4 + 1). No empty window is computed, and a model sees at
    most ``1 + floor(log2(batch_size))`` batch shapes (one compiled graph each), whatever the
    visit; the batches depend on ``n_windows`` and ``batch_size`` only.
    """
    n, b = int(n_windows), int(batch_size)
    if b < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if n < 0:
        raise ValueError(f"n_windows must be >= 0, got {n_windows}")
    out = [(s, b) for s in range(0, n - n % b, b)]
    start, rest = n - n % b, n % b
    while rest:
        size = 1 << (rest.bit_length() - 1)
        out.append((start, size))
        start, rest = start + size, rest - size
    return out


__all__ = ["axis_starts", "bounding_box", "pad_to", "window_batches", "window_corners"]
