"""profiles/slurm against a real SLURM: a single-node cluster on localhost (Debian's
``slurm-wlm`` and ``munge``) runs the tiny synthetic trial from BIDS generation to Table 2
through ``--profile profiles/slurm``, and the GPU rules' ``gpu: 1`` reaches ``sbatch --gpus=1``
on a node with a fake GPU.

The cluster is the test's own: ``/etc/slurm/slurm.conf`` and ``gres.conf`` (where SLURM's
commands look: the executor's job steps drop ``SLURM_CONF``) marked as written by this test,
state and logs in one folder (``$T2LESION_SLURM_DIR``, default ``/tmp/t2lesion-slurm``), daemons
on their own ports. A ``slurm.conf`` not written by this test (a real cluster's) is never
overwritten: the test skips. As root, missing packages are installed with apt-get and the
daemons started; the test skips only where that is impossible (not root, no apt-get, apt-get
failing, a foreign slurm.conf), and says which. What it started it stops and removes
afterwards, unless ``T2LESION_SLURM_KEEP=1``; a cluster of this test already running is
reused and left running.

    python tests/test_slurm.py start|stop   # the same cluster by hand (SLURM_CONF is printed)

Jobs are counted from SLURM's own records: ``squeue -t all`` (finished jobs stay listed for
MinJobAge) and the job-completion log (``jobcomp/filetxt``), never from Snakemake's output.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.test_end_to_end import TINY_TRIAL  # noqa: E402
from tests.test_workflow import job_counts  # noqa: E402

ROOT = Path(os.environ.get("T2LESION_SLURM_DIR", "/tmp/t2lesion-slurm"))
NODE = "t2lesion"
CTLD_PORT, SLURMD_PORT = 16817, 16818  # not SLURM's defaults: a system cluster is left alone
# The node as the profile's biggest request needs it (the GPU rules); the machine may have fewer
# cores: SlurmdParameters=config_overrides lets slurmd offer what the config says.
NODE_CPUS, NODE_MEM_MB, NODE_GPUS = 16, 128000, 2
PACKAGES = ("slurm-wlm", "munge")
SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")

SLURM_CONF = """\
# Written by t2lesion tests/test_slurm.py: a single-node test cluster on localhost; removed by it.
ClusterName=t2lesion
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
# no accounting database: squeue answers the executor's status checks, so finished jobs stay
# listed for an hour; the job-completion log keeps one line per finished job
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.log
MinJobAge=3600
GresTypes=gpu
NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} Gres=gpu:{gpus} State=UNKNOWN
PartitionName=main Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""
# A fake GPU is a device file slurmd can stat: plain files do.
GRES_CONF = "# Written by t2lesion tests/test_slurm.py.\nNodeName={node} Name=gpu File={root}/dev/nvidia[0-{last}]\n"


def fake_gpu(path: Path) -> None:
    """A character device like /dev/null (SLURM then sets CUDA_VISIBLE_DEVICES in GPU jobs), or
    a plain file where device nodes cannot be made (GPUs are still allocated, without it)."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except OSError:
        path.touch()


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


def _run(cmd, env=None, timeout=60, check=False, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, **kw)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n{res.stdout}{res.stderr}")
    return res


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _alive(pid) else None


def _stop(pid: int | None, timeout: float = 20) -> None:
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < end:
        time.sleep(0.2)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class Unavailable(Exception):
    """SLURM cannot be installed or started here; the message says why."""


def ensure_packages() -> None:
    """slurmctld, slurmd, sbatch, squeue and munged, installed with apt-get when missing."""
    needed = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged", "munge")
    if all(_which(b) for b in needed):
        return
    missing = ", ".join(b for b in needed if not _which(b))
    if os.geteuid() != 0:
        raise Unavailable(f"SLURM is not installed ({missing} missing) and installing Debian's "
                          f"{' and '.join(PACKAGES)} needs root")
    if not _which("apt-get"):
        raise Unavailable(f"SLURM is not installed ({missing} missing) and there is no apt-get to install "
                          f"Debian's {' and '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", *PACKAGES]
    res = _run(install, env=env, timeout=1200)
    if res.returncode != 0:  # a stale package list: refresh it once
        _run(["apt-get", "update", "-q"], env=env, timeout=600)
        res = _run(install, env=env, timeout=1200)
    if res.returncode != 0 or not all(_which(b) for b in needed):
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-5:])
        raise Unavailable(f"apt-get could not install {' '.join(PACKAGES)}:\n{tail}")


def munge_works() -> bool:
    if not (_which("munge") and _which("unmunge")):
        return False
    enc = _run([_which("munge"), "-n"], timeout=10)
    return enc.returncode == 0 and _run([_which("unmunge")], input=enc.stdout, timeout=10).returncode == 0


def ensure_munge() -> int | None:
    """A working munged; the pid of the one started here (None when one was running)."""
    if munge_works():
        return None
    if os.geteuid() != 0:
        raise Unavailable("munged is not running and starting it needs root")
    import pwd

    try:
        user = pwd.getpwnam("munge")
    except KeyError:
        raise Unavailable("no 'munge' user: the munge package's setup did not run") from None
    for folder in ("/run/munge", "/var/lib/munge", "/var/log/munge"):
        os.makedirs(folder, exist_ok=True)
        os.chown(folder, user.pw_uid, user.pw_gid)
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        _run(["runuser", "-u", "munge", "--", _which("mungekey") or "/usr/sbin/mungekey", "--create"], check=True)
    _run(["runuser", "-u", "munge", "--", _which("munged")], check=True, timeout=30)
    end = time.monotonic() + 20
    while not munge_works():
        if time.monotonic() > end:
            raise Unavailable("munged started but munge -n | unmunge still fails")
        time.sleep(0.2)
    return _pid(Path("/run/munge/munged.pid"))


CONF_DIR = Path("/etc/slurm")
MARK = SLURM_CONF.splitlines()[0]


class Cluster:
    def __init__(self, root: Path = ROOT, conf_dir: Path = CONF_DIR):
        self.root = root
        self.conf = conf_dir / "slurm.conf"
        self.gres = conf_dir / "gres.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def scontrol(self, *args, timeout=30):
        return _run([_which("scontrol"), *args], env=self.env, timeout=timeout)

    def node_state(self) -> str:
        res = _run([_which("sinfo"), "-h", "-n", NODE, "-o", "%t"], env=self.env, timeout=15)
        return res.stdout.strip() if res.returncode == 0 else ""

    def ours(self) -> bool:
        """Whether slurm.conf is absent or this test's (never overwrite a real cluster's)."""
        try:
            return self.conf.read_text().startswith(MARK)
        except FileNotFoundError:
            return True

    def is_up(self) -> bool:
        if not self.conf.exists() or not self.ours() or _pid(self.root / "slurmctld.pid") is None:
            return False
        return "UP" in self.scontrol("ping", timeout=15).stdout and self.node_state().rstrip("*") in (
            "idle", "mix", "alloc")

    def start(self, stop_afterwards: bool = True) -> None:
        """Install, start munged and the daemons, unless a cluster of this test is up already.
        With ``stop_afterwards``, what was started here is marked for stop_if_started()."""
        ensure_packages()
        munged = ensure_munge()
        if self.is_up():
            return
        if os.geteuid() != 0:
            raise Unavailable("slurmd needs root to start")
        if not self.ours():
            _stop(munged)
            raise Unavailable(f"{self.conf} exists and was not written by this test (a real cluster's?); "
                              "it is left alone")
        self.stop_daemons()
        shutil.rmtree(self.root, ignore_errors=True)
        for sub in ("state", "spool", "dev"):
            (self.root / sub).mkdir(parents=True)
        for i in range(NODE_GPUS):
            fake_gpu(self.root / "dev" / f"nvidia{i}")
        fields = dict(root=self.root, host=socket.gethostname().split(".")[0], node=NODE, ctld_port=CTLD_PORT,
                      slurmd_port=SLURMD_PORT, cpus=NODE_CPUS, mem=NODE_MEM_MB, gpus=NODE_GPUS, last=NODE_GPUS - 1)
        self.conf.parent.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(SLURM_CONF.format(**fields))
        self.gres.write_text(GRES_CONF.format(**fields))
        if stop_afterwards:
            self.marker.write_text(json.dumps({"munged": munged}))
        _run([_which("slurmctld"), "-f", str(self.conf)], env=self.env, check=True)
        _run([_which("slurmd"), "-f", str(self.conf), "-N", NODE], env=self.env, check=True)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            state = self.node_state().rstrip("*~#")
            if state == "idle":
                return
            if state in ("down", "drain", "unk"):
                self.scontrol("update", f"nodename={NODE}", "state=resume")
            time.sleep(0.5)
        raise RuntimeError(f"node {NODE} never became idle (state {self.node_state()!r}):\n" + self.logs())

    def stop_daemons(self) -> None:
        _stop(_pid(self.root / "slurmd.pid"))
        _stop(_pid(self.root / "slurmctld.pid"))

    def remove(self) -> None:
        """Stop the daemons, remove the configuration (if ours) and the state folder."""
        self.stop_daemons()
        if self.ours():
            self.conf.unlink(missing_ok=True)
            self.gres.unlink(missing_ok=True)
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def marker(self) -> Path:
        return self.root / "started-by-test.json"

    def stop_if_started(self) -> None:
        """Stop and remove what start(stop_afterwards=True) started (and only that)."""
        try:
            started = json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return
        self.remove()
        if started.get("munged"):
            _stop(started["munged"])

    def logs(self, lines: int = 30) -> str:
        out = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.root / name
            if path.exists():
                out.append(f"--- {path} (last {lines} lines)\n"
                           + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    def jobs(self, name: str) -> list[dict]:
        """Every job named ``name`` (the executor names all jobs of a run by its run ID) that
        slurmctld still knows, finished ones included (MinJobAge): ``squeue`` lists them, and
        ``scontrol show job`` gives each one's fields (JobId, Comment: Snakemake's rule or
        group, JobState, NumCPUs, TimeLimit, TresPerJob: --gpus, JOB_GRES: the GPUs allocated)."""
        ids = _run([_which("squeue"), "-h", "-t", "all", "--name", name, "-o", "%i"], env=self.env, check=True)
        out = []
        for job_id in ids.stdout.split():
            res = _run([_which("scontrol"), "show", "job", "-d", "-o", job_id], env=self.env, check=True)
            out.append(dict(re.findall(r"(\S+?)=(\S*)", res.stdout)))
        return out

    def completed(self, name: str) -> list[dict]:
        """The job-completion log's records of jobs named ``name``."""
        path = self.root / "jobcomp.log"
        rows = []
        for line in path.read_text().splitlines() if path.exists() else []:
            rec = dict(re.findall(r"(\w+)=(\S*)", line))
            if rec.get("Name") == name:
                rows.append(rec)
        return rows


@contextlib.contextmanager
def _lock(path: Path):
    """Serialise starting and stopping between pytest-xdist workers (and concurrent runs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


LOCK = Path(f"{ROOT}.lock")
USERS = Path(f"{ROOT}.users")  # pids of the test processes using the cluster


def _users() -> set[int]:
    try:
        return {int(p) for p in USERS.read_text().split() if _alive(int(p))}
    except (OSError, ValueError):
        return set()


def _set_users(pids: set[int]) -> None:
    if pids:
        USERS.write_text(" ".join(map(str, sorted(pids))))
    else:
        USERS.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def cluster():
    """The cluster, shared by the tests of this module and by pytest-xdist workers: the last
    process using it stops it if a test process started it."""
    c = Cluster()
    with _lock(LOCK):
        try:
            c.start(stop_afterwards=os.environ.get("T2LESION_SLURM_KEEP") != "1")
        except Unavailable as exc:
            pytest.skip(f"no SLURM test cluster: {exc}")
        _set_users(_users() | {os.getpid()})
    yield c
    with _lock(LOCK):
        others = _users() - {os.getpid()}
        _set_users(others)
        if not others:
            c.stop_if_started()


# --------------------------------------------------------------------------- running Snakemake


def snakemake_slurm(cluster: Cluster, workdir: Path, *args: str, snakefile: Path = REPO / "Snakefile",
                    timeout: float = 1800) -> tuple[subprocess.CompletedProcess, str]:
    """Snakemake through profiles/slurm on the test cluster; returns the run and its SLURM run ID.

    Only the options a cluster without accounting needs are added on the command line: status by
    squeue, no account, and quick first status checks (a test is short; real jobs are not).
    """
    cmd = [
        sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--directory", str(workdir),
        "--profile", str(REPO / "profiles" / "slurm"),
        "--slurm-status-command", "squeue", "--slurm-no-account",
        "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "3",
        "--slurm-keep-successful-logs",
        "--jobs", "4",  # the profile's 100 would only oversubscribe this machine's few real cores
        *args,
    ]
    env = {**cluster.env, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    m = re.search(r"SLURM run ID: (\S+)", res.stdout + res.stderr)
    return res, (m.group(1) if m else "")


def describe(res: subprocess.CompletedProcess, cluster: Cluster, workdir: Path) -> str:
    logs = sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
    failed = [p for p in logs if "Error" in p.read_text(errors="replace")]
    tail = "".join(f"\n--- {p}\n" + p.read_text(errors="replace")[-3000:] for p in failed[:2])
    return (res.stdout[-4000:] + res.stderr[-6000:] + tail + "\n" + cluster.logs())


# --------------------------------------------------------------------------- tests


def test_workflow_profile_keeps_the_cluster_profiles_settings():
    """Snakemake also loads the workflow's own profiles/default, over --profile: it must not
    replace the cluster's latency-wait, nor cap the cluster jobs' threads with the login
    node's cores. The cluster profile groups every preprocessing rule by visit."""
    from snakemake.cli import get_argument_parser

    slurm = REPO / "profiles" / "slurm"
    args = get_argument_parser(profiles=[slurm, REPO / "profiles" / "default"]).parse_args([])
    alone = get_argument_parser(profiles=[slurm]).parse_args([])
    assert args.executor == "slurm" and args.latency_wait == alone.latency_wait == 60
    assert args.cores == alone.cores == 4 and args.jobs == alone.jobs
    assert args.group_components == {"preprocess-{ses}": 1, "visit-metrics": 20}
    # every preprocessing rule is in its visit's group (a new one would otherwise be a SLURM job of its own)
    rules = re.findall(r"(?m)^rule (\w+):", (REPO / "rules" / "preprocess.smk").read_text())
    assert len(rules) >= 6 and {r: args.groups.get(r) for r in rules} == dict.fromkeys(rules, "preprocess-{ses}")
    assert args.set_resources == alone.set_resources
    plain = {k: v.value for k, v in args.default_resources.items() if not v.is_evaluable()}
    assert plain["runtime"] == 15 and plain["mem_mb"] == 2000, plain

TINY = {"trials": {"tiny": TINY_TRIAL}}
VISITS = [("001", "w000"), ("001", "w024"), ("002", "w000"), ("002", "w024")]
PREPROCESS_RULES = ("n4_coregister", "skull_strip", "register_mni", "register_baseline", "resample",
                    "resample_with_gt")
TARGETS = ["results/metrics/classical/trial-tiny/table2.tsv"] + [
    f"results/preproc/trial-tiny/sub-{s}/ses-{v}/sub-{s}_ses-{v}_space-MNI1x1x3_qc.png" for s, v in VISITS
]


@pytest.mark.slow
def test_tiny_trial_runs_through_slurm_as_grouped_jobs(cluster, tmp_path):
    """BIDS generation -> validation -> preprocessing -> classical segmentation -> Table 2 on the
    cluster: one SLURM job per visit's preprocessing (its 3-4 Snakemake jobs), one for all
    per-visit metrics, and as many jobs as SLURM recorded as Snakemake planned."""
    import yaml

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(TINY))
    plain = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(tmp_path / "config.yaml"), "-n", "--cores", "1", *TARGETS],
        capture_output=True, text=True, timeout=600)
    assert plain.returncode == 0, plain.stderr[-3000:]
    counts = job_counts(plain.stdout)
    preprocess_jobs = sum(counts.get(r, 0) for r in PREPROCESS_RULES)
    assert preprocess_jobs == 2 * 4 + 2 * 3, counts  # baseline: 4 jobs (skull_strip); follow-up: 3

    t0 = time.monotonic()
    res, run_id = snakemake_slurm(cluster, tmp_path, *TARGETS, "--configfile", str(tmp_path / "config.yaml"))
    elapsed = time.monotonic() - t0
    assert res.returncode == 0, describe(res, cluster, tmp_path)
    assert run_id, res.stderr[-2000:]

    # What SLURM saw, by Snakemake rule or group (the executor's --comment): one preprocessing
    # job per visit, the per-visit metrics as one group, and each trial-level rule once;
    # validation_passed and visit_files run on the submit host.
    jobs = cluster.jobs(run_id)
    assert all(j["JobState"] == "COMPLETED" for j in jobs), jobs
    kinds: dict[str, int] = {}
    for j in jobs:  # rule_<rule>_wildcards_<values>, or rule_<group>_<its rules> (group names have a '-')
        kind = re.sub(r"^rule_", "", j["Comment"]).split("_wildcards_")[0]
        kind = kind.split("_")[0] if "-" in kind else kind
        kinds[kind] = kinds.get(kind, 0) + 1
    expected = {"synth_tiny": 1, "validate_bids": 1, "preprocess-w000": 2, "preprocess-w024": 2,
                "visit-metrics": 1, "metrics_dataset": 1}
    assert kinds == expected, (kinds, jobs)
    # every one of them ran to completion, by the job-completion log too
    done = cluster.completed(run_id)
    assert sorted(r["JobId"] for r in done) == sorted(j["JobId"] for j in jobs), (done, jobs)
    assert all(r["JobState"] == "COMPLETED" for r in done), done
    # the cluster saw 8 jobs where Snakemake ran 25 (all but the local validation_passed, visit_files and all;
    # 61 before the per-contrast preprocessing jobs were merged, 37 before n4/coregister, GT, QC and volumes were)
    ungrouped = counts["total"] - sum(counts.get(r, 0) for r in ("validation_passed", "visit_files", "all"))
    print(f"\nSLURM jobs: {len(jobs)} (Snakemake jobs outside the submit host: {ungrouped}); "
          f"{kinds}; {elapsed:.0f} s")
    for j in jobs:
        print(f"  {j['JobId']:>4} {j['Comment'][:60]:60} CPUs {j['NumCPUs']:>2}  {j['MinMemoryNode']:>7}  "
              f"limit {j['TimeLimit']:>8}  ran {j['RunTime']}")
    assert len(jobs) == sum(expected.values()) < ungrouped / 3
    # a group job asks for at most the profile's cores (it runs that many of its jobs at once)
    assert all(int(j["NumCPUs"]) <= 4 for j in jobs), jobs

    # outputs on the shared filesystem, logs per Snakemake job as in a local run
    for target in TARGETS:
        assert (tmp_path / target).is_file(), target
    for sub, ses in VISITS:
        assert (tmp_path / f"results/logs/n4_coregister/trial-tiny_sub-{sub}_ses-{ses}.log").is_file()
    # the baseline's temporary N4 T1w outlived its own job (its follow-up reads it) and is gone now
    assert not list((tmp_path / "results/preproc").rglob("*desc-n4_*.nii*"))


GPU_SNAKEFILE = """
# Stand-ins of the pipeline's GPU rules: `train` takes its resources from profiles/slurm's
# set-resources alone; an inference batch rule (infer_<trial>_<batch>) carries them itself,
# as rules/infer.smk does. Each writes what SLURM gave its job.
rule all:
    input:
        "train.txt",
        "infer_demo_1.txt",
        "cpu.txt",

for name in ("train", "cpu"):

    rule:
        name:
            name
        output:
            f"{name}.txt"
        shell:
            "echo CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES:-none}} > {output}; "
            "scontrol show job -d $SLURM_JOB_ID | tr ' ' '\\\\n' | grep -E '^(NumCPUs|MinMemoryNode|TimeLimit|TresPerJob|GRES)=' >> {output}"


rule infer_demo_1:
    output:
        "infer_demo_1.txt"
    threads: 4
    resources:
        gpu=1,
        mem_mb=32000,
        runtime=240,
    shell:
        "echo CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES:-none}} > {output}; "
        "scontrol show job -d $SLURM_JOB_ID | tr ' ' '\\\\n' | grep -E '^(NumCPUs|MinMemoryNode|TimeLimit|TresPerJob|GRES)=' >> {output}"
"""


@pytest.mark.slow
def test_gpu_rules_get_a_gpu_from_the_profile(cluster, tmp_path):
    """train/infer: the profile's gpu: 1 -> sbatch --gpus=1 -> a GPU from gres.conf (CUDA_VISIBLE_DEVICES
    set in the job); their CPUs, memory and time limit are the profile's; a CPU rule gets no GPU."""
    import yaml

    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(GPU_SNAKEFILE)
    res, run_id = snakemake_slurm(cluster, tmp_path, snakefile=snakefile, timeout=600)
    assert res.returncode == 0, describe(res, cluster, tmp_path)
    jobs = {re.sub(r"^rule_", "", j["Comment"]): j for j in cluster.jobs(run_id)}
    assert sorted(jobs) == ["cpu", "infer_demo_1", "train"], jobs
    own = {"gpu": 1, "cpus_per_task": 4, "mem_mb": 32000, "runtime": 240}  # rules/infer.smk's
    for name in ("train", "infer_demo_1"):
        want, job = profile["set-resources"].get(name, own), jobs[name]
        assert want["gpu"] == 1
        assert job["TresPerJob"] == "gres:gpu:1", job  # sbatch --gpus=1
        assert job["JOB_GRES"] == "gpu:1", job  # and one GPU allocated
        assert int(job["NumCPUs"]) == want["cpus_per_task"], job
        assert mebibytes(job["MinMemoryNode"]) == want["mem_mb"], job
        assert minutes(job["TimeLimit"]) == want["runtime"], job
        written = (tmp_path / f"{name}.txt").read_text()
        if (cluster.root / "dev" / "nvidia0").is_char_device():
            assert re.search(r"CUDA_VISIBLE_DEVICES=\d", written), written
        else:  # said in the test summary, not passed over in silence
            import warnings

            warnings.warn(f"{name}: CUDA_VISIBLE_DEVICES not checked: no device node could be made for the "
                          "fake GPU (mknod refused), so SLURM sets none", stacklevel=1)
    assert jobs["cpu"].get("JOB_GRES") in (None, "(null)") and "TresPerJob" not in jobs["cpu"], jobs["cpu"]
    assert "CUDA_VISIBLE_DEVICES=none" in (tmp_path / "cpu.txt").read_text()


def mebibytes(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)([KMGT]?)", text).groups()
    return float(value) * {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[unit]


def minutes(text: str) -> int:
    days, _, hms = text.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return int(days or 0) * 1440 + h * 60 + m + (s > 0)


if __name__ == "__main__":
    c = Cluster()
    if sys.argv[1:] == ["start"]:
        c.start(stop_afterwards=False)
        print(f"export SLURM_CONF={c.conf}")
    elif sys.argv[1:] == ["stop"]:
        c.remove()
    else:
        sys.exit(__doc__)
