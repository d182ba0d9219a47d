"""Percent/absolute TLV change from baseline by arm and week (rule change)."""

from t2lesion.logs import rule_log
from t2lesion.stats import run_change

with rule_log(snakemake.log[0], snakemake.threads):
    i, o, p = snakemake.input, snakemake.output, snakemake.params
    run_change(
        i.long,
        i.participants,
        o.change,
        o.summary,
        o.png,
        **p.trial,
        conf_level=p.conf_level,
        out_exclusions_tsv=o.exclusions,
        long_exclusions_tsv=i.long_exclusions,
    )
