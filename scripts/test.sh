#!/usr/bin/env bash
# The whole test suite, from a fresh clone: creates the two virtualenvs it needs
# (.venv: the newest jax stack; .venv-legacy: jax 0.4.25 + neural-tangents 0.6.5,
# the independent oracle) and runs
#   0. ruff (lint and format check) and mypy on the package (configured in pyproject.toml),
#   1. the main suite on the newest stack,
#   2. the main suite again on jax 0.4.25 (kernelattn must run on both),
#   3. the neural-tangents oracle suite.
# Any failure, or a pytest run that collects no test (exit 5), fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/pip install -q -e '.[test,mnist5k]'  # mnist5k: real MNIST-5k for the offline real-data tests
bash scripts/legacy_env.sh .venv-legacy

section() { printf '\n=== %s\n' "$*"; }
section "lint: ruff $(.venv/bin/ruff --version | cut -d' ' -f2), mypy $(.venv/bin/mypy --version | cut -d' ' -f2)"
.venv/bin/ruff check kernelattn
.venv/bin/ruff format --check kernelattn
.venv/bin/mypy kernelattn
section "main suite, newest jax ($(.venv/bin/python -c 'import jax; print(jax.__version__)'))"
.venv/bin/python -m pytest tests --ignore=tests/oracle -q -p no:cacheprovider "$@"
section "main suite, legacy jax ($(.venv-legacy/bin/python -c 'import jax; print(jax.__version__)'))"
.venv-legacy/bin/python -m pytest tests --ignore=tests/oracle -q -p no:cacheprovider "$@"
section "neural-tangents oracle suite"
.venv-legacy/bin/python -m pytest tests/oracle -q -p no:cacheprovider "$@"
