"""What the fifth performance round changed, on real files and a real gateway: a late
handoff merged for one run only, workspaces pruned off the task's path, reads without a
file object, and one-line JSON that reads like the indented files of earlier versions."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.config import config_from_dict
from engine.delegate import DelegationRequest, open_delegator
from engine.files import write_json_atomic
from engine.gateway.retention import FINISHED_MARKER, prune_later, prune_workspaces, wait_pruned
from engine.gateway.server import LocalGateway
from engine.handoff import key_hash, make_handoff
from engine.record import (
    find_record,
    nothing_there,
    pending_path,
    read_json,
    reconcile,
    reconcile_run,
)

KEY = "k" * 32
GW_TOKEN = "floor-gateway-token-0123456789"


def _pending(records: Path, run_id: str) -> None:
    """A pending envelope whose caller is gone (no such pid): a late handoff is merged."""
    write_json_atomic(
        pending_path(records, run_id),
        {
            "caller": "manager",
            "target": "webster",
            "outcome": "timeout",
            "dispatched_at": "2026-01-01T00:00:00.000Z",
            "deadline_at": "2026-01-01T00:02:00.000Z",
            "pid": 1 << 22,
            "key_sha256": key_hash(KEY),
        },
    )


def _deliver(records: Path, run_id: str, result: str) -> None:
    handoff = make_handoff(
        run_id=run_id, agent="webster", status="complete", result=result, key=KEY
    )
    write_json_atomic(records / "inbox" / f"{run_id}.json", handoff)


def test_reconcile_run_merges_that_run_only(tmp_path: Path) -> None:
    records = tmp_path / "handoffs"
    a, b = "orch-20260101T000000-0000000a", "orch-20260101T000000-0000000b"
    for run_id in (a, b):
        _pending(records, run_id)
        _deliver(records, run_id, f"late answer of {run_id}")
    written = reconcile_run(records, a)
    assert written == records / f"{a}.json"
    record = read_json(written)
    assert record["result"] == f"late answer of {a}" and record["envelope"]["late"] is True
    assert not pending_path(records, a).exists()
    assert pending_path(records, b).exists() and not (records / f"{b}.json").exists()
    assert reconcile_run(records, a) is None  # nothing pending any more
    assert [p.name for p in reconcile(records)] == [f"{b}.json"]


def test_reconcile_run_leaves_a_live_waiter_and_an_empty_inbox_alone(tmp_path: Path) -> None:
    records = tmp_path / "handoffs"
    run_id = "orch-20260101T000000-0000000c"
    _pending(records, run_id)
    assert reconcile_run(records, run_id) is None  # no handoff yet
    env = read_json(pending_path(records, run_id))
    write_json_atomic(
        pending_path(records, run_id), dict(env, pid=os.getpid(), outcome="dispatched")
    )
    _deliver(records, run_id, "answer")
    assert reconcile_run(records, run_id) is None  # its caller is alive: it records itself
    assert not (records / f"{run_id}.json").exists()


def test_records_are_one_line_and_indented_ones_read_the_same(tmp_path: Path) -> None:
    raw: dict[str, Any] = {
        "handoffs_dir": str(tmp_path / "handoffs"),
        "pool": {"enabled": False},
        "gateway": {
            "embedded": True,
            "agents": {"manager": {"kind": "echo"}, "webster": {"kind": "echo"}},
        },
        "agents": {"manager": {"url": "local"}, "webster": {"url": "local"}},
    }
    cfg = config_from_dict(raw, path=tmp_path / "orchestrator.yaml")
    with open_delegator(cfg) as d:
        res = d.delegate(DelegationRequest(target="webster", task="hello", caller="manager"))
    assert res.outcome.value == "complete"
    path = Path(res.record_path)
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") == 1 and text.endswith("}\n")  # one line of JSON
    assert json.loads(text) == res.record
    # The same record as an earlier version wrote it (indented) is read the same.
    path.write_text(json.dumps(res.record, indent=2) + "\n", encoding="utf-8")
    assert read_json(path) == res.record
    assert find_record(cfg.handoffs_dir, res.run_id)[1] == res.record
    assert nothing_there(cfg.handoffs_dir, "orch-20260101T000000-00000000")
    assert not nothing_there(cfg.handoffs_dir, res.run_id)


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 70_000, 300_000])
def test_read_json_reads_whole_files_and_refuses_past_the_limit(tmp_path: Path, size: int) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps("y" * size), encoding="utf-8")
    assert read_json(path) == "y" * size
    assert read_json(path, max_bytes=size + 2) == "y" * size  # exactly the limit
    assert read_json(path, max_bytes=size + 1) is None


def _finished(agent_dir: Path, name: str, age_s: int) -> Path:
    ws = agent_dir / name
    ws.mkdir(parents=True)
    (ws / FINISHED_MARKER).write_text("x")
    ns = (int(time.time()) - age_s) * 1_000_000_000
    os.utime(ws, ns=(ns, ns))
    return ws


def test_pruning_later_keeps_the_newest_and_every_running(tmp_path: Path) -> None:
    agent_dir = tmp_path / "webster"
    for i in range(6):
        _finished(agent_dir, f"gw-{i}", age_s=100 - i)  # gw-5 is the newest
    (agent_dir / "gw-running").mkdir()  # no stdout.log yet: never touched
    prune_later(agent_dir, 2, lambda: {"gw-0"})
    assert wait_pruned(10.0)
    assert sorted(os.listdir(agent_dir)) == ["gw-0", "gw-4", "gw-5", "gw-running"]
    # Known workspaces are not looked at again; new ones are, when they appear.
    _finished(agent_dir, "gw-6", age_s=0)
    assert prune_workspaces(agent_dir, 2, {"gw-0"}) == 1
    assert sorted(os.listdir(agent_dir)) == ["gw-0", "gw-5", "gw-6", "gw-running"]


def test_the_answer_does_not_wait_for_pruning_and_stop_waits_for_it(tmp_path: Path) -> None:
    raw: dict[str, Any] = {
        "handoffs_dir": "handoffs",
        "agents": {"w": {"url": "local"}},
        "gateway": {
            "workspace_retention": 1,
            "agents": {"w": {"kind": "command", "argv": [sys.executable, "-c", "print(1)"]}},
        },
    }
    cfg = config_from_dict(raw, path=tmp_path / "orchestrator.yaml")
    gw = LocalGateway(cfg, token=GW_TOKEN).start()
    try:
        with httpx.Client(timeout=60) as client:
            for i in range(3):
                resp = client.post(
                    gw.url + "/hooks/agent",
                    json={"message": f"task {i}", "waitForCompletion": True},
                    headers={"Authorization": f"Bearer {GW_TOKEN}"},
                )
                assert resp.status_code == 200 and resp.json()["completion"] == {"status": "ok"}
    finally:
        gw.stop()
    left = list((cfg.handoffs_dir / ".workspaces" / "w").iterdir())
    assert [(p / "TASK.txt").read_text() for p in left] == ["task 2"]
