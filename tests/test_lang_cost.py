"""Cost per step and in total, and fan-out progress, in `workflow status` and `orchestrate`."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from engine.cli.orchestrate import orchestrate
from engine.cli.workflow import workflow
from engine.config import load_config
from engine.delegate import open_delegator
from engine.progress import summary_table
from engine.runner import RunOptions, WorkflowRunner, prepare
from engine.runs import run_status
from tests.helpers import demo_config, write_config
from tests.test_lang_budget import COSTLY

#: Hands off at once the first time; later runs wait for the file $GO (60 s at most).
FIRST_THEN_WAIT = """
import os, pathlib, time
c = pathlib.Path(os.environ["COUNTER"])
n = int(c.read_text()) + 1 if c.exists() else 1
c.write_text(str(n))
deadline = time.monotonic() + 60
while n > 1 and not os.path.exists(os.environ["GO"]) and time.monotonic() < deadline:
    time.sleep(0.01)
print("done %d" % n)
"""


def _costly_cfg(tmp_path: Path) -> Path:
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {
        "kind": "command",
        "argv": [sys.executable, "-c", COSTLY],
        "fallback_handoff": False,
    }
    return write_config(tmp_path, raw)


def test_orchestrate_prints_tokens_and_cost(tmp_path: Path) -> None:
    cfg = _costly_cfg(tmp_path)
    res = CliRunner().invoke(
        orchestrate, ["webster", "CTE of ULE", "--caller", "manager", "--config", str(cfg)]
    )
    assert res.exit_code == 0, res.output
    assert "usage: 150 tokens (100 in, 50 out), $0.03\n" in res.stdout


def test_status_shows_cost_per_step_and_in_total(tmp_path: Path) -> None:
    cfg_path = _costly_cfg(tmp_path)
    cfg = load_config(cfg_path)
    wf = tmp_path / "wf.yaml"
    steps = [
        {"id": "a", "agent": "webster", "task": "a"},
        {"id": "b", "agent": "webster", "task": "b", "depends_on": ["a"]},
    ]
    wf.write_text(json.dumps({"name": "wf", "caller": "manager", "steps": steps}))
    with open_delegator(cfg) as d:
        result = WorkflowRunner(cfg, d).start(prepare(cfg, str(wf), {}), RunOptions())
    status = run_status(cfg, result.run_id)
    assert status["steps"]["a"]["spent"] == {"usd": 0.03, "tokens": 150}
    assert status["spent"] == {"usd": 0.06, "tokens": 300}
    res = CliRunner().invoke(
        workflow, ["status", result.run_id, "--json", "--config", str(cfg_path)]
    )
    assert json.loads(res.stdout)["spent"] == {"usd": 0.06, "tokens": 300}
    text = summary_table(status)
    assert " · $0.06, 300 tokens" in text
    assert "$0.03, 150 tokens" in text


def test_status_shows_fan_out_progress(tmp_path: Path) -> None:
    go = tmp_path / "go"
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {
        "kind": "command",
        "argv": [sys.executable, "-c", FIRST_THEN_WAIT],
        "env": {"COUNTER": str(tmp_path / "count"), "GO": str(go)},
        "timeout": 90,
    }
    cfg = load_config(write_config(tmp_path, raw))
    wf = tmp_path / "wf.yaml"
    step = {"id": "research", "agent": "webster", "task": "{{ item }}"}
    step.update(for_each="inputs.m", max_parallel=1)
    wf.write_text(
        json.dumps(
            {
                "name": "wf",
                "caller": "manager",
                "inputs": {"m": {"default": "a, b"}},
                "steps": [step],
            }
        )
    )
    out: dict[str, Any] = {}
    with open_delegator(cfg) as d:
        runner = WorkflowRunner(cfg, d)
        prepared = prepare(cfg, str(wf), {})
        thread = threading.Thread(target=lambda: out.update(r=runner.start(prepared, RunOptions())))
        thread.start()
        try:
            row = _wait_for_items(cfg, d.store, {"done": 1, "total": 2})
            assert row["status"] == "running"
            assert "1 of 2 items done" in summary_table(_status(cfg, d.store), waiting=True)
        finally:
            go.touch()
            thread.join(90)
    assert out["r"].summary["steps"]["research"]["items"] == {"done": 2, "total": 2}


def _status(cfg: Any, store: Any) -> dict[str, Any]:
    runs = store.list_runs()
    return run_status(cfg, runs[0], store=store) if runs else {}


def _wait_for_items(cfg: Any, store: Any, want: dict[str, int]) -> dict[str, Any]:
    """Polls the run's status (the journal) until the step shows ``want`` (60 s at most)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = _status(cfg, store)
        row = status.get("steps", {}).get("research", {})
        if row.get("items") == want:
            return dict(row)
        time.sleep(0.05)
    raise AssertionError(f"the step never showed {want}")


def test_the_live_table_shows_cost_and_items_done() -> None:
    import io

    from rich.console import Console

    from engine.progress import LiveReporter

    rep = LiveReporter(stream=io.StringIO())
    ev = rep.event
    ev("run_started", run_id="wf-1", workflow="demo", steps=[[("a", "webster"), ("b", "x")]])
    ev("step_started", step="a", agent="webster", attempt=1, items=3, delegation_run_id="d")
    ev("item_finished", step="a", index=0, status="complete")
    ev("step_spent", step="a", usd=0.03, tokens=150, run_usd=0.03)
    buf = io.StringIO()
    Console(file=buf, width=150).print(rep._table())
    rep.close()
    out = buf.getvalue()
    assert "demo · wf-1 · $0.03" in out
    assert "$0.03, 150 tokens" in out
    assert "1 of 3 items done" in out
