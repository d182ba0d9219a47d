"""The plan of a run (:class:`Plan`): which trials, visits and sources a config asks for, and where every
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

from t2lesion.bids import MODALITIES, Visit
from t2lesion.config import Trial, fold_models, fold_thresholds, source_warnings, trials_from_config, visit_inputs
from t2lesion.plan.paths import (
    FIG2, FLAIR_XFM, MNI, OPTIONAL_UNET_MAPS, PRE, PRE_BASELINE, PRED, QC_PNG, REVIEW, STATS, TRACK, TRAIN, UNET_OUTPUTS,
    VALIDATED,
    VISIT_TABLE, VOLUME,
    InferBatch, mask_path, visit_paths, wildcard_alternatives,
)
from t2lesion.plan.review import ReviewPlan
from t2lesion.plan.validation import ValidationPlan


class Plan(ReviewPlan, ValidationPlan):
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
        return plan, source_warnings(config) + warnings + plan.correction_warnings() + plan.training_warnings()

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

    #: priority of the jobs on the way to the U-Net's folds (docs/DESIGN.md §6)
    TRAINING_PATH_PRIORITY = 10
    #: every synthetic trial first: a 2-thread job, on 2 cores it could only start once no
    #: fold was training, and the test trial's preprocessing waited for it with a core idle
    SYNTHESIS_PRIORITY = TRAINING_PATH_PRIORITY + 1

    def priority(self, trial: str) -> int:
        """Snakemake priority of a trial's per-visit jobs: a training trial's preprocessing,
        patches and folds come first, since the folds are the longest chain of the run; the
        test trials' preprocessing then fills the cores beside the folds instead of delaying
        them (in the CPU demo it had run beside the training trial's, leaving a core idle
        while the last fold trained alone)."""
        return self.TRAINING_PATH_PRIORITY if self.trials[trial].role == "train" else 0

    def bids_images(self, trial: str, sub: str, ses: str) -> dict[str, str]:
        """A visit's raw T1w, T2w and FLAIR (one input function: each costs the DAG a call)."""
        t, visit = self.trials[trial], Visit(sub, ses)
        return {key: str(t.image(visit, mod)) for key, mod in (("t1w", "T1w"), ("t2w", "T2w"), ("flair", "FLAIR"))}

    def visit_files(self, trial: str, sub: str, ses: str) -> dict[str, str]:
        """Every raw file of a visit: its images and, where it has one, its GT mask (rule visit_files)."""
        files = self.bids_images(trial, sub, ses)
        visit = Visit(sub, ses)
        if visit in self.gt_visit_set(trial):
            files["gt"] = str(self.trials[trial].gt_mask(visit))
        return files

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
            "flair_xfm": FLAIR_XFM.format(trial=trial, sub=v.sub, ses=v.ses),
            **{f"out_{key}": f"{pred}_{suffix}" for key, suffix in UNET_OUTPUTS.items()},
        }

    def infer_batches(self) -> list[InferBatch]:
        """The inference jobs: each valid test trial's visits in batches of
        inference.visits_per_job, when ``unet`` is a source (none otherwise)."""
        if "unet" not in self.sources:
            return []
        n = self.config["inference"]["visits_per_job"]
        written = self.config["inference"].get("uncertainty_maps", OPTIONAL_UNET_MAPS)
        left_out = tuple(k for k in OPTIONAL_UNET_MAPS if k not in written)
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
                        left_out=left_out,
                    )
                )
        return batches

    # ------------------------------------------------------------------ training

    def train_indexes(self) -> list[str]:
        return [f"{TRAIN}/trial-{t}/index_fold-{k}.tsv" for t in self.train_trials for k in self.folds]

    def patch_store_files(self, trial: str) -> list[str]:
        """Each training visit's patch store (:meth:`training_visits`)."""
        pattern = f"{TRAIN}/trial-{{trial}}/store/sub-{{sub}}_ses-{{ses}}.npy"
        return visit_paths(pattern, trial, self.training_visits(trial))

    def fold_split_tables(self) -> list[str]:
        """Each training trial's folds.tsv, in the order of :attr:`train_trials`."""
        return [f"{TRAIN}/trial-{t}/folds.tsv" for t in self.train_trials]

    def calibration_visits(self) -> list[dict]:
        """Every training visit of the training trials (:meth:`training_visits`), as rule
        calibrate reads them (trial, participant_id, id, the preprocessed contrasts, brain mask
        and the training mask, :meth:`training_mask`); each fold's job keeps those of its own
        fold (t2lesion.unet.stage.held_out_visits). Ids carry the trial where several trials train."""
        out = []
        for t in self.train_trials:
            for v in self.training_visits(t):
                pre = f"{PRE.format(trial=t, sub=v.sub, ses=v.ses)}_{MNI}"
                vid = f"sub-{v.sub}_ses-{v.ses}"
                out.append({
                    "trial": t,
                    "participant_id": f"sub-{v.sub}",
                    "id": f"trial-{t}_{vid}" if len(self.train_trials) > 1 else vid,
                    **{m: f"{pre}_desc-preproc_{m}.nii.gz" for m in ("T2w", "FLAIR", "T1w")},
                    "brain_mask": f"{pre}_desc-brain_mask.nii.gz",
                    "gt": self.training_mask(t, v.sub, v.ses),
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
        """Per test trial, the tables and figures summary.md shows or links (t2lesion.report);
        for a trial that failed validation only ``problems`` (its problems: the summary says
        why it was not analysed), and ``notes`` for the sections a trial cannot have."""
        out = {}
        for name in self.test_trials:
            if self.trials[name].problems:
                out[name] = {"problems": list(self.trials[name].problems)}
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
            else:
                files["notes"] = ["New and enlarging T2 lesions: not analysed, no subject has two visits"]
            if name in self.reviewed_trials():
                files["corrections"] = f"{REVIEW.format(trial=name)}/corrections.tsv"
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
                elif key not in ("problems", "notes"):  # text, not files
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
        if any(not self.trials[n].problems for n in self.test_trials) or self.train_trials:
            targets.append("results/report/summary.md")
        return targets
