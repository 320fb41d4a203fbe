"""A step's agent runs once across a SIGKILL of ``workflow run`` and a resume.

The run is killed while its first POST is held (the agent has started, the gateway has
not answered, so the journal has no ``step_dispatched``); the embedded gateway dies with
it. The agent writes a file per start (``starts/<pid>``) and waits for a ``go`` file the
test creates, then writes its own handoff, so every moment is an event the test waits on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from engine.config import config_from_dict
from engine.gateway.server import LocalGateway
from engine.store.file import read_events
from tests.helpers import wait_for

AGENT = r"""
import json, os, pathlib, sys, time
from engine.handoff import make_handoff, write_handoff
starts = pathlib.Path(sys.argv[1]); go = pathlib.Path(sys.argv[2])
starts.mkdir(parents=True, exist_ok=True)
(starts / str(os.getpid())).write_text(os.environ["ORCH_RUN_ID"])
deadline = time.monotonic() + 60
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.01)
h = make_handoff(run_id=os.environ["ORCH_RUN_ID"], agent=os.environ["ORCH_AGENT"],
                 status="complete", result="found x", confidence="high",
                 key=os.environ["ORCH_HANDOFF_KEY"] or None)
write_handoff(pathlib.Path(os.environ["ORCH_HANDOFF_PATH"]), h, replace=False)
"""


@pytest.fixture
def scratch(tmp_path: Path) -> dict[str, Path]:
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT, encoding="utf-8")
    starts, go = tmp_path / "starts", tmp_path / "go"
    argv = [sys.executable, str(agent), str(starts), str(go)]
    raw = {
        "handoffs_dir": "./handoffs",
        "default_timeout": 60,
        "pool": {"adaptive": False},  # not the test host's load average
        "gateway": {
            "embedded": True,
            "agents": {
                "manager": {"kind": "command", "argv": argv, "timeout": 90},
                "webster": {"kind": "command", "argv": argv, "timeout": 90},
            },
        },
        "agents": {
            "manager": {"url": "local", "capabilities": ["planning"]},
            "webster": {"url": "local", "capabilities": ["research"]},
        },
    }
    (tmp_path / "orchestrator.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    wf = {
        "name": "one",
        "caller": "manager",
        "steps": [{"id": "a", "agent": "webster", "task": "find x"}],
    }
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(wf), encoding="utf-8")
    return {"dir": tmp_path, "starts": starts, "go": go}


def _workflow(scratch: dict[str, Path], *args: str) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).parent / "workflow"
    return subprocess.Popen(
        [
            str(exe),
            *args,
            "--config",
            str(scratch["dir"] / "orchestrator.yaml"),
            "--non-interactive",
        ],
        cwd=scratch["dir"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _kill_at_first_start(scratch: dict[str, Path]) -> Path:
    """Run the workflow, SIGKILL it once its agent has started; the run's directory."""
    proc = _workflow(scratch, "run", str(scratch["dir"] / "one.yaml"))
    try:

        def started() -> bool:
            assert proc.poll() is None, proc.communicate(timeout=60)[1].decode()
            return scratch["starts"].exists() and any(scratch["starts"].iterdir())

        wait_for(started, "the agent never started")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    runs = scratch["dir"] / "handoffs" / "workflows"
    return wait_for(lambda: next(iter(runs.iterdir()), None), "no run directory")


def _starts(scratch: dict[str, Path]) -> int:
    return len(list(scratch["starts"].iterdir()))


def _resume_and_check(scratch: dict[str, Path], run_dir: Path) -> None:
    resume = _workflow(scratch, "resume", run_dir.name)
    out, err = resume.communicate(timeout=120)
    assert resume.returncode == 0, err.decode()
    assert _starts(scratch) == 1, sorted(p.name for p in scratch["starts"].iterdir())
    rejected = scratch["dir"] / "handoffs" / "rejected"
    assert not rejected.exists() or not any(rejected.iterdir())
    step = json.loads((run_dir / "a.json").read_text())
    assert step["status"] == "complete", step
    events = [e["event"] for e in read_events(run_dir / "events.jsonl")]
    assert events.count("run_finished") == 1


def test_a_handoff_written_after_the_kill_is_taken_not_sent_again(
    scratch: dict[str, Path],
) -> None:
    run_dir = _kill_at_first_start(scratch)
    scratch["go"].touch()  # the agent now finishes alone: no gateway watches it
    wait_for(
        lambda: list((scratch["dir"] / "handoffs" / "inbox").glob("*.json")),
        "the agent never wrote its handoff",
    )
    assert (scratch["dir"] / "handoffs" / ".pending").exists()
    _resume_and_check(scratch, run_dir)


def test_an_agent_still_running_after_the_kill_is_not_started_again(
    scratch: dict[str, Path],
) -> None:
    run_dir = _kill_at_first_start(scratch)
    resume = _workflow(scratch, "resume", run_dir.name)
    # The resumed run is waiting (its step re-attached or re-sent) before the agent ends.
    pending = scratch["dir"] / "handoffs" / ".pending" / f"{run_dir.name}-a-1.json"

    def waiting() -> bool:  # the resumed run wrote its envelope just before its POST
        assert resume.poll() is None, resume.communicate(timeout=60)[1].decode()
        try:
            return bool(json.loads(pending.read_text())["pid"] == resume.pid)
        except (OSError, ValueError):
            return False

    wait_for(waiting, "the resume never took up its step")
    scratch["go"].touch()
    out, err = resume.communicate(timeout=120)
    assert resume.returncode == 0, err.decode()
    assert _starts(scratch) == 1, sorted(p.name for p in scratch["starts"].iterdir())
    _resume_and_check_final(scratch, run_dir)


def _resume_and_check_final(scratch: dict[str, Path], run_dir: Path) -> None:
    step = json.loads((run_dir / "a.json").read_text())
    assert step["status"] == "complete", step


def test_a_second_gateway_answers_a_key_the_first_started(tmp_path: Path) -> None:
    """Two gateways on one workspaces directory (the first stands for one whose process
    died: it is never asked again): the second answers the first's key with the same run
    id, holds a ``waitForCompletion`` answer until that agent ends, and starts nothing."""
    starts, go = tmp_path / "starts", tmp_path / "go"
    script = (
        "import os, pathlib, sys, time\n"
        f"d = pathlib.Path({str(starts)!r}); d.mkdir(exist_ok=True)\n"
        "(d / str(os.getpid())).touch()\n"
        "t = time.monotonic() + 60\n"
        f"while not os.path.exists({str(go)!r}) and time.monotonic() < t:\n"
        "    time.sleep(0.01)\n"
    )
    cfg = config_from_dict(
        {
            "handoffs_dir": str(tmp_path / "handoffs"),
            "gateway": {
                "agents": {
                    "webster": {
                        "kind": "command",
                        "argv": [sys.executable, "-c", script],
                        "timeout": 90,
                    }
                }
            },
            "agents": {"webster": {"url": "local"}},
        }
    )

    head = {"Authorization": "Bearer tok-0123456789", "Idempotency-Key": "run-1"}
    first = LocalGateway(cfg, token="tok-0123456789", port=0).start()
    second = LocalGateway(cfg, token="tok-0123456789", port=0).start()
    try:
        got = httpx.post(f"{first.url}/hooks/agent", json={"message": "go"}, headers=head)
        gw_run = got.json()["runId"]
        wait_for(lambda: starts.exists() and any(starts.iterdir()), "the agent never started")
        wait_for(
            lambda: (
                tmp_path / "handoffs" / ".workspaces" / "webster" / gw_run / "gateway-run.json"
            ).exists(),
            "no gateway-run.json",
        )
        again = httpx.post(f"{second.url}/hooks/agent", json={"message": "go"}, headers=head)
        assert again.json() == {"ok": True, "runId": gw_run}
        answer: dict[str, Any] = {}
        # A new gateway (its memory empty) holds the answer until the agent ends.
        third = LocalGateway(cfg, token="tok-0123456789", port=0).start()
        try:
            t = threading.Thread(
                target=lambda: answer.update(
                    httpx.post(
                        f"{third.url}/hooks/agent",
                        json={"message": "go", "waitForCompletion": True},
                        headers=head,
                        timeout=60,
                    ).json()
                )
            )
            t.start()
            wait_for(
                lambda: third.stats()["inflight"].get("webster") == 1 or answer,
                "the held request never arrived",
            )
            assert not answer  # still held: the agent runs
            go.touch()
            t.join(60)
            assert answer == {"ok": True, "runId": gw_run, "completion": {"status": "ok"}}
        finally:
            third.stop()
        assert len(list(starts.iterdir())) == 1
    finally:
        go.touch()
        second.stop()
        first.stop()
