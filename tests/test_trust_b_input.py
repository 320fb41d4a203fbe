"""Empty tasks and bad names in configs: refused with one paragraph, never sent.

The real CLI (click's runner) on the embedded gateway with the demo agents.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from engine.cli import orchestrate, workflow
from tests.helpers import demo_config, write_config


@pytest.mark.parametrize("task", ["", "   ", "\n\t "])
def test_an_empty_task_is_refused_and_nothing_is_sent(tmp_path: Path, task: str) -> None:
    cfg = write_config(tmp_path, demo_config(tmp_path))
    res = CliRunner().invoke(
        orchestrate, ["webster", task, "--caller", "manager", "--config", str(cfg)]
    )
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: the task is empty (or only whitespace)")
    assert res.output.count("\n") == 1  # one paragraph
    handoffs = tmp_path / "handoffs"
    assert not handoffs.exists() or not list(handoffs.rglob("orch-*.json"))


def _workflow(tmp_path: Path, task: str) -> Path:
    path = tmp_path / "wf.yaml"
    doc = {
        "name": "empty",
        "caller": "manager",
        "inputs": {"q": {"default": ""}},
        "steps": [
            {"id": "find", "agent": "webster", "task": "Find CTE of Zerodur"},
            {"id": "ask", "agent": "webster", "task": task, "depends_on": ["find"]},
        ],
    }
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def test_a_whitespace_task_template_is_refused_by_validate(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, demo_config(tmp_path))
    wf = _workflow(tmp_path, "  \n ")
    res = CliRunner().invoke(workflow, ["validate", str(wf), "--config", str(cfg)])
    assert res.exit_code == 2, res.output
    assert "step `ask`: `task` is only whitespace" in res.output


@pytest.mark.parametrize("task", ["{{ inputs.q }}", "{{ steps.find.result[:0] }}"])
def test_a_task_rendering_empty_at_run_time_errors_the_step(tmp_path: Path, task: str) -> None:
    """Placeholders cannot tell whether a task will render empty, so the planner does not
    refuse it; the step errors when it would be sent, and sends nothing."""
    cfg = write_config(tmp_path, demo_config(tmp_path))
    wf = _workflow(tmp_path, task)
    res = CliRunner().invoke(
        workflow, ["run", str(wf), "--non-interactive", "--json", "--config", str(cfg)]
    )
    assert res.exit_code == 1, res.output
    summary = json.loads(res.output[res.output.index("{") :])
    assert summary["steps"]["find"]["status"] == "complete"
    step = summary["steps"]["ask"]
    assert step["status"] == "errored"
    assert "step `ask`'s task rendered to empty text, so nothing was sent" in step["error"]
    assert not list((tmp_path / "handoffs").rglob("*-ask-*.json"))


_RULE = (
    "use lowercase letters, digits, `-` and `_` (1 to 64 characters, the first a letter or digit)."
)


@pytest.mark.parametrize(
    ("config", "line"),
    [
        (
            'agents:\n  "../../../../tmp/evil": {url: local}\n',
            f"`agents` has a key `../../../../tmp/evil` that is not allowed: {_RULE}",
        ),
        (
            'agents:\n  "evil\\e]0;x\\a": {url: local}\n',
            f"`agents` has a key `evil\\x1b]0;x\\x07` that is not allowed: {_RULE}",
        ),
        (
            'agents:\n  ok: {url: local}\nacl:\n  "Bad Caller": [ok]\n',
            f"`acl` has a key `Bad Caller` that is not allowed: {_RULE}",
        ),
        (
            "agents:\n  ok: {url: local}\ngateway:\n  agents:\n"
            '    "UP": {kind: command, argv: [x]}\n',
            f"`gateway.agents` has a key `UP` that is not allowed: {_RULE}",
        ),
    ],
    ids=["path", "escape", "acl", "gateway-agents"],
)
def test_a_bad_name_in_a_config_is_named_with_the_allowed_characters(
    tmp_path: Path, config: str, line: str
) -> None:
    path = tmp_path / "orchestrator.yaml"
    path.write_text("handoffs_dir: h\n" + config, encoding="utf-8")
    res = CliRunner().invoke(orchestrate, ["show", "x", "--config", str(path)])
    assert res.exit_code == 2, res.output
    assert f"  - {line}\n" in res.output, res.output
    assert "\x1b" not in res.output


def test_a_bad_step_id_is_named_with_the_allowed_characters(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, demo_config(tmp_path))
    wf = tmp_path / "wf.yaml"
    wf.write_text("name: t\ncaller: manager\nsteps:\n  - {id: Bad Id, agent: webster, task: x}\n")
    res = CliRunner().invoke(workflow, ["validate", str(wf), "--config", str(cfg)])
    assert res.exit_code == 2, res.output
    assert f"`steps[0].id` is `Bad Id`, which is not allowed: {_RULE}" in res.output
