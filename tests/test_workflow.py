"""The workflow as a user drives it: lint, formatting, DAG, config and input errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import REPO, make_bids, write_image
from t2lesion.bids import image_path

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]


def snakemake(
    workdir: Path, *args: str, config: dict | None = None, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Snakemake in ``workdir``; a config given once is written there and used by later calls too
    (as a user passes their --configfile to every command of a run, --report included). ``env``:
    the process environment (default: this one's)."""
    cmd = [*SNAKEMAKE, "--directory", str(workdir), "--cores", "1"]
    if config is not None:
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    if (workdir / "config.yaml").is_file():
        cmd += ["--configfile", str(workdir / "config.yaml")]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, env=env)


def real_trial_config(bids: Path) -> dict:
    return {"trials": {"real": {"role": "test", "bids": str(bids), "control_arm": "PLA", "treatment_arms": ["OCR"]}}}


def test_snakefmt_clean():
    res = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules/"], cwd=REPO, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_lint_clean_on_default_config(tmp_path):
    res = snakemake(tmp_path, "--lint")  # in a temporary directory: the checkout's results/ stay untouched
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Lints for" not in res.stdout + res.stderr, res.stdout + res.stderr


def test_default_config_builds_the_dag(tmp_path):
    """The demo config (beside the Snakefile) from any working directory, never the checkout's results/."""
    res = snakemake(tmp_path, "-n", "--quiet", "rules")
    assert res.returncode == 0, res.stderr
    out = res.stdout + res.stderr
    for rule in ("synth_synthdemo", "validate_bids", "n4_coregister", "skull_strip", "register_mni", "resample_with_gt",
                 "segment_classical", "metrics_visit", "cox", "km"):
        assert rule in out, f"{rule} missing from the demo DAG:\n{out}"


def test_a_users_config_runs_only_the_users_trials(tmp_path):
    bids = make_bids(tmp_path / "bids")
    res = snakemake(tmp_path, "-n", config=real_trial_config(bids))
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    assert "synth_synthdemo" not in counts and counts["validate_bids"] == 1, counts


def volumes_planned(output: str) -> dict[str, int]:
    """How many per-visit lesion-volume tables a dry run plans, by source."""
    paths = set(re.findall(r"results/metrics/\w+/trial-\w+/volumes/sub-\w+_ses-\w+_volume\.tsv", output))
    sources = [p.split("/")[2] for p in paths]
    return {s: sources.count(s) for s in set(sources)}


def job_counts(output: str) -> dict[str, int]:
    """Snakemake's "Job stats" table (rule, count) from a dry run's output."""
    counts = {}
    for line in output.split("Job stats:")[1].splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


@pytest.mark.parametrize("followup_brain_mask, skull_strips", [("baseline", 2), ("own", 6)])
def test_followup_brain_mask_decides_how_many_visits_are_skull_stripped(tmp_path, followup_brain_mask, skull_strips):
    bids = make_bids(tmp_path / "bids", weeks=(0, 24, 48))  # 2 subjects x 3 visits
    cfg = real_trial_config(bids) | {"preprocess": {"followup_brain_mask": followup_brain_mask}}
    res = snakemake(tmp_path, "-n", config=cfg)
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    assert counts["skull_strip"] == skull_strips, counts
    assert counts["register_baseline"] == 4 and counts["resample_with_gt"] == 6, counts
    # a follow-up's own native brain mask exists (and is resampled) only with "own"
    own_mask = "sub-001/ses-w024/sub-001_ses-w024_space-T1w_desc-brain_mask.nii.gz"
    assert (own_mask in res.stdout) == (followup_brain_mask == "own")


def test_misspelt_config_key_fails_with_its_name(tmp_path):
    bids = make_bids(tmp_path / "bids")
    cfg = real_trial_config(bids)
    cfg["metrics"] = {"conectivity": 18}
    res = snakemake(tmp_path, "-n", config=cfg)
    assert res.returncode != 0
    assert "conectivity" in res.stderr + res.stdout


def test_wrong_type_fails_with_its_name(tmp_path):
    bids = make_bids(tmp_path / "bids")
    cfg = real_trial_config(bids)
    cfg["metrics"] = {"overlap": "ten percent"}
    res = snakemake(tmp_path, "-n", config=cfg)
    assert res.returncode != 0
    assert "overlap" in res.stderr + res.stdout and "ten percent" in res.stderr + res.stdout


def test_broken_tree_lists_table_and_image_problems_together(tmp_path):
    """Structural problems leave only the validation job; it lists every problem, tables and images
    together, one line each, without a traceback; nothing is written but the log."""
    bids = make_bids(tmp_path / "bids")
    image_path(bids, "002", "w024", "FLAIR").unlink()
    (bids / "sub-003" / "ses-w024" / "anat").mkdir(parents=True)
    for mod in ("T1w", "T2w", "FLAIR"):
        write_image(image_path(bids, "003", "w024", mod), np.ones((6, 10, 12), np.float32))
    with open(bids / "participants.tsv", "a") as fh:
        fh.write("sub-003\tXYZ\t30\tF\tUS\t2\n")
        fh.write("sub-../x\tPLA\t30\tF\tUS\t2\n")
    inf = np.ones((12, 10, 6), np.float32)
    inf[2, 2, 2] = np.inf
    import nibabel as nib

    nib.save(nib.Nifti1Image(inf, np.eye(4)), str(image_path(bids, "001", "w024", "T2w")))
    write_image(
        bids / "derivatives/lesions/sub-002/ses-w000/anat/sub-002_ses-w000_desc-lesion_mask.nii.gz",
        np.zeros((6, 9, 12), np.uint8),
    )
    res = snakemake(tmp_path, "-n", config=real_trial_config(bids))
    assert res.returncode == 0, res.stderr
    assert job_counts(res.stdout) == {"validate_bids": 1, "all": 1, "total": 2}
    assert "only its validation runs" in res.stderr and "missing FLAIR image" in res.stderr

    res = snakemake(tmp_path, "--cores", "2", config=real_trial_config(bids))
    err = res.stdout + res.stderr
    assert res.returncode != 0
    assert "Traceback" not in err, err
    log = (tmp_path / "results/logs/validate_bids/trial-real.log").read_text()
    for text in (log, err):
        for expected in ("missing FLAIR image", "no baseline visit", "unknown arm 'XYZ'", "letters and digits only",
                         "sub-001_ses-w024_T2w.nii.gz: contains 1 NaN/Inf voxels",
                         "sub-002_ses-w000_desc-lesion_mask.nii.gz: header geometry differs from its FLAIR (size"):
            assert expected in text, text
    assert "the full list is" in log
    made = [p for p in (tmp_path / "results").rglob("*") if p.is_file() and "logs" not in p.parts]
    assert made == [], made


def test_participant_without_mri_is_a_warning_and_the_others_run(tmp_path):
    """A participant of participants.tsv without any MRI: the DAG is built for the others with
    a one-line warning; validation passes and lists the participant as "no MRI"."""
    import shutil

    import pandas as pd

    bids = make_bids(tmp_path / "bids", subjects=("001", "002", "003"))
    shutil.rmtree(bids / "sub-003")
    res = snakemake(tmp_path, "-n", config=real_trial_config(bids))
    assert res.returncode == 0, res.stderr
    warning = [line for line in res.stderr.splitlines() if "has no MRI" in line]
    assert len(warning) == 1 and "participants.tsv: participant 'sub-003'" in warning[0], res.stderr
    assert "only its validation runs" not in res.stderr
    counts = job_counts(res.stdout)
    assert counts["n4_coregister"] == 4 and counts["tlv_long"] == 1 and counts["cox"] == 1, counts
    assert "sub-003" not in res.stdout
    res = snakemake(tmp_path, "--cores", "1", "results/validated/trial-real_visits.tsv")
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(tmp_path / "results/validated/trial-real_visits.tsv", sep="\t", dtype=str,
                        keep_default_na=False)
    assert table[table.participant_id == "sub-003"][["session", "excluded"]].values.tolist() == [["n/a", "no MRI"]]
    assert "participant 'sub-003' has no MRI" in (tmp_path / "results/logs/validate_bids/trial-real.log").read_text()

def test_config_problems_are_one_line_each(tmp_path):
    bids = make_bids(tmp_path / "bids")
    cfg = real_trial_config(bids) | {"sorces": ["classical"]}
    res = snakemake(tmp_path, "-n", config=cfg)
    assert res.returncode != 0
    assert "unknown key(s) 'sorces'; allowed: seed, trials, sources" in (res.stdout + res.stderr)
    assert "$schema" not in (res.stdout + res.stderr) and "additionalProperties" not in (res.stdout + res.stderr)
    assert len((res.stdout + res.stderr).splitlines()) < 12, res.stdout + res.stderr


def test_the_old_name_of_the_classical_source_stops_at_start_with_one_line(tmp_path):
    bids = make_bids(tmp_path / "bids")
    res = snakemake(tmp_path, "-n", config=real_trial_config(bids) | {"sources": ["baseline", "unet"]})
    assert res.returncode != 0
    out = res.stdout + res.stderr
    line = "config: sources: 'baseline' is now called 'classical' (the classical segmenter); write 'classical'"
    assert line in out and "Traceback" not in out
    assert "is not one of" not in out  # the schema's enum error is not printed beside it


def test_unet_source_fails_at_start_with_one_line(tmp_path):
    bids = make_bids(tmp_path / "bids")
    res = snakemake(tmp_path, "-n", config=real_trial_config(bids) | {"sources": ["unet"]})
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "sources: 'unet' needs fold models: add a trial with role: train, or set inference.models" in out
    assert "MissingInputException" not in out and "Traceback" not in out


def _sources_case(tmp_path, case: str) -> dict:
    """A config for each default-sources case: a test trial alone, with a train trial, or with
    a folder of fold models (tests/test_config.py checks the same cases without Snakemake)."""
    cfg = real_trial_config(make_bids(tmp_path / "bids"))
    if case in ("train", "train, classical only"):
        cfg["trials"]["tr"] = {"role": "train", "bids": str(make_bids(tmp_path / "train_bids")), "control_arm": "PLA",
                               "treatment_arms": ["OCR"]}
    if case == "train, classical only":
        cfg["sources"] = ["classical"]
    if case == "models":
        for k in (1, 2, 3):
            (tmp_path / "models" / f"fold-{k}").mkdir(parents=True)
            (tmp_path / "models" / f"fold-{k}" / "model.keras").write_bytes(b"")
        cfg["inference"] = {"models": str(tmp_path / "models")}
    return cfg


@pytest.mark.parametrize("case, unet, trains", [("test only", False, False), ("train", True, True),
                                                ("models", True, False), ("train, classical only", False, True)])
def test_default_sources_use_the_unet_when_there_are_fold_models(tmp_path, case, unet, trains):
    res = snakemake(tmp_path, "-n", config=_sources_case(tmp_path, case))
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    assert ("infer_real_1" in counts) == unet and ("train" in counts) == trains, counts
    assert counts["segment_classical"] == 4, counts
    assert volumes_planned(res.stdout) == ({"classical": 4, "gt": 4, "unet": 4} if unet else {"classical": 4, "gt": 4})
    warning = "leaves out 'unet': the folds trained on tr predict no visit"
    assert (warning in res.stderr) == (case == "train, classical only"), res.stderr
    if case == "train, classical only":
        assert len([line for line in res.stderr.splitlines() if warning in line]) == 1


def test_inference_only_from_a_folder_of_fold_models(tmp_path):
    """inference.models: predictions from models trained elsewhere, with no training job."""
    bids = make_bids(tmp_path / "bids")
    models = tmp_path / "models"
    for k in (1, 2):
        (models / f"fold-{k}").mkdir(parents=True)
        (models / f"fold-{k}" / "model.keras").write_bytes(b"")
    cfg = real_trial_config(bids) | {"sources": ["classical", "unet"], "inference": {"models": str(models)}}
    res = snakemake(tmp_path, "-n", "--quiet", "rules", config=cfg)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "infer_" in out and "train " not in out and "patch_store" not in out
    # models without threshold.json: inference waits for none (and falls back to 0.5, tested in test_infer)
    jobs = dry_run_inputs(tmp_path)
    assert "calibrate" not in jobs and not [f for f in jobs["infer_real_1"][0] if "threshold" in f]
    for k in (1, 2):
        (models / f"fold-{k}" / "threshold.json").write_text('{"threshold": 0.7}')
    jobs = dry_run_inputs(tmp_path)
    assert [f for f in jobs["infer_real_1"][0] if "threshold" in f] == [
        f"{models}/fold-{k}/threshold.json" for k in (1, 2)]
    empty = tmp_path / "empty"
    empty.mkdir()
    res = snakemake(tmp_path, "-n", config=cfg | {"inference": {"models": str(empty)}})
    assert res.returncode != 0
    assert f"inference.models: no fold-<k>/model.keras under {empty}" in res.stdout + res.stderr


def dry_run_inputs(workdir: Path) -> dict[str, list[list[str]]]:
    """Every job's input files in a dry run (with workdir's config), by rule: a dry run prints
    them only for rules without a ``message:``, and the inference rules have one."""
    import json

    cmd = [sys.executable, str(REPO / "tests" / "_snakemake_inputs.py"), *SNAKEMAKE[3:], "--directory", str(workdir),
           "--cores", "1", "--configfile", str(workdir / "config.yaml"), "-n", "--quiet"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    jobs: dict[str, list[list[str]]] = {}
    for line in res.stderr.splitlines():
        if line.startswith("JOB-INPUTS "):
            job = json.loads(line[len("JOB-INPUTS "):])
            jobs.setdefault(job["rule"], []).append(job["input"])
    return jobs


@pytest.mark.parametrize("threshold", ["auto", 0.5])
def test_each_fold_chooses_a_threshold_that_inference_waits_for_unless_fixed(tmp_path, threshold):
    """Folds trained here: one calibrate job per fold, after its training; the inference jobs
    read the fold thresholds with inference.threshold: auto, and none with a fixed threshold."""
    test = make_bids(tmp_path / "test")
    train = make_bids(tmp_path / "train", subjects=("001", "002", "003", "004"))
    cfg = real_trial_config(test)
    cfg["trials"]["tr"] = {"role": "train", "bids": str(train), "control_arm": "PLA", "treatment_arms": ["OCR"]}
    cfg |= {"sources": ["unet"], "training": {"folds": 2}, "inference": {"threshold": threshold}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    jobs = dry_run_inputs(tmp_path)
    assert len(jobs["calibrate"]) == len(jobs["train"]) == 2, sorted(jobs)
    for calibrate in jobs["calibrate"]:
        assert calibrate[:2] in ([f"results/train/fold-{k}/model.keras", "results/train/trial-tr/folds.tsv"]
                                 for k in (1, 2))
        assert sum(f.endswith("desc-lesionGT_mask.nii.gz") for f in calibrate) == 8  # every GT visit of trial tr
    (infer,) = jobs["infer_real_1"]
    expected = [f"results/train/fold-{k}/threshold.json" for k in (1, 2)] if threshold == "auto" else []
    assert [f for f in infer if "threshold" in f] == expected


def test_config_friction_home_folder_hyphenated_arms_shared_folder(tmp_path):
    import os

    bids = make_bids(tmp_path / "home" / "trial", arms=("placebo", "treatment-600mg"))
    trial = {"role": "test", "bids": "~/trial", "control_arm": "placebo", "treatment_arms": ["treatment-600mg"]}
    cfg = {"trials": {"a": trial, "b": dict(trial)}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [*SNAKEMAKE, "--directory", str(tmp_path), "--cores", "1", "--configfile", str(tmp_path / "config.yaml"),
           "-n"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "HOME": str(tmp_path / "home")})
    assert res.returncode == 0, res.stderr
    assert "trials 'a' and 'b' use the same BIDS folder" in res.stderr
    assert job_counts(res.stdout)["validate_bids"] == 2


def test_trial_without_gt_still_gets_every_endpoint(tmp_path):
    bids = make_bids(tmp_path / "bids", gt=False)
    res = snakemake(tmp_path, "-n", config=real_trial_config(bids))
    assert res.returncode == 0, res.stderr
    assert "no GT lesion masks" in res.stderr
    counts = job_counts(res.stdout)
    # the plain resample (no GT output) on every visit; segment_classical writes the volumes
    assert counts["resample"] == 4 and counts["segment_classical"] == 4, counts
    assert volumes_planned(res.stdout) == {"classical": 4}
    for rule in ("tlv_long", "change", "ancova", "cox", "km"):
        assert counts[rule] == 1, counts
    for rule in ("resample_with_gt", "metrics_visit", "metrics_dataset"):
        assert rule not in counts, counts


def test_partial_gt_mapped_sessions_and_excluded_visits(tmp_path):
    bids = make_bids(tmp_path / "bids", weeks=(0, 24, 48))
    (bids / "derivatives/lesions/sub-001/ses-w048").rename(tmp_path / "gone")  # GT missing at one visit
    for sub in ("001", "002"):
        for old, new in (("w000", "bl"), ("w024", "m06")):
            for root in (bids, bids / "derivatives/lesions"):
                folder = root / f"sub-{sub}" / f"ses-{old}"
                for f in folder.rglob("*.nii.gz"):
                    f.rename(f.with_name(f.name.replace(f"ses-{old}", f"ses-{new}")))
                folder.rename(folder.with_name(f"ses-{new}"))
    cfg = real_trial_config(bids)
    cfg["trials"]["real"]["sessions"] = {"bl": 0, "m06": 24}
    cfg["trials"]["real"]["exclude"] = [{"participant_id": "sub-002", "session": "ses-w048", "reason": "motion"}]
    res = snakemake(tmp_path, "-n", config=cfg)
    assert res.returncode == 0, res.stderr
    assert "1 visit(s) excluded by the config: sub-002_ses-w048 (motion)" in res.stderr
    assert "4 of 5 visits have a GT lesion mask" in res.stderr
    counts = job_counts(res.stdout)
    # the GT variant where the visit has a GT mask, the plain one at sub-001's w048
    assert counts["resample_with_gt"] == 4 and counts["resample"] == 1 and counts["metrics_visit"] == 4, counts
    assert "sub-001_ses-w048_space-MNI1x1x3_desc-lesionGT_mask" not in res.stdout
    assert volumes_planned(res.stdout) == {"classical": 5, "gt": 4}  # classical on every visit, gt where it exists
    # inside the pipeline a mapped visit is named by its week
    assert "results/preproc/trial-real/sub-001/ses-w024/" in res.stdout
    assert "sub-001/ses-m06/anat/sub-001_ses-m06_FLAIR.nii.gz" in res.stdout  # read from its BIDS name


def test_review_queue_is_planned_per_visit_and_per_trial(tmp_path):
    """docs/DESIGN.md §14: one review row per visit, one queue and one review page per trial."""
    bids = make_bids(tmp_path / "bids", weeks=(0, 24, 48))  # 2 subjects x 3 visits
    models = tmp_path / "models"
    for k in (1, 2):
        (models / f"fold-{k}").mkdir(parents=True)
        (models / f"fold-{k}" / "model.keras").write_bytes(b"")
    cfg = real_trial_config(bids) | {"sources": ["classical", "unet"], "inference": {"models": str(models)}}
    res = snakemake(tmp_path, "-n", config=cfg)
    assert res.returncode == 0, res.stdout + res.stderr
    counts = job_counts(res.stdout)
    assert counts["review_visit"] == 6 and counts["review_queue"] == 1 and counts["review_figure"] == 1, counts
    assert counts["review_bundles"] == 1, counts
    assert "results/review/trial-real/queue.tsv" in res.stdout


def test_a_correction_reruns_only_its_visit_and_the_trial_tables(tmp_path):
    """docs/DESIGN.md §14: with every output in place (made empty and touched in order), a reader's
    correction of one visit schedules that visit's jobs and the trial-level ones, nothing else."""
    bids = make_bids(tmp_path / "bids", weeks=(0, 24, 48))  # 2 subjects x 3 visits
    models = tmp_path / "models"
    for k in (1, 2):
        (models / f"fold-{k}").mkdir(parents=True)
        (models / f"fold-{k}" / "model.keras").write_bytes(b"")
    cfg = real_trial_config(bids) | {"sources": ["classical", "unet", "reviewed"], "inference": {"models": str(models)}}
    res = snakemake(tmp_path, "--summary", config=cfg)
    assert res.returncode == 0, res.stderr
    for line in res.stdout.splitlines():
        name = line.split("\t")[0]
        if name.startswith("results/"):
            path = tmp_path / name
            if path.name in ("qc", "bundles"):  # directory() outputs
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"")
    # twice: one --touch pass may touch a local job's output (visit_files) after its consumer's
    assert snakemake(tmp_path, "--touch").returncode == 0 and snakemake(tmp_path, "--touch").returncode == 0
    assert "Nothing to be done" in snakemake(tmp_path, "-n").stdout
    corr = bids / "derivatives/lesions-reviewed/sub-001/ses-w024/anat/sub-001_ses-w024_space-FLAIR_desc-lesion_mask.nii.gz"
    corr.parent.mkdir(parents=True)
    corr.write_bytes((bids / "sub-001/ses-w024/anat/sub-001_ses-w024_FLAIR.nii.gz").read_bytes())
    res = snakemake(tmp_path, "-n")
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    assert counts["apply_review"] == 1 and counts["metrics_visit"] == 1 and counts["track_lesions"] == 1, counts
    assert counts["review_changes"] == 1 and counts["tlv_long"] == 1, counts
    for rule in ("infer_real_1", "segment_classical", "review_visit", "resample_with_gt", "review_queue"):
        assert rule not in counts, counts
    visits = set(re.findall(r"wildcards: trial=real, sub=(\w+), ses=(\w+)", res.stdout))
    assert visits == {("001", "w024")}, visits

    # a visit excluded: validation and the trial-level jobs run again, no visit's preprocessing
    # (before, every visit's n4_coregister reran behind the new validation). -R validate_bids: the
    # changed params rerun it in a real run; outputs made by --touch have no params on record
    cfg["trials"]["real"]["exclude"] = [{"participant_id": "sub-002", "session": "ses-w024", "reason": "motion"}]
    res = snakemake(tmp_path, "-n", "-R", "validate_bids", config=cfg)
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    assert counts["validate_bids"] == 1 and counts["tlv_long"] == 1, counts
    for rule in ("visit_files", "n4_coregister", "skull_strip", "resample", "resample_with_gt", "segment_classical"):
        assert rule not in counts, counts
    del cfg["trials"]["real"]["exclude"]
    snakemake(tmp_path, "-n", config=cfg)  # the config as it was

    # a replaced image: validation runs again (every image is its input), and then only that
    # participant's preprocessing, not every visit's (README, "Large trials"): the follow-up is
    # registered to its baseline's N4 image, a temporary file, made again with its visits
    flair = bids / "sub-002/ses-w048/anat/sub-002_ses-w048_FLAIR.nii.gz"
    flair.write_bytes((bids / "sub-001/ses-w048/anat/sub-001_ses-w048_FLAIR.nii.gz").read_bytes())
    os.utime(flair, (time.time() + 5, time.time() + 5))  # newer than every output, on any clock
    res = snakemake(tmp_path, "-n")
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    assert counts["validate_bids"] == 1 and counts["validation_passed"] == 1 and counts["visit_files"] == 1, counts
    visits = set(re.findall(r"rule n4_coregister:.*?wildcards: trial=real, sub=(\w+), ses=(\w+)", res.stdout,
                            re.S))
    assert visits == {("002", "w000"), ("002", "w024"), ("002", "w048")}, visits
    assert "sub-002_ses-w048_FLAIR.nii.gz" in res.stdout.split("rule visit_files:")[1].split("rule ")[0]


def dry_run_jobs(output: str) -> list[dict]:
    """The jobs of a dry run's output: rule, input and output lists, wildcards (as text)."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        head = re.match(r"(?:local)?rule (\w+):", block)
        if not head:
            continue
        job = {"rule": head.group(1)}
        for key in ("input", "output", "wildcards"):
            m = re.search(rf"^\s+{key}: (.*)$", block, re.M)
            job[key] = m.group(1) if m else ""
        jobs.append(job)
    return jobs


def test_a_train_trial_with_training_masks_reviewed_trains_on_the_readers_masks(tmp_path):
    """trials.<t>.training_masks: reviewed (docs/DESIGN.md §14): the patch store of a visit with a
    reader's mask reads that mask carried into MNI; visits without one are left out (one warning)."""
    bids = make_bids(tmp_path / "bids", weeks=(0, 24))  # 2 subjects x 2 visits, GT everywhere
    reviewed = {}
    for sub, ses in (("001", "w000"), ("002", "w024")):
        anat = f"sub-{sub}/ses-{ses}/anat/sub-{sub}_ses-{ses}"
        p = bids / f"derivatives/lesions-reviewed/{anat}_space-FLAIR_desc-lesion_mask.nii.gz"
        p.parent.mkdir(parents=True)
        p.write_bytes((bids / f"derivatives/lesions/{anat}_desc-lesion_mask.nii.gz").read_bytes())
        reviewed[(sub, ses)] = p
    cfg = {"trials": {"tr": {"role": "train", "bids": str(bids), "control_arm": "PLA", "treatment_arms": ["OCR"],
                             "training_masks": "reviewed"}}, "training": {"folds": 2}}
    res = snakemake(tmp_path, "-n", config=cfg)
    assert res.returncode == 0, res.stdout + res.stderr
    assert ("trial 'tr': training_masks: reviewed: 2 of 4 visits have no reviewed mask and are left out of "
            "training: sub-001_ses-w024, sub-002_ses-w000") in res.stderr
    jobs = dry_run_jobs(res.stdout)
    stores = {j["wildcards"]: j for j in jobs if j["rule"] == "patch_store"}
    assert set(stores) == {"trial=tr, sub=001, ses=w000", "trial=tr, sub=002, ses=w024"}, set(stores)
    for (sub, ses), corr in reviewed.items():
        pre = f"results/preproc/trial-tr/sub-{sub}/ses-{ses}/sub-{sub}_ses-{ses}_space-MNI1x1x3"
        job = stores[f"trial=tr, sub={sub}, ses={ses}"]
        assert f"{pre}_desc-lesionReviewed_mask.nii.gz" in job["input"] and "lesionGT" not in job["input"], job
        (carry,) = [j for j in jobs
                    if j["rule"] == "reviewed_training_mask" and "lesionReviewed" in j["output"] and pre in j["output"]]
        assert str(corr) in carry["input"] and f"sub-{sub}_ses-{ses}_from-FLAIR_to-MNI1x1x3_xfm.tfm" in carry["input"]
    index = [j for j in jobs if j["rule"] == "patch_index"]
    assert len(index) == 1 and "sub-001_ses-w024.npy" not in index[0]["input"]
    # calibration validates each fold on the readers' masks too
    cal = [j["input"] for j in jobs if j["rule"] == "calibrate"]
    assert len(cal) == 2 and all("desc-lesionReviewed_mask" in c and "desc-lesionGT_mask" not in c for c in cal)


def test_training_masks_reviewed_without_reviewed_masks_fails_at_start_naming_the_trial(tmp_path):
    bids = make_bids(tmp_path / "bids")
    cfg = {"trials": {"tr": {"role": "train", "bids": str(bids), "control_arm": "PLA", "treatment_arms": ["OCR"],
                             "training_masks": "reviewed"}}, "training": {"folds": 2}}
    res = snakemake(tmp_path, "-n", config=cfg)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "trial 'tr': training_masks: reviewed, but none of its 4 visits has a reviewed mask" in out, out
    assert "Traceback" not in out
