#!/usr/bin/env bash
# The whole test suite (installs what it needs into ./.venv first).
# Extra arguments go to pytest, e.g. scripts/test.sh -k delegate
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh test
# pytest exits 5 when it collects no test: that fails here too (set -e), never silently.
exec python -m pytest "$@"
