"""New/enlarging lesions of one subject and source over its visits (rule track_lesions)."""

from t2lesion.logs import rule_log
from t2lesion.tracking import run_tracking

with rule_log(snakemake.log[0], snakemake.threads):
    i, o, p = snakemake.input, snakemake.output, snakemake.params
    run_tracking(
        list(i.masks),
        list(p.sessions),
        o.lesions,
        o.visits,
        o.qc,
        participant_id=f"sub-{snakemake.wildcards.sub}",
        **p.tracking,
    )
