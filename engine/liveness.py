"""Progress and liveness: what an agent says while it works, and when it fell silent.

An agent may report progress while it works (``orchestrate handoff progress --run-id R
--key K "text"``, or ``POST {receiver}/progress`` with ``{"text": …, "key": …}`` from
another host). A progress line is checked like a handoff: the run must be in flight
(its pending envelope is there and it has no final record, whatever its outcome) and
the ``key`` must be the delegation's (a missing key is accepted only under
``handoff_key: optional``); anything else is refused with ``ProgressRefused`` and
recorded nowhere. The latest line is kept by the run store
(``RunStore.write_progress``: ``text``, ``at``, ``count``); ``workflow status``, the live
table and ``orchestrate show`` show it with its age.

``heartbeat_timeout`` (per step, else per agent; off by default) ends a delegation whose
agent has been silent that long (no progress since the dispatch or the last line) as
``lost``, the way Temporal and Step Functions heartbeats do, instead of waiting out the
whole timeout.
"""

from __future__ import annotations

import hmac
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import UsageError
from engine.files import check_id, parse_iso, utcnow_iso

if TYPE_CHECKING:
    from engine.store.protocol import RunStore

#: Longest progress line kept (longer text is cut).
MAX_PROGRESS = 500


class ProgressRefused(UsageError):
    """A progress line was refused: the run is not in flight, or the key is missing or wrong.

    ``kind``: ``unknown`` (no delegation in flight), ``unkeyed`` or ``key``.
    """

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def _store_of(where: RunStore | Path, sub: bool) -> tuple[RunStore, bool]:
    """A records directory (the file store's layout, as the message names it) or a store."""
    if isinstance(where, Path):
        from engine.store.file import FileRunStore

        return FileRunStore(where), False  # the directory itself holds the records
    return where, sub


def check_progress_key(envelope: dict[str, Any] | None, key: str | None, run_id: str) -> None:
    """Refuse a progress line whose ``key`` is not the delegation's (``ProgressRefused``).

    The rule of handoffs (``engine.handoff.check_key``): a wrong key is always refused; a
    missing one unless the delegation's ``handoff_key`` is ``optional``.
    """
    from engine.handoff import key_hash

    if envelope is None:
        raise ProgressRefused(
            f"run `{run_id}` is not in flight here: progress is taken only while the "
            "caller waits (check the run id and `--dir` from the task message).",
            kind="unknown",
        )
    expected = envelope.get("key_sha256")
    if expected is None:
        return  # a delegation made before keys existed: nothing to compare
    if not isinstance(key, str) or not key:
        if envelope.get("handoff_key") == "optional":
            return
        raise ProgressRefused(
            f"progress for run `{run_id}` refused: it has no key. Pass the `key:` line of "
            "the task message (`orchestrate handoff progress --key K`, or `\"key\"` in the "
            "POST body); nothing was recorded.",
            kind="unkeyed",
        )
    if not hmac.compare_digest(key_hash(key), str(expected)):
        raise ProgressRefused(
            f"progress for run `{run_id}` refused: its key is not this delegation's "
            "(forged or misdirected); nothing was recorded.",
            kind="key",
        )


def report_progress(
    where: RunStore | Path,
    run_id: str,
    text: str,
    *,
    key: str | None = None,
    sub: bool = False,
) -> dict[str, Any]:
    """Record ``text`` as the latest progress line of the in-flight delegation ``run_id``.

    ``where`` is a run store (with ``sub``) or a records directory. Returns the line
    written (``text``, ``at``, ``count``). Raises ``UsageError`` for an empty text and
    ``ProgressRefused`` (exit 2) when the run is not in flight (no pending envelope, or a
    final record of any outcome: ``timeout`` keeps the envelope) or ``key`` is not its key.
    """
    from engine.redact import redact

    check_id(run_id, "run id")
    line = " ".join(text.split())
    if not line:
        raise UsageError("the progress text is empty: say what you are doing.")
    store, sub = _store_of(where, sub)
    check_progress_key(store.read_pending(run_id, sub=sub), key, run_id)
    _check_not_ended(store.read(run_id, sub=sub), run_id)
    before = store.read_progress(run_id, sub=sub)
    count = before.get("count", 0) if isinstance(before, dict) else 0
    count = (count if isinstance(count, int) else 0) + 1
    # the key itself is never kept: a line that quotes it shows `***`
    data = {"text": redact(line[:MAX_PROGRESS], (key,)), "at": utcnow_iso(), "count": count}
    store.write_progress(run_id, data, sub=sub)
    return data


def _check_not_ended(record: dict[str, Any] | None, run_id: str) -> None:
    """Refuse progress for a delegation that has a final record, whatever its outcome
    (``ProgressRefused``, kind ``unknown``). A ``timeout`` (or ``lost``) keeps its pending
    envelope so a late handoff is still merged, but nobody waits for progress any more."""
    if record is None:
        return
    env = record.get("envelope")
    outcome = env.get("outcome") if isinstance(env, dict) else None
    raise ProgressRefused(
        f"run `{run_id}` is not in flight here: it ended ({outcome or record.get('status')}), "
        "and progress is taken only while the caller waits; nothing was recorded (a "
        "handoff may still be written: it is merged, marked late).",
        kind="unknown",
    )


def latest_progress(
    where: RunStore | Path, run_id: str, *, sub: bool = False
) -> dict[str, Any] | None:
    """The latest progress line of ``run_id`` with its ``age_s`` (seconds), or None."""
    store, sub = _store_of(where, sub)
    data = store.read_progress(run_id, sub=sub)
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        return None
    at = _epoch(data.get("at"))
    age = None if at is None else max(0.0, time.time() - at)
    return {**data, "age_s": None if age is None else round(age, 1)}


def progress_note(where: RunStore | Path, run_id: str, *, sub: bool = False) -> str | None:
    """``"text" (12 s ago)`` for tables and ``orchestrate show``, or None."""
    p = latest_progress(where, run_id, sub=sub)
    if p is None:
        return None
    age = p.get("age_s")
    return f"{p['text']}" + (f" ({age:.0f} s ago)" if isinstance(age, float) else "")


def _epoch(value: Any) -> float | None:
    try:
        return parse_iso(str(value)).timestamp()
    except (TypeError, ValueError):
        return None


class Heartbeat:
    """When a delegation's agent counts as lost: silent for ``timeout`` seconds.

    ``last_sign`` is the later of the dispatch and the latest progress line's ``at``
    (read through the run store).
    """

    def __init__(self, store: RunStore, run_id: str, timeout: float, *, sub: bool) -> None:
        self._store = store
        self.run_id = run_id
        self.sub = sub
        self.timeout = timeout
        self.started = time.time()

    def last_sign(self) -> float:
        """Wall-clock time of the last sign of life."""
        line = self._store.read_progress(self.run_id, sub=self.sub)
        at = _epoch(line.get("at")) if isinstance(line, dict) else None
        return self.started if at is None else max(self.started, at)

    def silent_for(self) -> float:
        """Seconds since the last sign of life."""
        return max(0.0, time.time() - self.last_sign())

    def left(self) -> float:
        """Seconds until the agent counts as lost (<= 0: it is)."""
        return self.timeout - self.silent_for()
