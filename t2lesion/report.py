"""``results/report/summary.md``: the run as the paper presents it, in plain Markdown.

For readers outside Snakemake's HTML report: per test trial, Table 1 (cohort by arm),
Table 2 (segmentation and detection, every source side by side), the ANCOVA arm effect
on percent TLV change (Fig. 3d–g's test), Table 4 (Cox models; a model that could not
run says why), the Kaplan–Meier log-rank tests (Fig. 4), the new/enlarging lesion rate
ratio (beyond the paper), then the U-Net training summary (per fold: best epoch and its
validation Dice, the fold's threshold and its held-out Dice) and relative links to every
figure. Under Table 2 a line says where the U-Net's masks were cut (``inference.threshold``).
Numbers with 3 significant digits, p values as ``p = 0.0123`` or ``p < 0.001``
(:mod:`t2lesion.formatting`, as Table 1 and the figures print them).

Everything is read from the tables the other rules wrote; nothing is recomputed here.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from t2lesion.io import atomic_output
from t2lesion.formatting import fmt_ci, fmt_num, fmt_p
from t2lesion.stats.table1 import source_label

log = logging.getLogger(__name__)

OK_STATUSES = ("ok", "warning")
#: The term a Cox model's row stands for when the model did not run (its term is empty).
MODEL_TERMS = {"univariable_log_tlv": "BL T2 TLV (log)", "univariable_tlc": "BL T2 TLC",
               "multivariable": "(every term)"}


def _cell(value) -> str:
    """A table cell as Markdown-safe text (pipes escaped, line breaks removed)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).replace("|", "\\|").replace("\n", " ").strip()


def md_table(df: pd.DataFrame) -> str:
    """A DataFrame as a GitHub-flavoured Markdown pipe table."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(_cell(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def _read(path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def _num(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _sources_of(df: pd.DataFrame, suffix: str) -> list[str]:
    """Sources of a wide ``<source>.<value>`` table, in column order."""
    return [c[: -len(suffix) - 1] for c in df.columns if c.endswith("." + suffix)]


def short_note(note, limit: int = 160) -> str:
    """A status note for reading: each ``;``-separated part cut at its first sentence or URL,
    the whole cut at ``limit`` characters (the TSV keeps the full text)."""
    parts = []
    for part in str(note or "").split("; "):
        part = re.split(r"(?<=[a-z0-9)])\. |https?://|Please see", part.strip(), maxsplit=1)[0].strip(" .:")
        if part and part not in parts:
            parts.append(part)
    text = "; ".join(parts)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _result_or_reason(row, src: str, text: str) -> str:
    """``text`` for a model that ran, ``status: reason`` for one that did not, "" where the
    source has no row (a wide table's other sources ran a row this one lacks)."""
    status = row.get(f"{src}.status", "")
    note = short_note(row.get(f"{src}.note", ""))
    if not status:
        return ""
    if status not in OK_STATUSES:
        return f"{status}: {note}" if note else status
    return f"{text} ({status}: {note})" if status == "warning" and note else text


# ----------------------------------------------------------------------------- sections


def table2_section(table2: pd.DataFrame) -> pd.DataFrame:
    """Table 2 with one column per source (its ``mean ± SD`` or r summary)."""
    t = table2.copy()
    sources = list(dict.fromkeys(t["source"]))
    keys = ["block", "metric"]
    out = t[keys].drop_duplicates().reset_index(drop=True)
    for src in sources:
        block = t[t["source"] == src].drop_duplicates(keys)
        text = [fmt_num(m) if sd != sd else f"{fmt_num(m)} ± {fmt_num(sd)}"
                for m, sd in zip(block["mean"].map(_num), block["sd"].map(_num))]
        out = out.merge(block[keys].assign(**{src: text}), on=keys, how="left")
    # the visits of a source: its largest n (a metric undefined on some visits, e.g. PPV
    # where a mask is empty, rests on fewer: those carry their own "(n = k)")
    t["n"] = pd.to_numeric(t["n"], errors="coerce")
    n = t.groupby("source", sort=False)["n"].max()
    for src in sources:
        block = t[t["source"] == src].drop_duplicates(keys).set_index(keys)["n"]
        fewer = [block.get((b, m), np.nan) for b, m in zip(out["block"], out["metric"])]
        out[src] = [f"{v} (n = {k:g})" if isinstance(v, str) and k == k and k < n[src] else v
                    for v, k in zip(out[src], fewer)]
    out.columns = [*keys, *[f"{s} (n = {n[s]:g} visits)" for s in sources]]
    return out


def ancova_section(wide: pd.DataFrame) -> pd.DataFrame:
    """ANCOVA arm effect per week: estimate (CI) and p per source, or why it was skipped."""
    rows = []
    for _, r in wide.iterrows():
        row = {"week": r["week"], "term": r["label"] or "arm effect"}
        for src in _sources_of(wide, "estimate"):
            text = f"{fmt_ci(r[f'{src}.estimate'], r[f'{src}.ci_low'], r[f'{src}.ci_high'])}, " \
                   f"{fmt_p(r[f'{src}.p'])}, n = {r[f'{src}.n']}"
            row[source_label(src)] = _result_or_reason(r, src, text)
        rows.append(row)
    return pd.DataFrame(rows)


def table4_section(table4: pd.DataFrame) -> pd.DataFrame:
    """Table 4: HR (CI) and p per source and term, or the reason a model was skipped."""
    rows: dict[tuple, dict] = {}
    for _, r in table4.iterrows():
        model = "multivariable" if r["model"] == "multivariable" else "univariable"
        term = r["label"] or MODEL_TERMS.get(r["model"], r["model"])
        # a model that ran for one source and not for another has two rows in the wide table
        # (its skipped row has no term): one row here, each source's cell where it has one
        row = rows.setdefault((r["endpoint"], model, term), {"endpoint": r["endpoint"], "model": model, "term": term})
        for src in _sources_of(table4, "hr"):
            text = f"{fmt_ci(r[f'{src}.hr'], r[f'{src}.hr_ci_low'], r[f'{src}.hr_ci_high'])}, " \
                   f"{fmt_p(r[f'{src}.p'])} (n = {r[f'{src}.n']}, events {r[f'{src}.events']})"
            cell = _result_or_reason(r, src, text)
            if cell or source_label(src) not in row:
                row[source_label(src)] = cell
    return pd.DataFrame(list(rows.values()))


def km_section(tests: pd.DataFrame) -> pd.DataFrame:
    """Log-rank tests (low vs high baseline TLV) per source, endpoint and arm."""
    rows = []
    for _, r in tests.iterrows():
        if r["status"] in OK_STATUSES:
            result = f"χ² = {fmt_num(_num(r['chi2']))}, {fmt_p(r['p'])}"
        else:
            result = f"{r['status']}: {short_note(r['note'])}"
        rows.append({"source": source_label(r["source"]), "endpoint": r["endpoint"], "arm": r["arm"],
                     "n low / high": f"{r['n_low']} / {r['n_high']}",
                     "events low / high": f"{r['events_low']} / {r['events_high']}",
                     "log-rank": result})
    return pd.DataFrame(rows)


def rate_ratio_section(nb: pd.DataFrame) -> pd.DataFrame:
    """The arm rows of the count models: rate ratio (CI) and p, per source and model, and each
    model that did not run (its row has no term) with its reason."""
    skipped = nb[~nb["status"].isin(OK_STATUSES) & (nb["term_type"] != "arm")].drop_duplicates(["source", "model"])
    arm = pd.concat([nb[nb["term_type"] == "arm"], skipped]).sort_index()
    rows = []
    for _, r in arm.iterrows():
        if r["status"] not in OK_STATUSES:
            result = f"{r['status']}: {short_note(r['note'])}"
        elif _num(r["rate_ratio"]) == _num(r["rate_ratio"]):  # a model with a rate ratio
            result = f"{fmt_ci(r['rate_ratio'], r['ci_low'], r['ci_high'])}, {fmt_p(r['p'])}"
        else:  # the rank-sum sensitivity row: a p value only
            result = fmt_p(r["p"])
        if r["status"] == "warning" and r["note"]:
            result += f" ({short_note(r['note'])})"
        label = r["label"] if isinstance(r["label"], str) else ""
        rows.append({"source": source_label(r["source"]), "model": r["model"].replace("_", " "),
                     "term": label, "rate ratio (CI), p": result})
    return pd.DataFrame(rows)


def corrections_line(status: pd.DataFrame) -> str:
    """One line on the readers' corrections behind the ``reviewed`` source (corrections.tsv)."""
    st = status["status"].fillna("")
    applied, rejected = int((st == "applied").sum()), int(st.str.startswith("rejected").sum())
    raters = sorted({r for r in status.loc[st == "applied", "rater"].fillna("").astype(str) if r})
    text = (f"Reader corrections: {applied} of {len(status)} visits corrected (their masks in the `reviewed` "
            f"source; the others are the U-Net's), {rejected} rejected")
    if applied:
        added = pd.to_numeric(status.loc[st == "applied", "added_voxels"], errors="coerce").sum()
        removed = pd.to_numeric(status.loc[st == "applied", "removed_voxels"], errors="coerce").sum()
        text += f"; {added:g} voxels added and {removed:g} removed in native space"
    if raters:
        text += f"; raters {', '.join(raters)}"
    return text


def training_section(histories: Mapping[str, str | Path],
                     thresholds: Mapping[str, str | Path] | None = None) -> pd.DataFrame:
    """Per fold: epochs run, the best epoch (the one model.keras holds) and its validation Dice;
    with ``thresholds`` (fold -> threshold.json) also the fold's threshold and the mean Dice of
    its held-out visits predicted whole, at that threshold and at 0.5."""
    rows = []
    for fold, path in histories.items():
        h = pd.read_csv(path, sep="\t")
        best = h[h["best"].astype(str).isin(["1", "True", "true", "1.0"])]
        b = best.iloc[-1] if len(best) else h.loc[h["val_dice"].idxmax()]
        row = {"fold": fold, "epochs": len(h), "best epoch": int(b["epoch"]),
               "validation Dice (best epoch)": fmt_num(b["val_dice"]),
               "validation loss (best epoch)": fmt_num(b["val_loss"])}
        if thresholds and thresholds.get(fold):
            info = json.loads(Path(thresholds[fold]).read_text())
            row.update({"threshold": fmt_num(info["threshold"]),
                        "held-out visits": info["n_visits"],
                        "held-out Dice at threshold": fmt_num(info.get("mean_dice")),
                        "held-out Dice at 0.5": fmt_num(info.get("mean_dice_at_0.5"))})
        rows.append(row)
    return pd.DataFrame(rows)


def unet_threshold_line(unet_threshold: Mapping | None) -> str:
    """The line under Table 2 that says where the U-Net's masks were cut
    (:func:`t2lesion.unet.threshold.resolve_threshold` on the inference jobs' inputs); "" when
    ``unet`` is not a source."""
    if not unet_threshold:
        return ""
    from t2lesion.unet.threshold import resolve_threshold

    u = unet_threshold
    return resolve_threshold(u["setting"], u.get("files") or [], int(u["n_models"]), u.get("folder")).line()


# ------------------------------------------------------------------------------ writer


def _link(path: str | Path, base: Path, text: str | None = None) -> str:
    rel = os.path.relpath(Path(path), base).replace(os.sep, "/")
    return f"[{text or Path(path).name}]({rel})"


def _figure_list(figures: Mapping[str, Sequence], base: Path, max_each: int = 20) -> list[str]:
    lines = []
    for label, paths in figures.items():
        paths = list(paths)
        if not paths:
            continue
        shown = ", ".join(_link(p, base) for p in paths[:max_each])
        more = f" and {len(paths) - max_each} more beside them" if len(paths) > max_each else ""
        lines.append(f"- {label}: {shown}{more}")
    return lines


def summary_markdown(trials: Mapping[str, Mapping], histories: Mapping[str, str | Path] | None,
                     out_md: str | Path, training_figures: Mapping[str, Sequence] | None = None,
                     thresholds: Mapping[str, str | Path] | None = None,
                     unet_threshold: Mapping | None = None, conf_level: float = 0.95) -> str:
    """The Markdown text (links relative to ``out_md``'s folder).

    ``trials`` maps each test trial to its files: table1, table2, ancova, table4, km (TSV
    paths; any may be absent or None: that section is left out or says why), nb (optional)
    and figures (label -> list of paths); ``notes``: lines for the sections the trial cannot
    have; ``problems``: a trial that failed validation, whose problems are listed instead.
    ``histories`` maps a fold label to its history.tsv (None or empty: no training section);
    ``thresholds`` a fold label to its threshold.json. ``unet_threshold``: :meth:`t2lesion.plan.Plan.unet_threshold` (the line
    under Table 2 that says where the U-Net's masks were cut). ``conf_level``: the level of
    every interval the stats rules computed (``stats.conf_level``), said in the headings.
    """
    threshold_line = unet_threshold_line(unet_threshold)
    ci = f"{100 * conf_level:g} % CI"
    base = Path(out_md).parent
    out = ["# T2-lesion endpoint analyses: summary", "",
           "Tables and figures of Krishnan et al. (Sci. Rep. 2023) regenerated by this run. "
           "Numbers have 3 significant digits; the TSVs linked below hold them in full. "
           "A model that could not run says why instead of giving numbers.", ""]
    for trial, files in trials.items():
        out += [f"## trial-{trial}", ""]
        if files.get("problems"):
            problems = list(files["problems"])
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            out += [f"Not analysed: its BIDS folder failed validation with {len(problems)} problem(s){more}; "
                    "the validate_bids job's log lists them all:", "",
                    *[f"- {_cell(p)}" for p in problems[:3]], ""]
            continue
        sections = [
            ("table1", "Table 1: cohort by arm", lambda p: md_table(_read(p))),
            ("table2", "Table 2: segmentation and detection (mean ± SD over visits; r: Pearson)",
             lambda p: md_table(table2_section(_read(p)))),
            ("ancova", f"ANCOVA: arm effect on percent TLV change from baseline (estimate ({ci}), p)",
             lambda p: md_table(ancova_section(_read(p)))),
            ("table4", f"Table 4: Cox proportional-hazards models (HR ({ci}), p)",
             lambda p: md_table(table4_section(_read(p)))),
            ("km", "Fig. 4: Kaplan–Meier log-rank tests, baseline TLV above vs at most the median",
             lambda p: md_table(km_section(_read(p)))),
            ("nb", f"New and enlarging T2 lesions: rate ratio ({ci}) vs the control arm (beyond the paper)",
             lambda p: md_table(rate_ratio_section(_read(p)))),
        ]
        for key, title, render in sections:
            path = files.get(key)
            if not path:
                continue
            out += [f"### {title}", "", f"From {_link(path, base)}.", "", render(path), ""]
            if key == "table2" and threshold_line:
                out += [threshold_line + ".", ""]
        if threshold_line and not files.get("table2"):  # a trial without GT: said all the same
            out += [threshold_line + ".", ""]
        out += [f"{note}." for note in files.get("notes", [])] + ([""] if files.get("notes") else [])
        if files.get("corrections"):
            out += [corrections_line(_read(files["corrections"])) + f" ({_link(files['corrections'], base)}).", ""]
        if files.get("figures"):
            out += ["### Figures", "", *_figure_list(files["figures"], base), ""]
    if histories:
        out += ["## U-Net training", "", md_table(training_section(histories, thresholds)), ""]
        if training_figures:
            out += [*_figure_list(training_figures, base), ""]
    return "\n".join(out)


def write_summary(trials: Mapping[str, Mapping], histories: Mapping[str, str | Path] | None, out_md: str | Path,
                  training_figures: Mapping[str, Sequence] | None = None,
                  thresholds: Mapping[str, str | Path] | None = None, unet_threshold: Mapping | None = None,
                  conf_level: float = 0.95) -> Path:
    """Write :func:`summary_markdown` to ``out_md``."""
    text = summary_markdown(trials, histories, out_md, training_figures, thresholds, unet_threshold, conf_level)
    out_md = Path(out_md)
    with atomic_output(out_md) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    log.info("summary of %d trial(s) written to %s", len(trials), out_md)
    return out_md


__all__ = ["ancova_section", "km_section", "md_table", "rate_ratio_section", "summary_markdown",
           "table2_section", "table4_section", "training_section", "unet_threshold_line", "write_summary"]
