"""Fig. 2: GT and predicted lesions over FLAIR on a few visits of one source (rule fig2)."""

from t2lesion.logs import rule_log
from t2lesion.plots.overlays import run_fig2

with rule_log(snakemake.log[0], snakemake.threads):
    i, p, w = snakemake.input, snakemake.params, snakemake.wildcards
    run_fig2(
        i.visits,
        p.ids,
        i.flair,
        i.gt,
        i.pred,
        snakemake.output[0],
        n_visits=p.n_visits,
        source=w.source,
        trial=w.trial,
    )
