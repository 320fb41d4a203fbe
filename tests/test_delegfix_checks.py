"""Checks of `orchestrate AGENT TASK` before anything is sent: the validator's timeout,
self-validation, `--validator` alone, and `$TIMEOUT`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import orchestrate
from tests.helpers import demo_config, gated_agent, write_config


def _run(*args: str) -> object:
    return CliRunner().invoke(orchestrate, list(args), catch_exceptions=False)


def test_the_validator_waits_no_longer_than_the_callers_timeout(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["auditor"] = gated_agent(tmp_path / "never")  # never answers
    cfg = write_config(tmp_path, raw)
    res = _run("webster", "x", "--caller", "manager", "--validate", "--validator", "auditor",
               "--timeout", "3", "--json", "--config", str(cfg))
    rec = json.loads(res.output)  # type: ignore[attr-defined]
    check = rec["envelope"]["validation"]
    assert check["outcome"] == "timeout"
    assert rec["envelope"]["timeout_s"] == 3
    validator = json.loads(
        (tmp_path / "handoffs" / f"{check['run_id']}.json").read_text(encoding="utf-8")
    )
    assert validator["envelope"]["timeout_s"] == 3  # not default_timeout (60)
    (tmp_path / "never").touch()


def test_an_agent_may_not_validate_its_own_result(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, demo_config(tmp_path))  # validator: tech-lead
    res = _run("tech-lead", "x", "--caller", "manager", "--validate", "--config", str(cfg))
    assert res.exit_code == 2  # type: ignore[attr-defined]
    assert "`tech-lead` would validate its own result" in res.output  # type: ignore[attr-defined]
    assert not (tmp_path / "handoffs").exists() or not list(
        (tmp_path / "handoffs").glob("orch-*.json")
    )


def test_validator_without_validate_is_refused(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, demo_config(tmp_path))
    res = _run("webster", "x", "--caller", "manager", "--validator", "auditor",
               "--config", str(cfg))
    assert res.exit_code == 2  # type: ignore[attr-defined]
    assert "`--validator auditor` is given without `--validate`" in res.output  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", ["abc", "-5", "0", "inf", "1e999", "nan"])
def test_a_bad_timeout_variable_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("TIMEOUT", value)
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {
        "kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m",
    }
    cfg = write_config(tmp_path, raw)
    res = _run("webster", "x", "--caller", "manager", "--config", str(cfg))
    assert res.exit_code == 2, res.output  # type: ignore[attr-defined]
    out = res.output  # type: ignore[attr-defined]
    assert f"environment variable `TIMEOUT` is '{value}'" in out
    assert "Traceback" not in out
