# Synthetic trials (docs/DESIGN.md §10): one rule per synthetic trial, because each
# declares exactly the BIDS files its parameters imply.


for _trial in PLAN.synthetic.values():

    rule:
        name:
            f"synth_{_trial.name}"
        output:
            PLAN.synth_outputs(_trial.name),
        log:
            f"{LOGS}/synth/trial-{_trial.name}.log",
        benchmark:
            f"{BENCH}/synth/trial-{_trial.name}.tsv"
        priority: PLAN.SYNTHESIS_PRIORITY
        conda:
            "../envs/imaging.yaml"
        threads: 2
        params:
            # the trial folder holds bids/ and truth/: derived from truth/params.json
            root=lambda w, output: synthetic_root(output),
            synthetic=_trial.synthetic,
            arms=_trial.arms,
        script:
            "../workflow_scripts/synth.py"
