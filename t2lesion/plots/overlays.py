"""Fig. 2 of the paper: GT and predicted T2 lesions over FLAIR.

A few visits of a test trial (deterministic: the visits with the most GT lesion volume,
at most one per subject while others remain), each on the axial slice with the most
lesion (GT or prediction), as three panels: the FLAIR alone, the FLAIR with the lesions
(GT red, prediction blue, overlap purple, as in the paper) and a magnified inset around
that slice's lesions (the paper's column 5). Images in radiological convention, as the
QC figure (:mod:`t2lesion.plots.qc`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from t2lesion.errors import InputError  # noqa: E402
from t2lesion.io import read_image, same_geometry  # noqa: E402
from t2lesion.plots.qc import _lps  # noqa: E402
from t2lesion.plots.stats import _empty, _save  # noqa: E402

#: Overlay colours (RGB, 0-1): GT only, prediction only, both (the paper's Fig. 2).
GT_COLOR = (1.0, 0.0, 0.0)
PRED_COLOR = (0.0, 0.35, 1.0)
BOTH_COLOR = (0.6, 0.0, 0.75)


def overlay_rgb(flair: np.ndarray, gt: np.ndarray, pred: np.ndarray, alpha: float = 0.75,
                vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """A 2-D FLAIR slice as grey RGB (H, W, 3) with GT-only voxels red, prediction-only blue
    and their overlap purple, blended at ``alpha`` over the grey."""
    f = np.asarray(flair, float)
    lo = np.nanmin(f) if vmin is None else vmin
    hi = np.nanmax(f) if vmax is None else vmax
    grey = np.clip((f - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(f)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    g, p = np.asarray(gt, bool), np.asarray(pred, bool)
    for where, color in ((g & ~p, GT_COLOR), (p & ~g, PRED_COLOR), (g & p, BOTH_COLOR)):
        rgb[where] = (1 - alpha) * rgb[where] + alpha * np.asarray(color)
    return rgb


def lesion_slice(gt: np.ndarray, pred: np.ndarray) -> int:
    """The axial slice (first array axis) with the most lesion voxels of GT or prediction
    (the lowest such slice on a tie; the middle slice when there is no lesion)."""
    per_slice = (np.asarray(gt, bool) | np.asarray(pred, bool)).reshape(len(gt), -1).sum(axis=1)
    return int(np.argmax(per_slice)) if per_slice.max() > 0 else len(gt) // 2


def choose_visits(visits: pd.DataFrame, n: int = 3) -> list[str]:
    """``n`` visit ids ``sub-<s>_ses-<w>`` of a metrics visits table (participant_id, session,
    gt_tlv_ml): most GT lesion volume first, one visit per subject while other subjects remain."""
    v = visits.assign(_id=visits["participant_id"] + "_" + visits["session"])
    v = v.sort_values(["gt_tlv_ml", "_id"], ascending=[False, True], kind="mergesort")
    first = v.drop_duplicates("participant_id")
    rest = v[~v["_id"].isin(first["_id"])]
    return list(pd.concat([first, rest])["_id"].head(n))


def _crop(mask2d: np.ndarray, shape: tuple[int, int], frac: float = 0.4) -> tuple[slice, slice]:
    """A window of ``frac`` of the slice around the lesions' centre (the inset)."""
    h, w = shape
    ch, cw = max(8, int(h * frac)), max(8, int(w * frac))
    ys, xs = np.nonzero(mask2d)
    cy, cx = (int(ys.mean()), int(xs.mean())) if ys.size else (h // 2, w // 2)
    y0 = min(max(0, cy - ch // 2), max(0, h - ch))
    x0 = min(max(0, cx - cw // 2), max(0, w - cw))
    return slice(y0, y0 + ch), slice(x0, x0 + cw)


def fig2_png(cases: Sequence[Mapping], out_png: str | Path, title: str = "",
             names: tuple[str, str] = ("GT", "prediction"), empty: str = "Fig. 2: no visit with GT to show") -> Path:
    """Write the figure: one row per case (keys id, flair, gt, pred: image paths on one grid).

    ``names``: what the ``gt`` (red) and ``pred`` (blue) masks are, for the titles and legend
    (the review page shows two sources, t2lesion.review). ``names[0]`` None: one mask per
    case, ``pred`` (blue), and no ``gt`` (the review page of a trial with one source)."""
    if not cases:
        _empty(out_png, empty)
        return Path(out_png)
    single = names[0] is None
    layers = ("pred",) if single else ("gt", "pred")
    fig, axes = plt.subplots(len(cases), 3, figsize=(9.6, 3.4 * len(cases)), squeeze=False)
    for r, case in enumerate(cases):
        imgs = {k: read_image(case[k]) for k in ("flair", *layers)}
        bad = [f"{case[k]}: geometry differs from the FLAIR {case['flair']}" for k in layers
               if not same_geometry(imgs[k], imgs["flair"])]
        if bad:
            raise InputError(bad, header="Fig. 2: FLAIR and masks must share one grid")
        flair = _lps(imgs["flair"])
        pred = _lps(imgs["pred"]) > 0.5
        gt = np.zeros_like(pred) if single else _lps(imgs["gt"]) > 0.5
        z = lesion_slice(gt, pred)
        brain = flair[flair > 0]
        vmin, vmax = np.percentile(brain, [1, 99.5]) if brain.size else (0.0, 1.0)
        sx, sy = imgs["flair"].GetSpacing()[:2]
        over = overlay_rgb(flair[z], gt[z], pred[z], vmin=vmin, vmax=vmax)
        win = _crop(gt[z] | pred[z], flair[z].shape)
        panels = [(np.clip((flair[z] - vmin) / max(vmax - vmin, 1e-6), 0, 1), "FLAIR"),
                  (over, names[1] if single else f"{names[0]} and {names[1]}"), (over[win], "inset")]
        for c, (img, name) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, aspect=sy / sx,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
        n_gt, n_pred, n_both = int(gt[z].sum()), int(pred[z].sum()), int((gt[z] & pred[z]).sum())
        axes[r, 0].set_ylabel(f"{case['id']}\nslice {z}", fontsize=8)
        second = "pred" if names[1] == "prediction" else names[1]
        axes[r, 2].set_xlabel(f"voxels: {second} {n_pred}" if single else
                              f"voxels: {names[0]} {n_gt}, {second} {n_pred}, both {n_both}", fontsize=7)
    gt_only, pred_only = (" (false negative)", " (false positive)") if names == ("GT", "prediction") else ("", "")
    handles = [Patch(color=PRED_COLOR, label=names[1])] if single else [
        Patch(color=GT_COLOR, label=f"{names[0]} only{gt_only}"),
        Patch(color=PRED_COLOR, label=f"{names[1]} only{pred_only}"),
        Patch(color=BOTH_COLOR, label=f"{names[0]} and {names[1]}")]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle((title + "  " if title else "") + "(radiological: patient left on image right)", fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    _save(fig, out_png)
    return Path(out_png)


def run_fig2(metrics_visits_tsv: str | Path, ids: Sequence[str], flairs: Sequence, gts: Sequence,
             preds: Sequence, out_png: str | Path, *, n_visits: int = 3, source: str = "", trial: str = "") -> list[str]:
    """Fig. 2 of one source and trial: the visits :func:`choose_visits` picks from the source's
    metrics visits table; ``ids``, ``flairs``, ``gts``, ``preds`` aligned, one entry per visit
    with GT. Returns the ids shown."""
    paths = {i: {"id": i, "flair": f, "gt": g, "pred": p} for i, f, g, p in zip(ids, flairs, gts, preds)}
    visits = pd.read_csv(metrics_visits_tsv, sep="\t", dtype={"participant_id": str, "session": str})
    chosen = [i for i in choose_visits(visits, n_visits) if i in paths]
    title = f"Fig. 2, trial-{trial}: GT (red) vs {source} (blue), overlap purple" if source else ""
    fig2_png([paths[i] for i in chosen], out_png, title=title)
    return chosen


__all__ = ["BOTH_COLOR", "GT_COLOR", "PRED_COLOR", "choose_visits", "fig2_png", "lesion_slice", "overlay_rgb",
           "run_fig2"]
