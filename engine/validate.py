"""Validation by a second agent: is this result right for this task?

The validator gets the task and the result, and answers with a handoff whose `result`
starts with ``APPROVED:`` or ``REJECTED:`` followed by its reasons. The validator
delegation is made on behalf of the original caller, so the caller's ACL applies.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any

from engine.delegate import DelegationRequest, DelegationResult, Delegator
from engine.reporter import Reporter
from engine.store import RunStore

_TEMPLATE = """Validate another agent's result against its task.

Reply with status "complete" and a result that starts with exactly one of
  APPROVED: <why it is right and complete>
  REJECTED: <what is wrong or missing>
and set "confidence" to how sure you are.

=== TASK given to {agent} ===
{task}

=== RESULT from {agent} (status {status}, confidence {confidence}) ===
{result}
"""


@dataclass(frozen=True)
class Verdict:
    """A validator's answer."""

    approved: bool
    reasons: str
    confidence: str | None
    validator: str
    run_id: str
    outcome: str  # the validator delegation's outcome (complete, timeout, ...)

    def as_dict(self) -> dict[str, Any]:
        """As stored in records: ``{"approved", "reasons", ...}``."""
        return asdict(self)


def validation_task(task: str, handoff: dict[str, Any]) -> str:
    """The task text a validator receives."""
    return _TEMPLATE.format(
        agent=handoff.get("agent", "the agent"),
        task=task,
        status=handoff.get("status", "?"),
        confidence=handoff.get("confidence", "?"),
        result=handoff.get("result", ""),
    )


def parse_verdict(handoff: dict[str, Any] | None) -> tuple[bool, str]:
    """(approved, reasons) from a validator's handoff; anything unclear is a rejection."""
    if not handoff:
        return False, "the validator gave no answer"
    text = str(handoff.get("result", "")).strip()
    head = text.upper()
    if handoff.get("status") not in ("complete", "partial"):
        return False, f"the validator answered {handoff.get('status')}: {text[:500]}"
    if head.startswith("APPROVED"):
        return True, text[len("APPROVED") :].lstrip(": ").strip()
    if head.startswith("REJECTED"):
        return False, text[len("REJECTED") :].lstrip(": ").strip()
    return False, "the validator's answer starts with neither APPROVED: nor REJECTED:"


def validate_result(
    delegator: Delegator,
    *,
    caller: str,
    validator: str,
    task: str,
    handoff: dict[str, Any],
    run_id: str | None = None,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
    reporter: Reporter | None = None,
) -> Verdict:
    """Ask ``validator`` (on behalf of ``caller``) to check ``handoff`` against ``task``.

    ``reporter`` observes this delegation only (see ``Delegator.delegate``).
    """
    req = DelegationRequest(
        target=validator,
        caller=caller,
        task=validation_task(task, handoff),
        run_id=run_id,
        timeout=timeout,
        name=f"validate {handoff.get('runId', '')}",
        labels={"validates": handoff.get("runId")},
    )
    result = delegator.delegate(req, cancel=cancel, reporter=reporter)
    approved, reasons = parse_verdict(result.handoff if result.outcome.ok else None)
    if not result.outcome.ok and result.error is not None:
        reasons = f"validation did not finish ({result.outcome.value}): {result.error}"
    return Verdict(
        approved=approved,
        reasons=reasons,
        confidence=(result.handoff or {}).get("confidence") if result.outcome.ok else None,
        validator=validator,
        run_id=result.run_id,
        outcome=result.outcome.value,
    )


def record_verdict(store: RunStore, result: DelegationResult, verdict: Verdict) -> dict[str, Any]:
    """Store the verdict in the validated delegation's record (``envelope.validation``)."""
    record = dict(result.record)
    envelope = dict(record.get("envelope") or {})
    envelope["validation"] = verdict.as_dict()
    record["envelope"] = envelope
    store.annotate(result.run_id, record, sub=bool(envelope.get("parent_run_id")))
    return record
