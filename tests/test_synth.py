"""Synthetic trial generator (t2lesion.synth): its output against its own truth (docs/DESIGN.md §10).

One tiny trial (2 mm template, 2 participants x 2 visits, 1x1x3 mm native) is written
once per module; the other checks use single in-memory visits or tabular draws.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from t2lesion import synth
from t2lesion.bids import MODALITIES, gt_mask_path, image_path, validate
from t2lesion.errors import InputError

WEEKS = [0, 24]


def tiny(**kw) -> synth.SynthParams:
    return synth.SynthParams.tiny(**{"seed": 2, "weeks": WEEKS, **kw})


@pytest.fixture(scope="module")
def trial(tmp_path_factory) -> tuple[Path, synth.SynthParams]:
    root = tmp_path_factory.mktemp("synth") / "trial-tiny"
    params = tiny()
    synth.generate_trial(root, params, n_jobs=1, progress=False)
    return root, params


def read(path: Path) -> tuple[np.ndarray, sitk.Image]:
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img


def matrix(row) -> np.ndarray:
    return np.array([float(x) for x in row["native_to_subject"].split()]).reshape(4, 4)


def truth_image(root: Path, pid: str, ses: str, desc: str) -> Path:
    return root / "truth" / pid / f"ses-{ses}" / f"{pid}_ses-{ses}_desc-{desc}.nii.gz"


# ----------------------------------------------------------------------------- params
def test_unknown_and_invalid_parameters_raise_input_error():
    with pytest.raises(InputError) as exc:
        synth.SynthParams.from_dict({"seed": 1, "subjects_per_arm": 2, "voxle_mm": [1, 1, 3], "cohort": {"bogus": 1}})
    msg = str(exc.value)
    assert "'voxle_mm'" in msg and "'cohort.bogus'" in msg and "voxel_mm" in msg  # names them, lists valid keys
    with pytest.raises(InputError, match="voxel_mm"):
        synth.SynthParams.from_dict({"voxel_mm": [1, 1, -3]})
    with pytest.raises(InputError, match="weeks"):
        synth.SynthParams.from_dict({"weeks": [24, 48]})
    with pytest.raises(InputError, match="template_resolution_mm"):
        synth.SynthParams.from_dict({"template_resolution_mm": 3})
    with pytest.raises(InputError, match="contrast"):
        synth.SynthParams.from_dict({"contrast": {"T1w": {"wm": 1}}})


def test_params_round_trip_and_flat_cohort_keys():
    p = synth.SynthParams.from_dict({"arms": ["CTL", "DRUG", "DRUG2"], "beta_log_tlv": 0.7, "weeks": [0, 12, 36]})
    assert p.cohort.arms == ["CTL", "DRUG", "DRUG2"] and p.cohort.beta_log_tlv == 0.7
    assert p.cohort.weeks == [0, 12, 36] == p.weeks
    q = synth.SynthParams.from_dict(json.loads(json.dumps(p.to_dict())))
    assert q == p
    assert synth.expected_visits(p)[:4] == [("001", "w000"), ("001", "w012"), ("001", "w036"), ("002", "w000")]
    assert len(synth.expected_visits(p)) == 3 * p.subjects_per_arm * 3


# ----------------------------------------------------------------------------- files
def test_trial_follows_bids_and_contract(trial):
    root, p = trial
    bids = root / "bids"
    layout = validate(bids, p.arms)  # the project's own validator accepts it
    assert sorted((v.sub, v.ses) for v in layout.visits) == sorted(synth.expected_visits(p))
    assert all(layout.has_gt.values())
    for sub, ses in synth.expected_visits(p):
        pid = f"sub-{sub}"
        for mod in MODALITIES:
            assert image_path(bids, sub, ses, mod).is_file()
            assert truth_image(root, pid, ses, f"bias_{mod}").is_file()
        assert gt_mask_path(bids, sub, ses).is_file()
        assert truth_image(root, pid, ses, "brain_mask").is_file()
    part = pd.read_csv(bids / "participants.tsv", sep="\t")
    assert list(part.columns) == ["participant_id", "arm", "age", "sex", "region", "edss_bl"]
    out = pd.read_csv(bids / "phenotype" / "outcomes.tsv", sep="\t")
    assert sorted(out["endpoint"].unique()) == sorted(["CDP24", "T25FW24", "9HPT24", "CCDP24"])
    assert len(out) == 4 * len(part) and (out["time_weeks"] > 0).all() and set(out["event"]) <= {0, 1}
    doc = json.loads((root / "truth" / "params.json").read_text())
    assert synth.SynthParams.from_dict(doc["params"]) == p
    assert doc["true_coefficients"]["cox"]["log_tlv"] == pytest.approx(p.cohort.beta_log_tlv)
    visits = pd.read_csv(root / "truth" / "visits.tsv", sep="\t")
    assert {"participant_id", "session", "week", "native_to_subject"} <= set(visits.columns)
    assert all(re.fullmatch(r"w\d{3}", s) for s in visits["session"])
    lesions = pd.read_csv(root / "truth" / "lesions.tsv", sep="\t")
    need = [
        "participant_id",
        "session",
        "lesion_id",
        "x_subject",
        "y_subject",
        "z_subject",
        "x_native",
        "y_native",
        "z_native",
        "n_voxels",
        "volume_ml",
    ]
    assert set(need) <= set(lesions.columns)
    subjects = pd.read_csv(root / "truth" / "subjects.tsv", sep="\t")
    assert {"participant_id", "arm", "tlv_bl_ml", "tlv_bl_target_ml"} <= set(subjects.columns)


def test_headers_dtypes_and_shared_grid(trial):
    root, p = trial
    for sub, ses in synth.expected_visits(p):
        flair = sitk.ReadImage(str(image_path(root / "bids", sub, ses, "FLAIR")))
        assert flair.GetSpacing() == pytest.approx((1.0, 1.0, 3.0))
        assert flair.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
        assert flair.GetPixelID() == sitk.sitkInt16
        arr = sitk.GetArrayViewFromImage(flair)
        assert 600 < np.percentile(arr, 99.9) < 5000  # scanner-like range, never [0, 1]
        others = [image_path(root / "bids", sub, ses, m) for m in ("T1w", "T2w")]
        others += [gt_mask_path(root / "bids", sub, ses), truth_image(root, f"sub-{sub}", ses, "brain_mask")]
        for path in others:
            img = sitk.ReadImage(str(path))
            assert img.GetSize() == flair.GetSize() and img.GetOrigin() == pytest.approx(flair.GetOrigin())
        mask = sitk.ReadImage(str(gt_mask_path(root / "bids", sub, ses)))
        assert mask.GetPixelID() == sitk.sitkUInt8


# ----------------------------------------------------------------------------- truth
def test_gt_masks_equal_truth_table(trial):
    root, p = trial
    lesions = pd.read_csv(root / "truth" / "lesions.tsv", sep="\t")
    visits = pd.read_csv(root / "truth" / "visits.tsv", sep="\t")
    confluent = 0
    for sub, ses in synth.expected_visits(p):
        pid = f"sub-{sub}"
        mask, img = read(gt_mask_path(root / "bids", sub, ses))
        labels, _ = read(truth_image(root, pid, ses, "lesions_dseg"))
        assert np.array_equal(mask > 0, labels > 0)
        tab = lesions[(lesions.participant_id == pid) & (lesions.session == ses)].set_index("lesion_id")
        ids, counts = np.unique(labels[labels > 0], return_counts=True)
        assert len(tab) == len(ids) > 3  # every lesion in the mask is in the table and vice versa
        assert sorted(tab.index) == sorted(ids.tolist())
        assert np.array_equal(tab.loc[ids, "n_voxels"].to_numpy(), counts)
        vox_ml = np.prod(img.GetSpacing()) / 1000.0
        assert np.allclose(tab.loc[ids, "volume_ml"], counts * vox_ml)
        assert (tab["n_voxels"] >= 1).all()
        v = visits[(visits.participant_id == pid) & (visits.session == ses)].iloc[0]
        assert v["tlv_ml"] == pytest.approx(mask.sum() * vox_ml)
        assert v["n_lesions"] == len(ids)
        # touching lesions stay attributable: a confluent component keeps its lesions' labels
        comp, ncomp = ndi.label(mask, structure=np.ones((3, 3, 3)))
        assert ncomp <= len(ids)
        confluent += sum(len(np.unique(labels[comp == c])) > 1 for c in range(1, ncomp + 1))
    assert confluent > 0
    subjects = pd.read_csv(root / "truth" / "subjects.tsv", sep="\t")
    base = visits[visits.week == 0].set_index("participant_id")["tlv_ml"]
    assert np.allclose(subjects.set_index("participant_id").loc[base.index, "tlv_bl_ml"], base)
    assert np.allclose(subjects["log_tlv"], np.log(subjects["tlv_bl_ml"] + p.cohort.log_tlv_offset_ml))


def test_pose_differs_between_visits(trial):
    root, p = trial
    visits = pd.read_csv(root / "truth" / "visits.tsv", sep="\t")
    for pid, g in visits.groupby("participant_id"):
        ms = [matrix(r) for _, r in g.iterrows()]
        for m in ms:
            assert np.allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-8) and np.linalg.det(m[:3, :3]) > 0
        rel = ms[0][:3, :3].T @ ms[1][:3, :3]
        angle = math.degrees(math.acos(np.clip((np.trace(rel) - 1) / 2, -1, 1)))
        assert angle > 1.0, f"{pid}: visits share a head pose"
        o = [sitk.ReadImage(str(image_path(root / "bids", pid[4:], s, "FLAIR"))).GetOrigin() for s in g["session"]]
        assert not np.allclose(o[0], o[1])


def test_native_to_subject_maps_lesion_centroids(trial):
    """Centroids measured here from the written label map and its header, mapped by the
    visit's matrix, land on the lesions' subject-space centroids (computed analytically)."""
    root, p = trial
    lesions = pd.read_csv(root / "truth" / "lesions.tsv", sep="\t")
    visits = pd.read_csv(root / "truth" / "visits.tsv", sep="\t")
    errors = []
    for _, v in visits.iterrows():
        labels, img = read(truth_image(root, v["participant_id"], v["session"], "lesions_dseg"))
        M = matrix(v)
        tab = lesions[(lesions.participant_id == v["participant_id"]) & (lesions.session == v["session"])]
        tab = tab[tab.n_voxels >= 10].set_index("lesion_id")
        coms = ndi.center_of_mass(labels > 0, labels, tab.index.to_numpy())
        for lid, (cz, cy, cx) in zip(tab.index, coms):
            xn = np.array(img.TransformContinuousIndexToPhysicalPoint((cx, cy, cz)))
            assert np.allclose(xn, tab.loc[lid, ["x_native", "y_native", "z_native"]].to_numpy(float), atol=1e-4)
            xs = M[:3, :3] @ xn + M[:3, 3]
            errors.append(np.linalg.norm(xs - tab.loc[lid, ["x_subject", "y_subject", "z_subject"]].to_numpy(float)))
    errors = np.array(errors)
    assert len(errors) > 20
    assert np.median(errors) < 0.8 and np.percentile(errors, 90) < 2.0, np.percentile(errors, [50, 90, 100])


def test_longitudinal_lesions_keep_identity(trial):
    root, p = trial
    les = pd.read_csv(root / "truth" / "lesions.tsv", sep="\t")
    for pid, g in les.groupby("participant_id"):
        bl = g[g.week == 0]
        fu = g[g.week == WEEKS[1]]
        assert (bl["status"] == "baseline").all()
        kept = set(bl.lesion_id) & set(fu.lesion_id)
        assert len(kept) >= 0.8 * len(bl)
        new = fu[fu.status == "new"]
        assert (new.onset_week == WEEKS[1]).all() and not (set(new.lesion_id) & set(bl.lesion_id))
        # a kept lesion is the same object: its subject-space centroid barely moves
        a = bl.set_index("lesion_id").loc[sorted(kept)]
        b = fu.set_index("lesion_id").loc[sorted(kept)]
        big = a.n_voxels >= 10
        d = np.linalg.norm(
            a.loc[big, ["x_subject", "y_subject", "z_subject"]].to_numpy()
            - b.loc[big, ["x_subject", "y_subject", "z_subject"]].to_numpy(),
            axis=1,
        )
        assert np.median(d) < 0.5


def test_lesion_sizes_skewed_small(trial):
    root, _ = trial
    les = pd.read_csv(root / "truth" / "lesions.tsv", sep="\t")
    counted = les[les.n_voxels >= 3]  # the paper's minimum lesion size
    frac = (counted.n_voxels <= 10).mean()
    assert len(counted) > 40 and 0.2 < frac < 0.6, frac
    assert counted.n_voxels.max() > 50


def test_bias_fields_in_range_and_distinct(trial):
    root, p = trial
    fields = {}
    for sub, ses in synth.expected_visits(p)[:2]:
        brain, _ = read(truth_image(root, f"sub-{sub}", ses, "brain_mask"))
        for mod in MODALITIES:
            b, _ = read(truth_image(root, f"sub-{sub}", ses, f"bias_{mod}"))
            lb = np.log(b[brain > 0])
            assert lb.max() - lb.min() == pytest.approx(p.bias_log_range, abs=0.01)
            assert abs(lb.mean()) < 0.01
            fields[(ses, mod)] = b.ravel()
    vals = list(fields.values())
    for i in range(len(vals)):
        for j in range(i + 1, len(vals)):
            assert np.corrcoef(vals[i], vals[j])[0, 1] < 0.999


# ----------------------------------------------------------------------------- in memory
@pytest.fixture(scope="module")
def rigid_visit():
    """A visit whose anatomy is the template itself (no deformation), for tissue truth."""
    p = tiny(deform_mm=0.0, head_scale_sd=0.0, head_scale_mean=1.0, tlv_median_ml=10.0)
    return p, synth.simulate_visit(p, 0, 0)


def _template_tissue(vis, p):
    t = synth._get_template(p)
    nz, ny, nx = vis.clean["T1w"].shape
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    pts = np.stack(
        [vis.origin[0] + vis.spacing[0] * i, vis.origin[1] + vis.spacing[1] * j, vis.origin[2] + vis.spacing[2] * k],
        axis=-1,
    ).reshape(-1, 3)
    M = vis.native_to_subject
    idx = ((pts @ M[:3, :3].T + M[:3, 3] - t.origin) / t.res)[:, ::-1].T
    return {
        name: ndi.map_coordinates(getattr(t, name), idx, order=1).reshape(nz, ny, nx) for name in ("gm", "wm", "csf")
    }


def test_contrast_ordering(rigid_visit):
    p, vis = rigid_visit
    tissue = _template_tissue(vis, p)
    lesion = vis.lesion_mask > 0
    sel = {n: (m > 0.9) & ~ndi.binary_dilation(lesion, iterations=2) for n, m in tissue.items()}
    med = {mod: {n: float(np.median(vis.clean[mod][s])) for n, s in sel.items()} for mod in MODALITIES}
    les = {mod: float(np.median(vis.clean[mod][lesion])) for mod in MODALITIES}
    assert med["T1w"]["wm"] > med["T1w"]["gm"] > med["T1w"]["csf"]
    assert med["T2w"]["csf"] > med["T2w"]["gm"] > med["T2w"]["wm"]
    assert med["FLAIR"]["gm"] > med["FLAIR"]["wm"] > med["FLAIR"]["csf"]
    assert les["FLAIR"] > 1.3 * med["FLAIR"]["wm"] and les["T2w"] > 1.3 * med["T2w"]["wm"]
    assert les["T1w"] < 0.9 * med["T1w"]["wm"]
    # skull and scalp: bright scalp fat on T1w outside the brain, air far outside
    outside = vis.brain_mask == 0
    assert np.percentile(vis.clean["T1w"][outside], 99.5) > med["T1w"]["wm"]
    assert vis.clean["T1w"][:, :3, :3].max() == 0.0
    # the native brain mask sits on the mapped template brain
    brain = (tissue["gm"] + tissue["wm"] + tissue["csf"]) > 0.5
    dice = 2 * (brain & (vis.brain_mask > 0)).sum() / (brain.sum() + vis.brain_mask.sum())
    assert dice > 0.95


def test_noise_and_bias_model(rigid_visit):
    p, vis = rigid_visit
    inb = vis.brain_mask > 0
    for mod in MODALITIES:
        resid = vis.images[mod][inb] - vis.clean[mod][inb] * vis.bias[mod][inb]
        sigma = p.noise_fraction * p.contrast[mod]["wm"]
        assert 0.85 * sigma < resid.std() < 1.12 * sigma, (mod, resid.std() / sigma)
        assert vis.images[mod].min() >= 0  # magnitude (Rician) images


def test_simulate_visit_matches_written_trial(trial):
    root, p = trial
    vis = synth.simulate_visit(p, 1, 1)
    sub, ses = vis.participant_id[4:], vis.session
    written, img = read(image_path(root / "bids", sub, ses, "FLAIR"))
    assert np.array_equal(written, np.clip(np.rint(vis.images["FLAIR"]), 0, 32767).astype(np.int16))
    mask, _ = read(gt_mask_path(root / "bids", sub, ses))
    assert np.array_equal(mask, vis.lesion_mask)
    assert img.GetOrigin() == pytest.approx(vis.origin)
    visits = pd.read_csv(root / "truth" / "visits.tsv", sep="\t")
    row = visits[(visits.participant_id == vis.participant_id) & (visits.session == ses)].iloc[0]
    assert np.allclose(matrix(row), vis.native_to_subject, atol=1e-8)


def test_deterministic_bytes_and_independent_of_n_jobs(tmp_path):
    p = synth.SynthParams.tiny(seed=11, weeks=[0], fov_mm=[180.0, 200.0, 60.0])

    def digest(root: Path) -> dict[str, str]:
        return {
            str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*"))
            if f.is_file()
        }

    synth.generate_trial(tmp_path / "a", p, n_jobs=1, progress=False)
    synth.generate_trial(tmp_path / "b", p, n_jobs=2, progress=False)
    a, b = digest(tmp_path / "a"), digest(tmp_path / "b")
    assert len(a) > 20 and a == b
    c = synth.SynthParams.tiny(seed=12, weeks=[0], fov_mm=[180.0, 200.0, 60.0])
    synth.generate_trial(tmp_path / "a", c, n_jobs=1, progress=False)  # regenerates in place
    assert digest(tmp_path / "a") != a


def test_refuses_to_overwrite_foreign_folder(tmp_path):
    (tmp_path / "bids").mkdir()
    (tmp_path / "bids" / "mine.txt").write_text("precious")
    with pytest.raises(InputError, match="refusing to overwrite"):
        synth.generate_trial(tmp_path, tiny(weeks=[0]), progress=False)
    assert (tmp_path / "bids" / "mine.txt").read_text() == "precious"


# ----------------------------------------------------------------------------- tabular
def test_new_lesions_follow_treatment_effect_and_tlv_targets():
    p = synth.SynthParams.tiny(seed=5, weeks=[0, 24, 48, 96])
    t = synth._get_template(p)
    anat = synth._build_anatomy(t, p, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    new = {"PLA": [], "OCR": []}
    for arm in new:
        for _ in range(60):
            targets = list(np.array([2.0, 2.1, 2.15, 2.3]) * rng.uniform(0.5, 2.0))
            les = synth._draw_lesions(t, anat, p, arm, targets, rng)
            new[arm].append(sum(l.onset > 0 for l in les))
            nominal = [sum(l.base_volume_ul() * l.scale[v] ** 3 for l in les) / 1000 for v in range(4)]
            assert np.allclose(nominal, np.array(targets) * p.lesion_volume_calibration, rtol=0.02)
    expect = p.new_lesions_per_year * 96 / 52
    assert abs(np.mean(new["PLA"]) - expect) < 0.25 * expect
    ratio = np.mean(new["OCR"]) / np.mean(new["PLA"])
    assert 0.08 < ratio < 0.4, ratio


def test_cox_on_large_tabular_cohort_recovers_log_tlv_hr():
    import lifelines
    p = synth.SynthParams.from_dict({"seed": 21, "subjects_per_arm": 2500})
    part, _, out = synth.clinical_tables(p)
    df = out[out.endpoint == "CDP24"].merge(part, on="participant_id")
    df = pd.DataFrame(
        {
            "T": df.time_weeks,
            "E": df.event,
            "treated": (df.arm != p.cohort.control_arm).astype(float),
            "log_tlv": df.log_tlv,
        }
    )
    cph = lifelines.CoxPHFitter().fit(df, "T", "E")
    s = cph.summary.loc["log_tlv"]
    assert s["coef lower 95%"] <= p.cohort.beta_log_tlv <= s["coef upper 95%"]
    assert s["coef lower 95%"] > 0  # a generator ignoring TLV would fail here
    a = cph.summary.loc["treated"]
    assert a["coef lower 95%"] <= p.cohort.beta_arm <= a["coef upper 95%"]


def test_outcomes_use_realised_baseline_tlv():
    p = synth.SynthParams.from_dict({"seed": 2, "subjects_per_arm": 50})
    part, _, out_target = synth.clinical_tables(p)
    realised = {pid: 0.5 * v for pid, v in zip(part.participant_id, part.tlv_bl_ml)}
    part2, _, out_real = synth.clinical_tables(p, realised)
    assert np.allclose(part2.log_tlv, np.log(0.5 * part.tlv_bl_ml + p.cohort.log_tlv_offset_ml))
    assert not out_real.equals(out_target)
    pd.testing.assert_frame_equal(part.drop(columns="log_tlv"), part2.drop(columns="log_tlv"))


def test_cli_reports_bad_config(tmp_path, capsys):
    cfg = tmp_path / "params.yaml"
    cfg.write_text("synthetic:\n  seed: 1\n  subjects_per_arms: 3\n")
    assert synth.main([str(tmp_path / "out"), "--config", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "subjects_per_arms" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "bids").exists()


def test_follow_up_to_baseline_transform_from_truth():
    """What a registration test needs: the true follow-up -> baseline native transform."""
    bl, fu = synth.simulate_subject_visits(tiny(), 0)
    T = np.linalg.inv(bl.native_to_subject) @ fu.native_to_subject  # fu native -> bl native
    tab_bl = bl.lesions.set_index("lesion_id")
    tab_fu = fu.lesions.set_index("lesion_id")
    both = [i for i in tab_bl.index if i in tab_fu.index and tab_bl.loc[i, "n_voxels"] >= 20]
    assert len(both) > 5
    xf = tab_fu.loc[both, ["x_native", "y_native", "z_native"]].to_numpy()
    xb = tab_bl.loc[both, ["x_native", "y_native", "z_native"]].to_numpy()
    mapped = xf @ T[:3, :3].T + T[:3, 3]
    assert np.median(np.linalg.norm(mapped - xb, axis=1)) < 1.0
    assert np.median(np.linalg.norm(xf - xb, axis=1)) > 3.0  # the head really moved
    tx = fu.transform_to_subject()
    assert np.allclose(tx.TransformPoint(tuple(xf[0])), fu.native_to_subject[:3, :3] @ xf[0] + fu.native_to_subject[:3, 3])


# ----------------------------------------------------------------------------- clinical-realism profile
#: sha256 of the int16 images and lesion labels of one default-profile visit, taken before the
#: clinical profile existed: the default profile (the demo's data) must stay bit-identical.
DEFAULT_VISIT_SHA256 = "029f017a5b533d0a140fc96ee3e6ecb0938569051ad2288ac126e4dc9ff99ebe"


def test_default_profile_output_unchanged():
    p = synth.SynthParams.tiny(seed=3, weeks=[0], fov_mm=[180.0, 200.0, 90.0])
    vis = synth.simulate_visit(p, 1, 0)
    h = hashlib.sha256()
    for mod in ("T1w", "T2w", "FLAIR"):
        h.update(np.clip(np.rint(vis.images[mod]), 0, 32767).astype(np.int16).tobytes())
    h.update(vis.lesion_labels.astype(np.int16).tobytes())
    assert h.hexdigest() == DEFAULT_VISIT_SHA256
    assert vis.mimic_labels is None and "location" not in vis.lesions
    assert "profile" not in p.to_dict() and "realism" not in p.to_dict()  # params.json unchanged too


def test_profile_and_realism_are_checked():
    with pytest.raises(InputError, match="profile"):
        synth.SynthParams.from_dict({"profile": "clinicall"})
    with pytest.raises(InputError, match="needs profile: clinical"):
        synth.SynthParams.from_dict({"realism": {"mimic_strength": 2.0}})
    with pytest.raises(InputError, match="mimic_strenght"):
        synth.SynthParams.from_dict({"profile": "clinical", "realism": {"mimic_strenght": 2.0}})
    with pytest.raises(InputError, match="faint_factor"):
        synth.SynthParams.from_dict({"profile": "clinical", "realism": {"faint_factor": [0.6, 0.3]}})
    with pytest.raises(InputError, match="confluent_max"):
        synth.SynthParams.from_dict({"profile": "clinical", "realism": {"confluent_max": "two"}})
    p = synth.SynthParams.from_dict({"profile": "clinical", "realism": {"mimic_strength": 2.0}})
    assert synth.SynthParams.from_dict(json.loads(json.dumps(p.to_dict()))) == p
