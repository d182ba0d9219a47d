"""Baseline -> MNI rigid registration: the pyramid with and without the template's 1 mm level.

    .venv/bin/python benchmarks/bench_register_mni.py [--subjects 0 1 2 3] [--threads 1]

For each demo subject (seed 7, the demo's synthetic parameters) the baseline T1w is generated,
N4-corrected and skull-stripped (deepbet) as the pipeline does, then registered to the MNI
template with shrink (4, 2, 1) (the follow-up registration's pyramid) and with (4, 2)
(``t2lesion.preprocess.register.MNI_RIGID``). Prints, per subject and setting, the CPU seconds of
``register_to_mni`` and the mean distance of the subject's brain points mapped by the estimated
transform from where the synthetic subject frame (MNI up to a smooth deformation and head
scaling) puts them; and how far the two estimates put the same brain points apart.
"""

from __future__ import annotations

import argparse
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


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    params = SynthParams.from_dict({"seed": 7, "subjects_per_arm": 4, "weeks": [0, 48]})
    variants = {"(4, 2, 1)": reg.DEFAULT_RIGID, "(4, 2)": reg.MNI_RIGID}
    print("| subject | pyramid | CPU s | error vs subject frame, mean mm |")
    print("|---|---|---:|---:|")
    apart = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for s in args.subjects:
            v = simulate_subject_visits(params, s, [0])[0]
            corrected, _ = n4_image(sitk.Cast(v.image("T1w"), sitk.sitkFloat32))
            write_image(corrected, d / "t1.nii")
            skull_strip(d / "t1.nii", d / "mask.nii.gz", method="deepbet", threads=args.threads)
            idx = np.argwhere(v.brain_mask > 0)[::40][:, ::-1].astype(float)
            direction = np.array(v.direction).reshape(3, 3)
            pts = np.c_[np.asarray(v.origin) + (idx * np.asarray(v.spacing)) @ direction.T, np.ones(len(idx))]
            subject = pts @ v.native_to_subject.T
            mapped = {}
            for name, settings in variants.items():
                t0 = cpu()
                reg.register_to_mni(d / "t1.nii", d / "mask.nii.gz", d / "x.tfm", threads=args.threads,
                                    settings=settings)
                seconds = cpu() - t0
                a = transform_to_matrix(sitk.ReadTransform(str(d / "x.tfm")))
                mapped[name] = pts @ a.T
                err = np.linalg.norm((subject @ a.T - pts)[:, :3], axis=1).mean()
                print(f"| {s} | {name} | {seconds:.1f} | {err:.2f} |", flush=True)
            a, b = mapped.values()
            apart.append(np.linalg.norm((a - b)[:, :3], axis=1).mean())
    print(f"\nthe two fits put the same brain points {min(apart):.2f}-{max(apart):.2f} mm apart (mean per subject)")


if __name__ == "__main__":
    main()
