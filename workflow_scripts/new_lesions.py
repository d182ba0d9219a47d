"""New/enlarging T2 lesion counts per subject and the negative-binomial endpoint (rule new_lesions)."""

from t2lesion.logs import rule_log
from t2lesion.stats.counts import run_new_lesions

with rule_log(snakemake.log[0], snakemake.threads):
    i, o, p = snakemake.input, snakemake.output, snakemake.params
    visits = {}
    for source, path in zip(p.sources, i.visits):
        visits.setdefault(source, []).append(path)
    run_new_lesions(
        visits,
        i.participants,
        dict(o.items()),
        **p.trial,
        age_cutoff_years=p.age_cutoff_years,
        us_label=p.us_label,
        conf_level=p.conf_level,
        min_n_per_arm=p.min_n_per_arm,
        # the validated visit list names the participants without MRI (when the rule gives it)
        validated_visits_tsv=i.get("validated"),
    )
