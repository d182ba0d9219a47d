"""Image I/O with checks that turn library tracebacks into clear messages.

All arrays follow SimpleITK's order, (slices, rows, cols) = (z, y, x), which is
also the model's axis order (docs/DESIGN.md §2).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from t2lesion.errors import InputError


def read_with_itk(reader, path: str | Path, what: str):
    """``reader(str(path))`` (an ITK reader); its error becomes an InputError naming ``path``."""
    try:
        return reader(str(path))
    except RuntimeError as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise InputError(f"{path}: cannot be read as {what} ({last})") from None


def read_image(path: str | Path, *, check_finite: bool = False) -> sitk.Image:
    """Read a 3-D scalar image, failing with a message naming ``path`` if it is unusable.

    Rejected: missing, unreadable or corrupt files, images that are not 3-D (4-D
    included), zero extent, and, with ``check_finite``, NaN/Inf voxels. ITK's NIfTI
    reader silently turns NaN into 0, so finiteness is checked on the raw data
    (nibabel) — the validation rule does this once per image.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if path.name.endswith((".nii", ".nii.gz")):
        _check_nifti(path, check_finite)
    img = read_with_itk(sitk.ReadImage, path, "an image")
    if img.GetDimension() != 3:
        raise InputError(f"{path}: expected a 3-D image, found {img.GetDimension()}-D {img.GetSize()}")
    if min(img.GetSize()) == 0:
        raise InputError(f"{path}: image has zero extent {img.GetSize()}")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: expected a scalar image, found {img.GetNumberOfComponentsPerPixel()} components")
    return img


def _check_nifti(path: Path, check_finite: bool) -> None:
    import nibabel as nib

    try:
        nimg = nib.load(str(path))
        shape = nimg.shape
    except Exception as exc:  # nibabel raises several types for corrupt files
        raise InputError(f"{path}: cannot be read as a NIfTI image ({type(exc).__name__}: {exc})") from None
    if len(shape) != 3:
        raise InputError(f"{path}: expected a 3-D image, found {len(shape)}-D {tuple(shape)}")
    if min(shape) == 0:
        raise InputError(f"{path}: image has zero extent {tuple(shape)}")
    header = nimg.header
    if hasattr(header, "get_qform") and not int(header["qform_code"]) and not int(header["sform_code"]):
        # ITK then takes an identity orientation and nibabel a flipped one: left and right are
        # a guess, which no later check (registration, the MNI brain check) can undo
        raise InputError(f"{path}: its header gives no orientation (qform_code and sform_code are both 0), so "
                         "left and right are unknown; convert the image again from its DICOMs (e.g. dcm2niix)")
    if check_finite:
        try:
            data = np.asanyarray(nimg.dataobj)
        except Exception as exc:
            raise InputError(f"{path}: voxel data cannot be read ({type(exc).__name__}: {exc})") from None
        if np.issubdtype(data.dtype, np.floating):
            bad = int(np.count_nonzero(~np.isfinite(data)))
            if bad:
                raise InputError(f"{path}: contains {bad} NaN/Inf voxels")


def read_array(path: str | Path, dtype=np.float32) -> tuple[np.ndarray, sitk.Image]:
    """Read ``path`` and return its voxels as a (z, y, x) array plus the image (for geometry)."""
    img = read_image(path)
    return sitk.GetArrayFromImage(img).astype(dtype, copy=False), img


@contextlib.contextmanager
def atomic_output(path: str | Path):
    """Yield a temporary sibling of ``path`` that becomes ``path`` only if the block succeeds.

    The temporary name keeps the file's extension (writers pick the format from it),
    so an interrupted or failed step never leaves a half-written output behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".part-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_tsv(df, path: str | Path, **to_csv) -> None:
    """Write a pandas table as TSV, atomically; ``to_csv`` passes e.g. ``na_rep``."""
    with atomic_output(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False, **to_csv)


def write_image(img: sitk.Image, path: str | Path) -> None:
    """Write an image (compressed NIfTI by extension), atomically."""
    with atomic_output(path) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=True)


def write_array(arr: np.ndarray, reference: sitk.Image, path: str | Path) -> None:
    """Write a (z, y, x) array with the geometry of ``reference``, atomically."""
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(reference)
    write_image(out, path)


def voxel_volume_ml(img: sitk.Image) -> float:
    """Volume of one voxel in mL (1 mL = 1000 mm³), from the header spacing."""
    return float(np.prod(img.GetSpacing())) / 1000.0


def same_geometry(a: sitk.Image, b: sitk.Image, tol: float = 1e-3) -> bool:
    """True when two images share size, spacing, origin and direction (within ``tol``)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol)
    )
