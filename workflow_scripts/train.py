"""One fold of the U-Net, resumable (rule train). The GPU is leased and the Keras backend chosen
(config ``dl.backend``: t2lesion.unet.backend) before Keras is imported."""

from t2lesion.logs import rule_log
from t2lesion.unet import backend

with rule_log(snakemake.log[0], snakemake.threads):
    backend.start_job(getattr(snakemake, "config", {}))
    from t2lesion.unet.stage import run_train

    p, o = snakemake.params, snakemake.output
    # training.workers and loader from the config, not the params: they set speed only
    # (stage.training_params)
    speed = (getattr(snakemake, "config", {}) or {}).get("training", {})
    run_train(snakemake.input.index, int(snakemake.wildcards.fold), p.resume_dir,
              {"model": o.model, "last": o.last, "history": o.history, "curve": o.curve},
              p.model, p.loss, p.training, p.seed, workers=speed.get("workers"), loader=speed.get("loader"))
