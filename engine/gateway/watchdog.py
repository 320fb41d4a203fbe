"""The watchdog of a command agent left running when its embedded gateway stopped.

An embedded local gateway lives inside a one-shot ``orchestrate`` or ``workflow run``
process. When that process ends because the caller stopped waiting (a timeout), the
agent may still be working, and the engine promises that its answer is merged later
(marked ``late``). So the gateway does not kill it: it starts this watchdog, in a
session of its own, and hands it the agent's output pipes (``pass_fds``) and, on stdin,
a JSON object::

    {"pid": 1234, "fds": [5, 7], "run_id": "orch-…", "agent": "webster",
     "handoff_path": "/…/handoffs/inbox/orch-….json", "key": "…",
     "workspace": "/…/workspaces/webster/…", "deadline_epoch": 1764504000.0,
     "limit_s": 600.0, "limit_source": "agent timeout", "fallback": true,
     "secrets": ["…"]}

The watchdog drains the pipes into ``stdout.late.log`` and ``stderr.late.log`` in the
workspace (the last 64 KB, redacted), ends the agent's process group at its hard limit
(SIGTERM, then SIGKILL), and when the agent is gone writes the fallback handoff if the
agent left none (never over one it delivered), then reconciles the records directory, so
the late answer meets its pending envelope. The agent is not its child, so its exit code
is unknown: a fallback is ``failed``, with what the agent printed.

``secrets`` lists every secret the gateway's process masks (the config's tokens and keys,
a workflow run's secret inputs): the watchdog loads no config, so it registers them
(``learn_secrets``) before it writes anything. They come on the stdin pipe, which nothing
else reads, never on the argv (``ps`` shows it) nor in a file.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import sys
import time
from pathlib import Path
from typing import Any

from engine.gateway.agents import (
    KILL_GRACE,
    OUTPUT_LIMIT,
    STDERR_TAIL,
    _delivered,
    _killpg,
    _reconcile,
    drain_ready,
    records_of,
    write_log,
    write_new_handoff,
)
from engine.handoff import GATEWAY_NOTE_PREFIX
from engine.redact import redact
from engine.store.liveness import process_alive

LATE_NOTE = f"{GATEWAY_NOTE_PREFIX} after it stopped: the agent exited without a handoff"


def watch(info: dict[str, Any]) -> None:
    """Drain, bound and finish one detached agent (see the module docstring)."""
    pid = int(info["pid"])
    fds = [int(fd) for fd in info.get("fds") or []]
    bufs: dict[int, bytearray] = {fd: bytearray() for fd in fds}
    sel = selectors.DefaultSelector()
    for fd in fds:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    pidfd: int | None = None
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        sel.register(pidfd, selectors.EVENT_READ)
    bound = _Bound(pid, info.get("deadline_epoch"))
    exited = pidfd is None and not process_alive(pid)
    open_pipes = len(fds)
    while not (exited and (open_pipes == 0 or bound.killed)):
        bound.enforce(time.time(), exited)
        ended, closed = drain_ready(sel, bound.wait(time.time()), pidfd, bufs)
        exited = exited or ended or (pidfd is None and not process_alive(pid))
        open_pipes -= closed
    _killpg(pid, signal.SIGTERM)  # stragglers left in the agent's session
    texts = [bytes(b[-OUTPUT_LIMIT:]).decode("utf-8", "replace") for b in bufs.values()]
    out, err = (texts + ["", ""])[:2]
    workspace = Path(str(info.get("workspace") or ""))
    for name, text in (("stdout.late.log", out), ("stderr.late.log", err)):
        write_log(workspace / name, text, info.get("key"))
    _finish(info, out, err, bound.timed_out)


class _Bound:
    """The hard limit of a detached agent: SIGTERM at ``deadline`` (epoch seconds), then
    SIGKILL ``KILL_GRACE`` seconds later."""

    def __init__(self, pid: int, deadline: float | None) -> None:
        self.pid = pid
        self.deadline = deadline
        self.term_at: float | None = None
        self.killed = False

    @property
    def timed_out(self) -> bool:
        """True once the agent was told to stop at its hard limit."""
        return self.term_at is not None

    def enforce(self, now: float, exited: bool) -> None:
        """Send the signal due at ``now``, if any."""
        if not exited and self.deadline is not None and now >= self.deadline:
            if self.term_at is None:
                _killpg(self.pid, signal.SIGTERM)
                self.term_at = now
        if self.term_at is not None and not self.killed and now >= self.term_at + KILL_GRACE:
            _killpg(self.pid, signal.SIGKILL)
            self.killed = True

    def wait(self, now: float) -> float:
        """Seconds to wait for output or the exit before looking again (at most 1)."""
        if self.deadline is not None and self.term_at is None:
            return min(1.0, max(0.0, self.deadline - now))
        return 1.0


def _finish(info: dict[str, Any], out: str, err: str, timed_out: bool) -> None:
    raw = info.get("handoff_path")
    if not raw or not info.get("run_id"):
        return
    path = Path(str(raw))
    # `fallback_handoff: false`: the engine repairs or ends `unusable`; no stand-in.
    if info.get("fallback", True) is not False and not _delivered(path):
        from engine.handoff import HandoffProblem, make_handoff

        workspace = Path(str(info.get("workspace") or ""))
        # what it printed before the gateway stopped (engine.gateway.agents keeps it)
        earlier = _read(workspace / "stdout.early.log")
        err = _read(workspace / "stderr.early.log") + err
        printed = (earlier + out).strip()
        if timed_out:
            result = (
                f"killed at the local gateway's hard limit of {info.get('limit_s')} s "
                f"({info.get('limit_source')}), after the gateway stopped"
            )
        else:
            result = "the agent exited without a handoff after the local gateway stopped"
        if printed:
            result += f"; it printed:\n{printed[-STDERR_TAIL:]}"
        elif err.strip():
            result += f"; stderr (tail):\n{err.strip()[-STDERR_TAIL:]}"
        handoff = make_handoff(
            run_id=str(info["run_id"]),
            agent=str(info.get("agent")),
            status="failed",
            result=redact(result, (info.get("key"),)),
            confidence="low",
            notes=LATE_NOTE,
            key=info.get("key"),
        )
        try:
            write_new_handoff(path, handoff)
        except (HandoffProblem, OSError):
            return
    _reconcile(records_of(path))


def learn_secrets(info: dict[str, Any]) -> int:
    """Register (``engine.redact.register``) the secrets the gateway passed in ``info``'s
    ``secrets`` list and drop that list from ``info``; return how many were strings.

    The gateway's process knows every secret of its config (``register_config``) and of
    its runs; the watchdog loads no config, so without them it would mask only the run's
    handoff key and the generic shapes in the late logs, the stand-in and the records."""
    from engine.redact import register

    secrets = info.pop("secrets", None)
    count = 0
    for value in secrets if isinstance(secrets, list) else []:
        if isinstance(value, str):
            register(value)
            count += 1
    return count


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def main() -> int:
    """Read the task's JSON from stdin and watch it (``python -m engine.gateway.watchdog``)."""
    try:
        info = json.loads(sys.stdin.read())
    except (OSError, ValueError):
        return 2
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
        return 2
    learn_secrets(info)
    watch(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
