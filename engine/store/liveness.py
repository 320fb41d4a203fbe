"""Is the caller of a pending delegation still waiting? One rule for every reader.

A pending envelope names its waiter: ``host`` (``socket.gethostname()``), ``pid`` and
``renewed_at`` (ISO time, rewritten by a long wait every ``RENEW_EVERY`` s). The waiter
is alive when it is on this host and its PID is alive, or on another host and renewed
within ``LIVENESS_TTL`` s. An envelope without a ``host`` (written before hosts were
kept) is taken as this host's. Used by ``reconcile`` (a live waiter records its own
handoff), routing (in-flight counts) and metrics (orphaned delegations).

Example::

    if waiter_alive(envelope):          # the default host and clock
        ...
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from engine.files import parse_iso

__all__ = [
    "LIVENESS_TTL",
    "RENEW_EVERY",
    "process_alive",
    "this_host",
    "waiter_alive",
    "waiting",
]

#: Seconds after its last renewal that a waiter on another host is taken as gone.
LIVENESS_TTL = 90.0
#: How often a long wait renews its envelope (only waits longer than this write at all).
RENEW_EVERY = 30.0

_HOST: str | None = None


def this_host() -> str:
    """This host's name as envelopes record it (looked up once)."""
    global _HOST
    if _HOST is None:
        _HOST = socket.gethostname()
    return _HOST


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


def waiting(envelope: Mapping[str, Any]) -> bool:
    """True for an envelope whose caller is (or was) waiting: dispatched, not orphaned."""
    return envelope.get("outcome") in (None, "dispatched") and not envelope.get("orphaned")


def waiter_alive(
    envelope: Mapping[str, Any],
    *,
    host: str | None = None,
    now: Callable[[], float] = time.time,
    ttl: float = LIVENESS_TTL,
    alive: Callable[[int], bool] = process_alive,
) -> bool:
    """True when the process that wrote ``envelope`` may still be waiting for its handoff.

    Same host: its PID is alive (an envelope without an int PID has nobody waiting).
    Other host: ``renewed_at`` (else ``created_at``) is less than ``ttl``
    s old by our clock.
    """
    if not waiting(envelope):
        return False
    here = host if host is not None else this_host()
    there = envelope.get("host")
    if there is None or there == here:
        pid = envelope.get("pid")
        return type(pid) is int and alive(pid)
    stamp = envelope.get("renewed_at") or envelope.get("created_at")
    if not isinstance(stamp, str):
        return False
    try:
        age = now() - parse_iso(stamp).timestamp()
    except ValueError:
        return False
    return age < ttl
