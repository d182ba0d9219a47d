"""A trial's review queue: visits ranked by the doubt score (rule review_queue; docs/DESIGN.md §14)."""

from t2lesion.logs import rule_log
from t2lesion.review import run_queue

with rule_log(snakemake.log[0], snakemake.threads):
    run_queue(list(snakemake.input), snakemake.output[0])
