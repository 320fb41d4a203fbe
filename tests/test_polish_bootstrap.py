"""`source scripts/bootstrap.sh` leaves the caller's shell options alone (a `set -e` left
on would close an interactive terminal at its next failing command) and fails properly
both sourced and run as a script. Each case uses a copy of the script beside a prepared
``.venv`` (the stamp makes it skip the install), so nothing is installed."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "scripts" / "bootstrap.sh"


def _checkout(tmp_path: Path, *, installed: bool) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts" / "bootstrap.sh")
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text("[project]\nname = 'x'\n", encoding="utf-8")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"  # a python whose every install fails
    python.write_text("#!/bin/sh\necho 'pip: no such package' >&2\nexit 1\n", encoding="utf-8")
    python.chmod(0o755)
    if installed:
        digest = hashlib.sha256(pyproject.read_bytes()).hexdigest()[:16]
        (tmp_path / ".venv" / f".installed-{digest}-base").touch()
    return tmp_path / "scripts" / "bootstrap.sh"


def _bash(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)


def test_sourcing_keeps_the_callers_shell_options(tmp_path: Path) -> None:
    script = _checkout(tmp_path, installed=True)
    got = _bash(
        "before=\"$(set +o; shopt -p)\"\n"
        f"source {script}\n"
        "echo rc=$?\n"
        "[ \"$before\" = \"$(set +o; shopt -p)\" ] && echo same-options\n"
        "false\n"
        "echo still-here\n"
        'case ":$PATH:" in *":' + str(tmp_path / ".venv" / "bin") + ':"*) echo on-path;; esac\n'
    )
    assert got.stdout.split() == ["rc=0", "same-options", "still-here", "on-path"], got


def test_sourcing_under_set_e_keeps_it_on(tmp_path: Path) -> None:
    script = _checkout(tmp_path, installed=True)
    got = _bash(f"set -e\nsource {script}\n[[ $- == *e* ]] && echo still-e\n")
    assert got.stdout.split() == ["still-e"], got


def test_a_failed_install_returns_1_when_sourced(tmp_path: Path) -> None:
    script = _checkout(tmp_path, installed=False)
    got = _bash(f"source {script}\necho rc=$?\nfalse\necho still-here\n")
    assert got.stdout.split() == ["rc=1", "still-here"], got
    assert "error: installing into .venv failed" in got.stderr


def test_a_failed_install_exits_1_when_run(tmp_path: Path) -> None:
    script = _checkout(tmp_path, installed=False)
    got = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)
    assert got.returncode == 1
    assert "pip: no such package" in got.stderr
    assert "error: installing into .venv failed" in got.stderr
    (tmp_path / "ok").mkdir()
    ok = _checkout(tmp_path / "ok", installed=True)
    assert subprocess.run(["bash", str(ok)], timeout=60).returncode == 0
