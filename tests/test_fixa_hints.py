"""`workflow run` prints hints that work: the command it suggests, run, does what it says."""

from __future__ import annotations

import json
import re
import shlex
import sys
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
    assert cmds[1] == ["resume", parent, "--config", cfg]  # each as printed works
    for cmd in cmds:
        done = _cli(*cmd, *(["-q"] if cmd[0] == "resume" else []))
        assert done.exit_code == 0, done.output
    assert f"parent · {parent} · complete" in done.stdout, done.output


def _run_hint(tmp_path: Path, raw: dict[str, Any], cfg: str) -> tuple[str, Any]:
    path = tmp_path / "wf.yaml"
    path.write_text(json.dumps({"name": "wf", "caller": "manager", **raw}))
    res = _cli("run", str(path), "--config", cfg, "--non-interactive", "-q")
    rid = re.search(r"run: .*/(wf-\S+)", res.stdout).group(1)  # type: ignore[union-attr]
    return rid, res


def test_a_rejected_gate_does_not_suggest_retry_failed(tmp_path: Path) -> None:
    cfg = str(_setup(tmp_path, {}))
    gated = {"id": "s", "agent": "webster", "task": "x", "gate": {"prompt": "Go?"}}
    rid, res = _run_hint(tmp_path, {"steps": [gated]}, cfg)
    assert res.exit_code == 3
    assert _cli("reject", rid, "s", "--reason", "no", "--config", cfg).exit_code == 0
    done = _cli("resume", rid, "--config", cfg, "-q")
    assert done.exit_code == 1
    assert "--retry-failed" not in done.stderr
    assert "the gate of `s` was rejected, which is final" in done.stderr
    # named as it was started (a path), and no `-i ...`: the workflow has no inputs
    said = f"workflow run {tmp_path / 'wf.yaml'} --config {cfg} (--approve s to approve up front)"
    assert said in done.stderr


def test_a_gate_with_typed_input_suggests_input(tmp_path: Path) -> None:
    cfg = str(_setup(tmp_path, {}))
    gate = {"prompt": "How deep?", "input": {"schema": {"enum": ["quick", "full"]}}}
    step = {"id": "s", "agent": "webster", "task": "x", "gate": gate}
    rid, res = _run_hint(tmp_path, {"steps": [step]}, cfg)
    assert res.exit_code == 3
    assert (
        f"workflow approve {rid} s --input VALUE --config {cfg} && workflow resume {rid} "
        f"--config {cfg}"
    ) in res.stderr
    assert _cli("approve", rid, "s", "--input", "full", "--config", cfg).exit_code == 0
    assert _cli("resume", rid, "--config", cfg, "-q").exit_code == 0


def test_a_spent_budget_suggests_a_new_run_not_resume(tmp_path: Path) -> None:
    from tests.test_lang_budget import COSTLY

    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {
        "kind": "command",
        "argv": [sys.executable, "-c", COSTLY],
        "fallback_handoff": False,
    }
    cfg = str(write_config(tmp_path, raw))
    steps = [
        {"id": "first", "agent": "webster", "task": "a"},
        {"id": "second", "agent": "webster", "depends_on": ["first"], "task": "b"},
    ]
    rid, res = _run_hint(tmp_path, {"budget": {"usd": 0.02}, "steps": steps}, cfg)
    assert res.exit_code == 1
    assert "--retry-failed" not in res.stderr
    assert "its budget is spent" in res.stderr and "start a new run" in res.stderr
