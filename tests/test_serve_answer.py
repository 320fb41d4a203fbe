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
