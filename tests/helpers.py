"""Helpers shared by the tests: demo configs, scripted agents, a hooks stand-in server.

Fixtures stay in ``conftest.py``; these are plain functions and classes a test imports.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from engine.gateway.demo_agent import ROLES

DEMO = [sys.executable, "-m", "engine.gateway.demo_agent", "--role"]


def demo_config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    """A config dict: the eight roles as demo agents on the embedded gateway."""
    raw: dict[str, Any] = {
        "handoffs_dir": str(tmp_path / "handoffs"),
        "default_timeout": 60,  # a bound for a busy host: delegations end when handed off
        "handoff_grace": 0.5,
        "retry": {"delays": [0.05, 0.1, 0.2], "jitter": 0.0, "request_timeout": 5},
        "validator": "tech-lead",
        "gateway": {
            "embedded": True,
            # Agents still running when a test's gateway stops end with it, so nothing
            # outlives the suite; tests/test_late_agents.py checks the default (detach).
            "detach_on_exit": False,
            "agents": {r: {"kind": "command", "argv": [*DEMO, r], "timeout": 60} for r in ROLES},
        },
        "agents": {r: {"url": "local", "capabilities": [r]} for r in ROLES},
        "pool": {"enabled": False},
    }
    raw["agents"]["webster"]["capabilities"] = ["research", "literature"]
    raw["agents"]["study-builder"]["capabilities"] = ["research", "study-setup"]
    for key, value in extra.items():
        raw[key] = value
    return raw


def gated_agent(go: Path, *, output: str = "done") -> dict[str, Any]:
    """A command agent that runs until the file ``go`` exists (60 s at most), then hands
    off ``output``: a test decides when it ends, instead of a sleep a busy host outlasts."""
    script = (
        "import os, time\n"
        "deadline = time.monotonic() + 60\n"
        f"while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        f"print({output!r})\n"
    )
    return {"kind": "command", "argv": [sys.executable, "-c", script], "timeout": 90}


def rendezvous_agent(meeting: Path, *, parties: int = 2) -> dict[str, Any]:
    """A command agent that hands off only once ``parties`` such agents have started
    (each leaves a file in ``meeting``; 60 s at most): their runs overlap in time."""
    script = (
        "import os, pathlib, time\n"
        f"d = pathlib.Path({str(meeting)!r})\n"
        "d.mkdir(parents=True, exist_ok=True)\n"
        "(d / str(os.getpid())).touch()\n"
        "deadline = time.monotonic() + 60\n"
        f"while len(list(d.iterdir())) < {parties} and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "print('met')\n"
    )
    return {"kind": "command", "argv": [sys.executable, "-c", script], "timeout": 90}


def write_config(tmp_path: Path, raw: dict[str, Any]) -> Path:
    """Write ``raw`` as tmp_path/orchestrator.yaml and return its path."""
    path = tmp_path / "orchestrator.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StandIn:
    """A scripted stand-in for an OpenClaw gateway's hooks API on 127.0.0.1.

    ``statuses`` is consumed one per POST (then 200 forever); on a 200 the ``agent``
    callable gets the parsed handoff block of the message (``run_id``, ``agent``,
    ``handoff_path``, ``key``...) and plays the agent.
    """

    def __init__(
        self,
        *,
        token: str = "stand-in-token",
        statuses: list[int] | None = None,
        agent: Callable[[dict[str, str]], None] | None = None,
        port: int = 0,
        error_body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.token = token
        self.statuses = list(statuses or [])
        self.agent = agent
        self.requests: list[dict[str, Any]] = []
        self.error_body = error_body
        self.extra_headers = headers or {}
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with outer._lock:
                    outer.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body}
                    )
                    status = outer.statuses.pop(0) if outer.statuses else 200
                if self.headers.get("Authorization") != f"Bearer {outer.token}":
                    status = 401
                if status == 200:
                    payload = {"ok": True, "runId": f"standin-{len(outer.requests)}"}
                elif status == 401:
                    payload = {"ok": False, "error": "Unauthorized"}
                else:
                    payload = outer.error_body or {"ok": False, "error": f"scripted {status}"}
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in outer.extra_headers.items():
                    if status != 200:
                        self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                if status == 200 and outer.agent is not None:
                    from engine.message import parse_handoff_block

                    block = parse_handoff_block(body.get("message", ""))
                    threading.Thread(target=outer.agent, args=(block,), daemon=True).start()

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> StandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def posts(self) -> int:
        return len(self.requests)


def remote_config(tmp_path: Path, url: str, **extra: Any) -> dict[str, Any]:
    """A config whose `webster` lives behind ``url`` (token from $STANDIN_TOKEN)."""
    raw = demo_config(tmp_path)
    raw["agents"]["webster"] = {
        "url": url,
        "token_env": "STANDIN_TOKEN",
        "capabilities": ["research"],
    }
    raw.update(extra)
    return raw


def write_valid_handoff(block: dict[str, str], **fields: Any) -> None:
    """Play a well-behaved agent: write a valid handoff where the block says."""
    from engine.handoff import make_handoff, write_handoff

    data = make_handoff(
        run_id=block["run_id"],
        agent=block["agent"],
        status="complete",
        result="stand-in result",
        confidence="high",
        key=block.get("key"),
    )
    data.update(fields)
    write_handoff(Path(block["handoff_path"]), data) if not fields else Path(
        block["handoff_path"]
    ).write_text(json.dumps(data))


def interruptible(program: str) -> list[str]:
    """The argv of ``program`` (``workflow``, ``orchestrate``, ``metrics``) that Ctrl-C
    reaches as it does from a terminal. A process started in the background by a shell
    without job control (CI, ``cmd &``) inherits SIGINT ignored, and Python keeps it so;
    the child takes Python's own handler back first."""
    handler = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    main = f"from engine.cli import {program}_main; {program}_main()"
    return [sys.executable, "-c", handler + main]


def wait_for(ready: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """``ready()``'s first truthy value: polled (a file appearing, a state reached) until
    ``timeout`` s have passed, then an ``AssertionError`` naming ``what``. Bounded, so a
    busy host only makes it slower, never wrong."""
    end = time.monotonic() + timeout
    while True:
        got = ready()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)
