"""Lesion-by-lesion causes of the GT-mask vs synthetic-truth disagreement of the new/enlarging
counts (issue 16; results in docs/tracking_truth_agreement.md).

Usage, on a folder where ``tests/test_tracking.py``'s tiny 3-visit trial ran
(``T2LESION_TRACKING_WORK=<work> pytest tests/test_tracking.py -k synthetic_truth``)::

    PYTHONPATH=. python docs/tracking_truth_agreement.py <work> [--direct]

1. Attribution: every voxel of a visit's GT mask in MNI is given the ``lesion_id`` whose own
   native mask (``truth/…_desc-lesions_dseg.nii.gz``), resampled like the GT (same composed
   FLAIR -> MNI transform, B-spline), is largest there. B-spline is linear in its input, so
   the per-id maps sum to the resampled GT before the 0.5 threshold (checked).
2. Each follow-up is tracked against its reference (previous, baseline) at the 3-voxel
   minimum; each lesion_id whose class differs between the masks and the truth rule
   (:func:`t2lesion.tracking.truth_counts`) is listed with its cause and its fate in the
   generator (nominal volume, onset).
3. ``--direct``: renders each visit's GT straight into the common MNI grid from the
   generator's continuous lesion objects (through the baseline's transform and true pose,
   the same slab integration and threshold), i.e. a GT without the per-visit native grid,
   and repeats the count comparison against the truth table.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from t2lesion.evaluation.segmentation import _label
from t2lesion.preprocess._common import transform_to_matrix
from t2lesion.tracking import classify_pair, track_subject, truth_counts

SUBS = ["001", "002", "003", "004"]
WEEKS = ["w000", "w024", "w048"]
SES = [f"ses-{w}" for w in WEEKS]
VOX_ML = 0.003


def _paths(work: Path, s: str, w: str) -> dict[str, Path]:
    pre = work / f"results/preproc/trial-tiny3/sub-{s}/ses-{w}"
    return {"dseg": work / f"results/synth/trial-tiny3/truth/sub-{s}/ses-{w}/sub-{s}_ses-{w}_desc-lesions_dseg.nii.gz",
            "gt": pre / f"sub-{s}_ses-{w}_space-MNI1x1x3_desc-lesionGT_mask.nii.gz",
            "xfm": pre / f"sub-{s}_ses-{w}_from-FLAIR_to-MNI1x1x3_xfm.tfm"}


def attribute(work: Path, s: str, w: str) -> dict:
    """lesion_id of each MNI GT voxel (argmax of the per-id B-spline maps, cropped per id)."""
    p = _paths(work, s, w)
    dseg, gt_img = sitk.ReadImage(str(p["dseg"])), sitk.ReadImage(str(p["gt"]))
    tx = sitk.ReadTransform(str(p["xfm"]))
    inv = np.linalg.inv(transform_to_matrix(tx))  # native -> MNI
    d = sitk.GetArrayFromImage(dseg).astype(np.int32)
    gt = sitk.GetArrayFromImage(gt_img) > 0
    best = np.zeros(gt.shape, np.float32)
    lab = np.zeros(gt.shape, np.int32)
    total = np.zeros(gt.shape, np.float32)
    size = np.array(gt_img.GetSize())
    for i in (int(x) for x in np.unique(d) if x > 0):
        zyx = np.argwhere(d == i)
        lo, hi = zyx.min(0) - 3, zyx.max(0) + 3  # B-spline support, native voxels
        corners = [dseg.TransformContinuousIndexToPhysicalPoint([float(c[2]), float(c[1]), float(c[0])])
                   for c in np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1).T]
        mni = [(inv @ np.r_[c, 1.0])[:3] for c in corners]
        idx = np.array([gt_img.TransformPhysicalPointToContinuousIndex(tuple(m)) for m in mni])
        a = np.clip(np.floor(idx.min(0)).astype(int) - 1, 0, size - 1)
        b = np.clip(np.ceil(idx.max(0)).astype(int) + 2, 1, size)
        sub = sitk.RegionOfInterest(gt_img, [int(x) for x in b - a], [int(x) for x in a])
        m = sitk.GetImageFromArray((d == i).astype(np.float32))
        m.CopyInformation(dseg)
        prob = sitk.GetArrayFromImage(sitk.Resample(m, sub, tx, sitk.sitkBSpline, 0.0, sitk.sitkFloat32))
        sl = (slice(a[2], b[2]), slice(a[1], b[1]), slice(a[0], b[0]))
        better = prob > best[sl]
        best[sl][better] = prob[better]
        lab[sl][better] = i
        total[sl] += prob
    lab[~gt] = 0
    return {"lab": lab, "gt": gt, "consistent": bool(((total >= 0.5) == gt).all())}


def causes(work: Path, A: dict, reference: str, out=print) -> Counter:
    truth = pd.read_csv(work / "results/synth/trial-tiny3/truth/lesions.tsv", sep="\t")
    C: Counter = Counter()
    for s in SUBS:
        t = truth[truth["participant_id"] == f"sub-{s}"]
        N = {w: dict(zip(g["lesion_id"], g["n_voxels"])) for w, g in t.groupby("session")}
        nom = {w: dict(zip(g["lesion_id"], g["nominal_volume_ml"] / VOX_ML)) for w, g in t.groupby("session")}
        onset = dict(zip(t["lesion_id"], t["onset_week"]))
        for k in (1, 2):
            j = k - 1 if reference == "previous" else 0
            R, F = A[(s, WEEKS[j])], A[(s, WEEKS[k])]
            les, _, _ = classify_pair(R["gt"], F["gt"], VOX_ML)
            labels = _label(F["gt"], 18, 3).labels
            cur, old = N.get(WEEKS[k], {}), N.get(WEEKS[j], {})

            def truth_class(i):
                if cur.get(i, 0) < 3:
                    return "-"
                if i not in old:
                    return "new"
                return "enlarging" if cur[i] >= 1.5 * old[i] and cur[i] - old[i] >= 3 else "-"

            for i in sorted({int(x) for x in np.unique(F["lab"]) if x} | set(cur)):
                here = F["lab"] == i
                comps, cnt = np.unique(labels[here], return_counts=True)
                comps = [(int(c), int(n)) for c, n in zip(comps, cnt) if c]
                mask_class = "-"
                if comps:
                    L = max(comps, key=lambda x: x[1])[0]
                    ids, n_ids = np.unique(F["lab"][labels == L], return_counts=True)
                    mask_class = les.loc[les["lesion"] == L, "class"].iloc[0]
                    mask_class = mask_class if mask_class in ("new", "enlarging") else "-"
                    if int(ids[np.argmax(n_ids)]) != i:
                        mask_class = "merged"  # counted through another lesion_id's component
                tc = truth_class(i)
                if mask_class == tc or (mask_class == "merged" and tc == "-"):
                    continue
                m_ref, m_fu = int((R["lab"] == i).sum()), int(here.sum())
                n_ref, n_fu = old.get(i, 0), cur.get(i, 0)
                if mask_class == "new" and n_fu < 3:
                    cause = "masks new, truth too small at the follow-up (< 3 native voxels)"
                elif mask_class == "new":
                    cause = ("masks new: its copy at the reference vanished in MNI" if m_ref == 0 else
                             "masks new: its MNI copy misses its copy at the reference (< 10 % overlap)")
                elif tc == "new":
                    cause = ("truth new, < 3 voxels in MNI" if m_fu < 3 else
                             f"truth new, masks {mask_class} (merged or overlapping a neighbour)")
                elif mask_class == "enlarging":
                    cause = "masks enlarging, truth not (voxel counts of the two grids)"
                elif tc == "enlarging":
                    cause = "truth enlarging, masks not (voxel counts of the two grids)"
                else:
                    cause = f"masks {mask_class}, truth {tc}"
                wj, wk = WEEKS[j], WEEKS[k]
                fate = ("onset after the reference" if onset[i] > int(wj[1:]) else
                        "grew >= 50 % in the generator" if nom[wk].get(i, 0) >= 1.5 * nom.get(wj, {}).get(i, np.inf)
                        else "no such growth in the generator")
                C[cause] += 1
                out(f"| {reference} | sub-{s} {wk} | {i} | {n_ref} -> {n_fu} | {m_ref} -> {m_fu} | "
                    f"{nom.get(wj, {}).get(i, 0):.1f} -> {nom[wk].get(i, 0):.1f} | {mask_class} | {tc} | "
                    f"{cause}; {fate} |")
    return C


def agreement(work: Path, mask_path, reference: str) -> str:
    truth = pd.read_csv(work / "results/synth/trial-tiny3/truth/lesions.tsv", sep="\t")
    frames = []
    for s in SUBS:
        masks = [sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path(s, w)))) > 0 for w in WEEKS]
        frames.append(track_subject(masks, SES, VOX_ML, participant_id=f"sub-{s}", reference=reference)[1])
    v = pd.concat(frames)
    v = v[v["reference_session"] != ""]
    want = truth_counts(truth, {f"sub-{s}": SES for s in SUBS}, reference=reference)
    m = v.merge(want, on=["participant_id", "session"], suffixes=("_m", "_t"))
    eq = (m["n_new_m"] == m["n_new_t"]) & (m["n_enlarging_m"] == m["n_enlarging_t"])
    return (f"{int(eq.sum())}/{len(m)} equal; new {int(m['n_new_m'].sum())} vs {int(m['n_new_t'].sum())}, "
            f"enlarging {int(m['n_enlarging_m'].sum())} vs {int(m['n_enlarging_t'].sum())}")


def render_direct(work: Path) -> None:
    """Each visit's GT rendered straight into the common MNI grid (see the module docstring)."""
    import json

    from scipy import ndimage as ndi

    from t2lesion import synth

    p = synth.SynthParams.from_dict(json.load(open(work / "results/synth/trial-tiny3/truth/params.json"))["params"])
    visits = pd.read_csv(work / "results/synth/trial-tiny3/truth/visits.tsv", sep="\t")
    for s in SUBS:
        index, row, targets = synth._subject_inputs(p, f"sub-{s}")
        subj = synth._build_subject(p, index, row["participant_id"], row["arm"], targets)
        g0 = sitk.ReadImage(str(_paths(work, s, "w000")["gt"]))
        pose = visits[(visits["participant_id"] == f"sub-{s}") & (visits["session"] == "w000")].iloc[0]
        A = (np.array(pose["native_to_subject"].split(), float).reshape(4, 4)
             @ transform_to_matrix(sitk.ReadTransform(str(_paths(work, s, "w000")["xfm"]))))  # MNI -> subject
        Ainv = np.linalg.inv(A)
        D = np.array(g0.GetDirection()).reshape(3, 3)
        org, sp = np.array(g0.GetOrigin()), np.array(g0.GetSpacing())
        nx, ny, nz = g0.GetSize()
        k, edge = p.slice_supersample, p.lesion_edge_mm
        for v, w in enumerate(WEEKS):
            best = np.zeros((nz, ny, nx), np.float32)
            lab = np.zeros((nz, ny, nx), np.int32)
            total = np.zeros((nz * k, ny, nx), np.float32)
            for les in subj.lesions:
                sc = les.scale[v]
                if sc <= 0:
                    continue
                ci = np.linalg.solve(D * sp, (Ainv @ np.r_[les.centre, 1.0])[:3] - org)
                rad = (les.extent() * sc + edge + 3) / sp
                lo = np.maximum(np.floor(ci - rad - 1).astype(int), 0)
                hi = np.minimum(np.ceil(ci + rad + 1).astype(int) + 1, [nx, ny, nz])
                if np.any(lo >= hi):
                    continue
                zs = np.arange(lo[2] * k, hi[2] * k) / k - (k - 1) / (2 * k)
                ijk = np.stack(np.meshgrid(zs, np.arange(lo[1], hi[1]), np.arange(lo[0], hi[0]), indexing="ij"),
                               -1)[..., ::-1]
                pts = (org + (ijk * sp) @ D.T) @ A[:3, :3].T + A[:3, 3]
                occ = les.occupancy(pts, sc, edge)
                if not occ.any():
                    continue
                inside = occ > 0
                occ[inside] *= np.clip(ndi.map_coordinates(subj.anat.paren, subj.anat.to_index(pts[inside]), order=1,
                                                           mode="constant"), 0, 1)
                occ = occ.astype(np.float32)
                fsl = (slice(lo[2] * k, hi[2] * k), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
                np.maximum(total[fsl], occ, out=total[fsl])
                frac = occ.reshape(hi[2] - lo[2], k, hi[1] - lo[1], hi[0] - lo[0]).mean(1)
                nsl = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
                better = frac > best[nsl]
                best[nsl][better] = frac[better]
                lab[nsl][better] = les.lesion_id
            img = sitk.GetImageFromArray((total.reshape(nz, k, ny, nx).mean(1) >= p.gt_threshold).astype(np.uint8))
            img.CopyInformation(g0)
            (work / "direct").mkdir(exist_ok=True)
            sitk.WriteImage(img, str(work / "direct" / f"sub-{s}_ses-{w}.nii.gz"))


def main(argv: list[str]) -> int:
    work = Path(argv[0])
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    A = {(s, w): attribute(work, s, w) for s in SUBS for w in WEEKS}
    assert all(a["consistent"] for a in A.values()), "per-id maps do not add up to the GT"
    print("| reference | visit | lesion_id | native voxels | MNI voxels | nominal voxels | masks | truth | cause |")
    print("|---|---|---|---|---|---|---|---|---|")
    tallies = {ref: causes(work, A, ref) for ref in ("previous", "baseline")}
    for ref, c in tallies.items():
        print(f"\n{ref}: {sum(c.values())} lesion-level differences")
        for cause, n in c.most_common():
            print(f"  {n:3d}  {cause}")
    for ref in ("previous", "baseline"):
        print(f"GT masks (resampled), {ref}: {agreement(work, lambda s, w: _paths(work, s, w)['gt'], ref)}")
    if "--direct" in argv:
        render_direct(work)
        for ref in ("previous", "baseline"):
            print(f"GT rendered in MNI, {ref}: "
                  f"{agreement(work, lambda s, w: work / f'direct/sub-{s}_ses-{w}.nii.gz', ref)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
