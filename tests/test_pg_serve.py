"""`orchestrate serve` over a PostgreSQL store: a real server process, a real database.

The server (``tests/servekit.py``: a standalone gateway in this process, the server as a
subprocess) is configured with ``store: postgresql://...``. A delegation and a workflow
run are started through the API, complete, and are read back through the API (also after
the server restarts) and from the database; the server's own directory holds no record
or run of them.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from engine.store.postgres import PostgresRunStore
from engine.store.postgres_db import Database
from tests.helpers import write_config
from tests.servekit import Served


def test_serve_runs_delegations_and_workflows_on_postgres(pg_url: str, tmp_path: Path) -> None:
    srv = Served(tmp_path)
    raw = yaml.safe_load(srv.path.read_text())
    raw["store"] = pg_url
    write_config(tmp_path, raw)
    srv.go.touch()  # the `hold` workflow's first step ends at once
    srv.start()
    try:
        with srv.client("alice") as alice:
            body = {"target": "secretary", "task": "file the minutes", "caller": "manager"}
            r = alice.post("/v1/delegations", json=body)
            assert r.status_code == 201, r.text
            deleg = r.json()["runId"]
            r = alice.post("/v1/runs", json={"workflow": "hold", "inputs": {}})
            assert r.status_code in (200, 201), r.text
            run_id = r.json()["runId"]
            done = alice.get(f"/v1/delegations/{deleg}/wait", params={"timeout": 60}).json()
            assert done["done"] and done["status"] == "complete", done
            assert done["record"]["agent"] == "secretary"
            ended = alice.get(f"/v1/runs/{run_id}/wait", params={"timeout": 60}).json()
            assert ended["done"], ended
        srv.stop()
        srv.gateway = None  # stopped with the server; the restarted one needs none for reads
        srv.start()
        with srv.client("reader") as reader:
            doc = reader.get(f"/v1/runs/{run_id}").json()
            assert doc["status"] == "complete", doc
            assert "held and released" in str(doc)
            listed = reader.get("/v1/runs", params={"workflow": "hold"}).json()
            assert run_id in str(listed)
            events = reader.get(f"/v1/runs/{run_id}/events", params={"after": 1}).json()
            kinds = [e["event"] for e in events["events"]]
            assert kinds[-1] == "run_finished" and "run_started" not in kinds, kinds
            assert [e["line"] for e in events["events"]][0] == 2
            assert events["cursor"] == doc["cursor"] == len(kinds) + 1
            diag = reader.get(f"/v1/runs/{run_id}/diagnose").json()
            assert diag["status"] == "complete" and diag["live"] is False, diag
            got = reader.get(f"/v1/delegations/{deleg}").json()
            assert got["status"] == "complete" and got["record"]["agent"] == "secretary", got
    finally:
        srv.stop()
    assert "Traceback" not in "".join(srv.log), "".join(srv.log)
    store = PostgresRunStore(Database.from_url(pg_url))
    summary = store.read_summary(run_id)
    assert summary is not None and summary["status"] == "complete"
    record = store.read(deleg, sub=False)
    assert record is not None and record["agent"] == "secretary"
    # nothing of either in the server's own directory: the database holds them
    handoffs = Path(raw["handoffs_dir"])
    assert not (handoffs / "workflows" / run_id).exists()
    assert not list(handoffs.glob(f"**/records/{deleg}*"))


def _events(lines: Iterator[str], limit: float = 60) -> Iterator[dict[str, Any]]:
    """The SSE events of a stream's lines (comments skipped), as they arrive; fails once
    ``limit`` seconds have passed (a keep-alive comment arrives every 15 s)."""
    deadline = time.monotonic() + limit
    data = None
    for line in lines:
        if time.monotonic() > deadline:
            raise AssertionError(f"no event within {limit} s")
        if line.startswith("data: "):
            data = json.loads(line[6:])
        elif line == "" and data is not None:
            yield data
            data = None


def test_live_feeds_show_events_another_host_appends(pg_url: str, tmp_path: Path) -> None:
    srv = Served(tmp_path)
    raw = yaml.safe_load(srv.path.read_text())
    raw["store"] = pg_url
    write_config(tmp_path, raw)
    srv.start()
    writer = PostgresRunStore(Database.from_url(pg_url))  # another host's executor
    run_id = "wf-20260101T000000-0a1b2c3d"
    try:
        writer.create_run(run_id, {"workflow": "w"})  # a run the server never saw start
        journal = writer.journal(run_id)
        with srv.client("alice") as client:
            with client.stream("GET", "/v1/events/stream", timeout=60) as feed:
                lines = feed.iter_lines()
                assert next(lines) == ": connected"  # subscribed: from now on
                journal.append("run_started", workflow="w")
                journal.append("step_started", step="a")
                got = list(itertools.islice(_events(lines), 2))
            assert [(e["event"], e["runId"], e["line"]) for e in got] == [
                ("run_started", run_id, 1),
                ("step_started", run_id, 2),
            ]
            assert got[1]["seq"] == got[0]["seq"] + 1
            with client.stream("GET", f"/v1/runs/{run_id}/stream", timeout=60) as stream:
                events = _events(stream.iter_lines())
                replayed = [next(events)["line"], next(events)["line"]]
                journal.append("step_finished", step="a", status="ok")
                live = next(events)
            assert replayed == [1, 2]
            assert (live["event"], live["line"], live["step"]) == ("step_finished", 3, "a")
            polled = client.get("/v1/events", params={"after": 0}).json()
            assert [e["line"] for e in polled["events"] if e["runId"] == run_id] == [1, 2, 3]
    finally:
        srv.stop()
    assert "Traceback" not in "".join(srv.log), "".join(srv.log)
