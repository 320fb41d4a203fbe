"""Budgets: what a run or a step may spend, from the handoffs' usage."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.config import Config, load_config
from engine.delegate import open_delegator
from engine.errors import WorkflowError
from engine.planview import dry_run_text
from engine.runner import RunOptions, RunState, WorkflowRunner, prepare
from engine.workflow import Budget, workflow_from_dict
from tests.helpers import demo_config, write_config
from tests.test_lang_failure import _plan

#: A command agent whose handoff reports usage: 100 tokens in, 50 out, $0.03.
COSTLY = """
import json, os, pathlib
path = pathlib.Path(os.environ["ORCH_HANDOFF_PATH"])
tmp = path.with_name("." + path.name + ".tmp")
tmp.write_text(json.dumps({"schemaVersion": "1.1", "runId": os.environ["ORCH_RUN_ID"],
    "agent": os.environ["ORCH_AGENT"], "key": os.environ["ORCH_HANDOFF_KEY"],
    "status": os.environ.get("STATUS", "complete"), "result": "done",
    "usage": {"input_tokens": 100, "output_tokens": 50, "cost": 0.03, "model": "m"},
    "confidence": "high", "timestamp": "2026-11-21T00:00:00Z"}))
os.replace(tmp, path)
"""


def _cfg(tmp_path: Path, status: str = "complete") -> Config:
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {
        "kind": "command",
        "argv": [sys.executable, "-c", COSTLY],
        "env": {"STATUS": status},
        "fallback_handoff": False,
    }
    return load_config(write_config(tmp_path, raw))


def _run(cfg: Config, tmp_path: Path, raw: dict[str, Any]) -> Any:
    path = tmp_path / "wf.yaml"
    path.write_text(json.dumps({"name": "wf", "caller": "manager", **raw}))
    with open_delegator(cfg) as d:
        return WorkflowRunner(cfg, d).start(prepare(cfg, str(path), {}), RunOptions())


def _step(sid: str, **extra: Any) -> dict[str, Any]:
    return {"id": sid, "agent": "webster", "task": sid, **extra}


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        ({}, "`budget` must not be empty."),
        ({"usd": 0}, "`budget.usd` must be > 0."),
        ({"dollars": 1}, "`budget.dollars` is not a known key"),
        ({"tokens": 1.5}, "`budget.tokens` must be an integer."),
    ],
)
def test_invalid_budgets(budget: dict[str, Any], message: str) -> None:
    raw = {"name": "t", "caller": "manager", "budget": budget, "steps": [_step("a")]}
    with pytest.raises(WorkflowError) as info:
        workflow_from_dict(raw, path=Path("t.yaml"))
    assert any(p.startswith(message) for p in info.value.problems), info.value.problems


def test_budget_spent_by() -> None:
    assert Budget(usd=0.05).spent_by(0.06, 0) == "$0.06 of its $0.05"
    assert Budget(usd=0.05).spent_by(0.04, 10**9) is None
    assert Budget(tokens=300).spent_by(0.0, 300) == "300 of its 300 tokens"


def test_the_dry_run_shows_budgets() -> None:
    plan, renderer = _plan(
        {
            "name": "t",
            "caller": "manager",
            "budget": {"usd": 2.5, "tokens": 200000},
            "steps": [_step("a", budget={"usd": 0.5})],
        }
    )
    text = dry_run_text(plan, renderer)
    assert "Budget: $2.5 and 200000 tokens for the whole run (`finally` steps excepted)" in text
    assert "      budget: $0.5\n" in text


def test_a_run_budget_stops_dispatching(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    result = _run(
        cfg,
        tmp_path,
        {
            "budget": {"usd": 0.05},
            "steps": [_step("a"), _step("b", depends_on=["a"]), _step("c", depends_on=["b"])],
            "finally": [{"id": "notify", "agent": "secretary", "task": "{{ run.status }}"}],
        },
    )
    steps = result.summary["steps"]
    assert [steps[s]["status"] for s in ("a", "b", "c", "notify")] == [
        "complete",
        "complete",
        "skipped",
        "complete",
    ]
    assert steps["c"]["skip_reason"] == "the run's budget is spent ($0.06 of its $0.05)"
    # the demo secretary reports tokens but no cost; the finally step is not bounded
    assert result.summary["spent"]["usd"] == 0.06
    assert result.summary["spent"]["tokens"] == 300 + steps["notify"]["spent"]["tokens"]
    assert steps["a"]["spent"] == {"usd": 0.03, "tokens": 150}
    assert result.state is RunState.FAILED


def test_a_step_budget_bounds_its_retries(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, status="failed")
    result = _run(
        cfg,
        tmp_path,
        {
            "steps": [_step("a", budget={"usd": 0.05}, retry={"max": 5, "delay": 0})],
        },
    )
    step = result.summary["steps"]["a"]
    assert step["status"] == "failed" and step["attempts"] == 2  # $0.03, then $0.06: no more
    assert step["spent"] == {"usd": 0.06, "tokens": 300}


def test_a_run_budget_stops_a_fan_out_between_items(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    result = _run(
        cfg,
        tmp_path,
        {
            "budget": {"tokens": 300},
            "steps": [_step("a", for_each="'x, y, z'", max_parallel=1)],
        },
    )
    items = json.loads((result.run_dir / "a.json").read_text())["items"]
    assert [(i["status"], i["error"]) for i in items] == [
        ("complete", None),
        ("complete", None),
        ("skipped", "the run's budget is spent (300 of its 300 tokens)"),
    ]
    assert result.summary["steps"]["a"]["status"] == "skipped"
    assert result.state is RunState.FAILED


def test_a_validators_usage_counts_for_the_step(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    for agent in ("webster", "auditor"):  # both hand off usage: 150 tokens, $0.03
        raw["gateway"]["agents"][agent] = {
            "kind": "command",
            "argv": [sys.executable, "-c", COSTLY],
            "fallback_handoff": False,
        }
    cfg = load_config(write_config(tmp_path, raw))
    result = _run(cfg, tmp_path, {"steps": [_step("a", validate="auditor")]})
    # the auditor's handoff has no verdict, so it rejects; what it spent still counts
    assert result.summary["steps"]["a"]["spent"] == {"usd": 0.06, "tokens": 300}
    events = replay_run_events(cfg, result.run_id)
    spent = [e for e in events if e["event"] == "step_spent"]
    assert [e.get("validation", False) for e in spent] == [False, True]
    assert spent[1]["delegation_run_id"] == f"{result.run_id}-a-1-v"


def replay_run_events(cfg: Config, run_id: str) -> list[dict[str, Any]]:
    from engine.runs import replay_run
    from engine.store import open_store

    return replay_run(open_store(cfg), run_id).events
