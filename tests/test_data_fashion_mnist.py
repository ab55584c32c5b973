"""The real Fashion-MNIST, as installed by Debian's ``dataset-fashion-mnist``
in /usr/share/datasets/fashion-mnist/. Absent, these tests are skipped, naming
the install command; with KERNELATTN_REQUIRE_REAL_DATA=1 (as in CI) they fail
(``support.require_fashion_mnist``).

Debian recompressed the published .gz files, so their SHA-256 differ from the
published ones; the files must be accepted through the SHA-256 of their
decompressed IDX payloads."""

from __future__ import annotations

import numpy as np
import pytest
from support import FASHION_MNIST_DIR_ENV, REQUIRE_REAL_DATA_ENV, require_fashion_mnist

from kernelattn.data import load
from kernelattn.data.mnist import FASHION_MNIST, FASHION_MNIST_CLASSES


@pytest.fixture(scope="module")
def load_full(tmp_path_factory):
    """A function returning the whole dataset, read once per module from the system
    directory (the primary one is empty). It checks for the data first, so a test
    calling it is skipped (or fails) itself when the data is absent."""
    loaded = {}

    def full():
        directory = require_fashion_mnist()
        if directory not in loaded:
            empty = tmp_path_factory.mktemp("empty-cache")
            loaded[directory] = load("fashion_mnist", data_dir=empty, system_dirs=(directory,), download=False,
                                     normalize=False, target="labels")
        return loaded[directory]

    return full


def test_absent_data_skips_naming_the_install_command_or_fails_when_required(tmp_path, monkeypatch):
    absent = tmp_path / "absent"
    monkeypatch.setenv(FASHION_MNIST_DIR_ENV, str(absent))
    monkeypatch.delenv(REQUIRE_REAL_DATA_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"not found in .*absent.*apt-get install dataset-fashion-mnist"):
        require_fashion_mnist()
    monkeypatch.setenv(REQUIRE_REAL_DATA_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install dataset-fashion-mnist.*REQUIRE_REAL_DATA=1"):
        require_fashion_mnist()
    absent.mkdir()
    for spec in FASHION_MNIST.files:
        (absent / spec.name).write_bytes(b"")
    assert require_fashion_mnist() == absent  # present: the test runs


def test_shapes_class_counts_and_names(load_full):
    full = load_full()
    assert full.X_train.shape == (60_000, 784) and full.X_test.shape == (10_000, 784)
    assert full.X_train.dtype == np.float64 and full.labels_train.dtype == np.int64
    assert np.bincount(full.labels_train).tolist() == [6_000] * 10
    assert np.bincount(full.labels_test).tolist() == [1_000] * 10
    assert full.class_names == FASHION_MNIST_CLASSES
    assert full.class_names[0] == "T-shirt/top" and full.class_names[9] == "Ankle boot"


def test_pixels_scaled_to_unit_interval(load_full):
    full = load_full()
    for x in (full.X_train, full.X_test):
        assert x.min() == 0.0 and x.max() == 1.0
    sample = full.X_train[::50] * 255
    np.testing.assert_array_equal(sample, np.rint(sample))  # 8-bit grey levels / 255


def test_accepted_by_payload_hash_although_gz_hashes_differ(load_full):
    full = load_full()
    directory = require_fashion_mnist()
    source = full.metadata["source"]
    assert source["directory"] == str(directory)
    used = {f["name"]: f for f in source["files"]}
    for spec in FASHION_MNIST.files:
        entry = used[spec.name]
        assert entry["path"] == str(directory / spec.name)
        assert entry["sha256"] != spec.sha256  # Debian's recompressed .gz
        assert entry["payload_sha256"] == spec.payload_sha256
        assert entry["verified_by"] == "payload_sha256"


def test_binary_subset_normalized(tmp_path):
    directory = require_fashion_mnist()
    ds = load("fashion_mnist", data_dir=tmp_path, system_dirs=(directory,), download=False,
              classes=("Sneaker", "Ankle boot"),
              n_train=200, n_test=100, seed=1, target="pm1")
    assert ds.X_train.shape == (200, 784) and ds.y_train.shape == (200,)
    assert np.bincount(ds.labels_train).tolist() == [100, 100]
    np.testing.assert_allclose(np.linalg.norm(ds.X_train, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(ds.y_train, np.where(ds.labels_train == 1, 1.0, -1.0))


def test_width_sweep_runs_end_to_end_on_fashion_mnist(tmp_path):
    """Issue 9: a small width sweep on the real images (T-shirt/top vs Shirt)."""
    from kernelattn.experiments.sweeps import run_sweep

    directory = require_fashion_mnist()
    spec = {
        "name": "fashion_tiny_sweep", "kind": "kernel",
        "datasets": [{"name": "fashion_mnist", "classes": ["T-shirt/top", "Shirt"], "n_train": 60, "n_test": 20,
                      "data_dir": str(tmp_path / "empty"), "system_dirs": [str(directory)], "download": False}],
        "models": [{"name": "relu"}, {"name": "mlp-attn"}],
        "widths": [16, 256], "seeds": 1, "dtype": "float32", "kernel": {"width_chunk": 64},
    }
    results = run_sweep(spec, tmp_path, progress=False)
    assert results.n_missing == 0 and len(results.cells) == 4
    assert results.cells["rel_fro"].between(0, 10).all()


def test_malleability_runs_end_to_end_on_fashion_mnist(tmp_path):
    """Issue 9: a malleability measurement on the real images."""
    import kernelattn as ka

    directory = require_fashion_mnist()
    data = ka.data.load("fashion_mnist", data_dir=tmp_path, system_dirs=(directory,), download=False,
                        classes=["T-shirt/top", "Shirt"], n_train=60, n_test=20, normalize=False, target="labels")
    report = ka.malleability(data, model="mlp-attn", width=64, attack="fgsm", epsilon=0.1,
                             train_config={"epochs": 5})
    assert report.I.shape == report.I_prime.shape == (20, 60)
    assert 0.0 <= report.flip_rate <= 1.0
