"""One visit's doubt components for the review queue (rule review_visit; docs/DESIGN.md §14)."""

from t2lesion.logs import rule_log
from t2lesion.review import run_visit_features

with rule_log(snakemake.log[0], snakemake.threads):
    i, p = snakemake.input, snakemake.params
    paths = {k: getattr(i, k, None) for k in ("mask", "brain", "mi", "other", "prev", "next", "native_brain")}
    run_visit_features(paths, snakemake.output[0], **p.ids, **p.review)
