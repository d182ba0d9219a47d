"""Lesions: continuous objects in subject space (unions of soft-edged ellipsoids), where
they are placed, and their course over the visits (new, enlarging, shrinking lesions
following the participant's target TLV trajectory)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from t2lesion.bids import MODALITIES
from t2lesion.errors import InputError
from t2lesion.synth.anatomy import _Anatomy, _random_rotation
from t2lesion.synth.params import SynthParams
from t2lesion.synth.template import _Template


def _lesion_cdf(t: _Template, p: SynthParams) -> np.ndarray:
    dv = t.cand_dvent.astype(float)
    w = np.exp(-dv / p.lesion_periventricular_mm) + p.lesion_deep_wm_weight
    c = np.cumsum(w)
    return c / c[-1]


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
