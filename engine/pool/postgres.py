"""``PostgresPoolStore``: the token pool's state in PostgreSQL, shared by hosts.

The same ``PoolStore`` seam as the file store (``engine.pool.store``): one state document
(``engine.pool.state``) per pool, here the ``pool_state`` row named for the pool. A
transaction reads the row ``SELECT ... FOR UPDATE`` (every other transaction on that pool,
on any host, waits for the lock: first come, first served is the queue inside the
document, as on one host), lets the policy change it, writes it back and sends
``NOTIFY orch_pool`` with the pool's name in the same transaction. Waiters sleep on a
``LISTEN`` connection (one per store object) instead of inotify.

Holders on other hosts are alive while they renew their leases (the policy's rule for a
``shared`` store): a ``TokenPool`` over this store renews every third of ``lease_ttl``,
and a dead host's tokens are reclaimed once its leases are older than ``lease_ttl``.

Example::

    store = PostgresPoolStore(Database.from_url("postgresql://orch@db:5432/orch"))
    pool = TokenPool(PoolSettings(dir=Path("unused"), max_tokens=8), store=store)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from engine.errors import ConfigError
from engine.pool.store import Generation
from engine.store.postgres_db import Database

__all__ = ["CHANNEL", "PostgresPoolStore"]

_T = TypeVar("_T")

#: The NOTIFY channel of pool changes (payload: the pool's name).
CHANNEL = "orch_pool"


class _Feed(Generation):
    """Generation counter bumped by NOTIFYs of one pool, read by a ``LISTEN`` thread."""

    def __init__(self, db: Database, name: str) -> None:
        super().__init__()
        self._db = db
        self._name = name
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stop = threading.Event()
        self._conn: Any = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        conn = self._db.listen(CHANNEL)
        self._conn, self._pid = conn, os.getpid()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, args=(conn, self._stop), daemon=True, name="pool-listen"
        )
        self._thread.start()

    def _loop(self, conn: Any, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                for note in conn.notifies(timeout=0.5):
                    if note.payload == self._name:
                        self.bump()
        except Exception:  # noqa: BLE001 - closed or lost: waiters fall back to timeouts
            pass
        finally:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass

    def close(self) -> None:
        if self._pid == os.getpid():
            self._stop.set()
        self._thread = None


class PostgresPoolStore:
    """The pool's state document as the ``pool_state`` row ``name`` (default ``default``)."""

    shared = True

    def __init__(self, db: Database, *, name: str = "default") -> None:
        self._db = db
        self._name = name
        self._feed: _Feed | None = None
        self._feed_lock = threading.Lock()

    @property
    def location(self) -> str:
        """``<url>#pool=<name>`` (no password)."""
        return f"{self._db.display}#pool={self._name}"

    def _conn(self) -> Any:
        return self._db.checked_conn()

    def exists(self) -> bool:
        """The pool's row exists."""
        row = self._conn().execute(
            "SELECT 1 FROM pool_state WHERE name = %s", (self._name,)
        ).fetchone()
        return row is not None

    def transact(self, fn: Callable[[bytes], tuple[_T, bytes | None]]) -> _T:
        """``fn`` on the row read ``FOR UPDATE``; new bytes written and NOTIFYed."""
        import psycopg

        try:
            conn = self._conn()
            with conn.transaction():
                # One round trip to lock and read (the row is made on first use), one to
                # write and NOTIFY: the lock is held for as little time as possible.
                row = conn.execute(
                    "WITH ins AS (INSERT INTO pool_state (name, state) VALUES (%s, '') "
                    "ON CONFLICT (name) DO NOTHING) "
                    "SELECT state FROM pool_state WHERE name = %s FOR UPDATE",
                    (self._name, self._name),
                ).fetchone()
                if row is None:  # created just now by this statement: not visible to it
                    row = conn.execute(
                        "SELECT state FROM pool_state WHERE name = %s FOR UPDATE", (self._name,)
                    ).fetchone()
                result, out = fn(bytes(row[0]) if row else b"")
                if out is not None:
                    conn.execute(
                        "WITH u AS (UPDATE pool_state SET state = %s, updated_at = now() "
                        "WHERE name = %s) SELECT pg_notify(%s, %s)",
                        (out, self._name, CHANNEL, self._name),
                    )
            return result
        except psycopg.Error as exc:
            from engine.store.postgres_db import driver_message

            raise ConfigError(
                f"the token pool in `{self.location}` is not usable: {driver_message(exc)} "
                "Check that the database runs and `orchestrate store migrate` was run."
            ) from exc

    def peek(self) -> bytes:
        """The row's state, read without the lock (b"" when none)."""
        row = self._conn().execute(
            "SELECT state FROM pool_state WHERE name = %s", (self._name,)
        ).fetchone()
        return bytes(row[0]) if row else b""

    def changes(self) -> _Feed | None:
        """The process's ``LISTEN`` feed for this pool (None if it cannot listen: poll)."""
        with self._feed_lock:
            if self._feed is None:
                self._feed = _Feed(self._db, self._name)
            try:
                self._feed.start()
            except ConfigError:
                return None
            return self._feed

    def close(self) -> None:
        """Stop listening and close the calling thread's connection (other stores over
        the same database share the rest)."""
        with self._feed_lock:
            if self._feed is not None:
                self._feed.close()
            self._feed = None
        self._db.close_thread()
