"""The token pool seam: what a delegation needs from a pool, as ``typing.Protocol`` s.

The delegator and the runner depend on ``Pool`` and ``Lease`` only; ``TokenPool``
(``engine.pool``) is the implementation, over a ``PoolStore`` (a file per host today).
A pool shared between hosts is another store under the same ``TokenPool``, or another
class that passes ``tests/contracts/test_pool_contract.py``.

Example::

    def run(pool: Pool) -> None:
        with pool.acquire(run_id="orch-1", agent="webster", timeout=60, hold_for=60) as lease:
            ...                      # dispatch, wait for the handoff, record it
        print(lease.reclaimed_reason)  # None, or why the pool took the token back
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

__all__ = ["CANCEL_CHECK", "Lease", "Pool"]

#: How often (s) a waiter for a token looks at its cancel event: a Ctrl-C or a
#: `workflow cancel` ends the wait within this (the delegator's handoff wait uses 0.2 s too).
CANCEL_CHECK = 0.2


class Lease(Protocol):
    """One token held by a delegation: renew it while working, release it when done."""

    @property
    def token_id(self) -> str:
        """The token's id (unique in its pool)."""
        ...

    @property
    def run_id(self) -> str:
        """The run the token was granted to."""
        ...

    @property
    def agent(self) -> str:
        """The agent the token was granted for."""
        ...

    @property
    def waited_s(self) -> float:
        """Seconds spent in the queue before the grant."""
        ...

    @property
    def reclaimed_reason(self) -> str | None:
        """After ``release()``: why the pool had already taken the token back
        (``dead``, ``timeout``, ``deadline``, ``expired``, ``lost``, ``unreleased``), or None."""
        ...

    @property
    def released(self) -> bool:
        """True once ``release()`` has run."""
        ...

    def renew(self) -> bool:
        """Tell the pool the holder is alive (a holder on another host must, within the
        pool's ``lease_ttl``); False if the token is no longer held. Never raises."""
        ...

    def release(self) -> None:
        """Give the token back and hand it to the next waiter; idempotent, never raises."""
        ...

    def __enter__(self) -> Lease: ...

    def __exit__(self, *exc: object) -> None: ...


class Pool(Protocol):
    """A limit on concurrent delegations, first come first served, shared by its users."""

    def acquire(
        self,
        *,
        run_id: str,
        agent: str,
        timeout: float | None,
        max_concurrent: int | None = None,
        hold_for: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Lease:
        """Wait up to ``timeout`` s (None: as long as it takes) for a token.

        ``max_concurrent`` caps the tokens held for ``agent``; ``hold_for`` is how long
        the caller's work may run (a live holder keeps its token that long). ``cancel``,
        once set, ends the wait within ``CANCEL_CHECK`` s and gives the place in the queue
        up. Raises ``PoolRefusedError`` when the queue is full, ``DelegationTimeoutError``
        when no token came in time, ``AcquireCancelledError`` when ``cancel`` was set first.
        """
        ...

    def note_overload(self) -> None:
        """Count a 429 or 503 from a gateway as one high load sample."""
        ...

    def status(self) -> dict[str, Any]:
        """Size, mode, tokens in use, queue, samples, reclamations, settings."""
        ...

    def close(self) -> None:
        """Release what the pool holds open (it reopens on next use)."""
        ...
