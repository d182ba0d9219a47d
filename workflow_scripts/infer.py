"""Ensembled MC-dropout inference of the U-Net folds over a batch of visits, and each
predicted mask's lesion load (rules infer_<trial>_<batch>).

``params.visits``: list of visit dicts (keys: ``t2lesion.unet.infer.VISIT_KEYS``);
``input.models``: the fold models (each loaded once for the whole batch); ``input.thresholds``
(optional): their threshold.json files; ``params.cfg``: the ``inference:`` config section,
whose ``threshold`` (``auto`` or a number) ``t2lesion.unet.threshold.resolve_threshold``
turns into the value applied (logged in one line, and a ``threshold`` column in each visit's
volume table); ``params.seed``: base seed; ``params.channel_order``: the model's;
``output.volumes``: one lesion-load table per visit, in the visits' order; ``output.masks``:
the maps written (the optional ones config ``inference.uncertainty_maps`` leaves out are not
among them, and are not written). The GPU is leased
and the Keras backend chosen (config ``dl.backend``: t2lesion.unet.backend) before Keras is
imported.
"""

import logging

from t2lesion.logs import rule_log
from t2lesion.unet import backend

with rule_log(snakemake.log[0], snakemake.threads):
    backend.start_job(getattr(snakemake, "config", {}))
    from t2lesion.evaluation.files import run_volume
    from t2lesion.unet.infer import declared_maps, predict_visits
    from t2lesion.unet.threshold import resolve_threshold

    p = snakemake.params
    log = logging.getLogger("t2lesion.infer")
    cfg = dict(p.cfg or {})
    models = list(snakemake.input.models)
    choice = resolve_threshold(cfg.get("threshold", "auto"), list(getattr(snakemake.input, "thresholds", [])),
                               len(models), cfg.get("models"))
    (log.warning if choice.rule == "fallback" else log.info)("%s", choice.line())
    cfg["threshold"] = choice.value
    visits = declared_maps(p.visits, getattr(snakemake.output, "masks", None))
    predict_visits(visits, models, cfg, int(p.seed), log, channel_order=getattr(p, "channel_order", None))
    for visit, volume in zip(visits, snakemake.output.volumes, strict=True):
        participant_id, session = visit["id"].split("_", 1)
        run_volume(visit["out_mask"], volume, participant_id=participant_id, session=session,
                   extra={"threshold": choice.value}, **p.volume)
