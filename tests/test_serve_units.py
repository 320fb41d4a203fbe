"""The parts of serve that need no server: the event feed, idempotency keys, the SVG."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from engine.idempotency import IdempotencyConflict, IdempotencyKeys
from engine.serve.dashboard import dag_svg
from engine.serve.hub import EventHub, read_journal


def _append(path: Path, *events: dict[str, object], tail: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        for ev in events:
            fh.write(json.dumps(ev) + "\n")
        fh.write(tail)


def test_hub_numbers_new_lines_and_skips_a_torn_one(tmp_path: Path) -> None:
    runs = tmp_path / "workflows"
    journal = runs / "wf-a" / "events.jsonl"
    _append(journal, {"event": "run_started", "at": "x"})
    seen: list[tuple[str, str]] = []
    hub = EventHub(runs, on_event=lambda rid, ev: seen.append((rid, ev["event"])))
    hub.prime()  # what was there before the server started is not news
    assert hub.scan() == 0 and hub.seq == 0
    _append(journal, {"event": "step_started", "step": "s"}, tail='{"event": "step_fin')
    assert hub.scan() == 1
    assert seen == [("wf-a", "step_started")]
    ((ev, text),) = hub.since(0)
    assert ev == {"event": "step_started", "step": "s", "runId": "wf-a", "line": 2, "seq": 1}
    assert json.loads(text) == ev
    with open(journal, "a", encoding="utf-8") as fh:
        fh.write('ished", "step": "s"}\n')  # the torn line completes
    _append(runs / "wf-b" / "events.jsonl", {"event": "run_started"})
    assert hub.scan() == 2
    assert sorted((e["runId"], e["line"]) for e, _ in hub.since(1)) == [("wf-a", 3), ("wf-b", 1)]
    assert [e["event"] for e, _ in hub.since(0, "wf-a")] == ["step_started", "step_finished"]
    assert [e["line"] for e in read_journal(journal, after=1)] == [2, 3]


def test_hub_primed_mid_line_reads_that_line_once_complete(tmp_path: Path) -> None:
    """The server starts while another process writes a journal line (a local
    `workflow answer`): the line is news once complete, numbered as the journal's."""
    runs = tmp_path / "workflows"
    journal = runs / "wf-a" / "events.jsonl"
    _append(journal, {"event": "run_started"}, tail="not json\n")
    _append(journal, {"event": "step_waiting_input", "step": "s"}, tail='{"event": "step_an')
    seen: list[str] = []
    hub = EventHub(runs, on_event=lambda rid, ev: seen.append(ev["event"]))
    hub.prime()
    assert hub.scan() == 0
    with open(journal, "a", encoding="utf-8") as fh:
        fh.write('swered", "step": "s", "answer": "0-50 C"}\n')
    assert hub.scan() == 1 and seen == ["step_answered"]
    ((ev, _),) = hub.since(0)
    assert ev["line"] == 4 and ev["answer"] == "0-50 C"
    assert [e["line"] for e in read_journal(journal)][-1] == 4


def test_hub_keeps_a_bounded_buffer(tmp_path: Path) -> None:
    runs = tmp_path / "workflows"
    hub = EventHub(runs, keep=3)
    journal = runs / "wf-a" / "events.jsonl"
    for i in range(10):
        _append(journal, {"event": "step_queued", "n": i})
        hub.scan()
    assert hub.seq == 10
    assert len(hub.buffer) <= 6 and hub.oldest() == hub.base
    assert [e["n"] for e, _ in hub.since(7)] == [7, 8, 9]
    assert [e["seq"] for e, _ in hub.since(0)][0] == hub.oldest()
    assert hub.since(10) == []


def test_hub_wakes_waiters_from_other_threads(tmp_path: Path) -> None:
    runs = tmp_path / "workflows"
    journal = runs / "wf-a" / "events.jsonl"
    hub = EventHub(runs, poll=30)  # only the wake-up can make it scan in time

    async def scenario() -> list[str]:
        task = asyncio.create_task(hub.run())
        await asyncio.sleep(0)
        changed = hub.changed()
        _append(journal, {"event": "run_started"})
        await asyncio.get_running_loop().run_in_executor(None, hub.wake, "wf-a")
        await asyncio.wait_for(changed.wait(), 10)
        hub.publish("orch-1", "delegation_started", target="webster")
        await asyncio.wait_for(hub.changed().wait(), 10)
        task.cancel()
        return [e["event"] for e, _ in hub.since(0)]

    assert asyncio.run(scenario()) == ["run_started", "delegation_started"]


def test_idempotency_keys(tmp_path: Path) -> None:
    keys = IdempotencyKeys(tmp_path)
    first = keys.claim("delegate", "k/../1", {"task": "a"})
    assert first.new and first.run_id and first.run_id.startswith("orch-")
    again = keys.claim("delegate", "k/../1", {"task": "a"})
    assert not again.new and again.run_id == first.run_id
    assert keys.claim("workflow", "k/../1", {"task": "a"}, run_id="").new  # per kind
    with pytest.raises(IdempotencyConflict) as err:
        keys.claim("delegate", "k/../1", {"task": "b"})
    assert "already used for a different delegate request" in str(err.value)
    pending = keys.claim("workflow", "k/../1", {"task": "a"}, run_id="")
    assert not pending.new and pending.run_id is None  # claimed, its run not started yet
    keys.bind("workflow", "k/../1", "wf-1")
    assert keys.claim("workflow", "k/../1", {"task": "a"}, run_id="").run_id == "wf-1"
    keys.release("workflow", "k/../1")
    assert keys.claim("workflow", "k/../1", {"task": "a"}, run_id="").new
    assert sorted(p.parent.name for p in tmp_path.rglob("*.json")) == [".idempotency"] * 2
    with pytest.raises(Exception) as bad:
        keys.claim("delegate", "", {})
    assert "idempotency key '' is not usable" in str(bad.value)


def test_dag_svg_draws_layers_states_and_escapes() -> None:
    plan = {
        "groups": [["a"], ["b", "c"]],
        "steps": {
            "a": {"agent": "webster", "depends_on": []},
            "b": {"agent": "<script>", "depends_on": ["a"], "gate": True},
            "c": {"candidates": ["x", "y"], "depends_on": ["a"]},
        },
    }
    svg = dag_svg(plan, {"a": "complete", "b": "waiting_approval", "c": "failed"})
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<line ") == 2 and svg.count('class="node ') == 3
    assert 'class="node state-waiting_approval"' in svg and "b [gate]" in svg
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert "x/y" in svg and "#ef9a9a" in svg  # a failed step is red


def test_the_listening_socket_is_tcp_so_responses_skip_nagle() -> None:
    """asyncio turns on TCP_NODELAY for accepted connections only of IPPROTO_TCP sockets."""
    import socket

    from engine.errors import ConfigError
    from engine.serve import _bind

    with _bind("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP
        port = sock.getsockname()[1]
        sock.listen()
        with pytest.raises(ConfigError) as err:
            _bind("127.0.0.1", port)
    assert f"cannot listen on 127.0.0.1:{port}" in str(err.value)


def test_prometheus_text_with_an_enabled_pool(tmp_path: Path) -> None:
    from engine.config import config_from_dict
    from engine.serve.app import pool_status
    from engine.serve.prom import ServeMetrics
    from tests.helpers import demo_config

    raw = demo_config(tmp_path)
    raw["pool"] = {"enabled": True, "max_tokens": 3}
    cfg = config_from_dict(raw)
    status = pool_status(cfg)
    assert status["enabled"] is True and status["in_use"] == []
    metrics = ServeMetrics(runs_by_state=lambda: {"complete": 2}, pool=lambda: status)
    metrics.delegation_finished("webster", "complete", 1500.0)
    metrics.step_finished("auditor", "failed", None)
    text = metrics.render().decode()
    assert f"orchestrator_pool_tokens {float(status['size'])}" in text
    assert "orchestrator_pool_tokens_in_use 0.0" in text
    assert 'orchestrator_runs{state="complete"} 2.0' in text
    assert 'orchestrator_delegations_total{agent="webster",outcome="complete"} 1.0' in text
    assert 'orchestrator_delegation_seconds_bucket{agent="webster",le="2.5"} 1.0' in text
    assert 'orchestrator_delegation_seconds_bucket{agent="webster",le="1.0"} 0.0' in text
    assert 'orchestrator_steps_total{agent="auditor",status="failed"} 1.0' in text
