"""Failure paths: `when` on an upstream step's failure, `finally` steps, the run's end state.

Templates are checked by the planner (valid and invalid cases, with the message), drawn
by the dry run and the graph, and run end to end on the local gateway with demo agents.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from engine.acl import Acl
from engine.cli import workflow
from engine.config import Config, load_config
from engine.dag import plan_workflow
from engine.delegate import open_delegator
from engine.errors import WorkflowError
from engine.planview import dry_run_dict, dry_run_text, graph_text
from engine.registry import Registry
from engine.renderer import TaskRenderer
from engine.runner import RunOptions, RunState, WorkflowRunner, prepare
from engine.store.file import read_events
from engine.workflow import load_workflow, workflow_from_dict
from tests.helpers import demo_config, write_config

HERE = Path(__file__).parent / "workflows" / "lang"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "workflows.md"


def _static_cfg() -> Config:
    from tests.test_dag import seed_config

    return seed_config()


def _plan(raw: dict[str, Any], inputs: dict[str, str] | None = None) -> Any:
    cfg = _static_cfg()
    spec = workflow_from_dict(raw, path=Path("t.yaml"))
    registry = Registry.from_config(cfg)
    renderer = TaskRenderer(spec)
    plan = plan_workflow(
        spec,
        registry=registry,
        acl=Acl(cfg.acl, registry.names),
        inputs=inputs or {},
        caller=None,
        validator=None,
        renderer=renderer,
    )
    return plan, renderer


def _problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(WorkflowError) as info:
        _plan(raw)
    return list(info.value.problems)


def _wf(steps: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    return {"name": "t", "caller": "manager", "steps": steps, **top}


A = {"id": "a", "agent": "webster", "task": "a"}


# --------------------------------------------------------------------------- planner


VALID = [
    pytest.param(
        _wf(
            [
                A,
                {
                    "id": "b",
                    "agent": "secretary",
                    "depends_on": ["a"],
                    "task": "b",
                    "when": "steps.a.status == 'failed'",
                },
            ]
        ),
        {"b": ["a"]},
        id="when-tests-failed",
    ),
    pytest.param(
        _wf(
            [
                A,
                {
                    "id": "b",
                    "agent": "secretary",
                    "depends_on": "a",
                    "task": "b",
                    "when": "steps.a.status in ['timeout', 'lost', 'unusable', 'skipped']",
                },
            ]
        ),
        {"b": ["a"]},
        id="when-tests-several",
    ),
    pytest.param(
        _wf(
            [
                A,
                {
                    "id": "b",
                    "agent": "secretary",
                    "depends_on": "a",
                    "task": "b",
                    "when": "steps.a.confidence == 'low'",
                },
            ]
        ),
        {"b": []},
        id="no-status-no-failure-path",
    ),
    pytest.param(
        _wf(
            [A],
            finally_=[
                {
                    "id": "z",
                    "agent": "secretary",
                    "task": "{{ run.status }}",
                    "when": "run.status == 'failed'",
                }
            ],
        ),
        {"z": []},
        id="finally-on-failure",
    ),
]


@pytest.mark.parametrize(("raw", "decides"), VALID)
def test_valid_failure_paths_plan(raw: dict[str, Any], decides: dict[str, list[str]]) -> None:
    raw = {("finally" if k == "finally_" else k): v for k, v in raw.items()}
    plan, renderer = _plan(raw)
    data = dry_run_dict(plan, renderer)
    got = {s["id"]: s["decides_on"] for s in data["steps"] if s["id"] in decides}
    assert got == decides


INVALID = [
    pytest.param(
        _wf(
            [
                A,
                {
                    "id": "b",
                    "agent": "secretary",
                    "depends_on": ["a"],
                    "task": "b",
                    "when": "steps.a.status == 'failure'",
                },
            ]
        ),
        "step `b`: `when` compares `steps.a.status` with `'failure'`, which it never is; "
        "did you mean `failed`? It is one of: complete, partial, blocked, failed, timeout, "
        "invalid, errored, cancelled, skipped, rejected, unusable, lost.",
        id="status-typo",
    ),
    pytest.param(
        _wf(
            [
                A,
                {
                    "id": "b",
                    "agent": "secretary",
                    "depends_on": ["a"],
                    "task": "b",
                    "when": "steps.a.status in ['timedout', 'failed']",
                },
            ]
        ),
        "step `b`: `when` compares `steps.a.status` with `'timedout'`, which it never is; "
        "did you mean `timeout`? It is one of: complete, partial, blocked, failed, timeout, "
        "invalid, errored, cancelled, skipped, rejected, unusable, lost.",
        id="status-typo-in-list",
    ),
    pytest.param(
        _wf(
            [
                A,
                {
                    "id": "b",
                    "agent": "secretary",
                    "depends_on": ["a"],
                    "task": "b",
                    "when": "run.status == 'failed'",
                },
            ]
        ),
        "step `b`: `when` tests `run.status`, which is `running` for every step of `steps`; "
        "only `finally` steps and outputs see how the run ended. Move the step to `finally`.",
        id="run-status-outside-finally",
    ),
    pytest.param(
        _wf(
            [A],
            finally_=[
                {"id": "z", "agent": "secretary", "task": "z", "when": "run.status == 'error'"}
            ],
        ),
        "step `z`: `when` compares `run.status` with `'error'`, which it never is. It is one "
        "of: complete, failed.",
        id="run-status-typo",
    ),
    pytest.param(
        _wf(
            [{**A, "depends_on": ["z"]}], finally_=[{"id": "z", "agent": "secretary", "task": "z"}]
        ),
        "step `a` depends on `z`, a `finally` step; `finally` steps run after every step of "
        "`steps`, so no step of `steps` can depend on one. Move the step to `finally`, or "
        "drop the dependency.",
        id="depends-on-finally",
    ),
    pytest.param(
        _wf([A], finally_=[{"id": "a", "agent": "secretary", "task": "z"}]),
        "step id `a` is used by 2 steps; step ids must be unique.",
        id="finally-id-taken",
    ),
    pytest.param(
        _wf(
            [
                A,
                {
                    "id": "b",
                    "agent": "secretary",
                    "task": "b",
                    "when": "steps.a.status == 'failed'",
                },
            ]
        ),
        "step `b` uses `steps.a` in `when` but `a` is not upstream of it; add it to `depends_on`.",
        id="tests-a-step-not-upstream",
    ),
]


@pytest.mark.parametrize(("raw", "message"), INVALID)
def test_invalid_failure_paths_are_refused(raw: dict[str, Any], message: str) -> None:
    raw = {("finally" if k == "finally_" else k): v for k, v in raw.items()}
    assert message in _problems(raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_wf([A], **{"finally": []}), "`finally` must not be empty."),
        (
            _wf([A], **{"finally": [{"id": "z", "agent": "secretary", "task": "z", "when_": 1}]}),
            "step `z`: `finally[0].when_` is not a known key; did you mean `when`?",
        ),
        (
            _wf([A], **{"finally": [{"id": "z", "task": "z"}]}),
            "step `z` needs one of `agent` and `capability`.",
        ),
    ],
    ids=["empty", "unknown-key", "no-agent"],
)
def test_finally_schema_problems(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(WorkflowError) as info:
        workflow_from_dict(raw, path=Path("t.yaml"))
    assert info.value.problems == [message]


def test_finally_steps_come_after_every_step_in_the_plan_and_views() -> None:
    spec = load_workflow(HERE / "unhandled.yaml")
    plan, renderer = _plan(yaml.safe_load((HERE / "unhandled.yaml").read_text()))
    assert plan.groups == [["first"], ["after"], ["on-failure"], ["summary"]]
    assert plan.steps["on-failure"].depends_on == ("after",)
    assert plan.steps["summary"].depends_on == ("on-failure", "after")
    text = dry_run_text(plan, renderer)
    assert (
        "  - on-failure: secretary\n"
        "      after: after\n"
        "      finally: runs once every other step has ended, whatever happened\n"
        "      when: run.status == 'failed'\n" in text
    )
    # finally steps and outputs see `run.status` complete in a dry run
    assert "        | summary: complete\n" in text
    mermaid = graph_text(spec, "mermaid")
    assert "n2[\"on-failure<br/>secretary<br/>finally<br/>when run.status == 'failed'\"]" in mermaid
    assert "    n1 -.-> n2\n" in mermaid and "    n1 --> n3\n" in mermaid
    assert "    class n2,n3 finally\n" in mermaid
    assert 'style="dashed,rounded"' in graph_text(spec, "dot")


def test_dry_run_names_the_failures_a_step_decides_on() -> None:
    plan, renderer = _plan(yaml.safe_load((HERE / "recover.yaml").read_text()))
    text = dry_run_text(plan, renderer)
    assert (
        "      when: steps.research.status in ['failed', 'timeout', 'unusable', 'lost']\n"
        "      runs even when research ended badly (its `when` tests their status)\n" in text
    )
    assert "      runs even when fallback, research ended badly" in text


# --------------------------------------------------------------------------- end to end


def _cfg(tmp_path: Path) -> Config:
    return load_config(write_config(tmp_path, demo_config(tmp_path)))


def _run(cfg: Config, name: str, inputs: dict[str, str] | None = None, **opts: Any) -> Any:
    prepared = prepare(cfg, str(HERE / f"{name}.yaml"), inputs or {})
    with open_delegator(cfg) as d:
        return WorkflowRunner(cfg, d).start(prepared, RunOptions(**opts))


def _task(cfg: Config, result: Any, step: str) -> str:
    drid = result.summary["steps"][step]["delegation_run_id"]
    record = json.loads((cfg.handoffs_dir / f"{drid}.json").read_text())
    return str(record["envelope"]["task"])


def test_a_failure_taken_over_completes_the_run(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    result = _run(cfg, "recover", {"first": "DEMO_STATUS=failed"})
    steps = result.summary["steps"]
    assert {k: v["status"] for k, v in steps.items()} == {
        "research": "failed",
        "fallback": "complete",
        "evaluate": "complete",
        "notify": "complete",
    }
    assert result.state is RunState.COMPLETE and result.exit_code == 0
    assert _task(cfg, result, "fallback").startswith("research again; the first try ended failed")
    assert "demo output from study-builder" in _task(cfg, result, "evaluate")
    assert _task(cfg, result, "notify") == (
        "tell the team: run complete; research failed, evaluate complete"
    )
    assert "demo output from tech-lead" in result.summary["outputs"]["evaluation"]


def test_without_a_failure_the_failure_path_is_skipped(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    result = _run(cfg, "recover")
    steps = result.summary["steps"]
    assert steps["fallback"]["status"] == "skipped"
    assert steps["fallback"]["skip_reason"].startswith("condition `steps.research.status in")
    assert steps["evaluate"]["status"] == "complete"
    assert result.state is RunState.COMPLETE
    assert "run complete; research complete, evaluate complete" in _task(cfg, result, "notify")


def test_unhandled_failure_fails_the_run_and_finally_still_runs(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    result = _run(cfg, "unhandled")
    steps = result.summary["steps"]
    assert steps["first"]["status"] == "failed"
    assert steps["after"]["status"] == "skipped"
    assert steps["after"]["skip_reason"] == "upstream `first` ended failed"
    assert steps["on-failure"]["status"] == "complete"
    assert steps["summary"]["status"] == "complete"
    assert result.state is RunState.FAILED and result.exit_code == 1
    assert _task(cfg, result, "on-failure") == (
        "the run failed: first failed, after skipped (upstream `first` ended failed)"
    )
    assert _task(cfg, result, "summary") == "summary: failed"
    # when the run goes well, the failure-only finally step is skipped by its condition
    result = _run(cfg, "unhandled", {"first": "all good"})
    assert result.state is RunState.COMPLETE
    assert result.summary["steps"]["on-failure"]["status"] == "skipped"
    assert _task(cfg, result, "summary") == "summary: complete"


def test_a_timeout_runs_the_step_that_tests_for_it(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    result = _run(cfg, "timeout")
    steps = result.summary["steps"]
    assert steps["slow"]["status"] == "timeout"
    assert steps["on-timeout"]["status"] == "complete"
    assert _task(cfg, result, "on-timeout").startswith("the search timed out: ")
    assert result.state is RunState.COMPLETE


def test_finally_waits_for_a_gate_and_runs_after_resume(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    c = ["--config", str(cfg.path)]
    run = CliRunner().invoke(
        workflow,
        ["run", str(HERE / "gated-finally.yaml"), "--non-interactive", "--json", *c],
        catch_exceptions=False,
    )
    assert run.exit_code == 3, run.output
    summary = json.loads(run.stdout)
    assert summary["steps"]["notify"]["status"] == "pending"
    run_id = summary["runId"]
    assert (
        CliRunner().invoke(workflow, ["reject", run_id, "review", "--reason", "no", *c]).exit_code
        == 0
    )
    res = CliRunner().invoke(workflow, ["resume", run_id, "--json", *c], catch_exceptions=False)
    summary = json.loads(res.stdout)
    assert summary["steps"]["review"]["status"] == "rejected"
    assert summary["steps"]["notify"]["status"] == "complete"
    assert summary["status"] == "failed" and res.exit_code == 1
    events = read_events(Path(summary["run_dir"]) / "events.jsonl")
    order = [(e["event"], e.get("step")) for e in events]
    assert order.index(("gate_decided", "review")) < order.index(("step_started", "notify"))
    assert order[-1] == ("run_finished", None)


FLAKY = """
import os, pathlib, sys
counter = pathlib.Path(os.environ["FLAKY_COUNTER"])
n = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(n))
if n < 2:
    sys.exit("flaky failure %d" % n)
print("worked on try %d" % n)
"""


def test_retry_failed_runs_the_finally_steps_again(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["flaky"] = {
        "kind": "command",
        "argv": [sys.executable, "-c", FLAKY],
        "env": {"FLAKY_COUNTER": str(tmp_path / "count")},
    }
    raw["agents"]["flaky"] = {"url": "local"}
    cfg = load_config(write_config(tmp_path, raw))
    prepared = prepare(cfg, str(HERE / "flaky-finally.yaml"), {})
    with open_delegator(cfg) as d:
        runner = WorkflowRunner(cfg, d)
        first = runner.start(prepared, RunOptions())
        assert first.state is RunState.FAILED
        assert first.summary["steps"]["on-failure"]["status"] == "complete"
        assert _task(cfg, first, "summary") == "summary: failed"
        again = runner.resume(first.run_id, RunOptions(retry_failed=True))
    steps = again.summary["steps"]
    assert again.state is RunState.COMPLETE, steps
    assert {k: v["status"] for k, v in steps.items()} == {
        "first": "complete",
        "after": "complete",
        "on-failure": "skipped",
        "summary": "complete",
    }
    assert _task(cfg, again, "summary") == "summary: complete"
    resets = [
        e["step"] for e in read_events(again.run_dir / "events.jsonl") if e["event"] == "step_reset"
    ]
    assert resets == ["first", "after", "on-failure", "summary"]


def test_an_unusable_handoff_runs_the_step_that_tests_for_it(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {  # a real agent that never writes its handoff
        "kind": "command",
        "argv": [
            sys.executable,
            str(Path(__file__).parent / "peers" / "misbehaving_agent.py"),
            "never",
        ],
        "env": {"AGENT_STATE": str(tmp_path / "state")},
        "timeout": 30,
        "fallback_handoff": False,
    }
    cfg = load_config(write_config(tmp_path, raw))
    result = _run(cfg, "unusable")
    steps = result.summary["steps"]
    assert steps["silent"]["status"] == "unusable", steps
    assert steps["on-unusable"]["status"] == "complete"
    assert _task(cfg, result, "on-unusable").startswith("no usable handoff: ")
    assert result.state is RunState.COMPLETE
