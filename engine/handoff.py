"""The handoff contract: what an agent writes, how it is checked, where it goes.

Each delegation has a key, an unguessable string that only its task message carries;
the handoff returns it in ``key``. Only its SHA-256 is kept on disk (in the pending
envelope), and keys are compared in constant time. Handoff files are read defensively:
at most ``max_handoff_bytes``, regular files only (a symlink only when it resolves
inside the handoffs directory), no NaN or Infinity, no nesting deep enough to break
the parser.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from engine.errors import HandoffError, UsageError
from engine.files import utcnow_iso, write_json_atomic, write_json_new
from engine.states import Confidence, HandoffStatus
from engine.textio import terminal_text

SCHEMA_VERSION = "1.1"
#: The version before keys; accepted only under ``handoff_key: optional``.
LEGACY_SCHEMA_VERSION = "1.0"
STATUSES = tuple(s.value for s in HandoffStatus)
CONFIDENCES = tuple(c.value for c in Confidence)
#: The handoff field that carries the delegation's key back.
KEY_FIELD = "key"
#: ``handoff_key`` settings: a missing key is refused, or accepted as ``unverified``.
KEY_POLICIES = ("required", "optional")
#: Default of ``max_handoff_bytes``: larger handoff files are refused unread.
MAX_HANDOFF_BYTES = 1024 * 1024
#: Kinds of problems that a rewrite by the agent cannot be waiting to fix.
FINAL_KINDS = ("mismatch", "key", "unkeyed", "size", "file")
#: Every handoff the local gateway writes itself (a stand-in) has notes starting with this.
GATEWAY_NOTE_PREFIX = "written by the local gateway"
#: The note on a model agent's handoff: the gateway ran the model and wrote its answer, so
#: that handoff is the agent's own, not a stand-in (``is_stand_in`` tells them apart by it).
MODEL_NOTE = f"{GATEWAY_NOTE_PREFIX} for the `openai` agent"
#: What a key looks like (the schema's pattern for ``key``).
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_DATE_TIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)


def is_stand_in(handoff: Mapping[str, Any]) -> bool:
    """Whether ``handoff`` is a stand-in the local gateway wrote (its ``notes`` start with
    ``GATEWAY_NOTE_PREFIX``), not the agent's own. A model agent's answer, which the gateway
    writes for the model (``MODEL_NOTE``), is the agent's own."""
    notes = str(handoff.get("notes") or "")
    return notes.startswith(GATEWAY_NOTE_PREFIX) and not notes.startswith(MODEL_NOTE)


class HandoffProblem(HandoffError):
    """Raised when a handoff file cannot be accepted; ``kind`` says why.

    ``parse`` and ``schema`` problems may be a file caught half-written, so a waiter
    gives the agent a short grace to rewrite it; ``mismatch`` (a runId or agent that is
    not the delegation's), ``key`` (a wrong key, or under ``handoff_key: required`` no
    key and another run or agent named: the waiter keeps waiting for the real agent),
    ``unkeyed`` (no key, or version 1.0 under ``handoff_key: required``), ``size`` (over
    ``max_handoff_bytes``) and ``file`` (not a regular file, or a symlink leading out
    of the handoffs directory) are refused at once.
    """

    def __init__(self, message: str, *, kind: str, path: Path, problems: list[str] | None = None):
        super().__init__(message, path=path, problems=problems)
        self.kind = kind


def make_handoff(
    *,
    run_id: str,
    agent: str,
    status: str,
    result: str,
    confidence: str = "medium",
    artifacts: Iterable[str] = (),
    notes: str | None = None,
    usage: Mapping[str, Any] | None = None,
    timestamp: str | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """Build a handoff mapping with the contract's field order.

    With ``key`` (the task message's ``key:`` line) it is a version 1.1 handoff; without
    one, a version 1.0 handoff, accepted only under ``handoff_key: optional``.
    """
    data: dict[str, Any] = {
        "schemaVersion": SCHEMA_VERSION if key else LEGACY_SCHEMA_VERSION,
        "runId": run_id,
        "agent": agent,
        "status": status,
        "result": result,
        "confidence": confidence,
        "timestamp": timestamp or utcnow_iso(),
        "artifacts": list(artifacts),
    }
    if notes:
        data["notes"] = notes
    if usage:
        data["usage"] = dict(usage)
    if key:
        data[KEY_FIELD] = key
    return data


def new_key() -> str:
    """A fresh delegation key: 128 random bits as 32 hex digits (safe on any command line)."""
    return secrets.token_hex(16)


def key_hash(key: str) -> str:
    """The SHA-256 of ``key`` as hex: what is kept on disk instead of the key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


#: How a refusal for a wrong key says it (engine.repair tells the agent from it).
WRONG_KEY = "its `key` is not this delegation's"


def check_key(
    data: dict[str, Any], *, expected_hash: str | None, policy: str, path: Path
) -> bool:
    """Check the handoff's ``key`` against the delegation's; True if verified.

    A missing key (or a version 1.0 handoff) is refused unless ``policy`` is
    ``optional``, when it is accepted unverified (False). A wrong key is always refused.
    """
    key = data.get(KEY_FIELD)
    if expected_hash is None:
        return False  # a delegation made before keys existed: nothing to compare
    if not isinstance(key, str):
        if policy == "optional":
            return False
        raise HandoffProblem(
            f"handoff `{path}` refused: it has no `key`. Copy the `key:` line of the task "
            "message into the handoff's `key` field (`orchestrate handoff write --key`), or "
            "set `handoff_key: optional` in the config for agents on old instructions.",
            kind="unkeyed",
            path=path,
        )
    if data.get("schemaVersion") == LEGACY_SCHEMA_VERSION and policy != "optional":
        raise HandoffProblem(
            f"handoff `{path}` refused: `schemaVersion` `1.0` is accepted only under "
            "`handoff_key: optional`; write `1.1`.",
            kind="unkeyed",
            path=path,
        )
    if not hmac.compare_digest(key_hash(key), expected_hash):
        raise HandoffProblem(
            f"handoff `{path}` refused: {WRONG_KEY} (forged or misdirected); it was kept "
            "for inspection.",
            kind="key",
            path=path,
        )
    return True


def check_keys(
    data: dict[str, Any],
    envelope: Mapping[str, Any],
    *,
    path: Path,
    earlier: Iterable[str] = (),
) -> bool:
    """``check_key`` against the envelope's ``key_sha256``, else against a key the same
    delegation was sent with before (``earlier``, then the envelope's own
    ``earlier_key_sha256``); True if verified.

    A delegation sent again under the same Idempotency-Key after its sender died gets a
    new key, but the gateway may have run the first message only, so the agent holds the
    first key (see ``with_earlier_keys``). ``earlier`` is read only when the key is wrong.
    Raises the ``HandoffProblem`` of the envelope's own key when none fits.
    """
    policy = str(envelope.get("handoff_key") or "required")
    try:
        return check_key(data, expected_hash=envelope.get("key_sha256"), policy=policy, path=path)
    except HandoffProblem as exc:
        if exc.kind != "key":
            raise
        for digest in (*earlier, *(envelope.get("earlier_key_sha256") or ())):
            if not isinstance(digest, str):
                continue
            try:
                return check_key(data, expected_hash=digest, policy=policy, path=path)
            except HandoffProblem:
                continue
        raise


def check_delivered(
    raw: bytes,
    envelope: Mapping[str, Any],
    *,
    path: Path,
    run_id: str,
    earlier: Iterable[str] = (),
) -> tuple[dict[str, Any], bool]:
    """The handoff in ``raw`` (the bytes delivered for the delegation of ``envelope``, run
    ``run_id``), parsed and validated against the schema, the run and the envelope's
    ``target``, and whether its key was verified (``check_keys``, with ``earlier``).

    Under ``handoff_key: required`` (docs/protocol.md section 4) the key is checked
    first, so that nobody without it can end the delegation early: a ``key`` that is not
    the delegation's is refused as ``key`` (the waiter keeps waiting) whatever the other
    fields say, and so is a file without a key that names another run or agent. Under
    ``optional`` the schema and the run come first, as before keys were required.
    A zone-less ``timestamp`` is read as UTC when the envelope's ``handoff_key`` is
    ``optional`` (see ``validate_handoff``). Raises HandoffProblem naming ``path``.
    """
    data = parse_handoff(raw, path=path)
    verified: bool | None = None
    target = envelope.get("target")
    required = str(envelope.get("handoff_key") or "required") == "required"
    if required and envelope.get("key_sha256") is not None and isinstance(data, dict):
        if isinstance(data.get(KEY_FIELD), str):
            try:
                verified = check_keys(data, envelope, path=path, earlier=earlier)
            except HandoffProblem as exc:
                if exc.kind == "key":
                    raise
                # 1.0 with a key: refused after the schema and the run, as before
        else:
            _refuse_keyless_stranger(data, path=path, run_id=run_id, agent=target)
    handoff = validate_handoff(
        data,
        path=path,
        run_id=run_id,
        agent=target,
        naive_utc=envelope.get("handoff_key") == "optional",
    )
    if verified is None:
        verified = check_keys(handoff, envelope, path=path, earlier=earlier)
    return handoff, verified


def _refuse_keyless_stranger(
    data: Mapping[str, Any], *, path: Path, run_id: str, agent: Any
) -> None:
    """Refuse as ``key`` (the waiter keeps waiting) a handoff without a key that names
    another ``runId`` or ``agent``: under ``handoff_key: required`` nothing shows it is
    this delegation's, so it must not end the delegation (it would, as ``mismatch``)."""
    _refuse_mismatched(
        data,
        path=path,
        run_id=run_id,
        agent=agent,
        kind="key",
        why="it has no `key` and names another delegation (forged or misdirected)",
    )


def _refuse_mismatched(
    data: Mapping[str, Any], *, path: Path, run_id: str | None, agent: Any, kind: str, why: str
) -> None:
    """Raise ``HandoffProblem`` of ``kind`` (``why`` says what the handoff is) when the
    ``runId`` or ``agent`` of ``data`` names another delegation (``_mismatched``)."""
    mismatched = _mismatched(data, run_id=run_id, agent=agent)
    if mismatched:
        raise HandoffProblem(
            f"handoff `{path}` refused: {why}; it was kept for inspection:",
            kind=kind,
            path=path,
            problems=mismatched,
        )


def _mismatched(data: Mapping[str, Any], *, run_id: str | None, agent: Any) -> list[str]:
    """What of the ``runId`` and ``agent`` strings in ``data`` is not ``run_id`` and
    ``agent`` (each compared only when given, and only when a string: a missing or
    mistyped field is the schema's to report), as problem lines."""
    mismatched = []
    for field, expected in (("runId", run_id), ("agent", agent)):
        got = data.get(field)
        if expected is not None and isinstance(got, str) and got != expected:
            mismatched.append(f"`/{field}` is `{terminal_text(got[:80])}`, expected `{expected}`")
    return mismatched


def check_deliverable(
    data: Mapping[str, Any],
    envelope: Mapping[str, Any] | None,
    *,
    where: Path,
    policy: str | None = None,
) -> bool:
    """Refuse, before anything is written, a handoff the engine waiting in ``where`` (a
    records directory) would refuse; True when it goes without a key (accepted unverified).

    ``envelope`` is the run's pending envelope there (None: unreadable, e.g. a run store
    in a database); ``policy`` the config's ``handoff_key`` when no envelope says it. The
    rules are the engine's (``check_keys``, docs/protocol.md section 3): ``agent`` must be
    the envelope's ``target``; a missing key is refused unless ``handoff_key`` is
    ``optional``; a wrong key is refused. A run id with no pending envelope and no record
    in a directory that holds pending envelopes (``.pending/``) is refused too: nothing
    waits for it there. Raises ``UsageError`` (exit 2), one paragraph naming the fix.
    """
    run_id, agent = data.get("runId"), data.get("agent")
    nothing = "nothing was written."
    if envelope is None:
        if (where / ".pending").is_dir() and not (where / f"{run_id}.json").exists():
            raise UsageError(
                f"no delegation `{run_id}` is waiting in `{where}`: check `--run-id` and "
                f"`--dir` against the task message (its `run_id:` and `handoff_path:` "
                f"lines); {nothing}"
            )
    else:
        target = envelope.get("target")
        if isinstance(target, str) and target and agent != target:
            raise UsageError(
                f"run `{run_id}` was delegated to `{target}`, not `{agent}`: pass "
                f"`--agent {target}` (the `agent:` line of the task message); the engine "
                f"refuses a handoff from another agent, so {nothing}"
            )
        policy = str(envelope.get("handoff_key") or "required")
    key = data.get(KEY_FIELD)
    if not isinstance(key, str) or not key:
        if policy == "optional":
            return True
        raise UsageError(
            f"handoff for run `{run_id}` has no key: pass `--key KEY` or set "
            "`ORCH_HANDOFF_KEY` (the `key:` line of the task message); the engine refuses "
            f"a handoff without it (unless the config says `handoff_key: optional`), so "
            f"{nothing}"
        )
    if envelope is not None and envelope.get("key_sha256") is not None:
        try:
            check_keys(dict(data), envelope, path=where / f"{run_id}.json")
        except HandoffProblem:
            raise UsageError(
                f"handoff for run `{run_id}`: `--key` is not this delegation's key; pass the "
                f"`key:` line of the task message exactly; {nothing}"
            ) from None
    return False


def with_earlier_keys(old: Any, new: dict[str, Any]) -> dict[str, Any]:
    """``new``, the envelope that replaces ``old`` (None or not a dict: none), keeping in
    ``earlier_key_sha256`` the key hashes ``old`` had and ``new`` does not (first first).

    Every run store writes a pending envelope through this, so a delegation sent again
    with a new key still takes the handoff of the agent that got the first one.
    """
    if not isinstance(old, dict):
        return new
    current = new.get("key_sha256")
    earlier: list[str] = []
    for digest in (
        *(old.get("earlier_key_sha256") or ()),
        old.get("key_sha256"),
        *(new.get("earlier_key_sha256") or ()),
    ):
        if isinstance(digest, str) and digest != current and digest not in earlier:
            earlier.append(digest)
    return {**new, "earlier_key_sha256": earlier} if earlier else new


def validate_handoff(
    data: Any,
    *,
    path: Path,
    run_id: str | None = None,
    agent: str | None = None,
    naive_utc: bool = False,
) -> dict[str, Any]:
    """Check ``data`` against the schema and the delegation; return it or raise HandoffProblem.

    ``naive_utc`` (the delegation's ``handoff_key`` is ``optional``: agents on old
    instructions, seed 004): a ``timestamp`` without a zone (``2026-02-15T10:00:00``) is
    read as UTC and returned with ``Z`` appended; otherwise it is refused, saying so."""
    from engine.schemas import schema_problems

    stamp = data.get("timestamp") if isinstance(data, dict) else None
    if naive_utc and isinstance(stamp, str) and _is_date_time(stamp + "Z"):
        data = {**data, "timestamp": stamp + "Z"}
        stamp += "Z"
    problems = schema_problems("handoff", data, style="pointer")
    if isinstance(stamp, str) and not _is_date_time(stamp):
        if _is_date_time(stamp + "Z"):
            problems.append(
                f"`/timestamp`: `{stamp[:64]}` has no time zone: add `Z` (UTC) or an offset "
                f"such as `+00:00`, e.g. `{stamp}Z` (under `handoff_key: optional` a "
                "timestamp without a zone is read as UTC)"
            )
        else:
            problems.append(
                f"`/timestamp`: `{stamp[:64]}` is not an ISO-8601 date-time "
                "with a time zone (e.g. `2026-01-01T12:00:00Z`)"
            )
    if problems:
        raise HandoffProblem(
            f"handoff `{path}` does not match schemas/handoff.schema.json:",
            kind="schema",
            path=path,
            problems=problems,
        )
    assert isinstance(data, dict)
    _refuse_mismatched(
        data,
        path=path,
        run_id=run_id,
        agent=agent,
        kind="mismatch",
        why="it does not belong to this delegation (spoofed or misdirected)",
    )
    return data


def _is_date_time(value: str) -> bool:
    if not _DATE_TIME.match(value):
        return False
    from datetime import datetime

    try:
        datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return False
    return True


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"`{name}` is not a JSON number")


def loads_strict(text: str | bytes) -> Any:
    """``json.loads`` that refuses NaN/Infinity, numbers too large to be finite and a key
    written twice in one object; may raise ValueError, RecursionError, MemoryError
    (callers translate them).

    RFC 8259 (section 4) says names SHOULD be unique and leaves duplicates to the
    parser; Python keeps the last, so ``"status": "failed", "status": "complete"``
    would read as complete. Refused here, as engine/yamlio.py refuses a YAML key
    written twice."""
    return json.loads(
        text,
        parse_constant=_refuse_constant,
        parse_float=_finite_float,
        object_pairs_hook=unique_keys,
    )


class DuplicateKeyError(ValueError):
    """A JSON object has a key written twice (``unique_keys``): its text names the key."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's pairs as a dict; ``DuplicateKeyError`` (a ``ValueError``) naming the
    first key written twice (a ``json.loads`` ``object_pairs_hook``; the local gateway's
    receiver uses it too)."""
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKeyError(
                    f"key `{terminal_text(key[:60])}` is written twice in one object: keep "
                    "one, as the last would silently win"
                )
            seen.add(key)
    return data


def _finite_float(text: str) -> float:
    """A JSON number as a float, refusing one too large to be finite (``1e999``)."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text[:40]} is too large (not finite)")
    return value


def parse_handoff(text: str | bytes, *, path: Path) -> Any:
    """Parse handoff JSON text or raise HandoffProblem naming line and column."""
    try:
        return loads_strict(text)
    except json.JSONDecodeError as exc:
        raise HandoffProblem(
            f"handoff `{path}` is not valid JSON (line {exc.lineno}, column {exc.colno}: "
            f"{exc.msg}).",
            kind="parse",
            path=path,
        ) from exc
    except DuplicateKeyError as exc:  # sound JSON otherwise: the real cause first
        raise HandoffProblem(f"handoff `{path}`: {exc}.", kind="parse", path=path) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise HandoffProblem(
            f"handoff `{path}` is not valid JSON ({exc}).", kind="parse", path=path
        ) from exc
    except RecursionError:
        raise HandoffProblem(
            f"handoff `{path}` is nested too deeply to read: it was refused.",
            kind="parse",
            path=path,
        ) from None
    except MemoryError:
        raise HandoffProblem(
            f"handoff `{path}` is too large to parse: it was refused.", kind="size", path=path
        ) from None


def read_handoff_bytes(
    path: Path, *, max_bytes: int = MAX_HANDOFF_BYTES, root: Path | None = None
) -> tuple[bytes, os.stat_result]:
    """Read at most ``max_bytes`` of a regular file at ``path`` (never blocking on a FIFO).

    A symlink is followed only when it resolves inside ``root`` (the handoffs directory).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = -1
        if root is not None:  # not a symlink, as a rule: opened without an lstat first
            try:
                fd = os.open(path, flags | os.O_NOFOLLOW)
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
        if fd < 0:
            if root is not None and os.path.islink(path):
                real = Path(os.path.realpath(path))
                base = Path(os.path.realpath(root))
                if real != base and base not in real.parents:
                    raise HandoffProblem(
                        f"handoff `{path}` refused: it is a symlink to `{real}`, outside the "
                        f"handoffs directory `{base}`; the engine reads no file outside it.",
                        kind="file",
                        path=path,
                    )
            fd = os.open(path, flags)
    except FileNotFoundError:
        raise HandoffProblem(f"handoff `{path}` does not exist.", kind="parse", path=path) from None
    except OSError as exc:
        try:  # a socket cannot be opened at all (ENXIO): refused for what it is
            mode = os.stat(path).st_mode
        except OSError:
            mode = stat.S_IFREG
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode) from None
        raise HandoffProblem(
            f"handoff `{path}` cannot be read: {exc.strerror}.", kind="parse", path=path
        ) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(path, st.st_mode)
        if st.st_size > max_bytes:
            raise _too_big(path, st.st_size, max_bytes)
        chunks: list[bytes] = []
        total, limit = 0, max_bytes + 1
        while total < limit:  # the size by fstat and one byte more, then 1 MiB at a time
            want = min(limit - total, st.st_size - total + 1 if total < st.st_size else 1 << 20)
            chunk = os.read(fd, want)
            chunks.append(chunk)
            total += len(chunk)
            if len(chunk) < want:  # a short read of a regular file: its end
                break
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise _too_big(path, len(data), max_bytes)
        return data, st
    except OSError as exc:
        raise HandoffProblem(
            f"handoff `{path}` cannot be read: {exc.strerror}.", kind="parse", path=path
        ) from exc
    finally:
        os.close(fd)


def _not_regular(path: Path, mode: int) -> HandoffProblem:
    """The refusal of a handoff path that holds no regular file (``mode``: what it holds,
    a symlink followed): a directory, a FIFO, a socket or a device is never read."""
    from engine.textio import file_kind

    kind = file_kind(mode)
    what = f"it is {kind}, not a regular file" if kind != "not a regular file" else f"it is {kind}"
    return HandoffProblem(
        f"handoff `{path}` refused: {what}; write the handoff JSON to a temp file and "
        "rename it onto handoff_path.",
        kind="file",
        path=path,
    )


def _too_big(path: Path, size: int, limit: int) -> HandoffProblem:
    return HandoffProblem(
        f"handoff `{path}` refused: it has {size} bytes or more, over the limit of {limit} "
        "(`max_handoff_bytes` in the config). Put long results in an artifact file.",
        kind="size",
        path=path,
    )


def load_handoff(
    path: Path,
    *,
    run_id: str | None = None,
    agent: str | None = None,
    max_bytes: int = MAX_HANDOFF_BYTES,
    root: Path | None = None,
) -> dict[str, Any]:
    """Read, parse and validate the handoff file at ``path`` (not its key: ``check_key``)."""
    data, _ = read_handoff_bytes(path, max_bytes=max_bytes, root=root)
    return validate_handoff(parse_handoff(data, path=path), path=path, run_id=run_id, agent=agent)


def write_handoff(path: Path, handoff: dict[str, Any], *, replace: bool = True) -> Path:
    """Validate ``handoff`` and write it atomically to ``path``.

    With ``replace=False`` a file already at ``path`` is kept: the handoff goes to
    ``<runId>.<n>.json`` beside it instead (both are kept; the engine records the first
    and lists the second). Returns where it was written.
    """
    validate_handoff(handoff, path=path)
    if replace:
        return write_json_atomic(path, handoff)
    target = path
    n = 1
    while not write_json_new(target, handoff):
        n += 1
        target = path.with_name(f"{path.stem}.{n}.json")
    return target
