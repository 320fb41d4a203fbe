"""An answered question sends the step again: that attempt is no retry in the run's
summary or in `metrics`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from engine.cli import workflow
from tests.helpers import demo_config, write_config

ASKER = Path(__file__).parent / "peers" / "misbehaving_agent.py"


def _cli(*args: str) -> Any:
    return CliRunner().invoke(workflow, list(args), catch_exceptions=False)


def test_an_answered_question_is_not_a_retry(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["asker"] = {
        "kind": "command",
        "argv": [sys.executable, str(ASKER), "ask"],
        "env": {"AGENT_STATE": str(tmp_path / "asker-state")},
        "timeout": 60,
        "fallback_handoff": False,
    }
    raw["agents"]["asker"] = {"url": "local"}
    raw["acl"] = {"manager": ["asker"]}
    cfg = str(write_config(tmp_path, raw))
    wf = tmp_path / "wf.yaml"
    wf.write_text(yaml.safe_dump({
        "name": "ask", "caller": "manager",
        "steps": [{"id": "research", "agent": "asker", "task": "Find the CTE."}],
    }), encoding="utf-8")
    run = _cli("run", str(wf), "--non-interactive", "--json", "--config", cfg)
    assert run.exit_code == 3, run.output
    rid = json.loads(run.stdout)["runId"]
    assert _cli("answer", rid, "research", "0 to 50 C", "--config", cfg).exit_code == 0
    done = _cli("resume", rid, "--json", "--config", cfg)
    assert done.exit_code == 0, done.output
    summary = json.loads(next((tmp_path / "handoffs").rglob(f"{rid}/summary.json")).read_text())
    step = summary["steps"]["research"]
    assert (step["status"], step["attempts"], step["answered"]) == ("complete", 2, 1)
    assert summary["retries"] == 0

    from engine.cli import metrics

    res = CliRunner().invoke(metrics, ["json", "--config", cfg], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["workflows"]["ask"]["retries"] == 0
    assert doc["workflows"]["ask"]["steps"]["research"]["retries"] == 0
