"""What docs/workflows.md says about `workflow test`'s folders, the shipped survey's budget
and `--retry-failed` on a cancelled run is what the commands do."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.cli import workflow
from engine.config import Config, load_config
from tests.helpers import demo_config, write_config

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "workflows.md"
SURVEY = ROOT / "engine" / "workflows" / "material-survey.yaml"
GATE = Path(__file__).parent / "workflows" / "serve" / "gate.yaml"


@pytest.fixture()
def cfg(tmp_path: Path) -> Config:
    return load_config(write_config(tmp_path, demo_config(tmp_path)))


def _wf(cfg: Config, *args: str) -> Any:
    return CliRunner().invoke(workflow, [*args, "--config", str(cfg.path)], catch_exceptions=False)


def test_the_opening_workflow_test_example_runs_as_written(
    cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    block = re.search(r"```sh\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    assert block is not None
    text = block.group(1).replace("\\\n", " ")
    line = next(x for x in text.splitlines() if x.startswith("workflow test "))
    args = shlex.split(line.split("#", 1)[0])[1:]
    assert "--expect" in args
    monkeypatch.chdir(ROOT)  # the paths are the repository's, as a reader runs them
    res = _wf(cfg, *args)
    assert res.exit_code == 0, res.output
    assert "expectations of `tests/workflows/fixtures/material-trade-study/" in res.stdout
    assert res.stdout.rstrip().endswith("all met.")


def test_a_missing_fixtures_folder_is_named_as_the_folder(cfg: Config, tmp_path: Path) -> None:
    gone = tmp_path / "mts-low"
    res = _wf(
        cfg, "test", "material-trade-study", "--fixtures", str(gone),
        "--expect", str(gone / "expect.yaml"),
    )  # fmt: skip
    assert res.exit_code == 2
    assert f"the fixtures folder `{gone}` (`--fixtures`) does not exist" in res.stderr
    assert "fixture file" not in res.stderr and "expect.yaml" not in res.stderr
    case = ROOT / "tests" / "workflows" / "fixtures" / "material-trade-study" / "high"
    res = _wf(
        cfg, "test", "material-trade-study", "--fixtures", str(case),
        "--expect", str(case / "nope.yaml"),
    )  # fmt: skip
    assert res.exit_code == 2
    assert f"expectations file (`--expect`) `{case / 'nope.yaml'}` does not exist" in res.stderr


def test_a_fixture_usage_must_be_spending(cfg: Config, tmp_path: Path) -> None:
    case = tmp_path / "case"
    case.mkdir()
    (case / "research.yaml").write_text("usage: {cost: cheap, tokens: 3}\n")
    res = _wf(cfg, "test", "quick-research", "--fixtures", str(case), "-i", "query=q")
    assert res.exit_code == 2
    assert "research.yaml" in res.stderr and "`usage` (what the delegation spent" in res.stderr


def test_the_shipped_survey_shows_fan_out_structured_results_and_a_budget(cfg: Config) -> None:
    from engine.workflow import load_workflow

    spec = load_workflow(SURVEY)
    research = next(s for s in spec.steps if s.id == "research")
    assert research.for_each and research.result_schema
    assert spec.budget is not None and spec.budget.usd == 5.0
    res = _wf(
        cfg, "run", "material-survey", "-i", "materials=Zerodur, ULE", "-i", "requirements=r",
        "--dry-run",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "Budget: $5 for the whole run" in res.stdout
    case = ROOT / "tests" / "workflows" / "fixtures" / "material-survey" / "over-budget"
    res = _wf(cfg, "test", "material-survey", "--fixtures", str(case), "--json")
    report = json.loads(res.stdout)
    assert report["status"] == "failed"
    assert report["steps"]["rank"]["status"] == "skipped"
    assert "the run's budget is spent ($6 of its $5)" in report["steps"]["rank"]["why"]
    assert report["steps"]["file-note"]["status"] == "complete"


def test_retry_failed_on_a_cancelled_run_does_what_the_docs_say(cfg: Config) -> None:
    res = _wf(cfg, "run", str(GATE), "-i", "query=q", "--non-interactive", "--json")
    assert res.exit_code == 3, res.output
    run_id = json.loads(res.stdout)["runId"]
    assert _wf(cfg, "cancel", run_id).exit_code == 0
    res = _wf(cfg, "resume", run_id, "--retry-failed")
    assert res.exit_code == 2
    said = f"run `{run_id}` was cancelled; start a new run instead."
    assert said in res.stderr
    docs = " ".join(DOCS.read_text(encoding="utf-8").split())
    assert "``run `RUN` was cancelled; start a new run instead.``" in docs
