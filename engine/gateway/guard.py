"""The hard-limit guard of a command agent: it ends the agent even when its gateway died.

The local gateway enforces a command agent's hard limit itself (``engine.gateway.agents``)
and, when it stops first, hands the agent to a watchdog (``engine.gateway.watchdog``).
Neither helps when the gateway's process dies at once (``kill -9`` of a one-shot
``orchestrate``, the OOM killer): the agent, in a session of its own, would run forever.
So the gateway starts this guard beside each agent that has a hard limit, in a session of
its own, as::

    python -I -S .../engine/gateway/guard.py PID START DEADLINE_EPOCH GRACE

``START`` is the agent's start time (``/proc/PID/stat`` field 22), so a reused pid is
never taken for it. The guard waits for the agent's exit (a pidfd) or ``DEADLINE_EPOCH``
(epoch seconds, which the gateway sets a little past the hard limit, so that the gateway or
the watchdog, which write what happened, normally act first), then sends SIGTERM to the
agent's process group, and SIGKILL ``GRACE`` seconds later if the agent still runs. It
exits as soon as the agent is gone. Standard library only, run by path without ``site``:
it costs a few milliseconds per task. Exit code 0, 2 on bad arguments.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time


def start_of(pid: int) -> str | None:
    """``pid``'s start time (field 22 of ``/proc/PID/stat``), None when it is gone or a
    zombie (it exited) or ``/proc`` cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            line = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = line[line.rfind(")") + 2 :].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def guard(pid: int, start: str, deadline: float, grace: float) -> None:
    """Wait for ``pid`` (started at ``start``) to exit or for ``deadline``; then end its
    group: SIGTERM, and SIGKILL after ``grace`` seconds (see the module docstring)."""
    try:
        fd: int | None = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    try:
        if start_of(pid) != start:  # already gone (or another process): nothing to guard
            return
        if _exits_by(fd, pid, start, deadline):
            return
        _signal(pid, signal.SIGTERM)
        if not _exits_by(fd, pid, start, time.time() + grace):
            _signal(pid, signal.SIGKILL)
    finally:
        if fd is not None:
            os.close(fd)


def _exits_by(fd: int | None, pid: int, start: str, until: float) -> bool:
    """True once the agent exited, False when ``until`` (epoch seconds) came first."""
    while start_of(pid) == start:
        left = until - time.time()
        if left <= 0:
            return False
        if fd is not None:
            select.select([fd], [], [], min(left, 60.0))
        else:
            time.sleep(min(left, 0.5))
    return True


def _signal(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str]) -> int:
    """``guard.py PID START DEADLINE_EPOCH GRACE``; 2 on bad arguments."""
    try:
        pid, start, deadline, grace = int(argv[0]), argv[1], float(argv[2]), float(argv[3])
    except (IndexError, ValueError):
        return 2
    if pid <= 1:
        return 2
    guard(pid, start, deadline, grace)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
