"""Cluster operations: `agents status` against real gateways, systemd units, logs, retention."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from engine.cli import orchestrate
from engine.config import Config, config_from_dict, load_config
from engine.gateway.retention import prune_workspaces
from engine.gateway.server import LocalGateway
from engine.health import BAD_TOKEN, DEGRADED, DOWN, EMBEDDED, UP, check_agents, config_warnings
from engine.opslog import follow, log_path, tail
from engine.systemd import gateway_units, write_units
from tests.helpers import StandIn, demo_config, free_port, write_config

GW_TOKEN = "health-gw-token-5d1f0a"
REMOTE_TOKEN = "health-remote-token-9e3c71"


class HealthyStandIn(StandIn):
    """The hooks stand-in with a ``GET /health`` that answers like OpenClaw's (no counts)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        handler = self.server.RequestHandlerClass

        def do_get(h: BaseHTTPRequestHandler) -> None:
            data = b'{"ok":true,"status":"live"}'
            h.send_response(200 if h.path == "/health" else 404)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)

        handler.do_GET = do_get  # type: ignore[attr-defined]


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A standalone local gateway, a healthy stand-in, a wrong-token stand-in, a dead port."""
    monkeypatch.setenv("HEALTH_GW_TOKEN", GW_TOKEN)
    monkeypatch.setenv("HEALTH_REMOTE_TOKEN", REMOTE_TOKEN)
    monkeypatch.setenv("HEALTH_WRONG_TOKEN", "not-the-token-4411")
    good = HealthyStandIn(token=REMOTE_TOKEN, statuses=[400] * 10).start()
    wrong = StandIn(token=REMOTE_TOKEN).start()
    raw = demo_config(tmp_path)
    raw["gateway"]["embedded"] = False
    raw["gateway"]["token_env"] = "HEALTH_GW_TOKEN"
    raw["gateway"]["port"] = free_port()
    raw["agents"] = {
        "webster": {"url": "local"},
        "tech-lead": {"url": good.url, "token_env": "HEALTH_REMOTE_TOKEN", "agent_id": "main"},
        "auditor": {"url": wrong.url, "token_env": "HEALTH_WRONG_TOKEN"},
        "secretary": {"url": f"http://127.0.0.1:{free_port()}", "token_env": "HEALTH_GW_TOKEN"},
    }
    raw.pop("validator")
    cfg = load_config(write_config(tmp_path, raw))
    gw = LocalGateway(cfg, token=GW_TOKEN).start()
    try:
        yield {"cfg": cfg, "gw": gw, "good": good, "wrong": wrong, "path": cfg.path}
    finally:
        gw.stop()
        good.stop()
        wrong.stop()


def test_local_gateway_answers_an_empty_message_400_with_token_401_without(
    cluster: dict[str, Any],
) -> None:
    url = cluster["gw"].url + "/hooks/agent"
    with httpx.Client() as client:
        ok = client.post(url, json={"message": ""}, headers={"Authorization": f"Bearer {GW_TOKEN}"})
        bad = client.post(url, json={"message": ""})
    assert (ok.status_code, ok.json()) == (400, {"ok": False, "error": "message required"})
    assert bad.status_code == 401
    assert cluster["gw"].stats()["dispatched"] == dict.fromkeys(cluster["gw"].agents, 0)


def test_status_of_a_mixed_cluster(cluster: dict[str, Any]) -> None:
    report = check_agents(cluster["cfg"], timeout=30.0)  # a bound, not what the test is about
    by = {a.agent: a for a in report.agents}
    assert [a.agent for a in report.agents] == ["webster", "tech-lead", "auditor", "secretary"]
    assert (by["webster"].state, by["webster"].health, by["webster"].token) == (
        UP,
        "ok",
        "accepted",
    )
    assert by["webster"].inflight == 0 and by["webster"].latency_ms is not None
    assert by["webster"].url == cluster["gw"].url
    assert (by["tech-lead"].state, by["tech-lead"].token, by["tech-lead"].inflight) == (
        UP,
        "accepted",
        None,
    )
    # the token check sent an empty message with the agent id, and nothing else
    post = cluster["good"].requests[-1]
    assert post["path"] == "/hooks/agent"
    assert post["body"]["message"] == "" and post["body"]["agentId"] == "main"
    assert (by["auditor"].state, by["auditor"].token) == (BAD_TOKEN, "rejected (401)")
    assert by["auditor"].health == "HTTP 501"  # the stand-in has no /health
    assert "`HEALTH_WRONG_TOKEN`" in by["auditor"].detail
    assert by["secretary"].state == DOWN
    assert by["secretary"].health == "unreachable: connection refused"
    assert not report.ok
    # no task was started anywhere
    assert cluster["gw"].stats()["dispatched"]["webster"] == 0


def test_status_cli_table_json_and_exit_code(cluster: dict[str, Any]) -> None:
    runner = CliRunner()
    res = runner.invoke(orchestrate, ["agents", "status", "--config", str(cluster["path"])])
    assert res.exit_code == 1, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == [
        "AGENT",
        "STATE",
        "URL",
        "HEALTH",
        "TOKEN",
        "LATENCY",
        "IN-FLIGHT",
    ]
    assert lines[1].split()[:2] == ["webster", "up"]
    assert lines[5] == "2/4 up; not up: auditor, secretary"
    for secret in (GW_TOKEN, REMOTE_TOKEN, "not-the-token-4411"):
        assert secret not in res.output
    res = runner.invoke(
        orchestrate,
        ["agents", "status", "webster", "tech-lead", "--json", "--config", str(cluster["path"])],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["ok"] is True
    assert [(a["agent"], a["state"]) for a in data["agents"]] == [
        ("webster", "up"),
        ("tech-lead", "up"),
    ]


def test_status_of_unknown_agent_is_a_usage_error(cluster: dict[str, Any]) -> None:
    res = CliRunner().invoke(
        orchestrate, ["agents", "status", "webstr", "--config", str(cluster["path"])]
    )
    assert res.exit_code == 2
    assert "unknown agent `webstr`; did you mean `webster`?" in res.output


def test_missing_token_and_embedded_agents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEALTH_UNSET_TOKEN", raising=False)
    good = HealthyStandIn(token=REMOTE_TOKEN, statuses=[400]).start()
    try:
        raw = demo_config(tmp_path)
        raw["agents"]["webster"] = {"url": good.url, "token_env": "HEALTH_UNSET_TOKEN"}
        cfg = config_from_dict(raw, path=tmp_path / "orchestrator.yaml")
        report = check_agents(cfg, names=["webster", "auditor"], timeout=30.0)
    finally:
        good.stop()
    web, aud = report.agents
    assert (web.state, web.health, web.token) == (BAD_TOKEN, "ok", "not set (`HEALTH_UNSET_TOKEN`)")
    assert good.posts == 0  # no token, no POST
    assert (aud.state, aud.url) == (EMBEDDED, "embedded")
    assert not report.ok


def _held_server(handle: Callable[[BaseHTTPRequestHandler], None]) -> ThreadingHTTPServer:
    class Held(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            handle(self)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Held)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _three_agents(tmp_path: Path, server: ThreadingHTTPServer) -> Config:
    raw = demo_config(tmp_path)
    for name in ("webster", "auditor", "secretary"):
        raw["agents"][name] = {
            "url": f"http://127.0.0.1:{server.server_address[1]}",
            "token_env": "X",
        }
    return config_from_dict(raw)


def test_a_slow_gateway_is_down_within_the_timeout(tmp_path: Path) -> None:
    release = threading.Event()
    server = _held_server(lambda h: release.wait(10) and None)
    try:
        report = check_agents(
            _three_agents(tmp_path, server), names=["webster", "auditor", "secretary"], timeout=0.5
        )
    finally:
        release.set()
        server.shutdown()
        server.server_close()
    assert [a.state for a in report.agents] == [DOWN, DOWN, DOWN]
    assert [a.health for a in report.agents] == ["no answer in 0.5 s"] * 3


def test_agents_are_probed_concurrently(tmp_path: Path) -> None:
    """The gateway answers `/health` only once all three probes are in: probed one after
    another, each would wait out its timeout (the old check of this timed the probes,
    which a busy host failed)."""
    arrived: list[str] = []
    lock = threading.Lock()
    all_in = threading.Event()

    def handle(h: BaseHTTPRequestHandler) -> None:
        with lock:
            arrived.append(h.path)
            if len(arrived) == 3:
                all_in.set()
        all_in.wait(60)
        data = b'{"ok":true,"status":"live"}'
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    server = _held_server(handle)
    try:
        report = check_agents(
            _three_agents(tmp_path, server), names=["webster", "auditor", "secretary"], timeout=30
        )
    finally:
        all_in.set()
        server.shutdown()
        server.server_close()
    assert arrived == ["/health"] * 3
    assert [a.health for a in report.agents] == ["ok"] * 3


def test_unexpected_answers_are_degraded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTH_REMOTE_TOKEN", REMOTE_TOKEN)
    hooks_off = HealthyStandIn(token=REMOTE_TOKEN, statuses=[404]).start()
    try:
        raw = demo_config(tmp_path)
        raw["agents"]["webster"] = {"url": hooks_off.url, "token_env": "HEALTH_REMOTE_TOKEN"}
        report = check_agents(config_from_dict(raw), names=["webster"], timeout=30.0)
    finally:
        hooks_off.stop()
    (web,) = report.agents
    assert (web.state, web.token) == (DEGRADED, "no hooks (404)")
    assert "hooks.enabled: true" in web.detail


# -- config advice --------------------------------------------------------------------------


def _remote(ports: dict[str, int]) -> Config:
    return config_from_dict(
        {
            "agents": {
                name: {"url": f"http://127.0.0.1:{port}", "token_env": "T"}
                for name, port in ports.items()
            }
        }
    )


def test_ports_closer_than_four_are_warned() -> None:
    assert config_warnings(_remote({"manager": 18800, "tech-lead": 18804, "webster": 18828})) == []
    warnings = config_warnings(_remote({"manager": 18800, "tech-lead": 18802, "webster": 18828}))
    assert warnings == [
        "`manager` (127.0.0.1:18800) and `tech-lead` (127.0.0.1:18802) are 2 port(s) apart: "
        "an OpenClaw gateway also uses port N+3 (seed 001), so keep gateways on one host at "
        "least 4 apart."
    ]
    # several agents behind one gateway are one gateway, not a clash
    same = config_from_dict(
        {
            "agents": {
                "webster": {"url": "http://127.0.0.1:18800", "token_env": "T", "agent_id": "w"},
                "secretary": {"url": "http://localhost:18800", "token_env": "T", "agent_id": "s"},
            }
        }
    )
    assert config_warnings(same) == []


def test_the_shipped_atomizer_example_has_no_port_warnings() -> None:
    cfg = load_config(Path(__file__).parent.parent / "examples/atomizer/orchestrator.yaml")
    assert config_warnings(cfg) == []


# -- systemd ------------------------------------------------------------------------------


def test_systemd_units_follow_seed_001_and_hold_no_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATOMIZER_HOOKS_TOKEN", "distinctive-hooks-value-31337")
    cfg = load_config(Path(__file__).parent.parent / "examples/atomizer/orchestrator.yaml")
    out = tmp_path / "units"
    res = CliRunner().invoke(
        orchestrate, ["agents", "systemd", "--out", str(out), "--config", str(cfg.path)]
    )
    assert res.exit_code == 0, res.output
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == len(cfg.agents) == 8
    assert "openclaw-webster.service" in files
    text = (out / "openclaw-webster.service").read_text()
    assert "ExecStart=/usr/bin/env openclaw gateway --port 18828\n" in text
    assert "EnvironmentFile=%h/.config/orchestrate/webster.env\n" in text
    assert "Environment=OPENCLAW_STATE_DIR=%h/.openclaw-webster\n" in text
    assert "Restart=always\nRestartSec=5\nStartLimitIntervalSec=60\nStartLimitBurst=5\n" in text
    assert text.startswith("[Unit]\nDescription=OpenClaw gateway - webster")
    assert text.endswith("[Install]\nWantedBy=default.target\n")
    for f in out.iterdir():
        body = f.read_text()
        assert "distinctive-hooks-value-31337" not in body
        assert "TOKEN=" not in body


def test_systemd_templates_logs_and_the_local_gateway(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["gateway"].update(embedded=False, port=18900, token_env="GW_TOKEN")
    raw["agents"]["webster"] = {"url": "http://127.0.0.1:18828", "token_env": "T"}
    raw["agents"]["nx-expert"] = {"url": "http://10.0.0.5:18824", "token_env": "T"}  # not here
    raw["operations"] = {
        "logs": "logs/{agent}.log",
        "systemd": {
            "exec_start": "/usr/bin/node /opt/openclaw/dist/index.js gateway --port {port}",
            "state_dir": "/home/papa/atomizer/instances/{name}",
            "environment_file": "/home/papa/atomizer/instances/{name}/env",
        },
    }
    cfg = load_config(write_config(tmp_path, raw))
    units = {u.filename: u for u in gateway_units(cfg)}
    assert sorted(units) == ["openclaw-webster.service", "orchestrate-gateway.service"]
    web = units["openclaw-webster.service"].text
    assert "ExecStart=/usr/bin/node /opt/openclaw/dist/index.js gateway --port 18828" in web
    assert "OPENCLAW_CONFIG_PATH=/home/papa/atomizer/instances/webster/openclaw.json" in web
    assert "EnvironmentFile=/home/papa/atomizer/instances/webster/env" in web
    assert f"StandardOutput=append:{tmp_path}/logs/webster.log" in web
    local = units["orchestrate-gateway.service"].text
    from engine.systemd import running_orchestrate

    assert f"ExecStart={running_orchestrate()} gateway --config {cfg.path}" in local
    assert "# `GW_TOKEN` (gateway.token_env)" in local
    written = write_units(list(units.values()), tmp_path / "out")
    assert [p.read_text() for p in written] == [u.text for u in units.values()]


# -- logs ---------------------------------------------------------------------------------


def test_logs_tail_and_follow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = demo_config(tmp_path, operations={"logs": {"webster": "webster.log"}})
    cfg = load_config(write_config(tmp_path, raw))
    log = log_path(cfg, "webster")
    assert log == tmp_path / "webster.log"
    log.write_text("".join(f"line {i}\n" for i in range(10)))
    assert tail(log, 3) == ["line 7", "line 8", "line 9"]
    res = CliRunner().invoke(
        orchestrate, ["agents", "logs", "webster", "-n", "2", "--config", str(cfg.path)]
    )
    assert (res.exit_code, res.output) == (0, "line 8\nline 9\n")

    stop = threading.Event()
    seen: list[str] = []
    waits: list[float] = []

    def wait(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 1:
            with open(log, "a") as fh:
                fh.write("new one\npartial")
        elif len(waits) == 2:
            with open(log, "a") as fh:
                fh.write(" done\n")
        elif len(waits) == 3:
            log.write_text("after rotation\n")  # truncated: read again from the start
        else:
            stop.set()

    for line in follow(log, stop=stop, sleep=wait):
        seen.append(line)
    assert seen == ["new one", "partial done", "after rotation"]


def test_logs_errors(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, demo_config(tmp_path)))
    res = CliRunner().invoke(orchestrate, ["agents", "logs", "webster", "--config", str(cfg.path)])
    assert res.exit_code == 2
    assert "no log file configured for `webster`" in res.output
    res = CliRunner().invoke(orchestrate, ["agents", "logs", "webstr", "--config", str(cfg.path)])
    assert res.exit_code == 2 and "did you mean `webster`?" in res.output
    raw = demo_config(tmp_path, operations={"logs": "{agent}.log"})
    cfg = load_config(write_config(tmp_path, raw))
    res = CliRunner().invoke(orchestrate, ["agents", "logs", "auditor", "--config", str(cfg.path)])
    assert res.exit_code == 2
    assert f"log file `{tmp_path}/auditor.log` does not exist (yet)" in res.output


# -- workspace retention ------------------------------------------------------------------


def test_prune_keeps_the_newest_finished_and_every_running(tmp_path: Path) -> None:
    agent_dir = tmp_path / "webster"
    for i in range(5):
        ws = agent_dir / f"gw-{i}"
        ws.mkdir(parents=True)
        (ws / "stdout.log").write_text("x")
        ns = 1_700_000_000_000_000_000 + i * 1_000_000_000
        import os

        os.utime(ws, ns=(ns, ns))
    (agent_dir / "gw-running").mkdir()  # no stdout.log yet: never touched
    assert prune_workspaces(agent_dir, 2, running={"gw-0"}) == 2
    assert sorted(p.name for p in agent_dir.iterdir()) == ["gw-0", "gw-3", "gw-4", "gw-running"]
    assert prune_workspaces(agent_dir, None) == 0


def test_gateway_workspaces_are_pruned_after_each_run(tmp_path: Path) -> None:
    raw: dict[str, Any] = {
        "handoffs_dir": "handoffs",
        "agents": {"w": {"url": "local"}},
        "gateway": {
            "workspace_retention": 2,
            "agents": {"w": {"kind": "command", "argv": [sys.executable, "-c", "print(1)"]}},
        },
    }
    cfg = config_from_dict(raw, path=tmp_path / "orchestrator.yaml")
    assert cfg.gateway is not None and cfg.gateway.workspace_retention == 2
    gw = LocalGateway(cfg, token=GW_TOKEN).start()
    try:
        with httpx.Client() as client:
            for i in range(4):
                resp = client.post(
                    gw.url + "/hooks/agent",
                    json={"message": f"task {i}"},
                    headers={"Authorization": f"Bearer {GW_TOKEN}"},
                )
                assert resp.status_code == 200
                _wait(lambda: gw.stats()["inflight"]["w"] == 0)
    finally:
        gw.stop()
    left = list((cfg.handoffs_dir / ".workspaces" / "w").iterdir())
    assert len(left) == 2
    assert sorted((p / "TASK.txt").read_text() for p in left) == ["task 2", "task 3"]


def test_default_retention_is_100() -> None:
    cfg = config_from_dict(
        {"agents": {"w": {"url": "local"}}, "gateway": {"agents": {"w": {"kind": "echo"}}}}
    )
    assert cfg.gateway is not None and cfg.gateway.workspace_retention == 100


def _wait(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_embedded_agents_are_probed_on_a_running_companion(tmp_path: Path) -> None:
    """A server or an inbox runs the embedded gateway as a companion: it is probed."""
    from engine.config import load_config
    from engine.serve.companion import companion_gateway
    from tests.helpers import write_config

    raw = demo_config(tmp_path)
    raw["gateway"]["embedded"] = True
    cfg = load_config(write_config(tmp_path, raw))
    assert check_agents(cfg, names=["auditor"], timeout=30.0).agents[0].state == EMBEDDED
    with companion_gateway(cfg) as served:
        report = check_agents(cfg, names=["auditor", "webster"], timeout=30.0)
        port = served.gateway.port if served.gateway is not None else 0
    aud, web = report.agents
    assert (aud.state, aud.url, aud.health) == ("up", f"http://127.0.0.1:{port}", "ok"), aud
    assert web.state == "up" and report.ok
