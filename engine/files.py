"""Atomic JSON files and the strict patterns for ids that become file names."""

from __future__ import annotations

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


def write_json_atomic(path: str | Path, data: Any, *, fsync: bool = False) -> Path:
    """Write ``data`` as JSON to ``path`` atomically: temp file in the same dir, then rename.

    Readers that react only to close-after-write on the final name or to moved-into
    never see a partial file.
    """
    target = Path(path)
    tmp = _write_temp(target, data, fsync=fsync)
    try:
        os.replace(tmp, target)
    except BaseException:
        _unlink(tmp)
        raise
    return target


def write_json_new(path: str | Path, data: Any) -> bool:
    """Create ``path`` with ``data`` as JSON only if no file is there; True if it was created.

    The complete file appears at once (a hard link of a finished temp file), and a file
    that someone else put at ``path`` first is never replaced.
    """
    target = Path(path)
    tmp = _write_temp(target, data, fsync=False)
    try:
        os.link(tmp, target)
    except FileExistsError:
        return False
    finally:
        _unlink(tmp)
    return True


def dumps_json(data: Any, *, indent: int | None = 2) -> str:
    """JSON text as the engine writes it; NaN and Infinity are refused (they are not JSON)."""
    return json.dumps(data, indent=indent, ensure_ascii=False, default=str, allow_nan=False)


def _write_temp(target: Path, data: Any, *, fsync: bool) -> str:
    """A finished temp file beside ``target`` holding ``data``; its path.

    The directory is created only when the temp file cannot be (one ``mkdir`` per new
    directory, not one per write: they are created once per run).
    """
    payload = (redact(dumps_json(data)) + "\n").encode("utf-8")
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
