"""The ``metrics`` program: what the delegations and workflows did, as text or JSON."""

from __future__ import annotations

from typing import Any

import click

from engine.cli.common import (
    EngineGroup,
    config_option,
    dump,
    load,
    load_optional,
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
    """The metrics document for the filters; ``UsageError`` (exit 2) for a
    ``--handoffs-dir`` that is not a directory, ``UnknownAgentError`` (exit 2) for an
    ``--agent`` that neither the config nor any record names (as `agents status` does)."""
    from pathlib import Path

    from engine.errors import UsageError
    from engine.metrics import compute_metrics, parse_since

    when = parse_since(since) if since else None
    filters = {"agent": agent, "workflow": workflow_name, "caller": caller}
    cfg = None
    if handoffs_dir:
        directory = Path(handoffs_dir)
        if not directory.is_dir():
            raise UsageError(
                f"`--handoffs-dir {handoffs_dir}` is not an existing directory: give the "
                "`handoffs_dir` of the config (or leave the option out to read the config's)."
            )
    else:
        cfg = load(config)
        directory = cfg.handoffs_dir

    def compute(**given: Any) -> Any:
        if cfg is not None and cfg.store and cfg.store.startswith("postgres"):
            from engine.store.postgres_transfer import metrics_of  # the database's

            return metrics_of(cfg, **given)
        return compute_metrics(directory, **given)

    doc = compute(since=when, **filters)
    if agent and not doc["agents"] and not doc["totals"]["workflow_runs"]:
        everything = compute(since=None, agent=None, workflow=None, caller=None)
        known = set(everything["agents"]) | {e["caller"] for e in everything["edges"]}
        if cfg is None:
            cfg = _config_if_any(config)
        known |= set(cfg.agents) if cfg is not None else set()
        if agent not in known:
            from engine.errors import UnknownAgentError, did_you_mean

            raise UnknownAgentError(
                f"unknown agent `{agent}` (`--agent`): neither the config nor any record in "
                f"`{doc['handoffs_dir']}` names it{did_you_mean(agent, known) or '.'} "
                f"Known agents: {', '.join(sorted(known)) or 'none'}.",
                agent=agent,
            )
    return doc


def _config_if_any(config: str | None) -> Any:
    """The config when one is found and valid, else None (``--handoffs-dir`` needs none)."""
    from engine.errors import OrchestratorError

    try:
        return load_optional(config)
    except OrchestratorError:
        return None


@click.group(
    cls=EngineGroup,
    epilog="""\b
Examples:
  metrics text
  metrics json --since 24h --agent webster
  metrics text --workflow material-trade-study --since 2026-11-01
Exit codes: 0 ok (also when no record matches the filters)
            2 bad input: a bad --since, a --handoffs-dir that does not exist,
              an --agent no record or config names, a bad config""",
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
