"""T2-lesion endpoint analyses of MS trials from raw MRI (Krishnan et al. 2023).

Stages live in rules/*.smk; their logic in the t2lesion package. The config is
validated against schemas/config.schema.yaml before anything else happens.
"""

import os

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from t2lesion.config import check_config
from t2lesion.errors import InputError

min_version("9.0")


# The demo trial's config beside this file, whatever the working directory, unless the
# user gives their own (--configfile): then only the user's trials run, with the
# schema's defaults for every key they leave out.
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config.yaml")


try:
    check_config(config)  # fills the schema's defaults; one line per problem
except InputError as _exc:
    raise WorkflowError(str(_exc)) from None


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/synth.smk"
include: "rules/bids.smk"
include: "rules/preprocess.smk"
include: "rules/metrics.smk"
include: "rules/stats.smk"
include: "rules/lesions.smk"
include: "rules/train.smk"
include: "rules/infer.smk"
include: "rules/report.smk"
include: "rules/review.smk"
include: "rules/validate.smk"


rule all:
    default_target: True
    input:
        PLAN.all_targets(),
