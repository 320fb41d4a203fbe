"""The HTTP API (``/v1``, OpenAPI at ``/v1/openapi.json``), ``/metrics`` and the dashboard.

Every response passes ``redact_obj``/``redact``: no secret leaves the server. Every path
but ``/health`` and the dashboard's static page needs ``Authorization: Bearer <token>``;
changes need a token with the ``operate`` role, and a cross-site ``Origin`` is refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Body, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine import __version__
from engine.config import MAX_SECONDS
from engine.delegate import DelegationRequest
from engine.errors import (
    EXIT_REFUSED,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    OrchestratorError,
    RunStateError,
)
from engine.redact import redact, redact_obj
from engine.runs import GateDecision
from engine.serve.dashboard import dag_svg, page, script
from engine.serve.hub import EventHub, read_journal
from engine.serve.manager import NotFoundError, RunManager, missing_inputs_paragraph
from engine.serve.settings import ApiToken, ServeSettings
from engine.store import FileRunStore, RunStore

log = logging.getLogger("engine.serve")

OPEN_PATHS = ("/health", "/", "/dashboard.js", "/favicon.ico")
MAX_WAIT = 300.0
KEEPALIVE = 15.0
ENDED = ("complete", "failed", "cancelled")


class StartRun(BaseModel):
    """Start a workflow run."""

    workflow: str = Field(description="A workflow name (from `workflow list`).")
    inputs: dict[str, str] = Field(default_factory=dict)
    caller: str | None = Field(
        default=None, description="Caller for the ACL (default: the template's)."
    )
    approve: list[str] = Field(default_factory=list, description="Gates approved up front.")
    approve_all: bool = Field(
        default=False, strict=True, description="Approve every gate up front."
    )


class StartDelegation(BaseModel):
    """Start one delegation."""

    target: str | None = Field(default=None, description="The agent (or give `capability`).")
    capability: str | None = None
    task: str
    caller: str
    timeout: float | None = Field(
        default=None,
        strict=True,  # a number: not `true` (taken as 1) nor `"120"`
        gt=0,
        le=MAX_SECONDS,
        allow_inf_nan=False,
        description=f"Seconds to wait for the handoff, at most {MAX_SECONDS} (a week, as "
        "`orchestrate --timeout`); default: the agent's.",
    )
    model: str | None = None
    thinking: str | None = None
    channel: str | None = None
    parent_run_id: str | None = None


class ResumeRun(BaseModel):
    """Continue a run; ``inputs`` gives again the secret inputs it waits for."""

    inputs: dict[str, str] = Field(
        default_factory=dict,
        description="The values of the run's `inputs_missing` (checked against the keyed "
        "hash in its run.json).",
    )


class Answer(BaseModel):
    """The answer to an agent's question (recorded with the token's name); ``replace``:
    replace an answer given already (else a second answer is refused)."""

    text: str = Field(min_length=1)
    replace: bool = False


class Decision(BaseModel):
    """Why a gate was approved or rejected (recorded with the token's name), and the value
    an approval gives a gate with ``input`` (checked against the gate's schema)."""

    reason: str | None = None
    input: Any = Field(
        default=None,
        description="The gate's typed input (any JSON value), for a gate with `input`.",
    )


#: What a strict field of a request body says about a value of another JSON type.
_STRICT = {
    "float_type": "must be a number",
    "int_type": "must be a number",
    "bool_type": "must be true or false",
}


class BodyLimit:
    """ASGI middleware: a request body above ``limit`` bytes gets 413 with the documented
    error shape (``serve.max_body_bytes``, docs/serve.md). A ``Content-Length`` above it
    is refused before the body is read; a streamed (chunked) body is counted as it
    arrives and refused once it passes the limit, so no large body is held in memory."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _detail(self, size: str) -> str:
        return (
            f"the request body ({size}) is larger than this server accepts "
            f"({self.limit:,} bytes, `serve.max_body_bytes`): send less, or raise the "
            "limit in the server's config."
        )

    def _refusal(self, size: str) -> JSONResponse:
        return JSONResponse(
            {"detail": self._detail(size), "exit_code": EXIT_USAGE},
            status_code=413,
            headers={"Connection": "close"},
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        length = headers.get(b"content-length", b"").decode("latin-1").strip()
        if length and (not length.isdigit() or int(length) > self.limit):
            size = f"{int(length):,} bytes" if length.isdigit() else f"length {quoted(length)}"
            await self._refusal(size)(scope, receive, send)
            return
        seen = 0
        started = False

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body") or b"")
                if seen > self.limit:
                    raise _TooLarge(413, self._detail(f"more than {self.limit:,} bytes"))
            return message

        async def watched(message: Any) -> None:
            nonlocal started
            started = started or message.get("type") == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if not started:
                await self._refusal(f"more than {self.limit:,} bytes")(scope, receive, send)


class LoopbackHost:
    """ASGI middleware of a server without tokens: it answers only requests addressed to
    itself on this host, a ``Host`` that is a loopback name or address (``localhost``,
    ``127.0.0.0/8``, ``[::1]``) with the port the server listens on (``scope["server"]``;
    no port in ``Host`` means 80). Anything else gets 421 with the documented error shape
    (exit 2): a web page whose name resolves to 127.0.0.1 (DNS rebinding) sends its own
    name as ``Host`` and cannot drive the server. With tokens the bearer token guards
    every call instead (docs/serve.md)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        host = headers.get(b"host", b"").decode("latin-1")
        server = scope.get("server")
        port = server[1] if isinstance(server, tuple | list) and len(server) > 1 else None
        if loopback_host(host, port):
            await self.app(scope, receive, send)
            return
        shown = f"`Host: {quoted(host)}`" if host else "a request without `Host`"
        at = f":{port}" if port else ""
        detail = (
            f"{shown} refused: this server has no tokens and answers only requests "
            f"addressed to it on this host (`localhost{at}`, `127.0.0.1{at}` or "
            f"`[::1]{at}`), so that a web page cannot reach it under another name (DNS "
            f"rebinding). Use `http://127.0.0.1{at}`, or give the server tokens "
            "(`serve.tokens_env` or `serve.tokens_file`)."
        )
        response = JSONResponse(
            {"detail": redact(detail), "exit_code": EXIT_USAGE}, status_code=421
        )
        await response(scope, receive, send)


def loopback_host(host: str, port: int | None) -> bool:
    """True when the ``Host`` header ``host`` names this host by a loopback name or
    address (``localhost``, ``127.0.0.0/8``, ``[::1]``) and, when ``port`` is given, that
    port (a ``Host`` without a port means 80)."""
    import ipaddress

    try:
        parts = urlsplit(f"//{host}")
        given = parts.port
    except ValueError:
        return False
    name = (parts.hostname or "").rstrip(".")
    if not host or "@" in host or parts.path or parts.query or parts.fragment:
        return False
    if name != "localhost":
        try:
            if not ipaddress.ip_address(name).is_loopback:
                return False
        except ValueError:
            return False
    return port is None or (given or 80) == port


class _TooLarge(StarletteHTTPException):
    """A streamed request body passed ``BodyLimit.limit`` (an HTTP error, so that the
    request parser passes it on instead of calling it a bad body)."""


class ServerStopping(OrchestratorError):
    """Raised to end a wait when the server stops (SIGTERM, Ctrl-C): HTTP 503, exit 4 (a
    wait that ended without its answer, as a timeout). The run goes on after a restart."""

    exit_code = EXIT_TIMEOUT


def _status_for(exc: OrchestratorError) -> int:
    if isinstance(exc, ServerStopping):
        return 503
    if isinstance(exc, NotFoundError):
        return 404
    if exc.exit_code == EXIT_REFUSED:
        return 403
    if exc.exit_code == EXIT_TIMEOUT:
        return 504
    if isinstance(exc, RunStateError):
        return 409
    from engine.idempotency import IdempotencyConflict

    if isinstance(exc, IdempotencyConflict):
        return 409
    return 400


def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(redact_obj(data), status_code=status)


def _sse(seq: int | str, ev: dict[str, Any]) -> str:
    data = redact(json.dumps(ev, ensure_ascii=False, default=str))
    return f"id: {seq}\nevent: {ev.get('event', 'message')}\ndata: {data}\n\n"


def _wire(seq: int, ev: dict[str, Any], data: str) -> str:
    return f"id: {seq}\nevent: {ev.get('event', 'message')}\ndata: {data}\n\n"


def _after(after: int | None, last_event_id: str | None) -> int:
    if last_event_id and last_event_id.strip().isdigit():
        return int(last_event_id.strip())
    return max(0, after or 0)


def create_app(
    manager: RunManager,
    settings: ServeSettings,
    hub: EventHub,
    *,
    metrics_text: Callable[[], bytes],
    on_start: Callable[[], None] = lambda: None,
) -> FastAPI:
    """The ASGI application of ``orchestrate serve``."""
    cfg = manager.cfg

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(hub.run())
        await asyncio.sleep(0)  # let the hub bind to this loop before runs report
        await run_in_threadpool(on_start)
        try:
            yield
        finally:
            task.cancel()

    app = FastAPI(
        title="orchestrator",
        version=__version__,
        description="Runs, delegations, gates and events of one orchestrator host.",
        openapi_url="/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )

    app.state.stop = hub.stop  # `serve` calls it when a signal asks the server to stop
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    if not settings.tokens:
        app.add_middleware(LoopbackHost)

    @app.middleware("http")
    async def auth(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        path = request.url.path
        if path in OPEN_PATHS or path.startswith("/runs/"):
            return await call_next(request)
        who = settings.authenticate(request.headers.get("authorization"))
        if who is None:
            return JSONResponse(
                {
                    "detail": "missing or unknown bearer token: send "
                    "`Authorization: Bearer <token>`.",
                    "exit_code": EXIT_USAGE,  # a wrong credential, as a gateway's 401
                },
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            origin = request.headers.get("origin")
            if origin and urlsplit(origin).netloc != request.headers.get("host"):
                return JSONResponse(  # the Origin is the client's text: redacted
                    {
                        "detail": redact(f"cross-site request from `{origin}` refused."),
                        "exit_code": EXIT_REFUSED,
                    },
                    status_code=403,
                )
            if not who.can_operate:
                return JSONResponse(
                    {
                        "detail": f"token `{who.name}` has the `{who.role}` role; this needs "
                        "`operate`.",
                        "exit_code": EXIT_REFUSED,
                    },
                    status_code=403,
                )
        request.state.who = who
        return await call_next(request)

    @app.exception_handler(OrchestratorError)
    async def on_error(request: Request, exc: OrchestratorError) -> JSONResponse:
        detail = clip_quoted(str(exc))
        return _json({"detail": detail, "exit_code": exc.exit_code}, _status_for(exc))

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        kind = request.headers.get("content-type", "")
        for e in exc.errors():
            loc = [str(p) for p in e.get("loc", ())]
            if e.get("type") == "json_invalid":
                at = f" at character {loc[1]}" if len(loc) > 1 else ""
                error = (e.get("ctx") or {}).get("error") or "not JSON"
                problems.append(f"the body is not valid JSON ({error}{at})")
                continue
            if loc == ["body"] and not kind.split(";")[0].strip().endswith("json"):
                return _json(
                    {
                        "detail": f"the body was sent as `{kind or 'no Content-Type'}`: send "
                        "a JSON object with `Content-Type: application/json`.",
                        "exit_code": EXIT_USAGE,
                    },
                    415,
                )
            if loc == ["body"]:
                problems.append("the body must be a JSON object (`{...}`)")
                continue
            where = loc[0] if loc and loc[0] in ("body", "query", "header", "path") else ""
            name = ".".join(loc[1:] if where else loc) or "body"
            of = f" ({where} parameter)" if where in ("query", "header", "path") else ""
            msg = _STRICT.get(str(e.get("type")), e.get("msg", "invalid"))
            if str(e.get("type")) in _STRICT:
                msg += f", not {quoted(e.get('input'))}"
            problems.append(f"`{name}`{of}: {msg}")
        return _json(
            {"detail": "invalid request: " + "; ".join(problems) + ".", "exit_code": 2}, 400
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """An unknown path or method: the documented error shape (exit 2, bad usage)."""
        return JSONResponse(
            redact_obj({"detail": str(exc.detail), "exit_code": EXIT_USAGE}),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed: %s", request.method, request.url.path, redact(repr(exc)))
        return _json({"detail": f"internal error ({type(exc).__name__}); see the server log."}, 500)

    def who(request: Request) -> ApiToken:
        token: ApiToken = request.state.who
        return token

    # -- open -------------------------------------------------------------------------

    @app.get("/health", tags=["server"])
    async def health() -> dict[str, Any]:
        """Open: is the server up."""
        return {"ok": True, "version": __version__}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page(), headers=_PAGE_HEADERS)

    @app.get("/dashboard.js", include_in_schema=False)
    async def dashboard_js() -> Response:
        return Response(script(), media_type="text/javascript", headers=_PAGE_HEADERS)

    @app.get("/runs/{run_id}", response_class=HTMLResponse, include_in_schema=False)
    async def run_page(run_id: str) -> HTMLResponse:
        return HTMLResponse(page(), headers=_PAGE_HEADERS)

    @app.get("/v1/whoami", tags=["server"])
    async def whoami(request: Request) -> dict[str, Any]:
        """The token's name and role."""
        t = who(request)
        return {"name": t.name, "role": t.role}

    # -- runs -------------------------------------------------------------------------

    @app.get("/v1/workflows", tags=["runs"])
    async def workflows() -> JSONResponse:
        """The workflows that can be started by name."""
        from engine.workflow import list_workflows

        rows = await run_in_threadpool(list_workflows, cfg)
        return _json({"workflows": [{"name": n, "description": d} for n, _, d in rows]})

    @app.post("/v1/runs", status_code=201, tags=["runs"])
    async def start_run(
        request: Request,
        body: StartRun,
        idempotency_key: str | None = Header(default=None),
    ) -> JSONResponse:
        """Start a workflow run; the same `Idempotency-Key` returns the same run."""
        _check_name(body.workflow)
        try:
            run_id, created = await run_in_threadpool(
                lambda: manager.start_workflow(
                    body.workflow,
                    dict(body.inputs),
                    by=who(request).name,
                    caller=body.caller,
                    key=idempotency_key,
                    approve=tuple(body.approve),
                    approve_all=body.approve_all,
                )
            )
        except OrchestratorError as exc:
            exc.message = _api_advice(_quote_key(exc.message, idempotency_key))
            exc.problems = [_api_advice(p) for p in exc.problems]
            raise
        doc = await run_in_threadpool(run_doc, manager, run_id)
        return _json({"runId": run_id, "created": created, "run": doc}, 201 if created else 200)

    @app.get("/v1/runs", tags=["runs"])
    async def runs(
        status: str | None = Query(default=None, description="Only runs in this state."),
        workflow: str | None = Query(default=None),
        limit: int = Query(default=20, ge=1, le=500),
        cursor: str | None = Query(default=None, description="`next` of the previous page."),
    ) -> JSONResponse:
        """Runs, newest first, with filters and pagination."""
        return _json(await run_in_threadpool(list_page, manager, status, workflow, limit, cursor))

    @app.get("/v1/runs/{run_id}", tags=["runs"])
    async def get_run(run_id: str) -> JSONResponse:
        """A run: steps, states, results, progress, and why a waiting step waits."""
        return _json(await run_in_threadpool(run_doc, manager, run_id))

    @app.get("/v1/runs/{run_id}/diagnose", tags=["runs"])
    async def diagnose_run(run_id: str) -> JSONResponse:
        """Why a run is where it is: who executes it, what each open step waits on."""
        return _json(await run_in_threadpool(diagnose, manager, run_id))

    @app.get("/v1/runs/{run_id}/dag.svg", tags=["runs"])
    async def run_svg(run_id: str) -> Response:
        """The run's step graph, each step coloured by its state."""
        doc = await run_in_threadpool(run_doc, manager, run_id)
        states = {sid: s["status"] for sid, s in doc["steps"].items()}
        return Response(redact(dag_svg(doc["plan"], states)), media_type="image/svg+xml")

    @app.get("/v1/runs/{run_id}/wait", tags=["runs"])
    async def wait_run(
        run_id: str,
        timeout: float = Query(default=30.0, gt=0, le=MAX_WAIT),
        until: str = Query(default="end", pattern="^(end|parked)$"),
    ) -> JSONResponse:
        """Wait until the run ends (or, with `until=parked`, also until it waits at a gate)."""
        stop = ENDED + (("waiting_approval", "waiting_input") if until == "parked" else ())

        def check() -> tuple[bool, dict[str, Any]]:
            doc = run_doc(manager, run_id)
            # a run cancelled (or parked) while this server still executes it is settled
            # once its driver has stopped: its steps in flight have ended by then
            settled = doc["status"] in stop and not doc["executing"]
            return settled, doc

        done, doc = await _wait(hub, run_id, check, timeout)
        return _json({**doc, "done": done})

    @app.get("/v1/runs/{run_id}/events", tags=["events"])
    async def run_events(run_id: str, after: int = Query(default=0, ge=0)) -> JSONResponse:
        """The run's journal events after line `after` (the cursor is the `line`)."""
        await run_in_threadpool(manager.run_path, run_id)  # an unknown run: 404
        events = await run_in_threadpool(_journal, manager, run_id, after)
        return _json({"events": events, "cursor": events[-1]["line"] if events else after})

    @app.get("/v1/runs/{run_id}/stream", tags=["events"])
    async def run_stream(
        request: Request,
        run_id: str,
        after: int | None = Query(default=None, ge=0),
        last_event_id: str | None = Header(default=None),
    ) -> StreamingResponse:
        """Server-sent events of one run (`id` is the journal line; resume with Last-Event-ID)."""
        manager.run_path(run_id)  # an unknown run: 404 before the stream starts
        start = _after(after, last_event_id)

        async def gen() -> AsyncIterator[str]:
            line = start
            snap = hub.seq
            for ev in await run_in_threadpool(_journal, manager, run_id, line):
                line = ev["line"]
                yield _sse(line, {**ev, "runId": run_id})
            while not await request.is_disconnected():
                changed = hub.changed()
                new = hub.since(snap, run_id)
                if not new and hub.stopping:
                    yield _STOPPING
                    return
                if not new:
                    snap = hub.seq
                    try:
                        await asyncio.wait_for(changed.wait(), KEEPALIVE)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                    continue
                snap = new[-1][0]["seq"]
                chunk = []
                for ev, data in new:
                    n = ev.get("line")
                    if isinstance(n, int) and n > line:
                        line = n
                        chunk.append(_wire(n, ev, data))
                if chunk:
                    yield "".join(chunk)

        return StreamingResponse(gen(), media_type="text/event-stream", headers=_SSE_HEADERS)

    @app.post("/v1/runs/{run_id}/cancel", tags=["runs"])
    async def cancel(run_id: str) -> JSONResponse:
        """Cancel a run: it stops dispatching, parked steps are skipped."""
        state = await run_in_threadpool(manager.cancel, run_id)
        return _json({"runId": run_id, "status": state.value})

    @app.post("/v1/runs/{run_id}/resume", tags=["runs"])
    async def resume(
        request: Request, run_id: str, body: Annotated[ResumeRun | None, Body()] = None
    ) -> JSONResponse:
        """Take over a run that no process executes (e.g. its CLI died); `inputs` gives
        again the secret inputs a run waits for (`inputs_missing`): 400 when one that this
        server does not hold is not given (unless a gate of the run was rejected)."""
        given = body.inputs if body is not None else {}
        await run_in_threadpool(lambda: manager.resume(run_id, by=who(request).name, inputs=given))
        return _json({"runId": run_id, "resumed": True})

    @app.post("/v1/runs/{run_id}/steps/{step}/approve", tags=["gates"])
    async def approve(
        request: Request, run_id: str, step: str, body: Annotated[Decision | None, Body()] = None
    ) -> JSONResponse:
        """Approve a parked gate as the token's holder; the run continues at once."""
        decision = GateDecision(
            True,
            reason=body.reason if body else None,
            value=body.input if body else None,
            by=who(request).name,
        )
        ev = await run_in_threadpool(lambda: manager.decide(run_id, step, decision))
        return _json({"runId": run_id, "step": step, "decision": ev})

    @app.post("/v1/runs/{run_id}/steps/{step}/reject", tags=["gates"])
    async def reject(request: Request, run_id: str, step: str, body: Decision) -> JSONResponse:
        """Reject a parked gate (dependents are skipped); the run concludes at once."""
        decision = GateDecision(False, reason=body.reason or "rejected", by=who(request).name)
        ev = await run_in_threadpool(lambda: manager.decide(run_id, step, decision))
        return _json({"runId": run_id, "step": step, "decision": ev})

    @app.post("/v1/runs/{run_id}/steps/{step}/answer", tags=["gates"])
    async def answer(request: Request, run_id: str, step: str, body: Answer) -> JSONResponse:
        """Answer the question a step's agent asked; the run continues at once."""
        ev = await run_in_threadpool(
            lambda: manager.answer(
                run_id, step, body.text, by=who(request).name, replace=body.replace
            )
        )
        return _json({"runId": run_id, "step": step, "answer": ev})

    # -- delegations ------------------------------------------------------------------

    @app.post("/v1/delegations", status_code=201, tags=["delegations"])
    async def start_delegation(
        request: Request,
        body: StartDelegation,
        idempotency_key: str | None = Header(default=None),
    ) -> JSONResponse:
        """Start one delegation; the same `Idempotency-Key` returns the same delegation."""

        def go() -> tuple[str, bool]:
            target = body.target
            if body.capability and not target:
                target = manager.delegator.route(body.caller, body.capability).agent
            if not target:
                from engine.errors import UsageError

                raise UsageError("give `target` (an agent) or `capability`.")
            req = DelegationRequest(
                target=target,
                task=body.task,
                caller=body.caller,
                timeout=body.timeout,
                model=body.model,
                thinking=body.thinking,
                channel=body.channel,
                parent_run_id=body.parent_run_id,
            )
            return manager.start_delegation(req, by=who(request).name, key=idempotency_key)

        try:
            run_id, created = await run_in_threadpool(go)
        except OrchestratorError as exc:
            exc.message = _quote_key(exc.message, idempotency_key)
            raise
        doc = await run_in_threadpool(manager.delegation, run_id)
        return _json(
            {"runId": run_id, "created": created, "delegation": doc}, 201 if created else 200
        )

    @app.get("/v1/delegations/{run_id}", tags=["delegations"])
    async def get_delegation(run_id: str) -> JSONResponse:
        """A delegation: its record when it ended, else what is pending."""
        return _json(await run_in_threadpool(manager.delegation, run_id))

    @app.get("/v1/delegations/{run_id}/wait", tags=["delegations"])
    async def wait_delegation(
        run_id: str, timeout: float = Query(default=30.0, gt=0, le=MAX_WAIT)
    ) -> JSONResponse:
        """Wait until the delegation ends (bounded)."""

        def check() -> tuple[bool, dict[str, Any]]:
            doc = manager.delegation(run_id)
            return bool(doc["done"]), doc

        done, doc = await _wait(hub, run_id, check, timeout)
        return _json({**doc, "done": done})

    @app.get("/v1/delegations/{run_id}/tree", tags=["delegations"])
    async def delegation_tree(run_id: str) -> JSONResponse:
        """The delegation and its sub-delegations (children started with
        `parent_run_id`), nested, with each blocked child's question."""
        return _json({"tree": await run_in_threadpool(manager.tree, run_id)})

    @app.post("/v1/delegations/{run_id}/answer", status_code=201, tags=["delegations"])
    async def answer_delegation(request: Request, run_id: str, body: Answer) -> JSONResponse:
        """Answer a delegation's question: it continues as a new delegation (`runId`)."""
        new = await run_in_threadpool(
            lambda: manager.answer_delegation(run_id, body.text, by=who(request).name)
        )
        return _json({"runId": new, "answers": run_id}, 201)

    @app.post("/v1/delegations/{run_id}/cancel", tags=["delegations"])
    async def cancel_delegation(run_id: str) -> JSONResponse:
        """Stop waiting for a delegation this server runs (outcome `cancelled`)."""
        ok = await run_in_threadpool(manager.cancel_delegation, run_id)
        if not ok:
            raise RunStateError(f"delegation `{run_id}` is not running in this server.")
        return _json({"runId": run_id, "cancelling": True})

    # -- all runs ---------------------------------------------------------------------

    @app.get("/v1/events", tags=["events"])
    async def events(
        after: int = Query(default=0, ge=0), limit: int = Query(default=500, ge=1, le=5000)
    ) -> JSONResponse:
        """Events of all runs since the server started, after cursor `after` (`seq`)."""
        if after > hub.seq:  # a cursor from before a restart: start again from now
            return _json({"events": [], "cursor": hub.seq, "reset": True})
        evs = [ev for ev, _ in hub.since(after, None, limit)]
        reset = after + 1 < hub.oldest() and after != 0
        return _json(
            {"events": evs, "cursor": evs[-1]["seq"] if evs else max(after, 0), "reset": reset}
        )

    @app.get("/v1/events/stream", tags=["events"])
    async def events_stream(
        request: Request,
        after: int | None = Query(default=None, ge=0),
        last_event_id: str | None = Header(default=None),
    ) -> StreamingResponse:
        """Server-sent events of all runs (`id` is `seq`); without a cursor, from now on."""
        start = hub.seq if after is None and not last_event_id else _after(after, last_event_id)
        start = min(start, hub.seq)  # a cursor from before a restart: from now on

        async def gen() -> AsyncIterator[str]:
            seq = start
            yield ": connected\n\n"
            while not await request.is_disconnected():
                changed = hub.changed()
                new = hub.since(seq)
                if new:
                    seq = new[-1][0]["seq"]
                    yield "".join(_wire(ev["seq"], ev, data) for ev, data in new)
                    continue
                if hub.stopping:
                    yield _STOPPING
                    return
                try:
                    await asyncio.wait_for(changed.wait(), KEEPALIVE)
                except TimeoutError:
                    yield ": keep-alive\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream", headers=_SSE_HEADERS)

    # -- host -------------------------------------------------------------------------

    @app.get("/v1/pool", tags=["host"])
    async def pool() -> JSONResponse:
        """The token pool's status (as `orchestrate pool status --json`)."""
        return _json(await run_in_threadpool(pool_status, cfg))

    @app.get("/v1/agents", tags=["host"])
    async def agents() -> JSONResponse:
        """Each agent's gateway health (`GET <gateway>/health`, 2 s at most)."""
        return _json({"agents": await run_in_threadpool(agent_health, manager)})

    @app.get("/v1/metrics", tags=["host"])
    async def metrics_json() -> JSONResponse:
        """The metrics document (as `metrics json`)."""
        from engine.metrics import compute_metrics

        return _json(await run_in_threadpool(compute_metrics, cfg.handoffs_dir))

    @app.get("/metrics", tags=["host"])
    async def metrics_prom() -> Response:
        """Prometheus text format."""
        from engine.serve.prom import CONTENT_TYPE

        text = await run_in_threadpool(metrics_text)
        return Response(redact(text.decode()), media_type=CONTENT_TYPE)

    def openapi() -> dict[str, Any]:
        """The generated document, saying that every path but /health needs a bearer token."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            doc = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            doc.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            doc["security"] = [{"bearer": []}]
            doc["paths"]["/health"]["get"]["security"] = []
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
_SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
#: The last message of a stream when the server stops (no ``id``: a client resumes from
#: the last event it got, with ``Last-Event-ID``, once the server is back).
_STOPPING = (
    "event: server_stopping\n"
    'data: {"event": "server_stopping", "detail": "the server is stopping; reconnect with '
    'Last-Event-ID once it is back."}\n\n'
)


#: Characters of a client's value that an error message repeats (``quoted``).
QUOTE_LIMIT = 80
#: The longest workflow name the API looks up.
MAX_NAME = 128


def quoted(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """``value`` as an error message quotes it: ``repr`` of a string, ``json`` of anything
    else, cut to ``limit`` characters with the full length said (``'aaaa…' (1,000,000
    characters)``), so that an error never repeats a large request back."""
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, str | list | dict) else len(text)
    return f"{text[:limit]}… ({size:,} characters)"


def clip_quoted(message: str, longest: int = 200) -> str:
    """``message`` with every backquoted span longer than ``longest`` characters cut in
    the middle (its first and last ``QUOTE_LIMIT // 2`` characters, so a path keeps its
    file name, as ``engine.errors.clip_quoted`` cuts the CLI's) and its length given: an
    engine error that names a client's value (an input's name, a step's rendered task)
    never repeats a large request back."""
    import re

    half = QUOTE_LIMIT // 2

    def cut(m: re.Match[str]) -> str:
        inner = m.group(1)
        return f"`{inner[:half]}…{inner[-half:]}` ({len(inner):,} characters)"

    return re.sub("`([^`]{" + str(longest + 1) + ",})`", cut, message)


def _check_name(workflow: str) -> None:
    from engine.errors import UsageError
    from engine.files import SAFE_ID

    if len(workflow) > MAX_NAME or not SAFE_ID.match(workflow):
        raise UsageError(
            f"workflow {quoted(workflow)}: give a workflow name (at most {MAX_NAME} "
            "characters; see `GET /v1/workflows`); the API does not read template files by "
            "path."
        )


def _quote_key(message: str, key: str | None) -> str:
    """``message`` with the ``Idempotency-Key`` it repeats (``repr``, as
    ``engine.idempotency`` writes it) cut as ``quoted`` cuts a value: at most
    ``QUOTE_LIMIT`` characters, with the key's full length."""
    if not key:
        return message
    return message.replace(repr(key), quoted(key))


def _api_advice(message: str) -> str:
    """A planner error as an API client reads it: the JSON field `inputs.NAME` instead
    of the CLI's `--input NAME=...`."""
    import re

    message = re.sub(
        r"pass `--input ([^`=]+)=\.\.\.`", r"give it as the JSON field `inputs.\1`", message
    )
    return re.sub(r" \(`--input ([^`=]+)=\.\.\.`\)", "", message)


async def _wait(
    hub: EventHub,
    run_id: str,
    check: Callable[[], tuple[bool, dict[str, Any]]],
    timeout: float,
) -> tuple[bool, dict[str, Any]]:
    """Check when ``run_id`` has news (or each second: another process may end it)."""
    deadline = time.monotonic() + timeout
    while True:
        changed = hub.changed()
        snap = hub.seq
        done, doc = await run_in_threadpool(check)
        while True:
            left = deadline - time.monotonic()
            if done or left <= 0:
                return done, doc
            if hub.stopping:
                raise ServerStopping(
                    f"the server is stopping: this wait ended before `{run_id}` did. It "
                    "goes on when `orchestrate serve` starts again; ask again then."
                )
            try:
                await asyncio.wait_for(changed.wait(), min(left, 1.0))
            except TimeoutError:
                break
            if hub.since(snap, run_id, limit=1):
                break
            changed = hub.changed()  # news of other runs only: keep waiting


# ----------------------------------------------------------------------------- read model


def run_doc(manager: RunManager, run_id: str) -> dict[str, Any]:
    """Everything the API and the dashboard show about a run.

    ``engine.runner.run_status``'s dict, each step enriched with its record (handoff,
    attempt log, validation, times), its rendered task and repairs, usage, and what it
    waits for; plus ``plan``, ``progress``, ``started_by``, ``owned``, ``executing``,
    ``error`` and ``cursor`` (the journal's line count). Raises ``UsageError`` for an
    unknown run.
    """
    from engine.runs import replay, run_status

    store = manager.delegator.store
    path = manager.run_path(run_id)
    status = run_status(manager.cfg, run_id, store=store)
    view = replay(path, store=store)
    plan = view.meta.get("plan") or {}
    for sid, row in status["steps"].items():
        _add_record(row, store.read_step(run_id, sid))
        s = view.steps.get(sid)
        if s is not None:
            _add_task(row, store, s.delegation_run_id)
            _add_waiting(row, sid, s, view.events)
        handoff = row.get("handoff")
        if isinstance(handoff, dict) and handoff.get("usage"):
            row["usage"] = handoff["usage"]
    owner = manager.owned(run_id) or {}
    error = _inputs_missing(status, run_id, manager.waiting_for_inputs(run_id))
    if error is None:
        error = manager.last_error(run_id)
    summary = store.read_summary(run_id)
    if isinstance(summary, dict) and isinstance(summary.get("outputs"), dict):
        status["outputs"] = summary["outputs"]
    return {
        **status,
        "plan": {"groups": plan.get("groups") or [], "steps": plan.get("steps") or {}},
        "progress": {
            "done": sum(1 for s in view.steps.values() if s.state.final),
            "total": len(status["steps"]),
        },
        "started_by": owner.get("by"),
        "owned": bool(owner),
        "executing": manager.executing(run_id),
        "error": error,
        "cursor": len(view.events) and _last_line(manager, run_id),
    }


def _inputs_missing(status: dict[str, Any], run_id: str, missing: list[str]) -> str | None:
    """Mark ``status`` (``run_status``'s) of a run that waits for the secret inputs
    ``missing`` this server lacks, and return the paragraph saying how to give them; None
    when it does not wait for them. A parked run keeps its state (a decision or answer
    waits for them); one in flight when the server restarted reads ``waiting_input``."""
    if not missing:
        return None
    if status["status"] in ("waiting_approval", "waiting_input"):
        status["inputs_missing"] = missing
        return missing_inputs_paragraph(run_id, missing)
    if status["status"] != "running" or status["live"]:
        return None
    error = missing_inputs_paragraph(run_id, missing)
    status["status"] = "waiting_input"
    status["inputs_missing"] = missing
    for row in status["steps"].values():
        if row.get("status") == "running":
            line = str(row.get("waiting") or "").split(" (no process")[0]
            row["waiting"] = f"{line}; {error}"
    return error


def _add_record(row: dict[str, Any], rec: Any) -> None:
    """Copy a step record's details into its row; ``attempt_log`` is the record's log of
    tries. ``attempts`` stays the journal's count, as ``workflow status`` shows it (a
    question answered starts another attempt, which the record's log does not list)."""
    if not isinstance(rec, dict):
        return
    for k in ("handoff", "validation", "started_at", "finished_at"):
        row[k] = rec.get(k)
    row["attempt_log"] = rec.get("attempts")


def _add_task(row: dict[str, Any], store: RunStore, drid: str | None) -> None:
    """The delegation's rendered task and repairs, from its record or its pending file."""
    if not drid:
        return
    env = store.read(drid, sub=False)
    env = env.get("envelope") if isinstance(env, dict) else None
    if not isinstance(env, dict):
        env = store.read_pending(drid, sub=False)
    if isinstance(env, dict):
        row["task"] = env.get("task")
        if env.get("repairs"):
            row["repairs"] = env.get("repairs")


def _add_waiting(row: dict[str, Any], sid: str, step: Any, events: list[dict[str, Any]]) -> None:
    """Why a parked step waits: its question, or its gate's prompt."""
    state = step.state.value
    if state == "waiting_input" and step.question:
        row["question"] = step.question
        row["waiting"] = (
            "asks a question: answer it"
            if step.question.get("answer") is None
            else "answered: the run continues"
        )
    elif state == "waiting_approval":
        row["prompt"] = next(
            (
                e.get("prompt")
                for e in reversed(events)
                if e.get("event") == "gate_waiting" and e.get("step") == sid
            ),
            None,
        )
        row["waiting"] = "at its approval gate: approve or reject it"


def diagnose(manager: RunManager, run_id: str) -> dict[str, Any]:
    """The run's state with what explains it: the executing process, each open step's
    delegation (dispatched, deadline, gateway run), journal warnings, the pool."""
    import os

    from engine.runs import replay, run_status

    store = manager.delegator.store
    path = manager.run_path(run_id)
    status = run_status(manager.cfg, run_id, store=store)
    view = replay(path, store=store)
    holder = None
    try:
        holder = (path / ".lock").read_text(encoding="utf-8").strip() or None
    except OSError:
        pass
    steps: dict[str, Any] = {}
    for sid, s in view.steps.items():
        if s.state.final:
            continue
        row: dict[str, Any] = {
            "status": s.state.value,
            "waiting": status["steps"][sid].get("waiting"),
        }
        if s.delegation_run_id and s.state.value in ("running", "queued"):
            env = store.read_pending(s.delegation_run_id, sub=False)
            if isinstance(env, dict):
                row["delegation"] = {
                    k: env.get(k)
                    for k in (
                        "outcome",
                        "target",
                        "dispatched_at",
                        "deadline_at",
                        "attempts",
                        "gateway_run_id",
                        "token_wait_ms",
                        "pid",
                        "host",
                    )
                }
            row["delegation_run_id"] = s.delegation_run_id
        steps[sid] = row
    pool = pool_status(manager.cfg)
    owner = manager.owned(run_id) or {}
    return {
        "runId": run_id,
        "status": view.state.value,
        "live": status["live"],
        "lock_pid": int(holder) if holder and holder.isdigit() and status["live"] else None,
        "server_pid": os.getpid(),
        "executing_here": manager.executing(run_id),
        "owned": bool(owner),
        "started_by": owner.get("by"),
        "last_error": manager.last_error(run_id),
        "journal_warnings": view.warnings,
        "open_steps": steps,
        "pool": {
            "enabled": bool(pool.get("enabled")),
            "size": pool.get("size"),
            "in_use": len(pool.get("in_use") or []),
            "queue": len(pool.get("queue") or []),
        },
        "max_parallel": manager.max_parallel,
    }


def _last_line(manager: RunManager, run_id: str) -> int:
    store = manager.delegator.store
    if not isinstance(store, FileRunStore):
        return len(store.events(run_id))
    with open(store.run_locator(run_id) / "events.jsonl", "rb") as fh:
        return sum(1 for _ in fh)


def _journal(manager: RunManager, run_id: str, after: int = 0) -> list[dict[str, Any]]:
    """The run's journal events after line ``after``, each with its ``line`` number."""
    store = manager.delegator.store
    if isinstance(store, FileRunStore):
        return read_journal(store.run_locator(run_id) / "events.jsonl", after)
    return [
        {**ev, "line": n}
        for n, ev in store.events(run_id)
        if n > after and isinstance(ev, dict) and "event" in ev
    ]


def list_page(
    manager: RunManager,
    status: str | None,
    workflow: str | None,
    limit: int,
    cursor: str | None,
) -> dict[str, Any]:
    """One page of runs, newest first (``engine.runs.admin.runs_newest_first``: runs
    started in the same second by run.json's ``created_at``); ``next`` is the cursor of
    the next page (the last run id of this one).

    Runs are replayed only until the page is full, however many the directory holds.
    """
    from engine.errors import UsageError
    from engine.files import SAFE_ID
    from engine.runner import RunState
    from engine.runs import replay, run_row
    from engine.runs.admin import runs_newest_first

    store = manager.delegator.store
    states = [state.value for state in RunState]
    if status and status not in states:
        raise UsageError(
            f"`status` {quoted(status)} is not a run state; use one of: {', '.join(states)}."
        )
    if cursor and (not SAFE_ID.match(cursor) or not store.run_exists(cursor)):
        raise UsageError(
            f"`cursor` {quoted(cursor)} names no run: give the `next` of the previous page."
        )
    rows: list[dict[str, Any]] = []
    more = False
    for name in runs_newest_first(store, after=cursor or None):
        try:
            view = replay(store.run_locator(name), store=store)
        except OrchestratorError:
            continue
        if (status and view.state.value != status) or (
            workflow and view.meta.get("workflow") != workflow
        ):
            continue
        if len(rows) == limit:
            more = True
            break
        rows.append(run_row(view))
    return {"runs": rows, "next": rows[-1]["runId"] if more and rows else None}


def pool_status(cfg: Any) -> dict[str, Any]:
    """The pool's status, or ``{"enabled": false}``."""
    from engine.pool import PoolSettings, TokenPool

    settings = PoolSettings.from_config(cfg)
    if not settings.enabled:
        return {"enabled": False}
    with TokenPool(settings) as pool:
        status: dict[str, Any] = pool.status()
    return status


def agent_health(manager: RunManager) -> list[dict[str, Any]]:
    """Probe each agent's gateway ``/health`` once (one probe per gateway URL)."""
    import httpx

    delegator = manager.delegator
    urls: dict[str, str] = {}
    for name, agent in manager.cfg.agents.items():
        url = delegator.local_url if agent.is_local else agent.url
        urls[name] = url or ""
    seen: dict[str, tuple[str, str]] = {}
    with httpx.Client(timeout=2.0) as client:
        for url in set(urls.values()):
            if not url:
                seen[url] = ("down", "no gateway running")
                continue
            try:
                r = client.get(f"{url}/health")
                seen[url] = (
                    ("ok", "") if r.status_code == 200 else ("down", f"HTTP {r.status_code}")
                )
            except httpx.HTTPError as exc:
                seen[url] = ("down", type(exc).__name__)
    return [
        {
            "name": n,
            "health": seen[u][0],
            "detail": seen[u][1],
            "local": manager.cfg.agents[n].is_local,
        }
        for n, u in sorted(urls.items())
    ]
