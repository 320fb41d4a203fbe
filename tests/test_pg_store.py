"""The PostgreSQL store end to end: schema and its check, the URL's password, a delegation
and a workflow run over it, local agents' files, and moving history in from a file store.

A real PostgreSQL server (``tests/pg.py``), the real embedded gateway and demo agents.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.cli.orchestrate import orchestrate
from engine.config import load_config
from engine.delegate import DelegationRequest, Outcome, open_delegator
from engine.errors import ConfigError
from engine.files import new_run_id
from engine.handoff import key_hash, make_handoff, new_key, write_handoff
from engine.metrics import compute_metrics
from engine.store import open_signals, open_store
from engine.store.postgres import PostgresRunStore
from engine.store.postgres_db import Database, latest_version, migrate, schema_version
from engine.store.postgres_transfer import import_files, metrics_of
from tests.helpers import demo_config, write_config
from tests.pg import PgServer


def _pg_cfg(tmp_path: Path, url: str, **extra: Any) -> Any:
    raw = demo_config(tmp_path, **extra)
    raw["store"] = url
    return load_config(write_config(tmp_path, raw))


def test_migrate_applies_the_schema_once_and_then_nothing(pg_server: PgServer) -> None:
    url = pg_server.create_database("migrate_once")
    runner = CliRunner()
    first = runner.invoke(orchestrate, ["store", "migrate", "--to", url])
    assert first.exit_code == 0, first.output
    assert f"applied migrations 1, 2; schema version {latest_version()}" in first.output
    again = runner.invoke(orchestrate, ["store", "migrate", "--to", url])
    assert again.exit_code == 0
    assert f"schema version {latest_version()}, nothing to apply" in again.output
    db = Database.from_url(url)
    with db.connect() as conn:
        assert schema_version(conn) == latest_version()
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables "
                                             "WHERE schemaname = 'public'")}  # fmt: skip
    assert {"schema_version", "delegations", "handoffs", "runs", "run_events",
            "step_results", "pool_state"} <= tables  # fmt: skip
    db.close()


def test_a_database_behind_the_engine_is_one_clear_error(
    pg_server: PgServer, tmp_path: Path
) -> None:
    url = pg_server.create_database("behind")
    cfg_path = write_config(tmp_path, dict(demo_config(tmp_path), store=url))
    got = CliRunner().invoke(orchestrate, ["show", "orch-x", "--config", str(cfg_path)])
    assert got.exit_code == 2
    assert got.output.strip().splitlines() == [
        f"error: the PostgreSQL store `{url}` is at schema "
        f"version 0 and this engine needs version {latest_version()}: nothing was read or "
        "written. Apply the migrations first: `orchestrate store migrate` (it changes only "
        "what is missing, and is safe to run on every host)."
    ]
    Database.from_url(url).close()


def test_a_database_one_version_behind_is_brought_up_by_migrate(pg_server: PgServer) -> None:
    from engine.store.postgres_db import migrations

    url = pg_server.create_database("one_behind")
    version, name, sql = migrations()[0]
    db = Database.from_url(url)
    with db.connect() as conn:  # as an engine of schema version 1 left it
        conn.execute(sql)
        conn.execute("INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                     (version, name))  # fmt: skip
    with pytest.raises(ConfigError, match="is at schema version 1 and this engine needs "
                       f"version {latest_version()}"):  # fmt: skip
        PostgresRunStore(db).list_runs()
    got = CliRunner().invoke(orchestrate, ["store", "migrate", "--to", url])
    assert got.exit_code == 0, got.output
    assert f"applied migrations {', '.join(map(str, range(2, latest_version() + 1)))}" in (
        got.output
    )
    assert PostgresRunStore(db).list_runs() == []
    db.close()


def test_the_password_comes_from_the_named_variable_and_never_shows(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = pg_url + "?password_env=ORCH_TEST_DB_PASSWORD"
    monkeypatch.delenv("ORCH_TEST_DB_PASSWORD", raising=False)
    store = open_store_url(url)
    with pytest.raises(ConfigError, match="`ORCH_TEST_DB_PASSWORD`.*is not set"):
        store.list_runs()
    secret = "pw-Zq81-distinctive"
    monkeypatch.setenv("ORCH_TEST_DB_PASSWORD", secret)
    assert store.list_runs() == []  # trust authentication: any password is accepted
    assert secret not in store.location and secret not in repr(store)
    Database.from_url(url).close()


def open_store_url(url: str) -> PostgresRunStore:
    return PostgresRunStore(Database.from_url(url))


def test_a_delegation_runs_over_postgres(pg_url: str, tmp_path: Path) -> None:
    cfg = _pg_cfg(tmp_path, pg_url)
    store = open_store(cfg)
    assert isinstance(store, PostgresRunStore)
    with open_delegator(cfg) as d:
        req = DelegationRequest(caller="manager", target="webster", task="Find CTE of Zerodur")
        result = d.delegate(req)
    assert result.outcome is Outcome.COMPLETE
    record = store.read(result.run_id, sub=False)
    assert record is not None and "demo output from webster" in record["result"]
    assert record["envelope"]["key_verified"] is True
    assert store.read_pending(result.run_id, sub=False) is None
    # the demo agent wrote a file into this host's inbox; it was moved into the database
    inbox = cfg.handoffs_dir / "inbox"
    assert not (inbox / f"{result.run_id}.json").exists()
    assert list((inbox / ".imported").glob(f"{result.run_id}.*.json"))
    _, found = store.find(result.run_id)
    assert found == record


def test_a_local_agents_file_wakes_the_waiter_and_is_imported(
    pg_url: str, tmp_path: Path
) -> None:
    store = PostgresRunStore(Database.from_url(pg_url), local=tmp_path / "private")
    signals = open_signals(store)
    run_id, key = new_run_id(), new_key()
    env = {"caller": "manager", "target": "webster", "outcome": "dispatched",
           "key_sha256": key_hash(key), "pid": os.getpid()}  # fmt: skip
    store.pending(run_id, env, sub=False)
    waiter = signals.expect(run_id, sub=False)
    try:
        target = store.handoff_target(run_id, sub=False)
        assert target.parent == tmp_path / "private" / "inbox"
        handoff = make_handoff(run_id=run_id, agent="webster", status="complete",
                               result="0.05 ppm/K", key=key)  # fmt: skip
        write_handoff(target, handoff, replace=False)
        assert waiter.wait(10) is True
    finally:
        waiter.close()
    got = store.deliver(run_id, sub=False, envelope=env)
    assert got.state == "recorded" and got.record is not None
    assert got.record["result"] == "0.05 ppm/K"
    assert not target.exists()


def test_a_notify_wakes_a_waiter_in_another_store_object(pg_url: str) -> None:
    a = PostgresRunStore(Database.from_url(pg_url))
    b = PostgresRunStore(Database.from_url(pg_url))
    run_id, key = new_run_id(), new_key()
    waiter = open_signals(a).expect(run_id, sub=False)
    try:
        assert waiter.wait(0) is False
        b.put_handoff(run_id, make_handoff(run_id=run_id, agent="webster", status="complete",
                                           result="x", key=key), sub=False)  # fmt: skip
        assert waiter.wait(10) is True
    finally:
        waiter.close()


def _file_history(tmp_path: Path) -> Any:
    """A file store with delegations, a sub-delegation, a refused handoff and a workflow
    run, made by the real engine (embedded gateway, demo agents)."""
    from engine.runner import RunOptions, WorkflowRunner, prepare

    cfg = load_config(write_config(tmp_path, demo_config(tmp_path)))
    with open_delegator(cfg) as d:
        for task in ("Find CTE of Zerodur", "DEMO_STATUS=failed no luck"):
            d.delegate(DelegationRequest(caller="manager", target="webster", task=task))
        parent = d.delegate(DelegationRequest(caller="manager", target="tech-lead", task="p"))
        d.delegate(DelegationRequest(caller="tech-lead", target="nx-expert", task="child",
                                     parent_run_id=parent.run_id))  # fmt: skip
        template = Path(__file__).parent / "workflows" / "run" / "parallel.yaml"
        prepared = prepare(cfg, str(template), {"topic": "mirrors"})
        WorkflowRunner(cfg, d).start(prepared, RunOptions())
    # a forged handoff for a delegation nobody waits for: refused and kept
    store = open_store(cfg)
    rid = new_run_id()
    gone = {"caller": "manager", "target": "webster", "outcome": "dispatched",
            "key_sha256": key_hash(new_key()), "pid": 2**22 + 7}  # fmt: skip
    store.pending(rid, gone, sub=False)
    store.put_handoff(rid, make_handoff(run_id=rid, agent="webster", status="complete",
                                        result="x", key=new_key()), sub=False)  # fmt: skip
    store.reconcile(sub=False)
    return cfg


def _comparable(doc: dict[str, Any]) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    for key in ("handoffs_dir", "generated_at"):
        doc.pop(key, None)
    return doc


def test_migrate_from_a_file_store_keeps_every_metric(
    pg_server: PgServer, tmp_path: Path
) -> None:
    cfg = _file_history(tmp_path)
    before = compute_metrics(cfg.handoffs_dir)
    assert before["totals"]["delegations"] >= 4, before["totals"]
    url = pg_server.create_database("imported")
    got = CliRunner().invoke(
        orchestrate,
        ["store", "migrate", "--to", url, "--from", f"file://{cfg.handoffs_dir}"],
    )
    assert got.exit_code == 0, got.output
    assert "imported from" in got.output
    store = PostgresRunStore(Database.from_url(url))
    assert _comparable(metrics_of(store)) == _comparable(before)
    again = import_files(cfg.handoffs_dir, store)  # a second import copies nothing twice
    assert again.handoffs == 0
    assert (again.records, again.runs, again.steps, again.events) == (0, 0, 0, 0)
    assert again.already["runs"] >= 1 and again.already["records"] >= 4, again.already
    assert _comparable(metrics_of(store)) == _comparable(before)
    sub = [r for r, _ in store.list_pending(sub=True)]
    assert sub == []
    Database.from_url(url).close()


def test_migrate_needs_a_postgresql_target(tmp_path: Path) -> None:
    got = CliRunner().invoke(orchestrate, ["store", "migrate", "--to", "file://./h"])
    assert got.exit_code == 2
    assert "`orchestrate store migrate` needs a PostgreSQL store" in got.output


def test_migrate_is_idempotent_from_python(pg_url: str) -> None:
    assert migrate(Database.from_url(pg_url)) == []


def test_show_tree_runs_and_pool_status_read_the_database(pg_url: str, tmp_path: Path) -> None:
    from engine.cli.workflow import workflow
    from engine.runner import RunOptions, WorkflowRunner, prepare

    cfg = _pg_cfg(tmp_path, pg_url, pool={"enabled": True, "max_tokens": 2, "adaptive": False})
    with open_delegator(cfg) as d:
        parent = d.delegate(DelegationRequest(caller="manager", target="tech-lead", task="p"))
        child = d.delegate(DelegationRequest(caller="tech-lead", target="nx-expert",
                                             task="c", parent_run_id=parent.run_id))  # fmt: skip
        template = Path(__file__).parent / "workflows" / "run" / "parallel.yaml"
        run = WorkflowRunner(cfg, d).start(
            prepare(cfg, str(template), {"topic": "lenses"}), RunOptions()
        )
    assert run.state.value == "complete"
    assert not (cfg.handoffs_dir / "workflows").exists()  # nothing of the run on disk
    config = ["--config", str(cfg.path)]
    runner = CliRunner()
    shown = runner.invoke(orchestrate, ["show", child.run_id, "--json", *config])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["envelope"]["parent_run_id"] == parent.run_id
    tree = runner.invoke(orchestrate, ["tree", parent.run_id, "--json", *config])
    assert tree.exit_code == 0, tree.output
    assert [c["run_id"] for c in json.loads(tree.output)["children"]] == [child.run_id]
    runs = runner.invoke(workflow, ["runs", *config])
    assert runs.exit_code == 0, runs.output
    assert run.run_id in runs.output
    st = runner.invoke(workflow, ["status", run.run_id, "--json", *config])
    assert st.exit_code == 0, st.output
    got = json.loads(st.output)
    assert got["status"] == "complete" and got["live"] is False
    status = runner.invoke(orchestrate, ["pool", "status", "--json", *config])
    assert status.exit_code == 0, status.output
    doc = json.loads(status.output)
    assert doc["in_use"] == [] and "#pool=default" in json.dumps(doc)
    with Database.from_url(pg_url).connect() as conn:
        assert conn.execute("SELECT count(*) FROM pool_state").fetchone() == (1,)


def test_the_metrics_command_reads_the_database(pg_url: str, tmp_path: Path) -> None:
    from engine.cli.metrics import metrics

    cfg = _pg_cfg(tmp_path, pg_url)
    with open_delegator(cfg) as d:
        for task in ("one", "DEMO_STATUS=failed two"):
            d.delegate(DelegationRequest(caller="manager", target="webster", task=task))
    got = CliRunner().invoke(metrics, ["json", "--config", str(cfg.path)])
    assert got.exit_code == 0, got.output
    doc = json.loads(got.output)
    assert doc["totals"]["delegations"] == 2
    assert doc["totals"]["by_status"]["complete"] == 1 and doc["totals"]["by_status"]["failed"] == 1
    assert doc["handoffs_dir"] == pg_url


def test_a_delegation_sent_again_accepts_the_key_of_its_first_message(
    pg_url: str, tmp_path: Path
) -> None:
    """A sender died after the gateway accepted its message; the delegation was sent again
    under the same Idempotency-Key with a new key, and the gateway ran the first message
    only: the agent's handoff carries the first key, and is taken."""
    import httpx

    from engine.gateway.server import LocalGateway

    cfg = _pg_cfg(tmp_path, pg_url)
    store = open_store(cfg)
    run_id, first, second = new_run_id(), new_key(), new_key()
    env = {"caller": "manager", "target": "webster", "outcome": "dispatched",
           "pid": 2**22 + 11, "host": "gone-host"}  # fmt: skip
    store.pending(run_id, dict(env, key_sha256=key_hash(first)), sub=False)
    store.pending(run_id, dict(env, key_sha256=key_hash(second)), sub=False)
    pending = store.read_pending(run_id, sub=False)
    assert pending is not None and pending["earlier_key_sha256"] == [key_hash(first)]
    forged = make_handoff(run_id=run_id, agent="webster", status="complete", result="no",
                          key=new_key())  # fmt: skip
    handoff = make_handoff(run_id=run_id, agent="webster", status="complete", result="0.05",
                           key=first)  # fmt: skip
    with LocalGateway(cfg, token="receiver-token", port=0, store=store) as gw:
        auth = {"Authorization": "Bearer receiver-token"}
        refused = httpx.post(f"{gw.url}/handoffs/{run_id}", json=forged, headers=auth)
        assert refused.status_code == 403
        got = httpx.post(f"{gw.url}/handoffs/{run_id}", json=handoff, headers=auth)
    assert got.status_code == 200, got.text
    record = store.read(run_id, sub=False)
    assert record is not None and record["result"] == "0.05"
    assert record["envelope"]["key_verified"] is True
    assert "rejected" not in record["envelope"]  # the forged one: refused, not stored


def _orchestrate(cfg_path: Path, host: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ORCH_HOST_ID=host)
    return subprocess.run(
        [str(Path(sys.executable).parent / "orchestrate"), *args, "--config", str(cfg_path)],
        env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_the_host_identity_comes_from_orch_host_id(pg_url: str, tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["store"] = pg_url
    cfg_path = write_config(tmp_path, raw)
    done = _orchestrate(
        cfg_path, "orch-a", "delegate", "--caller", "manager", "--json", "webster", "Find X"
    )
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["envelope"]["host"] == "orch-a"
    run_id = record["runId"]
    with Database.from_url(pg_url).connect() as conn:
        row = conn.execute("SELECT host FROM delegations WHERE run_id = %s", (run_id,)).fetchone()
    assert row == ("orch-a",)
    bad = _orchestrate(
        cfg_path, "orch\nb", "delegate", "--caller", "manager", "--json", "webster", "Find X"
    )
    assert bad.returncode == 2
    assert "ORCH_HOST_ID" in bad.stderr and "Traceback" not in bad.stderr
    assert "unset it to use the host name" in bad.stderr


def test_a_local_agents_own_handoff_gets_no_stand_in_beside_it(
    pg_url: str, tmp_path: Path
) -> None:
    """A command agent on the embedded gateway writes its handoff file; this host imports
    it into the database. When the agent exits, the gateway sees that it delivered and
    writes no stand-in handoff (none kept beside the record in ``also_received``)."""
    cfg = _pg_cfg(tmp_path, pg_url)
    with open_delegator(cfg) as d:
        result = d.delegate(DelegationRequest(caller="manager", target="webster", task="one"))
        assert result.outcome is Outcome.COMPLETE
    # the delegator's exit stops the gateway after its tasks ended: any stand-in is written
    store = open_store(cfg)
    record = store.read(result.run_id, sub=False)
    assert record is not None and "also_received" not in record["envelope"], record
    with Database.from_url(pg_url).connect() as conn:
        rows = conn.execute(
            "SELECT count(*) FROM handoffs WHERE run_id = %s", (result.run_id,)
        ).fetchone()
    assert rows == (1,)
