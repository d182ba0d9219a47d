"""Preprocessing per visit (docs/DESIGN.md §2; paper, Methods "Datasets": refs. 16-18).

Paper order: N4 bias-field correction -> rigid registration of the baseline to an MNI
template -> rigid registration of follow-ups to baseline -> skull stripping. Here, one
Snakemake rule per step, one job per visit and step, calls one path-level function:

=====================  ================================  =====================================
rule                   function                          output (per visit)
=====================  ================================  =====================================
n4                     :func:`n4_visit` (:func:`n4`      ``desc-n4_<mod>.nii`` (native, temp,
                       per contrast)                     uncompressed)
coregister             :func:`coregister_visit`          ``from-<T2w|FLAIR>_to-T1w_xfm.tfm``
skull_strip            :func:`skull_strip`               ``space-T1w_desc-brain_mask`` (native)
register_mni           :func:`register_to_mni`           ``from-T1w_to-MNI_xfm.tfm`` (baseline)
register_baseline      :func:`register_to_baseline`      ``from-T1w_to-baseline_xfm.tfm``
resample,              :func:`resample_visit` (then      ``space-MNI1x1x3_desc-preproc_<mod>``,
resample_with_gt       :func:`normalise_image`), then    brain mask, ``from-<mod>_to-MNI1x1x3``,
                       :func:`t2lesion.plots.qc.qc_png`  ``space-MNI1x1x3_qc.png``; the second
                                                         also ``desc-lesionGT_mask``
=====================  ================================  =====================================

Skull stripping runs on the N4-corrected native T1w *before* the registrations so that
they can be brain to brain (the shipped MNI template is skull-stripped; docs/DESIGN.md §2). Every
native image is interpolated once, through the composed rigid transforms, into the
MNI-aligned 1 x 1 x 3 mm axial grid. Every function takes ``threads`` and passes it to ITK
(to torch for deepbet, and to the ROBEX subprocess), so Snakemake's ``threads:`` is what the
job uses.
:func:`preprocess_visit` chains the steps for tests and benchmarks.
"""

from t2lesion.preprocess._common import (
    SPACE_LABEL,
    TARGET_SPACING,
    cpu_seconds,
    set_threads,
    target_grid,
)
from t2lesion.preprocess.n4 import N4_ITERATIONS, N4_SHRINK, n4, n4_image, n4_visit
from t2lesion.preprocess.normalise import (
    CLIP_PERCENTILES,
    STATS_PERCENTILES,
    normalise,
    normalise_array,
    normalise_image,
)
from t2lesion.preprocess.pipeline import preprocess_visit, visit_outputs
from t2lesion.preprocess.register import (
    DEFAULT_RIGID,
    RigidSettings,
    coregister_to_t1w,
    coregister_visit,
    register_to_baseline,
    register_to_mni,
    rigid_register,
)
from t2lesion.preprocess.resample import compose, resample_mask, resample_visit
from t2lesion.preprocess.skullstrip import (
    MAX_BRAIN_ML,
    METHODS,
    MIN_BRAIN_ML,
    skull_strip,
)

__all__ = [
    "CLIP_PERCENTILES",
    "DEFAULT_RIGID",
    "MAX_BRAIN_ML",
    "METHODS",
    "MIN_BRAIN_ML",
    "N4_ITERATIONS",
    "N4_SHRINK",
    "SPACE_LABEL",
    "STATS_PERCENTILES",
    "TARGET_SPACING",
    "RigidSettings",
    "compose",
    "coregister_to_t1w",
    "coregister_visit",
    "cpu_seconds",
    "n4",
    "n4_image",
    "n4_visit",
    "normalise",
    "normalise_array",
    "normalise_image",
    "preprocess_visit",
    "register_to_baseline",
    "register_to_mni",
    "resample_mask",
    "resample_visit",
    "rigid_register",
    "set_threads",
    "skull_strip",
    "target_grid",
    "visit_outputs",
]
