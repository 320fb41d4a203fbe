"""Ctrl-C of a `workflow run` whose step has nothing sent: queued for a pool token, or
waiting to retry after a failed attempt.

Its paragraph tells those steps from the ones whose delegation is out (which keep it):
nothing of them is in flight, and the resumed run sends them. `workflow status` then says
what each waits for (a token; the retry, and how the last attempt ended) and that no
process is running the run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import demo_config, interruptible, wait_for, write_config

WORKFLOW = interruptible("workflow")


def _agent(go: Path, starts: Path, *, fail_first: bool = False) -> dict[str, Any]:
    """A command agent that notes its start, then hands off once ``go`` exists (60 s at
    most); with ``fail_first``, its first start hands off ``failed`` at once."""
    script = (
        "import os, time\n"
        "from engine.handoff import make_handoff, write_handoff\n"
        "e = os.environ\n"
        f"first = not os.path.exists({str(starts)!r})\n"
        f"with open({str(starts)!r}, 'a') as f:\n"
        "    f.write(e['ORCH_RUN_ID'] + '\\n')\n"
        f"status = 'failed' if first and {fail_first!r} else 'complete'\n"
        "deadline = time.monotonic() + 60\n"
        f"while status == 'complete' and not os.path.exists({str(go)!r}) "
        "and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "write_handoff(e['ORCH_HANDOFF_PATH'], make_handoff(run_id=e['ORCH_RUN_ID'], "
        "agent=e['ORCH_AGENT'], status=status, result='done', confidence='high', "
        "key=e.get('ORCH_HANDOFF_KEY')))\n"
    )
    return {"kind": "command", "argv": [sys.executable, "-c", script], "timeout": 90}


def _events(tmp_path: Path) -> list[dict[str, Any]]:
    runs = tmp_path / "handoffs" / "workflows"
    journals = list(runs.glob("*/events.jsonl")) if runs.is_dir() else []
    if not journals:
        return []
    text = journals[0].read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _has(tmp_path: Path, kind: str, step: str | None = None) -> bool:
    return any(
        e["event"] == kind and (step is None or e.get("step") == step) for e in _events(tmp_path)
    )


def _start(tmp_path: Path, raw: dict[str, Any], steps: list[dict[str, Any]]) -> tuple[Path, Any]:
    config = write_config(tmp_path, raw)
    wf = tmp_path / "wf" / "slow.yaml"
    wf.parent.mkdir()
    wf.write_text(yaml.safe_dump({"name": "slow", "caller": "manager", "steps": steps}))
    proc = subprocess.Popen(
        [*WORKFLOW, "run", str(wf), "--config", str(config)],
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return config, proc


def _interrupt(proc: Any) -> str:
    try:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    return " ".join(str(err).split())


def _status(tmp_path: Path, config: Path) -> dict[str, Any]:
    rid = _events(tmp_path)[0]["run_id"]
    out = subprocess.run(
        [*WORKFLOW, "status", rid, "--json", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout)["steps"])


def test_ctrl_c_while_a_step_waits_for_a_pool_token(tmp_path: Path) -> None:
    go, starts = tmp_path / "go", tmp_path / "starts.log"
    raw = demo_config(tmp_path)
    raw["pool"] = {"enabled": True, "max_tokens": 1, "adaptive": False, "dir": str(tmp_path / "p")}
    raw["gateway"]["agents"]["webster"] = _agent(go, starts)
    steps = [
        {"id": "first", "agent": "webster", "timeout": 300, "task": "Find papers."},
        {"id": "second", "agent": "webster", "timeout": 300, "task": "Find more papers."},
    ]
    config, proc = _start(tmp_path, raw, steps)
    try:
        wait_for(lambda: _has(tmp_path, "step_queued"), "a step to queue for the token")
        wait_for(lambda: _has(tmp_path, "step_dispatched"), "the other step's dispatch")
        err = _interrupt(proc)
    finally:
        go.touch()
    sent = next(e["step"] for e in _events(tmp_path) if e["event"] == "step_dispatched")
    queued = "second" if sent == "first" else "first"
    assert f"The step in flight (`{sent}`) keeps its delegation" in err, err
    assert (
        f"Not sent yet: `{queued}` (queued for a pool token); nothing of it is in flight, "
        "and the resumed run sends it."
    ) in err, err
    row = _status(tmp_path, config)[queued]
    assert row["waiting"].startswith("queued for a pool token"), row
    assert "no process is running this run" in row["waiting"], row


def test_ctrl_c_while_a_step_waits_to_retry(tmp_path: Path) -> None:
    go, starts = tmp_path / "go", tmp_path / "starts.log"
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = _agent(go, starts, fail_first=True)
    steps = [
        {
            "id": "s",
            "agent": "webster",
            "timeout": 120,
            "retries": 2,
            "retry_delay": 60,
            "task": "Find papers.",
        }
    ]
    config, proc = _start(tmp_path, raw, steps)
    try:
        wait_for(lambda: _has(tmp_path, "step_retry", "s"), "the retry's wait")
        err = _interrupt(proc)
    finally:
        go.touch()
    assert "keeps its delegation" not in err, err
    assert (
        "Not sent yet: `s` (waiting to retry); nothing of it is in flight, and the resumed "
        "run sends it."
    ) in err, err
    row = _status(tmp_path, config)["s"]
    assert row["waiting"].startswith("waiting to retry: attempt 2 (attempt 1 ended failed)"), row
    assert "no process is running this run" in row["waiting"], row
    assert len(starts.read_text().split()) == 1  # attempt 2 was never sent


def test_an_approved_gate_with_no_process_reads_as_waiting_for_resume(tmp_path: Path) -> None:
    """After `workflow approve` of a parked run, `status` and `runs` say it is approved
    and waits for `workflow resume` (its stored status stays `waiting_approval`)."""
    config = write_config(tmp_path, demo_config(tmp_path))
    steps = [
        {"id": "research", "agent": "tech-lead", "task": "Find papers."},
        {
            "id": "review",
            "agent": "secretary",
            "depends_on": ["research"],
            "gate": {"prompt": "Go on?"},
            "task": "Review {{ steps.research.result }}",
        },
    ]
    wf = tmp_path / "gated.yaml"
    wf.write_text(yaml.safe_dump({"name": "gated", "caller": "manager", "steps": steps}))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*WORKFLOW, *args, "--config", str(config)],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    parked = cli("run", str(wf), "--non-interactive", "--json")
    assert parked.returncode == 3, parked.stderr
    rid = json.loads(parked.stdout)["runId"]
    assert "decided" not in json.loads(cli("status", rid, "--json").stdout)
    assert cli("approve", rid, "review").returncode == 0
    status = json.loads(cli("status", rid, "--json").stdout)
    assert status["status"] == "waiting_approval"  # the stored state (docs/workflows.md)
    assert status["decided"] == "approved"
    assert status["next"] == f"workflow resume {rid}"  # the config is found from here
    header = cli("status", rid).stdout.splitlines()[0]
    assert header == f"{rid}: gated — approved, waiting for resume (no process running it)"
    (row,) = json.loads(cli("runs", "--json").stdout)
    assert (row["status"], row["decided"], row["next"]) == (
        "waiting_approval", "approved", f"workflow resume {rid}",
    )  # fmt: skip
    assert "approved, waiting for resume" in cli("runs").stdout
    done = cli("resume", rid, "--json")
    assert done.returncode == 0, done.stderr
    after = json.loads(cli("status", rid, "--json").stdout)
    assert after["status"] == "complete" and "next" not in after
