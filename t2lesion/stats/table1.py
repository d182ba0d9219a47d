"""Table 1 of the paper: the cohort by arm (clinical and baseline lesion characteristics).

One column per arm (control first) and one for all participants; rows as the paper's
Table 1 where the trial's tables allow: patients, visits (in all and per week), sex,
age (mean ± SD, range), region, baseline EDSS (mean ± SD, range) and, per lesion source
(GT first, then each prediction source), baseline T2 TLV (mL; mean ± SD, range) and
baseline T2 TLC (mean ± SD). A characteristic the data lack (every age, EDSS or region
cell ``n/a``; no GT) is left out rather than shown empty. Counts of missing values are
written beside the others (``n/a: k``); a source without a baseline value for every
participant says on how many its numbers rest (``n = k``). Patients are those of
participants.tsv; those without any MRI (the validated visit list's "no MRI" rows) are
counted among them and, when there are any, on a row of their own ("Patients without MRI"). Numbers as
:mod:`t2lesion.formatting` prints them (3 significant digits).

Inputs are read as the statistics read them (:func:`t2lesion.stats.inputs._load`,
:func:`read_visits`): the participants, the long TLV table with the long-table stage's
exclusions, and the validated visit list (visits the user excluded are not counted).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import pandas as pd

from t2lesion.formatting import MISSING, fmt_num
from t2lesion.stats.common import GT_SOURCE, _write_tsv, resolve_arms
from t2lesion.stats.inputs import _load, read_visit_list

log = logging.getLogger(__name__)

ALL = "all"
TABLE1_COLUMNS = ("characteristic", "statistic")


def _mean_sd(values: pd.Series) -> str:
    v = values.dropna().astype(float)
    if v.empty:
        return MISSING
    sd = v.std(ddof=1) if len(v) > 1 else float("nan")
    return f"{fmt_num(v.mean())} ± {fmt_num(sd)}"


def _range(values: pd.Series) -> str:
    v = values.dropna().astype(float)
    return MISSING if v.empty else f"{fmt_num(v.min())}–{fmt_num(v.max())}"


def _counts(values: pd.Series, levels: Sequence[str]) -> str:
    parts = [f"{lev}: {int((values == lev).sum())}" for lev in levels]
    missing = int(values.isna().sum())
    if missing:
        parts.append(f"n/a: {missing}")
    return ", ".join(parts)


def _with_n(text: str, n: int, n_all: int) -> str:
    return text if n == n_all else f"{text} (n = {n})"


def source_label(source: str) -> str:
    return "GT masks" if source == GT_SOURCE else f"predicted ({source})"


def cohort_table(
    participants: pd.DataFrame,
    long: pd.DataFrame | None = None,
    visits: pd.DataFrame | None = None,
    control_arm: str | None = None,
    arms: Sequence[str] | None = None,
    baseline_week: int = 0,
    sources: Sequence[str] | None = None,
    no_mri: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Table 1 as strings: characteristic, statistic, one column per arm, ``all``.

    ``participants`` typed as :func:`read_participants` gives it; ``long`` the long TLV
    table (participant_id, week, source, tlv_ml, tlc); ``visits`` the validated visit list
    (participant_id, week, excluded). Arms in analysis order (:func:`resolve_arms`; the
    participants' first arm is the control when ``control_arm`` is not given). ``no_mri``:
    the participants without any MRI (:func:`read_visit_list`), counted on their own row.
    """
    p = participants
    control = control_arm if control_arm is not None else str(p["arm"].iloc[0])
    arm_order = resolve_arms(p, control, arms)
    groups = [(a, p[p["arm"] == a]) for a in arm_order] + [(ALL, p[p["arm"].isin(arm_order)])]
    rows: list[dict] = []

    def add(characteristic: str, statistic: str, cell) -> None:
        rows.append({"characteristic": characteristic, "statistic": statistic,
                     **{name: cell(g) for name, g in groups}})

    add("Patients", "n", lambda g: str(len(g)))
    if no_mri:
        add("Patients without MRI", "n", lambda g: str(int(g["participant_id"].isin(list(no_mri)).sum())))
    if visits is not None:
        v = visits[visits["excluded"].astype(str) == ""].merge(p[["participant_id", "arm"]], on="participant_id")
        add("Visits", "n", lambda g: str(int(v["participant_id"].isin(g["participant_id"]).sum())))
        for week in sorted(v["week"].unique()):
            vw = v[v["week"] == week]
            add(f"Visits at week {int(week)}", "n",
                lambda g, vw=vw: str(int(vw["participant_id"].isin(g["participant_id"]).sum())))
    if p["sex"].notna().any():
        add("Sex", "n", lambda g: _counts(g["sex"], ["M", "F"]))
    if p["age"].notna().any():
        add("Age (years)", "mean ± SD", lambda g: _mean_sd(g["age"]))
        add("Age (years)", "range", lambda g: _range(g["age"]))
    if p["region"].notna().any():
        levels = sorted(p["region"].dropna().unique())
        add("Region", "n", lambda g: _counts(g["region"], levels))
    if p["edss_bl"].notna().any():
        add("Baseline EDSS", "mean ± SD", lambda g: _mean_sd(g["edss_bl"]))
        add("Baseline EDSS", "range", lambda g: _range(g["edss_bl"]))
    if long is not None and len(long):
        present = list(dict.fromkeys(long["source"]))
        srcs = list(sources) if sources is not None else (
            ([GT_SOURCE] if GT_SOURCE in present else []) + [s for s in present if s != GT_SOURCE])
        bl = long[long["week"] == baseline_week]
        for src in srcs:
            b = bl[bl["source"] == src].drop_duplicates("participant_id").set_index("participant_id")

            def at_bl(g, col, b=b):
                return b.loc[b.index.intersection(g["participant_id"]), col]

            label = source_label(src)
            add(f"Baseline T2 TLV (mL), {label}", "mean ± SD",
                lambda g, f=at_bl: _with_n(_mean_sd(f(g, "tlv_ml")), len(f(g, "tlv_ml")), len(g)))
            add(f"Baseline T2 TLV (mL), {label}", "range", lambda g, f=at_bl: _range(f(g, "tlv_ml")))
            add(f"Baseline T2 TLC, {label}", "mean ± SD",
                lambda g, f=at_bl: _with_n(_mean_sd(f(g, "tlc")), len(f(g, "tlc")), len(g)))
    return pd.DataFrame(rows, columns=[*TABLE1_COLUMNS, *arm_order, ALL])


def run_table1(
    participants_tsv: str | Path,
    long_tsv: str | Path,
    visits_tsv: str | Path,
    out_tsv: str | Path,
    control_arm: str,
    arms: Sequence[str] | None = None,
    baseline_week: int = 0,
    long_exclusions_tsv: str | Path | None = None,
) -> pd.DataFrame:
    """Read a trial's participants, long TLV table and validated visits; write Table 1."""
    participants, long, _, _ = _load(long_tsv, participants_tsv, None, arms, baseline_week, long_exclusions_tsv)
    visits, no_mri = read_visit_list(visits_tsv)
    table = cohort_table(participants, long, visits, control_arm, arms, baseline_week, no_mri=list(no_mri))
    _write_tsv(table, out_tsv)
    log.info("Table 1: %s", ", ".join(f"{c} n={table.loc[0, c]}" for c in table.columns[2:]))
    return table


__all__ = ["ALL", "TABLE1_COLUMNS", "cohort_table", "run_table1", "source_label"]
