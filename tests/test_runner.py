"""Workflow runs end to end: real gateway, real files, real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.cli import workflow
from engine.config import Config, load_config
from engine.delegate import open_delegator
from engine.gateway.server import LocalGateway
from engine.runner import RunOptions, RunState, WorkflowRunner, prepare
from engine.runs import read_events
from tests.helpers import demo_config, rendezvous_agent, write_config

HERE = Path(__file__).parent / "workflows" / "run"
FLAKY = """
import json, os, pathlib, sys
counter = pathlib.Path(os.environ["FLAKY_COUNTER"])
n = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(n))
if n < 3:
    sys.exit("flaky failure %d" % n)
print("worked on try %d" % n)
"""


def _cfg(tmp_path: Path, **gateway_agents: Any) -> Config:
    raw = demo_config(tmp_path)
    for name, spec in gateway_agents.items():
        raw["gateway"]["agents"][name] = spec
        raw["agents"][name] = {"url": "local"}
    return load_config(write_config(tmp_path, raw))


def _run(
    cfg: Config,
    name: str,
    inputs: dict[str, str] | None = None,
    *,
    approver: Any = None,
    **opts: Any,
) -> Any:
    prepared = prepare(
        cfg, str(HERE / f"{name}.yaml") if (HERE / f"{name}.yaml").exists() else name, inputs or {}
    )
    with open_delegator(cfg) as d:
        return WorkflowRunner(cfg, d, approver=approver).start(prepared, RunOptions(**opts))


def _wf(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(workflow, list(args), input=input, catch_exceptions=False)


@pytest.mark.parametrize(
    "name,inputs,steps",
    [
        ("quick-research", {"query": "CTE of ULE"}, ["research", "verify"]),
        (
            "material-trade-study",
            {"materials": "Zerodur, ULE", "requirements": "CTE < 0.01 ppm/K"},
            ["research", "evaluate", "audit"],
        ),
        ("design-review", {"design": "M2 mirror mount, invar flexures"},
         ["technical", "optimization", "consolidate"]),
    ],
)
def test_shipped_workflows_end_to_end(
    tmp_path: Path, name: str, inputs: dict[str, str], steps: list[str]
) -> None:
    cfg = _cfg(tmp_path)
    result = _run(cfg, name, inputs)
    assert result.state is RunState.COMPLETE, result.summary
    assert result.exit_code == 0
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["workflow"] == name
    for sid, st in summary["steps"].items():
        assert st["status"] == "complete"
        rec = json.loads((result.run_dir / f"{sid}.json").read_text())
        assert rec["handoff"]["agent"] == st["agent"]
        assert "demo output" in rec["handoff"]["result"]
    assert list(summary["steps"]) == steps
    assert summary["outputs"]
    events = [e["event"] for e in read_events(result.run_dir / "events.jsonl")]
    assert events[0] == "run_started" and events[-1] == "run_finished"
    assert events.count("step_finished") == len(summary["steps"])
    meta = json.loads((result.run_dir / "run.json").read_text())
    assert set(meta["fingerprint"]) == {"template", "inputs", "agents"}


def test_independent_steps_overlap_in_time(tmp_path: Path) -> None:
    # left (webster) and right (secretary) each hand off only once both have started, so
    # they overlap however slowly the host starts them; a sequential runner would hang
    # until the agents' 60 s bound and fail the overlap check.
    meeting = tmp_path / "meeting"
    cfg = _cfg(
        tmp_path, webster=rendezvous_agent(meeting), secretary=rendezvous_agent(meeting)
    )
    result = _run(cfg, "parallel", {"topic": "mirrors"})
    assert result.state is RunState.COMPLETE

    def window(step: str) -> tuple[float, float]:
        from engine.files import parse_iso

        att = json.loads((result.run_dir / f"{step}.json").read_text())["attempts"][0]
        return (
            parse_iso(att["dispatched_at"]).timestamp(),
            parse_iso(att["received_at"]).timestamp(),
        )

    (l0, l1), (r0, r1) = window("left"), window("right")
    assert l0 < r1 and r0 < l1, "left and right did not overlap"
    j0, _ = window("join")
    assert j0 >= max(l1, r1) - 0.05
    joined = result.summary["outputs"]["joined"]
    assert "demo output from tech-lead" in joined


def test_condition_skips_and_dependents_still_run(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    result = _run(cfg, "condition", {"query": "CTE of ULE"})
    steps = result.summary["steps"]
    assert result.state is RunState.COMPLETE
    assert steps["follow-up"]["status"] == "skipped"
    assert steps["follow-up"]["skip_reason"] == (
        "condition `steps.research.status == 'partial'` is false"
    )
    assert steps["report"]["status"] == "complete"
    rec = json.loads((result.run_dir / "report.json").read_text())
    task = json.loads((cfg.handoffs_dir / f"{rec['delegation_run_id']}.json").read_text())
    assert task["envelope"]["task"].startswith("report (skipped): ")
    # and when the research is partial, the follow-up runs
    result = _run(cfg, "condition", {"query": "DEMO_STATUS=partial"})
    assert result.summary["steps"]["follow-up"]["status"] in ("partial", "complete")


def test_failure_skips_dependents_but_not_independent_steps(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    result = _run(cfg, "failure", {"first": "DEMO_STATUS=failed"})
    steps = result.summary["steps"]
    assert result.state is RunState.FAILED and result.exit_code == 1
    assert steps["first"]["status"] == "failed"
    assert steps["after-first"]["status"] == "skipped"
    assert steps["after-first"]["skip_reason"] == "upstream `first` ended failed"
    assert steps["independent"]["status"] == "complete"


def test_retries_failed_steps_but_never_blocked(tmp_path: Path) -> None:
    counter = tmp_path / "flaky-count"
    cfg = _cfg(
        tmp_path,
        flaky={
            "kind": "command",
            "argv": [sys.executable, "-c", FLAKY],
            "env": {"FLAKY_COUNTER": str(counter)},
        },
    )
    result = _run(cfg, "retry", {})
    steps = result.summary["steps"]
    assert steps["flaky"]["status"] == "complete" and steps["flaky"]["attempts"] == 3
    assert counter.read_text() == "3"
    rec = json.loads((result.run_dir / "flaky.json").read_text())
    assert [a["outcome"] for a in rec["attempts"]] == ["failed", "failed", "complete"]
    assert len({a["run_id"] for a in rec["attempts"]}) == 3
    assert steps["blocked"]["status"] == "blocked" and steps["blocked"]["attempts"] == 1
    assert result.summary["retries"] == 2


def test_input_values_stay_literal(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    result = _run(cfg, "quick-research", {"query": "{{ 7*7 }} {% raw %}x"})
    assert result.state is RunState.COMPLETE
    drid = result.summary["steps"]["research"]["delegation_run_id"]
    task = json.loads((cfg.handoffs_dir / f"{drid}.json").read_text())["envelope"]["task"]
    assert "{{ 7*7 }} {% raw %}x" in task and "49" not in task


def test_interactive_gate_yes_and_no(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    path = str(HERE / "gate.yaml")
    base = ["run", path, "-i", "query=CTE of ULE", "--config", str(cfg.path), "--interactive"]
    res = _wf(*base, input="y\n")
    assert res.exit_code == 0, res.output
    assert "=== approval gate: step `review` (agent tech-lead) ===" in res.stderr
    assert "Send the research (medium) for review?" in res.stderr
    assert "--- research: complete (confidence medium)" in res.stderr
    res = _wf(*base, "--json", input="n\nnot needed today\n")
    assert res.exit_code == 1
    summary = json.loads(res.stdout)
    assert summary["steps"]["review"]["status"] == "rejected"
    assert summary["steps"]["review"]["gate"]["reason"] == "not needed today"


def test_non_interactive_park_approve_resume(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    c = ["--config", str(cfg.path)]
    res = _wf("run", str(HERE / "gate.yaml"), "-i", "query=x", "--non-interactive", "--json", *c)
    assert res.exit_code == 3
    summary = json.loads(res.stdout)
    run_id = summary["runId"]
    assert summary["status"] == "waiting_approval"
    assert summary["steps"]["review"]["status"] == "waiting_approval"
    assert summary["steps"]["research"]["status"] == "complete"
    status = json.loads(_wf("status", run_id, "--json", *c).stdout)
    assert status["steps"]["review"]["waiting"].startswith(
        f"at its approval gate: `workflow approve {run_id} review --config {cfg.path}`"
    )
    res = _wf("approve", run_id, "review", *c)
    assert res.exit_code == 0 and f"workflow resume {run_id}" in res.stdout
    res = _wf("resume", run_id, "--json", "--non-interactive", *c)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["status"] == "complete"
    assert summary["steps"]["review"]["gate"]["decision"] == "approved"
    # the research step was not sent again: one delegation record for it
    assert summary["steps"]["research"]["attempts"] == 1
    assert summary["gate_wait_ms"] > 0


def test_approve_up_front(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    res = _wf(
        "run",
        str(HERE / "gate.yaml"),
        "-i",
        "query=x",
        "--non-interactive",
        "--approve",
        "review",
        "--config",
        str(cfg.path),
        "-q",
    )
    assert res.exit_code == 0, res.output
    res = _wf(
        "run",
        str(HERE / "gate.yaml"),
        "-i",
        "query=x",
        "--approve",
        "reveiw",
        "--config",
        str(cfg.path),
    )
    assert res.exit_code == 2
    assert "`--approve reveiw`: no such step; did you mean `review`?" in res.stderr


def test_fingerprint_change_is_refused(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    template = tmp_path / "gate.yaml"
    template.write_text((HERE / "gate.yaml").read_text())
    c = ["--config", str(cfg.path)]
    res = _wf("run", str(template), "-i", "query=x", "--non-interactive", "--json", *c)
    run_id = json.loads(res.stdout)["runId"]
    template.write_text(template.read_text().replace("review: ", "please review: "))
    _wf("approve", run_id, "review", *c)
    res = _wf("resume", run_id, *c)
    assert res.exit_code == 2
    assert f"the template `{template}`" in res.stderr and "changed since it started" in res.stderr
    res = _wf("resume", run_id, "--force", "-q", *c)
    assert res.exit_code == 0, res.output


def test_cancel_a_parked_run(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    c = ["--config", str(cfg.path)]
    run_id = json.loads(
        _wf(
            "run", str(HERE / "gate.yaml"), "-i", "query=x", "--non-interactive", "--json", *c
        ).stdout
    )["runId"]
    res = _wf("cancel", run_id, *c)
    assert res.exit_code == 0 and res.stdout.strip() == f"cancelled {run_id}."
    status = json.loads(_wf("status", run_id, "--json", *c).stdout)
    assert status["status"] == "cancelled"
    assert status["steps"]["review"]["status"] == "skipped"
    res = _wf("resume", run_id, *c)
    assert res.exit_code == 2 and "was cancelled" in res.stderr


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[tuple[Path, LocalGateway]]:
    raw = demo_config(tmp_path)
    raw["gateway"].update(embedded=False, token_env="GW_TOKEN")
    path = write_config(tmp_path, raw)
    gw = LocalGateway(load_config(path), token="tok-0123456789").start()
    raw["gateway"]["port"] = int(gw.url.rsplit(":", 1)[1])
    write_config(tmp_path, raw)
    try:
        yield path, gw
    finally:
        gw.stop()


def test_kill_9_mid_step_then_resume(standalone: tuple[Path, LocalGateway], tmp_path: Path) -> None:
    path, gw = standalone
    env = {**os.environ, "GW_TOKEN": "tok-0123456789"}
    exe = Path(sys.executable).parent / "workflow"
    proc = subprocess.Popen(
        [
            str(exe),
            "run",
            str(HERE / "slow.yaml"),
            "-i",
            "sleep=2",
            "--config",
            str(path),
            "--non-interactive",
            "-q",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    runs = tmp_path / "handoffs" / "workflows"
    deadline = time.monotonic() + 60
    run_dir = None
    while time.monotonic() < deadline:
        found = list(runs.glob("*/events.jsonl")) if runs.exists() else []
        if found and any(e["event"] == "step_dispatched" for e in read_events(found[0])):
            run_dir = found[0].parent
            break
        time.sleep(0.05)
    assert run_dir is not None, "the run never dispatched its first step"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step_run = next(
        e["delegation_run_id"]
        for e in read_events(run_dir / "events.jsonl")
        if e["event"] == "step_started"
    )
    handoff = tmp_path / "handoffs" / f"{step_run}.json"
    deadline = time.monotonic() + 60
    while not handoff.exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the agent finishes while no runner is alive
    assert handoff.exists()
    assert not (run_dir / "summary.json").exists()
    res = CliRunner(env={"GW_TOKEN": "tok-0123456789"}).invoke(
        workflow,
        ["resume", run_dir.name, "--config", str(path), "--json", "-q"],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["status"] == "complete"
    assert summary["steps"]["slow"]["delegation_run_id"] == step_run
    assert summary["steps"]["slow"]["attempts"] == 1
    stats = gw.stats()["dispatched"]
    assert stats["webster"] == 1 and stats["tech-lead"] == 1  # each step sent once
    events = [e["event"] for e in read_events(run_dir / "events.jsonl")]
    assert events.count("step_started") == 2 and "run_resumed" in events


def test_runs_list_and_status(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    _run(cfg, "parallel", {"topic": "x"})
    res = _wf("runs", "--json", "--config", str(cfg.path))
    rows = json.loads(res.stdout)
    assert rows[0]["workflow"] == "parallel" and rows[0]["status"] == "complete"
    assert rows[0]["steps"] == {"complete": 3}
    res = _wf("status", rows[0]["runId"], "--config", str(cfg.path))
    assert res.exit_code == 0 and "join" in res.stdout
    res = _wf("status", "wf-nope", "--config", str(cfg.path))
    assert res.exit_code == 2 and "no workflow run `wf-nope`" in res.stderr


def test_dry_run_dispatches_nothing(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    res = _wf("run", "quick-research", "-i", "query=CTE", "--dry-run", "--config", str(cfg.path))
    assert res.exit_code == 0
    assert "nothing is sent" in res.stdout and "<result of research>" in res.stdout
    assert not (tmp_path / "handoffs").exists()


def test_missing_and_unknown_inputs_exit_2(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    res = _wf("run", "quick-research", "-i", "qurey=x", "--config", str(cfg.path))
    assert res.exit_code == 2
    assert "did you mean `query`" in res.stderr
    assert not (tmp_path / "handoffs").exists()


def test_validate_list_graph(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    res = _wf("validate", "material-trade-study", "--config", str(cfg.path))
    assert res.exit_code == 0 and "is valid: 3 steps in 3 groups, caller `manager`" in res.stdout
    res = _wf("list", "--json", "--config", str(cfg.path))
    names = {r["name"] for r in json.loads(res.stdout)}
    assert {"quick-research", "material-trade-study", "design-review"} <= names
    res = _wf("graph", "material-trade-study", "--format", "mermaid")
    assert res.exit_code == 0 and res.stdout.startswith(("graph", "flowchart"))
    res = _wf("graph", "design-review", "--format", "dot")
    assert "digraph" in res.stdout


def test_step_validation_approves_or_fails_the_step(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    ok = _run(cfg, "validated", {"query": "CTE of ULE"})
    assert ok.state is RunState.COMPLETE
    rec = json.loads((ok.run_dir / "research.json").read_text())
    assert rec["validation"]["approved"] is True
    assert rec["validation"]["validator"] == "tech-lead"
    bad = _run(cfg, "validated", {"query": "CTE of ULE DEMO_REJECT"})
    steps = bad.summary["steps"]
    assert steps["research"]["status"] == "failed"
    assert steps["research"]["error"].startswith("validator `tech-lead` rejected the result")
    assert steps["summary"]["status"] == "skipped"


def test_cancel_a_running_workflow(standalone: tuple[Path, LocalGateway], tmp_path: Path) -> None:
    path, gw = standalone
    env = {**os.environ, "GW_TOKEN": "tok-0123456789"}
    exe = Path(sys.executable).parent / "workflow"
    proc = subprocess.Popen(
        [
            str(exe),
            "run",
            str(HERE / "slow.yaml"),
            "-i",
            "sleep=120",
            "--config",
            str(path),
            "--non-interactive",
            "--json",
            "-q",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    runs = tmp_path / "handoffs" / "workflows"
    deadline = time.monotonic() + 60
    run_dir = None
    while time.monotonic() < deadline and run_dir is None:
        found = list(runs.glob("*/events.jsonl")) if runs.exists() else []
        if found and any(e["event"] == "step_dispatched" for e in read_events(found[0])):
            run_dir = found[0].parent
        time.sleep(0.05)
    assert run_dir is not None
    t0 = time.monotonic()
    res = CliRunner().invoke(
        workflow, ["cancel", run_dir.name, "--config", str(path)], catch_exceptions=False
    )
    assert res.exit_code == 0 and "cancel requested" in res.stdout
    out, _ = proc.communicate(timeout=90)
    assert time.monotonic() - t0 < 30  # noticed at once, not after the 120 s step
    assert proc.returncode == 1
    summary = json.loads(out)
    assert summary["status"] == "cancelled"
    assert summary["steps"]["slow"]["status"] == "cancelled"
    assert summary["steps"]["after"]["status"] == "skipped"
    assert gw.stats()["dispatched"].get("tech-lead", 0) == 0
