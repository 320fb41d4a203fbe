"""The run store seam: where delegations and workflow runs are kept, as ``typing.Protocol`` s.

Every module that keeps or reads durable state (the delegator, the workflow runner,
routing, metrics, the gateway's receiver, validation) depends on ``RunStore`` and, to
wait for a handoff, on ``HandoffSignals``. ``FileRunStore`` (``engine.store.file``) is
the first backend: today's handoffs directory. A second backend (a database shared by
hosts) implements the same operations and passes ``tests/contracts/test_store_contract.py``.

The operations are semantic, not paths:

* **delegations**: ``pending`` (the envelope before dispatch), ``put_handoff`` (a
  handoff received over HTTP), ``finalize`` (an ending the engine decides: timeout,
  cancelled, invalid, errored), ``deliver`` (the agent's handoff, by the one merge
  rule: ``outcome``), ``reject`` (set a refused handoff aside), ``read``, ``find``,
  ``read_pending``, ``annotate``, ``list_pending``, ``reconcile``;
* **progress** (what an agent says while it works, ``engine.liveness``):
  ``write_progress``, ``read_progress``;
* **sub-delegation trees**: ``tree``;
* **workflow runs**: ``create_run``, ``append_event`` (through a ``Journal``),
  ``events``, ``write_step`` / ``read_step``, ``write_summary`` / ``read_summary``,
  ``claim`` (one executor at a time), ``request_cancel`` / ``cancel_requested``,
  ``list_runs``.

Example::

    store = open_store(cfg)                     # engine.store: `store:` resolved once
    store.pending(run_id, envelope, sub=False)  # before the POST
    with signals.expect(run_id, sub=False) as waiter:
        while store.deliver(run_id, sub=False, envelope=envelope).state == "absent":
            waiter.wait(remaining)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "Delivery",
    "HandoffSignals",
    "Journal",
    "RunStore",
    "Waiter",
]


@dataclass(frozen=True)
class Delivery:
    """What ``deliver`` did with the handoff of one run.

    ``state``: ``recorded`` (a record was written), ``already`` (that handoff is the
    record's already), ``duplicate`` (the run was recorded from another handoff; this
    one was kept and listed), ``refused`` (kept aside with the reason), ``partial``
    (unreadable, perhaps half-written: try again), ``absent`` (no handoff there),
    ``waiting`` (a live caller will record it), ``unknown`` (no delegation is known for
    the run: left where it is). ``record_path`` is where the record is (a path for the
    file store, a locator for others), ``kept`` where a refused handoff went.
    """

    state: str
    record_path: Path | None = None
    record: dict[str, Any] | None = None
    problem: Any = None
    kept: Path | None = None


class Waiter(Protocol):
    """One delegation waiting for its handoff: ``wait`` wakes when it *may* be there."""

    def wait(self, timeout: float | None) -> bool:
        """Block until a handoff for the run may have arrived or ``timeout`` s pass;
        True when woken by a signal. A spurious wake is allowed: the caller looks."""
        ...

    def wake(self) -> None:
        """Wake the wait now (something else than a handoff needs a look: the agent's
        run ended, a repair is due)."""
        ...

    def close(self) -> None:
        """Stop waiting (idempotent)."""
        ...


class HandoffSignals(Protocol):
    """Tells a delegation when run X's handoff may be there (inotify on the file store)."""

    def expect(self, run_id: str, *, sub: bool) -> Waiter:
        """Start watching for ``run_id``'s handoff; call it *before* dispatching, so
        nothing can arrive unseen between the dispatch and the watch."""
        ...


class Journal(Protocol):
    """The append-only event journal of one workflow run (its state is a replay of it)."""

    def append(self, kind: str, /, **fields: Any) -> dict[str, Any]:
        """Add one event (``at`` and ``event`` are filled in) durably; return it."""
        ...

    def close(self) -> None:
        """Release what the journal holds open (idempotent)."""
        ...


class RunStore(Protocol):
    """Durable state of delegations and workflow runs; one per handoffs location."""

    @property
    def location(self) -> str:
        """Where the store is, for messages (``file:///…/handoffs``)."""
        ...

    # -- delegations -------------------------------------------------------------------

    def handoff_target(self, run_id: str, *, sub: bool) -> Path:
        """Where the agent delivers the handoff of ``run_id`` (what its message says)."""
        ...

    def record_locator(self, run_id: str, *, sub: bool) -> Path:
        """Where the record of ``run_id`` is (or will be); stable for the run."""
        ...

    def pending(self, run_id: str, envelope: dict[str, Any], *, sub: bool) -> None:
        """Save (or replace) the envelope of a delegation that is not final yet."""
        ...

    def read_pending(self, run_id: str, *, sub: bool) -> dict[str, Any] | None:
        """The pending envelope of ``run_id``, or None."""
        ...

    def finalize(
        self,
        run_id: str,
        envelope: dict[str, Any],
        *,
        sub: bool,
        keep_pending: bool,
        agent: str | None = None,
    ) -> tuple[Path, dict[str, Any]]:
        """Record an ending the engine decided (``envelope['outcome']``: timeout,
        cancelled, invalid, errored). With ``keep_pending`` the envelope stays pending
        too, so a handoff that arrives later is still merged (marked late); without it
        the pending envelope is dropped. Returns the record's locator and the record."""
        ...

    def deliver(
        self,
        run_id: str,
        *,
        sub: bool,
        envelope: dict[str, Any] | None = None,
        grace: float = 2.0,
    ) -> Delivery:
        """Take the agent's handoff of ``run_id`` by the one merge rule (``engine.record``).

        The waiting caller passes its ``envelope`` (nothing it notes is written then);
        every other path passes none and the pending envelope is used."""
        ...

    def is_sub(self, run_id: str) -> bool:
        """True when ``run_id`` is known as a sub-delegation (pending or recorded)."""
        ...

    def put_handoff(self, run_id: str, handoff: dict[str, Any], *, sub: bool) -> Path:
        """Keep a handoff received for ``run_id`` (the gateway's receiver) where
        ``deliver`` finds it, never over another one; return where it went."""
        ...

    def has_handoff(self, run_id: str, *, sub: bool) -> bool:
        """True when a handoff for ``run_id`` is waiting to be delivered (cheap)."""
        ...

    def reject(
        self, run_id: str, problem: Any, envelope: dict[str, Any], *, sub: bool
    ) -> Path | None:
        """Set a handoff the waiter gave up on aside (never deleted), list it in
        ``envelope['rejected']``; return where it went."""
        ...

    def read(self, run_id: str, *, sub: bool) -> dict[str, Any] | None:
        """The final record of ``run_id`` (handoff fields + ``envelope``), or None."""
        ...

    def annotate(
        self, run_id: str, record: dict[str, Any], *, sub: bool
    ) -> tuple[Path, dict[str, Any]]:
        """Replace the record of ``run_id`` with ``record`` (the engine's own notes on
        it: validation verdict, a reclaimed token). Returns locator and record."""
        ...

    def find(self, run_id: str) -> tuple[Path, dict[str, Any]]:
        """The record of ``run_id`` anywhere (top-level or sub), a handoff that arrived
        being delivered first; else its pending envelope as a record without
        ``status``; raises ``RunStateError`` when the run is not known."""
        ...

    def list_pending(self, *, sub: bool) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every pending envelope as ``(run_id, envelope)`` (unreadable ones left out)."""
        ...

    def reconcile(self, *, sub: bool) -> list[Path]:
        """Deliver handoffs that arrived with nobody waiting; return records written."""
        ...

    def tree(self, run_id: str) -> dict[str, Any] | None:
        """The delegation tree under ``run_id`` (nodes with ``children``), or None."""
        ...

    # -- progress ----------------------------------------------------------------------

    def write_progress(self, run_id: str, line: dict[str, Any], *, sub: bool) -> None:
        """Keep ``line`` (``text``, ``at``, ``count``; checked by ``engine.liveness``)
        as the latest progress line of ``run_id``, replacing the one before."""
        ...

    def read_progress(self, run_id: str, *, sub: bool) -> dict[str, Any] | None:
        """The latest progress line of ``run_id`` as written, or None."""
        ...

    # -- workflow runs -----------------------------------------------------------------

    def run_exists(self, run_id: str) -> bool:
        """True when the workflow run ``run_id`` was created."""
        ...

    def run_locator(self, run_id: str) -> Path:
        """Where workflow run ``run_id`` lives (for messages and ``RunView.path``)."""
        ...

    def create_run(self, run_id: str, meta: dict[str, Any]) -> Path:
        """Create (or rewrite the metadata of) workflow run ``run_id``."""
        ...

    def read_run(self, run_id: str) -> Any:
        """The metadata of ``run_id`` (workflow, inputs, plan, fingerprint) as stored,
        whatever its shape (the runner checks it), or None when missing or unreadable."""
        ...

    def journal(self, run_id: str) -> Journal:
        """The journal of ``run_id`` to append to (close it when done)."""
        ...

    def events(self, run_id: str) -> list[tuple[int, Any]]:
        """The journal of ``run_id`` in order, each entry with its 1-based position
        (a file's line number), for replay to name what it skips. An entry that is not
        JSON (a torn last line) is left out; one that is JSON but not an event object
        is kept as it is."""
        ...

    def write_step(self, run_id: str, step_id: str, data: dict[str, Any]) -> None:
        """Save the result of a finished (or skipped) step."""
        ...

    def read_step(self, run_id: str, step_id: str) -> Any:
        """The result of step ``step_id`` of ``run_id`` as stored, whatever its shape,
        or None when missing, unreadable or not a usable step id."""
        ...

    def write_summary(self, run_id: str, summary: dict[str, Any]) -> None:
        """Save the run's summary (at the end, on pause, on cancel)."""
        ...

    def read_summary(self, run_id: str) -> dict[str, Any] | None:
        """The run's summary, or None."""
        ...

    def claim(self, run_id: str) -> AbstractContextManager[object]:
        """Be the one executor of ``run_id`` while inside; ``RunStateError`` if another
        live executor has it."""
        ...

    def claimed(self, run_id: str) -> bool:
        """True while a live executor holds ``run_id``."""
        ...

    def request_cancel(self, run_id: str) -> None:
        """Ask the executor of ``run_id`` to stop (it looks within 0.2 s)."""
        ...

    def cancel_requested(self, run_id: str) -> bool:
        """True once a cancel was requested for ``run_id``."""
        ...

    def list_runs(self) -> list[str]:
        """The ids of every workflow run created."""
        ...
