"""Ctrl-C and Ctrl-D of a `workflow run`: the run stays resumable, nothing is sent twice.

The first Ctrl-C stops the wait at once (not after the step in flight ends), prints one
paragraph with the exact `workflow resume RUN`, and exits 130; the step in flight keeps
its delegation, so a handoff its agent writes later is taken by `workflow resume`.
End of input at a gate prompt parks the run at that gate (exit 3).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import demo_config, interruptible, wait_for, write_config

#: Ctrl-C as a terminal sends it (tests.helpers.interruptible).
WORKFLOW = interruptible("workflow")


def _handing_off_agent(go: Path) -> dict[str, Any]:
    """A command agent that writes its own handoff once ``go`` exists (60 s at most), as
    an agent does: it needs no gateway then, so it can answer after the command ended."""
    script = (
        "import os, time\n"
        "from engine.handoff import make_handoff, write_handoff\n"
        "deadline = time.monotonic() + 60\n"
        f"while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "e = os.environ\n"
        "write_handoff(e['ORCH_HANDOFF_PATH'], make_handoff(run_id=e['ORCH_RUN_ID'], "
        "agent=e['ORCH_AGENT'], status='complete', result='late but sound', "
        "confidence='high', key=e.get('ORCH_HANDOFF_KEY')))\n"
    )
    return {"kind": "command", "argv": [sys.executable, "-c", script], "timeout": 90}


def _setup(tmp_path: Path, go: Path, *, gate: bool = False) -> tuple[Path, Path]:
    raw = demo_config(tmp_path)
    raw["gateway"]["detach_on_exit"] = True  # the agent outlives the interrupted command
    raw["gateway"]["agents"]["webster"] = _handing_off_agent(go)
    config = write_config(tmp_path, raw)
    steps: list[dict[str, Any]] = [
        {"id": "search", "agent": "webster", "timeout": 120, "task": "Find papers."}
    ]
    if gate:
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
    wf = tmp_path / "wf" / "slow.yaml"
    wf.parent.mkdir()
    wf.write_text(
        yaml.safe_dump({"name": "slow", "caller": "manager", "steps": steps}), encoding="utf-8"
    )
    return config, wf


class _Proc:
    """A `workflow` process whose stderr is read as it comes (to wait for a prompt)."""

    def __init__(self, args: list[str], cwd: Path, stdin: Any = subprocess.DEVNULL) -> None:
        self.proc = subprocess.Popen(
            [*WORKFLOW, *args],
            cwd=cwd,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.err: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for char in iter(lambda: self.proc.stderr.read(1), ""):  # a prompt ends no line
            self.err.append(char)

    def stderr(self) -> str:
        return "".join(self.err)

    def finish(self, bound: float = 60) -> tuple[int, str, str]:
        try:
            code = self.proc.wait(bound)  # stdout is small: the pipe never fills
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"still running {bound} s after: {self.stderr()}") from None
        out = self.proc.stdout.read() if self.proc.stdout else ""
        self.reader.join(bound)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return code, out, self.stderr()


def _events(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _run_dir(tmp_path: Path) -> Path | None:
    runs = tmp_path / "handoffs" / "workflows"
    found = sorted(runs.iterdir()) if runs.is_dir() else []
    return found[0] if found else None


def _dispatched(tmp_path: Path, step: str) -> Path | None:
    run_dir = _run_dir(tmp_path)
    if run_dir is None or not (run_dir / "events.jsonl").exists():
        return None
    sent = any(e["event"] == "step_dispatched" and e.get("step") == step for e in _events(run_dir))
    return run_dir if sent else None


def test_ctrl_c_stops_the_wait_at_once_and_resume_takes_the_late_handoff(
    tmp_path: Path,
) -> None:
    go = tmp_path / "go"
    config, wf = _setup(tmp_path, go)
    proc = _Proc(["run", str(wf), "--config", str(config)], tmp_path)
    run_dir = wait_for(lambda: _dispatched(tmp_path, "search"), "the step's dispatch")
    proc.proc.send_signal(signal.SIGINT)
    # The agent cannot end before `go` exists: the command ended without waiting for it.
    code, _, err = proc.finish()
    assert not go.exists()
    rid = run_dir.name
    assert code == 130, err
    assert "Traceback" not in err
    assert f"Continue it with: workflow resume {rid}" in err
    assert "The step in flight (`search`) keeps its delegation" in err
    assert "aborted" not in err
    events = _events(run_dir)
    assert [e["event"] for e in events] == ["run_started", "step_started", "step_dispatched"]
    status = subprocess.run(
        [*WORKFLOW, "status", rid, "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(status.stdout)["status"] == "running"

    go.touch()  # the agent hands off now, with nobody waiting
    record = tmp_path / "handoffs" / f"{rid}-search-1.json"
    wait_for(
        lambda: record.exists() and json.loads(record.read_text()).get("status") == "complete",
        "the late handoff's record",
    )
    resumed = subprocess.run(
        [*WORKFLOW, "resume", rid, "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["steps"]["search"]["status"] == "complete"
    after = _events(run_dir)
    assert sum(e["event"] == "step_dispatched" for e in after) == 1  # sent once
    assert sum(e["event"] == "step_started" for e in after) == 1
    assert "late but sound" in json.loads(record.read_text())["result"]


def test_ctrl_c_records_no_end_so_the_gateways_stand_in_is_taken_on_resume(
    tmp_path: Path,
) -> None:
    """An agent that ends without a handoff gets a stand-in from its watchdog (docs/gateway.md:
    `failed`, with what it printed, since the watchdog cannot know its exit code). Ctrl-C
    while it runs must not record the delegation `cancelled`: that refused the stand-in
    (kept in rejected/) and the resumed step ended `cancelled`, not as the agent did."""
    go = tmp_path / "go"
    raw = demo_config(tmp_path)
    raw["gateway"]["detach_on_exit"] = True
    script = (
        "import os, time\n"
        "deadline = time.monotonic() + 60\n"
        f"while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "print('found three papers')\n"
    )
    raw["gateway"]["agents"]["webster"] = {
        "kind": "command", "argv": [sys.executable, "-c", script], "timeout": 90
    }
    config = write_config(tmp_path, raw)
    wf = tmp_path / "wf" / "quiet.yaml"
    wf.parent.mkdir()
    steps = [{"id": "search", "agent": "webster", "timeout": 120, "task": "Find papers."}]
    wf.write_text(yaml.safe_dump({"name": "quiet", "caller": "manager", "steps": steps}))
    proc = _Proc(["run", str(wf), "--config", str(config)], tmp_path)
    run_dir = wait_for(lambda: _dispatched(tmp_path, "search"), "the step's dispatch")
    proc.proc.send_signal(signal.SIGINT)
    code, _, err = proc.finish()
    assert code == 130, err
    rid = run_dir.name
    record = tmp_path / "handoffs" / f"{rid}-search-1.json"
    assert not record.exists()  # nothing recorded as ended: the delegation is in flight

    go.touch()  # the agent ends without a handoff: its watchdog writes the stand-in
    wait_for(lambda: record.exists(), "the stand-in's record")
    data = json.loads(record.read_text())
    assert data["envelope"]["outcome"] == "failed" and data["status"] == "failed"
    assert "found three papers" in data["result"]
    resumed = subprocess.run(
        [*WORKFLOW, "resume", rid, "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 1, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["steps"]["search"]["status"] == "failed"  # as its stand-in says
    after = _events(run_dir)
    assert sum(e["event"] == "step_dispatched" for e in after) == 1  # sent once


def test_end_of_input_at_a_gate_prompt_parks_the_run(tmp_path: Path) -> None:
    config, wf = _setup(tmp_path, tmp_path / "go", gate=True)
    proc = _Proc(["run", str(wf), "--interactive", "--config", str(config)], tmp_path)
    code, _, err = proc.finish()
    rid = _run_dir(tmp_path).name  # type: ignore[union-attr]
    assert code == 3, err
    assert "aborted" not in err and "Traceback" not in err
    assert f"workflow approve {rid} review" in err
    assert f"workflow resume {rid}" in err
    status = subprocess.run(
        [*WORKFLOW, "status", rid, "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(status.stdout)["status"] == "waiting_approval"


def test_ctrl_c_at_a_gate_prompt_leaves_the_run_resumable(tmp_path: Path) -> None:
    config, wf = _setup(tmp_path, tmp_path / "go", gate=True)
    proc = _Proc(
        ["run", str(wf), "--interactive", "--config", str(config)], tmp_path, stdin=subprocess.PIPE
    )
    wait_for(lambda: "Approve? [y/n]" in proc.stderr(), "the gate's prompt")
    proc.proc.send_signal(signal.SIGINT)
    code, _, err = proc.finish()
    rid = _run_dir(tmp_path).name  # type: ignore[union-attr]
    assert code == 130, err
    assert "Traceback" not in err
    assert f"workflow resume {rid}" in err
    events = [e["event"] for e in _events(tmp_path / "handoffs" / "workflows" / rid)]
    assert "gate_decided" not in events and "run_finished" not in events
    assert events[-1] == "gate_waiting"


def test_ctrl_c_of_orchestrate_names_the_delegation_whose_late_handoff_merges(
    tmp_path: Path,
) -> None:
    go = tmp_path / "go"
    config, _ = _setup(tmp_path, go)
    proc = subprocess.Popen(
        [
            *interruptible("orchestrate"),
            "webster",
            "Find papers.",
            "--caller",
            "manager",
            "--config",
            str(config),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watcher = _Proc.__new__(_Proc)  # read its stderr as it comes
    watcher.proc, watcher.err = proc, []
    watcher.reader = threading.Thread(target=watcher._read, daemon=True)
    watcher.reader.start()
    wait_for(lambda: "waiting for the handoff" in watcher.stderr(), "the dispatch")
    proc.send_signal(signal.SIGINT)
    code, _, err = watcher.finish()
    assert not go.exists()
    assert code == 130, err
    assert "Traceback" not in err and "aborted" not in err
    rid = err.split("stopped waiting for delegation ")[1].split(";")[0]
    assert f"(see it with: orchestrate show {rid})" in err
    go.touch()
    record = tmp_path / "handoffs" / f"{rid}.json"
    wait_for(
        lambda: record.exists() and json.loads(record.read_text()).get("status") == "complete",
        "the late handoff's record",
    )
    assert json.loads(record.read_text())["result"] == "late but sound"
