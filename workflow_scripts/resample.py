"""Compose the transforms, resample each native image once into MNI 1x1x3 mm and normalise it
(rule resample)."""

from t2lesion.logs import rule_log
from t2lesion.preprocess import resample_visit

with rule_log(snakemake.log[0], snakemake.threads):
    i, o = snakemake.input, snakemake.output
    resample_visit(
        images={"T1w": i.t1w, "T2w": i.t2w, "FLAIR": i.flair},
        to_t1w={"T2w": i.t2w_xfm, "FLAIR": i.flair_xfm},
        brain_mask=i.mask,
        brain_mask_space=snakemake.params.brain_mask_space,
        baseline_to_mni=i.baseline_to_mni,
        to_baseline=i.get("to_baseline"),
        out_images={"T1w": o.t1w, "T2w": o.t2w, "FLAIR": o.flair},
        out_mask=o.mask,
        out_xfms={"T1w": o.t1w_xfm, "T2w": o.t2w_xfm, "FLAIR": o.flair_xfm},
        threads=snakemake.threads,
        clip_percentiles=tuple(snakemake.params.clip_percentiles),
    )
