"""The workflow's plan: which trials, visits and sources a config asks for, and where every
file of a run lives (docs/DESIGN.md §11, §12).

``rules/*.smk`` declare rules and call this package through one-line input functions
(``rules/common.smk``); all path building, visit and source selection, the inputs of the
trial-level jobs and the report's figure list are computed here, without Snakemake, so that
unit tests reach them (tests/test_plan.py).

* :mod:`~t2lesion.plan.paths`: the path patterns and the helpers that fill them in;
* :mod:`~t2lesion.plan.core`: :class:`Plan`, from the config and its trials;
* :mod:`~t2lesion.plan.review`: the readers' part of the plan (review queue, corrections).
"""

from t2lesion.plan.core import Plan
from t2lesion.plan.paths import (
    BENCH,
    CORRECTION_STATUS,
    FIG2,
    FLAIR_XFM,
    InferBatch,
    LOGS,
    MNI,
    NEW_LESION_TRUTH_TABLES,
    NOTHING,
    PRE,
    PRED,
    PRE_BASELINE,
    QC_PNG,
    REVIEW,
    REVIEWED_TRAINING_MASK,
    REVIEW_VISIT,
    STATS,
    TRACK,
    TRAIN,
    UNET_INPUTS,
    UNET_OUTPUTS,
    VALIDATED,
    VALIDATION_STUDY,
    VALIDATION_PASSED,
    VISIT_FILES,
    VISIT_TABLE,
    VOLUME,
    mask_path,
    synthetic_root,
    visit_paths,
    wildcard_alternatives,
)

__all__ = ["Plan", "BENCH", "CORRECTION_STATUS", "FIG2", "FLAIR_XFM", "InferBatch", "LOGS", "MNI", "NEW_LESION_TRUTH_TABLES", "NOTHING", "PRE", "PRED", "PRE_BASELINE", "QC_PNG", "REVIEW", "REVIEWED_TRAINING_MASK", "REVIEW_VISIT", "STATS", "TRACK", "TRAIN", "UNET_INPUTS", "UNET_OUTPUTS", "VALIDATED", "VALIDATION_STUDY", "VALIDATION_PASSED", "VISIT_FILES", "VISIT_TABLE", "VOLUME", "mask_path", "synthetic_root", "visit_paths", "wildcard_alternatives"]
