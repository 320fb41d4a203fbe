"""The adaptive token pool shared by every process on the host (seed 000).

Every delegation, and so every workflow step, holds one token from dispatch until its
handoff is recorded. The pool is a directory (default ``<handoffs_dir>/.pool/``) holding
``lock`` and ``state.json``; every change happens under an exclusive ``flock`` on ``lock``
and is written atomically (a complete temp file renamed into place), so any number of
processes share it and a crash never leaves a half-written state behind.

Example::

    settings = PoolSettings(dir=Path("handoffs/.pool"), max_tokens=3)
    pool = TokenPool(settings)  # a Pool (engine.lease): what the delegator takes
    with pool.acquire(run_id="orch-20250101T000000-0000abcd", agent="webster", timeout=60):
        ...  # dispatch, wait for the handoff, record it

What makes a leaked ("zombie") token impossible:

* a token records its holder's PID and process start time (``/proc/<pid>/stat`` field
  22); whenever any process looks at the pool, a token whose holder is gone (no such PID,
  a zombie, or the PID now belongs to a younger process) is reclaimed at once;
* a live holder keeps its token while its delegation may still be running: the lease
  records the delegation's deadline (``acquire(hold_for=...)``), and the token is reclaimed
  only once the holder is past both ``token_timeout`` and that deadline plus
  ``DEADLINE_GRACE`` (a holder that gave no deadline: past ``token_timeout``). A
  reclaimed token is listed in ``reclaimed`` with its reason so the engine can mark its
  delegation (its late handoff is still recorded);
* ages are measured on the host's monotonic clock: the state remembers the wall and
  monotonic times of its last write, and a wall-clock jump between two writes shifts every
  stored time by the jump, so setting the clock neither reclaims live tokens early nor
  keeps an emergency cooldown (or an overdue token) for the length of the jump;
* a state file that is not JSON, or has entries of the wrong shape, is repaired (bad
  entries dropped) instead of failing.

Waiters queue first come, first served across processes: a ticket is appended to the
shared queue and whoever changes the pool (a release, a reclamation, a size change)
grants free tokens to the tickets at the head, in order. A waiter sleeps until the state
file is replaced (inotify on the pool directory; polling with a 2-10 ms backoff where
inotify is missing), glances at it without the lock, and takes the lock only when its
ticket has become a token, or every 50 ms to reclaim what dead processes left behind.

With the file store, the state lives on the local host: processes sharing a pool must
share its PID namespace and filesystem (not NFS between hosts). Every token and ticket
also records its ``host`` and ``renewed_at``: a holder on another host (possible only
with a store shared between hosts) is alive while it renews its lease within
``lease_ttl``.

The package, layer by layer (docs/architecture.md, "The Pool seam"):

* ``settings``: ``PoolSettings`` and ``PoolMode``;
* ``state``: the shared state as dataclasses, and its JSON form (read leniently);
* ``policy``: the rules as pure transitions of a state (time and liveness are arguments);
* ``store``: the ``PoolStore`` seam, the file store (flock, atomic state file, inotify)
  and an in-memory store;
* ``host``: this host's identity and whether a PID is alive;
* ``tokenpool``: ``TokenPool`` (rules applied to a store) and its ``TokenLease``;
* ``status``: the status view and its text.
"""

from __future__ import annotations

from engine.lease import Lease, Pool
from engine.pool.policy import DEADLINE_GRACE, PoolPolicy
from engine.pool.settings import DEFAULT_LEASE_TTL, PoolMode, PoolSettings, system_load
from engine.pool.state import PoolState
from engine.pool.status import format_status
from engine.pool.store import LOCK_NAME, STATE_NAME, FileStore, MemoryStore, PoolStore
from engine.pool.tokenpool import TokenLease, TokenPool

__all__ = [
    "DEADLINE_GRACE",
    "DEFAULT_LEASE_TTL",
    "LOCK_NAME",
    "STATE_NAME",
    "FileStore",
    "Lease",
    "MemoryStore",
    "Pool",
    "PoolMode",
    "PoolPolicy",
    "PoolSettings",
    "PoolState",
    "PoolStore",
    "TokenLease",
    "TokenPool",
    "format_status",
    "system_load",
]
