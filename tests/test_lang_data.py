"""Structured results: `result_schema`, the handoff's `data`, `steps.x.data` in templates.

The loader refuses a schema that is not one; the planner checks what templates read of
`data` against the declared schema; on the local gateway a real command agent returns
`data`, gets one corrective note when it does not match, and the step ends `invalid` with
the JSON pointer errors when it never does.
"""

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
from engine.runner import RunOptions, RunState, WorkflowRunner, data_problems, prepare
from engine.store.file import read_events
from engine.workflow import workflow_from_dict
from tests.helpers import demo_config, write_config
from tests.test_lang_failure import _plan, _problems

SCHEMA = {
    "type": "object",
    "required": ["cte", "unit"],
    "properties": {
        "cte": {"type": "number"},
        "unit": {"enum": ["ppm/K", "ppb/K"]},
        "sources": {
            "type": "array",
            "items": {"type": "object", "properties": {"url": {"type": "string"}}},
        },
    },
}
A = {"id": "a", "agent": "webster", "task": "a", "result_schema": SCHEMA}
#: A command agent that writes its handoff with `data` from DATA_GOOD, or DATA_BAD until
#: it is sent a corrective note (engine.repair's marker in its task).
DATA_AGENT = """
import json, os, pathlib
task = os.environ["ORCH_TASK"]
good = "--- HANDOFF REPAIR ---" in task or os.environ.get("DATA_BAD") is None
data = json.loads(os.environ["DATA_GOOD" if good else "DATA_BAD"])
path = pathlib.Path(os.environ["ORCH_HANDOFF_PATH"])
tmp = path.with_name("." + path.name + ".tmp")
tmp.write_text(json.dumps({"schemaVersion": "1.1", "runId": os.environ["ORCH_RUN_ID"],
    "agent": os.environ["ORCH_AGENT"], "key": os.environ["ORCH_HANDOFF_KEY"],
    "status": "complete", "result": "found it", "data": data,
    "confidence": "high", "timestamp": "2026-11-21T00:00:00Z"}))
os.replace(tmp, path)
"""


def _wf(steps: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    return {"name": "t", "caller": "manager", "steps": steps, **top}


def _then(task: str, **extra: Any) -> dict[str, Any]:
    return {"id": "b", "agent": "secretary", "depends_on": ["a"], "task": task, **extra}


# --------------------------------------------------------------------------- planner


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            {"type": "obj"},
            "step `a`: `result_schema` is not a valid JSON Schema at `/type`: "
            "'obj' is not valid under any of the given schemas.",
        ),
        (
            {"required": "cte"},
            "step `a`: `result_schema` is not a valid JSON Schema at "
            "`/required`: 'cte' is not of type 'array'.",
        ),
        (
            {"properties": {"n": {"minimum": "0"}}},
            "step `a`: `result_schema` is not a valid "
            "JSON Schema at `/properties/n/minimum`: '0' is not of type 'number'.",
        ),
        ("object", "step `a`: `steps[0].result_schema` must be an object."),
    ],
    ids=["bad-type", "bad-required", "nested", "not-a-mapping"],
)
def test_invalid_result_schemas(schema: Any, message: str) -> None:
    with pytest.raises(WorkflowError) as info:
        workflow_from_dict(_wf([{**A, "result_schema": schema}]), path=Path("t.yaml"))
    assert info.value.problems == [message]


@pytest.mark.parametrize(
    ("steps", "top", "message"),
    [
        (
            [{**A, "result_schema": None}, _then("{{ steps.a.data.cte }}")],
            {},
            "step `b` reads `steps.a.data.cte` in `task` but `a` declares no `result_schema`; "
            "give `a` one, or read `steps.a.result`.",
        ),
        (
            [A, _then("{{ steps.a.data.cet }}")],
            {},
            "step `b` reads `steps.a.data.cet` in `task` but the `result_schema` declares no "
            "property `cet` at the top of `data`; did you mean `cte`? Properties there: `cte`, "
            "`unit`, `sources`.",
        ),
        (
            [A, _then("x", when="steps.a.data.sources[0].uri != ''")],
            {},
            "step `b` reads `steps.a.data.sources[0].uri` in `when` but the `result_schema` "
            "declares no property `uri` at `data.sources[0]`; did you mean `url`? Properties "
            "there: `url`.",
        ),
        (
            [A],
            {"outputs": {"cte": "{{ steps.a.data.ct }}"}},
            "output `cte` reads `steps.a.data.ct` but the `result_schema` declares no property "
            "`ct` at the top of `data`; did you mean `cte`? Properties there: `cte`, `unit`, "
            "`sources`.",
        ),
        (
            [{**A, "for_each": "'x, y'"}, _then("{{ steps.a.data[0].unt }}")],
            {},
            "step `b` reads `steps.a.data[0].unt` in `task` but the `result_schema` declares "
            "no property `unt` at `data[0]`; did you mean `unit`? Properties there: `cte`, `unit`, "
            "`sources`.",
        ),
    ],
    ids=["no-schema", "unknown-property", "nested-in-when", "output", "fan-out-item"],
)
def test_data_reads_are_checked_against_the_schema(
    steps: list[dict[str, Any]], top: dict[str, Any], message: str
) -> None:
    steps = [{k: v for k, v in s.items() if v is not None} for s in steps]
    assert message in _problems(_wf(steps, **top))


def test_the_dry_run_shows_the_schema_and_example_data() -> None:
    plan, renderer = _plan(
        _wf(
            [
                A,
                _then(
                    "CTE {{ steps.a.data.cte }} {{ steps.a.data.unit }} from "
                    "{{ steps.a.data.sources[0].url }}"
                ),
            ]
        )
    )
    text = dry_run_text(plan, renderer)
    assert '      data: {"type": "object", "required": ["cte", "unit"], ' in text
    assert "        | CTE 0 ppm/K from <a.data.sources[0].url>\n" in text


@pytest.mark.parametrize(
    ("handoff", "problems"),
    [
        ({"data": {"cte": 0.01, "unit": "ppm/K"}}, []),
        ({}, ["the handoff has no `data`"]),
        (
            {"data": {"cte": "low", "unit": "K"}},
            [
                "`/cte`: 'low' is not of type 'number'",
                "`/unit`: 'K' is not one of ['ppm/K', 'ppb/K']",
            ],
        ),
        ({"data": {"unit": "ppm/K"}}, ["`/`: 'cte' is a required property"]),
    ],
)
def test_data_problems(handoff: dict[str, Any], problems: list[str]) -> None:
    assert data_problems(SCHEMA, handoff) == problems


# --------------------------------------------------------------------------- end to end


def _cfg(tmp_path: Path, good: Any, bad: Any = None) -> Config:
    raw = demo_config(tmp_path)
    env = {"DATA_GOOD": json.dumps(good)}
    if bad is not None:
        env["DATA_BAD"] = json.dumps(bad)
    raw["gateway"]["agents"]["webster"] = {
        "kind": "command",
        "argv": [sys.executable, "-c", DATA_AGENT],
        "env": env,
        "fallback_handoff": False,
    }
    return load_config(write_config(tmp_path, raw))


def _run(cfg: Config, tmp_path: Path, **step: Any) -> Any:
    path = tmp_path / "wf.yaml"
    raw = _wf([{**A, **step}, _then("CTE {{ steps.a.data.cte }} {{ steps.a.data.unit }}")])
    path.write_text(json.dumps(raw))
    with open_delegator(cfg) as d:
        return WorkflowRunner(cfg, d).start(prepare(cfg, str(path), {}), RunOptions())


def _task(cfg: Config, result: Any, step: str) -> str:
    drid = result.summary["steps"][step]["delegation_run_id"]
    return str(json.loads((cfg.handoffs_dir / f"{drid}.json").read_text())["envelope"]["task"])


def test_data_reaches_the_next_step(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, {"cte": 0.007, "unit": "ppm/K"})
    result = _run(cfg, tmp_path)
    assert result.state is RunState.COMPLETE
    assert _task(cfg, result, "b") == "CTE 0.007 ppm/K"
    task = _task(cfg, result, "a")
    assert "Put your structured result in the handoff's `data` field" in task
    assert '"required": [\n    "cte",\n    "unit"\n  ]' in task
    rec = json.loads((result.run_dir / "a.json").read_text())
    assert rec["handoff"]["data"] == {"cte": 0.007, "unit": "ppm/K"}


def test_a_mismatch_gets_a_corrective_note_then_passes(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, {"cte": 0.007, "unit": "ppm/K"}, bad={"cte": "low"})
    result = _run(cfg, tmp_path)
    assert result.state is RunState.COMPLETE
    assert result.summary["steps"]["a"]["attempts"] == 2
    second = _task(cfg, result, "a")
    assert "--- HANDOFF REPAIR ---\nRepair 1 of 1: the handoff's `data` does not match" in second
    assert "  - `/`: 'unit' is a required property\n" in second
    refused = [
        e for e in read_events(result.run_dir / "events.jsonl") if e["event"] == "step_data_refused"
    ]
    assert [(e["attempt"], e["problems"]) for e in refused] == [
        (1, ["`/`: 'unit' is a required property", "`/cte`: 'low' is not of type 'number'"])
    ]


def test_data_that_never_matches_ends_invalid_with_the_pointers(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, {"cte": "low"}, bad={"cte": "low"})
    result = _run(cfg, tmp_path, repair_attempts=0)
    step = result.summary["steps"]["a"]
    assert step["status"] == "invalid" and step["attempts"] == 1
    assert step["error"] == (
        "its `data` does not match the step's `result_schema`: `/`: 'unit' is a required "
        "property; `/cte`: 'low' is not of type 'number'"
    )
    assert result.summary["steps"]["b"]["status"] == "skipped"
    assert result.state is RunState.FAILED


def test_the_graph_marks_a_step_that_returns_data() -> None:
    from engine.planview import graph_text

    spec = workflow_from_dict(_wf([A]), path=Path("t.yaml"))
    assert 'n0["a<br/>webster<br/>returns data"]' in graph_text(spec, "mermaid")
