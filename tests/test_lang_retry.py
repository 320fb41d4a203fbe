"""Retry policies: `retry: {max, delay, backoff, max_delay, jitter, on}` and `retries: N`.

Checked by the loader (valid and invalid cases, with the message), shown by the dry run,
and run end to end on the local gateway with a flaky command agent.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from engine.config import load_config
from engine.delegate import open_delegator
from engine.errors import WorkflowError
from engine.planview import dry_run_dict, dry_run_text
from engine.runner import RunOptions, RunState, WorkflowRunner, prepare, retry_delay
from engine.store.file import read_events
from engine.workflow import RetryPolicy, workflow_from_dict
from engine.yamlio import parse_yaml
from tests.helpers import demo_config, write_config
from tests.test_lang_failure import FLAKY, _plan

HERE = Path(__file__).parent / "workflows" / "lang"
A = {"id": "a", "agent": "webster", "task": "a"}


def _spec(step: dict[str, Any], **top: Any) -> Any:
    raw = {"name": "t", "caller": "manager", "steps": [{**A, **step}], **top}
    return workflow_from_dict(raw, path=Path("t.yaml"))


@pytest.mark.parametrize(
    ("step", "top", "policy"),
    [
        ({}, {}, RetryPolicy(max=0)),
        ({"retries": 2}, {}, RetryPolicy(max=2)),
        ({"retries": 2, "retry_delay": 0.5}, {}, RetryPolicy(max=2, delay=0.5)),
        (
            {
                "retry": {
                    "max": 3,
                    "delay": 5,
                    "backoff": 3,
                    "max_delay": 30,
                    "jitter": 0,
                    "on": ["timeout", "unusable", "timeout"],
                }
            },
            {},
            RetryPolicy(
                max=3, delay=5, backoff=3, max_delay=30, jitter=0, on=("timeout", "unusable")
            ),
        ),
        (
            {},
            {"defaults": {"retry": {"max": 1, "on": ["invalid"]}}},
            RetryPolicy(max=1, on=("invalid",)),
        ),
        (
            {"retries": 4},
            {"defaults": {"retry": {"max": 1, "on": ["invalid"]}}},
            RetryPolicy(max=4),
        ),
        ({"retry": {"max": 1}}, {"defaults": {"retry_delay": 7}}, RetryPolicy(max=1, delay=7)),
    ],
    ids=[
        "none",
        "shorthand",
        "shorthand-delay",
        "full",
        "defaults",
        "step-shorthand-wins",
        "delay-from-defaults",
    ],
)
def test_retry_policies_load(
    step: dict[str, Any], top: dict[str, Any], policy: RetryPolicy
) -> None:
    spec = _spec(step, **top)
    assert spec.steps[0].retry == policy
    assert spec.steps[0].retries == policy.max


@pytest.mark.parametrize(
    ("step", "top", "message"),
    [
        (
            {"retry": {"max": 1}, "retries": 2},
            {},
            "step `a` has both `retry` and `retries`; `retries: N` and `retry_delay: S` are "
            "short for `retry: {max: N, delay: S}`: keep `retry` alone.",
        ),
        (
            {"retry": {"max": 1}, "retry_delay": 2},
            {},
            "step `a` has both `retry` and `retry_delay`; `retries: N` and `retry_delay: S` "
            "are short for `retry: {max: N, delay: S}`: keep `retry` alone.",
        ),
        (
            {"retry": {"max": 1, "delay": 10, "max_delay": 5}},
            {},
            "step `a`: `retry.max_delay` (5 s) is shorter than `retry.delay` (10 s), the first "
            "wait; raise `max_delay` or lower `delay`.",
        ),
        (
            {"retry": {"max": 1, "on": ["blocked"]}},
            {},
            "step `a`: `retry.on` cannot hold `blocked`: a blocked agent needs something (an "
            "answer, a permission) that sending the same task again does not give it.",
        ),
        (
            {"retry": {"max": 1, "on": ["timout"]}},
            {},
            "step `a`: `steps[0].retry.on[0]`: `timout` is not one of `failed`, `timeout`, "
            "`lost`, `unusable`, `invalid`; did you mean `timeout`?",
        ),
        ({"retry": {"delay": 1}}, {}, "step `a`: `steps[0].retry`: missing required key `max`."),
        (
            {"retry": {"max": 1, "backof": 2}},
            {},
            "step `a`: `steps[0].retry.backof` is not a known key; did you mean `backoff`?",
        ),
        (
            {},
            {"defaults": {"retry": {"max": 1}, "retries": 1}},
            "`defaults` has both `retry` and `retries`; `retries: N` and `retry_delay: S` are "
            "short for `retry: {max: N, delay: S}`: keep `retry` alone.",
        ),
    ],
    ids=[
        "both-retries",
        "both-delay",
        "cap-below-delay",
        "blocked",
        "unknown-ending",
        "no-max",
        "unknown-key",
        "defaults-both",
    ],
)
def test_invalid_retry_policies(step: dict[str, Any], top: dict[str, Any], message: str) -> None:
    with pytest.raises(WorkflowError) as info:
        _spec(step, **top)
    assert message in info.value.problems, info.value.problems


@pytest.mark.parametrize(
    ("kw", "retry", "draw", "expected"),
    [
        ({}, 1, 0.0, 2.0),
        ({}, 3, 0.0, 8.0),
        ({}, 3, 1.0, 9.6),
        ({"backoff": 3.0}, 3, 0.0, 18.0),
        ({"backoff": 1.0}, 5, 0.0, 2.0),
        ({"max_delay": 5.0}, 3, 1.0, 5.0),  # capped after the jitter too
        ({"jitter": 0.5}, 2, 1.0, 6.0),
        ({"bound": 3.0}, 4, 0.0, 3.0),  # never longer than the step's timeout
    ],
)
def test_policy_delays(kw: dict[str, float], retry: int, draw: float, expected: float) -> None:
    assert retry_delay(2.0, retry, rng=lambda: draw, **kw) == pytest.approx(expected)


def _raw(name: str) -> Any:
    """A template as the engine reads it (plain YAML would read the key `on` as true)."""
    path = HERE / f"{name}.yaml"
    return parse_yaml(path.read_text(), source=path, error=WorkflowError)[0]


def test_the_dry_run_shows_a_policy_that_is_more_than_a_count() -> None:
    raw = _raw("retry-policy")
    raw["steps"][0]["agent"] = "study-builder"  # `flaky` is a test agent of the live run
    plan, renderer = _plan(raw)
    text = dry_run_text(plan, renderer)
    assert (
        "      timeout agent default, retries 3, on failure: stop\n"
        "      retry: up to 3 more on failed; waits 0.5 s, x3 each time, at most 1 s, "
        "+10% jitter\n" in text
    )
    assert "retry: up to 2 more on timeout, lost; waits 0 s" in text
    data = dry_run_dict(plan, renderer)
    assert data["steps"][0]["retry"] == {
        "max": 3,
        "delay": 0.5,
        "backoff": 3.0,
        "max_delay": 1.0,
        "jitter": 0.1,
        "on": ["failed"],
    }
    # `retries: N` alone is shown as before: no policy line
    plan, renderer = _plan(_raw("recover"))
    assert "retry:" not in dry_run_text(plan, renderer)


def test_a_policy_retries_what_it_names_and_waits_as_it_says(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["flaky"] = {
        "kind": "command",
        "argv": [sys.executable, "-c", FLAKY.replace("n < 2", "n < 3")],
        "env": {"FLAKY_COUNTER": str(tmp_path / "count")},
    }
    raw["agents"]["flaky"] = {"url": "local"}
    cfg = load_config(write_config(tmp_path, raw))
    waits: list[float] = []

    def record(cancel: threading.Event, seconds: float) -> bool:
        waits.append(seconds)
        return False

    prepared = prepare(cfg, str(HERE / "retry-policy.yaml"), {})
    with open_delegator(cfg) as d:
        result = WorkflowRunner(cfg, d, retry_wait=record, rng=lambda: 1.0).start(
            prepared, RunOptions()
        )
    steps = result.summary["steps"]
    assert steps["flaky"]["status"] == "complete" and steps["flaky"]["attempts"] == 3
    assert steps["only-timeouts"]["status"] == "failed"
    assert steps["only-timeouts"]["attempts"] == 1  # failed is not in its `on`
    assert waits == [0.55, 1.0]  # 0.5 s +10 %, then 1.5 s +10 % capped at 1 s
    retries = [
        e for e in read_events(result.run_dir / "events.jsonl") if e["event"] == "step_retry"
    ]
    assert [(e["step"], e["attempt"], e["reason"], e["delay_s"]) for e in retries] == [
        ("flaky", 2, "failed", 0.55),
        ("flaky", 3, "failed", 1.0),
    ]
    assert result.state is RunState.FAILED


def test_an_unusable_handoff_is_retried_when_the_policy_names_it(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {
        "kind": "command",
        "argv": [
            sys.executable,
            str(Path(__file__).parent / "peers" / "misbehaving_agent.py"),
            "never",
        ],
        "env": {"AGENT_STATE": str(tmp_path / "state")},
        "timeout": 30,
        "fallback_handoff": False,
    }
    cfg = load_config(write_config(tmp_path, raw))
    path = tmp_path / "wf.yaml"
    path.write_text(
        "name: wf\ncaller: manager\nsteps:\n"
        "  - id: silent\n    agent: webster\n    repair_attempts: 0\n"
        "    retry: {max: 1, delay: 0, on: [unusable]}\n    task: search\n"
    )
    with open_delegator(cfg) as d:
        result = WorkflowRunner(cfg, d).start(prepare(cfg, str(path), {}), RunOptions())
    step = result.summary["steps"]["silent"]
    assert step["status"] == "unusable" and step["attempts"] == 2
