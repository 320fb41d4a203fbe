"""The retrying HTTP helper on a fake clock: scripted answers -> attempts, delays, outcome."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from engine.redact import register
from engine.retry import (
    Attempts,
    Backoff,
    GiveUp,
    retry_after_seconds,
    send_with_retries,
    transport_reason,
)

URL = "http://127.0.0.1:9/x"


@dataclass
class FakeClock:
    """A clock that moves only when slept on (or when a scripted answer takes time)."""

    now: float = 100.0
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


# A scripted answer: a status code, (code, headers), "refused", "timeout", or a float
# (a timeout that took that many seconds of the fake clock).
Step = Any


def _transport(script: list[Step], clock: FakeClock, seen: list[float | None]) -> Any:
    answers = iter(script)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions.get("timeout", {}).get("read"))
        step = next(answers)
        if step == "refused":
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if step == "timeout" or isinstance(step, float):
            clock.now += step if isinstance(step, float) else 0.0
            raise httpx.ReadTimeout("timed out", request=request)
        if step == "boom":
            raise httpx.RemoteProtocolError("peer closed secret-token-1234567890", request=request)
        code, headers = step if isinstance(step, tuple) else (step, {})
        return httpx.Response(code, headers=headers, json={"ok": code})

    return httpx.MockTransport(handle)


def run(
    script: list[Step],
    backoff: Backoff,
    *,
    deadline: float | None = None,
    **kw: Any,
) -> tuple[Attempts, FakeClock, list[float | None], list[tuple[int, float, str]]]:
    clock = FakeClock()
    seen: list[float | None] = []
    told: list[tuple[int, float, str]] = []
    with httpx.Client(transport=_transport(script, clock, seen)) as client:
        done = send_with_retries(
            lambda timeout: client.get(URL, timeout=timeout),
            backoff,
            accept=lambda r: r.status_code == 200,
            retryable=lambda r: r.status_code == 429 or r.status_code >= 500,
            deadline=None if deadline is None else clock.now + deadline,
            on_retry=lambda a, d, r: told.append((a, round(d, 6), r)),
            clock=clock,
            sleep=clock.sleep,
            rng=lambda: 0.5,
            **kw,
        )
    return done, clock, seen, told


THREE = Backoff((1.0, 2.0, 4.0))

# (id, script, backoff, deadline, attempts, delays slept, gave_up, accepted, reason)
CASES: list[tuple[str, list[Step], Backoff, float | None, int, list[float], Any, bool, str]] = [
    ("first-try", [200], THREE, None, 1, [], None, True, ""),
    ("500-then-200", [500, 200], THREE, None, 2, [1.0], None, True, "HTTP 500"),
    ("refused-then-200", ["refused", 200], THREE, None, 2, [1.0], None, True,
     "connection refused"),
    ("not-retryable", [500, 404], THREE, None, 2, [1.0], None, False, "HTTP 500"),
    ("exhausted", [503] * 4, THREE, None, 4, [1.0, 2.0, 4.0], GiveUp.EXHAUSTED, False,
     "HTTP 503"),
    ("no-delays", [503], Backoff(()), None, 1, [], GiveUp.EXHAUSTED, False, "HTTP 503"),
    ("jitter", [500, 200], Backoff((1.0,), jitter=0.2), None, 2, [1.1], None, True,
     "HTTP 500"),
    ("retry-after-longer", [(429, {"Retry-After": "3"}), 200], THREE, None, 2, [3.0], None,
     True, "HTTP 429"),
    ("retry-after-shorter", [(429, {"Retry-After": "0.2"}), 200], THREE, None, 2, [1.0],
     None, True, "HTTP 429"),
    ("retry-after-replaces", [(429, {"Retry-After": "0.2"}), 200],
     Backoff((1.0,), server_wait_replaces=True), None, 2, [0.2], None, True, "HTTP 429"),
    ("retry-after-too-long", [(429, {"Retry-After": "60"})], Backoff((1.0,), max_wait=30),
     None, 1, [], GiveUp.WAIT_TOO_LONG, False, "HTTP 429"),
    ("retry-after-garbage", [(429, {"Retry-After": "soon"}), 200], THREE, None, 2, [1.0],
     None, True, "HTTP 429"),
    ("next-past-deadline", [500, 500], THREE, 2.5, 2, [1.0], GiveUp.PAST_DEADLINE, False,
     "HTTP 500"),
    ("retry-after-past-deadline", [(503, {"Retry-After": "600"})], THREE, 60.0, 1, [],
     GiveUp.PAST_DEADLINE, False, "HTTP 503"),
    ("timeout-uses-the-deadline", [5.0], THREE, 5.0, 1, [], GiveUp.PAST_DEADLINE, False,
     "no answer within 5.0 s"),
    ("timeout-then-200", ["timeout", 200], THREE, None, 2, [1.0], None, True,
     "no answer in time"),
]


@pytest.mark.parametrize(
    ("script", "backoff", "deadline", "attempts", "slept", "gave_up", "accepted", "reason"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_scripted_answers(
    script: list[Step],
    backoff: Backoff,
    deadline: float | None,
    attempts: int,
    slept: list[float],
    gave_up: GiveUp | None,
    accepted: bool,
    reason: str,
) -> None:
    done, clock, seen, told = run(script, backoff, deadline=deadline)
    assert (done.attempts, clock.slept, done.gave_up, done.accepted) == (
        attempts,
        slept,
        gave_up,
        accepted,
    )
    assert done.reason == reason
    assert len(seen) == attempts
    assert [d for _, d, _ in told] == slept  # on_retry is told before each wait
    assert [a for a, _, _ in told] == list(range(1, len(slept) + 1))
    assert (done.response is None) == (gave_up is not None)


def test_the_deadline_caps_each_attempt_and_none_starts_after_it() -> None:
    done, clock, seen, _ = run(
        [500, 500, 500], Backoff((1.0, 1.0, 1.0), request_timeout=10.0), deadline=3.0
    )
    assert seen == [3.0, 2.0, 1.0]  # min(request_timeout, what is left)
    assert clock.slept == [1.0, 1.0]  # the third wait would end at the deadline
    assert done.gave_up is GiveUp.PAST_DEADLINE and done.delay == 1.0


def test_a_deadline_already_past_makes_no_attempt() -> None:
    done, _, seen, _ = run([200], THREE, deadline=0.0)
    assert (done.attempts, done.gave_up, seen) == (0, GiveUp.DEADLINE, [])


def test_what_was_retried_and_how_long_it_took() -> None:
    done, _, _, _ = run([503, 429, 500, 200], THREE)
    assert done.retried == (503, 429, 500)
    assert done.elapsed == pytest.approx(7.0)
    assert done.response is not None and done.response.status_code == 200


def test_a_too_long_wait_is_reported_with_its_length() -> None:
    done, _, _, _ = run([(429, {"Retry-After": "45"})], Backoff((1.0,), max_wait=30.0))
    assert (done.gave_up, done.delay) == (GiveUp.WAIT_TOO_LONG, 45.0)


def test_describe_and_server_wait_are_the_callers() -> None:
    done, clock, _, told = run(
        [(429, {"X-Wait": "0.7"}), 200],
        Backoff((5.0,), server_wait_replaces=True),
        describe=lambda r: f"rate limited ({r.status_code})",
        server_wait=lambda r: float(r.headers["x-wait"]),
    )
    assert done.accepted and clock.slept == [0.7]
    assert told == [(1, 0.7, "rate limited (429)")]


def test_reasons_are_scrubbed_before_they_are_cut() -> None:
    register("secret-token-1234567890")
    done, _, _, told = run(["boom"] * 2, Backoff((1.0,)))
    assert "secret-token" not in done.reason and "secret-token" not in told[0][2]
    assert done.reason.startswith("RemoteProtocolError: peer closed")
    own: Callable[[str], str] = lambda text: text.replace("peer", "[p]")  # noqa: E731
    done, _, _, _ = run(["boom"], Backoff(()), scrub=own)
    assert "[p] closed" in done.reason


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("3", 3.0),
        ("0.5", 0.5),
        ("-4", 0.0),
        ("", None),
        (None, None),
        ("later", None),
        ("Mon, 01 Jan 2001 00:00:00 GMT", 0.0),  # a date in the past: now
    ],
    ids=["int", "float", "negative", "empty", "absent", "garbage", "past-date"],
)
def test_retry_after_values(value: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(value) == seconds


def test_transport_reason() -> None:
    req = httpx.Request("GET", URL)
    assert transport_reason(httpx.ConnectError("Connection refused", request=req)) == (
        "connection refused"
    )
    long = transport_reason(httpx.ConnectError("x" * 500, request=req))
    assert long.startswith("ConnectError: xxx") and len(long) == 200


# -- the hooks client on the helper: its own wording, per-call observers, redaction -------


def _hooks(script: list[Step], clock: FakeClock, **kw: Any) -> Any:
    from engine.config import RetryPolicy
    from engine.hooks import HooksClient

    return HooksClient(
        RetryPolicy(delays=(1.0, 2.0), jitter=0.0, request_timeout=5.0),
        transport=_transport(script, clock, []),
        sleep=clock.sleep,
        clock=clock,
        rng=lambda: 0.0,
        **kw,
    )


def _target() -> Any:
    from engine.hooks import Target

    return Target(
        agent="webster",
        url="http://127.0.0.1:9",
        token="hooks-token-abcdefghijklmnop",
        token_source="environment variable `T`",
    )


def test_hooks_dispatch_counts_overload_and_tells_the_calls_observer() -> None:
    clock = FakeClock()
    client_told: list[Any] = []
    call_told: list[Any] = []
    with _hooks([503, 429, 202], clock, on_retry=lambda *a: client_told.append(a)) as client:
        got = client.post_agent(
            _target(),
            {"message": "m"},
            idempotency_key="k",
            deadline=clock.now + 60,
            on_retry=lambda *a: call_told.append(a),
        )
    assert (got.status_code, got.attempts, got.overloaded) == (202, 3, 2)
    assert got.elapsed_s == pytest.approx(3.0)
    assert call_told == [("webster", 1, 1.0, "HTTP 503"), ("webster", 2, 2.0, "HTTP 429")]
    assert client_told == []  # the call's own observer replaces the client's


@pytest.mark.parametrize(
    ("script", "deadline", "message"),
    [
        ([503] * 3, 60.0, "gave up dispatching to `webster` at http://127.0.0.1:9/hooks/agent "
         "after 3 attempts (last: HTTP 503)"),
        ([500], 0.5, "could not dispatch to `webster` at http://127.0.0.1:9/hooks/agent before "
         "the deadline (last: HTTP 500 after 1 attempt(s); the next retry would come in 1.0 s)"),
        ([], 0.0, "could not dispatch to `webster` at http://127.0.0.1:9/hooks/agent before the "
         "deadline (0 attempt(s))"),
    ],
    ids=["exhausted", "past-deadline", "deadline-gone"],
)
def test_hooks_dispatch_gives_up_in_its_own_words(
    script: list[Step], deadline: float, message: str
) -> None:
    from engine.errors import HookUnreachableError

    clock = FakeClock()
    with _hooks(script, clock) as client, pytest.raises(HookUnreachableError) as err:
        client.post_agent(_target(), {}, idempotency_key="k", deadline=clock.now + deadline)
    assert message in str(err.value)


def test_hooks_refusal_is_not_retried_and_its_text_is_redacted() -> None:
    from engine.errors import HookError

    clock = FakeClock()
    target = _target()

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"error": f"bad token {target.token}"})

    from engine.config import RetryPolicy
    from engine.hooks import HooksClient

    client = HooksClient(
        RetryPolicy(delays=(1.0,), jitter=0.0), transport=httpx.MockTransport(handle),
        sleep=clock.sleep, clock=clock,
    )
    with client, pytest.raises(HookError) as err:
        client.post_agent(target, {}, idempotency_key="k", deadline=clock.now + 60)
    assert err.value.status_code == 403 and clock.slept == []
    assert target.token not in str(err.value) and "403 Forbidden" in str(err.value)
