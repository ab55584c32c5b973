"""An infinite-width composer: one description of a network gives its finite and its infinite-width kernels.

Layers are small frozen values — :func:`Dense`, :func:`Relu`, :func:`Erf`,
:func:`Identity`, :class:`LinearAttention` — composed by :func:`serial`, in
the manner of neural-tangents' ``stax`` (docs/math.md §13). Each has

- ``init_fn(key, input_shape) -> (output_shape, params)`` and
  ``apply_fn(params, x, context=None) -> (n, C)``: the finite network, which is
  the Flax module :func:`model_from_layers` builds (so ``kernelattn.empirical_ntk``
  applies to it);
- ``kernel_fn(x1, x2=None, get=("nngp", "ntk"), *, context=None, dtype="float64")
  -> Kernel``: the NNGP and NTK of the same network at infinite width.

Kernels are per channel, as in neural-tangents: the inputs' NNGP is
K = X₁X₂ᵀ/d and their NTK 0, and each layer maps (K, Θ):

    Dense, "ntk"        K ← σ_w² K + σ_b²          Θ ← K_new + σ_w² Θ
    Dense, "standard"   K ← σ_w² K + σ_b²          Θ ← w_in K + σ_w² Θ (+ 1 with a bias)
    Relu, Erf           K ← E[φ(u)φ(u')]           Θ ← E[φ'(u)φ'(u')] Θ      (u ~ N(0, K))
    LinearAttention     K ← P K_cc Pᵀ              Θ ← P Θ_cc Pᵀ             (then ÷ √(K_ii K_jj))

LinearAttention is transductive, like ``kernelattn.transforms``: every row
attends over a context (the training set), so the kernel is computed on the
union of the rows [context; x1; x2] at once — a dataset-level Gram — and the
blocks asked for are read off it. ``context=None`` means x1 is the training
set and x2's rows attend over it, as ``linear_attention(train, queries)``.
The attention weights P (n_rows × n_context) come from the layer's input
kernel alone (:func:`attention_weights`), so the same function drives the
finite network (on the empirical K̂ = H H_cᵀ/w) and the kernel (on K).

A layer's output has per-channel variance 1 when ``normalize`` is on (rows of
norm √width, the infinite-width sense of unit rows): the NNGP of
``LinearAttention()`` on X is exactly the Gram of ``linear_attention(X)``, and
``apply_fn`` of it is √d · ``linear_attention(X)``; in general its NNGP is the
Gram of ``attend(X/√d, X/√d, config)``. So MLP-Attn with head σ_w is the stack
``LinearAttention(), Dense(m, σ_w/√d, σ_b), Relu(), Dense(C, σ_a)``.

The kernel computes on the union's (N × N) matrices in ``dtype`` (float64 by
default; needs ``kernelattn.enable_x64()``); self-kernels read every variance
off the same matrix, so c = 1 exactly on the diagonal. Every matmul runs at the
precision policy (``kernelattn._precision``: ``Precision.HIGHEST`` unless
``precision="fast"``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf

from kernelattn._precision import lax_precision, resolve_dtype, resolve_precision
from kernelattn._validation import check_choice, check_int, check_matrix, check_real, check_row_range, row_norms
from kernelattn.errors import InputTypeError, InputValueError
from kernelattn.kernels.analytic import Kernel, arccos_relu
from kernelattn.models import MAX_WIDTH
from kernelattn.transforms import AttentionConfig

PARAMETERIZATIONS = ("ntk", "standard")
KERNELS = ("nngp", "ntk")


class UnionKernel(NamedTuple):
    """Per-channel kernels of one layer's outputs between every two rows of the union [context; x1; x2].

    Attributes:
      nngp: ``(N, N)`` covariance K.
      ntk: ``(N, N)`` tangent kernel Θ, or ``None`` when not asked for.
      width: channel count of the layer's output (the input width d at first).
      n_context: the first ``n_context`` rows are the attention's context.
    """

    nngp: jax.Array
    ntk: jax.Array | None
    width: int
    n_context: int


class Layer:
    """What every layer and :func:`serial` share: the finite network and the kernel of the same description.

    A layer is also the triple itself: ``init_fn, apply_fn, kernel_fn = layer``.
    """

    def layers(self) -> tuple[Layer, ...]:
        """The primitive layers, in order (a stack flattened)."""
        return (self,)

    def out_width(self, in_width: int) -> int:
        """Channels out, given channels in."""
        return in_width

    def variables(self, in_width: int) -> tuple[tuple[str, tuple[int, ...], float], ...]:
        """``(name, shape, init std)`` of each trainable array, all drawn N(0, std²)."""
        return ()

    def rows(self, params: dict, h: jax.Array, precision) -> jax.Array:
        """The layer on ``(n, w)`` features, row by row."""
        return h

    def forward(self, params: dict, h: jax.Array, hc: jax.Array | None, precision):
        """The layer on features ``h`` and on the context's features ``hc`` (``None``: ``h`` is the context)."""
        return self.rows(params, h, precision), None if hc is None else self.rows(params, hc, precision)

    def propagate(self, k: UnionKernel, precision) -> UnionKernel:
        """The layer's infinite-width kernel rule."""
        return k

    def init_fn(self, key: jax.Array, input_shape: Sequence[int]) -> tuple[tuple[int, ...], dict]:
        """``(output_shape, params)`` for ``(n, d)`` inputs (``n`` may be -1), params float32.

        Args:
          key: PRNG key of the parameter draw.
          input_shape: ``(n, d)``.
        """
        if len(input_shape) != 2:
            raise InputValueError(f"input_shape: expected (n, d), got {tuple(input_shape)!r}")
        d = check_int(input_shape[1], "input_shape[1]", minimum=1)
        # the parameters do not depend on the rows; an attention of rank r needs r of them
        n = max([input_shape[0], 1] + [la.rank or 1 for la in self.layers() if isinstance(la, LinearAttention)])
        variables = model_from_layers(self).init(key, jnp.ones((n, d), jnp.float32))
        width = functools.reduce(lambda w, layer: layer.out_width(w), self.layers(), d)
        return (input_shape[0], width), dict(variables.get("params", {}))

    def apply_fn(self, params: dict, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        """The finite network on ``(n, d)`` inputs; ``context`` ``(n_c, d)`` is what attention attends over."""
        # flax types ``apply`` as ``(out, state)`` for the ``mutable=`` case, which this is not.
        return cast(jax.Array, model_from_layers(self).apply({"params": params}, x, context))

    def kernel_fn(self, x1, x2=None, get=KERNELS, *, context=None, dtype="float64", precision=None) -> Kernel:
        """Infinite-width NNGP and NTK between ``x1`` and ``x2`` (all layers trained).

        Args:
          x1: ``(n1, d)`` inputs; with attention and no ``context``, the training set.
          x2: ``(n2, d)`` inputs; defaults to ``x1``.
          get: "nngp", "ntk" or both (a tuple); what is not asked for is ``None``.
          context: ``(n_c, d)`` rows every attention layer attends over (``None``:
            x1). Ignored by stacks without attention.
          dtype: "float64" (default; needs ``kernelattn.enable_x64()``) or "float32".
          precision: "highest", "fast" or None (the policy in force).

        Returns:
          ``Kernel(nngp, ntk)``, each ``(n1, n2)``.

        Raises:
          InputValueError: a Relu or Erf whose input is not Gaussian (no Dense
            before it: its rule would not be the network's limit); a bad
            ``get``; a non-finite, mis-shaped or overflowing input, named; a
            kernel that comes out non-finite (a zero row with no bias before a
            Relu or a normalization: 0/0), naming the row.
        """
        wanted = _check_get(get)
        dtype, precision = resolve_dtype(dtype), resolve_precision(precision)
        layers = _check_gaussian(self.layers())
        parts = _union_parts(x1, x2, context, transductive=any(isinstance(la, LinearAttention) for la in layers))
        for name, part in parts:
            check_row_range(part, name, dtype=dtype)
        u = jnp.asarray(np.concatenate([part for _, part in parts]), dtype)
        sizes = {name: len(part) for name, part in parts}
        nngp, ntk = _union_kernels(u, layers, sizes.get("context", sizes["x1"]), "ntk" in wanted, precision)
        if not bool(jnp.all(jnp.isfinite(nngp))) or (ntk is not None and not bool(jnp.all(jnp.isfinite(ntk)))):
            _raise_non_finite(parts, dtype)
        rows = slice(sizes.get("context", 0), sizes.get("context", 0) + sizes["x1"])
        cols = rows if x2 is None else slice(rows.stop, rows.stop + sizes["x2"])
        return Kernel(nngp[rows, cols] if "nngp" in wanted else None, None if ntk is None else ntk[rows, cols])

    def __iter__(self):
        return iter((self.init_fn, self.apply_fn, self.kernel_fn))


# ---------------------------------------------------------------------------- layers


@dataclasses.dataclass(frozen=True)
class Dense(Layer):
    """Fully connected layer, as neural-tangents' ``stax.Dense`` (s = (1, 1)).

    "ntk": W ~ N(0, 1), b ~ N(0, 1), z = σ_w x W/√w_in + σ_b b.
    "standard": W ~ N(0, σ_w²/w_in), b ~ N(0, σ_b²), z = x W + b (its NTK
    grows with the widths, which the kernel therefore keeps).

    Attributes:
      out_dim: output channels (the width; the "ntk" kernel does not depend on it).
      W_std: σ_w ≥ 0.
      b_std: σ_b ≥ 0, or ``None`` for no bias.
      parameterization: "ntk" or "standard".
    """

    out_dim: int
    W_std: float = 1.0
    b_std: float | None = None
    parameterization: str = "ntk"

    def __post_init__(self):
        object.__setattr__(self, "out_dim", check_int(self.out_dim, "out_dim", minimum=1, maximum=MAX_WIDTH))
        object.__setattr__(self, "W_std", check_real(self.W_std, "W_std", minimum=0.0))
        if self.b_std is not None:
            object.__setattr__(self, "b_std", check_real(self.b_std, "b_std", minimum=0.0))
        check_choice(self.parameterization, "parameterization", PARAMETERIZATIONS)

    @property
    def ntk_parameterization(self) -> bool:
        return self.parameterization == "ntk"

    def out_width(self, in_width: int) -> int:
        return self.out_dim

    def variables(self, in_width: int):
        ntk = self.ntk_parameterization
        weights = (("W", (in_width, self.out_dim), 1.0 if ntk else self.W_std / math.sqrt(in_width)),)
        bias = () if self.b_std is None else (("b", (self.out_dim,), 1.0 if ntk else self.b_std),)
        return weights + bias

    def rows(self, params, h, precision):
        product = jnp.matmul(h, params["W"], precision=lax_precision(precision))
        if self.ntk_parameterization:
            z = self.W_std * product / math.sqrt(h.shape[-1])
            return z if self.b_std is None else z + self.b_std * params["b"]
        return product if self.b_std is None else product + params["b"]

    def propagate(self, k, precision):
        bias_variance = 0.0 if self.b_std is None else self.b_std**2
        nngp = self.W_std**2 * k.nngp + bias_variance
        ntk = k.ntk
        if ntk is not None and self.ntk_parameterization:
            ntk = nngp + self.W_std**2 * ntk
        elif ntk is not None:  # ∂z/∂W = x: x·x' = w_in K; ∂z/∂b = 1
            ntk = k.width * k.nngp + self.W_std**2 * ntk + (0.0 if self.b_std is None else 1.0)
        return UnionKernel(nngp, ntk, self.out_dim, k.n_context)


@dataclasses.dataclass(frozen=True)
class Relu(Layer):
    """max(u, 0): arc-cosine kernel of order 1 (docs/math.md §6), derivative kernel (π − θ)/(2π)."""

    def rows(self, params, h, precision):
        return jax.nn.relu(h)

    def propagate(self, k, precision):
        variances = jnp.diagonal(k.nngp)
        nngp, derivative = arccos_relu(k.nngp, variances, variances)
        return k._replace(nngp=nngp, ntk=None if k.ntk is None else derivative * k.ntk)


@dataclasses.dataclass(frozen=True)
class Erf(Layer):
    """erf(u): K ← (2/π) arcsin(2K/√p), K̇ = (4/π)/√(p − 4K²), with p = (1 + 2K₁₁)(1 + 2K₂₂)."""

    def rows(self, params, h, precision):
        return erf(h)

    def propagate(self, k, precision):
        scale = 1.0 + 2.0 * jnp.diagonal(k.nngp)
        product = scale[:, None] * scale[None, :]
        nngp = (2 / jnp.pi) * jnp.arcsin(jnp.clip(2.0 * k.nngp / jnp.sqrt(product), -1.0, 1.0))
        derivative = (4 / jnp.pi) / jnp.sqrt(product - 4.0 * k.nngp**2)
        return k._replace(nngp=nngp, ntk=None if k.ntk is None else derivative * k.ntk)


@dataclasses.dataclass(frozen=True)
class Identity(Layer):
    """The identity: kernels unchanged."""


@dataclasses.dataclass(frozen=True)
class LinearAttention(Layer):
    """Parameter-free linearized attention over the context, ``kernelattn.transforms`` at any width.

    On features H (n × w) and the context's H_c, with K̂ = H H_cᵀ/w the logits
    (the 1/w keeps them finite as w grows), depth k maps a query row as
    A(q) = q H_cᵀH_c/w (+ 1ᵀH_c with the constant term), k times; then rows are
    re-normalized to norm √w (per-channel variance 1). Train: Z Zᵀ/w = K̂^{2k+1}.

    Attributes (as ``kernelattn.transforms.AttentionConfig``):
      depth: k ≥ 1.
      rank: keep the top-``rank`` eigenpairs of the context's Gram (≤ n_context), or ``None``.
      constant_term: add 1ᵀH_c per layer.
      normalize: re-normalize the output rows.
    """

    depth: int = 1
    rank: int | None = None
    constant_term: bool = False
    normalize: bool = True

    def __post_init__(self):
        AttentionConfig(self.depth, self.rank, self.constant_term, self.normalize).validated()

    def forward(self, params, h, hc, precision):
        hi = lax_precision(precision)
        width = h.shape[-1]
        context = h if hc is None else hc
        queries = h if hc is None else jnp.concatenate([h, hc])
        k_cc = jnp.matmul(context, context.T, precision=hi) / width
        weights = attention_weights(jnp.matmul(queries, context.T, precision=hi) / width, k_cc, self, precision)
        z = jnp.matmul(weights, context, precision=hi)
        if self.normalize:
            z = z * (math.sqrt(width) / jnp.linalg.norm(z, axis=1, keepdims=True))
        return (z, None) if hc is None else (z[: h.shape[0]], z[h.shape[0] :])

    def propagate(self, k, precision):
        hi = lax_precision(precision)
        n = k.n_context
        weights = attention_weights(k.nngp[:, :n], k.nngp[:n, :n], self, precision)

        def sandwich(m):  # P M Pᵀ
            return jnp.matmul(jnp.matmul(weights, m[:n, :n], precision=hi), weights.T, precision=hi)

        nngp = sandwich(k.nngp)
        ntk = None if k.ntk is None else sandwich(k.ntk)
        if self.normalize:
            variances = jnp.diagonal(nngp)
            norms = jnp.sqrt(variances[:, None] * variances[None, :])
            nngp, ntk = nngp / norms, None if ntk is None else ntk / norms
        return k._replace(nngp=nngp, ntk=ntk)


def attention_weights(k_qc: jax.Array, k_cc: jax.Array, layer: LinearAttention, precision=None) -> jax.Array:
    """P with attention output Z = P H_c, from the logit kernels alone.

    P₁ = K_qc Π_r (+ 1), P_{l+1} = P_l G_r (+ 1), where G_r = K_cc Π_r and
    Π_r projects on the top-r eigenvectors of K_cc (Π = I without a rank):
    q M_r = (q H_cᵀ) Π_r H_c for M_r the rank-r part of H_cᵀH_c.

    Args:
      k_qc: ``(n_q, n_c)`` query-context kernel.
      k_cc: ``(n_c, n_c)`` context kernel.
      layer: the attention's depth, rank and constant term.
      precision: "highest", "fast" or None (the policy in force).

    Returns:
      ``(n_q, n_c)`` weights.
    """
    hi = lax_precision(precision)
    g = k_cc
    if layer.rank is not None:
        rank = check_int(layer.rank, "rank", maximum=k_cc.shape[0])
        values, vectors = jnp.linalg.eigh(k_cc)  # ascending
        top = vectors[:, -rank:]
        g = jnp.matmul(top * values[-rank:], top.T, precision=hi)
        k_qc = jnp.matmul(jnp.matmul(k_qc, top, precision=hi), top.T, precision=hi)
    weights = k_qc + 1.0 if layer.constant_term else k_qc
    for _ in range(layer.depth - 1):
        weights = jnp.matmul(weights, g, precision=hi)
        weights = weights + 1.0 if layer.constant_term else weights
    return weights


@dataclasses.dataclass(frozen=True)
class Serial(Layer):
    """Layers applied in order; the kernels compose layer by layer (Θ_{l+1} = K̇_l Θ_l + ...)."""

    children: tuple[Layer, ...] = ()

    def layers(self) -> tuple[Layer, ...]:
        return self.children


def serial(*layers: Layer) -> Serial:
    """The stack of ``layers`` (nested stacks are flattened); ``serial()`` is the identity.

    Raises:
      InputTypeError: an argument that is not a layer, named ``layers[i]``.
    """
    flat: list[Layer] = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise InputTypeError(
                f"layers[{i}]: expected a kernelattn layer (Dense, Relu, Erf, Identity, "
                f"LinearAttention or serial(...)), got {type(layer).__name__}"
            )
        flat.extend(layer.layers())
    return Serial(tuple(flat))


class StaxModel(nn.Module):
    """The finite network of a composer description, ``(n, d)`` → ``(n, C)``.

    Called as ``model.apply(variables, x, context=None)`` like every kernelattn
    model; the context passes through the same layers (the same parameters)
    and every attention layer attends over its features. Parameters ``W{i}``,
    ``b{i}`` of the layer at position ``i``.
    """

    layers: tuple[Layer, ...]
    param_dtype: Any = jnp.float32
    precision: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        h, hc = x, context
        for i, layer in enumerate(self.layers):
            params = {
                name: self.param(f"{name}{i}", nn.initializers.normal(stddev=std), shape, self.param_dtype)
                for name, shape, std in layer.variables(h.shape[-1])
            }
            h, hc = layer.forward(params, h, hc, self.precision)
        return h


def model_from_layers(
    layers: Layer | Sequence[Layer], *, param_dtype: Any = jnp.float32, precision: str | None = None
) -> StaxModel:
    """The Flax module of a description whose empirical NTK converges to its ``kernel_fn``'s.

    Args:
      layers: a layer, ``serial(...)``, or a sequence of layers.
      param_dtype: dtype of the parameters.
      precision: "highest", "fast" or None (the policy in force when traced).
    """
    stack = layers if isinstance(layers, Layer) else serial(*layers)
    if precision is not None:
        precision = resolve_precision(precision)
    return StaxModel(stack.layers(), param_dtype, precision)


# ---------------------------------------------------------------------------- kernel_fn's parts


def _check_get(get) -> tuple[str, ...]:
    wanted = KERNELS if get is None else (get,) if isinstance(get, str) else tuple(get)
    if not wanted or any(not isinstance(g, str) or g not in KERNELS for g in wanted):
        raise InputValueError(f"get: expected 'nngp', 'ntk' or a tuple of them, got {get!r}")
    return wanted


def _check_gaussian(layers: tuple[Layer, ...]) -> tuple[Layer, ...]:
    """Refuse a nonlinearity whose input is not Gaussian at infinite width, as neural-tangents does.

    A Dense's output is Gaussian; Identity and LinearAttention (a limit-deterministic
    linear map of it, re-normalized by a limit-deterministic norm) keep whatever came in.
    """
    gaussian = False
    for i, layer in enumerate(layers):
        if isinstance(layer, (Relu, Erf)) and not gaussian:
            raise InputValueError(
                f"layers[{i}]: expected a Dense before {type(layer).__name__}() (its kernel "
                "rule needs a Gaussian input), got none since the inputs or the last nonlinearity"
            )
        gaussian = isinstance(layer, Dense) or (gaussian and isinstance(layer, (Identity, LinearAttention)))
    return layers


def _union_parts(x1, x2, context, *, transductive: bool) -> list[tuple[str, np.ndarray]]:
    """The checked ``(name, rows)`` of the union, context first when it is separate and attended over."""
    x1 = check_matrix(x1, "x1")
    parts = [("x1", x1)]
    if x2 is not None:
        parts.append(("x2", check_matrix(x2, "x2", n_cols=x1.shape[1])))
    if context is not None:
        context = check_matrix(context, "context", n_cols=x1.shape[1])
        if transductive:
            parts.insert(0, ("context", context))
    return parts


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _union_kernels(u, layers, n_context, with_ntk, precision):
    """(NNGP, NTK or None) of the stack between all rows of ``u`` ``(N, d)``."""
    nngp = jnp.matmul(u, u.T, precision=lax_precision(precision)) / u.shape[1]
    k = UnionKernel(nngp, jnp.zeros_like(nngp) if with_ntk else None, u.shape[1], n_context)
    for layer in layers:
        k = layer.propagate(k, precision)
    return k.nngp, k.ntk


def _raise_non_finite(parts, dtype) -> None:
    for name, part in parts:
        zero = np.flatnonzero(row_norms(part) == 0)
        if zero.size:
            raise InputValueError(
                f"{name}: row {int(zero[0])} is zero, and its kernel is 0/0 at a Relu or an attention's "
                "re-normalization; drop it or put a Dense with b_std > 0 first"
            )
    raise InputValueError(
        f"x1: the kernel overflows {np.dtype(dtype).name} inside the stack; rescale the inputs, e.g. to unit-norm rows"
    )
