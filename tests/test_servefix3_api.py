"""Numbers and flags in request bodies are JSON numbers and booleans, not look-alikes.

A real `orchestrate serve` on 127.0.0.1: ``{"timeout": true}`` was taken as 1 s and
``{"timeout": "120"}`` as 120 s; ``{"approve_all": "yes"}`` approved every gate. Each is
refused with 400 (exit 2) naming the field and the value, and nothing starts.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servekit import Served, served_module


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from served_module(tmp_path_factory, "servefix3-api")


@pytest.mark.parametrize(
    ("value", "shown"),
    [(True, "true"), ("120", "'120'"), (False, "false"), ([5], "[5]")],
    ids=["true", "string", "false", "list"],
)
def test_a_delegation_timeout_must_be_a_number(srv: Served, value: object, shown: str) -> None:
    body = {"target": "webster", "task": "CTE", "caller": "manager", "timeout": value}
    owned = srv.tmp / "handoffs" / "serve"
    before = set(owned.glob("*.json"))
    with srv.client("alice") as c:
        r = c.post("/v1/delegations", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["exit_code"] == 2
    assert f"`timeout`: must be a number, not {shown}" in r.json()["detail"], r.text
    assert set(owned.glob("*.json")) == before  # nothing started


def test_a_whole_number_timeout_is_taken(srv: Served) -> None:
    body = {"target": "webster", "task": "CTE", "caller": "manager", "timeout": 30}
    with srv.client("alice") as c:
        r = c.post("/v1/delegations", json=body)
        assert r.status_code == 201, r.text
        doc = c.get(f"/v1/delegations/{r.json()['runId']}/wait", params={"timeout": 60}).json()
    assert doc["done"] and doc["status"] == "complete", doc
    assert doc["record"]["envelope"]["timeout_s"] == 30


@pytest.mark.parametrize("value", ["yes", 1], ids=["string", "number"])
def test_approve_all_must_be_a_boolean(srv: Served, value: object) -> None:
    owned = srv.tmp / "handoffs" / "serve"
    before = set(owned.glob("*.json"))
    body = {"workflow": "gate", "inputs": {"query": "CTE"}, "approve_all": value}
    with srv.client("alice") as c:
        r = c.post("/v1/runs", json=body)
    assert r.status_code == 400, r.text
    assert "`approve_all`: must be true or false" in r.json()["detail"], r.text
    assert set(owned.glob("*.json")) == before
