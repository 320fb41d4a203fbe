"""A delegation the engine ended (``lost``) stays ended: its held POST is abandoned
quietly, and the gateway's stand-in handoff never replaces the engine's outcome."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import demo_config, gated_agent


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
