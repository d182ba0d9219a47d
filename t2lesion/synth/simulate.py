"""Per-subject simulation in memory: the seeded random streams, the trial's clinical tables
(:func:`clinical_tables`), a subject's anatomy and lesions, and its visits
(:func:`simulate_subject_visits`, :func:`simulate_visit`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from t2lesion.errors import InputError
from t2lesion.synth import clinical as _cohort
from t2lesion.synth import realism as _realism
from t2lesion.synth.acquisition import SynthVisit, _render_visit
from t2lesion.synth.anatomy import _Anatomy, _build_anatomy
from t2lesion.synth.lesions import _draw_lesions, _Lesion
from t2lesion.synth.params import SynthParams, _coerce_params
from t2lesion.synth.template import _get_template


def _seed_seq(p: SynthParams, *key: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([p.seed, *key])


def _clinical(p: SynthParams) -> tuple[pd.DataFrame, pd.DataFrame, np.random.Generator]:
    rng = np.random.default_rng(_seed_seq(p, 0))
    participants = _cohort.draw_participants(p.subjects_per_arm, p.cohort, rng)
    traj = _cohort.draw_tlv_trajectory(participants, p.cohort, rng)
    return participants, traj, rng


def clinical_tables(
    params: SynthParams | dict | None = None, tlv_bl_ml: dict[str, float] | pd.Series | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The trial's clinical side without images: (participants, tlv_trajectory, outcomes).

    ``participants`` has the BIDS columns plus ``tlv_bl_ml`` (the cohort's *target*
    baseline TLV) and ``log_tlv`` (the value the hazard depends on). Outcomes are drawn
    from the true Cox model with ``log_tlv = log(TLV + offset)`` of ``tlv_bl_ml`` when
    given (participant_id -> realised baseline TLV in mL, as :func:`generate_trial`
    passes it), else of the target TLV. Deterministic given ``params.seed``; cheap even
    for thousands of participants (known-answer tests of the Cox analysis).
    """
    p = _coerce_params(params)
    participants, traj, rng = _clinical(p)
    part = participants.copy()
    if tlv_bl_ml is None:
        tlv = part["tlv_bl_ml"].to_numpy(float)
    else:
        m = dict(tlv_bl_ml)
        missing = [pid for pid in part["participant_id"] if pid not in m]
        if missing:
            raise InputError(f"tlv_bl_ml lacks participants {missing[:5]}")
        tlv = np.array([float(m[pid]) for pid in part["participant_id"]])
    part["log_tlv"] = _cohort.log_tlv(tlv, p.cohort.log_tlv_offset_ml)
    outcomes = _cohort.draw_outcomes(part, p.cohort, rng, log_tlv_col="log_tlv")
    return part, traj, outcomes


@dataclass
class _Subject:
    index: int
    participant_id: str
    arm: str
    targets_ml: list[float]
    anat: _Anatomy
    lesions: list[_Lesion]
    params: SynthParams | None = None  # the site's parameters under the clinical profile


def _build_subject(p: SynthParams, index: int, participant_id: str, arm: str, targets_ml: list[float]) -> _Subject:
    t = _get_template(p)
    rng_anat = np.random.default_rng(_seed_seq(p, 1, index))
    rng_les = np.random.default_rng(_seed_seq(p, 2, index))
    if p.profile == "default":
        anat = _build_anatomy(t, p, rng_anat)
        lesions = _draw_lesions(t, anat, p, arm, targets_ml, rng_les)
        return _Subject(index, participant_id, arm, list(targets_ml), anat, lesions)
    # clinical profile (docs/DESIGN.md §10): the site's parameters, then its own random streams
    ps, site = _realism.subject_params(p, index)
    anat = _build_anatomy(t, ps, rng_anat, _realism.slab_weights(site["slice_fwhm_mm"], t.res))
    lesions = _draw_lesions(t, anat, ps, arm, targets_ml, rng_les)
    rz = _realism.SubjectRealism(_realism.site_of(p, index), site, _realism.knobs(p), seed=(p.seed, index))
    _realism.adapt_lesions(t, anat, ps, lesions, np.random.default_rng(_seed_seq(p, 4, index)))
    rz.mimics = _realism.build_mimics(t, anat, ps, np.random.default_rng(_seed_seq(p, 6, index)))
    anat.realism = rz
    return _Subject(index, participant_id, arm, list(targets_ml), anat, lesions, ps)


def _visit(p: SynthParams, subj: _Subject, v: int) -> SynthVisit:
    rng = np.random.default_rng(_seed_seq(p, 3, subj.index, v))
    ps = p if subj.params is None else subj.params
    out = _render_visit(ps, _get_template(p), subj.anat, subj.lesions, subj.participant_id, v, rng)
    out.info["tlv_target_ml"] = subj.targets_ml[v]
    return out


def _subject_inputs(p: SynthParams, subject: int | str):
    participants, traj, _ = _clinical(p)
    ids = list(participants["participant_id"])
    if isinstance(subject, str):
        if subject not in ids and f"sub-{subject}" in ids:
            subject = f"sub-{subject}"
        if subject not in ids:
            raise InputError(f"unknown synthetic participant {subject!r} (have {ids[0]}…{ids[-1]})")
        index = ids.index(subject)
    else:
        index = int(subject)
        if not 0 <= index < len(ids):
            raise InputError(f"synthetic subject index {index} out of range 0..{len(ids) - 1}")
    row = participants.iloc[index]
    targets = traj[traj["participant_id"] == row["participant_id"]].sort_values("week")["tlv_ml"].tolist()
    return index, row, targets


def simulate_subject_visits(
    params: SynthParams | dict | None = None, subject: int | str = 0, visits: list[int] | None = None
) -> list[SynthVisit]:
    """Several visits of one synthetic subject in memory (anatomy built once).

    ``subject``: 0-based index or participant_id (``"sub-002"``/``"002"``); ``visits``:
    indices into ``params.weeks`` (default all). Identical to what :func:`generate_trial`
    writes for that subject with the same parameters (before int16 rounding).
    """
    p = _coerce_params(params)
    index, row, targets = _subject_inputs(p, subject)
    subj = _build_subject(p, index, row["participant_id"], row["arm"], targets)
    visits = list(range(len(p.weeks))) if visits is None else list(visits)
    for v in visits:
        if not 0 <= int(v) < len(p.weeks):
            raise InputError(f"visit index {v} out of range for weeks {p.weeks}")
    return [_visit(p, subj, int(v)) for v in visits]


def simulate_visit(params: SynthParams | dict | None = None, subject: int | str = 0, visit: int = 0) -> SynthVisit:
    """One synthetic visit in memory: native images, clean images, bias fields, brain mask,
    lesion label map, pose and the visit's lesion truth table (see :class:`SynthVisit`).

    For tests of other stages use ``SynthParams.tiny()`` (2 mm template; a few seconds).
    """
    return simulate_subject_visits(params, subject, [visit])[0]
