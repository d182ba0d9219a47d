"""Every knob of the synthetic trial: :class:`SynthParams` (validation, (de)serialisation)
and the visit list implied by the parameters alone (:func:`expected_visits`)."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, fields
from typing import Any

from t2lesion.bids import MODALITIES, session_label
from t2lesion.errors import InputError
from t2lesion.synth import clinical as _cohort

log = logging.getLogger("t2lesion.synth")  # the package's logger name, as before the split


#: Tissue classes that have an intensity per modality in ``SynthParams.contrast``.
TISSUES = ("wm", "gm", "csf", "lesion", "bone", "marrow", "muscle", "fat", "skin")


def _default_contrast() -> dict[str, dict[str, float]]:
    # Scanner-like magnitudes (a 0-1000 range, never [0, 1]: ROBEX misbehaves there, docs/DESIGN.md §2).
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

    :meth:`from_dict` also accepts every :class:`t2lesion.synth.clinical.CohortParams`
    field as a flat key (``arms``, ``tlv_median_ml``, ``beta_log_tlv``, …) or a nested
    ``cohort`` mapping; ``weeks`` is shared with the cohort. Lengths in mm, volumes in µL (mm³)
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
    # --- realism (t2lesion.synth.realism) ---
    #: "default" (bright, round, well separated lesions) or "clinical" (the clinical-realism
    #: profile: varied lesion contrast and location, mimics, slice profile, sites).
    profile: str = "default"
    #: Overrides of the clinical profile's knobs (``t2lesion.synth.realism_settings.DEFAULTS``).
    realism: dict = field(default_factory=dict)
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
        from t2lesion.synth import realism_settings as _realism

        problems += _realism.check(self.profile, self.realism)
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
            if f.name == "cohort" or (f.name, getattr(self, f.name)) in (("profile", "default"), ("realism", {})):
                continue  # (profile and realism only when set: the default's params.json is unchanged)
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
