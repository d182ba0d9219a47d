"""The plan's part for readers (docs/DESIGN.md §14): the review queue's inputs and the
readers' corrections (the ``reviewed`` source), as a mixin of :class:`t2lesion.plan.Plan`."""

from __future__ import annotations

import functools
from pathlib import Path

from t2lesion.bids import Visit

from t2lesion.plan.paths import (
    CORRECTION_STATUS, FLAIR_XFM, LOGS, MNI, PRE, PRED, REVIEW, REVIEW_VISIT, REVIEWED_TRAINING_MASK, STATS, UNET_OUTPUTS,
    mask_path, visit_paths, wildcard_alternatives,
)

#: How many left-out visits the start-up warning of a ``training_masks: reviewed`` trial names.
LEFT_OUT_NAMED = 20


class ReviewPlan:
    """Review queue, bundles and corrections; uses the attributes :class:`Plan` sets."""

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
        native mask, probability and MI maps, the composed FLAIR -> MNI transform and the
        visit's FLAIR and T2w -> T1w coregistration (rule review_bundles; only with ``unet``
        among the sources)."""
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
            "flair_to_t1w": visit_paths(f"{PRE}_from-FLAIR_to-T1w_xfm.tfm", trial, visits),
            "t2w_to_t1w": visit_paths(f"{PRE}_from-T2w_to-T1w_xfm.tfm", trial, visits),
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
        if "reviewed" not in self.sources and "unet" in self.sources:  # corrections that nothing reads
            for trial in self.test_trials:
                if not self.trials[trial].problems and self.corrections(trial):
                    out.append(f"trial {trial}: {len(self.corrections(trial))} reader correction(s) under "
                               f"derivatives/lesions-reviewed/, unused: add 'reviewed' to sources to apply them")
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

    # ------------------------------------------------------------------ corrections as training masks

    def training_masks(self, trial: str) -> str:
        """What a trial trains on (``trials.<t>.training_masks``): ``manual`` (its BIDS GT masks)
        or ``reviewed`` (its readers' masks under derivatives/lesions-reviewed/)."""
        return (self.config["trials"][trial] or {}).get("training_masks", "manual")

    @property
    def reviewed_training_trials(self) -> str:
        """Rule reviewed_training_mask's trial constraint: the train trials that train on reviewed masks."""
        return wildcard_alternatives(n for n in self.train_trials if self.training_masks(n) == "reviewed")

    @functools.cache
    def training_visits(self, trial: str) -> tuple[Visit, ...]:
        """The visits a train trial trains and calibrates on: those with a GT mask (``manual``),
        or those with a reviewed mask (``reviewed``; the others are left out, one warning at
        start, :meth:`training_warnings`). An InputError naming the trial when ``reviewed`` finds
        no reviewed mask at all."""
        from t2lesion.corrections import REVIEWED_FOLDER
        from t2lesion.errors import InputError

        t = self.trials[trial]
        if self.training_masks(trial) != "reviewed":
            return t.gt_visits
        found = self.corrections(trial)
        visits = tuple(v for v in t.visits if v in found)
        if t.visits and not visits:
            example = next(iter(self.correction_paths(trial).values()))
            raise InputError(f"trial {trial!r}: training_masks: reviewed, but none of its {len(t.visits)} visits has a "
                             f"reviewed mask under {t.bids / REVIEWED_FOLDER} (e.g. {example}); add them, or set "
                             f"training_masks: manual")
        return visits

    def training_mask(self, trial: str, sub: str, ses: str) -> str:
        """The MNI mask a training visit's patch store and calibration read: the GT carried into
        MNI (``manual``) or the reader's mask carried into MNI (``reviewed``)."""
        if self.training_masks(trial) == "reviewed":
            return REVIEWED_TRAINING_MASK.format(trial=trial, sub=sub, ses=ses)
        return mask_path(trial, sub, ses, "gt")

    def reviewed_training_inputs(self, trial: str, sub: str, ses: str) -> dict[str, str]:
        """Rule reviewed_training_mask's inputs: the visit's reviewed mask (and its JSON sidecar
        where it exists), its raw FLAIR (the grid the mask must lie on), the composed
        FLAIR -> MNI transform and the MNI grid (the visit's MNI brain mask)."""
        v = Visit(sub, ses)
        pre = PRE.format(trial=trial, sub=sub, ses=ses)
        # where it is missing, Snakemake names the file it expected
        corr = self.correction_paths(trial).get(v, f"<sub-{sub} ses-{ses}: no visit of trial {trial}>")
        out = {"correction": corr, "flair": str(self.trials[trial].image(v, "FLAIR")),
               "xfm": FLAIR_XFM.format(trial=trial, sub=sub, ses=ses), "grid": f"{pre}_{MNI}_desc-brain_mask.nii.gz"}
        sidecar = corr.replace(".nii.gz", ".json")
        if sidecar != corr and Path(sidecar).is_file():
            out["sidecar"] = sidecar
        return out

    def training_warnings(self) -> list[str]:
        """At start: per ``training_masks: reviewed`` train trial, one line naming how many and
        which visits have no reviewed mask (left out of training), and the masks under its
        lesions-reviewed/ that name no visit; a test trial's setting is ignored, one line. An
        InputError (:meth:`training_visits`) when such a trial has no reviewed mask at all."""
        from t2lesion.corrections import unmatched_corrections

        out = []
        for name in self.trials:
            if self.training_masks(name) != "reviewed":
                continue
            t = self.trials[name]
            if t.role != "train":
                out.append(f"trial {name!r}: training_masks: reviewed applies to role: train trials only; ignored")
                continue
            if t.problems:
                continue
            kept = set(self.training_visits(name))
            left = [v.prefix for v in t.visits if v not in kept]
            if left:
                shown = ", ".join(left[:LEFT_OUT_NAMED]) + (
                    f", ... and {len(left) - LEFT_OUT_NAMED} more" if len(left) > LEFT_OUT_NAMED else "")
                out.append(f"trial {name!r}: training_masks: reviewed: {len(left)} of {len(t.visits)} visits have no "
                           f"reviewed mask and are left out of training: {shown}")
            out += unmatched_corrections(t.bids, self.correction_paths(name).values(), name)
        return out
