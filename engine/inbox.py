"""Discord intake: tasks posted in a queue channel, claimed by reaction, results posted back.

Example::

    with DiscordInbox(cfg, DiscordClient.from_config(cfg)) as inbox:
        inbox.run(stop=threading.Event())     # `orchestrate inbox discord`

Syntax of a task message (docs/discord.md)::

    webster: find the CTE of ULE                      a delegation to `webster`
    webster: find the CTE of ULE model=cheap thinking=low
    workflow material-trade-study materials="Zerodur, ULE" requirements="CTE < 0.01 ppm/K"

The author's Discord user id maps to a caller through ``channels.callers``; the ACL
applies to that caller. Each poll reads the newest messages of ``channels.queue`` and,
oldest first, claims those nobody reacted ✅ to: it adds its ✅, then lists who reacted
✅; when anyone else did too, it takes its reaction back and leaves the task (a later
poll tries again once the others did the same). Of two inboxes, one that saw only its own
✅ cannot meet one that saw only its own: so a task runs at most once.

Each claimed message has a state file ``<handoffs>/inbox-discord/<message id>.json``
(written atomically) recording the claim, the run id, the result and the posts, so a
restarted inbox finishes what a crashed one began: a task is never claimed twice and a
finished result is posted even if the post failed before. One inbox runs per handoffs
directory (a lock file says so); several hosts need one bot each.

A workflow that parks at an approval gate is announced in ``channels.gates``; a ✅ or ❌
reaction by an approver (``channels.gate_approvers`` for the gate, else
``channels.approvers``) decides it (recorded with who decided), and the inbox resumes the
run.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.discord import CLAIM, REJECT, DiscordClient, ids, split_content
from engine.errors import (
    ConfigError,
    HookError,
    OrchestratorError,
    did_you_mean,
)
from engine.files import new_run_id, utcnow_iso, write_json_atomic, write_json_new
from engine.inboxtask import (
    InboxError,
    TaskRequest,
    headline,
    parse_task,
    seconds_text,
    submission_text,
    summarize_delegation,
    summarize_workflow,
)
from engine.redact import redact
from engine.reporter import Reporter

__all__ = [
    "DiscordInbox",
    "InboxError",
    "InboxSettings",
    "TaskRequest",
    "parse_task",
    "submission_text",
]

#: Where the inbox keeps its state, under the handoffs directory.
STATE_DIR = "inbox-discord"
# States of a claimed message, in order.
CLAIMING = "claiming"  # the state file exists; the reaction claim is not confirmed yet
CLAIMED = "claimed"  # the claim holds; the task has not started
RUNNING = "running"  # dispatched (delegation) or started (workflow)
WAITING = "waiting"  # a workflow parked at an approval gate
FINISHED = "finished"  # the result is recorded here, not yet posted
POSTED = "posted"  # the result is in the results channel: done
REFUSED = "refused"  # refused (unmapped author, syntax, ACL): the reply says why


@dataclass(frozen=True)
class InboxSettings:
    """The inbox's part of ``channels:``, checked.

    Example: ``InboxSettings.from_config(cfg).queue`` is the queue channel's id.
    """

    queue: str
    results: str
    worker_pool: str | None = None
    gates: str | None = None
    callers: dict[str, str] = field(default_factory=dict)
    approvers: tuple[str, ...] = ()
    gate_approvers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    poll_interval: float = 5.0
    announce_parked: bool = True
    attach_over: int = 1500
    limit: int = 50
    max_parallel: int = 4

    @classmethod
    def from_config(cls, cfg: Config) -> InboxSettings:
        """Read and check ``channels.queue``, ``results``, ``worker_pool``, ``gates``..."""
        ch = cfg.channels or {}
        mapping = ch.get("map") or {}
        problems: list[str] = []

        def channel(key: str, required: bool) -> str | None:
            name = ch.get(key)
            if name is None:
                if required:
                    problems.append(
                        f"`channels.{key}` is not set: name the channel (a key of `channels.map`)."
                    )
                return None
            if name not in mapping:
                problems.append(
                    f"`channels.{key}` is `{name}`, which is not in `channels.map`"
                    f"{did_you_mean(str(name), list(mapping)) or '.'}"
                )
                return None
            return str(mapping[name])

        queue = channel("queue", True)
        results = channel("results", True)
        pool = channel("worker_pool", False)
        gates = channel("gates", False)
        callers = {str(k): str(v) for k, v in (ch.get("callers") or {}).items()}
        for uid, agent in callers.items():
            if agent not in cfg.agents:
                problems.append(
                    f"`channels.callers.{uid}` is `{agent}`, not an agent"
                    f"{did_you_mean(agent, list(cfg.agents)) or '.'}"
                )
        if problems or queue is None or results is None:
            raise ConfigError(
                f"`{cfg.label}`: the Discord inbox cannot start:", path=cfg.path, problems=problems
            )
        return cls(
            queue=queue,
            results=results,
            worker_pool=pool,
            gates=gates,
            callers=callers,
            approvers=tuple(str(a) for a in ch.get("approvers") or ()),
            gate_approvers={
                str(k): tuple(str(u) for u in v)
                for k, v in (ch.get("gate_approvers") or {}).items()
            },
            poll_interval=float(ch.get("poll_interval", 5.0)),
            announce_parked=bool(ch.get("announce_parked_runs", True)),
            attach_over=int(ch.get("attach_over", 1500)),
        )


# ----------------------------------------------------------------------------- the inbox


class _RunIdReporter(Reporter):
    """Catches a workflow's run id as it starts, so the state file can record it."""

    def __init__(self, on_start: Callable[[str], None]) -> None:
        self._on_start = on_start

    def event(self, kind: str, **fields: Any) -> None:
        if kind == "run_started" and isinstance(fields.get("run_id"), str):
            self._on_start(fields["run_id"])


class DiscordInbox:
    """The long-running intake; see the module docstring."""

    def __init__(
        self,
        cfg: Config,
        client: DiscordClient,
        *,
        settings: InboxSettings | None = None,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.settings = settings or InboxSettings.from_config(cfg)
        self.log = log
        self.state_dir = cfg.handoffs_dir / STATE_DIR
        self._stack = ExitStack()
        self._pool: ThreadPoolExecutor | None = None
        self._active: dict[str, Future[None]] = {}
        self._lock = threading.Lock()
        self._me = ""
        self._delegator: Any = None
        self._lock_fd: int | None = None
        self._final: set[str] = set()  # message ids whose state is posted or refused
        self._next_adopt = 0.0  # when to look for runs parked elsewhere next

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> DiscordInbox:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._take_dir_lock()
        try:
            from engine.delegate import open_delegator

            self._me = str(self.client.me().get("id") or "")
            if not self._me:
                raise HookError("Discord did not say who the bot is (`GET /users/@me`).")
            self._delegator = self._stack.enter_context(open_delegator(self.cfg))
            self._pool = ThreadPoolExecutor(
                max_workers=self.settings.max_parallel, thread_name_prefix="inbox"
            )
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Wait for the tasks in flight, stop the gateway, close the Discord client, unlock."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._stack.close()
        self.client.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def run(self, stop: threading.Event) -> None:
        """Recover, then poll every ``poll_interval`` seconds until ``stop`` is set."""
        self.recover()
        while not stop.is_set():
            try:
                self.poll_once()
            except OrchestratorError as exc:
                if isinstance(exc, ConfigError) and exc.status_code in (401, 403):
                    raise
                self.log(f"poll failed: {exc}")
            stop.wait(self.settings.poll_interval)

    def drain(self, timeout: float = 120.0) -> None:
        """Wait for every task in flight (tests, and before a clean exit)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                futures = list(self._active.values())
            if not futures:
                return
            for fut in futures:
                fut.result(timeout=max(0.01, deadline - time.monotonic()))

    # -- one poll ------------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Continue what a stopped inbox left: unconfirmed claims, runs, unposted results."""
        resumed = []
        for state in self._states(CLAIMING, CLAIMED, RUNNING):
            mid = str(state["message_id"])
            if state["state"] == CLAIMING:
                if self._confirm(state):
                    self._submit(mid, state)
                    resumed.append(mid)
            elif state["state"] in (CLAIMED, RUNNING):
                self._submit(mid, state)
                resumed.append(mid)
        self._post_pending()
        return resumed

    def poll_once(self) -> list[str]:
        """One pass: post what is pending, decide gates, claim new tasks; return claimed ids."""
        for pending in self._states(CLAIMING):  # a claim a failed request left unconfirmed
            if not self._busy(pending["message_id"]) and self._confirm(pending):
                self._submit(pending["message_id"], pending)
        self._post_pending()
        if self.settings.announce_parked and time.monotonic() >= self._next_adopt:
            # list_runs replays journals: look for parked runs every 30 s, not every poll
            self._next_adopt = time.monotonic() + max(30.0, self.settings.poll_interval)
            self._adopt_parked()
        self._check_gates()
        s = self.settings
        claimed = []
        for msg in reversed(self.client.messages(s.queue, limit=s.limit)):
            mid = str(msg.get("id"))
            if not mid.isdigit() or self._busy(mid) or self._state_path(mid).exists():
                continue
            author = msg.get("author") or {}
            if str(author.get("id")) == self._me and (
                msg.get("message_reference") or msg.get("type") == 19
            ):
                continue  # our own replies
            if _claimed_by_anyone(msg):
                continue
            state = self._claim(msg)
            if state is not None:
                claimed.append(mid)
                self._submit(mid, state)
        return claimed

    # -- claiming ------------------------------------------------------------------------

    def _claim(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        mid = str(msg["id"])
        author = msg.get("author") or {}
        state = {
            "message_id": mid,
            "channel_id": self.settings.queue,
            "author_id": str(author.get("id")),
            "author": str(author.get("username") or ""),
            "text": str(msg.get("content") or ""),
            "state": CLAIMING,
            "claimed_at": utcnow_iso(),
            "pid": os.getpid(),
        }
        if not write_json_new(self._state_path(mid), state):
            return None
        try:
            self.client.react(self.settings.queue, mid, CLAIM)
        except OrchestratorError:
            self._state_path(mid).unlink(missing_ok=True)
            raise
        if not self._confirm(state):
            return None
        return state

    def _confirm(self, state: dict[str, Any]) -> bool:
        """Keep a claim only when our ✅ is the only one; else take it back and forget it."""
        mid = state["message_id"]
        users = ids(self.client.reactors(self.settings.queue, mid, CLAIM))
        if users == [self._me]:
            state["state"] = CLAIMED
            self._save(state)
            return True
        if self._me in users:
            self.client.unreact(self.settings.queue, mid, CLAIM)
        self._state_path(mid).unlink(missing_ok=True)
        self.log(f"message {mid}: claimed by someone else too; left to them")
        return False

    # -- running -------------------------------------------------------------------------

    def _submit(self, mid: str, state: dict[str, Any]) -> None:
        assert self._pool is not None, "use the inbox as a context manager"
        with self._lock:
            if mid in self._active:
                return
            fut = self._pool.submit(self._handle, state)
            self._active[mid] = fut

        def done(_f: Future[None]) -> None:
            self._done(mid)

        fut.add_done_callback(done)

    def _done(self, mid: str) -> None:
        with self._lock:
            fut = self._active.pop(mid, None)
        exc = fut.exception() if fut is not None else None
        if exc is not None:
            self.log(f"message {mid}: {type(exc).__name__}: {redact(str(exc))}")

    def _busy(self, mid: str) -> bool:
        with self._lock:
            return mid in self._active

    def _handle(self, state: dict[str, Any]) -> None:
        adopted = state.get("adopted") is True
        caller = state.get("caller") if adopted else self.settings.callers.get(state["author_id"])
        if caller is None:
            self._refuse(
                state,
                f"your Discord user id {state['author_id']} is not mapped to an agent in "
                "`channels.callers`, so nothing runs on your behalf: ask an operator to add "
                '`channels.callers: {"<your id>": <agent>}`.',
            )
            return
        state["caller"] = caller
        try:
            # A known secret (the bot token, a hooks token) is never passed on to an agent.
            req = (
                TaskRequest(**state["request"])
                if "request" in state
                else parse_task(redact(state["text"]))
            )
        except InboxError as exc:
            self._refuse(state, exc.message)
            return
        state["request"] = req.as_dict()
        try:
            if req.kind == "delegation":
                self._delegation(state, req, caller)
            else:
                self._workflow(state, req, caller)
        except OrchestratorError as exc:
            if state["state"] in (CLAIMED, CLAIMING):
                self._refuse(state, redact(str(exc)))
                return
            state["result"] = {
                "status": "errored",
                "agent": req.target if req.kind == "delegation" else f"workflow {req.target}",
                "run_id": state.get("run_id"),
                "task": req.task or " ".join(f"{k}={v}" for k, v in req.inputs.items()),
                "text": redact(str(exc)),
            }
            state.update(state=FINISHED, finished_at=utcnow_iso())
            self._save(state)
        try:
            self._post_result(state)
        except OrchestratorError as exc:  # recorded: a later poll posts it
            self.log(f"message {state['message_id']}: result not posted yet: {exc}")

    def _delegation(self, state: dict[str, Any], req: TaskRequest, caller: str) -> None:
        from engine.delegate import DelegationRequest

        resuming = state["state"] == RUNNING
        run_id = state.get("run_id") or new_run_id()
        dreq = DelegationRequest(
            target=req.target,
            task=req.task,
            caller=caller,
            run_id=run_id,
            model=req.model,
            thinking=req.thinking,
            name=f"discord {state['message_id']}",
        )
        self._delegator.check(dreq)  # ACL and names: refused before anything runs
        if not resuming:
            state.update(state=RUNNING, run_id=run_id, started_at=utcnow_iso())
            self._save(state)
            self._notice(
                f"▶ spawned `{req.target}` for task {state['message_id']} "
                f"(run `{run_id}`, caller `{caller}`)"
            )
        result = self._delegator.delegate(dreq, reattach=resuming)
        state["result"] = summarize_delegation(self.cfg, result, req)
        state.update(state=FINISHED, finished_at=utcnow_iso())
        self._save(state)
        self._finish_notice(state)

    def _workflow(self, state: dict[str, Any], req: TaskRequest, caller: str) -> None:
        from engine.runner import RunOptions, WorkflowRunner, prepare

        def started(run_id: str) -> None:
            if state.get("run_id") == run_id:
                return  # a resumed run
            state.update(state=RUNNING, run_id=run_id, started_at=utcnow_iso())
            self._save(state)
            self._notice(
                f"▶ started workflow `{req.target}` for task {state['message_id']} "
                f"(run `{run_id}`, caller `{caller}`)"
            )

        runner = WorkflowRunner(
            self.cfg, self._delegator, reporter=_RunIdReporter(started), approver=None
        )
        if state.get("run_id"):
            result = runner.resume(state["run_id"], RunOptions())
        else:
            prepared = prepare(self.cfg, req.target, dict(req.inputs), caller=caller)
            result = runner.start(prepared, RunOptions(caller=caller))
        self._after_run(state, req, result)

    def _after_run(self, state: dict[str, Any], req: TaskRequest, result: Any) -> None:
        from engine.runner import RunState

        state["run_id"] = result.run_id
        if result.state is RunState.WAITING_APPROVAL:
            self._announce_gates(state, req, result)
            return
        state["result"] = summarize_workflow(self.cfg, req, result)
        state.update(state=FINISHED, finished_at=utcnow_iso())
        self._save(state)
        self._finish_notice(state)

    # -- gates ---------------------------------------------------------------------------

    def _announce_gates(self, state: dict[str, Any], req: TaskRequest, result: Any) -> None:
        gates = state.setdefault("gates", {})
        channel = self.settings.gates or self.settings.results
        run_id = result.run_id
        for sid, st in result.summary.get("steps", {}).items():
            if st.get("status") != "waiting_approval" or sid in gates:
                continue
            allowed = self._approvers(req.target, sid)
            how = (
                f"React {CLAIM} to approve or {REJECT} to reject "
                f"({', '.join(f'<@{u}>' for u in allowed)})."
                if allowed
                else "No Discord approvers are configured: use "
                f"`workflow approve {run_id} {sid}` or `workflow reject {run_id} {sid} "
                "--reason ...`."
            )
            origin = (
                "started from the command line"
                if state.get("adopted")
                else f"task {state['message_id']}"
            )
            text = (
                f"⏸ approval needed: workflow `{req.target}`, step `{sid}` "
                f"(agent `{st.get('agent')}`), run `{run_id}`, {origin}.\n{how}"
            )
            posted = self.client.post(channel, text)
            gates[sid] = {
                "channel_id": channel,
                "message_id": str(posted.get("id")),
                "at": utcnow_iso(),
            }
        state["state"] = WAITING
        self._save(state)

    def _adopt_parked(self) -> None:
        """Announce gates of runs parked elsewhere (`workflow run --non-interactive`).

        Such a run gets a state file of its own (``run-<run id>.json``); after a decision
        this inbox resumes it, like the runs it started, and posts its result.
        """
        from types import SimpleNamespace

        from engine.runs import list_runs, run_status

        known = {st.get("run_id") for st in self._states(CLAIMED, RUNNING, WAITING, FINISHED)}
        for row in list_runs(self.cfg, limit=50):
            run_id = row.get("runId")
            if row.get("status") != "waiting_approval" or not run_id or run_id in known:
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
            }
            if not write_json_new(self._state_path(key), state):
                continue
            self._announce_gates(state, req, SimpleNamespace(run_id=run_id, summary=summary))

    def _decided_elsewhere(self, run_id: str, step: str) -> dict[str, Any] | None:
        """The gate decision a run's journal holds for ``step``, if one was made."""
        from engine.runs import replay, run_dir

        try:
            gate = replay(run_dir(self.cfg, run_id)).steps[step].gate
        except (OrchestratorError, KeyError):
            return None
        if isinstance(gate, dict) and gate.get("decision") in ("approved", "rejected"):
            return {"decision": gate["decision"], "by": str(gate.get("by") or "")}
        return None

    def _approvers(self, workflow: str, step: str) -> tuple[str, ...]:
        per = self.settings.gate_approvers
        return per.get(f"{workflow}/{step}") or per.get(step) or self.settings.approvers

    def _check_gates(self) -> None:
        from engine.errors import RunStateError
        from engine.runs import decide_gate

        for state in self._states(WAITING):
            mid = state["message_id"]
            if self._busy(mid):
                continue
            req = TaskRequest(**state["request"])
            decided = False
            for sid, gate in state.get("gates", {}).items():
                if gate.get("decision"):
                    continue
                allowed = set(self._approvers(req.target, sid))
                verdict = None
                for emoji, approved in ((REJECT, False), (CLAIM, True)) if allowed else ():
                    who = [
                        u
                        for u in ids(
                            self.client.reactors(gate["channel_id"], gate["message_id"], emoji)
                        )
                        if u in allowed
                    ]
                    if who:
                        verdict = (approved, who[0])
                        break
                if verdict is None:
                    elsewhere = self._decided_elsewhere(state["run_id"], sid)
                    if elsewhere is not None:  # `workflow approve|reject` from a terminal
                        gate.update(elsewhere, decided_at=utcnow_iso())
                        decided = True
                    continue
                approved, uid = verdict
                try:
                    decide_gate(
                        self.cfg,
                        state["run_id"],
                        sid,
                        approved=approved,
                        reason=f"{'approved' if approved else 'rejected'} by reaction in Discord",
                        by=f"discord:{uid}",
                    )
                except RunStateError:
                    pass  # decided elsewhere meanwhile (`workflow approve`): resume anyway
                gate.update(
                    decision="approved" if approved else "rejected", by=uid, decided_at=utcnow_iso()
                )
                decided = True
            if decided:
                self._save(state)
                self._submit(mid, state)

    # -- posting -------------------------------------------------------------------------

    def _post_pending(self) -> None:
        for state in self._states(FINISHED):
            if not self._busy(state["message_id"]):
                try:
                    self._post_result(state)
                except OrchestratorError as exc:
                    self.log(f"message {state['message_id']}: result not posted yet: {exc}")

    def _post_result(self, state: dict[str, Any]) -> None:
        if state["state"] != FINISHED:
            return
        res = state["result"]
        head = headline(res)
        who = f"<@{state['author_id']}>"
        task = res.get("task") or ""
        if len(task) > 150:
            task = task[:149] + "…"
        if state.get("adopted"):
            intro = f"{head}\nRun `{res.get('run_id')}` (started from the command line): {task}"
        else:
            intro = f"{head}\nTask {state['message_id']} from {who}: {task}"
        body = str(res.get("text") or "(no result text)")
        shown, cut = split_content(body, self.settings.attach_over)
        attachment = None
        if cut:
            name = f"result-{res.get('run_id') or state['message_id']}.md"
            attachment = (name, redact(body).encode("utf-8"))
            shown += f"\n(full result attached: {name})"
        state["post_attempts"] = int(state.get("post_attempts", 0)) + 1
        self._save(state)
        posted = self.client.post(
            self.settings.results, redact(f"{intro}\n{shown}"), attachment=attachment
        )
        state.update(state=POSTED, result_message_id=str(posted.get("id")), posted_at=utcnow_iso())
        self._save(state)

    def _refuse(self, state: dict[str, Any], reason: str) -> None:
        state.update(state=REFUSED, reason=reason, refused_at=utcnow_iso())
        self._save(state)
        try:
            reply = self.client.post(
                state["channel_id"], f"⛔ not run: {reason}", reply_to=state["message_id"]
            )
            state["reply_message_id"] = str(reply.get("id"))
            self._save(state)
        except OrchestratorError as exc:
            self.log(f"message {state['message_id']}: refusal reply not posted: {exc}")

    def _notice(self, text: str) -> None:
        if self.settings.worker_pool is None:
            return
        try:
            self.client.post(self.settings.worker_pool, redact(text))
        except OrchestratorError as exc:  # a lost notice must not stop the task
            self.log(f"worker-pool notice not posted: {exc}")

    def _finish_notice(self, state: dict[str, Any]) -> None:
        res = state["result"]
        self._notice(
            f"■ `{res.get('agent')}` finished task {state['message_id']}: "
            f"{res.get('status')} in {seconds_text(res.get('duration_ms'))} "
            f"(run `{res.get('run_id')}`)"
        )

    # -- files ---------------------------------------------------------------------------

    def _state_path(self, mid: str) -> Path:
        return self.state_dir / f"{mid}.json"

    def _save(self, state: dict[str, Any]) -> None:
        write_json_atomic(self._state_path(state["message_id"]), state)
        if state["state"] in (POSTED, REFUSED):
            self._final.add(state["message_id"])

    def _states(self, *wanted: str) -> list[dict[str, Any]]:
        """State files in one of the ``wanted`` states (final ones are skipped unread)."""
        found = []
        for path in sorted(self.state_dir.glob("*.json")):
            if path.stem in self._final:
                continue
            state = _read(path)
            if state is None:
                continue
            if state["state"] in (POSTED, REFUSED):
                self._final.add(path.stem)
            elif state["state"] in wanted:
                found.append(state)
        return found

    def _take_dir_lock(self) -> None:
        fd = os.open(self.state_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"another `orchestrate inbox discord` is running on `{self.state_dir}`: run one "
                "inbox per handoffs directory (each host with its own bot)."
            ) from None
        self._lock_fd = fd


def _claimed_by_anyone(msg: dict[str, Any]) -> bool:
    for r in msg.get("reactions") or []:
        if isinstance(r, dict) and (r.get("emoji") or {}).get("name") == CLAIM and r.get("count"):
            return True
    return False


def _read(path: Path) -> dict[str, Any] | None:
    data = _read_any(path)
    if not isinstance(data, dict) or "state" not in data or "message_id" not in data:
        return None
    return data


def _read_any(path: Path) -> Any:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
