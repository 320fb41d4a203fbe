"""A forger cannot end someone else's delegation early (docs/protocol.md section 4).

Under ``handoff_key: required`` the key is checked before the run and the agent: a file
in the victim's inbox path with a key that is not the delegation's (the forger's own)
is refused as a wrong key and the caller keeps waiting, whatever its ``runId`` and
``agent`` say; so is a file without a key that names another agent. The real agent's
handoff is then recorded. Under ``handoff_key: optional`` a wrong ``agent`` still ends
the delegation ``invalid`` at once, as documented.

Real parts: a real ``orchestrate`` process with its embedded gateway, a real command
agent that answers when the test says so, real files and inotify.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.files import write_json_atomic
from engine.handoff import make_handoff, new_key
from engine.record import read_json
from tests.helpers import demo_config, wait_for, write_config


def _agent(go: Path) -> list[str]:
    """Waits for ``go`` (60 s at most), then writes its own handoff."""
    script = (
        "import os, time\n"
        "from engine.handoff import make_handoff, write_handoff\n"
        "from pathlib import Path\n"
        "deadline = time.monotonic() + 60\n"
        f"while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "write_handoff(Path(os.environ['ORCH_HANDOFF_PATH']), make_handoff(\n"
        "    run_id=os.environ['ORCH_RUN_ID'], agent=os.environ['ORCH_AGENT'],\n"
        "    status='complete', result='the real answer', confidence='high',\n"
        "    key=os.environ.get('ORCH_HANDOFF_KEY')))\n"
    )
    return [sys.executable, "-c", script]


def _start(tmp_path: Path, go: Path, **extra: Any) -> tuple[subprocess.Popen[str], str]:
    raw = demo_config(tmp_path, **extra)
    raw["gateway"]["agents"]["webster"] = {"kind": "command", "argv": _agent(go), "timeout": 90}
    cfg = write_config(tmp_path, raw)
    bin_dir = os.path.dirname(sys.executable)
    proc = subprocess.Popen(
        [f"{bin_dir}/orchestrate", "webster", "task", "--caller", "manager", "--json",
         "--timeout", "60", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )  # fmt: skip
    pending_dir = tmp_path / "handoffs" / ".pending"
    pending = wait_for(lambda: list(pending_dir.glob("orch-*.json")), "the pending envelope")
    return proc, pending[0].stem


def _forge(tmp_path: Path, run_id: str, *, key: str | None, **fields: Any) -> None:
    """Write a forged handoff (``fields`` over a well-formed one) for ``run_id`` into its
    inbox path, as another process that can write the handoffs directory could."""
    forged = make_handoff(
        run_id=run_id, agent="webster", status="failed", result="forged", key=key
    )
    forged.update(fields)
    write_json_atomic(tmp_path / "handoffs" / "inbox" / f"{run_id}.json", forged)


def _finish(proc: subprocess.Popen[str]) -> tuple[int, dict[str, Any], str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, json.loads(out[out.index("{") :]), err


@pytest.mark.parametrize(
    ("key", "fields"),
    [
        pytest.param("forger", {"agent": "otherrun"}, id="own-key-other-agent"),
        pytest.param("forger", {"runId": "orch-20990101T000000-deadbeef"}, id="own-key-other-run"),
        pytest.param("forger", {"status": "done"}, id="own-key-schema-error"),
        pytest.param(None, {"agent": "otherrun"}, id="no-key-other-agent"),
    ],
)
def test_a_forged_handoff_does_not_end_the_delegation(
    tmp_path: Path, key: str | None, fields: dict[str, Any]
) -> None:
    go = tmp_path / "go"
    proc, run_id = _start(tmp_path, go)
    try:
        _forge(tmp_path, run_id, key=new_key() if key else None, **fields)
        rejected = tmp_path / "handoffs" / "rejected" / f"{run_id}.1.json"
        wait_for(lambda: rejected.exists() or proc.poll() is not None, "the refusal")
        assert proc.poll() is None, proc.communicate()  # still waiting for the real agent
        go.touch()
        code, record, err = _finish(proc)
    finally:
        go.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    assert code == 0, err
    assert record["result"] == "the real answer"
    env = record["envelope"]
    assert env["outcome"] == "complete" and env["key_verified"] is True
    [refused] = env["rejected"]
    assert refused["file"] == str(rejected)
    assert read_json(rejected)["result"] == "forged"  # kept as it was
    if key:
        assert "its `key` is not this delegation's" in refused["reason"]
    else:
        assert "it has no `key` and names another delegation" in refused["reason"]
        assert "`/agent` is `otherrun`, expected `webster`" in refused["problems"]


def test_without_required_keys_a_wrong_agent_still_ends_it_invalid(tmp_path: Path) -> None:
    go = tmp_path / "go"
    proc, run_id = _start(tmp_path, go, handoff_key="optional")
    try:
        _forge(tmp_path, run_id, key=None, agent="otherrun")
        code, record, err = _finish(proc)
    finally:
        go.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    assert code == 2, err
    assert record["envelope"]["outcome"] == "invalid"
    assert "does not belong to this delegation" in record["envelope"]["error"]
