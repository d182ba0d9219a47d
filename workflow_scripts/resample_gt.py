"""Carry a GT lesion mask through its FLAIR's composed transform (rule resample_gt)."""

from t2lesion.logs import rule_log
from t2lesion.preprocess import resample_mask

with rule_log(snakemake.log[0], snakemake.threads):
    i = snakemake.input
    resample_mask(
        i.gt,
        i.flair_xfm,
        i.reference,
        snakemake.output[0],
        threads=snakemake.threads,
        interpolation=snakemake.params.interpolation,
    )
