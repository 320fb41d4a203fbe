"""A server stopped cleanly (SIGTERM) ends its open waits and streams itself.

A client waiting on `/v1/runs/R/wait` gets a JSON 503 ("the server is stopping", exit 4),
an SSE stream gets a last `server_stopping` event, and the server's log has no traceback
(no task cancelled when the shutdown's grace runs out). The run goes on after a restart.
"""

from __future__ import annotations

import http.client
import json
import signal
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from engine.serve.client import RemoteError, ServerClient
from tests.servekit import TOKENS, Served
from tests.test_serve import _feed_until


def _conn(srv: Served) -> http.client.HTTPConnection:
    parts = urlsplit(srv.url)
    assert parts.hostname and parts.port
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)


def test_sigterm_ends_waits_and_streams_with_503(tmp_path: Path) -> None:
    srv = Served(tmp_path).start()
    auth = {"Authorization": f"Bearer {TOKENS['alice'][1]}"}
    stream, waiting = _conn(srv), _conn(srv)
    try:
        with srv.client("alice") as alice:
            cursor = alice.get("/v1/events").json()["cursor"]
            run_id = alice.post("/v1/runs", json={"workflow": "hold"}).json()["runId"]
            _feed_until(alice, cursor, run_id, "step_dispatched")
            stream.request("GET", f"/v1/runs/{run_id}/stream", headers=auth)
            events = stream.getresponse()
            assert events.status == 200
            first = events.readline()  # the stream runs: its first line arrived
            assert first.startswith(b"id: "), first
            # sent, not read: the server holds it until the run ends
            waiting.request("GET", f"/v1/runs/{run_id}/wait?timeout=120", headers=auth)
            assert alice.get("/health").status_code == 200  # the wait was read meanwhile
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)
        answer = waiting.getresponse()
        body = json.loads(answer.read())
        assert answer.status == 503, body
        assert body["exit_code"] == 4
        assert body["detail"].startswith(
            f"the server is stopping: this wait ended before `{run_id}` did."
        )
        rest = events.read().decode()
        assert "event: server_stopping" in rest.splitlines()[-3:], rest
        srv.proc.wait(timeout=30)
        log = "".join(srv.log)
        assert "Traceback" not in log and "CancelledError" not in log, log
    finally:
        stream.close()
        waiting.close()
        srv.go.touch()
        srv.stop()


def test_the_client_says_the_server_stops(tmp_path: Path) -> None:
    """`ServerClient` (the `--server` CLI) turns the 503 into its paragraph and exit 4."""
    detail = "the server is stopping: this wait ended before `wf-1` did."

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"detail": detail, "exit_code": 4})

    client = ServerClient("http://127.0.0.1:9", transport=httpx.MockTransport(answer))
    try:
        client.wait_run("wf-1")
    except RemoteError as exc:
        assert exc.exit_code == 4 and str(exc) == detail
    else:
        raise AssertionError("no error")
