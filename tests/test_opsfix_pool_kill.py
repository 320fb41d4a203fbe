"""`kill -9` of a token holder whose agent goes on: the token stays until the agent ends.

The real CLI in subprocesses, the embedded gateway with command agents that work until the
test lets them go, the file store's pool. ``max_tokens: 1``: while the killed caller's
agent still runs, a second delegation waits; it starts once that agent has ended.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from engine.cli import orchestrate
from tests.helpers import demo_config, wait_for, write_config


def _cli(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _agent(marks: Path, *, handoff: bool = False) -> dict[str, object]:
    """Leaves ``marks/<run id>.started``, works until ``marks/<run id>.go`` exists; with
    ``handoff``, then writes its own handoff (it lands even when the gateway that started
    it was killed), else prints its result."""
    end = (
        "from engine.handoff import make_handoff, write_handoff\n"
        "h = make_handoff(run_id=run, agent=os.environ['ORCH_AGENT'], status='complete',\n"
        "                 result='done ' + run, confidence='high',\n"
        "                 key=os.environ['ORCH_HANDOFF_KEY'] or None)\n"
        "write_handoff(__import__('pathlib').Path(os.environ['ORCH_HANDOFF_PATH']), h)\n"
        if handoff
        else "print('done ' + run)\n"
    )
    script = (
        "import os, time\n"
        "run = os.environ['ORCH_RUN_ID']\n"
        f"marks = {str(marks)!r}\n"
        "open(os.path.join(marks, run + '.started'), 'w').close()\n"
        "end = time.monotonic() + 90\n"
        "while not os.path.exists(os.path.join(marks, run + '.go')) "
        "and time.monotonic() < end:\n"
        "    time.sleep(0.01)\n"
    ) + end
    return {"kind": "command", "argv": [sys.executable, "-c", script], "timeout": 120}


def _status(cfg: Path) -> dict[str, Any]:
    res = CliRunner().invoke(orchestrate, ["pool", "status", "--json", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    data: dict[str, Any] = json.loads(res.output)
    return data


def _started(marks: Path) -> list[str]:
    return sorted(p.name[: -len(".started")] for p in marks.glob("*.started"))


def test_a_killed_holders_agent_keeps_its_token(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    raw = demo_config(tmp_path)
    raw["pool"] = {"max_tokens": 1, "min_tokens": 1, "adaptive": False}
    raw["gateway"]["agents"]["webster"] = _agent(marks)
    raw["gateway"]["detach_on_exit"] = True
    cfg = write_config(tmp_path, raw)

    def delegate() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [_cli("orchestrate"), "webster", "job", "--caller", "manager", "--config", str(cfg)],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, text=True, start_new_session=True,
        )  # fmt: skip

    first = delegate()
    second: subprocess.Popen[str] | None = None
    try:
        (run_a,) = wait_for(lambda: _started(marks), "the first agent never started")
        holder = _status(cfg)["in_use"][0]
        assert holder["run_id"] == run_a and holder["pid"] == first.pid
        os.kill(first.pid, signal.SIGKILL)  # the caller dies; its agent goes on
        first.communicate(timeout=30)

        second = delegate()
        wait_for(lambda: _status(cfg)["queue"], "the second delegation never queued")
        # A look at the pool reclaims dead holders first: this one's agent still works.
        status = _status(cfg)
        assert [t["run_id"] for t in status["in_use"]] == [run_a], status
        assert [r for r in status["reclaimed"] if r["run_id"] == run_a] == [], status
        assert _started(marks) == [run_a]

        (marks / f"{run_a}.go").touch()  # the first agent ends: its token comes back
        started = wait_for(lambda: len(_started(marks)) == 2 and _started(marks), "no second")
        (run_b,) = [r for r in started if r != run_a]
        reclaimed = [r for r in _status(cfg)["reclaimed"] if r["run_id"] == run_a]
        assert [r["reason"] for r in reclaimed] == ["dead"]
        (marks / f"{run_b}.go").touch()
        out, err = second.communicate(timeout=90)
        assert second.returncode == 0, (out, err)
        assert out.startswith("complete"), out
    finally:
        for run in _started(marks):
            (marks / f"{run}.go").touch()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)
