"""Small CLI defects newcomers met: `-q` and capability routing, the "dispatched" line,
ACL hints, the systemd units."""

from __future__ import annotations

import os
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


def _acl_config(tmp_path: Path, acl: dict[str, list[str]]) -> Path:
    raw = demo_config(tmp_path)
    raw["acl"] = acl
    return write_config(tmp_path, raw)


@pytest.mark.parametrize("targets", [["!webster"], []], ids=["exclusions-only", "empty"])
def test_the_acl_hint_names_an_agent_that_really_may(
    tmp_path: Path, targets: list[str]
) -> None:
    cfg = _acl_config(tmp_path, {"manager": targets, "tech-lead": ["webster"]})
    res = run("webster", "hi", "--caller", "manager", "--config", str(cfg))
    assert res.exit_code == 5, res.output
    assert "`manager` may not delegate to anyone" in res.stderr
    assert "ask an agent that may (e.g. `tech-lead`)." in res.stderr


def test_the_acl_hint_says_when_nobody_may(tmp_path: Path) -> None:
    cfg = _acl_config(tmp_path, {"manager": []})
    res = run("webster", "hi", "--caller", "manager", "--config", str(cfg))
    assert res.exit_code == 5, res.output
    assert "`manager` may not delegate to anyone; no agent may delegate to `webster`." in (
        res.stderr
    )
    assert "e.g. `manager`" not in res.stderr


def test_a_list_of_only_exclusions_is_warned_about_at_load(tmp_path: Path) -> None:
    cfg = _acl_config(tmp_path, {"manager": ["!webster"]})
    res = run("webster", "hi", "--caller", "manager", "--config", str(cfg))
    warning = (
        "warning: `acl.manager` lists only exclusions, which allows no agent at all; to "
        "allow every agent but those write `manager: ['*', '!webster']`."
    )
    assert res.stderr.splitlines()[0] == warning
    assert "`manager` may not delegate to anyone (`acl.manager` lists only exclusions" in (
        res.stderr
    )


def test_an_agent_never_delegates_to_itself(tmp_path: Path) -> None:
    cfg = _acl_config(tmp_path, {"webster": ["*", "!manager"]})
    res = run("webster", "x", "--caller", "webster", "--config", str(cfg))
    assert res.exit_code == 5, res.output
    assert (
        "ACL refuses `webster` -> `webster`: an agent never delegates to itself. "
        "Nothing was sent." in res.stderr
    )
    routed = run("--capability", "research", "x", "--caller", "webster", "--dry-run",
                 "--config", str(cfg))
    assert routed.exit_code == 0, routed.output
    assert "webster: not eligible (an agent never delegates to itself)" in routed.output


def test_systemd_the_local_gateway_unit_alone_serves_its_port(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["gateway"].update({"embedded": False, "port": 18931, "token_env": "ORCH_GATEWAY_TOKEN"})
    url = "http://127.0.0.1:18931"
    raw["gateway"]["agents"] = {"g1": raw["gateway"]["agents"]["webster"],
                                "g2": raw["gateway"]["agents"]["manager"]}
    raw["agents"] = {"g1": {"url": url, "token_env": "ORCH_GATEWAY_TOKEN"},
                     "g2": {"url": url, "token_env": "ORCH_GATEWAY_TOKEN"},
                     "webster": {"url": "http://127.0.0.1:18828", "token_env": "W_TOK"}}
    raw["acl"] = {"g1": ["*"]}
    raw["validator"] = "g2"
    cfg = write_config(tmp_path, raw)
    out = tmp_path / "units"
    res = run("agents", "systemd", "--out", str(out), "--config", str(cfg))
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == [
        "openclaw-webster.service", "orchestrate-gateway.service"]
    text = (out / "orchestrate-gateway.service").read_text(encoding="utf-8")
    start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    binary = start.removeprefix("ExecStart=").split(" gateway --config ")[0]
    assert Path(binary).is_absolute() and Path(binary).name == "orchestrate", start
    assert os.access(binary, os.X_OK)
