"""Generate a synthetic trial (BIDS + truth) for rule synth_<trial>."""

from t2lesion.logs import rule_log
from t2lesion.synth import SynthParams, generate_trial

with rule_log(snakemake.log[0], snakemake.threads):
    params = SynthParams.from_dict({**snakemake.params.synthetic, "arms": list(snakemake.params.arms)})
    generate_trial(snakemake.params.root, params, n_jobs=snakemake.threads)
