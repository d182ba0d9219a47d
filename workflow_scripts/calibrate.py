"""One fold's probability threshold, chosen on its held-out visits (rule calibrate). The GPU is
leased and the Keras backend chosen (config ``dl.backend``: t2lesion.unet.backend) before Keras
is imported."""

from t2lesion.logs import rule_log
from t2lesion.unet import backend

with rule_log(snakemake.log[0], snakemake.threads):
    backend.start_job(getattr(snakemake, "config", {}))
    from t2lesion.unet.stage import run_calibrate

    p, o = snakemake.params, snakemake.output
    run_calibrate(snakemake.input.model, dict(zip(p.trials, snakemake.input.folds, strict=True)), p.visits,
                  int(snakemake.wildcards.fold), {"threshold": o.threshold, "curve": o.curve, "plot": o.plot},
                  dict(p.cfg or {}), int(p.seed), getattr(p, "channel_order", None))
