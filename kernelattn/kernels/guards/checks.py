"""The checks: is this kernel matrix fit for what is asked of it?

A kernel Θ computed in float32 can be perfectly good for ‖Θ_m − Θ_∞‖_F and
meaningless for (Θ + λI)⁻¹y: once κ(Θ) approaches 1/eps of the dtype it was
*computed* in (float32: eps ≈ 1.2e-7, so κ ≳ 1e6), its small eigenvalues are
round-off and every solve, λ_min, κ or certificate built on them is noise —
and linearized attention cubes κ (docs/math.md §3: κ(G³) = κ(G)³), so MLP-Attn
kernels cross that line at κ(G) ≈ 100. :func:`check_kernel` measures, in
float64 and with one ``eigvalsh``:

- finiteness (NaN/inf entries);
- symmetry error ‖K − Kᵀ‖_F / ‖K‖_F (a train × train NTK/Gram is symmetric);
- λ_max, λ_min and the most negative eigenvalue relative to λ_max (PSD by
  construction; negative values beyond the round-off floor mean a bug);
- κ = λ_max/λ_min, of K + λI when a ridge is given, against the limit
  ``solve_margin / eps(dtype)`` (default 0.1/eps: 8.4e5 in float32, 4.5e14 in
  float64), and the remedies that would bring it under: float64, the smallest
  ridge λ with κ(K + λI) ≤ limit, the rank of a truncation to eigenvalues above
  λ_max/limit.

eps is the *effective* epsilon of the precision the kernel was computed at
(``kernelattn._precision.effective_eps``): the dtype's at "highest" (the
default policy), TF32's 2^-10 ≈ 9.8e-4 for float32 at "fast" on a recent GPU
(bf16's 2^-7 on a TPU), so a TF32 kernel is held to κ ≤ 1e2, not 8.4e5. Every
check takes ``precision=`` (None: the policy in force, ``kernelattn.precision_policy``).

:func:`check_solve` adds what a factorization reports
(``kernelattn.kernels.linalg.factorize``: "cholesky" or "eigh-clipped") and,
optionally, the backward error of a solution. :func:`check_condition` checks a
*predicted* κ before anything is computed (κ_d(G)^(2k+1) for depth-k attention).
:func:`check_symmetry` checks only the symmetry error, in O(n²), for a solver
about to replace K by (K + Kᵀ)/2 (``kernelattn.kernels.linalg.factorize``).
Every check reports its problems through ``kernels.guards.reporting``.

Cost: one float64 copy of K, its transpose difference and one ``eigvalsh``
(O(n³), ~3 n² float64 of memory). Pass ``eigenvalues=`` when they are already
known, or ``eig=False`` (default for n > ``GuardPolicy.eig_max_n``) to keep
only the O(n²) checks (finiteness, symmetry, diagonal and 2×2-minor PSD
conditions).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import scipy.linalg

from kernelattn._precision import effective_eps, resolve_precision
from kernelattn.errors import InputValueError
from kernelattn.kernels.guards.diagnostics import KernelDiagnostics, Problem
from kernelattn.kernels.guards.remedies import (
    as_kernel_matrix,
    computed_as,
    float64_remedy,
    kernel_dtype_name,
    precision_remedy,
    ridge_for,
    sig2,
)
from kernelattn.kernels.guards.reporting import GuardPolicy, report, resolve_policy

__all__ = ["REQUESTS", "check_condition", "check_kernel", "check_solve", "check_symmetry"]

REQUESTS = ("entries", "spectrum", "solve")


def _analyse(
    k: np.ndarray,
    *,
    name: str,
    dtype: str,
    requested: str,
    symmetric: bool,
    psd: bool,
    ridge: float,
    eig: bool | None,
    eigenvalues: Any,
    pol: GuardPolicy,
    precision: str = "highest",
) -> KernelDiagnostics:
    eps = effective_eps(dtype, precision)
    n = k.shape[0]
    square = k.shape[0] == k.shape[1]
    if (symmetric or psd) and not square:
        raise InputValueError(
            f"{name}: symmetric/psd checks need a square kernel, got shape {k.shape}; "
            "pass symmetric=False, psd=False for a cross (e.g. test × train) kernel"
        )
    base: dict[str, Any] = {
        "name": name,
        "shape": tuple(k.shape),
        "dtype": dtype,
        "requested": requested,
        "ridge": float(ridge),
        "eps": eps,
        "precision": precision,
    }
    problems: list[Problem] = []
    size = f"{k.shape[0]}×{k.shape[1]}"
    where = f"kernel '{name}' ({size}, computed in {computed_as(dtype, precision)})"

    finite = np.isfinite(k)
    n_bad = int(k.size - np.count_nonzero(finite))
    if n_bad:
        problems.append(
            Problem(
                "nonfinite",
                (
                    f"{where} has {n_bad} NaN/inf entries of {k.size}. Remedy: if it overflowed, compute it in float64 "
                    "(kernelattn.enable_x64(), dtype='float64'); check the inputs for zero rows (unit-row "
                    "normalization "
                    "of a zero row gives NaN) and for NaN parameters."
                ),
                float(n_bad),
            )
        )
        return KernelDiagnostics(**base, n_nonfinite=n_bad, problems=tuple(problems))

    kd = np.asarray(k, dtype=np.float64)
    norm = float(np.linalg.norm(kd))
    if norm == 0.0:
        problems.append(
            Problem(
                "zero",
                (
                    f"{where} is identically zero. Remedy: check the model's parameters (a zero readout or zero "
                    "inputs give a zero NTK) and the scales σ_w, σ_a."
                ),
                0.0,
            )
        )
        return KernelDiagnostics(**base, problems=tuple(problems))

    symmetry_error = None
    if symmetric:
        symmetry_error = float(np.linalg.norm(kd - kd.T)) / norm
        problems += _asymmetry(symmetry_error, where, dtype, pol, cross_remedy=True, precision=precision)

    if not (square and (psd or requested != "entries")):
        return KernelDiagnostics(**base, symmetry_error=symmetry_error, problems=tuple(problems))

    psd_tol = pol.psd_rtol if pol.psd_rtol is not None else 10 * n * eps
    if eigenvalues is not None:
        values = np.sort(np.asarray(eigenvalues, dtype=np.float64).ravel())
        if values.size != n:
            raise InputValueError(f"eigenvalues: expected {n} eigenvalues of {name}, got {values.size}")
    elif eig if eig is not None else n <= pol.eig_max_n:
        values = scipy.linalg.eigvalsh((kd + kd.T) / 2, overwrite_a=True, check_finite=False)
    else:
        values = None

    if values is None:
        # O(n²) necessary conditions of PSD-ness: a non-negative diagonal and |K_ij|² ≤ K_ii K_jj.
        if psd:
            diag = np.diag(kd)
            scale = float(np.max(np.abs(diag))) or norm
            worst = float(-np.min(diag)) / scale
            if worst <= psd_tol and np.all(diag > 0):
                minor = kd**2 / np.outer(diag, diag)
                worst = max(worst, float(np.max(minor)) - 1.0)
            if worst > max(psd_tol, 1e3 * eps):
                problems.append(
                    Problem(
                        "not_psd",
                        (
                            f"{where} is not positive semi-definite: a diagonal entry or 2×2 principal minor is "
                            f"negative (violation {sig2(worst)} relative to the diagonal; eigenvalues not computed). "
                            "An NTK or Gram matrix is PSD by construction, so this signals a bug in how it was built; "
                            "pass psd=False if it is not meant to be one."
                        ),
                        worst,
                    )
                )
        return KernelDiagnostics(**base, symmetry_error=symmetry_error, problems=tuple(problems))

    lam_min, lam_max = float(values[0]), float(values[-1])
    limit = pol.kappa_limit(dtype, precision)
    out: dict[str, Any] = {"lambda_min": lam_min, "lambda_max": lam_max, "kappa_limit": limit}
    if lam_max <= 0:
        problems.append(
            Problem(
                "not_psd",
                (
                    f"{where} has no positive eigenvalue (λ_max = {sig2(lam_max)}, λ_min = {sig2(lam_min)}): it is not "
                    "a kernel matrix. Remedy: check its sign and how it was built; psd=False if it is not meant to "
                    "be PSD."
                ),
                lam_max,
            )
        )
        return KernelDiagnostics(**base, symmetry_error=symmetry_error, **out, problems=tuple(problems))

    negative_ratio = max(0.0, -lam_min) / lam_max
    kappa = lam_max / lam_min if lam_min > 0 else math.inf
    out.update(negative_ratio=negative_ratio, kappa=kappa)
    if psd and negative_ratio > psd_tol:
        problems.append(
            Problem(
                "not_psd",
                (
                    f"{where} is not positive semi-definite: its most negative eigenvalue is "
                    f"{sig2(-negative_ratio)}·λ_max (λ_min = {sig2(lam_min)}, λ_max = {sig2(lam_max)}), beyond the "
                    f"{computed_as(dtype, precision)} round-off floor {sig2(psd_tol)}·λ_max. "
                    "An NTK or Gram matrix is PSD by construction, so this "
                    "signals a bug (x1 ≠ x2, a test × train block checked as train × train, a sign); solvers would "
                    "clip these eigenvalues. Remedy: check how it was built; psd=False if it is not meant to be PSD."
                ),
                -negative_ratio,
            )
        )

    if requested == "entries":
        return KernelDiagnostics(**base, symmetry_error=symmetry_error, **out, problems=tuple(problems))

    use_ridge = ridge if requested == "solve" else 0.0
    if use_ridge > 0:
        floor = lam_min + use_ridge
        kappa_eff = (lam_max + use_ridge) / floor if floor > 0 else math.inf
    else:
        kappa_eff = kappa
    representable = kappa_eff <= limit
    out.update(kappa_effective=kappa_eff, representable=representable)
    if not representable and not any(p.kind == "not_psd" for p in problems):
        ridge_needed = ridge_for(lam_max, lam_min, limit)
        rank_needed = int(np.count_nonzero(values > lam_max / limit))
        out.update(ridge_needed=ridge_needed, rank_needed=rank_needed)
        if lam_min > 0:
            spectrum = f"κ = {sig2(kappa)} (λ_max = {sig2(lam_max)}, λ_min = {sig2(lam_min)})"
        else:
            spectrum = (
                f"κ = inf (λ_min = {sig2(lam_min)} ≤ 0 at λ_max = {sig2(lam_max)}: numerically singular "
                f"in {computed_as(dtype, precision)})"
            )
        if use_ridge > 0:
            spectrum += f"; with the ridge λ = {sig2(use_ridge)}, κ(K + λI) = {sig2(kappa_eff)}"
        use = (
            "solves with it ((K + λI)⁻¹y, influence, kernel regression)"
            if requested == "solve"
            else "its smallest eigenvalues, λ_min, κ and the certificate ‖Θ_m − Θ_∞‖₂/λ_min"
        )
        remedies = precision_remedy(dtype, precision) + float64_remedy(dtype)
        if requested == "solve":
            remedies.append(f"solve with a ridge λ ≥ {sig2(ridge_needed)} (κ(K + λI) ≤ {sig2(limit)})")
        remedies.append(
            f"truncate K to its top r = {rank_needed} of {n} eigenpairs (those above λ_max/{sig2(limit)}), "
            "or use rank-truncated attention (AttentionConfig(rank=r)) for MLP-Attn"
        )
        problems.append(
            Problem(
                "ill_conditioned",
                (
                    f"{where} is too ill-conditioned for {use} in {computed_as(dtype, precision)}: {spectrum} exceeds "
                    f"{sig2(limit)} = {sig2(pol.solve_margin)}/eps({computed_as(dtype, precision)}), so its smallest "
                    "eigenvalues are round-off. "
                    "Remedy: " + "; or ".join(remedies) + "."
                ),
                kappa_eff,
            )
        )
    return KernelDiagnostics(**base, symmetry_error=symmetry_error, **out, problems=tuple(problems))


def _asymmetry(
    symmetry_error: float, where: str, dtype: str, pol: GuardPolicy, *, cross_remedy: bool, precision: str = "highest"
) -> list[Problem]:
    """The "asymmetric" problem when ‖K − Kᵀ‖_F/‖K‖_F exceeds the policy's tolerance
    (``symmetry_rtol``, default 1000·eps: round-off); else none."""
    tol = pol.symmetry_rtol if pol.symmetry_rtol is not None else 1e3 * effective_eps(dtype, precision)
    if not symmetry_error > tol:
        return []
    cross = ", or pass symmetric=False, psd=False for a cross (test × train) kernel" if cross_remedy else ""
    return [
        Problem(
            "asymmetric",
            (
                f"{where} is not symmetric: ‖K − Kᵀ‖_F/‖K‖_F = {sig2(symmetry_error)} > {sig2(tol)} "
                f"(round-off in {computed_as(dtype, precision)}). "
                "A train × train NTK or Gram matrix is symmetric by construction and "
                "solvers use (K + Kᵀ)/2, which changes this K materially. Remedy: make sure both arguments are "
                f"the same training set in the same order (x2 = x1){cross}."
            ),
            symmetry_error,
        )
    ]


def _check_args(requested, ridge) -> tuple[str, float]:
    if requested not in REQUESTS:
        raise InputValueError(f"requested: expected one of {list(REQUESTS)} or None, got {requested!r}")
    try:
        ridge = float(ridge)
    except (TypeError, ValueError) as err:
        raise InputValueError(f"ridge: expected a number >= 0, got {ridge!r}") from err
    if not (ridge >= 0 and math.isfinite(ridge)):
        raise InputValueError(f"ridge: expected a finite number >= 0, got {ridge!r}")
    return requested, ridge


def check_kernel(
    k: Any,
    *,
    name: str,
    dtype=None,
    requested: str | None = None,
    symmetric: bool = True,
    psd: bool = True,
    ridge: float = 0.0,
    eig: bool | None = None,
    eigenvalues: Any | None = None,
    policy: GuardPolicy | str | None = None,
    stacklevel: int = 2,
    precision: str | None = None,
) -> KernelDiagnostics:
    """Check that a kernel matrix is finite, symmetric, PSD and resolvable in its dtype.

    Args:
      k: ``(n1, n2)`` kernel, or ``(n1, n2, C, C)`` (checked as ``(n1·C, n2·C)``);
        numpy or jax, any float dtype (analysed in float64).
      name: the kernel's name in messages, e.g. "theta_m (mlp-attn, m=4096)".
      dtype: the dtype it was *computed* in, "float32" or "float64"; None →
        ``k.dtype`` (pass it when a float32 kernel was converted to float64).
      requested: what it will be used for: "entries" (norms and differences
        only: no conditioning check), "spectrum" (λ_min, κ, certificates:
        κ(K) ≤ limit) or "solve" (κ(K + ridge·I) ≤ limit). None → "solve" for
        a PSD kernel, "entries" otherwise.
      symmetric: check ‖K − Kᵀ‖_F/‖K‖_F (square kernels; False for test × train).
      psd: check the most negative eigenvalue (square kernels).
      ridge: λ ≥ 0 of the solves (``requested="solve"``).
      eig: compute eigenvalues (one float64 ``eigvalsh``); None → when
        n ≤ ``policy.eig_max_n``. Without them only O(n²) checks run.
      eigenvalues: the eigenvalues of (K + Kᵀ)/2 if already known (any order).
      policy: "warn", "raise", "ignore" or a :class:`GuardPolicy`; None → the
        policy in force (``guards.policy()`` / ``guards.strict()`` blocks).
      stacklevel: as in ``warnings.warn``, counted from ``check_kernel``: 2
        (default) attributes the warning to the line calling ``check_kernel``;
        a library function wrapping it passes 3 to blame its own caller.
      precision: the matmul precision it was computed at, "highest" or
        "fast"; None → the policy in force. Sets the effective eps (TF32's
        2^-10 for float32 at "fast" on a recent GPU).

    Returns:
      :class:`KernelDiagnostics` (problems already reported per the policy).

    Raises:
      KernelError: a problem under a "raise" policy.
      ValueError / TypeError: invalid arguments.
    """
    matrix = as_kernel_matrix(k, name)
    dtype = kernel_dtype_name(dtype, matrix)
    precision = resolve_precision(precision)
    requested, ridge = _check_args(requested if requested is not None else ("solve" if psd else "entries"), ridge)
    pol = resolve_policy(policy)
    diag = _analyse(
        matrix,
        name=name,
        dtype=dtype,
        requested=requested,
        symmetric=symmetric,
        psd=psd,
        ridge=ridge,
        eig=eig,
        eigenvalues=eigenvalues,
        pol=pol,
        precision=precision,
    )
    return report(diag, pol, stacklevel)


def check_symmetry(
    k: Any,
    *,
    name: str,
    dtype=None,
    policy: GuardPolicy | str | None = None,
    stacklevel: int = 2,
    precision: str | None = None,
) -> KernelDiagnostics:
    """Check only that a square kernel is symmetric up to round-off: O(n²), no eigenvalues.

    For solvers about to replace K by (K + Kᵀ)/2: an "asymmetric" problem,
    naming ‖K − Kᵀ‖_F/‖K‖_F, when that exceeds the policy's ``symmetry_rtol``
    (default 1000·eps(dtype)), reported like every other problem (a
    :class:`KernelWarning`, or :class:`KernelError` under ``strict()``).

    Args:
      k: ``(n, n)`` kernel (or ``(n, n, C, C)``, checked as ``(n·C, n·C)``).
      name, dtype, policy, stacklevel, precision: as in :func:`check_kernel`.

    Returns:
      :class:`KernelDiagnostics` with ``symmetry_error`` (problems already reported per the policy).
    """
    matrix = as_kernel_matrix(k, name)
    dtype = kernel_dtype_name(dtype, matrix)
    precision = resolve_precision(precision)
    if matrix.shape[0] != matrix.shape[1]:
        raise InputValueError(f"{name}: expected a square (n, n) kernel, got shape {matrix.shape}")
    pol = resolve_policy(policy)
    kd = np.asarray(matrix, dtype=np.float64)
    norm = float(np.linalg.norm(kd))
    symmetry_error = float(np.linalg.norm(kd - kd.T)) / norm if norm > 0 else 0.0
    where = f"kernel '{name}' ({matrix.shape[0]}×{matrix.shape[1]}, computed in {computed_as(dtype, precision)})"
    diag = KernelDiagnostics(
        name=name,
        shape=tuple(matrix.shape),
        dtype=dtype,
        requested="entries",
        eps=effective_eps(dtype, precision),
        symmetry_error=symmetry_error,
        precision=precision,
        problems=tuple(_asymmetry(symmetry_error, where, dtype, pol, cross_remedy=False, precision=precision)),
    )
    return report(diag, pol, stacklevel)


def check_solve(
    k: Any,
    ridge: float = 0.0,
    *,
    name: str,
    factorization: Any | None = None,
    method: str | None = None,
    clipped: int | None = None,
    rhs: Any | None = None,
    solution: Any | None = None,
    dtype=None,
    eig: bool | None = None,
    eigenvalues: Any | None = None,
    policy: GuardPolicy | str | None = None,
    stacklevel: int = 2,
    precision: str | None = None,
) -> KernelDiagnostics:
    """Check a solve with K + λI: the kernel's fitness, the method that ran, the backward error.

    Args:
      k: ``(n, n)`` kernel that was (or will be) solved with.
      ridge: λ ≥ 0 added to its diagonal.
      name: the kernel's name in messages.
      factorization: the ``kernelattn.kernels.linalg.Factorization`` used (its
        ``method`` and ``clipped`` are read), or None.
      method: "cholesky" or "eigh-clipped" when no factorization is given.
      clipped: eigenvalues the fallback clipped (with ``method``).
      rhs, solution: b and x of (K + λI) x = b, to measure the normwise
        backward error ‖b − (K + λI)x‖_F / (‖K + λI‖_F‖x‖_F + ‖b‖_F).
      dtype, eig, eigenvalues, policy, stacklevel, precision: as in :func:`check_kernel`.

    Returns:
      :class:`KernelDiagnostics` with ``method``, ``clipped`` and ``backward_error``.
    """
    matrix = as_kernel_matrix(k, name)
    dtype = kernel_dtype_name(dtype, matrix)
    precision = resolve_precision(precision)
    _, ridge = _check_args("solve", ridge)
    if factorization is not None:
        method = getattr(factorization, "method", method)
        clipped = getattr(factorization, "clipped", clipped)
        ridge_f = getattr(factorization, "ridge", None)
        if ridge_f is not None and ridge == 0.0:
            ridge = float(ridge_f)
    if method is not None and method not in ("cholesky", "eigh-clipped"):
        raise InputValueError(f"method: expected 'cholesky' or 'eigh-clipped', got {method!r}")
    pol = resolve_policy(policy)
    diag = _analyse(
        matrix,
        name=name,
        dtype=dtype,
        requested="solve",
        symmetric=True,
        psd=True,
        ridge=ridge,
        eig=eig,
        eigenvalues=eigenvalues,
        pol=pol,
        precision=precision,
    )
    problems = list(diag.problems)
    where = (
        f"solve with kernel '{name}' + {sig2(ridge)}·I ({matrix.shape[0]}×{matrix.shape[1]}, computed in "
        f"{computed_as(dtype, precision)})"
    )
    if method == "eigh-clipped":
        need = f"a ridge λ ≥ {sig2(diag.ridge_needed)}" if diag.ridge_needed else "a larger ridge"
        problems.append(
            Problem(
                "clipped",
                (
                    f"{where} fell back from Cholesky to a clipped eigen-decomposition: "
                    f"{clipped if clipped is not None else 'some'} eigenvalue(s) raised to the floor because K + λI is "
                    "not positive definite in float64, so the result solves a modified system. Remedy: "
                    + "; or ".join(
                        [need, *precision_remedy(dtype, precision), *float64_remedy(dtype), "a rank truncation of K"]
                    )
                    + "."
                ),
                float(clipped) if clipped is not None else None,
            )
        )
    backward = None
    if rhs is not None and solution is not None:
        b = np.asarray(rhs, np.float64)
        x = np.asarray(solution, np.float64)
        kd = np.asarray(matrix, np.float64)
        a_x = ((kd + kd.T) / 2) @ x + ridge * x
        a_norm = float(np.linalg.norm(kd)) + ridge * math.sqrt(kd.shape[0])
        denominator = a_norm * float(np.linalg.norm(x)) + float(np.linalg.norm(b))
        backward = float(np.linalg.norm(b - a_x)) / denominator if denominator > 0 else 0.0
        if backward > pol.backward_rtol:
            problems.append(
                Problem(
                    "backward_error",
                    (
                        f"{where} has backward error {sig2(backward)} > {sig2(pol.backward_rtol)}: the solution does "
                        f"not solve (K + λI)x = b to float64 accuracy (method: {method or 'unknown'}). Remedy: a "
                        "larger ridge, float64 kernels, or a rank truncation."
                    ),
                    backward,
                )
            )
    diag = dataclasses.replace(diag, problems=tuple(problems), method=method, clipped=clipped, backward_error=backward)
    return report(diag, pol, stacklevel)


def check_condition(
    kappa: float,
    *,
    name: str,
    dtype,
    power: float = 1.0,
    requested: str = "solve",
    policy: GuardPolicy | str | None = None,
    stacklevel: int = 2,
    precision: str | None = None,
) -> KernelDiagnostics:
    """Check a *predicted* condition number κ^power before computing a kernel in ``dtype``.

    Linearized attention of depth k maps the Gram matrix G to G^(2k+1)
    (docs/math.md §3), so MLP-Attn kernels inherit κ_d(G)^3: ``check_condition(
    report.kappa_d, power=3, name=..., dtype="float32")`` warns before a
    float32 computation that cannot resolve them.

    Args:
      kappa: condition number of the inputs, e.g. ``conditionreport(x).kappa_d``.
      name: the kernel's name in messages.
      dtype: the dtype it will be computed in.
      power: κ is raised to this power (2k + 1 for depth-k attention).
      requested: "spectrum" or "solve" (for messages).
      policy, stacklevel, precision: as in :func:`check_kernel` (``precision``:
        the one it will be computed at).
    """
    dtype = kernel_dtype_name(dtype, np.zeros(0))
    precision = resolve_precision(precision)
    if requested not in ("spectrum", "solve"):
        raise InputValueError(f"requested: expected 'spectrum' or 'solve', got {requested!r}")
    kappa, power = float(kappa), float(power)
    if not kappa >= 1:
        raise InputValueError(f"kappa: expected a condition number >= 1, got {kappa!r}")
    pol = resolve_policy(policy)
    limit = pol.kappa_limit(dtype, precision)
    predicted = math.inf if math.isinf(kappa) else math.exp(min(power * math.log(kappa), 709.0))
    problems = []
    if predicted > limit:
        powered = f"κ^{power:g} = ({sig2(kappa)})^{power:g}" if power != 1 else "κ"
        remedies = (
            precision_remedy(dtype, precision)
            + float64_remedy(dtype)
            + [f"a ridge λ ≥ {sig2(1 / (limit - 1))}·λ_max", "rank-truncated attention (AttentionConfig(rank=r))"]
        )
        computed = computed_as(dtype, precision)
        problems.append(
            Problem(
                "ill_conditioned",
                (
                    f"kernel '{name}' (to be computed in {computed}) has predicted condition number {powered} = "
                    f"{sig2(predicted)} > {sig2(limit)} = {sig2(pol.solve_margin)}/eps({computed})"
                    + (" (linearized attention raises κ(G) to the power 2k + 1)" if power != 1 else "")
                    + f", beyond what {computed} resolves for "
                    + ("solves" if requested == "solve" else "λ_min, κ and certificates")
                    + ". Remedy: "
                    + "; or ".join(remedies)
                    + "."
                ),
                predicted,
            )
        )
    diag = KernelDiagnostics(
        name=name,
        shape=(),
        dtype=dtype,
        requested=requested,
        kappa=predicted,
        kappa_effective=predicted,
        kappa_limit=limit,
        representable=predicted <= limit,
        eps=effective_eps(dtype, precision),
        precision=precision,
        problems=tuple(problems),
    )
    return report(diag, pol, stacklevel)
