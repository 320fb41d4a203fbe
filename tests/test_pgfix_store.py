"""The PostgreSQL store's trial fixes: a local handoff file survives a connection lost
while it is imported, and is stored once; a malformed ``store:`` URL or one holding a
password is one clear paragraph.

A real PostgreSQL server (``tests/pg.py``). The lost connection is made deterministic:
the test holds the advisory lock every handoff insert of the run takes, waits until the
importer's backend waits on it, ends that backend (``pg_terminate_backend``: the
``57P01`` a ``pg_ctl stop -m fast`` sends), then lets go of the lock.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from engine.cli.orchestrate import orchestrate
from engine.files import new_run_id
from engine.handoff import key_hash, make_handoff, new_key, write_handoff
from engine.store.postgres import PostgresRunStore
from engine.store.postgres_db import Database
from tests.helpers import demo_config, write_config


def _envelope(key: str) -> dict[str, Any]:
    return {"caller": "manager", "target": "webster", "outcome": "dispatched",
            "key_sha256": key_hash(key), "pid": os.getpid()}  # fmt: skip


def _rows(url: str, run_id: str) -> list[tuple[int, str]]:
    with psycopg.connect(Database.from_url(url).conninfo, autocommit=True) as conn:
        return [(int(n), str(state)) for n, state in conn.execute(
            "SELECT n, state FROM handoffs WHERE run_id = %s ORDER BY n", (run_id,)
        )]  # fmt: skip


def _waiting_backend(conn: psycopg.Connection[Any], deadline: float) -> int:
    """The pid of the backend that waits on an advisory lock (the importer's); ``conn``
    in autocommit (a transaction would see one snapshot of ``pg_stat_activity``)."""
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
        ).fetchone()
        if row is not None:
            return int(row[0])
        time.sleep(0.01)  # polling the server's own view: there is no event for it
    raise AssertionError("the importer never waited on the handoff lock")


def test_a_handoff_imported_while_the_connection_is_lost_is_kept(
    pg_url: str, tmp_path: Path
) -> None:
    store = PostgresRunStore(Database.from_url(pg_url), local=tmp_path / "private")
    run_id, key = new_run_id(), new_key()
    env = _envelope(key)
    store.pending(run_id, env, sub=False)
    target = store.handoff_target(run_id, sub=False)
    handoff = make_handoff(run_id=run_id, agent="webster", status="complete",
                           result="0.05 ppm/K", key=key)  # fmt: skip
    write_handoff(target, handoff, replace=False)

    got: list[Any] = []

    def look() -> None:
        try:
            got.append(store.has_handoff(run_id, sub=False))
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            got.append(exc)
        finally:
            store.close()

    holder = psycopg.connect(Database.from_url(pg_url).conninfo, autocommit=False)
    try:
        holder.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("put:" + run_id,))
        waiter = threading.Thread(target=look)
        waiter.start()
        with psycopg.connect(Database.from_url(pg_url).conninfo, autocommit=True) as watch:
            pid = _waiting_backend(watch, time.monotonic() + 30)
            ended = watch.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
        assert ended == (True,)
        holder.commit()  # the lock let go: the importer's retry may go through
        waiter.join(60)
        assert not waiter.is_alive()
    finally:
        holder.close()
    assert got == [True]
    assert _rows(pg_url, run_id) == [(1, "inbox")]
    assert not target.exists()  # moved once stored, and marked for the gateway
    imported = target.parent / ".imported"
    assert (imported / f"{run_id}.json").exists()
    done = store.deliver(run_id, sub=False, envelope=env)
    assert done.state == "recorded" and done.record is not None
    assert done.record["result"] == "0.05 ppm/K"


def test_the_same_file_imported_twice_is_one_handoff(pg_url: str, tmp_path: Path) -> None:
    """A file stored whose move did not happen (the connection lost after the commit, or
    the process ended) is found again by the next look: it is not stored a second time.
    Another file with other bytes still is."""
    store = PostgresRunStore(Database.from_url(pg_url), local=tmp_path / "private")
    run_id, key = new_run_id(), new_key()
    env = _envelope(key)
    store.pending(run_id, env, sub=False)
    target = store.handoff_target(run_id, sub=False)
    handoff = make_handoff(run_id=run_id, agent="webster", status="complete",
                           result="0.05 ppm/K", key=key)  # fmt: skip
    write_handoff(target, handoff, replace=False)
    kept = tmp_path / "copy.json"
    shutil.copyfile(target, kept)
    assert store.has_handoff(run_id, sub=False) is True
    assert _rows(pg_url, run_id) == [(1, "inbox")]
    shutil.copyfile(kept, target)  # as if the first import had not moved it
    assert store.has_handoff(run_id, sub=False) is True
    assert _rows(pg_url, run_id) == [(1, "inbox")]
    assert not target.exists()
    second = make_handoff(run_id=run_id, agent="webster", status="failed",
                          result="another", key=key)  # fmt: skip
    write_handoff(target, second, replace=False)
    assert store.has_handoff(run_id, sub=False) is True
    assert _rows(pg_url, run_id) == [(1, "inbox"), (2, "inbox")]
    store.close()


# -- the store's URL: one paragraph, never a traceback ----------------------------------


def _config_with_store(tmp_path: Path, store: str) -> Path:
    raw = demo_config(tmp_path)
    raw["store"] = store
    return write_config(tmp_path, raw)


@pytest.mark.parametrize(
    "store",
    ["postgresql://orch@[::1:5432/postgres", "postgres://orch:pw77zz@[::1/postgres"],
    ids=["port-in-bracket", "unclosed-with-password"],
)
def test_a_malformed_ipv6_store_is_one_config_problem(tmp_path: Path, store: str) -> None:
    cfg = _config_with_store(tmp_path, store)
    got = CliRunner().invoke(orchestrate, ["pool", "status", "--config", str(cfg)])
    assert got.exit_code == 2, got.output
    assert "Traceback" not in got.output and "pw77zz" not in got.output
    assert got.output.strip().splitlines()[-1] == (
        "  - `store` is not a valid URL (Invalid IPv6 URL); write "
        "`postgresql://user@host:5432/db`."
    )
    as_json = CliRunner().invoke(orchestrate, ["pool", "status", "--json", "--config", str(cfg)])
    assert as_json.exit_code == 2
    error = json.loads(as_json.stdout)
    assert error["exit_code"] == 2
    assert error["problems"] == [
        "`store` is not a valid URL (Invalid IPv6 URL); write `postgresql://user@host:5432/db`."
    ]


def test_migrate_to_a_malformed_ipv6_url_is_one_paragraph() -> None:
    got = CliRunner().invoke(
        orchestrate, ["store", "migrate", "--to", "postgresql://orch@[::1/postgres"]
    )
    assert got.exit_code == 2, got.output
    assert got.output.strip() == (
        "error: `--to` is not a valid URL (Invalid IPv6 URL); write "
        "`postgresql://user@host:5432/db`."
    )


def test_a_password_in_the_query_is_named_not_quoted(tmp_path: Path) -> None:
    cfg = _config_with_store(tmp_path, "postgresql://orch@db:5432/orch?password=XYZ")
    got = CliRunner().invoke(orchestrate, ["pool", "status", "--config", str(cfg)])
    assert got.exit_code == 2, got.output
    line = got.output.strip().splitlines()[-1]
    assert line == (
        "  - `store`: the PostgreSQL URL holds a password (its query parameter `password`); "
        "put it in an environment variable and name it: "
        "`postgresql://user@host:5432/db?password_env=ORCH_DB_PASSWORD` (or set PGPASSWORD)."
    )
    assert "XYZ" not in got.output and "***" not in got.output


def test_a_timeout_on_the_database_store_says_the_late_handoff_goes_to_the_store(
    pg_url: str, tmp_path: Path
) -> None:
    from engine.config import load_config
    from engine.delegate import DelegationRequest, Outcome, open_delegator

    cfg = load_config(_config_with_store(tmp_path, pg_url))
    with open_delegator(cfg) as d:
        result = d.delegate(DelegationRequest(
            caller="manager", target="webster", task="DEMO_SLEEP=3", timeout=0.5
        ))  # fmt: skip
    assert result.outcome is Outcome.TIMEOUT
    error = result.record["envelope"]["error"]
    display = Database.from_url(pg_url).display
    assert error == (
        "no handoff from `webster` within 0.5 s; a handoff that arrives later is still "
        f"recorded (marked late) in the store `{display}`"
    )
    assert str(tmp_path) not in error
