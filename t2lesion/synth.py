"""Synthetic MS trial with known truth (SPEC §10): the pipeline's embedded default data.

No real trial data can ship, so the default run generates a BIDS trial whose every
hidden quantity is written next to it under ``truth/`` (layout in docs/CONTRACT.md).
It is meant to make registration, skull stripping and segmentation real problems:

Anatomy (once per subject, in *subject space*)
    nilearn's MNI152 2009 GM/WM probability maps and brain mask (shipped, no download;
    CSF = brain − GM − WM), warped by a smooth random displacement (a low-order cosine
    basis, RMS ``deform_mm`` inside the brain) and an anisotropic head scaling. Around
    the brain a skull/scalp shell is built from the distance to a smoothed brain hull
    (``head_layers_mm``: CSF gap, inner table, diploë, outer table, galea, scalp fat,
    skin; thickness varies per subject) plus a neck below the brain. "Subject space"
    is the (padded) template grid on which this deformed anatomy lives, ≈ MNI, LPS mm.
Contrasts
    Tissue-class intensities per modality in a scanner-like range (``contrast``;
    T1w: WM > GM > CSF, scalp fat bright; T2w: CSF bright; FLAIR: CSF dark; lesions
    hyperintense on T2w/FLAIR and hypointense on T1w), varied per subject.
Lesions (continuous objects in subject space, same ``lesion_id`` at every visit)
    Unions of 1–3 soft-edged ellipsoids centred in deep white matter, preferentially near
    the ventricles (periventricular, long axis pointing away from them), clipped to brain
    parenchyma. Nominal volumes are log-normal (``lesion_volume_*``), so that ~40 % of the
    lesions of >= 3 voxels in the 1×1×3 mm masks have <= 10 voxels (≤ 30 µL). The
    baseline load is the participant's target TLV from :mod:`t2lesion.cohort` (times
    ``lesion_volume_calibration``, which makes the TLV *realised* in the masks match the
    target on average; capped at ``max_tlv_ml``). Each follow-up adds new lesions
    (Poisson, ``new_lesions_per_year``; treated arms × ``new_lesion_rate_ratio_treated``)
    and enlarges or shrinks existing ones so that the nominal load follows the cohort's
    TLV trajectory. Interpretation: the cohort's trajectory is the *target*; the truth
    tables report what is realised in the written masks.
Acquisition (every visit)
    Random rigid head pose (≤ ``max_rotation_deg``; FOV centre ≤ ``max_translation_mm``
    from the isocentre, brain ≤ ``max_fov_offset_mm`` from the FOV centre), axial
    native grid of ``voxel_mm`` (1×1×3 mm) over ``fov_mm``, slice partial volume by
    averaging ``slice_supersample`` sub-slices per slice (box slice profile), per-visit
    gain, a smooth multiplicative bias field per modality (log-range
    ``bias_log_range`` inside the brain) and Rician noise (σ = ``noise_fraction`` × WM).
    T1w, T2w and FLAIR share the visit's native grid and pose.
Ground truth
    GT lesion mask = slice-integrated lesion fraction ≥ ``gt_threshold``; each mask
    voxel belongs to the lesion with the largest fraction in it, so touching lesions stay
    attributable (``truth/…_desc-lesions_dseg.nii.gz`` holds that ``lesion_id`` map, an
    addition to docs/CONTRACT.md); ``lesions.tsv`` is measured on the written mask
    (lesions that vanish are omitted for that visit) and its subject-space centroids are
    computed analytically from the lesion objects. Outcomes come from
    :func:`t2lesion.cohort.draw_outcomes` with the log of the TLV realised in the baseline
    GT mask, so the true log-TLV hazard ratio applies to what a perfect segmenter measures.
    The anatomy is read from nilearn's shipped MNI files directly (the same data as
    ``nilearn.datasets.load_mni152_*``, whose import costs seconds through scikit-learn).

Entry points: :func:`generate_trial` (writes everything; CLI ``python -m t2lesion.synth``),
:func:`simulate_visit` / :func:`simulate_subject_visits` (one subject in memory, for
other stages' tests) and :func:`expected_visits` (the visit list, from parameters alone).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage as ndi

from t2lesion import cohort as _cohort
from t2lesion.bids import MODALITIES, gt_mask_path, image_path, session_label
from t2lesion.errors import InputError

log = logging.getLogger(__name__)

#: Tissue classes that have an intensity per modality in ``SynthParams.contrast``.
TISSUES = ("wm", "gm", "csf", "lesion", "bone", "marrow", "muscle", "fat", "skin")
#: Marker file telling :func:`generate_trial` that a root's bids/ and truth/ are its own.
MARKER = ".t2lesion-synth"
_FORMAT_VERSION = 1


def _default_contrast() -> dict[str, dict[str, float]]:
    # Scanner-like magnitudes (a 0-1000 range, never [0, 1]: ROBEX misbehaves there, SPEC §2).
    return {
        "T1w": {
            "wm": 800.0,
            "gm": 520.0,
            "csf": 170.0,
            "lesion": 560.0,
            "bone": 40.0,
            "marrow": 560.0,
            "muscle": 380.0,
            "fat": 950.0,
            "skin": 480.0,
        },
        "T2w": {
            "wm": 330.0,
            "gm": 500.0,
            "csf": 1000.0,
            "lesion": 760.0,
            "bone": 40.0,
            "marrow": 450.0,
            "muscle": 280.0,
            "fat": 680.0,
            "skin": 420.0,
        },
        "FLAIR": {
            "wm": 420.0,
            "gm": 560.0,
            "csf": 70.0,
            "lesion": 950.0,
            "bone": 30.0,
            "marrow": 380.0,
            "muscle": 280.0,
            "fat": 560.0,
            "skin": 400.0,
        },
    }


def _default_head_layers() -> list[list]:
    # [tissue, outer edge in mm outside the smoothed brain hull]; air beyond the last.
    return [
        ["csf", 2.5],
        ["bone", 4.5],
        ["marrow", 7.0],
        ["bone", 8.5],
        ["muscle", 10.5],
        ["fat", 14.0],
        ["skin", 15.5],
    ]


@dataclass
class SynthParams:
    """Every knob of the synthetic trial (all written to ``truth/params.json``).

    :meth:`from_dict` also accepts every :class:`t2lesion.cohort.CohortParams` field as
    a flat key (``arms``, ``tlv_median_ml``, ``beta_log_tlv``, …) or a nested ``cohort``
    mapping; ``weeks`` is shared with the cohort. Lengths in mm, volumes in µL (mm³)
    unless the name says mL. Axis triples are (x, y, z) in LPS.
    """

    seed: int = 0
    subjects_per_arm: int = 4
    #: Visit weeks; 0 (baseline) first. Sessions are ``ses-w<NNN>``.
    weeks: list[int] = field(default_factory=lambda: [0, 24, 48, 96])
    # --- anatomy ---
    #: MNI152 template resolution for subject anatomy: 1 (demo) or 2 mm (tests).
    template_resolution_mm: int = 1
    #: RMS of the smooth random displacement inside the brain (mm).
    deform_mm: float = 3.0
    #: Cosine basis functions per axis of the displacement (higher = wigglier).
    deform_modes: int = 4
    #: Mean linear size of a subject's head relative to MNI (the MNI brain mask, CSF
    #: included, is ~1.9 L; 0.95 gives brain masks of ~1.6 L).
    head_scale_mean: float = 0.95
    #: SD of the per-axis log head scaling factor (subject head size/shape).
    head_scale_sd: float = 0.03
    #: Skull/scalp layers: [tissue, outer edge in mm outside the brain hull].
    head_layers_mm: list = field(default_factory=_default_head_layers)
    #: SD of the per-subject log scale of all layer thicknesses.
    skull_thickness_sd: float = 0.1
    #: Length of neck added below the template (mm).
    neck_mm: float = 40.0
    # --- acquisition ---
    #: Native voxel size (x, y, z) in mm; axial slices of thickness z.
    voxel_mm: tuple[float, float, float] = (1.0, 1.0, 3.0)
    #: Native field of view (x, y, z) in mm, centred on the scanner isocentre.
    fov_mm: tuple[float, float, float] = (220.0, 220.0, 156.0)
    #: Sub-slices averaged per native slice (slice partial volume, box profile).
    slice_supersample: int = 3
    #: Head pose per visit: each Euler angle uniform in ±max_rotation_deg.
    max_rotation_deg: float = 8.0
    #: Head position in scanner coordinates per visit: the field of view's centre is at a
    #: uniform ±max_translation_mm per axis from the isocentre (header origins differ).
    max_translation_mm: float = 10.0
    #: Offset of the brain centre from the FOV centre per visit: uniform ±max_fov_offset_mm.
    max_fov_offset_mm: float = 4.0
    #: Mean intensity per modality and tissue class.
    contrast: dict = field(default_factory=_default_contrast)
    #: SD of the per-subject log factor on each tissue intensity.
    contrast_subject_sd: float = 0.03
    #: SD of the per-visit, per-modality log scanner gain.
    gain_sd: float = 0.05
    #: Log range (max − min) of the multiplicative bias field inside the brain (0.3 ≈ ×1.35).
    bias_log_range: float = 0.3
    #: Total degree of the polynomial log bias field.
    bias_order: int = 3
    #: Rician noise σ as a fraction of the WM intensity of each modality.
    noise_fraction: float = 0.03
    #: Data type of the written MR images: "int16" (scanner-like) or "float32".
    image_dtype: str = "int16"
    # --- lesions ---
    #: Log-normal nominal lesion volume: median (µL) and sigma of log volume.
    lesion_volume_median_ul: float = 45.0
    lesion_volume_sigma: float = 1.5
    lesion_volume_min_ul: float = 12.0
    lesion_volume_max_ul: float = 6000.0
    #: Longest/shortest semi-axis ratio is drawn up to this value.
    lesion_elongation_max: float = 2.2
    #: Probability that a lesion has 1-2 satellite ellipsoids (blobby shape).
    lesion_satellite_prob: float = 0.35
    #: Lesion centres need at least this template WM probability (and lie >= 8 mm inside
    #: the brain hull).
    lesion_wm_threshold: float = 0.6
    #: Length scale (mm) of the preference for periventricular white matter.
    lesion_periventricular_mm: float = 8.0
    #: Relative lesion density in white matter far from the ventricles.
    lesion_deep_wm_weight: float = 0.15
    #: Width (mm) of the soft lesion edge.
    lesion_edge_mm: float = 1.0
    #: SD of the per-lesion factor on its contrast to white matter.
    lesion_contrast_sd: float = 0.12
    #: Probability that a lesion is a T1 "black hole" (much darker on T1w).
    t1_black_hole_prob: float = 0.25
    #: A participant whose target TLV exceeds this (mL) at some visit gets all targets
    #: scaled down by one factor (keeping the percent changes); the realised TLV (what the
    #: outcomes depend on) is then smaller than the cohort's draw.
    max_tlv_ml: float = 60.0
    #: Nominal lesion volumes are multiplied by this factor (calibrates the realised
    #: baseline TLV in 1×1×3 mm masks to the cohort's target TLV on average).
    lesion_volume_calibration: float = 1.15
    #: New lesions per year in the control arm (Poisson).
    new_lesions_per_year: float = 4.0
    #: Rate ratio of new lesions in every treated arm vs control.
    new_lesion_rate_ratio_treated: float = 0.2
    #: Largest nominal volume of a new lesion (µL).
    new_lesion_max_ul: float = 600.0
    #: Largest volume ratio of an enlarging lesion between two visits.
    enlarge_max_factor: float = 3.0
    #: Existing lesions shrink by at most this fraction of their load between visits to
    #: make room for new lesions within the TLV trajectory (new lesions are made smaller,
    #: or dropped, when the room is not enough).
    shrink_max_fraction: float = 0.15
    #: GT mask = slice-integrated lesion fraction >= this.
    gt_threshold: float = 0.5
    # --- clinical part ---
    cohort: _cohort.CohortParams = field(default_factory=_cohort.CohortParams)

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        problems: list[str] = []

        def num(name, cast=float, lo=None, hi=None, lo_open=False):
            v = getattr(self, name)
            try:
                if isinstance(v, bool) or v is None:
                    raise TypeError
                c = cast(v)
                if cast is int and c != v:
                    raise TypeError
            except (TypeError, ValueError):
                problems.append(f"synthetic parameter {name}={v!r} is not a{'n integer' if cast is int else ' number'}")
                return
            if not math.isfinite(float(c)):
                problems.append(f"synthetic parameter {name}={v!r} is not finite")
                return
            if lo is not None and (c <= lo if lo_open else c < lo):
                problems.append(f"synthetic parameter {name}={v!r} must be {'>' if lo_open else '>='} {lo}")
            if hi is not None and c > hi:
                problems.append(f"synthetic parameter {name}={v!r} must be <= {hi}")
            setattr(self, name, c)

        num("seed", int, 0)
        num("subjects_per_arm", int, 1)
        num("template_resolution_mm", int, 1, 2)
        num("deform_mm", float, 0)
        num("deform_modes", int, 1, 8)
        num("head_scale_mean", float, 0.8, 1.1)
        num("head_scale_sd", float, 0, 0.2)
        num("skull_thickness_sd", float, 0, 0.5)
        num("neck_mm", float, 0, 120)
        num("slice_supersample", int, 1, 9)
        num("max_rotation_deg", float, 0, 45)
        num("max_translation_mm", float, 0, 100)
        num("max_fov_offset_mm", float, 0, 50)
        num("contrast_subject_sd", float, 0, 0.5)
        num("gain_sd", float, 0, 0.5)
        num("bias_log_range", float, 0, 2)
        num("bias_order", int, 0, 6)
        num("noise_fraction", float, 0, 1)
        num("lesion_volume_median_ul", float, 0, lo_open=True)
        num("lesion_volume_sigma", float, 0)
        num("lesion_volume_min_ul", float, 0, lo_open=True)
        num("lesion_volume_max_ul", float, 0, lo_open=True)
        num("lesion_elongation_max", float, 1)
        num("lesion_satellite_prob", float, 0, 1)
        num("lesion_wm_threshold", float, 0.5, 0.99)
        num("lesion_periventricular_mm", float, 0, lo_open=True)
        num("lesion_deep_wm_weight", float, 0)
        num("lesion_edge_mm", float, 0, lo_open=True)
        num("lesion_contrast_sd", float, 0, 1)
        num("t1_black_hole_prob", float, 0, 1)
        num("lesion_volume_calibration", float, 0, lo_open=True)
        num("max_tlv_ml", float, 0, lo_open=True)
        num("new_lesions_per_year", float, 0)
        num("new_lesion_rate_ratio_treated", float, 0)
        num("new_lesion_max_ul", float, 0, lo_open=True)
        num("enlarge_max_factor", float, 1)
        num("shrink_max_fraction", float, 0, 1)
        num("gt_threshold", float, 0, 1, lo_open=True)
        for name in ("voxel_mm", "fov_mm"):
            v = getattr(self, name)
            try:
                t = tuple(float(x) for x in v)
                if len(t) != 3 or not all(math.isfinite(x) and x > 0 for x in t):
                    raise ValueError
                setattr(self, name, t)
            except (TypeError, ValueError):
                problems.append(f"synthetic parameter {name}={v!r} must be three positive numbers (x, y, z) in mm")
        try:
            w = [int(x) for x in self.weeks]
            if (
                not w
                or w[0] != 0
                or any(b <= a for a, b in zip(w, w[1:]))
                or any(x != float(y) for x, y in zip(w, self.weeks))
            ):
                raise ValueError
            self.weeks = w
        except (TypeError, ValueError):
            problems.append(f"synthetic parameter weeks={self.weeks!r} must be increasing whole weeks starting at 0")
        if self.image_dtype not in ("int16", "float32"):
            problems.append(f"synthetic parameter image_dtype={self.image_dtype!r} must be 'int16' or 'float32'")
        problems += _check_contrast(self.contrast)
        problems += _check_layers(self.head_layers_mm)
        if isinstance(self.lesion_volume_min_ul, float) and isinstance(self.lesion_volume_max_ul, float):
            if self.lesion_volume_min_ul >= self.lesion_volume_max_ul:
                problems.append("synthetic parameters: lesion_volume_min_ul must be < lesion_volume_max_ul")
        if not isinstance(self.cohort, _cohort.CohortParams):
            problems.append("synthetic parameter cohort must be a CohortParams")
        if problems:
            raise InputError(problems, header="invalid synthetic-trial parameters")
        self.cohort.weeks = list(self.weeks)
        if self.cohort.followup_weeks < self.weeks[-1]:
            log.warning("cohort followup_weeks (%s) < last visit week (%s)", self.cohort.followup_weeks, self.weeks[-1])

    # ------------------------------------------------------------------ (de)serialise
    @classmethod
    def from_dict(cls, d: dict | None) -> "SynthParams":
        """Build from a flat mapping (config ``synthetic:`` section or params.json ``params``).

        Unknown keys raise :class:`InputError` naming each of them (and the valid keys).
        """
        d = dict(d or {})
        own = {f.name for f in fields(cls)} - {"cohort"}
        coh_names = {f.name for f in fields(_cohort.CohortParams)}
        nested = d.pop("cohort", None) or {}
        if not isinstance(nested, dict):
            raise InputError(f"synthetic parameter cohort must be a mapping, got {type(nested).__name__}")
        unknown = [k for k in d if k not in own and k not in coh_names]
        unknown += [f"cohort.{k}" for k in nested if k not in coh_names]
        if unknown:
            raise InputError(
                [f"unknown synthetic-trial parameter {k!r}" for k in unknown]
                + [f"valid keys: {', '.join(sorted(own | coh_names))}"],
                header="invalid synthetic-trial parameters",
            )
        cdict = dict(nested)
        for k in list(d):
            if k in coh_names and k not in own:
                cdict[k] = d.pop(k)
        if "weeks" in cdict:
            d.setdefault("weeks", cdict["weeks"])
        cdict["weeks"] = list(d.get("weeks", cls.__dataclass_fields__["weeks"].default_factory()))
        for k in ("edss_values", "edss_weights"):  # tuples in CohortParams, lists in JSON/YAML
            if isinstance(cdict.get(k), list):
                cdict[k] = tuple(cdict[k])
        if isinstance(cdict.get("arms"), tuple):
            cdict["arms"] = list(cdict["arms"])
        try:
            cp = _cohort.CohortParams(**cdict)
        except TypeError as exc:
            raise InputError(f"invalid cohort parameters: {exc}") from None
        return cls(**d, cohort=cp)

    def to_dict(self) -> dict:
        """Flat, JSON-ready mapping that :meth:`from_dict` turns back into equal params."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "cohort":
                continue
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else json.loads(json.dumps(v))
        for k, v in self.cohort.to_dict().items():
            if k != "weeks":
                out[k] = list(v) if isinstance(v, tuple) else v
        return out

    @property
    def arms(self) -> list[str]:
        return list(self.cohort.arms)

    @property
    def n_subjects(self) -> int:
        return self.subjects_per_arm * len(self.cohort.arms)

    @classmethod
    def tiny(cls, **overrides) -> "SynthParams":
        """Test-sized trial: 2 mm template, 1 subject per arm, 2 visits, 1×1×3 mm native.

        Generates in a few seconds per visit; pass keyword overrides as in :meth:`from_dict`.
        """
        base = {
            "template_resolution_mm": 2,
            "subjects_per_arm": 1,
            "weeks": [0, 24],
            "fov_mm": [200.0, 230.0, 171.0],
            "tlv_median_ml": 4.0,
        }
        base.update(overrides)
        return cls.from_dict(base)


def _check_contrast(c) -> list[str]:
    if not isinstance(c, dict) or sorted(c) != sorted(MODALITIES):
        return [f"synthetic parameter contrast must map each of {list(MODALITIES)} to tissue intensities"]
    out = []
    for mod, t in c.items():
        if not isinstance(t, dict) or sorted(t) != sorted(TISSUES):
            out.append(f"synthetic parameter contrast[{mod!r}] must give exactly the tissues {list(TISSUES)}")
            continue
        for k, v in t.items():
            try:
                ok = float(v) >= 0 and math.isfinite(float(v))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                out.append(f"synthetic parameter contrast[{mod!r}][{k!r}]={v!r} must be a number >= 0")
    return out


def _check_layers(layers) -> list[str]:
    try:
        ok = len(layers) >= 1
        prev = 0.0
        for name, edge in layers:
            if name not in TISSUES or name == "lesion" or float(edge) <= prev:
                ok = False
            prev = float(edge)
    except (TypeError, ValueError):
        ok = False
    return (
        []
        if ok
        else [
            f"synthetic parameter head_layers_mm={layers!r} must be [tissue, outer edge mm] pairs with "
            "increasing edges and tissues from " + ", ".join(t for t in TISSUES if t != "lesion")
        ]
    )


def _coerce_params(params) -> SynthParams:
    if params is None:
        return SynthParams()
    if isinstance(params, SynthParams):
        return params
    if isinstance(params, dict):
        return SynthParams.from_dict(params)
    raise InputError(f"synthetic parameters must be SynthParams or a mapping, got {type(params).__name__}")


def participant_ids(params: SynthParams) -> list[str]:
    """``sub-001``… in the order the cohort draws them."""
    return _cohort._ids(params.n_subjects)


def expected_visits(params: SynthParams | dict) -> list[tuple[str, str]]:
    """(sub label, ses label) of every visit the trial will have, e.g. ``("001", "w024")``.

    Every participant has every visit; cheap (no drawing), so the workflow can build its
    DAG before the trial exists.
    """
    params = _coerce_params(params)
    return [(pid[4:], session_label(w)) for pid in participant_ids(params) for w in params.weeks]


# ============================================================================ template
@dataclass
class _Template:
    """The anatomy shared by every subject, on a padded MNI grid with identity direction."""

    res: float
    origin: np.ndarray  # LPS mm of voxel (0, 0, 0); arrays are (z, y, x), index i -> origin + i*res
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    tissue_flat: np.ndarray  # flat indices where subject brain tissue may be (warped at ``res``)
    # head geometry on the node-aligned 2 mm grid (it is smooth; warped there, then upsampled)
    origin2c: np.ndarray
    d2c: np.ndarray  # mm outside the smoothed brain hull (0 inside); neck included
    head_flat2: np.ndarray  # flat indices where a subject's head may be (the rest is air)
    brain_centre: np.ndarray  # LPS mm
    # lesion placement on the full 2 mm grid
    origin2: np.ndarray
    shape2: tuple
    cand_idx: np.ndarray  # flat indices (2 mm grid) of allowed lesion-centre voxels
    cand_dvent: np.ndarray  # their distance to the ventricles (mm)
    vent_prox: np.ndarray  # 2 mm, blurred ventricle indicator (orientation of lesions)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.gm.shape


_MNI_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def _mni_data_dir() -> Path | None:
    """nilearn's shipped template folder, found without importing nilearn.datasets
    (whose import pulls in scikit-learn and costs seconds per worker)."""
    import importlib.util

    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return d if all((d / f).is_file() for f in _MNI_FILES.values()) else None


def _load_mni() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """nilearn's MNI152 2009 T1, GM and WM maps at 1 mm, each rescaled to max 1 as
    ``nilearn.datasets.load_mni152_*`` do, as (z, y, x) arrays whose LPS coordinates
    increase with the index; plus the LPS origin of voxel (0, 0, 0)."""
    import nibabel as nib

    d = _mni_data_dir()
    if d is not None:
        imgs = {k: nib.load(str(d / f)) for k, f in _MNI_FILES.items()}
    else:  # pragma: no cover - other nilearn layouts
        from nilearn import datasets

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imgs = {
                "t1": datasets.load_mni152_template(resolution=1),
                "gm": datasets.load_mni152_gm_template(resolution=1),
                "wm": datasets.load_mni152_wm_template(resolution=1),
            }
    aff = imgs["t1"].affine
    if not (np.allclose(aff[:3, :3], np.diag(np.diag(aff[:3, :3]))) and np.all(np.diag(aff)[:3] > 0)):
        raise RuntimeError(f"unexpected MNI template orientation {aff.tolist()}")  # nilearn ships RAS+
    arrays = {}
    for k, img in imgs.items():
        if not np.allclose(img.affine, aff) or img.shape != imgs["t1"].shape:
            raise RuntimeError("nilearn MNI maps do not share a grid")
        a = np.asarray(img.get_fdata(dtype=np.float32))
        a /= a.max()
        # (x, y, z) RAS -> (z, y, x) with x, y flipped: LPS coordinates increase with index.
        arrays[k] = np.ascontiguousarray(a.transpose(2, 1, 0)[:, ::-1, ::-1])
    nx, ny, nz = imgs["t1"].shape
    origin = np.array(
        [-(aff[0, 3] + (nx - 1) * aff[0, 0]), -(aff[1, 3] + (ny - 1) * aff[1, 1]), aff[2, 3]], dtype=float
    )
    return arrays, origin


def _down2(a: np.ndarray) -> np.ndarray:
    """Every other node after a [1, 2, 1]/4 filter per axis (the 2 mm grid shares the origin)."""
    w = np.array([0.25, 0.5, 0.25], np.float32)
    for ax in range(3):
        a = ndi.correlate1d(a, w, axis=ax, mode="nearest")
    return np.ascontiguousarray(a[::2, ::2, ::2])


def _up2(a: np.ndarray) -> np.ndarray:
    """Linear upsampling by 2 of a grid whose every other node is kept (n -> 2n - 1 per axis)."""
    for ax in range(3):
        n = a.shape[ax]
        shape = list(a.shape)
        shape[ax] = 2 * n - 1
        out = np.empty(shape, dtype=a.dtype)
        sl = [slice(None)] * 3
        sl[ax] = slice(0, None, 2)
        out[tuple(sl)] = a
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax] = slice(0, -1)
        hi[ax] = slice(1, None)
        sl[ax] = slice(1, None, 2)
        out[tuple(sl)] = 0.5 * (a[tuple(lo)] + a[tuple(hi)])
        a = out
    return a


@lru_cache(maxsize=2)
def _template(resolution: int, neck_mm: float, max_layer_mm: float) -> _Template:
    """Prepare (once per process) the padded template tissue maps and head geometry."""
    res = float(resolution)
    arrays, origin = _load_mni()
    arrays2, origin2 = {k: _down2(a) for k, a in arrays.items()}, origin.copy()
    if resolution == 2:
        arrays, origin = arrays2, origin2.copy()
    f = int(round(2 / res))
    # Pad on the 2 mm grid (so both grids stay aligned): margin all round, a neck below.
    m2 = 5
    pb2 = m2 + int(math.ceil(neck_mm / 2.0))
    pad2 = ((pb2, m2), (m2, m2), (m2, m2))
    padf = tuple((a * f, b * f) for a, b in pad2)

    def prep(arrs):
        brain = (arrs["t1"] > 0.2).astype(np.float32)  # nilearn's load_mni152_brain_mask
        gm = np.clip(arrs["gm"], 0, 1) * brain
        wm = np.clip(arrs["wm"], 0, 1) * brain
        s = gm + wm
        over = s > 1
        gm[over] /= s[over]
        wm[over] /= s[over]
        csf = np.clip(brain - gm - wm, 0, 1)
        return brain, gm, wm, csf

    brain2, gm2, wm2, csf2 = (np.pad(a, pad2) for a in prep(arrays2))
    origin2 = origin2 - 2.0 * np.array([pad2[2][0], pad2[1][0], pad2[0][0]], float)
    # Head geometry on the 2 mm grid: distance outside a smoothed hull of the brain.
    hull = ndi.gaussian_filter(brain2, 1.5) > 0.3
    d2 = ndi.distance_transform_edt(~hull, sampling=2.0).astype(np.float32)
    # Neck: an elliptic cylinder (muscle core, then the outer scalp layers) below the brain.
    nz2, ny2, nx2 = brain2.shape
    zb = np.nonzero(brain2.any(axis=(1, 2)))[0]
    z_bottom = zb[0]
    zz = origin2[2] + 2.0 * np.arange(nz2)
    yy = origin2[1] + 2.0 * np.arange(ny2)
    xx = origin2[0] + 2.0 * np.arange(nx2)
    rho = np.sqrt((xx[None, :] / 50.0) ** 2 + ((yy[:, None] - 22.0) / 55.0) ** 2)
    inner = 9.5  # distance value giving the galea/muscle layer of the default layers
    neck_d = np.maximum(inner, inner + 2.0 + (rho - 1.0) * 50.0).astype(np.float32)
    z_join = origin2[2] + 2.0 * z_bottom + 30.0
    for k in range(nz2):
        if zz[k] < z_join:
            d2[k] = np.minimum(d2[k], neck_d)
    # Ventricles: CSF deep inside the hull, largest components; lesion-centre weights.
    inside = ndi.distance_transform_edt(hull, sampling=2.0)
    # (opening removes the thin sheets of sulcal CSF, e.g. the interhemispheric fissure)
    vent = ndi.binary_opening((csf2 > 0.5) & (inside > 15.0), structure=np.ones((3, 3, 3), bool))
    lab, n = ndi.label(vent)
    if n > 1:
        sizes = ndi.sum(vent, lab, index=np.arange(1, n + 1))
        keep = np.arange(1, n + 1)[sizes >= 0.2 * sizes.max()]
        vent = np.isin(lab, keep)
    vent_prox = ndi.gaussian_filter(vent.astype(np.float32), 3.0 / 2.0)
    d_vent = ndi.distance_transform_edt(~vent, sampling=2.0)
    deep_wm = (wm2 >= 0.5) & (inside > 8.0)
    cand = np.flatnonzero(deep_wm)
    cand_dvent = d_vent.ravel()[cand].astype(np.float32)  # weights depend on params: _lesion_cdf
    if resolution == 1:
        brain, gm, wm, csf = (np.pad(a, padf) for a in prep(arrays))
    # Crop (on the 2 mm grid, so that the 1 mm grid stays node-aligned) to where a head can be.
    head2 = d2 <= max_layer_mm + 12.0
    nzidx = [np.nonzero(head2.any(axis=tuple(a for a in range(3) if a != ax)))[0] for ax in range(3)]
    lo2 = [max(int(i[0]) - 1, 0) for i in nzidx]
    hi2 = [min(int(i[-1]) + 2, n) for i, n in zip(nzidx, head2.shape)]
    sl2 = tuple(slice(a, b) for a, b in zip(lo2, hi2))
    origin2c = origin2 + 2.0 * np.array([lo2[2], lo2[1], lo2[0]], float)
    d2c = np.ascontiguousarray(d2[sl2])
    if resolution == 1:
        sl = tuple(slice(2 * a, 2 * b - 1) for a, b in zip(lo2, hi2))
        brain, gm, wm, csf = (np.ascontiguousarray(a[sl]) for a in (brain, gm, wm, csf))
        hull_dist = _up2(d2c)
    else:
        brain, gm, wm, csf = (np.ascontiguousarray(a[sl2]) for a in (brain2, gm2, wm2, csf2))
        hull_dist = d2c
    origin = origin2c.copy()
    idx = np.argwhere(brain > 0.5)
    centre_idx = 0.5 * (idx.min(0) + idx.max(0))
    brain_centre = origin + res * centre_idx[::-1]
    t = _Template(
        res=res,
        origin=origin,
        gm=gm,
        wm=wm,
        csf=csf,
        tissue_flat=np.flatnonzero(hull_dist <= 16.0),
        origin2c=origin2c,
        d2c=d2c,
        head_flat2=np.flatnonzero(d2c <= max_layer_mm + 12.0),
        brain_centre=brain_centre,
        origin2=origin2,
        shape2=brain2.shape,
        cand_idx=cand,
        cand_dvent=cand_dvent,
        vent_prox=vent_prox,
    )
    return t


def _get_template(p: SynthParams) -> _Template:
    max_layer = float(p.head_layers_mm[-1][1]) * math.exp(3 * p.skull_thickness_sd)
    return _template(int(p.template_resolution_mm), float(p.neck_mm), round(max_layer, 3))


def _lesion_cdf(t: _Template, p: SynthParams) -> np.ndarray:
    dv = t.cand_dvent.astype(float)
    w = np.exp(-dv / p.lesion_periventricular_mm) + p.lesion_deep_wm_weight
    c = np.cumsum(w)
    return c / c[-1]


# ============================================================================ geometry helpers
def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


@dataclass
class _Deformation:
    """Subject -> template map: x_t = c + (x_s - c) / scale + u(x_s), u a cosine series."""

    centre: np.ndarray
    scale: np.ndarray  # (3,) per axis x, y, z
    lo: np.ndarray  # (3,) basis domain (x, y, z)
    hi: np.ndarray
    coef: np.ndarray  # (3 components x,y,z, K_z, K_y, K_x)

    def _basis(self, coord: np.ndarray, axis: int) -> np.ndarray:
        k = np.arange(self.coef.shape[1 + (2 - axis)])
        tt = (np.asarray(coord, float) - self.lo[axis]) / (self.hi[axis] - self.lo[axis])
        return np.cos(np.pi * np.multiply.outer(tt, k))

    def u_points(self, pts: np.ndarray) -> np.ndarray:
        """Displacement (N, 3) at points (N, 3) in LPS mm."""
        bx, by, bz = (self._basis(pts[:, a], a) for a in range(3))
        return np.einsum("czyx,nz,ny,nx->nc", self.coef, bz, by, bx, optimize=True)

    def u_grid(self, origin: np.ndarray, spacing: float, shape: tuple[int, int, int]) -> list[np.ndarray]:
        """Dense displacement components (x, y, z), each (z, y, x) float32."""
        axes = [origin[a] + spacing * np.arange(shape[2 - a]) for a in range(3)]
        bx, by, bz = (self._basis(axes[a], a) for a in range(3))
        out = []
        for c in range(3):
            a = np.einsum("zyx,ix->zyi", self.coef[c], bx)
            a = np.einsum("zyi,jy->zji", a, by)
            out.append(np.ascontiguousarray(np.einsum("zji,kz->kji", a, bz), dtype=np.float32))
        return out

    def forward_points(self, pts: np.ndarray) -> np.ndarray:
        return self.centre + (pts - self.centre) / self.scale + self.u_points(pts)

    def inverse_points(self, pts_t: np.ndarray, iters: int = 8) -> np.ndarray:
        xs = self.centre + self.scale * (pts_t - self.centre)
        for _ in range(iters):
            xs = self.centre + self.scale * (pts_t - self.u_points(xs) - self.centre)
        return xs


def _draw_deformation(t: _Template, p: SynthParams, rng: np.random.Generator) -> _Deformation:
    K = p.deform_modes
    shape = t.shape
    lo = t.origin.copy()
    hi = t.origin + t.res * (np.array(shape[::-1]) - 1)
    k = np.arange(K)
    freq2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
    amp = 1.0 / (1.0 + freq2)
    amp[0, 0, 0] = 0.0  # no global translation: subject space stays ≈ MNI
    coef = rng.standard_normal((3, K, K, K)) * amp
    scale = p.head_scale_mean * (np.exp(rng.normal(0.0, p.head_scale_sd, 3)) if p.head_scale_sd > 0 else np.ones(3))
    d = _Deformation(centre=t.brain_centre.copy(), scale=scale, lo=lo, hi=hi, coef=coef)
    if p.deform_mm > 0:
        # normalise the RMS displacement inside the brain on a coarse sample of brain voxels
        idx = np.argwhere(t.gm + t.wm > 0.5)[:: max(1, int(8 / t.res) ** 3)]
        pts = t.origin + t.res * idx[:, ::-1]
        u = d.u_points(pts)
        rms = float(np.sqrt(np.mean(np.sum(u**2, axis=1))))
        d.coef *= p.deform_mm / max(rms, 1e-9)
    else:
        d.coef[:] = 0.0
    return d


# ============================================================================ subject anatomy
@dataclass
class _Anatomy:
    origin: np.ndarray
    res: float
    images: dict[str, np.ndarray]  # clean subject-space intensities (emptied once in sitk_images)
    brain: np.ndarray
    paren: np.ndarray  # GM + WM fraction (lesions are clipped to it)
    contrast: dict[str, dict[str, float]]
    deformation: _Deformation
    layer_scale: float
    sitk_images: dict[str, sitk.Image] = field(default_factory=dict)

    def to_index(self, pts: np.ndarray) -> np.ndarray:
        """LPS mm (N, 3) -> (3, N) (z, y, x) index coordinates for map_coordinates."""
        return ((pts - self.origin) / self.res)[:, ::-1].T


def _head_profile(layers: list, contrast: dict[str, float], scale: float):
    """Knots of the piecewise-linear intensity vs distance-outside-hull (1 mm ramps)."""
    xs, ys = [], []
    prev_val = contrast[layers[0][0]]
    xs.append(-1e6)
    ys.append(prev_val)
    for i, (name, edge) in enumerate(layers):
        val = contrast[name]
        if i > 0:
            e = float(layers[i - 1][1]) * scale
            xs += [e - 0.5, e + 0.5]
            ys += [prev_val, val]
        prev_val = val
    e = float(layers[-1][1]) * scale
    xs += [e - 0.5, e + 0.5, 1e6]
    ys += [prev_val, 0.0, 0.0]
    return np.array(xs), np.array(ys)


def _slab_weights(thickness: float, h: float) -> np.ndarray:
    """Weights on a grid of spacing ``h`` that average its linear interpolant over a
    centred box of width ``thickness`` (a box slice profile)."""
    J = int(math.ceil(thickness / 2.0 / h)) + 1
    x = np.linspace(-thickness / 2.0, thickness / 2.0, 4001)
    trapezoid = getattr(np, "trapezoid", None) or np.trapz
    w = np.array([trapezoid(np.clip(1.0 - np.abs(x - j * h) / h, 0.0, None), x) for j in range(-J, J + 1)])
    w = w[w > 1e-9] if w[0] <= 1e-9 else w
    return (w / w.sum()).astype(np.float32)


def _build_anatomy(t: _Template, p: SynthParams, rng: np.random.Generator) -> _Anatomy:
    deformation = _draw_deformation(t, p, rng)
    layer_scale = float(np.exp(rng.normal(0.0, p.skull_thickness_sd))) if p.skull_thickness_sd > 0 else 1.0
    contrast = {
        mod: {k: float(v) * float(np.exp(rng.normal(0.0, p.contrast_subject_sd))) for k, v in p.contrast[mod].items()}
        for mod in MODALITIES
    }
    shape = t.shape
    dfm = deformation

    def template_coords(origin, res, shp, flat):
        """Template index coordinates (3, N) of the subject voxels ``flat`` of a grid."""
        if res == 1.0:  # the displacement is smooth: evaluate on the aligned 2 mm grid
            u = [_up2(c) for c in dfm.u_grid(t.origin2c, 2.0, t.d2c.shape)]
        else:
            u = dfm.u_grid(origin, res, shp)
        idx = np.unravel_index(flat, shp)  # (k, j, i)
        coords = np.empty((3, flat.size), dtype=np.float64)
        for ax, comp in ((0, 2), (1, 1), (2, 0)):
            x_s = origin[comp] + res * idx[ax]
            x_t = dfm.centre[comp] + (x_s - dfm.centre[comp]) / dfm.scale[comp] + u[comp].ravel()[flat]
            coords[ax] = (x_t - origin[comp]) / res
        return coords

    warped = {}
    coords = template_coords(t.origin, t.res, shape, t.tissue_flat)
    for name, arr in (("gm", t.gm), ("wm", t.wm), ("csf", t.csf)):
        out = np.zeros(shape, np.float32)
        out.ravel()[t.tissue_flat] = ndi.map_coordinates(arr, coords, order=1, mode="nearest", prefilter=False)
        warped[name] = out
    del coords
    coords = template_coords(t.origin2c, 2.0, t.d2c.shape, t.head_flat2)
    d2 = np.full(t.d2c.shape, 1e3, np.float32)
    d2.ravel()[t.head_flat2] = ndi.map_coordinates(t.d2c, coords, order=1, mode="nearest", prefilter=False)
    warped["d"] = _up2(d2) if t.res == 1 else d2
    del coords
    gm, wm, csf, d = warped["gm"], warped["wm"], warped["csf"], warped["d"]
    brain = gm + wm + csf
    paren = gm + wm
    last_edge = float(p.head_layers_mm[-1][1]) * layer_scale + 1.0
    head = np.flatnonzero((brain < 1.0) & (d < last_edge))
    d_head = d.ravel()[head]
    outside = 1.0 - brain.ravel()[head]
    images = {}
    for mod in MODALITIES:
        c = contrast[mod]
        xs, ys = _head_profile(p.head_layers_mm, c, layer_scale)
        img = np.float32(c["gm"]) * gm + np.float32(c["wm"]) * wm + np.float32(c["csf"]) * csf
        img.ravel()[head] += (np.interp(d_head, xs, ys) * outside).astype(np.float32)
        images[mod] = img
    anat = _Anatomy(
        origin=t.origin.copy(),
        res=t.res,
        images=images,
        brain=brain,
        paren=paren,
        contrast=contrast,
        deformation=deformation,
        layer_scale=layer_scale,
    )
    # Slice profile: a box of the slice thickness along z, applied here once instead of
    # sub-slice sampling at every visit (interpretation: the slab follows subject z; with
    # the default ±8° tilt its ends move < 0.25 mm). Lesions are integrated exactly.
    w = _slab_weights(float(p.voxel_mm[2]), t.res)
    for name, arr in list(images.items()) + [("brain", brain)]:
        img = sitk.GetImageFromArray(ndi.correlate1d(arr, w, axis=0, mode="constant"))
        img.SetOrigin(tuple(float(x) for x in t.origin))
        img.SetSpacing((t.res,) * 3)
        anat.sitk_images[name] = img
    anat.images = {}  # the SimpleITK copies are what visits sample; free the arrays
    return anat


# ============================================================================ lesions
@dataclass
class _Lesion:
    lesion_id: int
    onset: int  # visit index where it appears
    centre: np.ndarray  # subject LPS mm
    rot: np.ndarray  # columns: principal axes in LPS
    comp_centres: np.ndarray  # (m, 3) component centres in the lesion frame (at scale 1)
    comp_axes: np.ndarray  # (m, 3) semi-axes (at scale 1)
    scale: np.ndarray  # (n_visits,) linear scale per visit, 0 = absent
    intensity: dict[str, float]  # lesion intensity per modality

    def base_volume_ul(self) -> float:
        return float(np.sum(4.0 / 3.0 * np.pi * np.prod(self.comp_axes, axis=1)))

    def extent(self) -> float:
        return float(np.max(np.linalg.norm(self.comp_centres, axis=1) + self.comp_axes.max(axis=1)))

    def occupancy(self, pts: np.ndarray, s: float, edge: float) -> np.ndarray:
        """Soft occupancy in [0, 1] at points (..., 3) LPS mm at linear scale ``s``."""
        q = (pts - self.centre) @ self.rot  # lesion frame
        occ = None
        for c, a in zip(self.comp_centres * s, self.comp_axes * s):
            dq = q - c
            r = np.sqrt(np.sum(dq * dq, axis=-1))
            rho = np.sqrt(np.sum((dq / a) ** 2, axis=-1))
            with np.errstate(divide="ignore", invalid="ignore"):
                rdir = np.where(rho > 1e-9, r / rho, a.min())
            o = np.clip(0.5 + (rdir - r) / edge, 0.0, 1.0)
            occ = o if occ is None else np.maximum(occ, o)
        return occ


def _draw_volumes(rng, p: SynthParams, total_ul: float, vmax: float) -> list[float]:
    """Lesion volumes (µL) from the log-normal size law until they sum to ``total_ul``."""
    out: list[float] = []
    remaining = total_ul
    while remaining >= p.lesion_volume_min_ul:
        v = float(np.exp(np.log(p.lesion_volume_median_ul) + p.lesion_volume_sigma * rng.standard_normal()))
        v = min(max(v, p.lesion_volume_min_ul), vmax, remaining)
        out.append(v)
        remaining -= v
    return out


def _sample_centres(
    t: _Template, anat: _Anatomy, cdf: np.ndarray, rng, n: int, wm_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """n lesion centres in subject space and a preferred long-axis direction for each."""
    if n == 0:
        return np.zeros((0, 3)), np.zeros((0, 3))
    shape2 = t.shape2
    pts_t: list = []
    for _ in range(1000):
        if len(pts_t) >= n:
            break
        k = np.searchsorted(cdf, rng.random(n))
        flat = t.cand_idx[np.minimum(k, len(t.cand_idx) - 1)]
        z, y, x = np.unravel_index(flat, shape2)
        pt = t.origin2 + 2.0 * np.stack([x, y, z], axis=1) + rng.uniform(-1.0, 1.0, (n, 3))
        # keep points whose fine-grid WM is high enough
        ci = ((pt - t.origin) / t.res)[:, ::-1].T
        wm = ndi.map_coordinates(t.wm, ci, order=1, mode="constant")
        pts_t += list(pt[wm >= wm_threshold])
    else:
        raise InputError(f"no lesion centres with white-matter probability >= {wm_threshold} (lesion_wm_threshold)")
    pts_t = np.asarray(pts_t[:n])
    # orientation: along the gradient of ventricle proximity (Dawson's fingers)
    h = 2.0
    grad = np.zeros_like(pts_t)
    for a in range(3):
        e = np.zeros(3)
        e[a] = h
        hi = ((pts_t + e - t.origin2) / 2.0)[:, ::-1].T
        lo = ((pts_t - e - t.origin2) / 2.0)[:, ::-1].T
        grad[:, a] = ndi.map_coordinates(t.vent_prox, hi, order=1) - ndi.map_coordinates(t.vent_prox, lo, order=1)
    return anat.deformation.inverse_points(pts_t), grad


def _make_lesion(lid: int, onset: int, n_visits: int, centre, direction, vol: float, p: SynthParams, rng) -> _Lesion:
    m = 1
    if rng.random() < p.lesion_satellite_prob * min(1.0, 0.4 + vol / 300.0):
        m += 1 + int(rng.random() < 0.4)
    fracs = np.concatenate([[1.0], rng.uniform(0.2, 0.6, m - 1)])
    vols = vol * fracs / fracs.sum()
    elong = rng.uniform(1.0, p.lesion_elongation_max)
    flat = rng.uniform(0.7, 1.0)
    # lesion frame: third axis = long axis, along the preferred direction if there is one
    rot = _random_rotation(rng)
    nrm = np.linalg.norm(direction)
    if nrm > 1e-3:
        dvec = direction / nrm
        a1 = np.cross(dvec, rot[:, 0])
        if np.linalg.norm(a1) < 1e-6:
            a1 = np.cross(dvec, rot[:, 1])
        a1 /= np.linalg.norm(a1)
        a2 = np.cross(dvec, a1)
        rot = np.stack([a1, a2, dvec], axis=1)
    axes, centres = [], []
    for j, v in enumerate(vols):
        e = elong if j == 0 else rng.uniform(1.0, p.lesion_elongation_max)
        ratios = np.array([1.0, flat if j == 0 else rng.uniform(0.7, 1.0), e])
        a = (3.0 * v / (4.0 * np.pi * np.prod(ratios))) ** (1.0 / 3.0) * ratios
        axes.append(a)
        if j == 0:
            centres.append(np.zeros(3))
        else:
            u = rng.standard_normal(3)
            u /= np.linalg.norm(u)
            rdir = 1.0 / np.sqrt(np.sum((u / axes[0]) ** 2))  # main radius along u
            centres.append(u * rdir * rng.uniform(0.6, 1.0))
    scale = np.zeros(n_visits)
    scale[onset:] = 1.0
    intensity_factor = {mod: float(np.exp(rng.normal(0.0, p.lesion_contrast_sd))) for mod in MODALITIES}
    black_hole = bool(rng.random() < p.t1_black_hole_prob)
    les = _Lesion(
        lesion_id=lid,
        onset=onset,
        centre=np.asarray(centre, float),
        rot=rot,
        comp_centres=np.array(centres),
        comp_axes=np.array(axes),
        scale=scale,
        intensity=intensity_factor,
    )
    les.black_hole = black_hole  # type: ignore[attr-defined]
    return les


def _lesion_intensity(les: _Lesion, anat: _Anatomy, mod: str) -> float:
    c = anat.contrast[mod]
    target = c["lesion"]
    if mod == "T1w" and getattr(les, "black_hole", False):
        target = 0.5 * (c["lesion"] + c["csf"])
    return float(c["wm"] + (target - c["wm"]) * les.intensity[mod])


def _tlv_cap_factor(targets_ml: list[float], p: SynthParams) -> float:
    return min(1.0, p.max_tlv_ml / max(max(targets_ml), 1e-12))


def _draw_lesions(
    t: _Template, anat: _Anatomy, p: SynthParams, arm: str, targets_ml: list[float], rng
) -> list[_Lesion]:
    """Lesion objects with their per-visit scale, following the target TLV trajectory."""
    n_visits = len(p.weeks)
    cdf = _lesion_cdf(t, p)
    cal = p.lesion_volume_calibration * _tlv_cap_factor(targets_ml, p)
    treated = arm != p.cohort.control_arm
    lesions: list[_Lesion] = []
    vols = _draw_volumes(rng, p, targets_ml[0] * 1000.0 * cal, p.lesion_volume_max_ul)
    vols = sorted(vols, reverse=True)
    centres, dirs = _sample_centres(t, anat, cdf, rng, len(vols), p.lesion_wm_threshold)
    for v, c, dvec in zip(vols, centres, dirs):
        lesions.append(_make_lesion(len(lesions) + 1, 0, n_visits, c, dvec, v, p, rng))
    for v in range(1, n_visits):
        for l in lesions:
            l.scale[v] = l.scale[v - 1]
        dt_years = (p.weeks[v] - p.weeks[v - 1]) / 52.0
        rate = p.new_lesions_per_year * (p.new_lesion_rate_ratio_treated if treated else 1.0)
        n_new = int(rng.poisson(rate * dt_years))
        new_vols = []
        for _ in range(n_new):
            x = float(np.exp(np.log(p.lesion_volume_median_ul) + p.lesion_volume_sigma * rng.standard_normal()))
            new_vols.append(min(max(x, p.lesion_volume_min_ul), p.new_lesion_max_ul))
        # room for new lesions within the TLV trajectory: its growth plus at most
        # shrink_max_fraction of the existing load (which then shrinks to make room)
        old_now = sum(l.base_volume_ul() * l.scale[v] ** 3 for l in lesions if l.scale[v] > 0)
        room = targets_ml[v] * 1000.0 * cal - old_now + p.shrink_max_fraction * old_now
        if new_vols and sum(new_vols) > room:
            f = max(room, 0.0) / sum(new_vols)
            new_vols = [max(x * f, p.lesion_volume_min_ul) for x in new_vols]
            while new_vols and sum(new_vols) > max(room, 0.0):
                new_vols.pop()
        if new_vols:
            cs, ds = _sample_centres(t, anat, cdf, rng, 4 * len(new_vols), p.lesion_wm_threshold)
            placed = 0
            for c, dvec in zip(cs, ds):
                if placed == len(new_vols):
                    break
                vol = new_vols[placed]
                r_new = (3 * vol / (4 * np.pi)) ** (1 / 3) * 1.5
                clash = any(
                    np.linalg.norm(c - l.centre) < l.extent() * l.scale[v] + r_new for l in lesions if l.scale[v] > 0
                )
                if clash:
                    continue
                lesions.append(_make_lesion(len(lesions) + 1, v, n_visits, c, dvec, vol, p, rng))
                placed += 1
        # existing lesions take up the rest of the target change
        old = [l for l in lesions if l.onset < v and l.scale[v] > 0]
        target = targets_ml[v] * 1000.0 * cal
        new_total = sum(l.base_volume_ul() for l in lesions if l.onset == v)
        old_total = sum(l.base_volume_ul() * l.scale[v] ** 3 for l in old)
        rest = target - new_total - old_total
        if not old:
            continue
        if rest < 0:
            f = max(old_total + rest, 0.0) / old_total
            for l in old:
                l.scale[v] *= f ** (1.0 / 3.0)
        elif rest > 0:
            # enlarge a few lesions (chosen by sqrt volume), each by at most enlarge_max_factor;
            # what a capped lesion cannot take goes to further lesions
            vols_old = np.array([l.base_volume_ul() * l.scale[v] ** 3 for l in old])
            order = rng.choice(len(old), size=len(old), replace=False, p=np.sqrt(vols_old) / np.sqrt(vols_old).sum())
            n_enl = min(len(old), 1 + int(rng.poisson(rest / 150.0)))
            start = 0
            while rest > 1e-6 and start < len(old):
                pick = order[start : start + n_enl]
                start += n_enl
                share = vols_old[pick] / vols_old[pick].sum()
                given = 0.0
                for i, sh in zip(pick, share):
                    ratio = min(1.0 + rest * sh / vols_old[i], p.enlarge_max_factor)
                    old[i].scale[v] *= ratio ** (1.0 / 3.0)
                    given += (ratio - 1.0) * vols_old[i]
                rest -= given
    return lesions


# ============================================================================ one visit
@dataclass
class SynthVisit:
    """One simulated visit in memory (arrays are (z, y, x) on the native grid).

    ``images`` are what is written to BIDS (before int16 rounding): clean × bias + Rician
    noise; ``clean`` are before bias and noise (after the visit's gain); ``bias`` are the
    multiplicative fields; ``lesion_labels`` holds the ``lesion_id`` of each GT voxel.
    ``native_to_subject`` maps native LPS mm to subject LPS mm: x_s = M @ [x_n, 1].
    """

    participant_id: str
    session: str
    week: int
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    images: dict[str, np.ndarray]
    clean: dict[str, np.ndarray]
    bias: dict[str, np.ndarray]
    brain_mask: np.ndarray
    lesion_labels: np.ndarray
    native_to_subject: np.ndarray
    lesions: pd.DataFrame
    info: dict = field(default_factory=dict)

    @property
    def lesion_mask(self) -> np.ndarray:
        return (self.lesion_labels > 0).astype(np.uint8)

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def to_image(self, arr: np.ndarray) -> sitk.Image:
        """A (z, y, x) array on this visit's native grid as a SimpleITK image."""
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    def image(self, modality: str) -> sitk.Image:
        return self.to_image(self.images[modality])

    def brain_points(self, step: int = 40) -> np.ndarray:
        """Every ``step``-th voxel of the true brain as native LPS points, homogeneous (n, 4):
        where registration errors are measured."""
        idx = np.argwhere(self.brain_mask > 0)[::step][:, ::-1].astype(float)  # (x, y, z) indices
        d = np.array(self.direction).reshape(3, 3)
        return np.c_[np.asarray(self.origin) + (idx * np.asarray(self.spacing)) @ d.T, np.ones(len(idx))]

    def transform_to_subject(self) -> sitk.AffineTransform:
        """``native_to_subject`` as a SimpleITK transform (maps native points to subject
        points, i.e. it resamples subject-space images onto this visit's grid)."""
        tx = sitk.AffineTransform(3)
        tx.SetMatrix(tuple(float(x) for x in self.native_to_subject[:3, :3].ravel()))
        tx.SetTranslation(tuple(float(x) for x in self.native_to_subject[:3, 3]))
        return tx


def _native_geometry(p: SynthParams, centre=(0.0, 0.0, 0.0)):
    """Native grid (x, y, z): size, spacing and origin of a FOV centred at ``centre``."""
    vox = np.array(p.voxel_mm, float)
    n = np.maximum(1, np.round(np.array(p.fov_mm) / vox)).astype(int)
    origin = np.asarray(centre, float) - (n - 1) / 2.0 * vox
    return n, vox, origin


def _draw_pose(p: SynthParams, t: _Template, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Native->subject rigid matrix, FOV centre (scanner mm) and brain offset from it."""
    ang = np.deg2rad(rng.uniform(-p.max_rotation_deg, p.max_rotation_deg, 3))
    R = _rotation(*ang)
    c_fov = rng.uniform(-p.max_translation_mm, p.max_translation_mm, 3)
    offset = rng.uniform(-p.max_fov_offset_mm, p.max_fov_offset_mm, 3)
    # the FOV centre (native c_fov) sees subject point brain_centre + offset
    M = np.eye(4)
    M[:3, :3] = R
    M[:3, 3] = t.brain_centre + offset - R @ c_fov
    return M, c_fov, offset


def _bias_field(p: SynthParams, n, vox, origin, brain: np.ndarray, rng) -> np.ndarray:
    """exp(polynomial) with log-range ``bias_log_range`` inside the brain, geometric mean 1 there."""
    if p.bias_log_range <= 0 or p.bias_order == 0:
        return np.ones(brain.shape, np.float32)
    K = p.bias_order + 1
    half = (n - 1) / 2.0 * vox
    axes = [(origin[a] + vox[a] * np.arange(n[a])) / max(half[a], 1e-6) for a in range(3)]
    leg = [np.polynomial.legendre.legvander(ax, p.bias_order) for ax in axes]  # (n_a, K)
    C = np.zeros((K, K, K))  # (k_z, k_y, k_x)
    for kz in range(K):
        for ky in range(K):
            for kx in range(K):
                deg = kx + ky + kz
                if 0 < deg <= p.bias_order:
                    C[kz, ky, kx] = rng.standard_normal() / deg
    a = np.einsum("abc,xc->abx", C, leg[0])
    a = np.einsum("abx,yb->ayx", a, leg[1])
    f = np.einsum("ayx,za->zyx", a, leg[2]).astype(np.float32)
    inb = brain > 0
    if inb.any():
        fb = f[inb]
        rng_f = float(fb.max() - fb.min())
        f -= np.float32(fb.mean())
        f *= np.float32(p.bias_log_range / max(rng_f, 1e-12))
    b = np.exp(f)
    # quantise (exact in float32, so the written truth compresses and reproduces exactly)
    b *= np.float32(4096.0)
    np.round(b, out=b)
    b /= np.float32(4096.0)
    return b


def _render_visit(
    p: SynthParams,
    t: _Template,
    anat: _Anatomy,
    lesions: list[_Lesion],
    participant_id: str,
    v: int,
    rng: np.random.Generator,
) -> SynthVisit:
    week = int(p.weeks[v])
    k = p.slice_supersample
    M, c_fov, offset = _draw_pose(p, t, rng)
    n, vox, origin = _native_geometry(p, c_fov)
    R, tr = M[:3, :3], M[:3, 3]
    # --- tissue images at the slice centres, one interpolation each; the slice profile
    # was applied once per subject along subject z (see _slab_weights)
    fine_spacing = (vox[0], vox[1], vox[2] / k)
    fine_origin = (origin[0], origin[1], origin[2] - (k - 1) / 2.0 * vox[2] / k)
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(tuple(float(x) for x in R.ravel()))
    tx.SetTranslation(tuple(float(x) for x in tr))
    native = {}
    for name, img in anat.sitk_images.items():
        out = sitk.Resample(
            img,
            tuple(int(x) for x in n),
            tx,
            sitk.sitkLinear,
            tuple(origin),
            tuple(vox),
            (1, 0, 0, 0, 1, 0, 0, 0, 1),
            0.0,
            sitk.sitkFloat32,
        )
        native[name] = sitk.GetArrayFromImage(out)
    nz, ny, nx = native["brain"].shape
    nzf = nz * k
    # --- lesions, evaluated analytically on the fine (sub-slice) grid
    best_frac = np.zeros((nz, ny, nx), np.float32)
    best_lab = np.zeros((nz, ny, nx), np.int32)
    total_fine = np.zeros((nzf, ny, nx), np.float32)
    edge = p.lesion_edge_mm
    Rinv = R.T
    nominal = {}
    for les in lesions:
        s = les.scale[v]
        if s <= 0:
            continue
        nominal[les.lesion_id] = les.base_volume_ul() * s**3
        r = les.extent() * s + edge
        cn = Rinv @ (les.centre - tr)  # centre in native mm
        ix0 = max(int(np.floor((cn[0] - r - origin[0]) / vox[0])), 0)
        ix1 = min(int(np.ceil((cn[0] + r - origin[0]) / vox[0])) + 1, nx)
        iy0 = max(int(np.floor((cn[1] - r - origin[1]) / vox[1])), 0)
        iy1 = min(int(np.ceil((cn[1] + r - origin[1]) / vox[1])) + 1, ny)
        iz0 = max(int(np.floor((cn[2] - r - origin[2]) / vox[2] - 0.5)), 0)
        iz1 = min(int(np.ceil((cn[2] + r - origin[2]) / vox[2] + 0.5)) + 1, nz)
        if ix0 >= ix1 or iy0 >= iy1 or iz0 >= iz1:
            continue
        xs = origin[0] + vox[0] * np.arange(ix0, ix1)
        ys = origin[1] + vox[1] * np.arange(iy0, iy1)
        zs = fine_origin[2] + fine_spacing[2] * np.arange(iz0 * k, iz1 * k)
        pts = (
            R[:, 0] * xs[None, None, :, None]
            + R[:, 1] * ys[None, :, None, None]
            + R[:, 2] * zs[:, None, None, None]
            + tr
        )  # (Z, Y, X, 3) subject mm
        occ = les.occupancy(pts, s, edge)
        if not occ.any():
            continue
        sub = occ > 0
        pidx = anat.to_index(pts[sub])
        occ[sub] *= np.clip(ndi.map_coordinates(anat.paren, pidx, order=1, mode="constant"), 0.0, 1.0)
        occ = occ.astype(np.float32)
        fsl = (slice(iz0 * k, iz1 * k), slice(iy0, iy1), slice(ix0, ix1))
        np.maximum(total_fine[fsl], occ, out=total_fine[fsl])
        frac = occ.reshape(iz1 - iz0, k, iy1 - iy0, ix1 - ix0).mean(axis=1)
        nsl = (slice(iz0, iz1), slice(iy0, iy1), slice(ix0, ix1))
        for mod in MODALITIES:
            target = _lesion_intensity(les, anat, mod)
            blk = native[mod][nsl]
            blk += frac * (target - blk)
        better = frac > best_frac[nsl]
        best_frac[nsl][better] = frac[better]
        best_lab[nsl][better] = les.lesion_id

    def down(a):
        return a.reshape(nz, k, ny, nx).mean(axis=1)

    total = down(total_fine)
    labels = np.where(total >= p.gt_threshold, best_lab, 0).astype(np.int32)
    brain_mask = (native["brain"] >= 0.5).astype(np.uint8)
    clean, images, bias = {}, {}, {}
    for mod in MODALITIES:
        gain = float(np.exp(rng.normal(0.0, p.gain_sd))) if p.gain_sd > 0 else 1.0
        c = native[mod] * np.float32(gain)
        b = _bias_field(p, n, vox, origin - c_fov, brain_mask, rng)
        sigma = p.noise_fraction * anat.contrast[mod]["wm"] * gain
        sig = c * b
        if sigma > 0:
            n1 = rng.standard_normal(sig.shape, dtype=np.float32) * np.float32(sigma)
            n2 = rng.standard_normal(sig.shape, dtype=np.float32) * np.float32(sigma)
            sig = np.sqrt((sig + n1) ** 2 + n2**2)
        clean[mod], images[mod], bias[mod] = c.astype(np.float32), sig.astype(np.float32), b
    # --- truth per lesion, measured on the mask
    rows = []
    flat = np.flatnonzero(labels)
    if flat.size:
        lab = labels.ravel()[flat]
        zyx = np.unravel_index(flat, labels.shape)
        counts_all = np.bincount(lab)
        ids = np.flatnonzero(counts_all)
        counts = counts_all[ids]
        com = np.stack([np.bincount(lab, weights=c.astype(float))[ids] / counts for c in zyx], axis=1)
        by_id = {l.lesion_id: l for l in lesions}
        vox_ml = float(np.prod(vox)) / 1000.0
        for lid, (cz, cy, cx), cnt in zip(ids, com, counts):
            les = by_id[int(lid)]
            xn = origin + vox * np.array([cx, cy, cz])
            xs_ = _subject_centroid(les, les.scale[v], anat, edge)
            prev = les.scale[v - 1] if v > 0 else 0.0
            if v == 0:
                status = "baseline"
            elif les.onset == v:
                status = "new"
            elif les.scale[v] > prev * (1 + 1e-9):
                status = "enlarging"
            elif les.scale[v] < prev * (1 - 1e-9):
                status = "shrinking"
            else:
                status = "stable"
            rows.append(
                {
                    "participant_id": participant_id,
                    "session": session_label(week),
                    "week": week,
                    "lesion_id": int(lid),
                    "x_subject": xs_[0],
                    "y_subject": xs_[1],
                    "z_subject": xs_[2],
                    "x_native": xn[0],
                    "y_native": xn[1],
                    "z_native": xn[2],
                    "n_voxels": int(round(cnt)),
                    "volume_ml": int(round(cnt)) * vox_ml,
                    "nominal_volume_ml": nominal[int(lid)] / 1000.0,
                    "status": status,
                    "onset_week": int(p.weeks[les.onset]),
                }
            )
    cols = [
        "participant_id",
        "session",
        "week",
        "lesion_id",
        "x_subject",
        "y_subject",
        "z_subject",
        "x_native",
        "y_native",
        "z_native",
        "n_voxels",
        "volume_ml",
        "nominal_volume_ml",
        "status",
        "onset_week",
    ]
    ltab = pd.DataFrame(rows, columns=cols)
    angles = _euler_deg(R)
    info = {
        "rotation_deg": angles,
        "fov_centre_mm": c_fov.tolist(),
        "brain_offset_mm": offset.tolist(),
        "nominal_tlv_ml": sum(nominal.values()) / 1000.0,
    }
    return SynthVisit(
        participant_id=participant_id,
        session=session_label(week),
        week=week,
        spacing=tuple(float(x) for x in vox),
        origin=tuple(float(x) for x in origin),
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        images=images,
        clean=clean,
        bias=bias,
        brain_mask=brain_mask,
        lesion_labels=labels,
        native_to_subject=M,
        lesions=ltab,
        info=info,
    )


def _euler_deg(R: np.ndarray) -> list[float]:
    ay = -np.arcsin(np.clip(R[2, 0], -1, 1))
    ax = np.arctan2(R[2, 1], R[2, 2])
    az = np.arctan2(R[1, 0], R[0, 0])
    return [float(np.rad2deg(a)) for a in (ax, ay, az)]


def _subject_centroid(les: _Lesion, s: float, anat: _Anatomy, edge: float) -> np.ndarray:
    """Occupancy-weighted centroid (clipped to parenchyma) of a lesion in subject space."""
    r = les.extent() * s + edge
    h = float(np.clip(r / 10.0, 0.25, 1.0))
    g = np.arange(-r, r + h / 2, h)
    pts = les.centre + np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)
    occ = les.occupancy(pts, s, edge)
    sub = occ > 0
    pts, occ = pts[sub], occ[sub]
    occ = occ * np.clip(ndi.map_coordinates(anat.paren, anat.to_index(pts), order=1, mode="constant"), 0, 1)
    if occ.sum() <= 0:
        return les.centre.copy()
    return (pts * occ[:, None]).sum(0) / occ.sum()


# ============================================================================ per subject
def _seed_seq(p: SynthParams, *key: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([p.seed, *key])


def _clinical(p: SynthParams) -> tuple[pd.DataFrame, pd.DataFrame, np.random.Generator]:
    rng = np.random.default_rng(_seed_seq(p, 0))
    participants = _cohort.draw_participants(p.subjects_per_arm, p.cohort, rng)
    traj = _cohort.draw_tlv_trajectory(participants, p.cohort, rng)
    return participants, traj, rng


def clinical_tables(
    params: SynthParams | dict | None = None, tlv_bl_ml: dict[str, float] | pd.Series | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The trial's clinical side without images: (participants, tlv_trajectory, outcomes).

    ``participants`` has the BIDS columns plus ``tlv_bl_ml`` (the cohort's *target*
    baseline TLV) and ``log_tlv`` (the value the hazard depends on). Outcomes are drawn
    from the true Cox model with ``log_tlv = log(TLV + offset)`` of ``tlv_bl_ml`` when
    given (participant_id -> realised baseline TLV in mL, as :func:`generate_trial`
    passes it), else of the target TLV. Deterministic given ``params.seed``; cheap even
    for thousands of participants (known-answer tests of the Cox analysis).
    """
    p = _coerce_params(params)
    participants, traj, rng = _clinical(p)
    part = participants.copy()
    if tlv_bl_ml is None:
        tlv = part["tlv_bl_ml"].to_numpy(float)
    else:
        m = dict(tlv_bl_ml)
        missing = [pid for pid in part["participant_id"] if pid not in m]
        if missing:
            raise InputError(f"tlv_bl_ml lacks participants {missing[:5]}")
        tlv = np.array([float(m[pid]) for pid in part["participant_id"]])
    part["log_tlv"] = _cohort.log_tlv(tlv, p.cohort.log_tlv_offset_ml)
    outcomes = _cohort.draw_outcomes(part, p.cohort, rng, log_tlv_col="log_tlv")
    return part, traj, outcomes


@dataclass
class _Subject:
    index: int
    participant_id: str
    arm: str
    targets_ml: list[float]
    anat: _Anatomy
    lesions: list[_Lesion]


def _build_subject(p: SynthParams, index: int, participant_id: str, arm: str, targets_ml: list[float]) -> _Subject:
    t = _get_template(p)
    rng_anat = np.random.default_rng(_seed_seq(p, 1, index))
    rng_les = np.random.default_rng(_seed_seq(p, 2, index))
    anat = _build_anatomy(t, p, rng_anat)
    lesions = _draw_lesions(t, anat, p, arm, targets_ml, rng_les)
    return _Subject(index, participant_id, arm, list(targets_ml), anat, lesions)


def _visit(p: SynthParams, subj: _Subject, v: int) -> SynthVisit:
    rng = np.random.default_rng(_seed_seq(p, 3, subj.index, v))
    out = _render_visit(p, _get_template(p), subj.anat, subj.lesions, subj.participant_id, v, rng)
    out.info["tlv_target_ml"] = subj.targets_ml[v]
    return out


def _subject_inputs(p: SynthParams, subject: int | str):
    participants, traj, _ = _clinical(p)
    ids = list(participants["participant_id"])
    if isinstance(subject, str):
        if subject not in ids and f"sub-{subject}" in ids:
            subject = f"sub-{subject}"
        if subject not in ids:
            raise InputError(f"unknown synthetic participant {subject!r} (have {ids[0]}…{ids[-1]})")
        index = ids.index(subject)
    else:
        index = int(subject)
        if not 0 <= index < len(ids):
            raise InputError(f"synthetic subject index {index} out of range 0..{len(ids) - 1}")
    row = participants.iloc[index]
    targets = traj[traj["participant_id"] == row["participant_id"]].sort_values("week")["tlv_ml"].tolist()
    return index, row, targets


def simulate_subject_visits(
    params: SynthParams | dict | None = None, subject: int | str = 0, visits: list[int] | None = None
) -> list[SynthVisit]:
    """Several visits of one synthetic subject in memory (anatomy built once).

    ``subject``: 0-based index or participant_id (``"sub-002"``/``"002"``); ``visits``:
    indices into ``params.weeks`` (default all). Identical to what :func:`generate_trial`
    writes for that subject with the same parameters (before int16 rounding).
    """
    p = _coerce_params(params)
    index, row, targets = _subject_inputs(p, subject)
    subj = _build_subject(p, index, row["participant_id"], row["arm"], targets)
    visits = list(range(len(p.weeks))) if visits is None else list(visits)
    for v in visits:
        if not 0 <= int(v) < len(p.weeks):
            raise InputError(f"visit index {v} out of range for weeks {p.weeks}")
    return [_visit(p, subj, int(v)) for v in visits]


def simulate_visit(params: SynthParams | dict | None = None, subject: int | str = 0, visit: int = 0) -> SynthVisit:
    """One synthetic visit in memory: native images, clean images, bias fields, brain mask,
    lesion label map, pose and the visit's lesion truth table (see :class:`SynthVisit`).

    For tests of other stages use ``SynthParams.tiny()`` (2 mm template; a few seconds).
    """
    return simulate_subject_visits(params, subject, [visit])[0]


# ============================================================================ writing
def _write(arr: np.ndarray, visit: SynthVisit, path: Path) -> None:
    img = visit.to_image(arr)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), True)


def _truth_path(root: Path, pid: str, ses: str, desc: str) -> Path:
    return root / "truth" / pid / f"ses-{ses}" / f"{pid}_ses-{ses}_desc-{desc}.nii.gz"


def _write_visit(p: SynthParams, vis: SynthVisit, root: Path) -> None:
    bids = root / "bids"
    sub = vis.participant_id[4:]
    ses = vis.session
    for mod in MODALITIES:
        arr = vis.images[mod]
        if p.image_dtype == "int16":
            arr = np.clip(np.rint(arr), 0, 32767).astype(np.int16)
        _write(arr, vis, image_path(bids, sub, ses, mod))
    _write(vis.lesion_mask, vis, gt_mask_path(bids, sub, ses))
    _write(vis.brain_mask, vis, _truth_path(root, vis.participant_id, ses, "brain_mask"))
    for mod in MODALITIES:
        _write(vis.bias[mod], vis, _truth_path(root, vis.participant_id, ses, f"bias_{mod}"))
    _write(vis.lesion_labels.astype(np.int16), vis, _truth_path(root, vis.participant_id, ses, "lesions_dseg"))


def _subject_job(args, on_visit=None) -> dict:
    """Build one subject, render and write all its visits; return its truth rows."""
    pdict, index, pid, arm, targets, root, threads = args
    if threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    p = SynthParams.from_dict(pdict)
    subj = _build_subject(p, index, pid, arm, targets)
    visit_rows, lesion_tabs = [], []
    tlv_bl = None
    for v, week in enumerate(p.weeks):
        vis = _visit(p, subj, v)
        _write_visit(p, vis, Path(root))
        tlv = float(vis.lesion_mask.sum()) * vis.voxel_volume_ml
        if v == 0:
            tlv_bl = tlv
            n_les_bl = int(len(vis.lesions))
        st = vis.lesions["status"] if len(vis.lesions) else pd.Series([], dtype=str)
        visit_rows.append(
            {
                "participant_id": pid,
                "session": vis.session,
                "week": int(week),
                "native_to_subject": " ".join(f"{x:.10g}" for x in vis.native_to_subject.ravel()),
                "rotation_x_deg": vis.info["rotation_deg"][0],
                "rotation_y_deg": vis.info["rotation_deg"][1],
                "rotation_z_deg": vis.info["rotation_deg"][2],
                "fov_centre_x_mm": vis.info["fov_centre_mm"][0],
                "fov_centre_y_mm": vis.info["fov_centre_mm"][1],
                "fov_centre_z_mm": vis.info["fov_centre_mm"][2],
                "tlv_target_ml": targets[v],
                "tlv_nominal_ml": vis.info["nominal_tlv_ml"],
                "tlv_ml": tlv,
                "n_lesions": int(len(vis.lesions)),
                "n_new": int((st == "new").sum()),
                "n_enlarging": int((st == "enlarging").sum()),
                "brain_volume_ml": float(vis.brain_mask.sum()) * vis.voxel_volume_ml,
            }
        )
        lesion_tabs.append(vis.lesions)
        del vis
        if on_visit is not None:
            on_visit()
    d = subj.anat.deformation
    subject_row = {
        "participant_id": pid,
        "arm": arm,
        "tlv_bl_target_ml": targets[0],
        "tlv_target_scale": _tlv_cap_factor(targets, p),
        "tlv_bl_ml": tlv_bl,
        "n_lesions_bl": n_les_bl,
        "n_lesions_total": len(subj.lesions),
        "head_scale_x": float(d.scale[0]),
        "head_scale_y": float(d.scale[1]),
        "head_scale_z": float(d.scale[2]),
        "skull_thickness_scale": subj.anat.layer_scale,
    }
    return {
        "index": index,
        "subject": subject_row,
        "visits": visit_rows,
        "lesions": lesion_tabs,
        "n_visits": len(p.weeks),
    }


def _worker_init(threads: int) -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, int(threads)))


def generate_trial(
    out_root: str | Path, params: SynthParams | dict | None = None, n_jobs: int = 1, progress: bool = True
) -> dict:
    """Write a complete synthetic trial under ``out_root`` (``bids/`` and ``truth/``).

    Everything is written to a temporary folder inside ``out_root`` first and moved into
    place at the end, so a failure leaves nothing partial. Existing ``bids/`` and
    ``truth/`` are replaced only if a previous run of this function created them.
    Deterministic given ``params.seed`` (independent of ``n_jobs``). Returns a summary
    (paths, counts).
    """
    p = _coerce_params(params)
    root = Path(out_root)
    root.mkdir(parents=True, exist_ok=True)
    ours = (root / MARKER).exists()
    for sub in ("bids", "truth"):
        d = root / sub
        # Snakemake pre-creates the (empty) folders of declared outputs: only files count.
        if d.exists() and not ours and any(f.is_file() for f in d.rglob("*")):
            raise InputError(f"{d}: exists and was not written by t2lesion.synth; refusing to overwrite it")
    participants, traj, _ = _clinical(p)
    n_jobs = max(1, int(n_jobs))
    tmp = Path(tempfile.mkdtemp(prefix=".synth-tmp-", dir=root))
    pdict = p.to_dict()
    jobs = []
    for i, row in participants.iterrows():
        targets = traj[traj["participant_id"] == row["participant_id"]].sort_values("week")["tlv_ml"].tolist()
        jobs.append((pdict, int(i), row["participant_id"], row["arm"], targets, str(tmp), None))
    n_visits_total = len(jobs) * len(p.weeks)
    log.info("synthetic trial: %d participants x %d visits -> %s (n_jobs=%d)", len(jobs), len(p.weeks), root, n_jobs)
    results = []
    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_visits_total, desc="synth visits", unit="visit", disable=not progress)
        _get_template(p)  # prepared once here; forked workers inherit it
        if n_jobs == 1 or len(jobs) == 1:
            for job in jobs:
                results.append(_subject_job(job, on_visit=lambda: bar.update(1)))
        else:
            threads = max(1, (os.cpu_count() or 1) // n_jobs)
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            with ProcessPoolExecutor(
                max_workers=n_jobs, mp_context=ctx, initializer=_worker_init, initargs=(threads,)
            ) as ex:
                futs = [ex.submit(_subject_job, job) for job in jobs]
                for fut in as_completed(futs):
                    results.append(fut.result())
                    bar.update(results[-1]["n_visits"])
        bar.close()
        results.sort(key=lambda r: r["index"])
        _write_tables(p, tmp, results)
        # move into place
        for sub in ("bids", "truth"):
            dest = root / sub
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp / sub, dest)
        (root / MARKER).write_text("written by t2lesion.synth; bids/ and truth/ are regenerated in place\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("synthetic trial written: %s", root)
    return {
        "root": str(root),
        "bids": str(root / "bids"),
        "truth": str(root / "truth"),
        "n_participants": len(jobs),
        "n_visits": n_visits_total,
    }


def _write_tables(p: SynthParams, root: Path, results: list[dict]) -> None:
    bids = root / "bids"
    truth = root / "truth"
    bids.mkdir(parents=True, exist_ok=True)
    truth.mkdir(parents=True, exist_ok=True)
    subjects = pd.DataFrame([r["subject"] for r in results])
    visits = pd.DataFrame([row for r in results for row in r["visits"]])
    ltabs = [tab for r in results for tab in r["lesions"] if len(tab)]
    lesions = pd.concat(ltabs, ignore_index=True) if ltabs else pd.DataFrame(columns=results[0]["lesions"][0].columns)
    # outcomes from the true Cox model, on the TLV realised in the baseline GT masks
    participants, _, outcomes = clinical_tables(p, dict(zip(subjects["participant_id"], subjects["tlv_bl_ml"])))
    subjects = subjects.merge(
        participants[["participant_id", "log_tlv", "age", "sex", "region", "edss_bl"]], on="participant_id"
    )
    cols = ["participant_id", "arm", "age", "sex", "region", "edss_bl"]
    participants[cols].to_csv(bids / "participants.tsv", sep="\t", index=False, float_format="%.10g")
    (bids / "phenotype").mkdir(exist_ok=True)
    outcomes.to_csv(bids / "phenotype" / "outcomes.tsv", sep="\t", index=False, float_format="%.10g")
    desc = {
        "Name": "t2lesion synthetic MS trial",
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "GeneratedBy": [{"Name": "t2lesion.synth"}],
    }
    (bids / "dataset_description.json").write_text(json.dumps(desc, indent=2) + "\n")
    dd = bids / "derivatives" / "lesions"
    dd.mkdir(parents=True, exist_ok=True)
    (dd / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "ground-truth T2 lesion masks",
                "BIDSVersion": "1.9.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "t2lesion.synth"}],
            },
            indent=2,
        )
        + "\n"
    )
    subjects.to_csv(truth / "subjects.tsv", sep="\t", index=False, float_format="%.10g")
    visits.to_csv(truth / "visits.tsv", sep="\t", index=False, float_format="%.10g")
    lesions.to_csv(truth / "lesions.tsv", sep="\t", index=False, float_format="%.10g")
    from t2lesion import __version__

    t = _get_template(p)
    n, vox, origin = _native_geometry(p)
    doc = {
        "generator": {"name": "t2lesion.synth", "version": __version__, "format": _FORMAT_VERSION},
        "params": p.to_dict(),
        "true_coefficients": _cohort.true_coefficients(p.cohort),
        "derived": {
            "native_size_xyz": [int(x) for x in n],
            "native_spacing_mm": [float(x) for x in vox],
            "native_origin_lps_mm": [float(x) for x in origin],
            "subject_space": "padded MNI152 2009 grid (nilearn), LPS mm; x_subject = native_to_subject @ [x_native, 1]",
            "subject_grid_origin_lps_mm": [float(x) for x in t.origin],
            "subject_grid_spacing_mm": t.res,
            "subject_grid_size_xyz": [int(x) for x in t.shape[::-1]],
            "brain_centre_subject_mm": [float(x) for x in t.brain_centre],
            "realised_baseline_tlv_ml_median": float(subjects["tlv_bl_ml"].median()),
            "target_baseline_tlv_ml_median": float(subjects["tlv_bl_target_ml"].median()),
        },
    }
    (truth / "params.json").write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")


# ============================================================================ CLI
def _parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="python -m t2lesion.synth",
        description="Generate a synthetic MS trial (BIDS images, GT masks, clinical tables) with its truth.",
    )
    ap.add_argument("out_root", help="output folder; gets bids/ and truth/")
    ap.add_argument("--config", help="YAML/JSON file with SynthParams keys (flat, or under 'synthetic:')")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--subjects-per-arm", type=int)
    ap.add_argument("--weeks", type=int, nargs="+")
    ap.add_argument("--template-resolution", type=int, choices=(1, 2), dest="template_resolution_mm")
    ap.add_argument("--n-jobs", type=int, default=1, help="parallel subjects (processes)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        d: dict = {}
        if args.config:
            import yaml

            path = Path(args.config)
            if not path.is_file():
                raise InputError(f"{path}: file not found")
            try:
                loaded = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise InputError(f"{path}: not valid YAML/JSON ({exc})") from None
            if not isinstance(loaded, dict):
                raise InputError(f"{path}: expected a mapping of synthetic-trial parameters")
            d = dict(loaded.get("synthetic", loaded))
        for key in ("seed", "subjects_per_arm", "weeks", "template_resolution_mm"):
            v = getattr(args, key)
            if v is not None:
                d[key] = v
        params = SynthParams.from_dict(d)
        summary = generate_trial(args.out_root, params, n_jobs=args.n_jobs, progress=not args.quiet)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
