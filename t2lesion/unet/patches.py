"""Training patches without patch files (docs/DESIGN.md §3): one memory-mappable array per visit and a
window index per fold.

Store
-----
``store_visit`` writes one ``.npy`` per visit, shape (z, y, x, 5) float32, channels
``[T2w, FLAIR, T1w, mask, alpha]`` (``CHANNELS``; the image channels in
``ModelConfig.channel_order``), cropped to the brain mask's bounding box and zero-padded so
that every axis holds at least one patch. α is the per-voxel foreground weight of Eq. 1
(``losses.alpha_map``), computed on the *whole visit's* GT mask with the ``loss.alpha_*``
settings, so a lesion cut by the crop or by a window keeps the weight of its true volume.
A JSON sidecar (same stem) records where the array sits in the full grid and what it came from.

Index
-----
``index_windows`` slides windows of ``patch_size`` at ``overlap`` over a stored visit
(``windows.window_corners``) and keeps those with at least one lesion voxel: the paper found
that negative patches hurt (docs/DESIGN.md §3). ``build_index`` does this for a table of visits and
``write_fold_indices`` writes one TSV per fold.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from t2lesion.errors import InputError
from t2lesion.io import atomic_output, read_image, same_geometry, write_tsv
from t2lesion.unet.hparams import LossConfig
from t2lesion.unet.windows import bounding_box, pad_to, window_corners

IMAGE_CHANNELS = ("T2w", "FLAIR", "T1w")
CHANNELS = IMAGE_CHANNELS + ("mask", "alpha")
MASK, ALPHA = 3, 4

INDEX_COLUMNS = ["participant_id", "session", "path", "corner_z", "corner_y", "corner_x", "lesion_voxels", "fold"]
WINDOW_COLUMNS = ["corner_z", "corner_y", "corner_x", "lesion_voxels"]


def sidecar_path(npy_path: str | Path) -> Path:
    """The JSON sidecar of a stored visit: same stem, ``.json``."""
    return Path(npy_path).with_suffix(".json")


def _geometry(img: sitk.Image) -> str:
    return (f"size {img.GetSize()}, spacing {tuple(round(s, 4) for s in img.GetSpacing())}, "
            f"origin {tuple(round(o, 3) for o in img.GetOrigin())}, "
            f"direction {tuple(round(d, 3) for d in img.GetDirection())}")


def _check_patch_size(patch_size) -> tuple[int, int, int]:
    p = tuple(int(v) for v in patch_size)
    if len(p) != 3 or min(p) <= 0:
        raise ValueError(f"patch_size must be three positive integers (z, y, x), got {patch_size!r}")
    return p


def store_visit(images: Mapping[str, str | Path], brain_mask: str | Path, gt_mask: str | Path | None,
                out_npy: str | Path, loss_cfg: LossConfig | None = None,
                patch_size=(32, 96, 96)) -> dict:
    """Store one visit as a (z, y, x, 5) float32 ``.npy`` plus a JSON sidecar; return the sidecar.

    ``images`` maps ``T2w``, ``FLAIR`` and ``T1w`` to the preprocessed (z-scored) NIfTIs; all of
    them, the brain mask and the GT mask must share one grid, else an InputError names the files
    that differ. ``gt_mask=None`` (a visit without GT) stores an empty mask and α.
    """
    from t2lesion.unet.losses import alpha_map  # Keras: not at import, loader worker processes import this module

    cfg = loss_cfg or LossConfig()
    patch = _check_patch_size(patch_size)
    missing = [c for c in IMAGE_CHANNELS if c not in images]
    extra = sorted(set(images) - set(IMAGE_CHANNELS))
    if missing or extra:
        raise InputError(f"store_visit needs images {list(IMAGE_CHANNELS)}; missing {missing}, unexpected {extra}")

    sources = {c: Path(images[c]) for c in IMAGE_CHANNELS}
    sources["brain_mask"] = Path(brain_mask)
    if gt_mask is not None:
        sources["gt_mask"] = Path(gt_mask)
    imgs = {name: read_image(p) for name, p in sources.items()}
    ref_name = IMAGE_CHANNELS[0]
    ref = imgs[ref_name]
    bad = [f"{sources[n]}: {_geometry(im)}" for n, im in imgs.items() if not same_geometry(im, ref)]
    if bad:
        raise InputError(bad, header=(f"{out_npy}: the visit's images and masks must share one grid; these differ "
                                      f"from {sources[ref_name]} ({_geometry(ref)}):"))

    brain = sitk.GetArrayViewFromImage(imgs["brain_mask"]) > 0
    if not brain.any():
        raise InputError(f"{sources['brain_mask']}: brain mask is empty")
    if gt_mask is not None:
        gt = sitk.GetArrayViewFromImage(imgs["gt_mask"]) > 0
    else:
        gt = np.zeros(brain.shape, dtype=bool)
    # α of the whole visit, before any crop (a lesion keeps the weight of its full volume)
    alpha = alpha_map(gt, connectivity=cfg.alpha_connectivity, max_weight=cfg.alpha_max,
                      min_weight=cfg.alpha_min, midpoint_voxels=cfg.alpha_midpoint_voxels,
                      slope_voxels=cfg.alpha_slope_voxels)

    lo, hi = bounding_box(brain)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    stack = np.empty(tuple(b - a for a, b in zip(lo, hi)) + (len(CHANNELS),), dtype=np.float32)
    for c, name in enumerate(IMAGE_CHANNELS):
        stack[..., c] = sitk.GetArrayViewFromImage(imgs[name])[box]
    stack[..., MASK] = gt[box]
    stack[..., ALPHA] = alpha[box]
    if not np.isfinite(stack[..., :MASK]).all():
        raise InputError(f"{out_npy}: NaN/Inf voxels inside the brain box of {[str(sources[c]) for c in IMAGE_CHANNELS]}")
    stack, pad_before = pad_to(stack, patch)

    out_npy = Path(out_npy)
    sp = ref.GetSpacing()
    meta = {
        "channels": list(CHANNELS),
        "shape": list(stack.shape),
        "full_shape": list(brain.shape),
        # full-grid index = array index + array_origin (negative where the array is padded
        # beyond the grid's edge)
        "array_origin": [int(a - p) for a, p in zip(lo, pad_before)],
        "crop_lo": list(lo),
        "crop_hi": list(hi),
        "pad_before": list(pad_before),
        "spacing_zyx": [float(sp[2]), float(sp[1]), float(sp[0])],
        "patch_size": list(patch),
        "lesion_voxels": int(gt.sum()),
        "lesion_voxels_in_array": int(stack[..., MASK].sum()),
        "alpha": {"connectivity": cfg.alpha_connectivity, "max_weight": cfg.alpha_max,
                  "min_weight": cfg.alpha_min, "midpoint_voxels": cfg.alpha_midpoint_voxels,
                  "slope_voxels": cfg.alpha_slope_voxels},
        "sources": {name: str(p) for name, p in sources.items()},
    }
    with atomic_output(out_npy) as tmp:
        np.save(tmp, stack)
    with atomic_output(sidecar_path(out_npy)) as tmp:
        tmp.write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def open_visit(npy_path: str | Path) -> np.ndarray:
    """Memory-map a stored visit read-only, checking its layout (a clear error names the file)."""
    path = Path(npy_path)
    if not path.is_file():
        raise InputError(f"{path}: stored visit not found")
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({exc})") from None
    if arr.ndim != 4 or arr.shape[-1] != len(CHANNELS) or arr.dtype != np.float32:
        raise InputError(f"{path}: expected a (z, y, x, {len(CHANNELS)}) float32 array, "
                         f"found {arr.shape} {arr.dtype}")
    return arr


def _box_sums(mask: np.ndarray, corners: np.ndarray, size) -> np.ndarray:
    """Sum of ``mask`` over each window ``[corner, corner + size)`` via a summed-volume table."""
    s = np.zeros(tuple(n + 1 for n in mask.shape), dtype=np.int64)
    s[1:, 1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1).cumsum(2)
    z0, y0, x0 = corners.T
    z1, y1, x1 = z0 + size[0], y0 + size[1], x0 + size[2]
    return (s[z1, y1, x1] - s[z0, y1, x1] - s[z1, y0, x1] - s[z1, y1, x0]
            + s[z0, y0, x1] + s[z0, y1, x0] + s[z1, y0, x0] - s[z0, y0, x0])


def index_windows(npy_path: str | Path, patch_size, overlap: float = 0.2) -> pd.DataFrame:
    """Windows of ``patch_size`` at ``overlap`` over a stored visit that hold ≥ 1 lesion voxel:
    columns ``corner_z, corner_y, corner_x`` (array indices) and ``lesion_voxels``."""
    patch = _check_patch_size(patch_size)
    arr = open_visit(npy_path)
    if any(n < p for n, p in zip(arr.shape[:3], patch)):
        raise InputError(f"{npy_path}: stored array {arr.shape[:3]} is smaller than the patch {patch}; "
                         f"store the visit with this patch_size")
    mask = np.asarray(arr[..., MASK]) > 0.5
    corners = window_corners(arr.shape[:3], patch, overlap)
    counts = _box_sums(mask, corners, patch)
    keep = counts > 0
    df = pd.DataFrame(corners[keep], columns=WINDOW_COLUMNS[:3])
    df["lesion_voxels"] = counts[keep]
    return df


def build_index(visits: pd.DataFrame, patch_size, overlap: float = 0.2) -> pd.DataFrame:
    """Window index of many visits: ``visits`` has ``participant_id, session, path, fold``
    (``path`` the stored ``.npy``); returns ``INDEX_COLUMNS``, one row per kept window."""
    missing = [c for c in ("participant_id", "session", "path", "fold") if c not in visits.columns]
    if missing:
        raise InputError(f"visit table lacks column(s) {missing} (has {list(visits.columns)})")
    parts = []
    for row in visits.itertuples(index=False):
        w = index_windows(row.path, patch_size, overlap)
        w.insert(0, "participant_id", str(row.participant_id))
        w.insert(1, "session", str(row.session))
        w.insert(2, "path", str(row.path))
        w["fold"] = int(row.fold)
        parts.append(w)
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=object if c in ("participant_id", "session", "path") else np.int64)
                             for c in INDEX_COLUMNS})
    return pd.concat(parts, ignore_index=True)[INDEX_COLUMNS]


def write_fold_indices(index: pd.DataFrame, pattern: str, folds: Iterable[int] | None = None) -> dict[int, Path]:
    """Write one index TSV per fold to ``pattern.format(fold=k)`` (e.g.
    ``results/patches/index_fold-{fold}.tsv``); ``folds`` lists every fold, so a fold without
    windows still gets its (empty) file. Returns ``{fold: path}``."""
    if "{fold}" not in pattern:
        raise ValueError(f"pattern must contain '{{fold}}', got {pattern!r}")
    folds = sorted(set(int(f) for f in (index["fold"] if folds is None else folds)))
    out = {}
    for k in folds:
        path = Path(pattern.format(fold=k))
        write_tsv(index.loc[index["fold"] == k, INDEX_COLUMNS], path)
        out[k] = path
    return out


def read_index(path: str | Path) -> pd.DataFrame:
    """Read an index TSV (one or several folds' worth), checking its columns."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: window index not found")
    df = pd.read_csv(path, sep="\t", dtype={"participant_id": str, "session": str, "path": str})
    missing = [c for c in INDEX_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: window index lacks column(s) {missing}")
    return df


__all__ = [
    "CHANNELS", "INDEX_COLUMNS", "build_index", "index_windows", "open_visit", "read_index",
    "sidecar_path", "store_visit", "write_fold_indices",
]
