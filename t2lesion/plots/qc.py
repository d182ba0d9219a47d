"""Preprocessing QC figure (docs/DESIGN.md §2): the three contrasts at a few axial slices, with the
brain-mask outline (yellow) and the GT lesions (red), in radiological convention.

Display windows: T1w and T2w from the 1st to the 99.5th percentile of the brain's voxels
(:func:`window`); FLAIR, where lesions are hyperintense, from 3 SD below to 4 SD above
the mean of the brain's voxels between their 1st and 99th percentiles
(:func:`lesion_window`; for the z-scored preprocessed images that is z -3 to 4): normal
white and grey matter sit mid-grey, CSF black, and only hyperintensities reach white,
whatever the lesion load. A percentile window cannot do that: with a lesion load below
~0.5 % of the brain its 99.5th percentile lies in normal tissue, which then shows almost
white with the lesions clipped to the same white.

Drawn with numpy + Pillow only (no matplotlib: importing it and drawing cost about two
thirds of the CPU time of each per-visit preprocessing job). :func:`qc_image` builds the
picture from arrays, :func:`qc_png` reads the images, checks them and writes the PNG.

Layout (pixels): a dark canvas; ``PAD`` around it, the title (one or more lines of
``TITLE_LINE`` px) and the column labels (``COL_LABEL`` px) on top, the row labels in a
``LEFT`` px column, panels ``GAP`` px apart. Each panel is one slice stretched by nearest
neighbour so that the voxel with the smaller in-plane spacing gets ``upscale`` pixels and
the pixel aspect follows the voxel spacing. Outlines are the pixels of the (stretched) mask
with a 4-neighbour outside it, so they lie on the mask's own boundary pixels.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw, ImageFont

from t2lesion.errors import InputError
from t2lesion.io import atomic_output, read_image, same_geometry

#: Layout in pixels (see the module docstring).
PAD = 8
GAP = 4
LEFT = 80
TITLE_LINE = 30
COL_LABEL = 26
TITLE_SIZE = 20
LABEL_SIZE = 18
#: FLAIR's window (:func:`lesion_window`) in SDs around the mean of the brain's core voxels.
LESION_WINDOW_SD = (-3.0, 4.0)
#: The contrasts :func:`qc_image` windows with :func:`lesion_window` (lesions hyperintense).
LESION_CONTRASTS = ("FLAIR",)
#: Colours (RGB).
BACKGROUND = 24  # dark grey (one value for R, G and B)
TEXT = (235, 235, 235)
MASK_COLOR = (255, 255, 0)
GT_COLOR = (255, 0, 0)


def _lps(img: sitk.Image) -> np.ndarray:
    # LPS orientation: rows run anterior -> posterior, columns patient right -> left (x grows
    # towards the patient's left), so drawing row 0 at the top and column 0 on the left gives
    # the radiological view (patient's left on the image right).
    return sitk.GetArrayFromImage(sitk.DICOMOrient(img, "LPS")).astype(np.float32)


def _lps_spacing(img: sitk.Image) -> tuple[float, float, float]:
    """Voxel spacing along the axes of :func:`_lps`'s array, (x, y, z): DICOMOrient permutes
    the axes of an image stored in another axis order, each to the physical axis its
    direction is closest to."""
    d = np.abs(np.asarray(img.GetDirection(), float).reshape(3, 3))
    sp = img.GetSpacing()
    return tuple(float(sp[int(np.argmax(d[k]))]) for k in range(3))


def choose_slices(mask: np.ndarray, n: int) -> list[int]:
    """``n`` axial slices spread over the inner 15-85 % of the brain's z-extent."""
    zs = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    if zs.size == 0:
        zs = np.arange(mask.shape[0])
    lo, hi = zs[0] + 0.15 * (zs[-1] - zs[0]), zs[0] + 0.85 * (zs[-1] - zs[0])
    return sorted({round(float(z)) for z in np.linspace(lo, hi, n)})


@functools.lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's built-in font (scalable when Pillow has FreeType, a fixed bitmap otherwise).
    return ImageFont.load_default(size=size)


def window(arr: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Display window of one contrast: its 1st and 99.5th percentiles inside the brain mask
    (the whole volume when the mask is empty)."""
    vals = arr[mask] if mask.any() else arr.ravel()
    if not vals.size:
        return 0.0, 1.0
    lo, hi = np.percentile(vals, [1, 99.5])
    return float(lo), float(hi)


def lesion_window(arr: np.ndarray, mask: np.ndarray, sd: Sequence[float] = LESION_WINDOW_SD) -> tuple[float, float]:
    """Display window of a contrast with hyperintense lesions (FLAIR): ``mean + sd[0] * SD`` to
    ``mean + sd[1] * SD`` of the brain's voxels between their 1st and 99th percentiles (the
    statistics the preprocessing z-scores with, so lesions filling up to ~1 % of the brain
    do not move it; the whole volume when the mask is empty)."""
    vals = arr[mask] if mask.any() else arr.ravel()
    vals = vals[np.isfinite(vals)]
    if not vals.size:
        return 0.0, 1.0
    lo, hi = np.percentile(vals, [1, 99])
    core = vals[(vals >= lo) & (vals <= hi)].astype(np.float64)
    mean, sdev = float(core.mean()), float(core.std())
    return mean + float(sd[0]) * sdev, mean + float(sd[1]) * sdev


def to_grey(sl: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """A slice as uint8 grey: ``vmin`` (and below) black, ``vmax`` (and above) white."""
    if not vmax > vmin:  # constant window: above it white, the rest black
        return np.where(sl > vmin, 255, 0).astype(np.uint8)
    g = (sl.astype(np.float32) - np.float32(vmin)) * np.float32(255.0 / (vmax - vmin))
    g = np.nan_to_num(np.clip(g, 0.0, 255.0), nan=0.0)
    return (g + 0.5).astype(np.uint8)


def stretch_index(n: int, factor: float) -> np.ndarray:
    """Nearest-neighbour source index of each of the ``round(n * factor)`` output pixels."""
    m = max(1, round(n * factor))
    return np.minimum(((np.arange(m) + 0.5) * (n / m)).astype(np.intp), n - 1)


def outline(mask2d: np.ndarray) -> np.ndarray:
    """Pixels of ``mask2d`` with a 4-neighbour outside it (outside the array counts as outside)."""
    m = np.pad(mask2d, 1)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask2d & ~inner


def _wrap(text: str, font, width: int) -> list[str]:
    """Greedy word wrap of ``text`` to lines at most ``width`` px wide (a longer word stays whole)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and font.getlength(lines[-1] + " " + word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]


def qc_image(
    arrays: Mapping[str, np.ndarray],
    mask: np.ndarray,
    gt: np.ndarray | None = None,
    spacing_xy: Sequence[float] = (1.0, 1.0),
    title: str = "",
    n_slices: int = 5,
    upscale: int = 2,
    slices: Sequence[int] | None = None,
    lesion_contrasts: Sequence[str] = LESION_CONTRASTS,
) -> Image.Image:
    """The QC picture (RGB) of volumes in LPS array order (z, y, x), as :func:`_lps` returns:
    one row per entry of ``arrays`` (label: its key), one column per axial slice
    (:func:`choose_slices` of ``mask`` unless ``slices`` is given), each contrast windowed by
    :func:`window`, those named in ``lesion_contrasts`` by :func:`lesion_window`, the
    brain-mask outline yellow and the ``gt`` outline red over it."""
    names = list(arrays)
    mask = np.asarray(mask, bool)
    gt = None if gt is None else np.asarray(gt, bool)
    shape = mask.shape
    for k, a in list(arrays.items()) + ([("GT", gt)] if gt is not None else []):
        if a.shape != shape:
            raise ValueError(f"qc_image: {k} has shape {a.shape}, the mask {shape}")
    if upscale < 1:
        raise ValueError(f"qc_image: upscale must be >= 1, got {upscale}")
    zs = list(slices) if slices is not None else choose_slices(mask, n_slices)
    sx, sy = float(spacing_xy[0]), float(spacing_xy[1])
    unit = min(sx, sy)
    rows = stretch_index(shape[1], upscale * sy / unit)
    cols = stretch_index(shape[2], upscale * sx / unit)
    ph, pw = rows.size, cols.size

    title_font, label_font = _font(TITLE_SIZE), _font(LABEL_SIZE)
    grid_w = LEFT + len(zs) * pw + (len(zs) - 1) * GAP
    width = grid_w + PAD
    title_lines = _wrap(title, title_font, width - 2 * PAD) if title else []
    top = PAD + len(title_lines) * TITLE_LINE + COL_LABEL
    height = top + len(names) * ph + (len(names) - 1) * GAP + PAD

    canvas = np.full((height, width, 3), BACKGROUND, np.uint8)
    wins = {k: lesion_window(a, mask) if k in lesion_contrasts else window(a, mask) for k, a in arrays.items()}
    for c, z in enumerate(zs):
        m_up = mask[z][np.ix_(rows, cols)]
        edge_mask = outline(m_up)
        edge_gt = outline(gt[z][np.ix_(rows, cols)]) if gt is not None else None
        x0 = LEFT + c * (pw + GAP)
        for r, k in enumerate(names):
            y0 = top + r * (ph + GAP)
            panel = canvas[y0:y0 + ph, x0:x0 + pw]
            panel[:] = to_grey(arrays[k][z], *wins[k])[np.ix_(rows, cols)][..., None]
            panel[edge_mask] = MASK_COLOR
            if edge_gt is not None:
                panel[edge_gt] = GT_COLOR

    img = Image.fromarray(canvas, "RGB")
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(title_lines):
        draw.text((width / 2, PAD + i * TITLE_LINE + TITLE_LINE / 2), line, fill=TEXT, font=title_font,
                  anchor="mm")
    y_lab = PAD + len(title_lines) * TITLE_LINE + COL_LABEL / 2
    for c, z in enumerate(zs):
        label = f"slice {z}" if label_font.getlength(f"slice {z}") <= pw else str(z)  # narrow panels
        draw.text((LEFT + c * (pw + GAP) + pw / 2, y_lab), label, fill=TEXT, font=label_font, anchor="mm")
    for r, k in enumerate(names):
        draw.text((LEFT - 8, top + r * (ph + GAP) + ph / 2), k, fill=TEXT, font=label_font, anchor="rm")
    return img


def qc_png(
    t1w: str | Path,
    t2w: str | Path,
    flair: str | Path,
    brain_mask: str | Path,
    gt_mask: str | Path | None,
    out_png: str | Path,
    n_slices: int = 5,
    title: str | None = None,
    threads: int = 1,
) -> Path:
    """Write the QC PNG of one preprocessed visit (rows: T1w, T2w, FLAIR; columns: slices)."""
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(max(1, int(threads)))
    paths = {"T1w": t1w, "T2w": t2w, "FLAIR": flair}
    imgs = {k: read_image(p) for k, p in paths.items()}
    mask_img = read_image(brain_mask)
    extra = [("brain mask", brain_mask, mask_img)]
    gt_img = read_image(gt_mask) if gt_mask is not None else None
    if gt_img is not None:
        extra.append(("GT mask", gt_mask, gt_img))
    ref_name, ref = "T1w", imgs["T1w"]
    problems = [
        f"{p}: geometry differs from the T1w {paths[ref_name]}"
        for _, p, im in [(k, paths[k], imgs[k]) for k in ("T2w", "FLAIR")] + extra
        if not same_geometry(im, ref)
    ]
    if problems:
        raise InputError(problems, header="QC figure: inputs must share one grid")

    arrs = {k: _lps(v) for k, v in imgs.items()}
    mask = _lps(mask_img) > 0.5
    gt = _lps(gt_img) > 0.5 if gt_img is not None else None
    sx, sy = _lps_spacing(ref)[:2]
    n_les = int(gt.sum()) if gt is not None else None
    sup = title or Path(out_png).name.split("_space-")[0]
    # An ASCII dash: Pillow's built-in font has no em dash.
    sup += "  -  yellow: brain mask" + (f", red: GT lesions ({n_les} voxels)" if gt is not None else "")
    sup += "  (radiological: patient left on image right)"
    img = qc_image(arrs, mask, gt, (sx, sy), sup, n_slices=n_slices)
    out_png = Path(out_png)
    with atomic_output(out_png) as tmp:
        img.save(tmp, format="PNG", compress_level=1)  # zlib level 6 costs ~2x the CPU for a ~15 % smaller file
    return out_png
