"""Time: a deadline for a whole run, and a resumed step that keeps its original deadline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from engine.cli import workflow
from engine.config import load_config
from engine.delegate import open_delegator
from engine.files import parse_iso
from engine.planview import dry_run_text
from engine.runner import RunOptions, RunState, WorkflowRunner, prepare
from engine.store.file import read_events
from tests.helpers import demo_config, write_config
from tests.test_lang_failure import _plan
from tests.test_lang_fanout import standalone  # noqa: F401  (a fixture)

HERE = Path(__file__).parent / "workflows" / "lang"


def test_the_dry_run_shows_the_deadline() -> None:
    import yaml

    plan, renderer = _plan(yaml.safe_load((HERE / "deadline.yaml").read_text()))
    assert "Deadline: 1 s from the start for the whole run (`finally` steps excepted).\n" in (
        dry_run_text(plan, renderer)
    )


def test_a_deadline_ends_the_run_and_finally_still_runs(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, demo_config(tmp_path)))
    prepared = prepare(cfg, str(HERE / "deadline.yaml"), {})
    with open_delegator(cfg) as d:
        result = WorkflowRunner(cfg, d).start(prepared, RunOptions())
    steps = result.summary["steps"]
    assert steps["slow"]["status"] == "timeout"
    assert steps["slow"]["attempts"] == 1  # no retry after the deadline
    assert steps["after"]["status"] == "skipped"
    assert steps["after"]["skip_reason"] == "the run's deadline (1 s after its start) has passed"
    assert steps["notify"]["status"] == "complete"
    assert result.state is RunState.FAILED and result.exit_code == 4
    meta = json.loads((result.run_dir / "run.json").read_text())
    created, deadline = parse_iso(meta["created_at"]), parse_iso(meta["deadline_at"])
    assert round((deadline - created).total_seconds()) == 1
    # the delegation was given what was left of the run, not the step's 60 s
    record = json.loads(
        (cfg.handoffs_dir / f"{steps['slow']['delegation_run_id']}.json").read_text()
    )
    assert record["envelope"]["timeout_s"] <= 1


def test_a_step_not_started_by_the_deadline_is_skipped(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, demo_config(tmp_path)))
    path = tmp_path / "wf.yaml"
    path.write_text(
        "name: wf\ncaller: manager\ndeadline: 1\nsteps:\n"
        "  - {id: slow, agent: webster, on_failure: continue, task: 'DEMO_SLEEP=20 x'}\n"
        "  - {id: late, agent: tech-lead, depends_on: [slow],\n"
        "     when: \"steps.slow.status == 'timeout'\", task: y}\n"
    )
    with open_delegator(cfg) as d:
        result = WorkflowRunner(cfg, d).start(prepare(cfg, str(path), {}), RunOptions())
    late = result.summary["steps"]["late"]
    assert late["status"] == "skipped"
    assert late["skip_reason"] == "the run's deadline (1 s after its start) has passed"


def test_a_resumed_step_gets_what_is_left_of_its_deadline(
    standalone: tuple[Path, object],  # noqa: F811
    tmp_path: Path,
) -> None:
    path, _ = standalone
    wf = tmp_path / "wf.yaml"
    wf.write_text(
        "name: wf\ncaller: manager\nsteps:\n"
        "  - {id: slow, agent: webster, timeout: 30, task: 'DEMO_SLEEP=2 x'}\n"
    )
    env = {**os.environ, "GW_TOKEN": "tok-0123456789"}
    exe = Path(sys.executable).parent / "workflow"
    proc = subprocess.Popen(
        [str(exe), "run", str(wf), "--config", str(path), "-q"],
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
    assert run_dir is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    res = CliRunner(env={"GW_TOKEN": "tok-0123456789"}).invoke(
        workflow,
        ["resume", run_dir.name, "--config", str(path), "--json", "-q"],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    events = read_events(run_dir / "events.jsonl")
    started = next(e for e in events if e["event"] == "step_started")
    (again,) = [e for e in events if e["event"] == "step_reattached"]
    resumed = next(e for e in events if e["event"] == "run_resumed")
    waited = (parse_iso(resumed["at"]) - parse_iso(started["at"])).total_seconds()
    assert again["attempt"] == 1
    assert again["timeout_s"] <= 30 - waited + 0.5  # not a fresh 30 s


# --------------------------------------------------------------------------- gate timeouts


def test_gate_timeout_and_default_come_together() -> None:
    import pytest

    from engine.errors import WorkflowError
    from engine.workflow import workflow_from_dict

    for gate, message in [
        ({"prompt": "p", "timeout": 60}, "step `a`: `gate.timeout` needs `gate.default`: "),
        ({"prompt": "p", "default": "approved"}, "step `a`: `gate.default` needs `gate.timeout`"),
    ]:
        raw = {
            "name": "t",
            "caller": "manager",
            "steps": [{"id": "a", "agent": "webster", "task": "a", "gate": gate}],
        }
        with pytest.raises(WorkflowError) as info:
            workflow_from_dict(raw, path=Path("t.yaml"))
        assert info.value.problems[0].startswith(message)


def _wait_past(run_dir: Path, step: str, seconds: float) -> None:
    """Until `seconds` have passed since the gate of `step` began to wait (a clock event)."""
    at = next(
        e["at"]
        for e in read_events(run_dir / "events.jsonl")
        if e["event"] == "gate_waiting" and e["step"] == step
    )
    end = parse_iso(at).timestamp() + seconds
    while time.time() < end:
        time.sleep(min(0.05, max(0.0, end - time.time())))


def test_a_parked_gate_takes_its_default_when_resumed_after_its_timeout(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, demo_config(tmp_path)))
    c = ["--config", str(cfg.path)]
    res = CliRunner().invoke(
        workflow,
        ["run", str(HERE / "gate-timeout.yaml"), "--non-interactive", "--json", *c],
        catch_exceptions=False,
    )
    assert res.exit_code == 3, res.output
    summary = json.loads(res.stdout)
    run_dir = Path(summary["run_dir"])
    _wait_past(run_dir, "review", 0.5)
    res = CliRunner().invoke(
        workflow, ["resume", summary["runId"], "--json", *c], catch_exceptions=False
    )
    summary = json.loads(res.stdout)
    assert summary["steps"]["review"]["status"] == "rejected"
    assert summary["steps"]["review"]["gate"]["by"] == "timeout"
    assert summary["steps"]["review"]["gate"]["reason"] == (
        "no decision within 0.5 s (the gate's default)"
    )
    assert res.exit_code == 1


def test_before_its_timeout_a_gate_still_waits(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, demo_config(tmp_path)))
    path = tmp_path / "wf.yaml"
    path.write_text(
        (HERE / "gate-timeout.yaml").read_text().replace("timeout: 0.5", "timeout: 3600")
    )
    with open_delegator(cfg) as d:
        runner = WorkflowRunner(cfg, d)
        first = runner.start(prepare(cfg, str(path), {}), RunOptions())
        assert first.state is RunState.WAITING_APPROVAL
        again = runner.resume(first.run_id, RunOptions())
    assert again.state is RunState.WAITING_APPROVAL


def test_workflow_test_takes_a_gate_default_without_an_answer(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, demo_config(tmp_path)))
    fx = tmp_path / "fx"
    fx.mkdir()
    (fx / "research.yaml").write_text("result: R\n")
    res = CliRunner().invoke(
        workflow,
        [
            "test",
            str(HERE / "gate-timeout.yaml"),
            "--fixtures",
            str(fx),
            "--json",
            "--config",
            str(cfg.path),
        ],
        catch_exceptions=False,
    )
    report = json.loads(res.stdout)
    assert report["steps"]["review"]["status"] == "rejected"
    assert report["steps"]["review"]["why"] == "gate rejected: its default"
