"""A delegation whose ``orchestrate`` was killed (``kill -9``) mid-wait is shown as
abandoned once its owner is gone and its deadline passed, with what to do; the agent's
handoff that still comes is merged, late, as the protocol says.

Real parts: a real ``orchestrate`` process with its embedded gateway, a real command
agent (in its own session, so it outlives the killed command), real files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from engine.cli import orchestrate
from engine.files import parse_iso
from engine.record import read_json
from tests.helpers import demo_config, wait_for, write_config


def _agent(go: Path) -> list[str]:
    """Says it started (``go`` + ``.started``), waits for ``go`` (60 s at most), then
    writes its own handoff."""
    script = (
        "import os, subprocess, time\n"
        f"open({str(go) + '.started'!r}, 'w').close()\n"
        "deadline = time.monotonic() + 60\n"
        f"while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "subprocess.run(['orchestrate', 'handoff', 'write', '--dir',"
        " os.path.dirname(os.environ['ORCH_HANDOFF_PATH']), '--run-id',"
        " os.environ['ORCH_RUN_ID'], '--agent', os.environ['ORCH_AGENT'], '--status',"
        " 'complete', '--confidence', 'high', '--result', 'late but mine'], check=True)\n"
    )
    return [sys.executable, "-c", script]


def test_killed_caller_shows_abandoned_then_merges_the_late_handoff(tmp_path: Path) -> None:
    go = tmp_path / "go"
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {"kind": "command", "argv": _agent(go), "timeout": 90}
    cfg = write_config(tmp_path, raw)
    pending_dir = tmp_path / "handoffs" / ".pending"
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    proc = subprocess.Popen(
        [
            f"{bin_dir}/orchestrate",
            "webster",
            "task",
            "--caller",
            "manager",
            "--timeout",
            "1",
            "--config",
            str(cfg),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        pending = wait_for(
            lambda: [p for p in pending_dir.glob("orch-*.json")], "the pending envelope"
        )[0]
        run_id = pending.stem
        wait_for(Path(f"{go}.started").exists, "the agent to start")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        envelope = read_json(pending)
        deadline = parse_iso(envelope["deadline_at"]).timestamp()
        wait_for(lambda: time.time() > deadline + 0.05, "the deadline to pass")

        shown = CliRunner().invoke(orchestrate, ["show", run_id, "--config", str(cfg)])
        assert shown.exit_code == 0, shown.output
        assert "no handoff yet" not in shown.output
        assert shown.output.startswith(f"abandoned: webster for manager, {run_id}"), shown.output
        assert f"pid {envelope['pid']}" in shown.output
        assert "deadline" in shown.output and "passed" in shown.output
        assert f"orchestrate show {run_id}" in shown.output  # how a late handoff is merged
        assert "orchestrate webster" in shown.output  # what to do: delegate it again

        go.touch()  # the agent answers, late
        inbox = tmp_path / "handoffs" / "inbox" / f"{run_id}.json"
        wait_for(inbox.exists, "the agent's late handoff")
        shown = CliRunner().invoke(orchestrate, ["show", run_id, "--json", "--config", str(cfg)])
        record = json.loads(shown.output)
        assert record["result"] == "late but mine"
        assert record["envelope"]["late"] is True
    finally:
        go.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
