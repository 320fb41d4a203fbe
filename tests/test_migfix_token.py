"""A token file written in the environment-file form (`NAME=value`, as systemd's
EnvironmentFile or a .env file) is refused before anything is sent, naming the file and
never showing the value. Real CLI in click's runner."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from engine.cli import orchestrate

SECRET = "s3cr3t-Tok3n-abcdef0123456789"


def _config(tmp: Path, token_file: Path) -> Path:
    raw = {
        "handoffs_dir": str(tmp / "handoffs"),
        "retry": {"delays": [0.01], "jitter": 0.0, "request_timeout": 1},
        "pool": {"enabled": False},
        "agents": {
            "manager": {"url": "http://127.0.0.1:9", "token_env": "UNUSED_TOKEN"},
            "webster": {"url": "http://127.0.0.1:9", "token_file": str(token_file)},
        },
    }
    path = tmp / "orchestrator.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _run(cfg: Path) -> object:
    return CliRunner(env={"ORCHESTRATOR_CONFIG": None, "ORCH_SERVER": None}).invoke(
        orchestrate, ["webster", "t", "--caller", "manager", "--config", str(cfg)]
    )


@pytest.mark.parametrize(
    "line", [f"OPENCLAW_GATEWAY_TOKEN={SECRET}\n", f"export OPENCLAW_GATEWAY_TOKEN={SECRET}"]
)
def test_env_file_form_is_refused_naming_the_file(tmp_path: Path, line: str) -> None:
    tok = tmp_path / "gateway.env"
    tok.write_text(line)
    res = _run(_config(tmp_path, tok))
    out = res.output  # type: ignore[attr-defined]
    assert res.exit_code == 2, out  # type: ignore[attr-defined]
    assert f"token file `{tok}` holds a line of the form `OPENCLAW_GATEWAY_TOKEN=...`" in out
    assert "must hold only the token" in out and "token_env: OPENCLAW_GATEWAY_TOKEN" in out
    assert SECRET not in out
    assert "401" not in out
    assert not (tmp_path / "handoffs").exists() or not list((tmp_path / "handoffs").rglob("*.json"))


def test_base64_padding_is_still_a_token(tmp_path: Path) -> None:
    tok = tmp_path / "token"
    tok.write_text("abcDEF012==\n")
    res = _run(_config(tmp_path, tok))
    out = res.output  # type: ignore[attr-defined]
    assert "environment file" not in out
    assert "127.0.0.1:9" in out  # accepted; nothing listens there
