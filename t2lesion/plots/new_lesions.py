"""Figures of the new/enlarging T2 lesion endpoint (docs/DESIGN.md §9b; next to Fig. 3 in the report).

* :func:`plot_rates_by_visit` — mean new or enlarging lesions per scan by arm and
  follow-up visit (bars with confidence intervals), plus the pooled rate per arm, one
  panel per lesion source (GT first).
* :func:`plot_rate_ratios` — forest plot of the negative-binomial rate ratio of each
  treated arm vs control, one row per source (Poisson rows in grey for comparison).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from t2lesion.formatting import fmt_ci, fmt_p  # noqa: E402
from t2lesion.plots.stats import ARM_COLORS, _empty, _save, source_title  # noqa: E402


def rate_ratio_text(row) -> str:
    """A forest-plot row's label: ``0.412 (0.250, 0.680), p < 0.001`` (3 significant digits and
    p as :mod:`t2lesion.formatting` prints them, as the summary's rate-ratio table)."""
    return f"{fmt_ci(row['rate_ratio'], row['ci_low'], row['ci_high'])}, {fmt_p(row['p'])}"


def plot_rates_by_visit(by_arm: pd.DataFrame, out_png: str | Path, arms: Sequence[str],
                        sources: Sequence[str] | None = None, conf_level: float = 0.95) -> None:
    """Bars of mean new/enlarging lesions per scan, arm × follow-up week (+ "all"), per source."""
    sources = [s for s in (sources or dict.fromkeys(by_arm["source"])) if s in set(by_arm["source"])]
    if by_arm.empty or not sources:
        _empty(out_png, "No subject with a baseline and a follow-up scan: no new/enlarging lesion counts.")
        return
    fig, axes = plt.subplots(1, len(sources), figsize=(4.8 * len(sources), 3.8), squeeze=False, sharey=True)
    for ax, src in zip(axes[0], sources):
        d = by_arm[by_arm["source"] == src]
        weeks = sorted(int(w) for w in d["week"].dropna().unique())
        cols = [str(w) for w in weeks] + ["all"]
        width = 0.8 / max(len(arms), 1)
        for k, arm in enumerate(arms):
            a = d[d["arm"] == arm]
            vals, lo, hi = [], [], []
            for w in weeks + [None]:
                r = a[a["week"].isna()] if w is None else a[a["week"] == w]
                m = float(r["mean_per_scan"].iloc[0]) if len(r) else np.nan
                vals.append(m)
                lo.append(m - float(r["ci_low"].iloc[0]) if len(r) else np.nan)
                hi.append(float(r["ci_high"].iloc[0]) - m if len(r) else np.nan)
            x = np.arange(len(cols)) + (k - (len(arms) - 1) / 2) * width
            err = np.nan_to_num(np.array([lo, hi]), nan=0.0)
            ax.bar(x, vals, width, color=ARM_COLORS[k % len(ARM_COLORS)], label=arm, yerr=err, capsize=3)
        ax.set_xticks(np.arange(len(cols)), [f"wk {c}" if c != "all" else "all\n(per scan)" for c in cols])
        ax.set_title(source_title(src))
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("new or enlarging T2 lesions per scan")
    axes[0][-1].legend(title="arm", fontsize=8)
    fig.suptitle(f"New and enlarging T2 lesions by visit (mean, {conf_level:.0%} CI)", fontsize=11)
    fig.tight_layout()
    _save(fig, out_png)


def plot_rate_ratios(results: pd.DataFrame, out_png: str | Path, control_arm: str,
                     sources: Sequence[str] | None = None, conf_level: float = 0.95) -> None:
    """Forest plot of the rate ratio vs ``control_arm`` per source (NB, with Poisson for comparison)."""
    arm_rows = results[(results["term_type"] == "arm") & results["model"].isin(["negative_binomial", "poisson"])]
    sources = list(sources or dict.fromkeys(results["source"]))
    entries = []
    for src in sources:
        for term in dict.fromkeys(arm_rows.loc[arm_rows["source"] == src, "term"]):
            for model in ("negative_binomial", "poisson"):
                r = arm_rows[(arm_rows["source"] == src) & (arm_rows["term"] == term) & (arm_rows["model"] == model)]
                if len(r):
                    entries.append((src, term, model, r.iloc[0]))
    if not entries:
        notes = "; ".join(sorted(set(results["note"].dropna().astype(str))))[:300]
        _empty(out_png, f"No rate ratio could be estimated. {notes}")
        return
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(entries) + 1.4))
    ys = np.arange(len(entries))[::-1]
    labels = []
    for y, (src, term, model, r) in zip(ys, entries):
        nb = model == "negative_binomial"
        color = "black" if nb else "grey"
        ax.errorbar(r["rate_ratio"], y, xerr=[[r["rate_ratio"] - r["ci_low"]], [r["ci_high"] - r["rate_ratio"]]],
                    fmt="s" if nb else "o", color=color, capsize=3, ms=6 if nb else 4)
        ax.text(1.02, y, rate_ratio_text(r),
                transform=ax.get_yaxis_transform(), va="center", fontsize=8, color=color)
        arm = term[4:]
        labels.append(f"{source_title(src)}\n{arm} vs {control_arm}, {'NB' if nb else 'Poisson'}")
    ax.axvline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xscale("log")
    _readable_log_ticks(ax.xaxis)
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_xlabel(f"rate ratio of new/enlarging T2 lesions ({conf_level:.0%} Wald CI, log scale)")
    ax.set_title("Negative-binomial rate ratio per source (Poisson in grey)", fontsize=10)
    fig.tight_layout()
    _save(fig, out_png)


#: Rate ratios a log axis is labelled at (1-2-5 steps): matplotlib's own minor labels
#: (2x10^-1, 3x10^-1, ...) overlap on a short axis.
LOG_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)


def _readable_log_ticks(axis) -> None:
    """Label a log axis at the :data:`LOG_TICKS` within its limits, as plain numbers, with unlabelled minor ticks."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    lo, hi = sorted(axis.get_view_interval())
    axis.set_major_locator(FixedLocator([v for v in LOG_TICKS if lo <= v <= hi]))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())
