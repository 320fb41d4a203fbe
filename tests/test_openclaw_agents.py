"""Agents that get the handoff wrong, behind the real OpenClaw gateway (`openclaw@2026.9.6`).

The scripted model (tests/peers/openclaw/stub_llm.py) misbehaves the first time a run id
reaches it (``stub_once: forget|done|fence``) and behaves when the same run id comes
again, which is what the engine's repair does. The engine learns the end of each run
from the gateway's ``waitForCompletion`` answer, so none of this waits for a timeout.
One gateway for this module (tests/peers/openclaw/fixtures.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from engine.cli import orchestrate
from engine.files import parse_iso
from engine.repair import REPAIR_MARKER
from tests.peers.openclaw.fixtures import OpenClawSession, openclaw_peer
from tests.peers.openclaw.stub_llm import message_text

pytestmark = [pytest.mark.openclaw, pytest.mark.usefixtures("warm")]
__all__ = ["openclaw_peer"]  # the peer fixture, imported for pytest to find

#: The engine configs' default timeout is 30 s: "in seconds" means well under it.
QUICK = 20.0


@pytest.fixture(scope="module")
def warm(openclaw_peer: OpenClawSession, tmp_path_factory: pytest.TempPathFactory) -> None:
    """One clean delegation first: a fresh gateway's first run seeds the workspace (~10 s),
    which is not what the timings below are about."""
    oc = openclaw_peer
    cfg = oc.engine_config(tmp_path_factory.mktemp("warm"))
    res, _ = _run(oc, cfg, "Warm up.")
    assert res.exit_code == 0, res.output


def _run(oc: OpenClawSession, cfg: Path, task: str) -> tuple[Any, float]:
    t0 = time.monotonic()
    res = CliRunner().invoke(orchestrate, ["webster", task, "--caller", "manager", "--json",
                                           "--config", str(cfg)],
                             env=oc.env(), catch_exceptions=False)
    return res, time.monotonic() - t0


def _calls(oc: OpenClawSession, run_id: str, finals: int) -> list[dict[str, Any]]:
    """The model calls of ``run_id`` once ``finals`` of them ended a turn with text."""
    assert oc.stub.wait_for(
        lambda log: sum(1 for r in log if r.get("run_id") == run_id
                        and r["decision"] in ("final", "text")) >= finals, 15,
    ), oc.stub.calls(run_id=run_id)
    return oc.stub.calls(run_id=run_id)


def _wrapped(call: dict[str, Any]) -> str:
    return "\n".join(message_text(m) for m in call["body"]["messages"] if m.get("role") == "user")


@pytest.mark.parametrize(
    "kind,why,decisions",
    [
        ("forget", "no_handoff", ["text", "tool_call", "final"]),
        ("done", "schema", ["tool_call", "final", "tool_call", "final"]),
        ("fence", "parse", ["tool_call", "final", "tool_call", "final"]),
        ("nokey", "schema", ["tool_call", "final", "tool_call", "final"]),
    ],
)
def test_wrong_once_then_repaired_in_seconds(openclaw_peer: OpenClawSession, tmp_path: Path,
                                             kind: str, why: str, decisions: list[str]) -> None:
    oc = openclaw_peer
    cfg = oc.engine_config(tmp_path)
    res, took = _run(oc, cfg, f"Find CTE of ULE. stub_once: {kind}")
    assert res.exit_code == 0, res.output
    assert took < QUICK, took
    rec = json.loads(res.stdout)
    assert rec["status"] == "complete"
    assert rec["result"].startswith("stub result from webster: Find CTE of ULE.")
    env = rec["envelope"]
    (repair,) = env["repairs"]
    assert repair["why"] == why and repair["came_back"] == "handoff:complete"
    assert repair["session"] == "new" and repair["task_resent"] is True
    if kind == "done":
        assert "`/status`: `done` is not one of `complete`, `partial`, `blocked`, `failed`" in (
            repair["problems"])
    if kind == "nokey":
        assert repair["problems"] == ["`/`: missing required key `key`."]
    calls = _calls(oc, rec["runId"], decisions.count("final") + decisions.count("text"))
    assert [c["decision"] for c in calls] == decisions
    # The repair is a second hook run: the task again, then the correction.
    again = calls[2] if kind != "forget" else calls[1]
    text = _wrapped(again)
    assert "Find CTE of ULE." in text and REPAIR_MARKER in text
    drop = tmp_path / "handoffs" / "inbox" / f"{rec['runId']}.json"
    assert f"handoff_path: {drop}" in text
    assert "orchestrate handoff write --dir" in text


def test_an_agent_that_never_writes_ends_unusable_in_seconds(openclaw_peer: OpenClawSession,
                                                             tmp_path: Path) -> None:
    oc = openclaw_peer
    cfg = oc.engine_config(tmp_path)
    res, took = _run(oc, cfg, "Think about it. stub_no_write")
    assert res.exit_code == 6, res.output
    assert took < QUICK, took
    rec = json.loads(res.stdout)
    env = rec["envelope"]
    assert env["outcome"] == "unusable"
    assert env["error"].startswith("`webster` finished without a usable handoff")
    (repair,) = env["repairs"]
    assert repair["why"] == "no_handoff" and repair["came_back"] == "no_handoff"
    # It ended within a few seconds of its (second) run's end.
    ended = parse_iso(env["ended_at"]) - parse_iso(env["run_ended"]["at"])
    assert ended.total_seconds() < 3
    assert [c["decision"] for c in _calls(oc, rec["runId"], 2)] == ["text", "text"]


def test_a_handoff_refused_again_after_the_repair_ends_unusable(
    openclaw_peer: OpenClawSession, tmp_path: Path
) -> None:
    oc = openclaw_peer
    cfg = oc.engine_config(tmp_path)
    res, took = _run(oc, cfg, "Find CTE of ULE. stub_always: done")
    assert res.exit_code == 6, res.output
    assert took < QUICK, took
    env = json.loads(res.stdout)["envelope"]
    assert env["outcome"] == "unusable"
    assert env["error"].startswith("`webster` finished without a usable handoff")
    pointer = "`/status`: `done` is not one of `complete`, `partial`, `blocked`, `failed`"
    assert pointer in env["error"]
    (repair,) = env["repairs"]
    assert repair["why"] == "schema" and repair["came_back"] == "schema"
    assert env["rejected_file"] == env["rejected"][-1]["file"]


def test_a_model_error_ends_at_once_with_the_gateways_reason(openclaw_peer: OpenClawSession,
                                                            tmp_path: Path) -> None:
    oc = openclaw_peer
    cfg = oc.engine_config(tmp_path)
    res, took = _run(oc, cfg, "Break. stub_fail: 400")
    assert res.exit_code == 1, res.output
    assert took < QUICK, took
    env = json.loads(res.stdout)["envelope"]
    assert env["outcome"] == "errored" and env["run_ended"]["status"] == "error"
    assert "`webster`'s run ended in error" in env["error"]
    assert "repairs" not in env


def test_same_session_key_repair(openclaw_peer: OpenClawSession, tmp_path: Path) -> None:
    """With `send_session_key` the repair goes under the same `sessionKey`.

    Measured on openclaw@2026.9.6: the gateway still starts a fresh session for each
    hook run (the repair run's model call has only the system prompt, the new message
    and the gateway's context block: none of the first run's turns), so the engine sends
    the task again with the correction.
    """
    oc = openclaw_peer
    cfg = oc.engine_config(tmp_path)
    raw = yaml.safe_load(cfg.read_text())
    raw["agents"]["webster"]["send_session_key"] = True
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    res, took = _run(oc, cfg, "Find CTE of ULE. stub_once: forget")
    assert res.exit_code == 0, res.output
    assert took < QUICK
    rec = json.loads(res.stdout)
    (repair,) = rec["envelope"]["repairs"]
    assert repair["session"] == "same" and repair["task_resent"] is True
    assert rec["envelope"]["session_key"] == f"hook:orchestrate:{rec['runId']}"
    first, second, _ = _calls(oc, rec["runId"], 2)
    roles = [m.get("role") for m in second["body"]["messages"]]
    assert roles == ["system", "user", "user"], roles
    assert REPAIR_MARKER not in _wrapped(first) and REPAIR_MARKER in _wrapped(second)


def test_the_agent_asks_and_is_answered(openclaw_peer: OpenClawSession, tmp_path: Path) -> None:
    oc = openclaw_peer
    cfg = oc.engine_config(tmp_path)
    res, took = _run(oc, cfg, "Find CTE of ULE. stub_ask")
    assert res.exit_code == 3, res.output
    asked = json.loads(res.stdout)
    assert asked["status"] == "blocked" and asked["question"] == "Which temperature range?"
    run_id = asked["runId"]
    res = CliRunner().invoke(orchestrate, ["answer", run_id, "0-50 °C", "--by", "manager",
                                           "--json", "--config", str(cfg)],
                             env=oc.env(), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    done = json.loads(res.stdout)
    assert done["runId"] == f"{run_id}-a1" and done["status"] == "complete"
    assert "Answer (from manager): 0-50 °C" in done["result"]
    record = json.loads((tmp_path / "handoffs" / f"{run_id}.json").read_text())
    assert record["envelope"]["answers"][0]["by"] == "manager"
