"""`workflow cancel` ends the command agents of the steps in flight.

The embedded gateway of a one-shot `workflow run` leaves agents still working when it
exits to watchdogs (`gateway.detach_on_exit`), so that a late answer is merged. A run
cancelled on purpose wants no late answer: its agents' process groups get SIGTERM, then
SIGKILL, before the command exits, even agents that ignore SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from engine.gateway.agents import process_start
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



def _written(pids: Path, n: int) -> list[int] | None:
    """The pids the agents wrote (a file named by its pid, renamed into place: a name with
    a suffix is one still being written), once there are ``n`` of them."""
    names = [p.name for p in pids.iterdir() if p.name.isdigit()] if pids.is_dir() else []
    return [int(name) for name in names] if len(names) == n else None

def test_workflow_cancel_ends_the_agents_of_steps_in_flight(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    raw = demo_config(tmp_path)
    raw["gateway"].pop("detach_on_exit", None)  # the shipped default: detach on exit
    raw["gateway"]["agents"]["webster"] = {  # no timeout: only the default hard limit
        "kind": "command",
        "argv": [sys.executable, "-c", STUBBORN, str(pids)],
    }
    config = write_config(tmp_path, raw)
    steps = [
        {"id": "first", "agent": "webster", "timeout": 300, "task": "Find papers."},
        {"id": "second", "agent": "webster", "timeout": 300, "task": "Find more papers."},
    ]
    wf = tmp_path / "wf" / "two.yaml"
    wf.parent.mkdir()
    wf.write_text(yaml.safe_dump({"name": "two", "caller": "manager", "steps": steps}))
    proc = subprocess.Popen(
        [*WORKFLOW, "run", str(wf), "--json", "--config", str(config)],
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    agents: dict[int, str | None] = {}
    try:
        found = wait_for(lambda: _written(pids, 2), "both agents")
        agents = {pid: process_start(pid) for pid in found}
        (run_dir,) = (tmp_path / "handoffs" / "workflows").iterdir()
        cancelled = subprocess.run(
            [*WORKFLOW, "cancel", run_dir.name, "--config", str(config)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert cancelled.returncode == 0, cancelled.stderr
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, err
        assert '"cancelled"' in out
        # gone (SIGKILL after the grace), not left running to their hard limit of 1,200 s
        wait_for(
            lambda: all(process_start(pid) != start for pid, start in agents.items()),
            "the agents' end",
            timeout=30,
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for pid, start in agents.items():
            if start is not None and process_start(pid) == start:
                os.killpg(pid, signal.SIGKILL)
