# Input validation (SPEC §1): every image is opened once before any heavy step;
# all problems are reported together, and nothing downstream runs on failure.


rule validate_bids:
    input:
        trial_inputs,
    output:
        report(
            "results/validated/trial-{trial}_visits.tsv",
            category="Inputs",
            caption="../report/visits.rst",
            labels={"table": "validated visits", "trial": "{trial}"},
        ),
    log:
        f"{LOGS}/validate_bids/trial-{{trial}}.log",
    benchmark:
        f"{BENCH}/validate_bids/trial-{{trial}}.tsv"
    conda:
        "../envs/imaging.yaml"
    threads: 1
    params:
        bids=lambda w: str(trial_of(w).bids),
        arms=lambda w: trial_of(w).arms,
        sessions=lambda w: trial_of(w).sessions,
        exclude=lambda w: list(trial_of(w).exclude),
    message:
        "Validating trial {wildcards.trial}: tables, file names and every image; problems are listed in {log}"
    script:
        "../workflow_scripts/validate_bids.py"
