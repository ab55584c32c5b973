"""Two-stage (seeds, then test points) paired percentile bootstrap.

A malleability number is a mean over test points of one fit, and the fits
vary with the seed. Its 95 % interval resamples both levels, as a cluster
bootstrap does (Davison & Hinkley 1997, §3.8): B times, draw S seeds with
replacement, then within each drawn seed T test points with replacement,
and recompute the statistic on the means. Quantities measured on the same
seeds and test points (a flip rate and its null baseline, MLP-Attn and
2L-ReLU on the same data) are resampled with the *same* indices, so their
difference or ratio keeps its pairing. With one seed it is the ordinary
bootstrap over test points.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from kernelattn.errors import InputValueError

#: Bootstrap resamples and the RNG seed: fixed, so a report is reproducible to the digit.
N_BOOT = 2000
BOOT_SEED = 0


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile interval.

    Attributes:
      estimate: the statistic on the full data.
      lo, hi: the (1 − level)/2 and (1 + level)/2 quantiles of its bootstrap distribution.
      level: the coverage asked for (0.95).
      n_seeds, n_points: the seeds and the test points per seed resampled.
    """

    estimate: float
    lo: float
    hi: float
    level: float
    n_seeds: int
    n_points: int

    def excludes(self, value: float) -> bool:
        """True when ``value`` lies outside [lo, hi]."""
        return bool(self.lo > value or self.hi < value)

    def text(self, fmt: Callable[[float], str] = lambda v: f"{v:.3g}") -> str:
        """ "estimate [lo, hi]"."""
        return f"{fmt(self.estimate)} [{fmt(self.lo)}, {fmt(self.hi)}]"


def paired_bootstrap(
    values: Mapping[str, Sequence[np.ndarray]],
    statistic: Callable[[Mapping[str, np.ndarray]], np.ndarray],
    *,
    level: float = 0.95,
    n_boot: int = N_BOOT,
    seed: int = BOOT_SEED,
) -> Interval:
    """Percentile interval of ``statistic`` over seeds and test points, resampled jointly.

    Args:
      values: quantity name → per seed (same seeds, same order for every quantity) a ``(T,)``
        array of per-test-point values (same T everywhere; NaN entries are left out of the means).
      statistic: maps {name: means} to the statistic; called once with scalars (``(,)`` arrays)
        and once with ``(n_boot,)`` arrays, so write it with numpy operations, e.g.
        ``lambda m: m["flip"] - m["null"]``.
      level: interval coverage in (0, 1).
      n_boot: resamples.
      seed: RNG seed (deterministic).

    Returns:
      :class:`Interval` (NaN bounds when there is nothing to resample).

    Raises:
      ValueError: quantities with different numbers of seeds or test points.
    """
    names = list(values)
    if not names:
        raise InputValueError("values: expected at least one quantity, got none")
    arrays = {k: np.asarray([np.asarray(v, np.float64) for v in values[k]], np.float64) for k in names}
    shapes = {k: a.shape for k, a in arrays.items()}
    if len(set(shapes.values())) != 1 or arrays[names[0]].ndim != 2:
        raise InputValueError(f"values: expected (seeds, test points) arrays of one shape per quantity, got {shapes}")
    n_seeds, n_points = arrays[names[0]].shape
    estimate = float(statistic({k: np.asarray(np.nanmean(a)) for k, a in arrays.items()}))
    if n_seeds == 0 or n_points == 0:
        return Interval(math.nan, math.nan, math.nan, level, n_seeds, n_points)
    rng = np.random.default_rng(seed)
    seed_idx = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    point_idx = rng.integers(0, n_points, size=(n_boot, n_seeds, n_points))
    means = {k: np.nanmean(a[seed_idx[:, :, None], point_idx], axis=(1, 2)) for k, a in arrays.items()}
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = np.asarray(statistic(means), np.float64)
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return Interval(estimate, math.nan, math.nan, level, n_seeds, n_points)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return Interval(estimate, float(lo), float(hi), level, n_seeds, n_points)
