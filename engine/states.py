"""The engine's vocabulary: every status, outcome, state and confidence, in one place.

Each is a ``StrEnum``, so a member equals its text (``Outcome.COMPLETE == "complete"``) and
is written to JSON as that text. Every other list in the engine derives from these: the CLI's
choices, metrics' buckets, the demo agent's directives, progress icons. The JSON Schemas
repeat the handoff status and confidence enums (agents read the schema, not this module);
``tests/test_states.py`` checks they agree.

===================  ==============================================================
``HandoffStatus``    what an agent says in its handoff (``status``)
``Confidence``       how sure the agent is (``confidence``)
``Outcome``          how one delegation ended (a record's ``envelope.outcome``)
``StepState``        where a workflow step is (``steps[].status`` of a run)
``RunState``         where a workflow run is (``status`` of ``run.json``)
===================  ==============================================================
"""

from __future__ import annotations

import enum

__all__ = [
    "FINAL_OUTCOMES",
    "RETRYABLE_STEP_STATES",
    "Confidence",
    "HandoffStatus",
    "Outcome",
    "RunState",
    "StepState",
]


class HandoffStatus(enum.StrEnum):
    """What the agent reports in its handoff's ``status``."""

    COMPLETE = "complete"  # the agent did the task
    PARTIAL = "partial"  # the agent did part of it
    BLOCKED = "blocked"  # the agent could not proceed without something
    FAILED = "failed"  # the agent tried and failed


class Confidence(enum.StrEnum):
    """How sure the agent is of its result (a handoff's ``confidence``)."""

    HIGH = "high"  # checked, or from a reliable source
    MEDIUM = "medium"  # plausible, not verified
    LOW = "low"  # a guess


class Outcome(enum.StrEnum):
    """How a delegation ended."""

    COMPLETE = "complete"  # the agent did the task
    PARTIAL = "partial"  # the agent did part of it (exit 0, with a warning)
    BLOCKED = "blocked"  # the agent could not proceed without something
    FAILED = "failed"  # the agent said it failed
    TIMEOUT = "timeout"  # no acceptable handoff before the deadline
    INVALID = "invalid"  # a handoff arrived but was refused (malformed or spoofed)
    ERRORED = "errored"  # the machinery broke: refused or unreachable gateway, pool refusal
    CANCELLED = "cancelled"  # the caller stopped waiting (workflow cancelled)
    UNUSABLE = "unusable"  # the agent's run ended without a usable handoff; repairs spent
    LOST = "lost"  # the agent was silent longer than its heartbeat_timeout

    @property
    def ok(self) -> bool:
        """True for outcomes whose result can be used downstream."""
        return self in (Outcome.COMPLETE, Outcome.PARTIAL)


#: Outcomes that are the agent's own word (its handoff's status): a record with one is final.
FINAL_OUTCOMES = tuple(Outcome(s.value) for s in HandoffStatus)


class StepState(enum.StrEnum):
    """Where a step is."""

    PENDING = "pending"  # waiting for its upstream steps
    QUEUED = "queued"  # ready, waiting for a pool token
    RUNNING = "running"  # dispatched, waiting for the agent's handoff
    WAITING_APPROVAL = "waiting_approval"  # parked at its approval gate
    WAITING_INPUT = "waiting_input"  # the agent asked a question; parked until answered
    COMPLETE = "complete"  # the agent did it
    PARTIAL = "partial"  # the agent did part of it (dependents still run)
    BLOCKED = "blocked"  # the agent could not proceed (never retried)
    FAILED = "failed"  # the agent said it failed, or its validator rejected it
    TIMEOUT = "timeout"  # no handoff in time (after retries)
    INVALID = "invalid"  # its handoff was refused
    ERRORED = "errored"  # the machinery broke (gateway refused, render error, pool refusal)
    CANCELLED = "cancelled"  # the run was cancelled while it ran
    SKIPPED = "skipped"  # not run: its condition was false, or upstream failed, or run stopped
    REJECTED = "rejected"  # its approval gate was rejected
    UNUSABLE = "unusable"  # the agent's run ended without a usable handoff (repairs spent)
    LOST = "lost"  # the agent was silent longer than its heartbeat_timeout (after retries)

    @property
    def final(self) -> bool:
        """True once the step will not change in this run."""
        return self not in (
            StepState.PENDING,
            StepState.QUEUED,
            StepState.RUNNING,
            StepState.WAITING_APPROVAL,
            StepState.WAITING_INPUT,
        )

    @property
    def ok(self) -> bool:
        """True when dependents may use the step's result."""
        return self in (StepState.COMPLETE, StepState.PARTIAL)


#: Step states that ``--retry-failed`` runs again.
RETRYABLE_STEP_STATES = (
    StepState.FAILED,
    StepState.TIMEOUT,
    StepState.ERRORED,
    StepState.INVALID,
    StepState.BLOCKED,
    StepState.CANCELLED,
    StepState.UNUSABLE,
    StepState.LOST,
)


class RunState(enum.StrEnum):
    """Where a run is."""

    RUNNING = "running"  # a process is executing it (or died doing so: resume it)
    WAITING_APPROVAL = "waiting_approval"  # parked at a gate; approve/reject, then resume
    WAITING_INPUT = "waiting_input"  # an agent asked a question; `workflow answer`, then resume
    COMPLETE = "complete"  # every step complete, partial, or skipped by its condition
    FAILED = "failed"  # some step failed, timed out, errored or was rejected
    CANCELLED = "cancelled"  # `workflow cancel` stopped it
