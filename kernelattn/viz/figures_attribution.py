"""The figure of the attribution ground-truth comparison (docs/math.md §14): Spearman ρ against width.

:func:`plot_attribution` takes the ``attribution`` frame of stored records
(``kernelattn.viz.frames.load_frames``) and returns a ``matplotlib.figure.Figure``
in the paper style (``kernelattn.viz.style``); statistics over seeds from ``kernelattn.analysis``.
"""

from __future__ import annotations

import itertools

import pandas as pd
from matplotlib.figure import Figure

from kernelattn.analysis.statistics import seed_stats_by
from kernelattn.viz.style import (
    VARIANT_PALETTE,
    log_axis,
    new_figure,
    no_data,
    ordered_models,
    panel_label,
    paper_style,
)

__all__ = ["plot_attribution"]

#: Line styles of the dampings λ, smallest first.
_DAMPING_STYLES = ("-", "--", ":", "-.")


@paper_style
def plot_attribution(attribution: pd.DataFrame) -> Figure:
    """Spearman ρ of each estimator (colour) against a ground truth (row: kernel LOO, retraining) per model
    (column) against the width m, one line style per damping λ; mean over seeds, error bar ± sample std."""
    if attribution.empty:
        return no_data(new_figure(3.3, 2.0))
    references = list(dict.fromkeys(attribution["reference"]))
    models = ordered_models(attribution)
    fig = new_figure(min(6.9, 2.6 * len(models) + 1.2), 2.2 * len(references) + 0.2)
    axes = fig.subplots(len(references), len(models), squeeze=False, sharey=True, sharex=True)
    estimators = list(dict.fromkeys(attribution["estimator"]))
    colors = dict(zip(estimators, itertools.cycle(VARIANT_PALETTE)))
    dampings = sorted(attribution["damping"].unique())
    styles = dict(zip(dampings, itertools.cycle(_DAMPING_STYLES)))
    for (i, reference), (j, model) in itertools.product(enumerate(references), enumerate(models)):
        ax = axes[i, j]
        sub = attribution[(attribution["reference"] == reference) & (attribution["model"] == model)]
        for estimator, damping in itertools.product(estimators, dampings):
            line = sub[(sub["estimator"] == estimator) & (sub["damping"] == damping)]
            if line.empty:
                continue
            stats = seed_stats_by(line, "width", "spearman")
            ax.errorbar(
                stats.index,
                stats["mean"],
                yerr=stats["std"].fillna(0.0),
                color=colors[estimator],
                linestyle=styles[damping],
                marker="o",
                capsize=1.5,
                elinewidth=0.7,
                label=estimator if damping == dampings[0] else None,
            )
        log_axis(ax, "x", 2)
        ax.set_ylim(min(0.0, float(attribution["spearman"].min()) - 0.05), 1.05)
        panel_label(ax, f"{model}, vs {reference}")
        if j == 0:
            ax.set_ylabel("Spearman ρ (mean over test points)")
        if i == len(references) - 1:
            ax.set_xlabel("width m")
    axes[0, -1].legend(loc="lower right", fontsize=6, ncol=2)
    fig.supxlabel("line style: damping λ = " + ", ".join(f"{d:g} ({styles[d]})" for d in dampings), fontsize=6)
    return fig
