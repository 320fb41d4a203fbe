"""Where the pool's state lives: the ``PoolStore`` seam, and the file store for one host.

A store keeps one JSON document (see ``engine.pool.state``) and offers exactly three
things: a transaction (read the document, let the caller change it, write it back
atomically, all under one exclusive lock), a lockless peek at the last complete version,
and a feed waiters sleep on, told of the changes that may let a waiter proceed (a grant).
It knows nothing of tokens: the rules live in ``engine.pool.policy`` and ``TokenPool``
applies them; ``engine.pool.postgres`` keeps the document in a database row.

``FileStore`` is the host-local store: ``<dir>/lock`` is the ``flock`` target,
``<dir>/state.json`` the document, written whole into a spare file swapped into place;
waiters wake on inotify (a writer that granted a waiting request touches ``<dir>/wake``),
or poll.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from engine.errors import ConfigError

__all__ = [
    "LOCK_NAME",
    "STATE_NAME",
    "WAKE_NAME",
    "ChangeFeed",
    "FileStore",
    "Generation",
    "HostLock",
    "MemoryStore",
    "PoolStore",
    "Step",
    "run_step",
]

_T = TypeVar("_T")

STATE_NAME = "state.json"
LOCK_NAME = "lock"
WAKE_NAME = "wake"
_TMP_NAME = ".state.tmp"
#: A change feed's reader looks up at least this often (seconds).
FULL_CHECK = 0.05


#: What a transaction's function returns: (result, new bytes or None to keep the stored
#: ones, ``wake``), or (result, new bytes or None) as before ``wake`` existed, which wakes
#: the waiters at every write.
Step = Callable[[bytes], "tuple[_T, bytes | None, bool] | tuple[_T, bytes | None]"]


def run_step(fn: Step[_T], stored: bytes) -> tuple[_T, bytes | None, bool]:
    """``fn(stored)`` as (result, new bytes or None, ``wake``), whichever form it returns."""
    got = fn(stored)
    if len(got) == 2:
        return got[0], got[1], got[1] is not None
    return got[0], got[1], bool(got[2])


class ChangeFeed(Protocol):
    """Wakes waiters when a transaction may have let one of them proceed (it granted a
    waiting request: its function returned ``wake`` True); a feed may wake them at
    other changes too, and a waiter also looks on its own at least every ``FULL_CHECK``."""

    def generation(self) -> int:
        """A counter that grows with every wake-up seen."""
        ...

    def wait(self, seen: int, limit: float) -> bool:
        """Wait up to ``limit`` s for a change after generation ``seen``; False on timeout."""
        ...


class PoolStore(Protocol):
    """Storage of the pool's state document, shared by every pool object that opens it."""

    @property
    def location(self) -> str:
        """Where the state lives, for status and messages (a directory, a table)."""
        ...

    @property
    def shared(self) -> bool:
        """True when holders on other hosts use it too (their leases must be renewed)."""
        ...

    def exists(self) -> bool:
        """Has the store been created? (``status`` creates nothing.)"""
        ...

    def transact(self, fn: Step[_T]) -> _T:
        """Under an exclusive lock: ``fn(stored)`` returns (result, new bytes or None to
        keep the stored ones, ``wake``) (see ``Step``); new bytes are stored atomically,
        and with ``wake`` True the change feed's waiters are woken once they are stored.
        ``ConfigError`` when the store is unusable."""
        ...

    def peek(self) -> bytes:
        """The last complete stored version, read without the lock (b"" when none)."""
        ...

    def changes(self) -> ChangeFeed | None:
        """A feed to wait on for changes, or None: the waiter polls."""
        ...

    def close(self) -> None:
        """Release what the store holds open (reopened on next use)."""
        ...


#: Serialises the re-initialisation of file stores in a forked child.
_fork_guard = threading.Lock()


def _reset_fork_guard() -> None:
    global _fork_guard
    _fork_guard = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_fork_guard)


class _Watch:
    """One inotify watch on the pool directory per store, shared by its waiting threads
    (woken by ``FileStore._wake_waiters``):
    whichever thread reads the events bumps a generation the others wait on.

    Kept open until ``FileStore.close()``: closing an inotify instance waits for a kernel
    grace period (milliseconds), too slow to pay on every wait.
    """

    def __init__(self, directory: Path) -> None:
        from inotify_simple import INotify, flags

        self._ino = INotify()
        try:
            # Attribute changes in the directory: the writers' touches of ``wake``
            # (writes of the state itself change no attribute).
            self._ino.add_watch(str(directory), flags.ATTRIB)
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
                    events = self._ino.read(timeout=max(1, math.ceil(min(left, FULL_CHECK) * 1e3)))
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


class FileStore:
    """The state in ``<directory>/state.json`` under ``flock`` on ``<directory>/lock``.

    Host-local (processes sharing it share the PID namespace and a local filesystem).
    ``wake="auto"`` gives waiters an inotify feed; ``"poll"`` (or no inotify) none. One
    store may be shared by threads and survives ``fork``.

    Example::

        store = FileStore(Path("handoffs/.pool"))
        pool = TokenPool(PoolSettings(dir=store.directory), store=store)
    """

    shared = False

    def __init__(self, directory: Path, *, wake: Literal["auto", "poll"] = "auto") -> None:
        if wake not in ("auto", "poll"):
            raise ValueError(f"wake must be 'auto' or 'poll', not {wake!r}")
        self.directory = Path(directory)
        self._wake = wake
        self._state_path = self.directory / STATE_NAME
        self._lock_path = self.directory / LOCK_NAME
        self._tmp_path = self.directory / _TMP_NAME
        self._wake_path = self.directory / WAKE_NAME
        self._fd: int | None = None
        self._owner_pid = os.getpid()
        self._tlock = threading.Lock()
        self._watch: _Watch | None = None
        self._watch_lock = threading.Lock()

    @property
    def location(self) -> str:
        return str(self.directory)

    def exists(self) -> bool:
        return self.directory.is_dir()

    def transact(self, fn: Step[_T]) -> _T:
        try:
            with self._locked():
                result, out, wake = run_step(fn, self._read_raw())
                if out is not None:
                    self._write_raw(out)
                    if wake:
                        self._wake_waiters()
                return result
        except OSError as exc:
            raise ConfigError(
                f"the token pool directory `{self.directory}` is not usable: "
                f"{exc.strerror or exc}. Check `pool.dir` and its permissions.",
                path=self.directory,
            ) from exc

    def peek(self) -> bytes:
        """The state file read without the lock. The file read is the spare after the next
        write and is overwritten by the one after: a read that ends when its file no
        longer is the state file may mix two versions, and is taken again."""
        for _ in range(3):
            try:
                with open(self._state_path, "rb") as fh:
                    data = fh.read()
                    if os.fstat(fh.fileno()).st_ino == os.stat(self._state_path).st_ino:
                        return data
            except OSError:
                return b""
        return b""  # the state changes faster than it can be read: nothing to go by

    def changes(self) -> ChangeFeed | None:
        """The shared directory watch, created on first need; None means poll."""
        if self._wake != "auto":
            return None
        self._adopt_after_fork()
        with self._watch_lock:
            if self._watch is None:
                try:
                    self._watch = _Watch(self.directory)
                except (ImportError, OSError):
                    return None  # no inotify, or out of instances: poll this time
            return self._watch

    def close(self) -> None:
        """Close the lock file and the directory watch; call it when nobody waits."""
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
                    self.directory.mkdir(parents=True, exist_ok=True)
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
        """Replace the state file with ``data`` atomically: written whole into the spare
        file, then swapped in.

        The spare (``.state.tmp``) is the previous version's file, kept between writes:
        the data is written over it (``pwrite`` and ``ftruncate``, no new file), then
        ``renameat2(RENAME_EXCHANGE)`` swaps it with ``state.json`` in one step, so the
        state file always names one complete version, and a writer killed at any point
        leaves either the old one or the new one. Creating a fresh file per write cost
        0.1-0.9 ms on ext4 (inode allocation in a directory with many create/delete
        cycles), more than the rest of the transaction. Where the swap is not available
        (not Linux, a filesystem without it), or on the first write, ``_replace``.
        """
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(self._tmp_path, flags, 0o666)
        except PermissionError:  # another user's spare, not writable to us: make our own
            os.unlink(self._tmp_path)
            fd = os.open(self._tmp_path, flags | os.O_EXCL, 0o666)
        try:
            view = memoryview(data)
            at = 0
            while at < len(data):
                at += os.pwrite(fd, view[at:], at)
            os.ftruncate(fd, len(data))  # never to zero: no flush-on-close (auto_da_alloc)
        finally:
            os.close(fd)
        if not _exchange(self._tmp_path, self._state_path):
            self._replace()

    def _wake_waiters(self) -> None:
        """Touch ``<dir>/wake``: its inotify event (``IN_ATTRIB``) wakes the waiters. Only
        after a grant, not after every write: waking every waiter at every change made
        the waiters' look at the state, not the work, the bottleneck."""
        try:
            os.utime(self._wake_path)
        except (FileNotFoundError, PermissionError):  # none yet, or another user's
            try:
                os.unlink(self._wake_path)
            except FileNotFoundError:
                pass
            os.close(os.open(self._wake_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666))
            os.utime(self._wake_path)

    def _replace(self) -> None:
        """Put the complete temp file in place of the state file: unlink, then rename.

        Every reader holds the lock, so nobody sees the moment without a state file, and a
        writer killed in that moment left a complete temp file that ``_read_raw`` commits.
        Not ``os.replace`` over the old file: on ext4 that forces a synchronous flush
        (``auto_da_alloc``) and costs four times as much as the whole acquire.
        """
        try:
            os.unlink(self._state_path)
        except FileNotFoundError:
            pass
        os.rename(self._tmp_path, self._state_path)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
#: ``renameat2`` from the C library, once looked up: a function, or None when absent.
_renameat2: list[Any] = []


def _exchange(a: Path, b: Path) -> bool:
    """Swap the files named ``a`` and ``b`` in one step (``renameat2`` with
    ``RENAME_EXCHANGE``, Linux 3.15+). False when the swap is not possible (no such call,
    a filesystem that does not support it, ``b`` missing): the caller replaces instead.
    Raises ``OSError`` for other failures."""
    if not _renameat2:
        _renameat2.append(_find_renameat2())
    fn = _renameat2[0]
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        _renameat2[0] = None  # this kernel or filesystem cannot: do not ask again
        return False
    if err == errno.ENOENT:
        return False  # no state file yet (the first write)
    raise OSError(err, os.strerror(err), str(b))


def _find_renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


class HostLock:
    """An exclusive lock among the threads and processes of this host: a thread lock,
    then ``flock`` on ``path`` (created, with its directory, if missing; released by the
    kernel when its holder dies). Works without the file too: with ``path`` None, or
    where it cannot be opened (permissions, a read-only directory), only the thread lock
    is taken. Survives ``fork``.

    While it is held, ``load`` and ``save`` read and write a note in the lock file (a
    hint for the next holder, never trusted: it may be stale, or torn by a holder killed
    while writing it).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._pid = os.getpid()
        self._tlock = threading.Lock()
        self._fd: int | None = None
        self._failed = False
        self._writable = False

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for the ``with`` block."""
        if self._pid != os.getpid():
            with _fork_guard:
                if self._pid != os.getpid():
                    # The inherited descriptor shares its flock with the parent, and a
                    # thread lock held at fork time would never be released: start afresh.
                    if self._fd is not None:
                        os.close(self._fd)
                    self._fd, self._failed = None, False
                    self._tlock = threading.Lock()
                    self._pid = os.getpid()
        with self._tlock:
            if self._fd is None and not self._failed:
                self._open()
            fd = self._fd
            if fd is None:
                yield
                return
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _open(self) -> None:
        if self.path is None:
            self._failed = True
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # then the open below fails too, and only the thread lock is taken
        flags = os.O_CREAT | os.O_CLOEXEC
        for mode, writable in ((os.O_RDWR, True), (os.O_RDONLY, False)):
            try:
                self._fd = os.open(self.path, mode | flags, 0o666)
            except OSError:
                continue
            self._writable = writable
            return
        self._failed = True

    def load(self) -> bytes:
        """The note the last holder saved (b"" when none). Call only while held."""
        fd = self._fd
        if fd is None:
            return b""
        try:
            return os.pread(fd, os.fstat(fd).st_size, 0)
        except OSError:
            return b""

    def save(self, data: bytes) -> None:
        """Leave ``data`` for the next holder (nothing if the file is read-only to this
        process). Call only while held."""
        fd = self._fd
        if fd is None or not self._writable:
            return
        try:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        except OSError:
            pass

    def close(self) -> None:
        """Close the lock file (reopened on next use)."""
        if self._pid != os.getpid():
            return
        with self._tlock:
            if self._fd is not None:
                os.close(self._fd)
            self._fd, self._failed = None, False


class Generation:
    """A ``ChangeFeed`` told of each change by whoever sees it: the writer of a memory
    store, or the thread that listens to a database (``engine.pool.postgres``)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._gen = 0

    def bump(self) -> None:
        """Count one change and wake every waiter."""
        with self._cond:
            self._gen += 1
            self._cond.notify_all()

    def generation(self) -> int:
        with self._cond:
            return self._gen

    def wait(self, seen: int, limit: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._gen != seen, timeout=max(0.0, limit))


class MemoryStore:
    """The state in memory, shared by the pool objects of one process that are given it.

    For tests and embedding: with ``shared=True`` it stands for a store several hosts use
    (give each pool its own ``host=``), so the rules for holders on other hosts run
    without a database.
    """

    def __init__(self, name: str = "memory", *, shared: bool = False) -> None:
        self._name = name
        self._shared = shared
        self._data = b""
        self._lock = threading.Lock()
        self._feed = Generation()

    @property
    def location(self) -> str:
        return f"memory:{self._name}"

    @property
    def shared(self) -> bool:
        return self._shared

    def exists(self) -> bool:
        return bool(self._data)

    def transact(self, fn: Step[_T]) -> _T:
        with self._lock:
            result, out, _ = run_step(fn, self._data)
            if out is not None:
                self._data = out
                self._feed.bump()  # every change: waking a thread of this process is cheap
            return result

    def peek(self) -> bytes:
        return self._data

    def changes(self) -> ChangeFeed | None:
        return self._feed

    def close(self) -> None:
        pass
