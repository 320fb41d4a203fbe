"""What this host can tell about a holder: its identity, and whether a PID is still alive.

The only module of the pool that asks the kernel (``/proc``, ``kill(pid, 0)``); the
policy gets its answers as an injected ``pid_alive(pid, start)`` function.
"""

from __future__ import annotations

import os
import select
import socket
import threading

__all__ = ["RUN_ID_ENV", "boot_id", "host_id", "pid_alive", "start_time", "work_of"]

#: The environment variable the local gateway gives a command agent: its delegation's run
#: id (``engine.gateway.agents``), which is the run id of that delegation's pool token.
RUN_ID_ENV = "ORCH_RUN_ID"


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) from /proc/<pid>/stat, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return fields[0].decode("ascii", "replace"), int(fields[19])
    except (IndexError, ValueError):
        return None


def start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (field 22), or None."""
    info = _proc_stat(pid)
    return info[1] if info else None


def work_of(run_id: str) -> list[tuple[int, int | None]]:
    """This host's processes doing the work of the delegation ``run_id``: those whose
    environment holds ``ORCH_RUN_ID=<run_id>`` (the local gateway's command agent for it,
    and what that agent started), as ``(pid, start time)``; this process excluded.

    Reads ``/proc/<pid>/environ`` of every process (those of other users cannot be read
    and are skipped): a few milliseconds, asked only about a token whose holder died.
    The environment is the one the process was started with (``proc(5)``)."""
    needle = f"{RUN_ID_ENV}={run_id}".encode()
    me = os.getpid()
    found: list[tuple[int, int | None]] = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                env = fh.read()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            pid = int(name)
            found.append((pid, start_time(pid)))
    return found


#: Open pidfds of processes found alive, by (pid, start time); at most ``_MAX_WATCHED``.
_watched: dict[tuple[int, int], int] = {}
_watched_lock = threading.Lock()
_MAX_WATCHED = 64


def _forked() -> None:
    """In a forked child: its copies of the descriptors are closed, the lock is new (a
    thread of the parent may have held it at the fork)."""
    global _watched_lock
    _watched_lock = threading.Lock()
    for fd in _watched.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _watched.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def pid_alive(pid: int, start: int | None) -> bool:
    """Is ``pid`` a running process on this host, and the same one that recorded ``start``?

    The first check of a process reads ``/proc/<pid>/stat`` (its state and start time);
    where the kernel has ``pidfd_open`` (Linux 5.3+) it also keeps a descriptor of that
    very process, and later checks only ask whether it has exited (one ``select``, no
    file read: a pool transaction checks every other holder). A pidfd always names the
    process it was opened for, so a reused PID is never taken for it; an exited process
    that is not reaped yet (a zombie) counts as dead, as in ``/proc``.
    """
    if start is None or not hasattr(os, "pidfd_open"):
        return _pid_alive(pid, start)
    key = (pid, start)
    with _watched_lock:  # held while asking: no other thread closes the descriptor meanwhile
        fd = _watched.get(key)
        if fd is not None:
            ask = select.poll()
            ask.register(fd, select.POLLIN)
            try:
                if not ask.poll(0):
                    return True  # not exited
            except OSError:
                pass
            del _watched[key]
            os.close(fd)
            return _pid_alive(pid, start)
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return _pid_alive(pid, start)  # gone, not ours to open, or no pidfd here
    if not _pid_alive(pid, start):  # the process the pidfd names is the one we checked
        os.close(fd)
        return False
    with _watched_lock:
        if len(_watched) >= _MAX_WATCHED:
            for old in _watched.values():
                os.close(old)
            _watched.clear()
        if key in _watched:
            os.close(fd)
        else:
            _watched[key] = fd
    return True


def _pid_alive(pid: int, start: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    except OSError:
        return False
    if not os.path.isdir("/proc/self"):
        return True  # no procfs: the signal check is all we have
    info = _proc_stat(pid)
    if info is None:
        return False  # it vanished between the two checks
    state, started = info
    if state in ("Z", "X", "x"):
        return False  # killed and not yet reaped by its parent: it holds nothing
    return start is None or started == start


_boot: list[str | None] = []


def boot_id() -> str | None:
    """This boot's id (Linux), read once per process: monotonic times compare within it."""
    if not _boot:
        try:
            with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
                _boot.append(fh.read().strip()[:64] or None)
        except (OSError, ValueError):
            _boot.append(None)
    return _boot[0]


def host_id() -> str:
    """Who can check this process's PID: ``ORCH_HOST_ID``, else the boot id, else the name.

    The boot id, not the name: a host renamed while it runs is still the host whose PIDs
    it can check, and two hosts cloned with the same name are not. ``ORCH_HOST_ID`` (see
    ``engine.store.liveness``) overrides both; raises ``ConfigError`` for a bad value.
    """
    from engine.store.liveness import configured_host

    return configured_host() or boot_id() or socket.gethostname()[:64] or "localhost"
