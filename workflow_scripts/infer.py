"""Ensembled MC-dropout inference of the U-Net folds over a batch of visits, and each
predicted mask's lesion load (rules infer_<trial>_<batch>).

``params.visits``: list of visit dicts (keys: ``t2lesion.unet.infer.VISIT_KEYS``);
``input.models``: the fold models (each loaded once for the whole batch); ``params.cfg``: the
``inference:`` config section; ``params.seed``: base seed; ``params.channel_order``: the
model's; ``output.volumes``: one lesion-load table per visit, in the visits' order. The GPU
is leased and the Keras backend chosen (config ``dl.backend``: t2lesion.unet.backend) before
Keras is imported.
"""

import logging

from t2lesion import gpu
from t2lesion.logs import rule_log
from t2lesion.unet import backend

with rule_log(snakemake.log[0], snakemake.threads):
    lease = gpu.lease()
    # from the config, not params: the backend is how a job runs (like threads), so changing
    # it reruns nothing; a model trained on one backend loads on any other
    backend.select(getattr(snakemake, "config", {}).get("dl", {}).get("backend"), lease.how != "cpu")
    from t2lesion.evaluation.files import run_volume
    from t2lesion.unet.infer import predict_visits

    p = snakemake.params
    visits = list(p.visits)
    predict_visits(
        visits,
        list(snakemake.input.models),
        dict(p.cfg or {}),
        int(p.seed),
        logging.getLogger("t2lesion.infer"),
        channel_order=getattr(p, "channel_order", None),
    )
    for visit, volume in zip(visits, snakemake.output.volumes, strict=True):
        participant_id, session = visit["id"].split("_", 1)
        run_volume(visit["out_mask"], volume, participant_id=participant_id, session=session, **p.volume)
