"""The pool's rules as tables: (state, event) -> (state, grants), with no file, clock or
process involved. Time is a number, liveness a set of dead PIDs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine.pool import DEADLINE_GRACE, PoolMode, PoolPolicy, PoolSettings, PoolState
from engine.pool.policy import SHARE_IDLE
from engine.pool.policy import PollOutcome as Outcome
from engine.pool.state import ClockPair, Reclaim, Share, Ticket, Token, decode, encode, parse

HERE, THERE = "host-here", "host-there"
NOW = 1000.0
DEAD = {13}  # pids that are gone on this host


def alive(pid: int, start: int | None) -> bool:
    return pid not in DEAD


def policy(**kw: Any) -> PoolPolicy:
    kw.setdefault("adaptive", False)
    kw.setdefault("max_tokens", 2)
    return PoolPolicy(PoolSettings(dir=Path("/unused"), **kw), host=HERE)


def tok(
    tid: str,
    *,
    agent: str = "a",
    pid: int = 1,
    host: str = HERE,
    at: float = NOW - 10,
    renewed: float | None = None,
    hold: float | None = None,
) -> Token:
    return Token(
        id=tid,
        run_id=f"run-{tid}",
        agent=agent,
        pid=pid,
        start=None,
        host=host,
        queued_at=at,
        hold_until=hold,
        renewed_at=at if renewed is None else renewed,
        acquired_at=at,
    )


def tix(
    tid: str,
    *,
    agent: str = "a",
    pid: int = 1,
    host: str = HERE,
    at: float = NOW - 5,
    cap: int | None = None,
    renewed: float | None = None,
) -> Ticket:
    return Ticket(
        id=tid,
        run_id=f"run-{tid}",
        agent=agent,
        pid=pid,
        start=None,
        host=host,
        queued_at=at,
        hold_until=None,
        renewed_at=at if renewed is None else renewed,
        max_concurrent=cap,
    )


def state(size: int = 2, tokens: list[Token] | None = None, queue: list[Ticket] | None = None,
          **kw: Any) -> PoolState:  # fmt: skip
    kw.setdefault("last_sweep", NOW)
    return PoolState(size=size, tokens=tokens or [], queue=queue or [], **kw)


Event = Callable[[PoolPolicy, PoolState], Any]


@dataclass
class Case:
    id: str
    state: PoolState
    event: Event
    tokens: list[str]  # token ids afterwards, in order
    queue: list[str]  # ticket ids afterwards, in order
    grants: list[str]  # tickets that became tokens
    result: Any = None  # what the event returned (an Outcome for requests)
    settings: dict[str, Any] = field(default_factory=dict)
    reclaimed: list[tuple[str, str]] = field(default_factory=list)  # (token id, reason)


def enqueue(ticket: Ticket) -> Event:
    return lambda p, s: p.enqueue(s, NOW, ticket, alive).outcome


def release(token_id: str) -> Event:
    return lambda p, s: p.release(s, NOW, token_id, alive)


def housekeep(now: float = NOW) -> Event:
    return lambda p, s: p.housekeep(s, now, alive)


CASES = [
    Case("enqueue: a free token is granted at once", state(1), enqueue(tix("n")),
         ["n"], [], ["n"], Outcome.GRANTED),
    Case("enqueue: no free token, the request waits", state(1, [tok("t")]), enqueue(tix("n")),
         ["t"], ["n"], [], Outcome.WAITING),
    Case("enqueue: a newcomer never overtakes a waiter",
         state(2, [tok("t")], [tix("w")]), enqueue(tix("n")),
         ["t", "w"], ["n"], ["w"], Outcome.WAITING),
    Case("enqueue: a full queue refuses", state(1, [tok("t")], [tix("w")]), enqueue(tix("n")),
         ["t"], ["w"], [], Outcome.REFUSED, {"queue_limit": 1}),
    Case("enqueue: dead waiters do not fill the queue",
         state(1, [tok("t")], [tix("w", pid=13)]), enqueue(tix("n")),
         ["t"], ["n"], [], Outcome.WAITING, {"queue_limit": 1}),
    Case("enqueue: queue_limit 0 refuses whoever must wait", state(1, [tok("t")]),
         enqueue(tix("n")), ["t"], [], [], Outcome.REFUSED, {"queue_limit": 0}),
    Case("enqueue: nothing is granted in an emergency",
         state(2, mode=PoolMode.EMERGENCY, cooldown_until=NOW + 5), enqueue(tix("n")),
         [], ["n"], [], Outcome.WAITING),
    Case("release: the token goes to the head of the queue",
         state(1, [tok("t")], [tix("w1"), tix("w2")]), release("t"),
         ["w1"], ["w2"], ["w1"], None),
    Case("release: a dead waiter at the head is dropped, the next served",
         state(1, [tok("t")], [tix("w1", pid=13), tix("w2")]), release("t"),
         ["w2"], [], ["w2"], None),
    Case("release: an agent at its cap keeps its place, the next is served",
         state(2, [tok("t0", agent="a"), tok("t1", agent="b")],
               [tix("w1", agent="a", cap=1), tix("w2", agent="b")]),
         release("t1"), ["t0", "w2"], ["w1"], ["w2"], None),
    Case("release: twice is harmless, and says the token was not held",
         state(1), release("t"), [], [], [], "lost"),
    Case("release: a reclaimed token says why",
         state(1, reclaimed=[Reclaim("t", "run-t", "a", 1, "deadline", NOW - 1, 400.0)]),
         release("t"), [], [], [], "deadline"),
    Case("housekeep: a dead holder's token is reclaimed at once and granted on",
         state(1, [tok("t", pid=13, at=NOW - 1)], [tix("w")]), housekeep(),
         ["w"], [], ["w"], None, reclaimed=[("t", "dead")]),
    Case("housekeep: a live holder without a deadline is reclaimed after token_timeout",
         state(1, [tok("t", at=NOW - 301)]), housekeep(),
         [], [], [], None, {"token_timeout": 300}, [("t", "timeout")]),
    Case("housekeep: a live holder inside its deadline keeps its token past token_timeout",
         state(1, [tok("t", at=NOW - 301, hold=NOW + 599)]), housekeep(),
         ["t"], [], [], None, {"token_timeout": 300}),
    Case("housekeep: a live holder past its deadline and the grace is reclaimed",
         state(1, [tok("t", at=NOW - 901, hold=NOW - DEADLINE_GRACE - 1)]), housekeep(),
         [], [], [], None, {"token_timeout": 300}, [("t", "deadline")]),
    Case("housekeep: another host's holder renewed within lease_ttl keeps its token",
         state(1, [tok("t", host=THERE, pid=13, at=NOW - 100, renewed=NOW - 10)]),
         housekeep(), ["t"], [], [], None, {"lease_ttl": 10}),
    Case("housekeep: another host's holder that stopped renewing expires",
         state(1, [tok("t", host=THERE, pid=1, at=NOW - 100, renewed=NOW - 11)], [tix("w")]),
         housekeep(), ["w"], [], ["w"], None, {"lease_ttl": 10}, [("t", "expired")]),
    Case("housekeep: another host's waiter that stopped renewing is swept",
         state(1, [tok("t")], [tix("w", host=THERE, renewed=NOW - 11), tix("v")],
               last_sweep=0.0),  # fmt: skip
         housekeep(), ["t"], ["v"], [], None, {"lease_ttl": 10}),
    Case("housekeep: the end of the cooldown grants again",
         state(1, [], [tix("w")], mode=PoolMode.EMERGENCY, cooldown_until=NOW),
         housekeep(), ["w"], [], ["w"], None),
    Case("housekeep: during the cooldown nothing is granted",
         state(1, [], [tix("w")], mode=PoolMode.EMERGENCY, cooldown_until=NOW + 1),
         housekeep(), [], ["w"], [], None),
    Case("cancel: the waiter leaves the queue",
         state(1, [tok("t")], [tix("w1"), tix("w2")]),
         lambda p, s: p.cancel(s, NOW, "w1").outcome, ["t"], ["w2"], [], Outcome.WAITING),
    Case("cancel: granted meanwhile, the token is kept",
         state(1, [tok("w1")]), lambda p, s: p.cancel(s, NOW, "w1").outcome,
         ["w1"], [], [], Outcome.GRANTED),
    Case("abandon: an interrupted holder's token goes on to the next",
         state(1, [tok("t")], [tix("w")]), lambda p, s: p.abandon(s, NOW, "t", alive),
         ["w"], [], ["w"], None),
    Case("renew: a held token is renewed", state(1, [tok("t")]),
         lambda p, s: p.renew(s, NOW, "t"), ["t"], [], [], True),
    Case("renew: a token no longer held is not", state(1),
         lambda p, s: p.renew(s, NOW, "t"), [], [], [], False),
    Case("poll: a ticket lost by a repair queues again in its old place",
         state(1, [tok("t")], [tix("early", at=NOW - 9), tix("late", at=NOW - 1)]),
         lambda p, s: p.poll(s, NOW, tix("me", at=NOW - 5), alive).outcome,
         ["t"], ["early", "me", "late"], [], Outcome.WAITING),
    Case("poll: a ticket granted then reclaimed is reported granted",
         state(1, reclaimed=[Reclaim("me", "run-me", "a", 1, "timeout", NOW - 1, 300.0)]),
         lambda p, s: p.poll(s, NOW, tix("me"), alive).outcome,
         [], [], [], Outcome.GRANTED),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_event(case: Case) -> None:
    rules = policy(**case.settings)
    before = {t.id for t in case.state.tokens}
    result = case.event(rules, case.state)
    assert result == case.result
    assert [t.id for t in case.state.tokens] == case.tokens
    assert [w.id for w in case.state.queue] == case.queue
    assert [t.id for t in case.state.tokens if t.id not in before] == case.grants
    fresh = [(r.token_id, r.reason) for r in case.state.reclaimed if r.at == NOW]
    assert fresh == case.reclaimed


def test_a_grant_stamps_the_token() -> None:
    s = state(1, [], [tix("w", at=NOW - 5)])
    policy().housekeep(s, NOW, alive)
    (t,) = s.tokens
    assert (t.acquired_at, t.renewed_at, t.queued_at, t.host) == (NOW, NOW, NOW - 5, HERE)


def test_renew_moves_renewed_at_only() -> None:
    s = state(1, [tok("t", at=NOW - 50)])
    assert policy().renew(s, NOW, "t") is True
    assert (s.tokens[0].renewed_at, s.tokens[0].acquired_at) == (NOW, NOW - 50)


def test_a_waiter_renews_its_ticket_every_half_ttl() -> None:
    rules, me = policy(lease_ttl=10), tix("me", at=NOW - 6)
    s = state(1, [tok("t")], [tix("me", at=NOW - 6)])
    rules.poll(s, NOW - 2, me, alive)
    assert s.queue[0].renewed_at == NOW - 6  # 4 s old: not yet
    rules.poll(s, NOW, me, alive)
    assert s.queue[0].renewed_at == NOW


def test_liveness_of_another_hosts_holder_never_asks_the_kernel() -> None:
    def kernel(pid: int, start: int | None) -> bool:
        raise AssertionError(f"asked about pid {pid} of another host")

    s = state(1, [tok("t", host=THERE, renewed=NOW - 1)])
    policy(lease_ttl=10).housekeep(s, NOW, kernel)
    assert [t.id for t in s.tokens] == ["t"]


SAMPLES = [
    # (loads, size before, size after, mode after)
    ([4.0, 4.0], 3, 3, "normal"),
    ([4.0, 4.0, 4.0], 3, 2, "normal"),
    ([4.0, 4.0, 2.5, 4.0], 3, 3, "normal"),
    ([None, 4.0, None], 3, 2, "normal"),  # a 429/503 counts as high
    ([4.0] * 9, 3, 1, "normal"),  # never below min_tokens
    ([1.0, 1.0, 1.0], 1, 2, "normal"),
    ([1.0] * 9, 1, 3, "normal"),  # never above max_tokens
    ([6.0], 3, 1, "emergency"),
    ([6.0, 1.0, 1.0, 1.0], 3, 1, "emergency"),  # no adapting during the cooldown
]


@pytest.mark.parametrize(("loads", "size", "after", "mode"), SAMPLES)
def test_load_samples(loads: list[float | None], size: int, after: int, mode: str) -> None:
    rules = policy(adaptive=True, min_tokens=1, max_tokens=3, hysteresis=3, cooldown=30)
    s = state(size)
    for i, load in enumerate(loads):
        source = "overload" if load is None else "loadavg"
        rules.record_sample(s, NOW + i, load, source, alive)
    assert (s.size, s.mode.value) == (after, mode)


def test_growth_grants_the_waiters_at_once() -> None:
    rules = policy(adaptive=True, max_tokens=3, hysteresis=1)
    s = state(1, [tok("t")], [tix("w1"), tix("w2")])
    assert rules.record_sample(s, NOW, 1.0, "loadavg", alive) == ["w1"]
    assert [t.id for t in s.tokens] == ["t", "w1"]


def test_sample_due_once_per_interval() -> None:
    rules = policy(adaptive=True, sample_interval=5)
    s = state(2)
    assert rules.sample_due(s, NOW)
    s.last_sample_at = NOW
    assert not rules.sample_due(s, NOW + 4.9)
    assert rules.sample_due(s, NOW + 5)
    assert rules.sample_due(s, NOW - 1)  # the clock went back: sample again
    assert not policy(adaptive=False).sample_due(state(2), NOW)


def test_a_wall_clock_jump_shifts_every_stored_time() -> None:
    s = state(1, [tok("t", at=NOW - 10, hold=NOW + 50)], [tix("w", at=NOW - 5)],
              clock=ClockPair(wall=NOW - 100, mono=500.0, boot="b"))  # fmt: skip
    # 100 s of wall time, 10 s of monotonic time: the clock jumped 90 s ahead.
    policy().correct_jump(s, NOW, 510.0, "b")
    t, w = s.tokens[0], s.queue[0]
    assert (t.acquired_at, t.hold_until, t.renewed_at) == (NOW + 80, NOW + 140, NOW + 80)
    assert (w.queued_at, w.renewed_at) == (NOW + 85, NOW + 85)
    policy().correct_jump(s, NOW, 510.0, "other-boot")  # another boot: nothing to compare


def test_state_round_trips_and_old_files_read_as_this_host() -> None:
    settings = PoolSettings(dir=Path("/unused"), max_tokens=3, adaptive=False)
    old = {
        "version": 1,
        "tokens": [{"id": "t", "run_id": "r", "agent": "a", "pid": 5, "start": 7,
                    "queued_at": NOW - 2, "acquired_at": NOW - 1}],
        "queue": [{"id": "w", "run_id": "q", "agent": "a", "pid": 6, "start": None,
                   "queued_at": NOW}],
    }  # fmt: skip
    s, repaired = decode(old, settings, host=HERE)
    assert not repaired
    (t,), (w,) = s.tokens, s.queue
    assert (t.host, t.renewed_at, t.hold_until) == (HERE, NOW - 1, None)
    assert (w.host, w.renewed_at, w.max_concurrent) == (HERE, NOW, None)
    again, _ = decode(parse(encode(s)), settings, host="elsewhere")
    assert again == s
    assert encode(again) == encode(s)


@pytest.mark.parametrize("key", ["lease_ttl", "token_timeout", "cooldown", "load_high"])
def test_nan_settings_are_refused_with_their_key(key: str) -> None:
    from engine.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        PoolSettings(dir=Path("/unused"), **{key: float("nan")})
    assert f"`pool.{key}` must be a number, not NaN." in info.value.problems
    assert info.value.exit_code == 2


# -- a store shared by hosts: each host adapts its own share ------------------------------


def shared_policy(host: str = HERE, **kw: Any) -> PoolPolicy:
    kw.setdefault("adaptive", True)
    kw.setdefault("max_tokens", 4)
    kw.setdefault("hysteresis", 2)
    kw.setdefault("load_low", 1.0)
    kw.setdefault("load_high", 3.0)
    kw.setdefault("emergency_load", 8.0)
    return PoolPolicy(PoolSettings(dir=Path("/unused"), **kw), host=host, shared=True)


def test_a_loaded_host_shrinks_only_its_own_share() -> None:
    here, there = shared_policy(HERE), shared_policy(THERE)
    s = state(4)
    for _ in range(2):
        here.record_sample(s, NOW, 5.0, "loadavg", alive)  # loaded
        there.record_sample(s, NOW, 0.5, "loadavg", alive)  # idle, already at the ceiling
    assert (s.shares[HERE].size, s.shares[THERE].size) == (3, 4)
    assert s.size == 4  # the single-host size is not touched on a shared store
    for _ in range(4):
        here.record_sample(s, NOW, 5.0, "loadavg", alive)
    assert (s.shares[HERE].size, s.shares[THERE].size) == (1, 4)  # min_tokens is 1


def test_an_idle_host_grows_only_its_own_share() -> None:
    here, there = shared_policy(HERE), shared_policy(THERE)
    s = state(4, shares={HERE: Share(size=1), THERE: Share(size=1)})
    here.record_sample(s, NOW, 0.2, "loadavg", alive)
    here.record_sample(s, NOW, 0.2, "loadavg", alive)
    assert (s.shares[HERE].size, s.shares[THERE].size) == (2, 1)
    assert there.share(s, THERE).low == 0


def test_emergency_on_one_host_holds_back_only_its_tickets() -> None:
    here = shared_policy(HERE)
    s = state(4, queue=[tix("h1"), tix("t1", host=THERE)])
    here.record_sample(s, NOW, 9.0, "loadavg", alive)
    assert s.shares[HERE].mode is PoolMode.EMERGENCY and s.mode is PoolMode.NORMAL
    assert here.grant(s, NOW, alive) == ["t1"]  # the other host is served past ours
    assert [t.id for t in s.queue] == ["h1"]
    assert "in emergency mode" in here.why_waiting(s, NOW)
    cooldown = here.settings.cooldown
    shared_policy(THERE).housekeep(s, NOW + cooldown, alive)  # any host ends it on time
    assert s.shares[HERE].mode is PoolMode.NORMAL and [t.id for t in s.tokens] == ["t1", "h1"]


def test_a_host_is_granted_only_within_its_share_fifo_across_hosts() -> None:
    # HERE's share is 1 and it holds 1; THERE has no share yet (the ceiling, 4).
    s = state(
        4,
        [tok("h0")],
        [tix("h1", at=NOW - 9), tix("t1", host=THERE, at=NOW - 8), tix("t2", host=THERE)],
        shares={HERE: Share(size=1)},
    )
    assert shared_policy(THERE).grant(s, NOW, alive) == ["t1", "t2"]
    assert [t.id for t in s.queue] == ["h1"]  # keeps its place at the head of the line
    shared_policy(HERE).release(s, NOW, "h0", alive)
    assert [t.id for t in s.tokens] == ["t1", "t2", "h1"]


def test_max_tokens_caps_all_hosts_together() -> None:
    s = state(4, shares={HERE: Share(size=4), THERE: Share(size=4)})
    here, there = shared_policy(HERE), shared_policy(THERE)
    outcomes = []
    for i in range(3):
        outcomes.append(here.enqueue(s, NOW, tix(f"h{i}"), alive).outcome)
        outcomes.append(there.enqueue(s, NOW, tix(f"t{i}", host=THERE), alive).outcome)
    assert outcomes == [Outcome.GRANTED] * 4 + [Outcome.WAITING] * 2
    assert len(s.tokens) == 4 and [t.id for t in s.queue] == ["h2", "t2"]
    here.release(s, NOW, "t0", alive)  # whoever frees a token, the head of the line gets it
    assert [t.id for t in s.queue] == ["t2"] and s.tokens[-1].id == "h2"


def test_per_agent_caps_hold_across_hosts() -> None:
    s = state(
        4, [tok("h0", agent="x")], [tix("t1", host=THERE, agent="x", cap=1), tix("t2", host=THERE)]
    )
    assert shared_policy(THERE).grant(s, NOW, alive) == ["t2"]
    assert [t.id for t in s.queue] == ["t1"]


def test_each_host_samples_on_its_own_interval() -> None:
    here, there = shared_policy(HERE, sample_interval=5), shared_policy(THERE, sample_interval=5)
    s = state(4)
    here.housekeep(s, NOW, alive, sampled=True, load=0.5)
    assert not here.sample_due(s, NOW + 1) and there.sample_due(s, NOW + 1)
    assert here.sample_due(s, NOW + 5)


def test_one_host_on_a_shared_store_adapts_as_a_lone_pool_does() -> None:
    lone = PoolPolicy(shared_policy().settings, host=HERE)
    a, b = state(4), state(4)
    loads: list[float | None] = [5.0, 5.0, None, 5.0, 2.0, 0.5, 0.5, 9.0, 0.5]
    for i, load in enumerate(loads):
        source = "overload" if load is None else "loadavg"
        lone.record_sample(a, NOW + i, load, source, alive)
        shared_policy().record_sample(b, NOW + i, load, source, alive)
        mine = b.shares[HERE]
        assert (mine.size, mine.mode, mine.low, mine.high) == (a.size, a.mode, a.low, a.high)


def test_idle_shares_of_gone_hosts_are_forgotten() -> None:
    s = state(4, shares={THERE: Share(size=1, last_sample_at=NOW - SHARE_IDLE - 1)}, last_sweep=0)
    shared_policy().housekeep(s, NOW, alive)
    assert s.shares == {}
    busy = state(4, [tok("t", host=THERE, renewed=NOW)], last_sweep=0,
                 shares={THERE: Share(size=1, last_sample_at=NOW - SHARE_IDLE - 1)})  # fmt: skip
    shared_policy().housekeep(busy, NOW, alive)
    assert THERE in busy.shares


def test_shares_round_trip_and_older_states_read_without_them() -> None:
    cfg = shared_policy().settings
    s = state(3, shares={THERE: Share(size=2, mode=PoolMode.EMERGENCY, cooldown_until=NOW,
                                      low=0, high=1, last_sample_at=NOW - 1)})  # fmt: skip
    back, repaired = decode(parse(encode(s)), cfg, host=HERE)
    assert not repaired and back.shares == s.shares
    assert b'"shares"' not in encode(state(3))  # a host-local state is written as before
    old, _ = decode({"size": 2, "tokens": [], "queue": []}, cfg, host=HERE)
    assert old.shares == {}
    bad, _ = decode({"shares": {"h": {"size": 99, "mode": ["x"]}, "": {}, "g": 3}}, cfg, host=HERE)
    assert bad.shares == {"h": Share(size=4)}  # clamped to max_tokens; bad entries dropped
