"""An agent's own handoff written at the record path (``handoffs/<runId>.json``, seed
004's layout) always wins over the local gateway's stand-in, and nothing it leaves is set
aside unlisted.

Real parts: the embedded local gateway, a real command agent, real files and inotify.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from engine.cli import orchestrate
from engine.record import deliver, read_json, write_pending
from tests.helpers import demo_config, write_config

# Writes a valid handoff atomically at the record path and exits at once.
_RECORD_PATH_AGENT = r"""
import datetime, json, os, pathlib
hp = pathlib.Path(os.environ["ORCH_HANDOFF_PATH"])
rec = hp.parent.parent / (os.environ["ORCH_RUN_ID"] + ".json")
d = {"schemaVersion": "1.1", "runId": os.environ["ORCH_RUN_ID"],
     "agent": os.environ["ORCH_AGENT"], "key": os.environ["ORCH_HANDOFF_KEY"],
     "status": "complete", "result": "MY OWN ANSWER", "confidence": "high",
     "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat()}
tmp = rec.with_name(rec.name + ".tmp")
tmp.write_text(json.dumps(d))
os.replace(tmp, rec)
"""


def _config(tmp_path: Path) -> Path:
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {
        "kind": "command",
        "argv": [sys.executable, "-c", _RECORD_PATH_AGENT],
        "timeout": 60,
    }
    return write_config(tmp_path, raw)


def _listed(envelope: dict[str, Any]) -> set[str]:
    return {
        str(e.get("file"))
        for k in ("rejected", "also_received")
        for e in envelope.get(k) or []
        if isinstance(e, dict)
    }


def test_handoff_at_the_record_path_wins_over_the_stand_in(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    for _ in range(3):  # it lost every time before: the agent exits before the waiter looks
        res = CliRunner().invoke(
            orchestrate, ["webster", "task", "--caller", "manager", "--json", "--config", str(cfg)]
        )
        assert res.exit_code == 0, res.output
        record = json.loads(res.output[res.output.index("{") :])
        env = record["envelope"]
        assert record["result"] == "MY OWN ANSWER"
        assert not env.get("fallback")
        run_id = record["runId"]
        rejected = sorted((tmp_path / "handoffs" / "rejected").glob(f"{run_id}.*"))
        # anything set aside is listed in the record
        assert {str(p) for p in rejected} <= _listed(env), (rejected, env)
        shown = CliRunner().invoke(orchestrate, ["show", run_id, "--config", str(cfg)])
        assert "MY OWN ANSWER" in shown.output
        assert "written by the local gateway" not in shown.output


def _handoff(run_id: str, result: str, notes: str | None = None) -> dict[str, Any]:
    from engine.handoff import make_handoff

    return make_handoff(
        run_id=run_id,
        agent="webster",
        status="complete",
        result=result,
        confidence="high",
        key=None,
        notes=notes,
    )


def test_agent_file_at_record_path_beside_a_stand_in_in_the_inbox_supersedes_it(
    tmp_path: Path,
) -> None:
    """Whatever the order they landed in, the agent's file at the record path is merged
    by the one rule: it supersedes the stand-in, which is listed in the record."""
    from engine.gateway.agents import GATEWAY_NOTE

    records = tmp_path / "handoffs"
    run_id = "orch-20261130T000000-0000abcd"
    write_pending(
        records,
        run_id,
        {
            "caller": "manager",
            "target": "webster",
            "outcome": "dispatched",
            "pid": 2**22 + 12345,
            "host": os.uname().nodename,
            "handoff_key": "optional",
        },
    )
    (records / "inbox").mkdir(parents=True)
    (records / "inbox" / f"{run_id}.json").write_text(
        json.dumps(_handoff(run_id, "stand-in", notes=GATEWAY_NOTE))
    )
    (records / f"{run_id}.json").write_text(json.dumps(_handoff(run_id, "MY OWN ANSWER")))
    deliver(records, run_id)
    deliver(records, run_id)  # a second reader changes nothing
    record = read_json(records / f"{run_id}.json")
    assert record["result"] == "MY OWN ANSWER", record
    env = record["envelope"]
    assert not env.get("fallback")
    assert env.get("supersedes") == "fallback"
    listed = _listed(env)
    for kept in (records / "rejected").glob("*"):
        assert str(kept) in listed
    assert any("fallback" in str(e.get("reason")) for e in env.get("also_received") or []), env
