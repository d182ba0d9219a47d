"""Per-visit new-lesion counts of every source against GT (rule new_lesion_agreement)."""

from t2lesion.logs import rule_log
from t2lesion.tracking import run_agreement

with rule_log(snakemake.log[0], snakemake.threads):
    i, p = snakemake.input, snakemake.params
    visits, qc = {}, {}
    for source, tsv, folder in zip(p.sources, i.visits, i.qc):
        visits.setdefault(source, []).append(tsv)
        qc.setdefault(source, []).append(folder)
    run_agreement(
        visits,
        qc,
        snakemake.output[0],
        new_overlap=p.new_overlap,
        connectivity=p.connectivity,
        confidence=p.conf_level,
    )
