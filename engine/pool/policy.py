"""The pool's rules as pure transitions of a ``PoolState``: no IO, no clock reads.

Every transition takes the time as ``now`` and the facts it cannot know as arguments:
``pid_alive(pid, start)`` answers for holders on this host (the caller asks the kernel),
and a load sample is a number given to ``record_sample``. So a table of (state, event)
-> (state, grants) tests the rules, and any storage (a file, a database row) applies them
the same way.

Liveness of a holder:

* on this host (``host`` equal to the policy's): its PID is alive and is the same process
  (start time); a dead holder's token is reclaimed at once (``dead``);
* on another host: it renewed its lease within ``lease_ttl``; else ``expired``.

A live holder keeps its token for ``token_timeout`` and, if it gave its delegation's
deadline, until ``DEADLINE_GRACE`` after that deadline, whichever is later.

Adapting the size (``shared`` False: one host): every load sample moves the pool's one
size. On a store shared by hosts (``shared`` True) each host's samples move only that
host's ``Share`` (its size, emergency mode and streaks, keyed by host identity), a host's
tickets are granted only while its holders hold fewer tokens than its share, and
``max_tokens`` caps the tokens of all hosts together; within those limits the queue is
served first come, first served across hosts (issue 15: "each host adapts its share to
its own load").
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from engine.pool.settings import PoolMode, PoolSettings
from engine.pool.state import (
    AGREED_KEYS,
    MAX_RECLAIMED,
    MAX_SAMPLES,
    Agreed,
    ClockPair,
    PoolState,
    Reclaim,
    Sample,
    Share,
    Ticket,
    Token,
    holder_fields,
)

__all__ = ["DEADLINE_GRACE", "PidAlive", "Poll", "PollOutcome", "PoolPolicy"]

#: A live holder that gave its delegation's deadline keeps its token until this long after
#: that deadline: the delegation records its timeout and releases at the deadline, and on a
#: busy host that can take a few seconds. Past it (and past ``token_timeout``) the holder
#: is wedged and the token is reclaimed with reason ``deadline``.
DEADLINE_GRACE = 60.0
#: Dead waiters are swept from the queue at most this often (seconds on the pool clock).
QUEUE_SWEEP = 1.0
#: A difference between wall-clock and monotonic time elapsed since the last write larger
#: than this is a wall-clock jump (NTP slewing stays far below it).
JUMP_TOLERANCE = 2.0
#: On a shared store, the share of a host that holds and awaits nothing and has not
#: sampled for this long (seconds) is dropped: if it comes back it starts at ``max_tokens``.
SHARE_IDLE = 3600.0

#: ``pid_alive(pid, start)``: is this host's process ``pid`` (started at ``start``) alive?
PidAlive = Callable[[int, "int | None"], bool]


class PollOutcome(enum.Enum):
    """What a request for a token came to."""

    GRANTED = "granted"  # the ticket is a token now
    WAITING = "waiting"  # still in the queue
    REFUSED = "refused"  # the queue is full: not queued


@dataclass
class Poll:
    """The answer to a request: its outcome, the token when granted, why when refused."""

    outcome: PollOutcome
    token: Token | None = None
    detail: str = ""


def _num_text(value: float) -> str:
    return str(int(value)) if value.is_integer() else f"{value:g}"


class _Liveness:
    """Liveness of the holders of one transition, asking ``pid_alive`` once per process."""

    def __init__(self, policy: PoolPolicy, now: float, pid_alive: PidAlive) -> None:
        self._host = policy.host
        self._ttl = policy.settings.lease_ttl
        self._now = now
        self._pid_alive = pid_alive
        self._seen: dict[tuple[int, int | None], bool] = {}

    def __call__(self, entry: Token | Ticket) -> bool:
        if entry.host != self._host:
            return self._now - entry.renewed_at <= self._ttl
        key = (entry.pid, entry.start)
        alive = self._seen.get(key)
        if alive is None:
            alive = self._seen[key] = self._pid_alive(*key)
        return alive


class PoolPolicy:
    """The rules of the pool for one host: grant, reclaim, adapt the size, queue, release.

    ``host`` identifies the holders whose PIDs ``pid_alive`` can check; everyone else is
    alive while they renew within ``settings.lease_ttl``. ``shared`` (the store is shared
    by hosts): each host adapts its own share (see the module's docstring); every host
    must then use the same ``max_tokens``, the cap of all hosts' tokens together.
    """

    def __init__(self, settings: PoolSettings, *, host: str, shared: bool = False) -> None:
        self.settings = settings
        self.host = host
        self.shared = shared

    # -- shares -------------------------------------------------------------------------

    def share(self, state: PoolState, host: str) -> Share:
        """``host``'s share on a shared store: its stored one, else a fresh one at
        ``max_tokens`` (not added to ``state``)."""
        found = state.shares.get(host)
        return found if found is not None else Share(size=self.settings.max_tokens)

    def _adapting(self, state: PoolState) -> PoolState | Share:
        """What this host's load samples move: the pool (one host) or this host's share
        (added to ``state`` if it had none)."""
        if not self.shared:
            return state
        found = state.shares.get(self.host)
        if found is None:
            found = state.shares[self.host] = Share(size=self.settings.max_tokens)
        return found

    # -- time ---------------------------------------------------------------------------

    def correct_jump(self, state: PoolState, now: float, mono: float, boot: str | None) -> None:
        """Shift the stored times by a wall-clock jump since the last write.

        The last write recorded the wall and monotonic times; the monotonic clock is
        host-wide and never jumps, so wall time elapsed minus monotonic time elapsed is the
        jump. Only within one boot: after a reboot the monotonic clock starts over (and
        every holder is dead anyway). Older state files have no pair: nothing to correct.
        """
        pair = state.clock
        if pair is None or pair.boot != boot:
            return
        jump = (now - pair.wall) - (mono - pair.mono)
        if abs(jump) <= JUMP_TOLERANCE:
            return
        entries: list[Token | Ticket] = [*state.tokens, *state.queue]
        for entry in entries:
            entry.queued_at += jump
            entry.renewed_at += jump
            if entry.hold_until is not None:
                entry.hold_until += jump
            if isinstance(entry, Token):
                entry.acquired_at += jump
        adapted_all: list[PoolState | Share] = [state, *state.shares.values()]
        for adapted in adapted_all:
            if adapted.cooldown_until is not None:
                adapted.cooldown_until += jump
            if adapted.last_sample_at is not None:
                adapted.last_sample_at += jump
        state.last_sweep += jump
        state.clock = ClockPair(wall=now, mono=mono, boot=pair.boot)

    # -- housekeeping -------------------------------------------------------------------

    def overdue(self, tok: Token, now: float) -> str | None:
        """Why a live holder's token is taken back now (``timeout``/``deadline``), or None.

        A live holder keeps its token for ``token_timeout`` and, if it gave its
        delegation's deadline, until ``DEADLINE_GRACE`` after that deadline, whichever
        is later: a step allowed 900 s is not cut off at 300 s.
        """
        limit, reason = tok.acquired_at + self.settings.token_timeout, "timeout"
        if tok.hold_until is not None and tok.hold_until + DEADLINE_GRACE > limit:
            limit, reason = tok.hold_until + DEADLINE_GRACE, "deadline"
        return reason if now > limit else None

    def housekeep(
        self,
        state: PoolState,
        now: float,
        pid_alive: PidAlive,
        *,
        sampled: bool = False,
        load: float | None = None,
        work_alive: Callable[[Token], bool] | None = None,
    ) -> None:
        """Reclaim dead and overdue tokens, sweep dead waiters, end a finished cooldown,
        apply the load sample (``sampled``: one was due; ``load`` None: the source
        failed), grant. Runs before every event.

        ``work_alive(token)``: is the work of this host's token still running although
        its holder died (the local gateway's agent for that delegation, which outlives a
        ``kill -9`` of its caller)? Such a token is kept, still bound by ``overdue``, so
        the pool never runs more agents than ``max_tokens`` (docs/pool.md, "Reclamation")."""
        alive = _Liveness(self, now, pid_alive)
        self._reclaim(state, now, alive, work_alive)
        if abs(now - state.last_sweep) >= QUEUE_SWEEP:
            state.last_sweep = now
            state.queue = [w for w in state.queue if alive(w)]
            if state.shares:
                self._drop_idle_shares(state, now)
        ending: list[PoolState | Share] = (
            [state, *state.shares.values()] if self.shared else [state]
        )
        for adapted in ending:
            if adapted.mode is PoolMode.EMERGENCY:
                # Never longer than one cooldown from now, whatever the clock did meanwhile.
                until = min(adapted.cooldown_until or 0, now + self.settings.cooldown)
                adapted.cooldown_until = until
                if now >= until:
                    adapted.mode = PoolMode.NORMAL
                    adapted.cooldown_until = None
        if sampled:
            if load is None:
                # count the interval, change nothing else
                self._adapting(state).last_sample_at = now
            else:
                self.record_sample(state, now, load, "loadavg", pid_alive)
        self._grant(state, now, alive)


    def _reclaim(
        self,
        state: PoolState,
        now: float,
        alive: _Liveness,
        work_alive: Callable[[Token], bool] | None,
    ) -> None:
        """``housekeep``'s first part: drop dead and overdue tokens, each noted in
        ``state.reclaimed`` (the newest ``MAX_RECLAIMED``)."""
        kept = []
        for tok in state.tokens:
            if tok.acquired_at > now:
                # The clock went back (a state file without a clock pair to correct it):
                # restart the hold rather than keep it for the length of the jump.
                back = tok.acquired_at - now
                tok.acquired_at = now
                tok.renewed_at = min(tok.renewed_at, now)
                if tok.hold_until is not None:
                    tok.hold_until -= back
            if alive(tok) or (
                tok.host == self.host and work_alive is not None and work_alive(tok)
            ):
                reason = self.overdue(tok, now)
            else:
                reason = "dead" if tok.host == self.host else "expired"
            if reason is None:
                kept.append(tok)
                continue
            state.reclaimed.append(
                Reclaim(
                    token_id=tok.id,
                    run_id=tok.run_id,
                    agent=tok.agent,
                    pid=tok.pid,
                    reason=reason,
                    at=now,
                    held_s=round(max(0.0, now - tok.acquired_at), 3),
                )
            )
        if len(kept) != len(state.tokens):
            state.tokens = kept
            state.reclaimed = state.reclaimed[-MAX_RECLAIMED:]

    def _drop_idle_shares(self, state: PoolState, now: float) -> None:
        """Forget the shares of hosts that hold and await nothing and have not sampled
        for ``SHARE_IDLE`` seconds (never this host's, nor one in its cooldown)."""
        busy = {e.host for e in state.tokens} | {e.host for e in state.queue} | {self.host}
        for host in [h for h in state.shares if h not in busy]:
            share = state.shares[host]
            last = share.last_sample_at
            idle = last is None or abs(now - last) >= SHARE_IDLE
            if idle and share.mode is PoolMode.NORMAL:
                del state.shares[host]

    # -- load ---------------------------------------------------------------------------

    def sample_due(self, state: PoolState, now: float) -> bool:
        """Is an automatic load sample due (at most one per ``sample_interval``)? On a
        shared store: one of this host's."""
        if not self.settings.adaptive:
            return False
        last = self.share(state, self.host).last_sample_at if self.shared else state.last_sample_at
        return last is None or now - last >= self.settings.sample_interval or now < last

    def record_sample(
        self,
        state: PoolState,
        now: float,
        load: float | None,
        source: str,
        pid_alive: PidAlive,
    ) -> list[str]:
        """Apply one load sample (None with source ``overload`` for a 429/503): emergency,
        streaks, size; of the pool, or on a shared store of this host's share only.
        Returns the ids of tickets granted because the pool (or the share) grew."""
        cfg = self.settings
        taken = Sample(at=now, load=load, source=source, host=self.host if self.shared else None)
        state.samples = [*state.samples, taken][-MAX_SAMPLES:]
        mine = self._adapting(state)
        if source == "loadavg":
            mine.last_sample_at = now
        if load is not None and load > cfg.emergency_load:
            mine.mode = PoolMode.EMERGENCY
            mine.cooldown_until = now + cfg.cooldown
            mine.size = cfg.min_tokens
            mine.low = mine.high = 0
            return []
        if mine.mode is PoolMode.EMERGENCY:
            mine.low = mine.high = 0  # no adapting until the cooldown is over
            return []
        if load is None or load > cfg.load_high:
            mine.high += 1
            mine.low = 0
        elif load < cfg.load_low:
            mine.low += 1
            mine.high = 0
        else:
            mine.low = mine.high = 0
        if mine.high >= cfg.hysteresis:
            mine.size = max(cfg.min_tokens, mine.size - 1)
            mine.high = 0
        elif mine.low >= cfg.hysteresis:
            mine.size = min(cfg.max_tokens, mine.size + 1)
            mine.low = 0
            return self._grant(state, now, _Liveness(self, now, pid_alive))
        return []

    # -- requests -----------------------------------------------------------------------

    def _grant(
        self,
        state: PoolState,
        now: float,
        alive: Callable[[Ticket], bool],
        *,
        own: str | None = None,
    ) -> list[str]:
        """Turn the first eligible tickets into tokens while tokens are free, in order.

        Tokens are free while fewer than the pool's size are held (on a shared store:
        fewer than ``max_tokens`` by all hosts together; a pool in emergency mode grants
        none); a ticket held back by its agent or host (``_held_back``) keeps its place.
        A ticket of a dead holder is dropped, not granted; ``own`` is the caller's ticket,
        alive by definition. Returns the ids granted.
        """
        if not state.queue:
            return []
        if self.shared:
            free = self.settings.max_tokens - len(state.tokens)
        elif state.mode is PoolMode.EMERGENCY:
            return []
        else:
            free = state.size - len(state.tokens)
        per_agent = Counter(tok.agent for tok in state.tokens)
        per_host = Counter(tok.host for tok in state.tokens)
        granted: list[str] = []
        remaining = []
        for ticket in state.queue:
            if free <= 0 or self._held_back(state, ticket, per_agent, per_host):
                remaining.append(ticket)  # keeps its place, does not hold up the others
                continue
            if ticket.id != own and not alive(ticket):
                continue  # its holder died while waiting: never grant it a token
            state.tokens.append(Token.granted(ticket, now))
            granted.append(ticket.id)
            per_agent[ticket.agent] += 1
            per_host[ticket.host] += 1
            free -= 1
        state.queue = remaining
        return granted

    def _held_back(
        self,
        state: PoolState,
        ticket: Ticket,
        per_agent: Counter[str],
        per_host: Counter[str],
    ) -> bool:
        """True for a ticket that waits though tokens are free: its agent holds its cap
        (``max_concurrent``), or, on a shared store, its host's share is in emergency mode
        or its host's holders fill the share's size."""
        cap = ticket.max_concurrent
        if cap is not None and per_agent[ticket.agent] >= cap:
            return True
        share = state.shares.get(ticket.host) if self.shared else None
        return share is not None and (
            share.mode is PoolMode.EMERGENCY or per_host[ticket.host] >= share.size
        )

    def grant(self, state: PoolState, now: float, pid_alive: PidAlive) -> list[str]:
        """Grant free tokens to the tickets at the head of the queue; the ids granted."""
        return self._grant(state, now, _Liveness(self, now, pid_alive))

    @staticmethod
    def _find(state: PoolState, ticket_id: str) -> Poll | None:
        for tok in state.tokens:
            if tok.id == ticket_id:
                return Poll(PollOutcome.GRANTED, tok)
        return None

    def why_waiting(self, state: PoolState, now: float) -> str:
        """Tokens in use, waiters, and the cooldown left: why a request is not served."""
        adapted: PoolState | Share = state
        if self.shared:
            adapted = self.share(state, self.host)
            mine = sum(1 for t in state.tokens if t.host == self.host)
            why = (
                f"{len(state.tokens)} of {self.settings.max_tokens} tokens in use on all "
                f"hosts, {mine} of this host's share of {adapted.size}, "
                f"{len(state.queue)} waiting"
            )
        else:
            why = f"{len(state.tokens)} of {state.size} tokens in use, {len(state.queue)} waiting"
        if adapted.mode is PoolMode.EMERGENCY:
            left = max(0.0, (adapted.cooldown_until or now) - now)
            why += (
                f", and the pool is in emergency mode: this host's load was above "
                f"`pool.emergency_load` ({self.settings.emergency_load:g}), so no token is "
                f"granted until its cooldown ends in {left:.0f} s"
            )
        return why

    def agree(self, state: PoolState, now: float) -> None:
        """Hold this pool object's ``pool:`` settings (``AGREED_KEYS``) to the ones the
        pool's users agreed on: the first one's, or the last one's to ask while the pool
        was idle (no token held, nobody waiting: nothing depends on the old ones). The
        users are the hosts of a shared store, or the configs that share one file pool
        (two configs with one ``handoffs_dir``) on a host-local store.

        Raises ``ConfigError`` (exit code 2) naming each setting that differs, while the
        pool is in use under other settings: its cap would otherwise depend on who asks
        (docs/pool.md).
        """
        current = state.agreed
        if current is not None and not current.differences(self.settings):
            return
        if current is None or (not state.tokens and not state.queue):
            state.agreed = Agreed.of(self.settings, host=self.host, at=now)
            return
        from engine.errors import ConfigError

        diffs = ", ".join(
            f"`pool.{k}` is {_num_text(given)} here but {_num_text(agreed)} there"
            for k, agreed, given in current.differences(self.settings)
        )
        if self.shared:
            raise ConfigError(
                f"the shared token pool is in use under other settings: {diffs} (the "
                f"settings of host `{current.by}`). Give every host the same `pool:` settings "
                f"({', '.join(AGREED_KEYS)}); a pool takes new ones once no token is held and "
                "nobody waits."
            )
        raise ConfigError(
            f"the token pool `{self.settings.dir}` is in use under other settings: {diffs} "
            "(another config with the same `handoffs_dir`, or `pool.dir`, uses it). Give "
            f"every config that shares it the same `pool:` settings ({', '.join(AGREED_KEYS)}), "
            "or give each its own `handoffs_dir`; a pool takes new ones once no token is held "
            "and nobody waits."
        )

    def enqueue(self, state: PoolState, now: float, ticket: Ticket, pid_alive: PidAlive) -> Poll:
        """A new request: granted at once if a token is free and nobody is ahead, else
        queued at the end, or refused when ``queue_limit`` requests already wait.

        The settings must be the agreed ones (``agree``)."""
        self.agree(state, now)
        alive = _Liveness(self, now, pid_alive)
        if ticket.hold_until is not None:  # the deadline moves with the clock reading
            ticket.hold_until += now - ticket.queued_at
        ticket.queued_at = ticket.renewed_at = now  # the grant's clock reading: no wait is none
        state.queue.append(_copy(ticket))
        self._grant(state, now, alive, own=ticket.id)
        found = self._find(state, ticket.id)
        if found is not None:
            return found
        limit = self.settings.queue_limit
        if len(state.queue) > limit:
            # Before refusing, make sure the line is not full of dead processes.
            state.queue = [w for w in state.queue if w.id == ticket.id or alive(w)]
        if len(state.queue) > limit:
            state.queue = [w for w in state.queue if w.id != ticket.id]
            if limit == 0:
                detail = (
                    f"no token is free ({self.why_waiting(state, now)}) and "
                    "`pool.queue_limit` is 0, so nobody may wait. Try again later or raise "
                    "`pool.queue_limit`."
                )
            else:
                detail = (
                    f"the wait queue is full ({len(state.queue)} requests waiting, "
                    f"`pool.queue_limit` is {limit}). Try again later, or raise "
                    "`pool.queue_limit` or `pool.max_tokens`."
                )
            return Poll(PollOutcome.REFUSED, detail=detail)
        return Poll(PollOutcome.WAITING)

    def poll(self, state: PoolState, now: float, ticket: Ticket, pid_alive: PidAlive) -> Poll:
        """Has the request been granted? A waiter's ticket is renewed (at most every half
        ``lease_ttl``), and requeued in its old place if a repaired state lost it."""
        found = self._find(state, ticket.id)
        if found is not None:
            return found
        for waiting in state.queue:
            if waiting.id == ticket.id:
                if now - waiting.renewed_at >= self.settings.lease_ttl / 2:
                    waiting.renewed_at = now
                return Poll(PollOutcome.WAITING)
        for rec in state.reclaimed:
            if rec.token_id == ticket.id:
                # Granted, then reclaimed before we looked: ours, already taken back;
                # the lease's release will report why.
                token = Token.granted(ticket, rec.at - rec.held_s)
                return Poll(PollOutcome.GRANTED, token)
        # Our ticket vanished (a repaired state): queue again in our old place.
        later = [i for i, w in enumerate(state.queue) if w.queued_at > ticket.queued_at]
        mine = _copy(ticket)
        mine.renewed_at = now
        state.queue.insert(later[0] if later else len(state.queue), mine)
        self._grant(state, now, _Liveness(self, now, pid_alive), own=ticket.id)
        found = self._find(state, ticket.id)
        return found if found is not None else Poll(PollOutcome.WAITING)

    def cancel(self, state: PoolState, now: float, ticket_id: str) -> Poll:
        """The waiter gives up at its deadline: leave the queue, unless granted meanwhile."""
        found = self._find(state, ticket_id)
        if found is not None:
            return found
        state.queue = [w for w in state.queue if w.id != ticket_id]
        return Poll(PollOutcome.WAITING, detail=self.why_waiting(state, now))

    def abandon(self, state: PoolState, now: float, ticket_id: str, pid_alive: PidAlive) -> None:
        """The waiter was interrupted: drop its ticket, or its token if it was granted."""
        state.queue = [w for w in state.queue if w.id != ticket_id]
        state.tokens = [t for t in state.tokens if t.id != ticket_id]
        self.grant(state, now, pid_alive)

    def release(
        self, state: PoolState, now: float, token_id: str, pid_alive: PidAlive
    ) -> str | None:
        """Give a token back and grant it on. None, or why it was no longer held (the
        reclaim reason, or ``lost`` if a repaired state had forgotten it)."""
        before = len(state.tokens)
        state.tokens = [t for t in state.tokens if t.id != token_id]
        reason = None
        if len(state.tokens) == before:
            for rec in reversed(state.reclaimed):
                if rec.token_id == token_id:
                    reason = rec.reason
                    break
            else:
                reason = "lost"  # not held and not on record: the state was repaired
        self.grant(state, now, pid_alive)
        return reason

    def renew(self, state: PoolState, now: float, token_id: str) -> bool:
        """The holder is alive: its token's ``renewed_at`` is now. False if not held."""
        for tok in state.tokens:
            if tok.id == token_id:
                tok.renewed_at = now
                return True
        return False


def _copy(ticket: Ticket) -> Ticket:
    return Ticket(**holder_fields(ticket), max_concurrent=ticket.max_concurrent)
