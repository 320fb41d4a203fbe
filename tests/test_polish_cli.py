"""Small CLI manners: a closed stdout (`| head -1`), plurals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tests.helpers import demo_config, free_port


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "orchestrator.yaml"
    config.write_text(yaml.safe_dump(demo_config(tmp_path)), encoding="utf-8")
    return config


def test_a_reader_gone_before_the_output_keeps_the_delegations_exit_code(
    tmp_path: Path,
) -> None:
    """`orchestrate ... | head -1`: the output is discarded, quietly, and the exit code is
    the delegation's own (0 here), not 1."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before the first line is written
    try:
        proc = subprocess.run(
            [sys.executable, "-c", "from engine.cli import orchestrate_main; orchestrate_main()",
             "webster", "find the CTE of Zerodur", "--caller", "manager", "--timeout", "60",
             "--config", str(_config(tmp_path))],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
            stdin=subprocess.DEVNULL,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    assert "error" not in proc.stderr.lower() and "Traceback" not in proc.stderr, proc.stderr
    assert "BrokenPipe" not in proc.stderr


def test_validate_says_one_step_in_one_group(tmp_path: Path) -> None:
    template = tmp_path / "one.yaml"
    template.write_text(
        "name: one\ncaller: manager\nsteps:\n  - id: look\n    agent: webster\n    task: look\n",
        encoding="utf-8",
    )
    proc = subprocess.run(
        [sys.executable, "-c", "from engine.cli import workflow_main; workflow_main()",
         "validate", str(template), "--config", str(_config(tmp_path))],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"`{template}` is valid: 1 step in 1 group, caller `manager`."


def test_inbox_once_says_each_retry_while_discord_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.cli import orchestrate

    raw = demo_config(tmp_path, channels={
        "provider": "discord",
        "base_url": f"http://127.0.0.1:{free_port()}",  # nothing listens: the network is down
        "token_env": "INBOX_DISCORD_TOKEN",
        "map": {"task-queue": "100", "results": "200"},
        "queue": "task-queue",
        "results": "results",
        "callers": {"111": "manager"},
        "post_delays": [0.01, 0.01],
    })
    config = tmp_path / "orchestrator.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    monkeypatch.setenv("INBOX_DISCORD_TOKEN", "discord-bot-token-polish-31cc")
    res = CliRunner().invoke(orchestrate, ["inbox", "discord", "--once", "--config", str(config)])
    assert res.exit_code != 0 and "Traceback" not in res.stderr
    said = [ln for ln in res.stderr.splitlines() if ln.startswith("↻ Discord (")]
    assert len(said) == 2, res.stderr  # one line per retry, before each wait
    assert "; retry 1 in 0.0 s" in said[0] and "; retry 2 in 0.0 s" in said[1]
    assert "cannot reach Discord" in res.stderr
    assert "discord-bot-token-polish-31cc" not in res.stderr
