"""Run the snakemake command line, printing how long it spent building the DAG.

    python benchmarks/snakemake_phases.py <snakemake arguments>

Used by bench_dag_scale.py: a dry run's wall time is Python and Snakefile start-up, then
``Workflow._build_dag`` (resolving every job's inputs and outputs: "Building DAG of jobs..."),
then the dry-run "execution" (needrun, scheduling and printing every job). The line
``DAG built in <s> s (start-up <s> s)`` goes to standard error.
"""

import sys
import time

T0 = time.perf_counter()

import snakemake.api  # noqa: E402,F401  (first: snakemake.workflow imports it back)
import snakemake.workflow as workflow  # noqa: E402
from snakemake.cli import main  # noqa: E402

_build_dag = workflow.Workflow._build_dag


def _timed_build_dag(self, *args, **kwargs):
    t1 = time.perf_counter()
    try:
        return _build_dag(self, *args, **kwargs)
    finally:
        print(f"DAG built in {time.perf_counter() - t1:.2f} s (start-up {t1 - T0:.2f} s)", file=sys.stderr,
              flush=True)


workflow.Workflow._build_dag = _timed_build_dag

if __name__ == "__main__":
    sys.argv[0] = "snakemake"
    main()
