"""Voxel- and lesion-level metrics of one visit against its GT (rule metrics_visit)."""

from t2lesion.logs import rule_log
from t2lesion.metrics import run_visit

with rule_log(snakemake.log[0], snakemake.threads):
    w = snakemake.wildcards
    run_visit(
        snakemake.input.gt,
        snakemake.input.pred,
        snakemake.output.visit,
        snakemake.output.lesions,
        participant_id=f"sub-{w.sub}",
        session=f"ses-{w.ses}",
        **snakemake.params.metrics,
    )
