"""docs/VALIDATION.md from a folder of the validation study's tables and figures (docs/DESIGN.md §15).

Everything in the document comes from the TSVs in one folder (file names :data:`FILES`; a
missing optional table leaves its section saying so) and from the arguments naming the commit
and the config of the run; no clock, no host, so regenerating from the same folder gives the
same text byte for byte. Numbers are printed by :mod:`t2lesion.formatting`.

Targets of issue 25 (:class:`Targets`, each with its value, threshold, and "met (margin m)" or
"missed by m", m ≥ 0 in the target's own unit):

1. U-Net voxel DC (Table 2 mean over visits) ≥ 0.75;
2. U-Net DC ≥ classical DC + 0.10;
3. U-Net TLV bias within ±10 % of the mean GT TLV (``bias_pct_gt`` of the agreement table);
4. at each of weeks 24 and 48 and each arm term: the U-Net's ANCOVA arm effect lies inside GT's
   95 % CI (margin: distance to the nearer bound, percentage points) **and** the verdict at
   p < 0.05 is the same as GT's (a different verdict is a miss whatever the margin);
5. new-lesion F1 ≥ 0.6 over U-Net lesions ≥ 10 voxels (the detection bins from 10 up, pooled).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import pandas as pd

from t2lesion.errors import InputError
from t2lesion.formatting import as_number, fmt_ci, fmt_num, fmt_p
from t2lesion.validation.detection import pooled

#: The tables the document reads from its folder (key -> file name).
FILES = {
    "table2": "table2.tsv",  # Table 2 of every source side by side (t2lesion.evaluation.files.run_compare)
    "tlv_agreement": "tlv_agreement.tsv",  # t2lesion.validation.agreement.tlv_agreement_table
    "uncertainty": "uncertainty.tsv",  # t2lesion.validation.uncertainty.uncertainty_summary (+ source)
    "detection": "new_lesion_detection.tsv",  # t2lesion.validation.detection.detection_table
    "ancova": "ancova.tsv",  # t2lesion.stats ANCOVA coefficients
    "cox": "cox.tsv",  # t2lesion.stats Cox models
    "nb": "nb_rate_ratio.tsv",  # t2lesion.stats negative-binomial new-lesion counts
    "truth": "truth.tsv",  # t2lesion.validation.run.truth_table: the generator's effects beside the estimates
    "new_lesion_sizes": "new_lesion_truth_sizes.tsv",  # t2lesion.validation.new_lesion_truth.size_table
    "new_lesion_floors": "new_lesion_truth_floors.tsv",  # t2lesion.validation.new_lesion_truth.floor_table
    "enlarge_floors": "new_lesion_truth_enlarge_floors.tsv",  # ...new_lesion_truth.enlarge_floor_table
    "lesion_types": "lesion_types.tsv",  # t2lesion.validation.lesion_types.type_table
    "change_response": "change_response.tsv",  # t2lesion.validation.change_response.response_table
}


@dataclasses.dataclass(frozen=True)
class Targets:
    """The issue's targets; the defaults are issue 25's numbers."""

    dc_min: float = 0.75
    dc_over_classical: float = 0.10
    tlv_bias_pct: float = 10.0
    ancova_weeks: tuple[int, ...] = (24, 48)
    alpha: float = 0.05
    f1_min: float = 0.6
    f1_min_voxels: int = 10
    unet: str = "unet"
    classical: str = "classical"
    gt: str = "gt"


def read_result_tsv(path, **kw) -> pd.DataFrame:
    """A table the pipeline wrote ("n/a" read as missing); a missing or unreadable file is one
    InputError line naming it."""
    try:
        return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=True, **kw)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{path}: not a readable TSV ({str(exc).splitlines()[0]})") from None


def read_tables(folder) -> dict[str, pd.DataFrame]:
    """The tables of :data:`FILES` present in ``folder`` (:func:`read_result_tsv`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"validation folder {folder} does not exist")
    return {key: read_result_tsv(folder / name) for key, name in FILES.items() if (folder / name).is_file()}


def _need(tab: pd.DataFrame, cols, name: str) -> None:
    missing = [c for c in cols if c not in tab.columns]
    if missing:
        raise ValueError(f"{FILES[name]}: missing column(s) {missing}")


def _verdict(target: str, value: str, threshold: str, margin: float | None, reason: str = "") -> dict:
    """A target's row: met when margin ≥ 0; ``reason`` (and margin None) when not evaluated."""
    if margin is None or not math.isfinite(margin):
        return {"target": target, "value": value, "threshold": threshold, "met": None,
                "verdict": f"not evaluated: {reason or 'value undefined'}"}
    met = margin >= 0
    return {"target": target, "value": value, "threshold": threshold, "met": met,
            "verdict": f"met (margin {fmt_num(margin)})" if met else f"missed by {fmt_num(-margin)}"}


def _dc(t2: pd.DataFrame, source: str) -> float | None:
    r = t2[(t2["source"] == source) & (t2["column"] == "dc")]
    return as_number(r["mean"].iloc[0]) if len(r) else None


def evaluate_targets(tables: dict[str, pd.DataFrame], targets: Targets = Targets()) -> list[dict]:
    """One row per target (keys ``target, value, threshold, met, verdict``), in the issue's order."""
    t, out = targets, []
    t2 = tables.get("table2")
    if t2 is not None:
        _need(t2, ["source", "column", "mean"], "table2")
    du = _dc(t2, t.unet) if t2 is not None else None
    dcl = _dc(t2, t.classical) if t2 is not None else None
    why = f"no {FILES['table2']}" if t2 is None else f"no DC of source {t.unet!r}"
    out.append(_verdict(f"{t.unet} DC ≥ {fmt_num(t.dc_min)}", fmt_num(du), f"≥ {fmt_num(t.dc_min)}",
                        None if du is None else du - t.dc_min, why))
    why2 = why if du is None else f"no DC of source {t.classical!r}"
    out.append(_verdict(f"{t.unet} DC ≥ {t.classical} DC + {fmt_num(t.dc_over_classical)}",
                        f"{fmt_num(du)} vs {fmt_num(dcl)}",
                        f"≥ {fmt_num(None if dcl is None else dcl + t.dc_over_classical)}",
                        None if du is None or dcl is None else du - dcl - t.dc_over_classical, why2))
    ag = tables.get("tlv_agreement")
    bias, why = None, f"no {FILES['tlv_agreement']}"
    if ag is not None:
        _need(ag, ["source", "bias_pct_gt"], "tlv_agreement")
        r = ag[ag["source"] == t.unet]
        bias = as_number(r["bias_pct_gt"].iloc[0]) if len(r) else None
        why = f"no row of source {t.unet!r}" if not len(r) else "bias undefined"
    out.append(_verdict(f"{t.unet} TLV bias within ±{fmt_num(t.tlv_bias_pct)} % of GT TLV",
                        f"{fmt_num(bias)} %", f"|bias| ≤ {fmt_num(t.tlv_bias_pct)} %",
                        None if bias is None else t.tlv_bias_pct - abs(bias), why))
    out.extend(_ancova_targets(tables.get("ancova"), t))
    det = tables.get("detection")
    f1, why = None, f"no {FILES['detection']}"
    if det is not None:
        _need(det, ["source", "bin", "size_low", "size_high", "n_gt", "n_gt_detected", "n_pred", "n_pred_tp"],
              "detection")
        try:
            f1 = as_number(pooled(det, t.unet, t.f1_min_voxels)["f1"])
            why = "F1 undefined (no GT or no predicted lesion)"
        except ValueError as exc:
            why = str(exc)
    out.append(_verdict(f"{t.unet} new-lesion F1 ≥ {fmt_num(t.f1_min)} (lesions ≥ {t.f1_min_voxels} voxels)",
                        fmt_num(f1), f"≥ {fmt_num(t.f1_min)}", None if f1 is None else f1 - t.f1_min, why))
    return out


def _ancova_targets(an: pd.DataFrame | None, t: Targets) -> list[dict]:
    rows = []
    if an is not None:
        _need(an, ["source", "week", "term", "term_type", "estimate", "ci_low", "ci_high", "p"], "ancova")
        an = an[an["term_type"] == "arm"]
    for w in t.ancova_weeks:
        name = f"{t.unet} ANCOVA arm effect at week {w} inside GT's CI, same verdict at p < {fmt_num(t.alpha)}"
        if an is None:
            rows.append(_verdict(name, "n/a", "", None, f"no {FILES['ancova']}"))
            continue
        g = an[(an["source"] == t.gt) & (an["week"] == w)]
        if not len(g):
            rows.append(_verdict(name, "n/a", "", None, f"no GT arm effect at week {w}"))
            continue
        for r in g.itertuples():
            u = an[(an["source"] == t.unet) & (an["week"] == w) & (an["term"] == r.term)]
            label = name if len(g) == 1 else f"{name} ({r.term})"
            ci = f"GT {fmt_ci(r.estimate, r.ci_low, r.ci_high)}"
            if not len(u) or as_number(u["estimate"].iloc[0]) is None:
                rows.append(_verdict(label, "n/a", ci, None, f"no {t.unet} arm effect at week {w}"))
                continue
            est, pu = float(u["estimate"].iloc[0]), as_number(u["p"].iloc[0])
            margin = min(est - r.ci_low, r.ci_high - est)
            sig_g, sig_u = (as_number(r.p) is not None and r.p < t.alpha), (pu is not None and pu < t.alpha)
            value = f"{fmt_num(est)}, {fmt_p(pu)} (GT {fmt_p(r.p)})"
            v = _verdict(label, value, ci, margin)
            if sig_g != sig_u:
                v.update(met=False, verdict=f"missed: verdict at p < {fmt_num(t.alpha)} differs from GT's "
                                            f"({'significant' if sig_g else 'not significant'} for GT); "
                                            + (f"estimate inside the CI, margin {fmt_num(margin)}" if margin >= 0
                                               else f"estimate outside the CI by {fmt_num(-margin)}"))
            rows.append(v)
    return rows


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = [[str(c).replace("|", "\\|") for c in r] for r in [header, *rows]]
    return (["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(r) + " |" for r in esc[1:]])


def _section(title: str, tab: pd.DataFrame | None, key: str, render) -> list[str]:
    lines = ["", f"## {title}", ""]
    if tab is None or not len(tab):
        return lines + [f"Not available: no {FILES[key]} in the validation folder."]
    return lines + render(tab)


def _table2(t: pd.DataFrame) -> list[str]:
    metrics = [("dc", "DC"), ("ppv", "PPV"), ("tpr", "TPR"), ("ltpr", "LTPR"), ("lfpr", "LFPR")]
    rows = []
    for src in dict.fromkeys(t["source"]):
        d = t[t["source"] == src].set_index("column")
        rows.append([src] + [f"{fmt_num(d.at[c, 'mean'])} ± {fmt_num(d.at[c, 'sd'])}" if c in d.index else "n/a"
                             for c, _ in metrics])
    return ["Mean ± SD over visits (Table 2, docs/DESIGN.md §8)."] + [""] + _md_table(
        ["source"] + [m for _, m in metrics], rows)


def _agreement(t: pd.DataFrame) -> list[str]:
    rows = [[r.source, str(int(r.n)), fmt_ci(r.icc21, r.icc21_ci_low, r.icc21_ci_high),
             fmt_ci(r.icc31, r.icc31_ci_low, r.icc31_ci_high), fmt_num(r.bias),
             f"{fmt_num(r.loa_low)} to {fmt_num(r.loa_high)}", fmt_num(r.bias_pct_gt),
             f"{fmt_num(r.pct_loa_low)} to {fmt_num(r.pct_loa_high)}"] for r in t.itertuples()]
    return (["TLV of each source against GT's, per visit: ICC(2,1) absolute agreement and ICC(3,1) "
             "consistency with 95 % CIs; Bland–Altman bias (source − GT, mL), 95 % limits of agreement, "
             "bias in % of the mean GT TLV, and limits of the percent differences."] + [""]
            + _md_table(["source", "visits", "ICC(2,1)", "ICC(3,1)", "bias (mL)", "LoA (mL)", "bias (% GT)",
                         "LoA (%)"], rows))


def _uncertainty(t: pd.DataFrame) -> list[str]:
    rows = [[str(getattr(r, "source", "")), str(int(r.n_auroc)),
             f"{fmt_num(r.auroc_mean)} ± {fmt_num(r.auroc_sd)}", f"{fmt_num(r.auroc_min)} to {fmt_num(r.auroc_max)}",
             f"{fmt_num(r.spearman_rho)} ({fmt_p(r.spearman_p)}, n = {int(r.spearman_n)})"] for r in t.itertuples()]
    return (["AUROC of the mutual-information map for voxel errors inside the brain (1 perfect, 0.5 chance), "
             "and Spearman ρ of per-visit Dice against mean MI (negative: worse visits are more uncertain)."]
            + [""] + _md_table(["source", "visits", "AUROC mean ± SD", "AUROC range", "Spearman ρ (Dice ~ MI)"],
                               rows))


def _detection(t: pd.DataFrame) -> list[str]:
    rows = [[r.source, r.bin, f"{int(r.n_gt_detected)}/{int(r.n_gt)}", f"{int(r.n_pred_tp)}/{int(r.n_pred)}",
             fmt_num(r.sensitivity), fmt_num(r.precision), fmt_num(r.f1)] for r in t.itertuples()]
    return (["Lesion-wise detection of new lesions, pooled over follow-up visits (size in voxels)."] + [""]
            + _md_table(["source", "size", "GT detected", "pred. true pos.", "sensitivity", "precision", "F1"],
                        rows))


def _effects(t: pd.DataFrame, est: str, lo: str, hi: str, keys: list[str]) -> list[str]:
    term = t["term"].astype(str)
    t = t[term.str.startswith("arm_") & ~term.str.contains("_x_")]  # the arm effects, not interactions
    rows = [[str(getattr(r, k)) for k in keys] + [str(r.term), fmt_ci(getattr(r, est), getattr(r, lo),
                                                                      getattr(r, hi)), fmt_p(r.p)]
            for r in t.itertuples()]
    return _md_table(keys + ["term", "estimate (95 % CI)", "p"], rows) if rows else ["No arm term."]


def _truth(t: pd.DataFrame) -> list[str]:
    def covered(v) -> str:
        if isinstance(v, str):
            return {"true": "yes", "false": "no"}.get(v.strip().lower(), "n/a")
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else ("yes" if v else "no")

    rows = [[str(r.quantity), str(r.term), str(r.detail), fmt_num(r.truth),
             "n/a" if pd.isna(r.source) else str(r.source), "" if pd.isna(r.endpoint) else str(r.endpoint),
             fmt_ci(r.estimate, r.ci_low, r.ci_high) if pd.notna(r.estimate) else "n/a", covered(r.covered)]
            for r in t.itertuples()]
    notes = sorted({str(n) for n in t["note"] if pd.notna(n) and str(n)})
    return (["The synthetic trial's true effects (its truth/params.json) and each source's estimate with its "
             "95 % CI; covered: the truth lies inside the CI."] + [""]
            + _md_table(["quantity", "term", "detail", "truth", "source", "endpoint", "estimate (95 % CI)", "covered"],
                        rows) + ([""] + [f"Note: {n}." for n in notes] if notes else []))


def _new_lesion_sizes(t: pd.DataFrame) -> list[str]:
    def n(v) -> str:
        return "n/a" if pd.isna(v) else str(int(v))

    side = t["side"].astype(str)
    tn, tu, mk = t[side == "truth_new"], t[side == "truth_unchanged"], t[side == "masks_new"]
    out = ["GT masks (MNI 1×1×3 mm grid, tracked against the previous visit) against the generator's truth, "
           "by size in voxels of 3 µL: the truth's nominal size (its continuous lesion), or the mask lesion's own. "
           "Native grid: the truth table's voxel counts in each visit's own 1×1×3 mm grid, identities known, "
           "i.e. what sampling into the grid alone does.", "", "True new lesions (onset after the reference visit):", ""]
    out += _md_table(["nominal size", "lesions", "new in masks", "enlarging in masks", "other in masks",
                      "missed in masks", "new in native grid", "native/nominal voxels (median)"],
                     [[r.bin, n(r.n), n(r.n_new_in_masks), n(r.n_enlarging_in_masks), n(r.n_other_in_masks),
                       n(r.n_missed_in_masks), n(r.n_native_new), fmt_num(r.native_over_nominal_median)]
                      for r in tn.itertuples()])
    out += ["", "Lesions the generator did not grow (stable or shrinking): called new or enlarging?", ""]
    out += _md_table(["nominal size", "lesions", "new in masks", "enlarging in masks", "new or enlarging in native grid"],
                     [[r.bin, n(r.n), n(r.n_new_in_masks), n(r.n_enlarging_in_masks), n(r.n_native_new)]
                      for r in tu.itertuples()])
    out += ["", "The GT masks' new lesions (any size from the metrics' 3 voxels), true or not:", ""]
    out += _md_table(["mask size", "new in masks", "true new", "share true"],
                     [[r.bin, n(r.n), n(r.n_true), fmt_num(r.share)] for r in mk.itertuples()])
    return out


def _new_lesion_floors(t: pd.DataFrame) -> list[str]:
    rows = [[f"{int(r.floor)}{' (chosen)' if str(r.chosen).lower() == 'true' else ''}",
             f"{int(r.n_equal)}/{int(r.n_followups)}", str(int(r.n_masks)), str(int(r.n_truth)),
             f"{int(r.n_equal_native)}/{int(r.n_followups)}", fmt_num(r.precision), fmt_num(r.sensitivity)]
            for r in t.itertuples()]
    return (["Per candidate size floor f: follow-ups where the GT masks' count of new lesions of ≥ f voxels "
             "equals the truth's (nominal ≥ f), the totals, the same for the native grid's count, and the "
             "precision of the masks' new lesions ≥ f and the sensitivity for true new lesions ≥ f. The floor "
             "rule (docs/DESIGN.md §9b): the smallest f with equal counts on ≥ 90 % of follow-ups."] + [""]
            + _md_table(["floor (voxels)", "follow-ups equal", "new in masks", "new in truth",
                         "native grid equal", "precision", "sensitivity"], rows))


def _enlarge_floors(t: pd.DataFrame) -> list[str]:
    rows = [[f"{int(r.floor)}{' (chosen)' if str(r.chosen).lower() == 'true' else ''}",
             f"{int(r.n_equal)}/{int(r.n_followups)}", str(int(r.n_masks)), str(int(r.n_truth)),
             f"{int(r.n_equal_native)}/{int(r.n_followups)}", str(int(r.n_native))] for r in t.itertuples()]
    return (["Per candidate gain floor g (what `lesions.enlarge_voxels: g` counts): follow-ups where the GT "
             "masks' count of enlarging lesions grown by ≥ g voxels over their reference volume equals the "
             "truth's (nominal growth ≥ g), the totals, and the same for the native grid's count. The rule of "
             "the new-lesion floor picks the chosen row; the default stays the specification's 3 voxels "
             "(docs/DESIGN.md §9b)."] + [""]
            + _md_table(["gain floor (voxels)", "follow-ups equal", "enlarging in masks", "enlarging in truth",
                         "native grid equal", "enlarging in native grid"], rows))


def _signed(x, spec: str, scale: float = 1.0) -> str:
    """``scale * x`` formatted by ``spec`` (a signed format), 0 without a sign; n/a when missing."""
    x = as_number(x)
    if x is None:
        return "n/a"
    text = format(scale * x, spec)
    return text.lstrip("+-") if float(text) == 0 else text


def _change_response(t: pd.DataFrame) -> list[str]:
    sources = list(dict.fromkeys(t["source"]))
    rows = []
    for (week, arm, cls), g in t.groupby(["week", "arm", "class"], sort=False):
        by = g.set_index("source")
        first = g.iloc[0]
        cells = []
        for s in sources:
            if s not in by.index:
                cells.append("n/a")
                continue
            r = by.loc[s]
            ratio = "–" if pd.isna(r["over_gt"]) else fmt_num(r["over_gt"])
            cells.append(f"{ratio} ({_signed(r['excess_ml_mean'], '+.3f')} ± {fmt_num(r['excess_ml_se'])} mL)")
        rows.append([str(int(week)), str(arm), str(cls),
                     f"{int(first['n_lesions'])} ({int(first['n_participants'])})",
                     f"{_signed(first['mean_relative_change'], '+.1f', 100.0)} %",
                     _signed(first["nominal_voxels"], "+.0f"), _signed(first["gt_voxels"], "+.0f"), *cells])
    return (["Each truth lesion alone in its GT component at baseline and at the follow-up, by the truth's "
             "change of volume since baseline: lesions (participants), their mean relative change, the summed "
             "change of the nominal volume and of GT (voxels), and per source its change over GT's (– where "
             "GT's is under 50 voxels) with its excess over GT per participant (mean ± SE). A source that "
             "follows change as GT does has ratios near 1; a TLV endpoint inherits what it misses."] + [""]
            + _md_table(["week", "arm", "truth's change", "lesions (participants)", "mean change", "nominal",
                         "GT", *sources], rows))


def _lesion_types(t: pd.DataFrame) -> list[str]:
    sources = list(dict.fromkeys(t["source"]))
    rows = []
    for (group, value), g in t.groupby(["group", "value"], sort=False):
        by = g.set_index("source")
        first = g.iloc[0]
        rows.append([str(group), str(value), str(int(first["n"])), fmt_num(first["median_voxels"])]
                    + [f"{fmt_num(by.at[s, 'sensitivity'])} ({int(by.at[s, 'n_found'])})" if s in by.index else "n/a"
                       for s in sources])
    return (["Lesions of the generator (all visits, ≥ 3 native voxels) found by each source's mask (a voxel "
             "within 3 mm of the lesion's place in MNI), by the clinical profile's contrast type and location: "
             "sensitivity (lesions found). The GT column checks the placement."] + [""]
            + _md_table(["group", "value", "lesions", "median nominal voxels", *sources], rows))


def build_document(folder, *, commit: str, config: str, targets: Targets = Targets(),
                   figures_href: str = "validation", discussion: str | None = None) -> str:
    """The text of docs/VALIDATION.md from the tables and PNGs in ``folder``.

    ``commit`` and ``config`` name what the run came from; ``figures_href`` is the figures'
    folder as the document links it (relative to the document); ``discussion``, hand-written
    markdown (why a target is missed), is added as the last section, as it is.
    """
    tables = read_tables(folder)
    lines = ["# Validation study on known truth", "",
             "Generated by the validation run (docs/DESIGN.md §15); do not edit by hand.", "",
             f"* commit: `{commit}`", f"* config: `{config}`", "", "## Targets", ""]
    rows = evaluate_targets(tables, targets)
    lines += _md_table(["target", "value", "threshold", "verdict"],
                       [[r["target"], r["value"], r["threshold"], r["verdict"]] for r in rows])
    n_met = sum(r["met"] is True for r in rows)
    n_missed = sum(r["met"] is False for r in rows)
    lines += ["", f"{n_met} met, {n_missed} missed, {len(rows) - n_met - n_missed} not evaluated."]
    lines += _section("Segmentation (Table 2)", tables.get("table2"), "table2", _table2)
    lines += _section("TLV agreement", tables.get("tlv_agreement"), "tlv_agreement", _agreement)
    lines += _section("Uncertainty and errors", tables.get("uncertainty"), "uncertainty", _uncertainty)
    lines += _section("New-lesion detection", tables.get("detection"), "detection", _detection)
    lines += _section("ANCOVA arm effect (% change in TLV)", tables.get("ancova"), "ancova",
                      lambda t: _effects(t[t["term_type"] == "arm"], "estimate", "ci_low", "ci_high",
                                         ["source", "week"]))
    lines += _section("Cox models (hazard ratio)", tables.get("cox"), "cox",
                      lambda t: _effects(t, "hr", "hr_ci_low", "hr_ci_high", ["source", "endpoint", "model"]))
    lines += _section("Negative binomial (new-lesion rate ratio)", tables.get("nb"), "nb",
                      lambda t: _effects(t[t["term_type"] == "arm"], "rate_ratio", "ci_low", "ci_high",
                                         ["source", "model"]))
    lines += _section("Known truth of the generator against the estimates", tables.get("truth"), "truth", _truth)
    if "lesion_types" in tables:
        lines += _section("Which lesions are found: contrast type and location", tables["lesion_types"],
                          "lesion_types", _lesion_types)
    if "change_response" in tables:
        lines += _section("Does each source follow the truth's lesion-volume change?", tables["change_response"],
                          "change_response", _change_response)
    lines += _section("New lesions of the GT masks against the generator's truth", tables.get("new_lesion_sizes"),
                      "new_lesion_sizes", _new_lesion_sizes)
    lines += _section("Size floor for counting a new lesion", tables.get("new_lesion_floors"), "new_lesion_floors",
                      _new_lesion_floors)
    if "enlarge_floors" in tables:
        lines += _section("Gain floor for counting an enlarging lesion", tables["enlarge_floors"], "enlarge_floors",
                          _enlarge_floors)
    pngs = sorted(p.name for p in Path(folder).glob("*.png"))
    lines += ["", "## Figures", ""]
    lines += [f"![{p[:-4]}]({figures_href}/{p})" for p in pngs] or ["No figure in the validation folder."]
    if discussion and discussion.strip():
        lines += ["", "## Discussion (hand-written, from the validation run's numbers)", "", discussion.strip()]
    return "\n".join(lines) + "\n"


#: The run's facts beside the tables (commit, config, discussion), so the document can be rebuilt from the folder.
RUN_FILE = "run.json"


def write_document(folder, out_md, *, commit: str, config: str, targets: Targets = Targets(),
                   figures_href: str = "validation", discussion: str | None = None) -> str:
    """:func:`build_document` written to ``out_md``; returns the text."""
    text = build_document(folder, commit=commit, config=config, targets=targets, figures_href=figures_href,
                          discussion=discussion)
    Path(out_md).parent.mkdir(parents=True, exist_ok=True)
    Path(out_md).write_text(text, encoding="utf-8")
    return text


def rebuild(folder, out_md, discussion_md=None) -> str:
    """docs/VALIDATION.md again from a validation folder alone (its tables, figures and
    :data:`RUN_FILE`), e.g. the committed docs/validation/: the same text as the run wrote, or
    with an edited ``discussion_md``."""
    import json

    folder = Path(folder)
    run_file = folder / RUN_FILE
    if not run_file.is_file():
        raise InputError(f"{run_file}: not found; {folder} is not a folder the validation run wrote")
    run = json.loads(run_file.read_text(encoding="utf-8"))
    disc = Path(discussion_md).read_text(encoding="utf-8") if discussion_md and Path(discussion_md).is_file() else None
    href = Path(os.path.relpath(folder, Path(out_md).parent)).as_posix()
    return write_document(folder, out_md, commit=run["commit"], config=run["config"], figures_href=href,
                          discussion=disc)


def main(argv=None) -> int:
    """``python -m t2lesion.validation.document [FOLDER] [DOCUMENT] [--discussion MD]``: :func:`rebuild`."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m t2lesion.validation.document", description=rebuild.__doc__)
    ap.add_argument("folder", nargs="?", default="docs/validation")
    ap.add_argument("document", nargs="?", default="docs/VALIDATION.md")
    ap.add_argument("--discussion", default="docs/validation-discussion.md",
                    help="hand-written discussion added as the last section, if the file exists")
    a = ap.parse_args(argv)
    try:
        rebuild(a.folder, a.document, a.discussion)
    except (InputError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}")
        return 2
    print(f"{a.document}: written from {a.folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["FILES", "RUN_FILE", "Targets", "build_document", "evaluate_targets", "main", "read_result_tsv", "read_tables",
           "rebuild", "write_document"]
