"""GPU leasing with a fake device list: no GPU is needed to test the lease."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from t2lesion import gpu

HOLDER = """
import sys, time
from t2lesion import gpu
l = gpu.lease(timeout_s=float(sys.argv[1]), poll_s=0.05)
print(l.how, l.device, flush=True)
time.sleep(float(sys.argv[2]))
"""


def _env(tmp_path: Path, devices: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(T2LESION_GPUS=devices, T2LESION_GPU_LOCKS=str(tmp_path / "locks"), **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")])
    return env


def _start(tmp_path, devices, timeout=30.0, hold=3.0, **extra):
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(timeout), str(hold)], env=_env(tmp_path, devices, **extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_jobs_get_distinct_devices(tmp_path):
    procs = [_start(tmp_path, "0,1,2,3", hold=4.0) for _ in range(4)]
    out = [p.communicate(timeout=60) for p in procs]
    got = [o.split() for o, _ in out]
    assert all(g[0] == "leased" for g in got), out
    assert sorted(g[1] for g in got) == ["0", "1", "2", "3"]


def test_a_fifth_job_waits_for_a_device_to_come_free(tmp_path):
    holders = [_start(tmp_path, "0,1", hold=3.0) for _ in range(2)]
    time.sleep(1.5)  # both devices are now held
    t0 = time.monotonic()
    late = _start(tmp_path, "0,1", hold=0.0)
    late_out, _ = late.communicate(timeout=60)
    waited = time.monotonic() - t0
    first = sorted(p.communicate(timeout=60)[0].split()[1] for p in holders)
    assert first == ["0", "1"]
    how, dev = late_out.split()
    assert how == "leased" and dev in ("0", "1")
    assert waited > 0.5  # it could only start once a holder had exited


def test_no_free_device_times_out_with_a_clear_error(tmp_path):
    holder = _start(tmp_path, "0", hold=5.0)
    time.sleep(1.5)
    late = _start(tmp_path, "0", timeout=0.5, hold=0.0)
    _, err = late.communicate(timeout=60)
    holder.communicate(timeout=60)
    assert late.returncode != 0
    assert "no free GPU among 0" in err and "--resources gpu=N" in err


def test_scheduler_choice_is_left_alone(tmp_path):
    p = _start(tmp_path, "0,1", hold=0.0, CUDA_VISIBLE_DEVICES="1")
    out, _ = p.communicate(timeout=60)
    assert out.split()[0] == "scheduler"
    assert not (tmp_path / "locks" / "gpu-0.lock").exists()


def test_several_preset_devices_are_leased_one_per_job(tmp_path):
    """CUDA_VISIBLE_DEVICES=2,5 snakemake --resources gpu=2: each job gets one of those two,
    never a device outside them (the machine's list, T2LESION_GPUS here, is not asked)."""
    procs = [_start(tmp_path, "0,1,2,3,4,5", hold=3.0, CUDA_VISIBLE_DEVICES="2,5") for _ in range(2)]
    got = [p.communicate(timeout=60)[0].split() for p in procs]
    assert sorted(got) == [["leased", "2"], ["leased", "5"]], got
    assert sorted(p.name for p in (tmp_path / "locks").iterdir()) == ["gpu-2.lock", "gpu-5.lock"]


def test_inside_a_slurm_allocation_the_locks_are_the_allocations(tmp_path, monkeypatch):
    """Two allocations of one user on one node both number their GPUs from 0: their locks
    must not meet (without T2LESION_GPU_LOCKS, the default folder names the job)."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("T2LESION_GPU_LOCKS", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert gpu.lock_dir().name == f"t2lesion-gpu-locks-{os.getuid()}-slurm-4242"
    monkeypatch.delenv("SLURM_JOB_ID")
    # outside an allocation: one folder for every user of the machine, writable by all, sticky
    shared = gpu.lock_dir()
    assert shared == tmp_path / "t2lesion-gpu-locks" and stat.S_IMODE(shared.stat().st_mode) == 0o1777


def test_a_lock_file_this_user_may_not_write_is_still_locked(tmp_path, monkeypatch):
    """Another user's lock file (0644, not writable here) is locked through a read-only handle,
    and a second handle then finds the device taken."""
    real_open = os.open

    def no_write(path, flags, *mode):
        if flags & os.O_RDWR and str(path).endswith("gpu-0.lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *mode)

    lock = tmp_path / "gpu-0.lock"
    lock.write_text("4321\n")  # the other user's job that held it last
    monkeypatch.setattr(os, "open", no_write)
    fh = gpu._try_lock(lock)
    try:
        assert fh is not None and fh.mode == "r"
        assert lock.read_text() == "4321\n"
        monkeypatch.setattr(os, "open", real_open)
        assert gpu._try_lock(lock) is None  # held
    finally:
        fh.close()
    again = gpu._try_lock(lock)
    assert again is not None and lock.read_text() == f"{os.getpid()}\n"
    again.close()
    # no lock file yet, in a folder this user cannot write: one line saying what to do
    monkeypatch.setattr(os, "open", lambda *a: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    with pytest.raises(RuntimeError, match=r"gpu-1\.lock: cannot create the GPU lock \(Permission denied\); set "
                                           r"T2LESION_GPU_LOCKS"):
        gpu._try_lock(tmp_path / "gpu-1.lock")


def test_without_a_gpu_the_job_runs_on_the_cpu(tmp_path):
    p = _start(tmp_path, "", hold=0.0)
    out, err = p.communicate(timeout=60)
    assert out.split()[0] == "cpu"


def test_lease_in_process_sets_the_variable_and_release_frees_it(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("T2LESION_GPUS", "7")
    monkeypatch.setenv("T2LESION_GPU_LOCKS", str(tmp_path / "locks"))
    try:
        l = gpu.lease(timeout_s=1, poll_s=0.05)
        assert l.device == "7" and os.environ["CUDA_VISIBLE_DEVICES"] == "7"
        assert gpu.lease().device == "7"  # idempotent within a process
        other = subprocess.run([sys.executable, "-c", HOLDER, "0.3", "0"], env=_env(tmp_path, "7"),
                               capture_output=True, text=True, timeout=60)
        assert other.returncode != 0  # held by this process
    finally:
        gpu.release()
    other = subprocess.run([sys.executable, "-c", HOLDER, "1", "0"], env=_env(tmp_path, "7"),
                           capture_output=True, text=True, timeout=60)
    assert other.stdout.split() == ["leased", "7"]


@pytest.mark.parametrize("value,expected", [("0,1", ["0", "1"]), (" 2 , 3 ", ["2", "3"]), ("", [])])
def test_device_list_from_environment(monkeypatch, value, expected):
    monkeypatch.setenv("T2LESION_GPUS", value)
    assert gpu.visible_devices() == expected


# --------------------------------------------------------------------------- why there is no GPU


def _fake_smi(folder: Path, script: str) -> Path:
    """An ``nvidia-smi`` in ``folder`` that runs the shell ``script``."""
    folder.mkdir(parents=True, exist_ok=True)
    smi = folder / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + script + "\n")
    smi.chmod(0o755)
    return folder


@pytest.fixture
def no_fake_devices(monkeypatch):
    monkeypatch.delenv("T2LESION_GPUS", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpu.release()
    return monkeypatch


DRIVER_FAIL = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."


def test_failing_nvidia_smi_gives_its_exit_status_and_message(tmp_path, no_fake_devices, caplog):
    bin_dir = _fake_smi(tmp_path / "bin",
                        f'echo "{DRIVER_FAIL}" >&2\necho "Make sure the driver is loaded." >&2\nexit 9')
    no_fake_devices.setenv("PATH", str(bin_dir))
    devices, why = gpu.query_devices()
    assert devices == []
    assert why == f"nvidia-smi failed: exit status 9: {DRIVER_FAIL} / Make sure the driver is loaded."
    no_fake_devices.setenv("T2LESION_GPU_LOCKS", str(tmp_path / "locks"))
    with caplog.at_level("WARNING", logger="t2lesion.gpu"):
        l = gpu.lease(timeout_s=1)
    assert l.how == "cpu" and l.device is None
    assert l.message == f"no GPU found: {why}; running on the CPU"
    assert l.message in caplog.text
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    caplog.clear()
    with caplog.at_level("WARNING", logger="t2lesion.gpu"):
        assert gpu.visible_devices() == []
    assert "exit status 9" in caplog.text and DRIVER_FAIL in caplog.text


def test_failure_message_on_stdout_is_kept_too(tmp_path, no_fake_devices):
    # nvidia-smi prints the "no driver" failure on stdout, nothing on stderr
    no_fake_devices.setenv("PATH", str(_fake_smi(tmp_path / "bin", f'echo "{DRIVER_FAIL}"\nexit 255')))
    assert gpu.query_devices() == ([], f"nvidia-smi failed: exit status 255: {DRIVER_FAIL}")
    no_fake_devices.setenv("PATH", str(_fake_smi(tmp_path / "bin2", "exit 3")))
    assert gpu.query_devices() == ([], "nvidia-smi failed: exit status 3: no message")
    no_fake_devices.setenv("PATH", str(_fake_smi(tmp_path / "bin3", "kill -9 $$")))
    assert gpu.query_devices() == ([], "nvidia-smi failed: killed by signal 9: no message")


def test_nvidia_smi_not_installed_is_told_apart_from_a_failure(tmp_path, no_fake_devices):
    (tmp_path / "empty").mkdir()
    no_fake_devices.setenv("PATH", str(tmp_path / "empty"))
    no_fake_devices.setenv("T2LESION_GPU_LOCKS", str(tmp_path / "locks"))
    assert gpu.query_devices() == ([], "nvidia-smi not installed (not on PATH)")
    l = gpu.lease(timeout_s=1)
    assert l.how == "cpu" and l.message == "no GPU found: nvidia-smi not installed (not on PATH); running on the CPU"


def test_nvidia_smi_that_hangs_counts_as_failed(tmp_path, no_fake_devices):
    sleep = shutil.which("sleep")
    no_fake_devices.setenv("PATH", str(_fake_smi(tmp_path / "bin", f"echo waiting >&2\nexec {sleep} 30")))
    no_fake_devices.setattr(gpu, "SMI_TIMEOUT_S", 0.5)
    t0 = time.monotonic()
    devices, why = gpu.query_devices()
    assert devices == [] and why.startswith("nvidia-smi failed: no answer within 0.5 s")
    assert time.monotonic() - t0 < 10


def test_nvidia_smi_list_is_parsed_and_an_empty_one_said(tmp_path, no_fake_devices):
    listing = ('echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa)"\n'
               'echo "  MIG 1g.10gb Device 0: (UUID: MIG-bbbb)"\n'
               'echo "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-cccc)"')
    no_fake_devices.setenv("PATH", str(_fake_smi(tmp_path / "bin", listing)))
    assert gpu.query_devices() == (["0", "1"], None)
    no_fake_devices.setenv("PATH", str(_fake_smi(tmp_path / "bin2", 'echo "No devices were found"')))
    assert gpu.query_devices() == ([], "nvidia-smi -L listed no GPU: No devices were found")
    no_fake_devices.setenv("T2LESION_GPUS", "")
    assert gpu.query_devices() == ([], "T2LESION_GPUS is empty")
