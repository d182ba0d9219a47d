"""Every source of one trial side by side: Table 2, size groups, TLV agreement (rule metrics_compare)."""

from pathlib import Path

from t2lesion.evaluation.files import run_compare
from t2lesion.logs import rule_log

with rule_log(snakemake.log[0], snakemake.threads):
    o = snakemake.output
    folders = {s: Path(p).parent for s, p in zip(snakemake.params.sources, snakemake.input.table2)}
    run_compare(folders, o.table2, o.fig_size_groups, o.fig_tlv, trial=snakemake.wildcards.trial)
