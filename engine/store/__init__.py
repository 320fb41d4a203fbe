"""Where delegations and workflow runs are kept: the ``RunStore`` and ``HandoffSignals`` seams.

``open_store(cfg)`` resolves the config's ``store:`` key (``file://<dir>``; default: the
``handoffs_dir``; or ``postgresql://user@host:port/db``, see ``engine.store.postgres``)
in this one place, and ``open_signals(store)`` gives the matching ``HandoffSignals``.
Everything else takes a ``RunStore`` (``engine.store.protocol``) and never builds a path
into the store itself. A new backend adds a scheme to ``SCHEMES``
and passes ``tests/contracts/test_store_contract.py``.

Example::

    store = open_store(cfg)
    store.pending(run_id, envelope, sub=False)
    print(store.find(run_id))
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from engine.redact import redact
from engine.store.file import FileHandoffSignals, FileRunStore
from engine.store.liveness import LIVENESS_TTL, RENEW_EVERY, process_alive, waiter_alive
from engine.store.protocol import Delivery, HandoffSignals, Journal, RunStore, Waiter

if TYPE_CHECKING:
    from engine.config import Config

__all__ = [
    "LIVENESS_TTL",
    "RENEW_EVERY",
    "SCHEMES",
    "Delivery",
    "FileHandoffSignals",
    "FileRunStore",
    "HandoffSignals",
    "Journal",
    "RunStore",
    "Waiter",
    "is_postgres_url",
    "open_signals",
    "open_url",
    "open_store",
    "process_alive",
    "store_url_problem",
    "waiter_alive",
]

#: The ``store:`` URL schemes this build knows.
SCHEMES = ("file", "postgresql", "postgres")


def _scheme(url: str) -> str:
    """The scheme of ``url``, lowercased ("" without one), also when the rest of it does
    not parse (``urlsplit`` raises ``ValueError`` on a bracket left open, ``[::1``)."""
    try:
        return urlsplit(url).scheme
    except ValueError:
        head = url.split(":", 1)[0] if ":" in url else ""
        return head.lower() if head[:1].isalpha() and head.isascii() else ""


def is_postgres_url(url: str | None) -> bool:
    """True when ``url`` names a PostgreSQL store (``postgresql://`` or ``postgres://``),
    well formed or not (``store_url_problem`` says what is wrong with it)."""
    return isinstance(url, str) and _scheme(url) in ("postgresql", "postgres")


def store_url_problem(url: str) -> str | None:
    """Why ``url`` is not a usable ``store:`` value, or None (for the config's report).

    The message never repeats a password written in the URL."""
    scheme = _scheme(url) if "://" in url else ""
    if scheme not in SCHEMES:
        known = ", ".join(f"`{s}://`" for s in SCHEMES[:2])
        shown = scheme or redact(url)
        return (
            f"`store`: `{shown}` is not a known store scheme; use one of "
            f"{known} (e.g. `store: file://./handoffs`)."
        )
    if is_postgres_url(url):
        from engine.store.postgres_db import url_problem

        return url_problem(url)
    if not _file_part(url).strip():
        return f"`store`: `{url}` has no directory; write `file://./handoffs`."
    return None


def _file_part(url: str) -> str:
    """What follows ``file://`` (``localhost/`` dropped): an absolute or relative path."""
    rest = url.split(":", 1)[1]
    rest = rest[2:] if rest.startswith("//") else rest
    if rest.startswith("localhost/"):
        rest = rest[len("localhost") :]
    return unquote(rest)


def store_path(url: str, base: Path) -> Path:
    """The directory of a ``file://`` store URL: ``file:///abs/dir``, ``file://./dir``
    or ``file://dir`` (relative ones against ``base``, the config's directory)."""
    p = Path(_file_part(url)).expanduser()
    return (p if p.is_absolute() else base / p).resolve()


def open_store(cfg: Config) -> RunStore:
    """The run store the config names (``store:``; default ``file://<handoffs_dir>``).

    A ``postgresql://`` store is opened lazily: the first operation connects and checks
    the schema version (``ConfigError`` naming ``orchestrate store migrate`` if behind)."""
    if is_postgres_url(cfg.store):
        assert cfg.store is not None
        return open_url(cfg.store, local=cfg.handoffs_dir)
    return FileRunStore(cfg.handoffs_dir)


def open_url(url: str, *, local: Path | None = None) -> RunStore:
    """The run store of a ``postgresql://`` URL (``ConfigError`` when it is not usable);
    ``local`` is this host's private directory, where local agents write handoff files."""
    from engine.store.postgres import PostgresRunStore
    from engine.store.postgres_db import Database

    return PostgresRunStore(Database.from_url(url), local=local)


def open_signals(store: RunStore, *, backend: str = "auto") -> HandoffSignals:
    """The handoff signals matching ``store`` (inotify on a file store, ``LISTEN`` on a
    PostgreSQL store)."""
    if isinstance(store, FileRunStore):
        return FileHandoffSignals(store, backend=backend)
    from engine.store.postgres import PostgresHandoffSignals, PostgresRunStore

    if isinstance(store, PostgresRunStore):
        return PostgresHandoffSignals(store)
    raise TypeError(f"no handoff signals for {store!r}")
