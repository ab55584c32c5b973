"""benchmarks/gpu.py: its JSON lines on tiny sizes (--smoke, on the CPU), and how it skips what does not fit."""

import importlib.util
import json
import time
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RATES = {"float32_highest": 50.0, "float32_fast": 400.0, "bfloat16_f32acc": 800.0, "int8_i32acc": 1600.0}


def test_sizes_that_do_not_fit_the_time_left_are_skipped_and_said_so():
    gpu = _load()
    emit = gpu.Emitter(None)
    past = time.perf_counter() - 1
    gpu.end_to_end(emit, 10_000, 784, 2**20, RATES, past)
    gpu.throughput(emit, gpu.FULL, RATES, past)
    assert {line["kind"] for line in emit.lines} == {"skipped"}
    assert len(emit.lines) == 1 + len(gpu.GRID_PATHS) * 9
    assert all("exceeds the time left" in line["reason"] or "does not fit" in line["reason"] for line in emit.lines)
    # The exact path is predicted far cheaper than the float one at HIGHEST (S Sᵀ at the int8 rate).
    assert gpu._predicted("streaming_exact", 10_000, 784, 2**20, RATES) < 0.2 * gpu._predicted(
        "streaming_float_highest", 10_000, 784, 2**20, RATES)


@pytest.mark.slow
def test_smoke_run_prints_every_kind_of_line(tmp_path):
    gpu = _load()
    out = tmp_path / "gpu.jsonl"
    lines = gpu.main(["--smoke", "--skip-reproduce", "--out", str(out)])
    assert [json.loads(text) for text in out.read_text().splitlines()] == json.loads(json.dumps(lines))
    kinds = {line["kind"] for line in lines}
    assert {"versions", "roofline", "accuracy", "end_to_end", "end_to_end_ratio", "throughput", "done"} <= kinds
    accuracy = {line["what"]: line for line in lines if line["kind"] == "accuracy"}
    assert set(accuracy) == {"head_ntk_float", "head_ntk_exact", "analytic_ntk", "attention"}
    for line in accuracy.values():
        assert line["highest_within_1e-6"] and line["rel_fro"]["float64_highest"] < 1e-12
    ratio = next(line for line in lines if line["kind"] == "end_to_end_ratio")
    assert ratio["exact_method"] == ("popcount" if jax.default_backend() == "cpu" else "int8")
    assert ratio["speedup"] > 0
