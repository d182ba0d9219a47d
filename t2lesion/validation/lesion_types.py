"""Which of the generator's lesions each source finds, by contrast type and location (docs/DESIGN.md §15).

The clinical-realism profile (docs/DESIGN.md §10) gives every lesion a location
(``white_matter``, ``juxtacortical``, ``infratentorial``, ``confluent_periventricular``) and a
FLAIR contrast type (``standard``, ``faint``, ``partial``: partly hyperintense, ``dark_core``) in
``truth/lesions.tsv``. Each lesion drawn in a visit's GT with ≥ ``min_voxels`` native voxels is
placed in the MNI grid (its native centroid through the visit's FLAIR → MNI transform,
:func:`t2lesion.validation.new_lesion_truth.native_to_grid`) and counts as **found** by a source
when the source's mask, cleaned of components below the metrics' 3 voxels, has a voxel within
``radius_mm`` (3 mm, one slice, as the new-lesion check) of that place. The GT mask's own row is
the check of the placement: on the validation trial it finds every lesion of > 4 native voxels and
86 % of those of 3-4 (which fall below 3 voxels in MNI); at 1.5 mm it missed 3 % of the large ones,
irregular lesions whose centroid lies outside them. Sensitivity by
type tells *which* lesions a segmenter misses, the first half of why its Dice is what it is.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import SimpleITK as sitk

from t2lesion import io
from t2lesion.errors import InputError
from t2lesion.evaluation.segmentation import CONNECTIVITY, MIN_SIZE, _label
from t2lesion.tracking import _ses
from t2lesion.validation.new_lesion_truth import RADIUS_MM, native_to_grid, nearest_component

log = logging.getLogger(__name__)

#: Lesions smaller than this in their native GT are left out (the metrics' minimum).
MIN_VOXELS = 3
GROUPS = ("contrast_type", "location")
TABLE_COLUMNS = ["group", "value", "source", "n", "n_found", "sensitivity", "median_voxels"]


def found_in(mask, index_zyx: np.ndarray, spacing_zyx, *, radius_mm: float = RADIUS_MM,
             connectivity: int = CONNECTIVITY, min_size: int = MIN_SIZE) -> np.ndarray:
    """Per placed lesion: whether ``mask`` (components ≥ ``min_size``) has a voxel within ``radius_mm``."""
    lab = _label(np.asarray(mask) > 0, connectivity, min_size).labels
    got, _ = nearest_component(lab, index_zyx, spacing_zyx, radius_mm)
    return got > 0


def type_table(lesions: pd.DataFrame, sources, groups=GROUPS) -> pd.DataFrame:
    """Sensitivity per source (columns ``found_<source>``) by each value of each group column, and overall."""
    rows = []
    for group in ("all", *groups):
        if group != "all" and group not in lesions.columns:
            continue
        keys = lesions[group] if group != "all" else pd.Series("all", index=lesions.index)
        for value in sorted(keys.dropna().unique()):
            sel = lesions[keys == value]
            for src in sources:
                f = sel[f"found_{src}"].astype(bool)
                rows.append({"group": group, "value": value, "source": src, "n": len(sel), "n_found": int(f.sum()),
                             "sensitivity": f.mean() if len(sel) else math.nan,
                             "median_voxels": sel["nominal_voxels"].median() if len(sel) else math.nan})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def run_lesion_types(truth_tsv, visits: list[dict], out_lesions_tsv, out_table_tsv, *, radius_mm: float = RADIUS_MM,
                     min_voxels: int = MIN_VOXELS, connectivity: int = CONNECTIVITY,
                     min_size: int = MIN_SIZE) -> pd.DataFrame:
    """Path-level entry point (rule ``validation_study_lesion_types``).

    ``visits``: per GT visit ``participant_id``, ``session`` (``ses-wNNN``), ``xfm`` (FLAIR → MNI
    transform) and ``masks`` (source → mask path in MNI, ``gt`` among them). Writes every placed
    lesion with ``found_<source>`` and the table of :func:`type_table`; returns the table."""
    truth = pd.read_csv(truth_tsv, sep="\t", dtype={"participant_id": str, "session": str})
    need = {"participant_id", "session", "lesion_id", "n_voxels", "nominal_volume_ml", "x_native", "y_native",
            "z_native"}
    if missing := sorted(need - set(truth.columns)):
        raise InputError(f"{truth_tsv}: lacks column(s) {missing}")
    truth["session"] = [_ses(s) for s in truth["session"]]
    truth = truth[truth["n_voxels"] >= min_voxels]
    sources = list(dict.fromkeys(s for v in visits for s in v["masks"]))
    parts = []
    for v in visits:
        sel = truth[(truth["participant_id"] == v["participant_id"]) & (truth["session"] == _ses(v["session"]))].copy()
        if not len(sel):
            continue
        grid = None
        for src, path in v["masks"].items():
            m, img = io.read_array(path, np.uint8)
            if grid is None:
                grid = img
                idx = native_to_grid(sel[["x_native", "y_native", "z_native"]].to_numpy(float),
                                     sitk.ReadTransform(str(v["xfm"])), grid)
            elif not io.same_geometry(grid, img):
                raise InputError(f"{path}: not in the grid of {next(iter(v['masks'].values()))}")
            sel[f"found_{src}"] = found_in(m, idx, grid.GetSpacing()[::-1], radius_mm=radius_mm,
                                           connectivity=connectivity, min_size=min_size)
        sel["nominal_voxels"] = sel["nominal_volume_ml"] / io.voxel_volume_ml(grid)
        parts.append(sel)
    if not parts:
        raise InputError(f"{truth_tsv}: no lesion of >= {min_voxels} voxels at the visits given")
    lesions = pd.concat(parts, ignore_index=True)
    table = type_table(lesions, sources)
    io.write_tsv(lesions, out_lesions_tsv, na_rep="n/a", float_format="%.6g")
    io.write_tsv(table, out_table_tsv, na_rep="n/a", float_format="%.6g")
    for r in table[table["group"] == "all"].itertuples():
        log.info("%s finds %d of %d lesions (%.3f)", r.source, r.n_found, r.n, r.sensitivity)
    return table


__all__ = ["found_in", "run_lesion_types", "type_table"]
