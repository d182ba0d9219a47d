"""The validation study's wiring (rules/validate.smk, t2lesion.validation.run, t2lesion.plan.validation):
its entry points on small files, its plan, and its DAG from configs/validate.yaml (dry runs)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, write_image
from tests.test_workflow import snakemake
from t2lesion.config import check_config
from t2lesion.errors import InputError
from t2lesion.plan import Plan
from t2lesion.validation.document import FILES
from t2lesion.validation.run import (
    git_commit, run_detection, run_document, run_tlv_agreement, run_truth, run_uncertainty, truth_table,
)

VALIDATE = yaml.safe_load((REPO / "configs/validate.yaml").read_text())
DEMO = yaml.safe_load((REPO / "config.yaml").read_text())


def plan_of(config: dict) -> Plan:
    return Plan.from_config(check_config(copy.deepcopy(config)))[0]


# --------------------------------------------------------------------------- configs/validate.yaml


def test_validate_config_sizes_and_recipe():
    trials = VALIDATE["trials"]
    test = [t for t in trials.values() if t["role"] == "test"]
    train = [t for t in trials.values() if t["role"] == "train"]
    assert len(test) == 1 and len(train) == 1
    assert test[0]["synthetic"]["subjects_per_arm"] * 2 >= 40 and test[0]["synthetic"]["subjects_per_arm"] == 20
    assert train[0]["synthetic"]["subjects_per_arm"] * 2 >= 24
    for t in trials.values():
        assert t["synthetic"]["weeks"] == [0, 24, 48] and t["synthetic"]["profile"] == "clinical"
    assert VALIDATE["sources"] == ["classical", "unet"]
    for section in ("model", "loss"):
        assert VALIDATE[section] == DEMO[section]
    assert VALIDATE["training"] == DEMO["training"]
    assert VALIDATE["inference"]["threshold"] == "auto"
    check_config(copy.deepcopy(VALIDATE))  # schema-valid, the synthetic keys included


def test_validate_plan_picks_the_test_trial_and_names_each_copy_once():
    plan = plan_of(VALIDATE)
    assert plan.validation_trial() == "valtest"
    copies = plan.validation_copies("valtest")
    for key in ("table2", "tlv_agreement", "uncertainty", "detection", "ancova", "cox", "nb", "truth"):
        assert FILES[key] in copies, key
    assert copies["table2.tsv"] == "results/metrics/trial-valtest/table2.tsv"
    assert copies["nb_rate_ratio.tsv"] == "results/stats/trial-valtest/nb_rate_ratio.tsv"
    assert copies["truth.tsv"] == "results/validation_study/trial-valtest/truth.tsv"
    pngs = [n for n in copies if n.endswith(".png")]
    assert "metrics_unet_tlv_agreement.png" in pngs and "metrics_tlv_agreement.png" in pngs
    assert not any("qc" in n for n in pngs)
    assert len(set(copies.values())) == len(copies)  # no file twice, no name twice
    assert len(plan.uncertainty_visits("valtest")) == 120
    v = plan.uncertainty_visits("valtest")[0]
    assert v["mi"].endswith("desc-mi_uncertainty.nii.gz") and v["gt"].endswith("desc-lesionGT_mask.nii.gz")
    assert plan.truth_inputs("valtest")["truth"] == "results/synth/trial-valtest/truth/params.json"


def test_validation_trial_must_be_a_test_trial_with_gt():
    cfg = copy.deepcopy(VALIDATE)
    cfg["validation"]["trial"] = "valtrain"
    with pytest.raises(InputError, match="validation.trial: 'valtrain' is not a test trial with GT"):
        plan_of(cfg).validation_trial()
    cfg["validation"]["trial"] = None
    assert plan_of(cfg).validation_trial() == "valtest"
    assert plan_of(DEMO).validation_trial() == "synthdemo"  # the default: the first test trial with GT


def test_dry_run_reaches_the_document_and_rule_all_never_asks_for_it(tmp_path):
    res = snakemake(tmp_path, "-n", "--quiet", "rules", "--", "docs/VALIDATION.md", config=VALIDATE)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    for rule in ("validation_study_agreement", "validation_study_uncertainty", "validation_study_detection",
                 "validation_study_truth", "validation_study_new_lesion_truth", "validation_study_lesion_types",
                 "validation_study_change_response", "validation_study_document"):
        assert rule in out, rule
    res = snakemake(tmp_path, "-n", "--quiet", "rules")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "validation_study" not in res.stdout + res.stderr


def test_truth_checks_are_planned_where_their_truth_exists():
    val, demo = plan_of(VALIDATE), plan_of(DEMO)
    copies = val.validation_copies("valtest")
    for name in ("new_lesion_truth_sizes.tsv", "new_lesion_truth_floors.tsv", "new_lesion_truth_enlarge_floors.tsv",
                 "lesion_types.tsv", "change_response.tsv"):
        assert name in copies, name
    assert val.change_response_visits("valtest") == val.lesion_type_visits("valtest")
    assert val.change_response_inputs("valtest")["participants"].endswith("trial-valtest/bids/participants.tsv")
    visits = val.lesion_type_visits("valtest")
    assert len(visits) == 120 and set(visits[0]["masks"]) == {"gt", "classical", "unet"}
    nl = val.new_lesion_truth_visits("valtest")
    assert len(nl["followups"]) == 80 and len(nl["qc_dirs"]) == len(nl["tracked"]) == 40
    assert nl["tracked"][0] == "results/lesions/gt/trial-valtest/sub-001/sub-001_lesions.tsv"
    assert nl["sessions"]["sub-001"] == [
        "ses-w000", "ses-w024", "ses-w048"]
    # the demo's synthetic trial has the default profile: no lesion types, so neither rule nor copy
    test = demo.validation_trial()
    assert demo.lesion_type_visits(test) == [] and "lesion_types.tsv" not in demo.validation_copies(test)
    with pytest.raises(InputError, match="not a synthetic trial of the clinical profile"):
        demo.lesion_type_inputs(test)


def test_the_discussion_is_an_input_only_where_its_file_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the workflow's working directory
    val = plan_of(VALIDATE)
    assert val.validation_discussion() == []
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/validation-discussion.md").write_text("why\n")
    assert val.validation_discussion() == ["docs/validation-discussion.md"]


def test_dry_run_with_a_bad_validation_trial_stops_in_one_line(tmp_path):
    cfg = copy.deepcopy(VALIDATE)
    cfg["validation"]["trial"] = "nosuch"
    res = snakemake(tmp_path, "-n", "--", "docs/VALIDATION.md", config=cfg)
    assert res.returncode != 0
    line = "validation.trial: 'nosuch' is not a test trial with GT masks (candidates: valtest)"
    assert line in res.stdout + res.stderr and "Traceback" not in res.stdout + res.stderr, res.stdout + res.stderr


# --------------------------------------------------------------------------- the entry points


def test_tlv_agreement_from_a_long_table(tmp_path):
    rows = []
    for i in range(6):
        gt = 1.0 + i
        rows += [{"participant_id": f"sub-{i}", "session": "ses-w000", "source": "gt", "tlv_ml": gt},
                 {"participant_id": f"sub-{i}", "session": "ses-w000", "source": "unet", "tlv_ml": gt * 1.1}]
    pd.DataFrame(rows).to_csv(tmp_path / "tlv_long.tsv", sep="\t", index=False)
    t = run_tlv_agreement(tmp_path / "tlv_long.tsv", tmp_path / "out.tsv")
    assert list(t["source"]) == ["unet"]
    assert t["bias_pct_gt"].iloc[0] == pytest.approx(10.0)
    back = pd.read_csv(tmp_path / "out.tsv", sep="\t")
    assert back["n"].iloc[0] == 6
    pd.DataFrame(rows).drop(columns="tlv_ml").to_csv(tmp_path / "bad.tsv", sep="\t", index=False)
    with pytest.raises(InputError, match="bad.tsv: visit table lacks column"):
        run_tlv_agreement(tmp_path / "bad.tsv", tmp_path / "out2.tsv")


def _visit(tmp_path, name: str, gt: np.ndarray, pred: np.ndarray, mi: np.ndarray, dc: float) -> dict:
    paths = {k: tmp_path / f"{name}_{k}.nii.gz" for k in ("mi", "mask", "gt", "brain_mask")}
    write_image(paths["mi"], mi.astype(np.float32))
    write_image(paths["mask"], pred.astype(np.uint8))
    write_image(paths["gt"], gt.astype(np.uint8))
    write_image(paths["brain_mask"], np.ones_like(gt, np.uint8))
    table = tmp_path / f"{name}_visit.tsv"
    pd.DataFrame([{"participant_id": "sub-1", "session": "ses-w000", "dc": dc}]).to_csv(table, sep="\t", index=False)
    return {"id": name, **{k: str(p) for k, p in paths.items()}, "dice_table": str(table)}


def test_uncertainty_auroc_per_visit_and_summary(tmp_path):
    shape = (4, 8, 8)
    gt = np.zeros(shape, bool)
    gt[1:3, 2:5, 2:5] = True
    pred = gt.copy()
    pred[1, 6, 6] = True  # one false positive
    pred[2, 2, 2] = False  # one false negative
    err = pred != gt
    visits = [_visit(tmp_path, "a", gt, pred, err * 0.5 + 0.01, 0.9),  # MI high exactly on the errors
              _visit(tmp_path, "b", gt, pred, np.full(shape, 0.2), 0.8)]  # constant MI: chance
    s = run_uncertainty(visits, tmp_path / "visits.tsv", tmp_path / "summary.tsv")
    per = pd.read_csv(tmp_path / "visits.tsv", sep="\t")
    assert list(per["id"]) == ["a", "b"] and list(per["n_errors"]) == [2, 2]
    assert per["auroc"].tolist() == [1.0, 0.5]
    assert s["source"].iloc[0] == "unet" and s["n_visits"].iloc[0] == 2
    assert s["auroc_mean"].iloc[0] == pytest.approx(0.75)
    bad = dict(visits[0], gt=str(tmp_path / "other.nii.gz"))
    write_image(tmp_path / "other.nii.gz", np.zeros((4, 8, 9), np.uint8))
    with pytest.raises(InputError, match="other.nii.gz: geometry differs from the MI map"):
        run_uncertainty([bad], tmp_path / "v2.tsv", tmp_path / "s2.tsv")


def _qc(root, source: str, sub: str, name: str, arr: np.ndarray) -> str:
    folder = root / source / f"sub-{sub}" / "qc"
    write_image(folder / name, arr.astype(np.uint8))
    return str(folder)


def test_detection_pairs_each_gt_follow_up_with_the_sources_map(tmp_path):
    shape = (6, 20, 20)
    gt = np.zeros(shape, np.uint8)
    gt[1:3, 2:6, 2:6] = 1  # new lesion of 32 voxels: found
    gt[4, 10:12, 10:12] = 4  # new lesion of 4 voxels below the count's size floor (label 4): still scored, missed
    gt[1:3, 14:17, 14:17] = 3  # a stable lesion, not counted
    unet = np.zeros(shape, np.uint8)
    unet[1:3, 3:6, 3:6] = 1
    unet[4:6, 15:19, 2:6] = 1  # a false new lesion of 32 voxels
    name = "sub-001_ses-w024_space-MNI1x1x3_desc-newenlarging_dseg.nii.gz"
    dirs = [_qc(tmp_path, "gt", "001", name, gt), _qc(tmp_path, "unet", "001", name, unet)]
    t = run_detection(dirs, ["gt", "unet"], tmp_path / "visits.tsv", tmp_path / "table.tsv")
    all_ = t[t["bin"] == "all"].iloc[0]
    assert (all_["n_gt"], all_["n_gt_detected"], all_["n_pred"], all_["n_pred_tp"]) == (2, 1, 2, 1)
    big = t[t["bin"] == "[10,50)"].iloc[0]
    assert (big["n_gt"], big["n_gt_detected"], big["n_pred"], big["n_pred_tp"]) == (1, 1, 2, 1)
    visits = pd.read_csv(tmp_path / "visits.tsv", sep="\t")
    assert set(visits["visit"]) == {"sub-001_ses-w024"} and set(visits["source"]) == {"unet"}
    (tmp_path / "unet/sub-001/qc" / name).unlink()
    with pytest.raises(InputError, match="no unet QC map for GT's"):
        run_detection(dirs, ["gt", "unet"], tmp_path / "v2.tsv", tmp_path / "t2.tsv")


PARAMS = {
    "params": {"arms": ["PLA", "OCR"], "new_lesion_rate_ratio_treated": 0.2},
    "true_coefficients": {"cox_hr": {"arm_OCR": 0.7, "log_tlv": 1.5, "arm_OCR_x_log_tlv": 1.0, "age": 1.0},
                          "ancova_arm_effect_pct": {"OCR": {"0": 0.0, "24": -5.0, "48": -10.0}}},
}


def test_truth_table_sets_the_known_effects_beside_each_estimate(tmp_path):
    (tmp_path / "params.json").write_text(json.dumps(PARAMS))
    ancova = pd.DataFrame([
        {"source": s, "week": w, "term": "arm_OCR", "term_type": "arm", "estimate": e, "ci_low": e - 3,
         "ci_high": e + 3, "p": 0.01}
        for s, w, e in (("gt", 24, -4.0), ("gt", 48, -9.0), ("unet", 48, -14.0))
    ] + [{"source": "gt", "week": 48, "term": "age_gt45", "term_type": "covariate", "estimate": 1.0, "ci_low": 0.0,
          "ci_high": 2.0, "p": 0.5}])
    cox = pd.DataFrame([
        {"source": "gt", "endpoint": "CDP24", "model": m, "term": "log_tlv", "hr": hr, "hr_ci_low": hr - 0.4,
         "hr_ci_high": hr + 0.4, "p": 0.01}
        for m, hr in (("multivariable", 1.4), ("univariable_log_tlv", 2.5))
    ])
    for name, tab in (("ancova", ancova), ("cox", cox)):
        tab.to_csv(tmp_path / f"{name}.tsv", sep="\t", index=False)
    t = run_truth(tmp_path / "params.json", tmp_path / "truth.tsv", ancova_tsv=tmp_path / "ancova.tsv",
                  cox_tsv=tmp_path / "cox.tsv")
    an = t[t["quantity"].str.startswith("ANCOVA")]
    assert list(zip(an["detail"], an["source"], an["truth"], an["covered"])) == [
        ("week 24", "gt", -5.0, True), ("week 48", "gt", -10.0, True), ("week 48", "unet", -10.0, False)]
    cx = t[t["quantity"].str.startswith("Cox")]
    # only the multivariable model is the true model; the interaction and the other covariates are not shown
    assert list(cx["term"]) == ["log_tlv", "arm_OCR"] and cx["endpoint"].iloc[0] == "CDP24"
    assert cx["estimate"].iloc[0] == 1.4 and bool(cx["covered"].iloc[0]) is True
    assert pd.isna(cx["source"].iloc[1])  # no estimate of the arm term: the truth alone
    nb = t[t["quantity"].str.startswith("new-lesion")].iloc[0]
    assert nb["truth"] == 0.2 and pd.isna(nb["source"]) and "enlarging" in nb["note"]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InputError, match="bad.json: not a synthetic trial's truth/params.json"):
        truth_table(tmp_path / "bad.json")


def test_document_from_copies_names_commit_config_and_is_reproducible(tmp_path):
    (tmp_path / "params.json").write_text(json.dumps(PARAMS))
    run_truth(tmp_path / "params.json", tmp_path / "truth.tsv")
    t2 = pd.DataFrame([{"source": s, "column": "dc", "mean": m, "sd": 0.05} for s, m in (("classical", 0.6),
                                                                                          ("unet", 0.8))])
    t2.to_csv(tmp_path / "t2.tsv", sep="\t", index=False)
    (tmp_path / "fig.png").write_bytes(b"\x89PNG fake")
    copies = {"table2.tsv": str(tmp_path / "t2.tsv"), "truth.tsv": str(tmp_path / "truth.tsv"),
              "stats_fig.png": str(tmp_path / "fig.png")}
    out = tmp_path / "docs"
    (out / "validation").mkdir(parents=True)
    (out / "validation" / "stale.tsv").write_text("x\n")
    text = run_document(copies, out / "validation", out / "VALIDATION.md", commit="abc123", config="configs/v.yaml")
    # emptied, then refilled, with the run's commit and config beside the tables
    assert sorted(p.name for p in (out / "validation").iterdir()) == sorted([*copies, "run.json"])
    assert "* commit: `abc123`" in text and "* config: `configs/v.yaml`" in text
    assert "| unet DC ≥ 0.750 | 0.800 | ≥ 0.750 | met (margin 0.0500) |" in text
    assert "![stats_fig](validation/stats_fig.png)" in text
    assert "## Known truth of the generator against the estimates" in text and "new lesions only" in text
    again = run_document(copies, out / "validation", out / "VALIDATION.md", commit="abc123", config="configs/v.yaml")
    assert again == text == (out / "VALIDATION.md").read_text()
    # from the folder alone (python -m t2lesion.validation.document): the same text; a discussion is the last section
    from t2lesion.validation.document import main

    none = ["--discussion", str(out / "no-discussion.md")]  # (the default is the repository's own)
    assert main([str(out / "validation"), str(out / "again.md"), *none]) == 0
    assert (out / "again.md").read_text() == text
    disc = out / "discussion.md"
    disc.write_text("The DC target is missed by 0.05 because of faint lesions.\n")
    assert main([str(out / "validation"), str(out / "again.md"), "--discussion", str(disc)]) == 0
    withd = (out / "again.md").read_text()
    assert withd.startswith(text.rstrip("\n")) and withd.endswith(
        "## Discussion (hand-written, from the validation run's numbers)\n\n"
        "The DC target is missed by 0.05 because of faint lesions.\n")
    (out / "validation" / "run.json").unlink()
    assert main([str(out / "validation"), str(out / "again.md"), *none]) == 2  # not a folder the run wrote


def test_git_commit_of_the_checkout_and_outside_git(tmp_path):
    """A checkout's HEAD, from a folder inside it too; "unknown" outside git."""
    import os
    import re
    import subprocess

    outside = tmp_path / "outside"
    outside.mkdir()
    assert git_commit(outside) == "unknown"
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_GLOBAL": os.devnull}
    for cmd in (["git", "init", "-q"], ["git", "commit", "-q", "--allow-empty", "-m", "one"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True)
    assert re.fullmatch(r"[0-9a-f]{40}", head.stdout.strip())
    assert git_commit(repo) == git_commit(repo / "sub") == head.stdout.strip()
