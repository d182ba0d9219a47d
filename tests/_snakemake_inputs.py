"""Snakemake's command line that also prints, once the DAG is built, one line per job on
standard error: ``JOB-INPUTS {"rule": ..., "input": [...]}``.

A dry run lists a job's input files only for rules without a ``message:``; the inference
rules have one. tests/test_workflow.py runs ``python tests/_snakemake_inputs.py <snakemake
arguments>`` to see what an inference job waits for.
"""

import json
import sys

import snakemake.api  # noqa: F401  (first: snakemake.workflow imports it back)
import snakemake.workflow as workflow
from snakemake.cli import main

_build_dag = workflow.Workflow._build_dag


def _build_dag_and_print_inputs(self, *args, **kwargs):
    result = _build_dag(self, *args, **kwargs)
    for job in self.dag.jobs:
        print("JOB-INPUTS " + json.dumps({"rule": job.rule.name, "input": [str(f) for f in job.input]}),
              file=sys.stderr, flush=True)
    return result


workflow.Workflow._build_dag = _build_dag_and_print_inputs

if __name__ == "__main__":
    sys.argv[0] = "snakemake"
    main()
