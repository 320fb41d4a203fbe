"""Text the user hands the engine: files they name and command-line arguments.

``read_text`` reads a file as UTF-8 and refuses, with one sentence naming the file,
what cannot be text: a missing file, a directory, a FIFO (without blocking on it), a
device, a huge file, bytes that are not UTF-8. ``check_text`` refuses command-line text
that came in as bytes that are not UTF-8 (Python keeps them as lone surrogates).

Text going the other way, to a terminal: ``terminal_text`` shows every control character
(except newline and tab) as an escape, so that text from outside (an agent's result, a
model's answer, a name from a config) cannot colour, retitle, ring or overwrite anything;
``TerminalStream`` applies it to everything the CLI writes, and ``json_text`` does the
same for JSON output while keeping it JSON.
"""

from __future__ import annotations

import io
import os
import re
import stat
from pathlib import Path
from typing import TextIO

from engine.errors import OrchestratorError

#: Largest file read, in bytes.
MAX_BYTES = 4 * 1024 * 1024


def read_text(
    path: str | os.PathLike[str], *, error: type[OrchestratorError], what: str = "file"
) -> str:
    """Read a UTF-8 text file the user named; refuse devices, FIFOs, huge or non-UTF-8 files.

    Opens non-blocking so that a FIFO never hangs, and names the file and what is wrong.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise error(f"{what} `{p}` does not exist.", path=p) from None
    except OSError as exc:
        raise error(f"cannot read {what} `{p}`: {describe_oserror(exc)}.", path=p) from exc
    if not stat.S_ISREG(st.st_mode):
        kind = file_kind(st.st_mode)
        raise error(f"{what} `{p}` is {kind}, not a regular file; give a file path.", path=p)
    if st.st_size > MAX_BYTES:
        raise error(
            f"{what} `{p}` is {st.st_size} bytes; more than {MAX_BYTES} is not read.", path=p
        )
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise error(f"cannot read {what} `{p}`: {describe_oserror(exc)}.", path=p) from exc
    return decode_utf8(data, source=str(p), error=error, what=what)


def decode_utf8(
    data: bytes, *, source: str, error: type[OrchestratorError], what: str = "file"
) -> str:
    """Decode UTF-8 (a leading BOM is dropped) or raise ``error`` naming the byte and line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(
            f"{what} `{source}` is not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}); "
            "save it as UTF-8 (e.g. `iconv -f cp1252 -t utf-8`).",
            path=source,
        ) from None


def file_kind(mode: int) -> str:
    """What a file of ``mode`` (``st_mode``) is, for a message: ``a directory``, ``a FIFO
    (named pipe)``, ``a character device``, ``a block device``, ``a socket``, else ``not a
    regular file``."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def describe_oserror(exc: OSError) -> str:
    """``strerror (ENAME)`` plus what to do for the common cases."""
    import errno

    name = errno.errorcode.get(exc.errno or 0, "")
    text = f"{exc.strerror or exc}" + (f" ({name})" if name else "")
    hint = {
        errno.EACCES: "check the permissions",
        errno.EPERM: "check the permissions",
        errno.EROFS: "the file system is read-only; choose a writable directory",
        errno.ENOSPC: "the disk is full; free some space",
        errno.EDQUOT: "the disk quota is exceeded; free some space",
        errno.ENOTDIR: "a part of the path is a file, not a directory",
        errno.EISDIR: "the path is a directory",
        errno.ENAMETOOLONG: "use a shorter path",
    }.get(exc.errno or 0)
    return f"{text}; {hint}" if hint else text


def check_text(value: str, *, what: str, error: type[OrchestratorError]) -> str:
    """Return ``value`` if it is valid Unicode text, else raise ``error`` naming ``what``.

    Bytes that are not UTF-8 on the command line (a file saved as cp1252 and passed with
    ``$(cat file)``) reach Python as lone surrogates; they could not be written anywhere.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raw = value[exc.start].encode("utf-8", "surrogateescape")
        byte = f"0x{raw[0]:02x}" if len(raw) == 1 else "a lone surrogate"
        raise error(
            f"{what} is not valid UTF-8 text ({byte} at character {exc.start + 1}). "
            "Convert the text to UTF-8 (e.g. `iconv -f cp1252 -t utf-8 FILE`) and run again."
        ) from None
    if "\x00" in value:
        raise error(f"{what} contains a NUL character; remove it.")
    return value


def _escape(code: int) -> str:
    return "\\r" if code == 0x0D else f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


#: Code points ``terminal_text`` escapes: C0 controls but tab and newline, DEL, the C1
#: controls U+0080-U+009F (ECMA-48: a UTF-8 terminal may act on U+009B as on ESC [), and
#: the bidirectional embeddings, overrides and isolates U+202A-U+202E, U+2066-U+2069
#: (CVE-2021-42574: they reorder what is shown).
_UNSAFE = (
    [c for c in range(0x20) if c not in (0x09, 0x0A)]
    + list(range(0x7F, 0xA0))
    + list(range(0x202A, 0x202F))
    + list(range(0x2066, 0x206A))
)
_TERMINAL_TABLE = {c: _escape(c) for c in _UNSAFE}
_TERMINAL_UNSAFE = re.compile("[" + "".join(re.escape(chr(c)) for c in _UNSAFE) + "]")
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def terminal_text(text: str) -> str:
    """``text`` with every control character but newline and tab shown as an escape.

    ``ESC`` becomes the four characters ``\\x1b``, BEL ``\\x07``, a C1 control
    ``\\x9b``, a bidi override ``\\u202e``, a carriage return ``\\r`` (one before
    a newline is dropped: ``\\r\\n`` is a line end). What is left cannot move the
    cursor, set the window title, ring the bell or start an escape sequence (ECMA-48;
    xterm's control sequences), whatever sequence the text held, complete or cut.
    """
    if _TERMINAL_UNSAFE.search(text) is None:  # the usual case: a scan, no copy
        return text
    if "\r\n" in text:
        text = text.replace("\r\n", "\n")
    return text.translate(_TERMINAL_TABLE)


def json_text(text: str) -> str:
    """JSON text (``json.dumps`` output) with DEL, the C1 controls and the bidi controls,
    which ``ensure_ascii=False`` leaves raw, written as ``\\u`` escapes: the same JSON
    value, safe on a terminal (``json.dumps`` escapes U+0000-U+001F itself). Those
    characters can only occur inside JSON strings, where ``\\uXXXX`` is valid."""
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class TerminalStream(io.TextIOBase):
    """A text stream writing ``terminal_text`` of everything to ``underlying``.

    The CLI puts one in front of stdout and stderr for the length of a command, so every
    way of printing (``click.echo``, ``print``, rich, click's own error messages) goes
    through ``terminal_text``. A writer of its own escape sequences (rich's live table)
    writes to ``underlying`` and makes its text safe itself. There is no ``buffer``: bytes
    are refused, so nothing can go round it.
    """

    def __init__(self, underlying: TextIO) -> None:
        super().__init__()
        self.underlying = underlying

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        self.underlying.write(terminal_text(s))
        return len(s)

    def flush(self) -> None:
        self.underlying.flush()

    def isatty(self) -> bool:
        return bool(self.underlying.isatty())

    def fileno(self) -> int:
        return int(self.underlying.fileno())

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self.underlying, "encoding", None) or "utf-8")

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.underlying, "errors", None)
