"""Running a sweep: claim cells in the store, compute them group by group, record each, return the tables.

:func:`run_sweep` plans the cells (``sweeps.plan``), prepares each (dataset,
model) group once (``sweeps.groups``), and computes the cells the store does
not hold yet: for a kernel sweep Θ_m per cell — streamed over widths for
feature models (``kernels.stream.head_kernel_stream``), the registry's kernel
of a drawn network otherwise — and its convergence metrics
(``kernels.metrics.kernel_convergence``); for a training sweep the trained
network, its linearization and the NTK predictor compared on the test
points. Cells are claimed before they are computed, so several processes
share one store; the tables are read back from it (``sweeps.results``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from kernelattn._precision import enable_x64, precision_policy, resolve_dtype, resolve_precision, x64_enabled
from kernelattn.experiments.resources import blas_single_thread
from kernelattn.experiments.specs import Spec, load_spec, parse_devices
from kernelattn.experiments.store import ResultStore, make_record, store_exists, utc_now
from kernelattn.experiments.sweeps.groups import (
    SweepData,
    SweepGroup,
    head_config,
    load_data,
    network,
    network_kernel,
    prepare_group,
)
from kernelattn.experiments.sweeps.plan import Cell, plan_cells, sweep_mesh
from kernelattn.experiments.sweeps.results import SweepResults, sweep_tables
from kernelattn.kernels import memory
from kernelattn.kernels.empirical import model_apply_fn
from kernelattn.kernels.metrics import accuracy, kernel_convergence, relative_error
from kernelattn.kernels.stream import head_kernel_stream
from kernelattn.learning.training import linearize, loss_value, ntk_predictor, predicted_labels, train, training_health
from kernelattn.models import MLPHead, head_preactivations

__all__ = ["KIND_RECORD", "run_sweep"]

KIND_RECORD = {"kernel": "kernel_sweep", "training": "training_sweep"}
WAIT_POLL_S = 1.0  # seconds between looks at the store while other processes finish their cells


def _rotate(items: list, offset: int) -> list:
    """``items`` starting at position ``offset`` (mod its length), wrapping around."""
    if not items:
        return items
    k = offset % len(items)
    return items[k:] + items[:k]


class _Runner:
    """Computes the cells of one process's share of a sweep into its store (datasets loaded once)."""

    def __init__(self, spec: Spec, store, bar, *, mesh=None, offset: int = 0) -> None:
        self.spec = spec
        self.store = store
        self.bar = bar
        self.computed = 0
        self.mesh = mesh  # 1-D width mesh for the streamed Θ_m, or None
        self.offset = offset  # this process's index: it starts its work that far into each list
        self._data: dict[int, SweepData] = {}
        self._spec_dict = spec.to_dict()

    def data(self, index: int) -> SweepData:
        if index not in self._data:
            self._data[index] = load_data(self.spec.datasets[index], index)
        return self._data[index]

    def put(self, cell: Cell, metrics: dict[str, Any], seconds: float, started: str) -> None:
        record = make_record(
            KIND_RECORD[self.spec.kind],
            cell.definition,
            metrics,
            spec=self._spec_dict,
            seed=cell.seed,
            seconds=seconds,
            started=started,
            finished=utc_now(),
        )
        self.store.put(cell.key, record, exist_ok=True)
        self.computed += 1
        self.bar.update(1)

    @contextlib.contextmanager
    def claiming(self, cells: Sequence[Cell]) -> Iterator[list[Cell]]:
        """The cells of ``cells`` this process now holds, released on exit (``ResultStore.claiming``)."""
        with self.store.claiming(c.key for c in cells) as keys:
            held = set(keys)
            yield [c for c in cells if c.key in held]

    # -- kernel sweeps ---------------------------------------------------------------

    def kernel_group(self, group: SweepGroup, cells: list[Cell]) -> None:
        spec = self.spec
        by_seed: dict[int, list[Cell]] = {}
        for cell in cells:
            by_seed.setdefault(cell.seed, []).append(cell)
        if group.features is None:  # a network model: one kernel per cell
            for _seed, seed_cells in _rotate(list(by_seed.items()), self.offset):
                with self.claiming(seed_cells) as claimed:
                    for cell in claimed:
                        started, t0 = utc_now(), time.perf_counter()
                        theta = network_kernel(spec, group.model, group.data, cell.width, jax.random.PRNGKey(cell.seed))
                        self._kernel_record(group, cell, theta, time.perf_counter() - t0, started, devices=1)
            return
        n = group.data.x_train.shape[0]
        head = head_config(spec, 1, group.data.out_dim)
        k = spec.kernel
        batched = self._batch_seeds(n, group.features.shape[0] - n)
        # Batches have a fixed composition (all seeds, or one), so a cell's value never
        # depends on which cells were pending.
        batches = [list(spec.seeds)] if batched else [[seed] for seed in spec.seeds]
        n_devices = 1 if self.mesh is None else int(self.mesh.devices.size)
        memory.ensure_fits(
            memory.sweep_cell_memory(
                n,
                group.features.shape[0] - n,
                group.features.shape[1],
                width_chunk=k.width_chunk,
                seeds=max(len(b) for b in batches),
                out_dim=head.out_dim,
                train_readout=head.train_readout,
                use_bias=head.use_bias,
                dtype=spec.dtype,
            )
        )
        for batch in _rotate(batches, self.offset):
            pending = [c for s in batch for c in by_seed.get(s, [])]
            with self.claiming(pending) as claimed:
                if not claimed:
                    continue
                index = {(c.seed, c.width): c for c in claimed}
                keys = jnp.stack([jax.random.PRNGKey(s) for s in batch]) if batched else jax.random.PRNGKey(batch[0])
                widths = sorted({c.width for c in claimed})
                started, t0 = utc_now(), time.perf_counter()
                for m, theta in head_kernel_stream(
                    keys,
                    head,
                    group.features,
                    n,
                    widths,
                    width_chunk=k.width_chunk,
                    dtype=spec.dtype,
                    mesh=self.mesh,
                    precision=spec.precision,
                ):
                    thetas = theta if theta.ndim == 3 else theta[None]
                    elapsed = time.perf_counter() - t0
                    done = [(i, index[(s, m)]) for i, s in enumerate(batch) if (s, m) in index]
                    for i, cell in done:
                        self._kernel_record(group, cell, thetas[i], elapsed / len(done), started, devices=n_devices)
                    started, t0 = utc_now(), time.perf_counter()

    def _batch_seeds(self, n: int, n_test: int) -> bool:
        k = self.spec.kernel
        if k.batch_seeds is False or len(self.spec.seeds) == 1:
            return False
        estimate = memory.seed_batch_memory(
            n, n_test, width_chunk=k.width_chunk, seeds=len(self.spec.seeds), dtype=self.spec.dtype
        )
        fits = estimate.total <= k.memory_gb * 2**30
        if k.batch_seeds is True:
            return fits
        return fits and jax.default_backend() != "cpu"

    def _kernel_record(
        self, group: SweepGroup, cell: Cell, theta: np.ndarray, seconds: float, started: str, *, devices: int = 1
    ) -> None:
        n = group.data.x_train.shape[0]
        t0 = time.perf_counter()
        with blas_single_thread(n):
            metrics = kernel_convergence(theta[:n], theta[n:], group.reference, self.spec.metrics)
        metrics.update(group.info)
        metrics["n_devices"] = int(devices)  # provenance only: not in the cell key
        self.put(cell, metrics, seconds + time.perf_counter() - t0, started)

    # -- training sweeps -------------------------------------------------------------

    def training_group(self, group: SweepGroup, cells: list[Cell]) -> None:
        spec = self.spec
        n = group.data.x_train.shape[0]
        ref = group.reference
        ntk_time = spec.training_options().ntk_time
        with blas_single_thread(n):
            if ntk_time is None:
                f_ntk = ref.predictions
            else:
                f_ntk = ntk_predictor(ref.theta_train, ref.theta_test, ref.y, time=ntk_time, ridge=spec.ridge)
        f_ntk = np.asarray(f_ntk, np.float64).reshape(group.data.x_test.shape[0], -1)
        for cell in _rotate(list(cells), self.offset):
            with self.claiming([cell]) as claimed:
                if not claimed:
                    continue
                started, t0 = utc_now(), time.perf_counter()
                metrics = _train_cell(spec, group, cell, f_ntk)
                metrics.update(group.info)
                self.put(cell, metrics, time.perf_counter() - t0, started)


def _train_cell(spec: Spec, group: SweepGroup, cell: Cell, f_ntk: np.ndarray) -> dict[str, Any]:
    data = group.data
    n = data.x_train.shape[0]
    config = spec.training_options().train_config()
    dtype = jnp.dtype(spec.dtype)
    init_key, shuffle_key = jax.random.split(jax.random.PRNGKey(cell.seed))
    if group.features is None:  # a network model ("qkv-attn", a user's): the whole network is trained
        module = network(spec, group.model, cell.width, data.out_dim)
        ctx = jnp.asarray(data.x_train, dtype)
        variables = module.init(init_key, ctx, ctx)
        apply_fn, params = model_apply_fn(module, variables, ctx)
        x_train, x_test = data.x_train, data.x_test
    else:  # parameter-free features computed once; only the head is trained
        module = MLPHead(head_config(spec, cell.width, data.out_dim), dtype)
        x_train, x_test = group.features[:n], group.features[n:]
        variables = dict(module.init(init_key, jnp.asarray(x_train, dtype)))
        params = variables.pop("params")
        rest = variables

        def apply_fn(p, x, _module=module, _rest=rest):
            return _module.apply({"params": p, **_rest}, x)

    y = data.y if data.y.ndim == 2 else data.y[:, None]
    loss = config.resolved_loss(y.shape[1])

    def final_loss(fn, p) -> float:
        out = fn(p, jnp.asarray(x_train, dtype))
        value = loss_value(out, jnp.asarray(y, dtype), jnp.ones(n, dtype), loss)
        return float(value)

    result = train(apply_fn, params, x_train, y, key=shuffle_key, config=config)
    f_m = np.asarray(apply_fn(result.params, jnp.asarray(x_test, dtype)), np.float64)
    out: dict[str, Any] = {
        "loss": loss,
        "epochs": config.epochs,
        "loss_m": final_loss(apply_fn, result.params),
        "f_ntk_norm": float(np.linalg.norm(f_ntk)),
    }
    if data.labels_test is not None:
        out.update(
            _fit_health(
                apply_fn,
                params,
                result.params,
                rest if group.features is not None else None,
                module,
                x_train,
                y,
                f_m,
                data.labels_test,
                loss,
                dtype,
            )
        )
    metrics = spec.metrics
    if "ntk_distance" in metrics:
        out["ntk_distance"] = relative_error(f_m, f_ntk)
    f_lin = None
    if "lin_distance" in metrics:
        apply_lin = linearize(apply_fn, params)
        result_lin = train(apply_lin, params, x_train, y, key=shuffle_key, config=config)
        f_lin = np.asarray(apply_lin(result_lin.params, jnp.asarray(x_test, dtype)), np.float64)
        out["lin_distance"] = relative_error(f_m, f_lin)
        out["lin_ntk_distance"] = relative_error(f_lin, f_ntk)
        out["loss_lin"] = final_loss(apply_lin, result_lin.params)
    if "accuracy" in metrics and data.labels_test is not None:
        out["acc_m"] = accuracy(f_m, data.labels_test)
        out["acc_ntk"] = accuracy(f_ntk, data.labels_test)
        if f_lin is not None:
            out["acc_lin"] = accuracy(f_lin, data.labels_test)
    return out


def _fit_health(apply_fn, params0, params, rest, module, x_train, y, f_test, labels_test, loss, dtype) -> dict:
    """Training health (``kernelattn.learning.training.training_health``) of a sweep fit, as ``health_*`` metrics;
    the ReLU-pattern diagnostics need the head's variables (``rest`` not None)."""
    x = jnp.asarray(x_train, dtype)
    hidden = hidden0 = None
    if rest is not None:
        hidden = np.asarray(head_preactivations(module.config, {**params, **rest.get("constants", {})}, x))
        hidden0 = np.asarray(head_preactivations(module.config, {**params0, **rest.get("constants", {})}, x))
    health = training_health(
        loss=loss,
        targets=y,
        labels=predicted_labels(y),
        outputs=np.asarray(apply_fn(params, x)),
        params=params,
        initial_params=params0,
        hidden=hidden,
        hidden_initial=hidden0,
        features=np.asarray(x_train),
        labels_test=labels_test,
        outputs_test=f_test,
    )
    return {f"health_{k}": v for k, v in health.to_dict().items()} | {"trained": health.trained}


def _progress_enabled(progress: bool) -> bool:
    if not progress:
        return False
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def _work_through(spec: Spec, store, runner: _Runner, bar, cells: list[Cell], offset: int) -> None:
    """Compute every cell of ``cells`` that is neither stored nor claimed by another process."""
    groups: dict[tuple[int, int], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.dataset, cell.model), []).append(cell)
    for (i, j), group_cells in _rotate(list(groups.items()), offset):
        group_cells = [c for c in group_cells if not store.has(c.key)]
        if not group_cells:
            continue
        bar.set_postfix_str(f"{spec.datasets[i].label} / {spec.models[j].label}", refresh=False)
        group = prepare_group(spec, spec.datasets[i], spec.models[j], runner.data(i))
        if spec.kind == "kernel":
            runner.kernel_group(group, group_cells)
        else:
            runner.training_group(group, group_cells)


def _wait_for_others(store, plan: list[Cell], bar, poll_s: float = WAIT_POLL_S) -> list[Cell]:
    """Block while other live processes hold claims on missing cells.

    Returns:
      The cells still missing once no live claim is left (given up by a
      process that failed or died): the caller computes them.
    """
    while True:
        missing = [c for c in plan if not store.has(c.key)]
        bar.n = len(plan) - len(missing)
        # Another host's claim cannot be checked for liveness: wait for it only within one multi-process
        # run (its processes share the work); otherwise report those cells missing instead of hanging.
        waiting = sum(store.claimed_elsewhere(c.key, include_foreign=jax.process_count() > 1) for c in missing)
        if not waiting:
            bar.refresh()
            return missing
        bar.set_postfix_str(f"waiting for {waiting} cells of other processes", refresh=True)
        time.sleep(poll_s)


def run_sweep(
    spec: str | os.PathLike[str] | Mapping[str, Any] | Spec,
    out: str | os.PathLike[str] = "results",
    *,
    progress: bool = True,
    devices: Any = None,
    wait: bool = True,
) -> SweepResults:
    """Run (or resume) a sweep and return its tables.

    Args:
      spec: a spec file path, a dict in the spec format, or a ``Spec``
        (validated by ``kernelattn.experiments.specs.load_spec``).
      out: results directory; the store is ``<out>/<spec name>``.
      progress: show a tqdm progress bar (cells done, ETA) on stderr; it is
        also off when stderr is not a terminal.
      devices: overrides the spec's ``kernel.devices`` (an integer ≥ 1 or
        "all"): local devices the streamed Θ_m is sharded over, width-wise.
        Not part of any cell's key (results agree to float rounding).
      wait: when the cells left are being computed by other processes
        (live claims on the same store), wait for them, and compute those a
        failed process gave up, so that every process returns the whole
        table; ``False`` returns at once with them counted as ``n_missing``.
        Claims of another host are waited for only in a multi-process run
        (``jax.process_count() > 1``): their liveness cannot be checked, so a
        single process counts those cells missing instead of waiting up to
        the claim timeout (``kernelattn store PATH`` lists such claims).

    In a multi-process JAX run (``kernelattn.kernels.distributed.initialize_distributed``
    called first, as the CLI does), every process runs the same call on the
    same store: cells are claimed before they are computed, and process p
    starts p positions into each work list, so the processes spread out
    instead of contending for the same cells.

    Returns:
      ``SweepResults`` with ``.cells``, ``.summary``, ``.fits`` DataFrames
      and ``.store_path``.

    Raises:
      kernelattn.experiments.specs.SpecError: an invalid spec (naming the key path).
      kernelattn.experiments.store.StoreError: the store cannot be opened or written.

    The whole run is inside ``kernelattn.precision_policy(spec.precision)``
    (None: the policy in force, else "highest"): every matmul of it,
    the sweep's own included, runs at that precision.
    """
    t_start = time.perf_counter()
    spec = load_spec(spec)
    # A spec without "precision" runs at the policy in force (the CLI's --precision); records name the one used.
    spec = dataclasses.replace(spec, precision=resolve_precision(spec.precision, "precision"))
    with precision_policy(spec.precision):
        return _run_sweep(spec, out, progress=progress, devices=devices, wait=wait, t_start=t_start)


def _run_sweep(spec: Spec, out, *, progress: bool, devices: Any, wait: bool, t_start: float) -> SweepResults:
    if devices is not None:
        spec = dataclasses.replace(
            spec, kernel=dataclasses.replace(spec.kernel, devices=parse_devices(devices, "devices"))
        )
    if not x64_enabled():
        enable_x64()
    resolve_dtype(spec.dtype, "dtype")  # refuses float64 without 64-bit mode, naming "dtype"
    mesh = sweep_mesh(spec.kernel.devices)
    offset = jax.process_index()
    path = Path(out) / spec.name
    # A new store is created only once every dataset has loaded: a spec refused at data-load time leaves nothing.
    preloaded = {} if store_exists(path) else {i: load_data(d, i) for i, d in enumerate(spec.datasets)}
    store = ResultStore.open(path)
    store.clear_finished_claims()  # left by an owner killed between its record and its release
    plan = plan_cells(spec)
    pending = [c for c in plan if not store.has(c.key)]
    skipped = len(plan) - len(pending)
    bar = tqdm(
        total=len(plan),
        initial=skipped,
        desc=spec.name,
        unit="cell",
        dynamic_ncols=True,
        disable=not _progress_enabled(progress),
        smoothing=0.1,
    )
    runner = _Runner(spec, store, bar, mesh=mesh, offset=offset)
    runner._data.update(preloaded)
    try:
        while pending:
            computed_before = runner.computed
            _work_through(spec, store, runner, bar, pending, offset)
            left = _wait_for_others(store, plan, bar) if wait else []
            if left == pending and runner.computed == computed_before:
                break  # no progress on the same cells: report them missing instead of looping
            pending = left
    finally:
        bar.close()
    cells_df, summary, fits = sweep_tables(spec, store, plan)
    missing = sum(not store.has(c.key) for c in plan)
    return SweepResults(
        spec, path, cells_df, summary, fits, len(plan), runner.computed, skipped, missing, time.perf_counter() - t_start
    )
