"""The same kernels through neural-tangents (the oracle backend; docs/math.md §4-7).

Importing this module never imports neural-tangents: every function calls
:func:`_nt` first, which imports it lazily and raises a clear ``ImportError``
outside the legacy environment (neural-tangents 0.6.5 needs jax 0.4.25; build
it with ``bash scripts/legacy_env.sh`` and run ``.venv-legacy/bin/python``).

Conventions of neural-tangents 0.6.5, checked against its source and
numerically (tests/oracle):

- **Head.** ``MLPHead`` is ``stax.serial(Dense(m, W_std=σ_w, b_std=σ_b,
  parameterization='ntk'), Relu(), Dense(C, W_std=σ_a, parameterization='ntk'))``
  (:func:`head_stax`); NT's input covariance is x·x'/d, so its first-layer
  pre-activation covariance is σ_w² x·x'/d + σ_b², as in docs/math.md §6.
- **Fixed readout.** ``kernel_fn`` trains every layer. The readout is the last
  ``Dense`` (NTK parameterization, no bias): f = (σ_a/√m) Σ_r a_r φ_r, so
  ∂f/∂a_r = σ_a φ_r/√m and its NTK term is σ_a² (1/m) Σ_r φ_r(x) φ_r(x'),
  which is exactly the output NNGP σ_a² K (and NT's Dense rule
  ntk_out = nngp_out + σ_a² ntk_in says the same). Hence the NTK with the
  readout fixed (all other parameters trained) is
  ``Θ_first = Θ_both − NNGP_out``, with both terms from NT's ``kernel_fn``;
  E[a²] = 1 for random signs as for N(0, 1) readouts. The identity holds for
  any network ending in such a readout (the QKV model included).
- **Empirical NTK.** ``nt.empirical_ntk_fn(f, trace_axes=(-1,))`` *averages*
  over the traced output axis (trace / C) and ``trace_axes=()`` lays the full
  kernel out as ``zip(f(x1).shape, f(x2).shape)`` = ``(n1, n2, C, C)``: both
  exactly kernelattn's ``empirical_ntk`` convention, so no conversion is done.
- **Attention.** kernelattn's ``QKVAttention`` with ``scaling="linear"``
  (W_K = W_Q tied) is ``stax.GlobalSelfAttention(n_chan_out=out_dim,
  n_chan_key=h, n_chan_val=h, n_heads=1, linear_scaling=True,
  attention_mechanism='IDENTITY', W_query_std=σ_q, W_key_std=σ_q,
  W_value_std=σ_v, W_out_std=σ_o, b_std=None)``: NT scales the logits by
  W_query_std·W_key_std/(d·h) = σ_q²/(d h) with raw N(0, 1) weights (ours:
  (σ_q X W/√d)(σ_q X W/√d)ᵀ/h, the same) and the output by
  W_out_std·W_value_std/√(h·n_heads·d) (ours: σ_v/√d · σ_o/√h). Its NNGP
  on the training set is σ_q⁴σ_v²σ_o² G³/d³ and its NTK 2·NNGP (W_V and W_O;
  the tied W_Q's contribution is O(1/h) and vanishes in the limit).
  The training set is ONE sequence: inputs ``(1, n, d)``, kernels
  ``(1, 1, n, n)``, squeezed here to ``(n, n)``.
- **Test points.** NT's attention is self-attention within one sequence. For
  test queries attending over the training set only, :func:`qkv_kernels_nt`
  runs the sequence train ∪ test with the test positions *masked as keys*:
  NT's own masked closed form (``_get_weighting`` zeroes the masked key
  columns of the logit kernel) gives every position the output of a query
  attending over the training set alone. The public masking wrapper would
  then zero the masked positions' outputs (``remask_kernel=True``), so the
  undecorated layer (``inspect.unwrap(stax.GlobalSelfAttention)``) is used
  for the attention and its output kernel is passed, unmasked, to the head's
  public ``kernel_fn``. The train × train block equals the unmasked public
  route and the test × train block equals
  ``qkv_attention_nngp(test, train, context=train)`` (tests/oracle).
- **Widths.** NT's limit takes every width to infinity, the attention's
  ``n_chan_out`` included. A finite ``QKVAttention.out_dim`` (``make_model``
  leaves it at d) keeps O(out_dim^{-1/2}) fluctuations at any head width, so
  empirical kernels approach these only when out_dim grows with the widths.
- **Precision.** NT's ``kernel_fn`` promotes its inputs to float64 whenever
  x64 is on; ``dtype`` here rounds the inputs and casts the result. Self-kernels
  use ``diagonal_batch=False``, which takes Σ(x, x) from the same product as
  Σ(x, x'): θ = 0 exactly on the diagonal (NT's default sums differently and
  arccos turns that rounding into √eps, 8e-9 relative at d = 784 in float64).
- **Not covered.** ``scaling="sqrt"``: NT's ``linear_scaling=False`` closed
  form (IDENTITY mechanism) is the limit of infinitely many heads, while
  ``QKVAttention`` has one head whose logits stay random at any width;
  row re-normalization (``normalize=True``): NT has no such layer.

Public API: :func:`head_stax`, :func:`head_stax_params`, :func:`head_kernels_nt`,
:func:`fixed_readout_ntk`, :func:`empirical_ntk_fn_nt`, :func:`empirical_ntk_nt`,
:func:`qkv_attention_stax`, :func:`qkv_attention_kernels_nt`,
:func:`qkv_kernels_nt`, :class:`QKVKernels`.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import types
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from kernelattn._precision import resolve_dtype
from kernelattn._validation import check_choice, check_matrix
from kernelattn.errors import DependencyError, InputValueError
from kernelattn.kernels.analytic import Kernel
from kernelattn.kernels.empirical import model_apply_fn
from kernelattn.models import HeadConfig, QKVAttention, TwoLayerReLU

NT_VERSION = "0.6.5"
SUPPORTED_JAX = "0.4.25"
IMPLEMENTATIONS = ("JACOBIAN_CONTRACTION", "NTK_VECTOR_PRODUCTS", "STRUCTURED_DERIVATIVES")
LEGACY_HINT = (
    "the neural-tangents backend needs the legacy environment: run `bash scripts/legacy_env.sh` "
    f"and use .venv-legacy/bin/python (jax=={SUPPORTED_JAX}, neural-tangents=={NT_VERSION}, "
    "from requirements/legacy.txt)"
)


# ------------------------------------------------------------------------- import


def _version_tuple(version: str) -> tuple[int, ...]:
    """``"0.4.25"`` → ``(0, 4, 25)``; stops at the first non-numeric part."""
    parts = []
    for part in version.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
        if digits != part:
            break
    return tuple(parts)


def _nt() -> types.ModuleType:
    """Import and return ``neural_tangents``, or raise an ``ImportError`` saying how to get it.

    neural-tangents 0.6.5 imports ``neural_tangents.experimental`` (a
    TensorFlow bridge) from its ``__init__``; when TensorFlow is absent that
    submodule is replaced by an empty stub in ``sys.modules`` before the
    import. Nothing else is touched.

    Raises:
      DependencyError (an ImportError): neural-tangents is missing, or jax is newer than the 0.4
        series it runs on, or the import fails for another reason.
    """
    jax_version = _version_tuple(jax.__version__)
    if jax_version[:2] != (0, 4):
        raise DependencyError(
            f"{LEGACY_HINT}; this interpreter has jax {jax.__version__}, and neural-tangents "
            f"{NT_VERSION} runs on the jax 0.4 series only"
        )
    if importlib.util.find_spec("neural_tangents") is None:
        raise DependencyError(f"{LEGACY_HINT}; neural-tangents is not installed in {sys.prefix}")
    stub_name = "neural_tangents.experimental"
    if importlib.util.find_spec("tensorflow") is None and stub_name not in sys.modules:
        stub = types.ModuleType(stub_name)
        stub.__doc__ = "Stub inserted by kernelattn: TensorFlow is absent, the TF bridge is unavailable."
        sys.modules[stub_name] = stub
    try:
        return importlib.import_module("neural_tangents")
    except Exception as err:  # an incompatible jax shows up as Attribute/ImportError
        raise DependencyError(f"{LEGACY_HINT}; importing neural-tangents failed: {err!r}") from err


# --------------------------------------------------------------------- small helpers


class QKVKernels(NamedTuple):
    """Kernels of the QKV model with the training set as the one attended sequence.

    Attributes:
      train: ``Kernel`` between training points, ``(n, n)``.
      test_train: ``Kernel`` between test queries and training points,
        ``(n*, n)``; ``None`` without test points.
      test: ``Kernel`` between test queries, ``(n*, n*)``; ``None`` without.
    """

    train: Kernel
    test_train: Kernel | None
    test: Kernel | None


def _expand_outputs(matrix: jax.Array, out_dim: int) -> jax.Array:
    """Θ ⊗ I_C laid out as ``(n1, n2, C, C)``."""
    return matrix[:, :, None, None] * jnp.eye(out_dim, dtype=matrix.dtype)


def _finish(nngp: jax.Array, ntk_both: jax.Array, head: HeadConfig, full_output: bool) -> Kernel:
    """Output kernels from NT's (nngp, ntk), readout fixed or trained, traced or ⊗ I_C."""
    ntk = ntk_both if head.train_readout else fixed_readout_ntk(ntk_both, nngp)
    if full_output:
        return Kernel(_expand_outputs(nngp, head.out_dim), _expand_outputs(ntk, head.out_dim))
    return Kernel(nngp, ntk)


def _cast(kernel: Kernel, dtype) -> Kernel:
    """NT promotes kernel_fn inputs to float64 whenever x64 is on; return ``dtype``."""
    return Kernel(jnp.asarray(kernel.nngp, dtype), jnp.asarray(kernel.ntk, dtype))


def fixed_readout_ntk(ntk_both: jax.Array, nngp: jax.Array) -> jax.Array:
    """NTK with the readout fixed, from NT's all-layers NTK: Θ_first = Θ_both − NNGP_out.

    The readout's own NTK term is σ_a² (1/m) Σ_r φ_r(x)φ_r(x') → σ_a² K, the
    output NNGP (see the module docstring).

    Args:
      ntk_both: NT's ``kernel_fn`` NTK, any shape.
      nngp: NT's ``kernel_fn`` NNGP of the output, same shape.
    """
    return ntk_both - nngp


def _check_inputs(x1, x2, dtype, allow_zero_rows: bool = True) -> tuple[jax.Array, jax.Array | None]:
    x1 = check_matrix(x1, "x1", allow_zero_rows=allow_zero_rows)
    x1j = jnp.asarray(x1, dtype)
    if x2 is None:
        return x1j, None
    x2 = check_matrix(x2, "x2", n_cols=x1.shape[1], allow_zero_rows=allow_zero_rows)
    return x1j, jnp.asarray(x2, dtype)


# ------------------------------------------------------------------------------ head


def head_stax(head: HeadConfig) -> tuple[Callable, Callable, Callable]:
    """neural-tangents' stax triple ``(init_fn, apply_fn, kernel_fn)`` of ``MLPHead``.

    ``stax.serial(Dense(m, W_std=σ_w, b_std=σ_b if use_bias else None,
    parameterization='ntk'), Relu(), Dense(C, W_std=σ_a, parameterization='ntk'))``
    on ``(n, d)`` inputs, outputs ``(n, C)``. Its ``kernel_fn`` trains every
    layer (the readout too); see :func:`fixed_readout_ntk`.
    """
    stax = _nt().stax
    return stax.serial(
        stax.Dense(
            head.width, W_std=head.sigma_w, b_std=head.sigma_b if head.use_bias else None, parameterization="ntk"
        ),
        stax.Relu(),
        stax.Dense(head.out_dim, W_std=head.sigma_a, parameterization="ntk"),
    )


def head_stax_params(head_vars: dict, head: HeadConfig) -> list:
    """kernelattn head variables → the parameters of :func:`head_stax`'s ``apply_fn``.

    Args:
      head_vars: ``{"W": (d, m), "b": (m,) if use_bias, "a": (m, C)}`` (e.g.
        ``kernelattn.head_variables(variables)``).
      head: the head's ``HeadConfig``.

    Returns:
      ``[(W, b or None), (), (a, None)]``, NT's Dense bias shaped ``(1, m)``.
    """
    w = jnp.asarray(head_vars["W"])
    b = jnp.asarray(head_vars["b"]).reshape(1, -1) if head.use_bias else None
    return [(w, b), (), (jnp.asarray(head_vars["a"]), None)]


def head_kernels_nt(
    x1: jax.Array,
    x2: jax.Array | None = None,
    head: HeadConfig | None = None,
    *,
    full_output: bool = False,
    dtype="float64",
) -> Kernel:
    """Infinite-width NNGP and NTK of ``MLPHead`` by neural-tangents' ``kernel_fn``.

    The counterpart of ``kernelattn.head_kernels`` (same arguments, same output).

    Args:
      x1: ``(n1, d)`` inputs (for MLP-Attn: the attention output).
      x2: ``(n2, d)`` inputs; defaults to ``x1``.
      head: σ's, readout mode and ``out_dim``; default ``HeadConfig(width=1)``.
      full_output: ``(n1, n2, C, C)`` = Θ ⊗ I_C instead of ``(n1, n2)``.
      dtype: "float64" (default; needs x64) or "float32": the inputs are
        rounded to it and the result returned in it; NT itself computes in
        float64 whenever x64 is on (its ``_inputs_to_kernel`` promotes).

    Returns:
      ``Kernel(nngp, ntk)``; ntk is ``Θ_both − NNGP`` when the readout is fixed.
    """
    _nt()
    head = head or HeadConfig(width=1)
    dtype = resolve_dtype(dtype)
    x1j, x2j = _check_inputs(x1, x2, dtype, allow_zero_rows=head.sigma_b > 0)
    kernel_fn = head_stax(head)[2]
    # diagonal_batch=False: Σ(x, x) is then the diagonal of the same product as
    # Σ(x, x'), so c = 1 and θ = 0 exactly on the diagonal of a self-kernel (NT's
    # default computes it by another summation; arccos turns that rounding into
    # √eps: 8e-9 relative at d = 784 in float64).
    k = kernel_fn(x1j, x2j, ("nngp", "ntk"), diagonal_batch=False)
    return _cast(_finish(k.nngp, k.ntk, head, full_output), dtype)


# ------------------------------------------------------------------------- empirical


def _rowwise(model, context) -> bool:
    """Whether output row i depends on input row i only (then NT may vmap over rows)."""
    return context is not None or isinstance(model, TwoLayerReLU)


def _cast_tree(tree, dtype):
    return jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a, tree
    )


def empirical_ntk_fn_nt(
    model,
    variables: dict,
    context: jax.Array | None = None,
    *,
    implementation: str = "JACOBIAN_CONTRACTION",
    trace_output: bool = True,
    dtype="float32",
) -> tuple[Callable[[jax.Array, jax.Array | None, Any], jax.Array], Any]:
    """A jitted ``ntk(x1, x2, params)`` by ``nt.empirical_ntk_fn`` on a kernelattn model's apply.

    Args:
      model, variables, context, implementation, trace_output, dtype: as in
        :func:`empirical_ntk_nt`.

    Returns:
      ``(ntk_fn, params)``: ``ntk_fn(x1, x2_or_None, params)`` and the
      trainable parameters cast to ``dtype`` (constants and context are closed
      over, cast to ``dtype``).
    """
    nt = _nt()
    dtype = resolve_dtype(dtype)
    implementation = check_choice(str(implementation).upper(), "implementation", IMPLEMENTATIONS)
    variables = _cast_tree(dict(variables), dtype)
    context = None if context is None else jnp.asarray(check_matrix(context, "context"), dtype)
    apply_fn, params = model_apply_fn(model, variables, context)
    ntk_fn = nt.empirical_ntk_fn(
        apply_fn,
        trace_axes=(-1,) if trace_output else (),
        vmap_axes=0 if _rowwise(model, context) else None,
        implementation=nt.NtkImplementation[implementation],
    )
    return jax.jit(ntk_fn), params


def empirical_ntk_nt(
    model,
    variables: dict,
    x1: jax.Array,
    x2: jax.Array | None = None,
    context: jax.Array | None = None,
    *,
    implementation: str = "JACOBIAN_CONTRACTION",
    trace_output: bool = True,
    dtype="float32",
) -> jax.Array:
    """Empirical NTK of any kernelattn Flax model by ``nt.empirical_ntk_fn``.

    NT differentiates kernelattn's own ``model.apply`` (trainable
    ``"params"`` only; ``"constants"``, e.g. the fixed readout, and the
    context are closed over), so this is the same quantity as
    ``kernelattn.empirical_ntk`` computed by another implementation.

    Args:
      model: a kernelattn model (``TwoLayerReLU``, ``AttentionMLP``, ``QKVAttentionMLP``).
      variables: its Flax variables; floating leaves are cast to ``dtype``.
      x1: ``(n1, d)`` inputs.
      x2: ``(n2, d)`` inputs; ``None`` means ``x1``.
      context: ``(n, d)`` training set attended over (``None``: each call
        attends over its own inputs; then rows interact and NT does not vmap).
      implementation: "JACOBIAN_CONTRACTION", "NTK_VECTOR_PRODUCTS" or
        "STRUCTURED_DERIVATIVES" (``nt.NtkImplementation``).
      trace_output: average over the C outputs → ``(n1, n2)`` (NT's
        ``trace_axes=(-1,)``, which divides the trace by C); else
        ``(n1, n2, C, C)`` (NT's ``trace_axes=()`` layout).
      dtype: "float32" (default) or "float64".

    Returns:
      The kernel matrix in ``dtype``.
    """
    _nt()
    dtype = resolve_dtype(dtype)
    x1j, x2j = _check_inputs(x1, x2, dtype)
    ntk_fn, params = empirical_ntk_fn_nt(
        model, variables, context, implementation=implementation, trace_output=trace_output, dtype=dtype
    )
    return ntk_fn(x1j, x2j, params)


# ------------------------------------------------------------------------- attention


def _check_linear_qkv(attention: QKVAttention) -> None:
    if attention.scaling != "linear" or attention.tied_qk is False:
        raise InputValueError(
            "attention: neural-tangents' closed form matches QKVAttention only with scaling='linear' "
            f"and W_K = W_Q tied; got scaling={attention.scaling!r}, tied_qk={attention.tied_qk!r}"
        )


def qkv_attention_stax(attention: QKVAttention, n_features: int) -> tuple[Callable, Callable, Callable]:
    """neural-tangents' stax triple of kernelattn's ``QKVAttention`` (linear scaling, tied W_Q = W_K).

    ``stax.GlobalSelfAttention(n_chan_out=out_dim or d, n_chan_key=h,
    n_chan_val=h, n_heads=1, linear_scaling=True, W_query_std=σ_q,
    W_key_std=σ_q, W_value_std=σ_v, W_out_std=σ_o, b_std=None,
    attention_mechanism='IDENTITY')`` on one sequence ``(1, n, d)``.

    Args:
      attention: the ``QKVAttention`` module (its fields only are read).
      n_features: d, the input features (the default ``out_dim``).
    """
    _check_linear_qkv(attention)
    stax = _nt().stax
    return stax.GlobalSelfAttention(**_attention_kwargs(attention, n_features))


def _attention_kwargs(attention: QKVAttention, n_features: int) -> dict:
    return {
        "n_chan_out": attention.out_dim or n_features,
        "n_chan_key": attention.head_width,
        "n_chan_val": attention.head_width,
        "n_heads": 1,
        "linear_scaling": True,
        "W_key_std": attention.sigma_q,
        "W_query_std": attention.sigma_q,
        "W_value_std": attention.sigma_v,
        "W_out_std": attention.sigma_o,
        "b_std": None,
        "attention_mechanism": "IDENTITY",
    }


def _key_masked_attention_kernel(nt, attention: QKVAttention, x_train, x_test):
    """NT Kernel after the attention on the sequence train ∪ test, test positions masked as keys.

    Returns an ``nt.Kernel`` with ``(1, 1, N, N)`` covariances, N = n + n*,
    and no masks (the outputs of the test queries are kept).
    """
    stax = nt.stax
    n_features = x_train.shape[1]
    sequence = jnp.concatenate([x_train, x_test])[None]
    n_total = sequence.shape[1]
    k_in = stax.Identity()[2](sequence, None, None, diagonal_batch=False, diagonal_spatial=False)
    key_mask = (jnp.arange(n_total) >= x_train.shape[0]).reshape(1, n_total, 1)
    k_in = k_in.replace(mask1=key_mask, mask2=key_mask)
    raw_layer = inspect.unwrap(stax.GlobalSelfAttention)  # without the re-masking wrapper
    kernel_fn = raw_layer(**_attention_kwargs(attention, n_features))[2]
    k_out = kernel_fn(k_in)
    out_shape = (1, n_total, attention.out_dim or n_features)
    return k_out.replace(mask1=None, mask2=None, shape1=out_shape, shape2=out_shape)


def _qkv_blocks(nngp: jax.Array, ntk: jax.Array, n: int, has_test: bool, finish) -> QKVKernels:
    train = finish(nngp[:n, :n], ntk[:n, :n])
    if not has_test:
        return QKVKernels(train, None, None)
    return QKVKernels(train, finish(nngp[n:, :n], ntk[n:, :n]), finish(nngp[n:, n:], ntk[n:, n:]))


def _qkv_nt_kernel(x_train, x_test, attention: QKVAttention, tail):
    """(nngp, ntk) ``(N, N)`` of ``serial(attention, *tail)`` over train (∪ masked test)."""
    nt = _nt()
    stax = nt.stax
    with warnings.catch_warnings():
        # NT's init_fn, run for shape inference only, warns that W_Q is tied to W_K.
        warnings.filterwarnings("ignore", message="Linear scaling attention used", category=UserWarning)
        if x_test is None:
            layers = [qkv_attention_stax(attention, x_train.shape[1]), *tail]
            k = stax.serial(*layers)[2](x_train[None], None, ("nngp", "ntk"), diagonal_batch=False)
        else:
            k = _key_masked_attention_kernel(nt, attention, x_train, x_test)
            if tail:
                k = stax.serial(*tail)[2](k)
    return k.nngp[0, 0], k.ntk[0, 0]


def qkv_attention_kernels_nt(
    x_train: jax.Array,
    x_test: jax.Array | None = None,
    attention: QKVAttention | None = None,
    *,
    dtype="float64",
) -> QKVKernels:
    """Infinite-width NNGP and NTK of the QKV attention layer alone (per output channel).

    NNGP = σ_q⁴σ_v²σ_o² (X₁Xᵀ)(XXᵀ)(XX₂ᵀ)/d³ (the counterpart of
    ``kernelattn.qkv_attention_nngp``), NTK = 2·NNGP.

    Args:
      x_train: ``(n, d)`` the attended sequence (keys, values and queries).
      x_test: ``(n*, d)`` extra queries attending over ``x_train`` only.
      attention: a ``QKVAttention`` (linear, tied); default ``QKVAttention(64)``
        (h is irrelevant at infinite width).
      dtype: "float64" (default) or "float32".
    """
    _nt()
    attention = attention or QKVAttention(head_width=64)
    _check_linear_qkv(attention)
    dtype = resolve_dtype(dtype)
    x_train, x_test = _check_inputs(x_train, x_test, dtype)
    nngp, ntk = _qkv_nt_kernel(x_train, x_test, attention, [])

    def finish(nngp_block, ntk_block):
        return _cast(Kernel(nngp_block, ntk_block), dtype)

    return _qkv_blocks(nngp, ntk, x_train.shape[0], x_test is not None, finish)


def qkv_kernels_nt(
    x_train: jax.Array,
    x_test: jax.Array | None = None,
    attention: QKVAttention | None = None,
    head: HeadConfig | None = None,
    *,
    full_output: bool = False,
    dtype="float64",
) -> QKVKernels:
    """Infinite-width NNGP and NTK of ``QKVAttentionMLP`` (normalize=False) by neural-tangents.

    ``stax.serial(qkv_attention_stax(attention, d), *head_stax(head))`` with
    the training set as ONE sequence ``(1, n, d)``; test queries attend over
    the training set only (train ∪ test, test masked as keys: module docstring).
    All widths (h, the attention's out_dim, m) are infinite.

    Args:
      x_train: ``(n, d)`` training set.
      x_test: ``(n*, d)`` test queries, or ``None``.
      attention: ``QKVAttention`` (linear, tied); default ``QKVAttention(64)``.
      head: ``HeadConfig``; default ``HeadConfig(width=1)``.
      full_output: blocks as ``(·, ·, C, C)`` = Θ ⊗ I_C.
      dtype: "float64" (default) or "float32".

    Returns:
      ``QKVKernels(train, test_train, test)``; the NTK counts W_Q, W_V, W_O,
      W (and b), plus the readout when ``head.train_readout``.
    """
    _nt()
    attention = attention or QKVAttention(head_width=64)
    head = head or HeadConfig(width=1)
    _check_linear_qkv(attention)
    dtype = resolve_dtype(dtype)
    x_train, x_test = _check_inputs(x_train, x_test, dtype)
    nngp, ntk = _qkv_nt_kernel(x_train, x_test, attention, [head_stax(head)])

    def finish(nngp_block, ntk_block):
        return _cast(_finish(nngp_block, ntk_block, head, full_output), dtype)

    return _qkv_blocks(nngp, ntk, x_train.shape[0], x_test is not None, finish)
