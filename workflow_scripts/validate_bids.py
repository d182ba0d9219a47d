"""Validate a trial's BIDS folder, opening every image (rule validate_bids)."""

import logging

from t2lesion.bids import validate, write_summary
from t2lesion.logs import rule_log

with rule_log(snakemake.log[0], snakemake.threads):
    p = snakemake.params
    layout = validate(p.bids, list(p.arms), check_images=True, sessions=p.sessions, exclude=p.exclude)
    for warning in layout.warnings:  # a participant without MRI, a GT mask that matches no visit, ...
        logging.getLogger("t2lesion.bids").warning("%s", warning)
    write_summary(layout, snakemake.output[0])
