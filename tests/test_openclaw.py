"""The engine against the real OpenClaw gateway (`openclaw@2026.9.6`), offline.

One gateway for the whole tier (tests/peers/openclaw/fixtures.py); its only model is the
scripted stand-in (tests/peers/openclaw/stub_llm.py), which makes the agent call the
gateway's real `write` tool to put the handoff where the engine said. The tests drive the
engine through its real entry points, the `orchestrate` and `workflow` commands; the
idempotency test calls `HooksClient.post_agent` itself, to send one request twice.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.cli import orchestrate, workflow
from engine.config import load_config
from engine.files import new_run_id, parse_iso
from engine.handoff import load_handoff
from tests.peers.openclaw.fixtures import (
    TOKEN_ENV,
    WRONG_TOKEN,
    WRONG_TOKEN_ENV,
    OpenClawSession,
    openclaw_peer,
)
from tests.peers.openclaw.stub_llm import message_text

pytestmark = pytest.mark.openclaw
__all__ = ["openclaw_peer"]  # the peer fixture, imported for pytest to find

BIN = Path(sys.executable).parent
PARALLEL = Path(__file__).parent / "workflows" / "run" / "parallel.yaml"
DOCS = Path(__file__).parents[1] / "docs" / "openclaw.md"


def _orchestrate(oc: OpenClawSession, cfg: Path, *args: str) -> Any:
    return CliRunner().invoke(orchestrate, [*args, "--config", str(cfg)], env=oc.env(),
                              catch_exceptions=False)


def _record(result: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _settle(oc: OpenClawSession, run_id: str, decision: str = "final",
            timeout: float = 15) -> list[dict[str, Any]]:
    """Wait for the run's call of kind ``decision``; return all of the run's calls."""
    assert oc.stub.wait_for(
        lambda log: any(r.get("run_id") == run_id and r["decision"] == decision for r in log),
        timeout,
    ), f"the model never got a `{decision}` call for {run_id}: {oc.stub.calls(run_id=run_id)}"
    return oc.stub.calls(run_id=run_id)


def _errored_run_reached_model(oc: OpenClawSession, cfg: Path, mark: int,
                               status_code: int) -> list[dict[str, Any]]:
    """The model calls (since ``mark``) of the one delegation in ``cfg``, which was refused."""
    (record,) = load_config(cfg).handoffs_dir.glob("*.json")
    envelope = json.loads(record.read_text())["envelope"]
    assert envelope["outcome"] == "errored" and envelope["status_code"] == status_code
    time.sleep(0.5)  # a task the gateway had admitted after all would reach the model now
    return oc.stub.calls(run_id=record.stem, since=mark)


def test_orchestrate_end_to_end(openclaw_peer: OpenClawSession, tmp_path: Path) -> None:
    """`orchestrate` (the console script) -> real gateway -> agent's `write` tool -> handoff."""
    oc = openclaw_peer
    cfg = oc.engine_config(tmp_path)
    env = {**os.environ, **oc.env()}
    proc = subprocess.run(
        [str(BIN / "orchestrate"), "webster", "Find CTE of Zerodur", "--caller", "manager",
         "--json", "--config", str(cfg)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(proc.stdout)
    run_id, env_ = rec["runId"], rec["envelope"]
    assert rec["agent"] == "webster" and rec["status"] == "complete"
    assert rec["result"] == "stub result from webster: Find CTE of Zerodur"
    assert env_["outcome"] == "complete" and env_["attempts"] == 1
    assert env_["gateway_url"] == oc.url
    # With waitForCompletion the gateway's run id comes with the run's end, which the
    # engine waits for at most 1 s after the handoff (docs/protocol.md, section 5).
    assert env_["gateway_run_id"] or "run_ended" not in env_
    handoffs = load_config(cfg).handoffs_dir
    # The file came from the gateway's write tool: the stand-in only asked for it.
    calls = _settle(oc, run_id)
    assert [c["decision"] for c in calls] == ["tool_call", "final"]
    ask, done = calls
    assert ask["wrapped"] and ask["tool"] == "write" and ask["agent"] == "webster"
    assert ask["handoff_path"] == str(handoffs / "inbox" / f"{run_id}.json")
    # The gateway's `write` tool reads the file back to verify it: the engine records
    # next to the delivered file (never over it), so the write always verifies.
    told = done["tool_result"]
    assert told.startswith("Successfully wrote"), told
    body = ask["body"]
    assert body["stream"] is True
    assert "EXTERNAL, UNTRUSTED" in json.dumps(body["messages"])
    record = load_handoff(handoffs / f"{run_id}.json", run_id=run_id, agent="webster")
    assert record["envelope"]["received_at"] >= record["envelope"]["dispatched_at"]


def test_deliver_false_adds_no_turns(openclaw_peer: OpenClawSession, tmp_path: Path) -> None:
    """With `deliver` false (the default) a task costs the model exactly two calls."""
    oc = openclaw_peer
    cfg = oc.engine_config(tmp_path)
    mark = oc.stub.next_seq
    res = _orchestrate(oc, cfg, "webster", "Quiet task", "--caller", "manager", "--json")
    assert res.exit_code == 0, res.stderr
    run_id = _record(res)["runId"]
    _settle(oc, run_id)
    time.sleep(4.0)  # with deliver true, the extra turn came 1-5 s after the final call
    assert [c["decision"] for c in oc.stub.calls(run_id=run_id)] == ["tool_call", "final"]
    own_turns = [c for c in oc.stub.calls(since=mark) if not c["wrapped"]]
    assert own_turns == [], "the gateway added turns of its own"


def test_workflow_two_parallel_steps_and_a_dependent(openclaw_peer: OpenClawSession,
                                                     tmp_path: Path) -> None:
    oc = openclaw_peer
    cfg = oc.engine_config(tmp_path)
    res = CliRunner().invoke(
        workflow,
        ["run", str(PARALLEL), "--input", "topic=mirror mounts", "--non-interactive",
         "--json", "--config", str(cfg)],
        env=oc.env(), catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["status"] == "complete"
    assert {s: v["status"] for s, v in summary["steps"].items()} == {
        "left": "complete", "right": "complete", "join": "complete"}
    run_dir = Path(summary["run_dir"])

    def window(step: str) -> tuple[float, float]:
        att = json.loads((run_dir / f"{step}.json").read_text())["attempts"][0]
        return (parse_iso(att["dispatched_at"]).timestamp(),
                parse_iso(att["received_at"]).timestamp())

    (l0, l1), (r0, r1), (j0, _) = window("left"), window("right"), window("join")
    assert l0 < r1 and r0 < l1, "the independent steps did not run at the same time"
    assert j0 >= max(l1, r1) - 0.05, "the dependent step started before its inputs"
    for step in ("left", "right", "join"):  # let the agents' last turns finish here
        _settle(oc, json.loads((run_dir / f"{step}.json").read_text())["delegation_run_id"])
    joined = summary["outputs"]["joined"]
    assert joined == (
        "stub result from tech-lead: join: stub result from webster: left side of mirror "
        "mounts // stub result from secretary: right side of mirror mounts")


def test_wrong_token_is_refused_with_the_env_var_named(openclaw_peer: OpenClawSession,
                                                       tmp_path: Path) -> None:
    oc = openclaw_peer
    cfg = oc.engine_config(tmp_path)
    mark = oc.stub.next_seq
    oc.note_bad_auth()
    res = _orchestrate(oc, cfg, "intruder", "Let me in", "--caller", "manager")
    assert res.exit_code == 2
    assert res.stderr.strip() == (
        f"error: the gateway at {oc.url}/hooks/agent rejected the hooks token for "
        f"`intruder` (401 Unauthorized): the token from environment variable "
        f"`{WRONG_TOKEN_ENV}` does not match that gateway's `hooks.token`. Set it to the "
        "right value and run again."
    )
    assert WRONG_TOKEN not in res.output and oc.token not in res.output
    assert _errored_run_reached_model(oc, cfg, mark, 401) == []


@pytest.mark.parametrize("agent,gateway_says,fix", [
    ("ghost", 'unknown agentId "ghost"',
     "set `agents.ghost.agent_id` to an agent that gateway hosts"),
    ("outsider", "agentId is not allowed by hooks.allowedAgentIds",
     "add the agent id to `hooks.allowedAgentIds` in that gateway's config, or fix "
     "`agents.outsider.agent_id`"),
], ids=["unknown-agent-id", "not-in-allowedAgentIds"])
def test_agent_id_refusals_name_the_key_to_fix(openclaw_peer: OpenClawSession, tmp_path: Path,
                                               agent: str, gateway_says: str,
                                               fix: str) -> None:
    oc = openclaw_peer
    cfg = oc.engine_config(tmp_path)
    mark = oc.stub.next_seq
    res = _orchestrate(oc, cfg, agent, "Anyone there?", "--caller", "manager")
    assert res.exit_code == 2
    assert res.stderr.strip() == (
        f"error: the gateway at {oc.url}/hooks/agent refused the task for `{agent}` "
        f"(400: {gateway_says}): {fix}."
    )
    assert _errored_run_reached_model(oc, cfg, mark, 400) == []


def test_same_idempotency_key_runs_once(openclaw_peer: OpenClawSession,
                                        tmp_path: Path) -> None:
    """A retried dispatch (same Idempotency-Key, same body) gets the same run, not a second."""
    from engine.hooks import HooksClient, Target
    from engine.message import render_message

    oc = openclaw_peer
    run_id = new_run_id()
    drop = tmp_path / f"{run_id}.json"
    body = {
        "message": render_message(task="Count me once", run_id=run_id, agent="webster",
                                  caller="manager", handoff_path=drop, timeout=30),
        "name": "orchestrate manager->webster", "agentId": "main", "deliver": False,
        "timeoutSeconds": 30,
    }
    target = Target(agent="webster", url=oc.url, token=oc.token,
                    token_source=f"environment variable `{TOKEN_ENV}`")
    with HooksClient() as client:
        first = client.post_agent(target, body, idempotency_key=run_id,
                                  deadline=time.monotonic() + 30)
        again = client.post_agent(target, body, idempotency_key=run_id,
                                  deadline=time.monotonic() + 30)
    assert first.status_code == again.status_code == 200
    assert first.gateway_run_id and again.gateway_run_id == first.gateway_run_id
    _settle(oc, run_id)
    time.sleep(1.5)  # a second run, if any, would have asked by now
    assert [c["decision"] for c in oc.stub.calls(run_id=run_id)] == ["tool_call", "final"]
    assert load_handoff(drop, run_id=run_id, agent="webster")["status"] == "complete"


def test_agent_that_answers_without_writing_times_out(openclaw_peer: OpenClawSession,
                                                      tmp_path: Path) -> None:
    oc = openclaw_peer
    # Without waitForCompletion (the run's end unknown) this waits out the timeout;
    # tests/test_openclaw_agents.py has the same agent ending in seconds with it.
    cfg = oc.engine_config(tmp_path, wait_for_completion=False)
    res = _orchestrate(oc, cfg, "webster", "Think about it. stub_no_write", "--caller",
                       "manager", "--timeout", "6", "--json")
    assert res.exit_code == 4
    rec = _record(res)
    assert rec["envelope"]["outcome"] == "timeout"
    assert rec["envelope"]["error"].startswith("no handoff from `webster` within 6 s")
    calls = oc.stub.calls(run_id=rec["runId"])
    assert [c["decision"] for c in calls] == ["text"], "the agent was asked and answered"
    assert not (load_config(cfg).handoffs_dir / "rejected").exists()


@pytest.mark.parametrize("status,code", [("partial", 0), ("blocked", 1)])
def test_agent_status_maps_to_exit_code(openclaw_peer: OpenClawSession, tmp_path: Path,
                                        status: str, code: int) -> None:
    oc = openclaw_peer
    cfg = oc.engine_config(tmp_path)
    res = _orchestrate(oc, cfg, "secretary", f"Try it. stub_status: {status}", "--caller",
                       "manager")
    assert res.exit_code == code, res.output
    assert res.stdout.startswith(f"{status} (confidence low): secretary for manager, ")
    run_id = re.search(r"orch-\d{8}T\d{6}-[0-9a-f]{8}", res.stdout)
    assert run_id
    _settle(oc, run_id.group(0))


def test_agent_skill_reaches_the_agent(openclaw_peer: OpenClawSession, tmp_path: Path) -> None:
    """What `agent-skill install` writes is in the agent's prompt on the real gateway."""
    from engine.agentskill import SKILL_DIR, agents_section, install, is_installed

    oc = openclaw_peer
    cfg = oc.engine_config(tmp_path)
    assert is_installed(oc.workspace)  # by the peer fixture, before the gateway started
    skill = oc.workspace / SKILL_DIR / "SKILL.md"

    def system_prompt() -> str:
        res = _orchestrate(oc, cfg, "webster", "With the skill", "--caller", "manager",
                           "--json")
        assert res.exit_code == 0, res.stderr
        ask = _settle(oc, _record(res)["runId"])[0]
        return message_text(ask["body"]["messages"][0])

    system = system_prompt()
    assert "<name>orchestrator-handoff</name>" in system
    assert f"<location>{skill}</location>" in system
    assert agents_section() in system, "the AGENTS.md section is not in the prompt"
    # AGENTS.md is read for every run: installing again for a named agent shows at once.
    assert install(oc.workspace, agent="webster") == [skill, oc.workspace / "AGENTS.md"]
    try:
        assert agents_section(agent="webster") in system_prompt()
    finally:
        install(oc.workspace)


def _doc_blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", DOCS.read_text(encoding="utf-8"),
                      flags=re.S | re.M)


def test_docs_engine_configs_load(tmp_path: Path) -> None:
    blocks = _doc_blocks("yaml")
    assert len(blocks) >= 2
    for i, block in enumerate(blocks):
        path = tmp_path / f"doc-{i}.yaml"
        path.write_text(block, encoding="utf-8")
        cfg = load_config(path)
        assert all(a.token_env and a.url.startswith("http") for a in cfg.agents.values())


def test_docs_gateway_configs_validate(openclaw_peer: OpenClawSession,
                                       tmp_path: Path) -> None:
    """The gateway configs in docs/openclaw.md pass the real `openclaw config validate`."""
    blocks = _doc_blocks("json5")
    assert len(blocks) >= 2
    gw = openclaw_peer.peer.gateway
    for i, block in enumerate(blocks):
        path = tmp_path / f"doc-{i}.json5"
        path.write_text(block, encoding="utf-8")
        env = {**gw.env(), "OPENCLAW_CONFIG_PATH": str(path),
               "OPENCLAW_STATE_DIR": str(tmp_path / f"state-{i}"), "HOME": str(tmp_path)}
        proc = subprocess.run(gw.command("config", "validate"), env=env, capture_output=True,
                              text=True, timeout=120, check=False)
        assert proc.returncode == 0 and "Config valid" in proc.stdout, (
            f"docs/openclaw.md json5 block {i + 1}: {proc.stdout}{proc.stderr}")


def test_deliver_true_adds_a_gateway_turn(openclaw_peer: OpenClawSession,
                                          tmp_path: Path) -> None:
    """The contrast to the default: `--deliver` makes the gateway add a main-session turn.

    Last in this module: that extra turn must not land in another test's quiet window.
    The stand-in answers it NO_REPLY, so nothing is written.
    """
    oc = openclaw_peer
    cfg = oc.engine_config(tmp_path)
    mark = oc.stub.next_seq
    res = _orchestrate(oc, cfg, "webster", "Tell everyone", "--caller", "manager",
                       "--deliver", "--json")
    assert res.exit_code == 0, res.stderr
    run_id = _record(res)["runId"]
    assert oc.stub.wait_for(
        lambda log: any(r["seq"] >= mark and not r["wrapped"] for r in log), 30
    ), "no extra turn with deliver true: the deliver-false test proves nothing"
    extra = [c for c in oc.stub.calls(since=mark) if not c["wrapped"]]
    assert extra and {c["decision"] for c in extra} == {"no_reply"}
    handoffs = load_config(cfg).handoffs_dir
    assert sorted(p.name for p in handoffs.glob("*.json")) == [f"{run_id}.json"]


def test_model_error_ends_in_our_timeout(openclaw_peer: OpenClawSession,
                                         tmp_path: Path) -> None:
    """The model fails (HTTP 400): no handoff, so exit 4; the gateway's follow-up turn
    (it reports the failed run to the main session) is answered NO_REPLY, writing nothing."""
    oc = openclaw_peer
    cfg = oc.engine_config(tmp_path, wait_for_completion=False)  # see the test above
    mark = oc.stub.next_seq
    res = _orchestrate(oc, cfg, "webster", "Break. stub_fail: 400", "--caller", "manager",
                       "--timeout", "5", "--json")
    assert res.exit_code == 4
    run_id = _record(res)["runId"]
    assert [c["decision"] for c in oc.stub.calls(run_id=run_id)] == ["fail"]
    assert oc.stub.wait_for(
        lambda log: any(r["seq"] >= mark and not r["wrapped"] for r in log), 20)
    extra = [c for c in oc.stub.calls(since=mark) if not c["wrapped"]]
    assert extra and {c["decision"] for c in extra} == {"no_reply"}
    handoffs = load_config(cfg).handoffs_dir
    assert sorted(p.name for p in handoffs.glob("*.json")) == [f"{run_id}.json"]
