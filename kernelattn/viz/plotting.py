"""Figures from stored results only: data frames in (``kernelattn.viz.report.load_frames``), Figures out.

Every function is pure: it takes frames of stored records and returns a
``matplotlib.figure.Figure`` built without pyplot (no global figure state; the
paper style is applied with ``matplotlib.rc_context`` around the drawing
only), sized for a paper column (``SINGLE`` = 3.3 in, ``DOUBLE`` = 6.9 in, 8 pt
text). Models keep one colour everywhere (:data:`MODEL_COLORS`; variants of
the attention — the remedies — take colours from :data:`VARIANT_PALETTE` in a
fixed order, :func:`model_colors`). :func:`save_figure` writes PNG and PDF.

Figures:

- :func:`plot_convergence` — rel_fro and cert against width (log-log), mean
  over seeds with a min–max band, the m^{-1/2} reference, cert = 1, the
  extrapolated width where cert = 1/2 and m_theory (arrows at the right edge
  when off the axis: m_theory is often 1e40 and more);
- :func:`plot_spectra` — normalized eigenvalues of G and G^{2k+1} (log);
- :func:`plot_condition_power` — κ_d(G)^{2k+1} (algebra) against the measured
  κ_d(G^{2k+1}), log-log with the identity line;
- :func:`plot_flip_rates` — flip-rate bars per attack and model with error bars;
- :func:`plot_epsilon_sweep` — flip rate against ε;
- :func:`plot_adversarial_training` — standard vs PGD adversarial training bars;
- :func:`plot_remedies` — rank-r truncated / depth-k attention: cert and κ_d of
  the head's input, and/or the flip rate, per variant;
- :func:`plot_kappa_sweep` — cert and/or flip rate, and their ratio to
  2L-ReLU, against κ(G) on synthetic data;
- :func:`plot_ntk_distance` — ‖f_m − f_NTK‖/‖f_NTK‖ after training against width.

:func:`figures_for` decides which figures a set of stores supports.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

from kernelattn.analysis.fits import convergence_fits

__all__ = [
    "DATASET_PALETTE",
    "DOUBLE",
    "MODEL_COLORS",
    "PAPER_RC",
    "SINGLE",
    "VARIANT_PALETTE",
    "figures_for",
    "model_colors",
    "plot_adversarial_training",
    "plot_condition_power",
    "plot_convergence",
    "plot_epsilon_sweep",
    "plot_flip_rates",
    "plot_kappa_sweep",
    "plot_ntk_distance",
    "plot_remedies",
    "plot_spectra",
    "save_figure",
]

SINGLE = 3.3  # inches: one column
DOUBLE = 6.9  # inches: two columns
#: One colour per model, everywhere (Okabe–Ito, colour-blind safe).
MODEL_COLORS = {"2L-ReLU": "#0072B2", "MLP-Attn": "#D55E00", "QKV-Attn": "#009E73"}
#: Colours of attention variants (rank-r, depth-k, ...), assigned in sorted-label order.
VARIANT_PALETTE = ("#E69F00", "#CC79A7", "#56B4E9", "#882255", "#44AA99", "#999933", "#332288", "#AA4499",
                   "#117733", "#661100")
DATASET_PALETTE = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#CC79A7", "#0072B2", "#D55E00", "#999999",
                   "#882255", "#44AA99")
MARKERS = {"2L-ReLU": "o", "MLP-Attn": "s", "QKV-Attn": "^"}
PAPER_RC = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 7, "legend.frameon": False, "lines.linewidth": 1.2, "lines.markersize": 3.5,
    "axes.linewidth": 0.6, "xtick.major.width": 0.6, "ytick.major.width": 0.6, "xtick.minor.width": 0.4,
    "ytick.minor.width": 0.4, "axes.spines.top": False, "axes.spines.right": False, "savefig.dpi": 300,
    "pdf.fonttype": 42, "ps.fonttype": 42, "axes.grid": False, "mathtext.default": "regular",
}
REFERENCE = "#777777"
MAX_COLS = 4  # panels per row before wrapping


def _paper_style(function: Callable[..., Figure]) -> Callable[..., Figure]:
    """Build the figure under the paper rc settings (restored afterwards)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with matplotlib.rc_context(PAPER_RC):
            return function(*args, **kwargs)

    return wrapper


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


_SUPERSCRIPT = str.maketrans("-0123456789.", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹·")


def _power_label(base: int, exponent: float) -> str:
    """``10⁻³`` / ``2¹⁰`` in Unicode superscripts (no mathtext: drawing stays fast)."""
    text = f"{exponent:.0f}" if float(exponent).is_integer() else f"{exponent:.1f}"
    return f"{base}{text.translate(_SUPERSCRIPT)}"


def _log_axis(ax, which: str = "y", base: int = 10) -> None:
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
        return _power_label(base, round(exponent))

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
        return f"{value:.3g}" if round(mantissa) in (2, 5) and abs(mantissa - round(mantissa)) < 1e-6 else ""

    axis.set_major_locator(LogLocator(base=base, numticks=6))
    axis.set_minor_locator(LogLocator(base=base, subs=np.arange(2, 10), numticks=12))
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


def _colors(frame: pd.DataFrame, colors: dict[str, str] | None) -> dict[str, str]:
    labels = list(dict.fromkeys(frame["model"])) if "model" in frame and not frame.empty else []
    base = model_colors(labels)
    if colors:
        base.update({k: v for k, v in colors.items() if k in base})
    return base


def _models(frame: pd.DataFrame) -> list[str]:
    """Model labels in display order: 2L-ReLU, MLP-Attn, QKV-Attn, then variants (in frame order)."""
    labels = list(dict.fromkeys(frame["model"]))
    first = [m for m in MODEL_COLORS if m in labels]
    return first + [m for m in labels if m not in MODEL_COLORS]


def _panel_grid(fig: Figure, rows: list, cols: list, *, sharey: bool = True) -> np.ndarray:
    """Axes for a rows × cols layout (datasets × settings), wrapped into rows of at most ``MAX_COLS``
    panels when there is a single dataset row."""
    if len(rows) == 1 and len(cols) > MAX_COLS:
        n = len(cols)
        ncols = MAX_COLS
        nrows = math.ceil(n / ncols)
        axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey).reshape(-1)
        for ax in axes[n:]:
            ax.set_axis_off()
        return axes[:n].reshape(1, n)
    return fig.subplots(len(rows), len(cols), squeeze=False, sharey=sharey)


def _panel_size(rows: int, cols: int, height: float = 2.3) -> tuple[float, float]:
    """Figure size for a rows × cols panel grid (wrapped at ``MAX_COLS`` columns)."""
    if rows == 1 and cols > MAX_COLS:
        rows, cols = math.ceil(cols / MAX_COLS), MAX_COLS
    width = SINGLE if cols == 1 else min(DOUBLE, 2.2 * cols + 0.3)
    return width, height * rows + 0.2


def _grid(fig: Figure, rows: int, cols: int, **kwargs: Any) -> np.ndarray:
    axes = fig.subplots(rows, cols, squeeze=False, **kwargs)
    return axes


def _panel_label(ax, text: str) -> None:
    ax.set_title(text, loc="left", fontsize=8)


def _no_data(fig: Figure, message: str = "no stored data for this figure") -> Figure:
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return fig


def save_figure(figure: Figure, stem: str | Path, formats: Sequence[str] = ("png", "pdf"), *,
                precision: str | None = None) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.pdf`` (deterministic metadata); the paths written.

    ``precision``: the matmul precision policy of the records drawn ("highest",
    "fast", or "unrecorded" for records older than the policy), named in the files' metadata (PNG ``Description``,
    PDF ``Subject``) as ``kernelattn matmul precision: <precision>``.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    note = None if precision is None else f"kernelattn matmul precision: {precision}"
    with matplotlib.rc_context(PAPER_RC):
        for ext in formats:
            path = stem.with_suffix(f".{ext}")
            metadata = {"CreationDate": None, "Producer": None} if ext == "pdf" else (
                {"Software": None} if ext == "png" else None)
            if note is not None and metadata is not None:
                metadata["Subject" if ext == "pdf" else "Description"] = note
            figure.savefig(path, format=ext, metadata=metadata)
            paths.append(path)
            if figure.get_layout_engine() is not None:
                figure.set_layout_engine("none")  # keep the computed layout for the next format
    return paths


# =========================================================================== convergence


def _seed_stats(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    g = frame.groupby("width")[metric]
    stats = pd.DataFrame({"mean": g.mean(), "min": g.min(), "max": g.max(), "n": g.count()})
    return stats.sort_index()


@_paper_style
def plot_convergence(kernel: pd.DataFrame, fits: pd.DataFrame | None = None, *,
                     colors: dict[str, str] | None = None, band: str = "minmax") -> Figure:
    """Width against rel_fro (top row) and cert (bottom row), one column per dataset; log-log.

    Args:
      kernel: kernel-sweep rows (``report.load_frames(out).kernel``), one store.
      fits: ``analysis.fits.convergence_fits(kernel)`` (computed when omitted): gives
        the extrapolated width where cert = 1/2, marked per model (a dotted
        vertical line when on the axis, an arrow at the right edge when not),
        and m_theory (likewise; usually far off the axis).
      colors: model label → colour (default :func:`model_colors`).
      band: "minmax" (seed min–max, default) or "std" (mean ± std over seeds).
    """

    datasets = list(dict.fromkeys(kernel["dataset"])) if not kernel.empty else []
    ncols = max(1, min(MAX_COLS, len(datasets)))
    blocks = max(1, math.ceil(len(datasets) / ncols))
    fig = _figure(SINGLE if ncols == 1 else min(DOUBLE, 1.9 * ncols + 0.4), 4.0 * blocks)
    if kernel.empty:
        return _no_data(fig)
    fits = convergence_fits(kernel) if fits is None else fits
    colors = _colors(kernel, colors)
    axes = _grid(fig, 2 * blocks, ncols)
    for index in range(len(datasets), blocks * ncols):  # unused cells of the last block
        axes[2 * (index // ncols), index % ncols].set_axis_off()
        axes[2 * (index // ncols) + 1, index % ncols].set_axis_off()
    for index, dataset in enumerate(datasets):
        block, j = divmod(index, ncols)
        sub = kernel[kernel["dataset"] == dataset]
        widths = np.sort(sub["width"].unique()).astype(float)
        xlim = (widths.min() / 1.6, widths.max() * 1.6)
        for i, metric in enumerate(("rel_fro", "cert")):
            ax = axes[2 * block + i, j]
            if metric not in sub:
                ax.set_axis_off()
                continue
            anchor = None
            for model in _models(sub):
                stats = _seed_stats(sub[sub["model"] == model], metric)
                stats = stats[np.isfinite(stats["mean"]) & (stats["mean"] > 0)]
                if stats.empty:
                    continue
                x = stats.index.to_numpy(float)
                c = colors[model]
                ax.plot(x, stats["mean"], color=c, marker=MARKERS.get(model, "D"), label=model)
                if band == "std":
                    std = sub[sub["model"] == model].groupby("width")[metric].std().reindex(stats.index)
                    lo, hi = stats["mean"] - std, stats["mean"] + std
                else:
                    lo, hi = stats["min"], stats["max"]
                lo = np.where(lo > 0, lo, stats["mean"])
                if stats["n"].max() > 1:
                    ax.fill_between(x, lo, hi, color=c, alpha=0.18, linewidth=0)
                if anchor is None:
                    mid = len(x) // 2
                    anchor = (x[mid], float(stats["mean"].iloc[mid]))
            if anchor is not None:
                ref = anchor[1] * np.sqrt(anchor[0] / widths)
                ax.plot(widths, ref, color=REFERENCE, linestyle="--", linewidth=0.8, label=r"$\propto m^{-1/2}$")
            ax.set_xlim(*xlim)
            _log_axis(ax, "x", 2)
            _log_axis(ax, "y")
            if metric == "cert":
                ax.axhline(1.0, color="black", linewidth=0.6, linestyle=":")
                ax.text(xlim[0] * 1.1, 1.0, "cert = 1", va="bottom", ha="left", fontsize=6.5)
                _mark_widths(ax, fits[fits["dataset"] == dataset] if not fits.empty else fits, colors, xlim)
                ax.set_xlabel("width m (hidden units)")
            else:
                ax.tick_params(labelbottom=False)
            if j == 0:
                ax.set_ylabel(r"rel_fro = $\|\Theta_m-\Theta_\infty\|_F/\|\Theta_\infty\|_F$" if metric == "rel_fro"
                              else r"cert = $\|\Theta_m-\Theta_\infty\|_2/\lambda_{min}(\Theta_\infty)$")
            if i == 0:
                _panel_label(ax, dataset)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    axes[0, 0].legend(handles, labels, loc="lower left")
    return fig


def _mark_widths(ax, fits: pd.DataFrame, colors: dict[str, str], xlim: tuple[float, float]) -> None:
    """m(cert=½) per model and m_theory: dotted line when on the axis, else an arrow note at the right edge.

    The notes sit in a band added above the data (the y range is widened), so
    they never cover a curve.
    """
    if fits is None or fits.empty:
        return
    notes: list[tuple[str, str]] = []
    for _, r in fits.iterrows():
        m_half = float(r.get("m_cert_half", math.nan))
        color = colors.get(r["model"], "black")
        if math.isfinite(m_half) and xlim[0] <= m_half <= xlim[1]:
            ax.axvline(m_half, color=color, linestyle=":", linewidth=0.9)
        elif not math.isnan(m_half):
            where = _power_label(10, round(math.log10(m_half), 1)) if 0 < m_half < math.inf else "∞"
            notes.append((f"cert=½ at m≈{where}", color))
    theory = fits["log10_m_theory"].dropna() if "log10_m_theory" in fits else pd.Series(dtype=float)
    if len(theory):
        value = float(theory.iloc[0])
        if math.isfinite(value) and xlim[0] <= 10**value <= xlim[1]:
            ax.axvline(10**value, color="black", linestyle="-.", linewidth=0.8)
        else:
            notes.append((f"m_theory≈{_power_label(10, round(value, 1)) if math.isfinite(value) else '∞'}", "black"))
    if not notes:
        return
    lo, hi = ax.get_ylim()
    if lo > 0 and hi > lo:
        decades = math.log10(hi / lo)
        ax.set_ylim(lo, hi * 10 ** (decades * 0.16 * len(notes) / (1 - 0.16 * len(notes))))
    for k, (text, color) in enumerate(notes):
        ax.annotate(text, xy=(1.0, 0.955 - 0.11 * k), xycoords="axes fraction", xytext=(-10, 0),
                    textcoords="offset points", ha="right", va="center", fontsize=6, color=color,
                    arrowprops={"arrowstyle": "->", "color": color, "linewidth": 0.7})


# =========================================================================== condition numbers


def _spectrum(values: Any, rank: Any) -> np.ndarray | None:
    if not isinstance(values, (list, tuple, np.ndarray)) or len(values) == 0:
        return None
    v = np.asarray(values, np.float64)
    try:
        r = int(rank)
    except (TypeError, ValueError):
        r = v.size
    v = v[: max(1, min(r, v.size))]
    return v[v > 0]


@_paper_style
def plot_spectra(conditions: pd.DataFrame) -> Figure:
    """Normalized eigenvalues λ_i/λ_1 of G (left) and G^{2k+1} (right) per dataset, up to the numerical rank."""
    fig = _figure(DOUBLE, 2.5)
    rows = conditions[conditions["eigenvalues_G"].notna()] if "eigenvalues_G" in conditions else conditions.iloc[:0]
    if rows.empty:
        return _no_data(fig, "no stored spectra (conditions spec with \"spectra\": true)")
    power = int(rows["power"].iloc[0]) if "power" in rows else 3
    axes = _grid(fig, 1, 2, sharey=True)
    for k, (_, r) in enumerate(rows.iterrows()):
        color = DATASET_PALETTE[k % len(DATASET_PALETTE)]
        for ax, column, rank in ((axes[0, 0], "eigenvalues_G", r.get("rank_G")),
                                 (axes[0, 1], "eigenvalues_attention", r.get("rank_attention"))):
            v = _spectrum(r.get(column), rank)
            if v is not None:
                label = r["dataset"] if f"n={fmt_int(r['n'])}" in r["dataset"] else f"{r['dataset']} (n={fmt_int(r['n'])})"
                ax.plot(np.arange(1, v.size + 1), v, color=color, label=label, linewidth=1.0)
    for ax, title in ((axes[0, 0], "G = X Xᵀ"),
                      (axes[0, 1], f"G{str(power).translate(_SUPERSCRIPT)} = Z Zᵀ, Z = "
                                   f"G{'' if power == 3 else str((power - 1) // 2).translate(_SUPERSCRIPT)} X (attention)")):
        _log_axis(ax, "y")
        _log_axis(ax, "x")
        ax.set_xlabel("eigenvalue index i")
        _panel_label(ax, title)
    axes[0, 0].set_ylabel(r"$\lambda_i/\lambda_1$")
    axes[0, 0].legend(loc="lower left", fontsize=6)
    return fig


def fmt_int(value: Any) -> str:
    try:
        return str(int(value))
    except (TypeError, ValueError):
        return "?"


@_paper_style
def plot_condition_power(conditions: pd.DataFrame) -> Figure:
    """κ_d(G)^{2k+1} from the algebra (x) against κ_d(G^{2k+1}) measured in float64 (y), with y = x."""
    fig = _figure(SINGLE, 3.0)
    if conditions.empty:
        return _no_data(fig)
    power = int(conditions["power"].iloc[0]) if "power" in conditions else 3
    ax = fig.add_subplot()
    x = conditions["kappa_d_G_power"].to_numpy(np.float64)
    y = conditions["kappa_d_attention"].to_numpy(np.float64)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if not ok.any():
        return _no_data(fig, "no finite condition numbers stored")
    lo, hi = min(x[ok].min(), y[ok].min()) / 3, max(x[ok].max(), y[ok].max()) * 3
    ax.plot([lo, hi], [lo, hi], color=REFERENCE, linestyle="--", linewidth=0.8, label="identity")
    for k, (_, r) in enumerate(conditions.iterrows()):
        if not ok[k]:
            continue
        ax.plot(r["kappa_d_G_power"], r["kappa_d_attention"], marker="o", linestyle="none",
                color=DATASET_PALETTE[k % len(DATASET_PALETTE)], label=r["dataset"])
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    _log_axis(ax, "x")
    _log_axis(ax, "y")
    ax.set_xlabel(rf"$\kappa_d(G)^{power}$ (algebra)")
    ax.set_ylabel(rf"$\kappa_d(G^{power})$ measured (float64)")
    ax.legend(loc="upper left", fontsize=6)
    return fig


# =========================================================================== malleability


def _measured(frame: pd.DataFrame) -> pd.DataFrame:
    """The malleability records that are not null baselines."""
    if frame.empty or "intervention" not in frame:
        return frame
    return frame[~frame["intervention"].astype(str).str.startswith("null-")]


def _adversarial(frame: pd.DataFrame) -> pd.DataFrame:
    """Every training point attacked on the network's loss, influence from Θ_m at θ_T (the default
    protocol) when such records exist; else every measured record."""
    frame = _measured(frame)
    if frame.empty:
        return frame
    mask = frame["intervention"] == "adversarial"
    if "attack_target" in frame:
        mask &= frame["attack_target"].isin(["model"])
    if "influence_kernel" in frame and (frame["influence_kernel"] == "empirical").any():
        mask &= frame["influence_kernel"] == "empirical"
    if "variants" in frame:
        mask &= frame["variants"].apply(lambda vs: "default" in vs)
    adv = frame[mask]
    return adv if not adv.empty else frame


def _null_level(malleability: pd.DataFrame, dataset: str, model: str) -> float:
    """Mean flip rate of the "null-seed" baselines of a dataset and model (NaN when none)."""
    if malleability.empty or "intervention" not in malleability:
        return math.nan
    sub = malleability[(malleability["intervention"] == "null-seed") & (malleability["dataset"] == dataset)
                       & (malleability["model"] == model)]
    if "influence_kernel" in sub and (sub["influence_kernel"] == "empirical").any():
        sub = sub[sub["influence_kernel"] == "empirical"]
    return float(sub["flip_rate"].mean()) if not sub.empty else math.nan


def _flags(frame: pd.DataFrame) -> str:
    """"†" when a fit behind ``frame`` did not train, "‡" when one of its attacks was a no-op."""
    untrained = "trained" in frame and bool((~frame["trained"].astype(bool)).any())
    no_op = "attack_effective" in frame and bool((frame["attack_effective"] == False).any())  # noqa: E712
    return ("†" if untrained else "") + ("‡" if no_op else "")


FLAG_CAPTION = "black tick: null baseline (seed); † fit did not train; ‡ attack no-op"


def _closest(values: Sequence[float], target: float) -> float:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return min(values, key=lambda v: abs(v - target)) if values else math.nan


def _bars(ax, groups: list[str], series: list[tuple[str, list[float], list[float]]], colors: dict[str, str],
          ratio_of: tuple[str, str] | None = None, nulls: Mapping[str, list[float]] | None = None,
          marks: Mapping[str, list[str]] | None = None) -> None:
    """Grouped bars: ``series`` = (label, heights per group, errors per group); optional per-label null
    levels (a black tick across the bar) and flag marks (text above it)."""
    n = max(1, len(series))
    width = 0.8 / n
    x = np.arange(len(groups))
    for k, (label, heights, errors) in enumerate(series):
        xs = x + (k - (n - 1) / 2) * width
        ax.bar(xs, heights, width * 0.92, yerr=errors, color=colors.get(label, "grey"),
               label=label, error_kw={"linewidth": 0.7, "capsize": 1.5})
        for g, level in enumerate((nulls or {}).get(label, [])):
            if math.isfinite(level):
                ax.hlines(level, xs[g] - width * 0.46, xs[g] + width * 0.46, colors="black", linewidth=1.2)
        for g, mark in enumerate((marks or {}).get(label, [])):
            if mark and math.isfinite(heights[g]):
                ax.text(xs[g], heights[g] + 0.01, mark, ha="center", va="bottom", fontsize=6, color="crimson")
    if ratio_of is not None:
        base = next((s for s in series if s[0] == ratio_of[0]), None)
        other = next((s for s in series if s[0] == ratio_of[1]), None)
        if base is not None and other is not None:
            for g in range(len(groups)):
                b, o = base[1][g], other[1][g]
                if b > 0 and math.isfinite(o):
                    top = max(h[1][g] + (h[2][g] if math.isfinite(h[2][g]) else 0) for h in series
                              if math.isfinite(h[1][g]))
                    ax.text(x[g], top + 0.02, f"×{o / b:.1f}", ha="center", va="bottom", fontsize=6)
    ax.set_xticks(x, groups)


def _mean_err(frame: pd.DataFrame, metric: str = "flip_rate") -> tuple[float, float]:
    """Mean over seeds; error = std over seeds (≥ 2 seeds) or the stored std over test points (1 seed)."""
    if frame.empty:
        return math.nan, math.nan
    v = frame[metric].to_numpy(np.float64)
    if len(v) >= 2:
        return float(np.nanmean(v)), float(np.nanstd(v, ddof=1))
    std = frame[f"{metric}_std"].iloc[0] if f"{metric}_std" in frame else math.nan
    return float(v[0]), float(std)


def _err_note(frame: pd.DataFrame, group: Sequence[str]) -> str:
    if frame.empty:
        return ""
    counts = frame.groupby(list(group)).size()
    return "error bars: std over seeds" if counts.min() >= 2 else "error bars: std over test points (one seed)"


@_paper_style
def plot_flip_rates(malleability: pd.DataFrame, *, epsilon: float = 0.3, colors: dict[str, str] | None = None
                    ) -> Figure:
    """Flip-rate bars per attack (groups) and model (bars), one panel per dataset, at the ε closest to ``epsilon``.

    Standard training and the "adversarial" intervention (every training point
    perturbed) when present; base models only (variants have their own figure).
    """
    frame = _adversarial(malleability)
    if not frame.empty:
        frame = frame[~frame["variant"]] if frame["variant"].any() and (~frame["variant"]).any() else frame
        if "training_mode" in frame and (frame["training_mode"] == "standard").any():
            frame = frame[frame["training_mode"] == "standard"]
        eps = _closest(list(frame["epsilon"].unique()), epsilon)
        frame = frame[frame["epsilon"] == eps]
    datasets = list(dict.fromkeys(frame["dataset"])) if not frame.empty else []
    fig = _figure(*_panel_size(1, max(1, len(datasets)), 2.4))
    if frame.empty:
        return _no_data(fig)
    colors = _colors(frame, colors)
    axes = _panel_grid(fig, [0], datasets)
    for j, dataset in enumerate(datasets):
        ax = axes[0, j]
        sub = frame[frame["dataset"] == dataset]
        attacks = [a for a in ("fgsm", "pgd", "mim", "none") if a in set(sub["attack"])] + \
            sorted(set(sub["attack"]) - {"fgsm", "pgd", "mim", "none"})
        series, nulls, marks = [], {}, {}
        for model in _models(sub):
            stats = [_mean_err(sub[(sub["model"] == model) & (sub["attack"] == a)]) for a in attacks]
            series.append((model, [s[0] for s in stats], [s[1] for s in stats]))
            nulls[model] = [_null_level(malleability, dataset, model)] * len(attacks)
            marks[model] = [_flags(sub[(sub["model"] == model) & (sub["attack"] == a)]) for a in attacks]
        _bars(ax, [a.upper() for a in attacks], series, colors, ratio_of=("2L-ReLU", "MLP-Attn"), nulls=nulls,
              marks=marks)
        ax.set_ylim(0, 1.05)
        _panel_label(ax, f"{dataset}, ε = {fmt_eps(eps)}")
        if j == 0:
            ax.set_ylabel("flip rate (top-10 % by |influence|)")
        ax.set_xlabel("attack")
    axes[0, 0].legend(loc="upper left")
    fig.supxlabel(_err_note(frame, ["dataset", "attack", "model"]) + "; " + FLAG_CAPTION, fontsize=6)
    return fig


def _attacks(frame: pd.DataFrame) -> list[str]:
    """Attacks of a frame in the order FGSM, PGD, MIM, then others."""
    present = list(dict.fromkeys(frame["attack"])) if not frame.empty else []
    known = [a for a in ("fgsm", "pgd", "mim") if a in present]
    return known + [a for a in present if a not in known]


def fmt_eps(eps: float) -> str:
    return f"{eps:g}"


@_paper_style
def plot_epsilon_sweep(malleability: pd.DataFrame, *, colors: dict[str, str] | None = None) -> Figure:
    """Flip rate against the ℓ∞ radius ε per model (mean ± error), one panel per dataset × attack."""
    frame = _adversarial(malleability)
    if not frame.empty and "training_mode" in frame and (frame["training_mode"] == "standard").any():
        frame = frame[frame["training_mode"] == "standard"]
    datasets = list(dict.fromkeys(frame["dataset"])) if not frame.empty else []
    attacks = _attacks(frame)
    fig = _figure(*_panel_size(max(1, len(datasets)), max(1, len(attacks)), 2.3))
    if frame.empty:
        return _no_data(fig)
    colors = _colors(frame, colors)
    axes = _panel_grid(fig, datasets, attacks)
    for (i, dataset), (j, attack) in itertools.product(enumerate(datasets), enumerate(attacks)):
        ax = axes[i, j]
        sub = frame[(frame["dataset"] == dataset) & (frame["attack"] == attack)]
        if sub.empty:
            ax.set_axis_off()
            continue
        for model in _models(sub):
            m = sub[sub["model"] == model]
            eps = sorted(m["epsilon"].unique())
            stats = np.array([_mean_err(m[m["epsilon"] == e]) for e in eps])
            ax.errorbar(eps, stats[:, 0], yerr=stats[:, 1], color=colors[model], marker=MARKERS.get(model, "D"),
                        label=model, capsize=1.5, elinewidth=0.7)
        ax.set_xlabel("ℓ∞ radius ε")
        ax.set_ylim(0, 1.05)
        _panel_label(ax, f"{dataset}, {attack.upper()}")
        if j == 0:
            ax.set_ylabel("flip rate (top-10 %)")
    axes[0, 0].legend(loc="upper left")
    fig.supxlabel(_err_note(frame, ["dataset", "attack", "epsilon", "model"]), fontsize=6)
    return fig


@_paper_style
def plot_adversarial_training(malleability: pd.DataFrame, *, colors: dict[str, str] | None = None) -> Figure:
    """Flip-rate bars: standard vs PGD adversarial training (groups) per model (bars), per dataset × attack."""
    frame = _adversarial(malleability)
    datasets = list(dict.fromkeys(frame["dataset"])) if not frame.empty else []
    settings = [(a, e) for a in _attacks(frame) for e in sorted(frame[frame["attack"] == a]["epsilon"].unique())] \
        if not frame.empty else []
    fig = _figure(*_panel_size(max(1, len(datasets)), max(1, len(settings)), 2.3))
    if frame.empty:
        return _no_data(fig)
    colors = _colors(frame, colors)
    axes = _panel_grid(fig, datasets, settings)
    names = {"standard": "standard", "pgd-at": "PGD-AT"}
    for (i, dataset), (j, (attack, eps)) in itertools.product(enumerate(datasets), enumerate(settings)):
        ax = axes[i, j]
        sub = frame[(frame["dataset"] == dataset) & (frame["attack"] == attack) & (frame["epsilon"] == eps)]
        if sub.empty:
            ax.set_axis_off()
            continue
        modes = [m for m in ("standard", "pgd-at") if m in set(sub["training_mode"])]
        series = []
        for model in _models(sub):
            stats = [_mean_err(sub[(sub["model"] == model) & (sub["training_mode"] == mode)]) for mode in modes]
            series.append((model, [s[0] for s in stats], [s[1] for s in stats]))
        _bars(ax, [names.get(m, m) for m in modes], series, colors, ratio_of=("2L-ReLU", "MLP-Attn"))
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("training")
        _panel_label(ax, f"{dataset}, {attack.upper()} ε = {fmt_eps(eps)}")
        if j == 0:
            ax.set_ylabel("flip rate (top-10 %)")
    axes[0, 0].legend(loc="upper left")
    fig.supxlabel(_err_note(frame, ["dataset", "attack", "epsilon", "training_mode", "model"]), fontsize=6)
    return fig


# =========================================================================== remedies and κ sweep


def _variant_order(frame: pd.DataFrame) -> list[str]:
    """Models ordered: 2L-ReLU, MLP-Attn, then rank variants by r, then depth variants by k."""
    info = frame.drop_duplicates("model").set_index("model")

    def key(label: str) -> tuple:
        r = info.loc[label]
        base = 0 if label == "2L-ReLU" else 1 if label == "MLP-Attn" else 2
        rank = r.get("rank", math.nan)
        return (base, 0 if isinstance(rank, float) and not math.isnan(rank) else 1,
                rank if isinstance(rank, float) and not math.isnan(rank) else 0, r.get("depth", 1), label)

    return sorted(info.index, key=key)


@_paper_style
def plot_remedies(kernel: pd.DataFrame | None = None, malleability: pd.DataFrame | None = None, *,
                  colors: dict[str, str] | None = None) -> Figure:
    """The paper's remedies (rank-r truncated attention, attention depth k) against the base models.

    One row per dataset; panels, as the data allow: cert at the largest width
    (mean, min–max over seeds; log) and κ_d of the head's input (the attention
    output, or the inputs for 2L-ReLU; log), from kernel sweeps; the flip rate
    (PGD or the first attack, ε closest to 0.3, standard training, adversarial
    intervention; mean ± error), from malleability runs.
    """
    kernel = kernel if kernel is not None else pd.DataFrame()
    malleability = malleability if malleability is not None else pd.DataFrame()
    panels = (["cert", "kappa"] if not kernel.empty else []) + (["flip"] if not malleability.empty else [])
    flip = pd.DataFrame()
    if not malleability.empty:
        flip = _adversarial(malleability)
        if (flip["training_mode"] == "standard").any():
            flip = flip[flip["training_mode"] == "standard"]
        attack = "pgd" if (flip["attack"] == "pgd").any() else flip["attack"].iloc[0]
        flip = flip[flip["attack"] == attack]
        eps = _closest(list(flip["epsilon"].unique()), 0.3)
        flip = flip[flip["epsilon"] == eps]
    datasets = list(dict.fromkeys(list(kernel["dataset"]) if not kernel.empty else [])
                    | dict.fromkeys(list(flip["dataset"]) if not flip.empty else []))
    fig = _figure(SINGLE if len(panels) <= 1 else min(DOUBLE, 2.3 * len(panels) + 0.3),
                  2.6 * max(1, len(datasets)))
    if not panels:
        return _no_data(fig)
    everything = pd.concat([f[["model"]] for f in (kernel, flip) if not f.empty])
    colors = _colors(everything, colors)
    axes = _grid(fig, len(datasets), len(panels))
    for (i, dataset), (j, panel) in itertools.product(enumerate(datasets), enumerate(panels)):
        ax = axes[i, j]
        source = kernel if panel in ("cert", "kappa") else flip
        sub = source[source["dataset"] == dataset] if not source.empty else source
        if sub.empty:
            ax.set_axis_off()
            continue
        order = _variant_order(sub)
        x = np.arange(len(order))
        if panel == "cert":
            m_max = sub["width"].max()
            at = sub[sub["width"] == m_max]
            stats = [(at[at["model"] == m]["cert"].mean(), at[at["model"] == m]["cert"].min(),
                      at[at["model"] == m]["cert"].max()) for m in order]
            heights = np.array([t[0] for t in stats])
            err = np.array([[max(t[0] - t[1], 0) for t in stats], [max(t[2] - t[0], 0) for t in stats]])
            ax.bar(x, heights, color=[colors[m] for m in order], yerr=err, error_kw={"linewidth": 0.7, "capsize": 1.5})
            ax.axhline(1.0, color="black", linestyle=":", linewidth=0.6)
            ax.set_ylabel(f"cert at m = {int(m_max)}")
            _panel_label(ax, dataset if j == 0 else "")
            _log_axis(ax, "y")
        elif panel == "kappa":
            values = [sub[sub["model"] == m]["kappa_d_G" if m == "2L-ReLU" else "kappa_d_features"].iloc[0]
                      for m in order]
            ax.bar(x, values, color=[colors[m] for m in order])
            ax.set_ylabel(r"$\kappa_d$ of the head's input")
            _panel_label(ax, dataset if j == 0 else "")
            _log_axis(ax, "y")
        else:
            stats = [_mean_err(sub[sub["model"] == m]) for m in order]
            ax.bar(x, [t[0] for t in stats], yerr=[t[1] for t in stats], color=[colors[m] for m in order],
                   error_kw={"linewidth": 0.7, "capsize": 1.5})
            ax.set_ylim(0, 1.05)
            ax.set_ylabel(f"flip rate ({sub['attack'].iloc[0].upper()} ε = {fmt_eps(sub['epsilon'].iloc[0])})")
            _panel_label(ax, dataset if j == 0 else "")
        ax.set_xticks(x, order, rotation=35, ha="right")
    return fig


def _kappa_x(frame: pd.DataFrame) -> pd.Series:
    """κ(G) of each row: the prescribed κ of synthetic data, else the stored κ_d(G)."""
    if "kappa_data" in frame and frame["kappa_data"].notna().all():
        return frame["kappa_data"]
    return frame["kappa_d_G"] if "kappa_d_G" in frame else frame["kappa_data"]


@_paper_style
def plot_kappa_sweep(kernel: pd.DataFrame | None = None, malleability: pd.DataFrame | None = None, *,
                     colors: dict[str, str] | None = None) -> Figure:
    """The gap between MLP-Attn and 2L-ReLU against κ(G) on synthetic data with a prescribed spectrum.

    From kernel sweeps: cert at the largest width per model, and the ratio
    cert(MLP-Attn)/cert(2L-ReLU); from malleability runs: the flip rate per
    model (PGD or the first attack, standard training) and its ratio. Log κ axis.
    """
    kernel = kernel if kernel is not None else pd.DataFrame()
    malleability = malleability if malleability is not None else pd.DataFrame()
    sources = []
    if not kernel.empty:
        m_max = kernel["width"].max()
        at = kernel[kernel["width"] == m_max].copy()
        at["x"] = _kappa_x(at)
        sources.append(("cert", at, f"cert at m = {int(m_max)}", True))
    if not malleability.empty:
        frame = _adversarial(malleability)
        if (frame["training_mode"] == "standard").any():
            frame = frame[frame["training_mode"] == "standard"]
        attack = "pgd" if (frame["attack"] == "pgd").any() else frame["attack"].iloc[0]
        frame = frame[frame["attack"] == attack].copy()
        eps = _closest(list(frame["epsilon"].unique()), 0.3)
        frame = frame[frame["epsilon"] == eps]
        frame["x"] = _kappa_x(frame)
        sources.append(("flip_rate", frame, f"flip rate ({attack.upper()} ε = {fmt_eps(eps)})", False))
    fig = _figure(DOUBLE if len(sources) > 1 else 0.75 * DOUBLE, 2.5)
    if not sources:
        return _no_data(fig)
    everything = pd.concat([s[1][["model"]] for s in sources])
    colors = _colors(everything, colors)
    axes = _grid(fig, 1, 2 * len(sources))
    letters = "abcd"
    for k, (metric, frame, ylabel, logy) in enumerate(sources):
        ax, ax_ratio = axes[0, 2 * k], axes[0, 2 * k + 1]
        means = {}
        for model in _models(frame):
            m = frame[frame["model"] == model]
            g = m.groupby("x")[metric]
            stats = pd.DataFrame({"mean": g.mean(), "min": g.min(), "max": g.max()}).sort_index()
            means[model] = stats["mean"]
            x = stats.index.to_numpy(float)
            ax.plot(x, stats["mean"], color=colors[model], marker=MARKERS.get(model, "D"), label=model)
            if m.groupby("x").size().max() > 1:
                ax.fill_between(x, stats["min"], stats["max"], color=colors[model], alpha=0.18, linewidth=0)
        _log_axis(ax, "x")
        if logy:
            _log_axis(ax, "y")
        else:
            ax.set_ylim(0, 1.05)
        ax.set_xlabel(r"$\kappa(G)$")
        ax.set_ylabel(ylabel)
        _panel_label(ax, f"({letters[2 * k]}) {'certificate' if metric == 'cert' else 'malleability'}")
        ax.legend(loc="best")
        if "2L-ReLU" in means:
            for model, series in means.items():
                if model == "2L-ReLU":
                    continue
                ratio = (series / means["2L-ReLU"]).dropna()
                ax_ratio.plot(ratio.index.to_numpy(float), ratio.to_numpy(float), color=colors[model],
                              marker=MARKERS.get(model, "D"), label=f"{model} / 2L-ReLU")
            ax_ratio.axhline(1.0, color=REFERENCE, linestyle="--", linewidth=0.7)
            _log_axis(ax_ratio, "x")
            if logy:
                _log_axis(ax_ratio, "y")
            ax_ratio.set_xlabel(r"$\kappa(G)$")
            ax_ratio.set_ylabel("ratio to 2L-ReLU")
            _panel_label(ax_ratio, f"({letters[2 * k + 1]}) gap")
        else:
            ax_ratio.set_axis_off()
    return fig


@_paper_style
def plot_ntk_distance(training: pd.DataFrame, *, colors: dict[str, str] | None = None) -> Figure:
    """‖f_m − f_NTK‖/‖f_NTK‖ (solid) and ‖f_m − f_lin‖/‖f_lin‖ (dashed) on test points against width, per dataset."""
    datasets = list(dict.fromkeys(training["dataset"])) if not training.empty else []
    ncols = max(1, len(datasets))
    fig = _figure(SINGLE if ncols == 1 else min(DOUBLE, 2.3 * ncols + 0.3), 2.5)
    if training.empty:
        return _no_data(fig)
    colors = _colors(training, colors)
    axes = _grid(fig, 1, ncols, sharey=True)
    for j, dataset in enumerate(datasets):
        ax = axes[0, j]
        sub = training[training["dataset"] == dataset]
        for model in _models(sub):
            m = sub[sub["model"] == model]
            for metric, style in (("ntk_distance", "-"), ("lin_distance", "--")):
                if metric not in m or m[metric].isna().all():
                    continue
                stats = _seed_stats(m, metric)
                x = stats.index.to_numpy(float)
                ax.plot(x, stats["mean"], color=colors[model], linestyle=style, marker=MARKERS.get(model, "D"),
                        label=f"{model}, {'vs NTK' if metric == 'ntk_distance' else 'vs linearized'}")
                if stats["n"].max() > 1:
                    ax.fill_between(x, stats["min"], stats["max"], color=colors[model], alpha=0.15, linewidth=0)
        widths = sub["width"].to_numpy(float)
        ax.set_xlim(widths.min() / 1.6, widths.max() * 1.6)
        _log_axis(ax, "x", 2)
        _log_axis(ax, "y")
        ax.set_xlabel("width m (hidden units)")
        _panel_label(ax, dataset)
        if j == 0:
            ax.set_ylabel("relative distance of test outputs")
    axes[0, 0].legend(loc="best", fontsize=6)
    return fig


# =========================================================================== which figures


def _is_kappa_sweep(frame: pd.DataFrame) -> bool:
    return (not frame.empty and (frame["dataset_name"] == "synthetic").all()
            and frame["kappa_data"].nunique(dropna=True) >= 2)


def figures_for(frames) -> Iterator[tuple[str, str, Figure]]:
    """The figures the stores in ``frames`` (``report.Frames``) support: (file stem, caption, Figure).

    Per store: conditions → spectra and κ^{2k+1}; kernel sweep → convergence
    (+ remedies when it holds attention variants, + κ sweep when it spans
    synthetic κ); training sweep → NTK distance; malleability → flip-rate
    bars (several attacks, or nothing more specific), ε sweep (several ε),
    adversarial training (several training modes), remedies (variants),
    κ sweep (synthetic κ).
    """

    labels = []
    for frame in (frames.kernel, frames.training, frames.malleability):
        if not frame.empty:
            labels += list(frame["model"].unique())
    colors = model_colors(list(dict.fromkeys(labels)))
    groups: list[str] = []
    for frame in (frames.conditions, frames.kernel, frames.training, frames.malleability):
        if not frame.empty:
            groups += [g for g in dict.fromkeys(frame["store"]) if g not in groups]
    for group in sorted(groups):
        store = group  # a store name, or "<store>~<setting>" when a store holds several settings
        c = frames.conditions[frames.conditions["store"] == store] if not frames.conditions.empty else None
        if c is not None and not c.empty:
            yield (f"{store}_spectra", f"Normalized spectra of G and of the attention Gram G^{int(c['power'].iloc[0])}"
                   f" ({store}).", plot_spectra(c))
            yield (f"{store}_kappa_power", f"κ_d(G)^{int(c['power'].iloc[0])} against the measured "
                   f"κ_d(G^{int(c['power'].iloc[0])}), with the identity ({store}).", plot_condition_power(c))
        k = frames.kernel[frames.kernel["store"] == store] if not frames.kernel.empty else None
        if k is not None and not k.empty:
            yield (f"{store}_convergence", f"Distance of the empirical NTK to its limit against width ({store}): "
                   "mean over seeds, min–max band, m^{-1/2} reference; cert = 1/2 extrapolated and m_theory marked.",
                   plot_convergence(k, convergence_fits(k), colors=colors))
            if k["variant"].any():
                yield (f"{store}_remedies", f"Remedies: rank-r truncated and depth-k attention ({store}).",
                       plot_remedies(kernel=k, colors=colors))
            if _is_kappa_sweep(k):
                yield (f"{store}_kappa", f"Certificate gap against κ(G), synthetic data ({store}).",
                       plot_kappa_sweep(kernel=k, colors=colors))
        t = frames.training[frames.training["store"] == store] if not frames.training.empty else None
        if t is not None and not t.empty:
            yield (f"{store}_ntk_distance", f"Function-space distance to the NTK predictor after training ({store}).",
                   plot_ntk_distance(t, colors=colors))
        m = frames.malleability[frames.malleability["store"] == store] if not frames.malleability.empty else None
        measured = _adversarial(m) if m is not None else None
        if m is not None and not measured.empty:
            made = False
            if measured["epsilon"].nunique() >= 2:
                made = True
                yield (f"{store}_epsilon", f"Flip rate against the attack radius ε ({store}).",
                       plot_epsilon_sweep(m, colors=colors))
            if measured["training_mode"].nunique() >= 2:
                made = True
                yield (f"{store}_adversarial_training", f"Standard vs PGD adversarial training ({store}).",
                       plot_adversarial_training(m, colors=colors))
            if m["variant"].any():
                made = True
                yield (f"{store}_remedies", f"Remedies: flip rate of rank-r / depth-k attention ({store}).",
                       plot_remedies(malleability=m, colors=colors))
            if _is_kappa_sweep(m):
                made = True
                yield (f"{store}_kappa", f"Malleability gap against κ(G), synthetic data ({store}).",
                       plot_kappa_sweep(malleability=m, colors=colors))
            if measured["attack"].nunique() >= 2 or not made:
                yield (f"{store}_flip_rates", f"Influence flip rates per attack and model ({store}).",
                       plot_flip_rates(m, colors=colors))
