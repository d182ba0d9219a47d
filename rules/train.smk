# U-Net training (docs/DESIGN.md §3, §6): a patient-level fold split per training trial, every GT
# visit stored once as a memory-mappable array, an index of lesion windows per fold, and
# one resumable GPU job per fold. Fold k's model is validated on fold k of every training
# trial and trained on the others.
from t2lesion.unet.stage import inference_params, train_job_threads, training_params

TR = config["training"]


rule fold_split:
    input:
        validated=VALIDATED,
        participants=bids_table("participants.tsv"),
    output:
        report(
            f"{TRAIN}/trial-{{trial}}/folds.tsv",
            caption="../report/folds.rst",
            category="Training",
            subcategory="U-Net training",
            labels={"table": "fold split", "trial": "{trial}"},
        ),
    log:
        f"{LOGS}/fold_split/trial-{{trial}}.log",
    benchmark:
        f"{BENCH}/fold_split/trial-{{trial}}.tsv"
    priority: training_first
    conda:
        "../envs/dl.yaml"
    threads: 1
    params:
        folds=TR["folds"],
        seed=config["seed"],
        arms=lambda w: trial_of(w).arms,
    script:
        "../workflow_scripts/fold_split.py"


rule patch_store:
    input:
        t2w=f"{PRE}_{MNI}_desc-preproc_T2w.nii.gz",
        flair=f"{PRE}_{MNI}_desc-preproc_FLAIR.nii.gz",
        t1w=f"{PRE}_{MNI}_desc-preproc_T1w.nii.gz",
        mask=f"{PRE}_{MNI}_desc-brain_mask.nii.gz",
        # the GT carried into MNI, or the reader's mask (training_masks: reviewed)
        gt=lambda w: PLAN.training_mask(w.trial, w.sub, w.ses),
    output:
        npy=f"{TRAIN}/trial-{{trial}}/store/sub-{{sub}}_ses-{{ses}}.npy",
        meta=f"{TRAIN}/trial-{{trial}}/store/sub-{{sub}}_ses-{{ses}}.json",
    log:
        f"{LOGS}/patch_store/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.log",
    benchmark:
        f"{BENCH}/patch_store/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.tsv"
    priority: training_first
    conda:
        "../envs/dl.yaml"
    threads: 1
    params:
        loss=config["loss"],
        patch_size=MODEL_CFG["patch_size"],
    script:
        "../workflow_scripts/patch_store.py"


# A train trial with training_masks: reviewed (docs/DESIGN.md §14) trains on its readers'
# masks from derivatives/lesions-reviewed/, each carried into MNI as the GT mask is; a bad
# one (grid, values) stops its job with one line naming the file.
rule reviewed_training_mask:
    input:
        unpack(lambda w: PLAN.reviewed_training_inputs(w.trial, w.sub, w.ses)),
    output:
        REVIEWED_TRAINING_MASK,
    log:
        f"{LOGS}/reviewed_training_mask/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.log",
    benchmark:
        f"{BENCH}/reviewed_training_mask/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.tsv"
    wildcard_constraints:
        trial=PLAN.reviewed_training_trials,
    conda:
        "../envs/imaging.yaml"
    threads: 1
    params:
        interpolation=config["preprocess"]["gt_interpolation"],
    script:
        "../workflow_scripts/reviewed_training_mask.py"


rule patch_index:
    input:
        folds=f"{TRAIN}/trial-{{trial}}/folds.tsv",
        store=lambda w: PLAN.patch_store_files(w.trial),
    output:
        expand(
            f"{TRAIN}/trial-{{{{trial}}}}/index_fold-{{fold}}.tsv",
            fold=PLAN.folds,
        ),
    log:
        f"{LOGS}/patch_index/trial-{{trial}}.log",
    benchmark:
        f"{BENCH}/patch_index/trial-{{trial}}.tsv"
    priority: training_first
    conda:
        "../envs/dl.yaml"
    threads: 1
    params:
        patch_size=MODEL_CFG["patch_size"],
        overlap=TR["patch_overlap"],
        folds=PLAN.folds,
    script:
        "../workflow_scripts/patch_index.py"


rule train:
    input:
        index=PLAN.train_indexes(),
    output:
        model=f"{TRAIN}/fold-{{fold}}/model.keras",
        last=f"{TRAIN}/fold-{{fold}}/last.keras",
        history=report(
            f"{TRAIN}/fold-{{fold}}/history.tsv",
            caption="../report/history.rst",
            category="Training",
            subcategory="U-Net training",
            labels={"table": "history", "fold": "{fold}"},
        ),
        curve=report(
            f"{TRAIN}/fold-{{fold}}/training_curve.png",
            caption="../report/training_curve.rst",
            category="Training",
            subcategory="U-Net training",
            labels={"figure": "training curve", "fold": "{fold}"},
        ),
    log:
        f"{LOGS}/train/fold-{{fold}}.log",
    benchmark:
        f"{BENCH}/train/fold-{{fold}}.tsv"
    priority: PLAN.TRAINING_PATH_PRIORITY
    conda:
        GPU_RULE_ENV
    # training.threads for the model, and a core per loader worker process
    threads: train_job_threads(TR)
    resources:
        gpu=1,
    params:
        # checkpoints outside the declared outputs: Snakemake deletes a failed job's
        # outputs, and a killed fold resumes from here at its next epoch
        resume_dir=f"{TRAIN}/fold-{{fold}}/checkpoint",
        model=config["model"],
        loss=config["loss"],
        # what the fold learns; training.workers and threads (speed only) are read from
        # the config by the script, so changing them never reruns a finished fold
        training=training_params(TR),
        seed=config["seed"],
    script:
        "../workflow_scripts/train.py"


# Each fold's probability threshold, chosen on its held-out visits (the GT visits of its
# validation fold) predicted whole as inference predicts them (docs/DESIGN.md §6, §7). Apart
# from train, so that a finished fold's training outputs stay as they are.
rule calibrate:
    input:
        model=f"{TRAIN}/fold-{{fold}}/model.keras",
        folds=PLAN.fold_split_tables(),
        images=PLAN.calibration_inputs(),
    output:
        threshold=f"{TRAIN}/fold-{{fold}}/threshold.json",
        curve=report(
            f"{TRAIN}/fold-{{fold}}/threshold_curve.tsv",
            caption="../report/threshold_curve.rst",
            category="Training",
            subcategory="U-Net training",
            labels={"table": "threshold curve", "fold": "{fold}"},
        ),
        plot=report(
            f"{TRAIN}/fold-{{fold}}/threshold_curve.png",
            caption="../report/threshold_curve.rst",
            category="Training",
            subcategory="U-Net training",
            labels={"figure": "threshold curve", "fold": "{fold}"},
        ),
    log:
        f"{LOGS}/calibrate/fold-{{fold}}.log",
    benchmark:
        f"{BENCH}/calibrate/fold-{{fold}}.tsv"
    priority: PLAN.TRAINING_PATH_PRIORITY
    conda:
        GPU_RULE_ENV
    # a fold's job, like train: beside the folds still training (the CPU demo's 1 thread)
    threads: TR["threads"]
    resources:
        gpu=1,
        mem_mb=32000,
        runtime=240,
    params:
        trials=PLAN.train_trials,
        visits=PLAN.calibration_visits(),
        cfg=inference_params(config["inference"]),  # without inference.threads (speed only)
        seed=config["seed"],
        channel_order=MODEL_CFG.get("channel_order"),
    script:
        "../workflow_scripts/calibrate.py"
