# The paper's report (issue 15): Table 1 (cohort by arm), Fig. 2 (GT and predicted lesions
# over FLAIR) and results/report/summary.md, which puts every table of the run in plain
# Markdown and links every figure, for readers outside Snakemake's HTML report.
# Inputs and the figure list from t2lesion.plan; logic in t2lesion.stats.table1,
# t2lesion.plots.overlays and t2lesion.report.
# visits shown per source: the most GT lesion volume, one per subject first
FIG2_VISITS = 3


rule table1:
    input:
        participants=bids_table("participants.tsv"),
        long=f"{STATS}/tlv_long.tsv",
        long_exclusions=f"{STATS}/exclusions_tlv_long.tsv",
        visits=VALIDATED,
    output:
        report(
            f"{STATS}/table1.tsv",
            caption="../report/table1.rst",
            category="Endpoints",
            subcategory="Table 1: cohort by arm",
            labels={"trial": "{trial}"},
        ),
    log:
        f"{LOGS}/table1/trial-{{trial}}.log",
    benchmark:
        f"{BENCH}/table1/trial-{{trial}}.tsv"
    conda:
        "../envs/stats.yaml"
    threads: 1
    params:
        trial=trial_params,
    script:
        "../workflow_scripts/table1.py"


rule fig2:
    input:
        unpack(lambda w: PLAN.fig2_inputs(w.trial, w.source)),
    output:
        report(
            FIG2,
            caption="../report/fig2.rst",
            category="Segmentation",
            subcategory="Fig. 2: FLAIR overlays",
            labels={"source": "{source}", "trial": "{trial}"},
        ),
    log:
        f"{LOGS}/fig2/{{source}}_trial-{{trial}}.log",
    benchmark:
        f"{BENCH}/fig2/{{source}}_trial-{{trial}}.tsv"
    conda:
        "../envs/imaging.yaml"
    threads: 1
    params:
        ids=lambda w: PLAN.fig2_ids(w.trial),
        n_visits=FIG2_VISITS,
    script:
        "../workflow_scripts/fig2.py"


rule summary:
    input:
        lambda w: PLAN.summary_inputs(),
    output:
        report(
            "results/report/summary.md",
            caption="../report/summary.rst",
            category="Endpoints",
            subcategory="Summary (summary.md)",
        ),
    log:
        f"{LOGS}/summary/summary.log",
    benchmark:
        f"{BENCH}/summary/summary.tsv"
    conda:
        "../envs/stats.yaml"
    threads: 1
    params:
        trials=lambda w: PLAN.summary_trials(),
        histories=lambda w: PLAN.summary_histories(),
        training_figures=lambda w: PLAN.summary_training_figures(),
        thresholds=lambda w: PLAN.summary_thresholds(),
        unet_threshold=lambda w: PLAN.unet_threshold(),
        conf_level=ST["conf_level"],
    script:
        "../workflow_scripts/summary.py"
