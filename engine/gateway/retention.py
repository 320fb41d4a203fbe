"""How many finished task workspaces the local gateway keeps (``gateway.workspace_retention``).

Each command task gets ``<workspaces>/<agent>/<gateway run id>/``; without a limit they
pile up forever. After a task ends, the finished workspaces of its agent beyond the newest
``keep`` are removed. A workspace counts as finished once the gateway wrote its
``stdout.log``; a running task's workspace is never touched.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Collection
from pathlib import Path

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


#: Pruning runs on the gateway's task threads; one at a time, so two never race on the
#: same workspace (one would find it gone halfway through and log a false alarm).
_PRUNING = threading.Lock()


def _prune(agent_dir: Path, keep: int, running: Collection[str]) -> int:
    try:
        names = os.listdir(agent_dir)  # names only: cheap enough for every task
        if sum(1 for n in names if n not in running) <= keep:
            return 0  # nothing beyond ``keep``, finished or not: no stat per workspace
        entries = [
            p
            for p in agent_dir.iterdir()
            if p.name not in running
            and p.is_dir()
            and not p.is_symlink()
            and (p / FINISHED_MARKER).exists()
        ]
        entries.sort(key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)
    except OSError as exc:
        log.warning("local gateway: cannot list workspaces in %s: %s", agent_dir, exc)
        return 0
    removed = 0
    for old in entries[keep:]:
        try:
            shutil.rmtree(old)
            removed += 1
        except FileNotFoundError:
            pass  # removed meanwhile (by hand, or another gateway on this directory)
        except OSError as exc:
            log.warning("local gateway: cannot remove workspace %s: %s", old, exc)
    return removed
