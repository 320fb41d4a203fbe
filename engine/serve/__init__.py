"""``orchestrate serve``: one process that owns runs, with an HTTP API, SSE and a dashboard.

Example::

    from engine.config import load_config
    from engine.serve import ServeSettings, serve

    cfg = load_config("orchestrator.yaml")
    serve(cfg, ServeSettings.from_config(cfg, port=8765))   # until SIGINT/SIGTERM

The parts: ``settings`` (tokens, roles, address), ``manager`` (executes runs and
delegations, continues them on decisions, picks them up after a restart), ``hub`` (the
event feed over the journals), ``app`` (the API and the dashboard), ``prom`` (/metrics).
Needs the ``serve`` extra (FastAPI, uvicorn, prometheus-client).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from engine.config import Config
from engine.errors import ConfigError
from engine.serve.settings import ApiToken, ServeSettings

__all__ = ["ApiToken", "ServeSettings", "build", "serve"]

log = logging.getLogger("engine.serve")


def _need_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"`orchestrate serve` needs the `serve` extra ({exc.name} is missing): "
            "pip install 'agent-orchestrator[serve]'."
        ) from None


def build(
    cfg: Config, settings: ServeSettings, delegator: Any, *, on_started: Callable[[], None]
) -> tuple[Any, Any]:
    """The ASGI app and its run manager, over an open delegator."""
    from engine.runner import list_runs, runs_dir
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
    hub = EventHub(runs_dir(cfg), on_event=manager.on_event)
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
    """Run the server until SIGINT/SIGTERM; ``on_started`` gets its URL once it listens."""
    _need_extra()
    settings.check_bind()
    import uvicorn

    from engine.delegate import open_delegator
    from engine.redact import install_log_filter

    install_log_filter(logging.getLogger("uvicorn"))
    install_log_filter(logging.getLogger("uvicorn.error"))
    install_log_filter(log)
    with open_delegator(cfg) as delegator:
        holder: dict[str, Any] = {}

        def started() -> None:
            server = holder.get("server")
            if on_started is not None and server is not None:
                sockets = [s for srv in server.servers for s in srv.sockets]
                port = sockets[0].getsockname()[1] if sockets else settings.port
                on_started(f"http://{settings.host}:{port}")

        app, _ = build(cfg, settings, delegator, on_started=lambda: None)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        holder["server"] = server
        _announce_when_up(server, started)
        server.run()


def _announce_when_up(server: Any, started: Callable[[], None]) -> None:
    """Call ``started`` once uvicorn has bound its sockets."""
    original = server.startup

    async def startup(sockets: Any = None) -> None:
        await original(sockets=sockets)
        started()

    server.startup = startup
