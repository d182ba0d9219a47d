"""Where every file of a run lives (docs/DESIGN.md §12): ``str.format`` patterns with the
wildcards ``{trial}``, ``{sub}``, ``{ses}`` and ``{source}``, and the helpers that fill them in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Every file name carries its entities; these prefixes keep rules short.
PRE = "results/preproc/trial-{trial}/sub-{sub}/ses-{ses}/sub-{sub}_ses-{ses}"
PRED = "results/predict/{source}/trial-{trial}/sub-{sub}/ses-{ses}/sub-{sub}_ses-{ses}"
VOLUME = "results/metrics/{source}/trial-{trial}/volumes/sub-{sub}_ses-{ses}_volume.tsv"
VISIT_TABLE = "results/metrics/{source}/trial-{trial}/visits/sub-{sub}_ses-{ses}_{kind}.tsv"
STATS = "results/stats/trial-{trial}"
TRAIN = "results/train"
TRACK = "results/lesions/{source}/trial-{trial}/sub-{sub}"
FIG2 = "results/metrics/{source}/trial-{trial}/fig2_overlays.png"
MNI = "space-MNI1x1x3"
# A visit's baseline, as a pattern.
PRE_BASELINE = PRE.replace("{ses}", "w000")
VALIDATED = "results/validated/trial-{trial}_visits.tsv"
# What the per-visit jobs wait for: validation's outcome (rule validation_passed says why).
VALIDATION_PASSED = "results/validated/trial-{trial}_passed"
# The raw files a visit's preprocessing reads, one row each (rule visit_files says why).
VISIT_FILES = "results/validated/trial-{trial}/sub-{sub}_ses-{ses}_files.tsv"
LOGS = "results/logs"
BENCH = "results/benchmarks"
QC_PNG = f"{PRE}_{MNI}_qc.png"
# A visit's composed FLAIR -> MNI transform (rule resample_with_gt; ITK's convention: MNI points to FLAIR points).
FLAIR_XFM = f"{PRE}_from-FLAIR_to-MNI1x1x3_xfm.tfm"
# The reader's review queue (docs/DESIGN.md §14).
REVIEW = "results/review/trial-{trial}"
# The validation study on known truth (docs/DESIGN.md §15).
VALIDATION_STUDY = "results/validation_study/trial-{trial}"
#: The new-lesion truth check's tables, VALIDATION_STUDY/new_lesion_truth_<name>.tsv (t2lesion.validation.new_lesion_truth).
NEW_LESION_TRUTH_TABLES = ("lesions", "masks", "sizes", "floors", "enlarge_floors")
REVIEW_VISIT = f"{REVIEW}/visits/sub-{{sub}}_ses-{{ses}}_review.tsv"
CORRECTION_STATUS = f"{REVIEW}/corrections/sub-{{sub}}_ses-{{ses}}_correction.tsv"
# A reader's mask of a training visit carried into MNI (trials.<t>.training_masks: reviewed).
REVIEWED_TRAINING_MASK = f"{PRE}_{MNI}_desc-lesionReviewed_mask.nii.gz"
#: a regex that matches no wildcard value: a rule limited to it never applies
NOTHING = "(?!)"

#: The U-Net's outputs per visit (t2lesion.unet.infer.predict_visits writes them).
UNET_OUTPUTS = {
    "prob": f"{MNI}_desc-lesion_probseg.nii.gz",
    "mask": f"{MNI}_desc-lesion_mask.nii.gz",
    "sd": f"{MNI}_desc-sd_uncertainty.nii.gz",
    "entropy": f"{MNI}_desc-entropy_uncertainty.nii.gz",
    "mi": f"{MNI}_desc-mi_uncertainty.nii.gz",
    "native_mask": "space-FLAIR_desc-lesion_mask.nii.gz",
}
#: the maps config inference.uncertainty_maps may leave out (t2lesion.unet.infer.OPTIONAL_MAPS)
OPTIONAL_UNET_MAPS = ("sd", "entropy")
#: the per-visit inputs of an inference batch, in the order the rule lists them
UNET_INPUTS = ("T2w", "FLAIR", "T1w", "brain_mask", "flair_xfm")


def visit_paths(pattern: str, trial: str, visits, **extra) -> list[str]:
    """``pattern`` filled in for each of ``visits`` of ``trial``."""
    return [pattern.format(trial=trial, sub=v.sub, ses=v.ses, **extra) for v in visits]


def mask_path(trial: str, sub: str, ses: str, source: str) -> str:
    """The mask a source gives a visit: the GT carried into MNI, or the source's prediction."""
    if source == "gt":
        return f"{PRE.format(trial=trial, sub=sub, ses=ses)}_{MNI}_desc-lesionGT_mask.nii.gz"
    return f"{PRED.format(trial=trial, sub=sub, ses=ses, source=source)}_{MNI}_desc-lesion_mask.nii.gz"


def wildcard_alternatives(names) -> str:
    """A wildcard constraint that matches exactly ``names`` (none: :data:`NOTHING`)."""
    return "|".join(sorted(names)) or NOTHING


@dataclass(frozen=True)
class InferBatch:
    """One inference job: a batch of a trial's visits (``inference.visits_per_job``).

    ``visits`` name every map (the rule's params: the same whatever ``inference.uncertainty_maps``
    says, so changing it reruns nothing); ``left_out``: the optional maps that are no outputs
    (the job writes only its declared outputs: ``t2lesion.unet.infer.declared_maps``)."""

    name: str
    trial: str
    index: int
    visits: list[dict]
    volumes: list[str]
    left_out: tuple[str, ...] = ()

    @property
    def images(self) -> list[str]:
        return [d[k] for d in self.visits for k in UNET_INPUTS]

    @property
    def native(self) -> list[str]:
        return [d["native_flair"] for d in self.visits]

    @property
    def masks(self) -> list[str]:
        return [d[f"out_{k}"] for d in self.visits for k in UNET_OUTPUTS if k not in self.left_out]

    @property
    def log(self) -> str:
        return f"{LOGS}/infer/trial-{self.trial}_batch-{self.index}.log"

    @property
    def benchmark(self) -> str:
        return f"{BENCH}/infer/trial-{self.trial}_batch-{self.index}.tsv"

    @property
    def message(self) -> str:
        return f"U-Net inference, trial {self.trial}, batch {self.index}: {len(self.visits)} visits"


def synthetic_root(synth_outputs: list[str]) -> str:
    """A synthetic trial's folder (``bids/`` and ``truth/``), from its job's outputs
    (the third is ``<root>/truth/params.json``)."""
    return str(Path(synth_outputs[2]).parent.parent)
