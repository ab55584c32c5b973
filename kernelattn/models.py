"""Flax (linen) models: the MLP head in NTK parameterization and the models built on it.

Every model is called as ``model.apply(variables, x, context)`` where
``context`` is the ``(n, d)`` training set (the attention's keys and values;
``None`` means ``x`` itself) and returns ``(n_x, C)`` outputs. Trainable
parameters live in the ``"params"`` collection; the paper's fixed ±1 readout
lives in ``"constants"`` and therefore never enters gradients or the NTK.

- ``MLPHead``   f(x̃) = (σ_a/√m) Σ_r a_r relu(σ_w w_rᵀ x̃/√d + σ_b b_r)     (docs/math.md §5)
- ``TwoLayerReLU``  the head on the (normalized) raw inputs ("2L-ReLU")
- ``AttentionMLP``  the head on parameter-free linearized attention ("MLP-Attn")
- ``QKVAttentionMLP``  the head on trainable QKV linear attention (docs/math.md §4)

Every module takes ``precision``: "highest" (matmuls at ``Precision.HIGHEST``),
"fast" (the device's default, TF32 on recent GPUs) or None (default: the
policy in force when the module is traced, ``kernelattn.precision_policy``,
else "highest"). Gradients inherit it: JAX transposes a matmul at its precision.
"""

from __future__ import annotations

import dataclasses
import math
from numbers import Integral
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kernelattn._precision import lax_precision, resolve_precision
from kernelattn._validation import check_choice, check_int, check_real
from kernelattn.errors import InputValueError
from kernelattn.registry import canonical_model_name
from kernelattn.transforms import AttentionConfig, attend

#: Largest hidden width a model may have: 2^31 (beyond it the unit indices of a streamed draw overflow
#: int32, and no kernel or training of that width completes in a lifetime anyway).
MAX_WIDTH = 2**31


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """Hyper-parameters of the two-layer ReLU head (docs/math.md §5).

    Attributes:
      width: hidden width 1 ≤ m ≤ ``MAX_WIDTH`` (2^31), an integer (8.0 is refused).
      out_dim: number of outputs C ≥ 1.
      sigma_w, sigma_b, sigma_a: weight, bias and readout scales (≥ 0).
      use_bias: include the bias b (trained); forced on when σ_b > 0.
      train_readout: train the readout a ~ N(0, 1) ("standard"); the
        paper's default is a fixed at random signs ±1, only W (and b) trained.
    """

    width: int
    out_dim: int = 1
    sigma_w: float = 1.0
    sigma_b: float = 0.0
    sigma_a: float = 1.0
    use_bias: bool = False
    train_readout: bool = False

    def __post_init__(self):
        for name, maximum in (("width", MAX_WIDTH), ("out_dim", None)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral):
                raise InputValueError(f"{name}: expected an integer, got {type(value).__name__} {value!r}")
            object.__setattr__(self, name, check_int(value, name, minimum=1, maximum=maximum))
        for name in ("sigma_w", "sigma_b", "sigma_a"):
            check_real(getattr(self, name), name, minimum=0.0)
        if self.sigma_b > 0 and not self.use_bias:
            object.__setattr__(self, "use_bias", True)


def random_signs(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Independent ±1 entries with equal probability."""
    return jnp.where(jax.random.bernoulli(key, 0.5, shape), 1.0, -1.0).astype(dtype)


def head_preactivations(config: HeadConfig, params: dict, x: jax.Array, *, precision=None) -> jax.Array:
    """Hidden pre-activations H = σ_w x W/√d (+ σ_b b) of the head, ``(n, m)``.

    Args:
      config: the head's ``HeadConfig``.
      params: the head's flat variables ``{"W": (d, m), ["b": (m,)], ...}``.
      x: ``(n, d)`` head inputs.
      precision: "highest", "fast" or None (the policy in force).
    """
    h = config.sigma_w * jnp.matmul(x, params["W"], precision=lax_precision(precision)) / math.sqrt(x.shape[-1])
    return h + config.sigma_b * params["b"] if config.use_bias else h


class MLPHead(nn.Module):
    """Two-layer ReLU network in NTK parameterization, all parameters N(0, 1).

    Matches neural-tangents' ``stax.serial(Dense(m, W_std=σ_w, b_std=σ_b,
    parameterization='ntk'), Relu(), Dense(C, W_std=σ_a, parameterization='ntk'))``.

    Variables: params ``W`` (d, m), ``b`` (m,) if ``use_bias``, ``a`` (m, C)
    if ``train_readout``; else constants ``a`` (m, C) of random signs.
    """

    config: HeadConfig
    param_dtype: Any = jnp.float32
    precision: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``(n, d)`` → ``(n, C)``."""
        cfg = self.config
        hi = lax_precision(self.precision)
        d = x.shape[-1]
        normal = nn.initializers.normal(stddev=1.0)
        w = self.param("W", normal, (d, cfg.width), self.param_dtype)
        h = cfg.sigma_w * jnp.matmul(x, w, precision=hi) / math.sqrt(d)
        if cfg.use_bias:
            h = h + cfg.sigma_b * self.param("b", normal, (cfg.width,), self.param_dtype)
        shape = (cfg.width, cfg.out_dim)
        if cfg.train_readout:
            a = self.param("a", normal, shape, self.param_dtype)
        else:
            a = self.variable(
                "constants", "a", lambda: random_signs(self.make_rng("params"), shape, self.param_dtype)
            ).value
        return cfg.sigma_a * jnp.matmul(nn.relu(h), a, precision=hi) / math.sqrt(cfg.width)


class TwoLayerReLU(nn.Module):
    """ "2L-ReLU": the head on the raw (unit-norm) inputs; ``context`` is ignored."""

    head: HeadConfig
    param_dtype: Any = jnp.float32
    precision: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        return MLPHead(self.head, self.param_dtype, self.precision, name="head")(x)


class AttentionMLP(nn.Module):
    """ "MLP-Attn": the head on parameter-free linearized attention over ``context``."""

    head: HeadConfig
    attention: AttentionConfig = AttentionConfig()
    param_dtype: Any = jnp.float32
    precision: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        context = x if context is None else context
        z = attend(x, context, self.attention, precision=self.precision)
        return MLPHead(self.head, self.param_dtype, self.precision, name="head")(z)


class QKVAttention(nn.Module):
    """Trainable single-head linear attention (docs/math.md §4), standard N(0, 1) init.

    Q = X W_Q σ_q/√d, K = C W_K σ_q/√d, V = C W_V σ_v/√d (C = context),
    Z = (Q Kᵀ / s) V, output Z W_O σ_o/√h with s = h ("linear", W_K = W_Q tied,
    the limit is the parameter-free attention: NNGP σ_q⁴σ_v²σ_o² G³/d³) or
    s = √h ("sqrt", independent W_K: the usual transformer init, whose logits
    stay random at infinite width — no closed form).

    Attributes:
      head_width: h, the width of queries, keys and values.
      out_dim: output features (default: d).
      scaling: "linear" or "sqrt".
      tied_qk: share W_K = W_Q (default: True for "linear", False for "sqrt").
    """

    head_width: int
    out_dim: int | None = None
    scaling: str = "linear"
    tied_qk: bool | None = None
    sigma_q: float = 1.0
    sigma_v: float = 1.0
    sigma_o: float = 1.0
    param_dtype: Any = jnp.float32
    precision: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        """``(n_x, d)`` queries, ``(n, d)`` context → ``(n_x, out_dim)``."""
        context = x if context is None else context
        hi = lax_precision(self.precision)

        def mm(a, b):
            return jnp.matmul(a, b, precision=hi)

        d, h = x.shape[-1], self.head_width
        tied = (self.scaling == "linear") if self.tied_qk is None else self.tied_qk
        normal = nn.initializers.normal(stddev=1.0)
        w_q = self.param("W_Q", normal, (d, h), self.param_dtype)
        w_k = w_q if tied else self.param("W_K", normal, (d, h), self.param_dtype)
        w_v = self.param("W_V", normal, (d, h), self.param_dtype)
        w_o = self.param("W_O", normal, (h, self.out_dim or d), self.param_dtype)
        q = self.sigma_q * mm(x, w_q) / math.sqrt(d)
        k = self.sigma_q * mm(context, w_k) / math.sqrt(d)
        v = self.sigma_v * mm(context, w_v) / math.sqrt(d)
        scale = h if self.scaling == "linear" else math.sqrt(h)
        z = mm(mm(q, k.T) / scale, v)
        return self.sigma_o * mm(z, w_o) / math.sqrt(h)


class QKVAttentionMLP(nn.Module):
    """The head on trainable QKV linear attention over ``context``."""

    head: HeadConfig
    attention: QKVAttention
    normalize: bool = False
    param_dtype: Any = jnp.float32
    precision: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        z = self.attention(x, context)
        if self.normalize:
            z = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
        return MLPHead(self.head, self.param_dtype, self.precision, name="head")(z)


def make_model(
    name: str,
    width: int,
    out_dim: int = 1,
    *,
    sigma_w: float = 1.0,
    sigma_b: float = 0.0,
    sigma_a: float = 1.0,
    train_readout: bool = False,
    depth: int = 1,
    rank: int | None = None,
    constant_term: bool = False,
    normalize: bool = True,
    head_width: int = 64,
    attention_out_dim: int | None = None,
    scaling: str = "linear",
    param_dtype: Any = jnp.float32,
    precision: str | None = None,
) -> nn.Module:
    """Build a model by name: "relu" (2L-ReLU), "mlp-attn" or "qkv-attn".

    Attention options (``depth``, ``rank``, ``constant_term``, ``normalize``)
    apply to "mlp-attn"; ``head_width``, ``attention_out_dim`` and ``scaling``
    to "qkv-attn" (whose row re-normalization is ``normalize``). The QKV
    output projection has ``attention_out_dim`` channels, by default
    ``head_width``: every hidden width must grow for the empirical NTK to
    approach the infinite-width one (with a fixed d-channel output it does not).
    ``precision`` ("highest", "fast" or None for the policy in force when
    the model is traced) applies to every matmul of the model.
    """
    name = check_choice(canonical_model_name(name), "model", ("relu", "mlp-attn", "qkv-attn"))
    if precision is not None:
        precision = resolve_precision(precision)
    head = HeadConfig(width, out_dim, sigma_w, sigma_b, sigma_a, sigma_b > 0, train_readout)
    if name == "relu":
        return TwoLayerReLU(head, param_dtype, precision)
    if name == "mlp-attn":
        attention = AttentionConfig(depth, rank, constant_term, normalize).validated()
        return AttentionMLP(head, attention, param_dtype, precision)
    check_int(head_width, "head_width", minimum=1)
    check_choice(scaling, "scaling", ("linear", "sqrt"))
    out = head_width if attention_out_dim is None else check_int(attention_out_dim, "attention_out_dim", minimum=1)
    qkv = QKVAttention(head_width, out, scaling=scaling, param_dtype=param_dtype, precision=precision)
    return QKVAttentionMLP(head, qkv, normalize, param_dtype, precision)


def head_config(model: nn.Module) -> HeadConfig:
    """The ``HeadConfig`` of a kernelattn model."""
    return model.head if isinstance(model.head, HeadConfig) else model.head.config
