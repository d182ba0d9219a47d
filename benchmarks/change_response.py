"""How a finished run's lesion masks follow the truth's change, lesion by lesion, on a synthetic
trial, with the U-Net's probability cut at other thresholds (docs/validation-discussion.md).

The validation rule ``validation_study_change_response`` (``t2lesion.validation.change_response``,
its docstring says how lesions are placed, kept and measured) does this for each source's
masks; this script repeats it and adds ``unet@T`` sources: the U-Net's ensemble probability
cut at T inside the brain mask, as inference cuts it (``benchmarks/threshold_scan.py``;
``unet@<the run's threshold>`` reproduces the run's masks). Printed per follow-up, arm and
class of the truth's change: lesions (participants), mean relative change, the summed change
of nominal volume and GT (voxels), and per source its change over GT's and its excess over GT
per participant (mL, mean ± SE; the participants where it is positive).

    .venv/bin/python benchmarks/change_response.py [--results results] [--trial valtest]
        [--sources unet classical unet@0.9 unet@0.99]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from t2lesion.io import read_array, voxel_volume_ml  # noqa: E402
from t2lesion.tracking import _ses  # noqa: E402
from t2lesion.validation.change_response import lesion_changes, place_visit, response_table  # noqa: E402


def source_mask(results: Path, trial: str, gt_path: Path, source: str) -> np.ndarray:
    """A source's mask of the visit of ``gt_path``; ``unet@T``: the U-Net's ensemble probability cut
    at T inside the brain mask."""
    visit = gt_path.parent
    name, _, threshold = source.partition("@")
    pred = results / "predict" / name / f"trial-{trial}" / visit.parent.name / visit.name
    if not threshold:
        return read_array(pred / gt_path.name.replace("desc-lesionGT_mask", "desc-lesion_mask"))[0] > 0
    prob = read_array(pred / gt_path.name.replace("desc-lesionGT_mask", "desc-lesion_probseg"))[0]
    brain = read_array(visit / gt_path.name.replace("desc-lesionGT_mask", "desc-brain_mask"))[0] > 0
    return (prob >= float(threshold)) & brain


def placed_lesions(results: Path, trial: str, sources: list[str]) -> tuple[pd.DataFrame, float]:
    synth = results / "synth" / f"trial-{trial}"
    participants = pd.read_csv(synth / "bids" / "participants.tsv", sep="\t", dtype={"participant_id": str})
    truth = pd.read_csv(synth / "truth" / "lesions.tsv", sep="\t", dtype={"participant_id": str, "session": str})
    truth["session"] = [_ses(s) for s in truth["session"]]
    parts, voxel_ml = [], None
    for pid, arm in zip(participants["participant_id"], participants["arm"]):
        pre = results / "preproc" / f"trial-{trial}" / pid
        for gt_path in sorted(pre.glob("ses-*/*_space-MNI1x1x3_desc-lesionGT_mask.nii.gz")):
            ses = gt_path.parent.name
            sel = truth[(truth["participant_id"] == pid) & (truth["session"] == ses)]
            if sel.empty:
                continue
            gt, grid = read_array(gt_path)
            voxel_ml = voxel_volume_ml(grid)
            tx = sitk.ReadTransform(str(pre / ses / f"{pid}_{ses}_from-FLAIR_to-MNI1x1x3_xfm.tfm"))
            parts.append(place_visit(sel, arm, gt, {s: source_mask(results, trial, gt_path, s) for s in sources},
                                     grid, tx))
    if not parts:
        raise SystemExit(f"{results}/preproc/trial-{trial}: no GT masks with truth lesions")
    return pd.concat(parts, ignore_index=True), voxel_ml


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--trial", default="valtest")
    ap.add_argument("--sources", nargs="+", default=["unet", "classical"],
                    help="prediction sources; unet@T: the U-Net's probability cut at T")
    args = ap.parse_args(argv)
    lesions, voxel_ml = placed_lesions(args.results, args.trial, args.sources)
    print(f"{len(lesions)} truth lesion-visits; {(lesions['shared'] > 0).mean():.1%} found in a GT component; "
          f"{(lesions['shared'] == 1).mean():.1%} alone in theirs (kept)")
    table = response_table(lesion_changes(lesions, args.sources), args.sources, voxel_ml)
    for (week, arm), g in table.groupby(["week", "arm"], sort=False):
        print(f"\nweek {week} {arm}: change from baseline, summed over lesions (voxels); per participant (mL, "
              f"mean ± SE): source's change minus GT's")
        for cls, c in g.groupby("class", sort=False):
            r0 = c.iloc[0]
            cells = [f"{cls:<9} n {r0.n_lesions:>4} ({r0.n_participants:>2} participants; mean "
                     f"{100 * r0.mean_relative_change:+5.1f} %)  nominal {r0.nominal_voxels:+8.0f}  GT {r0.gt_voxels:+6.0f}"]
            for r in c.itertuples():
                ratio = "GT ~ 0" if np.isnan(r.over_gt) else f"{r.over_gt:.2f} of GT"
                cells.append(f"{r.source} {r.source_voxels:+6.0f} ({ratio}; {r.excess_ml_mean:+.3f} ± "
                             f"{r.excess_ml_se:.3f} mL, > 0 in {r.n_excess_positive})")
            print("  " + "  ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
