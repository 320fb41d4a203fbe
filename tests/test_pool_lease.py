"""A live holder within its delegation's deadline keeps its token; nothing wedges the pool.

The pool clock is injected (a fake that moves only when told to); holders are real
processes (this one, or a child that has exited), and the pool is never mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from engine.errors import DelegationTimeoutError
from engine.pool import DEADLINE_GRACE, STATE_NAME, PoolSettings, TokenPool


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_pool(pool_dir: Path, **kw: Any) -> TokenPool:
    extra = {k: kw.pop(k) for k in ("clock", "pid", "monotonic") if k in kw}
    kw.setdefault("adaptive", False)
    return TokenPool(PoolSettings(dir=pool_dir, **kw), load_source=lambda: 2.5, **extra)


def dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def held(pool: TokenPool) -> list[str]:
    return [t["run_id"] for t in pool.status()["in_use"]]


@pytest.fixture
def pool_dir(tmp_path: Path) -> Path:
    return tmp_path / "pool"


# -- a live holder inside its deadline keeps its token ------------------------------------


def test_live_holder_inside_a_900_s_deadline_keeps_its_token_at_301_s(pool_dir: Path) -> None:
    clock = FakeClock()
    pool = make_pool(pool_dir, max_tokens=2, clock=clock, token_timeout=300)
    a = pool.acquire(run_id="step-a", agent="webster", timeout=0, hold_for=900)
    b = pool.acquire(run_id="step-b", agent="auditor", timeout=0, hold_for=900)
    assert a.hold_until == clock.now + 900
    clock.advance(301)
    assert held(pool) == ["step-a", "step-b"]
    with pytest.raises(DelegationTimeoutError, match="2 of 2 tokens in use"):
        pool.acquire(run_id="third", agent="secretary", timeout=0)
    clock.advance(900 - 301 + DEADLINE_GRACE - 1)  # one second before deadline + grace
    with pytest.raises(DelegationTimeoutError):
        pool.acquire(run_id="fourth", agent="secretary", timeout=0)
    assert held(pool) == ["step-a", "step-b"]
    assert pool.reclaimed() == []
    a.release()
    b.release()
    assert (a.reclaimed_reason, b.reclaimed_reason) == (None, None)
    assert held(pool) == []


def test_a_short_deadline_does_not_shorten_token_timeout(pool_dir: Path) -> None:
    clock = FakeClock()
    pool = make_pool(pool_dir, max_tokens=1, clock=clock, token_timeout=300)
    lease = pool.acquire(run_id="quick", agent="a", timeout=0, hold_for=10)
    clock.advance(10 + DEADLINE_GRACE + 1)  # past deadline + grace, inside token_timeout
    assert held(pool) == ["quick"]
    clock.advance(300 - (10 + DEADLINE_GRACE + 1) + 1)
    assert held(pool) == []
    assert [(r["run_id"], r["reason"]) for r in pool.reclaimed()] == [("quick", "timeout")]
    lease.release()
    assert lease.reclaimed_reason == "timeout"


def test_without_a_deadline_token_timeout_still_applies(pool_dir: Path) -> None:
    clock = FakeClock()
    pool = make_pool(pool_dir, max_tokens=1, clock=clock, token_timeout=300)
    lease = pool.acquire(run_id="old-caller", agent="a", timeout=0)
    assert lease.hold_until is None
    clock.advance(301)
    with pool.acquire(run_id="next", agent="a", timeout=0):
        pass
    assert [(r["run_id"], r["reason"]) for r in pool.reclaimed()] == [("old-caller", "timeout")]


def test_the_deadline_counts_from_the_request_not_the_grant(pool_dir: Path) -> None:
    # The time spent queued is part of the delegation's deadline, not added to it.
    clock = FakeClock()
    pool = make_pool(pool_dir, max_tokens=1, clock=clock)
    first = pool.acquire(run_id="first", agent="a", timeout=0)
    asked = clock.now
    got: list[Any] = []
    waiter = threading.Thread(
        target=lambda: got.append(
            pool.acquire(run_id="queued", agent="a", timeout=60, hold_for=900)
        )
    )
    waiter.start()
    deadline = time.monotonic() + 60
    while not pool.status()["queue"] and time.monotonic() < deadline:
        time.sleep(0.01)  # bounded: returns as soon as the ticket is in line
    assert [w["run_id"] for w in pool.status()["queue"]] == ["queued"]
    clock.advance(100)
    first.release()
    waiter.join(60)
    (lease,) = got
    assert (lease.acquired_at, lease.hold_until) == (asked + 100, asked + 900)
    assert lease.waited_s == 100
    lease.release()


# -- holders that are gone or wedged are reclaimed ----------------------------------------


def test_a_dead_holder_is_reclaimed_at_once_whatever_its_deadline(pool_dir: Path) -> None:
    clock = FakeClock()
    ghost = make_pool(pool_dir, max_tokens=1, clock=clock, pid=dead_pid())
    ghost.acquire(run_id="ghost", agent="a", timeout=0, hold_for=900)
    pool = make_pool(pool_dir, max_tokens=1, clock=clock)
    with pool.acquire(run_id="alive", agent="a", timeout=0) as lease:
        assert held(pool) == ["alive"]
    assert lease.waited_s == 0.0
    assert [(r["run_id"], r["reason"], r["held_s"]) for r in pool.reclaimed()] == [
        ("ghost", "dead", 0.0)
    ]


def test_a_live_holder_past_deadline_and_grace_is_reclaimed_with_its_reason(
    pool_dir: Path,
) -> None:
    clock = FakeClock()
    pool = make_pool(pool_dir, max_tokens=1, clock=clock, token_timeout=300)
    wedged = pool.acquire(run_id="wedged", agent="nx-expert", timeout=0, hold_for=900)
    clock.advance(900 + DEADLINE_GRACE)
    assert held(pool) == ["wedged"]  # exactly at the limit: still its own
    clock.advance(0.5)
    with pool.acquire(run_id="next", agent="a", timeout=0):
        assert held(pool) == ["next"]
    (rec,) = pool.reclaimed()
    assert (rec["run_id"], rec["agent"], rec["reason"], rec["held_s"]) == (
        "wedged",
        "nx-expert",
        "deadline",
        900 + DEADLINE_GRACE + 0.5,
    )
    wedged.release()
    assert wedged.reclaimed_reason == "deadline"
    status = json.loads((pool_dir / STATE_NAME).read_text(encoding="utf-8"))
    assert status["reclaimed"][0]["reason"] == "deadline"  # survives a reread


def test_deadline_reason_survives_another_process_reading_the_state(pool_dir: Path) -> None:
    clock = FakeClock()
    pool = make_pool(pool_dir, max_tokens=1, clock=clock)
    pool.acquire(run_id="wedged", agent="a", timeout=0, hold_for=500)
    clock.advance(500 + DEADLINE_GRACE + 1)
    pool.status()
    other = make_pool(pool_dir, max_tokens=1, clock=clock)
    assert [r["reason"] for r in other.reclaimed()] == ["deadline"]


def test_a_state_file_without_deadlines_still_reads(pool_dir: Path) -> None:
    # Written by the previous version: no `hold_until`, no clock pair.
    clock = FakeClock()
    token = {
        "id": "t1",
        "run_id": "legacy",
        "agent": "a",
        "pid": os.getpid(),
        "start": None,
        "queued_at": clock.now,
        "acquired_at": clock.now,
    }
    pool_dir.mkdir()
    (pool_dir / STATE_NAME).write_text(
        json.dumps({"version": 1, "size": 1, "tokens": [token], "queue": []}), encoding="utf-8"
    )
    pool = make_pool(pool_dir, max_tokens=1, clock=clock, token_timeout=300)
    assert held(pool) == ["legacy"]
    assert pool.status()["repairs"] == 0
    clock.advance(301)
    assert held(pool) == []
    assert [r["reason"] for r in pool.reclaimed()] == ["timeout"]


# -- the queue never grants to the dead ---------------------------------------------------


def test_a_dead_waiter_at_the_head_is_skipped_on_release(pool_dir: Path) -> None:
    clock = FakeClock()
    pool = make_pool(pool_dir, max_tokens=1, clock=clock)
    lease = pool.acquire(run_id="holder", agent="a", timeout=0)
    # A waiter whose process died while in line, ahead of a live one.
    state = json.loads((pool_dir / STATE_NAME).read_text(encoding="utf-8"))
    ticket = {"run_id": "x", "agent": "a", "start": None, "queued_at": clock.now}
    ticket["max_concurrent"] = None
    state["queue"] = [
        dict(ticket, id="dead-ticket", run_id="dead-waiter", pid=dead_pid()),
        dict(ticket, id="live-ticket", run_id="live-waiter", pid=os.getpid()),
    ]
    (pool_dir / STATE_NAME).write_text(json.dumps(state), encoding="utf-8")
    lease.release()
    assert held(pool) == ["live-waiter"]
    assert pool.status()["queue"] == []
    assert pool.reclaimed() == []  # the dead waiter never got a token to reclaim


# -- clock jumps -------------------------------------------------------------------------


class HostClocks:
    """A wall clock that can be set, and a monotonic clock that only moves forward."""

    def __init__(self) -> None:
        self.wall_now, self.mono_now = 1_000_000.0, 5_000.0

    def wall(self) -> float:
        return self.wall_now

    def mono(self) -> float:
        return self.mono_now

    def elapse(self, seconds: float) -> None:
        self.wall_now += seconds
        self.mono_now += seconds

    def set_wall(self, jump: float) -> None:
        self.wall_now += jump


def test_a_forward_clock_jump_does_not_reclaim_live_tokens(pool_dir: Path) -> None:
    t = HostClocks()
    pool = make_pool(pool_dir, max_tokens=1, clock=t.wall, monotonic=t.mono, token_timeout=300)
    lease = pool.acquire(run_id="holder", agent="a", timeout=0)
    t.elapse(10)
    t.set_wall(+3600)  # someone sets the clock an hour ahead
    with pytest.raises(DelegationTimeoutError):
        pool.acquire(run_id="intruder", agent="a", timeout=0)
    assert held(pool) == ["holder"]
    assert pool.status()["in_use"][0]["age_s"] == 10.0
    t.elapse(291)  # 301 s really held: now it is overdue
    assert held(pool) == []
    assert [r["reason"] for r in pool.reclaimed()] == ["timeout"]
    lease.release()


def test_a_backward_clock_jump_does_not_prolong_a_cooldown(pool_dir: Path) -> None:
    t = HostClocks()
    pool = TokenPool(
        PoolSettings(dir=pool_dir, max_tokens=2, cooldown=30, emergency_load=5.0),
        load_source=lambda: 2.5,
        clock=t.wall,
        monotonic=t.mono,
    )
    pool.sample(9.0)  # emergency: no grants for 30 s
    assert pool.status()["mode"] == "emergency"
    t.elapse(10)
    t.set_wall(-86_400)  # the clock goes back a day
    assert pool.status()["cooldown_remaining_s"] == 20.0
    t.elapse(21)
    assert pool.status()["mode"] == "normal"
    with pool.acquire(run_id="after", agent="a", timeout=0):
        pass


def test_a_backward_jump_without_a_clock_pair_is_bounded(pool_dir: Path) -> None:
    # An older state file has no record of the monotonic clock: a cooldown or a hold that
    # reaches far into the future is cut to what the settings allow from now.
    clock = FakeClock()
    pool_dir.mkdir()
    far = clock.now + 86_400
    token = {
        "id": "t1",
        "run_id": "future",
        "agent": "a",
        "pid": os.getpid(),
        "start": None,
        "queued_at": far,
        "acquired_at": far,
    }
    state = {"mode": "emergency", "cooldown_until": far, "tokens": [token]}
    (pool_dir / STATE_NAME).write_text(json.dumps(state), encoding="utf-8")
    pool = make_pool(pool_dir, max_tokens=2, clock=clock, cooldown=30, token_timeout=300)
    status = pool.status()
    assert (status["mode"], status["cooldown_remaining_s"]) == ("emergency", 30.0)
    assert status["in_use"][0]["age_s"] == 0.0
    clock.advance(301)
    assert pool.status()["mode"] == "normal"
    assert held(pool) == []  # held 301 s from the moment the jump was seen


def test_a_look_at_the_pool_writes_nothing(pool_dir: Path) -> None:
    t = HostClocks()
    pool = make_pool(pool_dir, max_tokens=1, clock=t.wall, monotonic=t.mono)
    pool.acquire(run_id="holder", agent="a", timeout=0, hold_for=60)
    before = (pool_dir / STATE_NAME).stat().st_ino
    t.elapse(0.5)  # less than the queue-sweep interval, which does write
    pool.status()
    assert (pool_dir / STATE_NAME).stat().st_ino == before
