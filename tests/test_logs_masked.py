"""`orchestrate agents logs AGENT` (and `-f`) masks every token the config names.

A gateway log line may hold an agent's hooks token in any form (``raw good=<token>``), not
only as ``Bearer <token>``; the command registers the tokens of the config (each agent's
and the gateway's ``token_env`` / ``token_file``) before it prints, as the rest of the CLI
does. Real parts: the `orchestrate` program in a subprocess, a real log file.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.helpers import demo_config, write_config

GOOD = "good-hooks-token-1234567"
GATEWAY = "gw-file-token-98765432"


def _config(tmp_path: Path) -> Path:
    raw = demo_config(tmp_path, operations={"logs": "logs/{agent}.log"})
    raw["agents"]["webster"] = {"url": "http://127.0.0.1:9", "token_env": "GOOD_TOK"}
    token_file = tmp_path / "gateway.token"
    token_file.write_text(GATEWAY + "\n")
    raw["gateway"]["token_file"] = str(token_file)
    (tmp_path / "logs").mkdir()
    return write_config(tmp_path, raw)


def _env() -> dict[str, str]:
    return {**os.environ, "GOOD_TOK": GOOD, "ORCHESTRATOR_CONFIG": ""}


def _orchestrate(*args: str) -> list[str]:
    exe = Path(sys.executable).parent / "orchestrate"
    return [str(exe), *args]


LINES = [
    f"raw good={GOOD}",
    f"sent x-hook: {GOOD} and the gateway's {GATEWAY}",
    "Bearer abc123def456 refused",
    "an ordinary line",
]
SHOWN = [
    "raw good=***",
    "sent x-hook: *** and the gateway's ***",
    "Bearer *** refused",
    "an ordinary line",
]


def test_agents_logs_masks_the_config_tokens(tmp_path: Path) -> None:
    config = _config(tmp_path)
    (tmp_path / "logs" / "webster.log").write_text("".join(f"{x}\n" for x in LINES))
    proc = subprocess.run(
        _orchestrate("agents", "logs", "webster", "--config", str(config)),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == SHOWN
    assert GOOD not in proc.stdout + proc.stderr and GATEWAY not in proc.stdout


def test_agents_logs_follow_masks_the_config_tokens(tmp_path: Path) -> None:
    config = _config(tmp_path)
    log = tmp_path / "logs" / "webster.log"
    log.write_text("started\n")
    err = open(tmp_path / "stderr.txt", "w")  # noqa: SIM115 (closed at the end)
    proc = subprocess.Popen(
        _orchestrate("agents", "logs", "webster", "-f", "-n", "1", "--config", str(config)),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def drain() -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                lines.put(line.rstrip("\n"))
        lines.put("")

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        first = lines.get(timeout=120)
        assert first == "started", (tmp_path / "stderr.txt").read_text()
        # The follower opens the file at its end just after printing the tail: a block
        # appended before that is not followed, so the block is appended again until
        # one arrives whole (each wait is on the follower's output, bounded).
        deadline = time.monotonic() + 120
        while not _holds(seen, SHOWN) and time.monotonic() < deadline:
            with open(log, "a") as fh:
                fh.write("".join(f"{x}\n" for x in LINES))
            try:
                while not _holds(seen, SHOWN):
                    line = lines.get(timeout=2)
                    assert line != "", (tmp_path / "stderr.txt").read_text()
                    seen.append(line)
            except queue.Empty:
                continue
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        reader.join(timeout=30)
        err.close()
    assert _holds(seen, SHOWN), (seen, (tmp_path / "stderr.txt").read_text())
    assert all(GOOD not in s and GATEWAY not in s for s in seen)


def _holds(seen: list[str], block: list[str]) -> bool:
    """True when ``block`` is in ``seen`` as consecutive lines."""
    return any(seen[i : i + len(block)] == block for i in range(len(seen)))


def test_agents_logs_gateway_masks_the_companion_token(tmp_path: Path) -> None:
    """An embedded gateway's companion makes its own token (``.serve/gateway.token``); its
    log (``.serve/gateway.log``) is masked with it too."""
    raw = demo_config(tmp_path)  # embedded, no token configured
    config = write_config(tmp_path, raw)
    folder = tmp_path / "handoffs" / ".serve"
    folder.mkdir(parents=True)
    companion = "companion-token-5f0e1d2c3b4a"
    (folder / "gateway.token").write_text(companion + "\n")
    (folder / "gateway.log").write_text(f"listening with token={companion}\n")
    proc = subprocess.run(
        _orchestrate("agents", "logs", "gateway", "--config", str(config)),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["listening with token=***"]
