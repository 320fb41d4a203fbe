"""Seed command forms on the command line get the form to write: `workflow NAME`,
`inbox submit TASK MODEL THINKING`, and `--timeout 0` worded as the range it is. Real
console scripts in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

NO_ENV = ("ORCHESTRATOR_CONFIG", "ORCH_SERVER", "ORCH_HANDOFF_KEY")


def _program(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in NO_ENV}
    code = f"from engine.cli import {name}_main; {name}_main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
        cwd=cwd, timeout=120, check=False,
    )  # fmt: skip


def test_workflow_name_where_a_command_goes(tmp_path: Path) -> None:
    res = _program("workflow", "quick-research", "--input", "query=x", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "to run the workflow `quick-research`, write `workflow run quick-research`" in (
        res.stderr
    )
    assert "Traceback" not in res.stderr


def test_inbox_submit_positional_model_and_thinking(tmp_path: Path) -> None:
    res = _program("orchestrate", "inbox", "submit", "task", "cheap", "low", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "--model cheap --thinking low" in res.stderr
    assert "too many arguments" not in res.stderr


def test_timeout_zero_says_the_range(tmp_path: Path) -> None:
    res = _program(
        "orchestrate", "webster", "x", "--caller", "manager", "--timeout", "0", cwd=tmp_path
    )
    assert res.returncode == 2, res.stderr
    assert "`0` is not a number of seconds more than 0 and at most 604800" in res.stderr
