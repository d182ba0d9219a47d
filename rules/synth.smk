# Synthetic trials (SPEC §10): one rule per synthetic trial, because each
# declares exactly the BIDS files its parameters imply.


for _trial in SYNTHETIC.values():

    rule:
        name:
            f"synth_{_trial.name}"
        output:
            synth_outputs(_trial),
        log:
            f"{LOGS}/synth/trial-{_trial.name}.log",
        benchmark:
            f"{BENCH}/synth/trial-{_trial.name}.tsv"
        conda:
            "../envs/imaging.yaml"
        threads: 2
        params:
            root=str(_trial.root),
            synthetic=_trial.synthetic,
            arms=_trial.arms,
        script:
            "../workflow_scripts/synth.py"
