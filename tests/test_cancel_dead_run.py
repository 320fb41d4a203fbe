"""`workflow cancel` of a run whose process was killed ends the agents of its steps.

With no process running the run (`kill -9` of `workflow run`, the OOM killer), no gateway
holds its command agents any more: the cancel finds each one by the `gateway-run.json` of
its workspace and ends its process group (pid and start time checked first, so that a
reused pid is never signalled), and the step reads `cancelled`, as after a live cancel.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from engine.gateway.agents import RUN_FILE, end_recorded_runs, process_start
from tests.helpers import demo_config, wait_for, write_config

WORKFLOW = [sys.executable, "-c", "from engine.cli import workflow_main; workflow_main()"]

#: Leaves its pid in a directory, ignores SIGTERM and runs (90 s at most).
STUBBORN = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
path = os.path.join(sys.argv[1], str(os.getpid()))
with open(path + ".tmp", "w") as f:
    f.write("")
os.rename(path + ".tmp", path)
deadline = time.monotonic() + 90
while time.monotonic() < deadline:
    time.sleep(0.05)
"""


def _pid(pids: Path) -> int | None:
    names = [p.name for p in pids.iterdir() if p.name.isdigit()]
    return int(names[0]) if names else None


def _run_file(workspaces: Path) -> Path | None:
    found = list(workspaces.glob(f"*/gw-*/{RUN_FILE}")) if workspaces.is_dir() else []
    return found[0] if found else None


def test_cancel_of_a_run_whose_process_was_killed_ends_its_agent(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {
        "kind": "command",
        "argv": [sys.executable, "-c", STUBBORN, str(pids)],
        "timeout": 120,
    }
    config = write_config(tmp_path, raw)
    steps = [{"id": "s", "agent": "webster", "timeout": 100, "task": "Find papers."}]
    wf = tmp_path / "wf" / "slow.yaml"
    wf.parent.mkdir()
    wf.write_text(yaml.safe_dump({"name": "slow", "caller": "manager", "steps": steps}))
    proc = subprocess.Popen(
        [*WORKFLOW, "run", str(wf), "-q", "--config", str(config)],
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    pid, start = 0, None
    try:
        pid = wait_for(lambda: _pid(pids), "the agent's start")
        start = process_start(pid)
        wait_for(lambda: _run_file(tmp_path / "handoffs" / ".workspaces"), RUN_FILE)
        proc.kill()  # no Ctrl-C, no stop: its embedded gateway dies with it
        proc.wait(timeout=30)
        assert start is not None and process_start(pid) == start  # the agent runs on
        (run_dir,) = (tmp_path / "handoffs" / "workflows").iterdir()
        cancelled = subprocess.run(
            [*WORKFLOW, "cancel", run_dir.name, "--json", "--config", str(config)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert cancelled.returncode == 0, cancelled.stderr
        assert json.loads(cancelled.stdout)["cancelled"] is True
        # gone (SIGKILL after the grace: it ignores SIGTERM), not left to its 90 s
        wait_for(lambda: process_start(pid) != start, "the agent's end", timeout=30)
        status = subprocess.run(
            [*WORKFLOW, "status", run_dir.name, "--json", "--config", str(config)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        row = json.loads(status.stdout)["steps"]["s"]
        assert row["status"] == "cancelled", row  # as a live cancel reads, not `skipped`
        assert row["error"] == "the run was cancelled", row
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if start is not None and process_start(pid) == start:
            os.killpg(pid, signal.SIGKILL)


def test_a_recorded_pid_whose_start_time_differs_is_never_signalled(tmp_path: Path) -> None:
    """The pid a `gateway-run.json` names now runs another process (reused): untouched."""
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        start = process_start(other.pid)
        assert start is not None
        workspace = tmp_path / "ws" / "webster" / "gw-0123456789abcdef"
        workspace.mkdir(parents=True)
        record = {"run_id": "wf-x-s-1", "pid": other.pid, "pid_start": str(int(start) - 1)}
        (workspace / RUN_FILE).write_text(json.dumps(record), encoding="utf-8")
        assert end_recorded_runs(tmp_path / "ws", ["wf-x-s-1"], grace=0.1) == []
        assert other.poll() is None and process_start(other.pid) == start
        # the same record with the right start time ends it
        (workspace / RUN_FILE).write_text(
            json.dumps({**record, "pid_start": start}), encoding="utf-8"
        )
        assert end_recorded_runs(tmp_path / "ws", ["wf-x-s-1"], grace=5) == [other.pid]
        assert other.wait(timeout=30) == -signal.SIGTERM
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
