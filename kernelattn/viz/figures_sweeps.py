"""Figures of the kernel sweeps: convergence to the kernel regime, spectra and κ of the Gram, NTK distance.

Each function takes frames of stored records (``kernelattn.viz.frames.load_frames``) and returns a
``matplotlib.figure.Figure`` in the paper style (``kernelattn.viz.style``); statistics over seeds come
from ``kernelattn.analysis``.

- :func:`plot_convergence` — rel_fro and cert against width (log-log), mean
  over seeds with a min–max band, the m^{-1/2} reference, cert = 1, the
  extrapolated width where cert = 1/2 and m_theory (arrows at the right edge
  when off the axis: m_theory is often 1e40 and more);
- :func:`plot_spectra` — normalized eigenvalues of G and G^{2k+1} (log);
- :func:`plot_condition_power` — κ_d(G)^{2k+1} (algebra) against the measured
  κ_d(G^{2k+1}), log-log with the identity line;
- :func:`plot_ntk_distance` — ‖f_m − f_NTK‖/‖f_NTK‖ after training against width.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from kernelattn.analysis.fits import convergence_fits
from kernelattn.analysis.formatting import fmt_int, fmt_power, superscript
from kernelattn.analysis.statistics import seed_stats_by
from kernelattn.viz.style import (
    DATASET_PALETTE,
    DOUBLE,
    MARKERS,
    MAX_COLS,
    REFERENCE,
    SINGLE,
    colors_for,
    grid,
    log_axis,
    new_figure,
    no_data,
    ordered_models,
    panel_label,
    paper_style,
)

__all__ = ["plot_condition_power", "plot_convergence", "plot_ntk_distance", "plot_spectra"]


# =========================================================================== convergence


@paper_style
def plot_convergence(
    kernel: pd.DataFrame,
    fits: pd.DataFrame | None = None,
    *,
    colors: dict[str, str] | None = None,
    band: str = "minmax",
) -> Figure:
    """Width against rel_fro (top row) and cert (bottom row), one column per dataset; log-log.

    Args:
      kernel: kernel-sweep rows (``frames.load_frames(out).kernel``), one store.
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
    fig = new_figure(SINGLE if ncols == 1 else min(DOUBLE, 1.9 * ncols + 0.4), 4.0 * blocks)
    if kernel.empty:
        return no_data(fig)
    fits = convergence_fits(kernel) if fits is None else fits
    colors = colors_for(kernel, colors)
    axes = grid(fig, 2 * blocks, ncols)
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
            for model in ordered_models(sub):
                stats = seed_stats_by(sub[sub["model"] == model], "width", metric)
                stats = stats[np.isfinite(stats["mean"]) & (stats["mean"] > 0)]
                if stats.empty:
                    continue
                x = stats.index.to_numpy(float)
                c = colors[model]
                ax.plot(x, stats["mean"], color=c, marker=MARKERS.get(model, "D"), label=model)
                if band == "std":
                    lo, hi = stats["mean"] - stats["std"], stats["mean"] + stats["std"]
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
            log_axis(ax, "x", 2)
            log_axis(ax, "y")
            if metric == "cert":
                ax.axhline(1.0, color="black", linewidth=0.6, linestyle=":")
                ax.text(xlim[0] * 1.1, 1.0, "cert = 1", va="bottom", ha="left", fontsize=6.5)
                _mark_widths(ax, fits[fits["dataset"] == dataset] if not fits.empty else fits, colors, xlim)
                ax.set_xlabel("width m (hidden units)")
            else:
                ax.tick_params(labelbottom=False)
            if j == 0:
                ax.set_ylabel(
                    r"rel_fro = $\|\Theta_m-\Theta_\infty\|_F/\|\Theta_\infty\|_F$"
                    if metric == "rel_fro"
                    else r"cert = $\|\Theta_m-\Theta_\infty\|_2/\lambda_{min}(\Theta_\infty)$"
                )
            if i == 0:
                panel_label(ax, dataset)
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
            where = fmt_power(10, round(math.log10(m_half), 1)) if 0 < m_half < math.inf else "∞"
            notes.append((f"cert=½ at m≈{where}", color))
    theory = fits["log10_m_theory"].dropna() if "log10_m_theory" in fits else pd.Series(dtype=float)
    if len(theory):
        value = float(theory.iloc[0])
        if math.isfinite(value) and xlim[0] <= 10**value <= xlim[1]:
            ax.axvline(10**value, color="black", linestyle="-.", linewidth=0.8)
        else:
            notes.append((f"m_theory≈{fmt_power(10, round(value, 1)) if math.isfinite(value) else '∞'}", "black"))
    if not notes:
        return
    lo, hi = ax.get_ylim()
    if lo > 0 and hi > lo:
        decades = math.log10(hi / lo)
        ax.set_ylim(lo, hi * 10 ** (decades * 0.16 * len(notes) / (1 - 0.16 * len(notes))))
    for k, (text, color) in enumerate(notes):
        ax.annotate(
            text,
            xy=(1.0, 0.955 - 0.11 * k),
            xycoords="axes fraction",
            xytext=(-10, 0),
            textcoords="offset points",
            ha="right",
            va="center",
            fontsize=6,
            color=color,
            arrowprops={"arrowstyle": "->", "color": color, "linewidth": 0.7},
        )


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


@paper_style
def plot_spectra(conditions: pd.DataFrame) -> Figure:
    """Normalized eigenvalues λ_i/λ_1 of G (left) and G^{2k+1} (right) per dataset, up to the numerical rank."""
    fig = new_figure(DOUBLE, 2.5)
    rows = conditions[conditions["eigenvalues_G"].notna()] if "eigenvalues_G" in conditions else conditions.iloc[:0]
    if rows.empty:
        return no_data(fig, 'no stored spectra (conditions spec with "spectra": true)')
    power = int(rows["power"].iloc[0]) if "power" in rows else 3
    axes = grid(fig, 1, 2, sharey=True)
    for k, (_, r) in enumerate(rows.iterrows()):
        color = DATASET_PALETTE[k % len(DATASET_PALETTE)]
        for ax, column, rank in (
            (axes[0, 0], "eigenvalues_G", r.get("rank_G")),
            (axes[0, 1], "eigenvalues_attention", r.get("rank_attention")),
        ):
            v = _spectrum(r.get(column), rank)
            if v is not None:
                n = f"n={fmt_int(r['n'])}"
                label = r["dataset"] if n in r["dataset"] else f"{r['dataset']} ({n})"
                ax.plot(np.arange(1, v.size + 1), v, color=color, label=label, linewidth=1.0)
    for ax, title in (
        (axes[0, 0], "G = X Xᵀ"),
        (
            axes[0, 1],
            f"G{superscript(str(power))} = Z Zᵀ, Z = "
            f"G{'' if power == 3 else superscript(str((power - 1) // 2))} X (attention)",
        ),
    ):
        log_axis(ax, "y")
        log_axis(ax, "x")
        ax.set_xlabel("eigenvalue index i")
        panel_label(ax, title)
    axes[0, 0].set_ylabel(r"$\lambda_i/\lambda_1$")
    axes[0, 0].legend(loc="lower left", fontsize=6)
    return fig


@paper_style
def plot_condition_power(conditions: pd.DataFrame) -> Figure:
    """κ_d(G)^{2k+1} from the algebra (x) against κ_d(G^{2k+1}) measured in float64 (y), with y = x."""
    fig = new_figure(SINGLE, 3.0)
    if conditions.empty:
        return no_data(fig)
    power = int(conditions["power"].iloc[0]) if "power" in conditions else 3
    ax = fig.add_subplot()
    x = conditions["kappa_d_G_power"].to_numpy(np.float64)
    y = conditions["kappa_d_attention"].to_numpy(np.float64)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if not ok.any():
        return no_data(fig, "no finite condition numbers stored")
    lo, hi = min(x[ok].min(), y[ok].min()) / 3, max(x[ok].max(), y[ok].max()) * 3
    ax.plot([lo, hi], [lo, hi], color=REFERENCE, linestyle="--", linewidth=0.8, label="identity")
    for k, (_, r) in enumerate(conditions.iterrows()):
        if not ok[k]:
            continue
        ax.plot(
            r["kappa_d_G_power"],
            r["kappa_d_attention"],
            marker="o",
            linestyle="none",
            color=DATASET_PALETTE[k % len(DATASET_PALETTE)],
            label=r["dataset"],
        )
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    log_axis(ax, "x")
    log_axis(ax, "y")
    ax.set_xlabel(rf"$\kappa_d(G)^{power}$ (algebra)")
    ax.set_ylabel(rf"$\kappa_d(G^{power})$ measured (float64)")
    ax.legend(loc="upper left", fontsize=6)
    return fig


# =========================================================================== training


@paper_style
def plot_ntk_distance(training: pd.DataFrame, *, colors: dict[str, str] | None = None) -> Figure:
    """‖f_m − f_NTK‖/‖f_NTK‖ (solid) and ‖f_m − f_lin‖/‖f_lin‖ (dashed) on test points against width, per dataset."""
    datasets = list(dict.fromkeys(training["dataset"])) if not training.empty else []
    ncols = max(1, len(datasets))
    fig = new_figure(SINGLE if ncols == 1 else min(DOUBLE, 2.3 * ncols + 0.3), 2.5)
    if training.empty:
        return no_data(fig)
    colors = colors_for(training, colors)
    axes = grid(fig, 1, ncols, sharey=True)
    for j, dataset in enumerate(datasets):
        ax = axes[0, j]
        sub = training[training["dataset"] == dataset]
        for model in ordered_models(sub):
            m = sub[sub["model"] == model]
            for metric, style in (("ntk_distance", "-"), ("lin_distance", "--")):
                if metric not in m or m[metric].isna().all():
                    continue
                stats = seed_stats_by(m, "width", metric)
                x = stats.index.to_numpy(float)
                ax.plot(
                    x,
                    stats["mean"],
                    color=colors[model],
                    linestyle=style,
                    marker=MARKERS.get(model, "D"),
                    label=f"{model}, {'vs NTK' if metric == 'ntk_distance' else 'vs linearized'}",
                )
                if stats["n"].max() > 1:
                    ax.fill_between(x, stats["min"], stats["max"], color=colors[model], alpha=0.15, linewidth=0)
        widths = sub["width"].to_numpy(float)
        ax.set_xlim(widths.min() / 1.6, widths.max() * 1.6)
        log_axis(ax, "x", 2)
        log_axis(ax, "y")
        ax.set_xlabel("width m (hidden units)")
        panel_label(ax, dataset)
        if j == 0:
            ax.set_ylabel("relative distance of test outputs")
    axes[0, 0].legend(loc="best", fontsize=6)
    return fig
