"""`orchestrate pool serve`: every answer JSON, bad values refused, short tokens refused.

A real `PoolServer` on 127.0.0.1 over a real `TokenPool` of one token, and the real
`orchestrate pool serve` command.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.cli import orchestrate
from engine.pool import PoolSettings, TokenPool
from engine.poolserver import PoolServer
from tests.helpers import demo_config, write_config
from tests.servekit import cli

TOKEN = "pool-endpoint-token-8d1e4b2a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PoolServer]:
    settings = PoolSettings(dir=tmp_path / "pool", max_tokens=1, adaptive=False)
    with TokenPool(settings) as pool, PoolServer(pool, token=TOKEN).start() as srv:
        yield srv


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "GET"])
def test_another_method_gets_405_json(server: PoolServer, method: str) -> None:
    r = httpx.request(method, f"{server.url}/pool/acquire", json={"runId": "x"}, headers=AUTH)
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == "POST" and r.headers["content-type"] == "application/json"
    assert r.json()["ok"] is False and f"{method} is not allowed" in r.json()["error"]
    other = httpx.request(method, f"{server.url}/elsewhere", headers=AUTH)
    assert other.status_code == 404 and other.json() == {"ok": False, "error": "not found"}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"runId": "r1", "agent": "main", "waitSeconds": "abc"}, "`waitSeconds` must be a"),
        ({"runId": "r1", "agent": "main", "waitSeconds": -1}, "not -1"),
        ({"runId": "r1", "agent": "main", "holdSeconds": True}, "`holdSeconds` must be a"),
        ({"runId": "r1"}, "`agent` must be a short, non-empty string"),
        ({"runId": "r1", "agent": ""}, "`agent` must be a short, non-empty string"),
    ],
)
def test_bad_values_get_400(server: PoolServer, body: dict[str, Any], error: str) -> None:
    r = httpx.post(f"{server.url}/pool/acquire", json=body, headers=AUTH)
    assert r.status_code == 400, r.text
    assert error in r.json()["error"]
    assert server.granted == [] and server.held == []


def test_nan_wait_gets_400(server: PoolServer) -> None:
    raw = b'{"runId": "r1", "agent": "main", "waitSeconds": NaN}'  # Python's JSON reads NaN
    r = httpx.post(f"{server.url}/pool/acquire", content=raw, headers=AUTH)
    assert r.status_code == 400 and "not nan" in r.json()["error"], r.text
    ok = httpx.post(
        f"{server.url}/pool/acquire",
        json={"runId": "r1", "agent": "main", "waitSeconds": 0},
        headers=AUTH,
    )
    assert ok.status_code == 200 and server.granted == ["r1"]


def test_a_short_pool_token_is_refused_in_one_paragraph(tmp_path: Path) -> None:
    config = write_config(tmp_path, demo_config(tmp_path))
    res = cli(orchestrate, "pool", "serve", "--port", "0", "--config", str(config),
              ORCH_POOL_TOKEN="short")  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "has 5 characters" in res.output and "at least 16" in res.output
    assert "short" not in res.output.replace("shorter", "")
    assert res.output.startswith("error:") and "Traceback" not in res.output
