"""The anatomy shared by every subject: nilearn's MNI152 2009 maps on a padded grid, the
head geometry around the brain and the allowed lesion-centre voxels (once per process)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from t2lesion.synth.params import SynthParams


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
