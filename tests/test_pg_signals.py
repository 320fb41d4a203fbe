"""Run events and cancel requests travel by ``NOTIFY`` between processes.

A real PostgreSQL server (``tests/pg.py``). One process executes a workflow run (``workflow
run``, a step whose agent works until the test lets it go); the test process follows the
run's events by ``LISTEN`` and cancels it with ``workflow cancel``, a third process. The
server logs every statement of the test's database, so the test counts what the executor
asked: while it waits, it does not read the run's cancel request again and again; after
the cancel's ``NOTIFY`` it reads it once and ends the run ``cancelled``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from engine.store.postgres import PostgresRunStore
from engine.store.postgres_db import Database
from engine.store.postgres_signals import RUN_CHANNEL
from tests.helpers import demo_config, gated_agent, write_config
from tests.pg import PgServer

SLOW = Path(__file__).parent / "workflows" / "run" / "slow.yaml"
CANCEL_QUERY = "SELECT cancel_requested_at IS NOT NULL FROM runs"
RENEWAL = "UPDATE runs SET lease_until"


def _cli(name: str) -> str:
    return str(Path(sys.executable).parent / name)


class RunFeed:
    """The test's own ``LISTEN orch_run``: every payload, in order, as they arrive."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute(f"LISTEN {RUN_CHANNEL}")
        self.payloads: list[str] = []
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            for note in self.conn.notifies(timeout=0.5):
                with self.cond:
                    self.payloads.append(note.payload)
                    self.cond.notify_all()

    def wait_for(self, test: Callable[[list[str]], Any], timeout: float = 60) -> Any:
        with self.cond:
            found = self.cond.wait_for(lambda: test(self.payloads), timeout)
        assert found, self.payloads
        return found

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.conn.close()


@pytest.fixture
def logged_url(pg_url: str, pg_server: PgServer) -> Iterator[tuple[str, Path]]:
    """``pg_url`` with every statement on it written to the server's log (and the log)."""
    name = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" SET log_statement = \'all\'')
    yield pg_url, pg_server.root / "log"


def _wait_in_log(log: Path, start: int, test: Callable[[str], bool], timeout: float) -> str:
    """The log's text after byte ``start`` once ``test`` accepts it (looks at the file)."""
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_bytes()[start:].decode(errors="replace")
        if test(text):
            return text
        assert time.monotonic() < deadline, text[-3000:]
        time.sleep(0.05)  # the server appends to the file: look again


def test_a_cancel_from_another_process_wakes_the_executor_without_polling(
    logged_url: tuple[str, Path], tmp_path: Path
) -> None:
    url, log = logged_url
    go = tmp_path / "go"
    raw = demo_config(tmp_path)
    raw["store"] = url
    raw["gateway"]["agents"]["webster"] = gated_agent(go)
    cfg = write_config(tmp_path, raw)
    env = {"ORCH_RUN_LEASE_TTL": "1.5"}  # renewed every 0.5 s: the log's clock below
    feed = RunFeed(url)
    executor = subprocess.Popen(
        [_cli("workflow"), "run", str(SLOW), "--config", str(cfg), "--json", "-q",
         "--non-interactive"],
        env={**os.environ, **env}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        store = PostgresRunStore(Database.from_url(url))

        def dispatched(payloads: list[str]) -> str | None:
            for p in payloads:
                if p.startswith("e:"):
                    run_id = p[2:]
                    kinds = [e.get("event") for _, e in store.events(run_id)]
                    if "step_dispatched" in kinds:
                        return run_id
            return None

        # run events reach another process by NOTIFY: the test wakes on them
        run_id = feed.wait_for(dispatched)
        assert all(p in (f"e:{run_id}",) for p in feed.payloads)
        # while the step works, the executor's loop looks for a cancel every 0.2 s; over
        # three lease renewals (about 1 s) it asks the database not once
        start = log.stat().st_size
        quiet = _wait_in_log(log, start, lambda t: t.count(RENEWAL) >= 3, 60)
        assert quiet.count(CANCEL_QUERY) == 0, quiet[-3000:]

        before = log.stat().st_size
        cancel = subprocess.run(
            [_cli("workflow"), "cancel", run_id, "--config", str(cfg)],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert cancel.returncode == 0, cancel.stderr
        assert feed.wait_for(lambda ps: f"c:{run_id}" in ps)
        out, err = executor.communicate(timeout=60)
        assert executor.returncode == 1, err
        assert json.loads(out).get("status") == "cancelled", out[:500]
        summary = store.read_summary(run_id)
        assert summary is not None and summary["status"] == "cancelled"
        kinds = [e.get("event") for _, e in store.events(run_id)]
        assert "run_cancelled" in kinds
        # after the NOTIFY the executor read the request from the database: once
        after = log.read_bytes()[before:].decode(errors="replace")
        assert after.count(CANCEL_QUERY) == 1, after[-3000:]
    finally:
        go.touch()
        if executor.poll() is None:
            executor.kill()
            executor.communicate(timeout=30)
        feed.close()


def test_watch_run_wakes_on_events_and_cancels_written_elsewhere(pg_url: str) -> None:
    writer = PostgresRunStore(Database.from_url(pg_url))
    follower = PostgresRunStore(Database.from_url(pg_url))
    writer.create_run("r-watch-1", {"workflow": "w"})
    waiter = follower.watch_run("r-watch-1")
    try:
        assert waiter.wait(0) is False
        writer.journal("r-watch-1").append("step_started", step="a")
        assert waiter.wait(10) is True
        assert [e["event"] for _, e in follower.events("r-watch-1")] == ["step_started"]
        assert waiter.wait(0) is False
        writer.request_cancel("r-watch-1")
        assert waiter.wait(10) is True
        assert follower.cancel_requested("r-watch-1") is True
    finally:
        waiter.close()
