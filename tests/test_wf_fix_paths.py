"""A workflow run by path: resumable from any directory, and every hint names it as run.

`run.json` keeps the template's absolute path (and the NAME or path as given, for hints);
a run recorded with a relative path still resumes from its directory, and elsewhere says
which path it recorded. Hints that print a `workflow run`/`workflow test` command name the
workflow as the run was started, with `-i ...` only when it has inputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from engine.runs import rerun_command, workflow_ref
from tests.helpers import demo_config, write_config

WORKFLOW = [sys.executable, "-c", "from engine.cli import workflow_main; workflow_main()"]


def _gate_wf(inputs: bool = False, marker: str = "") -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "gate",
        "caller": "manager",
        "steps": [
            {"id": "research", "agent": "webster", "task": f"Find papers {marker}."},
            {
                "id": "review",
                "agent": "tech-lead",
                "depends_on": ["research"],
                "gate": {"prompt": "Go on?"},
                "task": "Review {{ steps.research.result }}",
            },
        ],
    }
    if inputs:
        doc["inputs"] = {"topic": {"required": True}}
        doc["steps"][0]["task"] = "Find papers on {{ inputs.topic }}."
    return doc


def _place(root: Path, doc: dict[str, Any]) -> Path:
    path = root / "wf" / "gate.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def _wf(cwd: Path, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WORKFLOW, *args, "--config", str(config)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def _parked(tmp_path: Path, doc: dict[str, Any], *extra: str) -> tuple[Path, Path, str]:
    config = write_config(tmp_path, demo_config(tmp_path))
    mine = tmp_path / "my"
    _place(mine, doc)
    res = _wf(mine, config, "run", "wf/gate.yaml", "--non-interactive", "--json", *extra)
    assert res.returncode == 3, res.stderr
    return config, mine, json.loads(res.stdout)["runId"]


def test_a_run_started_by_relative_path_resumes_from_another_directory(tmp_path: Path) -> None:
    config, mine, rid = _parked(tmp_path, _gate_wf())
    meta = json.loads((tmp_path / "handoffs" / "workflows" / rid / "run.json").read_text())
    assert meta["workflow_path"] == str((mine / "wf" / "gate.yaml").resolve())
    assert meta["started_as"] == "wf/gate.yaml"
    other = tmp_path / "other"
    _place(other, _gate_wf(marker="another template"))  # the same relative path, elsewhere
    assert _wf(other, config, "approve", rid, "review").returncode == 0
    res = _wf(other, config, "resume", rid, "--json")
    assert res.returncode == 0, res.stderr  # the run's own template: nothing "changed"
    assert json.loads(res.stdout)["status"] == "complete"


def test_an_old_run_with_a_relative_path_names_it_when_it_cannot_resume(tmp_path: Path) -> None:
    config, mine, rid = _parked(tmp_path, _gate_wf())
    run_json = tmp_path / "handoffs" / "workflows" / rid / "run.json"
    meta = json.loads(run_json.read_text())
    meta["workflow_path"] = "wf/gate.yaml"  # as runs recorded it before
    del meta["started_as"]
    run_json.write_text(json.dumps(meta))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert _wf(elsewhere, config, "approve", rid, "review").returncode == 0
    res = _wf(elsewhere, config, "resume", rid)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "records the template as `wf/gate.yaml`, a path relative to the directory" in res.stderr
    assert f"Run `workflow resume {rid}` from that directory" in res.stderr
    res = _wf(mine, config, "resume", rid, "--json")  # from its own directory, as before
    assert res.returncode == 0, res.stderr


def test_a_rejected_gate_suggests_the_path_the_run_was_started_with(tmp_path: Path) -> None:
    config, mine, rid = _parked(tmp_path, _gate_wf())
    assert _wf(mine, config, "reject", rid, "review", "--reason", "no").returncode == 0
    res = _wf(mine, config, "resume", rid)
    assert res.returncode == 1
    assert (
        f"start a new run: workflow run wf/gate.yaml --config {config} (--approve review"
    ) in res.stderr
    assert "-i ..." not in res.stderr  # the workflow has no inputs
    assert "workflow run gate " not in res.stderr


def test_a_hint_from_another_directory_gives_the_absolute_path_and_inputs(
    tmp_path: Path,
) -> None:
    config, mine, rid = _parked(tmp_path, _gate_wf(inputs=True), "-i", "topic=ULE")
    assert _wf(mine, config, "reject", rid, "review", "--reason", "no").returncode == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = _wf(elsewhere, config, "resume", rid)
    assert res.returncode == 1
    path = (mine / "wf" / "gate.yaml").resolve()
    assert (
        f"start a new run: workflow run {path} -i ... --config {config} (--approve review"
    ) in res.stderr


def test_record_prints_a_test_command_that_works_and_takes_the_path(tmp_path: Path) -> None:
    config, mine, rid = _parked(tmp_path, _gate_wf())
    assert _wf(mine, config, "approve", rid, "review").returncode == 0
    assert _wf(mine, config, "resume", rid).returncode == 0
    res = _wf(mine, config, "test", "--record", rid, "--fixtures", "rec")
    assert res.returncode == 0, res.stderr
    said = "test with: workflow test wf/gate.yaml --fixtures rec --expect rec/expect.json"
    assert said in res.stdout
    command = said.removeprefix("test with: workflow ").split()
    replay = _wf(mine, config, *command)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    # NAME may be the path, as it may be anywhere else (or the name)
    res = _wf(mine, config, "test", "--record", rid, "--fixtures", "rec2", "wf/gate.yaml")
    assert res.returncode == 0, res.stderr
    res = _wf(mine, config, "test", "--record", rid, "--fixtures", "rec3", "gate")
    assert res.returncode == 0, res.stderr
    res = _wf(mine, config, "test", "--record", rid, "--fixtures", "rec4", "quick-research")
    assert res.returncode == 2
    assert f"run `{rid}` is of workflow `gate`, not `quick-research` (started as wf/gate.yaml)" in (
        res.stderr
    )


def test_rerun_command_names_the_workflow_as_started() -> None:
    assert rerun_command({"workflow": "gate", "started_as": "gate", "inputs": {}}) == (
        "workflow run gate"
    )
    meta = {"workflow": "x", "started_as": "my dir/x.yaml", "workflow_path": "/nowhere/x.yaml"}
    assert workflow_ref(meta) == "/nowhere/x.yaml"  # the given path names another file here
    assert rerun_command({"workflow": "x", "inputs": {"q": "1"}}, " --server U") == (
        "workflow run x -i ... --server U"
    )
