"""Is the caller of a pending delegation still waiting? One rule for every reader.

A pending envelope names its waiter: ``host`` (``this_host()``), ``pid`` and
``renewed_at`` (ISO time, rewritten by a long wait every ``RENEW_EVERY`` s). The waiter
is alive when it is on this host and its PID is alive, or on another host and renewed
within ``LIVENESS_TTL`` s. An envelope without a ``host`` (written before hosts were
kept) is taken as this host's. Used by ``reconcile`` (a live waiter records its own
handoff), routing (in-flight counts) and metrics (orphaned delegations).

This host's identity is the environment variable ``ORCH_HOST_ID`` when it is set (one
line of printable text, at most 64 characters), else ``socket.gethostname()``. Set it when
two orchestrators share one machine but must count as two hosts, or when hosts' names
are not unique. The pool's holders use the same identity (``engine.pool.host.host_id``).

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

from engine.errors import ConfigError
from engine.files import parse_iso

__all__ = [
    "HOST_ENV",
    "LIVENESS_TTL",
    "RENEW_EVERY",
    "configured_host",
    "process_alive",
    "this_host",
    "waiter_alive",
    "waiting",
]

#: Seconds after its last renewal that a waiter on another host is taken as gone.
LIVENESS_TTL = 90.0
#: How often a long wait renews its envelope (only waits longer than this write at all).
RENEW_EVERY = 30.0

#: The environment variable that sets this host's identity (default: the host name).
HOST_ENV = "ORCH_HOST_ID"
_MAX_HOST = 64

_HOST: str | None = None


def configured_host() -> str | None:
    """The host identity set by ``ORCH_HOST_ID``, or None when it is unset or empty.

    Raises ``ConfigError`` (exit code 2) for a value longer than 64 characters or with
    characters that are not printable (a newline, a control character).
    """
    value = os.environ.get(HOST_ENV, "").strip()
    if not value:
        return None
    if len(value) > _MAX_HOST or not value.isprintable():
        raise ConfigError(
            f"the environment variable {HOST_ENV} must be this host's identity: one line of "
            f"printable text of at most {_MAX_HOST} characters (it is {len(value)} "
            "characters long or holds a control character). Set it to a short name such as "
            f"`orch-a`, or unset it to use the host name."
        )
    return value


def this_host() -> str:
    """This host's identity as envelopes and run leases record it (looked up once).

    ``ORCH_HOST_ID`` when set (see ``configured_host``), else ``socket.gethostname()``.
    """
    global _HOST
    if _HOST is None:
        _HOST = configured_host() or socket.gethostname()
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
