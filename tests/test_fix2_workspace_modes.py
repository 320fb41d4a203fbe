"""A command agent's workspace holds the task in full (secret inputs included): its
directories are 0700 and its TASK.txt 0600, as the logs beside it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from click.testing import CliRunner

from engine.cli import orchestrate
from tests.helpers import demo_config, write_config


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_the_task_file_and_workspace_are_private(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, demo_config(tmp_path))
    old = os.umask(0o022)  # the usual umask: files 0644 and directories 0755 by default
    try:
        res = CliRunner().invoke(
            orchestrate,
            ["webster", "Find CTE of Zerodur with api_key=abc123456789", "--caller",
             "manager", "--config", str(cfg), "-q"],
            catch_exceptions=False,
        )
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    root = tmp_path / "handoffs" / ".workspaces"
    (task,) = root.glob("webster/*/TASK.txt")
    assert "Find CTE of Zerodur" in task.read_text()
    assert _mode(task) == 0o600
    assert _mode(task.parent) == 0o700
    assert _mode(task.parent.parent) == 0o700
    assert _mode(root) == 0o700
    for log in task.parent.glob("*.log"):
        assert _mode(log) == 0o600, log.name
