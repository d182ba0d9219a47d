"""How each endpoint moved between `unet` and `reviewed`, and the trial's corrections
(rule review_changes; docs/DESIGN.md §14)."""

from t2lesion.corrections import run_endpoint_changes
from t2lesion.logs import rule_log

with rule_log(snakemake.log[0], snakemake.threads):
    i, o = snakemake.input, snakemake.output
    tables = {name: getattr(i, name) for name in snakemake.params.tables}
    run_endpoint_changes(tables, list(i.status), o.changes, o.corrections)
