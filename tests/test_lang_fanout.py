"""`for_each`: one delegation and record per item, ordered results, bounds, resume.

Planner cases (valid and invalid, with the message), the dry run and the graph, and runs
on the local gateway: items in order, an empty list, a failing item, `max_parallel` and
the pool bounding 200 items, and a `kill -9` in the middle of a fan-out then `resume`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.cli import workflow
from engine.config import Config, load_config
from engine.delegate import open_delegator
from engine.errors import WorkflowError
from engine.gateway.server import LocalGateway
from engine.planview import dry_run_dict, dry_run_text, graph_text
from engine.runner import RunOptions, RunState, WorkflowRunner, prepare
from engine.store.file import read_events
from engine.workflow import items_of, load_workflow, workflow_from_dict
from tests.helpers import demo_config, write_config
from tests.test_lang_failure import _plan, _problems

HERE = Path(__file__).parent / "workflows" / "lang"
A = {"id": "a", "agent": "webster", "task": "a"}


def _wf(steps: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    return {
        "name": "t",
        "caller": "manager",
        "inputs": {"list": {"default": "x, y"}},
        "steps": steps,
        **top,
    }


# --------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(
    ("value", "split", "items"),
    [
        ("Zerodur, ULE ,Invar", ",", ["Zerodur", "ULE", "Invar"]),
        ("a;;b; ", ";", ["a", "b"]),
        ("one\ntwo\n\nthree", "lines", ["one", "two", "three"]),
        ('  [1, {"a": 2}, "x"]', ",", [1, {"a": 2}, "x"]),
        (["p", "q"], ",", ["p", "q"]),
        ("", ",", []),
        ("[]", ",", []),
    ],
)
def test_items_of(value: Any, split: str, items: list[Any]) -> None:
    assert items_of(value, split, where="w") == items


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[1, 2", "w starts with `[` but is not a JSON array: "),
        ('[{"a": 1}', "w starts with `[` but is not a JSON array: "),
        (
            3,
            "w is int, not a list or a text to split; `for_each` takes a list, a JSON array, "
            "or text such as `a, b, c`.",
        ),
        ("x," * 10_001, "w has 10001 items; a `for_each` takes at most 10000."),
    ],
)
def test_items_of_refuses(value: Any, message: str) -> None:
    with pytest.raises(WorkflowError) as info:
        items_of(value, ",", where="w")
    assert info.value.message.startswith(message)


# --------------------------------------------------------------------------- planner


def test_valid_fan_outs_plan_and_show() -> None:
    plan, renderer = _plan(
        _wf(
            [
                {
                    **A,
                    "for_each": "inputs.list",
                    "as": "m",
                    "max_parallel": 2,
                    "task": "do {{ m }}",
                },
                {
                    "id": "b",
                    "agent": "secretary",
                    "depends_on": ["a"],
                    "for_each": "steps.a.result",
                    "task": "{{ item }} of {{ steps.a.results[0] }}",
                },
                {
                    "id": "c",
                    "agent": "tech-lead",
                    "depends_on": ["b"],
                    "task": "{{ steps.b.results | join(', ') }}",
                },
            ]
        )
    )
    text = dry_run_text(plan, renderer)
    assert (
        "  - a: webster\n"
        "      for each `m` of inputs.list (2 items: x, y), at most 2 at once\n" in text
    )
    assert "        | do x\n" in text
    assert (
        "      for each `item` of steps.a.result (the items come from upstream results at run "
        "time)\n" in text
    )
    assert "        | <result of a[0]> of <result of a[0]>\n" in text
    assert "        | <result of b[0]>\n" in text
    data = dry_run_dict(plan, renderer)
    assert data["steps"][0]["for_each"] == {
        "expression": "inputs.list",
        "as": "m",
        "split": ",",
        "max_parallel": 2,
        "items": ["x", "y"],
    }
    spec = workflow_from_dict(_wf([{**A, "for_each": "inputs.list"}]), path=Path("t.yaml"))
    assert 'n0["a<br/>webster<br/>for each item of inputs.list"]' in graph_text(spec, "mermaid")


INVALID = [
    pytest.param(
        _wf([{**A, "as": "m"}]),
        "step `a` has `as` but no `for_each`; add `for_each` or drop it.",
        id="as-without-for-each",
    ),
    pytest.param(
        _wf([{**A, "max_parallel": 2}]),
        "step `a` has `max_parallel` but no `for_each`; add `for_each` or drop it.",
        id="max-parallel-without-for-each",
    ),
    pytest.param(
        _wf([{**A, "for_each": "inputs.list", "as": "steps"}]),
        "step `a`: `as: steps` would hide `steps` from the step's templates; choose another "
        "name (e.g. `as: item`).",
        id="as-hides-steps",
    ),
    pytest.param(
        _wf([{**A, "for_each": "inputs.list", "max_parallel": 0}]),
        "step `a`: `steps[0].max_parallel` must be >= 1.",
        id="max-parallel-zero",
    ),
    pytest.param(
        _wf([{**A, "for_each": "inputs.lst"}]),
        "step `a` uses `inputs.lst` in `for_each` but the workflow declares no input `lst`; "
        "did you mean `list`?",
        id="unknown-input",
    ),
    pytest.param(
        _wf([A, {"id": "b", "agent": "secretary", "task": "b", "for_each": "steps.a.result"}]),
        "step `b` uses `steps.a` in `for_each` but `a` is not upstream of it; add it to "
        "`depends_on`.",
        id="not-upstream",
    ),
    pytest.param(
        _wf([{**A, "for_each": "inputs.list |"}]),
        "step `a`: `for_each` has a template error: unexpected end of template, expected 'name'.",
        id="syntax",
    ),
    pytest.param(
        _wf([{**A, "for_each": "7"}]),
        "step `a`: `for_each` (7) is int, not a list or a text to split; `for_each` takes a "
        "list, a JSON array, or text such as `a, b, c`.",
        id="not-a-list",
    ),
    pytest.param(
        _wf([{**A, "task": "{{ item }}"}]),
        "step `a`: `task` fails to render: 'item' is undefined.",
        id="item-without-for-each",
    ),
    pytest.param(
        _wf([{**A, "for_each": "inputs.list", "when": "item == 'x'"}]),
        "step `a`: `when` cannot be evaluated: 'item' is undefined.",
        id="item-in-when",
    ),
    pytest.param(
        _wf(
            [
                A,
                {
                    "id": "b",
                    "agent": "secretary",
                    "depends_on": ["a"],
                    "task": "{{ steps.a.results[0] }}",
                },
            ]
        ),
        "step `b`: `task` fails to render: 'dict object' has no attribute 'results'.",
        id="results-of-a-plain-step",
    ),
]


@pytest.mark.parametrize(("raw", "message"), INVALID)
def test_invalid_fan_outs_are_refused(raw: dict[str, Any], message: str) -> None:
    try:
        problems = _problems(raw)
    except WorkflowError as exc:  # refused by the loader already
        problems = list(exc.problems)
    assert message in problems, problems


# --------------------------------------------------------------------------- end to end


def _cfg(tmp_path: Path, **extra: Any) -> Config:
    return load_config(write_config(tmp_path, demo_config(tmp_path, **extra)))


def _run(cfg: Config, name: str, inputs: dict[str, str]) -> Any:
    prepared = prepare(cfg, str(HERE / f"{name}.yaml"), inputs)
    with open_delegator(cfg) as d:
        return WorkflowRunner(cfg, d).start(prepared, RunOptions())


def test_one_delegation_and_record_per_item_in_order(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    result = _run(cfg, "fan-out", {"materials": "Zerodur, ULE, Invar"})
    assert result.state is RunState.COMPLETE
    rec = json.loads((result.run_dir / "research.json").read_text())
    assert [(i["index"], i["item"], i["status"]) for i in rec["items"]] == [
        (0, "Zerodur", "complete"),
        (1, "ULE", "complete"),
        (2, "Invar", "complete"),
    ]
    for i, item in enumerate(rec["items"]):
        assert item["delegation_run_id"] == f"{result.run_id}-research-i{i}-1"
        record = json.loads((cfg.handoffs_dir / f"{item['delegation_run_id']}.json").read_text())
        assert record["envelope"]["task"] == f"Find the CTE of {item['item']} "
        assert record["result"] == item["handoff"]["result"]
    results = [i["handoff"]["result"] for i in rec["items"]]
    assert json.loads(result.summary["outputs"]["all"]) == results
    assert result.summary["outputs"]["first"] == results[0]
    drid = result.summary["steps"]["compare"]["delegation_run_id"]
    compare = json.loads((cfg.handoffs_dir / f"{drid}.json").read_text())["envelope"]["task"]
    assert compare.startswith(f"Compare 3 materials.\nFirst: {results[0]}")
    follow = json.loads((result.run_dir / "follow.json").read_text())["items"]
    assert [i["item"] for i in follow] == results  # a JSON array from an upstream result
    events = read_events(result.run_dir / "events.jsonl")
    finished = [
        e["index"] for e in events if e["event"] == "item_finished" and e["step"] == "research"
    ]
    assert sorted(finished) == [0, 1, 2]


def test_an_empty_list_skips_the_step_and_its_dependents_still_run(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    path = tmp_path / "empty.yaml"
    path.write_text(
        "name: empty\ncaller: manager\ninputs: {list: {default: ''}}\nsteps:\n"
        "  - {id: each, agent: webster, for_each: inputs.list, task: '{{ item }}'}\n"
        "  - {id: after, agent: secretary, depends_on: [each],\n"
        '     task: "{{ steps.each.status }}: {{ steps.each.reason }}"}\n'
    )
    with open_delegator(cfg) as d:
        result = WorkflowRunner(cfg, d).start(prepare(cfg, str(path), {}), RunOptions())
    steps = result.summary["steps"]
    assert steps["each"]["status"] == "skipped"
    assert steps["each"]["skip_reason"] == "`for_each` (inputs.list) has no items"
    assert steps["after"]["status"] == "complete"
    assert result.state is RunState.COMPLETE


def test_a_failing_item_fails_the_step_after_its_retries(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    path = tmp_path / "fails.yaml"
    path.write_text(
        "name: fails\ncaller: manager\nsteps:\n"
        "  - id: each\n    agent: webster\n    for_each: \"['ok', 'DEMO_STATUS=failed', 'ok2']\"\n"
        "    retry: {max: 1, delay: 0}\n    task: '{{ item }}'\n"
        "  - {id: after, agent: secretary, depends_on: [each], task: x}\n"
    )
    with open_delegator(cfg) as d:
        result = WorkflowRunner(cfg, d).start(prepare(cfg, str(path), {}), RunOptions())
    step = result.summary["steps"]["each"]
    assert step["status"] == "failed"
    assert step["error"].startswith(
        '1 of 3 items did not end well; item 1 ("DEMO_STATUS=failed") ended failed'
    )
    items = json.loads((result.run_dir / "each.json").read_text())["items"]
    assert [(i["status"], i["attempts"]) for i in items] == [
        ("complete", 1),
        ("failed", 2),
        ("complete", 1),
    ]
    assert result.summary["steps"]["after"]["status"] == "skipped"
    assert result.state is RunState.FAILED


def test_two_hundred_items_under_a_pool_of_four(tmp_path: Path) -> None:
    from tests.test_pool_integration import COUNTING

    counter = tmp_path / "inflight.json"
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {
        "kind": "command",
        "timeout": 60,
        "argv": [sys.executable, "-c", COUNTING],
        "env": {"COUNTER": str(counter)},
    }
    raw["pool"] = {"max_tokens": 4, "adaptive": False}
    cfg = load_config(write_config(tmp_path, raw))
    result = _run(cfg, "fan-out-many", {})
    assert result.state is RunState.COMPLETE, result.summary
    items = json.loads((result.run_dir / "each.json").read_text())["items"]
    assert [i["item"] for i in items] == list(range(200))
    assert all(i["status"] == "complete" and i["attempts"] == 1 for i in items)
    records = sorted(cfg.handoffs_dir.glob(f"{result.run_id}-each-i*-1.json"))
    assert len(records) == 200  # every item recorded once
    now, peak = json.loads(counter.read_text())
    assert now == 0 and 1 <= peak <= 4  # never more than the pool's 4 tokens


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[tuple[Path, LocalGateway]]:
    raw = demo_config(tmp_path)
    raw["gateway"].update(embedded=False, token_env="GW_TOKEN")
    path = write_config(tmp_path, raw)
    gw = LocalGateway(load_config(path), token="tok-0123456789").start()
    raw["gateway"]["port"] = int(gw.url.rsplit(":", 1)[1])
    write_config(tmp_path, raw)
    try:
        yield path, gw
    finally:
        gw.stop()


def test_kill_9_mid_fan_out_then_resume(
    standalone: tuple[Path, LocalGateway], tmp_path: Path
) -> None:
    path, gw = standalone
    env = {**os.environ, "GW_TOKEN": "tok-0123456789"}
    exe = Path(sys.executable).parent / "workflow"
    proc = subprocess.Popen(
        [str(exe), "run", str(HERE / "fan-out-slow.yaml"), "--config", str(path), "-q"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    runs = tmp_path / "handoffs" / "workflows"
    deadline = time.monotonic() + 60
    run_dir = None
    while time.monotonic() < deadline:  # two items done, the slow one started
        found = list(runs.glob("*/events.jsonl")) if runs.exists() else []
        events = read_events(found[0]) if found else []
        done = [e for e in events if e["event"] == "item_finished"]
        if len(done) == 2 and any(e["event"] == "item_started" and e["index"] == 2 for e in events):
            run_dir = found[0].parent
            break
        time.sleep(0.05)
    assert run_dir is not None, "the fan-out never got two items done"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    slow = tmp_path / "handoffs" / f"{run_dir.name}-each-i2-1.json"
    deadline = time.monotonic() + 60
    while not slow.exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the slow item's agent finishes while no runner is alive
    assert slow.exists()
    res = CliRunner(env={"GW_TOKEN": "tok-0123456789"}).invoke(
        workflow,
        ["resume", run_dir.name, "--config", str(path), "--json", "-q"],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["status"] == "complete"
    assert gw.stats()["dispatched"]["webster"] == 3  # each item sent once
    items = json.loads((run_dir / "each.json").read_text())["items"]
    assert [(i["item"], i["status"], i["attempts"]) for i in items] == [
        ("a", "complete", 1),
        ("b", "complete", 1),
        ("DEMO_SLEEP=3 c", "complete", 1),
    ]
    after = summary["steps"]["after"]["delegation_run_id"]
    task = json.loads((tmp_path / "handoffs" / f"{after}.json").read_text())["envelope"]["task"]
    assert task == "3 results"


def test_the_shipped_example_loads() -> None:
    load_workflow(
        Path(__file__).resolve().parent.parent / "engine" / "workflows" / "material-survey.yaml"
    )


def test_retry_failed_sends_only_the_items_that_did_not_end_well(tmp_path: Path) -> None:
    from tests.test_lang_failure import FLAKY

    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {
        "kind": "command",
        "argv": [sys.executable, "-c", FLAKY],  # fails on its first call only
        "env": {"FLAKY_COUNTER": str(tmp_path / "count")},
    }
    cfg = load_config(write_config(tmp_path, raw))
    path = tmp_path / "each.yaml"
    path.write_text(
        "name: each\ncaller: manager\nsteps:\n"
        "  - {id: each, agent: webster, for_each: \"'a, b, c'\", max_parallel: 1,\n"
        "     task: '{{ item }}'}\n"
        "  - {id: after, agent: secretary, depends_on: [each], task: '{{ steps.each.results }}'}\n"
    )
    with open_delegator(cfg) as d:
        runner = WorkflowRunner(cfg, d)
        first = runner.start(prepare(cfg, str(path), {}), RunOptions())
        assert first.state is RunState.FAILED
        again = runner.resume(first.run_id, RunOptions(retry_failed=True))
    assert again.state is RunState.COMPLETE, again.summary
    items = json.loads((again.run_dir / "each.json").read_text())["items"]
    assert [(i["item"], i["status"], i["delegation_run_id"][-4:]) for i in items] == [
        ("a", "complete", "i0-2"),
        ("b", "complete", "i1-1"),
        ("c", "complete", "i2-1"),
    ]
    assert (tmp_path / "count").read_text() == "4"  # three items, one of them twice


def test_record_a_fan_out_run_then_test_it_offline(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    result = _run(cfg, "fan-out", {"materials": "Zerodur, ULE"})
    out = tmp_path / "fx"
    runner = CliRunner()
    c = ["--config", str(cfg.path)]
    res = runner.invoke(workflow, ["test", "--record", result.run_id, "--fixtures", str(out), *c])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == [
        "compare.json",
        "expect.json",
        "follow.0.json",
        "follow.1.json",
        "inputs.json",
        "research.0.json",
        "research.1.json",
    ]
    res = runner.invoke(
        workflow,
        [
            "test",
            str(HERE / "fan-out.yaml"),
            "--fixtures",
            str(out),
            "--expect",
            str(out / "expect.json"),
            *c,
        ],
    )
    assert res.exit_code == 0, res.output


def test_an_item_that_asks_parks_the_step_until_answered(tmp_path: Path) -> None:
    """Each item's agent asks; the step parks on one question at a time, and each answer
    goes to the item that asked it when the run is resumed."""
    from engine.ask import answer_step
    from engine.config import load_config
    from engine.delegate import open_delegator
    from engine.runner import RunOptions, RunState, WorkflowRunner, prepare
    from engine.runs import run_status
    from tests.helpers import demo_config, write_config
    from tests.test_real_agents import AGENT

    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {
        "kind": "command",
        "argv": [sys.executable, str(AGENT), "ask"],
        "env": {"AGENT_STATE": str(tmp_path / "state")},
        "timeout": 30,
        "fallback_handoff": False,
    }
    cfg = load_config(write_config(tmp_path, raw))
    wf = tmp_path / "wf.yaml"
    wf.write_text(
        json.dumps(
            {
                "name": "wf",
                "caller": "manager",
                "inputs": {"m": {"default": "Zerodur, ULE"}},
                "steps": [
                    {
                        "id": "research",
                        "agent": "webster",
                        "for_each": "inputs.m",
                        "task": "CTE of {{ item }}",
                    },
                    {
                        "id": "rank",
                        "agent": "tech-lead",
                        "depends_on": ["research"],
                        "task": "{{ steps.research.result }}",
                    },
                ],
            }
        )
    )
    with open_delegator(cfg) as d:
        runner = WorkflowRunner(cfg, d)
        first = runner.start(prepare(cfg, str(wf), {}), RunOptions())
        rid = first.run_id
        assert first.state is RunState.WAITING_INPUT
        research = first.summary["steps"]["research"]
        assert research["status"] == "waiting_input"
        assert research["question"]["text"] == "Which temperature range?"
        assert first.summary["steps"]["rank"]["status"] == "pending"
        assert run_status(cfg, rid)["steps"]["research"]["status"] == "waiting_input"
        answer_step(cfg, rid, "research", "0-50 °C", by="manager")
        second = runner.resume(rid, RunOptions())
        assert second.state is RunState.WAITING_INPUT  # item 1 asked too
        answer_step(cfg, rid, "research", "20 °C", by="manager")
        done = runner.resume(rid, RunOptions())
    assert done.state is RunState.COMPLETE, done.summary
    record = d.store.read_step(rid, "research")
    results = [i["handoff"]["result"] for i in record["items"]]
    assert results == ["CTE over 0-50 °C", "CTE over 20 °C"]
    assert [i["attempts"] for i in record["items"]] == [2, 2]
