"""A command agent's hard limit holds even when the command that started it dies at once.

The embedded gateway of a one-shot ``orchestrate`` enforces the limit itself and, when it
stops, leaves the agent to a watchdog. ``kill -9`` of ``orchestrate`` does neither: the
agent's guard (``engine.gateway.guard``), started beside it, ends it instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from engine.gateway.agents import process_start
from tests.helpers import demo_config, wait_for

#: Writes its pid, ignores SIGTERM and runs (90 s at most, so a failing test leaves nothing).
STUBBORN = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
deadline = time.monotonic() + 90
while time.monotonic() < deadline:
    time.sleep(0.05)
"""


def test_a_killed_commands_agent_still_ends_at_its_hard_limit(tmp_path: Path) -> None:
    pid_file = tmp_path / "agent.pid"
    raw = demo_config(tmp_path)
    raw["gateway"].pop("detach_on_exit", None)  # the shipped default: detach
    raw["gateway"]["agents"]["webster"] = {
        "kind": "command",
        "argv": [sys.executable, "-c", STUBBORN, str(pid_file)],
        "timeout": 2,  # its hard limit
    }
    config = tmp_path / "orchestrator.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    caller = subprocess.Popen(
        [sys.executable, "-c", "from engine.cli import orchestrate_main; orchestrate_main()",
         "webster", "never done", "--caller", "manager", "--timeout", "60",
         "--config", str(config)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    agent = 0
    try:
        agent = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), "the agent"))
        start = process_start(agent)
        assert start is not None
        caller.kill()  # kill -9: no gateway stop, no watchdog
        assert caller.wait(30) == -signal.SIGKILL
        # 2 s limit, then the guard's margin and grace (about 7 s): well within the bound
        wait_for(lambda: process_start(agent) != start, "the agent's end", timeout=45)
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait()
        if agent and process_start(agent) is not None:
            os.killpg(agent, signal.SIGKILL)
