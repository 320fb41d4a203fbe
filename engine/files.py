"""Atomic JSON files and the strict patterns for ids that become file names."""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.errors import InvalidIdError
from engine.redact import redact

#: Ids and names that become part of a path: no dots, no slashes, no leading dash.
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


def check_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is safe to use in a file name, else raise InvalidIdError."""
    if not isinstance(value, str) or not SAFE_ID.match(value):
        raise InvalidIdError(
            f"{what} `{value}` is not allowed: use letters, digits, `-` and `_` only "
            "(at most 128 characters, no `/`, `.` or leading `-`), because it becomes "
            "part of a file name."
        )
    return value


def new_run_id(prefix: str = "orch") -> str:
    """Return a fresh run id ``<prefix>-<UTC yyyymmddThhmmss>-<8 hex>``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{prefix}-{stamp}-{secrets.token_hex(4)}"


def utcnow_iso() -> str:
    """Return the current UTC time as ISO-8601 with milliseconds and a ``Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(value: str) -> datetime:
    """Parse an ISO-8601 timestamp (``Z`` allowed) into an aware datetime."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def write_json_atomic(
    path: str | Path,
    data: Any,
    *,
    fsync: bool = False,
    fresh: bool = False,
    compact: bool = False,
) -> Path:
    """Write ``data`` as JSON to ``path`` atomically: temp file in the same dir, then rename.

    Readers that react only to close-after-write on the final name or to moved-into
    never see a partial file. ``fresh=True`` says ``path`` is most likely absent (a file
    written once, such as a pending envelope): the finished file is then linked there
    from an unnamed one (``O_TMPFILE``; a watcher sees a create), which saves the temp
    name's create and rename; a file already there is still replaced atomically.
    ``compact=True`` writes the JSON on one line (``COMPACT``) instead of indented.
    """
    target = Path(path)
    if fresh:
        fd = _unnamed(target)
        if fd is not None:
            try:
                _fill(fd, _payload(data, compact), fsync=fsync)
                if _link_unnamed(fd, target) is True:
                    return target
            finally:
                os.close(fd)
    tmp = _write_temp(target, data, fsync=fsync, compact=compact)
    try:
        os.replace(tmp, target)
    except BaseException:
        _unlink(tmp)
        raise
    return target


def write_json_new(
    path: str | Path, data: Any, *, compact: bool = False, unnamed_in: str | Path | None = None
) -> bool:
    """Create ``path`` with ``data`` as JSON only if no file is there; True if it was created.

    The complete file appears at once (a hard link of a finished file: an unnamed
    ``O_TMPFILE`` one where the file system has them, else a temp file; watchers see a
    create), and a file that someone else put at ``path`` first is never replaced.
    ``compact=True``: one line, as ``write_json_atomic``. ``unnamed_in``: an existing
    directory of the same file system that nobody watches, where the unnamed file is made;
    the close of the finished file is then reported there, not in ``path``'s directory,
    whose watchers see the create only (one inotify wake-up fewer). Where it cannot be
    linked from there (another file system, no such directory) ``path``'s own directory
    is used, as without it.
    """
    target = Path(path)
    payload = _payload(data, compact)
    if unnamed_in is not None:
        placed = _link_new_from(Path(unnamed_in), target, payload)
        if placed is not None:
            return placed
    fd = _unnamed(target)
    if fd is not None:
        try:
            _fill(fd, payload, fsync=False)
            placed = _link_unnamed(fd, target)
        finally:
            os.close(fd)
        if placed is not None:
            return placed
    tmp = _write_temp(target, data, fsync=False, compact=compact)
    try:
        os.link(tmp, target)
    except FileExistsError:
        return False
    finally:
        _unlink(tmp)
    return True


#: ``O_TMPFILE`` (Linux >= 3.11) and ``/proc/self/fd`` to link such a file by: both are
#: needed to give an unnamed file its name; without them temp files are used.
_O_TMPFILE = getattr(os, "O_TMPFILE", 0) if os.path.isdir("/proc/self/fd") else 0


def _unnamed(target: Path) -> int | None:
    """A writable unnamed file in ``target``'s directory (created if missing), or None
    where the platform or file system has no ``O_TMPFILE``."""
    if not _O_TMPFILE:
        return None
    flags = _O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC
    try:
        return os.open(target.parent, flags, 0o600)
    except FileNotFoundError:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # EOPNOTSUPP, EISDIR, EINVAL: this file system has none
        return None
    try:
        return os.open(target.parent, flags, 0o600)
    except OSError:
        return None


def _link_new_from(directory: Path, target: Path, payload: bytes) -> bool | None:
    """An unnamed file made in ``directory``, filled with ``payload`` and linked at
    ``target``: True when done, False if a file is there, None when it cannot be done
    (no ``O_TMPFILE``, no such directory, another file system: the caller goes on)."""
    if not _O_TMPFILE:
        return None
    try:
        fd = os.open(directory, _O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        _fill(fd, payload, fsync=False)
        os.link(f"/proc/self/fd/{fd}", target, src_dir_fd=fd, follow_symlinks=True)
    except FileExistsError:
        return False
    except OSError:
        return None
    finally:
        os.close(fd)
    return True


def _link_unnamed(fd: int, target: Path) -> bool | None:
    """Give the unnamed file ``fd`` the name ``target``: True when done, False if a file
    is there, None when it cannot be linked here (the caller uses a temp file instead).

    ``linkat`` with ``AT_SYMLINK_FOLLOW`` on ``/proc/self/fd/N`` is the documented way
    (open(2), ``O_TMPFILE``) to link such a file without privileges."""
    global _O_TMPFILE
    try:
        # src_dir_fd makes os.link call linkat(AT_SYMLINK_FOLLOW); the path is absolute.
        os.link(f"/proc/self/fd/{fd}", target, src_dir_fd=fd, follow_symlinks=True)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.ENOENT):
            if exc.errno != errno.ENOENT or target.parent.is_dir():
                _O_TMPFILE = 0  # /proc cannot link here: temp files from now on
            return None
        raise
    return True


#: ``indent`` of the files the engine writes on every delegation and step (records,
#: pending envelopes, step results): None, one line. Python's JSON encoder runs in C only
#: without an indent: a record takes ~7 us that way against ~19 us indented. Every reader
#: parses the JSON, so indented files of earlier versions read the same.
COMPACT = None


def _payload(data: Any, compact: bool = False) -> bytes:
    """The bytes the engine writes for ``data``: redacted JSON (indented unless
    ``compact``) and a newline."""
    return (redact(dumps_json(data, indent=COMPACT if compact else 2)) + "\n").encode("utf-8")


def _fill(fd: int, payload: bytes, *, fsync: bool) -> None:
    """Write all of ``payload`` to ``fd`` (and ``fsync`` it when asked)."""
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view) :]
    if fsync:
        os.fsync(fd)


def dumps_json(data: Any, *, indent: int | None = 2) -> str:
    """JSON text as the engine writes it; NaN and Infinity are refused (they are not JSON)."""
    return json.dumps(data, indent=indent, ensure_ascii=False, default=str, allow_nan=False)


def _write_temp(target: Path, data: Any, *, fsync: bool, compact: bool = False) -> str:
    """A finished temp file beside ``target`` holding ``data``; its path.

    The directory is created only when the temp file cannot be (one ``mkdir`` per new
    directory, not one per write: they are created once per run).
    """
    payload = _payload(data, compact)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".json")
    except FileNotFoundError:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
    except BaseException:
        _unlink(tmp)
        raise
    return tmp


def _unlink(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
