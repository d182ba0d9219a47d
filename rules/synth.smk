# Synthetic trials (SPEC §10): one rule per synthetic trial, because each
# declares exactly the BIDS files its parameters imply.


def synth_outputs(trial):
    bids = str(trial.bids)
    files = [
        f"{bids}/participants.tsv",
        f"{bids}/phenotype/outcomes.tsv",
        f"{trial.root}/truth/params.json",
        f"{trial.root}/truth/visits.tsv",
        f"{trial.root}/truth/lesions.tsv",
        f"{trial.root}/truth/subjects.tsv",
    ]
    for v in trial.visits:
        files += [str(image_path(bids, v.sub, v.ses, m)) for m in MODALITIES]
        files.append(str(gt_mask_path(bids, v.sub, v.ses)))
    return files


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
        params:
            root=str(_trial.root),
            synthetic=_trial.synthetic,
            arms=_trial.arms,
        conda:
            "../envs/imaging.yaml"
        threads: 2
        script:
            "../workflow_scripts/synth.py"
