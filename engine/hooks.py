"""The OpenClaw hooks API client: ``POST {url}/hooks/agent`` with retries and backoff.

One client per process keeps its connections alive (creating one per request costs 40-60x
a keep-alive POST). Plain ``http://`` gateways (the local gateway, OpenClaw on loopback)
are sent to over ``http.client`` connections kept in a small pool: about half the CPU of
an ``httpx`` POST, no ``httpx`` import (50-80 ms) and no TLS context (20-80 ms) when no
gateway needs them, and no pool scan per request (``httpcore`` scans every connection for
every request, which grew with the steps in flight). ``https://`` gateways, and a client
given a ``transport`` (tests), go through one ``httpx.Client``. Transient failures
(connection errors, timeouts, 429, 5xx) are retried with exponential backoff plus
jitter, never past the delegation's deadline; 400, 401, 403 and 404 fail at once with a
message that says what to fix. The token is sent in a header and never appears in any
message this module produces: every error text (the gateway's own body included, which
may echo the request's headers) is redacted here.
"""

from __future__ import annotations

import json
import random
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from engine.config import RetryPolicy
from engine.errors import HookError, HookUnreachableError
from engine.redact import redact, register, register_url
from engine.retry import Backoff, GiveUp, _attempt_timeout, json_body, send_with_retries
from engine.retry import retry_after_seconds as retry_after_seconds

#: HTTP statuses a dispatch is retried on: timeout, too early, rate limited, server trouble.
RETRYABLE_STATUS_CODES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: The longest gateway ``runId`` kept in a record (a gateway may answer anything).
MAX_RUN_ID = 256


class Abandoned(Exception):
    """A POST whose delegation ended while it was retried: dropped quietly, not reported."""


class Handover(Exception):
    """A held POST whose first try did not end at once (``post_agent(quick=...)``).

    ``resume`` (None: nothing was sent) goes to ``post_agent(resume=...)`` on another
    thread, which carries on from there: it reads the answer still to come (or takes the
    first try's answer or failure) as its first attempt, then retries as usual.
    """

    def __init__(self, resume: Callable[[float | None], Any] | None) -> None:
        super().__init__("the POST carries on on another thread")
        self.resume = resume


@dataclass(frozen=True)
class Target:
    """Where and how to dispatch: the gateway URL, token, and how to describe the token."""

    agent: str
    url: str
    token: str = field(repr=False)
    token_source: str  # e.g. "environment variable `ATOMIZER_HOOKS_TOKEN`"; never the value
    #: What to do when it stays unreachable until the deadline, for the error (None: check
    #: the agent's URL or raise `--timeout`); a workflow step names its `timeout:` instead.
    hint: str | None = None

    def __post_init__(self) -> None:
        register(self.token)
        register_url(self.url)


@dataclass(frozen=True)
class _Post:
    """One POST to a gateway: its target, URL, JSON body and extra headers (the token's
    ``Authorization`` header is added when it is sent). ``utf8``: the body is sent as
    UTF-8 JSON (non-ASCII text as is, not as ``\\uXXXX`` escapes)."""

    target: Target
    url: str
    body: dict[str, Any]
    headers: dict[str, str]
    utf8: bool = False


@dataclass(frozen=True)
class DispatchResult:
    """What the gateway answered to an accepted dispatch."""

    status_code: int
    gateway_run_id: str | None
    attempts: int
    elapsed_s: float
    overloaded: int  # how many 429/503 answers were seen on the way
    #: The gateway's ``completion`` object (``waitForCompletion``: the run has ended), if any.
    completion: dict[str, Any] | None = None


class HooksClient:
    """Sends tasks to gateways; thread-safe, one instance per process is enough."""

    def __init__(
        self,
        retry: RetryPolicy | None = None,
        *,
        transport: Any = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        on_retry: Callable[[str, int, float, str], None] | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self._rng = rng
        self.on_retry = on_retry
        self._transport = transport
        self._lock = threading.Lock()
        self._httpx: Any = None  # created on the first https:// request (or a transport)
        self._plain = _PlainPool()

    def _httpx_client(self) -> Any:
        with self._lock:
            if self._httpx is None:
                import httpx

                limits = httpx.Limits(max_keepalive_connections=64, max_connections=128)
                self._httpx = httpx.Client(
                    transport=self._transport, limits=limits, trust_env=False
                )
            return self._httpx

    def close(self) -> None:
        """Close every kept connection."""
        self._plain.close()
        with self._lock:
            client, self._httpx = self._httpx, None
        if client is not None:
            client.close()

    def __enter__(self) -> HooksClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def post_agent(
        self,
        target: Target,
        body: dict[str, Any],
        *,
        idempotency_key: str,
        deadline: float,
        on_retry: Callable[[str, int, float, str], None] | None = None,
        hold: bool = False,
        ended: threading.Event | None = None,
        quick: float | None = None,
        resume: Callable[[float | None], Any] | None = None,
    ) -> DispatchResult:
        """POST the task; retry transient failures until ``deadline`` (a ``clock()`` value).

        ``on_retry(agent, attempt, delay_s, reason)`` observes this call's retries (the
        client's own ``on_retry`` when not given). ``hold``: the body asks for
        ``waitForCompletion``, so the answer may take until the run ends (up to the deadline).
        ``ended`` set: the delegation is over; the next retry (and its report) raises
        ``Abandoned`` instead.

        ``quick`` (seconds): make the first try on this thread and wait that long for its
        answer; a final answer (accepted, or refused for good) is returned or raised here,
        anything else raises ``Handover`` at once, without retrying or sleeping on this
        thread. Only plain ``http://`` gateways are tried so (others raise ``Handover(None)``
        before sending). ``resume``: the ``Handover``'s, on the thread that carries on.
        """
        req = _Post(
            target, target.url + "/hooks/agent", body, {"Idempotency-Key": idempotency_key}
        )
        if quick is not None:
            return self._first_try(req, deadline, hold, quick)
        return self._post(
            req, deadline, on_retry=on_retry, hold=hold, ended=ended, resume=resume
        )

    def _first_try(self, req: _Post, deadline: float, hold: bool, quick: float) -> DispatchResult:
        """``post_agent(quick=...)``: one try here; what ``send_with_retries`` would end
        with after a first answer that is final, else ``Handover``."""
        target, url = req.target, req.url
        if self._transport is not None or not url.startswith("http://"):
            raise Handover(None)
        start = self._clock()
        timeout = _attempt_timeout(self.retry.request_timeout, deadline, start)
        if timeout is not None and timeout <= 0:
            raise Handover(None)  # the retry loop says why (no time left)
        read = max(0.0, deadline - start) if hold else timeout
        payload, hdrs = _request(req, target)
        try:
            resp = self._plain.post(url, payload, hdrs, timeout=timeout, read=read, quick=quick)
        except Handover:
            raise
        except Exception as exc:  # the retry loop on the other thread judges it
            raise Handover(_raiser(exc)) from None
        if resp.status_code in RETRYABLE_STATUS_CODES:
            raise Handover(lambda _read: resp)  # retried there, after its backoff
        if resp.status_code in (200, 201, 202):
            run_id, completion = _accepted(resp)
            return DispatchResult(
                resp.status_code, run_id, 1, self._clock() - start, 0, completion
            )
        raise _refusal(target, url, resp)

    def post_handoff(
        self,
        target: Target,
        run_id: str,
        handoff: dict[str, Any],
        *,
        deadline: float,
        hint: str | None = None,
    ) -> DispatchResult:
        """POST a handoff to a gateway's receiver (`/handoffs/{runId}`) as UTF-8 JSON: the
        bytes sent are those of the handoff file (``\\u00e9`` escapes would triple
        non-ASCII text against the receiver's ``max_handoff_bytes``)."""
        req = _Post(target, f"{target.url}/handoffs/{run_id}", handoff, {}, utf8=True)
        return self._post(req, deadline, hint=hint)

    def post_progress(
        self,
        target: Target,
        run_id: str,
        text: str,
        *,
        deadline: float,
        key: str | None = None,
        hint: str | None = None,
    ) -> DispatchResult:
        """POST a progress line (and the delegation's ``key``) to a gateway's receiver
        (`/handoffs/{runId}/progress`); ``hint``: what to do when it stays unreachable."""
        url = f"{target.url}/handoffs/{run_id}/progress"
        body = {"text": text, **({"key": key} if key else {})}
        return self._post(
            _Post(target, url, body, {}), deadline, hint=hint, what=f"the progress of `{run_id}`"
        )

    def _post(
        self,
        req: _Post,
        deadline: float,
        on_retry: Callable[[str, int, float, str], None] | None = None,
        hint: str | None = None,
        hold: bool = False,
        ended: threading.Event | None = None,
        resume: Callable[[float | None], Any] | None = None,
        what: str | None = None,
    ) -> DispatchResult:
        on_retry = on_retry or self.on_retry
        target, url = req.target, req.url
        payload, hdrs = _request(req, target)
        agent = target.agent
        hint = hint or target.hint
        what = what or f"`{agent}`"  # what the error says could not be sent
        first = [resume] if resume is not None else []  # the first attempt, begun elsewhere

        def observe(attempt: int, delay: float, reason: str) -> None:
            if ended is not None and ended.is_set():
                raise Abandoned(agent)  # no retry, no report once the delegation is over
            if on_retry is not None:
                on_retry(agent, attempt, delay, reason)

        plain = self._transport is None and url.startswith("http://")

        def send(timeout: float | None) -> Any:
            # A held request answers when the run ends: only the read may take that long.
            read = max(0.0, deadline - self._clock()) if hold else timeout
            if first:  # its answer is read whatever happened meanwhile, as it was before
                return first.pop()(read)
            if ended is not None and ended.is_set():  # it ended during the retry's wait
                raise Abandoned(agent)
            if plain:
                return self._plain.post(url, payload, hdrs, timeout=timeout, read=read)
            import httpx

            limits: Any = timeout
            if hold:
                limits = httpx.Timeout(timeout, read=read)
            return self._httpx_client().post(url, content=payload, headers=hdrs, timeout=limits)

        done = send_with_retries(
            send,
            Backoff(
                self.retry.delays,
                jitter=self.retry.jitter,
                request_timeout=self.retry.request_timeout,
            ),
            accept=lambda r: r.status_code in (200, 201, 202),
            retryable=lambda r: r.status_code in RETRYABLE_STATUS_CODES,
            deadline=deadline,
            on_retry=observe,
            clock=self._clock,
            sleep=self._sleep,
            rng=self._rng,
        )
        resp = done.response
        if resp is not None and done.accepted:
            overloaded = sum(code in (429, 503) for code in done.retried)
            run_id, completion = _accepted(resp)
            return DispatchResult(
                resp.status_code, run_id, done.attempts, done.elapsed, overloaded, completion
            )
        if resp is not None:
            raise _refusal(target, url, resp)
        if done.gave_up is GiveUp.EXHAUSTED:
            msg = (
                f"gave up dispatching to {what} at {url} after {done.attempts} "
                f"attempts (last: {done.reason}). Check that the gateway is running and "
                f"healthy, or raise `retry.delays` in the config."
            )
        elif done.gave_up is GiveUp.PAST_DEADLINE:
            msg = (
                f"could not dispatch to {what} at {url} before the deadline "
                f"(last: {done.reason} after {done.attempts} attempt(s); the next retry would "
                f"come in {done.delay or 0:.1f} s). Is the gateway running? "
                + (hint or "Raise `--timeout` to wait longer.")
            )
        else:
            msg = (
                f"could not dispatch to {what} at {url} before the deadline "
                f"({done.attempts} attempt(s)). Is the gateway running? "
                + (hint or f"Check `agents.{agent}.url`, or raise `--timeout`.")
            )
        raise HookUnreachableError(redact(msg), agent=agent)


def _request(req: _Post, target: Target) -> tuple[bytes, dict[str, str]]:
    """The POST's payload (JSON; UTF-8 text as is when ``req.utf8``, else ASCII with
    escapes) and headers (the token in ``Authorization``)."""
    hdrs = {
        "Authorization": f"Bearer {target.token}",
        "Content-Type": "application/json",
        **req.headers,
    }
    return json.dumps(req.body, ensure_ascii=not req.utf8).encode("utf-8"), hdrs


def _raiser(exc: Exception) -> Callable[[float | None], Any]:
    """A first attempt that failed, for the retry loop on another thread to judge."""

    def again(_read: float | None) -> Any:
        raise exc

    return again


def _accepted(resp: Any) -> tuple[str | None, dict[str, Any] | None]:
    """The gateway's runId and ``completion`` object from an accepting answer."""
    data = json_body(resp)
    if not isinstance(data, dict):
        return None, None
    run_id = data.get("runId")
    completion = data.get("completion")
    return (
        redact(str(run_id)[:MAX_RUN_ID]) if isinstance(run_id, str) else None,
        completion if isinstance(completion, dict) else None,
    )


def _error_text(resp: Any) -> str:
    """The gateway's error text, redacted before it is cut (a cut could split a token)."""
    try:
        data = resp.json()
        if isinstance(data, dict) and data.get("error"):
            return redact(str(data["error"])[:65536])[:300]
    except (ValueError, RecursionError):  # not JSON, or nested past the parser
        pass
    return redact((resp.text or "")[:65536].strip())[:300]


def _refusal(target: Target, url: str, resp: Any) -> HookError:
    code = resp.status_code
    err = _error_text(resp)
    agent = target.agent
    if code == 401:
        msg = (
            f"the gateway at {url} rejected the hooks token for `{agent}` (401 Unauthorized): "
            f"the token from {target.token_source} does not match that gateway's "
            "`hooks.token`. Set it to the right value and run again."
        )
    elif code == 403:
        msg = f"the gateway at {url} refused `{agent}` (403 Forbidden: {err or 'no reason'})."
        if not re.search(r"\bkey\b", err):  # a refused delegation key is not the token's fault
            msg += f" Check the token from {target.token_source} and the gateway's hooks settings."
    elif code == 404:
        if "no delegation" in err.lower():  # the receiver: nothing waits for that run
            msg = f"the gateway at {url} refused it (404): {err}"
        elif "agentid" in err.lower():
            msg = (
                f"the gateway at {url} does not know the agent (404: {err}). Set "
                f"`agents.{agent}.agent_id` to an agent that gateway hosts."
            )
        else:
            msg = (
                f"no hooks endpoint at {url} (404). Check `agents.{agent}.url` and that the "
                "gateway has `hooks.enabled: true` with `hooks.path: /hooks`."
            )
    elif code == 400:
        low = err.lower()
        if "allowedagentids" in low:
            hint = (
                f"add the agent id to `hooks.allowedAgentIds` in that gateway's config, or fix "
                f"`agents.{agent}.agent_id`"
            )
        elif "unknown agentid" in low:
            hint = f"set `agents.{agent}.agent_id` to an agent that gateway hosts"
        elif "agentid is required" in low:
            hint = f"that gateway hosts several agents: set `agents.{agent}.agent_id`"
        elif "sessionkey" in low:
            hint = (
                "enable `hooks.allowRequestSessionKey` on that gateway, or set "
                f"`agents.{agent}.send_session_key: false`"
            )
        elif "channel" in low:
            hint = f"check `agents.{agent}.channel` (or drop `--channel`)"
        else:
            hint = "check the request options for this agent"
        msg = f"the gateway at {url} refused the task for `{agent}` (400: {err}): {hint}."
    else:
        msg = f"the gateway at {url} answered HTTP {code} for `{agent}`: {err or 'no body'}."
    return HookError(redact(msg), agent=agent, status_code=code)


class _PlainResponse:
    """The part of an ``httpx.Response`` the hooks client reads, from ``http.client``."""

    def __init__(self, status: int, headers: Any, content: bytes) -> None:
        self.status_code = status
        self.headers = headers  # http.client's message: ``get`` ignores the case
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


class _PlainPool:
    """Keep-alive ``http.client`` connections per ``(host, port)``; thread-safe.

    A connection is taken for one request and put back after its answer was read in full
    (unless the server said it closes). One found closed by the server while idle is
    dropped before use (the check ``httpcore`` makes). Failures are raised as the
    ``httpx`` exceptions ``engine.retry`` knows (``httpx`` is imported only then).
    """

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[Any]] = {}
        self._busy: set[Any] = set()
        self._closed = False
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close every connection, idle or in use: a request still waiting (a held POST
        whose delegation ended meanwhile) fails at once instead of outliving the client."""
        with self._lock:
            self._closed = True
            conns = [c for idle in self._idle.values() for c in idle] + list(self._busy)
            self._idle.clear()
            self._busy.clear()
        for conn in conns:
            conn.close()

    def _take(self, key: tuple[str, int], timeout: float | None) -> Any:
        while True:
            with self._lock:  # the check below is a syscall: not under the lock
                idle = self._idle.get(key)
                conn = idle.pop() if idle else None
            if conn is None:
                break
            if _still_open(conn):
                return self._use(conn)
            conn.close()
        return self._use(_connection_class()(key[0], key[1], timeout=timeout))

    def _use(self, conn: Any) -> Any:
        with self._lock:
            if self._closed:
                conn.close()
                raise ConnectionAbortedError("the hooks client was closed")
            self._busy.add(conn)
        return conn

    def _give(self, key: tuple[str, int], conn: Any) -> None:
        with self._lock:
            self._busy.discard(conn)
            if not self._closed:
                self._idle.setdefault(key, []).append(conn)
                return
        conn.close()

    def _drop(self, conn: Any) -> None:
        with self._lock:
            self._busy.discard(conn)
        conn.close()

    @contextmanager
    def _dropped_on_error(self, conn: Any, url: str) -> Iterator[None]:
        """Any error inside closes ``conn`` and is raised as httpx's kind of it."""
        try:
            yield
        except BaseException as exc:
            self._drop(conn)
            mapped = _as_httpx(exc, url)
            if mapped is exc:
                raise
            raise mapped from exc

    def post(
        self,
        url: str,
        payload: bytes,
        headers: dict[str, str],
        *,
        timeout: float | None,
        read: float | None,
        quick: float | None = None,
    ) -> _PlainResponse:
        """POST ``payload``; ``timeout`` bounds the connect and the send, ``read`` the
        wait for the answer (seconds; None: no limit). ``quick``: when no answer has begun
        within that many seconds of the send, raise ``Handover`` whose ``resume(read)``
        reads it (on any thread; the connection stays taken until then)."""
        parts = urlsplit(url)
        key = (parts.hostname or "127.0.0.1", parts.port or 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn = self._take(key, timeout)
        except ConnectionAbortedError as exc:
            raise _as_httpx(exc, url) from exc
        with self._dropped_on_error(conn, url):
            sock: socket.socket = conn.sock or _connect(conn, timeout)
            sock.settimeout(timeout)
            conn.request("POST", path, body=payload, headers=headers)
            later = quick is not None and not _readable(sock, quick)
        if later:
            raise Handover(lambda read_s: self._answer(key, conn, url, read_s))
        return self._answer(key, conn, url, read)

    def _answer(
        self, key: tuple[str, int], conn: Any, url: str, read: float | None
    ) -> _PlainResponse:
        """Read the answer to the request sent on ``conn``, and keep or close ``conn``."""
        with self._dropped_on_error(conn, url):
            sock: socket.socket | None = conn.sock
            if sock is None:  # closed by ``close`` meanwhile
                raise ConnectionAbortedError("the hooks client was closed")
            sock.settimeout(read)
            resp = conn.getresponse()
            content = resp.read()
        if resp.will_close:
            self._drop(conn)
        else:
            self._give(key, conn)
        return _PlainResponse(resp.status, resp.headers, content)


_one_write: Any = None


def _connection_class() -> Any:
    """``http.client.HTTPConnection`` that writes a request's head and its ``bytes`` body
    in one ``send`` (built on first use: ``http.client`` is imported only then).

    ``HTTPConnection`` sends them apart: two ``send`` calls here and two reads on the
    gateway's side, each a system call that lets go of the interpreter lock."""
    global _one_write
    if _one_write is None:
        import http.client

        class _OneWrite(http.client.HTTPConnection):
            def _send_output(self, message_body: Any = None, encode_chunked: bool = False) -> None:
                if not isinstance(message_body, bytes) or encode_chunked:
                    base = http.client.HTTPConnection
                    base._send_output(self, message_body, encode_chunked)  # type: ignore[attr-defined]
                    return
                buffer: list[bytes] = self._buffer  # type: ignore[attr-defined]
                buffer.extend((b"", message_body))
                msg = b"\r\n".join(buffer)
                del buffer[:]
                self.send(msg)

        _one_write = _OneWrite
    return _one_write


def _connect(conn: Any, timeout: float | None) -> socket.socket:
    """Open ``conn``'s socket (Nagle off: the answer is read as soon as it is sent)."""
    conn.timeout = timeout
    conn.connect()
    sock: socket.socket = conn.sock
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _readable(sock: socket.socket, seconds: float) -> bool:
    """True when ``sock`` has something to read (or was closed) within ``seconds``."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(max(0.0, seconds) * 1000))


def _still_open(conn: Any) -> bool:
    """False when the server closed (or wrote to) an idle kept connection."""
    sock = conn.sock
    if sock is None:
        return True  # never connected: connects on use
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _as_httpx(exc: BaseException, url: str) -> BaseException:
    """The ``httpx`` exception ``engine.retry`` treats the failure as (others unchanged)."""
    import http.client

    import httpx

    if isinstance(exc, TimeoutError):
        return httpx.ReadTimeout(f"no answer from {url} in time")
    if isinstance(exc, ConnectionRefusedError):
        return httpx.ConnectError(f"connection refused ({url})")
    if isinstance(exc, OSError | http.client.HTTPException):
        text = str(exc) or type(exc).__name__
        return httpx.ConnectError(f"{type(exc).__name__}: {text}")
    return exc
