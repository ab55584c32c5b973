#!/usr/bin/env bash
# The GPU check of issue 16, run from the repository root on a GPU machine:
#
#   PYTHONPATH=$PWD OUT=/some/dir bash scripts/gpu_check.sh
#
# 1. benchmarks/gpu.py (versions, accuracy against float64, throughput against a
#    roofline measured in the same run, the exact int8 head NTK against float32 at
#    "highest", reproduce --quick wall time), JSON lines to $OUT/gpu.jsonl,
#    time-boxed to 3.5 minutes (sizes that would not fit are skipped, and said so);
# 2. the main test suite, 8 workers, time-boxed to 5 minutes, to $OUT/pytest.log.
#
# Wheels the machine lacks (platformdirs) come from .whl/ when it is there
# (prepared offline: pip download --no-deps --only-binary=:all: platformdirs -d .whl).
# Exit status: the test suite's (124 when it ran out of time).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
OUT=${OUT:-$PWD/gpu-check}
mkdir -p "$OUT"
export XLA_PYTHON_CLIENT_PREALLOCATE=false

echo "== benchmarks/gpu.py -> $OUT/gpu.jsonl"
rm -f "$OUT/gpu.jsonl"
timeout 210 python3 benchmarks/gpu.py --budget-s 200 --out "$OUT/gpu.jsonl" > "$OUT/gpu.stdout" 2> "$OUT/gpu.stderr"
echo "gpu.py exit status $? ($(wc -l < "$OUT/gpu.jsonl" 2>/dev/null || echo 0) lines)"
tail -n 5 "$OUT/gpu.stderr"

echo "== pytest (main suite) -> $OUT/pytest.log"
timeout 300 python3 -m pytest tests --ignore=tests/oracle -q -n 8 -p no:cacheprovider > "$OUT/pytest.log" 2>&1
status=$?
tail -n 15 "$OUT/pytest.log"
echo "pytest exit status $status"
exit $status
