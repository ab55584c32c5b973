"""Your own model's empirical NTK against its infinite-width limit.

Write a model in Flax, take its empirical neural tangent kernel Θ_m at
initialization with ``kernelattn.empirical_ntk``, and watch it approach the
closed-form infinite-width NTK Θ_∞ (``kernelattn.head_kernels``) as the width m
grows. Then put the same model on top of parameter-free linearized attention
(``kernelattn.linear_attention``, whose Gram matrix is G³) and see why attention
cannot reach the kernel regime: in relative Frobenius norm Θ_m → Θ_∞ on both
inputs, roughly like m^(-1/2), but the kernel regime needs the certificate
‖Θ_m − Θ_∞‖₂ / λ_min(Θ_∞) below 1, and λ_min(Θ_∞) of the attention features is
tiny because their condition number is cubed (docs/math.md §2, §3, §8).

Run it::

    python docs/tutorials/own_model_ntk.py            # full size, under a minute on a 2-core CPU
    python docs/tutorials/own_model_ntk.py --small    # tiny sizes, a few seconds
    python docs/tutorials/own_model_ntk.py --out DIR  # also save DIR/own_model_ntk.png
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import kernelattn as ka


# --- 1. Your model: a two-layer ReLU network in NTK parameterization, every parameter trained.
#     f(x) = Σ_r a_r relu(σ_w w_rᵀx/√d + σ_b b_r) / √m,  all parameters ~ N(0, 1).
#     Its infinite-width NTK is kernelattn's head kernel with a trained readout and σ_b > 0.
class MyTwoLayerNet(nn.Module):
    width: int
    sigma_w: float = 1.0
    sigma_b: float = 0.1

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        normal = nn.initializers.normal(stddev=1.0)
        w = self.param("w", normal, (d, self.width), jnp.float64)
        b = self.param("b", normal, (self.width,), jnp.float64)
        a = self.param("a", normal, (self.width, 1), jnp.float64)
        h = self.sigma_w * (x @ w) / math.sqrt(d) + self.sigma_b * b
        return nn.relu(h) @ a / math.sqrt(self.width)


def kernel_of_width(width: int):
    """``(init, ntk)``: jitted initializer and Θ_m function of MyTwoLayerNet at this width.

    ``empirical_ntk_fn`` is the pure, jit-able form with neural-tangents' conventions,
    ``ntk(x1, x2, params)`` (no per-call checks): compiled once per width, it serves every
    seed and every input set of that shape.
    "factored" reads the model's matmuls off its jaxpr, so no Jacobian is stored and any width fits.
    """
    model = MyTwoLayerNet(width)

    def apply_fn(params, inputs):
        return model.apply({"params": params}, inputs)

    ntk = jax.jit(ka.empirical_ntk_fn(apply_fn, implementation="factored"))
    return jax.jit(model.init), apply_fn, ntk


def certificate(theta_m: np.ndarray, theta_inf: np.ndarray) -> tuple[float, float]:
    """(‖Θ_m − Θ_∞‖_F / ‖Θ_∞‖_F, ‖Θ_m − Θ_∞‖₂ / λ_min(Θ_∞)); the kernel regime needs the second < 1."""
    diff = theta_m - theta_inf
    rel_fro = np.linalg.norm(diff) / np.linalg.norm(theta_inf)
    lam_min = np.linalg.eigvalsh(theta_inf)[0]
    return float(rel_fro), float(np.linalg.norm(diff, 2) / lam_min)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", default=bool(os.environ.get("KERNELATTN_TUTORIAL_SMALL")),
                        help="tiny sizes (also: KERNELATTN_TUTORIAL_SMALL=1)")
    parser.add_argument("--out", type=Path, help="directory for the figure (none: no figure)")
    args = parser.parse_args(argv)
    n, widths, seeds = (30, [16, 64, 256], [0]) if args.small else (50, [2**k for k in range(6, 15, 2)], list(range(5)))

    ka.enable_x64()  # κ³-sized quantities need float64
    data = ka.data.load("digits", n_train=n, n_test=10, seed=0)  # unit-norm rows
    x = np.asarray(data.X_train)
    z = np.asarray(ka.linear_attention(x))  # parameter-free attention over the training set, unit rows
    print(f"digits, n = {n}: kappa_d(G) = {ka.condition_report(x).kappa_d:.3g}, "
          f"kappa_d of the attention features' Gram = {ka.condition_report(z).kappa_d:.3g}")

    # --- 2. The infinite-width limit of this architecture, in closed form.
    limit = ka.HeadConfig(width=1, sigma_w=1.0, sigma_b=0.1, train_readout=True)  # width is ignored here

    # --- 3. Autodiff agrees with kernelattn's structured closed form at the same parameters.
    init, apply_fn, _ = kernel_of_width(widths[0])
    params = init(jax.random.PRNGKey(0), x[:1])["params"]
    theta = np.asarray(ka.empirical_ntk(apply_fn, params, x, implementation="factored", dtype="float64"))
    head = ka.HeadConfig(width=widths[0], sigma_w=1.0, sigma_b=0.1, train_readout=True)
    closed = ka.structured_head_ntk({"W": params["w"], "b": params["b"], "a": params["a"]}, head, x, dtype="float64")
    agreement = float(np.max(np.abs(theta - np.asarray(closed))) / np.max(np.abs(theta)))
    print(f"autodiff vs structured closed form at width {widths[0]}: max relative difference {agreement:.1e}")
    assert agreement < 1e-10

    # --- 4. Θ_m → Θ_∞ on the raw inputs (2L-ReLU) and on the attention features (MLP-Attn).
    rows = []
    inputs = {"raw inputs": x, "attention features": z}
    limits = {label: np.asarray(ka.head_kernels(f, head=limit).ntk) for label, f in inputs.items()}
    for width in widths:
        init, _, ntk = kernel_of_width(width)
        for label, features in inputs.items():
            stats = []
            for seed in seeds:
                params = init(jax.random.PRNGKey(seed), features[:1])["params"]
                stats.append(certificate(np.asarray(ntk(jnp.asarray(features), None, params)), limits[label]))
            rows.append((label, width, *np.mean(stats, axis=0)))
    rows.sort(key=lambda r: (r[0] != "raw inputs", r[1]))
    print(f"\n{'inputs':<20} {'width':>7} {'rel_fro':>10} {'certificate':>12}")
    for label, width, rel_fro, cert in rows:
        print(f"{label:<20} {width:>7} {rel_fro:>10.3g} {cert:>12.3g}")

    # --- 5. Fit rel_fro ∝ m^slope: both near −1/2 (noisy with few seeds); the certificate is what differs.
    slopes = {}
    for label in ("raw inputs", "attention features"):
        w = np.array([r[1] for r in rows if r[0] == label], float)
        rel = np.array([r[2] for r in rows if r[0] == label])
        slopes[label] = float(np.polyfit(np.log(w), np.log(rel), 1)[0])
    print("\nlog-log slope of rel_fro vs width: " + ", ".join(f"{k} {v:+.2f}" for k, v in slopes.items()))

    if args.out is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        args.out.mkdir(parents=True, exist_ok=True)
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for label in ("raw inputs", "attention features"):
            sel = [r for r in rows if r[0] == label]
            axes[0].loglog([r[1] for r in sel], [r[2] for r in sel], "o-", label=label)
            axes[1].loglog([r[1] for r in sel], [r[3] for r in sel], "o-", label=label)
        axes[1].axhline(1.0, color="grey", lw=0.8, ls="--")
        axes[0].set(xlabel="width m", ylabel="‖Θ_m − Θ_∞‖_F / ‖Θ_∞‖_F")
        axes[1].set(xlabel="width m", ylabel="‖Θ_m − Θ_∞‖₂ / λ_min(Θ_∞)")
        axes[0].legend()
        fig.tight_layout()
        path = args.out / "own_model_ntk.png"
        fig.savefig(path, dpi=120)
        print(f"figure: {path}")
    return {"rows": rows, "slopes": slopes, "agreement": agreement}


if __name__ == "__main__":
    main()
