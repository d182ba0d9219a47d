"""Input tables of the statistics: reading, validation, the long TLV table."""

from __future__ import annotations

import logging
import math
import re
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from t2lesion.errors import InputError
from t2lesion.io import write_tsv  # noqa: F401
from t2lesion.stats.common import (
    FAILED, GT_SOURCE, LONG_COLUMNS, OK, OUTCOME_COLUMNS, PARTICIPANT_COLUMNS, SKIPPED, SOURCE_RE, SUB_RE,
    DEFAULT_COX_FIT_OPTIONS, WARNING, _write_tsv, resolve_arms, resolve_sources, side_by_side,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- input


def _where(name: str, idx: int) -> str:
    return f"{name}, row {idx + 2}"  # +1 header, +1 one-based


def _read_tsv(path: str | Path, required: Sequence[str]) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises many types for malformed text
        raise InputError(f"{path}: cannot be parsed as a tab-separated table ({exc})") from None
    _check_columns(df, required, str(path))
    return df


def _check_columns(df: pd.DataFrame, required: Sequence[str], name: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(f"{name}: missing column(s) {', '.join(missing)} (has: {', '.join(map(str, df.columns))})")


def _num(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def validate_participants(
    df: pd.DataFrame, name: str = "participants.tsv", arms: Sequence[str] | None = None
) -> pd.DataFrame:
    """Check and type the participants table; raise InputError listing every bad row.

    Required: participant_id (``sub-<letters/digits>``, unique), arm (one of
    ``arms`` when given), age (> 0), sex (M/F), region (non-empty), edss_bl (0–10).
    Extra columns are kept.
    """
    _check_columns(df, PARTICIPANT_COLUMNS, name)
    df = df.reset_index(drop=True)
    problems: list[str] = []
    seen: dict[str, int] = {}
    for i, row in df.iterrows():
        where = _where(name, i)
        pid = str(row["participant_id"]).strip()
        if not SUB_RE.match(pid):
            problems.append(f"{where}: participant_id {pid!r} is not 'sub-<label>' (letters and digits)")
        elif pid in seen:
            problems.append(f"{where}: duplicate participant_id {pid!r} (first on row {seen[pid]})")
        else:
            seen[pid] = i + 2
        arm = str(row["arm"]).strip()
        if not arm:
            problems.append(f"{where}: empty arm for {pid}")
        elif arms is not None and arm not in arms:
            problems.append(f"{where}: unknown arm {arm!r} for {pid} (configured arms: {', '.join(arms)})")
        age = _num(row["age"])
        if age is None or age <= 0:
            problems.append(f"{where}: age {row['age']!r} for {pid} is not a positive number")
        if str(row["sex"]).strip() not in ("M", "F"):
            problems.append(f"{where}: sex {row['sex']!r} for {pid} must be M or F")
        if not str(row["region"]).strip():
            problems.append(f"{where}: empty region for {pid}")
        edss = _num(row["edss_bl"])
        if edss is None or not 0 <= edss <= 10:
            problems.append(f"{where}: edss_bl {row['edss_bl']!r} for {pid} is not a number in 0-10")
    if problems:
        raise InputError(problems, header=f"{name}: {len(problems)} problem(s)")
    out = df.copy()
    for col in ("participant_id", "arm", "sex", "region"):
        out[col] = out[col].astype(str).str.strip()
    out["age"] = out["age"].astype(float)
    out["edss_bl"] = out["edss_bl"].astype(float)
    return out


MAX_PROBLEMS = 50


def _collect(problems: list[str], mask, make) -> None:
    """Append ``make(i)`` for each row index where ``mask`` is True (capped)."""
    for i in np.flatnonzero(np.asarray(mask)):
        if len(problems) >= MAX_PROBLEMS:
            return
        problems.append(make(int(i)))


def _raise(problems: list[str], name: str) -> None:
    if problems:
        if len(problems) >= MAX_PROBLEMS:
            problems = problems + [f"... (stopped after {MAX_PROBLEMS} problems)"]
        raise InputError(problems, header=f"{name}: {len(problems)} problem(s)")


def _strip(col: pd.Series) -> pd.Series:
    return col.astype(str).str.strip()


def validate_long(
    df: pd.DataFrame, participants: pd.DataFrame, name: str = "long table", baseline_week: int = 0
) -> pd.DataFrame:
    """Check and type the long lesion table; raise InputError listing every bad row.

    Required: participant_id known in participants, week (integer >= 0), source
    (letters, digits, ``_.-``), tlv_ml (finite, >= 0), tlc (integer >= 0); unique per
    participant × week × source, and every participant × source has its baseline
    week (``stats.baseline_week``). ``session`` is carried along unchecked.
    """
    _check_columns(df, LONG_COLUMNS, name)
    df = df.reset_index(drop=True)
    known = set(participants["participant_id"])
    pids, sources = _strip(df["participant_id"]), _strip(df["source"])
    weeks = pd.to_numeric(df["week"], errors="coerce").to_numpy(float)
    tlv = pd.to_numeric(df["tlv_ml"], errors="coerce").to_numpy(float)
    tlc = pd.to_numeric(df["tlc"], errors="coerce").to_numpy(float)
    problems: list[str] = []
    w = lambda i: _where(name, i)  # noqa: E731
    _collect(problems, ~pids.isin(known),
             lambda i: f"{w(i)}: unknown participant {pids[i]!r} (not in participants.tsv)")
    with np.errstate(invalid="ignore"):
        _collect(problems, ~(np.isfinite(weeks) & (weeks >= 0) & (weeks == np.round(weeks))),
                 lambda i: f"{w(i)}: week {df['week'][i]!r} is not a whole number >= 0")
        _collect(problems, ~sources.str.match(SOURCE_RE.pattern),
                 lambda i: f"{w(i)}: source {df['source'][i]!r} must be letters, digits, '_', '.', '-'")
        _collect(problems, ~(np.isfinite(tlv) & (tlv >= 0)),
                 lambda i: f"{w(i)}: tlv_ml {df['tlv_ml'][i]!r} is not a number >= 0")
        _collect(problems, ~(np.isfinite(tlc) & (tlc >= 0) & (tlc == np.round(tlc))),
                 lambda i: f"{w(i)}: tlc {df['tlc'][i]!r} is not a whole number >= 0")
    _raise(problems, name)
    out = df.copy()
    out["participant_id"], out["source"] = pids, sources
    out["week"] = weeks.astype(int)
    out["tlv_ml"] = tlv
    out["tlc"] = tlc.astype(int)
    dup = out.duplicated(["participant_id", "week", "source"], keep="first").to_numpy()
    _collect(problems, dup, lambda i: f"{w(i)}: duplicate row for {out['participant_id'][i]} week "
                                      f"{out['week'][i]} source {out['source'][i]}")
    has_bl = set(map(tuple, out.loc[out["week"] == baseline_week, ["participant_id", "source"]].to_numpy()))
    for pid, src in sorted(set(map(tuple, out[["participant_id", "source"]].to_numpy())) - has_bl):
        if len(problems) >= MAX_PROBLEMS:
            break
        problems.append(f"{name}: {pid} has no baseline (week {baseline_week}) row for source {src!r}")
    _raise(problems, name)
    return out


def validate_outcomes(df: pd.DataFrame, participants: pd.DataFrame, name: str = "outcomes.tsv") -> pd.DataFrame:
    """Check and type the outcomes table; raise InputError listing every bad row.

    Required: participant_id known in participants, endpoint (non-empty),
    time_weeks (finite, >= 0; negative times are an error), event (0 or 1),
    unique per participant × endpoint.
    """
    _check_columns(df, OUTCOME_COLUMNS, name)
    df = df.reset_index(drop=True)
    known = set(participants["participant_id"])
    pids, eps = _strip(df["participant_id"]), _strip(df["endpoint"])
    t = pd.to_numeric(df["time_weeks"], errors="coerce").to_numpy(float)
    ev = _strip(df["event"])
    problems: list[str] = []
    w = lambda i: _where(name, i)  # noqa: E731
    _collect(problems, ~pids.isin(known),
             lambda i: f"{w(i)}: outcome for unknown participant {pids[i]!r} (not in participants.tsv)")
    _collect(problems, eps == "", lambda i: f"{w(i)}: empty endpoint")
    _collect(problems, ~np.isfinite(t), lambda i: f"{w(i)}: time_weeks {df['time_weeks'][i]!r} is not a number")
    with np.errstate(invalid="ignore"):
        _collect(problems, np.isfinite(t) & (t < 0),
                 lambda i: f"{w(i)}: negative time_weeks {t[i]:g} for {pids[i]} {eps[i]}")
    _collect(problems, ~ev.isin(["0", "1", "0.0", "1.0"]), lambda i: f"{w(i)}: event {df['event'][i]!r} must be 0 or 1")
    key = pd.DataFrame({"p": pids, "e": eps})
    first = {}
    dup = key.duplicated(keep="first").to_numpy()
    if dup.any():
        first = {k: i + 2 for i, k in reversed(list(enumerate(zip(pids, eps))))}
    _collect(problems, dup, lambda i: f"{w(i)}: duplicate outcome {pids[i]} {eps[i]} "
                                      f"(first on row {first[(pids[i], eps[i])]})")
    _raise(problems, name)
    out = df.copy()
    out["participant_id"], out["endpoint"] = pids, eps
    out["time_weeks"] = t
    out["event"] = ev.astype(float).astype(int)
    return out


def read_participants(path: str | Path, arms: Sequence[str] | None = None) -> pd.DataFrame:
    """Read and validate participants.tsv (see :func:`validate_participants`)."""
    return validate_participants(_read_tsv(path, PARTICIPANT_COLUMNS), str(path), arms)


def read_long(path: str | Path, participants: pd.DataFrame, baseline_week: int = 0) -> pd.DataFrame:
    """Read and validate the long lesion table (see :func:`validate_long`)."""
    return validate_long(_read_tsv(path, LONG_COLUMNS), participants, str(path), baseline_week)


def read_outcomes(path: str | Path, participants: pd.DataFrame) -> pd.DataFrame:
    """Read and validate outcomes.tsv (see :func:`validate_outcomes`)."""
    return validate_outcomes(_read_tsv(path, OUTCOME_COLUMNS), participants, str(path))



# ----------------------------------------------------------------- long table

VISIT_COLUMNS = ("participant_id", "session", "week", "gt_tlv_ml", "pred_tlv_ml", "gt_tlc", "pred_tlc")


def long_table_from_visits(visits_by_source: Mapping[str, pd.DataFrame], gt_rtol: float = 1e-6) -> pd.DataFrame:
    """Long table (participant_id, session, week, source, tlv_ml, tlc) from metrics visit tables.

    SPEC §9 deliverable "long table of TLV/TLC per subject × week × source". Each
    prediction source's per-visit metrics table (``t2lesion.metrics`` visits.tsv:
    participant_id, session, week, gt_tlv_ml, pred_tlv_ml, gt_tlc, pred_tlc) gives
    that source's rows (pred_*); the ``gt`` rows come from the gt_* columns, which
    every source computed from the same GT masks: they must agree (relative
    tolerance ``gt_rtol``), else InputError. A visit present in only some sources
    keeps its GT row. The name ``gt`` is reserved for the ground truth.
    """
    if not visits_by_source:
        raise InputError("long table: no prediction sources given (config 'sources')")
    problems = []
    if GT_SOURCE in visits_by_source:
        problems.append(f"source name {GT_SOURCE!r} is reserved for the ground truth")
    parts, gts = [], []
    for src, df in visits_by_source.items():
        missing = [c for c in VISIT_COLUMNS if c not in df.columns]
        if missing:
            problems.append(f"visits of source {src!r}: missing column(s) {', '.join(missing)}")
            continue
        v = df[list(VISIT_COLUMNS)].copy()
        parts.append(pd.DataFrame({"participant_id": v["participant_id"], "session": v["session"],
                                   "week": v["week"], "source": src, "tlv_ml": v["pred_tlv_ml"],
                                   "tlc": v["pred_tlc"]}))
        gts.append(v[["participant_id", "session", "week", "gt_tlv_ml", "gt_tlc"]].assign(src_name=src))
    if problems:
        raise InputError(problems, header="long table:")
    g = pd.concat(gts, ignore_index=True)
    ref = g.drop_duplicates(["participant_id", "session"], keep="first")
    chk = g.merge(ref, on=["participant_id", "session"], suffixes=("", "_ref"))
    tlv_a, tlv_b = chk["gt_tlv_ml"].astype(float), chk["gt_tlv_ml_ref"].astype(float)
    bad = ~np.isclose(tlv_a, tlv_b, rtol=gt_rtol, atol=1e-12) | (chk["gt_tlc"] != chk["gt_tlc_ref"])
    for r in chk[bad].head(MAX_PROBLEMS).itertuples():
        problems.append(f"{r.participant_id} {r.session}: GT TLV/TLC differ between sources "
                        f"{r.src_name_ref!r} ({r.gt_tlv_ml_ref:g} mL, {r.gt_tlc_ref} lesions) and {r.src_name!r} "
                        f"({r.gt_tlv_ml:g} mL, {r.gt_tlc} lesions); were the sources scored against different GT masks?")
    if problems:
        raise InputError(problems, header="long table:")
    gt = pd.DataFrame({"participant_id": ref["participant_id"], "session": ref["session"], "week": ref["week"],
                       "source": GT_SOURCE, "tlv_ml": ref["gt_tlv_ml"], "tlc": ref["gt_tlc"]})
    out = pd.concat([gt] + parts, ignore_index=True)
    order = {s: i for i, s in enumerate([GT_SOURCE, *visits_by_source])}
    out = out.sort_values(["source", "participant_id", "week"], key=lambda c: c.map(order) if c.name == "source"
                          else c, kind="stable").reset_index(drop=True)
    return out[list(LONG_COLUMNS)]


def run_long_table(visits_by_source: Mapping[str, str | Path], out_tsv: str | Path,
                   gt_rtol: float = 1e-6) -> pd.DataFrame:
    """Read each source's metrics visits.tsv, build the long table (:func:`long_table_from_visits`), write it."""
    frames = {}
    for src, path in visits_by_source.items():
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: file not found (visits of source {src!r})")
        try:
            frames[src] = pd.read_csv(path, sep="\t", na_values=["n/a"], dtype={"participant_id": str,
                                                                               "session": str})
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: cannot be read as a TSV ({type(exc).__name__})") from None
        missing = [c for c in VISIT_COLUMNS if c not in frames[src].columns]
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    out = long_table_from_visits(frames, gt_rtol)
    _write_tsv(out, out_tsv)
    log.info("long table: %d rows, sources %s", len(out), list(dict.fromkeys(out["source"])))
    return out



def _load(long_tsv, participants_tsv, outcomes_tsv=None, arms=None, baseline_week=0):
    participants = read_participants(participants_tsv, arms)
    long = read_long(long_tsv, participants, baseline_week)
    outcomes = read_outcomes(outcomes_tsv, participants) if outcomes_tsv is not None else None
    return participants, long, outcomes

