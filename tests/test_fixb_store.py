"""`orchestrate store migrate` and the other commands over a PostgreSQL store whose
database refuses them: one paragraph naming the database and what to do, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli.orchestrate import orchestrate
from engine.store.postgres_db import Database, migrate
from tests.helpers import demo_config, write_config
from tests.pg import PgServer


def _role_without_create(pg_server: PgServer, url: str, role: str) -> str:
    """``url`` as ``role``: a login role that may not create tables in schema public."""
    db = Database.from_url(url)
    with db.connect() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    db.close()
    return url.replace(f"{pg_server.user}@", f"{role}@")


def _one_paragraph(output: str) -> str:
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    return lines[0]


def test_migrate_as_a_role_that_cannot_create_tables_is_one_paragraph(
    pg_server: PgServer,
) -> None:
    url = pg_server.create_database("fixb_nocreate")
    weak = _role_without_create(pg_server, url, "fixb_weak")
    got = CliRunner().invoke(orchestrate, ["store", "migrate", "--to", weak])
    assert got.exit_code == 2, got.output
    line = _one_paragraph(got.output)
    assert line.startswith(f"error: the PostgreSQL store `{weak}`: its role may not create")
    assert "permission denied for schema public" in line
    assert "CREATE ON SCHEMA public" in line and "nothing was changed" in line
    Database.from_url(weak).close()


def test_migrate_with_schema_version_behind_its_tables_is_one_paragraph(
    pg_server: PgServer,
) -> None:
    url = pg_server.create_database("fixb_behind_tables")
    db = Database.from_url(url)
    migrate(db)
    with db.connect() as conn:
        conn.execute("DELETE FROM schema_version WHERE version = 2")
    got = CliRunner().invoke(orchestrate, ["store", "migrate", "--to", url])
    assert got.exit_code == 2, got.output
    line = _one_paragraph(got.output)
    assert "says version 1 but the tables of a later migration are already there" in line
    assert 'relation "progress" already exists' in line
    assert f"`{url}`" in line and "***" not in line
    with db.connect() as conn:  # the transaction rolled back: nothing else changed
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] == 1
    db.close()


def test_a_driver_error_in_any_command_is_one_paragraph(
    pg_server: PgServer, tmp_path: Path
) -> None:
    url = pg_server.create_database("fixb_noread")
    migrate(Database.from_url(url))
    weak = _role_without_create(pg_server, url, "fixb_noread_role")
    with Database.from_url(url).connect() as conn:
        conn.execute("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC")
    cfg_path = write_config(tmp_path, dict(demo_config(tmp_path), store=weak))
    got = CliRunner().invoke(orchestrate, ["show", "orch-x", "--config", str(cfg_path)])
    assert got.exit_code == 2, got.output
    line = _one_paragraph(got.output)
    assert "refused the command: permission denied for table" in line
    assert "(InsufficientPrivilege)" in line and weak in line
    Database.from_url(url).close()
    Database.from_url(weak).close()


def test_pool_status_shows_the_store_url_as_the_other_commands_do(
    pg_url: str, tmp_path: Path
) -> None:
    raw = dict(demo_config(tmp_path), store=pg_url)
    raw["pool"] = {"enabled": True, "max_tokens": 2, "adaptive": False}
    cfg_path = write_config(tmp_path, raw)
    got = CliRunner().invoke(orchestrate, ["pool", "status", "--config", str(cfg_path)])
    assert got.exit_code == 0, got.output
    first = got.output.splitlines()[0]
    assert first == f"pool     {pg_url}#pool=default"


def test_migrate_to_with_an_inline_password_is_worded_for_the_command_line() -> None:
    got = CliRunner().invoke(
        orchestrate, ["store", "migrate", "--to", "postgresql://orch:s3cret-pw@db:5432/orch"]
    )
    assert got.exit_code == 2, got.output
    line = _one_paragraph(got.output)
    assert line.startswith("error: `--to`: the PostgreSQL URL holds a password; never give it "
                           "on the command line")  # fmt: skip
    assert "orchestrator.yaml" not in line and "s3cret-pw" not in line


@pytest.mark.parametrize(
    "query,needle",
    [
        ("pasword_env=X", "query parameter `pasword_env` is not one the engine or libpq "
         "knows; did you mean `password_env`?"),
        ("sslmdoe=require", "did you mean `sslmode`?"),
        ("zzzz=1", "`zzzz` is not one the engine or libpq knows. Use"),
        ("password=hunter2", "holds a password (its query parameter `password`)"),
    ],
)
def test_unknown_query_parameters_are_refused(query: str, needle: str) -> None:
    got = CliRunner().invoke(
        orchestrate, ["store", "migrate", "--to", f"postgresql://orch@db:5432/orch?{query}"]
    )
    assert got.exit_code == 2, got.output
    line = _one_paragraph(got.output)
    assert needle in line and "hunter2" not in line


def test_a_known_query_parameter_is_taken(pg_url: str) -> None:
    got = CliRunner().invoke(
        orchestrate, ["store", "migrate", "--to", f"{pg_url}?application_name=fixb&sslmode=disable"]
    )
    assert got.exit_code == 0, got.output


def test_migrate_from_again_reports_what_was_already_there(
    pg_server: PgServer, tmp_path: Path
) -> None:
    from engine.config import load_config
    from engine.delegate import DelegationRequest, open_delegator

    cfg = load_config(write_config(tmp_path, demo_config(tmp_path)))
    with open_delegator(cfg) as d:
        for task in ("one", "two"):
            d.delegate(DelegationRequest(caller="manager", target="webster", task=task))
    url = pg_server.create_database("fixb_again")
    args = ["store", "migrate", "--to", url, "--from", f"file://{cfg.handoffs_dir}"]
    first = CliRunner().invoke(orchestrate, args)
    assert first.exit_code == 0, first.output
    assert ": 2 records, 0 pending, 2 handoffs, 0 runs (0 events, 0 steps)\n" in first.output
    again = CliRunner().invoke(orchestrate, args)
    assert again.exit_code == 0, again.output
    assert again.output.splitlines()[-1].endswith(
        ": 0 records, 0 pending, 0 handoffs, 0 runs (0 events, 0 steps); already there: "
        "2 records, 0 pending, 2 handoffs, 0 runs"
    )
    Database.from_url(url).close()
