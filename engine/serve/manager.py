"""The runs the server owns: it starts them, continues them, and picks them up again.

One ``RunManager`` per server. Each workflow run it executes has one driver thread that
calls ``WorkflowRunner.start`` and then, whenever a gate of the run is decided (through
the API or by ``workflow approve`` beside the server), ``WorkflowRunner.resume`` again: a
decision continues the run at once. A decision that arrives while the run still executes
other steps is kept and acted on when that stretch ends. A gate with ``timeout`` and
``default`` needs no decision: the gate clock (one thread) continues the run when the
timeout passes, and ``WorkflowRunner.resume`` records the default (``by: timeout``).

What the server started is listed in ``<handoffs_dir>/serve/<run-id>.json`` (who started
it, and for a delegation the request), so that after a crash or a restart it resumes its
runs from their journals and re-attaches its delegations by run id: nothing is sent twice.

The inputs ``run.json`` keeps masked (a secret in them) are held in memory for the runs
this process started, so a decision continues such a run with their real values. After a
restart they are gone (and a run a CLI started never had them here): a rejected gate
ends such a run as usual, and nothing else ends it for this. A decision or an answer is
kept in its journal, and a run that was executing when the server stopped is left as it
is: it waits for those inputs (``waiting_for_inputs``, ``inputs_missing`` in its
``serve/<run>.json``) until ``resume`` gets them (``POST /v1/runs/{id}/resume`` with
``inputs``; without them it answers 400 at once) or a ``workflow resume -i`` takes it
over.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.delegate import DelegationRequest, DelegationResult, Delegator
from engine.errors import (
    AclDeniedError,
    OrchestratorError,
    RunStateError,
    UsageError,
)
from engine.files import check_id, parse_iso, utcnow_iso, write_json_atomic
from engine.idempotency import IdempotencyConflict, IdempotencyKeys
from engine.record import pending_path, read_json
from engine.redact import secret_input_names
from engine.reporter import Reporter
from engine.runner import (
    RunOptions,
    RunState,
    SecretInputsMissing,
    StepState,
    WorkflowRunner,
    prepare,
)
from engine.runs import (
    GateDecision,
    cancel_run,
    decide_gate,
    gate_waiting_since,
    replay,
    replay_run,
)

log = logging.getLogger("engine.serve")

OWNED_DIR = "serve"
START_TIMEOUT = 60.0
GATE_SLACK = 0.05  # seconds past a gate's timeout before the clock continues its run


class NotFoundError(RunStateError):
    """Raised when a run or delegation id names nothing the server can find."""


class RefusedError(AclDeniedError):
    """Raised when a token may not do what it asks (its role, a gate's approvers)."""


@dataclass
class _Driver:
    """The driver thread of one run: ``again`` asks it to resume once more."""

    again: bool = False


@dataclass
class Observer:
    """What the server watches besides the journals (metrics, the event feed)."""

    wake: Callable[[str | None], None] = lambda run_id: None
    publish: Callable[..., None] = lambda run_id, kind, **f: None
    step_finished: Callable[[str, str, float | None], None] = lambda agent, status, ms: None
    delegation_finished: Callable[[str, str, float | None], None] = lambda a, o, ms: None
    extra: dict[str, Any] = field(default_factory=dict)


class _RunReporter(Reporter):
    """Wakes the event feed at each workflow event and learns the run id at the start."""

    def __init__(self, manager: RunManager, started: Future[str] | None) -> None:
        self.manager = manager
        self.started = started
        self.run_id: str | None = None

    def event(self, kind: str, **fields: Any) -> None:
        if kind == "run_started" and self.run_id is None:
            self.run_id = str(fields["run_id"])
            if self.started is not None and not self.started.done():
                self.manager._adopt(self.run_id)
                self.started.set_result(self.run_id)
        elif kind == "step_finished":
            duration = fields.get("duration_ms")
            self.manager.observer.step_finished(
                str(fields.get("agent") or "?"),
                str(fields.get("status")),
                float(duration) if isinstance(duration, int | float) else None,
            )
        self.manager.observer.wake(self.run_id)


class _DelegationReporter(Reporter):
    """Puts a delegation's dispatch and retries on the live feed."""

    def __init__(self, manager: RunManager) -> None:
        self.manager = manager

    def event(self, kind: str, **fields: Any) -> None:
        if kind in ("delegation_dispatched", "delegation_retry", "pool_waiting"):
            run_id = str(fields.pop("run_id", "") or "")
            self.manager.observer.publish(run_id, kind, **fields)


class RunManager:
    """Executes workflow runs and delegations inside the server process."""

    def __init__(
        self,
        cfg: Config,
        delegator: Delegator,
        *,
        max_parallel: int = 4,
        self_approval: bool = True,
        observer: Observer | None = None,
    ) -> None:
        self.cfg = cfg
        self.delegator = delegator
        self.max_parallel = max_parallel
        self.self_approval = self_approval
        self.observer = observer or Observer()
        self.keys = IdempotencyKeys(cfg.handoffs_dir)
        self.owned_dir = cfg.handoffs_dir / OWNED_DIR
        self._lock = threading.Lock()
        self._drivers: dict[str, _Driver] = {}
        self._pending_owner: dict[str, Any] = {}
        # run id -> the real values of the inputs its run.json keeps masked (memory only)
        self._pending_inputs: dict[str, dict[str, Any]] = {}
        self._secret_inputs: dict[str, dict[str, Any]] = {}
        self._cancels: dict[str, threading.Event] = {}
        self._errors: dict[str, str] = {}
        self._threads: list[threading.Thread] = []
        self._gate_due: dict[str, float] = {}  # run id -> epoch seconds of its next timeout
        self._gate_wake = threading.Condition(self._lock)
        self._gate_clock: threading.Thread | None = None

    # -- ownership ------------------------------------------------------------------------

    def _owned_path(self, run_id: str) -> Path:
        return self.owned_dir / f"{check_id(run_id, 'run id')}.json"

    def owned(self, run_id: str) -> dict[str, Any] | None:
        """What the server recorded when it started ``run_id`` (None: not started here)."""
        data = read_json(self._owned_path(run_id))
        return data if isinstance(data, dict) else None

    def _own(self, run_id: str, entry: dict[str, Any]) -> None:
        self.owned_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self._owned_path(run_id), {"runId": run_id, **entry})

    def _adopt(self, run_id: str) -> None:
        """Called in the driver thread as a new run starts: record it, register its driver."""
        with self._lock:
            entry = self._pending_owner.pop(threading.current_thread().name, {})
            held = self._pending_inputs.pop(threading.current_thread().name, None)
            if held:
                self._secret_inputs[run_id] = held
            self._drivers[run_id] = _Driver()
        self._own(run_id, {"kind": "workflow", "created_at": utcnow_iso(), **entry})

    # -- workflow runs --------------------------------------------------------------------

    def start_workflow(
        self,
        workflow: str,
        inputs: dict[str, str],
        *,
        by: str,
        caller: str | None = None,
        key: str | None = None,
        approve: tuple[str, ...] = (),
        approve_all: bool = False,
    ) -> tuple[str, bool]:
        """Plan and start a run; return ``(run id, created)`` once it has started.

        With ``key`` a second call returns the first call's run (``created`` False).
        Every planner error is raised here, before anything runs.
        """
        prepared = prepare(self.cfg, workflow, inputs, caller=caller)
        self._check_preapproval(prepared, workflow, by, approve, approve_all)
        request = {
            "workflow": workflow,
            "inputs": inputs,
            "caller": caller,
            "approve": approve,
            "approve_all": approve_all,
        }
        if key is not None:
            claim = self.keys.claim("workflow", key, request, run_id="")
            if not claim.new:
                if claim.run_id is None:
                    raise IdempotencyConflict(
                        f"idempotency key {key!r}: its run is starting right now; retry."
                    )
                return claim.run_id, False
        options = RunOptions(
            caller=caller,
            max_parallel=self.max_parallel,
            approve=frozenset(approve),
            approve_all=approve_all,
        )
        started: Future[str] = Future()
        reporter = _RunReporter(self, started)
        name = f"serve-run-{id(reporter):x}"
        inputs = prepared.plan.inputs
        held = {k: inputs[k] for k in secret_input_names(inputs, prepared.spec.secret_inputs)}
        with self._lock:
            self._pending_owner[name] = {
                "by": by,
                "workflow": workflow,
                "key": key,
            }
            if held:
                self._pending_inputs[name] = held

        def first(runner: WorkflowRunner) -> Any:
            return runner.start(prepared, options)

        self._spawn(name, lambda: self._drive(first, reporter, started))
        try:
            run_id = started.result(timeout=START_TIMEOUT)
        except OrchestratorError:
            with self._lock:
                self._pending_owner.pop(name, None)
                self._pending_inputs.pop(name, None)
            if key is not None:
                self.keys.release("workflow", key)
            raise
        except TimeoutError:
            raise RunStateError(
                f"the run of `{workflow}` did not start within {START_TIMEOUT:.0f} s; see "
                "`GET /v1/runs` and the server's log."
            ) from None
        if key is not None:
            self.keys.bind("workflow", key, run_id)
        return run_id, True

    def _check_preapproval(
        self,
        prepared: Any,
        workflow: str,
        by: str,
        approve: tuple[str, ...],
        approve_all: bool,
    ) -> None:
        """Refuse (``RefusedError``, HTTP 403, exit 5) approving a gate up front that
        ``by`` could not decide once the run parks there (``refusal``: its ``approvers``,
        ``serve.self_approval``); a step that names no gate is ``check_approvals``'s."""
        from engine.prepare import check_approvals

        check_approvals(prepared.plan, approve)
        for sid, ps in prepared.plan.steps.items():
            gate = ps.spec.gate
            if gate is None or not (approve_all or sid in approve):
                continue
            why = self.refusal(sid, by, gate.approvers, by, f"the run of `{workflow}`")
            if why is not None:
                given = "`approve_all`" if approve_all else f"`approve: [{sid}]`"
                raise RefusedError(
                    f"{given} refused: it would decide the gate of `{sid}`, and {why} Start "
                    "the run without it; the gate waits for an allowed operator."
                )

    def refusal(
        self, step: str, by: str, approvers: tuple[str, ...], starter: Any, run: str
    ) -> str | None:
        """Why ``by`` may not decide the gate of ``step`` in ``run`` (words for a message),
        else None. The rules of docs/serve.md: a gate's ``approvers`` (token names) and
        ``serve.self_approval: false`` (``starter``, who started the run, may not).
        Decisions (``decide``) and approvals given at the start (``start_workflow``)
        both ask here."""
        if approvers and by not in approvers:
            names = ", ".join(f"`{a}`" for a in approvers)
            return (
                f"`{by}` may not decide the gate of `{step}` in {run}: its approvers are {names}."
            )
        if not self.self_approval and starter == by:
            return (
                f"`{by}` started {run} and may not decide its own gate "
                "(`serve.self_approval: false`); ask another operator."
            )
        return None

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)
        t.start()

    def _drive(
        self,
        first: Callable[[WorkflowRunner], Any],
        reporter: _RunReporter,
        started: Future[str] | None,
    ) -> None:
        runner = WorkflowRunner(self.cfg, self.delegator, reporter=reporter)
        act = first
        while True:
            try:
                try:
                    act(runner)
                except SecretInputsMissing as exc:
                    if reporter.run_id is None:
                        raise
                    self._without_secrets(runner, reporter.run_id, exc)
            except OrchestratorError as exc:
                if started is not None and not started.done():
                    started.set_exception(exc)
                if reporter.run_id:
                    self._errors[reporter.run_id] = str(exc)
                    log.warning("run %s: %s", reporter.run_id, exc)
            except Exception as exc:  # a bug: keep the server up, say which run
                log.exception("run %s broke", reporter.run_id)
                if started is not None and not started.done():
                    started.set_exception(RunStateError(f"the run could not start: {exc}"))
                if reporter.run_id:
                    self._errors[reporter.run_id] = f"internal error: {exc}"
            rid = reporter.run_id
            if rid is None or not self._again(rid):
                break
            act = self._resumer(rid)
        if reporter.run_id:
            self._schedule_gate(reporter.run_id)
        self.observer.wake(reporter.run_id)

    def _again(self, run_id: str) -> bool:
        """After a stretch: True to resume once more (a decision came meanwhile), else
        retire the driver. Only a journal that needs it is resumed: one decision seen
        twice (API and feed) runs the run once."""
        while True:
            with self._lock:
                driver = self._drivers.get(run_id)
                if driver is None:
                    return False
                if not driver.again:
                    del self._drivers[run_id]
                    return False
                driver.again = False
            try:
                if self.needs_resume(run_id):
                    return True
            except OrchestratorError:
                pass
            except Exception:  # a bug: the driver must still retire (else kicks pile up)
                log.exception("run %s: cannot tell whether it goes on", run_id)

    def needs_resume(self, run_id: str) -> bool:
        """True when the journal says the run should go on: it was executing when its
        process died, or a gate was decided or a question answered since it parked."""
        view = replay(self.run_path(run_id), store=self.delegator.store)
        if view.state is RunState.RUNNING:
            return True
        if view.state not in (RunState.WAITING_APPROVAL, RunState.WAITING_INPUT):
            return False
        steps = view.steps.values()
        parked = (StepState.WAITING_APPROVAL, StepState.WAITING_INPUT)
        due = gate_due(view.meta, view.events, steps)
        return (
            any(s.gate and s.state is StepState.PENDING for s in steps)
            or any(
                s.state is StepState.WAITING_INPUT and (s.question or {}).get("answer") is not None
                for s in steps
            )
            or not any(s.state in parked for s in steps)
            or (due is not None and due <= time.time())
        )

    # -- gate timeouts --------------------------------------------------------------------

    def _schedule_gate(self, run_id: str) -> None:
        """Remember when the earliest gate timeout of a parked run passes; the gate clock
        continues the run then (``WorkflowRunner.resume`` applies the gate's ``default``).
        Not while the run waits for its secret inputs (``waiting_for_inputs``): the
        default is applied once ``resume`` gets them."""
        try:
            view = replay(self.run_path(run_id), store=self.delegator.store)
            waiting = bool(self.waiting_for_inputs(run_id))
        except OrchestratorError:
            return
        due = None
        if view.state is RunState.WAITING_APPROVAL and not waiting:
            due = gate_due(view.meta, view.events, view.steps.values())
        with self._lock:
            if due is None:
                self._gate_due.pop(run_id, None)
                return
            self._gate_due[run_id] = due
            if self._gate_clock is None or not self._gate_clock.is_alive():
                self._gate_clock = threading.Thread(
                    target=self._tick, name="serve-gate-clock", daemon=True
                )
                self._gate_clock.start()
            self._gate_wake.notify_all()

    def _tick(self) -> None:
        """The gate clock: sleeps until the next gate timeout, then kicks that run."""
        while True:
            with self._lock:
                now = time.time()
                ready = [r for r, at in self._gate_due.items() if at + GATE_SLACK <= now]
                for r in ready:
                    del self._gate_due[r]
                if not ready:
                    nxt = min(self._gate_due.values(), default=None)
                    self._gate_wake.wait(None if nxt is None else nxt + GATE_SLACK - now)
                    continue
            for r in ready:
                try:
                    self.kick(r)
                except OrchestratorError as exc:
                    log.warning("gate timeout of %s: %s", r, exc)

    def _resumer(self, run_id: str, *, check: bool = False) -> Callable[[WorkflowRunner], Any]:
        def act(runner: WorkflowRunner) -> Any:
            if check and not self.needs_resume(run_id):
                return None
            if self.waiting_for_inputs(run_id) and self.delegator.store.claimed(run_id):
                return None  # `workflow resume -i` took it over: it continues it
            with self._lock:
                held = self._secret_inputs.get(run_id)
            # the gates approved at the start come back from run.json (runner.resume)
            return runner.resume(run_id, RunOptions(max_parallel=self.max_parallel), inputs=held)

        return act

    def _without_secrets(
        self, runner: WorkflowRunner, run_id: str, exc: SecretInputsMissing
    ) -> None:
        """A run to continue whose secret inputs this process does not hold (it was
        started before a restart, or by a CLI): a rejected gate ends it as usual (what
        still runs, its ``finally`` steps, gets the masked text). Otherwise it is never
        ended for this: it stays as it is (in flight, or parked with the decision or
        answer kept in its journal) and waits for those inputs: ``inputs_missing`` in
        its ``serve/<run>.json`` (``waiting_for_inputs``; ``app.run_doc`` gives
        ``missing_inputs_paragraph`` as its error), until ``resume`` gets them or a
        ``workflow resume -i`` takes it over."""
        store = self.delegator.store
        view = replay_run(store, run_id)
        if any(s.gate and s.state is StepState.REJECTED for s in view.steps.values()):
            runner.resume(run_id, RunOptions(max_parallel=self.max_parallel), masked=True)
            return
        if view.state in (RunState.COMPLETE, RunState.FAILED, RunState.CANCELLED):
            return
        # in flight when the server stopped (its agents may still answer), or parked
        # the run's `error` says so while it waits (app.run_doc, from the mark): not
        # kept in `_errors`, so a `workflow resume -i` that ends the run leaves none
        self._own(run_id, {**(self.owned(run_id) or {}), "inputs_missing": exc.names})
        self._errors.pop(run_id, None)
        log.warning("run %s: %s", run_id, missing_inputs_paragraph(run_id, exc.names))

    def kick(self, run_id: str) -> bool:
        """Continue ``run_id`` now (or once its current stretch ends); False if not ours."""
        if self.owned(run_id) is None:
            return False
        with self._lock:
            driver = self._drivers.get(run_id)
            if driver is not None:
                driver.again = True
                return True
            self._drivers[run_id] = _Driver()
        reporter = _RunReporter(self, None)
        reporter.run_id = run_id
        self._spawn(
            f"serve-resume-{run_id[-8:]}",
            lambda: self._drive(self._resumer(run_id, check=True), reporter, None),
        )
        return True

    def in_flight(self) -> int:
        """How many runs and delegations this server's threads still work on (a driver
        thread parked at a gate has ended: a parked run is not counted)."""
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()]
            return len(self._threads)

    def executing(self, run_id: str) -> bool:
        """True while a driver thread of this server works on the run."""
        with self._lock:
            return run_id in self._drivers

    def last_error(self, run_id: str) -> str | None:
        """The error that stopped the server's last attempt to run it, if any."""
        return self._errors.get(run_id)

    def on_event(self, run_id: str, ev: dict[str, Any]) -> None:
        """The event feed saw a journal event: a decision or an answer continues a run."""
        if ev.get("event") in ("gate_decided", "step_answered"):
            try:
                self.kick(run_id)
            except OrchestratorError:
                pass

    def decide(self, run_id: str, step: str, decision: GateDecision) -> dict[str, Any]:
        """Approve or reject a parked gate as ``decision.by``; the run continues at once.

        ``decision.value`` is the input a gate with ``input`` asks for (any JSON value), checked
        against its schema by ``engine.runs.decide_gate``; UsageError (HTTP 400) when it is
        missing or does not match, and the gate keeps waiting."""
        path = self.run_path(run_id)
        view = replay(path, store=self.delegator.store)
        planned = ((view.meta.get("plan") or {}).get("steps") or {}).get(step) or {}
        by = decision.by
        needs_value = isinstance(planned.get("gate_input"), dict)
        if decision.approved and decision.value is None and needs_value:
            raise UsageError(
                f"step `{step}`'s gate needs an input matching its schema "
                f"({json.dumps(planned['gate_input'])[:200]}): give it as `input` in the "
                'request body, e.g. {"input": ...} (`workflow approve --server URL RUN STEP '
                "--input VALUE`)."
            )
        owner = self.owned(run_id) or {}
        why = self.refusal(
            step, by, self._approvers(view.meta, step), owner.get("by"), f"run `{run_id}`"
        )
        if why is not None:
            raise RefusedError(why)
        event = decide_gate(self.cfg, run_id, step, decision)
        if not owner:  # a parked run of the CLI: the server continues it from now on
            self._own(run_id, {"kind": "workflow", "adopted_by": by, "adopted_at": utcnow_iso()})
        self.kick(run_id)
        self.observer.wake(run_id)
        return event

    def answer(
        self, run_id: str, step: str, text: str, *, by: str, replace: bool = False
    ) -> dict[str, Any]:
        """Answer the question a step's agent asked, as ``by``; the run continues at once.
        A question answered already is refused (RunStateError) unless ``replace``."""
        from engine.ask import answer_step

        self.run_path(run_id)
        event = answer_step(self.cfg, run_id, step, text, by=by, replace=replace)
        if self.owned(run_id) is None:
            self._own(run_id, {"kind": "workflow", "adopted_by": by, "adopted_at": utcnow_iso()})
        self.kick(run_id)
        self.observer.wake(run_id)
        return event

    def answer_delegation(self, run_id: str, text: str, *, by: str) -> str:
        """Answer a delegation's question: it continues as a new delegation (returned)."""
        from engine.ask import answer_delegation

        self.delegation(run_id)
        started: Future[str] = Future()
        cancel = threading.Event()
        manager = self

        class _First(_DelegationReporter):
            def event(self, kind: str, **fields: Any) -> None:
                rid = fields.get("run_id")
                if isinstance(rid, str) and not started.done():
                    with manager._lock:
                        manager._cancels[rid] = cancel
                    started.set_result(rid)
                super().event(kind, **fields)

        def work() -> None:
            t0 = time.monotonic()
            try:
                result = answer_delegation(
                    self.delegator, run_id, text, by=by, reporter=_First(self)
                )
            except OrchestratorError as exc:
                if not started.done():
                    started.set_exception(exc)
                return
            except Exception as exc:  # a bug: keep the server up
                log.exception("answer to %s broke", run_id)
                if not started.done():
                    started.set_exception(RunStateError(f"the answer could not be sent: {exc}"))
                return
            if not started.done():
                started.set_result(result.run_id)
            with self._lock:
                self._cancels.pop(result.run_id, None)
            self.observer.delegation_finished(
                str(result.envelope.get("target") or "?"),
                result.outcome.value,
                (time.monotonic() - t0) * 1000,
            )
            self.observer.publish(
                result.run_id, "delegation_finished", outcome=result.outcome.value
            )
            if result.outcome.value == "blocked":
                self._escalate(result.run_id, result.record, result.envelope)

        self._spawn(f"serve-answer-{run_id[-8:]}", work)
        try:
            continuation = started.result(timeout=START_TIMEOUT)
        except TimeoutError:
            raise RunStateError(f"the answer to `{run_id}` was not sent within 60 s.") from None
        sub = self.delegator.records_dir(sub=True)
        env = read_json(pending_path(self.delegator.records_dir(sub=False), continuation))
        env = env if isinstance(env, dict) else read_json(pending_path(sub, continuation))
        env = env if isinstance(env, dict) else {}
        request = {
            "target": env.get("target"),
            "caller": env.get("caller"),
            "task": env.get("task"),
            "timeout": env.get("timeout_s"),
            "parent_run_id": env.get("parent_run_id"),
            "run_id": continuation,
        }
        self._own(
            continuation, {"kind": "delegation", "by": by, "answers": run_id, "request": request}
        )
        return continuation

    def _escalate(
        self, run_id: str, record: dict[str, Any] | None, envelope: dict[str, Any]
    ) -> None:
        """A child delegation (``parent_run_id`` set) that ends ``blocked`` escalates to its
        parent: ``child_escalated`` on the parent's id in the event feed, with the child's
        question (answer it with ``POST /v1/delegations/{child}/answer``). Seed 003's
        ``reply-parent``."""
        from engine.ask import question_of

        parent = envelope.get("parent_run_id")
        if not isinstance(parent, str) or not parent:
            return
        question = question_of(record)
        self.observer.publish(
            parent,
            "child_escalated",
            child=run_id,
            target=envelope.get("target"),
            request_kind="question" if question else "blocked",
            question=question,
            reason=None if question else (record or {}).get("result"),
        )

    def tree(self, run_id: str) -> dict[str, Any]:
        """The delegation tree under ``run_id`` (``engine.record.delegation_tree``): each
        node's outcome and children; a blocked child's question is in ``question``."""
        from engine.ask import question_of
        from engine.record import delegation_tree

        check_id(run_id, "run id")
        root = delegation_tree(self.cfg.handoffs_dir, run_id)
        if root is None:
            raise NotFoundError(f"no delegation `{run_id}` in `{self.cfg.handoffs_dir}`.")
        stack = [root]
        while stack:
            node = stack.pop()
            stack.extend(node["children"])
            if node.get("outcome") == "blocked":
                rec = read_json(self.delegator.records_dir(sub=True) / f"{node['run_id']}.json")
                if not isinstance(rec, dict):
                    rec = read_json(self.cfg.handoffs_dir / f"{node['run_id']}.json")
                node["question"] = question_of(rec if isinstance(rec, dict) else None)
        return root

    def _approvers(self, meta: dict[str, Any], step: str) -> tuple[str, ...]:
        from engine.workflow import load_workflow

        path = meta.get("workflow_path")
        if not isinstance(path, str):
            return ()
        try:
            spec = load_workflow(Path(path))
        except OrchestratorError:
            return ()
        for s in spec.steps:
            if s.id == step and s.gate is not None:
                return s.gate.approvers
        return ()

    def cancel(self, run_id: str) -> RunState:
        """Cancel a workflow run (a running stretch stops within a fraction of a second)."""
        self.run_path(run_id)
        state = cancel_run(self.cfg, run_id)
        self.observer.wake(run_id)
        return state

    def resume(self, run_id: str, *, by: str, inputs: dict[str, Any] | None = None) -> None:
        """Take over a run no process executes (one started by a CLI that died), or
        continue one that waits for its secret inputs (``waiting_for_inputs``) with
        ``inputs``, each checked against the keyed hash in its run.json. UsageError (HTTP
        400; nothing changes then) for a wrong or unknown one, and for a missing one: a
        secret input of the run (``secret_inputs`` in its run.json) that neither
        ``inputs`` nor this process holds, with ``missing_inputs_paragraph`` (a run with a
        rejected gate needs none: it only ends, its ``finally`` steps get the masked
        text). The values are held in memory only, as for a run this server started."""
        from engine.runner import _check_given_inputs, _real_inputs

        path = self.run_path(run_id)
        view = replay(path, store=self.delegator.store)
        if view.state in (RunState.COMPLETE, RunState.FAILED, RunState.CANCELLED):
            raise RunStateError(f"run `{run_id}` has already ended ({view.state.value}).")
        given = dict(inputs or {})
        with self._lock:
            held = {**(self._secret_inputs.get(run_id) or {}), **given}
        keys = view.meta.get("secret_inputs")
        missing = sorted(n for n in (keys if isinstance(keys, dict) else {}) if n not in held)
        rejected = any(s.gate and s.state is StepState.REJECTED for s in view.steps.values())
        try:
            _check_given_inputs(run_id, view.meta, given)
            if missing and not rejected:
                raise UsageError(missing_inputs_paragraph(run_id, missing))
            if given:
                _real_inputs(run_id, view.meta, held, rejected)
        except RunStateError as exc:
            raise UsageError(str(exc)) from None
        if given:
            with self._lock:
                self._secret_inputs[run_id] = held
                self._errors.pop(run_id, None)
        entry = self.owned(run_id)
        if entry is None:
            self._own(run_id, {"kind": "workflow", "by": by, "adopted_at": utcnow_iso()})
        elif not missing and "inputs_missing" in entry:
            self._own(run_id, {k: v for k, v in entry.items() if k != "inputs_missing"})
        self.kick(run_id)

    def waiting_for_inputs(self, run_id: str) -> list[str]:
        """The secret inputs this server needs to continue ``run_id`` (it was in flight
        when the server stopped, and the values went with that process): ``[]`` when
        none. Kept as ``inputs_missing`` in ``serve/<run>.json``."""
        names = (self.owned(run_id) or {}).get("inputs_missing")
        return [str(n) for n in names] if isinstance(names, list) else []

    def run_path(self, run_id: str) -> Path:
        """The directory of a workflow run, or NotFoundError."""
        check_id(run_id, "run id")
        store = self.delegator.store  # the file store's <handoffs>/workflows/<run>
        path = store.run_locator(run_id)
        if not store.run_exists(run_id):
            raise NotFoundError(f"no workflow run `{run_id}` in `{path.parent}`.")
        return path

    # -- delegations ----------------------------------------------------------------------

    def start_delegation(
        self,
        req: DelegationRequest,
        *,
        by: str,
        key: str | None = None,
    ) -> tuple[str, bool]:
        """Check and start one delegation; return ``(run id, created)`` at once."""
        self.delegator.check(req)
        request = _request_dict(req)
        if key is not None:
            claim = self.keys.claim("delegate", key, {k: request[k] for k in _KEYED})
            if not claim.new and claim.run_id:
                return claim.run_id, False
            run_id = str(claim.run_id)
        else:
            from engine.files import new_run_id

            run_id = new_run_id()
        self._own(
            run_id,
            {
                "kind": "delegation",
                "by": by,
                "key": key,
                "request": {**request, "run_id": run_id},
                "created_at": utcnow_iso(),
            },
        )
        self._launch_delegation(DelegationRequest(**{**request, "run_id": run_id}), False)
        return run_id, True

    def _launch_delegation(self, req: DelegationRequest, reattach: bool) -> None:
        cancel = threading.Event()
        run_id = str(req.run_id)
        with self._lock:
            self._cancels[run_id] = cancel

        def work() -> None:
            self.observer.publish(
                run_id,
                "delegation_started",
                target=req.target,
                caller=req.caller,
                reattached=reattach,
            )
            t0 = time.monotonic()
            try:
                result: DelegationResult = self.delegator.delegate(
                    req, reattach=reattach, cancel=cancel, reporter=_DelegationReporter(self)
                )
                outcome = result.outcome.value
            except OrchestratorError as exc:
                outcome = "errored"
                self._errors[run_id] = str(exc)
            except Exception as exc:  # a bug: keep the server up
                log.exception("delegation %s broke", run_id)
                outcome = "errored"
                self._errors[run_id] = f"internal error: {exc}"
            finally:
                with self._lock:
                    self._cancels.pop(run_id, None)
            self.observer.delegation_finished(req.target, outcome, (time.monotonic() - t0) * 1000)
            self.observer.publish(run_id, "delegation_finished", target=req.target, outcome=outcome)
            if outcome == "blocked":
                self._escalate(run_id, result.record, result.envelope)

        self._spawn(f"serve-deleg-{run_id[-8:]}", work)

    def delegation(self, run_id: str) -> dict[str, Any]:
        """A delegation's state: its record when it ended, else its pending envelope."""
        check_id(run_id, "run id")
        store = self.delegator.store
        for sub in (False, True):
            record = store.read(run_id, sub=sub)
            if isinstance(record, dict) and isinstance(record.get("envelope"), dict):
                env = record["envelope"]
                return {
                    "runId": run_id,
                    "status": env.get("outcome"),
                    "done": env.get("outcome") not in (None, "dispatched"),
                    "record": record,
                }
            pending = store.read_pending(run_id, sub=sub)
            if isinstance(pending, dict):
                return {
                    "runId": run_id,
                    "status": "running",
                    "done": False,
                    "record": None,
                    "envelope": pending,
                }
        entry = self.owned(run_id)
        if entry is not None and entry.get("kind") == "delegation":
            error = self._errors.get(run_id)
            return {
                "runId": run_id,
                "status": "errored" if error else "starting",
                "done": error is not None,
                "record": None,
                "error": error,
            }
        raise NotFoundError(f"no delegation `{run_id}` in `{self.cfg.handoffs_dir}`.")

    def cancel_delegation(self, run_id: str) -> bool:
        """Stop waiting for a delegation this server runs; False when it is not running here."""
        self.delegation(run_id)
        with self._lock:
            ev = self._cancels.get(run_id)
        if ev is None:
            return False
        ev.set()
        return True

    # -- restart --------------------------------------------------------------------------

    def pick_up(self) -> list[str]:
        """Continue what the server owned when it stopped; return the run ids taken up."""
        taken: list[str] = []
        try:
            entries = sorted(self.owned_dir.glob("*.json"))
        except OSError:
            return taken
        for path in entries:
            entry = read_json(path)
            if not isinstance(entry, dict):
                continue
            run_id = str(entry.get("runId") or path.stem)
            try:
                if entry.get("kind") == "delegation":
                    if self._pick_up_delegation(run_id, entry):
                        taken.append(run_id)
                elif self._pick_up_run(run_id):
                    taken.append(run_id)
            except OrchestratorError as exc:
                log.warning("cannot pick up %s: %s", run_id, exc)
        return taken

    def _pick_up_run(self, run_id: str) -> bool:
        if self.needs_resume(run_id):
            return self.kick(run_id)
        self._schedule_gate(run_id)
        return False

    def _pick_up_delegation(self, run_id: str, entry: dict[str, Any]) -> bool:
        if self.delegation(run_id)["done"]:
            return False
        request = entry.get("request")
        if not isinstance(request, dict):
            return False
        fields: dict[str, Any] = {k: request[k] for k in _FIELDS if k in request}
        req = DelegationRequest(**fields)
        self._launch_delegation(req, True)
        return True


def gate_due(meta: dict[str, Any], events: list[dict[str, Any]], steps: Any) -> float | None:
    """When (epoch seconds) the earliest parked gate with ``timeout`` and ``default`` takes
    its default: its first ``gate_waiting`` after the step's last ``step_reset``, plus the
    timeout (the rule of ``WorkflowRunner._timed_out``). None when no such gate waits."""
    plan = (meta.get("plan") or {}).get("steps") or {}
    due: float | None = None
    for s in steps:
        if s.state is not StepState.WAITING_APPROVAL:
            continue
        timeout = (plan.get(s.id) or {}).get("gate_timeout")
        if not isinstance(timeout, int | float):
            continue
        since = gate_waiting_since(events, s.id)
        if since is None:
            continue
        at = parse_iso(since).timestamp() + float(timeout)
        due = at if due is None else min(due, at)
    return due


_FIELDS = (
    "target",
    "task",
    "caller",
    "timeout",
    "run_id",
    "model",
    "thinking",
    "channel",
    "context",
    "name",
    "parent_run_id",
)
_KEYED = (
    "target",
    "task",
    "caller",
    "timeout",
    "model",
    "thinking",
    "channel",
    "context",
    "parent_run_id",
)


def missing_inputs_paragraph(run_id: str, names: list[str]) -> str:
    """What a run that waits for its secret inputs (``RunManager.waiting_for_inputs``)
    needs, and the ways to give them (docs/serve.md, "The CLI as a client")."""
    plural = len(names) > 1
    listed = ", ".join(f"`{n}`" for n in names)
    again = " ".join(f"-i {n}=VALUE" for n in names)
    body = ", ".join(f'"{n}": "VALUE"' for n in names)
    return (
        f"run `{run_id}` waits for its input{'s' if plural else ''} {listed}: "
        f"{'they' if plural else 'it'} held a secret, which run.json keeps only masked, "
        "and this server does not hold the value (the run was started before the server "
        "restarted, or by another process). The run is kept as it is (a decision or an "
        f"answer given meanwhile is kept too). Give {'them' if plural else 'it'} again: "
        f"`workflow resume {run_id} {again} --server URL`, `workflow resume {run_id} "
        f"{again}` on the server's host, or `POST /v1/runs/{run_id}/resume` with "
        f'{{"inputs": {{{body}}}}}; it continues where it stopped.'
    )


def _request_dict(req: DelegationRequest) -> dict[str, Any]:
    return {k: getattr(req, k) for k in _FIELDS if k != "run_id"}


__all__ = [
    "NotFoundError",
    "Observer",
    "RefusedError",
    "RunManager",
]
