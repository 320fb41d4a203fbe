"""No secret is ever shown: a distinctive token, sent to gateways that echo it, never lands
in stdout, stderr, records, journals, summaries, workspaces or logs.

The end-to-end tests run the real CLI in a subprocess against real servers on 127.0.0.1
that echo the request's ``Authorization`` header in their error bodies (401, 403, 500)
and in a 200 body, then walk every file the run left.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine import redact as redaction
from engine.redact import MASK, redact, redact_obj, register, register_url
from tests.helpers import demo_config

# -- the redaction itself -----------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_secrets() -> Iterator[None]:
    redaction.forget_all()
    yield
    redaction.forget_all()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("403 forbidden: Bearer abc123def", "403 forbidden: Bearer ***"),
        ("authorization: Bearer abc123def", "authorization: Bearer ***"),
        ('{"Authorization": "Bearer abc123def"}', '{"Authorization": "Bearer ***"}'),
        ("{'authorization': 'Bot abc.def.ghi'}", "{'authorization': 'Bot ***'}"),
        ("x-openclaw-token: abc123def", "x-openclaw-token: ***"),
        ("X-Api-Key=abc123def", "X-Api-Key=***"),
        ("key sk-proj-abcdefghijklmnop0123 used", "key sk-*** used"),
        ("see https://bob:hunter22@example.com/x", "see https://***@example.com/x"),
        ("git+ssh://tok3n@example.com/repo", "git+ssh://***@example.com/repo"),
        ("https://ghp_0a1b2c3d4e5f6a7b8c9d@github.com/x", "https://***@github.com/x"),
        ("https://abcdefghijklmnopqrstuvwxyz@h/x", "https://***@h/x"),
        ("ssh://git:pw@github.com/acme", "ssh://***@github.com/acme"),
        # ordinary text is left alone
        ("Bearer tokens are documented", "Bearer tokens are documented"),
        ("http://127.0.0.1:8080/hooks/agent", "http://127.0.0.1:8080/hooks/agent"),
        ("mail bob@example.com", "mail bob@example.com"),
        ("risk-free sk-ill", "risk-free sk-ill"),
        ("summarise ssh://git@github.com/acme/widgets", "summarise ssh://git@github.com/acme/widgets"),
        ("clone https://deploy-bot@host/x.git", "clone https://deploy-bot@host/x.git"),
        ("postgresql://orch2@db/orch", "postgresql://orch2@db/orch"),
    ],
    ids=[
        "bearer-in-text",
        "header-line",
        "header-json",
        "header-repr-bot",
        "openclaw-header",
        "api-key-header",
        "sk-key",
        "url-password",
        "url-token-user",
        "url-token-user-long",
        "url-letters-token-user",
        "url-ssh-password",
        "bearer-prose",
        "plain-url",
        "email",
        "not-a-key",
        "url-ssh-user",
        "url-named-user",
        "url-pg-role",
    ],
)
def test_generic_shapes_are_masked(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_known_values_are_masked_anywhere() -> None:
    token = "s3cret-" + secrets.token_hex(8)
    register(token)
    assert redact(f"token={token}; again:{token}!") == f"token={MASK}; again:{MASK}!"
    assert redact(f"[{token}]") == f"[{MASK}]"
    # a secret that contains another is masked whole
    register(token[:-2])
    assert redact(token) == MASK


def test_json_escaped_form_is_masked() -> None:
    token = 'we"ird\\tok'
    register(token)
    dumped = json.dumps({"error": f"echo {token}"})
    assert token not in redact(dumped) and json.dumps(token)[1:-1] not in redact(dumped)
    assert json.loads(redact(dumped)) == {"error": f"echo {MASK}"}


def test_short_and_empty_values_are_not_registered() -> None:
    for value in ("", None, "abc", "  x "):
        register(value)
    assert redaction.known_count() == 0
    assert redact("abc x") == "abc x"


def test_url_credentials_are_registered_with_their_basic_form() -> None:
    register_url("https://bob:pa55%2Fword@example.com/v1")
    basic = base64.b64encode(b"bob:pa55/word").decode()
    assert redact("pa55/word") == MASK
    assert redact(f"echo Basic {basic}") == f"echo Basic {MASK}"
    register_url("http://127.0.0.1:1/no-credentials")
    register_url("not a url @ all")
    register_url("ssh://deploy@example.com/repo")  # a user name, no password: not a secret
    assert redact("deploy the app") == "deploy the app"


def test_redact_obj_is_deep_and_keeps_types() -> None:
    token = "tok-" + secrets.token_hex(8)
    register(token)
    obj = {"a": [token, 1, 2.5, None, True, {"b": f"x {token}"}], token: ("t", token)}
    assert redact_obj(obj) == {
        "a": [MASK, 1, 2.5, None, True, {"b": f"x {MASK}"}],
        MASK: ["t", MASK],
    }


def test_log_filter_redacts_message_args_and_traceback(caplog: pytest.LogCaptureFixture) -> None:
    token = "tok-" + secrets.token_hex(8)
    register(token)
    logger = logging.getLogger("engine.test_secrets")
    redaction.install_log_filter(logger)
    redaction.install_log_filter(logger)
    assert len(logger.filters) == 1
    with caplog.at_level(logging.INFO, logger="engine.test_secrets"):
        logger.info("sent %s", f"Bearer {token}")
        try:
            raise RuntimeError(f"boom {token}")
        except RuntimeError:
            logger.exception("failed")
    text = caplog.text
    assert token not in text
    assert "sent Bearer ***" in text and "RuntimeError: boom ***" in text


def test_redaction_is_cheap_on_a_record() -> None:
    """Not a timing assertion: the number of regex scans on a record without hits is zero."""
    record = json.dumps({"result": "x" * 4000, "envelope": {"url": "http://127.0.0.1:1"}})
    register("tok-" + secrets.token_hex(8))
    calls: list[str] = []
    generic, known = redaction._GENERIC, redaction._known_re
    assert known is not None

    class Spy:
        def __init__(self, pattern: Any, name: str) -> None:
            self.pattern, self.name = pattern, name

        def sub(self, *args: Any) -> Any:
            calls.append(self.name)
            return self.pattern.sub(*args)

    redaction._GENERIC = Spy(generic, "generic")  # type: ignore[assignment]
    redaction._known_re = Spy(known, "known")  # type: ignore[assignment]
    try:
        assert redact(record) == record
        assert calls == []
        redact(record + " Bearer abc123def")
        assert calls == ["generic"]
    finally:
        redaction._GENERIC, redaction._known_re = generic, known


# -- servers that echo what they were sent -------------------------------------------------


class Echo:
    """An HTTP server on 127.0.0.1 that answers scripted statuses and echoes the auth header.

    ``/hooks/agent``: 401/403/500 bodies quote the ``Authorization`` header; a 200 body
    quotes it too (in ``runId`` and ``echo``) and then plays a well-behaved agent.
    ``/handoffs/<id>``: the receiver, same statuses. ``/v1/chat/completions``: a model
    endpoint. ``/channels/<id>/messages``: Discord.
    """

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.seen: list[str] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _next(self) -> tuple[int, str]:
                auth = self.headers.get("Authorization", "")
                with outer._lock:
                    outer.seen.append(auth)
                    status = outer.statuses.pop(0) if outer.statuses else 200
                return status, auth

            def do_GET(self) -> None:  # noqa: N802
                status, auth = self._next()
                self._answer(status, {"message": f"{status} forbidden: {auth}", "code": 0})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                status, auth = self._next()
                headers = dict(self.headers)
                if status != 200:
                    self._answer(
                        status,
                        {"ok": False, "error": f"{status} forbidden: {auth}", "headers": headers},
                    )
                    return
                if self.path.startswith("/v1/"):
                    self._answer(
                        200, {"choices": [{"message": {"content": f"your key is {auth}"}}]}
                    )
                    return
                self._answer(200, {"ok": True, "runId": f"echo {auth}", "echo": headers})
                if self.path == "/hooks/agent":
                    from engine.handoff import make_handoff, write_handoff
                    from engine.message import parse_handoff_block

                    block = parse_handoff_block(body.get("message", ""))
                    write_handoff(
                        Path(block["handoff_path"]),
                        make_handoff(
                            run_id=block["run_id"],
                            agent=block["agent"],
                            status="complete",
                            result="echo agent: done",
                            key=block.get("key"),
                        ),
                    )

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def echo() -> Iterator[Any]:
    made: list[Echo] = []

    def make(statuses: list[int]) -> Echo:
        server = Echo(statuses)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


TOKEN = "tok-" + secrets.token_hex(16)
API_KEY = "sk-" + secrets.token_hex(20)
DISCORD = "discord-" + secrets.token_hex(16)
URL_PASSWORD = "pw-" + secrets.token_hex(12)


def run_cli(tmp_path: Path, raw: dict[str, Any], *args: str, prog: str = "orchestrate") -> Any:
    """Run a console command in a subprocess with the secrets in its environment."""
    conf_dir = tmp_path / "conf"  # the user's own input: not part of what a run leaves
    conf_dir.mkdir(exist_ok=True)
    config = conf_dir / "orchestrator.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    env = {
        **os.environ,
        "STANDIN_TOKEN": TOKEN,
        "MODEL_KEY": API_KEY,
        "DISCORD_TOKEN": DISCORD,
        "ORCHESTRATOR_CONFIG": str(config),
    }
    main = "orchestrate_main" if prog == "orchestrate" else "workflow_main"
    code = f"import sys; from engine.cli import {main}; {main}()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def leaks(tmp_path: Path, proc: Any, *values: str, files_expected: bool = True) -> list[str]:
    """Every place under ``tmp_path`` (but the config) and in stdout/stderr holding a value."""
    found = []
    needles = [v.encode() for v in values] + [f"Bearer {v}".encode() for v in values]
    streams = {"stdout": proc.stdout.encode(), "stderr": proc.stderr.encode()}
    for name, data in streams.items():
        found += [f"{name}: {n.decode()}" for n in needles if n in data]
    files = 0
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.parent.name != "conf":
            files += 1
            data = path.read_bytes()
            found += [f"{path.relative_to(tmp_path)}" for n in needles if n in data]
    assert files > 0 or not files_expected, "the run left no files: nothing was checked"
    return found


def remote(tmp_path: Path, url: str, **extra: Any) -> dict[str, Any]:
    raw = demo_config(tmp_path)
    raw["agents"]["webster"] = {"url": url, "token_env": "STANDIN_TOKEN"}
    raw.update(extra)
    return raw


@pytest.mark.parametrize(
    ("statuses", "exit_code"),
    [([401], 2), ([403], 2), ([500, 500, 500, 500], 4), ([500, 200], 0)],
    ids=["401", "403", "500-exhausted", "500-then-200"],
)
def test_orchestrate_never_shows_the_hooks_token(
    tmp_path: Path, echo: Any, statuses: list[int], exit_code: int
) -> None:
    server = echo(statuses)
    raw = remote(tmp_path, server.url)
    proc = run_cli(tmp_path, raw, "webster", "Find CTE", "--caller", "manager", "--timeout", "20")
    assert server.seen and all(s == f"Bearer {TOKEN}" for s in server.seen)
    assert proc.returncode in (exit_code, 1), proc.stderr
    if statuses == [403]:  # the gateway's reason is shown, masked
        assert proc.returncode == 2 and "403 forbidden: Bearer ***" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert leaks(tmp_path, proc, TOKEN) == []


def test_orchestrate_json_and_records_after_an_echoing_200(tmp_path: Path, echo: Any) -> None:
    server = echo([])
    proc = run_cli(
        tmp_path,
        remote(tmp_path, server.url),
        "webster",
        "Find CTE",
        "--caller",
        "manager",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["result"] == "echo agent: done"
    assert leaks(tmp_path, proc, TOKEN) == []
    assert MASK in json.dumps(record["envelope"])  # the echoed runId was kept, masked


@pytest.mark.parametrize("statuses", [[403, 403], [500, 200]], ids=["403", "500-then-200"])
def test_workflow_run_never_shows_the_hooks_token(
    tmp_path: Path, echo: Any, statuses: list[int]
) -> None:
    server = echo(statuses)
    proc = run_cli(
        tmp_path,
        remote(tmp_path, server.url),
        "run",
        "quick-research",
        "--input",
        "query=CTE of ULE",
        prog="workflow",
    )
    assert server.seen
    runs = list((tmp_path / "handoffs" / "workflows").iterdir())
    assert runs and (runs[0] / "summary.json").exists()
    journal = "".join(p.read_text() for p in runs[0].glob("*.jsonl"))
    if statuses[0] == 403:
        assert proc.returncode in (1, 2), proc.stderr
        assert "403 forbidden: Bearer ***" in journal + proc.stderr + proc.stdout
    else:
        assert proc.returncode == 0, proc.stderr
        summary = json.loads((runs[0] / "summary.json").read_text())
        assert summary["status"] == "complete"
    assert leaks(tmp_path, proc, TOKEN) == []


def test_handoff_write_receiver_never_shows_the_token(tmp_path: Path, echo: Any) -> None:
    server = echo([403])
    proc = run_cli(
        tmp_path,
        demo_config(tmp_path),
        "handoff",
        "write",
        "--run-id",
        "orch-20260101T000000-abcdef12",
        "--agent",
        "webster",
        "--status",
        "complete",
        "--result",
        "done",
        "--receiver",
        server.url,
        "--token-env",
        "STANDIN_TOKEN",
    )
    assert server.seen == [f"Bearer {TOKEN}"]
    assert proc.returncode == 2
    assert "403 forbidden: Bearer ***" in proc.stderr
    assert TOKEN not in proc.stderr and TOKEN not in proc.stdout


def test_url_credentials_never_shown(tmp_path: Path, echo: Any) -> None:
    server = echo([403])
    url = server.url.replace("http://", f"http://bob:{URL_PASSWORD}@")
    proc = run_cli(tmp_path, remote(tmp_path, url), "webster", "Find CTE", "--caller", "manager")
    assert proc.returncode == 2, proc.stderr
    assert "http://***@127.0.0.1" in proc.stderr
    basic = base64.b64encode(f"bob:{URL_PASSWORD}".encode()).decode()
    assert leaks(tmp_path, proc, URL_PASSWORD, basic, TOKEN) == []


@pytest.mark.parametrize("statuses", [[401], [200]], ids=["401", "200-echo"])
def test_model_api_key_never_shown(tmp_path: Path, echo: Any, statuses: list[int]) -> None:
    server = echo(statuses)
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {
        "kind": "openai",
        "base_url": server.url + "/v1",
        "model": "m",
        "api_key_env": "MODEL_KEY",
    }
    proc = run_cli(tmp_path, raw, "webster", "Find CTE", "--caller", "manager", "--json")
    assert server.seen == [f"Bearer {API_KEY}"]
    record = json.loads(proc.stdout)
    if statuses == [401]:
        assert record["status"] == "failed" and "Bearer ***" in record["result"]
    else:
        assert record["status"] == "complete" and record["result"] == "your key is Bearer ***"
    assert leaks(tmp_path, proc, API_KEY) == []


def test_discord_token_never_shown(tmp_path: Path, echo: Any) -> None:
    server = echo([403])
    raw = demo_config(tmp_path)
    raw["channels"] = {
        "provider": "discord",
        "token_env": "DISCORD_TOKEN",
        "base_url": server.url,
        "map": {"technical": "123"},
    }
    args = ("webster", "Find CTE", "--caller", "manager", "--channel-context", "technical")
    proc = run_cli(tmp_path, raw, *args)
    assert server.seen == [f"Bot {DISCORD}"]
    assert proc.returncode == 2 and "403" in proc.stderr
    assert leaks(tmp_path, proc, DISCORD, files_expected=False) == []


def test_agent_output_with_the_gateway_token_is_redacted(tmp_path: Path) -> None:
    """An agent that prints the gateway's token: its logs and the gateway's handoff mask it."""
    from engine.config import config_from_dict
    from engine.files import new_run_id
    from engine.gateway.server import LocalGateway
    from engine.handoff import load_handoff
    from engine.message import render_message
    from engine.store.file import handoff_path

    token = "gwtok-" + secrets.token_hex(12)
    code = f"import sys; print('token is {token}'); print('Bearer {token}', file=sys.stderr)"
    cfg = config_from_dict(
        {
            "handoffs_dir": "handoffs",
            "agents": {"w": {"url": "local"}},
            "gateway": {"agents": {"w": {"kind": "command", "argv": [sys.executable, "-c", code]}}},
        },
        path=tmp_path / "orchestrator.yaml",
    )
    run_id = new_run_id()
    path = handoff_path(cfg.handoffs_dir, run_id)
    msg = render_message(task="t", run_id=run_id, agent="w", caller="manager", handoff_path=path)
    with LocalGateway(cfg, token=token, port=0) as gw:
        import httpx

        resp = httpx.post(
            f"{gw.url}/hooks/agent",
            json={"message": msg},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert resp.status_code == 200
        waiter_deadline = 100
        while not path.exists() and waiter_deadline:  # bounded: the agent exits at once
            waiter_deadline -= 1
            threading.Event().wait(0.05)
    handoff = load_handoff(path, run_id=run_id, agent="w")
    assert handoff["result"] == "token is ***"
    logs = list((tmp_path / "handoffs" / ".workspaces").rglob("*.log"))
    assert {p.name for p in logs} == {"stdout.log", "stderr.log"}
    for p in tmp_path.rglob("*"):
        if p.is_file():
            assert token not in p.read_text(encoding="utf-8", errors="replace"), p
