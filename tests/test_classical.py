"""Classical segmenter (source ``classical``): a synthetic visit with known lesions and distractors."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from tests.conftest import REPO, write_image
from t2lesion.classical import robust_z, run_segment, segment
from t2lesion.errors import InputError
from t2lesion.evaluation.segmentation import evaluate_visit, label_lesions

_spec = importlib.util.spec_from_file_location("bench_metrics", REPO / "benchmarks" / "bench_metrics.py")
BENCH = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(BENCH)


def synthetic_visit(seed=0, shape=(40, 112, 96), n_lesions=30):
    """Normalised FLAIR/T1w of an ellipsoidal brain, smooth background + noise, known lesions.

    Lesions (sizes skewed small, 1 × 1 × 3 mm voxels, partial-volume edges) are bright
    on FLAIR and dark on T1w. Distractors: a blob bright on both contrasts inside the
    brain, a bright FLAIR blob outside the brain, and a lesion-like speck of 2 voxels.
    """
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    c, r = np.array(shape) / 2, np.array(shape) * 0.42
    brain = ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1

    def smooth():
        f = ndi.gaussian_filter(rng.normal(size=shape), (1.5, 5, 5))
        return f / f.std()

    flair = 100 + 8 * smooth() + rng.normal(0, 4, shape)
    t1w = 100 + 8 * smooth() + rng.normal(0, 4, shape)
    gt = np.zeros(shape, bool)
    inner = np.argwhere(ndi.binary_erosion(brain, iterations=6))
    for _ in range(n_lesions):
        r_mm = rng.lognormal(1.0, 0.45)
        BENCH.draw_ellipsoid(gt, inner[rng.integers(len(inner))], np.array([max(r_mm / 3, 0.6), r_mm, r_mm]))
    lesion = ndi.gaussian_filter(gt.astype(float), (0.3, 0.7, 0.7))
    flair += 50 * lesion
    t1w -= 40 * lesion
    both = np.zeros(shape, bool)
    BENCH.draw_ellipsoid(both, inner[0] + [2, 8, 8], np.array([1.2, 3, 3]))
    both &= ~ndi.binary_dilation(gt, iterations=3)
    flair[both] += 60
    t1w[both] += 60
    outside = np.zeros(shape, bool)
    BENCH.draw_ellipsoid(outside, (shape[0] // 2, 2, shape[2] // 2), np.array([2, 2, 4]))
    outside &= ~brain
    flair[outside] += 200
    speck = tuple(inner[len(inner) // 3])
    flair[speck[0], speck[1], speck[2]:speck[2] + 2] += 200
    t1w[speck[0], speck[1], speck[2]:speck[2] + 2] -= 40
    gt[speck[0], speck[1], speck[2]:speck[2] + 2] = False
    for a in (flair, t1w):  # z-score in the brain, as the preprocessing does (docs/DESIGN.md §2)
        v = a[brain]
        a -= v.mean()
        a /= v.std()
    return flair.astype(np.float32), t1w.astype(np.float32), brain, gt, {"both": both, "outside": outside,
                                                                         "speck": speck}


@pytest.fixture(scope="module")
def visit():
    return synthetic_visit()


def test_robust_z_known_answer():
    img = np.array([1, 2, 3, 4, 100, 7], np.float32).reshape(1, 2, 3)
    mask = np.array([1, 1, 1, 1, 1, 0], bool).reshape(1, 2, 3)  # median 3, MAD 1 over the first five
    z = robust_z(img, mask)
    assert z.ravel()[4] == pytest.approx(97 / 1.4826, rel=1e-6)
    assert z.ravel()[2] == 0.0 and z.ravel()[5] == pytest.approx(4 / 1.4826, rel=1e-6)
    with pytest.raises(ValueError, match="MAD"):
        robust_z(np.ones((2, 2, 2)), np.ones((2, 2, 2), bool))


def test_finds_most_lesions_and_no_distractor(visit):
    flair, t1w, brain, gt, d = visit
    seg = segment(flair, t1w, brain)
    assert seg.dtype == bool and not (seg & ~brain).any()
    row, _ = evaluate_visit(gt, seg, 0.003)
    assert row["gt_tlc"] >= 20
    assert row["ltpr"] >= 0.8 and row["dc"] >= 0.6, row
    assert not (seg & d["both"]).any()  # bright on T1w too: not lesion
    assert not (seg & d["outside"]).any()
    z, y, x = d["speck"]
    assert not seg[z, y, x:x + 2].any()  # 2-voxel speck removed
    # no component under 3 voxels anywhere (18-connectivity, the rule used)
    assert label_lesions(seg, 18, min_size=1)[1].min() >= 3


def test_thresholds_are_parameters(visit):
    flair, t1w, brain, gt, d = visit
    default = segment(flair, t1w, brain)
    strict = segment(flair, t1w, brain, z_threshold=6.0)
    assert strict.sum() < default.sum() and not (strict & ~default).any()
    permissive_t1 = segment(flair, t1w, brain, t1_max_z=100.0)
    assert (permissive_t1 & d["both"]).any()  # the T1w rule is what excludes the distractor
    keep_specks = segment(flair, t1w, brain, min_size=1)
    z, y, x = d["speck"]
    assert keep_specks[z, y, x:x + 2].all()
    with pytest.raises(InputError, match="connectivity"):
        segment(flair, t1w, brain, connectivity=4)


def test_run_segment_writes_mask_with_flair_geometry(tmp_path, visit):
    flair, t1w, brain, gt, _ = visit
    paths = {}
    for name, arr in (("flair", flair), ("t1w", t1w), ("brain", brain.astype(np.uint8))):
        paths[name] = tmp_path / f"{name}.nii.gz"
        write_image(paths[name], arr, spacing=(1.0, 1.0, 3.0))
    out = tmp_path / "pred" / "mask.nii.gz"
    res = run_segment(paths["flair"], paths["t1w"], paths["brain"], out, z_threshold=3.0)
    img = sitk.ReadImage(str(out))
    assert img.GetSpacing() == (1.0, 1.0, 3.0) and img.GetPixelID() == sitk.sitkUInt8
    arr = sitk.GetArrayFromImage(img)
    np.testing.assert_array_equal(arr.astype(bool), segment(flair, t1w, brain))
    assert res["lesion_voxels"] == int(arr.sum()) and res["lesion_ml"] == pytest.approx(arr.sum() * 0.003)
    assert [p.name for p in out.parent.iterdir()] == ["mask.nii.gz"]


def test_run_segment_input_errors_name_the_files(tmp_path, visit):
    flair, t1w, brain, _, _ = visit
    fp, tp, bp = tmp_path / "f.nii.gz", tmp_path / "t.nii.gz", tmp_path / "b.nii.gz"
    write_image(fp, flair)
    write_image(tp, t1w, spacing=(1.0, 1.0, 2.0))
    write_image(bp, brain.astype(np.uint8))
    out = tmp_path / "m.nii.gz"
    with pytest.raises(InputError) as exc:
        run_segment(fp, tp, bp, out)
    assert str(tp) in str(exc.value) and str(fp) in str(exc.value)
    write_image(tp, t1w)
    write_image(bp, np.zeros(brain.shape, np.uint8))
    with pytest.raises(InputError, match="b.nii.gz: brain mask is empty"):
        run_segment(fp, tp, bp, out)
    write_image(bp, brain.astype(np.uint8))
    write_image(tp, np.ones(brain.shape, np.float32))
    with pytest.raises(InputError, match="t.nii.gz: .*MAD = 0"):
        run_segment(fp, tp, bp, out)
    with pytest.raises(InputError, match="unknown parameters"):
        run_segment(fp, fp, bp, out, threshold=2)
    assert not out.exists()
