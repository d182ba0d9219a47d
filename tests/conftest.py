"""Shared fixtures: tiny BIDS trees written on the fly (no data ships with the tests)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

import t2lesion  # noqa: F401  (sets the TensorFlow CPU defaults before any test imports Keras)

REPO = Path(__file__).resolve().parent.parent

#: XLA_FLAGS for the tests' JAX processes, in-process and every subprocess they start (unless
#: the environment sets XLA_FLAGS itself). JAX on the CPU is a test-only path: on a user's CPU
#: `dl.backend: auto` takes TensorFlow, and JAX runs on a GPU (t2lesion/unet/backend.py). On
#: the CPU, LLVM's optimisation of the code XLA emits is most of each compile, and a test's few
#: calls never win it back. The compile-cache test, which times compiles against cache reads as
#: a user's jobs see them, runs JAX's default (:func:`default_xla_env`). The five JAX tests, one
#: after another on 2 cores: 265 s before, 170-178 s with this (2026-12-07).
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", TEST_XLA_FLAGS)


def default_xla_env(env: dict) -> dict:
    """``env`` without the tests' :data:`TEST_XLA_FLAGS` (XLA_FLAGS a user set are kept)."""
    return {k: v for k, v in env.items() if not (k == "XLA_FLAGS" and v == TEST_XLA_FLAGS)}


def write_image(path: Path, arr: np.ndarray, spacing=(1.0, 1.0, 3.0)) -> None:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def make_bids(root: Path, subjects=("001", "002"), weeks=(0, 24), arms=("PLA", "OCR"), gt=True) -> Path:
    """A minimal valid trial: small random volumes, GT masks on the FLAIR grid."""
    rng = np.random.default_rng(0)
    rows = []
    for i, sub in enumerate(subjects):
        rows.append(
            {
                "participant_id": f"sub-{sub}",
                "arm": arms[i % len(arms)],
                "age": 40 + i,
                "sex": "MF"[i % 2],
                "region": "US" if i % 2 else "ROW",
                "edss_bl": 3.5,
            }
        )
        for week in weeks:
            ses = f"w{week:03d}"
            anat = root / f"sub-{sub}" / f"ses-{ses}" / "anat"
            for mod in ("T1w", "T2w", "FLAIR"):
                write_image(anat / f"sub-{sub}_ses-{ses}_{mod}.nii.gz", rng.uniform(1, 100, (6, 10, 12)).astype(np.float32))
            if gt:
                mask = np.zeros((6, 10, 12), np.uint8)
                mask[2:4, 3:6, 3:6] = 1
                write_image(
                    root / "derivatives" / "lesions" / f"sub-{sub}" / f"ses-{ses}" / "anat"
                    / f"sub-{sub}_ses-{ses}_desc-lesion_mask.nii.gz",
                    mask,
                )
    pd.DataFrame(rows).to_csv(root / "participants.tsv", sep="\t", index=False)
    out = [
        {"participant_id": r["participant_id"], "endpoint": "CDP24", "time_weeks": 50.0, "event": 1} for r in rows
    ]
    (root / "phenotype").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(out).to_csv(root / "phenotype" / "outcomes.tsv", sep="\t", index=False)
    return root


@pytest.fixture
def bids_tree(tmp_path) -> Path:
    return make_bids(tmp_path / "bids")
