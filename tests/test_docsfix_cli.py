"""Small CLI defects newcomers met: `-q` and capability routing, the "dispatched" line,
ACL hints, the systemd units."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.cli import orchestrate
from tests.helpers import demo_config, free_port, write_config


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


def test_no_dispatched_line_for_a_task_that_never_reached_its_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_TOK", "x")
    raw = demo_config(tmp_path)
    # One retry, a second later: longer than the admission wait of a held POST.
    raw["retry"] = {"delays": [1.0], "jitter": 0.0, "request_timeout": 5}
    raw["agents"]["down2"] = {"url": f"http://127.0.0.1:{free_port()}", "token_env": "FAKE_TOK"}
    cfg = write_config(tmp_path, raw)
    res = run("down2", "x", "--caller", "manager", "--timeout", "5", "--config", str(cfg))
    assert res.exit_code != 0
    assert "the task was never delivered" in res.output
    assert "retry 1 in 1.0 s" in res.stderr
    assert "dispatched" not in res.stderr
