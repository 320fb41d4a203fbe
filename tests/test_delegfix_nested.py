"""Sub-delegations from command agents: they share their chain's pool token (a pool of one
does not deadlock), and they find the config through ``$ORCHESTRATOR_CONFIG``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.cli import orchestrate
from tests.helpers import demo_config, write_config

#: tech-lead's agent: delegates "child" to webster as a sub-delegation of its own run and
#: prints what came back (the gateway's fallback handoff makes that its result).
SUB_AGENT = """
import json, os, subprocess, sys
argv = [os.path.join(os.path.dirname(sys.executable), "orchestrate"), "webster", "child",
        "--caller", "tech-lead", "--parent-run-id", os.environ["ORCH_RUN_ID"],
        "--json", "--timeout", "20"]
if os.environ.get("CFG"):
    argv += ["--config", os.environ["CFG"]]
out = subprocess.run(argv, capture_output=True, text=True)
try:
    rec = json.loads(out.stdout)
except ValueError:
    rec = {}
print(json.dumps({"rc": out.returncode, "child": rec.get("runId"),
                  "status": rec.get("status"), "stderr": out.stderr[-600:]}))
"""


def _config(tmp_path: Path, *, pass_config: bool) -> Path:
    raw = demo_config(tmp_path, pool={"enabled": True, "max_tokens": 1, "adaptive": False})
    spec: dict[str, Any] = {"kind": "command", "argv": [sys.executable, "-c", SUB_AGENT],
                            "timeout": 60}
    if pass_config:
        spec["env"] = {"CFG": str(tmp_path / "orchestrator.yaml")}
    raw["gateway"]["agents"]["tech-lead"] = spec
    return write_config(tmp_path, raw)


def _parent(tmp_path: Path, cfg: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    res = CliRunner().invoke(
        orchestrate,
        ["tech-lead", "x", "--caller", "manager", "--timeout", "40", "--config", str(cfg),
         "--json"],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    parent = json.loads(res.output)
    said = json.loads(parent["result"].strip().splitlines()[-1])
    return parent, said


def test_a_sub_delegation_shares_its_parents_token_in_a_pool_of_one(tmp_path: Path) -> None:
    cfg = _config(tmp_path, pass_config=True)
    parent, said = _parent(tmp_path, cfg)
    assert said["rc"] == 0, said["stderr"]
    assert said["status"] == "complete"
    child = json.loads((tmp_path / "handoffs" / "sub" / f"{said['child']}.json").read_text())
    env = child["envelope"]
    assert env["parent_run_id"] == parent["runId"]
    assert env["token_shared_with"] == parent["runId"]
    assert "token_wait_ms" not in env  # it never queued
    # the parent's own token is back: nothing is held after the chain ends
    status = CliRunner().invoke(
        orchestrate, ["pool", "status", "--json", "--config", str(cfg)], catch_exceptions=False
    )
    assert json.loads(status.output)["in_use"] == []


def test_a_command_agent_finds_the_config_through_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    cfg = _config(tmp_path, pass_config=False)  # no --config: $ORCHESTRATOR_CONFIG only
    parent, said = _parent(tmp_path, cfg)
    assert "no `orchestrator.yaml`" not in said["stderr"]
    assert said["rc"] == 0, said["stderr"]
    assert said["status"] == "complete"
