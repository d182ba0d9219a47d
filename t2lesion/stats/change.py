"""Change of TLV from baseline by arm and week (paper Fig. 3d–g)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from t2lesion.stats.common import (
    OK, SKIPPED, Exclusions, _write_tsv, resolve_arms, resolve_sources, write_exclusions,
)
from t2lesion.stats.inputs import _load

log = logging.getLogger(__name__)

# --------------------------------------------------------------------- change


def compute_change(long: pd.DataFrame, baseline_week: int = 0) -> pd.DataFrame:
    """Absolute and percent change of TLV (and TLC change) from baseline, per row.

    Paper "Longitudinal changes" (Fig. 3d–g). Adds tlv_bl_ml, tlc_bl, abs_change_ml,
    pct_change (NaN when baseline TLV is 0), tlc_change and ``excluded_bl0`` (True
    when the baseline TLV is 0). Baseline rows keep change 0.
    """
    bl = long.loc[long["week"] == baseline_week, ["participant_id", "source", "tlv_ml", "tlc"]].rename(
        columns={"tlv_ml": "tlv_bl_ml", "tlc": "tlc_bl"}
    )
    out = long.merge(bl, on=["participant_id", "source"], how="left", validate="many_to_one")
    out["abs_change_ml"] = out["tlv_ml"] - out["tlv_bl_ml"]
    out["excluded_bl0"] = out["tlv_bl_ml"] <= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        pct = 100.0 * out["abs_change_ml"] / out["tlv_bl_ml"]
    out["pct_change"] = pct.where(~out["excluded_bl0"])
    out["tlc_change"] = out["tlc"] - out["tlc_bl"]
    return out.sort_values(["source", "participant_id", "week"], kind="stable").reset_index(drop=True)


def _mean_ci(x: np.ndarray, conf_level: float) -> tuple[float, float, float, float, float]:
    """mean, sd, se, low, high (t-based); NaN where undefined."""
    n = len(x)
    if n == 0:
        return (np.nan,) * 5
    m = float(np.mean(x))
    if n < 2:
        return m, np.nan, np.nan, np.nan, np.nan
    sd = float(np.std(x, ddof=1))
    se = sd / math.sqrt(n)
    h = float(sps.t.ppf(0.5 + conf_level / 2, n - 1)) * se
    return m, sd, se, m - h, m + h


def _welch(a: np.ndarray, b: np.ndarray, conf_level: float) -> tuple[float, float, float, float]:
    """mean(a) - mean(b), Welch CI low/high and two-sided p."""
    d = float(np.mean(a) - np.mean(b))
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0 or not np.isfinite(se):
        return d, np.nan, np.nan, np.nan
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    q = float(sps.t.ppf(0.5 + conf_level / 2, df))
    p = float(2 * sps.t.sf(abs(d) / se, df))
    return d, d - q * se, d + q * se, p


def summarize_change(
    change: pd.DataFrame,
    participants: pd.DataFrame,
    control_arm: str,
    arms: Sequence[str] | None = None,
    conf_level: float = 0.95,
    sources: Sequence[str] | None = None,
    baseline_week: int = 0,
) -> pd.DataFrame:
    """Mean percent/absolute change per source × arm × week, and separation between arms.

    Paper Fig. 3d–g and Results ("separations of the arms … 2.6 %, 5.5 %, 13.5 %").
    Columns: source, arm, week, n (participants with the visit), n_pct (used for the
    percent change), n_excluded_bl0 (baseline TLV 0), mean/sd/se/ci_low/ci_high of
    pct_change, mean/ci of abs_change_ml, separation_pct = mean(control) −
    mean(this arm) with Welch CI (separation_ci_low/high) and p (separation_p);
    status/note (arm with no subjects → "skipped").
    """
    arms = resolve_arms(participants, control_arm, arms)
    sources = resolve_sources(change, sources)
    d = change.merge(participants[["participant_id", "arm"]], on="participant_id", how="left")
    rows = []
    for src in sources:
        ds = d[d["source"] == src]
        weeks = sorted(ds["week"].unique())
        for w in weeks:
            dw = ds[ds["week"] == w]
            ctrl = dw.loc[(dw["arm"] == control_arm), "pct_change"].dropna().to_numpy()
            for arm in arms:
                da = dw[dw["arm"] == arm]
                pct = da["pct_change"].dropna().to_numpy()
                absd = da["abs_change_ml"].to_numpy()
                m, sd, se, lo, hi = _mean_ci(pct, conf_level)
                am, _, _, alo, ahi = _mean_ci(absd, conf_level)
                row = {
                    "source": src, "arm": arm, "week": int(w), "n": len(da), "n_pct": len(pct),
                    "n_excluded_bl0": int(da["excluded_bl0"].sum()),
                    "mean_pct_change": m, "sd_pct_change": sd, "se_pct_change": se,
                    "ci_low_pct_change": lo, "ci_high_pct_change": hi,
                    "mean_abs_change_ml": am, "ci_low_abs_change_ml": alo, "ci_high_abs_change_ml": ahi,
                    "separation_pct": np.nan, "separation_ci_low": np.nan, "separation_ci_high": np.nan,
                    "separation_p": np.nan,
                    "separation_def": "" if arm == control_arm else f"mean pct change {control_arm} minus {arm}",
                    "status": OK, "note": "",
                }
                notes = []
                if len(da) == 0:
                    row["status"] = SKIPPED
                    notes.append(f"arm {arm} has no subjects at week {w} in source {src}")
                elif len(pct) < 2:
                    notes.append(f"n_pct={len(pct)}: no confidence interval")
                if arm != control_arm and w != baseline_week and len(da):
                    if len(ctrl) >= 2 and len(pct) >= 2:
                        s = _welch(ctrl, pct, conf_level)
                        row.update(separation_pct=s[0], separation_ci_low=s[1], separation_ci_high=s[2],
                                   separation_p=s[3])
                    elif len(ctrl) and len(pct):
                        row["separation_pct"] = float(np.mean(ctrl) - np.mean(pct))
                        notes.append("separation without CI (fewer than 2 per arm)")
                    else:
                        notes.append(f"no separation: {control_arm if not len(ctrl) else arm} has no percent change")
                if row["n_excluded_bl0"]:
                    notes.append(f"{row['n_excluded_bl0']} with baseline TLV 0 excluded from percent change")
                row["note"] = "; ".join(notes)
                rows.append(row)
    out = pd.DataFrame(rows)
    for r in out[out["status"] == SKIPPED].itertuples():
        log.warning("change summary skipped: %s", r.note)
    return out



def change_exclusions(change: pd.DataFrame, participants: pd.DataFrame, sources: Sequence[str],
                      carried: pd.DataFrame | None = None, baseline_week: int = 0) -> pd.DataFrame:
    """Who the change analyses leave out, per source: no lesion data (the long-table
    stage's reason), no visit at a week that other participants have, baseline TLV 0
    (no percent change; their absolute change is kept)."""
    excl = Exclusions("change")
    carried = carried if carried is not None else pd.DataFrame(columns=["participant_id", "source", "scope",
                                                                        "reason"])
    for src in sources:
        cs = carried[carried["source"] == src]
        reasons = {(r.participant_id, str(r.scope)): r.reason for r in cs.itertuples()}
        ds = change[change["source"] == src]
        have = set(ds["participant_id"])
        groups: dict[tuple[str, str], list[str]] = {}
        for pid in participants["participant_id"]:
            if pid not in have:
                groups.setdefault((reasons.get((pid, ""), f"no {src} lesion data"), ""), []).append(pid)
        for w in sorted(set(ds["week"]) - {baseline_week}):
            for pid in sorted(have - set(ds.loc[ds["week"] == w, "participant_id"])):
                why = reasons.get((pid, f"week {w}"), f"no week {w} visit")
                groups.setdefault((why, f"week {w}"), []).append(pid)
        for (why, scope), pids in groups.items():
            excl.add(pids, src, why, scope)
        bl0 = sorted(set(ds.loc[ds["excluded_bl0"], "participant_id"]))
        excl.add(bl0, src, "baseline TLV 0: no percent change (absolute change kept)", "percent change")
    return excl.frame()


def run_change(
    long_tsv: str | Path,
    participants_tsv: str | Path,
    out_change_tsv: str | Path,
    out_summary_tsv: str | Path,
    out_png: str | Path,
    control_arm: str,
    arms: Sequence[str] | None = None,
    baseline_week: int = 0,
    conf_level: float = 0.95,
    sources: Sequence[str] | None = None,
    out_exclusions_tsv: str | Path | None = None,
    long_exclusions_tsv: str | Path | None = None,
) -> pd.DataFrame:
    """Change from baseline (docs/DESIGN.md §9 bullets 1–2; paper Fig. 3d–g).

    Writes the per-row change table (:func:`compute_change`), the per source × arm
    × week summary with separations (:func:`summarize_change`), the longitudinal
    figure (one panel per source, GT first) and the exclusions table
    (:func:`change_exclusions`). Returns the summary.
    """
    participants, long, _, carried = _load(long_tsv, participants_tsv, None, arms, baseline_week,
                                           long_exclusions_tsv)
    srcs = resolve_sources(long, sources)
    change = compute_change(long[long["source"].isin(srcs)], baseline_week)
    summary = summarize_change(change, participants, control_arm, arms, conf_level, srcs, baseline_week)
    _write_tsv(change, out_change_tsv)
    _write_tsv(summary, out_summary_tsv)
    write_exclusions(change_exclusions(change, participants, srcs, carried, baseline_week), out_exclusions_tsv)
    from t2lesion.plots.stats import plot_change

    plot_change(summary, out_png, control_arm=control_arm, conf_level=conf_level)
    return summary
