"""A PostgreSQL restart during a delegation or a workflow run: the wait goes on.

A server of this module's own (``tests/pg.py``), stopped with ``pg_ctl stop -m fast``
(every session ends with ``AdminShutdown``) and started again while the agent works; the
real CLI in a subprocess, the embedded gateway with a command agent that works until the
test lets it go. A store that stays away ends the command with exit code 4 and a message
that the connection was lost, naming the run and ``orchestrate show``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.store.postgres_db import Database, migrate
from tests.helpers import demo_config, write_config
from tests.pg import PgServer, PgUnavailable

SLOW = Path(__file__).parent / "workflows" / "run" / "slow.yaml"


def _cli(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@pytest.fixture(scope="module")
def server() -> Iterator[PgServer]:
    try:
        srv = PgServer().start()
    except PgUnavailable as exc:
        pytest.skip(f"PostgreSQL cannot run here: {exc}")
    try:
        yield srv
    finally:
        srv.stop()


_n = 0


@pytest.fixture
def url(server: PgServer) -> Iterator[str]:
    global _n
    _n += 1
    got = server.create_database(f"restart{os.getpid()}_{_n}")
    db = Database.from_url(got)
    migrate(db)
    db.close()
    yield got
    Database.from_url(got).close()


def _agent(started: Path, go: Path) -> dict[str, object]:
    """Leaves ``started``, works until ``go`` exists (90 s at most), hands off."""
    script = (
        "import os, time\n"
        f"open({str(started)!r}, 'w').close()\n"
        "end = time.monotonic() + 90\n"
        f"while not os.path.exists({str(go)!r}) and time.monotonic() < end:\n"
        "    time.sleep(0.01)\n"
        "print('found it')\n"
    )
    return {"kind": "command", "argv": [sys.executable, "-c", script], "timeout": 120}


def _config(tmp_path: Path, url: str, started: Path, go: Path, *, pool: bool = False) -> Path:
    raw = demo_config(tmp_path, store=url)
    if pool:  # the shared pool's row too: its release comes after the restart
        raw["pool"] = {"max_tokens": 2, "adaptive": False}
    raw["gateway"]["agents"]["webster"] = _agent(started, go)
    return write_config(tmp_path, raw)


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(proc.communicate())
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)  # a file the agent creates: look again


def _popen(args: list[str], cwd: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        args, cwd=cwd, env={**os.environ, **env}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip


@pytest.mark.parametrize("pool", [False, True], ids=["no-pool", "pool"])
def test_a_delegation_waits_through_a_server_restart(
    server: PgServer, url: str, tmp_path: Path, pool: bool
) -> None:
    started, go = tmp_path / "started", tmp_path / "go"
    cfg = _config(tmp_path, url, started, go, pool=pool)
    proc = _popen(
        [_cli("orchestrate"), "webster", "slow", "--caller", "manager", "--config", str(cfg)],
        tmp_path,
    )
    try:
        _wait_for(started, proc)
        server.halt()  # the delegation's connections end with AdminShutdown
        server.resume()
        go.touch()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, (out, err)
    assert out.startswith("complete"), out
    assert "found it" in out
    assert "refused the command" not in err


def test_a_store_that_stays_away_is_reported_as_a_lost_connection(
    server: PgServer, url: str, tmp_path: Path
) -> None:
    started, go = tmp_path / "started", tmp_path / "go"
    cfg = _config(tmp_path, url, started, go)
    proc = _popen(
        [_cli("orchestrate"), "webster", "slow", "--caller", "manager", "--config", str(cfg)],
        tmp_path,
        ORCH_STORE_RECONNECT="1",
    )
    try:
        _wait_for(started, proc)
        server.halt()
        try:
            out, err = proc.communicate(timeout=120)
        finally:
            server.resume()
            go.touch()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 4, (out, err)
    assert "Traceback" not in err
    assert "connection to the PostgreSQL store" in err and "was lost" in err, err
    run_ids = [w.strip("`;,.") for w in err.split() if w.strip("`;,.").startswith("orch-")]
    assert run_ids, err
    assert f"`orchestrate show {run_ids[0]}`" in err
    assert "run again" not in err and "role" not in err and "schema" not in err, err


def test_a_workflow_run_waits_through_a_server_restart(
    server: PgServer, url: str, tmp_path: Path
) -> None:
    started, go = tmp_path / "started", tmp_path / "go"
    cfg = _config(tmp_path, url, started, go)
    proc = _popen(
        [_cli("workflow"), "run", str(SLOW), "--config", str(cfg), "--json", "-q",
         "--non-interactive"],
        tmp_path,
        ORCH_RUN_LEASE_TTL="3",  # renewals (each second) meet the restart too
    )  # fmt: skip
    try:
        _wait_for(started, proc)
        server.halt()
        server.resume()
        go.touch()
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, (out, err)
    summary = json.loads(out)
    assert summary["status"] == "complete", summary


def test_a_workflow_run_whose_store_stays_away_says_the_connection_was_lost(
    server: PgServer, url: str, tmp_path: Path
) -> None:
    started, go = tmp_path / "started", tmp_path / "go"
    cfg = _config(tmp_path, url, started, go)
    proc = _popen(
        [_cli("workflow"), "run", str(SLOW), "--config", str(cfg), "--non-interactive"],
        tmp_path,
        ORCH_STORE_RECONNECT="1",
    )
    try:
        _wait_for(started, proc)
        server.halt()
        try:
            out, err = proc.communicate(timeout=120)
        finally:
            server.resume()
            go.touch()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 4, (out, err)
    assert "Traceback" not in err
    assert "connection to the PostgreSQL store" in err and "was lost" in err, err
    run_id = next(w for w in err.split() if w.startswith("wf-"))
    assert f"`workflow status {run_id}`" in err and f"`workflow resume {run_id}`" in err, err
    assert "run again" not in err and "role" not in err and "schema" not in err, err
