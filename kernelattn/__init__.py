"""kernelattn: neural-tangent-kernel analysis of linearized attention.

Reproduces and extends arXiv 2603.13085: parameter-free linearized attention
turns the Gram matrix G into G³, cubing its condition number, so the network
cannot reach the kernel regime at any practical width.

Every name in ``__all__`` (and every submodule, e.g. ``kernelattn.kernels.guards``)
is an attribute of the package, loaded on first use (PEP 562): importing
``kernelattn`` itself loads neither JAX nor the rest of the package, so the
``kernelattn`` command answers ``--help`` and ``--version`` at once.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time ``__getattr__`` loads each name
    from kernelattn import data
    from kernelattn._precision import enable_x64, precision_policy, x64_enabled
    from kernelattn.data import Dataset
    from kernelattn.errors import DependencyError, InputTypeError, InputValueError, KernelattnError
    from kernelattn.experiments.malleability.api import malleability, malleability_sweep
    from kernelattn.experiments.malleability.report import MalleabilityReport
    from kernelattn.experiments.malleability.runner import run_malleability_spec
    from kernelattn.experiments.specs import Spec, SpecError, load_spec
    from kernelattn.experiments.store import ResultStore, StoreCorruptError, StoreError, read_parquet, write_parquet
    from kernelattn.experiments.sweeps import SweepResults, format_summary, load_results, run_sweep
    from kernelattn.experiments.tracking import log_store_to_mlflow
    from kernelattn.kernels.analytic import Kernel, head_kernels, qkv_attention_nngp
    from kernelattn.kernels.distributed import (
        device_mesh,
        initialize_distributed,
        local_device_count,
        sharded_streaming_head_ntk,
        sharded_structured_head_ntk,
    )
    from kernelattn.kernels.empirical import (
        empirical_ntk,
        empirical_ntk_fn,
        head_variables,
        model_apply_fn,
        streaming_head_ntk,
        structured_head_ntk,
    )
    from kernelattn.kernels.gram import ConditionReport, condition_report, gram, gram_spectrum, numerical_rank
    from kernelattn.kernels.guards import KernelError, KernelWarning, check_kernel
    from kernelattn.kernels.memory import MemoryPlanError, plan_width_chunk
    from kernelattn.kernels.stax import Dense, Erf, Identity, LinearAttention, Relu, model_from_layers, serial
    from kernelattn.learning.attacks import AttackConfig, AttackResult, fgsm, mim, pgd, run_attack
    from kernelattn.learning.attribution import (
        gradient_products,
        loss_gradients,
        projected_features,
        representer_scores,
        trak_scores,
    )
    from kernelattn.learning.attribution_truth import compare_to_ground_truth, kernel_loo_by_refit, retrained_loo
    from kernelattn.learning.influence import InfluenceResult, influence_scores, top_k
    from kernelattn.learning.model_attribution import GradientModel, gradient_attribution, module_gradient_model
    from kernelattn.learning.model_influence import FitOptions, influence
    from kernelattn.learning.predict import Gaussian, gradient_descent_mse, gradient_descent_mse_ensemble
    from kernelattn.learning.training import TrainConfig, linearize, ntk_predictor, train
    from kernelattn.models import (
        AttentionMLP,
        HeadConfig,
        MLPHead,
        QKVAttention,
        QKVAttentionMLP,
        TwoLayerReLU,
        make_model,
    )
    from kernelattn.transforms import AttentionConfig, linear_attention

#: Where each public name is defined, grouped by module.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "kernelattn._precision": ("enable_x64", "precision_policy", "x64_enabled"),
    "kernelattn.learning.attacks": ("AttackConfig", "AttackResult", "fgsm", "mim", "pgd", "run_attack"),
    "kernelattn.data": ("Dataset",),
    "kernelattn.kernels.distributed": (
        "device_mesh",
        "initialize_distributed",
        "local_device_count",
        "sharded_streaming_head_ntk",
        "sharded_structured_head_ntk",
    ),
    "kernelattn.errors": ("DependencyError", "InputTypeError", "InputValueError", "KernelattnError"),
    "kernelattn.kernels.guards": ("KernelError", "KernelWarning", "check_kernel"),
    "kernelattn.learning.attribution": (
        "gradient_products",
        "loss_gradients",
        "projected_features",
        "representer_scores",
        "trak_scores",
    ),
    "kernelattn.learning.attribution_truth": ("compare_to_ground_truth", "kernel_loo_by_refit", "retrained_loo"),
    "kernelattn.learning.influence": ("InfluenceResult", "influence_scores", "top_k"),
    "kernelattn.learning.model_attribution": ("GradientModel", "gradient_attribution", "module_gradient_model"),
    "kernelattn.learning.model_influence": ("FitOptions", "influence"),
    "kernelattn.kernels.analytic": ("Kernel", "head_kernels", "qkv_attention_nngp"),
    "kernelattn.kernels.empirical": (
        "empirical_ntk",
        "empirical_ntk_fn",
        "head_variables",
        "model_apply_fn",
        "streaming_head_ntk",
        "structured_head_ntk",
    ),
    "kernelattn.kernels.gram": ("ConditionReport", "condition_report", "gram", "gram_spectrum", "numerical_rank"),
    "kernelattn.experiments.malleability.api": ("malleability", "malleability_sweep"),
    "kernelattn.experiments.malleability.report": ("MalleabilityReport",),
    "kernelattn.experiments.malleability.runner": ("run_malleability_spec",),
    "kernelattn.kernels.stax": ("Dense", "Erf", "Identity", "LinearAttention", "Relu", "model_from_layers", "serial"),
    "kernelattn.kernels.memory": ("MemoryPlanError", "plan_width_chunk"),
    "kernelattn.models": (
        "AttentionMLP",
        "HeadConfig",
        "MLPHead",
        "QKVAttention",
        "QKVAttentionMLP",
        "TwoLayerReLU",
        "make_model",
    ),
    "kernelattn.experiments.specs": ("Spec", "SpecError", "load_spec"),
    "kernelattn.experiments.store": ("ResultStore", "StoreCorruptError", "StoreError", "read_parquet", "write_parquet"),
    "kernelattn.experiments.sweeps": ("SweepResults", "format_summary", "load_results", "run_sweep"),
    "kernelattn.experiments.tracking": ("log_store_to_mlflow",),
    "kernelattn.learning.predict": ("Gaussian", "gradient_descent_mse", "gradient_descent_mse_ensemble"),
    "kernelattn.learning.training": ("TrainConfig", "linearize", "ntk_predictor", "train"),
    "kernelattn.transforms": ("AttentionConfig", "linear_attention"),
}
_ORIGIN: dict[str, str] = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = ["data", *sorted(_ORIGIN)]


def _read_version() -> str:
    """The package version, whose one source is ``pyproject.toml``.

    Read from the installed distribution's metadata; in a source tree that
    is not installed, from the ``pyproject.toml`` beside the package; else
    ``"0+unknown"``.
    """
    from importlib import metadata

    try:
        return metadata.version("kernelattn")
    except metadata.PackageNotFoundError:
        pass
    import tomllib
    from pathlib import Path

    try:
        pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
        return str(pyproject["project"]["version"])
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError):
        return "0+unknown"


__version__ = _read_version()


def __getattr__(name: str):
    """Load a public name or a submodule on first access, then keep it as a plain attribute."""
    module = _ORIGIN.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
