"""One GT visit: every source's voxel- and lesion-level metrics against the GT, and the GT's
lesion load (rule metrics_visit)."""

from t2lesion.evaluation.files import run_visit, run_volume
from t2lesion.logs import rule_log

with rule_log(snakemake.log[0], snakemake.threads):
    w, i, o, p = snakemake.wildcards, snakemake.input, snakemake.output, snakemake.params
    visit = {"participant_id": f"sub-{w.sub}", "session": f"ses-{w.ses}"}
    run_volume(i.gt, o.gt_volume, **visit, **p.volume)
    for source in p.sources:
        pred = i[f"pred_{source}"]
        run_visit(i.gt, pred, o[f"visit_{source}"], o[f"lesions_{source}"], **visit, **p.metrics)
