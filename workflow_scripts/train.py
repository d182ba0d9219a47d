"""One fold of the U-Net, resumable (rule train). The GPU is leased and the Keras backend chosen
(config ``dl.backend``: t2lesion.unet.backend) before Keras is imported."""

from t2lesion.logs import rule_log
from t2lesion.unet import backend

# training.workers, loader and threads from the config, not the params: they set speed only
# (stage.training_params). The job's cores (stage.train_job_threads) are the model's threads
# and one per loader worker process: the model's libraries get training.threads of them.
speed = (getattr(snakemake, "config", {}) or {}).get("training", {})
model_threads = min(int(speed.get("threads", snakemake.threads)), snakemake.threads)

with rule_log(snakemake.log[0], model_threads):
    backend.start_job(getattr(snakemake, "config", {}))
    from t2lesion.unet.stage import run_train

    p, o = snakemake.params, snakemake.output
    run_train(snakemake.input.index, int(snakemake.wildcards.fold), p.resume_dir,
              {"model": o.model, "last": o.last, "history": o.history, "curve": o.curve},
              p.model, p.loss, p.training, p.seed, workers=speed.get("workers"), loader=speed.get("loader"))
