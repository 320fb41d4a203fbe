"""The pool's fast paths keep its promises: real processes, real files, a real PostgreSQL.

The file store writes over one kept spare file and swaps it in; a holder killed at any
moment of that leaves a complete state. Waiters are woken only by a grant. A holder's
liveness comes from a kept pidfd after the first look in ``/proc``. The PostgreSQL store
changes its row by compare-and-swap, runs the rules again on a lost race, and takes the
row lock after four lost races.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg

from engine.pool import STATE_NAME, PoolSettings, TokenPool
from engine.pool.host import pid_alive, start_time
from engine.pool.postgres import PostgresPoolStore
from engine.pool.store import WAKE_NAME, FileStore
from engine.store.postgres_db import Database
from tests.helpers import wait_for

CHURN = r"""
import sys
from pathlib import Path
from engine.pool import PoolSettings, TokenPool

pool = TokenPool(PoolSettings(dir=Path(sys.argv[1]), max_tokens=2, adaptive=False))
i = 0
while True:
    with pool.acquire(run_id=f"churn-{i}", agent="a", timeout=60):
        pass
    i += 1
"""


def pool_at(pool_dir: Path, **kw: Any) -> TokenPool:
    kw.setdefault("max_tokens", 1)
    return TokenPool(PoolSettings(dir=pool_dir, adaptive=False, **kw))


# -- the file store's writes --------------------------------------------------------------


def test_writes_swap_the_state_with_one_kept_spare(tmp_path: Path) -> None:
    pool_dir = tmp_path / "pool"
    pool = pool_at(pool_dir, max_tokens=2)
    state = pool_dir / STATE_NAME
    inodes = set()
    versions = []
    for i in range(6):
        with pool.acquire(run_id=f"r{i}", agent="a", timeout=0):
            inodes.add(state.stat().st_ino)
            versions.append(state.read_bytes())
        inodes.add(state.stat().st_ino)
    assert len(inodes) == 2  # two files, used in turn: no file created per write
    spare = pool_dir / ".state.tmp"
    assert json.loads(spare.read_bytes())["tokens"][0]["run_id"] == "r5"  # the last but one
    assert spare.read_bytes() == versions[-1]
    assert json.loads(state.read_bytes())["tokens"] == []
    assert sorted(p.name for p in pool_dir.iterdir()) == [".state.tmp", "lock", "state.json"]
    pool.close()


def test_kill_9_in_the_middle_of_writes_never_tears_the_state(tmp_path: Path) -> None:
    pool_dir = tmp_path / "pool"
    script = tmp_path / "churn.py"
    script.write_text(CHURN, encoding="utf-8")
    state = pool_dir / STATE_NAME
    pool = pool_at(pool_dir, max_tokens=2)
    for _ in range(8):
        before = state.stat().st_mtime_ns if state.exists() else 0
        child = subprocess.Popen([sys.executable, str(script), str(pool_dir)])
        try:
            # Killed while it writes as fast as it can: somewhere in a write, or between.
            wait_for(lambda b=before: state.exists() and state.stat().st_mtime_ns != b,
                     "the churning process to write")  # fmt: skip
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.kill()
            child.wait()
        json.loads(state.read_bytes())  # complete: one version or the other
        status = pool.status()
        assert status["repairs"] == 0, status
        assert status["in_use"] == [] and status["queue"] == []  # its token reclaimed
    with pool.acquire(run_id="after", agent="a", timeout=0):
        assert [t["run_id"] for t in pool.status()["in_use"]] == ["after"]
    pool.close()


# -- waking the waiters ---------------------------------------------------------------------


def test_only_a_grant_wakes_the_waiters(tmp_path: Path) -> None:
    pool_dir = tmp_path / "pool"
    pool = pool_at(pool_dir)
    wake = pool_dir / WAKE_NAME
    for i in range(3):  # no waiter: changes without a grant to anyone waiting
        pool.acquire(run_id=f"alone-{i}", agent="a", timeout=0).release()
    assert not wake.exists()
    holder = pool.acquire(run_id="holder", agent="a", timeout=0)
    other = pool_at(pool_dir)
    got: list[str] = []
    waiter = threading.Thread(
        target=lambda: got.append(other.acquire(run_id="waiter", agent="a", timeout=60).run_id)
    )
    waiter.start()
    wait_for(lambda: [w["run_id"] for w in pool.status()["queue"]] == ["waiter"], "the queue")
    assert not wake.exists()  # queueing granted nothing
    holder.release()  # grants the waiter's ticket
    waiter.join(60)
    assert got == ["waiter"]
    assert wake.exists()
    assert [t["run_id"] for t in pool.status()["in_use"]] == ["waiter"]
    pool.close()
    other.close()


def test_a_step_that_says_nothing_of_waking_wakes_at_every_write(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "pool")
    assert store.transact(lambda raw: ("kept", None)) == "kept"  # no write: nobody woken
    assert not (tmp_path / "pool" / WAKE_NAME).exists()
    assert store.transact(lambda raw: ("written", b"{}")) == "written"  # the older form
    assert (tmp_path / "pool" / WAKE_NAME).exists()
    assert store.peek() == b"{}"
    store.close()


def test_a_waiter_in_another_process_is_woken_by_the_grant(tmp_path: Path) -> None:
    pool_dir = tmp_path / "pool"
    pool = pool_at(pool_dir)
    holder = pool.acquire(run_id="holder", agent="a", timeout=0)
    code = (
        "import sys; from pathlib import Path; from engine.pool import PoolSettings, TokenPool\n"
        "p = TokenPool(PoolSettings(dir=Path(sys.argv[1]), max_tokens=1, adaptive=False))\n"
        "lease = p.acquire(run_id='far', agent='a', timeout=60)\n"
        "print(lease.run_id, round(lease.waited_s, 3), flush=True)\n"
        "lease.release()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(pool_dir)], stdout=subprocess.PIPE,
                             text=True)  # fmt: skip
    try:
        wait_for(lambda: [w["run_id"] for w in pool.status()["queue"]] == ["far"], "the queue")
        holder.release()
        out, _ = child.communicate(timeout=60)
    finally:
        child.kill()
        child.wait()
    name, waited = out.split()
    assert name == "far" and float(waited) > 0
    status = pool.status()
    assert status["in_use"] == [] and status["queue"] == []
    pool.close()


# -- liveness ---------------------------------------------------------------------------------


def test_liveness_follows_the_process_not_its_pid() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)  # fmt: skip
    try:
        start = start_time(child.pid)
        assert start is not None
        assert pid_alive(child.pid, start) and pid_alive(child.pid, start)  # then its pidfd
        assert not pid_alive(child.pid, start + 1)  # another process that had this PID
        os.kill(child.pid, signal.SIGKILL)
        # Dead as soon as it has exited, though not reaped yet (a zombie).
        wait_for(lambda: not pid_alive(child.pid, start), "the kill to be seen")
        assert os.waitpid(child.pid, os.WNOHANG) != (0, 0)  # it was a zombie until now
        assert not pid_alive(child.pid, start)
    finally:
        child.kill()
        child.wait()
        assert child.stdin is not None
        child.stdin.close()


def test_liveness_answers_the_same_in_a_forked_child() -> None:
    target = os.getppid()
    start = start_time(target)
    assert pid_alive(target, start)  # known (and its pidfd kept) before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        answers = [pid_alive(target, start), pid_alive(target, start)]
        os.write(write, b"1" if all(answers) else b"0")
        os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.close(read)
    os.waitpid(pid, 0)


# -- PostgreSQL: compare and swap -------------------------------------------------------------


def _row(url: str) -> bytes:
    with Database.from_url(url).connect() as conn:
        row = conn.execute("SELECT state FROM pool_state WHERE name = 'default'").fetchone()
    return bytes(row[0]) if row else b""


def _write_row(url: str, data: bytes) -> None:
    with Database.from_url(url).connect() as conn:
        conn.execute("UPDATE pool_state SET state = %s WHERE name = 'default'", (data,))


def test_a_lost_race_runs_the_rules_again_on_the_new_row(pg_url: str) -> None:
    store = PostgresPoolStore(Database.from_url(pg_url))
    store.transact(lambda raw: (None, b"v1", False))
    seen: list[bytes] = []

    def step(raw: bytes) -> tuple[str, bytes | None, bool]:
        seen.append(raw)
        if len(seen) == 1:
            _write_row(pg_url, b"v1+other")  # another host wrote after our read
        return "done", raw + b"+mine", False

    assert store.transact(step) == "done"
    assert seen == [b"v1", b"v1+other"]
    assert _row(pg_url) == b"v1+other+mine"  # nothing the other host wrote is lost
    store.close()


def test_a_note_left_in_the_host_lock_is_only_a_hint(pg_url: str, tmp_path: Path) -> None:
    store = PostgresPoolStore(Database.from_url(pg_url), lock_dir=tmp_path / ".pool")
    assert store.lock_path is not None and store.lock_path.parent == tmp_path / ".pool"
    store.transact(lambda raw: (None, b"v1", False))
    store.lock_path.write_bytes(b"torn garbage")  # a holder killed while it wrote the note
    seen: list[bytes] = []

    def step(raw: bytes) -> tuple[None, bytes | None, bool]:
        seen.append(raw)
        return None, None, False  # a look that changes nothing

    store.transact(step)
    assert seen == [b"torn garbage", b"v1"]  # the row, not the note, decided
    assert store.lock_path.read_bytes() == b"v1"
    store.close()


def test_after_four_lost_races_the_row_is_locked(pg_url: str) -> None:
    store = PostgresPoolStore(Database.from_url(pg_url))
    store.transact(lambda raw: (None, b"0", False))
    calls: list[bytes] = []
    blocked: list[str] = []

    def step(raw: bytes) -> tuple[int, bytes | None, bool]:
        calls.append(raw)
        if len(calls) <= 4:
            _write_row(pg_url, b"%d" % (int(raw) + 10))  # every optimistic try loses
        else:  # the fifth run holds the row lock: another writer cannot get in
            with Database.from_url(pg_url).connect() as conn:
                conn.execute("SET lock_timeout = '200ms'")
                try:
                    conn.execute("UPDATE pool_state SET state = 'x' WHERE name = 'default'")
                except psycopg.errors.LockNotAvailable:
                    blocked.append("locked")
        return len(calls), b"%d" % (int(raw) + 1), True

    assert store.transact(step) == 5
    assert blocked == ["locked"]
    assert _row(pg_url) == b"41"  # 0, four lost races (+10 each), then ours (+1)
    store.close()


def test_a_pool_over_postgresql_wakes_its_waiter_on_the_grant(pg_url: str) -> None:
    def make() -> TokenPool:
        settings = PoolSettings(dir=Path("unused"), max_tokens=1, adaptive=False)
        return TokenPool(settings, store=PostgresPoolStore(Database.from_url(pg_url)))

    pool, other = make(), make()
    holder = pool.acquire(run_id="holder", agent="a", timeout=0)
    got: list[str] = []
    waiter = threading.Thread(
        target=lambda: got.append(other.acquire(run_id="waiter", agent="a", timeout=60).run_id)
    )
    waiter.start()
    wait_for(lambda: [w["run_id"] for w in pool.status()["queue"]] == ["waiter"], "the queue")
    holder.release()
    waiter.join(60)
    assert got == ["waiter"]
    assert [t["run_id"] for t in pool.status()["in_use"]] == ["waiter"]
    pool.close()
    other.close()


def test_a_pool_over_postgresql_keeps_its_host_lock_in_its_pool_dir(
    pg_url: str, tmp_path: Path
) -> None:
    """Nothing is written outside the handoffs directory: the host lock is in pool.dir."""
    pool_dir = tmp_path / "handoffs" / ".pool"
    settings = PoolSettings(dir=pool_dir, max_tokens=2, adaptive=False, store=pg_url)
    pool = TokenPool(settings)
    pool.acquire(run_id="one", agent="a", timeout=0).release()
    pool.close()
    names = [p.name for p in pool_dir.iterdir()]
    assert len(names) == 1 and names[0].startswith("postgresql-"), names
    assert names[0].endswith(".lock")
