"""`orchestrate serve` end to end: a real server process on an ephemeral port, over httpx."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from engine.cli import workflow
from engine.runs import read_events
from tests.servekit import GATEWAY_TOKEN, TOKENS, Served, sse


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = Served(tmp_path_factory.mktemp("serve"), self_approval=False).start()
    try:
        yield served
    finally:
        served.stop()
    assert "Traceback" not in "".join(served.log), "".join(served.log)


def _start(c: httpx.Client, workflow: str, key: str | None = None, **inputs: str) -> Any:
    headers = {"Idempotency-Key": key} if key else {}
    r = c.post("/v1/runs", json={"workflow": workflow, "inputs": inputs}, headers=headers)
    assert r.status_code in (200, 201), r.text
    return r.json()


def _parked(c: httpx.Client, run_id: str) -> dict[str, Any]:
    r = c.get(f"/v1/runs/{run_id}/wait", params={"until": "parked", "timeout": 60})
    doc: dict[str, Any] = r.json()
    assert doc["done"], doc
    return doc


def test_health_is_open_everything_else_needs_a_token(srv: Served) -> None:
    with srv.client(None) as anon:
        assert anon.get("/health").json()["ok"] is True
        r = anon.get("/v1/runs")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert anon.get("/metrics").status_code == 401
        assert anon.get("/v1/openapi.json").status_code == 401
        bad = anon.get("/v1/runs", headers={"Authorization": "Bearer not-a-token-at-all-xx"})
        assert bad.status_code == 401
    with srv.client("reader") as c:
        assert c.get("/v1/whoami").json() == {"name": "reader", "role": "read"}
        doc = c.get("/v1/openapi.json").json()
        assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        assert doc["security"] == [{"bearer": []}]
        assert doc["paths"]["/health"]["get"]["security"] == []
        paths = doc["paths"]
        for p in ("/v1/runs", "/v1/runs/{run_id}/stream", "/v1/delegations", "/v1/events"):
            assert p in paths


def test_gated_run_streams_and_continues_on_approval(srv: Served) -> None:
    """Start through the API, follow SSE, approve through the API: it completes, no resume."""
    with srv.client("alice") as alice, srv.client("bob") as bob, srv.client("reader") as reader:
        first = _start(alice, "gate", key="e2e-gate-1", query="CTE of ULE")
        again = _start(alice, "gate", key="e2e-gate-1", query="CTE of ULE")
        run_id = first["runId"]
        assert first["created"] is True and again["created"] is False
        assert again["runId"] == run_id  # one run for one key
        other = alice.post(
            "/v1/runs",
            json={"workflow": "gate", "inputs": {"query": "other"}},
            headers={"Idempotency-Key": "e2e-gate-1"},
        )
        assert other.status_code == 409 and "different workflow request" in other.json()["detail"]

        seen: list[dict[str, Any]] = []

        def follow() -> None:
            with srv.client("reader") as c:
                for ev in sse(c, f"/v1/runs/{run_id}/stream", until=_ended):
                    seen.append(ev)

        t = threading.Thread(target=follow)
        t.start()
        doc = _parked(alice, run_id)
        assert doc["status"] == "waiting_approval"
        review = doc["steps"]["review"]
        assert review["status"] == "waiting_approval" and "Send the research" in review["prompt"]

        diag = reader.get(f"/v1/runs/{run_id}/diagnose").json()
        assert diag["status"] == "waiting_approval" and diag["started_by"] == "alice"
        assert diag["live"] is False and diag["executing_here"] is False  # nothing runs
        assert list(diag["open_steps"]) == ["review"]
        assert diag["open_steps"]["review"]["waiting"].startswith("at its approval gate")
        assert diag["pool"] == {"enabled": False, "size": None, "in_use": 0, "queue": 0}
        r = reader.post(f"/v1/runs/{run_id}/steps/review/approve", json={})
        assert r.status_code == 403 and "`read` role" in r.json()["detail"]
        r = alice.post(f"/v1/runs/{run_id}/steps/review/approve", json={})
        assert r.status_code == 403 and "may not decide its own gate" in r.json()["detail"]
        r = bob.post(f"/v1/runs/{run_id}/steps/review/approve", json={"reason": "looks right"})
        assert r.status_code == 200, r.text
        assert r.json()["decision"]["by"] == "bob"

        done = alice.get(f"/v1/runs/{run_id}/wait", params={"timeout": 60}).json()
        t.join(timeout=60)
        assert done["done"] and done["status"] == "complete"
        assert done["steps"]["review"]["gate"]["by"] == "bob"
        assert done["started_by"] == "alice"
        kinds = [e["event"] for e in seen]
        assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
        assert "gate_waiting" in kinds and "gate_decided" in kinds
        assert kinds.count("run_resumed") == 1  # the server continued it, once
        lines = [e["line"] for e in seen]
        assert lines == sorted(set(lines))  # each journal line once, in order

        events = alice.get(f"/v1/runs/{run_id}/events", params={"after": lines[2]}).json()
        assert [e["line"] for e in events["events"]] == lines[3:]
        listed = reader.get("/v1/runs", params={"status": "complete", "workflow": "gate"}).json()
        assert run_id in [r["runId"] for r in listed["runs"]]


def _ended(ev: dict[str, Any]) -> bool:
    return ev["event"] in ("run_finished", "run_cancelled")


def test_gate_approvers_and_rejection(srv: Served) -> None:
    with srv.client("alice") as alice, srv.client("bob") as bob, srv.client("carol") as carol:
        run_id = _start(alice, "guarded")["runId"]
        _parked(alice, run_id)
        r = bob.post(f"/v1/runs/{run_id}/steps/publish/approve", json={})
        assert r.status_code == 403
        assert r.json()["detail"].startswith("`bob` may not decide the gate of `publish`")
        r = carol.post(f"/v1/runs/{run_id}/steps/publish/reject", json={"reason": "not yet"})
        assert r.status_code == 200, r.text
        done = alice.get(f"/v1/runs/{run_id}/wait", params={"timeout": 60}).json()
        assert done["status"] == "failed"
        assert done["steps"]["publish"]["status"] == "rejected"
        assert done["steps"]["publish"]["gate"] == {
            "decision": "rejected",
            "by": "carol",
            "reason": "not yet",
            "at": done["steps"]["publish"]["gate"]["at"],
        }
        r = carol.post(f"/v1/runs/{run_id}/steps/publish/approve", json={})
        assert r.status_code == 409 and "not waiting for approval" in r.json()["detail"]


def test_cli_approval_beside_the_server_continues_the_run(srv: Served) -> None:
    with srv.client("alice") as alice:
        run_id = _start(alice, "gate", query="beside")["runId"]
        _parked(alice, run_id)
        res = CliRunner(env={"ORCH_TEST_GW_TOKEN": GATEWAY_TOKEN}).invoke(
            workflow, ["approve", run_id, "review", "--config", str(srv.path)]
        )
        assert res.exit_code == 0, res.output
        done = alice.get(f"/v1/runs/{run_id}/wait", params={"timeout": 60}).json()
        assert done["status"] == "complete"


def test_cancel_a_parked_run_and_unknown_ids(srv: Served) -> None:
    with srv.client("alice") as alice:
        run_id = _start(alice, "gate", query="to cancel")["runId"]
        _parked(alice, run_id)
        r = alice.post(f"/v1/runs/{run_id}/cancel")
        assert r.json() == {"runId": run_id, "status": "cancelled"}
        doc = alice.get(f"/v1/runs/{run_id}").json()
        assert doc["status"] == "cancelled" and doc["steps"]["review"]["status"] == "skipped"
        r = alice.get("/v1/runs/wf-nope")
        assert r.status_code == 404 and "no workflow run `wf-nope`" in r.json()["detail"]
        r = alice.get("/v1/runs/..%2Fetc")
        assert r.status_code in (400, 404)
        r = alice.post("/v1/runs", json={"workflow": "/etc/passwd"})
        assert r.status_code == 400 and "give a workflow name" in r.json()["detail"]
        r = alice.post("/v1/runs", json={"workflow": "gaet"})
        assert r.status_code == 400 and "did you mean `gate`?" in r.json()["detail"]


def test_delegation_with_an_idempotency_key_is_sent_once(srv: Served) -> None:
    body = {"target": "secretary", "task": "file the minutes", "caller": "manager"}
    before = srv.gateway.stats()["dispatched"].get("secretary", 0)
    with srv.client("alice") as alice:
        key = {"Idempotency-Key": "deleg-1"}
        first = alice.post("/v1/delegations", json=body, headers=key)
        assert first.status_code == 201, first.text
        run_id = first.json()["runId"]
        done = alice.get(f"/v1/delegations/{run_id}/wait", params={"timeout": 60}).json()
        assert done["done"] and done["status"] == "complete"
        assert done["record"]["agent"] == "secretary"
        second = alice.post("/v1/delegations", json=body, headers=key)
        assert second.status_code == 200 and second.json()["runId"] == run_id
        assert second.json()["delegation"]["status"] == "complete"
        assert srv.gateway.stats()["dispatched"]["secretary"] == before + 1
        r = alice.post("/v1/delegations", json={**body, "target": "nobody"})
        assert r.status_code == 400 and "nobody" in r.json()["detail"]
        r = alice.post("/v1/delegations", json={**body, "caller": "webster"})
        assert r.status_code == 403  # the ACL: webster delegates to nobody


def _feed_until(c: httpx.Client, cursor: int, run_id: str, kind: str) -> dict[str, Any]:
    """Follow the all-runs stream from ``cursor`` until ``run_id`` has a ``kind`` event."""
    for ev in sse(
        c,
        f"/v1/events/stream?after={cursor}",
        until=lambda e: e["runId"] == run_id and e["event"] == kind,
    ):
        if ev["runId"] == run_id and ev["event"] == kind:
            return ev
    raise AssertionError(f"no {kind} for {run_id}")


def test_cancel_a_delegation_in_flight(srv: Served) -> None:
    with srv.client("alice") as alice:
        cursor = alice.get("/v1/events").json()["cursor"]
        r = alice.post(
            "/v1/delegations",
            json={"target": "slowpoke", "task": "wait for me", "caller": "manager"},
        )
        run_id = r.json()["runId"]
        ev = _feed_until(alice, cursor, run_id, "delegation_dispatched")
        assert ev["target"] == "slowpoke"
        running = alice.get(f"/v1/delegations/{run_id}").json()
        assert running["status"] == "running" and running["done"] is False
        r = alice.post(f"/v1/delegations/{run_id}/cancel")
        assert r.json() == {"runId": run_id, "cancelling": True}
        done = alice.get(f"/v1/delegations/{run_id}/wait", params={"timeout": 60}).json()
        assert done["done"] and done["status"] == "cancelled"
        r = alice.post(f"/v1/delegations/{run_id}/cancel")
        assert r.status_code == 409 and "is not running in this server" in r.json()["detail"]


def test_bad_requests_get_one_paragraph(srv: Served) -> None:
    with srv.client("alice") as alice:
        r = alice.post("/v1/runs", json={"workflow": "gate", "inputs": ["not", "a", "map"]})
        assert r.status_code == 400
        assert r.json()["detail"].startswith("invalid request: `inputs`: Input should be")
        r = alice.post(
            "/v1/runs", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 400 and r.json()["exit_code"] == 2
        r = alice.get("/v1/runs/x/wait", params={"timeout": 99999})
        assert r.status_code == 400 and "`timeout`" in r.json()["detail"]
        r = alice.post("/v1/delegations", json={"task": "x", "caller": "manager"})
        assert r.status_code == 400 and "give `target`" in r.json()["detail"]


def test_api_approval_continues_a_parked_run_of_the_cli(srv: Served) -> None:
    res = CliRunner(env={"ORCH_TEST_GW_TOKEN": GATEWAY_TOKEN}).invoke(
        workflow,
        [
            "run",
            "gate",
            "-i",
            "query=cli",
            "--non-interactive",
            "--json",
            "--config",
            str(srv.path),
        ],
    )
    assert res.exit_code == 3, res.output
    run_id = json.loads(res.stdout)["runId"]
    with srv.client("bob") as bob:
        r = bob.post(f"/v1/runs/{run_id}/steps/review/approve", json={})
        assert r.status_code == 200, r.text
        done = bob.get(f"/v1/runs/{run_id}/wait", params={"timeout": 60}).json()
        assert done["status"] == "complete" and done["owned"] is True


def test_all_runs_feed_has_a_cursor(srv: Served) -> None:
    with srv.client("reader") as reader, srv.client("alice") as alice:
        cursor = reader.get("/v1/events", params={"after": 0}).json()["cursor"]
        run_id = _start(alice, "gate", query="feed")["runId"]
        _parked(alice, run_id)
        page = reader.get("/v1/events", params={"after": cursor}).json()
        mine = [e for e in page["events"] if e["runId"] == run_id]
        assert [e["event"] for e in mine][:1] == ["run_started"]
        assert all(e["seq"] > cursor for e in page["events"])
        alice.post(f"/v1/runs/{run_id}/cancel")


def test_pool_agents_and_metrics(srv: Served) -> None:
    with srv.client("reader") as c:
        assert c.get("/v1/pool").json() == {"enabled": False}
        agents = {a["name"]: a for a in c.get("/v1/agents").json()["agents"]}
        assert agents["webster"]["health"] == "ok" and agents["slowpoke"]["local"] is True
        doc = c.get("/v1/metrics").json()
        assert doc["agents"]["webster"]["delegations"] >= 1
        text = c.get("/metrics")
        assert text.headers["content-type"].startswith("text/plain")
        body = text.text
        assert 'orchestrator_steps_total{agent="webster",status="complete"}' in body
        assert 'orchestrator_delegations_total{agent="secretary",outcome="complete"}' in body
        assert "orchestrator_delegation_seconds_bucket" in body
        assert 'orchestrator_runs{state="complete"}' in body
        assert "orchestrator_pool_tokens_in_use 0.0" in body


def test_dashboard_page_and_svg(srv: Served) -> None:
    with srv.client(None) as anon, srv.client("reader") as c:
        page = anon.get("/")
        assert page.status_code == 200 and '<script src="/dashboard.js">' in page.text
        js = anon.get("/dashboard.js")
        assert js.headers["content-type"].startswith("text/javascript")
        assert '"Authorization"' in js.text and "EventSource" not in js.text
        for text in (page.text, js.text):
            assert "http://" not in text and "https://" not in text  # nothing from elsewhere
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        rid = c.get("/v1/runs", params={"status": "complete", "limit": 1}).json()["runs"][0]
        svg = c.get(f"/v1/runs/{rid['runId']}/dag.svg")
        assert svg.headers["content-type"].startswith("image/svg+xml")
        assert 'class="node state-complete"' in svg.text


def test_cross_site_requests_are_refused(srv: Served) -> None:
    with srv.client("alice") as alice:
        r = alice.post(
            "/v1/runs",
            json={"workflow": "gate", "inputs": {"query": "x"}},
            headers={"Origin": "https://evil.example"},
        )
        assert r.status_code == 403 and "cross-site" in r.json()["detail"]


def test_no_secret_in_any_page_or_response(srv: Served) -> None:
    """Everything the server answers, grepped for the gateway's and the API's tokens."""
    secrets = [GATEWAY_TOKEN, *(t for _, t in TOKENS.values())]
    with srv.client("alice") as c:
        bodies = [c.get(p).text for p in ("/", "/dashboard.js", "/v1/runs?limit=100", "/metrics")]
        bodies.append(c.get("/v1/events").text)
        bodies += [c.get(p).text for p in ("/v1/pool", "/v1/agents", "/v1/metrics")]
        bodies.append(c.get("/v1/openapi.json").text)
        for row in c.get("/v1/runs", params={"limit": 100}).json()["runs"]:
            rid = row["runId"]
            for p in ("", "/events", "/dag.svg"):
                bodies.append(c.get(f"/v1/runs/{rid}{p}").text)
        bodies.append(c.post("/v1/runs", json={"workflow": GATEWAY_TOKEN}).text)
    leaked = [s for s in secrets for b in bodies if s in b]
    assert not leaked and len(bodies) > 10


def test_kill_9_mid_run_then_restart_finishes_without_resending(srv: Served) -> None:
    """Last in this module: it kills and restarts the module's server."""
    stats = srv.gateway.stats()["dispatched"]
    slow0, tech0 = stats.get("slowpoke", 0), stats.get("tech-lead", 0)
    with srv.client("alice") as alice:
        cursor = alice.get("/v1/events").json()["cursor"]
        run_id = _start(alice, "hold")["runId"]
        _feed_until(alice, cursor, run_id, "step_dispatched")
        diag = alice.get(f"/v1/runs/{run_id}/diagnose").json()
        assert diag["live"] is True and diag["executing_here"] is True
        assert srv.proc is not None and diag["lock_pid"] == diag["server_pid"] == srv.proc.pid
        hold = diag["open_steps"]["hold"]
        assert hold["status"] == "running" and hold["delegation"]["target"] == "slowpoke"
        assert hold["delegation"]["deadline_at"] and "after" in diag["open_steps"]
        body = {"target": "slowpoke", "task": "held delegation", "caller": "manager"}
        deleg = alice.post("/v1/delegations", json=body).json()["runId"]
        _feed_until(alice, cursor, deleg, "delegation_dispatched")
    srv.kill9()
    srv.go.touch()  # the agent finishes while no server is alive
    srv.start()
    with srv.client("alice") as alice:
        done = alice.get(f"/v1/runs/{run_id}/wait", params={"timeout": 60}).json()
        deleg_done = alice.get(f"/v1/delegations/{deleg}/wait", params={"timeout": 60}).json()
    assert deleg_done["status"] == "complete", deleg_done
    assert deleg_done["record"]["result"].startswith("held and released")
    assert done["status"] == "complete", done
    assert done["steps"]["hold"]["attempts"] == 1
    assert "held and released" in done["steps"]["after"]["task"]
    stats = srv.gateway.stats()["dispatched"]
    assert stats["slowpoke"] == slow0 + 2 and stats["tech-lead"] == tech0 + 1  # each once
    events = read_events(Path(done["run_dir"]) / "events.jsonl")
    kinds = [e["event"] for e in events]
    assert kinds.count("step_started") == 2 and kinds.count("run_resumed") == 1
    assert json.loads(json.dumps(done))["owned"] is True
