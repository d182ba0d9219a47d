"""One fold's probability threshold, chosen on its held-out visits (rule calibrate). The GPU
is leased before Keras is imported."""

from t2lesion import gpu
from t2lesion.logs import rule_log

with rule_log(snakemake.log[0], snakemake.threads):
    gpu.lease()
    from t2lesion.unet.stage import run_calibrate

    p, o = snakemake.params, snakemake.output
    run_calibrate(snakemake.input.model, dict(zip(p.trials, snakemake.input.folds, strict=True)), p.visits,
                  int(snakemake.wildcards.fold), {"threshold": o.threshold, "curve": o.curve, "plot": o.plot},
                  dict(p.cfg or {}), int(p.seed), getattr(p, "channel_order", None))
