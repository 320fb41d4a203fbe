"""How many finished task workspaces the local gateway keeps (``gateway.workspace_retention``).

Each command task gets ``<workspaces>/<agent>/<gateway run id>/``; without a limit they
pile up forever. After a task ends, the finished workspaces of its agent beyond the newest
``keep`` are removed, on a background thread (``prune_later``): the task's answer does not
wait for it, and a gateway that stops waits for it (``wait_pruned``). A workspace counts
as finished once the gateway wrote its ``stdout.log``; a running task's workspace is never
touched.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import threading
from collections.abc import Callable, Collection
from pathlib import Path

from engine.workers import Workers

log = logging.getLogger(__name__)

#: Written by the gateway when a task ends: marks a workspace as finished.
FINISHED_MARKER = "stdout.log"


def prune_workspaces(agent_dir: Path, keep: int | None, running: Collection[str] = ()) -> int:
    """Remove finished workspaces in ``agent_dir`` beyond the newest ``keep``; return how many.

    ``keep=None`` keeps all. Errors are logged, never raised: pruning must not fail a task.
    """
    if keep is None:
        return 0
    with _PRUNING:  # two tasks of one agent ending together prune one after the other
        return _prune(agent_dir, keep, running)


#: One pruning at a time, so two never race on the same workspace (one would find it
#: gone halfway through and log a false alarm).
_PRUNING = threading.Lock()


def prune_later(
    agent_dir: Path, keep: int | None, running: Callable[[], Collection[str]]
) -> None:
    """``prune_workspaces`` on a background thread, so that a task's answer does not wait
    for it; ``running()`` names the busy workspaces when the pruning starts.

    Requests for one directory made while it is being pruned are merged into one more
    pass: sixteen tasks ending together cost one or two passes, not sixteen in a row.
    ``wait_pruned`` waits for the passes asked for so far.
    """
    if keep is None:
        return
    with _QUEUE_LOCK:
        _QUEUE[str(agent_dir)] = (agent_dir, keep, running)
        if _ACTIVE:
            return
        _ACTIVE.append(True)
        _IDLE.clear()
    _WORKERS.submit(_drain)


def wait_pruned(timeout: float) -> bool:
    """Wait until no pruning is asked for or running (at most ``timeout`` s); True if so."""
    return _IDLE.wait(timeout)


_QUEUE: dict[str, tuple[Path, int, Callable[[], Collection[str]]]] = {}
_QUEUE_LOCK = threading.Lock()
_ACTIVE: list[bool] = []  # non-empty while a thread drains _QUEUE
_IDLE = threading.Event()
_IDLE.set()
_WORKERS = Workers("workspace-prune")


def _drain() -> None:
    while True:
        with _QUEUE_LOCK:
            if not _QUEUE:
                _ACTIVE.clear()
                _IDLE.set()
                return
            agent_dir, keep, running = _QUEUE.pop(next(iter(_QUEUE)))
        try:
            prune_workspaces(agent_dir, keep, running())
        except Exception as exc:  # noqa: BLE001 - pruning must never break the gateway
            log.warning("local gateway: pruning %s failed: %s", agent_dir, exc)


def _prune(agent_dir: Path, keep: int, running: Collection[str]) -> int:
    try:
        names = os.listdir(agent_dir)  # names only: cheap enough for every task
    except OSError as exc:
        log.warning("local gateway: cannot list workspaces in %s: %s", agent_dir, exc)
        return 0
    present = set(names)
    seen = _FINISHED.setdefault(str(agent_dir), {})
    for name in [n for n in seen if n not in present]:
        del seen[name]  # removed meanwhile (by us, by hand, or another gateway)
    if sum(1 for n in names if n not in running) <= keep:
        return 0  # nothing beyond ``keep``, finished or not: no stat per workspace
    try:
        for name in names:
            if name not in seen and name not in running:
                when = _finished_at(agent_dir / name)
                if when is not None:
                    seen[name] = when
    except OSError as exc:
        log.warning("local gateway: cannot list workspaces in %s: %s", agent_dir, exc)
        return 0
    entries = sorted(
        (n for n in seen if n not in running), key=lambda n: (seen[n], n), reverse=True
    )
    removed = 0
    for name in entries[keep:]:
        try:
            shutil.rmtree(agent_dir / name)
            removed += 1
        except FileNotFoundError:
            pass  # removed meanwhile (by hand, or another gateway on this directory)
        except OSError as exc:
            log.warning("local gateway: cannot remove workspace %s: %s", agent_dir / name, exc)
            continue
        seen.pop(name, None)
    return removed


#: Per agent directory: the finished workspaces seen there, with their modification time
#: (ns) when first seen finished. A workspace is looked at (three ``stat`` calls) once,
#: not at every task's end: with 100 kept that was ~400 calls per task.
_FINISHED: dict[str, dict[str, int]] = {}


def _finished_at(path: Path) -> int | None:
    """The modification time (ns) of the finished workspace ``path``; None when it is not
    one (not a directory, a symbolic link, or no ``FINISHED_MARKER`` in it yet)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode) or not os.path.exists(path / FINISHED_MARKER):
        return None
    return st.st_mtime_ns
