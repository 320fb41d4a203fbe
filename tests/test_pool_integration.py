"""The token pool on the delegation path: real processes, a real gateway counting tasks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.cli import orchestrate, workflow
from engine.config import load_config
from engine.delegate import DelegationRequest, open_delegator
from engine.gateway.server import LocalGateway
from engine.runs import read_events
from tests.helpers import demo_config, write_config

TOKEN = "pool-test-token-0123456789"
SLOW = [sys.executable, "-c", "import time; time.sleep(0.25); print('slept')"]
#: An agent that counts how many of its kind work at once (between its start and the
#: moment it hands off), in a file under flock, then writes its handoff.
COUNTING = """
import fcntl, json, os, pathlib, time
counter = pathlib.Path(os.environ["COUNTER"])
def bump(delta):
    with open(str(counter) + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        now, peak = json.loads(counter.read_text()) if counter.exists() else (0, 0)
        now += delta
        counter.write_text(json.dumps([now, max(peak, now)]))
bump(1)
time.sleep(0.15)
bump(-1)
path = pathlib.Path(os.environ["ORCH_HANDOFF_PATH"])
tmp = path.with_name("." + path.name + ".tmp")
tmp.write_text(json.dumps({"schemaVersion": "1.1", "runId": os.environ["ORCH_RUN_ID"],
    "agent": os.environ["ORCH_AGENT"], "key": os.environ["ORCH_HANDOFF_KEY"],
    "status": "complete", "result": "counted",
    "confidence": "high", "timestamp": "2026-11-21T00:00:00Z"}))
os.replace(tmp, path)
"""
HERE = Path(__file__).parent / "workflows" / "run"


@pytest.fixture
def pooled(tmp_path: Path) -> Iterator[tuple[Path, LocalGateway]]:
    """A standalone gateway with slow agents, and a config whose pool holds 3 tokens."""
    raw = demo_config(tmp_path)
    raw["gateway"].update(embedded=False, token_env="POOL_GW_TOKEN")
    for name in ("webster", "secretary"):
        raw["gateway"]["agents"][name] = {"kind": "command", "argv": SLOW, "timeout": 30}
    raw["pool"] = {"max_tokens": 3, "adaptive": False}
    path = write_config(tmp_path, raw)
    gw = LocalGateway(load_config(path), token=TOKEN).start()
    raw["gateway"]["port"] = int(gw.url.rsplit(":", 1)[1])
    write_config(tmp_path, raw)
    os.environ["POOL_GW_TOKEN"] = TOKEN
    try:
        yield path, gw
    finally:
        gw.stop()
        os.environ.pop("POOL_GW_TOKEN", None)


def test_twenty_processes_never_exceed_the_pool(tmp_path: Path) -> None:
    counter = tmp_path / "inflight.json"
    raw = demo_config(tmp_path)
    raw["gateway"].update(embedded=False, token_env="POOL_GW_TOKEN")
    raw["gateway"]["agents"]["webster"] = {"kind": "command", "timeout": 60,
                                           "argv": [sys.executable, "-c", COUNTING],
                                           "env": {"COUNTER": str(counter)}}
    raw["pool"] = {"max_tokens": 3, "adaptive": False}
    path = write_config(tmp_path, raw)
    with LocalGateway(load_config(path), token=TOKEN) as gw:
        raw["gateway"]["port"] = int(gw.url.rsplit(":", 1)[1])
        write_config(tmp_path, raw)
        os.environ["POOL_GW_TOKEN"] = TOKEN
        try:
            _twenty_processes(path, gw, counter)
        finally:
            os.environ.pop("POOL_GW_TOKEN", None)


def _twenty_processes(path: Path, gw: LocalGateway, counter: Path) -> None:
    script = (
        "import sys\n"
        "from engine.config import load_config\n"
        "from engine.delegate import DelegationRequest, open_delegator\n"
        "cfg = load_config(sys.argv[1])\n"
        "with open_delegator(cfg) as d:\n"
        "    for i in range(5):\n"
        "        r = d.delegate(DelegationRequest(target='webster', task='t', caller='manager',"
        " timeout=300))\n"
        "        assert r.outcome.value == 'complete', r.record\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(path)], env=os.environ.copy())
        for _ in range(20)
    ]
    codes = [p.wait(timeout=600) for p in procs]  # a bound for a busy host, not a target
    assert codes == [0] * 20
    assert gw.stats()["dispatched"]["webster"] == 100
    now, peak = json.loads(counter.read_text())
    assert now == 0
    assert 2 <= peak <= 3  # 20 processes contended, and never more than the pool's 3 tokens
    res = CliRunner().invoke(orchestrate, ["pool", "status", "--json", "--config", str(path)])
    status = json.loads(res.stdout)
    assert status["in_use"] == [] and status["queue"] == []


def test_token_wait_is_recorded(pooled: tuple[Path, LocalGateway]) -> None:
    path, gw = pooled
    cfg = load_config(path)
    results: list[Any] = []
    with open_delegator(cfg) as d:
        threads = [
            threading.Thread(
                target=lambda: results.append(
                    d.delegate(
                        DelegationRequest(target="webster", task="t", caller="manager", timeout=60)
                    )
                )
            )
            for _ in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    waits = sorted(r.envelope["token_wait_ms"] for r in results)
    assert all(r.outcome.value == "complete" for r in results)
    assert waits[-1] > 100  # 6 delegations through 3 tokens: some waited a round
    assert gw.stats()["dispatched"]["webster"] == 6


def test_workflow_steps_draw_from_the_same_pool(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["pool"] = {"max_tokens": 1, "adaptive": False}
    cfg = load_config(write_config(tmp_path, raw))
    res = CliRunner().invoke(
        workflow,
        [
            "run",
            str(HERE / "parallel.yaml"),
            "-i",
            "topic=DEMO_SLEEP=1",  # the first step's hold dwarfs any scheduling delay
            "--config",
            str(cfg.path),
            "--json",
            "-q",
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    run_dir = cfg.handoffs_dir / "workflows" / summary["runId"]
    left = json.loads((run_dir / "left.json").read_text())["attempts"][0]
    right = json.loads((run_dir / "right.json").read_text())["attempts"][0]
    first, second = sorted((left, right), key=lambda a: a["dispatched_at"])
    assert second["dispatched_at"] >= first["received_at"]  # one token: no overlap
    assert second["token_wait_ms"] > 200
    events = [e["event"] for e in read_events(run_dir / "events.jsonl")]
    assert "step_queued" in events


def test_dry_run_takes_no_token(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["pool"] = {"max_tokens": 1, "adaptive": False}
    cfg = load_config(write_config(tmp_path, raw))
    res = CliRunner().invoke(
        workflow, ["run", "quick-research", "-i", "query=x", "--dry-run", "--config", str(cfg.path)]
    )
    assert res.exit_code == 0
    res = CliRunner().invoke(
        orchestrate, ["webster", "x", "--caller", "manager", "--dry-run", "--config", str(cfg.path)]
    )
    assert res.exit_code == 0
    assert not (cfg.handoffs_dir / ".pool").exists()


def test_pool_status_needs_no_gateway(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["pool"] = {"max_tokens": 2, "adaptive": False}
    cfg = load_config(write_config(tmp_path, raw))
    res = CliRunner().invoke(orchestrate, ["pool", "status", "--config", str(cfg.path)])
    assert res.exit_code == 0
    assert "in use   0 of 2" in res.stdout
