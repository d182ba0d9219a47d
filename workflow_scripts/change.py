"""Percent/absolute TLV change from baseline by arm and week (rule change)."""

from t2lesion.logs import rule_log
from t2lesion.stats import run_change

with rule_log(snakemake.log[0], snakemake.threads):
    i, o = snakemake.input, snakemake.output
    run_change(i.long, i.participants, o.change, o.summary, o.png, **snakemake.params.trial)
