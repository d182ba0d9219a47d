# The validation study on known truth (docs/DESIGN.md §15; make validate, configs/validate.yaml).
# Always declared, never requested by rule all: asking for the document (validation.document,
# docs/VALIDATION.md by default) runs the workflow as far as the study needs, then these rules.
from t2lesion.plan.validation import config_label

VAL = config["validation"]
# the config file(s) of the run, as the user named them (--configfile), for the document
VAL_CONFIG = config_label(
    workflow.overwrite_configfiles, os.path.join(workflow.basedir, "config.yaml")
)

# a trial named in the config is checked at start, like every other key
if VAL["trial"] is not None:
    try:
        PLAN.validation_trial()
    except InputError as _exc:
        raise WorkflowError(str(_exc)) from None


rule validation_study_agreement:
    input:
        long=f"{STATS}/tlv_long.tsv",
    output:
        f"{VALIDATION_STUDY}/tlv_agreement.tsv",
    log:
        f"{LOGS}/validation_study/tlv_agreement_trial-{{trial}}.log",
    benchmark:
        f"{BENCH}/validation_study/tlv_agreement_trial-{{trial}}.tsv"
    conda:
        "../envs/stats.yaml"
    threads: 1
    params:
        conf_level=ST["conf_level"],
    script:
        "../workflow_scripts/validation_study_agreement.py"


rule validation_study_uncertainty:
    input:
        lambda w: PLAN.uncertainty_inputs(w.trial),
    output:
        visits=f"{VALIDATION_STUDY}/uncertainty_visits.tsv",
        summary=f"{VALIDATION_STUDY}/uncertainty.tsv",
    log:
        f"{LOGS}/validation_study/uncertainty_trial-{{trial}}.log",
    benchmark:
        f"{BENCH}/validation_study/uncertainty_trial-{{trial}}.tsv"
    conda:
        "../envs/stats.yaml"
    threads: 1
    params:
        visits=lambda w: PLAN.uncertainty_visits(w.trial),
    script:
        "../workflow_scripts/validation_study_uncertainty.py"


rule validation_study_detection:
    input:
        qc=lambda w: tracking_outputs(w, "qc")["files"],
    output:
        visits=f"{VALIDATION_STUDY}/new_lesion_detection_visits.tsv",
        table=f"{VALIDATION_STUDY}/new_lesion_detection.tsv",
    log:
        f"{LOGS}/validation_study/detection_trial-{{trial}}.log",
    benchmark:
        f"{BENCH}/validation_study/detection_trial-{{trial}}.tsv"
    conda:
        "../envs/stats.yaml"
    threads: 1
    params:
        sources=lambda w: tracking_outputs(w, "qc")["sources"],
        min_size=config["metrics"]["min_lesion_voxels"],
        connectivity=config["metrics"]["connectivity"],
    script:
        "../workflow_scripts/validation_study_detection.py"


rule validation_study_truth:
    input:
        unpack(lambda w: PLAN.truth_inputs(w.trial)),
    output:
        f"{VALIDATION_STUDY}/truth.tsv",
    log:
        f"{LOGS}/validation_study/truth_trial-{{trial}}.log",
    benchmark:
        f"{BENCH}/validation_study/truth_trial-{{trial}}.tsv"
    conda:
        "../envs/stats.yaml"
    threads: 1
    script:
        "../workflow_scripts/validation_study_truth.py"


rule validation_study_new_lesion_truth:
    input:
        unpack(lambda w: PLAN.new_lesion_truth_inputs(w.trial)),
    output:
        **{
            k: f"{VALIDATION_STUDY}/new_lesion_truth_{k}.tsv"
            for k in NEW_LESION_TRUTH_TABLES
        },
    log:
        f"{LOGS}/validation_study/new_lesion_truth_trial-{{trial}}.log",
    benchmark:
        f"{BENCH}/validation_study/new_lesion_truth_trial-{{trial}}.tsv"
    conda:
        "../envs/stats.yaml"
    threads: 1
    params:
        visits=lambda w: PLAN.new_lesion_truth_visits(w.trial),
        reference=LES["reference"],
        connectivity=config["metrics"]["connectivity"],
        enlarge_relative=LES["enlarge_relative"],
        enlarge_voxels=LES["enlarge_voxels"],
    script:
        "../workflow_scripts/validation_study_new_lesion_truth.py"


rule validation_study_lesion_types:
    input:
        unpack(lambda w: PLAN.lesion_type_inputs(w.trial)),
    output:
        lesions=f"{VALIDATION_STUDY}/lesion_types_lesions.tsv",
        table=f"{VALIDATION_STUDY}/lesion_types.tsv",
    log:
        f"{LOGS}/validation_study/lesion_types_trial-{{trial}}.log",
    benchmark:
        f"{BENCH}/validation_study/lesion_types_trial-{{trial}}.tsv"
    conda:
        "../envs/stats.yaml"
    threads: 1
    params:
        visits=lambda w: PLAN.lesion_type_visits(w.trial),
        connectivity=config["metrics"]["connectivity"],
        min_size=config["metrics"]["min_lesion_voxels"],
    script:
        "../workflow_scripts/validation_study_lesion_types.py"


rule validation_study_change_response:
    input:
        unpack(lambda w: PLAN.change_response_inputs(w.trial)),
    output:
        lesions=f"{VALIDATION_STUDY}/change_response_lesions.tsv",
        table=f"{VALIDATION_STUDY}/change_response.tsv",
    log:
        f"{LOGS}/validation_study/change_response_trial-{{trial}}.log",
    benchmark:
        f"{BENCH}/validation_study/change_response_trial-{{trial}}.tsv"
    conda:
        "../envs/stats.yaml"
    threads: 1
    params:
        visits=lambda w: PLAN.change_response_visits(w.trial),
        connectivity=config["metrics"]["connectivity"],
    script:
        "../workflow_scripts/validation_study_change_response.py"


rule validation_study_document:
    input:
        copies=lambda w: list(PLAN.validation_copies().values()),
        discussion=lambda w: PLAN.validation_discussion(),
    output:
        document=VAL["document"],
        folder=directory(VAL["folder"]),
    log:
        f"{LOGS}/validation_study/document.log",
    benchmark:
        f"{BENCH}/validation_study/document.tsv"
    conda:
        "../envs/stats.yaml"
    threads: 1
    params:
        copies=lambda w: PLAN.validation_copies(),
        config=VAL_CONFIG,
        repo=workflow.basedir,
    script:
        "../workflow_scripts/validation_study_document.py"
