"""The model:/loss: config sections (schema + cross-field checks at workflow start) and the
per-fold seeds. No Keras import: these run at workflow start."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from t2lesion.config import check_config
from t2lesion.errors import InputError
from t2lesion.unet.hparams import (SEED_LIMIT, LossConfig, ModelConfig, fold_seed, section_problems,
                                  split_model_section)

TRIAL = {"role": "test", "bids": "x", "control_arm": "PLA", "treatment_arms": ["OCR"]}
REPO = Path(__file__).resolve().parent.parent


def _check(**sections):
    return check_config({"trials": {"t": dict(TRIAL)}, **sections})


def _problems(**sections) -> list[str]:
    with pytest.raises(InputError) as err:
        _check(**sections)
    return err.value.problems


def test_schema_defaults_are_the_dataclass_defaults():
    config = _check()
    kind, cfg = split_model_section(config["model"])
    assert kind == "multiarm" and cfg == ModelConfig()
    assert config["model"]["seed"] is None  # derive per fold unless set
    assert LossConfig.from_dict(config["loss"]) == LossConfig()
    # every dataclass field has a schema entry (and nothing else is there besides kind)
    assert set(config["model"]) == {"kind"} | set(ModelConfig().to_dict())
    assert set(config["loss"]) == set(LossConfig().to_dict())


@pytest.mark.parametrize("section,key,value,message", [
    ("loss", "gamma_start", 0.0, "less than or equal to the minimum of 0"),
    ("loss", "gamma_end", -0.1, "less than or equal to the minimum of 0"),
    ("loss", "gamma_end", 1.0, "greater than or equal to the maximum of 1"),
    ("loss", "beta_width", 0, "less than or equal to the minimum of 0"),
    ("loss", "alpha_slope_voxels", 0, "less than or equal to the minimum of 0"),
    ("loss", "dice_smooth", 0, "less than or equal to the minimum of 0"),
    ("loss", "alpha_connectivity", 8, "is not one of"),
    ("loss", "beta_min", -1, "less than the minimum of 0"),
    ("model", "dropout_rate", 1.0, "greater than or equal to the maximum of 1"),
    ("model", "dropout_rate", -0.1, "less than the minimum of 0"),
    ("model", "patch_size", [0, 96, 96], "less than the minimum of 1"),
    ("model", "patch_size", [32, 96], "is too short"),
    ("model", "widths", [32, 0, 128, 256], "less than the minimum of 1"),
    ("model", "bn_momentum", 1.0, "greater than or equal to the maximum of 1"),
    ("model", "bn_epsilon", 0, "less than or equal to the minimum of 0"),
    ("model", "kind", "unet++", "is not one of"),
    ("model", "seed", -1, "less than the minimum of 0"),
    ("model", "channel_order", ["T2w", "PD", "T1w"], "is not one of"),
    ("model", "widht", [1, 2], "unknown key(s) 'widht'"),
    ("loss", "gama_start", 0.1, "unknown key(s) 'gama_start'"),
])
def test_schema_rejects_impossible_values(section, key, value, message):
    problems = _problems(**{section: {key: value}})
    assert len(problems) == 1 and message in problems[0], problems
    assert problems[0].startswith(f"config: {section}")


@pytest.mark.parametrize("model,message", [
    ({"strides": [[1, 2, 2]]}, "strides needs 3 entries"),
    ({"patch_size": [30, 96, 96]}, "axis 0 is not divisible by the total stride 4"),
    ({"supervision_levels": 4}, "supervision_levels must be in [1, 3]"),
    ({"arms": [["all", ["T2w"]], ["x", ["FLAIR"]]]}, "arm_fractions must have one entry per arm"),
    ({"channel_order": ["T2w", "FLAIR"]}, "arm channel 'T1w' not in channel_order"),
])
def test_cross_field_rules_are_checked_at_workflow_start(model, message):
    problems = _problems(model=model)
    assert any(p.startswith("config: model: ") and message in p for p in problems), problems


def test_valid_ablations_pass():
    config = _check(model={"kind": "plain", "widths": [8, 16, 32], "strides": [[1, 2, 2], [2, 2, 2]],
                           "block_kernels": [[[1, 3, 3], [3, 3, 3]]] * 3, "supervision_levels": 2,
                           "patch_size": [16, 48, 48], "bn_momentum": 0.9, "seed": 4},
                    loss={"gamma_start": 0.15, "gamma_end": 0.02})  # a falling γ is an ablation, allowed
    kind, cfg = split_model_section(config["model"], seed=99)
    assert kind == "plain" and cfg.seed == 4 and cfg.widths == (8, 16, 32)  # an explicit seed wins
    assert section_problems(config) == []


def test_docs_advertise_only_schema_keys():
    text = (REPO / "docs" / "model.md").read_text()
    block = text[text.index("## Config keys"):]
    block = block[block.index("```yaml") + 7:]
    block = block[:block.index("```")]
    import yaml

    doc = yaml.safe_load(block)
    config = _check(model=dict(doc["model"]), loss=dict(doc["loss"]))  # accepted as written
    assert set(doc["model"]) == set(config["model"]) and set(doc["loss"]) == set(config["loss"])


def test_fold_seeds_differ_stay_in_range_and_an_explicit_seed_wins():
    seeds = [fold_seed(2023, k) for k in range(10)]
    assert len(set(seeds)) == 10 and all(0 <= s < SEED_LIMIT < 2**31 for s in seeds)
    assert seeds == [fold_seed(2023, k) for k in range(10)]  # deterministic
    assert fold_seed(2024, 0) != seeds[0]
    assert all(0 <= fold_seed(g, 3) < SEED_LIMIT for g in (0, -5, 2**40, 10**30))
    assert fold_seed(2023, 2, explicit=7) == 7
    with pytest.raises(ValueError, match="model.seed"):
        fold_seed(1, 0, explicit=2**31)
    # stable across versions and platforms: a fixed hash, not Python's salted hash()
    assert re.fullmatch(r"\d+", str(fold_seed(2023, 0)))
    assert fold_seed(2023, 0) == 1824280890


def test_model_config_validation_messages():
    with pytest.raises(ValueError, match="bn_momentum must be in"):
        ModelConfig(bn_momentum=1.0).validate()
    with pytest.raises(ValueError, match="seed must be an integer"):
        ModelConfig(seed=2**31).validate()
    with pytest.raises(ValueError, match="gamma_start must be in"):
        LossConfig.from_dict({"gamma_start": 0.0})
    assert ModelConfig.from_dict({"seed": None}).seed == 0
