"""BIDS input discovery and validation (SPEC §1).

A trial is a BIDS folder with, per participant and visit, a pre-contrast T1w, a T2w
and a FLAIR image, an optional ground-truth (GT) lesion mask under
``derivatives/lesions``, ``participants.tsv`` and ``phenotype/outcomes.tsv``.

Validation runs in two depths through one function, :func:`validate`:

* ``check_images=False`` (cheap, at workflow start): tables, IDs, folder layout,
  missing modalities, baseline visit, arms, outcome rows;
* ``check_images=True`` (the ``validate_bids`` rule, before any heavy step): also
  opens every image and checks it is a readable, 3-D, finite, non-empty volume and
  that each GT mask shares its FLAIR's geometry.

Every problem found is reported at once, one line each, naming the file or row.
IDs must match ``[A-Za-z0-9]+`` so that nothing from a table can become a path
outside the output folder.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from t2lesion.errors import InputError

MODALITIES = ("T1w", "T2w", "FLAIR")
ENDPOINTS = ("CDP24", "T25FW24", "9HPT24", "CCDP24")
PARTICIPANT_COLUMNS = ("participant_id", "arm", "age", "sex", "region", "edss_bl")
OUTCOME_COLUMNS = ("participant_id", "endpoint", "time_weeks", "event")
LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")
SUB_RE = re.compile(r"^sub-([A-Za-z0-9]+)$")
SES_RE = re.compile(r"^ses-w(\d{3})$")
BASELINE_SESSION = "w000"

#: BIDS's spelling of a missing value in a table cell (an empty cell means the same).
MISSING_VALUES = frozenset({"n/a", ""})
#: Accepted spellings of sex (case-insensitive) and the code the analyses use.
SEX_CODES = {"m": "M", "male": "M", "f": "F", "female": "F"}


def is_missing(value) -> bool:
    """True for a covariate cell that BIDS calls missing (``n/a`` or empty)."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() in MISSING_VALUES


def normalise_sex(value) -> str | None:
    """``'male' -> 'M'``, ``'F' -> 'F'``; ``None`` for a missing or unrecognised value."""
    return SEX_CODES.get(str(value).strip().lower()) if not is_missing(value) else None


@dataclass(frozen=True)
class Visit:
    """One imaging visit: ``sub`` and ``ses`` are BIDS labels without their prefixes."""

    sub: str
    ses: str

    @property
    def week(self) -> int:
        return int(self.ses[1:])

    @property
    def prefix(self) -> str:
        return f"sub-{self.sub}_ses-{self.ses}"


@dataclass
class TrialLayout:
    """What :func:`validate` found in a BIDS folder."""

    bids: Path
    participants: pd.DataFrame
    outcomes: pd.DataFrame | None
    visits: list[Visit] = field(default_factory=list)
    has_gt: dict[Visit, bool] = field(default_factory=dict)

    def subjects(self) -> list[str]:
        return sorted({v.sub for v in self.visits})


def session_label(week: int) -> str:
    """``24 -> 'w024'`` (BIDS session label of a visit at that week)."""
    return f"w{int(week):03d}"


def image_path(bids: str | Path, sub: str, ses: str, modality: str) -> Path:
    return Path(bids) / f"sub-{sub}" / f"ses-{ses}" / "anat" / f"sub-{sub}_ses-{ses}_{modality}.nii.gz"


def gt_mask_path(bids: str | Path, sub: str, ses: str) -> Path:
    return (
        Path(bids)
        / "derivatives"
        / "lesions"
        / f"sub-{sub}"
        / f"ses-{ses}"
        / "anat"
        / f"sub-{sub}_ses-{ses}_desc-lesion_mask.nii.gz"
    )


def _read_tsv(path: Path, required: tuple[str, ...], problems: list[str]) -> pd.DataFrame | None:
    if not path.is_file():
        problems.append(f"{path}: file not found")
        return None
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises many types for malformed text
        problems.append(f"{path}: cannot be parsed as a tab-separated table ({exc})")
        return None
    missing = [c for c in required if c not in df.columns]
    if missing:
        problems.append(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(df.columns)})")
        return None
    return df


def _as_number(value: str) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _check_participants(
    path: Path, df: pd.DataFrame, arms: set[str] | None, problems: list[str]
) -> pd.DataFrame:
    ok_rows = []
    seen: dict[str, int] = {}
    for i, row in df.iterrows():
        where = f"{path}, row {i + 2}"  # +1 header, +1 one-based
        pid = row["participant_id"].strip()
        m = SUB_RE.match(pid)
        if not m:
            problems.append(
                f"{where}: participant_id {pid!r} is not 'sub-<label>' with a label of letters and digits only"
            )
            continue
        if pid in seen:
            problems.append(f"{where}: duplicate participant_id {pid!r} (first on row {seen[pid]})")
            continue
        seen[pid] = i + 2
        if arms is not None and row["arm"] not in arms:
            problems.append(f"{where}: unknown arm {row['arm']!r} for {pid} (configured arms: {', '.join(sorted(arms))})")
        age = _as_number(row["age"])
        if age is None or age <= 0:
            problems.append(f"{where}: age {row['age']!r} for {pid} is not a positive number")
        if row["sex"] not in ("M", "F"):
            problems.append(f"{where}: sex {row['sex']!r} for {pid} must be M or F")
        edss = _as_number(row["edss_bl"])
        if edss is None or not 0 <= edss <= 10:
            problems.append(f"{where}: edss_bl {row['edss_bl']!r} for {pid} is not a number in 0–10")
        if not row["region"].strip():
            problems.append(f"{where}: empty region for {pid}")
        ok_rows.append(i)
    out = df.loc[ok_rows].copy()
    for col in ("age", "edss_bl"):
        out[col] = pd.to_numeric(out[col], errors="coerce")
    return out.reset_index(drop=True)


def _check_outcomes(path: Path, df: pd.DataFrame, known: set[str], problems: list[str]) -> pd.DataFrame:
    seen: dict[tuple[str, str], int] = {}
    for i, row in df.iterrows():
        where = f"{path}, row {i + 2}"
        pid = row["participant_id"]
        if pid not in known:
            problems.append(f"{where}: outcome for unknown participant {pid!r} (not in participants.tsv)")
        if row["endpoint"] not in ENDPOINTS:
            problems.append(f"{where}: unknown endpoint {row['endpoint']!r} (expected one of {', '.join(ENDPOINTS)})")
        t = _as_number(row["time_weeks"])
        if t is None:
            problems.append(f"{where}: time_weeks {row['time_weeks']!r} is not a number")
        elif t < 0:
            problems.append(f"{where}: negative time_weeks {t:g} for {pid}")
        if row["event"] not in ("0", "1"):
            problems.append(f"{where}: event {row['event']!r} must be 0 or 1")
        key = (pid, row["endpoint"])
        if key in seen:
            problems.append(f"{where}: duplicate outcome {pid} {row['endpoint']} (first on row {seen[key]})")
        seen[key] = i + 2
    out = df.copy()
    out["time_weeks"] = pd.to_numeric(out["time_weeks"], errors="coerce")
    out["event"] = pd.to_numeric(out["event"], errors="coerce")
    return out


def _check_image(path: Path, problems: list[str], *, mask: bool = False):
    """Open one image; append a problem and return None when it is unusable."""
    from t2lesion.io import read_image  # SimpleITK only where images are opened

    import SimpleITK as sitk

    try:
        img = read_image(path, check_finite=True)
    except InputError as exc:
        problems.extend(exc.problems)
        return None
    arr = sitk.GetArrayViewFromImage(img)
    if not mask and not np.any(arr):
        problems.append(f"{path}: image is empty (all voxels are zero)")
        return None
    if mask:
        values = np.unique(arr)
        if not np.all(np.isin(values, (0, 1))):
            problems.append(f"{path}: lesion mask must be binary (0/1), found values {values[:5].tolist()}…")
    return img


def validate(
    bids: str | Path,
    arms: list[str] | None = None,
    *,
    check_images: bool = True,
    require_outcomes: bool = True,
) -> TrialLayout:
    """Validate a BIDS trial folder and return its layout, or raise one :class:`InputError`
    listing every problem found.

    ``arms``: the configured arm names (control + treatments); ``None`` skips the arm check.
    """
    bids = Path(bids)
    problems: list[str] = []
    if not bids.is_dir():
        raise InputError(f"{bids}: BIDS folder not found")

    part_path = bids / "participants.tsv"
    pdf = _read_tsv(part_path, PARTICIPANT_COLUMNS, problems)
    participants = (
        _check_participants(part_path, pdf, set(arms) if arms else None, problems)
        if pdf is not None
        else pd.DataFrame(columns=PARTICIPANT_COLUMNS)
    )
    known = set(participants["participant_id"])

    outcomes = None
    out_path = bids / "phenotype" / "outcomes.tsv"
    if out_path.exists() or require_outcomes:
        odf = _read_tsv(out_path, OUTCOME_COLUMNS, problems)
        if odf is not None:
            outcomes = _check_outcomes(out_path, odf, known | _all_listed(pdf), problems)

    visits: list[Visit] = []
    has_gt: dict[Visit, bool] = {}
    folders = sorted(p for p in bids.iterdir() if p.is_dir() and p.name.startswith("sub-"))
    on_disk = set()
    for sub_dir in folders:
        m = SUB_RE.match(sub_dir.name)
        if not m:
            problems.append(f"{sub_dir}: folder name is not 'sub-<letters and digits>'")
            continue
        sub = m.group(1)
        on_disk.add(sub_dir.name)
        if pdf is not None and sub_dir.name not in _all_listed(pdf):
            problems.append(f"{sub_dir}: participant {sub_dir.name} is not listed in {part_path}")
        sessions = sorted(p for p in sub_dir.iterdir() if p.is_dir())
        labels = []
        for ses_dir in sessions:
            ms = SES_RE.match(ses_dir.name)
            if not ms:
                problems.append(f"{ses_dir}: session folder is not 'ses-w<NNN>' (week, three digits)")
                continue
            ses = ses_dir.name[4:]
            labels.append(ses)
            visit = Visit(sub, ses)
            missing = [mod for mod in MODALITIES if not image_path(bids, sub, ses, mod).is_file()]
            for mod in missing:
                problems.append(f"{image_path(bids, sub, ses, mod)}: missing {mod} image")
            gt = gt_mask_path(bids, sub, ses)
            has_gt[visit] = gt.is_file()
            if check_images:
                imgs = {}
                for mod in MODALITIES:
                    if mod not in missing:
                        imgs[mod] = _check_image(image_path(bids, sub, ses, mod), problems)
                if gt.is_file():
                    gimg = _check_image(gt, problems, mask=True)
                    flair = imgs.get("FLAIR")
                    if gimg is not None and flair is not None:
                        from t2lesion.io import same_geometry

                        if not same_geometry(gimg, flair):
                            problems.append(
                                f"{gt}: header geometry differs from its FLAIR "
                                f"(size {gimg.GetSize()} vs {flair.GetSize()}, spacing "
                                f"{tuple(round(s, 3) for s in gimg.GetSpacing())} vs "
                                f"{tuple(round(s, 3) for s in flair.GetSpacing())})"
                            )
            visits.append(visit)
        if not labels:
            problems.append(f"{sub_dir}: no visits (ses-wNNN folders)")
        elif BASELINE_SESSION not in labels:
            problems.append(f"{sub_dir}: no baseline visit (ses-{BASELINE_SESSION}); found {', '.join(labels)}")
    for pid in sorted(known - on_disk):
        problems.append(f"{part_path}: participant {pid} has no imaging folder {bids / pid}")

    if problems:
        raise InputError(problems, header=f"{bids}: {len(problems)} problem(s) found")
    return TrialLayout(bids=bids, participants=participants, outcomes=outcomes, visits=visits, has_gt=has_gt)


def _all_listed(pdf: pd.DataFrame | None) -> set[str]:
    return set() if pdf is None else set(pdf["participant_id"].str.strip())


def write_summary(layout: TrialLayout, path: str | Path) -> None:
    """Write the validated visit list (one row per visit) as the rule's output."""
    rows = [
        {"participant_id": f"sub-{v.sub}", "session": f"ses-{v.ses}", "week": v.week, "has_gt": layout.has_gt[v]}
        for v in layout.visits
    ]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["participant_id", "session", "week", "has_gt"]).to_csv(path, sep="\t", index=False)
