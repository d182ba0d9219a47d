"""Readers' corrections flowing back in: the ``reviewed`` source (docs/DESIGN.md §14).

A reader corrects a visit's U-Net mask in its native FLAIR space (the review bundle) and saves
it under the trial's ``derivatives/lesions-reviewed/``, at the path of the visit's raw FLAIR
with ``_FLAIR.nii[.gz]`` replaced by ``_space-FLAIR_desc-lesion_mask.nii.gz``, with a JSON
sidecar (same name, ``.json``) that records the rater (``Rater``).

The ``reviewed`` source is the U-Net mask with every available correction applied, on the MNI
grid the endpoints use (:func:`apply_correction`): the reader's edits — voxels added
(correction and not the native U-Net mask), carried into MNI as the GT mask is
(``preprocess.gt_interpolation``, then ≥ 0.5), and voxels removed (the native U-Net mask and
not the correction), carried by nearest neighbour so that an erased lesion leaves no rim —
are applied to the U-Net's MNI mask. A correction equal to the native mask
changes nothing, and no voxel the reader left alone moves through a round trip of grids.

A correction on another grid than the visit's FLAIR, or with values other than 0 and 1, is
rejected with one line naming the file: the visit keeps its U-Net mask and the rest of the run
goes on (:func:`run_apply_review`). A correction that names no visit is one warning at start
(:func:`unmatched_corrections`).

A ``role: train`` trial with ``training_masks: reviewed`` trains on its readers' masks instead
of its GT: each carried whole into MNI as the GT mask is (:func:`run_training_mask`); there a
bad mask stops its job with the same line, since the visit has no other training mask.

Public API: :data:`REVIEWED_FOLDER`, :func:`correction_path`, :func:`unmatched_corrections`,
:func:`check_correction`, :func:`apply_correction`, :func:`run_apply_review`, :func:`run_training_mask`,
:func:`endpoint_changes`, :func:`run_endpoint_changes`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from t2lesion import io
from t2lesion.logs import tell_user

log = logging.getLogger(__name__)

REVIEWED_FOLDER = "derivatives/lesions-reviewed"
SUFFIX = "_space-FLAIR_desc-lesion_mask.nii.gz"
STATUS_COLUMNS = ["participant_id", "session", "correction", "rater", "status", "added_voxels", "removed_voxels",
                  "unet_tlv_ml", "reviewed_tlv_ml"]


def correction_path(bids: str | Path, flair: str | Path) -> Path:
    """Where a reader's correction of a visit lies: the raw FLAIR's path inside the BIDS folder,
    under ``derivatives/lesions-reviewed/``, named ``..._space-FLAIR_desc-lesion_mask.nii.gz``."""
    bids, flair = Path(bids), Path(flair)
    try:
        rel = flair.relative_to(bids)
    except ValueError:
        rel = Path(flair.name)
    name = rel.name
    for ext in ("_FLAIR.nii.gz", "_FLAIR.nii"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return bids / REVIEWED_FOLDER / rel.parent / f"{name}{SUFFIX}"


def unmatched_corrections(bids: str | Path, expected: Sequence[str | Path], trial: str) -> list[str]:
    """One warning line per mask under ``derivatives/lesions-reviewed/`` that is no visit's
    correction path (``expected``): it names no visit of the trial and is ignored."""
    root = Path(bids) / REVIEWED_FOLDER
    if not root.is_dir():
        return []
    known = {str(Path(p)) for p in expected}
    return [f"{p}: a reviewed mask that names no visit of trial {trial} (expected <the visit's FLAIR path>"
            f"{SUFFIX.replace('.nii.gz', '')}.nii.gz under {root}); ignored"
            for p in sorted(root.rglob("*.nii*")) if str(p) not in known]


#: What happens to a visit whose correction is rejected (the ``reviewed`` source).
KEEPS_UNET = "the visit keeps its U-Net mask"


def check_correction(correction: sitk.Image, flair: sitk.Image, path, consequence: str = KEEPS_UNET) -> str | None:
    """The problem with a correction (its grid, its values), as one line naming it and ending
    with ``consequence``, or None."""
    if not io.same_geometry(correction, flair):
        return (f"{path}: not on the grid of the visit's FLAIR (size {correction.GetSize()} vs {flair.GetSize()}, "
                f"spacing/origin/direction checked too); {consequence}")
    a = sitk.GetArrayViewFromImage(correction)
    bad = int(np.count_nonzero((a != 0) & (a != 1)))
    if bad:
        return f"{path}: {bad} voxels are neither 0 nor 1; {consequence}"
    return None


def apply_correction(unet_mni: sitk.Image, unet_native: sitk.Image, correction: sitk.Image, xfm,
                     interpolation: str = "bspline") -> tuple[np.ndarray, int, int]:
    """The U-Net's MNI mask with a reader's native correction applied (module docstring):
    ``(mask (z, y, x) uint8, added native voxels, removed native voxels)``. ``xfm``: the visit's
    ``from-FLAIR_to-MNI1x1x3`` transform (a path or an ``sitk.Transform``)."""
    from t2lesion.preprocess._common import read_transform
    from t2lesion.preprocess.resample import resample_mask_image

    tx = read_transform(xfm) if isinstance(xfm, (str, Path)) else xfm
    corr = sitk.GetArrayFromImage(correction) > 0
    nat = sitk.GetArrayFromImage(unet_native) > 0
    out = sitk.GetArrayFromImage(unet_mni) > 0
    edits = {"added": corr & ~nat, "removed": nat & ~corr}
    for kind, arr in edits.items():
        if not arr.any():
            continue
        img = sitk.GetImageFromArray(arr.astype(np.uint8))
        img.CopyInformation(correction)
        # additions as the GT is carried (smooth edges); removals by nearest neighbour, the
        # inverse of how the U-Net mask went to native (infer.mask_to_native): every MNI voxel
        # of an erased lesion goes, where B-spline + 0.5 left its rim
        how = interpolation if kind == "added" else "nearest"
        mni = sitk.GetArrayFromImage(resample_mask_image(img, unet_mni, tx, how)) > 0
        out = (out | mni) if kind == "added" else (out & ~mni)
    return out.astype(np.uint8), int(edits["added"].sum()), int(edits["removed"].sum())


def _rater(sidecar: str | Path | None) -> str:
    if not sidecar or not Path(sidecar).is_file():
        return ""
    try:
        return str(json.loads(Path(sidecar).read_text()).get("Rater", ""))
    except (ValueError, AttributeError):
        return ""


def run_apply_review(unet_mni: str, out_mask: str, out_status: str, *, participant_id: str, session: str,
                     unet_native: str | None = None, flair: str | None = None, xfm: str | None = None,
                     correction: str | None = None, sidecar: str | None = None,
                     interpolation: str = "bspline") -> dict:
    """Path-level entry point (rule ``apply_review``): the visit's ``reviewed`` mask (the U-Net's
    MNI mask, with the correction applied when there is a valid one) and a one-row status table
    (:data:`STATUS_COLUMNS`; status ``none``, ``applied`` or ``rejected: <why>``). A rejected
    correction is one line on stderr and in the log naming the file; the job still succeeds."""
    base = io.read_image(unet_mni)
    voxel_ml = io.voxel_volume_ml(base)
    row = {"participant_id": participant_id, "session": session, "correction": correction or "",
           "rater": _rater(sidecar), "status": "none", "added_voxels": 0, "removed_voxels": 0}
    mask = sitk.GetArrayFromImage(base) > 0
    if correction:
        flair_img = io.read_image(flair)
        corr = io.read_image(correction)
        problem = check_correction(corr, flair_img, correction)
        if problem:
            tell_user(problem, log)
            row["status"] = "rejected: " + problem.split(": ", 1)[1]
        else:
            mask, added, removed = apply_correction(base, io.read_image(unet_native), corr, xfm, interpolation)
            row.update(status="applied", added_voxels=added, removed_voxels=removed)
            if removed and not sitk.GetArrayViewFromImage(corr).any():  # an accidental blank save?
                tell_user(f"{correction}: an empty correction: every lesion of {participant_id} {session} removed "
                          f"({removed} voxels); applied", log)
            log.info("%s %s: correction applied (%d voxels added, %d removed, rater %s)", participant_id, session,
                     added, removed, row["rater"] or "n/a")
    row["unet_tlv_ml"] = int((sitk.GetArrayViewFromImage(base) > 0).sum()) * voxel_ml
    row["reviewed_tlv_ml"] = int(np.count_nonzero(mask)) * voxel_ml
    io.write_array(np.asarray(mask, np.uint8), base, out_mask)
    io.write_tsv(pd.DataFrame([row]).reindex(columns=STATUS_COLUMNS), out_status)
    return row


def run_training_mask(correction: str, flair: str, xfm: str, grid: str, out_mask: str, *, trial: str,
                      sidecar: str | None = None, interpolation: str = "bspline") -> int:
    """Path-level entry point (rule ``reviewed_training_mask``; ``trials.<t>.training_masks:
    reviewed``): a training visit's reviewed mask carried into MNI as the GT mask is
    (``interpolation``, then ≥ 0.5) through the composed FLAIR -> MNI transform ``xfm`` onto the
    grid of ``grid``; returns its lesion voxels. A mask that :func:`check_correction` rejects
    is an InputError: the same line as for the ``reviewed`` source, with what it means here
    (the visit has no other training mask)."""
    from t2lesion.errors import InputError
    from t2lesion.preprocess._common import read_transform
    from t2lesion.preprocess.resample import resample_mask_image

    corr = io.read_image(correction)
    problem = check_correction(corr, io.read_image(flair), correction,
                               f"not usable as training GT of trial {trial} (fix it, or remove it to leave "
                               f"the visit out of training)")
    if problem:
        raise InputError(problem)
    ref = io.read_image(grid)
    mask = resample_mask_image(sitk.Cast(corr, sitk.sitkUInt8), ref, read_transform(xfm), interpolation)
    io.write_image(mask, out_mask)
    n = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    log.info("%s: reviewed training mask (rater %s) -> %s: %d voxels (%.3f mL)", correction,
             _rater(sidecar) or "n/a", out_mask, n, n * io.voxel_volume_ml(mask))
    return n


# --------------------------------------------------------------------------- endpoint changes


#: Columns that identify a row of an endpoint table (besides its text columns), never compared.
KEY_COLUMNS = {"participant_id", "session", "week", "level", "term", "term_type", "label", "arm", "endpoint", "model",
               "group", "conf_type", "time", "metric", "quantity", "size_group", "analysis", "scope", "test"}
#: Free-text columns left out of the keys (``summary``: Table 2's "mean ± SD" text, each source's own).
NOTE_COLUMNS = {"note", "status", "p_text", "reason", "summary"}


def _long(df: pd.DataFrame, sources: Sequence[str]) -> pd.DataFrame | None:
    """``df`` with a ``source`` column: as it is, or from a side-by-side table (Table 4, the
    ANCOVA arm effect: ``<source>.<value>`` columns) one row per source and key, its numeric
    values only (the text ones, e.g. "HR (low, high)", are each source's own); None without
    either shape."""
    if "source" in df.columns:
        return df
    blocks = {s: [c for c in df.columns if c.startswith(f"{s}.")] for s in sources}
    if not any(blocks.values()):
        return None
    keys = [c for c in df.columns if "." not in c]
    parts = []
    for src, cols in blocks.items():
        part = df[keys + cols].rename(columns={c: c.split(".", 1)[1] for c in cols})
        values = [c.split(".", 1)[1] for c in cols]
        part = part[keys + [v for v in values if pd.api.types.is_numeric_dtype(part[v])]]
        parts.append(part.assign(source=src))
    return pd.concat(parts, ignore_index=True)


def endpoint_changes(tables: Mapping[str, pd.DataFrame], a: str = "unet", b: str = "reviewed") -> pd.DataFrame:
    """How each endpoint moved between sources ``a`` and ``b``: for every table with a
    ``source`` column or side by side (:func:`_long`), its rows of ``a`` and ``b`` matched on their keys (:data:`KEY_COLUMNS`
    and the other text columns: week, arm, term, …) and, per other numeric column, both values
    and ``b − a``. Long format:
    ``table, key, quantity, <a>, <b>, difference``. Trial-level rows whose values are equal are
    kept (a reader sees what did not move too); per-visit rows (keyed by participant) only
    where they differ."""
    rows = []
    for name, df in tables.items():
        df = _long(df, (a, b)) if df is not None else None
        if df is None:
            continue
        df = df[df["source"].isin([a, b])]
        if df.empty:
            continue
        keys = [c for c in df.columns if c != "source" and c not in NOTE_COLUMNS
                and (c in KEY_COLUMNS or not pd.api.types.is_numeric_dtype(df[c]))]
        numeric = [c for c in df.columns if c not in keys and c != "source" and pd.api.types.is_numeric_dtype(df[c])]
        for key, grp in df.groupby(keys, dropna=False, sort=False) if keys else [((), df)]:
            key = key if isinstance(key, tuple) else (key,)
            label = ", ".join(f"{k}={v}" for k, v in zip(keys, key) if pd.notna(v) and str(v) != "")
            by = {s: g.iloc[0] for s, g in grp.groupby("source")}
            if a not in by or b not in by:
                continue
            for c in numeric:
                va, vb = by[a][c], by[b][c]
                if (pd.isna(va) and pd.isna(vb)) or ("participant_id" in keys and va == vb):
                    continue
                rows.append({"table": name, "key": label, "quantity": c, a: va, b: vb, "difference": vb - va})
    return pd.DataFrame(rows, columns=["table", "key", "quantity", a, b, "difference"])


def run_endpoint_changes(tables: Mapping[str, str | Path], status_tsvs: Sequence[str | Path], out_tsv,
                         out_corrections_tsv, *, a: str = "unet", b: str = "reviewed") -> pd.DataFrame:
    """Path-level entry point (rule ``review_changes``): the endpoint tables (name -> TSV) in,
    :func:`endpoint_changes` and the trial's correction statuses (one row per visit) out."""
    frames = {n: pd.read_csv(p, sep="\t", na_values="n/a") for n, p in tables.items()}
    changes = endpoint_changes(frames, a, b)
    status = pd.concat([pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False) for p in status_tsvs],
                       ignore_index=True) if status_tsvs else pd.DataFrame(columns=STATUS_COLUMNS)
    io.write_tsv(changes, out_tsv, na_rep="n/a", float_format="%.6g")
    io.write_tsv(status, out_corrections_tsv)
    n_applied = int((status["status"] == "applied").sum()) if len(status) else 0
    rejected = status[status["status"].str.startswith("rejected")] if len(status) else status
    for r in rejected.itertuples():  # said again where the trial's run ends
        tell_user(f"{r.correction}: {r.status} (rejected; {r.participant_id} {r.session} keeps its U-Net mask)", log)
    log.info("%d corrections applied, %d rejected; %d endpoint quantities compared", n_applied, len(rejected),
             len(changes))
    return changes
