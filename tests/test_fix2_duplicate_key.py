"""An unusable handoff whose only fault is a key written twice says so first, not
"not valid JSON ... no Markdown fence"."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from engine.cli import orchestrate
from tests.helpers import demo_config, write_config

#: Writes its handoff with "status" twice (as tests/test_trust_b_handoffs.py does).
TWICE = """import json, os
from pathlib import Path
from engine.handoff import make_handoff
h = make_handoff(run_id=os.environ["ORCH_RUN_ID"], agent=os.environ["ORCH_AGENT"],
                 status="complete", result="all good", confidence="high",
                 key=os.environ["ORCH_HANDOFF_KEY"])
text = json.dumps(h).replace('"status": ', '"status": "failed", "status": ', 1)
path = Path(os.environ["ORCH_HANDOFF_PATH"])
tmp = path.with_name(path.name + ".tmp")
tmp.write_text(text)
os.replace(tmp, path)
"""


def test_the_unusable_paragraph_names_the_duplicate_key_first(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {"kind": "command", "argv": [sys.executable, "-c", TWICE]}
    cfg = write_config(tmp_path, raw)
    res = CliRunner().invoke(
        orchestrate, ["webster", "go", "--caller", "manager", "--config", str(cfg), "--json"]
    )
    assert res.exit_code == 6, res.output
    record = json.loads(res.output[res.output.index("{") :])
    error = record["envelope"]["error"]
    assert error.startswith(
        "`webster` finished without a usable handoff (the file at handoff_path writes the "
        "key `status` twice in one object. Write each key once: the last would silently win)"
    ), error
    assert "not valid JSON" not in error
    assert "Markdown fence" not in error
    assert "key `status` is written twice in one object" in error


def _words(prog: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / prog), *args], capture_output=True, text=True,
        timeout=60,
    )


def test_a_command_without_json_answers_its_usage_error_in_plain_text(tmp_path: Path) -> None:
    res = _words("metrics", "text", "--json", "--config", str(tmp_path / "no"))
    assert res.returncode == 2
    assert res.stdout == ""  # it has no --json: no JSON either
    assert "`metrics text` has no option `--json`" in res.stderr


def test_a_command_with_json_still_answers_in_json(tmp_path: Path) -> None:
    for prog, args in [
        ("workflow", ["status", "RUN", "--json"]),
        ("orchestrate", ["--capability", "research", "x", "--caller", "manager", "--json"]),
    ]:
        res = _words(prog, *args, "--config", str(tmp_path / "no"))
        assert res.returncode == 2, res.stderr
        doc = json.loads(res.stdout)
        assert doc["exit_code"] == 2 and "does not exist" in doc["error"]
