"""Seed 001's "Tech Lead -> all except Manager": `['*', '!manager']`. Unknown excluded
agents and `[all]` are refused at config load with advice. Real CLI (click's runner) on
the embedded demo gateway."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from engine.cli import orchestrate
from tests.helpers import demo_config, write_config

NO_ENV: dict[str, str | None] = {"ORCHESTRATOR_CONFIG": None, "ORCH_SERVER": None}


def _cfg(tmp_path: Path, acl: dict[str, list[str]]) -> Path:
    return write_config(tmp_path, demo_config(tmp_path, acl=acl))


def _run(*args: str) -> object:
    return CliRunner(env=NO_ENV).invoke(orchestrate, list(args))


def test_star_with_exclusion(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, {"manager": ["*"], "tech-lead": ["*", "!manager"]})
    denied = _run("manager", "x", "--caller", "tech-lead", "--config", str(cfg))
    out = denied.output  # type: ignore[attr-defined]
    assert denied.exit_code == 5, out  # type: ignore[attr-defined]
    assert "ACL refuses `tech-lead` -> `manager`" in out
    assert "`webster`" in out and "`manager`," not in out  # the allowed list omits manager
    ok = _run("webster", "x", "--caller", "tech-lead", "-q", "--config", str(cfg))
    assert ok.exit_code == 0, ok.output  # type: ignore[attr-defined]


def test_exclusion_of_an_unknown_agent_is_refused(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, {"manager": ["*"], "tech-lead": ["*", "!manger"]})
    res = _run("webster", "x", "--caller", "tech-lead", "--config", str(cfg))
    out = res.output  # type: ignore[attr-defined]
    assert res.exit_code == 2, out  # type: ignore[attr-defined]
    assert "`acl.tech-lead` excludes unknown agent `manger` (`!manger`)" in out
    assert "did you mean `manager`?" in out


def test_all_gets_the_star_hint(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, {"manager": ["all"]})
    res = _run("webster", "x", "--caller", "manager", "--config", str(cfg))
    out = res.output  # type: ignore[attr-defined]
    assert res.exit_code == 2, out  # type: ignore[attr-defined]
    assert "`acl.manager` lists `all`: to allow every agent write `'*'`" in out
