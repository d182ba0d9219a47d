"""Path-level entry points of the validation rules (rules/validate.smk, docs/DESIGN.md §15).

Each reads the workflow's files, calls the pure analyses of this package and writes one or two
TSVs; the document rule then copies what docs/VALIDATION.md needs into one folder and writes it
(:func:`run_document`). Nothing here knows the workflow's layout: the paths come from
:mod:`t2lesion.plan.validation`.

* :func:`run_tlv_agreement`: the stats stage's ``tlv_long.tsv`` -> ``tlv_agreement.tsv``;
* :func:`run_uncertainty`: per GT visit the U-Net's MI map, mask, GT mask, brain mask and Dice
  -> per-visit rows and the one-row ``uncertainty.tsv``;
* :func:`run_detection`: the tracking QC maps of GT and each source (label 1 = new lesion)
  -> per-visit counts and ``new_lesion_detection.tsv``;
* :func:`truth_table`: the synthetic generator's known effects (``truth/params.json``) beside
  every source's estimate from the ANCOVA, Cox and negative-binomial tables -> ``truth.tsv``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from t2lesion import io
from t2lesion.errors import InputError
from t2lesion.tracking import QC_LABELS
from t2lesion.validation.document import read_result_tsv

log = logging.getLogger(__name__)

#: Columns of :func:`truth_table`.
TRUTH_COLUMNS = ["quantity", "term", "detail", "truth", "source", "endpoint", "estimate", "ci_low", "ci_high",
                 "covered", "note"]


def _write(table: pd.DataFrame, path) -> None:
    io.write_tsv(table, path, na_rep="n/a", float_format="%.10g")


# --------------------------------------------------------------------------- TLV agreement


def run_tlv_agreement(tlv_long_tsv, out_tsv, *, confidence: float = 0.95) -> pd.DataFrame:
    """:func:`t2lesion.validation.agreement.tlv_agreement_table` of a ``tlv_long.tsv``."""
    from t2lesion.validation.agreement import tlv_agreement_table

    visits = read_result_tsv(tlv_long_tsv, dtype={"participant_id": str, "session": str, "source": str})
    try:
        table = tlv_agreement_table(visits, confidence=confidence)
    except ValueError as exc:
        raise InputError(f"{tlv_long_tsv}: {exc}") from None
    _write(table, out_tsv)
    for r in table.itertuples():
        log.info("%s: ICC(2,1) %.3f, ICC(3,1) %.3f, bias %.3f mL (%.1f %% of GT) over %d visits",
                 r.source, r.icc21, r.icc31, r.bias, r.bias_pct_gt, r.n)
    return table


# --------------------------------------------------------------------------- uncertainty


def run_uncertainty(visits: list[dict], out_visits_tsv, out_summary_tsv, *, source: str = "unet") -> pd.DataFrame:
    """Per visit (dicts with ``id``, ``mi``, ``mask``, ``gt``, ``brain_mask``, ``dice_table``),
    :func:`t2lesion.validation.uncertainty.visit_uncertainty` on the MNI grid and the visit's
    Dice from its metrics table; then :func:`~t2lesion.validation.uncertainty.uncertainty_summary`
    with a ``source`` column. Returns the summary."""
    from t2lesion.validation.uncertainty import uncertainty_summary, visit_uncertainty

    rows = []
    for k, v in enumerate(visits, 1):
        arrays = {}
        for key in ("mi", "mask", "gt", "brain_mask"):
            arrays[key], img = io.read_array(v[key], np.float32)
            if key == "mi":
                ref, ref_path = img, v[key]
            elif not io.same_geometry(ref, img):
                raise InputError(f"{v[key]}: geometry differs from the MI map {ref_path}")
        dice = read_result_tsv(v["dice_table"])
        if "dc" not in dice.columns or len(dice) != 1:
            raise InputError(f"{v['dice_table']}: expected one visit row with a 'dc' column")
        row = visit_uncertainty(arrays["mi"], arrays["mask"], arrays["gt"], arrays["brain_mask"])
        rows.append({"id": v["id"], **row, "dc": float(dice["dc"].iloc[0])})
        log.info("[%d/%d] %s: AUROC %.3f, mean MI %.4g, %d error voxels", k, len(visits), v["id"], row["auroc"],
                 row["mean_mi"], row["n_errors"])
    if not rows:
        raise InputError("uncertainty: no visit with GT and a U-Net prediction")
    per_visit = pd.DataFrame(rows)
    _write(per_visit, out_visits_tsv)
    summary = uncertainty_summary(per_visit)
    summary.insert(0, "source", source)
    _write(summary, out_summary_tsv)
    return summary


# --------------------------------------------------------------------------- new-lesion detection

#: QC labels of new lesions: counted, and below the size floor (not counted).
NEW_LABELS = (QC_LABELS["new"], QC_LABELS["new_small"])


def run_detection(qc_dirs: list[str], sources: list[str], out_visits_tsv, out_table_tsv, *,
                  new_labels: tuple[int, ...] = NEW_LABELS, **params) -> pd.DataFrame:
    """New-lesion detection of every non-GT source against GT, per follow-up visit.

    ``qc_dirs``/``sources``: the tracking QC folders (``.../sub-<id>/qc``) and their sources,
    as :meth:`t2lesion.plan.Plan.tracking_outputs` gives them; each GT follow-up's QC map is
    paired with the source's map of the same name. Their new lesions (``new_labels``: counted,
    and below the count's size floor ``lesions.new_min_voxels``, so that detection by size does
    not depend on the floor) are compared with :func:`t2lesion.validation.detection.detect_visit` (``params``:
    bins, min_size, overlap, connectivity). A GT map without the source's twin is an error
    naming it."""
    from t2lesion.validation.detection import detect_visit, detection_table

    folder = {(src, Path(d).parent.name): Path(d) for src, d in zip(sources, qc_dirs)}
    gt_dirs = sorted(d for (src, _), d in folder.items() if src == "gt")
    if not gt_dirs:
        raise InputError("new-lesion detection needs the 'gt' source's tracking QC maps")
    others = list(dict.fromkeys(s for s in sources if s != "gt"))
    bins = params.pop("bins", None)
    kw = {} if bins is None else {"bins": [tuple(b) for b in bins]}
    frames = []
    for gdir in gt_dirs:
        sub = gdir.parent.name
        for gpath in sorted(gdir.glob("*.nii.gz")):
            g, _ = io.read_array(gpath, np.int16)
            for src in others:
                spath = folder.get((src, sub), Path(f"<no {src} tracking of {sub}>")) / gpath.name
                if not spath.is_file():
                    raise InputError(f"{spath}: no {src} QC map for GT's {gpath}")
                s, _ = io.read_array(spath, np.int16)
                if s.shape != g.shape:
                    raise InputError(f"{spath}: shape {s.shape} differs from GT's {gpath} {g.shape}")
                d = detect_visit(np.isin(g, new_labels), np.isin(s, new_labels), **kw, **params)
                d.insert(0, "visit", gpath.name.split("_space-")[0])
                d.insert(0, "source", src)
                frames.append(d)
    visits = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["source", "visit", "bin", "size_low", "size_high", "n_gt", "n_gt_detected", "n_pred", "n_pred_tp"])
    _write(visits, out_visits_tsv)
    table = detection_table(visits, **params)
    _write(table, out_table_tsv)
    for r in table[table["bin"] == "all"].itertuples():
        log.info("%s: %d/%d GT new lesions detected, %d/%d predicted true, F1 %.3f", r.source, r.n_gt_detected,
                 r.n_gt, r.n_pred_tp, r.n_pred, r.f1)
    return table


# --------------------------------------------------------------------------- known truth


def _rows(table: pd.DataFrame | None, mask) -> pd.DataFrame:
    return table[mask(table)] if table is not None and len(table) else pd.DataFrame()


def truth_table(params_json, *, ancova: pd.DataFrame | None = None, cox: pd.DataFrame | None = None,
                nb: pd.DataFrame | None = None) -> pd.DataFrame:
    """The generator's known effects beside each source's estimate (columns :data:`TRUTH_COLUMNS`).

    From ``truth/params.json`` (``true_coefficients``, ``params``) of a synthetic trial:

    * ``ancova_arm_effect_pct``: treated minus control mean % change of TLV at each follow-up
      week (ANCOVA arm term, term_type ``arm``, per week);
    * ``cox_hr`` of ``log_tlv`` and of each ``arm_<ARM>``: the correctly specified model is the
      multivariable one, so only the Cox rows of model ``multivariable`` are compared (every
      endpoint);
    * ``new_lesion_rate_ratio_treated``: the generator's rate ratio of *new* lesions; the
      endpoint counts new **and enlarging** lesions, so the negative-binomial rate ratio is
      compared with it only approximately (``note``).

    ``covered``: the truth lies inside the estimate's CI (True/False; n/a without a CI). A
    truth row without an estimate (table absent) keeps source n/a.
    """
    try:
        doc = json.loads(Path(params_json).read_text())
        coef, p = doc["true_coefficients"], doc["params"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{params_json}: not a synthetic trial's truth/params.json ({exc})") from None
    rows: list[dict] = []

    def add(quantity, term, detail, truth, est: pd.DataFrame, col, lo, hi, endpoint_col=None, note=""):
        if not len(est):
            rows.append({"quantity": quantity, "term": term, "detail": detail, "truth": truth, "note": note})
            return
        for r in est.itertuples():
            e, a, b = (float(getattr(r, c)) if pd.notna(getattr(r, c)) else math.nan for c in (col, lo, hi))
            cov = (a <= truth <= b) if math.isfinite(a) and math.isfinite(b) else None
            rows.append({"quantity": quantity, "term": term, "detail": detail, "truth": truth, "source": r.source,
                         "endpoint": getattr(r, endpoint_col) if endpoint_col else "", "estimate": e, "ci_low": a,
                         "ci_high": b, "covered": cov, "note": note})

    for arm, by_week in sorted(coef.get("ancova_arm_effect_pct", {}).items()):
        for week, truth in sorted(by_week.items(), key=lambda kv: int(kv[0])):
            if int(week) == 0:
                continue
            est = _rows(ancova, lambda t: (t["term_type"] == "arm") & (t["term"] == f"arm_{arm}")
                        & (pd.to_numeric(t["week"]) == int(week)))
            add("ANCOVA arm effect (% change in TLV)", f"arm_{arm}", f"week {int(week)}", float(truth), est,
                "estimate", "ci_low", "ci_high")
    hr = coef.get("cox_hr", {})
    for term in ["log_tlv"] + sorted(k for k in hr if k.startswith("arm_") and "_x_" not in k):
        if term not in hr:
            continue
        est = _rows(cox, lambda t: (t["model"] == "multivariable") & (t["term"] == term))
        add("Cox hazard ratio (multivariable)", term, "every endpoint", float(hr[term]), est, "hr", "hr_ci_low",
            "hr_ci_high", endpoint_col="endpoint")
    rr = p.get("new_lesion_rate_ratio_treated")
    if rr is not None:
        arms = p.get("arms") or []
        for arm in arms[1:] or [""]:
            est = _rows(nb, lambda t: (t["term_type"] == "arm") & (t["term"] == f"arm_{arm}")
                        & (t["model"] == "negative_binomial"))
            add("new-lesion rate ratio (negative binomial)", f"arm_{arm}", "treated vs control", float(rr), est,
                "rate_ratio", "ci_low", "ci_high",
                note="truth: new lesions only; the endpoint counts new and enlarging lesions")
    return pd.DataFrame(rows).reindex(columns=TRUTH_COLUMNS)


def run_truth(params_json, out_tsv, *, ancova_tsv=None, cox_tsv=None, nb_tsv=None) -> pd.DataFrame:
    """:func:`truth_table` from the files (an absent table: no estimates of its kind)."""
    tabs = {k: (read_result_tsv(v) if v else None) for k, v in (("ancova", ancova_tsv), ("cox", cox_tsv), ("nb", nb_tsv))}
    table = truth_table(params_json, **tabs)
    _write(table, out_tsv)
    return table


# --------------------------------------------------------------------------- the document


def git_commit(path) -> str:
    """``git rev-parse HEAD`` of the checkout holding ``path``; "unknown" outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=str(path), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else "unknown"


def run_document(copies: dict[str, str], folder, out_md, *, commit: str, config: str,
                 discussion_md=None) -> str:
    """Copy ``copies`` (name in ``folder`` -> file) into ``folder`` (emptied first), record the
    commit and config there (:data:`t2lesion.validation.document.RUN_FILE`) and write ``out_md``
    from the folder (:func:`t2lesion.validation.document.rebuild`; figures linked relative to the
    document, the hand-written ``discussion_md`` added where it exists)."""
    from t2lesion.validation.document import RUN_FILE, rebuild

    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name, src in sorted(copies.items()):
        shutil.copyfile(src, folder / name)
    (folder / RUN_FILE).write_text(json.dumps({"commit": commit, "config": config}, indent=1) + "\n",
                                   encoding="utf-8")
    text = rebuild(folder, out_md, discussion_md)
    log.info("%s: written from %d files in %s (commit %s)", out_md, len(copies), folder, commit)
    return text


__all__ = ["TRUTH_COLUMNS", "git_commit", "run_detection", "run_document", "run_tlv_agreement", "run_truth",
           "run_uncertainty", "truth_table"]
