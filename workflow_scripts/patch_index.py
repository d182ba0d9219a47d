"""Lesion windows of a training trial, one index TSV per fold (rule patch_index)."""

from t2lesion.logs import rule_log
from t2lesion.unet.stage import run_index

with rule_log(snakemake.log[0], snakemake.threads):
    p = snakemake.params
    run_index(snakemake.input.folds, snakemake.input.store, snakemake.output, p.folds, p.patch_size, p.overlap)
