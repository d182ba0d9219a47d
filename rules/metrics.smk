# Segmentation sources and lesion metrics (docs/DESIGN.md §8; Table 2, Fig. 3a-c).
# Source `classical`: the classical FLAIR-hyperintensity segmenter, a comparison
# row for the U-Net and what carries the endpoint statistics until it exists.
MET = config["metrics"]
METRIC_PARAMS = {
    "connectivity": MET["connectivity"],
    "min_size": MET["min_lesion_voxels"],
    "overlap": MET["overlap"],
    "fp_overlap": MET["fp_overlap"],
    "clean_voxel_metrics": MET["clean_voxel_metrics"],
    "size_groups": [tuple(g) for g in MET["size_groups"]],
}


# Every job that writes a lesion mask also writes its lesion load (TLV, TLC; VOLUME), which
# the endpoint statistics read: segment_classical for its own masks, the inference jobs for
# the U-Net's, metrics_visit for the GT. No job of its own per visit and source: on a
# 3,000-visit trial each job costs the DAG a few milliseconds.
VOLUME_PARAMS = {
    "connectivity": MET["connectivity"],
    "min_size": MET["min_lesion_voxels"],
    "clean_voxel_metrics": MET["clean_voxel_metrics"],
}


rule segment_classical:
    input:
        flair=f"{PRE}_{MNI}_desc-preproc_FLAIR.nii.gz",
        t1w=f"{PRE}_{MNI}_desc-preproc_T1w.nii.gz",
        mask=f"{PRE}_{MNI}_desc-brain_mask.nii.gz",
    output:
        mask=mask_path("{trial}", "{sub}", "{ses}", "classical"),
        volume=VOLUME.replace("{source}", "classical"),
    log:
        f"{LOGS}/segment_classical/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.log",
    benchmark:
        f"{BENCH}/segment_classical/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.tsv"
    conda:
        "../envs/imaging.yaml"
    threads: 1
    params:
        classical=config["classical"],
        connectivity=MET["connectivity"],
        volume=VOLUME_PARAMS,
    script:
        "../workflow_scripts/segment_classical.py"


# One job per GT visit for every source: each source's voxel- and lesion-level metrics
# against the GT, and the GT's own lesion load.
rule metrics_visit:
    input:
        **PLAN.metrics_visit_inputs(),
        gt=f"{PRE}_{MNI}_desc-lesionGT_mask.nii.gz",
    output:
        **PLAN.metrics_visit_outputs(),
        gt_volume=VOLUME.replace("{source}", "gt"),
    log:
        f"{LOGS}/metrics_visit/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.log",
    benchmark:
        f"{BENCH}/metrics_visit/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.tsv"
    conda:
        "../envs/stats.yaml"
    threads: 1
    params:
        sources=config["sources"],
        metrics=METRIC_PARAMS,
        volume=VOLUME_PARAMS,
    script:
        "../workflow_scripts/metrics_visit.py"


rule metrics_dataset:
    input:
        visits=lambda w: gt_visit_tables(w, "visit"),
        lesions=lambda w: gt_visit_tables(w, "lesions"),
    output:
        visits="results/metrics/{source}/trial-{trial}/visits.tsv",
        lesions="results/metrics/{source}/trial-{trial}/lesions.tsv",
        size_groups="results/metrics/{source}/trial-{trial}/size_groups.tsv",
        table2=report(
            "results/metrics/{source}/trial-{trial}/table2.tsv",
            caption="../report/table2.rst",
            category="Segmentation",
            subcategory="Table 2: segmentation and detection",
            labels={"source": "{source}", "trial": "{trial}"},
        ),
        correlation="results/metrics/{source}/trial-{trial}/correlation.tsv",
        fig_tlv=report(
            "results/metrics/{source}/trial-{trial}/tlv_agreement.png",
            caption="../report/tlv_agreement.rst",
            category="Segmentation",
            subcategory="TLV agreement",
            labels={"source": "{source}", "trial": "{trial}"},
        ),
        fig_size_groups=report(
            "results/metrics/{source}/trial-{trial}/size_groups.png",
            caption="../report/size_groups.rst",
            category="Segmentation",
            subcategory="Fig. 3a-c: size groups",
            labels={"source": "{source}", "trial": "{trial}"},
        ),
    log:
        f"{LOGS}/metrics_dataset/{{source}}_trial-{{trial}}.log",
    benchmark:
        f"{BENCH}/metrics_dataset/{{source}}_trial-{{trial}}.tsv"
    conda:
        "../envs/stats.yaml"
    threads: 1
    params:
        size_groups=MET["size_groups"],
        isbi_score=MET["isbi_score"],
    script:
        "../workflow_scripts/metrics_dataset.py"


rule metrics_compare:
    input:
        table2=expand(
            "results/metrics/{source}/trial-{{trial}}/table2.tsv",
            source=config["sources"],
        ),
    output:
        table2=report(
            "results/metrics/trial-{trial}/table2.tsv",
            caption="../report/table2.rst",
            category="Segmentation",
            subcategory="Table 2: segmentation and detection",
            labels={"source": "all, side by side", "trial": "{trial}"},
        ),
        fig_size_groups=report(
            "results/metrics/trial-{trial}/size_groups.png",
            caption="../report/size_groups.rst",
            category="Segmentation",
            subcategory="Fig. 3a-c: size groups",
            labels={"source": "all, side by side", "trial": "{trial}"},
        ),
        fig_tlv=report(
            "results/metrics/trial-{trial}/tlv_agreement.png",
            caption="../report/tlv_agreement.rst",
            category="Segmentation",
            subcategory="TLV agreement",
            labels={"source": "all, side by side", "trial": "{trial}"},
        ),
    log:
        f"{LOGS}/metrics_compare/trial-{{trial}}.log",
    benchmark:
        f"{BENCH}/metrics_compare/trial-{{trial}}.tsv"
    conda:
        "../envs/stats.yaml"
    threads: 1
    params:
        sources=config["sources"],
    script:
        "../workflow_scripts/metrics_compare.py"
