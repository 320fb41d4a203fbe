"""`orchestrate serve` and its `--server` clients against hostile or careless values.

One real server on 127.0.0.1 (``self_approval: false``): run ids and step names that
would walk the URL to another run, pre-approvals the starter could not give later,
numbers beyond the documented bounds, unknown runs' events and overlong keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from engine.cli import orchestrate, workflow
from tests.servekit import Served, cli, server_env


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = Served(tmp_path_factory.mktemp("servefix2"), self_approval=False).start()
    try:
        yield served
    finally:
        served.stop()
    assert "Traceback" not in "".join(served.log), "".join(served.log)


def _parked(c: httpx.Client, workflow_name: str = "gate") -> str:
    r = c.post("/v1/runs", json={"workflow": workflow_name, "inputs": {"query": "CTE"}})
    assert r.status_code == 201, r.text
    run_id: str = r.json()["runId"]
    doc = c.get(f"/v1/runs/{run_id}/wait", params={"until": "parked", "timeout": 60}).json()
    assert doc["status"] == "waiting_approval", doc
    return run_id


def _status(c: httpx.Client, run_id: str) -> tuple[str, str]:
    doc = c.get(f"/v1/runs/{run_id}").json()
    return doc["status"], doc["steps"]["review"]["status"]


# -- 1. ids and step names become one URL segment each, checked first -------------------


@pytest.mark.parametrize(
    ("group", "args", "value", "what"),
    [
        (workflow, ["approve", "{r1}", "x/../../../{r2}/steps/review"], "x/../../../{r2}", "step"),
        (
            workflow,
            ["reject", "{r1}", "x/../../../{r2}/steps/review", "--reason", "no"],
            "x/",
            "step",
        ),
        (workflow, ["cancel", "does-not-exist/../{r1}"], "does-not-exist/../{r1}", "run id"),
        (workflow, ["status", "foo/../{r2}"], "foo/../{r2}", "run id"),
        (workflow, ["cancel", "../../etc"], "../../etc", "run id"),
        (orchestrate, ["answer", "a/../{r2}", "hi"], "a/../{r2}", "run id"),
        (orchestrate, ["tree", "a/../{r2}"], "a/../{r2}", "run id"),
    ],
    ids=["approve", "reject", "cancel", "status", "etc", "answer", "tree"],
)
def test_ids_that_walk_the_url_are_refused_locally(
    srv: Served, group: Any, args: list[str], value: str, what: str
) -> None:
    with srv.client("alice") as c:
        r1, r2 = _parked(c), _parked(c)
        argv = [a.format(r1=r1, r2=r2) for a in args]
        res = cli(group, *argv, **server_env(srv, "bob"))
        assert res.exit_code == 2, res.output
        assert f"{what} `{value.format(r1=r1, r2=r2)}" in res.output, res.output
        assert "is not allowed" in res.output and "Not Found" not in res.output
        # neither run moved
        assert _status(c, r1) == ("waiting_approval", "waiting_approval")
        assert _status(c, r2) == ("waiting_approval", "waiting_approval")


# -- 2. approvals given at the start obey the gate rules of later decisions ---------------


def _runs(c: httpx.Client) -> set[str]:
    return {row["runId"] for row in c.get("/v1/runs", params={"limit": 500}).json()["runs"]}


@pytest.mark.parametrize(
    ("who", "body", "words"),
    [
        (
            "alice",
            {"workflow": "gate", "inputs": {"query": "x"}, "approve_all": True},
            "`approve_all` refused: it would decide the gate of `review`, and `alice` started "
            "the run of `gate` and may not decide its own gate (`serve.self_approval: false`)",
        ),
        (
            "alice",
            {"workflow": "guarded", "approve": ["publish"]},
            "`approve: [publish]` refused: it would decide the gate of `publish`, and `alice` "
            "may not decide the gate of `publish` in the run of `guarded`: its approvers are "
            "`carol`.",
        ),
        (
            "carol",
            {"workflow": "guarded", "approve_all": True},
            "`carol` started the run of `guarded` and may not decide its own gate",
        ),
    ],
    ids=["self-approval", "approvers", "approver-starts"],
)
def test_approvals_at_the_start_follow_the_gate_rules(
    srv: Served, who: str, body: dict[str, Any], words: str
) -> None:
    with srv.client(who) as c:
        before = _runs(c)
        r = c.post("/v1/runs", json=body)
        assert r.status_code == 403, r.text
        assert words in r.json()["detail"] and r.json()["exit_code"] == 5, r.text
        assert _runs(c) == before  # nothing started


def test_workflow_run_approve_through_the_server_is_refused(srv: Served) -> None:
    res = cli(workflow, "run", "gate", "-i", "query=x", "--approve", "review", **server_env(srv))
    assert res.exit_code == 5, res.output
    assert "`approve: [review]` refused" in res.output
    assert "may not decide its own gate (`serve.self_approval: false`)" in res.output


# -- 4. numbers in a body keep the CLI's bounds -----------------------------------------


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ('{"timeout": 1e20}', "`timeout`: Input should be less than or equal to 604800"),
        ('{"timeout": 604801}', "`timeout`: Input should be less than or equal to 604800"),
        ('{"timeout": 0}', "`timeout`: Input should be greater than 0"),
        ('{"timeout": NaN}', "`timeout`"),
        ('{"timeout": Infinity}', "`timeout`"),
    ],
    ids=["1e20", "week-and-a-second", "zero", "nan", "inf"],
)
def test_a_delegation_timeout_beyond_a_week_is_refused(srv: Served, raw: str, words: str) -> None:
    body = raw[:-1] + ', "target": "webster", "task": "CTE", "caller": "manager"}'
    owned = srv.tmp / "handoffs" / "serve"
    before = set(owned.glob("orch-*.json"))
    with srv.client("alice") as c:
        r = c.post("/v1/delegations", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, r.text
        assert r.json()["exit_code"] == 2 and words in r.json()["detail"], r.text
    assert set(owned.glob("orch-*.json")) == before  # nothing started


def test_a_delegation_timeout_of_a_week_is_taken(srv: Served) -> None:
    body = {"target": "webster", "task": "CTE", "caller": "manager", "timeout": 604800}
    with srv.client("alice") as c:
        r = c.post("/v1/delegations", json=body)
        assert r.status_code == 201, r.text
        run_id = r.json()["runId"]
        doc = c.get(f"/v1/delegations/{run_id}/wait", params={"timeout": 60}).json()
        assert doc["done"] and doc["status"] == "complete", doc


# -- 5. unknown runs' events, overlong keys ---------------------------------------------


def test_events_of_an_unknown_run_are_404(srv: Served) -> None:
    with srv.client("alice") as c:
        r = c.get("/v1/runs/wf-20260101T000000-00000000/events")
        assert r.status_code == 404, r.text
        assert "no workflow run `wf-20260101T000000-00000000`" in r.json()["detail"]
        known = _parked(c)
        assert c.get(f"/v1/runs/{known}/events").json()["events"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/runs", {"workflow": "gate", "inputs": {"query": "x"}}),
        ("/v1/delegations", {"target": "webster", "task": "CTE", "caller": "manager"}),
    ],
    ids=["runs", "delegations"],
)
@pytest.mark.parametrize("size", [10_000, 150], ids=["unusable", "conflict"])
def test_an_overlong_idempotency_key_is_quoted_short(
    srv: Served, path: str, body: dict[str, Any], size: int
) -> None:
    key = path[-4:] + "k" * (size - 4)
    with srv.client("alice") as c:
        if size <= 200:  # a usable key, reused for another request: 409 names it
            assert c.post(path, json=body, headers={"Idempotency-Key": key}).status_code == 201
            changed = {"task": "other"} if "task" in body else {"inputs": {"query": "y"}}
            body = {**body, **changed}
        r = c.post(path, json=body, headers={"Idempotency-Key": key})
        assert r.status_code in (400, 409), r.text
        detail = r.json()["detail"]
        assert "k" * 81 not in detail, detail
        assert f"idempotency key '{key[:79]}" in detail and f"({size:,} characters)" in detail
