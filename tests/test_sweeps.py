"""Sweeps: exact kernels, end-to-end tables, resume after SIGKILL, shared stores, training cells."""

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from support import unit_rows
from kernelattn.experiments import provenance
from kernelattn.kernels.empirical import model_apply_fn
from kernelattn.models import HeadConfig, MLPHead, make_model
from kernelattn.experiments.specs import parse_spec
from kernelattn.experiments.store import ResultStore
from kernelattn.experiments.sweeps import (
    cell_definition,
    format_summary,
    load_results,
    plan_cells,
    run_sweep,
)
from kernelattn.learning.training import linearize

ROOT = Path(__file__).resolve().parents[1]

# Small but complete: 2 models × 3 widths (one a partial block, one several blocks plus a
# partial one) × 2 seeds; synthetic data of known κ.
SMALL = {
    "name": "small",
    "kind": "kernel",
    "datasets": [{"name": "synthetic", "n_train": 24, "n_test": 8, "d": 6, "kappa": 30, "n_classes": 3}],
    "models": [{"name": "relu"}, {"name": "mlp-attn"}],
    "widths": [4, 16, 100],
    "seeds": 2,
    "ridge": 1e-2,
    "kernel": {"width_chunk": 32},
}


def _values(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=[c for c in ("seconds",) if c in frame.columns]).reset_index(drop=True)


# ----------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("kind", ["head", "qkv"])
def test_linearized_model_matches_network_to_first_order(rng, kind):
    x = unit_rows(rng.normal(size=(6, 4)))
    if kind == "head":  # trained readout: f is bilinear in (a, W), so the remainder is exactly O(t²)
        module = MLPHead(HeadConfig(16, 2, sigma_b=0.2, train_readout=True), jnp.float64)
        variables = dict(module.init(jax.random.PRNGKey(0), x))
        params = variables.pop("params")

        def apply_fn(p, inputs):
            return module.apply({"params": p, **variables}, inputs)
    else:
        module = make_model("qkv-attn", 16, 2, head_width=6, normalize=True, param_dtype=jnp.float64)
        variables = module.init(jax.random.PRNGKey(0), x, x)
        apply_fn, params = model_apply_fn(module, variables, jnp.asarray(x))
    leaves, tree = jax.tree_util.tree_flatten(params)
    delta = jax.tree_util.tree_unflatten(tree, [jnp.asarray(rng.normal(size=leaf.shape)) for leaf in leaves])
    apply_lin = linearize(apply_fn, params)

    @jax.jit
    def remainder(t):
        moved = jax.tree_util.tree_map(lambda p, d: p + t * d, params, delta)
        f = apply_fn(moved, x)
        return jnp.linalg.norm(f - apply_lin(moved, x)), jnp.linalg.norm(f - apply_fn(params, x))

    errors, steps = zip(*[map(float, remainder(t)) for t in (1e-3, 5e-4, 2.5e-4)])
    assert float(remainder(0.0)[0]) < 1e-14
    for coarse, fine in zip(errors, errors[1:]):
        assert coarse / fine == pytest.approx(4.0, rel=0.05)  # halving t quarters the remainder
    relative = [e / s for e, s in zip(errors, steps)]  # remainder / first-order change = O(t)
    assert relative[-1] < 0.3 * relative[0] and relative[-1] < 0.05


# ----------------------------------------------------------------------------- end to end


def test_small_kernel_sweep_end_to_end(tmp_path):
    results = run_sweep(SMALL, tmp_path, progress=False)
    assert results.n_cells == 12 and results.n_computed == 12 and results.n_missing == 0
    assert results.store_path == tmp_path / "small"
    cells = results.cells
    assert len(cells) == 12
    assert list(cells[["model", "width", "seed"]].iloc[:3].itertuples(index=False, name=None)) == [
        ("2L-ReLU", 4, 0), ("2L-ReLU", 4, 1), ("2L-ReLU", 16, 0)]
    for column in ("rel_fro", "cert", "spec_err", "lambda_min", "kappa", "krr_err", "krr_acc_m", "krr_acc_inf",
                   "lambda_min_inf", "kappa_G", "kappa_d_G", "log10_m_theory", "seconds", "key"):
        assert column in cells.columns, column
    assert np.all(np.isfinite(cells["rel_fro"])) and np.all(cells["rel_fro"] > 0)
    assert set(cells["limit"]) == {"closed-form"}
    # κ_d(G) of the synthetic training set is the requested κ (n > d: the effective κ_d)
    assert cells["kappa_d_G"].iloc[0] == pytest.approx(30.0, rel=1e-8)
    summary = results.summary
    assert len(summary) == 6 and set(summary["n_seeds"]) == {2}
    row = summary.iloc[0]
    values = cells[(cells.model == "2L-ReLU") & (cells.width == 4)]["rel_fro"]
    assert row["rel_fro_mean"] == pytest.approx(values.mean()) and row["rel_fro_std"] == pytest.approx(values.std())
    fits = results.fits
    assert list(fits["model"]) == ["2L-ReLU", "MLP-Attn"]
    for column in ("slope_rel_fro", "slope_cert", "m_cert_half", "log10_m_theory", "kappa_G", "kappa_d_G"):
        assert column in fits.columns
    assert np.all(fits["slope_rel_fro"] < 0)
    text = format_summary(results)
    assert "mean ± std over seeds" in text and "slope rel_fro" in text and "MLP-Attn" in text
    # The record holds the spec, seed, versions, device and timing.
    store = ResultStore.open(results.store_path, create=False)
    record = store.get(cells["key"].iloc[0])
    assert record["spec"]["name"] == "small" and record["seed"] == 0 and record["kind"] == "kernel_sweep"
    assert record["environment"]["packages"]["jax"] and record["environment"]["jax_backend"]
    assert record["timing"]["seconds"] > 0
    frame = store.to_frame()  # the record's kind and the cell's kind side by side
    assert set(frame["kind"]) == {"kernel_sweep"} and set(frame["cell.kind"]) == {"kernel"} and len(frame) == 12
    # A rerun computes nothing and returns the same tables; load_results reads them back.
    again = run_sweep(SMALL, tmp_path, progress=False)
    assert again.n_computed == 0 and again.n_skipped == 12
    pd.testing.assert_frame_equal(again.cells, cells)
    pd.testing.assert_frame_equal(load_results(SMALL, tmp_path).summary, summary)


def test_cell_keys_follow_the_numbers_not_the_labels():
    spec = parse_spec(SMALL)
    keys = {c.key for c in plan_cells(spec)}
    assert len(keys) == spec.n_cells
    relabelled = parse_spec({**SMALL, "models": [{"name": "relu", "label": "2L"}, {"name": "mlp-attn"}],
                             "kernel": {"width_chunk": 32, "batch_seeds": True, "memory_gb": 9}})
    assert {c.key for c in plan_cells(relabelled)} == keys
    for change in ({"ridge": 0.5}, {"dtype": "float64"}, {"kernel": {"width_chunk": 64}},
                   {"name": "other"}, {"metrics": ["rel_fro"]}):
        assert {c.key for c in plan_cells(parse_spec({**SMALL, **change}))}.isdisjoint(keys), change
    cell = plan_cells(spec)[0]
    definition = cell_definition(spec, spec.datasets[0], spec.models[0], cell.width, cell.seed)
    assert cell.key == provenance.cell_key(definition)
    assert definition["sweep"] == "small" and definition["kind"] == "kernel"


_CHILD = textwrap.dedent(
    """
    import json, sys, time
    import kernelattn.experiments.store as store_module
    from kernelattn.experiments.sweeps import run_sweep
    put = store_module.ResultStore.put
    def slow_put(self, *args, **kwargs):  # slow the child down so that it can be killed mid-sweep
        written = put(self, *args, **kwargs)
        time.sleep(0.4)
        return written
    store_module.ResultStore.put = slow_put
    run_sweep(json.loads(sys.argv[1]), sys.argv[2], progress=False)
    """
)


@pytest.mark.slow
def test_resume_after_sigkill_gives_identical_tables_and_no_duplicates(tmp_path):
    import json

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(SMALL), str(out)], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    records = out / "small" / "records"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if records.is_dir() and len([p for p in records.iterdir() if p.suffix == ".json"]) >= 3:
                break
            time.sleep(0.05)
        assert child.poll() is None, child.communicate()[1].decode()[-2000:]
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    stored = len(ResultStore.open(out / "small", create=False).keys())
    assert 3 <= stored < 12, stored
    resumed = run_sweep(SMALL, out, progress=False)
    assert resumed.n_skipped == stored and resumed.n_computed == 12 - stored and resumed.n_missing == 0
    clean = run_sweep(SMALL, tmp_path / "clean", progress=False)
    pd.testing.assert_frame_equal(_values(resumed.cells), _values(clean.cells), check_exact=True)
    pd.testing.assert_frame_equal(resumed.summary, clean.summary, check_exact=True)
    pd.testing.assert_frame_equal(resumed.fits, clean.fits, check_exact=True)
    store = ResultStore.open(out / "small", create=False)
    keys = store.keys()
    assert len(keys) == 12 and sorted(keys) == sorted(c.key for c in plan_cells(parse_spec(SMALL)))
    assert len(list(store.records())) == 12
    assert not [p for p in store.verify() if p.kind in ("corrupt", "claim")]


def test_a_cell_claimed_by_another_live_owner_is_left_to_it(tmp_path):
    spec = {**SMALL, "name": "shared", "models": [{"name": "relu"}], "widths": [4, 16], "seeds": 1}
    other = ResultStore.open(tmp_path / "shared")
    taken = plan_cells(parse_spec(spec))[1]
    assert other.claim(taken.key)  # a live owner (this process, another handle)
    first = run_sweep(spec, tmp_path, progress=False, wait=False)
    assert first.n_computed == 1 and first.n_missing == 1 and "missing 1" in format_summary(first)
    other.release(taken.key)
    second = run_sweep(spec, tmp_path, progress=False)
    assert second.n_computed == 1 and second.n_missing == 0 and len(second.cells) == 2


def test_small_training_sweep(tmp_path):
    spec = {
        "name": "train-small",
        "kind": "training",
        "datasets": [{"name": "synthetic", "n_train": 16, "n_test": 8, "d": 5, "kappa": 10}],
        "models": [{"name": "relu"}],
        "widths": [32],
        "seeds": [0],
        "ridge": 1e-3,
        "training": {"epochs": 3, "batch_size": 8, "learning_rate": 0.05},
    }
    results = run_sweep(spec, tmp_path, progress=False)
    row = results.cells.iloc[0]
    for column in ("ntk_distance", "lin_distance", "lin_ntk_distance", "acc_m", "acc_lin", "acc_ntk", "loss_m",
                   "loss_lin"):
        assert math.isfinite(row[column]), column
    assert row["loss"] == "mse"  # two classes: ±1 targets, one output
    assert 0 < row["lin_distance"] < 1  # the linearization tracks the network over a few steps
    assert "slope_ntk_distance" in results.fits.columns
    assert "|f_m-f_ntk|" in format_summary(results)


def test_a_process_waits_for_cells_claimed_elsewhere_and_takes_over_those_given_up(tmp_path):
    """Another live owner holds one cell: wait=False reports it missing; wait=True waits until
    that owner gives up (releases without a result) and then computes it itself."""
    import threading

    plan = plan_cells(parse_spec(SMALL))
    other = ResultStore.open(tmp_path / "quick" / "small")
    assert other.claim(plan[-1].key)
    early = run_sweep(SMALL, tmp_path / "quick", progress=False, wait=False)
    assert early.n_missing == 1 and early.n_computed == len(plan) - 1

    other2 = ResultStore.open(tmp_path / "patient" / "small")
    assert other2.claim(plan[0].key)
    timer = threading.Timer(1.5, other2.release, args=(plan[0].key,))
    timer.start()
    start = time.perf_counter()
    patient = run_sweep(SMALL, tmp_path / "patient", progress=False)
    timer.join()
    assert time.perf_counter() - start >= 1.5
    assert patient.n_missing == 0 and patient.n_computed == len(plan)
