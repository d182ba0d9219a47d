"""Ensembled MC-dropout inference of the U-Net folds over a batch of visits (rules infer_<trial>_<batch>).

``params.visits``: list of visit dicts (keys: ``t2lesion.unet.infer.VISIT_KEYS``);
``input.models``: the fold models (each loaded once for the whole batch); ``params.cfg``: the
``inference:`` config section; ``params.seed``: base seed; ``params.channel_order``: the
model's. The GPU is leased before Keras is imported.
"""

import logging

from t2lesion import gpu
from t2lesion.logs import rule_log

with rule_log(snakemake.log[0], snakemake.threads):
    gpu.lease()
    from t2lesion.unet.infer import predict_visits

    p = snakemake.params
    predict_visits(
        list(p.visits),
        list(snakemake.input.models),
        dict(p.cfg or {}),
        int(p.seed),
        logging.getLogger("t2lesion.infer"),
        channel_order=getattr(p, "channel_order", None),
    )
