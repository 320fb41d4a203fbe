"""``orchestrate serve``: one process that owns runs, with an HTTP API, SSE and a dashboard.

Example::

    from engine.config import load_config
    from engine.serve import ServeSettings, serve

    cfg = load_config("orchestrator.yaml")
    serve(cfg, ServeSettings.from_config(cfg, port=8765))   # until SIGINT/SIGTERM

The parts: ``settings`` (tokens, roles, address), ``manager`` (executes runs and
delegations, continues them on decisions, picks them up after a restart), ``hub`` (the
event feed over the journals), ``app`` (the API and the dashboard), ``prom`` (/metrics),
``companion`` (an embedded gateway as a process that outlives a killed server).
Needs the ``serve`` extra (FastAPI, uvicorn, prometheus-client).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.errors import ConfigError
from engine.serve.settings import ApiToken, ServeSettings

__all__ = ["ApiToken", "ServeSettings", "build", "run_owner", "serve"]

#: The file a live server holds locked (``flock``) in ``<handoffs>/serve/``, with its
#: ``{"pid", "url"}``: the CLI reads it to tell a run the server owns (see ``run_owner``).
SERVER_LOCK = ".server.lock"

log = logging.getLogger("engine.serve")


def _need_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"`orchestrate serve` needs the `serve` extra ({exc.name} is missing). The "
            "engine is installed from its checkout (it is not on PyPI); there: "
            "`source scripts/bootstrap.sh serve` (or `.venv/bin/pip install -e '.[serve]'`)."
        ) from None


def build(
    cfg: Config, settings: ServeSettings, delegator: Any, *, on_started: Callable[[], None]
) -> tuple[Any, Any]:
    """The ASGI app and its run manager, over an open delegator."""
    from engine.runs import list_runs, runs_dir
    from engine.serve.app import create_app, pool_status
    from engine.serve.hub import EventHub
    from engine.serve.manager import Observer, RunManager
    from engine.serve.prom import ServeMetrics

    def runs_by_state() -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in list_runs(cfg, limit=1000):
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        return counts

    metrics = ServeMetrics(runs_by_state=runs_by_state, pool=lambda: pool_status(cfg))
    observer = Observer(
        step_finished=metrics.step_finished, delegation_finished=metrics.delegation_finished
    )
    manager = RunManager(
        cfg,
        delegator,
        max_parallel=settings.max_parallel,
        self_approval=settings.self_approval,
        observer=observer,
    )
    hub = EventHub(runs_dir(cfg), on_event=manager.on_event, store=delegator.store)
    observer.wake = hub.wake
    observer.publish = hub.publish
    hub.prime()

    def on_start() -> None:
        taken = manager.pick_up()
        if taken:
            log.warning("picked up %d run(s): %s", len(taken), ", ".join(taken))
        on_started()

    app = create_app(manager, settings, hub, metrics_text=metrics.render, on_start=on_start)
    return app, manager


def serve(
    cfg: Config, settings: ServeSettings, *, on_started: Callable[[str], None] | None = None
) -> None:
    """Run the server until SIGINT/SIGTERM; ``on_started`` gets its URL once it listens.

    In the main thread, a stop with runs or delegations in flight ends the process at once
    (``_leave_in_flight``) instead of waiting for their agents: those keep running on the
    gateway, and the next server picks the runs up from their journals."""
    _need_extra()
    settings.check_bind()
    import uvicorn

    from engine.delegate import open_delegator
    from engine.redact import install_log_filter

    for name in ("uvicorn", "uvicorn.error", "engine.serve"):
        install_log_filter(logging.getLogger(name))
    sock = _bind(settings.host, settings.port)
    url = f"http://{_host_for_url(settings.host)}:{sock.getsockname()[1]}"
    from engine.serve.companion import companion_gateway

    # An embedded gateway runs as a companion process that outlives a killed server.
    with ExitStack() as stack:
        stack.enter_context(sock)
        stack.enter_context(_presence(cfg, url))
        served = stack.enter_context(companion_gateway(cfg))
        delegator = stack.enter_context(open_delegator(served))
        if settings.discord_inbox:
            stack.enter_context(discord_inbox(served))
        app, manager = build(served, settings, delegator, on_started=lambda: None)
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        original = server.startup

        async def startup(sockets: Any = None) -> None:
            await original(sockets=sockets)
            if on_started is not None:
                on_started(url)

        server.startup = startup  # type: ignore[method-assign]
        exit_now = server.handle_exit

        def handle_exit(sig: int, frame: Any) -> None:
            exit_now(sig, frame)
            app.state.stop()  # waits and streams end now, with 503 / a last event

        server.handle_exit = handle_exit  # type: ignore[method-assign]
        _run_until_term(server, sock)
        if threading.current_thread() is threading.main_thread():
            _leave_in_flight(manager.in_flight())


@contextmanager
def _presence(cfg: Config, url: str) -> Iterator[None]:
    """Hold ``<handoffs>/serve/.server.lock`` (``SERVER_LOCK``) while the server runs, with
    its pid and URL in it; the lock goes with the process, even a killed one."""
    import json

    from engine.serve.manager import OWNED_DIR

    folder = cfg.handoffs_dir / OWNED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / SERVER_LOCK, "a+", encoding="utf-8")  # noqa: SIM115
    try:
        if not _take_presence(fh):  # another server on this directory: it keeps the mark
            yield
            return
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "url": url}))
        fh.flush()
        yield
    finally:
        fh.close()


def _take_presence(fh: Any) -> bool:
    """Lock ``SERVER_LOCK`` (open as ``fh``) for this server: False when another live
    server holds it. A ``run_owner`` look holds it shared for an instant: while the lock
    names no other live process (a mark left by a server that ended, or by this process
    before), try again (every 5 ms, for up to 5 s) instead of serving without the mark,
    which made this server's runs look unowned."""
    import json

    from engine.store.file import lock_past_looks
    from engine.store.liveness import process_alive

    def another_server(text: str) -> bool:
        try:
            pid = json.loads(text or "{}").get("pid")
        except (ValueError, AttributeError):
            pid = None
        return isinstance(pid, int) and pid != os.getpid() and process_alive(pid)

    return lock_past_looks(fh, another_server) is None


def run_owner(handoffs_dir: Path, run_id: str) -> dict[str, Any] | None:
    """``{"pid": int, "url": str}`` of the live `orchestrate serve` that owns ``run_id``
    (started or adopted it: ``<handoffs>/serve/<run>.json``), or None: no such record,
    or no server holds ``SERVER_LOCK`` now, or the run waits for secret inputs the
    server no longer holds (``inputs_missing``: ``workflow resume RUN -i`` continues it).
    The server continues such a run by itself."""
    import fcntl
    import json

    from engine.files import check_id
    from engine.serve.manager import OWNED_DIR

    folder = Path(handoffs_dir) / OWNED_DIR
    try:
        entry = json.loads((folder / f"{check_id(run_id, 'run id')}.json").read_text())
    except (OSError, ValueError):
        return None
    if isinstance(entry, dict) and entry.get("inputs_missing"):
        return None  # it waits for its secret inputs: the server cannot continue it
    try:
        fh = open(folder / SERVER_LOCK, encoding="utf-8")  # noqa: SIM115
    except OSError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # held: a server is live
            try:
                info = json.loads(fh.read() or "{}")
            except ValueError:
                info = {}
            return info if isinstance(info, dict) else {}
        return None


@contextmanager
def discord_inbox(cfg: Config) -> Iterator[None]:
    """The Discord inbox (``engine.inbox``) polling in a thread while the server runs.

    Its settings are checked, and the bot token read, before the server listens (a
    ``ConfigError`` names the problem). On exit it stops polling and waits for its tasks.
    """

    from engine.discord import DiscordClient
    from engine.inbox import DiscordInbox, InboxSettings

    InboxSettings.from_config(cfg)
    inbox = DiscordInbox(
        cfg, DiscordClient.from_config(cfg), log=lambda line: log.warning("inbox: %s", line)
    )
    stop = threading.Event()
    with inbox:

        def poll() -> None:
            try:
                inbox.run(stop)
            except Exception as exc:  # a refused token: say so, keep serving
                log.error("inbox: stopped: %s", exc)

        thread = threading.Thread(target=poll, name="discord-inbox", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def _leave_in_flight(busy: int) -> None:
    """Stop now when ``busy`` runs or delegations are in flight, as ``kill -9`` would but
    with one line on stderr: waiting for their agents could outlast systemd's stop timeout.

    Nothing is lost: the companion gateway (or a standalone one) keeps the agents running
    and keeps their handoffs; a restarted server adopts it and picks the runs up from their
    journals, sending no step twice (``RunManager.pick_up``). Returns when ``busy`` is 0.
    """
    if busy <= 0:
        return
    log.warning(
        "stopped with %d run(s) or delegation(s) in flight: their agents keep running on "
        "the gateway, and `orchestrate serve` picks them up when it starts again.",
        busy,
    )
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)


class _Terminated(Exception):
    """SIGTERM arrived: uvicorn shut down and raised it again (see ``_run_until_term``)."""


def _run_until_term(server: Any, sock: socket.socket) -> None:
    """Run uvicorn; return normally on SIGTERM or SIGINT (Ctrl-C).

    After its graceful shutdown uvicorn raises the signal it caught once more, with the
    handler that was there before it ran: the default one would end the process before
    the server's context managers (the companion gateway, the pool) close. Ours turns it
    into an exception caught here.
    """
    import signal

    if threading.current_thread() is not threading.main_thread():
        server.run(sockets=[sock])
        return

    def terminated(signum: int, frame: Any) -> None:
        raise _Terminated

    previous = {sig: signal.signal(sig, terminated) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    except _Terminated:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a busy port is one clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only then
    # (proto 0 would leave Nagle on: 40 ms stalls per keep-alive response).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror}. Pick another `--port` (or "
            "`serve.port`), or stop what uses it."
        ) from None
    sock.set_inheritable(True)
    return sock


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host
