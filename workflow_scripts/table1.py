"""Table 1: the cohort by arm, clinical and baseline lesion characteristics (rule table1)."""

from t2lesion.logs import rule_log
from t2lesion.stats.table1 import run_table1

with rule_log(snakemake.log[0], snakemake.threads):
    i = snakemake.input
    run_table1(
        i.participants,
        i.long,
        i.visits,
        snakemake.output[0],
        **snakemake.params.trial,
        long_exclusions_tsv=i.long_exclusions,
    )
