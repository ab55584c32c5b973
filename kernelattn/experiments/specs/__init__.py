"""Experiment specs: JSON files under ``experiments/``, validated once into frozen dataclasses.

This package is the one schema and validator of every spec kind: the sweep
specs (``"kernel"``, ``"training"``: :func:`load_spec`, :func:`parse_spec`),
the malleability specs (:func:`parse_malleability_spec`; format in
``kernelattn.experiments.malleability.run_malleability_spec``) and the datasets of the
``"conditions"`` specs of ``kernelattn.reproduce``. For all of them:

- files are read strictly (:func:`read_spec_file`): UTF-8, no duplicate keys,
  no NaN/Infinity, a regular file (a directory or a FIFO is refused unopened);
- ``name`` is one directory name (:func:`check_store_name`): the store is
  ``<out>/<name>``, so separators, ``..`` and absolute paths are refused;
- values are type-checked (``"retrain": "false"`` is an error, not true);
  unknown keys and values are refused with a did-you-mean, nested ones too;
- a grid of more than ``DEFAULT_MAX_CELLS`` (100,000) cells is refused with
  its count (``max_cells=``, ``$KERNELATTN_MAX_CELLS``).

Every error is a :class:`SpecError` naming the offending key path::

    models[1].depth: expected an integer >= 1, got 0
    kernel.sigma_ww: unknown key; did you mean 'sigma_w'? (allowed: ...)

The modules, each using only those above it:

- ``checks``: ``SpecError``, the value checks (did-you-mean included) and the cell limit;
- ``files``: reading a spec file strictly; store names;
- ``entries``: dataset and model entries (``DatasetSpec``, ``ModelSpec``);
- ``sweep``: sweep specs (``Spec``; the JSON format, annotated, in its docstring);
- ``malleability``: malleability specs (``MALLEABILITY_SCHEMA`` of ``KeySpec`` entries).

Every public name of these modules that makes up the spec format is importable from here.
"""

from __future__ import annotations

from kernelattn.experiments.specs.checks import (
    DEFAULT_MAX_CELLS,
    MAX_CELLS_ENV_VAR,
    MAX_WIDTH,
    SpecError,
    SpecFileNotFoundError,
    check_cell_count,
    resolve_max_cells,
)
from kernelattn.experiments.specs.entries import (
    DATASET_KEYS,
    DATASET_NAMES,
    MODEL_NAMES,
    MODEL_OPTIONS,
    TARGETS,
    DatasetSpec,
    ModelSpec,
    source_options,
)
from kernelattn.experiments.specs.files import (
    MAX_NAME_LENGTH,
    MAX_SPEC_BYTES,
    check_store_name,
    read_spec_file,
    spec_and_source,
)
from kernelattn.experiments.specs.malleability import (
    MalleabilitySpec,
    malleability_cells,
    malleability_variants,
    parse_malleability_spec,
)
from kernelattn.experiments.specs.malleability_schema import (
    MALLEABILITY_HEAD_KEYS,
    MALLEABILITY_KEYS,
    MALLEABILITY_SCHEMA,
    MAX_MALLEABILITY_SEED_COUNT,
    MAX_MALLEABILITY_WIDTH,
    VARIANT_FIXED_KEYS,
    KeySpec,
    malleability_choices,
)
from kernelattn.experiments.specs.sweep import (
    DTYPES,
    KERNEL_CHECKS,
    KINDS,
    LOSSES,
    METRICS,
    PRECISIONS,
    READOUTS,
    SWEEP_KEYS,
    TRAINING_CHECKS,
    KernelOptions,
    Spec,
    TrainingOptions,
    load_spec,
    parse_devices,
    parse_spec,
)
from kernelattn.registry import REQUIRED  # the default of a required KeySpec (the docs' spec page reads it here)

__all__ = [
    "DATASET_KEYS",
    "DATASET_NAMES",
    "DEFAULT_MAX_CELLS",
    "DTYPES",
    "KERNEL_CHECKS",
    "KINDS",
    "LOSSES",
    "MALLEABILITY_HEAD_KEYS",
    "MALLEABILITY_KEYS",
    "MALLEABILITY_SCHEMA",
    "MAX_CELLS_ENV_VAR",
    "MAX_MALLEABILITY_SEED_COUNT",
    "MAX_MALLEABILITY_WIDTH",
    "MAX_NAME_LENGTH",
    "MAX_SPEC_BYTES",
    "MAX_WIDTH",
    "METRICS",
    "MODEL_NAMES",
    "MODEL_OPTIONS",
    "PRECISIONS",
    "READOUTS",
    "REQUIRED",
    "SWEEP_KEYS",
    "TARGETS",
    "TRAINING_CHECKS",
    "VARIANT_FIXED_KEYS",
    "DatasetSpec",
    "KernelOptions",
    "KeySpec",
    "MalleabilitySpec",
    "ModelSpec",
    "Spec",
    "SpecError",
    "SpecFileNotFoundError",
    "TrainingOptions",
    "check_cell_count",
    "check_store_name",
    "load_spec",
    "malleability_cells",
    "malleability_choices",
    "malleability_variants",
    "parse_devices",
    "parse_malleability_spec",
    "parse_spec",
    "read_spec_file",
    "resolve_max_cells",
    "source_options",
    "spec_and_source",
]
