"""Sweep specs (``"kind": "kernel"`` or ``"training"``): a JSON file, validated once into a frozen ``Spec``.

A spec describes a grid of cells (dataset × model × width × seed) and how to
compute each one. It is plain JSON (read with the standard library), checked
completely when loaded, and every error names the offending key path::

    models[1].depth: expected an integer >= 1, got 0
    kernel.sigma_ww: unknown key; did you mean 'sigma_w'? (allowed: ...)

The rules every spec kind shares (strict files, store names, the cell limit) are
listed in ``kernelattn.experiments.specs``.

Format (every key except ``name``, ``kind``, ``datasets``, ``models`` and
``widths`` is optional; defaults shown)::

    {
      "name": "quick_width_sweep",          # [A-Za-z0-9_.-]+, names the store directory
      "kind": "kernel",                     # "kernel" (Θ_m vs Θ_∞) or "training" (paper Table 1)
      "description": "",
      "datasets": [                         # kernelattn.data.load options
        {"name": "digits", "n_train": 500, "n_test": 100, "seed": 0,
         "classes": null,                   # null | [3, 8] | ["cat", "dog"] | "3-vs-8"
         "normalize": true, "scale": true,
         "target": "auto",                  # "auto" | "onehot" | "pm1"
         "label": "digits",                 # table label (default: the display label, e.g. "MNIST 3-vs-8",
                                            #   "MLP-Attn (k=2)", plus options telling equal ones apart)
         "data_dir": null, "download": true,
         ...source options: digits: test_fraction, split_seed;
            synthetic: d, kappa, singular_values, n_classes, task, teacher_width;
            mnist/fashion_mnist/cifar10: base_url, checksums, max_bytes, system_dirs, timeout;
            mnist: source ("idx", the default, or "mnist5k": then test_fraction, split_seed, max_bytes)}
      ],
      "models": [
        {"name": "relu"},
        {"name": "mlp-attn", "depth": 1, "rank": null, "constant_term": false, "normalize": true},
        {"name": "qkv-attn", "head_width": "width", "scaling": "linear", "normalize": false}
      ],
      "widths": {"log2": [2, 16], "step": 1}, # or an explicit list [4, 16, 64]; 1 <= m <= 2^20
      "seeds": 5,                           # a count (0..4) or an explicit list [0, 7]
      "dtype": "float32",                   # dtype of the finite-width kernels / networks
      "precision": null,                    # matmul precision: "highest" | "fast" | null (the policy in
                                            #   force: kernelattn --precision, else "highest")
      "metrics": null,                      # subset of METRICS[kind]; null = all
      "ridge": 1e-3,                        # λ of every kernel-ridge predictor (absolute)
      "kernel": {"readout": "fixed", "sigma_w": 1.0, "sigma_b": 0.0, "sigma_a": 1.0,
                 "width_chunk": 1024, "batch_seeds": "auto",
                 "memory_gb": 2.0, "limit_width": 4096, "limit_seeds": 8,
                 "devices": 1},                 # int >= 1 or "all": shard Θ_m's width over local devices
      "training": {"learning_rate": 1e-3, "batch_size": 128, "epochs": 500,
                   "weight_decay": 1e-3, "loss": "auto", "ntk_time": null}
    }

``"target": "auto"`` means ±1 targets with one output for two classes (MSE,
as in the paper's binary tasks), one-hot for more (cross-entropy), and the
raw values for a regression task. The ``kernel`` section's head options
(readout, σ's) define the network in both kinds; ``training`` is only
allowed (and then optional) when ``kind`` is ``"training"``.

The model name also accepts kernelattn's aliases ("2l-relu", "attn", "qkv"), and
"module:attr" names a user's own model (``kernelattn.registry``: a ``ModelEntry``
or a constructor ``build(width, out_dim, **options)``, whose keyword parameters
are the entry's allowed keys). A dataset name ending in ".npz" is the path of
a user's own data (arrays ``X``, ``y``; ``kernelattn.data.npz``), relative to
the working directory; its SHA-256 is recorded as the option ``sha256``.
For "qkv-attn", ``head_width`` is the QKV width h: an integer, or "width"
(default) for h = m so that both widths grow together, which the infinite-
width limit requires. Its Θ_∞ has no closed form here and is estimated by
Monte Carlo: the mean empirical NTK over ``kernel.limit_seeds`` networks of
width ``kernel.limit_width`` (neural-tangents' backend is the exact
alternative for the tied, linearly scaled variant).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from kernelattn.errors import InputTypeError, InputValueError
from kernelattn.experiments.specs.checks import (
    MAX_WIDTH,
    SpecError,
    check_cell_count,
    check_choice,
    check_int,
    check_keys,
    check_mapping,
    check_real,
    check_str,
    join_path,
    naming_source,
    nullable,
    show,
)
from kernelattn.experiments.specs.entries import DatasetSpec, ModelSpec, assign_labels, parse_dataset, parse_model
from kernelattn.experiments.specs.files import check_store_name, read_spec_file

__all__ = [
    "DTYPES",
    "KERNEL_CHECKS",
    "KINDS",
    "LOSSES",
    "METRICS",
    "PRECISIONS",
    "READOUTS",
    "SWEEP_KEYS",
    "TRAINING_CHECKS",
    "KernelOptions",
    "Spec",
    "TrainingOptions",
    "load_spec",
    "parse_devices",
    "parse_spec",
]

#: The kinds of a sweep spec.
KINDS = ("kernel", "training")
#: Metric groups computed per cell, by spec kind. ``null`` in a spec selects all.
METRICS: dict[str, tuple[str, ...]] = {
    # rel_fro: ‖Θ_m − Θ_∞‖_F/‖Θ_∞‖_F; cert: ‖Θ_m − Θ_∞‖₂/λ_min(Θ_∞);
    # spectrum: λ_min, λ_max, κ of Θ_m; krr: kernel-ridge predictor error and accuracies.
    "kernel": ("rel_fro", "cert", "spectrum", "krr"),
    # ntk_distance: ‖f_m − f_NTK‖/‖f_NTK‖; lin_distance: trains the linearized model too;
    # accuracy: test accuracy of every predictor computed.
    "training": ("ntk_distance", "lin_distance", "accuracy"),
}
READOUTS = ("fixed", "trained")
#: The dtypes and matmul precisions a spec may ask for (sweep and malleability specs).
DTYPES = ("float32", "float64")
PRECISIONS = ("highest", "fast")
LOSSES = ("auto", "mse", "xent")


# --------------------------------------------------------------------------- widths and seeds


def _widths(value: Any, path: str) -> tuple[int, ...]:
    if isinstance(value, Mapping):
        check_keys(value, path, ("log2", "step"), required=("log2",))
        grid = value["log2"]
        gpath = join_path(path, "log2")
        if not isinstance(grid, (list, tuple)) or len(grid) != 2:
            raise SpecError(gpath, f"expected [low, high] exponents, got {show(grid)}")
        low = check_int(grid[0], join_path(gpath, 0), minimum=0, maximum=20)
        high = check_int(grid[1], join_path(gpath, 1), minimum=0, maximum=20)
        if high < low:
            raise SpecError(gpath, f"expected low <= high, got [{low}, {high}]")
        step = check_int(value.get("step", 1), join_path(path, "step"), minimum=1)
        return tuple(2**e for e in range(low, high + 1, step))
    if isinstance(value, (list, tuple)):
        if not value:
            raise SpecError(path, "expected at least one width, got []")
        widths = tuple(check_int(v, join_path(path, i), minimum=1, maximum=MAX_WIDTH) for i, v in enumerate(value))
        if len(set(widths)) != len(widths):
            dup = next(w for w in widths if widths.count(w) > 1)
            raise SpecError(path, f"expected distinct widths, got {dup} twice")
        return tuple(sorted(widths))
    raise SpecError(path, f'expected a list of widths or {{"log2": [low, high]}}, got {show(value)}')


def _seeds(value: Any, path: str) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        if not value:
            raise SpecError(path, "expected at least one seed, got []")
        seeds = tuple(check_int(v, join_path(path, i), minimum=0, maximum=2**31 - 1) for i, v in enumerate(value))
        if len(set(seeds)) != len(seeds):
            raise SpecError(path, f"expected distinct seeds, got {show(list(value))}")
        return seeds
    count = check_int(value, path, minimum=1, maximum=100_000)
    return tuple(range(count))


# --------------------------------------------------------------------------- kernel / training sections


@dataclasses.dataclass(frozen=True)
class KernelOptions:
    """The MLP head's initialization and how the finite-width kernels are computed.

    Attributes:
      readout: "fixed" (the paper's ±1 readout, only W trained, first-layer
        NTK) or "trained" (a ~ N(0, 1) trained too).
      sigma_w, sigma_b, sigma_a: head scales (docs/math.md §5).
      width_chunk: hidden units per PRNG block and accumulation step (memory
        O(n² + n·width_chunk) at any width). Block j is drawn from
        fold_in(PRNGKey(seed), j), exactly as ``streaming_head_ntk`` with the
        same ``width_chunk`` draws it, and a width-m network is the first m
        units; so it changes the draws and is part of a cell's identity.
      batch_seeds: vmap the seeds of a (dataset, model) together: "auto"
        (on accelerators, when memory allows; sequential on CPU, where
        batching was measured not to help), true or false.
      memory_gb: budget for batched seeds (the estimate of n²·seeds memory).
      limit_width, limit_seeds: width and number of networks of the Monte-Carlo
        estimate of Θ_∞ for "qkv-attn".
      devices: local devices the streamed Θ_m ("relu", "mlp-attn") is sharded
        over, width-wise: an integer ≥ 1 or "all" (``jax.local_devices()``).
        A performance setting: results equal the 1-device ones up to float
        summation order, so it is not part of a cell's identity (records note
        the count used in their metrics as ``n_devices``).
    """

    readout: str = "fixed"
    sigma_w: float = 1.0
    sigma_b: float = 0.0
    sigma_a: float = 1.0
    width_chunk: int = 1024
    batch_seeds: Any = "auto"
    memory_gb: float = 2.0
    limit_width: int = 4096
    limit_seeds: int = 8
    devices: Any = 1

    @property
    def train_readout(self) -> bool:
        return self.readout == "trained"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def head_identity(self) -> dict[str, Any]:
        """Options that change the network or its draws (cell identity)."""
        return {
            "readout": self.readout,
            "sigma_w": self.sigma_w,
            "sigma_b": self.sigma_b,
            "sigma_a": self.sigma_a,
            "width_chunk": self.width_chunk,
        }


def parse_devices(value: Any, path: str = "kernel.devices") -> Any:
    """A device count: an integer >= 1 or "all" (SpecError naming ``path`` otherwise)."""
    if isinstance(value, str):
        if value.strip().lower() == "all":
            return "all"
        try:
            value = int(value.strip())
        except ValueError:
            raise SpecError(path, f'expected an integer >= 1 or "all", got {show(value)}') from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(path, f'expected an integer >= 1 or "all", got {show(value)}')
    try:
        return check_int(value, path, minimum=1, maximum=1_000_000)
    except SpecError:
        raise SpecError(path, f'expected an integer >= 1 or "all", got {show(value)}') from None


def _auto_or_bool(value: Any, path: str) -> Any:
    if value == "auto" or isinstance(value, bool):
        return value
    raise SpecError(path, f'expected "auto", true or false, got {show(value)}')


#: The keys of a sweep spec's ``kernel`` section → the check of each (``check(value, path)``).
KERNEL_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "readout": lambda v, p: check_choice(v, p, READOUTS),
    "sigma_w": lambda v, p: check_real(v, p, minimum=0.0, strict=True),
    "sigma_b": lambda v, p: check_real(v, p, minimum=0.0),
    "sigma_a": lambda v, p: check_real(v, p, minimum=0.0, strict=True),
    "width_chunk": lambda v, p: check_int(v, p, minimum=1, maximum=MAX_WIDTH),
    "batch_seeds": lambda v, p: _auto_or_bool(v, p),
    "memory_gb": lambda v, p: check_real(v, p, minimum=0.0, strict=True),
    "limit_width": lambda v, p: check_int(v, p, minimum=1, maximum=MAX_WIDTH),
    "limit_seeds": lambda v, p: check_int(v, p, minimum=1, maximum=10_000),
    "devices": parse_devices,
}


def _parse_kernel(value: Any, path: str) -> KernelOptions:
    entry = check_mapping(value, path)
    check_keys(entry, path, tuple(KERNEL_CHECKS))
    fields = {k: KERNEL_CHECKS[k](entry[k], join_path(path, k)) for k in entry}
    return KernelOptions(**fields)


@dataclasses.dataclass(frozen=True)
class TrainingOptions:
    """``kernelattn.learning.training.TrainConfig`` fields plus the NTK predictor's time.

    Attributes:
      learning_rate, batch_size, epochs, weight_decay, loss,
        weight_decay_mode: as in TrainConfig (paper defaults; 500 epochs;
        decoupled weight decay).
      ntk_time: gradient-flow time t of the NTK predictor (in steps of η = 1),
        or None for t → ∞ (kernel ridge regression with the spec's ridge).
    """

    learning_rate: float = 1e-3
    batch_size: int = 128
    epochs: int = 500
    weight_decay: float = 1e-3
    loss: str = "auto"
    ntk_time: float | None = None
    weight_decay_mode: str = "decoupled"

    def train_config(self):
        """The ``kernelattn.learning.training.TrainConfig``."""
        # Deferred: specs are read and validated without loading JAX and optax.
        from kernelattn.learning.training import TrainConfig

        return TrainConfig(
            self.learning_rate, self.batch_size, self.epochs, self.weight_decay, self.loss, self.weight_decay_mode
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: The keys of a sweep spec's ``training`` section → the check of each (``check(value, path)``).
TRAINING_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "learning_rate": lambda v, p: check_real(v, p, minimum=0.0, strict=True),
    "batch_size": lambda v, p: check_int(v, p, minimum=1),
    "epochs": lambda v, p: check_int(v, p, minimum=0),
    "weight_decay": lambda v, p: check_real(v, p, minimum=0.0),
    "loss": lambda v, p: check_choice(v, p, LOSSES),
    "ntk_time": nullable(lambda v, p: check_real(v, p, minimum=0.0)),
    "weight_decay_mode": lambda v, p: check_choice(v, p, ("decoupled", "coupled")),
}


def _parse_training(value: Any, path: str) -> TrainingOptions:
    entry = check_mapping(value, path)
    check_keys(entry, path, tuple(TRAINING_CHECKS))
    return TrainingOptions(**{k: TRAINING_CHECKS[k](entry[k], join_path(path, k)) for k in entry})


# --------------------------------------------------------------------------- the spec

#: The top-level keys of a sweep spec.
SWEEP_KEYS = (
    "name",
    "kind",
    "description",
    "datasets",
    "models",
    "widths",
    "seeds",
    "dtype",
    "precision",
    "metrics",
    "ridge",
    "kernel",
    "training",
)


@dataclasses.dataclass(frozen=True)
class Spec:
    """A validated experiment spec (see the module docstring for the JSON format).

    Attributes:
      name: identifier; the sweep's store is ``<out>/<name>``.
      kind: "kernel" or "training".
      description: free text.
      datasets, models: tuples of ``DatasetSpec`` / ``ModelSpec`` (labels unique).
      widths: sorted distinct widths.
      seeds: network seeds (PRNGKey(seed) draws the network).
      dtype: "float32" or "float64" for the finite-width kernels/networks
        (Θ_∞ and every metric are float64 regardless).
      precision: matmul precision, "highest" (``Precision.HIGHEST``: true
        float32 products), "fast" (the device's default: TF32 on recent GPUs)
        or None (the policy in force when the sweep runs: the CLI's
        ``--precision``, else "highest"). "fast" is part of a cell's identity.
      metrics: the metric groups computed (``METRICS[kind]`` subset).
      ridge: λ ≥ 0 of the kernel-ridge predictors.
      kernel: ``KernelOptions``.
      training: ``TrainingOptions`` (kind "training") or None.
      source: the file it was read from, if any.
    """

    name: str
    kind: str
    datasets: tuple[DatasetSpec, ...]
    models: tuple[ModelSpec, ...]
    widths: tuple[int, ...]
    seeds: tuple[int, ...] = (0,)
    dtype: str = "float32"
    precision: str | None = None
    metrics: tuple[str, ...] = ()
    ridge: float = 1e-3
    kernel: KernelOptions = KernelOptions()
    training: TrainingOptions | None = None
    description: str = ""
    source: str | None = dataclasses.field(default=None, compare=False)

    @property
    def n_cells(self) -> int:
        """Number of (dataset, model, width, seed) cells."""
        return len(self.datasets) * len(self.models) * len(self.widths) * len(self.seeds)

    def to_dict(self) -> dict[str, Any]:
        """Normalized JSON form (defaults filled in, widths expanded); ``parse_spec`` round-trips it."""
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "datasets": [d.to_dict() for d in self.datasets],
            "models": [m.to_dict() for m in self.models],
            "widths": list(self.widths),
            "seeds": list(self.seeds),
            "dtype": self.dtype,
            "precision": self.precision,
            "metrics": list(self.metrics),
            "ridge": self.ridge,
            "kernel": self.kernel.to_dict(),
        }
        if self.training is not None:
            out["training"] = self.training.to_dict()
        return out

    def to_json(self, indent: int = 2) -> str:
        """``to_dict`` as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    def training_options(self) -> TrainingOptions:
        """:attr:`training` of a "training" spec; a kernel spec has none (``InputValueError``)."""
        if self.training is None:
            raise InputValueError(f"spec {self.name!r}: a {self.kind} spec has no training options")
        return self.training

    def head_kwargs(self) -> dict[str, Any]:
        """σ's and readout mode for ``kernelattn.models.HeadConfig``."""
        k = self.kernel
        return {
            "sigma_w": k.sigma_w,
            "sigma_b": k.sigma_b,
            "sigma_a": k.sigma_a,
            "use_bias": k.sigma_b > 0,
            "train_readout": k.train_readout,
        }


def parse_spec(data: Mapping[str, Any], *, source: str | None = None, max_cells: int | None = None) -> Spec:
    """Validate a spec given as a (JSON-like) dict.

    Args:
      data: the spec.
      source: the file it came from, for messages.
      max_cells: largest grid accepted (default ``$KERNELATTN_MAX_CELLS`` or
        ``DEFAULT_MAX_CELLS`` = 100,000).

    Raises:
      SpecError: naming the key path of the first problem found.
    """
    return naming_source(_parse, data, source, max_cells)


def _parse(data: Any, source: str | None, max_cells: int) -> Spec:
    top = check_mapping(data, "", "a spec object")
    check_keys(top, "", SWEEP_KEYS, required=("name", "kind", "datasets", "models", "widths"))
    name = check_store_name(top["name"])
    kind = check_choice(top["kind"], "kind", KINDS)
    description = check_str(top.get("description", ""), "description")

    def entries(key: str, parse: Callable[[Any, str], Any]) -> tuple:
        value = top[key]
        if isinstance(value, Mapping):
            value = [value]
        if not isinstance(value, (list, tuple)) or not value:
            raise SpecError(key, f"expected a non-empty list of entries, got {show(value)}")
        parsed = tuple(parse(v, join_path(key, i)) for i, v in enumerate(value))
        return assign_labels(parsed, key)

    datasets = entries("datasets", parse_dataset)
    models = entries("models", parse_model)
    widths = _widths(top["widths"], "widths")
    seeds = _seeds(top.get("seeds", [0]), "seeds")
    check_cell_count(
        len(datasets) * len(models) * len(widths) * len(seeds),
        max_cells,
        f"{len(datasets)} dataset(s) × {len(models)} model(s) × {len(widths)} width(s) × {len(seeds)} seed(s)",
    )
    dtype = check_choice(top.get("dtype", "float32"), "dtype", DTYPES)
    precision = nullable(lambda v, p: check_choice(v, p, PRECISIONS))(top.get("precision"), "precision")
    metrics_value = top.get("metrics")
    if metrics_value is None:
        metrics = METRICS[kind]
    else:
        if not isinstance(metrics_value, (list, tuple)) or not metrics_value:
            raise SpecError(
                "metrics", f"expected null or a non-empty list of {list(METRICS[kind])}, got {show(metrics_value)}"
            )
        chosen = [check_choice(v, join_path("metrics", i), METRICS[kind]) for i, v in enumerate(metrics_value)]
        metrics = tuple(m for m in METRICS[kind] if m in chosen)
    ridge = check_real(top.get("ridge", 1e-3), "ridge", minimum=0.0)
    kernel = _parse_kernel(top.get("kernel", {}), "kernel")
    if "training" in top and kind != "training":
        raise SpecError("training", f"only allowed when kind is 'training', got kind {kind!r}")
    training = _parse_training(top.get("training", {}), "training") if kind == "training" else None
    for i, model in enumerate(models):
        for j, dataset in enumerate(datasets):
            if model.rank is not None and dataset.n_train is not None and model.rank > dataset.n_train:
                raise SpecError(
                    f"models[{i}].rank", f"expected <= n_train of datasets[{j}] ({dataset.n_train}), got {model.rank}"
                )
    return Spec(
        name=name,
        kind=kind,
        datasets=datasets,
        models=models,
        widths=widths,
        seeds=seeds,
        dtype=dtype,
        precision=precision,
        metrics=metrics,
        ridge=ridge,
        kernel=kernel,
        training=training,
        description=description,
        source=source,
    )


def load_spec(spec: str | os.PathLike[str] | Mapping[str, Any] | Spec, *, max_cells: int | None = None) -> Spec:
    """Load and validate a spec from a JSON file (or pass a dict / ``Spec`` through validation).

    Args:
      spec: path of a ``.json`` file, a dict in the same format, or a ``Spec``.
      max_cells: largest grid accepted (see :func:`parse_spec`).

    Returns:
      The validated ``Spec``.

    Raises:
      SpecError: invalid content (the message names the key path and the file)
        or an unreadable file (see :func:`read_spec_file`).
      SpecFileNotFoundError: no such file (also a ``FileNotFoundError``).
    """
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, Mapping):
        return parse_spec(spec, max_cells=max_cells)
    if not isinstance(spec, (str, os.PathLike)):
        raise InputTypeError(f"spec: expected a path, a dict or a Spec, got {type(spec).__name__}")
    return parse_spec(read_spec_file(spec), source=os.fspath(spec), max_cells=max_cells)
