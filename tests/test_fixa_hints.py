"""`workflow run` prints hints that work: the command it suggests, run, does what it says."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from engine.cli import workflow
from tests.helpers import demo_config, write_config


def _setup(tmp_path: Path, files: dict[str, dict[str, Any]], **extra: Any) -> Path:
    for name, raw in files.items():
        (tmp_path / f"{name}.yaml").write_text(json.dumps(raw))
    return write_config(tmp_path, demo_config(tmp_path, **extra))


def _cli(*args: str) -> Any:
    return CliRunner().invoke(workflow, list(args), catch_exceptions=False)


def _commands(stderr: str) -> list[list[str]]:
    """The `workflow ...` commands of the hint line, split at `&&`."""
    line = next(ln for ln in stderr.splitlines() if "workflow " in ln and ":" in ln)
    text = line.split(": ", 1)[1].split("   (or:")[0]
    return [shlex.split(part)[1:] for part in text.split(" && ")]


CHILD = {
    "name": "child",
    "caller": "manager",
    "steps": [{"id": "look", "agent": "webster", "task": "Find x", "gate": {"prompt": "Go?"}}],
    "outputs": {"summary": "{{ steps.look.result }}"},
}
PARENT = {
    "name": "parent",
    "caller": "manager",
    "steps": [
        {"id": "c", "workflow": "child.yaml"},
        {"id": "after", "agent": "secretary", "depends_on": ["c"], "task": "note"},
    ],
}


def test_a_gate_in_a_child_run_names_the_child_run_and_its_step(tmp_path: Path) -> None:
    cfg = str(_setup(tmp_path, {"child": CHILD, "parent": PARENT}))
    res = _cli("run", str(tmp_path / "parent.yaml"), "--config", cfg, "-q")
    assert res.exit_code != 0
    parent = re.search(r"run: .*/(wf-\S+)", res.stdout).group(1)  # type: ignore[union-attr]
    cmds = _commands(res.stderr)
    assert cmds[0][0] == "approve" and cmds[0][1] != parent and cmds[0][2] == "look"
    assert cmds[1] == ["resume", parent]
    for cmd in cmds:
        done = _cli(*cmd, "--config", cfg, *(["-q"] if cmd[0] == "resume" else []))
        assert done.exit_code == 0, done.output
    assert f"parent · {parent} · complete" in done.stdout, done.output
