"""A delegation the engine ended (``lost``) stays ended: its held POST is abandoned
quietly, and the gateway's stand-in handoff never replaces the engine's outcome."""

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
from engine.delegate import DelegationRequest, Outcome, open_delegator
from engine.reporter import Reporter
from tests.helpers import demo_config, gated_agent, write_config


def _lost_run(tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    go = tmp_path / "go"
    raw = demo_config(tmp_path)
    raw["gateway"].pop("detach_on_exit", None)  # the shipped default: detach
    raw["gateway"]["agents"]["webster"] = gated_agent(go)  # silent until `go`, exit 0
    raw["agents"]["webster"]["heartbeat_timeout"] = 1.5
    config = tmp_path / "orchestrator.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-c", "from engine.cli import orchestrate_main; orchestrate_main()",
         "webster", "find the CTE of Zerodur", "--caller", "manager", "--timeout", "60",
         "--json", "--config", str(config)],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    return proc, go


def _record_when(path: Path, done: Any, bound: float = 60.0) -> dict[str, Any]:
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


def test_a_lost_delegation_prints_no_retry_and_keeps_its_outcome(tmp_path: Path) -> None:
    proc, go = _lost_run(tmp_path)
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr
    # No retry happens once the delegation ended, so none is reported.
    assert "retry" not in proc.stderr and "↻" not in proc.stderr, proc.stderr
    first = json.loads(proc.stdout)
    assert first["envelope"]["outcome"] == "lost"
    run_id = first["runId"]
    workspaces = tmp_path / "handoffs" / ".workspaces" / "webster"
    assert len(list(workspaces.iterdir())) == 1  # the agent was started once
    go.touch()  # the agent exits 0 without a handoff, its gateway long gone
    record = _record_when(
        tmp_path / "handoffs" / f"{run_id}.json",
        lambda r: r.get("status") == "failed" or r["envelope"].get("also_received"),
    )
    # The stand-in is kept aside and listed; the engine's `lost` stands.
    assert record["envelope"]["outcome"] == "lost", record
    assert "status" not in record  # no handoff was taken
    (kept,) = record["envelope"]["also_received"]
    assert "gateway-written fallback" in kept["reason"]
    assert "`lost`" in kept["reason"]


class _Events(Reporter):
    """A reporter that keeps what it is told (the interface's generic hook)."""

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.retried = threading.Event()
        self.dispatched = threading.Event()

    def event(self, kind: str, **fields: Any) -> None:
        self.kinds.append(kind)
        if kind == "delegation_retry":
            self.retried.set()
        if kind == "delegation_dispatched":
            self.dispatched.set()


@pytest.mark.parametrize("ending", ["lost", "cancelled"])
def test_an_ended_delegations_held_post_is_abandoned_quietly(
    tmp_path: Path, ending: str
) -> None:
    """Once the delegation ended (silent past its heartbeat, or cancelled), the held POST
    is neither retried nor reported when its gateway stops (it used to say `retry 1 in
    2.1 s`, and POST the task again)."""
    from engine import completion

    go = tmp_path / "go"
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = gated_agent(go)
    if ending == "lost":
        raw["agents"]["webster"]["heartbeat_timeout"] = 1.5
    cfg = load_config(write_config(tmp_path, raw))
    events = _Events()
    cancel = events.dispatched if ending == "cancelled" else None  # cancelled once admitted
    with open_delegator(cfg, reporter=events) as d:
        result = d.delegate(DelegationRequest(target="webster", task="find the CTE",
                                              caller="manager", timeout=60), cancel=cancel)
        assert result.outcome is Outcome(ending)
        before = completion._DISPATCHERS.idle  # the held POST's thread is busy still
    # The gateway stopped under the held POST: its thread ends (idle again), or retries.
    end = time.monotonic() + 30
    while completion._DISPATCHERS.idle <= before and not events.retried.is_set():
        assert time.monotonic() < end, "the held POST neither ended nor retried"
        events.retried.wait(0.05)
    assert not events.retried.is_set(), events.kinds
    assert events.kinds.count("delegation_dispatched") == 1
    go.touch()


def test_a_workflow_whose_only_bad_step_is_lost_exits_4(tmp_path: Path) -> None:
    """``lost`` is a timeout (exit 4 for one delegation), so a run it alone failed exits 4."""
    go = tmp_path / "go"
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = gated_agent(go)  # silent until `go`
    raw["agents"]["webster"]["heartbeat_timeout"] = 1.0
    config = tmp_path / "orchestrator.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    wf = tmp_path / "silent.yaml"
    wf.write_text(
        "name: silent\ncaller: manager\nsteps:\n"
        "  - id: research\n    agent: webster\n    task: find the CTE of Zerodur\n",
        encoding="utf-8",
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", "from engine.cli import workflow_main; workflow_main()",
             "run", str(wf), "--non-interactive", "--json", "--config", str(config)],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )
    finally:
        go.touch()  # let the agent's process end
    assert "Traceback" not in proc.stderr, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["status"] == "failed", summary
    assert summary["steps"]["research"]["status"] == "lost", summary
    assert proc.returncode == 4, proc.stderr
