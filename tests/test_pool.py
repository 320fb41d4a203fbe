"""The host-wide token pool: real processes, real files, real flock.

Load sources and clocks are injected where a test needs them to be deterministic; the pool
itself is never mocked.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.config import Config
from engine.errors import ConfigError, DelegationTimeoutError, PoolRefusedError
from engine.pool import LOCK_NAME, STATE_NAME, PoolSettings, TokenPool, format_status

WORKER = r"""
import json, sys, time, urllib.request
from pathlib import Path
from engine.pool import PoolSettings, TokenPool

args = json.loads(sys.argv[1])
settings = PoolSettings(
    dir=Path(args["dir"]), max_tokens=args["size"], adaptive=False,
    queue_limit=args.get("queue_limit", 50),
)
pool = TokenPool(settings, wake=args.get("wake", "auto"))
mode = args["mode"]
if mode == "contend":
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for i in range(args["n"]):
        with pool.acquire(run_id=f"{args['name']}-{i}", agent="w", timeout=120):
            opener.open(args["url"], timeout=30).read()
elif mode == "hold":
    lease = pool.acquire(run_id=args["name"], agent="w", timeout=60)
    print("held", flush=True)
    time.sleep(600)
elif mode == "once":
    lease = pool.acquire(run_id=args["name"], agent="w", timeout=args.get("timeout", 60))
    with open(args["order"], "a") as fh:
        fh.write(args["name"] + "\n")
    time.sleep(args.get("hold", 0.0))
    lease.release()
"""


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Loads:
    """A load source fed from a list; counts how often it was asked."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.values.pop(0) if len(self.values) > 1 else self.values[0]


def wait_for(cond: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def pool_dir(tmp_path: Path) -> Path:
    return tmp_path / "pool"


def make_pool(pool_dir: Path, **kw: Any) -> TokenPool:
    extra = {k: kw.pop(k) for k in ("load_source", "clock", "pid") if k in kw}
    extra.setdefault("load_source", Loads(2.5))  # between the thresholds: never the host's
    kw.setdefault("adaptive", False)
    return TokenPool(PoolSettings(dir=pool_dir, **kw), **extra)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start pool worker processes; every one is killed and reaped at teardown."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER, encoding="utf-8")
    procs: list[subprocess.Popen[str]] = []

    def start(**args: Any) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, str(script), json.dumps(args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


class _CountingGateway(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CountingHandler)
        self.guard = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.total = 0


class _CountingHandler(http.server.BaseHTTPRequestHandler):
    server: _CountingGateway

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        srv = self.server
        with srv.guard:
            srv.in_flight += 1
            srv.total += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
        time.sleep(0.005)
        with srv.guard:
            srv.in_flight -= 1
        body = b'{"ok":true}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def gateway() -> Iterator[_CountingGateway]:
    """A tiny local gateway that counts tasks in flight."""
    server = _CountingGateway()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


# -- concurrency across processes -------------------------------------------------------


@pytest.mark.parametrize("wake", ["auto", "poll"])
def test_twenty_processes_never_exceed_the_pool_size(
    pool_dir: Path,
    spawn: Callable[..., subprocess.Popen[str]],
    gateway: _CountingGateway,
    wake: str,
) -> None:
    size = 3
    url = f"http://127.0.0.1:{gateway.server_address[1]}/task"
    procs = [
        spawn(mode="contend", dir=str(pool_dir), size=size, n=5, name=f"p{i}", url=url, wake=wake)
        for i in range(20)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=300)  # twenty Python starts on a busy host
        assert proc.returncode == 0, err
    assert gateway.total == 100
    assert 1 <= gateway.max_in_flight <= size
    status = make_pool(pool_dir, max_tokens=size).status()
    assert status["in_use"] == []
    assert status["queue"] == []
    assert status["reclaimed"] == []


def test_kill_9_holders_are_reclaimed_and_nothing_stays_held(
    pool_dir: Path, spawn: Callable[..., subprocess.Popen[str]], tmp_path: Path
) -> None:
    holders = [spawn(mode="hold", dir=str(pool_dir), size=2, name=f"h{i}") for i in range(2)]
    for proc in holders:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "held"
    pool = make_pool(pool_dir, max_tokens=2)
    assert sorted(t["run_id"] for t in pool.status()["in_use"]) == ["h0", "h1"]
    order = tmp_path / "order.txt"
    waiter = spawn(mode="once", dir=str(pool_dir), size=2, name="w", order=str(order))
    wait_for(lambda: len(pool.status()["queue"]) == 1, what="the waiter to queue")
    for proc in holders:
        os.kill(proc.pid, signal.SIGKILL)  # not reaped yet: zombies must count as dead
    _out, err = waiter.communicate(timeout=120)
    assert waiter.returncode == 0, err
    assert order.read_text() == "w\n"
    status = pool.status()
    assert status["in_use"] == [] and status["queue"] == []
    dead = sorted((r["run_id"], r["reason"]) for r in pool.reclaimed())
    assert dead == [("h0", "dead"), ("h1", "dead")]


def test_a_killed_waiter_leaves_the_queue(
    pool_dir: Path, spawn: Callable[..., subprocess.Popen[str]], tmp_path: Path
) -> None:
    pool = make_pool(pool_dir, max_tokens=1)
    lease = pool.acquire(run_id="mine", agent="a", timeout=0)
    waiter = spawn(mode="once", dir=str(pool_dir), size=1, name="w", order=str(tmp_path / "o"))
    wait_for(lambda: len(pool.status()["queue"]) == 1, what="the waiter to queue")
    text = format_status(pool.status()).splitlines()
    held = text.index("tokens in use:")
    assert text[held + 1].split() == ["RUN", "ID", "AGENT", "PID", "AGE"]
    assert text[held + 2].split()[:3] == ["mine", "a", str(os.getpid())]
    queued = text.index("waiting (first come, first served):")
    assert text[queued + 1].split() == ["RUN", "ID", "AGENT", "PID", "WAITED"]
    assert text[queued + 2].split()[:3] == ["w", "w", str(waiter.pid)]
    waiter.kill()
    waiter.wait()
    lease.release()
    status = pool.status()
    assert status["in_use"] == [] and status["queue"] == []
    with pool.acquire(run_id="next", agent="a", timeout=0) as again:
        assert again.run_id == "next"


def test_waiters_are_served_first_come_first_served_across_processes(
    pool_dir: Path, spawn: Callable[..., subprocess.Popen[str]], tmp_path: Path
) -> None:
    pool = make_pool(pool_dir, max_tokens=1)
    lease = pool.acquire(run_id="gate", agent="a", timeout=0)
    order = tmp_path / "order.txt"
    names = [f"w{i}" for i in range(5)]
    procs = []
    for i, name in enumerate(names):
        procs.append(
            spawn(mode="once", dir=str(pool_dir), size=1, name=name, order=str(order), hold=0.01)
        )
        wait_for(lambda n=i + 1: len(pool.status()["queue"]) == n, what=f"{name} to queue")
    assert [w["run_id"] for w in pool.status()["queue"]] == names
    lease.release()
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert order.read_text().split() == names
    assert pool.status()["in_use"] == []


# -- queue limit, timeouts, per-agent limits ----------------------------------------------


def _waiter_threads(pool: TokenPool, n: int, **kw: Any) -> tuple[list[threading.Thread], list[Any]]:
    results: list[Any] = []

    def run(i: int) -> None:
        try:
            lease = pool.acquire(run_id=f"t{i}", timeout=60, **kw)
        except Exception as exc:  # reported through `results`, asserted by the test
            results.append(exc)
        else:
            results.append(lease.run_id)
            lease.release()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return threads, results


def test_a_full_queue_refuses_at_once(pool_dir: Path) -> None:
    pool = make_pool(pool_dir, max_tokens=1, queue_limit=2)
    lease = pool.acquire(run_id="holder", agent="a", timeout=0)
    threads, results = _waiter_threads(pool, 2, agent="a")
    wait_for(lambda: len(pool.status()["queue"]) == 2, what="two waiters")
    t0 = time.monotonic()
    with pytest.raises(PoolRefusedError) as info:
        pool.acquire(run_id="late", agent="webster", timeout=60)
    assert time.monotonic() - t0 < 30  # refused at once, not after waiting out its timeout
    assert info.value.exit_code == 5
    assert str(info.value) == (
        "token pool refused run `late` (agent `webster`): the wait queue is full (2 requests "
        "waiting, `pool.queue_limit` is 2). Try again later, or raise `pool.queue_limit` or "
        "`pool.max_tokens`."
    )
    lease.release()
    for t in threads:
        t.join(60)
    assert sorted(results) == ["t0", "t1"]
    assert pool.status()["queue"] == []


def test_queue_limit_zero_means_nobody_waits(pool_dir: Path) -> None:
    pool = make_pool(pool_dir, max_tokens=1, queue_limit=0)
    with pool.acquire(run_id="holder", agent="a", timeout=0):
        with pytest.raises(PoolRefusedError, match="`pool.queue_limit` is 0"):
            pool.acquire(run_id="late", agent="a", timeout=5)
    with pool.acquire(run_id="free-again", agent="a", timeout=0):
        pass


def test_no_token_within_timeout_raises_and_leaves_no_ticket(pool_dir: Path) -> None:
    pool = make_pool(pool_dir, max_tokens=1)
    with pool.acquire(run_id="holder", agent="a", timeout=0):
        t0 = time.monotonic()
        with pytest.raises(DelegationTimeoutError) as info:
            pool.acquire(run_id="slow", agent="a", timeout=0.1)
        assert time.monotonic() - t0 >= 0.1
        assert info.value.exit_code == 4
        assert "no pool token for run `slow` (agent `a`) within 0.1 s: 1 of 1 tokens" in str(
            info.value
        )
        assert pool.status()["queue"] == []


def test_per_agent_limit_does_not_block_other_agents(pool_dir: Path) -> None:
    pool = make_pool(pool_dir, max_tokens=3)
    first = pool.acquire(run_id="a1", agent="auditor", timeout=0, max_concurrent=1)
    threads, results = _waiter_threads(pool, 1, agent="auditor", max_concurrent=1)
    wait_for(lambda: len(pool.status()["queue"]) == 1, what="the auditor waiter")
    # Queued later, but its agent has room: served at once instead of waiting behind.
    with pool.acquire(run_id="b1", agent="webster", timeout=0) as other:
        assert other.waited_s == 0.0
        assert [w["agent"] for w in pool.status()["queue"]] == ["auditor"]
    first.release()
    threads[0].join(60)
    assert results == ["t0"]
    assert pool.status()["in_use"] == []


def test_lease_is_a_context_manager_and_release_is_idempotent(pool_dir: Path) -> None:
    pool = make_pool(pool_dir, max_tokens=1)
    with pool.acquire(run_id="r1", agent="a", timeout=0) as lease:
        assert (lease.run_id, lease.agent, lease.pid) == ("r1", "a", os.getpid())
        assert pool.status()["in_use"][0]["run_id"] == "r1"
    lease.release()
    lease.release()
    assert lease.released and lease.reclaimed_reason is None
    assert pool.status()["in_use"] == []


def test_threads_of_one_process_share_the_limit(pool_dir: Path) -> None:
    pool = make_pool(pool_dir, max_tokens=2)
    guard = threading.Lock()
    inside = [0, 0]  # current, max

    def work(i: int) -> None:
        for j in range(5):
            with pool.acquire(run_id=f"t{i}-{j}", agent="a", timeout=60):
                with guard:
                    inside[0] += 1
                    inside[1] = max(inside[1], inside[0])
                time.sleep(0.002)
                with guard:
                    inside[0] -= 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert 1 <= inside[1] <= 2
    assert pool.status()["in_use"] == []


def test_disabled_pool_grants_everything_and_touches_no_file(pool_dir: Path) -> None:
    pool = make_pool(pool_dir, max_tokens=1, enabled=False)
    leases = [pool.acquire(run_id=f"r{i}", agent="a", timeout=0) for i in range(3)]
    for lease in leases:
        lease.release()
    assert not pool_dir.exists()
    assert pool.status()["enabled"] is False


# -- adaptive sizing --------------------------------------------------------------------


def test_three_high_samples_shrink_two_do_not(pool_dir: Path) -> None:
    pool = make_pool(pool_dir, adaptive=True, load_source=Loads(4.0))
    assert pool.status()["size"] == 5
    pool.sample()
    pool.sample()
    assert pool.status()["size"] == 5
    assert pool.status()["streak"] == {"low": 0, "high": 2}
    pool.sample()
    assert pool.status()["size"] == 4


def test_three_low_samples_grow_within_bounds(pool_dir: Path) -> None:
    pool = make_pool(pool_dir, adaptive=True, min_tokens=2, max_tokens=4)
    for _ in range(3 * 5):
        pool.sample(3.5)
    assert pool.status()["size"] == 2  # never below min_tokens
    for load in (1.0, 1.0):
        pool.sample(load)
    assert pool.status()["size"] == 2
    pool.sample(1.0)
    assert pool.status()["size"] == 3
    for _ in range(3 * 5):
        pool.sample(0.5)
    assert pool.status()["size"] == 4  # never above max_tokens


def test_a_sample_between_thresholds_resets_the_streak(pool_dir: Path) -> None:
    pool = make_pool(pool_dir, adaptive=True)
    for load in (3.5, 3.5, 2.5, 3.5, 3.5):
        pool.sample(load)
    assert pool.status()["size"] == 5
    pool.sample(3.5)
    assert pool.status()["size"] == 4
    assert [s["load"] for s in pool.status()["samples"]][-3:] == [3.5, 3.5, 3.5]


def test_gateway_overload_counts_as_a_high_sample(pool_dir: Path) -> None:
    pool = make_pool(pool_dir, adaptive=True)
    pool.note_overload()
    pool.note_overload()
    assert pool.status()["size"] == 5
    pool.note_overload()
    status = pool.status()
    assert status["size"] == 4
    assert status["samples"][-1]["source"] == "overload"
    assert "429/503" in format_status(status)


def test_a_smaller_size_holds_back_grants_until_tokens_come_back(pool_dir: Path) -> None:
    pool = make_pool(pool_dir, adaptive=True, max_tokens=2)
    a = pool.acquire(run_id="a", agent="x", timeout=0)
    b = pool.acquire(run_id="b", agent="x", timeout=0)
    for _ in range(3):
        pool.sample(4.0)
    a.release()
    assert pool.status()["size"] == 1
    with pytest.raises(DelegationTimeoutError):
        pool.acquire(run_id="c", agent="x", timeout=0)
    b.release()
    pool.acquire(run_id="c", agent="x", timeout=0).release()


def test_automatic_sampling_at_most_once_per_interval(pool_dir: Path) -> None:
    clock, loads = FakeClock(), Loads(1.0)
    pool = make_pool(pool_dir, adaptive=True, clock=clock, load_source=loads, sample_interval=5)
    for i in range(4):
        pool.acquire(run_id=f"r{i}", agent="a", timeout=0).release()
    assert loads.calls == 1
    # Another process sharing the directory honours the same interval.
    other = make_pool(pool_dir, adaptive=True, clock=clock, load_source=loads, sample_interval=5)
    other.acquire(run_id="o", agent="a", timeout=0).release()
    assert loads.calls == 1
    clock.advance(5)
    other.acquire(run_id="o2", agent="a", timeout=0).release()
    assert loads.calls == 2


def test_a_failing_load_source_is_ignored(pool_dir: Path) -> None:
    def broken() -> float:
        raise OSError("no loadavg here")

    pool = make_pool(pool_dir, adaptive=True, load_source=broken)
    pool.acquire(run_id="r", agent="a", timeout=0).release()
    assert pool.sample() is None
    assert pool.status()["samples"] == []


def test_fixed_size_when_not_adaptive(pool_dir: Path) -> None:
    pool = make_pool(pool_dir, adaptive=False, max_tokens=3)
    assert pool.sample(10.0) is None
    pool.note_overload()
    status = pool.status()
    assert (status["size"], status["mode"], status["samples"]) == (3, "normal", [])


# -- emergency mode -----------------------------------------------------------------------


def test_emergency_shrinks_to_minimum_and_grants_nothing_during_cooldown(
    pool_dir: Path,
) -> None:
    clock = FakeClock()
    pool = make_pool(pool_dir, adaptive=True, clock=clock, cooldown=30, emergency_load=5.0)
    held = pool.acquire(run_id="before", agent="a", timeout=0)
    pool.sample(5.5)
    status = pool.status()
    assert (status["mode"], status["size"]) == ("emergency", 1)
    assert status["cooldown_until"] == clock.now + 30
    assert [t["run_id"] for t in status["in_use"]] == ["before"]  # never revoked
    held.release()
    with pytest.raises(DelegationTimeoutError, match="its cooldown ends in 30 s"):
        pool.acquire(run_id="during", agent="a", timeout=0)
    clock.advance(29.9)
    with pytest.raises(DelegationTimeoutError):
        pool.acquire(run_id="during", agent="a", timeout=0)
    clock.advance(0.2)
    with pool.acquire(run_id="after", agent="a", timeout=0):
        status = pool.status()
        assert (status["mode"], status["size"]) == ("normal", 1)


def test_a_waiter_is_served_when_the_cooldown_ends(pool_dir: Path) -> None:
    clock = FakeClock()
    pool = make_pool(pool_dir, adaptive=True, clock=clock, cooldown=30)
    pool.sample(9.0)
    threads, results = _waiter_threads(pool, 1, agent="a")
    wait_for(lambda: len(pool.status()["queue"]) == 1, what="the waiter")
    assert pool.status()["in_use"] == [] and results == []  # still cooling down
    clock.advance(31)
    threads[0].join(60)
    assert results == ["t0"]


def test_high_load_during_cooldown_extends_it(pool_dir: Path) -> None:
    clock = FakeClock()
    pool = make_pool(pool_dir, adaptive=True, clock=clock, cooldown=30)
    pool.sample(6.0)
    clock.advance(20)
    pool.sample(6.0)
    clock.advance(20)
    assert pool.status()["mode"] == "emergency"
    clock.advance(11)
    assert pool.status()["mode"] == "normal"
    assert "emergency" not in format_status(pool.status())


# -- reclamation ----------------------------------------------------------------------------


def test_a_token_held_past_its_timeout_is_reclaimed_and_recorded(pool_dir: Path) -> None:
    clock = FakeClock()
    pool = make_pool(pool_dir, max_tokens=1, clock=clock, token_timeout=10)
    lease = pool.acquire(run_id="slowpoke", agent="webster", timeout=0)
    clock.advance(9)
    assert [t["run_id"] for t in pool.status()["in_use"]] == ["slowpoke"]
    clock.advance(2)
    with pool.acquire(run_id="next", agent="a", timeout=0):
        pass
    (rec,) = pool.reclaimed()
    assert (rec["run_id"], rec["agent"], rec["reason"], rec["held_s"]) == (
        "slowpoke",
        "webster",
        "timeout",
        11.0,
    )
    lease.release()  # the late release is harmless and says what happened
    assert lease.reclaimed_reason == "timeout"
    assert pool.status()["in_use"] == []


def test_a_token_of_a_dead_process_is_reclaimed_at_once(pool_dir: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    ghost = make_pool(pool_dir, max_tokens=1, pid=gone.pid)
    ghost.acquire(run_id="ghost", agent="a", timeout=0)  # recorded as held by a dead PID
    pool = make_pool(pool_dir, max_tokens=1)
    with pool.acquire(run_id="alive", agent="a", timeout=0):
        pass
    assert [(r["run_id"], r["reason"]) for r in pool.reclaimed()] == [("ghost", "dead")]


def test_a_reused_pid_does_not_keep_a_token(pool_dir: Path) -> None:
    # Our own PID, but a start time that is not ours: the PID was reused.
    token = {
        "id": "t1",
        "run_id": "old-run",
        "agent": "a",
        "pid": os.getpid(),
        "start": 1,
        "queued_at": time.time(),
        "acquired_at": time.time(),
    }
    pool_dir.mkdir()
    (pool_dir / STATE_NAME).write_text(json.dumps({"tokens": [token]}), encoding="utf-8")
    pool = make_pool(pool_dir, max_tokens=1)
    assert pool.status()["in_use"] == []
    assert pool.reclaimed()[0]["reason"] == "dead"


# -- garbage never wedges the pool ----------------------------------------------------------

GARBAGE = {
    "binary": b"\x00\xff\xfe garbage",
    "empty": b"",
    "truncated": b'{"tokens": [{"id": "t", "run_id"',
    "list": b"[1, 2, 3]",
    "deep": b"[" * 100_000,
    "wrong-types": json.dumps(
        {
            "size": "big",
            "mode": 7,
            "tokens": "nope",
            "queue": [1, {"pid": "a"}, None],
            "samples": 5,
            "reclaimed": {"x": 1},
            "low": "x",
            "cooldown_until": "soon",
        }
    ).encode(),
    "bad-entries": json.dumps(
        {
            "size": 99,
            "tokens": [
                {"id": "t", "run_id": "r", "agent": "a", "pid": -4, "queued_at": 0},
                {"id": "t2", "run_id": "r", "agent": "a", "pid": True, "acquired_at": "x"},
                {"id": "t3", "run_id": "r", "agent": "a", "pid": 1, "start": "x"},
                {"id": 5},
            ],
            "queue": [{"id": "q", "run_id": "r", "pid": 1, "queued_at": float("inf")}],
        }
    ).encode(),
}


@pytest.mark.parametrize("content", list(GARBAGE.values()), ids=list(GARBAGE))
def test_garbage_in_the_state_file_is_repaired(pool_dir: Path, content: bytes) -> None:
    pool_dir.mkdir()
    (pool_dir / STATE_NAME).write_bytes(content)
    (pool_dir / LOCK_NAME).write_bytes(b"junk in the lock file is irrelevant")
    (pool_dir / "stray.json").write_bytes(b"{not json")
    pool = make_pool(pool_dir, max_tokens=2)
    with (
        pool.acquire(run_id="r1", agent="a", timeout=0),
        pool.acquire(run_id="r2", agent="a", timeout=0),
    ):
        status = pool.status()
        assert [t["run_id"] for t in status["in_use"]] == ["r1", "r2"]
        assert status["size"] == 2
    status = pool.status()
    assert status["in_use"] == [] and status["queue"] == []
    assert status["repairs"] == (0 if content == b"" else 1)
    json.loads((pool_dir / STATE_NAME).read_bytes())  # written back clean
    format_status(status)


def test_a_writer_killed_between_unlink_and_rename_loses_nothing(pool_dir: Path) -> None:
    pool = make_pool(pool_dir, max_tokens=2)
    lease = pool.acquire(run_id="kept", agent="a", timeout=0)
    state = pool_dir / STATE_NAME
    os.rename(state, pool_dir / ".state.tmp")  # as if the writer died before its rename
    assert [t["run_id"] for t in pool.status()["in_use"]] == ["kept"]
    assert state.exists()
    lease.release()
    assert pool.status()["in_use"] == []


def test_a_removed_lock_file_is_recreated(pool_dir: Path) -> None:
    pool = make_pool(pool_dir, max_tokens=1)
    pool.acquire(run_id="r", agent="a", timeout=0).release()
    (pool_dir / LOCK_NAME).unlink()
    with pool.acquire(run_id="r2", agent="a", timeout=0):
        assert (pool_dir / LOCK_NAME).exists()
    pool.close()


def test_an_unusable_pool_directory_is_a_clear_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "pool"
    not_a_dir.write_text("a file where the pool directory should be", encoding="utf-8")
    pool = make_pool(not_a_dir / "inner")
    with pytest.raises(ConfigError) as info:
        pool.acquire(run_id="r", agent="a", timeout=0)
    assert str(info.value).startswith(f"the token pool directory `{not_a_dir / 'inner'}`")
    assert "Check `pool.dir` and its permissions." in str(info.value)


def test_release_never_raises(pool_dir: Path) -> None:
    import shutil

    pool = make_pool(pool_dir, max_tokens=1)
    lease = pool.acquire(run_id="r", agent="a", timeout=0)
    pool.close()
    shutil.rmtree(pool_dir)
    pool_dir.write_text("not a directory any more", encoding="utf-8")
    lease.release()
    assert lease.reclaimed_reason == "unreleased"


# -- status, settings -------------------------------------------------------------------------


def test_status_lists_holders_waiters_and_renders(pool_dir: Path) -> None:
    clock = FakeClock()
    pool = make_pool(pool_dir, max_tokens=1, clock=clock)
    lease = pool.acquire(run_id="orch-20250101T000000-0000abcd", agent="webster", timeout=0)
    threads, results = _waiter_threads(pool, 1, agent="auditor")
    wait_for(lambda: len(pool.status()["queue"]) == 1, what="the waiter")
    clock.advance(2.5)
    status = pool.status()
    json.dumps(status)  # `orchestrate pool status --json` prints it as is
    assert status["in_use"] == [
        {
            "run_id": "orch-20250101T000000-0000abcd",
            "agent": "webster",
            "pid": os.getpid(),
            "age_s": 2.5,
        }
    ]
    assert status["queue"] == [
        {"run_id": "t0", "agent": "auditor", "pid": os.getpid(), "waited_s": 2.5}
    ]
    assert status["settings"]["max_tokens"] == 1
    assert status["settings"]["dir"] == str(pool_dir)
    text = format_status(status)
    assert "in use   1 of 1" in text
    assert "queue    1 waiting (limit 50)" in text
    assert f"  orch-20250101T000000-0000abcd  webster  {os.getpid()}  2.5s" in text
    lease.release()
    threads[0].join(60)
    assert results == ["t0"]


def test_status_of_a_pool_never_used_creates_nothing(pool_dir: Path) -> None:
    status = make_pool(pool_dir, max_tokens=4).status()
    assert (status["size"], status["mode"], status["in_use"]) == (4, "normal", [])
    assert not pool_dir.exists()
    assert "no samples yet" in format_status(status)


def test_settings_from_config(tmp_path: Path) -> None:
    base = {"path": tmp_path / "orchestrator.yaml", "agents": {}, "acl": {}}
    cfg = Config(handoffs_dir=tmp_path / "handoffs", **base)
    settings = PoolSettings.from_config(cfg)
    assert settings.dir == (tmp_path / "handoffs" / ".pool").resolve()
    assert (settings.min_tokens, settings.max_tokens, settings.queue_limit) == (1, 5, 50)
    assert (settings.load_low, settings.load_high, settings.emergency_load) == (2.0, 3.0, 5.0)
    assert (settings.token_timeout, settings.cooldown, settings.hysteresis) == (300.0, 30.0, 3)
    assert settings.adaptive and settings.enabled
    cfg = Config(
        handoffs_dir=tmp_path / "handoffs",
        pool={"dir": "run/pool", "max_tokens": 8, "load_high": 4, "enabled": False},
        **base,
    )
    settings = PoolSettings.from_config(cfg)
    assert settings.dir == (tmp_path / "run" / "pool").resolve()
    assert (settings.max_tokens, settings.load_high, settings.enabled) == (8, 4.0, False)
    with pytest.raises(ConfigError) as info:
        PoolSettings.from_config(
            Config(handoffs_dir=tmp_path, pool={"min_tokens": 4, "max_tokens": 2}, **base)
        )
    assert "`pool.max_tokens` must not be smaller than `pool.min_tokens`." in str(info.value)


# -- the documentation's examples are true ------------------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "pool.md"


def _doc_blocks(lang: str) -> list[str]:
    import re

    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_documented_defaults_are_the_defaults(tmp_path: Path) -> None:
    import yaml

    from engine.config import config_from_dict

    documented = yaml.safe_load(_doc_blocks("yaml")[0])["pool"]
    raw = {"agents": {"a": {"url": "http://127.0.0.1:1", "token_env": "T"}}, "pool": documented}
    cfg = config_from_dict(raw, path=tmp_path / "orchestrator.yaml")  # valid per the schema
    settings = PoolSettings.from_config(cfg)
    defaults = PoolSettings(dir=settings.dir)
    assert settings == defaults
    assert set(documented) == set(defaults.to_dict())


def test_documented_status_output_is_what_format_status_prints() -> None:
    (text,) = [b for b in _doc_blocks("text") if b.startswith("$ orchestrate pool status")]
    (example,) = [b for b in _doc_blocks("json") if '"in_use"' in b]
    status = json.loads(example)
    live = make_pool(Path("/nonexistent/pool")).status()
    assert set(status) == set(live)
    assert text.strip().splitlines()[0] == "$ orchestrate pool status"
    assert "\n".join(text.strip().splitlines()[1:]) == format_status(status)
