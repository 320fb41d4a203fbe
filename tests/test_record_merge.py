"""The merge rule (``engine.record.deliver``) on real files, one case per rule."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from engine.files import parse_iso, utcnow_iso, write_json_atomic
from engine.gateway.agents import GATEWAY_NOTE
from engine.handoff import key_hash, make_handoff
from engine.record import deliver, pending_path, read_json, reconcile, write_record

RUN = "orch-20260101T000000-0000cafe"
KEY = "k" * 32


def _envelope(**kw: Any) -> dict[str, Any]:
    env = {
        "caller": "manager",
        "target": "webster",
        "outcome": "dispatched",
        "dispatched_at": "2026-01-01T00:00:00.000Z",
        "deadline_at": "2026-01-01T00:02:00.000Z",
        "pid": 1 << 22,  # no such process: nobody is waiting
        "key_sha256": key_hash(KEY),
    }
    env.update(kw)
    return env


def _handoff(result: str = "answer", **kw: Any) -> dict[str, Any]:
    kw.setdefault("key", KEY)
    return make_handoff(run_id=RUN, agent="webster", status="complete", result=result, **kw)


@pytest.fixture
def records(tmp_path: Path) -> Path:
    d = tmp_path / "handoffs"
    d.mkdir()
    return d


def _inbox(records: Path, n: int = 1) -> Path:
    name = f"{RUN}.json" if n == 1 else f"{RUN}.{n}.json"
    return records / "inbox" / name


def test_an_agents_record_is_final_and_a_fallback_never_supersedes_it(records: Path) -> None:
    write_json_atomic(pending_path(records, RUN), _envelope(outcome="timeout"))
    write_json_atomic(_inbox(records), _handoff("the agent's own"))
    assert deliver(records, RUN).state == "recorded"
    write_json_atomic(_inbox(records, 2), _handoff("(exited 0)", notes=GATEWAY_NOTE))
    got = deliver(records, RUN)
    assert got.state == "duplicate"
    record = read_json(records / f"{RUN}.json")
    assert record["result"] == "the agent's own" and "fallback" not in record["envelope"]
    [dup] = record["envelope"]["also_received"]
    assert dup["reason"].startswith("a gateway-written fallback")
    assert read_json(Path(dup["file"]))["notes"] == GATEWAY_NOTE
    assert deliver(records, RUN).state == "already"  # listed once, however often read


def test_the_agents_own_handoff_supersedes_a_fallback(records: Path) -> None:
    write_json_atomic(pending_path(records, RUN), _envelope())
    write_json_atomic(_inbox(records), _handoff("(exited 0)", notes=GATEWAY_NOTE))
    first = deliver(records, RUN)
    assert first.state == "recorded" and first.record["envelope"]["fallback"] is True
    write_json_atomic(_inbox(records, 2), _handoff("the real answer"))
    got = deliver(records, RUN)
    assert got.state == "recorded"
    assert got.record["result"] == "the real answer"
    assert got.record["envelope"]["supersedes"] == "fallback"
    assert "fallback" not in got.record["envelope"]


def test_late_only_after_the_deadline(records: Path) -> None:
    soon = _envelope(outcome="cancelled", deadline_at="2999-01-01T00:00:00Z")
    write_json_atomic(pending_path(records, RUN), soon)
    write_record(records, RUN, soon)
    write_json_atomic(_inbox(records), _handoff())
    env = deliver(records, RUN).record["envelope"]
    assert env["late"] is False and env["supersedes"] == "cancelled"


def test_timeout_superseded_late(records: Path) -> None:
    env = _envelope(outcome="timeout")
    write_json_atomic(pending_path(records, RUN), env)
    write_record(records, RUN, env)
    write_json_atomic(_inbox(records), _handoff())
    assert [p.name for p in reconcile(records)] == [f"{RUN}.json"]
    got = read_json(records / f"{RUN}.json")["envelope"]
    assert got["late"] is True and got["supersedes"] == "timeout" and got["outcome"] == "complete"
    assert not pending_path(records, RUN).exists()
    assert reconcile(records) == []


def test_the_waiting_caller_is_never_late(records: Path) -> None:
    env = _envelope(deadline_at="2000-01-01T00:00:00Z")  # the wall clock disagrees
    write_json_atomic(_inbox(records), _handoff())
    got = deliver(records, RUN, envelope=env)
    assert got.state == "recorded" and got.record["envelope"]["late"] is False


@pytest.mark.parametrize("mtime", [0, 4_000_000_000])
def test_received_at_is_our_clock_not_the_files(records: Path, mtime: int) -> None:
    write_json_atomic(pending_path(records, RUN), _envelope(dispatched_at=utcnow_iso()))
    write_json_atomic(_inbox(records), _handoff())
    os.utime(_inbox(records), (mtime, mtime))
    env = deliver(records, RUN).record["envelope"]
    assert abs((parse_iso(env["received_at"]) - parse_iso(utcnow_iso())).total_seconds()) < 60
    assert 0 <= env["duration_ms"] < 60_000


def test_unknown_run_is_left_alone(records: Path) -> None:
    write_json_atomic(_inbox(records), _handoff())
    assert deliver(records, RUN).state == "unknown"
    assert _inbox(records).exists() and not (records / f"{RUN}.json").exists()


def test_a_live_waiter_is_not_preempted(records: Path) -> None:
    write_json_atomic(pending_path(records, RUN), _envelope(pid=os.getpid()))
    write_json_atomic(_inbox(records), _handoff())
    assert deliver(records, RUN).state == "waiting"
    assert not (records / f"{RUN}.json").exists()


def test_a_wrong_key_after_a_timeout_is_listed_in_record_and_pending(records: Path) -> None:
    env = _envelope(outcome="timeout")
    write_json_atomic(pending_path(records, RUN), env)
    write_record(records, RUN, env)
    write_json_atomic(_inbox(records), _handoff("forged", key="z" * 32))
    got = deliver(records, RUN)
    assert got.state == "refused" and got.problem.kind == "key"
    assert read_json(records / f"{RUN}.json")["envelope"]["rejected"][0]["file"] == str(got.kept)
    assert read_json(pending_path(records, RUN))["rejected"][0]["file"] == str(got.kept)
    assert read_json(got.kept)["result"] == "forged"


def test_missing_key_policy_comes_from_the_envelope(records: Path) -> None:
    write_json_atomic(pending_path(records, RUN), _envelope(handoff_key="optional"))
    legacy = make_handoff(run_id=RUN, agent="webster", status="partial", result="old")
    write_json_atomic(_inbox(records), legacy)
    env = deliver(records, RUN).record["envelope"]
    assert env["unverified"] is True and env["key_verified"] is False
