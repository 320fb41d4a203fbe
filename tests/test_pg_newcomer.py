"""What a newcomer's first hour on the PostgreSQL store runs into: each bad start is one
paragraph with exit code 2 that names what to fix, and the database is named one way.

A real PostgreSQL server (``tests/pg.py``), the real CLI (click's ``CliRunner``, or a
subprocess where the Python itself must lack something), real handoffs directories.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from engine.cli.metrics import metrics
from engine.cli.orchestrate import orchestrate
from engine.cli.workflow import workflow
from engine.config import load_config
from engine.delegate import DelegationRequest, open_delegator
from engine.pool.postgres import PostgresPoolStore
from engine.redact import redact
from engine.store.postgres_db import Database, latest_version, schema_version
from engine.store.postgres_retry import StoreConnectionLost
from tests.helpers import demo_config, free_port, write_config
from tests.pg import PgServer

ROOT = Path(__file__).resolve().parents[1]


def _one_line(got: Result) -> str:
    """The command's only output line (exit 2, no traceback)."""
    assert got.exit_code == 2, got.output
    assert "Traceback" not in got.output
    lines = got.output.strip().splitlines()
    assert len(lines) == 1, got.output
    return lines[0]


def _pg_config(tmp_path: Path, url: str, **extra: object) -> str:
    return str(write_config(tmp_path, dict(demo_config(tmp_path), store=url, **extra)))


def _version(url: str) -> int:
    with Database.from_url(url).connect() as conn:
        return schema_version(conn)


# -- 3. no driver installed ------------------------------------------------------------

#: Runs the `orchestrate` CLI in a Python that cannot import psycopg (as before the
#: `postgres` extra is installed): a meta path finder refuses the import.
_WITHOUT_DRIVER = """
import sys

class _NoDriver:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("psycopg", "psycopg_binary", "psycopg_c"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoDriver())
from engine.cli import orchestrate_main
sys.argv = ["orchestrate", *sys.argv[1:]]
orchestrate_main()
"""


def _without_driver(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_DRIVER, *args],
        capture_output=True, text=True, timeout=120, cwd=cwd, env=env,
    )  # fmt: skip


def test_migrate_without_the_driver_says_what_every_command_says(tmp_path: Path) -> None:
    url = f"postgresql://orch@127.0.0.1:{free_port()}/orch"
    cfg = _pg_config(tmp_path, url)
    got = _without_driver("store", "migrate", "--to", url, cwd=tmp_path)
    show = _without_driver("show", "orch-x", "--config", cfg, cwd=tmp_path)
    for proc in (got, show):
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == ""
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    line = got.stderr.strip()
    assert line == show.stderr.strip()
    assert line.startswith(f"error: the PostgreSQL store `{url}` needs the PostgreSQL driver")
    assert "`bash scripts/bootstrap.sh postgres`" in line
    assert "`pip install -e '.[postgres]'` in the checkout" in line
    assert "agent-orchestrator[" not in line


# -- 4. a schema newer than the engine's -------------------------------------------------


def test_migrate_refuses_a_database_a_newer_engine_migrated(pg_url: str, tmp_path: Path) -> None:
    need = latest_version()
    with Database.from_url(pg_url).connect() as conn:
        conn.execute(
            "INSERT INTO schema_version (version, name) VALUES (%s, 'from_a_newer_engine')",
            (need + 1,),
        )
    got = CliRunner().invoke(orchestrate, ["store", "migrate", "--to", pg_url])
    line = _one_line(got)
    assert line == (
        f"error: the PostgreSQL store `{pg_url}` is at schema version {need + 1}, newer than "
        f"this engine's {need}: upgrade the engine on this host before using it."
    )
    cfg = _pg_config(tmp_path, pg_url)
    show = CliRunner().invoke(orchestrate, ["show", "orch-x", "--config", cfg])
    assert _one_line(show) == line  # the same paragraph as every other command
    assert _version(pg_url) == need + 1  # nothing applied, nothing removed
    doc = (ROOT / "docs" / "scale-out.md").read_text(encoding="utf-8")
    (shown,) = [x for x in doc.splitlines() if x.startswith("error:") and "newer than" in x]
    shown = shown.replace("postgresql://orch@db.internal:5432/orch", pg_url)
    assert (
        shown.replace("version 3,", f"version {need + 1},").replace(
            "engine's 2:", f"engine's {need}:"
        )
        == line
    )  # the documented paragraph is the one printed


# -- 5. --from a directory that is not a handoffs directory -------------------------------


def _source_tree(root: Path) -> Path:
    (root / "engine").mkdir(parents=True)
    (root / "engine" / "__init__.py").write_text("", encoding="utf-8")
    (root / "workflows").mkdir()
    (root / "workflows" / "review.yaml").write_text("name: review\nsteps: {}\n", "utf-8")
    (root / "package.json").write_text(json.dumps({"name": "tool"}), encoding="utf-8")
    return root


@pytest.mark.parametrize("case", ["empty", "source-tree"])
def test_migrate_from_a_directory_that_holds_no_store_is_refused_first(
    pg_server: PgServer, tmp_path: Path, case: str
) -> None:
    url = pg_server.create_database(f"newcomer_from_{case.replace('-', '_')}")
    source = tmp_path / case
    if case == "empty":
        source.mkdir()
    else:
        _source_tree(source)
    got = CliRunner().invoke(
        orchestrate, ["store", "migrate", "--from", f"file://{source}", "--to", url]
    )
    line = _one_line(got)
    assert line.startswith(
        f"error: `--from file://{source}`: `{source}` is not a handoffs directory: it holds "
        "none of what one holds (delegation records `<run-id>.json`, `.pending/`, `inbox/`"
    )
    assert "nothing was changed. Give the `handoffs_dir`" in line
    assert _version(url) == 0  # checked before the schema was applied
    Database.from_url(url).close()


def test_migrate_from_a_real_handoffs_directory_and_from_its_parent(
    pg_server: PgServer, tmp_path: Path
) -> None:
    cfg = load_config(write_config(tmp_path, demo_config(tmp_path)))
    with open_delegator(cfg) as d:  # the file store, as a team has it before moving
        d.delegate(DelegationRequest(caller="manager", target="webster", task="one"))
    handoffs = tmp_path / "handoffs"
    url = pg_server.create_database("newcomer_from_parent")

    parent = CliRunner().invoke(
        orchestrate, ["store", "migrate", "--from", f"file://{tmp_path}", "--to", url]
    )
    line = _one_line(parent)
    assert f"`{tmp_path}` is not a handoffs directory" in line
    assert line.endswith(f"`{handoffs}` is one: `--from file://{handoffs}`.")
    assert _version(url) == 0

    # Its history gone (records and handoffs removed), the directory the engine made is
    # still a handoffs directory: it imports nothing, without an error.
    for path in sorted(handoffs.rglob("*.json")):
        path.unlink()
    assert (handoffs / ".pending").is_dir() and (handoffs / "inbox").is_dir()
    got = CliRunner().invoke(
        orchestrate, ["store", "migrate", "--from", f"file://{handoffs}", "--to", url]
    )
    assert got.exit_code == 0, got.output
    assert got.output.strip().splitlines()[-1] == (
        f"imported from {handoffs}: 0 records, 0 pending, 0 handoffs, 0 runs (0 events, 0 steps)"
    )
    assert _version(url) == latest_version()
    Database.from_url(url).close()


# -- 6. ORCH_RUN_LEASE_TTL -----------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "0", "-3", "nan", "inf", "0.5", "1e9"])
def test_a_bad_run_lease_ttl_is_one_paragraph(pg_url: str, tmp_path: Path, value: str) -> None:
    cfg = _pg_config(tmp_path, pg_url)
    got = CliRunner().invoke(workflow, ["runs", "--config", cfg], env={"ORCH_RUN_LEASE_TTL": value})
    assert _one_line(got) == (
        f"error: the environment variable `ORCH_RUN_LEASE_TTL` is `{value}`; it must be a "
        "number of seconds from 1 to 86400 (how long a workflow run's executor lease lasts "
        "without renewal; it is renewed every third of that). Unset it for the default, 30 s."
    )


@pytest.mark.parametrize(("value", "ttl"), [("1.5", 1.5), ("86400", 86400.0), (" ", 30.0)])
def test_a_good_run_lease_ttl_is_taken(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, ttl: float
) -> None:
    from engine.store import open_store

    cfg = _pg_config(tmp_path, pg_url)
    got = CliRunner().invoke(workflow, ["runs", "--config", cfg], env={"ORCH_RUN_LEASE_TTL": value})
    assert got.exit_code == 0, got.output
    assert got.output.strip() == "no workflow runs yet."
    monkeypatch.setenv("ORCH_RUN_LEASE_TTL", value)
    assert open_store(load_config(cfg)).lease_ttl == ttl  # type: ignore[attr-defined]


# -- 7. show, tree and workflow status name the database alike ----------------------------


def test_show_tree_and_status_name_the_database_alike(pg_url: str, tmp_path: Path) -> None:
    cfg = _pg_config(tmp_path, pg_url)
    lines = [
        _one_line(CliRunner().invoke(orchestrate, ["show", "orch-nope", "--config", cfg])),
        _one_line(CliRunner().invoke(orchestrate, ["tree", "orch-nope", "--config", cfg])),
        _one_line(CliRunner().invoke(workflow, ["status", "wf-nope", "--config", cfg])),
    ]
    assert lines[0].startswith(f"error: no record for `orch-nope` in `{pg_url}`.")
    assert lines[1] == f"error: no delegation `orch-nope` in `{pg_url}`."
    assert lines[2].startswith(f"error: no workflow run `wf-nope` in `{pg_url}`")
    assert not any(str(tmp_path) in line or "***" in line for line in lines)


# -- 8. the driver's message on one line ---------------------------------------------------


class _Relay:
    """A TCP relay on 127.0.0.1 to the test server: ``cut()`` closes every connection
    through it, as a server that went away does; with ``close_at_once`` it closes each
    connection as soon as it is accepted (a server that dies while it is reached)."""

    def __init__(self, port: int, *, close_at_once: bool = False) -> None:
        self._target = port
        self._close_at_once = close_at_once
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self._close_at_once:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self._target))
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        try:  # wakes the accepting thread: a close alone leaves the socket listening
            self._server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._server.close()
        self.cut()


@pytest.fixture
def relay(pg_server: PgServer) -> Iterator[_Relay]:
    r = _Relay(pg_server.port)
    yield r
    r.close()


def _assert_one_sentence_each(line: str) -> None:
    assert "\t" not in line and "\n" not in line and "  " not in line
    for doubled in ("?.", "..", "!.", ". ."):
        assert doubled not in line, line


def test_a_refused_connection_is_one_line(tmp_path: Path) -> None:
    url = f"postgresql://orch@127.0.0.1:{free_port()}/orch"
    got = CliRunner().invoke(orchestrate, ["show", "orch-x", "--config", _pg_config(tmp_path, url)])
    line = _one_line(got)
    assert line.startswith(f"error: cannot connect to the PostgreSQL store `{url}`: ")
    assert "Connection refused" in line
    assert line.endswith("Check that the server runs and the URL, user and password are right.")
    _assert_one_sentence_each(line)


def test_a_server_that_closes_at_once_is_one_line(pg_url: str, tmp_path: Path) -> None:
    r = _Relay(free_port(), close_at_once=True)
    try:
        url = f"postgresql://postgres@127.0.0.1:{r.port}/{pg_url.rsplit('/', 1)[1]}"
        got = CliRunner().invoke(
            orchestrate, ["show", "orch-x", "--config", _pg_config(tmp_path, url)]
        )
    finally:
        r.close()
    line = _one_line(got)
    assert "server closed the connection unexpectedly" in line
    _assert_one_sentence_each(line)


def test_a_pool_whose_server_went_away_says_so_on_one_line(
    pg_url: str, relay: _Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{relay.port}/{pg_url.rsplit('/', 1)[1]}"
    store = PostgresPoolStore(Database.from_url(url))
    assert store.transact(lambda state: ("ok", None)) == "ok"
    relay.cut()  # the connection is lost, the server is still there: a new one is made
    assert store.transact(lambda state: ("again", None)) == "again"
    relay.close()  # now the server stays away
    monkeypatch.setenv("ORCH_STORE_RECONNECT", "0.3")
    with pytest.raises(StoreConnectionLost) as info:
        store.transact(lambda state: ("ok", None))
    text = str(info.value)
    assert text.startswith(f"the connection to the PostgreSQL store `{url}` was lost (")
    assert "Connection refused" in text and "run again" not in text
    _assert_one_sentence_each(text)
    Database.from_url(url).close()


# -- 9. the user name shown, one rule ----------------------------------------------------------


def test_every_command_shows_the_store_url_with_its_user(pg_url: str, tmp_path: Path) -> None:
    cfg = _pg_config(tmp_path, pg_url, pool={"enabled": True, "max_tokens": 2, "adaptive": False})
    text = CliRunner().invoke(metrics, ["text", "--config", cfg])
    assert text.exit_code == 0, text.output
    assert text.output.splitlines()[0] == f"Metrics of {pg_url}"
    doc = CliRunner().invoke(metrics, ["json", "--config", cfg])
    assert json.loads(doc.output)["handoffs_dir"] == pg_url
    pool = CliRunner().invoke(orchestrate, ["pool", "status", "--config", cfg])
    assert pool.output.splitlines()[0] == f"pool     {pg_url}#pool=default"
    migrated = CliRunner().invoke(orchestrate, ["store", "migrate", "--config", cfg])
    assert (
        migrated.output.strip() == f"{pg_url}: schema version {latest_version()}, nothing to apply"
    )
    assert "postgres@" in pg_url  # the user is there to be shown


def test_suggested_urls_can_be_typed(tmp_path: Path) -> None:
    got = CliRunner().invoke(orchestrate, ["store", "migrate", "--to", f"file://{tmp_path}"])
    line = _one_line(got)
    assert "give `--to postgresql://user@host:5432/db`" in line
    assert "***" not in line


def test_a_password_or_a_secret_parameter_is_never_shown(pg_url: str) -> None:
    assert redact("postgresql://orch:s3cret-pw@db:5432/orch") == "postgresql://***@db:5432/orch"
    db = Database.from_url(f"{pg_url}?sslpassword=k3y-passphrase&application_name=nc")
    assert db.display == f"{pg_url}?sslpassword=***&application_name=nc"
    assert "k3y-passphrase" not in redact(f"failed: k3y-passphrase {db.conninfo}")


# -- 10. tests/pg.py without pytest ---------------------------------------------------------

_WITHOUT_PYTEST = """
import runpy, sys

class _NoPytest:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pytest", "_pytest"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoPytest())
runpy.run_module("tests.pg", run_name="__main__", alter_sys=True)
"""


def test_tests_pg_starts_a_server_without_pytest() -> None:
    # Not under pytest's temp root: as root, the server runs as `nobody` (tests/pg.py).
    parent = Path(tempfile.mkdtemp(prefix="pg-nopytest-"))
    parent.chmod(0o755)
    proc = subprocess.Popen(
        [sys.executable, "-c", _WITHOUT_PYTEST, str(parent / "pg")],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline()  # printed once the server is up; stdin is at its end
        assert url.startswith("postgresql://postgres@127.0.0.1:"), url
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert not (parent / "pg").exists()  # stopped and removed on SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        shutil.rmtree(parent, ignore_errors=True)


# -- 11. install instructions --------------------------------------------------------------------


def test_no_doc_or_message_says_to_install_a_package_of_that_name_from_pypi() -> None:
    said = [
        f"{path.relative_to(ROOT)}"
        for base in ("docs", "engine")
        for path in sorted((ROOT / base).rglob("*"))
        if path.suffix in (".md", ".py")
        and "pip install 'agent-orchestrator" in path.read_text(encoding="utf-8")
    ]
    assert said == []
    assert "postgres" in (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert '"$root[$extras]"' in (ROOT / "scripts" / "bootstrap.sh").read_text(encoding="utf-8")
