"""Workflow configuration: schema validation and the list of trials and visits.

The Snakefile calls :func:`check_config` once (schema defaults filled in, one line per
problem naming the key path), then :func:`trials_from_config`; rules ask
:class:`Trial` objects for their visits and files. A synthetic trial's visits are
known from its parameters before its BIDS folder exists (the generator is
deterministic), so the DAG can be built without a checkpoint; a real trial's visits
come from a cheap structural validation of its BIDS folder (tables, IDs, folders,
file names), and the ``validate_bids`` rule later opens every image before any heavy
step. A real trial whose structure has problems keeps only its validation job, which
lists every problem, tables and images together.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from t2lesion.bids import MODALITIES, Visit, gt_mask_path, image_path, read_exclusions, session_label, validate
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
    images: dict = field(default_factory=dict, compare=False)
    gt: dict = field(default_factory=dict, compare=False)
    excluded: dict = field(default_factory=dict, compare=False)
    sessions: dict = field(default_factory=dict, compare=False)
    exclude: tuple = field(default=(), compare=False)
    #: structural problems found while the DAG was built: only validation runs for this trial
    problems: tuple[str, ...] = ()

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

    def image(self, visit: Visit, modality: str) -> Path:
        if visit in self.images:
            return self.images[visit][modality]
        return image_path(self.bids, visit.sub, visit.ses, modality)

    def gt_mask(self, visit: Visit) -> Path:
        return self.gt.get(visit) or gt_mask_path(self.bids, visit.sub, visit.ses)


def synthetic_visits(params: dict, arms: list[str]) -> list[Visit]:
    """Visits a synthetic trial will have, derived from its parameters alone."""
    from t2lesion.synth import SynthParams, expected_visits

    sp = SynthParams.from_dict({**params, "arms": list(arms)})
    return [Visit(sub, ses) for sub, ses in expected_visits(sp)]


def trials_from_config(config: dict) -> tuple[dict[str, Trial], list[str]]:
    """Build :class:`Trial` objects and the warnings to show; raises :class:`InputError` for a
    config that cannot be used (listing every problem).

    A real trial with structural problems is returned with ``problems`` set and no
    visits (only its validation job runs, and lists them all, images included).
    """
    out: dict[str, Trial] = {}
    problems: list[str] = []
    warnings: list[str] = []
    folders: dict[Path, str] = {}
    for name, t in config["trials"].items():
        arms = [t["control_arm"], *t["treatment_arms"]]
        bids = Path(t["bids"]).expanduser()
        key = bids.resolve()
        if key in folders:
            warnings.append(f"trials {folders[key]!r} and {name!r} use the same BIDS folder {bids}")
        folders[key] = name
        synthetic = t.get("synthetic")
        exclude = t.get("exclude") or []
        if isinstance(exclude, str):
            try:
                exclude = read_exclusions(Path(exclude).expanduser())
            except InputError as exc:
                problems.append(f"trial {name!r}: " + "\n    ".join([exc.header or "", *exc.problems]).strip())
                continue
        common = dict(name=name, role=t["role"], bids=bids, control_arm=t["control_arm"],
                      treatment_arms=tuple(t["treatment_arms"]), synthetic=synthetic,
                      sessions=dict(t.get("sessions") or {}), exclude=tuple(dict(e) for e in exclude))
        if synthetic is not None:
            try:
                visits = synthetic_visits(synthetic, arms)
            except InputError as exc:
                problems.append(f"trial {name!r}:\n" + "\n".join(f"    {p}" for p in exc.problems))
                continue
            out[name] = Trial(**common, visits=tuple(visits), gt_visits=tuple(visits))
            continue
        try:
            layout = validate(bids, arms, check_images=False, sessions=common["sessions"], exclude=exclude)
        except InputError as exc:
            if not bids.is_dir():
                problems.append(f"trial {name!r}: {exc}")
                continue
            warnings.append(
                f"trial {name!r}: {len(exc.problems)} problem(s) in {bids}; only its validation runs "
                f"(results/validated/trial-{name}_visits.tsv), and its log lists every problem, images included:\n"
                + "\n".join(f"    {p}" for p in exc.problems)
            )
            out[name] = Trial(**common, visits=(), gt_visits=(), problems=tuple(exc.problems))
            continue
        warnings += [f"trial {name!r}: {w}" for w in layout.warnings]
        visits = tuple(layout.visits)
        gt_visits = tuple(v for v in visits if v in layout.gt)
        if layout.excluded:
            warnings.append(f"trial {name!r}: {len(layout.excluded)} visit(s) excluded by the config: "
                            + "; ".join(f"{v.prefix} ({r})" for v, r in sorted(layout.excluded.items(),
                                                                              key=lambda kv: kv[0].prefix)))
        if not gt_visits and t["role"] == "train" and t.get("training_masks", "manual") == "manual":
            problems.append(f"trial {name!r}: role train, but no visit has a GT lesion mask (under {bids}/derivatives/"
                            f"lesions/): the U-Net's folds train on them; add the masks, train on readers' masks "
                            f"(training_masks: reviewed), or make it a role: test trial")
            continue
        if not gt_visits:
            warnings.append(f"trial {name!r}: no GT lesion masks; every source still gets masks, volumes and "
                            f"endpoints, while Table 2 and the 'gt' source are skipped")
        elif len(gt_visits) < len(visits):
            warnings.append(f"trial {name!r}: {len(gt_visits)} of {len(visits)} visits have a GT lesion mask; "
                            f"Table 2 covers those, and the 'gt' source only subjects with GT at baseline")
        out[name] = Trial(**common, visits=visits, gt_visits=gt_visits, images=layout.images, gt=layout.gt,
                          excluded=layout.excluded)
    if problems:
        raise InputError(problems, header="configured trials cannot be used")
    return out, warnings


def fold_models(config: dict, train_trials: list[str], folds: list[int]) -> list[str]:
    """The fold models the ``unet`` source predicts with, in fold order.

    ``inference.models`` names a folder of models trained elsewhere (``fold-<k>/model.keras``);
    otherwise the folds trained by this workflow from its ``role: train`` trials. Asking for
    ``unet`` with neither is a one-line error at workflow start. Returns [] when ``unet`` is
    not a source and nothing is trained.
    """
    folder = (config.get("inference") or {}).get("models")
    wants_unet = "unet" in config.get("sources", [])
    if folder:
        root = Path(folder).expanduser()
        found = sorted(root.glob("fold-*/model.keras"), key=lambda p: p.parent.name)
        if not found:
            raise InputError(f"inference.models: no fold-<k>/model.keras under {root}")
        return [str(p) for p in found]
    if train_trials:
        return [f"results/train/fold-{k}/model.keras" for k in folds]
    if wants_unet:
        raise InputError(
            "sources: 'unet' needs fold models: add a trial with role: train, or set inference.models "
            "to a folder of fold-<k>/model.keras trained elsewhere, or drop 'unet' from sources"
        )
    return []


def fold_thresholds(config: dict, models: list[str]) -> list[str]:
    """The fold thresholds inference reads with ``inference.threshold: auto`` (docs/DESIGN.md §7),
    ``threshold.json`` beside each of the fold ``models`` (:func:`fold_models`): all of them
    for folds trained here (rule calibrate writes them), those that exist for an
    ``inference.models`` folder (none there: inference falls back to 0.5 and says so).
    [] for a fixed threshold: inference then waits for no calibration.
    """
    inference = config.get("inference") or {}
    if inference.get("threshold", "auto") != "auto":
        return []
    beside = [Path(p).parent / "threshold.json" for p in models]
    if inference.get("models"):
        beside = [p for p in beside if p.is_file()]
    return [str(p) for p in beside]


def visit_inputs(trial: Trial) -> list[str]:
    """Files the validation job reads: the tables and every image and GT mask of its visits."""
    files = [str(trial.bids / "participants.tsv"), str(trial.bids / "phenotype" / "outcomes.tsv")]
    files = [f for f in files if trial.synthetic is not None or Path(f).is_file()]
    for v in trial.visits:
        files += [str(trial.image(v, m)) for m in MODALITIES]
    files += [str(trial.gt_mask(v)) for v in trial.gt_visits]
    return files


# --------------------------------------------------------------------------- schema


def _validator_with_defaults():
    import jsonschema

    base = jsonschema.Draft202012Validator
    check_properties = base.VALIDATORS["properties"]

    def fill_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from check_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(base, {"properties": fill_defaults})


def _first_sentences(text: str, limit: int = 200) -> str:
    """``text`` cut at ``limit`` characters, back to the end of its last whole sentence if any."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    cut = text[:limit]
    end = cut.rfind(". ")
    return cut[: end + 1] if end > 0 else cut


def _error_line(error) -> str:
    path = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    schema, instance = error.schema, error.instance
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        allowed = list(schema.get("properties", {}))
        unknown = [k for k in instance if k not in allowed]
        where = f"{path}: " if error.absolute_path else ""
        return f"config: {where}unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}"
    if error.validator == "oneOf":
        return f"config: {path}: {instance!r} is not valid here ({_first_sentences(schema.get('description', ''))})"
    return f"config: {path}: {error.message}"


#: config values that were renamed: (key, old value) -> new value
RENAMED_VALUES = {("sources", "baseline"): "classical"}


def renamed_values(config: dict) -> list[str]:
    """One line per value the config still spells by its old name (the classical segmenter's
    source was called ``baseline``, the word a trial uses for week 0)."""
    sources = config.get("sources")
    if not isinstance(sources, list):
        return []
    return [f"config: sources: {old!r} is now called {new!r} (the classical segmenter); write {new!r}"
            for (key, old), new in RENAMED_VALUES.items() if key == "sources" and old in sources]


def check_config(config: dict, schema_path: str | Path = SCHEMA) -> dict:
    """Validate ``config`` in place against the schema, filling its defaults.

    Raises :class:`InputError` with one line per problem: the key path, what is
    wrong and, for an unknown key, the allowed keys (never the schema itself).
    """
    renamed = renamed_values(config)
    if renamed:
        raise InputError(renamed, header="config: the configuration is not valid")
    sources_given = "sources" in config
    schema = read_yaml(schema_path)
    validator = _validator_with_defaults()(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    problems = [_error_line(e) for e in errors]
    if not problems:
        # rules JSON Schema cannot express (list lengths against the model's depth, ...); no Keras import
        from t2lesion.unet.hparams import section_problems

        problems = section_problems(config)
    if problems:
        raise InputError(problems, header="config: the configuration is not valid")
    if not sources_given:
        config["sources"] = default_sources(config)
    if "reviewed" in config["sources"] and "unet" not in config["sources"]:
        raise InputError("config: sources: 'reviewed' (the U-Net masks with the readers' corrections, "
                         "docs/DESIGN.md §14) needs 'unet' in sources too")
    return config


def default_sources(config: dict) -> list[str]:
    """The sources a config that lists none gets: the U-Net's beside the classical segmenter's
    when there are fold models to predict with (a ``role: train`` trial or ``inference.models``),
    the classical segmenter's alone otherwise (an explicit ``sources`` list always wins)."""
    trains = any((t or {}).get("role") == "train" for t in (config.get("trials") or {}).values())
    models = (config.get("inference") or {}).get("models")
    return ["classical", "unet"] if trains or models else ["classical"]


def source_warnings(config: dict) -> list[str]:
    """One line when the config trains the U-Net but leaves it out of ``sources``."""
    trains = sorted(n for n, t in (config.get("trials") or {}).items() if (t or {}).get("role") == "train")
    if trains and "unet" not in config.get("sources", []):
        return [f"sources: {config.get('sources')} leaves out 'unet': the folds trained on "
                f"{', '.join(trains)} predict no visit; add 'unet' to sources for U-Net endpoints"]
    return []


def read_yaml(path: str | Path) -> dict:
    """Read a YAML file; a syntax error names the file, line and column."""
    try:
        with open(path) as fh:
            return yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        raise InputError(f"{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None


def merge_config(into: dict, new: dict) -> None:
    """Nested update, as Snakemake merges config files."""
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge_config(into[key], value)
        else:
            into[key] = value
