"""The secret part of a secret input is masked in everything a run writes and prints,
bare too (an agent that repeats it), and only for the run's lifetime."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine import redact
from engine.cli import orchestrate, workflow
from tests.helpers import demo_config, write_config

SECRET = "abc123456789"

WF = """\
name: gate
caller: manager
inputs:
  repo: {required: true}
steps:
  - id: a
    agent: webster
    task: "look at {{ inputs.repo }}"
"""

#: A command agent that repeats the task's value after `api_key=` bare (no `api_key=`).
ECHO = (
    "import os, re\n"
    "task = open(os.path.join(os.environ['ORCH_WORKSPACE'], 'TASK.txt')).read()\n"
    "m = re.search(r'api_key=(\\S+)', task)\n"
    "print('the key is ' + (m.group(1) if m else 'missing'))\n"
)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {
        "kind": "command", "argv": [sys.executable, "-c", ECHO], "timeout": 60,
    }
    cfg = write_config(tmp_path, raw)
    wf = tmp_path / "gate.yaml"
    wf.write_text(WF, encoding="utf-8")
    return cfg, wf


def test_a_secret_inputs_bare_value_is_masked_in_records_and_output(
    tmp_path: Path, setup: tuple[Path, Path]
) -> None:
    cfg, wf = setup
    before = redact.held_count()
    res = CliRunner().invoke(
        workflow,
        ["run", str(wf), "-i", f"repo=api_key={SECRET}", "--config", str(cfg), "--json"],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert SECRET not in res.output
    (run,) = (tmp_path / "handoffs" / "workflows").iterdir()
    step = json.loads((run / "a.json").read_text())
    # the agent did repeat it, and the record says so masked
    assert step["handoff"]["result"].startswith("the key is ***")
    for f in run.iterdir():
        assert SECRET not in f.read_text(), f.name
    for f in (tmp_path / "handoffs").glob("*.json"):
        assert SECRET not in f.read_text(), f.name
    shown = CliRunner().invoke(
        orchestrate,
        ["show", summary["steps"]["a"]["delegation_run_id"], "--config", str(cfg)],
        catch_exceptions=False,
    )
    assert shown.exit_code == 0, shown.output
    assert "the key is ***" in shown.output
    assert SECRET not in shown.output
    # held for the run only: the process keeps nothing once it has ended
    assert redact.held_count() == before
    assert redact.redact(f"x {SECRET}") == f"x {SECRET}"


def test_the_cli_as_a_process_prints_no_secret(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    cfg, wf = setup
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli.workflow", "run", str(wf),
         "-i", f"repo=api_key={SECRET}", "--config", str(cfg)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert SECRET not in proc.stdout + proc.stderr


def test_secret_parts_names_only_the_secret() -> None:
    assert redact.secret_parts({"q": f"use api_key={SECRET} here"}) == [SECRET]
    assert "hunter2x9" in redact.secret_parts("https://bob:hunter2x9@github.com/x")
    assert redact.secret_parts("plain text") == []
