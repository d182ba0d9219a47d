"""One visit's acquisition: head pose, the native 1×1×3 mm grid, resampling of the subject
anatomy, lesions integrated over the slice, gain, bias field and Rician noise, and the
visit's lesion truth measured on its GT mask (:class:`SynthVisit`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage as ndi

from t2lesion.bids import MODALITIES, session_label
from t2lesion.synth import realism as _realism
from t2lesion.synth.anatomy import _Anatomy, _rotation
from t2lesion.synth.lesions import _Lesion, _lesion_intensity, _subject_centroid
from t2lesion.synth.params import SynthParams
from t2lesion.synth.template import _Template


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
    #: clinical profile: FLAIR-bright non-lesions (index into realism.MIMIC_KINDS + 1), else None
    mimic_labels: np.ndarray | None = None

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
    rz = anat.realism  # the clinical profile's additions (None: the default profile)
    pad = rz.slice_pad if rz is not None else 0  # the slice profile reaches neighbouring slices
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
        iz0 = max(int(np.floor((cn[2] - r - origin[2]) / vox[2] - 0.5)) - pad, 0)
        iz1 = min(int(np.ceil((cn[2] + r - origin[2]) / vox[2] + 0.5)) + 1 + pad, nz)
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
        if rz is None:
            for mod in MODALITIES:
                target = _lesion_intensity(les, anat, mod)
                blk = native[mod][nsl]
                blk += frac * (target - blk)
        else:  # contrast patterns, seen through the site's slice profile
            W = rz.profile_matrix(iz0, iz1, k, vox[2])
            _realism.paint_lesion(rz, native, nsl, les, anat, pts, occ, s, W, _lesion_intensity)
        better = frac > best_frac[nsl]
        best_frac[nsl][better] = frac[better]
        best_lab[nsl][better] = les.lesion_id

    def down(a):
        return a.reshape(nz, k, ny, nx).mean(axis=1)

    mimic_labels = None
    if rz is not None:
        vrng = np.random.default_rng(np.random.SeedSequence([rz.seed[0], 7, rz.seed[1], v]))
        mimic_labels = _realism.paint_mimics(rz, native, anat, (R, tr, origin, vox, k), vrng)
        _realism.blur_inplane(rz, native, vox)
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
    if rz is not None:
        _realism.annotate(ltab, lesions)
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
        mimic_labels=mimic_labels,
    )


def _euler_deg(R: np.ndarray) -> list[float]:
    ay = -np.arcsin(np.clip(R[2, 0], -1, 1))
    ax = np.arctan2(R[2, 1], R[2, 2])
    az = np.arctan2(R[1, 0], R[0, 0])
    return [float(np.rad2deg(a)) for a in (ax, ay, az)]
