"""``orchestrate tree`` judges a pending delegation as ``orchestrate show`` does: one whose
waiting process is gone (``kill -9``) is ``abandoned``, not ``in flight``.

Real parts: a real ``orchestrate`` process with its embedded gateway, a real command
agent (in its own session, so it outlives the killed command), real files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from engine.cli import orchestrate
from tests.helpers import demo_config, wait_for, write_config


def _agent(go: Path) -> list[str]:
    """Says it started (``go`` + ``.started``), then waits for ``go`` (60 s at most)."""
    script = (
        "import os, time\n"
        f"open({str(go) + '.started'!r}, 'w').close()\n"
        "deadline = time.monotonic() + 60\n"
        f"while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
    )
    return [sys.executable, "-c", script]


def test_tree_shows_a_delegation_whose_caller_died_as_abandoned(tmp_path: Path) -> None:
    go = tmp_path / "go"
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {"kind": "command", "argv": _agent(go), "timeout": 90}
    cfg = str(write_config(tmp_path, raw))
    pending_dir = tmp_path / "handoffs" / ".pending"
    bin_dir = os.path.dirname(sys.executable)
    proc = subprocess.Popen(
        [f"{bin_dir}/orchestrate", "webster", "task", "--caller", "manager", "--timeout",
         "60", "--config", cfg],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        pending = wait_for(lambda: list(pending_dir.glob("orch-*.json")), "the pending envelope")
        run_id = pending[0].stem
        wait_for(Path(f"{go}.started").exists, "the agent to start")
        tree = CliRunner().invoke(orchestrate, ["tree", run_id, "--config", cfg])
        assert tree.exit_code == 0, tree.output
        assert tree.output.strip() == f"{run_id}  manager -> webster  in flight"  # alive
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

        shown = CliRunner().invoke(orchestrate, ["show", run_id, "--config", cfg])
        assert shown.output.startswith(f"abandoned: webster for manager, {run_id}"), shown.output
        tree = CliRunner().invoke(orchestrate, ["tree", run_id, "--config", cfg])
        assert tree.exit_code == 0, tree.output
        assert tree.output.strip() == f"{run_id}  manager -> webster  abandoned"
        as_json = CliRunner().invoke(orchestrate, ["tree", run_id, "--json", "--config", cfg])
        assert json.loads(as_json.output)["outcome"] == "abandoned"
    finally:
        go.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
