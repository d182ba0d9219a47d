"""Lesion-wise new-lesion detection of every source against GT (rule validation_study_detection)."""

from t2lesion.logs import rule_log
from t2lesion.validation.run import run_detection

with rule_log(snakemake.log[0], snakemake.threads):
    p = snakemake.params
    run_detection(
        list(snakemake.input.qc),
        list(p.sources),
        snakemake.output.visits,
        snakemake.output.table,
        min_size=p.min_size,
        connectivity=p.connectivity,
    )
