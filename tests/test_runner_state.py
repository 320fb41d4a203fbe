"""Run state under real input: per-run state, resume, replay, retry backoff, bounded templates.

Real local gateway with demo agents (tests/helpers.py `demo_config`), real run directories.
"""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.cli import workflow
from engine.config import Config, load_config
from engine.delegate import open_delegator
from engine.errors import RunStateError, WorkflowError
from engine.progress import LineReporter
from engine.renderer import TaskRenderer, render_context
from engine.runner import (
    MAX_RETRY_DELAY,
    RunOptions,
    RunState,
    StepState,
    WorkflowRunner,
    prepare,
    retry_delay,
)
from engine.runs import cancel_run, list_runs, read_events, replay, run_status, summarize
from engine.sandbox import RenderLimits
from engine.workflow import workflow_from_dict
from tests.helpers import demo_config, write_config

HERE = Path(__file__).parent / "workflows"
STATE = HERE / "state"

#: A command agent that fails its first $FLAKY_FAILS tasks, then works.
FLAKY = """
import os, pathlib, sys
counter = pathlib.Path(os.environ["FLAKY_COUNTER"])
n = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(n))
if n <= int(os.environ["FLAKY_FAILS"]):
    sys.exit("flaky failure %d" % n)
print("worked on try %d" % n)
"""


def _cfg(tmp_path: Path, *, fails: int = 1) -> Config:
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["flaky"] = {
        "kind": "command",
        "argv": [sys.executable, "-c", FLAKY],
        "env": {"FLAKY_COUNTER": str(tmp_path / "flaky-count"), "FLAKY_FAILS": str(fails)},
    }
    raw["agents"]["flaky"] = {"url": "local"}
    return load_config(write_config(tmp_path, raw))


def _prepared(cfg: Config, name: str, inputs: dict[str, str] | None = None) -> Any:
    path = STATE / f"{name}.yaml"
    if not path.exists():
        path = HERE / "run" / f"{name}.yaml"
    return prepare(cfg, str(path), inputs or {})


def _kinds_by_step(run_dir: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ev in read_events(run_dir / "events.jsonl"):
        if "step" in ev:
            out.setdefault(ev["step"], []).append(ev["event"])
    return out


# ----------------------------------------------------------------- resume --retry-failed


def test_retry_failed_revives_a_branch_the_stop_cut_off(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, fails=1)
    with open_delegator(cfg) as d:
        runner = WorkflowRunner(cfg, d)
        # One worker: `first` fails before `other` finishes, so `after-other` (not a
        # dependent of `first`) is skipped only because the run stopped.
        first = runner.start(_prepared(cfg, "stop"), RunOptions(max_parallel=1))
        steps = first.summary["steps"]
        assert first.state is RunState.FAILED
        assert steps["first"]["status"] == "failed"
        assert steps["other"]["status"] == "complete"
        assert steps["after-other"]["status"] == "skipped"
        assert steps["after-other"]["skip_reason"] == "the run stopped after `first` ended failed"
        assert steps["after-first"]["skip_reason"] == "upstream `first` ended failed"

        again = runner.resume(first.run_id, RunOptions(retry_failed=True))
    assert again.state is RunState.COMPLETE, again.summary
    assert again.exit_code == 0
    assert {s: v["status"] for s, v in again.summary["steps"].items()} == {
        "first": "complete",
        "other": "complete",
        "after-other": "complete",
        "after-first": "complete",
    }
    resets = [
        e["step"]
        for e in read_events(again.run_dir / "events.jsonl")
        if e["event"] == "step_reset"
    ]
    assert sorted(resets) == ["after-first", "after-other", "first"]  # `other` kept its result


# ----------------------------------------------------------------- per-run state


def test_a_runner_reused_for_a_different_workflow(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    with open_delegator(cfg) as d:
        runner = WorkflowRunner(cfg, d)
        a = runner.start(_prepared(cfg, "chain-a"), RunOptions())
        x = runner.start(_prepared(cfg, "chain-x"), RunOptions())
    assert a.state is RunState.COMPLETE, a.summary
    assert x.state is RunState.COMPLETE, x.summary
    assert a.run_id != x.run_id
    # Each `b` read its own upstream step: the second run's task names `x`'s result.
    for result, upstream in ((a, "a"), (x, "x")):
        drid = result.summary["steps"]["b"]["delegation_run_id"]
        assert drid.startswith(f"{result.run_id}-b-")
        task = json.loads((cfg.handoffs_dir / f"{drid}.json").read_text())["envelope"]["task"]
        upstream_result = json.loads((result.run_dir / f"{upstream}.json").read_text())
        assert task == f"b after {upstream_result['handoff']['result']}"


def test_two_runs_at_once_on_one_runner_and_delegator(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    results: dict[str, Any] = {}
    errors: list[BaseException] = []
    with open_delegator(cfg) as d:
        runner = WorkflowRunner(cfg, d)
        prepared = {
            "parallel": _prepared(cfg, "parallel", {"topic": "DEMO_SLEEP=0.3 mirrors"}),
            "chain-x": _prepared(cfg, "chain-x"),
        }
        go = threading.Barrier(2)

        def run(name: str) -> None:
            try:
                go.wait(timeout=30)
                results[name] = runner.start(prepared[name], RunOptions(max_parallel=4))
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(n,)) for n in prepared]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert not errors, errors
    assert set(results) == {"parallel", "chain-x"}
    for name, result in results.items():
        assert result.state is RunState.COMPLETE, (name, result.summary)
        kinds = _kinds_by_step(result.run_dir)
        assert set(kinds) == set(result.summary["steps"]), name
        for step, seen in kinds.items():
            for needed in ("step_started", "step_dispatched", "step_finished"):
                assert seen.count(needed) == 1, (name, step, seen)
            drid = result.summary["steps"][step]["delegation_run_id"]
            assert drid.startswith(f"{result.run_id}-{step}-"), (name, step, drid)


# ----------------------------------------------------------------- replay


def test_a_run_parked_at_a_gate_reads_as_waiting(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    with open_delegator(cfg) as d:
        parked = WorkflowRunner(cfg, d).start(_prepared(cfg, "gate", {"query": "x"}), RunOptions())
    assert parked.state is RunState.WAITING_APPROVAL
    on_disk = json.loads((parked.run_dir / "summary.json").read_text())
    assert on_disk["status"] == "waiting_approval"
    assert replay(parked.run_dir).state is RunState.WAITING_APPROVAL
    assert run_status(cfg, parked.run_id)["status"] == "waiting_approval"
    assert [r["status"] for r in list_runs(cfg)] == ["waiting_approval"]
    res = CliRunner().invoke(
        workflow, ["status", parked.run_id, "--config", str(cfg.path)], catch_exceptions=False
    )
    assert res.exit_code == 0
    assert res.output.splitlines()[0] == (
        f"{parked.run_id}: gate — waiting_approval (no process running it)"
    )


BAD_EVENTS = [
    {"event": "step_started", "step": "research"},  # no attempt, no delegation_run_id
    {"event": "step_finished"},  # no step
    {"event": "step_finished", "step": "research", "status": "exploded"},
    {"event": "step_finished", "step": "research", "status": "complete", "at": "yesterday"},
    {"event": "run_finished", "status": "nope"},
    {"event": "gate_decided", "step": "review", "decision": "maybe"},
    {"event": "step_skipped", "step": "no-such-step"},
    {"event": "teleported", "step": "research"},
    {"event": ["not", "a", "name"]},
    [1, 2, 3],
]


def test_replay_skips_unknown_and_malformed_events_with_a_warning(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    with open_delegator(cfg) as d:
        parked = WorkflowRunner(cfg, d).start(_prepared(cfg, "gate", {"query": "x"}), RunOptions())
    journal = parked.run_dir / "events.jsonl"
    good = len(journal.read_text().splitlines())
    with journal.open("a") as fh:
        for ev in BAD_EVENTS:
            fh.write(json.dumps(ev) + "\n")
    view = replay(parked.run_dir)
    assert view.state is RunState.WAITING_APPROVAL
    assert view.steps["research"].state is StepState.COMPLETE
    assert view.steps["review"].state is StepState.WAITING_APPROVAL
    assert len(view.warnings) == len(BAD_EVENTS)
    assert view.warnings[0] == (
        f"`{journal}` line {good + 1}: event 'step_started' skipped: "
        "`attempt` is missing or not an int."
    )
    assert f"line {good + 8}: event 'teleported' skipped: unknown event." in view.warnings[7]
    assert "no step 'no-such-step' in the run's plan" in view.warnings[6]
    summary = summarize(view)
    assert summary["warnings"] == view.warnings
    assert summary["status"] == "waiting_approval"
    assert run_status(cfg, parked.run_id)["status"] == "waiting_approval"

    # and the run still resumes: approve, then the review runs
    res = CliRunner().invoke(
        workflow,
        ["approve", parked.run_id, "review", "--config", str(cfg.path)],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    with open_delegator(cfg) as d:
        done = WorkflowRunner(cfg, d).resume(parked.run_id, RunOptions())
    assert done.state is RunState.COMPLETE, done.summary


def test_a_hand_edited_empty_run_json_is_reported_for_that_run_only(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    with open_delegator(cfg) as d:
        runner = WorkflowRunner(cfg, d)
        good = runner.start(_prepared(cfg, "chain-a"), RunOptions())
        broken = runner.start(_prepared(cfg, "chain-x"), RunOptions())
    (broken.run_dir / "run.json").write_text("{}")
    with pytest.raises(RunStateError) as info:
        replay(broken.run_dir)
    assert str(info.value) == (
        f"`{broken.run_dir / 'run.json'}` has no usable `plan` (`plan.groups` and "
        "`plan.steps` are needed): the run record was edited or damaged, so this run cannot "
        "be shown or resumed. Other runs are not affected; start this workflow again with "
        "`workflow run`."
    )
    with pytest.raises(RunStateError):
        run_status(cfg, broken.run_id)
    assert [r["runId"] for r in list_runs(cfg)] == [good.run_id]
    assert run_status(cfg, good.run_id)["status"] == "complete"
    res = CliRunner().invoke(
        workflow, ["resume", broken.run_id, "--config", str(cfg.path)], catch_exceptions=False
    )
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "has no usable `plan`" in res.output


# ----------------------------------------------------------------- retry backoff


@pytest.mark.parametrize(
    ("base", "retry", "jitter", "bound", "expected"),
    [
        (2.0, 1, 0.0, None, 2.0),
        (2.0, 2, 0.0, None, 4.0),
        (2.0, 3, 0.5, None, 8.8),  # +20 % jitter at most: 8 * 1.1
        (2.0, 10, 0.0, None, MAX_RETRY_DELAY),  # 1024 s capped
        (2.0, 100, 1.0, None, MAX_RETRY_DELAY),
        (2.0, 3, 0.0, 5.0, 5.0),  # never past the step's timeout
        (0.0, 3, 1.0, None, 0.0),  # retry_delay: 0 retries at once
    ],
    ids=["first", "doubles", "jitter", "capped", "huge-retry", "bounded", "zero"],
)
def test_retry_delay_table(
    base: float, retry: int, jitter: float, bound: float | None, expected: float
) -> None:
    assert retry_delay(base, retry, rng=lambda: jitter, bound=bound) == pytest.approx(expected)


def test_step_retries_back_off_with_jitter(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, fails=2)
    waits: list[float] = []

    def no_wait(cancel: threading.Event, seconds: float) -> bool:
        waits.append(seconds)
        return cancel.is_set()

    lines = io.StringIO()
    with open_delegator(cfg) as d:
        runner = WorkflowRunner(
            cfg, d, retry_wait=no_wait, rng=lambda: 0.5, reporter=LineReporter(lines)
        )
        result = runner.start(_prepared(cfg, "backoff"), RunOptions())
    assert result.state is RunState.COMPLETE, result.summary
    assert result.summary["steps"]["flaky"]["attempts"] == 3
    # retry_delay 1.5 s doubling, +10 % jitter; the second is bounded by `timeout: 5`
    assert waits == pytest.approx([1.65, 3.3])
    retries = [
        (e["attempt"], e["delay_s"])
        for e in read_events(result.run_dir / "events.jsonl")
        if e["event"] == "step_retry"
    ]
    assert retries == [(2, 1.65), (3, 3.3)]
    shown = [line for line in lines.getvalue().splitlines() if line.startswith("↻")]
    assert shown == ["↻ flaky failed: attempt 2 in 1.7 s", "↻ flaky failed: attempt 3 in 3.3 s"]


def test_a_cancel_interrupts_the_wait_before_a_retry(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, fails=99)
    waiting = threading.Event()
    run_ids: list[str] = []

    def real_wait(cancel: threading.Event, seconds: float) -> bool:
        waiting.set()
        return cancel.wait(seconds)  # the real wait: only a cancel ends it early

    out: dict[str, Any] = {}
    with open_delegator(cfg) as d:
        from engine.reporter import Reporter

        class Ids(Reporter):
            def event(self, kind: str, **fields: Any) -> None:
                if kind == "run_started":
                    run_ids.append(fields["run_id"])

        runner = WorkflowRunner(cfg, d, retry_wait=real_wait, reporter=Ids())
        prepared = _prepared(cfg, "backoff")
        t0 = time.monotonic()
        thread = threading.Thread(
            target=lambda: out.setdefault("r", runner.start(prepared, RunOptions()))
        )
        thread.start()
        assert waiting.wait(timeout=60), "the step never came to its first retry"
        assert cancel_run(cfg, run_ids[0]) is RunState.RUNNING
        thread.join(timeout=30)
        elapsed = time.monotonic() - t0
    result = out["r"]
    assert result.state is RunState.CANCELLED
    assert result.summary["steps"]["flaky"]["attempts"] == 1
    assert result.summary["steps"]["flaky"]["status"] == "failed"
    assert elapsed < 1.5 + 10  # the 1.5 s wait was cut short, not slept through 3 retries


# ----------------------------------------------------------------- bounded templates


def test_a_template_that_loops_10_to_the_10_is_refused_at_plan_time(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    for command in (["validate"], ["run", "--dry-run"]):
        res = CliRunner().invoke(
            workflow,
            [command[0], str(STATE / "bomb.yaml"), *command[1:], "--config", str(cfg.path)],
            catch_exceptions=False,
        )
        assert res.exit_code == 2, res.output
        assert (
            "step `spin`: `task` was stopped: range() of 100,000 items exceeds 10,000 "
            "(the range limit of one render)."
        ) in res.output
        assert "Traceback" not in res.output


def test_a_template_that_explodes_on_real_results_errors_the_step(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    t0 = time.monotonic()
    with open_delegator(cfg) as d:
        result = WorkflowRunner(cfg, d).start(_prepared(cfg, "late-bomb"), RunOptions())
    assert time.monotonic() - t0 < 30
    b = result.summary["steps"]["b"]
    assert result.state is RunState.FAILED
    assert b["status"] == "errored"
    assert b["error"].startswith(
        "task failed to render: step `b`: `task` was stopped: its loops ran more than "
        "100,000 times (the loop limit of one render). A render may use at most 1,024 KiB"
    )


def _one_step(task: str) -> Any:
    step = {"id": "s", "agent": "webster", "task": task}
    return workflow_from_dict(
        {"name": "t", "caller": "manager", "steps": [step]}, path=Path("t.yaml")
    )


@pytest.mark.parametrize(
    ("task", "limit"),
    [
        ("{{ 'x' * 10**10 }}", "a repetition (`*`) would hold 10,000,000,000 characters"),
        ("{{ 'x'|center(10**9) }}", "the `center` filter would hold 1,000,000,000"),
        ("{{ 'x'.ljust(10**9) }}", "`str.ljust()` would hold 1,000,000,000"),
        ("{{ '{:>999999999}'.format(1) }}", "`str.format()` would hold 999,999,999"),
        ("{{ '%999999999s' % 1 }}", "a `%` format would hold 999,999,999"),
        ("{{ ('ab' * 400000)|replace('', 'yy') }}", "the `replace` filter would hold 2,400,002"),
        ("{{ range(5000)|join('z' * 1000) }}", "the `join` filter would hold 4,999,000"),
        (
            "{% set ns = namespace(s='ab') %}{% for i in range(64) %}"
            "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
            "namespace attribute `s` would hold 2,097,152",
        ),
        ("{{ 2 ** 10000000 }}", "2 ** 10000000 is too large a number"),
        ("{{ lipsum(10**6) }}", "lipsum() would hold"),
        (
            "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}"
            "{{ f(60) }}",
            "it ran longer than 0.3 s (the time limit of one render)",
        ),
    ],
    ids=[
        "repeat", "center", "ljust", "format", "percent", "replace", "join", "namespace",
        "power", "lipsum", "time",
    ],
)
def test_render_limits(task: str, limit: str) -> None:
    spec = _one_step(task)
    renderer = TaskRenderer(spec, limits=RenderLimits(seconds=0.3))
    ctx = render_context(inputs={}, steps={}, run_id="wf-1", workflow="t")
    t0 = time.monotonic()
    with pytest.raises(WorkflowError) as info:
        renderer.render_task("s", ctx)
    assert time.monotonic() - t0 < 60  # stopped, not 2**60 calls (a busy host is slow)
    assert str(info.value).startswith("step `s`: `task` was stopped: ")
    assert limit in str(info.value)


def test_ordinary_templates_are_untouched_by_the_limits() -> None:
    task = (
        "{% for a in ['x', 'y'] %}{{ loop.index }}/{{ loop.length }} {{ a|upper }}; "
        "{% endfor %}{{ range(3)|join(',') }} {{ 'ab'|replace('a', 'c') }} "
        "{{ '%05d' % 42 }} {{ '{:>4}'.format(7) }} {{ 'z' * 3 }} {{ 'ok'|center(6) }}|"
    )
    spec = _one_step(task)
    ctx = render_context(inputs={}, steps={}, run_id="wf-1", workflow="t")
    assert TaskRenderer(spec).render_task("s", ctx) == (
        "1/2 X; 2/2 Y; 0,1,2 cb 00042    7 zzz   ok  |"
    )


def test_a_gate_waits_from_its_first_gate_waiting_after_its_last_reset() -> None:
    from engine.runs import gate_waiting_since

    events: list[dict[str, Any]] = [
        {"event": "gate_waiting", "step": "review", "at": "2026-01-01T00:00:00Z"},
        {"event": "gate_waiting", "step": "other", "at": "2026-01-01T00:00:01Z"},
        {"event": "gate_waiting", "step": "review", "at": "2026-01-01T00:00:02Z"},
    ]
    assert gate_waiting_since(events, "review") == "2026-01-01T00:00:00Z"
    events.append({"event": "step_reset", "step": "review"})
    assert gate_waiting_since(events, "review") is None
    events.append({"event": "gate_waiting", "step": "review", "at": "2026-01-01T00:00:05Z"})
    events.append({"event": "gate_waiting", "step": "review", "at": "2026-01-01T00:00:09Z"})
    assert gate_waiting_since(events, "review") == "2026-01-01T00:00:05Z"
    assert gate_waiting_since(events, "absent") is None
