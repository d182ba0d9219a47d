"""The synthetic generator's clinical-realism profile (``synthetic.profile: clinical``,
docs/DESIGN.md §10, t2lesion.synth.realism): each addition against its own truth, on
2 mm-template subjects in memory and one tiny written trial. The default profile's
bit-identity is checked in tests/test_synth.py."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from t2lesion import synth
from t2lesion.bids import gt_mask_path, validate
from tests.test_synth import _template_tissue, read, tiny, truth_image


def clinical(**kw) -> synth.SynthParams:
    return tiny(profile="clinical", weeks=[0], subjects_per_arm=2, tlv_median_ml=8.0, **kw)


@pytest.fixture(scope="module")
def clinical_subjects():
    """Two clinical-profile subjects at different sites: (params, [(subject, visit)])."""
    from t2lesion.synth import realism
    from t2lesion.synth.simulate import _build_subject, _visit

    p = clinical()
    sites = [realism.site_of(p, i) for i in range(p.n_subjects)]
    pick = [0, next(i for i, s in enumerate(sites) if s != sites[0])]
    out = []
    for i in pick:
        index, row, targets = synth._subject_inputs(p, i)
        subj = _build_subject(p, index, row["participant_id"], row["arm"], targets)
        out.append((subj, _visit(p, subj, 0)))
    return p, out


def _wm_flair(vis, p):
    wm = _template_tissue(vis, p)["wm"] > 0.9
    return float(np.median(vis.clean["FLAIR"][wm & ~ndi.binary_dilation(vis.lesion_mask > 0, iterations=2)]))


def test_clinical_mimics_are_bright_and_not_lesions(clinical_subjects):
    from t2lesion.synth import realism

    p, subjects = clinical_subjects
    for subj, vis in subjects:
        mim, gt = vis.mimic_labels, vis.lesion_mask > 0
        assert set(np.unique(mim[mim > 0])) == {1, 2, 3, 4}  # every kind: caps, choroid plexus, septum, flow
        only = (mim > 0) & ~gt
        assert only.sum() > 100 and (mim > 0).sum() - only.sum() < 0.05 * (mim > 0).sum()
        wm = _wm_flair(vis, p)
        for k in range(1, 5):
            sel = (mim == k) & ~gt
            # (flow artefacts vary from visit to visit and are partial-volumed with dark CSF)
            bright = 1.1 if realism.MIMIC_KINDS[k - 1] == "flow_artefact" else 1.25
            assert np.median(vis.clean["FLAIR"][sel]) > bright * wm, realism.MIMIC_KINDS[k - 1]
        # the flow artefact is FLAIR-only: CSF stays bright on T2w
        flow = mim == realism.MIMIC_KINDS.index("flow_artefact") + 1
        assert np.median(vis.clean["T2w"][flow]) > np.median(vis.clean["T2w"][vis.brain_mask > 0])


def test_clinical_lesion_contrast_types(clinical_subjects):
    p, subjects = clinical_subjects
    med = {"faint": [], "standard": [], "dark_core_min": [], "partial_spread": [], "standard_spread": []}
    for subj, vis in subjects:
        wm = _wm_flair(vis, p)
        tab = vis.lesions[vis.lesions.n_voxels >= 8]
        for _, r in tab.iterrows():
            vals = vis.clean["FLAIR"][vis.lesion_labels == r.lesion_id] / wm
            if r.contrast_type in ("faint", "standard"):
                med[r.contrast_type].append(np.median(vals))
            if r.contrast_type == "dark_core" and r.n_voxels >= 40:
                med["dark_core_min"].append(vals.min())
            if r.contrast_type in ("partial", "standard") and r.n_voxels >= 20:
                med[f"{r.contrast_type}_spread"].append(np.percentile(vals, 90) - np.percentile(vals, 10))
        faint = vis.lesions[vis.lesions.contrast_type == "faint"]
        std = vis.lesions[vis.lesions.contrast_type == "standard"]
        assert faint.flair_contrast_factor.max() < std.flair_contrast_factor.min()
    assert len(med["faint"]) >= 3 and len(med["standard"]) >= 3
    assert np.median(med["faint"]) < 1.0 + 0.7 * (np.median(med["standard"]) - 1.0)
    assert med["dark_core_min"] and min(med["dark_core_min"]) < 1.0  # a core darker than white matter
    assert np.median(med["partial_spread"]) > np.median(med["standard_spread"])


def test_clinical_lesion_locations_follow_anatomy(clinical_subjects):
    from t2lesion.synth import realism

    p, subjects = clinical_subjects
    t = synth._get_template(p)
    seen = set()
    for subj, vis in subjects:
        for les in subj.lesions:
            seen.add(les.location)
            c_t = subj.anat.deformation.forward_points(les.centre[None, :])
            idx = ((c_t - t.origin) / t.res)[:, ::-1].T
            if les.location == "infratentorial":
                assert realism.infratentorial_region(c_t)[0]
                assert ndi.map_coordinates(t.wm, idx, order=1)[0] > 0.4
            elif les.location == "juxtacortical":
                gm_near = ndi.maximum_filter(t.gm, size=3)
                assert ndi.map_coordinates(gm_near, idx, order=1)[0] > 0.4
            elif les.location == "confluent_periventricular":
                assert len(les.comp_axes) >= 5
                assert ndi.map_coordinates(t.vent_prox, ((c_t - t.origin2) / 2.0)[:, ::-1].T, order=1)[0] > 0.02
            else:
                assert not realism.infratentorial_region(c_t)[0] or les.location == "white_matter"
        assert set(vis.lesions["location"]) <= {"white_matter", "juxtacortical", "infratentorial",
                                                "confluent_periventricular"}
    assert {"juxtacortical", "infratentorial", "confluent_periventricular"} <= seen


def test_clinical_partial_volume_across_slices(clinical_subjects):
    p, subjects = clinical_subjects
    subj, vis = subjects[0]
    rz = subj.anat.realism
    W = rz.profile_matrix(0, 7, p.slice_supersample, p.voxel_mm[2])
    row = W[3]
    own = row[3 * p.slice_supersample : 4 * p.slice_supersample].sum()
    assert row.sum() == pytest.approx(1.0, abs=1e-3) and 0.5 < own < 0.85  # signal from neighbouring slices
    gt = vis.lesion_mask > 0
    std_ids = vis.lesions.loc[vis.lesions.contrast_type == "standard", "lesion_id"]
    std = np.isin(vis.lesion_labels, std_ids)
    edge = ndi.binary_dilation(std, structure=np.ones((3, 1, 1), bool)) & ~gt  # slice neighbours
    edge &= ~ndi.binary_dilation(vis.mimic_labels > 0, iterations=2)
    wm, les = _wm_flair(vis, p), float(np.median(vis.clean["FLAIR"][std]))
    mid = float(np.median(vis.clean["FLAIR"][edge]))
    assert wm * 1.03 < mid < les, (wm, mid, les)


def test_clinical_sites_differ(clinical_subjects, tmp_path):
    from t2lesion.synth import realism

    p, subjects = clinical_subjects
    (sa, va), (sb, vb) = subjects
    A, B = sa.anat.realism.site, sb.anat.realism.site
    assert A["name"] != B["name"]
    for s, v in ((sa, va), (sb, vb)):
        site = s.anat.realism.site
        inb = v.brain_mask > 0
        lb = np.log(v.bias["FLAIR"][inb])
        assert lb.max() - lb.min() == pytest.approx(site["bias_log_range"], abs=0.01)
        assert s.anat.contrast["FLAIR"]["csf"] == pytest.approx(site["flair_csf"], rel=0.15)
        assert s.params.noise_fraction == pytest.approx(p.noise_fraction * site["noise"])
        resid = v.images["T1w"][inb] - v.clean["T1w"][inb] * v.bias["T1w"][inb]
        sigma = s.params.noise_fraction * s.anat.contrast["T1w"]["wm"]
        # the site's own noise (measured 1.02 and 0.94 of it at sites A and C): images that
        # ignored the site's factor (1.1-1.25) would fall below the band
        assert 0.85 * sigma < resid.std() < 1.12 * sigma, (site["name"], resid.std() / sigma)
    # sites are assigned by the seed alone, balanced over the subjects
    q = clinical()
    assert [realism.site_of(q, i) for i in range(4)] == [realism.site_of(p, i) for i in range(4)]
    assert len({realism.site_of(q, i) for i in range(4)}) == min(4, len(realism.DEFAULT_SITES))


def test_clinical_trial_writes_its_truth(tmp_path):
    p = clinical(fov_mm=[180.0, 200.0, 120.0])
    synth.generate_trial(tmp_path, p, n_jobs=1, progress=False)
    part = pd.read_csv(tmp_path / "bids" / "participants.tsv", sep="\t")
    subjects = pd.read_csv(tmp_path / "truth" / "subjects.tsv", sep="\t")
    assert part["site"].tolist() == subjects["site"].tolist() and part["site"].nunique() >= 2
    assert {"site_noise", "site_slice_fwhm_mm", "site_inplane_fwhm_mm", "site_flair_lesion"} <= set(subjects)
    lesions = pd.read_csv(tmp_path / "truth" / "lesions.tsv", sep="\t")
    assert {"location", "contrast_type", "flair_contrast_factor"} <= set(lesions)
    mimics = pd.read_csv(tmp_path / "truth" / "mimics.tsv", sep="\t")
    assert set(mimics["kind"]) == {"cap", "choroid_plexus", "septum", "flow_artefact"}
    doc = json.loads((tmp_path / "truth" / "params.json").read_text())
    assert doc["params"]["profile"] == "clinical" and len(doc["realism"]["sites"]) == 3
    for sub, ses in synth.expected_visits(p):
        mim, _ = read(truth_image(tmp_path, f"sub-{sub}", ses, "mimics_dseg"))
        gt, _ = read(gt_mask_path(tmp_path / "bids", sub, ses))
        assert (mim > 0).sum() > 50 and ((mim > 0) & (gt > 0)).sum() < 0.05 * (mim > 0).sum()
    validate(tmp_path / "bids", p.arms)  # extra participants.tsv column is valid BIDS for the pipeline
