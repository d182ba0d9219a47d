"""Follow-up brain masks: each visit's own (``followup_brain_mask: own``) or the baseline's
carried through the rigid registrations (``baseline``, the default), with a given extractor.

For each subject of the demo trial (config.yaml's synthetic parameters, weeks 0 and 48) it
runs, exactly as the rules do: N4 on the T1w, skull stripping of both visits, baseline ->
MNI, and follow-up -> baseline twice (brain to brain with the follow-up's own mask; head
to baseline brain without it). The follow-up's brain mask in the MNI 1 x 1 x 3 mm grid is
then made both ways and compared with

* the truth: the generator's native brain mask of that visit carried into the grid through
  the same estimated transforms as that visit's images (``own``: brain-to-brain follow-up ->
  baseline; ``baseline``: head to baseline brain), i.e. where the visit's brain really lies
  in its preprocessed images (per-visit accuracy, registration error included);
* the baseline's mask in the same grid (consistency across visits: ``baseline`` gives 1
  by construction; the true brain does not change between visits in this generator).

It also reports the CPU seconds of the follow-up's own skull stripping (what ``own`` adds).

    .venv/bin/python benchmarks/bench_followup_mask.py [--subjects 0 1 2 3] [--skull-strip deepbet]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from t2lesion.preprocess import (  # noqa: E402
    METHODS,
    compose,
    cpu_seconds,
    n4,
    register_to_baseline,
    register_to_mni,
    set_threads,
    skull_strip,
    target_grid,
)
from t2lesion.preprocess._common import matrix_to_transform, transform_to_matrix  # noqa: E402
from t2lesion.preprocess.resample import resample_mask_image  # noqa: E402


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _arr(img: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(img) > 0


def _m(path: Path) -> np.ndarray:
    return transform_to_matrix(sitk.ReadTransform(str(path)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--skull-strip", default="deepbet", choices=sorted(METHODS))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    from t2lesion.synth import SynthParams, simulate_subject_visits

    set_threads(args.threads)
    params = SynthParams.from_dict({"seed": 7, "subjects_per_arm": 4, "weeks": [0, 48]})
    grid = target_grid()
    vox_ml = float(np.prod(grid.GetSpacing())) / 1000.0
    print(f"# host: {platform.node()}  cpus: {os.cpu_count()}  threads: {args.threads}  "
          f"skull strip: {args.skull_strip}  date: {time.strftime('%Y-%m-%d', time.gmtime())}")
    print("\n| subject | baseline Dice | follow-up Dice, own | follow-up Dice, baseline's carried "
          "| own vs baseline's mask (Dice) | own - baseline volume, mL | own skull strip, CPU-s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-fumask-") as td:
        td = Path(td)
        for s in args.subjects:
            v0, v1 = simulate_subject_visits(params, s, [0, 1])
            p = {}
            for v in (v0, v1):
                raw = td / f"{s}_{v.session}_T1w.nii.gz"
                sitk.WriteImage(sitk.Cast(v.image("T1w"), sitk.sitkInt16), str(raw))
                p[v.session, "n4"] = td / f"{s}_{v.session}_n4.nii.gz"
                n4(raw, p[v.session, "n4"], threads=args.threads)
                p[v.session, "mask"] = td / f"{s}_{v.session}_mask.nii.gz"
                c0 = cpu_seconds()
                skull_strip(p[v.session, "n4"], p[v.session, "mask"], method=args.skull_strip, threads=args.threads)
                p[v.session, "cpu"] = cpu_seconds() - c0
            b, f = v0.session, v1.session
            to_mni, to_bl_own, to_bl_head = td / f"{s}_mni.tfm", td / f"{s}_own.tfm", td / f"{s}_head.tfm"
            register_to_mni(p[b, "n4"], p[b, "mask"], to_mni, threads=args.threads)
            register_to_baseline(p[f, "n4"], p[f, "mask"], p[b, "n4"], p[b, "mask"], to_bl_own, threads=args.threads)
            register_to_baseline(p[f, "n4"], None, p[b, "n4"], p[b, "mask"], to_bl_head, threads=args.threads)
            mni = _m(to_mni)
            tx = lambda *ms: matrix_to_transform(compose(*ms))  # noqa: E731
            bl_mni = _arr(resample_mask_image(sitk.ReadImage(str(p[b, "mask"])), grid, tx(mni)))
            own_mni = _arr(resample_mask_image(sitk.ReadImage(str(p[f, "mask"])), grid, tx(mni, _m(to_bl_own))))
            # followup_brain_mask: baseline -> the baseline's MNI mask at every visit
            carried_mni = bl_mni
            # where each visit's true brain lands in the grid, through the transforms its images take
            truth = {k: _arr(resample_mask_image(v.to_image(v.brain_mask.astype(np.uint8)), grid, tx(mni, *chain)))
                     for k, v, chain in [("bl", v0, ()), ("own", v1, (_m(to_bl_own),)),
                                         ("carried", v1, (_m(to_bl_head),))]}
            r = {
                "bl": dice(bl_mni, truth["bl"]),
                "own": dice(own_mni, truth["own"]),
                "carried": dice(carried_mni, truth["carried"]),
                "consistency": dice(own_mni, bl_mni),
                "dvol": (own_mni.sum() - bl_mni.sum()) * vox_ml,
                "dvol_truth": (truth["own"].sum() - truth["bl"].sum()) * vox_ml,
                "cpu": p[f, "cpu"],
            }
            rows.append(r)
            print(f"| {v0.participant_id} | {r['bl']:.4f} | {r['own']:.4f} | {r['carried']:.4f} | {r['consistency']:.4f} "
                  f"| {r['dvol']:+.1f} (truth {r['dvol_truth']:+.1f}) | {r['cpu']:.1f} |", flush=True)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    print(f"| mean | {mean['bl']:.4f} | {mean['own']:.4f} | {mean['carried']:.4f} | {mean['consistency']:.4f} "
          f"| {np.mean([abs(r['dvol']) for r in rows]):.1f} (mean abs) | {mean['cpu']:.1f} |")
    gain = [r["own"] - r["carried"] for r in rows]
    print(f"\nown - carried per-visit Dice: {', '.join(f'{g:+.4f}' for g in gain)} (mean {np.mean(gain):+.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
