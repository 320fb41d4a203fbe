"""`workflow run --server` of a run cancelled meanwhile: its final table is the run's
final state (no step still `running` under a `cancelled` run)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from engine.cli import workflow
from tests.servekit import Served, cli, served_module, server_env


@pytest.fixture(scope="module")
def srv(tmp_path_factory: Any) -> Iterator[Served]:
    yield from served_module(tmp_path_factory, "servefix-cancel")


def test_the_final_table_of_a_cancelled_run_has_no_running_step(srv: Served) -> None:
    env = server_env(srv)
    with srv.client() as alice:
        cursor = alice.get("/v1/events").json()["cursor"]
    results: list[Any] = []
    runner = threading.Thread(target=lambda: results.append(cli(workflow, "run", "hold", **env)))
    runner.start()
    with srv.client() as alice:
        ev = _feed_until_any(alice, cursor, "step_dispatched")
        run_id = ev["runId"]
        done = cli(workflow, "cancel", run_id, **env)
        assert done.exit_code == 0, done.output
    runner.join(120)
    (res,) = results
    out = res.output
    assert "cancelled" in out, out
    assert "running" not in out, out  # the step ended with its run
    status = cli(workflow, "status", run_id, "--json", **env)
    assert '"status": "running"' not in status.output, status.output


def _feed_until_any(c: Any, cursor: int, kind: str) -> dict[str, Any]:
    from tests.servekit import sse

    for ev in sse(c, f"/v1/events/stream?after={cursor}", until=lambda e: e["event"] == kind):
        if ev["event"] == kind:
            return ev
    raise AssertionError(f"no {kind}")
