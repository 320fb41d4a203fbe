"""``PostgresPoolStore``: the token pool's state in PostgreSQL, shared by hosts.

The same ``PoolStore`` seam as the file store (``engine.pool.store``): one state document
(``engine.pool.state``) per pool, here the ``pool_state`` row named for the pool. A
transaction reads the row ``SELECT ... FOR UPDATE`` (every other transaction on that pool,
on any host, waits for the lock: first come, first served is the queue inside the
document, as on one host), lets the policy change it, writes it back and, when the change
granted a waiting request, sends ``NOTIFY orch_pool`` with the pool's name in the same
transaction. Waiters sleep on a ``LISTEN`` connection (one per store object) instead of
inotify.

Holders on other hosts are alive while they renew their leases (the policy's rule for a
``shared`` store): a ``TokenPool`` over this store renews every third of ``lease_ttl``,
and a dead host's tokens are reclaimed once its leases are older than ``lease_ttl``.

Example::

    store = PostgresPoolStore(Database.from_url("postgresql://orch@db:5432/orch"))
    pool = TokenPool(PoolSettings(dir=Path("unused"), max_tokens=8), store=store)
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any, TypeVar

from engine.errors import ConfigError
from engine.pool.store import Generation, HostLock, Step, run_step
from engine.store.postgres_db import Database
from engine.store.postgres_retry import connection_lost, retry_lost

__all__ = ["CHANNEL", "PostgresPoolStore"]

_T = TypeVar("_T")

#: The NOTIFY channel of pool changes (payload: the pool's name).
CHANNEL = "orch_pool"


#: Lost compare-and-swap races before a transaction takes the row lock instead.
_OPTIMISTIC_TRIES = 4
_READ = "SELECT state FROM pool_state WHERE name = %s"
_CREATE = "INSERT INTO pool_state (name, state) VALUES (%s, '') ON CONFLICT (name) DO NOTHING"
#: Turns ``synchronous_commit`` off for the transaction of the statement it is part of.
_ASYNC = "cfg AS (SELECT set_config('synchronous_commit', 'off', true))"
#: Is the row still what was read? (True, None), or (False, the row's bytes now).
_SAME = (
    "SELECT s.state = %s, CASE WHEN s.state = %s THEN NULL ELSE s.state END "
    "FROM pool_state s WHERE s.name = %s"
)
#: Write the new bytes if the row still holds the old ones: (True, None), or (False, the
#: row's bytes now). The row lock is taken and released inside this one statement.
_SWAP = (
    f"WITH {_ASYNC}, u AS (UPDATE pool_state SET state = %s, updated_at = now() FROM cfg "
    "WHERE name = %s AND state = %s RETURNING 1) "
    "SELECT EXISTS (SELECT 1 FROM u), "
    "(SELECT state FROM pool_state WHERE name = %s AND NOT EXISTS (SELECT 1 FROM u))"
)
#: The same, and the NOTIFY that wakes the waiters when the write happened.
_SWAP_NOTIFY = (
    f"WITH {_ASYNC}, u AS (UPDATE pool_state SET state = %s, updated_at = now() FROM cfg "
    "WHERE name = %s AND state = %s RETURNING 1), "
    "n AS (SELECT pg_notify(%s, %s) FROM u) "
    "SELECT EXISTS (SELECT 1 FROM u) AND (SELECT count(*) FROM n) >= 0, "
    "(SELECT state FROM pool_state WHERE name = %s AND NOT EXISTS (SELECT 1 FROM u))"
)
#: The write under the row lock (``_locked``), and with the NOTIFY.
_WRITE = (
    f"WITH {_ASYNC} UPDATE pool_state SET state = %s, updated_at = now() FROM cfg "
    "WHERE name = %s"
)
_WRITE_NOTIFY = f"WITH w AS ({_WRITE}) SELECT pg_notify(%s, %s)"


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

    def __init__(
        self, db: Database, *, name: str = "default", lock_dir: Path | None = None
    ) -> None:
        self._db = db
        self._name = name
        self._feed: _Feed | None = None
        self._feed_lock = threading.Lock()
        key = hashlib.sha256(f"{db.display}#{name}".encode()).hexdigest()[:16]
        path = Path(lock_dir) / f"postgresql-{key}.lock" if lock_dir is not None else None
        self._host_lock = HostLock(path)

    @property
    def lock_path(self) -> Path | None:
        """The host-local lock file (``<lock_dir>/postgresql-<hash>.lock``: a ``TokenPool``
        gives its ``pool.dir``, inside the handoffs directory) the processes of this host
        take turns on, which also keeps the row as this host last left it; None without
        ``lock_dir`` (the processes then race for the row, and each change reads it first)."""
        return self._host_lock.path

    @property
    def location(self) -> str:
        """``<url>#pool=<name>`` (no password)."""
        return f"{self._db.display}#pool={self._name}"

    def _conn(self) -> Any:
        return self._db.checked_conn()

    @retry_lost(idempotent=True)
    def exists(self) -> bool:
        """The pool's row exists."""
        row = self._conn().execute(
            "SELECT 1 FROM pool_state WHERE name = %s", (self._name,)
        ).fetchone()
        return row is not None

    def transact(self, fn: Step[_T]) -> _T:
        """``fn`` on the pool's row; new bytes written, and NOTIFYed when ``fn`` says a
        waiter may proceed (``wake``). ``fn`` may run more than once: only the run whose
        state was still the stored one counts.

        Optimistic first: read the row (no lock), run ``fn``, then one statement writes
        the new bytes only if the row still holds the bytes ``fn`` read (compare and
        swap) and answers the row's current bytes if not, for the next try. The row is
        locked only inside that statement, never while a client computes or a packet
        travels: with a row lock held across round trips (``SELECT ... FOR UPDATE``,
        then the write, then ``COMMIT``), 8 processes on 2 CPUs spent most of each
        transaction waiting for a lock holder that was not running. After
        ``_OPTIMISTIC_TRIES`` lost races the transaction takes the row lock, so every
        caller gets through. ``synchronous_commit`` is off for the write (the statement
        sets it): see ``docs/scale-out.md`` ("The shared pool") for why a pool may lose
        its last transactions in a server crash.
        """
        with self._host_lock.held():
            return self._transact_retried(fn)

    @retry_lost()
    def _transact_retried(self, fn: Step[_T]) -> _T:
        """``_transact``, run again after a lost connection that wrote nothing: the rules
        are pure functions of the row (``run_step``), and the row is read anew."""
        return self._transact(fn)

    def _transact(self, fn: Step[_T]) -> _T:
        import psycopg

        try:
            conn = self._conn()
            # The row as this host's last transaction left it: right unless another host
            # wrote since, and the swap checks that, so no read is needed first.
            stored = self._host_lock.load()
            if not stored:
                row = conn.execute(_READ, (self._name,)).fetchone()
                if row is None:
                    conn.execute(_CREATE, (self._name,))
                    stored = b""
                else:
                    stored = bytes(row[0])
            for _ in range(_OPTIMISTIC_TRIES):
                result, out, wake = run_step(fn, stored)
                if out is None:
                    got = conn.execute(_SAME, (stored, stored, self._name)).fetchone()
                else:
                    args: tuple[Any, ...] = (out, self._name, stored)
                    if wake:
                        args += (CHANNEL, self._name)
                    query = _SWAP_NOTIFY if wake else _SWAP
                    got = conn.execute(query, (*args, self._name)).fetchone()
                if got is not None and got[0]:
                    self._host_lock.save(stored if out is None else out)
                    return result
                if got is None or got[1] is None:  # the row is gone: make it again
                    conn.execute(_CREATE, (self._name,))
                    stored = b""
                elif bytes(got[1]) != stored:
                    stored = bytes(got[1])
                else:  # changed after the statement's snapshot: read the new version
                    row = conn.execute(_READ, (self._name,)).fetchone()
                    stored = bytes(row[0]) if row else b""
            self._host_lock.save(b"")
            return self._locked(conn, fn)
        except psycopg.Error as exc:
            from engine.store.postgres_db import driver_message

            if connection_lost(exc):
                self._host_lock.save(b"")  # the row may have changed meanwhile: read it
                raise

            raise ConfigError(
                f"the token pool in `{self.location}` is not usable: {driver_message(exc)} "
                "Check that the database runs and `orchestrate store migrate` was run."
            ) from exc

    def _locked(self, conn: Any, fn: Step[_T]) -> _T:
        """``fn`` on the row read ``FOR UPDATE``: the others wait until it commits."""
        with conn.transaction():
            row = conn.execute(_READ + " FOR UPDATE", (self._name,)).fetchone()
            result, out, wake = run_step(fn, bytes(row[0]) if row else b"")
            if out is not None:
                args: tuple[Any, ...] = (out, self._name)
                if wake:
                    args += (CHANNEL, self._name)
                conn.execute(_WRITE_NOTIFY if wake else _WRITE, args)
        return result

    @retry_lost(idempotent=True)
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
        self._host_lock.close()
        self._db.close_thread()
