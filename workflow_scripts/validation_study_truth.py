"""The synthetic generator's known effects beside every source's estimate (rule validation_study_truth)."""

from t2lesion.logs import rule_log
from t2lesion.validation.run import run_truth

with rule_log(snakemake.log[0], snakemake.threads):
    i = snakemake.input
    run_truth(i.truth, snakemake.output[0], ancova_tsv=i.ancova, cox_tsv=i.cox, nb_tsv=i.get("nb"))
