"""The API reference page: every public name of ``kernelattn`` (its ``__all__``), grouped by topic.

The names come from the package at build time; only their grouping is written
here. Each is rendered by mkdocstrings from its docstring under its public
path ``kernelattn.<name>``, so moving a module inside the package changes
nothing here. A public name missing from ``GROUPS`` is rendered under "Other"
with a warning (which fails ``mkdocs build --strict``); a name in ``GROUPS``
that is no longer public is an error.
"""

from __future__ import annotations

import logging
import re

from gen_common import DocsGenError, kernelattn

log = logging.getLogger("mkdocs.plugins.kernelattn_docs")

#: (title, one-line introduction, public names). ``data`` is the ``kernelattn.data`` subpackage.
GROUPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Datasets", "Loaders with class subsets, seeded balanced sampling, scaling, unit-norm rows and target "
     "encodings; files are verified by SHA-256.", ("data", "Dataset")),
    ("Precision", "Kernel functions refuse float64 while JAX's 64-bit mode is off; matmuls run at "
     "Precision.HIGHEST unless the precision policy is \"fast\".", ("enable_x64", "x64_enabled", "precision_policy")),
    ("Errors", "Every deliberate error is a KernelattnError; argument errors are still ValueError / TypeError.",
     ("KernelattnError", "InputValueError", "InputTypeError", "DependencyError")),
    ("Gram matrix and conditioning", "κ(G), κ_d(G), numerical rank and the width threshold, in float64.",
     ("gram", "gram_spectrum", "numerical_rank", "condition_report", "ConditionReport")),
    ("Linearized attention", "Parameter-free attention over the training set: Z Zᵀ = G³.",
     ("linear_attention", "AttentionConfig")),
    ("Models", "Flax modules: the MLP head in NTK parameterization and the models built on it.",
     ("HeadConfig", "MLPHead", "TwoLayerReLU", "AttentionMLP", "QKVAttention", "QKVAttentionMLP", "make_model")),
    ("Infinite-width kernels", "Closed-form NNGP and NTK.", ("head_kernels", "Kernel", "qkv_attention_nngp")),
    ("Infinite-width composer", "Layers as (init, apply, kernel) triples: one description gives the Flax network "
     "and its NNGP and NTK, linearized attention included.",
     ("serial", "Dense", "Relu", "Erf", "Identity", "LinearAttention", "model_from_layers")),
    ("Empirical (finite-width) NTK", "Any model by autodiff, or the head's structured closed form at any width.",
     ("empirical_ntk", "empirical_ntk_fn", "model_apply_fn", "head_variables", "structured_head_ntk",
      "streaming_head_ntk")),
    ("Several devices and hosts", "Width- and sample-sharded head NTKs; multi-process initialization.",
     ("device_mesh", "local_device_count", "initialize_distributed", "sharded_streaming_head_ntk",
      "sharded_structured_head_ntk")),
    ("Memory planning", "Peak-memory estimates checked before anything is allocated.",
     ("plan_width_chunk", "MemoryPlanError")),
    ("Numerical guard-rails", "Symmetry, positive semi-definiteness and conditioning checks on kernels.",
     ("check_kernel", "KernelWarning", "KernelError")),
    ("Training", "optax training loops, the linearized model and kernel predictors.",
     ("TrainConfig", "train", "linearize", "ntk_predictor")),
    ("Prediction", "Closed-form MSE gradient flow at any times, and the infinite ensemble's mean and covariance, "
     "with neural-tangents' conventions.", ("gradient_descent_mse", "gradient_descent_mse_ensemble", "Gaussian")),
    ("Influence", "Exact leave-one-out and influence-function scores of kernel ridge regression.",
     ("influence", "FitOptions", "influence_scores", "InfluenceResult", "top_k")),
    ("Attribution estimators", "TracIn, grad-dot / grad-cos, representer points and TRAK from a network's own "
     "gradients (a kernelattn head or any Flax module), scored against exact and retrained leave-one-out.",
     ("gradient_attribution", "GradientModel", "module_gradient_model", "loss_gradients", "gradient_products",
      "representer_scores", "projected_features", "trak_scores", "compare_to_ground_truth", "kernel_loo_by_refit",
      "retrained_loo")),
    ("Attacks", "FGSM, PGD and MIM on the training data.", ("AttackConfig", "AttackResult", "fgsm", "pgd", "mim",
                                                             "run_attack")),
    ("Influence malleability", "How far perturbing the training data moves the influence scores.",
     ("malleability", "malleability_sweep", "run_malleability_spec", "MalleabilityReport")),
    ("Specs and width sweeps", "JSON experiment specs, validated on load, and resumable sweeps over them.",
     ("load_spec", "Spec", "SpecError", "run_sweep", "load_results", "SweepResults", "format_summary")),
    ("Result store", "Atomic, append-only records, loadable as a DataFrame; exported to Parquet (extra "
     "`parquet`) or logged as an MLflow run (extra `mlflow`, off unless called).",
     ("ResultStore", "StoreError", "StoreCorruptError", "write_parquet", "read_parquet", "log_store_to_mlflow")),
)


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _block(ka, name: str) -> list[str]:
    """A mkdocstrings block rendering ``kernelattn.<name>``."""
    if name == "data":
        members = sorted(ka.data.__all__, key=lambda n: (not n[0].islower(), n))
        return ["::: kernelattn.data", "    options:", "      show_submodules: false",
                f"      members: [{', '.join(members)}]", "      heading_level: 3", ""]
    return [f"::: kernelattn.{name}", "    options:", "      heading_level: 3", ""]


def render() -> str:
    ka = kernelattn()
    public = list(ka.__all__)
    grouped = [n for _, _, names in GROUPS for n in names]
    stale = sorted(set(grouped) - set(public))
    if stale:
        raise DocsGenError(f"docs/_gen/api_page.py groups names that kernelattn no longer exports: {stale}")
    twice = sorted({n for n in grouped if grouped.count(n) > 1})
    if twice:
        raise DocsGenError(f"docs/_gen/api_page.py lists these names in two groups: {twice}")
    other = [n for n in public if n not in grouped]
    if other:
        log.warning("kernelattn exports %s, not grouped in docs/_gen/api_page.py GROUPS: rendered under 'Other'",
                    other)
    out = [
        "# API reference",
        "",
        "Everything below is importable from the top-level package, e.g. "
        "`from kernelattn import empirical_ntk` or `import kernelattn as ka; ka.empirical_ntk(...)` "
        "(the package loads each name on first use, so `import kernelattn` itself is instant). "
        "This page lists `kernelattn.__all__` when the site is built, rendered from the docstrings.",
        "",
        "| topic | names |",
        "|---|---|",
    ]
    groups = [*GROUPS, ("Other", "Public names not yet sorted into a topic.", tuple(other))] if other else GROUPS
    for title, _, names in groups:
        out.append(f"| [{title}](#{_anchor(title)}) | {', '.join(f'[`{n}`][kernelattn.{n}]' for n in names)} |")
    out.append("")
    for title, intro, names in groups:
        out += [f"## {title} {{ #{_anchor(title)} }}", "", intro, ""]
        for name in names:
            out += _block(ka, name)
    return "\n".join(out)


if __name__ == "__main__":
    print(render())
