"""The hard-limit guard of command agents: it ends an agent even when its gateway died.

The local gateway enforces a command agent's hard limit itself (``engine.gateway.agents``)
and, when it stops first, hands the agent to a watchdog (``engine.gateway.watchdog``).
Neither helps when the gateway's process dies at once (``kill -9`` of a one-shot
``orchestrate``, the OOM killer): the agent, in a session of its own, would run forever.
So each gateway process (each ``CommandRunner``) starts one guard, at its first agent with
a hard limit, in a session of its own, as::

    python -I -S .../engine/gateway/guard.py

and tells it each agent on its stdin, one line (ASCII, ``\\n``-terminated) per event:

- ``add PID START DEADLINE_EPOCH GRACE``: guard agent ``PID``;
- ``drop PID START``: the gateway saw it end (and did not detach it): forget it.

``START`` is the agent's start time (``/proc/PID/stat`` field 22, clock ticks since boot),
so a reused pid is never taken for it. The guard waits on every agent's exit (a pidfd each)
and the nearest ``DEADLINE_EPOCH`` (epoch seconds, which the gateway sets a little past the
hard limit, so that the gateway or the watchdog, which write what happened, normally act
first); an agent still running then gets SIGTERM to its process group, and SIGKILL
``GRACE`` seconds later if it still runs (its start time is checked before each signal).
An agent is forgotten as soon as it is gone. When its stdin reaches EOF (the gateway exited
or was killed), the guard keeps guarding the agents it has until each has exited or been
ended, then exits. Malformed lines are ignored.

``guard.py PID START DEADLINE_EPOCH GRACE`` guards that one agent, with no stdin. Standard
library only, run by path without ``site``: it starts in a few milliseconds. Exit code 0,
2 on bad arguments.
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


class _Agent:
    """One guarded agent: its pidfd (None without pidfd support), the epoch second of its
    next step and whether SIGTERM was sent (the next step is then SIGKILL)."""

    __slots__ = ("pid", "start", "fd", "at", "grace", "termed")

    def __init__(self, pid: int, start: str, fd: int | None, at: float, grace: float) -> None:
        self.pid, self.start, self.fd, self.at, self.grace = pid, start, fd, at, grace
        self.termed = False


class Guard:
    """The agents one guard process watches, by pid (see the module docstring)."""

    def __init__(self) -> None:
        self.agents: dict[int, _Agent] = {}

    def add(self, pid: int, start: str, deadline: float, grace: float) -> None:
        """Guard ``pid`` (started at ``start``) until ``deadline`` (epoch seconds); a pid
        already gone, or now another process, is not added."""
        if pid <= 1:
            return
        self.drop(pid, None)
        try:
            fd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):
            fd = None
        if start_of(pid) != start:  # checked after pidfd_open: the fd is this process's
            _close(fd)
            return
        self.agents[pid] = _Agent(pid, start, fd, deadline, grace)

    def drop(self, pid: int, start: str | None) -> None:
        """Forget ``pid`` (if it is the agent started at ``start``; any when None)."""
        agent = self.agents.get(pid)
        if agent is not None and (start is None or agent.start == start):
            del self.agents[pid]
            _close(agent.fd)

    def command(self, line: str) -> None:
        """Apply one stdin line (``add ...`` or ``drop ...``); ignore a malformed one."""
        words = line.split()
        try:
            if len(words) == 5 and words[0] == "add":
                self.add(int(words[1]), words[2], float(words[3]), float(words[4]))
            elif len(words) == 3 and words[0] == "drop":
                self.drop(int(words[1]), words[2])
        except ValueError:
            pass

    def step(self, now: float) -> float | None:
        """Forget the agents gone, signal the ones whose time came; the epoch second of the
        next step due (None when no agent is left)."""
        nearest = None
        for agent in list(self.agents.values()):
            if start_of(agent.pid) != agent.start:
                self.drop(agent.pid, None)
                continue
            if agent.at <= now:
                if agent.termed:
                    _signal(agent.pid, signal.SIGKILL)
                    self.drop(agent.pid, None)  # SIGKILL cannot be ignored: done
                    continue
                _signal(agent.pid, signal.SIGTERM)
                agent.termed, agent.at = True, now + agent.grace
            nearest = agent.at if nearest is None else min(nearest, agent.at)
        return nearest


def serve(guard: Guard, stdin: int | None) -> None:
    """Run ``guard``: read events from the fd ``stdin`` (None: none), wait on the agents'
    pidfds and the nearest step; return once ``stdin`` reached EOF and no agent is left."""
    buf = b""
    while True:
        nearest = guard.step(time.time())
        if stdin is None and not guard.agents:
            return
        poller = select.poll()
        if stdin is not None:
            poller.register(stdin, select.POLLIN)
        polled_all = True
        for agent in guard.agents.values():
            if agent.fd is not None:
                poller.register(agent.fd, select.POLLIN)
            else:
                polled_all = False
        wait = None if nearest is None else max(0.0, nearest - time.time())
        if not polled_all:
            wait = 0.5 if wait is None else min(wait, 0.5)
        ready = poller.poll(None if wait is None else wait * 1000 + 1)
        if stdin is not None and any(fd == stdin for fd, _ in ready):
            try:
                chunk = os.read(stdin, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                stdin = None  # the gateway is gone: guard what is left, then exit
                continue
            *lines, buf = (buf + chunk).split(b"\n")
            for line in lines:
                guard.command(line.decode("ascii", "replace"))


def _signal(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def main(argv: list[str]) -> int:
    """``guard.py`` (events on stdin) or ``guard.py PID START DEADLINE_EPOCH GRACE`` (that
    one agent); 2 on bad arguments."""
    guard = Guard()
    if not argv:
        serve(guard, sys.stdin.fileno())
        return 0
    try:
        pid, start, deadline, grace = int(argv[0]), argv[1], float(argv[2]), float(argv[3])
    except (IndexError, ValueError):
        return 2
    if pid <= 1 or len(argv) != 4:
        return 2
    guard.add(pid, start, deadline, grace)
    serve(guard, None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
