# Endpoint statistics (docs/DESIGN.md §9; Fig. 3d-g, Fig. 4, Table 4). Every analysis runs
# on GT lesion volumes and on each prediction source, side by side.
ST = config["stats"]


rule tlv_long:
    input:
        volumes=lambda w: lesion_volumes(w)["files"],
        visits=VALIDATED,
    output:
        long=f"{STATS}/tlv_long.tsv",
        exclusions=report(
            f"{STATS}/exclusions_tlv_long.tsv",
            caption="../report/exclusions.rst",
            category="Endpoints",
            subcategory="Exclusions",
            labels={"analysis": "tlv_long", "trial": "{trial}"},
        ),
    log:
        f"{LOGS}/tlv_long/trial-{{trial}}.log",
    benchmark:
        f"{BENCH}/tlv_long/trial-{{trial}}.tsv"
    conda:
        "../envs/stats.yaml"
    threads: 1
    params:
        sources=lambda w: lesion_volumes(w)["sources"],
    script:
        "../workflow_scripts/tlv_long.py"


rule change:
    input:
        long=f"{STATS}/tlv_long.tsv",
        long_exclusions=f"{STATS}/exclusions_tlv_long.tsv",
        participants=bids_table("participants.tsv"),
    output:
        change=f"{STATS}/change.tsv",
        summary=report(
            f"{STATS}/change_summary.tsv",
            caption="../report/change_summary.rst",
            category="Endpoints",
            subcategory="Fig. 3d-g: TLV change",
        ),
        png=report(
            f"{STATS}/fig3_tlv_change.png",
            caption="../report/fig3_change.rst",
            category="Endpoints",
            subcategory="Fig. 3d-g: TLV change",
        ),
        exclusions=report(
            f"{STATS}/exclusions_change.tsv",
            caption="../report/exclusions.rst",
            category="Endpoints",
            subcategory="Exclusions",
            labels={"analysis": "change", "trial": "{trial}"},
        ),
    log:
        f"{LOGS}/change/trial-{{trial}}.log",
    benchmark:
        f"{BENCH}/change/trial-{{trial}}.tsv"
    conda:
        "../envs/stats.yaml"
    threads: 1
    params:
        trial=trial_params,
        conf_level=ST["conf_level"],
    script:
        "../workflow_scripts/change.py"


rule ancova:
    input:
        long=f"{STATS}/tlv_long.tsv",
        long_exclusions=f"{STATS}/exclusions_tlv_long.tsv",
        participants=bids_table("participants.tsv"),
    output:
        coef=report(
            f"{STATS}/ancova.tsv",
            caption="../report/ancova.rst",
            category="Endpoints",
            subcategory="ANCOVA",
        ),
        anova=f"{STATS}/ancova_type2.tsv",
        wide=report(
            f"{STATS}/ancova_arm_effect.tsv",
            caption="../report/ancova_arm_effect.rst",
            category="Endpoints",
            subcategory="ANCOVA",
        ),
        lsmeans=report(
            f"{STATS}/ancova_lsmeans.tsv",
            caption="../report/ancova_lsmeans.rst",
            category="Endpoints",
            subcategory="ANCOVA",
        ),
        exclusions=report(
            f"{STATS}/exclusions_ancova.tsv",
            caption="../report/exclusions.rst",
            category="Endpoints",
            subcategory="Exclusions",
            labels={"analysis": "ancova", "trial": "{trial}"},
        ),
    log:
        f"{LOGS}/ancova/trial-{{trial}}.log",
    benchmark:
        f"{BENCH}/ancova/trial-{{trial}}.tsv"
    conda:
        "../envs/stats.yaml"
    threads: 1
    params:
        trial=trial_params,
        age_cutoff_years=ST["age_cutoff"],
        us_label=ST["us_label"],
        conf_level=ST["conf_level"],
        min_n_per_arm=ST["min_n_per_arm"],
        weeks=ST["ancova_weeks"],
    script:
        "../workflow_scripts/ancova.py"


rule cox:
    input:
        long=f"{STATS}/tlv_long.tsv",
        long_exclusions=f"{STATS}/exclusions_tlv_long.tsv",
        participants=bids_table("participants.tsv"),
        outcomes=bids_table("phenotype/outcomes.tsv"),
    output:
        cox=f"{STATS}/cox.tsv",
        table4=report(
            f"{STATS}/table4.tsv",
            caption="../report/table4.rst",
            category="Endpoints",
            subcategory="Table 4: Cox models",
        ),
        exclusions=report(
            f"{STATS}/exclusions_cox.tsv",
            caption="../report/exclusions.rst",
            category="Endpoints",
            subcategory="Exclusions",
            labels={"analysis": "cox", "trial": "{trial}"},
        ),
    log:
        f"{LOGS}/cox/trial-{{trial}}.log",
    benchmark:
        f"{BENCH}/cox/trial-{{trial}}.tsv"
    conda:
        "../envs/stats.yaml"
    threads: 1
    params:
        trial=trial_params,
        endpoints=ST["endpoints"],
        log_tlv_offset_ml=ST["log_tlv_offset_ml"],
        edss_cutoff=ST["edss_cutoff"],
        us_label=ST["us_label"],
        conf_level=ST["conf_level"],
        min_events_per_term=ST["min_events_per_term"],
        center_log_tlv=ST["center_log_tlv"],
    script:
        "../workflow_scripts/cox.py"


rule km:
    input:
        long=f"{STATS}/tlv_long.tsv",
        long_exclusions=f"{STATS}/exclusions_tlv_long.tsv",
        participants=bids_table("participants.tsv"),
        outcomes=bids_table("phenotype/outcomes.tsv"),
    output:
        tests=report(
            f"{STATS}/km_tests.tsv",
            caption="../report/km_tests.rst",
            category="Endpoints",
            subcategory="Fig. 4: Kaplan-Meier",
        ),
        curves=f"{STATS}/km_curves.tsv",
        pngs=report(
            expand(
                f"{STATS}/fig4_km_{{endpoint}}.png",
                endpoint=ST["endpoints"],
                allow_missing=True,
            ),
            caption="../report/fig4_km.rst",
            category="Endpoints",
            subcategory="Fig. 4: Kaplan-Meier",
        ),
        exclusions=report(
            f"{STATS}/exclusions_km.tsv",
            caption="../report/exclusions.rst",
            category="Endpoints",
            subcategory="Exclusions",
            labels={"analysis": "km", "trial": "{trial}"},
        ),
    log:
        f"{LOGS}/km/trial-{{trial}}.log",
    benchmark:
        f"{BENCH}/km/trial-{{trial}}.tsv"
    conda:
        "../envs/stats.yaml"
    threads: 1
    params:
        trial=trial_params,
        endpoints=ST["endpoints"],
        at_risk_step_weeks=ST["km_at_risk_step_weeks"],
        conf_level=ST["conf_level"],
        conf_type=ST["km_conf_type"],
        png_template=lambda w: f"{STATS}/fig4_km_{{endpoint}}.png".replace(
            "{trial}", w.trial
        ),
    script:
        "../workflow_scripts/km.py"
