"""One subject's anatomy in subject space: rigid-rotation helpers, the smooth random
deformation of the template, the skull/scalp layers and the clean tissue images
(slice profile applied once per subject)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from t2lesion.bids import MODALITIES
from t2lesion.synth.params import SynthParams
from t2lesion.synth.template import _Template, _up2


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
    realism: object = None  # realism.SubjectRealism under the clinical profile, else None

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


def _build_anatomy(
    t: _Template, p: SynthParams, rng: np.random.Generator, slab_weights: np.ndarray | None = None
) -> _Anatomy:
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
    w = _slab_weights(float(p.voxel_mm[2]), t.res) if slab_weights is None else slab_weights
    for name, arr in list(images.items()) + [("brain", brain)]:
        img = sitk.GetImageFromArray(ndi.correlate1d(arr, w, axis=0, mode="constant"))
        img.SetOrigin(tuple(float(x) for x in t.origin))
        img.SetSpacing((t.res,) * 3)
        anat.sitk_images[name] = img
    anat.images = {}  # the SimpleITK copies are what visits sample; free the arrays
    return anat
