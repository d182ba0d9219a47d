"""The workflow's plan (t2lesion.plan): targets, visit and source selection, paths, without Snakemake."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, make_bids
from t2lesion.bids import Visit
from t2lesion.config import check_config
from t2lesion.plan import NOTHING, Plan, mask_path, synthetic_root, wildcard_alternatives

DEMO = yaml.safe_load((REPO / "config.yaml").read_text())


def plan_of(config: dict) -> Plan:
    return Plan.from_config(check_config(copy.deepcopy(config)))[0]


def real_trial(bids: Path, **extra) -> dict:
    return {"trials": {"real": {"role": "test", "bids": str(bids), "control_arm": "PLA", "treatment_arms": ["OCR"]}},
            **extra}


@pytest.fixture(scope="module")
def demo() -> Plan:
    return plan_of(DEMO)


def test_demo_targets_every_visit_source_and_the_summary(demo):
    targets = demo.all_targets()
    visits = demo.trials["synthdemo"].visits
    assert len(visits) == 16
    qc = [t for t in targets if t.endswith("_qc.png")]
    assert len(qc) == len(visits) and all("trial-synthdemo" in t for t in qc)
    for source in DEMO["sources"]:
        assert f"results/metrics/{source}/trial-synthdemo/table2.tsv" in targets
    assert "results/metrics/trial-synthdemo/table2.tsv" in targets  # side by side: two sources
    assert [f"results/train/fold-{k}/model.keras" in targets for k in (1, 2, 3)] == [True] * 3
    assert targets[-1] == "results/report/summary.md"
    assert not any("synthtrain" in t for t in targets if t.startswith("results/stats"))


def test_the_training_trials_jobs_come_first(demo):
    """Snakemake priority: the training trial's preprocessing and patches before the test
    trial's, so that the folds, the longest chain, start as early as they can."""
    assert demo.priority("synthtrain") == Plan.TRAINING_PATH_PRIORITY > 0
    assert demo.priority("synthdemo") == 0
    # synthesis (2 threads) of every trial before any fold, or it waits for the last one
    assert Plan.SYNTHESIS_PRIORITY > Plan.TRAINING_PATH_PRIORITY


def test_volume_sources_put_gt_first_and_select_its_visits(demo):
    assert demo.volume_sources("synthdemo") == ["gt", *DEMO["sources"]]
    volumes = demo.lesion_volumes("synthdemo")
    assert len(volumes["files"]) == len(volumes["sources"]) == 16 * 3
    assert volumes["files"][0] == "results/metrics/gt/trial-synthdemo/volumes/sub-001_ses-w000_volume.tsv"


def test_mask_paths_of_gt_and_predictions():
    assert mask_path("t", "001", "w024", "gt") == (
        "results/preproc/trial-t/sub-001/ses-w024/sub-001_ses-w024_space-MNI1x1x3_desc-lesionGT_mask.nii.gz")
    assert mask_path("t", "001", "w024", "unet") == (
        "results/predict/unet/trial-t/sub-001/ses-w024/sub-001_ses-w024_space-MNI1x1x3_desc-lesion_mask.nii.gz")


def test_registration_chain_of_baseline_and_follow_up(demo):
    base = demo.to_mni_chain("synthdemo", "001", "w000")
    follow = demo.to_mni_chain("synthdemo", "001", "w048")
    assert list(base) == ["baseline_to_mni"] and base["baseline_to_mni"] == follow["baseline_to_mni"]
    assert "ses-w000" in base["baseline_to_mni"]
    assert follow["to_baseline"].endswith("sub-001_ses-w048_from-T1w_to-baseline_xfm.tfm")


def test_a_visit_without_gt_gets_a_gt_path_no_rule_gives(tmp_path):
    bids = make_bids(tmp_path / "bids")
    gt = bids / "derivatives/lesions/sub-001/ses-w024/anat/sub-001_ses-w024_desc-lesion_mask.nii.gz"
    gt.unlink()
    plan = plan_of(real_trial(bids))
    assert plan.to_mni_chain_and_gt("real", "001", "w000")["gt"].endswith("sub-001_ses-w000_desc-lesion_mask.nii.gz")
    assert plan.to_mni_chain_and_gt("real", "001", "w024")["gt"].startswith("<no GT lesion mask")
    # both resampling rules apply to this trial: it has visits with and without GT
    assert plan.gt_trials == plan.no_gt_trials == "real"


def test_trial_without_gt_has_no_table2_fig2_or_gt_source(tmp_path):
    plan = plan_of(real_trial(make_bids(tmp_path / "bids", gt=False)))
    assert plan.volume_sources("real") == plan.sources and "gt" not in plan.sources
    assert plan.table2_of("real") is None and plan.gt_trials == NOTHING
    targets = plan.all_targets()
    assert not any("table2" in t or "fig2" in t for t in targets)
    figures = plan.summary_trials()["real"]["figures"]
    assert figures["Fig. 2: GT and predicted lesions over FLAIR"] == []
    assert figures["Fig. 3d-g: TLV change"] == ["results/stats/trial-real/fig3_tlv_change.png"]
    assert "table2" not in plan.summary_trials()["real"]


def test_infer_batches_split_visits_and_only_when_unet_is_a_source(tmp_path, demo):
    cfg = copy.deepcopy(DEMO)
    cfg["inference"]["visits_per_job"] = 6
    batches = plan_of(cfg).infer_batches()
    assert [b.name for b in batches] == ["infer_synthdemo_1", "infer_synthdemo_2", "infer_synthdemo_3"]
    assert [len(b.visits) for b in batches] == [6, 6, 4]
    first = batches[0]
    assert len(first.images) == 6 * 5 and len(first.masks) == 6 * 6 and len(first.volumes) == 6
    assert first.visits[0]["out_mask"] == mask_path("synthdemo", "001", "w000", "unet")
    cfg["sources"] = [s for s in cfg["sources"] if s != "unet"]
    assert plan_of(cfg).infer_batches() == []


def test_uncertainty_maps_left_out_are_no_outputs_and_mi_stays(tmp_path, demo):
    from t2lesion.plan.paths import OPTIONAL_UNET_MAPS
    from t2lesion.unet.infer import OPTIONAL_MAPS, VISIT_KEYS

    assert OPTIONAL_UNET_MAPS == OPTIONAL_MAPS  # the plan's copy (no unet import in the DAG)
    assert {f"out_{k}" for k in OPTIONAL_MAPS} <= set(VISIT_KEYS["optional"])
    cfg = copy.deepcopy(DEMO)
    every = plan_of(cfg).infer_batches()[0]
    cfg["inference"]["uncertainty_maps"] = ["entropy"]
    some = plan_of(cfg).infer_batches()[0]
    cfg["inference"]["uncertainty_maps"] = []
    none = plan_of(cfg).infer_batches()[0]
    n = len(every.visits)
    assert every.visits == some.visits == none.visits  # the rule's params: no rerun
    assert len(every.masks) == 6 * n and len(some.masks) == 5 * n and len(none.masks) == 4 * n
    assert set(none.masks) | {v["out_sd"] for v in every.visits} | {v["out_entropy"] for v in every.visits} \
        == set(every.masks)
    assert not any("desc-sd_uncertainty" in m for m in some.masks) and any("entropy" in m for m in some.masks)
    assert all(any("desc-mi_uncertainty" in m for m in b.masks) for b in (some, none))


def test_tracking_by_subject_in_week_order(tmp_path):
    bids = make_bids(tmp_path / "bids", weeks=(48, 0, 24))
    plan = plan_of(real_trial(bids))
    source = plan.sources[0]
    assert [v.ses for v in plan.tracked_visits("real", source, "001")] == ["w000", "w024", "w048"]
    assert plan.tracked_sessions("real", "gt", "002") == ["ses-w000", "ses-w024", "ses-w048"]
    out = plan.tracking_outputs("real", "visits")
    assert out["sources"] == ["gt", "gt", source, source]
    assert out["files"][0] == "results/lesions/gt/trial-real/sub-001/sub-001_visits.tsv"
    assert plan.lesion_targets("real") == ["results/stats/trial-real/nb_rate_ratio.tsv",
                                           "results/stats/trial-real/new_lesions_agreement.tsv"]


def test_single_visit_trial_has_no_new_lesion_endpoint(tmp_path):
    plan = plan_of(real_trial(make_bids(tmp_path / "bids", weeks=(0,))))
    assert not plan.has_new_lesions("real") and plan.lesion_targets("real") == []
    assert "nb" not in plan.summary_trials()["real"]
    assert plan.summary_trials()["real"]["notes"] == [
        "New and enlarging T2 lesions: not analysed, no subject has two visits"]


def test_a_trial_that_failed_validation_is_named_in_the_summary(tmp_path):
    cfg = real_trial(make_bids(tmp_path / "bids", weeks=(0, 24)))
    broken = make_bids(tmp_path / "broken", weeks=(0, 24))
    (broken / "participants.tsv").unlink()
    cfg["trials"]["broken"] = {**cfg["trials"]["real"], "bids": str(broken)}
    plan = plan_of(cfg)
    summary = plan.summary_trials()
    assert summary["broken"] == {"problems": [f"{broken / 'participants.tsv'}: file not found"]}
    inputs = plan.summary_inputs()
    assert inputs and all("broken" not in f and "not found" not in f for f in inputs)
    assert "results/report/summary.md" in plan.all_targets()
    del cfg["trials"]["real"]  # nothing to summarise: no summary
    assert "results/report/summary.md" not in plan_of(cfg).all_targets()


def test_summary_waits_for_every_file_it_shows(demo):
    inputs = set(demo.summary_inputs())
    summary = demo.summary_trials()["synthdemo"]
    for heading, paths in summary["figures"].items():
        assert set(paths) <= inputs, heading
    assert {summary[k] for k in ("table1", "table2", "ancova", "table4", "km", "nb")} <= inputs
    assert {f"results/train/fold-{k}/history.tsv" for k in (1, 2, 3)} <= inputs
    # every figure and table the summary names is a target or made on the way to one
    assert len(summary["figures"]["Preprocessing QC (one per visit)"]) == 16


def test_own_follow_up_masks_change_the_native_mask(demo):
    assert demo.native_mask.startswith("results/preproc/trial-{trial}/sub-{sub}/ses-w000/")
    assert demo.followup_mask == {} and not demo.own_brain_mask("w024") and demo.own_brain_mask("w000")
    cfg = copy.deepcopy(DEMO)
    cfg["preprocess"]["followup_brain_mask"] = "own"
    own = plan_of(cfg)
    assert "ses-{ses}" in own.native_mask and own.followup_mask == {"mask": own.native_mask}
    assert own.own_brain_mask("w024")


def test_helpers():
    assert wildcard_alternatives(["b", "a"]) == "a|b"
    assert wildcard_alternatives([]) == NOTHING
    outputs = ["x/bids/participants.tsv", "x/bids/phenotype/outcomes.tsv", "x/truth/params.json"]
    assert synthetic_root(outputs) == "x"


def test_synthetic_trial_outputs_every_image_and_gt(demo):
    files = demo.synth_outputs("synthdemo")
    visits = demo.trials["synthdemo"].visits
    assert len(files) == 6 + 4 * len(visits)
    assert Visit("001", "w048") in visits
    assert any(f.endswith("sub-001_ses-w048_FLAIR.nii.gz") for f in files)


def test_each_fold_trained_here_chooses_its_threshold_and_inference_waits_for_them(demo):
    thresholds = [f"results/train/fold-{k}/threshold.json" for k in (1, 2, 3)]
    assert demo.unet_thresholds == thresholds
    targets = demo.all_targets()
    assert set(thresholds) | {f"results/train/fold-{k}/threshold_curve.png" for k in (1, 2, 3)} <= set(targets)
    # every GT visit of the training trial (each fold's job keeps its own participants')
    visits = demo.calibration_visits()
    assert len(visits) == len(demo.trials["synthtrain"].gt_visits) == 12
    assert visits[0] == {
        "trial": "synthtrain", "participant_id": "sub-001", "id": "sub-001_ses-w000",
        **{k: f"results/preproc/trial-synthtrain/sub-001/ses-w000/sub-001_ses-w000_space-MNI1x1x3_desc-{d}.nii.gz"
           for k, d in (("T2w", "preproc_T2w"), ("FLAIR", "preproc_FLAIR"), ("T1w", "preproc_T1w"),
                        ("brain_mask", "brain_mask"), ("gt", "lesionGT_mask"))}}
    assert len(demo.calibration_inputs()) == 12 * 5
    assert demo.fold_split_tables() == ["results/train/trial-synthtrain/folds.tsv"]
    # the summary states the threshold (and waits for the fold thresholds and their curves)
    assert demo.unet_threshold() == {"setting": "auto", "files": thresholds, "n_models": 3, "folder": None}
    assert set(thresholds) <= set(demo.summary_inputs())
    assert demo.summary_thresholds() == {str(k): f for k, f in zip((1, 2, 3), thresholds)}
    assert demo.summary_training_figures()["Threshold curves (Dice on each fold's held-out visits)"] == [
        f"results/train/fold-{k}/threshold_curve.png" for k in (1, 2, 3)]


def test_a_fixed_threshold_needs_no_fold_threshold_for_inference():
    cfg = copy.deepcopy(DEMO)
    cfg["inference"]["threshold"] = 0.5
    plan = plan_of(cfg)
    assert plan.unet_thresholds == [] and plan.unet_threshold()["setting"] == 0.5
    # the folds still choose theirs: the curves are in the report
    assert "results/train/fold-1/threshold.json" in plan.all_targets()


def test_models_from_elsewhere_bring_their_thresholds_when_they_have_them(tmp_path):
    models = tmp_path / "models"
    for k in (1, 2):
        (models / f"fold-{k}").mkdir(parents=True)
        (models / f"fold-{k}" / "model.keras").write_bytes(b"")
    cfg = real_trial(make_bids(tmp_path / "bids"), sources=["classical", "unet"], inference={"models": str(models)})
    plan = plan_of(cfg)
    assert plan.unet_thresholds == [] and plan.calibration_visits() == []
    assert not any("threshold" in t for t in plan.all_targets())
    assert plan.unet_threshold() == {"setting": "auto", "files": [], "n_models": 2, "folder": str(models)}
    (models / "fold-1" / "threshold.json").write_text("{}")
    (models / "fold-2" / "threshold.json").write_text("{}")
    assert plan_of(cfg).unet_thresholds == [str(models / f"fold-{k}" / "threshold.json") for k in (1, 2)]
    cfg["inference"]["threshold"] = 0.6
    assert plan_of(cfg).unet_thresholds == []


# ------------------------------------------------------------------ review queue (docs/DESIGN.md §14)


def unet_trial(tmp_path, weeks=(0, 24, 48)) -> dict:
    models = tmp_path / "models"
    for k in (1, 2):
        (models / f"fold-{k}").mkdir(parents=True)
        (models / f"fold-{k}" / "model.keras").write_bytes(b"")
    return real_trial(make_bids(tmp_path / "bids", weeks=weeks), sources=["classical", "unet"],
                      inference={"models": str(models)})


def test_review_queue_of_the_demo(demo):
    assert demo.review_sources == ("unet", "classical")
    targets = demo.all_targets()
    review = "results/review/trial-synthdemo"
    for t in (f"{review}/queue.tsv", f"{review}/review_overlays.png"):
        assert t in targets
    assert not any("trial-synthtrain" in t for t in targets if t.startswith("results/review"))
    assert len(demo.review_visit_tables("synthdemo")) == len(demo.trials["synthdemo"].visits) == 16


def test_review_queue_of_unet_beside_classical(tmp_path):
    """The U-Net's masks ranked against the classical ones; middle visits get their neighbours
    for the flicker, baselines their own skull-strip mask and the MNI registration log."""
    plan = plan_of(unet_trial(tmp_path))
    assert plan.review_sources == ("unet", "classical")
    first, middle, last = (plan.review_visit_inputs("real", "001", w) for w in ("w000", "w024", "w048"))
    assert first["mask"] == mask_path("real", "001", "w000", "unet")
    assert first["other"] == mask_path("real", "001", "w000", "classical")
    assert first["mi"].endswith("sub-001_ses-w000_space-MNI1x1x3_desc-mi_uncertainty.nii.gz")
    assert "prev" not in first and "next" not in last and "native_brain" not in middle
    assert first["native_brain"].endswith("sub-001_ses-w000_space-T1w_desc-brain_mask.nii.gz")
    assert middle["prev"] == mask_path("real", "001", "w000", "unet")
    assert middle["next"] == mask_path("real", "001", "w048", "unet")
    p0, p1 = (plan.review_visit_params("real", "001", w) for w in ("w000", "w024"))
    assert p0["reg_log"] == "results/logs/register_mni/trial-real_sub-001_ses-w000.log" and p0["reg_kind"] == "mni"
    assert p1["reg_log"].startswith("results/logs/register_baseline/") and p1["reg_kind"] == "baseline"
    assert (p1["participant_id"], p1["session"], p1["week"]) == ("sub-001", "ses-w024", 24)
    fig = plan.review_figure_inputs("real")
    assert len(fig["flair"]) == len(fig["first"]) == len(fig["second"]) == len(plan.review_ids("real")) == 6
    assert "classical" in fig["first"][0] and "unet" in fig["second"][0]
    assert "results/review/trial-real/bundles" in plan.review_targets("real")
    bundle = plan.review_bundle_inputs("real")
    assert all(len(bundle[k]) == 6 for k in ("flair", "t1w", "t2w", "mask", "prob", "mi", "xfm", "flair_to_t1w",
                                                 "t2w_to_t1w"))
    assert bundle["flair"][0].endswith("sub-001_ses-w000_FLAIR.nii.gz") and "/bids/" in bundle["flair"][0]
    assert bundle["mask"][0].endswith("sub-001_ses-w000_space-FLAIR_desc-lesion_mask.nii.gz")
    assert bundle["xfm"][0].endswith("sub-001_ses-w000_from-FLAIR_to-MNI1x1x3_xfm.tfm")
    assert bundle["flair_to_t1w"][1].endswith("sub-001_ses-w024_from-FLAIR_to-T1w_xfm.tfm")
    assert bundle["t2w_to_t1w"][1].endswith("sub-001_ses-w024_from-T2w_to-T1w_xfm.tfm")


def test_review_queue_without_the_unet_ranks_the_classical_masks(tmp_path):
    cfg = real_trial(make_bids(tmp_path / "bids", weeks=(0, 24, 48)), sources=["classical"])
    plan = plan_of(cfg)
    assert plan.review_sources == ("classical", None)
    targets = plan.review_targets("real")
    assert targets == ["results/review/trial-real/queue.tsv", "results/review/trial-real/review_overlays.png"]
    inputs = plan.review_visit_inputs("real", "001", "w024")
    assert set(inputs) == {"mask", "brain", "prev", "next"} and "classical" in inputs["mask"]
    fig = plan.review_figure_inputs("real")
    assert fig["first"] == fig["second"]


def test_reviewed_source_takes_the_corrections_that_exist(tmp_path):
    """sources [..., unet, reviewed]: a visit's apply_review job reads its correction (and sidecar)
    only where a reader saved one; a mask that names no visit is one warning at start."""
    cfg = unet_trial(tmp_path)
    cfg["sources"] = ["classical", "unet", "reviewed"]
    bids = Path(cfg["trials"]["real"]["bids"])
    reviewed = bids / "derivatives" / "lesions-reviewed"
    corr = reviewed / "sub-001/ses-w024/anat/sub-001_ses-w024_space-FLAIR_desc-lesion_mask.nii.gz"
    stray = reviewed / "sub-007/ses-w024/anat/sub-007_ses-w024_space-FLAIR_desc-lesion_mask.nii.gz"
    for p in (corr, stray, corr.with_name(corr.name.replace(".nii.gz", ".json"))):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    plan, warnings = Plan.from_config(check_config(copy.deepcopy(cfg)))
    assert [w for w in warnings if "lesions-reviewed" in w] == [
        w for w in warnings if w.startswith(f"{stray}: a reviewed mask that names no visit of trial real")]
    assert len([w for w in warnings if "lesions-reviewed" in w]) == 1
    with_corr = plan.apply_review_inputs("real", "001", "w024")
    assert with_corr["correction"] == str(corr) and with_corr["sidecar"].endswith(".json")
    without = plan.apply_review_inputs("real", "001", "w000")
    assert set(without) == {"unet_mni", "unet_native", "flair", "xfm"}
    assert without["unet_mni"] == mask_path("real", "001", "w000", "unet")
    assert "results/review/trial-real/endpoint_changes.tsv" in plan.all_targets()
    volumes = plan.lesion_volumes("real")
    assert volumes["sources"].count("reviewed") == 6
    changes = plan.review_changes_inputs("real")
    assert len(changes["status"]) == 6 and changes["ancova_arm_effect"].endswith("ancova_arm_effect.tsv")
    assert "status" not in plan.review_changes_tables("real") and "tlv_long" in plan.review_changes_tables("real")
    # the same corrections without 'reviewed' among the sources: said, since nothing reads them
    cfg["sources"] = ["classical", "unet"]
    _, warnings = Plan.from_config(check_config(copy.deepcopy(cfg)))
    assert ("trial real: 1 reader correction(s) under derivatives/lesions-reviewed/, unused: add 'reviewed' to "
            "sources to apply them") in warnings


def test_reviewed_needs_the_unet(tmp_path):
    from t2lesion.errors import InputError

    cfg = real_trial(make_bids(tmp_path / "bids"), sources=["classical", "reviewed"])
    with pytest.raises(InputError, match="sources: 'reviewed' .* needs 'unet' in sources too"):
        check_config(cfg)


def train_trial(tmp_path, **extra) -> dict:
    """A real training trial (2 subjects x 3 visits, GT at every visit) and its config."""
    bids = make_bids(tmp_path / "bids", weeks=(0, 24, 48))
    return {"trials": {"tr": {"role": "train", "bids": str(bids), "control_arm": "PLA", "treatment_arms": ["OCR"],
                              **extra}}, "training": {"folds": 2}}


def reviewed_mask(bids: Path, sub: str, ses: str, rater: str | None = "AB") -> Path:
    """Where a reader saves a visit's mask (docs/DESIGN.md §14), an empty file (the plan only looks)."""
    name = f"sub-{sub}_ses-{ses}_space-FLAIR_desc-lesion_mask.nii.gz"
    p = bids / "derivatives/lesions-reviewed" / f"sub-{sub}/ses-{ses}/anat/{name}"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"")
    if rater:
        p.with_name(p.name.replace(".nii.gz", ".json")).write_text(f'{{"Rater": "{rater}"}}')
    return p


def test_training_masks_manual_is_the_default_and_trains_on_gt(tmp_path):
    cfg = train_trial(tmp_path)
    reviewed_mask(Path(cfg["trials"]["tr"]["bids"]), "001", "w000")  # ignored without the switch
    plan, warnings = Plan.from_config(check_config(copy.deepcopy(cfg)))
    assert plan.training_masks("tr") == "manual" and plan.reviewed_training_trials == NOTHING
    assert len(plan.patch_store_files("tr")) == 6
    assert {v["gt"] for v in plan.calibration_visits()} == {
        mask_path("tr", v.sub, v.ses, "gt") for v in plan.trials["tr"].visits}
    assert not [w for w in warnings if "training_masks" in w or "lesions-reviewed" in w]


def test_training_masks_reviewed_trains_on_the_visits_with_a_reviewed_mask(tmp_path):
    """training_masks: reviewed: the patch store and calibration of the visits with a reader's mask
    read it (carried into MNI); the others are left out, one warning naming them."""
    from t2lesion.plan import REVIEWED_TRAINING_MASK

    cfg = train_trial(tmp_path, training_masks="reviewed")
    bids = Path(cfg["trials"]["tr"]["bids"])
    corr = reviewed_mask(bids, "001", "w000")
    reviewed_mask(bids, "002", "w024", rater=None)
    plan, warnings = Plan.from_config(check_config(copy.deepcopy(cfg)))
    assert plan.training_visits("tr") == (Visit("001", "w000"), Visit("002", "w024"))
    assert plan.patch_store_files("tr") == ["results/train/trial-tr/store/sub-001_ses-w000.npy",
                                            "results/train/trial-tr/store/sub-002_ses-w024.npy"]
    assert [w for w in warnings if "training_masks" in w] == [
        "trial 'tr': training_masks: reviewed: 4 of 6 visits have no reviewed mask and are left out of training: "
        "sub-001_ses-w024, sub-001_ses-w048, sub-002_ses-w000, sub-002_ses-w048"]
    mni = REVIEWED_TRAINING_MASK.format(trial="tr", sub="001", ses="w000")
    assert mni == ("results/preproc/trial-tr/sub-001/ses-w000/"
                   "sub-001_ses-w000_space-MNI1x1x3_desc-lesionReviewed_mask.nii.gz")
    assert plan.training_mask("tr", "001", "w000") == mni
    assert [v["gt"] for v in plan.calibration_visits()] == [mni, plan.training_mask("tr", "002", "w024")]
    inputs = plan.reviewed_training_inputs("tr", "001", "w000")
    assert inputs["correction"] == str(corr) and inputs["sidecar"] == str(corr).replace(".nii.gz", ".json")
    assert inputs["flair"] == str(bids / "sub-001/ses-w000/anat/sub-001_ses-w000_FLAIR.nii.gz")
    assert inputs["xfm"].endswith("sub-001_ses-w000_from-FLAIR_to-MNI1x1x3_xfm.tfm")
    assert inputs["grid"].endswith("sub-001_ses-w000_space-MNI1x1x3_desc-brain_mask.nii.gz")
    assert "sidecar" not in plan.reviewed_training_inputs("tr", "002", "w024")
    assert plan.reviewed_training_trials == "tr"


def test_training_masks_reviewed_without_any_reviewed_mask_is_an_error_naming_the_trial(tmp_path):
    from t2lesion.errors import InputError

    cfg = train_trial(tmp_path, training_masks="reviewed")
    with pytest.raises(InputError, match=r"trial 'tr': training_masks: reviewed, but none of its 6 visits has a "
                                         r"reviewed mask under .*derivatives/lesions-reviewed"):
        Plan.from_config(check_config(copy.deepcopy(cfg)))


def test_training_masks_on_a_test_trial_is_ignored_with_a_warning(tmp_path):
    cfg = real_trial(make_bids(tmp_path / "bids"))
    cfg["trials"]["real"]["training_masks"] = "reviewed"
    _, warnings = Plan.from_config(check_config(cfg))
    assert "trial 'real': training_masks: reviewed applies to role: train trials only; ignored" in warnings
    bad = real_trial(make_bids(tmp_path / "bids2"))
    bad["trials"]["real"]["training_masks"] = "readers"
    from t2lesion.errors import InputError

    with pytest.raises(InputError, match="training_masks"):
        check_config(bad)
