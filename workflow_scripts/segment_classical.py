"""Classical FLAIR-hyperintensity lesion segmentation and the mask's lesion load (rule
segment_classical)."""

from t2lesion.classical import run_segment
from t2lesion.evaluation.files import run_volume
from t2lesion.logs import rule_log

with rule_log(snakemake.log[0], snakemake.threads):
    w, i, o, p = snakemake.wildcards, snakemake.input, snakemake.output, snakemake.params
    run_segment(i.flair, i.t1w, i.mask, o.mask, **p.classical, connectivity=p.connectivity)
    run_volume(o.mask, o.volume, participant_id=f"sub-{w.sub}", session=f"ses-{w.ses}", **p.volume)
