"""One free GPU per GPU job, leased with a lock file per device.

Run locally with ``snakemake --resources gpu=4``, Snakemake only bounds how many GPU jobs
run at once; it sets no ``CUDA_VISIBLE_DEVICES`` (snakemake issue #281), so four jobs would
all land on GPU 0. Every GPU rule therefore calls :func:`lease` *before* the Keras backend
is imported: it takes an exclusive ``flock`` on ``gpu-<i>.lock`` for the first free device
``i`` and sets ``CUDA_VISIBLE_DEVICES=i``. The kernel drops the lock when the process ends,
however it ends (a killed job never leaves a device taken).

Where a scheduler has already chosen (``CUDA_VISIBLE_DEVICES`` set, as SLURM does for
``--gpus``), the variable is left as it is. Without a GPU the job runs on the CPU and says so.

Devices come from ``T2LESION_GPUS`` (comma-separated ids; an empty value means none; the
tests use it to fake devices) or else from ``nvidia-smi -L``. Locks live in
``T2LESION_GPU_LOCKS`` (default: a per-user folder under the system's temp directory), which
must be shared by every job on the machine.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: Held lock files of this process: closing one would release its device.
_HELD: list = []


@dataclass(frozen=True)
class Lease:
    """What :func:`lease` decided: ``device`` is the id now in CUDA_VISIBLE_DEVICES (None: CPU
    or the scheduler's choice), ``how`` one of "leased", "scheduler", "cpu"."""

    device: str | None
    how: str
    message: str


def lock_dir() -> Path:
    default = Path(tempfile.gettempdir()) / f"t2lesion-gpu-locks-{os.getuid()}"
    path = Path(os.environ.get("T2LESION_GPU_LOCKS", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def visible_devices() -> list[str]:
    """The machine's GPU ids: ``T2LESION_GPUS`` if set, else ``nvidia-smi -L``, else none."""
    fake = os.environ.get("T2LESION_GPUS")
    if fake is not None:
        return [d.strip() for d in fake.split(",") if d.strip()]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def _try_lock(path: Path):
    fh = open(path, "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def lease(timeout_s: float = 24 * 3600.0, poll_s: float = 5.0, logger: logging.Logger | None = None) -> Lease:
    """Lease one free GPU for the rest of this process (see the module's docstring).

    Waits up to ``timeout_s`` for a device to come free (more GPU jobs than GPUs, e.g.
    ``--resources gpu=8`` on a 4-GPU machine), then raises ``RuntimeError``. Call it once,
    before importing keras; a second call in the same process returns the same lease.
    """
    logger = logger or log
    if _HELD:
        dev = os.environ.get("CUDA_VISIBLE_DEVICES")
        return Lease(dev, "leased", f"GPU {dev} (already leased by this process)")
    preset = os.environ.get("CUDA_VISIBLE_DEVICES")
    if preset not in (None, ""):
        msg = f"CUDA_VISIBLE_DEVICES={preset} set by the scheduler or the user; left as it is"
        logger.info(msg)
        return Lease(None, "scheduler", msg)
    devices = visible_devices()
    if not devices:
        msg = "no GPU found (nvidia-smi): running on the CPU"
        logger.warning(msg)
        return Lease(None, "cpu", msg)
    folder = lock_dir()
    start = time.monotonic()
    waited = False
    while True:
        for dev in devices:
            fh = _try_lock(folder / f"gpu-{dev}.lock")
            if fh is not None:
                _HELD.append(fh)
                os.environ["CUDA_VISIBLE_DEVICES"] = dev
                msg = f"leased GPU {dev} of {','.join(devices)} (lock {folder / f'gpu-{dev}.lock'})"
                logger.info(msg)
                return Lease(dev, "leased", msg)
        if time.monotonic() - start > timeout_s:
            raise RuntimeError(
                f"no free GPU among {','.join(devices)} after {timeout_s:.0f} s (locks in {folder}); "
                "run fewer GPU jobs at once (--resources gpu=N with N <= the number of GPUs)"
            )
        if not waited:
            logger.info("all %d GPUs are leased; waiting for one to come free", len(devices))
            waited = True
        time.sleep(poll_s)


def release() -> None:
    """Give the leased device back before the process ends (tests; normally the exit does it)."""
    while _HELD:
        fh = _HELD.pop()
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()


__all__ = ["Lease", "lease", "lock_dir", "release", "visible_devices"]
