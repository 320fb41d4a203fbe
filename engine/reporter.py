"""Reporters: how the engine tells the outside what is happening, without printing itself.

The engine calls a ``Reporter``; the CLI picks an implementation: ``ConsoleReporter``
(human lines on stderr), the workflow reporters of engine/progress.py, or the silent
``Reporter`` base class. Every line they write is redacted (engine/redact.py): an error
text from a gateway may echo a token; and its controls are escaped
(``engine.textio.terminal_text``): it may quote an agent.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, TextIO

from engine.redact import redact
from engine.textio import terminal_text


class Reporter:
    """The reporter interface; every method is a no-op here."""

    def event(self, kind: str, **fields: Any) -> None:
        """Generic event hook; the named methods below all funnel into it."""

    def delegation_dispatched(self, run_id: str, caller: str, target: str, attempts: int) -> None:
        """A task was accepted by the target's gateway."""
        self.event(
            "delegation_dispatched", run_id=run_id, caller=caller, target=target, attempts=attempts
        )

    def delegation_retry(self, agent: str, attempt: int, delay: float, reason: str) -> None:
        """A dispatch failed transiently and will be retried after ``delay`` seconds."""
        self.event(
            "delegation_retry", agent=agent, attempt=attempt, delay=round(delay, 2), reason=reason
        )

    def delegation_finished(self, run_id: str, target: str, outcome: str, record: str) -> None:
        """A delegation ended (any outcome)."""
        self.event(
            "delegation_finished", run_id=run_id, target=target, outcome=outcome, record=record
        )

    def pool_waiting(self, run_id: str, agent: str) -> None:
        """A delegation is queued for a pool token."""
        self.event("pool_waiting", run_id=run_id, agent=agent)

    def warning(self, message: str) -> None:
        """Something the user should know that is not an error."""
        self.event("warning", message=message)


class ConsoleReporter(Reporter):
    """Human-readable progress lines on a stream (stderr by default)."""

    def __init__(self, stream: TextIO | None = None, *, verbose: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.verbose = verbose
        self._lock = threading.Lock()

    def _line(self, text: str) -> None:
        text = terminal_text(redact(text))
        with self._lock:
            print(text, file=self.stream, flush=True)

    def event(self, kind: str, **fields: Any) -> None:
        if self.verbose:
            self._line(f"· {kind} " + " ".join(f"{k}={v}" for k, v in fields.items()))

    def delegation_dispatched(self, run_id: str, caller: str, target: str, attempts: int) -> None:
        extra = f" after {attempts} attempts" if attempts > 1 else ""
        self._line(f"→ {caller} -> {target}: dispatched {run_id}{extra}; waiting for the handoff")

    def delegation_retry(self, agent: str, attempt: int, delay: float, reason: str) -> None:
        self._line(f"↻ {agent}: {reason}; retry {attempt} in {delay:.1f} s")

    def pool_waiting(self, run_id: str, agent: str) -> None:
        self._line(f"… {agent}: waiting for a pool token ({run_id})")

    def warning(self, message: str) -> None:
        self._line(f"warning: {message}")
