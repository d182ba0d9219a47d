"""N4 bias-field correction of one contrast in its native space (paper: ref. 16; docs/DESIGN.md §2).

SimpleITK's N4 is fitted on a shrunken copy of the image inside an Otsu head mask and the
fitted log-bias field is evaluated on the full-resolution grid. The measurements of docs/DESIGN.md §2 found shrink 4
with 4 x 50 iterations to correct as well as antspyx's default at a fraction of the cost.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from t2lesion.io import read_image
from t2lesion.preprocess._common import as_float, set_threads, write_image

log = logging.getLogger(__name__)

N4_SHRINK = 4
N4_ITERATIONS = (50, 50, 50, 50)


def head_mask(img: sitk.Image) -> sitk.Image:
    """Otsu foreground (head) mask, uint8: its largest connected component, holes not filled
    (dark CSF and lesions inside stay out; N4 evaluates its field everywhere, and the users that
    need a closed head dilate it, or fill it: ``register.visit_head``)."""
    mask = sitk.OtsuThreshold(as_float(img), 0, 1, 200)
    # Largest connected component: drops isolated background speckle above the threshold.
    cc = sitk.ConnectedComponent(mask)
    cc = sitk.RelabelComponent(cc, sortByObjectSize=True)
    mask = sitk.Cast(cc == 1, sitk.sitkUInt8)
    return mask


def shrink_factors(shrink, size) -> list[int]:
    """Per-axis shrink factors: an int applies to every axis (docs/DESIGN.md §2's measured setting),
    a 3-tuple (x, y, z) gives them per axis; never below 1 or beyond the image size.

    Measured on a 1 x 1 x 3 mm head: (4, 4, 4) corrects as well as (4, 4, 1) (block CV of the
    residual bias 0.029 vs 0.028) at a third of the CPU time, so the default stays uniform.
    """
    f = [int(shrink)] * 3 if np.isscalar(shrink) else [int(s) for s in shrink]
    if len(f) != 3 or min(f) < 1:
        raise ValueError(f"N4 shrink must be a positive int or 3 positive ints, got {shrink!r}")
    return [max(1, min(fi, int(n) // 8 or 1)) for fi, n in zip(f, size)]


def n4_image(
    img: sitk.Image,
    shrink: int = N4_SHRINK,
    iterations=N4_ITERATIONS,
    mask: sitk.Image | None = None,
    convergence: float = 1e-3,
    fwhm: float = 0.15,
) -> tuple[sitk.Image, sitk.Image]:
    """Bias-correct ``img``; return (corrected float32 image, multiplicative bias field)."""
    img = as_float(img)
    img = sitk.Maximum(img, 0.0)  # N4 works on log intensities; scanners never give < 0 anyway
    if mask is None:
        mask = head_mask(img)
    factors = shrink_factors(shrink, img.GetSize())
    small = sitk.Shrink(img, factors)
    small_mask = sitk.Shrink(mask, factors)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([int(i) for i in iterations])
    n4.SetConvergenceThreshold(float(convergence))
    n4.SetBiasFieldFullWidthAtHalfMaximum(float(fwhm))
    n4.Execute(small, small_mask)
    log_bias = n4.GetLogBiasFieldAsImage(img)
    bias = sitk.Exp(log_bias)
    corrected = sitk.Cast(img / bias, sitk.sitkFloat32)
    corrected.CopyInformation(img)
    return corrected, sitk.Cast(bias, sitk.sitkFloat32)


def n4(
    in_path: str | Path,
    out_path: str | Path,
    threads: int = 1,
    shrink: int = N4_SHRINK,
    iterations=N4_ITERATIONS,
    bias_path: str | Path | None = None,
) -> Path:
    """Path-level N4 of one image (:func:`n4_visit` runs it per contrast): read ``in_path``, write the corrected image to ``out_path``.

    ``bias_path`` optionally receives the estimated multiplicative bias field.
    """
    set_threads(threads)
    # Raw scanner input: also read the voxel data with nibabel, which (unlike ITK) notices a
    # truncated file, and rejects NaN/Inf.
    img = read_image(in_path, check_finite=True)
    log.info("N4 %s (shrink %d, iterations %s, %d threads)", in_path, shrink, list(iterations), threads)
    corrected, bias = n4_image(img, shrink=shrink, iterations=iterations)
    write_image(corrected, out_path)
    if bias_path is not None:
        write_image(bias, bias_path)
    return Path(out_path)


def n4_visit(
    in_paths: dict[str, str | Path],
    out_paths: dict[str, str | Path],
    threads: int = 1,
    shrink: int = N4_SHRINK,
    iterations=N4_ITERATIONS,
) -> dict[str, Path]:
    """N4 of every contrast of a visit in one call (rule ``n4``: one job per visit).

    ``in_paths`` and ``out_paths`` map each contrast (e.g. T1w, T2w, FLAIR) to its raw image
    and to its corrected output; each contrast is corrected on its own, as :func:`n4` does.
    Outputs ending in ``.nii`` are written uncompressed (the workflow's temporary N4 images:
    gzip cost more CPU than the disk space is worth for files deleted within the visit).
    """
    missing = sorted(set(in_paths) ^ set(out_paths))
    if missing:
        raise ValueError(f"in_paths and out_paths must name the same contrasts; unmatched: {missing}")
    return {
        m: n4(in_paths[m], out_paths[m], threads=threads, shrink=shrink, iterations=iterations) for m in in_paths
    }


def residual_bias_cv(ratio: np.ndarray, wm: np.ndarray, block=(7, 20, 20)) -> tuple[float, int]:
    """Residual-bias measure for N4 checks: the coefficient of variation, across large
    white-matter blocks, of the block-mean ``ratio`` (e.g. corrected / clean image).

    Blocks of ``block`` voxels (z, y, x) count when over 30 % of them are in ``wm``;
    averaging within a block removes noise, so what varies between blocks is bias.
    Returns (CV, number of blocks used).
    """
    means = []
    bz, by, bx = block
    for z in range(0, ratio.shape[0] - bz + 1, bz):
        for y in range(0, ratio.shape[1] - by + 1, by):
            for x in range(0, ratio.shape[2] - bx + 1, bx):
                w = wm[z : z + bz, y : y + by, x : x + bx]
                if w.mean() > 0.3:
                    means.append(ratio[z : z + bz, y : y + by, x : x + bx][w].mean())
    means = np.asarray(means)
    return float(means.std() / means.mean()), len(means)
