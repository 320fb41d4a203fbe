"""A one-shot delegation whose PostgreSQL store stays away names its run (text and --json).

A server of this module's own (``tests/pg.py``), stopped with ``pg_ctl stop -m fast``
while the agent works and started again only after the command ended; the real CLI in a
subprocess, the embedded gateway, the token pool in the database, and a command agent
that works until the test lets it go.
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


def test_a_delegation_whose_store_stays_away_names_its_run(
    server: PgServer, tmp_path: Path
) -> None:
    url = server.create_database(f"lost{os.getpid()}")
    db = Database.from_url(url)
    migrate(db)
    db.close()
    started, go = tmp_path / "started", tmp_path / "go"
    raw = demo_config(tmp_path, store=url)
    raw["pool"] = {"max_tokens": 2, "adaptive": False}
    raw["gateway"]["agents"]["webster"] = _agent(started, go)
    cfg = write_config(tmp_path, raw)
    orchestrate = str(Path(sys.executable).parent / "orchestrate")
    proc = subprocess.Popen(
        [orchestrate, "webster", "slow", "--caller", "manager", "--json", "--config", str(cfg)],
        cwd=tmp_path, env={**os.environ, "ORCH_STORE_RECONNECT": "2"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the agent never started"
            time.sleep(0.02)  # a file the agent creates: look again
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
    assert "orchestrate show RUN" not in err, err
    error = json.loads(out)
    run_id = error["runId"]
    assert run_id.startswith("orch-"), error
    assert error["exit_code"] == 4
    assert f"the run `{run_id}` was not given up" in error["error"]
    assert f"`orchestrate show {run_id}`" in error["error"]
    assert err.strip() == f"error: {error['error']}"
