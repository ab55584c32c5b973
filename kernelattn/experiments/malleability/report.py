"""The record of one malleability measurement (:class:`MalleabilityReport`) and its tables."""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class MalleabilityReport:
    """Result of one malleability measurement.

    Attributes:
      model, kernel, influence, training, intervention, attack: what was run
        (``attack`` is "none" for the curated intervention and the null
        baselines, whose ``intervention`` is "null-seed", "null-order" or
        "null-rerun").
      epsilon, tau, ridge, seed, width: settings.
      n_train, n_test: sizes of the clean split.
      top_k: k = ⌈τ n'⌉ points per test point entering flip rate and overlap.
      flip_rate, spearman, topk_overlap: means over test points (NaN-ignoring
        for ρ); ``*_std``: their standard deviations over test points.
      flip_rates, spearmans, topk_overlaps_per_test: ``(n*,)`` per-test-point values.
      influence_clean: I, ``(n*, n)``; influence_perturbed: I', ``(n*, n')``.
      columns: ``(n',)`` indices (into the clean training set) of I''s columns.
      intervened: indices of the perturbed (or removed) training points.
      perturbation: the perturbation actually used: linf (max |X' − X|),
        mean_linf / mean_l2 over perturbed rows, n_perturbed, steps,
        step_size, loss_clean / loss_adv of the attacked objective.
      factorization: how K + λI was solved, clean and perturbed.
      retrain: whether the network was retrained on the perturbed data.
      seconds: wall time of the measurement (attack + rebuild), excluding the
        clean training.
      attack_effective: False when the attack raised its objective by less
        than ``attacks.NO_OP_GAIN`` (a "no-op"; flagged in tables and
        figures), None when nothing was attacked.
      health: the clean fit's training health (``TrainingHealth.to_dict()``;
        for a null baseline, the null refit's), None when unknown.
      null: the null baseline measured beside this report (see
        :func:`kernelattn.experiments.malleability.experiment.measure_null`), or None.
    """

    model: str
    kernel: str
    influence: str
    training: str
    intervention: str
    attack: str
    epsilon: float
    tau: float
    ridge: float
    seed: int
    width: int
    n_train: int
    n_test: int
    top_k: int
    flip_rate: float
    flip_rate_std: float
    spearman: float
    spearman_std: float
    topk_overlap: float
    topk_overlap_std: float
    flip_rates: np.ndarray
    spearmans: np.ndarray
    topk_overlaps_per_test: np.ndarray
    influence_clean: np.ndarray
    influence_perturbed: np.ndarray
    columns: np.ndarray
    intervened: np.ndarray
    perturbation: dict
    factorization: tuple[str, str]
    retrain: bool
    seconds: float
    attack_effective: bool | None = None
    health: dict | None = None
    null: MalleabilityReport | None = None

    @property
    def excess_flip_rate(self) -> float:
        """flip_rate − null.flip_rate (NaN without a null baseline)."""
        return self.flip_rate - self.null.flip_rate if self.null is not None else math.nan

    @property
    def I(self) -> np.ndarray:  # noqa: E743, N802
        """The clean influence matrix I."""
        return self.influence_clean

    @property
    def I_prime(self) -> np.ndarray:  # noqa: N802
        """The influence matrix I' after the intervention."""
        return self.influence_perturbed

    _SCALARS = (
        "model",
        "kernel",
        "influence",
        "training",
        "intervention",
        "attack",
        "epsilon",
        "tau",
        "ridge",
        "seed",
        "width",
        "n_train",
        "n_test",
        "top_k",
        "flip_rate",
        "flip_rate_std",
        "spearman",
        "spearman_std",
        "topk_overlap",
        "topk_overlap_std",
        "retrain",
        "seconds",
        "attack_effective",
    )

    def to_dict(self, arrays: bool = False) -> dict:
        """Scalars, ``perturbation`` and ``factorization``; with ``arrays=True`` also the per-test
        arrays and the influence matrices as lists."""
        out = {name: getattr(self, name) for name in self._SCALARS}
        out["perturbation"] = dict(self.perturbation)
        out["factorization"] = list(self.factorization)
        out["health"] = None if self.health is None else dict(self.health)
        if self.null is not None:
            out["null_flip_rate"] = self.null.flip_rate
            out["null_kind"] = self.null.intervention
        if arrays:
            out["flip_rates"] = self.flip_rates.tolist()
            out["spearmans"] = self.spearmans.tolist()
            out["topk_overlaps"] = self.topk_overlaps_per_test.tolist()
            out["influence_clean"] = self.influence_clean.tolist()
            out["influence_perturbed"] = self.influence_perturbed.tolist()
            out["columns"] = self.columns.tolist()
            out["intervened"] = self.intervened.tolist()
        return out

    def to_frame(self, per_test: bool = False):
        """pandas DataFrame: one summary row (default), or one row per test point."""
        import pandas as pd

        summary = {name: getattr(self, name) for name in self._SCALARS}
        summary.update({f"perturbation_{k}": v for k, v in self.perturbation.items()})
        summary.update({f"health_{k}": v for k, v in (self.health or {}).items()})
        if self.null is not None:
            summary.update(null_flip_rate=self.null.flip_rate, excess_flip_rate=self.excess_flip_rate)
        if not per_test:
            return pd.DataFrame([summary])
        frame = pd.DataFrame(
            {
                "test_index": np.arange(self.n_test),
                "flip_rate": self.flip_rates,
                "spearman": self.spearmans,
                "topk_overlap": self.topk_overlaps_per_test,
            }
        )
        for name in ("model", "kernel", "training", "intervention", "attack", "epsilon", "tau", "seed"):
            frame[name] = summary[name]
        return frame
