"""An agent can ask: a ``blocked`` handoff with a ``question``, and its answer.

An agent that cannot go on without something only a person knows writes
``"status": "blocked"`` with a ``question``. The delegation then waits for input
(exit 3), like a gate:

- in a workflow the step parks as ``waiting_input``; ``workflow answer RUN STEP "text"``
  records the answer (``answer_step``) and ``workflow resume`` delegates the step again
  to the same agent, with the question and the answer after the task (``with_answer``);
- a single ``orchestrate`` prints the question and the command to continue,
  ``orchestrate answer RUN "text"`` (``answer_delegation``), which records the answer in
  the asking run's record and delegates again (run id ``<RUN>-a<n>``), waiting as usual.

Either way the new delegation continues the asking attempt's session
(``DelegationRequest.session_of``, ``session_of``): with ``send_session_key`` its
``sessionKey`` is the asking run's, so the agent keeps its work where the gateway keeps
sessions.

The seed 003 daemon calls this "reply-parent"; Lobster and LangGraph call it an input
step or an interrupt.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from engine.errors import RunStateError, UsageError, did_you_mean
from engine.files import utcnow_iso

if TYPE_CHECKING:
    from engine.config import Config
    from engine.delegate import DelegationResult, Delegator
    from engine.reporter import Reporter
    from engine.store.protocol import RunStore

#: How a continuation's task shows the question and its answer.
ANSWER_MARKER = "--- YOUR QUESTION AND ITS ANSWER ---"


def question_of(handoff: dict[str, Any] | None) -> str | None:
    """The question of a ``blocked`` handoff, if it asks one."""
    if not handoff or handoff.get("status") != "blocked":
        return None
    q = handoff.get("question")
    return q if isinstance(q, str) and q.strip() else None


def with_answer(task: str, question: dict[str, Any] | None) -> str:
    """The task followed by the agent's question and its answer (when answered)."""
    if not question or question.get("answer") is None:
        return task
    return (
        f"{task}\n\n{ANSWER_MARKER}\nYou asked: {question['text']}\n"
        f"Answer (from {question.get('by') or 'the caller'}): {question['answer']}\n"
        "Continue the task with this answer."
    )


def session_of(question: dict[str, Any] | None) -> str | None:
    """The delegation whose session an answered question continues (the asking attempt)."""
    if not question or question.get("answer") is None:
        return None
    asking = question.get("delegation_run_id")
    return asking if isinstance(asking, str) and asking else None


# -- workflows -------------------------------------------------------------------------


def asked(result: DelegationResult, step: Any, journal: Any) -> bool:
    """Park ``step`` as ``waiting_input`` if ``result`` is a question; True when parked."""
    from engine.states import StepState

    text = question_of(result.handoff)
    if text is None:
        return False
    step.question = {
        "text": text,
        "asked_at": utcnow_iso(),
        "delegation_run_id": result.run_id,
    }
    step.state = StepState.WAITING_INPUT
    step.in_flight = False
    journal.append(
        "step_question", step=step.id, question=text, delegation_run_id=result.run_id
    )
    return True


def replay_question(step: Any, ev: dict[str, Any]) -> None:
    """Apply a ``step_question`` or ``step_answered`` journal event to a replayed step."""
    from engine.states import StepState

    if ev["event"] == "step_question":
        step.question = {
            "text": ev.get("question"),
            "asked_at": ev.get("at"),
            "delegation_run_id": ev.get("delegation_run_id"),
        }
        step.state = StepState.WAITING_INPUT
        step.in_flight = False
    elif step.question is not None:
        step.question = {
            **step.question,
            "answer": ev.get("answer"),
            "by": ev.get("by"),
            "answered_at": ev.get("at"),
        }


def waiting_line(
    run_id: str, step: str, question: dict[str, Any] | None, cf: str = "", again: str = ""
) -> str:
    """What ``workflow status`` says about a step waiting for an answer (its commands
    with ``cf``: `` --config PATH`` or nothing, ``engine.runs.admin.run_status``; the
    resume with ``again``, the `` -i NAME=VALUE`` of ``engine.runs.admin.resume_inputs``)."""
    q = (question or {}).get("text", "?")
    if (question or {}).get("answer") is not None:
        return f'asked "{q}"; answered: continue with `workflow resume {run_id}{again}{cf}`'
    return (
        f'asks "{q}": answer with `workflow answer {run_id} {step} "..."{cf}`, then '
        f"`workflow resume {run_id}{again}{cf}`"
    )


def answer_step(
    cfg: Config, run_id: str, step: str, text: str, *, by: str, replace: bool = True
) -> dict[str, Any]:
    """Record the answer to the question of a parked step (then ``workflow resume``).

    Returns the journal's ``step_answered`` event; when it replaces an earlier answer, the
    event has ``replaced``: ``{"answer", "by", "at"}`` of that one. With ``replace=False``
    a question answered already is refused (``RunStateError``, exit 2), naming that
    answer: of two answers given at once, one is recorded and the other refused, as with
    gates. The look and the append hold the run's answer lock (a file store's
    ``<run>/.answer.lock``, ``flock``), so no answer is replaced unseen.
    """
    from engine.runs import run_dir
    from engine.runs.replay import replay_run
    from engine.states import StepState
    from engine.store import open_store

    if not text.strip():
        raise UsageError("the answer is empty: pass the text to send to the agent.")
    store = open_store(cfg)
    run_dir(cfg, run_id, store=store)  # the run exists, or one clear paragraph
    with _answer_lock(store, run_id):
        view = replay_run(store, run_id)
        if step not in view.steps:
            raise UsageError(
                f"run `{run_id}` has no step `{step}`"
                f"{did_you_mean(step, list(view.steps)) or '.'}"
            )
        s = view.steps[step]
        if s.state is not StepState.WAITING_INPUT or s.question is None:
            raise RunStateError(
                f"step `{step}` of run `{run_id}` is not waiting for an answer (it is "
                f"{s.state.value})."
            )
        earlier = s.question if s.question.get("answer") is not None else None
        if earlier is not None and not replace:
            raise RunStateError(
                f"step `{step}` of run `{run_id}` was answered already: "
                f"{str(earlier.get('answer'))[:80]!r} by {earlier.get('by') or 'someone'} "
                f"at {earlier.get('answered_at')}. Give `--replace` to replace that answer, "
                f"or continue with `workflow resume {run_id}`."
            )
        was = (
            {"replaced": {k: earlier.get(k) for k in ("answer", "by")}
             | {"at": earlier.get("answered_at")}}
            if earlier is not None
            else {}
        )  # fmt: skip
        journal = store.journal(run_id)
        try:
            return journal.append("step_answered", step=step, answer=text, by=by, **was)
        finally:
            journal.close()


@contextmanager
def _answer_lock(store: RunStore, run_id: str) -> Iterator[None]:
    """Hold run ``run_id``'s answer lock (an ``flock`` in a file store's run directory;
    other stores: none)."""
    import fcntl

    from engine.store import FileRunStore

    if not isinstance(store, FileRunStore):
        yield
        return
    with open(store.run_locator(run_id) / ".answer.lock", "a+", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# -- a single delegation -----------------------------------------------------------------


def workflow_step_of(envelope: dict[str, Any] | None) -> tuple[str, str] | None:
    """``(workflow run id, step id)`` when the delegation of ``envelope`` is a workflow
    step's (the runner labels it ``workflow_run`` and ``step``), else None. Such a
    delegation belongs to its run: the run answers, resumes and cancels it."""
    labels = (envelope or {}).get("labels")
    if not isinstance(labels, dict):
        return None
    run, step = labels.get("workflow_run"), labels.get("step")
    if isinstance(run, str) and run and isinstance(step, str) and step:
        return run, step
    return None


def step_answer_hint(run: str, step: str, text: str = "...", again: str = "") -> str:
    """The commands that answer step ``step`` of workflow run ``run``, for a message (the
    resume with ``again``: ``engine.runs.admin.resume_inputs`` of the run's run.json)."""
    return f'`workflow answer {run} {step} "{text}"`, then `workflow resume {run}{again}`'


def answer_delegation(
    delegator: Delegator,
    run_id: str,
    text: str,
    *,
    by: str,
    timeout: float | None = None,
    reporter: Reporter | None = None,
) -> DelegationResult:
    """Answer the question of delegation ``run_id`` and delegate again; wait for the result."""
    from engine.delegate import DelegationRequest
    from engine.files import check_id

    if not text.strip():
        raise UsageError("the answer is empty: pass the text to send to the agent.")
    check_id(run_id, "run id")
    store = delegator.store
    record = _asking_record(store, run_id)
    env = record["envelope"]
    if (owner := workflow_step_of(env)) is not None:
        # Answered here it would be sent outside the run, which still waits for it.
        from engine.runs.admin import resume_inputs

        again = resume_inputs(store.read_run(owner[0]))
        raise UsageError(
            f"this delegation is step `{owner[1]}` of workflow run {owner[0]}: answer it "
            f"with {step_answer_hint(*owner, again=again)}."
        )
    question = question_of(record)
    assert question is not None
    answers = list(env.get("answers") or [])
    continuation = f"{run_id}-a{len(answers) + 1}"
    answer = {"text": text, "by": by, "at": utcnow_iso(), "continued_as": continuation}
    record = {**record, "envelope": {**env, "answers": [*answers, answer]}}
    store.annotate(run_id, record, sub=bool(env.get("parent_run_id")))
    asked_q = {"text": question, "answer": text, "by": by}
    req = DelegationRequest(
        target=str(env["target"]),
        caller=str(env["caller"]),
        task=with_answer(str(env.get("task", "")), asked_q),
        timeout=timeout if timeout is not None else env.get("timeout_s"),
        parent_run_id=env.get("parent_run_id"),
        run_id=continuation,
        labels={**(env.get("labels") or {}), "answer_to": run_id, "answered_by": by},
        session_of=str(env.get("session_of") or run_id),  # the asking run's session
    )
    return delegator.delegate(req, reporter=reporter)


def _asking_record(store: RunStore, run_id: str) -> dict[str, Any]:
    """The final record of the delegation ``run_id`` that asked, still unanswered."""
    try:
        _, data = store.find(run_id)
    except RunStateError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("envelope"), dict) or (
        "status" not in data and data["envelope"].get("outcome") == "dispatched"
    ):
        from engine.store import FileRunStore

        # Named as `orchestrate show` names the store: the directory, or the database.
        place = store.root if isinstance(store, FileRunStore) else store.location
        raise RunStateError(
            f"no record for `{run_id}` in `{place}`. The run id is the one "
            "`orchestrate` printed with the question."
        )
    if question_of(data) is None:
        raise RunStateError(
            f"run `{run_id}` asked no question (its outcome is "
            f"`{data['envelope'].get('outcome')}`): there is nothing to answer."
        )
    done = [a for a in data["envelope"].get("answers") or [] if a.get("continued_as")]
    if done:
        raise RunStateError(
            f"run `{run_id}` was answered already; it continued as "
            f"`{done[-1]['continued_as']}` (see `orchestrate show "
            f"{done[-1]['continued_as']}`)."
        )
    return data
