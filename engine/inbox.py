"""Discord intake: tasks posted in a queue channel, claimed by reaction, results posted back.

Example::

    with DiscordInbox(cfg, DiscordClient.from_config(cfg)) as inbox:
        inbox.run(stop=threading.Event())     # `orchestrate inbox discord`

Syntax of a task message (docs/discord.md)::

    webster: find the CTE of ULE                      a delegation to `webster`
    webster: find the CTE of ULE model=cheap thinking=low
    workflow material-trade-study materials="Zerodur, ULE" requirements="CTE < 0.01 ppm/K"

The author's Discord user id maps to a caller through ``channels.callers``; the ACL
applies to that caller. The first poll reads the newest ``limit`` messages of
``channels.queue``, later ones page forward from a cursor (``cursor.json``), so nothing
posted during downtime is missed. Oldest first, the inbox claims messages nobody reacted
✅ to: it adds its ✅, then lists who reacted ✅; when anyone else did too, it takes its
reaction back and looks again at later polls. Then it replies a claim naming itself
(``🔒 claimed by `NAME```) and reads the replies up to its own: the first claim wins, so
several orchestrators sharing one bot (one Discord user, one ✅) never both run a task.

Each claimed message has a state file ``<handoffs>/inbox-discord/<message id>.json``
(written atomically) recording the claim, the run id, the result and the posts, so a
restarted inbox finishes what a crashed one began: a task is never claimed twice and a
finished result is posted even if the post failed before. One inbox runs per handoffs
directory (a lock file says so).

Gates and agents' questions (``engine.inboxgates``): a parked workflow or a delegation
that asks gets a notice in ``channels.gates``; an approver's ✅ or ❌ reaction decides a
gate, a reply answers a question (recorded with who did it), and the inbox resumes the
run.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.discord import CLAIM, DiscordClient, ids, message_gone, reference_of, split_content
from engine.errors import (
    ConfigError,
    HookError,
    OrchestratorError,
    did_you_mean,
)
from engine.files import new_run_id, utcnow_iso, write_json_atomic, write_json_new
from engine.inboxgates import ParkedRuns, last_answer
from engine.inboxtask import (
    CLAIMED,
    CLAIMING,
    FINISHED,
    POSTED,
    REFUSED,
    RUNNING,
    WAITING,
    InboxError,
    TaskRequest,
    check_workflow_name,
    headline,
    mask_secret_inputs,
    parse_task,
    public_text,
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
#: The queue cursor (newest message looked at, messages to look at again) in STATE_DIR.
CURSOR_FILE = "cursor.json"
#: How long a message a claim backed off from is looked at again while another holds it.
RETRY_FOR = 600.0
#: Discord's epoch (2015-01-01) in ms: a message id is (ms since it) << 22.
DISCORD_EPOCH_MS = 1_420_070_400_000
#: Seconds our clock may be ahead of Discord's, when claim replies are read from a time.
CLOCK_SKEW = 120.0
#: How a claim reply starts (then the orchestrator's name in backticks).
CLAIM_REPLY = "\U0001f512 claimed by"  # 🔒


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
    name: str = ""  # this orchestrator in claim replies; "" = host name and state directory

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
            name=str(ch.get("inbox_name") or ""),
        )


# ----------------------------------------------------------------------------- the inbox


class _RunIdReporter(Reporter):
    """Catches a workflow's run id as it starts, so the state file can record it."""

    def __init__(self, on_start: Callable[[str], None]) -> None:
        self._on_start = on_start

    def event(self, kind: str, **fields: Any) -> None:
        if kind == "run_started" and isinstance(fields.get("run_id"), str):
            self._on_start(fields["run_id"])


class DiscordInbox(ParkedRuns):
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
        self._closing = threading.Event()  # set by close(): runs being followed let go
        self.name = self.settings.name or _default_name(self.state_dir)
        self._cursor: dict[str, Any] = {}  # {"channel", "after", "retry"}: see _new_messages
        self._listed_at = 0.0  # when this poll began listing the queue (epoch seconds)
        # {message id: {input: real value}}: a workflow task's secret inputs, held in
        # memory only while its run goes on (the state file keeps them masked)
        self._secrets: dict[str, dict[str, str]] = {}

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> DiscordInbox:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._take_dir_lock()
        self._cursor = self._load_cursor()
        try:
            from engine.delegate import open_delegator

            self._me = str(self.client.me().get("id") or "")
            if not self._me:
                raise HookError("Discord did not say who the bot is (`GET /users/@me`).")
            from engine.serve.companion import companion_gateway

            # An embedded gateway runs as a companion process: a killed inbox does not
            # take its running agents along, and its restart collects their results.
            served = self._stack.enter_context(companion_gateway(self.cfg))
            self._delegator = self._stack.enter_context(open_delegator(served))
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
        self._closing.set()
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
            # a global rate limit: no poll (no request at all) before it ends
            stop.wait(max(self.settings.poll_interval, self.client.held_for()))

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
        for state in self._states(WAITING):  # answered or decided, then stopped
            gates = state.get("gates") or {}
            if state.get("answer") or (gates and all(g.get("decision") for g in gates.values())):
                self._submit(str(state["message_id"]), state)
                resumed.append(str(state["message_id"]))
        self._post_pending()
        return resumed

    def poll_once(self) -> list[str]:
        """One pass: post what is pending, decide gates, claim new tasks; return claimed ids."""
        for pending in self._states(CLAIMING):  # a claim a failed request left unconfirmed
            try:
                if not self._busy(pending["message_id"]) and self._confirm(pending):
                    self._submit(pending["message_id"], pending)
            except OrchestratorError as exc:
                self._item_failed(f"message {pending['message_id']}", exc)
        self._post_pending()
        if self.settings.announce_parked and time.monotonic() >= self._next_adopt:
            # list_runs replays journals: look for parked runs every 30 s, not every poll
            self._next_adopt = time.monotonic() + max(30.0, self.settings.poll_interval)
            self._adopt_parked()
        self._check_gates()
        claimed = []
        self._listed_at = time.time()  # no ✅ seen in this listing: rivals reacted later
        for msg in self._new_messages():
            mid = str(msg.get("id"))
            try:
                if self._take(msg):
                    claimed.append(mid)
            except OrchestratorError as exc:
                self._item_failed(f"message {mid}", exc)
                if mid.isdigit() and not self._state_path(mid).exists():
                    self._retry(mid)  # looked at again next poll
            self._seen(mid)
        return claimed

    def _take(self, msg: dict[str, Any]) -> bool:
        """Claim one queue message if it is a task nobody took; True when claimed here."""
        mid = str(msg.get("id"))
        if not mid.isdigit() or self._busy(mid) or self._state_path(mid).exists():
            return False
        author = msg.get("author") or {}
        if (str(author.get("id")) == self._me or author.get("bot")) and (
            msg.get("message_reference") or msg.get("type") == 19
        ):
            return False  # replies of bots (claims, refusals): ours or another orchestrator's
        if _claimed_by_anyone(msg):
            return False
        state = self._claim(msg)
        if state is None:
            return False
        if self._cursor["retry"].pop(mid, None) is not None:
            self._save_cursor()
        self._submit(mid, state)
        return True

    # -- reading the queue ---------------------------------------------------------------

    def _new_messages(self) -> Iterator[dict[str, Any]]:
        """The queue's messages this inbox has not looked at, oldest first.

        The first poll (no cursor yet) reads the newest ``limit`` messages; every later one
        pages forward from the newest message seen (``cursor.json``), 100 at a time, so
        nothing posted while the inbox was down or busy is missed. Messages a claim backed
        off from (two bots reacted at once) are fetched again by id until someone holds
        them (``RETRY_FOR``).
        """
        queue = self.settings.queue
        retry: dict[str, float] = self._cursor["retry"]
        for rid in sorted(retry, key=int):
            msg = self.client.message(queue, rid)
            held = msg is not None and _claimed_by_anyone(msg)
            if msg is None or self._state_path(rid).exists() or (held and time.time() > retry[rid]):
                del retry[rid]  # gone, ours, or held by another for RETRY_FOR seconds
                self._save_cursor()
            elif not held:
                yield msg
        after = self._cursor.get("after")
        if after is None:
            yield from reversed(self.client.messages(queue, limit=self.settings.limit))
        else:
            yield from self.client.messages_after(queue, str(after))

    def _seen(self, mid: str) -> None:
        """Move the cursor past ``mid`` (a task claimed, refused, skipped or backed off)."""
        after = self._cursor.get("after")
        if mid.isdigit() and (after is None or int(mid) > int(after)):
            self._cursor["after"] = mid
            self._save_cursor()

    def _load_cursor(self) -> dict[str, Any]:
        data = _read_any(self.state_dir / CURSOR_FILE)
        fresh: dict[str, Any] = {"channel": self.settings.queue, "after": None, "retry": {}}
        if not isinstance(data, dict) or data.get("channel") != self.settings.queue:
            return fresh  # none yet, or the queue channel changed: start from the newest
        after = data.get("after")
        raw = data.get("retry")
        retry = {
            str(k): float(v)
            for k, v in (raw.items() if isinstance(raw, dict) else ())
            if str(k).isdigit() and isinstance(v, int | float)
        }
        return {**fresh, "after": str(after) if str(after).isdigit() else None, "retry": retry}

    def _save_cursor(self) -> None:
        write_json_atomic(self.state_dir / CURSOR_FILE, self._cursor)

    # -- claiming ------------------------------------------------------------------------

    def _claim(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        mid = str(msg["id"])
        author = msg.get("author") or {}
        text, secrets = mask_secret_inputs(self.cfg, str(msg.get("content") or ""))
        state: dict[str, Any] = {
            "message_id": mid,
            "channel_id": self.settings.queue,
            "author_id": str(author.get("id")),
            "author": str(author.get("username") or ""),
            "text": text,
            "state": CLAIMING,
            "claimed_at": utcnow_iso(),
            "listed_at": self._listed_at,
            "pid": os.getpid(),
        }
        if secrets:
            state["secret_inputs"] = sorted(secrets)
        if not write_json_new(self._state_path(mid), state):
            return None
        if secrets:
            self._secrets[mid] = secrets
        try:
            self.client.react(self.settings.queue, mid, CLAIM)
        except OrchestratorError as exc:
            self._state_path(mid).unlink(missing_ok=True)
            if not message_gone(exc):
                raise
            self.log(f"message {mid}: deleted before it was claimed; skipped")
            return None
        if not self._confirm(state):
            return None
        return state

    def _confirm(self, state: dict[str, Any]) -> bool:
        """Keep a claim only when our ✅ is the only one and our claim reply came first.

        Another bot's ✅ beside ours: take ours back, forget the claim, and look at the
        message again next poll. Several orchestrators sharing one bot cannot tell their
        ✅ apart, so each then posts a claim reply naming itself; Discord numbers messages
        in the order it receives them, and the lowest-numbered claim wins (the others delete
        theirs). Unsure (our own claim not listed yet): the claim stays unconfirmed and a
        later poll decides. A task deleted meanwhile is let go (our claim reply with it).
        """
        mid = state["message_id"]
        try:
            users = ids(self.client.reactors(self.settings.queue, mid, CLAIM))
        except OrchestratorError as exc:
            if not message_gone(exc):
                raise
            if state.get("claim_message_id"):
                self.client.delete(self.settings.queue, str(state["claim_message_id"]))
            self._state_path(mid).unlink(missing_ok=True)
            self.log(f"message {mid}: deleted before it was claimed; skipped")
            return False
        if users != [self._me]:
            if self._me in users:
                self.client.unreact(self.settings.queue, mid, CLAIM)
            self._state_path(mid).unlink(missing_ok=True)
            self._retry(mid)  # looked at again while nobody holds it
            self.log(f"message {mid}: claimed by someone else too; left to them")
            return False
        winner = self._first_claim(state)
        if winner is None:
            return False
        if winner != self.name:
            self.client.delete(self.settings.queue, state["claim_message_id"])
            self._state_path(mid).unlink(missing_ok=True)
            self.log(f"message {mid}: `{winner}` claimed it first; left to it")
            return False
        state["state"] = CLAIMED
        self._save(state)
        return True

    def _first_claim(self, state: dict[str, Any]) -> str | None:
        """Post our claim reply (once) and return the name in the first claim, or None."""
        mid, queue = state["message_id"], self.settings.queue
        if not state.get("claim_message_id"):
            posted = self.client.post(queue, f"{CLAIM_REPLY} `{self.name}`", reply_to=mid)
            state["claim_message_id"] = str(posted.get("id"))
            self._save(state)
        ours = str(state["claim_message_id"])
        for msg in self.client.messages_after(queue, _scan_from(state, ours), until=ours):
            if reference_of(msg) == mid and str(msg.get("author", {}).get("id")) == self._me:
                name = _claim_name(str(msg.get("content") or ""))
                if name is not None:
                    return name
        return None

    def _retry(self, mid: str) -> None:
        """Look at ``mid`` again each poll while unclaimed, for up to ``RETRY_FOR`` seconds
        while another holds it (it may back off too)."""
        self._cursor["retry"][mid] = time.time() + RETRY_FOR
        self._save_cursor()

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
                else parse_task(
                    redact(state["text"]),
                    default_agent=self.cfg.channels.get("default_agent"),
                )
            )
        except InboxError as exc:
            self._refuse(state, exc.message)
            return
        state["request"] = req.as_dict()
        try:
            if req.kind == "delegation" and state.get("answer"):
                self._answered_delegation(state, req)
            elif req.kind == "delegation":
                self._delegation(state, req, caller)
            else:
                self._workflow(state, req, caller)
        except _Stopping:
            return  # closing: the state file says where to go on
        except OrchestratorError as exc:
            if state["state"] in (CLAIMED, CLAIMING):
                self._refuse(state, redact(str(exc)))
                return
            state["result"] = {
                "status": "errored",
                "agent": req.target if req.kind == "delegation" else f"workflow {req.target}",
                "run_id": state.get("run_id"),
                "task": req.task or " ".join(f"{k}={v}" for k, v in req.inputs.items()),
                "text": public_text(redact(str(exc))),
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
        self._after_delegation(state, req, result)

    def _after_delegation(self, state: dict[str, Any], req: TaskRequest, result: Any) -> None:
        """Post the result, or announce the question the agent asked (a reply answers it)."""
        from types import SimpleNamespace

        from engine.ask import question_of

        question = question_of(result.record)
        state["run_id"] = result.run_id
        if question is not None:
            step = {"status": "waiting_input", "question": {"text": question}}
            state.setdefault("gates", {}).pop("delegation", None)
            self._announce_gates(
                state,
                req,
                SimpleNamespace(run_id=result.run_id, summary={"steps": {"delegation": step}}),
            )
            return
        state["result"] = summarize_delegation(self.cfg, result, req)
        state.update(state=FINISHED, finished_at=utcnow_iso())
        self._save(state)
        self._finish_notice(state)

    def _answered_delegation(self, state: dict[str, Any], req: TaskRequest) -> None:
        """Continue a delegation whose question was answered by a reply (``<run>-aN``)."""
        from engine.ask import answer_delegation
        from engine.delegate import DelegationRequest
        from engine.errors import RunStateError

        answer = state["answer"]
        try:
            result = answer_delegation(
                self._delegator, state["run_id"], answer["text"], by=answer["by"]
            )
        except RunStateError:
            # answered before a crash: wait for the continuation that answer started
            done = last_answer(self.cfg.handoffs_dir, state["run_id"])
            cont = done.get("continued_as") if done else None
            if not isinstance(cont, str):
                raise
            dreq = DelegationRequest(
                target=req.target, task=req.task, caller=state["caller"], run_id=cont
            )
            result = self._delegator.delegate(dreq, reattach=True)
        state.pop("answer", None)
        self._after_delegation(state, req, result)

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
        held = self._secrets.get(str(state["message_id"]))
        if state.get("run_id"):
            result = self._resume(runner, state["run_id"], held)
        else:
            missing = sorted(set(state.get("secret_inputs") or ()) - set(held or {}))
            if missing:  # the inbox restarted before the run started
                raise InboxError(
                    f"the inbox restarted before this task's run started, and it keeps "
                    f"the secret input{'s' if len(missing) > 1 else ''} "
                    f"{', '.join(f'`{n}`' for n in missing)} only masked (***): post the "
                    "task again."
                )
            check_workflow_name(self.cfg, req.target)
            real = {**req.inputs, **(held or {})}
            prepared = prepare(self.cfg, req.target, real, caller=caller)
            result = runner.start(prepared, RunOptions(caller=caller))
        self._after_run(state, req, result)

    def _resume(self, runner: Any, run_id: str, secrets: dict[str, str] | None = None) -> Any:
        """Resume a run; while another process executes it (``orchestrate serve``, a
        terminal), follow it until it stops, then take what is left (or its result).

        ``secrets``: the real values of its secret inputs, held since the task was
        claimed. Without them (the inbox restarted, or the run was started elsewhere)
        ``end_without_secrets`` ends it as ``orchestrate serve`` does."""
        from engine.errors import RunEndedError, RunStateError
        from engine.runner import RunOptions, SecretInputsMissing
        from engine.runs import run_status

        told = False
        released = False  # the executor let go between our try and our look: try once more
        while True:
            try:
                try:
                    return runner.resume(run_id, RunOptions(), inputs=secrets or None)
                except SecretInputsMissing as exc:
                    ended = end_without_secrets(runner, run_id, exc)
                    if ended is None:
                        raise
                    return ended
            except RunEndedError as ended:  # another process (the server) finished it
                return ended.result
            except RunStateError:
                if not run_status(self.cfg, run_id).get("live"):
                    if released:
                        raise
                    released = True
                    continue
                released = False
            if not told:
                self.log(f"run {run_id}: another process executes it; following it")
                told = True
            if self._closing.wait(min(1.0, self.settings.poll_interval)):
                raise _Stopping

    def _after_run(self, state: dict[str, Any], req: TaskRequest, result: Any) -> None:
        from engine.runner import RunState

        state["run_id"] = result.run_id
        if result.state in (RunState.WAITING_APPROVAL, RunState.WAITING_INPUT):
            self._announce_gates(state, req, result)
            return
        state["result"] = summarize_workflow(self.cfg, req, result)
        state.update(state=FINISHED, finished_at=utcnow_iso())
        self._save(state)
        self._finish_notice(state)

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
            origin = state.get("origin") or "started from the command line"
            intro = f"{head}\nRun `{res.get('run_id')}` ({origin}): {task}"
        else:
            intro = f"{head}\nTask {state['message_id']} from {who}: {task}"
        body = str(res.get("text") or "(no result text)")
        shown, cut = split_content(body, self.settings.attach_over)
        attachment = None
        if cut:
            name = f"result-{res.get('run_id') or state['message_id']}.md"
            attachment = (name, self._public(body).encode("utf-8"))
            shown += f"\n(full result attached: {name})"
        state["post_attempts"] = int(state.get("post_attempts", 0)) + 1
        self._save(state)
        posted = self.client.post(
            self.settings.results, self._public(f"{intro}\n{shown}"), attachment=attachment
        )
        state.update(state=POSTED, result_message_id=str(posted.get("id")), posted_at=utcnow_iso())
        self._save(state)

    def _refuse(self, state: dict[str, Any], reason: str) -> None:
        state.update(state=REFUSED, reason=reason, refused_at=utcnow_iso())
        self._save(state)
        try:
            reply = self.client.post(
                state["channel_id"],
                f"⛔ not run: {self._public(reason)}",
                reply_to=state["message_id"],
            )
            state["reply_message_id"] = str(reply.get("id"))
            self._save(state)
        except OrchestratorError as exc:
            self.log(f"message {state['message_id']}: refusal reply not posted: {exc}")

    def _notice(self, text: str) -> None:
        if self.settings.worker_pool is None:
            return
        try:
            self.client.post(self.settings.worker_pool, self._public(text))
        except OrchestratorError as exc:  # a lost notice must not stop the task
            self.log(f"worker-pool notice not posted: {exc}")

    def _finish_notice(self, state: dict[str, Any]) -> None:
        res = state["result"]
        self._notice(
            f"■ `{res.get('agent')}` finished task {state['message_id']}: "
            f"{res.get('status')} in {seconds_text(res.get('duration_ms'))} "
            f"(run `{res.get('run_id')}`)"
        )

    def _public(self, text: str) -> str:
        """What every post of the inbox shows: secrets masked (``engine.redact``) and paths
        of the host (the handoffs and workspaces directories, the config's directory, any
        absolute path in backticks) cut to their last part (``inboxtask.public_text``)."""
        cfg = self.cfg
        roots = [cfg.handoffs_dir, cfg.gateway.workspaces_dir if cfg.gateway else None]
        if cfg.path is not None:
            roots.append(cfg.path.parent)
        found = [p for r in roots if r is not None for p in (r, r.resolve())]
        return public_text(redact(text), tuple(found))

    # -- files ---------------------------------------------------------------------------

    def _state_path(self, mid: str) -> Path:
        return self.state_dir / f"{mid}.json"

    def _save(self, state: dict[str, Any]) -> None:
        write_json_atomic(self._state_path(state["message_id"]), state)
        if state["state"] in (FINISHED, POSTED, REFUSED):
            self._secrets.pop(str(state["message_id"]), None)  # the run is over
        if state["state"] in (POSTED, REFUSED):
            self._final.add(state["message_id"])

    def _states(self, *wanted: str) -> list[dict[str, Any]]:
        """State files in one of the ``wanted`` states (final ones are skipped unread)."""
        found = []
        for path in sorted(self.state_dir.glob("*.json")):
            if path.stem in self._final or path.name == CURSOR_FILE:
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
                f"another `orchestrate inbox discord` is running on `{self.state_dir}`: one "
                "inbox runs per handoffs directory (its state files are that inbox's), so this "
                "one stops. Let that one take the tasks (a cron `--once` can wait for it to "
                "finish), or give this orchestrator a `handoffs_dir` of its own: orchestrators "
                "with their own handoffs directories may share one bot token (docs/discord.md, "
                "\"Claiming\")."
            ) from None
        self._lock_fd = fd


class _Stopping(Exception):
    """The inbox closes while a task follows a run another process executes."""


def end_without_secrets(runner: Any, run_id: str, exc: Any) -> Any:
    """A run to continue whose secret inputs this inbox does not hold (it restarted, or
    the run was started elsewhere), as ``orchestrate serve`` treats one: a rejected gate
    ends it as usual (its ``finally`` steps get the masked text) and the result is
    returned; otherwise it ends ``failed`` now, with a ``run_finished`` event whose
    ``reason`` is ``exc``'s paragraph (``workflow resume RUN -i NAME=VALUE`` continues
    it), and None is returned: the caller posts that paragraph as the task's result."""
    from engine.redact import end_missing_secrets
    from engine.runner import RunOptions, RunState, StepState
    from engine.runs import replay_run

    store = runner.store
    view = replay_run(store, run_id)
    if any(s.gate and s.state is StepState.REJECTED for s in view.steps.values()):
        return runner.resume(run_id, RunOptions(), masked=True)
    if view.state not in (RunState.RUNNING, RunState.WAITING_APPROVAL, RunState.WAITING_INPUT):
        return None
    end_missing_secrets(store, run_id, exc)
    return None


def _scan_from(state: dict[str, Any], ours: str) -> str:
    """Where to start reading claim replies to a task: after the task, or, for an old
    task, after the last moment a rival's claim can date from.

    A rival posts its claim after its ✅, and its ✅ came after our listing showed none
    (``listed_at``), so no rival claim is older than that, less ``CLOCK_SKEW``. Discord
    ids carry their time (ms since 2015-01-01, shifted left 22 bits); ids that do not
    (our own claim would look older than the bound) fall back to the task's id.
    """
    mid = int(state["message_id"])
    listed = state.get("listed_at")
    if not isinstance(listed, int | float) or listed <= 0:
        return str(mid)
    floor = max(0, int((listed - CLOCK_SKEW) * 1000) - DISCORD_EPOCH_MS) << 22
    return str(floor) if mid < floor < int(ours) else str(mid)


def _default_name(state_dir: Path) -> str:
    """``host/abc123``: the host and a short hash of the state directory (stable across
    restarts, distinct for two inboxes of one host)."""
    import hashlib
    import socket

    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:6]
    return f"{socket.gethostname()}/{digest}"


def _claim_name(content: str) -> str | None:
    """The orchestrator a claim reply names, or None if ``content`` is not a claim."""
    if not content.startswith(CLAIM_REPLY + " `") or not content.endswith("`"):
        return None
    return content[len(CLAIM_REPLY) + 2 : -1]


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
