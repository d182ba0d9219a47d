"""Validate a trial's BIDS folder, opening every image (rule validate_bids)."""

from t2lesion.bids import validate, write_summary
from t2lesion.logs import rule_log

with rule_log(snakemake.log[0], snakemake.threads):
    p = snakemake.params
    layout = validate(p.bids, list(p.arms), check_images=True, sessions=p.sessions, exclude=p.exclude)
    write_summary(layout, snakemake.output[0])
