"""Reporting policy: what happens when a check finds a problem, and the log of a sweep's checks.

Problems are reported according to a :class:`GuardPolicy`: ``"warn"``
(default) issues a :class:`KernelWarning` (a ``RuntimeWarning``) per problem,
``"raise"`` raises :class:`KernelError` (a ``ValueError``) naming the kernel,
the numbers and the remedy, ``"ignore"`` only returns the diagnostics. The
policy is taken, in order, from the ``policy=`` argument, else from the
innermost ``with guards.policy(...)`` / ``with guards.strict()`` block (a
``contextvars.ContextVar``, so it is per thread and per asyncio task, and
restored on exit), else the default ``GuardPolicy()``.

Warn once, without a registry of our own: warnings go through
``warnings.warn`` with a stable category (:class:`KernelWarning`), a message
that is a pure function of the problem (kernel name, dtype, kind and the
numbers printed to two significant digits) and ``stacklevel`` pointing at the
caller. Python's standard ``"default"`` action — which applies to
``RuntimeWarning`` unless configured otherwise — therefore shows a given
problem once per call site, and the usual filters control it:
``warnings.simplefilter("always", KernelWarning)`` to see every occurrence,
``"once"`` for once per message whatever the site, ``"ignore"`` to silence
them. A sweep, where every cell's numbers differ slightly, can open
``with guards.collect() as log:``: inside it a problem is warned the first
time per (kernel name, kind, dtype), repeats are counted in ``log`` (with
every flagged :class:`KernelDiagnostics`, for storing beside the results) and
summarized by one warning when the block ends. All state lives in the policy
and log objects the caller opened; nothing is module-global.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import warnings
from collections.abc import Iterator
from typing import Any

from kernelattn._precision import effective_eps
from kernelattn.errors import InputValueError, KernelattnError
from kernelattn.kernels.guards.diagnostics import PROBLEM_KINDS, KernelDiagnostics, Problem

__all__ = [
    "ACTIONS",
    "GuardLog",
    "GuardPolicy",
    "KernelError",
    "KernelWarning",
    "collect",
    "current_policy",
    "policy",
    "report",
    "resolve_policy",
    "strict",
]

ACTIONS = ("warn", "raise", "ignore")


class KernelWarning(RuntimeWarning):
    """A kernel matrix is numerically unfit for what is asked of it (see ``kernelattn.kernels.guards``)."""


class KernelError(KernelattnError, ValueError):
    """Raised instead of :class:`KernelWarning` under a ``"raise"`` policy.

    Attributes:
      diagnostics: the :class:`KernelDiagnostics` of the offending kernel.
      problems: the :class:`Problem` s that triggered it.
    """

    def __init__(self, message: str, diagnostics: KernelDiagnostics | None = None):
        super().__init__(message)
        self.diagnostics = diagnostics
        self.problems = () if diagnostics is None else diagnostics.problems


@dataclasses.dataclass(frozen=True)
class GuardPolicy:
    """What counts as a problem and what happens then.

    Attributes:
      action: "warn" (a :class:`KernelWarning` per problem, default), "raise"
        (:class:`KernelError`) or "ignore" (diagnostics only).
      solve_margin: a kernel computed in a dtype with machine epsilon eps is
        unfit for solves / spectra when κ > ``solve_margin / eps`` (default
        0.1: 8.4e5 in float32, 4.5e14 in float64).
      symmetry_rtol: tolerated ‖K − Kᵀ‖_F/‖K‖_F; None → 1000·eps(dtype).
      psd_rtol: tolerated most negative eigenvalue, relative to λ_max, before
        K is called not PSD (smaller negative values are round-off and make K
        numerically singular instead); None → 10·n·eps(dtype).
      backward_rtol: tolerated normwise backward error of a solve (float64).
      eig_max_n: with ``eig=None``, compute eigenvalues only up to this size.
      ignore: problem kinds never reported (e.g. ``("ill_conditioned",)``).
    """

    action: str = "warn"
    solve_margin: float = 0.1
    symmetry_rtol: float | None = None
    psd_rtol: float | None = None
    backward_rtol: float = 1e-10
    eig_max_n: int = 4096
    ignore: tuple[str, ...] = ()

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise InputValueError(f"action: expected one of {list(ACTIONS)}, got {self.action!r}")
        if not 0 < self.solve_margin <= 1:
            raise InputValueError(f"solve_margin: expected a number in (0, 1], got {self.solve_margin!r}")
        for field in ("symmetry_rtol", "psd_rtol"):
            value = getattr(self, field)
            if value is not None and not value >= 0:
                raise InputValueError(f"{field}: expected None or a number >= 0, got {value!r}")
        if not self.backward_rtol >= 0:
            raise InputValueError(f"backward_rtol: expected a number >= 0, got {self.backward_rtol!r}")
        if isinstance(self.ignore, str):
            object.__setattr__(self, "ignore", (self.ignore,))
        unknown = sorted(set(self.ignore) - set(PROBLEM_KINDS))
        if unknown:
            raise InputValueError(f"ignore: expected problem kinds among {list(PROBLEM_KINDS)}, got {unknown}")
        object.__setattr__(self, "ignore", tuple(self.ignore))

    def kappa_limit(self, dtype, precision: str = "highest") -> float:
        """Largest κ a kernel computed in ``dtype`` at ``precision`` may have for solves and spectra."""
        return self.solve_margin / effective_eps(dtype, precision)


_POLICY: contextvars.ContextVar[GuardPolicy] = contextvars.ContextVar("kernelattn_guard_policy", default=GuardPolicy())
_LOG: contextvars.ContextVar[GuardLog | None] = contextvars.ContextVar("kernelattn_guard_log", default=None)


def current_policy() -> GuardPolicy:
    """The policy in force here: the innermost ``policy()``/``strict()`` block, else the default."""
    return _POLICY.get()


def resolve_policy(value: GuardPolicy | str | None) -> GuardPolicy:
    if value is None:
        return _POLICY.get()
    if isinstance(value, GuardPolicy):
        return value
    if isinstance(value, str):
        return dataclasses.replace(_POLICY.get(), action=value)
    raise InputValueError(f"policy: expected None, one of {list(ACTIONS)} or a GuardPolicy, got {value!r}")


@contextlib.contextmanager
def policy(action: GuardPolicy | str | None = None, **overrides: Any) -> Iterator[GuardPolicy]:
    """Use a policy for every check in this block (and the functions it calls).

    Args:
      action: "warn", "raise", "ignore", a whole :class:`GuardPolicy`, or None
        to keep the current one.
      **overrides: fields of :class:`GuardPolicy` to change, e.g.
        ``solve_margin=0.01``, ``ignore=("ill_conditioned",)``.

    Yields:
      The policy in force inside the block.
    """
    new = resolve_policy(action)
    if overrides:
        new = dataclasses.replace(new, **overrides)
    token = _POLICY.set(new)
    try:
        yield new
    finally:
        _POLICY.reset(token)


def strict(**overrides: Any) -> contextlib.AbstractContextManager[GuardPolicy]:
    """``with strict():`` — every kernel problem in the block raises :class:`KernelError`."""
    return policy("raise", **overrides)


#: The key number of each problem kind, named in a log's summary of repeats.
_QUANTITY = {
    "ill_conditioned": "κ",
    "not_psd": "λ_min/λ_max",
    "asymmetric": "‖K − Kᵀ‖_F/‖K‖_F",
    "nonfinite": "non-finite entries",
    "clipped": "clipped eigenvalues",
    "backward_error": "backward error",
    "zero": "‖K‖_F",
}


@dataclasses.dataclass
class GuardLog:
    """What the checks inside a ``with collect()`` block found.

    Attributes:
      records: every :class:`KernelDiagnostics` that had a problem, in order.
      checked: number of kernels checked.
      counts: {(name, kind, dtype): occurrences}.
      suppressed: {(name, kind, dtype): occurrences not warned (repeats)}.
      once: warn only the first occurrence of each (name, kind, dtype).
    """

    once: bool = True
    records: list = dataclasses.field(default_factory=list)
    checked: int = 0
    counts: dict = dataclasses.field(default_factory=dict)
    suppressed: dict = dataclasses.field(default_factory=dict)
    _values: dict = dataclasses.field(default_factory=dict, repr=False)

    def _note(self, diag: KernelDiagnostics, problem: Problem) -> bool:
        """Count ``problem``; True if it should be reported now."""
        key = (diag.name, problem.kind, diag.dtype)
        self.counts[key] = self.counts.get(key, 0) + 1
        if problem.value is not None:
            self._values.setdefault(key, []).append(problem.value)
        if self.once and self.counts[key] > 1:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return False
        return True

    def summary(self) -> str:
        """One line per repeated problem: how many were not warned and the range of the key number."""
        lines = []
        for key, count in self.suppressed.items():
            name, kind, dtype = key
            values = self._values.get(key)
            spread = f" ({_QUANTITY[kind]} from {min(values):.2g} to {max(values):.2g})" if values else ""
            lines.append(f"{count} further '{kind}' problem(s) of kernel '{name}' ({dtype}) not repeated{spread}")
        return "; ".join(lines)

    def as_dict(self) -> dict:
        """Plain-dict view: counts per problem and the flagged diagnostics."""
        return {
            "checked": self.checked,
            "counts": {"/".join(k): v for k, v in self.counts.items()},
            "records": [r.as_dict() for r in self.records],
        }


@contextlib.contextmanager
def collect(*, once: bool = True) -> Iterator[GuardLog]:
    """Collect the diagnostics of every check in this block; warn each problem once.

    Inside the block a problem is warned (under a "warn" policy) the first
    time for each (kernel name, kind, dtype) and counted afterwards; at the
    end one :class:`KernelWarning` summarizes the repeats. "raise" policies
    still raise at the first problem. Blocks nest; the innermost collects.

    Args:
      once: False → warn every occurrence (still recorded).

    Yields:
      The :class:`GuardLog`.
    """
    log = GuardLog(once=once)
    token = _LOG.set(log)
    try:
        yield log
    finally:
        _LOG.reset(token)
    if log.suppressed and _POLICY.get().action == "warn":
        # stacklevel 3: this generator → contextlib's __exit__ → the ``with`` statement.
        warnings.warn(f"kernelattn.kernels.guards: {log.summary()}.", KernelWarning, stacklevel=3)


def report(diag: KernelDiagnostics, pol: GuardPolicy, stacklevel: int) -> KernelDiagnostics:
    """Apply the policy to ``diag``'s problems: warn, raise or only return, and log them under :func:`collect`.

    ``stacklevel`` is as in ``warnings.warn``, counted from the public check
    that calls ``report`` (``report``'s own frame is added here).
    """
    problems = tuple(p for p in diag.problems if p.kind not in pol.ignore)
    if problems != diag.problems:
        diag = dataclasses.replace(diag, problems=problems)
    log = _LOG.get()
    if log is not None:
        log.checked += 1
        if problems:
            log.records.append(diag)
    if not problems or pol.action == "ignore":
        return diag
    if pol.action == "raise":
        head = f"kernelattn.kernels.guards: {len(problems)} problem(s) with kernel '{diag.name}':"
        raise KernelError("\n".join([head] + [f"- [{p.kind}] {p.message}" for p in problems]), diag)
    for problem in problems:
        if log is None or log._note(diag, problem):
            # +1: this function sits between warnings.warn and the public check_* function.
            warnings.warn(problem.message, KernelWarning, stacklevel=stacklevel + 1)
    return diag
