"""Rigid T2w/FLAIR -> T1w alignment within a visit (rule coregister)."""

from t2lesion.logs import rule_log
from t2lesion.preprocess import coregister_to_t1w

with rule_log(snakemake.log[0], snakemake.threads):
    coregister_to_t1w(snakemake.input.moving, snakemake.input.t1w, snakemake.output[0], threads=snakemake.threads)
