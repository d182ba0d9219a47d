"""Longitudinal lesion tracking: new and enlarging T2 lesions (docs/DESIGN.md §9b, issue 16).

Every visit of a subject lies in one grid (follow-ups registered to baseline, then
MNI), so a follow-up mask is compared voxel by voxel with a *reference* visit's mask
of the same source: the previous visit (``lesions.reference: previous``, default)
or the baseline (``baseline``, the subject's first visit given).

Follow-up lesions are labelled exactly as the lesion metrics label them
(:func:`t2lesion.evaluation.segmentation._label`: ``connectivity`` 18, components of
fewer than ``min_size`` = 3 voxels dropped, docs/DESIGN.md §8): only they are classified and counted.
The reference side is the reference visit's lesion **mask** as it is: its
components of every size (``reference_min_size`` = 1, interpretation). A lesion
that shrank below 3 voxels at the reference visit still existed there; with the
3-voxel minimum on the reference side too, such a lesion growing back past 3
voxels would count as new. On the synthetic trial that flicker of lesions of 2-4
voxels around the minimum, after resampling to MNI, was the largest disagreement
with the truth (whose rule is "new = identity absent at the reference visit").

Classification of each follow-up lesion L (|·| = voxels)
---------------------------------------------------------

* covered fraction f(L) = |L ∩ reference mask| / |L|.
* **new** when L does not *match* at ``new_overlap`` (default 0.10, the metrics'
  detection rule: a match needs f > 0 and f ≥ threshold), i.e. fewer than 10 % of
  its voxels lie in the reference visit's lesion mask (with ``new_overlap`` 0: no
  voxel in it).
* a new lesion of fewer than ``new_min_size`` voxels (``lesions.new_min_voxels``, the size floor
  for counting a new lesion, chosen on the validation trial: docs/DESIGN.md §9b) is listed as
  ``new_small`` (QC label 4) and not counted: one 3 mm slice of resampling decides whether an
  unchanged small lesion's copies at two visits overlap.
* otherwise L overlaps at least one reference lesion, and its **reference volume**
  V_ref(L) is computed by the merge/split rule below. L is **enlarging** when
  |L| ≥ (1 + ``enlarge_relative``) · V_ref(L) (default +50 %) **and**
  |L| − V_ref(L) ≥ ``enlarge_voxels`` (default 3 voxels); **shrinking** when
  |L| < V_ref(L); **stable** otherwise (grown, but by less than the thresholds, or
  unchanged).

Merges and splits: one rule. Let o(L, R) be the voxels that follow-up lesion L
shares with reference lesion R. The reference volume of L is the total volume of
the reference lesions it overlaps, each shared among all follow-up lesions that
overlap it in proportion to their overlapping voxels:

    V_ref(L) = Σ_R |R| · o(L, R) / Σ_L' o(L', R)

* one-to-one: V_ref(L) = |R|.
* merge (R1 and R2 grow into one L): V_ref(L) = |R1| + |R2|, so a merge of two
  lesions that did not grow is stable, not enlarging.
* split (R breaks into L1 and L2): |R| is divided between L1 and L2 in proportion to
  the voxels each shares with R; the parts of a lesion that did not grow are
  stable or shrinking.

The shares are fractions of voxels; the thresholds are compared with them as real
numbers (a relative tolerance of 1e-9 lets a lesion that grew by exactly the
threshold count as enlarging). A new lesion's overlapped reference lesions (below
``new_overlap``) are still listed in ``reference_lesions``; its reference volume is
reported but not used.

Outputs (:func:`run_tracking`, one subject and source)
    lesions table  one row per follow-up lesion: participant_id, session, week,
                   reference_session, lesion (label in the follow-up's labelling,
                   raster order), n_voxels, volume_ml, covered_fraction,
                   reference_voxels (V_ref), reference_volume_ml, class,
                   reference_lesions (labels in the reference visit's labelling,
                   ``;``-separated), centroid_z/y/x (voxel indices).
    visits table   one row per visit: the baseline (or first) visit with its lesion
                   count only, and each follow-up with n_lesions, n_new, n_enlarging,
                   n_new_or_enlarging, n_stable, n_shrinking, n_new_small, new_volume_ml,
                   enlarging_volume_ml, n_reference_lesions (components of the
                   reference mask, every size), n_resolved (those that no follow-up
                   lesion overlaps), and the parameters.
    QC label map   per follow-up: 1 = new, 2 = enlarging, 3 = other (stable or
                   shrinking) lesion, 4 = new below the size floor (not counted),
                   0 = background; the follow-up's grid.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from t2lesion import io
from t2lesion.errors import InputError
from t2lesion.evaluation.files import _read_mask, week_from_session
from t2lesion.evaluation.segmentation import CONNECTIVITY, MIN_SIZE, OVERLAP, _as_mask, _check_params, _label, _matches

log = logging.getLogger(__name__)

REFERENCES = ("previous", "baseline")
ENLARGE_RELATIVE = 0.5
ENLARGE_VOXELS = 3
#: Smallest component of the reference mask that counts (1: the whole mask, specks included).
REFERENCE_MIN_SIZE = 1
CLASSES = ("new", "enlarging", "stable", "shrinking", "new_small")
#: Values of the QC label map (4: a new lesion below the size floor, listed but not counted).
QC_LABELS = {"new": 1, "enlarging": 2, "stable": 3, "shrinking": 3, "new_small": 4}
#: Whole-number columns of the visit table that are n/a on the baseline row: written as integers.
VISIT_COUNT_COLUMNS = ("week", "reference_week", "n_lesions", "n_new", "n_enlarging", "n_new_or_enlarging",
                       "n_stable", "n_shrinking", "n_new_small", "n_reference_lesions", "n_resolved")


def counts_as_integers(visits: pd.DataFrame) -> pd.DataFrame:
    """The visit table with its count columns as nullable integers (``3``, not ``3.0``; n/a stays)."""
    return visits.astype({c: "Int64" for c in VISIT_COUNT_COLUMNS if c in visits.columns})
_TOL = 1e-9

LESION_COLUMNS = [
    "participant_id", "session", "week", "reference_session", "lesion", "n_voxels", "volume_ml",
    "covered_fraction", "reference_voxels", "reference_volume_ml", "class", "reference_lesions",
    "centroid_z", "centroid_y", "centroid_x",
]
VISIT_COLUMNS = [
    "participant_id", "session", "week", "reference_session", "reference_week", "n_lesions", "n_new",
    "n_enlarging", "n_new_or_enlarging", "n_stable", "n_shrinking", "n_new_small", "new_volume_ml",
    "enlarging_volume_ml", "n_reference_lesions", "n_resolved", "voxel_ml", "reference", "connectivity", "min_size",
    "new_min_size", "new_overlap", "enlarge_relative", "enlarge_voxels", "reference_min_size",
]


def change_flags(volume, reference, unit: float = 1.0, enlarge_relative: float = ENLARGE_RELATIVE,
                 enlarge_voxels: float = ENLARGE_VOXELS):
    """The module's volume-change rule, the one copy of it: a lesion of ``volume`` against its
    reference volume ``reference`` (same unit; ``unit`` = one voxel in it: 1 for voxel counts,
    the voxel's mL for mL) is **enlarging** when ``volume ≥ (1 + enlarge_relative) · reference``
    and ``volume − reference ≥ enlarge_voxels · unit``, **shrinking** when it is not enlarging
    and ``volume < reference``. Each bound carries a relative tolerance of 1e-9, so a lesion
    exactly at a threshold counts however its volumes were rounded. Scalars or arrays; returns
    ``(enlarging, shrinking)`` booleans."""
    volume, reference = np.asarray(volume, dtype=float), np.asarray(reference, dtype=float)
    enlarging = ((volume >= (1.0 + enlarge_relative) * reference * (1 - _TOL))
                 & (volume - reference >= enlarge_voxels * unit * (1 - _TOL)))
    shrinking = ~enlarging & (volume < reference * (1 - _TOL))
    return enlarging, shrinking


def check_params(reference: str = "previous", connectivity: int = CONNECTIVITY, min_size: int = MIN_SIZE,
                 new_overlap: float = OVERLAP, enlarge_relative: float = ENLARGE_RELATIVE,
                 enlarge_voxels: float = ENLARGE_VOXELS, reference_min_size: int = 1,
                 new_min_size: int = MIN_SIZE) -> None:
    """Raise :class:`InputError` listing every bad tracking parameter."""
    problems = []
    if reference not in REFERENCES:
        problems.append(f"reference must be one of {REFERENCES}, got {reference!r}")
    if isinstance(new_min_size, bool) or not isinstance(new_min_size, (int, np.integer)) or new_min_size < 1:
        problems.append(f"new_min_size must be an integer >= 1, got {new_min_size!r}")
    for name, val in (("enlarge_relative", enlarge_relative), ("enlarge_voxels", enlarge_voxels)):
        if isinstance(val, bool) or not isinstance(val, (int, float, np.integer, np.floating)) or not val >= 0:
            problems.append(f"{name} must be a number >= 0, got {val!r}")
    if problems:
        raise InputError(problems, header="lesion tracking parameters:")
    _check_params(connectivity, min_size, new_overlap, None)
    _check_params(connectivity, reference_min_size, new_overlap, None)


def classify_pair(reference, followup, voxel_ml: float = 1.0, *, connectivity: int = CONNECTIVITY,
                  min_size: int = MIN_SIZE, new_overlap: float = OVERLAP,
                  enlarge_relative: float = ENLARGE_RELATIVE, enlarge_voxels: float = ENLARGE_VOXELS,
                  reference_min_size: int = REFERENCE_MIN_SIZE,
                  new_min_size: int = MIN_SIZE) -> tuple[pd.DataFrame, dict, np.ndarray]:
    """Classify the lesions of one follow-up mask against its reference mask (module rules).

    Both are 3-D binary arrays of one grid. Returns ``(lesions, counts, qc)``:
    ``lesions`` has the per-lesion columns of :data:`LESION_COLUMNS` from ``lesion``
    on; ``counts`` the per-visit counts (``n_lesions`` … ``n_resolved``); ``qc`` the
    uint8 label map (:data:`QC_LABELS`).
    """
    check_params("previous", connectivity, min_size, new_overlap, enlarge_relative, enlarge_voxels,
                 reference_min_size, new_min_size)
    r, f = _as_mask(reference, "reference"), _as_mask(followup, "followup")
    if r.shape != f.shape:
        raise ValueError(f"reference and follow-up shapes differ: {r.shape} vs {f.shape}")
    R, F = _label(r, connectivity, reference_min_size), _label(f, connectivity, min_size)
    nr, nf = R.sizes.size, F.sizes.size
    # overlap voxels o(L, R) of every pair, from the follow-up's lesion voxels
    r_at_f = R.labels.ravel()[F.idx]
    hit = r_at_f != 0
    fl, rl = F.lab[hit].astype(np.int64), r_at_f[hit].astype(np.int64)
    key, o = np.unique(fl * (nr + 1) + rl, return_counts=True)
    pf, pr = key // (nr + 1), key % (nr + 1)
    covered = np.bincount(fl, minlength=nf + 1)[1:]
    frac = covered / np.maximum(F.sizes, 1)
    # merge/split rule: each reference lesion's volume is shared among the follow-up
    # lesions overlapping it, in proportion to their overlapping voxels
    o_per_ref = np.bincount(pr, weights=o, minlength=nr + 1)
    share = R.sizes[pr - 1] * o / o_per_ref[pr]
    v_ref = np.bincount(pf, weights=share, minlength=nf + 1)[1:]
    sizes = F.sizes.astype(float)
    unmatched = ~_matches(frac, new_overlap)
    new_small = unmatched & (sizes < new_min_size - _TOL)  # below the size floor: listed, not counted
    new = unmatched & ~new_small
    enlarging, shrinking = change_flags(sizes, v_ref, 1.0, enlarge_relative, enlarge_voxels)
    enlarging &= ~unmatched
    shrinking &= ~unmatched
    cls = np.where(new, "new", np.where(new_small, "new_small", np.where(
        enlarging, "enlarging", np.where(shrinking, "shrinking", "stable"))))
    refs = [[] for _ in range(nf)]
    for a, b in zip(pf, pr):
        refs[a - 1].append(str(int(b)))
    cent = [np.bincount(F.lab, weights=c, minlength=nf + 1)[1:] / np.maximum(F.sizes, 1)
            for c in np.unravel_index(F.idx, F.labels.shape)]
    lesions = pd.DataFrame({
        "lesion": np.arange(1, nf + 1, dtype=np.int64),
        "n_voxels": F.sizes,
        "volume_ml": sizes * float(voxel_ml),
        "covered_fraction": frac,
        "reference_voxels": v_ref,
        "reference_volume_ml": v_ref * float(voxel_ml),
        "class": cls,
        "reference_lesions": [";".join(x) for x in refs],
        "centroid_z": cent[0], "centroid_y": cent[1], "centroid_x": cent[2],
    })
    code = np.zeros(nf + 1, np.uint8)
    code[1:] = [QC_LABELS[c] for c in cls]
    qc = code[F.labels]
    n_new, n_enl = int(new.sum()), int(enlarging.sum())
    counts = {
        "n_lesions": int(nf), "n_new": n_new, "n_enlarging": n_enl, "n_new_or_enlarging": n_new + n_enl,
        "n_stable": int((cls == "stable").sum()), "n_shrinking": int(shrinking.sum()),
        "n_new_small": int(new_small.sum()),
        "new_volume_ml": float(sizes[new].sum() * voxel_ml),
        "enlarging_volume_ml": float(sizes[enlarging].sum() * voxel_ml),
        "n_reference_lesions": int(nr), "n_resolved": int(nr - np.unique(pr).size),
    }
    return lesions, counts, qc


def reference_index(k: int, reference: str) -> int:
    """Index of the reference of visit ``k`` (> 0) in a subject's visit list."""
    return k - 1 if reference == "previous" else 0


def track_subject(masks: Sequence, sessions: Sequence[str], voxel_ml: float = 1.0, *, participant_id: str = "",
                  reference: str = "previous", **params) -> tuple[pd.DataFrame, pd.DataFrame, list[np.ndarray]]:
    """Track one subject's lesions over its visits (arrays in, tables out).

    ``masks`` are the visits' binary masks in one grid, ordered as ``sessions``
    (``ses-wNNN``; sorted here by week). Returns ``(lesions, visits, qc_maps)`` with
    one QC map per follow-up (all visits but the first, in week order).
    """
    check_params(reference, **params)
    if len(masks) != len(sessions) or not len(masks):
        raise InputError(f"{participant_id}: {len(masks)} mask(s) for {len(sessions)} session(s)")
    weeks = [week_from_session(s) for s in sessions]
    if len(set(weeks)) != len(weeks):
        raise InputError(f"{participant_id}: duplicate visits {list(sessions)}")
    order = np.argsort(weeks, kind="stable")
    sessions = [sessions[i] for i in order]
    masks = [masks[i] for i in order]
    weeks = [weeks[i] for i in order]
    par = {"reference": reference, "connectivity": params.get("connectivity", CONNECTIVITY),
           "min_size": params.get("min_size", MIN_SIZE), "new_overlap": params.get("new_overlap", OVERLAP),
           "enlarge_relative": params.get("enlarge_relative", ENLARGE_RELATIVE),
           "enlarge_voxels": params.get("enlarge_voxels", ENLARGE_VOXELS),
           "reference_min_size": params.get("reference_min_size", REFERENCE_MIN_SIZE),
           "new_min_size": params.get("new_min_size", MIN_SIZE)}
    first = _label(_as_mask(masks[0], "mask"), par["connectivity"], par["min_size"])
    visit_rows = [{"participant_id": participant_id, "session": sessions[0], "week": weeks[0],
                   "reference_session": "", "reference_week": math.nan, "n_lesions": int(first.sizes.size),
                   "voxel_ml": float(voxel_ml), **par}]
    frames, qcs = [], []
    for k in range(1, len(masks)):
        j = reference_index(k, reference)
        les, counts, qc = classify_pair(masks[j], masks[k], voxel_ml, **params)
        ids = {"participant_id": participant_id, "session": sessions[k], "week": weeks[k],
               "reference_session": sessions[j]}
        for i, (c, v) in enumerate(ids.items()):
            les.insert(i, c, v)
        frames.append(les)
        qcs.append(qc)
        visit_rows.append({**ids, "reference_week": weeks[j], **counts, "voxel_ml": float(voxel_ml), **par})
    lesions = (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()).reindex(columns=LESION_COLUMNS)
    visits = pd.DataFrame(visit_rows).reindex(columns=VISIT_COLUMNS)
    return lesions, visits, qcs


def qc_name(participant_id: str, session: str) -> str:
    """File name of a follow-up's QC label map inside the tracking QC folder."""
    return f"{participant_id}_{session}_space-MNI1x1x3_desc-newenlarging_dseg.nii.gz"


def run_tracking(mask_paths: Sequence, sessions: Sequence[str], out_lesions_tsv, out_visits_tsv, qc_dir, *,
                 participant_id: str, reference: str = "previous", **params) -> pd.DataFrame:
    """Path-level entry point (rule ``track_lesions``): one subject, one source, every visit.

    Reads the masks (binary or label masks; all in one geometry, else
    :class:`InputError` naming the files), writes the per-lesion and per-visit
    tables and, under ``qc_dir``, one QC label map per follow-up
    (:func:`qc_name`). Returns the visits table.
    """
    check_params(reference, **params)
    arrays, imgs = [], []
    for p in mask_paths:
        a, img = _read_mask(p)
        arrays.append(a)
        imgs.append(img)
    bad = [f"{p}: geometry differs from {mask_paths[0]} (size {img.GetSize()} vs {imgs[0].GetSize()}, "
           f"spacing/origin/direction checked too)"
           for p, img in zip(mask_paths[1:], imgs[1:]) if not io.same_geometry(imgs[0], img)]
    if bad:
        raise InputError(bad, header=f"{participant_id}: the visits' masks are not in one grid:")
    voxel_ml = io.voxel_volume_ml(imgs[0])
    lesions, visits, qcs = track_subject(arrays, list(sessions), voxel_ml, participant_id=participant_id,
                                         reference=reference, **params)
    qc_dir = Path(qc_dir)
    qc_dir.mkdir(parents=True, exist_ok=True)
    order = np.argsort([week_from_session(s) for s in sessions], kind="stable")
    for k, qc in zip(order[1:], qcs):
        io.write_array(qc, imgs[k], qc_dir / qc_name(participant_id, sessions[k]))
    io.write_tsv(lesions, out_lesions_tsv, na_rep="n/a")
    io.write_tsv(counts_as_integers(visits), out_visits_tsv, na_rep="n/a")
    fu = visits.iloc[1:]
    log.info("%s: %d follow-up(s) against the %s visit: %d new, %d enlarging lesions", participant_id, len(fu),
             reference, int(fu["n_new"].sum()) if len(fu) else 0, int(fu["n_enlarging"].sum()) if len(fu) else 0)
    return visits


# --------------------------------------------------------------------------- agreement with GT

AGREEMENT_COLUMNS = [
    "source", "quantity", "n_visits", "n_visits_equal", "mean_gt", "mean_source", "mean_difference", "r",
    "ci_low", "ci_high", "p", "n_gt_new_lesions", "n_detected", "detection_rate", "n_detected_as_new",
    "detection_rate_as_new", "new_overlap", "confidence", "note",
]


def detect_new_lesions(gt_qc, source_qc, new_overlap: float = OVERLAP,
                       connectivity: int = CONNECTIVITY) -> tuple[int, int, int]:
    """GT new lesions (label 1 of a GT QC map) that a source's QC map finds, at one visit.

    A GT new lesion is *detected* when it matches (the metrics' rule: > 0 and ≥
    ``new_overlap`` of its voxels) the source's new or enlarging lesions (labels 1, 2),
    and *detected as new* when it matches the source's new lesions (label 1).
    Returns ``(n_gt_new, n_detected, n_detected_as_new)``.
    """
    g = _as_mask(np.asarray(gt_qc) == QC_LABELS["new"], "gt_qc")
    s = np.asarray(source_qc)
    les = _label(g, connectivity, 1)  # each new lesion is a whole connected follow-up lesion
    n = les.sizes.size
    if not n:
        return 0, 0, 0
    found = []
    for hit in ((s[g] == 1) | (s[g] == 2), s[g] == 1):
        # les.idx enumerates g's voxels in C order, like s[g]
        cov = np.bincount(les.lab[hit], minlength=n + 1)[1:]
        found.append(int(_matches(cov / les.sizes, new_overlap).sum()))
    return n, found[0], found[1]


def agreement_table(visits: pd.DataFrame, detections: pd.DataFrame | None = None, *,
                    new_overlap: float = OVERLAP, confidence: float = 0.95) -> pd.DataFrame:
    """Per source, per-visit new (and new-or-enlarging) counts against GT's (Table 2's longitudinal twin).

    ``visits``: tracking visit rows of every source (``source`` column, ``gt`` among
    them); ``detections``: per source × follow-up visit ``n_gt_new, n_detected,
    n_detected_as_new`` (:func:`detect_new_lesions`). Follow-up visits present for
    GT and the source are compared: Pearson r with a Fisher-z CI, mean counts, visits
    with equal counts; detection rate = detected GT new lesions / GT new lesions.
    """
    from t2lesion.evaluation.table2 import pearson_ci

    fu = visits[visits["reference_session"].fillna("") != ""]
    gt = fu[fu["source"] == "gt"]
    rows = []
    for src in dict.fromkeys(fu["source"]):
        if src == "gt":
            continue
        m = gt.merge(fu[fu["source"] == src], on=["participant_id", "session"], suffixes=("_gt", "_src"))
        det = None
        if detections is not None and len(detections):
            det = detections[detections["source"] == src].sum(numeric_only=True)
        for q in ("n_new", "n_new_or_enlarging"):
            a, b = m[f"{q}_gt"].to_numpy(float), m[f"{q}_src"].to_numpy(float)
            row = {"source": src, "quantity": q, "n_visits": len(m), "n_visits_equal": int((a == b).sum()),
                   "mean_gt": a.mean() if len(m) else math.nan, "mean_source": b.mean() if len(m) else math.nan,
                   "mean_difference": (b - a).mean() if len(m) else math.nan, "new_overlap": new_overlap,
                   "confidence": confidence, "note": ""}
            pc = pearson_ci(a, b, confidence)
            row.update(r=pc["r"], ci_low=pc["ci_low"], ci_high=pc["ci_high"], p=pc["p"])
            if len(m) and math.isnan(pc["r"]):
                row["note"] = "r undefined: fewer than 3 visits or a constant count"
            if det is not None and q == "n_new":
                n_gt = int(det.get("n_gt_new", 0))
                row.update(n_gt_new_lesions=n_gt, n_detected=int(det.get("n_detected", 0)),
                           n_detected_as_new=int(det.get("n_detected_as_new", 0)),
                           detection_rate=det.get("n_detected", 0) / n_gt if n_gt else math.nan,
                           detection_rate_as_new=det.get("n_detected_as_new", 0) / n_gt if n_gt else math.nan)
            rows.append(row)
    return pd.DataFrame(rows).reindex(columns=AGREEMENT_COLUMNS)


def run_agreement(visit_tsvs_by_source, qc_dirs_by_source, out_tsv, *, new_overlap: float = OVERLAP,
                  connectivity: int = CONNECTIVITY, confidence: float = 0.95) -> pd.DataFrame:
    """Path-level entry point (rule ``new_lesion_agreement``): :func:`agreement_table` from the tracking outputs."""
    frames = []
    for src, paths in visit_tsvs_by_source.items():
        for p in paths:
            frames.append(pd.read_csv(p, sep="\t", na_values=["n/a"], keep_default_na=False,
                                      dtype={"participant_id": str, "session": str, "reference_session": str})
                          .assign(source=src))
    visits = pd.concat(frames, ignore_index=True)
    visits["reference_session"] = visits["reference_session"].fillna("")
    if "gt" not in visit_tsvs_by_source:
        raise InputError("new-lesion agreement needs the 'gt' source (GT lesion masks)")
    folder = {(src, Path(d).parent.name): Path(d) for src, dirs in qc_dirs_by_source.items() for d in dirs}
    det = []
    fu = visits[visits["reference_session"] != ""]
    gt_keys = set(zip(fu.loc[fu["source"] == "gt", "participant_id"], fu.loc[fu["source"] == "gt", "session"]))
    for r in fu[fu["source"] != "gt"].itertuples():
        if (r.participant_id, r.session) not in gt_keys:
            continue
        name = qc_name(r.participant_id, r.session)
        g, _ = io.read_array(folder[("gt", r.participant_id)] / name, np.int16)
        s, _ = io.read_array(folder[(r.source, r.participant_id)] / name, np.int16)
        if g.shape != s.shape:
            raise InputError(f"{name}: GT and {r.source} QC maps differ in shape {g.shape} vs {s.shape}")
        n, d1, d2 = detect_new_lesions(g, s, new_overlap, connectivity)
        det.append({"source": r.source, "participant_id": r.participant_id, "session": r.session,
                    "n_gt_new": n, "n_detected": d1, "n_detected_as_new": d2})
    table = agreement_table(visits, pd.DataFrame(det), new_overlap=new_overlap, confidence=confidence)
    io.write_tsv(table, out_tsv, na_rep="n/a", float_format="%.15g")
    for r in table.itertuples():
        log.info("%s %s: r %.3f over %d visits, %d equal; detection %s", r.source, r.quantity, r.r, r.n_visits,
                 r.n_visits_equal, r.detection_rate)
    return table


# --------------------------------------------------------------------------- synthetic truth


def _ses(label: str) -> str:
    return str(label) if str(label).startswith("ses-") else f"ses-{label}"


def volume_change_class(volume: float, reference: float, voxel_ml: float,
                        enlarge_relative: float = ENLARGE_RELATIVE, enlarge_voxels: float = ENLARGE_VOXELS) -> str:
    """One lesion's change from its reference volume (both in mL; :func:`change_flags` with
    voxels of ``voxel_ml``): ``enlarging``, ``shrinking`` or ``stable``, on identities known."""
    enlarging, shrinking = change_flags(volume, reference, voxel_ml, enlarge_relative, enlarge_voxels)
    return "enlarging" if enlarging else "shrinking" if shrinking else "stable"


def truth_counts(lesions: pd.DataFrame, sessions_by_subject: dict | None = None, *, reference: str = "previous",
                 voxel_ml: float = 0.003, min_size: int = MIN_SIZE, enlarge_relative: float = ENLARGE_RELATIVE,
                 enlarge_voxels: float = ENLARGE_VOXELS, new_min_size: int = MIN_SIZE) -> pd.DataFrame:
    """New/enlarging counts per follow-up visit from the synthetic truth (``truth/lesions.tsv``).

    The same rule as the masks', on lesion identities: a lesion (``lesion_id``,
    ``volume_ml`` >= ``min_size`` voxels of ``voxel_ml``) is **new** when its id is
    absent at the reference visit (no voxel there), **enlarging** when the same
    id grew by ≥ ``enlarge_relative`` and ≥ ``enlarge_voxels`` × ``voxel_ml`` mL. Volumes
    in mL, since the truth's voxel counts are in the native grid. The generator's
    own ``status`` (any growth is "enlarging") is not the endpoint's and is not used. A new
    lesion counts from ``new_min_size`` voxels, like the masks' size floor.
    Visits of a subject come from ``sessions_by_subject`` (participant_id → sessions)
    or from the table. Returns participant_id, session, week, reference_session,
    n_new, n_enlarging, n_new_or_enlarging.
    """
    t = lesions.copy()
    t["session"] = [_ses(s) for s in t["session"]]
    counted = t["volume_ml"] >= min_size * voxel_ml * (1 - _TOL)
    if sessions_by_subject is None:
        sessions_by_subject = {p: sorted(set(g["session"]), key=week_from_session)
                               for p, g in t.groupby("participant_id")}
    rows = []
    for pid, sessions in sessions_by_subject.items():
        sessions = sorted((_ses(s) for s in sessions), key=week_from_session)
        mine = t["participant_id"] == pid
        vol = {s: dict(zip(g["lesion_id"], g["volume_ml"])) for s, g in t[mine].groupby("session")}
        big = {s: dict(zip(g["lesion_id"], g["volume_ml"])) for s, g in t[mine & counted].groupby("session")}
        for k in range(1, len(sessions)):
            ref = sessions[reference_index(k, reference)]
            cur, old = big.get(sessions[k], {}), vol.get(ref, {})
            floor = max(min_size, new_min_size) * voxel_ml * (1 - _TOL)
            new = sum(1 for i, v in cur.items() if i not in old and v >= floor)
            enl = sum(1 for i, v in cur.items() if i in old and volume_change_class(
                v, old[i], voxel_ml, enlarge_relative, enlarge_voxels) == "enlarging")
            rows.append({"participant_id": pid, "session": sessions[k], "week": week_from_session(sessions[k]),
                         "reference_session": ref, "n_new": new, "n_enlarging": enl, "n_new_or_enlarging": new + enl})
    return pd.DataFrame(rows, columns=["participant_id", "session", "week", "reference_session", "n_new",
                                       "n_enlarging", "n_new_or_enlarging"])
