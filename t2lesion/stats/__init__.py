"""Endpoint statistics on lesion volumes (SPEC §9; paper Fig. 3d–g, Fig. 4, Table 4).

Every analysis runs once per lesion *source*: ``gt`` (volumes from the ground-truth
masks) and each prediction source (``baseline`` classical segmenter, ``unet``, …),
and the outputs put the sources side by side (a ``source`` column in the tidy
tables; one column block per source in the wide "Table 4" layout).

Inputs (CONTRACT.md)
    long table   participant_id, session, week, source, tlv_ml, tlc   (one row per
                 participant × visit × source; the baseline visit must be present)
    participants participant_id, arm, age, sex (M/F), region, edss_bl
    outcomes     participant_id, endpoint, time_weeks (>= 0), event (0/1)

The long table is built by :func:`run_long_table` from each prediction source's
per-visit metrics table (``t2lesion.metrics`` visits.tsv): source rows from
pred_tlv_ml/pred_tlc, ``gt`` rows from gt_tlv_ml/gt_tlc (identical across sources).

Analyses, with the interpretations this module makes (SPEC: "defaults, keep them
configurable"); the config key that controls each is given as ``stats.<key>``:

* Change from baseline (paper "Longitudinal changes", Fig. 3d–g): absolute change
  ``tlv_w - tlv_bl`` (mL) and percent change ``100 (tlv_w - tlv_bl) / tlv_bl``.
  Participants with baseline TLV 0 have no percent change: excluded from the
  percent-change analyses and counted (``n_excluded_bl0``). Per source × arm ×
  week: mean with a t-based confidence interval (``stats.conf_level``, 0.95), n.
  *Separation* between arms = mean percent change of the control arm minus that
  of the other arm (positive when the control arm grows more, as the paper
  reports it), with a Welch confidence interval and p.
* ANCOVA (paper Methods; "analysis of covariance of baseline T2 TLV with
  geographical region and age as covariates"), per follow-up week, ordinary least
  squares via statsmodels: ``pct_change ~ arm + baseline_tlv_ml + region_US +
  age_gt45``. Codings: arm treatment-coded against the control arm
  (``stats.control_arm``); baseline TLV in mL, uncentred; region_US = 1 if
  region == "US" (``stats.us_label``), reference rest of world; age_gt45 = 1 if age
  > 45 years (``stats.age_cutoff_years``), reference ≤ 45. Arm effect with SE,
  CI, t, p, and a Type II F table (nested-model F tests, identical to
  statsmodels ``anova_lm(typ=2)`` for this main-effects model).
* Cox PH (paper Methods and Table 4), lifelines ``CoxPHFitter`` (Efron ties),
  fitted to full convergence (``stats.cox_fit_options``; lifelines' defaults stop
  at a relative log-likelihood change of 1e-9, which leaves coefficients
  accurate to ~4 digits only). Per endpoint (``stats.endpoints``): univariable
  ``log_tlv`` = log(baseline TLV mL + ``stats.log_tlv_offset_ml`` (0.01 mL)),
  univariable ``tlc`` (baseline lesion count, per lesion), and the multivariable
  model ``arm + sex_M + region_US + edss_lt4 + age + log_tlv + arm × log_tlv``
  with sex_M = 1 if M (reference F), edss_lt4 = 1 if baseline EDSS < 4
  (``stats.edss_cutoff``; reference ≥ 4, the paper's "BL EDSS: < 4" row), age in
  years (continuous, uncentred). Nothing is centred: the arm HR in the
  multivariable model is the arm HR at log_tlv = 0 (TLV ≈ 1 mL) and the log-TLV
  HR is that of the control arm; the interaction is the ratio of the treated
  arm's log-TLV HR to the control arm's. HR = exp(coef), Wald CI and p.
* Kaplan–Meier (paper Fig. 4): participants split at the cohort-wide median
  baseline TLV of the source (median over all arms; "low" = TLV ≤ median,
  "high" = TLV > median), curves per arm × group, log-rank test (low vs high)
  within each arm, number at risk every ``stats.km_at_risk_step_weeks`` weeks. The
  paper only drew KM curves for metrics with univariable p < 0.1; here every
  endpoint in ``stats.endpoints`` gets them.

Degenerate inputs never stop the other analyses: an analysis that cannot run
(arm with no subjects, covariate with one level, no events, too few subjects)
writes a row with ``status = "skipped"`` and a ``note`` saying why; fits that
finish with a lifelines convergence warning get ``status = "warning"``. Bad input
(missing columns, unknown participants, negative times, …) raises
:class:`t2lesion.errors.InputError` naming the file and row.
"""

from __future__ import annotations

from scipy import stats as sps  # noqa: F401  (tests use stats.sps)

from t2lesion.stats.ancova import ANCOVA_CODINGS, ancova, run_ancova, type2_anova_table  # noqa: F401
from t2lesion.stats.change import compute_change, run_change, summarize_change  # noqa: F401
from t2lesion.stats.common import (  # noqa: F401
    DEFAULT_COX_FIT_OPTIONS, FAILED, GT_SOURCE, LONG_COLUMNS, OK, OUTCOME_COLUMNS, PARTICIPANT_COLUMNS, SKIPPED,
    WARNING, resolve_arms, resolve_sources, side_by_side,
)
from t2lesion.stats.inputs import (  # noqa: F401
    VISIT_COLUMNS, long_table_from_visits, read_long, read_outcomes, read_participants, run_long_table,
    validate_long, validate_outcomes, validate_participants,
)
from t2lesion.stats.survival import (  # noqa: F401
    COX_MODELS, baseline_lesions, cox_design, cox_models, fit_cox, km_analysis, run_cox, run_km, table4,
)
