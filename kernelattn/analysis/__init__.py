"""Analysis of stored results: seed statistics, log-log fits and extrapolations, bootstrap intervals, labels,
formatting.

- ``statistics``: mean, sample std and extremes over seeds (``seed_stats``, ``seed_stats_by``, ``seed_summary``,
  ``width_summary``), means of per-seed means, Spearman ρ;
- ``fits``: log-log fits against width and the widths they extrapolate to (``loglog_fit``,
  ``crossing_width``, ``width_fits``, ``group_fits``, ``convergence_fits``);
- ``bootstrap``: two-stage paired bootstrap intervals over seeds and test points;
- ``flip_summary``: malleability records per setting: flip rates, null baselines, paired ratios to 2L-ReLU;
- ``labels``: display labels of models and datasets, table order;
- ``formatting``: numbers and tables as text (report, sweep summaries, command line).
"""

from kernelattn.analysis.bootstrap import Interval, paired_bootstrap

__all__ = ["Interval", "paired_bootstrap"]
