"""Agents that get the handoff wrong: the run's end is known, one repair, a clear ending.

Real local gateway on 127.0.0.1, real command agents (tests/peers/misbehaving_agent.py),
real files and inotify; and a hooks stand-in that answers without ``completion`` (an
older gateway), which must work exactly as before.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.config import load_config
from engine.delegate import DelegationRequest, Outcome, open_delegator
from engine.gateway.server import LocalGateway
from engine.repair import REPAIR_MARKER
from tests.helpers import demo_config, remote_config, write_config, write_valid_handoff

AGENT = Path(__file__).parent / "peers" / "misbehaving_agent.py"
#: A delegation that needs one repair must end long before this.
TIMEOUT = 60


def _config(tmp_path: Path, mode: str, *, session: bool = False, **extra: Any) -> Any:
    raw = demo_config(tmp_path, **extra)
    raw["gateway"]["agents"]["webster"] = {
        "kind": "command",
        "argv": [sys.executable, str(AGENT), mode],
        "env": {"AGENT_STATE": str(tmp_path / "state")},
        "timeout": 30,
        "fallback_handoff": False,
    }
    if session:  # the agent keeps a session's work: repairs go into the same session
        raw["agents"]["webster"]["send_session_key"] = True
    return load_config(write_config(tmp_path, raw))


def _delegate(cfg: Any, **kw: Any) -> tuple[Any, float]:
    req = DelegationRequest(target="webster", task="Find CTE of Zerodur", caller="manager",
                            timeout=kw.pop("timeout", TIMEOUT), **kw)
    with open_delegator(cfg) as d:
        t0 = time.monotonic()
        result = d.delegate(req)
        return result, time.monotonic() - t0


def _messages(tmp_path: Path, run_id: str) -> list[str]:
    return [p.read_text() for p in sorted((tmp_path / "state").glob(f"{run_id}.*.txt"))]


def _sessions(tmp_path: Path, run_id: str) -> list[str]:
    """``$ORCH_SESSION_KEY`` of each message the agent got for ``run_id``, in order."""
    return [p.read_text() for p in sorted((tmp_path / "state").glob(f"{run_id}.*.session"))]


@pytest.mark.parametrize(
    "mode,why,problem",
    [
        ("forget", "no_handoff", None),
        ("done", "schema", "`/status`: `done` is not one of `complete`, `partial`, `blocked`, "
                           "`failed`"),
        ("fence", "parse", "is not valid JSON (line 1, column 1: Expecting value)"),
        ("nokey", "schema", "missing required key `key`"),
    ],
)
def test_one_repair_then_complete(tmp_path: Path, mode: str, why: str,
                                  problem: str | None) -> None:
    cfg = _config(tmp_path, mode)
    result, took = _delegate(cfg)
    assert result.outcome is Outcome.COMPLETE, result.error
    assert result.exit_code == 0 and took < TIMEOUT / 2
    assert result.handoff is not None and result.handoff["result"] == "done after 2 message(s)"
    env = result.envelope
    (repair,) = env["repairs"]
    assert repair["attempt"] == 1 and repair["why"] == why
    assert repair["session"] == "new" and repair["came_back"] == "handoff:complete"
    assert repair["task_resent"] is True
    assert env["attempts"] == 1 and env["gateway_run_id"].startswith("gw-")
    first, second = _messages(tmp_path, result.run_id)
    assert REPAIR_MARKER not in first
    # No session on the local gateway: the task again, then the correction.
    assert second.startswith(first) and REPAIR_MARKER in second
    correction = second[len(first):]
    drop = cfg.handoffs_dir / "inbox" / f"{result.run_id}.json"
    assert f"handoff_path: {drop}" in correction
    assert f"run_id: {result.run_id}" in correction
    assert "orchestrate handoff write --dir" in correction
    if problem is None:
        assert repair["problems"] == []
        assert "your run ended, but nothing was written to handoff_path" in correction
    else:
        assert any(problem in p for p in repair["problems"]), repair["problems"]
        assert problem in correction
    if why != "no_handoff":  # the refused (or misplaced) file is kept, never lost
        kept = Path(repair["rejected_file"])
        assert kept.parent == cfg.handoffs_dir / "rejected" and kept.exists()
    rec = json.loads(result.record_path.read_text())
    assert rec["envelope"]["repairs"] == env["repairs"]


def test_an_agent_that_never_writes_ends_unusable_in_seconds(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "never")
    result, took = _delegate(cfg)
    assert result.outcome is Outcome.UNUSABLE and result.exit_code == 6
    assert took < TIMEOUT / 2, took
    env = result.envelope
    assert env["outcome"] == "unusable" and env["run_ended"]["status"] == "ok"
    (repair,) = env["repairs"]
    assert repair["why"] == "no_handoff" and repair["came_back"] == "no_handoff"
    assert "`webster` finished without a usable handoff" in str(result.error)
    assert "after 1 repair attempt(s)" in str(result.error)
    assert len(_messages(tmp_path, result.run_id)) == 2
    # Still recorded as pending: a handoff written later is merged (late), not lost.
    assert (cfg.handoffs_dir / ".pending" / f"{result.run_id}.json").exists()


@pytest.mark.parametrize(
    "mode,why,pointer",
    [
        ("always-done", "schema", "`/status`: `done` is not one of `complete`, `partial`, "
                                  "`blocked`, `failed`"),
        ("always-fence", "parse", "is not valid JSON (line 1, column 1: Expecting value)"),
    ],
)
def test_a_handoff_still_refused_after_the_repairs_ends_unusable(
    tmp_path: Path, mode: str, why: str, pointer: str
) -> None:
    cfg = _config(tmp_path, mode)
    result, took = _delegate(cfg)
    assert result.outcome is Outcome.UNUSABLE and result.exit_code == 6
    assert took < TIMEOUT / 2, took
    msg = str(result.error)
    assert msg.startswith("`webster` finished without a usable handoff")
    assert "after 1 repair attempt(s)" in msg and pointer in msg
    env = result.envelope
    (repair,) = env["repairs"]
    assert repair["why"] == why and repair["came_back"] == why
    assert any(pointer in p for p in repair["problems"])
    rec = json.loads(result.record_path.read_text())
    assert rec["envelope"]["outcome"] == "unusable" and pointer in rec["envelope"]["error"]
    # Both refused files are kept, the last one named as the record's.
    first, last = env["rejected"]
    assert rec["envelope"]["rejected_file"] == last["file"] and Path(last["file"]).exists()
    assert len(_messages(tmp_path, result.run_id)) == 2


def test_no_repair_allowed_a_refused_handoff_ends_unusable(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "done", repair_attempts=0)
    result, took = _delegate(cfg)
    assert result.outcome is Outcome.UNUSABLE and result.exit_code == 6 and took < TIMEOUT / 2
    assert "with no repair allowed (`repair_attempts: 0`)" in str(result.error)
    assert "`/status`: `done` is not one of" in str(result.error)
    assert "repairs" not in result.envelope
    assert len(_messages(tmp_path, result.run_id)) == 1


def test_an_unusable_step_is_not_retried_as_if_the_agent_were_slow(tmp_path: Path) -> None:
    from engine.cli import workflow

    cfg = _config(tmp_path, "always-done")
    flow = tmp_path / "flow.yaml"
    flow.write_text("name: unusable\ncaller: manager\nsteps:\n"
                    "  - id: research\n    agent: webster\n    task: Find CTE of ULE\n"
                    "    retries: 2\n    retry_delay: 0\n")
    res = _cli(workflow, cfg, "run", str(flow), "--non-interactive", "--json")
    summary = json.loads(res.stdout)
    research = summary["steps"]["research"]
    assert research["status"] == "unusable", research
    assert research["attempts"] == 1  # retries are for failed, timeout and lost
    assert "finished without a usable handoff" in research["error"]


def test_same_session_repair_sends_the_correction_alone(tmp_path: Path) -> None:
    """A local agent with `send_session_key` keeps its session's work: only the correction
    goes, into the same session (the task is not re-sent, the work is not redone)."""
    cfg = _config(tmp_path, "forget", session=True)
    result, took = _delegate(cfg)
    assert result.outcome is Outcome.COMPLETE, result.error
    assert took < TIMEOUT / 2
    (repair,) = result.envelope["repairs"]
    assert repair["session"] == "same" and repair["task_resent"] is False
    assert repair["came_back"] == "handoff:complete"
    key = f"hook:orchestrate:{result.run_id}"
    assert result.envelope["session_key"] == key
    assert _sessions(tmp_path, result.run_id) == [key, key]
    first, second = _messages(tmp_path, result.run_id)
    assert "Find CTE of Zerodur" in first and "Find CTE of Zerodur" not in second
    assert second.startswith(REPAIR_MARKER)
    assert f"run_id: {result.run_id}" in second
    # The workspace copy of the message never shows the key.
    assert "key: (in $ORCH_HANDOFF_KEY)" in second
    session_dirs = list((cfg.handoffs_dir / ".workspaces" / ".sessions" / "webster").iterdir())
    assert [(d / "work.txt").exists() for d in session_dirs] == [True]


def test_no_repairs_allowed_ends_at_the_runs_end(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "forget", repair_attempts=0)
    result, took = _delegate(cfg)
    assert result.outcome is Outcome.UNUSABLE and took < TIMEOUT / 2
    assert "repairs" not in result.envelope
    assert len(_messages(tmp_path, result.run_id)) == 1


def test_step_bound_overrides_the_agents(tmp_path: Path) -> None:
    raw_extra = {"repair_attempts": 0}
    cfg = _config(tmp_path, "never", **raw_extra)
    result, _ = _delegate(cfg, repair_attempts=2)
    assert result.outcome is Outcome.UNUSABLE
    assert [r["attempt"] for r in result.envelope["repairs"]] == [1, 2]
    assert len(_messages(tmp_path, result.run_id)) == 3


def test_a_run_that_ends_in_error_ends_at_once_with_the_reason(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "fail")
    result, took = _delegate(cfg)
    assert result.outcome is Outcome.ERRORED and result.exit_code == 1
    assert took < TIMEOUT / 2
    msg = str(result.error)
    assert "`webster`'s run ended in error" in msg
    assert "the agent exited with code 3; stderr (tail): cannot go on" in msg
    assert result.envelope["run_ended"]["status"] == "error"


def test_the_local_gateway_holds_its_answer_until_the_run_ends(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "fail")
    with LocalGateway(cfg, token="t0ken", port=0) as gw:
        msg = "hello\n\n--- HANDOFF (required) ---\nrun_id: r-1\nagent: webster\n"
        hdr = {"Authorization": "Bearer t0ken"}
        held = httpx.post(f"{gw.url}/hooks/agent", headers=hdr, timeout=20,
                          json={"message": msg, "agentId": "webster", "waitForCompletion": True})
        at_once = httpx.post(f"{gw.url}/hooks/agent", headers=hdr, timeout=20,
                             json={"message": msg, "agentId": "echo-less"})
    body = held.json()
    assert held.status_code == 200 and body["ok"] and body["runId"].startswith("gw-")
    assert body["completion"]["status"] == "error"
    assert body["completion"]["error"].startswith("the agent exited with code 3")
    assert at_once.status_code == 404  # unknown agent: refused before any run


# -- a gateway without waitForCompletion (answers {"ok": true, "runId": ...} only) ------------


def _remote(tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch, **extra: Any) -> Any:
    monkeypatch.setenv("STANDIN_TOKEN", "stand-in-token")
    return load_config(write_config(tmp_path, remote_config(tmp_path, url, **extra)))


def test_without_completion_support_a_valid_handoff_works_as_before(
    tmp_path: Path, stand_in: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = stand_in(agent=write_valid_handoff)
    cfg = _remote(tmp_path, server.url, monkeypatch)
    result, _ = _delegate(cfg, timeout=10)
    assert result.outcome is Outcome.COMPLETE
    env = result.envelope
    assert env["attempts"] == 1 and env["gateway_run_id"] == "standin-1"
    assert "repairs" not in env and "run_ended" not in env
    (req,) = server.requests
    assert req["body"]["waitForCompletion"] is True


def test_without_completion_support_a_silent_agent_times_out_as_before(
    tmp_path: Path, stand_in: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = stand_in()  # admits the task; its "agent" never writes
    cfg = _remote(tmp_path, server.url, monkeypatch)
    result, took = _delegate(cfg, timeout=2)
    assert result.outcome is Outcome.TIMEOUT and result.exit_code == 4
    assert 1.9 < took < 30
    assert "repairs" not in result.envelope and server.posts == 1


def test_switched_off_the_task_is_sent_as_before(
    tmp_path: Path, stand_in: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = stand_in(agent=write_valid_handoff)
    cfg = _remote(tmp_path, server.url, monkeypatch, wait_for_completion=False)
    result, _ = _delegate(cfg, timeout=10)
    assert result.outcome is Outcome.COMPLETE
    assert "waitForCompletion" not in server.requests[0]["body"]


def test_a_refused_handoff_is_repaired_without_completion_support(
    tmp_path: Path, stand_in: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    def play(block: dict[str, str]) -> None:
        seen.append(block["run_id"])
        if len(seen) == 1:
            Path(block["handoff_path"]).write_text('{"status": "done"}')
        else:
            write_valid_handoff(block)

    server = stand_in(agent=play)
    cfg = _remote(tmp_path, server.url, monkeypatch)
    result, _ = _delegate(cfg, timeout=10)
    assert result.outcome is Outcome.COMPLETE
    (repair,) = result.envelope["repairs"]
    assert repair["why"] == "schema"
    assert "`/`: missing required key `runId`." in repair["problems"]
    first, second = (r["body"]["message"] for r in server.requests)
    assert second.startswith(first) and REPAIR_MARKER in second
    assert [r["headers"]["Idempotency-Key"] for r in server.requests] == [
        result.run_id, f"{result.run_id}-r1"]


def test_metrics_count_repairs_per_agent_and_edge(tmp_path: Path) -> None:
    from engine.metrics import compute_metrics

    repaired, _ = _delegate(_config(tmp_path, "forget"))
    clean, _ = _delegate(cfg := _config(tmp_path, "right-first-time"))
    assert repaired.outcome is clean.outcome is Outcome.COMPLETE
    doc = compute_metrics(cfg.handoffs_dir)
    assert doc["agents"]["webster"]["repairs"] == {"delegations": 1, "messages": 1, "rate": 0.5}
    (edge,) = doc["edges"]
    assert (edge["caller"], edge["target"]) == ("manager", "webster")
    assert edge["repairs"] == {"delegations": 1, "messages": 1, "rate": 0.5}
    assert doc["agents"]["webster"]["by_status"]["complete"] == 2


# -- an agent can ask ------------------------------------------------------------------------


def _cli(group: Any, cfg: Any, *args: str) -> Any:
    from click.testing import CliRunner

    return CliRunner().invoke(group, [*args, "--config", str(cfg.path)], catch_exceptions=False)


def test_a_single_delegation_asks_and_is_answered(tmp_path: Path) -> None:
    from engine.cli import orchestrate

    cfg = _config(tmp_path, "ask")
    res = _cli(orchestrate, cfg, "webster", "Find CTE of ULE", "--caller", "manager")
    assert res.exit_code == 3, res.output
    assert "question: Which temperature range?" in res.stdout
    (record,) = cfg.handoffs_dir.glob("orch-*.json")
    run_id = record.stem
    assert f'continue with: orchestrate answer {run_id} "YOUR ANSWER"' in res.stderr
    res = _cli(orchestrate, cfg, "answer", run_id, "0-50 °C", "--by", "manager", "--json")
    assert res.exit_code == 0, res.output
    done = json.loads(res.stdout)
    assert done["runId"] == f"{run_id}-a1" and done["status"] == "complete"
    assert done["result"] == "CTE over 0-50 °C"
    assert done["envelope"]["labels"] == {"answer_to": run_id, "answered_by": "manager"}
    asked = json.loads(record.read_text())
    assert asked["question"] == "Which temperature range?"
    (answer,) = asked["envelope"]["answers"]
    assert answer["text"] == "0-50 °C" and answer["by"] == "manager"
    assert answer["continued_as"] == f"{run_id}-a1"
    # Without `send_session_key` no session is named.
    assert _sessions(tmp_path, run_id) == [""] and _sessions(tmp_path, f"{run_id}-a1") == [""]
    again = _cli(orchestrate, cfg, "answer", run_id, "twice")
    assert again.exit_code == 2 and f"continued as `{run_id}-a1`" in again.output


def test_an_answer_continues_the_asking_runs_session(tmp_path: Path) -> None:
    from engine.cli import orchestrate

    cfg = _config(tmp_path, "ask", session=True)
    res = _cli(orchestrate, cfg, "webster", "Find CTE of ULE", "--caller", "manager")
    assert res.exit_code == 3, res.output
    (record,) = cfg.handoffs_dir.glob("orch-*.json")
    run_id = record.stem
    res = _cli(orchestrate, cfg, "answer", run_id, "0-50 °C", "--json")
    assert res.exit_code == 0, res.output
    done = json.loads(res.stdout)
    key = f"hook:orchestrate:{run_id}"
    assert done["envelope"]["session_key"] == key
    assert _sessions(tmp_path, run_id) == [key]
    assert _sessions(tmp_path, f"{run_id}-a1") == [key]


def test_workflow_resume_after_an_answer_continues_the_askers_session(tmp_path: Path) -> None:
    from engine.cli import workflow

    cfg = _config(tmp_path, "ask", session=True)
    flow = tmp_path / "ask.yaml"
    flow.write_text("name: ask\ncaller: manager\nsteps:\n"
                    "  - id: research\n    agent: webster\n    task: Find CTE of ULE\n")
    run_id = json.loads(_cli(workflow, cfg, "run", str(flow), "--non-interactive",
                             "--json").stdout)["runId"]
    asking = f"{run_id}-research-1"
    assert _cli(workflow, cfg, "answer", run_id, "research", "0-50 °C").exit_code == 0
    res = _cli(workflow, cfg, "resume", run_id, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["steps"]["research"]["status"] == "complete"
    key = f"hook:orchestrate:{asking}"
    assert _sessions(tmp_path, asking) == [key]
    assert _sessions(tmp_path, f"{run_id}-research-2") == [key]
    step = json.loads((cfg.handoffs_dir / f"{run_id}-research-2.json").read_text())
    assert step["envelope"]["session_key"] == key and step["result"] == "CTE over 0-50 °C"


def test_a_workflow_step_asks_parks_and_resumes_with_the_answer(tmp_path: Path) -> None:
    from engine.cli import workflow

    cfg = _config(tmp_path, "ask")
    flow = tmp_path / "ask.yaml"
    flow.write_text(
        "name: ask\ncaller: manager\nsteps:\n"
        "  - id: research\n    agent: webster\n    task: Find CTE of ULE\n"
        "  - id: review\n    agent: tech-lead\n    depends_on: [research]\n"
        "    task: 'review {{ steps.research.result }}'\n"
    )
    res = _cli(workflow, cfg, "run", str(flow), "--non-interactive", "--json")
    assert res.exit_code == 3, res.output
    summary = json.loads(res.stdout)
    run_id = summary["runId"]
    assert summary["status"] == "waiting_input"
    research = summary["steps"]["research"]
    assert research["status"] == "waiting_input"
    assert research["question"]["text"] == "Which temperature range?"
    assert summary["steps"]["review"]["status"] == "pending"
    status = json.loads(_cli(workflow, cfg, "status", run_id, "--json").stdout)
    assert status["status"] == "waiting_input"
    assert status["steps"]["research"]["waiting"] == (
        f'asks "Which temperature range?": answer with `workflow answer {run_id} research '
        f'"..." --config {cfg.path}`, then `workflow resume {run_id} --config {cfg.path}`'
    )
    early = _cli(workflow, cfg, "answer", run_id, "review", "x")
    assert early.exit_code == 2 and "is not waiting for an answer" in early.output
    res = _cli(workflow, cfg, "answer", run_id, "research", "0-50 °C", "--by", "auditor")
    assert res.exit_code == 0 and f"workflow resume {run_id}" in res.output
    res = _cli(workflow, cfg, "resume", run_id, "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["status"] == "complete"
    research = summary["steps"]["research"]
    assert research["attempts"] == 2
    assert research["question"]["answer"] == "0-50 °C" and research["question"]["by"] == "auditor"
    step = json.loads((Path(summary["run_dir"]) / "research.json").read_text())
    assert step["handoff"]["result"] == "CTE over 0-50 °C"


# -- progress and liveness ---------------------------------------------------------------------


def test_progress_is_kept_and_shown(tmp_path: Path) -> None:
    from engine.cli import orchestrate
    from engine.liveness import latest_progress

    cfg = _config(tmp_path, "beat")
    result, _ = _delegate(cfg, heartbeat_timeout=5)
    assert result.outcome is Outcome.COMPLETE, result.error
    said = latest_progress(cfg.handoffs_dir, result.run_id)
    assert said is not None and said["text"] == "step 4 of 4" and said["count"] == 4
    shown = _cli(orchestrate, cfg, "show", result.run_id)
    assert shown.exit_code == 0
    assert "progress: step 4 of 4 (" in shown.stdout


def test_a_silent_agent_is_lost_at_its_heartbeat_timeout(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "silent")
    result, took = _delegate(cfg, heartbeat_timeout=1.5)
    assert result.outcome is Outcome.LOST and result.exit_code == 4
    assert 1.4 < took < TIMEOUT / 2, took
    assert re.search(r"`webster` was silent for \d+ s \(heartbeat_timeout 1.5 s", str(result.error))
    assert result.envelope["outcome"] == "lost"
    # The run had not ended, so its id came from a look-up the gateway deduped.
    assert result.envelope["gateway_run_id"].startswith("gw-")
    assert len(_messages(tmp_path, result.run_id)) == 1


def test_a_timeout_before_the_runs_end_still_names_the_gateways_run(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "silent")
    result, took = _delegate(cfg, timeout=1.5)
    assert result.outcome is Outcome.TIMEOUT and took < TIMEOUT / 2
    assert result.envelope["gateway_run_id"].startswith("gw-")
    assert len(_messages(tmp_path, result.run_id)) == 1  # asked for its id, not run again


def test_progress_keeps_an_agent_alive_past_its_heartbeat_timeout(tmp_path: Path) -> None:
    raw_cfg = _config(tmp_path, "beat")
    raw = yaml_load(raw_cfg.path)
    raw["agents"]["webster"]["heartbeat_timeout"] = 0.9  # the agent's own, per agent
    cfg = load_config(write_config(tmp_path, raw))
    result, took = _delegate(cfg)
    assert result.outcome is Outcome.COMPLETE, result.error
    assert took > 0.9  # it worked past the heartbeat timeout, reporting as it went


KEY = "k" * 32


def _in_flight(cfg: Any, run_id: str, **extra: Any) -> None:
    from engine.handoff import key_hash
    from engine.record import write_pending

    write_pending(cfg.handoffs_dir, run_id, {"target": "webster", "outcome": "dispatched",
                                             "key_sha256": key_hash(KEY), **extra})


def test_the_receiver_takes_progress_for_runs_in_flight(tmp_path: Path) -> None:
    from engine.liveness import latest_progress

    cfg = _config(tmp_path, "beat")
    run_id = "orch-20261130T000000-0000abcd"
    _in_flight(cfg, run_id)
    hdr = {"Authorization": "Bearer t0ken"}
    url = f"/handoffs/{run_id}/progress"
    with LocalGateway(cfg, token="t0ken", port=0) as gw:
        ok = httpx.post(f"{gw.url}{url}", headers=hdr,
                        json={"text": "  halfway\n there ", "key": KEY})
        forged = httpx.post(f"{gw.url}{url}", headers=hdr,
                            json={"text": "forged", "key": "f" * 32})
        unkeyed = httpx.post(f"{gw.url}{url}", headers=hdr, json={"text": "no key"})
        unknown = httpx.post(f"{gw.url}/handoffs/orch-20261130T000000-00000000/progress",
                             headers=hdr, json={"text": "x", "key": KEY})
        bad = httpx.post(f"{gw.url}{url}", headers=hdr, json={"t": 1})
        odd_key = httpx.post(f"{gw.url}{url}", headers=hdr, json={"text": "x", "key": 5})
        anon = httpx.post(f"{gw.url}{url}", json={"text": "x", "key": KEY})
    assert ok.status_code == 200 and ok.json() == {"ok": True}
    assert forged.status_code == 403
    assert "its key is not this delegation's" in forged.json()["error"]
    assert unkeyed.status_code == 403 and "it has no key" in unkeyed.json()["error"]
    # Refused lines are recorded nowhere: the latest line is still the keyed one.
    said = latest_progress(cfg.handoffs_dir, run_id)
    assert said is not None and said["text"] == "halfway there" and said["count"] == 1
    assert unknown.status_code == 404 and "not in flight" in unknown.json()["error"]
    assert bad.status_code == 400 and odd_key.status_code == 400 and anon.status_code == 401
    assert "key" in bad.json()["error"]


@pytest.mark.parametrize(
    "key,code,needle",
    [
        (None, 2, "progress for run `orch-20261130T000000-0000abcd` refused: it has no key"),
        ("f" * 32, 2, "its key is not this delegation's (forged or misdirected)"),
        (KEY, 0, ""),
    ],
    ids=["missing", "wrong", "right"],
)
def test_progress_from_the_command_line_is_checked_like_a_handoff(
    tmp_path: Path, key: str | None, code: int, needle: str
) -> None:
    from engine.cli import orchestrate
    from engine.liveness import latest_progress

    cfg = _config(tmp_path, "beat")
    run_id = "orch-20261130T000000-0000abcd"
    _in_flight(cfg, run_id)
    args = ["handoff", "progress", "--run-id", run_id, "reading",
            "--dir", str(cfg.handoffs_dir / "inbox"), *(["--key", key] if key else [])]
    res = _cli(orchestrate, cfg, *args)
    assert res.exit_code == code, res.output
    assert needle in res.output and "Traceback" not in res.output
    said = latest_progress(cfg.handoffs_dir, run_id)
    assert (said is not None) is (code == 0)  # a refused line is recorded nowhere


def test_progress_without_a_key_is_taken_under_handoff_key_optional(tmp_path: Path) -> None:
    from engine.liveness import latest_progress, report_progress

    cfg = _config(tmp_path, "beat")
    run_id = "orch-20261130T000000-0000abcd"
    _in_flight(cfg, run_id, handoff_key="optional")
    report_progress(cfg.handoffs_dir, run_id, "old instructions")
    said = latest_progress(cfg.handoffs_dir, run_id)
    assert said is not None and said["text"] == "old instructions"


def yaml_load(path: Path) -> Any:
    import yaml

    return yaml.safe_load(path.read_text())


def test_the_live_table_shows_the_latest_progress_line(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from engine.handoff import key_hash
    from engine.liveness import report_progress
    from engine.progress import LiveReporter
    from engine.record import write_pending

    rep = LiveReporter(stream=io.StringIO())
    rep.event("run_started", run_id="wf-1", workflow="demo", steps=[[("a", "webster")]],
              handoffs_dir=str(tmp_path))
    rep.event("step_started", step="a", agent="webster", attempt=1, reattached=False,
              delegation_run_id="wf-1-a-1")
    write_pending(tmp_path, "wf-1-a-1", {"target": "webster", "key_sha256": key_hash(KEY)})
    report_progress(tmp_path, "wf-1-a-1", "reading the SCHOTT datasheet", key=KEY)
    buf = io.StringIO()
    Console(file=buf, width=160, color_system=None).print(rep._table())
    rep.close()
    assert "reading the SCHOTT datasheet (0 s ago)" in buf.getvalue()


@pytest.mark.parametrize(
    "args,code,needle",
    [
        (["answer", "orch-20261130T000000-00000000", "x"], 2, "no record for `orch-"),
        (["answer", "orch-20261130T000000-00000000", " "], 2, "the answer is empty"),
        (["answer", "../etc", "x"], 2, "run id"),
        (["handoff", "progress", "--run-id", "r-1", " "], 2, "the progress text is empty"),
        (["handoff", "progress", "--run-id", "../x", "hi"], 2, "run id"),
        (["handoff", "write", "--run-id", "r-1", "--agent", "webster", "--status", "complete",
          "--result", "x", "--question", "why?"], 2, "`--question` goes with `--status blocked`"),
    ],
    ids=["unknown-run", "empty-answer", "bad-id", "empty-progress", "bad-progress-id",
         "question-not-blocked"],
)
def test_bad_input_is_one_clear_line(tmp_path: Path, args: list[str], code: int,
                                     needle: str) -> None:
    from engine.cli import orchestrate

    cfg = _config(tmp_path, "forget")
    res = _cli(orchestrate, cfg, *args)
    assert res.exit_code == code, res.output
    assert needle in res.output and "Traceback" not in res.output


def test_workflow_answer_names_the_near_miss(tmp_path: Path) -> None:
    from engine.cli import workflow

    cfg = _config(tmp_path, "ask")
    flow = tmp_path / "ask.yaml"
    flow.write_text("name: ask\ncaller: manager\nsteps:\n"
                    "  - id: research\n    agent: webster\n    task: Find CTE of ULE\n")
    run_id = json.loads(_cli(workflow, cfg, "run", str(flow), "--non-interactive",
                             "--json").stdout)["runId"]
    res = _cli(workflow, cfg, "answer", run_id, "reserch", "x")
    assert res.exit_code == 2 and "did you mean `research`?" in res.output
    res = _cli(workflow, cfg, "answer", run_id, "research", "  ")
    assert res.exit_code == 2 and "the answer is empty" in res.output


def test_a_handoff_at_the_record_path_is_taken_without_a_repair(tmp_path: Path) -> None:
    """Seed 004's agents write `handoffs/<runId>.json`: that is a delivery, not a mistake."""
    cfg = _config(tmp_path, "wrong-path")
    result, took = _delegate(cfg)
    assert result.outcome is Outcome.COMPLETE and took < TIMEOUT / 2
    assert "repairs" not in result.envelope
    assert len(_messages(tmp_path, result.run_id)) == 1


def test_progress_through_the_receiver_from_another_host_carries_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.cli import orchestrate
    from engine.liveness import latest_progress

    cfg = _config(tmp_path, "beat")
    run_id = "orch-20261130T000000-0000abcd"
    _in_flight(cfg, run_id)
    monkeypatch.setenv("HOOKS_TOKEN", "t0ken")
    monkeypatch.delenv("ORCH_HANDOFF_KEY", raising=False)
    with LocalGateway(cfg, token="t0ken", port=0) as gw:
        base = ["handoff", "progress", "--run-id", run_id, "--receiver",
                f"{gw.url}/handoffs/{run_id}", "--token-env", "HOOKS_TOKEN"]
        ok = _cli(orchestrate, cfg, *base, "--key", KEY, "from afar")
        forged = _cli(orchestrate, cfg, *base, "--key", "f" * 32, "forged")
    assert ok.exit_code == 0, ok.output
    assert forged.exit_code == 2 and "its key is not this delegation's" in forged.output
    assert "Check the token" not in forged.output  # the token was right; the key was not
    said = latest_progress(cfg.handoffs_dir, run_id)
    assert said is not None and said["text"] == "from afar" and said["count"] == 1
