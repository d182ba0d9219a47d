"""The preprocessing QC picture (t2lesion.plots.qc): known answers on small synthetic arrays,
checked pixel by pixel, and the path-level writer (orientation, title, no matplotlib)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from t2lesion.errors import InputError
from t2lesion.plots import qc
from t2lesion.plots.qc import (
    COL_LABEL, GAP, LEFT, PAD, TITLE_LINE, choose_slices, lesion_window, outline, qc_image, qc_png, to_grey, window,
)

REPO = Path(__file__).resolve().parent.parent
ROWS = ("T1w", "T2w", "FLAIR")
YELLOW, RED = (255, 255, 0), (255, 0, 0)


def _arrays(shape, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.uniform(0, 100, shape).astype(np.float32) for k in ROWS}


def _is(img: np.ndarray, colour) -> np.ndarray:
    return np.all(img == np.array(colour, np.uint8), axis=-1)


def _ring(h0, h1, w0, w1, shape) -> np.ndarray:
    """Pixels on the border of the rectangle [h0, h1) x [w0, w1) in an array of ``shape``."""
    r = np.zeros(shape, bool)
    r[h0:h1, w0:w1] = True
    r[h0 + 1:h1 - 1, w0 + 1:w1 - 1] = False
    return r


def _expected_canvas(panel_masks: dict[tuple[int, int], np.ndarray], size) -> np.ndarray:
    """A full-picture boolean canvas with each panel's expected pixels at its place."""
    width, height = size
    (ph, pw) = next(iter(panel_masks.values())).shape
    top = PAD + TITLE_LINE + COL_LABEL  # one title line
    out = np.zeros((height, width), bool)
    for (r, c), m in panel_masks.items():
        y0, x0 = top + r * (ph + GAP), LEFT + c * (pw + GAP)
        out[y0:y0 + ph, x0:x0 + pw] = m
    return out


def test_outline_is_the_mask_pixels_with_an_outside_4_neighbour():
    m = np.zeros((6, 7), bool)
    m[1:5, 2:6] = True
    m[0, 0] = True  # on the array border: outside the array counts as outside
    want = _ring(1, 5, 2, 6, m.shape)
    want[0, 0] = True
    assert np.array_equal(outline(m), want)
    assert not outline(np.zeros((3, 3), bool)).any()
    assert outline(np.ones((3, 3), bool)).sum() == 8  # only the centre is inner


def test_square_mask_and_gt_blob_outlines_size_and_layout():
    shape, up = (6, 20, 24), 2
    arrs = _arrays(shape)
    mask = np.zeros(shape, bool)
    mask[:, 5:15, 6:18] = True
    gt = np.zeros(shape, bool)
    zs = choose_slices(mask, 5)
    z_gt = zs[1]
    gt[z_gt, 8:11, 9:13] = True  # inside the mask, away from its border
    img = qc_image(arrs, mask, gt, (1.0, 1.0), title="t", n_slices=5, upscale=up)

    ph, pw = shape[1] * up, shape[2] * up
    n = len(zs)
    assert img.size == (LEFT + n * pw + (n - 1) * GAP + PAD,
                        PAD + TITLE_LINE + COL_LABEL + 3 * ph + 2 * GAP + PAD)
    assert img.mode == "RGB"
    pix = np.asarray(img)
    yellow_ring = _ring(5 * up, 15 * up, 6 * up, 18 * up, (ph, pw))
    red_ring = _ring(8 * up, 11 * up, 9 * up, 13 * up, (ph, pw))
    want_yellow = _expected_canvas({(r, c): yellow_ring for r in range(3) for c in range(n)}, img.size)
    want_red = _expected_canvas({(r, c): red_ring for r in range(3) for c in range(n) if zs[c] == z_gt},
                                img.size)
    # exactly on the outlines, in every panel; none inside, outside or in the margins
    assert np.array_equal(_is(pix, YELLOW), want_yellow)
    assert np.array_equal(_is(pix, RED), want_red)
    # inside and outside the outlines the pixels are grey
    grey = ~(want_yellow | want_red)
    assert np.all((pix[..., 0] == pix[..., 1]) & (pix[..., 1] == pix[..., 2])
                  | ~grey)


def test_gt_outline_is_drawn_over_the_mask_outline():
    shape = (3, 8, 8)
    mask = np.zeros(shape, bool)
    mask[:, 2:6, 2:6] = True
    img = qc_image(_arrays(shape), mask, mask.copy(), title="", slices=[1], upscale=1)
    pix = np.asarray(img)
    assert not _is(pix, YELLOW).any()
    assert _is(pix, RED).sum() == 3 * 12  # the 4x4 square's border, in each of the three rows


@pytest.mark.parametrize("spacing_xy, factors", [((1.0, 2.0), (4, 2)), ((2.0, 1.0), (2, 4)),
                                                 ((0.5, 0.5), (2, 2))])
def test_pixel_aspect_follows_the_voxel_spacing(spacing_xy, factors):
    """Panel height/width per voxel: upscale x (y or x spacing) / the smaller spacing."""
    shape = (4, 10, 12)
    mask = np.zeros(shape, bool)
    mask[:, 2:7, 3:9] = True
    img = qc_image(_arrays(shape), mask, None, spacing_xy, title="t", slices=[1, 2], upscale=2)
    fy, fx = factors
    ph, pw = shape[1] * fy, shape[2] * fx
    assert img.size == (LEFT + 2 * pw + GAP + PAD, PAD + TITLE_LINE + COL_LABEL + 3 * ph + 2 * GAP + PAD)
    ring = _ring(2 * fy, 7 * fy, 3 * fx, 9 * fx, (ph, pw))
    want = _expected_canvas({(r, c): ring for r in range(3) for c in range(2)}, img.size)
    assert np.array_equal(_is(np.asarray(img), YELLOW), want)


def test_window_maps_the_995th_percentile_to_white():
    assert list(to_grey(np.array([10.0, 20.0, 15.0, 5.0, 99.0]), 10.0, 20.0)) == [0, 255, 128, 0, 255]
    assert list(to_grey(np.array([1.0, 1.0, 2.0]), 1.0, 1.0)) == [0, 0, 255]  # constant window

    shape = (3, 10, 10)
    rng = np.random.default_rng(1)
    t1 = rng.uniform(0, 100, shape).astype(np.float32)
    mask = np.zeros(shape, bool)
    mask[:, 1:9, 1:9] = True  # 192 voxels
    t1[1, 4, 4] = t1[1, 4, 5] = 500.0  # ~1 % of the brain: the 99.5th percentile is exactly 500
    t1[1, 0, 0] = 1e6  # outside the mask: no influence on the window
    lo, hi = np.percentile(t1[mask], [1, 99.5])
    assert hi == 500.0 and window(t1, mask) == (lo, hi)
    arrs = {"T1w": t1, "T2w": t1.copy(), "FLAIR": t1.copy()}
    img = qc_image(arrs, mask, None, title="t", slices=[1], upscale=1)
    pix = np.asarray(img)
    top = PAD + TITLE_LINE + COL_LABEL
    panel = pix[top:top + 10, LEFT:LEFT + 10, 0]
    assert panel[4, 4] == panel[4, 5] == 255
    assert panel[0, 0] == 255  # above the window: clipped to white
    v = t1[1, 3, 3]
    assert panel[3, 3] == int(np.clip((v - lo) / (hi - lo) * 255, 0, 255) + 0.5)


def _flair_phantom(seed=4):
    """A FLAIR-like volume (z, y, x) = (5, 60, 60): a disc of brain (CSF rim 70, grey matter
    470, white matter core 420, noise SD 15) with one bright lesion (800) of 32 voxels,
    0.3 % of the brain: a load at which the brain's 99.5th percentile lies in normal tissue."""
    rng = np.random.default_rng(seed)
    shape = (5, 60, 60)
    yy, xx = np.mgrid[:60, :60]
    r = np.hypot(yy - 29.5, xx - 29.5)
    brain = np.broadcast_to(r < 25, shape).copy()
    wm = np.broadcast_to(r < 17, shape).copy()
    arr = np.where(r < 17, 420.0, np.where(r < 22, 470.0, 70.0))[None].repeat(5, axis=0)
    lesion = np.zeros(shape, bool)
    lesion[2:4, 26:30, 31:35] = True
    wm &= ~lesion
    arr[lesion] = 800.0
    arr = np.where(brain, arr + rng.normal(0, 15, shape), 0.0).astype(np.float32)
    return arr, brain, wm, lesion


def test_flair_window_shows_lesions_brighter_than_white_matter_not_clipped_with_it():
    arr, brain, wm, lesion = _flair_phantom()
    assert 0.002 < lesion.sum() / brain.sum() < 0.005
    arrs = {"T1w": arr, "T2w": arr.copy(), "FLAIR": arr.copy()}
    img = qc_image(arrs, brain, None, title="t", slices=[2], upscale=1)
    pix = np.asarray(img)[..., 0].astype(float)
    top = PAD + TITLE_LINE + COL_LABEL
    flair = pix[top + 2 * (60 + GAP):top + 2 * (60 + GAP) + 60, LEFT:LEFT + 60]  # third row, the one slice
    les, white = flair[lesion[2]], flair[wm[2]]
    assert les.mean() - white.mean() > 80, (les.mean(), white.mean())
    assert 80 < white.mean() < 170 and white.max() < 200  # normal white matter mid-grey, nowhere near white
    assert les.min() > white.max()  # every lesion pixel brighter than every white-matter pixel
    assert les.mean() > 190
    # the same known answer from the window itself: mean - 3 SD .. mean + 4 SD of the brain's core voxels
    vals = arr[brain]
    core = vals[(vals >= np.percentile(vals, 1)) & (vals <= np.percentile(vals, 99))]
    assert lesion_window(arr, brain) == pytest.approx((core.mean() - 3 * core.std(), core.mean() + 4 * core.std()))
    # the T1w row keeps the percentile window, under which this FLAIR's white matter is almost white
    # and the lesions clipped with the brightest tissue: what the FLAIR window is for
    t1w = pix[top:top + 60, LEFT:LEFT + 60]
    old = to_grey(arr[2], *window(arr, brain)).astype(float)
    inside = brain[2] & ~outline(brain[2])  # the mask outline is drawn yellow over the picture
    assert np.array_equal(t1w[inside], old[inside])
    assert old[wm[2]].mean() > 190 and old[lesion[2]].mean() - old[wm[2]].mean() < 60


def test_flair_window_of_a_z_scored_image_is_minus_3_to_4():
    from t2lesion.preprocess.normalise import normalise_array

    arr, brain, _, _ = _flair_phantom(seed=5)
    lo, hi = lesion_window(normalise_array(arr, brain), brain)
    assert lo == pytest.approx(-3.0, abs=1e-4) and hi == pytest.approx(4.0, abs=1e-4)
    assert lesion_window(np.zeros((2, 3, 3), np.float32), np.zeros((2, 3, 3), bool)) == (0.0, 0.0)


def _write(path: Path, arr: np.ndarray, direction=None, spacing=(1.0, 1.0, 3.0)) -> Path:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    if direction is not None:
        img.SetDirection(direction)
    sitk.WriteImage(img, str(path))
    return path


def _visit(root: Path, bright_x: int, direction=None, gt=False) -> list:
    """A small visit (z, y, x) = (8, 24, 100): noise in 0-100 with a bright column at
    index ``bright_x`` on every slice; the brain mask covers everything."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    paths = []
    for k in ROWS:
        a = rng.uniform(0, 100, (8, 24, 100)).astype(np.float32)
        a[:, :, bright_x] = 1000.0
        paths.append(_write(root / f"sub-01_ses-01_space-X_desc-preproc_{k}.nii.gz", a, direction))
    paths.append(_write(root / "mask.nii.gz", np.ones((8, 24, 100), np.uint8), direction))
    g = np.zeros((8, 24, 100), np.uint8)
    g[3:5, 10:13, 40:44] = 1
    paths.append(_write(root / "gt.nii.gz", g, direction) if gt else None)
    return paths


@pytest.mark.parametrize("direction, bright_x", [
    (None, 90),  # LPS grid: +x index towards the patient's left
    ((-1, 0, 0, 0, -1, 0, 0, 0, 1), 9),  # RAS grid: a small x index is on the patient's left
])
def test_radiological_view_patient_left_on_image_right(tmp_path, direction, bright_x):
    out = qc_png(*_visit(tmp_path / "in", bright_x, direction), tmp_path / "sub-01_ses-01_space-X_qc.png")
    pix = np.asarray(Image.open(out).convert("RGB"))
    ph, pw = 24 * 2, 100 * 2
    top = PAD + TITLE_LINE + COL_LABEL
    assert pix.shape[0] == top + 3 * ph + 2 * GAP + PAD  # a one-line title at this width
    for r in range(3):
        panel = pix[top + r * (ph + GAP):top + r * (ph + GAP) + ph, LEFT:LEFT + pw]
        ys, xs = np.nonzero(_is(panel, (255, 255, 255)))
        assert ys.size and xs.min() > pw / 2, (r, xs)
        assert set(xs.tolist()) == {2 * (99 - 9), 2 * (99 - 9) + 1}  # the column's mirror image in LPS


def test_qc_png_title_atomic_deterministic_and_geometry_check(tmp_path, monkeypatch):
    paths = _visit(tmp_path / "in", 50, gt=True)
    titles = []
    real = qc.qc_image
    monkeypatch.setattr(qc, "qc_image", lambda *a, **k: titles.append(a[4]) or real(*a, **k))
    a = qc_png(*paths, tmp_path / "a" / "sub-01_ses-01_space-X_qc.png")
    b = qc_png(*paths, tmp_path / "b" / "sub-01_ses-01_space-X_qc.png")
    assert a.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and a.read_bytes() == b.read_bytes()
    assert sorted(p.name for p in a.parent.iterdir()) == [a.name]  # no temporary left behind
    assert titles[0] == ("sub-01_ses-01  -  yellow: brain mask, red: GT lesions (24 voxels)  "
                         "(radiological: patient left on image right)")
    qc_png(*paths[:4], None, tmp_path / "c.png", title="visit X")
    assert titles[-1] == "visit X  -  yellow: brain mask  (radiological: patient left on image right)"

    bad = _write(tmp_path / "in" / "bad_mask.nii.gz", np.ones((8, 24, 100), np.uint8), spacing=(1, 1, 2))
    with pytest.raises(InputError, match="bad_mask.nii.gz: geometry differs") as exc:
        qc_png(*paths[:3], bad, None, tmp_path / "d.png")
    assert "QC figure: inputs must share one grid" in str(exc.value)
    assert not (tmp_path / "d.png").exists()


def test_no_matplotlib_in_a_fresh_interpreter(tmp_path):
    paths = _visit(tmp_path / "in", 50, gt=True)
    code = (
        "import sys\n"
        "from t2lesion.plots.qc import qc_png\n"
        f"qc_png(*{[str(p) for p in paths]!r}, {str(tmp_path / 'q.png')!r})\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib')\n"
        "assert not bad, bad\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "q.png").read_bytes()[:4] == b"\x89PNG"
