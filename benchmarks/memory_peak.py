"""The measurement behind the memory estimators' calibration (``kernelattn.kernels.memory.estimators``).

Run in a fresh process as ``python benchmarks/memory_peak.py '<json list of sizes>'``
(keys: n1, [n2], d, width, chunk, [out_dim], [trace], [readout], dtype);
prints a JSON list with, per size, the increase of the peak resident set
size over one ``streaming_head_ntk`` call. The peak is the kernel's
high-water mark (``VmHWM``, what ``ru_maxrss`` reports), reset between sizes
through ``/proc/self/clear_refs``; where that is refused, only the first size
is measured (``"reset": false``) and ``ru_maxrss`` is used.
``tests/test_memory.py`` re-runs it against the estimates.
"""

import gc
import json
import re
import resource
import sys

sizes = json.loads(sys.argv[1])
import jax  # noqa: E402 - 64-bit mode must be set before anything else uses JAX

if any(s["dtype"] == "float64" for s in sizes):
    jax.config.update("jax_enable_x64", True)
import numpy as np  # noqa: E402

from kernelattn.kernels.empirical import streaming_head_ntk  # noqa: E402
from kernelattn.models import HeadConfig  # noqa: E402


def status(field):
    try:
        text = open("/proc/self/status").read()
        return int(re.search(field + r":\s+(\d+) kB", text).group(1)) * 1024
    except (OSError, AttributeError):
        return None


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return status("VmHWM") is not None
    except OSError:
        return False


def run(s):
    rng = np.random.default_rng(0)
    x1 = rng.normal(size=(s["n1"], s["d"])).astype(s["dtype"])
    x2 = rng.normal(size=(s["n2"], s["d"])).astype(s["dtype"]) if s.get("n2") else None
    head = HeadConfig(s["width"], s.get("out_dim", 1), train_readout=s.get("readout", False))
    k = streaming_head_ntk(jax.random.PRNGKey(0), head, x1, x2, trace_output=s.get("trace", True),
                           width_chunk=s["chunk"], dtype=s["dtype"])
    k.block_until_ready()


for s in sizes:  # warm-up: load and initialize JAX, compile the small programs
    run({**s, "n1": 4, "n2": 3 if s.get("n2") else 0, "d": 5, "width": 8, "chunk": 8})
results = []
for i, s in enumerate(sizes):
    gc.collect()
    reset = reset_peak()
    if not reset and i > 0:
        results.append({"size": s, "reset": False, "delta": None})
        continue
    before = status("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    run(s)
    peak = status("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    results.append({"size": s, "reset": reset, "delta": peak - before})
print(json.dumps(results))
