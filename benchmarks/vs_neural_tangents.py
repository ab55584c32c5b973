"""kernelattn's empirical NTKs against neural-tangents' three implementations, side by side.

Runs in the legacy environment (neural-tangents 0.6.5 needs jax 0.4.25):

    bash scripts/legacy_env.sh
    .venv-legacy/bin/python benchmarks/vs_neural_tangents.py            # n = 200 and 1000
    .venv-legacy/bin/python benchmarks/vs_neural_tangents.py --quick    # n = 200 only

Model: the 2L-ReLU head of MATH.md §5 with the paper's fixed ±1 readout (only
W trained), C = 1, d = 784, float32, widths m ∈ {256, 1024, 4096}; one
training set of n unit-norm rows; the kernel is the (n, n) train NTK. Every
method gets the same inputs and parameters in the same process, is called in
its function form (kernelattn's ``head_ntk_fn`` and ``autodiff_ntk_fn``,
neural-tangents' ``empirical_ntk_fn``: no per-call input checks or memory
planning, which add ~2 ms to kernelattn's checked calls), jitted and warmed
up; then the methods of one (n, m) are timed in interleaved rounds (so
background load hits them alike), the median of ``--fast-repeats`` runs
for methods under ``--fast-s`` and of ``--repeats`` runs otherwise; a method
whose warm-up run exceeds ``--long-run-s`` is timed by that one run (its
compile time is negligible next to it):

- kernelattn structured: ``head_ntk_fn`` (the closed form, MATH.md §7);
- kernelattn generic: ``autodiff_ntk_fn`` "factored" (structured derivatives
  read off the model's jaxpr, model-agnostic), "jacobian" (whole batch, and
  row by row with ``row_block=50``) and "ntvp";
- neural-tangents: ``empirical_ntk_fn`` JACOBIAN_CONTRACTION,
  NTK_VECTOR_PRODUCTS, STRUCTURED_DERIVATIVES on kernelattn's own apply.

"max rel diff" is max |Θ − Θ_ref| / max |Θ_ref| against the closed form in
float64 numpy. A method whose predicted memory exceeds ``--max-mem-frac`` of
the available RAM, or whose predicted time (extrapolated from the previous
width) exceeds ``--budget-s``, is skipped and says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import kernelattn as ka
from kernelattn.kernels import nt_backend
from kernelattn.kernels.empirical import autodiff_ntk_fn, head_ntk_fn

D = 784
OUT_DIM = 1
WIDTHS = (256, 1024, 4096)
SIZES = (200, 1000)
NT_METHODS = tuple(f"NT {impl}" for impl in nt_backend.IMPLEMENTATIONS)
GENERIC = ("factored", "jacobian", "ntvp")
ROW_BLOCK = 50
ROW_BY_ROW = f"kernelattn generic (jacobian, row_block={ROW_BLOCK})"


# ------------------------------------------------------------------------ benchmark


@dataclasses.dataclass
class Row:
    """One timed method at one (n, m)."""

    n: int
    m: int
    method: str
    seconds: float | None = None
    runs: int = 0
    max_rel_diff: float | None = None
    note: str = ""


def reference_ntk(x: np.ndarray, w: np.ndarray, a: np.ndarray, head: ka.HeadConfig) -> np.ndarray:
    """Closed-form Θ_W (fixed readout, no bias) in float64 numpy: the accuracy reference."""
    x64, w64, a64 = (np.asarray(v, np.float64) for v in (x, w, a))
    d = x64.shape[1]
    hidden = head.sigma_w * (x64 @ w64) / math.sqrt(d)
    sa = (hidden > 0) * a64[:, 0]
    return head.sigma_a**2 / head.width * (sa @ sa.T) * (head.sigma_w**2 * (x64 @ x64.T) / d)


def warm_up(fn: Callable[[], jax.Array]) -> tuple[float, jax.Array]:
    """One run including compilation: ``(seconds, output)``."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - start, out


def timed(fn: Callable[[], jax.Array]) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def interleaved_medians(fns: dict, repeats: int, fast_repeats: int, fast_s: float) -> dict[str, tuple[float, int]]:
    """Median time of each warmed-up method over rounds that interleave the methods.

    Interleaving spreads the machine's background load evenly over the methods;
    methods faster than ``fast_s`` get ``fast_repeats`` rounds, others ``repeats``.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(max(repeats, fast_repeats)):
        for name, (fn, fast) in fns.items():
            if round_ < (fast_repeats if fast else repeats):
                times[name].append(timed(fn))
    return {name: (statistics.median(t), len(t)) for name, t in times.items()}


def memory_bytes(method: str, n: int, m: int) -> float:
    """Rough peak memory of a method (float32), for the skip rule."""
    params = D * m
    jac = n * OUT_DIM * params * 4
    return {
        "kernelattn generic (jacobian)": 2.2 * jac,  # J(x1) and J(x2) = J(x1) again, + contraction
        ROW_BY_ROW: 2.2 * jac,
        "kernelattn generic (ntvp)": 3 * n * m * 4 + params * 4 * 3,
        "NT JACOBIAN_CONTRACTION": 2.2 * jac,
        "NT NTK_VECTOR_PRODUCTS": 2.6 * jac,  # vmapped tangents, one per column (33 GB at n=1000, m=4096)
    }.get(method, 6 * (n * n + n * max(m, D)) * 4 + 2 * params * 4)


def available_bytes() -> float:
    try:
        import psutil

        return float(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil is a kernelattn dependency
        return 8e9


def methods_for(model, variables, head, x) -> dict[str, Callable[[], jax.Array]]:
    """The timed callables, every one already bound to the same inputs and parameters."""
    head_vars = ka.head_variables(variables)
    apply_fn, params = ka.model_apply_fn(model, variables)
    xj = jnp.asarray(x)
    structured = jax.jit(head_ntk_fn, static_argnums=1)
    methods = {"kernelattn structured": lambda: structured(head_vars, head, xj)}
    for impl in GENERIC:
        ntk_fn = jax.jit(autodiff_ntk_fn(apply_fn, implementation=impl))
        methods[f"kernelattn generic ({impl})"] = (lambda f: (lambda: f(params, xj)))(ntk_fn)
    row_by_row = jax.jit(autodiff_ntk_fn(apply_fn, implementation="jacobian", row_block=ROW_BLOCK))
    methods[ROW_BY_ROW] = lambda: row_by_row(params, xj)
    for impl in nt_backend.IMPLEMENTATIONS:
        ntk_fn, nt_params = nt_backend.empirical_ntk_fn_nt(model, variables, implementation=impl)
        methods[f"NT {impl}"] = (lambda f, p: (lambda: f(xj, None, p)))(ntk_fn, nt_params)
    return methods


def run(sizes, widths, args) -> list[Row]:
    """Time every method at every (n, m); see the module docstring for the rules."""
    rows: list[Row] = []
    last_time: dict[tuple[int, str], tuple[int, float]] = {}
    for n in sizes:
        rng = np.random.default_rng(args.seed + n)
        x = rng.normal(size=(n, D))
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        for m in widths:
            head = ka.HeadConfig(width=m, out_dim=OUT_DIM)
            model = ka.TwoLayerReLU(head, jnp.float32)
            variables = model.init(jax.random.PRNGKey(args.seed), jnp.asarray(x))
            head_vars = ka.head_variables(variables)
            reference = reference_ntk(x, head_vars["W"], head_vars["a"], head)
            group: dict[str, Row] = {}
            to_time: dict = {}
            for method, fn in methods_for(model, variables, head, x).items():
                row = group[method] = Row(n, m, method)
                need = memory_bytes(method, n, m)
                previous = last_time.get((n, method))
                predicted = None if previous is None else previous[1] * m / previous[0]
                if need > args.max_mem_frac * available_bytes():
                    row.note = f"skipped: needs ~{need / 1e9:.0f} GB"
                elif predicted is not None and predicted > args.budget_s:
                    row.note = f"skipped: predicted ~{predicted:.0f} s/run"
                else:
                    try:
                        seconds, out = warm_up(fn)
                    except Exception as err:  # OOM and the like: report, go on
                        row.note = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:60]}"
                    else:
                        row.max_rel_diff = float(
                            np.max(np.abs(np.asarray(out, np.float64) - reference)) / np.max(np.abs(reference))
                        )
                        if seconds > args.long_run_s:  # compile is negligible here: keep the one run
                            row.seconds, row.runs, row.note = seconds, 1, "1 run (incl. compile)"
                            last_time[(n, method)] = (m, seconds)
                        else:
                            to_time[method] = (fn, seconds < args.fast_s)
                print(f"  n={n:5d} m={m:5d} {method:44s} warm-up done {row.note}", file=sys.stderr, flush=True)
            for method, (median, runs) in interleaved_medians(
                to_time, args.repeats, args.fast_repeats, args.fast_s
            ).items():
                group[method].seconds, group[method].runs = median, runs
                last_time[(n, method)] = (m, median)
            rows.extend(group.values())
            print(table(list(group.values())), file=sys.stderr, flush=True)
    return rows


def _fmt_time(row: Row) -> str:
    if row.seconds is None:
        return "       -"
    return f"{row.seconds:8.4f}" if row.seconds < 100 else f"{row.seconds:8.1f}"


def table(rows: list[Row]) -> str:
    """The results as a fixed-width text table, with the ratio to NT's fastest per (n, m)."""
    lines = [
        f"{'n':>5} {'m':>5}  {'method':44s} {'time s':>9} {'runs':>4} {'÷ NT best':>10} {'max rel diff':>12}  note",
        "-" * 112,
    ]
    for (n, m) in sorted({(r.n, r.m) for r in rows}):
        group = [r for r in rows if (r.n, r.m) == (n, m)]
        nt_times = [r.seconds for r in group if r.method in NT_METHODS and r.seconds is not None]
        best = min(nt_times) if nt_times else None
        for r in group:
            ratio = "-" if r.seconds is None or best is None else f"{r.seconds / best:10.4g}"
            diff = "-" if r.max_rel_diff is None else f"{r.max_rel_diff:.1e}"
            lines.append(
                f"{n:5d} {m:5d}  {r.method:44s} {_fmt_time(r):>9} {r.runs:4d} {ratio:>10} {diff:>12}  {r.note}"
            )
        lines.append("")
    return "\n".join(lines)


def verdict(rows: list[Row]) -> str:
    """The two targets: structured ≥ 100× NT's fastest at n=200, m=4096; generic ≤ NT's fastest everywhere."""
    out = []
    for (n, m) in sorted({(r.n, r.m) for r in rows}):
        group = {r.method: r for r in rows if (r.n, r.m) == (n, m)}
        nt_times = [group[k].seconds for k in NT_METHODS if k in group and group[k].seconds is not None]
        if not nt_times:
            out.append(f"n={n} m={m}: no NT timing")
            continue
        best = min(nt_times)
        structured = group["kernelattn structured"].seconds
        parts = [f"n={n} m={m}: structured {best / structured:.3g}x faster than NT's best"]
        for impl in GENERIC:
            seconds = group[f"kernelattn generic ({impl})"].seconds
            parts.append(f"generic {impl} " + ("not run" if seconds is None else f"{best / seconds:.3g}x"))
        out.append("; ".join(parts))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the n = 200 rows")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="training-set sizes n")
    parser.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS), help="hidden widths m")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of a slow method (median)")
    parser.add_argument("--fast-repeats", type=int, default=15, help="timed runs of a fast method (median)")
    parser.add_argument("--fast-s", type=float, default=1.0, help="a method is fast below this many seconds")
    parser.add_argument("--long-run-s", type=float, default=30.0, help="above this, time the warm-up run only")
    parser.add_argument("--budget-s", type=float, default=300.0, help="skip a method predicted to take longer")
    parser.add_argument("--max-mem-frac", type=float, default=0.7, help="skip above this fraction of free RAM")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        nt = nt_backend._nt()
    except ImportError as err:
        print(err, file=sys.stderr)
        return 2
    sizes = [200] if args.quick else args.sizes
    print(
        f"jax {jax.__version__} ({jax.default_backend()}), neural-tangents {nt.__version__}, "
        f"kernelattn {ka.__version__}; {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}; d={D}, C={OUT_DIM}, float32, fixed readout"
    )
    rows = run(sizes, args.widths, args)
    print(table(rows))
    print(verdict(rows))
    print(f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
