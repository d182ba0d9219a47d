"""The one number / p-value format (t2lesion.formatting) and its use by Table 1, summary.md and
the figures, on known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from t2lesion.formatting import MISSING, fmt_ci, fmt_num, fmt_p
from t2lesion.plots.new_lesions import rate_ratio_text
from t2lesion.plots.stats import logrank_text
from t2lesion.report import km_section, rate_ratio_section


@pytest.mark.parametrize("x,text", [
    (1234.5, "1230"), (0.012345, "0.0123"), (2.0, "2.00"), (0.5, "0.500"),
    # rounding: to 3 significant digits, then no trailing digit beyond them
    (0.12349, "0.123"), (0.12351, "0.124"), (0.99996, "1.00"), (999.6, "1000"), (99.95001, "100"),
    # large and tiny magnitudes: exponent only beyond 6 integer digits or 6 decimals
    (123456.0, "123000"), (999999.9, "1.00e+06"), (2.19e12, "2.19e+12"), (0.000123456, "0.000123"),
    (1.23456e-7, "1.23e-07"),
    # zero (either sign) and negative numbers
    (0, "0"), (-0.0, "0"), (-0.5, "-0.500"), (-1234.5, "-1230"), (-0.00012345, "-0.000123"), (-3e-12, "-3.00e-12"),
    # integers are numbers like any other (counts are printed with str(), not with fmt_num)
    (5, "5.00"), (-7, "-7.00"), (12345, "12300"), (np.int64(42), "42.0"), (True, "1.00"),
    # text as read from a TSV
    ("0.04123", "0.0412"), (" 17 ", "17.0"),
])
def test_numbers_have_three_significant_digits(x, text):
    assert fmt_num(x) == text


@pytest.mark.parametrize("x", [None, float("nan"), np.nan, math.inf, -math.inf, "", "n/a", "abc", pd.NA, [1.0]])
def test_missing_numbers_and_p_values_print_the_placeholder(x):
    assert MISSING == "n/a"
    assert fmt_num(x) == "n/a"
    assert fmt_p(x) == "n/a"


def test_other_digit_counts():
    assert fmt_num(3.14159, 2) == "3.1" and fmt_num(3.14159, 5) == "3.1416" and fmt_num(1234.5, 1) == "1000"


@pytest.mark.parametrize("p,text", [
    (0.0004, "p < 0.001"), (0.0, "p < 0.001"), (1e-300, "p < 0.001"), (0.000999999, "p < 0.001"),
    (0.001, "p = 0.00100"), (0.0012345, "p = 0.00123"), (0.04123, "p = 0.0412"), (0.05, "p = 0.0500"),
    (0.5, "p = 0.500"), (0.99996, "p = 1.00"), (1.0, "p = 1.00"), (1, "p = 1.00"), ("0.0612", "p = 0.0612"),
    (np.float32(0.25), "p = 0.250"),
])
def test_p_values_below_0001_as_a_bound_else_three_significant_digits(p, text):
    assert fmt_p(p) == text


def test_confidence_interval():
    assert fmt_ci(1.5, 1.1, 2.0) == "1.50 (1.10, 2.00)"
    assert fmt_ci(-0.01234, -0.5, 0.25) == "-0.0123 (-0.500, 0.250)"
    assert fmt_ci(float("nan"), 1, 2) == "n/a (1.00, 2.00)"


# ------------------------------------------------------------------ the same rule everywhere


def test_figures_print_p_values_as_the_tables():
    """The figures used to print p to 3 decimals ("p = 0.041"); now as the summary does."""
    assert logrank_text("OCR", "ok", 0.04123, "") == "OCR p = 0.0412"
    assert logrank_text("OCR", "ok", 0.0004, "") == "OCR p < 0.001"
    assert logrank_text("OCR", "ok", float("nan"), "") == "OCR n/a"
    assert logrank_text("OCR", "skipped", float("nan"), "no events for CDP24 in arm OCR") == "OCR: no events"
    row = {"rate_ratio": 0.41234, "ci_low": 0.25, "ci_high": 0.68, "p": 0.00012}
    assert rate_ratio_text(row) == "0.412 (0.250, 0.680), p < 0.001"  # was "0.41 (0.25, 0.68), p < 0.001"


def test_summary_and_figures_print_the_same_text():
    nb = pd.DataFrame([{"source": "gt", "model": "negative_binomial", "term": "arm_OCR", "term_type": "arm",
                        "label": "OCR vs PLA", "rate_ratio": 1.23456, "ci_low": 0.98765, "ci_high": 1.54321,
                        "p": 0.061234, "status": "ok", "note": ""}])
    summary = rate_ratio_section(nb.astype(str)).iloc[0]["rate ratio (CI), p"]
    assert summary == rate_ratio_text(nb.iloc[0]) == "1.23 (0.988, 1.54), p = 0.0612"
    km = pd.DataFrame([{"source": "gt", "endpoint": "CDP24", "arm": "OCR", "n_low": 5, "n_high": 5,
                        "events_low": 1, "events_high": 3, "chi2": 3.4567, "p": 0.0631, "status": "ok", "note": ""}])
    table = km_section(km.astype(str)).iloc[0]["log-rank"]
    assert table == "χ² = 3.46, p = 0.0631"
    assert logrank_text("OCR", "ok", 0.0631, "") == "OCR p = 0.0631"
