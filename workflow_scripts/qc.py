"""QC picture of a preprocessed visit: contrasts, brain outline, GT lesions (rule qc)."""

from t2lesion.logs import rule_log
from t2lesion.plots.qc import qc_png

with rule_log(snakemake.log[0], snakemake.threads):
    i = snakemake.input
    qc_png(i.t1w, i.t2w, i.flair, i.mask, i.get("gt"), snakemake.output[0])
