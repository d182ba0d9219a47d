"""Per-dataset tables and figures of one source (rule metrics_dataset)."""

from pathlib import Path

from t2lesion.evaluation.files import run_dataset
from t2lesion.logs import rule_log

with rule_log(snakemake.log[0], snakemake.threads):
    o = snakemake.output
    run_dataset(
        snakemake.input.visits,
        snakemake.input.lesions,
        out_dir=str(Path(o.table2).parent),
        source=snakemake.wildcards.source,
        trial=snakemake.wildcards.trial,
        size_groups=[tuple(g) for g in snakemake.params.size_groups],
        isbi_score=snakemake.params.isbi_score,
        outputs={k: o[k] for k in o.keys()},
    )
