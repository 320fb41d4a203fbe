"""`metrics text|json` through click: exit codes, filters, the schema."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from engine.cli import metrics, orchestrate
from engine.config import Config
from engine.schemas import validator


def _m(*args: str) -> object:
    return CliRunner().invoke(metrics, list(args), catch_exceptions=False)


def test_metrics_over_real_delegations(demo_cfg: Config) -> None:
    c = ["--caller", "manager", "--config", str(demo_cfg.path), "-q"]
    for task in ("a", "DEMO_STATUS=failed", "DEMO_STATUS=partial"):
        CliRunner().invoke(orchestrate, ["webster", task, *c])
    res = _m("json", "--config", str(demo_cfg.path))
    assert res.exit_code == 0
    doc = json.loads(res.stdout)
    validator("metrics").validate(doc)
    web = doc["agents"]["webster"]
    assert web["delegations"] == 3
    assert (
        web["by_status"]["complete"],
        web["by_status"]["failed"],
        web["by_status"]["partial"],
    ) == (1, 1, 1)
    assert abs(web["success_rate"] - 2 / 3) < 1e-3
    res = _m("text", "--config", str(demo_cfg.path), "--agent", "webster", "--since", "1h")
    assert res.exit_code == 0 and "webster" in res.stdout


def test_bad_since_is_exit_2(demo_cfg: Config) -> None:
    res = _m("json", "--since", "yesterday", "--config", str(demo_cfg.path))
    assert res.exit_code == 2 and "`--since yesterday`" in res.stderr


def test_empty_directory_says_no_records(tmp_path: Path) -> None:
    res = _m("text", "--handoffs-dir", str(tmp_path))
    assert res.exit_code == 0 and "no records" in res.stdout.lower()
