# Preprocessing per visit (docs/DESIGN.md §2), in the paper's order: N4 and the intra-visit
# alignment of T2w and FLAIR to T1w (one job), skull stripping (native T1w), baseline ->
# MNI and follow-up -> baseline rigid registration (brain to brain), one resampling of
# every native image (and GT mask) into the MNI-aligned 1x1x3 mm grid with the
# normalisation and the QC picture in the same job. Steps that follow one another within
# a visit share a job: each job pays its own Python and library start-up, and costs the
# DAG of a large trial a few milliseconds (BENCHMARKS.md, "DAG building at scale"). The
# N4 images are temporary and uncompressed (.nii): gzip cost more CPU than the disk it saves.
PP = config["preprocess"]


# Validation's outcome is ancient(): a new validation reruns only the visits whose own files
# changed (their visit_files record), not every visit (rules/bids.smk).
rule n4_coregister:
    input:
        unpack(bids_images),
        files=VISIT_FILES,
        validated=ancient(VALIDATION_PASSED),
    output:
        t1w=temp(f"{PRE}_desc-n4_T1w.nii"),
        t2w=temp(f"{PRE}_desc-n4_T2w.nii"),
        flair=temp(f"{PRE}_desc-n4_FLAIR.nii"),
        t2w_xfm=f"{PRE}_from-T2w_to-T1w_xfm.tfm",
        flair_xfm=f"{PRE}_from-FLAIR_to-T1w_xfm.tfm",
    log:
        f"{LOGS}/n4_coregister/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.log",
    benchmark:
        f"{BENCH}/n4_coregister/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.tsv"
    priority: training_first
    conda:
        "../envs/imaging.yaml"
    threads: PP["threads"]
    params:
        shrink=PP["n4_shrink"],
        iterations=PP["n4_iterations"],
    script:
        "../workflow_scripts/n4_coregister.py"


rule skull_strip:
    input:
        f"{PRE}_desc-n4_T1w.nii",
    output:
        f"{PRE}_space-T1w_desc-brain_mask.nii.gz",
    log:
        f"{LOGS}/skull_strip/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.log",
    benchmark:
        f"{BENCH}/skull_strip/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.tsv"
    priority: training_first
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
    priority: training_first
    conda:
        "../envs/imaging.yaml"
    threads: PP["threads"]
    script:
        "../workflow_scripts/register_mni.py"


rule register_baseline:
    input:
        **PLAN.followup_mask,
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
    priority: training_first
    conda:
        "../envs/imaging.yaml"
    threads: PP["threads"]
    script:
        "../workflow_scripts/register_baseline.py"


# resample: one job per visit carries the images, the brain mask (and the GT mask where the
# visit has one) into MNI 1x1x3 mm with one interpolation each, normalises the contrasts and
# draws the QC picture. Two rules for the two cases, so that a visit's outputs are declared
# exactly: resample_with_gt where the visit has a GT mask (it is ordered first), resample
# elsewhere (its GT input does not exist for such a visit, so Snakemake falls back). Each
# applies only to trials that can need it (PLAN.gt_trials, PLAN.no_gt_trials).
RESAMPLE_INPUT = {
    "t1w": f"{PRE}_desc-n4_T1w.nii",
    "t2w": f"{PRE}_desc-n4_T2w.nii",
    "flair": f"{PRE}_desc-n4_FLAIR.nii",
    "t2w_xfm": f"{PRE}_from-T2w_to-T1w_xfm.tfm",
    "flair_xfm": f"{PRE}_from-FLAIR_to-T1w_xfm.tfm",
}
RESAMPLE_OUTPUT = {
    "t1w": f"{PRE}_{MNI}_desc-preproc_T1w.nii.gz",
    "t2w": f"{PRE}_{MNI}_desc-preproc_T2w.nii.gz",
    "flair": f"{PRE}_{MNI}_desc-preproc_FLAIR.nii.gz",
    "mask": f"{PRE}_{MNI}_desc-brain_mask.nii.gz",
    "t1w_xfm": f"{PRE}_from-T1w_to-MNI1x1x3_xfm.tfm",
    "t2w_xfm": f"{PRE}_from-T2w_to-MNI1x1x3_xfm.tfm",
    "flair_xfm": FLAIR_XFM,
}
RESAMPLE_PARAMS = {
    "brain_mask_space": lambda w: "T1w" if PLAN.own_brain_mask(w.ses) else "baseline",
    "clip_percentiles": PP["clip_percentiles"],
    "gt_interpolation": PP["gt_interpolation"],
}


ruleorder: resample_with_gt > resample


rule resample:
    input:
        unpack(to_mni_chain),
        **RESAMPLE_INPUT,
        mask=PLAN.native_mask,
    output:
        **RESAMPLE_OUTPUT,
        qc=qc_output(),
    log:
        f"{LOGS}/resample/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.log",
    benchmark:
        f"{BENCH}/resample/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.tsv"
    wildcard_constraints:
        trial=PLAN.no_gt_trials,
    priority: training_first
    conda:
        "../envs/imaging.yaml"
    threads: PP["threads"]
    params:
        **RESAMPLE_PARAMS,
    script:
        "../workflow_scripts/resample.py"


rule resample_with_gt:
    input:
        unpack(to_mni_chain_and_gt),
        **RESAMPLE_INPUT,
        mask=PLAN.native_mask,
    output:
        **RESAMPLE_OUTPUT,
        qc=qc_output(),
        gt=f"{PRE}_{MNI}_desc-lesionGT_mask.nii.gz",
    log:
        f"{LOGS}/resample/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.log",
    benchmark:
        f"{BENCH}/resample/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.tsv"
    wildcard_constraints:
        trial=PLAN.gt_trials,
    priority: training_first
    conda:
        "../envs/imaging.yaml"
    threads: PP["threads"]
    params:
        **RESAMPLE_PARAMS,
    script:
        "../workflow_scripts/resample.py"
