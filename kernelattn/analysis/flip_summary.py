"""Malleability records summarized per setting: flip rates over seeds, null baselines, paired intervals.

A setting is one row of :func:`malleability_summary` (the columns
:data:`SETTING_BY`); its seeds are averaged, its null baselines (two fits
without any perturbation, matched on :data:`NULL_BY`) sit beside it, and its
95 % intervals are two-stage paired bootstraps (``analysis.bootstrap``). The
comparison of a model with 2L-ReLU on the same setting (:func:`relu_pairs`,
:func:`ratio_interval`, :func:`direction`) is what the report's gap tables,
protocol matrix and claims are built on. Inputs are the ``malleability``
frame of ``kernelattn.viz.frames.load_frames`` (one row per record).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from kernelattn.analysis.bootstrap import Interval, paired_bootstrap
from kernelattn.analysis.statistics import mean_of_means, seed_stats

__all__ = [
    "NULL_BY",
    "SETTING_BY",
    "direction",
    "fit_health",
    "flag_marks",
    "is_null_baseline",
    "malleability_summary",
    "null_keys_of",
    "per_seed_flips",
    "ratio_interval",
    "relu_pairs",
]

#: The columns of one malleability setting (one row of the summary).
SETTING_BY = [
    "store",
    "dataset",
    "n_train",
    "training_mode",
    "intervention",
    "attack_target",
    "attack",
    "epsilon",
    "model",
    "width",
    "influence_kernel",
]
#: The columns a null baseline shares with the settings it serves.
NULL_BY = ["store", "dataset", "n_train", "training_mode", "model", "width", "influence_kernel"]
_NULL_KINDS = ("seed", "order")
_MEANS = (
    "flip_rate",
    "spearman",
    "topk_overlap",
    "linf",
    "loss_clean",
    "loss_adv",
    "loss_gain",
    "final_train_loss",
    "health_loss_ratio",
    "health_train_accuracy",
    "health_test_accuracy",
    "health_feature_cosine",
)


def is_null_baseline(records: pd.DataFrame) -> pd.Series:
    """Per record: True for a null baseline (intervention "null-seed", "null-order", ...: no perturbation)."""
    return records["intervention"].astype(str).str.startswith("null-")


def per_seed_flips(records: pd.DataFrame) -> dict[int, np.ndarray]:
    """seed → the ``(T,)`` per-test-point flip rates (float64) of each record that stores them."""
    return {
        int(r["seed"]): np.asarray(r["flip_rates"], np.float64)
        for _, r in records.iterrows()
        if r.get("flip_rates") is not None
    }


def fit_health(records: pd.DataFrame) -> tuple[int, int]:
    """(records whose fit did not train, records whose attack did not move its objective) among ``records``."""
    untrained = int((~records["trained"].astype(bool)).sum()) if "trained" in records else 0
    no_op = int((records["attack_effective"] == False).sum()) if "attack_effective" in records else 0  # noqa: E712
    return untrained, no_op


def flag_marks(untrained: Any, no_op: Any) -> str:
    """ "†" when a fit did not train, "‡" when an attack was a no-op (counts or booleans)."""
    return ("†" if untrained else "") + ("‡" if no_op else "")


def _interval_columns(prefix: str, interval: Interval) -> dict[str, float]:
    return {prefix: interval.estimate, f"{prefix}_lo": interval.lo, f"{prefix}_hi": interval.hi}


def _null_columns(
    flips: Mapping[int, np.ndarray], nulls: Mapping[tuple, dict[int, np.ndarray]], null_key: tuple
) -> dict[str, Any]:
    """``null_<kind>`` (flip rate of the matching baselines on the setting's seeds), ``null_<kind>_keys``
    and the paired excess flip − null (seed) with its interval."""
    row: dict[str, Any] = {}
    for kind in _NULL_KINDS:
        null = nulls.get((*null_key, f"null-{kind}"), {})
        seeds = [sd for sd in flips if sd in null]
        row[f"null_{kind}"] = mean_of_means(null[sd] for sd in seeds)
        row[f"null_{kind}_keys"] = len(null)
        if kind == "seed":
            if seeds:
                interval = paired_bootstrap(
                    {"f": [flips[sd] for sd in seeds], "n": [null[sd] for sd in seeds]}, lambda m: m["f"] - m["n"]
                )
                row.update(_interval_columns("excess", interval))
            else:
                row.update(excess=math.nan, excess_lo=math.nan, excess_hi=math.nan)
    return row


def malleability_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per setting (:data:`SETTING_BY`): means over seeds, null baselines and 95 % intervals.

    ``flip_rate`` etc. are means over seeds of the per-seed means over test
    points, with ``flip_rate_lo/hi`` its two-stage bootstrap interval
    (:func:`kernelattn.analysis.paired_bootstrap`). ``null_seed`` /
    ``null_order`` are the flip rates of the matching null baselines (same
    data, model, width, kernel and seeds, no perturbation, refitted with other
    keys), ``excess`` = flip − null_seed with its paired interval
    (``excess_lo/hi``). ``untrained`` counts seeds whose fit did not train and
    ``no_op`` seeds whose attack did not move its objective. ``flips`` keeps
    seed → per-test flip rates for paired comparisons.
    """
    if frame.empty:
        return pd.DataFrame()
    frame = frame.copy()
    for column, default in (("attack_target", "model"), ("n_train", math.nan)):
        if column not in frame:
            frame[column] = default
    is_null = is_null_baseline(frame)
    nulls = {
        tuple(values): per_seed_flips(g)
        for values, g in frame[is_null].groupby([*NULL_BY, "intervention"], sort=False, dropna=False)
    }
    rows = []
    for values, g in frame[~is_null].groupby(SETTING_BY, sort=False, dropna=False):
        row = dict(zip(SETTING_BY, values))
        first = g.iloc[0]
        untrained, no_op = fit_health(g)
        row.update(
            model_name=first["model_name"],
            variant=bool(first["variant"]),
            depth=first["depth"],
            model_index=first["model_index"],
            dataset_index=first["dataset_index"],
            rank=first["rank"],
            kappa_data=first["kappa_data"],
            task=first["task"],
            dataset_name=first["dataset_name"],
            n_seeds=len(g),
            keys=list(g["key"]),
            n_test=first.get("n_test"),
            variants=tuple(dict.fromkeys(v for vs in g.get("variants", [("default",)]) for v in vs)),
            untrained=untrained,
            no_op=no_op,
        )
        row.update({m: seed_stats(g[m]).mean for m in _MEANS if m in g})
        flips = per_seed_flips(g)
        row["flips"] = flips
        if flips:
            row.update(_interval_columns("flip_rate", paired_bootstrap({"f": list(flips.values())}, lambda m: m["f"])))
            row["flip_rate"] = mean_of_means(flips.values())
        row.update(_null_columns(flips, nulls, tuple(row[c] for c in NULL_BY)))
        rows.append(row)
    return pd.DataFrame(rows)


def null_keys_of(frame: pd.DataFrame, row: Mapping[str, Any]) -> list[str]:
    """Record keys of the null baselines matching a summary row."""
    if frame.empty:
        return []
    mask = is_null_baseline(frame)
    for column in NULL_BY:
        if column in frame:
            mask &= (frame[column] == row[column]) | (frame[column].isna() & pd.isna(row[column]))
    return list(frame.loc[mask, "key"])


def ratio_interval(attn: Mapping[int, np.ndarray], relu: Mapping[int, np.ndarray]) -> Interval:
    """flip(model)/flip(2L-ReLU) over their common seeds, paired bootstrap interval."""
    seeds = [sd for sd in attn if sd in relu]
    if not seeds:
        return Interval(math.nan, math.nan, math.nan, 0.95, 0, 0)
    return paired_bootstrap({"a": [attn[sd] for sd in seeds], "r": [relu[sd] for sd in seeds]}, _ratio)


def _ratio(means: Mapping[str, np.ndarray]) -> np.ndarray:
    """a / r, inf or nan where 2L-ReLU flipped nothing (the interval is then not finite: "inconclusive")."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return means["a"] / means["r"]


def direction(interval: Interval) -> str:
    """ "more" (interval above 1), "less" (below 1) or "inconclusive" for a flip-rate ratio."""
    if not np.isfinite(interval.lo) or not np.isfinite(interval.hi):
        return "inconclusive"
    return "more" if interval.lo > 1 else ("less" if interval.hi < 1 else "inconclusive")


def relu_pairs(summary: pd.DataFrame, by: Sequence[str]) -> Iterator[tuple[dict[str, Any], pd.Series, pd.Series]]:
    """(setting, 2L-ReLU row, other model's row) for every setting of ``by`` where 2L-ReLU was measured too."""
    for values, g in summary.groupby(list(by), sort=False, dropna=False):
        relu = g[g["model"] == "2L-ReLU"]
        if relu.empty:
            continue
        for _, r in g[g["model"] != "2L-ReLU"].iterrows():
            yield dict(zip(by, values)), relu.iloc[0], r
