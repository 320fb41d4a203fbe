"""`orchestrate serve` with an embedded gateway: its agents outlive a killed server.

The gateway runs as the server's companion process; a restarted server adopts it, so
the agent that was running finishes and its handoff reaches the restarted server.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from engine.runs import read_events
from engine.serve.companion import alive
from tests.servekit import Served
from tests.test_serve import _feed_until, _start


def _companion(srv: Served) -> dict[str, object]:
    data: dict[str, object] = json.loads(
        (srv.tmp / "handoffs" / ".serve" / "gateway.json").read_text()
    )
    return data


def test_kill_9_with_an_embedded_gateway_loses_nothing(tmp_path: Path) -> None:
    srv = Served(tmp_path, embedded=True).start()
    companion = 0
    try:
        with srv.client("alice") as alice:
            cursor = alice.get("/v1/events").json()["cursor"]
            run_id = _start(alice, "hold")["runId"]
            _feed_until(alice, cursor, run_id, "step_dispatched")
            body = {"target": "slowpoke", "task": "held delegation", "caller": "manager"}
            deleg = alice.post("/v1/delegations", json=body).json()["runId"]
            _feed_until(alice, cursor, deleg, "delegation_dispatched")
        first = _companion(srv)
        companion = int(str(first["pid"]))
        assert srv.proc is not None and first["owners"] == [srv.proc.pid]
        assert "token" not in first  # only its digest
        srv.kill9()
        assert alive(companion)  # the gateway and its agents live on
        srv.go.touch()  # the agents finish while no server is alive
        srv.start()
        again = _companion(srv)
        assert again["pid"] == companion and again["owners"] == [srv.proc.pid]  # adopted
        with srv.client("alice") as alice:
            done = alice.get(f"/v1/runs/{run_id}/wait", params={"timeout": 60}).json()
            deleg_done = alice.get(f"/v1/delegations/{deleg}/wait", params={"timeout": 60})
        assert deleg_done.json()["status"] == "complete", deleg_done.text
        assert deleg_done.json()["record"]["result"].startswith("held and released")
        assert done["status"] == "complete", done
        assert "held and released" in done["steps"]["after"]["task"]
        starts = (tmp_path / "starts").read_text().split()
        assert len(starts) == 2  # the step's agent and the delegation's: each sent once
        events = read_events(Path(done["run_dir"]) / "events.jsonl")
        kinds = [e["event"] for e in events]
        assert kinds.count("step_started") == 2 and kinds.count("run_resumed") == 1
    finally:
        srv.stop()
    # an orderly stop takes the companion down with the server
    assert not alive(companion) or not _reaped(companion)
    assert not (tmp_path / "handoffs" / ".serve" / "gateway.json").exists()


def _reaped(pid: int) -> bool:
    """Kill a companion that outlived the stop (the assertion then fails); False if gone."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def test_an_orphaned_idle_companion_stops_by_itself(tmp_path: Path) -> None:
    """Its server died and none adopted it: it stops once idle for the grace period."""
    import subprocess
    import sys
    import time

    from engine.config import load_config
    from engine.serve import companion as comp
    from tests.helpers import demo_config, write_config

    raw = demo_config(tmp_path)
    raw["gateway"]["embedded"] = True
    cfg = load_config(write_config(tmp_path, raw))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    folder = comp.state_dir(cfg)
    folder.mkdir(mode=0o700, parents=True)
    info = comp._start(cfg, folder, "tok-" + "x" * 20, owner=int(gone.stdout), orphan_grace=0.2)
    pid = int(info["pid"])
    deadline = time.monotonic() + 30
    child = comp._children.pop(pid)
    assert child.wait(30) == 0  # it ended by itself
    assert time.monotonic() < deadline
    assert not (folder / "gateway.json").exists()


def test_a_companion_that_cannot_start_says_why_in_one_line(tmp_path: Path) -> None:
    import socket

    import pytest

    from engine.config import load_config
    from engine.errors import ConfigError
    from engine.serve.companion import companion_gateway
    from tests.helpers import demo_config, write_config

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        raw = demo_config(tmp_path)
        raw["gateway"].update(embedded=True, port=busy.getsockname()[1])
        cfg = load_config(write_config(tmp_path, raw))
        with pytest.raises(ConfigError) as err, companion_gateway(cfg):
            pass
    text = str(err.value)
    assert text.startswith("the embedded gateway (a companion process) did not start: ")
    assert "already in use" in text and "Traceback" not in text and 'File "' not in text


def test_two_owners_share_one_companion_and_the_last_stops_it(tmp_path: Path) -> None:
    """A server and an inbox on one handoffs directory: one companion; it outlives the
    first to leave and stops with the last."""
    import subprocess
    import sys

    from engine.config import load_config
    from engine.serve.companion import companion_gateway, state_dir
    from tests.helpers import demo_config, write_config

    raw = demo_config(tmp_path)
    raw["gateway"]["embedded"] = True
    path = write_config(tmp_path, raw)
    cfg = load_config(path)
    other = (
        "import sys\n"
        "from engine.config import load_config\n"
        "from engine.serve.companion import companion_gateway\n"
        f"with companion_gateway(load_config({str(path)!r})) as c:\n"
        "    print(c.gateway.port, flush=True)\n"
        "    sys.stdin.read()\n"
    )
    with companion_gateway(cfg) as mine:
        info = json.loads((state_dir(cfg) / "gateway.json").read_text())
        second = subprocess.Popen(
            [sys.executable, "-c", other], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert second.stdout is not None and second.stdin is not None
        port = int(second.stdout.readline())
        assert mine.gateway is not None and port == mine.gateway.port  # the same companion
        shared = json.loads((state_dir(cfg) / "gateway.json").read_text())
        assert shared["owners"] == [os.getpid(), second.pid]
    assert alive(int(info["pid"]))  # the other owner still uses it
    left = json.loads((state_dir(cfg) / "gateway.json").read_text())
    assert left["owners"] == [second.pid]
    second.stdin.close()
    assert second.wait(60) == 0
    second.stdout.close()
    from engine.serve import companion as comp

    assert comp._children.pop(int(info["pid"])).wait(30) == 0  # the last owner stopped it
