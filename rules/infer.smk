# Ensembled MC-dropout inference of the U-Net (SPEC §7): the `unet` source. Visits are
# predicted in batches (one rule per trial and batch) so that each job imports Keras and
# loads the fold models once; every visit gets its probability, mask, uncertainty maps and
# the mask back in its native FLAIR space, and its lesion load (TLV, TLC). No GT is needed.
INF = config["inference"]
UNET_OUT = {
    "prob": f"{MNI}_desc-lesion_probseg.nii.gz",
    "mask": f"{MNI}_desc-lesion_mask.nii.gz",
    "sd": f"{MNI}_desc-sd_uncertainty.nii.gz",
    "entropy": f"{MNI}_desc-entropy_uncertainty.nii.gz",
    "mi": f"{MNI}_desc-mi_uncertainty.nii.gz",
    "native_mask": "space-FLAIR_desc-lesion_mask.nii.gz",
}


def infer_batches(trial):
    """The trial's visits in batches of inference.visits_per_job."""
    visits = list(TRIALS[trial].visits)
    n = INF["visits_per_job"]
    return [visits[i : i + n] for i in range(0, len(visits), n)]


def infer_visit(trial, v):
    """Input and output paths of one visit (the keys t2lesion.unet.infer.predict_visits reads)."""
    pre = PRE.format(trial=trial, sub=v.sub, ses=v.ses)
    pred = PRED.format(source="unet", trial=trial, sub=v.sub, ses=v.ses)
    t = TRIALS[trial]
    return {
        "id": f"sub-{v.sub}_ses-{v.ses}",
        "T2w": f"{pre}_{MNI}_desc-preproc_T2w.nii.gz",
        "FLAIR": f"{pre}_{MNI}_desc-preproc_FLAIR.nii.gz",
        "T1w": f"{pre}_{MNI}_desc-preproc_T1w.nii.gz",
        "brain_mask": f"{pre}_{MNI}_desc-brain_mask.nii.gz",
        "native_flair": str(t.image(v, "FLAIR")),
        "flair_xfm": f"{pre}_from-FLAIR_to-MNI1x1x3_xfm.tfm",
        **{f"out_{key}": f"{pred}_{suffix}" for key, suffix in UNET_OUT.items()},
    }


if "unet" in config["sources"]:
    for _trial in TEST_TRIALS:
        if TRIALS[_trial].problems:
            continue
        for _i, _batch in enumerate(infer_batches(_trial)):
            _visits = [infer_visit(_trial, v) for v in _batch]

            rule:
                name:
                    f"infer_{_trial}_{_i + 1}"
                input:
                    models=UNET_MODELS,
                    images=[
                        d[k]
                        for d in _visits
                        for k in ("T2w", "FLAIR", "T1w", "brain_mask", "flair_xfm")
                    ],
                    native=[d["native_flair"] for d in _visits],
                output:
                    masks=[d[f"out_{k}"] for d in _visits for k in UNET_OUT],
                    volumes=[
                        VOLUME.format(
                            source="unet", trial=_trial, sub=v.sub, ses=v.ses
                        )
                        for v in _batch
                    ],
                log:
                    f"{LOGS}/infer/trial-{_trial}_batch-{_i + 1}.log",
                benchmark:
                    f"{BENCH}/infer/trial-{_trial}_batch-{_i + 1}.tsv"
                conda:
                    "../envs/dl.yaml"
                threads: INF["threads"]
                resources:
                    # under SLURM: --gpus=1, and memory/time for a batch of visits (the
                    # profile's set-resources cannot name these per-batch rules in advance)
                    gpu=1,
                    mem_mb=32000,
                    runtime=240,
                params:
                    visits=_visits,
                    cfg=INF,
                    seed=config["seed"],
                    channel_order=MODEL_CFG.get("channel_order"),
                    volume=VOLUME_PARAMS,
                message:
                    f"U-Net inference, trial {_trial}, batch {_i + 1}: {len(_visits)} visits"
                script:
                    "../workflow_scripts/infer.py"
