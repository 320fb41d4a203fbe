"""The gateway's receiver (``POST /handoffs/{runId}``) refuses a handoff nothing waits
for, as ``orchestrate handoff write`` does, and keeps a bounded number per run.

Real parts: the local gateway on an ephemeral 127.0.0.1 port, real HTTP, real files.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engine.config import config_from_dict
from engine.gateway import LocalGateway
from engine.gateway.server import MAX_HANDOFFS_PER_RUN
from engine.handoff import key_hash, make_handoff, new_key
from engine.record import read_json, write_pending

TOKEN = "trust-receiver-token-5a1d"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[LocalGateway]:
    argv = [sys.executable, "-m", "engine.gateway.demo_agent", "--role", "webster"]
    cfg = config_from_dict(
        {
            "handoffs_dir": "handoffs",
            "agents": {"webster": {"url": "local"}},
            "gateway": {"agents": {"webster": {"kind": "command", "argv": argv}}},
        },
        path=tmp_path / "orchestrator.yaml",
    )
    gateway = LocalGateway(cfg, token=TOKEN, port=0).start()
    yield gateway
    gateway.stop()


def test_a_handoff_for_a_run_nobody_waits_for_is_refused(gw: LocalGateway) -> None:
    run_id = "orch-20261130T120000-0badc0de"
    body = make_handoff(run_id=run_id, agent="webster", status="complete", result="x")
    with httpx.Client(timeout=60) as client:
        for _ in range(3):
            resp = client.post(f"{gw.url}/handoffs/{run_id}", json=body, headers=AUTH)
            assert resp.status_code == 404, resp.text
            answer = resp.json()
            assert answer["ok"] is False and answer["runId"] == run_id
            assert f"no delegation `{run_id}` is waiting" in answer["error"]
    records = gw.cfg.handoffs_dir
    assert not records.exists() or not list(records.rglob(f"{run_id}*"))


def test_handoffs_kept_per_run_are_bounded(gw: LocalGateway) -> None:
    run_id, key = "orch-20261130T120000-0000f00d", new_key()
    records = gw.cfg.handoffs_dir
    write_pending(
        records,
        run_id,
        {"target": "webster", "caller": "manager", "outcome": "dispatched",
         "key_sha256": key_hash(key), "pid": 2**22 + 7},
    )  # fmt: skip
    with httpx.Client(timeout=60) as client:
        codes = []
        for n in range(MAX_HANDOFFS_PER_RUN + 4):
            body = make_handoff(
                run_id=run_id, agent="webster", status="complete", result=f"n{n}", key=key
            )
            resp = client.post(f"{gw.url}/handoffs/{run_id}", json=body, headers=AUTH)
            codes.append(resp.status_code)
        assert codes[0] == 200
        assert set(codes[1:]) == {409}  # kept and listed in the record, then not kept
        assert "no more are kept" in resp.json()["error"] and resp.json()["runId"] == run_id
    kept = [p for p in records.rglob(f"{run_id}*.json") if ".pending" not in p.parts]
    # the inbox file, the record, and the copies set aside: no more than the bound allows
    assert len(kept) <= MAX_HANDOFFS_PER_RUN + 1
    record = read_json(records / f"{run_id}.json")
    assert record["result"] == "n0"
    assert len(record["envelope"]["also_received"]) == MAX_HANDOFFS_PER_RUN - 1


def _pending(records: Path, run_id: str, key: str, **extra: object) -> None:
    write_pending(
        records,
        run_id,
        {"target": "webster", "caller": "manager", "outcome": "dispatched",
         "key_sha256": key_hash(key), "pid": 2**22 + 7, **extra},
    )  # fmt: skip


def test_forged_handoffs_do_not_use_up_the_cap(gw: LocalGateway) -> None:
    run_id, key = "orch-20261130T120000-0000beef", new_key()
    records = gw.cfg.handoffs_dir
    _pending(records, run_id, key)
    with httpx.Client(timeout=60) as client:
        for n in range(MAX_HANDOFFS_PER_RUN + 2):
            forged = make_handoff(
                run_id=run_id, agent="webster", status="complete", result=f"f{n}", key=new_key()
            )
            resp = client.post(f"{gw.url}/handoffs/{run_id}", json=forged, headers=AUTH)
            assert resp.status_code == 403, resp.text
            assert "nothing was stored" in resp.json()["error"]
        unkeyed = make_handoff(run_id=run_id, agent="webster", status="complete", result="u")
        resp = client.post(f"{gw.url}/handoffs/{run_id}", json=unkeyed, headers=AUTH)
        assert resp.status_code == 403, resp.text
        real = make_handoff(
            run_id=run_id, agent="webster", status="complete", result="real", key=key
        )
        resp = client.post(f"{gw.url}/handoffs/{run_id}", json=real, headers=AUTH)
        assert resp.status_code == 200, resp.text
        assert resp.json()["recorded"]
    assert read_json(records / f"{run_id}.json")["result"] == "real"
    assert not list(records.rglob(f"rejected/{run_id}*"))  # the forgeries were not kept


def test_a_second_handoff_kept_aside_is_409_and_a_retry_is_200(gw: LocalGateway) -> None:
    """A live caller waits (this process), so the receiver leaves the first handoff in the
    inbox: a different second one is kept aside (409), the same one sent again is 200."""
    import os

    run_id, key = "orch-20261130T120000-0000cafe", new_key()
    records = gw.cfg.handoffs_dir
    _pending(records, run_id, key, pid=os.getpid())
    url = f"{gw.url}/handoffs/{run_id}"
    first = make_handoff(run_id=run_id, agent="webster", status="complete", result="a", key=key)
    other = make_handoff(run_id=run_id, agent="webster", status="complete", result="b", key=key)
    with httpx.Client(timeout=60) as client:
        assert client.post(url, json=first, headers=AUTH).json() == {"ok": True}
        again = client.post(url, json=first, headers=AUTH)
        assert again.status_code == 200 and again.json() == {"ok": True}, again.text
        second = client.post(url, json=other, headers=AUTH)
        assert second.status_code == 409, second.text
        assert "yours was kept aside" in second.json()["error"]
        assert client.post(url, json=other, headers=AUTH).status_code == 409  # same answer
    inbox = sorted(p.name for p in (records / "inbox").glob(f"{run_id}*"))
    assert inbox == [f"{run_id}.2.json", f"{run_id}.json"]  # no third copy


def test_the_same_handoff_sent_again_after_its_record_is_200(gw: LocalGateway) -> None:
    run_id, key = "orch-20261130T120000-0000d00d", new_key()
    records = gw.cfg.handoffs_dir
    _pending(records, run_id, key)
    url = f"{gw.url}/handoffs/{run_id}"
    body = make_handoff(run_id=run_id, agent="webster", status="complete", result="a", key=key)
    with httpx.Client(timeout=60) as client:
        answers = [client.post(url, json=body, headers=AUTH) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200], answers[-1].text
    assert answers[0].json()["recorded"] and answers[2].json() == answers[0].json()
    assert not list(records.rglob(f"rejected/{run_id}*"))
    assert "also_received" not in read_json(records / f"{run_id}.json")["envelope"]


def test_under_optional_keys_a_timestamp_without_a_zone_is_utc_as_in_a_file(
    tmp_path: Path,
) -> None:
    """The receiver reads an old agent's handoff as ``check_delivered`` reads its file."""
    argv = [sys.executable, "-m", "engine.gateway.demo_agent", "--role", "webster"]
    cfg = config_from_dict(
        {
            "handoffs_dir": "handoffs",
            "handoff_key": "optional",
            "agents": {"webster": {"url": "local"}},
            "gateway": {"agents": {"webster": {"kind": "command", "argv": argv}}},
        },
        path=tmp_path / "orchestrator.yaml",
    )
    gateway = LocalGateway(cfg, token=TOKEN, port=0).start()
    try:
        run_id = "orch-20261130T120000-0000a11e"
        write_pending(
            cfg.handoffs_dir,
            run_id,
            {"target": "webster", "caller": "manager", "outcome": "dispatched",
             "handoff_key": "optional", "pid": 2**22 + 7},
        )  # fmt: skip
        body = {"schemaVersion": "1.0", "runId": run_id, "agent": "webster",
                "status": "complete", "result": "old agent", "confidence": "high",
                "timestamp": "2026-02-15T10:00:00"}  # fmt: skip
        with httpx.Client(timeout=60) as client:
            resp = client.post(f"{gateway.url}/handoffs/{run_id}", json=body, headers=AUTH)
        assert resp.status_code == 200, resp.text
        record = read_json(cfg.handoffs_dir / f"{run_id}.json")
        assert record["timestamp"] == "2026-02-15T10:00:00Z"
    finally:
        gateway.stop()
