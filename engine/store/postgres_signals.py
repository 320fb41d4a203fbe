"""Waking delegations on a PostgreSQL store: ``LISTEN``/``NOTIFY`` on ``orch_handoff``.

Every handoff put and every record written by ``PostgresRunStore`` sends ``NOTIFY
orch_handoff`` with ``<0|1>:<runId>`` (``payload``); ``PostgresHandoffSignals`` keeps one
``LISTEN`` connection per process and database and wakes the waiters of that run, and
also watches this host's local inbox (inotify) for handoff files local agents write.

Example::

    waiter = PostgresHandoffSignals(store).expect(run_id, sub=False)   # before the POST
    waiter.wait(30)                                                    # True when woken
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from engine.store.postgres_db import Database
from engine.store.protocol import Waiter

if TYPE_CHECKING:
    from engine.store.postgres import PostgresRunStore

__all__ = ["CHANNEL", "PostgresHandoffSignals", "payload"]

#: The NOTIFY channel of handoffs and records (payload ``<0|1>:<runId>``).
CHANNEL = "orch_handoff"


def payload(run_id: str, sub: bool) -> str:
    """The NOTIFY payload naming ``run_id`` (``1:`` for a sub-delegation)."""
    return f"{int(sub)}:{run_id}"


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
    """One ``LISTEN`` connection per process and database; wakes waiters by run."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock = threading.Lock()
        self._waiters: dict[str, set[_PgWaiter]] = {}
        self._conn: Any = None
        self._thread: threading.Thread | None = None
        self._pid = 0

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

    def _ensure(self) -> None:
        """Listening before ``add`` returns: nothing NOTIFYed after it is missed."""
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        conn = self._db.connect()
        self._db.track(conn)
        conn.execute(f"LISTEN {CHANNEL}")
        self._conn, self._pid = conn, os.getpid()
        self._thread = threading.Thread(target=self._loop, args=(conn,), daemon=True,
                                        name="pg-listen")  # fmt: skip
        self._thread.start()

    def _loop(self, conn: Any) -> None:
        try:
            while True:
                for note in conn.notifies(timeout=1.0):
                    with self._lock:
                        group = list(self._waiters.get(note.payload, ()))
                    for waiter in group:
                        waiter.wake()
        except Exception:  # noqa: BLE001 - connection lost: wake everyone, they look
            with self._lock:
                everyone = [w for g in self._waiters.values() for w in g]
                self._thread = None
            for waiter in everyone:
                waiter.wake()


_listeners: dict[str, _Listener] = {}
_listeners_lock = threading.Lock()


class PostgresHandoffSignals:
    """Wakes a delegation when its run's handoff or record is written (``NOTIFY``)."""

    def __init__(self, store: PostgresRunStore) -> None:
        self.store = store
        with _listeners_lock:
            key = f"{os.getpid()}:{store.db.display}"
            listener = _listeners.get(key)
            if listener is None:
                listener = _listeners[key] = _Listener(store.db)
        self._listener = listener

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
