"""Running a planned workflow: parallel steps, conditions, gates, retries, records, resume.

A run lives in ``<handoffs_dir>/workflows/<run-id>/``::

    run.json        workflow, inputs, plan, fingerprint (template + inputs + agents)
    events.jsonl    append-only journal; the run's state is a replay of it
    <step-id>.json  one per finished step: the handoff, attempts, timings, skip reason
    summary.json    status, duration, per-step status, outputs (at the end, on pause)

Every step is one delegation through ``Delegator`` with a deterministic run id
``<run-id>-<step-id>-<attempt>``: after a crash, ``resume`` re-attaches to a step in
flight instead of sending it again, and takes a handoff that arrived meanwhile.
"""

from __future__ import annotations

import enum
import hashlib
import heapq
import json
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.delegate import DelegationRequest, Delegator, Outcome
from engine.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_WAITING,
    OrchestratorError,
    RunStateError,
    UsageError,
    did_you_mean,
)
from engine.files import check_id, new_run_id, parse_iso, utcnow_iso
from engine.reporter import Reporter
from engine.states import RETRYABLE_STEP_STATES
from engine.states import RunState as RunState
from engine.states import StepState as StepState
from engine.store import FileRunStore, RunStore, open_store
from engine.store import Journal as RunJournal
from engine.store.file import CANCEL_FILE as CANCEL_FILE  # names runner always had
from engine.store.file import RUNS_DIR, FileJournal
from engine.store.file import read_events as read_events


@dataclass
class StepRun:
    """The mutable state of one step inside a run."""

    id: str
    state: StepState = StepState.PENDING
    agent: str | None = None
    attempt: int = 0
    delegation_run_id: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    started_at: str | None = None
    finished_at: str | None = None
    dispatched_at: str | None = None
    skip_reason: str | None = None
    skip_kind: str | None = None  # condition | upstream | stopped
    handoff: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None  # {"decision": approved|rejected, "by", "reason", "at"}
    error: str | None = None
    in_flight: bool = False  # started in an earlier process and not finished
    #: The agent's question (engine.ask): text, asked_at, and once given answer, by, answered_at.
    question: dict[str, Any] | None = None

    @property
    def duration_ms(self) -> float | None:
        """From start to finish, when both are known."""
        if self.started_at and self.finished_at:
            delta = parse_iso(self.finished_at) - parse_iso(self.started_at)
            return round(delta.total_seconds() * 1000, 3)
        return None

    def context(self) -> dict[str, Any]:
        """What templates see as ``steps.<id>``."""
        h = self.handoff or {}
        return {
            "result": h.get("result", ""),
            "status": self.state.value,
            "confidence": h.get("confidence", ""),
            "artifacts": list(h.get("artifacts", [])),
            "notes": h.get("notes", ""),
        }


@dataclass(frozen=True)
class GateRequest:
    """What an approver is shown at a gate."""

    run_id: str
    step: str
    agent: str | None
    prompt: str
    upstream: dict[str, dict[str, Any]]


#: Decides a gate: ``"approved"``, ``("rejected", reason)``, or None to park the run.
Approver = Callable[[GateRequest], "str | tuple[str, str] | None"]


@dataclass(frozen=True)
class RunOptions:
    """How to run or resume.

    Example: ``RunOptions(caller="manager", max_parallel=4, approve=frozenset({"review"}))``
    """

    caller: str | None = None
    max_parallel: int = 4
    approve: frozenset[str] = frozenset()
    approve_all: bool = False
    retry_failed: bool = False
    force: bool = False


@dataclass(frozen=True)
class RunResult:
    """How a run (or this stretch of it) ended."""

    run_id: str
    state: RunState
    run_dir: Path
    summary: dict[str, Any]

    @property
    def exit_code(self) -> int:
        """0 complete · 1 failed or cancelled · 3 waiting for approval · 4 only timeouts."""
        if self.state is RunState.COMPLETE:
            return EXIT_OK
        if self.state in (RunState.WAITING_APPROVAL, RunState.WAITING_INPUT):
            return EXIT_WAITING
        states = {s["status"] for s in self.summary.get("steps", {}).values()}
        if (
            self.state is RunState.FAILED
            and "timeout" in states
            and not states & {"failed", "blocked", "errored", "invalid", "rejected"}
        ):
            return EXIT_TIMEOUT
        return EXIT_FAILED


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Prepared:
    """A workflow loaded, planned and ready to run or to print as a dry run."""

    spec: Any
    plan: Any
    renderer: Any


def prepare(
    cfg: Config,
    name_or_path: str,
    inputs: dict[str, str],
    *,
    caller: str | None = None,
) -> Prepared:
    """Find, load and plan a workflow: every check of the planner, nothing dispatched."""
    from engine.acl import Acl
    from engine.dag import plan_workflow
    from engine.registry import Registry
    from engine.renderer import TaskRenderer
    from engine.workflow import find_workflow, load_workflow

    spec = load_workflow(find_workflow(name_or_path, cfg))
    registry = Registry.from_config(cfg)
    renderer = TaskRenderer(spec)
    plan = plan_workflow(
        spec,
        registry=registry,
        acl=Acl(cfg.acl, registry.names),
        inputs=inputs,
        caller=caller,
        validator=cfg.validator,
        renderer=renderer,
    )
    return Prepared(spec, plan, renderer)


def fingerprint_parts(cfg: Config, prepared: Prepared) -> dict[str, str]:
    """Hashes of what a resumed run must not have changed: template, inputs, agents."""
    plan = prepared.plan
    used = sorted(
        {a for s in plan.steps.values() for a in (*s.candidates, s.agent, s.validator) if a}
    )
    agents = {
        name: {
            "url": cfg.agents[name].url,
            "agent_id": cfg.agents[name].agent_id,
            "timeout": cfg.agents[name].timeout,
            "capabilities": list(cfg.agents[name].capabilities),
        }
        for name in used
        if name in cfg.agents
    }

    def h(obj: Any) -> str:
        text = obj if isinstance(obj, str) else json.dumps(obj, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    return {
        "template": h(prepared.spec.source_text),
        "inputs": h(plan.inputs),
        "agents": h({"agents": agents, "caller": plan.caller}),
    }


# ----------------------------------------------------------------------------- journal


#: The journal file of a run directory, by the name runner always had; the engine itself
#: gets journals from its store (``RunStore.journal``).
Journal = FileJournal


# ----------------------------------------------------------------------------- run state


def runs_dir(cfg: Config) -> Path:
    """Where workflow runs live (on the file store)."""
    return cfg.handoffs_dir / RUNS_DIR


def run_dir(cfg: Config, run_id: str, *, store: RunStore | None = None) -> Path:
    """Where run ``run_id`` is (checked to exist in the store)."""
    store = store if store is not None else open_store(cfg)
    check_id(run_id, "workflow run id")
    if not store.run_exists(run_id):
        where = store.run_locator(run_id).parent
        raise RunStateError(
            f"no workflow run `{run_id}` in `{where}`"
            f"{did_you_mean(run_id, store.list_runs()) or '.'} List runs with `workflow runs`."
        )
    return store.run_locator(run_id)


@dataclass
class RunView:
    """A run as its files say it is (run.json + the replayed journal)."""

    run_id: str
    path: Path
    meta: dict[str, Any]
    steps: dict[str, StepRun]
    state: RunState
    events: list[dict[str, Any]]
    started_at: str | None
    finished_at: str | None
    #: Milliseconds steps spent parked at their approval gates.
    gate_wait_ms: float = 0.0
    #: Journal events replay skipped (unknown or malformed), one sentence each.
    warnings: list[str] = field(default_factory=list)


class _Malformed(Exception):
    """An event replay cannot use: a key is missing or holds an unusable value."""


@dataclass
class _Fold:
    """What replay accumulates while it folds the journal."""

    store: RunStore
    run_id: str
    steps: dict[str, StepRun]
    state: RunState = RunState.RUNNING
    started: str | None = None
    finished: str | None = None
    gate_since: dict[str, str] = field(default_factory=dict)
    gate_wait_ms: float = 0.0


def _need(ev: dict[str, Any], key: str, kind: type) -> Any:
    value = ev.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        article = "an" if kind is int else "a"
        raise _Malformed(f"`{key}` is missing or not {article} {kind.__name__}")
    return value


def _opt_str(ev: dict[str, Any], key: str) -> str | None:
    value = ev.get(key)
    return value if isinstance(value, str) else None


def _at(ev: dict[str, Any]) -> str | None:
    """The event's timestamp (None when absent); a value that is no timestamp is refused."""
    at = ev.get("at")
    if at is None:
        return None
    if not isinstance(at, str):
        raise _Malformed("`at` is not a timestamp")
    try:
        parse_iso(at)
    except ValueError:
        raise _Malformed(f"`at` is not a timestamp: {at!r}") from None
    return at


def _enum(kind: type[enum.Enum], ev: dict[str, Any], key: str) -> Any:
    value = ev.get(key)
    try:
        return kind(value)
    except ValueError:
        raise _Malformed(f"`{key}` {value!r} is not a known {kind.__name__}") from None


# -- run events: (fold, event) -> None


def _on_run_started(f: _Fold, ev: dict[str, Any]) -> None:
    at = _at(ev)
    if f.started is None:
        f.started = at


def _on_run_finished(f: _Fold, ev: dict[str, Any]) -> None:
    state, at = _enum(RunState, ev, "status"), _at(ev)
    f.state, f.finished = state, at


def _on_run_paused(f: _Fold, ev: dict[str, Any]) -> None:
    _at(ev)
    waiting = ev.get("status") == RunState.WAITING_INPUT.value  # a question, else a gate
    state = RunState.WAITING_INPUT if waiting else RunState.WAITING_APPROVAL
    f.state, f.finished = state, None


def _on_run_resumed(f: _Fold, ev: dict[str, Any]) -> None:
    f.state, f.finished = RunState.RUNNING, None


def _on_run_cancelled(f: _Fold, ev: dict[str, Any]) -> None:
    at = _at(ev)
    f.state, f.finished = RunState.CANCELLED, at


# -- step events: (fold, event, step) -> None; validate first, then change the step


def _on_step_started(f: _Fold, ev: dict[str, Any], s: StepRun) -> None:
    attempt, drid, at = _need(ev, "attempt", int), _need(ev, "delegation_run_id", str), _at(ev)
    s.state = StepState.RUNNING
    s.attempt = attempt
    s.agent = _opt_str(ev, "agent") or s.agent
    s.delegation_run_id = drid
    s.started_at = s.started_at or at
    s.dispatched_at = None
    s.in_flight = True


def _on_step_queued(f: _Fold, ev: dict[str, Any], s: StepRun) -> None:
    s.state = StepState.QUEUED


def _on_step_dispatched(f: _Fold, ev: dict[str, Any], s: StepRun) -> None:
    at = _at(ev)
    s.state = StepState.RUNNING
    s.dispatched_at = at or utcnow_iso()


def _on_step_attempt(f: _Fold, ev: dict[str, Any], s: StepRun) -> None:
    s.attempts.append({k: v for k, v in ev.items() if k not in ("event", "step", "at")})


def _on_step_finished(f: _Fold, ev: dict[str, Any], s: StepRun) -> None:
    state, at = _enum(StepState, ev, "status"), _at(ev)
    s.state = state
    s.finished_at = at
    s.in_flight = False
    s.error = _opt_str(ev, "error")
    data = f.store.read_step(f.run_id, s.id)
    if isinstance(data, dict):
        handoff, validation = data.get("handoff"), data.get("validation")
        s.handoff = handoff if isinstance(handoff, dict) else None
        s.validation = validation if isinstance(validation, dict) else None
        attempts = data.get("attempts")
        if isinstance(attempts, list) and attempts:
            s.attempts = [a for a in attempts if isinstance(a, dict)]


def _on_step_skipped(f: _Fold, ev: dict[str, Any], s: StepRun) -> None:
    at = _at(ev)
    s.state = StepState.SKIPPED
    s.skip_reason = _opt_str(ev, "reason")
    s.skip_kind = _opt_str(ev, "kind")
    s.finished_at = at
    s.in_flight = False


def _on_gate_waiting(f: _Fold, ev: dict[str, Any], s: StepRun) -> None:
    at = _at(ev)
    s.state = StepState.WAITING_APPROVAL
    if at is not None:
        f.gate_since.setdefault(s.id, at)


def _on_gate_decided(f: _Fold, ev: dict[str, Any], s: StepRun) -> None:
    decision, at = ev.get("decision"), _at(ev)
    if decision not in ("approved", "rejected"):
        raise _Malformed(f"`decision` {decision!r} is neither approved nor rejected")
    s.gate = {"decision": decision, "by": ev.get("by"), "reason": ev.get("reason"), "at": at}
    if s.state is StepState.WAITING_APPROVAL:
        if decision == "rejected":
            s.state = StepState.REJECTED
            s.finished_at = at
        else:
            s.state = StepState.PENDING
    since = f.gate_since.pop(s.id, None)
    if since is not None and at is not None:
        f.gate_wait_ms += (parse_iso(at) - parse_iso(since)).total_seconds() * 1000


def _on_question(f: _Fold, ev: dict[str, Any], s: StepRun) -> None:
    from engine.ask import replay_question

    _at(ev)
    replay_question(s, ev)


def _on_step_reset(f: _Fold, ev: dict[str, Any], s: StepRun) -> None:
    s.state = StepState.PENDING
    s.skip_reason = s.skip_kind = s.error = None
    s.finished_at = None
    s.in_flight = False


_RUN_REDUCERS: dict[str, Callable[[_Fold, dict[str, Any]], None]] = {
    "run_started": _on_run_started,
    "run_finished": _on_run_finished,
    "run_paused": _on_run_paused,
    "run_resumed": _on_run_resumed,
    "run_cancelled": _on_run_cancelled,
}
_STEP_REDUCERS: dict[str, Callable[[_Fold, dict[str, Any], StepRun], None]] = {
    "step_started": _on_step_started,
    "step_queued": _on_step_queued,
    "step_dispatched": _on_step_dispatched,
    "step_attempt": _on_step_attempt,
    "step_finished": _on_step_finished,
    "step_skipped": _on_step_skipped,
    "gate_waiting": _on_gate_waiting,
    "gate_decided": _on_gate_decided,
    "step_reset": _on_step_reset,
    "step_question": _on_question,  # engine.ask: the agent asked
    "step_answered": _on_question,  # engine.ask: someone answered
}
#: Journal events that change no state (they are history for people and tools).
_HISTORY_ONLY = frozenset({"step_retry", "step_validated"})


def _apply(f: _Fold, ev: dict[str, Any]) -> None:
    """Fold one event into ``f``; raises _Malformed for an event it cannot use."""
    kind = ev.get("event")
    if not isinstance(kind, str):
        raise _Malformed("`event` is not a name")
    run_reducer = _RUN_REDUCERS.get(kind)
    if run_reducer is not None:
        run_reducer(f, ev)
        return
    step_reducer = _STEP_REDUCERS.get(kind)
    if step_reducer is None:
        if kind in _HISTORY_ONLY:
            return
        raise _Malformed("unknown event")
    sid = ev.get("step")
    step = f.steps.get(sid) if isinstance(sid, str) else None
    if step is None:
        raise _Malformed(f"no step {sid!r} in the run's plan")
    step_reducer(f, ev, step)


def _plan_order(meta: Any, path: Path) -> tuple[list[str], dict[str, Any]]:
    """The step ids of run.json's plan in order, and their entries; RunStateError if unusable."""
    where = f"`{path / 'run.json'}`"
    plan = meta.get("plan") if isinstance(meta, dict) else None
    groups = plan.get("groups") if isinstance(plan, dict) else None
    entries = plan.get("steps") if isinstance(plan, dict) else None
    if (
        not isinstance(groups, list)
        or not isinstance(entries, dict)
        or not all(isinstance(g, list) and all(isinstance(s, str) for s in g) for g in groups)
    ):
        what = "is not a JSON object" if not isinstance(meta, dict) else "has no usable `plan`"
        raise RunStateError(
            f"{where} {what} (`plan.groups` and `plan.steps` are needed): the run record was "
            "edited or damaged, so this run cannot be shown or resumed. Other runs are not "
            "affected; start this workflow again with `workflow run`.",
            path=path,
        )
    order = [s for group in groups for s in group]
    return order, {s: e if isinstance(e := entries.get(s), dict) else {} for s in order}


def _check_shape(store: RunStore, run_id: str, path: Path, meta: Any, order: list[str]) -> None:
    """RunStateError naming the file and value when a hand-edited record has a wrong shape."""
    from engine.runshape import shape_problem

    problem = shape_problem(meta, {s: store.read_step(run_id, s) for s in order})
    if problem:
        raise RunStateError(
            f"run `{path.name}` is damaged: {problem} (in `{path}`). Its files were left as "
            "they are; restore them from a backup, or start the workflow again.",
            path=path,
        )


def replay(path: Path, *, store: RunStore | None = None) -> RunView:
    """Rebuild the state of the run at ``path`` (``RunView.path``) from its store."""
    if store is None:
        store, run_id = FileRunStore.of_run(path)
    else:
        run_id = path.name
    return replay_run(store, run_id)


def replay_run(store: RunStore, run_id: str) -> RunView:
    """Rebuild a run's state from its metadata and its journal.

    Each journal event kind has one small reducer; an event that is unknown or lacks
    what its reducer needs is skipped and named in ``RunView.warnings``, never raised.
    """
    path = store.run_locator(run_id)
    meta = store.read_run(run_id)
    if meta is None:
        raise RunStateError(f"`{path / 'run.json'}` is missing or unreadable.", path=path)
    order, entries = _plan_order(meta, path)
    _check_shape(store, run_id, path, meta, order)
    steps = {s: StepRun(id=s, agent=_opt_str(entries[s], "agent")) for s in order}
    fold = _Fold(store, run_id, steps)
    warnings: list[str] = []
    events: list[dict[str, Any]] = []
    for line, ev in store.events(run_id):
        try:
            if not isinstance(ev, dict):
                raise _Malformed("not a JSON object")
            _apply(fold, ev)
        except _Malformed as exc:
            warnings.append(
                f"`{path / 'events.jsonl'}` line {line}: event "
                f"{str(ev.get('event') if isinstance(ev, dict) else ev)[:40]!r} skipped: {exc}."
            )
            continue
        events.append(ev)
    meta_id = meta.get("runId")
    return RunView(
        meta_id if isinstance(meta_id, str) else run_id,
        path,
        meta,
        steps,
        fold.state,
        events,
        fold.started,
        fold.finished,
        gate_wait_ms=round(fold.gate_wait_ms, 3),
        warnings=warnings,
    )


def summarize(view: RunView, outputs: dict[str, str] | None = None) -> dict[str, Any]:
    """The content of summary.json for a run."""
    started = view.started_at
    finished = view.finished_at
    duration = None
    if started and finished:
        duration = round((parse_iso(finished) - parse_iso(started)).total_seconds() * 1000, 3)
    steps = {}
    for s in view.steps.values():
        steps[s.id] = {
            "status": s.state.value,
            "agent": s.agent,
            "attempts": s.attempt,
            "duration_ms": s.duration_ms,
            "confidence": (s.handoff or {}).get("confidence"),
            "delegation_run_id": s.delegation_run_id,
            **({"skip_reason": s.skip_reason} if s.skip_reason else {}),
            **({"error": s.error} if s.error else {}),
            **({"gate": s.gate} if s.gate else {}),
            **({"question": s.question} if s.question else {}),
        }
    return {
        "runId": view.run_id,
        "workflow": view.meta.get("workflow"),
        "status": view.state.value,
        "caller": view.meta.get("caller"),
        "inputs": view.meta.get("inputs") or {},
        "started_at": started,
        "finished_at": finished,
        "duration_ms": duration,
        "gate_wait_ms": view.gate_wait_ms,
        "retries": sum(max(0, s.attempt - 1) for s in view.steps.values()),
        "steps": steps,
        "outputs": outputs or {},
        **({"warnings": list(view.warnings)} if view.warnings else {}),
    }


# ----------------------------------------------------------------------------- the runner


class _StepReporter(Reporter):
    """Journals the delegation events of steps, and forwards everything to the user's."""

    def __init__(self, inner: Reporter, journal: RunJournal, steps_by_run: dict[str, str]) -> None:
        self.inner = inner
        self.journal = journal
        self.steps_by_run = steps_by_run

    def event(self, kind: str, **fields: Any) -> None:
        self.inner.event(kind, **fields)

    def pool_waiting(self, run_id: str, agent: str) -> None:
        step = self.steps_by_run.get(run_id)
        if step:
            self.journal.append("step_queued", step=step, delegation_run_id=run_id)
        self.inner.event("step_queued", step=step, agent=agent)

    def delegation_dispatched(self, run_id: str, caller: str, target: str, attempts: int) -> None:
        step = self.steps_by_run.get(run_id)
        if step:
            self.journal.append(
                "step_dispatched", step=step, delegation_run_id=run_id, attempts=attempts
            )
        self.inner.event("step_dispatched", step=step, agent=target)

    def delegation_retry(self, agent: str, attempt: int, delay: float, reason: str) -> None:
        self.inner.delegation_retry(agent, attempt, delay, reason)

    def delegation_finished(self, run_id: str, target: str, outcome: str, record: str) -> None:
        pass

    def warning(self, message: str) -> None:
        self.inner.warning(message)


#: Waits before a step's retry; returns True when ``cancel`` was set meanwhile.
RetryWait = Callable[[threading.Event, float], bool]

#: The first retry of a step waits ``retry_delay`` (default 2 s), each next one twice as
#: long, plus up to 20 % jitter, never more than this, nor more than the step's timeout.
MAX_RETRY_DELAY = 60.0
RETRY_JITTER = 0.2


def retry_delay(
    base: float,
    retry: int,
    *,
    rng: Callable[[], float] = random.random,
    bound: float | None = None,
) -> float:
    """Seconds to wait before retry number ``retry`` (1 = the first) of a step.

    Example: ``retry_delay(2.0, 3, rng=lambda: 0.0)`` is 8.0.
    """
    if base <= 0:
        return 0.0
    delay = min(base * 2.0 ** min(retry - 1, 64), MAX_RETRY_DELAY) * (1 + RETRY_JITTER * rng())
    delay = min(delay, MAX_RETRY_DELAY)
    return min(delay, bound) if bound is not None else delay


def _wait_for_cancel(cancel: threading.Event, seconds: float) -> bool:
    return cancel.wait(seconds)


class WorkflowRunner:
    """Starts and resumes runs of planned workflows through a Delegator.

    It keeps no per-run state: each ``start``/``resume`` creates its own execution, so
    one runner (and one delegator) may run several workflows, one after the other or at
    the same time from several threads.
    """

    def __init__(
        self,
        cfg: Config,
        delegator: Delegator,
        *,
        reporter: Reporter | None = None,
        approver: Approver | None = None,
        retry_wait: RetryWait = _wait_for_cancel,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.cfg = cfg
        self.delegator = delegator
        #: Where runs are kept: the delegator's store (one store per process and config).
        self.store: RunStore = delegator.store
        self.reporter = reporter or Reporter()
        self.approver = approver
        self.retry_wait = retry_wait
        self.rng = rng
        # Shared by the runs of this runner: capability routing claims the least busy
        # agent of the host, and two runs must not both claim the same free slot.
        self.route_lock = threading.Lock()

    # -- entry points -----------------------------------------------------------------

    def start(self, prepared: Prepared, options: RunOptions) -> RunResult:
        """Create the run directory and run the workflow."""
        plan = prepared.plan
        self._check_approvals(plan, options)
        run_id = new_run_id("wf")
        store = self.store
        meta = {
            "runId": run_id,
            "workflow": prepared.spec.name,
            "workflow_path": str(prepared.spec.path),
            "version": prepared.spec.version,
            "caller": plan.caller,
            "inputs": plan.inputs,
            "config": str(self.cfg.path) if self.cfg.path else None,
            "created_at": utcnow_iso(),
            "fingerprint": fingerprint_parts(self.cfg, prepared),
            "plan": {
                "groups": plan.groups,
                "steps": {
                    sid: {
                        "agent": ps.agent,
                        "candidates": list(ps.candidates),
                        "depends_on": list(ps.depends_on),
                        "validator": ps.validator,
                        "gate": bool(ps.spec.gate),
                        "when": ps.spec.when,
                    }
                    for sid, ps in plan.steps.items()
                },
            },
        }
        store.create_run(run_id, meta)
        with store.claim(run_id):
            journal = store.journal(run_id)
            try:
                journal.append(
                    "run_started", run_id=run_id, workflow=prepared.spec.name, pid=os.getpid()
                )
                view = replay_run(store, run_id)
                return _Execution(self, prepared, view, journal, options).run()
            finally:
                journal.close()

    def resume(self, run_id: str, options: RunOptions) -> RunResult:
        """Continue a run after a crash, a gate, a failure or a restart."""
        store = self.store
        path = run_dir(self.cfg, run_id, store=store)
        with store.claim(run_id):
            view = replay_run(store, run_id)
            if view.state is RunState.CANCELLED:
                raise RunStateError(f"run `{run_id}` was cancelled; start a new run instead.")
            meta = view.meta
            workflow_path, fingerprint = meta.get("workflow_path"), meta.get("fingerprint")
            if not isinstance(workflow_path, str) or not isinstance(fingerprint, dict):
                raise RunStateError(
                    f"`{path / 'run.json'}` has no usable `workflow_path` and `fingerprint`: "
                    f"the run record was edited or damaged, so run `{run_id}` cannot resume. "
                    "Start the workflow again with `workflow run`.",
                    path=path,
                )
            inputs = meta.get("inputs")
            prepared = prepare(
                self.cfg,
                workflow_path,
                inputs if isinstance(inputs, dict) else {},
                caller=meta.get("caller"),
            )
            changed = [
                k
                for k, v in fingerprint_parts(self.cfg, prepared).items()
                if fingerprint.get(k) != v
            ]
            if changed and not options.force:
                what = {
                    "template": f"the template `{workflow_path}`",
                    "inputs": "the inputs (defaults in the template)",
                    "agents": "the agents' configuration in the config",
                }
                raise RunStateError(
                    f"run `{run_id}` cannot resume: "
                    + ", ".join(what[c] for c in changed)
                    + " changed since it started. Start a new run, or pass `--force` to "
                    "resume with the current definitions."
                )
            self._check_approvals(prepared.plan, options)
            for warning in view.warnings:
                self.reporter.warning(warning)
            journal = store.journal(run_id)
            try:
                journal.append(
                    "run_resumed",
                    pid=os.getpid(),
                    changed=changed,
                    retry_failed=options.retry_failed,
                )
                if options.retry_failed:
                    _reset_failed(view, prepared, journal)
                view = replay_run(store, run_id)
                return _Execution(self, prepared, view, journal, options).run()
            finally:
                journal.close()

    def _check_approvals(self, plan: Any, options: RunOptions) -> None:
        for step in options.approve:
            if step not in plan.steps:
                raise UsageError(
                    f"`--approve {step}`: no such step{did_you_mean(step, list(plan.steps))}"
                )
            if plan.steps[step].spec.gate is None:
                raise UsageError(f"`--approve {step}`: that step has no approval gate.")


def _reset_failed(view: RunView, prepared: Prepared, journal: RunJournal) -> None:
    """Journal a reset of what ``--retry-failed`` runs again.

    That is every step that ended in a retryable state, every step skipped only because
    the run stopped (an independent branch the stop cut off), and every step skipped
    because one of those did not finish well.
    """
    plan = prepared.plan
    again = {
        s.id
        for s in view.steps.values()
        if s.state in RETRYABLE_STEP_STATES
        or (s.state is StepState.SKIPPED and s.skip_kind == "stopped")
    }
    for sid in list(again):
        again |= plan.downstream(sid)
    for sid in sorted(again, key=list(view.steps).index):
        s = view.steps[sid]
        if s.state in RETRYABLE_STEP_STATES or (
            s.state is StepState.SKIPPED and s.skip_kind in ("upstream", "stopped")
        ):
            journal.append("step_reset", step=sid, previous=s.state.value)


class _Execution:
    """One run (or resumed stretch of a run) in progress: all of its mutable state."""

    def __init__(
        self,
        runner: WorkflowRunner,
        prepared: Prepared,
        view: RunView,
        journal: RunJournal,
        options: RunOptions,
    ) -> None:
        self.cfg = runner.cfg
        self.store = runner.store
        self.delegator = runner.delegator
        self.reporter = runner.reporter
        self.approver = runner.approver
        self.retry_wait = runner.retry_wait
        self.rng = runner.rng
        self.route_lock = runner.route_lock
        self.prepared = prepared
        self.plan = prepared.plan
        self.view = view
        self.journal = journal
        self.options = options
        self.run_id = view.run_id
        self.steps = view.steps
        self.cancel = threading.Event()
        # This run's observer of its delegations: passed to each call, never swapped into
        # the (possibly shared) delegator, so two runs on one delegator keep their events.
        self.step_reporter = _StepReporter(runner.reporter, journal, {})
        self.upstream: dict[str, tuple[str, ...]] = {}
        self.stop_reason: str | None = None

    # -- the scheduler ------------------------------------------------------------------

    def run(self) -> RunResult:
        """Run every step that can run now, then conclude (finished, failed or parked)."""
        plan = self.plan
        steps = self.steps
        journal = self.journal
        order = [s for group in plan.groups for s in group]
        for s in steps.values():
            if s.state is StepState.WAITING_APPROVAL:
                s.state = StepState.PENDING
            if s.state is StepState.WAITING_INPUT and (s.question or {}).get("answer") is not None:
                s.state = StepState.PENDING  # answered: it is delegated again with the answer
            if s.state.final and not s.state.ok and s.state is not StepState.SKIPPED:
                if plan.steps[s.id].spec.on_failure == "stop":
                    self.stop_reason = f"`{s.id}` ended {s.state.value}"
        self.reporter.event(
            "run_started",
            run_id=self.run_id,
            workflow=plan.workflow.name,
            steps=[[(sid, steps[sid].agent) for sid in g] for g in plan.groups],
            handoffs_dir=str(self.cfg.handoffs_dir),  # where progress lines are (live table)
        )
        running: dict[Future[None], str] = {}
        # Incremental readiness: a step becomes ready when its last upstream step settles,
        # so each scheduling round touches only what changed (O(steps + edges) per run).
        index = {sid: i for i, sid in enumerate(order)}
        children = {sid: list(plan.graph.successors(sid)) for sid in order}
        blocking = {
            sid: sum(1 for d in plan.steps[sid].depends_on if not steps[d].state.final)
            for sid in order
        }
        heap = [index[sid] for sid in order if blocking[sid] == 0 and not steps[sid].state.final]
        heapq.heapify(heap)

        def settle(sid: str) -> None:
            for child in children[sid]:
                blocking[child] -= 1
                if blocking[child] == 0:
                    heapq.heappush(heap, index[child])

        with ThreadPoolExecutor(
            max_workers=max(1, self.options.max_parallel),
            thread_name_prefix=f"step-{self.run_id[-8:]}",
        ) as pool:
            while True:
                if not self.cancel.is_set() and self.store.cancel_requested(self.run_id):
                    self.cancel.set()
                    journal.append("run_cancelled", by="workflow cancel")
                if self.cancel.is_set():
                    heap.clear()
                    for sid in order:
                        st = steps[sid]
                        waiting = (StepState.WAITING_APPROVAL, StepState.WAITING_INPUT)
                        if (st.state is StepState.PENDING or st.state in waiting) and (
                            sid not in running.values()
                        ):
                            self._skip(st, "the run was cancelled", "stopped")
                while heap:
                    sid = order[heapq.heappop(heap)]
                    fut = self._consider(steps[sid], pool)
                    if fut is not None:
                        running[fut] = sid
                    elif steps[sid].state.final:
                        settle(sid)
                if not running:
                    break
                done, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
                for fut in done:
                    sid = running.pop(fut)
                    exc = fut.exception()
                    st = steps[sid]
                    if exc is not None:  # a bug, not a step outcome: record and go on
                        self._finish(st, StepState.ERRORED, error=f"internal error: {exc}")
                    if st.state is StepState.WAITING_INPUT:
                        continue  # parked with a question: its dependents wait for the answer
                    if not st.state.ok and plan.steps[sid].spec.on_failure == "stop":
                        self.stop_reason = self.stop_reason or f"`{sid}` ended {st.state.value}"
                    settle(sid)
        return self._conclude()

    def _consider(self, s: StepRun, pool: ThreadPoolExecutor) -> Future[None] | None:
        """Decide a step whose upstream steps have all settled: run, skip, gate or fail it.

        Returns the future of a submitted step; otherwise the step is final or parked.
        """
        steps = self.steps
        sid = s.id
        prepared = self.prepared
        ps = self.plan.steps[sid]
        if s.in_flight:  # dispatched by an earlier process: re-attach, never resend
            return pool.submit(self._run_step, s, True)
        if s.state.final or s.state is StepState.WAITING_INPUT:
            return None
        ups = [steps[d] for d in ps.depends_on]
        bad = [
            u
            for u in ups
            if not u.state.ok and not (u.state is StepState.SKIPPED and u.skip_kind == "condition")
        ]
        if bad:
            self._skip(s, f"upstream `{bad[0].id}` ended {bad[0].state.value}", "upstream")
            return None
        if self.stop_reason:
            self._skip(s, f"the run stopped after {self.stop_reason}", "stopped")
            return None
        gated = False
        if ps.spec.when or ps.spec.gate is not None:
            try:
                ctx = self._context(sid)
                if not prepared.renderer.evaluate_when(sid, ctx):
                    self._skip(s, f"condition `{ps.spec.when}` is false", "condition")
                    return None
                gated = ps.spec.gate is not None and prepared.renderer.evaluate_gate_when(sid, ctx)
            except Exception as exc:  # a template error at run time
                self._finish(s, StepState.ERRORED, error=f"condition failed: {exc}")
                return None
        if gated and not self._gate(s):
            return None
        return pool.submit(self._run_step, s, False)

    def _gate(self, s: StepRun) -> bool:
        """True when the step may go; parks or rejects it otherwise."""
        journal, options, steps = self.journal, self.options, self.steps
        if s.gate and s.gate.get("decision") == "approved":
            return True
        if options.approve_all or s.id in options.approve:
            s.gate = {"decision": "approved", "by": "--approve", "reason": None, "at": utcnow_iso()}
            journal.append("gate_decided", step=s.id, decision="approved", by="--approve")
            return True
        ps = self.plan.steps[s.id]
        try:
            prompt = self.prepared.renderer.render_gate_prompt(s.id, self._context(s.id))
        except Exception:  # the raw prompt still tells the approver what is asked
            prompt = ps.spec.gate.prompt
        if s.state is not StepState.WAITING_APPROVAL:
            journal.append("gate_waiting", step=s.id, prompt=prompt)
            s.state = StepState.WAITING_APPROVAL
            self.reporter.event("gate_waiting", step=s.id, prompt=prompt, run_id=self.run_id)
        decision = None
        if self.approver is not None:
            upstream = {d: steps[d].context() for d in self.plan.upstream(s.id)}
            decision = self.approver(
                GateRequest(
                    run_id=self.run_id, step=s.id, agent=s.agent, prompt=prompt, upstream=upstream
                )
            )
        if decision is None:
            return False
        if decision == "approved":
            s.gate = {"decision": "approved", "by": "terminal", "reason": None, "at": utcnow_iso()}
            journal.append("gate_decided", step=s.id, decision="approved", by="terminal")
            s.state = StepState.PENDING
            return True
        reason = decision[1] if isinstance(decision, tuple) else "rejected"
        journal.append("gate_decided", step=s.id, decision="rejected", by="terminal", reason=reason)
        s.gate = {"decision": "rejected", "by": "terminal", "reason": reason}
        self._finish(s, StepState.REJECTED, error=f"gate rejected: {reason}")
        return False

    def _context(self, step_id: str | None = None) -> dict[str, Any]:
        """The rendering context: for a step, only its upstream steps (all for outputs)."""
        from engine.renderer import render_context

        steps = self.steps
        if step_id is not None:
            ups = self.upstream.get(step_id)
            if ups is None:
                # Only what the step's templates read, unless they read `steps` dynamically
                # (a loop): then every upstream step. Building the whole upstream context
                # for every step of a deep graph would cost O(steps^2).
                refs = self.prepared.renderer.references(step_id).values()
                if any(r.dynamic_steps for r in refs):
                    above = self.plan.upstream(step_id)
                else:
                    above = {sid for r in refs for sid in r.steps}
                ups = self.upstream[step_id] = tuple(sid for sid in steps if sid in above)
            chosen = {sid: steps[sid].context() for sid in ups}
        else:
            chosen = {sid: s.context() for sid, s in steps.items()}
        return render_context(
            inputs=self.plan.inputs,
            steps=chosen,
            run_id=self.run_id,
            workflow=self.prepared.spec.name,
        )

    def _skip(self, s: StepRun, reason: str, kind: str) -> None:
        s.state = StepState.SKIPPED
        s.skip_reason = reason
        s.skip_kind = kind
        s.finished_at = utcnow_iso()
        self.journal.append("step_skipped", step=s.id, reason=reason, kind=kind)
        self.store.write_step(self.run_id, s.id, _step_record(s))
        self.reporter.event("step_skipped", step=s.id, reason=reason)

    def _finish(self, s: StepRun, state: StepState, *, error: str | None = None) -> None:
        s.state = state
        s.error = error
        s.finished_at = utcnow_iso()
        s.in_flight = False
        self.store.write_step(self.run_id, s.id, _step_record(s))
        self.journal.append(
            "step_finished",
            step=s.id,
            status=state.value,
            attempt=s.attempt,
            delegation_run_id=s.delegation_run_id,
            **({"error": error} if error else {}),
        )
        self.reporter.event(
            "step_finished",
            step=s.id,
            status=state.value,
            duration_ms=s.duration_ms,
            agent=s.agent,
            error=error,
        )

    def _step_timeout(self, ps: Any, agent: str) -> float:
        """The step's own deadline for one attempt (as the delegation would use it)."""
        if ps.spec.timeout:
            return float(ps.spec.timeout)
        entry = self.cfg.agents.get(agent)
        return float(entry.timeout if entry and entry.timeout else self.cfg.default_timeout)

    def _run_step(self, s: StepRun, reattach: bool) -> None:
        """Run one step to its final state (in a worker thread)."""
        plan = self.plan
        journal = self.journal
        cancel = self.cancel
        ps = plan.steps[s.id]
        run_id = self.run_id
        if ps.spec.capability and not reattach and len(ps.candidates) > 1:
            agent = self._route(ps)
        else:
            agent = s.agent or ps.agent
        s.agent = agent
        retries = int(ps.spec.retries or 0)
        # An attempt started by an earlier process keeps its run id; it is re-attached
        # (never re-sent) when the journal says a gateway accepted it, else sent again
        # under the same Idempotency-Key, which a gateway runs once.
        first = s.attempt if reattach and s.attempt else s.attempt + 1
        accepted = reattach and s.dispatched_at is not None
        try:
            task = self.prepared.renderer.render_task(s.id, self._context(s.id))
        except Exception as exc:
            self._finish(s, StepState.ERRORED, error=f"task failed to render: {exc}")
            return
        from engine.ask import asked, with_answer

        task = with_answer(task, s.question)
        attempt = first
        while True:
            s.attempt = attempt
            drid = f"{run_id}-{s.id}-{attempt}"
            self.step_reporter.steps_by_run[drid] = s.id
            s.delegation_run_id = drid
            s.started_at = s.started_at or utcnow_iso()
            again = accepted and attempt == first
            if not (reattach and attempt == first):
                journal.append(
                    "step_started", step=s.id, attempt=attempt, agent=agent, delegation_run_id=drid
                )
            self.reporter.event(
                "step_started",
                step=s.id,
                agent=agent,
                attempt=attempt,
                reattached=again,
                delegation_run_id=drid,
            )
            s.state = StepState.RUNNING
            req = DelegationRequest(
                target=agent,
                task=task,
                caller=plan.caller,
                timeout=ps.spec.timeout,
                run_id=drid,
                name=f"workflow {run_id} {s.id}",
                deliver=ps.spec.options.get("deliver"),
                model=ps.spec.options.get("model"),
                thinking=ps.spec.options.get("thinking"),
                channel=ps.spec.options.get("channel"),
                labels={"workflow": plan.workflow.name, "workflow_run": run_id, "step": s.id},
                repair_attempts=ps.spec.repair_attempts,
                heartbeat_timeout=ps.spec.heartbeat_timeout,
            )
            try:
                result = self.delegator.delegate(
                    req, reattach=again, cancel=cancel, reporter=self.step_reporter
                )
            except OrchestratorError as exc:
                s.attempts.append({"run_id": drid, "outcome": "errored", "error": str(exc)})
                self._finish(s, StepState.ERRORED, error=str(exc))
                return
            env = result.envelope
            s.attempts.append(
                {
                    "run_id": drid,
                    "outcome": result.outcome.value,
                    "dispatched_at": env.get("dispatched_at"),
                    "received_at": env.get("received_at"),
                    "duration_ms": env.get("duration_ms"),
                    "token_wait_ms": env.get("token_wait_ms"),
                    "late": env.get("late"),
                    **({"error": str(result.error)} if result.error else {}),
                }
            )
            if (
                result.outcome in (Outcome.FAILED, Outcome.TIMEOUT, Outcome.LOST)
                and attempt <= retries
                and not cancel.is_set()
            ):
                # The last attempt is in the step file; earlier ones go to the journal so a
                # crash during a retry keeps their history.
                journal.append("step_attempt", step=s.id, **s.attempts[-1])
                # Back off before the next attempt, so a short outage does not use up
                # every retry at once; `workflow cancel` interrupts the wait.
                delay = retry_delay(
                    ps.spec.retry_delay,
                    attempt,
                    rng=self.rng,
                    bound=self._step_timeout(ps, agent),
                )
                journal.append(
                    "step_retry",
                    step=s.id,
                    attempt=attempt + 1,
                    reason=result.outcome.value,
                    delay_s=round(delay, 3),
                )
                self.reporter.event(
                    "step_retry",
                    step=s.id,
                    attempt=attempt + 1,
                    reason=result.outcome.value,
                    delay_s=delay,
                )
                if delay > 0 and self.retry_wait(cancel, delay):
                    break
                attempt += 1
                continue
            break
        if result.outcome.ok or result.outcome in (Outcome.FAILED, Outcome.BLOCKED):
            s.handoff = result.handoff
        if asked(result, s, journal):  # blocked with a question: parked until answered
            self.reporter.event("step_waiting_input", step=s.id, question=s.question)
            return
        state = StepState(result.outcome.value)
        error = str(result.error) if result.error else None
        if state.ok and ps.validator:
            state, error = self._validate(s, task, ps.validator)
        self._finish(s, state, error=error)

    def _route(self, ps: Any) -> str:
        """The least busy candidate for a capability step, at dispatch time."""
        from engine.routing import inflight_counts

        with self.route_lock:
            counts = inflight_counts(self.delegator.store)
            here: dict[str, int] = {}
            for other in self.steps.values():
                if other.state is StepState.RUNNING and other.agent:
                    here[other.agent] = here.get(other.agent, 0) + 1
            load = {a: max(counts.get(a, 0), here.get(a, 0)) for a in ps.candidates}
            agent = min(ps.candidates, key=lambda a: load[a])
            claimed = self.steps.get(ps.id)  # claim it before the next step chooses
            if claimed is not None:
                claimed.agent = agent
                claimed.state = StepState.RUNNING
            return str(agent)

    def _validate(self, s: StepRun, task: str, validator: str) -> tuple[StepState, str | None]:
        from engine.validate import validate_result

        verdict = validate_result(
            self.delegator,
            caller=self.plan.caller,
            validator=validator,
            task=task,
            handoff=s.handoff or {},
            run_id=f"{s.delegation_run_id}-v",
            cancel=self.cancel,
            reporter=self.step_reporter,
        )
        s.validation = verdict.as_dict()
        self.journal.append(
            "step_validated",
            step=s.id,
            approved=verdict.approved,
            validator=validator,
            run_id=verdict.run_id,
        )
        if verdict.approved:
            return StepState(s.state.value if s.state.ok else "complete"), None
        return StepState.FAILED, f"validator `{validator}` rejected the result: {verdict.reasons}"

    def _conclude(self) -> RunResult:
        steps = self.steps
        view = self.view
        if self.cancel.is_set():
            state = RunState.CANCELLED
        elif any(s.state is StepState.WAITING_INPUT for s in steps.values()):
            state = RunState.WAITING_INPUT
        elif any(s.state is StepState.WAITING_APPROVAL for s in steps.values()):
            state = RunState.WAITING_APPROVAL
        elif all(
            s.state.ok or (s.state is StepState.SKIPPED and s.skip_kind == "condition")
            for s in steps.values()
        ):
            state = RunState.COMPLETE
        else:
            state = RunState.FAILED
        outputs: dict[str, str] = {}
        if state is RunState.COMPLETE:
            try:
                outputs = self.prepared.renderer.render_outputs(self._context())
            except Exception as exc:  # an output template that fails must not lose the run
                outputs = {"error": f"outputs failed to render: {exc}"}
        if state in (RunState.WAITING_APPROVAL, RunState.WAITING_INPUT):
            parked = (StepState.WAITING_APPROVAL, StepState.WAITING_INPUT)
            waiting = [s.id for s in steps.values() if s.state in parked]
            self.journal.append("run_paused", status=state.value, waiting=waiting)
        else:
            self.journal.append("run_finished", status=state.value)
        final = replay_run(self.store, view.run_id)
        final.state = state
        for sid, s in steps.items():  # in-memory states are the freshest
            final.steps[sid] = s
        summary = summarize(final, outputs)
        if state in (RunState.WAITING_APPROVAL, RunState.WAITING_INPUT):
            summary["finished_at"] = None
        self.store.write_summary(view.run_id, summary)
        self.reporter.event("run_finished", run_id=view.run_id, status=state.value, summary=summary)
        return RunResult(view.run_id, state, view.path, summary)


def _step_record(s: StepRun) -> dict[str, Any]:
    return {
        "step": s.id,
        "agent": s.agent,
        "status": s.state.value,
        "handoff": s.handoff,
        "attempts": s.attempts,
        "started_at": s.started_at,
        "finished_at": s.finished_at,
        "duration_ms": s.duration_ms,
        "delegation_run_id": s.delegation_run_id,
        "skip_reason": s.skip_reason,
        "error": s.error,
        "gate": s.gate,
        "validation": s.validation,
    }


# ----------------------------------------------------------------------------- around it


def decide_gate(
    cfg: Config,
    run_id: str,
    step: str,
    *,
    approved: bool,
    reason: str | None = None,
    by: str = "cli",
    store: RunStore | None = None,
) -> dict[str, Any]:
    """Record an approval or rejection of a parked gate (then `workflow resume`)."""
    store = store if store is not None else open_store(cfg)
    run_dir(cfg, run_id, store=store)
    view = replay_run(store, run_id)
    if step not in view.steps:
        raise UsageError(
            f"run `{run_id}` has no step `{step}`{did_you_mean(step, list(view.steps)) or '.'}"
        )
    if not view.meta["plan"]["steps"][step].get("gate"):
        raise UsageError(f"step `{step}` of run `{run_id}` has no approval gate.")
    s = view.steps[step]
    if s.state is not StepState.WAITING_APPROVAL and not (
        s.state is StepState.PENDING and not s.gate
    ):
        raise RunStateError(
            f"step `{step}` of run `{run_id}` is not waiting for approval (it is {s.state.value})."
        )
    journal = store.journal(run_id)
    try:
        return journal.append(
            "gate_decided",
            step=step,
            decision="approved" if approved else "rejected",
            by=by,
            reason=reason,
        )
    finally:
        journal.close()


def cancel_run(cfg: Config, run_id: str, *, store: RunStore | None = None) -> RunState:
    """Cancel a run: a running process stops dispatching; a parked run is closed now."""
    store = store if store is not None else open_store(cfg)
    run_dir(cfg, run_id, store=store)
    view = replay_run(store, run_id)
    if view.state in (RunState.COMPLETE, RunState.FAILED, RunState.CANCELLED):
        raise RunStateError(f"run `{run_id}` has already ended ({view.state.value}).")
    store.request_cancel(run_id)
    lock = store.claim(run_id)
    try:
        lock.__enter__()
    except RunStateError:
        return RunState.RUNNING  # the live executor notices the request within 0.2 s
    try:
        journal = store.journal(run_id)
        for s in view.steps.values():
            if not s.state.final:
                journal.append(
                    "step_skipped", step=s.id, reason="the run was cancelled", kind="stopped"
                )
        journal.append("run_cancelled", by="workflow cancel")
        journal.close()
        store.write_summary(run_id, summarize(replay_run(store, run_id)))
    finally:
        lock.__exit__(None, None, None)
    return RunState.CANCELLED


def list_runs(
    cfg: Config,
    *,
    limit: int = 20,
    problems: list[str] | None = None,
    store: RunStore | None = None,
) -> list[dict[str, Any]]:
    """Recent runs, newest first: id, workflow, status, started, duration.

    A run whose record is damaged is left out; its paragraph is appended to ``problems``.
    """
    store = store if store is not None else open_store(cfg)
    rows: list[dict[str, Any]] = []
    for rid in sorted(store.list_runs(), reverse=True)[:limit]:
        try:
            view = replay_run(store, rid)
        except OrchestratorError as exc:  # left out, and said why; the others still listed
            if problems is not None:
                problems.append(str(exc))
            continue
        summary = summarize(view)
        counts: dict[str, int] = {}
        for st in summary["steps"].values():
            counts[st["status"]] = counts.get(st["status"], 0) + 1
        rows.append(
            {
                "runId": view.run_id,
                "workflow": str(view.meta.get("workflow")),
                "status": view.state.value,
                "started_at": view.started_at,
                "duration_ms": summary["duration_ms"],
                "steps": counts,
            }
        )
    return rows


def run_status(cfg: Config, run_id: str, *, store: RunStore | None = None) -> dict[str, Any]:
    """A run's step table, with why each waiting step waits."""
    store = store if store is not None else open_store(cfg)
    store.reconcile(sub=False)
    path = run_dir(cfg, run_id, store=store)
    view = replay_run(store, run_id)
    live = store.claimed(run_id)
    summary = summarize(view)
    now = time.time()
    for sid, s in view.steps.items():
        row = summary["steps"][sid]
        if s.state is StepState.QUEUED:
            row["waiting"] = "queued for a pool token"
        elif s.state is StepState.RUNNING:
            if s.dispatched_at:
                waited = now - parse_iso(s.dispatched_at).timestamp()
                env = (
                    store.read_pending(s.delegation_run_id, sub=False)
                    if s.delegation_run_id
                    else None
                )
                limit = env.get("timeout_s") if env is not None else None
                of = f" of {limit:g} s" if isinstance(limit, int | float) else ""
                row["waiting"] = f"waiting on `{s.agent}` for {waited:.0f} s{of}"
                from engine.liveness import latest_progress

                said = latest_progress(cfg.handoffs_dir, str(s.delegation_run_id))
                if said is not None:
                    row["progress"] = said
                    age = f' {said["age_s"]:.0f} s ago' if said["age_s"] is not None else ""
                    row["waiting"] += f'; said "{said["text"]}"{age}'
            else:
                row["waiting"] = "being dispatched"
            if not live:
                row["waiting"] += " (no process is running this run: `workflow resume` it)"
        elif s.state is StepState.WAITING_APPROVAL:
            row["waiting"] = (
                f"at its approval gate: `workflow approve {run_id} {sid}` or "
                f"`workflow reject {run_id} {sid} --reason ...`"
            )
        elif s.state is StepState.WAITING_INPUT:
            from engine.ask import waiting_line

            row["waiting"] = waiting_line(run_id, sid, s.question)
    summary["run_dir"] = str(path)
    summary["live"] = live
    return summary
