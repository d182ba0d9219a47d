# The reader's review queue (docs/DESIGN.md §14, issue 26): per visit the doubt components
# (ensemble uncertainty, disagreement between sources, lesions that vanish and come back, QC),
# then per trial the ranked queue and its report page. Inputs from t2lesion.plan (Plan.review_*),
# logic in t2lesion.review. Made for valid test trials when a prediction source exists; without
# `unet` the queue ranks the classical masks on the components that need no ensemble.
REV = config["review"]
REVIEW_PARAMS = {
    "mi_threshold": REV["mi_threshold"],
    "connectivity": config["metrics"]["connectivity"],
    "min_size": config["metrics"]["min_lesion_voxels"],
}


rule review_visit:
    input:
        unpack(lambda w: PLAN.review_visit_inputs(w.trial, w.sub, w.ses)),
    output:
        REVIEW_VISIT,
    log:
        f"{LOGS}/review_visit/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.log",
    benchmark:
        f"{BENCH}/review_visit/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.tsv"
    conda:
        "../envs/imaging.yaml"
    threads: 1
    params:
        ids=lambda w: PLAN.review_visit_params(w.trial, w.sub, w.ses),
        review=REVIEW_PARAMS,
    script:
        "../workflow_scripts/review_visit.py"


rule review_queue:
    input:
        lambda w: PLAN.review_visit_tables(w.trial),
    output:
        report(
            f"{REVIEW}/queue.tsv",
            caption="../report/review_queue.rst",
            category="Review",
            subcategory="Review queue",
            labels={"trial": "{trial}"},
        ),
    log:
        f"{LOGS}/review_queue/trial-{{trial}}.log",
    benchmark:
        f"{BENCH}/review_queue/trial-{{trial}}.tsv"
    conda:
        "../envs/stats.yaml"
    threads: 1
    script:
        "../workflow_scripts/review_queue.py"


rule review_figure:
    input:
        unpack(lambda w: PLAN.review_figure_inputs(w.trial)),
    output:
        report(
            f"{REVIEW}/review_overlays.png",
            caption="../report/review_overlays.rst",
            category="Review",
            subcategory="Review queue",
            labels={"trial": "{trial}"},
        ),
    log:
        f"{LOGS}/review_figure/trial-{{trial}}.log",
    benchmark:
        f"{BENCH}/review_figure/trial-{{trial}}.tsv"
    conda:
        "../envs/imaging.yaml"
    threads: 1
    params:
        ids=lambda w: PLAN.review_ids(w.trial),
        n_visits=REV["figure_visits"],
        sources=PLAN.review_sources,
    script:
        "../workflow_scripts/review_figure.py"


# One job per trial writes the bundles of the queue's first review.top_k visits (each copies
# the visit's raw images, so not every visit by default); rerun when the queue changes.
rule review_bundles:
    input:
        unpack(lambda w: PLAN.review_bundle_inputs(w.trial)),
    output:
        directory(f"{REVIEW}/bundles"),
    log:
        f"{LOGS}/review_bundles/trial-{{trial}}.log",
    benchmark:
        f"{BENCH}/review_bundles/trial-{{trial}}.tsv"
    conda:
        "../envs/imaging.yaml"
    threads: 1
    params:
        ids=lambda w: PLAN.review_ids(w.trial),
        top_k=REV["top_k"],
    script:
        "../workflow_scripts/review_bundles.py"


# The `reviewed` source (sources: [..., unet, reviewed]): per visit the U-Net mask with the
# reader's correction from derivatives/lesions-reviewed/ applied (the U-Net mask where there is
# none, or where it is rejected: one line naming the file), with its lesion load; then per
# trial how each endpoint moved between `unet` and `reviewed`.
rule apply_review:
    input:
        unpack(lambda w: PLAN.apply_review_inputs(w.trial, w.sub, w.ses)),
    output:
        mask=mask_path("{trial}", "{sub}", "{ses}", "reviewed"),
        volume=VOLUME.replace("{source}", "reviewed"),
        status=CORRECTION_STATUS,
    log:
        f"{LOGS}/apply_review/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.log",
    benchmark:
        f"{BENCH}/apply_review/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.tsv"
    conda:
        "../envs/imaging.yaml"
    threads: 1
    params:
        interpolation=config["preprocess"]["gt_interpolation"],
        volume=VOLUME_PARAMS,
    script:
        "../workflow_scripts/apply_review.py"


rule review_changes:
    input:
        unpack(lambda w: PLAN.review_changes_inputs(w.trial)),
    output:
        changes=report(
            f"{REVIEW}/endpoint_changes.tsv",
            caption="../report/endpoint_changes.rst",
            category="Review",
            subcategory="Endpoints: unet vs reviewed",
            labels={"trial": "{trial}"},
        ),
        corrections=f"{REVIEW}/corrections.tsv",
    log:
        f"{LOGS}/review_changes/trial-{{trial}}.log",
    benchmark:
        f"{BENCH}/review_changes/trial-{{trial}}.tsv"
    conda:
        "../envs/stats.yaml"
    threads: 1
    params:
        tables=lambda w: PLAN.review_changes_tables(w.trial),
    script:
        "../workflow_scripts/review_changes.py"
