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
