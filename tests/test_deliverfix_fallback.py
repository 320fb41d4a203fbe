"""A gateway's stand-in handoff superseded by the agent's own: the stand-in is kept, and
the record lists where it really is (docs/protocol.md section 4, the merge rule).

The agent's process exits at once (the local gateway writes a stand-in), while a
detached grandchild of it writes the agent's own handoff later, renamed over
``inbox/<runId>.json``. The stand-in left the inbox when it was recorded
(``rejected/<runId>.<n>.json``), so the rename destroys nothing, and ``also_received``
names that file, which still holds the stand-in.

Real parts: the embedded local gateway, a real command agent, real files and inotify.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from click.testing import CliRunner

from engine.cli import orchestrate
from engine.handoff import GATEWAY_NOTE_PREFIX
from engine.record import read_json
from tests.helpers import demo_config, wait_for, write_config


def _agent(go: Path) -> list[str]:
    """Forks a grandchild in a session of its own that waits for ``go`` (60 s at most)
    and writes the agent's handoff; the agent itself exits 0 at once, without one."""
    script = (
        "import os, time\n"
        "from pathlib import Path\n"
        "from engine.files import write_json_atomic\n"
        "from engine.handoff import make_handoff\n"
        "h = make_handoff(run_id=os.environ['ORCH_RUN_ID'], agent=os.environ['ORCH_AGENT'],\n"
        "    status='complete', result='the agent, later', confidence='high',\n"
        "    key=os.environ['ORCH_HANDOFF_KEY'])\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        null = os.open(os.devnull, os.O_RDWR)\n"
        "        for fd in (0, 1, 2):\n"
        "            os.dup2(null, fd)\n"
        "        deadline = time.monotonic() + 60\n"
        f"        while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:\n"
        "            time.sleep(0.01)\n"
        "        write_json_atomic(Path(os.environ['ORCH_HANDOFF_PATH']), h)\n"
        "        os._exit(0)\n"
        "    os._exit(0)\n"
        "print('parent exiting')\n"
    )
    return [sys.executable, "-c", script]


def test_a_superseded_stand_in_is_kept_where_the_record_says(tmp_path: Path) -> None:
    go = tmp_path / "go"
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {"kind": "command", "argv": _agent(go), "timeout": 60}
    cfg = str(write_config(tmp_path, raw))
    try:
        res = CliRunner().invoke(
            orchestrate, ["webster", "task", "--caller", "manager", "--json", "--config", cfg]
        )
        assert res.exit_code == 0, res.output
        first = json.loads(res.stdout[res.stdout.index("{") :])
        run_id = first["runId"]
        assert first["envelope"]["fallback"] is True
        stand_in = Path(first["envelope"]["handoff_file"])
        assert stand_in.parent == tmp_path / "handoffs" / "rejected", stand_in
        inbox = tmp_path / "handoffs" / "inbox" / f"{run_id}.json"
        assert not inbox.exists()  # free for the agent's own handoff
    finally:
        go.touch()
    wait_for(inbox.exists, "the agent's own handoff")

    shown = CliRunner().invoke(orchestrate, ["show", run_id, "--json", "--config", cfg])
    assert shown.exit_code == 0, shown.output
    record = json.loads(shown.stdout)
    assert record["result"] == "the agent, later"
    env = record["envelope"]
    assert env["supersedes"] == "fallback" and "fallback" not in env
    assert env["handoff_file"] == str(inbox)
    [kept] = env["also_received"]
    assert kept["file"] == str(stand_in)
    assert "superseded by the agent's own handoff" in kept["reason"]
    held = read_json(Path(kept["file"]))
    assert str(held["notes"]).startswith(GATEWAY_NOTE_PREFIX), held  # still the stand-in
    assert held["status"] == "complete"
