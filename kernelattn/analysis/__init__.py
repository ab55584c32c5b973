"""Statistics over stored results: intervals over seeds and test points."""

from kernelattn.analysis.bootstrap import Interval, paired_bootstrap

__all__ = ["Interval", "paired_bootstrap"]
