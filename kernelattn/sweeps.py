"""Width × seed × dataset × model sweeps into a resumable result store (docs/math.md §8).

``run_sweep(spec, out)`` computes every cell (dataset, model, width, seed) of
an experiment spec (``kernelattn.specs``) that the store ``<out>/<spec name>``
does not hold yet, writes one record per finished cell, and returns the
tables: one row per cell, mean ± std over seeds per width, and per
(dataset, model) log-log fits.

Kernel sweeps (``kind: "kernel"``)
----------------------------------
Per (dataset, model), once: the limit kernel Θ_∞ on train × train and
test × train in float64, its spectrum, its kernel-ridge predictions, and the
condition numbers κ(G), κ_d(G) and m_theory = κ_d^6 n ln n of the training
inputs (``kernelattn.kernels.gram.condition_report``).

- "relu", "mlp-attn": Θ_∞ is the closed-form head NTK
  (``kernelattn.kernels.analytic.head_kernels``) on the model's features —
  the unit-norm inputs, or the parameter-free attention output. Θ_m is the
  exact structured empirical NTK of the MLP head (docs/math.md §7), streamed over
  the hidden units: unit block j (``kernel.width_chunk`` units) is drawn from
  ``fold_in(PRNGKey(seed), j)`` exactly as ``streaming_head_ntk`` with the
  same ``width_chunk`` draws it, and a width-m network is the first m units.
  One pass per seed therefore yields every width of the sweep at the cost of
  the largest; memory is O(n² + n·width_chunk) whatever the width (2^20 at
  n = 500 runs in a few hundred MB), and one compiled loop serves all widths
  (block range and width are traced arguments). Blocks are always summed one
  after another, so a cell's value depends on (seed, width, width_chunk)
  only, never on which other cells were computed in the same run: resuming
  reproduces it bit for bit. Widths share their first units (common random
  numbers), so the error curves of one seed are smooth in m; seeds are
  independent.
- "qkv-attn": Θ_m is the empirical NTK of the whole network (QKV weights and
  head), from its structure: the head's structured NTK on the attention
  output plus the attention weights' terms, contracted in closed form through
  the head's input gradients (O(n²(C + h + m)) time, O(n(h + m)) memory; it
  equals autodiff's ``empirical_ntk``, see tests). There is no closed-form
  Θ_∞ in kernelattn for this model: Θ_∞ is a Monte-Carlo estimate, the mean
  Θ_m of ``kernel.limit_seeds`` networks of width ``kernel.limit_width``
  (records say ``"limit": "monte-carlo"``); its own sampling error floors
  the measured convergence. neural-tangents' backend
  (``kernelattn.kernels.nt_backend``) is the exact alternative for the tied,
  linearly scaled variant.

Per cell: ``kernelattn.metrics.kernel_convergence`` (rel_fro, cert,
spectrum of Θ_m, kernel-ridge predictor error with ridge λ on the test
points). Seeds are run one after another on CPU (measured: batching them
with ``jax.vmap`` is slower there); on accelerators they are vmapped when
seeds × n_all × n fits ``kernel.memory_gb`` (``kernel.batch_seeds``).

Training sweeps (``kind: "training"``, paper Table 1)
-----------------------------------------------------
Per cell: the network is trained with ``kernelattn.training.train`` (paper
defaults; for "relu"/"mlp-attn" the parameter-free features are computed
once and the head is trained on them), its linearization
(``kernelattn.training.linearize``) is trained the same way from the same
initialization and minibatch order, and both are compared on the test points
with the infinite-width NTK predictor (``kernelattn.training.ntk_predictor``,
MSE gradient flow, t → ∞ = kernel ridge with the spec's ridge unless
``training.ntk_time`` is set): ``ntk_distance`` = ‖f_m − f_NTK‖/‖f_NTK‖,
``lin_distance`` = ‖f_m − f_lin‖/‖f_lin‖, and the test accuracy of each.

Store, resume, several processes
--------------------------------
One record per finished cell (``kernelattn.store.ResultStore``), keyed by
``provenance.cell_key`` of the cell definition: sweep name and kind,
dataset and model options, width, seed, dtype, ridge, head options, metric
groups (and the training settings) — so editing any of these in the spec
recomputes exactly the affected cells, while labels and performance
settings do not. A rerun skips finished cells; a SIGKILL loses at most the
cell in flight (a vmapped seed batch on accelerators: its cells in flight).
Cells are claimed before they are computed (``ResultStore.claim``), so
several processes can work on one store; a claim of a dead process on the
same host is taken over. Every record holds the spec, the seed, package
versions and devices (``provenance.environment``) and its timing.

Several devices and hosts: ``kernel.devices`` (or ``run_sweep(...,
devices=)``, CLI ``--devices N|all``) shards the streamed Θ_m of
"relu"/"mlp-attn" width-wise over that many local devices — each
accumulation step deals its blocks out over a 1-D mesh and adds the partial
kernels with one ``psum`` (the ``kernelattn.distributed`` pattern). The draws
are unchanged, so the numbers equal the 1-device ones up to float summation
order; the count is not in the cell key and is recorded as the metric
``n_devices`` ("qkv-attn" cells are computed on one device). Across
processes (``initialize_distributed``; the CLI calls it), each process claims
cells in the shared store, process p starting p positions into each work list.

``run_sweep`` turns on JAX's 64-bit mode if it is off (Θ_∞ and the metrics
are float64), as the CLI does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kernelattn import guards, memory
from kernelattn import metrics as M
from kernelattn.errors import InputValueError
from kernelattn.specs import DatasetSpec, ModelSpec, Spec, load_spec

__all__ = [
    "Cell",
    "SweepResults",
    "cell_definition",
    "format_summary",
    "head_kernel_stream",
    "load_results",
    "plan_cells",
    "qkv_empirical_ntk",
    "run_sweep",
    "sweep_mesh",
]

KIND_RECORD = {"kernel": "kernel_sweep", "training": "training_sweep"}
#: Per-cell metric columns summarized over seeds, by spec kind (in table order).
CELL_METRICS = {
    "kernel": ("rel_fro", "rel_fro_test", "spec_err", "cert", "lambda_min", "lambda_max", "kappa", "krr_err",
               "krr_acc_m", "krr_acc_inf"),
    "training": ("ntk_distance", "lin_distance", "lin_ntk_distance", "acc_m", "acc_lin", "acc_ntk", "loss_m",
                 "loss_lin", "f_ntk_norm"),
}
#: Per (dataset, model) columns (identical in every cell record of the pair).
GROUP_COLUMNS = ("lambda_min_inf", "lambda_max_inf", "kappa_inf", "kappa_G", "kappa_d_G", "rank_G", "log10_m_theory",
                 "kappa_d_features", "rank_features", "log10_m_theory_features", "limit", "limit_width", "limit_seeds")
_LIMIT_FOLD = 0x6C696D  # "lim": the Monte-Carlo limit networks use fold_in(PRNGKey(i), _LIMIT_FOLD)
WAIT_POLL_S = 1.0  # seconds between looks at the store while other processes finish their cells
_SMALL_N_BLAS = 1000  # below this n, dense eigenproblems run single-threaded (see _blas_single_thread)


# --------------------------------------------------------------------------- plan


@dataclasses.dataclass(frozen=True)
class Cell:
    """One (dataset, model, width, seed) cell of a spec.

    Attributes:
      dataset, model: indices into ``spec.datasets`` / ``spec.models``.
      width, seed: the network width m and PRNG seed.
      key: ``provenance.cell_key(definition)``.
      definition: the JSON-ready dict that identifies the computation.
    """

    dataset: int
    model: int
    width: int
    seed: int
    key: str
    definition: dict


def cell_definition(spec: Spec, dataset: DatasetSpec, model: ModelSpec, width: int, seed: int) -> dict[str, Any]:
    """The parameters that determine one cell's numbers (its store key is their ``cell_key``).

    Cosmetic and performance settings (labels, data paths, ``batch_seeds``,
    ``memory_gb``) are left out: changing them reuses the stored cells.
    ``width_chunk`` is in for the streamed kernels of "relu"/"mlp-attn" (it is
    their PRNG block size, so it changes the draws) and out elsewhere.
    ``"precision": "fast"`` is in when the spec's precision (None: the policy
    in force) is "fast"; "highest", the default, is left out, so cells keep
    the keys they had before the precision policy existed (on CPUs the two
    are the same numbers).
    """
    from kernelattn._precision import resolve_precision

    head = spec.kernel.head_identity()
    if spec.kind != "kernel" or model.name == "qkv-attn":
        head.pop("width_chunk")
    definition: dict[str, Any] = {
        "sweep": spec.name,
        "kind": spec.kind,
        "dataset": dataset.identity(),
        "model": model.identity(),
        "width": int(width),
        "seed": int(seed),
        "dtype": spec.dtype,
        "ridge": spec.ridge,
        "head": head,
        "metrics": list(spec.metrics),
    }
    if model.name == "qkv-attn":
        definition["limit"] = {"width": spec.kernel.limit_width, "seeds": spec.kernel.limit_seeds}
    if resolve_precision(spec.precision, "precision") == "fast":
        definition["precision"] = "fast"
    if spec.training is not None:
        definition["training"] = spec.training.to_dict()
    return definition


def plan_cells(spec: Spec) -> list[Cell]:
    """Every cell of ``spec`` in run order (dataset, model, seed, width)."""
    from kernelattn import provenance

    cells = []
    for i, dataset in enumerate(spec.datasets):
        for j, model in enumerate(spec.models):
            for seed in spec.seeds:
                for width in spec.widths:
                    definition = cell_definition(spec, dataset, model, width, seed)
                    cells.append(Cell(i, j, width, seed, provenance.cell_key(definition), definition))
    return cells


# --------------------------------------------------------------------------- data and features


@dataclasses.dataclass(frozen=True)
class _Data:
    x_train: np.ndarray  # (n, d) float64
    x_test: np.ndarray  # (n*, d) float64
    y: np.ndarray  # (n,) or (n, C) float64 training targets
    labels_test: np.ndarray | None  # (n*,) int, None for regression
    out_dim: int
    target: str
    metadata: dict


def _load_data(dataset: DatasetSpec, index: int = 0) -> _Data:
    from kernelattn.data import load
    from kernelattn.data.dataset import encode_targets

    try:
        ds = load(dataset.name, **dataset.load_kwargs())
    except ValueError as err:  # a bad option value only the loader can judge (sizes, class names)
        raise InputValueError(f"datasets[{index}] ({dataset.label!r}): {err}") from err
    regression = ds.n_classes == 0
    if regression:
        y, target, labels_test = np.asarray(ds.y_train, np.float64), "values", None
    else:
        target = dataset.target if dataset.target != "auto" else ("pm1" if ds.n_classes == 2 else "onehot")
        y = encode_targets(ds.labels_train, ds.n_classes, target)
        labels_test = np.asarray(ds.labels_test)
    out_dim = 1 if y.ndim == 1 else int(y.shape[1])
    return _Data(np.asarray(ds.X_train, np.float64), np.asarray(ds.X_test, np.float64), y, labels_test, out_dim,
                 target, dict(ds.metadata))


def _features(model: ModelSpec, data: _Data) -> np.ndarray | None:
    """``(n + n*, d)`` float64 head inputs (train rows first); None for qkv-attn (they are trained)."""
    x_all = np.concatenate([data.x_train, data.x_test])
    if model.name == "relu":
        return x_all
    if model.name == "mlp-attn":
        from kernelattn.transforms import linear_attention

        z = linear_attention(data.x_train, x_all, depth=model.depth, rank=model.rank,
                             constant_term=model.constant_term, normalize=model.normalize)
        return np.asarray(z, np.float64)
    return None


def _head_config(spec: Spec, width: int, out_dim: int):
    from kernelattn.models import HeadConfig

    return HeadConfig(int(width), int(out_dim), **spec.head_kwargs())


def _np_dtype(spec: Spec):
    from kernelattn._precision import resolve_dtype

    return resolve_dtype(spec.dtype, "dtype")


# --------------------------------------------------------------------------- streamed head NTK


def _draw_block(key, j, n_units, d, block, out_dim, use_bias, train_readout, dtype):
    """Hidden units [j·block, (j+1)·block) of the network of ``key``; units ≥ n_units zeroed.

    ``k_w, k_b, k_a = split(fold_in(key, j), 3)``; W ~ N(0, 1)^(d×block),
    b ~ N(0, 1)^block, a ~ N(0, 1)^(block×C) if trained else random ±1: the
    draw of ``kernels.empirical.streaming_head_ntk`` with ``width_chunk=block``.
    """
    from kernelattn.models import random_signs

    k_w, k_b, k_a = jax.random.split(jax.random.fold_in(key, j), 3)
    alive = ((j * block + jnp.arange(block)) < n_units).astype(dtype)
    w = jax.random.normal(k_w, (d, block), dtype) * alive
    b = jax.random.normal(k_b, (block,), dtype) * alive if use_bias else None
    shape = (block, out_dim)
    a = jax.random.normal(k_a, shape, dtype) if train_readout else random_signs(k_a, shape, dtype)
    return w, b, a * alive[:, None]


def _accumulate(key, x, lin, total, first_block, n_blocks, n_units, *, n2, block, out_dim, use_bias, train_readout,
                sigma_w, sigma_b):
    """total + Σ over the alive units of blocks [first_block, first_block + n_blocks), block by block.

    Unnormalized structured head NTK (docs/math.md §7), output-traced; ``x`` is
    ``(n1, d)`` and the kernel is taken against its first ``n2`` rows.
    """
    static = dict(n2=n2, block=block, out_dim=out_dim, use_bias=use_bias, train_readout=train_readout,
                  sigma_w=sigma_w, sigma_b=sigma_b)

    def body(j, acc):
        return acc + _block_theta(key, j, x, lin, n_units, **static)

    return jax.lax.fori_loop(first_block, first_block + n_blocks, body, total)


def _block_theta(key, j, x, lin, n_units, *, n2, block, out_dim, use_bias, train_readout, sigma_w, sigma_b):
    """Unnormalized structured head NTK of the alive units of block ``j`` (``(n1, n2)``)."""
    d = x.shape[1]
    w, b, a = _draw_block(key, j, n_units, d, block, out_dim, use_bias, train_readout, x.dtype)
    h = sigma_w * (x @ w) / math.sqrt(d)
    if use_bias:
        h = h + sigma_b * b
    s = (h > 0).astype(x.dtype)
    theta = ((s * jnp.mean(a * a, axis=1)) @ s[:n2].T) * lin
    if train_readout:
        r = jax.nn.relu(h)
        theta = theta + r @ r[:n2].T
    return theta


_STATIC = ("n2", "block", "out_dim", "use_bias", "train_readout", "sigma_w", "sigma_b")
_accumulate_single = jax.jit(_accumulate, static_argnames=_STATIC)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _accumulate_batched(keys, x, lin, totals, first_block, n_blocks, n_units, **static):
    return jax.vmap(lambda k, t: _accumulate(k, x, lin, t, first_block, n_blocks, n_units, **static))(keys, totals)


@functools.partial(jax.jit, static_argnames=_STATIC + ("mesh", "batched"))
def _accumulate_sharded(keys, x, lin, total, first_block, n_blocks, n_units, *, mesh, batched, **static):
    """``_accumulate`` (or its vmap over keys) with the blocks dealt out over a 1-D device mesh.

    The pattern of ``distributed.sharded_streaming_head_ntk``: inputs are
    replicated, device k sums blocks first + k, first + k + D, … of the range
    into a partial kernel, and one ``psum`` adds the D partials to ``total``.
    The block draws are those of the 1-device loop, so Θ_m agrees with it up
    to floating-point summation order.
    """
    from jax.sharding import PartitionSpec

    from kernelattn.distributed import _shard_map

    axis = mesh.axis_names[0]
    shards = mesh.shape[axis]
    shape = (x.shape[0], static["n2"])

    def local(keys, x, lin, first_block, n_blocks, n_units):
        device = jax.lax.axis_index(axis)
        # ⌈(n_blocks − k)/D⌉ blocks for device k (none when k ≥ n_blocks).
        steps = jnp.maximum(n_blocks - device + shards - 1, 0) // shards

        def one(key):
            def body(step, acc):
                return acc + _block_theta(key, first_block + device + shards * step, x, lin, n_units, **static)

            return jax.lax.fori_loop(0, steps, body, jnp.zeros(shape, x.dtype))

        part = jax.vmap(one)(keys) if batched else one(keys)
        return jax.lax.psum(part, axis)

    rep = PartitionSpec()
    partial_sum = _shard_map(local, mesh, (rep,) * 6, rep)
    return total + partial_sum(keys, x, lin, first_block, n_blocks, n_units)


def sweep_mesh(devices: Any = 1):
    """The 1-D width mesh of a sweep's ``kernel.devices``, or None for one device.

    Args:
      devices: an integer ≥ 1 (the first that many of ``jax.local_devices()``),
        "all", or a ``jax.sharding.Mesh`` (returned as is).

    Raises:
      ValueError: more devices than this process has (naming ``kernel.devices``).
    """
    from jax.sharding import Mesh

    from kernelattn.distributed import device_mesh

    if devices is None or isinstance(devices, Mesh):
        return devices
    local = jax.local_devices()
    if devices == "all":
        count = len(local)
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool) and devices >= 1:
        count = int(devices)
    else:
        raise InputValueError(f"kernel.devices: expected an integer >= 1 or \"all\", got {devices!r}")
    if count > len(local):
        raise InputValueError(f"kernel.devices: {count} requested but this process has {len(local)} "
                              f"{jax.default_backend()} device(s) (on CPU, XLA_FLAGS="
                              f"--xla_force_host_platform_device_count={count} simulates more)")
    if count == 1:
        return None
    return device_mesh(local[:count])


def head_kernel_stream(keys: jax.Array, head, x: np.ndarray, n2: int, widths: Sequence[int], *,
                       width_chunk: int = 1024, dtype="float32", mesh=None,
                       precision=None) -> Iterator[tuple[int, np.ndarray]]:
    """Empirical head NTKs of the width-m prefixes of one network per key, for increasing m.

    The exact structured NTK of ``MLPHead`` (docs/math.md §7), traced over outputs:
    Θ_m = (σ_a²/m) Σ_{r<m} [mean_c a_rc² s_r s_rᵀ ⊙ (σ_w² X X₂ᵀ/d + σ_b² [b]) + r_r r_rᵀ [a trained]].
    Hidden units are drawn ``width_chunk`` at a time (block j from
    ``fold_in(key, j)``, as ``streaming_head_ntk(..., width_chunk)`` does), and
    the width-m network is the first m units, so one pass yields every width.
    Blocks are accumulated one after another in one compiled loop whatever
    the widths requested: Θ_m depends on (key, m, width_chunk) only, bit for
    bit, and one compilation serves every width.

    Args:
      keys: ``(2,)`` PRNG key of one network, or ``(S, 2)`` for S networks
        computed together with ``jax.vmap``.
      head: ``HeadConfig`` (σ's, readout mode, bias, out_dim; its width is ignored).
      x: ``(n1, d)`` inputs; the kernel is taken against its first ``n2`` rows.
      n2: number of leading rows of ``x`` forming the second argument.
      widths: the widths m to produce (any order; yielded increasing).
      width_chunk: hidden units per PRNG block and contraction step; memory
        O(n1·n2 + n1·width_chunk) at any width. A width below it costs one block.
      dtype: "float32" or "float64" for the computation.
      mesh: None (one device), or a 1-D ``jax.sharding.Mesh`` (``sweep_mesh``,
        ``distributed.device_mesh``) over which each accumulation step's blocks
        are dealt out width-wise and combined with one ``psum``; the draws are
        unchanged, so Θ_m equals the 1-device value up to summation order
        (bit for bit reproducible for a fixed mesh size).
      precision: matmul precision, "highest" or "fast"; None → the policy in
        force (``kernelattn.precision_policy``, default "highest").

    Yields:
      ``(m, Θ_m)`` with Θ_m float64 ``(n1, n2)`` (or ``(S, n1, n2)``).
    """
    from kernelattn._precision import precision_policy, resolve_dtype, resolve_precision

    from kernelattn._validation import check_int, check_matrix

    dtype = resolve_dtype(dtype)
    policy = functools.partial(precision_policy, resolve_precision(precision))  # per call: never held across a yield
    block = check_int(width_chunk, "width_chunk", minimum=1)
    x = check_matrix(x, "x")
    n2 = check_int(n2, "n2", minimum=1, maximum=x.shape[0])
    widths = [check_int(w, "widths", minimum=1) for w in widths]
    batched = jnp.ndim(keys) == 2
    x = jnp.asarray(x, dtype)
    d = x.shape[1]
    with policy():
        lin = head.sigma_w**2 * (x @ x[:n2].T) / d + (head.sigma_b**2 if head.use_bias else 0.0)
    static = dict(n2=int(n2), block=block, out_dim=int(head.out_dim), use_bias=bool(head.use_bias),
                  train_readout=bool(head.train_readout), sigma_w=float(head.sigma_w), sigma_b=float(head.sigma_b))
    mesh = sweep_mesh(mesh)
    if mesh is not None and len(mesh.axis_names) != 1:
        raise InputValueError(f"mesh: expected a 1-D mesh (width,), got axes {tuple(mesh.axis_names)}")
    if mesh is not None:
        step = functools.partial(_accumulate_sharded, mesh=mesh, batched=batched)
    else:
        step = _accumulate_batched if batched else _accumulate_single
    shape = ((keys.shape[0],) if batched else ()) + (x.shape[0], n2)
    total = jnp.zeros(shape, dtype)
    done = 0  # blocks accumulated into total
    previous = None
    for m in sorted(set(int(w) for w in widths)):
        full = m // block
        if full > done:
            with policy():
                total = step(keys, x, lin, total, jnp.int32(done), jnp.int32(full - done), jnp.int32(full * block),
                             **static)
            done = full
        snapshot = total
        if m % block:
            with policy():
                snapshot = step(keys, x, lin, total, jnp.int32(full), jnp.int32(1), jnp.int32(m), **static)
        # One-step lookahead: width m is dispatched (asynchronously) before the previous
        # width is handed out, so the caller's float64 metrics overlap with it.
        if previous is not None:
            yield previous[0], np.asarray(previous[1], np.float64) * (head.sigma_a**2 / previous[0])
        previous = (m, snapshot)
    if previous is not None:
        yield previous[0], np.asarray(previous[1], np.float64) * (head.sigma_a**2 / previous[0])


# --------------------------------------------------------------------------- QKV empirical NTK


def _qkv_terms(params, consts, x, n2, *, sigma_w, sigma_b, sigma_a, sigma_q, sigma_v, sigma_o, scaling, tied,
               normalize, use_bias, train_readout):
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
    readout = hp["a"] if train_readout else consts["head"]["a"]
    d_o, m = w.shape
    pre = sigma_w * (feat @ w) / math.sqrt(d_o)
    if use_bias:
        pre = pre + sigma_b * hp["b"]
    act = (pre > 0).astype(x.dtype)
    lin = sigma_w**2 * (feat @ feat[:n2].T) / d_o + (sigma_b**2 if use_bias else 0.0)
    theta = ((act * jnp.mean(readout * readout, axis=1)) @ act[:n2].T) * lin
    if train_readout:
        r = jax.nn.relu(pre)
        theta = theta + r @ r[:n2].T
    theta = sigma_a**2 * theta / m
    c_out = readout.shape[1]
    aw = (readout[:, :, None] * w.T[:, None, :]).reshape(m, c_out * d_o)  # (m, C·d_o)
    g = (act @ aw).reshape(-1, c_out, d_o) * (sigma_a * sigma_w / math.sqrt(m * d_o))  # ∂f/∂feat
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


_qkv_jit = jax.jit(_qkv_terms, static_argnames=("n2", "sigma_w", "sigma_b", "sigma_a", "sigma_q", "sigma_v", "sigma_o",
                                                "scaling", "tied", "normalize", "use_bias", "train_readout"))


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
      precision: matmul precision, "highest" or "fast"; None → the policy in force.

    Returns:
      ``(n1, n2)`` float64 kernel (computed in the parameters' dtype).
    """
    from kernelattn._precision import precision_policy
    from kernelattn.models import head_config

    att = model.attention
    head = head_config(model)
    tied = (att.scaling == "linear") if att.tied_qk is None else bool(att.tied_qk)
    params = variables["params"]
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    with precision_policy(precision):
        theta, _ = _qkv_jit(params, dict(variables.get("constants", {})), jnp.asarray(x, dtype), n2=int(n2),
                            sigma_w=float(head.sigma_w), sigma_b=float(head.sigma_b), sigma_a=float(head.sigma_a),
                            sigma_q=float(att.sigma_q), sigma_v=float(att.sigma_v), sigma_o=float(att.sigma_o),
                            scaling=att.scaling, tied=tied, normalize=bool(model.normalize),
                            use_bias=bool(head.use_bias), train_readout=bool(head.train_readout))
    return np.asarray(theta, np.float64)


def _qkv_model(spec: Spec, model: ModelSpec, width: int, out_dim: int):
    from kernelattn.models import make_model

    return make_model("qkv-attn", width, out_dim, sigma_w=spec.kernel.sigma_w, sigma_b=spec.kernel.sigma_b,
                      sigma_a=spec.kernel.sigma_a, train_readout=spec.kernel.train_readout, normalize=model.normalize,
                      head_width=model.qkv_head_width(width), scaling=model.scaling,
                      param_dtype=jnp.dtype(spec.dtype))


def _qkv_kernel(spec: Spec, model: ModelSpec, data: _Data, width: int, key) -> np.ndarray:
    module = _qkv_model(spec, model, width, data.out_dim)
    x_all = np.concatenate([data.x_train, data.x_test])
    ctx = jnp.asarray(data.x_train, spec.dtype)
    variables = module.init(key, ctx, ctx)
    return qkv_empirical_ntk(module, variables, x_all, data.x_train.shape[0])


# --------------------------------------------------------------------------- per (dataset, model)


@dataclasses.dataclass
class _Group:
    dataset: DatasetSpec
    model: ModelSpec
    data: _Data
    features: np.ndarray | None
    reference: M.LimitReference
    info: dict
    seconds: float


def _condition_info(data: _Data, features: np.ndarray | None) -> dict[str, Any]:
    from kernelattn.kernels.gram import condition_report

    n = data.x_train.shape[0]
    report = condition_report(data.x_train, warn_rank_deficient=False)
    info = {"kappa_G": report.kappa, "kappa_d_G": report.kappa_d, "rank_G": report.rank,
            "log10_m_theory": report.log10_m_theory}
    if features is not None:
        feat = condition_report(features[:n], warn_rank_deficient=False)
        info.update(kappa_d_features=feat.kappa_d, rank_features=feat.rank,
                    log10_m_theory_features=feat.log10_m_theory)
    else:
        info.update(kappa_d_features=math.nan, rank_features=-1, log10_m_theory_features=math.nan)
    return info


def _limit_kernel(spec: Spec, model: ModelSpec, data: _Data, features: np.ndarray | None) -> tuple[np.ndarray, dict]:
    """Θ_∞ ``(n + n*, n)`` float64 and how it was obtained."""
    n = data.x_train.shape[0]
    if features is not None:
        from kernelattn.kernels.analytic import head_kernels

        head = _head_config(spec, 1, data.out_dim)
        theta = head_kernels(features, features[:n], head, dtype="float64").ntk
        return np.asarray(theta, np.float64), {"limit": "closed-form", "limit_width": 0, "limit_seeds": 0}
    k = spec.kernel
    total = None
    for i in range(k.limit_seeds):
        key = jax.random.fold_in(jax.random.PRNGKey(i), _LIMIT_FOLD)
        theta = _qkv_kernel(spec, model, data, k.limit_width, key)
        total = theta if total is None else total + theta
    return total / k.limit_seeds, {"limit": "monte-carlo", "limit_width": k.limit_width, "limit_seeds": k.limit_seeds}


def _check_memory(spec: Spec, dataset: DatasetSpec, data: _Data) -> None:
    """Refuse, before any work, a kernel matrix that cannot fit in memory."""
    n, n_all = data.x_train.shape[0], data.x_train.shape[0] + data.x_test.shape[0]
    need = 6 * 8 * n_all * n  # a few float64 (n + n*) × n matrices: Θ_∞, Θ_m, differences, factors
    try:
        import psutil

        available = psutil.virtual_memory().available
    except Exception:  # noqa: BLE001 - psutil missing or unusable: no guard
        return
    if need > available:
        raise memory.MemoryPlanError(
            f"dataset {dataset.label!r}: n_train = {n}, n_test = {n_all - n} needs about {need / 2**30:.1f} GiB for "
            f"its (n + n*) × n kernel matrices, more than the {available / 2**30:.1f} GiB available; set n_train / "
            "n_test in the spec's dataset entry"
        )


def _prepare_group(spec: Spec, dataset: DatasetSpec, model: ModelSpec, data: _Data) -> _Group:
    start = time.perf_counter()
    _check_memory(spec, dataset, data)
    features = _features(model, data)
    n = data.x_train.shape[0]
    theta, limit = _limit_kernel(spec, model, data, features)
    with _blas_single_thread(n):
        reference = M.limit_reference(theta[:n], theta[n:], data.y, spec.ridge, labels_test=data.labels_test,
                                      predict=spec.kind == "training" or "krr" in spec.metrics)
    # Guard-rails on Θ_∞ (its eigenvalues are already computed): warn with the remedy, and record.
    diagnostics = guards.check_kernel(theta[:n], name=f"Θ_∞ {dataset.label}/{model.label}", dtype="float64",
                                      requested="spectrum", eigenvalues=reference.eigenvalues)
    info = {"lambda_min_inf": reference.spectrum.lambda_min, "lambda_max_inf": reference.spectrum.lambda_max,
            "kappa_inf": reference.spectrum.kappa, "guard_limit": " ".join(diagnostics.kinds) or "ok",
            **_condition_info(data, features), **limit}
    return _Group(dataset, model, data, features, reference, info, time.perf_counter() - start)


@contextlib.contextmanager
def _blas_single_thread(n: int):
    """Run small dense linear algebra single-threaded.

    For n ≤ 1000 the eigen-decompositions gain little from threads, and next
    to XLA's own thread pool a multi-threaded BLAS can be many times slower
    (measured 15× on a 2-core machine); one thread also makes them bitwise
    reproducible. No effect when threadpoolctl is absent.
    """
    if n > _SMALL_N_BLAS:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


# --------------------------------------------------------------------------- results


@dataclasses.dataclass
class SweepResults:
    """What a sweep produced (read back from the store).

    Attributes:
      spec: the ``Spec``.
      store_path: the store directory (``<out>/<spec.name>``).
      cells: one row per stored cell: dataset, model, width, seed, the
        metrics, the per-(dataset, model) columns, seconds, key.
      summary: mean and (sample) std over seeds per dataset × model × width:
        ``<metric>_mean``, ``<metric>_std`` and ``n_seeds``.
      fits: per (dataset, model): log-log slopes against width (least squares
        on log10 of the seed means), for kernel sweeps the extrapolated width
        where cert = 1/2 beside m_theory, κ(G), κ_d(G), and the Θ_∞ spectrum.
      n_cells: cells in the spec.
      n_computed: cells computed by this call.
      n_skipped: cells already in the store when this call started.
      n_missing: cells still absent (claimed by another process, or failed).
      seconds: wall time of this call.
    """

    spec: Spec
    store_path: Path
    cells: Any
    summary: Any
    fits: Any
    n_cells: int
    n_computed: int = 0
    n_skipped: int = 0
    n_missing: int = 0
    seconds: float = 0.0

    def __repr__(self) -> str:
        return (f"SweepResults({self.spec.name!r}, kind={self.spec.kind!r}, cells={self.n_cells - self.n_missing}/"
                f"{self.n_cells}, computed={self.n_computed}, store_path={str(self.store_path)!r})")


def _frames(spec: Spec, store, plan: list[Cell]):
    import pandas as pd

    rows = []
    for cell in plan:
        if not store.has(cell.key):
            continue
        record = store.get(cell.key)
        row = {"dataset": spec.datasets[cell.dataset].label, "model": spec.models[cell.model].label,
               "width": cell.width, "seed": cell.seed}
        row.update(record["metrics"])
        row["seconds"] = record["timing"]["seconds"]
        row["key"] = cell.key
        rows.append(row)
    cell_metrics = CELL_METRICS[spec.kind]
    if not rows:
        columns = ["dataset", "model", "width", "seed", *cell_metrics, "seconds", "key"]
        empty = pd.DataFrame(columns=columns)
        return empty, pd.DataFrame(columns=["dataset", "model", "width", "n_seeds"]), pd.DataFrame(
            columns=["dataset", "model"])
    cells = pd.DataFrame(rows)
    ds_order = {d.label: i for i, d in enumerate(spec.datasets)}
    model_order = {m.label: i for i, m in enumerate(spec.models)}
    cells = cells.sort_values(["dataset", "model", "width", "seed"],
                              key=lambda col: col.map(ds_order) if col.name == "dataset" else
                              col.map(model_order) if col.name == "model" else col).reset_index(drop=True)
    present = [c for c in cell_metrics if c in cells.columns]
    summary_rows = []
    for (ds, model, width), group in cells.groupby(["dataset", "model", "width"], sort=False):
        row = {"dataset": ds, "model": model, "width": int(width), "n_seeds": int(len(group))}
        for name in present:
            values = pd.to_numeric(group[name], errors="coerce").to_numpy(np.float64)
            row[f"{name}_mean"], row[f"{name}_std"] = _mean_std(values)
        summary_rows.append(row)
    summary = pd.DataFrame(summary_rows)
    fits = pd.DataFrame([_fit_row(spec, ds, model, group, cells) for (ds, model), group in
                         summary.groupby(["dataset", "model"], sort=False)])
    return cells, summary, fits


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample std (ddof 1; NaN for one value) ignoring NaN; an inf makes the std NaN."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return math.nan, math.nan
    with np.errstate(invalid="ignore", over="ignore"):
        mean = float(np.mean(values))
        if not np.all(np.isfinite(values)) or values.size < 2:
            return mean, math.nan
        return mean, float(np.std(values, ddof=1))


def _fit_row(spec: Spec, ds: str, model: str, summary, cells) -> dict[str, Any]:
    widths = summary["width"].to_numpy(np.float64)
    row: dict[str, Any] = {"dataset": ds, "model": model, "n_widths": int(len(widths)),
                           "n_cells": int(summary["n_seeds"].sum())}

    def fit(metric: str) -> M.LogLogFit | None:
        column = f"{metric}_mean"
        if column not in summary.columns:
            return None
        return M.loglog_fit(widths, summary[column].to_numpy(np.float64))

    if spec.kind == "kernel":
        for metric in ("rel_fro", "cert", "krr_err"):
            f = fit(metric)
            if f is not None:
                row[f"slope_{metric}"] = f.slope
                row[f"r2_{metric}"] = f.r2
                if metric == "cert":
                    m_half = M.crossing_width(f, 0.5)
                    row["m_cert_half"] = m_half
                    row["log10_m_cert_half"] = math.log10(m_half) if 0 < m_half < math.inf else (
                        math.inf if m_half == math.inf else math.nan)
    else:
        for metric in ("ntk_distance", "lin_distance"):
            f = fit(metric)
            if f is not None:
                row[f"slope_{metric}"] = f.slope
                row[f"r2_{metric}"] = f.r2
    first = cells[(cells["dataset"] == ds) & (cells["model"] == model)].iloc[0]
    for column in GROUP_COLUMNS:
        if column in first.index:
            row[column] = first[column]
    return row


def load_results(spec: str | os.PathLike[str] | Mapping[str, Any] | Spec, out: str | os.PathLike[str] = "results"
                 ) -> SweepResults:
    """The tables of a sweep from its store, computing nothing.

    Args:
      spec: the sweep's spec (path, dict or ``Spec``).
      out: the results directory given to ``run_sweep``.
    """
    from kernelattn.store import ResultStore

    spec = load_spec(spec)
    path = Path(out) / spec.name
    store = ResultStore.open(path, create=False, readonly=True)
    plan = plan_cells(spec)
    cells, summary, fits = _frames(spec, store, plan)
    missing = sum(not store.has(c.key) for c in plan)
    return SweepResults(spec, path, cells, summary, fits, len(plan), 0, len(plan) - missing, missing, 0.0)


# --------------------------------------------------------------------------- the runner


def _rotate(items: list, offset: int) -> list:
    """``items`` starting at position ``offset`` (mod its length), wrapping around."""
    if not items:
        return items
    k = offset % len(items)
    return items[k:] + items[:k]


class _Runner:
    def __init__(self, spec: Spec, store, bar, *, mesh=None, offset: int = 0) -> None:
        self.spec = spec
        self.store = store
        self.bar = bar
        self.computed = 0
        self.mesh = mesh  # 1-D width mesh for the streamed Θ_m, or None
        self.offset = offset  # this process's index: it starts its work that far into each list
        self._data: dict[int, _Data] = {}
        self._spec_dict = spec.to_dict()

    def data(self, index: int) -> _Data:
        if index not in self._data:
            self._data[index] = _load_data(self.spec.datasets[index], index)
        return self._data[index]

    def put(self, cell: Cell, metrics: dict[str, Any], seconds: float, started: str) -> None:
        from kernelattn.store import make_record, utc_now

        record = make_record(KIND_RECORD[self.spec.kind], cell.definition, metrics, spec=self._spec_dict,
                             seed=cell.seed, seconds=seconds, started=started, finished=utc_now())
        self.store.put(cell.key, record, exist_ok=True)
        self.computed += 1
        self.bar.update(1)

    def claim(self, cells: Sequence[Cell]) -> list[Cell]:
        return [c for c in cells if self.store.claim(c.key)]

    def release(self, cells: Sequence[Cell]) -> None:
        for c in cells:
            if c.key in self.store.held_claims():
                self.store.release(c.key)

    # -- kernel sweeps ---------------------------------------------------------------

    def kernel_group(self, group: _Group, cells: list[Cell]) -> None:
        spec = self.spec
        by_seed: dict[int, list[Cell]] = {}
        for cell in cells:
            by_seed.setdefault(cell.seed, []).append(cell)
        if group.model.name == "qkv-attn":
            for seed, seed_cells in _rotate(list(by_seed.items()), self.offset):
                claimed = self.claim(seed_cells)
                try:
                    for cell in claimed:
                        started, t0 = _now(), time.perf_counter()
                        theta = _qkv_kernel(spec, group.model, group.data, cell.width, jax.random.PRNGKey(cell.seed))
                        self._kernel_record(group, cell, theta, time.perf_counter() - t0, started, devices=1)
                finally:
                    self.release(claimed)
            return
        n = group.data.x_train.shape[0]
        head = _head_config(spec, 1, group.data.out_dim)
        k = spec.kernel
        batched = self._batch_seeds(group)
        # Batches have a fixed composition (all seeds, or one), so a cell's value never
        # depends on which cells were pending.
        batches = [list(spec.seeds)] if batched else [[seed] for seed in spec.seeds]
        n_devices = 1 if self.mesh is None else int(self.mesh.devices.size)
        memory.ensure_fits(memory.sweep_cell_memory(
            n, group.features.shape[0] - n, group.features.shape[1], width_chunk=k.width_chunk,
            seeds=max(len(b) for b in batches), out_dim=head.out_dim, train_readout=head.train_readout,
            use_bias=head.use_bias, dtype=spec.dtype,
        ))
        for batch in _rotate(batches, self.offset):
            pending = [c for s in batch for c in by_seed.get(s, [])]
            claimed = self.claim(pending)
            if not claimed:
                continue
            try:
                index = {(c.seed, c.width): c for c in claimed}
                keys = jnp.stack([jax.random.PRNGKey(s) for s in batch]) if batched else jax.random.PRNGKey(batch[0])
                widths = sorted({c.width for c in claimed})
                started, t0 = _now(), time.perf_counter()
                for m, theta in head_kernel_stream(keys, head, group.features, n, widths, width_chunk=k.width_chunk,
                                                   dtype=spec.dtype, mesh=self.mesh):
                    thetas = theta if theta.ndim == 3 else theta[None]
                    elapsed = time.perf_counter() - t0
                    done = [(i, index[(s, m)]) for i, s in enumerate(batch) if (s, m) in index]
                    for i, cell in done:
                        self._kernel_record(group, cell, thetas[i], elapsed / len(done), started, devices=n_devices)
                    started, t0 = _now(), time.perf_counter()
            finally:
                self.release(claimed)

    def _batch_seeds(self, group: _Group) -> bool:
        k = self.spec.kernel
        if k.batch_seeds is False or len(self.spec.seeds) == 1:
            return False
        n = group.data.x_train.shape[0]
        n_all = group.features.shape[0]
        itemsize = np.dtype(self.spec.dtype).itemsize
        estimate = len(self.spec.seeds) * itemsize * (3 * n_all * n + 4 * n_all * k.width_chunk)  # bytes
        fits = estimate <= k.memory_gb * 2**30
        if k.batch_seeds is True:
            return fits
        return fits and jax.default_backend() != "cpu"

    def _kernel_record(self, group: _Group, cell: Cell, theta: np.ndarray, seconds: float, started: str, *,
                       devices: int = 1) -> None:
        n = group.data.x_train.shape[0]
        t0 = time.perf_counter()
        with _blas_single_thread(n):
            metrics = M.kernel_convergence(theta[:n], theta[n:], group.reference, self.spec.metrics)
        metrics.update(group.info)
        metrics["n_devices"] = int(devices)  # provenance only: not in the cell key
        self.put(cell, metrics, seconds + time.perf_counter() - t0, started)

    # -- training sweeps -------------------------------------------------------------

    def training_group(self, group: _Group, cells: list[Cell]) -> None:
        spec = self.spec
        n = group.data.x_train.shape[0]
        ref = group.reference
        with _blas_single_thread(n):
            if spec.training.ntk_time is None:
                f_ntk = ref.predictions
            else:
                from kernelattn.training import ntk_predictor

                f_ntk = ntk_predictor(ref.theta_train, ref.theta_test, ref.y, time=spec.training.ntk_time,
                                      ridge=spec.ridge)
        f_ntk = np.asarray(f_ntk, np.float64).reshape(group.data.x_test.shape[0], -1)
        for cell in _rotate(list(cells), self.offset):
            if not self.store.claim(cell.key):
                continue
            try:
                started, t0 = _now(), time.perf_counter()
                metrics = _train_cell(spec, group, cell, f_ntk)
                metrics.update(group.info)
                self.put(cell, metrics, time.perf_counter() - t0, started)
            finally:
                self.release([cell])


def _now() -> str:
    from kernelattn.store import utc_now

    return utc_now()


def _train_cell(spec: Spec, group: _Group, cell: Cell, f_ntk: np.ndarray) -> dict[str, Any]:
    from kernelattn.models import MLPHead
    from kernelattn.training import linearize, loss_value, train

    data = group.data
    n = data.x_train.shape[0]
    config = spec.training.train_config()
    dtype = jnp.dtype(spec.dtype)
    init_key, shuffle_key = jax.random.split(jax.random.PRNGKey(cell.seed))
    if group.features is None:  # qkv-attn: the whole network is trained
        from kernelattn.kernels.empirical import model_apply_fn

        module = _qkv_model(spec, group.model, cell.width, data.out_dim)
        ctx = jnp.asarray(data.x_train, dtype)
        variables = module.init(init_key, ctx, ctx)
        apply_fn, params = model_apply_fn(module, variables, ctx)
        x_train, x_test = data.x_train, data.x_test
    else:  # parameter-free features computed once; only the head is trained
        module = MLPHead(_head_config(spec, cell.width, data.out_dim), dtype)
        x_train, x_test = group.features[:n], group.features[n:]
        variables = dict(module.init(init_key, jnp.asarray(x_train, dtype)))
        params = variables.pop("params")
        rest = variables

        def apply_fn(p, x, _module=module, _rest=rest):
            return _module.apply({"params": p, **_rest}, x)

    y = data.y if data.y.ndim == 2 else data.y[:, None]
    loss = config.resolved_loss(y.shape[1])

    def final_loss(fn, p) -> float:
        out = fn(p, jnp.asarray(x_train, dtype))
        value = loss_value(out, jnp.asarray(y, dtype), jnp.ones(n, dtype), loss)
        return float(value)

    result = train(apply_fn, params, x_train, y, key=shuffle_key, config=config)
    f_m = np.asarray(apply_fn(result.params, jnp.asarray(x_test, dtype)), np.float64)
    out: dict[str, Any] = {"loss": loss, "epochs": config.epochs, "loss_m": final_loss(apply_fn, result.params),
                           "f_ntk_norm": float(np.linalg.norm(f_ntk))}
    if data.labels_test is not None:
        out.update(_fit_health(apply_fn, params, result.params, rest if group.features is not None else None,
                               module, x_train, y, f_m, data.labels_test, loss, dtype))
    metrics = spec.metrics
    if "ntk_distance" in metrics:
        out["ntk_distance"] = M.relative_error(f_m, f_ntk)
    f_lin = None
    if "lin_distance" in metrics:
        apply_lin = linearize(apply_fn, params)
        result_lin = train(apply_lin, params, x_train, y, key=shuffle_key, config=config)
        f_lin = np.asarray(apply_lin(result_lin.params, jnp.asarray(x_test, dtype)), np.float64)
        out["lin_distance"] = M.relative_error(f_m, f_lin)
        out["lin_ntk_distance"] = M.relative_error(f_lin, f_ntk)
        out["loss_lin"] = final_loss(apply_lin, result_lin.params)
    if "accuracy" in metrics and data.labels_test is not None:
        out["acc_m"] = M.accuracy(f_m, data.labels_test)
        out["acc_ntk"] = M.accuracy(f_ntk, data.labels_test)
        if f_lin is not None:
            out["acc_lin"] = M.accuracy(f_lin, data.labels_test)
    return out


def _fit_health(apply_fn, params0, params, rest, module, x_train, y, f_test, labels_test, loss, dtype) -> dict:
    """Training health (``kernelattn.training.training_health``) of a sweep fit, as ``health_*`` metrics;
    the ReLU-pattern diagnostics need the head's variables (``rest`` not None)."""
    from kernelattn.models import head_preactivations
    from kernelattn.training import predicted_labels, training_health

    x = jnp.asarray(x_train, dtype)
    hidden = hidden0 = None
    if rest is not None:
        hidden = np.asarray(head_preactivations(module.config, {**params, **rest.get("constants", {})}, x))
        hidden0 = np.asarray(head_preactivations(module.config, {**params0, **rest.get("constants", {})}, x))
    health = training_health(
        loss=loss, targets=y, labels=predicted_labels(y), outputs=np.asarray(apply_fn(params, x)), params=params,
        initial_params=params0, hidden=hidden, hidden_initial=hidden0, features=np.asarray(x_train),
        labels_test=labels_test, outputs_test=f_test,
    )
    return {f"health_{k}": v for k, v in health.to_dict().items()} | {"trained": health.trained}


def _progress_enabled(progress: bool) -> bool:
    if not progress:
        return False
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def _work_through(spec: Spec, store, runner: _Runner, bar, cells: list[Cell], offset: int) -> None:
    """Compute every cell of ``cells`` that is neither stored nor claimed by another process."""
    groups: dict[tuple[int, int], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.dataset, cell.model), []).append(cell)
    for (i, j), group_cells in _rotate(list(groups.items()), offset):
        group_cells = [c for c in group_cells if not store.has(c.key)]
        if not group_cells:
            continue
        bar.set_postfix_str(f"{spec.datasets[i].label} / {spec.models[j].label}", refresh=False)
        group = _prepare_group(spec, spec.datasets[i], spec.models[j], runner.data(i))
        if spec.kind == "kernel":
            runner.kernel_group(group, group_cells)
        else:
            runner.training_group(group, group_cells)


def _wait_for_others(store, plan: list[Cell], bar, poll_s: float = WAIT_POLL_S) -> list[Cell]:
    """Block while other live processes hold claims on missing cells.

    Returns:
      The cells still missing once no live claim is left (given up by a
      process that failed or died): the caller computes them.
    """
    while True:
        missing = [c for c in plan if not store.has(c.key)]
        bar.n = len(plan) - len(missing)
        # Another host's claim cannot be checked for liveness: wait for it only within one multi-process
        # run (its processes share the work); otherwise report those cells missing instead of hanging.
        waiting = sum(store.claimed_elsewhere(c.key, include_foreign=jax.process_count() > 1) for c in missing)
        if not waiting:
            bar.refresh()
            return missing
        bar.set_postfix_str(f"waiting for {waiting} cells of other processes", refresh=True)
        time.sleep(poll_s)


def run_sweep(spec: str | os.PathLike[str] | Mapping[str, Any] | Spec, out: str | os.PathLike[str] = "results", *,
              progress: bool = True, devices: Any = None, wait: bool = True) -> SweepResults:
    """Run (or resume) a sweep and return its tables.

    Args:
      spec: a spec file path, a dict in the spec format, or a ``Spec``
        (validated by ``kernelattn.specs.load_spec``).
      out: results directory; the store is ``<out>/<spec name>``.
      progress: show a tqdm progress bar (cells done, ETA) on stderr; it is
        also off when stderr is not a terminal.
      devices: overrides the spec's ``kernel.devices`` (an integer ≥ 1 or
        "all"): local devices the streamed Θ_m is sharded over, width-wise.
        Not part of any cell's key (results agree to float rounding).
      wait: when the cells left are being computed by other processes
        (live claims on the same store), wait for them, and compute those a
        failed process gave up, so that every process returns the whole
        table; ``False`` returns at once with them counted as ``n_missing``.
        Claims of another host are waited for only in a multi-process run
        (``jax.process_count() > 1``): their liveness cannot be checked, so a
        single process counts those cells missing instead of waiting up to
        the claim timeout (``kernelattn store PATH`` lists such claims).

    In a multi-process JAX run (``kernelattn.distributed.initialize_distributed``
    called first, as the CLI does), every process runs the same call on the
    same store: cells are claimed before they are computed, and process p
    starts p positions into each work list, so the processes spread out
    instead of contending for the same cells.

    Returns:
      ``SweepResults`` with ``.cells``, ``.summary``, ``.fits`` DataFrames
      and ``.store_path``.

    Raises:
      kernelattn.specs.SpecError: an invalid spec (naming the key path).
      kernelattn.store.StoreError: the store cannot be opened or written.

    The whole run is inside ``kernelattn.precision_policy(spec.precision)``
    (None: the policy in force, else "highest"): every matmul of it,
    the sweep's own included, runs at that precision.
    """
    from kernelattn._precision import precision_policy, resolve_precision

    t_start = time.perf_counter()
    spec = load_spec(spec)
    # A spec without "precision" runs at the policy in force (the CLI's --precision); records name the one used.
    spec = dataclasses.replace(spec, precision=resolve_precision(spec.precision, "precision"))
    with precision_policy(spec.precision):
        return _run_sweep(spec, out, progress=progress, devices=devices, wait=wait, t_start=t_start)


def _run_sweep(spec: Spec, out, *, progress: bool, devices: Any, wait: bool, t_start: float) -> SweepResults:
    from tqdm.auto import tqdm

    from kernelattn._precision import enable_x64, x64_enabled
    from kernelattn.store import ResultStore

    if devices is not None:
        from kernelattn.specs import parse_devices

        spec = dataclasses.replace(spec, kernel=dataclasses.replace(spec.kernel, devices=parse_devices(devices,
                                                                                                       "devices")))
    if not x64_enabled():
        enable_x64()
    _np_dtype(spec)
    mesh = sweep_mesh(spec.kernel.devices)
    offset = jax.process_index()
    path = Path(out) / spec.name
    from kernelattn.store import store_exists

    # A new store is created only once every dataset has loaded: a spec refused at data-load time leaves nothing.
    preloaded = {} if store_exists(path) else {i: _load_data(d, i) for i, d in enumerate(spec.datasets)}
    store = ResultStore.open(path)
    plan = plan_cells(spec)
    pending = [c for c in plan if not store.has(c.key)]
    skipped = len(plan) - len(pending)
    bar = tqdm(total=len(plan), initial=skipped, desc=spec.name, unit="cell", dynamic_ncols=True,
               disable=not _progress_enabled(progress), smoothing=0.1)
    runner = _Runner(spec, store, bar, mesh=mesh, offset=offset)
    runner._data.update(preloaded)
    try:
        while pending:
            computed_before = runner.computed
            _work_through(spec, store, runner, bar, pending, offset)
            left = _wait_for_others(store, plan, bar) if wait else []
            if left == pending and runner.computed == computed_before:
                break  # no progress on the same cells: report them missing instead of looping
            pending = left
    finally:
        bar.close()
    cells_df, summary, fits = _frames(spec, store, plan)
    missing = sum(not store.has(c.key) for c in plan)
    return SweepResults(spec, path, cells_df, summary, fits, len(plan), runner.computed, skipped, missing,
                        time.perf_counter() - t_start)


# --------------------------------------------------------------------------- text report


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value == 0:
            return "0"
        if 1e-3 <= abs(value) < 1e4:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


def _pm(mean: Any, std: Any) -> str:
    text = _fmt(mean)
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return text
    return f"{text} ± {_fmt(std)}"


def _table(rows: list[dict[str, str]], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(r.get(c, "")) for r in rows)) for c in columns}
    lines = ["  ".join(c.rjust(widths[c]) if i > 1 else c.ljust(widths[c]) for i, c in enumerate(columns))]
    for r in rows:
        lines.append("  ".join(r.get(c, "").rjust(widths[c]) if i > 1 else r.get(c, "").ljust(widths[c])
                               for i, c in enumerate(columns)))
    return "\n".join(lines)


def format_summary(results: SweepResults) -> str:
    """Plain-text report of a sweep: counts, per-width means ± std, and the fits table."""
    spec = results.spec
    lines = [
        f"sweep {spec.name!r} ({spec.kind}): {results.n_cells - results.n_missing}/{results.n_cells} cells in "
        f"{results.store_path}",
        f"  computed {results.n_computed}, already stored {results.n_skipped}, missing {results.n_missing}"
        + (f", {results.seconds:.1f} s" if results.seconds else ""),
    ]
    if results.n_missing:
        lines.append("  (missing cells are being computed by another process, or failed: rerun to complete)")
    summary = results.summary
    if summary is None or len(summary) == 0:
        lines.append("no cells stored yet")
        return "\n".join(lines)
    if spec.kind == "kernel":
        shown = [("rel_fro", "rel_fro"), ("cert", "cert"), ("kappa", "kappa(Θ_m)"), ("krr_err", "krr_err")]
    else:
        shown = [("ntk_distance", "|f_m-f_ntk|"), ("lin_distance", "|f_m-f_lin|"), ("acc_m", "acc_m"),
                 ("acc_lin", "acc_lin"), ("acc_ntk", "acc_ntk")]
    shown = [(k, label) for k, label in shown if f"{k}_mean" in summary.columns]
    columns = ["dataset", "model", "width", "seeds"] + [label for _, label in shown]
    rows = []
    for _, r in summary.iterrows():
        row = {"dataset": str(r["dataset"]), "model": str(r["model"]), "width": str(int(r["width"])),
               "seeds": str(int(r["n_seeds"]))}
        for k, label in shown:
            row[label] = _pm(r[f"{k}_mean"], r[f"{k}_std"])
        rows.append(row)
    lines += ["", "mean ± std over seeds:", _table(rows, columns)]
    fits = results.fits
    if fits is not None and len(fits):
        if spec.kind == "kernel":
            fit_cols = [("slope_rel_fro", "slope rel_fro"), ("slope_cert", "slope cert"),
                        ("log10_m_cert_half", "log10 m(cert=1/2)"), ("log10_m_theory", "log10 m_theory"),
                        ("kappa_G", "κ(G)"), ("kappa_d_G", "κ_d(G)"), ("rank_G", "rank"),
                        ("lambda_min_inf", "λ_min(Θ∞)"), ("kappa_inf", "κ(Θ∞)"), ("limit", "Θ∞")]
        else:
            fit_cols = [("slope_ntk_distance", "slope |f_m-f_ntk|"), ("slope_lin_distance", "slope |f_m-f_lin|"),
                        ("kappa_d_G", "κ_d(G)"), ("log10_m_theory", "log10 m_theory"), ("kappa_inf", "κ(Θ∞)"),
                        ("limit", "Θ∞")]
        fit_cols = [(k, label) for k, label in fit_cols if k in fits.columns]
        rows = []
        for _, r in fits.iterrows():
            row = {"dataset": str(r["dataset"]), "model": str(r["model"])}
            for k, label in fit_cols:
                value = r[k]
                row[label] = str(int(value)) if k == "rank_G" and not _isnan(value) else _fmt(value)
            rows.append(row)
        lines += ["", "fits vs width (log-log least squares on seed means; m(cert=1/2) extrapolated, "
                      "m_theory = κ_d(G)^6 n ln n with constant 1):" if spec.kind == "kernel" else
                  "fits vs width (log-log least squares on seed means):",
                  _table(rows, ["dataset", "model"] + [label for _, label in fit_cols])]
    return "\n".join(lines)


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
