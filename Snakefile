"""T2-lesion endpoint analyses of MS trials from raw MRI (Krishnan et al. 2023).

Stages live in rules/*.smk; their logic in the t2lesion package. The config is
validated against schemas/config.schema.yaml before anything else happens.
"""

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "schemas/config.schema.yaml")


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/synth.smk"
include: "rules/bids.smk"
include: "rules/preprocess.smk"
include: "rules/metrics.smk"
include: "rules/stats.smk"


rule all:
    default_target: True
    input:
        all_targets(),
