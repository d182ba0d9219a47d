"""Long table of TLV/TLC per subject x week x source, GT included (rule tlv_long)."""

from t2lesion.logs import rule_log
from t2lesion.stats import run_long_table

with rule_log(snakemake.log[0], snakemake.threads):
    run_long_table(dict(zip(snakemake.params.sources, snakemake.input.visits)), snakemake.output[0])
