"""Rigid baseline T1w -> MNI registration, brain to brain (rule register_mni)."""

from t2lesion.logs import rule_log
from t2lesion.preprocess import register_to_mni

with rule_log(snakemake.log[0], snakemake.threads):
    register_to_mni(snakemake.input.t1w, snakemake.input.mask, snakemake.output[0], threads=snakemake.threads)
