"""Pool thresholds out of order and a camelCase `tokenDir` are reported with the config's
other problems at load, naming the file and keys. Real CLI (click's runner)."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from engine.cli import orchestrate


def test_pool_problems_come_with_the_others(tmp_path: Path) -> None:
    raw = {
        "handoffs_dir": str(tmp_path / "h"),
        "agents": {
            "manager": {"url": "http://127.0.0.1:9", "token_env": "X"},
            "webster": {"url": "http://127.0.0.1:9", "token_env": "X", "bogus": 1},
        },
        "pool": {"load_low": 4.0, "load_high": 3.0, "emergency_load": 1.0, "tokenDir": "/x"},
    }
    cfg = tmp_path / "orchestrator.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    res = CliRunner(env={"ORCHESTRATOR_CONFIG": None, "ORCH_SERVER": None}).invoke(
        orchestrate, ["webster", "x", "--caller", "manager", "--config", str(cfg)]
    )
    out = res.output  # type: ignore[attr-defined]
    assert res.exit_code == 2, out  # type: ignore[attr-defined]
    assert f"`{cfg}` is not a valid config:" in out
    assert "`agents.webster.bogus` is not a known key" in out  # reported together
    assert "`pool.tokenDir` is not a known key; did you mean `dir`?" in out
    assert "`pool.load_high` (3) is smaller than `pool.load_low` (4)" in out
    assert "`pool.emergency_load` (1) is smaller than `pool.load_high` (3)" in out
    assert "invalid token pool settings" not in out


def test_emergency_below_default_load_high(tmp_path: Path) -> None:
    raw = {
        "handoffs_dir": str(tmp_path / "h"),
        "agents": {"manager": {"url": "http://127.0.0.1:9", "token_env": "X"}},
        "pool": {"emergency_load": 1.0},
    }
    cfg = tmp_path / "orchestrator.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    res = CliRunner(env={"ORCHESTRATOR_CONFIG": None, "ORCH_SERVER": None}).invoke(
        orchestrate, ["manager", "x", "--caller", "manager", "--config", str(cfg)]
    )
    out = res.output  # type: ignore[attr-defined]
    assert res.exit_code == 2, out  # type: ignore[attr-defined]
    assert "`pool.emergency_load` (1) is smaller than `pool.load_high` (3)" in out
