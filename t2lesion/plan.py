"""The workflow's plan: which trials, visits and sources a config asks for, and where every
file of a run lives (docs/DESIGN.md §11).

``rules/*.smk`` declare rules and call this module through one-line input functions
(``rules/common.smk``); all path building, visit and source selection, the inputs of the
trial-level jobs and the report's figure list are computed here, without Snakemake, so that
unit tests reach them (tests/test_plan.py).

Paths are ``str.format`` patterns with the wildcards ``{trial}``, ``{sub}``, ``{ses}`` and
``{source}``: a rule gives Snakemake the pattern itself (a plain string input costs the DAG
less than a function), and the plan fills it in where a job needs a list of files.

Look-ups that run once per job while the DAG is built (visits with GT, a subject's tracked
visits) are computed once per trial and source: a trial of thousands of visits asks them
thousands of times.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from t2lesion.bids import MODALITIES, Visit
from t2lesion.config import Trial, fold_models, fold_thresholds, source_warnings, trials_from_config, visit_inputs

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
LOGS = "results/logs"
BENCH = "results/benchmarks"
QC_PNG = f"{PRE}_{MNI}_qc.png"
# The reader's review queue (docs/DESIGN.md §14).
REVIEW = "results/review/trial-{trial}"
REVIEW_VISIT = f"{REVIEW}/visits/sub-{{sub}}_ses-{{ses}}_review.tsv"
CORRECTION_STATUS = f"{REVIEW}/corrections/sub-{{sub}}_ses-{{ses}}_correction.tsv"
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
    """One inference job: a batch of a trial's visits (``inference.visits_per_job``)."""

    name: str
    trial: str
    index: int
    visits: list[dict]
    volumes: list[str]

    @property
    def images(self) -> list[str]:
        return [d[k] for d in self.visits for k in UNET_INPUTS]

    @property
    def native(self) -> list[str]:
        return [d["native_flair"] for d in self.visits]

    @property
    def masks(self) -> list[str]:
        return [d[f"out_{k}"] for d in self.visits for k in UNET_OUTPUTS]

    @property
    def log(self) -> str:
        return f"{LOGS}/infer/trial-{self.trial}_batch-{self.index}.log"

    @property
    def benchmark(self) -> str:
        return f"{BENCH}/infer/trial-{self.trial}_batch-{self.index}.tsv"

    @property
    def message(self) -> str:
        return f"U-Net inference, trial {self.trial}, batch {self.index}: {len(self.visits)} visits"


class Plan:
    """What one run of the workflow does, from its (schema-checked) config and its trials."""

    def __init__(self, config: dict, trials: dict[str, Trial]):
        self.config = config
        self.trials = trials
        self.sources: list[str] = list(config["sources"])
        self.synthetic = {name: t for name, t in trials.items() if t.synthetic is not None}
        self.test_trials = [name for name, t in trials.items() if t.role == "test"]
        self.train_trials = [name for name, t in trials.items() if t.role == "train"]
        self.folds = list(range(1, config["training"]["folds"] + 1))
        # the U-Net's fold models: trained here (one job per fold) or a folder trained elsewhere
        self.unet_models = fold_models(config, self.train_trials, self.folds)
        # their thresholds (inference.threshold: auto): chosen here per fold, or beside a folder's models
        self.unet_thresholds = fold_thresholds(config, self.unet_models)
        # follow-ups skull-stripped too (followup_brain_mask: own), or reusing the baseline's mask
        self.own_followup_masks = config["preprocess"]["followup_brain_mask"] == "own"
        # trials with a GT mask at some visit / with a visit without one: rule resample_with_gt
        # applies to the first, rule resample to the second, so that neither is tried (a Job
        # built and discarded, milliseconds per visit) where it cannot apply
        self.gt_trials = wildcard_alternatives(n for n, t in trials.items() if t.gt_visits)
        self.no_gt_trials = wildcard_alternatives(
            n for n, t in trials.items() if len(t.gt_visits) < len(t.visits)
        )

    @classmethod
    def from_config(cls, config: dict) -> tuple[Plan, list[str]]:
        """The plan and the warnings found while reading the trials (an InputError on problems)."""
        trials, warnings = trials_from_config(config)
        plan = cls(config, trials)
        return plan, source_warnings(config) + warnings + plan.correction_warnings()

    # ------------------------------------------------------------------ preprocessing

    @property
    def native_mask(self) -> str:
        """The native brain mask a visit is resampled with, and a follow-up registered with: its
        own or its baseline's (the baseline's own at the baseline)."""
        return (PRE if self.own_followup_masks else PRE_BASELINE) + "_space-T1w_desc-brain_mask.nii.gz"

    @property
    def followup_mask(self) -> dict:
        """register_baseline matches brain to brain only when the follow-up has its own mask."""
        return {"mask": self.native_mask} if self.own_followup_masks else {}

    def own_brain_mask(self, ses: str) -> bool:
        """Baseline visits are skull-stripped; follow-ups too only with followup_brain_mask: own."""
        return ses == "w000" or self.own_followup_masks

    def bids_images(self, trial: str, sub: str, ses: str) -> dict[str, str]:
        """A visit's raw T1w, T2w and FLAIR (one input function: each costs the DAG a call)."""
        t, visit = self.trials[trial], Visit(sub, ses)
        return {key: str(t.image(visit, mod)) for key, mod in (("t1w", "T1w"), ("t2w", "T2w"), ("flair", "FLAIR"))}

    def to_mni_chain(self, trial: str, sub: str, ses: str) -> dict[str, str]:
        """T1w -> MNI: the baseline's own transform, preceded by T1w -> baseline for follow-ups."""
        chain = {"baseline_to_mni": f"{PRE.format(trial=trial, sub=sub, ses='w000')}_from-T1w_to-MNI_xfm.tfm"}
        if ses != "w000":
            chain["to_baseline"] = f"{PRE.format(trial=trial, sub=sub, ses=ses)}_from-T1w_to-baseline_xfm.tfm"
        return chain

    def to_mni_chain_and_gt(self, trial: str, sub: str, ses: str) -> dict[str, str]:
        """:meth:`to_mni_chain` and the visit's GT mask (rule resample_with_gt); for a visit
        without one, a path that no file or rule gives, so that Snakemake discards
        resample_with_gt for it and runs rule resample."""
        visit = Visit(sub, ses)
        if visit in self.gt_visit_set(trial):
            gt = str(self.trials[trial].gt_mask(visit))
        else:
            gt = f"<no GT lesion mask for trial {trial} sub-{sub} ses-{ses}>"
        return {**self.to_mni_chain(trial, sub, ses), "gt": gt}

    @functools.cache
    def gt_visit_set(self, trial: str) -> frozenset[Visit]:
        """A trial's visits with GT, as a set: looked up once per visit while the DAG is built."""
        return frozenset(self.trials[trial].gt_visits)

    # ------------------------------------------------------------------ trials and BIDS

    def validation_inputs(self, trial: str) -> list[str]:
        return visit_inputs(self.trials[trial])

    def trial_params(self, trial: str) -> dict:
        t = self.trials[trial]
        return {"control_arm": t.control_arm, "arms": t.arms}

    def bids_file(self, trial: str, name: str) -> str:
        return str(self.trials[trial].bids / name)

    def synth_outputs(self, trial: str) -> list[str]:
        """Every file a synthetic trial's job writes (its BIDS tree and truth tables)."""
        t = self.trials[trial]
        bids = str(t.bids)
        files = [
            f"{bids}/participants.tsv",
            f"{bids}/phenotype/outcomes.tsv",
            f"{t.root}/truth/params.json",
            f"{t.root}/truth/visits.tsv",
            f"{t.root}/truth/lesions.tsv",
            f"{t.root}/truth/subjects.tsv",
        ]
        for v in t.visits:
            files += [str(t.image(v, m)) for m in MODALITIES]
            files.append(str(t.gt_mask(v)))
        return files

    # ------------------------------------------------------------------ sources and masks

    def volume_sources(self, trial: str) -> list[str]:
        """Sources whose lesion volumes feed the endpoints: 'gt' where GT exists, then the predictions."""
        return (["gt"] if self.trials[trial].gt_visits else []) + self.sources

    def source_visits(self, trial: str, source: str) -> tuple[Visit, ...]:
        """The visits a source has a mask for: GT only where it exists, predictions everywhere."""
        t = self.trials[trial]
        return t.gt_visits if source == "gt" else t.visits

    def lesion_volumes(self, trial: str) -> dict[str, list[str]]:
        """Per-visit volume tables of every source: predictions on every visit, GT where it exists."""
        files, sources = [], []
        for source in self.volume_sources(trial):
            visits = self.source_visits(trial, source)
            files += visit_paths(VOLUME, trial, visits, source=source)
            sources += [source] * len(visits)
        return {"files": files, "sources": sources}

    def gt_visit_tables(self, trial: str, source: str, kind: str) -> list[str]:
        """One source's per-visit metric tables (``kind``: visit or lesions) of every GT visit."""
        return visit_paths(VISIT_TABLE, trial, self.trials[trial].gt_visits, source=source, kind=kind)

    def metrics_visit_inputs(self) -> dict[str, str]:
        """Rule metrics_visit's masks: every prediction source's (as patterns)."""
        return {f"pred_{s}": mask_path("{trial}", "{sub}", "{ses}", s) for s in self.sources}

    def metrics_visit_outputs(self) -> dict[str, str]:
        """Rule metrics_visit's per-source visit and lesion tables (as patterns)."""
        return {
            f"{kind}_{s}": VISIT_TABLE.format(trial="{trial}", sub="{sub}", ses="{ses}", source=s, kind=kind)
            for s in self.sources
            for kind in ("visit", "lesions")
        }

    def table2_of(self, trial: str) -> str | None:
        """The Table 2 the summary shows: all sources side by side, or the one source's."""
        if not (self.trials[trial].gt_visits and self.sources):
            return None
        if len(self.sources) > 1:
            return f"results/metrics/trial-{trial}/table2.tsv"
        return f"results/metrics/{self.sources[0]}/trial-{trial}/table2.tsv"

    # ------------------------------------------------------------------ U-Net inference

    def infer_visit(self, trial: str, v: Visit) -> dict[str, str]:
        """Input and output paths of one visit (the keys t2lesion.unet.infer.predict_visits reads)."""
        pre = PRE.format(trial=trial, sub=v.sub, ses=v.ses)
        pred = PRED.format(source="unet", trial=trial, sub=v.sub, ses=v.ses)
        return {
            "id": f"sub-{v.sub}_ses-{v.ses}",
            "T2w": f"{pre}_{MNI}_desc-preproc_T2w.nii.gz",
            "FLAIR": f"{pre}_{MNI}_desc-preproc_FLAIR.nii.gz",
            "T1w": f"{pre}_{MNI}_desc-preproc_T1w.nii.gz",
            "brain_mask": f"{pre}_{MNI}_desc-brain_mask.nii.gz",
            "native_flair": str(self.trials[trial].image(v, "FLAIR")),
            "flair_xfm": f"{pre}_from-FLAIR_to-MNI1x1x3_xfm.tfm",
            **{f"out_{key}": f"{pred}_{suffix}" for key, suffix in UNET_OUTPUTS.items()},
        }

    def infer_batches(self) -> list[InferBatch]:
        """The inference jobs: each valid test trial's visits in batches of
        inference.visits_per_job, when ``unet`` is a source (none otherwise)."""
        if "unet" not in self.sources:
            return []
        n = self.config["inference"]["visits_per_job"]
        batches = []
        for trial in self.test_trials:
            if self.trials[trial].problems:
                continue
            visits = list(self.trials[trial].visits)
            for i in range(0, len(visits), n):
                chunk, index = visits[i : i + n], i // n + 1
                batches.append(
                    InferBatch(
                        name=f"infer_{trial}_{index}",
                        trial=trial,
                        index=index,
                        visits=[self.infer_visit(trial, v) for v in chunk],
                        volumes=visit_paths(VOLUME, trial, chunk, source="unet"),
                    )
                )
        return batches

    # ------------------------------------------------------------------ review queue

    @property
    def review_sources(self) -> tuple[str | None, str | None]:
        """The source the review queue ranks and the one it is compared with
        (t2lesion.review.queue_sources: ``unet`` beside ``classical``, else ``classical`` alone)."""
        from t2lesion.review import queue_sources

        return queue_sources(self.sources)

    def review_trials(self) -> list[str]:
        """Valid test trials, when a prediction source gives masks to review."""
        if self.review_sources[0] is None:
            return []
        return [n for n in self.test_trials if not self.trials[n].problems]

    def review_visit_inputs(self, trial: str, sub: str, ses: str) -> dict[str, str]:
        """Rule review_visit's inputs: the queue source's mask, the MNI brain mask, the MI map
        (``unet``), the other source's mask, the subject's previous and next masks where they
        exist, and the visit's own native skull-strip mask where it has one."""
        primary, other = self.review_sources
        pre = PRE.format(trial=trial, sub=sub, ses=ses)
        out = {"mask": mask_path(trial, sub, ses, primary), "brain": f"{pre}_{MNI}_desc-brain_mask.nii.gz"}
        if primary == "unet":
            out["mi"] = f"{PRED.format(source='unet', trial=trial, sub=sub, ses=ses)}_{UNET_OUTPUTS['mi']}"
        if other:
            out["other"] = mask_path(trial, sub, ses, other)
        visits = self.tracked_visits(trial, primary, sub)
        k = visits.index(Visit(sub, ses))
        if 0 < k < len(visits) - 1:
            out["prev"] = mask_path(trial, sub, visits[k - 1].ses, primary)
            out["next"] = mask_path(trial, sub, visits[k + 1].ses, primary)
        if self.own_brain_mask(ses):
            out["native_brain"] = f"{pre}_space-T1w_desc-brain_mask.nii.gz"
        return out

    def review_visit_params(self, trial: str, sub: str, ses: str) -> dict:
        """Rule review_visit's identifiers and the log of the visit's rigid registration (to MNI
        at the baseline, to the baseline at a follow-up), read for its final cost if present."""
        primary, other = self.review_sources
        step = "register_mni" if ses == "w000" else "register_baseline"
        return {
            "participant_id": f"sub-{sub}",
            "session": f"ses-{ses}",
            "week": Visit(sub, ses).week,
            "source": primary,
            "other_source": other,
            "reg_kind": "mni" if ses == "w000" else "baseline",
            "reg_log": f"{LOGS}/{step}/trial-{trial}_sub-{sub}_ses-{ses}.log",
        }

    def review_visit_tables(self, trial: str) -> list[str]:
        """Every visit's review row (rule review_queue's inputs)."""
        return visit_paths(REVIEW_VISIT, trial, self.trials[trial].visits)

    def review_ids(self, trial: str) -> list[str]:
        return [v.prefix for v in self.trials[trial].visits]

    def review_figure_inputs(self, trial: str) -> dict:
        """The queue, and per visit (aligned with :meth:`review_ids`) the FLAIR and the two
        masks the review page draws: the other source's (red) and the queue source's (blue);
        the queue source's on both sides when it is alone."""
        primary, other = self.review_sources
        visits = self.trials[trial].visits
        return {
            "queue": f"{REVIEW.format(trial=trial)}/queue.tsv",
            "flair": visit_paths(f"{PRE}_{MNI}_desc-preproc_FLAIR.nii.gz", trial, visits),
            "first": [mask_path(trial, v.sub, v.ses, other or primary) for v in visits],
            "second": [mask_path(trial, v.sub, v.ses, primary) for v in visits],
        }

    def review_bundle_inputs(self, trial: str) -> dict:
        """Per visit (aligned with :meth:`review_ids`): the raw FLAIR, T1w and T2w, the U-Net's
        native mask, probability and MI maps and the composed FLAIR -> MNI transform (rule
        review_bundles; only with ``unet`` among the sources)."""
        t, visits = self.trials[trial], self.trials[trial].visits
        d = [self.infer_visit(trial, v) for v in visits]
        return {
            "queue": f"{REVIEW.format(trial=trial)}/queue.tsv",
            "flair": [str(t.image(v, "FLAIR")) for v in visits],
            "t1w": [str(t.image(v, "T1w")) for v in visits],
            "t2w": [str(t.image(v, "T2w")) for v in visits],
            "mask": [x["out_native_mask"] for x in d],
            "prob": [x["out_prob"] for x in d],
            "mi": [x["out_mi"] for x in d],
            "xfm": [x["flair_xfm"] for x in d],
        }

    # ------------------------------------------------------------------ readers' corrections

    @functools.cache
    def correction_paths(self, trial: str) -> dict[Visit, str]:
        """Where each visit's correction would lie (t2lesion.corrections.correction_path)."""
        from t2lesion.corrections import correction_path

        t = self.trials[trial]
        return {v: str(correction_path(t.bids, t.image(v, "FLAIR"))) for v in t.visits}

    @functools.cache
    def corrections(self, trial: str) -> dict[Visit, str]:
        """The visits of a trial a reader corrected: those whose correction file exists (looked
        up once per trial while the DAG is built)."""
        return {v: p for v, p in self.correction_paths(trial).items() if Path(p).is_file()}

    def reviewed_trials(self) -> list[str]:
        """Trials with a ``reviewed`` source: the valid test trials, with ``reviewed`` a source."""
        if "reviewed" not in self.sources:
            return []
        return [n for n in self.test_trials if not self.trials[n].problems]

    def correction_warnings(self) -> list[str]:
        """One line per mask under a trial's derivatives/lesions-reviewed/ that names no visit."""
        from t2lesion.corrections import unmatched_corrections

        out = []
        for trial in self.reviewed_trials():
            out += unmatched_corrections(self.trials[trial].bids, self.correction_paths(trial).values(), trial)
        return out

    def apply_review_inputs(self, trial: str, sub: str, ses: str) -> dict[str, str]:
        """Rule apply_review's inputs: the U-Net's MNI and native masks, the raw FLAIR, the
        composed FLAIR -> MNI transform and, where a reader corrected the visit, the correction
        (and its JSON sidecar where it exists). A correction added or changed is a new or newer
        input of this visit's job alone, so only it reruns, then the trial-level tables."""
        v = Visit(sub, ses)
        d = self.infer_visit(trial, v)
        out = {"unet_mni": d["out_mask"], "unet_native": d["out_native_mask"], "flair": d["native_flair"],
               "xfm": d["flair_xfm"]}
        corr = self.corrections(trial).get(v)
        if corr:
            out["correction"] = corr
            sidecar = corr.replace(".nii.gz", ".json")
            if Path(sidecar).is_file():
                out["sidecar"] = sidecar
        return out

    def review_changes_inputs(self, trial: str) -> dict:
        """Rule review_changes: the endpoint tables with a source column, and every visit's
        correction status."""
        stats = STATS.format(trial=trial)
        tables = {
            "tlv_long": f"{stats}/tlv_long.tsv",
            "change_summary": f"{stats}/change_summary.tsv",
            "ancova_arm_effect": f"{stats}/ancova_arm_effect.tsv",
            "table4": f"{stats}/table4.tsv",
            "km_tests": f"{stats}/km_tests.tsv",
        }
        if self.has_new_lesions(trial):
            tables["nb_rate_ratio"] = f"{stats}/nb_rate_ratio.tsv"
        if self.trials[trial].gt_visits and len(self.sources) > 1:
            tables["table2"] = f"results/metrics/trial-{trial}/table2.tsv"
        status = visit_paths(CORRECTION_STATUS, trial, self.trials[trial].visits)
        return {**tables, "status": status}

    def review_changes_tables(self, trial: str) -> list[str]:
        """The names of rule review_changes' endpoint tables (its inputs but the statuses)."""
        return [k for k in self.review_changes_inputs(trial) if k != "status"]

    def review_targets(self, trial: str) -> list[str]:
        """The queue and its report page; the bundles too when the U-Net gives the maps."""
        if trial not in self.review_trials():
            return []
        review = REVIEW.format(trial=trial)
        out = [f"{review}/queue.tsv", f"{review}/review_overlays.png"]
        if "unet" in self.sources:
            out.append(f"{review}/bundles")
        if trial in self.reviewed_trials():
            out += [f"{review}/endpoint_changes.tsv", f"{review}/corrections.tsv"]
        return out

    # ------------------------------------------------------------------ training

    def train_indexes(self) -> list[str]:
        return [f"{TRAIN}/trial-{t}/index_fold-{k}.tsv" for t in self.train_trials for k in self.folds]

    def patch_store_files(self, trial: str) -> list[str]:
        pattern = f"{TRAIN}/trial-{{trial}}/store/sub-{{sub}}_ses-{{ses}}.npy"
        return visit_paths(pattern, trial, self.trials[trial].gt_visits)

    def fold_split_tables(self) -> list[str]:
        """Each training trial's folds.tsv, in the order of :attr:`train_trials`."""
        return [f"{TRAIN}/trial-{t}/folds.tsv" for t in self.train_trials]

    def calibration_visits(self) -> list[dict]:
        """Every GT visit of the training trials, as rule calibrate reads them (trial,
        participant_id, id, the preprocessed contrasts, brain mask and GT); each fold's job
        keeps those of its own fold (t2lesion.unet.stage.held_out_visits). Ids carry the trial
        where several trials train."""
        out = []
        for t in self.train_trials:
            for v in self.trials[t].gt_visits:
                pre = f"{PRE.format(trial=t, sub=v.sub, ses=v.ses)}_{MNI}"
                vid = f"sub-{v.sub}_ses-{v.ses}"
                out.append({
                    "trial": t,
                    "participant_id": f"sub-{v.sub}",
                    "id": f"trial-{t}_{vid}" if len(self.train_trials) > 1 else vid,
                    **{m: f"{pre}_desc-preproc_{m}.nii.gz" for m in ("T2w", "FLAIR", "T1w")},
                    "brain_mask": f"{pre}_desc-brain_mask.nii.gz",
                    "gt": f"{pre}_desc-lesionGT_mask.nii.gz",
                })
        return out

    def calibration_inputs(self) -> list[str]:
        """The files of :meth:`calibration_visits` (every fold's job waits for all of them: which
        visits a fold holds out is known only once fold_split has run)."""
        keys = ("T2w", "FLAIR", "T1w", "brain_mask", "gt")
        return [v[k] for v in self.calibration_visits() for k in keys]

    def fold_files(self, name: str) -> list[str]:
        """``results/train/fold-<k>/<name>`` of every fold trained here (none without training)."""
        return [f"{TRAIN}/fold-{k}/{name}" for k in self.folds] if self.train_trials else []

    def unet_threshold(self) -> dict:
        """What decides the U-Net's threshold (t2lesion.unet.threshold.resolve_threshold's
        arguments), for the summary; {} when ``unet`` is not a source."""
        if "unet" not in self.sources:
            return {}
        inference = self.config["inference"]
        return {"setting": inference["threshold"], "files": list(self.unet_thresholds),
                "n_models": len(self.unet_models), "folder": inference.get("models")}

    # ------------------------------------------------------------------ new and enlarging lesions

    @functools.cache
    def _tracked_by_subject(self, trial: str, source: str) -> dict[str, tuple[Visit, ...]]:
        """Visits with a mask of ``source``, by subject and week: built once per trial and source,
        so that the per-subject look-ups stay cheap at thousands of visits."""
        by_subject: dict[str, list[Visit]] = {}
        for v in sorted(self.source_visits(trial, source), key=lambda v: v.week):
            by_subject.setdefault(v.sub, []).append(v)
        return {sub: tuple(vs) for sub, vs in by_subject.items()}

    def tracked_visits(self, trial: str, source: str, sub: str) -> list[Visit]:
        """A subject's visits with a mask of ``source`` (GT only where it exists), by week."""
        return list(self._tracked_by_subject(trial, source).get(sub, ()))

    def tracked_sessions(self, trial: str, source: str, sub: str) -> list[str]:
        return [f"ses-{v.ses}" for v in self.tracked_visits(trial, source, sub)]

    def tracking_masks(self, trial: str, source: str, sub: str) -> list[str]:
        """Every visit's mask of one subject and source, as lesion_mask gives them."""
        return [mask_path(trial, v.sub, v.ses, source) for v in self.tracked_visits(trial, source, sub)]

    def tracking_outputs(self, trial: str, kind: str) -> dict[str, list[str]]:
        """Per-subject tracking outputs of every source of a trial (GT first where it exists)."""
        files, sources = [], []
        for source in self.volume_sources(trial):
            for sub in sorted(self._tracked_by_subject(trial, source)):
                pattern = f"{TRACK}/qc" if kind == "qc" else f"{TRACK}/sub-{{sub}}_{kind}.tsv"
                files.append(pattern.format(source=source, trial=trial, sub=sub))
                sources.append(source)
        return {"files": files, "sources": sources}

    def has_new_lesions(self, trial: str) -> bool:
        """New/enlarging lesions (docs/DESIGN.md §9b) need a subject seen at >= 2 visits."""
        per_subject: dict[str, int] = {}
        for v in self.trials[trial].visits:
            per_subject[v.sub] = per_subject.get(v.sub, 0) + 1
        return max(per_subject.values(), default=0) >= 2

    # ------------------------------------------------------------------ report

    def fig2_sources(self) -> list[str]:
        """Fig. 2 compares GT with each prediction source."""
        return [s for s in self.sources if s != "gt"]

    def fig2_inputs(self, trial: str, source: str) -> dict:
        """The source's per-visit metrics (they pick the visits) and, for every visit with GT, the
        FLAIR, GT and predicted mask the figure may show."""
        visits = self.trials[trial].gt_visits
        return {
            "visits": f"results/metrics/{source}/trial-{trial}/visits.tsv",
            "flair": visit_paths(f"{PRE}_{MNI}_desc-preproc_FLAIR.nii.gz", trial, visits),
            "gt": [mask_path(trial, v.sub, v.ses, "gt") for v in visits],
            "pred": [mask_path(trial, v.sub, v.ses, source) for v in visits],
        }

    def fig2_ids(self, trial: str) -> list[str]:
        return [f"sub-{v.sub}_ses-{v.ses}" for v in self.trials[trial].gt_visits]

    def summary_figures(self, trial: str) -> dict[str, list[str]]:
        """The figures summary.md links for a test trial, under their headings, in order
        (a heading without figures is left out by :meth:`summary_trials`)."""
        stats = STATS.format(trial=trial)
        gt = bool(self.trials[trial].gt_visits)
        metrics = [f"results/metrics/{s}/trial-{trial}" for s in self.sources]
        if len(self.sources) > 1:
            metrics.append(f"results/metrics/trial-{trial}")
        return {
            "Fig. 2: GT and predicted lesions over FLAIR": (
                [FIG2.format(source=s, trial=trial) for s in self.fig2_sources()] if gt else []
            ),
            "Fig. 3a-c: size groups": [f"{m}/size_groups.png" for m in metrics] if gt else [],
            "TLV agreement": [f"{m}/tlv_agreement.png" for m in metrics] if gt else [],
            "Fig. 3d-g: TLV change": [f"{stats}/fig3_tlv_change.png"],
            "Fig. 3h-i: new and enlarging T2 lesions": (
                [f"{stats}/fig3h_new_lesions_per_scan.png", f"{stats}/fig3i_new_lesions_rate_ratio.png"]
                if self.has_new_lesions(trial)
                else []
            ),
            "Fig. 4: Kaplan-Meier": [f"{stats}/fig4_km_{e}.png" for e in self.config["stats"]["endpoints"]],
            "Preprocessing QC (one per visit)": visit_paths(QC_PNG, trial, self.trials[trial].visits),
        }

    def summary_trials(self) -> dict[str, dict]:
        """Per valid test trial, the tables and figures summary.md shows or links (t2lesion.report)."""
        out = {}
        for name in self.test_trials:
            if self.trials[name].problems:
                continue
            stats = STATS.format(trial=name)
            files = {
                "table1": f"{stats}/table1.tsv",
                "table2": self.table2_of(name),
                "ancova": f"{stats}/ancova_arm_effect.tsv",
                "table4": f"{stats}/table4.tsv",
                "km": f"{stats}/km_tests.tsv",
            }
            if self.has_new_lesions(name):
                files["nb"] = f"{stats}/nb_rate_ratio.tsv"
            files["figures"] = self.summary_figures(name)
            out[name] = {k: v for k, v in files.items() if v}
        return out

    def summary_histories(self) -> dict[str, str]:
        if not self.train_trials:
            return {}
        return {str(f): f"{TRAIN}/fold-{f}/history.tsv" for f in self.folds}

    def summary_thresholds(self) -> dict[str, str]:
        """Each fold's threshold.json (its threshold and held-out Dice in the training table)."""
        return {str(f): p for f, p in zip(self.folds, self.fold_files("threshold.json"))}

    def summary_training_figures(self) -> dict[str, list[str]]:
        if not self.train_trials:
            return {}
        return {"Training curves": self.fold_files("training_curve.png"),
                "Threshold curves (Dice on each fold's held-out visits)": self.fold_files("threshold_curve.png")}

    def summary_inputs(self) -> list[str]:
        """Every file summary.md reads or links, so that it is written after all of them."""
        files = list(self.summary_histories().values())
        files += list(self.summary_thresholds().values())
        files += [f for f in self.unet_thresholds if f not in files]
        for paths in self.summary_training_figures().values():
            files += paths
        for trial in self.summary_trials().values():
            for key, value in trial.items():
                if key == "figures":
                    for paths in value.values():
                        files += paths
                else:
                    files.append(value)
        return files

    # ------------------------------------------------------------------ targets

    def stats_targets(self, trial: str) -> list[str]:
        stats = STATS.format(trial=trial)
        return [f"{stats}/change_summary.tsv", f"{stats}/ancova.tsv", f"{stats}/table4.tsv", f"{stats}/km_tests.tsv"]

    def lesion_targets(self, trial: str) -> list[str]:
        """The new/enlarging lesion endpoint (docs/DESIGN.md §9b) and its agreement with GT."""
        if not self.has_new_lesions(trial):
            return []
        stats = STATS.format(trial=trial)
        out = [f"{stats}/nb_rate_ratio.tsv"]
        if self.trials[trial].gt_visits and self.sources:
            out.append(f"{stats}/new_lesions_agreement.tsv")
        return out

    def report_targets(self, trial: str) -> list[str]:
        """Table 1 of a test trial, and its Fig. 2 per prediction source where GT exists."""
        out = [f"{STATS.format(trial=trial)}/table1.tsv"]
        if self.trials[trial].gt_visits:
            out += [FIG2.format(source=s, trial=trial) for s in self.fig2_sources()]
        return out

    def all_targets(self) -> list[str]:
        """Per test trial: QC of every visit, every source's endpoints, and Table 2 where GT exists.

        A trial whose BIDS folder has problems gets only its validation job, which lists them.
        """
        targets = []
        if self.train_trials:
            for fold in self.folds:
                targets += [f"{TRAIN}/fold-{fold}/model.keras", f"{TRAIN}/fold-{fold}/training_curve.png",
                            f"{TRAIN}/fold-{fold}/threshold.json", f"{TRAIN}/fold-{fold}/threshold_curve.png"]
        for name in self.test_trials:
            trial = self.trials[name]
            if trial.problems:
                targets.append(VALIDATED.format(trial=name))
                continue
            targets += visit_paths(QC_PNG, name, trial.visits)
            if trial.gt_visits:
                targets += [f"results/metrics/{s}/trial-{name}/table2.tsv" for s in self.sources]
                if len(self.sources) > 1:
                    targets.append(f"results/metrics/trial-{name}/table2.tsv")
            targets += self.stats_targets(name)
            targets += self.lesion_targets(name)
            targets += self.report_targets(name)
            targets += self.review_targets(name)
        if self.summary_trials() or self.train_trials:
            targets.append("results/report/summary.md")
        return targets


def synthetic_root(synth_outputs: list[str]) -> str:
    """A synthetic trial's folder (``bids/`` and ``truth/``), from its job's outputs
    (the third is ``<root>/truth/params.json``)."""
    return str(Path(synth_outputs[2]).parent.parent)
