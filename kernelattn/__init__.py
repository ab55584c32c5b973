"""kernelattn: neural-tangent-kernel analysis of linearized attention.

Reproduces and extends arXiv 2603.13085: parameter-free linearized attention
turns the Gram matrix G into G³, cubing its condition number, so the network
cannot reach the kernel regime at any practical width.
"""

from kernelattn._precision import enable_x64, x64_enabled
from kernelattn.kernels.analytic import Kernel, head_kernels, qkv_attention_nngp
from kernelattn.kernels.empirical import (
    empirical_ntk,
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
from kernelattn.transforms import AttentionConfig, linear_attention

__version__ = "0.1.0"

__all__ = [
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
