"""Statistics over seeds of stored per-cell metrics: mean, sample std, extremes (docs/math.md §8).

One convention everywhere (sweep tables, report, figures): NaN values (a
metric not computed for a cell) are left out; the std is the sample std
(ddof 1), NaN for fewer than two values or when a value is infinite (an
infinite cert or κ has no spread).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from kernelattn.analysis.labels import display_order

__all__ = ["SeedStats", "mean_of_means", "seed_stats", "seed_stats_by", "seed_summary", "spearman", "width_summary"]


@dataclasses.dataclass(frozen=True)
class SeedStats:
    """Mean, sample std, min and max of one metric over seeds (NaN values left out).

    Attributes:
      mean, std, min, max: NaN when no value is left (std also for one value or an infinite one).
      n: the number of values used.
    """

    mean: float
    std: float
    min: float
    max: float
    n: int


def seed_stats(values: Any) -> SeedStats:
    """:class:`SeedStats` of the values (anything ``pandas.to_numeric`` reads; non-numbers count as NaN)."""
    series = values if isinstance(values, pd.Series) else pd.Series(list(np.ravel(np.asarray(values, dtype=object))))
    values = pd.to_numeric(series, errors="coerce").to_numpy(np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return SeedStats(math.nan, math.nan, math.nan, math.nan, 0)
    with np.errstate(invalid="ignore", over="ignore"):
        mean = float(np.mean(values))
        std = float(np.std(values, ddof=1)) if values.size > 1 and np.all(np.isfinite(values)) else math.nan
    return SeedStats(mean, std, float(np.min(values)), float(np.max(values)), int(values.size))


def seed_stats_by(frame: pd.DataFrame, by: str, metric: str) -> pd.DataFrame:
    """:class:`SeedStats` of one metric per value of one column (e.g. per width), in increasing order of it.

    Returns:
      A frame indexed by the values of ``by`` (rows whose ``by`` is NaN left out), columns ``mean``,
      ``std``, ``min``, ``max``, ``n``.
    """
    stats = {value: dataclasses.asdict(seed_stats(group[metric])) for value, group in frame.groupby(by, sort=True)}
    return pd.DataFrame.from_dict(stats, orient="index", columns=["mean", "std", "min", "max", "n"])


def mean_of_means(per_seed: Iterable[Any]) -> float:
    """Mean over seeds of each seed's mean over test points: ``per_seed`` holds one ``(T,)`` array per seed
    (NaN test points left out of its mean). NaN without seeds."""
    means = [np.nanmean(np.asarray(v, np.float64)) for v in per_seed]
    return float(np.mean(means)) if means else math.nan


def spearman(x: Any, y: Any) -> float:
    """Spearman rank correlation of paired values (ties share their mean rank; pairs with a NaN left out)."""
    return float(pd.Series(np.asarray(x, np.float64)).corr(pd.Series(np.asarray(y, np.float64)), method="spearman"))


def seed_summary(
    cells: pd.DataFrame, by: Sequence[str], metrics: Sequence[str], *, extremes: bool = False, keys: bool = False
) -> pd.DataFrame:
    """One row per group of ``by`` (in order of appearance): ``n_seeds`` and each metric's seed statistics.

    Args:
      cells: one row per cell (a ``seed`` column is not needed: every row of a group counts).
      by: the grouping columns, e.g. ("dataset", "model", "width").
      metrics: metric columns; those absent from ``cells`` are skipped.
      extremes: add ``<metric>_min`` and ``<metric>_max``.
      keys: add ``keys``, the list of the group's ``key`` column.

    Returns:
      Columns ``by``, ``n_seeds`` (, ``keys``), then per metric ``<metric>_mean``,
      ``<metric>_std`` (, ``_min``, ``_max``).
    """
    present = [m for m in metrics if m in cells.columns]
    rows = []
    for values, group in cells.groupby(list(by), sort=False):
        row: dict[str, Any] = dict(zip(by, values if isinstance(values, tuple) else (values,)))
        row["n_seeds"] = len(group)
        if keys:
            row["keys"] = list(group["key"])
        for metric in present:
            stats = seed_stats(group[metric])
            row[f"{metric}_mean"], row[f"{metric}_std"] = stats.mean, stats.std
            if extremes:
                row[f"{metric}_min"], row[f"{metric}_max"] = stats.min, stats.max
        rows.append(row)
    return pd.DataFrame(rows)


def width_summary(kernel: pd.DataFrame, metrics: Sequence[str] = ("rel_fro", "cert", "krr_err")) -> pd.DataFrame:
    """Per (store, dataset, model, width) of stored kernel rows: seed statistics with extremes, and the keys.

    Args:
      kernel: kernel-sweep rows (``kernelattn.viz.frames.load_frames(out).kernel``).
      metrics: the metrics summarized.

    Returns:
      :func:`seed_summary` with ``extremes`` and ``keys``, in table order (``labels.display_order``).
    """
    if kernel.empty:
        return pd.DataFrame()
    by = ["store", "dataset", "model", "width"]
    summary = seed_summary(kernel, by, metrics, extremes=True, keys=True)
    return display_order(summary, by).reset_index(drop=True)
