"""Cox proportional-hazards models per endpoint, Table 4 layout (rule cox)."""

from t2lesion.logs import rule_log
from t2lesion.stats import run_cox

with rule_log(snakemake.log[0], snakemake.threads):
    i, o, p = snakemake.input, snakemake.output, snakemake.params
    run_cox(
        i.long,
        i.participants,
        i.outcomes,
        o.cox,
        o.table4,
        **p.trial,
        endpoints=p.endpoints,
        log_tlv_offset_ml=p.log_tlv_offset_ml,
        edss_cutoff=p.edss_cutoff,
        us_label=p.us_label,
        conf_level=p.conf_level,
        min_events_per_term=p.min_events_per_term,
        center_log_tlv=p.center_log_tlv,
        out_exclusions_tsv=o.exclusions,
        long_exclusions_tsv=i.long_exclusions,
    )
