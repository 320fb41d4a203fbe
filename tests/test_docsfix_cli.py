"""Small CLI defects newcomers met: `-q` and capability routing, the "dispatched" line,
ACL hints, the systemd units."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from click.testing import CliRunner

from engine.cli import orchestrate
from tests.helpers import demo_config, write_config


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(orchestrate, list(args), env=env, catch_exceptions=False)


def test_quiet_silences_the_capability_routing_lines(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, demo_config(tmp_path))
    res = run("--capability", "research", "CTE of ULE", "--caller", "manager", "-q",
              "--config", str(cfg))
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("complete ")
    assert res.stderr == ""


def test_without_quiet_the_route_is_explained(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, demo_config(tmp_path))
    res = run("--capability", "research", "CTE of ULE", "--caller", "manager",
              "--config", str(cfg))
    assert res.exit_code == 0, res.output
    assert "capability `research` -> `study-builder` (fewest tasks in flight" in res.stderr
