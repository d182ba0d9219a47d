"""One lock file: every pin in envs/*.yaml equals requirements.lock's."""

from __future__ import annotations

import re

import yaml

from tests.conftest import REPO


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not pinned with =="
            pins[_norm(name)] = version
    return pins


def test_conda_envs_pin_exactly_the_lock():
    lock = _lock()
    envs = sorted((REPO / "envs").glob("*.yaml"))
    assert envs, "no conda env files"
    for env in envs:
        spec = yaml.safe_load(env.read_text())
        pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
        assert pip, f"{env.name}: no pip pins"
        for req in pip:
            name, _, version = req.partition("==")
            assert version, f"{env.name}: {req!r} is not pinned"
            assert _norm(name) in lock, f"{env.name}: {name} is not in requirements.lock"
            assert lock[_norm(name)] == version, f"{env.name}: {name}=={version} but the lock has {lock[_norm(name)]}"


def test_every_rule_env_exists():
    used = set()
    for smk in (REPO / "rules").glob("*.smk"):
        used |= set(re.findall(r'"\.\./(envs/[^"]+)"', smk.read_text()))
    assert used
    for env in used:
        assert (REPO / env).is_file(), f"{env} used by a rule but missing"
