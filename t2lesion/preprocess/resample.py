"""Compose the visit's transforms and resample every native image once (docs/DESIGN.md §2).

For contrast ``m`` of a visit, the composed transform maps a target-grid (MNI) point to the
native point of ``m``:

    x_m = (from-m_to-T1w) ∘ (from-T1w_to-baseline) ∘ (from-baselineT1w_to-MNI) (x_MNI)

(identity for the T1w's own term and for the baseline's middle term). Each native image is
interpolated exactly once: images linear (or B-spline); masks interpolated then >= 0.5 (brain mask linear,
GT lesion mask cubic B-spline by default -- see :data:`GT_INTERPOLATION`).
The target grid is MNI-aligned, axial, 1 x 1 x 3 mm, covering the template's field of view.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from t2lesion.errors import InputError
from t2lesion.io import read_image
from t2lesion.preprocess.normalise import CLIP_PERCENTILES, STATS_PERCENTILES, normalise_image
from t2lesion.preprocess._common import (
    TARGET_SPACING,
    as_float,
    matrix_to_transform,
    read_mask,
    read_transform,
    set_threads,
    target_grid,
    transform_to_matrix,
    write_image,
    write_transform,
)

log = logging.getLogger(__name__)

INTERPOLATORS = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline, "nearest": sitk.sitkNearestNeighbor}


def compose(*transforms) -> np.ndarray:
    """Compose fixed->moving transforms listed from the target side inwards.

    ``compose(to_mni, to_baseline, to_t1w)`` returns M with x_m = M(x_MNI), i.e. ``to_mni`` is
    applied first. ``None`` entries are identities.
    """
    m = np.eye(4)
    for tx in transforms:
        if tx is None:
            continue
        a = tx if isinstance(tx, np.ndarray) else transform_to_matrix(tx)
        m = a @ m
    return m


def resample_image(
    img: sitk.Image, grid: sitk.Image, tx: sitk.Transform, interpolation: str = "linear"
) -> sitk.Image:
    """Resample ``img`` onto ``grid`` (float32, 0 outside the field of view)."""
    if interpolation not in INTERPOLATORS:
        raise ValueError(f"unknown interpolation {interpolation!r}; choose one of {sorted(INTERPOLATORS)}")
    return sitk.Resample(as_float(img), grid, tx, INTERPOLATORS[interpolation], 0.0, sitk.sitkFloat32)


#: Interpolation of the GT lesion mask before the 0.5 threshold (proposed config key
#: ``preprocess.gt_interpolation``). Interpretation: the first design (docs/DESIGN.md §2) was linear, but linear + 0.5
#: cuts the edges and corners of small lesions: on the synthetic trial it lost 7-14 % of
#: the total lesion volume (1 x 1 x 3 mm -> rotated 1 x 1 x 3 mm), cubic B-spline + 0.5
#: lost 0-2 % and nearest neighbour +-0.3 % (but jagged). The brain mask stays linear
#: (large object: both keep its volume within 0.03 %).
GT_INTERPOLATION = "bspline"
BRAIN_INTERPOLATION = "linear"


def resample_mask_image(
    mask: sitk.Image, grid: sitk.Image, tx: sitk.Transform, interpolation: str = BRAIN_INTERPOLATION
) -> sitk.Image:
    """Resample a binary mask: interpolate the 0/1 values, then threshold at 0.5 (uint8)."""
    if interpolation not in INTERPOLATORS:
        raise ValueError(f"unknown interpolation {interpolation!r}; choose one of {sorted(INTERPOLATORS)}")
    prob = sitk.Resample(sitk.Cast(mask, sitk.sitkFloat32), grid, tx, INTERPOLATORS[interpolation], 0.0,
                         sitk.sitkFloat32)
    out = sitk.Cast(prob >= 0.5, sitk.sitkUInt8)
    out.CopyInformation(grid)
    return out


MODS = ("T1w", "T2w", "FLAIR")

#: Share of the brain (the resampled brain mask) that each contrast's field of view must cover
#: after registration; a visit below it stops with an error naming the image (a slab FLAIR,
#: a cut-off T2w): its z-scores and lesions would miss the rest of the brain. Between this and
#: :data:`WARN_BRAIN_COVERAGE` the job warns; below 1 the statistics of the normalisation come
#: from the covered brain only, and the uncovered brain is 0 (the brain's mean), as outside it.
MIN_BRAIN_COVERAGE = 0.9
WARN_BRAIN_COVERAGE = 0.99


def field_of_view(img: sitk.Image, grid: sitk.Image, tx: sitk.Transform) -> np.ndarray:
    """Bool (z, y, x) array on ``grid``: the voxels whose point ``tx`` maps into ``img``'s field
    of view (where :func:`resample_image` reads the image rather than its 0 outside)."""
    ones = sitk.Image(img.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(img)
    inside = sitk.Resample(ones, grid, tx, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(inside) > 0


def brain_coverage(img: sitk.Image, grid: sitk.Image, tx: sitk.Transform, brain: np.ndarray,
                   source: str | Path) -> np.ndarray:
    """The brain voxels inside ``img``'s field of view (:func:`field_of_view`); an InputError
    naming ``source`` below :data:`MIN_BRAIN_COVERAGE` of the brain, a warning below
    :data:`WARN_BRAIN_COVERAGE`."""
    covered = field_of_view(img, grid, tx) & brain
    share = covered.sum() / max(int(brain.sum()), 1)
    if share < MIN_BRAIN_COVERAGE:
        raise InputError(
            f"{source}: its field of view covers {share:.1%} of the brain after registration (at least "
            f"{MIN_BRAIN_COVERAGE:.0%} needed): a partial acquisition; leave the visit out (exclude:) or "
            "give an image that covers the brain")
    if share < WARN_BRAIN_COVERAGE:
        log.warning("%s: its field of view covers %.1f%% of the brain after registration; normalised on that "
                    "part, the rest of the brain is 0", source, 100 * share)
    return covered


def _need(d, keys, what):
    missing = [k for k in keys if d is None or d.get(k) is None]
    if missing:
        raise ValueError(f"{what} lacks {missing}")


def resample_visit(
    images: dict[str, str | Path],
    to_t1w: dict[str, str | Path],
    brain_mask: str | Path,
    baseline_to_mni: str | Path,
    out_images: dict[str, str | Path],
    out_mask: str | Path,
    out_xfms: dict[str, str | Path],
    to_baseline: str | Path | None = None,
    gt_mask: str | Path | None = None,
    out_gt_mask: str | Path | None = None,
    gt_space: str = "FLAIR",
    brain_mask_space: str = "T1w",
    threads: int = 1,
    spacing=TARGET_SPACING,
    interpolation: str = "linear",
    gt_interpolation: str = GT_INTERPOLATION,
    template_resolution: int = 1,
    normalise: bool = True,
    clip_percentiles=CLIP_PERCENTILES,
    stats_percentiles=STATS_PERCENTILES,
) -> dict[str, Path]:
    """Resample one visit into the MNI-aligned 1 x 1 x 3 mm grid and normalise its contrasts
    (rule ``resample``).

    ``images``: the visit's N4-corrected native {T1w, T2w, FLAIR}; ``to_t1w``: the
    ``from-{T2w,FLAIR}_to-T1w`` transform files; ``brain_mask``: the native brain mask;
    ``baseline_to_mni``: the *baseline's* ``from-T1w_to-MNI`` file; ``to_baseline``: this
    follow-up's ``from-T1w_to-baseline`` file (None at baseline). ``brain_mask_space`` is
    "T1w" (mask on this visit's T1w grid) or "baseline" (a follow-up reusing the baseline's
    mask, carried through baseline -> MNI only). ``gt_mask`` lies on the ``gt_space``
    contrast's grid (BIDS: the FLAIR's); it can also be done separately by
    :func:`resample_mask` from the composed transform file.

    Writes the contrasts (float32), the brain mask (and GT mask; uint8) and one composed
    transform per contrast to ``out_xfms`` (``from-<mod>_to-MNI1x1x3``: maps target-grid
    points to that contrast's native points). Returns the written paths by name.
    With ``normalise`` (the default, docs/DESIGN.md §2's last step) each resampled contrast is clipped
    and z-scored inside the resampled brain mask in memory
    (:func:`t2lesion.preprocess.normalise.normalise_image`, ``clip_percentiles``,
    ``stats_percentiles``) before it is written: ``out_images`` are then the ``desc-preproc``
    images; without it they are the plain resampled ones.
    """
    _need(images, MODS, "images")
    _need(to_t1w, ("T2w", "FLAIR"), "to_t1w")
    _need(out_images, MODS, "out_images")
    _need(out_xfms, MODS, "out_xfms")
    set_threads(threads)
    imgs = {m: read_image(images[m]) for m in MODS}
    to_mni = read_transform(baseline_to_mni)
    to_bl = read_transform(to_baseline) if to_baseline is not None else None
    to_t1 = {"T1w": None, "T2w": read_transform(to_t1w["T2w"]), "FLAIR": read_transform(to_t1w["FLAIR"])}
    grid = target_grid(spacing, template_resolution)
    if brain_mask_space == "T1w":
        brain = read_mask(brain_mask, like=imgs["T1w"], like_path=images["T1w"])
    elif brain_mask_space == "baseline":
        brain = read_mask(brain_mask)
    else:
        raise ValueError(f"brain_mask_space must be 'T1w' or 'baseline', got {brain_mask_space!r}")
    gt = None
    if gt_mask is not None:
        if out_gt_mask is None:
            raise ValueError("out_gt_mask is required when gt_mask is given")
        if gt_space not in MODS:
            raise ValueError(f"gt_space must be one of {MODS}, got {gt_space!r}")
        gt = read_mask(gt_mask, like=imgs[gt_space], like_path=images[gt_space], allow_empty=True, check_data=True)

    composed = {m: matrix_to_transform(compose(to_mni, to_bl, to_t1[m])) for m in MODS}
    written: dict[str, Path] = {}
    brain_out = resample_mask_image(brain, grid, composed["T1w"] if brain_mask_space == "T1w" else to_mni)
    brain_arr = sitk.GetArrayViewFromImage(brain_out) > 0
    if not brain_arr.any():
        raise InputError(f"{brain_mask}: brain mask falls outside the target grid after registration")
    covered = {m: brain_coverage(imgs[m], grid, composed[m], brain_arr, images[m]) for m in MODS}
    for m in MODS:
        log.info("resampling %s -> %s%s", images[m], out_images[m], " (normalised)" if normalise else "")
        out = resample_image(imgs[m], grid, composed[m], interpolation)
        if normalise:
            out = normalise_image(out, covered[m], clip_percentiles, stats_percentiles,
                                  source=images[m], mask_source=brain_mask)
        write_image(out, out_images[m])
        write_transform(composed[m], out_xfms[m])
        written[m] = Path(out_images[m])
        written[f"xfm_{m}"] = Path(out_xfms[m])
    write_image(brain_out, out_mask)
    written["brain_mask"] = Path(out_mask)
    if gt is not None:
        write_image(resample_mask_image(gt, grid, composed[gt_space], gt_interpolation), out_gt_mask)
        written["gt_mask"] = Path(out_gt_mask)
    return written


def resample_mask(
    mask_path: str | Path,
    xfm_path: str | Path,
    reference_path: str | Path,
    out_path: str | Path,
    threads: int = 1,
    interpolation: str = GT_INTERPOLATION,
) -> Path:
    """Carry a native binary mask (e.g. the GT lesion mask, on its FLAIR's grid) into the
    grid of ``reference_path`` through the composed transform ``xfm_path`` (e.g.
    ``from-FLAIR_to-MNI1x1x3``): ``interpolation`` (see :data:`GT_INTERPOLATION`), then
    >= 0.5 (what :func:`resample_visit` does to a visit's GT mask, for a mask on its own).

    The mask must share the geometry of the image the transform was estimated for; the
    ``validate_bids`` rule checks that a GT mask matches its FLAIR.
    """
    set_threads(threads)
    mask = read_mask(mask_path, allow_empty=True, check_data=True)
    tx = read_transform(xfm_path)
    ref = read_image(reference_path)
    write_image(resample_mask_image(mask, ref, tx, interpolation), out_path)
    return Path(out_path)
