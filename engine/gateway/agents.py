"""Agents hosted by the local gateway: kind ``command`` runs an argv per task.

Each task gets a fresh workspace ``<workspaces>/<agent>/<gateway run id>/`` holding
``TASK.txt`` (the full message, its ``key:`` line masked: the key is in
``$ORCH_HANDOFF_KEY``, since other agents may read the workspaces), and after the run
``stdout.log`` and, when the agent wrote to stderr, ``stderr.log`` (the last 64 KB of
each). The process runs in its own
session, so the whole group can be killed on timeout, when the gateway stops, and (to
leave no stray processes behind) when the agent's main process exits.

If the message carried a handoff block and the agent left no file at ``handoff_path``,
the runner writes one for it (``complete`` with stdout on exit 0, ``failed`` otherwise),
then reconciles that run so a late handoff meets its pending envelope. That fallback
is placed atomically and only where nothing is (``write_new_handoff``): it never replaces
or competes with a handoff the agent delivered. An agent that cannot be started gets a
``failed`` handoff at once, saying why.

A command agent is not killed at the delegation's ``timeoutSeconds``: the engine gave up
waiting, but a late handoff is still merged (marked ``late``). It runs up to its hard
limit (``hard_limit``): ``kill_after`` of the agent, else its ``timeout``, else the
gateway-wide ``kill_after``, else ``max(4 x timeoutSeconds, timeoutSeconds + 600 s)``.

A task sent with an ``Idempotency-Key`` also gets ``gateway-run.json`` in its workspace
(``RUN_FILE``): the key's SHA-256, the delegation's run id, the gateway run id and the
agent's pid with its start time. A gateway started later on the same workspaces (the
embedded gateway of a resumed workflow, after the first died with its process) answers
that key as the first acceptance did, instead of starting the agent again
(``CommandRunner.earlier_run``, ``wait_for``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import select
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import MAX_SECONDS, GatewayAgentConfig
from engine.files import SAFE_ID
from engine.handoff import GATEWAY_NOTE_PREFIX
from engine.redact import install_log_filter, redact

log = logging.getLogger("engine.gateway")
install_log_filter(log)

HANDOFF_MARKER = "--- HANDOFF (required) ---"
#: The first line of a correction sent alone into a session (engine.repair.REPAIR_MARKER).
REPAIR_MARKER = "--- HANDOFF REPAIR ---"
#: How much of each output stream is kept (the tail).
OUTPUT_LIMIT = 64 * 1024
#: How much of stderr goes into a ``failed`` handoff written by the gateway.
STDERR_TAIL = 2000
#: Seconds between SIGTERM and SIGKILL of a process group.
KILL_GRACE = 2.0
_STOPPING = "the local gateway is stopping"
GATEWAY_NOTE = f"{GATEWAY_NOTE_PREFIX}: the agent exited without a handoff"
#: Without any ``kill_after`` or ``timeout``, a command agent may run this many times the
#: delegation's timeout (and at least ``HARD_LIMIT_EXTRA`` seconds past it) before it is
#: killed.
HARD_LIMIT_FACTOR = 4.0
HARD_LIMIT_EXTRA = 600.0
#: The longest ``ORCH_TASK`` value passed in the environment (Linux refuses a single
#: variable above 128 KiB); the full message is always in ``$ORCH_WORKSPACE/TASK.txt``.
ENV_TASK_LIMIT = 96 * 1024


@dataclass(frozen=True)
class Task:
    """One message to run on one gateway agent, with what its handoff block said."""

    gateway_run_id: str
    agent: str
    message: str
    text: str
    run_id: str | None = None
    handoff_agent: str | None = None
    handoff_path: Path | None = None
    timeout: float | None = None
    handoff_key: str | None = None
    session_key: str | None = None  # the request's ``sessionKey``: runs that share a session


@dataclass(frozen=True)
class ProcessOutcome:
    """How a command agent's process ended."""

    returncode: int | None
    timed_out: bool
    cancelled: bool
    stdout: str
    stderr: str
    seconds: float
    wrote_handoff: bool = False


def task_from_message(
    gateway_run_id: str,
    agent: str,
    message: str,
    timeout: float | None = None,
    session_key: str | None = None,
) -> Task:
    """Build a Task: split the task text from the handoff block and read the block's keys.

    A correction sent alone into a session (``REPAIR_MARKER`` first, no handoff block)
    carries the same keys; its text is the correction itself, its key masked.
    """
    from engine.message import parse_handoff_block

    # The LAST marker is the block the engine appended; an earlier one is quoted data.
    idx = message.rfind(HANDOFF_MARKER)
    text = message[:idx].rstrip() if idx >= 0 else message
    if idx < 0 and message.startswith(REPAIR_MARKER):
        idx, text = 0, redact_key(message)  # the key is in $ORCH_HANDOFF_KEY
    block = parse_handoff_block(message[idx:]) if idx >= 0 else {}
    run_id = block.get("run_id")
    if run_id is not None and not SAFE_ID.match(run_id):
        run_id = None
    handoff_agent = block.get("agent")
    path: Path | None = None
    raw = block.get("handoff_path")
    if raw and run_id:
        candidate = Path(raw)
        # Only a file named after the run, at an absolute path, is ever written for it.
        if candidate.is_absolute() and candidate.name == f"{run_id}.json":
            path = candidate
    from engine.handoff import KEY_PATTERN

    key = block.get("key")
    if key is not None and not KEY_PATTERN.match(key):
        key = None
    return Task(
        gateway_run_id=gateway_run_id,
        agent=agent,
        message=message,
        text=text,
        run_id=run_id,
        handoff_agent=handoff_agent,
        handoff_path=path,
        timeout=timeout,
        handoff_key=key,
        session_key=session_key,
    )


def redact_key(message: str) -> str:
    """``message`` with the handoff block's ``key:`` line masked (for files on disk)."""
    import re

    found = [i for i in (message.find(HANDOFF_MARKER), message.find(REPAIR_MARKER)) if i >= 0]
    if not found:
        return message
    idx = min(found)
    block = re.sub(r"(?m)^key: \S.*$", "key: (in $ORCH_HANDOFF_KEY)", message[idx:])
    block = re.sub(r"--key \S+", '--key "$ORCH_HANDOFF_KEY"', block)
    return message[:idx] + block


class _Running:
    """A live process and whether the gateway asked it to stop."""

    __slots__ = ("popen", "cancelled", "detached")

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.cancelled = False
        self.detached = False  # left running when the gateway stopped (see detach_all)


#: Environment variable that overrides every task's timeout (seed 002).
TIMEOUT_ENV = "TIMEOUT"


def check_timeout_env(env: Mapping[str, str] | None = None) -> None:
    """Refuse a ``$TIMEOUT`` (seed 002's override of every task's timeout) that is set
    but not a number of seconds in (0, ``MAX_SECONDS``]: ``UsageError`` (exit 2). Called
    where the local gateway starts (``LocalGateway.start``), before anything is sent;
    unset or empty is fine (docs/agents.md, "Timeouts")."""
    from engine.errors import UsageError

    environ = os.environ if env is None else env
    raw = environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value <= MAX_SECONDS:  # also refuses nan and inf
        raise UsageError(
            f"environment variable `{TIMEOUT_ENV}` is {raw[:40]!r}, which is not a number of "
            f"seconds from more than 0 up to {MAX_SECONDS:g}: it sets the timeout of every "
            "task of the local gateway's agents. Set it to e.g. `TIMEOUT=600`, or unset it to use "
            "each agent's `timeout`. Nothing was sent."
        )


def timeout_env(env: Mapping[str, str] | None = None) -> float | None:
    """``$TIMEOUT`` in seconds when it is a number in (0, ``MAX_SECONDS``], else None
    (unset, empty or bad: ``check_timeout_env`` refuses a bad one where the gateway starts)."""
    environ = os.environ if env is None else env
    raw = environ.get(TIMEOUT_ENV, "").strip()
    try:
        value = float(raw) if raw else 0.0
    except ValueError:
        return None
    return value if 0 < value <= MAX_SECONDS else None  # also refuses nan and inf


def hard_limit(
    spec: GatewayAgentConfig, task_timeout: float | None, gateway_kill_after: float | None = None
) -> tuple[float | None, str]:
    """Seconds a command agent may run before it is killed, and where that number comes from.

    ``$TIMEOUT`` (seed 002's override "for all tasks", read by the gateway's process),
    else ``gateway.agents.<name>.kill_after``, else the agent's ``timeout``, else the
    gateway-wide ``gateway.kill_after``, else ``max(4 x t, t + 600)`` for the delegation's
    ``timeoutSeconds`` t, else no limit.
    """
    override = timeout_env()
    if override is not None:
        return override, f"${TIMEOUT_ENV}"
    if spec.kill_after is not None:
        return float(spec.kill_after), f"`gateway.agents.{spec.name}.kill_after`"
    if spec.timeout is not None:
        return float(spec.timeout), "agent timeout"
    if gateway_kill_after is not None:
        return float(gateway_kill_after), "`gateway.kill_after`"
    if task_timeout is not None:
        limit = max(HARD_LIMIT_FACTOR * task_timeout, task_timeout + HARD_LIMIT_EXTRA)
        return limit, "the default hard limit"
    return None, ""


class CommandRunner:
    """Runs ``command`` agents, one process group per task, and can kill them all."""

    def __init__(
        self,
        workspaces_dir: Path,
        *,
        kill_after: float | None = None,
        retention: int | None = None,
        config_path: Path | None = None,
    ) -> None:
        self.workspaces_dir = workspaces_dir
        #: Exported to command agents as ``$ORCHESTRATOR_CONFIG`` (absolute), so that an
        #: agent's own ``orchestrate`` (a sub-delegation) finds the gateway's config.
        self.config_path = config_path.resolve() if config_path is not None else None
        self.kill_after = kill_after
        self.retention = retention
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}
        self._detach_info: dict[str, dict[str, Any]] = {}
        self._closed = False
        #: Per agent, the runs earlier gateways recorded (``RUN_FILE``), by key hash;
        #: read once, at the first keyed task of that agent.
        self._earlier: dict[str, dict[str, dict[str, Any]]] = {}
        #: The one hard-limit guard of this runner's agents (started at the first one).
        self._guard = _GuardPipe()

    # -- lifecycle -------------------------------------------------------------------

    def kill_all(self, grace: float = KILL_GRACE) -> None:
        """Refuse new tasks, SIGTERM every running group, SIGKILL what outlives ``grace``;
        then let the workspace pruning asked for so far finish (at most 5 s). The guard's
        pipe is closed: it guards the detached agents to their limits, then exits."""
        self._kill_all(grace)
        self._guard.close()
        if self.retention is not None:
            from engine.gateway.retention import wait_pruned

            wait_pruned(5.0)

    def _kill_all(self, grace: float) -> None:
        with self._lock:
            self._closed = True
            running = [r for r in self._running.values() if not r.detached]
        for r in running:
            r.cancelled = True
            _killpg(r.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with self._lock:
                if not any(not r.detached for r in self._running.values()):
                    return
            time.sleep(0.01)
        with self._lock:
            running = [r for r in self._running.values() if not r.detached]
        for r in running:
            _killpg(r.popen.pid, signal.SIGKILL)

    def detach_all(self) -> list[int]:
        """Refuse new tasks and leave every running agent to a watchdog; return their pids.

        An embedded gateway stops when its one-shot ``orchestrate`` or ``workflow run``
        exits, often because the caller stopped waiting (timeout). Killing the agents then
        would lose answers that the engine promises to merge late. Each agent keeps
        running in its own session; a detached watchdog process
        (``engine.gateway.watchdog``) enforces its hard limit, writes the fallback handoff
        if the agent leaves none, and reconciles the records directory so the late
        answer is merged.
        """
        with self._lock:
            self._closed = True
            running = list(self._running.items())
        pids = []
        for gateway_run_id, r in running:
            if r.cancelled:  # ended on purpose (`end_runs`): kill_all() finishes the job
                continue
            info = self._detach_info.get(gateway_run_id)
            if info is None or not _spawn_watchdog(r.popen, info):
                continue  # no watchdog, no detaching: kill_all() ends it as before
            r.detached = True
            pids.append(r.popen.pid)
        return pids

    def end_runs(self, run_ids: Collection[str]) -> list[int]:
        """End the agents running the delegations ``run_ids`` (a cancelled workflow run's):
        SIGTERM to each one's process group now, SIGKILL ``KILL_GRACE`` s later if it is
        still there (its supervision does it), as ``kill_all`` does for every agent; a
        detached one is left to its watchdog. No stand-in handoff is written over the
        engine's record (``_no_fallback``). Returns the pids signalled."""
        wanted = set(run_ids)
        with self._lock:
            ending = [
                r
                for gid, r in self._running.items()
                if not r.detached and self._detach_info.get(gid, {}).get("run_id") in wanted
            ]
            for r in ending:
                r.cancelled = True
        for r in ending:
            _killpg(r.popen.pid, signal.SIGTERM)
        return [r.popen.pid for r in ending]

    def running_pids(self) -> list[int]:
        """Pids of the process-group leaders still running."""
        with self._lock:
            return [r.popen.pid for r in self._running.values()]

    # -- one task --------------------------------------------------------------------

    def earlier_run(self, agent: str, idem_key: str) -> dict[str, Any] | None:
        """The run an earlier gateway started for ``idem_key`` on ``agent`` (the contents
        of its ``RUN_FILE``: ``gateway_run_id``, ``pid``, ``pid_start``, ...), or None.

        The agent's workspaces are read once, at the first call for that agent; only
        unfinished ones (no ``stdout.log``) count: a finished run's handoff is already
        with the engine. Never raises."""
        with self._lock:
            known = self._earlier.get(agent)
        if known is None:
            known = _read_runs(self.workspaces_dir / agent)
            with self._lock:
                known = self._earlier.setdefault(agent, known)
        return known.get(key_sha256(idem_key))

    def wait_for(self, run: dict[str, Any], poll: float = 0.5) -> dict[str, str]:
        """Block until the process ``run`` names (a ``RUN_FILE``'s contents) has ended, or
        this runner is stopping; the completion to answer (``{"status": "ok"}``: its exit
        status went to the gateway that started it, the engine judges its handoff)."""
        pid = run.get("pid")
        fd = _pidfd(pid, run.get("pid_start"))
        try:
            while not self._closed and process_alive(pid, run.get("pid_start")):
                if fd is not None:
                    select.select([fd], [], [], poll)
                else:
                    time.sleep(poll)
        finally:
            if fd is not None:
                os.close(fd)
        if self._closed and process_alive(pid, run.get("pid_start")):
            return {"status": "error", "error": _STOPPING}
        return {"status": "ok"}

    def run(
        self, spec: GatewayAgentConfig, task: Task, idem_key: str | None = None
    ) -> ProcessOutcome:
        """Run ``task`` on the command agent ``spec`` to the end (blocking); with
        ``idem_key`` (the request's Idempotency-Key), its ``RUN_FILE`` is written once
        the process started."""
        started = time.monotonic()
        workspace = self.workspaces_dir / spec.name / task.gateway_run_id
        try:
            private_dir(workspace, self.workspaces_dir)
            write_private(workspace / "TASK.txt", redact_key(task.message))
        except OSError as exc:
            why = f"cannot create the workspace `{workspace}`: {exc.strerror or exc}"
            return self._finish(task, _failed_start(why, started), spec=spec)
        timeout, source = hard_limit(spec, task.timeout, self.kill_after)
        if self._closed:
            return self._finish(task, _failed_start(_STOPPING, started), spec=spec)
        env = _environment(spec, task, workspace)
        if self.config_path is not None and "ORCHESTRATOR_CONFIG" not in spec.env:
            env["ORCHESTRATOR_CONFIG"] = str(self.config_path)
        popen_or_reason = _start(spec, env, workspace)
        if isinstance(popen_or_reason, str):
            return self._finish(task, _failed_start(popen_or_reason, started), spec=spec)
        popen = popen_or_reason
        if idem_key:
            _write_run_file(workspace, idem_key, task, popen.pid)
        running = _Running(popen)
        deadline_epoch = time.time() + timeout if timeout is not None else None
        guard_start = self._guard.add(popen.pid, deadline_epoch)
        with self._lock:
            self._running[task.gateway_run_id] = running
            self._detach_info[task.gateway_run_id] = _watchdog_info(
                task, workspace, deadline_epoch, timeout, source, spec.fallback_handoff
            )
            if self._closed:  # stop() began while we were starting it
                running.cancelled = True
                _killpg(popen.pid, signal.SIGTERM)
        try:
            outcome = _supervise(running, timeout, started)
        finally:
            with self._lock:
                self._running.pop(task.gateway_run_id, None)
                self._detach_info.pop(task.gateway_run_id, None)
            self._guard.drop(popen.pid, guard_start, running.detached)
        if running.detached:  # its watchdog writes the late logs and the fallback
            _keep_early_output(workspace, outcome, task.handoff_key)
            return outcome
        for name, text in (("stdout.log", outcome.stdout), ("stderr.log", outcome.stderr)):
            if text or name == "stdout.log":  # stdout.log marks the workspace finished
                write_log(workspace / name, text, task.handoff_key)
        finished = self._finish(task, outcome, timeout=timeout, source=source, spec=spec)
        if self.retention is not None:
            from engine.gateway.retention import prune_later, prune_workspaces

            if self._closed:  # stopping: prune on this thread, which stop() joins
                prune_workspaces(workspace.parent, self.retention, self._busy())
            else:
                prune_later(workspace.parent, self.retention, self._busy)
        return finished

    def _busy(self) -> set[str]:
        """The gateway run ids of the tasks running now (their workspaces are in use)."""
        with self._lock:
            return set(self._running)

    def _finish(
        self,
        task: Task,
        outcome: ProcessOutcome,
        *,
        timeout: float | None = None,
        source: str = "agent timeout",
        spec: GatewayAgentConfig | None = None,
    ) -> ProcessOutcome:
        """Write the handoff the agent did not write, then reconcile its directory."""
        path = task.handoff_path
        if path is None or task.run_id is None or _no_fallback(path, outcome, spec):
            if path is not None:
                _reconcile(records_of(path), task.run_id)
            return outcome
        status, result, notes = _fallback_verdict(task, outcome, timeout, source)
        result = redact(result, (task.handoff_key,))  # it quotes what the agent printed
        from engine.handoff import HandoffProblem, make_handoff

        handoff = make_handoff(
            run_id=task.run_id,
            agent=task.handoff_agent or task.agent,
            status=status,
            result=result,
            confidence="medium" if status == "complete" else "low",
            notes=notes,
            key=task.handoff_key,
        )
        try:
            # Placed only where nothing is: the agent may deliver while we compose this.
            written = write_new_handoff(path, handoff)
        except (HandoffProblem, OSError) as exc:
            log.warning("local gateway: cannot write the handoff of %s: %s", task.run_id, exc)
            return outcome
        _reconcile(records_of(path), task.run_id)
        if not written:
            return outcome
        return dataclasses.replace(outcome, wrote_handoff=True)


#: The file of a keyed task's workspace naming its key (hashed) and process.
RUN_FILE = "gateway-run.json"


def key_sha256(idem_key: str) -> str:
    """The hex SHA-256 of an Idempotency-Key, as ``RUN_FILE`` keeps it."""
    return hashlib.sha256(idem_key.encode("utf-8")).hexdigest()


def process_start(pid: Any) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, field 22 of
    ``/proc/<pid>/stat``, as text), or None when it is not running (gone or a zombie)
    or that file cannot be read."""
    if not isinstance(pid, int) or pid <= 0:
        return None
    from engine.gateway.guard import start_of  # the guard runs alone: the reading lives there

    return start_of(pid)


def process_alive(pid: Any, start: Any) -> bool:
    """True while process ``pid`` runs and is the one that started at ``start`` (a
    ``process_start`` value): a reused pid is not taken for it. Without ``/proc``,
    whether some process has that pid."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    if os.path.isdir("/proc/self"):
        return start is not None and process_start(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _pidfd(pid: Any, start: Any) -> int | None:
    """A pidfd of process ``pid`` if it is still the one started at ``start`` (it becomes
    readable when the process ends), else None."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None or not isinstance(pid, int) or pid <= 0:
        return None
    try:
        fd = int(opener(pid))
    except OSError:
        return None
    if process_alive(pid, start):  # checked after opening: the fd is that process's
        return fd
    os.close(fd)
    return None


def _write_run_file(workspace: Path, idem_key: str, task: Task, pid: int) -> None:
    """Write ``RUN_FILE`` atomically; a failure is logged (the run goes on)."""
    data = {
        "key_sha256": key_sha256(idem_key),
        "run_id": task.run_id,
        "gateway_run_id": task.gateway_run_id,
        "pid": pid,
        "pid_start": process_start(pid),
    }
    tmp = workspace / f".{RUN_FILE}.tmp"
    try:
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, workspace / RUN_FILE)
    except OSError as exc:
        log.warning("local gateway: cannot write %s: %s", workspace / RUN_FILE, exc)


def _read_runs(agent_dir: Path) -> dict[str, dict[str, Any]]:
    """The ``RUN_FILE`` contents of ``agent_dir``'s unfinished workspaces, by key hash."""
    from engine.gateway.retention import FINISHED_MARKER

    runs: dict[str, dict[str, Any]] = {}
    try:
        entries = list(os.scandir(agent_dir))
    except OSError:
        return runs
    for entry in entries:
        if not entry.name.startswith("gw-") or not entry.is_dir(follow_symlinks=False):
            continue
        path = Path(entry.path)
        if (path / FINISHED_MARKER).exists():
            continue
        try:
            data = json.loads((path / RUN_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (
            isinstance(data, dict)
            and isinstance(data.get("key_sha256"), str)
            and data.get("gateway_run_id") == entry.name
        ):
            runs[data["key_sha256"]] = data
    return runs


def end_recorded_runs(
    workspaces_dir: Path,
    run_ids: Collection[str],
    prefixes: Collection[str] = (),
    grace: float = KILL_GRACE,
) -> list[int]:
    """End the command agents that earlier gateways started for the delegations
    ``run_ids`` (or whose run id starts with one of ``prefixes``), found by the
    ``RUN_FILE`` of each unfinished workspace under ``workspaces_dir/<agent>/``: for a
    cancelled workflow run whose process (and its embedded gateway) is gone, so that no
    ``CommandRunner`` holds them.

    Each agent whose pid still runs with the recorded start time (``process_start``: a
    reused pid is never signalled) gets SIGTERM to its process group (it runs in a session
    of its own), and SIGKILL after ``grace`` seconds if it is still that process. Returns
    the pids signalled; never raises (an unreadable workspace is skipped)."""
    wanted, starts = set(run_ids), tuple(prefixes)
    found = [
        agent
        for path in _unfinished_workspaces(workspaces_dir)
        if (agent := _recorded_agent(path, wanted, starts)) is not None
    ]
    signalled = [(pid, start) for pid, start in found if _signal_if(pid, start, signal.SIGTERM)]
    deadline = time.monotonic() + grace
    while any(process_alive(p, s) for p, s in signalled) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid, start in signalled:
        _signal_if(pid, start, signal.SIGKILL)
    return [pid for pid, _ in signalled]


def _unfinished_workspaces(workspaces_dir: Path) -> list[Path]:
    """The ``gw-*`` workspaces under ``workspaces_dir/<agent>/`` with no
    ``FINISHED_MARKER`` (engine.gateway.retention); an unreadable directory is skipped."""
    from engine.gateway.retention import FINISHED_MARKER

    try:
        agents = [Path(e.path) for e in os.scandir(workspaces_dir) if e.is_dir()]
    except OSError:
        return []
    found: list[Path] = []
    for agent_dir in agents:
        try:
            entries = [Path(e.path) for e in os.scandir(agent_dir) if e.name.startswith("gw-")]
        except OSError:
            continue
        found.extend(p for p in entries if not (p / FINISHED_MARKER).exists())
    return found


def _recorded_agent(
    path: Path, wanted: Collection[str], starts: tuple[str, ...]
) -> tuple[int, str] | None:
    """The ``(pid, pid_start)`` that workspace ``path``'s ``RUN_FILE`` records, when its
    delegation run id is in ``wanted`` or starts with one of ``starts``; None when it is
    not, or the file is unreadable or lacks them."""
    try:
        data = json.loads((path / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    rid = data.get("run_id") if isinstance(data, dict) else None
    if not isinstance(rid, str):
        return None
    if rid not in wanted and not (starts and rid.startswith(starts)):
        return None
    pid, start = data.get("pid"), data.get("pid_start")
    if isinstance(pid, int) and pid > 1 and isinstance(start, str):
        return pid, start
    return None


def _signal_if(pid: int, start: str, sig: int) -> bool:
    """Signal process group ``pid`` if process ``pid`` is still the one started at
    ``start`` (``/proc/<pid>/stat``; without ``/proc`` nothing is signalled)."""
    if process_start(pid) != start:
        return False
    _killpg(pid, sig)
    return True


def _keep_early_output(workspace: Path, outcome: ProcessOutcome, key: str | None) -> None:
    """What an agent left to a watchdog printed before its gateway stopped:
    ``stdout.early.log`` and ``stderr.early.log`` (redacted; only when it printed). The
    watchdog keeps the rest as ``*.late.log`` and puts the early stdout in its stand-in.
    Not ``stdout.log``: that name marks a finished workspace for pruning."""
    for name, text in (("stdout.early.log", outcome.stdout), ("stderr.early.log", outcome.stderr)):
        if text:
            write_log(workspace / name, text, key)


def private_dir(path: Path, root: Path) -> None:
    """Create ``path`` (below ``root``) and the directories between, each readable by its
    owner only (0700: a workspace holds the task, secret inputs included, and what the
    agent printed); ``root`` itself is created 0700 when missing and left as it is when
    there. Raises OSError."""
    if not root.is_dir():
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    level = root
    for part in path.relative_to(root).parts:
        level = level / part
        try:
            level.mkdir(mode=0o700)
        except FileExistsError:
            if not level.is_dir():
                raise
        os.chmod(level, 0o700)  # one made before keeps no wider mode


def write_private(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path``, readable by its owner only (0600: the task,
    secret inputs included). Raises OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a file that was there already keeps no wider mode
        data = memoryview(text.encode("utf-8"))
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)


def write_log(path: Path, text: str, key: str | None) -> None:
    """Write what an agent printed to ``path``: redacted (every known secret, and the
    run's handoff ``key``, which the agent has in ``$ORCH_HANDOFF_KEY``), readable by its
    owner only (0600: a workspace log may quote anything the agent saw). Never raises."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError:
        return
    try:
        os.fchmod(fd, 0o600)  # a file that was there already keeps no wider mode
        data = memoryview(redact(text, (key,)).encode("utf-8", "replace"))
        while data:
            data = data[os.write(fd, data) :]
    except OSError:
        pass
    finally:
        os.close(fd)


def _no_fallback(path: Path, outcome: ProcessOutcome, spec: GatewayAgentConfig | None) -> bool:
    """True when the gateway writes no stand-in handoff at ``path``: the agent's config
    says `fallback_handoff: false` (the engine sees the run end and repairs instead), a
    handoff is already delivered, or stop() killed it after the engine gave up (its record
    is there: nothing new)."""
    return (
        (spec is not None and not spec.fallback_handoff)
        or _delivered(path)
        or (outcome.cancelled and (records_of(path) / path.name).exists())
    )


def _fallback_verdict(
    task: Task, outcome: ProcessOutcome, timeout: float | None, source: str
) -> tuple[str, str, str]:
    """``(status, result, notes)`` of the stand-in handoff for a run that ended as
    ``outcome``: cancelled, killed at a limit (``source`` names it), not started, exited 0
    (its stdout is the result; without one, the tail of its stderr) or non-zero (the tail
    of its stderr)."""
    if outcome.cancelled:
        return "failed", "killed: the local gateway stopped", GATEWAY_NOTE
    if outcome.timed_out and source in ("agent timeout", "$TIMEOUT"):
        return "failed", f"killed after {_fmt_seconds(timeout)} s ({source})", GATEWAY_NOTE
    if outcome.timed_out:
        past = (
            f", past the delegation's timeout of {_fmt_seconds(task.timeout)} s"
            if task.timeout is not None
            else ""
        )
        result = (
            f"killed after {_fmt_seconds(timeout)} s: still running at the local "
            f"gateway's hard limit ({source}){past}"
        )
        return "failed", result, GATEWAY_NOTE + "; killed at the gateway's hard limit"
    if outcome.returncode is None:
        return (
            "failed",
            f"the agent could not be started: {outcome.stderr}",
            f"{GATEWAY_NOTE_PREFIX}: the agent could not be started",
        )
    tail = outcome.stderr.strip()[-STDERR_TAIL:]
    if outcome.returncode == 0:
        if out := outcome.stdout.strip():
            return "complete", out, GATEWAY_NOTE
        # e.g. its own `orchestrate handoff write` was refused: show why, not just "nothing"
        said = f" on stdout; stderr (tail):\n{tail}" if tail else ""
        return "complete", f"(the agent exited 0 and printed nothing{said})", GATEWAY_NOTE
    result = f"the agent exited with code {outcome.returncode}" + (
        f"; stderr (tail):\n{tail}" if tail else " and printed nothing on stderr"
    )
    return "failed", result, GATEWAY_NOTE


def _start(
    spec: GatewayAgentConfig, env: dict[str, str], workspace: Path
) -> subprocess.Popen[bytes] | str:
    """Start the agent's process, or say why it cannot be (at once, no waiting)."""
    where = f"`gateway.agents.{spec.name}`"
    if not spec.argv or not spec.argv[0]:
        return f"{where} has no `argv`: give the command to run"
    cwd = spec.cwd or workspace
    if not cwd.is_dir():
        return f"the working directory `{cwd}` ({where}.cwd) does not exist or is not a directory"
    try:
        return subprocess.Popen(
            list(spec.argv),
            cwd=str(cwd),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except FileNotFoundError:
        return (
            f"cannot start `{spec.argv[0]}` ({where}.argv[0]): no such program; give "
            "its full path or put it on PATH"
        )
    except PermissionError:
        return (
            f"cannot start `{spec.argv[0]}` ({where}.argv[0]): permission denied; is it "
            "executable (`chmod +x`)?"
        )
    except (OSError, ValueError, TypeError) as exc:  # E2BIG, ENOEXEC, a NUL byte...
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return f"cannot start `{spec.argv[0]}` ({where}.argv): {text}"


def completion_of(outcome: ProcessOutcome, key: str | None = None) -> dict[str, str]:
    """The ``completion`` object of a hooks answer held with ``waitForCompletion``; the
    run's handoff ``key`` is masked in the stderr it quotes (the engine records it)."""
    if outcome.returncode == 0 and not outcome.timed_out and not outcome.cancelled:
        return {"status": "ok"}
    if outcome.cancelled:
        reason = "killed: the local gateway stopped"
    elif outcome.timed_out:
        reason = "killed at the agent's timeout"
    elif outcome.returncode is None:
        reason = outcome.stderr.strip()[:STDERR_TAIL] or "the agent could not start"
    else:
        tail = outcome.stderr.strip()[-500:]
        reason = f"the agent exited with code {outcome.returncode}" + (
            f"; stderr (tail): {tail}" if tail else ""
        )
    return {"status": "error", "error": redact(reason, (key,))}


def _environment(spec: GatewayAgentConfig, task: Task, workspace: Path) -> dict[str, str]:
    text = task.text.replace("\0", "\ufffd")  # NUL cannot be in the environment
    if len(text.encode("utf-8", "replace")) > ENV_TASK_LIMIT:
        cut = text.encode("utf-8", "replace")[:ENV_TASK_LIMIT].decode("utf-8", "ignore")
        text = cut + "\n[truncated: the full message is in $ORCH_WORKSPACE/TASK.txt]"
    env = {k: v for k, v in os.environ.items() if k not in _SESSION_VARS}
    env.update(spec.env)
    env.update(
        {
            "ORCH_RUN_ID": task.run_id or task.gateway_run_id,
            "ORCH_HANDOFF_PATH": str(task.handoff_path) if task.handoff_path else "",
            "ORCH_TASK": text,
            "ORCH_AGENT": task.handoff_agent or task.agent,
            "ORCH_WORKSPACE": str(workspace),
            "ORCH_GATEWAY_RUN_ID": task.gateway_run_id,
            "ORCH_HANDOFF_KEY": task.handoff_key or "",
            **_session_env(task, workspace),
        }
    )
    bindir = os.path.dirname(sys.executable)
    path = env.get("PATH", "")
    env["PATH"] = bindir + (os.pathsep + path if path else "")
    return env


#: Set only for a run in a session (never inherited from the gateway's own environment).
_SESSION_VARS = ("ORCH_SESSION_KEY", "ORCH_SESSION_DIR")


def _session_env(task: Task, workspace: Path) -> dict[str, str]:
    """``ORCH_SESSION_KEY`` and ``ORCH_SESSION_DIR``: a directory shared by every run of
    the request's ``sessionKey`` on this agent, where a session-aware agent keeps its
    work between messages (a repair, an answered question). None without a session."""
    if not task.session_key:
        return {}
    import hashlib

    digest = hashlib.sha256(task.session_key.encode()).hexdigest()[:24]
    # Beside the agent's workspaces, out of reach of their pruning.
    where = workspace.parent.parent / ".sessions" / workspace.parent.name / digest
    try:
        private_dir(where, workspace.parent.parent)
    except OSError:
        return {"ORCH_SESSION_KEY": task.session_key, "ORCH_SESSION_DIR": ""}
    return {"ORCH_SESSION_KEY": task.session_key, "ORCH_SESSION_DIR": str(where)}


class _Supervision:
    """One supervised process: its output buffers, its exit, and the signals sent to its
    group (SIGTERM at the deadline, a cancel or its exit; SIGKILL ``KILL_GRACE`` s later)."""

    def __init__(self, running: _Running, timeout: float | None, started: float) -> None:
        proc = running.popen
        assert proc.stdout is not None and proc.stderr is not None
        self.running = running
        self.proc = proc
        self.pid = proc.pid
        self.bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
        self.sel = selectors.DefaultSelector()
        for fd in self.bufs:
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ)
        self.pidfd: int | None = None
        try:
            # A pidfd becomes readable when the process exits (Linux >= 5.3): no polling.
            self.pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            pass
        else:
            self.sel.register(self.pidfd, selectors.EVENT_READ)
        self.deadline = started + timeout if timeout is not None else None
        self.exited = self.timed_out = self.killed = False
        self.term_at: float | None = None
        self.open_pipes = len(self.bufs)

    def signal(self, now: float) -> None:
        """Mark a timeout, then end the group: SIGTERM first, SIGKILL after the grace."""
        cancelled = self.running.cancelled
        if not self.exited and not cancelled and self.deadline is not None:
            self.timed_out = self.timed_out or now >= self.deadline
        if self.term_at is None and (self.timed_out or cancelled or self.exited):
            # After a normal exit this ends stragglers left in the agent's session.
            _killpg(self.pid, signal.SIGTERM)
            self.term_at = now
        if self.term_at is not None and not self.killed and now >= self.term_at + KILL_GRACE:
            _killpg(self.pid, signal.SIGKILL)
            self.killed = True

    def done(self) -> bool:
        """Exited with its pipes closed (or killed), or handed to its watchdog."""
        if self.exited and (self.open_pipes == 0 or self.killed):
            return True
        # Detached: the watchdog owns it now; output goes on to its log files.
        return self.running.detached and not self.exited

    def wait_seconds(self, now: float) -> float:
        """How long the next wait may last: up to the next deadline, at most 1 s."""
        waits: list[float] = []
        if self.deadline is not None and self.term_at is None:
            waits.append(self.deadline - now)
        if self.term_at is not None and not self.killed:
            waits.append(self.term_at + KILL_GRACE - now)
        if self.pidfd is None and not self.exited:
            waits.append(0.05)
        if self.running.cancelled and self.term_at is None:
            waits.append(0.0)
        # Wake at least once a second so a cancel from stop() is seen promptly.
        return min(max(0.0, min(waits)), 1.0) if waits else 1.0

    def poll(self, now: float) -> None:
        """Read what the pipes hold and notice the exit, waiting ``wait_seconds``."""
        ended, closed = drain_ready(self.sel, self.wait_seconds(now), self.pidfd, self.bufs)
        self.exited = self.exited or ended
        self.open_pipes -= closed
        if self.pidfd is None and not self.exited:
            self.exited = _exited_unreaped(self.pid)

    def close(self) -> None:
        """Kill and reap a process the loop left running (not a detached one); close fds."""
        proc = self.proc
        if proc.returncode is None and not self.running.detached:  # the loop broke: end it
            _killpg(self.pid, signal.SIGKILL)
            proc.wait()
        self.sel.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


def _supervise(running: _Running, timeout: float | None, started: float) -> ProcessOutcome:
    """Collect output tails, enforce the timeout, and clean up the group after exit."""
    sup = _Supervision(running, timeout, started)
    try:
        while True:
            now = time.monotonic()
            sup.signal(now)
            if sup.done():
                break
            sup.poll(now)
        # Reap only now: until then the zombie leader keeps the group id from being reused.
        returncode = None if running.detached and not sup.exited else sup.proc.wait()
    finally:
        sup.close()
    out, err = (bytes(b[-OUTPUT_LIMIT:]).decode("utf-8", "replace") for b in sup.bufs.values())
    return ProcessOutcome(
        returncode=returncode,
        timed_out=sup.timed_out,
        cancelled=running.cancelled and not sup.timed_out,
        stdout=out,
        stderr=err,
        seconds=time.monotonic() - started,
    )


def _watchdog_info(
    task: Task,
    workspace: Path,
    deadline_epoch: float | None,
    timeout: float | None,
    source: str,
    fallback: bool = True,
) -> dict[str, Any]:
    """What a watchdog needs to finish a detached task (sent on its stdin, never argv)."""
    return {
        "run_id": task.run_id,
        "agent": task.handoff_agent or task.agent,
        "handoff_path": str(task.handoff_path) if task.handoff_path else None,
        "key": task.handoff_key,
        "workspace": str(workspace),
        "deadline_epoch": deadline_epoch,
        "limit_s": timeout,
        "limit_source": source,
        "fallback": fallback,  # `fallback_handoff: false`: never write a stand-in
    }


#: Detached agents and their watchdogs: kept referenced so that they are neither reaped
#: too early nor reported as leaked; finished ones are reaped on the next detach.
_DETACHED: list[subprocess.Popen[bytes]] = []
_DETACHED_LOCK = threading.Lock()


def _keep(*procs: subprocess.Popen[bytes]) -> None:
    with _DETACHED_LOCK:
        _DETACHED[:] = [p for p in _DETACHED if p.poll() is None]
        _DETACHED.extend(procs)


def _spawn_watchdog(popen: subprocess.Popen[bytes], info: dict[str, Any]) -> bool:
    """Start a detached watchdog for the agent ``popen``, handing it the output pipes."""
    from engine.redact import known_secrets

    fds = [f.fileno() for f in (popen.stdout, popen.stderr) if f is not None and not f.closed]
    # Every secret this process masks (the config's tokens and keys, a run's secret
    # inputs) goes on the stdin pipe too, never on the argv (`ps` shows it) nor in a file:
    # the watchdog masks them in everything it writes and reconciles.
    payload = dict(info, pid=popen.pid, fds=fds, secrets=list(known_secrets()))
    try:
        watchdog = subprocess.Popen(
            [sys.executable, "-m", "engine.gateway.watchdog"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            pass_fds=tuple(fds),
        )
        assert watchdog.stdin is not None
        watchdog.stdin.write(json.dumps(payload).encode())
        watchdog.stdin.close()
        _keep(popen, watchdog)
    except (OSError, ValueError) as exc:
        log.warning("local gateway: cannot start a watchdog for pid %s: %s", popen.pid, exc)
        return False
    return True


#: Seconds past an agent's hard limit (and the SIGKILL grace after it) at which its guard
#: ends it, if neither its gateway nor its watchdog has (they say what happened; the guard
#: only acts when they are gone).
GUARD_MARGIN = 3.0
_GUARD = str(Path(__file__).with_name("guard.py"))


class _GuardPipe:
    """This runner's hard-limit guard (``engine.gateway.guard``): one process, in a session
    of its own, started at the first agent with a hard limit, told each agent on its stdin,
    so that the agents end even if this process dies at once (``kill -9``).

    A write never blocks nor raises: the pipe is non-blocking; a guard that died is started
    again at the next event and told every agent not dropped yet (logged once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._fd: int | None = None
        self._lines: dict[int, bytes] = {}  # pid -> its `add` line, until dropped
        self._closed = False
        self._warned = False

    def add(self, pid: int, deadline_epoch: float | None) -> str | None:
        """Guard agent ``pid`` until ``deadline_epoch`` plus the grace and the margin;
        its start time (what ``drop`` needs), None without a hard limit or when it is gone."""
        start = process_start(pid) if deadline_epoch is not None else None
        if deadline_epoch is None or start is None:
            return None
        at = deadline_epoch + KILL_GRACE + GUARD_MARGIN
        line = f"add {pid} {start} {at!r} {KILL_GRACE!r}\n".encode("ascii")
        with self._lock:
            if self._closed:
                return None
            self._lines[pid] = line
            if self._fd is None or not self._write(line):
                self._restart()
        return start

    def drop(self, pid: int, start: str | None, detached: bool) -> None:
        """Forget agent ``pid``, which this process saw end; a detached one stays guarded
        (the watchdog's backstop: the guard forgets it when it exits)."""
        if start is None or detached:
            return
        with self._lock:
            self._lines.pop(pid, None)
            if self._fd is not None and not self._closed:
                self._write(f"drop {pid} {start}\n".encode("ascii"))

    def close(self) -> None:
        """Close the pipe: the guard ends the agents it still has past their limits, then
        exits; it is kept referenced (``_keep``) and reaped later."""
        with self._lock:
            self._closed = True
            fd, proc, self._fd, self._proc = self._fd, self._proc, None, None
        if fd is not None:
            os.close(fd)
        if proc is not None:
            _keep(proc)

    def __del__(self) -> None:  # a runner dropped without kill_all: let the guard finish
        self.close()

    def _write(self, line: bytes) -> bool:
        """Write one line (shorter than PIPE_BUF: all or nothing); False when the guard is
        gone. A full pipe (the guard stalled) loses the line, logged once."""
        assert self._fd is not None
        try:
            os.write(self._fd, line)
        except BlockingIOError:
            self._warn("its pipe is full; an event was lost")
        except OSError:  # EPIPE: the guard died
            return False
        return True

    def _restart(self) -> None:
        """Start a guard (again) and tell it every agent not dropped; a failure is logged once."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._warn("it was gone and was started again")
        if self._proc is not None:
            _keep(self._proc)
            self._proc = None
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", _GUARD],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            self._warn(f"it cannot start: {exc}")
            return
        assert self._proc.stdin is not None
        self._fd = os.dup(self._proc.stdin.fileno())  # non-inheritable, like the original
        self._proc.stdin.close()
        os.set_blocking(self._fd, False)
        for line in list(self._lines.values()):
            if not self._write(line):
                break

    def _warn(self, what: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("local gateway: the guard of the command agents' hard limits: %s", what)


def drain_ready(
    sel: selectors.BaseSelector, timeout: float, pidfd: int | None, bufs: dict[int, bytearray]
) -> tuple[bool, int]:
    """Wait up to ``timeout`` s, keep the tail of ready output pipes in ``bufs``.

    Returns (the process exited: its ``pidfd`` became readable, pipes that reached EOF).
    Shared by the gateway's supervision and the detached watchdog.
    """
    exited, closed = False, 0
    for key, _ in sel.select(timeout):
        fd = int(key.fd)
        if fd == pidfd:
            sel.unregister(fd)
            exited = True
            continue
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            continue
        except OSError:  # the pipe broke: as good as EOF
            chunk = b""
        if not chunk:
            sel.unregister(fd)
            closed += 1
            continue
        buf = bufs[fd]
        buf += chunk
        if len(buf) > 2 * OUTPUT_LIMIT:
            del buf[:-OUTPUT_LIMIT]
    return exited, closed


def _exited_unreaped(pid: int) -> bool:
    """True once ``pid`` has exited, without reaping it (polling fallback without pidfd)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _failed_start(reason: str, started: float) -> ProcessOutcome:
    return ProcessOutcome(
        returncode=None,
        timed_out=False,
        cancelled=False,
        stdout="",
        stderr=reason,
        seconds=time.monotonic() - started,
    )


def _fmt_seconds(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _reconcile(records_dir: Path, run_id: str | None = None) -> None:
    """Merge a late handoff into its pending envelope: ``run_id``'s only (after one of
    the gateway's runs), else every pending run of ``records_dir`` (the watchdog)."""
    from engine.record import reconcile, reconcile_run

    try:
        if run_id is not None:
            reconcile_run(records_dir, run_id)
        else:
            reconcile(records_dir)
    except OSError as exc:
        log.warning("local gateway: cannot reconcile %s: %s", records_dir, exc)


def _delivered(path: Path) -> bool:
    """True when the agent delivered something: a file at ``path``, a file at the record
    path that the engine did not write (seed 004's layout), a record that holds the
    agent's own handoff (the engine recorded it), or its file taken into a database store
    (marked in ``inbox/.imported/``). Never overwrite or compete with it."""
    from engine.record import IMPORTED_DIR, is_engine_record, read_json

    if path.exists() or (path.parent / IMPORTED_DIR / path.name).exists():
        return True

    at_record = records_of(path) / path.name
    record = read_json(at_record)
    if not is_engine_record(record):
        # The agent's own file at the record path (seed 004's layout), whatever it holds:
        # the engine takes it (or refuses it) by the merge rule; no stand-in competes.
        return os.path.lexists(at_record)
    # A record the engine wrote without a handoff (timeout, errored...) has no status.
    return "status" in record and "result" in record


def write_new_handoff(path: Path, handoff: dict[str, Any]) -> bool:
    """Validate ``handoff`` and place it at ``path`` only if nothing is there; True if placed.

    Atomic and never replacing (``engine.files.write_json_new``): the finished file is
    linked into place (``linkat`` fails on an existing name), from an unnamed ``O_TMPFILE``
    file where the file system has them, else from a temp file; watchers see a create.
    """
    from engine.files import write_json_new
    from engine.handoff import validate_handoff

    validate_handoff(handoff, path=path)
    if _delivered(path):
        return False
    return write_json_new(path, handoff)


def records_of(handoff: Path) -> Path:
    """The records directory of a handoff delivered in ``<records>/inbox/``."""
    from engine.record import INBOX_DIR

    parent = handoff.parent
    return parent.parent if parent.name == INBOX_DIR else parent
