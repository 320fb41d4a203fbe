"""``orchestrate store ...``: the PostgreSQL store's schema, and moving history into it."""

from __future__ import annotations

from pathlib import Path

import click

from engine.cli.common import EngineGroup, NonEmpty, config_option, load_optional, say


@click.group("store", cls=EngineGroup.group_class)
def store_group() -> None:
    """The store shared by hosts (`store: postgresql://...`): schema and migration."""


def _target(to: str | None, config: str | None) -> str:
    from engine.errors import UsageError
    from engine.store import is_postgres_url

    given = to is not None
    if to is None:
        cfg = load_optional(config)
        to = cfg.store if cfg is not None else None
    if given and is_postgres_url(to):
        from engine.store.postgres_db import url_problem

        assert to is not None
        problem = url_problem(to, "`--to`")
        if problem:
            raise UsageError(problem)
    if not is_postgres_url(to):
        from engine.store.postgres_db import URL_EXAMPLE

        raise UsageError(
            f"`orchestrate store migrate` needs a PostgreSQL store: give `--to "
            f"{URL_EXAMPLE}` or set `store: {URL_EXAMPLE}` in orchestrator.yaml (the "
            "file store has no schema to migrate)."
        )
    assert to is not None
    return to


def _source(source: str) -> Path:
    """The handoffs directory of ``--from file://DIR`` (``UsageError`` unless it is one:
    ``engine.store.postgres_transfer.file_store_problem``)."""
    from engine.errors import UsageError
    from engine.store import store_path
    from engine.store.postgres_transfer import file_store_problem

    if not source.startswith("file:"):
        raise UsageError(
            f"`--from {source}`: give the handoffs directory as `file://DIR` "
            "(e.g. `--from file://./handoffs`)."
        )
    root = store_path(source, Path.cwd())
    problem = file_store_problem(root)
    if problem:
        raise UsageError(problem)
    return root


@store_group.command("migrate")
@click.option(
    "--to",
    "to",
    metavar="URL",
    type=NonEmpty("give the URL of a PostgreSQL store"),
    help="The PostgreSQL store (default: the config's `store:`); password from "
    "$PGPASSWORD or the variable named by `?password_env=NAME`.",
)
@click.option(
    "--from",
    "source",
    metavar="file://DIR",
    type=NonEmpty("give the handoffs directory to import, as `file://DIR`"),
    help="Also import the records, sub-delegations and runs of this handoffs directory.",
)
@config_option
def migrate_cmd(to: str | None, source: str | None, config: str | None) -> int:
    """Bring the database's schema to this engine's version (safe to repeat on every
    host), then, with --from, import a file store's history into it."""
    from engine.store.postgres import PostgresRunStore
    from engine.store.postgres_db import Database, migrate, schema_version
    from engine.store.postgres_transfer import import_files

    url = _target(to, config)
    root = _source(source) if source is not None else None  # before the schema changes
    db = Database.from_url(url)
    applied = migrate(db)
    with db.connect() as conn:
        version = schema_version(conn)
    if applied:
        say(f"{db.display}: applied migrations {', '.join(map(str, applied))}; "
            f"schema version {version}")  # fmt: skip
    else:
        say(f"{db.display}: schema version {version}, nothing to apply")
    if root is not None:
        report = import_files(root, PostgresRunStore(db))
        say(f"imported from {root}: {report.as_text()}")
    db.close()
    return 0
