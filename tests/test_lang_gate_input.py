"""Typed gate input: the approver gives a value, checked against the gate's schema, that
downstream templates read as `steps.<id>.input`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.cli import workflow
from engine.config import load_config
from engine.delegate import open_delegator
from engine.errors import WorkflowError
from engine.planview import dry_run_text
from engine.runner import RunOptions, RunState, WorkflowRunner, prepare
from engine.yamlio import parse_yaml
from tests.helpers import demo_config, write_config
from tests.test_lang_failure import _plan, _problems

HERE = Path(__file__).parent / "workflows" / "lang"


def _raw() -> Any:
    path = HERE / "gate-input.yaml"
    return parse_yaml(path.read_text(), source=path, error=WorkflowError)[0]


def test_the_dry_run_shows_the_input_and_renders_an_example() -> None:
    plan, renderer = _plan(_raw())
    text = dry_run_text(plan, renderer)
    assert '        input: {"type": "object", "required": ["depth"], ' in text
    assert "        | a quick report\n" in text  # an enum's first value


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda r: r["steps"][2].update(
                task="{{ steps.research.input }}", depends_on=["research", "review"]
            ),
            "step `report` reads `steps.research.input` in `task` but `research` has no gate "
            "that asks for an input; give its gate `input: {schema: ...}`.",
        ),
        (
            lambda r: r["steps"][2].update(task="{{ steps.review.input.detph }}"),
            "step `report` reads `steps.review.input.detph` in `task` but its gate's input "
            "schema declares no property `detph` at the top of `input`; did you mean `depth`? "
            "Properties there: `depth`.",
        ),
        (
            lambda r: r["steps"][1]["gate"]["input"].update(schema={"type": "obj"}),
            "step `review`: `gate.input.schema` is not a valid JSON Schema at `/type`: 'obj' is "
            "not valid under any of the given schemas.",
        ),
    ],
    ids=["no-input", "unknown-property", "bad-schema"],
)
def test_invalid_gate_inputs(change: Any, message: str) -> None:
    raw = _raw()
    change(raw)
    try:
        problems = _problems(raw)
    except WorkflowError as exc:
        problems = list(exc.problems)
    assert message in problems, problems


def test_approve_with_an_input_then_resume(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, demo_config(tmp_path)))
    c = ["--config", str(cfg.path)]
    cli = CliRunner()
    res = cli.invoke(
        workflow,
        ["run", str(HERE / "gate-input.yaml"), "--non-interactive", "--json", *c],
        catch_exceptions=False,
    )
    assert res.exit_code == 3
    run_id = json.loads(res.stdout)["runId"]
    res = cli.invoke(workflow, ["approve", run_id, "review", *c])
    assert res.exit_code == 2
    assert "step `review`'s gate needs an input matching its schema" in res.output
    assert "no value was given (`--input VALUE`)" in res.output
    res = cli.invoke(workflow, ["approve", run_id, "review", "--input", '{"depth": "deep"}', *c])
    assert res.exit_code == 2 and "`/depth`: 'deep' is not one of ['quick', 'full']" in res.output
    res = cli.invoke(workflow, ["approve", run_id, "review", "--input", '{"depth": "full"}', *c])
    assert res.exit_code == 0, res.output
    res = cli.invoke(workflow, ["resume", run_id, "--json", *c], catch_exceptions=False)
    summary = json.loads(res.stdout)
    assert summary["status"] == "complete"
    assert summary["steps"]["review"]["gate"]["input"] == {"depth": "full"}
    drid = summary["steps"]["report"]["delegation_run_id"]
    task = json.loads((cfg.handoffs_dir / f"{drid}.json").read_text())["envelope"]["task"]
    assert task == "a full report"


def test_an_approver_gives_the_value_and_approve_up_front_is_refused(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, demo_config(tmp_path)))
    prepared = prepare(cfg, str(HERE / "gate-input.yaml"), {})
    seen = []

    def approver(req: Any) -> Any:
        seen.append(req.input_schema)
        return ("approved", {"depth": "quick"})

    with open_delegator(cfg) as d:
        result = WorkflowRunner(cfg, d, approver=approver).start(prepared, RunOptions())
        with pytest.raises(Exception) as info:
            WorkflowRunner(cfg, d).start(prepared, RunOptions(approve=frozenset({"review"})))
    assert seen and seen[0]["required"] == ["depth"]
    assert result.state is RunState.COMPLETE
    assert result.summary["steps"]["report"]["status"] == "skipped"  # depth quick
    assert "its gate asks for an input" in str(info.value)


def test_workflow_test_gives_the_input_from_gates_yaml(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, demo_config(tmp_path)))
    fx = tmp_path / "fx"
    fx.mkdir()
    for step in ("research", "review", "report"):
        (fx / f"{step}.yaml").write_text("result: R\n")
    (fx / "gates.yaml").write_text("review: {decision: approved, input: {depth: full}}\n")
    res = CliRunner().invoke(
        workflow,
        [
            "test",
            str(HERE / "gate-input.yaml"),
            "--fixtures",
            str(fx),
            "--json",
            "--config",
            str(cfg.path),
        ],
        catch_exceptions=False,
    )
    report = json.loads(res.stdout)
    assert report["steps"]["report"]["status"] == "complete"
