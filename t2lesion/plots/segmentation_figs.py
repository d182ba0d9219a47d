"""Figures of the evaluation stage (:mod:`t2lesion.evaluation`): TLV agreement (Supplementary
Fig. S1) and size-group bars (Fig. 3a–c).

Uses matplotlib's object API with the Agg canvas (no pyplot state), PNG output.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from t2lesion.evaluation.table2 import bland_altman, pearson_ci
from t2lesion.formatting import fmt_ci, fmt_num
from t2lesion.io import atomic_output

_DPI = 150


def _save(fig: Figure, path: str | Path) -> None:
    """Save atomically (temp file + rename): an interrupted run leaves no half-written PNG."""
    FigureCanvasAgg(fig)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=_DPI, format="png")


def plot_agreement(gt, pred, out_png: str | Path, *, quantity: str = "TLV", unit: str = "mL",
                   title: str | None = None) -> None:
    """Scatter of predicted vs GT (identity line, Pearson r) and Bland–Altman plot (bias, 95 % LoA)."""
    gt, pred = np.asarray(gt, float), np.asarray(pred, float)
    ok = np.isfinite(gt) & np.isfinite(pred)
    gt, pred = gt[ok], pred[ok]
    lab = f"{quantity} ({unit})" if unit else quantity
    fig = Figure(figsize=(10, 4.4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)

    ax1.scatter(gt, pred, s=14, alpha=0.7, edgecolors="none")
    hi = float(max(gt.max(initial=0), pred.max(initial=0))) * 1.05 or 1.0
    ax1.plot([0, hi], [0, hi], color="0.4", lw=1, ls="--", label="identity")
    ax1.set_xlim(0, hi)
    ax1.set_ylim(0, hi)
    ax1.set_aspect("equal")
    pc = pearson_ci(gt, pred)
    ax1.set_title(f"r = {fmt_ci(pc['r'], pc['ci_low'], pc['ci_high'])}, n = {pc['n']}")
    ax1.set_xlabel(f"GT {lab}")
    ax1.set_ylabel(f"predicted {lab}")
    ax1.legend(loc="upper left", frameon=False)

    mean, diff = (gt + pred) / 2, pred - gt
    ba = bland_altman(gt, pred)
    ax2.scatter(mean, diff, s=14, alpha=0.7, edgecolors="none")
    for y, ls, text in ((ba["bias"], "-", "bias"), (ba["loa_low"], "--", "−1.96 SD"),
                        (ba["loa_high"], "--", "+1.96 SD")):
        if np.isfinite(y):
            ax2.axhline(y, color="C3", lw=1, ls=ls)
            ax2.annotate(f"{text} {fmt_num(y)}", (1.0, y), xycoords=("axes fraction", "data"), ha="right",
                         va="bottom", fontsize=8, color="C3")
    ax2.axhline(0, color="0.6", lw=0.8)
    ax2.set_xlabel(f"mean of GT and predicted {lab}")
    ax2.set_ylabel(f"predicted − GT {lab}")
    ax2.set_title("Bland–Altman")
    if title:
        fig.suptitle(title)
    _save(fig, out_png)


_PANELS = (("lesion_dc", "lesion DC", "a", "lesions"), ("ltpr", "LTPR", "b", "visits"),
           ("lfpr", "LFPR", "c", "visits"))


def plot_size_groups(tables: Mapping[str, pd.DataFrame], out_png: str | Path, *,
                     title: str | None = None) -> None:
    """Fig. 3a–c style bars: mean lesion DC, LTPR and LFPR per size group, one bar series per table.

    ``tables`` maps a legend label (dataset / source) to a
    :func:`t2lesion.evaluation.table2.size_group_table` result; bars are means, whiskers ± SD,
    and each bar is annotated with its ``n`` (lesions for DC, visits for LTPR/LFPR).
    """
    fig = Figure(figsize=(12, 4), layout="constrained")
    axes = fig.subplots(1, 3)
    k = max(len(tables), 1)
    width = 0.8 / k
    for ax, (col, name, letter, over) in zip(axes, _PANELS):
        for i, (label, tab) in enumerate(tables.items()):
            x = np.arange(len(tab)) + (i - (k - 1) / 2) * width
            mean = tab[f"{col}_mean"].to_numpy(float)
            sd = tab[f"{col}_sd"].to_numpy(float)
            bars = ax.bar(x, np.nan_to_num(mean), width, yerr=np.where(np.isfinite(sd), sd, 0),
                          capsize=3, label=label, color=f"C{i}", error_kw={"lw": 0.8})
            for b, n, m, s in zip(bars, tab[f"{col}_n"], mean, sd):
                top = min(np.nan_to_num(m) + np.nan_to_num(s), 1.0) + 0.02
                text = ("" if k > 1 else "n=") + str(int(n)) if np.isfinite(m) else "n/a"
                ax.annotate(text, (b.get_x() + b.get_width() / 2, top),
                            ha="center", va="bottom", fontsize=7, color="0.25")
        ref = next(iter(tables.values()))
        ax.set_xticks(np.arange(len(ref)), ref["size_group"].astype(str))
        ax.set_xlabel("lesion size (voxels)")
        ax.set_ylabel(f"mean {name} (± SD over {over})")
        ax.set_ylim(0, 1.12)
        ax.set_title(f"({letter}) {name}")
    if len(tables) > 1:
        axes[0].legend(frameon=False, fontsize=8)
    if title:
        fig.suptitle(title)
    _save(fig, out_png)


def plot_agreement_sources(visits: Mapping[str, pd.DataFrame], out_png: str | Path, *, quantity: str = "TLV",
                           unit: str = "mL", title: str | None = None) -> None:
    """Predicted vs GT ``quantity`` of several sources on one scatter (identity line; r per source
    in the legend), and their Bland–Altman differences side by side."""
    col = {"TLV": "tlv_ml", "TLC": "tlc"}.get(quantity, quantity.lower())
    lab = f"{quantity} ({unit})" if unit else quantity
    fig = Figure(figsize=(10, 4.4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    hi = 0.0
    for i, (source, v) in enumerate(visits.items()):
        gt, pred = v[f"gt_{col}"].to_numpy(float), v[f"pred_{col}"].to_numpy(float)
        ok = np.isfinite(gt) & np.isfinite(pred)
        gt, pred = gt[ok], pred[ok]
        hi = max(hi, float(gt.max(initial=0)), float(pred.max(initial=0)))
        pc = pearson_ci(gt, pred)
        ax1.scatter(gt, pred, s=14, alpha=0.7, edgecolors="none", color=f"C{i}",
                    label=f"{source}: r = {fmt_num(pc['r'])}, n = {pc['n']}")
        ba = bland_altman(gt, pred)
        ax2.scatter((gt + pred) / 2, pred - gt, s=14, alpha=0.7, edgecolors="none", color=f"C{i}",
                    label=f"{source}: bias {fmt_num(ba['bias'])}")
        if np.isfinite(ba["bias"]):
            ax2.axhline(ba["bias"], color=f"C{i}", lw=1)
    hi = hi * 1.05 or 1.0
    ax1.plot([0, hi], [0, hi], color="0.4", lw=1, ls="--")
    ax1.set_xlim(0, hi)
    ax1.set_ylim(0, hi)
    ax1.set_aspect("equal")
    ax1.set_xlabel(f"GT {lab}")
    ax1.set_ylabel(f"predicted {lab}")
    ax1.legend(loc="upper left", frameon=False, fontsize=8)
    ax2.axhline(0, color="0.6", lw=0.8)
    ax2.set_xlabel(f"mean of GT and predicted {lab}")
    ax2.set_ylabel(f"predicted − GT {lab}")
    ax2.set_title("Bland–Altman")
    ax2.legend(loc="best", frameon=False, fontsize=8)
    if title:
        fig.suptitle(title)
    _save(fig, out_png)
