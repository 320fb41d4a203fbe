"""Delegation records: the agent's handoff plus the engine's envelope, and late arrivals.

Layout of a records directory (``handoffs/`` or ``handoffs/sub/``)::

    inbox/<runId>.json      where the agent delivers its handoff; never rewritten by the
                            engine (a gateway's write tool may read the file back)
    <runId>.json            the record: the handoff's fields + "envelope" (caller, target,
                            timings, attempts, outcome...)
    .pending/<runId>.json   the envelope of a delegation whose record is not final yet
                            (dispatched, timed out or refused); removed once final
    rejected/<runId>.<n>.json  a refused (spoofed or malformed) handoff, kept for inspection

A handoff that lands after its delegation gave up (timeout) is merged with the pending
envelope by ``reconcile`` and marked ``late``: it is never lost.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from engine.files import parse_iso, utcnow_iso, write_json_atomic

#: Where agents deliver handoffs inside a records directory (see the layout above).
INBOX_DIR = "inbox"

PENDING_DIR = ".pending"
REJECTED_DIR = "rejected"
#: Outcomes a record can have (``engine.delegate.Outcome``); the first four are the agent's
#: own statuses.
OUTCOMES = (
    "complete",
    "partial",
    "blocked",
    "failed",
    "timeout",
    "invalid",
    "errored",
    "cancelled",
)


def pending_path(records_dir: Path, run_id: str) -> Path:
    """Path of the pending envelope of ``run_id``."""
    return records_dir / PENDING_DIR / f"{run_id}.json"


def write_pending(records_dir: Path, run_id: str, envelope: dict[str, Any]) -> None:
    """Save the envelope of a delegation before it is dispatched."""
    write_json_atomic(pending_path(records_dir, run_id), envelope)


def drop_pending(records_dir: Path, run_id: str) -> None:
    """Forget the pending envelope once the record is final."""
    try:
        os.unlink(pending_path(records_dir, run_id))
    except FileNotFoundError:
        pass


def read_json(path: Path) -> Any:
    """Read a JSON file, returning None when missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_record(
    records_dir: Path,
    run_id: str,
    envelope: dict[str, Any],
    handoff: dict[str, Any] | None = None,
    *,
    agent: str | None = None,
) -> Path:
    """Write the record of ``run_id``: the handoff's fields plus ``envelope``, atomically."""
    data = record_of(handoff, envelope, run_id)
    if handoff is None and agent:
        data["agent"] = agent
    return write_json_atomic(records_dir / f"{run_id}.json", data)


def record_of(
    handoff: dict[str, Any] | None, envelope: dict[str, Any], run_id: str
) -> dict[str, Any]:
    """The record mapping ``write_record`` writes (for callers that keep it in memory)."""
    if handoff is not None:
        data = {k: v for k, v in handoff.items() if k != "envelope"}
    else:
        data = {"schemaVersion": "1.0", "runId": run_id, "agent": envelope.get("target")}
    data["envelope"] = envelope
    return data


def keep_rejected(records_dir: Path, path: Path) -> Path | None:
    """Move a refused handoff file aside (never delete it); return where it went."""
    if not path.exists():
        return None
    target_dir = records_dir / REJECTED_DIR
    target_dir.mkdir(parents=True, exist_ok=True)
    n = 1
    while (target := target_dir / f"{path.stem}.{n}.json").exists():
        n += 1
    os.replace(path, target)
    return target


def finalize(
    records_dir: Path,
    run_id: str,
    envelope: dict[str, Any],
    handoff: dict[str, Any],
    *,
    received_at: str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Record a valid handoff: fill the envelope's timing and outcome, then write it."""
    received = received_at or utcnow_iso()
    env = dict(envelope)
    env["received_at"] = received
    dispatched = env.get("dispatched_at")
    if dispatched:
        env["duration_ms"] = round(
            (parse_iso(received) - parse_iso(dispatched)).total_seconds() * 1000, 3
        )
    deadline = env.get("deadline_at")
    late = bool(deadline and parse_iso(received) > parse_iso(deadline))
    env["late"] = late or env.get("outcome") in ("timeout", "invalid")
    env["outcome"] = handoff["status"]
    env.pop("error", None)
    data = record_of(handoff, env, run_id)
    path = write_json_atomic(records_dir / f"{run_id}.json", data)
    drop_pending(records_dir, run_id)
    return path, data


def reconcile(records_dir: Path) -> list[Path]:
    """Merge handoffs that arrived with nobody waiting into their pending envelopes.

    Returns the records written. Invalid files are left for the waiter's report.
    """
    from engine.handoff import HandoffProblem, load_handoff

    pending_dir = records_dir / PENDING_DIR
    written: list[Path] = []
    try:
        entries = list(os.scandir(pending_dir))
    except FileNotFoundError:
        return written
    for entry in entries:
        if not entry.name.endswith(".json") or entry.name.startswith(".tmp-"):
            continue
        run_id = entry.name[: -len(".json")]
        envelope = read_json(Path(entry.path))
        if not isinstance(envelope, dict):
            continue
        if envelope.get("outcome") in (None, "dispatched") and not envelope.get("orphaned"):
            # Someone may still be waiting: leave it to them unless their process is gone.
            pid = envelope.get("pid")
            if isinstance(pid, int) and process_alive(pid):
                continue
        drop = records_dir / INBOX_DIR / f"{run_id}.json"
        if not drop.is_file():
            continue
        try:
            handoff = load_handoff(drop, run_id=run_id, agent=envelope.get("target"))
        except HandoffProblem:
            continue
        received = _mtime_iso(drop)
        written.append(finalize(records_dir, run_id, envelope, handoff, received_at=received)[0])
    return written


def process_alive(pid: int) -> bool:
    """True when process ``pid`` exists on this host (this process counts as alive)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mtime_iso(path: Path) -> str:
    from datetime import UTC, datetime

    ts = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _node(run_id: str, data: dict[str, Any], pending: bool) -> dict[str, Any]:
    env = data.get("envelope", data) if not pending else data
    return {
        "run_id": run_id,
        "caller": env.get("caller"),
        "target": env.get("target"),
        "outcome": env.get("outcome") if not pending else "in flight",
        "confidence": data.get("confidence"),
        "duration_ms": env.get("duration_ms"),
        "late": env.get("late", False),
        "parent_run_id": env.get("parent_run_id"),
        "children": [],
    }


def delegation_tree(handoffs_dir: Path, run_id: str) -> dict[str, Any] | None:
    """The delegation tree under ``run_id``: its record and its sub-delegations, nested."""
    nodes: dict[str, dict[str, Any]] = {}
    for records in (handoffs_dir, handoffs_dir / "sub"):
        reconcile(records)
        for folder, pending in ((records, False), (records / PENDING_DIR, True)):
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            for entry in entries:
                if not entry.name.endswith(".json") or entry.name.startswith(".tmp-"):
                    continue
                rid = entry.name[: -len(".json")]
                if rid in nodes and not pending:
                    continue
                if folder is records and rid != run_id and records == handoffs_dir:
                    continue  # top-level records other than the root cannot be in the tree
                data = read_json(Path(entry.path))
                if not isinstance(data, dict) or (not pending and "envelope" not in data):
                    continue
                if pending and rid in nodes:
                    continue
                nodes[rid] = _node(rid, data, pending)
    root = nodes.get(run_id)
    if root is None:
        return None
    for node in nodes.values():
        parent = node["parent_run_id"]
        if parent and parent in nodes and node is not root:
            nodes[parent]["children"].append(node)
    return root


def find_record(handoffs_dir: Path, run_id: str) -> tuple[Path, dict[str, Any]]:
    """The record of ``run_id`` (top-level or sub-delegation), merging a late handoff first;
    a handoff delivered but never recorded if that is all there is."""
    from engine.errors import RunStateError
    from engine.files import check_id

    check_id(run_id, "run id")
    for records in (handoffs_dir, handoffs_dir / "sub"):
        reconcile(records)
        for path in (records / f"{run_id}.json", records / INBOX_DIR / f"{run_id}.json"):
            data = read_json(path)
            if isinstance(data, dict):
                return path, data
    raise RunStateError(
        f"no record for `{run_id}` in `{handoffs_dir}`. Run ids are printed by "
        "`orchestrate` (`record: ...`) and listed by `metrics json`."
    )
