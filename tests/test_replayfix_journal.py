"""A run whose journal (``events.jsonl``) was emptied or cut is read as its files say.

An emptied journal, or one that lost its ``run_started`` line, while the run has records
(step files, ``summary.json``): `workflow status` and `workflow runs` call the run
damaged and name the journal; `workflow resume` refuses it (exit 2) and sends nothing
(replayed, every step would read pending and be sent again). A journal whose last line
(``run_finished``) was cut mid-write while ``summary.json`` says the run ended shows the
summary's status, with a warning naming the line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers import demo_config, write_config

WORKFLOW = [sys.executable, "-c", "from engine.cli import workflow_main; workflow_main()"]


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WORKFLOW, *args, "--config", str(config)],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _complete_run(tmp_path: Path) -> tuple[Path, Path]:
    """A finished 3-step run on the embedded gateway (echo agents): (config, run dir)."""
    config = write_config(tmp_path, demo_config(tmp_path))
    steps = [
        {"id": "research", "agent": "webster", "task": "Find papers on {{ inputs.q }}."},
        {"id": "plan", "agent": "tech-lead", "task": "Plan.", "depends_on": ["research"]},
        {"id": "code", "agent": "optimizer", "task": "Code.", "depends_on": ["plan"]},
    ]
    wf = tmp_path / "pipe.yaml"
    wf.write_text(
        yaml.safe_dump(
            {"name": "pipe", "caller": "manager", "inputs": {"q": {}}, "steps": steps}
        )
    )
    done = _cli(config, "run", str(wf), "-i", "q=x", "-q", "--non-interactive")
    assert done.returncode == 0, done.stderr
    (run,) = (tmp_path / "handoffs" / "workflows").iterdir()
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"
    return config, run


def _records(tmp_path: Path) -> set[str]:
    return {p.name for p in (tmp_path / "handoffs").rglob("*") if p.is_file()}


def test_an_emptied_journal_is_damaged_and_resume_sends_nothing(tmp_path: Path) -> None:
    config, run = _complete_run(tmp_path)
    journal = run / "events.jsonl"
    journal.write_text("")
    before = _records(tmp_path)

    status = _cli(config, "status", run.name)
    assert status.returncode == 0, status.stderr
    assert "damaged" in status.stdout and "running" not in status.stdout.splitlines()[0]
    assert f"`{journal}` is empty or missing" in status.stderr, status.stderr
    assert "restore" in status.stderr and "workflow run" in status.stderr
    as_json = json.loads(_cli(config, "status", run.name, "--json").stdout)
    assert as_json["status"] == "damaged" and str(journal) in as_json["problem"]

    runs = _cli(config, "runs", "--json")
    (row,) = [r for r in json.loads(runs.stdout) if r["runId"] == run.name]
    assert row["status"] == "damaged" and str(journal) in row["problem"], row

    resumed = _cli(config, "resume", run.name, "--non-interactive")
    assert resumed.returncode == 2, (resumed.stdout, resumed.stderr)
    assert str(journal) in resumed.stderr and "send finished steps again" in resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert journal.read_text() == ""  # nothing written, nothing sent
    assert _records(tmp_path) == before
    assert not list((tmp_path / "handoffs").rglob("rejected/*"))


def test_a_journal_without_run_started_is_damaged(tmp_path: Path) -> None:
    config, run = _complete_run(tmp_path)
    journal = run / "events.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    assert json.loads(lines[0])["event"] == "run_started"
    journal.write_text("".join(lines[1:-1]))  # the first and the last line lost
    before = _records(tmp_path)
    status = json.loads(_cli(config, "status", run.name, "--json").stdout)
    assert status["status"] == "damaged", status
    assert "has no `run_started` line" in status["problem"], status
    resumed = _cli(config, "resume", run.name, "--non-interactive")
    assert resumed.returncode == 2 and "no `run_started` line" in resumed.stderr, resumed.stderr
    assert _records(tmp_path) == before


def test_a_torn_run_finished_line_shows_the_summary_status(tmp_path: Path) -> None:
    config, run = _complete_run(tmp_path)
    journal = run / "events.jsonl"
    text = journal.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[-1]
    assert json.loads(last)["event"] == "run_finished"
    journal.write_text(text[: len(text) - len(last) // 2 - 1])  # cut mid-line
    status = _cli(config, "status", run.name)
    assert status.returncode == 0, status.stderr
    assert "complete" in status.stdout.splitlines()[0], status.stdout
    assert "no process" not in status.stdout and "cut mid-write" in status.stderr
    runs = _cli(config, "runs", "--json")
    (row,) = [r for r in json.loads(runs.stdout) if r["runId"] == run.name]
    assert row["status"] == "complete" and row["duration_ms"] is not None, row
    resumed = _cli(config, "resume", run.name, "--non-interactive")
    assert "already ended (complete)" in resumed.stdout + resumed.stderr
