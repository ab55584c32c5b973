"""Numerical guard-rails (kernelattn.kernels.guards): what is flagged, the messages, the policies."""

import math
import warnings

import numpy as np
import pytest

from kernelattn.kernels import guards
from kernelattn.kernels.guards import GuardPolicy, KernelError, KernelWarning, check_condition, check_kernel, check_solve
from kernelattn.kernels.linalg import factorize


def spd(n: int, kappa: float, seed: int = 0) -> np.ndarray:
    """Symmetric positive definite (n, n) float64 with eigenvalues geometric on [1/κ, 1]."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    k = (q * np.geomspace(1.0, 1.0 / kappa, n)) @ q.T
    return (k + k.T) / 2


def kernel_warnings(caught) -> list:
    return [w for w in caught if issubclass(w.category, KernelWarning)]


def run_quietly(fn, *args, **kwargs):
    """Call ``fn`` with every KernelWarning recorded; return (result, kernel warnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    return result, kernel_warnings(caught)


# --------------------------------------------------------------------------- healthy


@pytest.mark.parametrize("kappa", [1.0, 1e3, 1e9, 1e12])
def test_well_conditioned_float64_kernels_give_no_warning(kappa):
    k = spd(40, kappa)
    diag, caught = run_quietly(check_kernel, k, name="theta_inf", dtype="float64")
    assert caught == []
    assert diag.ok and diag.representable
    assert diag.symmetry_error == pytest.approx(0.0, abs=1e-15)
    assert diag.kappa == pytest.approx(kappa, rel=1e-3)
    assert diag.lambda_max == pytest.approx(1.0, rel=1e-12)
    assert diag.negative_ratio == 0.0


def test_well_conditioned_float32_kernel_gives_no_warning():
    diag, caught = run_quietly(check_kernel, spd(40, 1e3).astype(np.float32), name="theta_m")
    assert caught == [] and diag.ok and diag.dtype == "float32"


def test_jax_and_full_output_kernels_are_accepted():
    import jax.numpy as jnp

    k = spd(12, 10.0)
    full = np.einsum("ij,cd->ijcd", k, np.eye(3))  # Θ ⊗ I_C, shape (n, n, C, C)
    for value in (jnp.asarray(k), full):
        diag, caught = run_quietly(check_kernel, value, name="k")
        assert caught == [] and diag.ok
    assert check_kernel(full, name="k").shape == (36, 36)


# --------------------------------------------------------------------------- flagged


def test_non_symmetric_kernel_is_flagged():
    k = spd(30, 10.0)
    k[0, 1] += 0.5
    diag, caught = run_quietly(check_kernel, k, name="theta_bad", psd=False)
    assert diag.kinds == ("asymmetric",)
    assert diag.symmetry_error > 0.1
    (w,) = caught
    message = str(w.message)
    assert "kernel 'theta_bad'" in message and "not symmetric" in message
    assert f"{diag.symmetry_error:.2g}" in message
    assert "symmetric=False, psd=False" in message  # the remedy for a cross kernel


def test_non_psd_kernel_is_flagged():
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(30, 30)))
    values = np.linspace(1.0, 0.1, 30)
    values[-1] = -0.2
    k = (q * values) @ q.T
    k = (k + k.T) / 2
    diag, caught = run_quietly(check_kernel, k, name="theta_neg")
    assert diag.kinds == ("not_psd",)
    assert diag.negative_ratio == pytest.approx(0.2, rel=1e-10)
    assert diag.lambda_min == pytest.approx(-0.2, rel=1e-10)
    (w,) = caught
    assert "not positive semi-definite" in str(w.message) and "-0.2·λ_max" in str(w.message)
    # psd=False: the same matrix is only checked for symmetry.
    diag, caught = run_quietly(check_kernel, k, name="theta_neg", psd=False)
    assert caught == [] and diag.ok


def test_float32_ill_conditioned_kernel_is_flagged_with_remedies():
    k = spd(50, 1e9)
    diag, caught = run_quietly(check_kernel, k.astype(np.float32), name="theta_m mlp-attn")
    assert diag.kinds == ("ill_conditioned",)
    assert not diag.representable
    assert diag.kappa_limit == pytest.approx(0.1 / np.finfo(np.float32).eps)
    assert diag.kappa > diag.kappa_limit
    # Remedies: the ridge brings κ(K + λI) to the limit, the rank keeps eigenvalues above λ_max/limit.
    assert (diag.lambda_max + diag.ridge_needed) / (max(diag.lambda_min, 0) + diag.ridge_needed) == pytest.approx(
        diag.kappa_limit, rel=1e-9)
    assert 0 < diag.rank_needed < 50
    (w,) = caught
    message = str(w.message)
    for expected in ("kernel 'theta_m mlp-attn'", "computed in float32", f"κ = {diag.kappa:.2g}",
                     "kernelattn.enable_x64()", f"ridge λ ≥ {diag.ridge_needed:.2g}",
                     f"top r = {diag.rank_needed}"):
        assert expected in message, expected
    # The same matrix computed in float64 is fine: κ = 1e9 ≪ 4.5e14.
    diag, caught = run_quietly(check_kernel, k, name="theta_m mlp-attn")
    assert caught == [] and diag.ok


def test_dtype_argument_is_the_computation_dtype():
    # A float32 kernel converted to float64 afterwards is still judged by float32's epsilon.
    k32 = spd(50, 1e9).astype(np.float32).astype(np.float64)
    diag, caught = run_quietly(check_kernel, k32, name="k", dtype="float32")
    assert diag.kinds == ("ill_conditioned",) and len(caught) == 1
    with pytest.raises(ValueError, match="dtype"):
        check_kernel(k32, name="k", dtype="float16")


def test_ridge_and_requested_quantity():
    k = spd(50, 1e9).astype(np.float32)
    # A ridge large enough makes the solve fine; the spectrum (λ_min, κ) is still unresolvable.
    diag, caught = run_quietly(check_kernel, k, name="k", ridge=1e-3)
    assert caught == [] and diag.kappa_effective < diag.kappa_limit
    diag, caught = run_quietly(check_kernel, k, name="k", ridge=1e-3, requested="spectrum")
    assert diag.kinds == ("ill_conditioned",) and "λ_min, κ and the certificate" in str(caught[0].message)
    diag, caught = run_quietly(check_kernel, k, name="k", requested="entries")
    assert caught == [] and diag.kappa_effective is None


def test_singular_float32_kernel_reports_round_off_not_a_bug():
    x = np.random.default_rng(2).normal(size=(60, 5))
    k = (x @ x.T).astype(np.float32)  # rank 5: numerically singular, tiny negative eigenvalues
    diag, caught = run_quietly(check_kernel, k, name="gram")
    assert diag.kinds == ("ill_conditioned",)
    assert diag.kappa == math.inf or diag.kappa > 1e6
    assert diag.rank_needed == 5


def test_nonfinite_and_zero_kernels():
    k = spd(10, 10.0)
    k[3, 4] = np.nan
    diag, caught = run_quietly(check_kernel, k, name="k")
    assert diag.kinds == ("nonfinite",) and diag.n_nonfinite == 1 and "NaN/inf" in str(caught[0].message)
    diag, _ = run_quietly(check_kernel, np.zeros((5, 5)), name="k")
    assert diag.kinds == ("zero",)


def test_cross_kernel_needs_symmetric_false():
    k = np.random.default_rng(0).normal(size=(7, 5))
    with pytest.raises(ValueError, match="symmetric=False, psd=False"):
        check_kernel(k, name="k_test_train")
    diag, caught = run_quietly(check_kernel, k, name="k_test_train", symmetric=False, psd=False)
    assert caught == [] and diag.ok


def test_without_eigenvalues_the_cheap_checks_still_run():
    k = spd(30, 1e9).astype(np.float32)
    diag, caught = run_quietly(check_kernel, k, name="k", eig=False)
    assert caught == [] and diag.lambda_min is None and diag.representable is None
    bad = spd(30, 10.0)
    bad[2, 2] = -0.5
    diag, _ = run_quietly(check_kernel, bad, name="k", eig=False)
    assert diag.kinds == ("not_psd",)
    minor = spd(30, 10.0)
    minor[0, 1] = minor[1, 0] = 2.0  # |K_01|² > K_00 K_11
    diag, _ = run_quietly(check_kernel, minor, name="k", eig=False)
    assert diag.kinds == ("not_psd",)
    # eig=None skips eigenvalues above the policy's size limit.
    diag, _ = run_quietly(check_kernel, k, name="k", policy=GuardPolicy(eig_max_n=10))
    assert diag.lambda_min is None


def test_precomputed_eigenvalues_are_used():
    k = spd(20, 1e3)
    values = np.linalg.eigvalsh(k)[::-1]
    diag = check_kernel(k, name="k", eigenvalues=values)
    assert diag.kappa == pytest.approx(values[0] / values[-1])
    with pytest.raises(ValueError, match="eigenvalues"):
        check_kernel(k, name="k", eigenvalues=values[:5])


# --------------------------------------------------------------------------- policy


def two_identical_checks(k):
    for _ in range(2):
        check_kernel(k, name="theta_m", dtype="float32")  # one call site


def test_warns_once_per_problem_and_call_site():
    k = spd(50, 1e9).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's default action for RuntimeWarning
        two_identical_checks(k)
    assert len(kernel_warnings(caught)) == 1
    # The filters are Python's: "always" shows both, "error" raises the warning.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        two_identical_checks(k)
    assert len(kernel_warnings(caught)) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelWarning)
        with pytest.raises(KernelWarning):
            two_identical_checks(k)


def test_warning_points_at_the_caller():
    _, (w,) = run_quietly(check_kernel, spd(50, 1e9).astype(np.float32), name="k")
    assert w.filename == __file__ or w.filename.endswith("test_guards.py")

    def library_function(k):
        return check_kernel(k, name="k", stacklevel=3)  # blame library_function's caller

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = __import__("inspect").currentframe().f_lineno + 1
        library_function(spd(50, 1e9).astype(np.float32))
    assert kernel_warnings(caught)[0].lineno == line


def test_strict_raises_kernel_error_naming_kernel_and_remedy():
    k = spd(50, 1e9).astype(np.float32)
    with guards.strict():
        assert guards.current_policy().action == "raise"
        with pytest.raises(KernelError) as info:
            check_kernel(k, name="theta_m (mlp-attn, m=4096)")
    assert guards.current_policy().action == "warn"  # restored on exit
    error = info.value
    assert isinstance(error, ValueError)
    message = str(error)
    assert "theta_m (mlp-attn, m=4096)" in message and "ill_conditioned" in message
    assert "enable_x64" in message and "ridge λ ≥" in message
    assert error.diagnostics.kinds == ("ill_conditioned",)
    with pytest.raises(KernelError, match="not symmetric"):
        bad = spd(10, 2.0)
        bad[0, 1] = 3.0
        check_kernel(bad, name="k", policy="raise")


def test_policy_block_and_ignore():
    k = spd(50, 1e9).astype(np.float32)
    with guards.policy("ignore"):
        diag, caught = run_quietly(check_kernel, k, name="k")
    assert caught == [] and diag.kinds == ("ill_conditioned",)  # reported in the diagnostics only
    with guards.policy(ignore=("ill_conditioned",)):
        diag, caught = run_quietly(check_kernel, k, name="k")
    assert caught == [] and diag.ok
    with guards.policy(solve_margin=1.0):
        assert guards.current_policy().kappa_limit("float32") == pytest.approx(1 / np.finfo(np.float32).eps)
    with pytest.raises(ValueError, match="action"):
        GuardPolicy(action="shout")
    with pytest.raises(ValueError, match="ignore"):
        GuardPolicy(ignore=("typo",))
    with pytest.raises(ValueError, match="policy"):
        check_kernel(k, name="k", policy=3)


def test_collect_warns_once_per_problem_and_summarizes_repeats():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with guards.collect() as log:
            for seed in range(3):  # numbers differ from cell to cell
                check_kernel(spd(50, 1e9, seed=seed).astype(np.float32), name="theta_m")
            check_kernel(spd(20, 10.0), name="theta_inf")
    messages = [str(w.message) for w in kernel_warnings(caught)]
    assert len(messages) == 2
    assert "kernel 'theta_m'" in messages[0]
    assert "2 further 'ill_conditioned' problem(s) of kernel 'theta_m' (float32)" in messages[1]
    assert log.checked == 4 and len(log.records) == 3
    assert log.counts == {("theta_m", "ill_conditioned", "float32"): 3}
    assert log.as_dict()["counts"] == {"theta_m/ill_conditioned/float32": 3}


# ---------------------------------------------------------------------- solves, predictions


def test_check_solve_reports_cholesky():
    k = spd(30, 1e4)
    y = np.random.default_rng(0).normal(size=(30, 2))
    f = factorize(k, 1e-6)
    x = f.solve(y)
    diag, caught = run_quietly(check_solve, k, 1e-6, name="k_train", factorization=f, rhs=y, solution=x)
    assert caught == [] and diag.ok
    assert diag.method == "cholesky" and diag.clipped == 0 and diag.ridge == 1e-6
    assert diag.backward_error < 1e-14
    diag, caught = run_quietly(check_solve, k, 1e-6, name="k_train", method="cholesky", rhs=y, solution=x + 1e-3)
    assert diag.kinds == ("backward_error",) and "backward error" in str(caught[0].message)


def test_check_solve_flags_the_clipped_fallback():
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(20, 20)))
    values = np.linspace(1.0, 0.1, 20)
    values[-3:] = -1e-3
    k = (q * values) @ q.T
    k = (k + k.T) / 2
    with pytest.warns(RuntimeWarning, match="not positive definite"):
        f = factorize(k, 0.0)
    assert f.method == "eigh-clipped"
    diag, caught = run_quietly(check_solve, k, name="k_train", factorization=f, policy=GuardPolicy(ignore=("not_psd",)))
    assert diag.method == "eigh-clipped" and diag.clipped == 3
    assert diag.kinds == ("clipped",)
    assert "fell back from Cholesky" in str(caught[0].message) and "3 eigenvalue(s)" in str(caught[0].message)
    with pytest.raises(ValueError, match="method"):
        check_solve(k, name="k", method="lu")


def test_check_symmetry_measures_only_the_asymmetry():
    k = spd(20, 1e9)  # ill-conditioned, but symmetric: not this check's business
    diag, caught = run_quietly(guards.check_symmetry, k, name="k")
    assert caught == [] and diag.ok and diag.symmetry_error == 0.0 and diag.lambda_min is None
    k[0, 1] += 0.5
    diag, caught = run_quietly(guards.check_symmetry, k, name="k")
    assert diag.kinds == ("asymmetric",)
    assert diag.symmetry_error == pytest.approx(np.linalg.norm(k - k.T) / np.linalg.norm(k))
    (w,) = caught
    assert f"‖K − Kᵀ‖_F/‖K‖_F = {diag.symmetry_error:.2g}" in str(w.message)
    assert "symmetric=False" not in str(w.message)  # no such argument for a solver
    with guards.policy(symmetry_rtol=1.0):
        assert run_quietly(guards.check_symmetry, k, name="k")[1] == []
    with pytest.raises(ValueError, match=r"k: expected a square \(n, n\) kernel, got shape \(2, 3\)"):
        guards.check_symmetry(np.ones((2, 3)), name="k")


def test_factorize_reports_the_asymmetry_it_would_symmetrize_away():
    k = spd(20, 10.0)
    k[0, 1] += 0.5
    relative = np.linalg.norm(k - k.T) / np.linalg.norm(k)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f = factorize(k, 1e-3, name="k_train")
    (w,) = kernel_warnings(caught)
    assert w.filename == __file__  # blames the caller of factorize
    assert "kernel 'k_train'" in str(w.message) and f"= {relative:.2g} >" in str(w.message)
    b = np.ones(20)
    np.testing.assert_allclose(f.solve(b), np.linalg.solve((k + k.T) / 2 + 1e-3 * np.eye(20), b), rtol=1e-10)
    with guards.strict(), pytest.raises(KernelError, match=r"\[asymmetric\] kernel 'k_train'"):
        factorize(k, 1e-3, name="k_train")
    # The clipped fallback does not report the asymmetry a second time.
    bad = np.diag(np.linspace(1.0, -0.5, 20))
    bad[0, 1] = 0.5
    _, caught = run_quietly(factorize, bad, 0.0, name="k_train")
    assert len([w for w in caught if "not symmetric" in str(w.message)]) == 1


def test_factorize_tolerates_round_off_of_the_dtype_the_kernel_was_computed_in():
    k = spd(20, 10.0)
    near = k + 1e-15 * np.triu(np.ones_like(k), 1)  # float64 round-off
    k32 = k.astype(np.float32)
    k32[0, 1] = np.nextafter(k32[0, 1], np.float32(np.inf))  # one float32 ulp
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelWarning)
        factorize(near, 1e-3)
        factorize(k32, 1e-3)
        factorize(k32.astype(np.float64), 1e-3)  # a float32 kernel cast to float64 is judged as float32
    with pytest.warns(KernelWarning, match="round-off in float64"):
        factorize(k32.astype(np.float64), 1e-3, dtype="float64")


def test_check_condition_predicts_attention_cubing():
    diag, caught = run_quietly(check_condition, 200.0, name="G³ (attention Gram)", dtype="float32", power=3)
    assert diag.kinds == ("ill_conditioned",) and diag.kappa == pytest.approx(8e6)
    message = str(caught[0].message)
    assert "(2e+02)^3" in message and "2k + 1" in message and "enable_x64" in message
    diag, caught = run_quietly(check_condition, 200.0, name="G³", dtype="float64", power=3)
    assert caught == [] and diag.ok
    with pytest.raises(ValueError, match="kappa"):
        check_condition(0.5, name="G", dtype="float64")
