"""A run started with `--config` from elsewhere prints follow-up commands that carry
`--config PATH`, so that each works when copied as printed from the same directory."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from tests.helpers import demo_config, write_config

WF = """\
name: v
caller: manager
steps:
  - id: g
    agent: webster
    gate:
      prompt: "go?"
    task: "Find CTE of Zerodur"
"""

BIN = Path(sys.executable).parent


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ORCHESTRATOR_CONFIG"}
    return subprocess.run(
        [str(BIN / "workflow"), *args], capture_output=True, text=True, timeout=120,
        cwd=cwd, env=env,
    )


def test_gate_hints_carry_the_config_and_work_as_printed(tmp_path: Path) -> None:
    proj = tmp_path / "t9v"
    proj.mkdir()
    cfg = write_config(proj, demo_config(proj))
    (proj / "wf").mkdir()
    (proj / "wf" / "v.yaml").write_text(WF, encoding="utf-8")
    res = _cli("run", "t9v/wf/v.yaml", "--config", "t9v/orchestrator.yaml",
               "--non-interactive", cwd=tmp_path)
    assert res.returncode == 3, res.stderr
    (line,) = [ln for ln in res.stderr.splitlines() if "waiting for approval at `g`" in ln]
    flag = f"--config {shlex.quote(str(cfg.resolve()))}"
    command = line.split(": ", 1)[1].split("   (or:")[0]
    approve, resume = command.split(" && ")
    assert approve.endswith(f"g {flag}") and resume.endswith(flag)
    status = _cli("status", _run(res), "--config", "t9v/orchestrator.yaml", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert f"`workflow approve {_run(res)} g {flag}`" in status.stdout
    # copied as printed, from the same directory, both work
    done = _cli(*shlex.split(approve)[1:], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith(f"continue with: workflow resume {_run(res)} {flag}")
    ran = _cli(*shlex.split(resume)[1:], cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr


def test_no_config_flag_when_the_default_finds_the_same_file(tmp_path: Path) -> None:
    write_config(tmp_path, demo_config(tmp_path))
    (tmp_path / "v.yaml").write_text(WF, encoding="utf-8")
    res = _cli("run", "v.yaml", "--non-interactive", cwd=tmp_path)
    assert res.returncode == 3, res.stderr
    assert "--config" not in res.stderr
    assert f"workflow approve {_run(res)} g && workflow resume {_run(res)}" in res.stderr


def _run(res: subprocess.CompletedProcess[str]) -> str:
    (line,) = [ln for ln in res.stderr.splitlines() if "waiting for approval at `g`" in ln]
    return line.split("workflow approve ", 1)[1].split()[0]
