"""Kaplan-Meier curves split at the median baseline TLV, log-rank tests (rule km)."""

from t2lesion.logs import rule_log
from t2lesion.stats import run_km

with rule_log(snakemake.log[0], snakemake.threads):
    i, o, p = snakemake.input, snakemake.output, snakemake.params
    run_km(
        i.long,
        i.participants,
        i.outcomes,
        o.tests,
        o.curves,
        p.png_template,
        **p.trial,
        endpoints=p.endpoints,
        at_risk_step_weeks=p.at_risk_step_weeks,
        conf_level=p.conf_level,
        conf_type=p.conf_type,
        out_exclusions_tsv=o.exclusions,
        long_exclusions_tsv=i.long_exclusions,
    )
