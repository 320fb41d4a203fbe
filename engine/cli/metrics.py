"""The ``metrics`` program: what the delegations and workflows did, as text or JSON."""

from __future__ import annotations

from typing import Any

import click

from engine.cli.common import (
    EngineGroup,
    config_option,
    dump,
    load,
    options,
)

_metrics_options = options(
    click.option("--since", help="Only records since: 24h, 7d, 30m or an ISO date."),
    click.option("--agent", help="Only this agent's delegations (and runs it took part in)."),
    click.option("--workflow", "workflow_name", help="Only this workflow's runs and steps."),
    click.option("--caller", help="Only delegations made by this caller."),
    click.option(
        "--handoffs-dir",
        type=click.Path(file_okay=False),
        help="Read this directory instead of the config's `handoffs_dir`.",
    ),
    config_option,
)


def _metrics(
    since: str | None,
    agent: str | None,
    workflow_name: str | None,
    caller: str | None,
    handoffs_dir: str | None,
    config: str | None,
) -> Any:
    from pathlib import Path

    from engine.metrics import compute_metrics, parse_since

    when = parse_since(since) if since else None
    if handoffs_dir:
        directory = Path(handoffs_dir)
    else:
        cfg = load(config)
        if cfg.store and cfg.store.startswith("postgres"):  # the database, not this host's
            from engine.store.postgres_transfer import metrics_of

            return metrics_of(cfg, since=when, agent=agent, workflow=workflow_name, caller=caller)
        directory = cfg.handoffs_dir
    return compute_metrics(
        directory, since=when, agent=agent, workflow=workflow_name, caller=caller
    )


@click.group(
    cls=EngineGroup,
    epilog="""\b
Examples:
  metrics text
  metrics json --since 24h --agent webster
  metrics text --workflow material-trade-study --since 2026-11-01""",
)
@click.version_option(package_name="agent-orchestrator", prog_name="metrics")
def metrics() -> None:
    """What the delegations and workflows did: per agent, per edge, per workflow."""


@metrics.command("text")
@_metrics_options
def metrics_text_cmd(**filters: Any) -> int:
    """Aligned tables for people."""
    import shutil

    from engine.metrics import render_text

    doc = _metrics(**filters)
    click.echo(render_text(doc, width=max(100, shutil.get_terminal_size((140, 40)).columns)))
    return 0


@metrics.command("json")
@_metrics_options
def metrics_json_cmd(**filters: Any) -> int:
    """One JSON document (schema: schemas/metrics.schema.json) for scripts."""
    dump(_metrics(**filters))
    return 0


def metrics_main() -> None:
    """Entry point of the `metrics` console script."""
    metrics.main(prog_name="metrics")
