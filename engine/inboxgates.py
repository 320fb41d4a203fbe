"""Gates and agents' questions of the Discord inbox: notices, reactions, replies.

A workflow the inbox runs (or a run parked elsewhere, ``_adopt_parked``) that parks at an
approval gate gets a notice in ``channels.gates``; a ✅ or ❌ reaction by an allowed
approver decides it. An agent's question (a ``blocked`` handoff with a ``question``, in a
workflow step or a delegation) gets a notice too; the first reply to it by the task's
author or an approver answers it. Decisions and answers are recorded with
``by: discord:<user id>``, and the inbox continues the run (docs/discord.md).

``ParkedRuns`` is a part of ``engine.inbox.DiscordInbox``, which provides the state files,
the Discord client and the task pool it uses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.config import Config
from engine.discord import (
    CLAIM,
    REJECT,
    DiscordClient,
    ids,
    message_gone,
    reference_of,
    split_content,
)
from engine.errors import HookUnreachableError, OrchestratorError
from engine.files import utcnow_iso, write_json_new
from engine.inboxtask import (
    CLAIMED,
    FINISHED,
    PARKED,
    RUNNING,
    WAITING,
    TaskRequest,
    summarize_workflow,
)
from engine.redact import redact

if TYPE_CHECKING:
    from engine.inbox import InboxSettings


class ParkedRuns:
    """Announce, decide and answer what parked runs and delegations wait for."""

    cfg: Config
    client: DiscordClient
    settings: InboxSettings
    log: Callable[[str], None]
    _final: set[str]

    # -- provided by DiscordInbox --------------------------------------------------------

    def _save(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _states(self, *wanted: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _submit(self, mid: str, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _busy(self, mid: str) -> bool:
        raise NotImplementedError

    def _state_path(self, mid: str) -> Path:
        raise NotImplementedError

    def _post_result(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _finish_notice(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _public(self, text: str) -> str:
        raise NotImplementedError

    # -- one item's failure ----------------------------------------------------------------

    def _item_failed(self, what: str, exc: OrchestratorError) -> None:
        """Log the failure of one item of a poll (a task, a notice, a parked run) so the
        poll goes on with the others; re-raise a failure every request would meet: Discord
        unreachable or rate-limiting the bot (``HookUnreachableError``), or refusing the
        token or a permission (401, 403)."""
        if isinstance(exc, HookUnreachableError) or exc.status_code in (401, 403):
            raise exc
        self.log(f"{what}: {exc}")

    # -- notices ---------------------------------------------------------------------------

    def _announce_gates(self, state: dict[str, Any], req: TaskRequest, result: Any) -> None:
        """Post a notice for each step newly parked at a gate or on a question; ``WAITING``."""
        gates = state.setdefault("gates", {})
        channel = self.settings.gates or self.settings.results
        for sid, st in result.summary.get("steps", {}).items():
            if sid in gates and not gates[sid].get("decision"):
                continue  # announced, not decided yet
            if st.get("status") == "waiting_approval" and sid not in gates:
                text = self._gate_text(state, req, result.run_id, sid, st)
                kind, named = "gate", self._approvers(req.target, sid)
            elif st.get("status") == "waiting_input" and _unanswered(st.get("question")):
                text = self._question_text(state, req, result.run_id, sid, st)
                kind, named = "question", self._answerers(state, req, sid)
            else:
                continue
            posted = self.client.post(channel, self._public(text), notify=named)
            gates[sid] = {
                "kind": kind,
                "channel_id": channel,
                "message_id": str(posted.get("id")),
                "at": utcnow_iso(),
            }
        state["state"] = WAITING
        self._save(state)

    def _origin(self, state: dict[str, Any]) -> str:
        if state.get("adopted"):
            return str(state.get("origin") or "started from the command line")
        return f"task {state['message_id']}"

    def _gate_text(
        self, state: dict[str, Any], req: TaskRequest, run_id: str, sid: str, st: dict[str, Any]
    ) -> str:
        allowed = self._approvers(req.target, sid)
        how = (
            f"React {CLAIM} to approve or {REJECT} to reject "
            f"({', '.join(f'<@{u}>' for u in allowed)})."
            if allowed
            else "No Discord approvers are configured: use "
            f"`workflow approve {run_id} {sid}` or `workflow reject {run_id} {sid} "
            "--reason ...`."
        )
        return (
            f"⏸ approval needed: workflow `{req.target}`, step `{sid}` "
            f"(agent `{st.get('agent')}`), run `{run_id}`, {self._origin(state)}.\n{how}"
        )

    def _question_text(
        self, state: dict[str, Any], req: TaskRequest, run_id: str, sid: str, st: dict[str, Any]
    ) -> str:
        question, _ = split_content(str((st.get("question") or {}).get("text") or "?"), 1200)
        allowed = self._answerers(state, req, sid)
        if req.kind == "delegation":
            where = f"delegation to `{req.target}`, run `{run_id}`"
            cli = f'`orchestrate answer {run_id} "..."`'
        else:
            where = (
                f"workflow `{req.target}`, step `{sid}` (agent `{st.get('agent')}`), run `{run_id}`"
            )
            cli = f'`workflow answer {run_id} {sid} "..."`'
        how = (
            f"Reply to this message to answer ({', '.join(f'<@{u}>' for u in allowed)})."
            if allowed
            else f"No Discord approvers are configured: answer with {cli}."
        )
        quoted = "\n".join(f"> {line}" for line in question.splitlines() or ["?"])
        return redact(f"❓ question: {where}, {self._origin(state)}.\n{quoted}\n{how}")

    def _adopt_parked(self) -> None:
        """Announce gates and questions of runs parked elsewhere (`workflow run
        --non-interactive`).

        Such a run gets a state file of its own (``run-<run id>.json``); after a decision
        or an answer this inbox resumes it, like the runs it started, and posts its result.
        """
        from types import SimpleNamespace

        from engine.runs import list_runs, run_status

        known = {st.get("run_id") for st in self._states(CLAIMED, RUNNING, WAITING, FINISHED)}
        for row in list_runs(self.cfg, limit=50):
            run_id = row.get("runId")
            if row.get("status") not in PARKED or not run_id or run_id in known:
                continue
            key = f"run-{run_id}"
            if key in self._final or self._state_path(key).exists():
                continue
            try:
                summary = run_status(self.cfg, run_id)
            except OrchestratorError:
                continue
            if summary.get("live"):
                continue  # a process is running it (and will ask its own approver)
            req = TaskRequest("workflow", str(row.get("workflow")), inputs={})
            state: dict[str, Any] = {
                "message_id": key,
                "channel_id": self.settings.results,
                "author_id": None,
                "adopted": True,
                "caller": summary.get("caller"),
                "request": req.as_dict(),
                "run_id": run_id,
                "state": CLAIMED,
                "adopted_at": utcnow_iso(),
                "origin": _origin_of(self.cfg.handoffs_dir, run_id),
            }
            if not write_json_new(self._state_path(key), state):
                continue
            try:
                self._announce_gates(state, req, SimpleNamespace(run_id=run_id, summary=summary))
            except OrchestratorError as exc:
                self._state_path(key).unlink(missing_ok=True)  # announced at a later look
                self._item_failed(f"run {run_id}", exc)

    def _decided_elsewhere(self, run_id: str, step: str) -> dict[str, Any] | None:
        """The gate decision or the answer a run's journal holds for ``step``, if any."""
        from engine.runs import replay, run_dir

        try:
            s = replay(run_dir(self.cfg, run_id)).steps[step]
        except (OrchestratorError, KeyError):
            return None
        gate = s.gate
        if isinstance(gate, dict) and gate.get("decision") in ("approved", "rejected"):
            return {"decision": gate["decision"], "by": str(gate.get("by") or "")}
        if s.question is not None and s.question.get("answer") is not None:
            return {"decision": "answered", "by": str(s.question.get("by") or "")}
        return None

    def _approvers(self, workflow: str, step: str) -> tuple[str, ...]:
        per = self.settings.gate_approvers
        return per.get(f"{workflow}/{step}") or per.get(step) or self.settings.approvers

    def _answerers(self, state: dict[str, Any], req: TaskRequest, step: str) -> tuple[str, ...]:
        """Who may answer a question: the task's author, then the step's approvers."""
        author = () if state.get("adopted") or not state.get("author_id") else (state["author_id"],)
        return tuple(dict.fromkeys((*author, *self._approvers(req.target, step))))

    def _check_gates(self) -> None:
        """Decide each announced gate by reaction and answer each question by reply; resume
        the runs that can continue, and report those cancelled meanwhile. One task's
        failure is logged and the others go on (``_item_failed``)."""
        for state in self._states(WAITING):
            if self._busy(state["message_id"]):
                continue
            try:
                self._check_waiting(state)
            except OrchestratorError as exc:
                self._item_failed(f"message {state['message_id']}", exc)

    def _check_waiting(self, state: dict[str, Any]) -> None:
        req = TaskRequest(**state["request"])
        decided = False
        before = json.dumps(state.get("gates"), sort_keys=True)
        for sid, gate in state.get("gates", {}).items():
            if gate.get("decision"):
                continue
            if gate.get("kind") == "question":
                done = self._take_answer(state, req, sid, gate)
            else:
                done = self._take_decision(state, req, sid, gate)
            decided = decided or done
        if decided:
            self._save(state)
            self._submit(state["message_id"], state)
        elif self._ended_elsewhere(state, req):
            return
        elif before != json.dumps(state.get("gates"), sort_keys=True):
            self._save(state)  # how far the replies were read, a notice posted again

    def _ended_elsewhere(self, state: dict[str, Any], req: TaskRequest) -> bool:
        """A waiting workflow run cancelled from a terminal (`workflow cancel RUN`): its
        result (``cancelled``, the steps' lines) is recorded and posted; True then."""
        from types import SimpleNamespace

        from engine.runs import replay, run_dir, summarize
        from engine.states import RunState

        if req.kind != "workflow" or not state.get("run_id"):
            return False
        try:
            path = run_dir(self.cfg, state["run_id"])
            view = replay(path)
        except OrchestratorError:
            return False
        if view.state is not RunState.CANCELLED:
            return False
        result = SimpleNamespace(run_id=state["run_id"], run_dir=path, summary=summarize(view))
        state["result"] = summarize_workflow(self.cfg, req, result)
        state.update(state=FINISHED, finished_at=utcnow_iso())
        self._save(state)
        self._finish_notice(state)
        try:
            self._post_result(state)
        except OrchestratorError as exc:  # recorded: a later poll posts it
            self.log(f"message {state['message_id']}: result not posted yet: {exc}")
        return True

    def _take_decision(
        self, state: dict[str, Any], req: TaskRequest, sid: str, gate: dict[str, Any]
    ) -> bool:
        """A ✅ or ❌ by an allowed approver decides the gate (or a terminal did already)."""
        from engine.errors import RunStateError
        from engine.runs import GateDecision, decide_gate

        allowed = set(self._approvers(req.target, sid))
        verdict = None
        for emoji, approved in ((REJECT, False), (CLAIM, True)) if allowed else ():
            if gate.get("gone"):
                break  # both notices were deleted: decided from a terminal only
            try:
                users = self.client.reactors(gate["channel_id"], gate["message_id"], emoji)
            except OrchestratorError as exc:
                if not message_gone(exc):
                    raise
                self._notice_deleted(state, req, sid, gate)
                break
            who = [u for u in ids(users) if u in allowed]
            if who:
                verdict = (approved, who[0])
                break
        if verdict is None:
            return self._settled_elsewhere(state, sid, gate)
        approved, uid = verdict
        try:
            decision = GateDecision(
                approved,
                reason=f"{'approved' if approved else 'rejected'} by reaction in Discord",
                by=f"discord:{uid}",
            )
            decide_gate(self.cfg, state["run_id"], sid, decision)
        except RunStateError:
            pass  # decided elsewhere meanwhile (`workflow approve`): resume anyway
        gate.update(
            decision="approved" if approved else "rejected", by=uid, decided_at=utcnow_iso()
        )
        return True

    def _notice_deleted(
        self, state: dict[str, Any], req: TaskRequest, sid: str, gate: dict[str, Any]
    ) -> None:
        """A gate's notice was deleted (someone tidied the channel): post it again, once;
        if that one goes too, post a line naming the terminal commands and stop reading
        reactions (``gate["gone"]``). A terminal's decision is still taken."""
        from engine.runs import replay, run_dir

        run_id = state["run_id"]
        self.log(f"run {run_id}: the notice of step `{sid}` was deleted")
        if gate.get("reposted"):
            text = (
                f"⏸ the approval notice of workflow `{req.target}`, step `{sid}`, run "
                f"`{run_id}` was deleted twice: decide at a terminal with `workflow approve "
                f"{run_id} {sid}` or `workflow reject {run_id} {sid} --reason ...`."
            )
            posted = self.client.post(gate["channel_id"], self._public(text))
            gate.update(gone=True, gone_message_id=str(posted.get("id")))
            return
        try:
            agent = replay(run_dir(self.cfg, run_id)).steps[sid].agent
        except (OrchestratorError, KeyError):
            agent = None
        text = self._gate_text(state, req, run_id, sid, {"agent": agent})
        posted = self.client.post(
            gate["channel_id"],
            self._public(f"{text}\n(posted again: the first notice was deleted)"),
            notify=self._approvers(req.target, sid),
        )
        gate.update(
            reposted=True, deleted_message_id=gate["message_id"], message_id=str(posted.get("id"))
        )

    def _settled_elsewhere(self, state: dict[str, Any], sid: str, gate: dict[str, Any]) -> bool:
        """A decision or an answer made from a terminal (`workflow approve|answer`,
        `orchestrate answer`): recorded here, and the run or delegation continues."""
        if state.get("request", {}).get("kind") == "delegation":
            done = last_answer(self.cfg.handoffs_dir, state["run_id"])
            if done is None:
                return False
            state["answer"] = {"text": str(done.get("text") or ""), "by": str(done.get("by"))}
            gate.update(decision="answered", by=str(done.get("by")), decided_at=utcnow_iso())
            return True
        elsewhere = self._decided_elsewhere(state["run_id"], sid)
        if elsewhere is None:
            return False
        gate.update(elsewhere, decided_at=utcnow_iso())  # `workflow approve|answer`
        return True

    def _take_answer(
        self, state: dict[str, Any], req: TaskRequest, sid: str, gate: dict[str, Any]
    ) -> bool:
        """The first reply to the question's notice by an allowed user answers it."""
        from engine.ask import answer_step
        from engine.errors import RunStateError

        reply = self._first_reply(gate, set(self._answerers(state, req, sid)))
        if reply is None:
            return self._settled_elsewhere(state, sid, gate)
        uid, text, reply_id = reply
        if req.kind == "delegation":
            state["answer"] = {"text": text, "by": f"discord:{uid}"}
        else:
            try:
                answer_step(self.cfg, state["run_id"], sid, text, by=f"discord:{uid}")
            except RunStateError:
                pass  # answered elsewhere meanwhile (`workflow answer`): resume anyway
        gate.update(decision="answered", by=uid, reply_id=reply_id, decided_at=utcnow_iso())
        try:
            self.client.react(gate["channel_id"], reply_id, CLAIM)  # "taken"
        except OrchestratorError as exc:
            self.log(f"answer {reply_id}: not acknowledged: {exc}")
        return True

    def _first_reply(self, gate: dict[str, Any], allowed: set[str]) -> tuple[str, str, str] | None:
        """(user id, text, message id) of the first allowed reply to the notice, or None.

        Pages forward from what the last look saw (``gate["after"]``), so a busy channel
        is read once.
        """
        found = None
        for msg in self.client.messages_after(
            gate["channel_id"], str(gate.get("after") or gate["message_id"])
        ):
            gate["after"] = str(msg.get("id"))
            uid = str((msg.get("author") or {}).get("id"))
            text = _strip_mentions(str(msg.get("content") or ""))
            if reference_of(msg) == gate["message_id"] and uid in allowed and text:
                found = (uid, redact(text), str(msg["id"]))
                break
        return found


def _unanswered(question: Any) -> bool:
    return isinstance(question, dict) and question.get("answer") is None


def _strip_mentions(text: str) -> str:
    """A reply's text without the leading ``<@id>`` mentions Discord adds."""
    return re.sub(r"^(\s*<@!?\d+>)+", "", text).strip()


def _origin_of(handoffs_dir: Path, run_id: str) -> str:
    """Who started a run the inbox adopts: `orchestrate serve` (and its token's name, from
    ``<handoffs>/serve/<run>.json``), else the command line."""
    import json

    try:
        entry = json.loads((handoffs_dir / "serve" / f"{run_id}.json").read_text("utf-8"))
    except (OSError, ValueError):
        return "started from the command line"
    by = entry.get("by") if isinstance(entry, dict) else None
    return f"started through `orchestrate serve` by `{by}`" if by else "run by `orchestrate serve`"


def last_answer(handoffs_dir: Path, run_id: str) -> dict[str, Any] | None:
    """The answer that continued delegation ``run_id`` (``text``, ``by``,
    ``continued_as``: ``<run>-aN``), from its record, or None."""
    import json

    try:
        data = json.loads((handoffs_dir / f"{run_id}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    env = data.get("envelope") if isinstance(data, dict) else None
    answers = env.get("answers") if isinstance(env, dict) else None
    done = [a for a in answers or [] if isinstance(a, dict) and a.get("continued_as")]
    return done[-1] if done else None
