"""End to end on a tiny synthetic trial: BIDS generation to endpoint tables, through real
preprocessing (N4, rigid registrations, deepbet skull stripping), the classical
segmenter, a tiny U-Net trained on a second synthetic trial (two folds) and its ensembled
MC-dropout inference, lesion metrics and the statistics rules, every source side by side."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from t2lesion.unet.threshold import THRESHOLD_GRID
from tests.conftest import REPO
from tests.test_environment import _norm, env_closure, installed_closure, library_imports, rule_envs
from tests.test_workflow import snakemake

pytestmark = pytest.mark.slow

# The tiny test trial (2 subjects x 2 visits, small volumes); tests/test_slurm.py runs it too.
TINY_TRIAL = {
    "role": "test",
    "bids": "results/synth/trial-tiny/bids",
    "control_arm": "PLA",
    "treatment_arms": ["OCR"],
    "synthetic": {
        "seed": 5,
        "subjects_per_arm": 1,
        "weeks": [0, 24],
        "template_resolution_mm": 2,
        "fov_mm": [200.0, 230.0, 171.0],
        "tlv_median_ml": 4.0,
    },
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    config = {
        "trials": {
            "tiny": TINY_TRIAL,
            # a one-visit-per-subject training trial: two folds of a tiny U-Net, trained for
            # two steps each (the machinery, not a useful model: the demo measures quality)
            "tinytrain": {
                "role": "train",
                "bids": "results/synth/trial-tinytrain/bids",
                "control_arm": "PLA",
                "treatment_arms": ["OCR"],
                "synthetic": {
                    "seed": 6,
                    "subjects_per_arm": 1,
                    "weeks": [0],
                    "template_resolution_mm": 2,
                    "fov_mm": [200.0, 230.0, 171.0],
                    "tlv_median_ml": 4.0,
                },
            },
        },
        "sources": ["classical", "unet"],
        "model": {"patch_size": [8, 32, 32], "widths": [4, 8, 8, 8], "bn_momentum": 0.9, "output_prior": 0.01},
        # the loader's worker processes, as a GPU user runs them (configs/paper.yaml)
        "training": {"folds": 2, "epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "workers": 2,
                     "loader": "processes", "threads": 1, "mixed_precision": "off"},
        "inference": {"mc_samples": 2, "threads": 1},
        # No preprocess override: the default extractor (deepbet, ~5 CPU-s per visit) runs
        # end to end; ROBEX (about a minute per visit) is tested in test_preprocess.
    }
    # Every process of the run writes the modules it imported (tests/import_audit), checked
    # against its rule's conda env below.
    audit = work / "import_audit"
    audit.mkdir()
    path = os.pathsep.join(p for p in (str(REPO / "tests/import_audit"), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "T2LESION_IMPORT_AUDIT": str(audit)}
    # a few minutes on two idle cores; generous for a loaded CI machine
    res = snakemake(work, "--cores", "2", config=config, timeout=2400, env=env)
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-5000:]
    return work


def test_every_stage_wrote_its_outputs(tiny_run):
    r = tiny_run / "results"
    visits = [("001", "w000"), ("001", "w024"), ("002", "w000"), ("002", "w024")]
    for sub, ses in visits:
        pre = r / f"preproc/trial-tiny/sub-{sub}/ses-{ses}/sub-{sub}_ses-{ses}"
        for suffix in ("space-MNI1x1x3_desc-preproc_FLAIR.nii.gz", "space-MNI1x1x3_desc-lesionGT_mask.nii.gz",
                       "space-MNI1x1x3_qc.png", "from-FLAIR_to-MNI1x1x3_xfm.tfm"):
            assert pre.parent.joinpath(f"{pre.name}_{suffix}").is_file(), suffix
        assert (r / f"logs/n4_coregister/trial-tiny_sub-{sub}_ses-{ses}.log").is_file()
        assert (r / f"benchmarks/resample/trial-tiny_sub-{sub}_ses-{ses}.tsv").is_file()
    # temp() intermediates are gone once consumed
    assert not list(r.glob("preproc/**/*desc-n4_*.nii*"))
    # training: the split, one model per fold with its history and curve
    folds = pd.read_csv(r / "train/trial-tinytrain/folds.tsv", sep="\t")
    assert sorted(folds["fold"]) == [1, 2]
    for fold in (1, 2):
        for name in ("model.keras", "last.keras", "training_curve.png"):
            assert (r / f"train/fold-{fold}/{name}").is_file(), (fold, name)
        history = pd.read_csv(r / f"train/fold-{fold}/history.tsv", sep="\t")
        assert history["iterations"].tolist() == [2] and history["val_dice"].between(0, 1).all()
        # the batches came from the loader's worker processes (test_unet_data: the same bits as threads)
        assert "2 batch(es) at once, in worker processes" in (r / f"logs/train/fold-{fold}.log").read_text()
    # each fold's threshold, chosen on its held-out visit (one subject per fold); inference cuts at their mean
    import json

    thresholds = []
    for fold in (1, 2):
        info = json.loads((r / f"train/fold-{fold}/threshold.json").read_text())
        curve = pd.read_csv(r / f"train/fold-{fold}/threshold_curve.tsv", sep="\t", na_values=["n/a"])
        assert info["n_visits"] == 1 and info["visits"][0] in {"sub-001_ses-w000", "sub-002_ses-w000"}
        assert list(curve.columns) == ["threshold", "mean_dice", "n", info["visits"][0]]
        assert curve["threshold"].tolist() == pytest.approx(list(THRESHOLD_GRID)) and info["grid"] == list(THRESHOLD_GRID)
        assert info["threshold"] in curve["threshold"].round(2).tolist()
        assert (r / f"train/fold-{fold}/threshold_curve.png").read_bytes()[:4] == b"\x89PNG"
        thresholds.append(info["threshold"])
    assert {json.loads((r / f"train/fold-{k}/threshold.json").read_text())["visits"][0] for k in (1, 2)} == {
        "sub-001_ses-w000", "sub-002_ses-w000"}  # each fold holds out its own participant
    volume = pd.read_csv(r / "metrics/unet/trial-tiny/volumes/sub-001_ses-w000_volume.tsv", sep="\t")
    assert volume["threshold"].iloc[0] == pytest.approx(sum(thresholds) / 2)
    assert "held-out visits, mean of folds" in (r / "logs/infer/trial-tiny_batch-1.log").read_text()
    # inference: every map of every test visit, in the preprocessed grid, and the native mask
    import nibabel as nib

    for sub, ses in visits:
        pred = r / f"predict/unet/trial-tiny/sub-{sub}/ses-{ses}/sub-{sub}_ses-{ses}"
        pre = r / f"preproc/trial-tiny/sub-{sub}/ses-{ses}/sub-{sub}_ses-{ses}"
        ref = nib.load(f"{pre}_space-MNI1x1x3_desc-brain_mask.nii.gz")
        for suffix in ("desc-lesion_probseg", "desc-lesion_mask", "desc-sd_uncertainty", "desc-entropy_uncertainty",
                       "desc-mi_uncertainty"):
            img = nib.load(f"{pred}_space-MNI1x1x3_{suffix}.nii.gz")
            assert img.shape == ref.shape and (img.affine == ref.affine).all(), suffix
        assert pred.parent.joinpath(f"{pred.name}_space-FLAIR_desc-lesion_mask.nii.gz").is_file()


def test_every_job_imports_only_what_its_rules_conda_env_holds(tiny_run):
    """Under --sdm conda a job runs in its rule's envs/*.yaml: every package of t2lesion's own
    imports that a job's script (or its worker processes) imported in this run is a pin of that
    env or something a pin requires, or Snakemake's own (its preamble appends its sys.path).
    (Imports a library makes on its own, Keras trying scikit-learn, are the library's.)"""
    from importlib.metadata import packages_distributions

    records = {r["pid"]: r for r in (json.loads(p.read_text()) for p in (tiny_run / "import_audit").glob("*.json"))}

    def script_of(record):  # a worker process's imports count for the job that started it
        seen = set()
        while record is not None and record["pid"] not in seen:
            seen.add(record["pid"])
            m = re.fullmatch(r"tmp\w+\.(\w+\.py)", record["script"])  # Snakemake's copy of the script
            if m:
                return m.group(1)
            record = records.get(record["ppid"])
        return None

    envs, dists, ours = rule_envs(), packages_distributions(), library_imports()
    snakemakes = installed_closure(["snakemake"])
    checked, missing, unknown = set(), {}, set()
    for record in records.values():
        script = script_of(record)
        if script is None:
            continue
        checked.add(script)
        for env in envs[script]:
            allowed = env_closure(env) | snakemakes
            for module in set(record["modules"]) & ours:
                names = {_norm(d) for d in dists.get(module, [])}
                if not names:
                    unknown.add(f"{module} ({script})")
                elif not names & allowed:
                    missing.setdefault(f"{script} in envs/{env}", set()).add(f"{module} ({', '.join(sorted(names))})")
    assert not missing, missing
    assert not unknown, f"modules of no installed distribution: {sorted(unknown)}"
    assert {"synth.py", "n4_coregister.py", "skull_strip.py", "segment_classical.py", "metrics_visit.py",
            "train.py", "calibrate.py", "infer.py", "ancova.py", "cox.py", "track_lesions.py",
            "summary.py"} <= checked, sorted(checked)


def test_gpu_jobs_log_backend_device_and_precision(tiny_run):
    """dl.backend: auto on this CPU machine: JAX (in the lock) sees no GPU, so TensorFlow; every
    train and infer job says so, then its backend, device and precision."""
    logs = sorted((tiny_run / "results/logs/train").glob("fold-*.log"))
    infer = [p for p in (tiny_run / "results/logs").rglob("*.log") if p.read_text().count("inference: ")]
    assert len(logs) == 2 and infer
    for log in logs + infer:
        text = log.read_text()
        assert "dl.backend auto: TensorFlow, since JAX sees no GPU and would fall back to the CPU (JAX: " in text, log
        assert text.count("backend tensorflow, device cpu, precision float32") == 1, log


def test_metrics_and_statistics_tables(tiny_run):
    r = tiny_run / "results"
    visits = pd.read_csv(r / "metrics/classical/trial-tiny/visits.tsv", sep="\t")
    assert len(visits) == 4
    assert (visits["gt_tlv_ml"] > 0).all()
    # The classical segmenter finds lesions on this trial (real signal, not noise).
    assert visits["dc"].mean() > 0.2, visits[["dc", "ltpr", "lfpr"]]
    table2 = pd.read_csv(r / "metrics/classical/trial-tiny/table2.tsv", sep="\t")
    assert len(table2)
    long = pd.read_csv(r / "stats/trial-tiny/tlv_long.tsv", sep="\t")
    assert sorted(long["source"].unique()) == ["classical", "gt", "unet"]
    assert len(long) == 12
    # the unet source sits beside classical in every metric and endpoint table
    unet = pd.read_csv(r / "metrics/unet/trial-tiny/visits.tsv", sep="\t")
    assert len(unet) == 4 and unet["dc"].between(0, 1).all()
    both = pd.read_csv(r / "metrics/trial-tiny/table2.tsv", sep="\t")
    assert set(both["source"]) == {"classical", "unet"}
    assert both.loc[both["source"] == "unet", "mean"].notna().any()
    for table in ("change_summary.tsv", "ancova.tsv", "table4.tsv", "km_tests.tsv", "nb_rate_ratio.tsv"):
        df = pd.read_csv(r / "stats/trial-tiny" / table, sep="\t")
        if "source" in df:  # long tables: rows of each source
            assert {"unet", "classical"} <= set(df["source"]), (table, set(df["source"]))
        else:  # Table 4 side by side: columns <source>.<value>
            assert {"unet.hr", "classical.hr"} <= set(df.columns), (table, list(df.columns))
    # GT TLV after resampling equals what the metrics saw, visit by visit.
    gt = long[long["source"] == "gt"].sort_values(["participant_id", "week"])["tlv_ml"].to_numpy()
    assert gt == pytest.approx(visits.sort_values(["participant_id", "week"])["gt_tlv_ml"].to_numpy())
    # One subject per arm: the analyses say why they were skipped instead of failing.
    cox = pd.read_csv(r / "stats/trial-tiny/cox.tsv", sep="\t")
    assert (cox["status"] != "ok").all() and cox["note"].notna().all()
    assert (r / "stats/trial-tiny/fig3_tlv_change.png").is_file()


def test_report_renders_every_figure(tiny_run):
    """The self-contained HTML report `make demo` ends with (its folder made first, as there)."""
    (tiny_run / "results/report").mkdir(exist_ok=True)
    res = snakemake(tiny_run, "--report", "results/report/report.html", timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    html = (tiny_run / "results/report/report.html").read_text(errors="replace")
    for name in ("sub-001_ses-w024_space-MNI1x1x3_qc.png", "fig3_tlv_change.png", "table2.tsv", "table1.tsv",
                 "fig2_overlays.png", "summary.md"):
        assert name in html, f"{name} missing from the report"
    assert "threshold_curve.png" in html
    for category in ("QC", "Segmentation", "Endpoints", "Table 1: cohort by arm", "Fig. 2: FLAIR overlays"):
        assert category in html, f"{category} missing from the report"


NUMBER = r"-?\d+(\.\d+)?(e[+-]\d+)?"


def _md_rows(text: str, heading: str) -> list[list[str]]:
    """The body rows of the first Markdown table under ``heading`` in summary.md."""
    section = text.split(heading, 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[2:]]


def test_summary_md_shows_the_papers_tables(tiny_run):
    import re

    r = tiny_run / "results"
    table1 = pd.read_csv(r / "stats/trial-tiny/table1.tsv", sep="\t", dtype=str, keep_default_na=False)
    patients = table1[table1["characteristic"] == "Patients"].iloc[0]
    assert (patients["PLA"], patients["OCR"], patients["all"]) == ("1", "1", "2")
    assert (r / "metrics/classical/trial-tiny/fig2_overlays.png").read_bytes()[:4] == b"\x89PNG"
    text = (r / "report/summary.md").read_text()
    assert "## trial-tiny" in text
    rows = _md_rows(text, "### Table 2:")
    assert {row[1] for row in rows} >= {"DC", "LTPR", "r_vol"}
    for row in rows:  # every source's cell is a number (mean, or mean ± SD)
        assert all(re.fullmatch(rf"{NUMBER}( ± ({NUMBER}|n/a))?", cell) for cell in row[2:]), row
    uni = [row for row in _md_rows(text, "### Table 4:") if row[1] == "univariable"]
    assert len(uni) == 2 * 4  # log TLV and TLC per endpoint
    for row in uni:  # a hazard ratio, or the reason the model did not run, in words (one subject per arm
        for cell in row[3:]:  # makes most of these degenerate: separation, singular fits)
            assert re.match(rf"{NUMBER} \(", cell) or re.match(r"(skipped|failed): [A-Za-z]", cell), row
    assert re.search(r"\nU-Net masks: probability >= 0\.\d+ \(threshold chosen on each fold's held-out visits, "
                     r"mean of folds 0\.\d\d, 0\.\d\d\)\.\n", text)
    assert "[threshold_curve.png](../train/fold-1/threshold_curve.png)" in text
    assert "[fig2_overlays.png](../metrics/classical/trial-tiny/fig2_overlays.png)" in text
    assert "[fig3_tlv_change.png](../stats/trial-tiny/fig3_tlv_change.png)" in text


def test_rerun_does_nothing(tiny_run):
    res = snakemake(tiny_run, "-n", "--quiet", "rules")
    assert res.returncode == 0, res.stderr
    assert "Nothing to be done" in res.stdout + res.stderr, res.stdout + res.stderr


def test_loader_and_cpu_threads_rerun_nothing(tiny_run, tmp_path):
    """A finished run with more loader workers, in threads, and more job threads: no fold is
    retrained and no visit predicted again; a setting of what the folds learn retrains them."""
    def dry_run(overlay_config: dict):
        overlay = tmp_path / "overlay.yaml"
        overlay.write_text(yaml.safe_dump(overlay_config))
        res = snakemake(tiny_run, "-n", "--quiet", "rules", "--configfile", str(tiny_run / "config.yaml"), str(overlay))
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout + res.stderr

    faster = {"training": {"workers": 3, "loader": "threads", "threads": 2}, "inference": {"threads": 2}}
    assert "Nothing to be done" in dry_run(faster)
    assert re.search(r"\btrain\b", dry_run({**faster, "training": {"workers": 3, "epochs": 2}}))


@pytest.fixture(scope="module")
def nogt_run(tiny_run, tmp_path_factory):
    """The tiny trial as a real trial would arrive: no GT anywhere, sessions named ses-bl/ses-m06
    (weeks from sessions.tsv), one visit as uncompressed .nii, another with a run- entity."""
    import gzip
    import shutil

    work = tmp_path_factory.mktemp("nogt")
    bids = Path(shutil.copytree(tiny_run / "results/synth/trial-tiny/bids", work / "bids"))
    shutil.rmtree(bids / "derivatives")
    for sub in ("001", "002"):
        for old, new in (("w000", "bl"), ("w024", "m06")):
            folder = bids / f"sub-{sub}" / f"ses-{old}"
            for f in folder.rglob("*.nii.gz"):
                f.rename(f.with_name(f.name.replace(f"ses-{old}", f"ses-{new}")))
            folder.rename(folder.with_name(f"ses-{new}"))
        pd.DataFrame({"session_id": ["ses-bl", "ses-m06"], "week": [0, 24]}).to_csv(
            bids / f"sub-{sub}" / f"sub-{sub}_sessions.tsv", sep="\t", index=False)
    for f in (bids / "sub-001/ses-m06/anat").glob("*.nii.gz"):
        with gzip.open(f) as src:
            f.with_suffix("").write_bytes(src.read())
        f.unlink()
    for f in (bids / "sub-002/ses-bl/anat").glob("*.nii.gz"):
        f.rename(f.with_name(f.name.replace("ses-bl_", "ses-bl_run-1_")))
    config = {
        "trials": {"nogt": {"role": "test", "bids": str(bids), "control_arm": "PLA", "treatment_arms": ["OCR"]}},
        # inference only: the fold models the tiny run trained, as a folder trained elsewhere
        "sources": ["classical", "unet"],
        "inference": {"models": str(tiny_run / "results/train"), "mc_samples": 2, "threads": 1},
    }
    res = snakemake(work, "--cores", "2", config=config, timeout=2400)
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-5000:]
    assert "no GT lesion masks" in res.stderr
    return work


def test_trial_without_gt_gets_masks_volumes_and_every_endpoint(nogt_run, tiny_run):
    r = nogt_run / "results"
    visits = pd.read_csv(r / "validated/trial-nogt_visits.tsv", sep="\t", keep_default_na=False)
    assert visits["session"].tolist() == ["ses-w000", "ses-w024"] * 2
    assert visits["source_session"].tolist() == ["ses-bl", "ses-m06"] * 2
    assert not visits["has_gt"].any()
    for source in ("classical", "unet"):
        for sub in ("001", "002"):
            for ses in ("w000", "w024"):
                assert (r / f"predict/{source}/trial-nogt/sub-{sub}/ses-{ses}/"
                             f"sub-{sub}_ses-{ses}_space-MNI1x1x3_desc-lesion_mask.nii.gz").is_file()
    assert not (r / "train").exists()  # inference only: nothing was trained
    # the folder's models bring their thresholds (fold-<k>/threshold.json beside model.keras)
    assert "held-out visits, mean of folds" in (r / "logs/infer/trial-nogt_batch-1.log").read_text()
    long = pd.read_csv(r / "stats/trial-nogt/tlv_long.tsv", sep="\t")
    assert long["source"].unique().tolist() == ["classical", "unet"] and len(long) == 8
    assert (long.loc[long["source"] == "classical", "tlv_ml"] > 0).all()
    # Known answer: these are the tiny trial's images under other names and formats, predicted
    # by the same fold models; each visit's lesion volume is the tiny run's, visit by visit
    # (a session mapped to the wrong week, or the wrong image read, would change them).
    key = ["source", "participant_id", "week"]
    tiny = pd.read_csv(tiny_run / "results/stats/trial-tiny/tlv_long.tsv", sep="\t")
    tiny = tiny[tiny["source"].isin(["classical", "unet"])].sort_values(key).reset_index(drop=True)
    mine = long.sort_values(key).reset_index(drop=True)
    assert mine[key].equals(tiny[key])
    assert mine["tlv_ml"].to_numpy() == pytest.approx(tiny["tlv_ml"].to_numpy(), rel=1e-9), (mine, tiny)
    for table in ("change_summary.tsv", "ancova.tsv", "cox.tsv", "table4.tsv", "km_tests.tsv"):
        assert (r / "stats/trial-nogt" / table).is_file(), table
    assert not (r / "metrics/classical/trial-nogt/table2.tsv").exists()
    assert not (r / "metrics/unet/trial-nogt/table2.tsv").exists()
    assert not list(r.glob("preproc/**/*lesionGT*"))


# The per-visit and per-subject jobs that make masks, models or inputs: a reader's correction
# must schedule none of them (docs/DESIGN.md §14).
UPSTREAM_RULES = {"synth_tiny", "synth_tinytrain", "validate_bids", "validation_passed", "visit_files", "n4_coregister",
                  "skull_strip", "register_mni", "register_baseline", "resample", "resample_with_gt", "segment_classical",
                  "fold_split", "patch_store", "patch_index", "train", "calibrate", "review_visit", "review_queue",
                  "review_bundles", "review_figure"}


def test_a_simulated_reader_correcting_the_top_of_the_queue(tiny_run, tmp_path):
    """Issue 26's check, on a copy of the tiny run: a user adds the `reviewed` source; a reader
    then replaces the mask of the queue's first k visits by the GT, saved where and as
    docs/DESIGN.md §14 says (derivatives/lesions-reviewed/, rater sidecar). A dry run schedules
    those visits' per-visit jobs and the trial-level ones only; after the run the `reviewed`
    source's Table 2 Dice beats the `unet`'s and endpoint_changes.tsv shows what moved."""
    import json
    import re
    import shutil

    import yaml

    from tests.test_workflow import dry_run_jobs

    work = Path(shutil.copytree(tiny_run, tmp_path / "work", symlinks=True))  # relative paths: the copy runs alone
    r = work / "results"
    # the user enables the reviewed source (sources: [..., unet, reviewed]); with no correction yet it is the U-Net
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["sources"] = ["classical", "unet", "reviewed"]
    res = snakemake(work, "--cores", "2", config=config, timeout=1800)
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-5000:]

    def table2(source: str, metric: str = "DC") -> float:
        t = pd.read_csv(r / "metrics/trial-tiny/table2.tsv", sep="\t")
        return float(t.loc[(t["source"] == source) & (t["metric"] == metric), "mean"].iloc[0])

    assert table2("reviewed") == pytest.approx(table2("unet"))
    # the reader works down the queue: the GT mask replaces the U-Net's for the first k visits
    k = 2
    queue = pd.read_csv(r / "review/trial-tiny/queue.tsv", sep="\t", dtype=str).sort_values(
        "rank", key=lambda s: s.astype(int))
    top = list(zip(queue["participant_id"], queue["session"]))[:k]
    bids = work / "results/synth/trial-tiny/bids"
    for sub, ses in top:
        flair = bids / sub / ses / "anat" / f"{sub}_{ses}_FLAIR.nii.gz"
        saved = bids / "derivatives/lesions-reviewed" / flair.relative_to(bids).parent / flair.name.replace(
            "_FLAIR.nii.gz", "_space-FLAIR_desc-lesion_mask.nii.gz")
        saved.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bids / "derivatives/lesions" / sub / ses / "anat" / f"{sub}_{ses}_desc-lesion_mask.nii.gz",
                        saved)
        saved.with_name(saved.name.replace(".nii.gz", ".json")).write_text(json.dumps({"Rater": "simulated reader"}))

    # (a) only those visits' per-visit jobs, and the trial-level ones
    res = snakemake(work, "-n")
    assert res.returncode == 0, res.stdout + res.stderr
    jobs = dry_run_jobs(res.stdout)
    per_visit = [j for j in jobs if "sub=" in j["wildcards"] and "ses=" in j["wildcards"]]
    visits = {(f"sub-{m['sub']}", f"ses-{m['ses']}")
              for m in (re.search(r"sub=(?P<sub>\w+), ses=(?P<ses>\w+)", j["wildcards"]) for j in per_visit)}
    assert visits == set(top), (visits, top)
    assert sorted(j["rule"] for j in per_visit) == ["apply_review"] * k + ["metrics_visit"] * k, per_visit
    rules = {j["rule"] for j in jobs}
    assert not rules & UPSTREAM_RULES and not any(x.startswith("infer_") for x in rules), rules
    assert {"review_changes", "tlv_long", "metrics_dataset"} <= rules, rules

    # (b) after the run, the reviewed masks agree better with GT than the U-Net's
    res = snakemake(work, "--cores", "2", timeout=1800)
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-5000:]
    assert table2("reviewed") > table2("unet") + 0.1, (table2("reviewed"), table2("unet"))
    corrections = pd.read_csv(r / "review/trial-tiny/corrections.tsv", sep="\t", dtype=str, keep_default_na=False)
    applied = corrections[corrections["status"] == "applied"]
    assert set(zip(applied["participant_id"], applied["session"])) == set(top)
    assert (applied["rater"] == "simulated reader").all() and (corrections["status"] != "applied").sum() == 4 - k
    for sub, ses in queue[["participant_id", "session"]].itertuples(index=False):
        dc = {s: pd.read_csv(r / f"metrics/{s}/trial-tiny/visits/{sub}_{ses}_visit.tsv", sep="\t")["dc"].iloc[0]
              for s in ("unet", "reviewed")}
        # the reader drew the GT; the U-Net's MNI voxels that the native edits do not reach (the
        # edges of its native nearest-neighbour mask) stay, so the Dice is high, not 1
        assert (dc["reviewed"] > 0.7) if (sub, ses) in top else (dc["reviewed"] == dc["unet"]), (sub, ses, dc)

    # (c) the report's endpoint_changes.tsv shows the endpoints that moved
    changes = pd.read_csv(r / "review/trial-tiny/endpoint_changes.tsv", sep="\t", na_values="n/a")
    tlv = changes[(changes["table"] == "tlv_long") & (changes["quantity"] == "tlv_ml")]
    assert {tuple(re.search(r"participant_id=(sub-\w+).*session=(ses-\w+)", key).groups()) for key in tlv["key"]} \
        == set(top), tlv
    assert (tlv["difference"] != 0).all()
    dc = changes[(changes["table"] == "table2") & changes["key"].str.contains("metric=DC")]
    assert len(dc) and (dc.loc[dc["quantity"] == "mean", "difference"] > 0.1).all(), dc
    moved = changes[(changes["table"] == "change_summary") & (changes["difference"].abs() > 0)]
    assert len(moved), changes[changes["table"] == "change_summary"]
    assert "Nothing to be done" in snakemake(work, "-n").stdout


def test_reviewed_masks_as_training_gt_are_carried_into_mni_or_stop_with_one_line(tiny_run, tmp_path):
    """trials.<t>.training_masks: reviewed, run for real on a copy of the tiny run: a reader's mask
    equal to the GT becomes, in MNI, exactly the GT's MNI mask (same transform, same
    interpolation); a non-binary one stops its job with the `reviewed` source's line naming it."""
    import json
    import re
    import shutil

    import nibabel as nib
    import numpy as np
    import yaml

    work = Path(shutil.copytree(tiny_run, tmp_path / "work", symlinks=True))
    bids = work / "results/synth/trial-tinytrain/bids"
    saved = {}
    for sub in ("001", "002"):
        anat = f"sub-{sub}/ses-w000/anat/sub-{sub}_ses-w000"
        saved[sub] = bids / f"derivatives/lesions-reviewed/{anat}_space-FLAIR_desc-lesion_mask.nii.gz"
        saved[sub].parent.mkdir(parents=True)
        gt = nib.load(bids / f"derivatives/lesions/{anat}_desc-lesion_mask.nii.gz")
        data = np.asarray(gt.dataobj) * (1 if sub == "001" else 2)  # sub-002's reader saved label 2
        nib.save(nib.Nifti1Image(data.astype(np.uint8), gt.affine, gt.header), saved[sub])
        saved[sub].with_name(saved[sub].name.replace(".nii.gz", ".json")).write_text(json.dumps({"Rater": "AB"}))
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["trials"]["tinytrain"]["training_masks"] = "reviewed"
    pre = ("results/preproc/trial-tinytrain/sub-{sub}/ses-w000/"
           "sub-{sub}_ses-w000_space-MNI1x1x3_desc-lesion{kind}_mask.nii.gz")
    good = pre.format(sub="001", kind="Reviewed")
    res = snakemake(work, "--cores", "1", good, config=config)  # (a target after --configfile would be read as one)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    mni = nib.load(work / good)
    gt_mni = nib.load(work / pre.format(sub="001", kind="GT"))
    assert np.asarray(mni.dataobj).any() and np.array_equal(np.asarray(mni.dataobj), np.asarray(gt_mni.dataobj))
    res = snakemake(work, "--cores", "1", pre.format(sub="002", kind="Reviewed"))
    assert res.returncode != 0
    line = (f"{saved['002'].relative_to(work)}: ") + r"\d+ voxels are neither 0 nor 1; not usable as training GT of "
    assert re.search(line + r"trial tinytrain \(fix it, or remove it to leave the visit out of training\)\n",
                     res.stdout + res.stderr), res.stdout[-3000:] + res.stderr[-3000:]


def test_validation_document_from_the_tiny_run(tiny_run, tmp_path):
    """Issue 25's document (rules/validate.smk) on a copy of the tiny run: asking for
    docs/VALIDATION.md runs the validation rules only; the document names the commit and the
    config, has every target's line and every table, and the document rule run again from the
    same tables writes the same text."""
    import re
    import shutil

    from t2lesion.validation.document import FILES, Targets, evaluate_targets, read_tables
    from t2lesion.validation.run import git_commit
    from tests.conftest import REPO

    work = Path(shutil.copytree(tiny_run, tmp_path / "work", symlinks=True))
    res = snakemake(work, "--cores", "1", "--", "docs/VALIDATION.md", timeout=900)
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-5000:]
    ran = set(re.findall(r"^(?:local)?rule (\w+):", res.stdout + res.stderr, flags=re.M))
    assert ran == {"validation_study_agreement", "validation_study_uncertainty", "validation_study_detection",
                   "validation_study_truth", "validation_study_new_lesion_truth", "validation_study_change_response",
                   "validation_study_document"}, ran
    doc = work / "docs/VALIDATION.md"
    text = doc.read_text()
    assert f"* commit: `{git_commit(REPO)}`" in text and "* config: `config.yaml`" in text
    folder = work / "docs/validation"
    for key in ("table2", "tlv_agreement", "uncertainty", "detection", "ancova", "cox", "nb", "truth",
                "new_lesion_sizes", "new_lesion_floors", "enlarge_floors", "change_response"):
        assert (folder / FILES[key]).is_file(), key
    assert "Not available" not in text
    rows = evaluate_targets(read_tables(folder), Targets())
    assert len(rows) == 6  # DC, DC over classical, TLV bias, ANCOVA weeks 24 and 48, new-lesion F1
    for r in rows:
        assert f"| {r['target']} |" in text, r["target"]
    assert any(r["met"] is not None for r in rows)  # the tiny trial's tables give at least some verdicts
    assert sorted(p.name for p in folder.glob("*.png")) and "![stats_fig3_tlv_change]" in text
    unc = pd.read_csv(work / "results/validation_study/trial-tiny/uncertainty_visits.tsv", sep="\t")
    assert len(unc) == 4 and unc["auroc"].dropna().between(0, 1).all() and unc["auroc"].notna().any()
    det = pd.read_csv(folder / FILES["detection"], sep="\t")
    assert set(det["source"]) == {"classical", "unet"}
    truth = pd.read_csv(folder / FILES["truth"], sep="\t")
    # the generator's defaults: control +10 % TLV per 96 weeks, treated 0 -> -2.5 points at week 24
    week24 = truth[truth["quantity"].str.startswith("ANCOVA") & (truth["detail"] == "week 24")]
    assert len(week24) and (week24["truth"] == -2.5).all()
    assert set(truth["term"]) >= {"log_tlv", "arm_OCR"}
    # the new-lesion truth check: every GT follow-up, the truth's new lesions counted at each floor
    les = pd.read_csv(work / "results/validation_study/trial-tiny/new_lesion_truth_lesions.tsv", sep="\t")
    floors = pd.read_csv(folder / FILES["new_lesion_floors"], sep="\t")
    assert floors["n_followups"].iloc[0] >= les.groupby(["participant_id", "session"]).ngroups > 0
    first = floors.iloc[0]
    assert first["n_truth"] == ((les["truth_class"] == "new") & (les["nominal_voxels"] >= first["floor"])).sum()
    assert "## Size floor for counting a new lesion" in text
    # the enlarging lesions' gain floors: the truth's enlarging lesions as the lesion table classes them
    enl = pd.read_csv(folder / FILES["enlarge_floors"], sep="\t")
    assert enl["n_followups"].iloc[0] == first["n_followups"] and (enl["n_masks"].diff().dropna() <= 0).all()
    assert enl["n_truth"].iloc[0] == (les["truth_class"] == "enlarging").sum()
    assert "## Gain floor for counting an enlarging lesion" in text
    # lesion-volume change: GT follows the truth's change, every source gets its rows
    cr = pd.read_csv(folder / FILES["change_response"], sep="\t")
    assert set(cr["source"]) == {"classical", "unet"} and set(cr["class"]) >= {"all"}
    assert (cr["n_lesions"] > 0).all() and "## Does each source follow the truth's lesion-volume change?" in text
    # from the folder alone (make validation-doc), elsewhere: the same text but the figures' links
    import subprocess
    import sys

    other = tmp_path / "elsewhere/VALIDATION.md"
    disc = ["--discussion", str(work / "docs/validation-discussion.md")]  # the run's (none), not the repository's
    out = subprocess.run([sys.executable, "-m", "t2lesion.validation.document", str(folder), str(other), *disc],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert other.read_text() == text.replace("](validation/", "](../work/docs/validation/")
    # the document rule again, from the same tables: the same text
    doc.unlink()
    res = snakemake(work, "--cores", "1", "--forcerun", "validation_study_document", "--", "docs/VALIDATION.md")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert doc.read_text() == text
