"""The new/enlarging endpoint of a finished run at other gain floors for enlarging lesions
(``lesions.enlarge_voxels``; docs/validation-discussion.md): a look after the fact at what the
specification's 3 voxels count.

Every source's masks of the trial (GT first) are tracked again with each ``--enlarge-voxels``
value and the rest of the run's tracking settings (``config.yaml``, the validation overlay
changes none), and the count endpoint is fitted again as rule ``new_lesions`` fits it
(``t2lesion.tracking.run_tracking``, ``t2lesion.stats.counts.run_new_lesions``), into a
temporary folder: the run's own files are only read. A ``truth`` source counts the generator's
lesions by the same rule on their nominal volumes (new: onset after the reference visit and at
least ``lesions.new_min_voxels``; enlarging: grown by >= 50 % and >= the gain floor;
``t2lesion.validation.new_lesion_truth.truth_lesions``), with GT's covariates. Printed per
value: new and enlarging lesions per source and arm, and the negative-binomial rate ratio with
its CI and p.

    .venv/bin/python benchmarks/enlarge_floor_endpoint.py [--results results] [--trial valtest]
        [--enlarge-voxels 3 20 50] [--control-arm PLA]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from t2lesion.config import check_config  # noqa: E402
from t2lesion.io import read_image, voxel_volume_ml  # noqa: E402
from t2lesion.plan.paths import mask_path  # noqa: E402
from t2lesion.stats.counts import count_endpoint, run_new_lesions  # noqa: E402
from t2lesion.tracking import run_tracking, week_from_session  # noqa: E402
from t2lesion.validation.new_lesion_truth import truth_lesions  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("gt", "classical", "unet")


def track_and_fit(results: Path, trial: str, enlarge_voxels: int, control_arm: str,
                  work: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One gain floor: tracking of every source and subject into ``work``, then the endpoint; returns
    the per-subject counts and the endpoint's results, each with the ``truth`` source added."""
    cfg = check_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    les, met = cfg["lesions"], cfg["metrics"]
    params = {"new_overlap": les["new_overlap"], "enlarge_relative": les["enlarge_relative"],
              "enlarge_voxels": enlarge_voxels, "connectivity": met["connectivity"],
              "min_size": met["min_lesion_voxels"], "new_min_size": les["new_min_voxels"]}
    visits = {}
    for src in SOURCES:
        for sub_dir in sorted((results / "lesions" / src / f"trial-{trial}").glob("sub-*")):
            sub = sub_dir.name.removeprefix("sub-")
            run = pd.read_csv(sub_dir / f"{sub_dir.name}_visits.tsv", sep="\t", dtype=str)
            sessions = sorted(run["session"], key=week_from_session)  # every tracked visit, baseline included
            out = work / src / sub_dir.name
            out.mkdir(parents=True, exist_ok=True)
            # the run's masks under --results (mask_path names them relative to the checkout)
            masks = [results / Path(mask_path(trial, sub, s.removeprefix("ses-"), src)).relative_to("results")
                     for s in sessions]
            run_tracking(masks, sessions,
                         out / "lesions.tsv", out / "visits.tsv", out / "qc", participant_id=sub_dir.name,
                         reference=les["reference"], **params)
            visits.setdefault(src, []).append(out / "visits.tsv")
    outs = {k: str(work / f"{k}.tsv") for k in ("subjects", "visits", "by_arm", "nb", "exclusions")}
    outs.update(fig_rates=str(work / "rates.png"), fig_forest=str(work / "forest.png"))
    run_new_lesions(visits, results / "synth" / f"trial-{trial}" / "bids" / "participants.tsv", outs,
                    control_arm=control_arm, validated_visits_tsv=results / "validated" / f"trial-{trial}_visits.tsv")
    subjects = pd.read_csv(outs["subjects"], sep="\t", dtype={"participant_id": str})
    nb = pd.read_csv(outs["nb"], sep="\t")
    truth = truth_subjects(results, trial, subjects[subjects["source"] == "gt"], les, enlarge_voxels)
    tnb, _ = count_endpoint(truth, control_arm)
    return pd.concat([subjects, truth], ignore_index=True), pd.concat([nb, tnb], ignore_index=True)


def truth_subjects(results: Path, trial: str, gt: pd.DataFrame, les: dict, enlarge_voxels: int) -> pd.DataFrame:
    """GT's per-subject rows with the generator's counts in place of GT's (source ``truth``)."""
    table = pd.read_csv(results / "synth" / f"trial-{trial}" / "truth" / "lesions.tsv", sep="\t",
                        dtype={"participant_id": str, "session": str})
    sessions = {pid: sorted(f"ses-{s}" for s in g["session"].unique()) for pid, g in table.groupby("participant_id")}
    any_mask = next((results / "preproc" / f"trial-{trial}").glob("sub-*/ses-*/*_desc-lesionGT_mask.nii.gz"))
    voxel_ml = voxel_volume_ml(read_image(any_mask))  # the common grid, where the tracking counts
    t = truth_lesions(table, sessions, reference=les["reference"], voxel_ml=voxel_ml,
                      enlarge_relative=les["enlarge_relative"], enlarge_voxels=enlarge_voxels)
    new = (t["truth_class"] == "new") & (t["nominal_voxels"] >= les["new_min_voxels"])
    counts = t.assign(n_new=new, n_enlarging=t["truth_class"] == "enlarging").groupby("participant_id")[
        ["n_new", "n_enlarging"]].sum()
    out = gt.drop(columns=["n_new", "n_enlarging", "count", "count_per_scan"]).assign(source="truth")
    out = out.merge(counts, left_on="participant_id", right_index=True, how="left").fillna(
        {"n_new": 0, "n_enlarging": 0})
    out["count"] = out["n_new"] + out["n_enlarging"]
    out["count_per_scan"] = out["count"] / out["n_scans"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--trial", default="valtest")
    ap.add_argument("--enlarge-voxels", type=int, nargs="+", default=[3, 20, 50])
    ap.add_argument("--control-arm", default="PLA")
    args = ap.parse_args(argv)
    logging.disable(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        for ev in args.enlarge_voxels:
            subjects, nb = track_and_fit(args.results, args.trial, ev, args.control_arm, Path(tmp) / f"ev{ev}")
            print(f"\nlesions.enlarge_voxels: {ev}")
            print(subjects.groupby(["source", "arm"])[["n_new", "n_enlarging"]].sum().to_string())
            arm = nb[(nb["model"] == "negative_binomial") & (nb["term_type"] == "arm")]
            print(arm[["source", "term", "rate_ratio", "ci_low", "ci_high", "p"]].to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
