"""Preprocessing QC figure (SPEC §2): the three contrasts at a few axial slices, with the
brain-mask outline (yellow) and the GT lesions (red), in radiological convention."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import SimpleITK as sitk

from t2lesion.errors import InputError
from t2lesion.io import atomic_output, read_image, same_geometry


def _lps(img: sitk.Image) -> np.ndarray:
    # LPS orientation: rows run anterior -> posterior, columns patient right -> left, so
    # imshow(origin="upper") gives the radiological view (patient's left on the image right).
    return sitk.GetArrayFromImage(sitk.DICOMOrient(img, "LPS")).astype(np.float32)


def choose_slices(mask: np.ndarray, n: int) -> list[int]:
    """``n`` axial slices spread over the inner 15-85 % of the brain's z-extent."""
    zs = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    if zs.size == 0:
        zs = np.arange(mask.shape[0])
    lo, hi = zs[0] + 0.15 * (zs[-1] - zs[0]), zs[0] + 0.85 * (zs[-1] - zs[0])
    return sorted({round(float(z)) for z in np.linspace(lo, hi, n)})


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
    slices = choose_slices(mask, n_slices)
    sx, sy = ref.GetSpacing()[0], ref.GetSpacing()[1]

    fig, axes = plt.subplots(3, len(slices), figsize=(2.4 * len(slices), 7.6), squeeze=False)
    for r, (name, arr) in enumerate(arrs.items()):
        vals = arr[mask] if mask.any() else arr.ravel()
        vmin, vmax = np.percentile(vals, [1, 99.5]) if vals.size else (0.0, 1.0)
        for c, z in enumerate(slices):
            ax = axes[r, c]
            ax.imshow(arr[z], cmap="gray", vmin=vmin, vmax=vmax, origin="upper", aspect=sy / sx,
                      interpolation="nearest")
            if mask[z].any():
                ax.contour(mask[z], levels=[0.5], colors="yellow", linewidths=0.6)
            if gt is not None and gt[z].any():
                ax.contour(gt[z], levels=[0.5], colors="red", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"slice {z}", fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    n_les = int(gt.sum()) if gt is not None else None
    sup = title or Path(out_png).name.split("_space-")[0]
    sup += "  —  yellow: brain mask" + (f", red: GT lesions ({n_les} voxels)" if gt is not None else "")
    sup += "  (radiological: patient left on image right)"
    fig.suptitle(sup, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    out_png = Path(out_png)
    try:
        with atomic_output(out_png) as tmp:
            fig.savefig(tmp, dpi=90)
    finally:
        plt.close(fig)
    return out_png
