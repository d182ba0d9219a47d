"""The reader's review queue: every visit of a trial ranked by a doubt score (docs/DESIGN.md §14).

A central reading lab checks lesion masks before the endpoints are locked; this module tells
it where to look first. Nothing here needs GT (real trials have none).

Per visit (:func:`visit_features`, rule ``review_visit``), on the common MNI 1 × 1 × 3 mm grid:

* ``mi_mean``: mean mutual information (nats) of the U-Net ensemble inside its predicted mask
  (n/a when the mask is empty), and ``uncertain_ml``: the volume of brain voxels whose MI is at
  least ``mi_threshold`` (the uncertain voxels, inside or outside the mask);
* ``dice_sources`` and ``tlv_diff_ml``: Dice and |TLV difference| between the queue's source
  (``unet``) and the other source (``classical``); two empty masks agree (Dice 1);
* ``n_flicker``: lesions that vanish and come back — connected components of the previous and
  the next visit's masks (their intersection, components of at least ``min_size`` voxels) that
  no voxel of this visit's mask touches;
* ``brain_ml``: the brain mask's volume on the MNI grid (rigid registration keeps volume), for
  the brain-volume change between visits; ``skullstrip_ml``: the visit's own native skull-strip
  mask volume (baseline visits, and follow-ups with ``followup_brain_mask: own``);
* ``reg_cost``: the final metric value of the visit's rigid registration (to MNI at the
  baseline, to the baseline at a follow-up; Mattes mutual information, lower is better) read
  from that job's log, n/a when the log is absent or has no such line.

Per trial (:func:`build_queue`, rule ``review_queue``), the per-visit rows are joined and the
temporal components added per subject (visits by week): ``tlv_change_ml`` (TLV minus the
previous visit's) and ``brain_change`` (relative brain-volume change from the previous visit).

The score. Each component ``c`` becomes a robust z-score over the trial's visits,
``z = (x − median) / (1.4826 · MAD)`` (the standard deviation when the MAD is 0; 0 when every
value is equal; the registration cost within baseline and follow-up registrations
separately), oriented so that only doubt counts (:data:`COMPONENTS`: ``high`` keeps z > 0,
``low`` keeps −z > 0, ``both`` takes |z|), capped at :data:`Z_CAP` so that one wild component
cannot hide the others, and n/a counts 0. ``score = Σ_c z_c``; the queue is sorted by score
(ties: participant, session) and ``top_reason`` names the largest ``z_c``. Each component's
raw value and its ``z_`` contribution are columns of the queue, so a reader sees why a visit
ranks where it does.

Without ``unet`` among the sources the queue ranks the ``classical`` masks on the components
that need no ensemble (MI columns n/a, no disagreement); see :func:`queue_sources`.

Public API: :func:`visit_features`, :func:`run_visit_features`, :func:`registration_cost`,
:func:`robust_z`, :func:`build_queue`, :func:`run_queue`, :func:`queue_sources`,
:func:`run_review_figure`, :func:`top_ids`, :data:`COMPONENTS`, and the review bundle
(:func:`write_bundle`, :func:`itksnap_workspace`, :func:`run_bundles`).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from t2lesion import io
from t2lesion.errors import InputError
from t2lesion.classical import MAD_TO_SD
from t2lesion.corrections import correction_path
from t2lesion.evaluation.segmentation import CONNECTIVITY, MIN_SIZE, _label, voxel_metrics

log = logging.getLogger(__name__)

#: The score's components: queue column -> direction of doubt ('high', 'low' or 'both').
COMPONENTS = {
    "mi_mean": "high",
    "uncertain_ml": "high",
    "dice_sources": "low",
    "tlv_diff_ml": "high",
    "tlv_change_ml": "both",
    "n_flicker": "high",
    "brain_change": "both",
    "reg_cost": "high",
    "skullstrip_ml": "both",
}
COMPONENTS_LIST = list(COMPONENTS)
#: Largest contribution of one component (robust z units).
Z_CAP = 10.0
#: MI (nats) from which a voxel counts as uncertain (config review.mi_threshold; ln 2 ≈ 0.693 is the maximum).
MI_THRESHOLD = 0.1
FEATURE_COLUMNS = [
    "participant_id", "session", "week", "source", "other_source", "tlv_ml", "tlv_other_ml", "mi_mean",
    "uncertain_ml", "dice_sources", "tlv_diff_ml", "n_flicker", "brain_ml", "skullstrip_ml", "reg_kind", "reg_cost",
]
_REG_LINE = re.compile(r"rigid registration: metric (-?[0-9.eE+-]+|nan)")


def queue_sources(sources: Sequence[str]) -> tuple[str | None, str | None]:
    """The source the queue ranks (``unet`` if present, else ``classical``) and the one it is
    compared with (``classical`` beside ``unet``; None otherwise)."""
    primary = "unet" if "unet" in sources else ("classical" if "classical" in sources else None)
    other = "classical" if primary == "unet" and "classical" in sources else None
    return primary, other


# --------------------------------------------------------------------------- per visit


def _flicker(prev, cur, nxt, connectivity: int, min_size: int) -> int:
    """Lesions present at the previous and the next visit (their intersection's components of
    at least ``min_size`` voxels) that no voxel of ``cur`` touches."""
    both = np.asarray(prev, bool) & np.asarray(nxt, bool)
    if not both.any():
        return 0
    les = _label(both, connectivity, min_size)
    if not les.sizes.size:
        return 0
    hit = np.zeros(les.sizes.size + 1, bool)
    hit[les.lab[np.asarray(cur, bool).ravel()[les.idx]]] = True
    return int((~hit[1:]).sum())


def visit_features(mask, brain, voxel_ml: float, *, mi=None, other=None, prev=None, nxt=None,
                   native_brain_ml: float = math.nan, reg_cost: float = math.nan,
                   mi_threshold: float = MI_THRESHOLD, connectivity: int = CONNECTIVITY,
                   min_size: int = MIN_SIZE) -> dict:
    """One visit's raw components from arrays on one grid (see the module docstring).

    ``mask``: the queue source's lesion mask; ``brain``: the MNI brain mask; ``mi``: the
    ensemble's MI map (None: no ensemble); ``other``: the other source's mask; ``prev``/``nxt``:
    the same source's masks of the subject's previous and next visits (None at the ends).
    """
    m = np.asarray(mask) > 0
    b = np.asarray(brain) > 0
    tlv = int(m.sum()) * voxel_ml
    out = {"tlv_ml": tlv, "brain_ml": int(b.sum()) * voxel_ml, "skullstrip_ml": float(native_brain_ml),
           "reg_cost": float(reg_cost), "mi_mean": math.nan, "uncertain_ml": math.nan,
           "tlv_other_ml": math.nan, "dice_sources": math.nan, "tlv_diff_ml": math.nan, "n_flicker": math.nan}
    if mi is not None:
        u = np.asarray(mi, np.float64)
        out["mi_mean"] = float(u[m].mean()) if m.any() else math.nan
        out["uncertain_ml"] = int(((u >= mi_threshold) & (b | m)).sum()) * voxel_ml
    if other is not None:
        vm = voxel_metrics(np.asarray(other) > 0, m, voxel_ml)
        out["tlv_other_ml"] = vm["gt_tlv_ml"]
        # two empty masks agree fully (Table 2 leaves that Dice undefined: no lesion to find)
        out["dice_sources"] = 1.0 if vm["gt_voxels"] + vm["pred_voxels"] == 0 else vm["dc"]
        out["tlv_diff_ml"] = abs(vm["pred_voxels"] - vm["gt_voxels"]) * voxel_ml
    if prev is not None and nxt is not None:
        out["n_flicker"] = _flicker(np.asarray(prev) > 0, m, np.asarray(nxt) > 0, connectivity, min_size)
    return out


def registration_cost(log_path: str | Path | None) -> float:
    """The last ``rigid registration: metric X`` value of a registration job's log (NaN when
    the log is absent or has no such line: the cost is then left out of the score)."""
    if not log_path or not Path(log_path).is_file():
        return math.nan
    values = _REG_LINE.findall(Path(log_path).read_text(errors="replace"))
    return float(values[-1]) if values else math.nan


def _read(path, what: str, *, ref: Path | None = None, ref_img=None):
    arr, img = io.read_array(path, dtype=np.float32)
    if ref_img is not None and not io.same_geometry(img, ref_img):
        raise InputError(f"{path}: {what} is not on the grid of {ref} (size {img.GetSize()} vs {ref_img.GetSize()})")
    return arr, img


def run_visit_features(paths: Mapping[str, str | None], out_tsv, *, participant_id: str, session: str, week: int,
                       source: str, other_source: str | None, reg_kind: str, reg_log: str | None = None,
                       mi_threshold: float = MI_THRESHOLD, connectivity: int = CONNECTIVITY,
                       min_size: int = MIN_SIZE) -> dict:
    """Path-level entry point (rule ``review_visit``): ``paths`` has ``mask`` and ``brain`` and
    optionally ``mi``, ``other``, ``prev``, ``next`` (same grid, else :class:`InputError` naming
    the file) and ``native_brain`` (its own grid). Writes one row of :data:`FEATURE_COLUMNS`."""
    mask, ref_img = _read(paths["mask"], "mask")
    ref = Path(paths["mask"])
    arrays = {}
    for key in ("brain", "mi", "other", "prev", "next"):
        if paths.get(key):
            arrays[key] = _read(paths[key], key, ref=ref, ref_img=ref_img)[0]
    native_ml = math.nan
    if paths.get("native_brain"):
        nb, nb_img = _read(paths["native_brain"], "native brain mask")
        native_ml = int((nb > 0).sum()) * io.voxel_volume_ml(nb_img)
    row = visit_features(mask, arrays["brain"], io.voxel_volume_ml(ref_img), mi=arrays.get("mi"),
                         other=arrays.get("other"), prev=arrays.get("prev"), nxt=arrays.get("next"),
                         native_brain_ml=native_ml, reg_cost=registration_cost(reg_log), mi_threshold=mi_threshold,
                         connectivity=connectivity, min_size=min_size)
    row.update(participant_id=participant_id, session=session, week=int(week), source=source,
               other_source=other_source or "", reg_kind=reg_kind)
    df = pd.DataFrame([row]).reindex(columns=FEATURE_COLUMNS)
    io.write_tsv(df, out_tsv, na_rep="n/a")
    log.info("%s %s: TLV %.3f mL, MI in mask %s, Dice vs %s %s, flicker %s", participant_id, session, row["tlv_ml"],
             row["mi_mean"], other_source, row["dice_sources"], row["n_flicker"])
    return row


# --------------------------------------------------------------------------- per trial


def robust_z(x) -> np.ndarray:
    """(x − median) / (1.4826 · MAD) over the finite values (the SD when the MAD is 0; all 0
    when they are equal or fewer than 2); NaN stays NaN."""
    x = np.asarray(x, np.float64)
    z = np.full(x.shape, np.nan)
    ok = np.isfinite(x)
    if ok.sum() < 2:
        return z
    v = x[ok]
    med = np.median(v)
    scale = MAD_TO_SD * np.median(np.abs(v - med))
    if scale <= 0:
        scale = float(np.std(v))
    z[ok] = 0.0 if scale <= 0 else (v - med) / scale
    return z


def _oriented(z: np.ndarray, direction: str) -> np.ndarray:
    if direction == "high":
        c = np.maximum(z, 0.0)
    elif direction == "low":
        c = np.maximum(-z, 0.0)
    else:
        c = np.abs(z)
    return np.nan_to_num(np.minimum(c, Z_CAP), nan=0.0)


def build_queue(features: pd.DataFrame) -> pd.DataFrame:
    """The ranked queue from the per-visit rows (:data:`FEATURE_COLUMNS`): temporal components
    per subject, one ``z_<component>`` column per component, ``score``, ``rank``, ``top_reason``."""
    missing = [c for c in FEATURE_COLUMNS if c not in features.columns]
    if missing:
        raise InputError(f"review features lack columns {missing}")
    df = features.copy()
    for c in FEATURE_COLUMNS[5:]:
        if c != "reg_kind":
            df[c] = pd.to_numeric(df[c], errors="coerce")
    df = df.sort_values(["participant_id", "week"], kind="mergesort").reset_index(drop=True)
    prev = df.groupby("participant_id", sort=False)
    df["tlv_change_ml"] = df["tlv_ml"] - prev["tlv_ml"].shift(1)
    df["brain_change"] = df["brain_ml"] / prev["brain_ml"].shift(1) - 1.0
    for comp, direction in COMPONENTS.items():
        if comp == "reg_cost":
            z = np.full(len(df), np.nan)
            for _, idx in df.groupby(df["reg_kind"].fillna("")).groups.items():
                z[np.asarray(idx)] = robust_z(df.loc[idx, comp])
        else:
            z = robust_z(df[comp])
        df[f"z_{comp}"] = _oriented(z, direction)
    zcols = [f"z_{c}" for c in COMPONENTS]
    df["score"] = df[zcols].sum(axis=1)
    top = df[zcols].to_numpy()
    df["top_reason"] = [COMPONENTS_LIST[int(np.argmax(r))] if r.max() > 0 else "" for r in top]
    df = df.sort_values(["score", "participant_id", "session"], ascending=[False, True, True], kind="mergesort")
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    cols = ["rank", "participant_id", "session", "week", "score", "top_reason", "source", "other_source", "tlv_ml",
            "tlv_other_ml", "brain_ml"]
    for c in COMPONENTS:
        cols += [c, f"z_{c}"]
    return df.reindex(columns=cols).reset_index(drop=True)


def run_queue(feature_tsvs: Sequence[str | Path], out_tsv) -> pd.DataFrame:
    """Path-level entry point (rule ``review_queue``): join the per-visit rows, rank, write."""
    frames = [pd.read_csv(p, sep="\t", dtype={"participant_id": str, "session": str}, na_values="n/a")
              for p in feature_tsvs]
    if not frames:
        raise InputError("review queue: no per-visit review rows")
    queue = build_queue(pd.concat(frames, ignore_index=True))
    io.write_tsv(queue, out_tsv, na_rep="n/a", float_format="%.6g")
    head = queue.head(3)
    first = [f"{r.participant_id} {r.session} ({r.score:.2f}, {r.top_reason or '-'})" for r in head.itertuples()]
    log.info("review queue: %d visits; first %s", len(queue), ", ".join(first))
    return queue


def top_ids(queue_tsv: str | Path, n: int | None) -> list[str]:
    """The first ``n`` visit ids ``sub-<s>_ses-<w>`` of a queue (all of them for None)."""
    q = pd.read_csv(queue_tsv, sep="\t", dtype={"participant_id": str, "session": str})
    ids = list(q["participant_id"] + "_" + q["session"])
    return ids if n is None else ids[: int(n)]


# --------------------------------------------------------------------------- report page


def run_review_figure(queue_tsv: str | Path, ids: Sequence[str], flairs: Sequence, firsts: Sequence,
                      seconds: Sequence, out_png: str | Path, *, n_visits: int = 4,
                      names: tuple[str, str] = ("classical", "unet"), trial: str = "") -> list[str]:
    """The report's review page: the queue's first ``n_visits`` visits, each on the axial FLAIR
    slice with the most lesion, ``firsts`` (red) and ``seconds`` (blue) over FLAIR, drawn by
    :func:`t2lesion.plots.overlays.fig2_png` (``ids``, ``flairs``, ``firsts``, ``seconds``
    aligned, one entry per visit of the trial). One source (``names`` twice the same, the
    queue source alone): its ``seconds`` only. Returns the ids shown."""
    from t2lesion.plots.overlays import fig2_png

    q = pd.read_csv(queue_tsv, sep="\t", dtype={"participant_id": str, "session": str})
    paths = {i: (f, a, b) for i, f, a, b in zip(ids, flairs, firsts, seconds)}
    cases = []
    for r in q.head(int(n_visits)).itertuples():
        vid = f"{r.participant_id}_{r.session}"
        if vid not in paths:
            raise InputError(f"{queue_tsv}: visit {vid} is not a visit of trial {trial}")
        f, a, b = paths[vid]
        cases.append({"id": f"#{r.rank} {vid}\nscore {r.score:.2f} ({r.top_reason or '-'})", "flair": f, "gt": a,
                      "pred": b})
    if names[0] == names[1]:  # one source: drawn against itself it would be all overlap
        title, names = f"Review queue, trial-{trial}: {names[1]} (blue)", (None, names[1])
    else:
        title = f"Review queue, trial-{trial}: {names[0]} (red) vs {names[1]} (blue), overlap purple"
    fig2_png(cases, out_png, title=title, names=names, empty="Review queue: no visit")
    return [c["id"] for c in cases]


# --------------------------------------------------------------------------- review bundles

#: A bundle's files: key -> file name after ``sub-<s>_ses-<w>_``, all on the native FLAIR's
#: grid: the T1w and T2w resampled onto it through the visit's own coregistration (so that
#: motion between the sequences does not misplace them, as their headers alone would).
BUNDLE_FILES = {
    "flair": "FLAIR.nii.gz",
    "t1w": "space-FLAIR_T1w.nii.gz",
    "t2w": "space-FLAIR_T2w.nii.gz",
    "prob": "space-FLAIR_desc-lesion_probseg.nii.gz",
    "mi": "space-FLAIR_desc-mi_uncertainty.nii.gz",
    "mask": "space-FLAIR_desc-lesion_mask.nii.gz",
}
#: ITK-SNAP layers, in order: (bundle key, role, nickname). The FLAIR is the main image, the
#: U-Net mask the segmentation a reader edits.
ITKSNAP_LAYERS = (
    ("flair", "MainRole", "FLAIR"),
    ("t1w", "OverlayRole", "T1w"),
    ("t2w", "OverlayRole", "T2w"),
    ("prob", "OverlayRole", "U-Net probability"),
    ("mi", "OverlayRole", "U-Net mutual information"),
    ("mask", "SegmentationRole", "U-Net lesion mask"),
)
_ITKSNAP_HEAD = """<?xml version="1.0" encoding="UTF-8" ?>
<!--ITK-SNAP (itksnap.org) Project File, written by t2lesion.review.
Paths are relative to this file; keep the images beside it.-->
<!DOCTYPE registry [
<!ELEMENT registry (entry*,folder*)>
<!ELEMENT folder (entry*,folder*)>
<!ELEMENT entry EMPTY>
<!ATTLIST folder key CDATA #REQUIRED>
<!ATTLIST entry key CDATA #REQUIRED>
<!ATTLIST entry value CDATA #REQUIRED>
]>
"""


def itksnap_workspace(layers: Sequence[tuple[str, str, str]]) -> str:
    """An ITK-SNAP workspace (``.itksnap``, XML) of ``layers`` ``(path, role, nickname)``:
    one ``MainRole`` first, then overlays and the ``SegmentationRole``.

    The paths are written as given (relative to the workspace file) and ``SaveLocation`` is
    empty: ITK-SNAP treats a workspace whose folder differs from its save location as moved
    and resolves each layer path against the workspace's own folder
    (``WorkspaceAPI::GetLayerActualPath``), so the bundle opens wherever it is copied.
    """
    from xml.sax.saxutils import quoteattr

    def entry(key, value, indent):
        return f"{' ' * indent}<entry key={quoteattr(key)} value={quoteattr(str(value))} />"

    lines = [_ITKSNAP_HEAD.rstrip("\n"), "<registry>", entry("SaveLocation", "", 2), entry("Version", "20190612", 2),
             '  <folder key="Layers" >']
    for i, (path, role, nick) in enumerate(layers):
        lines += [f'    <folder key="Layer[{i:03d}]" >', entry("AbsolutePath", path, 6), entry("Role", role, 6),
                  entry("Tags", "", 6), '      <folder key="LayerMetaData" >', entry("CustomNickName", nick, 8),
                  "      </folder>", "    </folder>"]
    lines += ["  </folder>", "</registry>", ""]
    return "\n".join(lines)


def write_bundle(visit_id: str, paths: Mapping[str, str | Path], out_dir: str | Path) -> Path:
    """One visit's review bundle in ``out_dir``: the raw FLAIR and the U-Net's native mask
    copied; the raw T1w and T2w resampled onto the FLAIR's grid (linear, rounded to their type)
    through the visit's coregistration; the U-Net's probability and MI maps carried to the
    native FLAIR grid with the visit's transform (:func:`t2lesion.unet.infer.map_to_native`,
    the function family that made the native mask); and ``<visit_id>.itksnap``. ``paths``:
    flair, t1w, t2w (raw), mask (native), prob, mi (MNI), xfm (``from-FLAIR_to-MNI1x1x3``),
    flair_to_t1w and t2w_to_t1w (``from-FLAIR_to-T1w``, ``from-T2w_to-T1w``: T1w points to the
    contrast's). Returns the workspace's path."""
    import shutil

    import SimpleITK as sitk

    from t2lesion.preprocess._common import read_transform
    from t2lesion.unet.infer import map_to_native

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = {k: f"{visit_id}_{suffix}" for k, suffix in BUNDLE_FILES.items()}
    flair = io.read_image(paths["flair"])
    mask = io.read_image(paths["mask"])
    if not io.same_geometry(mask, flair):
        raise InputError(f"{paths['mask']}: not on the grid of the native FLAIR {paths['flair']}")
    for key in ("flair", "mask"):
        shutil.copyfile(paths[key], out / names[key])
    to_t1w = read_transform(paths["flair_to_t1w"]).GetInverse()  # FLAIR points -> T1w points
    for key, tx in (("t1w", to_t1w), ("t2w", sitk.CompositeTransform([read_transform(paths["t2w_to_t1w"]), to_t1w]))):
        img = io.read_image(paths[key])
        moved = sitk.Resample(img, flair, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        if img.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):  # rounded, not truncated, to its type
            moved = sitk.Cast(sitk.Round(moved), img.GetPixelID())
        io.write_image(moved, out / names[key])
    for key in ("prob", "mi"):
        io.write_image(map_to_native(io.read_image(paths[key]), flair, str(paths["xfm"])), out / names[key])
    ws = out / f"{visit_id}.itksnap"
    ws.write_text(itksnap_workspace([(names[k], role, nick) for k, role, nick in ITKSNAP_LAYERS]))
    return ws


def _bids_root(raw: str | Path) -> Path:
    """The BIDS folder holding a raw image: the parent of its ``sub-*`` folder."""
    path = Path(raw).absolute()
    for parent in path.parents:
        if parent.name.startswith("sub-"):
            return parent.parent
    return path.parent


def run_bundles(queue_tsv: str | Path, ids: Sequence[str], inputs: Mapping[str, Sequence], out_dir: str | Path, *,
                top_k: int | None) -> pd.DataFrame:
    """Path-level entry point (rule ``review_bundles``): a bundle per visit of the queue's first
    ``top_k`` (every visit for None) under ``out_dir/<visit>/``, and ``out_dir/bundles.tsv``
    (rank, visit, workspace relative to ``out_dir``, and ``save_correction_as``: where the
    reader saves the visit's corrected mask, :func:`t2lesion.corrections.correction_path`).
    ``inputs``: per key of :func:`write_bundle`,
    one path per visit, aligned with ``ids``."""
    index = {vid: i for i, vid in enumerate(ids)}
    q = pd.read_csv(queue_tsv, sep="\t", dtype={"participant_id": str, "session": str})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in q.itertuples():
        if top_k is not None and len(rows) >= int(top_k):
            break
        vid = f"{r.participant_id}_{r.session}"
        if vid not in index:
            raise InputError(f"{queue_tsv}: visit {vid} is not among the bundle inputs")
        paths = {k: v[index[vid]] for k, v in inputs.items()}
        ws = write_bundle(vid, paths, out / vid)
        save_as = correction_path(_bids_root(paths["flair"]), paths["flair"])
        rows.append({"rank": r.rank, "visit": vid, "score": r.score, "workspace": str(ws.relative_to(out)),
                     "save_correction_as": str(save_as)})
        log.info("bundle %d: %s (score %.2f); its correction goes to %s", r.rank, vid, r.score, save_as)
    table = pd.DataFrame(rows, columns=["rank", "visit", "score", "workspace", "save_correction_as"])
    io.write_tsv(table, out / "bundles.tsv")
    return table
