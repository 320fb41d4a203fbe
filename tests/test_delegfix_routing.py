"""Capability routing passes over an agent whose gateway refuses connections."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import orchestrate
from tests.helpers import demo_config, free_port, write_config


def _cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, both_dead: bool = False) -> Path:
    monkeypatch.setenv("DOWN_TOKEN", "down-hooks-token")
    raw = demo_config(tmp_path)
    down = {"url": f"http://127.0.0.1:{free_port()}", "token_env": "DOWN_TOKEN",
            "capabilities": ["deep-research"]}
    # first in the registry, nothing in flight: it would win every tie
    raw["agents"] = {"down": down, **raw["agents"]}
    raw["agents"]["webster"]["capabilities"] = ["deep-research"]
    if both_dead:
        raw["agents"]["webster"] = {**down, "url": f"http://127.0.0.1:{free_port()}"}
    raw["acl"] = {"manager": ["down", "webster"]}
    return write_config(tmp_path, raw)


def test_routing_skips_an_unreachable_agent_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _cfg(tmp_path, monkeypatch)
    res = CliRunner().invoke(
        orchestrate,
        ["--capability", "deep-research", "x", "--caller", "manager", "--dry-run",
         "--config", str(cfg)],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    assert "-> `webster`" in res.output
    assert "down: 0 in flight; skipped: its gateway at 127.0.0.1:" in res.output
    assert "refused the connection" in res.output
    assert "`manager` -> `webster` passes every check" in res.output


def test_when_every_candidate_is_down_the_least_busy_is_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _cfg(tmp_path, monkeypatch, both_dead=True)
    res = CliRunner().invoke(
        orchestrate,
        ["--capability", "deep-research", "x", "--caller", "manager", "--dry-run",
         "--config", str(cfg)],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    assert "every candidate is unreachable: `down` is tried anyway" in res.output
