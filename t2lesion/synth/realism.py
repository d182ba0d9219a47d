"""The clinical-realism profile of the synthetic trial (``synthetic.profile: clinical``,
docs/DESIGN.md §10): what makes a FLAIR threshold struggle as it does on real data.

Every addition has truth: lesion locations and contrast types in ``truth/lesions.tsv``,
FLAIR-bright non-lesions (mimics) in ``truth/mimics.tsv`` and a per-visit
``desc-mimics_dseg`` label map (never in the GT mask), sites in ``participants.tsv``
(``site``) and their parameters in ``truth/subjects.tsv`` and ``truth/params.json``.

- **Lesion contrast** (per lesion, :data:`CONTRAST_TYPES`): ``standard``; ``faint`` (FLAIR
  and T2w contrast to WM × ``faint_factor``); ``partial`` (contrast falls linearly across
  the lesion to ``partial_min`` of full); ``dark_core`` (lesions ≥ ``dark_core_min_ul``: a
  core of ``dark_core_radius`` of the main ellipsoid, FLAIR darker than WM, T1w darker,
  T2w brighter). The core stays lesion in the GT mask.
- **Location**: up to ``confluent_max`` of a subject's larger lesions become irregular
  confluent periventricular lesions (5–9 ellipsoids chained along the ventricle wall);
  a share of the others moves to juxtacortical white matter (``juxtacortical_fraction``,
  touching the cortex) or infratentorial white matter (``infratentorial_fraction``:
  brainstem, cerebellum; :func:`infratentorial_region`). Volumes and courses over the
  visits are kept.
- **Mimics** (not lesions): periventricular caps at the frontal and occipital horns,
  choroid plexus in the atria, the septum pellucidum, and CSF flow artefacts in the third
  and fourth ventricles and the prepontine cistern (FLAIR only, amplitude per visit).
- **Partial volume across slices**: images see a Gaussian slice profile of FWHM
  ``slice_fwhm_mm`` (per site; ≥ the 3 mm slice, so lesions bleed into neighbouring
  slices), while the GT mask keeps the box fraction of the nominal slice.
- **Sites** (:data:`DEFAULT_SITES`, assigned to subjects by a seeded balanced permutation):
  FLAIR lesion and GM contrast, FLAIR CSF nulling, noise, bias-field range and resolution
  (slice profile, in-plane blur) differ.

The default profile never calls into this module's random streams, so its output is
bit-identical to the generator before the profile existed.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from t2lesion.bids import MODALITIES

from t2lesion.synth.realism_settings import (  # noqa: F401  (re-exported: the profile's settings)
    CONTRAST_TYPES, DEFAULT_SITES, DEFAULTS, MIMIC_KINDS, PROFILES, check, knobs,
)


def infratentorial_region(pts: np.ndarray) -> np.ndarray:
    """Whether template (≈ MNI, LPS mm) points lie in the brainstem/cerebellum box."""
    x, y, z = np.abs(pts[:, 0]), -pts[:, 1], pts[:, 2]  # |x|, RAS y, z
    stem = (x < 12) & (y > -42) & (y < -12) & (z > -48) & (z < -12)
    cereb = (x < 28) & (y > -75) & (y <= -42) & (z > -48) & (z < -24)
    return stem | cereb


def juxtacortical_region(t) -> np.ndarray:
    """Template voxels of white matter at the cortex (flat indices of the template grid)."""
    wm, gm = t.wm, t.gm
    near_gm = ndi.maximum_filter(gm, size=3) > 0.6
    return np.flatnonzero((wm > 0.45) & (wm < 0.75) & near_gm & (t.csf < 0.15))


# ============================================================================ subjects and sites
def site_of(p, index: int) -> int:
    """Balanced, seeded assignment of subject ``index`` to a site."""
    n_sites = len(knobs(p)["sites"])
    order = np.random.default_rng(np.random.SeedSequence([p.seed, 5])).permutation(p.n_subjects)
    return int(order[index] % n_sites)


def subject_params(p, index: int):
    """(params with the subject's site applied, site mapping) for the clinical profile."""
    site = knobs(p)["sites"][site_of(p, index)]
    c = copy.deepcopy(p.contrast)
    fl = c["FLAIR"]
    fl["lesion"] = fl["wm"] + (fl["lesion"] - fl["wm"]) * site["flair_lesion"]
    fl["gm"] = fl["wm"] + (fl["gm"] - fl["wm"]) * site["flair_gm"]
    fl["csf"] = float(site["flair_csf"])
    ps = dataclasses.replace(
        p, contrast=c, noise_fraction=p.noise_fraction * site["noise"], bias_log_range=site["bias_log_range"]
    )
    return ps, site


def slab_weights(fwhm_mm: float, res: float) -> np.ndarray:
    """Gaussian slice profile of ``fwhm_mm`` on a grid of spacing ``res`` (sums to 1)."""
    sigma = fwhm_mm / 2.3548
    j = np.arange(-int(np.ceil(3 * sigma / res)), int(np.ceil(3 * sigma / res)) + 1)
    w = np.exp(-0.5 * (j * res / sigma) ** 2)
    return (w / w.sum()).astype(np.float32)


@dataclass
class SubjectRealism:
    """What the clinical profile adds to one subject (attached to its anatomy)."""

    site_index: int
    site: dict
    knobs: dict
    mimics: list = field(default_factory=list)  # [(kind, _Lesion-like object, clip, factors)]
    seed: tuple = ()  # (trial seed, subject index): the per-visit stream is [seed, 7, index, visit]

    def profile_matrix(self, iz0: int, iz1: int, k: int, vox_z: float) -> np.ndarray:
        """(slices, sub-slices) weights of the Gaussian slice profile over a block."""
        sigma = self.site["slice_fwhm_mm"] / 2.3548
        h = vox_z / k
        zc = np.arange(iz0, iz1) * vox_z
        zf = (np.arange(iz0 * k, iz1 * k) - (k - 1) / 2.0) * h
        m = np.arange(-60 * k, 60 * k + 1)
        norm = np.exp(-0.5 * (((m - (k - 1) / 2.0) * h) / sigma) ** 2).sum()
        return (np.exp(-0.5 * ((zf[None, :] - zc[:, None]) / sigma) ** 2) / norm).astype(np.float32)

    @property
    def slice_pad(self) -> int:
        return 1 + int(np.ceil(1.5 * self.site["slice_fwhm_mm"] / 3.0))


# ============================================================================ lesions
def _unit(v):
    n = np.linalg.norm(v)
    return v / n if n > 1e-9 else np.array([0.0, 0.0, 1.0])


def _pick_template_points(t, flat: np.ndarray, rng, n: int) -> np.ndarray:
    if n == 0 or flat.size == 0:
        return np.zeros((0, 3))
    z, y, x = np.unravel_index(rng.choice(flat, size=n), t.shape)
    return t.origin + t.res * np.stack([x, y, z], axis=1) + rng.uniform(-0.5, 0.5, (n, 3)) * t.res


def adapt_lesions(t, anat, p, lesions: list, rng) -> None:
    """Relocate, reshape and re-contrast the subject's lesions in place (clinical profile)."""
    from t2lesion.synth.lesions import _lesion_cdf, _sample_centres

    kn = knobs(p)
    for les in lesions:
        les.location = "white_matter"
    # confluent, irregular periventricular lesions from the larger ones
    big = [l for l in lesions if l.onset == 0 and l.base_volume_ul() >= kn["confluent_min_ul"]]
    big = sorted(big, key=lambda l: -l.base_volume_ul())[: int(kn["confluent_max"])]
    if big:
        cdf_w = np.where(t.cand_dvent < 6.0, 1.0, 1e-6)
        cdf = np.cumsum(cdf_w) / cdf_w.sum()
        centres, dirs = _sample_centres(t, anat, cdf, rng, len(big), min(p.lesion_wm_threshold, 0.55))
        for les, c, g in zip(big, centres, dirs):
            _make_confluent(les, c, _unit(g), rng)
    rest = [l for l in lesions if l.location == "white_matter" and l.base_volume_ul() < 400.0]
    jc_flat, it_flat = juxtacortical_region(t), None
    idx = np.flatnonzero(t.wm > 0.55)
    z, y, x = np.unravel_index(idx, t.shape)
    pts = t.origin + t.res * np.stack([x, y, z], axis=1)
    it_flat = idx[infratentorial_region(pts)]
    for les in rest:
        u = rng.random()
        if u < kn["juxtacortical_fraction"]:
            flat, loc = jc_flat, "juxtacortical"
        elif u < kn["juxtacortical_fraction"] + kn["infratentorial_fraction"]:
            flat, loc = it_flat, "infratentorial"
        else:
            continue
        pt = _pick_template_points(t, flat, rng, 1)
        if len(pt):
            les.centre = anat.deformation.inverse_points(pt)[0]
            les.location = loc
    # contrast types
    probs = kn["contrast_type_probs"]
    names = list(CONTRAST_TYPES)
    w = np.array([float(probs[k]) for k in names])
    lo, hi = kn["faint_factor"]
    for les in lesions:
        kind = names[int(rng.choice(len(names), p=w / w.sum()))]
        if kind == "dark_core" and les.base_volume_ul() < kn["dark_core_min_ul"]:
            kind = "standard"
        les.contrast_type = kind
        les.pattern = None
        if kind == "faint":
            f = float(rng.uniform(lo, hi))
            les.intensity = {**les.intensity, "FLAIR": les.intensity["FLAIR"] * f,
                             "T2w": les.intensity["T2w"] * min(1.0, 1.5 * f), "T1w": les.intensity["T1w"] * 0.5}
        elif kind == "partial":
            les.pattern = ("partial", _unit(rng.standard_normal(3)), float(kn["partial_min"]))
        elif kind == "dark_core":
            les.pattern = ("dark_core", float(kn["dark_core_radius"]))


def _make_confluent(les, centre, grad, rng) -> None:
    """Turn ``les`` into 5–9 ellipsoids chained along the ventricle wall (same volume)."""
    m = int(rng.integers(5, 10))
    vols = les.base_volume_ul() * rng.dirichlet(np.full(m, 2.0))
    pos = np.zeros(3)
    cs, ax = [], []
    for v in vols:
        r = rng.uniform(0.5, 1.0, 3)
        r[2] *= rng.uniform(1.0, 2.5)
        a = (3.0 * v / (4.0 * np.pi * np.prod(r))) ** (1.0 / 3.0) * r
        cs.append(pos.copy())
        ax.append(a)
        step = rng.standard_normal(3)
        step -= step.dot(grad) * grad  # along the wall
        pos = pos + _unit(step) * (0.8 * a.max() + rng.uniform(0.5, 2.0)) + grad * rng.normal(0, 0.7)
    cs = np.array(cs)
    cs -= cs.mean(axis=0)
    les.centre = np.asarray(centre, float)
    les.rot = np.eye(3)
    les.comp_centres = cs
    les.comp_axes = np.array(ax)
    les.location = "confluent_periventricular"


def _pattern(les, mod: str, q: np.ndarray, s: float):
    """Per-point multiplier of the lesion's contrast to WM (q: lesion-frame mm)."""
    pat = getattr(les, "pattern", None)
    if pat is None:
        return 1.0
    if pat[0] == "partial":
        proj = (q @ pat[1]) / max(les.extent() * s, 1e-6)
        return pat[2] + (1.0 - pat[2]) * np.clip(0.5 + proj, 0.0, 1.0)
    rho = np.sqrt(np.sum(((q / max(s, 1e-6) - les.comp_centres[0]) / les.comp_axes[0]) ** 2, axis=-1))
    core = np.clip((pat[1] - rho) / 0.2 + 0.5, 0.0, 1.0)
    target = {"FLAIR": -0.4, "T1w": 1.8, "T2w": 1.4}[mod]
    return 1.0 + core * (target - 1.0)


def paint_lesion(rz: SubjectRealism, native: dict, nsl, les, anat, pts, occ, s, W, intensity) -> None:
    """Add a lesion to the native images through the site's slice profile ``W``."""
    frac = np.tensordot(W, occ, axes=(1, 0))
    q = (pts - les.centre) @ les.rot
    for mod in MODALITIES:
        wm = anat.contrast[mod]["wm"]
        m = _pattern(les, mod, q, s)
        blk = native[mod][nsl]
        if np.isscalar(m):
            blk += frac * (intensity(les, anat, mod) - blk)
        else:
            tgt = (wm + (intensity(les, anat, mod) - wm) * m).astype(np.float32)
            blk += np.tensordot(W, occ * tgt, axes=(1, 0)) - frac * blk


def annotate(ltab, lesions: list) -> None:
    """Clinical-profile columns of a visit's lesion table."""
    by_id = {l.lesion_id: l for l in lesions}
    ltab["location"] = [by_id[i].location for i in ltab["lesion_id"]]
    ltab["contrast_type"] = [by_id[i].contrast_type for i in ltab["lesion_id"]]
    ltab["flair_contrast_factor"] = [by_id[i].intensity["FLAIR"] for i in ltab["lesion_id"]]


# ============================================================================ mimics
def _landmarks(t) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    """(kind, template LPS centre, semi-axes x/y/z mm, clip) of each mimic site."""
    vent = np.argwhere(t.vent_prox > 0.4)
    vp = t.origin2 + 2.0 * vent[:, ::-1]
    out = []
    for sgn in (-1.0, 1.0):
        h = vp[np.sign(vp[:, 0]) == sgn]
        a = h[(np.abs(h[:, 0]) >= 6) & (np.abs(h[:, 0]) <= 25) & (h[:, 2] > 0)]
        b = h[(np.abs(h[:, 0]) >= 8) & (np.abs(h[:, 0]) <= 35)]
        if len(a):
            tip = a[a[:, 1].argmin()]
            out.append(("cap", tip + [0.0, -2.0, 0.0], np.array([4.0, 2.0, 3.5]), "paren"))
        if len(b):
            tip = b[b[:, 1].argmax()]
            out.append(("cap", tip + [0.0, 2.0, 0.0], np.array([3.5, 2.0, 3.5]), "paren"))
            y0, y1 = b[:, 1].min(), b[:, 1].max()
            atrium = b[b[:, 1] > y0 + 0.6 * (y1 - y0)].mean(axis=0)
            out.append(("choroid_plexus", atrium, np.array([3.0, 5.0, 3.0]), "csf"))
    mid = vp[np.abs(vp[:, 0]) < 6]
    if len(mid):
        out.append(("septum", mid[mid[:, 2] > mid[:, 2].mean()].mean(axis=0) * [0, 1, 1], np.array([1.0, 7.0, 4.0]),
                    None))
    cp = t.origin + t.res * np.argwhere(t.csf > 0.5)[:, ::-1]
    x, y, z = np.abs(cp[:, 0]), -cp[:, 1], cp[:, 2]
    for sel, axes in (
        ((x < 3) & (z > -10) & (z < 10) & (y > -25) & (y < 5), [2.0, 6.0, 4.0]),  # third ventricle
        ((x < 5) & (y > -55) & (y < -35) & (z > -45) & (z < -20), [3.0, 3.0, 4.0]),  # fourth ventricle
        ((x < 8) & (y > -20) & (y < -5) & (z > -40) & (z < -20), [4.0, 3.0, 5.0]),  # prepontine cistern
    ):
        if sel.any():
            out.append(("flow_artefact", cp[sel].mean(axis=0), np.array(axes), "csf"))
    return out


#: Contrast of each mimic kind to WM, as a fraction of the lesion's (None: tissue unchanged).
_MIMIC_FACTORS = {
    "cap": {"FLAIR": (0.8, 1.1), "T2w": (0.4, 0.6), "T1w": (0.5, 0.8)},
    "choroid_plexus": {"FLAIR": (0.9, 1.3), "T2w": (0.3, 0.5), "T1w": (0.9, 1.0)},
    "septum": {"FLAIR": (0.8, 1.1), "T2w": (0.2, 0.4), "T1w": (0.6, 0.9)},
    "flow_artefact": {"FLAIR": (0.9, 1.4)},
}


def build_mimics(t, anat, p, rng) -> list:
    """The subject's mimic objects (subject space): (kind, object, clip, factor per modality)."""
    from t2lesion.synth.anatomy import _random_rotation
    from t2lesion.synth.lesions import _Lesion

    strength, size = float(knobs(p)["mimic_strength"]), float(knobs(p)["mimic_size"])
    out = []
    for kind, c, axes, clip in _landmarks(t):
        cs = anat.deformation.inverse_points(c[None, :] + rng.normal(0.0, 1.0, (1, 3)))[0]
        rot = np.eye(3) if kind in ("cap", "septum") else _random_rotation(rng)
        obj = _Lesion(lesion_id=0, onset=0, centre=cs, rot=rot, comp_centres=np.zeros((1, 3)),
                      comp_axes=(axes * size * rng.uniform(0.8, 1.25, 3))[None, :], scale=np.ones(len(p.weeks)),
                      intensity={})
        fac = {m: strength * float(rng.uniform(*r)) for m, r in _MIMIC_FACTORS[kind].items()}
        out.append((kind, obj, clip, fac))
    return out


def paint_mimics(rz: SubjectRealism, native: dict, anat, geo, rng) -> np.ndarray:
    """Paint the mimics onto the native images; return their label map (index into
    :data:`MIMIC_KINDS` + 1 where the box slice fraction is >= 0.5)."""
    R, tr, origin, vox, k = geo
    nz, ny, nx = native["brain"].shape
    labels = np.zeros((nz, ny, nx), np.uint8)
    edge = 1.0
    for kind, obj, clip, fac in rz.mimics:
        amp = float(rng.uniform(0.4, 1.0)) if kind == "flow_artefact" else 1.0
        r = obj.extent() + edge
        cn = R.T @ (obj.centre - tr)
        lo = np.floor((cn - r - origin) / vox).astype(int)
        hi = np.ceil((cn + r - origin) / vox).astype(int) + 1
        lo[2], hi[2] = lo[2] - rz.slice_pad, hi[2] + rz.slice_pad
        lo, hi = np.maximum(lo, 0), np.minimum(hi, [nx, ny, nz])
        if np.any(lo >= hi):
            continue
        xs = origin[0] + vox[0] * np.arange(lo[0], hi[0])
        ys = origin[1] + vox[1] * np.arange(lo[1], hi[1])
        zs = origin[2] + vox[2] / k * (np.arange(lo[2] * k, hi[2] * k) - (k - 1) / 2.0)
        pts = (R[:, 0] * xs[None, None, :, None] + R[:, 1] * ys[None, :, None, None]
               + R[:, 2] * zs[:, None, None, None] + tr)
        occ = obj.occupancy(pts, 1.0, edge)
        if not occ.any():
            continue
        if clip is not None:
            sub = occ > 0
            idx = anat.to_index(pts[sub])
            paren = np.clip(ndi.map_coordinates(anat.paren, idx, order=1, mode="constant"), 0, 1)
            brain = np.clip(ndi.map_coordinates(anat.brain, idx, order=1, mode="constant"), 0, 1)
            occ[sub] *= paren if clip == "paren" else np.clip(brain - paren, 0, 1)
        occ = occ.astype(np.float32)
        W = rz.profile_matrix(lo[2], hi[2], k, vox[2])
        frac = np.tensordot(W, occ, axes=(1, 0))
        nsl = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
        for mod, f in fac.items():
            c = anat.contrast[mod]
            target = np.float32(c["wm"] + (c["lesion"] - c["wm"]) * f * amp)
            blk = native[mod][nsl]
            blk += frac * (target - blk)
        box = occ.reshape(hi[2] - lo[2], k, hi[1] - lo[1], hi[0] - lo[0]).mean(axis=1)
        lab = labels[nsl]
        lab[(box >= 0.5) & (lab == 0)] = MIMIC_KINDS.index(kind) + 1
    return labels


def blur_inplane(rz: SubjectRealism, native: dict, vox) -> None:
    """The site's in-plane resolution: a Gaussian blur of ``inplane_fwhm_mm`` in x and y."""
    fwhm = float(rz.site["inplane_fwhm_mm"])
    if fwhm <= 0:
        return
    sig = fwhm / 2.3548
    for mod in MODALITIES:
        native[mod] = ndi.gaussian_filter(native[mod], (0.0, sig / vox[1], sig / vox[0]), mode="nearest")


def subject_truth(rz: SubjectRealism) -> dict:
    """The site columns of ``truth/subjects.tsv``."""
    return {"site": rz.site["name"], **{f"site_{k}": v for k, v in rz.site.items() if k != "name"}}


def mimic_rows(pid: str, rz: SubjectRealism) -> list[dict]:
    return [{"participant_id": pid, "kind": kind, "x_subject": o.centre[0], "y_subject": o.centre[1],
             "z_subject": o.centre[2], "clip": clip or "none", **{f"factor_{m}": f for m, f in fac.items()}}
            for kind, o, clip, fac in rz.mimics]
