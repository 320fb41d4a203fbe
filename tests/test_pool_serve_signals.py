"""`orchestrate pool serve` stops cleanly on SIGTERM and SIGHUP (exit 0), as a service
manager stops it; it was killed (143) without stopping its server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import demo_config, write_config

ORCHESTRATE = [sys.executable, "-c", "from engine.cli import orchestrate_main; orchestrate_main()"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_pool_serve_exits_0_on_a_stop_signal(tmp_path: Path, sig: signal.Signals) -> None:
    config = write_config(tmp_path, demo_config(tmp_path))
    env = dict(os.environ, ORCH_POOL_TOKEN="pool-token-0123456789abcdef")
    proc = subprocess.Popen(
        [*ORCHESTRATE, "pool", "serve", "--port", "0", "--config", str(config)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # blocks until it serves (or ends)
        assert "pool endpoint on http://127.0.0.1:" in line, line
        proc.send_signal(sig)
        rest = proc.stderr.read()
        assert proc.wait(60) == 0, rest
        assert "Traceback" not in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
