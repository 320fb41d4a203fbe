"""Repairing what the agent got wrong: a bounded corrective message, then a clear ending.

Real agents finish their turn without writing the handoff, write ``"status": "done"``,
wrap the JSON in a Markdown fence, or write it somewhere else. When the agent's run has
ended without a handoff (``engine.completion``), or a handoff was refused (parse or
schema errors), the delegation sends the agent ONE corrective message: what was wrong
(the JSON pointer errors, verbatim), the path to write, the ``orchestrate handoff write``
command and the delegation's key. With a session key (``send_session_key``) it goes
under the same ``sessionKey``:

- on the local gateway the session is real (the command agent gets
  ``$ORCH_SESSION_KEY`` and a session directory that outlives the run,
  ``$ORCH_SESSION_DIR``), so the correction is sent alone and the agent keeps its work;
- on OpenClaw (``hooks.allowRequestSessionKey``) openclaw@2026.9.6 runs each hook
  message in a fresh session even under the same key, so the original task is sent
  again before the correction, as it is without a session key.

``repair_attempts`` (per step, else per agent, else the config's; default 1) bounds it.
Every attempt is in the record (``envelope.repairs``). When none is left and the agent's
own handoff is still missing or refused (parse or schema errors, no key, too large) the
outcome is ``unusable`` (exit 6): the agent finished without a usable handoff; the
record keeps the refusal's JSON pointer errors. It is not retried as if the agent were
slow.

``RunWatch`` is what a waiting delegation consults on each wake-up: ``check`` (has the
run ended? was the dispatch refused?) and ``refused`` (a handoff could not be accepted).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.completion import ADMISSION_WAIT, COMPLETION_ERROR, QUICK, Dispatch
from engine.errors import (
    AgentRunError,
    DelegationLostError,
    HookUnreachableError,
    OrchestratorError,
    UnusableHandoffError,
)
from engine.files import utcnow_iso
from engine.handoff import WRONG_KEY
from engine.liveness import Heartbeat

if TYPE_CHECKING:
    from engine.store.protocol import RunStore

#: The first line of a corrective message (agents and scripted models look for it).
REPAIR_MARKER = "--- HANDOFF REPAIR ---"

#: Seconds a file may lag behind the run's end before the run counts as ended without a
#: handoff. The agent writes before its run ends, and the wait loop looks for the
#: handoff (inbox and record path) as soon as the end is reported, so this covers only a
#: writer whose rename lands a moment after its process is reaped (bench/repair.py).
END_GRACE = 0.05

#: Seconds a delegation whose handoff arrived waits for the run's end to be reported.
END_WAIT = 1.0

#: Seconds the run-id look-up of ``RunWatch.learn_run_id`` may take.
LOOKUP_S = 5.0

#: Refusals a repair can fix (a forged key or another run's handoff is never repaired).
REPAIRABLE = frozenset({"parse", "schema", "unkeyed", "size"})

#: Why a repair was sent, as the record names it, and how the message says it.
WHY = {
    "no_handoff": "your run ended, but nothing was written to handoff_path.",
    "parse": (
        "the file at handoff_path is not valid JSON. Write the bare JSON object: no "
        "Markdown fence, no text before or after it."
    ),
    "schema": "the file at handoff_path does not match the handoff schema:",
    "unkeyed": "the handoff has no `key`: copy the block's `key:` line into it.",
    "size": "the handoff is too large: keep `result` short and put long output in a file "
    "listed in `artifacts`.",
    "key": "a handoff was written to handoff_path, but refused: its `key` is not this "
    "delegation's. Copy the `key:` line below exactly (command agents: $ORCH_HANDOFF_KEY); "
    "a key from another task, or a made-up one, is never accepted.",
    "refused": "a handoff was written to handoff_path, but refused:",
}


#: How the caller is told the same where ``WHY`` speaks to the agent (``your run``, ``the
#: line below``): the warning of a repair sent and the error of an ``unusable`` ending.
TOLD = {
    "no_handoff": "the agent's run ended without writing its handoff.",
    "key": "a handoff was written to handoff_path, but refused: its `key` is not this "
    "delegation's.",
}


def told_text(why: str, problems: list[str]) -> str:
    """What ``why`` says to the caller: ``TOLD``'s sentence, else ``why_text``'s."""
    return TOLD.get(why) or why_text(why, problems)


#: How ``engine.handoff.unique_keys`` names a key written twice in a problem's text.
_TWICE = re.compile(r"key `([^`]*)` is written twice in one object")


def why_text(why: str, problems: list[str]) -> str:
    """What ``why`` (a key of ``WHY``, or a refusal's kind) says in a message: ``WHY``'s
    sentence, except for a file refused only for a key written twice (``problems``
    name it), which is JSON otherwise: that cause is named instead of "not valid JSON"."""
    if why == "parse":
        for problem in problems:
            m = _TWICE.search(problem)
            if m:
                return (
                    f"the file at handoff_path writes the key `{m.group(1)}` twice in one "
                    "object. Write each key once: the last would silently win."
                )
    return WHY.get(why, why)


@dataclass(frozen=True)
class Ending:
    """Why a delegation ends before its deadline: ``errored`` or ``unusable``."""

    outcome: str
    error: OrchestratorError
    keep_pending: bool = True


@dataclass(frozen=True)
class HandoffAddress:
    """Where the agent of one delegation writes its handoff, as the HANDOFF block of its
    task message says (``engine.message``): the run, the agent, the file, the command
    that writes it, and the delegation's key (None: the delegation has none)."""

    run_id: str
    agent: str
    path: Path
    write_command: str
    key: str | None = None


def repair_message(
    to: HandoffAddress, *, why: str, problems: list[str], attempt: int, attempts: int
) -> str:
    """The corrective message: what was wrong, where to write, how, and the key."""
    lines = [
        REPAIR_MARKER,
        f"Repair {attempt} of {attempts}: {why_text(why, problems)}",
        *(f"  - {p}" for p in problems),
        "Write the handoff now (the fields of the HANDOFF block), then stop.",
        f"run_id: {to.run_id}",
        f"agent: {to.agent}",
        f"handoff_path: {to.path}",
    ]
    if to.key is not None:
        lines.append(f"key: {to.key}")
    lines += ["or run:", to.write_command]
    return "\n".join(lines)


def unusable(
    agent: str, drop: Path, why: str, problems: list[str], repairs: int
) -> Ending:
    """The ending of a delegation whose agent finished without a usable handoff.

    ``why`` is a key of ``WHY`` (or a refusal's kind); ``problems`` (the refusal's JSON
    pointer errors) are kept verbatim in the error, hence in the record's ``error``.
    """
    detail = told_text(why, problems).rstrip(":.")
    listed = "".join(f"\n  - {p}" for p in problems)
    spent = (
        f"after {repairs} repair attempt(s)"
        if repairs
        else "with no repair allowed (`repair_attempts: 0`)"
    )
    return Ending(
        "unusable",
        UnusableHandoffError(
            f"`{agent}` finished without a usable handoff ({detail}) {spent}; expected at "
            f"`{drop}`.{listed}",
            agent=agent,
            path=drop,
        ),
    )


def data_repair_note(problems: list[str], *, attempt: int, attempts: int) -> str:
    """The corrective note after a task whose handoff's ``data`` broke the step's result
    schema (engine.runner): the JSON pointer errors, verbatim, before the task again."""
    return "\n".join(
        [
            REPAIR_MARKER,
            f"Repair {attempt} of {attempts}: the handoff's `data` does not match the result "
            "schema below:",
            *(f"  - {p}" for p in problems),
            "Do the task again and write a handoff whose `data` matches the schema.",
        ]
    )


def attempts_for(step: int | None, agent: int | None, default: int) -> int:
    """How many repairs a delegation may send: the step's, else the agent's, else the config's."""
    for value in (step, agent):
        if value is not None:
            return max(0, int(value))
    return max(0, int(default))


#: Sends a repair: (message text, attempt number) -> the held dispatch, or None when the
#: gateway answered at once (no completion to wait for). Raises OrchestratorError.
Resend = Callable[[str, int], "Dispatch | None"]


class RunWatch:
    """One delegation's view of its agent's run: completion, refusals and repairs.

    The delegation's wait loop calls ``check`` on every wake-up and ``refused`` when a
    handoff cannot be accepted; both return an ``Ending`` when the delegation must end
    now, else None (keep waiting, perhaps after a repair was sent).
    """

    def __init__(
        self,
        *,
        envelope: dict[str, Any],
        to: HandoffAddress,
        store: RunStore,
        sub: bool,
        allowed: int,
        grace: float,
        message: str,
        same_session: bool,
        resend: Resend,
        clock: Callable[[], float],
        dispatch: Dispatch | None = None,
        on_admitted: Callable[[], None] | None = None,
        on_repair: Callable[[str], None] | None = None,
        heartbeat: Heartbeat | None = None,
        lookup: Callable[[], Any] | None = None,
        resend_task: bool = True,
        ended: threading.Event | None = None,
        retries: _Retries | None = None,
    ) -> None:
        self._ended = ended if ended is not None else threading.Event()
        self._retries = retries if retries is not None else _Retries()
        self.heartbeat = heartbeat
        self._lookup = lookup
        self.envelope = envelope
        self.to = to
        self._store = store
        self._sub = sub
        self.allowed = allowed
        self.grace = grace
        self.message = message
        self.same_session = same_session
        self.resend_task = resend_task or not same_session
        self._resend = resend
        self._clock = clock
        self.dispatch = dispatch
        self._first = dispatch
        self._on_admitted = on_admitted
        self._on_repair = on_repair
        self._admitted = dispatch is None
        self._seen: Dispatch | None = None  # the dispatch whose answer was read already
        self._looked: Dispatch | None = None  # the last dispatch looked after (fresh_answer)
        # Refusals listed before the current dispatch (a later one is its attempt's).
        self._rejected_before = len(envelope.get("rejected") or [])

    @property
    def repairs(self) -> list[dict[str, Any]]:
        """The repairs sent so far (the envelope's ``repairs``)."""
        found: list[dict[str, Any]] = self.envelope.get("repairs", [])
        return found

    # -- the wait loop's questions ---------------------------------------------------

    def fresh_answer(self) -> bool:
        """True once for each dispatch whose answer is in (or that failed): the loop then
        looks for the handoff before ``check`` judges the run's end, whichever thread
        the answer came on (a first try answered at once, or a dispatch thread's wake)."""
        d = self.dispatch
        if d is None or d is self._looked or not d.done:
            return False
        self._looked = d
        return True

    def next_wake(self) -> float | None:
        """The ``clock()`` time at which ``check`` has something new to decide, if any."""
        wake = self._dispatch_wake()
        if self.heartbeat is not None:
            beat = self._clock() + max(0.0, self.heartbeat.left())
            wake = beat if wake is None else min(wake, beat)
        return wake

    def _dispatch_wake(self) -> float | None:
        d = self.dispatch
        if d is None:
            return None
        if not d.done:
            return None if self._admitted else self._trying_since(d) + ADMISSION_WAIT
        if d.ended_at is not None and d.completion is not None and d is not self._seen:
            return d.ended_at + self.grace
        return None

    def check(self) -> Ending | None:
        """Decide after a wake-up: end now (refused dispatch, run error, no handoff, silent
        past ``heartbeat_timeout``) or not."""
        ending = self._check_dispatch()
        if ending is None and self.heartbeat is not None and self.heartbeat.left() <= 0:
            silent = self.heartbeat.silent_for()
            self.learn_run_id()
            return Ending(
                "lost",
                DelegationLostError(
                    f"`{self.to.agent}` was silent for {silent:.0f} s (heartbeat_timeout "
                    f"{self.heartbeat.timeout:g} s: no progress reported, no handoff); a "
                    "handoff that arrives later is still recorded, superseding this "
                    "ending (marked late only after the delegation's timeout).",
                    agent=self.to.agent,
                ),
            )
        return ending

    def _check_dispatch(self) -> Ending | None:
        d = self.dispatch
        if d is None or d is self._seen:
            return None
        now = self._clock()
        if not d.done:
            if not self._admitted and now - self._trying_since(d) >= ADMISSION_WAIT:
                self._admit()
            return None
        if d.error is not None:
            self._seen = d
            return self._dispatch_failed(d.error, first=d is self._first)
        if not self._admitted:
            self._admit()
        result = d.result
        if d is self._first and result is not None:
            self.envelope["attempts"] = result.attempts
            self.envelope["gateway_run_id"] = result.gateway_run_id
        completion = d.completion
        if completion is None:  # a gateway without waitForCompletion: wait for the file
            self._seen = d
            return None
        if completion.status == COMPLETION_ERROR:
            self._seen = d
            self.envelope["run_ended"] = {"status": "error", "at": utcnow_iso()}
            self._came_back("run_error")
            return Ending(
                "errored",
                AgentRunError(
                    f"the gateway reports that `{self.to.agent}`'s run ended in error "
                    f"({completion.reason}) and no handoff arrived.",
                    agent=self.to.agent,
                ),
            )
        if self._store.has_handoff(self.to.run_id, sub=self._sub):
            return None  # the loop reads it
        assert d.ended_at is not None
        if now < d.ended_at + self.grace:
            return None
        self._seen = d
        self.envelope["run_ended"] = {"status": "ok", "at": utcnow_iso()}
        return self._repair(*self._why_none())

    def _why_none(self) -> tuple[str, list[str], str | None]:
        """Why the run ended without a usable handoff: ``no_handoff``, or, when a file
        was written since the last dispatch and refused while the caller kept waiting (a
        wrong key), ``key`` (or ``refused`` with its reason): ``(why, problems, file)``."""
        rejected = self.envelope.get("rejected") or []
        fresh = [r for r in rejected[self._rejected_before :] if isinstance(r, dict)]
        if not fresh:
            return "no_handoff", [], None
        last = fresh[-1]
        reason = str(last.get("reason") or "")
        why = "key" if WRONG_KEY in reason else "refused"
        problems = [reason, *map(str, last.get("problems") or [])] if why == "refused" else []
        return why, problems, str(last["file"]) if last.get("file") else None

    def refused(
        self, kind: str, problems: list[str], *, moved_to: str | None = None
    ) -> Ending | None:
        """A handoff was refused (``parse``, ``schema``, ``unkeyed``, ``size``): repair, or end.

        Returns None when a repair was sent (``moved_to``: where the caller kept the
        refused file); otherwise ``unusable`` with the refusal's ``problems``.
        """
        return self._repair(kind, problems, moved_to)

    def before_delivery(self, *, file_there: bool) -> None:
        """Before the loop looks for the handoff: note what the gateway answered so far.

        With a file there, note the run's end if it comes within ``END_WAIT`` (and what
        a repair brought back); without one, only take an answer already in (the file may
        land before the loop sees that answer).
        """
        if not file_there:
            first = self._first
            if first is not None and first.done and first.result is not None:
                if not self._admitted:
                    self._admit()
                self.envelope["attempts"] = first.result.attempts
                self.envelope["gateway_run_id"] = first.result.gateway_run_id
            return
        self.note_handoff(None)

    def note_handoff(self, status: str | None) -> None:
        """A handoff was accepted: note the run's end if it comes within ``END_WAIT``.

        The agent usually ends its run right after writing; a short wait lets the record
        carry the gateway's run id and the run's end without delaying the caller much.
        """
        if not self._admitted:
            self._admit()
        d = self.dispatch
        if d is not None and (d.done or d.wait(END_WAIT)):
            first = self._first
            if first is not None and first.result is not None:
                self.envelope["attempts"] = first.result.attempts
                self.envelope["gateway_run_id"] = first.result.gateway_run_id
            if d.completion is not None:
                self.envelope["run_ended"] = {"status": d.completion.status, "at": utcnow_iso()}
            if d is not first and d.result is not None and self.repairs:
                self.repairs[-1]["gateway_run_id"] = d.result.gateway_run_id
        if not self.envelope.get("attempts"):
            self.envelope["attempts"] = 1  # admitted: the agent answered
        if self.repairs and status is not None:
            self._came_back(f"handoff:{status}")

    def after_delivery(self, record: dict[str, Any]) -> None:
        """The handoff was recorded: say in its record what the last repair brought back
        (``RunStore.annotate``: one more write, on repaired delegations only)."""
        repairs = record.get("envelope", {}).get("repairs")
        if not isinstance(repairs, list) or not repairs or repairs[-1].get("came_back"):
            return
        repairs[-1]["came_back"] = f"handoff:{record.get('status')}"
        self._came_back(f"handoff:{record.get('status')}")
        self._store.annotate(self.to.run_id, record, sub=self._sub)

    def learn_run_id(self) -> None:
        """The delegation ends before the run: ask the gateway for the run's id once.

        A held answer names the run only when the run ends; a record of a timeout needs
        it (the agent's workspace, the gateway's logs), so the same request is sent again
        without waiting, under the same Idempotency-Key, which the gateway dedupes.
        """
        first = self._first
        if self._lookup is None or first is None or self.envelope.get("gateway_run_id"):
            return
        if first.done and (first.result is not None or self.envelope.get("unreachable")):
            if first.result is not None:  # answered: the id is in its answer
                self.envelope["gateway_run_id"] = first.result.gateway_run_id
            return  # refused at connect each time: the gateway never had the task
        # Still held, or its POST gave up at the deadline just before this look (under
        # load the two race): the gateway may well have the task, so ask.
        try:
            self.envelope["gateway_run_id"] = self._lookup().gateway_run_id
        except OrchestratorError:
            pass  # the record says null, as it would have

    def abandon(self) -> None:
        """The delegation has ended: its held POSTs are not retried, reported or sent
        again (docs/protocol.md: a late handoff is still merged from its file)."""
        self._ended.set()

    # -- internals -------------------------------------------------------------------

    def _trying_since(self, d: Dispatch) -> float:
        """The ``clock()`` time the first dispatch's current attempt began: a failed
        attempt (a refused connection, a 5xx) that is retried has not admitted the task,
        so ``ADMISSION_WAIT`` counts from its retry, not from the first try."""
        if d is not self._first:
            return d.started_at
        return max(d.started_at, self._retries.next_at)

    def _admit(self) -> None:
        self._admitted = True
        if self._on_admitted is not None:
            self._on_admitted()

    def _dispatch_failed(self, error: OrchestratorError, *, first: bool) -> Ending | None:
        refused = error.status_code is not None and 400 <= error.status_code < 500
        if first and isinstance(error, HookUnreachableError) and self.envelope.get("unreachable"):
            # every attempt was refused at connect: the task never reached the gateway
            return Ending("errored", error, keep_pending=False)
        if first and not self._admitted:
            # As without a held request: a 4xx means the agent never got the task.
            return Ending("errored", error, keep_pending=not refused)
        if refused:
            return Ending("errored", error)
        if isinstance(error, HookUnreachableError) or error.status_code is None:
            return None  # the held answer was lost, not the run: wait for the file
        return Ending("errored", error)

    def _came_back(self, what: str) -> None:
        if self.repairs and self.repairs[-1].get("came_back") is None:
            self.repairs[-1]["came_back"] = what

    def _repair(self, why: str, problems: list[str], rejected: str | None) -> Ending | None:
        self._came_back(why)
        if len(self.repairs) >= self.allowed:
            return unusable(self.to.agent, self.to.path, why, problems, len(self.repairs))
        n = len(self.repairs) + 1
        correction = repair_message(
            self.to, why=why, problems=problems, attempt=n, attempts=self.allowed
        )
        # Without a session that keeps the agent's work the task goes again: so on
        # OpenClaw, where openclaw@2026.9.6 starts each hook run in a fresh session even
        # under the same `sessionKey` (measured: the second run's model call carried none
        # of the first run's turns), a bare correction would be all the agent saw.
        text = f"{self.message}\n\n{correction}" if self.resend_task else correction
        entry: dict[str, Any] = {
            "attempt": n,
            "why": why,
            "problems": problems,
            "at": utcnow_iso(),
            "session": "same" if self.same_session else "new",
            "task_resent": self.resend_task,
            "came_back": None,
        }
        if rejected:
            entry["rejected_file"] = rejected
        self.envelope.setdefault("repairs", []).append(entry)
        self._rejected_before = len(self.envelope.get("rejected") or [])
        if self._on_repair is not None:
            told = told_text(why, problems).rstrip(":.")
            self._on_repair(
                f"{self.to.agent}: {told}; repair {n} of {self.allowed} sent ({self.to.run_id})"
            )
        try:
            self.dispatch = self._resend(text, n)
        except OrchestratorError as exc:
            entry["error"] = exc.message
            return Ending("errored", exc)
        return None


@dataclass
class _Retries:
    """When the first dispatch's next attempt starts (a ``clock()`` value; 0.0 before
    any retry): written by its retry reports, read by ``RunWatch`` to date admission."""

    next_at: float = 0.0


def start(
    *,
    client: Any,
    target: Any,
    body: dict[str, Any],
    run_id: str,
    deadline: float,
    on_retry: Callable[[str, int, float, str], None],
    hold: bool,
    same_session: bool,
    envelope: dict[str, Any],
    drop: Path,
    store: RunStore,
    sub: bool,
    allowed: int,
    grace: float,
    write_command: str,
    clock: Callable[[], float],
    wake: Callable[[], None],
    on_admitted: Callable[[], None] | None = None,
    on_repair: Callable[[str], None] | None = None,
    key: str | None = None,
    heartbeat: Heartbeat | None = None,
    resend_task: bool = True,
) -> tuple[RunWatch, Any]:
    """Send the task and return the watch of its run, plus the gateway's answer if known.

    With ``hold`` the body asks for ``waitForCompletion`` and the POST runs on a thread
    (``engine.completion.Dispatch``): the answer is None here and ``RunWatch.check``
    reports a refusal as soon as it comes. Without it the POST is made here, and a
    refusal raises as before.
    """

    ended = threading.Event()  # set by RunWatch.abandon: the delegation is over
    retries = _Retries()

    def first_retry(name: str, attempt: int, delay: float, reason: str) -> None:
        retries.next_at = clock() + delay
        on_retry(name, attempt, delay, reason)

    def post(
        message: str | None, idem: str, *, quick: float | None = None, resume: Any = None
    ) -> Any:
        sent = body if message is None else {**body, "message": message}
        return client.post_agent(
            target, sent, idempotency_key=idem, deadline=deadline,
            on_retry=first_retry if idem == run_id else on_retry,
            hold=hold, ended=ended, quick=quick, resume=resume,
        )

    def held(message: str | None, idem: str, name: str) -> Dispatch:
        # The first try on this thread: an instant run's answer costs no hand-over.
        return Dispatch(
            lambda: post(message, idem), wake, clock=clock, name=name,
            first=lambda: post(message, idem, quick=min(QUICK, max(0.0, deadline - clock()))),
            resume=lambda carry_on: post(message, idem, resume=carry_on),
        )

    def lookup() -> Any:
        # The same Idempotency-Key without waiting: a gateway that holds its answers
        # (OpenClaw, the local gateway) dedupes it and names the run at once.
        quick = {k: v for k, v in body.items() if k != "waitForCompletion"}
        return client.post_agent(
            target, quick, idempotency_key=run_id, deadline=clock() + LOOKUP_S, hold=False
        )

    def resend(text: str, n: int) -> Dispatch | None:
        idem = f"{run_id}-r{n}"
        if hold:
            return held(text, idem, f"repair:{run_id}")
        post(text, idem)
        return None

    answer = None
    dispatch = None
    if hold:
        body["waitForCompletion"] = True
        envelope["attempts"] = 1  # in flight; the answer says how many it took
        dispatch = held(None, run_id, f"hook:{run_id}")
    else:
        answer = post(None, run_id)
    watch = RunWatch(
        envelope=envelope,
        to=HandoffAddress(run_id, envelope["target"], drop, write_command, key),
        store=store,
        sub=sub,
        allowed=allowed,
        grace=grace,
        message=str(body["message"]),
        same_session=same_session,
        resend=resend,
        clock=clock,
        dispatch=dispatch,
        on_admitted=on_admitted,
        on_repair=on_repair,
        heartbeat=heartbeat,
        lookup=lookup if hold else None,
        resend_task=resend_task,
        ended=ended,
        retries=retries,
    )
    return watch, answer
