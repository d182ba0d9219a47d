"""Writing a trial: each visit's BIDS images, GT mask and truth images, and the tables
(participants, outcomes, dataset descriptions, truth/subjects|visits|lesions.tsv,
truth/params.json); layout in docs/CONTRACT.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from t2lesion.bids import MODALITIES, gt_mask_path, image_path
from t2lesion.synth import clinical as _cohort
from t2lesion.synth.acquisition import SynthVisit, _native_geometry
from t2lesion.synth.params import SynthParams
from t2lesion.synth.simulate import clinical_tables
from t2lesion.synth.template import _get_template

_FORMAT_VERSION = 1


def _write(arr: np.ndarray, visit: SynthVisit, path: Path) -> None:
    img = visit.to_image(arr)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), True)


def _truth_path(root: Path, pid: str, ses: str, desc: str) -> Path:
    return root / "truth" / pid / f"ses-{ses}" / f"{pid}_ses-{ses}_desc-{desc}.nii.gz"


def _write_visit(p: SynthParams, vis: SynthVisit, root: Path) -> None:
    bids = root / "bids"
    sub = vis.participant_id[4:]
    ses = vis.session
    for mod in MODALITIES:
        arr = vis.images[mod]
        if p.image_dtype == "int16":
            arr = np.clip(np.rint(arr), 0, 32767).astype(np.int16)
        _write(arr, vis, image_path(bids, sub, ses, mod))
    _write(vis.lesion_mask, vis, gt_mask_path(bids, sub, ses))
    _write(vis.brain_mask, vis, _truth_path(root, vis.participant_id, ses, "brain_mask"))
    for mod in MODALITIES:
        _write(vis.bias[mod], vis, _truth_path(root, vis.participant_id, ses, f"bias_{mod}"))
    _write(vis.lesion_labels.astype(np.int16), vis, _truth_path(root, vis.participant_id, ses, "lesions_dseg"))
    if vis.mimic_labels is not None:  # clinical profile: FLAIR-bright non-lesions (realism.MIMIC_KINDS)
        _write(vis.mimic_labels, vis, _truth_path(root, vis.participant_id, ses, "mimics_dseg"))


def _write_tables(p: SynthParams, root: Path, results: list[dict]) -> None:
    bids = root / "bids"
    truth = root / "truth"
    bids.mkdir(parents=True, exist_ok=True)
    truth.mkdir(parents=True, exist_ok=True)
    subjects = pd.DataFrame([r["subject"] for r in results])
    visits = pd.DataFrame([row for r in results for row in r["visits"]])
    ltabs = [tab for r in results for tab in r["lesions"] if len(tab)]
    lesions = pd.concat(ltabs, ignore_index=True) if ltabs else pd.DataFrame(columns=results[0]["lesions"][0].columns)
    # outcomes from the true Cox model, on the TLV realised in the baseline GT masks
    participants, _, outcomes = clinical_tables(p, dict(zip(subjects["participant_id"], subjects["tlv_bl_ml"])))
    subjects = subjects.merge(
        participants[["participant_id", "log_tlv", "age", "sex", "region", "edss_bl"]], on="participant_id"
    )
    cols = ["participant_id", "arm", "age", "sex", "region", "edss_bl"]
    if "site" in subjects:  # clinical profile: the scanner site of each participant
        participants = participants.merge(subjects[["participant_id", "site"]], on="participant_id")
        cols.append("site")
    participants[cols].to_csv(bids / "participants.tsv", sep="\t", index=False, float_format="%.10g")
    (bids / "phenotype").mkdir(exist_ok=True)
    outcomes.to_csv(bids / "phenotype" / "outcomes.tsv", sep="\t", index=False, float_format="%.10g")
    desc = {
        "Name": "t2lesion synthetic MS trial",
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "GeneratedBy": [{"Name": "t2lesion.synth"}],
    }
    (bids / "dataset_description.json").write_text(json.dumps(desc, indent=2) + "\n")
    dd = bids / "derivatives" / "lesions"
    dd.mkdir(parents=True, exist_ok=True)
    (dd / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "ground-truth T2 lesion masks",
                "BIDSVersion": "1.9.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "t2lesion.synth"}],
            },
            indent=2,
        )
        + "\n"
    )
    subjects.to_csv(truth / "subjects.tsv", sep="\t", index=False, float_format="%.10g")
    visits.to_csv(truth / "visits.tsv", sep="\t", index=False, float_format="%.10g")
    lesions.to_csv(truth / "lesions.tsv", sep="\t", index=False, float_format="%.10g")
    mimics = [row for r in results for row in r.get("mimics", [])]
    if mimics:
        pd.DataFrame(mimics).to_csv(truth / "mimics.tsv", sep="\t", index=False, float_format="%.10g")
    from t2lesion import __version__

    t = _get_template(p)
    n, vox, origin = _native_geometry(p)
    doc = {
        "generator": {"name": "t2lesion.synth", "version": __version__, "format": _FORMAT_VERSION},
        "params": p.to_dict(),
        "true_coefficients": _cohort.true_coefficients(p.cohort),
        "derived": {
            "native_size_xyz": [int(x) for x in n],
            "native_spacing_mm": [float(x) for x in vox],
            "native_origin_lps_mm": [float(x) for x in origin],
            "subject_space": "padded MNI152 2009 grid (nilearn), LPS mm; x_subject = native_to_subject @ [x_native, 1]",
            "subject_grid_origin_lps_mm": [float(x) for x in t.origin],
            "subject_grid_spacing_mm": t.res,
            "subject_grid_size_xyz": [int(x) for x in t.shape[::-1]],
            "brain_centre_subject_mm": [float(x) for x in t.brain_centre],
            "realised_baseline_tlv_ml_median": float(subjects["tlv_bl_ml"].median()),
            "target_baseline_tlv_ml_median": float(subjects["tlv_bl_target_ml"].median()),
        },
    }
    if p.profile == "clinical":  # every knob of the profile, the sites included
        from t2lesion.synth.realism_settings import knobs

        doc["realism"] = knobs(p)
    (truth / "params.json").write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
