"""Ctrl-C with `--json`: stdout gets `{"error": ..., "exit_code": 130}` as for any other
failing command (README, "Exit codes"), for `orchestrate` and `workflow run`."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from tests.helpers import demo_config, gated_agent, interruptible, wait_for, write_config


def _prog(name: str) -> list[str]:
    return interruptible(name)


def _setup(tmp_path: Path) -> Path:
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = gated_agent(tmp_path / "go")
    return write_config(tmp_path, raw)


def _interrupt(tmp_path: Path, args: list[str]) -> tuple[int, str, str]:
    proc = subprocess.Popen(
        args, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    try:
        root = tmp_path / "handoffs" / ".workspaces"
        wait_for(lambda: list(root.glob("webster/*/TASK.txt")), "the agent's start")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        (tmp_path / "go").touch()  # the agent ends
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
    return proc.returncode, out, err


def test_orchestrate_json_prints_the_error_object_on_ctrl_c(tmp_path: Path) -> None:
    cfg = _setup(tmp_path)
    code, out, err = _interrupt(
        tmp_path,
        [*_prog("orchestrate"), "webster", "Find CTE", "--caller", "manager", "--json",
         "--config", str(cfg)],
    )
    assert code == 130, err
    doc = json.loads(out)
    assert doc["exit_code"] == 130
    # the agent has started; the command may not have heard of it yet
    assert doc["error"].startswith("interrupted")
    assert doc["error"] in err


def test_workflow_run_json_prints_the_error_object_on_ctrl_c(tmp_path: Path) -> None:
    cfg = _setup(tmp_path)
    wf = tmp_path / "slow.yaml"
    wf.write_text(
        "name: slow\ncaller: manager\nsteps:\n  - id: s\n    agent: webster\n"
        "    task: Find papers.\n",
        encoding="utf-8",
    )
    code, out, err = _interrupt(
        tmp_path, [*_prog("workflow"), "run", str(wf), "--json", "--config", str(cfg)]
    )
    assert code == 130, err
    doc = json.loads(out)
    assert doc["exit_code"] == 130
    assert doc["error"].startswith("interrupted: stopped waiting for run wf-")
    assert "Continue it with: workflow resume wf-" in doc["error"]
