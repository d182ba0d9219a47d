"""Where a finished run's U-Net volume exceeds GT's, per arm and week (docs/validation-discussion.md):
a look at the U-Net's drift in the treated arm of the validation trial.

For every visit with a GT mask in the MNI grid, the U-Net mask is split against that GT mask:
false-positive voxels in the GT's one-voxel shell (the lesion border), false positives on
another visit's GT lesion (not this visit's), false positives elsewhere, and false negatives;
``shell_claimed`` is the share of the shell the U-Net calls lesion. The shell and its false
positives are also split between the visit's new GT lesions (components touching no voxel of
the baseline GT dilated by one voxel) and the others (``_new``, ``_old``). Printed:
means (mL) per arm and week, then each quantity's paired change from baseline per arm, mean ±
standard error over participants. Arms from the trial's ``participants.tsv``.

    .venv/bin/python benchmarks/excess_by_border.py [--results results] [--trial valtest]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from t2lesion.evaluation.files import week_from_session  # noqa: E402
from t2lesion.io import read_array  # noqa: E402

QUANTITIES = ["gt_ml", "unet_ml", "fp_border_ml", "fp_other_visit_ml", "fp_elsewhere_ml", "fn_ml", "shell_claimed",
              "gt_new_ml", "shell_ml", "shell_new_ml", "fp_border_new_ml", "fp_border_old_ml",
              "shell_claimed_new", "shell_claimed_old"]


def new_components(mask: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """The connected components of ``mask`` that touch no voxel of ``baseline`` (the baseline GT
    dilated by one voxel): the visit's new lesions."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.zeros_like(mask)
    touches = np.zeros(n + 1, bool)
    touches[np.unique(labels[baseline & mask])] = True
    touches[0] = True
    return ~touches[labels]


def split_visits(results: Path, trial: str) -> pd.DataFrame:
    participants = pd.read_csv(results / "synth" / f"trial-{trial}" / "bids" / "participants.tsv", sep="\t",
                               dtype={"participant_id": str})
    rows = []
    for pid, arm in zip(participants["participant_id"], participants["arm"]):
        pre = results / "preproc" / f"trial-{trial}" / pid
        gt_paths = sorted(pre.glob("ses-*/*_space-MNI1x1x3_desc-lesionGT_mask.nii.gz"))
        if not gt_paths:
            continue
        gt, unet, voxel_ml = {}, {}, None
        for g in gt_paths:
            ses = g.parent.name
            arr, img = read_array(g)
            gt[ses] = arr > 0
            voxel_ml = float(np.prod(img.GetSpacing())) / 1000.0
            u = results / "predict" / "unet" / f"trial-{trial}" / pid / ses / g.name.replace(
                "desc-lesionGT_mask", "desc-lesion_mask")
            unet[ses] = read_array(u)[0] > 0
        any_gt = np.logical_or.reduce(list(gt.values()))
        baseline = ndimage.binary_dilation(gt[min(gt)])
        for ses in gt:
            shell = ndimage.binary_dilation(gt[ses]) & ~gt[ses]
            fp = unet[ses] & ~gt[ses]
            new = new_components(gt[ses], baseline)
            shell_new = ndimage.binary_dilation(new) & shell
            shell_old = shell & ~shell_new
            rows.append({
                "participant_id": pid, "arm": arm, "session": ses, "week": week_from_session(ses),
                "gt_ml": gt[ses].sum() * voxel_ml, "unet_ml": unet[ses].sum() * voxel_ml,
                "fp_border_ml": (fp & shell).sum() * voxel_ml,
                "fp_other_visit_ml": (fp & ~shell & any_gt).sum() * voxel_ml,
                "fp_elsewhere_ml": (fp & ~shell & ~any_gt).sum() * voxel_ml,
                "fn_ml": (gt[ses] & ~unet[ses]).sum() * voxel_ml,
                "shell_claimed": (unet[ses] & shell).sum() / max(int(shell.sum()), 1),
                "gt_new_ml": new.sum() * voxel_ml, "shell_ml": shell.sum() * voxel_ml,
                "shell_new_ml": shell_new.sum() * voxel_ml,
                "fp_border_new_ml": (fp & shell_new).sum() * voxel_ml,
                "fp_border_old_ml": (fp & shell_old).sum() * voxel_ml,
                "shell_claimed_new": (unet[ses] & shell_new).sum() / max(int(shell_new.sum()), 1)
                if shell_new.any() else np.nan,
                "shell_claimed_old": (unet[ses] & shell_old).sum() / max(int(shell_old.sum()), 1),
            })
    if not rows:
        raise SystemExit(f"{results}/preproc/trial-{trial}: no GT masks in the MNI grid")
    return pd.DataFrame(rows)


def paired_changes(visits: pd.DataFrame) -> pd.DataFrame:
    wide = visits.pivot_table(index=["participant_id", "arm"], columns="week", values=QUANTITIES)
    weeks = sorted(visits["week"].unique())
    out = []
    for week in weeks[1:]:
        for q in QUANTITIES:
            if weeks[0] not in wide[q]:
                continue  # no baseline value (the new lesions' shell share)
            d = (wide[q][week] - wide[q][weeks[0]]).dropna()
            for arm, g in d.groupby(level="arm"):
                out.append({"week": week, "quantity": q, "arm": arm, "mean": g.mean(), "se": g.sem(), "n": len(g)})
    return pd.DataFrame(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--trial", default="valtest")
    args = ap.parse_args(argv)
    visits = split_visits(args.results, args.trial)
    pd.set_option("display.width", 160)
    print(visits.groupby(["arm", "week"])[QUANTITIES].mean().round(4).to_string())
    ch = paired_changes(visits)
    print("\nchange from baseline, mean ± SE over participants")
    for (week, q), g in ch.groupby(["week", "quantity"], sort=False):
        cells = "  ".join(f"{r.arm} {r.mean:+.4f} ± {r.se:.4f} (n {r.n})" for r in g.itertuples())
        print(f"week {week:>3} {q:<18} {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
