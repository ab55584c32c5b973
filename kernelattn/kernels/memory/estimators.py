"""Peak-memory estimates from shapes alone, one per computation, calibrated against measured peaks.

Each estimator returns a :class:`~kernelattn.kernels.memory.budgets.MemoryEstimate`:
byte counts per buffer XLA keeps alive at the peak, times the itemsize, plus
``RUNTIME_OVERHEAD`` (32 MiB: compilation and allocator slack; the Python
and JAX runtime already resident are not counted, since the budget is taken
from what is still free). Coefficients were fitted to the peak-RSS increase
(``ru_maxrss`` after − before, measured in a fresh subprocess after a warm-up
call; the script is ``benchmarks/memory_peak.py``, re-run by
``tests/test_memory.py``) on XLA:CPU (jax 0.10.2, 2-core host), float32 and float64:

- streaming/structured head NTK (:func:`head_ntk_memory`): 2·n1·n2 (traced;
  (2C² + 1)·n1·n2 untraced) + (n1 + n2)·chunk·(1 + C [untraced] + [a]) +
  4·d·chunk (the drawn W with its random bits) — estimate/peak 1.11 to 1.58
  over 13 sizes (n up to 4000, chunk up to 16384, C up to 10);
- the sweep's stream (``kernels.stream.head_kernel_stream``, S seeds vmapped):
  3·n_all·n + (n_all + 2n)·chunk + 4·d·chunk per seed, plus two float64
  host copies of each Θ_m — 1.03 to 1.14;
- sweep metrics on the host (float64): 2·n_all·n + 10·n² (symmetrized
  copies, ``eigvalsh`` and Cholesky work arrays) — 1.13;
- autodiff NTK, "jacobian" (:func:`autodiff_ntk_memory`): 2·(n1 + n2)·C·P +
  (n1² + n2²)·C·A, the reverse-mode cotangents of the A activations of
  every row — 0.89 to 1.11; "ntvp": 4·(n1 + n2)·A + 3·P + 2·n1·n2·C² — 1.03;
- attacks (:func:`attack_memory`), model target: 8·n·d + 7·n·m + 2·d² + 3·P
  + 2·n·C — 1.06 to 1.23; kernel-ridge target: 8·n·d + 6·n·m + 8·n² + 3·P
  — 1.29 to 1.46.

(``[a]``: 1 when the readout is trained; x2 = None counts as n2 = n1.) On
accelerators the same buffers live in device memory; allocator fragmentation
and library workspaces (cuBLAS, cuSOLVER) add ~10–20%, which the default 50%
budget absorbs.
"""

from __future__ import annotations

import numpy as np

from kernelattn._validation import check_choice, check_int
from kernelattn.errors import InputValueError
from kernelattn.kernels.memory.budgets import MemoryEstimate, format_bytes

__all__ = [
    "attack_memory",
    "autodiff_ntk_memory",
    "factored_ntk_memory",
    "head_ntk_memory",
    "head_param_count",
    "seed_batch_memory",
    "sweep_cell_memory",
    "sweep_group_memory",
    "training_memory",
]


def _itemsize(dtype) -> int:
    try:
        name = np.dtype(dtype).name
    except TypeError as err:
        raise InputValueError(f"dtype: expected one of ['float32', 'float64'], got {dtype!r}") from err
    check_choice(name, "dtype", ("float32", "float64"))
    return np.dtype(name).itemsize


def head_param_count(
    d: int, width: int, *, out_dim: int = 1, use_bias: bool = False, train_readout: bool = False
) -> int:
    """Trainable parameters P of the two-layer head: d·m (+ m for b) (+ m·C for a trained readout)."""
    return width * (d + int(use_bias) + (out_dim if train_readout else 0))


def _common_options(dtype: str, seeds: int = 1) -> list[str]:
    options = []
    if np.dtype(dtype).name == "float64":
        options.append(
            "float32 instead of float64 (halves every term; check the kernel with "
            "kernelattn.kernels.guards.check_kernel afterwards)"
        )
    if seeds > 1:
        options.append(f"fewer seeds batched at once (now {seeds}; see plan_seed_batch)")
    return options


def head_ntk_memory(
    n1: int,
    n2: int | None,
    d: int,
    width: int,
    *,
    width_chunk: int,
    out_dim: int = 1,
    trace_output: bool = True,
    train_readout: bool = False,
    use_bias: bool = False,
    seeds: int = 1,
    sample_shards: int = 1,
    params_given: bool = False,
    dtype="float32",
) -> MemoryEstimate:
    """Peak bytes of the structured / streaming empirical head NTK (``kernels.empirical``).

    ``streaming_head_ntk`` and ``structured_head_ntk`` accumulate Θ over
    chunks of hidden units; per device at the peak (calibration: module doc):

    - Θ: the accumulator and the linear part σ_w²X₁X₂ᵀ/d, 2·n1·n2 when traced;
      untraced, accumulator and one chunk's ``(n1, n2, C, C)`` contribution,
      (2C² + 1)·n1·n2;
    - pre-activations of a chunk: (n1 + n2)·chunk·(1 + C [untraced] + 1 [a
      trained]) (x2 = None counts as n2 = n1);
    - parameters of a chunk: 4·d·chunk (W and the random bits and normal
      transform of its draw) + 3·chunk·C (a) + 2·chunk (b);
    - inputs: 2·(n1 + n2)·d (host array and device copy).

    Args:
      n1, n2: rows of x1 and x2 (``n2=None``: x2 = x1).
      d: input dimension.
      width: hidden width m (only min(width_chunk, m) matters: memory does
        not grow with m).
      width_chunk: hidden units per accumulation step.
      out_dim: C.
      trace_output: output-traced ``(n1, n2)`` (default) or full ``(n1, n2, C, C)``.
      train_readout, use_bias: the head's trained parameters.
      seeds: networks computed at once (vmapped): every term but the inputs
        is per seed.
      sample_shards: rows of x1 split over this many devices
        (``kernelattn.kernels.distributed``): the estimate is per device.
      params_given: ``structured_head_ntk`` (parameters passed in, not
        drawn): adds the whole layer W, b, a and the zero-padded chunked
        copy it makes, 2·(d + [b] + C)·m.
      dtype: compute dtype.
    """
    item = _itemsize(dtype)
    n1 = check_int(n1, "n1", minimum=1)
    n2 = n1 if n2 is None else check_int(n2, "n2", minimum=1)
    d = check_int(d, "d", minimum=1)
    width = check_int(width, "width", minimum=1)
    chunk = min(check_int(width_chunk, "width_chunk", minimum=1), width)
    c = check_int(out_dim, "out_dim", minimum=1)
    seeds = check_int(seeds, "seeds", minimum=1)
    rows = -(-n1 // check_int(sample_shards, "sample_shards", minimum=1))
    k = 1 if trace_output else c * c
    theta = (2 * k + (0 if k == 1 else 1)) * rows * n2
    pre = (rows + n2) * chunk * (1 + (0 if trace_output else c) + int(train_readout))
    params = 4 * d * chunk + 3 * chunk * c + 2 * chunk * int(use_bias)
    terms = {
        "Θ accumulator": seeds * theta * item,
        "pre-activations of a chunk": seeds * pre * item,
        "parameters of a chunk": seeds * params * item,
        "inputs": 2 * (rows + n2) * d * item,
    }
    if params_given:
        padded = -(-width // chunk) * chunk
        terms["parameters (given, and chunked copy)"] = (width + padded) * (d + int(use_bias) + c) * item
    shape = f"{n1}×{n2}" + ("" if trace_output else f"×{c}×{c}")
    options = [f"smaller n (the Θ accumulator alone is {format_bytes(terms['Θ accumulator'])}, quadratic in n)"]
    if chunk > 1:
        options.append(f"a smaller width_chunk (now {chunk}; see plan_width_chunk)")
    if not trace_output and c > 1:
        options.append(f"trace_output=True (divides the accumulator by C² = {c * c})")
    options += _common_options(dtype, seeds)
    options.append(
        "shard the rows over devices (kernelattn.kernels.distributed, shard_samples=True: "
        "each device holds n1/D rows of Θ)"
    )
    what = (
        f"the empirical head NTK ({shape}, d={d}, width={width}, width_chunk={chunk}, "
        f"{np.dtype(dtype).name}" + (f", {seeds} seeds" if seeds > 1 else "") + ")"
    )
    return MemoryEstimate(what, terms, options=tuple(options))


def autodiff_ntk_memory(
    n1: int,
    n2: int | None,
    *,
    n_params: int,
    out_dim: int = 1,
    activations: int = 0,
    implementation: str = "jacobian",
    trace_output: bool = True,
    row_block: int | None = None,
    dtype="float32",
) -> MemoryEstimate:
    """Peak bytes of the generic autodiff NTK (``kernels.empirical.empirical_ntk``).

    - "jacobian": the Jacobians 2·(n1 + n2)·C·P (each, and the copy the
      contraction reshapes it into), and reverse mode through a
      batch of n rows propagates n·C cotangents of every hidden activation of
      every row: n²·C·A for A activations per row (the term that dominates
      for wide models; ``row_block=b``, row by row, bounds it to b·C·A);
    - "ntvp": one column at a time: activations and tangents 4·(n1 + n2)·A +
      3·P, and the stacked columns 2·n1·n2·C².
    Plus the kernel n1·n2 (·C² untraced). x2 = None counts as n2 = n1 (one
    Jacobian, contracted with itself).

    Args:
      n1, n2: rows of x1 and x2 (``n2=None``: x2 = x1).
      n_params: P, trainable parameters (``head_param_count`` for the head).
      out_dim: C.
      activations: A, hidden activations per row (for the 2-layer head: its
        width m; for MLP-Attn add d per attention layer).
      implementation: "jacobian" or "ntvp".
      trace_output: output-traced kernel or the full ``(n1, n2, C, C)``.
      row_block: "jacobian" with Jacobians built this many rows at a time.
      dtype: compute dtype.
    """
    item = _itemsize(dtype)
    n1 = check_int(n1, "n1", minimum=1)
    same = n2 is None
    n2 = n1 if same else check_int(n2, "n2", minimum=1)
    p = check_int(n_params, "n_params", minimum=1)
    c = check_int(out_dim, "out_dim", minimum=1)
    a = check_int(activations, "activations", minimum=0)
    check_choice(implementation, "implementation", ("jacobian", "ntvp"))
    k = 1 if trace_output else c * c
    terms = {"kernel": n1 * n2 * k * item}
    if implementation == "jacobian":
        jac_rows = n1 if same else n1 + n2
        terms["Jacobians (and their contraction layout)"] = 2 * jac_rows * c * p * item
        blocks = [n1] if same else [n1, n2]
        if row_block is None:
            cotangent_rows = sum(b * b for b in blocks)  # every output of the batch through every row
        else:  # row by row: b rows at a time, each through itself only
            cotangent_rows = sum(min(check_int(row_block, "row_block", minimum=1), b) for b in blocks)
        terms["reverse-mode cotangents"] = cotangent_rows * c * a * item
        options = [
            f"row_block=b (cotangents b·C·A instead of n²·C·A: now {format_bytes(terms['reverse-mode cotangents'])})",
            "implementation='ntvp' (never stores a Jacobian)",
        ]
    else:
        terms["activations and tangents"] = (4 * (n1 + n2) * a + 3 * p) * item
        terms["stacked columns"] = 2 * n1 * n2 * c * c * item
        options = []
    options.append("the structured head NTK (kernels.empirical.structured_head_ntk) for the two-layer head")
    options += _common_options(dtype)
    what = f"the autodiff NTK ({implementation}, {n1}×{n2}, C={c}, P={p}, A={a}, {np.dtype(dtype).name})"
    return MemoryEstimate(what, terms, options=tuple(options))


def factored_ntk_memory(
    n1: int,
    n2: int | None,
    *,
    factor_size: int,
    pair_size: int,
    rest_params: int,
    out_dim: int = 1,
    activations: int = 0,
    trace_output: bool = True,
    dtype="float32",
) -> MemoryEstimate:
    """Peak bytes of the structured-derivatives NTK (``empirical_ntk(implementation="factored")``).

    Per input row: the factors (matmul inputs u and output cotangents g,
    ``factor_size`` numbers), the per-row Jacobians of the other parameters
    2·C·``rest_params``, and C cotangents of every activation; per pair of
    rows the token-pair products 2·``pair_size`` (·C² untraced); plus the kernel.

    Args:
      n1, n2: rows of x1 and x2 (``n2=None``: x2 = x1).
      factor_size, pair_size: ``Plan.factor_size()``, ``Plan.pair_size()``.
      rest_params: parameters that get per-row Jacobians.
      out_dim: C.
      activations: intermediate values of one row (``Plan.activations``).
      trace_output: output-traced kernel or the full ``(n1, n2, C, C)``.
      dtype: compute dtype.
    """
    item = _itemsize(dtype)
    n1 = check_int(n1, "n1", minimum=1)
    same = n2 is None
    n2 = n1 if same else check_int(n2, "n2", minimum=1)
    c = check_int(out_dim, "out_dim", minimum=1)
    rows = n1 if same else n1 + n2
    k = 1 if trace_output else c * c
    terms = {
        "kernel": n1 * n2 * k * item,
        "factors (matmul inputs and output cotangents)": rows * check_int(factor_size, "factor_size", minimum=0) * item,
        "per-row Jacobians of the other parameters": 2
        * rows
        * c
        * check_int(rest_params, "rest_params", minimum=0)
        * item,
        "reverse-mode cotangents": rows * c * check_int(activations, "activations", minimum=0) * item,
        "pairwise products": 2 * n1 * n2 * k * check_int(pair_size, "pair_size", minimum=1) * item,
    }
    options = [
        "the structured head NTK (kernels.empirical.structured_head_ntk) for the two-layer head",
        "computing the kernel in blocks of rows of x1 and x2",
        *_common_options(dtype),
    ]
    what = f"the factored autodiff NTK ({n1}×{n2}, C={c}, {np.dtype(dtype).name})"
    return MemoryEstimate(what, terms, options=tuple(options))


def sweep_cell_memory(
    n: int,
    n_test: int,
    d: int,
    *,
    width_chunk: int,
    seeds: int = 1,
    out_dim: int = 1,
    train_readout: bool = False,
    use_bias: bool = False,
    dtype="float32",
) -> MemoryEstimate:
    """Peak bytes of one kernel-sweep step (``kernelattn.experiments.sweeps``, "relu"/"mlp-attn" models).

    Per (dataset, model) group: Θ_∞ on (n + n*) × n in float64 (closed form:
    ~4·n_all·n while computed) and its reference spectrum and solve; per seed
    batch, the streamed head NTK of ``head_kernel_stream`` — x of n_all = n + n*
    rows against its first n — with S seeds vmapped: 3·n_all·n (linear part,
    accumulator in and out) + (n_all + 2n)·chunk (pre-activations and the
    train slice) + 4·d·chunk per seed on the device, and two float64 host
    copies of each Θ_m; then the metrics on the host in float64: Θ_∞ kept,
    and ~10·n² of symmetrized copies, eigenvalue and Cholesky work arrays.

    Args:
      n, n_test: training and test points.
      d: feature dimension.
      width_chunk: the sweep's ``kernel.width_chunk``.
      seeds: seeds vmapped together (``kernel.batch_seeds``).
      out_dim, train_readout, use_bias: the head.
      dtype: the sweep's compute dtype (Θ_∞ and metrics are float64 regardless).
    """
    item = _itemsize(dtype)
    n = check_int(n, "n", minimum=1)
    n_test = check_int(n_test, "n_test", minimum=0)
    d = check_int(d, "d", minimum=1)
    chunk = check_int(width_chunk, "width_chunk", minimum=1)
    seeds = check_int(seeds, "seeds", minimum=1)
    c = check_int(out_dim, "out_dim", minimum=1)
    n_all = n + n_test
    per_seed_device = (
        3 * n_all * n
        + (n_all + 2 * n) * chunk * (1 + int(train_readout))
        + 4 * d * chunk
        + 3 * chunk * c
        + 2 * chunk * int(use_bias)
    ) * item
    terms = {
        "Θ_m accumulators and pre-activations": seeds * per_seed_device,
        "inputs": 2 * n_all * d * item,
    }
    stream_host = {
        "Θ_m float64 copies": seeds * 2 * n_all * n * 8,
        "Θ_∞ reference": n_all * n * 8,
        "metrics work arrays (float64)": 10 * n * n * 8,
    }
    limit_phase = {"Θ_∞ closed form (float64)": 4 * n_all * n * 8}
    limit_host = {"Θ_∞ reference and its spectrum (float64)": n_all * n * 8 + 10 * n * n * 8}
    # Θ_∞ is computed first and its temporaries freed before streaming: the peak is the larger phase.
    if sum(limit_phase.values()) + sum(limit_host.values()) > sum(terms.values()) + sum(stream_host.values()):
        terms, stream_host = limit_phase, limit_host
    options = [
        f"fewer training/test points (Θ is (n + n*) × n = {n_all}×{n}, float64 on the host)",
        f"a smaller width_chunk (now {chunk})",
    ]
    options += _common_options(dtype, seeds)
    options.append("spread seeds over processes or devices (kernelattn.kernels.distributed)")
    what = (
        f"a kernel-sweep cell (n={n}, n*={n_test}, d={d}, width_chunk={chunk}, {np.dtype(dtype).name}"
        + (f", {seeds} seeds batched" if seeds > 1 else "")
        + ")"
    )
    return MemoryEstimate(what, terms, stream_host, options=tuple(options))


def sweep_group_memory(n: int, n_test: int) -> MemoryEstimate:
    """A first bound for one (dataset, model) group of a sweep, checked before any of its work.

    Six float64 (n + n*) × n matrices on the host (Θ_∞, Θ_m, their
    differences and factors), with no runtime overhead: the sweep compares
    it with the host's available memory as is, for every model (the
    calibrated :func:`sweep_cell_memory` follows for the streamed ones).

    Args:
      n, n_test: training and test points.
    """
    n = check_int(n, "n", minimum=1)
    n_test = check_int(n_test, "n_test", minimum=0)
    return MemoryEstimate(
        f"the kernel matrices of a sweep group (n={n}, n*={n_test})",
        {},
        {"(n + n*) × n kernel matrices (float64)": 6 * 8 * (n + n_test) * n},
        overhead=0,
        options=("set n_train / n_test in the spec's dataset entry",),
    )


def seed_batch_memory(n: int, n_test: int, *, width_chunk: int, seeds: int, dtype="float32") -> MemoryEstimate:
    """The rule a sweep's ``kernel.memory_gb`` bounds before it vmaps its seeds together.

    Per seed 3·n_all·n (the Θ_m accumulators) + 4·n_all·chunk (a chunk's
    pre-activations), n_all = n + n*, in ``dtype``, with no runtime overhead:
    the spec's setting, not a calibrated peak (that is :func:`sweep_cell_memory`).

    Args:
      n, n_test: training and test points.
      width_chunk: the sweep's ``kernel.width_chunk``.
      seeds: seeds vmapped together.
      dtype: the sweep's compute dtype.
    """
    item = _itemsize(dtype)
    n = check_int(n, "n", minimum=1)
    n_all = n + check_int(n_test, "n_test", minimum=0)
    chunk = check_int(width_chunk, "width_chunk", minimum=1)
    seeds = check_int(seeds, "seeds", minimum=1)
    return MemoryEstimate(
        f"{seeds} seeds of a sweep group vmapped together (n={n}, n*={n_all - n})",
        {"Θ_m accumulators and pre-activations": seeds * item * (3 * n_all * n + 4 * n_all * chunk)},
        overhead=0,
    )


def _head_sizes(n, d, width, out_dim, n_params) -> tuple[int, int, int, int, int]:
    """Checked (n, d, m, C, P) of the two-layer head; P defaults to d·m + m·C (its weights and readout)."""
    n = check_int(n, "n", minimum=1)
    d = check_int(d, "d", minimum=1)
    m = check_int(width, "width", minimum=1)
    c = check_int(out_dim, "out_dim", minimum=1)
    return n, d, m, c, d * m + m * c if n_params is None else check_int(n_params, "n_params", minimum=1)


def attack_memory(
    n: int,
    d: int,
    *,
    width: int,
    out_dim: int = 1,
    target: str = "model",
    n_params: int | None = None,
    dtype="float32",
) -> MemoryEstimate:
    """Peak bytes of an FGSM/PGD/MIM attack on the whole training set (``kernelattn.learning.attacks``).

    Every iteration differentiates the loss of all n training points at once
    through the attention (keys/values = the perturbed set, O(n·d + d²)) and
    the head: X, its perturbation, the gradient ∇_X L and MIM's momentum
    (8·n·d), the head's pre-activations and their cotangents (7·n·m) and the
    parameters (3·P). The "kernel" target differentiates through the n × n
    kernel of the perturbed set and one dense solve instead (8·n² + 6·n·m).

    Args:
      n, d: training set shape.
      width: hidden width m.
      out_dim: C.
      target: "model" or "kernel" (``AttackConfig.target``).
      n_params: P (default: d·m + m·C, the head with its readout).
      dtype: compute dtype.
    """
    item = _itemsize(dtype)
    n, d, m, c, p = _head_sizes(n, d, width, out_dim, n_params)
    check_choice(target, "target", ("model", "kernel"))
    terms = {
        "inputs, perturbation and gradients": 8 * n * d * item,
        "parameters": 3 * p * item,
    }
    if target == "model":
        terms["head activations and cotangents"] = 7 * n * m * item
        terms["attention and outputs"] = (2 * d * d + 2 * n * c) * item
    else:
        terms["head activations and cotangents"] = 6 * n * m * item
        terms["kernel, solve and their cotangents"] = 8 * n * n * item
    options = ["attack fewer training points at once (a row mask still needs the whole set in the loss)"]
    if target == "kernel":
        options.append("target='model' (no n × n kernel to differentiate)")
    options += _common_options(dtype)
    what = f"the {target}-target attack (n={n}, d={d}, width={m}, C={c}, {np.dtype(dtype).name})"
    return MemoryEstimate(what, terms, options=tuple(options))


def training_memory(
    n: int,
    d: int,
    *,
    width: int,
    out_dim: int = 1,
    batch_size: int = 128,
    n_params: int | None = None,
    dtype="float32",
) -> MemoryEstimate:
    """Peak bytes of training the two-layer head with Adam (``kernelattn.learning.training.train``).

    The parameters, their gradients, Adam's two moments and the update
    (5·P), the features of the training set with their device copy (2·n·d)
    and one minibatch's pre-activations, activations and their cotangents
    (4·b·m). Not calibrated like the estimators above: a lower bound, meant
    to refuse widths that cannot fit (P grows as d·m) before training starts.

    Args:
      n, d: training set shape.
      width: hidden width m.
      out_dim: C.
      batch_size: b (at most n).
      n_params: P (default: d·m + m·C).
      dtype: compute dtype.
    """
    item = _itemsize(dtype)
    n, d, m, c, p = _head_sizes(n, d, width, out_dim, n_params)
    b = min(check_int(batch_size, "batch_size", minimum=1), n)
    terms = {
        "parameters, gradients and Adam state": 5 * p * item,
        "features": 2 * n * d * item,
        "minibatch activations and cotangents": 4 * b * m * item,
    }
    options = [f"a smaller width (the parameters alone are {format_bytes(p * item)} at width {m})"]
    options += _common_options(dtype)
    what = f"training the head (n={n}, d={d}, width={m}, C={c}, {np.dtype(dtype).name})"
    return MemoryEstimate(what, terms, options=tuple(options))
