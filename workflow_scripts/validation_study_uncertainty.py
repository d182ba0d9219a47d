"""Does the U-Net's MI map flag its errors, per GT visit (rule validation_study_uncertainty)."""

from t2lesion.logs import rule_log
from t2lesion.validation.run import run_uncertainty

with rule_log(snakemake.log[0], snakemake.threads):
    run_uncertainty(snakemake.params.visits, snakemake.output.visits, snakemake.output.summary)
