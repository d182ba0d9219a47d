"""Shared constants and helpers of the statistics stages."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from t2lesion.errors import InputError
from t2lesion.io import write_tsv

log = logging.getLogger(__name__)

LONG_COLUMNS = ("participant_id", "session", "week", "source", "tlv_ml", "tlc")
PARTICIPANT_COLUMNS = ("participant_id", "arm", "age", "sex", "region", "edss_bl")
OUTCOME_COLUMNS = ("participant_id", "endpoint", "time_weeks", "event")
SUB_RE = re.compile(r"^sub-[A-Za-z0-9]+$")
SOURCE_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
GT_SOURCE = "gt"

#: Cox convergence (``fit_cox``'s ``fit_options``). lifelines stops Newton–Raphson when
#: the step norm or the Newton decrement g'H⁻¹g/2 falls below ``precision`` *before*
#: applying the step it has just computed, so the returned coefficients are one
#: unapplied step short of the maximum: about sqrt(2·precision/curvature). With
#: precision 1e-14 that was 5.8e-11 in a univariable model (7.7 digits against R).
#: 1e-22 stops at a decrement of 1e-22, i.e. an unapplied step of ~1e-11/sqrt(H),
#: which costs the same one or two iterations (Newton converges quadratically) and
#: gives >= 12 significant digits of coef, se, z and p against R's coxph
#: (tests/test_stats_reference.py). No relative log-likelihood stop (lifelines'
#: default r_precision 1e-9, R's eps, stops earlier).
DEFAULT_COX_FIT_OPTIONS: dict = {"precision": 1e-22, "r_precision": 0.0, "max_steps": 500}

#: Every TSV of the statistics is written with 15 significant digits (as R's write.table).
FLOAT_FORMAT = "%.15g"

#: Columns of the exclusions tables (one per analysis: ``exclusions_<analysis>.tsv``).
EXCLUSION_COLUMNS = ("participant_id", "source", "analysis", "scope", "reason")

OK, SKIPPED, WARNING, FAILED = "ok", "skipped", "warning", "failed"


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


def region_is_us(region, us_label: str) -> np.ndarray:
    """1.0 where ``region`` is ``us_label`` (``stats.us_label``), ignoring case and surrounding
    spaces ("us", " US"), else 0.0 (rest of world): the region_US column of every model."""
    key = str(us_label).strip().casefold()
    return np.array([isinstance(r, str) and r.strip().casefold() == key for r in region], float)


def confounded_reason(X: pd.DataFrame, constant: bool = False) -> str | None:
    """The skip reason of a model whose design has :func:`aliased_columns`, or None."""
    aliased = aliased_columns(X, constant)
    if not aliased:
        return None
    return ("arm and covariates confounded among the analysed subjects, the model is not identifiable: "
            + "; ".join(aliased))


def aliased_columns(X: pd.DataFrame, constant: bool = False) -> list[str]:
    """The columns of a design matrix that are linear combinations of the columns before them,
    in column order, as R's ``lm`` reports them (coefficient NA, ``alias()``): each as
    ``"<column> = a combination of <columns>"``. Such a model is not identifiable: a fit would
    split the shared effect arbitrarily (statsmodels' minimum-norm solution) or fail (a singular
    information matrix). ``constant``: the model has a constant that ``X`` lacks (the baseline
    hazard of a Cox model). Columns are scaled to unit maximum before the rank tests."""
    A, names = X.to_numpy(float), [str(c) for c in X.columns]
    if constant:
        A, names = np.c_[np.ones(len(A)), A], ["the constant"] + names
    scale = np.abs(A).max(axis=0) if len(A) else np.ones(A.shape[1])
    A = A / np.where(scale > 0, scale, 1.0)
    kept: list[int] = []
    out = []
    for j in range(A.shape[1]):
        if np.linalg.matrix_rank(A[:, kept + [j]]) == len(kept) + 1:
            kept.append(j)
            continue
        if not kept or not np.any(A[:, j]):
            out.append(f"{names[j]} is all zero")
            continue
        coef = np.linalg.lstsq(A[:, kept], A[:, j], rcond=None)[0]
        used = [names[k] for k, c in zip(kept, coef) if abs(c) > 1e-8]
        out.append(f"{names[j]} = a combination of {', '.join(used)}")
    return out


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



def _write_tsv(df: pd.DataFrame, path: str | Path) -> None:
    write_tsv(df, path, float_format=FLOAT_FORMAT)


class Exclusions:
    """Collects the participants an analysis leaves out, one row per reason (docs/DESIGN.md §9).

    ``scope`` says where the subject is left out (e.g. ``week 48``, ``CDP24
    multivariable``; empty = the whole analysis of that source). Every exclusion is
    also logged. :meth:`frame` gives the table written as ``exclusions_<analysis>.tsv``.
    """

    def __init__(self, analysis: str):
        self.analysis = analysis
        self.rows: list[dict] = []

    def add(self, pids, source: str, reason: str, scope: str = "") -> int:
        pids = [pids] if isinstance(pids, str) else list(pids)
        for pid in pids:
            self.rows.append({"participant_id": pid, "source": source, "analysis": self.analysis,
                              "scope": scope, "reason": reason})
        if pids:
            who = ", ".join(pids[:10]) + (" ..." if len(pids) > 10 else "")
            log.warning("%s: %d participant(s) excluded (source %s%s): %s (%s)", self.analysis, len(pids), source,
                        f", {scope}" if scope else "", reason, who)
        return len(pids)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(EXCLUSION_COLUMNS)).drop_duplicates(ignore_index=True)


def write_exclusions(excl: "Exclusions | pd.DataFrame", path: str | Path | None) -> pd.DataFrame:
    """Write an exclusions table (columns :data:`EXCLUSION_COLUMNS`; header only when none)."""
    df = excl.frame() if isinstance(excl, Exclusions) else excl.reindex(columns=list(EXCLUSION_COLUMNS))
    if path is not None:
        _write_tsv(df, path)
    return df

