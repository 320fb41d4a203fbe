"""``PostgresRunStore``: the run store in a PostgreSQL database shared by hosts.

``store: postgresql://user@host:5432/db`` in orchestrator.yaml selects it (password from
an environment variable, see ``engine.store.postgres_db``). The tables are those of
``engine/store/migrations/`` (``delegations``, ``handoffs``, ``runs``, ``run_events``,
``step_results``); the schema version is checked when the store is first used.

The operations and their merge rule are the file store's (``engine.record``), with
database rows in place of files:

* a delegation is one ``delegations`` row: its pending envelope and its final record;
  ``deliver`` takes the row ``FOR UPDATE`` (one deliverer per run across hosts) and
  merges the handoffs in ``handoffs`` whose ``state`` is ``inbox``, in order;
* a handoff an agent delivers is kept byte for byte and never rewritten: refused ones
  become ``rejected``, a second one ``kept``; locators name them
  (``postgresql:/<db>/handoffs/<id>``);
* every handoff put and every record written sends ``NOTIFY orch_handoff`` with
  ``<sub>:<runId>``; ``PostgresHandoffSignals`` (``engine.store.postgres_signals``) wakes
  the waiters of that run (one ``LISTEN`` connection per process), without polling;
* workflow runs are ``PostgresRuns`` (``engine.store.postgres_runs``); a run is executed
  under a lease: ``claim`` sets ``owner_host``,
  ``owner_pid`` and ``lease_until`` (``RUN_LEASE_TTL`` s ahead) and a thread renews it
  every third of that; a holder on this host is alive while its PID is, one on another
  host while its lease has not expired; an expired lease is taken over.

Example::

    store = PostgresRunStore(Database.from_url("postgresql://orch@127.0.0.1:5432/orch"))
    store.pending(run_id, envelope, sub=False)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import RunStateError
from engine.files import SAFE_ID, check_id, utcnow_iso
from engine.handoff import check_delivered, with_earlier_keys
from engine.record import IMPORTED_DIR
from engine.store.liveness import this_host, waiter_alive
from engine.store.postgres_db import Database
from engine.store.postgres_retry import retry_lost
from engine.store.postgres_runs import (
    RUN_LEASE_TTL,
    PostgresJournal,
    PostgresRuns,
    _dumps,
    run_lease_ttl,
)
from engine.store.postgres_signals import CHANNEL, PostgresHandoffSignals, payload
from engine.store.protocol import Delivery

__all__ = [
    "CHANNEL",
    "RUN_LEASE_TTL",
    "PostgresHandoffSignals",
    "PostgresJournal",
    "PostgresRunStore",
]


@dataclass(frozen=True)
class _Into:
    """Where one stored handoff goes (``engine.record._Into`` on the file store): the
    transaction's connection, the delegation's row (``run_id``, ``sub``), its envelope,
    its record so far (if any), and whether its delegation still waits."""

    conn: Any
    run_id: str
    sub: bool
    env: dict[str, Any]
    current: dict[str, Any] | None
    waiting: bool


class PostgresRunStore(PostgresRuns):
    """The run store as PostgreSQL tables (``store: postgresql://…``)."""

    def __init__(
        self,
        db: Database,
        *,
        local: Path | None = None,
        host: str | None = None,
        lease_ttl: float | None = None,
    ) -> None:
        self._db = db
        self.local = Path(local) if local is not None else None
        self.host = host if host is not None else this_host()
        self.lease_ttl = float(lease_ttl) if lease_ttl is not None else run_lease_ttl()
        self._base = Path("postgresql:") / (db.name or "db")
        self._cancel_watches = {}

    def __repr__(self) -> str:
        return f"PostgresRunStore({self._db.display!r})"

    @property
    def db(self) -> Database:
        """Where the database is."""
        return self._db

    # -- delegations -------------------------------------------------------------------

    def _where(self, sub: bool) -> str:
        return "sub-delegations" if sub else "delegations"

    def handoff_target(self, run_id: str, *, sub: bool) -> Path:
        """Where a local agent writes its handoff file: ``<local>[/sub]/inbox/<runId>.json``
        in this host's private directory (imported into the database by whoever looks
        first on this host); without a local directory, a locator (agents then deliver
        through the receiver, ``POST /handoffs/<runId>``)."""
        check_id(run_id, "run id")
        if self.local is not None:
            return self._local_inbox(sub) / f"{run_id}.json"
        return self._base / self._where(sub) / run_id / "handoff"

    def _local_inbox(self, sub: bool) -> Path:
        assert self.local is not None
        return (self.local / "sub" if sub else self.local) / "inbox"

    def _import_local(self, run_id: str | None, sub: bool, grace: float = 2.0) -> int:
        """Move handoff files agents wrote on this host into the database (the bytes
        kept, the file moved to ``inbox/.imported/``); a file that does not parse yet
        and is younger than ``grace`` s is left for the next look. Returns how many.

        The bytes are stored (and committed) before the file is moved: a connection lost
        mid-statement leaves the file in the inbox for the next look, and a file stored
        whose move did not happen (lost after the commit, a crash) is stored once only
        (``_import_bytes``: the same bytes of a run are one handoff)."""
        if self.local is None:
            return 0
        from engine.handoff import HandoffProblem, read_handoff_bytes

        inbox = self._local_inbox(sub)
        try:
            names = sorted(
                e.name
                for e in os.scandir(inbox)
                if e.name[0] != "." and e.name.endswith(".json")
                and (run_id is None or e.name.split(".", 1)[0] == run_id)
            )  # fmt: skip
        except OSError:
            return 0
        moved = 0
        for name in names:
            rid = name.split(".", 1)[0]
            if not SAFE_ID.match(rid):
                continue
            path = inbox / name
            try:
                raw, st = read_handoff_bytes(path, root=self.local)
            except HandoffProblem:
                continue
            try:
                json.loads(raw)
            except ValueError:
                if time.time() - st.st_mtime < grace:
                    continue
            self._import_bytes(rid, raw, sub=sub)  # raises on a lost connection: file stays
            done = inbox / IMPORTED_DIR / f"{name[:-5]}.{os.urandom(4).hex()}.json"
            done.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(path, done)
            except OSError:
                continue  # another importer moved it (its bytes stored once all the same)
            try:  # the run's mark for the gateway: its agent delivered (no stand-in)
                os.link(done, done.parent / f"{rid}.json")
            except OSError:
                pass  # marked before (a second file), or no hard links here
            moved += 1
        return moved

    @retry_lost(idempotent=True)
    def _import_bytes(self, run_id: str, body: bytes, *, sub: bool) -> bool:
        """Keep ``body`` as the run's next handoff unless the run already has a handoff of
        exactly these bytes (a file imported before it could be moved, or by two
        importers at once); NOTIFY when stored. True when stored now. Idempotent, so
        a connection lost mid-statement is simply run again (``retry_lost``)."""
        return self._insert_handoff(run_id, body, sub=sub, once=True) is not None

    def _insert_handoff(self, run_id: str, body: bytes, *, sub: bool, once: bool) -> int | None:
        """Insert ``body`` as the run's next handoff (numbered under the run's advisory
        lock) and NOTIFY; the new row's id. With ``once``, None and nothing stored when
        the run already has a handoff of exactly these bytes."""
        check_id(run_id, "run id")
        having = "HAVING NOT coalesce(bool_or(body = %s), false) " if once else ""
        conn = self._conn()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("put:" + run_id,))
            row = conn.execute(
                "INSERT INTO handoffs (run_id, sub, n, body) SELECT %s, %s, "
                "coalesce(max(n), 0) + 1, %s FROM handoffs WHERE run_id = %s AND sub = %s "
                + having
                + "RETURNING id",
                (run_id, sub, body, run_id, sub, *((body,) if once else ())),
            ).fetchone()
            if row is None:
                return None
            self._notify(conn, run_id, sub)
        return int(row[0])

    def record_locator(self, run_id: str, *, sub: bool) -> Path:
        """``postgresql:/<db>/<delegations|sub-delegations>/<runId>``."""
        check_id(run_id, "run id")
        return self._base / self._where(sub) / run_id

    def _handoff_locator(self, handoff_id: int) -> Path:
        return self._base / "handoffs" / str(handoff_id)

    def _notify(self, conn: Any, run_id: str, sub: bool) -> None:
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload(run_id, sub)))

    @retry_lost(idempotent=True)
    def pending(self, run_id: str, envelope: dict[str, Any], *, sub: bool) -> None:
        """Upsert the row's envelope (and its waiter's host, pid, renewed_at).

        An envelope that replaces one with another handoff key (a delegation sent again
        under the same Idempotency-Key after its first sender died: the gateway may have
        run the first message, whose key the agent holds) keeps the earlier key's hash in
        ``earlier_key_sha256``; ``deliver`` and the receiver accept either."""
        check_id(run_id, "run id")
        conn = self._conn()
        with conn.transaction():
            row = conn.execute(
                "SELECT envelope FROM delegations WHERE run_id = %s AND sub = %s FOR UPDATE",
                (run_id, sub),
            ).fetchone()
            stored = with_earlier_keys(row[0] if row else None, dict(envelope))
            conn.execute(
                "INSERT INTO delegations (run_id, sub, envelope, parent_run_id, host, pid, "
                "renewed_at, outcome) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (run_id, sub) DO UPDATE SET envelope = EXCLUDED.envelope, "
                "parent_run_id = EXCLUDED.parent_run_id, host = EXCLUDED.host, "
                "pid = EXCLUDED.pid, renewed_at = EXCLUDED.renewed_at, "
                "outcome = coalesce(delegations.outcome, EXCLUDED.outcome), updated_at = now()",
                (run_id, sub, *self._env_cols(stored)),
            )

    @staticmethod
    def _env_cols(env: dict[str, Any]) -> tuple[Any, ...]:
        pid = env.get("pid")
        return (
            _dumps(env),
            env.get("parent_run_id"),
            env.get("host"),
            pid if type(pid) is int and -(2**31) <= pid < 2**31 else None,
            env.get("renewed_at") if isinstance(env.get("renewed_at"), str) else None,
            None,
        )

    @retry_lost(idempotent=True)
    def read_pending(self, run_id: str, *, sub: bool) -> dict[str, Any] | None:
        """The row's envelope, or None."""
        return self._read_pending(self._conn(), run_id, sub)

    def _install(
        self, conn: Any, run_id: str, sub: bool, record: dict[str, Any], *, drop: bool
    ) -> None:
        env = record.get("envelope") if isinstance(record.get("envelope"), dict) else {}
        assert isinstance(env, dict)
        conn.execute(
            "INSERT INTO delegations (run_id, sub, record, outcome, parent_run_id) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (run_id, sub) DO UPDATE SET "
            "record = EXCLUDED.record, outcome = EXCLUDED.outcome, "
            "parent_run_id = coalesce(EXCLUDED.parent_run_id, delegations.parent_run_id), "
            f"{'envelope = NULL, ' if drop else ''}updated_at = now()",
            (run_id, sub, _dumps(record), env.get("outcome"), env.get("parent_run_id")),
        )
        self._notify(conn, run_id, sub)

    @retry_lost(idempotent=True)
    def finalize(
        self,
        run_id: str,
        envelope: dict[str, Any],
        *,
        sub: bool,
        keep_pending: bool,
        agent: str | None = None,
    ) -> tuple[Path, dict[str, Any]]:
        """Record the engine's ending; the envelope stays pending with ``keep_pending``."""
        from engine.record import record_of

        check_id(run_id, "run id")
        data = record_of(None, envelope, run_id)
        if agent:
            data["agent"] = agent
        conn = self._conn()
        with conn.transaction():
            if keep_pending:
                self.pending(run_id, envelope, sub=sub)
            self._install(conn, run_id, sub, data, drop=not keep_pending)
        return self.record_locator(run_id, sub=sub), data

    @retry_lost()
    def deliver(
        self,
        run_id: str,
        *,
        sub: bool,
        envelope: dict[str, Any] | None = None,
        grace: float = 2.0,
    ) -> Delivery:
        """The merge rule of ``engine.record.deliver`` over the run's row, locked."""
        check_id(run_id, "run id")
        self._import_local(run_id, sub, grace)
        from engine.record import merge_sources

        conn = self._conn()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (payload(run_id, sub),))
            row = conn.execute(
                "SELECT envelope, record FROM delegations WHERE run_id = %s AND sub = %s "
                "FOR UPDATE",
                (run_id, sub),
            ).fetchone()
            pending, current = (row[0], row[1]) if row else (None, None)
            sources = conn.execute(
                "SELECT id, body, extract(epoch FROM received_at) FROM handoffs "
                "WHERE run_id = %s AND sub = %s AND state = 'inbox' ORDER BY n",
                (run_id, sub),
            ).fetchall()
            if not sources:
                return Delivery("absent")

            def one(src: Any, env: dict[str, Any], cur: Any, waits: bool) -> Delivery:
                earlier = [
                    h
                    for e in (env, pending)
                    if isinstance(e, dict)
                    for h in e.get("earlier_key_sha256") or []
                    if isinstance(h, str)
                ]
                hid, body, at = src
                into = _Into(conn, run_id, sub, env, cur, waits)
                return self._deliver_one(into, (hid, bytes(body), float(at)), grace, earlier)

            return merge_sources(
                sources, one, envelope=envelope, pending=pending, current=current
            )

    def _deliver_one(
        self, into: _Into, source: tuple[int, bytes, float], grace: float, earlier: list[str]
    ) -> Delivery:
        """Take one stored handoff: record it, refuse it, or keep it aside (the file
        store's rule, ``engine.record``)."""
        from engine.record import (
            _envelopes,
            _is_fallback,
            _standing,
            record_of,
            recorded_envelope,
        )

        hid = source[0]
        cur_env, final = _envelopes(into.current)
        read = self._parsed(into, source, grace, earlier)
        if isinstance(read, Delivery):
            return read
        handoff, verified = read
        fallback = _is_fallback(handoff)
        standing = _standing(final, cur_env, fallback)
        if standing is not None:
            return self._keep_aside(into, hid, standing, fallback)
        where = self._handoff_locator(hid)
        new = recorded_envelope(into.env, cur_env, into.waiting, handoff, verified, where)
        data = record_of(handoff, new, into.run_id)
        self._set_state(into.conn, hid, "recorded")
        self._install(into.conn, into.run_id, into.sub, data, drop=True)
        return Delivery("recorded", self.record_locator(into.run_id, sub=into.sub), data)

    def _parsed(
        self, into: _Into, source: tuple[int, bytes, float], grace: float, earlier: list[str]
    ) -> tuple[dict[str, Any], bool] | Delivery:
        """The checked handoff and whether its key was verified, or what to answer instead:
        an empty or partial handoff, or a refusal (its row marked ``rejected``)."""
        from engine.handoff import FINAL_KINDS, MAX_HANDOFF_BYTES, HandoffProblem
        from engine.record import _rejected_note

        env = into.env
        hid, raw, received_epoch = source
        where = self._handoff_locator(hid)
        try:
            limit = int(env.get("max_handoff_bytes") or MAX_HANDOFF_BYTES)
            if len(raw) > limit:
                raise HandoffProblem(
                    f"handoff `{where}` refused: it has {len(raw)} bytes, over the limit of "
                    f"{limit} (`max_handoff_bytes` in the config). Put long results in an "
                    "artifact file.",
                    kind="size",
                    path=where,
                )
            if not raw.strip() and into.waiting:
                return Delivery("absent")
            return check_delivered(raw, env, path=where, run_id=into.run_id, earlier=earlier)
        except HandoffProblem as exc:
            fresh = time.time() - received_epoch < grace
            if exc.kind not in FINAL_KINDS and (into.waiting or fresh):
                return Delivery("partial", problem=exc)
            self._set_state(into.conn, hid, "rejected")
            self._note(into, "rejected", _rejected_note(where, exc), waiting=into.waiting)
            return Delivery("refused", problem=exc, kept=where)

    def _keep_aside(
        self, into: _Into, hid: int, standing: dict[str, Any], fallback: bool
    ) -> Delivery:
        """Keep a handoff beside the envelope that stands, noted in ``also_received``."""
        from engine.record import _aside_reason

        where = self._handoff_locator(hid)
        self._set_state(into.conn, hid, "kept")
        reason = _aside_reason(standing, fallback)
        dup: dict[str, Any] = {"file": str(where), "reason": reason, "at": utcnow_iso()}
        self._note(into, "also_received", dup, waiting=False)
        record_path = self.record_locator(into.run_id, sub=into.sub)
        data = self._read(into.conn, into.run_id, into.sub)
        return Delivery("duplicate", record_path, data, kept=where)

    @staticmethod
    def _set_state(conn: Any, hid: int, state: str) -> None:
        conn.execute("UPDATE handoffs SET state = %s WHERE id = %s", (state, hid))

    def _note(self, into: _Into, field: str, note: dict[str, Any], *, waiting: bool) -> None:
        """List ``note`` where it will be seen (as ``engine.record._note`` does)."""
        conn, run_id, sub, current = into.conn, into.run_id, into.sub, into.current
        if waiting:
            into.env.setdefault(field, []).append(note)
            return
        pending = self._read_pending(conn, run_id, sub)
        if pending is not None:
            pending.setdefault(field, []).append(note)
            conn.execute(
                "UPDATE delegations SET envelope = %s WHERE run_id = %s AND sub = %s",
                (_dumps(pending), run_id, sub),
            )
        if isinstance(current, dict) and isinstance(current.get("envelope"), dict):
            current["envelope"].setdefault(field, []).append(note)
            conn.execute(
                "UPDATE delegations SET record = %s WHERE run_id = %s AND sub = %s",
                (_dumps(current), run_id, sub),
            )

    @staticmethod
    def _cell(conn: Any, column: str, run_id: str, sub: bool) -> Any:
        """The row's ``envelope`` or ``record`` (None without a row)."""
        row = conn.execute(
            f"SELECT {column} FROM delegations WHERE run_id = %s AND sub = %s", (run_id, sub)
        ).fetchone()
        return row[0] if row else None

    @classmethod
    def _read_pending(cls, conn: Any, run_id: str, sub: bool) -> dict[str, Any] | None:
        data = cls._cell(conn, "envelope", run_id, sub)
        return data if isinstance(data, dict) else None

    @classmethod
    def _read(cls, conn: Any, run_id: str, sub: bool) -> dict[str, Any] | None:
        data = cls._cell(conn, "record", run_id, sub)
        return data if isinstance(data, dict) and isinstance(data.get("envelope"), dict) else None

    @retry_lost(idempotent=True)
    def is_sub(self, run_id: str) -> bool:
        """A sub-delegation row exists (pending or recorded)."""
        row = self._conn().execute(
            "SELECT 1 FROM delegations WHERE run_id = %s AND sub", (run_id,)
        ).fetchone()
        return row is not None

    @retry_lost()
    def put_handoff(self, run_id: str, handoff: dict[str, Any], *, sub: bool) -> Path:
        """Insert the handoff as the run's next one (never over another) and NOTIFY."""
        return self.put_handoff_bytes(run_id, _dumps(handoff).encode(), sub=sub)

    @retry_lost()
    def put_handoff_bytes(self, run_id: str, body: bytes, *, sub: bool) -> Path:
        """Keep ``body`` (a handoff as an agent wrote it) as the run's next handoff."""
        row_id = self._insert_handoff(run_id, body, sub=sub, once=False)
        assert row_id is not None  # an aggregate without HAVING always gives its row
        return self._handoff_locator(row_id)

    @retry_lost(idempotent=True)
    def has_handoff(self, run_id: str, *, sub: bool) -> bool:
        """A handoff of ``run_id`` is in the inbox state (local files imported first)."""
        self._import_local(run_id, sub)
        row = self._conn().execute(
            "SELECT 1 FROM handoffs WHERE run_id = %s AND sub = %s AND state = 'inbox' LIMIT 1",
            (run_id, sub),
        ).fetchone()
        return row is not None

    @retry_lost()
    def reject(
        self, run_id: str, problem: Any, envelope: dict[str, Any], *, sub: bool
    ) -> Path | None:
        """Mark the first inbox handoff ``rejected`` and list it in ``envelope``."""
        conn = self._conn()
        row = conn.execute(
            "UPDATE handoffs SET state = 'rejected' WHERE id = (SELECT id FROM handoffs "
            "WHERE run_id = %s AND sub = %s AND state = 'inbox' ORDER BY n LIMIT 1) "
            "RETURNING id",
            (run_id, sub),
        ).fetchone()
        if row is None:
            return None
        kept = self._handoff_locator(int(row[0]))
        note = {"file": str(kept), "reason": problem.message, "at": utcnow_iso()}
        envelope.setdefault("rejected", []).append(note)
        return kept

    @retry_lost(idempotent=True)
    def read(self, run_id: str, *, sub: bool) -> dict[str, Any] | None:
        """The row's record (only an engine record: one with an ``envelope``)."""
        return self._read(self._conn(), run_id, sub)

    @retry_lost()
    def annotate(
        self, run_id: str, record: dict[str, Any], *, sub: bool
    ) -> tuple[Path, dict[str, Any]]:
        """Replace the row's record."""
        conn = self._conn()
        self._install(conn, run_id, sub, record, drop=False)
        return self.record_locator(run_id, sub=sub), record

    @retry_lost(idempotent=True)
    def find(self, run_id: str) -> tuple[Path, dict[str, Any]]:
        """The record (delivering a waiting handoff first), else the pending envelope as a
        record, else a handoff no delegation knows; ``RunStateError`` when none."""
        from engine.record import record_of

        check_id(run_id, "run id")
        conn = self._conn()
        found: tuple[Path, dict[str, Any]] | None = None
        for sub in (False, True):
            self._import_local(run_id, sub)
            row = conn.execute(
                "SELECT envelope, record FROM delegations WHERE run_id = %s AND sub = %s",
                (run_id, sub),
            ).fetchone()
            inbox = conn.execute(
                "SELECT id, body FROM handoffs WHERE run_id = %s AND sub = %s "
                "ORDER BY n LIMIT 1",
                (run_id, sub),
            ).fetchone()
            if row is None and inbox is None:
                continue
            self.deliver(run_id, sub=sub)
            record = self._read(conn, run_id, sub)
            if record is not None:
                return self.record_locator(run_id, sub=sub), record
            env = self._read_pending(conn, run_id, sub)
            if env is not None:
                return self.record_locator(run_id, sub=sub), record_of(None, env, run_id)
            if found is None and inbox is not None:
                try:
                    data = json.loads(bytes(inbox[1]))
                except ValueError:
                    data = None
                if isinstance(data, dict):
                    data = {k: v for k, v in data.items() if k not in ("key", "envelope")}
                    found = self._handoff_locator(int(inbox[0])), data
        if found is not None:
            return found
        raise RunStateError(
            f"no record for `{run_id}` in `{self.location}`. Run ids are printed by "
            "`orchestrate` (`record: ...`) and listed by `metrics json`."
        )

    def list_pending(self, *, sub: bool) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every row with an envelope, by run id."""
        rows = self._conn().execute(
            "SELECT run_id, envelope FROM delegations WHERE sub = %s AND envelope IS NOT NULL "
            "ORDER BY run_id",
            (sub,),
        ).fetchall()
        for run_id, env in rows:
            if isinstance(env, dict):
                yield run_id, env

    @retry_lost()
    def reconcile(self, *, sub: bool) -> list[Path]:
        """Deliver waiting handoffs of pending delegations nobody waits for."""
        self._import_local(None, sub)
        rows = self._conn().execute(
            "SELECT DISTINCT d.run_id, d.envelope FROM delegations d JOIN handoffs h "
            "ON h.run_id = d.run_id AND h.sub = d.sub AND h.state = 'inbox' "
            "WHERE d.sub = %s AND d.envelope IS NOT NULL",
            (sub,),
        ).fetchall()
        written: list[Path] = []
        for run_id, env in rows:
            if not isinstance(env, dict) or waiter_alive(env):
                continue
            done = self.deliver(run_id, sub=sub)
            if done.state == "recorded" and done.record_path is not None:
                written.append(done.record_path)
        return written

    @retry_lost(idempotent=True)
    def tree(self, run_id: str) -> dict[str, Any] | None:
        """The delegation tree under ``run_id`` (one recursive query)."""
        from engine.record import _node, nest

        self.reconcile(sub=False)
        self.reconcile(sub=True)
        rows = self._conn().execute(
            "WITH RECURSIVE t AS ("
            " SELECT run_id, sub, envelope, record FROM delegations WHERE run_id = %s"
            " UNION SELECT d.run_id, d.sub, d.envelope, d.record FROM delegations d"
            " JOIN t ON d.parent_run_id = t.run_id AND d.sub)"
            " SELECT run_id, sub, envelope, record FROM t ORDER BY sub",
            (run_id,),
        ).fetchall()
        nodes: dict[str, dict[str, Any]] = {}
        for rid, _sub, env, record in rows:
            if rid in nodes:
                continue
            if isinstance(record, dict) and isinstance(record.get("envelope"), dict):
                nodes[rid] = _node(rid, record, False)
            elif isinstance(env, dict):
                nodes[rid] = _node(rid, env, True)
        return nest(nodes, run_id)

    # -- progress ----------------------------------------------------------------------

    @retry_lost()
    def write_progress(self, run_id: str, line: dict[str, Any], *, sub: bool) -> None:
        """Upsert the run's row in ``progress``."""
        check_id(run_id, "run id")
        self._put_json("progress", {"run_id": run_id, "sub": sub}, "line", line, touch=True)

    @retry_lost(idempotent=True)
    def read_progress(self, run_id: str, *, sub: bool) -> dict[str, Any] | None:
        """The run's latest progress line, or None."""
        row = self._conn().execute(
            "SELECT line FROM progress WHERE run_id = %s AND sub = %s", (run_id, sub)
        ).fetchone()
        return row[0] if row and isinstance(row[0], dict) else None

    def close(self) -> None:
        """Close the calling thread's connection (others' stay: stores share them)."""
        self._db.close_thread()
