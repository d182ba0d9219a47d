# Shared definitions: trials and visits from the config, path helpers and input
# functions. No rule logic lives here; everything computed is in t2lesion.config.
import functools
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from t2lesion.bids import Visit
from t2lesion.config import fold_models, trials_from_config, visit_inputs
from t2lesion.errors import InputError

# Jobs (scripts, conda envs, SLURM jobs) import the library from this checkout.
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        p for p in (workflow.basedir, os.environ.get("PYTHONPATH")) if p
    )
)

try:
    TRIALS, _warnings = trials_from_config(config)
except InputError as _exc:
    raise WorkflowError(str(_exc)) from None
for _w in _warnings:
    print(f"Warning: {_w}", file=sys.stderr)

SYNTHETIC = {name: t for name, t in TRIALS.items() if t.synthetic is not None}
TEST_TRIALS = [name for name, t in TRIALS.items() if t.role == "test"]
TRAIN_TRIALS = [name for name, t in TRIALS.items() if t.role == "train"]
MODEL_CFG = config["model"]
FOLDS = list(range(1, config["training"]["folds"] + 1))
try:
    # the U-Net's fold models: trained here (one job per fold) or a folder trained elsewhere
    UNET_MODELS = fold_models(config, TRAIN_TRIALS, FOLDS)
except InputError as _exc:
    raise WorkflowError(str(_exc)) from None
MODALITIES = ["T1w", "T2w", "FLAIR"]

# Every file name carries its entities; these prefixes keep rules short.
PRE = "results/preproc/trial-{trial}/sub-{sub}/ses-{ses}/sub-{sub}_ses-{ses}"
PRED = "results/predict/{source}/trial-{trial}/sub-{sub}/ses-{ses}/sub-{sub}_ses-{ses}"
PRED_BASELINE = PRED.replace("{source}", "baseline")
VOLUME = "results/metrics/{source}/trial-{trial}/volumes/sub-{sub}_ses-{ses}_volume.tsv"
STATS = "results/stats/trial-{trial}"
MNI = "space-MNI1x1x3"
# A visit's baseline, as a pattern (a plain string input costs the DAG less than a function).
PRE_BASELINE = PRE.replace("{ses}", "w000")
# What the per-visit jobs wait for: validation's outcome (rule validation_passed says why).
VALIDATION_PASSED = "results/validated/trial-{trial}_passed"
LOGS = "results/logs"
BENCH = "results/benchmarks"
# Follow-ups skull-stripped too (followup_brain_mask: own), or reusing the baseline's mask.
OWN_FOLLOWUP_MASKS = config["preprocess"]["followup_brain_mask"] == "own"
# The native brain mask a visit is resampled with, and a follow-up registered with: its
# own or its baseline's (the baseline's own at the baseline).
NATIVE_MASK = (
    PRE if OWN_FOLLOWUP_MASKS else PRE_BASELINE
) + "_space-T1w_desc-brain_mask.nii.gz"
# register_baseline matches brain to brain only when the follow-up has its own mask.
FOLLOWUP_MASK = {"mask": NATIVE_MASK} if OWN_FOLLOWUP_MASKS else {}


# Trials with a GT mask at some visit / with a visit without one: rule resample_with_gt
# applies to the first, rule resample to the second, so that neither is tried (a Job built
# and discarded, milliseconds per visit) where it cannot apply.
GT_TRIALS = "|".join(sorted(n for n, t in TRIALS.items() if t.gt_visits)) or "(?!)"
NO_GT_TRIALS = (
    "|".join(sorted(n for n, t in TRIALS.items() if len(t.gt_visits) < len(t.visits)))
    or "(?!)"  # matches nothing
)


wildcard_constraints:
    trial="[A-Za-z0-9]+",
    sub="[A-Za-z0-9]+",
    ses=r"w\d{3}",
    modality="T1w|T2w|FLAIR",
    source="[A-Za-z0-9]+",


def trial_of(wildcards):
    return TRIALS[wildcards.trial]


def visit_of(wildcards):
    return Visit(wildcards.sub, wildcards.ses)


def bids_images(wildcards):
    """A visit's raw T1w, T2w and FLAIR (one input function: each costs the DAG a call)."""
    trial, visit = trial_of(wildcards), visit_of(wildcards)
    return {
        key: str(trial.image(visit, mod))
        for key, mod in (("t1w", "T1w"), ("t2w", "T2w"), ("flair", "FLAIR"))
    }


def bids_gt(wildcards):
    return str(trial_of(wildcards).gt_mask(visit_of(wildcards)))


def validated(wildcards):
    return f"results/validated/trial-{wildcards.trial}_visits.tsv"


def visit_paths(pattern, trial, visits=None, **extra):
    """Expand ``pattern`` over a trial's visits (default: all of them)."""
    visits = TRIALS[trial].visits if visits is None else visits
    return [pattern.format(trial=trial, sub=v.sub, ses=v.ses, **extra) for v in visits]


def baseline_prefix(wildcards):
    return PRE.format(trial=wildcards.trial, sub=wildcards.sub, ses="w000")


def all_targets():
    """Per test trial: QC of every visit, every source's endpoints, and Table 2 where GT exists.

    A trial whose BIDS folder has problems gets only its validation job, which lists them.
    """
    targets = []
    if TRAIN_TRIALS:
        for fold in FOLDS:
            targets += [
                f"results/train/fold-{fold}/model.keras",
                f"results/train/fold-{fold}/training_curve.png",
            ]
    for name in TEST_TRIALS:
        trial = TRIALS[name]
        if trial.problems:
            targets.append(f"results/validated/trial-{name}_visits.tsv")
            continue
        targets += visit_paths(f"{PRE}_{MNI}_qc.png", name)
        if trial.gt_visits:
            for source in config["sources"]:
                targets.append(f"results/metrics/{source}/trial-{name}/table2.tsv")
            if len(config["sources"]) > 1:
                targets.append(f"results/metrics/trial-{name}/table2.tsv")
        targets += stats_targets(name)
        targets += lesion_targets(name)
        targets += report_targets(name)
    if summary_trials() or TRAIN_TRIALS:
        targets.append("results/report/summary.md")
    return targets


def own_brain_mask(wildcards):
    """Baseline visits are skull-stripped; follow-ups too only with followup_brain_mask: own."""
    return wildcards.ses == "w000" or OWN_FOLLOWUP_MASKS


def to_mni_chain(wildcards):
    """T1w -> MNI: the baseline's own transform, preceded by T1w -> baseline for follow-ups
    (the inputs of the resample rules that depend on the visit, in one input function, since
    each costs the DAG a call per job)."""
    chain = {"baseline_to_mni": f"{baseline_prefix(wildcards)}_from-T1w_to-MNI_xfm.tfm"}
    if wildcards.ses != "w000":
        chain["to_baseline"] = f"{PRE.format(**wildcards)}_from-T1w_to-baseline_xfm.tfm"
    return chain


def to_mni_chain_and_gt(wildcards):
    """:func:`to_mni_chain` and the visit's GT mask (rule resample_with_gt); for a visit
    without one, a path that no file or rule gives, so that Snakemake discards
    resample_with_gt for it and runs rule resample."""
    if visit_of(wildcards) in gt_visit_set(wildcards.trial):
        gt = bids_gt(wildcards)
    else:
        gt = f"<no GT lesion mask for trial {wildcards.trial} sub-{wildcards.sub} ses-{wildcards.ses}>"
    return {**to_mni_chain(wildcards), "gt": gt}


@functools.cache
def gt_visit_set(trial):
    """A trial's visits with GT, as a set: looked up once per visit while the DAG is built."""
    return frozenset(TRIALS[trial].gt_visits)


def qc_output():
    """The visit's QC picture, an item of the report's QC category."""
    return report(
        f"{PRE}_{MNI}_qc.png",
        caption="../report/qc.rst",
        category="QC",
        subcategory="trial-{trial}",
        labels={"visit": "sub-{sub} ses-{ses}"},
    )


def gt_visit_tables(wildcards, kind):
    trial = TRIALS[wildcards.trial]
    pattern = f"results/metrics/{{source}}/trial-{{trial}}/visits/sub-{{sub}}_ses-{{ses}}_{kind}.tsv"
    return visit_paths(
        pattern, wildcards.trial, trial.gt_visits, source=wildcards.source
    )


def volume_sources(trial):
    """Sources whose lesion volumes feed the endpoints: 'gt' where GT exists, then the predictions."""
    return (["gt"] if trial.gt_visits else []) + list(config["sources"])


def source_visits(trial, source):
    """The visits a source has a mask for: GT only where it exists, predictions everywhere."""
    return trial.gt_visits if source == "gt" else trial.visits


def lesion_volumes(wildcards):
    """Per-visit volume tables of every source: predictions on every visit, GT where it exists."""
    trial = trial_of(wildcards)
    files, sources = [], []
    for source in volume_sources(trial):
        visits = source_visits(trial, source)
        files += visit_paths(VOLUME, wildcards.trial, visits, source=source)
        sources += [source] * len(visits)
    return {"files": files, "sources": sources}


def mask_path(trial, sub, ses, source):
    """The mask a source gives a visit: the GT carried into MNI, or the source's prediction."""
    if source == "gt":
        return f"{PRE.format(trial=trial, sub=sub, ses=ses)}_{MNI}_desc-lesionGT_mask.nii.gz"
    return f"{PRED.format(trial=trial, sub=sub, ses=ses, source=source)}_{MNI}_desc-lesion_mask.nii.gz"


def stats_targets(trial):
    out = [
        f"{STATS}/change_summary.tsv",
        f"{STATS}/ancova.tsv",
        f"{STATS}/table4.tsv",
        f"{STATS}/km_tests.tsv",
    ]
    return [p.format(trial=trial) for p in out]


def lesion_targets(name):
    """New/enlarging T2 lesion endpoint (SPEC §9b), for trials with a subject seen at >= 2 visits."""
    trial = TRIALS[name]
    per_subject = {}
    for v in trial.visits:
        per_subject[v.sub] = per_subject.get(v.sub, 0) + 1
    if max(per_subject.values(), default=0) < 2:
        return []
    out = [f"{STATS}/nb_rate_ratio.tsv"]
    if trial.gt_visits and config["sources"]:
        out.append(f"{STATS}/new_lesions_agreement.tsv")
    return [p.format(trial=name) for p in out]


def trial_params(wildcards):
    trial = trial_of(wildcards)
    return {"control_arm": trial.control_arm, "arms": trial.arms}


def bids_table(name):
    return lambda w: str(trial_of(w).bids / name)


def trial_inputs(wildcards):
    return visit_inputs(trial_of(wildcards))


def synth_outputs(trial):
    bids = str(trial.bids)
    files = [
        f"{bids}/participants.tsv",
        f"{bids}/phenotype/outcomes.tsv",
        f"{trial.root}/truth/params.json",
        f"{trial.root}/truth/visits.tsv",
        f"{trial.root}/truth/lesions.tsv",
        f"{trial.root}/truth/subjects.tsv",
    ]
    for v in trial.visits:
        files += [str(trial.image(v, m)) for m in MODALITIES]
        files.append(str(trial.gt_mask(v)))
    return files


# New and enlarging lesions (rules/lesions.smk): per-subject tracking inputs and outputs.
TRACK = "results/lesions/{source}/trial-{trial}/sub-{sub}"


@functools.cache
def _tracked_by_subject(trial, source):
    """Visits with a mask of ``source``, by subject and week: built once per trial and source,
    so that the per-subject look-ups below stay cheap at thousands of visits."""
    by_subject = {}
    for v in sorted(source_visits(TRIALS[trial], source), key=lambda v: v.week):
        by_subject.setdefault(v.sub, []).append(v)
    return by_subject


def tracked_visits(trial, source, sub):
    """A subject's visits with a mask of ``source`` (GT only where it exists), by week."""
    return list(_tracked_by_subject(trial, source).get(sub, ()))


def tracked_subjects(trial, source):
    return sorted(_tracked_by_subject(trial, source))


def tracking_masks(wildcards):
    """Every visit's mask of one subject and source, as lesion_mask gives them."""
    return [
        mask_path(wildcards.trial, v.sub, v.ses, wildcards.source)
        for v in tracked_visits(wildcards.trial, wildcards.source, wildcards.sub)
    ]


def tracking_outputs(wildcards, kind, sources=None):
    """Per-subject tracking outputs of every source of a trial (GT first where it exists)."""
    trial = trial_of(wildcards)
    files, srcs = [], []
    for source in sources or volume_sources(trial):
        for sub in tracked_subjects(wildcards.trial, source):
            files.append(
                (
                    f"{TRACK}/qc" if kind == "qc" else f"{TRACK}/sub-{{sub}}_{kind}.tsv"
                ).format(source=source, trial=wildcards.trial, sub=sub)
            )
            srcs.append(source)
    return {"files": files, "sources": srcs}


# The paper's report (rules/report.smk): Table 1, Fig. 2 and results/report/summary.md.
FIG2 = "results/metrics/{source}/trial-{trial}/fig2_overlays.png"


def fig2_sources():
    """Fig. 2 compares GT with each prediction source."""
    return [s for s in config["sources"] if s != "gt"]


def report_targets(name):
    """Table 1 of a test trial, and its Fig. 2 per prediction source where GT exists."""
    out = [f"{STATS}/table1.tsv".format(trial=name)]
    if TRIALS[name].gt_visits:
        out += [FIG2.format(source=s, trial=name) for s in fig2_sources()]
    return out


def fig2_inputs(wildcards):
    """The source's per-visit metrics (they pick the visits) and, for every visit with GT, the
    FLAIR, GT and predicted mask the figure may show."""
    trial, source = wildcards.trial, wildcards.source
    visits = TRIALS[trial].gt_visits
    return {
        "visits": f"results/metrics/{source}/trial-{trial}/visits.tsv",
        "flair": visit_paths(f"{PRE}_{MNI}_desc-preproc_FLAIR.nii.gz", trial, visits),
        "gt": [mask_path(trial, v.sub, v.ses, "gt") for v in visits],
        "pred": [mask_path(trial, v.sub, v.ses, source) for v in visits],
    }


def fig2_ids(wildcards):
    return [f"sub-{v.sub}_ses-{v.ses}" for v in TRIALS[wildcards.trial].gt_visits]


def _table2_of(name):
    if not (TRIALS[name].gt_visits and config["sources"]):
        return None
    if len(config["sources"]) > 1:
        return f"results/metrics/trial-{name}/table2.tsv"
    return f"results/metrics/{config['sources'][0]}/trial-{name}/table2.tsv"


def summary_trials():
    """Per valid test trial, the tables and figures summary.md shows or links (t2lesion.report)."""
    out = {}
    for name in TEST_TRIALS:
        trial = TRIALS[name]
        if trial.problems:
            continue
        stats = STATS.format(trial=name)
        files = {
            "table1": f"{stats}/table1.tsv",
            "table2": _table2_of(name),
            "ancova": f"{stats}/ancova_arm_effect.tsv",
            "table4": f"{stats}/table4.tsv",
            "km": f"{stats}/km_tests.tsv",
        }
        lesions = bool(lesion_targets(name))
        if lesions:
            files["nb"] = f"{stats}/nb_rate_ratio.tsv"
        met = [f"results/metrics/{s}/trial-{name}" for s in config["sources"]]
        if len(config["sources"]) > 1:
            met.append(f"results/metrics/trial-{name}")
        gt = bool(trial.gt_visits)
        figures = {
            "Fig. 2: GT and predicted lesions over FLAIR": (
                [FIG2.format(source=s, trial=name) for s in fig2_sources()]
                if gt
                else []
            ),
            "Fig. 3a-c: size groups": (
                [f"{m}/size_groups.png" for m in met] if gt else []
            ),
            "TLV agreement": [f"{m}/tlv_agreement.png" for m in met] if gt else [],
            "Fig. 3d-g: TLV change": [f"{stats}/fig3_tlv_change.png"],
            "Fig. 3h-i: new and enlarging T2 lesions": (
                [
                    f"{stats}/fig3h_new_lesions_per_scan.png",
                    f"{stats}/fig3i_new_lesions_rate_ratio.png",
                ]
                if lesions
                else []
            ),
            "Fig. 4: Kaplan-Meier": [
                f"{stats}/fig4_km_{e}.png" for e in config["stats"]["endpoints"]
            ],
            "Preprocessing QC (one per visit)": visit_paths(
                f"{PRE}_{MNI}_qc.png", name
            ),
        }
        files["figures"] = figures
        out[name] = {k: v for k, v in files.items() if v}
    return out


def summary_histories():
    if not TRAIN_TRIALS:
        return {}
    return {str(f): f"results/train/fold-{f}/history.tsv" for f in FOLDS}


def summary_training_figures():
    if not TRAIN_TRIALS:
        return {}
    return {
        "Training curves": [f"results/train/fold-{f}/training_curve.png" for f in FOLDS]
    }


def summary_inputs(wildcards):
    """Every file summary.md reads or links, so that it is written after all of them."""
    files = list(summary_histories().values())
    for paths in summary_training_figures().values():
        files += paths
    for trial in summary_trials().values():
        for key, value in trial.items():
            if key == "figures":
                for paths in value.values():
                    files += paths
            else:
                files.append(value)
    return files
