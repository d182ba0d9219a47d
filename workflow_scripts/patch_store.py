"""One training visit as one memory-mappable array: contrasts, GT mask and α (rule patch_store)."""

from t2lesion.logs import rule_log
from t2lesion.unet.losses import LossConfig
from t2lesion.unet.patches import store_visit

with rule_log(snakemake.log[0], snakemake.threads):
    i, p = snakemake.input, snakemake.params
    store_visit({"T2w": i.t2w, "FLAIR": i.flair, "T1w": i.t1w}, i.mask, i.gt, snakemake.output.npy,
                LossConfig.from_dict(p.loss), tuple(p.patch_size))
