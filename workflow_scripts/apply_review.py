"""A visit's `reviewed` mask: the U-Net mask with the reader's correction applied, and its
lesion load (rule apply_review; docs/DESIGN.md §14)."""

from t2lesion.corrections import run_apply_review
from t2lesion.evaluation.files import run_volume
from t2lesion.logs import rule_log

with rule_log(snakemake.log[0], snakemake.threads):
    w, i, o, p = snakemake.wildcards, snakemake.input, snakemake.output, snakemake.params
    ids = {"participant_id": f"sub-{w.sub}", "session": f"ses-{w.ses}"}
    run_apply_review(
        i.unet_mni,
        o.mask,
        o.status,
        **ids,
        unet_native=i.unet_native,
        flair=i.flair,
        xfm=i.xfm,
        correction=getattr(i, "correction", None),
        sidecar=getattr(i, "sidecar", None),
        interpolation=p.interpolation,
    )
    run_volume(o.mask, o.volume, **ids, **p.volume)
