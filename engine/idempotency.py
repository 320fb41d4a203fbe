"""Idempotency keys: a call retried with the same key gets the first call's run.

A key is claimed once, atomically (``O_EXCL``), in ``<handoffs_dir>/.idempotency/``,
before anything is dispatched; the file holds the run id and a hash of the request, so
the same key with a different request is refused instead of silently answered::

    keys = IdempotencyKeys(cfg.handoffs_dir)
    claim = keys.claim("delegate", "order-42", {"target": "webster", "task": "..."})
    claim.run_id    # the same id for every retry of this key
    claim.new       # True only for the first call

Keys are hashed before they become file names, so any text may be a key.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import UsageError
from engine.files import new_run_id, utcnow_iso, write_json_atomic
from engine.record import read_json

if TYPE_CHECKING:
    from engine.delegate import DelegationRequest, DelegationResult, Delegator

KEYS_DIR = ".idempotency"
MAX_KEY = 200


class IdempotencyConflict(UsageError):
    """Raised when a key is reused for a different request, or while its first use starts."""


@dataclass(frozen=True)
class Claim:
    """The run a key stands for; ``new`` is True for the call that claimed it."""

    key: str
    run_id: str | None
    new: bool
    kind: str


def fingerprint(request: dict[str, Any]) -> str:
    """A stable hash of a request's fields."""
    text = json.dumps(request, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def check_key(key: str) -> str:
    """Return ``key`` when it is usable (1..200 printable characters), else raise."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY or not key.isprintable():
        raise UsageError(
            f"idempotency key {key!r} is not usable: give 1 to {MAX_KEY} printable characters "
            "(a UUID is a good key)."
        )
    return key


class IdempotencyKeys:
    """The claimed keys of one handoffs directory (shared by the CLI and the server)."""

    def __init__(self, handoffs_dir: Path) -> None:
        self.dir = handoffs_dir / KEYS_DIR

    def _path(self, kind: str, key: str) -> Path:
        digest = hashlib.sha256(f"{kind}\0{key}".encode()).hexdigest()[:40]
        return self.dir / f"{kind}-{digest}.json"

    def claim(
        self,
        kind: str,
        key: str,
        request: dict[str, Any],
        *,
        run_id: str | None = None,
        prefix: str = "orch",
    ) -> Claim:
        """Claim ``key`` for ``request``, or return what the first claim stands for.

        ``run_id`` is the id to bind now (default: a fresh ``<prefix>-…`` id); pass
        ``run_id=""`` to bind later with ``bind`` (a workflow run gets its id when it starts).
        """
        check_key(key)
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self._path(kind, key)
        digest = fingerprint(request)
        rid = new_run_id(prefix) if run_id is None else (run_id or None)
        entry = {"kind": kind, "fingerprint": digest, "runId": rid, "created_at": utcnow_iso()}
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return self._existing(kind, key, path, digest)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(entry, fh)
        return Claim(key, rid, True, kind)

    def _existing(self, kind: str, key: str, path: Path, digest: str) -> Claim:
        data = read_json(path)
        if not isinstance(data, dict):  # torn by a crash between create and write
            raise IdempotencyConflict(
                f"idempotency key {key!r} is being used by a call that is starting right now; "
                "retry in a moment."
            )
        if data.get("fingerprint") != digest:
            raise IdempotencyConflict(
                f"idempotency key {key!r} was already used for a different {kind} request; "
                "use a new key for a new request."
            )
        rid = data.get("runId")
        return Claim(key, rid if isinstance(rid, str) and rid else None, False, kind)

    def bind(self, kind: str, key: str, run_id: str) -> None:
        """Record the run id of a key claimed with ``run_id=""``."""
        path = self._path(kind, key)
        data = read_json(path)
        if isinstance(data, dict):
            write_json_atomic(path, {**data, "runId": run_id})

    def release(self, kind: str, key: str) -> None:
        """Forget a claim whose call failed before it started anything."""
        self._path(kind, key).unlink(missing_ok=True)


def finished_delegation(records: Path, run_id: str) -> DelegationResult | None:
    """The ``DelegationResult`` of a delegation that has ended, else None."""
    from engine.delegate import DelegationResult, Outcome

    path = records / f"{run_id}.json"
    record = read_json(path)
    if not isinstance(record, dict) or not isinstance(record.get("envelope"), dict):
        return None
    outcome = record["envelope"].get("outcome")
    if outcome not in {o.value for o in Outcome}:
        return None
    return DelegationResult(run_id, Outcome(outcome), path, record)


def delegate_once(
    delegator: Delegator, req: DelegationRequest, key: str, **kwargs: Any
) -> DelegationResult:
    """``delegator.delegate(req)`` at most once per ``key``.

    The first call claims the key and dispatches under the key's run id; a retry returns
    the first delegation's result when it has ended, and otherwise waits for it (it
    re-attaches by run id: nothing is sent twice). Keyword arguments go to ``delegate``.
    """
    from dataclasses import replace

    request = {
        "caller": req.caller,
        "target": req.target,
        "task": req.task,
        "parent_run_id": req.parent_run_id,
        "timeout": req.timeout,
        "model": req.model,
        "thinking": req.thinking,
        "channel": req.channel,
        "context": req.context,
    }
    delegator.check(req)  # a refused request claims no key
    keys = IdempotencyKeys(delegator.cfg.handoffs_dir)
    claim = keys.claim("delegate", key, request)
    if claim.run_id is None:  # pragma: no cover - delegations always bind at claim time
        raise IdempotencyConflict(f"idempotency key {key!r} has no run yet; retry in a moment.")
    if not claim.new:
        done = finished_delegation(
            delegator.records_dir(sub=req.parent_run_id is not None), claim.run_id
        )
        if done is not None:
            return done
    return delegator.delegate(replace(req, run_id=claim.run_id), reattach=not claim.new, **kwargs)
