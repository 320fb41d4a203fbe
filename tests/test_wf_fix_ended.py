"""`workflow resume` leaves a run that has ended for good as it is.

A run that completed, and one that failed after its `deadline` passed, are refused (exit
2, one paragraph) with nothing written: no step rewritten, no `finally` step sent again.
The failed run's own hint says the deadline passed and suggests a new run.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import demo_config, write_config

WORKFLOW = [sys.executable, "-c", "from engine.cli import workflow_main; workflow_main()"]

TIMED = {
    "name": "timed-search",
    "caller": "manager",
    "deadline": 1,
    "inputs": {"topic": {"required": True}},
    "steps": [
        {
            "id": "search",
            "agent": "webster",
            "timeout": 600,
            "task": "Find papers on {{ inputs.topic }}. DEMO_SLEEP=30",
        },
        {
            "id": "summary",
            "agent": "secretary",
            "depends_on": ["search"],
            "task": "Summarise: {{ steps.search.result }}",
        },
    ],
    "finally": [{"id": "notify", "agent": "secretary", "task": "Ended {{ run.status }}."}],
}
QUICK = {
    "name": "quick",
    "caller": "manager",
    "steps": [{"id": "search", "agent": "webster", "task": "Find papers."}],
}


def _wf(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WORKFLOW, *args, "--config", str(tmp_path / "orchestrator.yaml")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def _start(tmp_path: Path, doc: dict[str, object], *args: str) -> tuple[str, str, Path]:
    write_config(tmp_path, demo_config(tmp_path))
    (tmp_path / "wf").mkdir()
    (tmp_path / "wf" / "t.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    res = _wf(tmp_path, "run", "wf/t.yaml", "-q", *args)  # -q: the table, then the hints
    found = re.search(r"^run: (.*/(wf-\S+))$", res.stdout, re.M)
    assert found is not None, res.stdout + res.stderr
    return found.group(2), res.stderr, Path(found.group(1))


def _files(run_dir: Path) -> dict[str, str]:
    """The run's records (not `.lock`, which says who last claimed the run)."""
    return {
        p.name: p.read_text(encoding="utf-8")
        for p in sorted(run_dir.iterdir())
        if p.name != ".lock"
    }


def test_a_run_past_its_deadline_is_not_resumed(tmp_path: Path) -> None:
    rid, hint, run_dir = _start(tmp_path, TIMED, "-i", "topic=ULE")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"]["search"]["status"] == "timeout"
    assert summary["steps"]["notify"]["status"] == "complete"
    assert "--retry-failed" not in hint
    assert "its deadline" in hint and "has passed" in hint
    assert "start a new run: workflow run wf/t.yaml -i ..." in hint
    before = _files(run_dir)
    for extra in (["--retry-failed"], []):
        res = _wf(tmp_path, "resume", rid, *extra)
        assert res.returncode == 2, res.stdout + res.stderr
        assert "Traceback" not in res.stderr
        assert f"run `{rid}` has ended (failed) and its deadline" in res.stderr
        assert "Start a new run: workflow run wf/t.yaml -i ..." in res.stderr
    assert _files(run_dir) == before  # nothing rewritten, `notify` not sent again


def test_a_complete_run_is_not_resumed(tmp_path: Path) -> None:
    rid, _, run_dir = _start(tmp_path, QUICK)
    before = _files(run_dir)
    res = _wf(tmp_path, "resume", rid)
    assert res.returncode == 0  # as the run ended: there is nothing to do
    assert f"run {rid} has already ended (complete); nothing to resume, nothing changed" in (
        res.stdout
    )
    assert _files(run_dir) == before
    # and the runner itself, as a server or a program uses it, refuses it
    from engine.config import load_config
    from engine.delegate import open_delegator
    from engine.errors import RunStateError
    from engine.runner import RunOptions, WorkflowRunner

    cfg = load_config(tmp_path / "orchestrator.yaml")
    with open_delegator(cfg) as delegator, pytest.raises(RunStateError, match="already ended"):
        WorkflowRunner(cfg, delegator).resume(rid, RunOptions())
    assert _files(run_dir) == before


def test_a_timeout_cut_by_the_deadline_is_said_in_round_seconds(tmp_path: Path) -> None:
    rid, _, run_dir = _start(tmp_path, {**TIMED, "deadline": 3}, "-i", "topic=ULE")
    error = json.loads((run_dir / "summary.json").read_text())["steps"]["search"]["error"]
    # what was left of the deadline, in tenths at most (not `2.99076 s`); however long a
    # busy host took to dispatch it, some of the 3 s were left and no more than 3
    said = re.search(r"within (\d+(?:\.\d)?) s;", error)
    assert said is not None, error
    assert 0 < float(said.group(1)) <= 3, error
