"""A model endpoint that answers 200 with a body that is not JSON: the failed handoff says
so (``engine.gateway.models``), not that ``choices[0].message`` is missing.

A real HTTP server on 127.0.0.1 that sends the body cut short, as a proxy that dropped the
connection mid-answer would.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from engine.config import config_from_dict
from engine.gateway.agents import task_from_message
from engine.gateway.models import run_model_agent
from engine.handoff import load_handoff
from engine.message import render_message

CUT = b'{"choices": [ {"message": '


@pytest.fixture
def endpoint() -> Iterator[str]:
    """The base URL of a server whose every POST gets 200 and ``CUT``."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(CUT)))
            self.end_headers()
            self.wfile.write(CUT)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_reply_that_is_not_json_is_said_to_be_so(tmp_path: Path, endpoint: str) -> None:
    cfg = config_from_dict(
        {
            "handoffs_dir": "handoffs",
            "agents": {"webster": {"url": "local"}},
            "gateway": {
                "agents": {"webster": {"kind": "openai", "base_url": endpoint, "model": "m"}}
            },
        },
        path=tmp_path / "orchestrator.yaml",
    )
    path = cfg.handoffs_dir / "orch-1.json"
    msg = render_message(
        task="Find CTE of Zerodur", run_id="orch-1", agent="webster", caller="manager",
        handoff_path=path,
    )  # fmt: skip
    task = task_from_message("gw-1", "webster", msg, 30.0)
    assert cfg.gateway is not None
    run_model_agent(cfg.gateway.agents["webster"], task, cfg)
    handoff = load_handoff(path, run_id="orch-1", agent="webster")
    assert handoff["status"] == "failed"
    assert handoff["result"] == (
        f"the model endpoint {endpoint}/chat/completions answered 200 with a body that is "
        f"not JSON (a chat completion was expected): {CUT.decode().strip()}"
    )
