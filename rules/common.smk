# Shared definitions: the plan of the run (t2lesion.plan: trials, visits, sources, paths)
# and the input functions the rules name, each a one-line wrapper over a method of it.
import os
import sys

from snakemake.exceptions import WorkflowError

from t2lesion.bids import write_visit_files
from t2lesion.errors import InputError
from t2lesion.plan import (
    BENCH,
    CORRECTION_STATUS,
    FIG2,
    FLAIR_XFM,
    LOGS,
    MNI,
    NEW_LESION_TRUTH_TABLES,
    PRE,
    PRE_BASELINE,
    PRED,
    REVIEW,
    REVIEWED_TRAINING_MASK,
    REVIEW_VISIT,
    STATS,
    TRACK,
    TRAIN,
    VALIDATED,
    VALIDATION_STUDY,
    VALIDATION_PASSED,
    VISIT_FILES,
    VOLUME,
    Plan,
    mask_path,
    synthetic_root,
)

# Under --sdm conda: the environment of the GPU rules (train, calibrate, infer), CPU or CUDA JAX.
GPU_RULE_ENV = (
    "../envs/dl-gpu.yaml" if config["dl"]["conda_env"] == "gpu" else "../envs/dl.yaml"
)

# Jobs (scripts, conda envs, SLURM jobs) import the library from this checkout.
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        p for p in (workflow.basedir, os.environ.get("PYTHONPATH")) if p
    )
)

try:
    PLAN, _warnings = Plan.from_config(config)
except InputError as _exc:
    raise WorkflowError(str(_exc)) from None
for _w in _warnings:
    print(f"Warning: {_w}", file=sys.stderr)

TRIALS = PLAN.trials
MODEL_CFG = config["model"]


wildcard_constraints:
    trial="[A-Za-z0-9]+",
    sub="[A-Za-z0-9]+",
    ses=r"w\d{3}",
    modality="T1w|T2w|FLAIR",
    source="[A-Za-z0-9]+",


def bids_images(w):
    return PLAN.bids_images(w.trial, w.sub, w.ses)


def visit_files(w):
    return PLAN.visit_files(w.trial, w.sub, w.ses)


def to_mni_chain(w):
    return PLAN.to_mni_chain(w.trial, w.sub, w.ses)


def to_mni_chain_and_gt(w):
    return PLAN.to_mni_chain_and_gt(w.trial, w.sub, w.ses)


def trial_inputs(w):
    return PLAN.validation_inputs(w.trial)


def trial_params(w):
    return PLAN.trial_params(w.trial)


def bids_table(name):
    return lambda w: PLAN.bids_file(w.trial, name)


def lesion_volumes(w):
    return PLAN.lesion_volumes(w.trial)


def gt_visit_tables(w, kind):
    return PLAN.gt_visit_tables(w.trial, w.source, kind)


def tracking_outputs(w, kind):
    return PLAN.tracking_outputs(w.trial, kind)


def qc_output():
    """The visit's QC picture, an item of the report's QC category."""
    return report(
        f"{PRE}_{MNI}_qc.png",
        caption="../report/qc.rst",
        category="QC",
        subcategory="trial-{trial}",
        labels={"visit": "sub-{sub} ses-{ses}"},
    )


def training_first(w):
    return PLAN.priority(w.trial)


def trial_of(w):
    return TRIALS[w.trial]
