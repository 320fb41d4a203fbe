"""Gates approved when a run started (`approve`, `approve_all`) hold after a restart.

A real `orchestrate serve` is killed (`kill -9`) while the run's first step still runs on
the gateway beside it; the restarted server picks the run up and passes the pre-approved
gate instead of parking there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.runs import read_events
from tests.servekit import Served
from tests.test_serve import _feed_until


@pytest.mark.parametrize(
    "given", [{"approve": ["review"]}, {"approve_all": True}], ids=["approve", "approve_all"]
)
def test_pre_approvals_survive_a_restart(tmp_path: Path, given: dict[str, Any]) -> None:
    srv = Served(tmp_path).start()
    try:
        with srv.client("alice") as alice:
            cursor = alice.get("/v1/events").json()["cursor"]
            r = alice.post("/v1/runs", json={"workflow": "held-gate", **given})
            assert r.status_code == 201, r.text
            run_id = r.json()["runId"]
            _feed_until(alice, cursor, run_id, "step_dispatched")
        run_json = tmp_path / "handoffs" / "workflows" / run_id / "run.json"
        kept = json.loads(run_json.read_text())["pre_approved"]  # kept by the run itself
        assert kept == given
        srv.kill9()
        srv.go.touch()  # the held step finishes while no server is alive
        srv.start()
        with srv.client("alice") as alice:
            done = alice.get(
                f"/v1/runs/{run_id}/wait", params={"until": "parked", "timeout": 60}
            ).json()
        assert done["done"] and done["status"] == "complete", done
        events = read_events(Path(done["run_dir"]) / "events.jsonl")
        decided = [e for e in events if e["event"] == "gate_decided"]
        assert [(e["step"], e["decision"], e["by"]) for e in decided] == [
            ("review", "approved", "--approve")
        ]
        assert not [e for e in events if e["event"] == "gate_waiting"]
    finally:
        srv.stop()
