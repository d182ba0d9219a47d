"""Patient-level cross-validation split (docs/DESIGN.md §3): every visit of a patient in one fold, arms
balanced across folds, seeded. Pure numpy/pandas, no Keras import.

Folds are numbered 1 … k (the paths say fold-<k>). Within each arm the participants are shuffled
with the seed and dealt to the folds round-robin; the deal continues across arms where the
previous arm stopped, so the folds' sizes differ by at most one overall and within each arm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from t2lesion.errors import InputError
from t2lesion.io import write_tsv

COLUMNS = ["participant_id", "arm", "fold"]


def split_folds(participants: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    """Assign each participant to one of ``k`` folds, stratified by arm.

    ``participants`` has one row per participant with columns ``participant_id`` and ``arm``
    (other columns are ignored). Returns ``participant_id, arm, fold`` (fold 1..k) in the input's row order.
    The result depends only on the set of (participant, arm) pairs and ``seed``, not on the
    input's row order.
    """
    k = int(k)
    if k < 2:
        raise InputError(f"cross-validation needs at least 2 folds, got k={k}")
    missing = [c for c in ("participant_id", "arm") if c not in participants.columns]
    if missing:
        raise InputError(f"participants table lacks column(s) {missing} (has {list(participants.columns)})")
    df = participants[["participant_id", "arm"]].astype(str).reset_index(drop=True)
    dup = sorted(df.loc[df["participant_id"].duplicated(), "participant_id"].unique())
    if dup:
        raise InputError(f"participants table lists participant(s) more than once: {dup[:10]}")
    if len(df) < k:
        raise InputError(f"{len(df)} participant(s) cannot fill {k} folds: every fold needs at least one patient")

    rng = np.random.default_rng(np.random.SeedSequence([int(seed) % 2**63, k]))
    # a seeded first fold, so that fold 1 is not always the one that gets the remainders
    position = int(rng.integers(k))
    fold = {}
    for arm in sorted(df["arm"].unique()):
        ids = np.sort(df.loc[df["arm"] == arm, "participant_id"].to_numpy())
        for pid in rng.permutation(ids):
            fold[pid] = position % k + 1  # folds are numbered 1..k, as the paths fold-<k>
            position += 1
    out = df.copy()
    out["fold"] = out["participant_id"].map(fold).astype(int)
    return out[COLUMNS]


def write_folds(folds: pd.DataFrame, path: str | Path) -> None:
    """Write the split as a TSV (``participant_id, arm, fold``), atomically."""
    missing = [c for c in COLUMNS if c not in folds.columns]
    if missing:
        raise ValueError(f"fold table lacks column(s) {missing}")
    write_tsv(folds[COLUMNS], path)


def read_folds(path: str | Path) -> pd.DataFrame:
    """Read a TSV written by :func:`write_folds`, checking its columns."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: fold table not found")
    df = pd.read_csv(path, sep="\t", dtype={"participant_id": str, "arm": str})
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: fold table lacks column(s) {missing}")
    return df[COLUMNS].astype({"fold": int})


__all__ = ["read_folds", "split_folds", "write_folds"]
