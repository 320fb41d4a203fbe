"""The run's end as gateways report it, and the repair message: tables of inputs and values."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.completion import Completion, Dispatch
from engine.errors import HookError
from engine.hooks import HooksClient, Target
from engine.repair import REPAIR_MARKER, attempts_for, repair_message


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
    text = repair_message(
        run_id="orch-1", agent="webster", handoff_path=Path("/h/inbox/orch-1.json"),
        write_command="orchestrate handoff write --dir /h/inbox --run-id orch-1",
        why="schema", problems=["`/status`: `done` is not one of `complete`"], attempt=1,
        attempts=1, key="k-123",
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
    text = repair_message(run_id="orch-1", agent="webster",
                          handoff_path=Path("/h/inbox/orch-1.json"),
                          write_command=f"orchestrate handoff write --key {key}",
                          why="no_handoff", problems=[], attempt=1, attempts=1, key=key)
    task = task_from_message("gw-1", "webster", text, 30, "hook:orchestrate:orch-1")
    assert (task.run_id, task.handoff_agent, task.handoff_key) == ("orch-1", "webster", key)
    assert task.handoff_path == Path("/h/inbox/orch-1.json")
    shown = redact_key(text)
    assert task.session_key == "hook:orchestrate:orch-1" and task.text == shown
    assert key not in shown and "key: (in $ORCH_HANDOFF_KEY)" in shown
