"""The merge rule in both stores: a gateway's stand-in handoff never replaces an ending
the engine decided; the agent's own late handoff still does (docs/protocol.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.config import load_config
from engine.files import new_run_id
from engine.gateway.agents import GATEWAY_NOTE
from engine.handoff import key_hash, make_handoff, new_key
from engine.store import open_store
from tests.helpers import demo_config, write_config


def _gone_pid() -> int:
    """The pid of a process that has ended (its waiter is not alive)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(params=["files", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    raw = demo_config(tmp_path)
    if request.param == "postgresql":
        raw["store"] = request.getfixturevalue("pg_url")
    return open_store(load_config(write_config(tmp_path, raw)))


@pytest.mark.parametrize("ending", ["lost", "timeout", "cancelled"])
def test_a_stand_in_never_replaces_the_engines_ending(store: Any, ending: str) -> None:
    run_id, key = new_run_id(), new_key()
    env = {"caller": "manager", "target": "webster", "outcome": "dispatched",
           "key_sha256": key_hash(key), "pid": _gone_pid(), "timeout_s": 60}  # fmt: skip
    store.pending(run_id, env, sub=False)
    store.finalize(run_id, dict(env, outcome=ending, error="the engine's reason"),
                   sub=False, keep_pending=True, agent="webster")  # fmt: skip
    stand_in = make_handoff(run_id=run_id, agent="webster", status="failed", key=key,
                            result="the agent exited without a handoff", notes=GATEWAY_NOTE)
    store.put_handoff(run_id, stand_in, sub=False)
    got = store.deliver(run_id, sub=False)
    assert got.state == "duplicate", got
    record = store.read(run_id, sub=False)
    assert record["envelope"]["outcome"] == ending and "status" not in record
    (kept,) = record["envelope"]["also_received"]
    assert kept["reason"] == f"a gateway-written fallback, after the engine recorded `{ending}`"
    # The agent's own late handoff still supersedes the engine's ending.
    own = make_handoff(run_id=run_id, agent="webster", status="complete", key=key,
                       result="0.05 ppm/K")
    store.put_handoff(run_id, own, sub=False)
    got = store.deliver(run_id, sub=False)
    assert got.state == "recorded", got
    record = store.read(run_id, sub=False)
    assert record["status"] == "complete" and record["envelope"]["supersedes"] == ending
    assert "fallback" not in record["envelope"]


def test_a_stand_in_is_kept_once_however_often_the_run_is_looked_at(store: Any) -> None:
    run_id, key = new_run_id(), new_key()
    env = {"caller": "manager", "target": "webster", "outcome": "dispatched",
           "key_sha256": key_hash(key), "pid": _gone_pid(), "timeout_s": 60}  # fmt: skip
    store.pending(run_id, env, sub=False)
    store.finalize(run_id, dict(env, outcome="timeout", error="the engine's reason"),
                   sub=False, keep_pending=True, agent="webster")  # fmt: skip
    stand_in = make_handoff(run_id=run_id, agent="webster", status="failed", key=key,
                            result="the agent exited without a handoff", notes=GATEWAY_NOTE)
    store.put_handoff(run_id, stand_in, sub=False)
    states = [store.deliver(run_id, sub=False).state for _ in range(5)]
    assert states[0] == "duplicate" and "duplicate" not in states[1:], states
    assert len(store.read(run_id, sub=False)["envelope"]["also_received"]) == 1


@pytest.mark.parametrize("ending", ["timeout", "lost"])
def test_a_model_agents_late_answer_is_its_own(store: Any, ending: str) -> None:
    """The local gateway writes a model agent's answer for it (MODEL_NOTE): that answer
    supersedes the engine's ending like any agent's own late handoff."""
    from engine.handoff import MODEL_NOTE

    run_id, key = new_run_id(), new_key()
    env = {"caller": "manager", "target": "webster", "outcome": "dispatched",
           "key_sha256": key_hash(key), "pid": _gone_pid(), "timeout_s": 60}  # fmt: skip
    store.pending(run_id, env, sub=False)
    store.finalize(run_id, dict(env, outcome=ending, error="the engine's reason"),
                   sub=False, keep_pending=True, agent="webster")  # fmt: skip
    answer = make_handoff(run_id=run_id, agent="webster", status="complete", key=key,
                          result="model answer", notes=f"{MODEL_NOTE}: model `m`, 3.0 s")
    store.put_handoff(run_id, answer, sub=False)
    assert store.deliver(run_id, sub=False).state == "recorded"
    record = store.read(run_id, sub=False)
    assert record["status"] == "complete" and record["envelope"]["supersedes"] == ending
