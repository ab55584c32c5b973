"""What a guard-rail check finds: :class:`Problem` s, gathered in one :class:`KernelDiagnostics` per kernel.

Produced by the checks (``kernels.guards.checks``), reported according to the
policy in force (``kernels.guards.reporting``), and stored beside results
(:meth:`KernelDiagnostics.as_dict`, :func:`summarize`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

__all__ = ["PROBLEM_KINDS", "KernelDiagnostics", "Problem", "summarize"]

#: Problem kinds, in the order they are checked.
PROBLEM_KINDS = ("nonfinite", "zero", "asymmetric", "not_psd", "ill_conditioned", "clipped", "backward_error")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One finding: its ``kind`` (see ``PROBLEM_KINDS``), the full ``message``, the key number."""

    kind: str
    message: str
    value: float | None = None


@dataclasses.dataclass(frozen=True)
class KernelDiagnostics:
    """Numerical health of one kernel matrix (all numbers float64).

    Attributes:
      name: the kernel's name in messages.
      shape: shape of the matrix as checked (a ``(n1, n2, C, C)`` kernel is
        checked as ``(n1·C, n2·C)``).
      dtype: the dtype it was computed in ("float32" / "float64").
      requested: "entries", "spectrum" or "solve": what it will be used for.
      ridge: λ of the solves (κ is then that of K + λI).
      n_nonfinite: number of NaN/inf entries.
      symmetry_error: ‖K − Kᵀ‖_F / ‖K‖_F (None unless checked as symmetric).
      lambda_max, lambda_min: extreme eigenvalues (None without eigenvalues).
      negative_ratio: max(0, −λ_min)/λ_max, the most negative eigenvalue
        relative to λ_max.
      kappa: λ_max/λ_min of K (inf when λ_min ≤ 0).
      kappa_effective: κ that matters for ``requested``: of K + λI for
        "solve", of K for "spectrum".
      kappa_limit: ``solve_margin / eps``.
      representable: κ_effective ≤ κ_limit (None when not applicable/known).
      ridge_needed: smallest λ with κ(K + λI) ≤ κ_limit (None if not needed).
      rank_needed: eigenvalues above λ_max/κ_limit: the rank of a truncation
        that the dtype resolves (None if not needed).
      eps: effective machine epsilon of ``dtype`` at ``precision``.
      problems: the :class:`Problem` s found (empty: healthy).
      method: "cholesky" / "eigh-clipped" (``check_solve`` only).
      clipped: eigenvalues clipped by the fallback (``check_solve`` only).
      backward_error: ‖b − (K + λI)x‖ / (‖K + λI‖‖x‖ + ‖b‖) (``check_solve``
        with ``rhs`` and ``solution``).
      precision: the matmul precision it was computed at ("highest" / "fast").
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    requested: str
    ridge: float = 0.0
    n_nonfinite: int = 0
    symmetry_error: float | None = None
    lambda_max: float | None = None
    lambda_min: float | None = None
    negative_ratio: float | None = None
    kappa: float | None = None
    kappa_effective: float | None = None
    kappa_limit: float | None = None
    representable: bool | None = None
    ridge_needed: float | None = None
    rank_needed: int | None = None
    eps: float = 0.0
    problems: tuple[Problem, ...] = ()
    method: str | None = None
    clipped: int | None = None
    backward_error: float | None = None
    precision: str = "highest"

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems

    @property
    def kinds(self) -> tuple[str, ...]:
        """Kinds of the problems found."""
        return tuple(p.kind for p in self.problems)

    def as_dict(self) -> dict:
        """JSON-friendly view (problems as their kinds and messages)."""
        out = dataclasses.asdict(self)
        out["shape"] = list(self.shape)
        out["problems"] = [{"kind": p.kind, "message": p.message} for p in self.problems]
        return out


def summarize(diagnostics: Mapping[str, KernelDiagnostics] | list[KernelDiagnostics]) -> dict:
    """{name: [problem kinds]} for a batch of diagnostics (for result records)."""
    items = diagnostics.values() if isinstance(diagnostics, Mapping) else diagnostics
    return {d.name: list(d.kinds) for d in items}
