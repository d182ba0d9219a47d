"""TLV and TLC of one visit's mask from one source, GT or prediction (rule lesion_volume)."""

from t2lesion.logs import rule_log
from t2lesion.metrics import run_volume

with rule_log(snakemake.log[0], snakemake.threads):
    w = snakemake.wildcards
    run_volume(
        snakemake.input[0],
        snakemake.output[0],
        participant_id=f"sub-{w.sub}",
        session=f"ses-{w.ses}",
        connectivity=snakemake.params.connectivity,
        min_size=snakemake.params.min_size,
        clean_voxel_metrics=snakemake.params.clean_voxel_metrics,
    )
