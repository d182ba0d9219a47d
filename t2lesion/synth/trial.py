"""A whole trial: :func:`generate_trial` builds every subject (in parallel processes when
``n_jobs`` > 1), writes it into a temporary folder and moves ``bids/`` and ``truth/``
into place."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from t2lesion.errors import InputError
from t2lesion.synth import realism
from t2lesion.synth.bids_writer import _write_tables, _write_visit
from t2lesion.synth.lesions import _tlv_cap_factor
from t2lesion.synth.params import SynthParams, _coerce_params
from t2lesion.synth.simulate import _build_subject, _clinical, _visit
from t2lesion.synth.template import _get_template

log = logging.getLogger("t2lesion.synth")  # the package's logger name, as before the split

#: Marker file telling :func:`generate_trial` that a root's bids/ and truth/ are its own.
MARKER = ".t2lesion-synth"


def _subject_job(args, on_visit=None) -> dict:
    """Build one subject, render and write all its visits; return its truth rows."""
    pdict, index, pid, arm, targets, root, threads = args
    if threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    p = SynthParams.from_dict(pdict)
    subj = _build_subject(p, index, pid, arm, targets)
    visit_rows, lesion_tabs = [], []
    tlv_bl = None
    for v, week in enumerate(p.weeks):
        vis = _visit(p, subj, v)
        _write_visit(p, vis, Path(root))
        tlv = float(vis.lesion_mask.sum()) * vis.voxel_volume_ml
        if v == 0:
            tlv_bl = tlv
            n_les_bl = int(len(vis.lesions))
        st = vis.lesions["status"] if len(vis.lesions) else pd.Series([], dtype=str)
        visit_rows.append(
            {
                "participant_id": pid,
                "session": vis.session,
                "week": int(week),
                "native_to_subject": " ".join(f"{x:.10g}" for x in vis.native_to_subject.ravel()),
                "rotation_x_deg": vis.info["rotation_deg"][0],
                "rotation_y_deg": vis.info["rotation_deg"][1],
                "rotation_z_deg": vis.info["rotation_deg"][2],
                "fov_centre_x_mm": vis.info["fov_centre_mm"][0],
                "fov_centre_y_mm": vis.info["fov_centre_mm"][1],
                "fov_centre_z_mm": vis.info["fov_centre_mm"][2],
                "tlv_target_ml": targets[v],
                "tlv_nominal_ml": vis.info["nominal_tlv_ml"],
                "tlv_ml": tlv,
                "n_lesions": int(len(vis.lesions)),
                "n_new": int((st == "new").sum()),
                "n_enlarging": int((st == "enlarging").sum()),
                "brain_volume_ml": float(vis.brain_mask.sum()) * vis.voxel_volume_ml,
            }
        )
        lesion_tabs.append(vis.lesions)
        del vis
        if on_visit is not None:
            on_visit()
    d = subj.anat.deformation
    subject_row = {
        "participant_id": pid,
        "arm": arm,
        "tlv_bl_target_ml": targets[0],
        "tlv_target_scale": _tlv_cap_factor(targets, p),
        "tlv_bl_ml": tlv_bl,
        "n_lesions_bl": n_les_bl,
        "n_lesions_total": len(subj.lesions),
        "head_scale_x": float(d.scale[0]),
        "head_scale_y": float(d.scale[1]),
        "head_scale_z": float(d.scale[2]),
        "skull_thickness_scale": subj.anat.layer_scale,
    }
    extra = {}
    if subj.anat.realism is not None:  # clinical profile: the site and the mimics
        subject_row.update(realism.subject_truth(subj.anat.realism))
        extra["mimics"] = realism.mimic_rows(pid, subj.anat.realism)
    return {
        **extra,
        "index": index,
        "subject": subject_row,
        "visits": visit_rows,
        "lesions": lesion_tabs,
        "n_visits": len(p.weeks),
    }


def _worker_init(threads: int) -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, int(threads)))


def generate_trial(
    out_root: str | Path, params: SynthParams | dict | None = None, n_jobs: int = 1, progress: bool = True
) -> dict:
    """Write a complete synthetic trial under ``out_root`` (``bids/`` and ``truth/``).

    Everything is written to a temporary folder inside ``out_root`` first and moved into
    place at the end, so a failure leaves nothing partial. Existing ``bids/`` and
    ``truth/`` are replaced only if a previous run of this function created them.
    Deterministic given ``params.seed`` (independent of ``n_jobs``). Returns a summary
    (paths, counts).
    """
    p = _coerce_params(params)
    root = Path(out_root)
    root.mkdir(parents=True, exist_ok=True)
    ours = (root / MARKER).exists()
    for sub in ("bids", "truth"):
        d = root / sub
        # Snakemake pre-creates the (empty) folders of declared outputs: only files count.
        if d.exists() and not ours and any(f.is_file() for f in d.rglob("*")):
            raise InputError(f"{d}: exists and was not written by t2lesion.synth; refusing to overwrite it")
    participants, traj, _ = _clinical(p)
    n_jobs = max(1, int(n_jobs))
    tmp = Path(tempfile.mkdtemp(prefix=".synth-tmp-", dir=root))
    pdict = p.to_dict()
    jobs = []
    for i, row in participants.iterrows():
        targets = traj[traj["participant_id"] == row["participant_id"]].sort_values("week")["tlv_ml"].tolist()
        jobs.append((pdict, int(i), row["participant_id"], row["arm"], targets, str(tmp), None))
    n_visits_total = len(jobs) * len(p.weeks)
    log.info("synthetic trial: %d participants x %d visits -> %s (n_jobs=%d)", len(jobs), len(p.weeks), root, n_jobs)
    results = []
    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_visits_total, desc="synth visits", unit="visit", disable=not progress)
        _get_template(p)  # prepared once here; forked workers inherit it
        if n_jobs == 1 or len(jobs) == 1:
            for job in jobs:
                results.append(_subject_job(job, on_visit=lambda: bar.update(1)))
        else:
            threads = max(1, (os.cpu_count() or 1) // n_jobs)
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            with ProcessPoolExecutor(
                max_workers=n_jobs, mp_context=ctx, initializer=_worker_init, initargs=(threads,)
            ) as ex:
                futs = [ex.submit(_subject_job, job) for job in jobs]
                for fut in as_completed(futs):
                    results.append(fut.result())
                    bar.update(results[-1]["n_visits"])
        bar.close()
        results.sort(key=lambda r: r["index"])
        _write_tables(p, tmp, results)
        # move into place
        for sub in ("bids", "truth"):
            dest = root / sub
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp / sub, dest)
        (root / MARKER).write_text("written by t2lesion.synth; bids/ and truth/ are regenerated in place\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("synthetic trial written: %s", root)
    return {
        "root": str(root),
        "bids": str(root / "bids"),
        "truth": str(root / "truth"),
        "n_participants": len(jobs),
        "n_visits": n_visits_total,
    }
