"""The local gateway: an HTTP server speaking the OpenClaw hooks API, plus the receiver.

Example::

    with LocalGateway(cfg, token="s3cret") as gw:     # binds cfg.gateway.host:port
        httpx.post(f"{gw.url}/hooks/agent", json={"message": msg, "agentId": "webster"},
                   headers={"Authorization": "Bearer s3cret"})

``POST /hooks/agent`` answers ``{"ok": true, "runId": "gw-..."}`` at once and runs the
agent on a background thread (reused from run to run: no thread is started per task when
one is idle); with ``waitForCompletion`` the agent runs on the connection's own thread and
the answer comes when it ends. The agent (or, failing that, the gateway) writes the
handoff named in the message. ``POST /handoffs/{runId}`` lets agents on other hosts
deliver a handoff over HTTP. See docs/gateway.md.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import selectors
import signal
import socket
import socketserver
import threading
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import unquote

from engine.config import Config, GatewayAgentConfig, GatewayConfig
from engine.errors import ConfigError
from engine.gateway.agents import CommandRunner, completion_of, task_from_message
from engine.handoff import WRONG_KEY, unique_keys
from engine.redact import install_log_filter, redact, register
from engine.store import RunStore, open_store
from engine.workers import Workers

log = logging.getLogger("engine.gateway")
install_log_filter(log)

#: Largest request body accepted (413 above).
MAX_BODY = 1024 * 1024
#: Deepest nesting of arrays and objects accepted in a JSON body (400 above).
MAX_DEPTH = 64
#: Largest ``timeoutSeconds`` accepted: 30 days.
MAX_TIMEOUT = 30 * 24 * 3600.0
#: Longest string accepted in the optional string fields of ``/hooks/agent``.
MAX_FIELD = 1024
#: Longest ``Idempotency-Key`` accepted.
MAX_IDEMPOTENCY_KEY = 256
#: How many Idempotency-Key values are remembered (oldest forgotten first).
IDEMPOTENCY_LIMIT = 10_000
#: Handoffs the receiver stores per run (the first, then copies beside it); more: 409.
MAX_HANDOFFS_PER_RUN = 8
#: Seconds an idle keep-alive connection is kept open.
IDLE_TIMEOUT = 300.0

_Answer = tuple[int, dict[str, Any]]
_AGENT_REQUIRED = "agentId is required when multiple agents are configured"
_HOOK_PATHS = ("/hooks/agent", "/hooks/wake")
_JSON = "application/json"


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer without the reverse DNS lookup, tracking its open connections."""

    daemon_threads = True
    request_queue_size = 128
    gateway: LocalGateway

    def __init__(self, address: tuple[str, int], gateway: LocalGateway) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.gateway = gateway
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        # before binding: a failed bind calls server_close, which closes the pipe too
        self._wake_r, self._wake_w = os.pipe()  # not inherited by agents (PEP 446)
        self._stop_requested = False
        self._served = threading.Event()
        super().__init__(address, _Handler)

    def serve(self) -> None:
        """Accept connections until ``stop_serving``: ``serve_forever`` without its poll
        interval. A stop wakes the loop at once through a pipe; ``shutdown()`` waited for
        the next poll (up to 0.1 s, most of a short run's own shutdown)."""
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(self, selectors.EVENT_READ)
                sel.register(self._wake_r, selectors.EVENT_READ)
                while not self._stop_requested:
                    for key, _ in sel.select():
                        if key.fileobj is self and not self._stop_requested:
                            self._handle_request_noblock()  # type: ignore[attr-defined]  # what serve_forever calls
        finally:
            self._served.set()

    def stop_serving(self, timeout: float = 5.0) -> None:
        """End ``serve`` and wait for it (at most ``timeout`` s)."""
        self._stop_requested = True
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass
        self._served.wait(timeout)

    def server_close(self) -> None:
        super().server_close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a DNS lookup that can stall.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.conn_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away is normal; anything else is one redacted log line."""
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return
        log.error(
            "local gateway: request from %s broke: %s: %s",
            client_address[0] if client_address else "?",
            type(exc).__name__,
            redact(str(exc))[:200],
        )

    def close_connections(self) -> None:
        """Shut down every open keep-alive connection so its handler thread ends."""
        with self.conn_lock:
            conns = list(self.connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    """One connection; requests are dispatched to the gateway's endpoint methods."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = IDLE_TIMEOUT
    server_version = "orchestrator-local-gateway"
    sys_version = ""
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        # Request lines are not logged: they cost time and headers may hold a token.
        return

    # -- responses ---------------------------------------------------------------------

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = _JSON,
        headers: dict[str, str] | None = None,
        close: bool = False,
    ) -> None:
        self.send_response_only(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if close:
            self.send_header("Connection", "close")
        # Head and body in one write: written apart (Nagle is off) they are two segments,
        # and the client's reader may wake for the head only and block again for the body.
        if self.request_version == "HTTP/0.9":  # no head at all
            self.wfile.write(body)
            return
        head: list[bytes] = self._headers_buffer  # type: ignore[attr-defined]
        head.append(b"\r\n" + body)
        self.flush_headers()

    def _json(self, status: int, data: dict[str, Any], close: bool = False) -> None:
        body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self._send(status, body, close=close)

    def _error(self, status: int, message: str, close: bool = False, **extra: Any) -> None:
        self._json(status, {"ok": False, "error": message, **extra}, close=close)

    # -- routing -----------------------------------------------------------------------

    def _route(self) -> tuple[str, bool]:
        """The request path without its query string, and whether it had one."""
        path, sep, _ = self.path.partition("?")
        return path, bool(sep)

    def _refuse(self, path: str) -> None:
        """405 with the right ``Allow`` on a known path, 404 elsewhere."""
        if path == "/health":
            allow = "GET"
        elif path in _HOOK_PATHS or path.startswith("/handoffs/"):
            allow = "POST"
        else:
            self._send(404, b"Not Found", "text/plain", close=True)
            return
        self._send(405, b"Method Not Allowed", "text/plain", {"Allow": allow}, close=True)

    def do_GET(self) -> None:
        """Serve ``/health``; hooks and receiver paths are POST only."""
        path, _ = self._route()
        if path == "/health":
            self._json(200, self.server.gateway._health())
        else:
            self._refuse(path)

    def do_PUT(self) -> None:
        """Every other method: 405 on known paths, 404 elsewhere."""
        self._refuse(self._route()[0])

    do_DELETE = do_PATCH = do_PUT

    def do_POST(self) -> None:
        """Serve the hooks API and the handoff receiver."""
        path, has_query = self._route()
        if path not in _HOOK_PATHS and not path.startswith("/handoffs/"):
            self._refuse(path)
            return
        if has_query:
            self._error(400, "query strings are not accepted: send the token in a header", True)
            return
        if not self.server.gateway._authorized(self.headers):
            self._send(401, b"Unauthorized", "text/plain", close=True)
            return
        body = self._read_body()
        if body is None:
            return
        gw = self.server.gateway
        try:
            if path == "/hooks/agent":
                status, data, job = gw._hook_agent(body, self.headers.get("Idempotency-Key"))
            elif path == "/hooks/wake":
                (status, data), job = gw._hook_wake(body), None
            else:
                (status, data), job = gw._receive_any(path[len("/handoffs/") :], body), None
        except Exception as exc:  # a bug must not leave the client without an answer
            log.error("local gateway: %s broke: %s: %s", path, type(exc).__name__, exc)
            self._error(500, "the local gateway failed to handle this request", True)
            return
        if job is not None and job.ended is not None:  # waitForCompletion: answer at the end
            gw._run_here(job)  # on this connection's thread: no thread, no hand-over
            try:
                self._json(status, {**data, "completion": job.ended.wait()})
            except OSError:  # the caller stopped waiting (it had the handoff already)
                self.close_connection = True
            return
        try:
            self._json(status, data)
        finally:
            if job is not None:  # even if the client went away: the run is accepted
                gw._launch(job)

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() not in ("", "identity"):
            self._error(411, "send the body with a Content-Length", True)
            return None
        raw = self.headers.get("Content-Length", "0")
        try:
            length = int(raw)
        except ValueError:
            length = -1
        if length < 0:
            self._error(400, "invalid Content-Length", True)
            return None
        if length > MAX_BODY:
            self._error(413, f"body larger than {MAX_BODY} bytes: send less", True)
            return None
        return self.rfile.read(length) if length else b""


class LocalGateway:
    """A local stand-in for an OpenClaw gateway: hooks API, command agents, receiver.

    Example::

        gw = LocalGateway(cfg, token=token, port=0).start()
        try:
            print(gw.url)          # http://127.0.0.1:41234
        finally:
            gw.stop()
    """

    def __init__(
        self,
        cfg: Config,
        *,
        token: str,
        host: str | None = None,
        port: int | None = None,
        detach_on_stop: bool = False,
        store: RunStore | None = None,
    ) -> None:
        if not token:
            raise ValueError("the local gateway needs a non-empty token")
        #: On ``stop()``, leave running command agents to watchdogs instead of killing them
        #: (the embedded gateway of a one-shot command: see ``CommandRunner.detach_all``).
        self.detach_on_stop = detach_on_stop
        self.cfg = cfg
        #: Where the receiver (``POST /handoffs/{runId}``) keeps and delivers handoffs.
        self.store: RunStore = store if store is not None else open_store(cfg)
        self.gw_cfg: GatewayConfig = cfg.gateway or GatewayConfig()
        self.host = host if host is not None else self.gw_cfg.host
        self.port = port if port is not None else self.gw_cfg.port
        register(token)
        self._token = token.encode("utf-8")
        self.agents: dict[str, GatewayAgentConfig] = dict(self.gw_cfg.agents)
        self._agent_names = sorted(self.agents)
        workspaces = self.gw_cfg.workspaces_dir or (cfg.handoffs_dir / ".workspaces")
        self._runner = CommandRunner(
            Path(workspaces),
            kill_after=self.gw_cfg.kill_after,
            retention=self.gw_cfg.workspace_retention,
            config_path=cfg.path,
        )
        self._lock = threading.Lock()
        self._idempotency: OrderedDict[str, str] = OrderedDict()
        # handoffs stored per run id by the receiver (the last IDEMPOTENCY_LIMIT runs):
        # the digest of each (``_digest``) and the answer it got (None while storing)
        self._received: OrderedDict[str, dict[str, _Answer | None]] = OrderedDict()
        self._dispatched = dict.fromkeys(self.agents, 0)
        self._inflight = dict.fromkeys(self.agents, 0)
        self._max_inflight = dict.fromkeys(self.agents, 0)
        self._total_inflight = 0
        self._max_total = 0
        self._threads: set[threading.Thread] = set()  # threads running an agent now
        self._workers = Workers("local-gateway-agent")
        self._server: _Server | None = None
        self._serve_thread: threading.Thread | None = None
        self._stopping = False
        self._stopped = threading.Event()

    def __repr__(self) -> str:
        where = self.url if self._server else "not started"
        return f"<LocalGateway {where} agents={self._agent_names}>"

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> LocalGateway:
        """Bind the address and serve on a daemon thread; return self."""
        if self._stopping:
            raise RuntimeError("this LocalGateway was stopped; create a new one")
        if self._server is not None:
            return self
        from engine.gateway.agents import check_timeout_env

        check_timeout_env()  # $TIMEOUT is read by this process's agents: refuse a bad one
        self._server = self._bind()
        self._serve_thread = threading.Thread(
            target=self._server.serve,
            name=f"local-gateway:{self._server.server_port}",
            daemon=True,
        )
        self._serve_thread.start()
        return self

    def _bind(self) -> _Server:
        """Bind the address, turning a failure into one ConfigError saying what to do."""
        where = f"{self.host}:{self.port}"
        if ":" in self.host:
            where = f"[{self.host}]:{self.port}"
        try:
            return _Server((self.host, self.port), self)
        except socket.gaierror as exc:
            reason = (
                f"the host `{self.host}` does not resolve ({exc.strerror or exc}): set "
                "`gateway.host` (or `--host`) to a name or address of this machine, e.g. "
                "127.0.0.1"
            )
        except OverflowError:
            reason = "the port is out of range: use 0 to 65535 (0 takes a free port)"
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                reason = (
                    "the address is already in use (another gateway, or another program, "
                    "listens there): stop it, choose another `gateway.port` (or `--port`), "
                    "or use port 0 to take a free one"
                )
            elif exc.errno in (errno.EACCES, errno.EPERM):
                reason = (
                    "permission denied (ports below 1024 need privileges): choose a port "
                    "of 1024 or more, or 0 to take a free one"
                )
            elif exc.errno == errno.EADDRNOTAVAIL:
                reason = (
                    f"`{self.host}` is not an address of this machine: set `gateway.host` "
                    "(or `--host`) to one of its addresses, e.g. 127.0.0.1"
                )
            else:
                reason = f"{exc.strerror or exc}: check `gateway.host` and `gateway.port`"
        raise ConfigError(
            f"the local gateway cannot listen on {where}: {reason}.", path=self.cfg.path
        )

    @property
    def url(self) -> str:
        """The base URL clients use, e.g. ``http://127.0.0.1:41234``."""
        if self._server is None:
            raise RuntimeError("the local gateway is not started")
        host = self._server.server_name
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._server.server_port}"

    def end_runs(self, run_ids: Collection[str]) -> list[int]:
        """End the command agents running the delegations ``run_ids`` (SIGTERM, then
        SIGKILL: ``CommandRunner.end_runs``); the pids signalled. ``workflow cancel`` uses it."""
        return self._runner.end_runs(run_ids)

    def stop(self) -> None:
        """Stop serving, kill every running agent process group and join threads; idempotent."""
        with self._lock:
            if self._stopping:
                already = True
            else:
                already = False
                self._stopping = True
        if already:
            self._stopped.wait(10.0)
            return
        try:
            server = self._server
            if server is not None:
                server.stop_serving()
                server.server_close()
                server.close_connections()
            if self.detach_on_stop:
                self._runner.detach_all()
            self._runner.kill_all()
            with self._lock:
                threads = list(self._threads)
            for t in threads:
                if t is not threading.current_thread():
                    t.join(timeout=5.0)
            self._workers.close()
            if self._serve_thread is not None:
                self._serve_thread.join(timeout=5.0)
        finally:
            self._stopped.set()

    def serve_forever(self) -> None:
        """Serve until ``stop()`` is called or the process gets Ctrl-C or SIGTERM (blocking)."""
        self.start()
        previous: Any = None
        in_main = threading.current_thread() is threading.main_thread()

        def _on_term(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt

        if in_main:
            previous = signal.signal(signal.SIGTERM, _on_term)
        try:
            while not self._stopped.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            if in_main:
                signal.signal(signal.SIGTERM, previous)
            self.stop()

    def __enter__(self) -> LocalGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        """Counts per agent: dispatched, in flight now, most in flight at once; and the total."""
        with self._lock:
            return {
                "dispatched": dict(self._dispatched),
                "inflight": dict(self._inflight),
                "max_inflight": dict(self._max_inflight),
                "max_inflight_total": self._max_total,
            }

    # -- endpoints (called by the handler) ---------------------------------------------

    def _authorized(self, headers: Any) -> bool:
        auth = headers.get("Authorization")
        if auth is not None:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                value.strip().encode("utf-8"), self._token
            ):
                return True
        other = headers.get("x-openclaw-token")
        if other is not None:
            return hmac.compare_digest(other.strip().encode("utf-8"), self._token)
        return False

    def _health(self) -> dict[str, Any]:
        with self._lock:
            inflight = self._total_inflight
        return {"ok": True, "agents": self._agent_names, "inflight": inflight}

    def _hook_wake(self, body: bytes) -> tuple[int, dict[str, Any]]:
        mode = "now"
        if body.strip():
            data, problem = _parse_json(body)
            if problem:
                return 400, {"ok": False, "error": problem}
            if isinstance(data, dict) and data.get("mode") == "next-heartbeat":
                mode = "next-heartbeat"
        return 200, {"ok": True, "mode": mode}

    def _hook_agent(
        self, body: bytes, idem_key: str | None
    ) -> tuple[int, dict[str, Any], _Job | None]:
        """``POST /hooks/agent``: the answer, and the accepted run to start (or None)."""
        data, refusal = self._agent_request(body, idem_key)
        if refusal is not None:
            return *refusal, None
        agent, refusal = self._agent_for(data.get("agentId"))
        if refusal is not None:
            return *refusal, None
        return self._admit(agent, data, idem_key)

    def _agent_request(
        self, body: bytes, idem_key: str | None
    ) -> tuple[dict[str, Any], tuple[int, dict[str, Any]] | None]:
        """The request's JSON object, or the 400 refusing it (key, JSON, message, fields)."""
        if idem_key is not None and len(idem_key) > MAX_IDEMPOTENCY_KEY:
            return {}, (400, _err(f"Idempotency-Key longer than {MAX_IDEMPOTENCY_KEY} characters"))
        data, problem = _parse_json(body)
        if problem:
            return {}, (400, _err(problem))
        if not isinstance(data, dict):
            return {}, (400, _err("body must be a JSON object"))
        message = data.get("message")
        if not isinstance(message, str) or not message.strip():
            return {}, (400, _err("message required"))
        problem = _field_problem(data)
        return data, ((400, _err(problem)) if problem else None)

    def _agent_for(self, agent_id: Any) -> tuple[str, tuple[int, dict[str, Any]] | None]:
        """The agent a request names (or the only one), or the 404/400 refusing it."""
        if agent_id is not None and agent_id != "":
            if agent_id in self.agents:
                return str(agent_id), None
            shown = json.dumps(agent_id, ensure_ascii=False)
            if len(shown) > 100:
                shown = shown[:100] + "..."
            return "", (404, _err(f"unknown agentId {shown}"))
        if len(self.agents) == 1:
            return self._agent_names[0], None
        if not self.agents:
            return "", (404, _err("no agents are configured on this gateway"))
        return "", (400, _err(_AGENT_REQUIRED))

    def _admit(
        self, agent: str, data: dict[str, Any], idem_key: str | None
    ) -> tuple[int, dict[str, Any], _Job | None]:
        """Count the run in and give it an id (the known one for a repeated Idempotency-Key)."""
        timeout = data.get("timeoutSeconds")
        with self._lock:
            if self._stopping:
                return 503, _err("the local gateway is stopping"), None
            known = self._idempotency.get(idem_key) if idem_key else None
            if known is not None:
                return 200, {"ok": True, "runId": known}, None
        earlier = self._earlier_run(agent, idem_key)
        with self._lock:
            if self._stopping:
                return 503, _err("the local gateway is stopping"), None
            known = self._idempotency.get(idem_key) if idem_key else None
            if known is None and earlier is not None and idem_key:
                known = self._idempotency[idem_key] = str(earlier["gateway_run_id"])
                if data.get("waitForCompletion") is not True:
                    return 200, {"ok": True, "runId": known}, None
                self._count_in(agent)  # held: answered when that agent's process ends
                job = _Job(agent, known, data["message"], None, _RunEnd(), None, idem_key)
                job.earlier = earlier
                return 200, {"ok": True, "runId": known}, job
            if known is not None:
                return 200, {"ok": True, "runId": known}, None
            run_id = f"gw-{secrets.token_hex(8)}"
            if idem_key:
                self._idempotency[idem_key] = run_id
                if len(self._idempotency) > IDEMPOTENCY_LIMIT:
                    self._idempotency.popitem(last=False)
            self._dispatched[agent] = self._dispatched.get(agent, 0) + 1
            self._count_in(agent)
        ended = _RunEnd() if data.get("waitForCompletion") is True else None
        timeout_s = float(timeout) if timeout else None
        session = data.get("sessionKey") or None
        job = _Job(agent, run_id, data["message"], timeout_s, ended, session, idem_key)
        return 200, {"ok": True, "runId": run_id}, job

    def _count_in(self, agent: str) -> None:
        """One more run of ``agent`` in flight (the caller holds ``_lock``)."""
        n = self._inflight[agent] = self._inflight.get(agent, 0) + 1
        self._max_inflight[agent] = max(self._max_inflight.get(agent, 0), n)
        self._total_inflight += 1
        self._max_total = max(self._max_total, self._total_inflight)

    def _count_out(
        self, agent: str, ended: _RunEnd | None, completion: dict[str, Any]
    ) -> None:
        """A run of ``agent`` has ended (``_count_in``'s counterpart, on the run's own
        thread): one fewer in flight, and whoever holds its POST gets ``completion``."""
        with self._lock:
            self._inflight[agent] -= 1
            self._total_inflight -= 1
            self._threads.discard(threading.current_thread())
        if ended is not None:
            ended.set(completion)

    def _earlier_run(self, agent: str, idem_key: str | None) -> dict[str, Any] | None:
        """The run of a command agent that an earlier gateway on the same workspaces
        started for ``idem_key`` (``CommandRunner.earlier_run``), or None."""
        if not idem_key or self.agents[agent].kind != "command":
            return None
        return self._runner.earlier_run(agent, idem_key)

    def _launch(self, job: _Job) -> None:
        """Run ``job`` on an idle worker thread (a new one if none is idle); called after
        the response is sent, so the answer is immediate."""
        self._workers.submit(lambda: self._run_here(job))

    def _run_here(self, job: _Job) -> None:
        """Run ``job`` on the calling thread, which ``stop()`` joins meanwhile."""
        me = threading.current_thread()
        with self._lock:
            self._threads.add(me)
        if job.earlier is not None:
            self._wait_earlier(job)
            return
        self._run_task(job)

    def _wait_earlier(self, job: _Job) -> None:
        """Hold a repeated key's answer until the process an earlier gateway started for
        it ends (``CommandRunner.wait_for``); nothing is started."""
        completion = {"status": "error", "error": "the local gateway broke waiting for the agent"}
        try:
            if job.earlier is not None:
                completion = self._runner.wait_for(job.earlier)
        finally:
            self._count_out(job.agent, job.ended, completion)

    def _run_task(self, job: _Job) -> None:
        """Run ``job``'s agent on the calling thread; its count ends and its held answer is
        given (``_count_out``) whatever happens, a bug included (logged, not raised)."""
        agent, run_id = job.agent, job.run_id
        task = None
        completion = {"status": "error", "error": "the local gateway broke running the agent"}
        try:
            spec = self.agents[agent]
            task = task_from_message(run_id, agent, job.message, job.timeout, job.session_key)
            if spec.kind == "echo":
                _echo(task)
                completion = {"status": "ok"}
                return
            elif spec.kind == "openai":
                from engine.gateway.models import run_model_agent

                run_model_agent(spec, task, self.cfg)
                completion = {"status": "ok"}
                return
            outcome = self._runner.run(spec, task, job.idem_key)
            completion = completion_of(outcome, task.handoff_key)
            if outcome.returncode != 0:
                log.info(
                    "local gateway: %s run %s ended (exit %s%s)",
                    agent,
                    run_id,
                    outcome.returncode,
                    ", timed out" if outcome.timed_out else "",
                )
        except Exception as exc:  # a bug here must not take the server down
            log.exception("local gateway: run %s on %s broke", run_id, agent)
            if task is not None:  # the engine must not wait for its whole timeout
                _broke(task, f"the local gateway broke running the agent: {type(exc).__name__}")
        finally:
            self._count_out(agent, job.ended, completion)

    def _receive_any(self, tail: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """``/handoffs/{runId}``: a handoff; ``/handoffs/{runId}/progress``: a progress line."""
        run_id, sep, rest = tail.partition("/")
        if not sep:
            return self._receive(tail, body)
        if rest != "progress":
            return 404, {"ok": False, "error": "unknown receiver path"}
        return self._progress(run_id, body)

    def _progress(self, raw_id: str, body: bytes) -> tuple[int, dict[str, Any]]:
        from engine.errors import OrchestratorError
        from engine.files import check_id
        from engine.liveness import ProgressRefused, report_progress

        run_id = unquote(raw_id)
        try:
            check_id(run_id, "run id")
        except OrchestratorError as exc:
            return 400, {"ok": False, "error": exc.message}
        data, problem = _parse_json(body)
        if problem:
            return 400, _err(problem)
        text = data.get("text") if isinstance(data, dict) else None
        key = data.get("key") if isinstance(data, dict) else None
        if not isinstance(text, str) or not isinstance(key, str | None):
            return 400, {"ok": False, "error": _PROGRESS_BODY}
        in_sub = self.store.read_pending(run_id, sub=True) is not None
        try:
            report_progress(self.store, run_id, text, key=key, sub=in_sub)
        except ProgressRefused as exc:
            return {"unknown": 404}.get(exc.kind, 403), {"ok": False, "error": exc.message}
        except OrchestratorError as exc:
            return 400, {"ok": False, "error": exc.message}
        except OSError:
            return 500, {"ok": False, "error": "cannot store the progress line"}
        return 200, {"ok": True}

    def _receive(self, raw_id: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """``POST /handoffs/{runId}``: store the handoff in the inbox, then deliver it
        through the one merge rule (``RunStore.deliver``), late or not."""
        run_id = unquote(raw_id)
        checked = self._checked_handoff(run_id, body)
        if isinstance(checked, tuple):
            return checked
        store = self.store
        in_sub = store.is_sub(run_id)
        env = self._envelope(run_id, in_sub)
        if env is None:
            return _nobody_waits(run_id)
        key_problem = self._key_problem(run_id, checked, in_sub, env)
        if key_problem is not None:  # before the count: a forger cannot use up the cap
            return _key_refusal(run_id, key_problem)
        digest = _digest(checked)
        refusal = self._over_cap(run_id, digest)
        if refusal is not None:
            return refusal
        answer: _Answer = 500, {"ok": False, "error": "cannot store the handoff"}
        try:
            waiting_before = store.has_handoff(run_id, sub=in_sub)
            store.put_handoff(run_id, checked, sub=in_sub)
            got = store.deliver(run_id, sub=in_sub)
            answer = _delivery_answer(run_id, got, checked, waiting_before)
        except (OSError, ValueError) as exc:
            log.warning("local gateway: cannot store the handoff of %s: %s", run_id, exc)
        finally:  # whatever ended it (a lost store too), the mark "storing" does not stay
            with self._lock:
                seen = self._received.get(run_id)
                if seen is not None and answer[0] == 500:
                    seen.pop(digest, None)  # not stored: sending it again may work
                elif seen is not None:
                    seen[digest] = answer
        return answer

    def _envelope(self, run_id: str, in_sub: bool) -> dict[str, Any] | None:
        """The run's envelope here: the pending one, else its record's; None when
        neither exists (read once per handoff, for ``_unwanted`` and ``_key_problem``)."""
        store = self.store
        env = store.read_pending(run_id, sub=in_sub)
        if env is None:
            record = store.read(run_id, sub=in_sub)
            env = record.get("envelope") if record is not None else None
            if record is not None and not isinstance(env, dict):
                env = {}  # a record without a usable envelope: known, no key to check
        return env

    def _over_cap(self, run_id: str, digest: str) -> _Answer | None:
        """The answer to a handoff this gateway stored for the run already (the same
        ``digest``: a client sending it again; nothing more is stored), 409 once the run
        has had ``MAX_HANDOFFS_PER_RUN`` handoffs stored by this gateway (each is kept, and
        the bound keeps a client that loops from filling the disk), else None and this
        one is counted. Only handoffs whose key verified (or, under ``handoff_key:
        optional``, was accepted) reach here: a forged one does not count, so it cannot
        block the real one (docs/protocol.md, section 3)."""
        with self._lock:
            seen = self._received.pop(run_id, {})
            self._received[run_id] = seen
            if len(self._received) > IDEMPOTENCY_LIMIT:
                self._received.popitem(last=False)
            if digest in seen:
                return seen[digest] or (200, {"ok": True})  # None: the first is storing
            if len(seen) < MAX_HANDOFFS_PER_RUN:
                seen[digest] = None
                return None
        return 409, {  # 409, not 429: sending it again cannot help
            "ok": False,
            "error": f"run `{run_id}` has had {MAX_HANDOFFS_PER_RUN} handoffs stored "
            "by this gateway already; no more are kept for it (`orchestrate show "
            f"{run_id}` lists them); nothing was stored.",
            "runId": run_id,
        }

    def _checked_handoff(self, run_id: str, body: bytes) -> Any:
        """The handoff in ``body`` once its run id, size, JSON and fields pass; else the
        ``(status, answer)`` to send (400, or 413 over ``max_handoff_bytes``)."""
        from engine.errors import InvalidIdError
        from engine.files import check_id
        from engine.handoff import HandoffProblem, validate_handoff

        try:
            check_id(run_id, "run id")
        except InvalidIdError as exc:
            return 400, {"ok": False, "error": exc.message}
        cap = self.cfg.max_handoff_bytes
        if len(body) > cap:
            return 413, {
                "ok": False,
                "error": f"the handoff has {len(body)} bytes, over the limit of {cap} "
                "(`max_handoff_bytes`); put long results in an artifact file",
            }
        data, parse_problem = _parse_json(body)
        if parse_problem:
            return 400, _err(parse_problem)
        target = self.store.handoff_target(run_id, sub=self.store.is_sub(run_id))
        if isinstance(data, dict) and "envelope" in data:
            return 400, {
                "ok": False,
                "error": "`/envelope` is added by the engine when it records a handoff; "
                "leave it out",
            }
        try:
            # the rule a file's handoff meets (``check_delivered``): under `optional`
            # keys, an old agent's timestamp without a zone is read as UTC
            naive = self.cfg.handoff_key == "optional"
            validate_handoff(data, path=target, run_id=run_id, naive_utc=naive)
        except HandoffProblem as exc:
            return 400, {"ok": False, "error": exc.message, "problems": exc.problems}
        return data

    def _key_problem(
        self, run_id: str, data: Any, in_sub: bool, env: dict[str, Any] | None
    ) -> Any:
        """The ``HandoffProblem`` of ``data``'s key against the run's envelope (pending, or
        its record's: ``_envelope``), or None when it matches or no envelope is known."""
        from engine.handoff import HandoffProblem, check_keys

        store = self.store
        if not env:
            return None
        try:
            # a delegation sent again keeps its earlier keys' hashes: the agent may hold one
            check_keys(data, env, path=store.handoff_target(run_id, sub=in_sub))
            return None
        except HandoffProblem as exc:
            return exc


def _nobody_waits(run_id: str) -> tuple[int, dict[str, Any]]:
    """404 for a run with neither a pending envelope nor a record here (nobody waits for
    it, as ``orchestrate handoff write`` refuses); nothing is stored."""
    return 404, {
        "ok": False,
        "error": f"no delegation `{run_id}` is waiting for a handoff here (no pending "
        "envelope and no record): check the run id against the task message's "
        "`run_id:` line; nothing was stored.",
        "runId": run_id,
    }


def _key_refusal(run_id: str, problem: Any) -> tuple[int, dict[str, Any]]:
    """403 for a handoff whose key is wrong or missing (``HandoffProblem`` of kind
    ``key`` or ``unkeyed``): nothing is stored or counted, and the caller keeps waiting."""
    if problem.kind == "key":
        message = (
            f"handoff for run `{run_id}` refused: {WRONG_KEY} (forged or misdirected); "
            "nothing was stored and the caller keeps waiting."
        )
    else:
        message = f"{problem.message} Nothing was stored."
    return 403, {"ok": False, "error": message, "problems": problem.problems}


def _delivery_answer(
    run_id: str, got: Any, handoff: dict[str, Any], waiting_before: bool
) -> _Answer:
    """The answer to a stored ``handoff``: 403/400 refused, 409 kept aside (the run is
    recorded from another handoff, or another one was waiting in the inbox before it:
    ``waiting_before``), 200 recorded (``late`` when it came after the end) or waiting
    for its caller."""
    if got.state == "refused":
        problem = got.problem
        if problem is None:
            return 400, _err(f"the handoff of run `{run_id}` was refused and kept aside")
        return 403 if problem.kind in ("key", "unkeyed") else 400, {
            "ok": False,
            "error": problem.message,
            "problems": problem.problems,
        }
    if got.state == "duplicate":
        return 409, {
            "ok": False,
            "error": f"run `{run_id}` is already recorded from another handoff; yours was "
            f"kept as `{got.kept}` and listed in the record",
        }
    theirs = got.state == "recorded" and not _is_record_of(got.record, handoff)
    if theirs or (got.state == "waiting" and waiting_before):
        return 409, {
            "ok": False,
            "error": f"run `{run_id}` already had a handoff waiting to be recorded; it was "
            "not replaced: yours was kept aside, and the record lists it "
            f"(`orchestrate show {run_id}`)",
        }
    if got.state == "recorded" and got.record is not None:
        late = bool(got.record["envelope"].get("late"))
        return 200, {"ok": True, "recorded": str(got.record_path), "late": late}
    return 200, {"ok": True}


def _is_record_of(record: dict[str, Any] | None, handoff: dict[str, Any]) -> bool:
    """True when ``record`` (a final record: handoff fields + ``envelope``) was made from
    ``handoff``: its fields are the handoff's as ``engine.record.record_of`` copies them
    (without the key, masked). The stamp and the version are left out: delivery may
    normalise them (an old agent's zoneless timestamp read as UTC, ``check_delivered``)."""
    from engine.record import record_of

    if record is None:
        return False
    mine = record_of(handoff, {}, str(handoff.get("runId")))
    skip = ("envelope", "timestamp", "schemaVersion")
    return all(record.get(k) == v for k, v in mine.items() if k not in skip)


def _digest(handoff: dict[str, Any]) -> str:
    """SHA-256 of ``handoff`` as canonical JSON (keys sorted): the same handoff sent again,
    however its keys were ordered, has the same digest."""
    text = json.dumps(handoff, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(slots=True)
class _Job:
    """One accepted run of an agent: what ``_run_task`` needs."""

    agent: str
    run_id: str
    message: str
    timeout: float | None
    #: Set: the caller waits for the end (``waitForCompletion``).
    ended: _RunEnd | None
    #: The request's ``sessionKey``, if any.
    session_key: str | None = None
    #: The request's Idempotency-Key, if any.
    idem_key: str | None = None
    #: Set: an earlier gateway started this key's run (its ``RUN_FILE``); it is waited
    #: for, not started again.
    earlier: dict[str, Any] | None = None


class _RunEnd:
    """The end of one run, for a hooks answer held with ``waitForCompletion``."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._completion: dict[str, str] = {"status": "error", "error": "not finished"}

    def set(self, completion: dict[str, str]) -> None:
        self._completion = completion
        self._event.set()

    def wait(self) -> dict[str, str]:
        self._event.wait()
        return self._completion


def _task_handoff(
    task: Any, status: str, result: str, confidence: str, **more: Any
) -> dict[str, Any]:
    """The handoff the gateway writes itself for ``task`` (its run id and agent)."""
    from engine.handoff import make_handoff

    agent = task.handoff_agent or task.agent
    return make_handoff(
        run_id=task.run_id, agent=agent, status=status, result=result, confidence=confidence, **more
    )


def _echo(task: Any) -> None:
    """The in-process `echo` agent: answers at once with the task text (benchmarks, tests)."""
    from engine.files import write_json_atomic

    if task.handoff_path is None or task.run_id is None:
        return
    text = f"echo: {task.text[:2000]}"
    data = _task_handoff(task, "complete", text, "high", key=task.handoff_key)
    write_json_atomic(task.handoff_path, data, fresh=True)  # an agent's file: written once


def _broke(task: Any, reason: str) -> None:
    """Leave a ``failed`` handoff for a run the gateway itself failed on (never replacing)."""
    from engine.gateway.agents import records_of, write_new_handoff
    from engine.handoff import GATEWAY_NOTE_PREFIX, HandoffProblem
    from engine.record import reconcile

    if task.handoff_path is None or task.run_id is None:
        return
    # A stand-in: the merge rule tells it by this note.
    data = _task_handoff(task, "failed", reason, "low", notes=GATEWAY_NOTE_PREFIX)
    try:
        write_new_handoff(task.handoff_path, data)
        reconcile(records_of(task.handoff_path))
    except (HandoffProblem, OSError) as exc:
        log.warning("local gateway: cannot write the handoff of %s: %s", task.run_id, exc)


_PROGRESS_BODY = 'send {"text": "what you are doing", "key": "the key of the task message"}'


def _err(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def _json_reason(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} (line {exc.lineno}, column {exc.colno})"
    return str(exc)[:200]


def _no_constant(name: str) -> Any:
    raise ValueError(f"`{name}` is not a JSON number")


def _parse_json(body: bytes) -> tuple[Any, str | None]:
    """The parsed body, or the reason it is refused (not JSON, NaN/Infinity, too deep)."""
    try:
        data = json.loads(body, parse_constant=_no_constant, object_pairs_hook=unique_keys)
    except RecursionError:
        return None, f"body nests arrays or objects deeper than {MAX_DEPTH} levels"
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, a huge integer
        return None, f"body is not valid JSON: {_json_reason(exc)}"
    if too_deep(data):
        return None, f"body nests arrays or objects deeper than {MAX_DEPTH} levels"
    return data, None


def too_deep(data: Any) -> bool:
    """True when ``data`` (a parsed JSON value) nests arrays or objects deeper than
    ``MAX_DEPTH`` levels (iterative: no recursion limit). The receiver refuses such a
    body; ``orchestrate handoff write --data`` refuses the same value before sending."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


_STRING_FIELDS = ("name", "agentId", "sessionKey", "channel", "model", "thinking")


def _field_problem(data: dict[str, Any]) -> str | None:
    """Why an optional field of ``/hooks/agent`` is refused (type, size, range), or None."""
    for key in _STRING_FIELDS:
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            return f"{key} must be a string"
        if len(value) > MAX_FIELD:
            return f"{key} must be at most {MAX_FIELD} characters"
    deliver = data.get("deliver")
    if deliver is not None and not isinstance(deliver, bool):
        return "deliver must be true or false"
    timeout = data.get("timeoutSeconds")
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        return "timeoutSeconds must be a positive number"  # NaN fails `> 0` too
    # An int too big for a float is refused here before float() could overflow.
    if not timeout <= MAX_TIMEOUT or not math.isfinite(timeout):
        return f"timeoutSeconds must be finite and at most {MAX_TIMEOUT:.0f} (30 days)"
    return None
