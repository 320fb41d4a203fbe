#!/usr/bin/env bash
# Create ./.venv and install the package into it (editable) with the given extras.
# Re-runs are cheap: nothing is reinstalled while pyproject.toml is unchanged.
# Usage: source scripts/bootstrap.sh [extras]      e.g. "test"
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_extras="${1:-}"
_venv="$_root/.venv"
_stamp="$_venv/.installed-$(sha256sum "$_root/pyproject.toml" | cut -c1-16)-${_extras:-base}"
if [ ! -x "$_venv/bin/python" ]; then
  python3 -m venv "$_venv"
fi
if [ ! -f "$_stamp" ]; then
  echo "installing the package and its dependencies into .venv ..." >&2
  "$_venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
  if [ -n "$_extras" ]; then
    "$_venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$_root[$_extras]"
  else
    "$_venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$_root"
  fi
  touch "$_stamp"
fi
export PATH="$_venv/bin:$PATH"
