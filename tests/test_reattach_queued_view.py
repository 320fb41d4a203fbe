"""A step dispatched before a `kill -9` and re-attached by `workflow resume` that waits for
a pool token is not "not sent yet": `workflow status` and Ctrl-C's paragraph say it was
dispatched and is re-attached, waiting for a token (and it is not sent again).

The real CLI in subprocesses, the embedded gateway, the file store's pool (``max_tokens:
1``): the killed run's agent hands off and ends, its token goes to another delegation that
keeps it, so the resumed step queues behind that one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers import demo_config, gated_agent, interruptible, wait_for, write_config
from tests.test_interrupt_unsent import _agent, _events, _has, _interrupt, _status

WORKFLOW = interruptible("workflow")


def _exe(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def test_a_reattached_step_waiting_for_a_token_reads_as_dispatched(tmp_path: Path) -> None:
    go, starts, other_go = tmp_path / "go", tmp_path / "starts.log", tmp_path / "other-go"
    raw = demo_config(tmp_path)
    raw["pool"] = {"enabled": True, "max_tokens": 1, "adaptive": False, "dir": str(tmp_path / "p")}
    raw["gateway"]["agents"]["webster"] = _agent(go, starts)
    raw["gateway"]["agents"]["secretary"] = gated_agent(other_go)
    raw["gateway"]["detach_on_exit"] = True
    config = write_config(tmp_path, raw)
    wf = tmp_path / "one.yaml"
    steps = [{"id": "f1", "agent": "webster", "timeout": 120, "task": "Find papers."}]
    wf.write_text(yaml.safe_dump({"name": "one", "caller": "manager", "steps": steps}))
    procs: list[subprocess.Popen[str]] = []

    def start(argv: list[str]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            argv, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(proc)
        return proc

    try:
        run = start([*WORKFLOW, "run", str(wf), "--config", str(config)])
        wait_for(lambda: _has(tmp_path, "step_dispatched", "f1"), "f1's dispatch")
        os.kill(run.pid, signal.SIGKILL)
        run.communicate(timeout=30)
        start(
            [_exe("orchestrate"), "secretary", "note it", "--caller", "manager",
             "--config", str(config)]
        )  # fmt: skip
        go.touch()  # f1's agent hands off and ends: its token goes to the other delegation
        inbox = tmp_path / "handoffs" / "inbox"
        wait_for(lambda: inbox.is_dir() and any(inbox.iterdir()), "f1's handoff")

        rid = _events(tmp_path)[0]["run_id"]
        resume = start([*WORKFLOW, "resume", rid, "--config", str(config)])
        wait_for(
            lambda: [e for e in _events(tmp_path) if e["event"] == "step_queued"],
            "the re-attached step never queued",
        )
        row = _status(tmp_path, config)["f1"]
        assert row["waiting"].startswith("dispatched before and re-attached: waiting for a pool"), (
            row
        )
        assert "nothing sent yet" not in row["waiting"], row
        err = _interrupt(resume)
        assert "The step in flight (`f1` (dispatched, re-attached: waiting for a pool token))" in (
            err
        ), err
        assert "Not sent yet" not in err, err
        assert starts.read_text().split() == [f"{rid}-f1-1"]  # sent once
    finally:
        go.touch()
        other_go.touch()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)
