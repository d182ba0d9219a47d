"""File-level entry points of the evaluation stage, called by ``workflow_scripts/metrics_*.py``
(and, for the lesion load, by the segmentation and inference scripts) (docs/DESIGN.md §8).

Read masks (NIfTI, :mod:`t2lesion.io`) and per-visit tables (TSV), compute with
:mod:`t2lesion.evaluation.segmentation` and :mod:`t2lesion.evaluation.table2`, and write
TSVs and, through :mod:`t2lesion.plots.segmentation_figs`, the figures.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from t2lesion import io
from t2lesion.errors import InputError
from t2lesion.evaluation.segmentation import (CONNECTIVITY, DEFAULT_SIZE_GROUPS, MIN_SIZE, PARAM_COLUMNS,
                                              assign_size_groups, evaluate_visit, lesion_load)
from t2lesion.evaluation.table2 import (TABLE2_ROWS, correlation_table, isbi2015_scores,
                                        size_group_table, table2)

log = logging.getLogger(__name__)

#: File names written by :func:`run_dataset` inside its output folder.
DATASET_OUTPUTS = {
    "visits": "visits.tsv",
    "lesions": "lesions.tsv",
    "size_groups": "size_groups.tsv",
    "table2": "table2.tsv",
    "correlation": "correlation.tsv",
    "fig_tlv": "tlv_agreement.png",
    "fig_size_groups": "size_groups.png",
}

_SESSION = re.compile(r"^(?:ses-)?w(\d+)$")


def week_from_session(session: str) -> int:
    """Week number of a session label ``ses-wNNN`` (or ``wNNN``)."""
    m = _SESSION.match(str(session))
    if not m:
        raise InputError(f"session {session!r}: expected 'ses-w<NNN>' (week number)")
    return int(m.group(1))


# --------------------------------------------------------------------------- path-level entry points


def _write_tsv(df: pd.DataFrame, path: str | Path) -> None:
    io.write_tsv(df, path, na_rep="n/a")


def _read_mask(path: str | Path):
    arr, img = io.read_array(path, dtype=np.float32)
    bad = (arr < 0) | ((arr > 0) & (arr < 1)) | (arr != np.round(arr))
    if bad.any():
        raise InputError(f"{path}: not a binary/label mask ({int(bad.sum())} voxels neither 0 nor a "
                         f"positive integer; a probability map must be thresholded first)")
    return arr > 0, img


def run_visit(gt_mask_path, pred_mask_path, out_visit_tsv, out_lesions_tsv, participant_id: str,
              session: str, **params) -> dict:
    """Evaluate one visit's predicted mask against its GT mask and write two TSVs.

    Reads both masks with :mod:`t2lesion.io` and requires the same geometry (size,
    spacing, origin, direction), else :class:`InputError` naming both files. The
    voxel volume (mL) comes from the GT header. ``params`` are those of
    :func:`evaluate_visit`. Writes one row to ``out_visit_tsv`` (participant_id,
    session, week, metrics, parameters) and the per-lesion table to
    ``out_lesions_tsv``. Returns the visit row.
    """
    week = week_from_session(session)
    gt, gimg = _read_mask(gt_mask_path)
    pred, pimg = _read_mask(pred_mask_path)
    if not io.same_geometry(gimg, pimg):
        raise InputError(
            f"{pred_mask_path}: geometry differs from GT mask {gt_mask_path} "
            f"(size {pimg.GetSize()} vs {gimg.GetSize()}, spacing {tuple(round(s, 4) for s in pimg.GetSpacing())} "
            f"vs {tuple(round(s, 4) for s in gimg.GetSpacing())}, origin/direction checked too)")
    row, lesions = evaluate_visit(gt, pred, io.voxel_volume_ml(gimg), **params)
    ids = {"participant_id": participant_id, "session": session, "week": week}
    row = {**ids, **row}
    lesions.insert(0, "participant_id", participant_id)
    lesions.insert(1, "session", session)
    _write_tsv(pd.DataFrame([row]), out_visit_tsv)
    _write_tsv(lesions, out_lesions_tsv)
    log.info("%s %s: DC %.3f LTPR %.3f LFPR %.3f, %d GT / %d predicted lesions", participant_id, session,
             row["dc"], row["ltpr"], row["lfpr"], row["gt_tlc"], row["pred_tlc"])
    return row


VOLUME_COLUMNS = ("participant_id", "session", "week", "tlv_ml", "tlc", "voxels", "voxel_ml")


def run_volume(mask_path, out_tsv, participant_id: str, session: str, *, connectivity: int = CONNECTIVITY,
               min_size: int = MIN_SIZE, clean_voxel_metrics: bool = False, extra: dict | None = None) -> dict:
    """Lesion load (TLV, TLC) of one visit's mask from any source, GT or prediction; one-row TSV.

    Needs no ground truth: this is the per-visit volume table that the endpoint
    statistics read, for every source and every visit: written by the job that writes the
    mask (rules ``segment_classical``, ``infer_*``) or, for the GT, by ``metrics_visit``.
    ``extra``: more columns after :data:`VOLUME_COLUMNS` (the U-Net's ``threshold``).
    """
    mask, img = _read_mask(mask_path)
    voxel_ml = io.voxel_volume_ml(img)
    load = lesion_load(mask, voxel_ml, connectivity=connectivity, min_size=min_size,
                       clean_voxel_metrics=clean_voxel_metrics)
    row = {"participant_id": participant_id, "session": session, "week": week_from_session(session),
           **load, "voxel_ml": voxel_ml}
    row.update(extra or {})
    _write_tsv(pd.DataFrame([row], columns=[*VOLUME_COLUMNS, *(extra or {})]), out_tsv)
    log.info("%s %s: TLV %.3f mL, TLC %d (%s)", participant_id, session, row["tlv_ml"], row["tlc"], mask_path)
    return row


VISIT_REQUIRED = ("participant_id", "session", "week", *(c for _, _, c in TABLE2_ROWS), *PARAM_COLUMNS)
LESION_REQUIRED = ("participant_id", "session", "kind", "n_voxels", "matched", "false_positive", "lesion_dc")


def _read_tables(paths: Iterable, what: str, required: Sequence[str]) -> pd.DataFrame:
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError(f"no {what} tables given")
    frames, problems = [], []
    for p in paths:
        try:
            df = pd.read_csv(p, sep="\t", na_values=["n/a"], dtype={"participant_id": str, "session": str})
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            problems.append(f"{p}: cannot be read as a TSV ({type(exc).__name__})")
            continue
        missing = [c for c in required if c not in df.columns]
        if missing:
            problems.append(f"{p}: missing columns {missing}")
        frames.append(df)
    if problems:
        raise InputError(problems, header=f"unreadable {what} tables:")
    # Header-only tables (visits without lesions) would only blur the column dtypes.
    return pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)


def dataset_outputs(out_dir: str | Path) -> dict[str, Path]:
    """Paths :func:`run_dataset` writes under ``out_dir`` (keys of :data:`DATASET_OUTPUTS`)."""
    return {k: Path(out_dir) / v for k, v in DATASET_OUTPUTS.items()}


def run_dataset(visit_tsvs: Sequence, lesion_tsvs: Sequence, out_dir: str | Path, *, source: str, trial: str,
                size_groups=DEFAULT_SIZE_GROUPS, isbi_score: bool = False, confidence: float = 0.95,
                outputs: Mapping[str, str | Path] | None = None) -> dict[str, Path]:
    """Per-dataset tables and figures for one mask source of one trial.

    Reads the per-visit TSVs of :func:`run_visit` and writes (names in
    :data:`DATASET_OUTPUTS`, or explicit paths in ``outputs`` by the same keys):
    ``visits.tsv`` (all visits, + source, trial, and isbi_score when asked),
    ``lesions.tsv``, ``size_groups.tsv`` (:func:`size_group_table`), ``table2.tsv``
    (:func:`table2`), ``correlation.tsv`` (:func:`correlation_table`) and the
    figures ``tlv_agreement.png`` (scatter + Bland–Altman of TLV) and
    ``size_groups.png`` (Fig. 3a–c style bars). Visits evaluated with different
    parameters, or duplicated, raise :class:`InputError`. Returns the paths.
    """
    from t2lesion.plots import segmentation_figs as plots  # matplotlib only when figures are made

    paths = dataset_outputs(out_dir)
    paths.update({k: Path(v) for k, v in (outputs or {}).items()})
    unknown = set(outputs or {}) - set(DATASET_OUTPUTS)
    if unknown:
        raise InputError(f"unknown output keys {sorted(unknown)}; known: {sorted(DATASET_OUTPUTS)}")
    visits = _read_tables(visit_tsvs, "visit", VISIT_REQUIRED)
    lesions = _read_tables(lesion_tsvs, "lesion", LESION_REQUIRED)
    lesions[["matched", "false_positive"]] = lesions[["matched", "false_positive"]].astype(bool)
    keys = ["participant_id", "session"]
    dup = visits[visits.duplicated(keys, keep=False)]
    if len(dup):
        raise InputError([f"{a} {b}: visit given more than once" for a, b in dup[keys].drop_duplicates().values],
                         header="duplicate visits:")
    problems = []
    for col in PARAM_COLUMNS:
        vals = visits[col].astype(str).unique()
        if len(vals) > 1:
            problems.append(f"{col}: visits were evaluated with different values {sorted(vals)}")
    if problems:
        raise InputError(problems, header="visit tables mix metric parameters (re-run the stale visits):")

    visits = visits.sort_values(["participant_id", "week"], kind="stable").reset_index(drop=True)
    visits.insert(0, "source", source)
    visits.insert(1, "trial", trial)
    if isbi_score:
        visits["isbi_score"] = isbi2015_scores(visits)
    lesions.insert(0, "source", source)
    lesions.insert(1, "trial", trial)
    lesions["size_group"] = assign_size_groups(lesions["n_voxels"], size_groups)
    groups = size_group_table(lesions, visits, size_groups)
    t2 = table2(visits, isbi_score=isbi_score, confidence=confidence)
    corr = correlation_table(visits, confidence)
    for tab in (groups, t2, corr):
        tab.insert(0, "source", source)
        tab.insert(1, "trial", trial)

    title = f"trial-{trial}, source {source}"
    plots.plot_agreement(visits["gt_tlv_ml"], visits["pred_tlv_ml"], paths["fig_tlv"],
                         quantity="TLV", unit="mL", title=title)
    plots.plot_size_groups({f"{trial} / {source}": groups}, paths["fig_size_groups"], title=title)
    _write_tsv(visits, paths["visits"])
    _write_tsv(lesions, paths["lesions"])
    _write_tsv(groups, paths["size_groups"])
    _write_tsv(t2, paths["table2"])
    _write_tsv(corr, paths["correlation"])
    log.info("%s: %d visits, %d lesion rows; DC %s", title, len(visits), len(lesions),
             t2.loc[t2["column"] == "dc", "summary"].iloc[0])
    return paths


def run_compare(dataset_dirs: Mapping[str, str | Path], out_table2: str | Path, out_size_groups_png: str | Path,
                out_tlv_png: str | Path, *, trial: str) -> pd.DataFrame:
    """The sources of one trial side by side: Table 2 with one block of rows per source, and the
    size-group bars and TLV agreement of every source in one figure each.

    ``dataset_dirs`` maps each source to the folder :func:`run_dataset` wrote for it.
    """
    from t2lesion.plots import segmentation_figs as plots

    tables, groups, visits = [], {}, {}
    for source, folder in dataset_dirs.items():
        paths = dataset_outputs(folder)
        tables.append(pd.read_csv(paths["table2"], sep="\t"))
        groups[source] = pd.read_csv(paths["size_groups"], sep="\t")
        visits[source] = pd.read_csv(paths["visits"], sep="\t")
    t2 = pd.concat(tables, ignore_index=True)
    _write_tsv(t2, out_table2)
    title = f"trial-{trial}: " + " vs ".join(dataset_dirs)
    plots.plot_size_groups(groups, out_size_groups_png, title=title)
    plots.plot_agreement_sources(visits, out_tlv_png, title=title)
    for source in dataset_dirs:
        dc = t2.loc[(t2["source"] == source) & (t2["column"] == "dc"), "summary"]
        log.info("%s: DC %s", source, dc.iloc[0] if len(dc) else "n/a")
    return t2
