"""`metrics`: a pending envelope left behind is not a delegation in flight: its record
is final, or its workflow run ended after it was last written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from engine.metrics import compute_metrics
from tests.test_resend_crash import (  # noqa: F401 (a fixture)
    _kill_at_first_start,
    _workflow,
    scratch,
)


def _pending(base: Path, run_id: str, **more: Any) -> None:
    env = {
        "caller": "manager",
        "target": "webster",
        "outcome": "dispatched",
        "created_at": "2026-11-21T00:00:00.000Z",
        "renewed_at": "2026-11-21T00:00:01.000Z",
        "timeout_s": 60.0,
        "pid": 1,
        "host": "elsewhere",
        **more,
    }
    (base / ".pending").mkdir(parents=True, exist_ok=True)
    (base / ".pending" / f"{run_id}.json").write_text(json.dumps(env))


def _record(base: Path, run_id: str, outcome: str) -> None:
    record = {
        "schemaVersion": "1.1",
        "runId": run_id,
        "agent": "webster",
        "status": outcome,
        "result": "r",
        "confidence": "high",
        "timestamp": "2026-11-21T00:00:02.000Z",
        "artifacts": [],
        "envelope": {
            "caller": "manager",
            "target": "webster",
            "outcome": outcome,
            "created_at": "2026-11-21T00:00:00.000Z",
        },
    }
    (base / f"{run_id}.json").write_text(json.dumps(record))


def _run(base: Path, run_id: str, status: str, finished_at: str) -> None:
    d = base / "workflows" / run_id
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"run_id": run_id, "workflow": "one"}))
    (d / "summary.json").write_text(
        json.dumps(
            {
                "workflow": "one",
                "status": status,
                "steps": {},
                "started_at": "2026-11-21T00:00:00.000Z",
                "finished_at": finished_at,
            }
        )
    )


def test_left_behind_envelopes_are_not_in_flight(tmp_path: Path) -> None:
    base = tmp_path / "handoffs"
    _pending(base, "orch-20261121T000000-00000001")  # in flight: nothing else known
    _pending(base, "orch-20261121T000000-00000002")  # its record is final
    _record(base, "orch-20261121T000000-00000002", "complete")
    _pending(base, "orch-20261121T000000-00000003")  # a timeout re-attached: in flight
    _record(base, "orch-20261121T000000-00000003", "timeout")
    label = {"workflow": "one", "workflow_run": "wf-20261121T000000-0000000a", "step": "a"}
    _pending(base, "wf-20261121T000000-0000000a-a-1", labels=label)  # its run was cancelled
    _run(base, "wf-20261121T000000-0000000a", "cancelled", "2026-11-21T00:00:05.000Z")
    resumed = {**label, "workflow_run": "wf-20261121T000000-0000000b"}
    _pending(
        base,
        "wf-20261121T000000-0000000b-a-1",
        labels=resumed,  # resumed after
        reattached_at="2026-11-21T00:00:09.000Z",
        renewed_at="2026-11-21T00:00:09.000Z",
    )
    _run(base, "wf-20261121T000000-0000000b", "failed", "2026-11-21T00:00:05.000Z")
    doc = compute_metrics(base, reconcile=False)
    assert doc["waiting"]["in_flight"]["count"] == 3, doc["waiting"]


def test_cancelling_a_killed_run_ends_its_delegation(scratch: dict[str, Path]) -> None:  # noqa: F811
    run_dir = _kill_at_first_start(scratch)
    drid = f"{run_dir.name}-a-1"
    base = scratch["dir"] / "handoffs"
    assert json.loads((base / ".pending" / f"{drid}.json").read_text())["outcome"] == "dispatched"
    exe = Path(sys.executable).parent / "workflow"
    cancel = subprocess.run(
        [str(exe), "cancel", run_dir.name, "--config", "orchestrator.yaml"],
        cwd=scratch["dir"],
        capture_output=True,
        timeout=60,
    )
    assert cancel.returncode == 0, cancel.stderr.decode()
    record = json.loads((base / f"{drid}.json").read_text())
    assert record["envelope"]["outcome"] == "cancelled"
    assert json.loads((base / ".pending" / f"{drid}.json").read_text())["outcome"] == "cancelled"
    assert compute_metrics(base, reconcile=False)["waiting"]["in_flight"]["count"] == 0
    scratch["go"].touch()  # let the agent end
