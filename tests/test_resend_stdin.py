"""`workflow run ... <&-` (no standard input at all) parks at a gate as
``--non-interactive`` does: exit 3 with the approve/resume hint, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.test_resend_crash import scratch  # noqa: F401 (a fixture)


def test_a_closed_stdin_parks_at_a_gate(scratch: dict[str, Path]) -> None:  # noqa: F811
    wf = {
        "name": "gate",
        "caller": "manager",
        "steps": [{"id": "a", "agent": "webster", "task": "find x", "gate": {"prompt": "Go?"}}],
    }
    (scratch["dir"] / "gate.yaml").write_text(yaml.safe_dump(wf), encoding="utf-8")
    exe = Path(sys.executable).parent / "workflow"
    done = subprocess.run(
        [str(exe), "run", "gate.yaml", "--config", "orchestrator.yaml", "-q"],
        cwd=scratch["dir"],
        capture_output=True,
        preexec_fn=lambda: os.close(0),
        timeout=120,
    )
    err = done.stderr.decode()
    assert done.returncode == 3, err
    assert "Traceback" not in err and "AttributeError" not in err
    assert "workflow approve" in err
    assert not scratch["starts"].exists()  # parked before its step was sent
