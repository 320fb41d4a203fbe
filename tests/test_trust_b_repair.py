"""The repair message names what was actually wrong with the agent's handoff.

A real command agent on the embedded gateway writes a wrong handoff on its first run and
saves the corrective message it gets on the second (``$ORCH_TASK``), then answers well.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import orchestrate
from tests.helpers import demo_config, write_config

#: First run: write ``BAD`` (a Python expression of the handoff dict ``h`` and its text)
#: to handoff_path and exit; second run: save the message, then hand off properly.
AGENT = """import json, os, sys
from pathlib import Path
from engine.handoff import make_handoff
seen = Path(sys.argv[1])
h = make_handoff(run_id=os.environ["ORCH_RUN_ID"], agent=os.environ["ORCH_AGENT"],
                 status="complete", result="fixed", confidence="high",
                 key=os.environ["ORCH_HANDOFF_KEY"])
path = Path(os.environ["ORCH_HANDOFF_PATH"])
if seen.exists():
    seen.write_text((Path(os.environ["ORCH_WORKSPACE"]) / "TASK.txt").read_text())
    text = json.dumps(h)
else:
    seen.write_text("")
    BAD
tmp = path.with_name(path.name + ".tmp")
tmp.write_text(text)
os.replace(tmp, path)
"""

CASES = {
    "wrong-key": (
        'h["key"] = "0" * 32; text = json.dumps(h)',
        [
            "a handoff was written to handoff_path, but refused",
            "its `key` is not this delegation's",
            "$ORCH_HANDOFF_KEY",
        ],
    ),
    "malformed": ('text = "```json\\n" + json.dumps(h) + "\\n```"', ["not valid JSON"]),
    "schema": ('h["status"] = "done"; text = json.dumps(h)', ["`/status`: `done` is not one of"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_repair_names_the_actual_problem(tmp_path: Path, case: str) -> None:
    bad, expected = CASES[case]
    seen = tmp_path / "seen.txt"
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {
        "kind": "command",
        "argv": [sys.executable, "-c", AGENT.replace("BAD", bad), str(seen)],
    }
    cfg = write_config(tmp_path, raw)
    res = CliRunner().invoke(
        orchestrate, ["webster", "go", "--caller", "manager", "--config", str(cfg), "--json"]
    )
    message = seen.read_text() if seen.exists() else ""
    assert "--- HANDOFF REPAIR ---" in message, res.output
    repair = message[message.index("--- HANDOFF REPAIR ---") :]
    for text in expected:
        assert text in repair, repair
    assert "nothing was written" not in repair
    assert res.exit_code == 0, res.output
    assert json.loads(res.output[res.output.index("{") :])["result"] == "fixed"


def test_a_wrong_run_id_is_not_repaired_but_named(tmp_path: Path) -> None:
    """A handoff naming another run is not this delegation's (docs/protocol.md, section
    4): no repair is sent; the delegation ends `invalid` (exit 2), naming `/runId`."""
    seen = tmp_path / "seen.txt"
    raw = demo_config(tmp_path)
    bad = 'h["runId"] = "orch-20260101T000000-00000000"; text = json.dumps(h)'
    raw["gateway"]["agents"]["webster"] = {
        "kind": "command",
        "argv": [sys.executable, "-c", AGENT.replace("BAD", bad), str(seen)],
    }
    cfg = write_config(tmp_path, raw)
    res = CliRunner().invoke(
        orchestrate, ["webster", "go", "--caller", "manager", "--config", str(cfg)]
    )
    assert res.exit_code == 2, res.output
    assert "`/runId` is `orch-20260101T000000-00000000`" in res.output
    assert seen.read_text() == ""  # run once: no repair


def test_repairs_spent_on_a_wrong_key_say_so(tmp_path: Path) -> None:
    """With no repair left, the ending names the wrong key, not a missing file."""
    raw = demo_config(tmp_path)
    bad = 'h["key"] = "0" * 32; text = json.dumps(h)'
    raw["gateway"]["agents"]["webster"] = {
        "kind": "command",
        "argv": [sys.executable, "-c", AGENT.replace("BAD", bad), str(tmp_path / "seen.txt")],
    }
    raw["repair_attempts"] = 0
    cfg = write_config(tmp_path, raw)
    res = CliRunner().invoke(
        orchestrate, ["webster", "go", "--caller", "manager", "--config", str(cfg), "--json"]
    )
    assert res.exit_code == 6, res.output
    env = json.loads(res.output[res.output.index("{") :])["envelope"]
    assert "its `key` is not this delegation's" in env["error"]
    assert "nothing was written" not in env["error"]
