"""Figures of the malleability runs: flip rates per attack, against ε, under adversarial training;
the remedies and the κ sweep (from kernel sweeps, malleability runs, or both).

Each function takes frames of stored records (``kernelattn.viz.frames.load_frames``) and returns a
``matplotlib.figure.Figure`` in the paper style (``kernelattn.viz.style``); statistics over seeds come
from ``kernelattn.analysis``. Flip rates are drawn for the default protocol (:func:`default_protocol`:
every training point attacked on the network's loss, influence from Θ_m at θ_T) when it was run.

- :func:`plot_flip_rates` — flip-rate bars per attack and model with error bars;
- :func:`plot_epsilon_sweep` — flip rate against ε;
- :func:`plot_adversarial_training` — standard vs PGD adversarial training bars;
- :func:`plot_remedies` — rank-r truncated / depth-k attention: cert and κ_d of
  the head's input, and/or the flip rate, per variant;
- :func:`plot_kappa_sweep` — cert and/or flip rate, and their ratio to
  2L-ReLU, against κ(G) on synthetic data.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from kernelattn.analysis.flip_summary import fit_health, flag_marks, is_null_baseline
from kernelattn.analysis.formatting import fmt, fmt_fixed
from kernelattn.analysis.statistics import seed_stats, seed_stats_by
from kernelattn.viz.style import (
    DOUBLE,
    MARKERS,
    REFERENCE,
    SINGLE,
    colors_for,
    grid,
    log_axis,
    new_figure,
    no_data,
    ordered_models,
    panel_grid,
    panel_label,
    panel_size,
    paper_style,
)

__all__ = [
    "FLAG_CAPTION",
    "default_protocol",
    "plot_adversarial_training",
    "plot_epsilon_sweep",
    "plot_flip_rates",
    "plot_kappa_sweep",
    "plot_remedies",
]


def _measured(frame: pd.DataFrame) -> pd.DataFrame:
    """The malleability records that are not null baselines."""
    if frame.empty or "intervention" not in frame:
        return frame
    return frame[~is_null_baseline(frame)]


def default_protocol(frame: pd.DataFrame) -> pd.DataFrame:
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
    sub = malleability[
        (malleability["intervention"] == "null-seed")
        & (malleability["dataset"] == dataset)
        & (malleability["model"] == model)
    ]
    if "influence_kernel" in sub and (sub["influence_kernel"] == "empirical").any():
        sub = sub[sub["influence_kernel"] == "empirical"]
    return seed_stats(sub["flip_rate"]).mean


FLAG_CAPTION = "black tick: null baseline (seed); † fit did not train; ‡ attack no-op"


def _closest(values: Sequence[float], target: float) -> float:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return min(values, key=lambda v: abs(v - target)) if values else math.nan


def _bars(
    ax,
    groups: list[str],
    series: list[tuple[str, list[float], list[float]]],
    colors: dict[str, str],
    ratio_of: tuple[str, str] | None = None,
    nulls: Mapping[str, list[float]] | None = None,
    marks: Mapping[str, list[str]] | None = None,
) -> None:
    """Grouped bars: ``series`` = (label, heights per group, errors per group); optional per-label null
    levels (a black tick across the bar) and flag marks (text above it)."""
    n = max(1, len(series))
    width = 0.8 / n
    x = np.arange(len(groups))
    for k, (label, heights, errors) in enumerate(series):
        xs = x + (k - (n - 1) / 2) * width
        ax.bar(
            xs,
            heights,
            width * 0.92,
            yerr=errors,
            color=colors.get(label, "grey"),
            label=label,
            error_kw={"linewidth": 0.7, "capsize": 1.5},
        )
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
                    top = max(
                        h[1][g] + (h[2][g] if math.isfinite(h[2][g]) else 0) for h in series if math.isfinite(h[1][g])
                    )
                    ax.text(x[g], top + 0.02, f"×{fmt_fixed(o / b, 1)}", ha="center", va="bottom", fontsize=6)
    ax.set_xticks(x, groups)


def _mean_err(frame: pd.DataFrame, metric: str = "flip_rate") -> tuple[float, float]:
    """Mean over seeds; error = std over seeds (≥ 2 seeds) or the stored std over test points (1 seed)."""
    if frame.empty:
        return math.nan, math.nan
    stats = seed_stats(frame[metric])
    if len(frame) >= 2:
        return stats.mean, stats.std
    std = frame[f"{metric}_std"].iloc[0] if f"{metric}_std" in frame else math.nan
    return float(frame[metric].iloc[0]), float(std)


def _err_note(frame: pd.DataFrame, group: Sequence[str]) -> str:
    if frame.empty:
        return ""
    counts = frame.groupby(list(group)).size()
    return "error bars: std over seeds" if counts.min() >= 2 else "error bars: std over test points (one seed)"


@paper_style
def plot_flip_rates(
    malleability: pd.DataFrame, *, epsilon: float = 0.3, colors: dict[str, str] | None = None
) -> Figure:
    """Flip-rate bars per attack (groups) and model (bars), one panel per dataset, at the ε closest to ``epsilon``.

    Standard training and the "adversarial" intervention (every training point
    perturbed) when present; base models only (variants have their own figure).
    """
    frame = default_protocol(malleability)
    if not frame.empty:
        frame = frame[~frame["variant"]] if frame["variant"].any() and (~frame["variant"]).any() else frame
        if "training_mode" in frame and (frame["training_mode"] == "standard").any():
            frame = frame[frame["training_mode"] == "standard"]
        eps = _closest(list(frame["epsilon"].unique()), epsilon)
        frame = frame[frame["epsilon"] == eps]
    datasets = list(dict.fromkeys(frame["dataset"])) if not frame.empty else []
    fig = new_figure(*panel_size(1, max(1, len(datasets)), 2.4))
    if frame.empty:
        return no_data(fig)
    colors = colors_for(frame, colors)
    axes = panel_grid(fig, [0], datasets)
    for j, dataset in enumerate(datasets):
        ax = axes[0, j]
        sub = frame[frame["dataset"] == dataset]
        attacks = [a for a in ("fgsm", "pgd", "mim", "none") if a in set(sub["attack"])] + sorted(
            set(sub["attack"]) - {"fgsm", "pgd", "mim", "none"}
        )
        series, nulls, marks = [], {}, {}
        for model in ordered_models(sub):
            stats = [_mean_err(sub[(sub["model"] == model) & (sub["attack"] == a)]) for a in attacks]
            series.append((model, [s[0] for s in stats], [s[1] for s in stats]))
            nulls[model] = [_null_level(malleability, dataset, model)] * len(attacks)
            marks[model] = [
                flag_marks(*fit_health(sub[(sub["model"] == model) & (sub["attack"] == a)])) for a in attacks
            ]
        _bars(
            ax, [a.upper() for a in attacks], series, colors, ratio_of=("2L-ReLU", "MLP-Attn"), nulls=nulls, marks=marks
        )
        ax.set_ylim(0, 1.05)
        panel_label(ax, f"{dataset}, ε = {fmt(eps, 6)}")
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


@paper_style
def plot_epsilon_sweep(malleability: pd.DataFrame, *, colors: dict[str, str] | None = None) -> Figure:
    """Flip rate against the ℓ∞ radius ε per model (mean ± error), one panel per dataset × attack."""
    frame = default_protocol(malleability)
    if not frame.empty and "training_mode" in frame and (frame["training_mode"] == "standard").any():
        frame = frame[frame["training_mode"] == "standard"]
    datasets = list(dict.fromkeys(frame["dataset"])) if not frame.empty else []
    attacks = _attacks(frame)
    fig = new_figure(*panel_size(max(1, len(datasets)), max(1, len(attacks)), 2.3))
    if frame.empty:
        return no_data(fig)
    colors = colors_for(frame, colors)
    axes = panel_grid(fig, datasets, attacks)
    for (i, dataset), (j, attack) in itertools.product(enumerate(datasets), enumerate(attacks)):
        ax = axes[i, j]
        sub = frame[(frame["dataset"] == dataset) & (frame["attack"] == attack)]
        if sub.empty:
            ax.set_axis_off()
            continue
        for model in ordered_models(sub):
            m = sub[sub["model"] == model]
            eps = sorted(m["epsilon"].unique())
            stats = np.array([_mean_err(m[m["epsilon"] == e]) for e in eps])
            ax.errorbar(
                eps,
                stats[:, 0],
                yerr=stats[:, 1],
                color=colors[model],
                marker=MARKERS.get(model, "D"),
                label=model,
                capsize=1.5,
                elinewidth=0.7,
            )
        ax.set_xlabel("ℓ∞ radius ε")
        ax.set_ylim(0, 1.05)
        panel_label(ax, f"{dataset}, {attack.upper()}")
        if j == 0:
            ax.set_ylabel("flip rate (top-10 %)")
    axes[0, 0].legend(loc="upper left")
    fig.supxlabel(_err_note(frame, ["dataset", "attack", "epsilon", "model"]), fontsize=6)
    return fig


@paper_style
def plot_adversarial_training(malleability: pd.DataFrame, *, colors: dict[str, str] | None = None) -> Figure:
    """Flip-rate bars: standard vs PGD adversarial training (groups) per model (bars), per dataset × attack."""
    frame = default_protocol(malleability)
    datasets = list(dict.fromkeys(frame["dataset"])) if not frame.empty else []
    settings = (
        [(a, e) for a in _attacks(frame) for e in sorted(frame[frame["attack"] == a]["epsilon"].unique())]
        if not frame.empty
        else []
    )
    fig = new_figure(*panel_size(max(1, len(datasets)), max(1, len(settings)), 2.3))
    if frame.empty:
        return no_data(fig)
    colors = colors_for(frame, colors)
    axes = panel_grid(fig, datasets, settings)
    names = {"standard": "standard", "pgd-at": "PGD-AT"}
    for (i, dataset), (j, (attack, eps)) in itertools.product(enumerate(datasets), enumerate(settings)):
        ax = axes[i, j]
        sub = frame[(frame["dataset"] == dataset) & (frame["attack"] == attack) & (frame["epsilon"] == eps)]
        if sub.empty:
            ax.set_axis_off()
            continue
        modes = [m for m in ("standard", "pgd-at") if m in set(sub["training_mode"])]
        series = []
        for model in ordered_models(sub):
            stats = [_mean_err(sub[(sub["model"] == model) & (sub["training_mode"] == mode)]) for mode in modes]
            series.append((model, [s[0] for s in stats], [s[1] for s in stats]))
        _bars(ax, [names.get(m, m) for m in modes], series, colors, ratio_of=("2L-ReLU", "MLP-Attn"))
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("training")
        panel_label(ax, f"{dataset}, {attack.upper()} ε = {fmt(eps, 6)}")
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
        return (
            base,
            0 if isinstance(rank, float) and not math.isnan(rank) else 1,
            rank if isinstance(rank, float) and not math.isnan(rank) else 0,
            r.get("depth", 1),
            label,
        )

    return sorted(info.index, key=key)


@paper_style
def plot_remedies(
    kernel: pd.DataFrame | None = None,
    malleability: pd.DataFrame | None = None,
    *,
    colors: dict[str, str] | None = None,
) -> Figure:
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
        flip = default_protocol(malleability)
        if (flip["training_mode"] == "standard").any():
            flip = flip[flip["training_mode"] == "standard"]
        attack = "pgd" if (flip["attack"] == "pgd").any() else flip["attack"].iloc[0]
        flip = flip[flip["attack"] == attack]
        eps = _closest(list(flip["epsilon"].unique()), 0.3)
        flip = flip[flip["epsilon"] == eps]
    datasets = list(
        dict.fromkeys(list(kernel["dataset"]) if not kernel.empty else [])
        | dict.fromkeys(list(flip["dataset"]) if not flip.empty else [])
    )
    fig = new_figure(SINGLE if len(panels) <= 1 else min(DOUBLE, 2.3 * len(panels) + 0.3), 2.6 * max(1, len(datasets)))
    if not panels:
        return no_data(fig)
    everything = pd.concat([f[["model"]] for f in (kernel, flip) if not f.empty])
    colors = colors_for(everything, colors)
    axes = grid(fig, len(datasets), len(panels))
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
            stats = [seed_stats(at[at["model"] == m]["cert"]) for m in order]
            heights = np.array([s.mean for s in stats])
            err = np.array([[max(s.mean - s.min, 0) for s in stats], [max(s.max - s.mean, 0) for s in stats]])
            ax.bar(x, heights, color=[colors[m] for m in order], yerr=err, error_kw={"linewidth": 0.7, "capsize": 1.5})
            ax.axhline(1.0, color="black", linestyle=":", linewidth=0.6)
            ax.set_ylabel(f"cert at m = {int(m_max)}")
            panel_label(ax, dataset if j == 0 else "")
            log_axis(ax, "y")
        elif panel == "kappa":
            values = [
                sub[sub["model"] == m]["kappa_d_G" if m == "2L-ReLU" else "kappa_d_features"].iloc[0] for m in order
            ]
            ax.bar(x, values, color=[colors[m] for m in order])
            ax.set_ylabel(r"$\kappa_d$ of the head's input")
            panel_label(ax, dataset if j == 0 else "")
            log_axis(ax, "y")
        else:
            mean_errs = [_mean_err(sub[sub["model"] == m]) for m in order]
            ax.bar(
                x,
                [t[0] for t in mean_errs],
                yerr=[t[1] for t in mean_errs],
                color=[colors[m] for m in order],
                error_kw={"linewidth": 0.7, "capsize": 1.5},
            )
            ax.set_ylim(0, 1.05)
            ax.set_ylabel(f"flip rate ({sub['attack'].iloc[0].upper()} ε = {fmt(sub['epsilon'].iloc[0], 6)})")
            panel_label(ax, dataset if j == 0 else "")
        ax.set_xticks(x, order, rotation=35, ha="right")
    return fig


def _kappa_x(frame: pd.DataFrame) -> pd.Series:
    """κ(G) of each row: the prescribed κ of synthetic data, else the stored κ_d(G)."""
    if "kappa_data" in frame and frame["kappa_data"].notna().all():
        return frame["kappa_data"]
    return frame["kappa_d_G"] if "kappa_d_G" in frame else frame["kappa_data"]


@paper_style
def plot_kappa_sweep(
    kernel: pd.DataFrame | None = None,
    malleability: pd.DataFrame | None = None,
    *,
    colors: dict[str, str] | None = None,
) -> Figure:
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
        frame = default_protocol(malleability)
        if (frame["training_mode"] == "standard").any():
            frame = frame[frame["training_mode"] == "standard"]
        attack = "pgd" if (frame["attack"] == "pgd").any() else frame["attack"].iloc[0]
        frame = frame[frame["attack"] == attack].copy()
        eps = _closest(list(frame["epsilon"].unique()), 0.3)
        frame = frame[frame["epsilon"] == eps]
        frame["x"] = _kappa_x(frame)
        sources.append(("flip_rate", frame, f"flip rate ({attack.upper()} ε = {fmt(eps, 6)})", False))
    fig = new_figure(DOUBLE if len(sources) > 1 else 0.75 * DOUBLE, 2.5)
    if not sources:
        return no_data(fig)
    everything = pd.concat([s[1][["model"]] for s in sources])
    colors = colors_for(everything, colors)
    axes = grid(fig, 1, 2 * len(sources))
    letters = "abcd"
    for k, (metric, frame, ylabel, logy) in enumerate(sources):
        ax, ax_ratio = axes[0, 2 * k], axes[0, 2 * k + 1]
        means = {}
        for model in ordered_models(frame):
            m = frame[frame["model"] == model]
            stats = seed_stats_by(m, "x", metric)
            means[model] = stats["mean"]
            x = stats.index.to_numpy(float)
            ax.plot(x, stats["mean"], color=colors[model], marker=MARKERS.get(model, "D"), label=model)
            if stats["n"].max() > 1:
                ax.fill_between(x, stats["min"], stats["max"], color=colors[model], alpha=0.18, linewidth=0)
        log_axis(ax, "x")
        if logy:
            log_axis(ax, "y")
        else:
            ax.set_ylim(0, 1.05)
        ax.set_xlabel(r"$\kappa(G)$")
        ax.set_ylabel(ylabel)
        panel_label(ax, f"({letters[2 * k]}) {'certificate' if metric == 'cert' else 'malleability'}")
        ax.legend(loc="best")
        if "2L-ReLU" in means:
            for model, series in means.items():
                if model == "2L-ReLU":
                    continue
                ratio = (series / means["2L-ReLU"]).dropna()
                ax_ratio.plot(
                    ratio.index.to_numpy(float),
                    ratio.to_numpy(float),
                    color=colors[model],
                    marker=MARKERS.get(model, "D"),
                    label=f"{model} / 2L-ReLU",
                )
            ax_ratio.axhline(1.0, color=REFERENCE, linestyle="--", linewidth=0.7)
            log_axis(ax_ratio, "x")
            if logy:
                log_axis(ax_ratio, "y")
            ax_ratio.set_xlabel(r"$\kappa(G)$")
            ax_ratio.set_ylabel("ratio to 2L-ReLU")
            panel_label(ax_ratio, f"({letters[2 * k + 1]}) gap")
        else:
            ax_ratio.set_axis_off()
    return fig
