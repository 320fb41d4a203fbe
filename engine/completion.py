"""When the agent's run has ended: the gateway's ``waitForCompletion`` answer.

With ``"waitForCompletion": true`` an OpenClaw gateway holds the answer to
``POST /hooks/agent`` until the agent's run ends, then answers
``{"ok": true, "runId": ..., "completion": {"status": "ok" | "error", ...}}``. The local
gateway does the same for command agents (their exit) and model agents (their end). A
gateway that does not know the flag answers at once without ``completion``: the
delegation then waits for the handoff as before.

``Dispatch`` sends such a POST on a thread of its own, so the delegation keeps watching
its inbox meanwhile; when the answer (or an error) comes, it wakes the waiter. Given a
``first`` try, it makes that try on the calling thread and waits a moment for the answer
(``QUICK``): a run that ends at once (an instant agent) then costs no hand-over to
another thread and back; otherwise the POST carries on on a dispatch thread from where the
try stopped (``engine.hooks.Handover``). A
refusal (400/401/403/404) still ends the delegation at once: it wakes the waiter too.
Once the delegation has ended (``abandon``), a held POST that fails is not retried,
reported or sent again: it ends quietly (``abandoned``), whatever happens to its gateway.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.errors import HookError, OrchestratorError
from engine.hooks import Abandoned, DispatchResult, Handover
from engine.redact import redact
from engine.workers import Workers

#: Seconds after which a held POST that has not been refused counts as admitted (the
#: real gateway refuses within 0.3 s; it answers 200 only when the run ends).
ADMISSION_WAIT = 0.5

#: Seconds a held POST's first try waits for its answer on the delegation's own thread
#: before the wait goes to a dispatch thread. The delegation's loop starts that much later
#: for a longer run, which delays only a cancellation (the loop looks for one every 0.2 s)
#: and a handoff written before its run ends (whose record waits up to ``END_WAIT`` for
#: that end anyway): ``ADMISSION_WAIT`` still decides when the run counts as admitted.
QUICK = 0.2

#: The threads held POSTs run on, shared by every delegation of the process.
_DISPATCHERS = Workers("dispatch")

COMPLETION_OK = "ok"
COMPLETION_ERROR = "error"


@dataclass(frozen=True)
class Completion:
    """How the gateway says the agent's run ended: ``ok`` or ``error``, and why."""

    status: str
    reason: str | None = None

    @classmethod
    def from_gateway(cls, data: dict[str, Any]) -> Completion:
        """Read a gateway's ``completion`` object (unknown statuses count as ``error``)."""
        status = data.get("status")
        if status == COMPLETION_OK:
            return cls(COMPLETION_OK)
        reason = None
        for key in ("error", "reason", "message", "detail"):
            value = data.get(key)
            if isinstance(value, str) and value.strip():
                reason = value.strip()[:500]
                break
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                reason = str(value["message"]).strip()[:500]
                break
        if reason is None:
            extra = {k: v for k, v in data.items() if k != "status" and isinstance(v, str)}
            detail = ", ".join(f"{k}: {v}" for k, v in sorted(extra.items()))
            reason = (f"status `{status}`" + (f" ({detail})" if detail else ""))[:500]
        return cls(COMPLETION_ERROR, redact(reason))


class Dispatch:
    """One POST to the hooks API running on its own thread; ``wake`` is called when it ends.

    Example::

        d = Dispatch(lambda: client.post_agent(target, body, ..., hold=True), waiter.wake)
        ...  # watch the inbox; the waiter wakes when the gateway answers
        if d.done and d.error is None and d.completion is not None: ...
    """

    def __init__(
        self,
        send: Callable[[], DispatchResult],
        wake: Callable[[], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        name: str = "dispatch",
        first: Callable[[], DispatchResult] | None = None,
        resume: Callable[[Callable[[float | None], Any]], DispatchResult] | None = None,
    ) -> None:
        """``send()`` makes the whole POST on a dispatch thread. With ``first`` (a try made
        here, raising ``Handover`` when its answer is not in at once) and ``resume``
        (carries on from a ``Handover.resume``), the POST starts on this thread."""
        self._send = send
        self._wake = wake
        self._clock = clock
        self.started_at = clock()
        self.ended_at: float | None = None
        self.result: DispatchResult | None = None
        self.error: OrchestratorError | None = None
        self.abandoned = False  # True: it failed after its delegation ended, and stopped
        self._done = threading.Event()
        if first is not None:
            try:
                got = first()
            except Handover as later:
                if later.resume is not None:  # sent already: only its answer is to come
                    if resume is None:
                        raise TypeError("Dispatch(first=...) needs resume=...") from None
                    carry_on = later.resume
                    self._send = lambda: resume(carry_on)
            except Exception as exc:  # judged as a failed send is (a refusal, a bug)
                failed = exc
                self._end(lambda: _raise(failed))
                return
            else:
                self._end(lambda: got)
                return
        _DISPATCHERS.submit(self._run)  # a reused thread: starting one costs up to 1 ms

    def _run(self) -> None:
        self._end(self._send)

    def _end(self, send: Callable[[], DispatchResult]) -> None:
        try:
            self.result = send()
        except Abandoned:
            self.abandoned = True
        except OrchestratorError as exc:
            self.error = exc
        except Exception as exc:  # the HTTP client closed under us, or a bug: never lost
            self.error = HookError(f"the dispatch broke: {type(exc).__name__}: {exc}"[:300])
        finally:
            self.ended_at = self._clock()
            self._done.set()
            self._wake()

    @property
    def done(self) -> bool:
        """True once the gateway answered (or the POST failed)."""
        return self._done.is_set()

    def wait(self, timeout: float | None) -> bool:
        """Block until the POST is over or ``timeout`` passes; True if it is over."""
        return self._done.wait(timeout)

    @property
    def completion(self) -> Completion | None:
        """The run's end as the gateway reported it; None while running or when not known."""
        if not self._done.is_set() or self.result is None or self.result.completion is None:
            return None
        return Completion.from_gateway(self.result.completion)


def _raise(exc: Exception) -> DispatchResult:
    raise exc
