"""Long table of TLV/TLC per subject x week x source, GT where it exists (rule tlv_long)."""

from t2lesion.logs import rule_log
from t2lesion.stats import run_long_table

with rule_log(snakemake.log[0], snakemake.threads):
    volumes = {}
    for source, path in zip(snakemake.params.sources, snakemake.input.volumes):
        volumes.setdefault(source, []).append(path)
    run_long_table(
        volumes,
        snakemake.output.long,
        visits_tsv=snakemake.input.visits,
        exclusions_tsv=snakemake.output.exclusions,
    )
