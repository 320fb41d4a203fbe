"""The contract every Pool backend passes: one test class, parametrized over backends.

A backend is a factory of ``TokenPool`` objects sharing one store: every pool the factory
makes in a test sees the same tokens and queue (as processes on a host share a pool
directory, or hosts share a database). A new backend joins by adding one factory to
``BACKENDS``; if its pools can be opened from another process, ``child`` says how, and
the process tests run for it too.

Nothing is mocked: the file backend takes real locks, writes real files and wakes waiters
through real inotify; time and load are injected where a rule depends on them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.errors import AcquireCancelledError, DelegationTimeoutError, PoolRefusedError
from engine.lease import Lease, Pool
from engine.pool import MemoryStore, PoolSettings, TokenPool


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Loads:
    """A load source the test sets."""

    def __init__(self, value: float = 2.5) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


@dataclass
class Backend:
    """Makes pools over one shared store; ``child`` builds the same pool in a subprocess
    (Python source defining ``pool``), or is None for an in-process store."""

    name: str
    make: Callable[..., TokenPool]
    child: Callable[[dict[str, Any]], str] | None = None


def _file_backend(tmp_path: Path) -> Backend:
    pool_dir = tmp_path / "pool"

    def make(**kw: Any) -> TokenPool:
        opts = {k: kw.pop(k) for k in list(kw) if k in _POOL_KWARGS}
        opts.setdefault("renew_every", None)
        kw.setdefault("adaptive", False)
        return TokenPool(PoolSettings(dir=pool_dir, **kw), **opts)

    def child(settings: dict[str, Any]) -> str:
        return (
            "from pathlib import Path\n"
            "from engine.pool import PoolSettings, TokenPool\n"
            f"pool = TokenPool(PoolSettings(dir=Path({str(pool_dir)!r}), **{settings!r}))\n"
        )

    return Backend("file", make, child)


def _memory_backend(tmp_path: Path) -> Backend:
    store = MemoryStore("contract", shared=True)

    def make(**kw: Any) -> TokenPool:
        opts = {k: kw.pop(k) for k in list(kw) if k in _POOL_KWARGS}
        opts.setdefault("renew_every", None)
        kw.setdefault("adaptive", False)
        return TokenPool(PoolSettings(dir=tmp_path / "unused", **kw), store=store, **opts)

    return Backend("memory", make)


def _postgres_backend(tmp_path: Path, url: str) -> Backend:
    from engine.pool.postgres import PostgresPoolStore
    from engine.store.postgres_db import Database

    def make(**kw: Any) -> TokenPool:
        opts = {k: kw.pop(k) for k in list(kw) if k in _POOL_KWARGS}
        opts.setdefault("renew_every", None)
        kw.setdefault("adaptive", False)
        store = PostgresPoolStore(Database.from_url(url))
        return TokenPool(PoolSettings(dir=tmp_path / "unused", **kw), store=store, **opts)

    def child(settings: dict[str, Any]) -> str:
        return (
            "from pathlib import Path\n"
            "from engine.pool import PoolSettings, TokenPool\n"
            "from engine.pool.postgres import PostgresPoolStore\n"
            "from engine.store.postgres_db import Database\n"
            f"store = PostgresPoolStore(Database.from_url({url!r}))\n"
            f"pool = TokenPool(PoolSettings(dir=Path('unused'), **{settings!r}), store=store)\n"
        )

    return Backend("postgres", make, child)


_POOL_KWARGS = {"clock", "load_source", "pid", "host", "renew_every", "monotonic"}

#: One factory per backend.
BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "file": _file_backend,
    "memory": _memory_backend,
}
#: Backends over a database: made from the URL of a fresh, migrated one.
DB_BACKENDS: dict[str, Callable[[Path, str], Backend]] = {"postgres": _postgres_backend}


@pytest.fixture(params=sorted(BACKENDS) + sorted(DB_BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    made: list[TokenPool] = []
    if request.param in DB_BACKENDS:
        factory = DB_BACKENDS[request.param](tmp_path, request.getfixturevalue("pg_url"))
    else:
        factory = BACKENDS[request.param](tmp_path)

    def make(**kw: Any) -> TokenPool:
        pool = factory.make(**kw)
        made.append(pool)
        return pool

    yield Backend(factory.name, make, factory.child)
    for pool in made:
        pool.close()


def wait_until(pool: TokenPool, cond: Callable[[], bool], what: str, limit: float = 60) -> None:
    """Wait for ``cond`` by sleeping on the store's change feed (bounded by ``limit``);
    a store without a feed (no inotify) is polled."""
    feed = pool.store.changes()
    deadline = time.monotonic() + limit
    while True:
        seen = feed.generation() if feed is not None else 0
        if cond():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        if feed is not None:
            feed.wait(seen, 0.5)
        else:
            time.sleep(0.01)


def queued(pool: Pool) -> list[str]:
    return [w["run_id"] for w in pool.status()["queue"]]


def held(pool: Pool) -> list[str]:
    return [t["run_id"] for t in pool.status()["in_use"]]


def dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


class Waiters:
    """Threads that each wait for a token, in the order started, and record the grants."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.granted: list[str] = []
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []
        self._guard = threading.Lock()

    def start(
        self,
        run_id: str,
        *,
        agent: str = "a",
        timeout: float = 60,
        cancel: threading.Event | None = None,
    ) -> None:
        def run() -> None:
            try:
                lease = self.pool.acquire(
                    run_id=run_id, agent=agent, timeout=timeout, cancel=cancel
                )
            except Exception as exc:  # asserted through `errors`
                with self._guard:
                    self.errors.append(exc)
                return
            with self._guard:
                self.granted.append(lease.run_id)
            lease.release()

        thread = threading.Thread(target=run, daemon=True)
        self.threads.append(thread)
        thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(60)
            assert not thread.is_alive()


class TestPoolContract:
    """What the delegator relies on, whichever store keeps the pool."""

    def test_a_pool_and_its_leases_are_the_protocols(self, backend: Backend) -> None:
        pool: Pool = backend.make(max_tokens=2)
        lease: Lease = pool.acquire(run_id="r", agent="a", timeout=0)
        assert (lease.run_id, lease.agent, lease.released) == ("r", "a", False)
        assert lease.waited_s == 0.0
        lease.release()
        assert (lease.released, lease.reclaimed_reason) == (True, None)

    def test_waiters_are_served_first_come_first_served(self, backend: Backend) -> None:
        pool = backend.make(max_tokens=1)
        gate = pool.acquire(run_id="gate", agent="a", timeout=0)
        waiters = Waiters(pool)
        names = [f"w{i}" for i in range(4)]
        for i, name in enumerate(names):
            waiters.start(name)
            wait_until(pool, lambda n=i + 1: len(queued(pool)) == n, f"{name} to queue")
        assert queued(pool) == names
        late = backend.make(max_tokens=1)  # another user of the same pool
        with pytest.raises(DelegationTimeoutError):
            late.acquire(run_id="newcomer", agent="a", timeout=0)  # never overtakes
        gate.release()
        waiters.join()
        assert waiters.granted == names
        assert waiters.errors == []
        assert held(pool) == [] and queued(pool) == []

    def test_threads_never_exceed_max_tokens(self, backend: Backend) -> None:
        pools = [backend.make(max_tokens=3) for _ in range(2)]
        guard = threading.Lock()
        in_flight, peak, done = [0], [0], [0]

        def work(pool: TokenPool, name: str) -> None:
            for i in range(15):
                with pool.acquire(run_id=f"{name}-{i}", agent="a", timeout=120):
                    with guard:
                        in_flight[0] += 1
                        peak[0] = max(peak[0], in_flight[0])
                    time.sleep(0)  # let the others run while the token is held
                    with guard:
                        in_flight[0] -= 1
            with guard:
                done[0] += 1

        threads = [
            threading.Thread(target=work, args=(pools[i % 2], f"t{i}"), daemon=True)
            for i in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert done[0] == 8
        assert 1 <= peak[0] <= 3
        assert held(pools[0]) == [] and queued(pools[0]) == []

    def test_processes_never_exceed_max_tokens(self, backend: Backend, tmp_path: Path) -> None:
        if backend.child is None:
            pytest.skip(f"the {backend.name} store is not shared between processes")
        log = tmp_path / "holding.log"
        script = backend.child({"max_tokens": 2, "adaptive": False}) + (
            "import os, sys\n"
            f"log = os.open({str(log)!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT)\n"
            "for i in range(12):\n"
            "    with pool.acquire(run_id=f'{os.getpid()}-{i}', agent='w', timeout=120):\n"
            "        os.write(log, b'+\\n')\n"
            "        os.sched_yield()\n"
            "        os.write(log, b'-\\n')\n"
        )
        procs = [
            subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
            for _ in range(5)
        ]
        for proc in procs:
            _out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        level, peak = 0, 0
        marks = log.read_text().split()
        for mark in marks:
            level += 1 if mark == "+" else -1
            peak = max(peak, level)
        assert len(marks) == 5 * 12 * 2
        assert (level, 1 <= peak <= 2) == (0, True)
        assert held(backend.make(max_tokens=2)) == []

    def test_per_agent_limit_holds_back_only_that_agent(self, backend: Backend) -> None:
        pool = backend.make(max_tokens=3)
        first = pool.acquire(run_id="a1", agent="auditor", timeout=0, max_concurrent=1)
        with pytest.raises(DelegationTimeoutError):
            pool.acquire(run_id="a2", agent="auditor", timeout=0, max_concurrent=1)
        other = pool.acquire(run_id="w1", agent="webster", timeout=0, max_concurrent=1)
        assert held(pool) == ["a1", "w1"]
        first.release()
        again = pool.acquire(run_id="a3", agent="auditor", timeout=0, max_concurrent=1)
        assert held(pool) == ["w1", "a3"]
        other.release()
        again.release()

    def test_a_saturated_agent_keeps_its_place_without_blocking_others(
        self, backend: Backend
    ) -> None:
        pool = backend.make(max_tokens=2)
        audit = pool.acquire(run_id="a1", agent="auditor", timeout=0, max_concurrent=1)
        filler = pool.acquire(run_id="f", agent="other", timeout=0)
        waiters = Waiters(pool)

        def start(run_id: str, agent: str, n: int) -> None:
            box: dict[str, Any] = {}

            def run() -> None:
                lease = pool.acquire(run_id=run_id, agent=agent, timeout=60, max_concurrent=1)
                with waiters._guard:
                    waiters.granted.append(run_id)
                box["lease"] = lease

            thread = threading.Thread(target=run, daemon=True)
            waiters.threads.append(thread)
            thread.start()
            wait_until(pool, lambda: len(queued(pool)) == n, f"{run_id} to queue")
            leases.append(box)

        leases: list[dict[str, Any]] = []
        start("a2", "auditor", 1)
        start("w1", "webster", 2)
        filler.release()  # one token free: the auditor is saturated, webster is served
        wait_until(pool, lambda: "w1" in held(pool), "webster's grant")
        assert queued(pool) == ["a2"]
        audit.release()  # the auditor's waiter is served now
        waiters.join()
        assert sorted(waiters.granted) == ["a2", "w1"]  # the order: asserted above
        for box in leases:
            box["lease"].release()
        assert held(pool) == []

    def test_release_is_idempotent_and_a_context_manager(self, backend: Backend) -> None:
        pool = backend.make(max_tokens=1)
        with pool.acquire(run_id="r", agent="a", timeout=0) as lease:
            assert held(pool) == ["r"]
        assert lease.released
        lease.release()
        lease.release()
        assert lease.reclaimed_reason is None
        again = pool.acquire(run_id="s", agent="a", timeout=0)  # exactly one token came back
        with pytest.raises(DelegationTimeoutError):
            pool.acquire(run_id="t", agent="a", timeout=0)
        again.release()

    def test_a_dead_holder_is_reclaimed_at_once(self, backend: Backend) -> None:
        gone = backend.make(max_tokens=1, pid=dead_pid())
        orphan = gone.acquire(run_id="orphan", agent="a", timeout=0)
        pool = backend.make(max_tokens=1)
        lease = pool.acquire(run_id="next", agent="a", timeout=0)
        assert held(pool) == ["next"]
        (rec,) = pool.status()["reclaimed"]
        assert (rec["run_id"], rec["reason"]) == ("orphan", "dead")
        orphan.release()
        assert orphan.reclaimed_reason == "dead"
        lease.release()

    def test_a_live_holder_on_this_host_needs_no_renewal(self, backend: Backend) -> None:
        clock = FakeClock()
        pool = backend.make(max_tokens=1, clock=clock, lease_ttl=10, token_timeout=300)
        lease = pool.acquire(run_id="r", agent="a", timeout=0, hold_for=100)
        clock.advance(150)  # far past the TTL, inside the deadline
        assert held(pool) == ["r"]
        lease.release()
        assert lease.reclaimed_reason is None

    def test_another_hosts_holder_keeps_its_token_while_it_renews(self, backend: Backend) -> None:
        clock = FakeClock()
        there = backend.make(max_tokens=1, clock=clock, lease_ttl=10, host="host-a")
        here = backend.make(max_tokens=1, clock=clock, lease_ttl=10, host="host-b")
        lease = there.acquire(run_id="remote", agent="a", timeout=0, hold_for=100)
        clock.advance(8)
        assert lease.renew() is True
        clock.advance(8)  # 16 s since the grant, 8 s since the renewal
        with pytest.raises(DelegationTimeoutError):
            here.acquire(run_id="local", agent="a", timeout=0)
        clock.advance(3)  # 11 s without a renewal: more than lease_ttl
        mine = here.acquire(run_id="local", agent="a", timeout=0)
        assert lease.renew() is False
        lease.release()
        assert lease.reclaimed_reason == "expired"
        (rec,) = here.status()["reclaimed"]
        assert (rec["run_id"], rec["reason"], rec["held_s"]) == ("remote", "expired", 19.0)
        mine.release()

    def test_a_lease_renews_itself_when_asked_to(self, backend: Backend) -> None:
        clock = FakeClock()
        there = backend.make(
            max_tokens=1, clock=clock, lease_ttl=10, host="host-a", renew_every=0.01
        )
        here = backend.make(max_tokens=1, clock=clock, lease_ttl=10, host="host-b")
        lease = there.acquire(run_id="remote", agent="a", timeout=0, hold_for=100)
        for _ in range(3):
            clock.advance(9)
            # The holder's heartbeat records the new time (a store change).
            wait_until(here, lambda: _renewed_at(here) == clock.now, "a renewal")
        with pytest.raises(DelegationTimeoutError):
            here.acquire(run_id="local", agent="a", timeout=0)
        lease.release()
        assert lease.reclaimed_reason is None
        assert lease.renew() is False  # released: nothing to renew

    def test_a_cancelled_waiter_leaves_the_queue_and_the_next_is_served(
        self, backend: Backend
    ) -> None:
        pool = backend.make(max_tokens=1)
        gate = pool.acquire(run_id="gate", agent="a", timeout=0)
        waiters = Waiters(pool)
        stop = threading.Event()
        waiters.start("w0", timeout=600, cancel=stop)
        wait_until(pool, lambda: queued(pool) == ["w0"], "w0 to queue")
        waiters.start("w1", timeout=600)
        wait_until(pool, lambda: queued(pool) == ["w0", "w1"], "w1 to queue")
        stop.set()  # Ctrl-C or `workflow cancel` while w0 waits: not its 600 s timeout
        wait_until(pool, lambda: queued(pool) == ["w1"], "w0 to leave the queue")
        gate.release()
        waiters.join()
        assert waiters.granted == ["w1"]
        assert [type(e) for e in waiters.errors] == [AcquireCancelledError]
        assert "`w0`" in str(waiters.errors[0]) and "cancelled" in str(waiters.errors[0])
        assert held(pool) == [] and queued(pool) == []

    def test_a_full_queue_refuses_at_once(self, backend: Backend) -> None:
        pool = backend.make(max_tokens=1, queue_limit=1)
        gate = pool.acquire(run_id="gate", agent="a", timeout=0)
        waiters = Waiters(pool)
        waiters.start("w0")
        wait_until(pool, lambda: queued(pool) == ["w0"], "w0 to queue")
        t0 = time.monotonic()
        with pytest.raises(PoolRefusedError) as info:
            pool.acquire(run_id="late", agent="webster", timeout=60)
        assert time.monotonic() - t0 < 30
        assert info.value.exit_code == 5
        assert "the wait queue is full (1 requests waiting, `pool.queue_limit` is 1)" in str(
            info.value
        )
        gate.release()
        waiters.join()
        assert waiters.granted == ["w0"] and queued(pool) == []

    def test_emergency_grants_nothing_until_the_cooldown_ends(self, backend: Backend) -> None:
        clock, load = FakeClock(), Loads(6.0)
        pool = backend.make(
            max_tokens=4,
            adaptive=True,
            emergency_load=5.0,
            cooldown=30,
            sample_interval=0,
            clock=clock,
            load_source=load,
        )
        with pytest.raises(DelegationTimeoutError) as info:
            pool.acquire(run_id="r", agent="a", timeout=0)
        assert "its cooldown ends in 30 s" in str(info.value)
        status = pool.status()
        assert (status["mode"], status["size"]) == ("emergency", 1)
        load.value = 2.5
        clock.advance(29)
        with pytest.raises(DelegationTimeoutError):
            pool.acquire(run_id="r", agent="a", timeout=0)
        clock.advance(2)
        lease = pool.acquire(run_id="r", agent="a", timeout=0)
        status = pool.status()
        assert (status["mode"], status["size"], held(pool)) == ("normal", 1, ["r"])
        lease.release()

    def test_the_size_adapts_with_hysteresis(self, backend: Backend) -> None:
        clock, load = FakeClock(), Loads(4.0)
        pool = backend.make(
            min_tokens=1,
            max_tokens=3,
            adaptive=True,
            load_low=2.0,
            load_high=3.0,
            hysteresis=3,
            sample_interval=5,
            clock=clock,
            load_source=load,
        )

        def touch() -> int:
            clock.advance(5)
            pool.acquire(run_id="r", agent="a", timeout=0).release()  # one sample
            return int(pool.status()["size"])

        assert [touch(), touch(), touch()] == [3, 3, 2]  # two high samples change nothing
        load.value = 2.5
        assert touch() == 2  # in between: resets the streak
        load.value = 4.0
        pool.note_overload()  # a 429 counts as high
        assert [touch(), touch()] == [2, 1]
        assert touch() == 1  # never below min_tokens
        load.value = 1.0
        assert [touch(), touch(), touch(), touch(), touch(), touch()] == [1, 1, 2, 2, 2, 3]
        assert [touch() for _ in range(3)] == [3, 3, 3]  # never above max_tokens

    def test_on_a_shared_store_each_host_adapts_its_own_share(self, backend: Backend) -> None:
        clock = FakeClock()
        common: dict[str, Any] = dict(
            min_tokens=1,
            max_tokens=4,
            adaptive=True,
            load_low=1.0,
            load_high=3.0,
            emergency_load=50.0,
            hysteresis=1,
            sample_interval=5,
            clock=clock,
        )
        busy = backend.make(load_source=Loads(6.0), host="busy-host", **common)
        if not busy.store.shared:
            pytest.skip(f"the {backend.name} store is kept by one host")
        idle = backend.make(load_source=Loads(0.2), host="idle-host", **common)
        for _ in range(3):
            clock.advance(5)
            busy.acquire(run_id="b", agent="a", timeout=0).release()  # one sample each
            idle.acquire(run_id="i", agent="a", timeout=0).release()
        status = busy.status()
        assert (status["size"], idle.status()["size"], status["max_tokens"]) == (1, 4, 4)
        assert [(h["host"], h["size"]) for h in status["hosts"]] == [
            ("busy-host", 1),
            ("idle-host", 4),
        ]
        first = busy.acquire(run_id="b1", agent="a", timeout=0)
        waiters = Waiters(busy)  # queued first, held back by its host's share of 1
        waiters.start("b2")
        wait_until(busy, lambda: queued(busy) == ["b2"], "the busy host's waiter")
        with pytest.raises(DelegationTimeoutError, match="1 of this host's share of 1"):
            busy.acquire(run_id="b3", agent="a", timeout=0)
        # The idle host is served past the waiter, up to max_tokens for all hosts together.
        leases = [idle.acquire(run_id=f"i{n}", agent="a", timeout=0) for n in range(3)]
        with pytest.raises(DelegationTimeoutError, match="4 of 4 tokens in use on all hosts"):
            idle.acquire(run_id="i3", agent="a", timeout=0)
        assert sorted(held(idle)) == ["b1", "i0", "i1", "i2"] and queued(idle) == ["b2"]
        leases[0].release()  # a free token, but the busy host is still at its share
        assert queued(idle) == ["b2"]
        first.release()
        waiters.join()
        assert waiters.granted == ["b2"] and waiters.errors == []
        for lease in leases[1:]:
            lease.release()

    def test_status_of_an_unused_pool_creates_nothing(self, backend: Backend) -> None:
        pool = backend.make(max_tokens=2)
        status = pool.status()
        assert (status["size"], status["in_use"], status["queue"]) == (2, [], [])


def _renewed_at(pool: TokenPool) -> float | None:
    data = json.loads(pool.store.peek() or b"{}")
    tokens = data.get("tokens") or [{}]
    value = tokens[0].get("renewed_at")
    return float(value) if value is not None else None


def test_the_documented_protocols_are_the_protocols() -> None:
    """docs/architecture.md shows the Pool and Lease protocols with their real members."""
    import ast
    import re

    from engine import lease

    doc = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", doc, flags=re.S) if "Pool(" in b]
    tree = ast.parse("from typing import Any, Protocol\n" + block)
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            shown = {
                n.name if isinstance(n, ast.FunctionDef) else ast.unparse(n.target)
                for n in node.body
                if isinstance(n, ast.FunctionDef | ast.AnnAssign)
            }
            real = {
                name
                for name in vars(getattr(lease, node.name))
                if not name.startswith("_") or name in ("__enter__", "__exit__")
            }
            assert shown == real - {"__enter__", "__exit__"}, node.name
