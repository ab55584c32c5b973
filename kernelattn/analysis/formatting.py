"""Numbers and tables as text: one format for the report, the sweep summaries and the command line.

Numbers have 4 significant digits (``fmt``), log10 values two decimals
(``fmt_log``, ``fmt_fixed``), spreads 2 (``fmt_pm``); "nan", "inf" and "-inf"
are spelled out, so every number printed is parseable by ``float()``. Figure
labels write powers in Unicode superscripts (``fmt_power``: "10⁻³"). Tables are GitHub
markdown (``markdown_table``) or fixed-width plain text (``text_table``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "fits_table",
    "fmt",
    "fmt_fixed",
    "fmt_int",
    "fmt_log",
    "fmt_pm",
    "fmt_power",
    "fmt_range",
    "markdown_table",
    "seed_summary_table",
    "superscript",
    "text_table",
]

_SUPERSCRIPT = str.maketrans("-0123456789.", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹·")


def _real(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def fmt(value: Any, digits: int = 4) -> str:
    """One number as text: ints as is, floats with ``digits`` significant digits ("nan", "inf" spelled out).

    None is "nan", a bool "true"/"false", any other non-number its ``str``.
    """
    if value is None:
        return "nan"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    x = _real(value)
    if x is None:
        return str(value)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    return f"{x:.{digits}g}"


def fmt_fixed(value: Any, decimals: int) -> str:
    """A number with a fixed number of ``decimals`` ("nan", "inf" and "-inf" spelled out; non-numbers "nan")."""
    x = _real(value)
    if x is None or math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{decimals}f}"


def fmt_log(value: Any) -> str:
    """A log10 value with two decimals ("inf", "nan" spelled out)."""
    return fmt_fixed(value, 2)


def fmt_int(value: Any) -> str:
    """An integer count as text ("?" when the value is not a finite number)."""
    try:
        return str(int(value))
    except (TypeError, ValueError, OverflowError):
        return "?"


def superscript(text: str) -> str:
    """Digits, minus signs and points of ``text`` as Unicode superscripts ("-3" → "⁻³")."""
    return text.translate(_SUPERSCRIPT)


def fmt_power(base: int, exponent: float) -> str:
    """``base`` to ``exponent`` in Unicode superscripts: "10⁻³", "2¹⁰", "10¹²·³" (one decimal unless an integer)."""
    return f"{base}{superscript(fmt_fixed(exponent, 0 if float(exponent).is_integer() else 1))}"


def fmt_pm(mean: Any, spread: Any) -> str:
    """``mean ± spread`` (just the mean when the spread is NaN or missing)."""
    text = fmt(mean)
    s = _real(spread)
    return text if s is None or math.isnan(s) else f"{text} ± {fmt(s, 2)}"


def fmt_range(values: Iterable[Any], digits: int = 3) -> str:
    """ "lo – hi" of the numbers given (NaN and None left out; one value if lo = hi; "nan" if none)."""
    numbers = [x for x in (_real(v) for v in values if v is not None) if x is not None and not math.isnan(x)]
    if not numbers:
        return "nan"
    lo, hi = min(numbers), max(numbers)
    return fmt(lo, digits) if lo == hi else f"{fmt(lo, digits)} – {fmt(hi, digits)}"


def _alignment(header: Sequence[str], align: Sequence[str] | None) -> list[str]:
    return list(align) if align is not None else ["l"] + ["r"] * (len(header) - 1)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured markdown table; ``align`` per column: "l" or "r" (default: first left, rest right)."""
    header = list(header)
    align = _alignment(header, align)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines)


def text_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: Sequence[str] | None = None) -> str:
    """A fixed-width plain-text table: header, a rule, the rows; ``align`` as in :func:`markdown_table`.

    Cells are shown as given (format numbers with :func:`fmt` first).
    """
    header = [str(h) for h in header]
    body = [[str(c) for c in row] for row in rows]
    if not body:
        return "(no rows)"
    align = _alignment(header, align)
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align)).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in body])


def seed_summary_table(summary: Any, shown: Sequence[tuple[str, str]]) -> str:
    """A seed summary by (dataset, model, width) as text: its seeds, then ``mean ± std`` per metric shown.

    Args:
      summary: rows with ``dataset``, ``model``, ``width``, ``n_seeds`` and
        ``<metric>_mean`` / ``<metric>_std`` (``statistics.seed_summary``).
      shown: (metric, column label) pairs, in column order.
    """
    columns = ["dataset", "model", "width", "seeds"] + [label for _, label in shown]
    rows = [
        [str(r["dataset"]), str(r["model"]), fmt(int(r["width"])), fmt(int(r["n_seeds"]))]
        + [fmt_pm(r[f"{k}_mean"], r[f"{k}_std"]) for k, _ in shown]
        for _, r in summary.iterrows()
    ]
    return text_table(columns, rows, ["l", "l"] + ["r"] * (len(columns) - 2))


def fits_table(fits: Any, shown: Sequence[tuple[str, str]]) -> str:
    """Fits by (dataset, model) as text: each column shown, ``log10_*`` ones with two decimals (:func:`fmt_log`).

    Args:
      fits: rows with ``dataset``, ``model`` and the columns shown (``fits.group_fits``).
      shown: (column, label) pairs, in column order.
    """
    header = ["dataset", "model"] + [label for _, label in shown]
    rows = [
        [str(r["dataset"]), str(r["model"])] + [fmt_log(r[k]) if k.startswith("log10") else fmt(r[k]) for k, _ in shown]
        for _, r in fits.iterrows()
    ]
    return text_table(header, rows, ["l", "l"] + ["r"] * (len(header) - 2))
