"""The error tree of the engine.

Every error a user can cause or meet is an ``OrchestratorError``; the CLI prints its
message (never a traceback) and exits with its ``exit_code`` (see DESIGN.md)::

    OrchestratorError                 exit 2 unless noted
    ├── UsageError                    bad command-line usage or argument value
    ├── ConfigError                   orchestrator.yaml unreadable or invalid
    ├── UnknownAgentError             an agent or caller name is not in the registry
    ├── InvalidIdError                an id that would become a path is not safe
    ├── WorkflowError                 a workflow template or its inputs are invalid
    ├── HandoffError                  a handoff file is malformed, invalid or spoofed
    ├── HookError                     the hooks API refused or could not be reached
    │   ├── HookUnreachableError      retries exhausted on transient failures (exit 4)
    │   └── AgentRunError             the gateway says the agent's run ended in error (exit 1)
    ├── RunStateError                 a run record is missing or in the wrong state
    │   └── RunEndedError             resuming a run that has already completed
    ├── AclDeniedError                the ACL forbids caller -> target (exit 5)
    ├── PoolRefusedError              the token pool refused the request (exit 5)
    ├── DelegationTimeoutError        no handoff before the deadline (exit 4)
    │   └── DelegationLostError       the agent was silent past its heartbeat_timeout (exit 4)
    └── UnusableHandoffError          the run ended without a usable handoff, repairs spent (exit 6)

A failed delegation (the agent said ``failed`` or ``blocked``) is a result value, not an
exception: see ``engine.delegate.DelegationResult``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_WAITING = 3
EXIT_TIMEOUT = 4
EXIT_REFUSED = 5
EXIT_UNUSABLE = 6


class OrchestratorError(Exception):
    """Base of every error the engine raises on purpose."""

    exit_code = EXIT_USAGE

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        agent: str | None = None,
        step: str | None = None,
        status_code: int | None = None,
        problems: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = str(path) if path is not None else None
        self.agent = agent
        self.step = step
        self.status_code = status_code
        self.problems = list(problems or [])

    def __str__(self) -> str:
        if not self.problems:
            return self.message
        return self.message + "\n" + "\n".join(f"  - {p}" for p in self.problems)


class UsageError(OrchestratorError):
    """Raised for bad command-line usage or an argument value that cannot work."""


class ConfigError(OrchestratorError):
    """Raised when orchestrator.yaml cannot be found, parsed or validated."""


class UnknownAgentError(OrchestratorError):
    """Raised when an agent or caller name is not in the registry."""


class InvalidIdError(OrchestratorError):
    """Raised when an id or name that becomes part of a path fails its strict pattern."""


class WorkflowError(OrchestratorError):
    """Raised when a workflow template, its plan or its inputs are invalid."""


class HandoffError(OrchestratorError):
    """Raised when a handoff is malformed, fails its schema, or does not match its run."""


class HookError(OrchestratorError):
    """Raised when the hooks API refuses a dispatch (400/401/403/404) or answers oddly."""


class HookUnreachableError(HookError):
    """Raised when transient failures (connection, 429, 5xx) outlast the retries."""

    exit_code = EXIT_TIMEOUT


class AgentRunError(HookError):
    """Raised when the gateway reports that the agent's run ended in error (no handoff)."""

    exit_code = EXIT_FAILED


class RunStateError(OrchestratorError):
    """Raised when a run record is missing, or in a state that does not allow the action."""


class RunEndedError(RunStateError):
    """Raised when a run that has already completed is resumed: nothing is written.
    ``result`` is its ``engine.runner.RunResult``, for a caller that only wants the end
    (the Discord inbox reporting a run another process finished)."""

    def __init__(self, message: str, *, result: Any) -> None:
        super().__init__(message)
        self.result = result


class AclDeniedError(OrchestratorError):
    """Raised when the ACL does not allow the caller to delegate to the target."""

    exit_code = EXIT_REFUSED


class PoolRefusedError(OrchestratorError):
    """Raised when the token pool refuses a request (queue full, emergency mode)."""

    exit_code = EXIT_REFUSED


class AcquireCancelledError(OrchestratorError):
    """Raised when the caller's cancel event is set while it waits for a pool token
    (Ctrl-C, `workflow cancel`); its place in the queue is given up."""

    exit_code = EXIT_FAILED


class DelegationTimeoutError(OrchestratorError):
    """Raised when waiting for something (a handoff, a token) outlasts its deadline."""

    exit_code = EXIT_TIMEOUT


class DelegationLostError(DelegationTimeoutError):
    """Raised when the agent reported nothing for longer than its ``heartbeat_timeout``."""


class UnusableHandoffError(OrchestratorError):
    """Raised when the agent's run ended without a usable handoff and repairs are spent."""

    exit_code = EXIT_UNUSABLE


#: How many characters of a quoted value an error message shows (``clip_quoted``): its
#: first ``QUOTED_HEAD`` and its last ``QUOTED_TAIL``, with ``…`` between.
QUOTED_HEAD = 80
QUOTED_TAIL = 100
QUOTED_LIMIT = QUOTED_HEAD + QUOTED_TAIL


def clip_quoted(text: str, head: int = QUOTED_HEAD, tail: int = QUOTED_TAIL) -> str:
    """``text`` with each backticked value longer than ``head + tail`` characters cut in
    the middle: its first ``head`` characters, ``…``, its last ``tail`` (a 5,000-character
    agent name or run id echoed whole buries the message, and a long path keeps its file
    name: `/tmp/ddd…ddd/nonexist.yaml`). A value shown is at most ``head + tail + 1``
    characters. The messages quote values in backticks (docs: CONVENTIONS, Errors)."""
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an odd number of backticks: which text is quoted is unclear
        return text
    for i in range(1, len(parts), 2):  # odd parts lie between a pair of backticks
        value = parts[i]
        if len(value) > head + tail:
            parts[i] = value[:head] + "…" + (value[-tail:] if tail else "")
    return "`".join(parts)


def did_you_mean(name: str, choices: list[str] | tuple[str, ...] | set[str]) -> str:
    """Return ``"; did you mean `x`?"`` for the closest choice, or ``""``. A choice that
    differs only in case (``N`` for ``n``, which difflib finds nothing alike) counts."""
    import difflib

    close = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.6)
    if not close:
        close = [c for c in sorted(choices) if c.casefold() == name.casefold()][:1]
    return f"; did you mean `{close[0]}`?" if close else ""
