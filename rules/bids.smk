# Input validation (SPEC §1): every image is opened once before any heavy step;
# all problems are reported together, and nothing downstream runs on failure.


def trial_inputs(wildcards):
    trial = trial_of(wildcards)
    files = [str(trial.bids / "participants.tsv"), str(trial.bids / "phenotype" / "outcomes.tsv")]
    for v in trial.visits:
        files += [str(image_path(trial.bids, v.sub, v.ses, m)) for m in MODALITIES]
    for v in trial.gt_visits:
        files.append(str(gt_mask_path(trial.bids, v.sub, v.ses)))
    return files


rule validate_bids:
    input:
        trial_inputs,
    output:
        "results/validated/trial-{trial}_visits.tsv",
    log:
        f"{LOGS}/validate_bids/trial-{{trial}}.log",
    benchmark:
        f"{BENCH}/validate_bids/trial-{{trial}}.tsv"
    params:
        bids=lambda w: str(trial_of(w).bids),
        arms=lambda w: trial_of(w).arms,
    conda:
        "../envs/imaging.yaml"
    threads: 1
    script:
        "../workflow_scripts/validate_bids.py"
