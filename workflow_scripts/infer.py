"""Ensembled MC-dropout inference of the U-Net folds over a batch of visits (rule infer).

``params.visits``: list of visit dicts (keys: ``t2lesion.unet.infer.VISIT_KEYS``);
``input.models``: the fold models (each loaded once for the whole batch); ``params.cfg``: the
``inference:`` config section; ``params.seed``: base seed; optional ``params.channel_order``
(the ``model:`` section's, default T2w, FLAIR, T1w).
"""

import logging
import os

from t2lesion.logs import rule_log

with rule_log(snakemake.log[0], snakemake.threads):
    # TensorFlow sizes its thread pools at import: cap them at the rule's threads first
    for var in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ.setdefault(var, str(snakemake.threads))
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
