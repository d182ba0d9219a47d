"""Rigid T2w and FLAIR -> T1w alignment within a visit, one job for both (rule coregister)."""

from t2lesion.logs import rule_log
from t2lesion.preprocess import coregister_visit

with rule_log(snakemake.log[0], snakemake.threads):
    i, o = snakemake.input, snakemake.output
    coregister_visit({"T2w": i.t2w, "FLAIR": i.flair}, i.t1w, {"T2w": o.t2w, "FLAIR": o.flair}, threads=snakemake.threads)
