"""The report's review page: the queue's first visits over FLAIR (rule review_figure; docs/DESIGN.md §14)."""

from t2lesion.logs import rule_log
from t2lesion.review import run_review_figure

with rule_log(snakemake.log[0], snakemake.threads):
    i, p = snakemake.input, snakemake.params
    primary, other = p.sources
    run_review_figure(
        i.queue,
        p.ids,
        i.flair,
        i.first,
        i.second,
        snakemake.output[0],
        n_visits=p.n_visits,
        names=(other or primary, primary),
        trial=snakemake.wildcards.trial,
    )
