"""The token pool over HTTP, for runs the engine does not start (the OpenClaw plugin).

Example::

    server = PoolServer(TokenPool(PoolSettings.from_config(cfg)), token=token).start()
    print(server.url)        # http://127.0.0.1:41234
    ...
    server.stop()

Endpoints (bearer token, JSON bodies)::

    POST /pool/acquire  {"runId", "agent", "waitSeconds"?, "holdSeconds"?, "engineRunId"?}
         400 {"ok": false, "error"}              no `runId` or `agent`, or a `waitSeconds`
                                                 / `holdSeconds` that is not a number >= 0
         200 {"ok": true, "runId", "waited_s"}   a token is held for runId (again: the same)
         200 {"ok": true, "covered_by"}          the engine's delegation engineRunId holds one
         503 {"ok": false, "error"}              none within waitSeconds
         429 {"ok": false, "error"}              the pool refused (queue full, emergency)
    POST /pool/release  {"runId"}  -> 200 {"ok": true, "released": true|false}
    GET  /health                   -> 200 {"ok": true, "held": N}
    any other method on these paths -> 405 {"ok": false, "error"} (``Allow`` names the one)

A held token is released by ``/pool/release``, when the server stops, or by the pool's
own ``token_timeout`` (the holder recorded on the token is this server's process).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from engine.errors import DelegationTimeoutError, PoolRefusedError, UsageError
from engine.redact import register

log = logging.getLogger(__name__)

#: The longest a client may ask to wait for a token, in seconds.
MAX_WAIT = 600.0
_MAX_BODY = 16 * 1024
_RUN_ID = re.compile(r"^[A-Za-z0-9:_.@/+=-]{1,200}$")


class PoolServer:
    """Serves ``/pool/acquire`` and ``/pool/release`` over one ``TokenPool``."""

    def __init__(self, pool: Any, *, token: str, host: str = "127.0.0.1", port: int = 0) -> None:
        if not token:
            raise ValueError("the pool server needs a non-empty token")
        register(token)
        self.pool = pool
        self._token = token.encode("utf-8")
        self._leases: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.granted: list[str] = []  # run ids in the order they got a token
        self.max_held = 0  # the most tokens held at once through this server
        try:
            self._server = ThreadingHTTPServer((host, port), self._handler())
        except socket.gaierror as exc:
            raise UsageError(
                f"the pool endpoint cannot listen on {host}:{port}: the host `{host}` does "
                f"not resolve ({exc.strerror or exc}); give `--host` a name or address of "
                "this machine, e.g. 127.0.0.1."
            ) from None
        except OSError as exc:
            raise UsageError(
                f"the pool endpoint cannot listen on {host}:{port}: {exc.strerror or exc}; "
                "choose another `--port`."
            ) from None
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The server's base URL."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> PoolServer:
        """Serve on a daemon thread; return self."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until ``stop()`` (from another thread or a signal)."""
        self._server.serve_forever(poll_interval=0.1)

    def stop(self) -> None:
        """Stop serving and release every token still held."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()
        with self._lock:
            leases = list(self._leases.values())
            self._leases.clear()
        for lease in leases:
            lease.release()

    def __enter__(self) -> PoolServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def held(self) -> list[str]:
        """Run ids holding a token through this server."""
        with self._lock:
            return sorted(self._leases)

    # -- requests ------------------------------------------------------------------------

    def acquire(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Handle ``/pool/acquire``."""
        run_id, agent = body.get("runId"), body.get("agent")
        if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
            return 400, {"ok": False, "error": "`runId` must be a short id string"}
        if not isinstance(agent, str) or not agent.strip() or len(agent) > 200:
            return 400, {"ok": False, "error": "`agent` must be a short, non-empty string"}
        try:
            wait = _seconds(body.get("waitSeconds"), 60.0, "waitSeconds")
            hold = body.get("holdSeconds")
            hold = _seconds(hold, 0.0, "holdSeconds") if hold is not None else None
        except ValueError as exc:
            return 400, {"ok": False, "error": str(exc)}
        with self._lock:
            if run_id in self._leases:  # a retried attempt of the same run
                return 200, {"ok": True, "runId": run_id, "waited_s": 0.0}
        engine_run = body.get("engineRunId")
        if isinstance(engine_run, str) and self._engine_holds(engine_run):
            # The engine's delegation already holds a token for this very task: a second
            # one would count the run twice (and, in a pool of one, wait forever).
            return 200, {"ok": True, "runId": run_id, "covered_by": engine_run, "waited_s": 0.0}
        try:
            lease = self.pool.acquire(
                run_id=run_id,
                agent=agent,
                timeout=wait,
                hold_for=hold,
            )
        except DelegationTimeoutError:
            return 503, {"ok": False, "error": f"no pool token within {wait:g} s"}
        except PoolRefusedError as exc:
            return 429, {"ok": False, "error": exc.message}
        with self._lock:
            if run_id in self._leases:  # two attempts raced: keep one token
                lease.release()
            else:
                self._leases[run_id] = lease
                self.granted.append(run_id)
                self.max_held = max(self.max_held, len(self._leases))
        return 200, {"ok": True, "runId": run_id, "waited_s": round(lease.waited_s, 3)}

    def _engine_holds(self, run_id: str) -> bool:
        """True when a token in the pool is held for the engine delegation ``run_id``."""
        if not _RUN_ID.match(run_id):
            return False
        status = self.pool.status()
        return any(t.get("run_id") == run_id for t in status.get("in_use", []))

    def release(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Handle ``/pool/release``."""
        run_id = body.get("runId")
        if not isinstance(run_id, str):
            return 400, {"ok": False, "error": "`runId` is required"}
        with self._lock:
            lease = self._leases.pop(run_id, None)
        if lease is not None:
            lease.release()
        return 200, {"ok": True, "released": lease is not None}

    def _authorized(self, header: str | None) -> bool:
        scheme, _, value = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode("utf-8"), self._token
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, data: dict[str, Any]) -> None:
                raw = json.dumps(data).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/health":
                    self._send(200, {"ok": True, "held": len(outer.held)})
                else:
                    self._other()

            def _other(self) -> None:
                """Any other method, or GET of a POST path: 405 (404 for an unknown path),
                JSON as every answer, and the request's body read so that the connection
                stays usable."""
                allowed = {"/health": "GET", "/pool/acquire": "POST", "/pool/release": "POST"}
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = 0
                if 0 < length <= _MAX_BODY:
                    self.rfile.read(length)
                elif length:
                    self.close_connection = True
                allow = allowed.get(self.path.split("?", 1)[0])
                if allow is None:
                    self._send(404, {"ok": False, "error": "not found"})
                    return
                raw = json.dumps(
                    {"ok": False, "error": f"{self.command} is not allowed on {self.path}: "
                     f"use {allow}"}
                ).encode("utf-8")  # fmt: skip
                self.send_response(405)
                self.send_header("Allow", allow)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(raw)

            do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _other  # noqa: N815

            def do_POST(self) -> None:  # noqa: N802
                if self.path not in ("/pool/acquire", "/pool/release"):
                    self._send(404, {"ok": False, "error": "not found"})
                    return
                if not outer._authorized(self.headers.get("Authorization")):
                    self._send(401, {"ok": False, "error": "Unauthorized"})
                    return
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = -1
                if not 0 <= length <= _MAX_BODY:
                    self._send(400, {"ok": False, "error": "bad Content-Length"})
                    return
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    body = None
                if not isinstance(body, dict):
                    self._send(400, {"ok": False, "error": "body must be a JSON object"})
                    return
                try:
                    if self.path == "/pool/acquire":
                        status, data = outer.acquire(body)
                    else:
                        status, data = outer.release(body)
                except Exception as exc:  # a bug must not leave the client without an answer
                    log.error("pool server: %s broke: %s", self.path, type(exc).__name__)
                    status, data = 500, {"ok": False, "error": "the pool server failed"}
                self._send(status, data)

        return Handler


def _seconds(value: Any, default: float, name: str) -> float:
    """``value`` in seconds, at most ``MAX_WAIT``; ``default`` when it is absent (None).

    Raises ``ValueError`` (one sentence naming ``name``) for anything but a finite number
    >= 0: a string, a boolean, a negative number, NaN or infinity."""
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value != value
        or value in (float("inf"), float("-inf"))
        or value < 0
    ):
        shown = json.dumps(value)[:40] if not isinstance(value, float) else repr(value)
        raise ValueError(f"`{name}` must be a number of seconds >= 0, not {shown}")
    return min(float(value), MAX_WAIT)
