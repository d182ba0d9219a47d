"""All preprocessing steps of one visit in one call (tests, benchmarks, notebooks).

The Snakemake workflow runs the same path-level functions as separate rules (one job per
visit and step); the file names here mirror ``rules/preprocess.smk``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from t2lesion.preprocess._common import SPACE_LABEL, TARGET_SPACING, cpu_seconds
from t2lesion.preprocess.n4 import N4_ITERATIONS, N4_SHRINK, n4_visit
from t2lesion.preprocess.normalise import CLIP_PERCENTILES
from t2lesion.preprocess.register import (
    coregister_visit,
    register_to_baseline,
    register_to_mni,
)
from t2lesion.preprocess.resample import MODS, resample_visit
from t2lesion.preprocess.skullstrip import MAX_BRAIN_ML, MIN_BRAIN_ML, skull_strip

log = logging.getLogger(__name__)


def visit_outputs(out_dir: str | Path, prefix: str) -> dict[str, Path]:
    """Every file :func:`preprocess_visit` writes for visit ``prefix`` (``sub-X_ses-Y``)."""
    d = Path(out_dir)
    sp = f"space-{SPACE_LABEL}"
    out = {
        "native_mask": d / f"{prefix}_space-T1w_desc-brain_mask.nii.gz",
        "to_mni": d / f"{prefix}_from-T1w_to-MNI_xfm.tfm",
        "to_baseline": d / f"{prefix}_from-T1w_to-baseline_xfm.tfm",
        "mask": d / f"{prefix}_{sp}_desc-brain_mask.nii.gz",
        "gt": d / f"{prefix}_{sp}_desc-lesionGT_mask.nii.gz",
        "qc": d / f"{prefix}_{sp}_qc.png",
    }
    for m in MODS:
        out[f"n4_{m}"] = d / f"{prefix}_desc-n4_{m}.nii"  # temporary in the workflow: uncompressed
        out[f"preproc_{m}"] = d / f"{prefix}_{sp}_desc-preproc_{m}.nii.gz"
        out[f"xfm_{m}"] = d / f"{prefix}_from-{m}_to-{SPACE_LABEL}_xfm.tfm"
        if m != "T1w":
            out[f"to_t1w_{m}"] = d / f"{prefix}_from-{m}_to-T1w_xfm.tfm"
    return out


class _Clock:
    def __init__(self):
        self.times: dict[str, float] = {}

    def run(self, step: str, fn, *args, **kwargs):
        t0 = cpu_seconds()
        res = fn(*args, **kwargs)
        self.times[step] = self.times.get(step, 0.0) + cpu_seconds() - t0
        return res


def preprocess_visit(
    t1w: str | Path,
    t2w: str | Path,
    flair: str | Path,
    out_dir: str | Path,
    prefix: str,
    gt_mask: str | Path | None = None,
    baseline: dict[str, Path] | None = None,
    skull_strip_method: str = "deepbet",
    followup_mask: str = "baseline",
    threads: int = 1,
    n4_shrink=N4_SHRINK,
    n4_iterations=N4_ITERATIONS,
    brain_volume_ml=(MIN_BRAIN_ML, MAX_BRAIN_ML),
    clip_percentiles=CLIP_PERCENTILES,
    spacing=TARGET_SPACING,
    qc: bool = True,
) -> tuple[dict[str, Path], dict[str, float]]:
    """Run every step for one visit; return (outputs by name, CPU seconds by step).

    ``baseline``: None for a baseline visit, else the baseline's returned outputs.
    ``followup_mask``: "baseline" (the workflow's default, ``preprocess.followup_brain_mask``:
    follow-ups reuse the baseline's mask, one skull stripping per subject) or "own"
    (skull-strip every visit, register brain to brain).
    """
    out = visit_outputs(out_dir, prefix)
    clock = _Clock()
    raw = {"T1w": t1w, "T2w": t2w, "FLAIR": flair}
    clock.run("n4", n4_visit, raw, {m: out[f"n4_{m}"] for m in MODS}, threads=threads, shrink=n4_shrink,
              iterations=n4_iterations)
    clock.run("coregister", coregister_visit, {m: out[f"n4_{m}"] for m in ("T2w", "FLAIR")}, out["n4_T1w"],
              {m: out[f"to_t1w_{m}"] for m in ("T2w", "FLAIR")}, threads=threads,
              sources={m: raw[m] for m in ("T2w", "FLAIR")})
    own_mask = baseline is None or followup_mask == "own"
    if followup_mask not in ("own", "baseline"):
        raise ValueError(f"followup_mask must be 'own' or 'baseline', got {followup_mask!r}")
    if own_mask:
        lo, hi = brain_volume_ml
        clock.run("skull_strip", skull_strip, out["n4_T1w"], out["native_mask"], method=skull_strip_method,
                  threads=threads, min_volume_ml=lo, max_volume_ml=hi)
    if baseline is None:
        clock.run("register", register_to_mni, out["n4_T1w"], out["native_mask"], out["to_mni"], threads=threads)
        to_mni, to_bl = out["to_mni"], None
    else:
        clock.run("register", register_to_baseline, out["n4_T1w"], out["native_mask"] if own_mask else None,
                  baseline["n4_T1w"], baseline["native_mask"], out["to_baseline"], threads=threads)
        to_mni, to_bl = baseline["to_mni"], out["to_baseline"]
    clock.run(
        "resample", resample_visit,
        images={m: out[f"n4_{m}"] for m in MODS},
        to_t1w={m: out[f"to_t1w_{m}"] for m in ("T2w", "FLAIR")},
        brain_mask=out["native_mask"] if own_mask else baseline["native_mask"],
        brain_mask_space="T1w" if own_mask else "baseline",
        baseline_to_mni=to_mni,
        to_baseline=to_bl,
        out_images={m: out[f"preproc_{m}"] for m in MODS},
        out_mask=out["mask"],
        out_xfms={m: out[f"xfm_{m}"] for m in MODS},
        gt_mask=gt_mask,
        out_gt_mask=out["gt"] if gt_mask is not None else None,
        threads=threads,
        spacing=spacing,
        clip_percentiles=clip_percentiles,
    )
    if qc:
        from t2lesion.plots.qc import qc_png

        clock.run("qc", qc_png, out["preproc_T1w"], out["preproc_T2w"], out["preproc_FLAIR"], out["mask"],
                  out["gt"] if gt_mask is not None else None, out["qc"])
    if not own_mask:
        out["native_mask"] = baseline["native_mask"]
    clock.times["total"] = sum(clock.times.values())
    return out, clock.times
