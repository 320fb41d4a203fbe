"""A run whose inputs hold a secret continues after a gate or a restart.

``run.json`` keeps such an input masked (``***``); the fingerprint is a keyed hash of the
real values (a random salt per run), so a resume never compares against the masked text.
The process that started the run holds the real values and continues with them; a resume
without them asks for them (``workflow resume RUN -i NAME=VALUE``) instead of saying the
inputs changed, and a server restarted meanwhile keeps such a run parked, saying what to
give, until the value is given again. Real parts: the embedded gateway and demo agents
(CLI), a real ``orchestrate serve`` with a gateway in this process (server).
"""

from __future__ import annotations

import hashlib
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from engine.cli import workflow
from engine.runs import read_events
from tests.helpers import demo_config, wait_for, write_config
from tests.servekit import TOKENS, Served, cli, server_env

REVIEW_GATE = """\
name: review-gate
caller: manager
inputs:
  query: {required: true}
steps:
  - id: research
    agent: webster
    task: "{{ inputs.query }}"
  - id: review
    agent: tech-lead
    depends_on: [research]
    gate:
      prompt: "Send the research for review?"
    task: "review: {{ steps.research.result }}"
"""

#: Inputs redaction masks, and the part of each that must never be written.
SECRET_INPUTS = {
    "url-password": ("summarise https://bob:hunter2x9@github.com/acme/widgets", "hunter2x9"),
    "bearer": ("call it with Bearer abc123def456ghi", "abc123def456ghi"),
    "api-key": ("use api_key=k3y-0123456789abcdef here", "k3y-0123456789abcdef"),
    "sk-key": ("with sk-proj-abcdefghijklmnop0123 please", "sk-proj-abcdefghijklmnop0123"),
}


@pytest.fixture
def config(tmp_path: Path) -> str:
    own = tmp_path / "wf"
    own.mkdir()
    (own / "review-gate.yaml").write_text(REVIEW_GATE, encoding="utf-8")
    return str(write_config(tmp_path, demo_config(tmp_path, workflow_dirs=[str(own)])))


def _wf(config: str, *args: str, stdin: str | None = None) -> Any:
    return CliRunner().invoke(workflow, [*args, "--config", config], input=stdin)


def _run_dir(tmp_path: Path) -> Path:
    (run,) = (tmp_path / "handoffs" / "workflows").iterdir()
    return run


def _written(run: Path) -> str:
    return (run / "run.json").read_text() + (run / "events.jsonl").read_text()


def test_a_user_name_in_a_url_is_no_secret_and_the_run_resumes(tmp_path: Path, config: str) -> None:
    query = "summarise ssh://git@github.com/acme/widgets"
    res = _wf(config, "run", "review-gate", "-i", f"query={query}", "--non-interactive")
    assert res.exit_code == 3, res.output
    run = _run_dir(tmp_path)
    meta = json.loads((run / "run.json").read_text())
    assert meta["inputs"] == {"query": query} and "secret_inputs" not in meta
    assert _wf(config, "approve", run.name, "review").exit_code == 0
    res = _wf(config, "resume", run.name)
    assert res.exit_code == 0, res.output
    assert "summarise ssh://git@github.com/acme/widgets" in (run / "research.json").read_text()


@pytest.mark.parametrize("case", list(SECRET_INPUTS))
def test_a_secret_input_is_asked_for_again_never_called_changed(
    tmp_path: Path, config: str, case: str
) -> None:
    query, secret = SECRET_INPUTS[case]
    res = _wf(config, "run", "review-gate", "-i", f"query={query}", "--non-interactive")
    assert res.exit_code == 3, res.output
    run = _run_dir(tmp_path)
    meta = json.loads((run / "run.json").read_text())
    assert "***" in meta["inputs"]["query"] and set(meta["secret_inputs"]) == {"query"}
    salt = meta["input_salt"]
    assert len(salt) == 32 and secret not in _written(run)
    # not a bare hash of the inputs, which a short secret could be guessed from
    bare = hashlib.sha256(json.dumps({"query": query}, sort_keys=True).encode()).hexdigest()
    assert bare[:16] not in _written(run)
    # the printed hints give the secret input again (`-i query=VALUE`), never the value
    assert f"workflow approve {run.name} review --config {config} && workflow resume " in (
        res.output
    )
    assert f"workflow resume {run.name} -i query=VALUE --config {config}" in res.output
    approved = _wf(config, "approve", run.name, "review")
    assert approved.exit_code == 0, approved.output
    assert f"workflow resume {run.name} -i query=VALUE --config {config}" in approved.output
    assert secret not in res.output + approved.output

    res = _wf(config, "resume", run.name)
    assert res.exit_code == 2, res.output
    assert "changed" not in res.output
    assert "its input `query` held a secret" in res.output
    assert f"`workflow resume {run.name} -i query=VALUE`" in res.output
    assert "Traceback" not in res.output

    res = _wf(config, "resume", run.name, "-i", "query=not the value it started with")
    assert res.exit_code == 2, res.output
    assert "the value given for input `query` (`-i`) is not the one" in res.output

    res = _wf(config, "resume", run.name, "-i", f"query={query}")
    assert res.exit_code == 0, res.output
    assert "complete" in res.output
    steps = {
        e.get("step") for e in read_events(run / "events.jsonl") if e["event"] == "step_finished"
    }
    assert steps == {"research", "review"}
    assert secret not in _written(run)


def test_a_changed_template_is_still_named_with_a_secret_input(tmp_path: Path, config: str) -> None:
    query, _ = SECRET_INPUTS["bearer"]
    assert (
        _wf(config, "run", "review-gate", "-i", f"query={query}", "--non-interactive").exit_code
        == 3
    )
    run = _run_dir(tmp_path)
    template = tmp_path / "wf" / "review-gate.yaml"
    template.write_text(REVIEW_GATE.replace("Send the research", "Send it"), encoding="utf-8")
    res = _wf(config, "resume", run.name, "-i", f"query={query}")
    assert res.exit_code == 2, res.output
    assert f"the template `{template}`" in res.output and "inputs" not in res.output


def test_an_interactive_run_continues_with_its_secret_inputs(tmp_path: Path, config: str) -> None:
    query, secret = SECRET_INPUTS["url-password"]
    res = _wf(config, "run", "review-gate", "-i", f"query={query}", "--interactive", stdin="y\n")
    assert res.exit_code == 0, res.output
    run = _run_dir(tmp_path)
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"
    assert secret not in _written(run)


# -- through `orchestrate serve` --------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    srv = Served(tmp_path).start()
    try:
        yield srv
    finally:
        srv.stop()
    assert "Traceback" not in "".join(srv.log), "".join(srv.log)


def _stop_server(srv: Served) -> None:
    """Stop the server (SIGTERM, as systemd does) and keep the gateway of this process."""
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGTERM)
    srv.proc.wait(timeout=30)
    srv._drain.join(timeout=30)


def _start(c: httpx.Client, query: str) -> str:
    r = c.post("/v1/runs", json={"workflow": "gate", "inputs": {"query": query}})
    assert r.status_code == 201, r.text
    run_id = str(r.json()["runId"])
    r = c.get(f"/v1/runs/{run_id}/wait", params={"until": "parked", "timeout": 60})
    assert r.json()["status"] == "waiting_approval", r.text
    return run_id


def _end(c: httpx.Client, run_id: str, srv: Served | None = None) -> dict[str, Any]:
    r = c.get(f"/v1/runs/{run_id}/wait", params={"timeout": 60})
    doc: dict[str, Any] = r.json()
    assert doc["done"], (doc, "".join(srv.log) if srv else "")
    return doc


#: A secret the server registered (a client token of its own) and a generic shape.
SERVED_QUERIES = [f"use {TOKENS['carol'][1]} for it", SECRET_INPUTS["bearer"][0]]


@pytest.mark.parametrize("query", SERVED_QUERIES, ids=["registered", "bearer"])
def test_approving_on_the_server_that_started_it_continues_the_run(
    served: Served, query: str
) -> None:
    with served.client("alice") as alice, served.client("bob") as bob:
        run_id = _start(alice, query)
        r = bob.post(f"/v1/runs/{run_id}/steps/review/approve", json={})
        assert r.status_code == 200, r.text
        done = _end(alice, run_id)
    assert done["status"] == "complete", done
    assert done["steps"]["review"]["status"] == "complete"
    run = Path(done["run_dir"])
    secret = query.split()[1] if query.startswith("use") else SECRET_INPUTS["bearer"][1]
    assert secret not in _written(run)


def _waiting_for(c: httpx.Client, run_id: str) -> dict[str, Any]:
    """The run's document once the server has tried to continue it and found it lacks
    the run's secret inputs (``inputs_missing``)."""
    return dict(
        wait_for(
            lambda: (d := c.get(f"/v1/runs/{run_id}").json()).get("inputs_missing") and d,
            f"run {run_id} waiting for its secret inputs",
        )
    )


@pytest.mark.parametrize("how", ["server-cli", "local"])
def test_after_a_restart_an_approval_keeps_the_run_waiting_for_its_secret(
    served: Served, how: str
) -> None:
    query, secret = SECRET_INPUTS["bearer"]
    with served.client("alice") as alice:
        run_id = _start(alice, query)
    _stop_server(served)
    served.start()
    env = server_env(served)
    with served.client("alice") as alice, served.client("bob") as bob:
        r = bob.post(f"/v1/runs/{run_id}/steps/review/approve", json={})
        assert r.status_code == 200, r.text
        doc = _waiting_for(alice, run_id)
        # parked, the approval kept, never ended
        assert doc["status"] == "waiting_approval" and doc["inputs_missing"] == ["query"]
        assert doc["steps"]["review"]["status"] == "pending"
        assert "waits for its input `query`: it held a secret" in doc["error"]
        assert f"workflow resume {run_id} -i query=VALUE --server URL" in doc["error"]
        assert f"POST /v1/runs/{run_id}/resume" in doc["error"]
        run = Path(doc["run_dir"])
        kinds = [e["event"] for e in read_events(run / "events.jsonl")]
        assert "run_finished" not in kinds and kinds[-1] == "gate_decided", kinds
        # a resume without the value is refused at once, naming what to give
        r = alice.post(f"/v1/runs/{run_id}/resume", json={})
        assert r.status_code == 400 and "-i query=VALUE" in r.text, r.text
        res = cli(workflow, "resume", run_id, **env)
        assert res.exit_code == 2, res.output
        assert f"workflow resume {run_id} -i query=VALUE" in res.output
    # a restart keeps it waiting, and tries nothing
    _stop_server(served)
    served.start()
    env = server_env(served)
    with served.client("alice") as alice:
        doc = _waiting_for(alice, run_id)
        assert doc["status"] == "waiting_approval", doc
        assert "run_finished" not in [e["event"] for e in read_events(run / "events.jsonl")]
        # the value given again continues it where it stopped
        if how == "server-cli":
            args = ("resume", run_id, "-i", f"query={query}", "--json")
            res = cli(workflow, *args, **env)
            assert res.exit_code == 0, res.output
            assert json.loads(res.stdout)["status"] == "complete", res.stdout
        else:
            args = ("resume", run_id, "-i", f"query={query}", "--config", str(served.path))
            res = cli(workflow, *args)
            assert res.exit_code == 0, res.output
        assert secret not in res.output
        done = _end(alice, run_id, served)
        assert done["status"] == "complete" and not done.get("inputs_missing"), done
    events = read_events(run / "events.jsonl")
    kinds = [e["event"] for e in events]
    assert kinds.count("step_started") == 2 and kinds[-1] == "run_finished"
    assert events[-1]["status"] == "complete"
    assert [(e["step"], e["by"]) for e in events if e["event"] == "gate_decided"] == [
        ("review", "bob")
    ]
    assert secret not in _written(run)
    assert secret not in "".join(served.log)


def test_after_a_restart_a_rejection_ends_the_run_failed_as_usual(served: Served) -> None:
    query, secret = SECRET_INPUTS["sk-key"]
    with served.client("alice") as alice:
        run_id = _start(alice, query)
    _stop_server(served)
    served.start()
    with served.client("alice") as alice, served.client("bob") as bob:
        r = bob.post(f"/v1/runs/{run_id}/steps/review/reject", json={"reason": "no"})
        assert r.status_code == 200, r.text
        done = _end(alice, run_id, served)
    assert done["status"] == "failed", done
    assert done["steps"]["review"]["status"] == "rejected"
    run = Path(done["run_dir"])
    last = read_events(run / "events.jsonl")[-1]
    assert last["event"] == "run_finished" and "inputs_missing" not in last
    assert secret not in _written(run)


def test_force_resumes_with_the_masked_text(tmp_path: Path, config: str) -> None:
    query, secret = SECRET_INPUTS["api-key"]
    res = _wf(config, "run", "review-gate", "-i", f"query={query}", "--non-interactive")
    assert res.exit_code == 3, res.output
    run = _run_dir(tmp_path)
    assert _wf(config, "approve", run.name, "review").exit_code == 0
    res = _wf(config, "resume", run.name, "--force")
    assert res.exit_code == 0, res.output
    resumed = [e for e in read_events(run / "events.jsonl") if e["event"] == "run_resumed"]
    assert resumed[-1]["changed"] == ["inputs"]
    assert secret not in _written(run)


PARENT = """\
name: parent
caller: manager
inputs:
  query: {required: true}
steps:
  - id: sub
    workflow: review-gate.yaml
    inputs:
      query: "{{ inputs.query }}"
"""


def test_a_parent_given_its_secret_again_resumes_its_child_with_it(
    tmp_path: Path, config: str
) -> None:
    (tmp_path / "wf" / "parent.yaml").write_text(PARENT, encoding="utf-8")
    query, secret = SECRET_INPUTS["url-password"]
    res = _wf(config, "run", "parent", "-i", f"query={query}", "--non-interactive")
    assert res.exit_code == 3, res.output
    runs = tmp_path / "handoffs" / "workflows"
    metas = {p.name: json.loads((p / "run.json").read_text()) for p in runs.iterdir()}
    (parent,) = [r for r, m in metas.items() if m["workflow"] == "parent"]
    (child,) = [r for r, m in metas.items() if m["workflow"] == "review-gate"]
    assert set(metas[child]["secret_inputs"]) == {"query"}
    assert _wf(config, "approve", child, "review").exit_code == 0
    res = _wf(config, "resume", parent)
    assert res.exit_code == 2 and "its input `query` held a secret" in res.output, res.output
    res = _wf(config, "resume", parent, "-i", f"query={query}")
    assert res.exit_code == 0, res.output
    for run in (parent, child):
        assert json.loads((runs / run / "summary.json").read_text())["status"] == "complete"
        assert secret not in _written(runs / run)
