"""Seed 002's `$TIMEOUT` ("10 minute timeout for all tasks") for every agent kind: it
bounds a command agent's task too, and a bad value is refused (exit 2) wherever the
local gateway starts. Real CLI (click's runner), real embedded gateway and agents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import orchestrate
from tests.helpers import demo_config, gated_agent, write_config


def _run(*args: str, **env: str) -> object:
    return CliRunner(env={"ORCHESTRATOR_CONFIG": None, "ORCH_SERVER": None, **env}).invoke(
        orchestrate, list(args), catch_exceptions=False
    )


def test_timeout_variable_bounds_a_command_agent(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["slowpoke"] = gated_agent(tmp_path / "never")  # 60 s unless killed
    raw["agents"]["slowpoke"] = {"url": "local"}
    cfg = write_config(tmp_path, raw)
    res = _run("slowpoke", "x", "--caller", "manager", "--json", "--config", str(cfg),
               TIMEOUT="1")  # fmt: skip
    rec = json.loads(res.output)  # type: ignore[attr-defined]
    assert rec["status"] == "failed", rec
    assert "killed after 1 s ($TIMEOUT)" in rec["result"]


@pytest.mark.parametrize("value", ["abc", "0"])
def test_a_bad_timeout_variable_is_refused_for_command_agents(tmp_path: Path, value: str) -> None:
    cfg = write_config(tmp_path, demo_config(tmp_path))  # command agents only
    res = _run("webster", "x", "--caller", "manager", "--config", str(cfg), TIMEOUT=value)
    out = res.output  # type: ignore[attr-defined]
    assert res.exit_code == 2, out  # type: ignore[attr-defined]
    assert f"environment variable `TIMEOUT` is '{value}'" in out
    assert "Nothing was sent" in out
    assert not list((tmp_path / "handoffs").glob("orch-*.json"))
