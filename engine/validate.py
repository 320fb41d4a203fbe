"""Validation by a second agent: is this result right for this task?

The validator gets the task and the result, and answers with a handoff whose `result`
starts with ``APPROVED:`` or ``REJECTED:`` followed by its reasons. The validator
delegation is made on behalf of the original caller, so the caller's ACL applies.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from engine.delegate import DelegationRequest, DelegationResult, Delegator
from engine.errors import UsageError
from engine.reporter import Reporter
from engine.store import RunStore

if TYPE_CHECKING:
    from engine.config import Config

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
    """(approved, reasons) from a validator's handoff; anything unclear is a rejection.

    Approval is a ``complete``/``partial`` handoff whose result starts with exactly
    ``APPROVED:`` (capitals and colon, as the validator's task and docs/delegation.md
    say); ``approved:``, ``Approved`` or ``APPROVED`` without the colon are unclear, so
    rejections. A validator that asked a question (``blocked`` with ``question``) gave no
    verdict: the reasons quote its question.
    """
    if not handoff:
        return False, "the validator gave no answer"
    text = str(handoff.get("result", "")).strip()
    status = handoff.get("status")
    if status not in ("complete", "partial"):
        question = str(handoff.get("question") or "").strip()
        if question:
            return False, (
                f"the validator asked a question instead of giving a verdict: {question[:500]}"
            )
        return False, f"the validator answered {status}: {text[:500]}"
    if text.startswith(APPROVED):
        return True, text[len(APPROVED) :].strip()
    if text.startswith(REJECTED):
        return False, text[len(REJECTED) :].strip()
    return False, (
        f"the validator's answer starts with neither `{APPROVED}` nor `{REJECTED}` (exactly "
        f"so, in capitals): {text[:200]}"
    )


#: The verdict prefixes a validator's result must start with, exactly.
APPROVED, REJECTED = "APPROVED:", "REJECTED:"

#: Outcomes where the validator wrote a handoff of its own (its verdict, or its question).
_ANSWERED = frozenset({"complete", "partial", "blocked", "failed"})


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
    interrupted: threading.Event | None = None,
) -> Verdict:
    """Ask ``validator`` (on behalf of ``caller``) to check ``handoff`` against ``task``.

    ``reporter`` observes this delegation only, ``interrupted`` ends its wait with nothing
    recorded (see ``Delegator.delegate``).
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
    result = delegator.delegate(req, cancel=cancel, reporter=reporter, interrupted=interrupted)
    answered = result.outcome.value in _ANSWERED
    approved, reasons = parse_verdict(result.handoff if answered else None)
    if not answered and result.error is not None:
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


# -- a delegation's `--validate` (the CLI's `orchestrate ... --validate`) ----------------


def validator_for(cfg: Config, validator: str | None) -> str:
    """The validator of a ``--validate`` delegation: the one given, else the config's."""
    chosen = validator or cfg.validator
    if not chosen:
        raise UsageError(
            "`--validate` needs a validator: pass `--validator AGENT` or set "
            f"`validator:` in `{cfg.label}`."
        )
    return str(chosen)


def check_validator(delegator: Delegator, caller: str, validator: str) -> None:
    """Every check of the validation before anything is dispatched: a known agent, the ACL."""
    delegator.registry.get(validator, role="validator")
    delegator.acl.check(caller, validator)


def validate_delegation(
    delegator: Delegator,
    result: DelegationResult,
    *,
    caller: str,
    validator: str,
    task: str,
    timeout: float | None = None,
) -> tuple[DelegationResult, Verdict | None]:
    """Have ``validator`` check a finished delegation and store its verdict in the record.

    ``timeout`` (seconds; the caller's ``--timeout``) bounds the validator's delegation
    too; None: the validator's own ``timeout``, else ``default_timeout``.
    Returns the result (with the record as stored now) and the verdict; the verdict is None
    when the delegation left nothing to validate (it did not finish ``complete``/``partial``).
    """
    if not (result.outcome.ok and result.handoff):
        return result, None
    verdict = validate_result(
        delegator, caller=caller, validator=validator, task=task, handoff=result.handoff,
        timeout=timeout,
    )
    record = record_verdict(delegator.store, result, verdict)
    return replace(result, record=record), verdict


@dataclass(frozen=True)
class Delegated:
    """What ``delegate_validated`` did.

    ``result`` is None on a dry run; ``verdict`` is None when nothing was validated;
    ``route`` is the capability route taken (``engine.routing.Route``), if any.
    """

    agent: str
    result: DelegationResult | None = None
    verdict: Verdict | None = None
    route: Any = None


def delegate_validated(
    delegator: Delegator,
    request: DelegationRequest,
    *,
    capability: str | None = None,
    validator: str | None = None,
    key: str | None = None,
    dry_run: bool = False,
) -> Delegated:
    """One delegation as ``orchestrate delegate`` makes it, every check first.

    With ``capability`` the route picks the agent (``request.target`` is replaced). The
    validator, when given, is checked (known agent, the caller's ACL) before anything is
    dispatched, then checks the finished delegation (``validate_delegation``). A dry run
    does every check (secrets included) and sends nothing. With ``key`` a retry returns
    the first result (``engine.idempotency.delegate_once``). Errors: those of the checks
    (``UsageError``, ``AclError``, ``ConfigError``); a failed delegation is a result.
    """
    if validator:
        check_validator(delegator, request.caller, validator)
    route = delegator.route(request.caller, capability) if capability else None
    if route is not None:
        request = replace(request, target=route.agent)
    if validator and validator == request.target:
        how = f"capability `{capability}` routes to `{validator}`, " if route is not None else ""
        raise UsageError(
            f"{how}`{validator}` would validate its own result: name another agent with "
            f"`--validator` (or `validator:` in `{delegator.cfg.label}`). Nothing was sent."
        )
    if dry_run:
        from engine.registry import check_secrets

        check_secrets(delegator.cfg, [request.target, *([validator] if validator else [])])
        delegator.check(request)
        return Delegated(request.target, route=route)
    if key:
        from engine.idempotency import delegate_once

        result = delegate_once(delegator, request, key)
    else:
        result = delegator.delegate(request)
    verdict = None
    if validator:
        result, verdict = validate_delegation(
            delegator, result, caller=request.caller, validator=validator, task=request.task,
            timeout=request.timeout,
        )
    return Delegated(request.target, result, verdict, route)
