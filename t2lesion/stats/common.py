"""Shared constants and helpers of the statistics stages."""

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
    write_tsv(df, path, float_format="%.10g")

