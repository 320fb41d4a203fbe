"""The run's end as gateways report it, and the repair message: tables of inputs and values."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.completion import Completion, Dispatch
from engine.config import RetryPolicy, config_from_dict
from engine.errors import HookError
from engine.gateway.server import LocalGateway
from engine.hooks import Handover, HooksClient, Target
from engine.message import render_message
from engine.repair import REPAIR_MARKER, HandoffAddress, attempts_for, repair_message
from engine.store.file import handoff_path
from tests.helpers import StandIn, gated_agent


@pytest.mark.parametrize(
    "data,status,reason",
    [
        ({"status": "ok", "replyDisposition": "visible"}, "ok", None),
        ({"status": "error", "error": "model returned 400"}, "error", "model returned 400"),
        ({"status": "error", "error": {"message": "quota"}}, "error", "quota"),
        ({"status": "error", "reason": "  aborted  "}, "error", "aborted"),
        (
            {"status": "error", "replyDisposition": "empty", "delivered": False},
            "error",
            "status `error` (replyDisposition: empty)",
        ),
        ({"status": "timeout"}, "error", "status `timeout`"),
        ({}, "error", "status `None`"),
        ({"status": "error", "error": "x" * 900}, "error", "x" * 500),
        ({"status": "error", "error": "Bearer abcdefghijklmnopqrstuvwx0123 failed"}, "error",
         "Bearer *** failed"),
    ],
    ids=["ok", "error-text", "error-object", "reason", "no-reason", "unknown-status",
         "empty", "long", "secret"],
)
def test_completion_from_gateway(data: dict[str, Any], status: str, reason: str | None) -> None:
    got = Completion.from_gateway(data)
    assert (got.status, got.reason) == (status, reason)


def _target() -> Target:
    return Target(agent="webster", url="http://gw.test", token="t0ken", token_source="env `X`")


@pytest.mark.parametrize(
    "answer,run_id,completion",
    [
        ({"ok": True, "runId": "r1"}, "r1", None),
        ({"ok": True, "runId": "r2", "completion": {"status": "ok"}}, "r2", {"status": "ok"}),
        ({"ok": True, "runId": "r3", "completion": "done"}, "r3", None),
        (["not", "an", "object"], None, None),
    ],
    ids=["older-gateway", "completion", "odd-completion", "odd-body"],
)
def test_a_held_answer_carries_the_completion(answer: Any, run_id: str | None,
                                             completion: dict[str, Any] | None) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=answer)

    with HooksClient(transport=httpx.MockTransport(handler)) as client:
        got = client.post_agent(_target(), {"message": "m", "waitForCompletion": True},
                                idempotency_key="k", deadline=1e12, hold=True)
    assert (got.gateway_run_id, got.completion) == (run_id, completion)
    (req,) = seen
    assert json.loads(req.content)["waitForCompletion"] is True
    # Only the read may wait for the run's end; connecting still fails fast.
    timeout = req.extensions["timeout"]
    assert timeout["connect"] == 10.0 and timeout["read"] > 1e6


def test_a_dispatch_reports_its_answer_or_its_error_and_wakes_the_waiter() -> None:
    woke = threading.Event()
    done = Dispatch(lambda: _result(), woke.set)
    assert done.wait(5) and woke.is_set()
    assert done.completion == Completion("ok") and done.error is None

    def boom() -> Any:
        raise RuntimeError("client closed")

    woke.clear()
    broke = Dispatch(boom, woke.set)
    assert broke.wait(5) and woke.is_set()
    assert isinstance(broke.error, HookError) and "client closed" in broke.error.message
    assert broke.completion is None


def _result() -> Any:
    from engine.hooks import DispatchResult

    return DispatchResult(200, "r", 1, 0.01, 0, {"status": "ok"})


@pytest.mark.parametrize(
    "step,agent,default,expected",
    [(None, None, 1, 1), (None, 3, 1, 3), (0, 3, 1, 0), (2, None, 0, 2), (None, None, -1, 0)],
)
def test_the_repair_bound(step: int | None, agent: int | None, default: int,
                          expected: int) -> None:
    assert attempts_for(step, agent, default) == expected


def test_the_repair_message_names_what_to_fix_and_where() -> None:
    to = HandoffAddress(
        "orch-1", "webster", Path("/h/inbox/orch-1.json"),
        "orchestrate handoff write --dir /h/inbox --run-id orch-1", key="k-123",
    )
    text = repair_message(
        to, why="schema", problems=["`/status`: `done` is not one of `complete`"], attempt=1,
        attempts=1,
    )
    assert text.splitlines() == [
        REPAIR_MARKER,
        "Repair 1 of 1: the file at handoff_path does not match the handoff schema:",
        "  - `/status`: `done` is not one of `complete`",
        "Write the handoff now (the fields of the HANDOFF block), then stop.",
        "run_id: orch-1",
        "agent: webster",
        "handoff_path: /h/inbox/orch-1.json",
        "key: k-123",
        "or run:",
        "orchestrate handoff write --dir /h/inbox --run-id orch-1",
    ]


@pytest.mark.parametrize(
    "repairs,spent",
    [(1, "after 1 repair attempt(s)"), (0, "with no repair allowed (`repair_attempts: 0`)")],
)
def test_the_unusable_ending_keeps_the_pointer_errors(repairs: int, spent: str) -> None:
    from engine.errors import EXIT_UNUSABLE
    from engine.repair import unusable

    drop = Path("/h/inbox/orch-1.json")
    pointer = "`/status`: `done` is not one of `complete`, `partial`, `blocked`, `failed`"
    ending = unusable("webster", drop, "schema", [pointer], repairs)
    assert ending.outcome == "unusable" and ending.error.exit_code == EXIT_UNUSABLE
    assert ending.error.message == (
        "`webster` finished without a usable handoff (the file at handoff_path does not "
        f"match the handoff schema) {spent}; expected at `{drop}`.\n  - {pointer}"
    )


def test_a_correction_sent_alone_still_names_the_run_and_hides_its_key() -> None:
    """Into a session the correction goes alone: the local gateway reads the run id, the
    path and the key from the repair block, and masks the key in TASK.txt."""
    from engine.gateway.agents import redact_key, task_from_message

    key = "k" * 32
    to = HandoffAddress("orch-1", "webster", Path("/h/inbox/orch-1.json"),
                        f"orchestrate handoff write --key {key}", key=key)
    text = repair_message(to, why="no_handoff", problems=[], attempt=1, attempts=1)
    task = task_from_message("gw-1", "webster", text, 30, "hook:orchestrate:orch-1")
    assert (task.run_id, task.handoff_agent, task.handoff_key) == ("orch-1", "webster", key)
    assert task.handoff_path == Path("/h/inbox/orch-1.json")
    shown = redact_key(text)
    assert task.session_key == "hook:orchestrate:orch-1" and task.text == shown
    assert key not in shown and "key: (in $ORCH_HANDOFF_KEY)" in shown


# -- the first try of a held POST, on the delegation's own thread ---------------------

_GW_TOKEN = "gw-quick-token-5d1f0a2b"


@pytest.fixture
def local_gateway(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], LocalGateway]]:
    """LocalGateways with one agent, `webster`, on ephemeral ports; stopped at teardown."""
    started: list[LocalGateway] = []

    def start(agent: dict[str, Any]) -> LocalGateway:
        cfg = config_from_dict(
            {"handoffs_dir": "handoffs", "agents": {"webster": {"url": "local"}},
             "gateway": {"agents": {"webster": agent}}},
            path=tmp_path / "orchestrator.yaml",
        )
        started.append(LocalGateway(cfg, token=_GW_TOKEN, port=0).start())
        return started[-1]

    yield start
    for gw in started:
        gw.stop()


def _held_body(gw: LocalGateway, run_id: str) -> dict[str, Any]:
    path = handoff_path(gw.cfg.handoffs_dir, run_id)
    msg = render_message(task="t", run_id=run_id, agent="webster", caller="m", handoff_path=path)
    return {"message": msg, "agentId": "webster", "waitForCompletion": True}


def _held(client: HooksClient, gw: LocalGateway, run_id: str, woke: threading.Event,
          *, quick: float) -> Dispatch:
    """A Dispatch as engine.repair makes it: the first try here, the rest elsewhere."""
    target = Target("webster", gw.url, _GW_TOKEN, "a test")
    body = _held_body(gw, run_id)

    def post(**more: Any) -> Any:
        return client.post_agent(target, body, idempotency_key=run_id,
                                 deadline=time.monotonic() + 60, hold=True, **more)

    return Dispatch(lambda: post(), woke.set, first=lambda: post(quick=quick),
                    resume=lambda carry_on: post(resume=carry_on))


def test_a_held_post_answered_at_once_ends_on_the_calling_thread(
    local_gateway: Callable[[dict[str, Any]], LocalGateway],
) -> None:
    gw = local_gateway({"kind": "echo"})
    woke = threading.Event()
    with HooksClient() as client:
        d = _held(client, gw, "orch-quick-1", woke, quick=30.0)
        # Over when the constructor returns: no dispatch thread was involved.
        assert d.done and woke.is_set() and d.error is None
        assert d.completion == Completion("ok")
        assert d.result is not None and d.result.attempts == 1
    assert handoff_path(gw.cfg.handoffs_dir, "orch-quick-1").exists()
    assert gw.stats()["dispatched"]["webster"] == 1


def test_a_held_post_still_running_carries_on_on_a_dispatch_thread(
    local_gateway: Callable[[dict[str, Any]], LocalGateway], tmp_path: Path,
) -> None:
    go = tmp_path / "go"
    gw = local_gateway(gated_agent(go))
    woke = threading.Event()
    with HooksClient() as client:
        d = _held(client, gw, "orch-quick-2", woke, quick=0.05)
        assert not d.done and not woke.is_set()  # the run goes on: the wait moved
        go.touch()
        assert d.wait(60) and woke.is_set() and d.error is None
        assert d.completion == Completion("ok")
    assert gw.stats()["dispatched"]["webster"] == 1  # its answer was read, not sent again


def test_a_quick_overloaded_answer_is_retried_on_the_other_thread() -> None:
    gw = StandIn(statuses=[503]).start()
    try:
        target = Target("webster", gw.url, gw.token, "a test")
        with HooksClient(RetryPolicy(delays=(0.01,), jitter=0.0)) as client:
            with pytest.raises(Handover) as later:
                client.post_agent(target, {"message": "m"}, idempotency_key="k",
                                  deadline=time.monotonic() + 60, hold=True, quick=30.0)
            assert gw.posts == 1 and later.value.resume is not None
            got = client.post_agent(target, {"message": "m"}, idempotency_key="k",
                                    deadline=time.monotonic() + 60, hold=True,
                                    resume=later.value.resume)
    finally:
        gw.stop()
    assert (got.attempts, got.overloaded, got.gateway_run_id) == (2, 1, "standin-2")
    assert gw.posts == 2


def test_a_quick_refusal_is_raised_on_the_calling_thread() -> None:
    gw = StandIn(token="another-token").start()
    try:
        target = Target("webster", gw.url, "stand-in-token-wrong", "environment variable `X`")
        with HooksClient() as client, pytest.raises(HookError) as refused:
            client.post_agent(target, {"message": "m"}, idempotency_key="k",
                              deadline=time.monotonic() + 60, hold=True, quick=30.0)
    finally:
        gw.stop()
    assert refused.value.status_code == 401 and gw.posts == 1
    assert "stand-in-token-wrong" not in refused.value.message


def test_an_https_gateway_is_not_tried_on_the_calling_thread() -> None:
    target = Target("webster", "https://gw.invalid", "t0ken", "env `X`")
    with HooksClient() as client, pytest.raises(Handover) as later:
        client.post_agent(target, {"message": "m"}, idempotency_key="k",
                          deadline=time.monotonic() + 60, hold=True, quick=30.0)
    assert later.value.resume is None  # nothing was sent: the dispatch thread sends it
