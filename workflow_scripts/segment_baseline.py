"""Classical FLAIR-hyperintensity lesion segmentation (rule segment_baseline)."""

from t2lesion.classical import run_segment
from t2lesion.logs import rule_log

with rule_log(snakemake.log[0], snakemake.threads):
    i, p = snakemake.input, snakemake.params
    run_segment(
        i.flair,
        i.t1w,
        i.mask,
        snakemake.output[0],
        z_threshold=p.z_threshold,
        t1_max_z=p.t1_max_z,
        min_size=p.min_size,
        connectivity=p.connectivity,
    )
