#!/usr/bin/env bash
# Build the legacy oracle environment (neural-tangents 0.6.5 on jax 0.4.25).
#
# Usage: bash scripts/legacy_env.sh [DIR]      (default DIR: <repo>/.venv-legacy)
#
# 1. creates a virtual environment in DIR with python3.11 (else python3;
#    override with PYTHON=...), which must be CPython 3.9-3.12;
# 2. installs the exact pins of requirements/legacy.txt;
# 3. installs its `#nodeps` lines (neural-tangents, frozendict, mlxtend) with --no-deps;
# 4. installs kernelattn itself: pip install --no-deps --no-build-isolation -e .
# 5. checks that kernelattn's neural-tangents backend imports.
#
# Idempotent: DIR/.kernelattn-legacy.sha256 holds the hash of the pins (and
# the interpreter version) after a successful build; when it matches, steps
# 2-3 are skipped and only kernelattn is reinstalled (a few seconds). When the
# pins change, a venv this script built is cleared and rebuilt. pip's cache is
# used as usual (PIP_CACHE_DIR is respected).
#
# Then: .venv-legacy/bin/python -m pytest tests/oracle
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-$repo/.venv-legacy}"
reqs="$repo/requirements/legacy.txt"
marker_name=".kernelattn-legacy.sha256"

log() { printf '[legacy_env] %s\n' "$*" >&2; }
die() { printf '[legacy_env] error: %s\n' "$*" >&2; exit 1; }

[[ -f "$reqs" ]] || die "missing $reqs"

pick_python() {
  if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"; return; fi
  local candidate
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys' >/dev/null 2>&1; then
      echo "$candidate"; return
    fi
  done
  die "no python3.11 or python3 on PATH (set PYTHON=/path/to/python3.11)"
}

python_bin="$(pick_python)"
py_version="$("$python_bin" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
case "$py_version" in
  3.9|3.10|3.11|3.12) ;;
  *) die "$python_bin is Python $py_version; jaxlib 0.4.25 has wheels for 3.9-3.12 only (set PYTHON=python3.11)" ;;
esac

pins_hash="$( { cat "$reqs"; echo "python=$py_version"; } | sha256sum | cut -d' ' -f1)"
venv_python="$dir/bin/python"
marker="$dir/$marker_name"

if [[ -x "$venv_python" ]]; then
  if [[ -f "$marker" && "$(cat "$marker")" == "$pins_hash" ]]; then
    log "pins unchanged in $dir: reinstalling kernelattn only"
    "$venv_python" -m pip install --quiet --no-deps --no-build-isolation -e "$repo"
    "$venv_python" -c 'import kernelattn' || die "kernelattn does not import in $dir"
    log "ready: $venv_python"
    exit 0
  fi
  if [[ -f "$marker" ]]; then
    log "pins changed: clearing the environment this script built in $dir"
    "$python_bin" -m venv --clear "$dir"
  else
    log "installing the pins into the existing environment $dir"
  fi
elif [[ -e "$dir" && -n "$(ls -A "$dir" 2>/dev/null)" ]]; then
  die "$dir exists, is not empty and is not a virtual environment; choose another DIR"
else
  log "creating $dir with $python_bin (Python $py_version)"
  "$python_bin" -m venv "$dir"
fi

rm -f "$marker"
log "installing the pins of requirements/legacy.txt"
"$venv_python" -m pip install --quiet -r "$reqs"

mapfile -t nodeps < <(sed -n 's/^#nodeps[[:space:]]\{1,\}\([^[:space:]]\{1,\}\).*/\1/p' "$reqs")
[[ ${#nodeps[@]} -gt 0 ]] || die "no '#nodeps' lines in $reqs"
log "installing with --no-deps: ${nodeps[*]}"
"$venv_python" -m pip install --quiet --no-deps "${nodeps[@]}"

log "installing kernelattn (editable, no deps)"
"$venv_python" -m pip install --quiet --no-deps --no-build-isolation -e "$repo"

"$venv_python" - <<'PY' || die "the neural-tangents backend does not import (see above)"
import jax
import kernelattn
from kernelattn.kernels import nt_backend
nt = nt_backend._nt()
print(f"[legacy_env] jax {jax.__version__}, neural-tangents {nt.__version__}, kernelattn {kernelattn.__version__}")
PY

echo "$pins_hash" > "$marker.tmp" && mv "$marker.tmp" "$marker"
log "ready: $venv_python   (run: $venv_python -m pytest tests/oracle)"
