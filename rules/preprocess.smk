# Preprocessing per visit (SPEC §2), in the paper's order: N4, intra-visit
# alignment, skull stripping (native T1w), baseline -> MNI and follow-up ->
# baseline rigid registration (brain to brain), one resampling of every native
# image into the MNI-aligned 1x1x3 mm grid with the normalisation in the same job,
# then QC. One job per visit and step (a step on several contrasts does them all):
# each job pays its own Python and library start-up. The N4 images are temporary
# and uncompressed (.nii): gzip cost more CPU than the disk it saves.
PP = config["preprocess"]


rule n4:
    input:
        t1w=lambda w: bids_image(w, "T1w"),
        t2w=lambda w: bids_image(w, "T2w"),
        flair=lambda w: bids_image(w, "FLAIR"),
        validated=VALIDATION_PASSED,
    output:
        t1w=temp(f"{PRE}_desc-n4_T1w.nii"),
        t2w=temp(f"{PRE}_desc-n4_T2w.nii"),
        flair=temp(f"{PRE}_desc-n4_FLAIR.nii"),
    log:
        f"{LOGS}/n4/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.log",
    benchmark:
        f"{BENCH}/n4/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.tsv"
    conda:
        "../envs/imaging.yaml"
    threads: PP["threads"]
    params:
        shrink=PP["n4_shrink"],
        iterations=PP["n4_iterations"],
    script:
        "../workflow_scripts/n4.py"


rule coregister:
    input:
        t1w=f"{PRE}_desc-n4_T1w.nii",
        t2w=f"{PRE}_desc-n4_T2w.nii",
        flair=f"{PRE}_desc-n4_FLAIR.nii",
    output:
        t2w=f"{PRE}_from-T2w_to-T1w_xfm.tfm",
        flair=f"{PRE}_from-FLAIR_to-T1w_xfm.tfm",
    log:
        f"{LOGS}/coregister/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.log",
    benchmark:
        f"{BENCH}/coregister/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.tsv"
    conda:
        "../envs/imaging.yaml"
    threads: PP["threads"]
    script:
        "../workflow_scripts/coregister.py"


rule skull_strip:
    input:
        f"{PRE}_desc-n4_T1w.nii",
    output:
        f"{PRE}_space-T1w_desc-brain_mask.nii.gz",
    log:
        f"{LOGS}/skull_strip/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.log",
    benchmark:
        f"{BENCH}/skull_strip/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.tsv"
    conda:
        "../envs/imaging.yaml"
    threads: PP["threads"]
    params:
        method=PP["skull_strip"],
        volume_ml=PP["brain_volume_ml"],
    script:
        "../workflow_scripts/skull_strip.py"


rule register_mni:
    input:
        t1w=f"{PRE}_desc-n4_T1w.nii",
        mask=f"{PRE}_space-T1w_desc-brain_mask.nii.gz",
    output:
        f"{PRE}_from-T1w_to-MNI_xfm.tfm",
    log:
        f"{LOGS}/register_mni/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.log",
    benchmark:
        f"{BENCH}/register_mni/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.tsv"
    wildcard_constraints:
        ses="w000",
    conda:
        "../envs/imaging.yaml"
    threads: PP["threads"]
    script:
        "../workflow_scripts/register_mni.py"


rule register_baseline:
    input:
        unpack(followup_mask),
        t1w=f"{PRE}_desc-n4_T1w.nii",
        baseline_t1w=f"{PRE_BASELINE}_desc-n4_T1w.nii",
        baseline_mask=f"{PRE_BASELINE}_space-T1w_desc-brain_mask.nii.gz",
    output:
        f"{PRE}_from-T1w_to-baseline_xfm.tfm",
    log:
        f"{LOGS}/register_baseline/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.log",
    benchmark:
        f"{BENCH}/register_baseline/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.tsv"
    wildcard_constraints:
        ses=r"w(?!000)\d{3}",
    conda:
        "../envs/imaging.yaml"
    threads: PP["threads"]
    script:
        "../workflow_scripts/register_baseline.py"


rule resample:
    input:
        unpack(to_mni_chain),
        t1w=f"{PRE}_desc-n4_T1w.nii",
        t2w=f"{PRE}_desc-n4_T2w.nii",
        flair=f"{PRE}_desc-n4_FLAIR.nii",
        t2w_xfm=f"{PRE}_from-T2w_to-T1w_xfm.tfm",
        flair_xfm=f"{PRE}_from-FLAIR_to-T1w_xfm.tfm",
        mask=native_brain_mask,
    output:
        t1w=f"{PRE}_{MNI}_desc-preproc_T1w.nii.gz",
        t2w=f"{PRE}_{MNI}_desc-preproc_T2w.nii.gz",
        flair=f"{PRE}_{MNI}_desc-preproc_FLAIR.nii.gz",
        mask=f"{PRE}_{MNI}_desc-brain_mask.nii.gz",
        t1w_xfm=f"{PRE}_from-T1w_to-MNI1x1x3_xfm.tfm",
        t2w_xfm=f"{PRE}_from-T2w_to-MNI1x1x3_xfm.tfm",
        flair_xfm=f"{PRE}_from-FLAIR_to-MNI1x1x3_xfm.tfm",
    log:
        f"{LOGS}/resample/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.log",
    benchmark:
        f"{BENCH}/resample/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.tsv"
    conda:
        "../envs/imaging.yaml"
    threads: PP["threads"]
    params:
        brain_mask_space=lambda w: "T1w" if own_brain_mask(w) else "baseline",
        clip_percentiles=PP["clip_percentiles"],
    script:
        "../workflow_scripts/resample.py"


rule resample_gt:
    input:
        gt=bids_gt,
        validated=VALIDATION_PASSED,
        flair_xfm=f"{PRE}_from-FLAIR_to-MNI1x1x3_xfm.tfm",
        reference=f"{PRE}_{MNI}_desc-brain_mask.nii.gz",
    output:
        f"{PRE}_{MNI}_desc-lesionGT_mask.nii.gz",
    log:
        f"{LOGS}/resample_gt/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.log",
    benchmark:
        f"{BENCH}/resample_gt/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.tsv"
    conda:
        "../envs/imaging.yaml"
    threads: PP["threads"]
    params:
        interpolation=PP["gt_interpolation"],
    script:
        "../workflow_scripts/resample_gt.py"


rule qc:
    input:
        unpack(qc_gt),
        t1w=f"{PRE}_{MNI}_desc-preproc_T1w.nii.gz",
        t2w=f"{PRE}_{MNI}_desc-preproc_T2w.nii.gz",
        flair=f"{PRE}_{MNI}_desc-preproc_FLAIR.nii.gz",
        mask=f"{PRE}_{MNI}_desc-brain_mask.nii.gz",
    output:
        report(
            f"{PRE}_{MNI}_qc.png",
            caption="../report/qc.rst",
            category="QC",
            subcategory="trial-{trial}",
            labels={"visit": "sub-{sub} ses-{ses}"},
        ),
    log:
        f"{LOGS}/qc/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.log",
    benchmark:
        f"{BENCH}/qc/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.tsv"
    conda:
        "../envs/imaging.yaml"
    threads: 1
    script:
        "../workflow_scripts/qc.py"
