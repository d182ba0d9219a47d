"""TLV agreement of every source with GT (rule validation_study_agreement)."""

from t2lesion.logs import rule_log
from t2lesion.validation.run import run_tlv_agreement

with rule_log(snakemake.log[0], snakemake.threads):
    run_tlv_agreement(snakemake.input.long, snakemake.output[0], confidence=snakemake.params.conf_level)
