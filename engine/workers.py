"""Daemon threads reused from task to task, for work that blocks (a held POST, an agent).

Starting a thread costs 0.1-1.2 ms of latency on a busy interpreter (``Thread.start``
waits until the new thread has run); handing a task to an idle thread is a queue put.
``Workers.submit(fn)`` runs ``fn()`` on an idle thread, or on a new one when none is idle:
as many tasks run at once as were submitted, none waits behind a long one. An idle thread
ends after ``idle_s`` seconds (30 by default), so an idle process keeps none for long.

Example::

    workers = Workers("dispatch")
    workers.submit(lambda: client.post(...))   # returns at once
    workers.close()                            # idle threads end now
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

__all__ = ["Workers"]


class Workers:
    """Reusable daemon threads; thread-safe. ``fn`` must not raise (wrap what may)."""

    def __init__(self, name: str, *, idle_s: float = 30.0) -> None:
        self._name = name
        self._idle_s = idle_s
        self._queue: queue.SimpleQueue[Callable[[], object] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._closed = False

    @property
    def idle(self) -> int:
        """How many threads wait for a task now."""
        with self._lock:
            return self._idle

    def submit(self, fn: Callable[[], object]) -> None:
        """Run ``fn()`` on a worker thread (an idle one, else a new one); return at once."""
        with self._lock:
            if self._idle > 0 and not self._closed:
                self._idle -= 1
                self._queue.put(fn)
                return
        threading.Thread(target=self._loop, args=(fn,), name=self._name, daemon=True).start()

    def close(self) -> None:
        """Let every idle thread end now; a running one ends after its task."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, 0
        for _ in range(idle):
            self._queue.put(None)

    def _loop(self, fn: Callable[[], object] | None) -> None:
        while fn is not None:
            try:
                fn()
            except Exception:  # noqa: BLE001 - the caller's task must not kill the worker
                pass
            with self._lock:
                if self._closed:
                    return
                self._idle += 1
            try:
                fn = self._queue.get(timeout=self._idle_s)
            except queue.Empty:
                with self._lock:
                    try:  # a task handed over just as the wait ended is still run
                        fn = self._queue.get_nowait()
                    except queue.Empty:
                        self._idle -= 1
                        return
