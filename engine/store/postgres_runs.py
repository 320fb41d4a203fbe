"""Workflow runs on a PostgreSQL store: metadata, journal, step results, summaries, leases.

``PostgresRuns`` holds the workflow-run half of ``PostgresRunStore`` (tables ``runs``,
``run_events``, ``step_results``). A run is executed under a lease: ``claim`` sets
``owner_host``, ``owner_pid`` and ``lease_until`` (``RUN_LEASE_TTL`` s ahead, or the
environment's ``ORCH_RUN_LEASE_TTL``: ``run_lease_ttl``) and a thread renews it every third
of that; a
holder on this host is alive while its PID is, one on another host while its lease has
not expired; an expired lease is taken over (``workflow resume`` on another host).

Each event appended and each cancel request sends ``NOTIFY orch_run`` in the statement that
writes it (``engine.store.postgres_signals``). The executor holding a lease listens for its
run's cancel: ``cancel_requested`` answers from memory while the ``LISTEN`` connection that
was up when the lease was taken is still up, and asks the database only after a
notification (or when that connection was lost). ``watch_run`` wakes a follower of a run
on each event and cancel request, on any host.

Example::

    with store.claim(run_id):            # RunStateError if a live executor has it
        store.journal(run_id).append("run_started", run_id=run_id)
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, RunStateError
from engine.files import SAFE_ID, check_id, utcnow_iso
from engine.redact import redact
from engine.store.liveness import process_alive
from engine.store.postgres_db import Database
from engine.store.postgres_retry import connection_lost, retry_lost
from engine.store.postgres_signals import RUN_CHANNEL, listener, run_payload
from engine.store.protocol import Waiter

__all__ = ["RUN_LEASE_TTL", "RUN_LEASE_TTL_ENV", "PostgresJournal", "PostgresRuns", "run_lease_ttl"]

#: Seconds a run's executor lease lasts without renewal (renewed every third of it): the
#: default of ``run_lease_ttl``.
RUN_LEASE_TTL = 30.0
#: The environment variable that sets it on a host.
RUN_LEASE_TTL_ENV = "ORCH_RUN_LEASE_TTL"
#: Its bounds, in seconds. Below one second the renewals (three per lease) become a busy
#: loop on the executor and the database; above a day a dead host's runs wait that long
#: for a taker (and the renewal's wait would overflow at ``threading.TIMEOUT_MAX``).
RUN_LEASE_TTL_MIN, RUN_LEASE_TTL_MAX = 1.0, 86400.0


def run_lease_ttl() -> float:
    """Seconds a run lease lasts: ``ORCH_RUN_LEASE_TTL`` when set (and not empty), else
    ``RUN_LEASE_TTL``.

    ``ConfigError`` (exit 2) naming the variable and its value unless it is a number of
    seconds from ``RUN_LEASE_TTL_MIN`` to ``RUN_LEASE_TTL_MAX``."""
    raw = os.environ.get(RUN_LEASE_TTL_ENV)
    if raw is None or not raw.strip():  # unset, or set to nothing (`Environment=X=`)
        return RUN_LEASE_TTL
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not RUN_LEASE_TTL_MIN <= value <= RUN_LEASE_TTL_MAX:  # NaN and inf fail here too
        raise ConfigError(
            f"the environment variable `{RUN_LEASE_TTL_ENV}` is `{redact(raw)}`; it must be "
            f"a number of seconds from {RUN_LEASE_TTL_MIN:g} to {RUN_LEASE_TTL_MAX:g} (how "
            "long a workflow run's executor lease lasts without renewal; it is renewed "
            f"every third of that). Unset it for the default, {RUN_LEASE_TTL:g} s."
        )
    return value


def _dumps(data: Any) -> str:
    """``data`` as the JSON this store keeps: redacted, as the file store writes it
    (``engine.files.json_bytes``), so a run's secret inputs and every registered secret
    are masked in the database too."""
    return redact(json.dumps(data, ensure_ascii=False, default=str))


class PostgresJournal:
    """The journal of one run: each ``append`` is one committed row (redacted)."""

    def __init__(self, store: PostgresRuns, run_id: str) -> None:
        self._store = store
        self._run_id = run_id

    @property
    def _db(self) -> Database:
        return self._store._db

    @retry_lost()
    def append(self, kind: str, /, **fields: Any) -> dict[str, Any]:
        """Insert one event (stamped with ``at``); it is durable when this returns. A lost
        connection is waited for when the event was not written (``retry_lost``)."""
        event = {"event": kind, "at": utcnow_iso(), **fields}
        body = _dumps(event)  # redacted there
        self._store._db.conn().execute(
            "WITH ins AS (INSERT INTO run_events (run_id, body) VALUES (%s, %s) RETURNING 1) "
            "SELECT pg_notify(%s, %s) FROM ins",
            (self._run_id, body, RUN_CHANNEL, run_payload("e", self._run_id)),
        )
        return event

    def close(self) -> None:
        """Nothing is held open between appends."""


class _CancelWatch:
    """The executor's ear for its run's cancel request (``NOTIFY orch_run 'c:<run>'``)."""

    def __init__(self, db: Database, run_id: str) -> None:
        self.event = threading.Event()
        self.event.set()  # the first look asks the database: a request before LISTEN
        self.listener = listener(db)
        self.waiter = self.listener.add(run_payload("c", run_id), self.event)
        self.generation = self.listener.generation
        self.known = False

    def requested(self, ask: Callable[[], bool]) -> bool:
        """True once a cancel was requested; ``ask`` reads the database only after a
        notification or when notifications may have been missed."""
        if self.known:
            return True
        current = self.listener.generation
        if self.listener.listening() and current == self.generation and not self.event.is_set():
            return False
        self.event.clear()
        self.generation = current
        self.known = ask()
        return self.known


class _RunLease:
    """Being the one executor of a run: the ``runs`` row's lease, renewed by a thread."""

    def __init__(self, store: PostgresRuns, run_id: str) -> None:
        self._store = store
        self._run_id = run_id
        self._token = os.urandom(8).hex()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: _CancelWatch | None = None

    def __enter__(self) -> _RunLease:
        self._store._take_run(self._run_id, self._token)
        self._watch = _CancelWatch(self._store._db, self._run_id)
        self._store._cancel_watches[self._run_id] = self._watch
        self._thread = threading.Thread(target=self._renew, name="run-lease", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        db = self._store._db
        while not self._stop.wait(self._store.lease_ttl / 3):
            try:
                if self._watch is not None:
                    self._watch.listener.ensure()  # listen again after a lost connection
                db.conn().execute(
                    "UPDATE runs SET lease_until = now() + make_interval(secs => %s) "
                    "WHERE run_id = %s AND owner_token = %s",
                    (self._store.lease_ttl, self._run_id, self._token),
                )
            except Exception:  # noqa: BLE001 - a lost connection: try again next beat
                continue
        db.close_thread()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._watch is not None:
            self._store._cancel_watches.pop(self._run_id, None)
            self._watch.waiter.close()
        try:
            self._store._db.conn().execute(
                "UPDATE runs SET owner_host = NULL, owner_pid = NULL, owner_token = NULL, "
                "lease_until = NULL WHERE run_id = %s AND owner_token = %s",
                (self._run_id, self._token),
            )
        except Exception as exc:
            if connection_lost(exc) is None:
                raise
            # The database is away: the lease runs out by itself (lease_ttl), and the
            # run's state is in its journal already.
            self._store._db.drop_thread_conn()


class PostgresRuns:
    """The workflow-run operations of ``PostgresRunStore`` (see the module docstring)."""

    _db: Database
    _base: Path
    host: str
    lease_ttl: float
    _cancel_watches: dict[str, _CancelWatch]

    @property
    def location(self) -> str:
        """The store's URL (no password)."""
        return self._db.display

    def _conn(self) -> Any:
        """This thread's connection, the schema checked."""
        return self._db.checked_conn()

    def _put_json(
        self, table: str, keys: dict[str, Any], column: str, value: Any, *, touch: bool = False
    ) -> None:
        """Insert the row of ``table`` keyed by ``keys`` (column name: value) with ``value``
        as its JSON ``column`` (``_dumps``: redacted), or replace that column of the row
        already there; ``touch`` sets its ``updated_at`` too. Names are this module's own."""
        names = ", ".join(keys)
        marks = ", ".join(["%s"] * (len(keys) + 1))
        stamp = ", updated_at = now()" if touch else ""
        self._conn().execute(
            f"INSERT INTO {table} ({names}, {column}) VALUES ({marks}) "
            f"ON CONFLICT ({names}) DO UPDATE SET {column} = EXCLUDED.{column}{stamp}",
            (*keys.values(), _dumps(value)),
        )

    def run_locator(self, run_id: str) -> Path:
        """``postgresql:/<db>/runs/<run>``."""
        check_id(run_id, "workflow run id")
        return self._base / "runs" / run_id

    @retry_lost(idempotent=True)
    def run_exists(self, run_id: str) -> bool:
        """A ``runs`` row exists."""
        row = self._conn().execute("SELECT 1 FROM runs WHERE run_id = %s", (run_id,)).fetchone()
        return row is not None

    @retry_lost(idempotent=True)
    def create_run(self, run_id: str, meta: dict[str, Any]) -> Path:
        """Insert (or replace the metadata of) the run."""
        check_id(run_id, "workflow run id")
        self._put_json("runs", {"run_id": run_id}, "meta", meta)
        return self.run_locator(run_id)

    @retry_lost(idempotent=True)
    def read_run(self, run_id: str) -> Any:
        """The run's metadata, or None."""
        row = self._conn().execute("SELECT meta FROM runs WHERE run_id = %s", (run_id,)).fetchone()
        return row[0] if row else None

    def journal(self, run_id: str) -> PostgresJournal:
        """Appends go straight to ``run_events``."""
        self._conn()
        return PostgresJournal(self, run_id)

    @retry_lost(idempotent=True)
    def events(self, run_id: str) -> list[tuple[int, Any]]:
        """The run's events in order, numbered from 1."""
        rows = self._conn().execute(
            "SELECT body FROM run_events WHERE run_id = %s ORDER BY id", (run_id,)
        ).fetchall()
        out: list[tuple[int, Any]] = []
        for n, (body,) in enumerate(rows, 1):
            try:
                out.append((n, json.loads(body)))
            except (ValueError, RecursionError):
                continue
        return out

    @retry_lost(idempotent=True)
    def write_step(self, run_id: str, step_id: str, data: dict[str, Any]) -> None:
        """Upsert the step's result."""
        check_id(step_id, "step id")
        self._put_json("step_results", {"run_id": run_id, "step_id": step_id}, "data", data)

    @retry_lost(idempotent=True)
    def read_step(self, run_id: str, step_id: str) -> Any:
        """The step's result, or None."""
        if not isinstance(step_id, str) or not SAFE_ID.match(step_id):
            return None
        row = self._conn().execute(
            "SELECT data FROM step_results WHERE run_id = %s AND step_id = %s", (run_id, step_id)
        ).fetchone()
        return row[0] if row else None

    @retry_lost(idempotent=True)
    def write_summary(self, run_id: str, summary: dict[str, Any]) -> None:
        """Set the run's summary."""
        self._conn().execute(
            "UPDATE runs SET summary = %s WHERE run_id = %s", (_dumps(summary), run_id)
        )

    @retry_lost(idempotent=True)
    def read_summary(self, run_id: str) -> dict[str, Any] | None:
        """The run's summary, or None."""
        row = self._conn().execute(
            "SELECT summary FROM runs WHERE run_id = %s", (run_id,)
        ).fetchone()
        return row[0] if row and isinstance(row[0], dict) else None

    def _holder_alive(self, host: str | None, pid: int | None, until: float | None) -> bool:
        if host is None:
            return False
        if host == self.host:
            return pid is not None and process_alive(pid)
        return until is not None and until > 0

    @retry_lost()
    def _take_run(self, run_id: str, token: str) -> None:
        conn = self._conn()
        with conn.transaction():
            row = conn.execute(
                "SELECT owner_host, owner_pid, extract(epoch FROM lease_until - now()) "
                "FROM runs WHERE run_id = %s FOR UPDATE",
                (run_id,),
            ).fetchone()
            if row is None:
                raise RunStateError(f"no workflow run `{run_id}` in `{self.location}`.")
            host, pid, left = row
            if self._holder_alive(host, pid, None if left is None else float(left)):
                raise RunStateError(
                    f"run `{run_id}` is being executed right now (pid {pid} on host "
                    f"`{host}`); wait for it, or `workflow cancel` it."
                )
            conn.execute(
                "UPDATE runs SET owner_host = %s, owner_pid = %s, owner_token = %s, "
                "lease_until = now() + make_interval(secs => %s) WHERE run_id = %s",
                (self.host, os.getpid(), token, self.lease_ttl, run_id),
            )

    def claim(self, run_id: str) -> _RunLease:
        """The run's lease (taken on enter, renewed by a thread, given up on exit)."""
        return _RunLease(self, run_id)

    @retry_lost(idempotent=True)
    def claimed(self, run_id: str) -> bool:
        """A live executor holds the run's lease."""
        row = self._conn().execute(
            "SELECT owner_host, owner_pid, extract(epoch FROM lease_until - now()) "
            "FROM runs WHERE run_id = %s",
            (run_id,),
        ).fetchone()
        if row is None:
            return False
        host, pid, left = row
        return self._holder_alive(host, pid, None if left is None else float(left))

    @retry_lost(idempotent=True)
    def request_cancel(self, run_id: str) -> None:
        """Stamp the run's cancel request and ``NOTIFY`` its executor, on any host."""
        self._conn().execute(
            "WITH up AS (UPDATE runs SET cancel_requested_at = now() WHERE run_id = %s "
            "RETURNING 1) SELECT pg_notify(%s, %s) FROM up",
            (run_id, RUN_CHANNEL, run_payload("c", run_id)),
        )

    @retry_lost(idempotent=True)
    def cancel_requested(self, run_id: str) -> bool:
        """A cancel was requested (from memory in the run's executor, see the module)."""
        watch = self._cancel_watches.get(run_id)
        if watch is not None:
            return watch.requested(lambda: self._cancel_in_db(run_id))
        return self._cancel_in_db(run_id)

    def _cancel_in_db(self, run_id: str) -> bool:
        row = self._conn().execute(
            "SELECT cancel_requested_at IS NOT NULL FROM runs WHERE run_id = %s", (run_id,)
        ).fetchone()
        return bool(row and row[0])

    def watch_run(self, run_id: str) -> Waiter:
        """A waiter woken when an event is appended to the run or a cancel is requested,
        by any host (``NOTIFY``); listening when this returns. Close it when done."""
        event = threading.Event()
        hub = listener(self._db)
        waiter = hub.add(run_payload("e", run_id), event)
        waiter.also = hub.add(run_payload("c", run_id), event)
        return waiter

    @retry_lost(idempotent=True)
    def list_runs(self) -> list[str]:
        """Every run id, sorted."""
        rows = self._conn().execute("SELECT run_id FROM runs ORDER BY run_id").fetchall()
        return [r[0] for r in rows]
