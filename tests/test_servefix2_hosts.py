"""`orchestrate serve` without tokens answers only requests addressed to it on this host.

A web page whose name resolves to 127.0.0.1 (DNS rebinding) sends its own name as `Host`:
a real server without tokens refuses it (421, one paragraph, exit 2), and answers the
loopback names with its port. With tokens, `Host` is not checked (the token guards).
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from engine.cli import workflow
from tests.servekit import Served, cli, server_env


@pytest.fixture(scope="module")
def open_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = Served(tmp_path_factory.mktemp("tokenless"))
    raw = yaml.safe_load(served.path.read_text())
    del raw["serve"]["tokens_file"]
    served.path.write_text(yaml.safe_dump(raw))
    served.start()
    try:
        yield served
    finally:
        served.stop()
    assert "Traceback" not in "".join(served.log), "".join(served.log)


def _port(srv: Served) -> int:
    port = urlsplit(srv.url).port
    assert port is not None
    return port


@pytest.mark.parametrize(
    "host",
    ["attacker.example:{port}", "attacker.example", "127.0.0.1:1", "10.0.0.5:{port}", ""],
    ids=["rebound-name", "no-port", "other-port", "lan-address", "empty"],
)
def test_a_foreign_host_is_refused(open_srv: Served, host: str) -> None:
    port = _port(open_srv)
    value = host.format(port=port)
    start = {"workflow": "gate", "inputs": {"query": "x"}}
    with httpx.Client(base_url=open_srv.url, timeout=30) as c:
        before = c.get("/v1/runs").json()["runs"]
        origin = {"Origin": f"http://{value}"} if value else {}
        r = c.post("/v1/runs", json=start, headers={"Host": value, **origin})
        assert r.status_code == 421, r.text
        doc = r.json()
        assert doc["exit_code"] == 2
        assert "this server has no tokens and answers only requests addressed to it" in (
            doc["detail"]
        )
        assert f"`127.0.0.1:{port}`" in doc["detail"] and "DNS rebinding" in doc["detail"]
        assert c.get("/v1/runs", headers={"Host": value}).status_code == 421
        assert c.get("/v1/runs").json()["runs"] == before  # nothing started


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "127.0.0.2:{port}"])
def test_loopback_names_with_the_port_are_answered(open_srv: Served, host: str) -> None:
    value = host.format(port=_port(open_srv))
    with httpx.Client(base_url=open_srv.url, timeout=30) as c:
        r = c.get("/v1/whoami", headers={"Host": value})
        assert r.status_code == 200 and r.json()["name"] == "local", r.text


def test_the_cli_reaches_it_as_localhost(open_srv: Served) -> None:
    url = open_srv.url.replace("127.0.0.1", "localhost")
    ok = cli(workflow, "runs", "--server", url)
    assert ok.exit_code == 0, ok.output


def test_with_tokens_the_host_is_not_checked(tmp_path_factory: pytest.TempPathFactory) -> None:
    srv = Served(tmp_path_factory.mktemp("tokens")).start()
    try:
        with srv.client("alice") as c:
            r = c.get("/v1/whoami", headers={"Host": f"attacker.example:{_port(srv)}"})
            assert r.status_code == 200 and r.json()["name"] == "alice", r.text
        assert cli(workflow, "runs", **server_env(srv)).exit_code == 0
    finally:
        srv.stop()
