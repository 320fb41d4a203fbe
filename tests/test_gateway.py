"""The local gateway over real HTTP on 127.0.0.1, with real agent processes and files."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.config import Config, config_from_dict
from engine.files import new_run_id
from engine.gateway.agents import GATEWAY_NOTE
from engine.gateway.server import LocalGateway
from engine.handoff import load_handoff, make_handoff
from engine.message import render_message
from engine.store.file import handoff_path

TOKEN = "gw-test-token-7c1e55d0"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROLES = ("webster", "tech-lead", "auditor")


def demo_argv(role: str) -> list[str]:
    return [sys.executable, "-m", "engine.gateway.demo_agent", "--role", role]


def script_argv(source: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(source)]


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout} s")


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie awaiting its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def make_config(tmp_path: Path, gw_agents: dict[str, dict[str, Any]]) -> Config:
    return config_from_dict(
        {
            "handoffs_dir": "handoffs",
            "agents": {name: {"url": "local"} for name in gw_agents},
            "gateway": {"agents": gw_agents},
        },
        path=tmp_path / "orchestrator.yaml",
    )


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[[dict[str, dict[str, Any]]], LocalGateway]]:
    """Start LocalGateways on ephemeral ports; every one is stopped at teardown."""
    started: list[LocalGateway] = []

    def start(gw_agents: dict[str, dict[str, Any]]) -> LocalGateway:
        gw = LocalGateway(make_config(tmp_path, gw_agents), token=TOKEN, port=0).start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture
def demo_gw(start_gateway: Callable[..., LocalGateway]) -> LocalGateway:
    return start_gateway({r: {"kind": "command", "argv": demo_argv(r)} for r in ROLES})


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60.0) as c:
        yield c


def delegation(gw: LocalGateway, agent: str, task: str) -> tuple[str, Path, str]:
    """A fresh run id, its handoff path and the engine-style message for ``task``."""
    run_id = new_run_id()
    path = handoff_path(gw.cfg.handoffs_dir, run_id)
    msg = render_message(task=task, run_id=run_id, agent=agent, caller="manager", handoff_path=path)
    return run_id, path, msg


def dispatch(
    client: httpx.Client, gw: LocalGateway, body: dict[str, Any], headers: dict[str, str] = AUTH
) -> str:
    resp = client.post(f"{gw.url}/hooks/agent", json=body, headers=headers)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["ok"] is True and data["runId"].startswith("gw-")
    return str(data["runId"])


# -- auth and request validation ----------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"x-openclaw-token": "wrong"},
        {"Authorization": TOKEN},
    ],
    ids=["missing", "wrong-bearer", "wrong-x-openclaw", "no-bearer-scheme"],
)
def test_hooks_refuse_bad_token(
    demo_gw: LocalGateway, client: httpx.Client, headers: dict[str, str]
) -> None:
    body = {"message": "hello", "agentId": "webster"}
    resp = client.post(f"{demo_gw.url}/hooks/agent", json=body, headers=headers)
    assert resp.status_code == 401
    assert resp.text == "Unauthorized"
    assert TOKEN not in resp.text and TOKEN not in str(resp.headers)
    assert demo_gw.stats()["dispatched"]["webster"] == 0


def test_x_openclaw_token_header_works(demo_gw: LocalGateway, client: httpx.Client) -> None:
    _, path, msg = delegation(demo_gw, "webster", "Find CTE of Zerodur")
    resp = client.post(
        f"{demo_gw.url}/hooks/agent",
        json={"message": msg, "agentId": "webster"},
        headers={"x-openclaw-token": TOKEN},
    )
    assert resp.status_code == 200
    assert resp.headers["content-length"] == str(len(resp.content))
    assert TOKEN not in resp.text
    wait_for(path.exists)


@pytest.mark.parametrize(
    ("content", "path", "status", "error"),
    [
        (json.dumps({"agentId": "webster"}), "/hooks/agent", 400, "message required"),
        (
            json.dumps({"message": "  ", "agentId": "webster"}),
            "/hooks/agent",
            400,
            "message required",
        ),
        ("{not json", "/hooks/agent", 400, None),
        ("[1, 2]", "/hooks/agent", 400, "body must be a JSON object"),
        (json.dumps({"message": "hi", "agentId": "webster"}), "/hooks/agent?token=x", 400, None),
        (json.dumps({"message": "hi", "agentId": "webstr"}), "/hooks/agent", 404, None),
        (
            json.dumps({"message": "hi"}),
            "/hooks/agent",
            400,
            "agentId is required when multiple agents are configured",
        ),
        (
            json.dumps({"message": "hi", "agentId": "webster", "timeoutSeconds": -1}),
            "/hooks/agent",
            400,
            "timeoutSeconds must be a positive number",
        ),
    ],
    ids=[
        "missing-message",
        "blank-message",
        "invalid-json",
        "not-an-object",
        "query-string",
        "unknown-agent",
        "agent-required",
        "bad-timeout",
    ],
)
def test_hooks_agent_bad_requests(
    demo_gw: LocalGateway,
    client: httpx.Client,
    content: str,
    path: str,
    status: int,
    error: str | None,
) -> None:
    resp = client.post(
        demo_gw.url + path,
        content=content,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert resp.status_code == status, resp.text
    data = resp.json()
    assert data["ok"] is False
    if error is not None:
        assert data["error"] == error
    assert demo_gw.stats()["dispatched"] == {r: 0 for r in ROLES}


def test_exact_error_bodies(demo_gw: LocalGateway, client: httpx.Client) -> None:
    url = f"{demo_gw.url}/hooks/agent"
    resp = client.post(url, json={"message": "hi", "agentId": "x"}, headers=AUTH)
    assert resp.status_code == 404
    assert resp.content == b'{"ok":false,"error":"unknown agentId \\"x\\""}'
    resp = client.post(url, json={"agentId": "webster"}, headers=AUTH)
    assert resp.content == b'{"ok":false,"error":"message required"}'
    resp = client.post(url, content=b"{oops", headers=AUTH)
    assert resp.status_code == 400
    assert resp.json()["error"].startswith("body is not valid JSON")


def test_methods_paths_health_and_wake(demo_gw: LocalGateway, client: httpx.Client) -> None:
    for path in ("/hooks/agent", "/hooks/wake", "/handoffs/run-1"):
        resp = client.get(demo_gw.url + path, headers=AUTH)
        assert resp.status_code == 405, path
        assert resp.headers["allow"] == "POST"
    assert client.get(f"{demo_gw.url}/nope").status_code == 404
    assert client.post(f"{demo_gw.url}/hooks/other", json={}, headers=AUTH).status_code == 404

    health = client.get(f"{demo_gw.url}/health")
    assert health.status_code == 200
    assert health.json() == {"ok": True, "agents": sorted(ROLES), "inflight": 0}

    wake = client.post(f"{demo_gw.url}/hooks/wake", json={"text": "ping"}, headers=AUTH)
    assert wake.status_code == 200 and wake.json() == {"ok": True, "mode": "now"}
    assert client.post(f"{demo_gw.url}/hooks/wake", json={}).status_code == 401


def test_keep_alive_connection_is_reused(demo_gw: LocalGateway, client: httpx.Client) -> None:
    for _ in range(20):
        resp = client.post(f"{demo_gw.url}/hooks/wake", json={}, headers=AUTH)
        assert resp.status_code == 200
        assert resp.http_version == "HTTP/1.1"
        assert resp.headers.get("connection") != "close"


# -- running agents -----------------------------------------------------------------------


def test_demo_agent_writes_a_valid_handoff(demo_gw: LocalGateway, client: httpx.Client) -> None:
    run_id, path, msg = delegation(
        demo_gw, "webster", "Find CTE of Zerodur\nDEMO_CONFIDENCE=high\nDEMO_STATUS=partial"
    )
    dispatch(client, demo_gw, {"message": msg, "agentId": "webster", "name": "manager"})
    wait_for(path.exists)
    handoff = load_handoff(path, run_id=run_id, agent="webster")
    assert handoff["status"] == "partial"
    assert handoff["confidence"] == "high"
    assert handoff["result"].startswith("[demo output from webster — not a real agent] ")
    assert "Zerodur" in handoff["result"]
    assert "DEMO_" not in handoff["result"]
    assert handoff["usage"]["model"] == "demo"


@pytest.mark.parametrize(
    ("directive", "prefix"),
    [("DEMO_APPROVE", "APPROVED: "), ("DEMO_REJECT", "REJECTED: ")],
)
def test_demo_validator_verdicts(
    demo_gw: LocalGateway, client: httpx.Client, directive: str, prefix: str
) -> None:
    run_id, path, msg = delegation(demo_gw, "tech-lead", f"Check the result. {directive}")
    dispatch(client, demo_gw, {"message": msg, "agentId": "tech-lead"})
    wait_for(path.exists)
    result = load_handoff(path, run_id=run_id, agent="tech-lead")["result"]
    assert result.startswith(prefix + "[demo output from tech-lead — not a real agent]")


def test_demo_agent_is_deterministic(
    demo_gw: LocalGateway, client: httpx.Client, tmp_path: Path
) -> None:
    results = []
    for _ in range(2):
        run_id, path, msg = delegation(demo_gw, "auditor", "Audit the thermal budget of M2")
        dispatch(client, demo_gw, {"message": msg, "agentId": "auditor"})
        wait_for(path.exists)
        results.append(load_handoff(path, run_id=run_id, agent="auditor")["result"])
    assert results[0] == results[1]
    assert "Audit of “Audit the thermal budget of M2”" in results[0]


def test_crash_gets_a_failed_handoff_with_stderr(
    demo_gw: LocalGateway, client: httpx.Client
) -> None:
    run_id, path, msg = delegation(demo_gw, "webster", "Find it\nDEMO_CRASH")
    dispatch(client, demo_gw, {"message": msg, "agentId": "webster"})
    wait_for(path.exists)
    handoff = load_handoff(path, run_id=run_id, agent="webster")
    assert handoff["status"] == "failed"
    assert "exited with code 3" in handoff["result"]
    assert "simulated crash (DEMO_CRASH)" in handoff["result"]
    assert handoff["notes"] == GATEWAY_NOTE


def test_exit_zero_without_handoff_is_complete_with_stdout(
    demo_gw: LocalGateway, client: httpx.Client
) -> None:
    run_id, path, msg = delegation(demo_gw, "webster", "Find CTE of ULE DEMO_NO_HANDOFF")
    dispatch(client, demo_gw, {"message": msg, "agentId": "webster"})
    wait_for(path.exists)
    handoff = load_handoff(path, run_id=run_id, agent="webster")
    assert handoff["status"] == "complete"
    assert handoff["confidence"] == "medium"
    assert handoff["result"].startswith("[demo output from webster — not a real agent]")
    assert "ULE" in handoff["result"]
    assert handoff["notes"] == GATEWAY_NOTE


def test_exit_zero_with_nothing_on_stdout_shows_its_stderr(
    tmp_path: Path, client: httpx.Client
) -> None:
    """An agent whose own `orchestrate handoff write` was refused, and which then exits 0,
    gets a stand-in that shows why (its stderr), not only "printed nothing"."""
    script = """
        import sys
        print("error: handoff for run `x` has no key: pass `--key KEY`", file=sys.stderr)
    """
    cfg = make_config(tmp_path, {"quiet": {"kind": "command", "argv": script_argv(script)}})
    with LocalGateway(cfg, token=TOKEN) as gw:
        run_id, path, msg = delegation(gw, "quiet", "do it")
        dispatch(client, gw, {"message": msg})
        wait_for(path.exists)
    handoff = load_handoff(path, run_id=run_id, agent="quiet")
    assert handoff["status"] == "complete" and handoff["notes"] == GATEWAY_NOTE
    assert handoff["result"].startswith("(the agent exited 0 and printed nothing on stdout")
    assert "has no key: pass `--key KEY`" in handoff["result"]


def test_a_stand_in_never_carries_a_secret_the_agent_printed(
    tmp_path: Path, client: httpx.Client
) -> None:
    """The gateway's token is a registered secret: an agent that prints it (stdout, or
    stderr with nothing on stdout) gets a stand-in with it masked."""
    script = f"""
        import sys
        print("leaked {TOKEN}", file=sys.stderr)
    """
    cfg = make_config(tmp_path, {"leaky": {"kind": "command", "argv": script_argv(script)}})
    with LocalGateway(cfg, token=TOKEN) as gw:
        run_id, path, msg = delegation(gw, "leaky", "do it")
        dispatch(client, gw, {"message": msg})
        wait_for(path.exists)
    handoff = load_handoff(path, run_id=run_id, agent="leaky")
    assert "leaked" in handoff["result"]
    assert TOKEN not in path.read_text(encoding="utf-8")


def test_receiver_refusal_names_the_file_the_handoff_went_to(
    demo_gw: LocalGateway, client: httpx.Client
) -> None:
    """A forged second handoff is kept as `<run>.2.json` (then set aside); the 403 names
    that file, not the first handoff's."""
    from engine.handoff import key_hash, new_key
    from engine.record import write_pending

    run_id, key = new_run_id(), new_key()
    records = demo_gw.cfg.handoffs_dir
    (records / ".pending").mkdir(parents=True, exist_ok=True)
    write_pending(records, run_id, {"target": "webster", "caller": "manager",
                                    "outcome": "dispatched", "key_sha256": key_hash(key),
                                    "pid": 2**22 + 7})  # fmt: skip
    good = make_handoff(run_id=run_id, agent="webster", status="complete", result="ok", key=key)
    first = client.post(f"{demo_gw.url}/handoffs/{run_id}", json=good, headers=AUTH)
    assert first.status_code == 200
    forged = make_handoff(run_id=run_id, agent="webster", status="complete", result="no",
                          key=new_key())  # fmt: skip
    resp = client.post(f"{demo_gw.url}/handoffs/{run_id}", json=forged, headers=AUTH)
    assert resp.status_code == 403
    error = resp.json()["error"]
    assert f"{run_id}.json` refused" not in error, error
    assert "key" in error


def test_late_gateway_handoff_is_reconciled_with_its_pending_envelope(
    demo_gw: LocalGateway, client: httpx.Client
) -> None:
    run_id, path, msg = delegation(demo_gw, "webster", "Find it DEMO_CRASH")
    pending = demo_gw.cfg.handoffs_dir / ".pending" / f"{run_id}.json"
    pending.parent.mkdir(parents=True)
    envelope = {
        "caller": "manager",
        "target": "webster",
        "outcome": "timeout",
        "dispatched_at": "2026-01-01T00:00:00.000Z",
        "deadline_at": "2026-01-01T00:00:01.000Z",
    }
    pending.write_text(json.dumps(envelope), encoding="utf-8")
    dispatch(client, demo_gw, {"message": msg, "agentId": "webster"})
    wait_for(lambda: not pending.exists())
    record = json.loads((demo_gw.cfg.handoffs_dir / f"{run_id}.json").read_text("utf-8"))
    assert record["status"] == "failed"
    assert record["envelope"]["outcome"] == "failed"
    assert record["envelope"]["late"] is True


def test_command_agent_environment_and_workspace(
    start_gateway: Callable[..., LocalGateway], client: httpx.Client
) -> None:
    source = """
        import json, os, sys
        keys = [k for k in os.environ if k.startswith("ORCH_") or k == "DEMO_EXTRA"]
        info = {k: os.environ[k] for k in keys}
        info["cwd"] = os.getcwd()
        info["path0"] = os.environ["PATH"].split(os.pathsep)[0]
        with open(os.path.join(os.environ["ORCH_WORKSPACE"], "env.json"), "w") as fh:
            json.dump(info, fh)
        print("done")
    """
    gw = start_gateway(
        {"probe": {"kind": "command", "argv": script_argv(source), "env": {"DEMO_EXTRA": "1"}}}
    )
    run_id, path, msg = delegation(gw, "probe", "Line one\nline two")
    gw_run = dispatch(client, gw, {"message": msg})  # one agent: agentId may be left out
    wait_for(path.exists)
    workspace = gw.cfg.handoffs_dir / ".workspaces" / "probe" / gw_run
    info = json.loads((workspace / "env.json").read_text(encoding="utf-8"))
    for inherited in [k for k in os.environ if k.startswith("ORCH_")]:  # e.g. CI's
        info.pop(inherited, None)
    assert info == {
        "ORCH_RUN_ID": run_id,
        "ORCH_HANDOFF_PATH": str(path),
        "ORCH_TASK": "Line one\nline two",
        "ORCH_AGENT": "probe",
        "ORCH_WORKSPACE": str(workspace),
        "ORCH_GATEWAY_RUN_ID": gw_run,
        "ORCH_HANDOFF_KEY": "",  # the message had no key line
        "DEMO_EXTRA": "1",
        "cwd": str(workspace),
        "path0": os.path.dirname(sys.executable),
    }
    assert (workspace / "TASK.txt").read_text(encoding="utf-8") == msg
    assert load_handoff(path, run_id=run_id, agent="probe")["result"] == "done"


def test_idempotency_key_runs_once(
    start_gateway: Callable[..., LocalGateway], client: httpx.Client, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    source = f"""
        import os
        open(os.path.join({str(marks)!r}, os.environ["ORCH_GATEWAY_RUN_ID"]), "w").close()
        print("ran")
    """
    gw = start_gateway({"counter": {"kind": "command", "argv": script_argv(source)}})
    _, path, msg = delegation(gw, "counter", "count me")
    body = {"message": msg, "agentId": "counter"}
    first = dispatch(client, gw, body, headers={**AUTH, "Idempotency-Key": "k-1"})
    second = dispatch(client, gw, body, headers={**AUTH, "Idempotency-Key": "k-1"})
    assert first == second
    wait_for(path.exists)
    wait_for(lambda: gw.stats()["inflight"]["counter"] == 0)
    other = dispatch(client, gw, body, headers={**AUTH, "Idempotency-Key": "k-2"})
    assert other != first
    wait_for(lambda: len(list(marks.iterdir())) == 2)
    assert sorted(p.name for p in marks.iterdir()) == sorted([first, other])
    assert gw.stats()["dispatched"]["counter"] == 2


@pytest.mark.parametrize("source", ["agent", "body"])
def test_timeout_kills_the_process_group(
    start_gateway: Callable[..., LocalGateway], client: httpx.Client, source: str
) -> None:
    script = """
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        with open(os.path.join(os.environ["ORCH_WORKSPACE"], "pids"), "w") as fh:
            fh.write(f"{os.getpid()} {child.pid}")
        time.sleep(60)
    """
    spec: dict[str, Any] = {"kind": "command", "argv": script_argv(script)}
    body_extra: dict[str, Any] = {}
    # Long enough for the script to start and write its pids on a busy host (a Python
    # start alone can take more than 0.5 s there), short enough to keep the test quick.
    if source == "agent":
        spec["timeout"] = 3
    else:  # the delegation's timeout alone no longer kills: the hard limit does
        body_extra["timeoutSeconds"] = 3
        spec["kill_after"] = 3
    gw = start_gateway({"sleeper": spec})
    run_id, path, msg = delegation(gw, "sleeper", "sleep a lot")
    gw_run = dispatch(client, gw, {"message": msg, "agentId": "sleeper", **body_extra})
    pids_file = gw.cfg.handoffs_dir / ".workspaces" / "sleeper" / gw_run / "pids"
    wait_for(lambda: pids_file.exists() and pids_file.read_text())
    pids = [int(p) for p in pids_file.read_text().split()]
    wait_for(path.exists)
    handoff = load_handoff(path, run_id=run_id, agent="sleeper")
    assert handoff["status"] == "failed"
    assert handoff["result"].startswith("killed after 3 s")
    wait_for(lambda: all(gone(p) for p in pids))


def test_stats_count_concurrent_runs(
    start_gateway: Callable[..., LocalGateway], client: httpx.Client, tmp_path: Path
) -> None:
    # The webster runs end when the test says so (a file appears), not after a sleep that
    # a busy host could outlast while the three are still being dispatched.
    go = tmp_path / "go"
    script = f"""
        import os, time
        deadline = time.monotonic() + 60
        while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:
            time.sleep(0.01)
        print("done")
    """
    agents = {r: {"kind": "command", "argv": demo_argv(r)} for r in ROLES}
    agents["webster"] = {"kind": "command", "argv": script_argv(script)}
    demo_gw = start_gateway(agents)
    paths = []
    for _ in range(3):
        _, path, msg = delegation(demo_gw, "webster", "Find things")
        dispatch(client, demo_gw, {"message": msg, "agentId": "webster"})
        paths.append(path)
    during = demo_gw.stats()
    assert during["inflight"]["webster"] == 3
    assert client.get(f"{demo_gw.url}/health").json()["inflight"] == 3
    go.touch()
    for path in paths:
        wait_for(path.exists)
    wait_for(lambda: demo_gw.stats()["inflight"]["webster"] == 0)
    assert demo_gw.stats() == {
        "dispatched": {"webster": 3, "tech-lead": 0, "auditor": 0},
        "inflight": {"webster": 0, "tech-lead": 0, "auditor": 0},
        "max_inflight": {"webster": 3, "tech-lead": 0, "auditor": 0},
        "max_inflight_total": 3,
    }


def test_stop_kills_running_agents_and_is_idempotent(tmp_path: Path, client: httpx.Client) -> None:
    script = """
        import os, time
        with open(os.path.join(os.environ["ORCH_WORKSPACE"], "pid"), "w") as fh:
            fh.write(str(os.getpid()))
        time.sleep(60)
    """
    cfg = make_config(tmp_path, {"sleeper": {"kind": "command", "argv": script_argv(script)}})
    with LocalGateway(cfg, token=TOKEN) as gw:
        url = gw.url
        run_id, path, msg = delegation(gw, "sleeper", "wait")
        gw_run = dispatch(client, gw, {"message": msg})
        pid_file = cfg.handoffs_dir / ".workspaces" / "sleeper" / gw_run / "pid"
        pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text()))
        started = time.monotonic()
        gw.stop()
        assert time.monotonic() - started < 30.0  # the agent's 60 s sleep was not waited out
        assert gone(pid)
        gw.stop()
    handoff = load_handoff(path, run_id=run_id, agent="sleeper")
    assert handoff["status"] == "failed"
    assert handoff["result"] == "killed: the local gateway stopped"
    assert gw.stats()["inflight"] == {"sleeper": 0}
    with pytest.raises(httpx.ConnectError):
        client.get(f"{url}/health")


# -- handoff receiver ----------------------------------------------------------------------


def test_receiver_refuses_bad_token_and_writes_nothing(
    demo_gw: LocalGateway, client: httpx.Client
) -> None:
    run_id = new_run_id()
    body = make_handoff(run_id=run_id, agent="webster", status="complete", result="x")
    for headers in ({}, {"Authorization": "Bearer nope"}):
        resp = client.post(f"{demo_gw.url}/handoffs/{run_id}", json=body, headers=headers)
        assert resp.status_code == 401
        assert TOKEN not in resp.text
    hdir = demo_gw.cfg.handoffs_dir
    assert not hdir.exists() or not any(hdir.rglob(f"{run_id}*"))


def test_receiver_writes_a_valid_handoff(demo_gw: LocalGateway, client: httpx.Client) -> None:
    from engine.record import write_pending

    run_id = new_run_id()
    # a delegation waits for it (a run nobody waits for is refused: test_trust_receiver.py)
    write_pending(demo_gw.cfg.handoffs_dir, run_id, {"target": "webster", "pid": os.getpid(),
                                                     "handoff_key": "optional"})  # fmt: skip
    body = make_handoff(run_id=run_id, agent="webster", status="complete", result="CTE 0.01")
    resp = client.post(f"{demo_gw.url}/handoffs/{run_id}", json=body, headers=AUTH)
    assert resp.status_code == 200 and resp.json() == {"ok": True}
    path = handoff_path(demo_gw.cfg.handoffs_dir, run_id)
    assert load_handoff(path, run_id=run_id, agent="webster") == body


def test_receiver_uses_sub_dir_and_reconciles(demo_gw: LocalGateway, client: httpx.Client) -> None:
    run_id = new_run_id()
    sub = demo_gw.cfg.handoffs_dir / "sub"
    (sub / ".pending").mkdir(parents=True)
    envelope = {"target": "webster", "outcome": "timeout", "dispatched_at": "2026-01-01T00:00:00Z"}
    (sub / ".pending" / f"{run_id}.json").write_text(json.dumps(envelope), encoding="utf-8")
    body = make_handoff(run_id=run_id, agent="webster", status="complete", result="late")
    resp = client.post(f"{demo_gw.url}/handoffs/{run_id}", json=body, headers=AUTH)
    assert resp.status_code == 200
    record = json.loads((sub / f"{run_id}.json").read_text(encoding="utf-8"))
    assert record["result"] == "late"
    assert record["envelope"]["outcome"] == "complete"
    assert record["envelope"]["late"] is True
    assert not (sub / ".pending" / f"{run_id}.json").exists()
    assert not (demo_gw.cfg.handoffs_dir / f"{run_id}.json").exists()
    again = client.post(f"{demo_gw.url}/handoffs/{run_id}", json=body, headers=AUTH)
    assert again.status_code == 200 and again.json() == resp.json()  # a retry: same answer
    other = dict(body, result="another")
    kept = client.post(f"{demo_gw.url}/handoffs/{run_id}", json=other, headers=AUTH)
    assert kept.status_code == 409


def test_receiver_rejects_invalid_handoff(demo_gw: LocalGateway, client: httpx.Client) -> None:
    run_id = new_run_id()
    body = make_handoff(run_id=run_id, agent="webster", status="complete", result="x")
    body["status"] = "done"
    resp = client.post(f"{demo_gw.url}/handoffs/{run_id}", json=body, headers=AUTH)
    assert resp.status_code == 400
    data = resp.json()
    assert data["ok"] is False
    assert any(p.startswith("`/status`") for p in data["problems"])
    assert not (demo_gw.cfg.handoffs_dir / f"{run_id}.json").exists()


def test_receiver_rejects_mismatched_run_id_and_bad_json(
    demo_gw: LocalGateway, client: httpx.Client
) -> None:
    run_id = new_run_id()
    body = make_handoff(run_id=new_run_id(), agent="webster", status="complete", result="x")
    resp = client.post(f"{demo_gw.url}/handoffs/{run_id}", json=body, headers=AUTH)
    assert resp.status_code == 400
    assert any("/runId" in p for p in resp.json()["problems"])
    resp = client.post(f"{demo_gw.url}/handoffs/{run_id}", content=b"{", headers=AUTH)
    assert resp.status_code == 400
    assert not any(demo_gw.cfg.handoffs_dir.glob("*.json"))


@pytest.mark.parametrize("raw_id", ["%2E%2E", "..%2Fescape", "a.b", "-x"])
def test_receiver_refuses_unsafe_ids(
    demo_gw: LocalGateway, client: httpx.Client, tmp_path: Path, raw_id: str
) -> None:
    body = make_handoff(run_id="ok", agent="webster", status="complete", result="x")
    resp = client.post(f"{demo_gw.url}/handoffs/{raw_id}", json=body, headers=AUTH)
    assert resp.status_code == 400, resp.text
    assert "is not allowed" in resp.json()["error"]
    assert not any(tmp_path.rglob("*.json"))


def test_stray_processes_end_with_their_agent(
    start_gateway: Callable[..., LocalGateway], client: httpx.Client
) -> None:
    script = """
        import os, subprocess, sys
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)"], stdout=subprocess.DEVNULL
        )
        with open(os.path.join(os.environ["ORCH_WORKSPACE"], "pid"), "w") as fh:
            fh.write(str(child.pid))
        print("left a child behind")
    """
    gw = start_gateway({"leaky": {"kind": "command", "argv": script_argv(script)}})
    run_id, path, msg = delegation(gw, "leaky", "leak")
    gw_run = dispatch(client, gw, {"message": msg})
    wait_for(path.exists)
    assert load_handoff(path, run_id=run_id)["result"] == "left a child behind"
    pid = int((gw.cfg.handoffs_dir / ".workspaces" / "leaky" / gw_run / "pid").read_text())
    wait_for(lambda: gone(pid))


def test_output_is_bounded(
    start_gateway: Callable[..., LocalGateway], client: httpx.Client
) -> None:
    script = """
        import sys
        sys.stdout.write("x" * 300_000 + "END")
    """
    gw = start_gateway({"chatty": {"kind": "command", "argv": script_argv(script)}})
    run_id, path, msg = delegation(gw, "chatty", "talk")
    dispatch(client, gw, {"message": msg})
    wait_for(path.exists)
    result = load_handoff(path, run_id=run_id)["result"]
    assert result.endswith("xxxEND")
    assert len(result) == 64 * 1024


def test_serve_forever_returns_after_stop(tmp_path: Path, client: httpx.Client) -> None:
    cfg = make_config(tmp_path, {"webster": {"kind": "command", "argv": demo_argv("webster")}})
    gw = LocalGateway(cfg, token=TOKEN, host="127.0.0.1", port=0)
    server = threading.Thread(target=gw.serve_forever)
    server.start()
    try:
        url = wait_for(lambda: gw._server is not None and gw.url)
        assert client.get(f"{url}/health").json()["agents"] == ["webster"]
    finally:
        gw.stop()
        server.join(timeout=60.0)
    assert not server.is_alive()


# -- threads and the plain HTTP client (performance shape, not timings) ------------------


def _agent_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "local-gateway-agent"]


def test_runs_answered_at_once_reuse_one_idle_worker_thread(
    start_gateway: Callable[..., LocalGateway], client: httpx.Client
) -> None:
    gw = start_gateway({"webster": {"kind": "echo"}})
    before = set(_agent_threads())
    for n in range(5):
        run_id, path, msg = delegation(gw, "webster", f"task {n}")
        dispatch(client, gw, {"message": msg, "agentId": "webster"})
        wait_for(path.exists)
        wait_for(lambda: gw._workers.idle == 1)  # its thread waits for the next run
        assert load_handoff(path, run_id=run_id)["result"] == f"echo: task {n}"
    assert len(set(_agent_threads()) - before) == 1  # one thread, reused four times
    assert gw.stats()["dispatched"]["webster"] == 5


def test_a_held_run_answers_with_its_completion_on_its_connection(
    start_gateway: Callable[..., LocalGateway], client: httpx.Client
) -> None:
    gw = start_gateway({"webster": {"kind": "echo"}})
    before = set(_agent_threads())
    run_id, path, msg = delegation(gw, "webster", "held")
    resp = client.post(
        f"{gw.url}/hooks/agent",
        json={"message": msg, "agentId": "webster", "waitForCompletion": True},
        headers=AUTH,
    )
    assert resp.status_code == 200 and resp.json()["completion"] == {"status": "ok"}
    assert path.exists()  # the handoff is there when the answer comes
    assert set(_agent_threads()) - before == set()  # no worker thread was needed


def test_the_hooks_client_posts_to_http_gateways_without_httpx(tmp_path: Path) -> None:
    """A delegation to the local gateway imports neither httpx nor jsonschema (their
    import and a TLS context cost 100-200 ms per process): only a failure needs them."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from engine.config import config_from_dict
        from engine.delegate import DelegationRequest, open_delegator
        cfg = config_from_dict(
            {{"handoffs_dir": "handoffs", "pool": {{"enabled": False}},
              "gateway": {{"embedded": True, "agents": {{"manager": {{"kind": "echo"}},
                                                         "w": {{"kind": "echo"}}}}}},
              "agents": {{"manager": {{"url": "local"}}, "w": {{"url": "local"}}}}}},
            path=Path({str(tmp_path)!r}) / "orchestrator.yaml",
        )
        with open_delegator(cfg) as d:
            res = d.delegate(
                DelegationRequest(target="w", task="t", caller="manager", timeout=30)
            )
        print(res.outcome.value, [m for m in ("httpx", "jsonschema", "networkx")
                                  if m in sys.modules])
        """
    )
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split(None, 1) == ["complete", "[]\n"]


def test_the_hooks_client_says_connection_refused_over_plain_http(tmp_path: Path) -> None:
    import socket

    from engine.config import RetryPolicy
    from engine.errors import HookUnreachableError
    from engine.hooks import HooksClient, Target

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    target = Target("webster", f"http://127.0.0.1:{port}", TOKEN, "a test")
    with HooksClient(RetryPolicy(delays=(0.01,), jitter=0.0)) as hooks:
        with pytest.raises(HookUnreachableError) as info:
            hooks.post_agent(
                target, {"message": "m"}, idempotency_key="k", deadline=time.monotonic() + 30
            )
    assert "connection refused" in info.value.message
    assert TOKEN not in info.value.message
