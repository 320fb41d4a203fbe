"""Capability routing, validation, hierarchical sub-delegation and `orchestrate tree`."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.cli import orchestrate
from engine.config import Config, load_config
from engine.delegate import DelegationRequest, Delegator, Outcome, open_delegator
from engine.errors import AclDeniedError, RunStateError, UnknownAgentError, UsageError
from tests.helpers import demo_config, gated_agent, write_config

SUB_AGENT = """
import json, os, subprocess, sys
out = subprocess.run(
    [os.path.join(os.path.dirname(sys.executable), "orchestrate"), "webster",
     "sub-task from tech-lead", "--caller", "tech-lead",
     "--parent-run-id", os.environ["ORCH_RUN_ID"], "--config", os.environ["CFG"], "--json"],
    capture_output=True, text=True)
rec = json.loads(out.stdout)
from engine.handoff import make_handoff, write_handoff
write_handoff(__import__("pathlib").Path(os.environ["ORCH_HANDOFF_PATH"]), make_handoff(
    run_id=os.environ["ORCH_RUN_ID"], agent="tech-lead", status="complete",
    result="checked with webster: " + rec["result"][:60], confidence="high",
    key=os.environ["ORCH_HANDOFF_KEY"]))
"""


def _cfg(tmp_path: Path, **extra: Any) -> Config:
    raw = demo_config(tmp_path, **extra)
    raw["gateway"]["agents"]["tech-lead"] = {
        "kind": "command",
        "argv": [sys.executable, "-c", SUB_AGENT],
        "env": {"CFG": str(tmp_path / "orchestrator.yaml")},
        "timeout": 30,
    }
    return load_config(write_config(tmp_path, raw))


def _run(*args: str) -> Any:
    return CliRunner().invoke(orchestrate, list(args), catch_exceptions=False)


def test_routing_picks_the_idle_agent(tmp_path: Path) -> None:
    # study-builder stays busy until the test has looked (the file `go` appears).
    go = tmp_path / "go"
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["study-builder"] = gated_agent(go)
    cfg = load_config(write_config(tmp_path, raw))
    with open_delegator(cfg) as d:
        first = d.route("manager", "research")
        # a tie goes to the first in the registry: study-builder is listed before webster
        assert first.agent == "study-builder"
        assert first.candidates == (("study-builder", 0), ("webster", 0))
        busy = threading.Thread(
            target=d.delegate,
            args=(
                DelegationRequest(target="study-builder", task="busy", caller="manager"),
            ),
        )
        busy.start()
        try:
            deadline = time.monotonic() + 60
            chosen = d.route("manager", "research")
            while chosen.agent == "study-builder":
                assert time.monotonic() < deadline, "study-builder never looked busy"
                time.sleep(0.02)
                chosen = d.route("manager", "research")
        finally:
            go.touch()
            busy.join()
    assert chosen.agent == "webster"
    assert dict(chosen.candidates) == {"webster": 0, "study-builder": 1}
    assert "* webster: 0 in flight" in chosen.explain()


def test_routing_respects_the_acl(demo_cfg: Config) -> None:
    d = Delegator(demo_cfg)
    route = d.route("optimizer", "research")
    assert [n for n, _ in route.candidates] == ["study-builder", "webster"]
    with pytest.raises(
        AclDeniedError, match="no agent with capability `research` may be used by `auditor`"
    ):
        d.route("auditor", "research")
    with pytest.raises(
        UnknownAgentError, match="no agent has capability `reserch`; did you mean `research`?"
    ):
        d.route("manager", "reserch")
    d.close()


def test_capability_dry_run_cli(demo_cfg: Config) -> None:
    res = _run(
        "--capability",
        "research",
        "CTE of ULE",
        "--caller",
        "manager",
        "--dry-run",
        "--config",
        str(demo_cfg.path),
    )
    assert res.exit_code == 0
    assert res.stdout.splitlines()[0] == (
        "capability `research` -> `study-builder` (fewest tasks in flight; ties go to the first "
        "in the registry)"
    )
    assert res.stdout.splitlines()[-1] == (
        "dry run: `manager` -> `study-builder` passes every check; nothing sent."
    )
    assert not (demo_cfg.handoffs_dir).exists()


def test_validate_approve_and_reject(demo_cfg: Config) -> None:
    c = ["--caller", "manager", "--config", str(demo_cfg.path), "--validate", "--json"]
    res = _run("webster", "CTE of ULE", *c)
    assert res.exit_code == 0
    rec = json.loads(res.stdout)
    assert rec["envelope"]["validation"]["approved"] is True
    assert rec["envelope"]["validation"]["validator"] == "tech-lead"
    res = _run("webster", "CTE of ULE DEMO_REJECT", *c)
    assert res.exit_code == 1
    rec = json.loads(res.stdout)
    assert rec["envelope"]["validation"]["approved"] is False
    assert rec["status"] == "complete"  # the agent's own status is kept
    res = _run("webster", "CTE of ULE DEMO_REJECT", *c, "--no-fail-on-reject")
    assert res.exit_code == 0


def test_validator_obeys_the_callers_acl(demo_cfg: Config) -> None:
    res = _run(
        "webster",
        "x",
        "--caller",
        "optimizer",
        "--validate",
        "--validator",
        "auditor",
        "--config",
        str(demo_cfg.path),
        "--dry-run",
    )
    assert res.exit_code == 5
    assert "ACL refuses `optimizer` -> `auditor`" in res.stderr


def test_sub_delegation_from_inside_an_agent_and_tree(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    with open_delegator(cfg) as d:
        top = d.delegate(
            DelegationRequest(target="tech-lead", task="check CTE", caller="manager", timeout=60)
        )
    assert top.outcome is Outcome.COMPLETE, top.record
    assert top.record["result"].startswith("checked with webster: [demo output from webster")
    subs = list((cfg.handoffs_dir / "sub").glob("orch-*.json"))
    assert len(subs) == 1
    sub = json.loads(subs[0].read_text())
    assert sub["envelope"]["parent_run_id"] == top.run_id
    assert sub["envelope"]["chain"] == ["manager", "tech-lead"]
    assert sub["envelope"]["depth"] == 1
    res = _run("tree", top.run_id, "--config", str(cfg.path))
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert lines[0].startswith(f"{top.run_id}  manager -> tech-lead  complete (high)")
    assert lines[1].startswith(f"└── {sub['runId']}  tech-lead -> webster  complete")


def test_depth_and_cycle_are_refused(tmp_path: Path) -> None:
    acl = {
        "manager": ["*"],
        "tech-lead": ["webster"],
        "webster": ["tech-lead", "secretary"],
        "secretary": ["auditor"],
    }
    raw = demo_config(tmp_path, acl=acl, max_depth=2)
    cfg = load_config(write_config(tmp_path, raw))
    with open_delegator(cfg) as d:
        p1 = d.delegate(DelegationRequest(target="tech-lead", task="t", caller="manager"))
        p2 = d.delegate(
            DelegationRequest(
                target="webster", task="t", caller="tech-lead", parent_run_id=p1.run_id
            )
        )
        assert p2.record_path.parent.name == "sub"
        with pytest.raises(AclDeniedError) as err:
            d.delegate(
                DelegationRequest(
                    target="tech-lead", task="t", caller="webster", parent_run_id=p2.run_id
                )
            )
        assert "delegation cycle refused: tech-lead -> webster -> tech-lead" in str(err.value)
        p3 = d.delegate(
            DelegationRequest(
                target="secretary", task="t", caller="webster", parent_run_id=p2.run_id
            )
        )
        assert p3.envelope["depth"] == 2
        with pytest.raises(AclDeniedError) as err:
            d.delegate(
                DelegationRequest(
                    target="auditor", task="t", caller="secretary", parent_run_id=p3.run_id
                )
            )
        assert "is deeper than `max_depth` (2)" in str(err.value)
        with pytest.raises(UsageError, match="does not match parent run"):
            d.delegate(
                DelegationRequest(
                    target="webster", task="t", caller="manager", parent_run_id=p1.run_id
                )
            )
        with pytest.raises(RunStateError, match="parent run `orch-nope` is not known"):
            d.delegate(
                DelegationRequest(
                    target="webster", task="t", caller="tech-lead", parent_run_id="orch-nope"
                )
            )
