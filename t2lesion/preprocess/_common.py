"""Shared pieces of the preprocessing stage: threads, template, target grid, transforms."""

from __future__ import annotations

import logging
import os
import resource
from functools import lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from t2lesion.errors import InputError
from t2lesion.io import atomic_output, read_image, read_with_itk

log = logging.getLogger(__name__)

#: Target grid: MNI-aligned, axial, 1 x 1 x 3 mm (x, y, z) -- the trials' native resolution
#: on which the paper trains (docs/DESIGN.md §2). Arrays are (z, y, x).
TARGET_SPACING = (1.0, 1.0, 3.0)
SPACE_LABEL = "MNI1x1x3"


def set_threads(threads: int) -> int:
    """Make ITK (in this process and in subprocesses such as ROBEX) use ``threads`` threads.

    Snakemake's ``threads:`` is passed through here so that two 1-thread jobs on two cores
    never oversubscribe (ITK's default is one thread per core).
    """
    n = max(1, int(threads))
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(n)
    for var in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = str(n)
    return n


def cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process and its waited-for children."""
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


# --------------------------------------------------------------------------- template

def nib_to_sitk(nimg, dtype=np.float32) -> sitk.Image:
    """Convert a nibabel image (RAS affine, (i, j, k) array) to SimpleITK (LPS, (z, y, x))."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(nimg.affine, dtype=float)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = affine[:3, :3] / spacing
    arr = np.asarray(nimg.get_fdata(dtype=np.float32)).astype(dtype).transpose(2, 1, 0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in affine[:3, 3]))
    img.SetDirection(tuple(float(d) for d in direction.ravel()))
    return img


#: The 1 mm MNI152 2009 (sym) T1 template file shipped inside nilearn (what
#: ``nilearn.datasets.load_mni152_template`` reads).
_MNI_FILE = ("datasets", "data", "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")


def _shipped_template_path() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*_MNI_FILE)
    return path if path.is_file() else None


@lru_cache(maxsize=4)
def mni_template(resolution: int = 1) -> sitk.Image:
    """nilearn's shipped MNI152 2009 (sym) T1 template, skull-stripped, float32 in [0, 1].

    At 1 mm the shipped file is read directly -- the same voxels as
    ``nilearn.datasets.load_mni152_template()`` (scaled by its maximum) without importing
    nilearn, which costs ~3 CPU-s per rule job. Other resolutions go through nilearn.
    """
    path = _shipped_template_path() if resolution == 1 else None
    if path is not None:
        img = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat32)
        peak = float(sitk.GetArrayViewFromImage(img).max())
        return sitk.Cast(img / peak, sitk.sitkFloat32)
    from nilearn.datasets import load_mni152_template

    return nib_to_sitk(load_mni152_template(resolution=resolution))


@lru_cache(maxsize=4)
def mni_brain_mask(resolution: int = 1, threshold: float = 0.2) -> sitk.Image:
    """nilearn's MNI152 brain mask (template > 0.2, as ``load_mni152_brain_mask``), uint8."""
    return sitk.Cast(mni_template(resolution) > threshold, sitk.sitkUInt8)


@lru_cache(maxsize=4)
def _template_geometry(resolution: int = 1) -> tuple[tuple, tuple, tuple, tuple]:
    """(spacing, size, origin, direction) of :func:`mni_template`; at 1 mm from the shipped
    file's header alone (the resample job needs the grid, not the template's voxels)."""
    path = _shipped_template_path() if resolution == 1 else None
    if path is not None:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        # + 0.0: the header gives -0.0 where the image has 0.0; equal, but keep them identical
        direction = tuple(float(d) + 0.0 for d in reader.GetDirection())
        return reader.GetSpacing(), reader.GetSize(), reader.GetOrigin(), direction
    tpl = mni_template(resolution)
    return tpl.GetSpacing(), tpl.GetSize(), tpl.GetOrigin(), tpl.GetDirection()


def target_grid(spacing=TARGET_SPACING, resolution: int = 1) -> sitk.Image:
    """An empty uint8 image defining the target grid.

    MNI-aligned (the template's direction cosines), covering the template's field of view,
    with ``spacing`` (x, y, z) mm; the first voxel's outer edge sits at the template's.
    """
    t_spacing, t_size, t_origin, t_direction = _template_geometry(resolution)
    t_sp = np.array(t_spacing)
    t_size = np.array(t_size)
    sp = np.asarray(spacing, dtype=float)
    if sp.shape != (3,) or (sp <= 0).any():
        raise InputError(f"target grid spacing must be 3 positive numbers, got {spacing!r}")
    direction = np.array(t_direction).reshape(3, 3)
    edge = np.array(t_origin) - direction @ (0.5 * t_sp)
    size = np.ceil(t_size * t_sp / sp - 1e-6).astype(int)
    origin = edge + direction @ (0.5 * sp)
    grid = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    grid.SetSpacing(tuple(float(s) for s in sp))
    grid.SetOrigin(tuple(float(o) for o in origin))
    grid.SetDirection(tuple(t_direction))
    return grid


# --------------------------------------------------------------------------- transforms

def transform_to_matrix(tx: sitk.Transform) -> np.ndarray:
    """4x4 homogeneous matrix of an affine-type ITK transform (maps fixed -> moving points)."""
    origin = np.array(tx.TransformPoint((0.0, 0.0, 0.0)))
    m = np.eye(4)
    for i in range(3):
        e = [0.0, 0.0, 0.0]
        e[i] = 1.0
        m[:3, i] = np.array(tx.TransformPoint(tuple(e))) - origin
    m[:3, 3] = origin
    return m


def matrix_to_transform(m: np.ndarray) -> sitk.AffineTransform:
    """ITK affine transform from a 4x4 homogeneous matrix."""
    m = np.asarray(m, dtype=float)
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(tuple(m[:3, :3].ravel()))
    tx.SetTranslation(tuple(m[:3, 3]))
    return tx


def read_transform(path: str | Path) -> sitk.Transform:
    """Read an ITK transform file, failing with a message naming ``path``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: transform file not found")
    tx = read_with_itk(sitk.ReadTransform, path, "an ITK transform")
    if tx.GetDimension() != 3:
        raise InputError(f"{path}: expected a 3-D transform, found {tx.GetDimension()}-D")
    try:
        m = transform_to_matrix(tx)
    except RuntimeError as exc:  # pragma: no cover - exotic transform types
        raise InputError(f"{path}: not an affine-type transform ({exc})") from None
    if not np.isfinite(m).all() or abs(np.linalg.det(m[:3, :3])) < 1e-6:
        raise InputError(f"{path}: transform is degenerate or not finite")
    return tx


def write_transform(tx: sitk.Transform, path: str | Path) -> None:
    """Write an ITK transform file, atomically (a failed step leaves nothing behind)."""
    with atomic_output(path) as tmp:
        sitk.WriteTransform(tx, str(tmp))


def write_image(img: sitk.Image, path: str | Path) -> None:
    """Write an image, atomically, compressed when the name ends in .gz."""
    with atomic_output(path) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=str(path).endswith(".gz"))


def read_mask(
    path: str | Path,
    like: sitk.Image | None = None,
    like_path: str | Path | None = None,
    allow_empty: bool = False,
    check_data: bool = False,
) -> sitk.Image:
    """Read a binary mask (uint8 0/1); if ``like`` is given it must share that image's geometry.

    ``check_data`` (raw inputs such as GT masks) also reads the voxels with nibabel, which
    notices truncated files that ITK reads without complaint.
    """
    from t2lesion.io import same_geometry

    img = read_image(path, check_finite=check_data)
    mask = sitk.Cast(img > 0.5, sitk.sitkUInt8) if img.GetPixelID() != sitk.sitkUInt8 else sitk.Cast(img > 0, sitk.sitkUInt8)
    mask.CopyInformation(img)
    if like is not None and not same_geometry(mask, like):
        raise InputError(
            f"{path}: mask geometry (size {mask.GetSize()}, spacing {tuple(round(s, 3) for s in mask.GetSpacing())}) "
            f"does not match its image {like_path or ''} (size {like.GetSize()}, "
            f"spacing {tuple(round(s, 3) for s in like.GetSpacing())})"
        )
    if not allow_empty and not sitk.GetArrayViewFromImage(mask).any():
        raise InputError(f"{path}: mask is empty")
    return mask


def as_float(img: sitk.Image) -> sitk.Image:
    return sitk.Cast(img, sitk.sitkFloat32) if img.GetPixelID() != sitk.sitkFloat32 else img
