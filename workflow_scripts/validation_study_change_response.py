"""Does each source follow the truth's lesion-volume change? (rule validation_study_change_response)."""

from t2lesion.logs import rule_log
from t2lesion.validation.change_response import run_change_response

with rule_log(snakemake.log[0], snakemake.threads):
    p, o = snakemake.params, snakemake.output
    run_change_response(
        snakemake.input.truth,
        snakemake.input.participants,
        p.visits,
        o.lesions,
        o.table,
        connectivity=p.connectivity,
    )
