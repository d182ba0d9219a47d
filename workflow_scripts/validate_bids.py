"""Validate a trial's BIDS folder, opening every image (rule validate_bids)."""

from t2lesion.bids import validate, write_summary
from t2lesion.logs import rule_log

with rule_log(snakemake.log[0], snakemake.threads):
    layout = validate(snakemake.params.bids, list(snakemake.params.arms), check_images=True)
    write_summary(layout, snakemake.output[0])
