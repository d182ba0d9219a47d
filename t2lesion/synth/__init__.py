"""Synthetic MS trial with known truth (docs/DESIGN.md §10): the pipeline's embedded default data.

No real trial data can ship, so the default run generates a BIDS trial whose every
hidden quantity is written next to it under ``truth/`` (layout in docs/CONTRACT.md).
It is meant to make registration, skull stripping and segmentation real problems:

Anatomy (once per subject, in *subject space*)
    nilearn's MNI152 2009 GM/WM probability maps and brain mask (shipped, no download;
    CSF = brain − GM − WM), warped by a smooth random displacement (a low-order cosine
    basis, RMS ``deform_mm`` inside the brain) and an anisotropic head scaling. Around
    the brain a skull/scalp shell is built from the distance to a smoothed brain hull
    (``head_layers_mm``: CSF gap, inner table, diploë, outer table, galea, scalp fat,
    skin; thickness varies per subject) plus a neck below the brain. "Subject space"
    is the (padded) template grid on which this deformed anatomy lives, ≈ MNI, LPS mm.
Contrasts
    Tissue-class intensities per modality in a scanner-like range (``contrast``;
    T1w: WM > GM > CSF, scalp fat bright; T2w: CSF bright; FLAIR: CSF dark; lesions
    hyperintense on T2w/FLAIR and hypointense on T1w), varied per subject.
Lesions (continuous objects in subject space, same ``lesion_id`` at every visit)
    Unions of 1–3 soft-edged ellipsoids centred in deep white matter, preferentially near
    the ventricles (periventricular, long axis pointing away from them), clipped to brain
    parenchyma. Nominal volumes are log-normal (``lesion_volume_*``), so that ~40 % of the
    lesions of >= 3 voxels in the 1×1×3 mm masks have <= 10 voxels (≤ 30 µL). The
    baseline load is the participant's target TLV from :mod:`t2lesion.synth.clinical` (times
    ``lesion_volume_calibration``, which makes the TLV *realised* in the masks match the
    target on average; capped at ``max_tlv_ml``). Each follow-up adds new lesions
    (Poisson, ``new_lesions_per_year``; treated arms × ``new_lesion_rate_ratio_treated``)
    and enlarges or shrinks existing ones so that the nominal load follows the cohort's
    TLV trajectory. Interpretation: the cohort's trajectory is the *target*; the truth
    tables report what is realised in the written masks.
Acquisition (every visit)
    Random rigid head pose (≤ ``max_rotation_deg``; FOV centre ≤ ``max_translation_mm``
    from the isocentre, brain ≤ ``max_fov_offset_mm`` from the FOV centre), axial
    native grid of ``voxel_mm`` (1×1×3 mm) over ``fov_mm``, slice partial volume by
    averaging ``slice_supersample`` sub-slices per slice (box slice profile), per-visit
    gain, a smooth multiplicative bias field per modality (log-range
    ``bias_log_range`` inside the brain) and Rician noise (σ = ``noise_fraction`` × WM).
    T1w, T2w and FLAIR share the visit's native grid and pose.
Ground truth
    GT lesion mask = slice-integrated lesion fraction ≥ ``gt_threshold``; each mask
    voxel belongs to the lesion with the largest fraction in it, so touching lesions stay
    attributable (``truth/…_desc-lesions_dseg.nii.gz`` holds that ``lesion_id`` map, an
    addition to docs/CONTRACT.md); ``lesions.tsv`` is measured on the written mask
    (lesions that vanish are omitted for that visit) and its subject-space centroids are
    computed analytically from the lesion objects. Outcomes come from
    :func:`t2lesion.synth.clinical.draw_outcomes` with the log of the TLV realised in the
    baseline GT mask, so the true log-TLV hazard ratio applies to what a perfect
    segmenter measures.
    The anatomy is read from nilearn's shipped MNI files directly (the same data as
    ``nilearn.datasets.load_mni152_*``, whose import costs seconds through scikit-learn).

Clinical-realism profile (``profile: clinical``, :mod:`t2lesion.synth.realism`)
    Varied lesion contrast (faint, partly hyperintense, dark core), confluent
    periventricular, juxtacortical and infratentorial lesions, FLAIR-bright non-lesions
    (mimics), a slice profile wider than the slice and per-site scanners, each with truth.
    The default profile is unchanged.

Entry points: :func:`generate_trial` (writes everything; CLI ``python -m t2lesion.synth``),
:func:`simulate_visit` / :func:`simulate_subject_visits` (one subject in memory, for
other stages' tests) and :func:`expected_visits` (the visit list, from parameters alone).

Modules (each imports only those above it)
    ``clinical``     the tabular cohort: participants, target TLV trajectories, outcomes
                     from the true Cox model (:func:`~.clinical.simulate_cohort` for
                     thousands of participants; known answers of ``t2lesion.stats``)
    ``params``       :class:`SynthParams` and :func:`expected_visits`
    ``template``     the MNI template grid and head geometry shared by all subjects
    ``anatomy``      a subject's deformation, skull/scalp layers and tissue images
    ``lesions``      lesion objects and their course over the visits
    ``acquisition``  one visit: pose, native grid, bias field, noise (:class:`SynthVisit`)
    ``realism``      the clinical-realism profile (``profile: clinical``; imports nothing of
                     t2lesion.synth at load, so ``params`` can call its checks): lesion contrast
                     types and locations, mimics, slice profile, sites
    ``simulate``     seeded random streams, :func:`clinical_tables`, subjects and visits
                     in memory
    ``bids_writer``  the BIDS tree and the truth tables
    ``trial``        :func:`generate_trial` (parallel subjects, atomic move into place)
    ``cli``          :func:`main` (``python -m t2lesion.synth``, ``t2lesion-synth``)
"""

from t2lesion.synth.acquisition import SynthVisit
from t2lesion.synth.cli import main
from t2lesion.synth.params import TISSUES, SynthParams, expected_visits, participant_ids
from t2lesion.synth.simulate import clinical_tables, simulate_subject_visits, simulate_visit
from t2lesion.synth.trial import MARKER, generate_trial

# Private helpers that tests, benchmarks and docs/*.py reach as ``synth._name``.
from t2lesion.synth.acquisition import _native_geometry  # noqa: E402,F401
from t2lesion.synth.anatomy import _build_anatomy  # noqa: E402,F401
from t2lesion.synth.lesions import _draw_lesions  # noqa: E402,F401
from t2lesion.synth.simulate import _build_subject, _subject_inputs  # noqa: E402,F401
from t2lesion.synth.template import _get_template  # noqa: E402,F401

__all__ = [
    "MARKER",
    "TISSUES",
    "SynthParams",
    "SynthVisit",
    "clinical_tables",
    "expected_visits",
    "generate_trial",
    "main",
    "participant_ids",
    "simulate_subject_visits",
    "simulate_visit",
]
