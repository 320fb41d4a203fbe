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
  echo "installing the package and its dependencies into .venv (log: .venv/install.log) ..." >&2
  _target="$_root"
  [ -n "$_extras" ] && _target="$_root[$_extras]"
  if ! "$_venv/bin/python" -m pip install --disable-pip-version-check -e "$_target" \
       >"$_venv/install.log" 2>&1; then
    tail -n 30 "$_venv/install.log" >&2
    echo "error: installing into .venv failed; the whole log is .venv/install.log" >&2
    return 1 2>/dev/null || exit 1
  fi
  touch "$_stamp"
fi
export PATH="$_venv/bin:$PATH"
