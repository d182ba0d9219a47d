"""results/report/summary.md: every table and figure of the run, in plain Markdown (rule summary)."""

from t2lesion.logs import rule_log
from t2lesion.report import write_summary

with rule_log(snakemake.log[0], snakemake.threads):
    p = snakemake.params
    write_summary(p.trials, p.histories, snakemake.output[0], p.training_figures, p.thresholds, p.unet_threshold,
                  p.conf_level)
