"""A delegation whose caller dies (`kill -9`) while it is queued for a pool token was never
sent: its pending envelope says so (`queued`), and a retry with the same idempotency key
sends it under the same run id instead of waiting for a handoff that cannot come. A retry
that re-attaches to a delegation already sent, whose token a live process holds, takes no
token of its own.

The real CLI in subprocesses, the embedded gateway with command agents that work until the
test lets them go, the file store's pool (``max_tokens: 1``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from tests.helpers import demo_config, wait_for, write_config
from tests.test_opsfix_pool_kill import _agent as _marked_agent
from tests.test_opsfix_pool_kill import _cli, _started, _status


def _let_go(marks: Path) -> None:
    for run in _started(marks):
        (marks / f"{run}.go").touch()


def _agent(marks: Path) -> dict[str, object]:
    return _marked_agent(marks, handoff=True)


def _pending(tmp_path: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in (tmp_path / "handoffs").glob("**/.pending/*.json"):
        try:
            found[path.stem] = json.loads(path.read_text())
        except ValueError:  # caught mid-write: look again
            continue
    return found


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    marks = tmp_path / "marks"
    marks.mkdir()
    raw = demo_config(tmp_path)
    raw["pool"] = {"max_tokens": 1, "min_tokens": 1, "adaptive": False}
    raw["gateway"]["agents"]["webster"] = _agent(marks)
    raw["gateway"]["detach_on_exit"] = True
    return marks, write_config(tmp_path, raw)


def _delegate(tmp_path: Path, cfg: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [_cli("orchestrate"), "webster", *args, "--caller", "manager", "--timeout", "90",
         "--config", str(cfg)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip


def test_a_retry_sends_a_delegation_whose_caller_died_queued(tmp_path: Path) -> None:
    marks, cfg = _setup(tmp_path)
    procs: list[subprocess.Popen[str]] = []
    try:
        procs.append(_delegate(tmp_path, cfg, "first"))
        (run_a,) = wait_for(lambda: _started(marks), "the first agent never started")

        queued = _delegate(tmp_path, cfg, "idem", "--idempotency-key", "k4")
        procs.append(queued)
        ticket = wait_for(lambda: _status(cfg)["queue"], "the keyed delegation never queued")
        run_k = ticket[0]["run_id"]
        envelope = wait_for(lambda: _pending(tmp_path).get(run_k), "no pending envelope")
        assert envelope["queued"] is True and envelope["attempts"] == 0, envelope
        os.kill(queued.pid, signal.SIGKILL)  # killed while queued: nothing was sent
        queued.communicate(timeout=30)

        retry = _delegate(tmp_path, cfg, "idem", "--idempotency-key", "k4")
        procs.append(retry)
        (marks / f"{run_a}.go").touch()  # the first ends: its token comes back
        wait_for(lambda: run_k in _started(marks), "the keyed delegation was never sent")
        envelope = _pending(tmp_path)[run_k]
        assert "queued" not in envelope and envelope["pid"] == retry.pid, envelope
        (marks / f"{run_k}.go").touch()
        out, err = retry.communicate(timeout=90)
        assert retry.returncode == 0, (out, err)
        assert out.startswith("complete") and run_k in out, out
        record = json.loads((tmp_path / "handoffs" / f"{run_k}.json").read_text())
        assert record["envelope"]["outcome"] == "complete"
        assert record["result"] == f"done {run_k}"
        assert sorted(_started(marks)) == sorted([run_a, run_k])  # sent once
    finally:
        _let_go(marks)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)


def test_a_retry_of_a_sent_delegation_takes_no_second_token(tmp_path: Path) -> None:
    marks, cfg = _setup(tmp_path)
    procs: list[subprocess.Popen[str]] = []
    try:
        first = _delegate(tmp_path, cfg, "idem", "--idempotency-key", "k2")
        procs.append(first)
        (run_k,) = wait_for(lambda: _started(marks), "the keyed agent never started")
        retry = _delegate(tmp_path, cfg, "idem", "--idempotency-key", "k2")
        procs.append(retry)
        # The retry re-attaches (its pid in the pending envelope) and queues for nothing.
        wait_for(
            lambda: _pending(tmp_path).get(run_k, {}).get("pid") == retry.pid,
            "the retry never re-attached",
        )
        other = _delegate(tmp_path, cfg, "other")
        procs.append(other)

        def other_queued() -> dict[str, Any] | None:
            status = _status(cfg)
            pids = [t["pid"] for t in status["queue"]]
            assert retry.pid not in pids, status  # the retry never asks for a token
            return status if other.pid in pids else None

        status = wait_for(other_queued, "the other delegation never queued")
        assert [t["run_id"] for t in status["in_use"]] == [run_k], status
        assert [t["pid"] for t in status["queue"]] == [other.pid], status

        (marks / f"{run_k}.go").touch()
        for proc in (first, retry):
            out, err = proc.communicate(timeout=90)
            assert proc.returncode == 0, (out, err)
            assert out.startswith("complete") and run_k in out, out
        wait_for(lambda: len(_started(marks)) == 2, "the other delegation never started")
        (run_o,) = [r for r in _started(marks) if r != run_k]
        (marks / f"{run_o}.go").touch()
        out, err = other.communicate(timeout=90)
        assert other.returncode == 0, (out, err)
    finally:
        _let_go(marks)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)


FAN = {
    "name": "fan",
    "caller": "manager",
    "inputs": {"list": {"default": "p, q, r, s"}},
    "steps": [
        {
            "id": "each",
            "agent": "webster",
            "for_each": "inputs.list",
            "max_parallel": 3,
            "timeout": 40,
            "task": "look at {{ item }}",
        }
    ],
}


def _workflow(tmp_path: Path, cfg: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [_cli("workflow"), *args, "--config", str(cfg), "--non-interactive"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip


def test_a_resumed_fan_out_sends_the_item_that_was_queued(tmp_path: Path) -> None:
    import yaml

    marks, cfg = _setup(tmp_path)
    raw = yaml.safe_load(cfg.read_text())
    raw["pool"]["max_tokens"] = 2
    cfg.write_text(yaml.safe_dump(raw))
    (tmp_path / "fan.yaml").write_text(yaml.safe_dump(FAN))
    procs: list[subprocess.Popen[str]] = []
    try:
        run = _workflow(tmp_path, cfg, "run", str(tmp_path / "fan.yaml"), "-q")
        procs.append(run)
        wait_for(lambda: len(_started(marks)) == 2, "two items never started")

        def queued() -> list[str]:
            assert run.poll() is None, run.communicate()
            return [r for r, env in _pending(tmp_path).items() if env.get("queued")]

        (waiting,) = wait_for(queued, "the third item never queued for a token")
        os.kill(run.pid, signal.SIGKILL)
        run.communicate(timeout=30)
        _let_go(marks)  # the two items sent finish while no runner is alive

        run_id = waiting.rsplit("-each-i", 1)[0]
        resume = _workflow(tmp_path, cfg, "resume", run_id, "--json", "-q")
        procs.append(resume)
        while True:  # each item the resume sends ends once it has started
            _let_go(marks)
            try:
                out, err = resume.communicate(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                continue
        assert resume.returncode == 0, (out, err)
        assert json.loads(out)["status"] == "complete", out
        started = _started(marks)
        assert sorted(r[len(run_id) :] for r in started) == [
            f"-each-i{i}-1" for i in range(4)
        ], started  # each item sent once
        items = json.loads(
            (tmp_path / "handoffs" / "workflows" / run_id / "each.json").read_text()
        )["items"]
        assert [(i["item"], i["status"]) for i in items] == [
            (x, "complete") for x in ("p", "q", "r", "s")
        ], items
    finally:
        _let_go(marks)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)
