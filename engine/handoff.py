"""The handoff contract: what an agent writes, how it is checked, where it goes."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from engine.errors import HandoffError
from engine.files import check_id, utcnow_iso, write_json_atomic
from engine.record import INBOX_DIR

SCHEMA_VERSION = "1.0"
STATUSES = ("complete", "partial", "blocked", "failed")
CONFIDENCES = ("high", "medium", "low")
SUB_DIR = "sub"


class HandoffProblem(HandoffError):
    """Raised when a handoff file cannot be accepted; ``kind`` is parse, schema or mismatch.

    ``parse`` and ``schema`` problems may be a file caught half-written, so a waiter
    gives the agent a short grace to rewrite it; ``mismatch`` (a runId or agent that is
    not the delegation's) is refused at once.
    """

    def __init__(self, message: str, *, kind: str, path: Path, problems: list[str] | None = None):
        super().__init__(message, path=path, problems=problems)
        self.kind = kind


def records_dir(handoffs_dir: Path, *, sub: bool = False) -> Path:
    """Where the records of top-level (or sub-) delegations are."""
    return handoffs_dir / SUB_DIR if sub else handoffs_dir


def handoff_path(handoffs_dir: Path, run_id: str, *, sub: bool = False) -> Path:
    """Where the agent delivers the handoff of ``run_id``: ``<records>/inbox/<runId>.json``."""
    check_id(run_id, "run id")
    return records_dir(handoffs_dir, sub=sub) / INBOX_DIR / f"{run_id}.json"


def record_path(handoffs_dir: Path, run_id: str, *, sub: bool = False) -> Path:
    """Where the engine records ``run_id``: ``<records>/<runId>.json`` (handoff + envelope)."""
    check_id(run_id, "run id")
    return records_dir(handoffs_dir, sub=sub) / f"{run_id}.json"


def make_handoff(
    *,
    run_id: str,
    agent: str,
    status: str,
    result: str,
    confidence: str = "medium",
    artifacts: Iterable[str] = (),
    notes: str | None = None,
    usage: Mapping[str, Any] | None = None,
    timestamp: str | None = None,
) -> dict[str, Any]:
    """Build a handoff mapping with the contract's field order."""
    data: dict[str, Any] = {
        "schemaVersion": SCHEMA_VERSION,
        "runId": run_id,
        "agent": agent,
        "status": status,
        "result": result,
        "confidence": confidence,
        "timestamp": timestamp or utcnow_iso(),
        "artifacts": list(artifacts),
    }
    if notes:
        data["notes"] = notes
    if usage:
        data["usage"] = dict(usage)
    return data


def validate_handoff(
    data: Any,
    *,
    path: Path,
    run_id: str | None = None,
    agent: str | None = None,
) -> dict[str, Any]:
    """Check ``data`` against the schema and the delegation; return it or raise HandoffProblem."""
    from engine.schemas import schema_problems

    problems = schema_problems("handoff", data, style="pointer")
    if problems:
        raise HandoffProblem(
            f"handoff `{path}` does not match schemas/handoff.schema.json:",
            kind="schema",
            path=path,
            problems=problems,
        )
    assert isinstance(data, dict)
    mismatched = []
    if run_id is not None and data["runId"] != run_id:
        mismatched.append(f"`/runId` is `{data['runId']}`, expected `{run_id}`")
    if agent is not None and data["agent"] != agent:
        mismatched.append(f"`/agent` is `{data['agent']}`, expected `{agent}`")
    if mismatched:
        raise HandoffProblem(
            f"handoff `{path}` refused: it does not belong to this delegation (spoofed or "
            "misdirected); it was kept for inspection:",
            kind="mismatch",
            path=path,
            problems=mismatched,
        )
    return data


def parse_handoff(text: str, *, path: Path) -> Any:
    """Parse handoff JSON text or raise HandoffProblem naming line and column."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise HandoffProblem(
            f"handoff `{path}` is not valid JSON (line {exc.lineno}, column {exc.colno}: "
            f"{exc.msg}).",
            kind="parse",
            path=path,
        ) from exc


def load_handoff(
    path: Path, *, run_id: str | None = None, agent: str | None = None
) -> dict[str, Any]:
    """Read, parse and validate the handoff file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HandoffProblem(f"handoff `{path}` does not exist.", kind="parse", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HandoffProblem(
            f"handoff `{path}` cannot be read: {exc}.", kind="parse", path=path
        ) from exc
    return validate_handoff(parse_handoff(text, path=path), path=path, run_id=run_id, agent=agent)


def write_handoff(path: Path, handoff: dict[str, Any]) -> Path:
    """Validate ``handoff`` and write it atomically to ``path``."""
    validate_handoff(handoff, path=path)
    return write_json_atomic(path, handoff)
