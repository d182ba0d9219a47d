"""Config checking: schema defaults, one line per problem naming the key path, YAML errors
with file and line, and a schema whose every node is a real JSON-Schema keyword."""

from __future__ import annotations

import pytest
import yaml

from t2lesion.check_config import main
from t2lesion.config import SCHEMA, check_config, read_yaml, source_warnings
from t2lesion.errors import InputError

TRIAL = {"role": "test", "bids": "x", "control_arm": "PLA", "treatment_arms": ["OCR"]}

KEYWORDS = {"type", "default", "description", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
            "items", "minItems", "maxItems", "minLength", "properties", "additionalProperties", "required", "pattern",
            "propertyNames", "minProperties", "oneOf", "uniqueItems", "$schema"}


def test_every_schema_node_uses_json_schema_keywords_only():
    """A flow-style description with a comma once split into a bogus key; this catches it."""
    bad = []

    def walk(node, path):
        if not isinstance(node, dict):
            return
        bad.extend(f"{path}: {k}" for k in node if k not in KEYWORDS)
        for key, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{key}")
        for key in ("items", "additionalProperties", "propertyNames"):
            walk(node.get(key), f"{path}.{key}")
        for i, sub in enumerate(node.get("oneOf", [])):
            walk(sub, f"{path}.oneOf[{i}]")

    walk(read_yaml(SCHEMA), "")
    assert bad == []


def test_defaults_are_filled_in_nested_sections():
    config = check_config({"trials": {"t": dict(TRIAL)}})
    assert config["metrics"]["connectivity"] == 18 and config["sources"] == ["classical"]  # no fold models
    assert config["preprocess"]["followup_brain_mask"] == "baseline"


@pytest.mark.parametrize("extra, sources", [
    ({}, ["classical"]),
    ({"trials": {"t": dict(TRIAL), "tr": dict(TRIAL, role="train")}}, ["classical", "unet"]),
    ({"inference": {"models": "elsewhere"}}, ["classical", "unet"]),
    ({"sources": ["unet"], "inference": {"models": "elsewhere"}}, ["unet"]),  # an explicit list wins
    ({"sources": ["classical"], "trials": {"t": dict(TRIAL), "tr": dict(TRIAL, role="train")}}, ["classical"]),
])
def test_default_sources_follow_the_fold_models(extra, sources):
    config = check_config({"trials": {"t": dict(TRIAL)}, **extra})
    assert config["sources"] == sources
    warned = source_warnings(config)
    assert len(warned) == ("tr" in config["trials"] and "unet" not in sources)


def test_the_old_source_name_is_one_line_naming_the_new_one():
    with pytest.raises(InputError) as err:
        check_config({"trials": {"t": dict(TRIAL)}, "sources": ["baseline", "unet"]})
    assert str(err.value).splitlines()[1:] == [
        "  - config: sources: 'baseline' is now called 'classical' (the classical segmenter); write 'classical'"]


def test_each_problem_is_one_line_with_its_key_path():
    config = {"trials": {"t": dict(TRIAL, sesions={"bl": 0})}, "metrics": {"conectivity": 18, "overlap": "ten"}}
    with pytest.raises(InputError) as err:
        check_config(config)
    problems = err.value.problems
    assert len(problems) == 3, problems
    assert any(p.startswith("config: metrics: unknown key(s) 'conectivity'; allowed: connectivity,") for p in problems)
    assert any(p.startswith("config: metrics.overlap: 'ten' is not of type 'number'") for p in problems)
    assert any("trials.t: unknown key(s) 'sesions'; allowed: role, bids, control_arm" in p for p in problems)
    assert all("\n" not in p and len(p) < 400 for p in problems)


def test_inference_threshold_is_auto_or_a_number_between_0_and_1():
    assert check_config({"trials": {"t": dict(TRIAL)}})["inference"]["threshold"] == "auto"
    for value in ("auto", 0.5, 0.85):
        assert check_config({"trials": {"t": dict(TRIAL)}, "inference": {"threshold": value}})["inference"][
            "threshold"] == value
    for value in (0, 1, 1.5, "best", True, None):
        with pytest.raises(InputError) as err:
            check_config({"trials": {"t": dict(TRIAL)}, "inference": {"threshold": value}})
        assert err.value.problems == [
            f"config: inference.threshold: {value!r} is not valid here ('auto' or a number in (0, 1): U-Net masks "
            f"are probability >= threshold. auto = the mean of the fold thresholds, each chosen on its fold's "
            f"held-out visits; 0.5 = the paper.)"], value


def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "my_trials.yaml"
    bad.write_text("trials:\n  real:\n    role: test\n   bids: x\n")
    with pytest.raises(InputError, match=r"my_trials.yaml, line 4, column 4: not valid YAML"):
        read_yaml(bad)
    assert main([str(bad)]) == 1
    assert "my_trials.yaml, line 4" in capsys.readouterr().err


def test_check_config_command_accepts_a_valid_overlay(tmp_path, capsys):
    (tmp_path / "bids").mkdir()
    from tests.conftest import make_bids

    make_bids(tmp_path / "bids")
    trials = tmp_path / "trials.yaml"
    trials.write_text(yaml.safe_dump({"trials": {"real": dict(TRIAL, bids=str(tmp_path / "bids"))}}))
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"metrics": {"overlap": 0.2}}))
    assert main([str(trials), str(overlay)]) == 0
    assert "valid (1 trial(s))" in capsys.readouterr().out


def test_check_config_command_runs_the_workflows_start_up_checks(tmp_path, capsys):
    """What the workflow refuses at start, the command refuses too: a train trial without GT masks,
    'unet' with no fold models; a config file that is not there is one line, not a traceback."""
    from tests.conftest import make_bids

    train = make_bids(tmp_path / "train", gt=False)
    cfg = tmp_path / "trials.yaml"
    cfg.write_text(yaml.safe_dump({"trials": {"mytrain": dict(TRIAL, role="train", bids=str(train))}}))
    assert main([str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "trial 'mytrain': role train, but no visit has a GT lesion mask" in err and "Traceback" not in err

    test = make_bids(tmp_path / "test")
    cfg.write_text(yaml.safe_dump({"trials": {"real": dict(TRIAL, bids=str(test))}, "sources": ["classical", "unet"]}))
    assert main([str(cfg)]) == 1
    assert "'unet' needs fold models" in capsys.readouterr().err

    assert main([str(tmp_path / "nope.yaml")]) == 1
    assert capsys.readouterr().err.strip() == f"{tmp_path / 'nope.yaml'}: config file not found"

    cfg.write_text(yaml.safe_dump({"trials": {"real": dict(TRIAL, bids=str(test))}}))
    assert main([str(cfg)]) == 0
    out = capsys.readouterr()
    assert "valid (1 trial(s))" in out.out and "warning:" not in out.err


def test_paper_overlay_is_valid_and_sets_the_papers_settings(tmp_path, capsys):
    """configs/paper.yaml after a user's trials file: valid as the workflow checks it, and the
    settings the paper states (Krishnan et al. 2023: 32x96x96 windows, Adam 1e-4, batch 10,
    30 epochs, 3 folds x 10 MC passes averaged and cut at 0.5; 18-connected lesions of >= 3
    voxels, 10 % overlap), whatever the schema's defaults are."""
    from pathlib import Path

    from t2lesion.config import merge_config
    from tests.conftest import make_bids

    paper = Path(__file__).resolve().parents[1] / "configs/paper.yaml"
    trials = tmp_path / "trials.yaml"
    trials.write_text(yaml.safe_dump({"trials": {"real": dict(TRIAL, bids=str(make_bids(tmp_path / "bids")))}}))
    assert main([str(trials), str(paper)]) == 0, capsys.readouterr().err

    config: dict = {}
    for path in (trials, paper):
        merge_config(config, read_yaml(path))
    config = check_config(config)
    # over the demo's CPU-sized config.yaml too: every key the demo shrinks is the paper's again
    over_demo = read_yaml(paper.parents[1] / "config.yaml")
    merge_config(over_demo, read_yaml(paper))
    over_demo = check_config(over_demo)
    for section in ("model", "loss", "training", "inference", "metrics", "preprocess"):
        assert over_demo[section] == config[section], section
    model, training, inference, metrics = (config[k] for k in ("model", "training", "inference", "metrics"))
    assert (model["patch_size"], model["widths"], model["dropout_rate"]) == ([32, 96, 96], [32, 64, 128, 256], 0.2)
    assert model["spacing_mm"] == [3.0, 1.0, 1.0] and model["supervision_levels"] == 3
    assert (training["folds"], training["epochs"], training["batch_size"]) == (3, 30, 10)
    assert (training["learning_rate"], training["lr_schedule"], training["steps_per_epoch"]) == (1e-4, "constant", None)
    assert (inference["mc_samples"], inference["threshold"]) == (10, 0.5)
    assert (metrics["connectivity"], metrics["min_lesion_voxels"], metrics["overlap"]) == (18, 3, 0.1)
    assert config["loss"]["gamma_start"] == 0.02 and config["loss"]["gamma_end"] == 0.15
    assert config["loss"]["alpha_max"] == 100.0
