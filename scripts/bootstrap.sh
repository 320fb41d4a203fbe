#!/usr/bin/env bash
# Create ./.venv and install the package into it (editable) with the given extras.
# Re-runs are cheap: nothing is reinstalled while pyproject.toml is unchanged.
# Usage: source scripts/bootstrap.sh [extras]      e.g. "test"
#        bash scripts/bootstrap.sh [extras]        (installs only; PATH is yours to set)
# Sourced, it leaves your shell's options as they were (no `set -e` that would close
# your terminal at the next failing command) and returns 1 on failure.
_orch_bootstrap() {
  local root extras venv sum stamp target
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || return 1
  extras="${1:-}"
  venv="$root/.venv"
  sum="$(sha256sum "$root/pyproject.toml")" || return 1
  stamp="$venv/.installed-${sum:0:16}-${extras:-base}"
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" || { echo "error: could not create $venv" >&2; return 1; }
  fi
  if [ ! -f "$stamp" ]; then
    echo "installing the package and its dependencies into .venv (log: .venv/install.log) ..." >&2
    target="$root"
    if [ -n "$extras" ]; then target="$root[$extras]"; fi
    if ! "$venv/bin/python" -m pip install --disable-pip-version-check -e "$target" \
         >"$venv/install.log" 2>&1; then
      tail -n 30 "$venv/install.log" >&2
      echo "error: installing into .venv failed; the whole log is .venv/install.log" >&2
      return 1
    fi
    touch "$stamp" || return 1
  fi
  export PATH="$venv/bin:$PATH"
}
if [ "${BASH_SOURCE[0]}" = "$0" ]; then  # run as a script
  set -euo pipefail
  _orch_bootstrap "$@" || exit 1
else  # sourced: no option of the caller's shell is changed
  _orch_bootstrap "$@"
  _orch_rc=$?
  unset -f _orch_bootstrap
  return "$_orch_rc"
fi
