"""`orchestrate serve` with an embedded gateway: its agents outlive a killed server.

The gateway runs as the server's companion process; a restarted server adopts it, so
the agent that was running finishes and its handoff reaches the restarted server.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from engine.runner import read_events
from engine.serve.companion import alive
from tests.servekit import Served
from tests.test_serve import _feed_until, _start


def _companion(srv: Served) -> dict[str, object]:
    data: dict[str, object] = json.loads(
        (srv.tmp / "handoffs" / ".serve" / "gateway.json").read_text()
    )
    return data


def test_kill_9_with_an_embedded_gateway_loses_nothing(tmp_path: Path) -> None:
    srv = Served(tmp_path, embedded=True).start()
    companion = 0
    try:
        with srv.client("alice") as alice:
            cursor = alice.get("/v1/events").json()["cursor"]
            run_id = _start(alice, "hold")["runId"]
            _feed_until(alice, cursor, run_id, "step_dispatched")
            body = {"target": "slowpoke", "task": "held delegation", "caller": "manager"}
            deleg = alice.post("/v1/delegations", json=body).json()["runId"]
            _feed_until(alice, cursor, deleg, "delegation_dispatched")
        first = _companion(srv)
        companion = int(str(first["pid"]))
        assert srv.proc is not None and first["owner"] == srv.proc.pid
        assert "token" not in first  # only its digest
        srv.kill9()
        assert alive(companion)  # the gateway and its agents live on
        srv.go.touch()  # the agents finish while no server is alive
        srv.start()
        again = _companion(srv)
        assert again["pid"] == companion and again["owner"] == srv.proc.pid  # adopted
        with srv.client("alice") as alice:
            done = alice.get(f"/v1/runs/{run_id}/wait", params={"timeout": 60}).json()
            deleg_done = alice.get(f"/v1/delegations/{deleg}/wait", params={"timeout": 60})
        assert deleg_done.json()["status"] == "complete", deleg_done.text
        assert deleg_done.json()["record"]["result"].startswith("held and released")
        assert done["status"] == "complete", done
        assert "held and released" in done["steps"]["after"]["task"]
        starts = (tmp_path / "starts").read_text().split()
        assert len(starts) == 2  # the step's agent and the delegation's: each sent once
        events = read_events(Path(done["run_dir"]) / "events.jsonl")
        kinds = [e["event"] for e in events]
        assert kinds.count("step_started") == 2 and kinds.count("run_resumed") == 1
    finally:
        srv.stop()
    # an orderly stop takes the companion down with the server
    assert not alive(companion) or not _reaped(companion)
    assert not (tmp_path / "handoffs" / ".serve" / "gateway.json").exists()


def _reaped(pid: int) -> bool:
    """Kill a companion that outlived the stop (the assertion then fails); False if gone."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True
