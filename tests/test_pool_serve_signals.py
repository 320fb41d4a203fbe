"""`orchestrate pool serve` stops cleanly on SIGTERM and SIGHUP (exit 0), as a service
manager stops it; it was killed (143) without stopping its server."""

from __future__ import annotations

import os
import select
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
        ready, _, _ = select.select([proc.stderr], [], [], 60)  # its first line, or a bound
        assert ready, "pool serve said nothing within 60 s"
        line = proc.stderr.readline()
        assert "pool endpoint on http://127.0.0.1:" in line, line
        proc.send_signal(sig)
        _, rest = proc.communicate(timeout=60)
        assert proc.returncode == 0, rest
        assert "Traceback" not in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
