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


def _guards_of(parent: int) -> list[int]:
    """The guard processes (``.../guard.py``) whose parent is ``parent``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        if ppid == parent and any(a.endswith(b"guard.py") for a in argv):
            found.append(int(entry.name))
    return found


def test_one_guard_serves_two_agents_and_outlives_a_kill_9(tmp_path: Path) -> None:
    """Two agents of one `workflow run`, with hard limits of 2 s and 8 s, share one guard;
    after `kill -9` of the command, it ends each at its own limit, then exits."""
    pids = tmp_path / "pids"
    pids.mkdir()
    raw = demo_config(tmp_path)
    raw["gateway"].pop("detach_on_exit", None)
    for name, limit in (("webster", 2), ("study-builder", 8)):
        raw["gateway"]["agents"][name] = {
            "kind": "command",
            "argv": [sys.executable, "-c", STUBBORN, str(pids / name)],
            "timeout": limit,
        }
    config = tmp_path / "orchestrator.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    steps = [
        {"id": "short", "agent": "webster", "timeout": 60, "task": "Find papers."},
        {"id": "long", "agent": "study-builder", "timeout": 60, "task": "Set a study up."},
    ]
    wf = tmp_path / "two.yaml"
    wf.write_text(yaml.safe_dump({"name": "two", "caller": "manager", "steps": steps}))
    caller = subprocess.Popen(
        [sys.executable, "-c", "from engine.cli import workflow_main; workflow_main()",
         "run", str(wf), "--config", str(config)],
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    agents: dict[int, str | None] = {}
    guards: list[int] = []
    try:
        for name in ("webster", "study-builder"):
            path = pids / name
            pid = int(wait_for(lambda p=path: p.exists() and p.read_text(), f"agent {name}"))
            agents[pid] = process_start(pid)
        guards = _guards_of(caller.pid)
        assert len(guards) == 1, guards  # one guard for both agents
        guard_start = process_start(guards[0])
        caller.kill()  # kill -9: no gateway stop, no watchdog
        assert caller.wait(30) == -signal.SIGKILL
        short, long_ = agents
        wait_for(lambda: process_start(short) != agents[short], "the 2 s agent's end", 45)
        assert process_start(long_) == agents[long_]  # 8 s + margin + grace: still running
        assert process_start(guards[0]) == guard_start  # the guard outlived its gateway
        wait_for(lambda: process_start(long_) != agents[long_], "the 8 s agent's end", 45)
        wait_for(lambda: process_start(guards[0]) != guard_start, "the guard's exit", 30)
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait()
        for pid, start in agents.items():
            if start is not None and process_start(pid) == start:
                os.killpg(pid, signal.SIGKILL)
