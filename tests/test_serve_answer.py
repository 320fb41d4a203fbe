"""Questions from agents through `orchestrate serve`: answered by API, the run continues."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servekit import Served


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = Served(tmp_path_factory.mktemp("serveanswer")).start()
    try:
        yield served
    finally:
        served.stop()


def test_a_step_asks_and_an_api_answer_continues_the_run(srv: Served) -> None:
    with srv.client("alice") as alice, srv.client("bob") as bob, srv.client("reader") as reader:
        run_id = alice.post("/v1/runs", json={"workflow": "ask"}).json()["runId"]
        doc = alice.get(f"/v1/runs/{run_id}/wait", params={"until": "parked", "timeout": 60})
        parked = doc.json()
        assert parked["done"] and parked["status"] == "waiting_input"
        research = parked["steps"]["research"]
        assert research["question"]["text"] == "Which temperature range?"
        assert research["waiting"] == "asks a question: answer it"
        r = reader.post(f"/v1/runs/{run_id}/steps/research/answer", json={"text": "0-50 °C"})
        assert r.status_code == 403
        r = bob.post(f"/v1/runs/{run_id}/steps/review/answer", json={"text": "x"})
        assert r.status_code == 409 and "is not waiting for an answer" in r.json()["detail"]
        r = bob.post(f"/v1/runs/{run_id}/steps/research/answer", json={"text": ""})
        assert r.status_code == 400
        r = bob.post(f"/v1/runs/{run_id}/steps/research/answer", json={"text": "0-50 °C"})
        assert r.status_code == 200 and r.json()["answer"]["by"] == "bob"
        done = alice.get(f"/v1/runs/{run_id}/wait", params={"timeout": 60}).json()
        assert done["status"] == "complete", done
        research = done["steps"]["research"]
        assert research["handoff"]["result"] == "CTE over 0-50 °C"
        assert "0-50 °C" in done["steps"]["review"]["task"]


def test_a_delegation_asks_and_its_answer_continues_it(srv: Served) -> None:
    with srv.client("alice") as alice:
        body = {"target": "asker", "task": "Find CTE of ULE", "caller": "manager"}
        run_id = alice.post("/v1/delegations", json=body).json()["runId"]
        asked = alice.get(f"/v1/delegations/{run_id}/wait", params={"timeout": 60}).json()
        assert asked["status"] == "blocked"
        assert asked["record"]["question"] == "Which temperature range?"
        r = alice.post(f"/v1/delegations/{run_id}/answer", json={"text": "0-50 °C"})
        assert r.status_code == 201, r.text
        new = r.json()["runId"]
        assert new == f"{run_id}-a1" and r.json()["answers"] == run_id
        done = alice.get(f"/v1/delegations/{new}/wait", params={"timeout": 60}).json()
        assert done["status"] == "complete" and done["record"]["result"] == "CTE over 0-50 °C"
        assert done["record"]["envelope"]["labels"]["answered_by"] == "alice"
        again = alice.post(f"/v1/delegations/{run_id}/answer", json={"text": "twice"})
        assert again.status_code == 409 and f"continued as `{new}`" in again.json()["detail"]


def test_workflow_answer_through_the_server(srv: Served) -> None:
    import json

    from click.testing import CliRunner

    from engine.cli.workflow import workflow
    from tests.servekit import GATEWAY_TOKEN, TOKENS

    env = {
        "ORCH_TEST_GW_TOKEN": GATEWAY_TOKEN,
        "ORCH_SERVER": srv.url,
        "ORCH_SERVER_TOKEN": TOKENS["bob"][1],
    }

    def cli(*args: str, **more: str) -> object:
        return CliRunner(env={**env, **more}).invoke(workflow, list(args), catch_exceptions=False)

    with srv.client("alice") as alice:
        run_id = alice.post("/v1/runs", json={"workflow": "ask"}).json()["runId"]
        parked = alice.get(f"/v1/runs/{run_id}/wait", params={"until": "parked", "timeout": 60})
        assert parked.json()["status"] == "waiting_input"
    res = cli("answer", run_id, "research", "0-50 °C", ORCH_SERVER_TOKEN=TOKENS["reader"][1])
    assert res.exit_code == 5 and "has the `read` role" in res.stderr  # type: ignore[attr-defined]
    res = cli("answer", run_id, "review", "x")
    assert res.exit_code == 2 and "is not waiting for an answer" in res.stderr  # type: ignore[attr-defined]
    res = cli("answer", run_id, "research", "0-50 °C")
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    assert res.stdout.strip() == (  # type: ignore[attr-defined]
        f"answered `research`; the server continues run {run_id}."
    )
    with srv.client("alice") as alice:
        done = alice.get(f"/v1/runs/{run_id}/wait", params={"timeout": 60}).json()
        events = alice.get(f"/v1/runs/{run_id}/events").json()["events"]
    assert done["status"] == "complete"
    answered = [e for e in events if e["event"] == "step_answered"]
    assert [(e["step"], e["answer"], e["by"]) for e in answered] == [("research", "0-50 °C", "bob")]
    status = json.loads(cli("status", run_id, "--json").stdout)  # type: ignore[attr-defined]
    assert status["status"] == "complete"


def test_orchestrate_answer_through_the_server(srv: Served) -> None:
    import json

    from click.testing import CliRunner

    from engine.cli import orchestrate
    from tests.servekit import GATEWAY_TOKEN, TOKENS

    env = {
        "ORCH_TEST_GW_TOKEN": GATEWAY_TOKEN,
        "ORCH_SERVER": srv.url,
        "ORCH_SERVER_TOKEN": TOKENS["carol"][1],
    }
    runner = CliRunner(env=env)
    asked = runner.invoke(
        orchestrate, ["asker", "Find CTE of Zerodur", "--caller", "manager", "--json"]
    )
    record = json.loads(asked.stdout)
    assert record["status"] == "blocked" and record["question"] == "Which temperature range?"
    run_id = record["runId"]
    res = runner.invoke(orchestrate, ["answer", run_id, "0-50 °C", "--json"])
    assert res.exit_code == 0, res.output
    done = json.loads(res.stdout)
    assert done["status"] == "complete" and done["result"] == "CTE over 0-50 °C"
    assert done["envelope"]["labels"]["answered_by"] == "carol"
    again = runner.invoke(orchestrate, ["answer", run_id, "twice"])
    assert again.exit_code == 2 and "was answered already" in again.stderr


def test_a_childs_question_escalates_to_its_parent(srv: Served) -> None:
    """Seed 003's reply-parent: a sub-delegation that asks shows up on its parent's feed
    and in its tree; the parent answers it through the API."""
    from tests.servekit import sse

    with srv.client("alice") as alice:
        cursor = alice.get("/v1/events").json()["cursor"]
        body = {"target": "tech-lead", "task": "plan the CTE survey", "caller": "manager"}
        r = alice.post("/v1/delegations", json=body)
        assert r.status_code == 201, r.text
        parent = r.json()["runId"]
        assert alice.get(f"/v1/delegations/{parent}/wait", params={"timeout": 60}).json()["done"]
        body = {
            "target": "asker",
            "task": "Find CTE of ULE",
            "caller": "tech-lead",  # the agent doing the parent run delegates a part
            "parent_run_id": parent,
        }
        r = alice.post("/v1/delegations", json=body)
        assert r.status_code == 201, r.text
        child = r.json()["runId"]
        (escalated,) = (
            ev
            for ev in sse(
                alice,
                f"/v1/events/stream?after={cursor}",
                until=lambda e: e["event"] == "child_escalated",
            )
            if ev["event"] == "child_escalated"
        )
        assert escalated["runId"] == parent and escalated["child"] == child
        assert escalated["request_kind"] == "question"
        assert escalated["question"] == "Which temperature range?"
        tree = alice.get(f"/v1/delegations/{parent}/tree").json()["tree"]
        (node,) = tree["children"]
        assert node["run_id"] == child and node["outcome"] == "blocked"
        assert node["question"] == "Which temperature range?"
        new = alice.post(f"/v1/delegations/{child}/answer", json={"text": "0-50 °C"})
        done = alice.get(f"/v1/delegations/{new.json()['runId']}/wait", params={"timeout": 60})
        assert done.json()["record"]["result"] == "CTE over 0-50 °C"
        tree = alice.get(f"/v1/delegations/{parent}/tree").json()["tree"]
        assert {n["run_id"] for n in tree["children"]} == {child, f"{child}-a1"}
        assert alice.get("/v1/delegations/orch-nope/tree").status_code == 404
