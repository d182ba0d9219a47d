"""How a finished run's lesion masks follow the truth's change, lesion by lesion, on a synthetic
trial (docs/validation-discussion.md): where the U-Net's volume change parts from GT's.

Every truth lesion (``truth/lesions.tsv``) is placed at each visit in the GT mask of the MNI grid
(its native centroid through the visit's FLAIR -> MNI transform, the nearest GT voxel within
3 mm: :func:`t2lesion.validation.new_lesion_truth.native_to_grid`, ``nearest_component``).
Lesions that are alone in their GT component at baseline and at the follow-up are kept
(confluent components, holding several truth lesions, are left out and counted). A kept
lesion's volume in a prediction mask is the mask's voxels in its GT component plus in that
component's one-voxel shell. Lesions are classed by the truth's nominal volume change from
baseline (shrinking, unchanged, growing: beyond +-0.01 voxel of the MNI grid). Printed per
source (GT and each prediction), arm, follow-up and class: the lesions, the summed change of
nominal volume, of the GT mask and of each prediction (voxels), each prediction's change over
GT's (where GT's is at least 50 voxels), and the prediction's excess change over GT's per participant (mL, mean +- standard error; the participants where it is positive).

    .venv/bin/python benchmarks/change_response.py [--results results] [--trial valtest]
        [--sources unet classical unet@0.99]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from t2lesion.evaluation.segmentation import CONNECTIVITY  # noqa: E402
from t2lesion.io import read_array, voxel_volume_ml  # noqa: E402
from t2lesion.validation.new_lesion_truth import native_to_grid, nearest_component  # noqa: E402

UNCHANGED_VOXELS = 0.01
MIN_RATIO_VOXELS = 50  # a source's change over GT's is printed only where GT's is at least this


def source_mask(results: Path, trial: str, gt_path: Path, source: str) -> np.ndarray:
    """A source's mask of the visit of ``gt_path``; ``unet@T``: the U-Net's ensemble probability cut
    at T inside the brain mask, as inference cuts it (``benchmarks/threshold_scan.py``)."""
    visit = gt_path.parent
    name, _, threshold = source.partition("@")
    pred = results / "predict" / name / f"trial-{trial}" / visit.parent.name / visit.name
    if not threshold:
        return read_array(pred / gt_path.name.replace("desc-lesionGT_mask", "desc-lesion_mask"))[0] > 0
    prob = read_array(pred / gt_path.name.replace("desc-lesionGT_mask", "desc-lesion_probseg"))[0]
    brain = read_array(gt_path.parent / gt_path.name.replace("desc-lesionGT_mask", "desc-brain_mask"))[0] > 0
    return (prob >= float(threshold)) & brain


def lesion_volumes(results: Path, trial: str, sources: list[str]) -> tuple[pd.DataFrame, float]:
    """One row per truth lesion and visit: its component (0: not found), how many truth lesions
    share it, and, when alone, the GT component's voxels and each source's voxels in it and its shell."""
    synth = results / "synth" / f"trial-{trial}"
    participants = pd.read_csv(synth / "bids" / "participants.tsv", sep="\t", dtype={"participant_id": str})
    truth = pd.read_csv(synth / "truth" / "lesions.tsv", sep="\t", dtype={"participant_id": str, "session": str})
    structure = ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[CONNECTIVITY])
    rows, voxel_ml = [], None
    for pid, arm in zip(participants["participant_id"], participants["arm"]):
        pre = results / "preproc" / f"trial-{trial}" / pid
        for gt_path in sorted(pre.glob("ses-*/*_space-MNI1x1x3_desc-lesionGT_mask.nii.gz")):
            ses = gt_path.parent.name
            mine = truth[(truth["participant_id"] == pid) & (truth["session"] == ses.removeprefix("ses-"))]
            if mine.empty:
                continue
            gt, grid = read_array(gt_path)
            gt = gt > 0
            voxel_ml = voxel_volume_ml(grid)
            masks = {s: source_mask(results, trial, gt_path, s) for s in sources}
            labels, n = ndimage.label(gt, structure)
            tx = sitk.ReadTransform(str(pre / ses / f"{pid}_{ses}_from-FLAIR_to-MNI1x1x3_xfm.tfm"))
            idx = native_to_grid(mine[["x_native", "y_native", "z_native"]].to_numpy(float), tx, grid)
            comp, _ = nearest_component(labels, idx, grid.GetSpacing()[::-1])
            shared = np.bincount(comp, minlength=n + 1)
            boxes = ndimage.find_objects(labels)
            for lid, nominal, k in zip(mine["lesion_id"], mine["nominal_volume_ml"], comp):
                row = {"participant_id": pid, "arm": arm, "session": ses, "lesion_id": int(lid),
                       "nominal_voxels": nominal / voxel_ml, "shared": int(shared[k]) if k else 0}
                if k and shared[k] == 1:
                    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in boxes[k - 1])
                    inside = labels[box] == k
                    reach = inside | (ndimage.binary_dilation(inside, structure) & ~gt[box])
                    row["gt"] = int(inside.sum())
                    row.update({s: int((m[box] & reach).sum()) for s, m in masks.items()})
                rows.append(row)
    if not rows:
        raise SystemExit(f"{results}/preproc/trial-{trial}: no GT masks with truth lesions")
    return pd.DataFrame(rows), voxel_ml


def changes(lesions: pd.DataFrame, sources: list[str]) -> pd.DataFrame:
    """Per kept lesion and follow-up: the change from baseline of nominal, GT and each source's voxels, and its class."""
    values = ["nominal_voxels", "gt", *sources]
    kept = lesions[lesions["shared"] == 1]
    wide = kept.pivot_table(index=["participant_id", "arm", "lesion_id"], columns="session", values=values)
    sessions = sorted(kept["session"].unique())
    out = []
    for ses in sessions[1:]:
        d = pd.DataFrame({v: wide[v][ses] - wide[v][sessions[0]] for v in values}).dropna().reset_index()
        d.insert(0, "session", ses)
        out.append(d)
    ch = pd.concat(out, ignore_index=True)
    base = wide["nominal_voxels"][sessions[0]].rename("nominal_baseline").reset_index()
    ch = ch.merge(base, on=["participant_id", "arm", "lesion_id"], how="left")
    ch["relative"] = ch["nominal_voxels"] / ch["nominal_baseline"]
    ch["class"] = np.select([ch["nominal_voxels"] < -UNCHANGED_VOXELS, ch["nominal_voxels"] > UNCHANGED_VOXELS],
                            ["shrinking", "growing"], "unchanged")
    return ch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--trial", default="valtest")
    ap.add_argument("--sources", nargs="+", default=["unet", "classical"],
                    help="prediction sources; unet@T: the U-Net's probability cut at T")
    args = ap.parse_args(argv)
    lesions, voxel_ml = lesion_volumes(args.results, args.trial, args.sources)
    found = lesions["shared"] > 0
    print(f"{len(lesions)} truth lesion-visits; {found.mean():.1%} found in a GT component; "
          f"{(lesions['shared'] == 1).mean():.1%} alone in theirs (kept)")
    ch = changes(lesions, args.sources)
    for (ses, arm), g in ch.groupby(["session", "arm"]):
        print(f"\n{ses} {arm}: change from baseline, summed over lesions (voxels); "
              f"per participant (mL, mean ± SE): source's change minus GT's")
        for cls in ("shrinking", "unchanged", "growing", "all"):
            c = g if cls == "all" else g[g["class"] == cls]
            if c.empty:
                continue
            per = c.groupby("participant_id")[["gt", *args.sources]].sum() * voxel_ml
            cells = [f"{cls:<9} n {len(c):>4} ({len(per):>2} participants; mean {100 * c['relative'].mean():+5.1f} %, "
                     f"{c['nominal_voxels'].mean():+6.2f} voxels)  nominal {c['nominal_voxels'].sum():+8.0f}  "
                     f"GT {c['gt'].sum():+6.0f}"]
            for s in args.sources:
                ratio = f"{c[s].sum() / c['gt'].sum():.2f} of GT" if abs(c["gt"].sum()) >= MIN_RATIO_VOXELS else "GT ~ 0"
                ex = per[s] - per["gt"]
                cells.append(f"{s} {c[s].sum():+6.0f} ({ratio}; {ex.mean():+.3f} ± {ex.sem():.3f} mL, "
                             f"> 0 in {int((ex > 0).sum())})")
            print("  " + "  ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
