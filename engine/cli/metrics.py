"""The ``metrics`` program: what the delegations and workflows did, as text or JSON."""

from __future__ import annotations

from typing import Any

import click

from engine.cli.common import (
    EngineGroup,
    NonEmpty,
    config_option,
    dump,
    load,
    load_optional,
    options,
)

_metrics_options = options(
    click.option(
        "--since",
        type=NonEmpty("give a time, e.g. `24h`, `7d`, `30m` or an ISO date"),
        help="Only records since: 24h, 7d, 30m or an ISO date.",
    ),
    click.option(
        "--agent",
        type=NonEmpty("name an agent"),
        help="Only this agent's delegations (and runs it took part in).",
    ),
    click.option(
        "--workflow",
        "workflow_name",
        type=NonEmpty("name a workflow"),
        help="Only this workflow's runs and steps.",
    ),
    click.option(
        "--caller", type=NonEmpty("name a caller"), help="Only delegations made by this caller."
    ),
    click.option(
        "--handoffs-dir",
        type=NonEmpty("give the `handoffs_dir` of the config"),
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
    ``--agent`` or ``--caller`` that neither the config nor any record names (as `agents
    status` does)."""
    from pathlib import Path

    from engine.errors import UsageError
    from engine.metrics import compute_metrics, parse_since

    if since is not None and not since.strip():
        raise UsageError(
            "`--since` is empty: give a duration such as `24h`, `7d`, `30m` or an ISO date "
            "such as `2026-11-21`, or leave the option out for every record."
        )
    when = parse_since(since) if since is not None else None
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
    if workflow_name and not doc["workflows"]:
        _check_workflow(workflow_name, compute, cfg or _config_if_any(config), doc)
    for option, name in (("--agent", agent), ("--caller", caller)):
        if name and not doc["agents"] and not doc["totals"]["workflow_runs"]:
            if cfg is None:
                cfg = _config_if_any(config)
            _check_agent(option, name, compute, cfg, doc)
    return doc


def _check_agent(option: str, name: str, compute: Any, cfg: Any, doc: Any) -> None:
    """``UnknownAgentError`` (exit 2) for an ``--agent`` or ``--caller`` that neither the
    config nor any record names (as `agents status` treats an unknown agent); a known one
    with nothing in the filters' window is no error (exit 0, empty tables)."""
    everything = compute(since=None, agent=None, workflow=None, caller=None)
    known = set(everything["agents"]) | {e["caller"] for e in everything["edges"]}
    known |= set(cfg.agents) if cfg is not None else set()
    if name in known:
        return
    from engine.errors import UnknownAgentError, did_you_mean

    raise UnknownAgentError(
        f"unknown agent `{name}` (`{option}`): neither the config nor any record in "
        f"`{doc['handoffs_dir']}` names it{did_you_mean(name, known) or '.'} "
        f"Known agents: {', '.join(sorted(known)) or 'none'}.",
        agent=name,
    )


def _check_workflow(name: str, compute: Any, cfg: Any, doc: Any) -> None:
    """``UnknownWorkflowError`` (exit 2) for a ``--workflow`` that neither any record nor
    the config's workflow directories name, as ``--agent`` is checked; a known workflow
    with no run in the filters' window is no error (exit 0, empty tables)."""
    from engine.errors import OrchestratorError, UsageError, did_you_mean

    everything = compute(since=None, agent=None, workflow=None, caller=None)
    known = set(everything["workflows"])
    if cfg is not None:
        from engine.workflow import list_workflows

        try:
            known |= {row[0] for row in list_workflows(cfg)}
        except OrchestratorError:
            pass
    if name in known:
        return
    raise UsageError(
        f"unknown workflow `{name}` (`--workflow`): neither the config's workflows nor any "
        f"record in `{doc['handoffs_dir']}` names it{did_you_mean(name, known) or '.'} "
        f"Known workflows: {', '.join(sorted(known)) or 'none'}."
    )


def _config_if_any(config: str | None) -> Any:
    """The config when one is found and valid, else None (``--handoffs-dir`` needs none)."""
    from engine.errors import OrchestratorError

    try:
        return load_optional(config)
    except OrchestratorError:
        return None


class _MetricsGroup(EngineGroup):
    """`metrics json` answers in JSON without a `--json` option: when it fails (a bad
    `--since`, `--handoffs-dir` or config) stdout gets ``{"error": …, "exit_code": N}``, as
    every `--json` command's failure does (``engine.cli.common.fail``)."""

    def takes_json(self, args: list[str]) -> bool:
        return super().takes_json(args) or self.command_path_of(args, "").split()[:1] == [
            "json"
        ]


@click.group(
    cls=_MetricsGroup,
    epilog="""\b
Examples:
  metrics text
  metrics json --since 24h --agent webster
  metrics text --workflow material-trade-study --since 2026-11-01
Exit codes: 0 ok (also when no record matches the filters)
            2 bad input: a bad or empty --since, a --handoffs-dir that is not a
              directory, an --agent, --caller or --workflow no record or config names,
              a bad config""",
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
