"""What the caller is shown: the caller's own wording, and every control character
escaped the same way.

- An agent that ends without a handoff under ``fallback_handoff: false``: the repair
  message speaks to the agent ("your run ended"), but the caller's warning and error
  say it in the third person.
- A result holding CSI sequences (``ESC [2J``, ``ESC [31m``) and BEL: ``orchestrate
  show`` shows each escaped (``\\x1b[2J``, ``\\x07``); none is silently deleted, whether
  stdout is a terminal or a pipe (README: control characters are shown escaped).

Real parts: the embedded local gateway, real command agents; ``orchestrate`` as a real
process for the pipe case.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from engine.cli import orchestrate
from tests.helpers import demo_config, write_config


def test_the_caller_is_told_in_the_third_person(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["quiet"] = {
        "kind": "command",
        "argv": ["/bin/sh", "-c", "echo hi; exit 0"],
        "timeout": 60,
        "fallback_handoff": False,
    }
    raw["agents"]["quiet"] = {"url": "local"}
    cfg = str(write_config(tmp_path, raw))
    res = CliRunner().invoke(orchestrate, ["quiet", "go", "--caller", "manager", "--config", cfg])
    assert res.exit_code == 6, res.output
    said = res.stderr
    assert "quiet: the agent's run ended without writing its handoff; repair 1 of 1 sent" in said
    assert (
        "`quiet` finished without a usable handoff (the agent's run ended without writing "
        "its handoff) after 1 repair attempt(s)" in said
    )
    assert "your run" not in said and "your run" not in res.stdout


#: A command agent whose result holds a screen clear, a colour and a bell.
LOUD = """import os
from pathlib import Path
from engine.files import write_json_atomic
from engine.handoff import make_handoff
write_json_atomic(Path(os.environ["ORCH_HANDOFF_PATH"]), make_handoff(
    run_id=os.environ["ORCH_RUN_ID"], agent=os.environ["ORCH_AGENT"], status="complete",
    result="A\\x1b[2J\\x1b[31mB\\x07C", confidence="high", key=os.environ["ORCH_HANDOFF_KEY"]))
"""


def test_show_escapes_csi_sequences_as_it_escapes_bel(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["loud"] = {
        "kind": "command",
        "argv": [sys.executable, "-c", LOUD],
        "timeout": 60,
    }
    raw["agents"]["loud"] = {"url": "local"}
    cfg = str(write_config(tmp_path, raw))
    res = CliRunner().invoke(
        orchestrate, ["loud", "go", "--caller", "manager", "--json", "--config", cfg]
    )
    assert res.exit_code == 0, res.output
    run_id = json.loads(res.stdout)["runId"]
    escaped = "A\\x1b[2J\\x1b[31mB\\x07C"

    shown = CliRunner().invoke(orchestrate, ["show", run_id, "--config", cfg])
    assert shown.exit_code == 0, shown.output
    assert escaped in shown.output, shown.output

    bin_dir = os.path.dirname(sys.executable)
    piped = subprocess.run(
        [f"{bin_dir}/orchestrate", "show", run_id, "--config", cfg],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert piped.returncode == 0, piped.stderr
    assert escaped in piped.stdout, piped.stdout
    assert "\x1b" not in piped.stdout and "\x07" not in piped.stdout
