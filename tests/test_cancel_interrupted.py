"""A `workflow cancel` whose run process is interrupted before it notices the request.

`workflow cancel` writes the request and leaves it to the live process (it holds the
run's claim), which looks within 0.2 s; a Ctrl-C before that leaves the request behind
with no `run_cancelled` line and a step in flight. `workflow status` says a cancel is
pending and that `workflow resume` concludes it; that resume ends the run `cancelled`
under its claim: the step in flight takes its agent's complete handoff (a late result),
the steps after it are skipped, and nothing is sent again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import demo_config, interruptible, wait_for, write_config

WORKFLOW = interruptible("workflow")


def _agent(go: Path) -> dict[str, Any]:
    """A command agent that hands off ``complete`` once ``go`` exists (60 s at most)."""
    script = (
        "import os, time\n"
        "from engine.handoff import make_handoff, write_handoff\n"
        "deadline = time.monotonic() + 60\n"
        f"while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "e = os.environ\n"
        "write_handoff(e['ORCH_HANDOFF_PATH'], make_handoff(run_id=e['ORCH_RUN_ID'], "
        "agent=e['ORCH_AGENT'], status='complete', result='written after the cancel', "
        "confidence='high', key=e.get('ORCH_HANDOFF_KEY')))\n"
    )
    return {"kind": "command", "argv": [sys.executable, "-c", script], "timeout": 90}


def _events(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _dispatched(runs: Path, step: str) -> Path | None:
    found = sorted(runs.iterdir()) if runs.is_dir() else []
    if not found or not (found[0] / "events.jsonl").exists():
        return None
    sent = any(e["event"] == "step_dispatched" and e.get("step") == step for e in _events(found[0]))
    return found[0] if sent else None


def _cli(config: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WORKFLOW, *args, "--config", str(config)],
        cwd=cwd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_a_cancel_the_interrupted_process_never_noticed_is_concluded_by_resume(
    tmp_path: Path,
) -> None:
    go = tmp_path / "go"
    raw = demo_config(tmp_path)
    raw["gateway"]["detach_on_exit"] = True  # the agent outlives the interrupted command
    raw["gateway"]["agents"]["webster"] = _agent(go)
    config = write_config(tmp_path, raw)
    steps = [
        {"id": "plan", "agent": "tech-lead", "task": "Plan it."},
        {"id": "code", "agent": "webster", "depends_on": ["plan"], "timeout": 120,
         "task": "Code {{ steps.plan.result }}"},
        {"id": "review", "agent": "secretary", "depends_on": ["code"],
         "task": "Review {{ steps.code.result }}"},
    ]  # fmt: skip
    wf = tmp_path / "wf" / "pipe.yaml"
    wf.parent.mkdir()
    wf.write_text(yaml.safe_dump({"name": "pipe", "caller": "manager", "steps": steps}))
    proc = subprocess.Popen(
        [*WORKFLOW, "run", str(wf), "--non-interactive", "-q", "--config", str(config)],
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        run_dir = wait_for(lambda: _dispatched(tmp_path / "handoffs" / "workflows", "code"), "code")
        rid = run_dir.name
        # Stopped, the process still holds the claim but cannot look at the request: the
        # Ctrl-C is what it sees first when it goes on.
        os.kill(proc.pid, signal.SIGSTOP)
        cancelled = _cli(config, tmp_path, "cancel", rid)
        assert cancelled.returncode == 0, cancelled.stderr
        assert "cancel requested" in cancelled.stdout + cancelled.stderr
        os.kill(proc.pid, signal.SIGINT)
        os.kill(proc.pid, signal.SIGCONT)
        proc.wait(timeout=60)
        assert not any(e["event"] == "run_cancelled" for e in _events(run_dir))

        status = _cli(config, tmp_path, "status", rid, "--json")
        assert status.returncode == 0, status.stderr
        shown = json.loads(status.stdout)
        pending = f"a cancel is pending: `workflow resume {rid}` concludes it"
        assert shown["cancel"] == pending, shown
        assert pending in shown["steps"]["code"]["waiting"], shown["steps"]["code"]

        go.write_text("")  # the agent answers after the cancel
        record = tmp_path / "handoffs" / f"{rid}-code-1.json"
        wait_for(
            lambda: record.exists() and json.loads(record.read_text()).get("status") == "complete",
            "the late handoff's record",
        )
        resumed = _cli(config, tmp_path, "resume", rid, "--non-interactive", "--json")
        assert resumed.returncode == 1, resumed.stderr  # cancelled
        done = json.loads(resumed.stdout)
        assert done["status"] == "cancelled", done
        code = done["steps"]["code"]
        assert code["status"] == "complete", code
        assert code["confidence"] == "high", code  # the agent's handoff, taken
        (step_file,) = run_dir.glob("**/code.json")
        assert json.loads(step_file.read_text())["handoff"]["result"] == "written after the cancel"
        assert done["steps"]["review"]["status"] == "skipped", done["steps"]["review"]
        assert json.loads(record.read_text())["envelope"]["outcome"] == "complete"
        kinds = [e["event"] for e in _events(run_dir)]
        assert kinds.count("step_dispatched") == 2  # plan and code: nothing sent again
        assert kinds.count("run_cancelled") == 1

        again = _cli(config, tmp_path, "status", rid, "--json")
        final = json.loads(again.stdout)
        assert final["status"] == "cancelled" and "cancel" not in final, final
        assert final["steps"]["code"]["status"] == "complete", final["steps"]["code"]
    finally:
        go.write_text("")
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()
