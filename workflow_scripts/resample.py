"""Compose the transforms, resample each native image (and the GT mask, where the visit has
one) once into MNI 1x1x3 mm, normalise the contrasts and draw the QC picture (rules resample
and resample_with_gt)."""

from t2lesion.logs import rule_log
from t2lesion.plots.qc import qc_png
from t2lesion.preprocess import resample_visit

with rule_log(snakemake.log[0], snakemake.threads):
    i, o, p = snakemake.input, snakemake.output, snakemake.params
    gt = i.get("gt")
    resample_visit(
        images={"T1w": i.t1w, "T2w": i.t2w, "FLAIR": i.flair},
        to_t1w={"T2w": i.t2w_xfm, "FLAIR": i.flair_xfm},
        brain_mask=i.mask,
        brain_mask_space=p.brain_mask_space,
        baseline_to_mni=i.baseline_to_mni,
        to_baseline=i.get("to_baseline"),
        out_images={"T1w": o.t1w, "T2w": o.t2w, "FLAIR": o.flair},
        out_mask=o.mask,
        out_xfms={"T1w": o.t1w_xfm, "T2w": o.t2w_xfm, "FLAIR": o.flair_xfm},
        gt_mask=gt,
        out_gt_mask=o.get("gt"),
        gt_interpolation=p.gt_interpolation,
        threads=snakemake.threads,
        clip_percentiles=tuple(p.clip_percentiles),
    )
    qc_png(o.t1w, o.t2w, o.flair, o.mask, o.get("gt"), o.qc)
