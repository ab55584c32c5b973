"""``empirical_ntk_fn(implementation="auto")`` against every route, side by side (float32, this machine's CPU).

For three models at n rows, d inputs, width m and C traced outputs — the
2L-ReLU head (``TwoLayerReLU``), a 3-layer ReLU MLP given as a plain function,
and MLP-Attn (``AttentionMLP`` attending over the n rows) — it prints what
"auto" picked (``ntk.explain``), the time of each route and of "auto", and the
ratio auto / fastest. A route is timed unless the memory plan refuses it or
the cost model predicts more than ``--skip`` times the flops of the cheapest
(it then says so: at n = 500 the Jacobian contraction alone is ~10 TFLOP for
the MLP, tens of minutes on two cores). Timings: best of ``--repeats`` calls
after one warm-up (compilation) call. Never asserted in tests.

Usage: python benchmarks/empirical_auto.py [--n 500] [--d 784] [--m 1024] [--c 10]
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np


def best_time(fn, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls after one warm-up (compilation) call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def mlp3(params, x):
    """3-layer ReLU MLP in NTK parameterization: d → m → m → C."""
    h = jax.nn.relu(x @ params["W1"] / math.sqrt(x.shape[-1]))
    h = jax.nn.relu(h @ params["W2"] / math.sqrt(h.shape[-1]))
    return h @ params["W3"] / math.sqrt(h.shape[-1])


def models(n: int, d: int, m: int, c: int) -> dict:
    """name → (f, params, x) at float32."""
    import kernelattn as ka

    rng = np.random.default_rng(0)
    x = rng.random((n, d)).astype(np.float32)
    x = jnp.asarray(x / np.linalg.norm(x, axis=1, keepdims=True))
    head = ka.HeadConfig(width=m, out_dim=c)
    relu = ka.TwoLayerReLU(head)
    attn = ka.AttentionMLP(head)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    mlp_params = {
        "W1": jax.random.normal(keys[0], (d, m)),
        "W2": jax.random.normal(keys[1], (m, m)),
        "W3": jax.random.normal(keys[2], (m, c)),
    }
    return {
        "2L-ReLU head": (*ka.model_apply_fn(relu, relu.init(keys[0], x)), x),
        "3-layer MLP": (mlp3, mlp_params, x),
        "MLP-Attn": (*ka.model_apply_fn(attn, attn.init(keys[0], x, x), x), x),
    }


def measure(f, params, x, skip: float, repeats: int) -> tuple[object, dict, float]:
    """(auto's choice, route → seconds or a reason it was not timed, auto's seconds)."""
    import kernelattn as ka

    auto = ka.empirical_ntk_fn(f)
    choice = auto.explain(x, None, params)
    cheapest = min(r.flops for r in choice.routes if r.refused is None)
    times: dict = {}
    for route in choice.routes:
        if route.refused is not None:
            times[route.implementation] = route.refused.split(":")[0]
        elif route.flops > skip * cheapest:
            times[route.implementation] = f"not timed (predicted {route.flops / cheapest:.0f}× the cheapest)"
        else:
            ntk = ka.empirical_ntk_fn(f, implementation=route.implementation)
            times[route.implementation] = best_time(lambda ntk=ntk: ntk(x, None, params), repeats)
    return choice, times, best_time(lambda: auto(x, None, params), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--d", type=int, default=784)
    parser.add_argument("--m", type=int, default=1024)
    parser.add_argument("--c", type=int, default=10)
    parser.add_argument("--skip", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"n={args.n}, d={args.d}, m={args.m}, C={args.c} (traced), float32, jax {jax.__version__}, "
          f"{jax.devices()[0].platform}")  # fmt: skip
    print(f"{'model':<14} {'route':<11} {'seconds':>9}  note")
    for name, (f, params, x) in models(args.n, args.d, args.m, args.c).items():
        choice, times, t_auto = measure(f, params, x, args.skip, args.repeats)
        timed = {k: v for k, v in times.items() if isinstance(v, float)}
        fastest = min(timed, key=timed.get)
        for route, value in times.items():
            seconds = f"{value:9.3f}" if isinstance(value, float) else f"{'—':>9}"
            note = "" if isinstance(value, float) else value
            print(f"{name:<14} {route:<11} {seconds}  {note}")
        ratio = t_auto / timed[fastest]
        print(f"{name:<14} {'auto':<11} {t_auto:9.3f}  picked {choice.implementation!r} "
              f"(batch_size={choice.batch_size}); auto / fastest ({fastest}) = {ratio:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
