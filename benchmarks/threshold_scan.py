"""Table 2's DC and the TLV ratio of a finished run's U-Net ensemble at other thresholds
(docs/model.md, "The demo's recipe"): a look at what the calibrated threshold gave away.

Each visit's ensemble probability (``desc-lesion_probseg``, MNI grid) is cut at each
threshold inside its brain mask, as inference cuts it, and compared with the visit's GT mask:
DC averaged over visits (Table 2's DC) and the summed predicted volume over the summed GT
volume. A look after the fact, on the test trial's GT: the pipeline itself chooses its
threshold on the training trial's held-out visits only (docs/DESIGN.md §6).

    .venv/bin/python benchmarks/threshold_scan.py [--results results] [--trial synthdemo]
        [--thresholds 0.5 0.7 0.8 0.85 0.9 0.95]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from t2lesion.io import read_array  # noqa: E402


def scan(results: Path, trial: str, thresholds: list[float]) -> list[dict]:
    probs = sorted((results / "predict" / "unet" / f"trial-{trial}").glob("sub-*/ses-*/*_desc-lesion_probseg.nii.gz"))
    if not probs:
        raise SystemExit(f"{results}/predict/unet/trial-{trial}: no U-Net probability maps")
    dc = {t: [] for t in thresholds}
    vol = {t: 0 for t in thresholds}
    gt_vol = 0
    for p in probs:
        stem = p.name.split("_space-")[0]
        pre = results / "preproc" / f"trial-{trial}" / p.parent.parent.name / p.parent.name
        gt_path = pre / f"{stem}_space-MNI1x1x3_desc-lesionGT_mask.nii.gz"
        if not gt_path.is_file():
            continue  # a visit without GT
        prob = read_array(p)[0]
        gt = read_array(gt_path)[0] > 0
        brain = read_array(pre / f"{stem}_space-MNI1x1x3_desc-brain_mask.nii.gz")[0] > 0
        gt_vol += int(gt.sum())
        for t in thresholds:
            m = (prob >= t) & brain
            denom = int(m.sum()) + int(gt.sum())
            if denom:
                dc[t].append(2.0 * int((m & gt).sum()) / denom)
            vol[t] += int(m.sum())
    return [{"threshold": t, "dc": float(np.mean(dc[t])), "n": len(dc[t]),
             "tlv_over_gt": vol[t] / gt_vol if gt_vol else float("nan")} for t in thresholds]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--trial", default="synthdemo")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])
    args = ap.parse_args(argv)
    print("threshold\tDC\tvisits\tTLV/GT")
    for row in scan(args.results, args.trial, args.thresholds):
        print(f"{row['threshold']:.3f}\t{row['dc']:.3f}\t{row['n']}\t{row['tlv_over_gt']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
