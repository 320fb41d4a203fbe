"""A workflow's capability step is routed as ``orchestrate --capability`` routes: an agent
whose gateway refuses a TCP connection is passed over when the step is dispatched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import workflow
from tests.helpers import demo_config, free_port, write_config

WF = """\
name: routed
caller: manager
steps:
  - id: look
    capability: research
    task: "Find CTE of Zerodur"
"""


def _setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setenv("DOWN_TOKEN", "down-hooks-token")
    raw = demo_config(tmp_path)
    down = {"token_env": "DOWN_TOKEN", "capabilities": ["research"]}
    # first in the registry, nothing in flight: they would win every tie
    raw["agents"] = {
        "down1": {**down, "url": f"http://127.0.0.1:{free_port()}"},
        "down2": {**down, "url": f"http://127.0.0.1:{free_port()}"},
        **raw["agents"],
    }
    raw["agents"]["study-builder"]["capabilities"] = ["study-setup"]
    raw["acl"] = {"manager": ["down1", "down2", "webster"]}
    cfg = write_config(tmp_path, raw)
    wf = tmp_path / "routed.yaml"
    wf.write_text(WF, encoding="utf-8")
    return cfg, wf


def test_a_capability_step_skips_agents_whose_gateway_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, wf = _setup(tmp_path, monkeypatch)
    res = CliRunner().invoke(
        workflow, ["run", str(wf), "--config", str(cfg), "--json"], catch_exceptions=False
    )
    assert res.exit_code == 0, res.output
    (run,) = (tmp_path / "handoffs" / "workflows").iterdir()
    step = json.loads((run / "look.json").read_text())
    assert step["agent"] == "webster"
    assert step["status"] == "complete"


def test_the_dry_run_says_the_choice_is_made_at_run_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, wf = _setup(tmp_path, monkeypatch)
    res = CliRunner().invoke(
        workflow, ["run", str(wf), "--config", str(cfg), "--dry-run"], catch_exceptions=False
    )
    assert res.exit_code == 0, res.output
    assert (
        "look: capability `research` -> chosen at run time among down1, down2, webster\n"
    ) in res.output
    assert "-> down1" not in res.output
