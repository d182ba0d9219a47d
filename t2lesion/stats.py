"""Endpoint statistics on lesion volumes (SPEC §9; paper Fig. 3d–g, Fig. 4, Table 4).

Every analysis runs once per lesion *source*: ``gt`` (volumes from the ground-truth
masks) and each prediction source (``baseline`` classical segmenter, ``unet``, …),
and the outputs put the sources side by side (a ``source`` column in the tidy
tables; one column block per source in the wide "Table 4" layout).

Inputs (CONTRACT.md)
    long table   participant_id, session, week, source, tlv_ml, tlc   (one row per
                 participant × visit × source; the baseline visit must be present)
    participants participant_id, arm, age, sex (M/F), region, edss_bl
    outcomes     participant_id, endpoint, time_weeks (>= 0), event (0/1)

The long table is built by :func:`run_long_table` from each prediction source's
per-visit metrics table (``t2lesion.metrics`` visits.tsv): source rows from
pred_tlv_ml/pred_tlc, ``gt`` rows from gt_tlv_ml/gt_tlc (identical across sources).

Analyses, with the interpretations this module makes (SPEC: "defaults, keep them
configurable"); the config key that controls each is given as ``stats.<key>``:

* Change from baseline (paper "Longitudinal changes", Fig. 3d–g): absolute change
  ``tlv_w - tlv_bl`` (mL) and percent change ``100 (tlv_w - tlv_bl) / tlv_bl``.
  Participants with baseline TLV 0 have no percent change: excluded from the
  percent-change analyses and counted (``n_excluded_bl0``). Per source × arm ×
  week: mean with a t-based confidence interval (``stats.conf_level``, 0.95), n.
  *Separation* between arms = mean percent change of the control arm minus that
  of the other arm (positive when the control arm grows more, as the paper
  reports it), with a Welch confidence interval and p.
* ANCOVA (paper Methods; "analysis of covariance of baseline T2 TLV with
  geographical region and age as covariates"), per follow-up week, ordinary least
  squares via statsmodels: ``pct_change ~ arm + baseline_tlv_ml + region_US +
  age_gt45``. Codings: arm treatment-coded against the control arm
  (``stats.control_arm``); baseline TLV in mL, uncentred; region_US = 1 if
  region == "US" (``stats.us_label``), reference rest of world; age_gt45 = 1 if age
  > 45 years (``stats.age_cutoff_years``), reference ≤ 45. Arm effect with SE,
  CI, t, p, and a Type II F table (nested-model F tests, identical to
  statsmodels ``anova_lm(typ=2)`` for this main-effects model).
* Cox PH (paper Methods and Table 4), lifelines ``CoxPHFitter`` (Efron ties),
  fitted to full convergence (``stats.cox_fit_options``; lifelines' defaults stop
  at a relative log-likelihood change of 1e-9, which leaves coefficients
  accurate to ~4 digits only). Per endpoint (``stats.endpoints``): univariable
  ``log_tlv`` = log(baseline TLV mL + ``stats.log_tlv_offset_ml`` (0.01 mL)),
  univariable ``tlc`` (baseline lesion count, per lesion), and the multivariable
  model ``arm + sex_M + region_US + edss_lt4 + age + log_tlv + arm × log_tlv``
  with sex_M = 1 if M (reference F), edss_lt4 = 1 if baseline EDSS < 4
  (``stats.edss_cutoff``; reference ≥ 4, the paper's "BL EDSS: < 4" row), age in
  years (continuous, uncentred). Nothing is centred: the arm HR in the
  multivariable model is the arm HR at log_tlv = 0 (TLV ≈ 1 mL) and the log-TLV
  HR is that of the control arm; the interaction is the ratio of the treated
  arm's log-TLV HR to the control arm's. HR = exp(coef), Wald CI and p.
* Kaplan–Meier (paper Fig. 4): participants split at the cohort-wide median
  baseline TLV of the source (median over all arms; "low" = TLV ≤ median,
  "high" = TLV > median), curves per arm × group, log-rank test (low vs high)
  within each arm, number at risk every ``stats.km_at_risk_step_weeks`` weeks. The
  paper only drew KM curves for metrics with univariable p < 0.1; here every
  endpoint in ``stats.endpoints`` gets them.

Degenerate inputs never stop the other analyses: an analysis that cannot run
(arm with no subjects, covariate with one level, no events, too few subjects)
writes a row with ``status = "skipped"`` and a ``note`` saying why; fits that
finish with a lifelines convergence warning get ``status = "warning"``. Bad input
(missing columns, unknown participants, negative times, …) raises
:class:`t2lesion.errors.InputError` naming the file and row.
"""

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

from t2lesion.cohort import ENDPOINTS, log_tlv
from t2lesion.errors import InputError
from t2lesion.io import write_tsv

log = logging.getLogger(__name__)

LONG_COLUMNS = ("participant_id", "session", "week", "source", "tlv_ml", "tlc")
PARTICIPANT_COLUMNS = ("participant_id", "arm", "age", "sex", "region", "edss_bl")
OUTCOME_COLUMNS = ("participant_id", "endpoint", "time_weeks", "event")
SUB_RE = re.compile(r"^sub-[A-Za-z0-9]+$")
SOURCE_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
GT_SOURCE = "gt"

#: Cox convergence (``stats.cox_fit_options``): Newton–Raphson until the step norm or
#: the Newton decrement is < 1e-14, no relative log-likelihood stop. lifelines'
#: defaults (precision 1e-7, r_precision 1e-9) leave coefficients off by ~1e-5
#: relative, and even precision 1e-10 stops ~1e-6 off (the decrement criterion is
#: quadratic in the step); these options reproduce statsmodels PHReg to ~1e-12.
DEFAULT_COX_FIT_OPTIONS: dict = {"precision": 1e-14, "r_precision": 0.0, "max_steps": 500}

OK, SKIPPED, WARNING, FAILED = "ok", "skipped", "warning", "failed"


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


def resolve_arms(participants: pd.DataFrame, control_arm: str, arms: Sequence[str] | None = None) -> list[str]:
    """Arms in analysis order, control first.

    With ``arms`` (config ``stats.arms``) the list is taken as given (an arm with no
    participants stays in, so that its analyses are reported as skipped); without,
    the control arm followed by the other arms found in participants, sorted.
    """
    if arms is not None:
        arms = [str(a) for a in arms]
        if control_arm not in arms:
            raise InputError(f"config: control arm {control_arm!r} is not one of the arms {arms}")
        return [control_arm] + [a for a in arms if a != control_arm]
    others = sorted(set(participants["arm"]) - {control_arm})
    return [control_arm] + others


def resolve_sources(long: pd.DataFrame, sources: Sequence[str] | None = None) -> list[str]:
    """Sources in output order: ``gt`` first, then the others in order of appearance.

    ``sources`` (config ``stats.sources``) restricts and orders them; a listed source
    absent from the long table is an InputError.
    """
    present = list(dict.fromkeys(long["source"]))
    if sources is not None:
        missing = [s for s in sources if s not in present]
        if missing:
            raise InputError(f"long table: configured source(s) {missing} not present (has: {present})")
        return list(sources)
    return ([GT_SOURCE] if GT_SOURCE in present else []) + [s for s in present if s != GT_SOURCE]


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


# --------------------------------------------------------------------- ANCOVA

ANCOVA_CODINGS = {
    "baseline_tlv_ml": "baseline TLV in mL (uncentred)",
    "region_US": "region: {us} = 1 vs rest of world = 0 (reference ROW)",
    "age_gt45": "age group: > {c:g} years = 1 vs <= {c:g} years = 0 (reference <= {c:g})",
    "Intercept": "control arm, baseline TLV 0, ROW, age <= {c:g}",
}


def _ancova_design(
    d: pd.DataFrame, arms: list[str], age_cutoff_years: float, us_label: str
) -> tuple[np.ndarray, pd.DataFrame, dict[str, list[str]]]:
    """Response, design matrix (with intercept) and term → columns for the ANCOVA."""
    X = pd.DataFrame({"Intercept": np.ones(len(d))}, index=d.index)
    for arm in arms[1:]:
        X[f"arm_{arm}"] = (d["arm"].to_numpy() == arm).astype(float)
    X["baseline_tlv_ml"] = d["tlv_bl_ml"].to_numpy(float)
    X["region_US"] = (d["region"].to_numpy() == us_label).astype(float)
    X["age_gt45"] = (d["age"].to_numpy(float) > age_cutoff_years).astype(float)
    terms = {"arm": [f"arm_{a}" for a in arms[1:]], "baseline_tlv_ml": ["baseline_tlv_ml"],
             "region_US": ["region_US"], "age_gt45": ["age_gt45"]}
    return d["pct_change"].to_numpy(float), X, terms


def _ancova_skip_reason(d: pd.DataFrame, X: pd.DataFrame, arms: list[str], min_n_per_arm: int, us_label: str,
                        age_cutoff_years: float) -> str | None:
    counts = d["arm"].value_counts()
    for arm in arms:
        k = int(counts.get(arm, 0))
        if k == 0:
            return f"arm {arm} has no subjects with a percent change"
        if k < min_n_per_arm:
            return f"arm {arm} has {k} subject(s) with a percent change (< stats.min_n_per_arm={min_n_per_arm})"
    if X["baseline_tlv_ml"].nunique() < 2:
        return "covariate baseline_tlv_ml has one value"
    if X["region_US"].nunique() < 2:
        lvl = f"all {us_label}" if X["region_US"].iloc[0] else f"none {us_label} (all rest of world)"
        return f"covariate region has one level ({lvl})"
    if X["age_gt45"].nunique() < 2:
        lvl = f"all > {age_cutoff_years:g}" if X["age_gt45"].iloc[0] else f"all <= {age_cutoff_years:g}"
        return f"covariate age group has one level ({lvl})"
    if len(X) <= X.shape[1]:
        return f"too few subjects: n={len(X)} for {X.shape[1]} model parameters"
    return None


def type2_anova_table(y: np.ndarray, X: pd.DataFrame, terms: Mapping[str, list[str]]) -> pd.DataFrame:
    """Type II F table of an OLS model without interactions (statsmodels OLS fits).

    For a main-effects model Type II equals dropping each term (all its columns)
    from the full model: sum_sq = RSS(reduced) − RSS(full), F = (sum_sq/df) /
    (RSS(full)/df_resid). Same numbers as ``statsmodels.stats.anova.anova_lm(typ=2)``
    on the equivalent formula model (checked in the tests), without formula parsing.
    Columns sum_sq, df, F, PR(>F); last row "Residual".
    """
    import statsmodels.api as sm

    full = sm.OLS(y, X.to_numpy()).fit()
    rss, dfr = float(full.ssr), float(full.df_resid)
    rows = {}
    for term, cols in terms.items():
        red = sm.OLS(y, X.drop(columns=list(cols)).to_numpy()).fit()
        ss, k = float(red.ssr) - rss, float(len(cols))
        F = (ss / k) / (rss / dfr)
        rows[term] = {"sum_sq": ss, "df": k, "F": F, "PR(>F)": float(sps.f.sf(F, k, dfr))}
    rows["Residual"] = {"sum_sq": rss, "df": dfr, "F": np.nan, "PR(>F)": np.nan}
    return pd.DataFrame.from_dict(rows, orient="index")


def ancova(
    change: pd.DataFrame,
    participants: pd.DataFrame,
    control_arm: str,
    arms: Sequence[str] | None = None,
    weeks: Sequence[int] | None = None,
    baseline_week: int = 0,
    age_cutoff_years: float = 45.0,
    us_label: str = "US",
    conf_level: float = 0.95,
    min_n_per_arm: int = 2,
    sources: Sequence[str] | None = None,
    type2_anova: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ANCOVA of percent TLV change per source × follow-up week (paper Methods/Results).

    ``pct_change ~ arm + baseline_tlv_ml + region_US + age_gt45`` by OLS
    (``statsmodels.api.OLS`` on an explicit design matrix); codings in the module
    docstring and in the ``coding`` column. ``weeks`` (``stats.ancova_weeks``)
    defaults to every follow-up week present. Participants with baseline TLV 0
    are excluded and counted (``n_excluded_bl0``).

    Returns ``(coefficients, anova)``: coefficients has one row per term (term_type
    "arm" rows are the treatment effects: estimate = adjusted difference treated −
    control in percentage points) with estimate, se, ci_low, ci_high (t-based,
    ``conf_level``), t, p, n, df_resid; anova is the Type II F table
    (:func:`type2_anova_table`: sum_sq, df, F, p per term and the residual; left
    empty when ``type2_anova`` is False, which only saves time in simulations).
    Skipped source × week combinations get one row with status "skipped" and the
    reason in ``note``.
    """
    import statsmodels.api as sm

    arms = resolve_arms(participants, control_arm, arms)
    sources = resolve_sources(change, sources)
    d_all = change.merge(participants[["participant_id", "arm", "region", "age"]], on="participant_id", how="left")
    coef_rows, anova_rows = [], []
    codings = {k: v.format(c=age_cutoff_years, us=us_label) for k, v in ANCOVA_CODINGS.items()}
    labels = {"Intercept": "Intercept", "baseline_tlv_ml": "Baseline TLV (mL)",
              "region_US": f"Region: {us_label} vs rest of world",
              "age_gt45": f"Age > {age_cutoff_years:g} vs <= {age_cutoff_years:g}"}
    for arm in arms[1:]:
        labels[f"arm_{arm}"] = f"Arm: {arm} vs {control_arm}"
        codings[f"arm_{arm}"] = f"arm: {arm} = 1 vs control {control_arm} = 0 (reference {control_arm})"
    for src in sources:
        ds = d_all[d_all["source"] == src]
        wk = sorted(ds["week"].unique()) if weeks is None else list(weeks)
        wk = [w for w in wk if w != baseline_week]
        for w in wk:
            dw = ds[ds["week"] == w]
            n_bl0 = int(dw["excluded_bl0"].sum())
            dw = dw[dw["pct_change"].notna() & dw["arm"].isin(arms)]
            base = {"source": src, "week": int(w), "n": len(dw), "n_excluded_bl0": n_bl0}
            y, X, terms = _ancova_design(dw, arms, age_cutoff_years, us_label)
            reason = (f"no visits at week {w}" if len(dw) == 0 else
                      _ancova_skip_reason(dw, X, arms, min_n_per_arm, us_label, age_cutoff_years))
            if reason:
                log.warning("ANCOVA skipped for source %s, week %s: %s", src, w, reason)
                coef_rows.append({**base, "term": "", "status": SKIPPED, "note": reason})
                anova_rows.append({**base, "term": "", "status": SKIPPED, "note": reason})
                continue
            fit = sm.OLS(y, X).fit()
            ci = fit.conf_int(alpha=1 - conf_level)
            note = f"{n_bl0} with baseline TLV 0 excluded" if n_bl0 else ""
            for name in X.columns:
                ttype = "arm" if name.startswith("arm_") else ("intercept" if name == "Intercept" else "covariate")
                coef_rows.append({
                    **base, "term": name, "term_type": ttype, "label": labels[name], "coding": codings[name],
                    "estimate": float(fit.params[name]), "se": float(fit.bse[name]),
                    "ci_low": float(ci.loc[name, 0]), "ci_high": float(ci.loc[name, 1]),
                    "t": float(fit.tvalues[name]), "p": float(fit.pvalues[name]),
                    "df_resid": float(fit.df_resid), "status": OK, "note": note,
                })
            if type2_anova:
                for name, r in type2_anova_table(y, X, terms).iterrows():
                    anova_rows.append({
                        **base, "term": name, "sum_sq": r["sum_sq"], "df": r["df"], "F": r["F"],
                        "p": r["PR(>F)"], "status": OK, "note": "Type II sums of squares",
                    })
    coef_cols = ["source", "week", "term", "term_type", "label", "coding", "estimate", "se", "ci_low", "ci_high",
                 "t", "p", "n", "n_excluded_bl0", "df_resid", "status", "note"]
    anova_cols = ["source", "week", "term", "sum_sq", "df", "F", "p", "n", "n_excluded_bl0", "status", "note"]
    return (pd.DataFrame(coef_rows).reindex(columns=coef_cols),
            pd.DataFrame(anova_rows).reindex(columns=anova_cols))


# ------------------------------------------------------------------------- Cox

COX_MODELS = ("univariable_log_tlv", "univariable_tlc", "multivariable")


def baseline_lesions(long: pd.DataFrame, baseline_week: int = 0, log_tlv_offset_ml: float = 0.01) -> pd.DataFrame:
    """Baseline TLV/TLC per source × participant: source, participant_id, tlv_bl_ml, tlc_bl, log_tlv."""
    bl = long.loc[long["week"] == baseline_week, ["source", "participant_id", "tlv_ml", "tlc"]]
    bl = bl.rename(columns={"tlv_ml": "tlv_bl_ml", "tlc": "tlc_bl"}).reset_index(drop=True)
    bl["log_tlv"] = log_tlv(bl["tlv_bl_ml"], log_tlv_offset_ml)
    return bl


def cox_design(
    d: pd.DataFrame, model: str, arms: list[str], edss_cutoff: float = 4.0, us_label: str = "US",
    log_tlv_offset_ml: float = 0.01,
) -> tuple[pd.DataFrame, dict[str, tuple[str, str]]]:
    """Covariate matrix of one Cox model and ``{term: (label, coding)}``.

    ``d`` holds participants' columns plus log_tlv and tlc_bl. Term names match
    :func:`t2lesion.cohort.true_coefficients`.
    """
    control = arms[0]
    X = pd.DataFrame(index=d.index)
    info: dict[str, tuple[str, str]] = {}
    lt_coding = f"log(baseline TLV mL + {log_tlv_offset_ml:g}), per unit (HR per e-fold TLV)"
    if model == "univariable_log_tlv":
        X["log_tlv"] = d["log_tlv"].astype(float)
        info["log_tlv"] = ("BL T2 TLV (log)", lt_coding)
    elif model == "univariable_tlc":
        X["tlc"] = d["tlc_bl"].astype(float)
        info["tlc"] = ("BL T2 TLC", "baseline lesion count, per lesion")
    elif model == "multivariable":
        for arm in arms[1:]:
            X[f"arm_{arm}"] = (d["arm"] == arm).astype(float)
            info[f"arm_{arm}"] = (f"Arm: {arm}", f"arm {arm} = 1 vs control {control} = 0 (reference {control})")
        X["sex_M"] = (d["sex"] == "M").astype(float)
        info["sex_M"] = ("Sex: M", "M = 1 vs F = 0 (reference F)")
        X["region_US"] = (d["region"] == us_label).astype(float)
        info["region_US"] = (f"Region: {us_label}", f"{us_label} = 1 vs rest of world = 0 (reference ROW)")
        X["edss_lt4"] = (d["edss_bl"].astype(float) < edss_cutoff).astype(float)
        info["edss_lt4"] = (f"BL EDSS: < {edss_cutoff:g}",
                            f"EDSS < {edss_cutoff:g} = 1 vs >= {edss_cutoff:g} = 0 (reference >= {edss_cutoff:g})")
        X["age"] = d["age"].astype(float)
        info["age"] = ("Age", "years, per year (uncentred)")
        X["log_tlv"] = d["log_tlv"].astype(float)
        info["log_tlv"] = ("BL T2 TLV (log)", lt_coding + "; HR in the control arm")
        for arm in arms[1:]:
            X[f"arm_{arm}_x_log_tlv"] = X[f"arm_{arm}"] * X["log_tlv"]
            info[f"arm_{arm}_x_log_tlv"] = (f"Arm {arm}: BL T2 TLV",
                                            f"interaction arm {arm} × log TLV (uncentred): ratio of log-TLV HRs")
    else:
        raise ValueError(f"unknown Cox model {model!r}")
    return X, info


def _one_level(X: pd.DataFrame, info: dict, arms: list[str]) -> str | None:
    for col in X.columns:
        if "_x_" in col:
            continue
        vals = X[col].unique()
        if len(vals) < 2:
            if col.startswith("arm_"):
                arm = col[4:]
                return (f"arm {arm} has no subjects" if vals[0] == 0 else
                        f"control arm {arms[0]} has no subjects")
            return f"covariate {col} has one level ({vals[0]:g} for all)"
    return None


def fit_cox(
    X: pd.DataFrame, time: np.ndarray, event: np.ndarray, fit_options: Mapping | None = None
) -> tuple[pd.DataFrame, str, str]:
    """Fit lifelines CoxPHFitter (Efron ties) tightly; return (summary, status, note).

    summary has index = term and columns coef, se, z, p (Wald), log_likelihood. ``status``
    is "ok", or "warning" with lifelines' convergence warning text in ``note``.
    """
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceWarning

    opts = dict(DEFAULT_COX_FIT_OPTIONS)
    opts.update(fit_options or {})
    df = X.copy()
    df["__time"] = np.asarray(time, float)
    df["__event"] = np.asarray(event, int)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cph = CoxPHFitter().fit(df, duration_col="__time", event_col="__event", fit_options=opts)
    msgs = [str(w.message).strip().splitlines()[0] for w in caught if issubclass(w.category, ConvergenceWarning)]
    coef, se = cph.params_.astype(float), cph.standard_errors_.astype(float)
    z = coef / se
    # Wald test as in lifelines' summary (chi2(1) of z^2 == two-sided normal)
    out = pd.DataFrame({"coef": coef, "se": se, "z": z, "p": 2 * sps.norm.sf(np.abs(z))})
    out["log_likelihood"] = float(cph.log_likelihood_)
    return out, (WARNING if msgs else OK), "; ".join(dict.fromkeys(msgs))


def cox_models(
    baseline: pd.DataFrame,
    participants: pd.DataFrame,
    outcomes: pd.DataFrame,
    control_arm: str,
    arms: Sequence[str] | None = None,
    endpoints: Sequence[str] = ENDPOINTS,
    edss_cutoff: float = 4.0,
    us_label: str = "US",
    conf_level: float = 0.95,
    fit_options: Mapping | None = None,
    log_tlv_offset_ml: float = 0.01,
    sources: Sequence[str] | None = None,
    models: Sequence[str] = COX_MODELS,
    min_events_per_term: float = 1.0,
) -> pd.DataFrame:
    """Cox PH models per source × endpoint (paper Table 4; SPEC §9).

    ``baseline`` from :func:`baseline_lesions`. Models: univariable log TLV,
    univariable TLC, and multivariable (arm, sex, region, EDSS < 4, age, log TLV,
    arm × log TLV), codings in the module docstring and the ``coding`` column.
    One row per term: coef (log HR), se, hr, hr_ci_low, hr_ci_high (Wald,
    ``conf_level``), z, p, n, events, status, note. A model that cannot run
    (no outcome rows, no events, a covariate with one level, an arm with no
    subjects, n <= number of terms, fewer than ``min_events_per_term`` events per
    term, lifelines convergence error) gives one row with empty term, status
    "skipped"/"failed" and the reason.
    """
    from lifelines.exceptions import ConvergenceError

    arms = resolve_arms(participants, control_arm, arms)
    sources = resolve_sources(baseline, sources)
    z = float(sps.norm.ppf(0.5 + conf_level / 2))
    rows = []
    part = participants[["participant_id", "arm", "age", "sex", "region", "edss_bl"]]
    for src in sources:
        bs = baseline[baseline["source"] == src]
        for ep in endpoints:
            oe = outcomes[outcomes["endpoint"] == ep]
            d = oe.merge(part, on="participant_id").merge(bs, on="participant_id")
            d = d[d["arm"].isin(arms)].reset_index(drop=True)
            n, events = len(d), int(d["event"].sum()) if len(d) else 0
            for model in models:
                base = {"source": src, "endpoint": ep, "model": model, "n": n, "events": events}
                if len(oe) == 0:
                    reason = f"no outcome rows for endpoint {ep}"
                elif n == 0:
                    reason = f"no participants with both {ep} outcomes and {src} lesion data"
                elif events == 0:
                    reason = f"no events for {ep} (all {n} participants censored)"
                else:
                    reason = None
                X = info = None
                if reason is None and model == "multivariable":
                    empty = [a for a in arms if not (d["arm"] == a).any()]
                    if empty:
                        reason = f"arm {empty[0]} has no subjects with {ep} outcomes and {src} lesion data"
                if reason is None:
                    X, info = cox_design(d, model, arms, edss_cutoff, us_label, log_tlv_offset_ml)
                    reason = _one_level(X, info, arms)
                    if reason is None and n <= X.shape[1]:
                        reason = f"too few subjects: n={n} for {X.shape[1]} terms"
                    elif reason is None and events < min_events_per_term * X.shape[1]:
                        reason = (f"too few events: {events} for {X.shape[1]} terms "
                                  f"(stats.min_events_per_term={min_events_per_term:g})")
                if reason:
                    log.warning("Cox %s skipped for source %s, endpoint %s: %s", model, src, ep, reason)
                    rows.append({**base, "term": "", "status": SKIPPED, "note": reason})
                    continue
                try:
                    s, status, note = fit_cox(X, d["time_weeks"].to_numpy(), d["event"].to_numpy(), fit_options)
                except (ConvergenceError, np.linalg.LinAlgError) as exc:
                    msg = str(exc).strip().splitlines()[0]
                    log.warning("Cox %s failed for source %s, endpoint %s: %s", model, src, ep, msg)
                    rows.append({**base, "term": "", "status": FAILED, "note": f"fit failed: {msg}"})
                    continue
                if not np.all(np.isfinite(s[["coef", "se"]].to_numpy())) or (s["coef"].abs() > 20).any():
                    status = WARNING
                    note = "; ".join(x for x in (note, "non-finite or |log HR| > 20: possible separation") if x)
                if status != OK:
                    log.warning("Cox %s for source %s, endpoint %s: %s", model, src, ep, note)
                with np.errstate(over="ignore", invalid="ignore"):
                    hr = np.exp(s["coef"].to_numpy(float))
                    lo = np.exp((s["coef"] - z * s["se"]).to_numpy(float))
                    hi = np.exp((s["coef"] + z * s["se"]).to_numpy(float))
                for j, (term, r) in enumerate(s.iterrows()):
                    label, coding = info[term]
                    rows.append({
                        **base, "term": term, "label": label, "coding": coding,
                        "coef": r["coef"], "se": r["se"], "hr": hr[j], "hr_ci_low": lo[j], "hr_ci_high": hi[j],
                        "z": r["z"], "p": r["p"], "log_likelihood": r["log_likelihood"],
                        "status": status, "note": note,
                    })
    cols = ["source", "endpoint", "model", "term", "label", "coding", "coef", "se", "hr", "hr_ci_low",
            "hr_ci_high", "z", "p", "n", "events", "log_likelihood", "status", "note"]
    return pd.DataFrame(rows).reindex(columns=cols)


def side_by_side(
    tidy: pd.DataFrame, keys: Sequence[str], values: Sequence[str], sources: Sequence[str] | None = None
) -> pd.DataFrame:
    """Wide layout with one column block per source (``<source>.<value>``), e.g. Table 4.

    Rows are the unique ``keys`` combinations in first-appearance order.
    """
    sources = list(dict.fromkeys(tidy["source"])) if sources is None else list(sources)
    keys = list(keys)
    t = tidy.copy()
    for k in keys:
        t[k] = t[k].fillna("")
    index = t[keys].drop_duplicates().reset_index(drop=True)
    out = index.copy()
    for src in sources:
        block = t[t["source"] == src][keys + list(values)].drop_duplicates(keys)
        block = block.rename(columns={v: f"{src}.{v}" for v in values})
        out = out.merge(block, on=keys, how="left")
    return out


def table4(cox: pd.DataFrame, sources: Sequence[str] | None = None, digits: int = 3) -> pd.DataFrame:
    """Table 4 layout: endpoint, model, term, label; per source ``<src>.hr_95ci`` ("HR (low, high)",
    ``digits`` decimals), hr, hr_ci_low, hr_ci_high, p, n, events, status, note."""
    t = cox.copy()

    def fmt(r):
        if pd.isna(r["hr"]) or not np.isfinite(r["hr"]):
            return ""
        return f"{r['hr']:.{digits}f} ({r['hr_ci_low']:.{digits}f}, {r['hr_ci_high']:.{digits}f})"

    t["hr_95ci"] = t.apply(fmt, axis=1) if len(t) else []
    return side_by_side(t, ["endpoint", "model", "term", "label"],
                        ["hr_95ci", "hr", "hr_ci_low", "hr_ci_high", "p", "n", "events", "status", "note"], sources)


# -------------------------------------------------------------------- Kaplan–Meier


def km_analysis(
    baseline: pd.DataFrame,
    participants: pd.DataFrame,
    outcomes: pd.DataFrame,
    control_arm: str,
    arms: Sequence[str] | None = None,
    endpoints: Sequence[str] = ENDPOINTS,
    at_risk_step_weeks: float = 24.0,
    sources: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Kaplan–Meier by median baseline TLV, per arm, with log-rank p (paper Fig. 4).

    The split is the median baseline TLV over the whole cohort of the source (all
    arms; "low": TLV ≤ median, "high": TLV > median), applied to each arm. Within
    each arm the low and high curves are compared by the log-rank test (lifelines
    ``logrank_test``). Returns ``(tests, curves, at_risk)``:
    tests: source, endpoint, arm, median_bl_tlv_ml, split, n_low, n_high, events_low,
    events_high, chi2, p, status, note; curves: source, endpoint, arm, group, time,
    survival, ci_low, ci_high (step function incl. time 0); at_risk: source,
    endpoint, arm, group, time, n_at_risk at 0, step, 2·step, … .
    """
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import logrank_test

    arms = resolve_arms(participants, control_arm, arms)
    sources = resolve_sources(baseline, sources)
    test_rows, curve_rows, risk_rows = [], [], []
    for src in sources:
        bs = baseline[baseline["source"] == src].merge(participants[["participant_id", "arm"]], on="participant_id")
        median = float(np.median(bs["tlv_bl_ml"])) if len(bs) else np.nan
        for ep in endpoints:
            d = outcomes[outcomes["endpoint"] == ep].merge(bs, on="participant_id")
            d["group"] = np.where(d["tlv_bl_ml"] > median, "high", "low")
            tmax = float(d["time_weeks"].max()) if len(d) else 0.0
            grid = np.arange(0.0, tmax + 1e-9, at_risk_step_weeks) if len(d) else np.array([0.0])
            for arm in arms:
                da = d[d["arm"] == arm]
                lo, hi = da[da["group"] == "low"], da[da["group"] == "high"]
                row = {"source": src, "endpoint": ep, "arm": arm, "median_bl_tlv_ml": median,
                       "split": "low: baseline TLV <= median, high: > median (median over all arms of the source)",
                       "n_low": len(lo), "n_high": len(hi), "events_low": int(lo["event"].sum()),
                       "events_high": int(hi["event"].sum()), "chi2": np.nan, "p": np.nan,
                       "status": OK, "note": ""}
                for grp, g in (("low", lo), ("high", hi)):
                    if len(g) == 0:
                        continue
                    kmf = KaplanMeierFitter().fit(g["time_weeks"], g["event"])
                    sf = kmf.survival_function_.iloc[:, 0]
                    ci = kmf.confidence_interval_survival_function_
                    for t_, s_, cl, ch in zip(sf.index, sf.to_numpy(), ci.iloc[:, 0], ci.iloc[:, 1]):
                        curve_rows.append({"source": src, "endpoint": ep, "arm": arm, "group": grp,
                                           "time": float(t_), "survival": float(s_),
                                           "ci_low": float(cl), "ci_high": float(ch)})
                    tt = g["time_weeks"].to_numpy()
                    for t_ in grid:
                        risk_rows.append({"source": src, "endpoint": ep, "arm": arm, "group": grp,
                                          "time": float(t_), "n_at_risk": int((tt >= t_).sum())})
                if not (outcomes["endpoint"] == ep).any():
                    reason = f"no outcome rows for endpoint {ep}"
                elif len(da) == 0:
                    reason = f"arm {arm} has no subjects with {ep} outcomes and {src} lesion data"
                elif len(lo) == 0 or len(hi) == 0:
                    which = "above" if len(lo) == 0 else "at or below"
                    reason = f"all {len(da)} subjects of arm {arm} are {which} the median ({median:.3g} mL)"
                elif row["events_low"] + row["events_high"] == 0:
                    reason = f"no events for {ep} in arm {arm} (all censored)"
                else:
                    reason = None
                if reason:
                    log.warning("log-rank skipped for source %s, endpoint %s, arm %s: %s", src, ep, arm, reason)
                    row.update(status=SKIPPED, note=reason)
                else:
                    r = logrank_test(lo["time_weeks"], hi["time_weeks"], lo["event"], hi["event"])
                    row.update(chi2=float(r.test_statistic), p=float(r.p_value))
                test_rows.append(row)
    curves = pd.DataFrame(curve_rows, columns=["source", "endpoint", "arm", "group", "time", "survival",
                                               "ci_low", "ci_high"])
    at_risk = pd.DataFrame(risk_rows, columns=["source", "endpoint", "arm", "group", "time", "n_at_risk"])
    return pd.DataFrame(test_rows), curves, at_risk


# ----------------------------------------------------------- path-level entry points


def _write_tsv(df: pd.DataFrame, path: str | Path) -> None:
    write_tsv(df, path, float_format="%.10g")


def _load(long_tsv, participants_tsv, outcomes_tsv=None, arms=None, baseline_week=0):
    participants = read_participants(participants_tsv, arms)
    long = read_long(long_tsv, participants, baseline_week)
    outcomes = read_outcomes(outcomes_tsv, participants) if outcomes_tsv is not None else None
    return participants, long, outcomes


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
) -> pd.DataFrame:
    """Change from baseline (SPEC §9 bullets 1–2; paper Fig. 3d–g).

    Writes the per-row change table (:func:`compute_change`), the per source × arm
    × week summary with separations (:func:`summarize_change`) and the longitudinal
    figure (one panel per source, GT first). Returns the summary.
    """
    participants, long, _ = _load(long_tsv, participants_tsv, None, arms, baseline_week)
    srcs = resolve_sources(long, sources)
    change = compute_change(long[long["source"].isin(srcs)], baseline_week)
    summary = summarize_change(change, participants, control_arm, arms, conf_level, srcs, baseline_week)
    _write_tsv(change, out_change_tsv)
    _write_tsv(summary, out_summary_tsv)
    from t2lesion.plots.stats import plot_change

    plot_change(summary, out_png, control_arm=control_arm, conf_level=conf_level)
    return summary


def run_ancova(
    long_tsv: str | Path,
    participants_tsv: str | Path,
    out_coef_tsv: str | Path,
    out_anova_tsv: str | Path,
    control_arm: str,
    arms: Sequence[str] | None = None,
    weeks: Sequence[int] | None = None,
    baseline_week: int = 0,
    age_cutoff_years: float = 45.0,
    us_label: str = "US",
    conf_level: float = 0.95,
    min_n_per_arm: int = 2,
    sources: Sequence[str] | None = None,
    out_wide_tsv: str | Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ANCOVA of percent TLV change per follow-up week (see :func:`ancova`).

    Writes the coefficient table, the Type II F table and, optionally, a wide table
    of the arm effects with one column block per source.
    """
    participants, long, _ = _load(long_tsv, participants_tsv, None, arms, baseline_week)
    srcs = resolve_sources(long, sources)
    change = compute_change(long[long["source"].isin(srcs)], baseline_week)
    coef, anova_t = ancova(change, participants, control_arm, arms, weeks, baseline_week, age_cutoff_years,
                           us_label, conf_level, min_n_per_arm, srcs)
    _write_tsv(coef, out_coef_tsv)
    _write_tsv(anova_t, out_anova_tsv)
    if out_wide_tsv is not None:
        arm_rows = coef[(coef["term_type"] == "arm") | (coef["status"] != OK)]
        _write_tsv(side_by_side(arm_rows, ["week", "term", "label"],
                                ["estimate", "ci_low", "ci_high", "p", "n", "status", "note"], srcs), out_wide_tsv)
    return coef, anova_t


def run_cox(
    long_tsv: str | Path,
    participants_tsv: str | Path,
    outcomes_tsv: str | Path,
    out_tsv: str | Path,
    out_table4_tsv: str | Path,
    control_arm: str,
    arms: Sequence[str] | None = None,
    endpoints: Sequence[str] = ENDPOINTS,
    baseline_week: int = 0,
    log_tlv_offset_ml: float = 0.01,
    edss_cutoff: float = 4.0,
    us_label: str = "US",
    conf_level: float = 0.95,
    fit_options: Mapping | None = None,
    sources: Sequence[str] | None = None,
    min_events_per_term: float = 1.0,
) -> pd.DataFrame:
    """Cox PH models (see :func:`cox_models`): tidy table and Table 4 wide layout."""
    participants, long, outcomes = _load(long_tsv, participants_tsv, outcomes_tsv, arms, baseline_week)
    srcs = resolve_sources(long, sources)
    bl = baseline_lesions(long, baseline_week, log_tlv_offset_ml)
    cox = cox_models(bl, participants, outcomes, control_arm, arms, endpoints, edss_cutoff, us_label, conf_level,
                     fit_options, log_tlv_offset_ml, srcs, min_events_per_term=min_events_per_term)
    _write_tsv(cox, out_tsv)
    _write_tsv(table4(cox, srcs), out_table4_tsv)
    return cox


def run_km(
    long_tsv: str | Path,
    participants_tsv: str | Path,
    outcomes_tsv: str | Path,
    out_tests_tsv: str | Path,
    out_curves_tsv: str | Path,
    out_png_template: str,
    control_arm: str,
    arms: Sequence[str] | None = None,
    endpoints: Sequence[str] = ENDPOINTS,
    baseline_week: int = 0,
    at_risk_step_weeks: float = 24.0,
    sources: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Kaplan–Meier curves and log-rank tests (see :func:`km_analysis`).

    Writes the tests table, the curves table (with the number-at-risk rows appended
    as ``kind = "at_risk"``) and one PNG per endpoint: ``out_png_template`` must
    contain ``{endpoint}`` (one panel per source, curves per arm × TLV group,
    log-rank p and numbers at risk underneath). Returns the tests table.
    """
    if "{endpoint}" not in str(out_png_template):
        raise InputError(f"out_png_template {out_png_template!r} must contain '{{endpoint}}'")
    participants, long, outcomes = _load(long_tsv, participants_tsv, outcomes_tsv, arms, baseline_week)
    srcs = resolve_sources(long, sources)
    bl = baseline_lesions(long, baseline_week)
    tests, curves, at_risk = km_analysis(bl, participants, outcomes, control_arm, arms, endpoints,
                                         at_risk_step_weeks, srcs)
    _write_tsv(tests, out_tests_tsv)
    both = pd.concat([curves.assign(kind="curve"), at_risk.assign(kind="at_risk")], ignore_index=True)
    _write_tsv(both, out_curves_tsv)
    from t2lesion.plots.stats import plot_km

    arm_order = resolve_arms(participants, control_arm, arms)
    for ep in endpoints:
        plot_km(tests, curves, at_risk, ep, str(out_png_template).format(endpoint=ep), arms=arm_order,
                sources=srcs)
    return tests
