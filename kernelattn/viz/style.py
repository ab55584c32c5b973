"""The figures' shared style: paper sizes, one colour per model, log axes, panel grids, saving to files.

Figures are built without pyplot (no global figure state); the paper style
(:data:`PAPER_RC`: 8 pt text, thin lines, TrueType fonts in PDFs) is applied
with ``matplotlib.rc_context`` around the drawing only (:func:`paper_style`)
and the saving (:func:`save_figure`). Sizes fit a paper column (:data:`SINGLE`
= 3.3 in, :data:`DOUBLE` = 6.9 in). Models keep one colour everywhere
(:data:`MODEL_COLORS`; variants of the attention — the remedies — take colours
from :data:`VARIANT_PALETTE` in a fixed order, :func:`model_colors`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

from kernelattn.analysis.formatting import fmt, fmt_power

if TYPE_CHECKING:  # current matplotlib names its rc keys; the legacy environment's 3.9.4 has no RcKeyType
    from matplotlib.typing import RcKeyType

__all__ = [
    "DATASET_PALETTE",
    "DOUBLE",
    "MARKERS",
    "MAX_COLS",
    "MODEL_COLORS",
    "PAPER_RC",
    "REFERENCE",
    "SINGLE",
    "VARIANT_PALETTE",
    "colors_for",
    "grid",
    "log_axis",
    "model_colors",
    "new_figure",
    "no_data",
    "ordered_models",
    "panel_grid",
    "panel_label",
    "panel_size",
    "paper_style",
    "save_figure",
]

SINGLE = 3.3  # inches: one column
DOUBLE = 6.9  # inches: two columns
#: One colour per model, everywhere (Okabe–Ito, colour-blind safe).
MODEL_COLORS = {"2L-ReLU": "#0072B2", "MLP-Attn": "#D55E00", "QKV-Attn": "#009E73"}
#: Colours of attention variants (rank-r, depth-k, ...), assigned in sorted-label order.
VARIANT_PALETTE = (
    "#E69F00",
    "#CC79A7",
    "#56B4E9",
    "#882255",
    "#44AA99",
    "#999933",
    "#332288",
    "#AA4499",
    "#117733",
    "#661100",
)
DATASET_PALETTE = (
    "#000000",
    "#E69F00",
    "#56B4E9",
    "#009E73",
    "#CC79A7",
    "#0072B2",
    "#D55E00",
    "#999999",
    "#882255",
    "#44AA99",
)
MARKERS = {"2L-ReLU": "o", "MLP-Attn": "s", "QKV-Attn": "^"}
PAPER_RC: dict[RcKeyType, Any] = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "axes.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.minor.width": 0.4,
    "ytick.minor.width": 0.4,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.dpi": 300,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "axes.grid": False,
    "mathtext.default": "regular",
}
REFERENCE = "#777777"
MAX_COLS = 4  # panels per row before wrapping


def paper_style(function: Callable[..., Figure]) -> Callable[..., Figure]:
    """Build the figure under the paper rc settings (restored afterwards)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with matplotlib.rc_context(PAPER_RC):
            return function(*args, **kwargs)

    return wrapper


def new_figure(width: float, height: float) -> Figure:
    """A pyplot-free figure of ``width`` × ``height`` inches with constrained layout."""
    return Figure(figsize=(width, height), layout="constrained")


def log_axis(ax, which: str = "y", base: int = 10) -> None:
    """Log scale labelled in Unicode powers (``10⁻³``, ``2¹⁰``; no mathtext, so drawing stays fast).

    Base 10: decades labelled, and the 2× and 5× minor ticks too when the axis
    spans less than two decades. Base 2 (widths): the powers of 2 inside the
    limits, every one up to 7 of them, else every 2nd, 3rd, ... (set the
    limits first).
    """
    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log", base=base)

    def major(value: float, _pos: Any) -> str:
        if value <= 0:
            return ""
        exponent = math.log(value, base)
        if abs(exponent - round(exponent)) > 1e-6:
            return ""
        return fmt_power(base, round(exponent))

    if base == 2:
        lo, hi = ax.get_xlim() if which == "x" else ax.get_ylim()
        e_lo, e_hi = math.ceil(math.log2(max(lo, 1e-300)) - 1e-9), math.floor(math.log2(max(hi, 1e-300)) + 1e-9)
        step = max(1, math.ceil((e_hi - e_lo + 1) / 7))
        axis.set_major_locator(FixedLocator([2.0**e for e in range(e_lo, e_hi + 1, step)]))
        axis.set_major_formatter(FuncFormatter(major))
        axis.set_minor_formatter(NullFormatter())
        return

    def minor(value: float, _pos: Any) -> str:
        lo, hi = axis.get_view_interval()
        if lo <= 0 or math.log10(hi / lo) >= 2:
            return ""
        mantissa = value / 10 ** math.floor(math.log10(value) + 1e-9)
        return fmt(value, 3) if round(mantissa) in (2, 5) and abs(mantissa - round(mantissa)) < 1e-6 else ""

    axis.set_major_locator(LogLocator(base=base, numticks=6))
    axis.set_minor_locator(LogLocator(base=base, subs=range(2, 10), numticks=12))
    axis.set_major_formatter(FuncFormatter(major))
    axis.set_minor_formatter(FuncFormatter(minor))


def model_colors(labels: Sequence[str]) -> dict[str, str]:
    """Colour per model label: :data:`MODEL_COLORS` for the base models, the palette for variants."""
    colors = {}
    variants = sorted({str(m) for m in labels if m not in MODEL_COLORS})
    for label in labels:
        label = str(label)
        if label in MODEL_COLORS:
            colors[label] = MODEL_COLORS[label]
        elif label not in colors:
            colors[label] = VARIANT_PALETTE[variants.index(label) % len(VARIANT_PALETTE)]
    return colors


def colors_for(frame: pd.DataFrame, colors: dict[str, str] | None) -> dict[str, str]:
    """Colour per model label of ``frame``: :func:`model_colors`, overridden by ``colors`` where given."""
    labels = list(dict.fromkeys(frame["model"])) if "model" in frame and not frame.empty else []
    base = model_colors(labels)
    if colors:
        base.update({k: v for k, v in colors.items() if k in base})
    return base


def ordered_models(frame: pd.DataFrame) -> list[str]:
    """Model labels in display order: 2L-ReLU, MLP-Attn, QKV-Attn, then variants (in frame order)."""
    labels = list(dict.fromkeys(frame["model"]))
    first = [m for m in MODEL_COLORS if m in labels]
    return first + [m for m in labels if m not in MODEL_COLORS]


def grid(fig: Figure, rows: int, cols: int, **kwargs: Any) -> np.ndarray:
    """A ``(rows, cols)`` array of axes (``Figure.subplots`` keyword arguments passed on)."""
    return fig.subplots(rows, cols, squeeze=False, **kwargs)


def panel_grid(fig: Figure, rows: list, cols: list, *, sharey: bool = True) -> np.ndarray:
    """Axes for a rows × cols layout (datasets × settings), wrapped into rows of at most ``MAX_COLS``
    panels when there is a single dataset row."""
    if len(rows) == 1 and len(cols) > MAX_COLS:
        n = len(cols)
        nrows = math.ceil(n / MAX_COLS)
        axes = grid(fig, nrows, MAX_COLS, sharey=sharey).reshape(-1)
        for ax in axes[n:]:
            ax.set_axis_off()
        return axes[:n].reshape(1, n)
    return grid(fig, len(rows), len(cols), sharey=sharey)


def panel_size(rows: int, cols: int, height: float = 2.3) -> tuple[float, float]:
    """Figure size for a rows × cols panel grid (wrapped at ``MAX_COLS`` columns)."""
    if rows == 1 and cols > MAX_COLS:
        rows, cols = math.ceil(cols / MAX_COLS), MAX_COLS
    width = SINGLE if cols == 1 else min(DOUBLE, 2.2 * cols + 0.3)
    return width, height * rows + 0.2


def panel_label(ax, text: str) -> None:
    """The panel's title, left-aligned."""
    ax.set_title(text, loc="left", fontsize=8)


def no_data(fig: Figure, message: str = "no stored data for this figure") -> Figure:
    """``fig`` with ``message`` in place of data."""
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return fig


def save_figure(
    figure: Figure, stem: str | Path, formats: Sequence[str] = ("png", "pdf"), *, precision: str | None = None
) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.pdf`` (deterministic metadata); the paths written.

    The layout is computed once, for the first format, and kept for the
    others. ``precision``: the matmul precision policy of the records drawn
    ("highest", "fast", or "unrecorded" for records older than the policy),
    named in the files' metadata (PNG ``Description``, PDF ``Subject``) as
    ``kernelattn matmul precision: <precision>``.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    note = None if precision is None else f"kernelattn matmul precision: {precision}"
    with matplotlib.rc_context(PAPER_RC):
        for ext in formats:
            path = stem.with_suffix(f".{ext}")
            metadata: dict[str, str | None] | None = (
                {"CreationDate": None, "Producer": None}
                if ext == "pdf"
                else ({"Software": None} if ext == "png" else None)
            )
            if note is not None and metadata is not None:
                metadata["Subject" if ext == "pdf" else "Description"] = note
            figure.savefig(path, format=ext, metadata=metadata)
            paths.append(path)
            if figure.get_layout_engine() is not None:
                figure.set_layout_engine("none")  # keep the computed layout for the next format
    return paths
