"""Route a rule's logging, warnings and progress bars into its ``log:`` file."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path


@contextlib.contextmanager
def rule_log(path: str | Path | None, threads: int | None = None):
    """Send ``logging`` records, warnings and stderr (tqdm, Keras) to ``path`` for the block.

    Also caps the math libraries' thread pools at ``threads`` so that Snakemake's
    ``threads:`` is what a job really uses (no oversubscription of the cores).
    A user-facing :class:`~t2lesion.errors.InputError` ends the job without a
    traceback: its problems, one line each, go to the log and to the job's stderr
    (which Snakemake shows), followed by a line naming the log, and the job exits 1. Any
    other exception is written to the log with its traceback and raised on.
    A job that succeeds ends its log with its CPU seconds (:data:`CPU_LINE`; user + system
    of this process since it started, Snakemake's script preamble and imports included, and
    of its waited-for children): exact where Snakemake's ``benchmark:`` samples a job
    every 30 s once it has run 15 s.
    """
    from t2lesion.errors import InputError

    limiter = contextlib.nullcontext()
    if threads:
        _set_thread_env(threads)
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(limits=threads)
    if path is None:
        with limiter:
            yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        old_err = sys.stderr
        sys.stderr = fh
        try:
            with limiter:
                yield
            logging.getLogger("t2lesion").info(CPU_LINE, job_cpu_seconds())
        except InputError as exc:
            logging.getLogger("t2lesion").error("%s", exc)
            fh.write(f"{len(exc.problems)} problem(s); the full list is above, in {path}\n")
            sys.stderr = old_err
            print(f"{exc}\n(the full list is in {path})", file=old_err)
            raise SystemExit(1) from None
        except Exception:
            # anything else (a library failing on an image): its traceback goes to the log too,
            # so that a --keep-going run's logs explain every failed job; it still ends the job
            logging.getLogger("t2lesion").exception("the job failed")
            raise
        finally:
            sys.stderr = old_err
            root.removeHandler(handler)


def tell_user(line: str, logger: logging.Logger) -> None:
    """A warning the user must see although the job succeeds: in the job's log and on the job's
    own stderr, which Snakemake shows (inside :func:`rule_log`, ``sys.stderr`` is the log)."""
    logger.warning("%s", line)
    print(line, file=sys.__stderr__ or sys.stderr)


#: The last line of a successful job's log (benchmarks/rule_cpu.py reads it).
CPU_LINE = "job CPU seconds: %.2f"


def job_cpu_seconds() -> float:
    """User + system CPU seconds of this process and its waited-for children so far."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _set_thread_env(threads: int) -> None:
    import os

    # TensorFlow sizes its thread pools at import, from its own variables
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
                "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ[var] = str(threads)
    try:
        import SimpleITK as sitk

        sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(threads)
    except ImportError:  # pragma: no cover - SimpleITK is a core dependency
        pass
