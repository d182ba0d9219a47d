"""One fold of the U-Net, resumable (rule train). The GPU is leased before Keras is imported."""

from t2lesion import gpu
from t2lesion.logs import rule_log

with rule_log(snakemake.log[0], snakemake.threads):
    gpu.lease()
    from t2lesion.unet.stage import run_train

    p, o = snakemake.params, snakemake.output
    run_train(snakemake.input.index, int(snakemake.wildcards.fold), p.resume_dir,
              {"model": o.model, "last": o.last, "history": o.history, "curve": o.curve},
              p.model, p.loss, p.training, p.seed)
