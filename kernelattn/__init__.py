"""kernelattn: neural-tangent-kernel analysis of linearized attention.

Reproduces and extends arXiv 2603.13085: parameter-free linearized attention
turns the Gram matrix G into G³, cubing its condition number, so the network
cannot reach the kernel regime at any practical width.
"""

from kernelattn import data
from kernelattn._precision import enable_x64, x64_enabled
from kernelattn.attacks import AttackConfig, AttackResult, fgsm, mim, pgd, run_attack
from kernelattn.data import Dataset
from kernelattn.distributed import (
    device_mesh,
    initialize_distributed,
    local_device_count,
    sharded_streaming_head_ntk,
    sharded_structured_head_ntk,
)
from kernelattn.guards import KernelError, KernelWarning, check_kernel
from kernelattn.kernels.analytic import Kernel, head_kernels, qkv_attention_nngp
from kernelattn.kernels.empirical import (
    empirical_ntk,
    empirical_ntk_fn,
    head_variables,
    model_apply_fn,
    streaming_head_ntk,
    structured_head_ntk,
)
from kernelattn.kernels.gram import ConditionReport, condition_report, gram, gram_spectrum, numerical_rank
from kernelattn.models import (
    AttentionMLP,
    HeadConfig,
    MLPHead,
    QKVAttention,
    QKVAttentionMLP,
    TwoLayerReLU,
    make_model,
)
from kernelattn.memory import MemoryPlanError, plan_width_chunk
from kernelattn.specs import Spec, SpecError, load_spec
from kernelattn.store import ResultStore, StoreCorruptError, StoreError
from kernelattn.sweeps import SweepResults, format_summary, load_results, run_sweep
from kernelattn.training import TrainConfig, linearize, ntk_predictor, train
from kernelattn.transforms import AttentionConfig, linear_attention

# The two functions below share their names with their modules, as the API
# promises ``kernelattn.influence(...)`` and ``kernelattn.malleability(...)``;
# use ``from kernelattn.influence import ...`` to reach the modules' contents.
from kernelattn.influence import InfluenceResult, influence_scores  # isort: skip
from kernelattn.influence import influence  # isort: skip  # noqa: E402
from kernelattn.malleability import MalleabilityReport, malleability_sweep, run_malleability_spec  # isort: skip
from kernelattn.malleability import malleability  # isort: skip  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "AttackConfig",
    "AttackResult",
    "Dataset",
    "InfluenceResult",
    "KernelError",
    "KernelWarning",
    "MalleabilityReport",
    "MemoryPlanError",
    "ResultStore",
    "Spec",
    "SpecError",
    "StoreCorruptError",
    "StoreError",
    "SweepResults",
    "TrainConfig",
    "check_kernel",
    "data",
    "device_mesh",
    "initialize_distributed",
    "local_device_count",
    "sharded_streaming_head_ntk",
    "sharded_structured_head_ntk",
    "fgsm",
    "format_summary",
    "influence",
    "influence_scores",
    "linearize",
    "load_results",
    "load_spec",
    "malleability",
    "malleability_sweep",
    "mim",
    "ntk_predictor",
    "pgd",
    "plan_width_chunk",
    "run_attack",
    "run_malleability_spec",
    "run_sweep",
    "train",
    "AttentionConfig",
    "AttentionMLP",
    "ConditionReport",
    "HeadConfig",
    "Kernel",
    "MLPHead",
    "QKVAttention",
    "QKVAttentionMLP",
    "TwoLayerReLU",
    "condition_report",
    "empirical_ntk",
    "empirical_ntk_fn",
    "enable_x64",
    "gram",
    "gram_spectrum",
    "head_kernels",
    "head_variables",
    "linear_attention",
    "make_model",
    "model_apply_fn",
    "numerical_rank",
    "qkv_attention_nngp",
    "streaming_head_ntk",
    "structured_head_ntk",
    "x64_enabled",
]
