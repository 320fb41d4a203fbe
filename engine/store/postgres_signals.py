"""Waking waiters on a PostgreSQL store: ``LISTEN``/``NOTIFY`` on two channels.

Every handoff put and every record written by ``PostgresRunStore`` sends ``NOTIFY
orch_handoff`` with ``<0|1>:<runId>`` (``payload``); every run event appended and every
cancel request of a workflow run sends ``NOTIFY orch_run`` with ``e:<runId>`` or
``c:<runId>`` (``run_payload``). One ``LISTEN`` connection per process and database
(``listener``) wakes the waiters of that key. ``PostgresHandoffSignals`` also watches this
host's local inbox (inotify) for handoff files local agents write.

Example::

    waiter = PostgresHandoffSignals(store).expect(run_id, sub=False)   # before the POST
    waiter.wait(30)                                                    # True when woken
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.store.postgres_db import Database
from engine.store.protocol import Waiter

if TYPE_CHECKING:
    from engine.store.postgres import PostgresRunStore

__all__ = [
    "CHANNEL",
    "RUN_CHANNEL",
    "PostgresHandoffSignals",
    "journal_after",
    "journal_lengths",
    "listener",
    "payload",
    "run_payload",
]

#: The NOTIFY channel of handoffs and records (payload ``<0|1>:<runId>``).
CHANNEL = "orch_handoff"
#: The NOTIFY channel of workflow runs (payload ``e:<runId>`` or ``c:<runId>``).
RUN_CHANNEL = "orch_run"


def payload(run_id: str, sub: bool) -> str:
    """The NOTIFY payload naming ``run_id`` (``1:`` for a sub-delegation)."""
    return f"{int(sub)}:{run_id}"


def run_payload(kind: str, run_id: str) -> str:
    """The ``orch_run`` payload: ``kind`` is ``e`` (an event appended) or ``c`` (cancel)."""
    return f"{kind}:{run_id}"


class _PgWaiter:
    def __init__(self, hub: _Listener, key: str, event: threading.Event | None = None) -> None:
        self._hub = hub
        self._key = key
        self._event = event if event is not None else threading.Event()
        self._closed = False
        self.also: Any = None  # the local inbox's file waiter, sharing the event

    def wait(self, timeout: float | None) -> bool:
        got = self._event.wait(timeout if timeout is None else max(0.0, timeout))
        self._event.clear()
        return got

    def wake(self) -> None:
        self._event.set()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._hub.drop(self._key, self)
            if self.also is not None:
                self.also.close()


class _Listener:
    """One ``LISTEN`` connection per process and database; wakes waiters by payload.

    ``generation`` counts the connections made: a notification sent while none listened
    (after a lost connection) is missed, so a reader that relies on having seen every
    one compares generations and asks the database when they differ.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock = threading.Lock()
        self._waiters: dict[str, set[_PgWaiter]] = {}
        self._conn: Any = None
        self._thread: threading.Thread | None = None
        self._pid = 0
        self.generation = 0
        self._taps: list[Callable[[str | None], None]] = []

    def tap(self, callback: Callable[[str | None], None]) -> Callable[[], None]:
        """Call ``callback(payload)`` from the listening thread for every notification
        (``None`` once the connection is lost: anything may have been missed); listening
        when this returns. Returns the function that stops the calls."""
        with self._lock:
            self._taps.append(callback)
            self._ensure()

        def untap() -> None:
            with self._lock:
                if callback in self._taps:
                    self._taps.remove(callback)

        return untap

    def add(self, key: str, event: threading.Event | None = None) -> _PgWaiter:
        waiter = _PgWaiter(self, key, event)
        with self._lock:
            self._waiters.setdefault(key, set()).add(waiter)
            self._ensure()
        return waiter

    def drop(self, key: str, waiter: _PgWaiter) -> None:
        with self._lock:
            group = self._waiters.get(key)
            if group is not None:
                group.discard(waiter)
                if not group:
                    del self._waiters[key]

    def listening(self) -> bool:
        """The ``LISTEN`` connection of this process is up."""
        return self._thread is not None and self._thread.is_alive() and self._pid == os.getpid()

    def ensure(self) -> None:
        """Listen again if the connection was lost (a lease's renewal calls this)."""
        with self._lock:
            self._ensure()

    def _ensure(self) -> None:
        """Listening before ``add`` returns: nothing NOTIFYed after it is missed."""
        if self.listening():
            return
        conn = self._db.listen(CHANNEL, RUN_CHANNEL)
        self._conn, self._pid = conn, os.getpid()
        self.generation += 1
        self._thread = threading.Thread(target=self._loop, args=(conn,), daemon=True,
                                        name="pg-listen")  # fmt: skip
        self._thread.start()

    def _loop(self, conn: Any) -> None:
        try:
            while True:
                for note in conn.notifies(timeout=1.0):
                    with self._lock:
                        group = list(self._waiters.get(note.payload, ()))
                        taps = list(self._taps)
                    for waiter in group:
                        waiter.wake()
                    for tap in taps:
                        tap(note.payload)
        except Exception:  # noqa: BLE001 - connection lost: wake everyone, they look
            with self._lock:
                everyone = [w for g in self._waiters.values() for w in g]
                taps = list(self._taps)
                self._thread = None
            for waiter in everyone:
                waiter.wake()
            for tap in taps:
                tap(None)


_listeners: dict[str, _Listener] = {}
_listeners_lock = threading.Lock()


def listener(db: Database) -> _Listener:
    """This process's ``LISTEN`` connection to ``db`` (made on its first waiter)."""
    with _listeners_lock:
        key = f"{os.getpid()}:{db.conninfo}"
        found = _listeners.get(key)
        if found is None:
            found = _listeners[key] = _Listener(db)
        return found


def journal_lengths(db: Database) -> dict[str, int]:
    """How many events each run's journal holds (run id -> count), in one query: what a
    follower of every run (``orchestrate serve``'s event feed) has to catch up with."""
    rows = (
        db.checked_conn()
        .execute("SELECT run_id, count(*) FROM run_events GROUP BY run_id")
        .fetchall()
    )
    return {str(run_id): int(n) for run_id, n in rows}


def journal_after(db: Database, run_id: str, after: int) -> list[tuple[int, str]]:
    """The run's events after its ``after``-th, as ``(number, JSON text)``, numbered from
    1 in append order as ``PostgresRunStore.events`` numbers them (one appender per run:
    the executor holding the run's lease)."""
    rows = (
        db.checked_conn()
        .execute(
            "SELECT body FROM run_events WHERE run_id = %s ORDER BY id OFFSET %s",
            (run_id, max(0, after)),
        )
        .fetchall()
    )
    return [(after + i, str(body)) for i, (body,) in enumerate(rows, 1)]


class PostgresHandoffSignals:
    """Wakes a delegation when its run's handoff or record is written (``NOTIFY``)."""

    def __init__(self, store: PostgresRunStore) -> None:
        self.store = store
        self._listener = listener(store.db)

    def expect(self, run_id: str, *, sub: bool) -> Waiter:
        """Register before dispatching: a NOTIFY for ``run_id`` wakes the waiter, and so
        does a handoff file written into this host's local inbox (inotify)."""
        event = threading.Event()
        waiter = self._listener.add(payload(run_id, sub), event)
        if self.store.local is not None:
            from engine.watch import watcher_for

            target = self.store.handoff_target(run_id, sub=sub)
            waiter.also = watcher_for(target.parent).expect(target.name, event=event)
        return waiter
