"""`orchestrate handoff write` (and `handoff progress`) answering a sub-delegation without
`--sub`: it finds the run
waiting under `<handoffs_dir>/sub` (it said "no delegation ... is waiting" and the
sub-delegation failed). Real CLI processes, a real embedded gateway and handoffs directory."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.helpers import demo_config, write_config
from tests.test_cfgfix_config import program

#: tech-lead sub-delegates to webster, then hands off what that call printed.
LEAD = """
import os, subprocess, sys
orch = os.path.join(os.path.dirname(sys.executable), "orchestrate")
out = subprocess.run([orch, "webster", "sub-task", "--caller", "tech-lead", "--parent-run-id",
                      os.environ["ORCH_RUN_ID"], "--config", os.environ["CFG"], "--json"],
                     capture_output=True, text=True)
subprocess.run([orch, "handoff", "write", "--run-id", os.environ["ORCH_RUN_ID"], "--agent",
                "tech-lead", "--status", "complete", "--result", out.stdout + out.stderr,
                "--config", os.environ["CFG"]], check=True)
"""

#: webster reports progress and answers as the task message says, without `--dir` or `--sub`.
ANSWER = """
import os, subprocess, sys
orch = os.path.join(os.path.dirname(sys.executable), "orchestrate")
subprocess.run([orch, "handoff", "progress", "--run-id", os.environ["ORCH_RUN_ID"], "reading",
                "--config", os.environ["CFG"]], check=True)
subprocess.run([orch, "handoff", "write", "--run-id", os.environ["ORCH_RUN_ID"], "--agent",
                "webster", "--status", "complete", "--result", "sub answer",
                "--config", os.environ["CFG"]], check=True)
"""


def test_handoff_write_finds_a_waiting_sub_delegation(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    cfg_path = tmp_path / "orchestrator.yaml"
    for name, script in (("tech-lead", LEAD), ("webster", ANSWER)):
        raw["gateway"]["agents"][name] = {
            "kind": "command", "argv": [sys.executable, "-c", script],
            "env": {"CFG": str(cfg_path)}, "timeout": 60,
        }  # fmt: skip
    write_config(tmp_path, raw)
    res = program("orchestrate", "tech-lead", "go", "--caller", "manager", "--json",
                  "--config", str(cfg_path), cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    sub = json.loads(json.loads(res.stdout)["result"])
    assert sub["status"] == "complete", sub
    assert sub["result"] == "sub answer"
    handoffs = tmp_path / "handoffs"
    assert (handoffs / "sub" / f"{sub['runId']}.json").exists()  # its record, under sub/
    assert not (handoffs / "inbox" / f"{sub['runId']}.json").exists()
