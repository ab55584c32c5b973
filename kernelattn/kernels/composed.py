"""The registry's composer-defined models: the depth-L ReLU MLP and MLP-Attn, finite and infinite (docs/math.md §13).

Both are stacks of :mod:`kernelattn.kernels.stax` layers under the MLP head's
readout, so one description gives the finite network (a Flax module, whose
Θ_m the sweeps take by autodiff) and its closed-form Θ_∞ (``kernel_fn``):

    "mlp-relu"       [Dense(m, σ_w, σ_b), Relu()] × L,                              readout Dense(C, σ_a)
    "mlp-attn-deep"  LinearAttention(), Dense(m, σ_w/√d, σ_b), Relu(), [Dense(m, σ_w, σ_b), Relu()] × (L − 1), readout

At L = 1 they are 2L-ReLU and MLP-Attn (attention depth 1): the √d because
the attention layer's rows have norm √d where MLP-Attn's have 1 (§13). The
readout is the head's: trained a ~ N(0, 1) with ``train_readout``, else fixed
random signs in ``"constants"`` (outside the NTK), so Θ_∞ = σ_a² Θ_L, plus
σ_a² K_L with the readout trained (K_L, Θ_L: the last hidden layer's NNGP and NTK).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kernelattn._precision import lax_precision
from kernelattn._validation import check_int
from kernelattn.kernels.stax import Dense, LinearAttention, Relu, Serial, StaxModel, serial
from kernelattn.models import random_signs

__all__ = [
    "MAX_DEPTH",
    "ComposedNetwork",
    "hidden_stack",
    "mlp_attn_deep",
    "mlp_attn_deep_ntk",
    "mlp_relu",
    "mlp_relu_ntk",
]

#: Largest number of hidden layers L a spec may ask for.
MAX_DEPTH = 64


def hidden_stack(
    depth: int, width: int, in_dim: int, *, attention: bool, sigma_w: float = 1.0, sigma_b: float = 0.0
) -> Serial:
    """The hidden layers: [LinearAttention()] then ``depth`` × [Dense(width), Relu()] (bias only when σ_b > 0).

    Raises:
      InputValueError: ``depth`` not an integer in [1, ``MAX_DEPTH``].
    """
    depth = check_int(depth, "depth", minimum=1, maximum=MAX_DEPTH)
    bias = sigma_b if sigma_b > 0 else None
    layers: list = [LinearAttention()] if attention else []
    for i in range(depth):
        scale = sigma_w / math.sqrt(in_dim) if attention and i == 0 else sigma_w
        layers += [Dense(width, scale, bias), Relu()]
    return serial(*layers)


class ComposedNetwork(nn.Module):
    """The finite depth-L network, ``(n, d)`` → ``(n, C)``; ``context`` is what its attention attends over.

    Variables: the hidden stack's params under ``"hidden"`` (``W{i}``, ``b{i}``),
    and the readout ``a`` (width, C): a param if ``train_readout``, else
    constants of random signs (drawn from the ``"params"`` PRNG key).
    """

    depth: int
    width: int
    out_dim: int = 1
    attention: bool = False
    sigma_w: float = 1.0
    sigma_b: float = 0.0
    sigma_a: float = 1.0
    train_readout: bool = False
    param_dtype: Any = jnp.float32
    precision: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        stack = hidden_stack(
            self.depth, self.width, x.shape[-1], attention=self.attention, sigma_w=self.sigma_w, sigma_b=self.sigma_b
        )
        h = StaxModel(stack.layers(), self.param_dtype, self.precision, name="hidden")(x, context)
        shape = (self.width, self.out_dim)
        if self.train_readout:
            a = self.param("a", nn.initializers.normal(stddev=1.0), shape, self.param_dtype)
        else:
            a = self.variable(
                "constants", "a", lambda: random_signs(self.make_rng("params"), shape, self.param_dtype)
            ).value
        return self.sigma_a * jnp.matmul(h, a, precision=lax_precision(self.precision)) / math.sqrt(self.width)


def _network(
    width: int,
    out_dim: int,
    attention: bool,
    *,
    depth: int = 1,
    sigma_w: float = 1.0,
    sigma_b: float = 0.0,
    sigma_a: float = 1.0,
    train_readout: bool = False,
    param_dtype: Any = jnp.float32,
) -> ComposedNetwork:
    depth = check_int(depth, "depth", minimum=1, maximum=MAX_DEPTH)
    return ComposedNetwork(depth, width, out_dim, attention, sigma_w, sigma_b, sigma_a, train_readout, param_dtype)


def _limit_ntk(
    x,
    x_context,
    attention: bool,
    *,
    depth=1,
    sigma_w=1.0,
    sigma_b=0.0,
    sigma_a=1.0,
    train_readout=False,
    param_dtype: Any = None,
) -> np.ndarray:
    """Θ_∞ ``(n, n_c)`` float64 between the rows of ``x`` and the context's (needs ``enable_x64``).

    ``param_dtype`` (the finite network's) is accepted and unused: Θ_∞ is float64.
    """
    x, x_context = np.asarray(x, np.float64), np.asarray(x_context, np.float64)
    stack = hidden_stack(depth, 1, x.shape[1], attention=attention, sigma_w=sigma_w, sigma_b=sigma_b)
    k = stack.kernel_fn(x, x_context, context=x_context, dtype="float64")
    ntk, nngp = np.asarray(k.ntk, np.float64), np.asarray(k.nngp, np.float64)
    return sigma_a**2 * (ntk + nngp if train_readout else ntk)  # the readout's own gradient adds σ_a² K_L


def mlp_relu(width: int, out_dim: int = 1, **options: Any) -> ComposedNetwork:
    """ "mlp-relu": ``depth`` hidden Dense-Relu layers of ``width`` channels on the inputs.

    ``options``: ``depth`` (L, default 1), ``sigma_w``, ``sigma_b``, ``sigma_a``,
    ``train_readout``, ``param_dtype``.
    """
    return _network(width, out_dim, False, **options)


def mlp_attn_deep(width: int, out_dim: int = 1, **options: Any) -> ComposedNetwork:
    """ "mlp-attn-deep": linearized attention on the inputs, then ``depth`` Dense-Relu layers (see :func:`mlp_relu`)."""
    return _network(width, out_dim, True, **options)


def mlp_relu_ntk(x, x_context, **options: Any) -> np.ndarray:
    """Closed-form Θ_∞ ``(n, n_c)`` float64 of "mlp-relu" between ``x`` ``(n, d)`` and ``x_context`` ``(n_c, d)``.

    ``options``: ``depth``, ``sigma_w``, ``sigma_b``, ``sigma_a``, ``train_readout``.
    """
    return _limit_ntk(x, x_context, False, **options)


def mlp_attn_deep_ntk(x, x_context, **options: Any) -> np.ndarray:
    """Closed-form Θ_∞ ``(n, n_c)`` float64 of "mlp-attn-deep"; every row attends over ``x_context``."""
    return _limit_ntk(x, x_context, True, **options)
