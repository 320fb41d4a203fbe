"""Delegation records: the agent's handoff plus the engine's envelope, and late arrivals.

Layout of a records directory (``handoffs/`` or ``handoffs/sub/``)::

    inbox/<runId>.json      where the agent delivers its handoff; never rewritten by the
                            engine (a gateway's write tool may read the file back)
    <runId>.json            the record: the handoff's fields + "envelope" (caller, target,
                            timings, attempts, outcome...)
    .pending/<runId>.json   the envelope of a delegation whose record is not final yet
                            (dispatched, timed out or refused); removed once final
    rejected/<runId>.<n>.json  a refused (spoofed or malformed) handoff, kept for inspection

Every path a handoff takes (the waiting caller, the receiver, the gateway, any reader
through ``reconcile``) goes through ``deliver``: one merge rule. A handoff that lands
after its delegation gave up (timeout) is merged with the pending envelope and marked
``late``; nothing is lost, and no file the engine did not write is ever replaced.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Container, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from engine.files import parse_iso, utcnow_iso, write_json_atomic
from engine.redact import mask
from engine.states import HandoffStatus, Outcome
from engine.store.liveness import process_alive, waiter_alive
from engine.store.protocol import Delivery

__all__ = [
    "INBOX_DIR",
    "OUTCOMES",
    "PENDING_DIR",
    "REJECTED_DIR",
    "Delivery",
    "deliver",
    "delegation_tree",
    "find_record",
    "process_alive",
    "read_json",
    "reconcile",
]

_S = TypeVar("_S")  # one delivered handoff, as its store keeps it

#: Where agents deliver handoffs inside a records directory (see the layout above).
INBOX_DIR = "inbox"
#: Where a store that keeps handoffs elsewhere (PostgreSQL) moves the files it took in from
#: ``inbox/``; ``<runId>.json`` there marks that run's agent as having delivered.
IMPORTED_DIR = ".imported"

PENDING_DIR = ".pending"
REJECTED_DIR = "rejected"
#: Outcomes a record can have (``engine.states.Outcome``); the first four are the agent's
#: own statuses.
OUTCOMES = tuple(o.value for o in Outcome)


def pending_path(records_dir: Path, run_id: str) -> Path:
    """Path of the pending envelope of ``run_id``."""
    return Path(f"{records_dir}/{PENDING_DIR}/{run_id}.json")  # one Path, not three


def write_pending(records_dir: Path, run_id: str, envelope: dict[str, Any]) -> None:
    """Save the envelope of a delegation before it is dispatched (a new file, as a rule).

    An envelope already there hands on its key hashes (``handoff.with_earlier_keys``): a
    delegation sent again with a new key still takes the handoff of its first message."""
    from engine.files import write_json_new
    from engine.handoff import with_earlier_keys

    path = pending_path(records_dir, run_id)
    # Created as a new file first: the one read of an envelope there is made only when
    # the name is taken (a renewal, a retry), not on every delegation.
    if not write_json_new(path, envelope, compact=True):
        envelope = with_earlier_keys(read_json(path), envelope)
        write_json_atomic(path, envelope, compact=True)


def drop_pending(records_dir: Path, run_id: str) -> None:
    """Forget the pending envelope once the record is final."""
    try:
        os.unlink(pending_path(records_dir, run_id))
    except FileNotFoundError:
        pass


#: Largest file ``read_json`` reads (records hold a handoff and the task text).
MAX_JSON_BYTES = 64 * 1024 * 1024
_LOCK_NAME = ".lock"


def read_json(path: Path, *, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Read a JSON file, returning None when missing, unreadable or not plain JSON.

    Never blocks (a FIFO is not read), never reads more than ``max_bytes``, and a file
    nested deeply enough to break the parser, or holding NaN, is None like any other.
    """
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            return None
        raw = _read_fd(fd, st.st_size, max_bytes)
        if raw is None:
            return None
        return json.loads(raw, parse_constant=_no_constant)
    except (OSError, ValueError, RecursionError, MemoryError):
        return None
    finally:
        os.close(fd)


def json_problem(raw: bytes) -> tuple[Any, str | None]:
    """``(value, None)`` for the JSON text ``raw``, else ``(None, what is wrong)``: one
    phrase ("empty", "not JSON: the bytes are not UTF-8 text", "truncated JSON: <parser
    message> (line L, column C)", "invalid JSON: ..."), the words ``metrics``,
    ``orchestrate show`` and ``workflow test --record`` all use. NaN and Infinity are not
    JSON (``read_json``'s rule)."""
    if not raw.strip():
        return None, "empty" if not raw else "empty (only white space)"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not JSON: the bytes are not UTF-8 text"
    try:
        return json.loads(text, parse_constant=_no_constant), None
    except json.JSONDecodeError as exc:
        # cut short: the parser ran out of text (in a string, or after the last value)
        cut = exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string")
        what = "truncated JSON" if cut else "invalid JSON"
        return None, f"{what}: {exc.msg} (line {exc.lineno}, column {exc.colno})"
    except ValueError as exc:
        return None, f"invalid JSON: {exc}"
    except (RecursionError, MemoryError):
        return None, "invalid JSON: nested too deeply (or too large) to read"


def read_json_checked(path: Path, *, max_bytes: int = MAX_JSON_BYTES) -> tuple[Any, str | None]:
    """``(value, None)`` for the JSON file ``path``; ``(None, None)`` when it is missing;
    else ``(None, what is wrong)`` (``json_problem``'s phrases, or "unreadable: ...",
    "larger than N bytes", "not a regular file"). Bounded and non-blocking as
    ``read_json``."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, "not a regular file"
        if st.st_size > max_bytes:
            return None, f"larger than {max_bytes} bytes"
        raw = _read_fd(fd, st.st_size, max_bytes)
        if raw is None:
            return None, f"larger than {max_bytes} bytes"
        return json_problem(raw)
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"
    finally:
        os.close(fd)


#: The major version of the record and handoff schema this engine reads.
SCHEMA_MAJOR = 1


def record_problem(data: Any) -> str | None:
    """What makes ``data`` (a parsed ``<runId>.json``) not a record this engine can read,
    in one phrase, or None. The one check ``orchestrate show``, ``orchestrate tree`` and
    ``metrics`` use: an object; ``schemaVersion``, when given, of major version
    ``SCHEMA_MAJOR`` or older; ``envelope``, when given, an object whose ``outcome`` is one
    of ``OUTCOMES`` (``engine.states.Outcome``)."""
    if not isinstance(data, dict):
        return f"not a record: the JSON is {_kind(data)}, not an object"
    version = data.get("schemaVersion")
    if version is not None:
        major = str(version).split(".", 1)[0]
        if not major.isdigit():
            return f"not a record: `schemaVersion` {version!r} is not a version number"
        if int(major) > SCHEMA_MAJOR:
            return (
                f"written by a newer engine: schemaVersion {version}, this engine reads "
                f"{SCHEMA_MAJOR}.x"
            )
    env = data.get("envelope")
    if env is None:
        return None
    if not isinstance(env, dict):
        return "not a record: `envelope` is not an object"
    outcome = env.get("outcome")
    if outcome not in OUTCOMES:
        return f"unknown outcome `{outcome}` (known: {', '.join(OUTCOMES)})"
    return None


def _kind(value: Any) -> str:
    """A JSON value's kind in words ("an array", "a string", ...)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def _read_fd(fd: int, size: int, max_bytes: int) -> bytes | None:
    """All of the open file ``fd`` (``size`` bytes by its ``fstat``, more if it grew
    meanwhile), or None past ``max_bytes``. ``os.read`` straight on the descriptor: no
    file object (which cost a ``dup`` and a buffer per read)."""
    chunks: list[bytes] = []
    total = 0
    while True:
        want = size - total + 1 if total < size else 65536
        chunk = os.read(fd, want)
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            return None
        if len(chunk) < want:  # a short read of a regular file: its end
            return b"".join(chunks)


def _no_constant(name: str) -> Any:
    raise ValueError(f"`{name}` is not JSON")


def is_engine_record(data: Any) -> bool:
    """True for a record the engine wrote (it has an ``envelope``); False for a bare handoff."""
    return isinstance(data, dict) and isinstance(data.get("envelope"), dict)


def write_record(
    records_dir: Path,
    run_id: str,
    envelope: dict[str, Any],
    handoff: dict[str, Any] | None = None,
    *,
    agent: str | None = None,
) -> Path:
    """Write the record of ``run_id``: the handoff's fields plus ``envelope``, atomically.

    A file at the record path that the engine did not write (an agent's handoff, seed
    004's layout) is kept first (hard-linked into ``inbox/``), never silently replaced.
    """
    data = record_of(handoff, envelope, run_id)
    if handoff is None and agent:
        data["agent"] = agent
    return install_record(records_dir, run_id, data)


def install_record(records_dir: Path, run_id: str, data: dict[str, Any]) -> Path:
    """Put ``data`` at the record path: created if absent, replaced only over our own record."""
    from engine.files import write_json_new

    target = records_dir / f"{run_id}.json"
    # made in ``.pending/`` (nobody watches it): the records directory's watchers see the
    # record's create, not also the close of its unnamed file
    if write_json_new(target, data, compact=True, unnamed_in=records_dir / PENDING_DIR):
        return target
    if not is_engine_record(read_json(target)):
        preserve_agent_file(records_dir, run_id)
    return write_json_atomic(target, data, compact=True)


def preserve_agent_file(records_dir: Path, run_id: str) -> Path | None:
    """Hard-link an agent's file at the record path into ``inbox/`` so its bytes survive.

    Returns the inbox path that now holds it: ``inbox/<runId>.json``, or, when the inbox
    already holds another file (a gateway's stand-in that landed first), the first free
    ``inbox/<runId>.<n>.json`` (n >= 2), which the merge rule takes next like any second
    delivery (an agent's own handoff supersedes a stand-in). A directory there (which
    cannot be linked) is moved into the inbox the same way, to be refused as not a
    regular file. Only when no link can be made at all does it go to
    ``rejected/<runId>.<n>.json``.
    """
    source = records_dir / f"{run_id}.json"
    inbox = records_dir / INBOX_DIR / f"{run_id}.json"
    inbox.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        target = inbox if n == 1 else inbox.with_name(f"{run_id}.{n}.json")
        try:
            if _place_new(source, target, link=True):
                return target  # a directory there is moved in (no link can be made)
            if _same_file(source, target):
                return target
        except FileNotFoundError:
            return None
        except OSError:
            break
    return _keep_aside(records_dir, source, link=True)


def _same_file(a: Path, b: Path) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def record_of(
    handoff: dict[str, Any] | None, envelope: dict[str, Any], run_id: str
) -> dict[str, Any]:
    """The record mapping ``write_record`` writes (for callers that keep it in memory).

    The handoff's ``key`` is never copied, nor quoted (an agent that put it in its
    ``result`` or ``notes`` shows ``***`` there): the envelope says whether it was verified.
    """
    data: dict[str, Any]
    if handoff is not None:
        key = handoff.get("key")
        secret = key if isinstance(key, str) else None
        data = mask({k: v for k, v in handoff.items() if k not in ("envelope", "key")}, secret)
    else:
        data = {"schemaVersion": "1.0", "runId": run_id, "agent": envelope.get("target")}
    data["envelope"] = envelope
    return data


def keep_rejected(records_dir: Path, path: Path, *, inode: int | None = None) -> Path | None:
    """Move a refused handoff file aside (never delete it); return where it went.

    With ``inode`` (the refused file's, from ``lstat``), a file that replaced it at
    ``path`` meanwhile (the real agent's answer, written just now) is not taken along: it
    is put back (beside, as ``<runId>.<n>.json``, if the name is taken again) and None
    is returned.
    """
    if not os.path.lexists(path):
        return None
    if inode is None:
        return _keep_aside(records_dir, path, link=False)
    import secrets

    target_dir = records_dir / REJECTED_DIR
    target_dir.mkdir(parents=True, exist_ok=True)
    held = target_dir / f".tmp-{secrets.token_hex(6)}"
    try:
        os.rename(path, held)  # atomic: whatever is at `path` now, and only that
    except FileNotFoundError:
        return None
    if os.lstat(held).st_ino != inode:
        _put_back(held, path)
        return None
    kept = _keep_aside(records_dir, held, link=False, stem=path.name)
    return kept


def _put_back(held: Path, path: Path) -> None:
    stem = path.name[: -len(".json")].split(".", 1)[0]
    target, n = path.with_name(f"{stem}.json"), 1
    while not _place_new(held, target, link=False):
        n += 1
        target = path.with_name(f"{stem}.{n}.json")


def _place_new(source: Path, target: Path, *, link: bool) -> bool:
    """Put ``source`` at ``target`` only if nothing is there (False if taken); with
    ``link`` the source stays where it is too.

    A hard link (which never replaces) for anything but a directory: any file, a FIFO,
    a socket, a device node or a symlink itself (``follow_symlinks=False``). A directory
    cannot be hard-linked (EPERM), so it is moved: the name is taken first with
    ``mkdir`` (atomic, EEXIST if taken) and the directory renamed over that empty one,
    which ``rename(2)`` allows; it then leaves ``source`` whatever ``link`` says.
    Raises ``FileNotFoundError`` when ``source`` is gone.
    """
    import stat

    if stat.S_ISDIR(os.lstat(source).st_mode):
        try:
            os.mkdir(target)
        except FileExistsError:
            return False
        try:
            os.rename(source, target)
        except OSError:
            try:  # gone meanwhile, or our empty name filled: not ours to keep
                os.rmdir(target)
            except OSError:
                pass
            raise
        return True
    try:
        os.link(source, target, follow_symlinks=False)
    except FileExistsError:
        return False
    if not link:
        try:
            os.unlink(source)
        except FileNotFoundError:
            pass
    return True


def _keep_aside(
    records_dir: Path, path: Path, *, link: bool, stem: str | None = None
) -> Path | None:
    target_dir = records_dir / REJECTED_DIR
    target_dir.mkdir(parents=True, exist_ok=True)
    name = stem or path.name
    stem = name[: -len(".json")] if name.endswith(".json") else name
    stem = stem.split(".", 1)[0]
    for n in range(1, 10_000):
        target = target_dir / f"{stem}.{n}.json"
        try:
            if _place_new(path, target, link=link):
                return target
        except FileNotFoundError:
            return None
    return None


@contextmanager
def _locked(records_dir: Path) -> Iterator[None]:
    """One deliverer at a time per records directory, across processes (flock)."""
    import fcntl

    lock = f"{records_dir}/{PENDING_DIR}/{_LOCK_NAME}"
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
    try:
        fd = os.open(lock, flags, 0o600)
    except FileNotFoundError:  # the first delivery here: make the directory once
        (records_dir / PENDING_DIR).mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _sources(records_dir: Path, run_id: str) -> dict[Path, int]:
    """The run's inbox files in order (``<runId>.json``, then ``<runId>.<n>.json``), each
    with its inode as ``lstat`` saw it here, under the lock: a refusal moves only that
    file (``keep_rejected``), without an ``lstat`` of its own."""
    inbox = records_dir / INBOX_DIR
    found: dict[Path, int] = {}
    first = inbox / f"{run_id}.json"
    if (ino := _lstat_ino(first)) is not None:
        found[first] = ino
    n = 2
    while (ino := _lstat_ino(alt := inbox / f"{run_id}.{n}.json")) is not None:
        found[alt] = ino
        n += 1
    return found


def _lstat_ino(path: Path) -> int | None:
    try:
        return os.lstat(path).st_ino
    except OSError:
        return None


def _file_id(path: Path) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino]


def deliver(
    records_dir: Path,
    run_id: str,
    *,
    envelope: dict[str, Any] | None = None,
    grace: float = 2.0,
    look: bool = True,
) -> Delivery:
    """Deliver the handoff of ``run_id``: the one merge rule for every path a handoff takes.

    The waiting caller passes its ``envelope`` (then nothing it notes is written: it
    records at the end); the receiver, the gateway and every reader call it without
    one, and the pending envelope is used. The rule:

    - the handoff is found in ``inbox/<runId>.json`` (then ``inbox/<runId>.<n>.json``),
      or at the record path if an agent wrote it there (it is hard-linked into the inbox
      first, so its bytes survive);
    - a record final because of an agent's own handoff stays final: a further handoff
      is kept and listed in the record's ``also_received``; a gateway-written fallback
      never supersedes an agent's handoff, but an agent's handoff supersedes a fallback;
    - a timeout, cancelled, invalid or errored record is superseded by a later valid
      handoff (``supersedes`` names it); ``late`` is true when it was received (by our
      clock) after the deadline and no caller was waiting for it;
    - a refused handoff (wrong or missing key, spoofed, oversized, not a regular file,
      malformed) is moved to ``rejected/`` and listed with the reason in ``rejected``.

    ``look=False``: the caller has just seen an inbox file, so the look without the lock
    (``nothing_there``) is skipped; the answer is the same either way.
    """
    if look and nothing_there(records_dir, run_id):
        return Delivery("absent")  # what the locked look would say, without the lock
    with _locked(records_dir):
        at_record = records_dir / f"{run_id}.json"
        current: Any = None  # nothing there, as a rule: one lstat, no failed open
        if os.path.lexists(at_record):
            current = read_json(at_record)
            if current is None:
                current = {}  # something unreadable that is not ours
        if current is not None and not is_engine_record(current):
            preserve_agent_file(records_dir, run_id)  # seed 004's agents write here
            current = None
        sources = _sources(records_dir, run_id)
        if not sources:
            return Delivery("absent")
        pending = read_json(pending_path(records_dir, run_id)) if envelope is None else None

        def one(source: Path, env: dict[str, Any], cur: Any, waits: bool) -> Delivery:
            into = _Into(records_dir, run_id, env, cur, waits)
            return _deliver_one(into, source, grace, sources[source])

        return merge_sources(
            list(sources), one, envelope=envelope, pending=pending, current=current
        )


def nothing_there(records_dir: Path, run_id: str) -> bool:
    """No handoff in the inbox (first or second copy) and nothing at the record path."""
    inbox = f"{records_dir}/{INBOX_DIR}/{run_id}"  # strings: this runs on every look
    return not (
        os.path.lexists(f"{inbox}.json")
        or os.path.lexists(f"{inbox}.2.json")
        or os.path.lexists(f"{records_dir}/{run_id}.json")
    )


def merge_sources(
    sources: Sequence[_S],
    one: Callable[[_S, dict[str, Any], dict[str, Any] | None, bool], Delivery],
    *,
    envelope: dict[str, Any] | None,
    pending: Any,
    current: dict[str, Any] | None,
) -> Delivery:
    """The merge rule's steps over a run's delivered handoffs, in order, whatever keeps them.

    The envelope is the waiter's (``envelope``), else the ``pending`` one (``waiting``
    when its caller is alive: it records its own), else the ``current`` record's
    (``unknown`` without any). ``one(source, env, current, waiting)`` takes one handoff;
    after a ``recorded`` one the next handoffs meet that record; a ``partial`` one stops.
    The answer is the first of recorded, partial, refused, duplicate, already (else
    ``absent``). Used by ``deliver`` (files) and the PostgreSQL store.
    """
    env = envelope
    waiting = envelope is not None
    if env is None and isinstance(pending, dict):
        env = pending
        if waiter_alive(pending):
            return Delivery("waiting")
    cur_env = current["envelope"] if isinstance(current, dict) else None
    if env is None:
        if cur_env is None:
            return Delivery("unknown")
        env = cur_env
    results = []
    for source in sources:
        step = one(source, env, current, waiting)
        results.append(step)
        if step.state == "recorded":
            assert step.record is not None
            current, env, waiting = step.record, step.record["envelope"], False
        elif step.state == "partial":
            break
    for state in ("recorded", "partial", "refused", "duplicate", "already"):
        for step in results:
            if step.state == state:
                return step
    return Delivery("absent")


@dataclass(frozen=True)
class _Into:
    """Where a delivered file goes: the run's records directory and id, its pending
    envelope, its record so far (if any), and whether its delegation still waits."""

    records_dir: Path
    run_id: str
    env: dict[str, Any]
    current: dict[str, Any] | None
    waiting: bool


def _deliver_one(into: _Into, source: Path, grace: float, seen_ino: int | None) -> Delivery:
    """Take one delivered file: record it, refuse it, or keep it aside as a second one."""
    records_dir, run_id, current = into.records_dir, into.run_id, into.current
    cur_env, final = _envelopes(current)
    if final is not None and _seen(final, source):
        return Delivery("already", records_dir / f"{run_id}.json", current)
    if final is None and cur_env is not None and _kept_beside(cur_env, source):
        # a stand-in kept beside an ending the engine decided: not taken again
        return Delivery("already", records_dir / f"{run_id}.json", current)
    read = _read(into, source, grace, seen_ino)
    if isinstance(read, Delivery):
        return read
    handoff, verified, st = read
    fallback = _is_fallback(handoff)
    standing = _standing(final, cur_env, fallback)
    if standing is not None:
        return _keep_second(into, source, standing, fallback)
    new = recorded_envelope(into.env, cur_env, into.waiting, handoff, verified, source)
    new["handoff_inode"] = [st.st_dev, st.st_ino]
    data = record_of(handoff, new, run_id)
    path = install_record(records_dir, run_id, data)
    drop_pending(records_dir, run_id)
    return Delivery("recorded", path, data)


def _read(
    into: _Into, source: Path, grace: float, seen_ino: int | None
) -> tuple[dict[str, Any], bool, os.stat_result] | Delivery:
    """The checked handoff in ``source`` (see ``_checked``), or what to answer instead: a
    partial file still being written, an empty one, or a refusal kept in ``rejected/``.
    ``seen_ino``: the file's inode when it was found (a file that replaced it since is not
    refused: ``_refuse`` answers ``absent`` and the next look reads it)."""
    from engine.handoff import FINAL_KINDS, HandoffProblem

    try:
        checked = _checked(into, source)
    except HandoffProblem as exc:
        if exc.kind not in FINAL_KINDS and (into.waiting or _fresh(source, grace)):
            return Delivery("partial", problem=exc)
        return _refuse(into, source, exc, seen_ino)
    return Delivery("absent") if checked is None else checked  # None: created, not written


def _envelopes(
    current: dict[str, Any] | None,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The envelope of the record so far (``current``; None without one), and the same
    again when an agent's handoff made that record final (else None)."""
    found = current.get("envelope") if current else None
    cur_env = found if isinstance(found, dict) else None
    final = cur_env if cur_env is not None and cur_env.get("outcome") in _AGENT_STATUSES else None
    return cur_env, final


def _is_fallback(handoff: dict[str, Any]) -> bool:
    """Whether ``handoff`` is a stand-in the local gateway wrote, not the agent's own."""
    from engine.handoff import is_stand_in

    return is_stand_in(handoff)


def _standing(
    final: dict[str, Any] | None, cur_env: dict[str, Any] | None, fallback: bool
) -> dict[str, Any] | None:
    """The recorded envelope that stands against a new handoff, which is then kept beside
    it; None when the new one is recorded. An agent's final handoff stands against any
    other, except a gateway's stand-in against the agent's own; an ending the engine
    decided (``lost``, ``timeout``, ``cancelled``...) stands against a stand-in only."""
    if final is not None and not (final.get("fallback") and not fallback):
        return final
    if fallback and cur_env is not None and cur_env.get("outcome") not in (None, "dispatched"):
        return cur_env
    return None


def _kept_beside(cur_env: dict[str, Any], source: Path) -> bool:
    """Whether ``source`` is a file already listed in ``also_received``."""
    fid = _file_id(source)
    return fid is not None and fid in [e.get("inode") for e in cur_env.get("also_received", [])]


def _seen(cur_env: dict[str, Any], source: Path) -> bool:
    """Whether ``source`` is the file a final record already took (or kept aside)."""
    fid = _file_id(source)
    if cur_env.get("handoff_inode") is None and "handoff_file" not in cur_env:
        cur_env["handoff_inode"] = fid  # recorded before inodes were kept: that one
        return True
    return fid == cur_env.get("handoff_inode") or fid in [
        e.get("inode") for e in cur_env.get("also_received", [])
    ]


def _checked(into: _Into, source: Path) -> tuple[dict[str, Any], bool, os.stat_result] | None:
    """The handoff in ``source``, checked (``HandoffProblem`` if not), whether its key was
    verified, and the file's stat; None while a waited-for file is still empty."""
    from engine.handoff import MAX_HANDOFF_BYTES, check_delivered, read_handoff_bytes

    env, records_dir = into.env, into.records_dir
    root = records_dir.parent if records_dir.name == "sub" else records_dir
    raw, st = read_handoff_bytes(
        source, max_bytes=int(env.get("max_handoff_bytes") or MAX_HANDOFF_BYTES), root=root
    )
    if not raw.strip() and into.waiting:
        return None
    handoff, verified = check_delivered(
        raw, env, path=source, run_id=into.run_id, earlier=_earlier_keys(into)
    )
    return handoff, verified, st


def _earlier_keys(into: _Into) -> Iterator[str]:
    """The key hashes this delegation was sent with before, from its pending envelope
    (a waiter's own envelope does not carry those its store kept); read only when the
    handoff's key is not the current one."""
    if into.env.get("earlier_key_sha256"):
        return  # check_keys reads the envelope's own
    pending = read_json(pending_path(into.records_dir, into.run_id))
    if isinstance(pending, dict):
        yield from (h for h in pending.get("earlier_key_sha256") or () if isinstance(h, str))


def _refuse(into: _Into, source: Path, exc: Any, seen_ino: int | None) -> Delivery:
    """A file that is no usable handoff: kept in ``rejected/`` and noted on the record."""
    kept = keep_rejected(into.records_dir, source, inode=seen_ino)
    if kept is None and os.path.lexists(source):
        return Delivery("absent")  # replaced while being read: look at the new one
    note = _rejected_note(kept, exc)
    _note(into.records_dir, into.run_id, into.env, into.current, "rejected", note, into.waiting)
    return Delivery("refused", problem=exc, kept=kept)


def _rejected_note(kept: object, exc: Any) -> dict[str, Any]:
    """The ``rejected`` entry of a refused handoff kept at ``kept`` (a path, or the
    database's locator): ``file``, ``reason`` (``exc.message``), ``at`` and, when the
    ``HandoffProblem`` lists them, ``problems``. Both run stores write this shape."""
    note: dict[str, Any] = {"file": str(kept), "reason": exc.message, "at": utcnow_iso()}
    if exc.problems:
        note["problems"] = list(exc.problems)
    return note


def _aside_reason(standing: dict[str, Any], fallback: bool) -> str:
    """Why a handoff was kept beside the envelope ``standing`` (its ``also_received``
    entry): a gateway's stand-in after an ending the engine decided or after the agent's
    own handoff, else a second handoff after the first. Both run stores use this text."""
    if fallback and standing.get("outcome") not in _AGENT_STATUSES:
        return f"a gateway-written fallback, after the engine recorded `{standing.get('outcome')}`"
    if fallback:
        return "a gateway-written fallback, after the agent's own handoff was recorded"
    first = standing.get("handoff_file") or "the first handoff"
    return f"a second handoff for a run already recorded from {first}"


def _keep_second(into: _Into, source: Path, cur_env: dict[str, Any], fallback: bool) -> Delivery:
    """A second handoff for a recorded run: kept aside and listed, never over the first."""
    records_dir, run_id = into.records_dir, into.run_id
    kept = _keep_aside(records_dir, source, link=source.name == f"{run_id}.json")
    reason = _aside_reason(cur_env, fallback)
    dup: dict[str, Any] = {"file": str(kept), "reason": reason, "at": utcnow_iso()}
    dup["inode"] = _file_id(kept) if kept else None
    _note(records_dir, run_id, into.env, into.current, "also_received", dup, False)
    record_path = records_dir / f"{run_id}.json"
    return Delivery("duplicate", record_path, read_json(record_path), kept=kept)


def recorded_envelope(
    env: dict[str, Any],
    cur_env: dict[str, Any] | None,
    waiting: bool,
    handoff: dict[str, Any],
    verified: bool,
    handoff_file: object,
) -> dict[str, Any]:
    """The envelope of a record made from a checked ``handoff`` (``_merged_envelope``)
    with its ``outcome`` (the handoff's ``status``), ``key_verified``, ``handoff_file``,
    and ``fallback`` only when the handoff is a gateway's stand-in."""
    new = _merged_envelope(env, cur_env, waiting)
    new["outcome"] = handoff["status"]
    if _is_fallback(handoff):
        new["fallback"] = True
    else:
        new.pop("fallback", None)
        if cur_env is not None and cur_env.get("fallback") and cur_env.get("handoff_file"):
            # the stand-in this handoff supersedes stays listed (and is not taken again)
            kept = {
                "file": cur_env["handoff_file"],
                "reason": "a gateway-written fallback, superseded by the agent's own handoff",
                "at": utcnow_iso(),
                "inode": cur_env.get("handoff_inode"),
            }
            new["also_received"] = [*new.get("also_received", []), kept]
    new["key_verified"] = verified
    if not verified:
        new["unverified"] = True
    new["handoff_file"] = str(handoff_file)
    return new


def _merged_envelope(
    env: dict[str, Any], cur_env: dict[str, Any] | None, waiting: bool
) -> dict[str, Any]:
    """The envelope of a new record: the pending one, what the record before it had kept
    (refused and second files), when it arrived and whether late, what it supersedes."""
    new = dict(env)
    for k in ("error", "rejected_file", "status_code", "ended_at", "handoff_inode"):
        new.pop(k, None)
    for k in ("rejected", "also_received"):
        if cur_env is not None and cur_env.get(k):
            new[k] = _merge_lists(new.get(k), cur_env[k])
    received = new["received_at"] = utcnow_iso()
    dispatched = new.get("dispatched_at") or new.get("created_at")
    if dispatched:
        new["duration_ms"] = max(
            0.0, round((parse_iso(received) - parse_iso(dispatched)).total_seconds() * 1000, 3)
        )
    deadline = new.get("deadline_at")
    if deadline:
        late = parse_iso(received) > parse_iso(deadline)
    else:  # an envelope without a deadline: late if its caller had stopped waiting
        late = env.get("outcome") in ("timeout", "cancelled")
    new["late"] = bool(not waiting and late)
    supersedes = _supersedes(env, cur_env, waiting)
    if supersedes:
        new["supersedes"] = supersedes
    return new


def _supersedes(env: dict[str, Any], cur_env: dict[str, Any] | None, waiting: bool) -> Any:
    """What a new record replaces: a gateway fallback, or an earlier outcome; else None."""
    if cur_env is not None and cur_env.get("fallback"):
        return "fallback"
    old = cur_env.get("outcome") if cur_env is not None else None
    if not waiting and old and old != "dispatched":
        return old
    if not waiting and env.get("outcome") not in (None, "dispatched"):
        return env.get("outcome")
    return None


_AGENT_STATUSES = tuple(s.value for s in HandoffStatus)


def _merge_lists(a: Any, b: Any) -> list[Any]:
    out = list(a or [])
    for item in b or []:
        if item not in out:
            out.append(item)
    return out


def _fresh(path: Path, grace: float) -> bool:
    """True while a file was changed less than ``grace`` seconds ago (maybe being written)."""
    import time

    try:
        return time.time() - os.lstat(path).st_mtime < grace
    except OSError:
        return False


def _note(
    records_dir: Path,
    run_id: str,
    env: dict[str, Any],
    current: dict[str, Any] | None,
    field: str,
    note: dict[str, Any],
    waiting: bool,
) -> None:
    """List ``note`` under ``field`` where it will be seen: the waiter's envelope (it
    records at the end), else the pending envelope and the engine's record."""
    if waiting:
        env.setdefault(field, []).append(note)
        return
    pending = pending_path(records_dir, run_id)
    if os.path.exists(pending):
        data = read_json(pending)
        if isinstance(data, dict):
            data.setdefault(field, []).append(note)
            write_json_atomic(pending, data, compact=True)
    if current is not None and is_engine_record(current):
        current["envelope"].setdefault(field, []).append(note)
        install_record(records_dir, run_id, current)


def refuse(
    records_dir: Path, run_id: str, source: Path, problem: Any, envelope: dict[str, Any]
) -> Path | None:
    """Move a handoff the waiter gave up on to ``rejected/`` and list it in ``envelope``."""
    kept = keep_rejected(records_dir, source)
    note = {"file": str(kept), "reason": problem.message, "at": utcnow_iso()}
    envelope.setdefault("rejected", []).append(note)
    return kept


def reconcile(records_dir: Path) -> list[Path]:
    """Merge handoffs that arrived with nobody waiting into their pending envelopes.

    Returns the records written. Each run goes through ``deliver``, the one merge rule.
    """
    pending_dir = records_dir / PENDING_DIR
    written: list[Path] = []
    try:
        entries = list(os.scandir(pending_dir))
    except FileNotFoundError:
        return written
    for entry in entries:
        if not entry.name.endswith(".json") or entry.name.startswith(".tmp-"):
            continue
        done = reconcile_run(records_dir, entry.name[: -len(".json")])
        if done is not None:
            written.append(done)
    return written


def reconcile_run(records_dir: Path, run_id: str) -> Path | None:
    """``reconcile`` for one run: merge its delivered handoff into its pending envelope
    when nobody waits for it; the record written, else None.

    Nothing is done (None) without a pending envelope, while its caller is alive (it
    records its own), or without a handoff in the inbox or at the record path. The local
    gateway calls this after each of its runs, for that run only: a pass over every
    pending envelope there cost one read per delegation in flight.
    """
    pending = pending_path(records_dir, run_id)
    envelope = read_json(pending)
    if not isinstance(envelope, dict) or waiter_alive(envelope):
        return None
    if not (
        os.path.lexists(records_dir / INBOX_DIR / f"{run_id}.json")
        or not is_engine_record(read_json(records_dir / f"{run_id}.json"))
        and os.path.lexists(records_dir / f"{run_id}.json")
    ):
        return None
    try:
        done = deliver(records_dir, run_id)
    except OSError:
        return None
    return done.record_path if done.state == "recorded" else None


def _node(run_id: str, data: dict[str, Any], pending: bool) -> dict[str, Any]:
    """One node of ``delegation_tree`` from a record (``pending`` False) or a pending
    envelope. A pending delegation still dispatched is ``in flight`` while its waiter may
    be alive, else ``abandoned``: judged as ``orchestrate show`` judges it
    (``waiter_alive``; an envelope naming no owner, neither ``pid`` nor ``host``, cannot
    be judged and stays ``in flight``)."""
    env = data.get("envelope", data) if not pending else data
    outcome = env.get("outcome")
    if pending and outcome in (None, "dispatched"):
        judged = type(env.get("pid")) is int or env.get("host") is not None
        outcome = "abandoned" if judged and not waiter_alive(env) else "in flight"
    return {
        "run_id": run_id,
        "caller": env.get("caller"),
        "target": env.get("target"),
        "outcome": outcome,
        "confidence": data.get("confidence"),
        "duration_ms": env.get("duration_ms"),
        "late": env.get("late", False),
        "parent_run_id": env.get("parent_run_id"),
        "continued_as": _continued_as(env),
        "children": [],
    }


def _continued_as(env: dict[str, Any]) -> str | None:
    """The run id an answered question continued as (``engine.ask``), or None."""
    done = [a for a in env.get("answers") or [] if isinstance(a, dict) and a.get("continued_as")]
    return str(done[-1]["continued_as"]) if done else None


def delegation_tree(handoffs_dir: Path, run_id: str) -> dict[str, Any] | None:
    """The delegation tree under ``run_id``: its record and its sub-delegations, nested.

    ``RunStateError`` (``damaged_record_message``) when the root's record cannot be read
    (``read_json_checked``, ``record_problem``: the same check as ``find_record``); a
    sub-delegation whose record fails ``record_problem`` is a node whose outcome says so.
    """
    from engine.errors import RunStateError

    for records in (handoffs_dir, handoffs_dir / "sub"):
        path = records / f"{run_id}.json"
        data, problem = read_json_checked(path)
        problem = problem or (record_problem(data) if data is not None else None)
        if problem is not None:
            raise RunStateError(
                damaged_record_message(
                    path, problem, pending_path(records, run_id), records / INBOX_DIR / path.name
                )
            )
    nodes: dict[str, dict[str, Any]] = {}
    for records in (handoffs_dir, handoffs_dir / "sub"):
        reconcile(records)
        only = run_id if records == handoffs_dir else None  # the root's, of the top level
        for rid, data in _json_files(records, nodes, only):
            if "envelope" in data:
                nodes[rid] = _node(rid, data, False)
                problem = record_problem(data)
                if problem is not None:
                    nodes[rid]["outcome"] = f"unreadable record ({problem})"
        for rid, data in _json_files(records / PENDING_DIR, nodes, None):
            nodes[rid] = _node(rid, data, True)
    return nest(nodes, run_id)


def nest(nodes: dict[str, dict[str, Any]], run_id: str) -> dict[str, Any] | None:
    """The tree under ``run_id`` (None when it is not in ``nodes``): each node (from
    ``_node``) appended to its parent's ``children``. Also the PostgreSQL store's."""
    root = nodes.get(run_id)
    if root is None:
        return None
    for node in nodes.values():
        parent = node["parent_run_id"]
        if parent and parent in nodes and node is not root:
            nodes[parent]["children"].append(node)
    return root


def _json_files(
    folder: Path, known: Container[str], only: str | None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(runId, object)`` of each ``<runId>.json`` in ``folder`` not ``known`` yet (and
    only ``only``'s when given), asked before the file is read; non-objects passed over."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    for entry in entries:
        if not entry.name.endswith(".json") or entry.name.startswith(".tmp-"):
            continue
        rid = entry.name[: -len(".json")]
        if rid not in known and (only is None or rid == only):
            data = read_json(Path(entry.path))
            if isinstance(data, dict):
                yield rid, data


def find_record(handoffs_dir: Path, run_id: str) -> tuple[Path, dict[str, Any]]:
    """The record of ``run_id`` (top-level or sub-delegation), delivering a handoff that
    arrived meanwhile first; else its pending envelope (no ``status``: not answered yet);
    else a handoff delivered for a run no delegation knows (no ``envelope``)."""
    from engine.errors import RunStateError
    from engine.files import check_id

    check_id(run_id, "run id")
    found: tuple[Path, dict[str, Any]] | None = None
    for records in (handoffs_dir, handoffs_dir / "sub"):
        record = records / f"{run_id}.json"
        pending = pending_path(records, run_id)
        inbox = records / INBOX_DIR / f"{run_id}.json"
        if not any(os.path.lexists(p) for p in (record, pending, inbox)):
            continue
        # checked before ``deliver``, which would take a handoff over a record it misreads
        data, problem = read_json_checked(record)
        problem = problem or (record_problem(data) if data is not None else None)
        if problem is not None:
            raise RunStateError(damaged_record_message(record, problem, pending, inbox))
        try:
            deliver(records, run_id)
        except OSError:
            pass
        data = read_json(record)
        if is_engine_record(data):
            return record, data
        env = read_json(pending)
        if isinstance(env, dict):
            return pending, record_of(None, env, run_id)
        handoff = read_json(inbox)
        if found is None and isinstance(handoff, dict):
            found = inbox, {k: v for k, v in handoff.items() if k not in ("key", "envelope")}
    if found is not None:
        return found
    raise RunStateError(
        f"no record for `{run_id}` in `{handoffs_dir}`. Run ids are printed by "
        f"`orchestrate` (`record: ...`); the records are the `<runId>.json` files of "
        f"`{handoffs_dir}` and `{handoffs_dir / 'sub'}` (`ls` them)."
    )


def damaged_record_message(
    record: Path, problem: str, pending: Path | None = None, inbox: Path | None = None
) -> str:
    """The paragraph ``orchestrate show``/``tree`` say for a record file they cannot read:
    the file, ``problem`` (``read_json_checked``/``record_problem``'s phrase), and what to
    do: the pending envelope or the agent's inbox handoff when one is still there, and
    restoring or deleting the file."""
    kept = [
        f"`{p}` ({what})"
        for p, what in ((pending, "the pending envelope"), (inbox, "the agent's handoff"))
        if p is not None and os.path.lexists(p)
    ]
    still = f" Still there: {' and '.join(kept)}." if kept else ""
    newer = problem.startswith("written by a newer engine")
    todo = (
        "Read it with the engine that wrote it, or upgrade this one."
        if newer
        else "Restore it from a backup, or delete it"
        + (" to see what is still there." if kept else ".")
    )
    return f"the record `{record}` cannot be read: {problem}.{still} {todo}"
