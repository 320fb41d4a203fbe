"""Delegations end to end: real HTTP on 127.0.0.1, real files, real inotify."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.config import load_config
from engine.delegate import DelegationRequest, Delegator, Outcome, open_delegator
from engine.errors import AclDeniedError, InvalidIdError, UnknownAgentError
from engine.handoff import make_handoff
from engine.record import reconcile
from engine.reporter import Reporter
from engine.store.file import handoff_path
from engine.watch import watcher_for
from tests.helpers import demo_config, free_port, remote_config, write_config, write_valid_handoff


def _req(task: str = "Find CTE of Zerodur", **kw: Any) -> DelegationRequest:
    kw.setdefault("target", "webster")
    kw.setdefault("caller", "manager")
    return DelegationRequest(task=task, **kw)


def _remote(tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch, **extra: Any) -> Any:
    monkeypatch.setenv("STANDIN_TOKEN", "stand-in-token")
    return load_config(write_config(tmp_path, remote_config(tmp_path, url, **extra)))


def test_happy_path_on_the_embedded_gateway(demo_cfg: Any) -> None:
    with open_delegator(demo_cfg) as d:
        result = d.delegate(_req())
    assert result.outcome is Outcome.COMPLETE
    assert result.exit_code == 0
    rec = json.loads(result.record_path.read_text())
    assert result.record_path == demo_cfg.handoffs_dir / f"{result.run_id}.json"
    assert rec["runId"] == result.run_id and rec["agent"] == "webster"
    assert "demo output from webster" in rec["result"]
    env = rec["envelope"]
    assert env["caller"] == "manager" and env["target"] == "webster"
    assert env["task"] == "Find CTE of Zerodur"
    assert env["attempts"] == 1 and env["gateway_run_id"]
    assert env["duration_ms"] > 0 and env["late"] is False
    assert not (demo_cfg.handoffs_dir / ".pending" / f"{result.run_id}.json").exists()


def test_run_id_format(demo_cfg: Any) -> None:
    import re

    with open_delegator(demo_cfg) as d:
        result = d.delegate(_req())
    assert re.fullmatch(r"orch-\d{8}T\d{6}-[0-9a-f]{8}", result.run_id)


def test_acl_refusal_sends_nothing(tmp_path: Path, stand_in: Any, monkeypatch: Any) -> None:
    server = stand_in()
    cfg = _remote(tmp_path, server.url, monkeypatch)
    d = Delegator(cfg)
    with pytest.raises(AclDeniedError) as err:
        d.delegate(_req(caller="auditor"))
    assert err.value.exit_code == 5
    assert "`auditor` may not delegate to anyone" in str(err.value)
    with pytest.raises(AclDeniedError) as err:
        d.delegate(_req(caller="optimizer", target="auditor"))
    assert "`optimizer` may delegate to: `secretary`, `study-builder`, `webster`." in str(err.value)
    d.close()
    assert server.posts == 0


def test_unknown_agent_and_caller_suggest(demo_cfg: Any) -> None:
    d = Delegator(demo_cfg)
    with pytest.raises(UnknownAgentError, match="unknown agent `webstr`; did you mean `webster`"):
        d.delegate(_req(target="webstr"))
    with pytest.raises(UnknownAgentError, match="unknown caller `manger`; did you mean `manager`"):
        d.delegate(_req(caller="manger"))
    d.close()


def test_retries_500_500_then_200(tmp_path: Path, stand_in: Any, monkeypatch: Any) -> None:
    server = stand_in(statuses=[500, 500, 200], agent=write_valid_handoff)
    cfg = _remote(tmp_path, server.url, monkeypatch)
    with open_delegator(cfg) as d:
        result = d.delegate(_req(timeout=60))
    assert result.outcome is Outcome.COMPLETE
    assert result.envelope["attempts"] == 3
    assert server.posts == 3
    keys = {r["headers"].get("Idempotency-Key") for r in server.requests}
    assert keys == {result.run_id}


def test_429_honours_retry_after(tmp_path: Path, stand_in: Any, monkeypatch: Any) -> None:
    server = stand_in(
        statuses=[429, 200], agent=write_valid_handoff, headers={"Retry-After": "0.4"}
    )
    cfg = _remote(tmp_path, server.url, monkeypatch)
    with open_delegator(cfg) as d:
        t0 = time.monotonic()
        result = d.delegate(_req(timeout=60))
        waited = time.monotonic() - t0
    assert result.outcome is Outcome.COMPLETE and result.envelope["attempts"] == 2
    assert waited >= 0.4  # the scripted delay was 0.05 s; Retry-After asked for 0.4 s


def test_400_is_not_retried(tmp_path: Path, stand_in: Any, monkeypatch: Any) -> None:
    server = stand_in(statuses=[400], error_body={"ok": False, "error": 'unknown agentId "x"'})
    cfg = _remote(tmp_path, server.url, monkeypatch)
    with open_delegator(cfg) as d:
        result = d.delegate(_req(timeout=60))
    assert result.outcome is Outcome.ERRORED and result.exit_code == 2
    assert server.posts == 1
    assert "`agents.webster.agent_id`" in str(result.error)
    assert result.envelope["status_code"] == 400


class _RetryEvents(Reporter):
    """Brings the stand-in up once the delegator has seen the endpoint down."""

    def __init__(self, bring_up: Callable[[], None]) -> None:
        self.bring_up = bring_up
        self.retries = 0

    def delegation_retry(self, agent: str, attempt: int, delay: float, reason: str) -> None:
        self.retries += 1
        if self.retries == 1:
            self.bring_up()


def test_endpoint_down_then_up(tmp_path: Path, stand_in: Any, monkeypatch: Any) -> None:
    port = free_port()
    cfg = _remote(
        tmp_path,
        f"http://127.0.0.1:{port}",
        monkeypatch,
        retry={"delays": [0.2, 0.3, 0.5, 1.0], "jitter": 0.0},
    )
    started: list[Any] = []
    # Up after the first refused attempt, not after a sleep a busy host could outlast.
    events = _RetryEvents(lambda: started.append(stand_in(port=port, agent=write_valid_handoff)))
    with open_delegator(cfg, reporter=events) as d:
        result = d.delegate(_req(timeout=60))
    assert result.outcome is Outcome.COMPLETE
    assert result.envelope["attempts"] >= 2
    assert started[0].posts == 1


def test_dead_endpoint_gives_up_before_deadline(tmp_path: Path, monkeypatch: Any) -> None:
    cfg = _remote(
        tmp_path,
        f"http://127.0.0.1:{free_port()}",
        monkeypatch,
        retry={"delays": [0.1, 0.1], "jitter": 0.0},
    )
    with open_delegator(cfg) as d:
        result = d.delegate(_req(timeout=60))
    assert result.outcome is Outcome.ERRORED and result.exit_code == 4
    assert "after 3 attempts (last: connection refused)" in str(result.error)


def test_slow_agent_times_out_then_late_handoff_is_recorded(demo_cfg: Any) -> None:
    with open_delegator(demo_cfg) as d:
        result = d.delegate(_req("DEMO_SLEEP=1.5\nslow task", timeout=0.5))
        assert result.outcome is Outcome.TIMEOUT and result.exit_code == 4
        assert result.envelope["outcome"] == "timeout"
        assert "no handoff from `webster` within 0.5 s" in str(result.error)
        path = result.record_path
        deadline = time.monotonic() + 60
        rec: dict[str, Any] = {}
        while time.monotonic() < deadline:
            reconcile(demo_cfg.handoffs_dir)
            rec = json.loads(path.read_text())
            if rec.get("status"):
                break
            time.sleep(0.1)
    assert rec["status"] == "complete"
    assert rec["envelope"]["late"] is True
    assert rec["envelope"]["outcome"] == "complete"
    assert rec["envelope"]["caller"] == "manager"


def _agent_writing(text_for: Any) -> Any:
    def play(block: dict[str, str]) -> None:
        Path(block["handoff_path"]).write_text(text_for(block))

    return play


def test_malformed_json_is_refused_and_kept(
    tmp_path: Path, stand_in: Any, monkeypatch: Any
) -> None:
    server = stand_in(agent=_agent_writing(lambda b: '{"schemaVersion": "1.0", "runId": '))
    cfg = _remote(tmp_path, server.url, monkeypatch, repair_attempts=0)
    with open_delegator(cfg) as d:
        result = d.delegate(_req(timeout=60))
    # The agent's own handoff, unusable and no repair allowed: `unusable`, exit 6.
    assert result.outcome is Outcome.UNUSABLE and result.exit_code == 6
    msg = str(result.error)
    assert f"{result.run_id}.json` is not valid JSON (line 1" in msg
    kept = Path(result.envelope["rejected_file"])
    assert kept.read_text().startswith('{"schemaVersion"')
    assert "was kept as" in msg


def test_bad_status_is_refused_naming_the_pointer(
    tmp_path: Path, stand_in: Any, monkeypatch: Any
) -> None:
    def bad(block: dict[str, str]) -> str:
        data = make_handoff(
            run_id=block["run_id"], agent="webster", status="complete", result="x", key=block["key"]
        )
        data["status"] = "done"
        return json.dumps(data)

    server = stand_in(agent=_agent_writing(bad))
    cfg = _remote(tmp_path, server.url, monkeypatch, repair_attempts=0)
    with open_delegator(cfg) as d:
        result = d.delegate(_req(timeout=60))
    assert result.outcome is Outcome.UNUSABLE
    assert "`/status`: `done` is not one of `complete`, `partial`, `blocked`, `failed`" in str(
        result.error
    )


@pytest.mark.parametrize(
    "field,value", [("runId", "orch-20260101T000000-deadbeef"), ("agent", "auditor")]
)
def test_mismatched_handoff_is_refused(
    tmp_path: Path, stand_in: Any, monkeypatch: Any, field: str, value: str
) -> None:
    def spoof(block: dict[str, str]) -> str:
        data = make_handoff(
            run_id=block["run_id"], agent="webster", status="complete", result="x", key=block["key"]
        )
        data[field] = value
        return json.dumps(data)

    server = stand_in(agent=_agent_writing(spoof))
    cfg = _remote(tmp_path, server.url, monkeypatch)
    with open_delegator(cfg) as d:
        t0 = time.monotonic()
        result = d.delegate(_req(timeout=60))
    assert result.outcome is Outcome.INVALID and result.exit_code == 2
    assert time.monotonic() - t0 < 30  # refused at once, not at the deadline
    assert "does not belong to this delegation" in str(result.error)
    assert f"`/{field}` is `{value}`" in str(result.error)


def test_handoff_present_before_the_wait(tmp_path: Path, stand_in: Any, monkeypatch: Any) -> None:
    server = stand_in()  # accepts, but its "agent" does nothing
    # Written before dispatch, so without the delegation's key: accepted only unverified.
    cfg = _remote(tmp_path, server.url, monkeypatch, handoff_key="optional")
    run_id = "orch-20260101T000000-0badcafe"
    write_valid_handoff(
        {
            "run_id": run_id,
            "agent": "webster",
            "handoff_path": str(handoff_path(cfg.handoffs_dir, run_id)),
        }
    )
    with open_delegator(cfg) as d:
        result = d.delegate(_req(run_id=run_id, timeout=60))
    assert result.outcome is Outcome.COMPLETE and result.record["result"] == "stand-in result"


def test_half_written_then_completed(tmp_path: Path, stand_in: Any, monkeypatch: Any) -> None:
    def slow_writer(block: dict[str, str]) -> None:
        data = json.dumps(
            make_handoff(
                run_id=block["run_id"],
                agent="webster",
                status="partial",
                result="done at last",
                key=block["key"],
            )
        )
        path = Path(block["handoff_path"])
        path.write_text(data[: len(data) // 2])  # close-after-write on half a file
        time.sleep(0.2)
        path.write_text(data)

    server = stand_in(agent=slow_writer)
    # The engine gives a half-written file `handoff_grace` to be completed; the writer's
    # second write must land within it even on a busy host (the wait ends when it does).
    cfg = _remote(tmp_path, server.url, monkeypatch, handoff_grace=30)
    with open_delegator(cfg) as d:
        result = d.delegate(_req(timeout=60))
    assert result.outcome is Outcome.PARTIAL and result.exit_code == 0
    assert result.record["result"] == "done at last"


@pytest.mark.parametrize(
    "kw", [{"run_id": "../x"}, {"parent_run_id": "../x"}, {"run_id": "a/b"}, {"run_id": ".hidden"}]
)
def test_path_like_ids_are_refused(demo_cfg: Any, kw: dict[str, str]) -> None:
    d = Delegator(demo_cfg)
    with pytest.raises(InvalidIdError) as err:
        d.delegate(_req(**kw))
    assert err.value.exit_code == 2 and "is not allowed" in str(err.value)
    d.close()
    assert not list(demo_cfg.handoffs_dir.glob("**/*.json"))


def test_fifty_concurrent_delegations_share_one_watch(
    tmp_path: Path, stand_in: Any, monkeypatch: Any
) -> None:
    all_waiting = threading.Event()

    def agent(block: dict[str, str]) -> None:
        all_waiting.wait(60)  # hand off once all 50 are waiting (or, at worst, after 60 s)
        write_valid_handoff(block)

    server = stand_in(agent=agent)
    cfg = _remote(tmp_path, server.url, monkeypatch)
    watcher = watcher_for(cfg.handoffs_dir / "inbox")
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], watcher.waiting)
            if peak[0] >= 50:
                all_waiting.set()
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    results: list[Any] = []
    with open_delegator(cfg) as d:
        threads = [
            threading.Thread(target=lambda: results.append(d.delegate(_req(timeout=120))))
            for _ in range(50)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    stop.set()
    all_waiting.set()
    sampler.join()
    assert len(results) == 50 and all(r.outcome is Outcome.COMPLETE for r in results)
    assert len({r.run_id for r in results}) == 50
    assert peak[0] >= 25  # many delegations were waiting on the same watcher at once
    assert watcher_for(cfg.handoffs_dir / "inbox") is watcher
    assert watcher.backend == "inotify"


def test_command_agent_crash_gives_failed(demo_cfg: Any) -> None:
    with open_delegator(demo_cfg) as d:
        result = d.delegate(_req("DEMO_CRASH please"))
    assert result.outcome is Outcome.FAILED and result.exit_code == 1
    assert result.record["status"] == "failed"


def test_command_agent_past_its_timeout_is_killed(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"]["timeout"] = 0.5
    cfg = load_config(write_config(tmp_path, raw))
    with open_delegator(cfg) as d:
        t0 = time.monotonic()
        result = d.delegate(_req("DEMO_SLEEP=120", timeout=60))
    assert time.monotonic() - t0 < 30  # killed at its 0.5 s, not waited out
    assert result.outcome is Outcome.FAILED
    assert "killed after" in result.record["result"]


def test_polling_backend_has_the_same_behaviour(
    tmp_path: Path, stand_in: Any, monkeypatch: Any
) -> None:
    server = stand_in(agent=write_valid_handoff)
    cfg = _remote(tmp_path, server.url, monkeypatch)
    with open_delegator(cfg, watcher_backend="poll") as d:
        result = d.delegate(_req(timeout=60))
    assert result.outcome is Outcome.COMPLETE
    assert watcher_for(cfg.handoffs_dir / "inbox", backend="poll").backend == "poll"


def test_a_handoff_nobody_waits_for_is_kept(demo_cfg: Any) -> None:
    stray = demo_cfg.handoffs_dir / "orch-20260101T000000-5742a1ee.json"
    write_valid_handoff({"run_id": stray.stem, "agent": "webster", "handoff_path": str(stray)})
    before = stray.read_text()
    with open_delegator(demo_cfg) as d:
        assert d.delegate(_req()).outcome is Outcome.COMPLETE
    reconcile(demo_cfg.handoffs_dir)
    assert stray.read_text() == before
