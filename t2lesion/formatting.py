"""Numbers and p values for reading: the one rule of Table 1, ``summary.md`` and the figures.

* A number has 3 significant digits, without exponent for ordinary magnitudes
  (1234.5 -> ``1230``, 0.012345 -> ``0.0123``, 2 -> ``2.00``, -0.5 -> ``-0.500``), with one
  beyond (``2.19e+12``, ``1.23e-07``).
* A p value is ``p < 0.001`` below 0.001, else ``p = `` and the number's 3 significant
  digits (``p = 0.0412``, ``p = 0.500``).
* A missing or non-finite value (None, NaN, ±inf, "", text that is no number) is ``n/a``.

The TSVs keep the full values (15 significant digits); only what people read is rounded.
"""

from __future__ import annotations

import math

#: what a missing or non-finite value prints as
MISSING = "n/a"
#: p values below this print as ``p < 0.001``
P_FLOOR = 0.001
#: significant digits of every number printed for reading
DIGITS = 3


def as_number(x) -> float | None:
    """A value (a number or a table cell) as a finite float, or None."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def fmt_num(x, digits: int = DIGITS) -> str:
    """``x`` with ``digits`` significant digits, without exponent for ordinary magnitudes
    (1234.5 -> "1230", 0.01234 -> "0.0123", 2.2e12 -> "2.20e+12"); :data:`MISSING` for a
    missing or non-finite value."""
    x = as_number(x)
    if x is None:
        return MISSING
    x = float(f"{x:.{digits}g}")  # round first: 0.99996 -> 1.00, not 1.000
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    decimals = max(0, digits - 1 - mag)
    if decimals > 6 or mag >= 6:
        return f"{x:.{digits - 1}e}"
    out = f"{x:.{decimals}f}"
    return "0" if float(out) == 0 else out


def fmt_p(p) -> str:
    """A p value for reading: ``p < 0.001``, else 3 significant digits (``p = 0.0412``);
    :data:`MISSING` for a missing or non-finite value."""
    p = as_number(p)
    if p is None:
        return MISSING
    return f"p < {P_FLOOR:g}" if p < P_FLOOR else f"p = {fmt_num(p)}"


def fmt_ci(est, low, high) -> str:
    """``est (low, high)`` with 3 significant digits each."""
    return f"{fmt_num(est)} ({fmt_num(low)}, {fmt_num(high)})"


__all__ = ["DIGITS", "MISSING", "P_FLOOR", "as_number", "fmt_ci", "fmt_num", "fmt_p"]
