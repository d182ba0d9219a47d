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
    """``(lo, hi)`` of the non-zero voxels of ``mask`` (hi exclusive); the whole array if empty."""
    idx = np.nonzero(mask)
    if len(idx[0]) == 0:
        return (0, 0, 0), tuple(int(s) for s in mask.shape)
    return tuple(int(i.min()) for i in idx), tuple(int(i.max()) + 1 for i in idx)


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


__all__ = ["axis_starts", "bounding_box", "pad_to", "window_corners"]
