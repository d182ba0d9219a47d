"""Clip and z-score one resampled contrast inside the brain (rule normalise)."""

from t2lesion.logs import rule_log
from t2lesion.preprocess import normalise

with rule_log(snakemake.log[0], snakemake.threads):
    normalise(
        snakemake.input.image,
        snakemake.input.mask,
        snakemake.output[0],
        clip_percentiles=tuple(snakemake.params.clip_percentiles),
    )
