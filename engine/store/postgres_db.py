"""Connecting to the PostgreSQL store and keeping its schema at the engine's version.

A ``store: postgresql://user@host:port/db`` URL never holds a password: it comes from
the environment variable named by the URL's ``password_env`` query parameter
(``postgresql://orch@db:5432/orch?password_env=ORCH_DB_PASSWORD``), else from
``PGPASSWORD`` (libpq's own), else none (trust or peer authentication). A URL with an
inline password is refused (``url_problem``) and the password is never repeated.

The schema is plain versioned SQL: ``engine/store/migrations/NNNN_name.sql``, applied in
order by ``migrate`` (``orchestrate store migrate``), all the missing ones in one
transaction (each also inserts its row in ``schema_version``): a failure leaves the
database as it was. Opening a store checks the version (``check_schema``): a database
behind the engine is a ``ConfigError`` naming the command, one ahead of it (written by a
newer engine) a ``ConfigError`` saying to upgrade; ``migrate`` refuses the latter too.

Messages show the URL as ``Database.display``: with its user name (a role name, not a
secret: libpq's own messages name it), never a password (refused in the URL) nor the
value of a secret connection parameter (``sslpassword``, ``oauth_client_secret``).

Example::

    db = Database.from_url("postgresql://orch@127.0.0.1:5432/orch")
    migrate(db)                  # [1] on an empty database, [] afterwards
    with db.connect() as conn:
        conn.execute("SELECT 1")
"""

from __future__ import annotations

import os
import re
import sys
import threading
from dataclasses import dataclass, field
from importlib import resources
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from engine.errors import ConfigError
from engine.redact import MASK, register

__all__ = [
    "SCHEMES",
    "Database",
    "StoreUnreachable",
    "check_schema",
    "close_databases",
    "driver",
    "driver_error",
    "driver_message",
    "migrate",
    "migrations",
    "schema_version",
    "url_problem",
]

#: URL schemes that name a PostgreSQL store.
SCHEMES = ("postgresql", "postgres")
#: Query parameter naming the environment variable that holds the password.
PASSWORD_ENV = "password_env"
#: The query parameters a store URL may have: ``password_env`` and libpq's connection
#: parameters (PostgreSQL 18 docs, "Parameter Key Words"), ``password`` excepted.
QUERY_PARAMETERS = frozenset({
    PASSWORD_ENV, "host", "hostaddr", "port", "dbname", "user", "passfile", "require_auth",
    "channel_binding", "connect_timeout", "client_encoding", "options", "application_name",
    "fallback_application_name", "keepalives", "keepalives_idle", "keepalives_interval",
    "keepalives_count", "tcp_user_timeout", "replication", "gssencmode", "sslmode",
    "requiressl", "sslnegotiation", "sslcompression", "sslcert", "sslkey", "sslkeylogfile",
    "sslpassword", "sslcertmode", "sslrootcert", "sslcrl", "sslcrldir", "sslsni",
    "requirepeer", "ssl_min_protocol_version", "ssl_max_protocol_version", "krbsrvname",
    "gsslib", "gssdelegation", "service", "target_session_attrs", "load_balance_hosts",
    "min_protocol_version", "max_protocol_version", "oauth_issuer", "oauth_client_id",
    "oauth_client_secret", "oauth_scope",
})  # fmt: skip
#: Connection parameters whose values are secrets: masked wherever the URL is shown.
SECRET_PARAMETERS = frozenset({"sslpassword", "oauth_client_secret"})
#: How a suggestion in a message writes a store URL (typeable: no mask in it).
URL_EXAMPLE = "postgresql://user@host:5432/db"
_MIGRATION = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
#: Advisory lock key taken while migrating (two `store migrate` at once run one by one).
_MIGRATE_LOCK = 0x6F726368


def url_problem(url: str, where: str = "`store`") -> str | None:
    """Why ``url`` is not a usable PostgreSQL store URL, or None. ``where`` names where
    it came from: ``"`store`"`` (orchestrator.yaml, the default) or a command-line
    option such as ``"`--to`"``; a password in it is never repeated."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"{where} is not a valid URL ({exc}); write `{URL_EXAMPLE}`."
    if parts.password is not None:
        never = (
            "never write it in orchestrator.yaml"
            if where == "`store`"
            else "never give it on the command line (shell history and the process list "
            "keep it)"
        )
        return (
            f"{where}: the PostgreSQL URL holds a password; {never}. Put it in an "
            "environment variable and name it: "
            f"`{URL_EXAMPLE}?password_env=ORCH_DB_PASSWORD` (or set PGPASSWORD)."
        )
    names = [k for k, _ in parse_qsl(parts.query, keep_blank_values=True)]
    if "password" in names:
        return (
            f"{where}: the PostgreSQL URL holds a password (its query parameter "
            "`password`); put it in an "
            "environment variable and name it: "
            f"`{URL_EXAMPLE}?password_env=ORCH_DB_PASSWORD` (or set PGPASSWORD)."
        )
    unknown = [k for k in names if k not in QUERY_PARAMETERS]
    if unknown:
        from engine.errors import did_you_mean

        return (
            f"{where}: the PostgreSQL URL's query parameter `{unknown[0]}` is not one the "
            f"engine or libpq knows{did_you_mean(unknown[0], set(QUERY_PARAMETERS)) or '.'} "
            f"Use `{PASSWORD_ENV}=VAR` for the password's variable, or a libpq connection "
            "parameter (e.g. `sslmode=require`)."
        )
    if not parts.hostname and "host" not in dict(parse_qsl(parts.query)):
        return f"{where}: the PostgreSQL URL names no host; write `{URL_EXAMPLE}`."
    if not parts.path.strip("/"):
        return f"{where}: the PostgreSQL URL names no database; write `{URL_EXAMPLE}`."
    return None


def driver(display: str) -> ModuleType:
    """The ``psycopg`` module; ``ConfigError`` (exit 2) naming the store ``display`` and
    how to install the driver when this Python lacks it (the package is installed from
    its checkout: it is not on PyPI, where another project owns its name)."""
    try:
        import psycopg
    except ImportError as exc:
        raise ConfigError(
            f"the PostgreSQL store `{display}` needs the PostgreSQL driver (psycopg 3), "
            f"which this Python ({sys.executable}) does not have ({exc}). Install the "
            "`postgres` extra from the engine's checkout: `bash scripts/bootstrap.sh "
            "postgres` (into the checkout's `.venv`), or `pip install -e '.[postgres]'` "
            "in the checkout with this Python."
        ) from exc
    return psycopg


class StoreUnreachable(ConfigError):
    """``Database.connect`` could not connect (exit 2): nothing was sent to the server."""


@dataclass(frozen=True)
class Database:
    """Where the store's database is: a conninfo without a password, and where the
    password comes from. ``display`` is the URL as shown in messages (no secret)."""

    conninfo: str
    display: str
    password_env: str | None = None
    _local: _Connections = field(
        default_factory=lambda: _Connections(), compare=False, repr=False
    )

    @classmethod
    def from_url(cls, url: str) -> Database:
        """The database of a ``postgresql://`` URL (one object per URL in a process, so
        every store over it shares its connections); ``ConfigError`` when ``url_problem``
        finds one."""
        with _registry_lock:
            db = _registry.get(url)
            if db is None:
                db = _registry[url] = cls._parse(url)
            return db

    @classmethod
    def _parse(cls, url: str) -> Database:
        problem = url_problem(url)
        if problem:
            raise ConfigError(problem)
        parts = urlsplit(url)
        query = parse_qsl(parts.query)
        env = next((v for k, v in query if k == PASSWORD_ENV), None)
        rest = [(k, v) for k, v in query if k != PASSWORD_ENV]
        scheme = "postgresql"
        clean = urlunsplit((scheme, parts.netloc, parts.path, urlencode(rest), ""))
        for k, v in rest:
            if k in SECRET_PARAMETERS:
                register(v)
        shown = [(k, MASK if k in SECRET_PARAMETERS else v) for k, v in rest]
        display = urlunsplit((scheme, parts.netloc, parts.path, urlencode(shown, safe="*"), ""))
        return cls(conninfo=clean, display=display, password_env=env)

    @property
    def name(self) -> str:
        """The database's name (the URL's path)."""
        return unquote(urlsplit(self.conninfo).path.strip("/"))

    def _password(self) -> str | None:
        if self.password_env is None:
            return None
        value = os.environ.get(self.password_env)
        if value is None:
            raise ConfigError(
                f"`store`: the environment variable `{self.password_env}` "
                f"(`{PASSWORD_ENV}` of `{self.display}`) is not set; export the "
                "database password in it."
            )
        register(value)
        return value

    def connect(self, *, autocommit: bool = True) -> Any:
        """A new ``psycopg.Connection`` (``ConfigError`` when unreachable: message
        redacted, the URL shown without a password)."""
        psycopg = driver(self.display)
        kwargs: dict[str, Any] = {"autocommit": autocommit, "connect_timeout": 10}
        password = self._password()
        if password is not None:
            kwargs["password"] = password
        try:
            conn = psycopg.connect(self.conninfo, **kwargs)
        except psycopg.Error as exc:
            raise StoreUnreachable(
                f"cannot connect to the PostgreSQL store `{self.display}`: "
                f"{driver_message(exc)} Check that the server runs and the URL, "
                "user and password are right."
            ) from exc
        self._local.connected = True
        return conn

    def connected_once(self) -> bool:
        """A connection to the database was made in this process: a later failure to
        reach it is a lost connection (``engine.store.postgres_retry``), worth waiting for."""
        return self._local.connected

    def drop_thread_conn(self) -> None:
        """Forget the calling thread's connection (closed): the next ``conn`` makes a new
        one. After a lost connection, whatever state it was in."""
        try:
            self._local.close_mine()
        except Exception:  # noqa: BLE001 - closing a dead connection may fail; it is gone
            pass

    def conn(self) -> Any:
        """This thread's connection (autocommit), made on first use and after a fork or a
        broken connection. Connections of threads that ended are closed on the way."""
        return self._local.get(self)

    def checked_conn(self) -> Any:
        """``conn``, the schema's version checked on first use in this process
        (``check_schema``: ``ConfigError`` while the database is behind the engine)."""
        conn = self._local.get(self)
        if not self._local.schema_ok:
            check_schema(self, conn)
            self._local.schema_ok = True
        return conn

    def close(self) -> None:
        """Close every connection of this process to the database (they reopen on next
        use): at shutdown, or when nothing else uses it."""
        self._local.close_all()

    def close_thread(self) -> None:
        """Close the calling thread's connection (a thread that is done with the store)."""
        self._local.close_mine()

    def track(self, conn: Any) -> None:
        """Close ``conn`` (a listening connection) with the others in ``close``."""
        self._local.track(conn)

    def listen(self, *channels: str) -> Any:
        """A new connection (closed with the others in ``close``) that ``LISTEN``s on
        ``channels`` (names of the engine's own, never input) when it returns."""
        conn = self.connect()
        self.track(conn)
        for channel in channels:
            conn.execute(f"LISTEN {channel}")
        return conn


_registry: dict[str, Database] = {}
_registry_lock = threading.Lock()


def close_databases() -> None:
    """Close every connection this process opened to any store (tests, shutdown)."""
    with _registry_lock:
        dbs = list(_registry.values())
    for db in dbs:
        db.close()


class _Connections:
    """One connection per live thread of this process; the ended threads' are closed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_thread: dict[int, tuple[threading.Thread, Any]] = {}
        self._extra: list[Any] = []
        self._pid = os.getpid()
        self.schema_ok = False  # check_schema passed (Database.checked_conn)
        self.connected = False  # a connection was made once (Database.connected_once)

    def get(self, db: Database) -> Any:
        me = threading.current_thread()
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's connections are not ours
                self._by_thread, self._extra, self._pid = {}, [], os.getpid()
            held = self._by_thread.get(id(me))
            if held is not None and held[0] is me and not held[1].closed and not held[1].broken:
                if not _ended_while_idle(held[1]):
                    return held[1]
                self._by_thread.pop(id(me), None)
                _close_quietly(held[1])
                held = None
            stale = [k for k, (t, _) in self._by_thread.items() if not t.is_alive()]
            for k in stale:
                self._by_thread.pop(k)[1].close()
        conn = db.connect()
        with self._lock:
            old = self._by_thread.get(id(me))
            self._by_thread[id(me)] = (me, conn)
        if old is not None and old[1] is not conn:
            old[1].close()
        return conn

    def track(self, conn: Any) -> None:
        with self._lock:
            self._extra = [c for c in self._extra if not c.closed] + [conn]

    def close_mine(self) -> None:
        me = threading.current_thread()
        with self._lock:
            held = self._by_thread.get(id(me))
            if held is None or held[0] is not me or self._pid != os.getpid():
                return
            del self._by_thread[id(me)]
        held[1].close()

    def close_all(self) -> None:
        with self._lock:
            if self._pid != os.getpid():
                self._by_thread, self._extra = {}, []
                return
            held = [c for _, c in self._by_thread.values()] + self._extra
            self._by_thread, self._extra = {}, []
        for conn in held:
            conn.close()


def _ended_while_idle(conn: Any) -> bool:
    """The server ended this idle connection (its socket is readable with no query out:
    the session's last words, ``terminating connection ...``, or the end of the stream).
    Such a connection is replaced before a statement is sent on it, so the statement is
    never lost with it. One ``poll`` with no wait; a connection in a transaction or
    not idle is left to its user."""
    import select

    try:
        from psycopg.pq import TransactionStatus

        if conn.info.transaction_status != TransactionStatus.IDLE:
            return False
        poller = select.poll()  # no FD_SETSIZE limit, unlike select()
        poller.register(conn.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
        ready = poller.poll(0)
    except (OSError, ValueError, AttributeError):
        return True
    except Exception:  # noqa: BLE001 - the driver's own error: the connection is unusable
        return True
    return bool(ready)


def _close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - a dead connection's close may fail; it is gone
        pass


def migrations() -> list[tuple[int, str, str]]:
    """The schema's migrations in order: ``(version, name, sql)``."""
    found = []
    for entry in resources.files("engine.store.migrations").iterdir():
        m = _MIGRATION.match(entry.name)
        if m:
            found.append((int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort()
    return found


def latest_version() -> int:
    """The schema version this engine needs (its last migration's)."""
    return migrations()[-1][0]


def schema_version(conn: Any) -> int:
    """The database's schema version (0 when it has none yet)."""
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    got = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(got[0]) if got else 0


def migrate(db: Database) -> list[int]:
    """Apply the migrations the database lacks, in order; return the versions applied.

    All of them run in one transaction: on any error nothing is changed. A database at a
    newer version than this engine's (``latest_version``) is refused as ``check_schema``
    refuses it (``ConfigError``, exit 2: upgrade the engine). A role that may
    not create tables, or tables already there while ``schema_version`` says they are
    not (its rows deleted by hand), is a ``ConfigError`` (exit 2) naming the database and
    what to do; another driver error is one as well (``driver_error``)."""
    psycopg = driver(db.display)
    try:
        return _migrate(db)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ConfigError(
            f"the PostgreSQL store `{db.display}`: its role may not create the schema's "
            f"tables ({_driver_text(exc)}); nothing was changed. Run `orchestrate store "
            "migrate` once as a role that may (the database's owner, or one granted "
            "`CREATE ON SCHEMA public`), then use this role for everything else."
        ) from exc
    except (psycopg.errors.DuplicateTable, psycopg.errors.DuplicateObject) as exc:
        with db.connect() as conn:
            have = schema_version(conn)
        raise ConfigError(
            f"the PostgreSQL store `{db.display}`: its `schema_version` table says "
            f"version {have} but the tables of a later migration are already there "
            f"({_driver_text(exc)}): `schema_version` was changed by hand. Nothing was "
            "changed. Put the missing rows back in `schema_version` (one per migration "
            "already applied: `INSERT INTO schema_version (version, name) VALUES ...`), "
            "or migrate into an empty database and import the history with `--from`."
        ) from exc
    except psycopg.Error as exc:
        raise driver_error(exc, db.display) from exc


def driver_message(exc: BaseException) -> str:
    """The driver's message for ``exc`` as one line ending in one ``.``, ``?`` or ``!``,
    known secrets masked; a message continues after it (``f"...: {driver_message(exc)}
    Check ..."``), it adds no stop of its own.

    A server's error gives its primary message (``diag.message_primary``: no ``DETAIL``,
    which may quote row values, no ``LINE 1:`` excerpt of the query); a client-side one
    (libpq: the server is down, or went away) gives its lines joined, tabs dropped: a line
    that starts in lower case goes on the sentence before it, another starts one."""
    from engine.redact import redact

    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = primary if isinstance(primary, str) and primary.strip() else str(exc)
    lines = [" ".join(line.split()) for line in text.splitlines()]
    out = ""
    for line in filter(None, lines):
        if out and not line[0].islower() and out[-1] not in ".?!:;,":
            out += "."
        out = f"{out} {line}" if out else line
    out = redact(out or type(exc).__name__)
    return out if out[-1] in ".?!" else out + "."


def _driver_text(exc: BaseException) -> str:
    """``driver_message`` for the middle of a sentence (in parentheses): no final ``.``."""
    text = driver_message(exc)
    return text[:-1] if text.endswith(".") else text


def driver_error(exc: BaseException, display: str | None = None) -> ConfigError:
    """The one-paragraph ``ConfigError`` (exit 2) for a PostgreSQL driver error that
    reached a command: the database (``display``, else every store this process opened,
    never a password), the driver's message, and what to do."""
    if display is None:
        with _registry_lock:
            shown = sorted({db.display for db in _registry.values()})
        display = ", ".join(shown) if shown else None
    where = f"the PostgreSQL store `{display}`" if display else "the PostgreSQL store"
    return ConfigError(
        f"{where} refused the command: {_driver_text(exc)} ({type(exc).__name__}). "
        "Check that the store's role may read and write its tables and that the schema "
        "is this engine's (`orchestrate store migrate`), then run again."
    )


def _migrate(db: Database) -> list[int]:
    applied: list[int] = []
    with db.connect(autocommit=False) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
            current, need = schema_version(conn), latest_version()
            if current > need:  # a newer engine's schema: nothing to apply would be a lie
                raise _newer(db, current, need)
            for version, name, sql in migrations():
                if version <= current:
                    continue
                conn.execute(sql)
                conn.execute(
                    "INSERT INTO schema_version (version, name) VALUES (%s, %s)", (version, name)
                )
                applied.append(version)
        conn.commit()
    return applied


def check_schema(db: Database, conn: Any) -> None:
    """Raise ``ConfigError`` (exit 2) unless the database is at the engine's version."""
    have, need = schema_version(conn), latest_version()
    if have == need:
        return
    if have < need:
        raise ConfigError(
            f"the PostgreSQL store `{db.display}` is at schema version {have} and this "
            f"engine needs version {need}: nothing was read or written. Apply the "
            f"migrations first: `orchestrate store migrate` (it changes only what is "
            "missing, and is safe to run on every host)."
        )
    raise _newer(db, have, need)


def _newer(db: Database, have: int, need: int) -> ConfigError:
    """The refusal of a database whose schema a newer engine wrote (``have`` > ``need``)."""
    return ConfigError(
        f"the PostgreSQL store `{db.display}` is at schema version {have}, newer than "
        f"this engine's {need}: upgrade the engine on this host before using it."
    )
