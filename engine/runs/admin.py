"""Admin commands on runs: find, list, show status, decide a gate, cancel.

Each reads the run through replay and writes only journal events (``gate_decided``,
``step_skipped``, ``run_cancelled``) and the summary, through the run store.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import OrchestratorError, RunStateError, UsageError, did_you_mean
from engine.files import check_id, parse_iso
from engine.runs.model import GateDecision, RunView, StepRun
from engine.runs.replay import replay_run, summarize, unsent
from engine.states import RunState, StepState
from engine.store import FileRunStore, RunStore, open_store
from engine.store.file import RUNS_DIR

if TYPE_CHECKING:
    from engine.config import Config


def runs_dir(cfg: Config) -> Path:
    """Where workflow runs live (on the file store)."""
    return cfg.handoffs_dir / RUNS_DIR


def run_dir(cfg: Config, run_id: str, *, store: RunStore | None = None) -> Path:
    """Where run ``run_id`` is (checked to exist in the store)."""
    store = store if store is not None else open_store(cfg)
    check_id(run_id, "workflow run id")
    if not store.run_exists(run_id):
        if isinstance(store, FileRunStore) and store.run_locator(run_id).is_dir():
            raise RunStateError(_missing_meta(store.run_locator(run_id)))
        # Named as `orchestrate show` names the store: the runs directory, or the database.
        local = isinstance(store, FileRunStore)
        where = store.run_locator(run_id).parent if local else store.location
        raise RunStateError(
            f"no workflow run `{run_id}` in `{where}`"
            f"{did_you_mean(run_id, store.list_runs()) or '.'} List runs with `workflow runs`."
        )
    return store.run_locator(run_id)


def workflow_ref(meta: dict[str, Any]) -> str:
    """How a command typed here names run ``meta``'s workflow (``run.json``), shell-quoted:
    as the run was started (its NAME, or the path given while that path still names the
    same file from the current directory), else the absolute path ``workflow_path``; for
    a run recorded before ``started_as``, its path when that exists from here, else its
    name. Every hint that prints a `workflow run`/`workflow test` command uses it."""
    import shlex

    given, path, name = meta.get("started_as"), meta.get("workflow_path"), meta.get("workflow")
    path = path if isinstance(path, str) and path else None
    if isinstance(given, str) and given:
        if not _looks_like_path(given):
            return shlex.quote(given)
        same = path is not None and _resolved(given) == _resolved(path)
        return shlex.quote(given if same or path is None else path)
    if path is not None and Path(path).expanduser().exists():
        return shlex.quote(path)
    return shlex.quote(str(name or path or "NAME"))


def rerun_command(meta: dict[str, Any], flags: str = "") -> str:
    """``workflow run REF`` for a new run of ``meta``'s workflow (``workflow_ref``), with
    `` -i ...`` only when the run had inputs, then ``flags`` (``--server URL``...)."""
    inputs = " -i ..." if meta.get("inputs") else ""
    return f"workflow run {workflow_ref(meta)}{inputs}{flags}"


def resume_inputs(meta: Any) -> str:
    """What a `workflow resume` of the run ``meta`` (its run.json) must give again:
    `` -i NAME=VALUE`` for each input it keeps only masked (``secret_inputs``, sorted;
    engine.runner's ``_real_inputs`` asks for them), or ``""``. Every resume hint a user
    copies carries it; a server that holds the values continues its runs by itself."""
    keys = meta.get("secret_inputs") if isinstance(meta, dict) else None
    if not isinstance(keys, dict):
        return ""
    return "".join(f" -i {name}=VALUE" for name in sorted(keys))


def _looks_like_path(text: str) -> bool:
    """As ``engine.workflow.find_workflow`` tells a path from a name."""
    import os

    return "/" in text or os.sep in text or text.endswith((".yaml", ".yml"))


def _resolved(text: str) -> Path | None:
    try:
        return Path(text).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return None


def decide_gate(
    cfg: Config, run_id: str, step: str, decision: GateDecision, *, store: RunStore | None = None
) -> dict[str, Any]:
    """Record an approval or rejection of a parked gate (then `workflow resume`); the
    ``gate_decided`` event appended.

    ``decision.value`` is what the approval gives a gate with ``input`` (checked against
    its schema: engine.workflow.value_problems); UsageError when it is missing or wrong.
    """
    approved = decision.approved
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
    schema = view.meta["plan"]["steps"][step].get("gate_input")
    given = _gate_value(schema, step, approved, decision.value)
    journal = store.journal(run_id)
    try:
        return journal.append(
            "gate_decided",
            step=step,
            decision="approved" if approved else "rejected",
            by=decision.by,
            reason=decision.reason,
            **given,
        )
    finally:
        journal.close()


def _gate_value(schema: Any, step: str, approved: bool, value: Any) -> dict[str, Any]:
    """``{"input": value}`` for an approval of a gate with ``input``, checked; else ``{}``."""
    if not isinstance(schema, dict):
        if value is not None:
            raise UsageError(f"step `{step}`'s gate asks for no input; leave out `--input`.")
        return {}
    if not approved:
        return {}
    from engine.workflow import value_problems

    problems = (
        ["no value was given (`--input VALUE`)"] if value is None else value_problems(schema, value)
    )
    if problems:
        raise UsageError(
            f"step `{step}`'s gate needs an input matching its schema "
            f"({json.dumps(schema)[:200]}): " + "; ".join(problems),
        )
    return {"input": value}


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
        conclude_cancel(cfg, store, view)
    finally:
        lock.__exit__(None, None, None)
    return RunState.CANCELLED


def conclude_cancel(
    cfg: Config, store: RunStore, view: RunView, *, by: str = "workflow cancel"
) -> None:
    """End run ``view`` ``cancelled`` with no process running it, its claim held by the
    caller (`workflow cancel` of a run no process runs; `workflow resume` of a run whose
    process was stopped before it noticed a cancel request). Each step in flight takes
    its delegation's final record when its agent handed off ``complete`` (the step
    completes with it: a late result, nothing is sent again); otherwise its command
    agents are ended (``end_agents``) and it ends ``cancelled``. Every other unfinished
    step is skipped, the child runs still going are cancelled, the journal gets
    ``run_cancelled`` (``by``) and the summary is rewritten (docs/workflows.md, cancel)."""
    run_id = view.run_id
    journal = store.journal(run_id)
    try:
        flying = [s for s in view.steps.values() if _sent(s)]
        taken = {s.id for s in flying if _take_complete(store, journal, run_id, s)}
        end_agents(cfg, run_id, [s for s in flying if s.id not in taken])
        for s in view.steps.values():
            if not s.state.final and s.id not in taken:
                if s.delegation_run_id:
                    _close_pending(store, s.delegation_run_id)
                if s in flying:  # as a live cancel ends the steps in flight
                    _record_cancelled(store, journal, run_id, s)
                    continue
                journal.append(
                    "step_skipped", step=s.id, reason="the run was cancelled", kind="stopped"
                )
        journal.append("run_cancelled", by=by)
    finally:
        journal.close()
    _cancel_children(cfg, view, store)
    store.write_summary(run_id, summarize(replay_run(store, run_id)))


def _take_complete(store: RunStore, journal: Any, run_id: str, s: Any) -> bool:
    """Step ``s`` in flight completes with its delegation's record when that holds a
    ``complete`` handoff (one still in the inbox is merged first): ``step_late_result``
    then ``step_finished``, as a resume takes a late result. False when there is none
    (a sub-workflow's or ``for_each`` step's, or an agent that has not answered)."""
    from engine.errors import OrchestratorError
    from engine.files import utcnow_iso

    drid = s.delegation_run_id
    if not drid or s.child_run_id or drid.endswith("-items"):
        return False
    try:
        store.deliver(drid, sub=False)
        record = store.read(drid, sub=False)
    except (OrchestratorError, OSError, ValueError):
        return False
    env = (record or {}).get("envelope") or {}
    if record is None or env.get("outcome") != "complete":
        return False
    journal.append(
        "step_late_result",
        step=s.id,
        attempt=s.attempt,
        delegation_run_id=drid,
        previous=s.state.value,
        status="complete",
        late=bool(env.get("late")),
    )
    handoff = {k: v for k, v in record.items() if k != "envelope"}
    ended = dataclasses.replace(
        s, state=StepState.COMPLETE, handoff=handoff, error=None,
        finished_at=utcnow_iso(), in_flight=False,
    )  # fmt: skip
    _record_ended(store, journal, run_id, ended)
    return True


def _sent(s: Any) -> bool:
    """A step whose delegation (or child run) was started and has not ended: a live
    cancel ends it ``cancelled``; any other unfinished step is skipped."""
    return not s.state.final and (
        s.state in (StepState.RUNNING, StepState.QUEUED) or (s.in_flight and s.child_run_id)
    )


def end_agents(cfg: Config, run_id: str, steps: list[Any]) -> list[int]:
    """End the command agents of ``steps`` (a cancelled run's steps in flight) that the
    local gateway of a process now gone started: found by the ``gateway-run.json`` of
    their workspaces (``engine.gateway.agents.end_recorded_runs``: pid and start time
    checked before each signal). The pids signalled."""
    from engine.gateway.agents import end_recorded_runs

    ids: set[str] = set()
    prefixes: list[str] = []
    for s in steps:
        if s.delegation_run_id and not s.child_run_id:
            ids.update((s.delegation_run_id, f"{s.delegation_run_id}-v"))
            if s.delegation_run_id.endswith("-items"):  # items: <run>-<step>-i<index>-<n>
                prefixes.append(f"{run_id}-{s.id}-i")
    if not ids:
        return []
    gw = cfg.gateway
    root = (gw.workspaces_dir if gw is not None else None) or cfg.handoffs_dir / ".workspaces"
    return end_recorded_runs(root, ids, prefixes)


def _record_cancelled(store: RunStore, journal: Any, run_id: str, s: Any) -> None:
    """Record step ``s`` ended ``cancelled`` (its record, then ``step_finished``), as the
    runner records a step in flight when its run is cancelled."""
    from engine.files import utcnow_iso

    error = (
        f"child run `{s.child_run_id}` was cancelled" if s.child_run_id else "the run was cancelled"
    )
    ended = dataclasses.replace(  # the view's step is left as it was (its child is read)
        s, state=StepState.CANCELLED, error=error, finished_at=utcnow_iso(), in_flight=False
    )
    _record_ended(store, journal, run_id, ended, error=error)


def _record_ended(store: RunStore, journal: Any, run_id: str, ended: Any, **fields: Any) -> None:
    """Write the record of step ``ended`` (in its final state), then its ``step_finished``
    event (its status, attempt and delegation, and ``fields``), as the runner does."""
    from engine.runner import _step_record

    store.write_step(run_id, ended.id, _step_record(ended))
    journal.append(
        "step_finished",
        step=ended.id,
        status=ended.state.value,
        attempt=ended.attempt,
        delegation_run_id=ended.delegation_run_id,
        **fields,
    )


def _close_pending(store: RunStore, delegation_run_id: str) -> None:
    """A cancelled run's delegation that a dead process left ``dispatched`` (no record):
    recorded ``cancelled`` as a live cancel does, its pending envelope kept (now
    ``cancelled``) so that a handoff its agent writes later is still merged (``late``).
    Readers (metrics, routing, ``orchestrate show``) no longer count it in flight.
    Nothing is done when a record exists or the envelope is not ``dispatched``."""
    from engine.files import utcnow_iso

    env = store.read_pending(delegation_run_id, sub=False)
    if env is None or env.get("outcome") not in (None, "dispatched"):
        return
    if store.read(delegation_run_id, sub=False) is not None:
        return
    ended = dict(
        env,
        outcome="cancelled",
        ended_at=utcnow_iso(),
        error="the run was cancelled; a later handoff is still recorded (late)",
    )
    target = env.get("target")
    store.finalize(
        delegation_run_id,
        ended,
        sub=False,
        keep_pending=True,
        agent=target if isinstance(target, str) else None,
    )


def _child_line(run_id: str, s: Any, cf: str = "", again: str = "") -> str:
    """Why a sub-workflow step waits: its child run, and what to do (each command with
    ``cf``, as ``run_status`` says; the parent's resume with ``again``,
    ``resume_inputs``)."""
    if s.state in (StepState.WAITING_APPROVAL, StepState.WAITING_INPUT):
        return (
            f"its child run `{s.child_run_id}` is {s.state.value}: see `workflow status "
            f"{s.child_run_id}{cf}`, decide or answer there, then `workflow resume "
            f"{run_id}{again}{cf}`"
        )
    return (
        f"its child run `{s.child_run_id}` is running (`workflow status {s.child_run_id}{cf}`)"
    )


def _cancel_children(cfg: Config, view: Any, store: RunStore) -> None:
    """Cancel the child runs of a parked run's sub-workflow steps that have not ended."""
    for s in view.steps.values():
        if s.child_run_id and not s.state.final and store.run_exists(s.child_run_id):
            try:
                cancel_run(cfg, s.child_run_id, store=store)
            except RunStateError:
                pass  # it has ended meanwhile


#: The second a run id was made in (``engine.files.new_run_id``: ``wf-<yyyymmddThhmmss>-<hex>``).
_STAMP = re.compile(r"-(\d{8}T\d{6})-")


def _second(run_id: str) -> tuple[int, str]:
    """The order of runs started in different seconds: the id's stamp (ids without one,
    by name, after every stamped id)."""
    found = _STAMP.search(run_id)
    return (1, found.group(1)) if found else (0, run_id)


def _created(store: RunStore, run_id: str) -> float:
    """When the run was created (run.json's ``created_at``, milliseconds), as a POSIX
    time; ``-inf`` when run.json does not say (such a run sorts last in its second)."""
    try:
        meta = store.read_run(run_id)
        stamp = meta.get("created_at") if isinstance(meta, dict) else None
        return parse_iso(stamp).timestamp() if isinstance(stamp, str) else -math.inf
    except (OrchestratorError, OSError, ValueError):
        return -math.inf


def runs_newest_first(store: RunStore, *, after: str | None = None) -> Iterator[str]:
    """Every run id of ``store``, newest first; with ``after`` (a page's cursor: the last
    id of the previous page) only those listed after it.

    The order is the run's start: the second in its id, then, among runs started in the
    same second, run.json's ``created_at`` (milliseconds), then the id (so that the order
    is the same on every call). Only the run.json of runs sharing a second are read.
    ``after`` that is no run (deleted meanwhile): the runs of earlier seconds.
    """
    names = sorted(store.list_runs(), key=lambda n: (_second(n), n), reverse=True)
    cut = _second(after) if after is not None else None
    i = 0
    while i < len(names):
        key = _second(names[i])
        j = i + 1
        while j < len(names) and _second(names[j]) == key:
            j += 1
        group = names[i:j]
        i = j
        if cut is not None and (key > cut or (key == cut and after not in group)):
            continue  # on an earlier page
        if len(group) > 1:
            group.sort(key=lambda n: (_created(store, n), n), reverse=True)
        if key == cut:
            group = group[group.index(str(after)) + 1 :]
        yield from group


def _missing_meta(path: Path) -> str:
    """The paragraph for a run directory without its ``run.json``."""
    return (
        f"`{path / 'run.json'}` is missing: the run record was deleted or damaged, so run "
        f"`{path.name}` cannot be shown or resumed. Other runs are not affected; start "
        "this workflow again with `workflow run` (and remove the directory when done "
        "with it)."
    )


def _orphans(store: RunStore) -> list[str]:
    """Run directories of a file store that have no ``run.json`` (deleted or damaged)."""
    if not isinstance(store, FileRunStore):
        return []
    root = store.run_locator("x").parent
    try:
        names = [e.name for e in root.iterdir() if e.is_dir() and _STAMP.search(e.name)]
    except OSError:
        return []
    return [n for n in names if not store.run_exists(n)]


def _damaged_row(rid: str, problem: str, meta: Any = None) -> dict[str, Any]:
    name = meta.get("workflow") if isinstance(meta, dict) else None
    return {
        "runId": rid,
        "workflow": name if isinstance(name, str) else "?",
        "status": "damaged",
        "started_at": None,
        "duration_ms": None,
        "steps": {},
        "problem": problem,
    }


def list_runs(
    cfg: Config,
    *,
    limit: int = 20,
    problems: list[str] | None = None,
    store: RunStore | None = None,
    damaged: bool = False,
) -> list[dict[str, Any]]:
    """Recent runs, newest first (``runs_newest_first``): id, workflow, status, started,
    duration.

    A run whose record is damaged (``run.json`` unusable, or missing from its directory,
    or a journal with no ``run_started``: ``RunView.damage``)
    has its paragraph appended to ``problems``; with ``damaged`` (`workflow runs`) it is
    also listed, with status ``damaged``, ``workflow`` ``"?"`` when unknown, and that
    paragraph as ``problem`` (docs/workflows.md, Run records); else it is left out.
    """
    store = store if store is not None else open_store(cfg)
    rows: list[dict[str, Any]] = []
    for rid in itertools.islice(runs_newest_first(store), limit):
        try:
            view = replay_run(store, rid)
        except OrchestratorError as exc:  # said why; the others still listed
            if problems is not None:
                problems.append(str(exc))
            if damaged:
                rows.append(_damaged_row(rid, str(exc), _meta_of(store, rid)))
            continue
        if view.damage is not None:  # its journal: said why, as a damaged run.json is
            if problems is not None:
                problems.append(view.damage)
            if damaged:
                rows.append(_damaged_row(rid, view.damage, view.meta))
            continue
        row = run_row(view)
        row["workflow"] = str(row["workflow"])  # the CLI's table and JSON show a string
        word = decided(view)
        if word is not None and not store.claimed(rid) and not _served(cfg, rid):
            _add_next(row, view, word)
        rows.append(row)
    for rid in _orphans(store):
        problem = _missing_meta(store.run_locator(rid))
        if problems is not None:
            problems.append(problem)
        if damaged:
            rows.append(_damaged_row(rid, problem))
    rows.sort(key=lambda r: _second(str(r["runId"])), reverse=True)  # stable: order kept
    return rows[:limit]


def _meta_of(store: RunStore, rid: str) -> Any:
    try:
        return store.read_run(rid)
    except (OrchestratorError, OSError, ValueError):
        return None


def run_row(view: RunView) -> dict[str, Any]:
    """One run as run lists show it: ``runId``, ``workflow`` (as run.json says, None
    when it says nothing), ``status``, ``started_at`` (ISO 8601), ``duration_ms`` (float
    ms, None until the run ends) and ``steps`` (how many steps are in each status)."""
    summary = summarize(view)
    counts: dict[str, int] = {}
    for st in summary["steps"].values():
        counts[st["status"]] = counts.get(st["status"], 0) + 1
    return {
        "runId": view.run_id,
        "workflow": view.meta.get("workflow"),
        "status": view.state.value,
        "started_at": view.started_at,
        "duration_ms": summary["duration_ms"],
        "steps": counts,
    }


def _late_hints(
    run_id: str, view: RunView, store: RunStore, summary: dict[str, Any], cf: str = ""
) -> None:
    """For a step whose agent answered after the step ended (timeout, lost, ...): the
    row's ``late_result`` (the handoff's status) and a ``waiting`` line saying that
    ``workflow resume`` takes it (``engine.runs.replay.late_results``; the handoffs were
    merged by ``run_status``'s reconcile, so nothing is delivered here)."""
    from engine.runs.replay import late_results

    if view.state is RunState.CANCELLED:
        return  # a cancelled run is not resumed
    for sid, record in late_results(view, store, deliver=False).items():
        status = record["envelope"]["outcome"]
        row = summary["steps"][sid]
        row["late_result"] = status
        row["waiting"] = (
            f"{row['status']}, but its agent's handoff ({status}) arrived later: "
            f"`workflow resume {run_id}{resume_inputs(view.meta)}{cf}` takes it"
        )


def _served(cfg: Config, run_id: str) -> bool:
    """A live `orchestrate serve` owns the run: it continues it by itself."""
    from engine.serve import run_owner

    return run_owner(cfg.handoffs_dir, run_id) is not None


def decided(view: RunView) -> str | None:
    """How a parked run (``waiting_approval``/``waiting_input``) was decided when nothing
    in it waits for anyone any more, only for `workflow resume`: ``approved``,
    ``rejected`` or ``answered`` (the last decision made since it parked); None when a
    gate or question still waits, a sub-workflow step's child run is parked, or the run
    is not parked. Its ``status`` stays the stored state (engine.states.RunState);
    `workflow status` and `workflow runs` add ``decided`` and ``next``."""
    if view.state not in (RunState.WAITING_APPROVAL, RunState.WAITING_INPUT):
        return None
    for s in view.steps.values():
        if s.child_run_id and s.state in (StepState.WAITING_APPROVAL, StepState.WAITING_INPUT):
            return None
        if s.state is StepState.WAITING_APPROVAL:
            return None
        if s.state is StepState.WAITING_INPUT and (s.question or {}).get("answer") is None:
            return None
    word = None
    for ev in view.events:
        kind = ev.get("event")
        if kind == "run_paused":
            word = None
        elif kind == "gate_decided" and ev.get("decision") in ("approved", "rejected"):
            word = str(ev["decision"])
        elif kind == "step_answered":
            word = "answered"
    return word


def _add_next(row: dict[str, Any], view: RunView, word: str | None, cf: str = "") -> None:
    """``decided`` and ``next`` (the resume command) on a run's row or status, when the
    run waits only for `workflow resume` (``decided``)."""
    if word is not None:
        row["decided"] = word
        row["next"] = f"workflow resume {view.run_id}{resume_inputs(view.meta)}{cf}"


def _no_process(run_id: str, cf: str, again: str = "") -> str:
    """The note of a step that waits in a run no process runs (``again``:
    ``resume_inputs``)."""
    if cf or again:
        return f" (no process is running this run: `workflow resume {run_id}{again}{cf}` it)"
    return " (no process is running this run: `workflow resume` it)"


def unsent_line(gap: dict[str, Any], now: float, *, live: bool = True) -> str:
    """What a step with no delegation out waits for (``engine.runs.replay.unsent``'s
    ``gap``): ``queued for a pool token``, re-attached and waiting for one (a delegation
    dispatched before), or ``waiting to retry: attempt N ...`` (with
    the seconds left, ``now`` being epoch seconds, while a process runs the run)."""
    if gap["why"] == "reattached":
        return (
            "dispatched before and re-attached: waiting for a pool token while its agent "
            "may still work (nothing is sent again)"
        )
    if gap["why"] != "retry":
        return "queued for a pool token (nothing sent yet)"
    n = gap.get("attempt")
    which = f"attempt {n}" if n else "the next attempt"
    line = f"waiting to retry: {which}"
    at = gap.get("at")
    if live and isinstance(at, str):
        left = parse_iso(at).timestamp() + float(gap.get("delay_s") or 0.0) - now
        line += f" in {max(0.0, left):.0f} s"
    if gap.get("after"):
        before = f"attempt {n - 1}" if isinstance(n, int) else "the last attempt"
        line += f" ({before} ended {gap['after']})"
    return line


def run_status(
    cfg: Config, run_id: str, *, store: RunStore | None = None, cf: str = ""
) -> dict[str, Any]:
    """A run's step table, with why each waiting step waits; the commands those lines
    name carry ``cf`` (`` --config PATH`` for a command typed on this host,
    ``engine.cli.common.config_flag``; empty for a server's client). A run whose cancel
    request no process concluded (it ended first) has ``cancel``, the line saying that
    `workflow resume` concludes it, which the lines of its steps in flight carry too."""
    store = store if store is not None else open_store(cfg)
    store.reconcile(sub=False)
    path = run_dir(cfg, run_id, store=store)
    view = replay_run(store, run_id)
    live = store.claimed(run_id)
    summary = summarize(view)
    orphan = not live and not _served(cfg, run_id)
    ended = (RunState.COMPLETE, RunState.FAILED, RunState.CANCELLED)
    pending = orphan and view.state not in ended and store.cancel_requested(run_id)
    again = resume_inputs(view.meta)
    note = f"a cancel is pending: `workflow resume {run_id}{again}{cf}` concludes it"
    now = time.time()
    for sid in view.steps:
        row = summary["steps"][sid]
        waits = _waiting_line(cfg, store, view, sid, row, live=live, cf=cf, now=now)
        if waits is None:
            continue
        row["waiting"], on_process = waits
        if pending and on_process:  # its process ended before it noticed the request
            row["waiting"] += f" ({note})"
        elif orphan and on_process:
            row["waiting"] += _no_process(run_id, cf, again)
    _late_hints(run_id, view, store, summary, cf)
    if view.damage is not None:  # its journal: the steps' states are not known
        summary["status"], summary["problem"] = "damaged", view.damage
    elif pending:
        summary["cancel"], summary["next"] = note, f"workflow resume {run_id}{again}{cf}"
    elif orphan:
        _add_next(summary, view, decided(view), cf)
    summary["run_dir"] = str(path)
    summary["live"] = live
    return summary


def _waiting_line(
    cfg: Config,
    store: RunStore,
    view: RunView,
    sid: str,
    row: dict[str, Any],
    *,
    live: bool,
    cf: str,
    now: float,
) -> tuple[str, bool] | None:
    """What step ``sid`` of ``view`` waits for (``workflow status``'s ``waiting``) and
    whether only a process running the run moves it on (True: queued, retrying or
    running), or None when it waits for nothing; may add ``progress`` to ``row``.
    ``now`` is epoch seconds; ``live`` says a process runs the run."""
    s = view.steps[sid]
    if s.child_run_id:
        again = resume_inputs(view.meta)
        return None if s.state.final else (_child_line(view.run_id, s, cf, again), False)
    gap = unsent(view, sid)
    if gap is not None or s.state is StepState.QUEUED:
        return unsent_line(gap or {"why": "queued"}, now, live=live), True
    if s.state is StepState.RUNNING:
        return _running_line(cfg, store, s, row, now), True
    if s.state is StepState.WAITING_APPROVAL:
        return (
            f"at its approval gate: `workflow approve {view.run_id} {sid}{cf}` or "
            f"`workflow reject {view.run_id} {sid} --reason ...{cf}`"
        ), False
    if s.state is StepState.WAITING_INPUT:
        from engine.ask import waiting_line

        return waiting_line(view.run_id, sid, s.question, cf, resume_inputs(view.meta)), False
    if (
        s.state is StepState.PENDING
        and (s.gate or {}).get("decision") == "approved"
        and not live
        and not _served(cfg, view.run_id)
    ):  # decided while no process runs the run: nothing sends it until a resume
        by = (s.gate or {}).get("by")
        return (
            f"approved{f' by {by}' if by else ''}; no process is running this run: "
            f"continue it with `workflow resume {view.run_id}{resume_inputs(view.meta)}{cf}`"
        ), False
    return None


def _running_line(
    cfg: Config, store: RunStore, s: StepRun, row: dict[str, Any], now: float
) -> str:
    """How long running step ``s`` has waited on its agent (of the delegation's timeout,
    from its pending envelope) and the agent's last progress line, which also goes to
    ``row["progress"]``; ``being dispatched`` before its dispatch is journaled."""
    if not s.dispatched_at:
        return "being dispatched"
    waited = now - parse_iso(s.dispatched_at).timestamp()
    env = store.read_pending(s.delegation_run_id, sub=False) if s.delegation_run_id else None
    limit = env.get("timeout_s") if env is not None else None
    of = f" of {limit:g} s" if isinstance(limit, int | float) else ""
    line = f"waiting on `{s.agent}` for {waited:.0f} s{of}"
    from engine.liveness import latest_progress

    said = latest_progress(cfg.handoffs_dir, str(s.delegation_run_id))
    if said is not None:
        row["progress"] = said
        age = f" {said['age_s']:.0f} s ago" if said["age_s"] is not None else ""
        line += f'; said "{said["text"]}"{age}'
    return line
