"""The locks, read as text (nothing is installed): every pin in envs/*.yaml equals
requirements.lock's; requirements-gpu.lock is requirements.lock, every pin unchanged, plus JAX's
CUDA 12 build at jax's version, and envs/dl-gpu.yaml pins equal it."""

from __future__ import annotations

import re

import yaml

from tests.conftest import REPO


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


GPU_ENV = "dl-gpu.yaml"
#: what requirements-gpu.lock adds to requirements.lock: JAX's CUDA 12 build and its CUDA runtime
GPU_ONLY = re.compile(r"jax-cuda12-(plugin|pjrt)|nvidia-.*-cu12")
JAX_FAMILY = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt")


def _lock(name: str = "requirements.lock") -> dict[str, str]:
    """``{normalised name: version}``; a line that is not ``name==version`` or a name given
    twice fails here."""
    pins = {}
    for line in (REPO / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pkg, _, version = line.partition("==")
            assert version and re.fullmatch(r"[A-Za-z0-9._-]+", pkg), f"{name}: {line!r} is not pinned with =="
            assert _norm(pkg) not in pins, f"{name}: {pkg} pinned twice"
            pins[_norm(pkg)] = version
    return pins


def _env_pins(env) -> dict[str, str]:
    spec = yaml.safe_load(env.read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert pip, f"{env.name}: no pip pins"
    pins = {}
    for req in pip:
        if req.startswith("--"):  # a pip option line (an index), not a package
            continue
        name, _, version = req.partition("==")
        assert version, f"{env.name}: {req!r} is not pinned"
        pins[_norm(name)] = version
    return pins


def _check_env_against(env, lock: dict[str, str], lock_name: str) -> dict[str, str]:
    pins = _env_pins(env)
    for name, version in pins.items():
        assert name in lock, f"{env.name}: {name} is not in {lock_name}"
        assert lock[name] == version, f"{env.name}: {name}=={version} but {lock_name} has {lock[name]}"
    return pins


def test_conda_envs_pin_exactly_the_lock():
    lock = _lock()
    envs = sorted(e for e in (REPO / "envs").glob("*.yaml") if e.name != GPU_ENV)
    assert envs, "no conda env files"
    for env in envs:
        _check_env_against(env, lock, "requirements.lock")


def test_jax_is_in_the_main_lock():
    """The JAX backend runs everywhere (CPU tests included): jax and jaxlib, of one version."""
    lock = _lock()
    assert lock.get("jax") and lock["jax"] == lock.get("jaxlib"), (lock.get("jax"), lock.get("jaxlib"))
    assert not any(GPU_ONLY.fullmatch(name) for name in lock), "CUDA wheels in the CPU lock"


def test_gpu_lock_is_the_main_lock_plus_jax_cuda():
    main, gpu = _lock(), _lock("requirements-gpu.lock")
    for name, version in main.items():
        assert name in gpu, f"requirements-gpu.lock: {name} (requirements.lock: {version}) is missing"
        assert gpu[name] == version, f"requirements-gpu.lock: {name}=={gpu[name]} but requirements.lock has {version}"
    added = sorted(set(gpu) - set(main))
    assert {"jax-cuda12-plugin", "jax-cuda12-pjrt"} <= set(added), added
    assert any(n.startswith("nvidia-cudnn-cu12") for n in added), added
    odd = [n for n in added if not GPU_ONLY.fullmatch(n)]
    assert not odd, f"requirements-gpu.lock adds more than JAX's CUDA build: {odd}"
    versions = {name: gpu[name] for name in JAX_FAMILY}
    assert len(set(versions.values())) == 1, f"requirements-gpu.lock: jax versions disagree: {versions}"


def test_gpu_conda_env_pins_exactly_the_gpu_lock():
    gpu = _lock("requirements-gpu.lock")
    pins = _check_env_against(REPO / "envs" / GPU_ENV, gpu, "requirements-gpu.lock")
    # the dl environment plus every CUDA wheel, so conda's resolving pip step installs the locked ones
    dl = _env_pins(REPO / "envs" / "dl.yaml")
    assert dl.items() <= pins.items(), sorted(set(dl.items()) - set(pins.items()))
    cuda = {n for n in gpu if GPU_ONLY.fullmatch(n)}
    assert cuda <= set(pins), f"{GPU_ENV} leaves out {sorted(cuda - set(pins))}"


def test_every_rule_env_exists():
    used = set()
    for smk in (REPO / "rules").glob("*.smk"):
        used |= set(re.findall(r'"\.\./(envs/[^"]+)"', smk.read_text()))
    assert used
    for env in used:
        assert (REPO / env).is_file(), f"{env} used by a rule but missing"


def test_a_local_torch_build_comes_with_its_index():
    """pip finds torch==<v>+cpu only on PyTorch's index (PyPI has no local versions): an env
    pinning it names that index, as the Makefile does for the venvs."""
    for env in sorted((REPO / "envs").glob("*.yaml")):
        spec = yaml.safe_load(env.read_text())
        pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
        if any(re.fullmatch(r"torch==[^+]+\+cpu", req) for req in pip):
            assert "--extra-index-url https://download.pytorch.org/whl/cpu" in pip, env.name


def rule_envs() -> dict[str, set[str]]:
    """``{workflow script: the conda env files (envs/<name>) of the rules that run it}``, read
    from rules/*.smk; a rule with a script and no ``conda:`` fails here."""
    out: dict[str, set[str]] = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        text = smk.read_text()
        starts = [m.start() for m in re.finditer(r"^\s*(?:rule|checkpoint)\b[^\n]*:\s*$", text, re.MULTILINE)]
        for a, b in zip(starts, [*starts[1:], len(text)]):
            block = text[a:b]
            script = re.search(r'^\s*script:\s*\n\s*"\.\./workflow_scripts/([^"]+)"', block, re.MULTILINE)
            env = re.search(r'^\s*conda:\s*\n\s*(?:"\.\./envs/([^"]+)"|(GPU_RULE_ENV)\b)', block, re.MULTILINE)
            if script:
                assert env, f"rules/{smk.name}: the rule running {script.group(1)} has no conda: env"
                # GPU_RULE_ENV (rules/common.smk, dl.conda_env): either dl environment
                names = {env.group(1)} if env.group(1) else {"dl.yaml", GPU_ENV}
                out.setdefault(script.group(1), set()).update(names)
    return out


def installed_closure(names) -> set[str]:
    """The normalised names of ``names`` and everything they require (extras left out), as
    installed here: what pip puts in an environment that asks for ``names``."""
    from importlib import metadata

    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [_norm(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(_norm(req.name))
    return seen


def library_imports() -> set[str]:
    """The top-level modules that t2lesion's own code and the workflow scripts import (module
    level or inside functions), the standard library and t2lesion left out: what a rule's env
    must provide when that code runs (what the libraries import on their own, e.g. Keras trying
    scikit-learn, is theirs to declare)."""
    import ast
    import sys

    names: set[str] = set()
    for path in [*(REPO / "t2lesion").rglob("*.py"), *(REPO / "workflow_scripts").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("t2lesion", "__future__")}


def env_closure(env: str) -> set[str]:
    """What a job in ``envs/<env>`` can import: its pins and their requirements."""
    return installed_closure(_env_pins(REPO / "envs" / env))


def test_every_workflow_script_runs_in_a_conda_env():
    scripts = rule_envs()
    on_disk = {p.name for p in (REPO / "workflow_scripts").glob("*.py")}
    assert set(scripts) == on_disk, (sorted(on_disk - set(scripts)), sorted(set(scripts) - on_disk))
    assert scripts["n4_coregister.py"] == {"imaging.yaml"} and scripts["patch_store.py"] == {"dl.yaml"}
    for gpu_rule in ("train.py", "calibrate.py", "infer.py"):  # dl.conda_env picks one
        assert scripts[gpu_rule] == {"dl.yaml", GPU_ENV}, gpu_rule
    assert "nibabel" in env_closure("imaging.yaml") and "statsmodels" not in env_closure("dl.yaml")
    assert {"nibabel", "SimpleITK", "keras", "statsmodels", "lifelines", "deepbet"} <= library_imports()
    assert not {"os", "t2lesion", "sklearn"} & library_imports()


STAND_IN_CONDA = """#!/bin/sh
# a stand-in conda: enough for `snakemake --list-conda-envs`, which creates no environment
case "$*" in
  *"info --json"*) echo '{"conda_prefix": "/nonexistent", "root_prefix": "/nonexistent", "envs_dirs": [], "platform": "linux-64", "conda_version": "25.1.0"}';;
  *"config"*"--json"*) echo '{"get": {"channel_priority": "strict"}, "rc_path": null, "warnings": []}';;
  *"--version"*) echo "conda 25.1.0";;
  *) echo "{}";;
esac
"""


def test_dl_conda_env_gpu_gives_the_gpu_rules_the_cuda_environment(tmp_path):
    """Under --sdm conda, dl.conda_env: gpu builds envs/dl-gpu.yaml for train, calibrate and infer
    (the demo's DAG has all three); the default builds only the CPU one."""
    import os
    import shutil
    import subprocess
    import sys

    (tmp_path / "bin").mkdir()
    conda = tmp_path / "bin" / "conda"
    conda.write_text(STAND_IN_CONDA)
    conda.chmod(0o755)
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    (tmp_path / "gpu.yaml").write_text("dl:\n  conda_env: gpu\n")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    listed = {}
    for name, configs in (("cpu", ["config.yaml"]), ("gpu", ["config.yaml", "gpu.yaml"])):
        res = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                              str(tmp_path), "--configfile", *configs, "--list-conda-envs"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        listed[name] = set(re.findall(r"envs/([\w-]+\.yaml)", res.stdout))
    assert listed["cpu"] == {"imaging.yaml", "dl.yaml", "stats.yaml"}, listed
    # dl.yaml stays for the CPU rules of the U-Net stage (fold_split, patch_store, patch_index)
    assert listed["gpu"] == listed["cpu"] | {GPU_ENV}, listed
