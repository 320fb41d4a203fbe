"""`orchestrate show` of a delegation whose caller was interrupted (Ctrl-C) or killed
(`kill -9`) while it was queued for a pool token says it was never dispatched, not that
its agent may still answer; one still queued says it waits for a token.

The real CLI in subprocesses, the embedded gateway with a gated command agent holding the
file store's only pool token.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from tests.helpers import demo_config, gated_agent, interruptible, wait_for, write_config

ORCHESTRATE = interruptible("orchestrate")


def _queue(tmp_path: Path, config: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [*ORCHESTRATE, "pool", "status", "--json", "--config", str(config)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    queue: list[dict[str, Any]] = json.loads(out.stdout)["queue"]
    return queue


def _show(tmp_path: Path, config: Path, run_id: str) -> str:
    out = subprocess.run(
        [*ORCHESTRATE, "show", run_id, "--config", str(config)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return " ".join((out.stdout + out.stderr).split())


def test_show_says_a_delegation_ended_while_queued_was_never_dispatched(tmp_path: Path) -> None:
    go = tmp_path / "go"
    raw = demo_config(tmp_path)
    raw["pool"] = {"enabled": True, "max_tokens": 1, "adaptive": False}
    raw["gateway"]["agents"]["webster"] = gated_agent(go)
    config = write_config(tmp_path, raw)
    procs: list[subprocess.Popen[str]] = []

    def delegate(task: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [*ORCHESTRATE, "webster", task, "--caller", "manager", "--config", str(config)],
            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(proc)
        return proc

    try:
        delegate("holds the token")
        pending = tmp_path / "handoffs" / ".pending"
        wait_for(lambda: pending.is_dir() and any(pending.iterdir()), "the holder's dispatch")
        ended: dict[str, str] = {}
        for how in ("interrupted", "killed"):
            proc = delegate(f"queued then {how}")
            (ticket,) = wait_for(lambda: _queue(tmp_path, config), f"the {how} one to queue")
            run_id = ticket["run_id"]
            live = _show(tmp_path, config, run_id)
            assert "queued: webster for manager" in live and "nothing sent yet" in live, live
            if how == "interrupted":
                proc.send_signal(signal.SIGINT)
            else:
                os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=60)
            wait_for(lambda: not _queue(tmp_path, config), f"the {how} one to leave the queue")
            ended[how] = _show(tmp_path, config, run_id)
        for how, text in ended.items():
            assert "never dispatched" in text or "nothing was sent" in text, (how, text)
            assert "may still answer" not in text, (how, text)
            assert "dispatched 20" not in text, (how, text)
    finally:
        go.touch()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)
