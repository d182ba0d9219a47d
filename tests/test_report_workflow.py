"""The paper's report on a small trial (4 subjects per arm, weeks 0 and 48), through the workflow
from segmentation onwards: Table 1, Table 2, the ANCOVA, Table 4, the Kaplan-Meier tests, Fig. 2-4,
the new-lesion endpoint and results/report/summary.md, with numbers in the cells (issue 15).

Preprocessing is far too slow for ten subjects in the test suite (about 25 CPU-s per visit), so
the test writes what it would have written, small images already "in MNI space", and runs
Snakemake with --allowed-rules limited to the rules from validation and segment_classical
onwards: the files stand in for preprocessing, which a dry run shows is never scheduled.

The images are drawn so that the answers are known: box-shaped lesions of known size (GT masks
and FLAIR), a FLAIR-bright spot outside the GT (a false positive of the classical segmenter)
and a T1w-bright GT lesion (a lesion it misses) in some visits, new lesions at week 48, more
and larger lesions in the control arm, and clinical outcomes with events in both arms.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import write_image
from tests.test_workflow import job_counts, snakemake

pytestmark = pytest.mark.slow

TRIAL = "small"
SHAPE = (16, 24, 24)  # (z, y, x) voxels; 1 x 1 x 3 mm (x, y, z) as the MNI1x1x3 grid
SPACING = (1.0, 1.0, 3.0)
VOXEL_ML = 0.003
MNI = "space-MNI1x1x3"

# Lesion boxes (z, y, x voxels) and their sizes: every size holds >= metrics.min_lesion_voxels
BOX = {"S": (1, 2, 2), "M": (2, 2, 3), "L": (2, 3, 3), "XL": (3, 4, 4)}
# 27 slots, at least one voxel apart in every direction (distinct lesions with 18-connectivity)
SLOTS = [(z, y, x) for z in (1, 5, 9) for y in (3, 9, 15) for x in (3, 9, 15)]
FP_SLOT = (12, 15, 15)  # the classical segmenter's false positive: FLAIR-bright, not in the GT

# participant: arm, baseline lesions, lesions new at week 48, covariates; the control arm (PLA)
# has more and larger lesions than OCR, and the arms overlap so that both KM groups (baseline
# TLV at most / above the median) exist in each arm.
SUBJECTS = {
    "001": ("PLA", ["XL", "L", "M"], ["M", "S"], 38, "F", "US", 3.0),
    "002": ("PLA", ["XL", "XL", "L", "L", "M"], ["L"], 52, "M", "ROW", 4.5),
    "003": ("PLA", ["L", "M", "S"], ["M", "M"], 29, "F", "ROW", 2.0),
    "004": ("PLA", ["XL", "XL", "XL", "L"], ["S"], 47, "M", "US", 5.0),
    "005": ("OCR", ["M", "S"], [], 35, "M", "US", 2.5),
    "006": ("OCR", ["XL", "M"], ["S"], 50, "F", "ROW", 4.0),
    "007": ("OCR", ["L", "L", "L"], [], 44, "F", "US", 3.0),
    "008": ("OCR", ["XL", "XL", "L", "M"], ["M"], 56, "M", "ROW", 5.5),
}
WEEKS = (0, 48)
FALSE_POSITIVE = {"002", "006"}  # a FLAIR-bright spot outside the GT, at every visit
MISSED = {"005"}  # its first GT lesion is bright on T1w: not a T2 lesion to the classical segmenter
# events (week) per endpoint; everyone else is censored at week 120. Each arm has events in each
# endpoint, and no endpoint's events are ordered by baseline TLV (the Cox HRs stay finite).
EVENTS = {
    "CDP24": {"002": 30, "004": 60, "003": 90, "008": 50, "005": 100},
    "T25FW24": {"001": 40, "004": 70, "006": 55, "007": 95},
    "9HPT24": {"002": 45, "003": 80, "008": 110, "005": 35},
    "CCDP24": {"001": 25, "004": 50, "002": 85, "008": 65, "007": 100},
}
# the rules from validation and segmentation onwards: nothing of preprocessing, training or inference
ALLOWED = ["validate_bids", "segment_classical", "metrics_visit", "metrics_dataset", "tlv_long", "change", "ancova",
           "cox", "km", "track_lesions", "new_lesions", "new_lesion_agreement", "table1", "fig2", "summary"]
PREPROCESSING = ["n4_coregister", "skull_strip", "register_mni", "register_baseline", "resample", "resample_with_gt",
                 "validation_passed", "visit_files"]
STATS = f"results/stats/trial-{TRIAL}"
TARGETS = [
    f"{STATS}/table1.tsv",
    f"results/metrics/classical/trial-{TRIAL}/table2.tsv",
    f"results/metrics/classical/trial-{TRIAL}/fig2_overlays.png",
    f"{STATS}/ancova_arm_effect.tsv",
    f"{STATS}/change_summary.tsv",
    f"{STATS}/table4.tsv",
    f"{STATS}/km_tests.tsv",
    f"{STATS}/nb_rate_ratio.tsv",
    f"{STATS}/new_lesions_agreement.tsv",
    "results/report/summary.md",
]
# a 1 x 1 grey PNG: the preprocessing QC picture summary.md links (rule resample writes it)
PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010800000000"
    "3a7e9b550000000a49444154789c636800000082008177cd72b60000000049454e44ae426082"
)


def _boxes(sub: str, ses: str) -> list[tuple[slice, slice, slice]]:
    """The GT lesions of a visit, as array slices: baseline lesions, then week 48's new ones."""
    _, baseline, new, *_ = SUBJECTS[sub]
    names = baseline + (new if ses != "w000" else [])
    out = []
    for slot, name in zip(SLOTS, names):
        out.append(tuple(slice(o, o + n) for o, n in zip(slot, BOX[name])))
    return out


def _voxels(names) -> int:
    return sum(math.prod(BOX[n]) for n in names)


def expected(sub: str, ses: str) -> dict:
    """The known answer of a visit: GT and classical-segmenter voxels, lesions and Dice."""
    _, baseline, new, *_ = SUBJECTS[sub]
    gt_names = baseline + (new if ses != "w000" else [])
    gt = _voxels(gt_names)
    missed = math.prod(BOX[gt_names[0]]) if sub in MISSED else 0
    fp = math.prod(BOX["S"]) if sub in FALSE_POSITIVE else 0
    pred = gt - missed + fp
    return {"gt_voxels": gt, "gt_tlc": len(gt_names), "pred_voxels": pred,
            "pred_tlc": len(gt_names) - (sub in MISSED) + (sub in FALSE_POSITIVE),
            "dc": 2 * (gt - missed) / (gt + pred)}


def write_trial(work: Path) -> Path:
    """The BIDS tables and tiny raw images that validation reads, and every file preprocessing
    would have written for each visit (MNI-space images, brain and GT masks, the QC picture)."""
    rng = np.random.default_rng(15)
    bids = work / "bids"
    rows = []
    for sub, (arm, _, _, age, sex, region, edss) in SUBJECTS.items():
        rows.append({"participant_id": f"sub-{sub}", "arm": arm, "age": age, "sex": sex, "region": region,
                     "edss_bl": edss})
        for week in WEEKS:
            ses = f"w{week:03d}"
            # raw images: validation opens every one (tiny arrays will do: nothing preprocesses them)
            anat = bids / f"sub-{sub}" / f"ses-{ses}" / "anat"
            for mod in ("T1w", "T2w", "FLAIR"):
                raw = rng.uniform(1, 100, (6, 10, 12)).astype(np.float32)
                write_image(anat / f"sub-{sub}_ses-{ses}_{mod}.nii.gz", raw)
            raw_gt = np.zeros((6, 10, 12), np.uint8)
            raw_gt[2:4, 3:6, 3:6] = 1
            write_image(bids / "derivatives/lesions" / f"sub-{sub}" / f"ses-{ses}" / "anat"
                        / f"sub-{sub}_ses-{ses}_desc-lesion_mask.nii.gz", raw_gt)
            # what preprocessing would have written: normalised contrasts around 100 (uniform
            # noise of +-1: robust z < 1.4 everywhere but in lesions), lesions bright on FLAIR
            # and dark on T1w
            brain = np.zeros(SHAPE, np.uint8)
            brain[1:-1, 2:-2, 2:-2] = 1
            gt = np.zeros(SHAPE, np.uint8)
            flair = rng.uniform(99, 101, SHAPE).astype(np.float32)
            t1w = rng.uniform(99, 101, SHAPE).astype(np.float32)
            t2w = rng.uniform(99, 101, SHAPE).astype(np.float32)
            for k, box in enumerate(_boxes(sub, ses)):
                gt[box] = 1
                flair[box] = 200.0
                t2w[box] = 180.0
                t1w[box] = 150.0 if (k == 0 and sub in MISSED) else 80.0
            if sub in FALSE_POSITIVE:
                fp = tuple(slice(o, o + n) for o, n in zip(FP_SLOT, BOX["S"]))
                assert not gt[fp].any()
                flair[fp] = 200.0
                t1w[fp] = 80.0
            flair[brain == 0] = 0.0
            t1w[brain == 0] = 0.0
            t2w[brain == 0] = 0.0
            pre = work / f"results/preproc/trial-{TRIAL}/sub-{sub}/ses-{ses}/sub-{sub}_ses-{ses}"
            for suffix, arr in (("desc-preproc_FLAIR", flair), ("desc-preproc_T1w", t1w), ("desc-preproc_T2w", t2w),
                                ("desc-brain_mask", brain), ("desc-lesionGT_mask", gt)):
                write_image(Path(f"{pre}_{MNI}_{suffix}.nii.gz"), arr, SPACING)
            Path(f"{pre}_{MNI}_qc.png").write_bytes(PNG_1PX)
            assert int(gt.sum()) == expected(sub, ses)["gt_voxels"]
    pd.DataFrame(rows).to_csv(bids / "participants.tsv", sep="\t", index=False)
    outcomes = [{"participant_id": f"sub-{sub}", "endpoint": ep, "time_weeks": float(events.get(sub, 120)),
                 "event": int(sub in events)}
                for ep, events in EVENTS.items() for sub in SUBJECTS]
    (bids / "phenotype").mkdir()
    pd.DataFrame(outcomes).to_csv(bids / "phenotype/outcomes.tsv", sep="\t", index=False)
    return bids


@pytest.fixture(scope="module")
def report_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("report")
    bids = write_trial(work)
    config = {
        "trials": {TRIAL: {"role": "test", "bids": str(bids), "control_arm": "PLA", "treatment_arms": ["OCR"]}},
        "sources": ["classical"],
        # the boxes' new lesions are 4-12 voxels: count them all (the default size floor, 20 voxels,
        # docs/DESIGN.md §9b, would count none)
        "lesions": {"new_min_voxels": 3},
    }
    res = snakemake(work, "--cores", "2", "--allowed-rules", *ALLOWED, "--", *TARGETS, config=config, timeout=900)
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-5000:]
    return work, res.stdout + res.stderr


NUMBER = r"-?\d+(\.\d+)?(e[+-]?\d+)?"
PLACEHOLDERS = re.compile(r"skipped|failed|n/a|nan|TODO|placeholder|not computable|too few", re.IGNORECASE)


def _md_rows(text: str, heading: str) -> list[list[str]]:
    """The body rows of the first Markdown table under ``heading`` in summary.md."""
    section = text.split(heading, 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[2:]]


def _tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype={"participant_id": str})


def test_preprocessing_is_never_scheduled(report_run):
    """The written files stand in for preprocessing: the run's plan (its "Job stats") has only the
    rules from validation and segmentation onwards, one segmentation and one metrics job per visit,
    and its log shows no other rule ran."""
    work, log = report_run
    counts = job_counts(log)
    assert not set(counts) & set(PREPROCESSING), counts
    assert set(counts) - {"total"} <= set(ALLOWED), counts
    n_visits = len(SUBJECTS) * len(WEEKS)
    assert counts["segment_classical"] == counts["metrics_visit"] == n_visits, counts
    assert counts["track_lesions"] == 2 * len(SUBJECTS), counts  # gt and baseline, per subject
    for rule in ("validate_bids", "tlv_long", "change", "ancova", "cox", "km", "new_lesions", "table1", "fig2",
                 "summary"):
        assert counts[rule] == 1, (rule, counts)
    for rule in PREPROCESSING:
        assert f"rule {rule}:" not in log and f"localrule {rule}:" not in log, rule
    assert not (work / "results/logs/n4_coregister").exists()


def test_volumes_and_visit_metrics_have_the_drawn_answers(report_run):
    work, _ = report_run
    long = _tsv(work / f"{STATS}/tlv_long.tsv")
    assert sorted(long["source"].unique()) == ["classical", "gt"]
    assert len(long) == 2 * len(SUBJECTS) * len(WEEKS)
    visits = _tsv(work / f"results/metrics/classical/trial-{TRIAL}/visits.tsv")
    assert len(visits) == len(SUBJECTS) * len(WEEKS)
    for sub in SUBJECTS:
        for week in WEEKS:
            exp = expected(sub, f"w{week:03d}")
            at = (long["participant_id"] == f"sub-{sub}") & (long["week"] == week)
            gt = long[at & (long["source"] == "gt")].iloc[0]
            pred = long[at & (long["source"] == "classical")].iloc[0]
            assert gt["tlv_ml"] == pytest.approx(exp["gt_voxels"] * VOXEL_ML), (sub, week)
            assert gt["tlc"] == exp["gt_tlc"], (sub, week)
            assert pred["tlv_ml"] == pytest.approx(exp["pred_voxels"] * VOXEL_ML), (sub, week)
            assert pred["tlc"] == exp["pred_tlc"], (sub, week)
            row = visits[(visits["participant_id"] == f"sub-{sub}") & (visits["week"] == week)].iloc[0]
            assert row["dc"] == pytest.approx(exp["dc"]), (sub, week)
            assert row["gt_tlv_ml"] == pytest.approx(exp["gt_voxels"] * VOXEL_ML), (sub, week)
    # new lesions at week 48 against week 0, per subject, as drawn (GT source)
    subjects = _tsv(work / f"{STATS}/new_lesions.tsv")
    gt_new = subjects[subjects["source"] == "gt"].set_index("participant_id")["n_new"]
    assert {p: int(n) for p, n in gt_new.items()} == {f"sub-{s}": len(v[2]) for s, v in SUBJECTS.items()}


def test_table1_counts_the_arms(report_run):
    work, _ = report_run
    table1 = pd.read_csv(work / f"{STATS}/table1.tsv", sep="\t", dtype=str, keep_default_na=False)
    patients = table1[table1["characteristic"] == "Patients"].iloc[0]
    assert (patients["PLA"], patients["OCR"], patients["all"]) == ("4", "4", "8")


def test_table2_has_numbers(report_run):
    work, _ = report_run
    table2 = _tsv(work / f"results/metrics/classical/trial-{TRIAL}/table2.tsv")
    assert set(table2["source"]) == {"classical"} and (table2["n"] == len(SUBJECTS) * len(WEEKS)).all()
    assert {"DC", "LTPR", "r_vol"} <= set(table2["metric"])
    assert table2["mean"].map(np.isfinite).all(), table2
    dc = table2.loc[table2["metric"] == "DC", "mean"].iloc[0]
    exp_dc = np.mean([expected(s, f"w{w:03d}")["dc"] for s in SUBJECTS for w in WEEKS])
    assert dc == pytest.approx(exp_dc, abs=1e-6)
    text = (work / "results/report/summary.md").read_text()
    rows = _md_rows(text, "### Table 2:")
    assert {row[1] for row in rows} >= {"DC", "LTPR", "r_vol"}
    for row in rows:  # a number, or mean ± SD, in every cell
        for cell in row[2:]:
            assert re.fullmatch(rf"{NUMBER}( ± {NUMBER})?", cell), row


def test_table4_univariable_rows_have_numbers(report_run):
    work, _ = report_run
    table4 = _tsv(work / f"{STATS}/table4.tsv")
    uni = table4[table4["model"].str.startswith("univariable")]
    assert len(uni) == 2 * len(EVENTS)  # log TLV and TLC per endpoint
    for src in ("gt", "classical"):
        assert (uni[f"{src}.status"] == "ok").all(), uni[[f"{src}.status", f"{src}.note"]]
        for col in ("hr", "hr_ci_low", "hr_ci_high", "p"):
            assert uni[f"{src}.{col}"].map(np.isfinite).all(), (src, col, uni[f"{src}.{col}"])
        assert ((uni[f"{src}.hr_ci_low"] < uni[f"{src}.hr"]) & (uni[f"{src}.hr"] < uni[f"{src}.hr_ci_high"])).all()
        assert uni[f"{src}.p"].between(0, 1).all()
        assert (uni[f"{src}.n"] == len(SUBJECTS)).all()
        events = uni.set_index("endpoint")[f"{src}.events"].groupby(level=0).first()
        assert events.to_dict() == {ep: len(ev) for ep, ev in EVENTS.items()}
    text = (work / "results/report/summary.md").read_text()
    rows = [row for row in _md_rows(text, "### Table 4:") if row[1] == "univariable"]
    assert len(rows) == 2 * len(EVENTS)
    hr_cell = rf"{NUMBER} \({NUMBER}, {NUMBER}\), p (=|<) {NUMBER} \(n = {len(SUBJECTS)}, events \d\)"
    for row in rows:  # HR (low, high), p = x (n = 8, events k), for GT and the classical segmenter
        assert len(row) == 5, row
        for cell in row[3:]:
            assert re.fullmatch(hr_cell, cell), row
            assert not PLACEHOLDERS.search(cell), row


def test_km_log_rank_rows_have_numbers(report_run):
    work, _ = report_run
    km = _tsv(work / f"{STATS}/km_tests.tsv")
    assert len(km) == 2 * len(EVENTS) * 2  # sources x endpoints x arms
    assert (km["status"] == "ok").all(), km[["source", "endpoint", "arm", "status", "note"]]
    assert km["chi2"].map(np.isfinite).all() and km["p"].between(0, 1).all()
    assert ((km["n_low"] > 0) & (km["n_high"] > 0)).all()
    text = (work / "results/report/summary.md").read_text()
    rows = _md_rows(text, "### Fig. 4:")
    assert len(rows) == len(km)
    for row in rows:
        assert re.fullmatch(rf"χ² = {NUMBER}, p (=|<) {NUMBER}", row[-1]), row


def test_ancova_and_rate_ratio_have_numbers(report_run):
    work, _ = report_run
    text = (work / "results/report/summary.md").read_text()
    rows = _md_rows(text, "### ANCOVA:")
    assert rows and all(len(row) == 4 for row in rows), rows
    for row in rows:  # week 48, arm effect, for GT and the classical segmenter
        for cell in row[2:]:
            assert re.fullmatch(rf"{NUMBER} \({NUMBER}, {NUMBER}\), p (=|<) {NUMBER}, n = {len(SUBJECTS)}", cell), row
    rows = _md_rows(text, "### New and enlarging T2 lesions:")
    cells = {(row[0], row[1]): row[-1] for row in rows}
    for source in ("GT masks", "predicted (classical)"):  # the arm's rate ratio (CI), p; the rank-sum p
        for model in ("negative binomial", "poisson"):
            assert re.match(rf"{NUMBER} \({NUMBER}, {NUMBER}\), p (=|<) {NUMBER}", cells[source, model]), rows
        assert re.fullmatch(rf"p (=|<) {NUMBER}", cells[source, "wilcoxon"]), rows


def test_summary_links_every_figure_and_it_exists(report_run):
    work, _ = report_run
    text = (work / "results/report/summary.md").read_text()
    assert f"## trial-{TRIAL}" in text
    for heading in ("### Table 1:", "### Table 2:", "### ANCOVA:", "### Table 4:", "### Fig. 4:",
                    "### New and enlarging T2 lesions:", "### Figures"):
        assert heading in text, heading
    figures = text.split("### Figures", 1)[1]
    for label in ("Fig. 2", "Fig. 3a-c", "TLV agreement", "Fig. 3d-g", "Fig. 3h-i", "Fig. 4", "Preprocessing QC"):
        assert f"- {label}" in figures, label
    links = re.findall(r"\]\(([^)]+)\)", text)
    pngs = [link for link in links if link.endswith(".png")]
    # Fig. 2, 3a-c, TLV agreement, 3d-g, 3h and 3i, one KM per endpoint, QC: 20 shown of the 20 visits
    assert len(pngs) == 1 + 1 + 1 + 1 + 2 + len(EVENTS) + len(SUBJECTS) * len(WEEKS), pngs
    for link in links:
        path = (work / "results/report" / link).resolve()
        assert path.is_file(), link
        if link.endswith(".png"):
            assert path.read_bytes()[:4] == b"\x89PNG", link
    for name in ("fig2_overlays.png", "size_groups.png", "fig3_tlv_change.png", "fig3h_new_lesions_per_scan.png",
                 "fig3i_new_lesions_rate_ratio.png", *[f"fig4_km_{ep}.png" for ep in EVENTS]):
        assert any(link.endswith("/" + name) for link in pngs), name
