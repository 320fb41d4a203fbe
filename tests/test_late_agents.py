"""A one-shot command's embedded gateway leaves a still-working agent to a watchdog.

The engine promises that an answer arriving after the caller gave up is merged, marked
late. A one-shot ``orchestrate`` exits at its timeout, and its embedded gateway with it;
the agent must survive that, and its answer must still be recorded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import demo_config


def _config(tmp_path: Path, **gateway: Any) -> Path:
    raw = demo_config(tmp_path)
    raw["gateway"].pop("detach_on_exit", None)  # the shipped default (true) unless given
    raw["gateway"].update(gateway)
    path = tmp_path / "orchestrator.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def _orchestrate(config: Path, task: str, timeout: str) -> dict[str, Any]:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from engine.cli import orchestrate_main; orchestrate_main()",
            "webster",
            task,
            "--caller",
            "manager",
            "--timeout",
            timeout,
            "--json",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr
    record: dict[str, Any] = json.loads(proc.stdout)
    return record


def _record_when(path: Path, done: Any, bound: float = 90.0) -> dict[str, Any]:
    """The record at ``path`` once ``done(record)`` holds (bounded; returns early)."""
    end = time.monotonic() + bound
    last: Any = None
    while time.monotonic() < end:
        try:
            last = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            last = None
        if isinstance(last, dict) and done(last):
            return last
        time.sleep(0.1)
    raise AssertionError(f"the record never reached the expected state: {last}")


def test_an_agent_outliving_a_one_shot_command_is_recorded_late(tmp_path: Path) -> None:
    config = _config(tmp_path)
    first = _orchestrate(config, "DEMO_SLEEP=4 find the CTE of Zerodur", "1")
    run_id = first["runId"]
    assert first["envelope"]["outcome"] == "timeout"
    record = _record_when(
        tmp_path / "handoffs" / f"{run_id}.json", lambda r: r.get("status") == "complete"
    )
    assert record["envelope"]["late"] is True
    assert "Zerodur" in record["result"]
    assert record["envelope"].get("key_verified") is True


def test_a_detached_agent_is_killed_at_its_hard_limit_and_said_so(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["gateway"].pop("detach_on_exit", None)  # the shipped default: detach
    raw["gateway"]["agents"]["webster"]["kill_after"] = 3
    config = tmp_path / "orchestrator.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    first = _orchestrate(config, "DEMO_SLEEP=600 never done", "1")
    record = _record_when(
        tmp_path / "handoffs" / f"{first['runId']}.json", lambda r: r.get("status") == "failed"
    )
    assert "hard limit of 3" in record["result"]
    assert record["notes"].startswith("written by the local gateway")
    assert record["envelope"]["late"] is True


def test_detach_on_exit_false_ends_the_agent_with_its_command(tmp_path: Path) -> None:
    config = _config(tmp_path, detach_on_exit=False)
    first = _orchestrate(config, "DEMO_SLEEP=600 never done", "1")
    workspaces = tmp_path / "handoffs" / ".workspaces" / "webster"
    # The agent was killed with its gateway: its workspace has the gateway's logs, no
    # watchdog's, and the timeout record stands (the gateway adds nothing over it).
    (workspace,) = list(workspaces.iterdir())
    assert (workspace / "stdout.log").exists()
    assert not (workspace / "stdout.late.log").exists()
    record = json.loads((tmp_path / "handoffs" / f"{first['runId']}.json").read_text())
    assert record["envelope"]["outcome"] == "timeout"
