# Input validation (docs/DESIGN.md §1): every image is opened once before any heavy step;
# all problems are reported together, and nothing downstream runs on failure.


rule validate_bids:
    input:
        trial_inputs,
    output:
        report(
            VALIDATED,
            caption="../report/visits.rst",
            category="QC",
            subcategory="Inputs",
            labels={"table": "validated visits", "trial": "{trial}"},
        ),
    log:
        f"{LOGS}/validate_bids/trial-{{trial}}.log",
    benchmark:
        f"{BENCH}/validate_bids/trial-{{trial}}.tsv"
    priority: training_first
    conda:
        "../envs/imaging.yaml"
    threads: 1
    params:
        bids=lambda w: str(trial_of(w).bids),
        arms=lambda w: trial_of(w).arms,
        sessions=lambda w: trial_of(w).sessions,
        exclude=lambda w: list(trial_of(w).exclude),
    message:
        "Validating trial {wildcards.trial}: tables, file names and every image; problems are listed in {log}"
    script:
        "../workflow_scripts/validate_bids.py"


# A visit's record of its raw files (images, GT mask), which its first job (n4_coregister) asks
# for besides validation's outcome. That job asks for the outcome as ancient(): it waits for
# validation, and a new validation (a visit excluded, an image replaced) does not rerun it.
# Snakemake skips its own check of the images of every job downstream of a job that reruns, so
# a replaced image reruns its visit through this record, which is upstream of nothing else.
# A local run: job (no conda: env, which Snakemake allows only for script/shell jobs).
rule visit_files:
    input:
        unpack(visit_files),
    output:
        VISIT_FILES,
    log:
        f"{LOGS}/visit_files/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.log",
    benchmark:
        f"{BENCH}/visit_files/trial-{{trial}}_sub-{{sub}}_ses-{{ses}}.tsv"
    localrule: True
    threads: 1
    run:
        write_visit_files(dict(input.items()), output[0], log[0])


# What every per-visit job waits for (VALIDATION_PASSED): validation's outcome behind a
# rule with one input. Snakemake compares a requested file with every input of its producer
# while it builds the DAG (a cycle check), and validate_bids lists every image of the trial, so
# the 4 jobs per visit asking it directly cost visits x images comparisons: most of the dry
# run at 3,000 visits.
rule validation_passed:
    input:
        VALIDATED,
    output:
        VALIDATION_PASSED,
    log:
        f"{LOGS}/validation_passed/trial-{{trial}}.log",
    localrule: True
    run:
        Path(output[0]).touch()
        Path(log[0]).touch()
