"""Damaged run records are listed and named; a dry run checks `--approve` as a run does.

`workflow runs` lists a run whose `run.json` is unusable or deleted as `damaged` (with its
paragraph); `workflow status` on a run directory without `run.json` says so (not another
run's id); a journal line that is not JSON is named in a warning, which the human
`workflow status` prints too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.cli import workflow
from tests.helpers import demo_config, write_config

QUICK = {
    "name": "quick",
    "caller": "manager",
    "steps": [
        {"id": "research", "agent": "webster", "task": "Find papers."},
        {
            "id": "review",
            "agent": "tech-lead",
            "depends_on": ["research"],
            "gate": {"prompt": "Go on?"},
            "task": "Review {{ steps.research.result }}",
        },
    ],
}


def _cli(*args: str) -> Any:
    return CliRunner().invoke(workflow, list(args), catch_exceptions=False)


def _setup(tmp_path: Path) -> tuple[str, Path]:
    cfg = write_config(tmp_path, demo_config(tmp_path))
    (tmp_path / "quick.yaml").write_text(json.dumps(QUICK), encoding="utf-8")
    return str(cfg), tmp_path / "quick.yaml"


def _runs(tmp_path: Path, cfg: str, wf: Path, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        res = _cli("run", str(wf), "--approve-all", "--json", "--config", cfg)
        assert res.exit_code == 0, res.output
        ids.append(json.loads(res.stdout)["runId"])
    return ids


@pytest.mark.parametrize("step", ["nosuch", "research"])
def test_a_dry_run_refuses_an_approval_the_run_would_refuse(tmp_path: Path, step: str) -> None:
    cfg, wf = _setup(tmp_path)
    dry = _cli("run", str(wf), "--approve", step, "--dry-run", "--config", cfg)
    real = _cli("run", str(wf), "--approve", step, "--non-interactive", "--config", cfg)
    assert dry.exit_code == real.exit_code == 2
    assert dry.stderr == real.stderr
    assert f"`--approve {step}`" in dry.stderr
    assert _cli("run", str(wf), "--approve", "review", "--dry-run", "--config", cfg).exit_code == 0


def test_damaged_and_deleted_run_records_are_listed_as_damaged(tmp_path: Path) -> None:
    cfg, wf = _setup(tmp_path)
    emptied, deleted, sound = _runs(tmp_path, cfg, wf, 3)
    runs = tmp_path / "handoffs" / "workflows"
    (runs / emptied / "run.json").write_text("{}")
    (runs / deleted / "run.json").unlink()
    res = _cli("runs", "--json", "--config", cfg)
    assert res.exit_code == 0
    rows = {r["runId"]: r for r in json.loads(res.stdout)}
    assert set(rows) == {emptied, deleted, sound}
    assert rows[sound]["status"] == "complete"
    assert rows[emptied]["status"] == rows[deleted]["status"] == "damaged"
    assert "run.json` is missing" in rows[deleted]["problem"]
    assert f"{emptied}/run.json" in rows[emptied]["problem"]
    table = _cli("runs", "--config", cfg)
    assert f"{deleted}  ?" in table.stdout and "damaged" in table.stdout
    assert table.stderr.count("error: ") == 2
    status = _cli("status", deleted, "--config", cfg)
    assert status.exit_code == 2
    assert f"`{runs / deleted / 'run.json'}` is missing" in status.stderr
    assert "did you mean" not in status.stderr


def test_a_journal_line_that_is_not_json_is_named_in_human_status(tmp_path: Path) -> None:
    cfg, wf = _setup(tmp_path)
    (rid,) = _runs(tmp_path, cfg, wf, 1)
    journal = tmp_path / "handoffs" / "workflows" / rid / "events.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join([*lines[:2], b"\xff\xfe not json\n", *lines[2:]]))
    res = _cli("status", rid, "--config", cfg)
    assert res.exit_code == 0
    assert f"warning: `{journal}` line 3: skipped: not a JSON event" in res.stderr
    assert "complete" in res.stdout  # the rest of the journal still counts
    data = json.loads(_cli("status", rid, "--json", "--config", cfg).stdout)
    assert any("line 3" in w for w in data["warnings"])
