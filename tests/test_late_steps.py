"""A workflow step's late handoff: `workflow resume` takes it instead of sending again.

A step ends `timeout` (or `lost`) while its agent works on; the agent's own handoff then
reaches the delegation's record (the merge rule supersedes the engine's ending).
`workflow status` says so, and `workflow resume` (with or without `--retry-failed`) ends
the step with that handoff: nothing is dispatched again, and its dependents run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.runs.replay import is_late_handoff, last_attempt_ended
from engine.store.file import read_events
from tests.helpers import DEMO, demo_config


def _late_agent(go: Path) -> dict[str, Any]:
    """A command agent that waits for the file ``go`` (60 s at most), then is the demo
    agent: it writes its own handoff (with the run's key), as a real agent would."""
    script = (
        "import os, sys, time\n"
        "deadline = time.monotonic() + 60\n"
        f"while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        f"os.execv(sys.executable, {[*DEMO, 'webster']!r})\n"
    )
    return {"kind": "command", "argv": [sys.executable, "-c", script], "timeout": 90}


def _setup(tmp_path: Path, step: dict[str, Any]) -> tuple[Path, Path, Path]:
    go = tmp_path / "go"
    raw = demo_config(tmp_path)
    raw["gateway"].pop("detach_on_exit", None)  # the shipped default: the agent outlives us
    raw["gateway"]["agents"]["webster"] = _late_agent(go)
    config = tmp_path / "orchestrator.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    template = {
        "name": "t3-late",
        "caller": "manager",
        "steps": [
            {"id": "slow", "agent": "webster", "task": "Find the CTE of Zerodur.", **step},
            {
                "id": "after",
                "agent": "secretary",
                "depends_on": ["slow"],
                "task": "Summarise: {{ steps.slow.result }}",
            },
        ],
        "finally": [{"id": "notify", "agent": "secretary", "task": "Ended {{ run.status }}."}],
    }
    path = tmp_path / "t3-late.yaml"
    path.write_text(yaml.safe_dump(template, sort_keys=False), encoding="utf-8")
    return config, path, go


def _workflow(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-c", "from engine.cli import workflow_main; workflow_main()",
         *args, "--config", str(config)],
        capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def _run_id(handoffs: Path) -> str:
    (run,) = [p.name for p in (handoffs / "workflows").iterdir() if p.is_dir()]
    return run


def _record_when(path: Path, done: Any, bound: float = 90.0) -> dict[str, Any]:
    """The record at ``path`` once ``done(record)`` holds (bounded; returns early)."""
    end = time.monotonic() + bound
    last: Any = None
    while time.monotonic() < end:
        try:
            last = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            last = None
        if isinstance(last, dict) and done(last):
            return last
        time.sleep(0.05)
    raise AssertionError(f"the record never reached the expected state: {last}")


def _late_run(tmp_path: Path, step: dict[str, Any], ending: str) -> tuple[Path, str, str]:
    """Run the workflow until `slow` ends ``ending``; let its agent answer; return the
    config, the run id and the step's delegation id once the late handoff is recorded."""
    config, template, go = _setup(tmp_path, step)
    first = _workflow(config, "run", str(template), "--non-interactive")
    # exit 4 when the only problems were timeouts (a `lost` step is one)
    assert first.returncode == 4, first.stdout + first.stderr
    handoffs = tmp_path / "handoffs"
    run_id = _run_id(handoffs)
    summary = json.loads((handoffs / "workflows" / run_id / "summary.json").read_text())
    assert summary["steps"]["slow"]["status"] == ending
    assert summary["steps"]["after"]["status"] == "skipped"
    drid = summary["steps"]["slow"]["delegation_run_id"]
    assert drid == f"{run_id}-slow-1"
    go.touch()  # the agent, left to a watchdog, now writes its own handoff
    record = _record_when(
        handoffs / f"{drid}.json",
        lambda r: r.get("status") == "complete" or bool(r["envelope"].get("also_received")),
    )
    assert record["status"] == "complete", record
    assert record["envelope"]["supersedes"] == ending
    assert is_late_handoff(record)
    return config, run_id, drid


def _check_taken(tmp_path: Path, config: Path, run_id: str, drid: str, ending: str) -> None:
    handoffs = tmp_path / "handoffs"
    run = handoffs / "workflows" / run_id
    summary = json.loads((run / "summary.json").read_text())
    slow = summary["steps"]["slow"]
    assert summary["status"] == "complete", summary
    assert slow["status"] == "complete"
    assert slow["attempts"] == 1
    assert slow["delegation_run_id"] == drid
    assert summary["steps"]["after"]["status"] == "complete"
    assert summary["steps"]["notify"]["status"] == "complete"
    step = json.loads((run / "slow.json").read_text())
    assert "Zerodur" in step["handoff"]["result"]
    assert step["attempts"][-1]["run_id"] == drid
    assert step["attempts"][-1]["outcome"] == "complete"
    # Nothing was dispatched again: no second attempt, the agent started once.
    assert not (handoffs / f"{run_id}-slow-2.json").exists()
    assert not (handoffs / ".pending" / f"{run_id}-slow-2.json").exists()
    assert len(list((handoffs / ".workspaces" / "webster").iterdir())) == 1
    events = read_events(run / "events.jsonl")
    taken = [ev for ev in events if ev.get("event") == "step_late_result"]
    assert len(taken) == 1
    assert taken[0]["step"] == "slow" and taken[0]["delegation_run_id"] == drid
    assert taken[0]["previous"] == ending and taken[0]["status"] == "complete"
    started = [ev for ev in events if ev.get("event") == "step_started"]
    assert [ev["delegation_run_id"] for ev in started if ev["step"] == "slow"] == [drid]
    # A second resume has nothing left to take or send.
    again = _workflow(config, "resume", run_id)
    assert again.returncode == 0, again.stdout + again.stderr
    events = read_events(run / "events.jsonl")
    assert len([ev for ev in events if ev.get("event") == "step_late_result"]) == 1


@pytest.mark.parametrize("retry_failed", [False, True], ids=["resume", "retry-failed"])
def test_resume_takes_a_late_handoff_of_a_timed_out_step(
    tmp_path: Path, retry_failed: bool
) -> None:
    config, run_id, drid = _late_run(tmp_path, {"timeout": 2}, "timeout")
    status = _workflow(config, "status", run_id, "--json")
    assert status.returncode == 0, status.stderr
    row = json.loads(status.stdout)["steps"]["slow"]
    assert row["status"] == "timeout"
    assert row["late_result"] == "complete"
    assert row["waiting"] == (
        f"timeout, but its agent's handoff (complete) arrived later: "
        f"`workflow resume {run_id} --config {config}` takes it"  # run from another directory
    )
    args = ["resume", run_id, *(["--retry-failed"] if retry_failed else [])]
    resumed = _workflow(config, *args)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    _check_taken(tmp_path, config, run_id, drid, "timeout")


def test_a_lost_step_says_how_a_later_handoff_is_kept_and_resume_takes_it(
    tmp_path: Path,
) -> None:
    config, run_id, drid = _late_run(
        tmp_path, {"timeout": 60, "heartbeat_timeout": 1.5}, "lost"
    )
    run = tmp_path / "handoffs" / "workflows" / run_id
    error = json.loads((run / "slow.json").read_text())["error"]
    assert error.endswith(
        "a handoff that arrives later is still recorded, superseding this ending "
        "(marked late only after the delegation's timeout)."
    ), error
    record = json.loads((tmp_path / "handoffs" / f"{drid}.json").read_text())
    assert record["envelope"]["late"] is False  # before its 60 s: superseding, not late
    resumed = _workflow(config, "resume", run_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    _check_taken(tmp_path, config, run_id, drid, "lost")


def test_last_attempt_ended_follows_the_journal() -> None:
    ev = [
        {"event": "step_started", "step": "a", "attempt": 1, "delegation_run_id": "r-a-1"},
        {"event": "step_finished", "step": "a", "status": "timeout", "delegation_run_id": "r-a-1"},
    ]
    assert last_attempt_ended(ev, "a") == "r-a-1"
    assert last_attempt_ended(ev, "b") is None
    assert last_attempt_ended(ev[:1], "a") is None  # still in flight
    reset = [*ev, {"event": "step_reset", "step": "a", "previous": "timeout"}]
    assert last_attempt_ended(reset, "a") is None
    # ended again without a new attempt (a render error after a reset): not that attempt's
    errored = [*reset, {"event": "step_finished", "step": "a", "status": "errored",
                        "delegation_run_id": "r-a-1"}]
    assert last_attempt_ended(errored, "a") is None


@pytest.mark.parametrize(
    ("envelope", "taken"),
    [
        ({"outcome": "complete", "supersedes": "timeout", "late": True}, True),
        ({"outcome": "failed", "supersedes": "lost", "late": False}, True),
        ({"outcome": "complete"}, False),  # answered in time: nothing to take
        ({"outcome": "complete", "supersedes": "timeout", "fallback": True}, False),
        ({"outcome": "complete", "supersedes": "cancelled", "late": True}, False),
        ({"outcome": "timeout"}, False),
    ],
    ids=["timeout", "lost", "in-time", "stand-in", "cancelled", "still-timeout"],
)
def test_which_records_hold_a_late_handoff(envelope: dict[str, Any], taken: bool) -> None:
    assert is_late_handoff({"status": envelope["outcome"], "envelope": envelope}) is taken


def test_a_step_whose_record_is_still_a_timeout_is_sent_again(tmp_path: Path) -> None:
    """No late handoff yet: `--retry-failed` sends the step again, as before."""
    config, template, go = _setup(tmp_path, {"timeout": 2})
    first = _workflow(config, "run", str(template), "--non-interactive")
    assert first.returncode == 4, first.stdout + first.stderr
    handoffs = tmp_path / "handoffs"
    run_id = _run_id(handoffs)
    status = json.loads(_workflow(config, "status", run_id, "--json").stdout)
    assert "late_result" not in status["steps"]["slow"]
    try:
        again = _workflow(config, "resume", run_id, "--retry-failed")
    finally:
        go.touch()  # both attempts' agents may now end
    assert again.returncode == 4, again.stdout + again.stderr
    run = handoffs / "workflows" / run_id
    started = [
        ev["delegation_run_id"]
        for ev in read_events(run / "events.jsonl")
        if ev.get("event") == "step_started" and ev.get("step") == "slow"
    ]
    assert started == [f"{run_id}-slow-1", f"{run_id}-slow-2"]
    kinds = {ev.get("event") for ev in read_events(run / "events.jsonl")}
    assert "step_late_result" not in kinds
