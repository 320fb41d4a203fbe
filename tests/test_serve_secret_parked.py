"""A run with a declared secret input that `orchestrate serve` does not hold stays parked.

A `workflow run` on the server's host starts the run and parks at a question; the answer
given through the server is kept and the run waits for its secret input (never ended
``failed``), a resume without it is refused at once, and giving it again (``--server``
or locally) continues the run with the answer. The hints printed along the way carry
``-i token=VALUE``. Real parts: a real server, a gateway in this process, the asking
command agent of tests/peers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from engine.cli import workflow
from engine.runs import read_events
from tests.helpers import wait_for, write_config
from tests.servekit import Served, cli, server_env
from tests.test_secret_inputs import _stop_server

TOKEN = "tok-VALUE-81f2c0d9e4"

ASKFLOW = """\
name: askflow
caller: manager
inputs:
  token: {secret: true, required: true}
steps:
  - id: ask
    agent: asker
    task: Find CTE of ULE
"""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    srv = Served(tmp_path)
    own = tmp_path / "own-wf"
    own.mkdir()
    (own / "askflow.yaml").write_text(ASKFLOW, encoding="utf-8")
    raw = yaml.safe_load(srv.path.read_text())
    raw["workflow_dirs"] = [*raw["workflow_dirs"], str(own)]
    write_config(tmp_path, raw)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
    assert "Traceback" not in "".join(srv.log), "".join(srv.log)


def _local(srv: Served, *args: str) -> object:
    return cli(workflow, *args, "--config", str(srv.path))


def _parked(srv: Served) -> tuple[str, Path]:
    """Start askflow with the CLI; return its run id and directory once it parks."""
    res = _local(srv, "run", "askflow", "-i", f"token={TOKEN}", "--non-interactive")
    assert res.exit_code == 3, res.output  # type: ignore[attr-defined]
    (run,) = (srv.tmp / "handoffs" / "workflows").iterdir()
    out = res.output  # type: ignore[attr-defined]
    assert f'workflow answer {run.name} ask "..."' in out, out
    assert f"workflow resume {run.name} -i token=VALUE" in out, out
    assert TOKEN not in out
    return run.name, run


@pytest.mark.parametrize("how", ["server-cli", "api", "local"])
def test_an_answer_through_the_server_waits_for_the_secret_input(
    served: Served, how: str
) -> None:
    run_id, run = _parked(served)
    env = server_env(served)
    res = cli(workflow, "answer", run_id, "ask", "0-50", **env)
    assert res.exit_code == 0, res.output
    with served.client("alice") as alice:
        doc = wait_for(
            lambda: (d := alice.get(f"/v1/runs/{run_id}").json()).get("inputs_missing") and d,
            "the run waiting for its secret input",
        )
        assert doc["status"] == "waiting_input" and doc["inputs_missing"] == ["token"], doc
        assert f"workflow resume {run_id} -i token=VALUE --server URL" in doc["error"]
        events = read_events(run / "events.jsonl")
        assert events[-1]["event"] == "step_answered", events[-1]
        assert "run_finished" not in [e["event"] for e in events]
        # without the value: refused at once, nothing changes
        res = cli(workflow, "resume", run_id, **env)
        assert res.exit_code == 2, res.output
        assert f"workflow resume {run_id} -i token=VALUE" in res.output
        r = alice.post(f"/v1/runs/{run_id}/resume", json={"inputs": {}})
        assert r.status_code == 400 and "waits for its input `token`" in r.text, r.text
        assert read_events(run / "events.jsonl") == events
        if how == "server-cli":
            res = cli(workflow, "resume", run_id, "-i", f"token={TOKEN}", "--json", **env)
            assert res.exit_code == 0, res.output
            assert json.loads(res.stdout)["status"] == "complete", res.stdout
            assert TOKEN not in res.output
        elif how == "api":
            r = alice.post(f"/v1/runs/{run_id}/resume", json={"inputs": {"token": TOKEN}})
            assert r.status_code == 200, r.text
        else:
            res = _local(served, "resume", run_id, "-i", f"token={TOKEN}")
            assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
        done = alice.get(f"/v1/runs/{run_id}/wait", params={"timeout": 60}).json()
        assert done["done"] and done["status"] == "complete", done
        assert not done.get("inputs_missing") and not done["error"], done
        assert done["steps"]["ask"]["handoff"]["result"] == "CTE over 0-50", done["steps"]["ask"]
    written = (run / "run.json").read_text() + (run / "events.jsonl").read_text()
    assert TOKEN not in written and TOKEN not in "".join(served.log)


def test_a_resume_without_the_secret_is_refused_and_the_run_survives_a_restart(
    served: Served,
) -> None:
    run_id, run = _parked(served)
    env = server_env(served)
    res = cli(workflow, "resume", run_id, **env)  # nothing answered yet: refused at once
    assert res.exit_code == 2, res.output
    assert "waits for its input `token`" in res.output
    res = cli(workflow, "answer", run_id, "ask", "0-50", **env)
    assert res.exit_code == 0, res.output
    with served.client("alice") as alice:
        wait_for(
            lambda: alice.get(f"/v1/runs/{run_id}").json().get("inputs_missing"),
            "the run waiting for its secret input",
        )
    _stop_server(served)
    served.start()
    env = server_env(served)
    with served.client("alice") as alice:
        doc = wait_for(
            lambda: (d := alice.get(f"/v1/runs/{run_id}").json()).get("inputs_missing") and d,
            "the run still waiting after a restart",
        )
        assert doc["status"] == "waiting_input", doc
        assert "run_finished" not in [e["event"] for e in read_events(run / "events.jsonl")]
    res = cli(workflow, "resume", run_id, "-i", f"token={TOKEN}", "--json", **env)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["status"] == "complete", res.stdout


def test_the_local_hints_give_the_secret_input_again(served: Served) -> None:
    run_id, run = _parked(served)
    res = _local(served, "status", run_id)
    assert f"workflow resume {run_id} -i token=VALUE --config" in res.output  # type: ignore[attr-defined]
    res = _local(served, "answer", run_id, "ask", "0-50")
    out = res.output  # type: ignore[attr-defined]
    assert res.exit_code == 0, out  # type: ignore[attr-defined]
    assert f"continue with: workflow resume {run_id} -i token=VALUE --config" in out, out
    res = _local(served, "status", run_id, "--json")
    doc = json.loads(res.stdout)  # type: ignore[attr-defined]
    assert doc["next"].startswith(f"workflow resume {run_id} -i token=VALUE"), doc
    waiting = doc["steps"]["ask"]["waiting"]
    assert f"continue with `workflow resume {run_id} -i token=VALUE --config" in waiting
    # the hint, run as printed with the value filled in, continues the run
    res = _local(served, "resume", run_id, "-i", f"token={TOKEN}")
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    assert read_events(run / "events.jsonl")[-1]["status"] == "complete"


def test_a_timed_gate_waits_for_the_secret_input_then_takes_its_default(
    served: Served,
) -> None:
    query = "call it with Bearer abc123def456ghi"  # a secret by its shape: kept masked
    with served.client("alice") as alice:
        r = alice.post("/v1/runs", json={"workflow": "timed-gate", "inputs": {"query": query}})
        assert r.status_code == 201, r.text
        run_id = r.json()["runId"]
        doc = alice.get(f"/v1/runs/{run_id}/wait", params={"until": "parked", "timeout": 60})
        assert doc.json()["status"] == "waiting_approval", doc.text
    _stop_server(served)
    served.start()
    with served.client("alice") as alice:
        # the gate clock tries to take the default, and finds the secret missing
        doc = wait_for(
            lambda: (d := alice.get(f"/v1/runs/{run_id}").json()).get("inputs_missing") and d,
            "the timed gate's run waiting for its secret input",
        )
        assert doc["status"] == "waiting_approval", doc
        run = Path(doc["run_dir"])
        kinds = [e["event"] for e in read_events(run / "events.jsonl")]
        assert "gate_decided" not in kinds and "run_finished" not in kinds, kinds
        r = alice.post(f"/v1/runs/{run_id}/resume", json={"inputs": {"query": query}})
        assert r.status_code == 200, r.text
        done = alice.get(f"/v1/runs/{run_id}/wait", params={"timeout": 60}).json()
        assert done["done"], done
    decided = [
        (e["step"], e["decision"], e["by"])
        for e in read_events(run / "events.jsonl")
        if e["event"] == "gate_decided"
    ]
    assert decided == [("review", "approved", "timeout"), ("publish", "rejected", "timeout")]
    assert done["steps"]["review"]["status"] == "complete", done
    assert "abc123def456ghi" not in (run / "events.jsonl").read_text()
    # tried once, then left waiting: the gate clock does not kick it again and again
    assert "".join(served.log).count("waits for its input `query`") == 1, served.log


def test_a_second_answer_through_the_server_needs_replace(served: Served) -> None:
    """The server keeps the first answer of a run it cannot continue yet; a second one is
    refused (exit 2, HTTP 4xx) unless `--replace` (`"replace": true`) is given, as locally."""
    run_id, run = _parked(served)
    env = server_env(served)
    res = cli(workflow, "answer", run_id, "ask", "0-50", **env)
    assert res.exit_code == 0, res.output
    with served.client("alice") as alice:
        wait_for(
            lambda: alice.get(f"/v1/runs/{run_id}").json().get("inputs_missing"),
            "the run waiting for its secret input",
        )
        again = cli(workflow, "answer", run_id, "ask", "10-20", **env)
        assert again.exit_code == 2, again.output
        assert "0-50" in again.output, again.output
        r = alice.post(f"/v1/runs/{run_id}/steps/ask/answer", json={"text": "10-20"})
        assert 400 <= r.status_code < 500 and "0-50" in r.text, r.text
        answered = [e for e in read_events(run / "events.jsonl") if e["event"] == "step_answered"]
        assert [e["answer"] for e in answered] == ["0-50"]
        res = cli(workflow, "answer", run_id, "ask", "10-20", "--replace", **env)
        assert res.exit_code == 0, res.output
        answered = [e for e in read_events(run / "events.jsonl") if e["event"] == "step_answered"]
        assert [e["answer"] for e in answered] == ["0-50", "10-20"]
