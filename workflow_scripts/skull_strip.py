"""Brain mask of the native T1w (rule skull_strip)."""

from t2lesion.logs import rule_log
from t2lesion.preprocess import skull_strip

with rule_log(snakemake.log[0], snakemake.threads):
    lo, hi = snakemake.params.volume_ml
    skull_strip(
        snakemake.input[0],
        snakemake.output[0],
        method=snakemake.params.method,
        threads=snakemake.threads,
        min_volume_ml=lo,
        max_volume_ml=hi,
    )
