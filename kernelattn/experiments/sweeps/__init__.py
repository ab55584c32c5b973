"""Width × seed × dataset × model sweeps into a resumable result store (docs/math.md §8).

``run_sweep(spec, out)`` computes every cell (dataset, model, width, seed) of
an experiment spec (``kernelattn.experiments.specs``) that the store ``<out>/<spec name>``
does not hold yet, writes one record per finished cell, and returns the
tables: one row per cell, mean ± std over seeds per width, and per
(dataset, model) log-log fits.

Kernel sweeps (``kind: "kernel"``)
----------------------------------
Per (dataset, model), once: the limit kernel Θ_∞ on train × train and
test × train in float64, its spectrum, its kernel-ridge predictions, and the
condition numbers κ(G), κ_d(G) and m_theory = κ_d^6 n ln n of the training
inputs (``kernelattn.kernels.gram.condition_report``).

Models come from ``kernelattn.registry`` (the built-in ones, or a user's
"module:attr"); the sweep orchestrates, the kernels are computed in
``kernelattn.kernels``.

- Feature models ("relu", "mlp-attn"): Θ_∞ is the closed-form head NTK
  (``kernelattn.kernels.analytic.head_kernels``) on the model's features —
  the unit-norm inputs, or the parameter-free attention output. Θ_m is the
  exact structured empirical NTK of the MLP head (docs/math.md §7), streamed
  over the hidden units (``kernelattn.kernels.stream.head_kernel_stream``):
  unit block j (``kernel.width_chunk`` units) is drawn from
  ``fold_in(PRNGKey(seed), j)`` exactly as ``streaming_head_ntk`` with the
  same ``width_chunk`` draws it, and a width-m network is the first m units.
  One pass per seed therefore yields every width of the sweep at the cost of
  the largest; memory is O(n² + n·width_chunk) whatever the width (2^20 at
  n = 500 runs in a few hundred MB). A cell's value depends on (seed, width,
  width_chunk) only, never on which other cells were computed in the same
  run: resuming reproduces it bit for bit. Widths share their first units
  (common random numbers), so the error curves of one seed are smooth in m;
  seeds are independent.
- Network models ("qkv-attn", a user's): Θ_m is the empirical NTK of the
  whole network — for "qkv-attn" from its structure
  (``kernelattn.kernels.qkv.qkv_empirical_ntk``: the head's structured NTK on
  the attention output plus the attention weights' terms, O(n²(C + h + m))
  time), for a user's model by autodiff unless its registry entry gives a
  kernel. Θ_∞ is a Monte-Carlo estimate, the mean Θ_m of
  ``kernel.limit_seeds`` networks of width ``kernel.limit_width`` (records
  say ``"limit": "monte-carlo"``); its own sampling error floors the measured
  convergence. neural-tangents' backend (``kernelattn.kernels.nt_backend``)
  is the exact alternative for the tied, linearly scaled QKV variant.

Per cell: ``kernelattn.kernels.metrics.kernel_convergence`` (rel_fro, cert,
spectrum of Θ_m, kernel-ridge predictor error with ridge λ on the test
points). Seeds are run one after another on CPU (measured: batching them
with ``jax.vmap`` is slower there); on accelerators they are vmapped when
seeds × n_all × n fits ``kernel.memory_gb`` (``kernel.batch_seeds``).

Training sweeps (``kind: "training"``, paper Table 1)
-----------------------------------------------------
Per cell: the network is trained with ``kernelattn.learning.training.train`` (paper
defaults; for "relu"/"mlp-attn" the parameter-free features are computed
once and the head is trained on them), its linearization
(``kernelattn.learning.training.linearize``) is trained the same way from the same
initialization and minibatch order, and both are compared on the test points
with the infinite-width NTK predictor (``kernelattn.learning.training.ntk_predictor``,
MSE gradient flow, t → ∞ = kernel ridge with the spec's ridge unless
``training.ntk_time`` is set): ``ntk_distance`` = ‖f_m − f_NTK‖/‖f_NTK‖,
``lin_distance`` = ‖f_m − f_lin‖/‖f_lin‖, and the test accuracy of each.

Store, resume, several processes
--------------------------------
One record per finished cell (``kernelattn.experiments.store.ResultStore``), keyed by
``provenance.cell_key`` of the cell definition: sweep name and kind,
dataset and model options, width, seed, dtype, ridge, head options, metric
groups (and the training settings) — so editing any of these in the spec
recomputes exactly the affected cells, while labels and performance
settings do not. A rerun skips finished cells; a SIGKILL loses at most the
cell in flight (a vmapped seed batch on accelerators: its cells in flight).
Cells are claimed before they are computed (``ResultStore.claim``), so
several processes can work on one store; a claim of a dead process on the
same host is taken over. Every record holds the spec, the seed, package
versions and devices (``provenance.environment``) and its timing.

Several devices and hosts: ``kernel.devices`` (or ``run_sweep(...,
devices=)``, CLI ``--devices N|all``) shards the streamed Θ_m of
"relu"/"mlp-attn" width-wise over that many local devices — each
accumulation step deals its blocks out over a 1-D mesh and adds the partial
kernels with one ``psum`` (the ``kernelattn.kernels.distributed`` pattern). The draws
are unchanged, so the numbers equal the 1-device ones up to float summation
order; the count is not in the cell key and is recorded as the metric
``n_devices`` (network models' cells are computed on one device). Across
processes (``initialize_distributed``; the CLI calls it), each process claims
cells in the shared store, process p starting p positions into each work list.

``run_sweep`` turns on JAX's 64-bit mode if it is off (Θ_∞ and the metrics
are float64), as the CLI does.

Modules, read in this order
---------------------------
``plan`` (cells, their keys, the device mesh) → ``groups`` (data, features,
Θ_∞ and its reference per (dataset, model)) → ``results`` (the tables read
back from the store, and their text report) → ``runner`` (:func:`run_sweep`).
Every public name is importable from ``kernelattn.experiments.sweeps`` itself.
"""

from kernelattn.experiments.sweeps.plan import Cell, cell_definition, plan_cells, sweep_mesh
from kernelattn.experiments.sweeps.results import (
    CELL_METRICS,
    FIT_METRICS,
    GROUP_COLUMNS,
    SweepResults,
    format_summary,
    load_results,
)
from kernelattn.experiments.sweeps.runner import KIND_RECORD, run_sweep

__all__ = [
    "CELL_METRICS",
    "FIT_METRICS",
    "GROUP_COLUMNS",
    "KIND_RECORD",
    "Cell",
    "SweepResults",
    "cell_definition",
    "format_summary",
    "load_results",
    "plan_cells",
    "run_sweep",
    "sweep_mesh",
]
