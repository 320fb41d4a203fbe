"""One synchronous delegation: ACL -> pool -> hooks POST -> wait -> validate -> record.

``Delegator`` holds what a process shares across delegations (one keep-alive HTTP
client, one watcher per directory, the embedded gateway, the token pool) and is
thread-safe: a workflow runs many ``delegate`` calls at once.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from engine.acl import Acl, check_chain
from engine.config import AgentConfig, Config
from engine.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNUSABLE,
    EXIT_USAGE,
    EXIT_WAITING,
    HookUnreachableError,
    OrchestratorError,
    RunStateError,
    UnusableHandoffError,
    UsageError,
)
from engine.files import check_id, new_run_id, utcnow_iso
from engine.handoff import MAX_HANDOFF_BYTES, HandoffProblem, key_hash, new_key
from engine.hooks import HooksClient, Target
from engine.lease import Lease, Pool
from engine.registry import Registry, caller_only_problem, read_secret
from engine.reporter import Reporter
from engine.states import Outcome as Outcome
from engine.store import RENEW_EVERY, HandoffSignals, RunStore, Waiter, open_signals, open_store
from engine.store.file import FileRunStore, records_dir
from engine.store.liveness import this_host, waiter_alive
from engine.store.postgres_retry import naming_run

if TYPE_CHECKING:
    from engine.gateway.server import LocalGateway

_EXIT = {
    Outcome.COMPLETE: EXIT_OK,
    Outcome.PARTIAL: EXIT_OK,
    Outcome.BLOCKED: EXIT_FAILED,
    Outcome.FAILED: EXIT_FAILED,
    Outcome.TIMEOUT: EXIT_TIMEOUT,
    Outcome.INVALID: EXIT_USAGE,
    Outcome.CANCELLED: EXIT_FAILED,
    Outcome.UNUSABLE: EXIT_UNUSABLE,
    Outcome.LOST: EXIT_TIMEOUT,
}


@dataclass(frozen=True)
class DelegationRequest:
    """What to delegate, to whom, on whose behalf.

    Example: ``DelegationRequest(target="webster", task="Find CTE of Zerodur", caller="manager")``
    """

    target: str
    task: str
    caller: str
    timeout: float | None = None
    deliver: bool | None = None
    parent_run_id: str | None = None
    run_id: str | None = None
    model: str | None = None
    thinking: str | None = None
    channel: str | None = None
    context: str | None = None
    name: str | None = None
    labels: dict[str, Any] = field(default_factory=dict)
    repair_attempts: int | None = None  # the step's bound (else the agent's, else the config's)
    heartbeat_timeout: float | None = None  # the step's (else the agent's); None: off
    #: Continue the session of this earlier run (an answered question): with
    #: ``send_session_key`` the ``sessionKey`` is that run's, so the agent keeps its work.
    session_of: str | None = None


@dataclass(frozen=True)
class DelegationResult:
    """The value a delegation ends with; a failed delegation is a result, not an exception."""

    run_id: str
    outcome: Outcome
    #: Where the record is: a file (or a store's locator), or a server's URL (str).
    record_path: Path | str
    record: dict[str, Any]
    error: OrchestratorError | None = None

    @property
    def exit_code(self) -> int:
        """The CLI exit code for this outcome (DESIGN.md's table)."""
        if self.outcome is Outcome.ERRORED:
            return self.error.exit_code if self.error else EXIT_USAGE
        if self.outcome is Outcome.BLOCKED and self.record.get("question"):
            return EXIT_WAITING  # the agent asked: answer it (engine.ask) to continue
        return _EXIT[self.outcome]

    @property
    def handoff(self) -> dict[str, Any] | None:
        """The agent's handoff (without the envelope), if one was accepted."""
        if not self.outcome.ok and self.outcome not in (Outcome.BLOCKED, Outcome.FAILED):
            return None
        return {k: v for k, v in self.record.items() if k != "envelope"}

    @property
    def envelope(self) -> dict[str, Any]:
        """The engine's envelope: caller, target, timings, attempts."""
        env: dict[str, Any] = self.record.get("envelope", {})
        return env


class Delegator:
    """Runs delegations for one config; use ``open_delegator`` to get one with its gateway."""

    def __init__(
        self,
        cfg: Config,
        *,
        client: HooksClient | None = None,
        reporter: Reporter | None = None,
        pool: Pool | None = None,
        local_url: str | None = None,
        local_token: str | None = None,
        watcher_backend: str = "auto",
        clock: Callable[[], float] = time.monotonic,
        store: RunStore | None = None,
        signals: HandoffSignals | None = None,
    ) -> None:
        self.cfg = cfg
        #: Where delegations are kept (``store:`` in the config, resolved once).
        self.store: RunStore = store if store is not None else open_store(cfg)
        #: What wakes a waiting delegation when its handoff may be there.
        self.signals: HandoffSignals = (
            signals if signals is not None else open_signals(self.store, backend=watcher_backend)
        )
        self.registry = Registry.from_config(cfg)
        self.acl = Acl(cfg.acl, self.registry.names)
        self.reporter = reporter or Reporter()
        self._own_client = client is None
        self.client = client or HooksClient(cfg.retry)
        self.pool = pool
        self.local_url = local_url
        self._local_token = local_token
        self.watcher_backend = watcher_backend
        self._clock = clock
        self._tokens: dict[str, tuple[str, str]] = {}
        self._host = this_host()
        #: The embedded gateway serving this process's local agents (``open_delegator``).
        self.local_gateway: LocalGateway | None = None

    def end_local_runs(self, run_ids: Iterable[str]) -> list[int]:
        """End the command agents the embedded gateway runs for the delegations
        ``run_ids`` (``LocalGateway.end_runs``: SIGTERM, then SIGKILL); the pids
        signalled, none without an embedded gateway (a remote one's agents are its own)."""
        if self.local_gateway is None:
            return []
        return self.local_gateway.end_runs(list(run_ids))

    def close(self) -> None:
        """Release the HTTP client if this delegator created it."""
        if self._own_client:
            self.client.close()

    def _on_retry(self, rep: Reporter, agent: str, attempt: int, delay: float, reason: str) -> None:
        rep.delegation_retry(agent, attempt, delay, reason)
        if self.pool is not None and ("429" in reason or "503" in reason):
            self.pool.note_overload()

    # -- resolution -------------------------------------------------------------------

    def target_for(self, agent: AgentConfig) -> Target:
        """Resolve where and with which token to dispatch to ``agent`` (cached)."""
        cached = self._tokens.get(agent.name)
        if agent.caller_only:
            raise UsageError(caller_only_problem(agent.name))
        if agent.is_local:
            if self.local_url is None:
                raise UsageError(
                    f"`{agent.name}` runs on the local gateway, but none is running: set "
                    "`gateway: {embedded: true}` in the config, or start `orchestrate "
                    "gateway` and set `gateway.port`."
                )
            url = self.local_url
        else:
            url = agent.url
        if cached is None:
            if agent.token_env or agent.token_file:
                source = (
                    f"environment variable `{agent.token_env}`"
                    if agent.token_env
                    else f"token file `{agent.token_file}`"
                )
                token = read_secret(
                    env=agent.token_env, file=agent.token_file, what=f"agent `{agent.name}`"
                )
            elif agent.is_local:
                token, source = self._local_gateway_token()
            else:  # the config schema requires one of them for remote agents
                raise UsageError(f"agent `{agent.name}` has no token source.")
            cached = self._tokens[agent.name] = (token, source)
        return Target(agent=agent.name, url=url, token=cached[0], token_source=cached[1])

    def _local_gateway_token(self) -> tuple[str, str]:
        if self._local_token is not None:
            return self._local_token, "the embedded gateway"
        gw = self.cfg.gateway
        assert gw is not None
        src = f"`{gw.token_env}`" if gw.token_env else f"`{gw.token_file}`"
        token = read_secret(env=gw.token_env, file=gw.token_file, what="the local gateway")
        return token, f"the local gateway's token ({src})"

    def records_dir(self, *, sub: bool) -> Path:
        """Where records of top-level (or sub-) delegations are on the file store, for
        callers that read files themselves (the engine asks ``self.store``)."""
        return records_dir(self.cfg.handoffs_dir, sub=sub)

    def _sub(self, records: Path) -> bool:
        """True when ``records`` is the sub-delegations' records location."""
        return records == self.records_dir(sub=True)

    def _chain_for(self, req: DelegationRequest) -> list[str]:
        if req.parent_run_id is None:
            return [req.caller]
        parent = check_id(req.parent_run_id, "parent run id")
        env: dict[str, Any] | None = None
        for sub in (False, True):
            record = self.store.read(parent, sub=sub)
            env = record["envelope"] if record is not None else None
            if env is None:
                env = self.store.read_pending(parent, sub=sub)
            if env is not None:
                break
        else:
            raise RunStateError(
                f"parent run `{parent}` is not known in `{self.cfg.handoffs_dir}` (no record "
                "and nothing pending): pass the ORCH_RUN_ID of the task you are working on."
            )
        if env.get("target") != req.caller:
            raise UsageError(
                f"`--caller {req.caller}` does not match parent run `{parent}`, which was "
                f"delegated to `{env.get('target')}`: a sub-delegation is made by the agent "
                "doing the parent run."
            )
        chain = [str(c) for c in env.get("chain", [env.get("caller")])]
        return [*chain, req.caller]

    def route(self, caller: str, capability: str) -> Any:
        """Pick the least busy agent with ``capability`` that ``caller`` may use."""
        from engine.routing import inflight_counts, probe_gateway, route

        self.registry.get(caller, role="caller")
        counts = inflight_counts(self.store)

        def probe(name: str) -> str | None:
            agent = self.registry.get(name)
            return None if agent.is_local else probe_gateway(agent.url)

        return route(
            self.registry, self.acl, caller=caller, capability=capability, inflight=counts,
            probe=probe,
        )

    # -- the delegation ---------------------------------------------------------------

    def check(self, req: DelegationRequest) -> list[str]:
        """Every pre-dispatch check (task, registry, ids, ACL, chain); return the chain or
        raise (``UsageError`` for an empty task: nothing would tell the agent what to do)."""
        if not req.task.strip():
            raise UsageError(
                "the task is empty (or only whitespace): give the text the agent should act "
                'on, e.g. `orchestrate webster "Find CTE of Zerodur" --caller manager`.'
            )
        self.registry.get(req.caller, role="caller")
        self.registry.get(req.target)
        if req.run_id is not None:
            check_id(req.run_id, "run id")
        chain = self._chain_for(req)
        if req.parent_run_id is not None:
            check_chain(chain, req.target, max_depth=self.cfg.max_depth)
        self.acl.check(req.caller, req.target)
        return chain

    def delegate(
        self,
        req: DelegationRequest,
        *,
        reattach: bool = False,
        cancel: threading.Event | None = None,
        reporter: Reporter | None = None,
        interrupted: threading.Event | None = None,
    ) -> DelegationResult:
        """Run one delegation to the end; raise only for errors found before dispatch.

        With ``reattach`` (resuming a workflow) and a ``req.run_id`` that a gateway accepted
        before, nothing is sent again: a final record is returned as it is, a handoff that
        arrived meanwhile is taken, and an accepted dispatch is waited for anew.
        ``cancel`` stops the wait early (outcome ``cancelled``). ``interrupted``, set with
        ``cancel`` when the caller was interrupted (Ctrl-C: the run stays resumable), stops
        the wait without recording an end: the delegation stays in flight, its pending
        envelope kept, so a handoff that comes later is recorded as it would have been and
        a resume takes it. ``reporter`` observes this call only (default: the delegator's);
        concurrent calls may each pass their own.
        """
        rep = reporter or self.reporter
        chain = self.check(req)
        agent = self.registry.get(req.target)
        target = self.target_for(agent)
        if "step" in req.labels:  # a workflow step's: its template sets how long, not `--timeout`
            target = replace(target, hint=_step_hint(req.labels, agent.name))
        sub = req.parent_run_id is not None
        records = self.records_dir(sub=sub)
        run_id = req.run_id or new_run_id()
        drop = self.store.handoff_target(run_id, sub=sub)
        timeout = float(req.timeout or agent.timeout or self.cfg.default_timeout)
        start = self._clock()
        deadline = start + timeout
        if req.run_id is not None and (reattach or self._answered_elsewhere(run_id, sub)):
            earlier = self._reattach(
                req, run_id, records, drop, deadline, cancel, rep, interrupted=interrupted
            )
            if earlier is not None:
                return earlier
        key = new_key()
        envelope: dict[str, Any] = {
            "caller": req.caller,
            "target": req.target,
            "task": req.task,
            "parent_run_id": req.parent_run_id,
            "chain": chain,
            "depth": len(chain) - 1,
            "created_at": utcnow_iso(),
            "timeout_s": timeout,
            "deadline_at": _iso_in(timeout),
            "outcome": "dispatched",
            "attempts": 0,
            "gateway_url": target.url,
            "gateway_run_id": None,
            "pid": os.getpid(),
            "host": self._host,
            "renewed_at": utcnow_iso(),
            # Only the key's hash is kept on disk; the key travels in the message alone.
            "key_sha256": key_hash(key),
            **({"labels": req.labels} if req.labels else {}),
        }
        if self.cfg.handoff_key != "required":
            envelope["handoff_key"] = self.cfg.handoff_key
        if self.cfg.max_handoff_bytes != MAX_HANDOFF_BYTES:
            envelope["max_handoff_bytes"] = self.cfg.max_handoff_bytes
        lease: Lease | None = None
        holder = self._ancestor_token(req.parent_run_id)
        if holder is not None:
            envelope["token_shared_with"] = holder
        with naming_run(run_id):  # a lost store connection (the pool's too) names the run
            if self.pool is not None and holder is None:
                # The pending envelope is written once the token is held (a token free at
                # once: one write), or marked ``queued`` while the token is waited for and
                # rewritten without the mark once granted: either way before the POST, and
                # a process that dies queued leaves a mark that says nothing was sent.
                got = self._acquire(run_id, agent, envelope, records, deadline, rep, cancel)
                if isinstance(got, DelegationResult):
                    return got
                lease = got
            try:
                self.store.pending(run_id, envelope, sub=sub)
                result = self._dispatch_and_wait(
                    req, agent, target, run_id, records, drop, envelope, deadline, cancel, rep,
                    key, interrupted=interrupted,
                )
            except BaseException:
                if lease is not None:
                    lease.release()
                raise
            return self._release(lease, result) if lease is not None else result

    def _answered_elsewhere(self, run_id: str, sub: bool) -> bool:
        """True when an earlier process prepared ``run_id`` (its pending envelope names
        another pid or host) and its answer is already here: a handoff in the inbox or at
        the record path, or the record itself. Such a delegation is taken, never sent
        again: the agent that got the first message has answered (a gateway that died
        with that process cannot dedupe the Idempotency-Key any more)."""
        envelope = self.store.read_pending(run_id, sub=sub)
        if envelope is None or (
            envelope.get("pid") == os.getpid() and envelope.get("host") == self._host
        ):
            return False
        if self.store.read(run_id, sub=sub) is not None:
            return True
        if isinstance(self.store, FileRunStore):
            return not self.store.nothing_delivered(run_id, sub=sub)
        return self.store.has_handoff(run_id, sub=sub)

    def _reattach(
        self,
        req: DelegationRequest,
        run_id: str,
        records: Path,
        drop: Path,
        deadline: float,
        cancel: threading.Event | None,
        rep: Reporter,
        *,
        interrupted: threading.Event | None = None,
    ) -> DelegationResult | None:
        """Pick up a delegation dispatched by an earlier process; None = dispatch it now.

        A pending envelope marked ``queued`` was never sent: while the process that
        queued it lives (``waiter_alive``), this one waits for that process to send it;
        once that process is gone (killed while queued), None: it is sent from here, under
        the same run id. A delegation that was sent takes a pool token only when no
        live holder has one for it (``_token_elsewhere``)."""
        sub = self._sub(records)
        found = self._sent_envelope(run_id, sub, records, drop, deadline, cancel)
        if found is None or isinstance(found, DelegationResult):
            return found
        envelope = dict(
            found,
            outcome="dispatched",
            reattached_at=utcnow_iso(),
            pid=os.getpid(),
            host=self._host,
            renewed_at=utcnow_iso(),
        )
        envelope.pop("error", None)
        envelope["deadline_at"] = _iso_in(max(0.0, deadline - self._clock()))
        # This process waits now: readers (reconcile, routing, metrics) see it alive.
        self.store.pending(run_id, envelope, sub=sub)
        lease: Lease | None = None
        if (
            self.pool is not None
            and self._ancestor_token(req.parent_run_id) is None
            and not self._token_elsewhere(run_id)
        ):
            got = self._acquire(
                run_id, self.registry.get(req.target), envelope, records, deadline, rep,
                cancel, sent=True,
            )
            if isinstance(got, DelegationResult):
                return got
            lease = got
        waiter = self._expect(records, drop, run_id)
        try:
            result = self._wait(
                waiter, run_id, req.target, records, drop, envelope, deadline, cancel, rep,
                interrupted=interrupted,
            )
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        finally:
            waiter.close()
        return self._release(lease, result) if lease is not None else result

    def _sent_envelope(
        self,
        run_id: str,
        sub: bool,
        records: Path,
        drop: Path,
        deadline: float,
        cancel: threading.Event | None,
    ) -> DelegationResult | dict[str, Any] | None:
        """What an earlier process left of ``run_id``: its result when it has ended, None
        when it is to be sent from here (nothing prepared, or ``queued`` by a process now
        gone), else its pending envelope, once sent (waiting, while a live process holds
        it ``queued``, for that process to send it) or at the deadline or a cancel."""
        record_file = self.store.record_locator(run_id, sub=sub)
        watching: Waiter | None = None
        try:
            while True:
                existing = self.store.read(run_id, sub=sub)
                envelope = self.store.read_pending(run_id, sub=sub)
                if existing is not None:
                    outcome = existing["envelope"].get("outcome")
                    if outcome in {o.value for o in Outcome} and outcome not in (
                        "timeout", "cancelled"
                    ):
                        return DelegationResult(run_id, Outcome(outcome), record_file, existing)
                if envelope is None:
                    return None  # nothing was prepared: dispatch (the same Idempotency-Key)
                if not envelope.get("queued"):
                    return envelope  # sent: its handoff is waited for
                if not waiter_alive(envelope, host=self._host):
                    return None  # queued by a process now gone: nothing was sent, send it
                # Another live process waits for its token and sends it: wait for that.
                if (cancel is not None and cancel.is_set()) or self._clock() >= deadline:
                    return envelope  # the wait ends it (cancelled, or timed out)
                if watching is None:
                    watching = self._expect(records, drop, run_id)
                watching.wait(min(_QUEUED_LOOK, max(0.0, deadline - self._clock())))
        finally:
            if watching is not None:
                watching.close()

    def _token_elsewhere(self, run_id: str) -> bool:
        """True when the pool already counts ``run_id``: a token held for it (by a live
        caller, or by a dead one whose agent still runs) or a live request queued for it.

        A re-attached delegation takes a token so that the agent it waits on is counted
        once the process that sent it is gone (docs/pool.md, "Re-attached delegations");
        while the pool counts it already, a second token would only keep another
        delegation out."""
        assert self.pool is not None
        status = self.pool.status()
        return any(
            str(t.get("run_id")) == run_id
            for t in (*status.get("in_use", []), *status.get("queue", []))
        )

    def _ancestor_token(self, parent_run_id: str | None) -> str | None:
        """The run id of the nearest ancestor of a sub-delegation whose pool token is held
        right now, or None (a top-level delegation, no pool, or no ancestor holds one).

        A sub-delegation runs inside its ancestor's work, which holds a token until the
        whole chain's answer is recorded: waiting for another token could wait on that very
        one (a pool of 1 deadlocks). So a chain counts as one unit of concurrent work: the
        sub-delegation shares the token of the ancestor that holds it and takes none of its
        own (docs/pool.md, "Sub-delegations share their chain's token"). Only ancestors
        still in flight (pending envelope) count; at most ``max_depth + 1`` are looked at.
        """
        if self.pool is None or parent_run_id is None:
            return None
        ancestors: list[str] = []
        run: str | None = parent_run_id
        for _ in range(self.cfg.max_depth + 2):
            if run is None or run in ancestors:
                break
            env = self.store.read_pending(run, sub=True) or self.store.read_pending(run, sub=False)
            if env is None:
                break
            ancestors.append(run)
            shared = env.get("token_shared_with")
            if isinstance(shared, str) and shared not in ancestors:
                ancestors.append(shared)
                break  # that ancestor holds the chain's token: nothing above it matters
            parent = env.get("parent_run_id")
            run = parent if isinstance(parent, str) else None
        if not ancestors:
            return None
        held = {str(t.get("run_id")) for t in self.pool.status().get("in_use", [])}
        return next((a for a in ancestors if a in held), None)

    def _acquire(
        self,
        run_id: str,
        agent: AgentConfig,
        envelope: dict[str, Any],
        records: Path,
        deadline: float,
        rep: Reporter,
        cancel: threading.Event | None = None,
        *,
        sent: bool = False,
    ) -> Lease | DelegationResult:
        """A pool token for ``run_id``, or the delegation's end: timed out, refused, or
        cancelled while queued (``cancel``). ``sent``: an earlier process dispatched it, so
        a cancelled wait keeps the pending envelope for the handoff still to come; else
        nothing was sent and the envelope goes (a resume then dispatches it).

        Unless ``sent``, a token not free at once is waited for with the pending envelope
        marked ``queued: true`` (nothing sent yet; ``_reattach`` sends such a delegation
        when its process is gone); the caller rewrites it without the mark before the
        POST. A token free at once writes nothing here."""
        from engine.errors import AcquireCancelledError, DelegationTimeoutError

        assert self.pool is not None

        t0 = self._clock()
        try:
            try:  # a free token at once is the common case: no "waiting" noise then
                lease = self.pool.acquire(
                    run_id=run_id, agent=agent.name, timeout=0, max_concurrent=agent.max_concurrent,
                    hold_for=deadline - self._clock(),
                )
            except DelegationTimeoutError:
                if not sent:  # nothing is sent while queued: the mark says so (a resume sends)
                    self.store.pending(
                        run_id, dict(envelope, queued=True), sub=self._sub(records)
                    )
                rep.pool_waiting(run_id, agent.name)
                lease = self.pool.acquire(
                    run_id=run_id,
                    agent=agent.name,
                    timeout=max(0.0, deadline - self._clock()),
                    max_concurrent=agent.max_concurrent,
                    hold_for=deadline - self._clock(),
                    cancel=cancel,
                )
        except AcquireCancelledError as exc:
            envelope["token_wait_ms"] = round((self._clock() - t0) * 1000, 3)
            said = "a later handoff is still recorded (late)" if sent else "nothing was sent"
            env = dict(envelope, outcome="cancelled", ended_at=utcnow_iso(),
                       error=f"{exc}; {said}")
            path, record = self._finalize(run_id, records, env, keep_pending=sent,
                                          agent=agent.name)
            rep.delegation_finished(run_id, agent.name, "cancelled", str(path))
            return DelegationResult(run_id, Outcome.CANCELLED, path, record)
        except OrchestratorError as exc:
            envelope["token_wait_ms"] = round((self._clock() - t0) * 1000, 3)
            ended = Outcome.TIMEOUT if isinstance(exc, DelegationTimeoutError) else None
            return self._errored(
                run_id, records, envelope, exc, rep, keep_pending=False, outcome=ended
            )
        envelope["token_wait_ms"] = round((self._clock() - t0) * 1000, 3)
        return lease

    def _release(self, lease: Lease, result: DelegationResult) -> DelegationResult:
        """Give the token back; mark the record if the pool had reclaimed it meanwhile."""
        lease.release()
        reason = lease.reclaimed_reason
        if not reason:
            return result
        record = dict(result.record)
        record.setdefault("envelope", {})["token_reclaimed"] = reason
        sub = bool(record["envelope"].get("parent_run_id"))
        self.store.annotate(result.run_id, record, sub=sub)
        return DelegationResult(
            result.run_id, result.outcome, result.record_path, record, result.error
        )

    def _dispatch_and_wait(
        self,
        req: DelegationRequest,
        agent: AgentConfig,
        target: Target,
        run_id: str,
        records: Path,
        drop: Path,
        envelope: dict[str, Any],
        deadline: float,
        cancel: threading.Event | None,
        rep: Reporter,
        key: str,
        *,
        interrupted: threading.Event | None = None,
    ) -> DelegationResult:
        from engine.message import render_message

        message = render_message(
            task=req.task,
            run_id=run_id,
            agent=req.target,
            caller=req.caller,
            handoff_path=drop,
            receiver_url=_receiver(self.cfg, self.local_url, agent, run_id),
            timeout=envelope["timeout_s"],
            parent_run_id=req.parent_run_id,
            context=req.context,
            template=self.cfg.message_template,
            key=key,
        )
        body: dict[str, Any] = {
            "message": message,
            "name": req.name or f"orchestrate {req.caller}->{req.target}",
            "deliver": req.deliver
            if req.deliver is not None
            else (agent.deliver if agent.deliver is not None else self.cfg.deliver),
            "timeoutSeconds": max(1, int(envelope["timeout_s"])),
        }
        agent_id = agent.agent_id or (agent.name if agent.is_local else None)
        if agent_id:
            body["agentId"] = agent_id
        if agent.send_session_key:
            body["sessionKey"] = envelope["session_key"] = session_key(req.session_of or run_id)
        for option, value in (
            ("channel", req.channel or agent.channel),
            ("model", req.model),
            ("thinking", req.thinking or agent.thinking),
        ):
            if value:
                body[option] = value

        waiter = self._expect(records, drop, run_id)
        # Looked at before the POST, while no other thread needs the interpreter: what lands
        # from now on wakes the waiter, so the wait need not look once more first.
        look_first = not self._nothing_delivered(run_id, records)
        watch: Any = None
        try:
            envelope["dispatched_at"] = utcnow_iso()
            try:
                watch, sent = self._start(req, agent, target, body, run_id, records, drop,
                                          envelope, deadline, waiter, rep, key)
            except OrchestratorError as exc:
                # A 4xx means the agent never got the task; a transport failure may have.
                keep = exc.status_code is None or exc.status_code >= 500
                return self._errored(run_id, records, envelope, exc, rep, keep_pending=keep)
            if sent is None:  # held until the run ends: admission is reported by the watch
                return self._wait(waiter, run_id, req.target, records, drop, envelope,
                                  deadline, cancel, rep, watch=watch, look_first=look_first,
                                  interrupted=interrupted)
            envelope["attempts"] = sent.attempts
            envelope["gateway_run_id"] = sent.gateway_run_id
            if self.pool is not None and sent.overloaded:
                self.pool.note_overload()
            # The pending envelope written before the POST is enough to merge a late
            # handoff; not rewriting it here saves a file create on the hot path.
            rep.delegation_dispatched(run_id, req.caller, req.target, sent.attempts)
            return self._wait(
                waiter, run_id, req.target, records, drop, envelope, deadline, cancel, rep,
                watch=watch, look_first=look_first, interrupted=interrupted,
            )
        finally:
            waiter.close()
            if watch is not None:  # ended: its held POST is not retried or reported
                watch.abandon()

    def _nothing_delivered(self, run_id: str, records: Path) -> bool:
        """True when the file store holds nothing for ``run_id`` yet (no inbox file, no
        file at the record path); False when something is there or the store is another."""
        if not isinstance(self.store, FileRunStore):
            return False
        return self.store.nothing_delivered(run_id, sub=self._sub(records))

    def _expect(self, records: Path, drop: Path, run_id: str) -> Waiter:
        """The injected signals' waiter for ``run_id``'s handoff."""
        return self.signals.expect(run_id, sub=self._sub(records))

    def _start(
        self,
        req: DelegationRequest,
        agent: AgentConfig,
        target: Target,
        body: dict[str, Any],
        run_id: str,
        records: Path,
        drop: Path,
        envelope: dict[str, Any],
        deadline: float,
        waiter: Any,
        rep: Reporter,
        key: str,
    ) -> tuple[Any, Any]:
        """Send the task (see engine.repair.start): the run's watch, and the answer if known."""
        from engine import repair
        from engine.liveness import Heartbeat
        from engine.message import write_command

        beat = req.heartbeat_timeout or agent.heartbeat_timeout

        hold = (
            agent.wait_for_completion
            if agent.wait_for_completion is not None
            else self.cfg.wait_for_completion
        )
        other = False  # an attempt failed otherwise than refused at connect

        def on_retry(name: str, attempt: int, delay: float, reason: str) -> None:
            nonlocal other
            first = not envelope.get("gateway_run_id")  # not yet accepted: the task itself
            if first and reason == "connection refused" and not other:
                envelope["unreachable"] = {"attempts": attempt, "last": reason}
            elif first:
                other = True
                envelope.pop("unreachable", None)
            self._on_retry(rep, name, attempt, delay, reason)

        return repair.start(
            client=self.client,
            target=target,
            body=body,
            run_id=run_id,
            deadline=deadline,
            on_retry=on_retry,
            hold=hold,
            same_session="sessionKey" in body,
            # The local gateway keeps a session's work (its agents get the key and a
            # session directory): the correction alone is enough there. OpenClaw starts
            # each hook run afresh, so the task goes again (engine.repair).
            resend_task=not agent.is_local,
            envelope=envelope,
            drop=drop,
            store=self.store,
            sub=self._sub(records),
            # A model agent's handoff is written by the gateway, not the model: a
            # corrective message would pay for another call and change nothing.
            allowed=0 if self._model_agent(agent) else repair.attempts_for(
                req.repair_attempts, agent.repair_attempts, self.cfg.repair_attempts
            ),
            grace=min(self.cfg.handoff_grace, repair.END_GRACE),
            write_command=write_command(run_id, req.target, drop.parent, key),
            clock=self._clock,
            wake=waiter.wake,
            on_admitted=lambda: rep.delegation_dispatched(
                run_id, req.caller, req.target, int(envelope.get("attempts") or 1)
            ),
            on_repair=rep.warning,
            key=key,
            heartbeat=(
                Heartbeat(self.store, run_id, float(beat), sub=self._sub(records))
                if beat
                else None
            ),
        )

    def _model_agent(self, agent: AgentConfig) -> bool:
        """True for an agent of the local gateway of kind ``openai``."""
        gw = self.cfg.gateway
        spec = gw.agents.get(agent.agent_id or agent.name) if gw is not None else None
        return agent.is_local and spec is not None and spec.kind == "openai"

    def _wait(
        self,
        waiter: Any,
        run_id: str,
        agent: str,
        records: Path,
        drop: Path,
        envelope: dict[str, Any],
        deadline: float,
        cancel: threading.Event | None = None,
        rep: Reporter | None = None,
        *,
        watch: Any = None,
        look_first: bool = True,
        interrupted: threading.Event | None = None,
    ) -> DelegationResult:
        """Wait for the handoff of ``run_id`` until it is recorded or the delegation ends.

        ``look_first=False``: nothing was there once the waiter was set (looked at before
        the dispatch), so the first look waits for a wake-up. ``interrupted`` (see
        ``delegate``): a set cancel ends the wait with nothing recorded."""
        c = _Call(run_id, agent, records, drop, envelope, rep or self.reporter, watch,
                  self._sub(records), deadline, deadline, self._clock() + RENEW_EVERY)
        fired = look_first  # else it may have arrived before the watch was set
        while True:
            if watch is not None and watch.fresh_answer():
                fired = True  # what the run left is looked for before its end is judged
            if fired:
                done = self._look(c)
                if done is not None:
                    return done
            remaining = (c.give_up if c.problem else deadline) - self._clock()
            if remaining <= 0:
                done, fired = self._at_deadline(c)
                if done is not None:
                    return done
                continue
            if watch is not None:  # has the agent's run ended (or the dispatch failed)?
                ending = watch.check()
                if ending is not None:
                    return self._ended(ending, c)
                wake = watch.next_wake()
                if wake is not None:
                    remaining = min(remaining, max(0.0, wake - self._clock()))
            if cancel is not None:
                if cancel.is_set():
                    if watch is not None:
                        watch.learn_run_id()
                    if interrupted is not None and interrupted.is_set():
                        return self._interrupted(c)
                    return self._cancelled(run_id, agent, records, envelope, c.rep)
                remaining = min(remaining, 0.2)
            self._renew(c)
            fired = waiter.wait(min(remaining, max(0.0, c.renew_at - self._clock())))

    def _look(self, c: _Call) -> DelegationResult | None:
        """Take the handoff if it is there; note a partial one; repair or end on a refusal."""
        if c.watch is not None:  # the gateway's answer so far; the run's end, if near
            c.watch.before_delivery(file_there=self.store.has_handoff(c.run_id, sub=c.sub))
        grace = self.cfg.handoff_grace
        got = self.store.deliver(c.run_id, sub=c.sub, envelope=c.envelope, grace=grace)
        if got.state in ("recorded", "duplicate", "already") and got.record:
            if c.watch is not None and got.state == "recorded":
                c.watch.after_delivery(got.record)
            return self._handed_off(c.run_id, c.agent, got.record_path, got.record, c.rep)
        c.problem = None  # nothing there, or a forged key: the real agent may still answer
        if got.state == "partial":
            # Perhaps caught half-written: give the writer a moment to finish.
            c.problem = got.problem
            c.give_up = min(c.deadline, self._clock() + grace)
        elif got.state == "refused" and got.problem.kind != "key":
            return self._refusal(c, got.problem, got.kept)
        return None

    def _at_deadline(self, c: _Call) -> tuple[DelegationResult | None, bool]:
        """The deadline (or a partial file's grace) passed: the ending, or look again."""
        if c.problem is not None:  # still unreadable after its grace: refuse it
            problem, c.problem = c.problem, None
            kept = self.store.reject(c.run_id, problem, c.envelope, sub=c.sub)
            return self._refusal(c, problem, kept), False
        if not c.last_look:  # look once more before declaring a timeout
            c.last_look = True
            return None, True
        if c.watch is not None:
            c.watch.learn_run_id()
        return self._timed_out(c.run_id, c.agent, c.records, c.drop, c.envelope, c.rep), False

    def _refusal(
        self, c: _Call, problem: HandoffProblem, kept: Path | None
    ) -> DelegationResult | None:
        """A refused handoff: None when a repair was sent, else the delegation's ending:
        ``unusable`` (the agent's own handoff, repairs spent) or ``invalid`` (not this
        delegation's file)."""
        ending = _repair_refused(c, problem, kept)
        if ending is None:
            return None
        if ending.outcome == "unusable":
            return self._ended(ending, c)
        return self._refused(c, ending.error)

    def _renew(self, c: _Call) -> None:
        """A long wait says it is alive (readers on other hosts look at ``renewed_at``)."""
        if self._clock() >= c.renew_at:
            c.renew_at = self._clock() + RENEW_EVERY
            self.store.pending(c.run_id, dict(c.envelope, renewed_at=utcnow_iso()), sub=c.sub)

    def _handed_off(
        self, run_id: str, agent: str, path: Path | None, record: dict[str, Any], rep: Reporter
    ) -> DelegationResult:
        assert path is not None
        outcome = Outcome(record["envelope"].get("outcome") or record["status"])
        rep.delegation_finished(run_id, agent, outcome.value, str(path))
        return DelegationResult(run_id, outcome, path, record)

    # -- endings ----------------------------------------------------------------------

    def _finalize(
        self, run_id: str, records: Path, env: dict[str, Any], *, keep_pending: bool, agent: str
    ) -> tuple[Path, dict[str, Any]]:
        """Record an ending the engine decided (``RunStore.finalize``)."""
        return self.store.finalize(
            run_id, env, sub=self._sub(records), keep_pending=keep_pending, agent=agent
        )

    def _timed_out(
        self,
        run_id: str,
        agent: str,
        records: Path,
        drop: Path,
        envelope: dict[str, Any],
        rep: Reporter,
    ) -> DelegationResult:
        env = dict(envelope, outcome="timeout", ended_at=utcnow_iso())
        refused = len(env.get("rejected", []))
        where = (  # the records' directory on the file store; else the store (a database)
            str(records) if isinstance(self.store, FileRunStore)
            else f"the store `{self.store.location}`"
        )  # fmt: skip
        env["error"] = (
            f"no handoff from `{agent}` within {envelope['timeout_s']:g} s; a handoff that "
            f"arrives later is still recorded (marked late) in {where}"
            + (f"; {refused} refused handoff(s) are listed in `rejected`" if refused else "")
        )
        path, record = self._finalize(run_id, records, env, keep_pending=True, agent=agent)
        sub = self._sub(records)
        if self.store.has_handoff(run_id, sub=sub):  # it landed while the timeout was written
            got = self.store.deliver(run_id, sub=sub)
            if got.state == "recorded" and got.record:
                return self._handed_off(run_id, agent, got.record_path, got.record, rep)
        rep.delegation_finished(run_id, agent, "timeout", str(path))
        from engine.errors import DelegationTimeoutError

        err = DelegationTimeoutError(env["error"])
        return DelegationResult(run_id, Outcome.TIMEOUT, path, record, err)

    def _interrupted(self, c: _Call) -> DelegationResult:
        """The caller was interrupted: nothing is recorded, the delegation stays in flight
        (pending envelope kept, so a later handoff is merged as usual and a resume takes it).
        The result only tells the caller its wait ended."""
        env = dict(c.envelope, outcome="cancelled", error="interrupted; still in flight")
        locator = self.store.record_locator(c.run_id, sub=c.sub)
        return DelegationResult(c.run_id, Outcome.CANCELLED, locator, {"envelope": env})

    def _cancelled(
        self, run_id: str, agent: str, records: Path, envelope: dict[str, Any], rep: Reporter
    ) -> DelegationResult:
        env = dict(
            envelope,
            outcome="cancelled",
            ended_at=utcnow_iso(),
            error="cancelled while waiting; a later handoff is still recorded (late)",
        )
        path, record = self._finalize(run_id, records, env, keep_pending=True, agent=agent)
        rep.delegation_finished(run_id, agent, "cancelled", str(path))
        return DelegationResult(run_id, Outcome.CANCELLED, path, record)

    def _refused(self, c: _Call, problem: HandoffProblem) -> DelegationResult:
        run_id, records, drop, envelope, rep = c.run_id, c.records, c.drop, c.envelope, c.rep
        rejected = envelope.get("rejected") or [{}]
        kept = rejected[-1].get("file")
        env = dict(envelope, outcome="invalid", ended_at=utcnow_iso())
        env["error"] = str(problem)
        env["rejected_file"] = kept
        path, record = self._finalize(
            run_id, records, env, keep_pending=True, agent=envelope["target"]
        )
        rep.delegation_finished(run_id, envelope["target"], "invalid", str(path))
        note = f"\nThe refused file was kept as `{kept}`." if kept else ""
        err = HandoffProblem(
            problem.message
            + ("\n" + "\n".join(f"  - {p}" for p in problem.problems) if problem.problems else "")
            + note,
            kind=problem.kind,
            path=drop,
        )
        return DelegationResult(run_id, Outcome.INVALID, path, record, err)

    def _ended(self, ending: Any, c: _Call) -> DelegationResult:
        """End before the deadline: the dispatch or the run failed, or repairs are spent."""
        run_id, records, envelope, rep = c.run_id, c.records, c.envelope, c.rep
        if ending.outcome == "errored":
            return self._errored(
                run_id, records, envelope, ending.error, rep, keep_pending=ending.keep_pending
            )
        outcome = Outcome(ending.outcome)  # unusable, or lost (silent past its heartbeat)
        env = dict(envelope, outcome=outcome.value, ended_at=utcnow_iso())
        error = ending.error
        rejected = envelope.get("rejected") or []
        if outcome is Outcome.UNUSABLE and rejected and rejected[-1].get("file"):
            env["rejected_file"] = kept = rejected[-1]["file"]
            error = UnusableHandoffError(
                f"{error.message}\nThe refused file was kept as `{kept}`.",
                agent=error.agent,
                path=error.path,
            )
        env["error"] = error.message
        path, record = self._finalize(
            run_id, records, env, keep_pending=True, agent=envelope["target"]
        )
        rep.delegation_finished(run_id, envelope["target"], outcome.value, str(path))
        return DelegationResult(run_id, outcome, path, record, error)

    def _errored(
        self,
        run_id: str,
        records: Path,
        envelope: dict[str, Any],
        exc: OrchestratorError,
        rep: Reporter,
        *,
        keep_pending: bool,
        outcome: Outcome | None = None,
    ) -> DelegationResult:
        """The machinery's ending (``errored``), or ``outcome`` (``timeout``: no pool token
        before the deadline)."""
        ended = outcome or Outcome.ERRORED
        if isinstance(exc, HookUnreachableError) and envelope.get("unreachable"):
            exc, keep_pending = _never_delivered(envelope, exc), False
            envelope = {k: v for k, v in envelope.items() if k != "dispatched_at"}
        env = dict(envelope, outcome=ended.value, ended_at=utcnow_iso(), error=exc.message)
        if exc.status_code is not None:
            env["status_code"] = exc.status_code
        path, record = self._finalize(
            run_id, records, env, keep_pending=keep_pending, agent=envelope["target"]
        )
        rep.delegation_finished(run_id, envelope["target"], ended.value, str(path))
        return DelegationResult(run_id, ended, path, record, exc)


def _step_hint(labels: dict[str, Any], agent: str) -> str:
    """What to do when a workflow step's agent stays unreachable until its deadline."""
    return (
        f"Check `agents.{agent}.url`, or raise `timeout:` of step `{labels.get('step')}` "
        f"in workflow `{labels.get('workflow')}` (or `agents.{agent}.timeout`) to wait longer."
    )


def _never_delivered(envelope: dict[str, Any], exc: OrchestratorError) -> OrchestratorError:
    """The error of a dispatch whose every attempt was refused at connect (the gateway is
    down): it says so, and sets ``attempts`` to the attempts made (none delivered)."""
    attempts = int(envelope["unreachable"]["attempts"]) + 1  # the last one is not retried
    envelope["attempts"] = attempts
    envelope["unreachable"] = dict(envelope["unreachable"], attempts=attempts)
    agent = envelope.get("target")
    return HookUnreachableError(
        f"the gateway of `{agent}` was unreachable (connection refused at all {attempts} "
        "attempts): the task was never delivered, and no handoff will come. "
        + exc.message,
        agent=exc.agent,
    )


def _repair_refused(c: _Call, problem: HandoffProblem, kept: Path | None) -> Any:
    """A refused handoff: None when a repair was sent, else the ending (engine.repair).

    The agent's own handoff that cannot be used (``REPAIRABLE`` kinds) ends ``unusable``
    once no repair is left, with the refusal's JSON pointer errors; a file that is not
    this delegation's (mismatched, not a regular file) ends ``invalid`` at once.
    """
    from engine.repair import REPAIRABLE, Ending, unusable

    if problem.kind not in REPAIRABLE:
        return Ending("invalid", problem)
    found = problem.problems or [problem.message]
    if c.watch is None:  # re-attached: no dispatch of this process to send a repair on
        return unusable(c.agent, c.drop, problem.kind, found, len(c.envelope.get("repairs", [])))
    return c.watch.refused(problem.kind, found, moved_to=str(kept) if kept else None)


#: Seconds between looks at a delegation another live process has queued for a token.
_QUEUED_LOOK = 0.2


@dataclass
class _Call:
    """One ``Delegator._wait``: what it waits for, and what it has seen so far."""

    run_id: str
    agent: str
    records: Path
    drop: Path
    envelope: dict[str, Any]
    rep: Reporter
    watch: Any
    sub: bool
    deadline: float
    give_up: float  # when a partial file's grace ends
    renew_at: float
    problem: HandoffProblem | None = None
    last_look: bool = False


def session_key(run_id: str) -> str:
    """The ``sessionKey`` a delegation (or its continuation) sends with ``send_session_key``."""
    return f"hook:orchestrate:{check_id(run_id, 'run id')}"


def _iso_in(seconds: float) -> str:
    from datetime import UTC, datetime, timedelta

    when = datetime.now(UTC) + timedelta(seconds=seconds)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _receiver(cfg: Config, local_url: str | None, agent: AgentConfig, run_id: str) -> str | None:
    base = cfg.receiver_url or (local_url if agent.is_local else None)
    return f"{base.rstrip('/')}/handoffs/{run_id}" if base else None


@contextmanager
def open_delegator(
    cfg: Config,
    *,
    reporter: Reporter | None = None,
    pool: Pool | Literal["auto"] | None = "auto",
    watcher_backend: str = "auto",
    store: RunStore | None = None,
    signals: HandoffSignals | None = None,
) -> Iterator[Delegator]:
    """A Delegator with what it needs running: the embedded gateway (if configured)
    and the token pool (if enabled), sharing one run store (default: ``open_store``)."""
    store = store if store is not None else open_store(cfg)
    gateway = None
    local_url = None
    local_token = None
    gw = cfg.gateway
    needs_local = any(a.is_local for a in cfg.agents.values())
    if gw is not None and needs_local:
        if gw.embedded:
            from engine.gateway.server import LocalGateway

            local_token = _embedded_token(cfg)
            gateway = LocalGateway(
                cfg,
                token=local_token,
                port=gw.port,
                detach_on_stop=gw.detach_on_exit,
                store=store,
            ).start()
            local_url = gateway.url
        else:
            local_url = f"http://{gw.host}:{gw.port}"
    if pool == "auto":
        pool = _pool_for(cfg)
    delegator = Delegator(
        cfg,
        reporter=reporter,
        pool=pool,
        local_url=local_url,
        local_token=local_token,
        watcher_backend=watcher_backend,
        store=store,
        signals=signals,
    )
    delegator.local_gateway = gateway
    try:
        yield delegator
    finally:
        delegator.close()
        if pool is not None:
            pool.close()
        if gateway is not None:
            gateway.stop()


def _embedded_token(cfg: Config) -> str:
    gw = cfg.gateway
    if gw is not None and (gw.token_env and os.environ.get(gw.token_env) or gw.token_file):
        return read_secret(env=gw.token_env, file=gw.token_file, what="the embedded gateway")
    return secrets.token_urlsafe(24)


def _pool_for(cfg: Config) -> Pool | None:
    if not bool((cfg.pool or {}).get("enabled", True)):
        return None  # off: engine.pool is not even imported
    try:
        from engine.pool import PoolSettings, TokenPool
    except ImportError:  # pragma: no cover - the pool module ships with the package
        return None
    settings = PoolSettings.from_config(cfg)
    return TokenPool(settings) if settings.enabled else None
