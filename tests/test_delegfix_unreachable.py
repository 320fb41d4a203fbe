"""A gateway that refuses every connection is reported as unreachable, not as a timeout
that promises a late handoff."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import orchestrate
from tests.helpers import demo_config, free_port, write_config


@pytest.mark.parametrize("hold", [True, False])
def test_a_dead_gateway_is_unreachable_with_its_attempts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hold: bool
) -> None:
    monkeypatch.setenv("F_TOKEN", "f-hooks-token")
    raw = demo_config(tmp_path, wait_for_completion=hold)
    # retries outlast the 0.5 s after which a held dispatch counts as admitted
    raw["retry"]["delays"] = [0.3, 0.6, 0.9]
    raw["agents"]["f"] = {"url": f"http://127.0.0.1:{free_port()}", "token_env": "F_TOKEN"}
    raw["acl"] = {"manager": ["f"]}
    cfg = write_config(tmp_path, raw)
    res = CliRunner().invoke(
        orchestrate, ["f", "x", "--caller", "manager", "--timeout", "10", "--config", str(cfg),
                      "--json"],
        catch_exceptions=False,
    )
    assert res.exit_code == 4, res.output
    out = json.loads(res.stdout)
    env = out["envelope"]
    assert env["outcome"] == "errored"
    assert env["attempts"] == 4  # the first try and the three retries of retry.delays
    assert env["unreachable"] == {"attempts": 4, "last": "connection refused"}
    assert "dispatched_at" not in env
    assert "unreachable" in env["error"] and "connection refused" in env["error"]
    assert "later" not in env["error"]
    # nothing waits for a late handoff: the pending envelope is gone
    assert not list((tmp_path / "handoffs" / ".pending").glob("*.json"))
