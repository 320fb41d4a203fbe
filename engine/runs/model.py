"""The state of a workflow run as the read model holds it: one ``RunView`` of ``StepRun``.

Both sides use these: replay (``engine.runs.replay``) builds them from the store, and the
executor (``engine.runner``) changes them as its steps run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.files import parse_iso
from engine.states import RunState, StepState


@dataclass(frozen=True)
class GateDecision:
    """An approval (``approved``) or rejection of a parked gate, as it travels from the
    CLI, the API or a Discord reaction to ``engine.runs.decide_gate``: ``reason`` is
    recorded, ``value`` is what an approval gives a gate with ``input`` (any JSON value,
    checked against its schema there), ``by`` who decided (the API records the token's
    name, whatever a client says)."""

    approved: bool
    reason: str | None = None
    value: Any = None
    by: str = "cli"


@dataclass
class StepRun:
    """The mutable state of one step inside a run."""

    id: str
    state: StepState = StepState.PENDING
    agent: str | None = None
    attempt: int = 0
    delegation_run_id: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    started_at: str | None = None
    finished_at: str | None = None
    dispatched_at: str | None = None
    skip_reason: str | None = None
    skip_kind: str | None = None  # condition | upstream | stopped
    handoff: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None  # {"decision": approved|rejected, "by", "reason", "at"}
    error: str | None = None
    in_flight: bool = False  # started in an earlier process and not finished
    #: The agent's question (engine.ask): text, asked_at, and once given answer, by, answered_at.
    question: dict[str, Any] | None = None
    #: Questions answered so far: each sends the step again, an attempt that is no retry.
    answers: int = 0
    #: A sub-workflow step: the id of its child run (``child_started``).
    child_run_id: str | None = None

    @property
    def duration_ms(self) -> float | None:
        """From start to finish, when both are known."""
        if self.started_at and self.finished_at:
            delta = parse_iso(self.finished_at) - parse_iso(self.started_at)
            return round(delta.total_seconds() * 1000, 3)
        return None

    def context(self) -> dict[str, Any]:
        """What templates see as ``steps.<id>``."""
        h = self.handoff or {}
        return {
            "result": h.get("result", ""),
            "status": self.state.value,
            "confidence": h.get("confidence", ""),
            "artifacts": list(h.get("artifacts", [])),
            "notes": h.get("notes", ""),
        }


@dataclass
class RunView:
    """A run as its files say it is (run.json + the replayed journal)."""

    run_id: str
    path: Path
    meta: dict[str, Any]
    steps: dict[str, StepRun]
    state: RunState
    events: list[dict[str, Any]]
    started_at: str | None
    finished_at: str | None
    #: Milliseconds steps spent parked at their approval gates.
    gate_wait_ms: float = 0.0
    #: Journal events replay skipped (unknown or malformed), one sentence each.
    warnings: list[str] = field(default_factory=list)
    #: Why the journal cannot be trusted (it is empty or lost its ``run_started`` line
    #: while the run has records: ``engine.runs.replay.journal_damage``), one paragraph;
    #: None when it can. Such a run is shown as ``damaged`` and never resumed.
    damage: str | None = None
