"""A one-shot command's embedded gateway leaves a still-working agent to a watchdog.

The engine promises that an answer arriving after the caller gave up is merged, marked
late. A one-shot ``orchestrate`` exits at its timeout, and its embedded gateway with it;
the agent must survive that, and its answer must still be recorded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.config import load_config
from tests.helpers import demo_config, gated_agent, write_config


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
        tmp_path / "handoffs" / f"{first['runId']}.json",
        lambda r: r.get("status") == "failed" or r["envelope"].get("also_received"),
    )
    # The stand-in says so, and is kept beside the engine's `timeout`, which stands.
    assert record["envelope"]["outcome"] == "timeout"
    (kept,) = record["envelope"]["also_received"]
    stand_in = json.loads(Path(kept["file"]).read_text())
    assert "hard limit of 3" in stand_in["result"]
    assert stand_in["notes"].startswith("written by the local gateway")


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


@pytest.mark.parametrize("fallback", [False, True], ids=["no-fallback", "fallback"])
def test_the_watchdog_writes_a_stand_in_only_when_the_agent_allows_it(
    tmp_path: Path, fallback: bool
) -> None:
    """`fallback_handoff: false`: the engine repairs or ends `unusable`; no stand-in
    handoff appears, not even after the agent was left to a watchdog."""
    from engine.gateway import agents

    go = tmp_path / "go"
    raw = demo_config(tmp_path)
    agent = gated_agent(go)
    said = tmp_path / "said"
    say = ("import pathlib, sys; print('working on it', file=sys.stderr, flush=True); "
           f"pathlib.Path({str(said)!r}).touch()\n")  # fmt: skip
    agent["argv"] = [agent["argv"][0], "-c", say + agent["argv"][2]]
    raw["gateway"]["agents"]["webster"] = {**agent, "fallback_handoff": fallback}
    cfg = load_config(write_config(tmp_path, raw))
    assert cfg.gateway is not None
    spec = cfg.gateway.agents["webster"]
    run_id = "orch-20261130T000000-0000cafe"
    drop = cfg.handoffs_dir / "inbox" / f"{run_id}.json"
    message = (f"Find CTE\n\n--- HANDOFF (required) ---\nrun_id: {run_id}\nagent: webster\n"
               f"handoff_path: {drop}\n")
    runner = agents.CommandRunner(tmp_path / "workspaces")
    task = agents.task_from_message("gw-1", "webster", message, 60)
    supervised = threading.Thread(target=runner.run, args=(spec, task), daemon=True)
    supervised.start()
    end = time.monotonic() + 30
    while not runner.running_pids() and time.monotonic() < end:  # the agent has started
        supervised.join(0.01)
    while not said.exists() and time.monotonic() < end:  # ... and has printed its line
        supervised.join(0.01)
    assert runner.detach_all()  # the gateway stops: the agent is left to a watchdog
    watchdog = agents._DETACHED[-1]
    supervised.join(30)
    go.touch()  # the agent now exits without a handoff
    assert watchdog.wait(60) == 0
    workspace = tmp_path / "workspaces" / "webster" / "gw-1"
    assert (workspace / "stdout.late.log").exists()
    # what it printed before the gateway stopped is kept too (read by the gateway, or
    # left in the pipe for the watchdog), and is in the stand-in
    logs = [workspace / n for n in ("stderr.early.log", "stderr.late.log")]
    kept = "".join(p.read_text() for p in logs if p.exists())
    assert kept == "working on it\n"
    if fallback:
        stand_in = json.loads(drop.read_text())
        assert stand_in["status"] == "failed" and "after it stopped" in stand_in["notes"]
    else:
        assert not drop.exists()
        assert not list(cfg.handoffs_dir.glob("orch-*.json"))  # and no record from it
