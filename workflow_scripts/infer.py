"""Ensembled MC-dropout U-Net inference of a batch of visits (rules infer_<trial>_<batch>)."""

from t2lesion import gpu
from t2lesion.logs import rule_log

with rule_log(snakemake.log[0], snakemake.threads):
    gpu.lease()
    from t2lesion.unet.infer import predict_visits

    p = snakemake.params
    predict_visits(p.visits, list(snakemake.input.models), p.cfg, p.seed)
