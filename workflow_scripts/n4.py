"""N4 bias-field correction of a visit's three native contrasts in one job (rule n4)."""

from t2lesion.logs import rule_log
from t2lesion.preprocess import n4_visit

with rule_log(snakemake.log[0], snakemake.threads):
    i, o = snakemake.input, snakemake.output
    n4_visit(
        {"T1w": i.t1w, "T2w": i.t2w, "FLAIR": i.flair},
        {"T1w": o.t1w, "T2w": o.t2w, "FLAIR": o.flair},
        threads=snakemake.threads,
        shrink=snakemake.params.shrink,
        iterations=snakemake.params.iterations,
    )
