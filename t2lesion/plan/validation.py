"""The plan's part for the validation study on known truth (docs/DESIGN.md §15, rules/validate.smk),
as a mixin of :class:`t2lesion.plan.Plan`: which trial the document is about, each validation
rule's inputs, and what the document's folder holds."""

from __future__ import annotations

import os
from pathlib import Path

from t2lesion.errors import InputError
from t2lesion.plan.paths import (
    FLAIR_XFM, MNI, NEW_LESION_TRUTH_TABLES, PRE, STATS, TRACK, VALIDATION_STUDY, VISIT_TABLE, mask_path,
)
from t2lesion.tracking import qc_name


class ValidationPlan:
    """Validation inputs and copies; uses the attributes :class:`Plan` sets."""

    def validation_trial(self) -> str:
        """``validation.trial``, or the first valid test trial with GT; an InputError (one line)
        when there is none or the named trial cannot be validated."""
        name = self.config.get("validation", {}).get("trial")
        ok = [n for n in self.test_trials if self.trials[n].gt_visits and not self.trials[n].problems]
        if name is None:
            if not ok:
                raise InputError("validation: no test trial with GT masks to validate (validation.trial)")
            return ok[0]
        if name not in ok:
            raise InputError(f"validation.trial: {name!r} is not a test trial with GT masks "
                             f"(candidates: {', '.join(ok) or 'none'})")
        return name

    def validation_paths(self, trial: str) -> dict[str, str]:
        """The validation rules' outputs of ``trial``."""
        v = VALIDATION_STUDY.format(trial=trial)
        return {"tlv_agreement": f"{v}/tlv_agreement.tsv", "uncertainty_visits": f"{v}/uncertainty_visits.tsv",
                "uncertainty": f"{v}/uncertainty.tsv", "detection_visits": f"{v}/new_lesion_detection_visits.tsv",
                "detection": f"{v}/new_lesion_detection.tsv", "truth": f"{v}/truth.tsv",
                **{f"new_lesion_truth_{k}": f"{v}/new_lesion_truth_{k}.tsv"
                   for k in NEW_LESION_TRUTH_TABLES},
                "lesion_types": f"{v}/lesion_types.tsv", "lesion_types_lesions": f"{v}/lesion_types_lesions.tsv",
                "change_response": f"{v}/change_response.tsv",
                "change_response_lesions": f"{v}/change_response_lesions.tsv"}

    def uncertainty_visits(self, trial: str) -> list[dict]:
        """Per GT visit of ``trial``: the U-Net's MI map and mask, the GT mask and brain mask on
        the MNI grid, and the U-Net's metrics table (its Dice); empty without ``unet``."""
        if "unet" not in self.sources:
            return []
        out = []
        for v in self.trials[trial].gt_visits:
            info = self.infer_visit(trial, v)
            pre = PRE.format(trial=trial, sub=v.sub, ses=v.ses)
            out.append({"id": info["id"], "mi": info["out_mi"], "mask": info["out_mask"],
                        "gt": mask_path(trial, v.sub, v.ses, "gt"), "brain_mask": f"{pre}_{MNI}_desc-brain_mask.nii.gz",
                        "dice_table": VISIT_TABLE.format(source="unet", trial=trial, sub=v.sub, ses=v.ses,
                                                         kind="visit")})
        return out

    def uncertainty_inputs(self, trial: str) -> list[str]:
        return [v[k] for v in self.uncertainty_visits(trial) for k in ("mi", "mask", "gt", "brain_mask", "dice_table")]

    def synthetic_truth(self, trial: str) -> str | None:
        """A synthetic trial's ``truth/params.json`` (None for a real trial)."""
        t = self.trials[trial]
        return f"{t.root}/truth/params.json" if t.synthetic is not None else None

    def truth_lesions(self, trial: str) -> str:
        """A synthetic trial's lesion truth, ``truth/lesions.tsv`` (the truth checks' input)."""
        return f"{self.trials[trial].root}/truth/lesions.tsv"

    def truth_inputs(self, trial: str) -> dict[str, str]:
        """Rule validation_truth's inputs: the truth and the effect tables it compares with."""
        truth = self.synthetic_truth(trial)
        if truth is None:
            raise InputError(f"validation: trial {trial!r} is not synthetic: it has no known truth")
        stats = STATS.format(trial=trial)
        out = {"truth": truth, "ancova": f"{stats}/ancova.tsv", "cox": f"{stats}/cox.tsv"}
        if self.has_new_lesions(trial):
            out["nb"] = f"{stats}/nb_rate_ratio.tsv"
        return out

    def new_lesion_truth_visits(self, trial: str) -> dict:
        """Rule validation_study_new_lesion_truth's inputs and their keys: the truth lesion table, per
        GT follow-up its tracking QC folder, QC map and FLAIR -> MNI transform, each subject's
        GT sessions, and the GT tracking's lesion tables of the subjects with follow-ups. Empty
        for a trial without truth or follow-ups."""
        t = self.trials[trial]
        if t.synthetic is None or not self.has_new_lesions(trial):
            return {}
        followups, qc_dirs, tracked, sessions = [], [], [], {}
        for sub, visits in sorted(self._tracked_by_subject(trial, "gt").items()):
            pid = f"sub-{sub}"
            sessions[pid] = [f"ses-{v.ses}" for v in visits]
            qc = f"{TRACK}/qc".format(source="gt", trial=trial, sub=sub)
            if len(visits) > 1:
                qc_dirs.append(qc)
                tracked.append(f"{TRACK}/sub-{{sub}}_lesions.tsv".format(source="gt", trial=trial, sub=sub))
            for v in visits[1:]:
                followups.append({"participant_id": pid, "session": f"ses-{v.ses}",
                                  "qc": f"{qc}/{qc_name(pid, f'ses-{v.ses}')}",
                                  "xfm": FLAIR_XFM.format(trial=trial, sub=sub, ses=v.ses)})
        return {"truth": self.truth_lesions(trial), "qc_dirs": qc_dirs, "followups": followups,
                "sessions": sessions, "tracked": tracked}

    def new_lesion_truth_inputs(self, trial: str) -> dict[str, object]:
        v = self.new_lesion_truth_visits(trial)
        if not v:
            raise InputError(f"validation: trial {trial!r} has no synthetic truth of new lesions (a synthetic "
                             "trial with >= 2 visits per subject)")
        return {"truth": v["truth"], "qc": v["qc_dirs"], "xfm": [f["xfm"] for f in v["followups"]],
                "tracked": v["tracked"]}

    def lesion_type_visits(self, trial: str) -> list[dict]:
        """Rule validation_study_lesion_types' visits: per GT visit of a clinical-profile synthetic trial
        its FLAIR -> MNI transform and the masks of GT and every source (empty otherwise: only that
        profile types its lesions)."""
        t = self.trials[trial]
        if t.synthetic is None or t.synthetic.get("profile", "default") != "clinical":
            return []
        return self._placement_visits(trial)

    def _placement_visits(self, trial: str) -> list[dict]:
        """Per GT visit: its FLAIR -> MNI transform and the masks of GT and every source in MNI."""
        return [{"participant_id": f"sub-{v.sub}", "session": f"ses-{v.ses}",
                 "xfm": FLAIR_XFM.format(trial=trial, sub=v.sub, ses=v.ses),
                 "masks": {s: mask_path(trial, v.sub, v.ses, s) for s in ["gt", *self.sources]}}
                for v in self.trials[trial].gt_visits]

    def change_response_visits(self, trial: str) -> list[dict]:
        """Rule validation_study_change_response's visits: those of a synthetic trial with follow-ups
        and at least one prediction source (as :meth:`lesion_type_visits`); empty otherwise."""
        t = self.trials[trial]
        if t.synthetic is None or not self.has_new_lesions(trial) or not len(self.sources):
            return []
        return self._placement_visits(trial)

    def change_response_inputs(self, trial: str) -> dict[str, object]:
        visits = self.change_response_visits(trial)
        if not visits:
            raise InputError(f"validation: trial {trial!r} has no synthetic truth of lesion change (a synthetic "
                             "trial with >= 2 visits per subject and a prediction source)")
        return {**self._placement_inputs(trial, visits), "participants": self.bids_file(trial, "participants.tsv")}

    def lesion_type_inputs(self, trial: str) -> dict[str, object]:
        visits = self.lesion_type_visits(trial)
        if not visits:
            raise InputError(f"validation: trial {trial!r} is not a synthetic trial of the clinical profile "
                             "(its lesions have no contrast type or location)")
        return self._placement_inputs(trial, visits)

    def _placement_inputs(self, trial: str, visits: list[dict]) -> dict[str, object]:
        """The input files of the rules over :meth:`_placement_visits`: the lesion truth, the
        visits' transforms and masks."""
        return {"truth": self.truth_lesions(trial), "xfm": [v["xfm"] for v in visits],
                "masks": [m for v in visits for m in v["masks"].values()]}

    def validation_discussion(self) -> list[str]:
        """The hand-written discussion (``validation.discussion``) as the document rule's input, when it exists."""
        path = self.config.get("validation", {}).get("discussion")
        return [path] if path and os.path.isfile(path) else []

    def validation_copies(self, trial: str | None = None) -> dict[str, str]:
        """What the document's folder holds: file name there -> file of the run. The validation
        tables of ``trial``, its combined Table 2, ANCOVA, Cox and negative-binomial tables, and
        the figures of its summary (QC pictures left out), each figure named by its folder so that
        equal names (every source's tlv_agreement.png) stay apart. ``trial`` None:
        :meth:`validation_trial`."""
        trial = self.validation_trial() if trial is None else trial
        if trial not in self.trials or trial not in self.test_trials:
            raise InputError(f"validation: {trial!r} is not a test trial of the config")
        val = self.validation_paths(trial)
        stats = STATS.format(trial=trial)
        out = {"tlv_agreement.tsv": val["tlv_agreement"], "ancova.tsv": f"{stats}/ancova.tsv",
               "cox.tsv": f"{stats}/cox.tsv"}
        table2 = self.table2_of(trial)
        if table2:
            out["table2.tsv"] = table2
        if self.uncertainty_visits(trial):
            out["uncertainty.tsv"] = val["uncertainty"]
        if self.has_new_lesions(trial):
            out["nb_rate_ratio.tsv"] = f"{stats}/nb_rate_ratio.tsv"
            if len(self.sources):
                out["new_lesion_detection.tsv"] = val["detection"]
        if self.synthetic_truth(trial):
            out["truth.tsv"] = val["truth"]
            if self.new_lesion_truth_visits(trial):
                for k in ("sizes", "floors", "enlarge_floors"):
                    out[f"new_lesion_truth_{k}.tsv"] = val[f"new_lesion_truth_{k}"]
            if self.lesion_type_visits(trial):
                out["lesion_types.tsv"] = val["lesion_types"]
            if self.change_response_visits(trial):
                out["change_response.tsv"] = val["change_response"]
        for heading, paths in self.summary_figures(trial).items():
            if heading.startswith("Preprocessing QC"):
                continue
            for p in paths:
                parts = Path(p).parts  # results/<stage>/[<source>/]trial-<t>/<name>.png
                prefix = "_".join(x for x in parts[1:-1] if not x.startswith("trial-"))
                out[f"{prefix}_{parts[-1]}"] = p
        return out


def config_label(configfiles, default) -> str:
    """The run's config file(s) as the document names them: relative to the working directory
    where they lie inside it, else as given; ``default`` (config.yaml beside the Snakefile) when
    no --configfile was given."""
    out = []
    for f in list(configfiles) or [default]:
        rel = os.path.relpath(f)
        out.append(Path(rel).as_posix() if not rel.startswith("..") else str(f))
    return " ".join(out)


__all__ = ["ValidationPlan", "config_label"]
