"""The paper's report: Table 1 (cohort by arm), Fig. 2 colours and the summary.md writer, on
small hand-built tables with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tests.conftest import write_image
from t2lesion.plots.overlays import choose_visits, fig2_png, lesion_slice, overlay_rgb
from t2lesion.report import (
    md_table,
    rate_ratio_section,
    summary_markdown,
    table2_section,
    table4_section,
    write_summary,
)
from t2lesion.stats import validate_participants
from t2lesion.stats.table1 import cohort_table, run_table1


def _participants(edss=True):
    df = pd.DataFrame({
        "participant_id": [f"sub-{i}" for i in range(1, 8)],
        "arm": ["PLA", "OCR", "PLA", "OCR", "PLA", "OCR", "OCR"],
        "age": ["30", "40", "50", "20", "n/a", "30", "50"],
        "sex": ["M", "F", "female", "m", "F", "F", "n/a"],
        "region": ["US", "ROW", "ROW", "US", "US", "ROW", "ROW"],
        "edss_bl": ["2", "3", "4", "n/a", "3", "1", "5"] if edss else ["n/a"] * 7,
    })
    return validate_participants(df)


def _long():
    rows = []
    tlv = {"sub-1": 1.0, "sub-2": 2.0, "sub-3": 3.0, "sub-4": 4.0, "sub-5": 5.0, "sub-6": 6.0, "sub-7": 7.0}
    for pid, v in tlv.items():
        for week, scale in ((0, 1.0), (24, 1.5)):
            rows.append({"participant_id": pid, "session": f"ses-w{week:03d}", "week": week, "source": "classical",
                         "tlv_ml": v * scale, "tlc": int(10 * v)})
            if pid != "sub-7":  # no GT for sub-7
                rows.append({"participant_id": pid, "session": f"ses-w{week:03d}", "week": week, "source": "gt",
                             "tlv_ml": v * scale + 1, "tlc": int(10 * v) + 1})
    return pd.DataFrame(rows)


def _visits():
    rows = [{"participant_id": f"sub-{i}", "session": f"ses-w{w:03d}", "week": w, "has_gt": True, "excluded": ""}
            for i in range(1, 8) for w in (0, 24)]
    rows[-1]["excluded"] = "motion"  # sub-7 week 24 excluded by the user: not counted
    return pd.DataFrame(rows)


def _row(t, characteristic, statistic):
    r = t[(t["characteristic"] == characteristic) & (t["statistic"] == statistic)]
    assert len(r) == 1, (characteristic, statistic, t)
    return r.iloc[0]


def test_table1_counts_and_means_by_arm():
    t = cohort_table(_participants(), _long(), _visits(), control_arm="PLA", arms=["PLA", "OCR"])
    assert list(t.columns) == ["characteristic", "statistic", "PLA", "OCR", "all"]
    n = _row(t, "Patients", "n")
    assert (n["PLA"], n["OCR"], n["all"]) == ("3", "4", "7")
    visits = _row(t, "Visits", "n")
    assert (visits["PLA"], visits["OCR"], visits["all"]) == ("6", "7", "13")
    assert _row(t, "Visits at week 24", "n")["OCR"] == "3"
    sex = _row(t, "Sex", "n")
    assert sex["PLA"] == "M: 1, F: 2" and sex["OCR"] == "M: 1, F: 2, n/a: 1"
    age = _row(t, "Age (years)", "mean ± SD")
    assert age["PLA"] == "40.0 ± 14.1"  # 30, 50 (one n/a)
    assert age["OCR"] == "35.0 ± 12.9"  # 40, 20, 30, 50
    assert _row(t, "Age (years)", "range")["all"] == "20.0–50.0"
    assert _row(t, "Region", "n")["all"] == "ROW: 4, US: 3"
    assert _row(t, "Baseline EDSS", "mean ± SD")["OCR"] == "3.00 ± 2.00"  # 3, 1, 5
    gt = _row(t, "Baseline T2 TLV (mL), GT masks", "mean ± SD")
    assert gt["PLA"] == "4.00 ± 2.00"  # 2, 4, 6
    assert gt["OCR"] == "5.00 ± 2.00 (n = 3)"  # 3, 5, 7; sub-7 has no GT
    pred = _row(t, "Baseline T2 TLV (mL), predicted (classical)", "mean ± SD")
    assert pred["all"] == "4.00 ± 2.16"
    assert _row(t, "Baseline T2 TLC, predicted (classical)", "mean ± SD")["PLA"] == "30.0 ± 20.0"
    # GT rows come before the prediction's
    chars = list(dict.fromkeys(t["characteristic"]))
    assert chars.index("Baseline T2 TLV (mL), GT masks") < chars.index("Baseline T2 TLV (mL), predicted (classical)")


def test_table1_leaves_out_what_the_data_lack():
    t = cohort_table(_participants(edss=False), None, None, control_arm="PLA")
    assert "Baseline EDSS" not in set(t["characteristic"])
    assert not any("TLV" in c or "Visits" in c for c in t["characteristic"])
    assert list(t.columns[2:]) == ["PLA", "OCR", "all"]


def test_run_table1_reads_the_trial_tables(tmp_path):
    part = tmp_path / "participants.tsv"
    raw = pd.DataFrame({"participant_id": ["sub-1", "sub-2", "sub-3", "sub-4"], "arm": ["PLA", "OCR", "PLA", "OCR"],
                        "age": [30, 40, 50, 60], "sex": ["M", "F", "F", "M"], "region": ["US"] * 4,
                        "edss_bl": [2, 3, 4, 5]})
    raw.to_csv(part, sep="\t", index=False)
    long = _long()
    long = long[long["participant_id"].isin(raw["participant_id"])]
    long.to_csv(tmp_path / "long.tsv", sep="\t", index=False)
    visits = _visits()
    visits[visits["participant_id"].isin(raw["participant_id"])].to_csv(tmp_path / "visits.tsv", sep="\t",
                                                                         index=False)
    out = tmp_path / "table1.tsv"
    run_table1(part, tmp_path / "long.tsv", tmp_path / "visits.tsv", out, control_arm="PLA", arms=["PLA", "OCR"])
    t = pd.read_csv(out, sep="\t", dtype=str, keep_default_na=False)
    assert _row(t, "Patients", "n")[["PLA", "OCR", "all"]].tolist() == ["2", "2", "4"]
    assert _row(t, "Age (years)", "mean ± SD")["all"] == "45.0 ± 12.9"


# ------------------------------------------------------------------------------ Fig. 2


def test_fig2_colours_gt_red_prediction_blue_overlap_purple():
    flair = np.full((4, 4), 50.0)
    gt = np.zeros((4, 4), bool)
    pred = np.zeros((4, 4), bool)
    gt[0, 0] = gt[1, 1] = True
    pred[0, 1] = pred[1, 1] = True
    rgb = overlay_rgb(flair, gt, pred, vmin=0, vmax=100)
    r, g, b = rgb[0, 0]
    assert r > 0.8 and g < 0.3 and b < 0.3  # GT only: red
    r, g, b = rgb[0, 1]
    assert b > 0.8 and r < 0.3 and g < 0.5  # prediction only: blue
    r, g, b = rgb[1, 1]
    assert r > 0.4 and b > 0.5 and g < 0.2 and abs(r - b) < 0.3  # both: purple
    assert np.allclose(rgb[3, 3], 0.5)  # no lesion: the grey FLAIR


def test_fig2_picks_visits_and_slice_deterministically(tmp_path):
    visits = pd.DataFrame({"participant_id": ["sub-1", "sub-1", "sub-2", "sub-3"],
                           "session": ["ses-w000", "ses-w024", "ses-w000", "ses-w000"],
                           "gt_tlv_ml": [5.0, 6.0, 1.0, 3.0]})
    # one visit per subject first, most GT volume first; then the remaining visits
    assert choose_visits(visits, 3) == ["sub-1_ses-w024", "sub-3_ses-w000", "sub-2_ses-w000"]
    assert choose_visits(visits, 4)[-1] == "sub-1_ses-w000"
    gt = np.zeros((5, 8, 8), np.uint8)
    gt[1, 2:4, 2:4] = 1
    pred = np.zeros_like(gt)
    pred[3, 1:7, 1:7] = 1
    assert lesion_slice(gt, pred) == 3
    flair = np.random.default_rng(0).uniform(1, 100, gt.shape).astype(np.float32)
    paths = {}
    for name, arr in (("flair", flair), ("gt", gt), ("pred", pred)):
        paths[name] = tmp_path / f"{name}.nii.gz"
        write_image(paths[name], arr)
    out = fig2_png([{"id": "sub-1_ses-w000", **paths}], tmp_path / "fig2.png", title="test")
    assert out.is_file() and out.read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- summary


def _table2(source, dc):
    return pd.DataFrame({
        "source": [source] * 2, "trial": ["t"] * 2, "block": ["segmentation", "segmentation"],
        "metric": ["DC", "r_vol"], "column": ["dc", "gt_tlv_ml~pred_tlv_ml"], "mean": [dc, 0.98765],
        "sd": [0.04321, "n/a"], "n": [10, 10], "n_nan": [0, 0], "summary": ["x", "x"]})


def _table4():
    base = {"endpoint": "CDP24", "ci_level": 0.95}
    rows = [
        {**base, "model": "univariable_log_tlv", "term": "log_tlv", "label": "BL T2 TLV (log)",
         "gt.hr": 1.5, "gt.hr_ci_low": 1.1, "gt.hr_ci_high": 2.0, "gt.p": 0.0004, "gt.n": 8, "gt.events": 3,
         "gt.status": "ok", "gt.note": "",
         "unet.hr": 1.4, "unet.hr_ci_low": 0.9, "unet.hr_ci_high": 2.2, "unet.p": 0.0612, "unet.n": 8,
         "unet.events": 3, "unet.status": "ok", "unet.note": ""},
        {**base, "model": "multivariable", "term": "", "label": "", "gt.n": 8, "gt.events": 3,
         "gt.status": "skipped", "gt.note": "too few events: 3 for 7 terms",
         "unet.n": 8, "unet.events": 3, "unet.status": "skipped", "unet.note": "too few events: 3 for 7 terms"},
    ]
    return pd.DataFrame(rows)


def test_summary_sections_put_sources_side_by_side():
    t2 = table2_section(pd.concat([_table2("classical", 0.71234), _table2("unet", 0.8)], ignore_index=True))
    assert list(t2.columns) == ["block", "metric", "classical (n = 10 visits)", "unet (n = 10 visits)"]
    assert t2.iloc[0, 2] == "0.712 ± 0.0432" and t2.iloc[0, 3] == "0.800 ± 0.0432"
    assert t2.iloc[1, 2] == "0.988"
    t4 = table4_section(_table4().astype(str).replace("nan", ""))
    uni, multi = t4.iloc[0], t4.iloc[1]
    assert uni["GT masks"] == "1.50 (1.10, 2.00), p < 0.001 (n = 8, events 3)"
    assert uni["predicted (unet)"].startswith("1.40 (0.900, 2.20), p = 0.0612")
    assert multi["GT masks"] == "skipped: too few events: 3 for 7 terms" and multi["term"] == "(every term)"
    # a model that ran for one source only: one row, the other source's reason beside the numbers
    one = _table4().iloc[[0]].copy()
    skipped = one.assign(term="", label="", **{"gt.hr": np.nan, "gt.status": "failed",
                                              "gt.note": "fit failed: singular. Please see https://x"})
    one[[c for c in one.columns if c.startswith("gt.")]] = np.nan
    skipped[[c for c in skipped.columns if c.startswith("unet.")]] = np.nan
    merged = table4_section(pd.concat([skipped, one]).astype(str).replace("nan", ""))
    assert len(merged) == 1 and merged.iloc[0]["term"] == "BL T2 TLV (log)"
    assert merged.iloc[0]["GT masks"] == "failed: fit failed: singular"
    assert merged.iloc[0]["predicted (unet)"].startswith("1.40 (0.900, 2.20)")
    assert "|" not in md_table(pd.DataFrame({"a": ["x|y"]})).splitlines()[2].replace("\\|", "").strip("| ")


def test_write_summary_links_figures_relatively(tmp_path):
    stats = tmp_path / "results/stats/trial-t"
    stats.mkdir(parents=True)
    pd.concat([_table2("classical", 0.7), _table2("unet", 0.8)]).to_csv(stats / "table2.tsv", sep="\t", index=False)
    _table4().to_csv(stats / "table4.tsv", sep="\t", index=False)
    pd.DataFrame({"characteristic": ["Patients"], "statistic": ["n"], "PLA": [4], "OCR": [4], "all": [8]}).to_csv(
        stats / "table1.tsv", sep="\t", index=False)
    hist = tmp_path / "results/train/fold-1/history.tsv"
    hist.parent.mkdir(parents=True)
    pd.DataFrame({"epoch": [1, 2, 3], "val_dice": [0.2, 0.6, 0.5], "val_loss": [3.0, 1.0, 1.2],
                  "best": [1, 1, 0]}).to_csv(hist, sep="\t", index=False)
    out = tmp_path / "results/report/summary.md"
    files = {"table1": str(stats / "table1.tsv"), "table2": str(stats / "table2.tsv"),
             "table4": str(stats / "table4.tsv"),
             "figures": {"Fig. 2": [str(tmp_path / "results/metrics/unet/trial-t/fig2_overlays.png")]}}
    write_summary({"t": files}, {"1": str(hist)}, out, conf_level=0.9)
    text = out.read_text()
    assert "### Table 4: Cox proportional-hazards models (HR (90 % CI), p)" in text
    assert "## trial-t" in text and "### Table 1: cohort by arm" in text
    assert "| Patients | n | 4 | 4 | 8 |" in text
    assert "[fig2_overlays.png](../metrics/unet/trial-t/fig2_overlays.png)" in text
    assert "skipped: too few events: 3 for 7 terms" in text
    assert "| 1 | 3 | 2 | 0.600 | 1.00 |" in text  # fold 1: 3 epochs, best epoch 2, Dice 0.6
    assert "ANCOVA" not in text  # a section without its table is left out
    problems = [f"/b/sub-00{i}: FLAIR missing" for i in range(1, 6)]
    other = summary_markdown({"bad": {"problems": problems},
                              "one": {"table1": str(stats / "table1.tsv"), "notes": ["New lesions: not analysed"]}},
                             None, out)
    bad = other.split("## trial-bad", 1)[1].split("## trial-one", 1)[0]
    assert "Not analysed: its BIDS folder failed validation with 5 problem(s) (and 2 more)" in bad
    assert "- /b/sub-003: FLAIR missing" in bad and "sub-004" not in bad
    assert "\nNew lesions: not analysed.\n" in other.split("## trial-one", 1)[1]
    assert summary_markdown({}, None, out).startswith("# T2-lesion")


def test_summary_states_the_unet_threshold_under_table2_and_each_folds_choice(tmp_path):
    import json

    stats = tmp_path / "results/metrics/trial-t"
    stats.mkdir(parents=True)
    pd.concat([_table2("classical", 0.7), _table2("unet", 0.8)]).to_csv(stats / "table2.tsv", sep="\t", index=False)
    hist, thresholds = {}, {}
    for fold, t in (("1", 0.8), ("2", 0.7)):
        folder = tmp_path / f"results/train/fold-{fold}"
        folder.mkdir(parents=True)
        pd.DataFrame({"epoch": [1], "val_dice": [0.6], "val_loss": [1.0], "best": [1]}).to_csv(
            folder / "history.tsv", sep="\t", index=False)
        (folder / "threshold.json").write_text(json.dumps(
            {"threshold": t, "mean_dice": 0.8123, "mean_dice_at_0.5": 0.7, "n_visits": 4, "grid": [0.3, 0.95]}))
        hist[fold], thresholds[fold] = str(folder / "history.tsv"), str(folder / "threshold.json")
    out = tmp_path / "results/report/summary.md"
    trials = {"t": {"table2": str(stats / "table2.tsv")}}
    auto = {"setting": "auto", "files": list(thresholds.values()), "n_models": 2, "folder": None}
    text = summary_markdown(trials, hist, out, None, thresholds, auto)
    table2 = text.split("### Table 2", 1)[1]
    assert table2.split("\n\n")[3] == ("U-Net masks: probability >= 0.75 (threshold chosen on each fold's held-out "
                                       "visits, mean of folds 0.80, 0.70).")
    assert "| threshold | held-out visits | held-out Dice at threshold | held-out Dice at 0.5 |" in text
    assert "| 0.800 | 4 | 0.812 | 0.700 |" in text and "| 0.700 | 4 | 0.812 | 0.700 |" in text
    fixed = summary_markdown(trials, hist, out, None, thresholds, {**auto, "setting": 0.5, "files": []})
    assert "U-Net masks: probability >= 0.5 (fixed at 0.5 by inference.threshold)." in fixed
    elsewhere = summary_markdown(trials, None, out, None, None, {**auto, "files": [], "folder": "/m"})
    assert "U-Net masks: probability >= 0.5 (fixed at 0.5: inference.threshold is auto but the fold models in /m" \
           in elsewhere
    assert "U-Net masks" not in summary_markdown(trials, None, out)  # no unet source


def test_table2_header_counts_visits_and_a_metric_on_fewer_says_so():
    """The column's n is the source's visits; PPV undefined on an empty mask rests on fewer."""
    t = _table2("unet", 0.8)
    t = pd.concat([t, t.iloc[[0]].assign(metric="PPV", column="ppv", n=7)], ignore_index=True)
    out = table2_section(t)
    assert list(out.columns) == ["block", "metric", "unet (n = 10 visits)"]
    assert out.iloc[0, 2] == "0.800 ± 0.0432" and out.iloc[2, 2] == "0.800 ± 0.0432 (n = 7)"


def test_a_count_model_that_did_not_run_keeps_its_row_and_reason():
    """Skipped rows have no term (counts.py): the summary says why rather than dropping them."""
    nb = pd.DataFrame([
        {"source": "unet", "model": "negative_binomial", "term": "arm_OCR", "term_type": "arm", "label": "OCR vs PLA",
         "rate_ratio": 0.5, "ci_low": 0.3, "ci_high": 0.8, "p": 0.004, "status": "ok", "note": ""},
        {"source": "unet", "model": "negative_binomial", "term": "log_tlc_bl1", "term_type": "covariate",
         "label": "x", "rate_ratio": 1.1, "ci_low": 0.9, "ci_high": 1.3, "p": 0.3, "status": "ok", "note": ""},
        *[{"source": "reviewed", "model": m, "term": "", "term_type": np.nan, "label": np.nan, "rate_ratio": np.nan,
           "ci_low": np.nan, "ci_high": np.nan, "p": np.nan, "status": "skipped", "note": "arm OCR has 1 subject"}
          for m in ("negative_binomial", "poisson", "wilcoxon")],
    ])
    out = rate_ratio_section(nb)
    assert len(out) == 4 and list(out["model"]) == ["negative binomial", "negative binomial", "poisson", "wilcoxon"]
    assert out.iloc[0]["rate ratio (CI), p"].startswith("0.500 (0.300, 0.800), p = 0.004")
    assert (out.iloc[1:]["rate ratio (CI), p"] == "skipped: arm OCR has 1 subject").all()
    assert (out.iloc[1:]["term"] == "").all()


def test_the_unet_threshold_is_stated_for_a_trial_without_gt(tmp_path):
    stats = tmp_path / "results/stats/trial-t"
    stats.mkdir(parents=True)
    _table4().to_csv(stats / "table4.tsv", sep="\t", index=False)
    text = summary_markdown({"t": {"table4": stats / "table4.tsv"}}, None, tmp_path / "results/report/summary.md",
                            unet_threshold={"setting": 0.5, "files": [], "n_models": 3, "folder": None})
    assert "Table 2" not in text and "U-Net masks: probability >= 0.5" in text


def test_the_summary_says_how_many_visits_readers_corrected(tmp_path):
    """The `reviewed` source is the U-Net's masks but where a reader corrected one: how many."""
    review = tmp_path / "results/review/trial-t"
    review.mkdir(parents=True)
    pd.DataFrame({"participant_id": ["sub-1", "sub-1", "sub-2", "sub-3"], "session": ["ses-w000", "ses-w024"] * 2,
                  "correction": ["a.nii.gz", "b.nii.gz", "", "c.nii.gz"], "rater": ["AB", "CD", "", ""],
                  "status": ["applied", "applied", "none", "rejected: 3 voxels are neither 0 nor 1"],
                  "added_voxels": [10, 0, 0, 0], "removed_voxels": [5, 40, 0, 0], "unet_tlv_ml": [1, 1, 1, 1],
                  "reviewed_tlv_ml": [1, 1, 1, 1]}).to_csv(review / "corrections.tsv", sep="\t", index=False)
    text = summary_markdown({"t": {"corrections": review / "corrections.tsv"}}, None,
                            tmp_path / "results/report/summary.md")
    assert ("Reader corrections: 2 of 4 visits corrected (their masks in the `reviewed` source; the others are the "
            "U-Net's), 1 rejected; 10 voxels added and 45 removed in native space; raters AB, CD "
            "([corrections.tsv](../review/trial-t/corrections.tsv)).") in text
