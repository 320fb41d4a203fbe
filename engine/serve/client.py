"""The CLI as a thin remote of ``orchestrate serve`` (``--server URL``).

Each call returns the same engine value the local command renders (``RunResult``,
``DelegationResult``, the status dict), so ``--json`` output keeps its shape::

    client = ServerClient("http://10.0.0.5:8765", token_env="ORCH_SERVER_TOKEN")
    result = client.run_workflow("quick-research", {"query": "CTE of ULE"})
    result.state, result.exit_code
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import httpx

from engine.errors import EXIT_USAGE, OrchestratorError
from engine.files import check_id
from engine.redact import register

if TYPE_CHECKING:
    from engine.runs import GateDecision

DEFAULT_TOKEN_ENV = "ORCH_SERVER_TOKEN"
SERVER_ENV = "ORCH_SERVER"
WAIT_CHUNK = 60.0  # seconds per /wait call; the client loops, the server stays bounded

#: The keys of a step in a local summary (the server adds details the CLI leaves out).
_ALWAYS = ("status", "agent", "attempts", "duration_ms", "confidence", "delegation_run_id")
_WHEN_SET = (
    "skip_reason",
    "error",
    "gate",
    "question",
    "waiting",
    "progress",
    "spent",
    "items",
    "child_run_id",
)
_SERVER_ONLY = ("plan", "progress", "started_by", "owned", "executing", "error", "cursor", "done")


class RemoteError(OrchestratorError):
    """Raised when the server refuses a call or cannot be reached (its exit code is kept)."""

    def __init__(self, message: str, *, exit_code: int = EXIT_USAGE, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.exit_code = exit_code


def check_server_url(url: str) -> str:
    """``url`` without a trailing ``/`` when it names a server: ``http://`` or ``https://``,
    a host, and no path (``/v1`` and the like are added by the client), query, fragment
    or credentials (the token travels in a header).

    Raises ``RemoteError`` (exit 2) with one paragraph naming the value otherwise.
    """
    shown = url if len(url) <= 120 else url[:120] + "…"
    example = "e.g. `--server http://10.0.0.5:8765`"
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 (a port that is not a number raises here)
    except ValueError:
        parts = None
    if parts is not None and "@" in parts.netloc:  # never echo a password
        host = parts.netloc.rsplit("@", 1)[1]
        raise RemoteError(
            f"`--server` (or $ORCH_SERVER) carries a user or password in its URL: give the "
            f"address alone (`{parts.scheme}://{host}`) and the token in ${DEFAULT_TOKEN_ENV} "
            "(or `--server-token-env VAR`)."
        )
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise RemoteError(
            f"`--server {shown}` (or $ORCH_SERVER) is not a server URL: give the scheme "
            f"`http://` or `https://`, the host and the port of `orchestrate serve`, {example}."
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        base = f"{parts.scheme}://{parts.netloc}"
        raise RemoteError(
            f"`--server {shown}` (or $ORCH_SERVER): give the server's address without a "
            f"path (`{base}`); the client adds `/v1/...` itself."
        )
    return url.strip().rstrip("/")


def segment(value: str, what: str = "run id") -> str:
    """``value`` as one path segment of an API URL: checked as ``engine.files.check_id``
    checks an id that names a file (``InvalidIdError``, exit 2, naming the value: no `/`,
    `.` or `..` that would make the URL name another run), then percent-encoded."""
    return quote(check_id(value, what), safe="")


class ServerClient:
    """Calls one server with one bearer token (read from an environment variable).

    Raises ``RemoteError`` (exit 2) for a URL that is not a server's (``check_server_url``)
    or a named token variable that is unset.
    """

    def __init__(
        self,
        url: str,
        *,
        token_env: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = check_server_url(url)
        env = token_env or DEFAULT_TOKEN_ENV
        self.token_env = env
        token = os.environ.get(env, "").strip()
        self.has_token = bool(token)
        #: The steps of the last run waited for whose gate asks for a value (its plan).
        self.gate_inputs: frozenset[str] = frozenset()
        #: The options that name this server again in a hint (` --server URL`, and
        #: ` --server-token-env VAR` when the variable is not the default).
        self.flags = f" --server {self.url}" + (
            f" --server-token-env {env}" if env != DEFAULT_TOKEN_ENV else ""
        )
        if token_env and not token:
            raise RemoteError(
                f"`--server-token-env {token_env}`: environment variable `{token_env}` is not "
                "set or empty; export the server token there."
            )
        register(token)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(
            base_url=self.url, headers=headers, timeout=WAIT_CHUNK + 30, transport=transport
        )

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def __enter__(self) -> ServerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise RemoteError(self._unreachable(exc)) from None
        try:
            data = r.json()
        except ValueError:
            data = None
        if not isinstance(data, dict | list) or (
            r.status_code >= 400 and not (isinstance(data, dict) and "detail" in data)
        ):
            raise RemoteError(self._not_a_server(r.status_code, path))
        if r.status_code >= 400:
            detail = data.get("detail") if isinstance(data, dict) else None
            code = data.get("exit_code") if isinstance(data, dict) else None
            if r.status_code == 401:
                detail, code = self._unauthorized(), EXIT_USAGE
            elif r.status_code == 403 and not isinstance(code, int):
                code = 5
            elif r.status_code == 404 and isinstance(detail, str):
                detail = self._not_found(path, detail)
            raise RemoteError(
                str(detail or f"HTTP {r.status_code}"),
                exit_code=code if isinstance(code, int) else EXIT_USAGE,
            )
        return data

    def _unreachable(self, exc: httpx.HTTPError) -> str:
        """Why the server at ``self.url`` could not be asked, in words (connection refused,
        timed out, no such host...), and what to do: never an exception's class name."""
        text = str(exc).lower()
        if isinstance(exc, httpx.TimeoutException):
            why = "it did not answer in time (timed out)"
            todo = "it may be overloaded or hung: check its log, then try again"
        elif isinstance(exc, httpx.ConnectError) and "refused" in text:
            why = "connection refused (nothing listens on that host and port)"
            todo = "start `orchestrate serve` there, or give the address it serves on"
        elif isinstance(exc, httpx.ConnectError) and any(
            word in text for word in ("name or service", "nodename", "getaddrinfo", "resolution")
        ):
            why = "its host name does not resolve"
            todo = "check the host name"
        elif isinstance(exc, httpx.ConnectError):
            why = "no connection could be made (the host is unreachable)"
            todo = "check the address and the network"
        else:
            why = "the connection broke before it answered"
            todo = "check that `orchestrate serve` runs there, then try again"
        return (
            f"cannot reach the server `{self.url}`: {why}. {todo[:1].upper()}{todo[1:]} "
            "(`--server URL` or $ORCH_SERVER)."
        )

    def _not_found(self, path: str, detail: str) -> str:
        """The server's 404 paragraph with the hint the same error gets on this host: where
        run ids come from."""
        if path.startswith("/v1/delegations/") and "Run ids" not in detail:
            return (
                f"{detail} Run ids are printed by `orchestrate` (`record: ...`) and listed by "
                f"`metrics json` on the server's host."
            )
        if path.startswith("/v1/runs/") and "workflow runs" not in detail:
            return f"{detail} List runs with `workflow runs{self.flags}`."
        return detail

    def _not_a_server(self, status: int, path: str) -> str:
        """What to say when the answer is not the JSON of `orchestrate serve` (a web page,
        another service): which address answered what, never the page itself."""
        return (
            f"`{self.url}` answered {status} to {path} with something other than the JSON "
            "of `orchestrate serve`; is `orchestrate serve` running there (check `--server` "
            "/ $ORCH_SERVER)?"
        )

    def _unauthorized(self) -> str:
        """What to do about a 401: no token was sent (its variable is unset), or the server
        does not know the one sent (a wrong credential: exit 2, as a gateway's 401)."""
        other = "" if self.token_env != DEFAULT_TOKEN_ENV else " (or `--server-token-env VAR`)"
        if not self.has_token:
            return (
                f"the server `{self.url}` needs a token, and environment variable "
                f"`{self.token_env}` is not set or empty; export the server token "
                f"there{other}."
            )
        return (
            f"the server `{self.url}` refused the token from environment variable "
            f"`{self.token_env}`: set it{other} to a token the server knows (its "
            "`serve.tokens_env` or `serve.tokens_file`)."
        )

    # -- workflow runs --------------------------------------------------------------------

    def run_workflow(
        self,
        workflow: str,
        inputs: dict[str, str],
        *,
        caller: str | None = None,
        approve: tuple[str, ...] = (),
        approve_all: bool = False,
        key: str | None = None,
    ) -> Any:
        """Start a run and wait until it ends or parks at a gate; a ``RunResult``."""
        headers = {"Idempotency-Key": key} if key else {}
        body = {
            "workflow": workflow,
            "inputs": inputs,
            "caller": caller,
            "approve": list(approve),
            "approve_all": approve_all,
        }
        run_id = self._call("POST", "/v1/runs", json=body, headers=headers)["runId"]
        return self.wait_run(run_id)

    def wait_run(self, run_id: str) -> Any:
        """Wait (in bounded chunks) until the run ends or parks; a ``RunResult``."""
        from engine.runner import RunResult, RunState

        while True:
            doc = self._call(
                "GET",
                f"/v1/runs/{segment(run_id)}/wait",
                params={"until": "parked", "timeout": WAIT_CHUNK},
            )
            if doc.get("done"):
                break
            time.sleep(0)  # the server waited; loop at once
        plan = (doc.get("plan") or {}).get("steps") or {}
        self.gate_inputs = frozenset(
            sid for sid, step in plan.items() if isinstance(step, dict) and step.get("gate_input")
        )
        summary = summary_shape(doc, self.flags)
        summary.pop("live", None)
        run_dir = summary.pop("run_dir", "")
        return RunResult(run_id, RunState(doc["status"]), Path(run_dir), summary)

    def status(self, run_id: str) -> dict[str, Any]:
        """The run's status, shaped as ``engine.runs.run_status`` returns it."""
        return summary_shape(self._call("GET", f"/v1/runs/{segment(run_id)}"), self.flags)

    def runs(self, limit: int) -> list[dict[str, Any]]:
        """The server's ``limit`` most recent runs, newest first, shaped as
        ``engine.runs.list_runs`` returns them (pages of ``GET /v1/runs`` followed)."""
        rows: list[dict[str, Any]] = []
        cursor: str | None = None
        while len(rows) < limit:
            params: dict[str, Any] = {"limit": min(500, limit - len(rows))}
            if cursor:
                params["cursor"] = cursor
            page = self._call("GET", "/v1/runs", params=params)
            for row in page.get("runs") or []:
                rows.append({**row, "workflow": str(row.get("workflow"))})
            cursor = page.get("next")
            if not cursor:
                break
        return rows[:limit]

    def resume(self, run_id: str, inputs: dict[str, Any] | None = None) -> Any:
        """Have the server take over a run no process executes (``POST .../resume``), and
        wait until it ends or parks; a ``RunResult``. ``inputs`` gives again the secret
        inputs the run holds only masked (``{"inputs": ...}`` in the body). Raises
        ``RemoteError`` (exit 2) for a run that has ended or a value that does not match."""
        body = {"inputs": inputs} if inputs else None
        self._call("POST", f"/v1/runs/{segment(run_id)}/resume", json=body)
        return self.wait_run(run_id)

    def decide(self, run_id: str, step: str, decision: GateDecision) -> dict[str, Any]:
        """Approve or reject a gate (``decision.value``: a gate's typed input); the server
        continues the run, recording the token's name as who decided (``decision.by`` is
        not sent). Raises ``RemoteError`` (exit 2) when the value is missing or wrong."""
        what = "approve" if decision.approved else "reject"
        body: dict[str, Any] = {"reason": decision.reason}
        if decision.value is not None:
            body["input"] = decision.value
        data: dict[str, Any] = self._call(
            "POST", f"/v1/runs/{segment(run_id)}/steps/{segment(step, 'step')}/{what}", json=body
        )
        return data

    def answer(self, run_id: str, step: str, text: str, *, replace: bool = False) -> dict[str, Any]:
        """Answer the question STEP's agent asked; the server continues the run.

        The answerer recorded is the token's name (the server ignores a client-side ``by``).
        Raises ``RemoteError`` (exit 2) when the step asks nothing, or was answered already
        and ``replace`` is not given.
        """
        data: dict[str, Any] = self._call(
            "POST",
            f"/v1/runs/{segment(run_id)}/steps/{segment(step, 'step')}/answer",
            json={"text": text, "replace": replace},
        )
        return data

    def cancel(self, run_id: str) -> Any:
        """Cancel a run; its state afterwards."""
        from engine.runner import RunState

        return RunState(self._call("POST", f"/v1/runs/{segment(run_id)}/cancel")["status"])

    # -- delegations ----------------------------------------------------------------------

    def delegate(self, request: dict[str, Any], *, key: str | None = None) -> Any:
        """Start a delegation and wait for its end; a ``DelegationResult``."""
        headers = {"Idempotency-Key": key} if key else {}
        run_id = self._call("POST", "/v1/delegations", json=request, headers=headers)["runId"]
        return self.wait_delegation(run_id)

    def answer_delegation(self, run_id: str, text: str) -> Any:
        """Answer a ``blocked`` delegation's question; wait for its continuation
        (``<run>-aN``, a ``DelegationResult``). The answerer is the token's name."""
        new = self._call("POST", f"/v1/delegations/{segment(run_id)}/answer", json={"text": text})
        return self.wait_delegation(str(new["runId"]))

    def delegation(self, run_id: str) -> dict[str, Any]:
        """``GET /v1/delegations/{id}``: ``{runId, status, done, record}`` (``record`` None
        while it runs, then ``envelope`` is its pending envelope). Raises ``RemoteError``
        (exit 2) for an id the server does not know."""
        data: dict[str, Any] = self._call("GET", f"/v1/delegations/{segment(run_id)}")
        return data

    def tree(self, run_id: str) -> dict[str, Any]:
        """``GET /v1/delegations/{id}/tree``: the delegation and its sub-delegations,
        nested, shaped as ``RunStore.tree`` returns it (each node's ``children``)."""
        tree: dict[str, Any] = self._call("GET", f"/v1/delegations/{segment(run_id)}/tree")["tree"]
        return tree

    def pool(self) -> dict[str, Any]:
        """``GET /v1/pool``: the server's pool status as ``TokenPool.status()`` returns it,
        or ``{"enabled": false}`` when its config turns the pool off."""
        data: dict[str, Any] = self._call("GET", "/v1/pool")
        return data

    def wait_delegation(self, run_id: str) -> Any:
        """Wait (in bounded chunks) until the delegation ends; a ``DelegationResult``."""
        from engine.delegate import DelegationResult, Outcome

        while True:
            doc = self._call(
                "GET", f"/v1/delegations/{segment(run_id)}/wait", params={"timeout": WAIT_CHUNK}
            )
            if doc.get("done"):
                break
        record = doc.get("record") or {}
        if not record:
            raise RemoteError(f"delegation `{run_id}` ended without a record: {doc.get('error')}")
        error = None
        env = record.get("envelope") or {}
        if env.get("error"):
            error = RemoteError(str(env["error"]))
        return DelegationResult(
            run_id,
            Outcome(doc["status"]),
            f"{self.url}/v1/delegations/{run_id}",  # a URL: Path() would fold its `//`
            record,
            error,
        )


def summary_shape(doc: dict[str, Any], flags: str = "") -> dict[str, Any]:
    """A server run document cut to the keys of the local summary / status.

    A parked step's ``waiting`` names the command that moves it, as locally, with
    ``flags`` (``ServerClient.flags``) so that it acts through the server; no
    ``workflow resume``: the server continues the run itself.
    """
    out = {k: v for k, v in doc.items() if k not in _SERVER_ONLY}
    steps = {}
    rid = doc.get("runId")
    for sid, row in (doc.get("steps") or {}).items():
        step = {k: row.get(k) for k in _ALWAYS}
        step.update({k: row[k] for k in _WHEN_SET if row.get(k)})
        if step.get("child_run_id"):
            pass  # the server's line names the child run
        elif step["status"] == "waiting_input" and isinstance(step.get("question"), dict):
            q = step["question"]
            step["waiting"] = (
                f'asked "{q.get("text", "?")}"; answered: the server continues the run'
                if q.get("answer") is not None
                else f'asks "{q.get("text", "?")}": answer with '
                f'`workflow answer {rid} {sid} "..."{flags}`'
            )
        elif step["status"] == "waiting_approval":
            step["waiting"] = (
                f"at its approval gate: `workflow approve {rid} {sid}{flags}` or "
                f"`workflow reject {rid} {sid} --reason ...{flags}`"
            )
        steps[sid] = step
    out["steps"] = steps
    return out
