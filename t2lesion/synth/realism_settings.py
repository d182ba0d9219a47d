"""The clinical-realism profile's settings (``synthetic.profile`` / ``synthetic.realism``,
docs/DESIGN.md §10): its names, default knobs and their checks. Apart from
:mod:`t2lesion.synth.realism`, which paints the profile and needs the generator's anatomy and
lesions, so that :class:`t2lesion.synth.params.SynthParams` can check its knobs without an
import cycle."""

from __future__ import annotations

import copy

PROFILES = ("default", "clinical")
CONTRAST_TYPES = ("standard", "faint", "partial", "dark_core")
MIMIC_KINDS = ("cap", "choroid_plexus", "septum", "flow_artefact")

#: Scanner sites of the clinical profile. ``flair_lesion`` and ``flair_gm`` scale the FLAIR
#: lesion and GM contrast to WM; ``flair_csf`` is FLAIR CSF (nulling); ``noise`` multiplies
#: ``noise_fraction``; ``bias_log_range`` replaces the parameter; ``slice_fwhm_mm`` is the
#: slice profile's FWHM; ``inplane_fwhm_mm`` an in-plane Gaussian blur (0 = none).
DEFAULT_SITES = [
    {"name": "A", "flair_lesion": 1.0, "flair_gm": 1.0, "flair_csf": 70.0, "noise": 1.1,
     "bias_log_range": 0.35, "slice_fwhm_mm": 3.2, "inplane_fwhm_mm": 0.5},
    {"name": "B", "flair_lesion": 0.9, "flair_gm": 1.15, "flair_csf": 120.0, "noise": 1.3,
     "bias_log_range": 0.5, "slice_fwhm_mm": 3.6, "inplane_fwhm_mm": 1.0},
    {"name": "C", "flair_lesion": 0.95, "flair_gm": 1.08, "flair_csf": 95.0, "noise": 1.25,
     "bias_log_range": 0.45, "slice_fwhm_mm": 3.4, "inplane_fwhm_mm": 0.8},
]

#: Knobs of the clinical profile; ``synthetic.realism`` overrides any of them.
DEFAULTS = {
    "sites": DEFAULT_SITES,
    "contrast_type_probs": {"standard": 0.55, "faint": 0.2, "partial": 0.12, "dark_core": 0.13},
    "faint_factor": [0.3, 0.6],
    "partial_min": 0.35,
    "dark_core_min_ul": 60.0,
    "dark_core_radius": 0.6,
    "confluent_max": 2,
    "confluent_min_ul": 150.0,
    "juxtacortical_fraction": 0.15,
    "infratentorial_fraction": 0.1,
    "mimic_strength": 1.0,
    "mimic_size": 0.9,
}
_SITE_KEYS = set(DEFAULT_SITES[0])


def check(profile, realism) -> list[str]:
    """Problems with ``synthetic.profile`` / ``synthetic.realism`` (empty when fine)."""
    if profile not in PROFILES:
        return [f"synthetic parameter profile={profile!r} must be one of {list(PROFILES)}"]
    if not isinstance(realism, dict):
        return [f"synthetic parameter realism must be a mapping, got {type(realism).__name__}"]
    if realism and profile != "clinical":
        return ["synthetic parameter realism needs profile: clinical"]
    out = [f"unknown synthetic.realism key {k!r} (valid: {', '.join(sorted(DEFAULTS))})" for k in realism
           if k not in DEFAULTS]
    for k, v in realism.items():
        d = DEFAULTS.get(k)
        if isinstance(d, (int, float)) and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
            out.append(f"synthetic.realism.{k}={v!r} must be a number >= 0")
    ff = realism.get("faint_factor", DEFAULTS["faint_factor"])
    if not (isinstance(ff, list) and len(ff) == 2 and all(isinstance(x, (int, float)) for x in ff) and 0 <= ff[0] <= ff[1]):
        out.append(f"synthetic.realism.faint_factor={ff!r} must be [low, high] with 0 <= low <= high")
    sites = realism.get("sites", DEFAULT_SITES)
    if not isinstance(sites, list) or not sites or not all(isinstance(s, dict) and set(s) == _SITE_KEYS for s in sites):
        out.append(f"synthetic.realism.sites must be a non-empty list of mappings with keys {sorted(_SITE_KEYS)}")
    probs = realism.get("contrast_type_probs", DEFAULTS["contrast_type_probs"])
    if not isinstance(probs, dict) or set(probs) != set(CONTRAST_TYPES) or not all(
        isinstance(v, (int, float)) and v >= 0 for v in probs.values()
    ) or sum(probs.values()) <= 0:
        out.append(f"synthetic.realism.contrast_type_probs must give a weight >= 0 to each of {list(CONTRAST_TYPES)}")
    return out


def knobs(p) -> dict:
    return {**copy.deepcopy(DEFAULTS), **copy.deepcopy(p.realism)}
