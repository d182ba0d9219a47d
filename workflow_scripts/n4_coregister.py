"""N4 bias-field correction of a visit's three native contrasts, then the rigid T2w and
FLAIR -> T1w alignment on the corrected images, in one job (rule n4_coregister)."""

from t2lesion.logs import rule_log
from t2lesion.preprocess import coregister_visit, n4_visit

with rule_log(snakemake.log[0], snakemake.threads):
    i, o, p = snakemake.input, snakemake.output, snakemake.params
    n4_visit(
        {"T1w": i.t1w, "T2w": i.t2w, "FLAIR": i.flair},
        {"T1w": o.t1w, "T2w": o.t2w, "FLAIR": o.flair},
        threads=snakemake.threads,
        shrink=p.shrink,
        iterations=p.iterations,
    )
    coregister_visit({"T2w": o.t2w, "FLAIR": o.flair}, o.t1w, {"T2w": o.t2w_xfm, "FLAIR": o.flair_xfm},
                     threads=snakemake.threads, sources={"T2w": i.t2w, "FLAIR": i.flair})
