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


def _caller_only_config(tmp_path: Path, **manager: object) -> Path:
    from tests.helpers import demo_config, write_config

    raw = demo_config(tmp_path)
    del raw["gateway"]["agents"]["manager"]  # manager only calls others
    raw["agents"]["manager"] = {"url": "local", **manager}
    raw["acl"] = {"manager": ["*"], "tech-lead": ["*"]}
    return write_config(tmp_path, raw)


def _orch(*args: str) -> object:
    return CliRunner(env={"ORCHESTRATOR_CONFIG": None, "ORCH_SERVER": None}).invoke(
        orchestrate, list(args)
    )


def test_a_caller_only_agent_needs_no_gateway_agent(tmp_path: Path) -> None:
    cfg = _caller_only_config(tmp_path)
    ok = _orch("webster", "x", "--caller", "manager", "-q", "--config", str(cfg))
    assert ok.exit_code == 0, ok.output  # type: ignore[attr-defined]
    to_it = _orch("manager", "x", "--caller", "tech-lead", "--config", str(cfg))
    out = to_it.output  # type: ignore[attr-defined]
    assert to_it.exit_code == 2, out  # type: ignore[attr-defined]
    assert "`manager` only calls others" in out and "Add `gateway.agents.manager`" in out


def test_a_caller_only_agent_as_a_workflow_step_is_refused_at_validate(tmp_path: Path) -> None:
    from engine.cli import workflow

    cfg = _caller_only_config(tmp_path)
    wf = tmp_path / "w.yaml"
    wf.write_text("name: w\ncaller: tech-lead\nsteps:\n  - {id: a, agent: manager, task: x}\n")
    res = CliRunner(env={"ORCHESTRATOR_CONFIG": None}).invoke(
        workflow, ["validate", str(wf), "--config", str(cfg)]
    )
    out = res.output  # type: ignore[attr-defined]
    assert res.exit_code == 2, out  # type: ignore[attr-defined]
    assert "step `a`: `manager` only calls others" in out


def test_a_local_agent_with_capabilities_still_needs_its_gateway_agent(tmp_path: Path) -> None:
    cfg = _caller_only_config(tmp_path, capabilities=["planning"])
    res = _orch("webster", "x", "--caller", "manager", "--config", str(cfg))
    out = res.output  # type: ignore[attr-defined]
    assert res.exit_code == 2, out  # type: ignore[attr-defined]
    assert "`gateway.agents` has no `manager`. Add `gateway.agents.manager`" in out
    assert "needs no gateway agent" in out
