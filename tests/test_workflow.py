"""The workflow as a user drives it: lint, formatting, DAG, config and input errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import REPO, make_bids, write_image
from t2lesion.bids import image_path

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]


def snakemake(
    workdir: Path, *args: str, config: dict | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    cmd = [*SNAKEMAKE, "--directory", str(workdir), "--cores", "1"]
    if config is not None:
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
        cmd += ["--configfile", str(workdir / "config.yaml")]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout)


def real_trial_config(bids: Path) -> dict:
    return {"trials": {"real": {"role": "test", "bids": str(bids), "control_arm": "PLA", "treatment_arms": ["OCR"]}}}


def test_snakefmt_clean():
    res = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules/"], cwd=REPO, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_lint_clean_on_default_config():
    res = subprocess.run([*SNAKEMAKE, "--lint"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Lints for" not in res.stdout + res.stderr, res.stdout + res.stderr


def test_default_config_builds_the_dag():
    res = subprocess.run([*SNAKEMAKE, "-n", "--quiet", "rules"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = res.stdout + res.stderr
    for rule in ("synth_synthdemo", "validate_bids", "n4", "skull_strip", "register_mni", "resample", "cox", "km"):
        assert rule in out, f"{rule} missing from the demo DAG:\n{out}"


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
    assert counts["register_baseline"] == 4 and counts["resample"] == 6, counts


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


def test_broken_tree_stops_before_any_result(tmp_path):
    """Structural problems stop the DAG; image problems stop the validation rule; nothing is written."""
    bids = make_bids(tmp_path / "bids")
    image_path(bids, "002", "w024", "FLAIR").unlink()
    (bids / "sub-003" / "ses-w024" / "anat").mkdir(parents=True)
    for mod in ("T1w", "T2w", "FLAIR"):
        write_image(image_path(bids, "003", "w024", mod), np.ones((6, 10, 12), np.float32))
    with open(bids / "participants.tsv", "a") as fh:
        fh.write("sub-003\tXYZ\t30\tF\tUS\t2\n")
        fh.write("sub-../x\tPLA\t30\tF\tUS\t2\n")
    res = snakemake(tmp_path, "-n", config=real_trial_config(bids))
    err = res.stdout + res.stderr
    assert res.returncode != 0
    for expected in ("missing FLAIR image", "no baseline visit", "unknown arm 'XYZ'", "letters and digits only"):
        assert expected in err, err
    assert not (tmp_path / "results").exists()

    # Image-level problems are found by the validation rule, before any heavy step.
    bids2 = make_bids(tmp_path / "bids2")
    nan = np.ones((12, 10, 6), np.float32)
    nan[2, 2, 2] = np.inf
    import nibabel as nib

    nib.save(nib.Nifti1Image(nan, np.eye(4)), str(image_path(bids2, "001", "w024", "T2w")))
    write_image(
        bids2 / "derivatives/lesions/sub-002/ses-w000/anat/sub-002_ses-w000_desc-lesion_mask.nii.gz",
        np.zeros((6, 9, 12), np.uint8),
    )
    res = snakemake(tmp_path, "--cores", "2", config=real_trial_config(bids2))
    assert res.returncode != 0
    log = (tmp_path / "results/logs/validate_bids/trial-real.log").read_text()
    assert "sub-001_ses-w024_T2w.nii.gz: contains 1 NaN/Inf voxels" in log
    assert "sub-002_ses-w000_desc-lesion_mask.nii.gz: header geometry differs from its FLAIR" in log
    made = [p for p in (tmp_path / "results").rglob("*") if p.is_file() and "logs" not in p.parts]
    assert made == [], made
