"""What a run reads back stays right where fewer files are looked at (docs/performance.md,
"Seventh round"): a replay of a run of more than a few steps lists the run directory once
and opens only the step files there; ``deliver`` right after ``has_handoff`` found an inbox
file skips its own look before the lock.

Real embedded gateway with ``echo`` agents, real run directories and records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.config import load_config
from engine.delegate import open_delegator
from engine.errors import RunStateError
from engine.runner import RunOptions, RunState, WorkflowRunner, prepare
from engine.runs import replay
from engine.store import FileRunStore

STEPS = 12  # above the size from which a replay lists the directory


def _config(tmp_path: Path) -> Path:
    raw: dict[str, Any] = {
        "handoffs_dir": str(tmp_path / "handoffs"),
        "pool": {"enabled": False},
        "gateway": {
            "embedded": True,
            "agents": {"manager": {"kind": "echo"}, "webster": {"kind": "echo"}},
        },
        "agents": {"manager": {"url": "local"}, "webster": {"url": "local"}},
    }
    path = tmp_path / "orchestrator.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _workflow(tmp_path: Path) -> Path:
    steps = [{"id": "s00", "agent": "webster", "task": "first"}] + [
        {
            "id": f"s{i:02d}",
            "agent": "webster",
            "depends_on": [f"s{i - 1:02d}"],
            "task": f"step {i} after {{{{ steps.s{i - 1:02d}.status }}}}",
        }
        for i in range(1, STEPS)
    ]
    path = tmp_path / "wf.yaml"
    doc = {"name": "many", "caller": "manager", "steps": steps}
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("many")
    cfg = load_config(_config(tmp))
    with open_delegator(cfg) as d:
        res = WorkflowRunner(cfg, d).start(prepare(cfg, str(_workflow(tmp)), {}), RunOptions())
    assert res.state is RunState.COMPLETE, res.summary
    return Path(res.run_dir)


def _handoffs(run_dir: Path) -> dict[str, Any]:
    return {
        f"s{i:02d}": json.loads((run_dir / f"s{i:02d}.json").read_text())["handoff"]
        for i in range(STEPS)
    }


def test_a_replay_takes_each_step_file_there(finished: Path) -> None:
    view = replay(finished)
    assert view.state is RunState.COMPLETE
    written = _handoffs(finished)
    assert {s: view.steps[s].handoff for s in written} == written
    assert all(h and h["status"] == "complete" for h in written.values())


def test_a_step_file_removed_or_put_back_between_replays(finished: Path) -> None:
    step = finished / "s03.json"
    kept = step.read_bytes()
    try:
        step.unlink()
        view = replay(finished)
        assert view.steps["s03"].handoff is None  # missing: none, as without a listing
        assert view.steps["s04"].handoff is not None
        step.write_bytes(kept)  # a listing is made per replay: the next one sees it
        assert replay(finished).steps["s03"].handoff == json.loads(kept)["handoff"]
    finally:
        step.write_bytes(kept)


def test_a_damaged_step_file_is_still_reported(finished: Path) -> None:
    step = finished / "s07.json"
    kept = step.read_bytes()
    try:
        data = json.loads(kept)
        data["handoff"] = "complete"
        step.write_text(json.dumps(data), encoding="utf-8")
        with pytest.raises(RunStateError) as err:
            replay(finished)
        assert "s07.json" in str(err.value) and "damaged" in str(err.value)
    finally:
        step.write_bytes(kept)


def test_deliver_after_has_handoff_when_the_file_went_meanwhile(tmp_path: Path) -> None:
    store = FileRunStore(tmp_path / "handoffs")
    run_id = "orch-20261130T000000-aaaa0001"
    placed = store.put_handoff(run_id, {"status": "complete"}, sub=False)
    assert store.has_handoff(run_id, sub=False)
    placed.unlink()  # gone before the delivery: the locked look answers, as before
    assert store.deliver(run_id, sub=False).state == "absent"
    # and a remembered find is used once, for that run only
    other = "orch-20261130T000000-aaaa0002"
    assert not store.has_handoff(other, sub=False)
    assert store.deliver(run_id, sub=False).state == "absent"
    assert store.deliver(other, sub=False).state == "absent"
