"""Every secret a config names is masked, whether or not this command used it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine import redact
from engine.cli import orchestrate
from tests.helpers import demo_config, write_config

KEY = "plainsecretvalue123"
HOOKS = "hookstokenvalue456"

LEAK = "import os; print('key', os.environ['T6_KEY'], 'hooks', os.environ['T6_HOOKS'])"


def test_a_command_agent_printing_another_agents_key_shows_stars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    redact.forget_all()  # only what this command's config load registers
    monkeypatch.setenv("T6_KEY", KEY)
    monkeypatch.setenv("T6_HOOKS", HOOKS)
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {
        "kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m",
        "api_key_env": "T6_KEY",
    }
    raw["gateway"]["agents"]["secretary"] = {
        "kind": "command", "argv": [sys.executable, "-c", LEAK], "timeout": 60,
    }
    raw["agents"]["auditor"] = {"url": "http://127.0.0.1:9", "token_env": "T6_HOOKS"}
    del raw["gateway"]["agents"]["auditor"]
    cfg = write_config(tmp_path, raw)
    res = CliRunner().invoke(
        orchestrate, ["secretary", "x", "--caller", "manager", "--config", str(cfg)],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    assert "key *** hooks ***" in res.output
    seen = [p for p in (tmp_path / "handoffs").rglob("*") if p.is_file()]
    assert any(p.name == "stdout.log" for p in seen)
    for p in seen:
        text = p.read_bytes()
        assert KEY.encode() not in text, p
        assert HOOKS.encode() not in text, p


def test_register_config_reads_every_named_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    redact.forget_all()
    monkeypatch.setenv("T6_DISCORD", "discordbottoken789")
    monkeypatch.setenv("T6_SERVE", "alice:operate:servetokenabc, bob:read:servetokendef")
    monkeypatch.setenv("T6_GW", "gatewaytokenxyz")
    (tmp_path / "agent.token").write_text("filetoken0123\n", encoding="utf-8")
    raw = demo_config(
        tmp_path,
        channels={"provider": "discord", "token_env": "T6_DISCORD", "map": {"t": "1"}},
        serve={"tokens_env": "T6_SERVE"},
    )
    raw["gateway"]["token_env"] = "T6_GW"
    raw["agents"]["auditor"] = {"url": "http://127.0.0.1:9",
                                "token_file": str(tmp_path / "agent.token")}
    from engine.config import load_config

    load_config(write_config(tmp_path, raw))
    text = ("discordbottoken789 servetokenabc servetokendef gatewaytokenxyz filetoken0123")
    assert redact.redact(text) == "*** *** *** *** ***"
