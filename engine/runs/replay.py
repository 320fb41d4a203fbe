"""Replay: a run's state rebuilt from its metadata and its journal, and its summary.

The journal is folded by a table of reducers, one small function per event kind
(``_RUN_REDUCERS``, ``_STEP_REDUCERS``). An event that is unknown or lacks what its
reducer needs is skipped and named in ``RunView.warnings``, never raised.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import RunStateError
from engine.files import parse_iso, utcnow_iso
from engine.runs.model import RunView, StepRun
from engine.states import HandoffStatus, RunState, StepState
from engine.store import FileRunStore, RunStore


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
    #: Each step's ``<run>/<step>.json`` as parsed (None: none), read once per replay.
    step_data: dict[str, Any] = field(default_factory=dict)


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
    data = f.step_data[s.id] if s.id in f.step_data else f.store.read_step(f.run_id, s.id)
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
    if "input" in ev:  # the value given with the approval (a gate with `input`)
        s.gate["input"] = ev["input"]
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
    if ev["event"] == "step_answered":
        s.answers += 1


def _on_child_started(f: _Fold, ev: dict[str, Any], s: StepRun) -> None:
    cid, at = _need(ev, "child_run_id", str), _at(ev)
    s.state = StepState.RUNNING
    s.child_run_id = cid
    s.attempt += 1
    s.agent = f"workflow {ev['workflow']}" if isinstance(ev.get("workflow"), str) else s.agent
    s.started_at = s.started_at or at
    s.in_flight = True


def _on_child_waiting(f: _Fold, ev: dict[str, Any], s: StepRun) -> None:
    s.state = _enum(StepState, ev, "status")


def _on_step_late_result(f: _Fold, ev: dict[str, Any], s: StepRun) -> None:
    """``workflow resume`` takes the handoff that reached attempt ``attempt``'s record
    after that attempt ended: the step re-attaches to that delegation (in flight again),
    whose final record the executor then reads instead of sending anything."""
    attempt, drid, at = _need(ev, "attempt", int), _need(ev, "delegation_run_id", str), _at(ev)
    s.state = StepState.RUNNING
    s.attempt = attempt
    s.delegation_run_id = drid
    s.dispatched_at = at or utcnow_iso()
    s.finished_at = None
    s.error = None
    s.in_flight = True


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
    "step_late_result": _on_step_late_result,  # resume takes a late handoff (late_results)
    "child_started": _on_child_started,  # a sub-workflow step started its child run
    "child_waiting": _on_child_waiting,  # ... which parked (a gate, a question)
    "step_question": _on_question,  # engine.ask: the agent asked
    "step_answered": _on_question,  # engine.ask: someone answered
}
#: Journal events that change no state (they are history for people and tools).
_HISTORY_ONLY = frozenset(
    # item_*: the items of a `for_each` step; the executor reads them back (engine.runner)
    {"step_retry", "step_validated", "step_data_refused", "step_reattached", "step_spent"}
    | {"item_started", "item_attempt", "item_retry", "item_finished"}
)


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


def _step_files(store: RunStore, run_id: str, order: list[str]) -> dict[str, Any]:
    """Each step's ``<step>.json`` as parsed (None: none). A file store's run directory is
    listed first when the run has more than a few steps, and only the step files there are
    opened: a run's first replay finds none, and each was a failed ``open``."""
    names: set[str] | None = None
    if isinstance(store, FileRunStore) and len(order) > _LIST_FROM:
        try:
            names = set(os.listdir(store.run_locator(run_id)))
        except OSError:
            names = None  # each file is looked for, as without a listing
    return {
        s: store.read_step(run_id, s) if names is None or f"{s}.json" in names else None
        for s in order
    }


#: Steps from which a replay lists the run directory instead of opening every step file.
_LIST_FROM = 8


def _check_shape(path: Path, meta: Any, step_data: dict[str, Any]) -> None:
    """RunStateError naming the file and value when a hand-edited record has a wrong shape."""
    from engine.runshape import shape_problem

    problem = shape_problem(meta, step_data)
    if problem:
        raise RunStateError(
            f"run `{path.name}` is damaged: {problem} (in `{path}`). Its files were left as "
            "they are; restore them from a backup, or start the workflow again.",
            path=path,
        )


def gate_waiting_since(events: list[dict[str, Any]], step_id: str) -> str | None:
    """When (ISO-8601 UTC text) step ``step_id``'s gate began to wait: its first
    ``gate_waiting`` event after the step's last ``step_reset``; None when it has not
    waited since. A gate's ``timeout`` counts from here (``WorkflowRunner._timed_out``,
    ``engine.serve.manager.gate_due``)."""
    since: str | None = None
    for ev in events:
        if ev.get("step") != step_id:
            continue
        if ev.get("event") == "step_reset":
            since = None
        elif ev.get("event") == "gate_waiting" and since is None:
            since = ev.get("at") if isinstance(ev.get("at"), str) else None
    return since


#: The journal events that move a step's attempt along (``unsent``).
_MOVES = frozenset(
    {"step_started", "step_queued", "step_dispatched", "step_retry", "step_finished"}
    | {"step_skipped", "step_reset", "child_started"}
)


def unsent(view: RunView, step_id: str) -> dict[str, Any] | None:
    """Why step ``step_id`` of ``view``, not ended, has no delegation out now; None when
    it has one (or has ended, or never started). By the step's last journal event that
    moves an attempt along:

    - ``step_queued``: ``{"why": "queued"}``: it waits for a pool token, nothing sent;
      ``{"why": "reattached"}`` when that delegation was dispatched before (a
      ``step_dispatched`` of its run id): re-attached after a crash, it waits for a token
      while its agent may work (``engine.delegate``; its callers count it as in flight);
    - ``step_retry``: ``{"why": "retry", "attempt": N, "delay_s": S, "at": ISO or None,
      "after": OUTCOME or None}``: attempt ``N - 1`` ended (``OUTCOME``, from its
      ``step_attempt`` event) and attempt ``N`` is sent ``S`` seconds after ``at``.

    Ctrl-C's paragraph (``engine.cli.workflow``) and ``run_status`` use it."""
    s = view.steps.get(step_id)
    if s is None or s.state.final:
        return None
    last: dict[str, Any] | None = None
    ended, after = None, None  # the outcome of the last attempt journaled, as of `last`
    dispatched: set[Any] = set()  # the delegation run ids a gateway accepted
    for ev in view.events:
        if ev.get("step") != step_id or "index" in ev:
            continue
        if ev.get("event") == "step_dispatched":
            dispatched.add(ev.get("delegation_run_id"))
        if ev.get("event") in _MOVES:
            last, after = ev, ended
        elif ev.get("event") == "step_attempt":
            ended = ev.get("outcome")
    if last is None:
        return None
    if last["event"] == "step_queued":
        sent = last.get("delegation_run_id") in dispatched
        return {"why": "reattached" if sent else "queued"}
    if last["event"] == "step_retry":
        attempt = last.get("attempt")
        delay = last.get("delay_s")
        return {
            "why": "retry",
            "attempt": attempt if isinstance(attempt, int) else None,
            "delay_s": float(delay) if isinstance(delay, int | float) else 0.0,
            "at": last.get("at") if isinstance(last.get("at"), str) else None,
            "after": after if isinstance(after, str) else None,
        }
    return None


#: How a step's last attempt may have ended for ``workflow resume`` to take the handoff
#: its agent wrote later (docs/workflows.md, "Resuming"): endings the engine decided while
#: the agent could still answer. Not ``cancelled`` (someone stopped the run, which is not
#: resumed), ``rejected`` (a gate: nothing was sent), nor the agent's own endings.
LATE_ADOPTABLE = frozenset(
    {StepState.TIMEOUT, StepState.LOST, StepState.ERRORED, StepState.INVALID, StepState.UNUSABLE}
)
_ENGINE_ENDINGS = frozenset(s.value for s in LATE_ADOPTABLE)
_AGENT_STATUSES = frozenset(s.value for s in HandoffStatus)


def last_attempt_ended(events: list[dict[str, Any]], step_id: str) -> str | None:
    """The delegation run id of step ``step_id``'s last attempt when the journal says
    that attempt ended (a ``step_finished`` with its id after its ``step_started``, no
    ``step_reset`` since); None otherwise (never started, reset, still in flight)."""
    drid: str | None = None
    ended = False
    for ev in events:
        if ev.get("step") != step_id:
            continue
        kind = ev.get("event")
        if kind == "step_started":
            value = ev.get("delegation_run_id")
            drid, ended = (value if isinstance(value, str) else None), False
        elif kind in ("step_reset", "step_late_result", "child_started"):
            drid, ended = None, False
        elif kind == "step_finished":
            ended = drid is not None and ev.get("delegation_run_id") == drid
    return drid if ended else None


def is_late_handoff(record: Any) -> bool:
    """True when a delegation record holds the agent's own handoff that superseded an
    ending the engine had decided (``envelope.supersedes``: timeout, lost, errored,
    invalid, unusable; the merge rule of ``engine.record.deliver``); a gateway's
    stand-in (``fallback``) never counts."""
    env = record.get("envelope") if isinstance(record, dict) else None
    return (
        isinstance(env, dict)
        and env.get("outcome") in _AGENT_STATUSES
        and env.get("supersedes") in _ENGINE_ENDINGS
        and not env.get("fallback")
    )


def late_results(view: RunView, store: RunStore, *, deliver: bool) -> dict[str, dict[str, Any]]:
    """Step id -> the delegation record of each step whose last attempt ended in a state of
    ``LATE_ADOPTABLE`` and whose record now holds the agent's late handoff
    (``is_late_handoff``). With ``deliver`` a handoff still in the inbox is merged first
    (``RunStore.deliver``, the one merge rule). Steps of a ``for_each`` or a sub-workflow
    have no such record and are never listed. Used by ``workflow resume`` (which takes
    them) and ``workflow status`` (which says so)."""
    from engine.errors import OrchestratorError

    found: dict[str, dict[str, Any]] = {}
    for s in view.steps.values():
        if s.state not in LATE_ADOPTABLE:
            continue
        drid = last_attempt_ended(view.events, s.id)
        if drid is None or drid != s.delegation_run_id:
            continue
        try:
            if deliver:
                store.deliver(drid, sub=False)
            record = store.read(drid, sub=False)
        except (OrchestratorError, OSError, ValueError):
            continue  # not a delegation id (a fan-out's), or unreadable: nothing to take
        if record is not None and is_late_handoff(record):
            found[s.id] = record
    return found


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
    # The journal first, then each step's file once (the shape check and the fold share
    # it): a step's file is written before its ``step_finished`` line, so every step the
    # journal read says finished has its file there.
    lines = store.events(run_id)
    step_data = _step_files(store, run_id, order)
    _check_shape(path, meta, step_data)
    steps = {s: StepRun(id=s, agent=_opt_str(entries[s], "agent")) for s in order}
    fold = _Fold(store, run_id, steps, step_data=step_data)
    warnings: list[str] = []
    events: list[dict[str, Any]] = []
    journal = path / "events.jsonl"
    expected = 1  # a file journal numbers its lines: a gap is a line it could not parse
    for line, ev in lines:
        if isinstance(store, FileRunStore):
            for bad in range(expected, line):
                warnings.append(
                    f"`{journal}` line {bad}: skipped: not a JSON event (unreadable "
                    "bytes or text); the line is left as it is."
                )
            expected = line + 1
        try:
            if not isinstance(ev, dict):
                raise _Malformed("not a JSON object")
            _apply(fold, ev)
        except _Malformed as exc:
            warnings.append(
                f"`{journal}` line {line}: event "
                f"{str(ev.get('event') if isinstance(ev, dict) else ev)[:40]!r} skipped: {exc}."
            )
            continue
        events.append(ev)
    meta_id = meta.get("runId")
    view = RunView(
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
    view.damage = journal_damage(store, view, lines, step_data)
    if view.damage is not None:
        warnings.append(view.damage)
    elif isinstance(store, FileRunStore):
        _torn_end(store, view, lines)
    return view


def journal_damage(
    store: RunStore, view: RunView, lines: list[tuple[int, Any]], step_data: dict[str, Any]
) -> str | None:
    """Why ``view``'s journal cannot be trusted, one paragraph naming ``events.jsonl``
    and what to do; None when it can. A journal is damaged when it has no ``run_started``
    event although the run shows it started: the journal has lines, or ``summary.json``
    or a step's ``<step>.json`` (``step_data``) exists (an emptied or deleted journal, or
    a first line lost). A run created a moment ago, whose journal is not yet written, is
    not damaged.
    Replayed, such a journal says every step is pending, and resuming it would send
    finished steps again (docs/workflows.md, "Run records")."""
    if any(isinstance(ev, dict) and ev.get("event") == "run_started" for _, ev in lines):
        return None
    summary = store.read_summary(view.run_id)
    if not lines and summary is None and all(d is None for d in step_data.values()):
        return None
    journal = view.path / "events.jsonl"
    what = "has no `run_started` line" if lines else "is empty or missing"
    kept = f" (its summary says `{summary.get('status')}`)" if summary else ""
    return (
        f"run `{view.run_id}` is damaged: its journal `{journal}` {what}, though the run "
        f"has records{kept}, so its steps' states are unknown and it cannot be resumed "
        "(that would send finished steps again). Its files were left as they are: restore "
        f"`{journal}` from a backup, or start the workflow again"
        + (f" ({_rerun(view.meta)})." if view.meta else ".")
    )


def _rerun(meta: dict[str, Any]) -> str:
    from engine.runs.admin import rerun_command

    return rerun_command(meta)


def _torn_end(store: FileRunStore, view: RunView, lines: list[tuple[int, Any]]) -> None:
    """A journal whose last line was cut mid-write (no newline at its end) while
    ``summary.json`` says the run ended (complete, failed, cancelled) no earlier than the
    journal's last whole event: the summary's status and ``finished_at`` are taken (the
    torn line was its ``run_finished``), with a warning naming the line. A torn line of a
    run that had not ended changes nothing (a crash mid-write: `workflow resume`)."""
    journal = view.path / "events.jsonl"
    try:
        with open(journal, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            torn = fh.read(1) != b"\n"
    except OSError:  # missing or empty
        return
    if not torn or view.state is not RunState.RUNNING:
        return
    summary = store.read_summary(view.run_id)
    status = summary.get("status") if summary else None
    finished = summary.get("finished_at") if summary else None
    if status not in ("complete", "failed", "cancelled") or not isinstance(finished, str):
        return
    last = next((e["at"] for e in reversed(view.events) if isinstance(e.get("at"), str)), None)
    try:
        if last is not None and parse_iso(finished) < parse_iso(last):
            return  # the summary is of an ending before this journal's last event
    except ValueError:
        return
    view.state, view.finished_at = RunState(status), finished
    number = (lines[-1][0] + 1) if lines else 1
    view.warnings.append(
        f"`{journal}` line {number}: cut mid-write (its last line has no end); "
        f"`{view.path / 'summary.json'}` says the run ended `{status}` at {finished}, "
        "which is shown. The journal is left as it is."
    )


def _spent(view: RunView) -> dict[str, list[float]]:
    """Step id -> [usd, tokens] its delegations spent (the journal's ``step_spent``)."""
    out: dict[str, list[float]] = {}
    for ev in view.events:
        if ev.get("event") != "step_spent" or not isinstance(ev.get("step"), str):
            continue
        total = out.setdefault(ev["step"], [0.0, 0.0])
        for i, key in enumerate(("usd", "tokens")):
            value = ev.get(key)
            total[i] += float(value) if isinstance(value, int | float) else 0.0
    return out


def _items(view: RunView) -> dict[str, dict[str, int]]:
    """A ``for_each`` step -> ``{"done": n, "total": N}`` from its journal's items."""
    totals: dict[str, int] = {}
    done: dict[str, set[int]] = {}
    for ev in view.events:
        sid, kind = ev.get("step"), ev.get("event")
        if kind == "step_started" and isinstance(ev.get("items"), int):
            totals[str(sid)] = ev["items"]
        elif kind == "item_started" and isinstance(ev.get("index"), int):
            done.setdefault(str(sid), set()).discard(ev["index"])
        elif kind == "item_finished" and isinstance(ev.get("index"), int):
            done.setdefault(str(sid), set()).add(ev["index"])
    return {s: {"done": len(done.get(s, ())), "total": n} for s, n in totals.items()}


def add_spent(summary: dict[str, Any], spent: dict[str, list[float]]) -> None:
    """Put ``spent`` (``usd`` rounded to 6 places, ``tokens``) on each step that spent
    something and on the run; nothing when nothing was spent."""
    if not spent:
        return
    for sid, (usd, tokens) in spent.items():
        if sid in summary["steps"]:
            summary["steps"][sid]["spent"] = {"usd": round(usd, 6), "tokens": int(tokens)}
    summary["spent"] = {
        "usd": round(sum(v[0] for v in spent.values()), 6),
        "tokens": int(sum(v[1] for v in spent.values())),
    }


def summarize(view: RunView, outputs: dict[str, str] | None = None) -> dict[str, Any]:
    """The content of summary.json for a run: per step its status, agent, attempts,
    duration, confidence, reasons, gate, question, child run, ``items`` (``done`` and
    ``total`` of a ``for_each`` step) and ``spent`` (``usd``, ``tokens``, from the
    handoffs' usage); the run's status, inputs, times, outputs and total ``spent``."""
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
            **({"answered": s.answers} if s.answers else {}),
            "duration_ms": s.duration_ms,
            "confidence": (s.handoff or {}).get("confidence"),
            "delegation_run_id": s.delegation_run_id,
            **({"skip_reason": s.skip_reason} if s.skip_reason else {}),
            **({"error": s.error} if s.error else {}),
            **({"gate": s.gate} if s.gate else {}),
            **({"question": s.question} if s.question else {}),
            **({"child_run_id": s.child_run_id} if s.child_run_id else {}),
        }
    for sid, progress in _items(view).items():
        if sid in steps:
            steps[sid]["items"] = progress
    summary = {
        "runId": view.run_id,
        "workflow": view.meta.get("workflow"),
        "status": view.state.value,
        "caller": view.meta.get("caller"),
        "inputs": view.meta.get("inputs") or {},
        "started_at": started,
        "finished_at": finished,
        "duration_ms": duration,
        "gate_wait_ms": view.gate_wait_ms,
        # an attempt that carries an answer to the agent's question is not a retry
        "retries": sum(max(0, s.attempt - 1 - s.answers) for s in view.steps.values()),
        **({"parent": view.meta["parent"]} if isinstance(view.meta.get("parent"), dict) else {}),
        "steps": steps,
        "outputs": outputs or {},
        **({"warnings": list(view.warnings)} if view.warnings else {}),
    }
    add_spent(summary, _spent(view))
    return summary
