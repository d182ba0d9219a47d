"""N4 bias-field correction of one native image (rule n4)."""

from t2lesion.logs import rule_log
from t2lesion.preprocess import n4

with rule_log(snakemake.log[0], snakemake.threads):
    n4(
        snakemake.input.image,
        snakemake.output[0],
        threads=snakemake.threads,
        shrink=snakemake.params.shrink,
        iterations=snakemake.params.iterations,
    )
