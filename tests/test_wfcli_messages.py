"""Messages of `workflow` that say what to do: a decimal default quoted as written, the
`retry.on` list and check agreeing on `blocked`, resume of a run whose template moved,
a near miss for an input given in the wrong case, `when: true`, and "must be a string"."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from engine.cli import workflow

CONFIG = {
    "handoffs_dir": "./handoffs",
    "pool": {"adaptive": False},  # not the test host's load average
    "gateway": {"embedded": True,
                "agents": {"echo": {"kind": "echo"}, "checker": {"kind": "echo"}}},
    "agents": {"boss": {"url": "local"}, "echo": {"url": "local"}, "checker": {"url": "local"}},
    "acl": {"boss": ["*"]},
}  # fmt: skip
HEAD = "name: m\ncaller: boss\n"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "orchestrator.yaml").write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _cli(*args: str) -> Any:
    return CliRunner(env={"ORCHESTRATOR_CONFIG": None, "ORCH_SERVER": None}).invoke(
        workflow, list(args)
    )


def _validate(home: Path, text: str) -> Any:
    (home / "m.yaml").write_text(HEAD + text, encoding="utf-8")
    return _cli("validate", "m.yaml")


def test_a_decimal_default_is_quoted_as_written(home: Path) -> None:
    res = _validate(
        home,
        "version: 1.10\ninputs:\n  n: {default: 0.10}\n  m:\n    default: 2.50  # x\n"
        "steps:\n  - {id: a, agent: echo, task: x}\n",
    )
    assert res.exit_code == 2
    assert 'quote it as written, `default: "0.10"`.' in res.stderr
    assert 'quote it as written, `default: "2.50"`.' in res.stderr
    assert 'quote it as written, `version: "1.10"`.' in res.stderr
    assert '"0.1"' not in res.stderr


def test_retry_on_lists_only_what_it_takes(home: Path) -> None:
    res = _validate(
        home, "steps:\n  - {id: a, agent: echo, task: x, retry: {max: 1, on: [blocked, timout]}}\n"
    )
    assert res.exit_code == 2
    assert res.stderr.splitlines()[1:] == [
        "  - step `a`: `steps[0].retry.on[1]`: `timout` is not one of `failed`, `timeout`, "
        "`lost`, `unusable`, `invalid`; did you mean `timeout`?",
        "  - step `a`: `retry.on` cannot hold `blocked`: a blocked agent needs something (an "
        "answer, a permission) that sending the same task again does not give it.",
    ]


def test_the_schemas_retry_on_is_the_engines() -> None:
    from engine.schemas import schema as load_schema
    from engine.workflow import RETRY_ON

    schema = load_schema("workflow")
    assert tuple(schema["$defs"]["retry"]["properties"]["on"]["items"]["enum"]) == RETRY_ON


@pytest.mark.parametrize(
    ("when", "shown", "kind"),
    [("true", "true", "a boolean"), ("false", "false", "a boolean"), ("3", "3", "a number")],
)
def test_when_true_says_to_quote_it(home: Path, when: str, shown: str, kind: str) -> None:
    res = _validate(home, f"steps:\n  - {{id: a, agent: echo, task: x, when: {when}}}\n")
    assert res.exit_code == 2
    assert (
        f"step `a`: `steps[0].when` must be a string, a condition written as text (`when: "
        f'{shown}` is read as {kind}); quote it, `when: "{shown}"`, or write an expression, '
        "e.g. `when: steps.a.confidence == 'high'`."
    ) in res.stderr
    res = _validate(home, f'steps:\n  - {{id: a, agent: echo, task: x, when: "{when}"}}\n')
    assert res.exit_code == 0, res.stderr


def test_schema_type_errors_say_must_be_a(home: Path) -> None:
    res = _validate(home, "steps:\n  - {id: a, agent: echo, task: x, timeout: [1]}\n")
    assert res.exit_code == 2
    assert "`steps[0].timeout` must be a number." in res.stderr
    assert "of type" not in res.stderr


def test_an_input_in_the_wrong_case_gets_a_near_miss(home: Path) -> None:
    (home / "m.yaml").write_text(
        HEAD + "inputs:\n  n: {required: false}\nsteps:\n  - {id: a, agent: echo, task: x}\n"
    )
    res = _cli("run", "m.yaml", "-i", "N=1", "--dry-run")
    assert res.exit_code == 2
    assert "unknown input `N` (`--input N=...`); did you mean `n`? `m` takes: `n`." in res.stderr


def test_resume_after_the_template_moved_says_what_to_do(home: Path) -> None:
    (home / "m.yaml").write_text(
        HEAD + "steps:\n  - {id: a, agent: echo, task: x}\n"
        "  - {id: g, agent: checker, task: y, depends_on: [a], gate: {prompt: ok?}}\n"
    )
    res = _cli("run", "m.yaml", "--non-interactive", "-q", "--json")
    assert res.exit_code == 3, res.output
    rid = json.loads(res.stdout)["runId"]
    (home / "m.yaml").rename(home / "moved.yaml")
    res = _cli("resume", rid)
    assert res.exit_code == 2
    assert res.stderr == (
        f"error: run `{rid}` cannot resume: its template `{home / 'm.yaml'}` (`workflow_path` "
        "in its run.json) does not exist any more. Put the file back there and run "
        f"`workflow resume {rid}` again, or start a new run from where the file is now: "
        "`workflow run NEW-PATH`.\n"
    )
    (home / "moved.yaml").rename(home / "m.yaml")
    assert _cli("approve", rid, "g").exit_code == 0
    assert _cli("resume", rid, "-q").exit_code == 0
