"""Where the pool's state lives: the ``PoolStore`` seam, and the file store for one host.

A store keeps one JSON document (see ``engine.pool.state``) and offers exactly three
things: a transaction (read the document, let the caller change it, write it back
atomically, all under one exclusive lock), a lockless peek at the last complete version,
and a feed of changes waiters sleep on. It knows nothing of tokens: the rules live in
``engine.pool.policy`` and ``TokenPool`` applies them. A PostgreSQL store would be a row
read ``FOR UPDATE`` and a ``LISTEN``/``NOTIFY`` channel.

``FileStore`` is the host-local store: ``<dir>/lock`` is the ``flock`` target,
``<dir>/state.json`` the document, written as a complete temp file renamed into place;
waiters wake on inotify (the state file moved into the directory), or poll.
"""

from __future__ import annotations

import fcntl
import math
import os
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
    "ChangeFeed",
    "FileStore",
    "Generation",
    "MemoryStore",
    "PoolStore",
]

_T = TypeVar("_T")

STATE_NAME = "state.json"
LOCK_NAME = "lock"
_TMP_NAME = ".state.tmp"
#: A change feed's reader looks up at least this often (seconds).
FULL_CHECK = 0.05


class ChangeFeed(Protocol):
    """Wakes waiters when the stored state changes."""

    def generation(self) -> int:
        """A counter that grows with every change seen."""
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

    def transact(self, fn: Callable[[bytes], tuple[_T, bytes | None]]) -> _T:
        """Under an exclusive lock: ``fn(stored)`` returns (result, new bytes or None to
        keep the stored ones); new bytes are stored atomically. ``ConfigError`` when the
        store is unusable."""
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
    """One inotify watch on the pool directory per store, shared by its waiting threads:
    whichever thread reads the events bumps a generation the others wait on.

    Kept open until ``FileStore.close()``: closing an inotify instance waits for a kernel
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

    def transact(self, fn: Callable[[bytes], tuple[_T, bytes | None]]) -> _T:
        try:
            with self._locked():
                result, out = fn(self._read_raw())
                if out is not None:
                    self._write_raw(out)
                return result
        except OSError as exc:
            raise ConfigError(
                f"the token pool directory `{self.directory}` is not usable: "
                f"{exc.strerror or exc}. Check `pool.dir` and its permissions.",
                path=self.directory,
            ) from exc

    def peek(self) -> bytes:
        return self._read_raw(commit=False)

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

    def transact(self, fn: Callable[[bytes], tuple[_T, bytes | None]]) -> _T:
        with self._lock:
            result, out = fn(self._data)
            if out is not None:
                self._data = out
                self._feed.bump()
            return result

    def peek(self) -> bytes:
        return self._data

    def changes(self) -> ChangeFeed | None:
        return self._feed

    def close(self) -> None:
        pass
