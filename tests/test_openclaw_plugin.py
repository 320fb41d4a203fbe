"""The pool for every agent run: the pool endpoint, the OpenClaw plugin in
integrations/openclaw-pool/, and (tier `openclaw`) both against the real gateway, which
also checks `orchestrate agents status` against it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from engine.cli import orchestrate
from engine.pool import PoolSettings, TokenPool
from engine.poolserver import PoolServer

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "integrations" / "openclaw-pool"
POOL_TOKEN = "pool-endpoint-token-3c9d7e21"
AUTH = {"Authorization": f"Bearer {POOL_TOKEN}"}


@pytest.fixture
def pool_server(tmp_path: Path) -> Iterator[PoolServer]:
    pool = TokenPool(
        PoolSettings(dir=tmp_path / "pool", min_tokens=1, max_tokens=1, adaptive=False)
    )
    server = PoolServer(pool, token=POOL_TOKEN).start()
    try:
        yield server
    finally:
        server.stop()
        pool.close()


def test_pool_endpoint_acquire_wait_release(pool_server: PoolServer) -> None:
    url = pool_server.url
    with httpx.Client(timeout=10) as client:
        a = client.post(
            f"{url}/pool/acquire", json={"runId": "run-a", "agent": "main"}, headers=AUTH
        )
        assert (a.status_code, a.json()["ok"]) == (200, True)
        again = client.post(
            f"{url}/pool/acquire", json={"runId": "run-a", "agent": "main"}, headers=AUTH
        )
        assert again.status_code == 200  # a retried attempt keeps its one token
        b = client.post(
            f"{url}/pool/acquire",
            json={"runId": "run-b", "agent": "main", "waitSeconds": 0.2},
            headers=AUTH,
        )
        assert b.status_code == 503 and b.json()["error"] == "no pool token within 0.2 s"
        rel = client.post(f"{url}/pool/release", json={"runId": "run-a"}, headers=AUTH)
        assert rel.json() == {"ok": True, "released": True}
        rel = client.post(f"{url}/pool/release", json={"runId": "run-a"}, headers=AUTH)
        assert rel.json() == {"ok": True, "released": False}
        b = client.post(
            f"{url}/pool/acquire",
            json={"runId": "run-b", "agent": "main", "waitSeconds": 1},
            headers=AUTH,
        )
        assert b.status_code == 200
        assert client.get(f"{url}/health").json() == {"ok": True, "held": 1}
    assert pool_server.granted == ["run-a", "run-b"] and pool_server.max_held == 1


def test_a_waiting_acquire_gets_the_released_token(pool_server: PoolServer) -> None:
    url = pool_server.url
    got: list[int] = []
    with httpx.Client(timeout=10) as client:
        client.post(f"{url}/pool/acquire", json={"runId": "first", "agent": "main"}, headers=AUTH)

        def wait() -> None:
            with httpx.Client(timeout=30) as c:
                got.append(
                    c.post(
                        f"{url}/pool/acquire",
                        json={"runId": "second", "agent": "main", "waitSeconds": 20},
                        headers=AUTH,
                    ).status_code
                )

        waiter = threading.Thread(target=wait)
        waiter.start()
        client.post(f"{url}/pool/release", json={"runId": "first"}, headers=AUTH)
        waiter.join(30)
    assert got == [200] and pool_server.held == ["second"]


def test_a_run_the_engine_holds_a_token_for_is_not_counted_twice(
    pool_server: PoolServer,
) -> None:
    lease = pool_server.pool.acquire(run_id="orch-engine-1", agent="webster", timeout=0)
    try:
        resp = httpx.post(
            f"{pool_server.url}/pool/acquire",
            json={
                "runId": "oc-run-9",
                "agent": "main",
                "engineRunId": "orch-engine-1",
                "waitSeconds": 0,
            },
            headers=AUTH,
        )
        assert resp.json() == {
            "ok": True,
            "runId": "oc-run-9",
            "covered_by": "orch-engine-1",
            "waited_s": 0.0,
        }
        other = httpx.post(
            f"{pool_server.url}/pool/acquire",
            json={
                "runId": "oc-run-10",
                "agent": "main",
                "engineRunId": "orch-someone-else",
                "waitSeconds": 0,
            },
            headers=AUTH,
        )
        assert other.status_code == 503  # the pool of one is taken
    finally:
        lease.release()
    assert pool_server.granted == []


@pytest.mark.parametrize(
    ("headers", "body", "status", "error"),
    [
        ({}, {"runId": "x"}, 401, "Unauthorized"),
        ({"Authorization": "Bearer nope"}, {"runId": "x"}, 401, "Unauthorized"),
        (AUTH, {"agent": "main"}, 400, "`runId` must be a short id string"),
        (AUTH, {"runId": "a b"}, 400, "`runId` must be a short id string"),
        (AUTH, ["runId"], 400, "body must be a JSON object"),
    ],
    ids=["no-token", "wrong-token", "no-run-id", "bad-run-id", "not-an-object"],
)
def test_pool_endpoint_refusals(
    pool_server: PoolServer, headers: dict[str, str], body: Any, status: int, error: str
) -> None:
    resp = httpx.post(f"{pool_server.url}/pool/acquire", json=body, headers=headers)
    assert (resp.status_code, resp.json()["error"]) == (status, error)
    assert pool_server.granted == []


def test_stop_releases_what_is_held(tmp_path: Path) -> None:
    settings = PoolSettings(dir=tmp_path / "pool", max_tokens=1, adaptive=False)
    with TokenPool(settings) as pool:
        server = PoolServer(pool, token=POOL_TOKEN).start()
        httpx.post(
            f"{server.url}/pool/acquire", json={"runId": "held", "agent": "main"}, headers=AUTH
        )
        assert [t["run_id"] for t in pool.status()["in_use"]] == ["held"]
        server.stop()
        assert pool.status()["in_use"] == []


def test_pool_serve_needs_its_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.helpers import demo_config, write_config

    monkeypatch.delenv("ORCH_POOL_TOKEN", raising=False)
    cfg = write_config(tmp_path, demo_config(tmp_path))
    res = CliRunner().invoke(orchestrate, ["pool", "serve", "--port", "0", "--config", str(cfg)])
    assert res.exit_code == 2
    assert (
        "environment variable `ORCH_POOL_TOKEN` is not set: export the bearer token" in res.output
    )
    monkeypatch.setenv("ORCH_POOL_TOKEN", POOL_TOKEN)
    with PoolServer(None, token=POOL_TOKEN).start() as busy:  # noqa: F841
        port = busy.url.rsplit(":", 1)[1]
        res = CliRunner().invoke(
            orchestrate, ["pool", "serve", "--port", port, "--config", str(cfg)]
        )
    assert res.exit_code == 2
    assert f"the pool endpoint cannot listen on 127.0.0.1:{port}" in res.output


def test_plugin_manifest_and_entry_agree() -> None:
    manifest = json.loads((PLUGIN / "openclaw.plugin.json").read_text())
    package = json.loads((PLUGIN / "package.json").read_text())
    entry = (PLUGIN / "index.js").read_text()
    assert manifest["id"] == "orchestrator-pool"
    assert f'id: "{manifest["id"]}"' in entry
    assert package["openclaw"]["extensions"] == ["./index.js"]
    assert set(manifest["configSchema"]["properties"]) == {
        "url",
        "tokenFile",
        "tokenEnv",
        "waitSeconds",
        "failOpen",
        "agent",
    }
    for hook in ("before_agent_run", "agent_end"):
        assert f'"{hook}"' in entry
    node = shutil.which("node") or _cached_node()
    if node is None:
        pytest.skip("no node to check the plugin's syntax with")
    check = subprocess.run(
        [node, "--check", str(PLUGIN / "index.js")], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stderr


def _cached_node() -> str | None:
    base = Path.home() / ".cache" / "agent-orchestrator" / "openclaw"
    for candidate in sorted(base.glob("node-*/node_modules/node-linux-*/bin/node")):
        return str(candidate)
    return None


# --------------------------------------------------------------------------- the real gateway


@pytest.fixture(scope="module")
def pooled_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, PoolServer]]:
    """A real OpenClaw gateway with the plugin, in front of a pool of one token."""
    from tests.peers.openclaw.fixtures import OpenClawSession
    from tests.peers.openclaw.peer import SKIP_ENV, PeerSettings, PeerUnavailable, running_peer

    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: the real OpenClaw gateway tier is skipped")
    from engine.agentskill import install

    run_dir = tmp_path_factory.mktemp("openclaw-pool")
    pool = TokenPool(PoolSettings(dir=run_dir / "pool", min_tokens=1, max_tokens=1, adaptive=False))
    server = PoolServer(pool, token=POOL_TOKEN).start()
    token_file = run_dir / "pool-token"
    token_file.write_text(POOL_TOKEN + "\n")

    plugins = {
        "load": {"paths": [str(PLUGIN)]},
        "entries": {
            "orchestrator-pool": {
                "enabled": True,
                "hooks": {
                    "allowConversationAccess": True,
                    "timeouts": {"before_agent_run": 120000},
                },
                "config": {
                    "url": server.url,
                    "tokenFile": str(token_file),
                    "waitSeconds": 100,
                    "failOpen": False,
                },
            }
        },
    }
    plain_render = PeerSettings.render

    def render(settings: Any) -> str:
        """The peer's config plus the plugin (the peer writes its config at each start)."""
        text = plain_render(settings).rstrip()
        assert text.endswith("}")
        return text[:-1] + f"  plugins: {json.dumps(plugins)},\n}}\n"

    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(PeerSettings, "render", render)
            with running_peer(run_dir, before_start=lambda st: install(st.workspace)) as peer:
                yield OpenClawSession(peer), server
    except PeerUnavailable as exc:
        pytest.fail(f"the OpenClaw peer is unavailable: {exc}", pytrace=False)
    finally:
        server.stop()
        pool.close()


@pytest.mark.openclaw
def test_engine_delegations_through_the_plugin_take_one_token_each(
    pooled_peer: tuple[Any, PoolServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine holds a token per delegation and the plugin sees that it does: two
    delegations in a pool of one run one after the other, without waiting on themselves."""
    from engine.config import load_config
    from engine.delegate import DelegationRequest, Outcome, open_delegator

    oc, server = pooled_peer
    pool_dir = server.pool.settings.dir
    cfg = load_config(
        oc.engine_config(
            tmp_path,
            default_timeout=90,
            pool={"dir": str(pool_dir), "min_tokens": 1, "max_tokens": 1, "adaptive": False},
        )
    )
    for key, value in oc.env().items():
        monkeypatch.setenv(key, value)
    granted = len(server.granted)
    results: dict[int, Any] = {}
    with open_delegator(cfg) as delegator:

        def one(i: int) -> None:
            results[i] = delegator.delegate(
                DelegationRequest(target="webster", task=f"Shared pool {i}", caller="manager")
            )

        threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
    assert [results[i].outcome for i in range(2)] == [Outcome.COMPLETE] * 2
    assert len(server.granted) == granted  # covered by the engine's own tokens


@pytest.mark.openclaw
def test_agents_status_against_the_real_gateway(
    pooled_peer: tuple[Any, PoolServer], tmp_path: Path
) -> None:
    from tests.helpers import free_port
    from tests.peers.openclaw.fixtures import TOKEN_ENV, WRONG_TOKEN

    oc, server = pooled_peer
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = oc.engine_config(
        tmp_path,
        agents={
            "manager": {"url": oc.url, "token_env": TOKEN_ENV, "agent_id": "main"},
            "intruder": {"url": oc.url, "token_env": "ORCH_OPENCLAW_WRONG_TOKEN"},
            "webster": {"url": dead, "token_env": TOKEN_ENV},
        },
    )
    mark = oc.stub.next_seq
    oc.note_bad_auth()
    res = CliRunner().invoke(
        orchestrate, ["agents", "status", "--json", "--config", str(cfg)], env=oc.env()
    )
    assert res.exit_code == 1, res.output
    rows = {a["agent"]: a for a in json.loads(res.output)["agents"]}
    assert (rows["manager"]["state"], rows["manager"]["health"], rows["manager"]["token"]) == (
        "up",
        "ok",
        "accepted",
    )
    assert rows["intruder"]["state"] == "bad-token"
    assert rows["intruder"]["token"] == "rejected (401)"
    assert rows["webster"]["state"] == "down"
    assert WRONG_TOKEN not in res.output and oc.token not in res.output
    assert oc.stub.calls(since=mark) == []  # the empty message started no run
    assert server.granted == []


@pytest.mark.openclaw
def test_three_hook_tasks_against_a_pool_of_one_run_one_at_a_time(
    pooled_peer: tuple[Any, PoolServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.config import load_config
    from engine.delegate import DelegationRequest, Outcome, open_delegator

    oc, server = pooled_peer
    # the engine's own pool is off: only the plugin limits these runs
    cfg = load_config(oc.engine_config(tmp_path, pool={"enabled": False}, default_timeout=90))
    for key, value in oc.env().items():
        monkeypatch.setenv(key, value)
    results: dict[int, Any] = {}

    with open_delegator(cfg) as delegator:

        def one(i: int) -> None:
            results[i] = delegator.delegate(
                DelegationRequest(
                    target="webster", task=f"Pool task {i} stub_sleep:1", caller="manager"
                )
            )

        threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
    assert [results[i].outcome for i in range(3)] == [Outcome.COMPLETE] * 3
    assert server.max_held == 1 and len(set(server.granted)) >= 3
    spans = []
    for i in range(3):
        calls = oc.stub.calls(run_id=results[i].run_id)
        assert calls, f"run {i} never reached the model"
        spans.append((min(c["t_start"] for c in calls), max(c["t_end"] for c in calls)))
    spans.sort()
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, f"two runs overlapped: {spans}"
    # agent_end runs after the handoff was written: every run gives its token back
    deadline = time.monotonic() + 30
    while server.held and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.held == []
