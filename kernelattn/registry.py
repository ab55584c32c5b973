"""One registry of the models and datasets an experiment can name (specs, sweeps, report and CLI read it).

A **model** is a :class:`ModelEntry`: its canonical name (what records
store: "relu", "mlp-attn", "qkv-attn"), the aliases a spec may use, the label
tables and figures show ("2L-ReLU", "MLP-Attn", "QKV-Attn"), its spec options
with their defaults, and how to compute with it — either

- a *feature model*: a parameter-free feature map ``features(x_train, x_all,
  **options) -> (n_all, d')`` under the MLP head (2L-ReLU: the inputs;
  MLP-Attn: linearized attention), whose Θ_m is the streamed structured head
  NTK and Θ_∞ the closed form; or
- a *network model*: ``build(width, out_dim, **options) -> flax module``
  (``__call__(x, context=None) -> (n, C)``), whose Θ_m comes from ``ntk(module,
  variables, x, n2)`` (the structured QKV kernel) or else from autodiff
  (``kernels.empirical.empirical_ntk``), and Θ_∞ from ``limit(x, x_context,
  **options)`` where the entry has one (the composer's closed form:
  "mlp-relu", "mlp-attn-deep", ``kernels.composed``) or else the Monte-Carlo
  mean of wide networks.

Callables are given as ``"module:attr"`` references, imported when first
used, so reading the registry (to validate a spec, or to label a table) does
not load JAX. A spec names a user's own model the same way, ``"name":
"my_package.models:build"``, where ``build`` is a :class:`ModelEntry` or a
constructor ``build(width, out_dim, **options)``: its keyword parameters are
the options a spec may set; the head's ``sigma_w``, ``sigma_b``, ``sigma_a``,
``train_readout`` and ``param_dtype`` (from the spec's ``kernel`` section and
``dtype``) are passed when it accepts them.

A **dataset** is a ``kernelattn.data.DatasetSource`` (name, title, description,
options, classes): the built-in ones of ``kernelattn.data``, or a user's
``.npz`` file with arrays ``X`` and ``y``, named by its path.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from kernelattn.data.api import SOURCES, DatasetSource, available_datasets, dataset_source
from kernelattn.data.npz import is_npz_name
from kernelattn.errors import InputValueError

__all__ = [
    "HEAD_OPTIONS",
    "MODELS",
    "MODEL_ALIASES",
    "REQUIRED",
    "DatasetSource",
    "ModelEntry",
    "canonical_model_name",
    "dataset_entry",
    "dataset_names",
    "dataset_title",
    "input_features",
    "is_user_model",
    "model_entry",
    "model_names",
    "resolve",
]

#: Keyword arguments a network constructor receives from the spec's ``kernel`` section and ``dtype``.
HEAD_OPTIONS = ("sigma_w", "sigma_b", "sigma_a", "train_readout", "param_dtype")


def resolve(ref: str | Callable | None) -> Any:
    """The object a ``"module:attr"`` reference names (callables and None are returned as they are).

    Raises:
      ValueError: a malformed reference, a module that cannot be imported or a missing attribute.
    """
    if ref is None or not isinstance(ref, str):
        return ref
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise InputValueError(f'expected "module:attr", got {ref!r}')
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise InputValueError(f"{ref!r}: cannot import module {module_name!r} ({err})") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InputValueError(f"{ref!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One model an experiment can name (see the module docstring).

    Attributes:
      name: the canonical name, stored in records.
      label: the display name in tables and figures.
      aliases: other names a spec may use (lower case).
      options: ``(option, default)`` pairs a spec entry may set besides
        ``name`` and ``label``; a default of :data:`REQUIRED` makes it required.
      features: feature map ``(x_train, x_all, **options) -> (n_all, d')``
        ("module:attr" or callable), for a feature model; else None.
      build: network constructor ``(width, out_dim, **options) -> flax module``
        ("module:attr" or callable).
      ntk: ``(module, variables, x, n2) -> (n1, n2)`` empirical NTK of the
        network against the first ``n2`` rows of ``x``; None: autodiff.
      limit: ``(x, x_context, **options) -> (n, n_c)`` float64 closed-form
        Θ_∞ of the network (rows of ``x`` against the context's, which
        attention attends over); None: the Monte-Carlo mean of wide networks.
      shown: ``(option, symbol)`` pairs always shown in the display label
        ("ReLU MLP (L=2)" for ``("depth", "L")``).
    """

    name: str
    label: str
    aliases: tuple[str, ...] = ()
    options: tuple[tuple[str, Any], ...] = ()
    features: str | Callable | None = None
    build: str | Callable | None = None
    ntk: str | Callable | None = None
    limit: str | Callable | None = None
    shown: tuple[tuple[str, str], ...] = ()

    @property
    def is_feature_model(self) -> bool:
        """Whether the model is a parameter-free feature map under the MLP head."""
        return self.features is not None

    def defaults(self) -> dict[str, Any]:
        """The options and their defaults (:data:`REQUIRED` for required ones)."""
        return dict(self.options)

    def feature_map(self) -> Callable:
        """The resolved feature map (a ``ValueError`` for a network model)."""
        if self.features is None:
            raise InputValueError(f"model {self.name!r} has no parameter-free feature map")
        return resolve(self.features)

    def network(self, width: int, out_dim: int, **kwargs: Any) -> Any:
        """The Flax module of width ``width``: the constructor called with the options it accepts.

        ``kwargs`` holds the model's options and the head options
        (:data:`HEAD_OPTIONS`); options the constructor does not take are
        dropped only if they are head options.
        """
        build = resolve(self.build)
        if build is None:
            raise InputValueError(f"model {self.name!r} has no network constructor")
        return build(width, out_dim, **_accepted(build, kwargs))

    def limit_kernel(self, x: np.ndarray, x_context: np.ndarray, **kwargs: Any) -> np.ndarray:
        """Closed-form Θ_∞ ``(n, n_c)`` float64 (``kwargs`` as in :meth:`network`; needs ``enable_x64``)."""
        limit = resolve(self.limit)
        if limit is None:
            raise InputValueError(f"model {self.name!r} has no closed-form limit kernel")
        return np.asarray(limit(x, x_context, **_accepted(limit, kwargs)), np.float64)

    def kernel(self, module: Any, variables: Mapping[str, Any], x: np.ndarray, n2: int) -> np.ndarray:
        """Θ_m ``(n1, n2)`` float64 of the network against the first ``n2`` rows of ``x`` (the context)."""
        ntk = resolve(self.ntk) or _autodiff_ntk
        return np.asarray(ntk(module, variables, x, n2), np.float64)


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: The default of an option a spec must set.
REQUIRED = _Required()


def _keywords(fn: Callable) -> set[str] | None:
    """Keyword parameters of ``fn`` besides the first two (width, out_dim); None if it takes ``**kwargs``."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    positional = [
        p for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    skip = {p.name for p in positional[:2]}
    return {p.name for p in parameters if p.name not in skip and p.kind is not inspect.Parameter.VAR_POSITIONAL}


def _accepted(fn: Callable, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` less the head options (:data:`HEAD_OPTIONS`) that ``fn`` does not take."""
    accepted = _keywords(fn)
    return kwargs if accepted is None else {k: v for k, v in kwargs.items() if k in accepted or k not in HEAD_OPTIONS}


def _autodiff_ntk(module, variables, x, n2):
    """Generic Θ_m of a user's network: autodiff Jacobians (any model; kernels.empirical)."""
    # Deferred: the registry is read (spec validation, labels) without loading JAX.
    import jax.numpy as jnp

    from kernelattn.kernels.empirical import empirical_ntk_fn, model_apply_fn

    x = np.asarray(x)
    dtype = np.result_type(*[np.asarray(v).dtype for v in _leaves(variables["params"])])
    context = jnp.asarray(x[:n2], dtype)
    apply_fn, params = model_apply_fn(module, variables, context)
    # The whole-batch Jacobian contraction, as before the neural-tangents-style API: the same numbers.
    ntk = empirical_ntk_fn(apply_fn, vmap_axes=None, implementation="jacobian")
    return ntk(jnp.asarray(x, dtype), context, params)


def _leaves(tree: Any) -> list:
    if isinstance(tree, Mapping):
        return [leaf for value in tree.values() for leaf in _leaves(value)]
    return [tree]


def input_features(x_train: np.ndarray, x_all: np.ndarray) -> np.ndarray:
    """The feature map of 2L-ReLU: the inputs themselves (float64)."""
    return np.asarray(x_all, np.float64)


def _builtin(name: str) -> Callable:
    def build(width: int, out_dim: int = 1, **options: Any):
        # Deferred: the registry is read (spec validation, labels) without loading JAX and Flax.
        from kernelattn.models import make_model

        if options.get("head_width") == "width":  # qkv-attn: h grows with m
            options["head_width"] = width
        return make_model(name, width, out_dim, **options)

    build.__name__ = build.__qualname__ = f"build_{name.replace('-', '_')}"
    build.__doc__ = f"The {name!r} network (``kernelattn.models.make_model``)."
    return build


#: The built-in models, by canonical name.
MODELS: dict[str, ModelEntry] = {
    m.name: m
    for m in (
        ModelEntry(
            "relu",
            "2L-ReLU",
            aliases=("2l-relu",),
            features="kernelattn.registry:input_features",
            build=_builtin("relu"),
        ),
        ModelEntry(
            "mlp-attn",
            "MLP-Attn",
            aliases=("mlp_attn", "attn"),
            options=(("depth", 1), ("rank", None), ("constant_term", False), ("normalize", True)),
            features="kernelattn.transforms:linear_attention",
            build=_builtin("mlp-attn"),
        ),
        ModelEntry(
            "qkv-attn",
            "QKV-Attn",
            aliases=("qkv", "qkv_attn"),
            options=(("head_width", "width"), ("scaling", "linear"), ("normalize", False)),
            build=_builtin("qkv-attn"),
            ntk="kernelattn.kernels.qkv:qkv_empirical_ntk",
        ),
        ModelEntry(
            "mlp-relu",
            "ReLU MLP",
            aliases=("deep-relu",),
            options=(("depth", 1),),
            build="kernelattn.kernels.composed:mlp_relu",
            limit="kernelattn.kernels.composed:mlp_relu_ntk",
            shown=(("depth", "L"),),
        ),
        ModelEntry(
            "mlp-attn-deep",
            "MLP-Attn",
            aliases=("deep-attn",),
            options=(("depth", 1),),
            build="kernelattn.kernels.composed:mlp_attn_deep",
            limit="kernelattn.kernels.composed:mlp_attn_deep_ntk",
            shown=(("depth", "L"),),
        ),
    )
}
#: Alias → canonical name of the built-in models.
MODEL_ALIASES: dict[str, str] = {alias: m.name for m in MODELS.values() for alias in m.aliases}


def model_names() -> tuple[str, ...]:
    """The built-in models' canonical names."""
    return tuple(MODELS)


def is_user_model(name: Any) -> bool:
    """Whether a model name is a ``"module:attr"`` reference to a user's model."""
    return isinstance(name, str) and ":" in name


def canonical_model_name(name: str) -> str:
    """The canonical name of a built-in model or alias ("2l-relu" → "relu"); a "module:attr" as is.

    Raises:
      ValueError: an unknown name (with the choices and a did-you-mean).
    """
    if is_user_model(name):
        return name
    text = str(name).lower()
    text = MODEL_ALIASES.get(text, text)
    if text not in MODELS:
        hint = difflib.get_close_matches(str(name).lower(), list(MODELS) + list(MODEL_ALIASES), n=1, cutoff=0.6)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        raise InputValueError(
            f'model: expected one of {list(MODELS)} (or "module:attr" of your own), got {name!r}{suggestion}'
        )
    return text


def model_entry(name: str) -> ModelEntry:
    """The :class:`ModelEntry` of a built-in model (by name or alias) or of a user's ``"module:attr"``.

    A user's attribute is a ``ModelEntry`` (used as is, under the reference as
    its name) or a constructor ``(width, out_dim, **options)``: a network
    model whose options are the constructor's keyword parameters (besides
    :data:`HEAD_OPTIONS`). Either is labelled by the attribute's name, as
    tables read from stores show it without importing the user's code.

    Raises:
      ValueError: an unknown name, or a reference that does not resolve to either.
    """
    name = canonical_model_name(name)
    if not is_user_model(name):
        return MODELS[name]
    obj = resolve(name)
    label = name.rpartition(":")[2].rpartition(".")[2]
    if isinstance(obj, ModelEntry):
        return dataclasses.replace(obj, name=name, label=label, aliases=())
    if not callable(obj):
        raise InputValueError(
            f"model {name!r}: expected a ModelEntry or a constructor (width, out_dim, **options), "
            f"got {type(obj).__name__}"
        )
    return ModelEntry(name, label, options=_constructor_options(obj), build=obj)


def _constructor_options(fn: Callable) -> tuple[tuple[str, Any], ...]:
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return ()
    positional = [
        p for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    skip = {p.name for p in positional[:2]} | set(HEAD_OPTIONS)
    return tuple(
        (p.name, REQUIRED if p.default is inspect.Parameter.empty else p.default)
        for p in parameters
        if p.name not in skip and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    )


def dataset_names() -> tuple[str, ...]:
    """The built-in datasets' names (a path ending in ``.npz`` names a user's file)."""
    return available_datasets()


def dataset_entry(name: str) -> DatasetSource:
    """The ``DatasetSource`` of a built-in dataset or of a user's ``.npz`` file (see ``kernelattn.data``).

    Raises:
      ValueError: an unknown name.
    """
    return dataset_source(name)


def dataset_title(name: str) -> str:
    """The display title of a dataset name ("MNIST", "Fashion-MNIST"; an ``.npz`` file: its stem)."""
    if name in SOURCES:
        return SOURCES[name].title
    return dataset_source(name).title if is_npz_name(name) else str(name)
