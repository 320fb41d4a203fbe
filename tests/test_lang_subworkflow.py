"""Sub-workflows: a step that runs another workflow as a child run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.config import Config, load_config
from engine.delegate import open_delegator
from engine.errors import WorkflowError
from engine.planview import dry_run_text, graph_text
from engine.runner import RunOptions, RunState, WorkflowRunner, prepare
from engine.runs import replay_run, run_status
from engine.runs.admin import cancel_run
from tests.helpers import demo_config, write_config

CHILD = {
    "name": "child",
    "caller": "manager",
    "inputs": {"mats": {"required": True}, "depth": {"default": "quick"}},
    "steps": [{"id": "look", "agent": "webster", "task": "Find {{ inputs.mats }}"}],
    "outputs": {"summary": "{{ steps.look.result }}"},
}


def _parent(**step: Any) -> dict[str, Any]:
    sub = {"id": "survey", "workflow": "child.yaml", "inputs": {"mats": "{{ inputs.m }}"}}
    sub.update(step)
    return {
        "name": "parent",
        "caller": "manager",
        "inputs": {"m": {"default": "Zerodur, ULE"}},
        "steps": [
            sub,
            {
                "id": "rank",
                "agent": "tech-lead",
                "depends_on": ["survey"],
                "task": "Rank {{ steps.survey.data.summary }}",
            },
        ],
        "outputs": {"ranking": "{{ steps.rank.result }}"},
    }


def _write(tmp_path: Path, raw: dict[str, Any], name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(raw))
    return path


def _cfg(tmp_path: Path, **extra: Any) -> Config:
    return load_config(write_config(tmp_path, demo_config(tmp_path, **extra)))


def _prepare(tmp_path: Path, parent: dict[str, Any], child: dict[str, Any] = CHILD) -> Any:
    cfg = _cfg(tmp_path)
    _write(tmp_path, child, "child")
    return cfg, prepare(cfg, str(_write(tmp_path, parent, "parent")), {})


def test_the_dry_run_and_graph_show_the_child(tmp_path: Path) -> None:
    _, prepared = _prepare(tmp_path, _parent())
    text = dry_run_text(prepared.plan, prepared.renderer)
    assert f"  - survey: workflow `child` ({tmp_path / 'child.yaml'}), a child run\n" in text
    assert "        | mats = Zerodur, ULE\n" in text
    assert "      child steps: look (webster)\n" in text
    assert "        | Rank <output summary of survey>\n" in text
    assert 'n0["survey<br/>workflow child.yaml"]' in graph_text(prepared.plan, "mermaid")


@pytest.mark.parametrize(
    ("parent", "child", "message"),
    [
        (
            _parent(inputs={}),
            CHILD,
            "step `survey` (workflow `child.yaml`): `child` needs the input `mats`",
        ),
        (
            _parent(inputs={"mats": "x", "dept": "y"}),
            CHILD,
            "step `survey` (workflow `child.yaml`): `inputs.dept` is not an input of `child`; "
            "did you mean `depth`?",
        ),
        (
            _parent(workflow="nothere"),
            CHILD,
            "step `survey` (workflow `nothere`): no workflow `nothere`",
        ),
        (
            _parent(workflow="parent.yaml"),
            CHILD,
            "step `survey` (workflow `parent.yaml`) would run a workflow inside itself: "
            "`parent` -> `parent`.",
        ),
        (
            _parent(),
            {**CHILD, "steps": [{"id": "look", "workflow": "parent.yaml", "inputs": {}}]},
            "step `survey` (workflow `child.yaml`): step `look` (workflow `parent.yaml`) would "
            "run a workflow inside itself: `parent` -> `child` -> `parent`.",
        ),
        (
            _parent(),
            {**CHILD, "steps": [{"id": "look", "agent": "nobody", "task": "x"}]},
            "step `survey` (workflow `child.yaml`): step `look`: unknown agent `nobody`",
        ),
        (
            {
                **_parent(),
                "steps": [
                    _parent()["steps"][0],
                    {**_parent()["steps"][1], "task": "{{ steps.survey.data.summry }}"},
                ],
            },
            CHILD,
            "step `rank` reads `steps.survey.data.summry`, but `child` has no output `summry`; "
            "did you mean `summary`?",
        ),
        (
            _parent(agent="webster"),
            CHILD,
            "step `survey` runs the workflow `child.yaml`, so it cannot have `agent`",
        ),
        (
            {
                **_parent(),
                "steps": [{"id": "a", "agent": "webster", "task": "t", "inputs": {"x": "y"}}],
            },
            CHILD,
            "step `a` has `inputs` but no `workflow`",
        ),
        (
            {**_parent(), "steps": [{"id": "a", "agent": "webster"}]},
            CHILD,
            "step `a` has no `task`",
        ),
    ],
)
def test_invalid_sub_workflows(
    tmp_path: Path, parent: dict[str, Any], child: dict[str, Any], message: str
) -> None:
    with pytest.raises(WorkflowError) as info:
        _prepare(tmp_path, parent, child)
    found = [info.value.message, *info.value.problems]
    assert any(p.startswith(message) for p in found), found


def test_the_acl_is_checked_for_the_childs_steps(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, demo_config(tmp_path, acl={"manager": ["tech-lead"]})))
    _write(tmp_path, CHILD, "child")
    with pytest.raises(WorkflowError) as info:
        prepare(cfg, str(_write(tmp_path, _parent(), "parent")), {})
    assert any(
        p.startswith("step `survey` (workflow `child.yaml`): ") and "webster" in p
        for p in info.value.problems
    ), info.value.problems


def test_a_child_run_end_to_end(tmp_path: Path) -> None:
    cfg, prepared = _prepare(tmp_path, _parent())
    with open_delegator(cfg) as d:
        result = WorkflowRunner(cfg, d).start(prepared, RunOptions())
    assert result.state is RunState.COMPLETE, result.summary
    survey = result.summary["steps"]["survey"]
    cid = survey["child_run_id"]
    assert survey["status"] == "complete"
    child = replay_run(d.store, cid)
    assert child.state is RunState.COMPLETE
    assert child.meta["parent"] == {"run_id": result.run_id, "step": "survey"}
    child_summary = d.store.read_summary(cid)
    assert child_summary is not None
    assert child_summary["parent"] == {"run_id": result.run_id, "step": "survey"}
    # the child's outputs are the step's data; the parent's next step read them
    record = d.store.read_step(result.run_id, "survey")
    assert record["handoff"]["data"] == child_summary["outputs"]
    assert json.loads(record["handoff"]["result"]) == child_summary["outputs"]
    assert "Zerodur, ULE" in child_summary["outputs"]["summary"]
    status = run_status(cfg, result.run_id)
    assert status["steps"]["survey"]["child_run_id"] == cid


def test_a_failed_child_fails_the_step(tmp_path: Path) -> None:
    child = {**CHILD, "steps": [{"id": "look", "agent": "webster", "task": "x", "timeout": 0.5}]}
    cfg = load_config(write_config(tmp_path, demo_config(tmp_path)))
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {
        "kind": "command",
        "argv": ["python3", "-c", "import time; time.sleep(30)"],
        "fallback_handoff": False,
    }
    cfg = load_config(write_config(tmp_path, raw))
    _write(tmp_path, child, "child")
    prepared = prepare(cfg, str(_write(tmp_path, _parent(), "parent")), {})
    with open_delegator(cfg) as d:
        result = WorkflowRunner(cfg, d).start(prepared, RunOptions())
    steps = result.summary["steps"]
    assert steps["survey"]["status"] == "failed"
    assert steps["survey"]["error"].startswith(
        f"child run `{steps['survey']['child_run_id']}` ended failed: step `look` ended timeout"
    )
    assert steps["rank"]["status"] == "skipped"
    assert result.state is RunState.FAILED


def test_a_gate_in_the_child_parks_both_and_resume_goes_through(tmp_path: Path) -> None:
    child = {
        **CHILD,
        "steps": [{**CHILD["steps"][0], "gate": {"prompt": "Search?"}}],  # type: ignore[index]
    }
    cfg, prepared = _prepare(tmp_path, _parent(), child)
    with open_delegator(cfg) as d:
        runner = WorkflowRunner(cfg, d)
        parked = runner.start(prepared, RunOptions())
        assert parked.state is RunState.WAITING_APPROVAL
        cid = parked.summary["steps"]["survey"]["child_run_id"]
        assert replay_run(d.store, cid).state is RunState.WAITING_APPROVAL
        assert replay_run(d.store, parked.run_id).steps["survey"].state.value == "waiting_approval"
        from engine.runs import GateDecision, decide_gate

        decide_gate(cfg, cid, "look", GateDecision(True, by="test"))
        done = runner.resume(parked.run_id, RunOptions())
    assert done.state is RunState.COMPLETE, done.summary
    assert done.summary["steps"]["survey"]["child_run_id"] == cid
    assert replay_run(d.store, cid).state is RunState.COMPLETE


def test_cancel_of_a_parked_parent_cancels_its_child(tmp_path: Path) -> None:
    child = {
        **CHILD,
        "steps": [{**CHILD["steps"][0], "gate": {"prompt": "Search?"}}],  # type: ignore[index]
    }
    cfg, prepared = _prepare(tmp_path, _parent(), child)
    with open_delegator(cfg) as d:
        parked = WorkflowRunner(cfg, d).start(prepared, RunOptions())
        cid = parked.summary["steps"]["survey"]["child_run_id"]
        assert cancel_run(cfg, parked.run_id, store=d.store) is RunState.CANCELLED
        assert replay_run(d.store, cid).state is RunState.CANCELLED


def test_status_says_where_a_parked_child_waits(tmp_path: Path) -> None:
    child = {
        **CHILD,
        "steps": [{**CHILD["steps"][0], "gate": {"prompt": "Search?"}}],  # type: ignore[index]
    }
    cfg, prepared = _prepare(tmp_path, _parent(), child)
    with open_delegator(cfg) as d:
        parked = WorkflowRunner(cfg, d).start(prepared, RunOptions())
    cid = parked.summary["steps"]["survey"]["child_run_id"]
    row = run_status(cfg, parked.run_id)["steps"]["survey"]
    assert row["status"] == "waiting_approval"
    assert row["waiting"] == (
        f"its child run `{cid}` is waiting_approval: see `workflow status {cid}`, decide or "
        f"answer there, then `workflow resume {parked.run_id}`"
    )


@pytest.mark.parametrize(
    ("fixture", "survey", "rank"),
    [
        ({"outputs": {"summary": "ULE wins"}}, "complete", "complete"),
        ({"status": "failed"}, "failed", "skipped"),
    ],
)
def test_workflow_test_takes_the_child_from_a_fixture(
    tmp_path: Path, fixture: dict[str, Any], survey: str, rank: str
) -> None:
    from engine.fixtures import run_fixtures

    cfg = _cfg(tmp_path)
    _write(tmp_path, CHILD, "child")
    parent = _write(tmp_path, _parent(), "parent")
    fixtures = tmp_path / "fx"
    fixtures.mkdir()
    (fixtures / "survey.json").write_text(json.dumps(fixture))
    (fixtures / "rank.json").write_text(json.dumps({"result": "ranked"}))
    report = run_fixtures(cfg, str(parent), fixtures, inputs={})
    assert report.steps["survey"]["status"] == survey
    assert report.steps["rank"]["status"] == rank
    assert report.steps["survey"]["fixture"] == "survey.json"
    if survey == "failed":
        assert report.steps["survey"]["why"] == "the child (a fixture) ended failed"


def test_a_sub_workflow_step_without_a_fixture_says_so(tmp_path: Path) -> None:
    from engine.fixtures import run_fixtures

    cfg = _cfg(tmp_path)
    _write(tmp_path, CHILD, "child")
    fixtures = tmp_path / "fx"
    fixtures.mkdir()
    report = run_fixtures(cfg, str(_write(tmp_path, _parent(), "parent")), fixtures, inputs={})
    assert report.steps["survey"]["status"] == "errored"
    assert report.steps["survey"]["why"].startswith(
        "child run: no fixture for the sub-workflow step `survey`"
    )


def test_cancel_of_a_running_parent_cancels_its_running_child(tmp_path: Path) -> None:
    import threading
    import time

    from tests.helpers import gated_agent

    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = gated_agent(tmp_path / "never")
    cfg = load_config(write_config(tmp_path, raw))
    _write(tmp_path, CHILD, "child")
    prepared = prepare(cfg, str(_write(tmp_path, _parent(), "parent")), {})
    out: dict[str, Any] = {}
    with open_delegator(cfg) as d:
        runner = WorkflowRunner(cfg, d)
        thread = threading.Thread(target=lambda: out.update(r=runner.start(prepared, RunOptions())))
        thread.start()
        deadline = time.monotonic() + 60
        parent_id = cid = None
        while time.monotonic() < deadline and cid is None:  # the child's first step is sent
            for rid in d.store.list_runs():
                view = replay_run(d.store, rid)
                if view.meta.get("parent") and view.steps["look"].dispatched_at:
                    cid, parent_id = rid, view.meta["parent"]["run_id"]
            time.sleep(0.05)
        assert cid is not None and parent_id is not None
        assert cancel_run(cfg, parent_id, store=d.store) is RunState.RUNNING  # live: noticed
        thread.join(60)
    result = out["r"]
    assert result.state is RunState.CANCELLED
    assert result.summary["steps"]["survey"]["status"] == "cancelled"
    assert result.summary["steps"]["rank"]["status"] == "skipped"
    child = replay_run(d.store, cid)
    assert child.state is RunState.CANCELLED
    assert any(
        e.get("event") == "run_cancelled" and e.get("by") == f"parent run `{parent_id}`"
        for e in child.events
    )


def test_workflow_status_shows_both_links(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from engine.cli.workflow import workflow

    cfg, prepared = _prepare(tmp_path, _parent())
    with open_delegator(cfg) as d:
        result = WorkflowRunner(cfg, d).start(prepared, RunOptions())
    cid = result.summary["steps"]["survey"]["child_run_id"]
    config = str(tmp_path / "orchestrator.yaml")
    parent = CliRunner().invoke(workflow, ["status", result.run_id, "--config", config])
    assert parent.exit_code == 0, parent.output
    assert f"child run {cid}" in parent.stdout
    child = CliRunner().invoke(workflow, ["status", cid, "--config", config])
    assert f"child run of `{result.run_id}` (its step `survey`)\n" in child.stdout


def test_kill_9_while_the_child_runs_then_resume_the_parent(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from click.testing import CliRunner

    from engine.cli.workflow import workflow
    from engine.gateway import LocalGateway

    raw = demo_config(tmp_path)
    raw["gateway"].update(embedded=False, token_env="GW_TOKEN")
    path = write_config(tmp_path, raw)
    gw = LocalGateway(load_config(path), token="tok-0123456789").start()
    raw["gateway"]["port"] = int(gw.url.rsplit(":", 1)[1])
    write_config(tmp_path, raw)
    child = {**CHILD, "steps": [{"id": "look", "agent": "webster", "task": "DEMO_SLEEP=2 x"}]}
    _write(tmp_path, child, "child")
    parent = _write(tmp_path, _parent(), "parent")
    env = {**os.environ, "GW_TOKEN": "tok-0123456789"}
    try:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "workflow"),
                "run",
                str(parent),
                "--config",
                str(path),
                "-q",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        store = open_delegator_store(path)
        deadline = time.monotonic() + 60
        cid = None
        while time.monotonic() < deadline and cid is None:  # the child's step is sent
            for rid in store.list_runs():
                view = replay_run(store, rid)
                if view.meta.get("parent") and view.steps["look"].dispatched_at:
                    cid = rid
            time.sleep(0.05)
        assert cid is not None, "the child never sent its step"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        pid = replay_run(store, cid).meta["parent"]["run_id"]
        res = CliRunner(env={"GW_TOKEN": "tok-0123456789"}).invoke(
            workflow, ["resume", pid, "--config", str(path), "--json", "-q"]
        )
        assert res.exit_code == 0, res.output
        summary = json.loads(res.stdout)
        assert summary["status"] == "complete"
        assert summary["steps"]["survey"]["child_run_id"] == cid  # the same child, resumed
        assert replay_run(store, cid).state is RunState.COMPLETE
        assert gw.stats()["dispatched"]["webster"] == 1  # its step was not sent again
    finally:
        gw.stop()


def open_delegator_store(path: Path) -> Any:
    from engine.store import open_store

    return open_store(load_config(path))


GRANDCHILD = {
    "name": "grandchild",
    "caller": "manager",
    "inputs": {"q": {"required": True}},
    "steps": [{"id": "g", "agent": "webster", "task": "{{ inputs.q }}"}],
    "outputs": {"out": "{{ steps.g.result }}"},
}


@pytest.mark.parametrize(
    ("step", "child", "children"),
    [
        ({}, CHILD, ["look"]),
        ({"when": "inputs.m != ''", "on_failure": "continue"}, CHILD, ["look"]),
        ({"gate": {"prompt": "Survey {{ inputs.m }}?"}}, CHILD, ["look"]),
        ({"inputs": {"mats": "{{ inputs.m }}", "depth": "full"}}, CHILD, ["look"]),
        (
            {},
            {
                **CHILD,
                "steps": [{"id": "look", "workflow": "grandchild.yaml", "inputs": {"q": "x"}}],
                "outputs": {"summary": "{{ steps.look.data.out }}"},
            },
            ["look"],
        ),
        (
            {"workflow": "quick-research", "inputs": {"query": "{{ inputs.m }}"}},
            CHILD,
            ["research", "verify"],
        ),
    ],
    ids=["plain", "when-continue", "gate", "all-inputs", "grandchild", "shipped-by-name"],
)
def test_valid_sub_workflows(
    tmp_path: Path, step: dict[str, Any], child: dict[str, Any], children: list[str]
) -> None:
    _write(tmp_path, GRANDCHILD, "grandchild")
    parent = _parent(**step)
    if step.get("workflow") == "quick-research":  # its outputs are `answer`, `verification`
        parent["steps"][1]["task"] = "Rank {{ steps.survey.data.answer }}"
    _, prepared = _prepare(tmp_path, parent, child)
    assert list(prepared.plan.sub_plans["survey"].steps) == children
    assert prepared.plan.steps["survey"].agent is None


def test_a_recorded_run_replays_its_sub_workflow_offline(tmp_path: Path) -> None:
    from engine.fixtures import (
        check_expectations,
        load_expectations,
        record_fixtures,
        run_fixtures,
    )

    cfg, prepared = _prepare(tmp_path, _parent())
    with open_delegator(cfg) as d:
        result = WorkflowRunner(cfg, d).start(prepared, RunOptions())
        fixtures = tmp_path / "fx"
        record_fixtures(replay_run(d.store, result.run_id), fixtures, d.store)
    child = d.store.read_summary(result.summary["steps"]["survey"]["child_run_id"])
    assert child is not None
    survey = json.loads((fixtures / "survey.json").read_text())
    assert survey == [{"status": "complete", "outputs": child["outputs"]}]
    report = run_fixtures(cfg, str(tmp_path / "parent.yaml"), fixtures, inputs={})
    assert check_expectations(report, load_expectations(fixtures / "expect.json")) == []


def test_retry_failed_resumes_the_failed_child(tmp_path: Path) -> None:
    import sys

    from tests.test_lang_docs import FAILS_FIRST

    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {
        "kind": "command",
        "argv": [sys.executable, "-c", FAILS_FIRST],
        "env": {"COUNTER": str(tmp_path / "count"), "FAILS": "1"},
    }
    cfg = load_config(write_config(tmp_path, raw))
    _write(tmp_path, CHILD, "child")
    prepared = prepare(cfg, str(_write(tmp_path, _parent(), "parent")), {})
    with open_delegator(cfg) as d:
        runner = WorkflowRunner(cfg, d)
        failed = runner.start(prepared, RunOptions())
        assert failed.summary["steps"]["survey"]["status"] == "failed"
        cid = failed.summary["steps"]["survey"]["child_run_id"]
        done = runner.resume(failed.run_id, RunOptions(retry_failed=True))
    assert done.state is RunState.COMPLETE, done.summary
    assert done.summary["steps"]["survey"]["child_run_id"] == cid  # the same child, again
    assert replay_run(d.store, cid).steps["look"].attempt == 2
