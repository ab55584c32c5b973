#!/usr/bin/env bash
# Build the documentation site exactly as CI does: strict, so that any warning
# (a broken link, a docstring mkdocstrings cannot resolve, a public name missing
# from the API reference, a spec key the spec-format generator cannot read from
# the code) fails the build.
#
# Creates (once) and uses the virtualenv .venv-docs with the package and its
# `docs` extra (pyproject.toml), then runs `mkdocs build --strict` into a
# temporary directory that is removed afterwards. Set SITE_DIR=path to keep the
# built site there instead (then open path/index.html), or run
# `.venv-docs/bin/mkdocs serve` for a live preview.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x .venv-docs/bin/python ] || "$python" -m venv .venv-docs
.venv-docs/bin/pip install -q -e '.[docs]'

if [ -n "${SITE_DIR:-}" ]; then
  site=$SITE_DIR
else
  site=$(mktemp -d)
  trap 'rm -rf "$site"' EXIT
fi
# The CLI page runs `kernelattn ... --help`: a fixed terminal width keeps it reproducible.
# (The two *MKDOCS_2_WARNING variables silence banners that plugins print about MkDocs 2.)
COLUMNS=100 NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true \
  .venv-docs/bin/mkdocs build --strict --clean -d "$site" "$@"
echo "docs: built into $site${SITE_DIR:+ (kept)}"
