"""The executor of workflow runs: parallel steps, conditions, gates, retries, resume.

``WorkflowRunner.start``/``resume`` create one ``_Execution`` per run, which dispatches
the plan's steps and journals every change through the run store. What a run *is*
(replay of its journal, summaries, status, gates, cancel) is the read model in
``engine.runs``.

Every step is one delegation through ``Delegator`` with a deterministic run id
``<run-id>-<step-id>-<attempt>``: after a crash, ``resume`` re-attaches to a step in
flight instead of sending it again, and takes a handoff that arrived meanwhile.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import math
import os
import queue
import random
import secrets
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.config import Config
from engine.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_WAITING,
    OrchestratorError,
    RunEndedError,
    RunStateError,
    WorkflowError,
)
from engine.files import new_run_id, parse_iso, utcnow_iso
from engine.prepare import Prepared as Prepared
from engine.prepare import check_approvals
from engine.prepare import prepare as prepare
from engine.redact import held, input_secrets, masked_inputs, redact_obj, secret_input_names
from engine.reporter import Reporter
from engine.runs import (
    RunView,
    StepRun,
    gate_waiting_since,
    replay_run,
    rerun_command,
    run_dir,
    summarize,
)
from engine.states import RETRYABLE_STEP_STATES, Outcome
from engine.states import RunState as RunState
from engine.states import StepState as StepState
from engine.store import Journal as RunJournal
from engine.store import RunStore

if TYPE_CHECKING:  # a dry run or `workflow validate` does not load the delegation stack
    from engine.delegate import DelegationRequest, Delegator


@dataclass(frozen=True)
class GateRequest:
    """What an approver is shown at a gate."""

    run_id: str
    step: str
    agent: str | None
    prompt: str
    upstream: dict[str, dict[str, Any]]
    #: The JSON Schema of the value an approval must give (None: no value).
    input_schema: dict[str, Any] | None = None


#: Stands in for a sub-workflow step's child run (``workflow test``): ``(step id, the
#: child's inputs)`` -> a summary-like ``{"status", "outputs", "steps"}``; raises
#: OrchestratorError when it has nothing for the step.
ChildRuns = Callable[[str, dict[str, str]], dict[str, Any]]

#: Decides a gate: ``"approved"`` (``("approved", value)`` for a gate with ``input``),
#: ``("rejected", reason)``, or None to park the run.
Approver = Callable[[GateRequest], "str | tuple[str, Any] | None"]


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
        """0 complete · 1 failed or cancelled · 3 waiting for approval · 4 when the only
        steps that ended badly timed out or were ``lost`` (silent past their
        ``heartbeat_timeout``: a timeout too, exit 4 for a single delegation)."""
        if self.state is RunState.COMPLETE:
            return EXIT_OK
        if self.state in (RunState.WAITING_APPROVAL, RunState.WAITING_INPUT):
            return EXIT_WAITING
        states = {s["status"] for s in self.summary.get("steps", {}).values()}
        if (
            self.state is RunState.FAILED
            and states & {"timeout", "lost"}
            and not states & {"failed", "blocked", "errored", "invalid", "rejected", "unusable"}
        ):
            return EXIT_TIMEOUT
        return EXIT_FAILED


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped this process's wait for a run; the run itself goes on.

    Raised by ``WorkflowRunner.start``/``resume`` (in the main thread) within about a
    second of the first SIGINT. No step is recorded as ended because of it: the steps in
    flight (``in_flight``: step ids) keep their delegation run ids, so ``workflow resume``
    re-attaches to them and takes a handoff that arrived meanwhile, sending nothing twice.
    """

    def __init__(
        self, run_id: str, in_flight: list[str], unsent: dict[str, dict[str, Any]] | None = None
    ) -> None:
        super().__init__(run_id)
        self.run_id = run_id
        self.in_flight = in_flight
        #: Of those, the steps with nothing sent now (queued for a pool token, waiting to
        #: retry), by step id: ``engine.runs.replay.unsent``'s answer. Resume sends them.
        self.unsent = unsent or {}


class SafePoint:
    """How stop signals reach a run's main thread (``engine.cli.workflow``).

    The first signal raises ``KeyboardInterrupt`` where the main thread is (the run
    then ends its waits: ``RunInterrupted``). Once the interruption is being concluded
    (``closing``: the waits have ended, or a second signal cut that short), later
    signals are only noted, so the run's paragraph is always printed.
    """

    def __init__(self) -> None:
        #: The interruption is being concluded (or the run has ended).
        self.closing = False

    def defer(self) -> bool:
        """For a signal handler: True when the signal must not raise now."""
        return self.closing


class _HeldJournal:
    """A run's journal that, once ``interrupted`` is set, keeps only what happened
    (a dispatch, a queue) and drops the endings the interruption itself would cause
    (``cancelled`` waits, skips, the run's end): a resumed run decides those."""

    KEPT = frozenset({"step_dispatched", "step_queued"})

    def __init__(self, inner: RunJournal, interrupted: threading.Event) -> None:
        self.inner = inner
        self.interrupted = interrupted

    def append(self, kind: str, /, **fields: Any) -> dict[str, Any]:
        if self.interrupted.is_set() and kind not in self.KEPT:
            return {"event": kind, **fields}
        return self.inner.append(kind, **fields)

    def close(self) -> None:
        self.inner.close()


# ----------------------------------------------------------------------------- planning


def _short_hash(obj: Any) -> str:
    """SHA-256 of ``obj`` (a text as it is, anything else as sorted JSON): 16 hex digits.
    The unkeyed parts of a run's fingerprint (``fingerprint_parts``)."""
    text = obj if isinstance(obj, str) else json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint_parts(cfg: Config, prepared: Prepared, salt: str | None = None) -> dict[str, str]:
    """Hashes of what a resumed run must not have changed: template, inputs, agents.

    The inputs are hashed as they were given, never as ``run.json`` shows them (masked):
    with ``salt`` (hex, random per run, kept in ``run.json`` as ``input_salt``) as an
    HMAC-SHA256 keyed with it, so a short secret cannot be guessed from the hash; without
    one (runs started before the salt existed) as a bare SHA-256, as then."""
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

    h = _short_hash
    parts = {
        "template": h(prepared.spec.source_text),
        "inputs": h(plan.inputs) if salt is None else _keyed(salt, plan.inputs),
        "agents": h({"agents": agents, "caller": plan.caller}),
    }
    return parts


def _keyed(salt: str, obj: Any) -> str:
    """HMAC-SHA256 of ``obj``'s JSON keyed with ``salt``: 32 hex digits."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hmac.new(salt.encode(), text.encode(), hashlib.sha256).hexdigest()[:32]


def secret_input_keys(
    salt: str, inputs: Mapping[str, Any], declared: Collection[str] = ()
) -> dict[str, dict[str, str]]:
    """``{name: {"hmac": keyed hash}}`` of the inputs that hold a secret
    (``secret_input_names``: declared ``secret``, a name that says so, or a value
    redaction masks): ``run.json`` keeps only their masked text, and a resume without the
    process that started the run needs them given again (``workflow resume RUN -i
    NAME=VALUE``), checked against these hashes. An object, not the bare hash: redaction
    would mask a string written as the value of an input named ``api_key``."""
    return {
        name: {"hmac": _keyed(salt, [name, inputs[name]])}
        for name in secret_input_names(inputs, declared)
    }


class SecretInputsMissing(RunStateError):
    """A resume needs the real values of inputs that ``run.json`` keeps only masked
    (``names``); exit 2. ``workflow resume RUN -i NAME=VALUE`` gives them again."""

    def __init__(self, message: str, names: list[str]) -> None:
        super().__init__(message)
        self.names = names


def _real_inputs(
    run_id: str, meta: dict[str, Any], given: Mapping[str, Any] | None, force: bool
) -> tuple[dict[str, Any], list[str]]:
    """The run's inputs as given when it started, and the names of the secret ones not
    given: ``run.json``'s inputs, with the ones it keeps masked taken from ``given`` (the
    starting process's values, or ``-i NAME=VALUE``), each checked against its keyed
    hash. Raises RunStateError for a wrong value (naming the input) and
    SecretInputsMissing for a missing one (unless ``force``: then the masked text stands
    in, as ``--force`` resumes with what is there)."""
    stored = meta.get("inputs")
    inputs: dict[str, Any] = dict(stored) if isinstance(stored, dict) else {}
    keys = meta.get("secret_inputs")
    keys = keys if isinstance(keys, dict) else {}
    salt = meta.get("input_salt")
    given = dict(given or {})
    missing = []
    for name, key in keys.items():
        key = key.get("hmac") if isinstance(key, dict) else key  # a bare hash: older runs
        if name not in given:
            missing.append(name)
        elif not isinstance(salt, str) or not hmac.compare_digest(
            _keyed(salt, [name, given[name]]), str(key)
        ):
            raise RunStateError(
                f"run `{run_id}` cannot resume: the value given for input `{name}` "
                "(`-i`) is not the one the run started with (checked against the keyed "
                "hash in its run.json); give the original value, or start a new run."
            )
    if missing and not force:
        names = ", ".join(f"`{n}`" for n in sorted(missing))
        again = " ".join(f"-i {n}=VALUE" for n in sorted(missing))
        raise SecretInputsMissing(
            f"run `{run_id}` cannot resume: its input{'s' if len(missing) > 1 else ''} "
            f"{names} held a secret, which run.json keeps only masked (***), and the "
            "process that started the run, which held the value, has ended. Give "
            f"{'them' if len(missing) > 1 else 'it'} again: `workflow resume {run_id} "
            f"{again}` (checked against the keyed hash kept in run.json; nothing else "
            "changes), or start a new run.",
            sorted(missing),
        )
    inputs.update(given)
    return inputs, sorted(missing)


def _pre_approved(options: RunOptions) -> dict[str, Any]:
    """The gates approved at a run's start (``--approve``, ``--approve-all``, a server's
    ``approve``/``approve_all``) as its run.json keeps them (``pre_approved``), so that
    every resume of the run passes them too (``_with_pre_approved``)."""
    kept: dict[str, Any] = {}
    if options.approve:
        kept["approve"] = sorted(options.approve)
    if options.approve_all:
        kept["approve_all"] = True
    return {"pre_approved": kept} if kept else {}


def _with_pre_approved(options: RunOptions, meta: dict[str, Any]) -> RunOptions:
    """``options`` plus the gates run.json says were approved at the start."""
    kept = meta.get("pre_approved")
    if not isinstance(kept, dict):
        return options
    approve = kept.get("approve")
    approve = approve if isinstance(approve, list) else []
    return replace(
        options,
        approve=options.approve | frozenset(str(a) for a in approve),
        approve_all=options.approve_all or kept.get("approve_all") is True,
    )


def _check_given_inputs(run_id: str, meta: dict[str, Any], given: Mapping[str, Any] | None) -> None:
    """Refuse (RunStateError, exit 2; nothing written) an input given on resume (``-i``)
    that is not one ``run.json`` keeps masked: a run keeps the inputs it started with, and
    ``-i`` only gives again the value of an input that held a secret. A value equal to the
    recorded one (or whose masked text is the recorded one) changes nothing and passes.
    docs/workflows.md, "Resuming"."""
    stored = meta.get("inputs")
    stored = stored if isinstance(stored, dict) else {}
    keys = meta.get("secret_inputs")
    secret = set(keys) if isinstance(keys, dict) else set()
    for name, value in (given or {}).items():
        if name in secret or (name in stored and redact_obj(value) == stored[name]):
            continue
        was = (
            f"`{name}` held no secret: it was recorded in run.json as given at the start, "
            "and a run keeps the inputs it started with"
            if name in stored
            else f"`{name}` is not an input of this run"
        )
        held = ", ".join(f"`{n}`" for n in sorted(secret)) or "none"
        raise RunStateError(
            f"run `{run_id}` cannot resume with `-i {name}=...`: `-i` on `workflow resume` "
            f"only gives again an input that held a secret (run.json keeps those masked; "
            f"this run's: {held}); {was}. Nothing was changed. Resume without it "
            f"(`workflow resume {run_id}`), or start a new run with the new value: "
            f"{rerun_command(meta)}"
        )


def _step_changes(ran: list[str], now: Sequence[str]) -> str:
    """How the step ids ``now`` (the template's) differ from ``ran`` (the run's plan), as
    ``added `z`; removed `c``` (``""``: the same steps)."""
    added = [sid for sid in now if sid not in set(ran)]
    removed = [sid for sid in ran if sid not in set(now)]
    parts = [
        f"{what} " + ", ".join(f"`{sid}`" for sid in ids)
        for what, ids in (("added", added), ("removed", removed))
        if ids
    ]
    return "; ".join(parts)


def _check_same_steps(
    run_id: str, meta: dict[str, Any], ran: list[str], now: Sequence[str], whose: str = ""
) -> None:
    """Refuse (RunStateError, exit 2; nothing written) to resume a run whose template no
    longer has the run's steps (one added, removed or renamed), with or without
    ``--force``: the run's plan, journal and results are those of its steps, and
    ``--force`` resumes them with their current definitions, never another set of steps.
    ``meta``: run ``run_id``'s run.json; ``whose``: the template's words when it is a
    child run's (``_check_child_runs``). docs/workflows.md, "Resuming"."""
    changes = _step_changes(ran, now)
    if not changes:
        return
    whose = whose or f"the steps of its template `{meta.get('workflow_path')}`"
    raise RunStateError(
        f"run `{run_id}` cannot resume, not even with `--force`: {whose} are not the "
        f"run's any more ({changes}; a renamed step is one removed and one added). "
        "`--force` resumes a run's own steps with their current definitions; it never adds "
        "or drops a step, whose plan and results the run has recorded. Nothing was "
        "changed. Give the template the run's steps again to resume it, or start a new run: "
        f"{rerun_command(meta)}"
    )


# ----------------------------------------------------------------------------- the runner


class _StepReporter(Reporter):
    """Journals the delegation events of steps, and forwards everything to the user's."""

    def __init__(self, inner: Reporter, journal: RunJournal, steps_by_run: dict[str, str]) -> None:
        self.inner = inner
        self.journal = journal
        self.steps_by_run = steps_by_run
        #: Delegations whose queue and dispatch are not journaled: items of a `for_each`.
        self.quiet: set[str] = set()

    def event(self, kind: str, **fields: Any) -> None:
        self.inner.event(kind, **fields)

    def pool_waiting(self, run_id: str, agent: str) -> None:
        if run_id in self.quiet:
            return
        step = self.steps_by_run.get(run_id)
        if step:
            self.journal.append("step_queued", step=step, delegation_run_id=run_id)
        self.inner.event("step_queued", step=step, agent=agent)

    def delegation_dispatched(self, run_id: str, caller: str, target: str, attempts: int) -> None:
        if run_id in self.quiet:
            return
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
    backoff: float = 2.0,
    max_delay: float = MAX_RETRY_DELAY,
    jitter: float = RETRY_JITTER,
) -> float:
    """Seconds to wait before retry number ``retry`` (1 = the first) of a step.

    ``base * backoff ** (retry - 1)``, at most ``max_delay``, plus up to ``jitter`` of it
    at random (still at most ``max_delay``), and at most ``bound`` (the step's timeout);
    the schedule is ``engine.retry``'s. Example: ``retry_delay(2.0, 3, rng=lambda: 0.0)``
    is 8.0.
    """
    from engine.retry import backoff_delay, exponential

    if base <= 0:
        return 0.0
    schedule = exponential(base, factor=backoff, cap=max_delay, count=min(retry, 200))
    schedule = replace(schedule, jitter=jitter)
    delay = min(backoff_delay(schedule, min(retry, 200), rng()), max_delay)
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
        child_runs: ChildRuns | None = None,
    ) -> None:
        self.cfg = cfg
        self.delegator = delegator
        #: Where runs are kept: the delegator's store (one store per process and config).
        self.store: RunStore = delegator.store
        self.reporter = reporter or Reporter()
        self.approver = approver
        self.retry_wait = retry_wait
        self.rng = rng
        #: None: a sub-workflow step starts a real child run (the default).
        self.child_runs = child_runs
        # Shared by the runs of this runner: capability routing claims the least busy
        # agent of the host, and two runs must not both claim the same free slot.
        self.route_lock = threading.Lock()
        #: Where a stop signal may interrupt this runner's run in the main thread.
        self.safe_point = SafePoint()

    # -- entry points -----------------------------------------------------------------

    def start(
        self,
        prepared: Prepared,
        options: RunOptions,
        *,
        run_id: str | None = None,
        parent: dict[str, str] | None = None,
        parent_cancel: threading.Event | None = None,
        parent_interrupt: threading.Event | None = None,
    ) -> RunResult:
        """Create the run directory and run the workflow.

        A sub-workflow's child run is started by its parent's execution with its
        ``run_id``, ``parent`` (``{"run_id", "step"}``, kept in run.json), the
        parent's cancel event, which cancels the child too, and its interrupt event
        (Ctrl-C: the child stops waiting as its parent does, see ``RunInterrupted``).

        Raises ``RunInterrupted`` on Ctrl-C (the main thread's ``KeyboardInterrupt``)."""
        plan = prepared.plan
        self._check_approvals(plan, options)
        from engine.workflow import brace_warnings

        for warning in brace_warnings(prepared.spec):
            self.reporter.warning(warning)
        run_id = run_id or new_run_id("wf")
        store = self.store
        salt = secrets.token_hex(16)
        secret_keys = secret_input_keys(salt, plan.inputs, prepared.spec.secret_inputs)
        meta = {
            "runId": run_id,
            "workflow": prepared.spec.name,
            # Absolute: `workflow resume` works from any directory (docs/workflows.md).
            "workflow_path": str(Path(prepared.spec.path).resolve()),
            **({"started_as": prepared.ref} if prepared.ref else {}),
            "version": prepared.spec.version,
            "caller": plan.caller,
            # masked where they hold a secret; `secret_inputs` keys those (fingerprint_parts)
            "inputs": masked_inputs(plan.inputs, prepared.spec.secret_inputs),
            **({"secret_inputs": secret_keys} if secret_keys else {}),
            "config": str(self.cfg.path) if self.cfg.path else None,
            "created_at": utcnow_iso(),
            **(
                {"deadline_at": _iso_in(prepared.spec.deadline)}
                if prepared.spec.deadline is not None
                else {}
            ),
            "fingerprint": fingerprint_parts(self.cfg, prepared, salt),
            "input_salt": salt,
            **({"parent": parent} if parent else {}),
            **_pre_approved(options),
            "plan": {
                "groups": plan.groups,
                "steps": {
                    sid: {
                        "agent": ps.agent,
                        "candidates": list(ps.candidates),
                        "depends_on": list(ps.depends_on),
                        "validator": ps.validator,
                        "gate": bool(ps.spec.gate),
                        **(
                            {"gate_input": ps.spec.gate.input_schema}
                            if ps.spec.gate is not None and ps.spec.gate.input_schema
                            else {}
                        ),
                        **(
                            {
                                "gate_timeout": ps.spec.gate.timeout,
                                "gate_default": ps.spec.gate.default,
                            }
                            if ps.spec.gate is not None and ps.spec.gate.timeout is not None
                            else {}
                        ),
                        "when": ps.spec.when,
                        **({"finally": True} if ps.spec.always else {}),
                        **({"workflow": ps.spec.workflow} if ps.spec.workflow else {}),
                    }
                    for sid, ps in plan.steps.items()
                },
            },
        }
        store.create_run(run_id, meta)

        def begin(journal: RunJournal) -> None:
            journal.append(
                "run_started", run_id=run_id, workflow=prepared.spec.name, pid=os.getpid()
            )

        with store.claim(run_id):
            return self._execute(run_id, prepared, options, begin, parent_cancel, parent_interrupt)

    def resume(
        self,
        run_id: str,
        options: RunOptions,
        *,
        parent_cancel: threading.Event | None = None,
        parent_interrupt: threading.Event | None = None,
        inputs: Mapping[str, Any] | None = None,
        masked: bool = False,
    ) -> RunResult:
        """Continue a run after a crash, a gate, a failure or a restart (a sub-workflow
        step's child run is resumed with its parent, through ``parent_cancel`` and
        ``parent_interrupt``). Raises ``RunInterrupted`` on Ctrl-C.

        ``inputs`` gives the real values of the inputs ``run.json`` keeps masked (the
        process that started the run still holds them, or ``workflow resume -i``); each
        is checked against its keyed hash. Without them such a run raises
        SecretInputsMissing (exit 2), never "the inputs changed"; with ``masked`` it goes
        on with their masked text (``***``), for a run that only ends (a rejected gate:
        what still runs are its ``finally`` steps)."""
        store = self.store
        path = run_dir(self.cfg, run_id, store=store)
        with store.claim(run_id):
            view = replay_run(store, run_id)
            cancelled = _cancelled(self.cfg, store, view)
            if cancelled is not None:
                return cancelled
            meta = view.meta
            options = _with_pre_approved(options, meta)
            workflow_path, fingerprint = meta.get("workflow_path"), meta.get("fingerprint")
            if not isinstance(workflow_path, str) or not isinstance(fingerprint, dict):
                raise RunStateError(
                    f"`{path / 'run.json'}` has no usable `workflow_path` and `fingerprint`: "
                    f"the run record was edited or damaged, so run `{run_id}` cannot resume. "
                    f"Start the workflow again: {rerun_command(meta)}",
                    path=path,
                )
            _check_given_inputs(run_id, meta, inputs)
            real, missing = _real_inputs(run_id, meta, inputs, options.force or masked)
            try:
                prepared = prepare(self.cfg, workflow_path, real, caller=meta.get("caller"))
            except WorkflowError as exc:
                if Path(workflow_path).expanduser().is_absolute():
                    if not Path(workflow_path).expanduser().exists():  # moved or deleted
                        raise WorkflowError(
                            f"run `{run_id}` cannot resume: its template `{workflow_path}` "
                            "(`workflow_path` in its run.json) does not exist any more. Put "
                            f"the file back there and run `workflow resume {run_id}` again, "
                            "or start a new run from where the file is now: `workflow run "
                            f"NEW-PATH{' -i ...' if meta.get('inputs') else ''}`.",
                            path=path / "run.json",
                        ) from exc
                    raise
                raise WorkflowError(
                    f"run `{run_id}` cannot resume from `{Path.cwd()}`: its `run.json` records "
                    f"the template as `{workflow_path}`, a path relative to the directory the "
                    f"run was started in ({exc}). Run `workflow resume {run_id}` from that "
                    "directory.",
                    path=path / "run.json",
                ) from exc
            _check_same_steps(run_id, meta, list(view.steps), prepared.spec.step_ids)
            salt = meta.get("input_salt")
            changed = [
                k
                for k, v in fingerprint_parts(
                    self.cfg, prepared, salt if isinstance(salt, str) else None
                ).items()
                # masked stand-ins never hash as the real inputs did: not a change
                if fingerprint.get(k) != v and not (k == "inputs" and missing and masked)
            ]
            if changed and not options.force:
                relative = (
                    "" if Path(workflow_path).is_absolute() else f" (found from `{Path.cwd()}`)"
                )
                what = {
                    "template": f"the template `{workflow_path}`{relative}",
                    "inputs": "the inputs (defaults in the template)",
                    "agents": "the agents' configuration in the config",
                }
                raise RunStateError(
                    f"run `{run_id}` cannot resume: "
                    + ", ".join(what[c] for c in changed)
                    + f" changed since it started. Start a new run ({rerun_command(meta)}), "
                    "or pass `--force` to resume with the current definitions."
                )
            self._check_approvals(prepared.plan, options)
            _check_child_runs(store, view, options, meta)
            for warning in view.warnings:
                self.reporter.warning(warning)

            def begin(journal: RunJournal) -> None:
                journal.append(
                    "run_resumed",
                    pid=os.getpid(),
                    changed=changed,
                    retry_failed=options.retry_failed,
                )
                now = view
                if _take_late_results(now, prepared, store, journal, self.reporter):
                    now = replay_run(store, run_id)
                if options.retry_failed:
                    _reset_failed(now, prepared, journal)

            return self._execute(run_id, prepared, options, begin, parent_cancel, parent_interrupt)

    def _execute(
        self,
        run_id: str,
        prepared: Prepared,
        options: RunOptions,
        begin: Callable[[RunJournal], None],
        parent_cancel: threading.Event | None,
        parent_interrupt: threading.Event | None,
    ) -> RunResult:
        """Journal how the run (re)starts (``begin``), then execute it from its replayed
        state; the journal is closed however it ends. Called with the run claimed."""
        journal = self.store.journal(run_id)
        # The secret inputs (run.json keeps them masked) are masked in all the run writes
        # and prints, bare too (an agent that repeats them), while it runs.
        with held(input_secrets(prepared.plan.inputs, prepared.spec.secret_inputs)):
            try:
                begin(journal)
                view = replay_run(self.store, run_id)
                result = _Execution(
                    self, prepared, view, journal, options, parent_cancel, parent_interrupt
                ).run()
                return replace(result, summary=redact_obj(result.summary))
            finally:
                journal.close()

    def _check_approvals(self, plan: Any, options: RunOptions) -> None:
        check_approvals(plan, options.approve)


def _cancelled(cfg: Config, store: RunStore, view: RunView) -> RunResult | None:
    """What `workflow resume` of a cancelled run does, its claim held: refuse a run that
    was cancelled (RunStateError, exit 2); refuse one that has ended for good
    (``_check_resumable``); conclude a cancel that `workflow cancel` asked of a process
    that ended (Ctrl-C, a kill) before it journaled ``run_cancelled``
    (``engine.runs.admin.conclude_cancel``), returning the run ended ``cancelled``.
    None: the run resumes."""
    rid = view.run_id
    if view.state is RunState.CANCELLED:
        raise RunStateError(
            f"run `{rid}` was cancelled; start a new run instead. Start it "
            f"with: {rerun_command(view.meta)}"
        )
    _check_resumable(view)
    if view.state is RunState.FAILED or not store.cancel_requested(rid):
        return None
    from engine.runs.admin import conclude_cancel

    conclude_cancel(cfg, store, view)
    ended = summarize(replay_run(store, rid))
    return RunResult(rid, RunState.CANCELLED, view.path, redact_obj(ended))


def _check_resumable(view: RunView) -> None:
    """Refuse (RunStateError, exit 2; nothing written) to resume a run whose journal is
    damaged (``RunView.damage``: empty, or no ``run_started``), and one that has ended for
    good: one that completed, and one that failed after its ``deadline_at`` had passed
    (a resumed run may not send anything then, and taking a late handoff or running the
    ``finally`` steps again would rewrite what it came to). docs/workflows.md, Resuming."""
    rid, meta = view.run_id, view.meta
    if view.damage is not None:  # all steps would replay as pending, and be sent again
        raise RunStateError(view.damage, path=view.path / "events.jsonl")
    if view.state is RunState.COMPLETE:
        raise RunEndedError(
            f"run `{rid}` has already ended (complete); nothing to resume.",
            result=RunResult(rid, view.state, view.path, summarize(view)),
        )
    at = meta.get("deadline_at")
    if view.state is RunState.FAILED and isinstance(at, str):
        try:
            passed = parse_iso(at).timestamp() <= time.time()
        except ValueError:
            passed = False
        if passed:
            raise RunStateError(
                f"run `{rid}` has ended (failed) and its deadline ({at}) has passed: a "
                "resumed run could send nothing, so it is left as it is. Start a new run: "
                f"{rerun_command(meta)}"
            )


def _check_child_runs(
    store: RunStore, view: RunView, options: RunOptions, top: dict[str, Any]
) -> None:
    """Refuse (RunStateError, exit 2; nothing written) to resume a run when a child run
    this resume would resume (a sub-workflow step's, parked or in flight; failed or
    cancelled ones with ``--retry-failed`` start or resume as ``_SubRun._child`` does) has
    a template that can no longer be loaded, lost or gained a step, or (without
    ``--force``, which reaches the child runs too) changed since that child started. The
    child runs of child runs are checked the same way. ``top``: the run.json of the run
    being resumed, whose words and commands the paragraph gives.
    docs/workflows.md, "Sub-workflows" and "Resuming"."""
    from engine.workflow import load_workflow

    rid = str(top.get("runId") or view.run_id)
    for s in view.steps.values():
        cid = s.child_run_id
        if not cid or not store.run_exists(cid):
            continue
        try:
            child = replay_run(store, cid)
        except RunStateError:
            continue  # damaged: resuming it says so, as the step's error
        again = options.retry_failed and child.state is RunState.FAILED
        ended = (RunState.COMPLETE, RunState.FAILED, RunState.CANCELLED)
        if child.state in ended and not again:
            continue  # read as it ended, or (cancelled) a new child run is started
        path, fingerprint = child.meta.get("workflow_path"), child.meta.get("fingerprint")
        if not isinstance(path, str) or not isinstance(fingerprint, dict):
            continue  # its own resume names the damaged run.json
        of = f"the template `{path}` of its child run `{cid}` (step `{s.id}`)"
        try:
            spec = load_workflow(Path(path))
        except WorkflowError as exc:
            raise RunStateError(
                f"run `{rid}` cannot resume: {of} cannot be loaded ({exc}). Nothing was "
                f"changed. Restore that file to resume the run, or start a new run: "
                f"{rerun_command(top)}"
            ) from None
        _check_same_steps(rid, top, list(child.steps), spec.step_ids, f"the steps of {of}")
        if fingerprint.get("template") != _short_hash(spec.source_text) and not options.force:
            raise RunStateError(
                f"run `{rid}` cannot resume: {of} changed since that child run started. "
                f"Nothing was changed. Start a new run ({rerun_command(top)}), or pass "
                "`--force` to resume both with the current definitions (`--force` on a "
                "run reaches its child runs too)."
            )
        _check_child_runs(store, child, options, top)


def _take_late_results(
    view: RunView, prepared: Prepared, store: RunStore, journal: RunJournal, reporter: Reporter
) -> list[str]:
    """Journal ``step_late_result`` for each step whose last attempt the engine ended
    (timeout, lost, errored, invalid, unusable) and whose delegation record now holds
    the agent's own handoff that arrived later (``engine.runs.replay.late_results``; a
    handoff still in the inbox is merged first). Such a step re-attaches to that
    delegation, which returns the record as it is: nothing is sent again, and the step
    ends as that handoff says (checked as any result: ``result_schema``, validator,
    question). The steps its ending had skipped, and the ``finally`` steps, run again.
    Returns the ids of the steps taken over (docs/workflows.md, "Resuming")."""
    from engine.runs.replay import late_results

    found = late_results(view, store, deliver=True)
    for sid, record in found.items():
        s = view.steps[sid]
        env = record.get("envelope") or {}
        journal.append(
            "step_late_result",
            step=sid,
            attempt=s.attempt,
            delegation_run_id=s.delegation_run_id,
            previous=s.state.value,
            status=env.get("outcome"),
            late=bool(env.get("late")),
        )
        reporter.event(
            "step_late_result",
            step=sid,
            delegation_run_id=s.delegation_run_id,
            previous=s.state.value,
            status=env.get("outcome"),
        )
    if found:
        _reset_downstream(view, prepared, journal, set(found), retry=False)
    return list(found)


def _reset_failed(view: RunView, prepared: Prepared, journal: RunJournal) -> None:
    """Journal a reset of what ``--retry-failed`` runs again.

    That is every step that ended in a retryable state, every step skipped only because
    the run stopped (an independent branch the stop cut off), and every step skipped
    because one of those did not finish well.
    """
    roots = {s.id for s in view.steps.values() if s.state in RETRYABLE_STEP_STATES}
    _reset_downstream(view, prepared, journal, roots, retry=True)


def _reset_downstream(
    view: RunView, prepared: Prepared, journal: RunJournal, roots: set[str], *, retry: bool
) -> None:
    """Journal ``step_reset`` for ``roots`` (those in a retryable state, with ``retry``),
    the steps skipped only because the run stopped, the steps skipped because one of
    those did not end well, and, when anything is reset, the ``finally`` steps."""
    plan = prepared.plan
    again = set(roots) | {
        s.id
        for s in view.steps.values()
        if s.state is StepState.SKIPPED and s.skip_kind == "stopped"
    }
    for sid in list(again):
        again |= plan.downstream(sid)
    if again:  # the end comes again: `finally` steps run again after the retried steps
        again |= {sid for sid, ps in plan.steps.items() if ps.spec.always}
    for sid in sorted(again, key=list(view.steps).index):
        s = view.steps[sid]
        if sid in roots and not retry:
            continue  # a step taken over (its late handoff): it is not sent again
        if (
            (retry and s.state in RETRYABLE_STEP_STATES)
            or (s.state is StepState.SKIPPED and s.skip_kind in ("upstream", "stopped"))
            or (plan.steps[sid].spec.always and s.state.final)
        ):
            journal.append("step_reset", step=sid, previous=s.state.value)


class _Schedule:
    """Which steps are ready: a step becomes ready when its last upstream step settles.

    Each scheduling round touches only what changed (O(steps + edges) per run).
    """

    def __init__(self, plan: Any, steps: dict[str, StepRun]) -> None:
        self.order = [s for group in plan.groups for s in group]
        self.index = {sid: i for i, sid in enumerate(self.order)}
        self.children = {sid: plan.children(sid) for sid in self.order}
        self.blocking = {
            sid: sum(1 for d in plan.steps[sid].depends_on if not steps[d].state.final)
            for sid in self.order
        }
        self.heap = [
            self.index[sid]
            for sid in self.order
            if self.blocking[sid] == 0 and not steps[sid].state.final
        ]
        heapq.heapify(self.heap)

    def pop(self) -> str | None:
        """The next ready step in template order, or None."""
        return self.order[heapq.heappop(self.heap)] if self.heap else None

    def settle(self, sid: str) -> None:
        """``sid`` will not change any more: its children may become ready."""
        for child in self.children[sid]:
            self.blocking[child] -= 1
            if self.blocking[child] == 0:
                heapq.heappush(self.heap, self.index[child])


_PARKED = (StepState.WAITING_APPROVAL, StepState.WAITING_INPUT)


@dataclass(frozen=True)
class _Unit:
    """What one chain of attempts delegates: step run ``s`` of plan step ``ps`` to
    ``agent``, or only its item ``index`` of a ``for_each`` step (None: the step itself)."""

    s: StepRun
    ps: Any
    agent: str
    index: int | None = None


class _Execution:
    """One run (or resumed stretch of a run) in progress: all of its mutable state."""

    def __init__(
        self,
        runner: WorkflowRunner,
        prepared: Prepared,
        view: RunView,
        journal: RunJournal,
        options: RunOptions,
        parent_cancel: threading.Event | None = None,
        parent_interrupt: threading.Event | None = None,
    ) -> None:
        self.runner = runner
        #: Set when the parent run of this (child) run is cancelled: this run is, too.
        self.parent_cancel = parent_cancel
        #: Set on Ctrl-C (here, or in the parent run): stop waiting, record no ending.
        self.interrupted = parent_interrupt if parent_interrupt is not None else threading.Event()
        journal = _HeldJournal(journal, self.interrupted)
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
        at = view.meta.get("deadline_at")
        #: When the run must be over (epoch seconds; None: no `deadline`).
        self.deadline_at = parse_iso(at).timestamp() if isinstance(at, str) else None
        #: Step id -> [usd, tokens] its delegations spent (``step_spent`` in the journal).
        self.spent: dict[str, list[float]] = {}
        self.spend_lock = threading.Lock()
        for ev in view.events:
            if ev.get("event") == "step_spent" and isinstance(ev.get("step"), str):
                self._add_spend(ev["step"], ev.get("usd"), ev.get("tokens"))
        # Step id -> the upstream steps whose status its `when` tests (its "handled" set).
        self.tests = {sid: prepared.renderer.status_tests(sid).steps for sid in self.plan.steps}

    # -- the scheduler ------------------------------------------------------------------

    def run(self) -> RunResult:
        """Run every step that can run now, then conclude (finished, failed or parked)."""
        point = self._safe_point()
        if point is not None:  # a fresh stretch: signals raise
            point.closing = False
        self._restore()
        self._announce()
        schedule = _Schedule(self.plan, self.steps)
        running: dict[Future[None], str] = {}
        # Each step's future puts itself here when it ends: ``_collect`` takes them in the
        # order they ended, at O(1) a step (``concurrent.futures.wait`` hooked a waiter
        # into, and out of, every future in flight on every call).
        self._ended: queue.SimpleQueue[Future[None]] = queue.SimpleQueue()
        pool = ThreadPoolExecutor(
            max_workers=max(1, self.options.max_parallel),
            thread_name_prefix=f"step-{self.run_id[-8:]}",
        )
        try:
            while True:
                self._check_cancel(schedule, running)
                self._dispatch(schedule, pool, running)
                if not running:
                    break
                self._collect(schedule, running)
        except KeyboardInterrupt:
            self._interrupt(pool, running)
        except BaseException:
            pool.shutdown(wait=True)
            raise
        pool.shutdown(wait=True)
        if self.interrupted.is_set():  # a child run whose parent was interrupted
            return RunResult(self.run_id, RunState.RUNNING, self.view.path, {})
        if self.cancel.is_set():  # cancelled: its waits have ended; its agents end too
            ids = [s.delegation_run_id for s in self.steps.values() if s.delegation_run_id]
            self.delegator.end_local_runs(ids)
        return self._conclude()

    def _interrupt(self, pool: ThreadPoolExecutor, running: dict[Future[None], str]) -> None:
        """Ctrl-C: end the waits of the steps in flight (the cancel event: within 0.2 s)
        with nothing recorded as ended (``_HeldJournal``), then raise ``RunInterrupted``.
        A second Ctrl-C (or SIGTERM) while they end stops waiting for them at once; it
        still raises ``RunInterrupted``, so the run's paragraph is printed."""
        self.interrupted.set()
        self.cancel.set()
        flying = sorted(
            {sid for sid in running.values()}
            | {s.id for s in self.steps.values() if s.in_flight or s.state is StepState.RUNNING}
        )
        try:
            pool.shutdown(wait=True, cancel_futures=True)
        except KeyboardInterrupt:  # a second signal: leave the waits at once
            pool.shutdown(wait=False, cancel_futures=True)
        point = self._safe_point()
        if point is not None:
            point.closing = True  # later signals are noted: the paragraph is printed
        raise RunInterrupted(
            self.run_id, [sid for sid in self.steps if sid in flying], self._unsent(flying)
        ) from None

    def _unsent(self, flying: Collection[str]) -> dict[str, dict[str, Any]]:
        """Of the steps ``flying``, those with no delegation out (as the journal says:
        ``engine.runs.replay.unsent``); empty when the journal cannot be read back."""
        from engine.runs.replay import unsent

        try:
            view = replay_run(self.store, self.run_id)
        except (OrchestratorError, OSError):
            return {}
        return {sid: gap for sid in sorted(flying) if (gap := unsent(view, sid)) is not None}

    def _restore(self) -> None:
        """Steps parked or failed in an earlier stretch, as this stretch starts."""
        for s in self.steps.values():
            if s.state in _PARKED and s.child_run_id:  # its child run parked: resume it
                s.state, s.in_flight = StepState.RUNNING, True
            if s.state is StepState.WAITING_APPROVAL:
                s.state = StepState.PENDING
            if s.state is StepState.WAITING_INPUT and (s.question or {}).get("answer") is not None:
                s.state = StepState.PENDING  # answered: it is delegated again with the answer
            if s.state.final and not s.state.ok and s.state is not StepState.SKIPPED:
                self._note_failure(s)

    def _announce(self) -> None:
        """Report ``run_started`` with each group's ``(step, agent)``: a sub-workflow
        step's agent reads ``workflow NAME`` (its child's name), before its child starts
        as after (``child_started``)."""
        plan, steps = self.plan, self.steps
        for sid, sub in plan.sub_plans.items():
            if steps[sid].agent is None:
                steps[sid].agent = f"workflow {sub.workflow.name}"
        self.reporter.event(
            "run_started",
            run_id=self.run_id,
            workflow=plan.workflow.name,
            steps=[[(sid, steps[sid].agent) for sid in g] for g in plan.groups],
            handoffs_dir=str(self.cfg.handoffs_dir),  # where progress lines are (live table)
        )

    def _check_cancel(self, schedule: _Schedule, running: dict[Future[None], str]) -> None:
        """Notice `workflow cancel`; once cancelled, skip every step not in flight."""
        if self.interrupted.is_set():  # the parent run was interrupted: stop waiting
            self.cancel.set()
            schedule.heap.clear()
            return
        parent = self.parent_cancel is not None and self.parent_cancel.is_set()
        if not self.cancel.is_set() and (parent or self.store.cancel_requested(self.run_id)):
            self.cancel.set()
            by = f"parent run `{self.view.meta.get('parent', {}).get('run_id')}`"
            self.journal.append("run_cancelled", by=by if parent else "workflow cancel")
        if not self.cancel.is_set():
            return
        schedule.heap.clear()
        in_flight = set(running.values())
        for sid in schedule.order:
            st = self.steps[sid]
            if (st.state is StepState.PENDING or st.state in _PARKED) and sid not in in_flight:
                self._skip(st, "the run was cancelled", "stopped")

    def _dispatch(
        self, schedule: _Schedule, pool: ThreadPoolExecutor, running: dict[Future[None], str]
    ) -> None:
        """Submit every ready step (or settle it at once: skipped, rejected, errored)."""
        while (sid := schedule.pop()) is not None:
            fut = self._consider(self.steps[sid], pool)
            if fut is not None:
                running[fut] = sid
                fut.add_done_callback(self._ended.put)
            elif self.steps[sid].state.final:
                schedule.settle(sid)

    def _collect(self, schedule: _Schedule, running: dict[Future[None], str]) -> None:
        """Wait a little (0.2 s at most) for steps in flight; settle the ones that ended."""
        try:
            done = [self._ended.get(timeout=0.2)]
        except queue.Empty:
            return
        while True:
            try:
                done.append(self._ended.get_nowait())
            except queue.Empty:
                break
        self._settle(schedule, running, done)

    def _safe_point(self) -> SafePoint | None:
        """The runner's ``SafePoint`` when this is the main thread (a child run's thread
        gets no signals), else None."""
        if threading.current_thread() is threading.main_thread():
            return self.runner.safe_point
        return None

    def _settle(
        self, schedule: _Schedule, running: dict[Future[None], str], done: Collection[Any]
    ) -> None:
        """Settle the steps ``done`` (futures of ``running``)."""
        for fut in done:
            sid = running.pop(fut)
            exc = fut.exception()
            st = self.steps[sid]
            if exc is not None:  # a bug, not a step outcome: record and go on
                self._finish(st, StepState.ERRORED, error=f"internal error: {exc}")
            if st.state in _PARKED:
                continue  # parked (a question, a child run's gate): its dependents wait
            if self._bad(st):
                self._note_failure(st)
            schedule.settle(sid)

    def _note_failure(self, s: StepRun) -> None:
        """Stop the run after a step that ended badly, unless it should not stop it.

        It does not when its ``on_failure`` is ``continue``, when it is a ``finally``
        step, or when a step that depends on it tests its status (a failure path).
        """
        spec = self.plan.steps[s.id].spec
        if spec.on_failure != "stop" or spec.always or self._has_handler(s.id):
            return
        self.stop_reason = self.stop_reason or f"`{s.id}` ended {s.state.value}"

    def _has_handler(self, sid: str) -> bool:
        return any(sid in self.tests[child] for child in self.plan.children(sid))

    # -- one step: run, skip, gate or fail it ---------------------------------------------

    @staticmethod
    def _bad(s: StepRun) -> bool:
        """True when a step ended so that its dependents cannot simply use it."""
        return not s.state.ok and not (
            s.state is StepState.SKIPPED and s.skip_kind in ("condition", "empty")
        )

    def _blocked(self, ps: Any) -> tuple[str, str] | None:
        """Why a step must be skipped before its `when` is looked at: (reason, kind).

        A ``finally`` step never is. Otherwise an upstream step that ended badly skips
        it, unless its ``when`` tests that step's status; then the ``when`` decides. A
        stopped run skips the steps not started, except those that take over a failure.
        """
        if ps.spec.always:
            return None
        if self._past_deadline():
            deadline = self.plan.workflow.deadline
            return f"the run's deadline ({deadline:g} s after its start) has passed", "stopped"
        over = self._over_budget(ps)
        if over:
            return over, "stopped"
        ups = [self.steps[d] for d in ps.depends_on]
        tested = self.tests[ps.id]
        bad = [u for u in ups if self._bad(u) and u.id not in tested]
        if bad:
            return f"upstream `{bad[0].id}` ended {bad[0].state.value}", "upstream"
        handles = any(self._bad(u) for u in ups if u.id in tested)
        if self.stop_reason and not handles:
            return f"the run stopped after {self.stop_reason}", "stopped"
        return None

    def _add_spend(self, sid: str, usd: Any, tokens: Any) -> None:
        with self.spend_lock:
            total = self.spent.setdefault(sid, [0.0, 0.0])
            total[0] += float(usd) if isinstance(usd, int | float) else 0.0
            total[1] += float(tokens) if isinstance(tokens, int | float) else 0.0

    def _note_usage(self, s: StepRun, result: Any, index: int | None) -> None:
        """Count what one delegation spent (its handoff's ``usage``) for budgets."""
        self._count(s, (result.record or {}).get("usage"), result.run_id, index)

    def _count(self, s: StepRun, usage: Any, run_id: str, index: int | None, **extra: Any) -> None:
        """Journal (``step_spent``) and add up one delegation's ``usage``."""
        if not isinstance(usage, dict):
            return
        usd = usage.get("cost") if isinstance(usage.get("cost"), int | float) else 0.0
        tokens = sum(
            int(usage[k])
            for k in ("input_tokens", "output_tokens")
            if isinstance(usage.get(k), int)
        )
        if not usd and not tokens:
            return
        self._add_spend(s.id, usd, tokens)
        with self.spend_lock:
            mine = list(self.spent[s.id])
            total = sum(v[0] for v in self.spent.values())
        self.reporter.event(
            "step_spent", step=s.id, usd=mine[0], tokens=int(mine[1]), run_usd=total
        )
        item = {} if index is None else {"index": index}
        self.journal.append(
            "step_spent",
            step=s.id,
            usd=usd,
            tokens=tokens,
            delegation_run_id=run_id,
            **item,
            **extra,
        )

    def _over_budget(self, ps: Any) -> str | None:
        """Why nothing more may be spent on step ``ps``: the run's budget (``finally``
        steps excepted) or the step's own is reached; None when it may go on."""
        with self.spend_lock:
            usd = sum(v[0] for v in self.spent.values())
            tokens = int(sum(v[1] for v in self.spent.values()))
            mine = self.spent.get(ps.id, [0.0, 0.0])
        run_budget = self.plan.workflow.budget
        if run_budget is not None and not ps.spec.always:
            why = run_budget.spent_by(usd, tokens)
            if why:
                return f"the run's budget is spent ({why})"
        if ps.spec.budget is not None:
            why = ps.spec.budget.spent_by(mine[0], int(mine[1]))
            if why:
                return f"the step's budget is spent ({why})"
        return None

    def _past_deadline(self) -> bool:
        return self.deadline_at is not None and time.time() >= self.deadline_at

    def _attempt_timeout(self, s: StepRun, ps: Any, agent: str, resumed: bool) -> float:
        """Seconds the attempt may wait: the step's timeout, less what a resumed attempt
        already waited (since its ``step_started``), and no later than the run's deadline
        (``finally`` steps excepted)."""
        timeout = self._step_timeout(ps, agent)
        if resumed:
            started = [
                e.get("at")
                for e in self.view.events
                if e.get("step") == s.id
                and e.get("event") in ("step_started", "item_started")
                and e.get("delegation_run_id") == s.delegation_run_id
            ]
            if started and isinstance(started[-1], str):
                timeout -= time.time() - parse_iso(started[-1]).timestamp()
        if self.deadline_at is not None and not ps.spec.always:
            left = self.deadline_at - time.time()
            if left < timeout:
                # rounded up: an attempt that ended before the deadline would be retried
                return max(0.1, math.ceil(left * 10) / 10)
        return max(0.1, round(timeout, 1))  # messages say `within 2 s`, not `1.99076 s`

    def _consider(self, s: StepRun, pool: ThreadPoolExecutor) -> Future[None] | None:
        """Decide a step whose upstream steps have all settled: run, skip, gate or fail it.

        Returns the future of a submitted step; otherwise the step is final or parked.
        """
        if s.in_flight:  # dispatched by an earlier process: re-attach, never resend
            return pool.submit(self._run_step, s, True)
        if s.state.final or s.state is StepState.WAITING_INPUT:
            return None
        ps = self.plan.steps[s.id]
        blocked = self._blocked(ps)
        if blocked is not None:
            self._skip(s, *blocked)
            return None
        gated = self._conditions(s, ps)
        if gated is None or (gated and not self._gate(s)):
            return None
        return pool.submit(self._run_step, s, False)

    def _conditions(self, s: StepRun, ps: Any) -> bool | None:
        """Evaluate `when` and `gate.when`: None when the step was settled (skipped or
        errored), else whether its gate fires."""
        if not (ps.spec.when or ps.spec.gate is not None):
            return False
        renderer = self.prepared.renderer
        try:
            ctx = self._context(s.id)
            if not renderer.evaluate_when(s.id, ctx):
                self._skip(s, f"condition `{ps.spec.when}` is false", "condition")
                return None
            return ps.spec.gate is not None and bool(renderer.evaluate_gate_when(s.id, ctx))
        except Exception as exc:  # a template error at run time
            self._finish(s, StepState.ERRORED, error=f"condition failed: {exc}")
            return None

    def _gate(self, s: StepRun) -> bool:
        """True when the step may go; parks or rejects it otherwise."""
        journal, options = self.journal, self.options
        if s.gate and s.gate.get("decision") == "approved":
            return True
        gate = self.plan.steps[s.id].spec.gate
        asks = gate is not None and gate.input_schema is not None
        if (options.approve_all and not asks) or s.id in options.approve:
            s.gate = {"decision": "approved", "by": "--approve", "reason": None, "at": utcnow_iso()}
            journal.append("gate_decided", step=s.id, decision="approved", by="--approve")
            return True
        if options.approve_all and s.state is not StepState.WAITING_APPROVAL:
            # an approval without its value would send the step without it (and its
            # dependents read `steps.<id>.input`): the gate waits for its approver
            self.reporter.warning(
                f"`{s.id}`: `--approve-all` does not approve this gate: it asks for an "
                "input, which its approver gives (at the prompt, or when the run parks "
                f"there: `workflow approve {self.run_id} {s.id} --input VALUE`)."
            )
        prompt = self._gate_prompt(s)
        if s.state is not StepState.WAITING_APPROVAL:
            journal.append("gate_waiting", step=s.id, prompt=prompt)
            s.state = StepState.WAITING_APPROVAL
            self.reporter.event("gate_waiting", step=s.id, prompt=prompt, run_id=self.run_id)
        decision, by = self._ask_approver(s, prompt), "terminal"
        if decision is None:
            decision, by = self._timed_out(s), "timeout"
        if decision is None:
            return False
        if decision == "approved" or (isinstance(decision, tuple) and decision[0] == "approved"):
            given = {"input": decision[1]} if isinstance(decision, tuple) else {}
            s.gate = {"decision": "approved", "by": by, "reason": None, "at": utcnow_iso()}
            s.gate.update(given)
            journal.append("gate_decided", step=s.id, decision="approved", by=by, **given)
            s.state = StepState.PENDING
            return True
        reason = decision[1] if isinstance(decision, tuple) else "rejected"
        journal.append("gate_decided", step=s.id, decision="rejected", by=by, reason=reason)
        s.gate = {"decision": "rejected", "by": by, "reason": reason}
        self._finish(s, StepState.REJECTED, error=f"gate rejected: {reason}")
        return False

    def _timed_out(self, s: StepRun) -> str | tuple[str, str] | None:
        """The gate's ``default`` once it has waited ``timeout`` seconds (since its first
        ``gate_waiting`` after the step's last reset), else None."""
        gate = self.plan.steps[s.id].spec.gate
        if gate is None or gate.timeout is None or gate.default is None:
            return None
        since = gate_waiting_since(self.view.events, s.id)
        if since is None or time.time() - parse_iso(since).timestamp() < gate.timeout:
            return None
        if gate.default == "approved":
            return "approved"
        return ("rejected", f"no decision within {gate.timeout:g} s (the gate's default)")

    def _gate_prompt(self, s: StepRun) -> str:
        try:
            return str(self.prepared.renderer.render_gate_prompt(s.id, self._context(s.id)))
        except Exception:  # the raw prompt still tells the approver what is asked
            return str(self.plan.steps[s.id].spec.gate.prompt)

    def _ask_approver(self, s: StepRun, prompt: str) -> str | tuple[str, Any] | None:
        if self.approver is None:
            return None
        upstream = {d: self._step_context(self.steps[d]) for d in self.plan.upstream(s.id)}
        gate = self.plan.steps[s.id].spec.gate
        schema = gate.input_schema if gate is not None else None
        decision = self.approver(
            GateRequest(
                run_id=self.run_id,
                step=s.id,
                agent=s.agent,
                prompt=prompt,
                upstream=upstream,
                input_schema=schema,
            )
        )
        if schema is not None and decision == "approved":
            decision = ("approved", None)
        if schema is not None and isinstance(decision, tuple) and decision[0] == "approved":
            from engine.workflow import value_problems

            value = decision[1]
            bad = ["no value was given"] if value is None else value_problems(schema, value)
            if bad:  # an approval without a usable value: the gate still waits
                self.reporter.warning(f"`{s.id}`: the gate's input was refused: {'; '.join(bad)}")
                return None
        return decision

    # -- rendering ------------------------------------------------------------------------

    def _step_context(self, s: StepRun) -> dict[str, Any]:
        """``steps.<id>``: the step's public fields, and why it did not end well.

        A ``for_each`` step that ran no item (skipped: no items, a false ``when``, a spent
        budget) still has ``results`` ``[]``, ``result`` ``"[]"`` and, with a
        ``result_schema``, ``data`` ``[]`` (docs/workflows.md, Fan-out), so its
        dependents render as documented.
        """
        ctx = s.context()
        ctx["reason"] = s.error or s.skip_reason or ""
        results = (s.handoff or {}).get("results")
        if isinstance(results, list):  # a `for_each` step: each item's result, in order
            ctx["results"] = results
        ps = self.plan.steps.get(s.id)
        if ps is not None and ps.spec.for_each is not None and "results" not in ctx:
            ctx["results"] = []
            ctx["result"] = ctx["result"] or "[]"
            if ps.spec.result_schema is not None and "data" not in (s.handoff or {}):
                ctx["data"] = []
        if s.handoff is not None and "data" in s.handoff:  # a step with a `result_schema`
            ctx["data"] = s.handoff["data"]
        if s.gate is not None and "input" in s.gate:  # what its gate's approver gave
            ctx["input"] = s.gate["input"]
        return ctx

    def _context(self, step_id: str | None = None) -> dict[str, Any]:
        """The rendering context: for a step, only its upstream steps (all for outputs).

        ``finally`` steps and outputs see ``run.status``: what the steps came to.
        """
        from engine.renderer import render_context

        steps = self.steps
        if step_id is not None:
            chosen = {sid: self._step_context(steps[sid]) for sid in self._reads(step_id)}
            always = self.plan.steps[step_id].spec.always
        else:
            chosen = {sid: self._step_context(s) for sid, s in steps.items()}
            always = True
        status = self._ended_state(main_only=True).value if always else RunState.RUNNING.value
        return render_context(
            inputs=self.plan.inputs,
            steps=chosen,
            run_id=self.run_id,
            workflow=self.prepared.spec.name,
            run_status=status,
        )

    def _reads(self, step_id: str) -> tuple[str, ...]:
        """The upstream steps a step's templates may read, computed once per step.

        Only what its templates name, unless they read `steps` dynamically (a loop): then
        every upstream step. Building the whole upstream context for every step of a deep
        graph would cost O(steps^2).
        """
        ups = self.upstream.get(step_id)
        if ups is None:
            refs = self.prepared.renderer.references(step_id).values()
            if any(r.dynamic_steps for r in refs):
                above = self.plan.upstream(step_id)
            else:
                above = {sid for r in refs for sid in r.steps}
            ups = self.upstream[step_id] = tuple(sid for sid in self.steps if sid in above)
        return ups

    # -- settling a step ------------------------------------------------------------------

    def _skip(self, s: StepRun, reason: str, kind: str) -> None:
        if self.interrupted.is_set():  # a resumed run decides it
            return
        s.state = StepState.SKIPPED
        s.skip_reason = reason
        s.skip_kind = kind
        s.finished_at = utcnow_iso()
        self.journal.append("step_skipped", step=s.id, reason=reason, kind=kind)
        self.store.write_step(self.run_id, s.id, _step_record(s))
        self.reporter.event("step_skipped", step=s.id, reason=reason)

    def _finish(
        self,
        s: StepRun,
        state: StepState,
        *,
        error: str | None = None,
        items: list[dict[str, Any]] | None = None,
    ) -> None:
        if self.interrupted.is_set():  # Ctrl-C ended the wait, not the step: it stays in flight
            return
        s.state = state
        s.error = error
        s.finished_at = utcnow_iso()
        s.in_flight = False
        self.store.write_step(self.run_id, s.id, _step_record(s, items))
        ended = {"step": s.id, "status": state.value}
        self.journal.append(
            "step_finished",
            **ended,
            attempt=s.attempt,
            delegation_run_id=s.delegation_run_id,
            **({"error": error} if error else {}),
        )
        self.reporter.event(
            "step_finished", **ended, duration_ms=s.duration_ms, agent=s.agent, error=error
        )

    def _step_timeout(self, ps: Any, agent: str) -> float:
        """The step's own deadline for one attempt (as the delegation would use it)."""
        if ps.spec.timeout:
            return float(ps.spec.timeout)
        entry = self.cfg.agents.get(agent)
        return float(entry.timeout if entry and entry.timeout else self.cfg.default_timeout)

    # -- delegating a step (in a worker thread) ---------------------------------------------

    def _run_step(self, s: StepRun, reattach: bool) -> None:
        """Run one step to its final state (in a worker thread)."""
        from engine.ask import asked, with_answer

        ps = self.plan.steps[s.id]
        if ps.spec.workflow is not None:
            _SubRun(self, s, ps).run()
            return
        agent = self._agent_for(s, ps, reattach)
        if ps.spec.for_each is not None:
            _FanOut(self, s, ps, agent).run(reattach)
            return
        try:
            task = self.prepared.renderer.render_sendable_task(s.id, self._context(s.id))
        except Exception as exc:
            self._finish(s, StepState.ERRORED, error=f"task failed to render: {exc}")
            return
        task = with_schema(with_answer(task, s.question), ps.spec.result_schema)
        result, bad_data = self._checked_attempts(_Unit(s, ps, agent), task, reattach)
        if result is None:
            self._finish(s, StepState.ERRORED, error=s.error)
            return
        if result.outcome.ok or result.outcome in (Outcome.FAILED, Outcome.BLOCKED):
            s.handoff = result.handoff
        if asked(result, s, self.journal):  # blocked with a question: parked until answered
            self.reporter.event("step_waiting_input", step=s.id, question=s.question)
            return
        state = StepState(result.outcome.value)
        error = str(result.error) if result.error else None
        if bad_data is not None:
            state, error = StepState.INVALID, bad_data
        if state.ok and ps.validator:
            state, error = self._validate(s, task, ps.validator)
        self._finish(s, state, error=error)

    def _agent_for(self, s: StepRun, ps: Any, reattach: bool) -> str:
        if ps.spec.capability and not reattach and len(ps.candidates) > 1:
            agent = self._route(ps)
        else:
            agent = s.agent or ps.agent
        s.agent = agent
        return str(agent)

    def _attempts(self, u: _Unit, task: str, reattach: bool) -> Any | None:
        """Delegate the step (or its item ``u.index``), retrying as its policy says; the
        last result (None: the machinery broke, ``u.s.error`` says how).

        An attempt started by an earlier process keeps its run id; it is re-attached
        (never re-sent) when the journal says a gateway accepted it, else sent again
        under the same Idempotency-Key, which a gateway runs once (the delegator takes
        its handoff instead when one is already there: docs/protocol.md, "After a crash
        of the sender").
        """
        s = u.s
        first = s.attempt if reattach and s.attempt else s.attempt + 1
        accepted = reattach and (s.dispatched_at is not None or u.index is not None)
        attempt = first
        while True:
            again = accepted and attempt == first
            result = self._attempt(
                u, task, attempt, again=again, journaled=reattach and attempt == first
            )
            if result is None or not self._retryable(result, u.ps, attempt):
                return result
            if self._back_off(u, attempt, result.outcome.value):
                return result  # cancelled while waiting
            attempt += 1

    def _checked_attempts(
        self, u: _Unit, task: str, reattach: bool
    ) -> tuple[Any | None, str | None]:
        """``_attempts``, then the handoff's ``data`` checked against ``result_schema``.

        A mismatch sends the task again with a corrective note (``engine.repair``) as the
        next attempt, up to the step's ``repair_attempts`` (else the agent's, else the
        config's); then the last result and the JSON pointer errors as one sentence.
        """
        from engine.repair import attempts_for, data_repair_note

        s, ps, index = u.s, u.ps, u.index
        schema = ps.spec.result_schema
        entry = self.cfg.agents.get(u.agent)
        allowed = attempts_for(
            ps.spec.repair_attempts,
            entry.repair_attempts if entry else None,
            self.cfg.repair_attempts,
        )
        current, repairs = task, 0
        while True:
            result = self._attempts(u, current, reattach)
            if result is None or schema is None or not result.outcome.ok:
                return result, None
            problems = data_problems(schema, result.handoff or {})
            if not problems:
                return result, None
            item = {} if index is None else {"index": index}
            self.journal.append(
                "step_data_refused", step=s.id, attempt=s.attempt, problems=problems, **item
            )
            if repairs >= allowed or self.cancel.is_set() or self._over_budget(ps):
                return result, (
                    "its `data` does not match the step's `result_schema`"
                    + (f" after {repairs} repair(s)" if repairs else "")
                    + ": "
                    + "; ".join(problems)
                )
            repairs += 1
            note = data_repair_note(problems, attempt=repairs, attempts=allowed)
            current, reattach = f"{task}\n\n{note}", False

    def _attempt(
        self, u: _Unit, task: str, attempt: int, *, again: bool, journaled: bool
    ) -> Any | None:
        """One delegation of the step; its result, or None when the machinery broke.

        An item of a ``for_each`` step has run id ``<run>-<step>-i<index>-<attempt>`` and
        journals ``item_started`` (with ``index``) instead of ``step_started``.
        """
        s, agent, index = u.s, u.agent, u.index
        s.attempt = attempt
        item = {} if index is None else {"index": index}
        drid = (
            f"{self.run_id}-{s.id}-{attempt}"
            if index is None
            else f"{self.run_id}-{s.id}-i{index}-{attempt}"
        )
        if index is None:
            self.step_reporter.steps_by_run[drid] = s.id
        else:
            self.step_reporter.quiet.add(drid)  # the step's own lines say it
        s.delegation_run_id = drid
        s.started_at = s.started_at or utcnow_iso()
        kind = "step_started" if index is None else "item_started"
        self._started(kind, s, agent, reattached=again, journaled=journaled, **item)
        s.state = StepState.RUNNING
        timeout = self._attempt_timeout(s, u.ps, agent, journaled)
        if journaled:  # resumed: what is left of its deadline, not a fresh one
            self.journal.append(
                "step_reattached", step=s.id, attempt=attempt, timeout_s=round(timeout, 3), **item
            )
        try:
            result = self.delegator.delegate(
                self._request(u, task, drid, timeout),
                reattach=again,
                cancel=self.cancel,
                reporter=self.step_reporter,
                interrupted=self.interrupted,
            )
        except OrchestratorError as exc:
            s.attempts.append({"run_id": drid, "outcome": "errored", "error": str(exc)})
            s.error = str(exc)
            return None
        self._note_usage(s, result, index)
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
        return result

    def _started(
        self, kind: str, s: StepRun, agent: str, *, reattached: bool, journaled: bool, **extra: Any
    ) -> None:
        """Journal (unless an earlier process did: ``journaled``) and show that attempt
        ``s.attempt`` (``s.delegation_run_id``) of ``s`` started; ``extra`` goes to both."""
        drid = s.delegation_run_id
        if not journaled:
            self.journal.append(
                kind, step=s.id, attempt=s.attempt, agent=agent, delegation_run_id=drid, **extra
            )
        self.reporter.event(
            kind,
            step=s.id,
            agent=agent,
            attempt=s.attempt,
            reattached=reattached,
            delegation_run_id=drid,
            **extra,
        )

    def _request(self, u: _Unit, task: str, drid: str, timeout: float) -> DelegationRequest:
        from engine.ask import session_of
        from engine.delegate import DelegationRequest

        s, ps, agent, index = u.s, u.ps, u.agent, u.index
        plan, options = self.plan, ps.spec.options
        labels = {"workflow": plan.workflow.name, "workflow_run": self.run_id, "step": s.id}
        if index is not None:
            labels["item"] = str(index)
        return DelegationRequest(
            target=agent,
            task=task,
            caller=plan.caller,
            timeout=timeout,
            run_id=drid,
            name=f"workflow {self.run_id} {s.id}",
            deliver=options.get("deliver"),
            model=options.get("model"),
            thinking=options.get("thinking"),
            channel=options.get("channel"),
            labels=labels,
            repair_attempts=ps.spec.repair_attempts,
            heartbeat_timeout=ps.spec.heartbeat_timeout,
            # an answered question continues the asking attempt's session (engine.ask)
            session_of=session_of(s.question) if index is None else None,
        )

    def _retryable(self, result: Any, ps: Any, attempt: int) -> bool:
        """True when the step's retry policy sends it again after this result."""
        policy = ps.spec.retry
        return (
            result.outcome.value in policy.on
            and attempt <= policy.max
            and not self.cancel.is_set()
            and not (self._past_deadline() and not ps.spec.always)
            and self._over_budget(ps) is None
        )

    def _back_off(self, u: _Unit, attempt: int, reason: str) -> bool:
        """Journal the retry and wait before it; True when the run was cancelled meanwhile.

        The last attempt is in the step file; earlier ones go to the journal so a crash
        during a retry keeps their history. The wait keeps a short outage from using up
        every retry at once; `workflow cancel` interrupts it.
        """
        s, index = u.s, u.index
        item, kind = ({}, "step") if index is None else ({"index": index}, "item")
        self.journal.append(f"{kind}_attempt", step=s.id, **item, **s.attempts[-1])
        policy = u.ps.spec.retry
        delay = retry_delay(
            policy.delay,
            attempt,
            rng=self.rng,
            bound=self._step_timeout(u.ps, u.agent),
            backoff=policy.backoff,
            max_delay=policy.max_delay,
            jitter=policy.jitter,
        )
        self.journal.append(
            f"{kind}_retry",
            step=s.id,
            attempt=attempt + 1,
            reason=reason,
            delay_s=round(delay, 3),
            **item,
        )
        self.reporter.event(
            f"{kind}_retry", step=s.id, attempt=attempt + 1, reason=reason, delay_s=delay, **item
        )
        return delay > 0 and self.retry_wait(self.cancel, delay)

    def _route(self, ps: Any) -> str:
        """The candidate for a capability step, at dispatch time: the least busy whose
        gateway accepts a connection, as ``orchestrate --capability`` routes
        (``engine.routing.choose``; agents of the local gateway are not probed)."""
        from engine.routing import choose, inflight_counts, probe_gateway

        registry = self.delegator.registry

        def probe(name: str) -> str | None:
            agent = registry.get(name)
            return None if agent.is_local else probe_gateway(agent.url)

        # Probed before the lock, which every step's routing shares (and a sub-workflow's):
        # a gateway that lets its connect time out must not hold the others up.
        down = {name: why for name in ps.candidates if (why := probe(name)) is not None}
        with self.route_lock:
            counts = inflight_counts(self.delegator.store)
            here: dict[str, int] = {}
            for other in self.steps.values():
                if other.state is StepState.RUNNING and other.agent:
                    here[other.agent] = here.get(other.agent, 0) + 1
            load = [(a, max(counts.get(a, 0), here.get(a, 0))) for a in ps.candidates]
            agent, _ = choose(load, down.get)
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
            interrupted=self.interrupted,
        )
        s.validation = verdict.as_dict()
        record = self.store.read(verdict.run_id, sub=False) or {}  # what the validator spent
        self._count(s, record.get("usage"), verdict.run_id, None, validation=True)
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

    # -- the end ----------------------------------------------------------------------------

    def _handled(self, s: StepRun) -> bool:
        """True when a step that ended badly was taken over: a step whose `when` tests
        its status ran (was not skipped, nor stopped at its gate)."""
        return any(
            s.id in self.tests[h]
            and self.steps[h].state.final
            and self.steps[h].state not in (StepState.SKIPPED, StepState.REJECTED)
            for h in self.plan.children(s.id)
        )

    def _ended_state(self, *, main_only: bool = False) -> RunState:
        """complete when every step ended well, was skipped by its own condition, or
        ended badly and was taken over; failed otherwise (docs/workflows.md)."""
        for s in self.steps.values():
            if main_only and self.plan.steps[s.id].spec.always:
                continue
            if self._bad(s) and not self._handled(s):
                return RunState.FAILED
        return RunState.COMPLETE

    def _add_spent(self, summary: dict[str, Any]) -> None:
        """What the run and each step spent (from the handoffs' ``usage``), when known."""
        from engine.runs.replay import add_spent

        with self.spend_lock:
            spent = {sid: list(v) for sid, v in self.spent.items()}
        add_spent(summary, spent)

    def _final_state(self) -> RunState:
        if self.cancel.is_set():
            return RunState.CANCELLED
        states = {s.state for s in self.steps.values()}
        if StepState.WAITING_INPUT in states:
            return RunState.WAITING_INPUT
        if StepState.WAITING_APPROVAL in states:
            return RunState.WAITING_APPROVAL
        return self._ended_state()

    def _outputs(self, state: RunState) -> dict[str, str]:
        if state is not RunState.COMPLETE:
            return {}
        try:
            return dict(self.prepared.renderer.render_outputs(self._context()))
        except Exception as exc:  # an output template that fails must not lose the run
            return {"error": f"outputs failed to render: {exc}"}

    def _conclude(self) -> RunResult:
        view = self.view
        state = self._final_state()
        outputs = self._outputs(state)
        parked = state in (RunState.WAITING_APPROVAL, RunState.WAITING_INPUT)
        if parked:
            waiting = [s.id for s in self.steps.values() if s.state in _PARKED]
            self.journal.append("run_paused", status=state.value, waiting=waiting)
        else:
            self.journal.append("run_finished", status=state.value)
        final = replay_run(self.store, view.run_id)
        final.state = state
        final.steps.update(self.steps)  # in-memory states are the freshest
        summary = summarize(final, outputs)
        if parked:
            summary["finished_at"] = None
        self._add_spent(summary)
        self.store.write_summary(view.run_id, summary)
        self.reporter.event("run_finished", run_id=view.run_id, status=state.value, summary=summary)
        return RunResult(view.run_id, state, view.path, summary)


#: How sure, from least to most: the lowest of a fan-out's items is the step's.
_CONFIDENCE_ORDER = ("low", "medium", "high")


class _FanOut:
    """One ``for_each`` step in progress: one delegation (and record) per item.

    Each item is delegated as a step is (retry policy, validation), under run id
    ``<run>-<step>-i<index>-<attempt>``; at most ``max_parallel`` at once, and the pool
    bounds them all. The journal keeps every finished item (``item_finished``), so a
    resumed run sends none of them again and re-attaches to the ones in flight. The step
    ends with the items' results in order (``results``; ``result`` is that list as JSON):
    complete or partial when every item is, else as its first item that did not end well.
    """

    def __init__(self, ex: _Execution, s: StepRun, ps: Any, agent: str) -> None:
        self.ex, self.s, self.ps, self.agent = ex, s, ps, agent
        self.spec = ps.spec
        self.lock = threading.Lock()
        #: Item index -> its record: index, item, status, delegation_run_id, handoff, error.
        self.done: dict[int, dict[str, Any]] = {}
        #: Item index -> its last attempt number (from the journal).
        self.last: dict[int, int] = {}
        #: Items started and not finished by an earlier process: re-attach, never resend.
        self.in_flight: set[int] = set()
        #: The step's answered question (an item asked it), sent with that item again.
        answer = s.question if s.question and s.question.get("answer") is not None else None
        self.answer: dict[str, Any] | None = answer
        #: The index of the item that asked the answered question (None: none did).
        self.answered: int | None = None

    def run(self, reattach: bool) -> None:
        """Delegate every item not done yet; then settle the step."""
        ex, s = self.ex, self.s
        items = self._items()
        if items is None:
            return
        if not items:
            ex._skip(s, f"`for_each` ({self.spec.for_each}) has no items", "empty")
            return
        self._restore(items, reattach)
        self._start(len(items), reattach)
        pending = [i for i in range(len(items)) if i not in self.done]
        width = max(1, min(len(pending), self.spec.max_parallel or ex.options.max_parallel))
        with ThreadPoolExecutor(max_workers=width, thread_name_prefix=f"item-{s.id}") as pool:
            for fut in [pool.submit(self._item, i, items[i]) for i in pending]:
                fut.result()
        self._conclude(items)

    def _items(self) -> list[Any] | None:
        """The items (None: the step ended errored, saying why)."""
        from engine.workflow import items_of

        ex, s = self.ex, self.s
        try:
            value = ex.prepared.renderer.evaluate_for_each(s.id, ex._context(s.id))
            return items_of(value, self.spec.split, where=f"`for_each` ({self.spec.for_each})")
        except Exception as exc:  # a template error, or a value that is no list
            ex._finish(s, StepState.ERRORED, error=f"for_each failed: {exc}")
            return None

    def _restore(self, items: list[Any], reattach: bool) -> None:
        """What earlier processes did: finished items (kept when they ended well, or when
        this is the same stretch of the run), attempts, and items left in flight."""
        finished, records = self._journaled()
        for i, rec in records.items():
            if i >= len(items) or rec.get("item") != items[i]:
                continue  # the items changed since (a retried upstream step)
            if self._keep(rec, reattach):
                self.done[i] = rec
            elif self._answered(rec):
                self.answered = i
        if reattach:
            self.in_flight = {i for i in self.last if i not in finished and i not in self.done}

    def _keep(self, rec: dict[str, Any], reattach: bool) -> bool:
        """Whether a finished item stays as it is: one that ended well, any in the same
        stretch, and after an answer every item but the one whose question was
        answered (a failed one too, unless ``--retry-failed``)."""
        state = StepState(rec.get("status", "errored"))
        if state.ok or reattach:
            return True
        if state is StepState.WAITING_INPUT:
            return not self._answered(rec)
        return self.answer is not None and not self.ex.options.retry_failed

    def _answered(self, rec: dict[str, Any]) -> bool:
        """True when ``rec`` is the waiting item whose question the step's answer is for."""
        asked = rec.get("question") or {}
        return self.answer is not None and (
            asked.get("delegation_run_id") == self.answer.get("delegation_run_id")
        )

    def _journaled(self) -> tuple[set[int], dict[int, dict[str, Any]]]:
        """Each item's last attempt (into ``last``); the items whose last attempt ended,
        and each item's last record (``item_finished``)."""
        finished: set[int] = set()
        records: dict[int, dict[str, Any]] = {}
        for ev in self.ex.view.events:
            if ev.get("step") != self.s.id or not isinstance(ev.get("index"), int):
                continue
            if ev.get("event") == "item_started" and isinstance(ev.get("attempt"), int):
                self.last[ev["index"]] = ev["attempt"]
                finished.discard(ev["index"])
            elif ev.get("event") == "item_finished":
                finished.add(ev["index"])
                rec = ev.get("record")
                if isinstance(rec, dict) and isinstance(rec.get("status"), str):
                    records[ev["index"]] = rec
        return finished, records

    def _start(self, count: int, reattach: bool) -> None:
        ex, s = self.ex, self.s
        drid = f"{ex.run_id}-{s.id}-items"
        s.attempt = max(s.attempt, 1)
        s.delegation_run_id = drid
        s.started_at = s.started_at or utcnow_iso()
        s.state = StepState.RUNNING
        ex._started(
            "step_started", s, self.agent, reattached=reattach, journaled=reattach, items=count
        )

    def _item(self, index: int, value: Any) -> None:
        """Delegate one item to its end and record it (in a worker thread)."""
        ex = self.ex
        run = StepRun(id=self.s.id, agent=self.agent, attempt=self.last.get(index, 0))
        state: StepState = StepState.CANCELLED
        error: str | None = "the run was cancelled"
        over = ex._over_budget(self.ps)
        if over and not ex.cancel.is_set():
            state, error = StepState.SKIPPED, over
        elif not ex.cancel.is_set():
            try:
                ctx = {**ex._context(self.s.id), self.spec.item_name: value}
                task = ex.prepared.renderer.render_sendable_task(self.s.id, ctx)
                task = with_schema(self._with_answer(task, index), self.spec.result_schema)
            except Exception as exc:
                state, error = StepState.ERRORED, f"task failed to render: {exc}"
            else:
                state, error = self._delegate(run, task, index)
        self._record(index, value, run, state, error)

    def _with_answer(self, task: str, index: int) -> str:
        """The task, with the question and its answer when this item asked it."""
        from engine.ask import with_answer

        return with_answer(task, self.answer) if index == self.answered else task

    def _delegate(self, run: StepRun, task: str, index: int) -> tuple[StepState, str | None]:
        from engine.ask import question_of

        ex, ps = self.ex, self.ps
        result, bad_data = ex._checked_attempts(
            _Unit(run, ps, self.agent, index), task, index in self.in_flight
        )
        if result is None:
            return StepState.ERRORED, run.error
        if result.outcome.ok or result.outcome in (Outcome.FAILED, Outcome.BLOCKED):
            run.handoff = result.handoff
        text = question_of(result.handoff)
        if text is not None:  # the item parks; the step asks once its items have ended
            drid = run.delegation_run_id
            run.question = {"text": text, "asked_at": utcnow_iso(), "delegation_run_id": drid}
            return StepState.WAITING_INPUT, None
        state = StepState(result.outcome.value)
        error = str(result.error) if result.error else None
        if bad_data is not None:
            return StepState.INVALID, bad_data
        if state.ok and ps.validator:
            run.state = state
            state, error = ex._validate(run, task, ps.validator)
        return state, error

    def _record(
        self, index: int, value: Any, run: StepRun, state: StepState, error: str | None
    ) -> None:
        ex, s = self.ex, self.s
        rec = {
            "index": index,
            "item": value,
            "status": state.value,
            "delegation_run_id": run.delegation_run_id,
            "attempts": run.attempt,
            "handoff": run.handoff,
            "error": error,
            **({"question": run.question} if run.question else {}),
        }
        with self.lock:
            self.done[index] = rec
            # The journal keeps the item (one append, whatever the number of items); the
            # step file is written once, when the step ends.
            ex.journal.append(
                "item_finished",
                step=s.id,
                index=index,
                status=state.value,
                delegation_run_id=run.delegation_run_id,
                record=rec,
                **({"error": error} if error else {}),
            )
        ex.reporter.event("item_finished", step=s.id, index=index, status=state.value)

    def _records(self) -> list[dict[str, Any]]:
        return [self.done[i] for i in sorted(self.done)]

    def _conclude(self, items: list[Any]) -> None:
        records = self._records()
        waiting = [r for r in records if r["status"] == StepState.WAITING_INPUT.value]
        if waiting:
            self._park(waiting[0], records)
            return
        states = [StepState(r["status"]) for r in records]
        bad = [r for r, st in zip(records, states, strict=True) if not st.ok]
        error: str | None = None
        if bad:
            first = bad[0]
            state = StepState(first["status"])
            why = f": {first['error']}" if first.get("error") else ""
            error = (
                f"{len(bad)} of {len(items)} items did not end well; item {first['index']} "
                f"({json.dumps(first['item'])[:80]}) ended {first['status']}{why}"
            )
        else:
            state = StepState.PARTIAL if StepState.PARTIAL in states else StepState.COMPLETE
        self.s.handoff = self._handoff(records, state)
        self.ex._finish(self.s, state, error=error, items=records)

    def _park(self, rec: dict[str, Any], records: list[dict[str, Any]]) -> None:
        """Park the step as ``waiting_input`` with the question of item ``rec``; the
        answer (``workflow answer``) goes to that item when the run is resumed."""
        ex, s = self.ex, self.s
        if ex.interrupted.is_set():
            return
        asked = rec["question"]
        s.question = {**asked, "index": rec["index"]}
        s.state, s.in_flight = StepState.WAITING_INPUT, False
        ex.store.write_step(ex.run_id, s.id, _step_record(s, records))
        ex.journal.append(
            "step_question",
            step=s.id,
            question=asked["text"],
            delegation_run_id=asked["delegation_run_id"],
            index=rec["index"],
        )
        ex.reporter.event("step_waiting_input", step=s.id, question=s.question)

    def _handoff(self, records: list[dict[str, Any]], state: StepState) -> dict[str, Any]:
        """The step's own handoff: its items' results in order, their lowest confidence."""
        handoffs = [r.get("handoff") or {} for r in records]
        confidences = [h.get("confidence") for h in handoffs if h.get("confidence")]
        results = [h.get("result", "") for h in handoffs]
        return {
            "status": state.value if state.ok else "failed",
            "result": json.dumps(results, ensure_ascii=False),
            "results": results,
            "confidence": min(confidences, key=_CONFIDENCE_ORDER.index, default=""),
            "artifacts": [a for h in handoffs for a in h.get("artifacts") or ()],
            "notes": "\n".join(str(h["notes"]) for h in handoffs if h.get("notes")),
            **({"data": [h.get("data") for h in handoffs]} if self.spec.result_schema else {}),
        }


class _SubRun:
    """One sub-workflow step in progress: its child run, started or resumed, and what
    the child came to as the step's result (docs/workflows.md, "Sub-workflows")."""

    def __init__(self, ex: _Execution, s: StepRun, ps: Any) -> None:
        self.ex, self.s, self.ps = ex, s, ps

    def run(self) -> None:
        """Start (or resume, or read) the child run; settle or park the step."""
        ex, s = self.ex, self.s
        try:
            summary = self._child()
        except OrchestratorError as exc:
            self.s.in_flight = False
            ex._finish(s, StepState.ERRORED, error=f"child run: {exc}")
            return
        self._settle(summary)

    def _runner(self) -> WorkflowRunner:
        """The parent's runner, drawing nothing: the child's steps are not the parent's."""
        r = self.ex.runner
        return WorkflowRunner(
            r.cfg, r.delegator, approver=r.approver, retry_wait=r.retry_wait, rng=r.rng
        )

    def _options(self) -> RunOptions:
        o = self.ex.options
        return RunOptions(
            max_parallel=o.max_parallel,
            approve_all=o.approve_all,
            retry_failed=o.retry_failed,
            force=o.force,
        )

    def _child(self) -> dict[str, Any]:
        """The child run's summary once this stretch of it is over."""
        ex, s = self.ex, self.s
        if ex.runner.child_runs is not None:  # `workflow test`: the child from a fixture
            s.attempt += 1
            s.started_at = s.started_at or utcnow_iso()
            inputs = ex.prepared.renderer.render_workflow_inputs(s.id, ex._context(s.id))
            return ex.runner.child_runs(s.id, inputs)
        cid = s.child_run_id
        if cid and ex.store.run_exists(cid):
            state = replay_run(ex.store, cid).state
            again = ex.options.retry_failed and state in (RunState.FAILED, RunState.CANCELLED)
            if state in (RunState.COMPLETE, RunState.FAILED, RunState.CANCELLED) and not again:
                return ex.store.read_summary(cid) or {"status": state.value}
            if state is not RunState.CANCELLED:
                # the child's inputs as rendered from this run's real values: the ones its
                # run.json keeps masked (a secret still in them) go with it
                rendered = ex.prepared.renderer.render_workflow_inputs(s.id, ex._context(s.id))
                child = ex.plan.sub_plans[s.id].workflow
                held = {k: rendered[k] for k in secret_input_names(rendered, child.secret_inputs)}
                return (
                    self._runner()
                    .resume(
                        cid,
                        self._options(),
                        parent_cancel=ex.cancel,
                        parent_interrupt=ex.interrupted,
                        inputs=held,
                    )
                    .summary
                )
        inputs = ex.prepared.renderer.render_workflow_inputs(s.id, ex._context(s.id))
        child = ex.plan.sub_plans[s.id].workflow
        prepared = prepare(ex.cfg, str(child.path.resolve()), inputs, caller=ex.plan.caller)
        cid = new_run_id("wf")
        s.child_run_id, s.agent = cid, f"workflow {child.name}"
        s.attempt += 1
        s.started_at = s.started_at or utcnow_iso()
        s.state, s.in_flight = StepState.RUNNING, True
        ex.journal.append("child_started", step=s.id, child_run_id=cid, workflow=child.name)
        ex.reporter.event(
            "step_started", step=s.id, agent=s.agent, attempt=s.attempt, delegation_run_id=cid
        )
        parent = {"run_id": ex.run_id, "step": s.id}
        return (
            self._runner()
            .start(
                prepared,
                self._options(),
                run_id=cid,
                parent=parent,
                parent_cancel=ex.cancel,
                parent_interrupt=ex.interrupted,
            )
            .summary
        )

    def _settle(self, summary: dict[str, Any]) -> None:
        """The step's state from the child's: its outputs as the result when complete."""
        ex, s = self.ex, self.s
        if ex.interrupted.is_set():  # Ctrl-C: the child run stays as it is, and so does s
            return
        status = str(summary.get("status"))
        if status in (RunState.WAITING_APPROVAL.value, RunState.WAITING_INPUT.value):
            s.state = StepState(status)
            ex.journal.append(
                "child_waiting", step=s.id, child_run_id=s.child_run_id, status=status
            )
            ex.reporter.event("step_waiting_child", step=s.id, child_run_id=s.child_run_id)
            return
        outputs = summary.get("outputs") if isinstance(summary.get("outputs"), dict) else {}
        s.handoff = {
            "status": "complete" if status == "complete" else "failed",
            "result": json.dumps(outputs, ensure_ascii=False),
            "data": outputs,
            "confidence": _lowest_confidence(summary),
            "artifacts": [],
            "notes": f"child run {s.child_run_id}" if s.child_run_id else "",
        }
        spent = summary.get("spent")
        if isinstance(spent, dict):
            ex._add_spend(s.id, spent.get("usd"), spent.get("tokens"))
            ex.journal.append(
                "step_spent",
                step=s.id,
                usd=spent.get("usd"),
                tokens=spent.get("tokens"),
                delegation_run_id=s.child_run_id,
            )
        s.attempts.append({"run_id": s.child_run_id, "outcome": status})
        if status == "complete":
            ex._finish(s, StepState.COMPLETE)
        elif status == "cancelled":
            ex._finish(s, StepState.CANCELLED, error=f"child run `{s.child_run_id}` was cancelled")
        else:
            ex._finish(s, StepState.FAILED, error=self._why(summary))

    def _why(self, summary: dict[str, Any]) -> str:
        """``child run `ID` ended failed: step `x` ended timeout: ...``."""
        steps: dict[str, Any] = summary.get("steps") or {}
        bad = [
            f"step `{sid}` ended {st.get('status')}"
            + (f": {st['error']}" if st.get("error") else "")
            for sid, st in steps.items()
            if isinstance(st, dict) and st.get("status") not in ("complete", "partial", "skipped")
        ]
        cid = self.s.child_run_id
        who = f"child run `{cid}`" if cid else "the child (a fixture)"
        return f"{who} ended {summary.get('status')}" + (f": {bad[0]}" if bad else "")


def _lowest_confidence(summary: dict[str, Any]) -> str:
    """The lowest confidence of a run's steps that gave one (``high`` if none did)."""
    steps: dict[str, Any] = summary.get("steps") or {}
    found = [st.get("confidence") for st in steps.values() if isinstance(st, dict)]
    known = [c for c in found if c in _CONFIDENCE_ORDER]
    return min(known, key=_CONFIDENCE_ORDER.index) if known else "high"


def _iso_in(seconds: float) -> str:
    """The ISO time ``seconds`` from now (UTC)."""
    from datetime import UTC, datetime, timedelta

    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def with_schema(task: str, schema: dict[str, Any] | None) -> str:
    """The task, and after it (when the step has a ``result_schema``) what to put in the
    handoff's ``data``: JSON matching that schema, shown in full."""
    if schema is None:
        return task
    text = json.dumps(schema, indent=2, ensure_ascii=False)
    return (
        f"{task}\n\nPut your structured result in the handoff's `data` field (with "
        f"`orchestrate handoff write`: `--data '<json>'`): a JSON value "
        f"matching this JSON Schema (keep `result` a short summary):\n{text}"
    )


def data_problems(schema: dict[str, Any], handoff: dict[str, Any]) -> list[str]:
    """One line per way the handoff's ``data`` breaks ``schema``: ``/pointer``: why."""
    from engine.workflow import value_problems

    if "data" not in handoff:
        return ["the handoff has no `data`"]
    return value_problems(schema, handoff["data"])


def _step_record(s: StepRun, items: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        **({"items": items} if items is not None else {}),
        "step": s.id,
        "agent": s.agent,
        "status": s.state.value,
        "handoff": s.handoff,
        "attempts": s.attempts,
        "started_at": s.started_at,
        "finished_at": s.finished_at,
        "duration_ms": s.duration_ms,
        "delegation_run_id": s.delegation_run_id,
        **({"child_run_id": s.child_run_id} if s.child_run_id else {}),
        "skip_reason": s.skip_reason,
        "error": s.error,
        "gate": s.gate,
        "validation": s.validation,
    }
