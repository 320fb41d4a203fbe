"""The vocabulary module: every other list of states derives from it, the schemas agree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest

from engine import delegate, handoff, metrics, record, runner, states
from engine.gateway import demo_agent
from engine.states import Confidence, HandoffStatus, Outcome, RunState, StepState

SCHEMAS = Path(__file__).parent.parent / "engine" / "schemas"


def _schema(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    return data


def _values(enum_cls: Any) -> list[str]:
    return [m.value for m in enum_cls]


@pytest.mark.parametrize(
    ("schema", "pointer", "enum_cls"),
    [
        ("handoff", ("properties", "status", "enum"), HandoffStatus),
        ("handoff", ("properties", "confidence", "enum"), Confidence),
        ("metrics", ("$defs", "outcomes", "required"), Outcome),
        ("metrics", ("$defs", "run_statuses", "required"), RunState),
        ("metrics", ("$defs", "step_statuses", "required"), StepState),
    ],
    ids=["handoff-status", "handoff-confidence", "outcomes", "run-states", "step-states"],
)
def test_schema_enums_match_states(
    schema: str, pointer: tuple[str, ...], enum_cls: Any
) -> None:
    node: Any = _schema(schema)
    for key in pointer:
        node = node[key]
    assert sorted(node) == sorted(_values(enum_cls))


def test_metrics_confidence_buckets_are_the_confidences_and_none() -> None:
    buckets = _schema("metrics")["properties"]["totals"]["properties"]["confidence"]
    if "$ref" in buckets:
        buckets = _schema("metrics")["$defs"][buckets["$ref"].rsplit("/", 1)[-1]]
    assert buckets["required"] == [*_values(Confidence), "none"]
    assert metrics.CONFIDENCES == (*_values(Confidence), "none")


def test_every_copy_derives_from_states() -> None:
    assert handoff.STATUSES == tuple(_values(HandoffStatus))
    assert handoff.CONFIDENCES == tuple(_values(Confidence))
    assert record.OUTCOMES == tuple(_values(Outcome))
    assert metrics.RUN_STATUSES == tuple(_values(RunState))
    assert metrics.STEP_STATUSES == tuple(_values(StepState))
    assert demo_agent._STATUSES == handoff.STATUSES
    assert demo_agent._CONFIDENCES == handoff.CONFIDENCES
    assert delegate.Outcome is Outcome
    assert runner.StepState is StepState and runner.RunState is RunState


def test_an_agent_status_is_an_outcome_and_a_step_state() -> None:
    assert [Outcome(s).value for s in HandoffStatus] == _values(HandoffStatus)
    assert [StepState(s).value for s in Outcome] == _values(Outcome)
    assert states.FINAL_OUTCOMES == tuple(Outcome(s.value) for s in HandoffStatus)
    assert set(states.RETRYABLE_STEP_STATES) <= {s for s in StepState if s.final}


def test_members_are_their_text() -> None:
    assert Outcome.COMPLETE == "complete" and f"{StepState.WAITING_APPROVAL}" == "waiting_approval"
    assert json.dumps({"s": RunState.CANCELLED}) == '{"s": "cancelled"}'
    assert [o for o in Outcome if o.ok] == [Outcome.COMPLETE, Outcome.PARTIAL]
    assert [s for s in StepState if not s.final] == [
        StepState.PENDING,
        StepState.QUEUED,
        StepState.RUNNING,
        StepState.WAITING_APPROVAL,
        StepState.WAITING_INPUT,
    ]


def test_handoff_write_choices_come_from_states() -> None:
    from engine.cli import orchestrate

    group: Any = orchestrate
    write = group.commands["handoff"].commands["write"]
    choices = {p.name: p.type.choices for p in write.params if isinstance(p.type, click.Choice)}
    assert list(choices["status"]) == _values(HandoffStatus)
    assert list(choices["confidence"]) == _values(Confidence)


def test_one_class_per_name() -> None:
    """No two vocabulary classes share a name across the engine."""
    from engine.gateway import agents
    from engine.pool import policy

    assert not hasattr(agents, "Outcome") and hasattr(agents, "ProcessOutcome")
    assert not hasattr(policy, "Outcome") and hasattr(policy, "PollOutcome")
    assert not hasattr(runner, "RETRYABLE")
