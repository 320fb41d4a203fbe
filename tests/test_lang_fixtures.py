"""`workflow test`: a whole workflow run offline from fixture files, nothing dispatched.

The three shipped templates are tested through it (every branch of material-trade-study's
confidence gate); bad fixtures are refused with their file and key; `--record` turns a real
run on the local gateway into fixtures that pass.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.cli import workflow
from engine.config import Config, load_config
from engine.delegate import open_delegator
from engine.runner import RunOptions, RunState, WorkflowRunner, prepare
from tests.helpers import demo_config, write_config

FIXTURES = Path(__file__).parent / "workflows" / "fixtures"
CASES = sorted(p for p in FIXTURES.glob("*/*") if p.is_dir())
DOCS = Path(__file__).resolve().parent.parent / "docs" / "workflows.md"


@pytest.fixture()
def cfg(tmp_path: Path) -> Config:
    return load_config(write_config(tmp_path, demo_config(tmp_path)))


def _wf(cfg: Config, *args: str) -> Any:
    return CliRunner().invoke(workflow, [*args, "--config", str(cfg.path)], catch_exceptions=False)


def test_every_branch_of_the_confidence_gate_has_a_case() -> None:
    names = {p.name for p in (FIXTURES / "material-trade-study").iterdir()}
    assert {"high", "medium", "low-approved", "low-rejected", "low-unanswered"} <= names
    assert {p.parent.name for p in CASES} == {
        "material-trade-study",
        "quick-research",
        "design-review",
        "material-survey",
    }


@pytest.mark.parametrize("case", CASES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_templates_offline(cfg: Config, case: Path) -> None:
    res = _wf(
        cfg,
        "test",
        case.parent.name,
        "--fixtures",
        str(case),
        "--expect",
        str(case / "expect.yaml"),
        "--json",
    )
    report = json.loads(res.stdout)
    assert res.exit_code == 0, report["expectations"]
    assert report["expectations"] == []
    # nothing was dispatched: no delegation record, no pending envelope, no run
    assert not cfg.handoffs_dir.exists() or not any(cfg.handoffs_dir.rglob("*.json"))


def test_the_report_says_what_ran_and_why(cfg: Config) -> None:
    case = FIXTURES / "material-trade-study" / "research-timeout"
    res = _wf(cfg, "test", "material-trade-study", "--fixtures", str(case))
    assert res.exit_code == 4  # without --expect: the run's own exit code (timeouts only)
    assert res.stdout.splitlines()[:5] == [
        f"Test of `material-trade-study` with the fixtures in `{case}`: nothing was sent.",
        "  ✘ research  timeout: the fixture says `timeout`  [research.yaml, 2 attempts]",
        "  ↷ evaluate  skipped: upstream `research` ended timeout",
        "  ↷ audit     skipped: upstream `evaluate` ended skipped",
        "run: failed",
    ]


def test_a_mismatch_is_listed_and_exits_1(cfg: Config, tmp_path: Path) -> None:
    case = FIXTURES / "material-trade-study" / "low-rejected"
    expect = tmp_path / "expect.yaml"
    expect.write_text(
        "status: complete\nsteps: {audit: complete, evalute: complete}\n"
        "outputs: {recommendation: ULE}\n"
    )
    res = _wf(cfg, "test", "material-trade-study", "--fixtures", str(case), "--expect", str(expect))
    assert res.exit_code == 1
    assert res.stdout.split("\n\n")[-1].splitlines() == [
        f"expectations of `{expect}`: 4 not met:",
        "  ✘ the run is `failed`, expected `complete`.",
        "  ✘ step `audit` is `rejected` (gate rejected: not worth an audit until the "
        "homogeneity data is in), expected `complete`.",
        "  ✘ no step `evalute`; did you mean `evaluate`?",
        "  ✘ no output `recommendation` (the run is `failed`).",
    ]


def test_inputs_on_the_command_line_win_and_missing_fixtures_error(
    cfg: Config, tmp_path: Path
) -> None:
    (tmp_path / "fx").mkdir()
    (tmp_path / "fx" / "research.json").write_text('{"result": "R {{ 7*7 }}"}')
    res = _wf(
        cfg,
        "test",
        "quick-research",
        "--fixtures",
        str(tmp_path / "fx"),
        "-i",
        "query=CTE",
        "--json",
    )
    report = json.loads(res.stdout)
    assert report["inputs"]["query"] == "CTE"
    assert report["steps"]["research"]["status"] == "complete"
    assert report["steps"]["verify"] == {
        "status": "errored",
        "why": f"no fixture for step `verify` in `{tmp_path / 'fx'}` (looked for "
        "`verify.json`, `verify.yaml`, `verify.yml`)",
        "fixture": None,
        "attempts": 1,
    }
    assert res.exit_code == 1


BAD = [
    (
        {"reserch.yaml": "status: complete"},
        "is named for no step; did you mean `research`? Steps: research, verify.",
    ),
    (
        {"research.yaml": "stauts: complete"},
        ": unknown key `stauts`; did you mean `status`? A fixture holds: status, outcome, "
        "result, confidence, notes, artifacts, question, validation, data, outputs, usage.",
    ),
    (
        {"research.yaml": "status: done"},
        ": `status` is `done`. It is one of: complete, partial, blocked, failed.",
    ),
    (
        {"research.yaml": "outcome: timedout"},
        ": `outcome` is `timedout`; did you mean `timeout`? It is one of: timeout, unusable, "
        "lost, invalid, errored.",
    ),
    (
        {"research.yaml": "status: failed\noutcome: timeout"},
        " has both `status` (what the agent said) and `outcome` (an ending without a usable "
        "handoff); keep one.",
    ),
    (
        {"research.yaml": "- status: failed\n- confidence: sure"},
        " item 2: `confidence` is `sure`. It is one of: high, medium, low.",
    ),
    ({"research.yaml": "[]"}, " is an empty list; give at least one ending."),
    (
        {"gates.yaml": "verify: maybe"},
        ": the answer for `verify` is `approved`, `rejected`, or `{decision: rejected, reason: "
        "...}`.",
    ),
    ({"gates.yaml": "verfy: approved"}, ": `verfy` is no step; did you mean `verify`?"),
    ({"research.json": "{"}, " is not valid JSON: "),
]


@pytest.mark.parametrize(("files", "message"), BAD, ids=[f"bad-{i}" for i in range(len(BAD))])
def test_bad_fixtures_are_refused_with_file_and_key(
    cfg: Config, tmp_path: Path, files: dict[str, str], message: str
) -> None:
    fx = tmp_path / "fx"
    fx.mkdir()
    for name, text in files.items():
        (fx / name).write_text(text)
    res = CliRunner().invoke(
        workflow,
        [
            "test",
            "quick-research",
            "--fixtures",
            str(fx),
            "-i",
            "query=q",
            "--config",
            str(cfg.path),
        ],
    )
    assert res.exit_code == 2, res.output
    assert message in res.output, res.output
    assert "Traceback" not in res.output


def test_bad_expectations_and_usage(cfg: Config, tmp_path: Path) -> None:
    case = FIXTURES / "quick-research" / "complete"
    expect = tmp_path / "e.yaml"
    expect.write_text("stats: complete\n")
    res = CliRunner().invoke(
        workflow,
        [
            "test",
            "quick-research",
            "--fixtures",
            str(case),
            "--expect",
            str(expect),
            "--config",
            str(cfg.path),
        ],
    )
    assert res.exit_code == 2 and "unknown key `stats`; did you mean `status`?" in res.output
    res = CliRunner().invoke(workflow, ["test", "--fixtures", str(case), "--config", str(cfg.path)])
    assert res.exit_code == 2 and "needs a workflow NAME (or `--record RUN`)" in res.output
    res = CliRunner().invoke(
        workflow,
        ["test", "quick-research", "--fixtures", str(tmp_path / "none"), "--config", str(cfg.path)],
    )
    assert res.exit_code == 2 and "(`--fixtures`) does not exist" in res.output


def test_record_a_real_run_then_test_it_offline(cfg: Config, tmp_path: Path) -> None:
    prepared = prepare(
        cfg,
        "material-trade-study",
        {"materials": "Zerodur, ULE", "requirements": "CTE < 0.01 ppm/K"},
    )
    with open_delegator(cfg) as d:
        result = WorkflowRunner(cfg, d).start(prepared, RunOptions())
    assert result.state is RunState.COMPLETE
    out = tmp_path / "recorded"
    res = _wf(cfg, "test", "--record", result.run_id, "--fixtures", str(out))
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == [
        "audit.json",
        "evaluate.json",
        "expect.json",
        "inputs.json",
        "research.json",
    ]
    research = json.loads((out / "research.json").read_text())
    assert research[0]["status"] == "complete" and "demo output" in research[0]["result"]
    records = sorted(cfg.handoffs_dir.glob("*.json"))
    res = _wf(
        cfg,
        "test",
        "material-trade-study",
        "--fixtures",
        str(out),
        "--expect",
        str(out / "expect.json"),
    )
    assert res.exit_code == 0, res.output
    assert sorted(cfg.handoffs_dir.glob("*.json")) == records  # nothing new was sent
    # a second record into the same directory is refused
    res = _wf(cfg, "test", "--record", result.run_id, "--fixtures", str(out))
    assert res.exit_code == 2 and "already holds" in res.output
    res = _wf(
        cfg,
        "test",
        "quick-research",
        "--record",
        result.run_id,
        "--fixtures",
        str(tmp_path / "other"),
    )
    assert res.exit_code == 2
    assert "is of workflow `material-trade-study`, not `quick-research`" in res.output


def test_docs_show_a_report_as_printed(cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DOCS.parent.parent)  # the documented paths are from the repository
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(r"<!-- test-output: (\S+) -->\n```text\n(.*?)```", text, re.S)
    assert match, "docs/workflows.md lost its `workflow test` example"
    case = FIXTURES / match.group(1)
    res = _wf(
        cfg,
        "test",
        case.parent.name,
        "--fixtures",
        f"tests/workflows/fixtures/{match.group(1)}",
        "--expect",
        f"tests/workflows/fixtures/{match.group(1)}/expect.yaml",
    )
    assert res.exit_code == 0
    assert res.stdout == match.group(2)


def test_validation_and_questions_come_from_fixtures(cfg: Config, tmp_path: Path) -> None:
    wf = tmp_path / "checked.yaml"
    wf.write_text(
        "name: checked\ncaller: manager\nsteps:\n"
        "  - {id: research, agent: webster, validate: auditor, task: find}\n"
        "  - {id: ask, agent: secretary, task: ask}\n"
    )
    fx = tmp_path / "fx"
    fx.mkdir()
    (fx / "research.yaml").write_text("result: R\nvalidation: rejected\n")
    (fx / "ask.yaml").write_text("status: blocked\nquestion: Which range?\n")
    res = _wf(cfg, "test", str(wf), "--fixtures", str(fx), "--json")
    report = json.loads(res.stdout)
    assert report["steps"]["research"]["status"] == "failed"
    assert report["steps"]["research"]["why"].startswith(
        "validator `auditor` rejected the result: "
    )
    assert report["steps"]["ask"]["status"] == "waiting_input"
    assert report["status"] == "waiting_input" and res.exit_code == 3
    (fx / "research.yaml").write_text("result: R\n")  # validation approved by default
    report = json.loads(_wf(cfg, "test", str(wf), "--fixtures", str(fx), "--json").stdout)
    assert report["steps"]["research"]["status"] == "complete"
