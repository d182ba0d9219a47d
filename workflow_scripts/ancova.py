"""ANCOVA of percent TLV change per follow-up week (rule ancova)."""

from t2lesion.logs import rule_log
from t2lesion.stats import run_ancova

with rule_log(snakemake.log[0], snakemake.threads):
    i, o, p = snakemake.input, snakemake.output, snakemake.params
    run_ancova(
        i.long,
        i.participants,
        o.coef,
        o.anova,
        **p.trial,
        weeks=p.weeks,
        age_cutoff_years=p.age_cutoff_years,
        us_label=p.us_label,
        conf_level=p.conf_level,
        min_n_per_arm=p.min_n_per_arm,
        out_wide_tsv=o.wide,
        out_lsmeans_tsv=o.lsmeans,
        out_exclusions_tsv=o.exclusions,
        long_exclusions_tsv=i.long_exclusions,
    )
