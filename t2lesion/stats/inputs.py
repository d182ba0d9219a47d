"""Input tables of the statistics: reading, validation, the long TLV table."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from t2lesion.bids import MAX_AGE_YEARS, is_missing, normalise_sex, read_table
from t2lesion.errors import InputError
from t2lesion.formatting import as_number
from t2lesion.stats.common import (
    EXCLUSION_COLUMNS, GT_SOURCE, LONG_COLUMNS, OUTCOME_COLUMNS, PARTICIPANT_COLUMNS, SOURCE_RE, SUB_RE,
    Exclusions, _write_tsv, write_exclusions,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- input


def _where(name: str, idx: int) -> str:
    return f"{name}, row {idx + 2}"  # +1 header, +1 one-based


def _read_tsv(path: str | Path, required: Sequence[str]) -> pd.DataFrame:
    """A table as strings, read as BIDS validation reads it (BOM, CRLF and blanks around cells)."""
    problems: list[str] = []
    df = read_table(Path(path), tuple(required), problems)
    if problems:
        raise InputError(problems if len(problems) > 1 else problems[0])
    return df


def _check_columns(df: pd.DataFrame, required: Sequence[str], name: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(f"{name}: missing column(s) {', '.join(missing)} (has: {', '.join(map(str, df.columns))})")


def validate_participants(
    df: pd.DataFrame, name: str = "participants.tsv", arms: Sequence[str] | None = None
) -> pd.DataFrame:
    """Check and type the participants table; raise InputError listing every bad row.

    Required: participant_id (``sub-<letters/digits>``, unique) and arm (one of
    ``arms`` when given). The covariates age (0-120 years), sex (M/F/male/female, any case,
    coded M/F), region and edss_bl (0–10) may be missing (BIDS ``n/a`` or an empty
    cell, :func:`t2lesion.bids.is_missing`): they become NaN (age, edss_bl) or None
    (sex, region), and the models that use the covariate leave that participant out
    with a row in their exclusions table. A present but invalid value (sex ``X``,
    age ``-3``) is an error naming the row. Extra columns are kept.
    """
    _check_columns(df, PARTICIPANT_COLUMNS, name)
    df = df.reset_index(drop=True)
    problems: list[str] = []
    seen: dict[str, int] = {}
    sexes, regions, ages, edss_ = [], [], [], []
    for i, row in df.iterrows():
        where = _where(name, i)
        pid = str(row["participant_id"]).strip()
        if not SUB_RE.match(pid):
            problems.append(f"{where}: participant_id {pid!r} is not 'sub-<label>' (letters and digits)")
        elif pid in seen:
            problems.append(f"{where}: duplicate participant_id {pid!r} (first on row {seen[pid]})")
        else:
            seen[pid] = i + 2
        arm = "" if is_missing(row["arm"]) else str(row["arm"]).strip()
        if not arm:
            problems.append(f"{where}: missing arm for {pid} (the randomised arm is required)")
        elif arms is not None and arm not in arms:
            problems.append(f"{where}: unknown arm {arm!r} for {pid} (configured arms: {', '.join(arms)})")
        age = np.nan if is_missing(row["age"]) else as_number(row["age"])
        if age is None or age <= 0 or age > MAX_AGE_YEARS:
            problems.append(f"{where}: age {row['age']!r} for {pid} is not an age in years (0-{MAX_AGE_YEARS}, "
                            f"or n/a)")
        ages.append(age)
        sex = None if is_missing(row["sex"]) else normalise_sex(row["sex"])
        if sex is None and not is_missing(row["sex"]):
            problems.append(f"{where}: sex {row['sex']!r} for {pid} must be M/F/male/female (any case) or n/a")
        sexes.append(sex)
        regions.append(None if is_missing(row["region"]) else str(row["region"]).strip())
        edss = np.nan if is_missing(row["edss_bl"]) else as_number(row["edss_bl"])
        if edss is None or not (np.isnan(edss) or 0 <= edss <= 10):
            problems.append(f"{where}: edss_bl {row['edss_bl']!r} for {pid} is not a number in 0-10 (or n/a)")
        edss_.append(edss)
    if problems:
        raise InputError(problems, header=f"{name}: {len(problems)} problem(s)")
    out = df.copy()
    for col in ("participant_id", "arm"):
        out[col] = out[col].astype(str).str.strip()
    out["sex"] = pd.Series(sexes, index=out.index, dtype=object)
    out["region"] = pd.Series(regions, index=out.index, dtype=object)
    out["age"] = np.asarray(ages, float)
    out["edss_bl"] = np.asarray(edss_, float)
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
    df: pd.DataFrame, participants: pd.DataFrame, name: str = "long table", baseline_week: int = 0,
    excluded_participants: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Check and type the long lesion table; raise InputError listing every bad row.

    Required: participant_id known in participants, week (integer >= 0), source
    (letters, digits, ``_.-``), tlv_ml (finite, >= 0), tlc (integer >= 0); unique per
    participant × week × source, and every participant × source present has its
    baseline week (``stats.baseline_week``); no source is required (``gt`` neither).
    ``session`` is carried along unchecked.

    Participants of participants.tsv (decided per case, docs/DESIGN.md §1/§9):

    * absent from the whole table: an error naming them ("no baseline visit"),
      unless ``excluded_participants`` (participant → reason, the whole-participant
      rows of the long-table stage's exclusions, e.g. a baseline visit the user
      excluded) lists them: then each analysis counts them in its exclusions table;
    * present in some sources but absent from a prediction source (any source but
      ``gt``): an error naming participant and source (a segmentation is missing);
    * absent from ``gt`` only: not an error (no GT at baseline); counted by
      :func:`coverage_exclusions` for the ``gt`` analyses.
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
    excluded = dict(excluded_participants or {})
    present = set(out["participant_id"])
    for pid in participants["participant_id"]:
        if pid not in present and pid not in excluded and len(problems) < MAX_PROBLEMS:
            problems.append(f"{name}: participant {pid} of participants.tsv has no rows at all (no baseline "
                            f"visit, week {baseline_week}); every participant must be analysed or excluded "
                            f"with a reason by the long-table stage")
    for src in dict.fromkeys(out["source"]):
        if src == GT_SOURCE:
            continue
        missing = sorted(present - set(out.loc[out["source"] == src, "participant_id"]))
        for pid in missing[: max(0, MAX_PROBLEMS - len(problems))]:
            problems.append(f"{name}: {pid} has no rows for prediction source {src!r} "
                            f"(it has rows for other sources)")
    _raise(problems, name)
    return out


def coverage_exclusions(
    long: pd.DataFrame, participants: pd.DataFrame, sources: Sequence[str],
    long_exclusions: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Participants of participants.tsv absent from a source of the (validated) long table.

    One row (participant_id, source, scope "", reason) per participant × source:
    the long-table stage's reason when it gave one (whole-participant rows of
    ``long_exclusions``), else "no GT at baseline" for ``gt``. (Absence from a
    prediction source is an error in :func:`validate_long`.)
    """
    reasons: dict[tuple[str, str], str] = {}
    if long_exclusions is not None and len(long_exclusions):
        whole = long_exclusions[long_exclusions["scope"].fillna("").astype(str) == ""]
        for r in whole.itertuples():
            reasons.setdefault((r.participant_id, r.source), r.reason)
            reasons.setdefault((r.participant_id, "*"), r.reason)
    rows = []
    for src in sources:
        have = set(long.loc[long["source"] == src, "participant_id"])
        for pid in participants["participant_id"]:
            if pid in have:
                continue
            reason = reasons.get((pid, src)) or reasons.get((pid, "*")) or (
                "no GT at baseline (no gt lesion volume)" if src == GT_SOURCE else f"no {src} lesion volume")
            rows.append({"participant_id": pid, "source": src, "scope": "", "reason": reason})
    return pd.DataFrame(rows, columns=["participant_id", "source", "scope", "reason"])


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


def read_long(path: str | Path, participants: pd.DataFrame, baseline_week: int = 0,
              excluded_participants: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Read and validate the long lesion table (see :func:`validate_long`)."""
    return validate_long(_read_tsv(path, LONG_COLUMNS), participants, str(path), baseline_week,
                         excluded_participants)


def read_outcomes(path: str | Path, participants: pd.DataFrame) -> pd.DataFrame:
    """Read and validate outcomes.tsv (see :func:`validate_outcomes`)."""
    return validate_outcomes(_read_tsv(path, OUTCOME_COLUMNS), participants, str(path))



# ----------------------------------------------------------------- long table

VOLUME_COLUMNS = ("participant_id", "session", "week", "tlv_ml", "tlc")
VISITS_COLUMNS = ("participant_id", "session", "week", "has_gt", "excluded")


def _read_volume(path: Path, src: str, problems: list[str]) -> dict | None:
    """One per-visit volume TSV (exactly one row of :data:`VOLUME_COLUMNS`)."""
    if not path.is_file():
        problems.append(f"{path}: file not found (volumes of source {src!r})")
        return None
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises many types for malformed text
        problems.append(f"{path}: cannot be parsed as a tab-separated table ({type(exc).__name__})")
        return None
    missing = [c for c in VOLUME_COLUMNS if c not in df.columns]
    if missing:
        problems.append(f"{path}: missing column(s) {', '.join(missing)}")
        return None
    if len(df) != 1:
        problems.append(f"{path}: {len(df)} rows; a per-visit volume table has exactly one row")
        return None
    r = df.iloc[0]
    return {"participant_id": str(r["participant_id"]).strip(), "session": str(r["session"]).strip(),
            "week": r["week"], "source": src, "tlv_ml": r["tlv_ml"], "tlc": r["tlc"], "file": str(path)}


def read_visit_list(path: str | Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """The validated visit list (:func:`t2lesion.bids.write_summary`) as ``(visits, no_mri)``.

    ``visits``: one row per visit (participant_id, session, week, has_gt, excluded,
    source_session). ``no_mri``: participant_id -> reason (``no MRI``) of the rows that
    stand for a participant without any MRI rather than a visit: session ``n/a`` (or
    empty), week ``n/a``, the reason in ``excluded``.
    """
    df = _read_tsv(path, VISITS_COLUMNS)
    problems: list[str] = []
    no_visit = df["session"].map(is_missing).to_numpy()
    reason = df["excluded"].map(lambda v: "" if is_missing(v) or str(v).strip() in ("False", "false")
                                else str(v).strip())
    _collect(problems, no_visit & (reason == "").to_numpy(),
             lambda i: f"{_where(str(path), i)}: a row without a session stands for a participant without MRI "
                       f"and needs its reason in 'excluded'")
    weeks = pd.to_numeric(df["week"], errors="coerce")
    _collect(problems, ~no_visit & ~np.isfinite(weeks.to_numpy(float)),
             lambda i: f"{_where(str(path), i)}: week {df['week'][i]!r} is not a number")
    gt = _strip(df["has_gt"]).str.lower()
    _collect(problems, ~gt.isin(["true", "false", "1", "0"]),
             lambda i: f"{_where(str(path), i)}: has_gt {df['has_gt'][i]!r} must be True or False")
    _raise(problems, str(path))
    no_mri = dict(zip(_strip(df["participant_id"])[no_visit], reason[no_visit]))
    keep = ~no_visit
    out = df[keep].copy()
    out["participant_id"], out["session"] = _strip(out["participant_id"]), _strip(out["session"])
    out["week"] = weeks[keep].astype(int)
    out["has_gt"] = gt[keep].isin(["true", "1"])
    out["excluded"] = reason[keep]
    if "source_session" not in out.columns:
        out["source_session"] = out["session"]
    return out.reset_index(drop=True), no_mri


def read_visits(path: str | Path) -> pd.DataFrame:
    """The visits of the validated visit list (participant_id, session, week, has_gt,
    excluded[, source_session]); the rows of participants without MRI are left out
    (:func:`read_visit_list` returns them)."""
    return read_visit_list(path)[0]


def long_table_from_volumes(
    rows: pd.DataFrame, sources: Sequence[str], visits: pd.DataFrame | None = None, baseline_week: int = 0,
    no_mri: Mapping[str, str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long table and its exclusions from per-visit volume rows of every source.

    ``rows``: participant_id, session, week, source, tlv_ml, tlc, file (one row per
    source × visit, from the per-visit volume TSVs). ``sources`` in output order
    (``gt`` first when present). Returns ``(long, exclusions)``; exclusions has
    participant_id, source, analysis ("tlv_long"), scope ("" = the whole
    participant, or "week <w>"), reason. Rules (issue 10/11):

    * with ``visits`` (the validated visit list): a visit the user excluded is
      dropped from every source with the user's reason (a baseline visit excluded
      drops the participant); a visit without GT is a ``gt`` gap (recorded when
      ``gt`` is one of the sources); a subject without GT at baseline has no ``gt``
      rows ("no GT at baseline"), which is not an error. A prediction source
      without a row for a non-excluded visit, a ``gt`` source without a row for a
      visit that has GT, and a row for a visit not in the list are errors naming
      the participant and visit.
    * ``no_mri`` (participant -> reason, from :func:`read_visit_list`): participants of
      participants.tsv without any MRI, excluded from every source with that reason
      (whole participant, so every analysis lists them); a volume of theirs is an error.
    * without ``visits``: a prediction source must cover every participant that
      any source covers and each participant × source needs its baseline row; a
      participant without a ``gt`` baseline row loses its ``gt`` rows (counted).
    """
    problems: list[str] = []
    excl = Exclusions("tlv_long")
    d = rows.reset_index(drop=True).copy()
    weeks = pd.to_numeric(d["week"], errors="coerce").to_numpy(float)
    tlv = pd.to_numeric(d["tlv_ml"], errors="coerce").to_numpy(float)
    tlc = pd.to_numeric(d["tlc"], errors="coerce").to_numpy(float)
    f = d["file"].to_numpy()
    with np.errstate(invalid="ignore"):
        _collect(problems, ~d["participant_id"].str.match(SUB_RE.pattern),
                 lambda i: f"{f[i]}: participant_id {d['participant_id'][i]!r} is not 'sub-<label>'")
        _collect(problems, ~(np.isfinite(weeks) & (weeks >= 0) & (weeks == np.round(weeks))),
                 lambda i: f"{f[i]}: week {d['week'][i]!r} is not a whole number >= 0")
        _collect(problems, ~(np.isfinite(tlv) & (tlv >= 0)),
                 lambda i: f"{f[i]}: tlv_ml {d['tlv_ml'][i]!r} is not a number >= 0")
        _collect(problems, ~(np.isfinite(tlc) & (tlc >= 0) & (tlc == np.round(tlc))),
                 lambda i: f"{f[i]}: tlc {d['tlc'][i]!r} is not a whole number >= 0")
    _raise(problems, "long table")
    d["week"], d["tlv_ml"], d["tlc"] = weeks.astype(int), tlv, tlc.astype(int)
    first: dict[tuple, str] = {}
    for r in d.itertuples():
        key = (r.source, r.participant_id, r.week)
        if key in first:
            problems.append(f"{r.file}: duplicate volume for {r.participant_id} week {r.week} source "
                            f"{r.source!r} (also in {first[key]})")
        else:
            first[key] = r.file
    _raise(problems, "long table")
    preds = [s for s in sources if s != GT_SOURCE]
    drop = np.zeros(len(d), bool)
    if visits is not None:
        vkey = {(r.participant_id, r.week): r for r in visits.itertuples()}
        for r in d.itertuples():
            if (r.participant_id, r.week) not in vkey and r.participant_id not in (no_mri or {}):
                problems.append(f"{r.file}: {r.participant_id} week {r.week} is not a visit of the validated "
                                f"visit list")
        no_gt_at_bl = {v.participant_id for v in visits.itertuples() if v.week == baseline_week and not v.has_gt}
        bl_excluded = {}
        for v in visits.itertuples():
            if v.excluded and v.week == baseline_week:
                bl_excluded[v.participant_id] = f"baseline visit {v.source_session} excluded by the user: {v.excluded}"
        for v in visits.itertuples():
            here = d["participant_id"].eq(v.participant_id) & d["week"].eq(v.week)
            if v.participant_id in bl_excluded:
                drop |= d["participant_id"].eq(v.participant_id).to_numpy()
                continue
            if v.excluded:
                drop |= here.to_numpy()
                for src in sources:
                    excl.add(v.participant_id, src, f"visit {v.source_session} excluded by the user: {v.excluded}",
                             f"week {v.week}")
                continue
            have = set(d.loc[here, "source"])
            for src in preds:
                if src not in have:
                    problems.append(f"long table: no {src!r} volume for {v.participant_id} {v.session} "
                                    f"(week {v.week}), a visit of the validated visit list")
            if GT_SOURCE in sources:
                if v.has_gt and GT_SOURCE not in have:
                    problems.append(f"long table: no 'gt' volume for {v.participant_id} {v.session} "
                                    f"(week {v.week}), which has a GT mask")
                elif not v.has_gt and v.week != baseline_week and v.participant_id not in no_gt_at_bl:
                    drop |= (here & d["source"].eq(GT_SOURCE)).to_numpy()
                    excl.add(v.participant_id, GT_SOURCE, f"no GT mask for visit {v.source_session}",
                             f"week {v.week}")
        for pid, reason in bl_excluded.items():
            for src in sources:
                excl.add(pid, src, reason)
        no_gt_bl = sorted(no_gt_at_bl - set(bl_excluded))
        if GT_SOURCE in sources and no_gt_bl:
            drop |= (d["participant_id"].isin(no_gt_bl) & d["source"].eq(GT_SOURCE)).to_numpy()
            excl.add(no_gt_bl, GT_SOURCE, "no GT at baseline")
        for pid in sorted(set(no_mri or ()) & set(visits["participant_id"])):
            problems.append(f"visit list: {pid} has visits and a row saying it has no MRI ({no_mri[pid]})")
        missing_bl = sorted(set(visits["participant_id"]) - set(
            visits.loc[visits["week"] == baseline_week, "participant_id"]))
        for pid in missing_bl:
            problems.append(f"visit list: {pid} has no baseline visit (week {baseline_week})")
    by_reason: dict[str, list[str]] = {}
    for pid, reason in sorted((no_mri or {}).items()):
        for r in d[d["participant_id"] == pid].itertuples():
            problems.append(f"{r.file}: volume of {pid}, whom the visit list names as without MRI ({reason})")
        by_reason.setdefault(reason, []).append(pid)
    for reason, pids in by_reason.items():
        for src in sources:
            excl.add(pids, src, reason)
    d = d[~drop]
    present = set(d["participant_id"])
    for src in preds:
        have = set(d.loc[d["source"] == src, "participant_id"])
        for pid in sorted(present - have)[:MAX_PROBLEMS]:
            problems.append(f"long table: prediction source {src!r} has no volumes for {pid}")
    bl = set(map(tuple, d.loc[d["week"] == baseline_week, ["participant_id", "source"]].to_numpy()))
    no_bl = sorted(set(map(tuple, d[["participant_id", "source"]].to_numpy())) - bl)
    for pid, src in no_bl:
        if src == GT_SOURCE and visits is None:
            continue
        problems.append(f"long table: {pid} has no baseline (week {baseline_week}) volume for source {src!r}")
    _raise(problems, "long table")
    gt_no_bl = sorted(pid for pid, src in no_bl if src == GT_SOURCE)
    if gt_no_bl:
        d = d[~(d["participant_id"].isin(gt_no_bl) & d["source"].eq(GT_SOURCE))]
        excl.add(gt_no_bl, GT_SOURCE, "no GT at baseline")
    order = {s: i for i, s in enumerate(sources)}
    d = d.sort_values(["source", "participant_id", "week"], key=lambda c: c.map(order) if c.name == "source"
                      else c, kind="stable").reset_index(drop=True)
    return d[list(LONG_COLUMNS)], excl.frame()


def run_long_table(
    volumes: Mapping[str, Sequence[str | Path]],
    out_tsv: str | Path,
    visits_tsv: str | Path | None = None,
    exclusions_tsv: str | Path | None = None,
    baseline_week: int = 0,
) -> pd.DataFrame:
    """Long table of TLV/TLC per participant × visit × source, from per-visit volume TSVs.

    ``volumes``: source name → the per-visit TSVs of that source (each exactly one
    row: participant_id, session, week, tlv_ml, tlc). ``gt`` is a source like any
    other and may be absent or cover only some visits. ``visits_tsv``: the
    validated visit list (see :func:`long_table_from_volumes` for what it decides).
    Writes the long table (participant_id, session, week, source, tlv_ml, tlc; ``gt``
    first) and, when ``exclusions_tsv`` is given, the long-table exclusions
    (participant_id, source, analysis, scope, reason). Nothing is written when
    an input is bad (InputError naming every bad file/row).
    """
    if not volumes:
        raise InputError("long table: no lesion sources given (config 'sources')")
    problems: list[str] = []
    recs = []
    for src, paths in volumes.items():
        if not SOURCE_RE.match(str(src)):
            problems.append(f"source name {src!r} must be letters, digits, '_', '.', '-'")
            continue
        for p in ([paths] if isinstance(paths, (str, Path)) else paths):
            r = _read_volume(Path(p), str(src), problems)
            if r is not None:
                recs.append(r)
    _raise(problems, "long table")
    rows = pd.DataFrame(recs, columns=["participant_id", "session", "week", "source", "tlv_ml", "tlc", "file"])
    srcs = list(volumes)
    srcs = ([GT_SOURCE] if GT_SOURCE in srcs else []) + [s for s in srcs if s != GT_SOURCE]
    visits, no_mri = read_visit_list(visits_tsv) if visits_tsv is not None else (None, None)
    out, excl = long_table_from_volumes(rows, srcs, visits, baseline_week, no_mri)
    _write_tsv(out, out_tsv)
    if exclusions_tsv is not None:
        write_exclusions(excl, exclusions_tsv)
    log.info("long table: %d rows, sources %s, %d exclusion row(s)", len(out), srcs, len(excl))
    return out


def read_exclusions(path: str | Path | None) -> pd.DataFrame | None:
    """An exclusions table written by :func:`write_exclusions` (None passes through)."""
    if path is None:
        return None
    df = _read_tsv(path, EXCLUSION_COLUMNS)
    return df


def _load(long_tsv, participants_tsv, outcomes_tsv=None, arms=None, baseline_week=0, long_exclusions_tsv=None):
    """participants, long, outcomes and the long-table exclusions carried into this analysis.

    The carried exclusions are :func:`coverage_exclusions` (participant × source pairs
    absent from the long table, with the long-table stage's reason) plus the
    visit-level rows of the long-table exclusions (scope ``week <w>``).
    """
    participants = read_participants(participants_tsv, arms)
    lex = read_exclusions(long_exclusions_tsv)
    whole = {} if lex is None else {r.participant_id: r.reason for r in lex.itertuples() if not str(r.scope)}
    long = read_long(long_tsv, participants, baseline_week, whole)
    outcomes = read_outcomes(outcomes_tsv, participants) if outcomes_tsv is not None else None
    srcs = list(dict.fromkeys(long["source"]))
    if lex is not None:
        srcs += [s for s in dict.fromkeys(lex["source"]) if s not in srcs]
    carried = coverage_exclusions(long, participants, srcs, lex)
    if lex is not None:
        visit_rows = lex[lex["scope"].astype(str) != ""][["participant_id", "source", "scope", "reason"]]
        carried = pd.concat([carried, visit_rows], ignore_index=True)
    return participants, long, outcomes, carried
