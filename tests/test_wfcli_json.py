"""`--json` on `workflow validate`, `graph`, `approve`, `reject`, `cancel` and `answer`,
and `workflow graph` refusing a template whose graph is wrong (as `validate` does).

Each command prints one JSON object on stdout when it succeeds, and the documented
``{"error", "exit_code"}`` (with ``problems`` for a template's problems) when it fails.
The runs are real: an embedded gateway with echo agents, real handoff files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from engine.cli import workflow

NO_ENV: dict[str, str | None] = {"ORCHESTRATOR_CONFIG": None, "ORCH_SERVER": None}

CONFIG = {
    "handoffs_dir": "./handoffs",
    "pool": {"adaptive": False},  # not the test host's load average
    "gateway": {"embedded": True,
                "agents": {"echo": {"kind": "echo"}, "checker": {"kind": "echo"}}},
    "agents": {"boss": {"url": "local"}, "echo": {"url": "local"}, "checker": {"url": "local"}},
    "acl": {"boss": ["*"]},
}  # fmt: skip

GATED = {
    "name": "gated",
    "caller": "boss",
    "steps": [
        {"id": "a", "agent": "echo", "task": "hi"},
        {"id": "g", "agent": "checker", "depends_on": ["a"], "gate": {"prompt": "ok?"},
         "task": "check"},
    ],
}  # fmt: skip

BAD = {
    "name": "bad",
    "caller": "boss",
    "steps": [
        {"id": "a", "agent": "echo", "task": "hi"},
        {"id": "c", "agent": "echo", "task": "one", "depends_on": ["a"]},
        {"id": "c", "agent": "checker", "task": "two", "depends_on": ["zz"]},
    ],
}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory with `orchestrator.yaml` (the base config), the current directory."""
    (tmp_path / "orchestrator.yaml").write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _write(home: Path, name: str, doc: dict[str, Any]) -> str:
    path = home / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return str(path)


def _cli(*args: str) -> Any:
    return CliRunner(env=NO_ENV).invoke(workflow, list(args))


def _program(*args: str) -> subprocess.CompletedProcess[str]:
    """`workflow ARGS` in a real process, in the current directory."""
    env = {k: v for k, v in os.environ.items() if k not in NO_ENV}
    return subprocess.run(
        [sys.executable, "-c", "from engine.cli import workflow_main; workflow_main()", *args],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def _parked(home: Path) -> str:
    """A run of GATED parked at its gate `g` (exit 3); its id."""
    wf = _write(home, "gated", GATED)
    res = _cli("run", wf, "--non-interactive", "-q", "--json")
    assert res.exit_code == 3, res.output
    rid: str = json.loads(res.stdout)["runId"]
    return rid


def _failed_json(res: Any, code: int) -> dict[str, Any]:
    assert res.exit_code == code, res.output
    doc: dict[str, Any] = json.loads(res.stdout)
    assert doc["exit_code"] == code
    assert res.stderr.strip() == f"error: {doc['error']}"
    return doc


# ------------------------------------------------------------------------ validate


def test_validate_json_of_a_valid_template(home: Path) -> None:
    wf = _write(home, "ok", {**GATED, "steps": [{"id": "a", "agent": "echo", "task": "hi {a}"}]})
    proc = _program("validate", wf, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc == {
        "ok": True,
        "workflow": "gated",
        "path": wf,
        "caller": "boss",
        "steps": ["a"],
        "groups": [["a"]],
        "warnings": [doc["warnings"][0]],
        "problems": [],
    }
    assert "`task` holds `{a}`" in doc["warnings"][0]
    assert f"warning: {doc['warnings'][0]}" in proc.stderr  # as without --json


def test_validate_json_of_an_invalid_template(home: Path) -> None:
    wf = _write(home, "bad", BAD)
    doc = _failed_json(_cli("validate", wf, "--json"), 2)
    assert doc["ok"] is False and doc["workflow"] == wf
    assert doc["problems"] == ["step id `c` is used by 2 steps; step ids must be unique."]
    assert doc["error"].startswith(f"`{wf}` cannot run:")


def test_run_json_failure_lists_the_problems_too(home: Path) -> None:
    doc = _failed_json(_cli("run", _write(home, "bad", BAD), "--dry-run", "--json"), 2)
    assert set(doc) == {"error", "exit_code", "problems"}
    assert doc["problems"] == ["step id `c` is used by 2 steps; step ids must be unique."]


# ------------------------------------------------------------------------ graph


def test_graph_json_has_nodes_and_edges(home: Path) -> None:
    wf = _write(
        home,
        "gated",
        {
            **GATED,
            "steps": [
                *GATED["steps"],
                {"id": "z", "agent": "echo", "task": "x", "depends_on": ["g"], "when": "true"},
            ],
        },
    )
    res = _cli("graph", wf, "--json", "--format", "dot")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["workflow"] == "gated" and doc["path"] == wf and doc["format"] == "dot"
    assert [(n["id"], n["target"], n["gate"], n["conditional"]) for n in doc["nodes"]] == [
        ("a", "echo", False, False),
        ("g", "checker", True, False),
        ("z", "echo", False, True),
    ]
    assert doc["edges"] == [
        {"from": "a", "to": "g", "conditional": False},
        {"from": "g", "to": "z", "conditional": True},
    ]
    assert doc["text"] == _cli("graph", wf, "--format", "dot").stdout.removesuffix("\n")


@pytest.mark.parametrize(
    ("steps", "problem"),
    [
        (BAD["steps"], "step id `c` is used by 2 steps; step ids must be unique."),
        (
            [{"id": "a", "agent": "echo", "task": "x"},
             {"id": "b", "agent": "echo", "task": "y", "depends_on": ["zz"]}],
            "step `b` depends on unknown step `zz`.",
        ),
        (
            [{"id": "a", "agent": "echo", "task": "x", "depends_on": ["b"]},
             {"id": "b", "agent": "echo", "task": "y", "depends_on": ["a"]}],
            "steps form a cycle: a -> b -> a; remove one of these `depends_on` entries.",
        ),
    ],
    ids=["duplicate-id", "unknown-dependency", "cycle"],
)  # fmt: skip
def test_graph_refuses_a_wrong_graph_as_validate_does(
    home: Path, steps: list[dict[str, Any]], problem: str
) -> None:
    wf = _write(home, "bad", {**BAD, "steps": steps})
    proc = _program("graph", wf)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"error: `{wf}` has no graph to draw:\n  - {problem}\n"
    assert problem in _cli("validate", wf).stderr  # the same words
    doc = _failed_json(_cli("graph", wf, "--json"), 2)
    assert doc["problems"] == [problem]


def test_graph_still_draws_a_template_with_an_unknown_agent(home: Path) -> None:
    """Only the graph's own problems stop it: agents and the ACL need not check out."""
    wf = _write(home, "odd", {**BAD, "steps": [{"id": "a", "agent": "nobody", "task": "x"}]})
    res = _cli("graph", wf)
    assert res.exit_code == 0 and 'n0["a<br/>nobody"]' in res.stdout


# ------------------------------------------------------------------------ gates, answers, cancel


def test_approve_json_in_a_real_process(home: Path) -> None:
    rid = _parked(home)
    proc = _program("approve", rid, "g", "--reason", "fine", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc == {
        "runId": rid,
        "step": "g",
        "decision": "approved",
        "by": "cli",
        "reason": "fine",
        "at": doc["at"],
        "next": f"approved `g`; continue with: workflow resume {rid}",
    }
    res = _cli("resume", rid, "-q", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["status"] == "complete"


def test_reject_json(home: Path) -> None:
    rid = _parked(home)
    res = _cli("reject", rid, "g", "--reason", "not now", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert (doc["runId"], doc["step"], doc["decision"], doc["reason"]) == (
        rid, "g", "rejected", "not now")  # fmt: skip
    assert doc["next"] == f"rejected `g`; finish the run with: workflow resume {rid}"


def test_gate_commands_fail_in_json(home: Path) -> None:
    rid = _parked(home)
    doc = _failed_json(_cli("approve", rid, "gg", "--json"), 2)
    assert doc == {"error": f"run `{rid}` has no step `gg`; did you mean `g`?", "exit_code": 2}
    doc = _failed_json(_cli("answer", rid, "g", "yes", "--json"), 2)
    assert "is not waiting for an answer" in doc["error"]
    doc = _failed_json(_cli("reject", "wf-nope", "g", "--reason", "r", "--json"), 2)
    assert "wf-nope" in doc["error"]


def test_cancel_json(home: Path) -> None:
    rid = _parked(home)
    res = _cli("cancel", rid, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {
        "runId": rid, "cancelled": True, "status": "cancelled", "message": f"cancelled {rid}."
    }  # fmt: skip
    doc = _failed_json(_cli("cancel", rid, "--json"), 2)
    assert doc["error"] == f"run `{rid}` has already ended (cancelled)."


ASKER = Path(__file__).parent / "peers" / "misbehaving_agent.py"


def test_answer_json(home: Path) -> None:
    cfg = dict(CONFIG)
    cfg["gateway"] = {
        "embedded": True,
        "agents": {
            "echo": {
                "kind": "command",
                "argv": [sys.executable, str(ASKER), "ask"],
                "env": {"AGENT_STATE": str(home / "asker-state")},
                "fallback_handoff": False,
            }
        },
    }
    (home / "orchestrator.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    wf = _write(
        home,
        "ask",
        {"name": "ask", "caller": "boss", "steps": [{"id": "q", "agent": "echo", "task": "go"}]},
    )
    res = _cli("run", wf, "--non-interactive", "-q", "--json")
    assert res.exit_code == 3, res.output
    rid = json.loads(res.stdout)["runId"]
    res = _cli("answer", rid, "q", "0 to 50 C", "--by", "me", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc == {
        "runId": rid, "step": "q", "answer": "0 to 50 C", "by": "me", "at": doc["at"],
        "replaced": None, "next": f"answered `q`; continue with: workflow resume {rid}",
    }  # fmt: skip
    again = json.loads(_cli("answer", rid, "q", "10 to 20 C", "--replace", "--json").stdout)
    assert again["replaced"] == {"answer": "0 to 50 C", "by": "me"}
