"""Review bundles of the queue's first visits, in native space, with an ITK-SNAP workspace each
(rule review_bundles; docs/DESIGN.md §14)."""

from t2lesion.logs import rule_log
from t2lesion.review import run_bundles

with rule_log(snakemake.log[0], snakemake.threads):
    i, p = snakemake.input, snakemake.params
    inputs = {k: list(getattr(i, k)) for k in ("flair", "t1w", "t2w", "mask", "prob", "mi", "xfm", "flair_to_t1w",
                                               "t2w_to_t1w")}
    run_bundles(i.queue, p.ids, inputs, snakemake.output[0], top_k=p.top_k)
