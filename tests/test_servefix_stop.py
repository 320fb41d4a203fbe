"""Stopping `orchestrate serve` with runs in flight: prompt, one line, nothing lost.

The server does not wait for the agents of its runs (an agent may work for an hour,
longer than systemd's stop timeout): the companion gateway keeps them running, and the
restarted server picks the runs up without sending a step twice.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from tests.servekit import Served
from tests.test_serve import _feed_until, _start


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_does_not_wait_for_agents_and_loses_nothing(
    tmp_path: Path, signum: signal.Signals
) -> None:
    srv = Served(tmp_path, embedded=True).start()
    try:
        with srv.client("alice") as alice:
            cursor = alice.get("/v1/events").json()["cursor"]
            run_id = _start(alice, "hold")["runId"]
            _feed_until(alice, cursor, run_id, "step_dispatched")
        assert srv.proc is not None
        srv.proc.send_signal(signum)
        try:  # the agent is held until `go` exists (60 s at most): the stop must not wait
            srv.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("the server waited for the agent of its run to finish")
        srv._drain.join(timeout=30)
        assert not srv.go.exists()
        log = "".join(srv.log)
        assert "Traceback" not in log and "broke" not in log, log
        said = [line for line in srv.log if line.startswith("stopped with")]
        assert len(said) == 1 and "picks them up when it starts again" in said[0], log
        assert srv.proc.returncode == 0
        srv.go.touch()
        srv.start()
        with srv.client("alice") as alice:
            done = alice.get(f"/v1/runs/{run_id}/wait", params={"timeout": 60}).json()
        assert done["status"] == "complete", done
        assert done["steps"]["hold"]["handoff"]["result"].startswith("held and released")
        assert len((tmp_path / "starts").read_text().split()) == 1  # sent once
    finally:
        srv.go.touch()
        srv.stop()
    assert "Traceback" not in "".join(srv.log)
