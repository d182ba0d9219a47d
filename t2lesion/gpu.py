"""One free GPU per GPU job, leased with a lock file per device.

Run locally with ``snakemake --resources gpu=4``, Snakemake only bounds how many GPU jobs
run at once; it sets no ``CUDA_VISIBLE_DEVICES`` (snakemake issue #281), so four jobs would
all land on GPU 0. Every GPU rule therefore calls :func:`lease` *before* the Keras backend
is imported: it takes an exclusive ``flock`` on ``gpu-<i>.lock`` for the first free device
``i`` and sets ``CUDA_VISIBLE_DEVICES=i``. The kernel drops the lock when the process ends,
however it ends (a killed job never leaves a device taken).

Where a scheduler has already chosen one device (``CUDA_VISIBLE_DEVICES`` set to one id, as
SLURM does for ``--gpus=1``), the variable is left as it is. Where it lists several (a user's
``CUDA_VISIBLE_DEVICES=0,1 snakemake --resources gpu=2``, or the local run inside
``salloc --gpus=4``), each job leases one of those, so the jobs still never share a device.
Without a GPU the job runs on the CPU and says so.

Devices come from ``T2LESION_GPUS`` (comma-separated ids; an empty value means none; the
tests use it to fake devices) or else from ``nvidia-smi -L``. Where there is none the lease
says why (``nvidia-smi not installed`` or ``nvidia-smi failed: exit status 9: <its message>``),
in the log and in :attr:`Lease.message`. Locks live in
``T2LESION_GPU_LOCKS`` (default: ``t2lesion-gpu-locks`` under the system's temp directory,
shared by every user of the machine, so that two users' runs do not both take GPU 0; inside
a SLURM allocation, whose device ids are the allocation's, one folder per allocation). The
folder must be shared by every job on the machine. The shared one is world-writable with
the sticky bit (as /tmp); a lock file another user made is locked through a read-only
handle (``flock`` needs no write access).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: Held lock files of this process: closing one would release its device.
_HELD: list = []
#: Seconds ``nvidia-smi -L`` may take before it counts as failed.
SMI_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Lease:
    """What :func:`lease` decided: ``device`` is the id now in CUDA_VISIBLE_DEVICES (None: CPU
    or the scheduler's choice), ``how`` one of "leased", "scheduler", "cpu"; ``message`` what
    was logged (for "cpu": why no GPU was found, e.g. nvidia-smi's exit status and message)."""

    device: str | None
    how: str
    message: str


def lock_dir() -> Path:
    """The folder of the GPU locks (see the module's docstring), made if missing."""
    job = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("T2LESION_GPU_LOCKS"):
        path = Path(os.environ["T2LESION_GPU_LOCKS"])
        path.mkdir(parents=True, exist_ok=True)
        return path
    if job:  # an allocation is one user's
        path = Path(tempfile.gettempdir()) / f"t2lesion-gpu-locks-{os.getuid()}-slurm-{job}"
        path.mkdir(parents=True, exist_ok=True)
        return path
    path = Path(tempfile.gettempdir()) / "t2lesion-gpu-locks"
    try:
        path.mkdir(exist_ok=True)
        if path.stat().st_uid == os.getuid():
            path.chmod(0o1777)  # every user's jobs add their locks here, none removes another's
    except OSError as err:
        raise RuntimeError(f"{path}: cannot use it for the GPU locks ({err}); set T2LESION_GPU_LOCKS to a folder "
                           "every job on this machine can write") from None
    return path


def _tail(text: str | bytes | None, limit: int = 400) -> str:
    """A program's output on one line, its last ``limit`` characters."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    one = " / ".join(line.strip() for line in (text or "").splitlines() if line.strip())
    return one if len(one) <= limit else "…" + one[-limit:]


def query_devices() -> tuple[list[str], str | None]:
    """The machine's GPU ids and, where there is none, why (None where there are some).

    ``T2LESION_GPUS`` if set, else ``nvidia-smi -L``. The reason tells "nvidia-smi not
    installed" (not on PATH) from "nvidia-smi failed: <cause>" (its exit status and message,
    a timeout, or the error starting it) and from a working nvidia-smi that lists no GPU.
    """
    fake = os.environ.get("T2LESION_GPUS")
    if fake is not None:
        devices = [d.strip() for d in fake.split(",") if d.strip()]
        return devices, None if devices else "T2LESION_GPUS is empty"
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return [], "nvidia-smi not installed (not on PATH)"
    try:
        proc = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=SMI_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as err:
        said = _tail(err.stderr) or _tail(err.stdout)
        return [], f"nvidia-smi failed: no answer within {SMI_TIMEOUT_S:g} s ({smi} -L)" + (f": {said}" if said else "")
    except OSError as err:  # found on PATH but could not be started
        return [], f"nvidia-smi failed: {type(err).__name__}: {err}"
    if proc.returncode != 0:
        # nvidia-smi writes some failures (no driver) to stdout
        said = _tail(proc.stderr) or _tail(proc.stdout) or "no message"
        status = f"exit status {proc.returncode}" if proc.returncode > 0 else f"killed by signal {-proc.returncode}"
        return [], f"nvidia-smi failed: {status}: {said}"
    # "GPU <index>: <name> (UUID: ...)", MIG devices indented below their GPU
    devices = [m.group(1) for m in re.finditer(r"^GPU (\d+):", proc.stdout, re.MULTILINE)]
    if not devices:
        said = _tail(proc.stdout) or _tail(proc.stderr)
        return [], "nvidia-smi -L listed no GPU" + (f": {said}" if said else "")
    return devices, None


def visible_devices() -> list[str]:
    """The machine's GPU ids: ``T2LESION_GPUS`` if set, else ``nvidia-smi -L``, else none (and
    a warning saying why: :func:`query_devices`)."""
    devices, why = query_devices()
    if why:
        log.warning("no GPU found: %s", why)
    return devices


def _try_lock(path: Path):
    """The open, exclusively locked ``path`` (made readable by all where this process makes
    it), or None where another process holds it. A file of another user's, which this one may
    not write, is locked through a read-only handle; only the owner's handle records its pid."""
    flags = os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags | os.O_RDWR, 0o644)
        writable = True
    except PermissionError:
        try:
            fd = os.open(path, flags | os.O_RDONLY)
        except PermissionError as err:  # not there, and the folder is not writable here
            raise RuntimeError(f"{path}: cannot create the GPU lock ({err.strerror}); set T2LESION_GPU_LOCKS to a "
                               "folder every job on this machine can write") from None
        writable = False
    fh = os.fdopen(fd, "r+" if writable else "r")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    if writable:
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
    listed = [d.strip() for d in (preset or "").split(",") if d.strip()]
    if len(listed) == 1:
        msg = f"CUDA_VISIBLE_DEVICES={preset} set by the scheduler or the user; left as it is"
        logger.info(msg)
        return Lease(None, "scheduler", msg)
    if listed:  # several set by the user or an allocation: one of them for this job
        devices = listed
        logger.info("CUDA_VISIBLE_DEVICES=%s set by the scheduler or the user: leasing one of them", preset)
    else:
        devices, why = query_devices()
        if not devices:
            msg = f"no GPU found: {why}; running on the CPU"
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


__all__ = ["SMI_TIMEOUT_S", "Lease", "lease", "lock_dir", "query_devices", "release", "visible_devices"]
