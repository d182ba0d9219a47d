"""Patient-level fold split of one training trial (rule fold_split)."""

from t2lesion.logs import rule_log
from t2lesion.unet.stage import run_fold_split

with rule_log(snakemake.log[0], snakemake.threads):
    p = snakemake.params
    run_fold_split(snakemake.input.validated, snakemake.input.participants, snakemake.output[0],
                   arms=p.arms, folds=p.folds, seed=p.seed)
