"""GT-mask new lesions against the generator's truth, by size; the size floor, and the gain floor of enlarging lesions (rule validation_study_new_lesion_truth)."""

from t2lesion.logs import rule_log
from t2lesion.validation.new_lesion_truth import run_new_lesion_truth

with rule_log(snakemake.log[0], snakemake.threads):
    p, o = snakemake.params, snakemake.output
    fu = p.visits["followups"]
    run_new_lesion_truth(
        snakemake.input.truth,
        {(f["participant_id"], f["session"]): f["qc"] for f in fu},
        {(f["participant_id"], f["session"]): f["xfm"] for f in fu},
        p.visits["sessions"],
        o.lesions,
        o.masks,
        o.sizes,
        o.floors,
        tracked=list(snakemake.input.tracked),
        out_enlarge_floors_tsv=o.enlarge_floors,
        reference=p.reference,
        connectivity=p.connectivity,
        enlarge_relative=p.enlarge_relative,
        enlarge_voxels=p.enlarge_voxels,
    )
