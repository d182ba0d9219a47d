"""A training visit's reviewed mask carried into MNI, its training GT with
``trials.<t>.training_masks: reviewed`` (rule reviewed_training_mask; docs/DESIGN.md §14)."""

from t2lesion.corrections import run_training_mask
from t2lesion.logs import rule_log

with rule_log(snakemake.log[0], snakemake.threads):
    i, p = snakemake.input, snakemake.params
    run_training_mask(i.correction, i.flair, i.xfm, i.grid, snakemake.output[0], trial=snakemake.wildcards.trial,
                      sidecar=i.get("sidecar"), interpolation=p.interpolation)
