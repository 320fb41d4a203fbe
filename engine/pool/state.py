"""The pool's shared state as values, and its JSON form (read leniently, written exactly).

Every backend stores the same document: the file backend as ``state.json``, a database
backend as one JSON value. ``decode`` repairs whatever it is given (bad entries dropped,
the rest kept; older files without ``host``/``renewed_at`` read as this host's, renewed
when granted; older files without ``shares`` read as no host having adapted yet);
``encode`` writes tokens before the queue, which ``granted_hint`` relies on.

On a store shared by hosts each host adapts its own share of the pool: ``shares`` maps a
host identity to its ``Share`` (size, mode, cooldown, streaks, last sample). It is written
only when not empty, so a host-local state file is the same document as before.

``agreed`` holds the ``pool:`` settings every user of the pool must give alike
(``AGREED_KEYS``: the cap, the queue, the liveness and hold limits of all tokens) and the
host that set them: the hosts of a shared store, or the configs sharing one file pool;
absent until a token is first asked for.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

from engine.pool.settings import PoolMode, PoolSettings

__all__ = [
    "AGREED_KEYS",
    "Agreed",
    "ClockPair",
    "PoolState",
    "Reclaim",
    "Sample",
    "Share",
    "Ticket",
    "Token",
    "decode",
    "encode",
    "encode_changed",
    "granted_hint",
    "granted_token",
    "parse",
]

STATE_VERSION = 1
#: How many load samples and reclaimed tokens the state keeps for ``status``.
MAX_SAMPLES = 12
MAX_RECLAIMED = 20
MAX_TEXT = 200
#: At most this many host shares are kept (the least recently sampled are dropped first).
MAX_SHARES = 256
#: Why a token was taken back from its holder: its process died, it held past
#: ``token_timeout`` or past its deadline, or (another host) it stopped renewing.
RECLAIM_REASONS = ("dead", "timeout", "deadline", "expired")
_MODES = {mode.value: mode for mode in PoolMode}
#: The ``pool:`` settings that hold for all hosts of a shared store together.
AGREED_KEYS = ("max_tokens", "queue_limit", "lease_ttl", "token_timeout")


@dataclass(slots=True)
class _Holder:
    """What a queue ticket and a token both say of the delegation that holds (or wants) it."""

    id: str
    run_id: str
    agent: str
    pid: int
    start: int | None
    host: str
    queued_at: float
    hold_until: float | None  # the delegation's deadline on the pool clock
    renewed_at: float  # last sign of life of a holder on another host


@dataclass(slots=True)
class Ticket(_Holder):
    """A request waiting in the queue (``max_concurrent``: its agent's cap, if any)."""

    max_concurrent: int | None = None


@dataclass(slots=True)
class Token(_Holder):
    """A token held by a delegation."""

    acquired_at: float

    @classmethod
    def granted(cls, ticket: Ticket, now: float) -> Token:
        """The token a ticket becomes when it is granted at ``now``."""
        held = cls(**holder_fields(ticket), acquired_at=now)
        held.renewed_at = now
        return held


@dataclass(slots=True)
class Sample:
    """One load sample; ``load`` None with source ``overload`` is a 429/503 from a gateway.
    ``host``: the host that took it, on a store shared by hosts (else None)."""

    at: float
    load: float | None
    source: str
    host: str | None = None


@dataclass(slots=True)
class Reclaim:
    """A token taken back from its holder, kept for ``status``."""

    token_id: str
    run_id: str
    agent: str
    pid: int
    reason: str
    at: float
    held_s: float


@dataclass(slots=True)
class ClockPair:
    """Wall and monotonic times of the last write, within one boot (detects clock jumps)."""

    wall: float
    mono: float
    boot: str


@dataclass(slots=True)
class Share:
    """One host's adaptive share of a pool on a shared store: the size its own load
    allows (tokens its holders may hold at once), its mode, cooldown, streaks and the time
    of its last load sample (pool clock). A host without one is at ``max_tokens``."""

    size: int
    mode: PoolMode = PoolMode.NORMAL
    cooldown_until: float | None = None
    low: int = 0
    high: int = 0
    last_sample_at: float | None = None


@dataclass(frozen=True, slots=True)
class Agreed:
    """The ``AGREED_KEYS`` settings of a shared pool (``values``, key -> number), set by
    host ``by`` at ``at`` (pool clock, seconds): every host must give the same."""

    values: dict[str, float]
    by: str
    at: float

    @classmethod
    def of(cls, settings: PoolSettings, *, host: str, at: float) -> Agreed:
        return cls({k: float(getattr(settings, k)) for k in AGREED_KEYS}, host, at)

    def differences(self, settings: PoolSettings) -> list[tuple[str, float, float]]:
        """``(key, agreed, given)`` for each setting ``settings`` gives otherwise."""
        return [
            (k, self.values[k], float(getattr(settings, k)))
            for k in AGREED_KEYS
            if float(getattr(settings, k)) != self.values[k]
        ]


@dataclass(slots=True)
class PoolState:
    """Everything the pool shares: size, mode, tokens, queue, load streaks and history."""

    size: int
    mode: PoolMode = PoolMode.NORMAL
    cooldown_until: float | None = None
    tokens: list[Token] = field(default_factory=list)
    queue: list[Ticket] = field(default_factory=list)
    low: int = 0
    high: int = 0
    last_sample_at: float | None = None
    last_sweep: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    reclaimed: list[Reclaim] = field(default_factory=list)
    repairs: int = 0
    clock: ClockPair | None = None
    shares: dict[str, Share] = field(default_factory=dict)
    agreed: Agreed | None = None


# -- reading ------------------------------------------------------------------------------


def _num(value: Any) -> float | None:
    kind = type(value)  # exact types: JSON gives int, float or bool, and bool is no number
    if kind is float:
        return value if math.isfinite(value) else None
    return float(value) if kind is int else None


def _pos_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None
    return value


def _text(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return value[:MAX_TEXT]


def _entry(raw: Any, *, ticket: bool, host: str) -> Ticket | Token | None:
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
    # Older state files name no host: the file backend is host-local, so it is this one.
    holder = _text(raw.get("host")) or host
    renewed = _num(raw.get("renewed_at"))
    # The delegation's deadline on the pool clock; absent in older state files (and for
    # callers that gave none): then only ``token_timeout`` bounds a live holder.
    hold_until = _num(raw.get("hold_until"))
    # the _Holder fields, in their order (positional: this runs for every entry of every
    # pool transaction)
    held = (entry_id, run_id, _text(agent) or "?", pid, start, holder, queued_at, hold_until)
    if ticket:
        renewed_at = queued_at if renewed is None else renewed
        return Ticket(*held, renewed_at, _pos_int(raw.get("max_concurrent")))
    acquired = _num(raw.get("acquired_at"))
    if acquired is None:
        return None
    return Token(*held, acquired if renewed is None else renewed, acquired)


def _entries(raw: Any, *, ticket: bool, host: str) -> tuple[list[Any], bool]:
    if not isinstance(raw, list):
        return [], raw is not None
    out: list[Any] = []
    seen: set[str] = set()
    for item in raw:
        entry = _entry(item, ticket=ticket, host=host)
        if entry is None or entry.id in seen:
            continue
        seen.add(entry.id)
        out.append(entry)
    return out, len(out) != len(raw)


def _clock_pair(raw: Any) -> ClockPair | None:
    if not isinstance(raw, dict):
        return None
    wall, mono, boot = _num(raw.get("wall")), _num(raw.get("mono")), raw.get("boot")
    if wall is None or mono is None or not isinstance(boot, str) or not boot:
        return None
    return ClockPair(wall=wall, mono=mono, boot=boot[:64])


def parse(raw: bytes) -> Any:
    """The JSON value of a stored state: None when empty, ``"garbage"`` when not JSON."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return "garbage"


def decode(raw: Any, settings: PoolSettings, *, host: str) -> tuple[PoolState, bool]:
    """A well-formed state from a parsed JSON value; True if anything was repaired.

    ``host`` is the holder host of entries that name none (state files of older versions).
    """
    repaired = False
    if not isinstance(raw, dict):
        repaired = raw is not None
        raw = {}
    tokens, bad_t = _entries(raw.get("tokens"), ticket=False, host=host)
    queue, bad_q = _entries(raw.get("queue"), ticket=True, host=host)
    size, bad_size = _size(raw.get("size"), settings)
    mode, bad_mode = _mode(raw.get("mode"))
    cooldown_until = _num(raw.get("cooldown_until"))
    if mode is PoolMode.EMERGENCY and cooldown_until is None:
        mode = PoolMode.NORMAL
    repaired = repaired or bad_t or bad_q or bad_size or bad_mode

    def counter(key: str) -> int:
        value = raw.get(key)
        return max(0, value) if isinstance(value, int) and not isinstance(value, bool) else 0

    state = PoolState(
        size=size,
        mode=mode,
        cooldown_until=cooldown_until if mode is PoolMode.EMERGENCY else None,
        tokens=tokens,
        queue=queue,
        low=counter("low"),
        high=counter("high"),
        last_sample_at=_num(raw.get("last_sample_at")),
        last_sweep=_num(raw.get("last_sweep")) or 0.0,
        samples=_samples(raw.get("samples"))[-MAX_SAMPLES:],
        reclaimed=_reclaimed(raw.get("reclaimed"))[-MAX_RECLAIMED:],
        repairs=counter("repairs"),
        clock=_clock_pair(raw.get("clock")),
        shares=_shares(raw.get("shares"), settings),
        agreed=_agreed(raw.get("agreed")),
    )
    return state, repaired


def _agreed(raw: Any) -> Agreed | None:
    """The agreed settings, or None when absent or not whole (they are agreed again)."""
    if not isinstance(raw, dict):
        return None
    by, at = _text(raw.get("by")), _num(raw.get("at"))
    values = {k: _num(raw.get(k)) for k in AGREED_KEYS}
    if by is None or at is None or any(v is None for v in values.values()):
        return None
    return Agreed({k: float(v) for k, v in values.items() if v is not None}, by, at)


def _counter(value: Any) -> int:
    return max(0, value) if isinstance(value, int) and not isinstance(value, bool) else 0


def _shares(raw: Any, cfg: PoolSettings) -> dict[str, Share]:
    """The hosts' shares that have a host name; bad fields read as a fresh share's."""
    shares: dict[str, Share] = {}
    for key, item in raw.items() if isinstance(raw, dict) else ():
        host = _text(key)
        if host is None or not isinstance(item, dict):
            continue
        mode = _mode(item.get("mode"))[0]
        until = _num(item.get("cooldown_until"))
        if mode is PoolMode.EMERGENCY and until is None:
            mode = PoolMode.NORMAL
        shares[host] = Share(
            size=_size(item.get("size"), cfg)[0],
            mode=mode,
            cooldown_until=until if mode is PoolMode.EMERGENCY else None,
            low=_counter(item.get("low")),
            high=_counter(item.get("high")),
            last_sample_at=_num(item.get("last_sample_at")),
        )
    if len(shares) > MAX_SHARES:
        newest = sorted(shares, key=lambda h: shares[h].last_sample_at or 0.0)[-MAX_SHARES:]
        shares = {h: shares[h] for h in newest}
    return shares


def _size(raw: Any, cfg: PoolSettings) -> tuple[int, bool]:
    """The pool's size within its bounds, and whether a stored value had to be replaced."""
    repaired = False
    if not cfg.adaptive:
        size = cfg.max_tokens
    elif isinstance(raw, bool) or not isinstance(raw, int):
        repaired = raw is not None
        size = cfg.max_tokens  # a fresh pool starts at its ceiling and adapts down
    else:
        size = raw
    return min(max(size, cfg.min_tokens), cfg.max_tokens), repaired


def _mode(raw: Any) -> tuple[PoolMode, bool]:
    """The stored mode (normal when unknown), and whether an unknown value was replaced."""
    mode = _MODES.get(raw) if isinstance(raw, str) else None
    if mode is None:
        return PoolMode.NORMAL, raw is not None
    return mode, False


def _samples(raw: Any) -> list[Sample]:
    """The load samples that have a time; an unknown source reads as ``loadavg``."""
    samples = []
    for item in raw if isinstance(raw, list) else []:
        at = _num(item.get("at")) if isinstance(item, dict) else None
        if at is not None:
            source = item.get("source")
            samples.append(
                Sample(
                    at=at,
                    load=_num(item.get("load")),
                    source=source if source in ("loadavg", "overload") else "loadavg",
                    host=_text(item.get("host")),
                )
            )
    return samples


def _reclaimed(raw: Any) -> list[Reclaim]:
    """The reclaims with a known reason; missing fields read as ``?`` or 0."""
    return [
        Reclaim(
            token_id=_text(item.get("token_id")) or "?",
            run_id=_text(item.get("run_id")) or "?",
            agent=_text(item.get("agent")) or "?",
            pid=_pos_int(item.get("pid")) or 0,
            reason=item["reason"],
            at=_num(item.get("at")) or 0.0,
            held_s=_num(item.get("held_s")) or 0.0,
        )
        for item in (raw if isinstance(raw, list) else [])
        if isinstance(item, dict) and item.get("reason") in RECLAIM_REASONS
    ]


# -- writing ------------------------------------------------------------------------------


def holder_fields(h: _Holder) -> dict[str, Any]:
    """What a token and a queue ticket both say of their holder, by field name, in the
    stored order (a literal: this runs for every entry of every pool transaction)."""
    return {
        "id": h.id,
        "run_id": h.run_id,
        "agent": h.agent,
        "pid": h.pid,
        "start": h.start,
        "host": h.host,
        "queued_at": h.queued_at,
        "hold_until": h.hold_until,
        "renewed_at": h.renewed_at,
    }


def _token_json(t: Token) -> dict[str, Any]:
    doc = holder_fields(t)
    doc["acquired_at"] = t.acquired_at
    return doc


def _ticket_json(t: Ticket) -> dict[str, Any]:
    doc = holder_fields(t)
    doc["max_concurrent"] = t.max_concurrent
    return doc


#: The field names of the values written field for field, in declaration (stored) order.
_FIELDS: dict[type[Any], tuple[str, ...]] = {
    kind: tuple(f.name for f in fields(kind)) for kind in (Reclaim, Share, ClockPair)
}


def _fields_json(value: Reclaim | Share | ClockPair) -> dict[str, Any]:
    """A value's fields by name, in the order its dataclass declares them (the stored
    order): ``dataclasses.asdict`` for fields that hold plain values, without its copies."""
    return {name: getattr(value, name) for name in _FIELDS[type(value)]}


def reclaim_json(r: Reclaim) -> dict[str, Any]:
    """One reclamation as JSON (``token_id``, ``run_id``, ``agent``, ``pid``, ``reason``,
    ``at``, ``held_s``)."""
    return _fields_json(r)


def to_json(state: PoolState) -> dict[str, Any]:
    """The state as the JSON document every backend stores (tokens before the queue,
    the clock pair last)."""
    doc = _body(state)
    doc["clock"] = _clock_json(state.clock)
    return doc


def _body(state: PoolState) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": STATE_VERSION,
        "size": state.size,
        "mode": state.mode.value,
        "cooldown_until": state.cooldown_until,
        "tokens": [_token_json(t) for t in state.tokens],
        "queue": [_ticket_json(t) for t in state.queue],
        "low": state.low,
        "high": state.high,
        "last_sample_at": state.last_sample_at,
        "last_sweep": state.last_sweep,
        "samples": [sample_json(s) for s in state.samples],
        "reclaimed": [reclaim_json(r) for r in state.reclaimed],
        "repairs": state.repairs,
    }
    if state.shares:  # after the queue (``granted_hint``); absent on a host-local store
        doc["shares"] = {host: share_json(sh) for host, sh in state.shares.items()}
    if state.agreed is not None:
        doc["agreed"] = {**state.agreed.values, "by": state.agreed.by, "at": state.agreed.at}
    return doc


def sample_json(sample: Sample) -> dict[str, Any]:
    """One load sample as JSON (``at``, ``load``, ``source``, and ``host`` when known)."""
    doc: dict[str, Any] = {"at": sample.at, "load": sample.load, "source": sample.source}
    if sample.host is not None:
        doc["host"] = sample.host
    return doc


def share_json(share: Share) -> dict[str, Any]:
    """One host's share as JSON (``size``, ``mode``, ``cooldown_until``, ``low``,
    ``high``, ``last_sample_at``)."""
    return {**_fields_json(share), "mode": share.mode.value}  # a key keeps its place


def _clock_json(clock: ClockPair | None) -> dict[str, Any] | None:
    return None if clock is None else _fields_json(clock)


#: One compact encoder for every write (``json.dumps`` with options builds one per call).
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def _dump(value: Any) -> bytes:
    return _ENCODER.encode(value).encode()


def encode(state: PoolState) -> bytes:
    """The stored bytes of ``state`` (compact JSON)."""
    return _dump(to_json(state))


def encode_changed(state: PoolState, stored: bytes, stamp: ClockPair | None) -> bytes | None:
    """The bytes to store, or None when ``state`` is what ``stored`` holds.

    The clock pair is the last key: the body is encoded once, and the pair ``stamp``
    (the time of this write) replaces the stored one only when the body changed, so a
    look at the pool writes nothing.
    """
    body = _dump(_body(state))[:-1] + b',"clock":'
    if stored == body + _dump(_clock_json(state.clock)) + b"}":
        return None
    state.clock = stamp
    return body + _dump(_clock_json(stamp)) + b"}"


def granted_hint(raw: bytes, ticket_id: str) -> bool:
    """Does a stored state (read without the lock) list ``ticket_id`` among the tokens?

    A store only ever replaces the state whole, so a lockless read sees one complete
    version (or none). Tokens are written before the queue, and ids are random hex that
    JSON never escapes, so a byte search suffices; the locked look that follows decides.
    """
    pos = raw.find(f'"{ticket_id}"'.encode())
    queue = raw.find(b'"queue":')
    return pos >= 0 and (queue < 0 or pos < queue)


def granted_token(raw: bytes, ticket_id: str, *, host: str) -> Token | None:
    """The token ``ticket_id`` became, read from a stored state (read without the lock),
    or None if that state does not list it among the tokens (or cannot be read).

    A ticket turns into a token only by a committed grant and stays one until its holder
    releases it (or it is reclaimed, which the release then reports), so one complete
    version that lists it is proof of the grant: the waiter needs no locked look.
    """
    doc = parse(raw)
    tokens = doc.get("tokens") if isinstance(doc, dict) else None
    for item in tokens if isinstance(tokens, list) else ():
        if isinstance(item, dict) and item.get("id") == ticket_id:
            entry = _entry(item, ticket=False, host=host)
            return entry if isinstance(entry, Token) else None
    return None
