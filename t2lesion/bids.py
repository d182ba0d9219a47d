"""BIDS input discovery and validation (docs/DESIGN.md §1).

A trial is a BIDS folder with, per participant and visit, a pre-contrast T1w, a T2w
and a FLAIR image, an optional ground-truth (GT) lesion mask under
``derivatives/lesions``, ``participants.tsv`` and ``phenotype/outcomes.tsv``.

File names follow BIDS: ``sub-<id>_ses-<ses>[_acq-<a>][_rec-<r>][_run-<n>]_<suffix>``
with ``.nii.gz`` or ``.nii``; GT masks are ``..._desc-lesion_mask.nii[.gz]``. Two
files for one modality of one visit (two runs, say) are refused, naming both:
which one to use is the user's decision. Sessions are ``ses-w<NNN>`` (the week);
other labels (``ses-01``, ``ses-baseline``) need a week from the subject's BIDS
``sub-<id>/sub-<id>_sessions.tsv`` (columns ``session_id``, ``week``) or from the
trial's ``sessions`` map in the config. Inside the pipeline a visit is named by its
week (``ses-wNNN``); the original label is kept in the validated visit list.

Validation runs in two depths through one function, :func:`validate`:

* ``check_images=False`` (cheap, while Snakemake builds its DAG): tables, IDs,
  folder layout, file names, missing modalities, baseline visit, arms, outcome rows;
  no image is opened, so it stays fast at thousands of visits;
* ``check_images=True`` (the ``validate_bids`` rule, before any heavy step): the
  same, plus every image opened and checked to be a readable, 3-D, finite,
  non-empty volume, and each GT mask a binary mask on its FLAIR's grid.

Every problem found is reported at once, one line each, naming the file or row.
A participant of ``participants.tsv`` without any MRI (no ``sub-<id>/`` folder, or one
with no image file under it) is not a problem: a warning names the participant and
``participants.tsv``, and the participant is a counted exclusion with reason
:data:`NO_MRI` (a row of the validated visit list, see :func:`write_summary`, which the
statistics turn into a row of every analysis's exclusions table).
Files under ``derivatives/lesions`` that match no visit are warnings (a GT that is
present but misnamed must not silently vanish). IDs must match ``[A-Za-z0-9]+`` so
that nothing from a table can become a path outside the output folder.

Covariates: ``n/a`` or an empty cell is a missing value (BIDS); the statistics
count such a participant as missing for the models that need that covariate.
Sex is ``M``/``F`` or ``male``/``female`` (any case). Anything else unrecognised
is an error naming the row.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from t2lesion.errors import InputError
from t2lesion.formatting import as_number

MODALITIES = ("T1w", "T2w", "FLAIR")
ENDPOINTS = ("CDP24", "T25FW24", "9HPT24", "CCDP24")
PARTICIPANT_COLUMNS = ("participant_id", "arm", "age", "sex", "region", "edss_bl")
OUTCOME_COLUMNS = ("participant_id", "endpoint", "time_weeks", "event")
EXCLUDE_COLUMNS = ("participant_id", "session", "reason")
LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")
SUB_RE = re.compile(r"^sub-([A-Za-z0-9]+)$")
SES_DIR_RE = re.compile(r"^ses-([A-Za-z0-9]+)$")
WEEK_LABEL_RE = re.compile(r"^w(\d{3})$")
#: Optional BIDS entities accepted between ``ses-`` and the suffix, in BIDS order.
ENTITIES = r"(?P<entities>(?:_acq-[A-Za-z0-9]+)?(?:_rec-[A-Za-z0-9]+)?(?:_run-[A-Za-z0-9]+)?)"
IMAGE_RE = re.compile(
    rf"^sub-(?P<sub>[A-Za-z0-9]+)_ses-(?P<ses>[A-Za-z0-9]+){ENTITIES}_(?P<suffix>T1w|T2w|FLAIR)\.nii(?:\.gz)?$"
)
GT_RE = re.compile(rf"^sub-(?P<sub>[A-Za-z0-9]+)_ses-(?P<ses>[A-Za-z0-9]+){ENTITIES}_desc-lesion_mask\.nii(?:\.gz)?$")
GT_FOLDER = Path("derivatives") / "lesions"
BASELINE_SESSION = "w000"
MAX_WEEK = 999
#: Exclusion reason of a participant of participants.tsv without any MRI.
NO_MRI = "no MRI"
#: What the validated visit list writes in session, week and source_session of such a
#: participant's row (BIDS's missing value): the row stands for the participant, not a visit.
NO_VISIT = "n/a"
SUMMARY_COLUMNS = ("participant_id", "session", "week", "source_session", "has_gt", "excluded")

#: BIDS's spelling of a missing value in a table cell (an empty cell means the same).
MISSING_VALUES = frozenset({"n/a", ""})
#: Accepted spellings of sex (case-insensitive) and the code the analyses use.
SEX_CODES = {"m": "M", "male": "M", "f": "F", "female": "F"}
EVENT_VALUES = ("0", "1", "0.0", "1.0")


def is_missing(value) -> bool:
    """True for a covariate cell that BIDS calls missing (``n/a`` or empty)."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() in MISSING_VALUES


def normalise_sex(value) -> str | None:
    """``'male' -> 'M'``, ``'F' -> 'F'``; ``None`` for a missing or unrecognised value."""
    return SEX_CODES.get(str(value).strip().lower()) if not is_missing(value) else None


@dataclass(frozen=True)
class Visit:
    """One imaging visit: ``sub`` and ``ses`` are labels without their prefixes;
    ``ses`` is always the week label ``wNNN`` (mapped from the BIDS session if needed)."""

    sub: str
    ses: str

    @property
    def week(self) -> int:
        return int(self.ses[1:])

    @property
    def prefix(self) -> str:
        return f"sub-{self.sub}_ses-{self.ses}"

    @property
    def participant_id(self) -> str:
        return f"sub-{self.sub}"


@dataclass
class TrialLayout:
    """What :func:`validate` found in a BIDS folder.

    ``visits`` are the visits the pipeline processes (sorted, excluded ones left
    out); ``excluded`` maps each excluded visit to its reason; ``images`` and ``gt``
    hold the files found for every visit; ``session_labels`` the original BIDS
    session label of each visit; ``no_mri`` the participants of participants.tsv
    without any MRI (``sub-<id>``, sorted), excluded with reason :data:`NO_MRI`.
    """

    bids: Path
    participants: pd.DataFrame
    outcomes: pd.DataFrame | None
    visits: list[Visit] = field(default_factory=list)
    images: dict[Visit, dict[str, Path]] = field(default_factory=dict)
    gt: dict[Visit, Path] = field(default_factory=dict)
    session_labels: dict[Visit, str] = field(default_factory=dict)
    excluded: dict[Visit, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    no_mri: list[str] = field(default_factory=list)

    @property
    def has_gt(self) -> dict[Visit, bool]:
        return {v: v in self.gt for v in self.all_visits()}

    def all_visits(self) -> list[Visit]:
        return sorted({*self.visits, *self.excluded}, key=lambda v: (v.sub, v.ses))

    def subjects(self) -> list[str]:
        return sorted({v.sub for v in self.visits})


def session_label(week: int) -> str:
    """``24 -> 'w024'`` (BIDS session label of a visit at that week)."""
    return f"w{int(week):03d}"


def image_path(bids: str | Path, sub: str, ses: str, modality: str) -> Path:
    """The canonical file name of an image (what the synthetic generator writes)."""
    return Path(bids) / f"sub-{sub}" / f"ses-{ses}" / "anat" / f"sub-{sub}_ses-{ses}_{modality}.nii.gz"


def gt_mask_path(bids: str | Path, sub: str, ses: str) -> Path:
    """The canonical file name of a GT lesion mask."""
    return Path(bids) / GT_FOLDER / f"sub-{sub}" / f"ses-{ses}" / "anat" / f"sub-{sub}_ses-{ses}_desc-lesion_mask.nii.gz"


# --------------------------------------------------------------------------- tables


def read_table(path: Path, required: tuple[str, ...], problems: list[str]) -> pd.DataFrame | None:
    """A BIDS TSV as strings, every cell stripped (CRLF, a UTF-8 BOM and trailing blanks are common)."""
    if not path.is_file():
        problems.append(f"{path}: file not found")
        return None
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except Exception as exc:  # pandas raises many types for malformed text
        problems.append(f"{path}: cannot be parsed as a tab-separated table ({type(exc).__name__}: {exc})")
        return None
    df.columns = [str(c).strip() for c in df.columns]
    df = df.apply(lambda col: col.str.strip())
    missing = [c for c in required if c not in df.columns]
    if missing and len(df.columns) == 1 and all(c in df.columns[0].split(",") for c in required):
        problems.append(f"{path}: comma-separated; BIDS tables are tab-separated (its header: {df.columns[0]!r})")
        return None
    if missing:
        problems.append(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(df.columns)})")
        return None
    return df


#: The oldest plausible age in participants.tsv (a larger value is a typo or another unit).
MAX_AGE_YEARS = 120


def _check_participants(
    path: Path, df: pd.DataFrame, arms: set[str] | None, problems: list[str]
) -> pd.DataFrame:
    ok_rows = []
    seen: dict[str, int] = {}
    for i, row in df.iterrows():
        where = f"{path}, row {i + 2}"  # +1 header, +1 one-based
        pid = row["participant_id"]
        if not SUB_RE.match(pid):
            problems.append(
                f"{where}: participant_id {pid!r} is not 'sub-<label>' with a label of letters and digits only"
            )
            continue
        if pid in seen:
            problems.append(f"{where}: duplicate participant_id {pid!r} (first on row {seen[pid]})")
            continue
        seen[pid] = i + 2
        if arms is not None and row["arm"] not in arms:
            problems.append(f"{where}: unknown arm {row['arm']!r} for {pid!r} (configured arms: {', '.join(sorted(arms))})")
        age = as_number(row["age"])
        if not is_missing(row["age"]) and (age is None or not 0 < age <= MAX_AGE_YEARS):
            problems.append(f"{where}: age {row['age']!r} for {pid!r} is not an age in years (0-{MAX_AGE_YEARS}, or n/a)")
        if not is_missing(row["sex"]) and normalise_sex(row["sex"]) is None:
            problems.append(f"{where}: sex {row['sex']!r} for {pid!r} must be M/F or male/female (or n/a)")
        edss = as_number(row["edss_bl"])
        if not is_missing(row["edss_bl"]) and (edss is None or not 0 <= edss <= 10):
            problems.append(f"{where}: edss_bl {row['edss_bl']!r} for {pid!r} is not a number in 0–10 (or n/a)")
        ok_rows.append(i)
    out = df.loc[ok_rows].copy()
    for col in ("age", "edss_bl"):
        out[col] = pd.to_numeric(out[col], errors="coerce")
    return out.reset_index(drop=True)


def _check_outcomes(path: Path, df: pd.DataFrame, known: set[str] | None, problems: list[str]) -> pd.DataFrame:
    """``known=None``: participants.tsv could not be read, so unknown IDs are not reported again."""
    seen: dict[tuple[str, str], int] = {}
    for i, row in df.iterrows():
        where = f"{path}, row {i + 2}"
        pid = row["participant_id"]
        if known is not None and pid not in known:
            problems.append(f"{where}: outcome for unknown participant {pid!r} (not in participants.tsv)")
        if row["endpoint"] not in ENDPOINTS:
            problems.append(f"{where}: unknown endpoint {row['endpoint']!r} (expected one of {', '.join(ENDPOINTS)})")
        t = as_number(row["time_weeks"])
        if t is None:
            problems.append(f"{where}: time_weeks {row['time_weeks']!r} is not a number")
        elif t < 0:
            problems.append(f"{where}: negative time_weeks {t:g} for {pid!r}")
        if row["event"] not in EVENT_VALUES:
            problems.append(f"{where}: event {row['event']!r} must be 0 or 1")
        key = (pid, row["endpoint"])
        if key in seen:
            problems.append(f"{where}: duplicate outcome {pid!r} {row['endpoint']} (first on row {seen[key]})")
        seen[key] = i + 2
    out = df.copy()
    out["time_weeks"] = pd.to_numeric(out["time_weeks"], errors="coerce")
    out["event"] = pd.to_numeric(out["event"], errors="coerce")
    return out


def read_exclusions(path: str | Path) -> list[dict]:
    """Visits to exclude from a TSV (participant_id, session, reason); InputError naming bad rows."""
    problems: list[str] = []
    df = read_table(Path(path), EXCLUDE_COLUMNS, problems)
    if df is not None:
        for i, row in df.iterrows():
            if not row["reason"]:
                problems.append(f"{path}, row {i + 2}: an exclusion needs a reason")
    if problems:
        raise InputError(problems, header=f"{path}: visits to exclude cannot be used")
    return df[list(EXCLUDE_COLUMNS)].to_dict("records")


# --------------------------------------------------------------------------- sessions


def _session_weeks(
    sub_dir: Path, labels: list[str], config_map: Mapping[str, int], problems: list[str]
) -> dict[str, int]:
    """Week of each session label of one subject: ``wNNN`` itself, else sessions.tsv or the config map."""
    table: dict[str, str] = {}
    tsv = sub_dir / f"{sub_dir.name}_sessions.tsv"
    needs_map = [lab for lab in labels if not WEEK_LABEL_RE.match(lab)]
    if tsv.is_file() and needs_map:
        df = read_table(tsv, ("session_id", "week"), problems)
        if df is not None:
            table = {r["session_id"].removeprefix("ses-"): r["week"] for _, r in df.iterrows()}
    weeks: dict[str, int] = {}
    unmapped = []
    for lab in labels:
        m = WEEK_LABEL_RE.match(lab)
        if m:
            weeks[lab] = int(m.group(1))
            continue
        raw = table.get(lab, config_map.get(lab))
        where = sub_dir / f"ses-{lab}"
        if raw is None:
            unmapped.append(lab)
            continue
        week = as_number(str(raw))
        if week is None or week < 0 or week != round(week) or week > MAX_WEEK:
            problems.append(f"{where}: week {raw!r} of session 'ses-{lab}' is not a whole number in 0–{MAX_WEEK}")
            continue
        weeks[lab] = int(week)
    if unmapped:
        names = ", ".join(f"'ses-{lab}'" for lab in unmapped)
        example = ", ".join(f"{lab}: <week>" for lab in unmapped)
        problems.append(
            f"{sub_dir / ('ses-' + unmapped[0])}: session(s) {names} not of the form 'ses-w<NNN>' (week, three "
            f"digits); give their weeks in {tsv.name} (columns session_id, week) or in the config "
            f"(trials.<name>.sessions: {{{example}}})"
        )
    by_week: dict[int, str] = {}
    for lab, week in sorted(weeks.items()):
        if week in by_week:
            problems.append(f"{sub_dir}: sessions 'ses-{by_week[week]}' and 'ses-{lab}' are both week {week}")
        by_week[week] = lab
    return weeks


# --------------------------------------------------------------------------- files


def _find_images(anat: Path, sub: str, ses: str, problems: list[str]) -> dict[str, Path]:
    """The one file per modality in a visit's ``anat`` folder; two candidates is an error naming both."""
    found: dict[str, list[Path]] = {m: [] for m in MODALITIES}
    if anat.is_dir():
        for f in sorted(anat.iterdir()):
            m = IMAGE_RE.match(f.name)
            if not m:
                continue
            if m["sub"] != sub or m["ses"] != ses:
                problems.append(f"{f}: file name says sub-{m['sub']} ses-{m['ses']}, its folder sub-{sub} ses-{ses}")
                continue
            found[m["suffix"]].append(f)
    for mod, files in found.items():
        if len(files) > 1:
            problems.append(
                f"{files[0]} and {files[1].name}: two {mod} images for one visit; keep one (or exclude the visit)"
            )
    return {mod: files[0] for mod, files in found.items() if files}


def _near_miss(anat: Path, mod: str) -> str:
    """``; found <name>: ...`` for a file of the folder that would be the ``mod`` image but for the
    case of its suffix or extension (``_flair.nii.gz``, ``_FLAIR.NII.GZ``), else ``""``."""
    if not anat.is_dir():
        return ""
    for f in sorted(anat.iterdir()):
        if IMAGE_RE.match(f.name) is None and re.search(rf"_{mod}\.nii(\.gz)?$", f.name, re.IGNORECASE):
            return f"; found {f.name!r}: BIDS names are case-sensitive ('_{mod}.nii.gz')"
    return ""


def _find_gt(bids: Path, warnings: list[str], problems: list[str]) -> dict[tuple[str, str], Path]:
    """GT masks by (subject, BIDS session label); every other file under derivatives/lesions is a warning."""
    root = bids / GT_FOLDER
    out: dict[tuple[str, str], Path] = {}
    if not root.is_dir():
        return out
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        if f.name.startswith(".") or f.name in ("dataset_description.json", "README", "README.md"):
            continue
        m = GT_RE.match(f.name)
        parts = f.relative_to(root).parts
        if not m or parts != (f"sub-{m['sub']}", f"ses-{m['ses']}", "anat", f.name):
            if not f.name.endswith(".json"):
                warnings.append(
                    f"{f}: not used as a GT lesion mask; expected "
                    f"{GT_FOLDER}/sub-<id>/ses-<ses>/anat/sub-<id>_ses-<ses>_desc-lesion_mask.nii.gz (or .nii)"
                )
            continue
        key = (m["sub"], m["ses"])
        if key in out:
            problems.append(f"{out[key]} and {f.name}: two GT lesion masks for one visit; keep one")
            continue
        out[key] = f
    return out


def _has_image_file(sub_dir: Path) -> bool:
    """Whether any NIfTI file lies anywhere under a subject's folder (a misplaced or
    misnamed image still counts: it is reported as such, never read as "no MRI")."""
    return any(f.is_file() and f.name.endswith((".nii", ".nii.gz")) for f in sub_dir.rglob("*.nii*"))


#: Fewest voxels along any axis of an image (N4 shrinks the grid by preprocess.n4_shrink, 4).
MIN_VOXELS_PER_AXIS = 4
#: Least part of the smaller field of view that a visit's T2w or FLAIR and its T1w must share.
MIN_FOV_OVERLAP = 0.5


def _check_image(path: Path, problems: list[str], *, mask: bool = False):
    """Open one image; append a problem and return None when it is unusable."""
    import SimpleITK as sitk

    from t2lesion.io import read_image  # SimpleITK only where images are opened

    try:
        img = read_image(path, check_finite=True)
    except InputError as exc:
        problems.extend(exc.problems)
        return None
    if min(img.GetSize()) < MIN_VOXELS_PER_AXIS:
        problems.append(f"{path}: size {img.GetSize()} is not a 3-D volume (fewer than {MIN_VOXELS_PER_AXIS} "
                        f"voxels along an axis: a single slice or a projection)")
        return None
    arr = sitk.GetArrayViewFromImage(img)
    if not mask and not np.any(arr):
        problems.append(f"{path}: image is empty (all voxels are zero)")
        return None
    if mask:
        values = np.unique(arr)
        fractional = values[(values > 0) & (values < 1)]
        if fractional.size:
            problems.append(
                f"{path}: probability map (values between 0 and 1, e.g. {float(fractional[0]):.3g}); "
                f"threshold it to a 0/1 lesion mask"
            )
        elif not np.all(np.isin(values, (0, 1))):
            problems.append(f"{path}: lesion mask must be binary (0/1), found values {values[:5].tolist()}")
    return img


def geometry_difference(a, b, tol: float = 1e-3) -> list[str]:
    """What differs between two images' grids, in words (size, spacing, origin, direction)."""
    out = []
    for name, get in (("size", "GetSize"), ("spacing", "GetSpacing"), ("origin", "GetOrigin"),
                      ("direction", "GetDirection")):
        va, vb = getattr(a, get)(), getattr(b, get)()
        if len(va) != len(vb) or not np.allclose(va, vb, atol=tol):
            out.append(f"{name} {tuple(round(float(x), 3) for x in va)} vs {tuple(round(float(x), 3) for x in vb)}")
    return out


def physical_box(img) -> tuple[np.ndarray, np.ndarray]:
    """The axis-aligned box (low and high corner, mm) that an image's voxels span in physical space."""
    size = np.asarray(img.GetSize(), float)
    corners = np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in size], indexing="ij")).reshape(len(size), -1).T
    pts = np.array([img.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in corners])
    return pts.min(axis=0), pts.max(axis=0)


def fov_overlap(a, b) -> float:
    """Shared part of two images' physical boxes, as a fraction of the smaller box's volume."""
    (lo_a, hi_a), (lo_b, hi_b) = physical_box(a), physical_box(b)
    shared = np.prod(np.clip(np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b), 0, None))
    return float(shared / min(np.prod(hi_a - lo_a), np.prod(hi_b - lo_b)))


def _check_visit_images(visit_images: dict[str, Path], gt: Path | None, problems: list[str]) -> None:
    imgs = {mod: _check_image(path, problems) for mod, path in visit_images.items()}
    t1w = imgs.get("T1w")
    for mod in ("T2w", "FLAIR"):
        if t1w is not None and imgs.get(mod) is not None:
            shared = fov_overlap(imgs[mod], t1w)
            if shared < MIN_FOV_OVERLAP:
                lo, hi = physical_box(imgs[mod])
                problems.append(
                    f"{visit_images[mod]}: its field of view shares {100 * shared:.0f} % with the visit's T1w "
                    f"(at least {100 * MIN_FOV_OVERLAP:.0f} % needed to align them): check its header's origin and "
                    f"direction (it spans {np.round(lo, 1).tolist()} to {np.round(hi, 1).tolist()} mm)")
    if gt is None:
        return
    gimg = _check_image(gt, problems, mask=True)
    flair = imgs.get("FLAIR")
    if gimg is not None and flair is not None:
        diff = geometry_difference(gimg, flair)
        if diff:
            problems.append(f"{gt}: header geometry differs from its FLAIR ({'; '.join(diff)})")


# --------------------------------------------------------------------------- validation


def _exclusion_keys(exclude: Iterable[Mapping] | None, problems: list[str]) -> dict[tuple[str, str], str]:
    out = {}
    for i, e in enumerate(exclude or ()):
        pid, ses = str(e.get("participant_id", "")).strip(), str(e.get("session", "")).strip()
        reason = str(e.get("reason", "")).strip()
        if not SUB_RE.match(pid) or not SES_DIR_RE.match(ses) or not reason:
            problems.append(
                f"visits to exclude, entry {i + 1}: needs participant_id 'sub-<id>', session 'ses-<label>' and a "
                f"reason (got {pid!r}, {ses!r}, {reason!r})"
            )
            continue
        out[(pid[4:], ses[4:])] = reason
    return out


def validate(
    bids: str | Path,
    arms: list[str] | None = None,
    *,
    check_images: bool = True,
    require_outcomes: bool = True,
    sessions: Mapping[str, int] | None = None,
    exclude: Iterable[Mapping] | None = None,
) -> TrialLayout:
    """Validate a BIDS trial folder and return its layout, or raise one :class:`InputError`
    listing every problem found (tables, files and, with ``check_images``, image contents).

    ``arms``: the configured arm names (control + treatments); ``None`` skips the arm check.
    ``sessions``: session label (without ``ses-``) -> week, for labels not of the form
    ``wNNN`` and not in the subject's sessions.tsv. ``exclude``: visits to leave out, as
    mappings with participant_id, session (BIDS label, original or ``ses-wNNN``) and
    reason; an excluded visit is not checked or processed, and excluding a baseline
    excludes that participant's every visit.
    """
    bids = Path(bids).expanduser()
    problems: list[str] = []
    warnings: list[str] = []
    if not bids.is_dir():
        raise InputError(f"{bids}: BIDS folder not found")
    config_map = {str(k).removeprefix("ses-"): v for k, v in (sessions or {}).items()}
    excluded_keys = _exclusion_keys(exclude, problems)

    part_path = bids / "participants.tsv"
    pdf = read_table(part_path, PARTICIPANT_COLUMNS, problems)
    participants = (
        _check_participants(part_path, pdf, set(arms) if arms else None, problems)
        if pdf is not None
        else pd.DataFrame(columns=PARTICIPANT_COLUMNS)
    )
    listed = None if pdf is None else set(pdf["participant_id"])
    known = set(participants["participant_id"])
    if pdf is not None and arms:
        for arm in arms:
            if not (participants["arm"] == arm).any():
                warnings.append(f"{part_path}: no participant in arm {arm!r}: the analyses that compare it with "
                                f"the control arm are skipped")

    outcomes = None
    out_path = bids / "phenotype" / "outcomes.tsv"
    if out_path.exists() or require_outcomes:
        odf = read_table(out_path, OUTCOME_COLUMNS, problems)
        if odf is not None:
            outcomes = _check_outcomes(out_path, odf, listed, problems)
            without = sorted(known - set(odf["participant_id"]))
            if known and without:
                shown = ", ".join(without[:10]) + (f", ... ({len(without)} in all)" if len(without) > 10 else "")
                warnings.append(f"{out_path}: {len(without)} of {len(known)} participants have no outcome row "
                                f"({shown}): the Cox and Kaplan-Meier analyses list them as exclusions")

    layout = TrialLayout(bids=bids, participants=participants, outcomes=outcomes, warnings=warnings)
    gt_files = _find_gt(bids, warnings, problems)
    used_gt: set[tuple[str, str]] = set()
    used_exclusions: set[tuple[str, str]] = set()
    on_disk = set()
    for sub_dir in sorted(p for p in bids.iterdir() if p.is_dir() and p.name.startswith("sub-")):
        m = SUB_RE.match(sub_dir.name)
        if not m:
            problems.append(f"{sub_dir}: folder name is not 'sub-<letters and digits>'")
            continue
        sub = m.group(1)
        if listed is not None and sub_dir.name not in listed:
            problems.append(f"{sub_dir}: participant {sub_dir.name!r} is not listed in {part_path}")
        elif sub_dir.name in known and not _has_image_file(sub_dir):
            continue  # no MRI: a warning below, not a problem
        on_disk.add(sub_dir.name)
        labels = []
        for ses_dir in sorted(p for p in sub_dir.iterdir() if p.is_dir()):
            ms = SES_DIR_RE.match(ses_dir.name)
            if not ms:
                problems.append(f"{ses_dir}: session folder is not 'ses-<letters and digits>'")
                continue
            labels.append(ms.group(1))
        weeks = _session_weeks(sub_dir, labels, config_map, problems)
        subject_visits = []
        for lab, week in sorted(weeks.items(), key=lambda kv: kv[1]):
            visit = Visit(sub, session_label(week))
            layout.session_labels[visit] = lab
            reason = excluded_keys.get((sub, lab)) or excluded_keys.get((sub, visit.ses))
            if reason is not None:
                used_exclusions |= {(sub, lab), (sub, visit.ses)}
                layout.excluded[visit] = reason
            gt = gt_files.get((sub, lab))
            if gt is not None:
                used_gt.add((sub, lab))
                layout.gt[visit] = gt
            if reason is not None:
                continue
            images = _find_images(sub_dir / f"ses-{lab}" / "anat", sub, lab, problems)
            layout.images[visit] = images
            for mod in MODALITIES:
                if mod not in images:
                    problems.append(f"{image_path(bids, sub, lab, mod)}: missing {mod} image (or .nii)"
                                    + _near_miss(sub_dir / f"ses-{lab}" / "anat", mod))
            if check_images:
                _check_visit_images(images, gt, problems)
            subject_visits.append(visit)
        if not labels:
            problems.append(f"{sub_dir}: no visits (ses-<label> folders)")
        elif len(weeks) == len(labels) and 0 not in weeks.values():
            found = ", ".join(f"ses-{lab} (week {w})" for lab, w in sorted(weeks.items(), key=lambda kv: kv[1]))
            problems.append(f"{sub_dir}: no baseline visit (week 0, ses-{BASELINE_SESSION}); found {found}")
        elif weeks:
            baseline = Visit(sub, BASELINE_SESSION)
            if baseline in layout.excluded:
                for v in subject_visits:
                    layout.excluded[v] = f"baseline visit excluded ({layout.excluded[baseline]})"
                subject_visits = []
        layout.visits += subject_visits
    for pid in sorted(known - on_disk):
        folder = bids / pid
        what = f"no image under {folder}" if folder.is_dir() else f"no imaging folder {folder}"
        warnings.append(f"{part_path}: participant {pid!r} has no MRI ({what}); excluded from every analysis "
                        f"with reason '{NO_MRI}'")
        layout.no_mri.append(pid)
        # an exclusion the config gives for a session of such a participant changes nothing
        used_exclusions |= {key for key in excluded_keys if key[0] == pid[4:]}
    if layout.no_mri and not layout.visits and not layout.excluded:
        problems.append(f"{bids}: no participant of {part_path} has MRI")
    for sub, lab in sorted(set(gt_files) - used_gt):
        warnings.append(f"{gt_files[(sub, lab)]}: GT lesion mask for a visit with no images (sub-{sub} ses-{lab})")
    for sub, lab in sorted(set(excluded_keys) - used_exclusions):
        problems.append(f"visits to exclude: sub-{sub} ses-{lab} is not a visit of {bids}")

    if problems:
        raise InputError(problems, header=f"{bids}: {len(problems)} problem(s) found")
    return layout


#: Columns of a visit's file record (rule visit_files).
VISIT_FILE_COLUMNS = ("role", "path", "bytes", "modified_utc")


def write_visit_files(files: Mapping[str, str | Path], path: str | Path, log: str | Path | None = None) -> None:
    """Record the raw files a visit's preprocessing reads: one row per file with its role (t1w,
    t2w, flair, gt), path, size in bytes and modification time (UTC, ISO 8601).

    It is what a visit's first job asks for besides its images: a replaced image (or GT mask)
    reruns this record and so that visit, while a revalidation of the whole trial (a visit
    excluded, one image replaced) reruns no other visit (docs/DESIGN.md §1). ``log``: a line
    saying what was recorded.
    """
    from datetime import datetime, timezone

    rows = []
    for role, f in files.items():
        st = Path(f).stat()
        rows.append({"role": role, "path": str(f), "bytes": st.st_size,
                     "modified_utc": datetime.fromtimestamp(st.st_mtime, timezone.utc).isoformat(timespec="seconds")})
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=list(VISIT_FILE_COLUMNS)).to_csv(out, sep="\t", index=False)
    if log is not None:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        Path(log).write_text(f"{out}: {len(rows)} raw files recorded ({', '.join(files)})\n")


def write_summary(layout: TrialLayout, path: str | Path) -> None:
    """Write the validated visit list: one row per visit (excluded ones with their reason)
    and one row per participant without any MRI (``session``, ``week`` and
    ``source_session`` :data:`NO_VISIT`, ``has_gt`` False, ``excluded`` :data:`NO_MRI`),
    rows in participant order."""
    rows = [
        {
            "participant_id": v.participant_id,
            "session": f"ses-{v.ses}",
            "week": v.week,
            "source_session": f"ses-{layout.session_labels.get(v, v.ses)}",
            "has_gt": v in layout.gt,
            "excluded": layout.excluded.get(v, ""),
        }
        for v in layout.all_visits()
    ]
    rows += [
        {"participant_id": pid, "session": NO_VISIT, "week": NO_VISIT, "source_session": NO_VISIT, "has_gt": False,
         "excluded": NO_MRI}
        for pid in layout.no_mri
    ]
    rows.sort(key=lambda r: r["participant_id"])  # stable: each participant's visits stay in week order
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS)).to_csv(path, sep="\t", index=False)
