"""SIGTERM and SIGHUP stop `workflow run` and `orchestrate AGENT TASK` the way Ctrl-C
does: one paragraph naming how to go on, the run left resumable, exit 128 + the signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine.store.file import read_events
from tests.helpers import wait_for
from tests.test_resend_crash import _workflow, scratch  # noqa: F401 (a fixture)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_stops_a_run_resumably(
    scratch: dict[str, Path],  # noqa: F811
    sig: signal.Signals,
    code: int,
) -> None:
    proc = _workflow(scratch, "run", str(scratch["dir"] / "one.yaml"))
    wait_for(
        lambda: scratch["starts"].exists() and any(scratch["starts"].iterdir()),
        "the agent never started",
    )
    os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=60)
    text = err.decode()
    assert proc.returncode == code, text
    assert "Traceback" not in text
    run_id = next((scratch["dir"] / "handoffs" / "workflows").iterdir()).name
    assert f"stopped waiting for run {run_id}, which stays resumable" in text
    assert text.strip().endswith(f"workflow resume {run_id}")
    events = [
        e["event"]
        for e in read_events(scratch["dir"] / "handoffs" / "workflows" / run_id / "events.jsonl")
    ]
    assert "step_finished" not in events and "run_finished" not in events
    scratch["go"].touch()
    resumed = _workflow(scratch, "resume", run_id)
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err.decode()
    assert len(list(scratch["starts"].iterdir())) == 1


def test_sighup_stops_a_delegation_wait(scratch: dict[str, Path]) -> None:  # noqa: F811
    exe = Path(sys.executable).parent / "orchestrate"
    proc = subprocess.Popen(
        [
            str(exe),
            "webster",
            "find x",
            "--caller",
            "manager",
            "--config",
            str(scratch["dir"] / "orchestrator.yaml"),
        ],
        cwd=scratch["dir"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_for(
        lambda: scratch["starts"].exists() and any(scratch["starts"].iterdir()),
        "the agent never started",
    )
    os.kill(proc.pid, signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    text = err.decode()
    scratch["go"].touch()
    assert proc.returncode == 129, text
    assert "Traceback" not in text
    # (a progress line may come first, when the gateway answered before the signal)
    assert text.strip().splitlines()[-1].startswith("interrupted"), text
