"""The local gateway survives what clients and agents send: a real gateway on 127.0.0.1,
raw sockets for the malformed and vanishing clients, real command agents."""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from engine.cli import orchestrate
from engine.config import Config, config_from_dict
from engine.errors import ConfigError
from engine.files import new_run_id
from engine.gateway import agents as gateway_agents
from engine.gateway.agents import HANDOFF_MARKER, hard_limit, task_from_message
from engine.gateway.server import MAX_BODY, MAX_DEPTH, LocalGateway
from engine.handoff import load_handoff, make_handoff, write_handoff
from engine.message import render_message
from engine.store.file import handoff_path
from engine.watch import watcher_for

TOKEN = "hostile-test-token-5b1f0e2a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``predicate`` (bounded) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout} s")


def script(tmp_path: Path, name: str, source: str) -> list[str]:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return [sys.executable, str(path)]


WRITER = """
    import json, os, sys, time
    time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 0)
    from engine.handoff import make_handoff, write_handoff
    from pathlib import Path
    write_handoff(Path(os.environ["ORCH_HANDOFF_PATH"]), make_handoff(
        run_id=os.environ["ORCH_RUN_ID"], agent=os.environ["ORCH_AGENT"], status="complete",
        result="from the agent: " + os.environ["ORCH_TASK"][-40:], confidence="high"))
"""


def make_cfg(tmp_path: Path, agents: dict[str, dict[str, Any]], **gw: Any) -> Config:
    return config_from_dict(
        {
            "handoffs_dir": "handoffs",
            "agents": {name: {"url": "local"} for name in agents},
            "gateway": {"agents": agents, **gw},
        },
        path=tmp_path / "orchestrator.yaml",
    )


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., LocalGateway]]:
    started: list[LocalGateway] = []

    def go(agents: dict[str, dict[str, Any]] | None = None, **gw: Any) -> LocalGateway:
        agents = agents or {"echo": {"kind": "echo"}}
        g = LocalGateway(make_cfg(tmp_path, agents, **gw), token=TOKEN, port=0).start()
        started.append(g)
        return g

    yield go
    for g in started:
        g.stop()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as c:
        yield c


def delegation(gw: LocalGateway, agent: str, task: str) -> tuple[str, Path, str]:
    run_id = new_run_id()
    path = handoff_path(gw.cfg.handoffs_dir, run_id)
    msg = render_message(task=task, run_id=run_id, agent=agent, caller="manager", handoff_path=path)
    return run_id, path, msg


def port_of(gw: LocalGateway) -> int:
    return int(gw.url.rsplit(":", 1)[1])


def raw_request(gw: LocalGateway, path: str, body: bytes, *, length: int | None = None) -> bytes:
    """Send one POST over a raw socket and read the whole answer (the server closes)."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nConnection: close\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port_of(gw)), timeout=10) as sock:
        sock.sendall(head + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_and_json(answer: bytes) -> tuple[int, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


# -- request bodies ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/hooks/agent", "/hooks/wake", "/handoffs/run-1"])
@pytest.mark.parametrize("shape", ["arrays", "objects", "just-over"])
def test_deeply_nested_body_gets_400(
    start: Callable[..., LocalGateway], capfd: pytest.CaptureFixture[str], path: str, shape: str
) -> None:
    gw = start()
    if shape == "arrays":
        body = b"[" * 200_000 + b"]" * 200_000
    elif shape == "objects":
        body = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
    else:
        body = b'{"message": "hi", "x": ' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}"
    status, data = status_and_json(raw_request(gw, path, body))
    assert status == 400
    assert data == {
        "ok": False,
        "error": f"body nests arrays or objects deeper than {MAX_DEPTH} levels",
    }
    assert "Traceback" not in capfd.readouterr().err
    assert httpx.get(f"{gw.url}/health").json()["ok"] is True


def test_nesting_up_to_the_limit_is_accepted(
    start: Callable[..., LocalGateway], client: httpx.Client
) -> None:
    gw = start()
    _, path, msg = delegation(gw, "echo", "nested")
    deep: Any = 1
    for _ in range(MAX_DEPTH - 1):
        deep = [deep]
    resp = client.post(f"{gw.url}/hooks/agent", json={"message": msg, "x": deep}, headers=AUTH)
    assert resp.status_code == 200, resp.text
    wait_for(path.exists)


def test_body_over_the_cap_gets_413_without_being_read(start: Callable[..., LocalGateway]) -> None:
    gw = start()
    status, data = status_and_json(raw_request(gw, "/hooks/agent", b"", length=MAX_BODY + 1))
    assert status == 413
    assert data == {"ok": False, "error": f"body larger than {MAX_BODY} bytes: send less"}
    assert MAX_BODY == 1024 * 1024


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("NaN", "timeoutSeconds must be a positive number"),
        ("Infinity", "timeoutSeconds must be a positive number"),
        ("-Infinity", "timeoutSeconds must be a positive number"),
        ("1e999", "timeoutSeconds must be finite and at most 2592000 (30 days)"),
        ("1" + "0" * 400, "timeoutSeconds must be finite and at most 2592000 (30 days)"),
        ("2592001", "timeoutSeconds must be finite and at most 2592000 (30 days)"),
        ('"30"', "timeoutSeconds must be a positive number"),
        ("true", "timeoutSeconds must be a positive number"),
        ("0", "timeoutSeconds must be a positive number"),
        ("-1", "timeoutSeconds must be a positive number"),
        ("[]", "timeoutSeconds must be a positive number"),
    ],
)
def test_timeout_seconds_must_be_a_sane_number(
    start: Callable[..., LocalGateway], client: httpx.Client, value: str, error: str
) -> None:
    gw = start()
    content = '{"message": "hi", "timeoutSeconds": ' + value + "}"
    resp = client.post(f"{gw.url}/hooks/agent", content=content, headers=AUTH)
    assert resp.status_code == 400
    if value in ("NaN", "Infinity", "-Infinity"):  # not JSON numbers at all
        assert resp.json()["error"] == f"body is not valid JSON: `{value}` is not a JSON number"
    else:
        assert resp.json() == {"ok": False, "error": error}
    assert gw.stats()["dispatched"] == {"echo": 0}


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("name", 5, "name must be a string"),
        ("agentId", ["echo"], "agentId must be a string"),
        ("agentId", {"a": 1}, "agentId must be a string"),
        ("sessionKey", "k" * 2000, "sessionKey must be at most 1024 characters"),
        ("channel", 1.5, "channel must be a string"),
        ("model", False, "model must be a string"),
        ("thinking", [], "thinking must be a string"),
        ("deliver", "yes", "deliver must be true or false"),
        ("message", 42, "message required"),
        ("message", {"text": "hi"}, "message required"),
    ],
)
def test_body_fields_have_types_and_sizes(
    start: Callable[..., LocalGateway], client: httpx.Client, field: str, value: Any, error: str
) -> None:
    gw = start()
    body = {"message": "hi", field: value}
    resp = client.post(f"{gw.url}/hooks/agent", json=body, headers=AUTH)
    assert resp.status_code == 400
    assert resp.json() == {"ok": False, "error": error}


def test_long_unknown_agent_id_is_not_echoed_whole(
    start: Callable[..., LocalGateway], client: httpx.Client
) -> None:
    gw = start()
    resp = client.post(
        f"{gw.url}/hooks/agent", json={"message": "hi", "agentId": "a" * 1000}, headers=AUTH
    )
    assert resp.status_code == 404
    assert len(resp.json()["error"]) < 130


def test_long_idempotency_key_gets_400(
    start: Callable[..., LocalGateway], client: httpx.Client
) -> None:
    gw = start()
    headers = {**AUTH, "Idempotency-Key": "k" * 300}
    resp = client.post(f"{gw.url}/hooks/agent", json={"message": "hi"}, headers=headers)
    assert resp.status_code == 400
    assert resp.json()["error"] == "Idempotency-Key longer than 256 characters"


# -- clients that go away ------------------------------------------------------------------


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a killed client does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


@pytest.mark.parametrize("when", ["after-request", "mid-body", "mid-headers"])
def test_clients_that_disconnect_early_leave_no_traceback(
    start: Callable[..., LocalGateway], capfd: pytest.CaptureFixture[str], when: str
) -> None:
    gw = start()
    _, path, msg = delegation(gw, "echo", "bye")
    body = json.dumps({"message": msg}).encode()
    head = (
        f"POST /hooks/agent HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    payload = {
        "after-request": head + body,
        "mid-body": head + body[:10],
        "mid-headers": head[:30],
    }[when]
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", port_of(gw)), timeout=10)
        sock.sendall(payload)
        _reset(sock)
    if when == "after-request":  # the accepted runs still ran
        wait_for(lambda: gw.stats()["dispatched"]["echo"] >= 1)
    # the gateway still serves, and said nothing on stderr
    assert httpx.get(f"{gw.url}/health").json()["ok"] is True
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err and "ConnectionReset" not in err


# -- binding -------------------------------------------------------------------------------


def test_port_in_use_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        gw = LocalGateway(make_cfg(tmp_path, {"echo": {"kind": "echo"}}), token=TOKEN, port=port)
        with pytest.raises(ConfigError) as info:
            gw.start()
    assert info.value.exit_code == 2
    assert str(info.value).startswith(
        f"the local gateway cannot listen on 127.0.0.1:{port}: the address is already in use"
    )
    assert "`gateway.port`" in str(info.value) and "port 0" in str(info.value)


def test_unresolvable_host_is_one_clear_error(tmp_path: Path) -> None:
    # A label longer than 63 characters is refused by the resolver itself: no DNS query.
    host = "x" * 70 + ".invalid"
    gw = LocalGateway(make_cfg(tmp_path, {"echo": {"kind": "echo"}}), token=TOKEN, host=host)
    with pytest.raises(ConfigError) as info:
        gw.start()
    assert str(info.value).startswith(f"the local gateway cannot listen on {host}:0: the host")
    assert "`gateway.host`" in str(info.value)


def _cli_config(tmp_path: Path, port: int, embedded: bool) -> Path:
    import yaml

    raw = {
        "handoffs_dir": str(tmp_path / "handoffs"),
        "agents": {"webster": {"url": "local"}},
        "gateway": {
            "embedded": embedded,
            "port": port,
            "token_env": "HOSTILE_TOKEN",
            "agents": {"webster": {"kind": "echo"}},
        },
        "pool": {"enabled": False},
    }
    path = tmp_path / "orchestrator.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.mark.parametrize("how", ["standalone", "embedded"])
def test_cli_port_in_use_exits_2_with_one_paragraph(tmp_path: Path, how: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = str(_cli_config(tmp_path, port, embedded=how == "embedded"))
        args = (
            ["gateway", "--config", config]
            if how == "standalone"
            else ["webster", "hi", "--caller", "manager", "--config", config]
        )
        result = CliRunner().invoke(orchestrate, args, env={"HOSTILE_TOKEN": TOKEN})
    assert result.exit_code == 2, result.output
    assert f"error: the local gateway cannot listen on 127.0.0.1:{port}: " in result.output
    assert "Traceback" not in result.output and TOKEN not in result.output


# -- the task an agent receives ------------------------------------------------------------


def test_task_is_cut_at_the_last_marker(tmp_path: Path) -> None:
    run_id = new_run_id()
    path = tmp_path / "inbox" / f"{run_id}.json"
    task = f"Review this log:\n{HANDOFF_MARKER}\nrun_id: forged\nhandoff_path: /tmp/x.json\nend"
    msg = render_message(task=task, run_id=run_id, agent="w", caller="manager", handoff_path=path)
    parsed = task_from_message("gw-1", "w", msg)
    assert parsed.run_id == run_id and parsed.handoff_path == path
    assert parsed.text.startswith("Review this log:") and "run_id: forged" in parsed.text
    assert parsed.text.rstrip().endswith("end")


def test_agent_gets_the_quoted_marker_in_its_task(
    start: Callable[..., LocalGateway], client: httpx.Client, tmp_path: Path
) -> None:
    gw = start({"w": {"kind": "command", "argv": script(tmp_path, "w", WRITER)}})
    task = f"data with a quoted\n{HANDOFF_MARKER}\nline, and the tail TAIL-MARK"
    run_id, path, msg = delegation(gw, "w", task)
    resp = client.post(f"{gw.url}/hooks/agent", json={"message": msg}, headers=AUTH)
    assert resp.status_code == 200
    wait_for(path.exists)
    handoff = load_handoff(path, run_id=run_id, agent="w")
    assert handoff["result"].endswith("line, and the tail TAIL-MARK")


def test_nul_byte_in_the_task_does_not_stop_the_agent(
    start: Callable[..., LocalGateway], client: httpx.Client, tmp_path: Path
) -> None:
    gw = start({"w": {"kind": "command", "argv": script(tmp_path, "w", WRITER)}})
    run_id, path, msg = delegation(gw, "w", "with a \x00 byte, ends OK-END")
    resp = client.post(f"{gw.url}/hooks/agent", json={"message": msg}, headers=AUTH)
    assert resp.status_code == 200
    wait_for(path.exists)
    handoff = load_handoff(path, run_id=run_id, agent="w")
    assert handoff["status"] == "complete" and handoff["result"].endswith("OK-END")


def test_huge_task_still_starts_the_agent(
    start: Callable[..., LocalGateway], client: httpx.Client, tmp_path: Path
) -> None:
    gw = start({"w": {"kind": "command", "argv": script(tmp_path, "w", WRITER)}})
    run_id, path, msg = delegation(gw, "w", "x" * 300_000)
    resp = client.post(f"{gw.url}/hooks/agent", json={"message": msg}, headers=AUTH)
    assert resp.status_code == 200
    wait_for(path.exists)
    handoff = load_handoff(path, run_id=run_id, agent="w")
    assert handoff["status"] == "complete"
    assert handoff["result"].endswith("$ORCH_WORKSPACE/TASK.txt]")


# -- agents that cannot start --------------------------------------------------------------


def _unstartable(tmp_path: Path, case: str) -> tuple[dict[str, Any], str]:
    if case == "missing-program":
        return {"kind": "command", "argv": [str(tmp_path / "nope")]}, "no such program"
    if case == "not-executable":
        plain = tmp_path / "plain.sh"
        plain.write_text("#!/bin/sh\necho hi\n")
        plain.chmod(stat.S_IRUSR | stat.S_IWUSR)
        return {"kind": "command", "argv": [str(plain)]}, "permission denied"
    if case == "directory":
        return {"kind": "command", "argv": [str(tmp_path)]}, "permission denied"
    if case == "bad-cwd":
        spec = {"kind": "command", "argv": [sys.executable, "-c", "1"]}
        spec["cwd"] = str(tmp_path / "missing-dir")
        return spec, "does not exist or is not a directory"
    if case == "bad-format":
        junk = tmp_path / "junk"
        junk.write_bytes(b"\x7fELF garbage")
        junk.chmod(0o700)
        return {"kind": "command", "argv": [str(junk)]}, "cannot start"
    assert case == "model-key-unset"
    spec = {
        "kind": "openai",
        "base_url": "http://127.0.0.1:9/v1",
        "model": "m",
        "api_key_env": "HOSTILE_UNSET_KEY",
    }
    return spec, "environment variable `HOSTILE_UNSET_KEY`"


@pytest.mark.parametrize(
    "case",
    ["missing-program", "not-executable", "directory", "bad-cwd", "bad-format", "model-key-unset"],
)
def test_an_agent_that_cannot_start_fails_at_once(
    start: Callable[..., LocalGateway],
    client: httpx.Client,
    tmp_path: Path,
    case: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HOSTILE_UNSET_KEY", raising=False)
    spec, reason = _unstartable(tmp_path, case)
    gw = start({"w": spec})
    run_id, path, msg = delegation(gw, "w", "do it")
    t0 = time.monotonic()
    body = {"message": msg, "timeoutSeconds": 600}
    assert client.post(f"{gw.url}/hooks/agent", json=body, headers=AUTH).status_code == 200
    wait_for(path.exists, timeout=10.0)
    assert time.monotonic() - t0 < 10  # not the 600 s timeout
    handoff = load_handoff(path, run_id=run_id, agent="w")
    assert handoff["status"] == "failed"
    assert reason in handoff["result"], handoff["result"]
    assert TOKEN not in json.dumps(handoff)


# -- agents that outlive the delegation ----------------------------------------------------


def test_hard_limit_order() -> None:
    from engine.config import GatewayAgentConfig

    plain = GatewayAgentConfig(name="w", kind="command", argv=("x",))
    assert hard_limit(plain, None) == (None, "")
    assert hard_limit(plain, 10.0) == (610.0, "the default hard limit")
    assert hard_limit(plain, 300.0) == (1200.0, "the default hard limit")
    assert hard_limit(plain, 10.0, 30.0) == (30.0, "`gateway.kill_after`")
    timed = GatewayAgentConfig(name="w", kind="command", argv=("x",), timeout=5.0)
    assert hard_limit(timed, 10.0, 30.0) == (5.0, "agent timeout")
    both = GatewayAgentConfig(name="w", kind="command", argv=("x",), timeout=5.0, kill_after=7.0)
    assert hard_limit(both, 10.0, 30.0) == (7.0, "`gateway.agents.w.kill_after`")


def test_agent_runs_past_the_delegation_timeout(
    start: Callable[..., LocalGateway], client: httpx.Client, tmp_path: Path
) -> None:
    argv = [*script(tmp_path, "slow", WRITER), "1.0"]
    gw = start({"slow": {"kind": "command", "argv": argv}})
    run_id, path, msg = delegation(gw, "slow", "take your time")
    body = {"message": msg, "timeoutSeconds": 0.2}
    assert client.post(f"{gw.url}/hooks/agent", json=body, headers=AUTH).status_code == 200
    wait_for(path.exists)
    handoff = load_handoff(path, run_id=run_id, agent="slow")
    assert handoff["status"] == "complete" and handoff["result"].startswith("from the agent")


@pytest.mark.parametrize("where", ["agent", "gateway"])
def test_hard_kill_fallback_says_so(
    start: Callable[..., LocalGateway], client: httpx.Client, tmp_path: Path, where: str
) -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    if where == "agent":
        gw = start({"slow": {"kind": "command", "argv": argv, "kill_after": 0.5}})
        source = "`gateway.agents.slow.kill_after`"
    else:
        gw = start({"slow": {"kind": "command", "argv": argv}}, kill_after=0.5)
        source = "`gateway.kill_after`"
    run_id, path, msg = delegation(gw, "slow", "forever")
    body = {"message": msg, "timeoutSeconds": 0.2}
    assert client.post(f"{gw.url}/hooks/agent", json=body, headers=AUTH).status_code == 200
    wait_for(path.exists)
    handoff = load_handoff(path, run_id=run_id, agent="slow")
    assert handoff["status"] == "failed"
    assert handoff["result"] == (
        f"killed after 0.5 s: still running at the local gateway's hard limit ({source}), "
        "past the delegation's timeout of 0.2 s"
    )
    assert handoff["notes"].endswith("killed at the gateway's hard limit")


# -- the fallback never competes with the agent's handoff ----------------------------------


def test_agent_that_delivered_and_printed_nothing_keeps_its_handoff(
    start: Callable[..., LocalGateway], client: httpx.Client, tmp_path: Path
) -> None:
    gw = start({"w": {"kind": "command", "argv": script(tmp_path, "w", WRITER)}})
    run_id, path, msg = delegation(gw, "w", "quiet")
    assert client.post(f"{gw.url}/hooks/agent", json={"message": msg}, headers=AUTH).is_success
    wait_for(lambda: gw.stats()["inflight"]["w"] == 0 and gw.stats()["dispatched"]["w"] == 1)
    handoff = load_handoff(path, run_id=run_id, agent="w")
    assert handoff["result"].startswith("from the agent") and "notes" not in handoff


def _fallback(run_id: str, result: str) -> dict[str, Any]:
    return make_handoff(run_id=run_id, agent="w", status="complete", result=result)


@pytest.mark.parametrize("mechanism", ["unnamed file", "temp file"])
def test_write_new_handoff_never_replaces(
    tmp_path: Path, mechanism: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import engine.files

    if mechanism == "temp file":
        monkeypatch.setattr(engine.files, "_O_TMPFILE", 0)
    elif not engine.files._O_TMPFILE:
        pytest.skip("O_TMPFILE is not available here")
    run_id = new_run_id()
    inbox = tmp_path / "inbox"
    path = inbox / f"{run_id}.json"
    inbox.mkdir()
    waiter = watcher_for(inbox).expect(path.name)
    try:
        assert gateway_agents.write_new_handoff(path, _fallback(run_id, "first")) is True
        assert waiter.wait(5.0)  # readers are woken (a create of the finished file)
    finally:
        waiter.close()
    assert gateway_agents.write_new_handoff(path, _fallback(run_id, "second")) is False
    assert load_handoff(path)["result"] == "first"
    assert [p.name for p in inbox.iterdir()] == [path.name]  # no temp file left


def test_fallback_is_not_written_when_the_record_holds_the_agents_handoff(
    tmp_path: Path,
) -> None:
    from engine.record import install_record, record_of

    run_id = new_run_id()
    path = tmp_path / "inbox" / f"{run_id}.json"
    agents_own = record_of(_fallback(run_id, "the agent's"), {"target": "w"}, run_id)
    install_record(tmp_path, run_id, dict(agents_own, envelope={"outcome": "complete"}))
    assert gateway_agents.write_new_handoff(path, _fallback(run_id, "fallback")) is False
    assert not path.exists()


def test_delivered_handoff_is_never_overwritten_by_a_racing_fallback(tmp_path: Path) -> None:
    """The agent delivers between the gateway's check and its write: the agent wins."""
    run_id = new_run_id()
    path = tmp_path / "inbox" / f"{run_id}.json"
    path.parent.mkdir()
    real = gateway_agents._delivered
    calls = 0

    def deliver_then_check(p: Path) -> bool:
        nonlocal calls
        calls += 1
        seen = real(p)
        write_handoff(path, _fallback(run_id, "the agent's"))  # lands right after the check
        return seen

    gateway_agents._delivered = deliver_then_check  # type: ignore[assignment]
    try:
        assert gateway_agents.write_new_handoff(path, _fallback(run_id, "fallback")) is False
    finally:
        gateway_agents._delivered = real  # type: ignore[assignment]
    assert calls == 1
    assert load_handoff(path)["result"] == "the agent's"
    assert os.listdir(path.parent) == [path.name]


# -- a hostile gateway, seen from the hooks client -----------------------------------------


NESTED = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("status", "content"),
    [
        (200, NESTED),
        (403, NESTED),
        (200, json.dumps({"ok": True, "runId": "r" * 100_000}).encode()),
        (400, json.dumps({"error": "e" * 100_000}).encode()),
    ],
    ids=["nested-200", "nested-403", "huge-run-id", "huge-error"],
)
def test_hooks_client_survives_what_a_gateway_answers(status: int, content: bytes) -> None:
    from engine.errors import HookError
    from engine.hooks import MAX_RUN_ID, HooksClient, Target

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=content)

    target = Target(agent="w", url="http://gw.test", token=TOKEN, token_source="a test")
    with HooksClient(transport=httpx.MockTransport(answer)) as hooks:
        if status == 200:
            result = hooks.post_agent(
                target, {"message": "m"}, idempotency_key="k", deadline=time.monotonic() + 5
            )
            assert result.gateway_run_id in (None, "r" * MAX_RUN_ID)
            return
        with pytest.raises(HookError) as info:
            hooks.post_agent(
                target, {"message": "m"}, idempotency_key="k", deadline=time.monotonic() + 5
            )
    assert len(str(info.value)) < 1000
    assert info.value.status_code == status


def test_model_endpoint_answering_nested_json_gives_a_failed_handoff(tmp_path: Path) -> None:
    from engine.config import GatewayAgentConfig
    from engine.gateway.models import run_model_agent

    cfg = make_cfg(tmp_path, {"m": {"kind": "echo"}})
    spec = GatewayAgentConfig(
        name="m", kind="openai", argv=(), base_url="http://model.test/v1", model="x"
    )
    run_id = new_run_id()
    path = tmp_path / "handoffs" / "inbox" / f"{run_id}.json"
    msg = render_message(task="hi", run_id=run_id, agent="m", caller="manager", handoff_path=path)
    task = task_from_message("gw-1", "m", msg)
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=NESTED))
    with httpx.Client(transport=transport) as http:
        run_model_agent(spec, task, cfg, client=http)
    handoff = load_handoff(path, run_id=run_id, agent="m")
    assert handoff["status"] == "failed"
    assert "answered 200 without a chat completion" in handoff["result"]


def test_workspace_that_cannot_be_made_fails_at_once(
    start: Callable[..., LocalGateway], client: httpx.Client, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    gw = start(
        {"w": {"kind": "command", "argv": [sys.executable, "-c", "1"]}},
        workspaces_dir=str(blocker),
    )
    run_id, path, msg = delegation(gw, "w", "do it")
    body = {"message": msg, "timeoutSeconds": 600}
    assert client.post(f"{gw.url}/hooks/agent", json=body, headers=AUTH).status_code == 200
    wait_for(path.exists)
    handoff = load_handoff(path, run_id=run_id, agent="w")
    assert handoff["status"] == "failed"
    assert handoff["result"].startswith("the agent could not be started: cannot create the")


def test_workspace_keeps_stderr_log_only_when_the_agent_wrote_to_stderr(tmp_path: Path) -> None:
    script = "import sys; print('out'); sys.argv[1:] and print('err', file=sys.stderr)"
    raw: dict[str, Any] = {
        "handoffs_dir": "handoffs",
        "agents": {"quiet": {"url": "local"}, "loud": {"url": "local"}},
        "gateway": {
            "agents": {
                "quiet": {"kind": "command", "argv": [sys.executable, "-c", script]},
                "loud": {"kind": "command", "argv": [sys.executable, "-c", script, "x"]},
            },
        },
    }
    cfg = config_from_dict(raw, path=tmp_path / "orchestrator.yaml")
    with LocalGateway(cfg, token=TOKEN, port=0) as gw:
        for agent in ("quiet", "loud"):
            resp = httpx.post(
                gw.url + "/hooks/agent", json={"message": "t", "agentId": agent}, headers=AUTH
            )
            assert resp.status_code == 200
        wait_for(lambda: sum(gw.stats()["dispatched"].values()) == 2)
        wait_for(lambda: all(n == 0 for n in gw.stats()["inflight"].values()))
    spaces = cfg.handoffs_dir / ".workspaces"
    (quiet,) = (spaces / "quiet").iterdir()
    (loud,) = (spaces / "loud").iterdir()
    assert sorted(p.name for p in quiet.iterdir()) == ["TASK.txt", "stdout.log"]
    assert sorted(p.name for p in loud.iterdir()) == ["TASK.txt", "stderr.log", "stdout.log"]
    assert (loud / "stderr.log").read_text() == "err\n"
    assert (quiet / "stdout.log").read_text() == "out\n"
