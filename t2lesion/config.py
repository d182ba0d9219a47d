"""Workflow configuration: schema validation and the list of trials and visits.

The Snakefile calls :func:`load` once; rules ask :class:`Trial` objects for their
visits. A synthetic trial's visits are known from its parameters before its BIDS
folder exists (the generator is deterministic), so the DAG can be built without a
checkpoint; a real trial's visits come from a cheap structural validation of its
BIDS folder (tables, IDs, folders, modalities), and the ``validate_bids`` rule later
opens every image before any heavy step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from t2lesion.bids import Visit, session_label, validate
from t2lesion.errors import InputError

SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"


@dataclass(frozen=True)
class Trial:
    name: str
    role: str
    bids: Path
    control_arm: str
    treatment_arms: tuple[str, ...]
    synthetic: dict | None
    visits: tuple[Visit, ...]
    gt_visits: tuple[Visit, ...]

    @property
    def arms(self) -> list[str]:
        return [self.control_arm, *self.treatment_arms]

    @property
    def root(self) -> Path:
        """Folder of a synthetic trial (``<root>/bids`` and ``<root>/truth``)."""
        return self.bids.parent

    def subjects(self) -> list[str]:
        return sorted({v.sub for v in self.visits})

    def baseline(self, sub: str) -> Visit:
        return Visit(sub, session_label(0))


def synthetic_visits(params: dict, arms: list[str]) -> list[Visit]:
    """Visits a synthetic trial will have, derived from its parameters alone."""
    from t2lesion.synth import SynthParams, expected_visits

    sp = SynthParams.from_dict({**params, "arms": list(arms)})
    return [Visit(sub, ses) for sub, ses in expected_visits(sp)]


def trials_from_config(config: dict) -> dict[str, Trial]:
    """Build :class:`Trial` objects; raises :class:`InputError` listing every problem."""
    out: dict[str, Trial] = {}
    problems: list[str] = []
    for name, t in config["trials"].items():
        arms = [t["control_arm"], *t["treatment_arms"]]
        bids = Path(t["bids"])
        synthetic = t.get("synthetic")
        try:
            if synthetic is not None:
                visits = synthetic_visits(synthetic, arms)
                gt_visits = visits
            else:
                layout = validate(bids, arms, check_images=False)
                visits = layout.visits
                gt_visits = [v for v in visits if layout.has_gt[v]]
        except InputError as exc:
            problems.append(f"trial {name!r}:\n" + "\n".join(f"    {p}" for p in exc.problems))
            continue
        out[name] = Trial(
            name=name,
            role=t["role"],
            bids=bids,
            control_arm=t["control_arm"],
            treatment_arms=tuple(t["treatment_arms"]),
            synthetic=synthetic,
            visits=tuple(visits),
            gt_visits=tuple(gt_visits),
        )
    if problems:
        raise InputError(problems, header="configured trials cannot be used")
    return out


def read_yaml(path: str | Path) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh) or {}
