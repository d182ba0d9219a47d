"""Rigid registrations of the preprocessing stage (paper: refs. 16-17; docs/DESIGN.md §2).

* intra-visit: T2w and FLAIR -> the visit's T1w (Mattes mutual information, head masks);
* baseline T1w -> MNI152 2009 template, rigid 6 dof, *brain to brain* (the shipped template
  is skull-stripped; docs/DESIGN.md §2: affine/SyN of a whole head to it collapsed the brain);
* follow-up T1w -> baseline T1w, rigid, brain to brain.

Transform convention (ITK/ANTs, as fMRIPrep's ``from-A_to-B`` files): every transform file
maps points of the *fixed* (target) space to the *moving* (source) space, i.e. it is the
transform used to resample the moving image onto the fixed grid. So ``from-T2w_to-T1w`` maps
T1w-space points to T2w-space points; ``from-T1w_to-MNI`` maps MNI points to native T1w points.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from t2lesion.errors import InputError
from t2lesion.io import read_image
from t2lesion.preprocess._common import (
    as_float,
    mni_brain_mask,
    mni_template,
    read_mask,
    set_threads,
    write_transform,
)
from t2lesion.preprocess.n4 import head_mask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RigidSettings:
    """Rigid-registration settings (library defaults; not yet config keys).

    ``shrink``/``smooth_mm``: multi-resolution pyramid (one entry per level, smoothing sigma
    in mm); ``sampling``: fraction of (masked) fixed voxels sampled by the metric per
    level; ``iterations``: per level; ``metric``: "mattes" (mutual information) or
    "correlation" (same contrast only).
    """

    shrink: tuple[int, ...] = (4, 2, 1)
    smooth_mm: tuple[float, ...] = (3.0, 1.5, 0.0)
    sampling: float = 0.05
    iterations: int = 100
    bins: int = 32
    metric: str = "mattes"
    learning_rate: float = 2.0
    min_step: float = 1e-3
    seed: int = 1
    #: Coarse exhaustive search over rotations (+-search_deg about each axis in search_step_deg
    #: steps) before the gradient descent, so that large pose differences cannot trap it in a
    #: local optimum. 0 disables it.
    search_deg: float = 30.0
    search_step_deg: float = 15.0
    #: ITK's default: the metric takes image gradients from a Gaussian-derivative image of the
    #: whole moving (and fixed) image computed at every pyramid level; off, it differences the
    #: image at the sampled points only. Off was as accurate on the synthetic trial (all three
    #: registrations; BENCHMARKS.md, "Rigid registration without gradient images") at a
    #: fraction of the CPU time: the full-resolution gradient images dominated it.
    gradient_filter: bool = False


DEFAULT_RIGID = RigidSettings()
#: Intra-visit: contrasts share the scanner frame and differ by little motion, so no
#: rotation search, and the 1 mm level is skipped (on the synthetic trial it changed the
#: result by < 0.05 mm at 2.4 x the CPU time).
COREG_RIGID = RigidSettings(shrink=(4, 2), smooth_mm=(3.0, 1.0), search_deg=0.0)


#: Baseline -> MNI: the template's 1 mm level is skipped. A rigid fit of a head to a template
#: is limited by their anatomical difference (1.2-2.3 mm mean error against the synthetic
#: subject frame, 4 demo baselines), which the 1 mm level did not lower (mean 1.86 mm with it,
#: 1.84 without; the fits differ by 0.2-0.3 mm) at 1.7 x the CPU time (4.8 vs 7.8-9.7 s).
#: The follow-up -> baseline registration, where sub-millimetre precision matters, keeps it.
MNI_RIGID = RigidSettings(shrink=(4, 2), smooth_mm=(3.0, 1.5))


#: Voxel size (mm) of the coarse isotropic copies on which the rotation search runs.
SEARCH_SPACING_MM = 4.0


def _isotropic(img: sitk.Image, mm: float) -> sitk.Image:
    """Gaussian-smoothed copy of ``img`` resampled to ``mm`` isotropic voxels (same frame)."""
    size = np.array(img.GetSize()) * np.array(img.GetSpacing()) / mm
    smooth = sitk.SmoothingRecursiveGaussian(img, mm / 2.0)
    ref = sitk.Image([max(1, int(np.ceil(s))) for s in size], sitk.sitkFloat32)
    ref.SetSpacing((mm, mm, mm))
    ref.SetDirection(img.GetDirection())
    # keep the first voxel's outer corner where the original's is
    d = np.array(img.GetDirection()).reshape(3, 3)
    corner = np.array(img.GetOrigin()) - d @ (0.5 * np.array(img.GetSpacing()))
    ref.SetOrigin(tuple(corner + d @ np.full(3, 0.5 * mm)))
    return sitk.Resample(smooth, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def _masked(img: sitk.Image, mask: sitk.Image) -> sitk.Image:
    return sitk.Mask(as_float(img), sitk.Cast(mask, sitk.sitkUInt8), 0.0)


def rigid_register(
    fixed: sitk.Image,
    moving: sitk.Image,
    fixed_mask: sitk.Image | None = None,
    init: str = "moments",
    settings: RigidSettings = DEFAULT_RIGID,
    source=None,
) -> sitk.Euler3DTransform:
    """Rigidly register ``moving`` to ``fixed``; the result maps fixed points to moving points.

    ``init``: "moments" (centres of mass, for different poses), "identity" (images already in
    the same scanner frame, e.g. contrasts of one visit). Images that do not overlap (a
    header's origin or orientation far off) are an :class:`InputError` naming ``source``.
    """
    try:
        return _rigid_register(fixed, moving, fixed_mask, init, settings)
    except RuntimeError as e:
        if "overlap" not in str(e):
            raise
        raise InputError(
            f"{source or 'moving image'}: rigid registration failed: the image does not overlap its target "
            "(too few of the metric's samples fall inside it); check its header's origin and orientation"
        ) from None


def _rigid_register(fixed, moving, fixed_mask, init, settings) -> sitk.Euler3DTransform:
    fixed = as_float(fixed)
    moving = as_float(moving)
    if init == "moments":
        tx = sitk.CenteredTransformInitializer(
            fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
        )
        tx = sitk.Euler3DTransform(tx)
    elif init == "identity":
        tx = sitk.Euler3DTransform()
        size = np.array(fixed.GetSize())
        tx.SetCenter(fixed.TransformContinuousIndexToPhysicalPoint(tuple((size - 1) / 2.0)))
    else:
        raise ValueError(f"unknown registration init {init!r}")
    if settings.search_deg > 0 and settings.search_step_deg > 0:
        n = int(settings.search_deg // settings.search_step_deg)
        # On isotropic coarse copies: shrinking a 1 x 1 x 3 mm image by 4 gives 12 mm slices,
        # too coarse in z for the metric to rank rotations.
        mm = SEARCH_SPACING_MM
        f_s = _isotropic(fixed, mm)
        m_s = _isotropic(moving, mm)
        f_mask = None if fixed_mask is None else sitk.Resample(fixed_mask, f_s, sitk.Transform(),
                                                              sitk.sitkNearestNeighbor, 0)
        reg = _method(settings, f_mask)
        reg.SetOptimizerAsExhaustive([n, n, n, 0, 0, 0], stepLength=np.deg2rad(settings.search_step_deg))
        reg.SetOptimizerScales([1.0] * 6)
        reg.SetInitialTransform(tx, inPlace=True)
        reg.Execute(f_s, m_s)
        log.info("rotation search: best angles %s deg", np.round(np.rad2deg(tx.GetParameters()[:3]), 1).tolist())

    reg = _method(settings, fixed_mask)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=float(settings.learning_rate),
        minStep=float(settings.min_step),
        numberOfIterations=int(settings.iterations),
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-8,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([int(s) for s in settings.shrink])
    reg.SetSmoothingSigmasPerLevel([float(s) for s in settings.smooth_mm])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(tx, inPlace=True)
    reg.Execute(fixed, moving)
    log.info(
        "rigid registration: metric %.4f after %d iterations (%s)",
        reg.GetMetricValue(),
        reg.GetOptimizerIteration(),
        reg.GetOptimizerStopConditionDescription(),
    )
    return tx


def _method(settings: RigidSettings, fixed_mask: sitk.Image | None) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    if settings.metric == "mattes":
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(settings.bins))
    elif settings.metric == "correlation":
        reg.SetMetricAsCorrelation()
    else:
        raise ValueError(f"unknown registration metric {settings.metric!r}")
    if not settings.gradient_filter:
        reg.MetricUseFixedImageGradientFilterOff()
        reg.MetricUseMovingImageGradientFilterOff()
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(float(settings.sampling), int(settings.seed))
    if fixed_mask is not None:
        reg.SetMetricFixedMask(sitk.Cast(fixed_mask, sitk.sitkUInt8))
    reg.SetInterpolator(sitk.sitkLinear)
    return reg


#: Sanity check of a registration: share of the subject's mapped brain inside the MNI brain
#: mask (size-robust: a small brain well aligned still lies inside), Dice between the
#: follow-up's mapped brain and the baseline's (same subject; follow-ups with a brain mask of
#: their own), and, for a follow-up that reuses the baseline's brain mask (the default), the
#: share of the baseline's brain that lands inside the follow-up's head (:func:`visit_head`).
#: Below these it failed. On the demo trial a good follow-up gives 0.997 there; a fit 10 mm or
#: 20 degrees off gives 0.91-0.94, one 20 mm off or turned round 0.6-0.86. The scalp around the
#: brain hides smaller misfits: this catches failed fits, not imprecise ones.
#: Intra-visit (``coregister``): the share of the T2w's or FLAIR's whole head
#: (:func:`whole_head`), mapped onto the T1w, that lies inside the T1w's whole head dilated by
#: 3 mm. On the tiny synthetic subjects a good fit gives 1.000; 5 mm off 0.99, 10 mm off 0.96,
#: 20 mm off 0.89-0.91, 40 mm off 0.74, 20 degrees about the image centre 0.97-0.99. A slab
#: (partial field of view) lies inside the T1w's head when aligned, so it passes.
MIN_BRAIN_OVERLAP = {"mni": 0.85, "baseline": 0.85, "baseline_head": 0.9, "coregister": 0.85}
#: Between MIN_BRAIN_OVERLAP and these the job warns (a fit some mm off).
WARN_OVERLAP = {"baseline_head": 0.97, "coregister": 0.97}
_WHAT = {"mni": "share of the brain inside the MNI brain mask", "baseline": "brain Dice with the baseline",
         "baseline_head": "share of the baseline's brain inside this visit's head",
         "coregister": "share of its head inside the T1w's head"}
_TARGET = {"mni": "mni", "baseline": "baseline", "baseline_head": "baseline", "coregister": "the visit's T1w"}
_WARNING = {
    "baseline_head": "after registration to the baseline only {pct:.1f}% of the baseline's brain lies inside this "
                     "visit's head: check the QC picture",
    "coregister": "after registration to the visit's T1w only {pct:.1f}% of this image's head lies inside the T1w's "
                  "head (motion between the sequences or a failed fit): check the QC picture",
}


def brain_overlap(target_mask: sitk.Image, moving_mask: sitk.Image, tx: sitk.Transform) -> tuple[float, float]:
    """(Dice, share of the mapped ``moving_mask`` inside ``target_mask``), mapping through ``tx``."""
    mapped = sitk.Resample(sitk.Cast(moving_mask, sitk.sitkUInt8), target_mask, tx, sitk.sitkNearestNeighbor, 0)
    a = sitk.GetArrayViewFromImage(target_mask) > 0
    b = sitk.GetArrayViewFromImage(mapped) > 0
    both = np.count_nonzero(a & b)
    nb = np.count_nonzero(b)
    return float(2.0 * both / max(1, np.count_nonzero(a) + nb)), float(both / max(1, nb))


def _check_overlap(value: float, kind: str, source) -> None:
    what, target = _WHAT[kind], _TARGET[kind]
    log.info("after registration to %s: %s %.3f", target, what, value)
    if value < MIN_BRAIN_OVERLAP[kind]:
        check = "its header's orientation" if kind == "coregister" else "the image's orientation and its brain mask"
        raise InputError(
            f"{source}: rigid registration to {target} failed ({what} {value:.2f} < "
            f"{MIN_BRAIN_OVERLAP[kind]}); check {check}"
        )
    if kind in WARN_OVERLAP and value < WARN_OVERLAP[kind]:
        log.warning("%s: %s", source, _WARNING[kind].format(pct=100 * value))


def visit_head(t1w: sitk.Image) -> sitk.Image:
    """The head of a T1w: its Otsu foreground, dilated by 3 mm and with enclosed holes (dark
    ventricles and CSF) filled; uint8 on the T1w's grid."""
    return sitk.BinaryFillhole(_dilate(head_mask(t1w), 3.0))


def whole_head(img: sitk.Image, close_mm: float = 3.0) -> sitk.Image:
    """The whole head (scalp, skull and brain) of any contrast, uint8 on its grid.

    Voxels above half the image's Otsu threshold, closed by ``close_mm`` (0: not closed),
    holes filled in each slice across the superior-inferior axis (the head is open at the
    neck, so a 3-D fill would leave the skull out), largest connected component.
    :func:`head_mask` is no such mask: its largest Otsu component is the brain in a T1w or
    FLAIR, whose dark skull parts it from the scalp, but brain and scalp joined by bright CSF
    in a T2w. This one agrees across the three contrasts (Dice 0.998 on the synthetic
    subjects, closed or not).
    """
    from scipy import ndimage  # here, not at import: start-up time of every imaging job

    img = as_float(img)
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetNumberOfHistogramBins(200)
    otsu.Execute(img)
    mask = sitk.Cast(img > 0.5 * otsu.GetThreshold(), sitk.sitkUInt8)
    if close_mm > 0:
        mask = sitk.BinaryMorphologicalClosing(mask, [max(1, round(close_mm / s)) for s in img.GetSpacing()])
    arr = sitk.GetArrayFromImage(mask).astype(bool)  # (z, y, x): voxel axis 2 - k
    # the voxel axis closest to the physical superior-inferior one: fill across it
    axis = 2 - int(np.argmax(np.abs(np.array(img.GetDirection()).reshape(3, 3)[2])))
    plane = np.zeros((3, 3, 3), bool)
    plane[tuple(1 if a == axis else slice(None) for a in range(3))] = ndimage.generate_binary_structure(2, 1)
    filled = sitk.GetImageFromArray(ndimage.binary_fill_holes(arr, structure=plane).astype(np.uint8))
    filled.CopyInformation(img)
    return sitk.Cast(sitk.RelabelComponent(sitk.ConnectedComponent(filled), sortByObjectSize=True) == 1,
                     sitk.sitkUInt8)


def _dilate(mask: sitk.Image, mm: float) -> sitk.Image:
    radius = [max(1, round(mm / s)) for s in mask.GetSpacing()]
    return sitk.BinaryDilate(sitk.Cast(mask, sitk.sitkUInt8), radius)


# --------------------------------------------------------------------------- path level

def coregister_to_t1w(
    moving_path: str | Path,
    t1w_path: str | Path,
    out_xfm: str | Path,
    threads: int = 1,
    settings: RigidSettings = COREG_RIGID,
) -> Path:
    """Rigid MI registration of a visit's (N4-corrected) T2w or FLAIR to its T1w.

    Writes ``out_xfm`` (``from-<mod>_to-T1w``: maps T1w points to ``moving`` points). The
    contrasts may have different grids; they share the scanner frame, so the start is the
    identity (a centre-of-mass start would be pulled by different fields of view).
    """
    return coregister_visit({"moving": moving_path}, t1w_path, {"moving": out_xfm}, threads, settings)["moving"]


def coregister_visit(
    moving: dict[str, str | Path],
    t1w_path: str | Path,
    out_xfms: dict[str, str | Path],
    threads: int = 1,
    settings: RigidSettings = COREG_RIGID,
    sources: dict[str, str | Path] | None = None,
) -> dict[str, Path]:
    """:func:`coregister_to_t1w` of several contrasts of one visit (rule ``n4_coregister``: one
    job per visit): the T1w and its dilated head mask are read and computed once.

    ``moving`` maps each contrast (T2w, FLAIR) to its N4-corrected image, ``out_xfms`` to its
    ``from-<mod>_to-T1w`` transform file. Each fit is checked: the share of the contrast's
    whole head that lands inside the T1w's (``MIN_BRAIN_OVERLAP["coregister"]``: below it
    the job fails naming ``sources[m]``, the raw image, or ``moving[m]``; a little above it,
    it warns).
    """
    unmatched = sorted(set(moving) ^ set(out_xfms))
    if unmatched:
        raise ValueError(f"moving and out_xfms must name the same contrasts; unmatched: {unmatched}")
    set_threads(threads)
    images = {m: read_image(p) for m, p in moving.items()}  # every input checked before any work
    fixed = read_image(t1w_path)
    mask = _dilate(head_mask(fixed), 5.0)
    # The T1w's head closed (a gap in its scalp would leave a slice unfilled); the other
    # contrasts' not (closing costs 0.4 of their 0.6 CPU-s each on a 1 x 1 x 3 mm head): a slice
    # left as a ring still lies inside the T1w's head.
    t1w_head = _dilate(whole_head(fixed), 3.0)
    fits = {}
    for m, img in images.items():
        log.info("coregistering %s -> %s", moving[m], t1w_path)
        source = (sources or moving)[m]
        fits[m] = rigid_register(fixed, img, fixed_mask=mask, init="identity", settings=settings, source=source)
        _check_overlap(brain_overlap(t1w_head, whole_head(img, close_mm=0), fits[m])[1], "coregister", source)
    for m, tx in fits.items():  # written once every fit passed: a failed visit leaves none behind
        write_transform(tx, out_xfms[m])
    return {m: Path(out_xfms[m]) for m in fits}


def register_to_mni(
    t1w_path: str | Path,
    brain_mask_path: str | Path,
    out_xfm: str | Path,
    threads: int = 1,
    template_resolution: int = 1,
    settings: RigidSettings = MNI_RIGID,
) -> Path:
    """Baseline T1w -> MNI152 2009 template, rigid, brain to brain (docs/DESIGN.md §2).

    Writes ``out_xfm`` (``from-T1w_to-MNI``: maps MNI points to native T1w points).
    """
    set_threads(threads)
    t1w = read_image(t1w_path)
    mask = read_mask(brain_mask_path, like=t1w, like_path=t1w_path)
    tpl = mni_template(template_resolution)
    tpl_mask = _dilate(mni_brain_mask(template_resolution), 4.0)
    tx = rigid_register(tpl, _masked(t1w, mask), fixed_mask=tpl_mask, init="moments", settings=settings,
                        source=t1w_path)
    _check_overlap(brain_overlap(mni_brain_mask(template_resolution), mask, tx)[1], "mni", t1w_path)
    write_transform(tx, out_xfm)
    return Path(out_xfm)


def register_to_baseline(
    t1w_path: str | Path,
    brain_mask_path: str | Path | None,
    baseline_t1w_path: str | Path,
    baseline_brain_mask_path: str | Path,
    out_xfm: str | Path,
    threads: int = 1,
    settings: RigidSettings = DEFAULT_RIGID,
) -> Path:
    """Follow-up T1w -> baseline T1w, rigid, brain to brain (docs/DESIGN.md §2).

    Writes ``out_xfm`` (``from-T1w_to-baseline``: maps baseline-native points to this
    visit's native T1w points). With ``brain_mask_path=None`` (follow-ups reuse the
    baseline's brain mask, no skull stripping of their own) the follow-up's whole head is
    matched to the baseline head, the metric sampling only the baseline's brain.
    """
    set_threads(threads)
    t1w = read_image(t1w_path)
    bl = read_image(baseline_t1w_path)
    bl_mask = read_mask(baseline_brain_mask_path, like=bl, like_path=baseline_t1w_path)
    if brain_mask_path is not None:
        mask = read_mask(brain_mask_path, like=t1w, like_path=t1w_path)
        fixed, moving = _masked(bl, bl_mask), _masked(t1w, mask)
    else:
        fixed, moving = as_float(bl), as_float(t1w)
    tx = rigid_register(fixed, moving, fixed_mask=_dilate(bl_mask, 4.0), init="moments", settings=settings,
                        source=t1w_path)
    if brain_mask_path is not None:
        _check_overlap(brain_overlap(bl_mask, mask, tx)[0], "baseline", t1w_path)
    else:  # no brain mask of its own: the baseline's brain, carried here, must lie in its head
        _check_overlap(brain_overlap(visit_head(t1w), bl_mask, tx.GetInverse())[1], "baseline_head", t1w_path)
    write_transform(tx, out_xfm)
    return Path(out_xfm)
