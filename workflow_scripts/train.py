"""One fold of the U-Net, resumable (rule train). The GPU is leased and the Keras backend chosen
(config ``dl.backend``: t2lesion.unet.backend) before Keras is imported."""

from t2lesion import gpu
from t2lesion.logs import rule_log
from t2lesion.unet import backend

with rule_log(snakemake.log[0], snakemake.threads):
    lease = gpu.lease()
    # from the config, not params: the backend is how a job runs (like threads), so changing
    # it reruns nothing; a model trained on one backend loads on any other
    backend.select(getattr(snakemake, "config", {}).get("dl", {}).get("backend"), lease.how != "cpu")
    from t2lesion.unet.stage import run_train

    p, o = snakemake.params, snakemake.output
    run_train(snakemake.input.index, int(snakemake.wildcards.fold), p.resume_dir,
              {"model": o.model, "last": o.last, "history": o.history, "curve": o.curve},
              p.model, p.loss, p.training, p.seed)
