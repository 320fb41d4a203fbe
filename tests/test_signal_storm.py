"""Signals that keep coming while `workflow run` stops: the run still stops the clean way.

SIGTERM after SIGTERM (or Ctrl-C after Ctrl-C) while the run ends its waits used to
escape as a bare ``KeyboardInterrupt`` (``aborted.``, exit 130, no resume hint) or, raised
inside a lock's release, as ``RuntimeError: release unlocked lock`` (exit 1). The real CLI
in a subprocess, the embedded gateway, a command agent that works until the test lets it
go; the signals are sent until the process has exited, so some arrive while it stops.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from tests.helpers import demo_config, gated_agent, interruptible, wait_for, write_config
from tests.test_interrupt_unsent import _has

WORKFLOW = interruptible("workflow")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_repeated_signals_end_the_run_with_its_paragraph(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    go = tmp_path / "go"
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = gated_agent(go)
    config = write_config(tmp_path, raw)
    wf = tmp_path / "two.yaml"
    steps = [
        {"id": "f1", "agent": "webster", "timeout": 120, "task": "one"},
        {"id": "f2", "agent": "webster", "timeout": 120, "task": "two"},
    ]
    wf.write_text(yaml.safe_dump({"name": "two", "caller": "manager", "steps": steps}))
    proc = subprocess.Popen(
        [*WORKFLOW, "run", str(wf), "--config", str(config)],
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(
            lambda: all(_has(tmp_path, "step_dispatched", s) for s in ("f1", "f2")),
            "both steps' dispatch",
        )
        lines: list[str] = []
        stderr = proc.stderr
        assert stderr is not None
        reader = threading.Thread(target=lambda: lines.extend(iter(stderr.readline, "")))
        reader.start()
        sent = 0
        # Signal after signal until its paragraph is out: some come while it stops.
        while proc.poll() is None and not any("interrupted" in x for x in lines) and sent < 400:
            proc.send_signal(sig)
            sent += 1
            try:
                proc.wait(timeout=0.002)
            except subprocess.TimeoutExpired:
                continue
        proc.wait(timeout=60)
        reader.join(timeout=60)
        err = "".join(lines)
        assert proc.stderr is not None
        proc.stderr.close()
    finally:
        go.touch()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    text = " ".join(err.split())
    assert sent > 1, sent
    # Its exit code, or (a signal sent before the paragraph was seen here, handled once
    # the command had ended and given the signals back) killed by that signal: a shell
    # reports both as 128 + the signal's number.
    assert proc.returncode in (code, -sig), (sent, err)
    assert "Traceback" not in err and "aborted." not in err, err
    assert "stays resumable" in text and "Continue it with: workflow resume wf-" in text, err
