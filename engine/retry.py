"""Retrying one HTTP request: backoff with jitter, a deadline, and the server's Retry-After.

Used by the hooks client (``engine.hooks``), model agents (``engine.gateway.models``),
channel context (``engine.context``) and the Discord client (``engine.discord``). The
helper decides *when* to try again and when to give up; each caller says what a response
means (``accept``, ``retryable``, ``describe``) and words its own message from the
``Attempts`` it gets back. Nothing here raises for a
failed request, and no ``httpx`` exception leaves it: a connection error or a timeout is
an attempt with a reason.

Example::

    done = send_with_retries(
        lambda timeout: client.post(url, content=body, timeout=timeout),
        Backoff(delays=(0.5, 1.0, 2.0), jitter=0.2, request_timeout=10.0),
        accept=lambda r: r.status_code == 200,
        retryable=lambda r: r.status_code in RETRYABLE_STATUS_CODES,
        deadline=time.monotonic() + 60,
    )
    if done.gave_up is not None: ...  # say why, with done.reason and done.attempts

Time is injected (``clock``, ``sleep``, ``rng``) so a test can run the loop on a fake clock.
"""

from __future__ import annotations

import enum
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from engine.redact import redact

if TYPE_CHECKING:
    import httpx

__all__ = [
    "Attempts",
    "Backoff",
    "GiveUp",
    "backoff_delay",
    "exponential",
    "json_body",
    "retry_after_seconds",
    "send_with_retries",
    "transport_reason",
]


class GiveUp(enum.Enum):
    """Why the helper stopped trying."""

    DEADLINE = "deadline"  # the deadline had passed before the next attempt could start
    EXHAUSTED = "exhausted"  # every delay of the policy was used
    PAST_DEADLINE = "past_deadline"  # the next retry would have started after the deadline
    WAIT_TOO_LONG = "wait_too_long"  # the server asked to wait longer than ``max_wait``


@dataclass(frozen=True)
class Backoff:
    """How to retry: one delay per retry (so ``len(delays) + 1`` attempts at most)."""

    delays: Sequence[float]
    #: Each delay is stretched by up to this fraction, at random.
    jitter: float = 0.0
    #: The longest one attempt may take (cut to what is left before the deadline).
    request_timeout: float | None = None
    #: A server asking to wait longer than this ends the retries at once.
    max_wait: float | None = None
    #: True: a server's asked wait replaces the backoff delay; False: the longer one wins.
    server_wait_replaces: bool = False


@dataclass(frozen=True)
class Attempts:
    """What the tries came to.

    ``response`` is the last answer when it ended the loop (``accepted``, or refused: not
    retryable), else None. ``gave_up`` is None exactly when ``response`` is not None.
    """

    response: httpx.Response | None
    attempts: int
    elapsed: float
    gave_up: GiveUp | None = None
    #: Why the last failed attempt failed, scrubbed ("HTTP 503", "connection refused", ...).
    reason: str = ""
    #: The wait that was not taken (PAST_DEADLINE, WAIT_TOO_LONG), in seconds.
    delay: float | None = None
    #: True when the last attempt got no answer within its timeout.
    timed_out: bool = False
    #: That last attempt's timeout, in seconds (None: the client's own).
    timeout: float | None = None
    #: Status codes of the answers that were retried, in order.
    retried: tuple[int, ...] = ()
    #: True when ``response`` is one the caller's ``accept`` took (else it was refused).
    accepted: bool = False
    #: The status code of the last attempt's answer (None: it got no answer).
    status: int | None = None


def send_with_retries(
    send: Callable[[float | None], httpx.Response],
    backoff: Backoff,
    *,
    accept: Callable[[httpx.Response], bool],
    retryable: Callable[[httpx.Response], bool],
    deadline: float | None = None,
    describe: Callable[[httpx.Response], str] | None = None,
    server_wait: Callable[[httpx.Response], float | None] | None = None,
    scrub: Callable[[str], str] = redact,
    on_retry: Callable[[int, float, str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    rng: Callable[[], float] = random.random,
) -> Attempts:
    """Call ``send(timeout)`` until ``accept`` or a non-``retryable`` answer, or give up.

    ``deadline`` is a ``clock()`` value; None waits as long as the delays say.
    ``describe(response)`` names a retried answer (default ``HTTP <code>``);
    ``server_wait(response)`` is the wait it asks for (default its ``Retry-After``).
    ``on_retry(attempt, delay_s, reason)`` is told before each wait.
    """
    tally = _Tally(clock, clock(), scrub)
    while True:
        tally.attempt += 1
        tally.timeout = _attempt_timeout(backoff.request_timeout, deadline, clock())
        if tally.timeout is not None and tally.timeout <= 0:
            return tally.done(GiveUp.DEADLINE, tried=tally.attempt - 1)
        resp, said, tally.timed_out = _try(send, tally.timeout, scrub)
        tally.status = None if resp is None else resp.status_code
        asked: float | None = None
        if resp is None:
            tally.reason = said
        else:
            if accept(resp):
                return tally.done(None, resp, accepted=True)
            if not retryable(resp):
                return tally.done(None, resp)
            tally.retried.append(resp.status_code)
            tally.reason = describe(resp) if describe else f"HTTP {resp.status_code}"
            asked = (server_wait or _retry_after)(resp)
            if asked is not None and asked > (backoff.max_wait or math.inf):
                return tally.done(GiveUp.WAIT_TOO_LONG, delay=asked)
        if tally.attempt > len(backoff.delays):
            return tally.done(GiveUp.EXHAUSTED)
        delay = _delay(backoff, tally.attempt, asked, rng())
        if deadline is not None and clock() + delay >= deadline:
            return tally.done(GiveUp.PAST_DEADLINE, delay=delay)
        if on_retry is not None:
            on_retry(tally.attempt, delay, scrub(tally.reason))
        sleep(delay)


@dataclass
class _Tally:
    """What the loop has seen so far; ``done`` turns it into the ``Attempts`` it returns."""

    clock: Callable[[], float]
    start: float
    scrub: Callable[[str], str]
    attempt: int = 0
    reason: str = ""
    timed_out: bool = False
    timeout: float | None = None
    status: int | None = None
    retried: list[int] = field(default_factory=list)

    def done(
        self,
        gave_up: GiveUp | None,
        response: httpx.Response | None = None,
        *,
        tried: int | None = None,
        delay: float | None = None,
        accepted: bool = False,
    ) -> Attempts:
        return Attempts(
            response,
            self.attempt if tried is None else tried,
            self.clock() - self.start,
            gave_up,
            self.scrub(self.reason),
            delay=delay,
            timed_out=self.timed_out,
            timeout=self.timeout,
            retried=tuple(self.retried),
            accepted=accepted,
            status=self.status,
        )


def _attempt_timeout(
    request_timeout: float | None, deadline: float | None, now: float
) -> float | None:
    """The next attempt's timeout: the request timeout, cut to what is left (<= 0: none left)."""
    if deadline is None:
        return request_timeout
    remaining = deadline - now
    return remaining if request_timeout is None else min(request_timeout, remaining)


def _try(
    send: Callable[[float | None], httpx.Response],
    timeout: float | None,
    scrub: Callable[[str], str],
) -> tuple[httpx.Response | None, str, bool]:
    """One attempt: ``(response, "", False)``, or ``(None, reason, timed_out)``."""
    try:
        return send(timeout), "", False
    except Exception as exc:
        import httpx  # only when an attempt failed: a sender need not import it

        if isinstance(exc, httpx.TimeoutException):
            said = "no answer in time" if timeout is None else f"no answer within {timeout:.1f} s"
            return None, said, True
        if isinstance(exc, httpx.TransportError):
            return None, transport_reason(exc, scrub), False
        raise


def exponential(first: float, *, factor: float, cap: float, count: int) -> Backoff:
    """A policy of ``count`` delays: ``first``, ``first * factor``, ... each at most ``cap``.

    Example: ``exponential(2.0, factor=2.0, cap=5.0, count=3).delays == (2.0, 4.0, 5.0)``.
    """
    delays, delay = [], first
    for _ in range(count):
        delays.append(min(delay, cap))
        delay = min(delay * factor, cap)  # stays finite however many retries
    return Backoff(delays=tuple(delays))


def backoff_delay(backoff: Backoff, attempt: int, draw: float) -> float:
    """The wait before retry number ``attempt`` (1 = the first) of ``backoff``, with its
    jitter applied to ``draw`` (a number in [0, 1), e.g. ``random.random()``)."""
    return _delay(backoff, attempt, None, draw)


def _delay(backoff: Backoff, attempt: int, asked: float | None, draw: float) -> float:
    """The wait before retry number ``attempt``: the backoff delay, or the server's ask."""
    delay = backoff.delays[attempt - 1] * (1 + backoff.jitter * draw)
    if asked is None:
        return delay
    return asked if backoff.server_wait_replaces else max(delay, asked)


def _retry_after(resp: httpx.Response) -> float | None:
    return retry_after_seconds(resp.headers.get("retry-after"))


def transport_reason(exc: Exception, scrub: Callable[[str], str] = redact) -> str:
    """A short reason for a connection failure: ``connection refused`` or ``Name: text``.

    Scrubbed before it is cut: a cut could split a secret the scrub would not recognise.
    """
    name = type(exc).__name__
    text = str(exc) or name
    if "refused" in text.lower():
        return "connection refused"
    return scrub(f"{name}: {text}"[:65536])[:200]


def json_body(resp: httpx.Response) -> Any:
    """The decoded JSON body of ``resp``, or None when it is not JSON (cut short, HTML,
    empty) or is nested past the parser (``RecursionError``): callers check its shape."""
    try:
        return resp.json()
    except (ValueError, RecursionError):
        return None


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` value asks for (delta seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
