"""Waiting for handoff files: one watch per directory, shared by every waiting delegation.

``watcher_for(directory)`` returns the process-wide watcher of a directory. A delegation
calls ``expect(name)`` *before* it dispatches (so nothing can slip between dispatch and
watch), then ``Waiter.wait(timeout)`` wakes when that file name may hold a complete
file: close-after-write, moved-into, and create (a hard link or symlink arrives complete
and fires nothing else; a created regular file may still be partial, which the reader
handles). ``<name-stem>.<n>.json`` (a second copy kept beside the first) wakes the
waiter of ``<name-stem>.json`` too. ``expect_any`` waits on names in several
directories at once (the inbox and the records directory). The inotify backend uses one
inotify instance and one thread per directory; the polling backend (no inotify on this
system) has the same interface.
"""

from __future__ import annotations

import os
import re
import select
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

_EVENT_TIMEOUT_MS = 250
#: One read of the inotify descriptor: many events (each 16 bytes and its name); what is
#: left is read after the next ``poll``, which answers at once.
_READ_BYTES = 64 * 1024
_COPY = re.compile(r"^(?P<stem>[^.]+)\.\d+\.json$")


class Waiter:
    """One delegation waiting for one file name in a watched directory."""

    def __init__(
        self, watcher: HandoffWatcher, name: str, event: threading.Event | None = None
    ) -> None:
        self.name = name
        self.path = watcher.directory / name
        self._watcher = watcher
        self._event = event or threading.Event()

    def _fire(self) -> None:
        self._event.set()

    def wait(self, timeout: float | None) -> bool:
        """Block until the file is (re)written or ``timeout`` passes; True if it was."""
        fired = self._event.wait(None if timeout is None else max(0.0, timeout))
        self._event.clear()
        return fired

    def close(self) -> None:
        """Stop waiting (idempotent)."""
        self._watcher._unregister(self)

    def __enter__(self) -> Waiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HandoffWatcher:
    """Wakes waiters when files land in ``directory``; use ``watcher_for`` to share one."""

    def __init__(
        self,
        directory: Path,
        *,
        backend: str = "auto",
        poll_interval: float = 0.05,
        on_unexpected: Callable[[str], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.poll_interval = poll_interval
        self.on_unexpected = on_unexpected
        self._lock = threading.Lock()
        self._waiters: dict[str, set[Waiter]] = {}
        self._stop = threading.Event()
        self._inotify = None
        self.backend = backend
        if backend in ("auto", "inotify"):
            try:
                from inotify_simple import INotify, flags

                ino = INotify()
                ino.add_watch(
                    str(self.directory), flags.CLOSE_WRITE | flags.MOVED_TO | flags.CREATE
                )
                self._inotify = ino
                self.backend = "inotify"
            except (ImportError, OSError):
                if backend == "inotify":
                    raise
                self.backend = "poll"
        target = self._run_inotify if self._inotify is not None else self._run_poll
        self._seen: dict[str, tuple[int, int] | None] = {}
        self._thread = threading.Thread(
            target=target, name=f"watch:{self.directory.name}", daemon=True
        )
        self._thread.start()

    def expect(self, name: str, *, event: threading.Event | None = None) -> Waiter:
        """Register interest in ``name`` (a file name inside the directory)."""
        waiter = Waiter(self, name, event)
        with self._lock:
            self._waiters.setdefault(name, set()).add(waiter)
            if self._inotify is None:
                self._seen[name] = _stat_key(self.directory / name)
        return waiter

    def _unregister(self, waiter: Waiter) -> None:
        with self._lock:
            group = self._waiters.get(waiter.name)
            if group is not None:
                group.discard(waiter)
                if not group:
                    del self._waiters[waiter.name]
                    self._seen.pop(waiter.name, None)

    @property
    def waiting(self) -> int:
        """How many waiters are registered."""
        with self._lock:
            return sum(len(g) for g in self._waiters.values())

    def _notify(self, name: str) -> None:
        if name.startswith((".tmp-", "#")):  # a temp file: its rename or link follows
            return  # ("#<inode>": the close of an unnamed file linked into the directory)
        copy = _COPY.match(name)
        if copy is not None:
            name = f"{copy.group('stem')}.json"
        with self._lock:
            group = tuple(self._waiters.get(name, ()))
        for w in group:
            w._fire()
        if not group and self.on_unexpected is not None and name.endswith(".json"):
            self.on_unexpected(name)

    def _run_inotify(self) -> None:
        """Wait (``poll``) and read what is there in one ``read``: two system calls per
        wake-up. ``INotify.read`` asks the size first (``ioctl(FIONREAD)``) before and
        after each read, four or five calls per wake-up, each a hand-over of the
        interpreter lock when many threads want it."""
        from inotify_simple import parse_events

        ino = self._inotify
        assert ino is not None
        fd = ino.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not self._stop.is_set():
            try:
                if not poller.poll(_EVENT_TIMEOUT_MS):
                    continue
                data = os.read(fd, _READ_BYTES)  # readable: does not block
            except OSError:
                if self._stop.is_set():
                    return
                raise
            for ev in parse_events(data):
                if ev.name:
                    self._notify(ev.name)

    def _run_poll(self) -> None:
        while not self._stop.wait(self.poll_interval):
            with self._lock:
                names = list(self._waiters)
            for name in names:
                key = _stat_key(self.directory / name)
                with self._lock:
                    if name not in self._seen:
                        continue
                    changed = key is not None and key != self._seen[name]
                    self._seen[name] = key
                if changed:
                    self._notify(name)

    def close(self) -> None:
        """Stop the watch thread and release the inotify descriptor."""
        self._stop.set()
        self._thread.join(timeout=2)
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None


def _stat_key(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_mtime_ns ^ st.st_ino, st.st_size)


class WaiterGroup:
    """Waiters on several (directory, name) pairs that share one wake-up."""

    def __init__(self, waiters: list[Waiter], event: threading.Event) -> None:
        self._waiters = waiters
        self._event = event

    def wait(self, timeout: float | None) -> bool:
        """Block until any of the files is (re)written or ``timeout`` passes."""
        fired = self._event.wait(None if timeout is None else max(0.0, timeout))
        self._event.clear()
        return fired

    def close(self) -> None:
        """Stop waiting on every name (idempotent)."""
        for w in self._waiters:
            w.close()

    def wake(self) -> None:
        """Wake the waiting delegation now (its agent's run ended: engine.completion)."""
        self._event.set()


def expect_any(pairs: Iterable[tuple[Path, str]], *, backend: str = "auto") -> WaiterGroup:
    """Wait on ``name`` in each ``directory`` at once (each directory's shared watcher)."""
    event = threading.Event()
    waiters = [
        watcher_for(directory, backend=backend).expect(name, event=event)
        for directory, name in pairs
    ]
    return WaiterGroup(waiters, event)


_registry: dict[tuple[Path, str], HandoffWatcher] = {}
#: The same watchers by the directory as callers name it: a delegation looks its two
#: watchers up without resolving the path again (``resolve`` is an lstat per component).
_by_given: dict[tuple[str, str], HandoffWatcher] = {}
_registry_lock = threading.Lock()


def watcher_for(directory: Path, *, backend: str = "auto") -> HandoffWatcher:
    """Return this process's single watcher for ``directory`` (created on first use)."""
    given = (str(directory), backend)
    w = _by_given.get(given)
    if w is not None:
        return w
    key = (Path(directory).resolve(), backend)
    with _registry_lock:
        w = _registry.get(key)
        if w is None:
            w = _registry[key] = HandoffWatcher(key[0], backend=backend)
        if os.path.isabs(given[0]):  # a relative name depends on the working directory
            _by_given[given] = w
        return w


def close_all() -> None:
    """Close every shared watcher (tests and long-lived processes on shutdown)."""
    with _registry_lock:
        watchers = list(_registry.values())
        _registry.clear()
        _by_given.clear()
    for w in watchers:
        w.close()
