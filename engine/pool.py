"""The adaptive token pool shared by every process on the host (seed 000).

Every delegation, and so every workflow step, holds one token from dispatch until its
handoff is recorded. The pool is a directory (default ``<handoffs_dir>/.pool/``) holding
``lock`` and ``state.json``; every change happens under an exclusive ``flock`` on ``lock``
and is written atomically (a complete temp file renamed into place), so any number of
processes share it and a crash never leaves a half-written state behind.

Example::

    settings = PoolSettings(dir=Path("handoffs/.pool"), max_tokens=3)
    pool = TokenPool(settings)
    with pool.acquire(run_id="orch-20250101T000000-0000abcd", agent="webster", timeout=60):
        ...  # dispatch, wait for the handoff, record it

What makes a leaked ("zombie") token impossible:

* a token records its holder's PID and process start time (``/proc/<pid>/stat`` field
  22); whenever any process looks at the pool, a token whose holder is gone (no such PID,
  a zombie, or the PID now belongs to a younger process) is reclaimed at once;
* a live holder keeps its token while its delegation may still be running: the lease
  records the delegation's deadline (``acquire(hold_for=...)``), and the token is reclaimed
  only once the holder is past both ``token_timeout`` and that deadline plus
  ``DEADLINE_GRACE`` (a holder that gave no deadline: past ``token_timeout``). A
  reclaimed token is listed in ``reclaimed`` with its reason so the engine can mark its
  delegation (its late handoff is still recorded);
* ages are measured on the host's monotonic clock: the state remembers the wall and
  monotonic times of its last write, and a wall-clock jump between two writes shifts every
  stored time by the jump, so setting the clock neither reclaims live tokens early nor
  keeps an emergency cooldown (or an overdue token) for the length of the jump;
* a state file that is not JSON, or has entries of the wrong shape, is repaired (bad
  entries dropped) instead of failing.

Waiters queue first come, first served across processes: a ticket is appended to the
shared queue and whoever changes the pool (a release, a reclamation, a size change)
grants free tokens to the tickets at the head, in order. A waiter sleeps until the state
file is replaced (inotify on the pool directory; polling with a 2-10 ms backoff where
inotify is missing), glances at it without the lock, and takes the lock only when its
ticket has become a token, or every 50 ms to reclaim what dead processes left behind.

The state lives on the local host: processes sharing a pool must share its PID
namespace and filesystem (not NFS between hosts).
"""

from __future__ import annotations

import enum
import fcntl
import json
import math
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from engine.errors import ConfigError, DelegationTimeoutError, PoolRefusedError

if TYPE_CHECKING:
    from engine.config import Config

__all__ = [
    "Lease",
    "PoolMode",
    "PoolSettings",
    "TokenPool",
    "format_status",
    "system_load",
]

_T = TypeVar("_T")

STATE_NAME = "state.json"
LOCK_NAME = "lock"
_TMP_NAME = ".state.tmp"
_STATE_VERSION = 1
#: How many load samples and reclaimed tokens the state keeps for ``status``.
_MAX_SAMPLES = 12
_MAX_RECLAIMED = 20
#: Without inotify, waiters sleep between glances with this backoff (seconds).
_POLL_MIN = 0.002
_POLL_MAX = 0.010
#: A waiter looks at the full state at least this often even when the file is unchanged,
#: because a holder dying or a deadline passing changes nothing on disk.
_FULL_CHECK = 0.05
#: Dead waiters are swept from the queue at most this often (seconds on the pool clock).
_QUEUE_SWEEP = 1.0
#: A live holder that gave its delegation's deadline keeps its token until this long after
#: that deadline: the delegation records its timeout and releases at the deadline, and on a
#: busy host that can take a few seconds. Past it (and past ``token_timeout``) the holder
#: is wedged and the token is reclaimed with reason ``deadline``.
DEADLINE_GRACE = 60.0
#: The longest deadline a lease records (about 30 years): "wait forever" stays finite JSON.
_MAX_HOLD = 1e9
#: A difference between wall-clock and monotonic time elapsed since the last write larger
#: than this is a wall-clock jump (NTP slewing stays far below it).
_JUMP_TOLERANCE = 2.0
#: Why a token was taken back from its holder.
_RECLAIM_REASONS = ("dead", "timeout", "deadline")
_MAX_TEXT = 200

#: Serialises the re-initialisation of pools in a forked child.
_fork_guard = threading.Lock()


def _reset_fork_guard() -> None:
    global _fork_guard
    _fork_guard = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_fork_guard)


class PoolMode(enum.Enum):
    """Whether the pool grants tokens normally or is cooling down after overload."""

    NORMAL = "normal"  # tokens granted up to the current size
    EMERGENCY = "emergency"  # load passed `emergency_load`: size at minimum, no grants


@dataclass(frozen=True, kw_only=True)
class PoolSettings:
    """The ``pool:`` section of ``orchestrator.yaml``; defaults are seed 000's.

    Example::

        PoolSettings(dir=Path("/tmp/pool"), max_tokens=3, adaptive=False)
        PoolSettings.from_config(load_config("orchestrator.yaml"))
    """

    dir: Path
    min_tokens: int = 1
    max_tokens: int = 5
    load_low: float = 2.0
    load_high: float = 3.0
    adaptive: bool = True
    token_timeout: float = 300.0
    emergency_load: float = 5.0
    cooldown: float = 30.0
    queue_limit: int = 50
    hysteresis: int = 3
    sample_interval: float = 5.0
    enabled: bool = True

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.min_tokens < 1:
            problems.append("`pool.min_tokens` must be at least 1.")
        if self.max_tokens < self.min_tokens:
            problems.append("`pool.max_tokens` must not be smaller than `pool.min_tokens`.")
        if self.load_high < self.load_low:
            problems.append("`pool.load_high` must not be smaller than `pool.load_low`.")
        if self.token_timeout <= 0:
            problems.append("`pool.token_timeout` must be more than 0 seconds.")
        if self.cooldown < 0 or self.sample_interval < 0:
            problems.append("`pool.cooldown` and `pool.sample_interval` must not be negative.")
        if self.queue_limit < 0:
            problems.append("`pool.queue_limit` must not be negative.")
        if self.hysteresis < 1:
            problems.append("`pool.hysteresis` must be at least 1.")
        if problems:
            raise ConfigError("invalid token pool settings:", problems=problems)

    @classmethod
    def from_config(cls, cfg: Config) -> PoolSettings:
        """Build settings from ``cfg.pool``; ``dir`` defaults to ``<handoffs_dir>/.pool``.

        A relative ``dir`` is taken relative to the config file's directory.
        """
        raw: dict[str, Any] = dict(cfg.pool or {})
        base = cfg.path.parent if cfg.path is not None else Path.cwd()
        if raw.get("dir"):
            pool_dir = Path(os.path.expanduser(str(raw["dir"])))
            if not pool_dir.is_absolute():
                pool_dir = base / pool_dir
        else:
            pool_dir = cfg.handoffs_dir / ".pool"
        kwargs: dict[str, Any] = {}
        casts: dict[str, Callable[[Any], Any]] = {
            "min_tokens": int,
            "max_tokens": int,
            "load_low": float,
            "load_high": float,
            "adaptive": bool,
            "token_timeout": float,
            "emergency_load": float,
            "cooldown": float,
            "queue_limit": int,
            "hysteresis": int,
            "sample_interval": float,
            "enabled": bool,
        }
        for key, cast in casts.items():
            if key in raw and raw[key] is not None:
                kwargs[key] = cast(raw[key])
        return cls(dir=pool_dir.resolve(), **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values (``dir`` as a string)."""
        data = asdict(self)
        data["dir"] = str(self.dir)
        return data


def system_load() -> float:
    """The host's 1-minute load average (the default load source)."""
    return os.getloadavg()[0]


# -- process identity -------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) from /proc/<pid>/stat, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return fields[0].decode("ascii", "replace"), int(fields[19])
    except (IndexError, ValueError):
        return None


def _start_time(pid: int) -> int | None:
    info = _proc_stat(pid)
    return info[1] if info else None


def _alive(pid: int, start: int | None) -> bool:
    """Is ``pid`` a running process, and the same one that recorded ``start``?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    except OSError:
        return False
    if not os.path.isdir("/proc/self"):
        return True  # no procfs: the signal check is all we have
    info = _proc_stat(pid)
    if info is None:
        return False  # it vanished between the two checks
    state, started = info
    if state in ("Z", "X", "x"):
        return False  # killed and not yet reaped by its parent: it holds nothing
    return start is None or started == start


# -- state ----------------------------------------------------------------------------

_boot: list[str | None] = []


def _boot_id() -> str | None:
    """This boot's id (Linux), read once per process: monotonic times compare within it."""
    if not _boot:
        try:
            with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
                _boot.append(fh.read().strip()[:64] or None)
        except (OSError, ValueError):
            _boot.append(None)
    return _boot[0]


def _clock_pair(raw: Any) -> dict[str, Any] | None:
    """The wall and monotonic times of the last write, if well-formed and from a known boot."""
    if not isinstance(raw, dict):
        return None
    wall, mono, boot = _num(raw.get("wall")), _num(raw.get("mono")), raw.get("boot")
    if wall is None or mono is None or not isinstance(boot, str) or not boot:
        return None
    return {"wall": wall, "mono": mono, "boot": boot[:64]}


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _pos_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None
    return value


def _text(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return value[:_MAX_TEXT]


def _clean_entry(raw: Any, *, ticket: bool) -> dict[str, Any] | None:
    """A token (or queue ticket) with the right types, or None if it cannot be one."""
    if not isinstance(raw, dict):
        return None
    entry_id, run_id, agent = _text(raw.get("id")), _text(raw.get("run_id")), raw.get("agent")
    pid, queued_at = _pos_int(raw.get("pid")), _num(raw.get("queued_at"))
    start = raw.get("start")
    if entry_id is None or run_id is None or pid is None or queued_at is None:
        return None
    if start is not None and (isinstance(start, bool) or not isinstance(start, int) or start < 0):
        return None
    entry: dict[str, Any] = {
        "id": entry_id,
        "run_id": run_id,
        "agent": _text(agent) or "?",
        "pid": pid,
        "start": start,
        "queued_at": queued_at,
        # The delegation's deadline on the pool clock; absent in older state files (and
        # for callers that gave none): then only ``token_timeout`` bounds a live holder.
        "hold_until": _num(raw.get("hold_until")),
    }
    if ticket:
        entry["max_concurrent"] = _pos_int(raw.get("max_concurrent"))
    else:
        acquired = _num(raw.get("acquired_at"))
        if acquired is None:
            return None
        entry["acquired_at"] = acquired
    return entry


def _clean_list(raw: Any, *, ticket: bool) -> tuple[list[dict[str, Any]], bool]:
    if not isinstance(raw, list):
        return [], raw is not None
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for item in raw:
        entry = _clean_entry(item, ticket=ticket)
        if entry is None or entry["id"] in seen:
            continue
        seen.add(entry["id"])
        out.append(entry)
    return out, len(out) != len(raw)


class _Outcome(enum.Enum):
    GRANTED = "granted"
    WAITING = "waiting"
    REFUSED = "refused"


@dataclass
class _Poll:
    outcome: _Outcome
    token: dict[str, Any] | None = None
    detail: str = ""


class _Watch:
    """One inotify watch on the pool directory per pool object, shared by its waiting
    threads: whichever thread reads the events bumps a generation the others wait on.

    Kept open until ``TokenPool.close()``: closing an inotify instance waits for a kernel
    grace period (milliseconds), too slow to pay on every wait.
    """

    def __init__(self, directory: Path) -> None:
        from inotify_simple import INotify, flags

        self._ino = INotify()
        try:
            self._ino.add_watch(str(directory), flags.MOVED_TO)
        except OSError:
            self._ino.close()
            raise
        self._cond = threading.Condition()
        self._gen = 0
        self._reading = False

    def generation(self) -> int:
        with self._cond:
            return self._gen

    def wait(self, seen: int, limit: float) -> bool:
        """Wait up to ``limit`` s for a state change after generation ``seen``."""
        deadline = time.monotonic() + limit
        with self._cond:
            while self._gen == seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if self._reading:
                    self._cond.wait(left)
                    continue
                self._reading = True
                self._cond.release()
                events: list[Any] = []
                try:
                    events = self._ino.read(timeout=max(1, math.ceil(min(left, _FULL_CHECK) * 1e3)))
                except (OSError, ValueError):
                    pass  # closed under us: behave like a timeout
                finally:
                    self._cond.acquire()
                    self._reading = False
                if events:
                    self._gen += 1
                self._cond.notify_all()
            return True

    def close(self) -> None:
        self._ino.close()


class _Backoff:
    """Polling for systems without inotify: sleep 2 ms, growing to 10 ms."""

    def __init__(self, sleep: Callable[[float], None]) -> None:
        self._sleep = sleep
        self._delay = _POLL_MIN

    def wait(self, limit: float) -> None:
        self._sleep(min(self._delay, max(0.0, limit)))
        self._delay = min(self._delay * 1.5, _POLL_MAX)


class Lease:
    """One token held by a delegation; a context manager, ``release()`` is idempotent.

    ``waited_s`` is the time spent queued; ``hold_until`` the delegation's deadline on the
    pool clock (None if the caller gave none). After ``release()``, ``reclaimed_reason`` is
    ``"dead"``, ``"timeout"`` or ``"deadline"`` if the pool had already taken the token back
    (``"lost"`` if a repaired state file had forgotten it), else None.
    """

    def __init__(
        self,
        pool: TokenPool | None,
        token: dict[str, Any],
    ) -> None:
        self._pool = pool
        self.token_id: str = token["id"]
        self.run_id: str = token["run_id"]
        self.agent: str = token["agent"]
        self.pid: int = token["pid"]
        self.acquired_at: float = token.get("acquired_at", 0.0)
        self.waited_s: float = max(0.0, self.acquired_at - token.get("queued_at", 0.0))
        self.hold_until: float | None = token.get("hold_until")
        self.reclaimed_reason: str | None = None
        self._released = pool is None
        self._guard = threading.Lock()

    @property
    def released(self) -> bool:
        """True once ``release()`` has run (or for a disabled pool's lease)."""
        return self._released

    def release(self) -> None:
        """Give the token back (and hand it to the next waiter); safe to call twice.

        Never raises, because it runs in ``finally`` blocks: if the pool directory has
        become unusable, the token stays recorded until this process exits, and is then
        reclaimed like any dead holder's (``reclaimed_reason`` is ``"unreleased"``).
        """
        with self._guard:
            if self._released:
                return
            self._released = True
        assert self._pool is not None
        try:
            self.reclaimed_reason = self._pool._release(self.token_id)
        except ConfigError:
            self.reclaimed_reason = "unreleased"

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Lease(run_id={self.run_id!r}, agent={self.agent!r}, token_id={self.token_id!r})"


class TokenPool:
    """A host-wide, load-adaptive limit on concurrent delegations, kept in ``settings.dir``.

    ``load_source`` returns the 1-minute load average, ``clock`` timestamps the shared
    state (ages, timeouts, cooldown, sample interval) and ``sleep`` paces waiters; all three
    are injectable for tests. ``monotonic`` is the host-wide clock that detects jumps of
    ``clock`` between two writes (default: ``time.monotonic`` with the real ``clock``, and
    the injected ``clock`` itself otherwise, so a fake clock is taken at its word).
    ``pid`` is the holder recorded on tokens (default: the calling process). A waiter
    wakes when the state file is replaced (inotify on the pool directory) or, with
    ``wake="poll"`` or without inotify, polls with a 2-10 ms backoff. A pool object
    may be shared by threads and survives ``fork``.
    """

    def __init__(
        self,
        settings: PoolSettings,
        *,
        load_source: Callable[[], float] = system_load,
        clock: Callable[[], float] = time.time,
        pid: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
        wake: Literal["auto", "poll"] = "auto",
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        if wake not in ("auto", "poll"):
            raise ValueError(f"wake must be 'auto' or 'poll', not {wake!r}")
        self.settings = settings
        self._wake = wake
        self._load_source = load_source
        self._clock = clock
        if monotonic is None:
            monotonic = time.monotonic if clock is time.time else clock
        self._monotonic = monotonic
        self._fixed_pid = pid
        self._sleep = sleep
        self._dir = Path(settings.dir)
        self._state_path = self._dir / STATE_NAME
        self._lock_path = self._dir / LOCK_NAME
        self._tmp_path = self._dir / _TMP_NAME
        self._fd: int | None = None
        self._owner_pid = os.getpid()
        self._tlock = threading.Lock()
        self._starts: dict[int, int | None] = {}
        self._watch: _Watch | None = None
        self._watch_lock = threading.Lock()

    # -- public API -------------------------------------------------------------------

    def acquire(
        self,
        *,
        run_id: str,
        agent: str,
        timeout: float | None,
        max_concurrent: int | None = None,
        hold_for: float | None = None,
    ) -> Lease:
        """Wait for a token, first come first served across processes, and return its lease.

        ``timeout`` None waits as long as it takes; 0 takes a free token or fails at once.
        ``max_concurrent`` caps the tokens held for ``agent``: a waiter for a saturated
        agent keeps its place in line but does not hold up the waiters behind it.
        ``hold_for`` is how long from now the caller's work may run (its delegation's
        deadline, as a duration so that the caller's clock need not be the pool's): while
        its process lives, the token is not reclaimed before that deadline plus
        ``DEADLINE_GRACE``, nor before ``token_timeout``. None (the default) keeps the
        plain rule: a live holder is reclaimed after ``token_timeout``.

        Raises ``PoolRefusedError`` (exit 5) when ``queue_limit`` requests already wait,
        ``DelegationTimeoutError`` (exit 4) when no token came within ``timeout``.
        """
        pid = self._holder_pid()
        now = self._clock()
        hold_until = None
        if hold_for is not None and not math.isnan(hold_for):
            hold_until = now + min(max(0.0, float(hold_for)), _MAX_HOLD)
        ticket: dict[str, Any] = {
            "id": f"{pid}-{secrets.token_hex(6)}",
            "run_id": str(run_id)[:_MAX_TEXT] or "?",
            "agent": str(agent)[:_MAX_TEXT] or "?",
            "pid": pid,
            "start": self._start_of(pid),
            "queued_at": now,
            "hold_until": hold_until,
            "max_concurrent": max_concurrent if max_concurrent and max_concurrent > 0 else None,
        }
        if not self.settings.enabled:
            return Lease(None, {**ticket, "acquired_at": now})
        started = time.monotonic()
        deadline = None if timeout is None else started + max(0.0, timeout)
        granted = False
        try:
            poll = self._transact(lambda s, t: self._enqueue(s, t, ticket))
            if poll.outcome is _Outcome.REFUSED:
                raise PoolRefusedError(
                    f"token pool refused run `{ticket['run_id']}` (agent `{agent}`): {poll.detail}",
                    agent=agent,
                )
            watch = self._get_watch() if poll.outcome is _Outcome.WAITING else None
            backoff = _Backoff(self._sleep)
            seen = 0
            if watch is not None:
                # A change between our enqueue and the watch would go unnoticed: look again.
                seen = watch.generation()
                poll = self._transact(lambda s, t: self._poll(s, t, ticket))
            last_full = time.monotonic()
            while poll.outcome is not _Outcome.GRANTED:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    poll = self._transact(lambda s, t: self._cancel(s, t, ticket))
                    if poll.outcome is _Outcome.GRANTED:
                        break
                    raise DelegationTimeoutError(
                        f"no pool token for run `{ticket['run_id']}` (agent `{agent}`) "
                        f"within {timeout:g} s: {poll.detail}. Raise the timeout or "
                        "`pool.max_tokens`, or see `orchestrate pool status`.",
                        agent=agent,
                    )
                limit = _FULL_CHECK if remaining is None else min(remaining, _FULL_CHECK)
                if watch is not None:
                    woken = watch.wait(seen, limit)
                    seen = watch.generation()
                else:
                    backoff.wait(limit)
                    woken = False
                mono = time.monotonic()
                if mono - last_full < _FULL_CHECK and not (woken or watch is None):
                    continue  # nothing changed on disk and no time-based check is due
                if mono - last_full < _FULL_CHECK and not self._granted_hint(ticket["id"]):
                    # A glance without the lock: waking every waiter into the lock on each
                    # change would make the waiters, not the work, the bottleneck.
                    continue
                last_full = mono
                poll = self._transact(lambda s, t: self._poll(s, t, ticket))
            granted = True
        finally:
            if not granted:
                # Interrupted (Ctrl-C, an error): never leave a ticket or a token behind.
                self._abandon(ticket["id"])
        assert poll.token is not None
        return Lease(self, poll.token)

    def note_overload(self) -> None:
        """Count a 429 or 503 from a gateway as one high load sample."""
        if not self.settings.enabled or not self.settings.adaptive:
            return
        self._transact(lambda s, t: self._record_sample(s, t, None, "overload"), sample=False)

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
        self._transact(lambda s, t: self._record_sample(s, t, value, "loadavg"), sample=False)
        return value

    def status(self) -> dict[str, Any]:
        """Size, mode, tokens in use, queue, recent samples, recent reclamations, settings.

        Reclaims tokens of dead holders first so the answer is true; takes no load sample.
        Does not create the pool directory when it does not exist yet.
        """
        settings = self.settings.to_dict()
        if not self.settings.enabled or not self._dir.is_dir():
            now = self._clock()
            empty = self._normalize(None)[0]
            return self._status_of(empty, now, settings)
        result = self._transact(lambda s, t: self._status_of(s, t, settings), sample=False)
        return result

    def reclaimed(self) -> list[dict[str, Any]]:
        """Recently reclaimed tokens: ``run_id``, ``agent``, ``pid``, ``reason`` (dead|timeout),
        ``at`` and ``held_s``, oldest first."""
        if not self.settings.enabled or not self._dir.is_dir():
            return []
        result = self._transact(lambda s, t: [dict(r) for r in s["reclaimed"]], sample=False)
        return result

    def close(self) -> None:
        """Close the lock file and the directory watch (reopened if the pool is used again).

        Call it when no thread is waiting in ``acquire``.
        """
        self._adopt_after_fork()
        with self._tlock:
            if self._fd is not None:
                os.close(self._fd)
            self._fd = None
        with self._watch_lock:
            if self._watch is not None:
                self._watch.close()
            self._watch = None

    def __del__(self) -> None:
        try:
            if self._owner_pid == os.getpid():
                self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass

    def __enter__(self) -> TokenPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- locking and persistence --------------------------------------------------------

    def _holder_pid(self) -> int:
        return self._fixed_pid if self._fixed_pid is not None else os.getpid()

    def _start_of(self, pid: int) -> int | None:
        if pid not in self._starts:
            self._starts[pid] = _start_time(pid)
        return self._starts[pid]

    def _get_watch(self) -> _Watch | None:
        """The shared directory watch, created on first need; None means poll."""
        if self._wake != "auto":
            return None
        with self._watch_lock:
            if self._watch is None:
                try:
                    self._watch = _Watch(self._dir)
                except (ImportError, OSError):
                    return None  # no inotify, or out of instances: poll this time
            return self._watch

    def _adopt_after_fork(self) -> None:
        pid = os.getpid()
        if self._owner_pid == pid:
            return
        with _fork_guard:
            if self._owner_pid != pid:
                # The inherited descriptor shares its flock with the parent, and a thread
                # lock held at fork time would never be released: start afresh.
                if self._fd is not None:
                    os.close(self._fd)
                self._fd = None
                self._tlock = threading.Lock()
                if self._watch is not None:
                    self._watch.close()  # our copy only: the parent keeps its watch
                self._watch = None
                self._watch_lock = threading.Lock()
                self._owner_pid = pid

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive access: the thread lock (flock does not exclude threads sharing one
        descriptor), then ``flock`` on the lock file (it excludes other processes)."""
        self._adopt_after_fork()
        with self._tlock:
            for attempt in range(10):
                if self._fd is None:
                    self._dir.mkdir(parents=True, exist_ok=True)
                    self._fd = os.open(
                        self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666
                    )
                fd = self._fd
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    same = os.fstat(fd).st_ino == os.stat(self._lock_path).st_ino
                except OSError:
                    same = False
                if same or attempt == 9:
                    break
                # Someone removed or replaced the lock file: lock the file that is there now.
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                self._fd = None
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _granted_hint(self, ticket_id: str) -> bool:
        """Does the state file, read without the lock, list ``ticket_id`` among the tokens?

        The file is only ever replaced whole, so a lockless read sees one complete version
        (or none). Tokens are written before the queue, and ids are random hex that JSON
        never escapes, so a byte search suffices; the locked look that follows decides.
        """
        raw = self._read_raw(commit=False)
        pos = raw.find(f'"{ticket_id}"'.encode())
        queue = raw.find(b'"queue":')
        return pos >= 0 and (queue < 0 or pos < queue)

    def _read_raw(self, *, commit: bool = True) -> bytes:
        try:
            with open(self._state_path, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            if not commit:
                return b""
        except OSError:
            return b""
        # No state file but a temp file: a writer died between its unlink and its rename,
        # after the temp file was complete. Finish its commit before anyone overwrites it.
        try:
            os.rename(self._tmp_path, self._state_path)
            with open(self._state_path, "rb") as fh:
                return fh.read()
        except OSError:
            return b""

    def _write_raw(self, data: bytes) -> None:
        """Replace the state file: complete temp file, unlink the old file, rename.

        Every reader holds the lock, so nobody sees the moment without a state file, and a
        writer killed in that moment left a complete temp file that ``_read_raw`` commits.
        Not ``os.replace`` over the old file: on ext4 that forces a synchronous flush
        (``auto_da_alloc``) and costs four times as much as the whole acquire.
        """
        fd = os.open(self._tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        try:
            os.unlink(self._state_path)
        except FileNotFoundError:
            pass
        os.rename(self._tmp_path, self._state_path)

    def _transact(self, fn: Callable[[dict[str, Any], float], _T], *, sample: bool = True) -> _T:
        """Run ``fn(state, now)`` under the lock after housekeeping; save if anything changed."""
        try:
            with self._locked():
                raw = self._read_raw()
                parsed: Any = None
                if raw:
                    try:
                        parsed = json.loads(raw)
                    except (ValueError, RecursionError):
                        parsed = "garbage"
                state, repaired = self._normalize(parsed)
                if repaired and raw:
                    state["repairs"] += 1
                now, mono = self._clock(), self._monotonic()
                self._correct_jump(state, now, mono)
                self._housekeep(state, now, sample=sample)
                result = fn(state, now)
                out = json.dumps(state, separators=(",", ":")).encode()
                if out != raw:
                    # The clock pair is renewed only with a write that happens anyway, so
                    # a look at the pool writes nothing (and wakes no waiter).
                    state["clock"] = {"wall": now, "mono": mono, "boot": _boot_id()}
                    self._write_raw(json.dumps(state, separators=(",", ":")).encode())
                return result
        except OSError as exc:
            raise ConfigError(
                f"the token pool directory `{self._dir}` is not usable: "
                f"{exc.strerror or exc}. Check `pool.dir` and its permissions.",
                path=self._dir,
            ) from exc

    def _correct_jump(self, state: dict[str, Any], now: float, mono: float) -> None:
        """Shift the stored times by a wall-clock jump since the last write.

        The last write recorded the wall and monotonic times; the monotonic clock is
        host-wide and never jumps, so wall time elapsed minus monotonic time elapsed is the
        jump. Only within one boot: after a reboot the monotonic clock starts over (and
        every holder is dead anyway). Older state files have no pair: nothing to correct.
        """
        pair = state["clock"]
        if pair is None or pair["boot"] != _boot_id():
            return
        jump = (now - pair["wall"]) - (mono - pair["mono"])
        if abs(jump) <= _JUMP_TOLERANCE:
            return
        for entry in state["tokens"] + state["queue"]:
            for key in ("queued_at", "acquired_at", "hold_until"):
                if entry.get(key) is not None:
                    entry[key] += jump
        for key in ("cooldown_until", "last_sample_at"):
            if state[key] is not None:
                state[key] += jump
        state["last_sweep"] += jump
        state["clock"] = {"wall": now, "mono": mono, "boot": pair["boot"]}

    def _normalize(self, raw: Any) -> tuple[dict[str, Any], bool]:
        """A well-formed state from whatever was on disk; True if anything was repaired."""
        cfg = self.settings
        repaired = False
        if not isinstance(raw, dict):
            repaired = raw is not None
            raw = {}
        tokens, bad_t = _clean_list(raw.get("tokens"), ticket=False)
        queue, bad_q = _clean_list(raw.get("queue"), ticket=True)
        repaired = repaired or bad_t or bad_q
        size = raw.get("size")
        if not cfg.adaptive:
            size = cfg.max_tokens
        elif isinstance(size, bool) or not isinstance(size, int):
            repaired = repaired or size is not None
            size = cfg.max_tokens  # a fresh pool starts at its ceiling and adapts down
        size = min(max(size, cfg.min_tokens), cfg.max_tokens)
        mode = raw.get("mode")
        if mode not in (PoolMode.NORMAL.value, PoolMode.EMERGENCY.value):
            repaired = repaired or mode is not None
            mode = PoolMode.NORMAL.value
        cooldown_until = _num(raw.get("cooldown_until"))
        if mode == PoolMode.EMERGENCY.value and cooldown_until is None:
            mode = PoolMode.NORMAL.value
        samples = []
        raw_samples = raw.get("samples")
        for item in raw_samples if isinstance(raw_samples, list) else []:
            if isinstance(item, dict) and _num(item.get("at")) is not None:
                load = _num(item.get("load"))
                source = (
                    item.get("source")
                    if item.get("source") in ("loadavg", "overload")
                    else ("loadavg")
                )
                samples.append({"at": item["at"], "load": load, "source": source})
        reclaimed = []
        raw_reclaimed = raw.get("reclaimed")
        for item in raw_reclaimed if isinstance(raw_reclaimed, list) else []:
            if isinstance(item, dict) and item.get("reason") in _RECLAIM_REASONS:
                reclaimed.append(
                    {
                        "token_id": _text(item.get("token_id")) or "?",
                        "run_id": _text(item.get("run_id")) or "?",
                        "agent": _text(item.get("agent")) or "?",
                        "pid": _pos_int(item.get("pid")) or 0,
                        "reason": item["reason"],
                        "at": _num(item.get("at")) or 0.0,
                        "held_s": _num(item.get("held_s")) or 0.0,
                    }
                )

        def counter(key: str) -> int:
            value = raw.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else 0

        state = {
            "version": _STATE_VERSION,
            "size": size,
            "mode": mode,
            "cooldown_until": cooldown_until if mode == PoolMode.EMERGENCY.value else None,
            "tokens": tokens,
            "queue": queue,
            "low": max(0, counter("low")),
            "high": max(0, counter("high")),
            "last_sample_at": _num(raw.get("last_sample_at")),
            "last_sweep": _num(raw.get("last_sweep")) or 0.0,
            "samples": samples[-_MAX_SAMPLES:],
            "reclaimed": reclaimed[-_MAX_RECLAIMED:],
            "repairs": max(0, counter("repairs")),
            "clock": _clock_pair(raw.get("clock")),
        }
        return state, repaired

    # -- the rules ----------------------------------------------------------------------

    def _read_load(self) -> float | None:
        try:
            value = float(self._load_source())
        except Exception:  # noqa: BLE001 - a broken load source must not stop delegations
            return None
        return value if math.isfinite(value) else None

    def _liveness(self) -> Callable[[dict[str, Any]], bool]:
        """``is_alive(entry)`` for the holders of one transaction, asking the kernel once each."""
        alive: dict[tuple[int, int | None], bool] = {}
        me = os.getpid()

        def is_alive(entry: dict[str, Any]) -> bool:
            key = (entry["pid"], entry["start"])
            if key not in alive:
                if key[0] == me and key[1] == self._start_of(me):
                    alive[key] = True  # ourselves: no need to ask the kernel
                else:
                    alive[key] = _alive(*key)
            return alive[key]

        return is_alive

    def _overdue(self, tok: dict[str, Any], now: float) -> str | None:
        """Why a live holder's token is taken back now (``timeout``/``deadline``), or None.

        A live holder keeps its token for ``token_timeout`` and, if it gave its
        delegation's deadline, until ``DEADLINE_GRACE`` after that deadline, whichever
        is later: a step allowed 900 s is not cut off at 300 s.
        """
        limit, reason = tok["acquired_at"] + self.settings.token_timeout, "timeout"
        hold_until = tok.get("hold_until")
        if hold_until is not None and hold_until + DEADLINE_GRACE > limit:
            limit, reason = hold_until + DEADLINE_GRACE, "deadline"
        return reason if now > limit else None

    def _housekeep(self, state: dict[str, Any], now: float, *, sample: bool) -> None:
        """Reclaim dead and overdue tokens, end a finished cooldown, sample, grant."""
        cfg = self.settings
        is_alive = self._liveness()
        kept = []
        for tok in state["tokens"]:
            if tok["acquired_at"] > now:
                # The clock went back (a state file without a clock pair to correct it):
                # restart the hold rather than keep it for the length of the jump.
                back = tok["acquired_at"] - now
                tok["acquired_at"] = now
                if tok["hold_until"] is not None:
                    tok["hold_until"] -= back
            held = now - tok["acquired_at"]
            reason = "dead" if not is_alive(tok) else self._overdue(tok, now)
            if reason is None:
                kept.append(tok)
                continue
            state["reclaimed"].append(
                {
                    "token_id": tok["id"],
                    "run_id": tok["run_id"],
                    "agent": tok["agent"],
                    "pid": tok["pid"],
                    "reason": reason,
                    "at": now,
                    "held_s": round(max(0.0, held), 3),
                }
            )
        if len(kept) != len(state["tokens"]):
            state["tokens"] = kept
            state["reclaimed"] = state["reclaimed"][-_MAX_RECLAIMED:]
        if abs(now - state["last_sweep"]) >= _QUEUE_SWEEP:
            state["last_sweep"] = now
            state["queue"] = [w for w in state["queue"] if is_alive(w)]
        if state["mode"] == PoolMode.EMERGENCY.value:
            # Never longer than one cooldown from now, whatever the clock did meanwhile.
            state["cooldown_until"] = min(state["cooldown_until"] or 0, now + cfg.cooldown)
            if now >= state["cooldown_until"]:
                state["mode"] = PoolMode.NORMAL.value
                state["cooldown_until"] = None
        if sample and cfg.adaptive:
            last = state["last_sample_at"]
            if last is None or now - last >= cfg.sample_interval or now < last:
                load = self._read_load()
                if load is not None:
                    self._record_sample(state, now, load, "loadavg")
                else:
                    state["last_sample_at"] = now
        self._grant(state, now, is_alive)

    def _record_sample(
        self, state: dict[str, Any], now: float, load: float | None, source: str
    ) -> None:
        """Apply one load sample (None with source ``overload`` for a 429/503)."""
        cfg = self.settings
        state["samples"] = (state["samples"] + [{"at": now, "load": load, "source": source}])[
            -_MAX_SAMPLES:
        ]
        if source == "loadavg":
            state["last_sample_at"] = now
        if load is not None and load > cfg.emergency_load:
            state["mode"] = PoolMode.EMERGENCY.value
            state["cooldown_until"] = now + cfg.cooldown
            state["size"] = cfg.min_tokens
            state["low"] = state["high"] = 0
            return
        if state["mode"] == PoolMode.EMERGENCY.value:
            state["low"] = state["high"] = 0  # no adapting until the cooldown is over
            return
        if load is None or load > cfg.load_high:
            state["high"] += 1
            state["low"] = 0
        elif load < cfg.load_low:
            state["low"] += 1
            state["high"] = 0
        else:
            state["low"] = state["high"] = 0
        if state["high"] >= cfg.hysteresis:
            state["size"] = max(cfg.min_tokens, state["size"] - 1)
            state["high"] = 0
        elif state["low"] >= cfg.hysteresis:
            state["size"] = min(cfg.max_tokens, state["size"] + 1)
            state["low"] = 0
            self._grant(state, now, None)

    def _grant(
        self,
        state: dict[str, Any],
        now: float,
        is_alive: Callable[[dict[str, Any]], bool] | None,
        *,
        own: str | None = None,
    ) -> None:
        """Turn the first eligible tickets into tokens while tokens are free, in order.

        A ticket of a dead process is dropped, not granted (None: ask the kernel); ``own``
        is the calling process's ticket, alive by definition (it may name another PID).
        """
        if state["mode"] == PoolMode.EMERGENCY.value or not state["queue"]:
            return
        free = state["size"] - len(state["tokens"])
        if free <= 0:
            return
        per_agent: dict[str, int] = {}
        for tok in state["tokens"]:
            per_agent[tok["agent"]] = per_agent.get(tok["agent"], 0) + 1
        remaining = []
        for ticket in state["queue"]:
            if free <= 0:
                remaining.append(ticket)
                continue
            cap = ticket["max_concurrent"]
            if cap is not None and per_agent.get(ticket["agent"], 0) >= cap:
                remaining.append(ticket)  # keeps its place, does not hold up the others
                continue
            if is_alive is None and ticket["id"] != own:
                is_alive = self._liveness()
            if ticket["id"] != own and is_alive is not None and not is_alive(ticket):
                continue  # its process died while waiting: never grant it a token
            token = {k: v for k, v in ticket.items() if k != "max_concurrent"}
            token["acquired_at"] = now
            state["tokens"].append(token)
            per_agent[ticket["agent"]] = per_agent.get(ticket["agent"], 0) + 1
            free -= 1
        state["queue"] = remaining

    def _find(self, state: dict[str, Any], ticket_id: str) -> _Poll | None:
        for tok in state["tokens"]:
            if tok["id"] == ticket_id:
                return _Poll(_Outcome.GRANTED, tok)
        return None

    def _why_waiting(self, state: dict[str, Any], now: float) -> str:
        used, size = len(state["tokens"]), state["size"]
        why = f"{used} of {size} tokens in use, {len(state['queue'])} waiting"
        if state["mode"] == PoolMode.EMERGENCY.value:
            left = max(0.0, (state["cooldown_until"] or now) - now)
            why += f", emergency cooldown for {left:.0f} s more"
        return why

    def _enqueue(self, state: dict[str, Any], now: float, ticket: dict[str, Any]) -> _Poll:
        if ticket["hold_until"] is not None:  # the deadline moves with the clock reading
            ticket["hold_until"] += now - ticket["queued_at"]
        ticket["queued_at"] = now  # the same clock reading as the grant: no wait is no wait
        state["queue"].append(dict(ticket))
        self._grant(state, now, None, own=ticket["id"])
        found = self._find(state, ticket["id"])
        if found is not None:
            return found
        limit = self.settings.queue_limit
        if len(state["queue"]) > limit:
            # Before refusing, make sure the line is not full of dead processes.
            state["queue"] = [
                w for w in state["queue"] if w["id"] == ticket["id"] or _alive(w["pid"], w["start"])
            ]
        if len(state["queue"]) > limit:
            state["queue"] = [w for w in state["queue"] if w["id"] != ticket["id"]]
            if limit == 0:
                detail = (
                    f"no token is free ({self._why_waiting(state, now)}) and "
                    "`pool.queue_limit` is 0, so nobody may wait. Try again later or raise "
                    "`pool.queue_limit`."
                )
            else:
                detail = (
                    f"the wait queue is full ({len(state['queue'])} requests waiting, "
                    f"`pool.queue_limit` is {limit}). Try again later, or raise "
                    "`pool.queue_limit` or `pool.max_tokens`."
                )
            return _Poll(_Outcome.REFUSED, detail=detail)
        return _Poll(_Outcome.WAITING)

    def _poll(self, state: dict[str, Any], now: float, ticket: dict[str, Any]) -> _Poll:
        found = self._find(state, ticket["id"])
        if found is not None:
            return found
        if not any(w["id"] == ticket["id"] for w in state["queue"]):
            for rec in state["reclaimed"]:
                if rec["token_id"] == ticket["id"]:
                    # Granted, then reclaimed before we looked: ours, already taken back;
                    # `Lease.release()` will report why.
                    token = {k: v for k, v in ticket.items() if k != "max_concurrent"}
                    token["acquired_at"] = rec["at"] - rec["held_s"]
                    return _Poll(_Outcome.GRANTED, token)
            # Our ticket vanished (a repaired state file): queue again in our old place.
            later = [
                i for i, w in enumerate(state["queue"]) if w["queued_at"] > ticket["queued_at"]
            ]
            state["queue"].insert(later[0] if later else len(state["queue"]), dict(ticket))
            self._grant(state, now, None, own=ticket["id"])
            found = self._find(state, ticket["id"])
            if found is not None:
                return found
        return _Poll(_Outcome.WAITING)

    def _cancel(self, state: dict[str, Any], now: float, ticket: dict[str, Any]) -> _Poll:
        found = self._find(state, ticket["id"])
        if found is not None:
            return found
        state["queue"] = [w for w in state["queue"] if w["id"] != ticket["id"]]
        return _Poll(_Outcome.WAITING, detail=self._why_waiting(state, now))

    def _abandon(self, ticket_id: str) -> None:
        def drop(state: dict[str, Any], now: float) -> None:
            state["queue"] = [w for w in state["queue"] if w["id"] != ticket_id]
            state["tokens"] = [t for t in state["tokens"] if t["id"] != ticket_id]
            self._grant(state, now, None)

        try:
            self._transact(drop, sample=False)
        except ConfigError:
            pass  # the pool dir is gone; a dead ticket is swept by the next process anyway

    def _release(self, token_id: str) -> str | None:
        def give_back(state: dict[str, Any], now: float) -> str | None:
            before = len(state["tokens"])
            state["tokens"] = [t for t in state["tokens"] if t["id"] != token_id]
            reason = None
            if len(state["tokens"]) == before:
                for rec in reversed(state["reclaimed"]):
                    if rec["token_id"] == token_id:
                        reason = str(rec["reason"])
                        break
                else:
                    reason = "lost"  # not held and not on record: the state was repaired
            self._grant(state, now, None)
            return reason

        result = self._transact(give_back)
        return result

    def _status_of(
        self, state: dict[str, Any], now: float, settings: dict[str, Any]
    ) -> dict[str, Any]:
        until = state["cooldown_until"]
        return {
            "dir": str(self._dir),
            "enabled": self.settings.enabled,
            "size": state["size"],
            "min_tokens": self.settings.min_tokens,
            "max_tokens": self.settings.max_tokens,
            "mode": state["mode"],
            "cooldown_until": until,
            "cooldown_remaining_s": round(max(0.0, until - now), 3) if until else 0.0,
            "in_use": [
                {
                    "run_id": t["run_id"],
                    "agent": t["agent"],
                    "pid": t["pid"],
                    "age_s": round(max(0.0, now - t["acquired_at"]), 3),
                }
                for t in state["tokens"]
            ],
            "queue": [
                {
                    "run_id": w["run_id"],
                    "agent": w["agent"],
                    "pid": w["pid"],
                    "waited_s": round(max(0.0, now - w["queued_at"]), 3),
                }
                for w in state["queue"]
            ],
            "samples": [dict(s) for s in state["samples"]],
            "streak": {"low": state["low"], "high": state["high"]},
            "last_sample_at": state["last_sample_at"],
            "reclaimed": [dict(r) for r in state["reclaimed"]],
            "repairs": state["repairs"],
            "settings": settings,
        }


# -- rendering --------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [line(headers)] + [line(r) for r in rows]


def _secs(value: float) -> str:
    return f"{value:.1f}s"


def format_status(status: dict[str, Any]) -> str:
    """Render ``TokenPool.status()`` as aligned text for ``orchestrate pool status``."""
    in_use, queue = status.get("in_use", []), status.get("queue", [])
    settings = status.get("settings", {})
    mode = status.get("mode", "normal")
    if mode == PoolMode.EMERGENCY.value:
        mode += f" (cooldown {_secs(status.get('cooldown_remaining_s', 0.0))} left)"
    if not status.get("enabled", True):
        mode = "disabled (`pool.enabled` is false)"
    samples = []
    for s in status.get("samples", []):
        samples.append("429/503" if s.get("load") is None else f"{s['load']:.2f}")
    streak = status.get("streak", {})
    lines = [
        f"pool     {status.get('dir', '?')}",
        f"mode     {mode}",
        f"size     {status.get('size')} (min {status.get('min_tokens')}, "
        f"max {status.get('max_tokens')}"
        + ("" if settings.get("adaptive", True) else ", fixed: `pool.adaptive` is false")
        + ")",
        f"in use   {len(in_use)} of {status.get('size')}",
        f"queue    {len(queue)} waiting (limit {settings.get('queue_limit', '?')})",
        "load     "
        + (" ".join(samples) if samples else "no samples yet")
        + (
            f"  (newest last; streak: {streak.get('low', 0)} low, {streak.get('high', 0)} high)"
            if samples
            else ""
        ),
    ]
    if in_use:
        lines += ["", "tokens in use:"]
        lines += _table(
            ["RUN ID", "AGENT", "PID", "AGE"],
            [[t["run_id"], t["agent"], str(t["pid"]), _secs(t["age_s"])] for t in in_use],
        )
    if queue:
        lines += ["", "waiting (first come, first served):"]
        lines += _table(
            ["RUN ID", "AGENT", "PID", "WAITED"],
            [[w["run_id"], w["agent"], str(w["pid"]), _secs(w["waited_s"])] for w in queue],
        )
    reclaimed = status.get("reclaimed", [])
    if reclaimed:
        lines += ["", "recently reclaimed:"]
        lines += _table(
            ["RUN ID", "AGENT", "PID", "REASON", "HELD"],
            [
                [r["run_id"], r["agent"], str(r["pid"]), r["reason"], _secs(r["held_s"])]
                for r in reclaimed
            ],
        )
    if status.get("repairs"):
        lines += ["", f"state file repaired {status['repairs']} time(s) (garbage was dropped)"]
    return "\n".join(lines)
