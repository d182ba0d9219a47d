"""The three rigid registrations of the preprocessing stage, CPU time against known truth.

    .venv/bin/python benchmarks/bench_register.py [--subjects 0 1 2 3] [--threads 1]

For each demo subject (seed 7, the demo's synthetic parameters) the baseline and week-48 visits
are generated and N4-corrected, and the baseline is skull-stripped (deepbet), as the pipeline
does; then each registration runs with the pipeline's settings and with each variant below:

* coregistration (FLAIR and T2w -> T1w, ``COREG_RIGID``): the synthetic contrasts share the
  visit's pose, so each is first moved by a known rigid motion (rotations up to 3 deg,
  translations up to 3 mm, drawn per subject and contrast), and the error is the mean distance
  over brain points between the estimated and the true map;
* baseline -> MNI (``MNI_RIGID``): the mean distance of the subject's brain points mapped by the
  estimate from where the synthetic subject frame (MNI up to a smooth deformation and head
  scaling) puts them; limited by that anatomical difference, not by the optimiser;
* follow-up -> baseline (``DEFAULT_RIGID``, the baseline's brain mask, the default follow-up
  policy): the mean distance over baseline brain points from the true map, both visits' poses
  being known.

``RUN`` names the variants of each (``VARIANTS``: ITK's gradient images at every pyramid level,
and for the MNI registration the template's 1 mm level it no longer uses). Prints one row per subject, registration and variant: CPU seconds of the library call
(reading its inputs included) and the error in mm; and the mean per registration and variant.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import t2lesion  # noqa: E402,F401  (first: its environment settings)
from t2lesion.preprocess import register as reg  # noqa: E402
from t2lesion.preprocess._common import set_threads, transform_to_matrix, write_image  # noqa: E402
from t2lesion.preprocess.n4 import n4_image  # noqa: E402
from t2lesion.preprocess.skullstrip import skull_strip  # noqa: E402
from t2lesion.synth import SynthParams, simulate_subject_visits  # noqa: E402

#: variant name -> how it changes the pipeline's settings of a registration
VARIANTS = {
    "pipeline": {},
    "gradient images (ITK default)": {"gradient_filter": True},
    # MNI_RIGID before it dropped the template's 1 mm level
    "gradient images, 1 mm level": {"gradient_filter": True, "shrink": (4, 2, 1), "smooth_mm": (3.0, 1.5, 0.0)},
}
#: the variants run for each registration
RUN = {
    "coregister": ("pipeline", "gradient images (ITK default)"),
    "baseline -> MNI": tuple(VARIANTS),
    "follow-up -> baseline": ("pipeline", "gradient images (ITK default)"),
}


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def mean_error(estimate: Path, truth: np.ndarray, pts: np.ndarray) -> float:
    """Mean distance between ``pts`` mapped by the estimated transform file and by ``truth``."""
    a = transform_to_matrix(sitk.ReadTransform(str(estimate)))
    return float(np.linalg.norm(((a - truth) @ pts.T)[:3], axis=0).mean())


def random_motion(rng: np.random.Generator, centre) -> np.ndarray:
    """A rigid motion (4 x 4, about ``centre``): rotations and translations up to 3 deg / 3 mm."""
    tx = sitk.Euler3DTransform()
    tx.SetCenter(tuple(float(c) for c in centre))
    tx.SetRotation(*np.deg2rad(rng.uniform(-3, 3, 3)))
    tx.SetTranslation(tuple(rng.uniform(-3, 3, 3)))
    return transform_to_matrix(tx)


def moved(img: sitk.Image, motion: np.ndarray) -> sitk.Image:
    """``img`` with its content moved so that the T1w point p shows what was at motion(p)."""
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(tuple(motion[:3, :3].ravel()))
    tx.SetTranslation(tuple(motion[:3, 3]))
    return sitk.Resample(img, img, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def run(variant: str, fn, settings) -> tuple[float, object]:
    s = dataclasses.replace(settings, **VARIANTS[variant])
    t0 = cpu()
    out = fn(s)
    return cpu() - t0, out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    params = SynthParams.from_dict({"seed": 7, "subjects_per_arm": 4, "weeks": [0, 48]})
    rows = []
    print("| subject | registration | variant | CPU s | error, mean mm |")
    print("|---|---|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for s in args.subjects:
            rng = np.random.default_rng(1000 + s)
            bl, fu = simulate_subject_visits(params, s, [0, 1])
            for v, name in ((bl, "bl"), (fu, "fu")):
                for m in ("T1w", "T2w", "FLAIR") if name == "bl" else ("T1w",):
                    corrected, _ = n4_image(sitk.Cast(v.image(m), sitk.sitkFloat32))
                    write_image(corrected, d / f"{name}_{m}.nii")
            skull_strip(d / "bl_T1w.nii", d / "bl_mask.nii.gz", method="deepbet", threads=args.threads)
            pts = bl.brain_points()
            t1w = sitk.ReadImage(str(d / "bl_T1w.nii"))
            centre = t1w.TransformContinuousIndexToPhysicalPoint(tuple((np.array(t1w.GetSize()) - 1) / 2.0))
            truth = {}
            for m in ("T2w", "FLAIR"):
                motion = random_motion(rng, centre)
                write_image(moved(sitk.ReadImage(str(d / f"bl_{m}.nii")), motion), d / f"moved_{m}.nii")
                truth[m] = np.linalg.inv(motion)  # T1w point p lies at motion^-1(p) in the moved image
            to_subject = bl.native_to_subject
            cases = {
                "coregister": (
                    reg.COREG_RIGID,
                    lambda st: reg.coregister_visit({m: d / f"moved_{m}.nii" for m in truth}, d / "bl_T1w.nii",
                                                    {m: d / f"{m}.tfm" for m in truth}, args.threads, st),
                    lambda out: np.mean([mean_error(out[m], truth[m], pts) for m in truth]),
                ),
                "baseline -> MNI": (
                    reg.MNI_RIGID,
                    lambda st: reg.register_to_mni(d / "bl_T1w.nii", d / "bl_mask.nii.gz", d / "mni.tfm",
                                                   threads=args.threads, settings=st),
                    # the estimate maps MNI points to native ones; the truth, subject-frame
                    # points (MNI up to anatomy) to native ones, compared at the brain's points
                    lambda out: mean_error(out, np.linalg.inv(to_subject), pts @ to_subject.T),
                ),
                "follow-up -> baseline": (
                    reg.DEFAULT_RIGID,
                    lambda st: reg.register_to_baseline(d / "fu_T1w.nii", None, d / "bl_T1w.nii",
                                                        d / "bl_mask.nii.gz", d / "fu.tfm",
                                                        threads=args.threads, settings=st),
                    lambda out: mean_error(out, np.linalg.inv(fu.native_to_subject) @ to_subject, pts),
                ),
            }
            for kind, (settings, fn, error) in cases.items():
                for variant in RUN[kind]:
                    seconds, out = run(variant, fn, settings)
                    err = error(out)
                    rows.append((kind, variant, seconds, err))
                    print(f"| {s} | {kind} | {variant} | {seconds:.2f} | {err:.2f} |", flush=True)
    print("\n| registration | variant | CPU s, mean | error, mean mm | error, max mm |")
    print("|---|---|---:|---:|---:|")
    for kind in cases:
        for variant in RUN[kind]:
            sel = [(c, e) for k, v, c, e in rows if k == kind and v == variant]
            c, e = np.array(sel).T
            print(f"| {kind} | {variant} | {c.mean():.2f} | {e.mean():.2f} | {e.max():.2f} |")


if __name__ == "__main__":
    main()
