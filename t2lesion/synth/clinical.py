"""Tabular synthetic trial cohort with known truth (docs/DESIGN.md §10, clinical part).

No images here: this module draws the participants' clinical table, the *target*
longitudinal total lesion volume (TLV) per visit, and time-to-event outcomes from
a Cox proportional-hazards model with known coefficients. The image generator
(the rest of `t2lesion.synth`) uses it to decide how much lesion to paint per
visit and then calls :func:`draw_outcomes` with the log of the TLV actually
realised in the ground-truth masks, so the outcomes are exactly consistent with
the masks.
:func:`simulate_cohort` gives the same tables for thousands of subjects quickly
(known-answer tests of `t2lesion.stats`).

Generative model (all parameters in :class:`CohortParams`)
---------------------------------------------------------
Participants
    arm: ``n_per_arm`` per arm, randomised order; ``arms[0]`` is the control arm.
    age ~ Normal(age_mean, age_sd) clipped to [age_min, age_max] (years, 1 decimal).
    sex "M" with probability ``p_male`` else "F"; region "US" with ``p_us`` else "ROW".
    edss_bl drawn from ``edss_values`` with weights ``edss_weights``.
    tlv_bl_ml ~ LogNormal(log(tlv_median_ml), tlv_sigma)  (mL, > 0).

Longitudinal TLV (the percent-change / ANCOVA known answer)
    pct(w) = (mu_arm + b_i) * w / 96 + e_iw   (percent; e_i0 = 0, so pct(0) = 0)
    mu_arm = ``tlv_pct_per_96w_control`` for the control arm and
    ``tlv_pct_per_96w_treated`` for every other arm; b_i ~ N(0, tlv_slope_sd_pct_per_96w);
    e_iw ~ N(0, tlv_visit_sd_pct) for w > 0.  tlv(w) = tlv_bl * max(0, 1 + pct(w)/100).
    The noise is independent of every covariate, so the ANCOVA arm effect at week w
    is (tlv_pct_per_96w_treated - tlv_pct_per_96w_control) * w / 96 exactly (see
    :func:`true_coefficients`).

Outcomes (the Cox known answer)
    Linear predictor with the *analysis* coding of ``t2lesion.stats`` (uncentred):
        lp = beta_arm*treated + beta_male*[sex=M] + beta_us*[region=US]
             + beta_edss_lt4*[edss_bl<4] + beta_age_per_year*age
             + beta_log_tlv*log_tlv + beta_arm_x_log_tlv*treated*log_tlv
    with log_tlv = log(TLV_mL + log_tlv_offset_ml) (same transform as the analysis).
    Latent event time per endpoint (CDP24, T25FW24, 9HPT24, independent given lp):
    Weibull cumulative hazard H(t) = (t/scale)^shape * exp(lp - lp_ref), where lp_ref
    is lp at the reference profile (control arm, median baseline TLV, F, ROW,
    EDSS >= 4, age = age_mean), and scale is set so that the reference profile has
    probability ``event_prob_ref[endpoint]`` of an event by ``followup_weeks``.
    Censoring (shared by a participant's endpoints): administrative at
    ``followup_weeks`` plus exponential drop-out reaching ``dropout_prob`` by then.
    CCDP24 = earliest of the three latent times (event if any occurs before censoring).
    Because the three share lp and the Weibull shape, CCDP24 is also exactly a Cox
    PH model with the same coefficients.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from t2lesion.errors import InputError

log = logging.getLogger(__name__)

#: Outcome endpoints (docs/DESIGN.md §1); CCDP24 is the composite of the other three.
ENDPOINTS: tuple[str, ...] = ("CDP24", "T25FW24", "9HPT24", "CCDP24")
COMPONENT_ENDPOINTS: tuple[str, ...] = ("CDP24", "T25FW24", "9HPT24")


def log_tlv(tlv_ml, offset_ml: float = 0.01):
    """The log-TLV transform shared by the generator and the analysis.

    ``log(TLV_mL + offset_ml)``; the offset (config ``stats.log_tlv_offset_ml``,
    default 0.01 mL ≈ 3 voxels of 1×1×3 mm) keeps TLV = 0 finite. Works on scalars,
    arrays and Series.
    """
    if isinstance(tlv_ml, (pd.Series, np.ndarray)):
        return np.log(tlv_ml.astype(float) + offset_ml)
    return np.log(np.asarray(tlv_ml, dtype=float) + offset_ml)


def _default_edss_values() -> tuple[float, ...]:
    return tuple(float(v) for v in np.arange(0.0, 6.51, 0.5))


def _default_edss_weights() -> tuple[float, ...]:
    # 0, 0.5, ..., 6.5 (14 values); P(EDSS < 4) ≈ 0.55, mode around 3-4.
    return (1, 1, 3, 4, 6, 8, 9, 10, 9, 8, 7, 6, 5, 3)


def _default_event_prob_ref() -> dict[str, float]:
    return {"CDP24": 0.40, "T25FW24": 0.40, "9HPT24": 0.35}


@dataclass
class CohortParams:
    """Parameters of the tabular synthetic cohort (all stored in truth/params.json).

    Defaults give ≈ 30-40 % events per component endpoint by week 120 (≈ 60 % for
    CCDP24) and a control arm whose TLV grows ≈ 10 % per 96 weeks while the
    treated arm stays flat.
    """

    #: Arm labels; the first one is the control arm.
    arms: list[str] = field(default_factory=lambda: ["PLA", "OCR"])
    age_mean: float = 40.0
    age_sd: float = 9.0
    age_min: float = 18.0
    age_max: float = 65.0
    p_male: float = 0.4
    p_us: float = 0.3
    edss_values: tuple[float, ...] = field(default_factory=_default_edss_values)
    edss_weights: tuple[float, ...] = field(default_factory=_default_edss_weights)
    #: Baseline TLV is log-normal: median (mL) and sigma of log(TLV).
    tlv_median_ml: float = 6.0
    tlv_sigma: float = 1.0
    #: Offset in log(TLV + offset) used in the true Cox model (match the analysis).
    log_tlv_offset_ml: float = 0.01
    # --- true Cox log-hazard coefficients (analysis coding, uncentred) ---
    beta_log_tlv: float = math.log(1.5)
    #: Every non-control arm vs control.
    beta_arm: float = math.log(0.7)
    beta_arm_x_log_tlv: float = 0.0
    beta_male: float = 0.0
    beta_us: float = 0.0
    #: Indicator EDSS < 4 (reference EDSS >= 4).
    beta_edss_lt4: float = 0.0
    beta_age_per_year: float = 0.0
    # --- baseline hazard and censoring ---
    weibull_shape: float = 1.2
    #: P(event by followup_weeks) for the reference profile, per component endpoint.
    event_prob_ref: dict[str, float] = field(default_factory=_default_event_prob_ref)
    followup_weeks: float = 120.0
    #: Probability of random drop-out (exponential) before followup_weeks.
    dropout_prob: float = 0.10
    # --- longitudinal TLV ---
    weeks: list[int] = field(default_factory=lambda: [0, 24, 48, 96])
    tlv_pct_per_96w_control: float = 10.0
    tlv_pct_per_96w_treated: float = 0.0
    tlv_slope_sd_pct_per_96w: float = 8.0
    tlv_visit_sd_pct: float = 3.0
    #: Mean single-lesion volume (mL), only for the synthetic TLC of
    #: :func:`long_table_from_trajectory` (tabular tests).
    mean_lesion_ml: float = 0.2

    def __post_init__(self) -> None:
        problems = []
        if len(self.arms) < 2:
            problems.append(f"CohortParams.arms needs >= 2 arms (control first), got {self.arms}")
        if len(set(self.arms)) != len(self.arms):
            problems.append(f"CohortParams.arms has duplicates: {self.arms}")
        if len(self.edss_values) != len(self.edss_weights):
            problems.append("CohortParams.edss_values and edss_weights differ in length")
        if sorted(self.event_prob_ref) != sorted(COMPONENT_ENDPOINTS):
            problems.append(
                f"CohortParams.event_prob_ref must give {list(COMPONENT_ENDPOINTS)}, "
                f"got {sorted(self.event_prob_ref)}"
            )
        elif not all(0.0 < p < 1.0 for p in self.event_prob_ref.values()):
            problems.append("CohortParams.event_prob_ref values must be in (0, 1)")
        if not 0.0 <= self.dropout_prob < 1.0:
            problems.append("CohortParams.dropout_prob must be in [0, 1)")
        if self.followup_weeks <= 0 or self.weibull_shape <= 0:
            problems.append("CohortParams.followup_weeks and weibull_shape must be > 0")
        if not self.weeks or self.weeks[0] != 0 or sorted(set(self.weeks)) != list(self.weeks):
            problems.append(f"CohortParams.weeks must start at 0 and increase, got {self.weeks}")
        if self.tlv_median_ml <= 0 or self.tlv_sigma < 0 or self.log_tlv_offset_ml < 0:
            problems.append("CohortParams: tlv_median_ml > 0, tlv_sigma >= 0, log_tlv_offset_ml >= 0")
        if problems:
            raise InputError(problems)

    @property
    def control_arm(self) -> str:
        return self.arms[0]

    def weibull_scale_weeks(self, endpoint: str) -> float:
        """Weibull scale (weeks) giving ``event_prob_ref[endpoint]`` at follow-up."""
        p = self.event_prob_ref[endpoint]
        return self.followup_weeks / (-math.log1p(-p)) ** (1.0 / self.weibull_shape)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["edss_values"] = list(self.edss_values)
        d["edss_weights"] = list(self.edss_weights)
        return d


def _ids(n: int) -> list[str]:
    width = max(3, len(str(n)))
    return [f"sub-{i:0{width}d}" for i in range(1, n + 1)]


def draw_participants(n_per_arm: int, params: CohortParams, rng: np.random.Generator) -> pd.DataFrame:
    """Draw the clinical table: participant_id, arm, age, sex, region, edss_bl, tlv_bl_ml.

    ``tlv_bl_ml`` is the *target* baseline TLV (mL) that the image generator paints.
    IDs are ``sub-001``… (zero-padded to at least 3 digits); arms are randomised.
    """
    if int(n_per_arm) < 1:
        raise InputError(f"n_per_arm must be >= 1, got {n_per_arm}")
    n = int(n_per_arm) * len(params.arms)
    arm = rng.permutation(np.repeat(np.array(params.arms, dtype=object), int(n_per_arm)))
    age = np.clip(rng.normal(params.age_mean, params.age_sd, n), params.age_min, params.age_max)
    sex = np.where(rng.random(n) < params.p_male, "M", "F")
    region = np.where(rng.random(n) < params.p_us, "US", "ROW")
    w = np.asarray(params.edss_weights, dtype=float)
    edss = rng.choice(np.asarray(params.edss_values, dtype=float), size=n, p=w / w.sum())
    tlv = params.tlv_median_ml * np.exp(params.tlv_sigma * rng.standard_normal(n))
    return pd.DataFrame(
        {
            "participant_id": _ids(n),
            "arm": arm.astype(str),
            "age": np.round(age, 1),
            "sex": sex,
            "region": region,
            "edss_bl": edss,
            "tlv_bl_ml": tlv,
        }
    )


def _require(df: pd.DataFrame, cols: list[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise InputError(f"{what}: missing column(s) {missing}")


def draw_tlv_trajectory(
    participants: pd.DataFrame, params: CohortParams, rng: np.random.Generator
) -> pd.DataFrame:
    """True TLV per participant and week: participant_id, week, tlv_ml (week 0 = tlv_bl_ml).

    Model in the module docstring; the known ANCOVA answer is in :func:`true_coefficients`.
    """
    _require(participants, ["participant_id", "arm", "tlv_bl_ml"], "participants")
    n = len(participants)
    weeks = np.asarray(params.weeks, dtype=float)
    treated = (participants["arm"].to_numpy() != params.control_arm)
    mu = np.where(treated, params.tlv_pct_per_96w_treated, params.tlv_pct_per_96w_control)
    slope = mu + params.tlv_slope_sd_pct_per_96w * rng.standard_normal(n)  # % per 96 w
    noise = params.tlv_visit_sd_pct * rng.standard_normal((n, len(weeks)))
    noise[:, weeks == 0] = 0.0
    pct = slope[:, None] * weeks[None, :] / 96.0 + noise
    tlv = participants["tlv_bl_ml"].to_numpy(float)[:, None] * np.maximum(0.0, 1.0 + pct / 100.0)
    return pd.DataFrame(
        {
            "participant_id": np.repeat(participants["participant_id"].to_numpy(), len(weeks)),
            "week": np.tile(np.asarray(params.weeks, dtype=int), n),
            "tlv_ml": tlv.ravel(),
        }
    )


def linear_predictor(participants: pd.DataFrame, params: CohortParams, log_tlv_values) -> np.ndarray:
    """True Cox linear predictor (uncentred, analysis coding) for each participant."""
    treated = (participants["arm"].to_numpy() != params.control_arm).astype(float)
    lt = np.asarray(log_tlv_values, dtype=float)
    return (
        params.beta_arm * treated
        + params.beta_male * (participants["sex"].to_numpy() == "M")
        + params.beta_us * (participants["region"].to_numpy() == "US")
        + params.beta_edss_lt4 * (participants["edss_bl"].to_numpy(float) < 4.0)
        + params.beta_age_per_year * participants["age"].to_numpy(float)
        + params.beta_log_tlv * lt
        + params.beta_arm_x_log_tlv * treated * lt
    )


def _reference_lp(params: CohortParams) -> float:
    return params.beta_age_per_year * params.age_mean + params.beta_log_tlv * float(
        log_tlv(params.tlv_median_ml, params.log_tlv_offset_ml)
    )


def draw_outcomes(
    participants: pd.DataFrame,
    params: CohortParams,
    rng: np.random.Generator,
    log_tlv_col: str = "log_tlv",
) -> pd.DataFrame:
    """Draw outcomes from the true Cox model: participant_id, endpoint, time_weeks, event.

    ``participants[log_tlv_col]`` is the log TLV the hazard depends on; pass
    ``log_tlv(realised_tlv_ml, params.log_tlv_offset_ml)`` of the TLV realised in the
    GT masks. If the column is absent it is computed from ``tlv_bl_ml`` with the same
    transform. One row per participant and endpoint (CDP24, T25FW24, 9HPT24, CCDP24),
    time_weeks > 0, event 0/1 (model in the module docstring).
    """
    _require(participants, ["participant_id", "arm", "sex", "region", "edss_bl", "age"], "participants")
    if log_tlv_col in participants.columns:
        lt = participants[log_tlv_col].to_numpy(float)
    elif "tlv_bl_ml" in participants.columns:
        lt = log_tlv(participants["tlv_bl_ml"].to_numpy(float), params.log_tlv_offset_ml)
    else:
        raise InputError(f"participants: needs column {log_tlv_col!r} or 'tlv_bl_ml'")
    if not np.all(np.isfinite(lt)):
        raise InputError(f"participants: non-finite values in {log_tlv_col!r}")
    n = len(participants)
    rel = np.exp(linear_predictor(participants, params, lt) - _reference_lp(params))
    F = float(params.followup_weeks)
    if params.dropout_prob > 0:
        rate = -math.log1p(-params.dropout_prob) / F
        cens = np.minimum(rng.exponential(1.0 / rate, n), F)
    else:
        cens = np.full(n, F)
    latent = {}
    for ep in COMPONENT_ENDPOINTS:
        # H(t) = (t/scale)^k * rel  =>  t = scale * (E / rel)^(1/k), E ~ Exp(1)
        e = rng.exponential(1.0, n)
        latent[ep] = params.weibull_scale_weeks(ep) * (e / rel) ** (1.0 / params.weibull_shape)
    latent["CCDP24"] = np.minimum.reduce([latent[ep] for ep in COMPONENT_ENDPOINTS])
    pid = participants["participant_id"].to_numpy()
    frames = []
    for ep in ENDPOINTS:
        t = np.minimum(latent[ep], cens)
        frames.append(
            pd.DataFrame(
                {
                    "participant_id": pid,
                    "endpoint": ep,
                    "time_weeks": np.maximum(t, 1e-6),
                    "event": (latent[ep] <= cens).astype(int),
                }
            )
        )
    out = pd.concat(frames, ignore_index=True)
    log.debug("drew outcomes: %s", out.groupby("endpoint")["event"].mean().to_dict())
    return out


def long_table_from_trajectory(
    tlv_long: pd.DataFrame,
    source: str = "gt",
    rng: np.random.Generator | None = None,
    mean_lesion_ml: float = 0.2,
) -> pd.DataFrame:
    """Turn a trajectory into the stats long-table layout (tabular tests only).

    Columns participant_id, session (``w{week:03d}``), week, source, tlv_ml, tlc; the
    synthetic TLC is Poisson(tlv_ml / mean_lesion_ml) (at least 1 when tlv_ml > 0).
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    tlv = tlv_long["tlv_ml"].to_numpy(float)
    tlc = rng.poisson(tlv / mean_lesion_ml)
    tlc = np.where(tlv > 0, np.maximum(tlc, 1), 0)
    return pd.DataFrame(
        {
            "participant_id": tlv_long["participant_id"].to_numpy(),
            "session": [f"w{int(w):03d}" for w in tlv_long["week"]],
            "week": tlv_long["week"].astype(int).to_numpy(),
            "source": source,
            "tlv_ml": tlv,
            "tlc": tlc.astype(int),
        }
    )


def simulate_cohort(
    n_per_arm: int, seed: int, params: CohortParams | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Tabular cohort in one call: (participants, tlv_long, outcomes).

    Outcomes depend on log(tlv_bl_ml + offset) of the drawn baseline TLV. ``tlv_long``
    has participant_id, week, tlv_ml; turn it into the stats long table with
    :func:`long_table_from_trajectory`.
    """
    params = params if params is not None else CohortParams()
    rng = np.random.default_rng(seed)
    participants = draw_participants(n_per_arm, params, rng)
    tlv_long = draw_tlv_trajectory(participants, params, rng)
    outcomes = draw_outcomes(participants, params, rng)  # log TLV from tlv_bl_ml
    return participants, tlv_long, outcomes


def true_coefficients(params: CohortParams) -> dict:
    """True values for truth/params.json and known-answer tests.

    ``cox``: log-hazard coefficients named as in ``t2lesion.stats`` multivariable
    terms (``arm_<ARM>``, ``sex_M``, ``region_US``, ``edss_lt4``, ``age``, ``log_tlv``,
    ``arm_<ARM>_x_log_tlv``); ``cox_hr`` their exponentials. These are the
    coefficients of the correctly specified multivariable model for every endpoint
    (CCDP24 included). ``ancova_arm_effect_pct[arm][week]``: treated minus control
    mean percent change of TLV at each follow-up week; ``mean_pct_change[arm][week]``.
    """
    cox: dict[str, float] = {}
    for arm in params.arms[1:]:
        cox[f"arm_{arm}"] = params.beta_arm
    cox.update(
        {
            "sex_M": params.beta_male,
            "region_US": params.beta_us,
            "edss_lt4": params.beta_edss_lt4,
            "age": params.beta_age_per_year,
            "log_tlv": params.beta_log_tlv,
        }
    )
    for arm in params.arms[1:]:
        cox[f"arm_{arm}_x_log_tlv"] = params.beta_arm_x_log_tlv
    mean_pct = {
        arm: {
            int(w): (params.tlv_pct_per_96w_control if arm == params.control_arm else params.tlv_pct_per_96w_treated)
            * w
            / 96.0
            for w in params.weeks
        }
        for arm in params.arms
    }
    ancova = {
        arm: {
            int(w): (params.tlv_pct_per_96w_treated - params.tlv_pct_per_96w_control) * w / 96.0
            for w in params.weeks
            if w > 0
        }
        for arm in params.arms[1:]
    }
    return {
        "control_arm": params.control_arm,
        "cox": cox,
        "cox_hr": {k: math.exp(v) for k, v in cox.items()},
        "log_tlv_offset_ml": params.log_tlv_offset_ml,
        "weibull_shape": params.weibull_shape,
        "weibull_scale_weeks": {ep: params.weibull_scale_weeks(ep) for ep in COMPONENT_ENDPOINTS},
        "reference_linear_predictor": _reference_lp(params),
        "mean_pct_change": mean_pct,
        "ancova_arm_effect_pct": ancova,
    }
