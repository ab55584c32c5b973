"""Same spec and seed → bitwise-identical stored numbers on the CPU (issue 10).

Each experiment runs twice into two fresh stores; the records' fingerprints
(a hash of the cell and its metrics only, not timing or environment) must be
equal key by key, and each record carries what is needed to rerun it.
"""

from kernelattn.experiments.malleability.runner import run_malleability_spec
from kernelattn.experiments.store import ResultStore, record_fingerprint
from kernelattn.experiments.sweeps import run_sweep

SWEEP = {
    "name": "determinism_sweep",
    "kind": "kernel",
    "datasets": [{"name": "digits", "n_train": 40, "n_test": 10, "seed": 3}],
    "models": [{"name": "relu"}, {"name": "mlp-attn"}],
    "widths": [4, 64],
    "seeds": 2,
    "dtype": "float32",
    "kernel": {"width_chunk": 16},
}

MALLEABILITY = {
    "datasets": [{"name": "digits", "n_train": 40, "n_test": 10, "seed": 1}],
    "models": ["relu", "mlp-attn"],
    "width": 32,
    "seeds": [5],
    "training": {"epochs": 3},
    "attacks": ["pgd"],
    "epsilons": [0.2],
    "attack_config": {"steps": 2},
}


def _fingerprints(store: ResultStore) -> dict[str, str]:
    return {record["key"]: record_fingerprint(record) for record in store.records()}


def test_sweep_is_bitwise_deterministic(tmp_path):
    first = run_sweep(SWEEP, tmp_path / "a", progress=False)
    second = run_sweep(SWEEP, tmp_path / "b", progress=False)
    a, b = _fingerprints(ResultStore.open(first.store_path)), _fingerprints(ResultStore.open(second.store_path))
    assert len(a) == 8 and a == b
    record = next(ResultStore.open(first.store_path).records())
    for field in ("cell", "spec", "seed", "environment"):
        assert record[field] is not None
    assert record["environment"]["packages"]["jax"] and "x64" in record["environment"]


def test_malleability_is_bitwise_deterministic(tmp_path):
    stores = [ResultStore.open(tmp_path / name) for name in ("a", "b")]
    for store in stores:
        run_malleability_spec(MALLEABILITY, store)
    a, b = (_fingerprints(s) for s in stores)
    assert len(a) == 6 and a == b  # 2 models × (1 attack + 2 null baselines)
