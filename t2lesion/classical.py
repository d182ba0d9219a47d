"""Classical T2-lesion segmenter (mask source ``classical``): FLAIR hyperintensity, a comparison row.

Not from the paper: a transparent comparison row for Table 2 that lets the
metrics and endpoint stages run end to end before U-Net predictions exist.
A voxel is lesion when, inside the brain mask,

* its FLAIR is hyperintense: robust z = (x − median) / (1.4826 · MAD) of the
  normalised FLAIR over the brain > ``z_threshold`` (default 3.0), and
* it is not hyperintense on T1w: robust z of T1w ≤ ``t1_max_z`` (default 0.5;
  MS T2 lesions are T1-iso/hypointense, while fat, vessels and blood products
  that are bright on FLAIR are also bright on T1w);

then connected components (``connectivity``, default 18) of fewer than
``min_size`` voxels (default 3) are removed, as in the lesion metrics (docs/DESIGN.md §8).
Inputs are the normalised contrasts of docs/DESIGN.md §2 in MNI 1 × 1 × 3 mm space.
Config: ``classical.z_threshold``, ``classical.t1_max_z``, ``classical.min_size``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import cc3d
import numpy as np

from t2lesion import io
from t2lesion.errors import InputError

log = logging.getLogger(__name__)

MAD_TO_SD = 1.4826  # MAD of a normal distribution × 1.4826 = its SD

#: Defaults of :func:`segment` (config section ``classical``).
SEGMENT_DEFAULTS = {"z_threshold": 3.0, "t1_max_z": 0.5, "min_size": 3, "connectivity": 18}


def robust_z(image, mask) -> np.ndarray:
    """(image − median) / (1.4826 · MAD), median and MAD over the voxels of ``mask``.

    Raises ValueError when the mask is empty or the image is constant inside it.
    """
    image = np.asarray(image, dtype=np.float32)
    vals = image[np.asarray(mask, dtype=bool)]
    if vals.size == 0:
        raise ValueError("brain mask is empty")
    med = float(np.median(vals))
    mad = float(np.median(np.abs(vals - med)))
    if not mad > 0:
        raise ValueError("image has no spread inside the brain mask (MAD = 0)")
    return (image - med) / np.float32(MAD_TO_SD * mad)


def _check(z_threshold, t1_max_z, min_size, connectivity) -> None:
    problems = []
    for name, v in (("z_threshold", z_threshold), ("t1_max_z", t1_max_z)):
        if not isinstance(v, (int, float, np.floating)) or not math.isfinite(v):
            problems.append(f"{name} must be a finite number, got {v!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 1:
        problems.append(f"min_size must be an integer ≥ 1, got {min_size!r}")
    if connectivity not in (6, 18, 26):
        problems.append(f"connectivity must be 6, 18 or 26, got {connectivity!r}")
    if problems:
        raise InputError(problems, header="classical segmenter parameters:")


def segment(flair, t1w, brain_mask, z_threshold: float = SEGMENT_DEFAULTS["z_threshold"],
            t1_max_z: float = SEGMENT_DEFAULTS["t1_max_z"], min_size: int = SEGMENT_DEFAULTS["min_size"],
            connectivity: int = SEGMENT_DEFAULTS["connectivity"]) -> np.ndarray:
    """Boolean lesion mask from normalised FLAIR and T1w (z, y, x) arrays and a brain mask.

    See the module docstring for the rule. All three arrays must share one shape.
    """
    _check(z_threshold, t1_max_z, min_size, connectivity)
    flair, t1w = np.asarray(flair), np.asarray(t1w)
    brain = np.asarray(brain_mask) != 0
    if not flair.shape == t1w.shape == brain.shape or flair.ndim != 3:
        raise ValueError(f"expected three 3-D arrays of one shape, got {flair.shape}, {t1w.shape}, {brain.shape}")
    return _threshold(robust_z(flair, brain), robust_z(t1w, brain), brain, z_threshold, t1_max_z,
                      min_size, connectivity)


def _threshold(z_flair, z_t1w, brain, z_threshold, t1_max_z, min_size, connectivity) -> np.ndarray:
    cand = brain & (z_flair > z_threshold) & (z_t1w <= t1_max_z)
    return cc3d.dust(cand, threshold=min_size, connectivity=connectivity) != 0


def run_segment(flair_path, t1w_path, brain_mask_path, out_mask_path, **params) -> dict:
    """Segment one visit from files and write the mask (uint8, FLAIR geometry).

    T1w and brain mask must share the FLAIR's geometry, else :class:`InputError`
    naming both files; an empty brain mask or a contrast with no spread inside it
    also fails naming the file. ``params`` are those of :func:`segment`. The mask is
    written under a temporary name and renamed, so no partial file is left. Returns
    ``{"lesion_voxels", "lesion_ml"}``.
    """
    unknown = set(params) - set(SEGMENT_DEFAULTS)
    if unknown:
        raise InputError(f"classical segmenter: unknown parameters {sorted(unknown)}; "
                         f"known: {sorted(SEGMENT_DEFAULTS)}")
    params = {**SEGMENT_DEFAULTS, **params}
    _check(**params)
    flair, fimg = io.read_array(flair_path)
    t1w, timg = io.read_array(t1w_path)
    brain, bimg = io.read_array(brain_mask_path)
    problems = [f"{p}: geometry differs from FLAIR {flair_path}"
                for p, img in ((t1w_path, timg), (brain_mask_path, bimg)) if not io.same_geometry(fimg, img)]
    if problems:
        raise InputError(problems)
    brain = brain > 0.5
    if not brain.any():
        raise InputError(f"{brain_mask_path}: brain mask is empty")
    z = []
    for path, arr in ((flair_path, flair), (t1w_path, t1w)):
        try:
            z.append(robust_z(arr, brain))
        except ValueError as exc:
            raise InputError(f"{path}: {exc}") from None
    mask = _threshold(z[0], z[1], brain, **params)
    out = Path(out_mask_path)
    io.write_array(mask.astype(np.uint8), fimg, out)
    n = int(mask.sum())
    result = {"lesion_voxels": n, "lesion_ml": n * io.voxel_volume_ml(fimg)}
    log.info("%s: %d lesion voxels (%.2f mL)", out, n, result["lesion_ml"])
    return result
