"""CPU seconds per preprocessing step and visit on a demo-sized synthetic visit (issue 3).

Generates one subject of the demo trial (config.yaml's synthetic parameters: 1 mm
template, 220 x 220 x 156 mm field of view at 1 x 1 x 3 mm), then runs every step of
:func:`t2lesion.preprocess.preprocess_visit` on its baseline and first follow-up exactly
as the rules do (same path-level functions, ``threads`` ITK threads), and reports CPU
seconds (user + system of this process and its children, so ROBEX is included) per step
and in total, plus the follow-up variant that reuses the baseline's brain mask. It does so
for the chosen skull stripper and, on the same visits in the same run, for a second one
(``--compare``, default ROBEX), and prints the ratio of their skull-stripping CPU time
and each one's brain-mask Dice against the generator's truth. It also
compares the default N4 setting (shrink 4, 4 x 50 iterations) with a heavier one in the
same run: CPU seconds, their ratio, and the residual bias left by each (CV of the block
means of corrected/clean in large WM blocks).

    .venv/bin/python benchmarks/bench_preprocess.py [--threads 1] [--skull-strip deepbet] [--compare robex]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from t2lesion.preprocess import METHODS, cpu_seconds, n4_image, preprocess_visit, set_threads
from t2lesion.preprocess.n4 import residual_bias_cv

MODS = ("T1w", "T2w", "FLAIR")
STEPS = ("n4", "coregister", "skull_strip", "register", "resample", "qc", "total")  # resample normalises too


def block_cv(ratio: np.ndarray, wm: np.ndarray) -> float:
    return residual_bias_cv(ratio, wm)[0]


def _fresh_cpu(code: str) -> float:
    prog = f"import resource\n{code}\nr = resource.getrusage(resource.RUSAGE_SELF); print(r.ru_utime + r.ru_stime)"
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def startup_cpu() -> dict[str, float]:
    """CPU seconds a fresh interpreter pays before its step (every Snakemake ``script:`` job):
    the stage's imports, plus the template for jobs that need the target grid, plus the QC
    picture's module (numpy + Pillow; matplotlib until 2026-11-30)."""
    base = _fresh_cpu("import t2lesion.logs, t2lesion.preprocess")
    grid = _fresh_cpu("import t2lesion.logs, t2lesion.preprocess as p; p.target_grid()")
    qc = _fresh_cpu("import t2lesion.logs, t2lesion.plots.qc")
    deepbet = _fresh_cpu("import t2lesion.logs, t2lesion.preprocess, deepbet.bet")
    return {"base": base, "template": grid - base, "qc": qc - base, "deepbet": deepbet - base}


def pure_wm(visit) -> np.ndarray:
    """Pure white matter: clean T1w within 5 % of its WM peak (as tests/test_preprocess.py)."""
    t1, brain = visit.clean["T1w"], visit.brain_mask > 0
    hist, edges = np.histogram(t1[brain], 200)
    return brain & (np.abs(t1 / edges[np.argmax(hist)] - 1) < 0.05)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="ITK threads per step (config preprocess.threads)")
    ap.add_argument("--skull-strip", default="deepbet", choices=sorted(METHODS))
    ap.add_argument("--compare", default="robex", choices=sorted(METHODS) + ["none"],
                    help="a second skull stripper run on the same visits (none: skip)")
    ap.add_argument("--subject", type=int, default=0)
    ap.add_argument("--heavy-shrink", type=int, default=2)
    ap.add_argument("--heavy-iterations", type=int, nargs="+", default=[100, 100, 100, 100])
    ap.add_argument("--keep", type=Path, default=None, help="keep the outputs in this folder")
    args = ap.parse_args(argv)

    from t2lesion.synth import SynthParams, simulate_subject_visits

    set_threads(args.threads)
    params = SynthParams.from_dict({"seed": 7, "subjects_per_arm": 4, "weeks": [0, 24, 48]})
    t0 = time.time()
    visits = simulate_subject_visits(params, args.subject, [0, 1])
    methods = [args.skull_strip] + ([args.compare] if args.compare not in ("none", args.skull_strip) else [])
    print(f"# host: {platform.node()}  cpus: {os.cpu_count()}  threads per step: {args.threads}  "
          f"skull strip: {', '.join(methods)}  date: {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC  "
          f"load average: {os.getloadavg()[0]:.1f}")
    print(f"# demo visit: native grid {visits[0].images['T1w'].shape[::-1]} (x, y, z) voxels "
          f"at {visits[0].spacing} mm; synthesis {time.time() - t0:.0f} s wall (not counted)")

    tmp = tempfile.TemporaryDirectory(prefix="bench-preproc-")
    root = args.keep or Path(tmp.name)
    files = []
    for v in visits:
        prefix = f"{v.participant_id}_ses-{v.session}"
        p = {}
        for m in MODS:
            p[m] = root / "raw" / f"{prefix}_{m}.nii.gz"
            p[m].parent.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(sitk.Cast(v.image(m), sitk.sitkInt16), str(p[m]))
        p["gt"] = root / "raw" / f"{prefix}_desc-lesion_mask.nii.gz"
        sitk.WriteImage(v.to_image(v.lesion_mask), str(p["gt"]))
        files.append((prefix, p))

    if "deepbet" in methods:
        import deepbet.bet  # noqa: F401  (torch's import is counted with the rule start-up below)

    start = startup_cpu()
    # rule jobs per visit: n4_coregister (3 contrasts, then T2w and FLAIR -> T1w), skull_strip,
    # register, resample (with the normalisation, the GT mask and the QC picture); the template
    # is loaded by resample and register_mni (baseline).
    jobs = {"baseline": (4, 2, 1), "follow-up": (4, 1, 1), "follow-up, baseline mask": (3, 1, 0)}
    n_fu = len(params.weeks) - 1
    summary = {}
    for method in methods:
        rows, walls, dice = {}, {}, {}
        baseline = None
        for label, (prefix, p), fu_mask in [("baseline", files[0], "own"), ("follow-up", files[1], "own"),
                                            ("follow-up, baseline mask", files[1], "baseline")]:
            w0 = time.time()
            outs, times = preprocess_visit(
                p["T1w"], p["T2w"], p["FLAIR"], root / method / label.replace(" ", "").replace(",", "_"), prefix,
                gt_mask=p["gt"], baseline=baseline, skull_strip_method=method, followup_mask=fu_mask,
                threads=args.threads,
            )
            walls[label] = time.time() - w0
            baseline = baseline or outs
            rows[label] = times
            v = visits[0 if label == "baseline" else 1]
            if fu_mask == "own":
                est = sitk.GetArrayFromImage(sitk.ReadImage(str(outs["native_mask"]))) > 0
                dice[label] = 2 * np.count_nonzero(est & (v.brain_mask > 0)) / (est.sum() + (v.brain_mask > 0).sum())

        print(f"\n## {method}: CPU seconds per step and visit (in-process; ROBEX subprocess included)\n")
        print("| step | " + " | ".join(rows) + " |")
        print("|---|" + "---:|" * len(rows))
        for s in STEPS:
            print(f"| {s} | " + " | ".join(f"{rows[r].get(s, 0.0):.1f}" for r in rows) + " |")
        print("| wall s | " + " | ".join(f"{walls[r]:.0f}" for r in rows) + " |")
        print("| brain-mask Dice vs truth | " + " | ".join(f"{dice[r]:.3f}" if r in dice else "-" for r in rows) + " |")
        extra = start["deepbet"] if method == "deepbet" else 0.0
        overhead = {k: n * start["base"] + t * start["template"] + start["qc"] + ss * extra
                    for k, (n, t, ss) in jobs.items()}
        print("\nStart-up per visit when every step is its own job: "
              + ", ".join(f"{k} {v:.1f}" for k, v in overhead.items()) + " CPU-s")
        print("\n| per visit, CPU-s | in-process | with rule start-up |")
        print("|---|---:|---:|")
        for r in rows:
            print(f"| {r} | {rows[r]['total']:.1f} | {rows[r]['total'] + overhead[r]:.1f} |")
        means = {}
        for nf in sorted({1, n_fu}):
            for mode, fu in [("own", "follow-up"), ("baseline", "follow-up, baseline mask")]:
                mean = (rows["baseline"]["total"] + nf * rows[fu]["total"]) / (1 + nf)
                mean_o = (rows["baseline"]["total"] + overhead["baseline"]
                          + nf * (rows[fu]["total"] + overhead[fu])) / (1 + nf)
                means[nf, mode] = mean_o
                print(f"| mean over a {1 + nf}-visit subject, follow-ups with {mode} mask | {mean:.1f} | {mean_o:.1f} |")
        summary[method] = {"rows": rows, "dice": dice, "means": means, "startup": extra}

    print(f"\nStart-up per rule job (fresh Python): {start['base']:.2f} CPU-s; + {start['template']:.2f} "
          f"to load the template (resample, register_mni); + {start['qc']:.2f} for the QC picture's module; "
          f"+ {start['deepbet']:.2f} to import torch and deepbet (skull_strip with deepbet).")
    if len(methods) == 2:
        a, b = methods
        print(f"\n## Skull stripping: {a} vs {b}, same visits, same run\n")
        print(f"| visit | {a} CPU-s | {b} CPU-s | ratio {a}/{b} | {a} Dice | {b} Dice |")
        print("|---|---:|---:|---:|---:|---:|")
        for label in ("baseline", "follow-up"):
            ca = summary[a]["rows"][label]["skull_strip"]
            cb = summary[b]["rows"][label]["skull_strip"]
            print(f"| {label} | {ca:.1f} | {cb:.1f} | {ca / cb:.3f} | {summary[a]['dice'][label]:.3f} "
                  f"| {summary[b]['dice'][label]:.3f} |")
        for label in ("baseline", "follow-up"):
            ca = summary[a]["rows"][label]["skull_strip"] + summary[a]["startup"]
            cb = summary[b]["rows"][label]["skull_strip"] + summary[b]["startup"]
            print(f"| {label}, as a rule job (+ import start-up) | {ca:.1f} | {cb:.1f} | {ca / cb:.3f} | | |")
        print(f"\n| mean preprocessing CPU-s per visit (rule start-up included) | {a} | {b} |")
        print("|---|---:|---:|")
        for (nf, mode) in summary[a]["means"]:
            print(f"| {1 + nf}-visit subjects, follow-ups with {mode} mask | {summary[a]['means'][nf, mode]:.1f} "
                  f"| {summary[b]['means'][nf, mode]:.1f} |")

    # --- N4: default vs heavier, same image, same run
    v = visits[0]
    wm = pure_wm(v)
    print("\n## N4: default vs heavier setting (baseline visit)\n")
    print("| modality | setting | CPU-s | residual bias CV (raw -> corrected) |")
    print("|---|---|---:|---|")
    ratios = []
    for m in MODS:
        img = sitk.ReadImage(str(files[0][1][m]))
        raw = sitk.GetArrayFromImage(img).astype(np.float64)
        safe = np.where(v.clean[m] > 0, v.clean[m], 1.0)
        before = block_cv(raw / safe, wm)
        cpu = {}
        for name, shrink, its in [("default", 4, (50, 50, 50, 50)),
                                  ("heavy", args.heavy_shrink, tuple(args.heavy_iterations))]:
            c0 = cpu_seconds()
            corrected, _ = n4_image(img, shrink=shrink, iterations=its)
            cpu[name] = cpu_seconds() - c0
            after = block_cv(sitk.GetArrayFromImage(corrected) / safe, wm)
            print(f"| {m} | {name} (shrink {shrink}, {'x'.join(map(str, its))}) | {cpu[name]:.1f} | "
                  f"{before:.4f} -> {after:.4f} |")
        ratios.append(cpu["heavy"] / cpu["default"])
    print(f"\nheavy / default CPU ratio: {', '.join(f'{r:.1f}' for r in ratios)} (T1w, T2w, FLAIR); "
          f"the 'n4' row above also reads/writes the files and builds the Otsu masks")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
