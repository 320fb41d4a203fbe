"""Ctrl-C and `workflow cancel` reach a step that waits in the token pool's queue.

A step queued for a pool token used to keep waiting after the first Ctrl-C until its own
timeout (or a token came and it was sent after all). Now the wait ends at once, the step's
place in the queue is given up, nothing is sent, and `workflow resume` sends it (once).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from engine.pool import PoolSettings, TokenPool
from tests.helpers import demo_config, interruptible, wait_for, write_config

WORKFLOW = interruptible("workflow")


def _agent(go: Path, starts: Path) -> dict[str, Any]:
    """A command agent that notes its start, then hands off once ``go`` exists."""
    script = (
        "import os, time\n"
        "from engine.handoff import make_handoff, write_handoff\n"
        "e = os.environ\n"
        f"with open({str(starts)!r}, 'a') as f:\n"
        "    f.write(e['ORCH_RUN_ID'] + '\\n')\n"
        "deadline = time.monotonic() + 60\n"
        f"while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "write_handoff(e['ORCH_HANDOFF_PATH'], make_handoff(run_id=e['ORCH_RUN_ID'], "
        "agent=e['ORCH_AGENT'], status='complete', result='done', confidence='high', "
        "key=e.get('ORCH_HANDOFF_KEY')))\n"
    )
    return {"kind": "command", "argv": [sys.executable, "-c", script], "timeout": 90}


def _setup(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    go, starts = tmp_path / "go", tmp_path / "starts.log"
    raw = demo_config(tmp_path)
    pool_dir = str(tmp_path / "pool")
    raw["pool"] = {"enabled": True, "max_tokens": 1, "adaptive": False, "dir": pool_dir}
    raw["gateway"]["detach_on_exit"] = True  # the first agent outlives the interrupted command
    raw["gateway"]["agents"]["webster"] = _agent(go, starts)
    config = write_config(tmp_path, raw)
    steps = [
        {"id": "first", "agent": "webster", "timeout": 300, "task": "Find papers."},
        {"id": "second", "agent": "webster", "timeout": 300, "task": "Find more papers."},
    ]
    wf = tmp_path / "wf" / "two.yaml"
    wf.parent.mkdir()
    wf.write_text(yaml.safe_dump({"name": "two", "caller": "manager", "steps": steps}))
    return config, wf, go, starts


def _queued(tmp_path: Path) -> list[str]:
    pool = TokenPool(PoolSettings(dir=tmp_path / "pool", max_tokens=1, adaptive=False))
    try:
        return [w["run_id"] for w in pool.status()["queue"]]
    finally:
        pool.close()


def _events(tmp_path: Path) -> list[dict[str, Any]]:
    (run_dir,) = (tmp_path / "handoffs" / "workflows").iterdir()
    text = (run_dir / "events.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _one_sent(tmp_path: Path) -> bool:
    runs = tmp_path / "handoffs" / "workflows"
    if not runs.is_dir() or not any((d / "events.jsonl").exists() for d in runs.iterdir()):
        return False
    return any(e["event"] == "step_dispatched" for e in _events(tmp_path))


def test_ctrl_c_ends_a_wait_for_a_pool_token_and_resume_sends_the_step_once(
    tmp_path: Path,
) -> None:
    config, wf, go, starts = _setup(tmp_path)
    proc = subprocess.Popen(
        [*WORKFLOW, "run", str(wf), "--config", str(config)],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        queued = wait_for(lambda: _queued(tmp_path), "a step to queue for the pool's token")
        wait_for(lambda: _one_sent(tmp_path), "the first step's dispatch")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)  # the second step's timeout is 300 s
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert len(queued) == 1 and _queued(tmp_path) == []  # its place was given up
    assert len(starts.read_text().split()) == 1  # the queued step was never sent
    sent = [e["step"] for e in _events(tmp_path) if e["event"] == "step_dispatched"]
    assert len(sent) == 1

    go.touch()  # the first agent hands off with nobody waiting; the second goes now
    rid = _events(tmp_path)[0]["run_id"]
    resumed = subprocess.run(
        [*WORKFLOW, "resume", rid, "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    steps = json.loads(resumed.stdout)["steps"]
    assert {sid: s["status"] for sid, s in steps.items()} == {
        "first": "complete",
        "second": "complete",
    }
    assert len(starts.read_text().split()) == 2  # each agent started once
    after = [e["step"] for e in _events(tmp_path) if e["event"] == "step_dispatched"]
    assert sorted(after) == ["first", "second"]


def test_workflow_cancel_ends_a_wait_for_a_pool_token(tmp_path: Path) -> None:
    config, wf, go, starts = _setup(tmp_path)
    proc = subprocess.Popen(
        [*WORKFLOW, "run", str(wf), "--json", "--config", str(config)],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        (queued,) = wait_for(lambda: _queued(tmp_path), "a step to queue for the pool's token")
        wait_for(lambda: _one_sent(tmp_path), "the first step's dispatch")
        rid = _events(tmp_path)[0]["run_id"]
        cancelled = subprocess.run(
            [*WORKFLOW, "cancel", rid, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cancelled.returncode == 0, cancelled.stderr
        wait_for(
            lambda: any(e["event"] == "run_cancelled" for e in _events(tmp_path)),
            "the run to take the cancel",
        )
        wait_for(lambda: not _queued(tmp_path), "the queued step to give its place up")
        go.touch()  # the step in flight hands off (or is cancelled) as it will
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in err
    summary = json.loads(out)
    waiting = "first" if queued.endswith("-first-1") else "second"
    assert summary["steps"][waiting]["status"] in {"cancelled", "skipped"}, summary
    assert _queued(tmp_path) == []
    assert len(starts.read_text().split()) == 1  # the queued step was never sent
