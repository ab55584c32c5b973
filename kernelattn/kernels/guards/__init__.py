"""Numerical guard-rails for kernel matrices: is this kernel fit for what is asked of it?

A kernel computed in float32 can be good for ‖Θ_m − Θ_∞‖_F and meaningless
for (Θ + λI)⁻¹y once κ(Θ) approaches 1/eps of the precision it was computed
at; linearized attention cubes κ (docs/math.md §3), so MLP-Attn kernels cross
that line at κ(G) ≈ 100. Three modules, each building on the one before:

- ``diagnostics``: what a check finds — :class:`Problem` s in one
  :class:`KernelDiagnostics` per kernel;
- ``reporting``: what happens then — the :class:`GuardPolicy` in force
  ("warn", "raise" or "ignore"; :func:`policy`, :func:`strict`), the
  :class:`KernelWarning` / :class:`KernelError` raised, and :func:`collect`,
  which warns each problem of a sweep once and logs the rest;
- ``checks``: the analysis of a matrix — :func:`check_kernel` (finiteness,
  symmetry, PSD-ness, κ against the effective eps, with remedies),
  :func:`check_symmetry`, :func:`check_solve` and :func:`check_condition`.

Every name is importable from ``kernelattn.kernels.guards`` itself.
"""

from kernelattn.kernels.guards.checks import (
    REQUESTS,
    check_condition,
    check_kernel,
    check_solve,
    check_symmetry,
)
from kernelattn.kernels.guards.diagnostics import PROBLEM_KINDS, KernelDiagnostics, Problem, summarize
from kernelattn.kernels.guards.reporting import (
    ACTIONS,
    GuardLog,
    GuardPolicy,
    KernelError,
    KernelWarning,
    collect,
    current_policy,
    policy,
    strict,
)

__all__ = [
    "ACTIONS",
    "PROBLEM_KINDS",
    "REQUESTS",
    "GuardLog",
    "GuardPolicy",
    "KernelDiagnostics",
    "KernelError",
    "KernelWarning",
    "Problem",
    "check_condition",
    "check_kernel",
    "check_solve",
    "check_symmetry",
    "collect",
    "current_policy",
    "policy",
    "strict",
    "summarize",
]
