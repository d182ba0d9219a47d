"""Does each source follow the truth's lesion-volume change? (docs/DESIGN.md §15)

On a synthetic trial the generator knows each lesion's continuous (*nominal*) volume at every
visit. Every truth lesion is placed at each visit in the GT mask of the MNI grid (its native
centroid through the visit's FLAIR → MNI transform; the nearest GT voxel within 3 mm:
:func:`t2lesion.validation.new_lesion_truth.native_to_grid`, ``nearest_component``). Lesions
alone in their GT component at baseline and at the follow-up are kept (a confluent component
holds several truth lesions and cannot be split between them). A kept lesion's volume in a
source's mask is the mask's voxels in its GT component plus in that component's one-voxel shell
(the border where an over- or under-segmenting mask differs from GT).

Per follow-up week, arm and class of the truth's change from baseline (**shrinking**,
**unchanged**, **growing**: beyond ±``UNCHANGED_VOXELS`` of the grid's voxels), summed over the
kept lesions: the change of the nominal volume, of GT and of each source; each source's change
over GT's (where GT's is at least ``MIN_RATIO_VOXELS``); and per participant the source's change
minus GT's (mL; mean, standard error, how many are positive). A source that follows change as
GT does has ratios near 1 in every class; a TLV endpoint inherits whatever it misses. On the
validation trial the U-Net followed the treated arm's small shrinkage at week 24 at 0.18 of
GT's (docs/validation-discussion.md).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from t2lesion import io
from t2lesion.errors import InputError
from t2lesion.evaluation.segmentation import CONNECTIVITY, _label, connectivity_structure
from t2lesion.tracking import _ses, week_from_session
from t2lesion.validation.new_lesion_truth import RADIUS_MM, native_to_grid, nearest_component

log = logging.getLogger(__name__)

#: A lesion whose nominal volume changed by at most this many voxels is unchanged.
UNCHANGED_VOXELS = 0.01
#: A source's change over GT's is given only where GT's is at least this many voxels.
MIN_RATIO_VOXELS = 50
CLASSES = ("shrinking", "unchanged", "growing", "all")


def visit_lesions(truth: pd.DataFrame, gt: np.ndarray, masks: dict[str, np.ndarray], index_zyx: np.ndarray,
                  spacing_zyx, *, connectivity: int = CONNECTIVITY, radius_mm: float = RADIUS_MM) -> pd.DataFrame:
    """One visit: every truth lesion (rows of ``truth``, placed at ``index_zyx`` in the grid) with
    its GT component (0: none within ``radius_mm``), how many truth lesions share that component
    and, when it is alone there, the component's voxels (``gt``) and each source's voxels in the
    component and its one-voxel shell."""
    gt = np.asarray(gt) > 0
    comp = _label(gt, connectivity, 1)
    k, _ = nearest_component(comp.labels, index_zyx, spacing_zyx, radius_mm)
    shared = np.bincount(k, minlength=comp.sizes.size + 1)
    boxes = ndimage.find_objects(comp.labels)
    structure = connectivity_structure(connectivity)
    out = truth[["participant_id", "session", "lesion_id"]].copy()
    out["component"] = k
    out["shared"] = np.where(k > 0, shared[k], 0)
    values = {name: np.full(len(out), np.nan) for name in ["gt", *masks]}
    for i, c in enumerate(k):
        if c == 0 or shared[c] != 1:
            continue
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in boxes[c - 1])
        inside = comp.labels[box] == c
        reach = inside | (ndimage.binary_dilation(inside, structure) & ~gt[box])
        values["gt"][i] = inside.sum()
        for name, m in masks.items():
            values[name][i] = np.count_nonzero(np.asarray(m[box]) & reach)
    for name, v in values.items():
        out[name] = v
    return out


def place_visit(truth: pd.DataFrame, arm: str, gt: np.ndarray, masks: dict[str, np.ndarray], grid: sitk.Image,
                transform: sitk.Transform, *, connectivity: int = CONNECTIVITY,
                radius_mm: float = RADIUS_MM) -> pd.DataFrame:
    """:func:`visit_lesions` of one visit whose truth lesions (``truth``, native centroids) reach
    the MNI ``grid`` through the visit's FLAIR -> MNI ``transform``; with the participant's
    ``arm`` and each lesion's nominal volume in voxels of the grid."""
    idx = native_to_grid(truth[["x_native", "y_native", "z_native"]].to_numpy(float), transform, grid)
    out = visit_lesions(truth, gt, masks, idx, grid.GetSpacing()[::-1], connectivity=connectivity,
                        radius_mm=radius_mm)
    out.insert(1, "arm", arm)
    out.insert(3, "nominal_voxels", truth["nominal_volume_ml"].to_numpy(float) / io.voxel_volume_ml(grid))
    return out


def lesion_changes(lesions: pd.DataFrame, sources, unchanged_voxels: float = UNCHANGED_VOXELS) -> pd.DataFrame:
    """Per kept lesion (alone in its GT component at baseline and at the follow-up) and follow-up:
    the change from the subject's first visit of ``nominal_voxels``, ``gt`` and each source, the
    nominal baseline, ``relative`` change and ``class``."""
    values = ["nominal_voxels", "gt", *sources]
    kept = lesions[lesions["shared"] == 1]
    cols = ["participant_id", "arm", "lesion_id", "session", "week", *values, "nominal_baseline", "relative", "class"]
    out = []
    for pid, g in kept.groupby("participant_id"):
        sessions = sorted(g["session"].unique(), key=week_from_session)
        first = g[g["session"] == sessions[0]].set_index("lesion_id")
        for ses in sessions[1:]:
            cur = g[g["session"] == ses].set_index("lesion_id")
            both = cur.index.intersection(first.index)
            if not len(both):
                continue
            d = cur.loc[both, values] - first.loc[both, values]
            d.insert(0, "week", week_from_session(ses))
            d.insert(0, "session", ses)
            d.insert(0, "arm", cur.loc[both, "arm"])
            d.insert(0, "participant_id", pid)
            d["nominal_baseline"] = first.loc[both, "nominal_voxels"]
            out.append(d.reset_index())
    if not out:
        return pd.DataFrame(columns=cols)
    ch = pd.concat(out, ignore_index=True)
    ch["relative"] = ch["nominal_voxels"] / ch["nominal_baseline"]
    ch["class"] = np.select([ch["nominal_voxels"] < -unchanged_voxels, ch["nominal_voxels"] > unchanged_voxels],
                            ["shrinking", "growing"], "unchanged")
    return ch[cols]


def response_table(changes: pd.DataFrame, sources, voxel_ml: float,
                   min_ratio_voxels: float = MIN_RATIO_VOXELS) -> pd.DataFrame:
    """Per week, arm, class (and ``all``) and source: the summed changes and the per-participant
    excess over GT (module docstring)."""
    rows = []
    for (week, arm), g in changes.groupby(["week", "arm"]):
        for cls in CLASSES:
            c = g if cls == "all" else g[g["class"] == cls]
            if c.empty:
                continue
            per = c.groupby("participant_id")[["gt", *sources]].sum() * voxel_ml
            gt_sum = float(c["gt"].sum())
            for src in sources:
                excess = per[src] - per["gt"]
                rows.append({
                    "week": int(week), "arm": arm, "class": cls, "source": src, "n_lesions": len(c),
                    "n_participants": len(per), "mean_relative_change": float(c["relative"].mean()),
                    "nominal_voxels": float(c["nominal_voxels"].sum()), "gt_voxels": gt_sum,
                    "source_voxels": float(c[src].sum()),
                    "over_gt": float(c[src].sum()) / gt_sum if abs(gt_sum) >= min_ratio_voxels else np.nan,
                    "excess_ml_mean": float(excess.mean()),
                    "excess_ml_se": float(excess.sem()) if len(excess) > 1 else np.nan,
                    "n_excess_positive": int((excess > 0).sum()),
                })
    return pd.DataFrame(rows)


def run_change_response(truth_tsv, participants_tsv, visits: list[dict], out_lesions_tsv, out_table_tsv, *,
                        connectivity: int = CONNECTIVITY, radius_mm: float = RADIUS_MM) -> pd.DataFrame:
    """Path-level entry point (rule ``validation_study_change_response``).

    ``visits``: per GT visit ``participant_id``, ``session`` (``ses-wNNN``), ``xfm`` (FLAIR → MNI
    transform) and ``masks`` (source → mask path in MNI, ``gt`` among them). Writes every placed
    lesion with its voxels per source, and the table of :func:`response_table`; returns the table."""
    truth = pd.read_csv(truth_tsv, sep="\t", dtype={"participant_id": str, "session": str})
    need = {"participant_id", "session", "lesion_id", "nominal_volume_ml", "x_native", "y_native", "z_native"}
    if missing := sorted(need - set(truth.columns)):
        raise InputError(f"{truth_tsv}: lacks column(s) {missing}")
    truth["session"] = [_ses(s) for s in truth["session"]]
    participants = pd.read_csv(participants_tsv, sep="\t", dtype={"participant_id": str})
    arm = dict(zip(participants["participant_id"], participants["arm"]))
    sources = [s for s in dict.fromkeys(s for v in visits for s in v["masks"]) if s != "gt"]
    parts, voxel_ml = [], None
    for v in visits:
        sel = truth[(truth["participant_id"] == v["participant_id"]) & (truth["session"] == _ses(v["session"]))]
        if not len(sel):
            continue
        if v["participant_id"] not in arm:
            raise InputError(f"{participants_tsv}: no row for {v['participant_id']}")
        gt, grid = io.read_array(v["masks"]["gt"], np.uint8)
        masks = {}
        for src in sources:
            m, img = io.read_array(v["masks"][src], np.uint8)
            if not io.same_geometry(grid, img):
                raise InputError(f"{v['masks'][src]}: not in the grid of {v['masks']['gt']}")
            masks[src] = m > 0
        voxel_ml = io.voxel_volume_ml(grid)
        parts.append(place_visit(sel, arm[v["participant_id"]], gt, masks, grid, sitk.ReadTransform(str(v["xfm"])),
                                 connectivity=connectivity, radius_mm=radius_mm))
    if not parts:
        raise InputError(f"{truth_tsv}: no truth lesion at the visits given")
    lesions = pd.concat(parts, ignore_index=True)
    table = response_table(lesion_changes(lesions, sources), sources, voxel_ml)
    io.write_tsv(lesions, out_lesions_tsv, na_rep="n/a", float_format="%.6g")
    io.write_tsv(table, out_table_tsv, na_rep="n/a", float_format="%.6g")
    kept = float((lesions["shared"] == 1).mean())
    log.info("%d truth lesion-visits, %.1f %% alone in their GT component (kept)", len(lesions), 100 * kept)
    for r in table[table["class"] != "all"].to_dict("records"):
        log.info("week %d %s %s lesions: %s follows %s of GT's change", r["week"], r["arm"], r["class"], r["source"],
                 "n/a" if np.isnan(r["over_gt"]) else f"{r['over_gt']:.2f}")
    return table


__all__ = ["lesion_changes", "place_visit", "response_table", "run_change_response", "visit_lesions"]
