"""Intensity normalisation within the brain mask (paper, Methods "Model training"; docs/DESIGN.md §2).

The paper: "rescaled to the same intensity range, clipped to remove intensity outliers, and
normalized by z-scoring using the mean and standard deviation of intensities within the 1st
and 99th percentiles". Interpretation (config ``preprocess.clip_percentiles``): clip brain voxels to
their [0.01, 99.99] percentiles, then z-score with the mean/SD of the brain voxels lying
between their 1st and 99th percentiles; voxels outside the brain are set to 0. The upper
clip must lie above the lesions, which fill 0.1-2 % of the brain: at 99.5 every FLAIR lesion
voxel of a synthetic subject with 0.35 % lesion load was clipped to one value and the
classical segmenter found nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from t2lesion.errors import InputError
from t2lesion.io import read_image
from t2lesion.preprocess._common import read_mask, set_threads, write_image

log = logging.getLogger(__name__)

CLIP_PERCENTILES = (0.01, 99.99)  # see config preprocess.clip_percentiles: 99.5 clips lesions
STATS_PERCENTILES = (1.0, 99.0)


def normalise_array(
    arr: np.ndarray,
    mask: np.ndarray,
    clip_percentiles=CLIP_PERCENTILES,
    stats_percentiles=STATS_PERCENTILES,
) -> np.ndarray:
    """Clip then z-score ``arr`` inside ``mask`` (bool); 0 outside. Returns float32."""
    for name, (lo, hi) in (("clip_percentiles", clip_percentiles), ("stats_percentiles", stats_percentiles)):
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"{name} must satisfy 0 <= low < high <= 100, got {(lo, hi)}")
    mask = np.asarray(mask, dtype=bool)
    vals = np.asarray(arr, dtype=np.float64)[mask]
    if vals.size < 10:
        raise ValueError(f"brain mask has only {vals.size} voxels")
    lo, hi = np.percentile(vals, clip_percentiles)
    vals = np.clip(vals, lo, hi)
    p_lo, p_hi = np.percentile(vals, stats_percentiles)
    core = vals[(vals >= p_lo) & (vals <= p_hi)]
    mean, sd = float(core.mean()), float(core.std())
    if not np.isfinite(sd) or sd <= 1e-12 * max(1.0, abs(mean)):
        raise ValueError("image is constant inside the brain mask")
    out = np.zeros(np.shape(arr), dtype=np.float32)
    out[mask] = ((vals - mean) / sd).astype(np.float32)
    return out


def normalise_image(
    img: sitk.Image,
    mask: np.ndarray,
    clip_percentiles=CLIP_PERCENTILES,
    stats_percentiles=STATS_PERCENTILES,
    source: str | Path = "image",
    mask_source: str | Path = "brain mask",
) -> sitk.Image:
    """:func:`normalise_array` of an image inside ``mask`` (a (z, y, x) array on its grid);
    float32 with ``img``'s geometry. A failure is an InputError naming ``source``."""
    try:
        out = normalise_array(sitk.GetArrayViewFromImage(img), mask, clip_percentiles, stats_percentiles)
    except ValueError as exc:
        raise InputError(f"{source}: cannot normalise ({exc}; mask {mask_source})") from None
    res = sitk.GetImageFromArray(out)
    res.CopyInformation(img)
    return res


def normalise(
    in_path: str | Path,
    brain_mask_path: str | Path,
    out_path: str | Path,
    clip_percentiles=CLIP_PERCENTILES,
    stats_percentiles=STATS_PERCENTILES,
    threads: int = 1,
) -> Path:
    """Path-level normalisation of one resampled contrast (the ``resample`` rule normalises
    in memory through :func:`normalise_image`, without this file round trip)."""
    set_threads(threads)
    img = read_image(in_path)
    mask = read_mask(brain_mask_path, like=img, like_path=in_path)
    res = normalise_image(img, sitk.GetArrayViewFromImage(mask), clip_percentiles, stats_percentiles,
                          source=in_path, mask_source=brain_mask_path)
    write_image(res, out_path)
    return Path(out_path)
