"""A sweep's plan: its cells, the parameters that key each one, and the devices it runs on.

A cell is one (dataset, model, width, seed) of a spec; its store key is the
``provenance.cell_key`` of :func:`cell_definition`, the parameters that
determine its numbers, so editing any of them recomputes exactly the
affected cells while labels and performance settings do not.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from kernelattn._precision import resolve_precision
from kernelattn.errors import InputValueError
from kernelattn.experiments import provenance
from kernelattn.experiments.specs import DatasetSpec, ModelSpec, Spec
from kernelattn.kernels.distributed import device_mesh
from kernelattn.registry import model_entry

__all__ = ["Cell", "cell_definition", "plan_cells", "sweep_mesh"]


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
    ``width_chunk`` is in for the streamed kernels of feature models ("relu",
    "mlp-attn": it is their PRNG block size, so it changes the draws) and out
    elsewhere; network models ("qkv-attn", a user's) add their Monte-Carlo
    limit's settings. ``"precision": "fast"`` is in when the spec's precision
    (None: the policy in force) is "fast"; "highest", the default, is left
    out, so cells keep the keys they had before the precision policy existed
    (on CPUs the two are the same numbers).
    """
    feature_model = model_entry(model.name).is_feature_model
    head = spec.kernel.head_identity()
    if spec.kind != "kernel" or not feature_model:
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
    if not feature_model:
        definition["limit"] = {"width": spec.kernel.limit_width, "seeds": spec.kernel.limit_seeds}
    if resolve_precision(spec.precision, "precision") == "fast":
        definition["precision"] = "fast"
    if spec.training is not None:
        definition["training"] = spec.training.to_dict()
    return definition


def plan_cells(spec: Spec) -> list[Cell]:
    """Every cell of ``spec`` in run order (dataset, model, seed, width)."""
    cells = []
    for i, dataset in enumerate(spec.datasets):
        for j, model in enumerate(spec.models):
            for seed in spec.seeds:
                for width in spec.widths:
                    definition = cell_definition(spec, dataset, model, width, seed)
                    cells.append(Cell(i, j, width, seed, provenance.cell_key(definition), definition))
    return cells


def sweep_mesh(devices: Any = 1):
    """The 1-D width mesh of a sweep's ``kernel.devices``, or None for one device.

    Args:
      devices: an integer ≥ 1 (the first that many of ``jax.local_devices()``),
        "all", or a ``jax.sharding.Mesh`` (returned as is).

    Raises:
      ValueError: more devices than this process has (naming ``kernel.devices``).
    """
    if devices is None or isinstance(devices, Mesh):
        return devices
    local = jax.local_devices()
    if devices == "all":
        count = len(local)
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool) and devices >= 1:
        count = int(devices)
    else:
        raise InputValueError(f'kernel.devices: expected an integer >= 1 or "all", got {devices!r}')
    if count > len(local):
        raise InputValueError(
            f"kernel.devices: {count} requested but this process has {len(local)} "
            f"{jax.default_backend()} device(s) (on CPU, XLA_FLAGS="
            f"--xla_force_host_platform_device_count={count} simulates more)"
        )
    if count == 1:
        return None
    return device_mesh(local[:count])
