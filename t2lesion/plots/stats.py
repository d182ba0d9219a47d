"""Figures of the endpoint statistics (paper Fig. 3d–g and Fig. 4).

* :func:`plot_change` — mean percent change in T2 TLV from baseline per arm and
  week with confidence intervals, one panel per lesion source (GT first), the
  separation between the control arm and each other arm written above each
  follow-up week (Fig. 3d–g).
* :func:`plot_km` — Kaplan–Meier curves of one endpoint split at the cohort-wide
  median baseline TLV, per arm, one panel per source, with the log-rank p per arm
  and the number at risk underneath (Fig. 4).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from t2lesion.formatting import fmt_num, fmt_p  # noqa: E402
from t2lesion.io import atomic_output  # noqa: E402

ARM_COLORS = ["#1f4e9c", "#d1495b", "#2e933c", "#edae49", "#6a4c93", "#00798c"]


def source_title(src: str) -> str:
    """Panel title of a lesion source."""
    return "GT masks" if src == "gt" else f"Predicted masks ({src})"


def _short_reason(note: str) -> str:
    """A few words for a skipped log-rank test (the full reason is in the TSV)."""
    for key, short in (("no subjects", "no subjects"), ("no events", "no events"), ("median", "one TLV group"),
                       ("no outcome rows", "no outcomes")):
        if key in str(note):
            return short
    return "skipped"


def logrank_text(arm: str, status: str, p, note) -> str:
    """One arm's log-rank result in a Kaplan–Meier panel title: ``OCR p = 0.0412`` (p as
    :func:`t2lesion.formatting.fmt_p` prints it) or a few words on why it was skipped."""
    return f"{arm} {fmt_p(p)}" if status == "ok" else f"{arm}: {_short_reason(note)}"


def _save(fig, out_png: str | Path) -> None:
    try:
        with atomic_output(out_png) as tmp:
            fig.savefig(tmp, dpi=130, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)


def _empty(out_png: str | Path, message: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=11)
    _save(fig, out_png)


def plot_change(
    summary: pd.DataFrame,
    out_png: str | Path,
    control_arm: str,
    conf_level: float = 0.95,
    sources: Sequence[str] | None = None,
) -> None:
    """Longitudinal mean percent change of TLV per arm (Fig. 3d–g style).

    ``summary`` from :func:`t2lesion.stats.summarize_change`. Error bars are the
    ``conf_level`` confidence intervals; "Δ" labels are the separations
    (control − arm) in percentage points. Panels share the y axis so GT and
    predicted trends compare directly.
    """
    ok = summary[summary["n_pct"] > 0] if len(summary) else summary
    if len(ok) == 0:
        _empty(out_png, "Percent change: nothing to plot (no participants with a percent change)")
        return
    sources = list(dict.fromkeys(ok["source"])) if sources is None else list(sources)
    arms = list(dict.fromkeys([control_arm] + list(summary["arm"])))
    colors = {a: ARM_COLORS[i % len(ARM_COLORS)] for i, a in enumerate(arms)}
    weeks = sorted(ok["week"].unique())
    fig, axes = plt.subplots(1, len(sources), figsize=(5.2 * len(sources), 4.6), sharey=True, squeeze=False)
    axes = axes[0]
    span = max(weeks) - min(weeks) if len(weeks) > 1 else 1
    offsets = {a: (i - (len(arms) - 1) / 2) * 0.012 * span for i, a in enumerate(arms)}
    for ax, src in zip(axes, sources):
        s = ok[ok["source"] == src]
        for arm in arms:
            a = s[s["arm"] == arm].sort_values("week")
            if len(a) == 0:
                continue
            x = a["week"].to_numpy(float) + offsets[arm]
            y = a["mean_pct_change"].to_numpy(float)
            lo = y - a["ci_low_pct_change"].to_numpy(float)
            hi = a["ci_high_pct_change"].to_numpy(float) - y
            err = np.clip(np.vstack([np.nan_to_num(lo), np.nan_to_num(hi)]), 0, None)
            n0 = int(a["n_pct"].iloc[0])
            ax.errorbar(x, y, yerr=err, color=colors[arm], marker="o", ms=5, lw=1.8, capsize=3,
                        label=f"{arm} (n = {n0})")
        ax.axhline(0, color="0.6", lw=0.8, zorder=0)
        ax.set_xticks(weeks)
        ax.set_xticklabels([f"w{w}" for w in weeks])
        ax.set_xlabel("Week")
        n_others = max(1, len(arms) - 1)
        ax.set_title(source_title(src), fontsize=12, pad=8 + 11 * n_others)
        ax.grid(axis="y", color="0.9")
        ax.legend(loc="upper left", fontsize=9, frameon=False)
        # separations, written just above the panel for each follow-up week
        others = [a for a in arms if a != control_arm]
        for j, arm in enumerate(others):
            sep = s[(s["arm"] == arm) & s["separation_pct"].notna()]
            for r in sep.itertuples():
                ax.annotate(f"Δ {fmt_num(r.separation_pct)}%", xy=(r.week, 1.0), xycoords=("data", "axes fraction"),
                            xytext=(0, 3 + 11 * j), textcoords="offset points", ha="center", va="bottom",
                            fontsize=8, color=colors[arm])
        bl0 = int(s.loc[s["week"] == s["week"].min(), "n_excluded_bl0"].sum())
        if bl0:
            ax.text(0.99, 0.02, f"{bl0} with baseline TLV 0 excluded", transform=ax.transAxes, ha="right",
                    va="bottom", fontsize=8, color="0.3")
    axes[0].set_ylabel(f"Mean % change in T2 TLV from baseline\n(± {conf_level:.0%} CI)")
    fig.suptitle(f"Percent change of T2 lesion volume by arm (Δ = separation, {control_arm} − arm)",
                 fontsize=12)
    fig.tight_layout()
    _save(fig, out_png)


def plot_km(
    tests: pd.DataFrame,
    curves: pd.DataFrame,
    at_risk: pd.DataFrame,
    endpoint: str,
    out_png: str | Path,
    arms: Sequence[str],
    sources: Sequence[str] | None = None,
) -> None:
    """Kaplan–Meier curves of ``endpoint`` by median baseline TLV, per arm (Fig. 4 style).

    One column per source. Colour = arm, solid = TLV ≤ median ("low"), dashed =
    TLV > median ("high"); the panel title gives the source's median and the
    log-rank p per arm; numbers at risk under each panel, one line per arm × group;
    one legend for the figure.
    """
    t_ep = tests[tests["endpoint"] == endpoint] if len(tests) else tests
    c_ep = curves[curves["endpoint"] == endpoint]
    r_ep = at_risk[at_risk["endpoint"] == endpoint]
    if len(c_ep) == 0:
        notes = "; ".join(dict.fromkeys(t_ep["note"])) if len(t_ep) else ""
        _empty(out_png, f"{endpoint}: no Kaplan–Meier curves\n{notes}")
        return
    sources = list(dict.fromkeys(t_ep["source"])) if sources is None else list(sources)
    colors = {a: ARM_COLORS[i % len(ARM_COLORS)] for i, a in enumerate(arms)}
    styles = {"low": "-", "high": "--"}
    have = set(map(tuple, r_ep[["arm", "group"]].to_numpy())) if len(r_ep) else set()
    lines = [(a, g) for a in arms for g in ("low", "high") if (a, g) in have] or [(arms[0], "low")]
    n_lines = len(lines)
    fig = plt.figure(figsize=(5.8 * len(sources), 4.9 + 0.22 * n_lines))
    gs = fig.add_gridspec(2, len(sources), height_ratios=[4.0, 0.28 * n_lines + 0.45], hspace=0.3, wspace=0.22)
    tmax = float(c_ep["time"].max())
    handles = {}
    for k, src in enumerate(sources):
        ax = fig.add_subplot(gs[0, k])
        tab = fig.add_subplot(gs[1, k], sharex=ax)
        ts = t_ep[t_ep["source"] == src]
        median = float(ts["median_bl_tlv_ml"].iloc[0]) if len(ts) else np.nan
        for arm, grp in lines:
            c = c_ep[(c_ep["source"] == src) & (c_ep["arm"] == arm) & (c_ep["group"] == grp)]
            if len(c) == 0:
                continue
            t = c["time"].to_numpy(float)
            y = c["survival"].to_numpy(float)
            if t[-1] < tmax:
                t, y = np.append(t, tmax), np.append(y, y[-1])
            sign = "≤" if grp == "low" else ">"
            (h,) = ax.step(t, y, where="post", color=colors[arm], ls=styles[grp], lw=1.8)
            handles.setdefault(f"{arm}, BL TLV {sign} median", h)
        ptxt = [logrank_text(r.arm, r.status, r.p, r.note) for r in ts.itertuples()]
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(f"Free of {endpoint} (KM)" if k == 0 else "")
        ax.set_title(f"{source_title(src)} — median BL TLV {fmt_num(median)} mL\nlog-rank: " + "; ".join(ptxt),
                     fontsize=10.5)
        ax.grid(color="0.92")
        plt.setp(ax.get_xticklabels(), visible=False)
        # numbers at risk
        rs = r_ep[r_ep["source"] == src]
        tab.set_ylim(-0.5, n_lines - 0.5)
        tab.set_yticks(range(n_lines))
        tab.set_yticklabels([f"{a} {'≤' if g == 'low' else '>'} med" for a, g in lines][::-1], fontsize=8)
        for i, (arm, grp) in enumerate(lines):
            yy = n_lines - 1 - i
            for r in rs[(rs["arm"] == arm) & (rs["group"] == grp)].itertuples():
                tab.text(r.time, yy, str(r.n_at_risk), ha="center", va="center", fontsize=8, color=colors[arm])
        for side in ("top", "right", "left"):
            tab.spines[side].set_visible(False)
        tab.tick_params(axis="y", length=0)
        tab.set_xlabel("Weeks")
        tab.set_title("Number at risk", fontsize=9, loc="left")
        ticks = sorted(rs["time"].unique()) if len(rs) else None
        if ticks:
            tab.set_xticks(ticks)
        tab.set_xlim(-0.03 * tmax, tmax * 1.03)
    fig.suptitle(f"{endpoint}: Kaplan–Meier by cohort-wide median baseline T2 TLV", fontsize=12, y=1.0)
    ncol = max(1, min(len(handles), 2 * len(sources), 4))
    if handles:
        fig.legend(list(handles.values()), list(handles.keys()), loc="upper center", ncol=ncol, fontsize=9,
                   frameon=False, bbox_to_anchor=(0.5, 0.975))
    n_rows = max(1, -(-len(handles) // ncol))
    fig.subplots_adjust(top=0.82 - 0.035 * (n_rows - 1))
    _save(fig, out_png)
