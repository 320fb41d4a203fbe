"""The per-delegation handoff key never leaves in clear: an agent that prints
``$ORCH_HANDOFF_KEY`` and exits without a handoff leaves it masked (``***``) in its
workspace logs (which only their owner may read), in the gateway's stand-in handoff, in
the record and in ``orchestrate show``.

Real parts: the embedded local gateway and real command agents; every file the run
leaves is read back.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import orchestrate
from engine.redact import redact, redact_obj
from tests.helpers import demo_config, write_config


def _agent(exit_code: int, leak: Path) -> list[str]:
    """An agent that prints its key on stdout and stderr, keeps a copy in ``leak`` (so
    the test knows it), and exits ``exit_code`` without a handoff."""
    script = (
        "import os, pathlib, sys\n"
        "key = os.environ['ORCH_HANDOFF_KEY']\n"
        f"pathlib.Path({str(leak)!r}).write_text(key)\n"
        "print('my key', key)\n"
        "print('stderr key', key, file=sys.stderr)\n"
        f"sys.exit({exit_code})\n"
    )
    return [sys.executable, "-c", script]


@pytest.mark.parametrize("exit_code", [0, 3])
def test_a_printed_handoff_key_is_masked_everywhere(tmp_path: Path, exit_code: int) -> None:
    leak = tmp_path / "outside" / "key.txt"
    leak.parent.mkdir()
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {
        "kind": "command",
        "argv": _agent(exit_code, leak),
        "timeout": 60,
    }
    cfg = write_config(tmp_path, raw)
    res = CliRunner().invoke(
        orchestrate, ["webster", "task", "--caller", "manager", "--json", "--config", str(cfg)]
    )
    key = leak.read_text()
    assert len(key) >= 16
    assert key not in res.output
    record = json.loads(res.output[res.output.index("{") :])
    shown = CliRunner().invoke(orchestrate, ["show", record["runId"], "--config", str(cfg)])
    assert shown.exit_code in (0, 1), shown.output
    assert key not in shown.output
    assert "my key ***" in shown.output or "stderr key ***" in shown.output, shown.output
    logs = list((tmp_path / "handoffs" / ".workspaces" / "webster").glob("gw-*/std*.log"))
    assert {p.name for p in logs} == {"stdout.log", "stderr.log"}
    for log in logs:
        text = log.read_text()
        assert key not in text and "key ***" in text, (log, text)
        assert stat.S_IMODE(log.stat().st_mode) == 0o600, log
    # nothing the run left holds the key, but for the stand-in's `key` field (the
    # handoff's proof, as in the agent's own): records, pending, logs, the stand-in's text
    for path in (tmp_path / "handoffs").rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path.parent.name == "inbox":
            handoff = json.loads(data)
            assert handoff.pop("key") == key
            data = json.dumps(handoff).encode()
        assert key.encode() not in data, path


def test_per_call_secrets_are_masked_and_not_remembered() -> None:
    secret = "3f6c0a9e51d24b7c8e0f1a2b3c4d5e6f"
    assert redact(f"x {secret} y", also=(secret,)) == "x *** y"
    assert redact_obj({"a": [f"k={secret}"]}, also=(secret,)) == {"a": ["k=***"]}
    # scoped to the call: a long-running server keeps no registry of run keys
    assert redact(f"x {secret} y") == f"x {secret} y"
    assert redact("short ab", also=("ab", "", None)) == "short ab"


def test_a_key_quoted_in_the_agents_own_handoff_is_masked_in_the_record(tmp_path: Path) -> None:
    script = (
        "import os, subprocess\n"
        "key = os.environ['ORCH_HANDOFF_KEY']\n"
        "subprocess.run(['orchestrate', 'handoff', 'write', '--dir',"
        " os.path.dirname(os.environ['ORCH_HANDOFF_PATH']), '--run-id', os.environ['ORCH_RUN_ID'],"
        " '--agent', os.environ['ORCH_AGENT'], '--status', 'complete', '--confidence', 'high',"
        " '--result', 'my key is ' + key], check=True)\n"
    )
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {
        "kind": "command",
        "argv": [sys.executable, "-c", script],
        "timeout": 60,
    }
    cfg = write_config(tmp_path, raw)
    res = CliRunner().invoke(
        orchestrate, ["webster", "task", "--caller", "manager", "--json", "--config", str(cfg)]
    )
    assert res.exit_code == 0, res.output
    record = json.loads(res.output[res.output.index("{") :])
    assert record["result"] == "my key is ***"
    assert record["envelope"]["key_verified"] is True
    stored = json.loads((tmp_path / "handoffs" / f"{record['runId']}.json").read_text())
    assert stored["result"] == "my key is ***"


def test_a_progress_line_that_quotes_the_key_keeps_it_masked(tmp_path: Path) -> None:
    from engine.handoff import key_hash
    from engine.liveness import latest_progress, report_progress
    from engine.record import write_pending

    key, run_id = "k1" * 16, "orch-20261130T000000-0000beef"
    records = tmp_path / "handoffs"
    write_pending(records, run_id, {"target": "webster", "key_sha256": key_hash(key)})
    report_progress(records, run_id, f"working; my key is {key}", key=key)
    line = latest_progress(records, run_id)
    assert line is not None and line["text"] == "working; my key is ***"
    assert not [p for p in records.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
