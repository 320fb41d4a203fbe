"""Riding out a lost connection to the PostgreSQL store (a server restart, a reset).

A store operation that finds its connection gone is run again on a new connection, with
backoff (0.1 s doubling to 2 s), for up to ``reconnect_for()`` seconds (60 by default,
``ORCH_STORE_RECONNECT`` in the environment: 0 to 86400), so a delegation or a workflow
run waiting on the store goes on waiting through a ``pg_ctl restart``. It is run again
only when that cannot do a thing twice:

- the server ended the session before the statement could commit (SQLSTATE ``57P01``
  ``admin_shutdown``: ``pg_ctl stop -m fast``, ``pg_terminate_backend``; ``57P03``
  ``cannot_connect_now``: the server is starting or stopping), or the connection could
  not be made at all: nothing of the operation ran, or what ran was rolled back;
- else (a reset, a server crash: the statement may have committed) only an operation
  declared ``idempotent`` (reads, and writes that set a value rather than add one).

An operation still failing when the time is up, or an ambiguous loss in an operation
that is not idempotent, raises ``StoreConnectionLost`` (exit code 4): the message says
the connection was lost, names the run and ``orchestrate show RUN``, and never says to run
the command again (that would dispatch the work twice). Only a connection that worked
once in this process is waited for: a store unreachable from the start is refused at
once as before (``Database.connect``).

Source of the rule: PostgreSQL 18 docs, Appendix A (class 57, "Operator Intervention"; class
08, "Connection Exception") and "Server Shutdown" (a fast shutdown aborts the open
transactions of the sessions it ends).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from engine.errors import EXIT_TIMEOUT, ConfigError, OrchestratorError
from engine.redact import redact
from engine.retry import backoff_delay, exponential

__all__ = [
    "RECONNECT_ENV",
    "RECONNECT_FOR",
    "StoreConnectionLost",
    "connection_lost",
    "naming_run",
    "reconnect_for",
    "retry_lost",
]

_F = TypeVar("_F", bound=Callable[..., Any])

#: Seconds an operation waits for a lost store connection to come back (default).
RECONNECT_FOR = 60.0
#: The environment variable that sets it on a host.
RECONNECT_ENV = "ORCH_STORE_RECONNECT"
#: SQLSTATEs the server sends when it ends a session before the statement committed.
_NOT_RUN = frozenset({"57P01", "57P03"})
#: SQLSTATEs of a lost connection whose last statement may have committed.
_MAYBE_RUN = frozenset({"57P02", "08000", "08003", "08006", "08007"})
#: The waits between tries (the engine's one backoff policy, ``engine.retry``).
_BACKOFF = exponential(0.1, factor=2.0, cap=2.0, count=6)
#: A workflow run's id (``engine.runs``), as opposed to a delegation's.
_WORKFLOW_RUN = re.compile(r"^wf-\d{8}T\d{6}-[0-9a-f]{8}$")
_depth = threading.local()


class StoreConnectionLost(OrchestratorError):
    """The store's connection was lost and did not come back in time (exit code 4).

    ``run_id`` is the run the message names (None: the operation had none, e.g. the
    token pool's); ``naming(run_id)`` gives the same error naming the run."""

    exit_code = EXIT_TIMEOUT

    def __init__(
        self,
        message: str,
        *,
        run_id: str | None = None,
        display: str = "",
        waited: float = 0.0,
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.run_id = run_id
        self._display, self._waited, self._cause = display, waited, cause

    @classmethod
    def of(
        cls, display: str, run_id: str | None, waited: float, exc: BaseException
    ) -> StoreConnectionLost:
        """The error of ``exc`` (the driver's) after ``waited`` s, naming ``run_id``."""
        return cls(
            _lost_message(display, run_id, waited, exc),
            run_id=run_id,
            display=display,
            waited=waited,
            cause=exc,
        )

    def naming(self, run_id: str) -> StoreConnectionLost:
        """This error, its message naming ``run_id`` (a delegation's or a workflow run's
        id) when it named no run; itself when it did."""
        if self.run_id is not None or self._cause is None:
            return self
        return StoreConnectionLost.of(self._display, run_id, self._waited, self._cause)


@contextlib.contextmanager
def naming_run(run_id: str) -> Iterator[None]:
    """Within this block, a ``StoreConnectionLost`` that named no run names ``run_id``
    (a delegation lost in the token pool's operation: the user still learns which run to
    look at with ``orchestrate show``)."""
    try:
        yield
    except StoreConnectionLost as exc:
        named = exc.naming(run_id)
        if named is exc:
            raise
        raise named from exc.__cause__


def reconnect_for() -> float:
    """Seconds to wait for a lost connection: ``ORCH_STORE_RECONNECT`` when set (a number
    from 0 to 86400), else ``RECONNECT_FOR``; ``ConfigError`` (exit 2) naming the variable
    and its value otherwise."""
    raw = os.environ.get(RECONNECT_ENV)
    if raw is None or not raw.strip():
        return RECONNECT_FOR
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 86400.0:
        raise ConfigError(
            f"the environment variable `{RECONNECT_ENV}` is `{redact(raw)}`; it must be a "
            "number of seconds from 0 to 86400 (how long a command waits for a lost "
            f"connection to the PostgreSQL store to come back). Unset it for the default, "
            f"{RECONNECT_FOR:g} s."
        )
    return value


def _driver_exc(exc: BaseException) -> BaseException | None:
    """The driver's error behind ``exc`` (itself, or the cause of a ``ConfigError`` that
    ``Database.connect`` raised), or None."""
    for e in (exc, exc.__cause__):
        if e is not None and type(e).__module__.startswith("psycopg"):
            return e
    return None


def connection_lost(exc: BaseException) -> str | None:
    """``"not-run"`` when ``exc`` is a lost connection whose statement did not commit (or
    a failed reconnection), ``"maybe-run"`` when it may have, None for any other error."""
    e = _driver_exc(exc)
    if e is None:
        return None
    import psycopg

    from engine.store.postgres_db import StoreUnreachable

    if isinstance(exc, StoreUnreachable):  # Database.connect: no connection, nothing ran
        return "not-run" if isinstance(e, psycopg.OperationalError) else None
    if isinstance(exc, ConfigError):
        return None
    state = getattr(getattr(e, "diag", None), "sqlstate", None) or getattr(e, "sqlstate", None)
    if state in _NOT_RUN:
        return "not-run"
    if state in _MAYBE_RUN:
        return "maybe-run"
    if state is None and isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError)):
        return "maybe-run"  # client side: reset, EOF, "the connection is closed"
    return None


def _lost_message(display: str, run_id: str | None, waited: float, exc: BaseException) -> str:
    from engine.store.postgres_db import driver_message

    e = _driver_exc(exc) or exc
    what = (
        f"the connection to the PostgreSQL store `{display}` was lost "
        f"({driver_message(e).rstrip('.')}) and did not come back within {waited:.0f} s"
    )
    if run_id and _WORKFLOW_RUN.match(run_id):
        return (
            f"{what}; the workflow run `{run_id}` stopped here, its journal kept by the "
            f"store. Once the database is back, see where it stands with `workflow status "
            f"{run_id}` and continue it with `workflow resume {run_id}` (steps that finished "
            f"are not sent again; do not start it anew). Set `{RECONNECT_ENV}` to wait longer."
        )
    if run_id:
        return (
            f"{what}; the run `{run_id}` was not given up: its agent may still finish, and "
            f"its handoff is kept by the store. Once the database is back, see where it "
            f"stands with `orchestrate show {run_id}` (do not start it again: that would "
            f"dispatch the work twice). Set `{RECONNECT_ENV}` to wait longer."
        )
    return (
        f"{what}. Once the database is back, check the state of the work with "
        f"`orchestrate show RUN` or `workflow runs` before starting anything again. Set "
        f"`{RECONNECT_ENV}` to wait longer."
    )


def retry_lost(*, idempotent: bool = False) -> Callable[[_F], _F]:
    """Decorate a method of a store holding ``_db`` (a ``Database``): run it again on a
    lost connection, as the module docstring says. The run named in
    ``StoreConnectionLost`` is the object's ``_run_id`` (a journal's), else the method's
    first argument when it is a ``str``. Nested calls retry only at
    the outermost one (no multiplied waits), and a nested call that is not idempotent
    makes that outermost one not idempotent either (``find`` delivering a handoff)."""

    def wrap(fn: _F) -> _F:
        @functools.wraps(fn)
        def retried(self: Any, *args: Any, **kwargs: Any) -> Any:
            if getattr(_depth, "n", 0):
                if not idempotent:
                    _depth.strict = True
                return fn(self, *args, **kwargs)
            db = self._db
            start = time.monotonic()
            budget: float | None = None
            attempt = 0
            while True:
                _depth.n, _depth.strict = 1, not idempotent
                try:
                    return fn(self, *args, **kwargs)
                except Exception as exc:
                    kind = connection_lost(exc)
                    if kind is None or not db.connected_once():
                        raise
                    db.drop_thread_conn()
                    if budget is None:
                        budget = reconnect_for()
                    waited = time.monotonic() - start
                    run_id = getattr(self, "_run_id", None) or (
                        args[0] if args and isinstance(args[0], str) else None
                    )
                    strict = getattr(_depth, "strict", True)
                    if (kind == "maybe-run" and strict) or waited >= budget:
                        raise StoreConnectionLost.of(db.display, run_id, waited, exc) from exc
                    pause = backoff_delay(_BACKOFF, min(attempt + 1, len(_BACKOFF.delays)), 0.0)
                    time.sleep(max(0.0, min(pause, budget - waited)))
                    attempt += 1
                finally:
                    _depth.n = 0

        return retried  # type: ignore[return-value]

    return wrap
