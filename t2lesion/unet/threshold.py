"""The U-Net's decision threshold (docs/DESIGN.md §6, §7): chosen per fold on its held-out
visits (rule ``calibrate``), used by the ensemble at inference (``inference.threshold``).

Calibration
-----------
After training, fold k's model predicts every GT visit of fold k (its validation fold: the
visits it never trained on) over the whole brain, exactly as inference does
(:func:`t2lesion.unet.infer.predict_visit`: sliding windows, blending, MC dropout with the
``inference:`` section's ``mc_samples``, ``overlap``, ``blending`` and ``batch_size``). For
each threshold t of :data:`THRESHOLD_GRID` (0.30 to 0.95 in steps of 0.05, then 0.96 to 0.99 in
steps of 0.01) the visit's mask is
``prob >= t`` inside the brain mask, as inference cuts it, and its Dice against the visit's GT
is computed as Table 2 computes DC (``2·TP / (|GT| + |mask|)``; NaN where both are empty, left
out of the mean). The fold's threshold is chosen by the one-standard-error rule: of the
thresholds whose mean Dice lies within one standard error (over the visits) of the best mean
Dice, the one closest to the paper's 0.5, then the lower one (:func:`choose_threshold`). A
fold holds out a few visits only (4 in the demo), so the curve near its top is noise; the rule
keeps to the paper's 0.5 unless the held-out visits show a real gain. Written beside the fold's model:
``threshold.json`` (:func:`write_calibration`), ``threshold_curve.tsv`` and
``threshold_curve.png``. Where the mean Dice is highest at the grid's top (0.99), the JSON's
``best_at_grid_top`` is true and the job's log warns: the fold's probabilities are still high
across lesion borders, the sign of an over-segmenting (e.g. under-trained) model, which no
threshold of the grid repairs.

Inference
---------
``inference.threshold: auto`` (default) cuts the ensemble's probability at the mean of the
fold thresholds (*interpretation*: the paper cuts at 0.5); a number in (0, 1) fixes it (0.5 =
the paper). Fold models from elsewhere (``inference.models``) without a ``threshold.json``
beside every ``model.keras`` fall back to 0.5, and the inference log says so
(:func:`resolve_threshold`).

Keras is imported only by :func:`calibrate_fold` (through :mod:`t2lesion.unet.infer`'s model
loading); the rest is numpy.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from t2lesion.errors import InputError
from t2lesion.io import atomic_output, write_tsv

log = logging.getLogger(__name__)

#: The thresholds a fold tries: 0.30, 0.35, …, 0.95, then 0.96, …, 0.99 (an over-segmenting
#: model's mean Dice still rises past 0.95: the validation trial's three folds all peaked at
#: 0.95 on a grid that stopped there; docs/DESIGN.md §6).
THRESHOLD_GRID = tuple(round(0.30 + 0.05 * i, 2) for i in range(14)) + (0.96, 0.97, 0.98, 0.99)
#: The paper's threshold: ties go to the grid value closest to it, and fold models without a
#: threshold.json fall back to it.
PAPER_THRESHOLD = 0.5
#: Mean Dice values closer than this count as a tie.
TIE_TOL = 1e-9
CURVE_FIRST_COLUMNS = ("threshold", "mean_dice", "n")


# --------------------------------------------------------------------------- numerics


def dice_curve(prob: np.ndarray, gt: np.ndarray, brain: np.ndarray,
               grid: Sequence[float] = THRESHOLD_GRID) -> np.ndarray:
    """Dice of ``(prob >= t) & brain`` against ``gt`` for each ``t`` of ``grid`` (float64; NaN
    where the GT and the mask are both empty). ``prob`` is compared as inference compares it
    (its own dtype against a Python float)."""
    prob, gt, brain = np.asarray(prob), np.asarray(gt) > 0, np.asarray(brain) > 0
    if not prob.shape == gt.shape == brain.shape:
        raise ValueError(f"prob {prob.shape}, gt {gt.shape} and brain {brain.shape} differ in shape")
    n_gt = int(np.count_nonzero(gt))
    p_in, p_lesion = prob[brain], prob[brain & gt]
    out = np.empty(len(grid), np.float64)
    for i, t in enumerate(grid):
        t = float(t)
        n_pred = int(np.count_nonzero(p_in >= t))
        tp = int(np.count_nonzero(p_lesion >= t))
        out[i] = 2.0 * tp / (n_gt + n_pred) if n_gt + n_pred else math.nan
    return out


def choose_threshold(mean_dice: Sequence[float], grid: Sequence[float] = THRESHOLD_GRID,
                     se: Sequence[float] | None = None) -> tuple[float, float]:
    """``(threshold, mean Dice)`` by the one-standard-error rule: among the grid points whose
    mean Dice is at least the best mean Dice minus its standard error (``se`` at the best
    point; :func:`dice_se`), the threshold closest to 0.5, then the lower one. Without ``se``,
    or where it is undefined (fewer than 2 visits), only ties with the best qualify. NaN never
    qualifies. Without any defined Dice (no lesion in the GT and nothing predicted anywhere):
    ``(0.5, nan)``."""
    d = np.asarray(mean_dice, np.float64)
    grid = [float(t) for t in grid]
    if d.shape != (len(grid),):
        raise ValueError(f"{d.shape[0] if d.ndim else 0} Dice values for {len(grid)} thresholds")
    if not np.isfinite(d).any():
        return PAPER_THRESHOLD, math.nan
    i_best = int(np.nanargmax(d))
    best = d[i_best]
    tol = TIE_TOL
    if se is not None:
        e = np.asarray(se, np.float64)
        if e.shape != d.shape:
            raise ValueError(f"{e.shape[0] if e.ndim else 0} standard errors for {len(grid)} thresholds")
        if np.isfinite(e[i_best]):
            tol = max(TIE_TOL, float(e[i_best]))
    tied = [t for t, v in zip(grid, d) if np.isfinite(v) and v >= best - tol]
    t = min(tied, key=lambda t: (abs(t - PAPER_THRESHOLD), t))
    return t, float(d[grid.index(t)])


def dice_se(curve: pd.DataFrame) -> np.ndarray:
    """Per threshold, the standard error of the curve's mean Dice over its visits (sample SD /
    √n, over the visits with a defined Dice); NaN with fewer than 2."""
    per = curve[[c for c in curve.columns if c not in CURVE_FIRST_COLUMNS]].to_numpy(np.float64)
    n = np.isfinite(per).sum(axis=1)
    out = np.full(len(curve), np.nan)
    for i in np.flatnonzero(n >= 2):
        out[i] = float(np.nanstd(per[i], ddof=1)) / math.sqrt(n[i])
    return out


def threshold_curve(per_visit: Mapping[str, Sequence[float]], grid: Sequence[float] = THRESHOLD_GRID) -> pd.DataFrame:
    """The curve table: ``threshold``, ``mean_dice`` (over the visits with a defined Dice),
    ``n`` (how many) and one Dice column per visit (in the order given)."""
    grid = [float(t) for t in grid]
    cols = {vid: np.asarray(v, np.float64) for vid, v in per_visit.items()}
    for vid, v in cols.items():
        if v.shape != (len(grid),):
            raise ValueError(f"visit {vid}: {v.shape} Dice values for {len(grid)} thresholds")
    table = np.column_stack(list(cols.values())) if cols else np.empty((len(grid), 0))
    n = np.isfinite(table).sum(axis=1)
    with np.errstate(invalid="ignore"):
        mean = np.where(n > 0, np.nansum(table, axis=1) / np.maximum(n, 1), np.nan)
    df = pd.DataFrame({"threshold": grid, "mean_dice": mean, "n": n})
    for vid, v in cols.items():
        df[vid] = v
    return df


# --------------------------------------------------------------------------- files


def write_calibration(curve: pd.DataFrame, outputs: Mapping[str, str | Path], *, fold: int | None = None,
                      extra: Mapping | None = None) -> dict:
    """Choose the threshold on ``curve`` (:func:`threshold_curve`) and write ``outputs``:
    ``threshold`` (JSON: threshold, mean_dice, mean_dice_at_0.5, n_visits, grid, …),
    ``curve`` (the TSV) and, if given, ``plot`` (PNG). Returns the JSON's content."""
    grid = [float(t) for t in curve["threshold"]]
    se = dice_se(curve)
    t, d = choose_threshold(curve["mean_dice"].to_numpy(), grid, se)
    i_best = int(np.nanargmax(curve["mean_dice"].to_numpy())) if curve["mean_dice"].notna().any() else None
    at_paper = curve.loc[np.isclose(curve["threshold"], PAPER_THRESHOLD), "mean_dice"]
    visits = [c for c in curve.columns if c not in CURVE_FIRST_COLUMNS]
    info = {
        "threshold": t,
        "mean_dice": None if math.isnan(d) else d,
        "mean_dice_at_0.5": float(at_paper.iloc[0]) if len(at_paper) and np.isfinite(at_paper.iloc[0]) else None,
        "n_visits": len(visits),
        "rule": "one standard error",
        "best_threshold": None if i_best is None else grid[i_best],
        "best_mean_dice": None if i_best is None else float(curve["mean_dice"].iloc[i_best]),
        "se_at_best": None if i_best is None or not np.isfinite(se[i_best]) else float(se[i_best]),
        "best_at_grid_top": i_best is not None and len(grid) > 1 and i_best == len(grid) - 1,
        "grid": grid,
        **({"fold": int(fold)} if fold is not None else {}),
        "visits": visits,
        **dict(extra or {}),
    }
    write_tsv(curve, outputs["curve"], na_rep="n/a", float_format="%.6g")
    if outputs.get("plot"):
        plot_curve(curve, t, outputs["plot"], fold)
    with atomic_output(outputs["threshold"]) as tmp:
        Path(tmp).write_text(json.dumps(info, indent=1) + "\n")
    return info


def plot_curve(curve: pd.DataFrame, chosen: float, out: str | Path, fold: int | None = None) -> None:
    """threshold_curve.png: each held-out visit's Dice (thin) and their mean (thick) against the
    threshold; the chosen threshold starred, the paper's 0.5 dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    visits = [c for c in curve.columns if c not in CURVE_FIRST_COLUMNS]
    for i, vid in enumerate(visits):
        ax.plot(curve["threshold"], curve[vid], "-", lw=0.8, color="grey", alpha=0.6,
                label="one held-out visit" if i == 0 else None)
    ax.plot(curve["threshold"], curve["mean_dice"], "o-", color="C0", label=f"mean of {len(visits)} visits")
    best = curve.loc[np.isclose(curve["threshold"], chosen), "mean_dice"]
    if len(best) and np.isfinite(best.iloc[0]):
        ax.plot([chosen], [best.iloc[0]], "*", ms=15, color="C3", label=f"chosen: {chosen:.2f}")
    ax.axvline(PAPER_THRESHOLD, ls="--", color="k", lw=0.8, label="paper: 0.5")
    ax.set_xlabel("probability threshold")
    ax.set_ylabel("Dice (whole visit, inside the brain)")
    ax.set_ylim(0, 1)
    ax.set_title(f"fold {fold}: threshold on its held-out visits" if fold is not None else "threshold curve",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def read_threshold(path: str | Path) -> float:
    """The threshold of a fold's ``threshold.json``; a missing, unreadable or out-of-range file
    is an InputError naming it."""
    path = Path(path)
    try:
        info = json.loads(path.read_text())
        t = float(info["threshold"])
    except FileNotFoundError:
        raise InputError(f"{path}: fold threshold file not found") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a threshold file ({type(exc).__name__}: {exc}); expected JSON with "
                         f"a 'threshold' in (0, 1)") from None
    if not 0.0 < t < 1.0:
        raise InputError(f"{path}: threshold {t} is not in (0, 1)")
    return t


@dataclass(frozen=True)
class ThresholdChoice:
    """The threshold inference applies, and how it was decided: ``rule`` is ``auto`` (mean of
    the fold thresholds), ``fixed`` (a number in the config) or ``fallback`` (``auto`` without
    a threshold.json for every fold model: 0.5)."""

    value: float
    rule: str
    folds: tuple[float, ...] = field(default=())
    note: str = ""

    @property
    def text(self) -> str:
        """How it was chosen, in words (the summary's and the log's wording)."""
        if self.rule == "auto":
            folds = ", ".join(f"{t:.2f}" for t in self.folds)
            return f"threshold chosen on each fold's held-out visits, mean of folds {folds}"
        if self.rule == "fixed":
            return f"fixed at {self.value:g} by inference.threshold"
        return f"fixed at {self.value:g}: {self.note}"

    def line(self) -> str:
        """The one line the inference log and summary.md give."""
        return f"U-Net masks: probability >= {self.value:.3g} ({self.text})"


def resolve_threshold(setting, threshold_files: Sequence[str | Path], n_models: int,
                      models_folder: str | Path | None = None) -> ThresholdChoice:
    """The ensemble's threshold from ``inference.threshold`` (``setting``: ``auto`` or a number)
    and the fold models' threshold files (one per model for ``auto``; see the module text)."""
    if setting is None or setting == "auto":
        files = [Path(p) for p in threshold_files]
        if n_models > 0 and len(files) == n_models:
            folds = tuple(read_threshold(p) for p in files)
            return ThresholdChoice(float(np.mean(folds)), "auto", folds)
        where = f"the fold models in {models_folder}" if models_folder else "the fold models"
        note = (f"inference.threshold is auto but {where} come without fold-<k>/threshold.json "
                f"({len(files)} of {n_models}); the paper's 0.5 is used")
        return ThresholdChoice(PAPER_THRESHOLD, "fallback", note=note)
    try:
        t = float(setting)
    except (TypeError, ValueError):
        raise InputError(f"inference.threshold: {setting!r} is neither 'auto' nor a number in (0, 1)") from None
    if not 0.0 < t < 1.0:
        raise InputError(f"inference.threshold: {setting!r} is not in (0, 1)")
    return ThresholdChoice(t, "fixed")


# --------------------------------------------------------------------------- calibration


def calibrate_fold(model_path: str | Path, visits: Sequence[Mapping], fold: int, cfg: Mapping | None, seed: int,
                   outputs: Mapping[str, str | Path], *, channel_order: Sequence[str] | None = None,
                   grid: Sequence[float] = THRESHOLD_GRID, model=None,
                   logger: logging.Logger | None = None) -> dict:
    """Predict each of the fold's held-out ``visits`` with its model as inference does and write
    the fold's threshold and curve (:func:`write_calibration`). Returns the threshold JSON.

    ``visits``: dicts with ``id`` and the preprocessed ``T2w``, ``FLAIR``, ``T1w``,
    ``brain_mask`` and ``gt`` (MNI grid). ``cfg``: the ``inference:`` section (its
    ``threshold`` is not used here). ``model``: an already loaded model or predictor instead
    of ``model_path`` (tests). Visit ``v`` draws its dropout from
    ``derive_seed(seed, visit_key(v["id"]))`` and fold index ``fold - 1``, as its fold would
    within the ensemble.
    """
    from t2lesion.io import read_array
    from t2lesion.unet.infer import (derive_seed, inference_settings, load_fold_models, predict_visit,
                                     prepare_models, read_visit, visit_key)

    logger = logger or log
    if not visits:
        raise InputError(f"fold {fold}: no held-out GT visit to choose the threshold on")
    s = inference_settings({k: v for k, v in dict(cfg or {}).items() if k != "threshold"})
    if channel_order is None:
        from t2lesion.unet.model import ModelConfig

        channel_order = ModelConfig().channel_order
    models = [model] if model is not None else load_fold_models([model_path])
    preds = prepare_models(models, s["mc_samples"])
    logger.info("fold %s: choosing the threshold on %d held-out visit(s); %d MC sample(s), overlap %.2f, "
                "%s blending, batch %d; thresholds %s to %s", fold, len(visits), s["mc_samples"], s["overlap"],
                s["blending"], s["batch_size"], grid[0], grid[-1])
    per_visit = {}
    for k, v in enumerate(visits):
        images, brain, ref = read_visit(v, channel_order)
        gt, gt_img = read_array(v["gt"], np.uint8)
        if gt.shape != brain.shape:
            raise InputError(f"{v['gt']}: GT size {gt_img.GetSize()} differs from the brain mask "
                             f"{v['brain_mask']} ({ref.GetSize()})")
        st: dict = {}
        maps = predict_visit(preds, images, brain, None, s["overlap"], s["blending"], s["mc_samples"],
                             s["batch_size"], derive_seed(seed, visit_key(v["id"])), fold_ids=[int(fold) - 1],
                             stats=st)
        per_visit[v["id"]] = dice_curve(maps["prob"], gt, brain, grid)
        d = per_visit[v["id"]]
        logger.info("visit %d/%d %s: %d windows; Dice %s at 0.5, best %s", k + 1, len(visits), v["id"],
                    st["windows"], _fmt(d[[float(t) for t in grid].index(0.5)] if 0.5 in grid else math.nan),
                    _fmt(np.nanmax(d) if np.isfinite(d).any() else math.nan))
    curve = threshold_curve(per_visit, grid)
    info = write_calibration(curve, outputs, fold=fold, extra={"mc_samples": s["mc_samples"]})
    logger.info("fold %s: threshold %.2f, mean Dice %s over %d visit(s) (at 0.5: %s)", fold, info["threshold"],
                _fmt(info["mean_dice"]), info["n_visits"], _fmt(info["mean_dice_at_0.5"]))
    if info["best_at_grid_top"]:
        logger.warning("fold %s: the mean Dice is highest at the grid's top threshold, %.2f: the model's "
                       "probabilities stay high across lesion borders (it over-segments, e.g. under-trained); "
                       "more training, not a higher threshold, is the remedy", fold, grid[-1])
    return info


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.3f}"


__all__ = [
    "PAPER_THRESHOLD", "THRESHOLD_GRID", "ThresholdChoice", "calibrate_fold", "choose_threshold", "dice_curve", "dice_se",
    "plot_curve", "read_threshold", "resolve_threshold", "threshold_curve", "write_calibration",
]
