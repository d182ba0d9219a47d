# Ensembled MC-dropout inference of the U-Net (docs/DESIGN.md §7): the `unet` source. Visits are
# predicted in batches (one rule per trial and batch, as t2lesion.plan.Plan.infer_batches
# lists them) so that each job imports Keras and loads the fold models once; every visit
# gets its probability, mask (at the threshold t2lesion.unet.threshold.resolve_threshold
# gives), uncertainty maps and the mask back in its native FLAIR space, and its lesion load
# (TLV, TLC, and the threshold). No GT is needed.
from t2lesion.unet.stage import inference_params

INF = config["inference"]


for _batch in PLAN.infer_batches():

    rule:
        name:
            _batch.name
        input:
            models=PLAN.unet_models,
            # the fold thresholds (inference.threshold: auto; none for a fixed threshold)
            thresholds=PLAN.unet_thresholds,
            images=_batch.images,
            native=_batch.native,
        output:
            masks=_batch.masks,
            volumes=_batch.volumes,
        log:
            _batch.log,
        benchmark:
            _batch.benchmark
        conda:
            GPU_RULE_ENV
        threads: INF["threads"]
        resources:
            # under SLURM: --gpus=1, and memory/time for a batch of visits (the profile's
            # set-resources cannot name these per-batch rules in advance)
            gpu=1,
            mem_mb=32000,
            runtime=240,
        params:
            visits=_batch.visits,
            cfg=inference_params(INF),  # without inference.threads (speed only)
            seed=config["seed"],
            channel_order=MODEL_CFG.get("channel_order"),
            volume=VOLUME_PARAMS,
        message:
            _batch.message
        script:
            "../workflow_scripts/infer.py"
