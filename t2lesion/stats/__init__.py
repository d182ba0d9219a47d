"""Endpoint statistics on lesion volumes (docs/DESIGN.md §9; paper Fig. 3d–g, Fig. 4, Table 4).

Every analysis runs once per lesion *source*: ``gt`` (volumes from the ground-truth
masks, where GT exists) and each prediction source (``classical``, the classical
segmenter, ``unet``, …), and the outputs put the sources side by side (a ``source``
column in the tidy tables; one column block per source in the wide "Table 4"
layout). A trial without GT simply has no ``gt`` source.

Modules: :mod:`~t2lesion.stats.inputs` (reading, validation, the long table),
:mod:`~t2lesion.stats.change`, :mod:`~t2lesion.stats.ancova`,
:mod:`~t2lesion.stats.survival` (Cox), :mod:`~t2lesion.stats.km` (Kaplan–Meier), :mod:`~t2lesion.stats.common`
(exclusions, TSV writing); count models (docs/DESIGN.md §9b) get their own module. The
path-level ``run_*`` entry points the rules call are re-exported here.

Inputs (CONTRACT.md)
    volumes      one TSV per source × visit with one row: participant_id, session,
                 week, tlv_ml, tlc (:func:`run_long_table` concatenates and checks them
                 against the validated visit list into the long table)
    long table   participant_id, session, week, source, tlv_ml, tlc
    participants participant_id, arm, age, sex (M/F/male/female), region, edss_bl;
                 covariates may be ``n/a``/empty (missing), arm may not
    outcomes     participant_id, endpoint, time_weeks (>= 0), event (0/1/0.0/1.0)

Nobody is dropped silently (docs/DESIGN.md §9). Each analysis writes
``exclusions_<analysis>.tsv`` (analysis = tlv_long, change, ancova, cox, km;
columns participant_id, source, analysis, scope, reason; scope "" = the whole
analysis of that source, else the week / endpoint / endpoint + model concerned),
logs every exclusion, and its counts (n, n_missing, …) add up with it. Decisions:

* participant of participants.tsv with no rows at all in the long table: an
  **error** naming it, unless the long-table stage excluded it with a reason (the
  user excluded its baseline visit, or the participant has no MRI at all: reason
  "no MRI", from the validated visit list): then a counted exclusion in every analysis
  (outcome rows of such a participant are valid and simply not used);
* participant missing from a *prediction* source: an **error** naming it (a
  segmentation is missing); missing from ``gt`` (no GT at baseline): counted
  exclusion for source ``gt`` ("no GT at baseline"); follow-up visit without GT or
  excluded by the user: counted, with that reason, at that week;
* no outcome row for an endpoint: counted exclusion from that endpoint's Cox and KM
  analyses (scope = endpoint);
* missing covariate (``n/a``): counted exclusion from the models that use it
  (ANCOVA: region, age; multivariable Cox: sex, region, EDSS, age), kept in the
  change summaries, univariable Cox and KM. It is never coded as a reference level.
  Unrecognised values (sex ``X``, age ``-3``) are errors naming the row;
* baseline TLV 0: no percent change: counted exclusion from change % and ANCOVA.

Analyses, with the interpretations this package makes (docs/DESIGN.md §0: interpretations are
defaults, kept configurable); the config key that controls each is given as ``stats.<key>``:

* Change from baseline (paper "Longitudinal changes", Fig. 3d–g): absolute change
  ``tlv_w - tlv_bl`` (mL) and percent change ``100 (tlv_w - tlv_bl) / tlv_bl``.
  Per source × arm × week: mean with a t-based confidence interval
  (``stats.conf_level``, 0.95), n. *Separation* between arms = mean percent change
  of the control arm minus that of the other arm (positive when the control arm
  grows more, as the paper reports it), with a Welch confidence interval and p.
* ANCOVA (paper Methods; "analysis of covariance of baseline T2 TLV with
  geographical region and age as covariates"), per follow-up week, ordinary least
  squares via statsmodels: ``pct_change ~ arm + baseline_tlv_ml + region_US +
  age_gt45``. Codings: arm treatment-coded against the control arm; baseline TLV
  in mL, uncentred; region_US = 1 if region is "US" (``stats.us_label``, any case), reference
  rest of world; age_gt45 = 1 if age > 45 years (``stats.age_cutoff``), reference
  ≤ 45. Arm effect with SE, CI, t, p; Type II F table (= R ``car::Anova(type = 2)``);
  least-squares means per arm with CI (R ``emmeans``: baseline TLV at its mean,
  region and age-group levels equally weighted) beside the adjusted difference,
  and n analysed / missing per arm and week (``ancova_lsmeans.tsv``).
* Cox PH (paper Methods and Table 4), lifelines ``CoxPHFitter`` (Efron ties),
  fitted to full convergence (:data:`DEFAULT_COX_FIT_OPTIONS`; ≥ 12 digits against
  R ``coxph``). Per endpoint (``stats.endpoints``): univariable ``log_tlv`` =
  log(baseline TLV mL + ``stats.log_tlv_offset_ml`` (0.01 mL)), univariable ``tlc``
  (baseline lesion count, per lesion), and the multivariable model ``arm + sex_M +
  region_US + edss_lt4 + age + log_tlv + arm × log_tlv`` with sex_M = 1 if M
  (reference F), edss_lt4 = 1 if baseline EDSS < 4 (``stats.edss_cutoff``;
  reference ≥ 4, the paper's "BL EDSS: < 4" row), age in years (uncentred). In the
  multivariable model log TLV is centred (``stats.center_log_tlv``, default on) at
  one value for every source — the mean log baseline TLV of the GT cohort where GT
  exists, else of the first source — printed as ``log_tlv_centre``: the arm HR is
  the arm HR at that TLV (not at TLV ≈ 1 mL), the log-TLV HR is that of the control
  arm, the interaction the ratio of the treated arm's log-TLV HR to the control
  arm's. HR = exp(coef), Wald CI (``stats.conf_level``) and p; per model n, events,
  Harrell's concordance (= R's ``coxph`` concordance) and the Schoenfeld PH test
  (= R survival ≥ 3 ``cox.zph(fit, transform = "km", terms = FALSE)``, per term
  and global).
* Kaplan–Meier (paper Fig. 4): participants split at the cohort-wide median
  baseline TLV of the source (median over all arms; "low" = TLV ≤ median,
  "high" = TLV > median), curves per arm × group with pointwise intervals of type
  ``stats.km_conf_type`` (``log-log`` default, ``log``, ``plain``; each equal to R
  ``survfit``'s ``conf.type`` of that name, Greenwood variance) at
  ``stats.conf_level``, log-rank test (low vs high) within each arm (= R
  ``survdiff``), number at risk every ``stats.km_at_risk_step_weeks`` weeks. The
  paper only drew KM curves for metrics with univariable p < 0.1; here every
  endpoint in ``stats.endpoints`` gets them.

Every TSV is written with 15 significant digits (R's ``write.table``). Known-answer
tests against R live in ``tests/test_stats_reference.py`` with the R script and
its outputs in ``tests/data/stats_ref/``.

Degenerate inputs never stop the other analyses: an analysis that cannot run
(arm with no subjects, covariate with one level, no events, too few subjects)
writes a row with ``status = "skipped"`` and a ``note`` saying why; fits that
finish with a lifelines convergence warning get ``status = "warning"``. Bad input
(missing columns, unknown participants, negative times, …) raises
:class:`t2lesion.errors.InputError` naming the file and row.
"""

from __future__ import annotations

from scipy import stats as sps  # noqa: F401  (tests use stats.sps)

from t2lesion.stats.ancova import (  # noqa: F401
    ANCOVA_CODINGS, ancova, ancova_full, lsmeans, run_ancova, type2_anova_table,
)
from t2lesion.stats.change import change_exclusions, compute_change, run_change, summarize_change  # noqa: F401
from t2lesion.stats.common import (  # noqa: F401
    DEFAULT_COX_FIT_OPTIONS, EXCLUSION_COLUMNS, FAILED, FLOAT_FORMAT, GT_SOURCE, LONG_COLUMNS, OK, OUTCOME_COLUMNS,
    PARTICIPANT_COLUMNS, SKIPPED, WARNING, Exclusions, resolve_arms, resolve_sources, side_by_side, write_exclusions,
)
from t2lesion.stats.inputs import (  # noqa: F401
    VOLUME_COLUMNS, coverage_exclusions, long_table_from_volumes, read_exclusions, read_long, read_outcomes,
    read_participants, read_visit_list, read_visits, run_long_table, validate_long, validate_outcomes,
    validate_participants,
)
from t2lesion.stats.km import KM_CONF_TYPES, km_analysis, km_estimate, run_km  # noqa: F401
from t2lesion.stats.survival import (  # noqa: F401
    COX_COVARIATES, COX_MODELS, PH_TEST_NOTE, baseline_lesions, concordance_harrell, cox_design, cox_models,
    cox_zph_km, fit_cox, log_tlv_centre, run_cox, table4,
)
