"""Which of the generator's lesions each source finds, by contrast type and location (rule validation_study_lesion_types)."""

from t2lesion.logs import rule_log
from t2lesion.validation.lesion_types import run_lesion_types

with rule_log(snakemake.log[0], snakemake.threads):
    p, o = snakemake.params, snakemake.output
    run_lesion_types(
        snakemake.input.truth,
        p.visits,
        o.lesions,
        o.table,
        connectivity=p.connectivity,
        min_size=p.min_size,
    )
