# New and enlarging T2 lesions (docs/DESIGN.md §9b; beyond the paper, OPERA's MRI endpoint).
# Per subject and source, every follow-up's lesions against a reference visit of the
# same source in the common grid; then, per trial, the count endpoint (negative
# binomial) with every source side by side, and the per-visit agreement with GT.
LES = config["lesions"]
TRACK_PARAMS = {
    "reference": LES["reference"],
    "new_overlap": LES["new_overlap"],
    "enlarge_relative": LES["enlarge_relative"],
    "enlarge_voxels": LES["enlarge_voxels"],
    "connectivity": config["metrics"]["connectivity"],
    "min_size": config["metrics"]["min_lesion_voxels"],
    "new_min_size": LES["new_min_voxels"],
}


rule track_lesions:
    input:
        masks=lambda w: PLAN.tracking_masks(w.trial, w.source, w.sub),
    output:
        lesions=f"{TRACK}/sub-{{sub}}_lesions.tsv",
        visits=f"{TRACK}/sub-{{sub}}_visits.tsv",
        qc=directory(f"{TRACK}/qc"),
    log:
        f"{LOGS}/track_lesions/{{source}}_trial-{{trial}}_sub-{{sub}}.log",
    benchmark:
        f"{BENCH}/track_lesions/{{source}}_trial-{{trial}}_sub-{{sub}}.tsv"
    conda:
        "../envs/stats.yaml"
    threads: 1
    params:
        sessions=lambda w: PLAN.tracked_sessions(w.trial, w.source, w.sub),
        tracking=TRACK_PARAMS,
    script:
        "../workflow_scripts/track_lesions.py"


rule new_lesions:
    input:
        visits=lambda w: tracking_outputs(w, "visits")["files"],
        participants=bids_table("participants.tsv"),
        validated=VALIDATED,
    output:
        subjects=report(
            f"{STATS}/new_lesions.tsv",
            caption="../report/new_lesions.rst",
            category="Endpoints",
            subcategory="Fig. 3h-i: new and enlarging T2 lesions",
        ),
        visits=f"{STATS}/new_lesions_visits.tsv",
        by_arm=report(
            f"{STATS}/new_lesions_by_arm.tsv",
            caption="../report/new_lesions_by_arm.rst",
            category="Endpoints",
            subcategory="Fig. 3h-i: new and enlarging T2 lesions",
        ),
        nb=report(
            f"{STATS}/nb_rate_ratio.tsv",
            caption="../report/nb_rate_ratio.rst",
            category="Endpoints",
            subcategory="Fig. 3h-i: new and enlarging T2 lesions",
        ),
        exclusions=report(
            f"{STATS}/exclusions_new_lesions.tsv",
            caption="../report/exclusions.rst",
            category="Endpoints",
            subcategory="Exclusions",
            labels={"analysis": "new_lesions", "trial": "{trial}"},
        ),
        fig_rates=report(
            f"{STATS}/fig3h_new_lesions_per_scan.png",
            caption="../report/fig3h.rst",
            category="Endpoints",
            subcategory="Fig. 3h-i: new and enlarging T2 lesions",
        ),
        fig_forest=report(
            f"{STATS}/fig3i_new_lesions_rate_ratio.png",
            caption="../report/fig3i.rst",
            category="Endpoints",
            subcategory="Fig. 3h-i: new and enlarging T2 lesions",
        ),
    log:
        f"{LOGS}/new_lesions/trial-{{trial}}.log",
    benchmark:
        f"{BENCH}/new_lesions/trial-{{trial}}.tsv"
    conda:
        "../envs/stats.yaml"
    threads: 1
    params:
        sources=lambda w: tracking_outputs(w, "visits")["sources"],
        trial=trial_params,
        age_cutoff_years=ST["age_cutoff"],
        us_label=ST["us_label"],
        conf_level=ST["conf_level"],
        min_n_per_arm=ST["min_n_per_arm"],
    script:
        "../workflow_scripts/new_lesions.py"


rule new_lesion_agreement:
    input:
        visits=lambda w: tracking_outputs(w, "visits")["files"],
        qc=lambda w: tracking_outputs(w, "qc")["files"],
    output:
        report(
            f"{STATS}/new_lesions_agreement.tsv",
            caption="../report/new_lesions_agreement.rst",
            category="Endpoints",
            subcategory="Fig. 3h-i: new and enlarging T2 lesions",
        ),
    log:
        f"{LOGS}/new_lesion_agreement/trial-{{trial}}.log",
    benchmark:
        f"{BENCH}/new_lesion_agreement/trial-{{trial}}.tsv"
    conda:
        "../envs/stats.yaml"
    threads: 1
    params:
        sources=lambda w: tracking_outputs(w, "visits")["sources"],
        new_overlap=LES["new_overlap"],
        connectivity=config["metrics"]["connectivity"],
        conf_level=ST["conf_level"],
    script:
        "../workflow_scripts/new_lesion_agreement.py"
