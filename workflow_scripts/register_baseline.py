"""Rigid follow-up T1w -> baseline T1w registration (rule register_baseline).

Brain to brain when the follow-up has its own mask; else its head to the baseline brain.
"""

from t2lesion.logs import rule_log
from t2lesion.preprocess import register_to_baseline

with rule_log(snakemake.log[0], snakemake.threads):
    i = snakemake.input
    register_to_baseline(i.t1w, i.get("mask"), i.baseline_t1w, i.baseline_mask, snakemake.output[0], threads=snakemake.threads)
