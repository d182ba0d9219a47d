"""Are the GT masks' new lesions the generator's new lesions? (docs/DESIGN.md §9b and §15, issue 25)

On a synthetic trial the generator knows every lesion's onset and continuous (*nominal*) volume;
each visit's GT mask is that lesion field sampled into the visit's own native 1×1×3 mm grid
(its own head pose; a voxel is lesion when its slice-integrated occupancy ≥ 0.5) and then
resampled into the common MNI 1×1×3 mm grid, where the tracking (§9b) compares visits. This
module measures, lesion by lesion and by size, how far the GT masks' new lesions are the true
ones, and which size floor makes the new-lesion counts trustworthy.

Truth side (``truth/lesions.tsv``; a lesion appears at a visit when it has ≥ 1 native voxel):
every follow-up lesion gets

* ``truth_class``: **new** when its onset is after the reference visit (the generator's truth);
  otherwise **enlarging** / **stable** / **shrinking** by the endpoint's rule on nominal volumes
  (≥ +50 % and ≥ 3 voxels: enlarging; smaller: shrinking); **undrawn** when it existed at the
  reference visit but had no voxel there (its reference volume is unknown).
* ``native_class``: the same rule on the native grid's voxel counts, identities known
  (:func:`t2lesion.tracking.truth_counts`'s rule: new = no voxel at the reference visit): what
  sampling into the 1×1×3 mm grid alone makes of the truth.
* ``mask_class``: the class the tracking gave the GT-mask lesion at the lesion's place in MNI
  (its native centroid through the visit's FLAIR → MNI transform; the nearest tracked lesion
  voxel within ``radius_mm``, 3 mm, one slice): new (QC label 1, or 4 below the floor),
  enlarging (2), other (3: stable or shrinking), or **missed** (no tracked lesion, i.e. fewer
  than the metrics' 3 voxels there).

Mask side: every GT-mask lesion the tracking calls new (QC labels 1 and 4, whatever the floor)
is **true** when a truth-new lesion was placed in it, **false** otherwise (an existing lesion
whose copies at the two visits missed each other, or vanished at the reference).

Sizes are in voxels of the MNI grid (``voxel_ml``, 3 µL): nominal = nominal volume / voxel_ml,
the truth's size; MNI size for mask lesions. Per candidate floor f (:func:`floor_table`), per
follow-up: GT-mask new lesions of ≥ f voxels against truth-new lesions of nominal ≥ f voxels
(the visits with equal counts, the totals), the precision of the GT's new lesions ≥ f, the
sensitivity for true new lesions of nominal ≥ f, and the native-grid count (the truth table's
rule) against the nominal one: the grid's share of the disagreement. :func:`choose_floor`: the
smallest floor at which the GT-mask counts equal the truth's on ≥ 90 % of follow-ups (the target
issue 16 set for the tracking).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import SimpleITK as sitk

from t2lesion import io
from t2lesion.errors import InputError
from t2lesion.evaluation.segmentation import CONNECTIVITY, _label
from t2lesion.tracking import (
    ENLARGE_RELATIVE, ENLARGE_VOXELS, QC_LABELS, _ses, reference_index, volume_change_class, week_from_session,
)

log = logging.getLogger(__name__)

#: Size bins (voxels of the MNI grid), half-open [lo, hi); None = no bound. [0, 3): below the metrics' minimum.
SIZE_BINS: tuple[tuple[int, int | None], ...] = ((0, 3), (3, 5), (5, 10), (10, 20), (20, 50), (50, None))
#: Candidate size floors for counting a new lesion (voxels).
FLOORS: tuple[int, ...] = (3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30)
#: Candidate gain floors for counting an enlarging lesion (voxels grown over the reference volume):
#: what ``lesions.enlarge_voxels`` set to each would count.
ENLARGE_FLOORS: tuple[int, ...] = (3, 5, 8, 10, 15, 20, 25, 30, 40, 50, 75)
#: The floor rule: GT-mask counts equal to the truth's on at least this share of follow-ups.
MIN_EQUAL = 0.9
RADIUS_MM = 3.0
MASK_CLASS = {QC_LABELS["new"]: "new", QC_LABELS["new_small"]: "new", QC_LABELS["enlarging"]: "enlarging",
              QC_LABELS["stable"]: "other"}
_TOL = 1e-9

LESION_COLUMNS = ["participant_id", "session", "week", "reference_session", "lesion_id", "onset_week",
                  "nominal_voxels", "native_voxels", "nominal_reference_voxels", "native_reference_voxels",
                  "truth_class", "native_class", "mask_class", "mask_voxels", "distance_mm"]
MASK_COLUMNS = ["participant_id", "session", "week", "reference_session", "lesion", "n_voxels", "true_new",
                "truth_lesion_ids"]
SIZE_COLUMNS = ["side", "bin", "size_low", "size_high", "n", "n_new_in_masks", "n_enlarging_in_masks",
                "n_other_in_masks", "n_missed_in_masks", "n_native_new", "native_over_nominal_median", "n_true",
                "share"]
FLOOR_COLUMNS = ["floor", "n_followups", "n_equal", "share_equal", "n_masks", "n_truth", "n_native",
                 "n_equal_native", "share_equal_native", "precision", "sensitivity", "chosen"]
ENLARGE_FLOOR_COLUMNS = ["floor", "n_followups", "n_equal", "share_equal", "n_masks", "n_truth", "n_native",
                         "n_equal_native", "share_equal_native", "chosen"]
_KEY = ["participant_id", "session"]
#: What :func:`enlarge_floor_table` reads of the GT tracking's lesion tables.
TRACKED_COLUMNS = {"participant_id", "session", "class", "n_voxels", "reference_voxels"}


def truth_lesions(truth: pd.DataFrame, sessions_by_subject: dict[str, Sequence[str]], *,
                  reference: str = "previous", voxel_ml: float = 0.003,
                  enlarge_relative: float = ENLARGE_RELATIVE,
                  enlarge_voxels: float = ENLARGE_VOXELS) -> pd.DataFrame:
    """Every follow-up lesion of the truth table with its ``truth_class`` and ``native_class`` (module rules).

    ``truth``: ``truth/lesions.tsv`` (participant_id, session, week, lesion_id, n_voxels,
    volume_ml, nominal_volume_ml, onset_week, x/y/z_native); ``sessions_by_subject``: each
    subject's visits (``ses-wNNN``). Returns :data:`LESION_COLUMNS` up to ``native_class``, with
    x/y/z_native; sizes in voxels of ``voxel_ml``.
    """
    need = {"participant_id", "session", "lesion_id", "volume_ml", "nominal_volume_ml", "onset_week",
            "x_native", "y_native", "z_native"}
    if missing := sorted(need - set(truth.columns)):
        raise InputError(f"truth lesions table lacks column(s) {missing}")
    t = truth.assign(session=[_ses(s) for s in truth["session"]])
    rows = []
    for pid, sessions in sessions_by_subject.items():
        sessions = sorted((_ses(s) for s in sessions), key=week_from_session)
        mine = t[t["participant_id"] == pid]
        by_ses = {s: g.set_index("lesion_id") for s, g in mine.groupby("session")}
        for k in range(1, len(sessions)):
            ref = sessions[reference_index(k, reference)]
            ref_week = week_from_session(ref)
            cur = by_ses.get(sessions[k])
            if cur is None:
                continue
            old = by_ses.get(ref, pd.DataFrame(columns=mine.columns).set_index("lesion_id"))
            for lid, r in cur.iterrows():
                nominal, native = r["nominal_volume_ml"], r["volume_ml"]
                there = lid in old.index
                if r["onset_week"] > ref_week:
                    truth_class = "new"
                elif not there:
                    truth_class = "undrawn"
                else:
                    truth_class = volume_change_class(nominal, old.at[lid, "nominal_volume_ml"], voxel_ml,
                                                      enlarge_relative, enlarge_voxels)
                native_class = ("new" if not there else volume_change_class(
                    native, old.at[lid, "volume_ml"], voxel_ml, enlarge_relative, enlarge_voxels))
                rows.append({
                    "participant_id": pid, "session": sessions[k], "week": week_from_session(sessions[k]),
                    "reference_session": ref, "lesion_id": int(lid), "onset_week": int(r["onset_week"]),
                    "nominal_voxels": nominal / voxel_ml, "native_voxels": native / voxel_ml,
                    "nominal_reference_voxels": old.at[lid, "nominal_volume_ml"] / voxel_ml if there else math.nan,
                    "native_reference_voxels": old.at[lid, "volume_ml"] / voxel_ml if there else 0.0,
                    "truth_class": truth_class, "native_class": native_class,
                    "x_native": r["x_native"], "y_native": r["y_native"], "z_native": r["z_native"],
                })
    cols = LESION_COLUMNS[:LESION_COLUMNS.index("native_class") + 1] + ["x_native", "y_native", "z_native"]
    return pd.DataFrame(rows, columns=cols)


def native_to_grid(points_xyz: np.ndarray, transform: sitk.Transform, grid: sitk.Image) -> np.ndarray:
    """Continuous (z, y, x) indices in ``grid`` of native-space points (x, y, z mm).

    ``transform`` is the visit's FLAIR → MNI resampling transform (it maps grid points to native
    points, ITK's convention); its inverse places the native points in the grid.
    """
    from t2lesion.preprocess._common import transform_to_matrix

    pts = np.asarray(points_xyz, float).reshape(-1, 3)
    inv = np.linalg.inv(transform_to_matrix(transform))
    mni = pts @ inv[:3, :3].T + inv[:3, 3]
    d = np.array(grid.GetDirection(), float).reshape(3, 3)
    ijk = (mni - np.array(grid.GetOrigin())) @ np.linalg.inv(d).T / np.array(grid.GetSpacing())
    return ijk[:, ::-1]


def nearest_component(labels: np.ndarray, index_zyx: np.ndarray, spacing_zyx: Sequence[float],
                      radius_mm: float = RADIUS_MM) -> tuple[np.ndarray, np.ndarray]:
    """Per point (continuous z, y, x index), the label of the nearest labelled voxel within
    ``radius_mm`` (0 and NaN distance where none), and that distance in mm."""
    sp = np.asarray(spacing_zyx, float)
    reach = np.ceil(radius_mm / sp).astype(int)
    out = np.zeros(len(index_zyx), np.int64)
    dist = np.full(len(index_zyx), np.nan)
    for i, c in enumerate(np.asarray(index_zyx, float)):
        lo = np.maximum(np.floor(c).astype(int) - reach, 0)
        hi = np.minimum(np.ceil(c).astype(int) + reach + 1, labels.shape)
        if np.any(hi <= lo):
            continue
        box = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        zz, yy, xx = np.nonzero(box)
        if not zz.size:
            continue
        d = np.sqrt((((np.stack([zz, yy, xx], 1) + lo) - c) * sp) ** 2 @ np.ones(3))
        j = int(np.argmin(d))
        if d[j] <= radius_mm + _TOL:
            out[i], dist[i] = box[zz[j], yy[j], xx[j]], d[j]
    return out, dist


def match_visit(lesions: pd.DataFrame, qc: np.ndarray, index_zyx: np.ndarray, spacing_zyx: Sequence[float], *,
                connectivity: int = CONNECTIVITY, radius_mm: float = RADIUS_MM) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One follow-up: the truth lesions (rows of :func:`truth_lesions`) placed in the GT tracking
    QC map ``qc`` at ``index_zyx``. Returns the lesions with ``mask_class``, ``mask_voxels``,
    ``distance_mm``, and the mask's new lesions (:data:`MASK_COLUMNS` from ``lesion``)."""
    comp = _label(np.asarray(qc) > 0, connectivity, 1)
    n = comp.sizes.size
    code = np.zeros(n + 1, np.int64)
    code[comp.lab] = np.asarray(qc).ravel()[comp.idx]  # a tracked lesion has one QC label
    lab, dist = nearest_component(comp.labels, index_zyx, spacing_zyx, radius_mm)
    out = lesions.copy()
    out["mask_class"] = [MASK_CLASS.get(int(code[k]), "other") if k else "missed" for k in lab]
    out["mask_voxels"] = np.where(lab > 0, np.r_[0, comp.sizes][lab], 0)
    out["distance_mm"] = dist
    is_new = np.isin(code, [QC_LABELS["new"], QC_LABELS["new_small"]])
    is_new[0] = False
    true_ids: dict[int, list[str]] = {}
    for k, cls, lid in zip(lab, out["truth_class"], out["lesion_id"]):
        if k and cls == "new":
            true_ids.setdefault(int(k), []).append(str(lid))
    ks = np.flatnonzero(is_new)
    masks = pd.DataFrame({"lesion": ks, "n_voxels": np.r_[0, comp.sizes][ks],
                          "true_new": [k in true_ids for k in ks],
                          "truth_lesion_ids": [";".join(true_ids.get(int(k), [])) for k in ks]})
    return out, masks


def _bins(sizes: np.ndarray, bins) -> list[tuple[str, int, float, np.ndarray]]:
    out = []
    for lo, hi in bins:
        top = math.inf if hi is None else hi
        out.append((f"[{lo}, {'inf' if hi is None else hi})", lo, top, (sizes >= lo - _TOL) & (sizes < top - _TOL)))
    return out


def size_table(lesions: pd.DataFrame, masks: pd.DataFrame, bins=SIZE_BINS) -> pd.DataFrame:
    """By size bin: truth-new lesions (nominal size) and what the native grid and the GT masks made
    of them; truth-unchanged lesions (stable or shrinking in the generator) that the native grid or
    the masks call new or enlarging; and the GT masks' new lesions (MNI size), true or false."""
    rows = []
    for side, sel in (("truth_new", lesions["truth_class"] == "new"),
                      ("truth_unchanged", lesions["truth_class"].isin(["stable", "shrinking"]))):
        t = lesions[sel]
        for label, lo, hi, m in _bins(t["nominal_voxels"].to_numpy(float), bins):
            b = t[m]
            mc = b["mask_class"]
            flagged = "new" if side == "truth_new" else ("new", "enlarging")
            ratio = (b["native_voxels"] / b["nominal_voxels"]).median() if len(b) else math.nan
            rows.append({"side": side, "bin": label, "size_low": lo, "size_high": hi, "n": len(b),
                         "n_new_in_masks": int((mc == "new").sum()),
                         "n_enlarging_in_masks": int((mc == "enlarging").sum()),
                         "n_other_in_masks": int((mc == "other").sum()), "n_missed_in_masks": int((mc == "missed").sum()),
                         "n_native_new": int(b["native_class"].isin(np.atleast_1d(flagged)).sum()),
                         "native_over_nominal_median": ratio,
                         "share": (mc == "new").mean() if side == "truth_new" and len(b)
                         else (mc.isin(["new", "enlarging"]).mean() if len(b) else math.nan)})
    for label, lo, hi, m in _bins(masks["n_voxels"].to_numpy(float), bins):
        b = masks[m]
        rows.append({"side": "masks_new", "bin": label, "size_low": lo, "size_high": hi, "n": len(b),
                     "n_true": int(b["true_new"].sum()), "share": b["true_new"].mean() if len(b) else math.nan})
    return pd.DataFrame(rows).reindex(columns=SIZE_COLUMNS)


def _count_agreement(followups: pd.DataFrame, masks: pd.DataFrame, truth: pd.DataFrame,
                     native: pd.DataFrame) -> dict:
    """Per follow-up (``followups``: participant_id, session) the counts of the rows of ``masks``,
    ``truth`` and ``native``: how many follow-ups have the masks' (and the native grid's) count
    equal to the truth's, and the totals."""
    counts = followups[_KEY].drop_duplicates()
    for name, tab in (("truth", truth), ("masks", masks), ("native", native)):
        c = tab.groupby(_KEY).size().rename(name)
        counts = counts.merge(c, left_on=_KEY, right_index=True, how="left")
    counts = counts.fillna(0)
    n = len(counts)
    eq = int((counts["masks"] == counts["truth"]).sum())
    eqn = int((counts["native"] == counts["truth"]).sum())
    return {"n_followups": n, "n_equal": eq, "share_equal": eq / n if n else math.nan,
            "n_masks": len(masks), "n_truth": len(truth), "n_native": len(native), "n_equal_native": eqn,
            "share_equal_native": eqn / n if n else math.nan}


def floor_table(lesions: pd.DataFrame, masks: pd.DataFrame, followups: pd.DataFrame, floors=FLOORS,
                min_equal: float = MIN_EQUAL) -> pd.DataFrame:
    """Per candidate floor, per follow-up (``followups``: participant_id, session), the GT-mask
    new-lesion count (MNI size ≥ floor) against the truth's (nominal ≥ floor) and the native
    grid's (truth-table rule, native size ≥ floor); pooled precision and sensitivity;
    ``chosen`` marks :func:`choose_floor`'s floor."""
    rows = []
    for f in floors:
        tn = lesions[(lesions["truth_class"] == "new") & (lesions["nominal_voxels"] >= f - _TOL)]
        nn = lesions[(lesions["native_class"] == "new") & (lesions["native_voxels"] >= f - _TOL)]
        mn = masks[masks["n_voxels"] >= f - _TOL]
        rows.append({"floor": f, **_count_agreement(followups, mn, tn, nn),
                     "precision": mn["true_new"].mean() if len(mn) else math.nan,
                     "sensitivity": (tn["mask_class"] == "new").mean() if len(tn) else math.nan})
    table = pd.DataFrame(rows).reindex(columns=FLOOR_COLUMNS)
    chosen = choose_floor(table, min_equal)
    table["chosen"] = table["floor"] == chosen
    return table


def enlarge_floor_table(lesions: pd.DataFrame, tracked: pd.DataFrame, followups: pd.DataFrame,
                        floors=ENLARGE_FLOORS, min_equal: float = MIN_EQUAL) -> pd.DataFrame:
    """Per candidate gain floor g (what ``lesions.enlarge_voxels`` = g counts), per follow-up: the
    GT masks' enlarging lesions that grew by ≥ g voxels over their reference volume (``tracked``:
    the GT tracking's lesion tables, :func:`t2lesion.tracking.run_tracking`) against the truth's
    enlarging lesions whose nominal volume grew by ≥ g, and the native grid's (the truth table's
    identities, native voxels). The relative rule (``enlarge_relative``) and the configured
    ``enlarge_voxels`` apply to all three already, so a floor below the configured one counts as
    it does. ``chosen`` marks :func:`choose_floor`'s floor (the new-lesion rule)."""
    if missing := sorted(TRACKED_COLUMNS - set(tracked.columns)):
        raise InputError(f"GT tracking lesion table lacks column(s) {missing}")
    enl = tracked[tracked["class"] == "enlarging"]
    m_gain = enl["n_voxels"].astype(float) - enl["reference_voxels"].astype(float)
    truth = lesions[lesions["truth_class"] == "enlarging"]
    t_gain = truth["nominal_voxels"] - truth["nominal_reference_voxels"]
    native = lesions[lesions["native_class"] == "enlarging"]
    n_gain = native["native_voxels"] - native["native_reference_voxels"]
    rows = [{"floor": g, **_count_agreement(followups, enl[m_gain >= g - _TOL], truth[t_gain >= g - _TOL],
                                              native[n_gain >= g - _TOL])} for g in floors]
    table = pd.DataFrame(rows).reindex(columns=ENLARGE_FLOOR_COLUMNS)
    table["chosen"] = table["floor"] == choose_floor(table, min_equal)
    return table


def choose_floor(table: pd.DataFrame, min_equal: float = MIN_EQUAL) -> int | None:
    """The smallest floor whose GT-mask counts equal the truth's on ≥ ``min_equal`` of follow-ups (None: none)."""
    ok = table[table["share_equal"] >= min_equal - _TOL]
    return int(ok["floor"].min()) if len(ok) else None


def _read_tracked(path) -> pd.DataFrame:
    """One GT tracking lesion table (:func:`t2lesion.tracking.run_tracking`), its columns checked."""
    tab = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False,
                      dtype={"participant_id": str, "session": str})
    if missing := sorted(TRACKED_COLUMNS - set(tab.columns)):
        raise InputError(f"{path}: lacks column(s) {missing} (a GT tracking lesion table)")
    return tab


def run_new_lesion_truth(truth_tsv, qc_maps: dict[tuple[str, str], str], transforms: dict[tuple[str, str], str],
                         sessions_by_subject: dict[str, Sequence[str]], out_lesions_tsv, out_masks_tsv, out_sizes_tsv,
                         out_floors_tsv, *, tracked=None, out_enlarge_floors_tsv=None, reference: str = "previous",
                         connectivity: int = CONNECTIVITY, enlarge_relative: float = ENLARGE_RELATIVE,
                         enlarge_voxels: float = ENLARGE_VOXELS, radius_mm: float = RADIUS_MM, floors=FLOORS,
                         enlarge_floors=ENLARGE_FLOORS, min_equal: float = MIN_EQUAL) -> pd.DataFrame:
    """Path-level entry point (rule ``validation_study_new_lesion_truth``).

    ``qc_maps`` and ``transforms``: per (participant_id, session) follow-up, the GT tracking QC
    map and the visit's FLAIR → MNI transform. Writes the lesion, mask, size and floor tables;
    with ``tracked`` (the GT tracking's per-subject lesion tables) and ``out_enlarge_floors_tsv``
    also the gain-floor table of enlarging lesions (:func:`enlarge_floor_table`). Returns the
    floor table."""
    if (tracked is None) != (out_enlarge_floors_tsv is None) or (tracked is not None and not len(tracked)):
        raise ValueError("run_new_lesion_truth: give both tracked (>= 1 table) and out_enlarge_floors_tsv, or neither")
    tracked_tab = None if tracked is None else pd.concat([_read_tracked(t) for t in tracked], ignore_index=True)
    truth = pd.read_csv(truth_tsv, sep="\t", dtype={"participant_id": str, "session": str})
    first = next(iter(qc_maps.values()), None)
    if first is None:
        raise InputError("new-lesion truth check: no GT follow-up QC maps (the trial needs >= 2 visits per subject)")
    voxel_ml = io.voxel_volume_ml(io.read_image(first))
    lesions = truth_lesions(truth, sessions_by_subject, reference=reference, voxel_ml=voxel_ml,
                            enlarge_relative=enlarge_relative, enlarge_voxels=enlarge_voxels)
    parts, mparts = [], []
    followups = []
    for (pid, ses), qpath in sorted(qc_maps.items()):
        if (pid, ses) not in transforms:
            raise InputError(f"{qpath}: no FLAIR -> MNI transform given for {pid} {ses}")
        qc, grid = io.read_array(qpath, np.int16)
        tx = sitk.ReadTransform(str(transforms[(pid, ses)]))
        sel = lesions[(lesions["participant_id"] == pid) & (lesions["session"] == ses)]
        idx = native_to_grid(sel[["x_native", "y_native", "z_native"]].to_numpy(float), tx, grid) if len(sel) \
            else np.zeros((0, 3))
        les, masks = match_visit(sel, qc, idx, grid.GetSpacing()[::-1], connectivity=connectivity,
                                 radius_mm=radius_mm)
        ref = sessions_by_subject_reference(sessions_by_subject[pid], ses, reference)
        masks.insert(0, "reference_session", ref)
        masks.insert(0, "week", week_from_session(ses))
        masks.insert(0, "session", ses)
        masks.insert(0, "participant_id", pid)
        parts.append(les)
        mparts.append(masks)
        followups.append({"participant_id": pid, "session": ses})
    lesions = pd.concat(parts, ignore_index=True).reindex(columns=LESION_COLUMNS)
    masks = pd.concat(mparts, ignore_index=True).reindex(columns=MASK_COLUMNS)
    sizes = size_table(lesions, masks)
    floors_tab = floor_table(lesions, masks, pd.DataFrame(followups), floors, min_equal)
    tables = [(lesions, out_lesions_tsv), (masks, out_masks_tsv), (sizes, out_sizes_tsv), (floors_tab, out_floors_tsv)]
    if tracked_tab is not None:
        enl = enlarge_floor_table(lesions, tracked_tab, pd.DataFrame(followups), enlarge_floors, min_equal)
        tables.append((enl, out_enlarge_floors_tsv))
    for tab, path in tables:  # every table computed before any is written
        io.write_tsv(tab, path, na_rep="n/a", float_format="%.6g")
    if tracked_tab is not None:
        log.info("enlarging lesions: GT masks %d, truth %d at the configured rule; gain floor by the %.0f %% rule: %s",
                 int(enl["n_masks"].iloc[0]), int(enl["n_truth"].iloc[0]), 100 * min_equal,
                 choose_floor(enl, min_equal))
    chosen = choose_floor(floors_tab, min_equal)
    log.info("%d follow-ups, %d truth-new lesions, %d GT-mask new lesions (%d true); floor by the %.0f %% rule: %s",
             len(followups), int((lesions["truth_class"] == "new").sum()), len(masks), int(masks["true_new"].sum()),
             100 * min_equal, chosen)
    return floors_tab


def sessions_by_subject_reference(sessions: Sequence[str], session: str, reference: str) -> str:
    """The reference session of ``session`` among a subject's ``sessions`` (tracking rule)."""
    ordered = sorted((_ses(s) for s in sessions), key=week_from_session)
    return ordered[reference_index(ordered.index(_ses(session)), reference)]


__all__ = ["FLOORS", "SIZE_BINS", "choose_floor", "floor_table", "match_visit", "native_to_grid",
           "nearest_component", "run_new_lesion_truth", "size_table", "truth_lesions"]
