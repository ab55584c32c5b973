"""Exact empirical NTK of the QKV-attention network from its structure, without a Jacobian (docs/math.md §4, §7).

With g_ic = ∂f_c(x_i)/∂o_i the gradient of output c with respect to the
attention output o_i, every parameter gradient of ``QKVAttentionMLP`` is a
contraction of g with the attention's factors, so Θ_m is assembled from
n × n products: O(n₁ n₂ (n₂ C + h + m)) time, O(n₁ (h + m)) memory. It equals
autodiff's ``kernels.empirical.empirical_ntk`` (tests).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kernelattn._precision import precision_policy
from kernelattn.kernels.empirical import head_linear_part, head_unit_ntk
from kernelattn.models import HeadConfig, head_config, head_preactivations

__all__ = ["qkv_empirical_ntk"]


def _qkv_terms(params, consts, x, n2, *, head: HeadConfig, sigma_q, sigma_v, sigma_o, scaling, tied, normalize):
    """Θ (n1, n2) of the QKV-attention + head network, output-traced (see ``qkv_empirical_ntk``)."""
    att, hp = params["attention"], params["head"]
    ctx = x[:n2]
    d = x.shape[1]
    w_q, w_v, w_o = att["W_Q"], att["W_V"], att["W_O"]
    w_k = w_q if tied else att["W_K"]
    h = w_q.shape[1]
    s = float(h) if scaling == "linear" else math.sqrt(h)
    c_q, c_v, c_o = sigma_q / math.sqrt(d), sigma_v / math.sqrt(d), sigma_o / math.sqrt(h)
    q = c_q * (x @ w_q)  # (n1, h)
    k = c_q * (ctx @ w_k)  # (n2, h)
    v = c_v * (ctx @ w_v)  # (n2, h)
    a_mat = (q @ k.T) / s  # (n1, n2)
    z = a_mat @ v  # (n1, h)
    out = c_o * (z @ w_o)  # (n1, d_o)
    if normalize:
        norm = jnp.linalg.norm(out, axis=1, keepdims=True)
        feat = out / norm
    else:
        feat = out
    # Head: structured NTK on the features, and its input gradients g_ic = ∂f_c(i)/∂out_i.
    w = hp["W"]
    readout = hp["a"] if head.train_readout else consts["head"]["a"]
    d_o, m = w.shape
    pre = head_preactivations(head, hp, feat)
    act = (pre > 0).astype(x.dtype)
    theta = head_unit_ntk(pre, pre[:n2], head_linear_part(feat, feat[:n2], head), readout, head)
    theta = head.sigma_a**2 * theta / m
    c_out = readout.shape[1]
    aw = (readout[:, :, None] * w.T[:, None, :]).reshape(m, c_out * d_o)  # (m, C·d_o)
    g = (act @ aw).reshape(-1, c_out, d_o) * (head.sigma_a * head.sigma_w / math.sqrt(m * d_o))  # ∂f/∂feat
    if normalize:
        g = (g - feat[:, None, :] * jnp.sum(g * feat[:, None, :], axis=2, keepdims=True)) / norm[:, :, None]
    g2 = g[:n2]
    # Attention weights, with F_ic = g_ic · out_i and u_ic = c_o W_O g_ic, w_ic = V u_ic.
    gg = jnp.einsum("icd,jcd->ij", g, g2)
    t_o = c_o**2 * (z @ z[:n2].T) * gg
    uu = c_o**2 * jnp.einsum("icd,de,jce->ij", g, w_o.T @ w_o, g2)
    ac = a_mat @ ctx  # (n1, d)
    t_v = c_v**2 * (ac @ ac[:n2].T) * uu
    p = c_o * (v @ w_o)  # (n2, d_o)
    wv = jnp.einsum("icd,nd->icn", g, p)  # (n1, C, n2)
    wv2 = wv[:n2]
    scale = (c_q / s) ** 2
    t_q = scale * (x @ ctx.T) * jnp.einsum("icn,nm,jcm->ij", wv, k @ k.T, wv2)  # (x·x')(α·α')
    qq = q @ q[:n2].T
    t_k = scale * qq * jnp.einsum("icn,nm,jcm->ij", wv, ctx @ ctx.T, wv2)  # (β·β')(Q·Q')
    theta_attn = t_o + t_v + t_q + t_k
    if tied:
        x_beta = jnp.einsum("in,jcn->ijc", x @ ctx.T, wv2)  # x_i · β_jc
        alpha_q = jnp.einsum("icn,nj->ijc", wv, k @ q[:n2].T)  # α_ic · Q_j
        beta_x = jnp.einsum("icn,nj->ijc", wv, ctx @ x[:n2].T)  # β_ic · x_j
        q_alpha = jnp.einsum("in,jcn->ijc", q @ k.T, wv2)  # Q_i · α_jc
        theta_attn = theta_attn + scale * jnp.sum(x_beta * alpha_q + beta_x * q_alpha, axis=2)
    return theta + theta_attn / c_out, out


_qkv_jit = jax.jit(
    _qkv_terms, static_argnames=("n2", "head", "sigma_q", "sigma_v", "sigma_o", "scaling", "tied", "normalize")
)


def qkv_empirical_ntk(model, variables: Mapping[str, Any], x: np.ndarray, n2: int, *, precision=None) -> np.ndarray:
    """Exact empirical NTK of a ``QKVAttentionMLP`` (all trainable parameters), output-traced.

    With g_ic = ∂f_c(x_i)/∂o_i the gradient of output c with respect to the
    attention output o_i (through the row normalization, if any), every
    parameter gradient is a contraction of g with the attention's factors:
    W_O: c_o² (z_i·z_j)(g_ic·g_jc); W_V: c_v² ((AC)_i·(AC)_j)(u_ic·u_jc) with
    u = c_o W_O g; W_Q, W_K: (c_q/s)² [(x_i·x_j)(α_ic·α_jc) + (β_ic·β_jc)(q_i·q_j)
    (+ cross terms when W_K = W_Q)] with α = Kᵀ V u, β = Cᵀ V u — plus the
    head's structured NTK on the attention output. Cost O(n₁ n₂ (n₂ C + h + m)),
    memory O(n₁ (h + m)); no Jacobian is formed.

    Args:
      model: a ``kernelattn.models.QKVAttentionMLP``.
      variables: its Flax variables.
      x: ``(n1, d)`` queries whose first ``n2`` rows are the training set (the context).
      n2: number of training rows.
      precision: matmul precision, "highest" or "fast"; None → the policy in
        force (``kernelattn.precision_policy``, default "highest"). Every
        matmul is traced inside ``precision_policy(precision)``.

    Returns:
      ``(n1, n2)`` float64 kernel (computed in the parameters' dtype).
    """
    att = model.attention
    tied = (att.scaling == "linear") if att.tied_qk is None else bool(att.tied_qk)
    params = variables["params"]
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    with precision_policy(precision):
        theta, _ = _qkv_jit(
            params,
            dict(variables.get("constants", {})),
            jnp.asarray(x, dtype),
            n2=int(n2),
            head=head_config(model),
            sigma_q=float(att.sigma_q),
            sigma_v=float(att.sigma_v),
            sigma_o=float(att.sigma_o),
            scaling=att.scaling,
            tied=tied,
            normalize=bool(model.normalize),
        )
    return np.asarray(theta, np.float64)
