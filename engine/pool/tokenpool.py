"""``TokenPool``: the policy's rules applied to a store's state, and the leases it grants."""

from __future__ import annotations

import math
import os
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from engine.errors import (
    AcquireCancelledError,
    ConfigError,
    DelegationTimeoutError,
    PoolRefusedError,
)
from engine.lease import CANCEL_CHECK
from engine.pool.host import boot_id, host_id, pid_alive, start_time, work_of
from engine.pool.policy import Poll, PollOutcome, PoolPolicy
from engine.pool.settings import PoolSettings, system_load
from engine.pool.state import (
    MAX_TEXT,
    ClockPair,
    PoolState,
    Ticket,
    Token,
    decode,
    encode_changed,
    granted_hint,
    granted_token,
    parse,
)
from engine.pool.status import reclaim_json, status_view
from engine.pool.store import FULL_CHECK, FileStore, PoolStore

__all__ = ["TokenLease", "TokenPool"]

_T = TypeVar("_T")

#: Without a change feed, waiters sleep between glances with this backoff (seconds).
_POLL_MIN = 0.002
_POLL_MAX = 0.010
#: The longest deadline a lease records (about 30 years): "wait forever" stays finite JSON.
_MAX_HOLD = 1e9
#: ``renew_every`` default: renew a lease on a shared store three times per ``lease_ttl``.
_AUTO = -1.0


class _Backoff:
    """Polling for stores without a change feed: sleep 2 ms, growing to 10 ms."""

    def __init__(self, sleep: Callable[[float], None]) -> None:
        self._sleep = sleep
        self._delay = _POLL_MIN

    def wait(self, limit: float) -> None:
        self._sleep(min(self._delay, max(0.0, limit)))
        self._delay = min(self._delay * 1.5, _POLL_MAX)


class _Heartbeats:
    """One thread per pool renews every lease that asked for renewal (``renew_every``),
    instead of a thread per lease: starting a thread cost about a millisecond of each
    acquire on a shared store. The thread ends once no lease is left at a beat."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._leases: dict[TokenLease, float] = {}
        self._thread: threading.Thread | None = None

    def _adopt_after_fork(self) -> None:
        if self._pid != os.getpid():  # the parent's thread and leases are not ours
            self._pid = os.getpid()
            self._lock = threading.Lock()
            self._leases = {}
            self._thread = None

    def add(self, lease: TokenLease, every: float) -> None:
        self._adopt_after_fork()
        with self._lock:
            self._leases[lease] = every
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, args=(every,), name="pool-leases", daemon=True
                )
                self._thread.start()

    def drop(self, lease: TokenLease) -> None:
        self._adopt_after_fork()
        with self._lock:
            self._leases.pop(lease, None)

    def _run(self, every: float) -> None:
        while True:
            time.sleep(every)
            with self._lock:
                leases = list(self._leases)
                if not leases:
                    self._thread = None
                    return
            for lease in leases:
                if not lease.renew():
                    self.drop(lease)


class TokenLease:
    """One token held by a delegation; a context manager, ``release()`` is idempotent.

    ``waited_s`` is the time spent queued; ``hold_until`` the delegation's deadline on the
    pool clock (None if the caller gave none). After ``release()``, ``reclaimed_reason`` is
    ``"dead"``, ``"timeout"``, ``"deadline"`` or ``"expired"`` if the pool had already
    taken the token back (``"lost"`` if a repaired state had forgotten it), else None.
    With ``renew_every`` a thread renews the lease that often until it is released.
    """

    def __init__(
        self, pool: TokenPool | None, token: Token, *, renew_every: float | None = None
    ) -> None:
        self._pool = pool
        self.token_id: str = token.id
        self.run_id: str = token.run_id
        self.agent: str = token.agent
        self.pid: int = token.pid
        self.host: str = token.host
        self.acquired_at: float = token.acquired_at
        self.waited_s: float = max(0.0, token.acquired_at - token.queued_at)
        self.hold_until: float | None = token.hold_until
        self.reclaimed_reason: str | None = None
        self._released = pool is None
        self._guard = threading.Lock()
        self._beating = False
        if pool is not None and renew_every is not None and renew_every > 0:
            self._beating = True
            pool._heartbeats.add(self, renew_every)

    @property
    def released(self) -> bool:
        """True once ``release()`` has run (or for a disabled pool's lease)."""
        return self._released

    def renew(self) -> bool:
        """Record that the holder is alive; False if the token is no longer held (or the
        pool is unusable). Never raises."""
        if self._released or self._pool is None:
            return False
        try:
            return self._pool._renew(self.token_id)
        except ConfigError:
            return False

    def release(self) -> None:
        """Give the token back (and hand it to the next waiter); safe to call twice.

        Never raises, because it runs in ``finally`` blocks: if the pool has become
        unusable, the token stays recorded until its holder is found dead (or its lease
        expires), and ``reclaimed_reason`` is ``"unreleased"``.
        """
        with self._guard:
            if self._released:
                return
            self._released = True
        assert self._pool is not None
        if self._beating:
            self._pool._heartbeats.drop(self)
        try:
            self.reclaimed_reason = self._pool._release(self.token_id)
        except ConfigError:
            self.reclaimed_reason = "unreleased"

    def __enter__(self) -> TokenLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return (
            f"TokenLease(run_id={self.run_id!r}, agent={self.agent!r}, token_id={self.token_id!r})"
        )


def _seconds(value: float) -> str:
    """Seconds for a message: whole ones from 10 s on, else one decimal (``2.99629`` ->
    ``3.0``, ``14.9965`` -> ``15``)."""
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _raise_if_cancelled(ticket: Ticket, cancel: threading.Event | None) -> None:
    """``AcquireCancelledError`` when ``cancel`` is set: the run waiting for ``ticket``
    was cancelled or interrupted."""
    if cancel is not None and cancel.is_set():
        raise AcquireCancelledError(
            f"run `{ticket.run_id}` (agent `{ticket.agent}`) stopped waiting for "
            "a pool token: it was cancelled or interrupted",
            agent=ticket.agent,
        )


class TokenPool:
    """A load-adaptive limit on concurrent delegations, shared through a ``PoolStore``.

    ``store`` holds the state (default: a ``PostgresPoolStore`` when ``settings.store``
    names a database, else a ``FileStore`` in ``settings.dir``, waking waiters by inotify,
    or polling with ``wake="poll"``). ``load_source`` returns the
    1-minute load average, ``clock`` timestamps the shared state (ages, timeouts, cooldown,
    sample interval) and ``sleep`` paces polling waiters; all are injectable for tests.
    ``monotonic`` is the host-wide clock that detects jumps of ``clock`` between two writes
    (default: ``time.monotonic`` with the real ``clock``, and the injected ``clock``
    itself otherwise, so a fake clock is taken at its word). ``pid`` is the holder recorded
    on tokens (default: the calling process) and ``host`` its host (default: this kernel's
    boot id). ``renew_every`` is how often a lease renews itself (default: a third of
    ``lease_ttl`` on a shared store, never on a host-local one; None: never).
    A pool object may be shared by threads and survives ``fork``.
    """

    _heartbeats: _Heartbeats

    def __init__(
        self,
        settings: PoolSettings,
        *,
        store: PoolStore | None = None,
        load_source: Callable[[], float] = system_load,
        clock: Callable[[], float] = time.time,
        pid: int | None = None,
        host: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        wake: Literal["auto", "poll"] = "auto",
        monotonic: Callable[[], float] | None = None,
        renew_every: float | None = _AUTO,
    ) -> None:
        if store is None and settings.store is not None:
            from engine.pool.postgres import PostgresPoolStore
            from engine.store.postgres_db import Database

            store = PostgresPoolStore(Database.from_url(settings.store), lock_dir=settings.dir)
        if store is None:
            store = FileStore(settings.dir, wake=wake)
        elif wake not in ("auto", "poll"):
            raise ValueError(f"wake must be 'auto' or 'poll', not {wake!r}")
        self.settings = settings
        self.store = store
        self.host = (host or host_id())[:MAX_TEXT]  # as the state stores it
        self.policy = PoolPolicy(settings, host=self.host, shared=store.shared)
        self._load_source = load_source
        self._clock = clock
        if monotonic is None:
            monotonic = time.monotonic if clock is time.time else clock
        self._monotonic = monotonic
        self._fixed_pid = pid
        self._sleep = sleep
        if renew_every == _AUTO:
            renew_every = settings.lease_ttl / 3 if store.shared else None
        self._renew_every = renew_every
        self._starts: dict[int, int | None] = {}
        # token id -> the process found doing its work after its holder died (_work_alive)
        self._work: dict[str, tuple[int, int | None]] = {}
        self._heartbeats = _Heartbeats()

    # -- public API -------------------------------------------------------------------

    def acquire(
        self,
        *,
        run_id: str,
        agent: str,
        timeout: float | None,
        max_concurrent: int | None = None,
        hold_for: float | None = None,
        cancel: threading.Event | None = None,
    ) -> TokenLease:
        """Wait for a token, first come first served across processes, and return its lease.

        ``timeout`` None waits as long as it takes; 0 takes a free token or fails at once.
        ``max_concurrent`` caps the tokens held for ``agent``: a waiter for a saturated
        agent keeps its place in line but does not hold up the waiters behind it.
        ``hold_for`` is how long from now the caller's work may run (its delegation's
        deadline, as a duration so that the caller's clock need not be the pool's): while
        its holder lives, the token is not reclaimed before that deadline plus
        ``DEADLINE_GRACE``, nor before ``token_timeout``. None (the default) keeps the
        plain rule: a live holder is reclaimed after ``token_timeout``. ``cancel``, once
        set (Ctrl-C, `workflow cancel`), ends the wait within ``CANCEL_CHECK`` s.

        Raises ``PoolRefusedError`` (exit 5) when ``queue_limit`` requests already wait,
        ``DelegationTimeoutError`` (exit 4) when no token came within ``timeout``,
        ``AcquireCancelledError`` when ``cancel`` was set first (the ticket is withdrawn).
        """
        pid = self._holder_pid()
        now = self._clock()
        hold_until = None
        if hold_for is not None and not math.isnan(hold_for):
            hold_until = now + min(max(0.0, float(hold_for)), _MAX_HOLD)
        ticket = Ticket(
            id=f"{pid}-{secrets.token_hex(6)}",
            run_id=str(run_id)[:MAX_TEXT] or "?",
            agent=str(agent)[:MAX_TEXT] or "?",
            pid=pid,
            start=self._start_of(pid),
            host=self.host,
            queued_at=now,
            hold_until=hold_until,
            renewed_at=now,
            max_concurrent=max_concurrent if max_concurrent and max_concurrent > 0 else None,
        )
        if not self.settings.enabled:
            return TokenLease(None, Token.granted(ticket, now))
        poll = self._wait_for(ticket, timeout, cancel)
        assert poll.token is not None
        return TokenLease(self, poll.token, renew_every=self._renew_every)

    def note_overload(self) -> None:
        """Count a 429 or 503 from a gateway as one high load sample."""
        if not self.settings.enabled or not self.settings.adaptive:
            return
        self._transact(
            lambda s, t: self.policy.record_sample(s, t, None, "overload", self._pid_alive),
            sample=False,
        )

    def sample(self, load: float | None = None) -> float | None:
        """Take a load sample now (from the load source unless ``load`` is given).

        Sampling also happens by itself, at most once per ``sample_interval``, whenever a
        process acquires or releases; this forces one. Returns the load recorded, or None
        if the source failed or adaptation is off.
        """
        if not self.settings.enabled or not self.settings.adaptive:
            return None
        if load is None:
            load = self._read_load()
            if load is None:
                return None
        value = float(load)
        self._transact(
            lambda s, t: self.policy.record_sample(s, t, value, "loadavg", self._pid_alive),
            sample=False,
        )
        return value

    def status(self) -> dict[str, Any]:
        """Size, mode, tokens in use, queue, recent samples, recent reclamations, settings.

        Reclaims tokens of dead holders first so the answer is true; takes no load sample.
        Does not create the store when it does not exist yet.
        """
        settings = self.settings.to_dict()

        def view(state: PoolState, now: float) -> dict[str, Any]:
            shares = None
            if self.policy.shared:
                hosts = {self.host, *state.shares, *(e.host for e in state.tokens)}
                hosts.update(e.host for e in state.queue)
                shares = {h: self.policy.share(state, h) for h in hosts}
            return status_view(
                state,
                now,
                where=self.store.location,
                enabled=self.settings.enabled,
                settings=settings,
                host=self.host,
                shares=shares,
            )

        if not self.settings.enabled or not self.store.exists():
            return view(decode(None, self.settings, host=self.host)[0], self._clock())
        return self._transact(view, sample=False)

    def reclaimed(self) -> list[dict[str, Any]]:
        """Recently reclaimed tokens: ``run_id``, ``agent``, ``pid``, ``reason``
        (dead|timeout|deadline|expired), ``at`` and ``held_s``, oldest first."""
        if not self.settings.enabled or not self.store.exists():
            return []
        return self._transact(lambda s, t: [reclaim_json(r) for r in s.reclaimed], sample=False)

    def close(self) -> None:
        """Close what the store holds open (reopened if the pool is used again).

        Call it when no thread is waiting in ``acquire``.
        """
        self.store.close()

    def __enter__(self) -> TokenPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- waiting --------------------------------------------------------------------------

    def _wait_for(
        self, ticket: Ticket, timeout: float | None, cancel: threading.Event | None = None
    ) -> Poll:
        """Queue ``ticket`` and wait for its grant; never leaves a ticket behind. A set
        ``cancel`` ends the wait (looked at every ``CANCEL_CHECK`` s at the most)."""
        started = time.monotonic()
        deadline = None if timeout is None else started + max(0.0, timeout)
        granted = False
        try:
            poll = self._enqueue(ticket)
            feed = self.store.changes() if poll.outcome is PollOutcome.WAITING else None
            backoff = _Backoff(self._sleep)
            seen = 0
            if feed is not None:
                # A grant between our enqueue and the feed would go unnoticed: look again.
                seen = feed.generation()
                poll = self._glance(ticket, poll)
            last_full = time.monotonic()
            while poll.outcome is not PollOutcome.GRANTED:
                _raise_if_cancelled(ticket, cancel)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    poll = self._give_up(ticket, timeout)
                    break
                limit = FULL_CHECK if remaining is None else min(remaining, FULL_CHECK)
                if cancel is not None:
                    limit = min(limit, CANCEL_CHECK)
                if feed is not None:
                    woken = feed.wait(seen, limit)
                    seen = feed.generation()
                else:
                    backoff.wait(limit)
                    woken = False
                if woken or feed is None:
                    poll = self._glance(ticket, poll)
                    if poll.outcome is PollOutcome.GRANTED:
                        break
                mono = time.monotonic()
                if mono - last_full < FULL_CHECK:
                    continue  # not granted, and no time-based check is due
                last_full = mono
                poll = self._transact(lambda s, t: self.policy.poll(s, t, ticket, self._pid_alive))
            granted = True
        finally:
            if not granted:
                # Interrupted (Ctrl-C, an error): never leave a ticket or a token behind.
                self._abandon(ticket.id)
        return poll

    def _enqueue(self, ticket: Ticket) -> Poll:
        """Queue ``ticket``: its ``Poll`` (granted or waiting). ``PoolRefusedError`` when
        the policy refuses it."""
        policy, alive = self.policy, self._pid_alive
        poll = self._transact(lambda s, t: policy.enqueue(s, t, ticket, alive))
        if poll.outcome is PollOutcome.REFUSED:
            raise PoolRefusedError(
                f"token pool refused run `{ticket.run_id}` (agent `{ticket.agent}`): "
                f"{poll.detail}",
                agent=ticket.agent,
            )
        return poll

    def _give_up(self, ticket: Ticket, timeout: float | None) -> Poll:
        """At the deadline: take ``ticket`` out of the queue, and return its grant if it
        got one meanwhile; else ``DelegationTimeoutError`` with the advice that fits."""
        poll = self._transact(lambda s, t: self.policy.cancel(s, t, ticket.id))
        if poll.outcome is PollOutcome.GRANTED:
            return poll
        advice = (
            "Wait for the load to fall, or raise `pool.emergency_load` if this "
            "load is normal for the host"
            if "emergency mode" in poll.detail
            else "Raise the timeout or `pool.max_tokens`"
        )
        raise DelegationTimeoutError(
            f"no pool token for run `{ticket.run_id}` (agent `{ticket.agent}`) "
            f"within {_seconds(timeout or 0.0)} s: {poll.detail}. {advice}, or see "
            "`orchestrate pool status`.",
            agent=ticket.agent,
        )

    def _glance(self, ticket: Ticket, poll: Poll) -> Poll:
        """``poll``, or the grant of ``ticket`` if the stored state (read without the
        lock) lists its token: a waiter learns of its grant without taking the lock."""
        raw = self.store.peek()
        if not granted_hint(raw, ticket.id):
            return poll
        token = granted_token(raw, ticket.id, host=self.host)
        return poll if token is None else Poll(PollOutcome.GRANTED, token)

    def _abandon(self, ticket_id: str) -> None:
        try:
            self._transact(
                lambda s, t: self.policy.abandon(s, t, ticket_id, self._pid_alive), sample=False
            )
        except ConfigError:
            pass  # the store is gone; a dead ticket is swept by the next process anyway

    def _release(self, token_id: str) -> str | None:
        return self._transact(lambda s, t: self.policy.release(s, t, token_id, self._pid_alive))

    def _renew(self, token_id: str) -> bool:
        return self._transact(lambda s, t: self.policy.renew(s, t, token_id), sample=False)

    # -- one transaction ------------------------------------------------------------------

    def _transact(self, op: Callable[[PoolState, float], _T], *, sample: bool = True) -> _T:
        """Run ``op(state, now)`` in a store transaction after housekeeping (and a load
        sample when one is due); store the state if anything changed, and wake the
        waiters if a waiting request was granted."""
        policy = self.policy

        def step(raw: bytes) -> tuple[_T, bytes | None, bool]:
            state, repaired = decode(parse(raw), self.settings, host=self.host)
            if repaired and raw:
                state.repairs += 1
            waiting = {w.id for w in state.queue} if state.queue else None
            now, mono, boot = self._clock(), self._monotonic(), boot_id()
            policy.correct_jump(state, now, mono, boot)
            due = sample and policy.sample_due(state, now)
            load = self._read_load() if due else None
            policy.housekeep(
                state, now, self._pid_alive, sampled=due, load=load, work_alive=self._work_alive
            )
            result = op(state, now)
            # The clock pair is renewed only with a write that happens anyway, so a look
            # at the pool writes nothing (and wakes no waiter).
            stamp = None if boot is None else ClockPair(wall=now, mono=mono, boot=boot)
            out = encode_changed(state, raw, stamp)
            # Waiters are woken only when one of them was granted a token (by this event or
            # by the housekeeping before it): the rest of the changes concern none of them.
            wake = waiting is not None and any(t.id in waiting for t in state.tokens)
            return result, out, wake

        return self.store.transact(step)

    def _read_load(self) -> float | None:
        try:
            value = float(self._load_source())
        except Exception:  # noqa: BLE001 - a broken load source must not stop delegations
            return None
        return value if math.isfinite(value) else None

    def _holder_pid(self) -> int:
        return self._fixed_pid if self._fixed_pid is not None else os.getpid()

    def _start_of(self, pid: int) -> int | None:
        if pid not in self._starts:
            self._starts[pid] = start_time(pid)
        return self._starts[pid]

    def _work_alive(self, tok: Token) -> bool:
        """A process of this host still does ``tok``'s work (``work_of``): the process
        found last time while it lives, else a new look at ``/proc``."""
        known = self._work.get(tok.id)
        if known is not None and pid_alive(*known):
            return True
        for pid, start in work_of(tok.run_id):
            if pid_alive(pid, start):
                if len(self._work) >= 256:
                    self._work.clear()
                self._work[tok.id] = (pid, start)
                return True
        self._work.pop(tok.id, None)
        return False

    def _pid_alive(self, pid: int, start: int | None) -> bool:
        me = os.getpid()
        if pid == me and start == self._start_of(me):
            return True  # ourselves: no need to ask the kernel
        return pid_alive(pid, start)
