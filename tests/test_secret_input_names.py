"""Inputs whose names say they are secrets, and inputs declared ``secret: true``.

The whole value of such an input is a secret, as a secret-looking value is
(tests/test_secret_inputs.py): nothing the run writes or prints shows it (``run.json``
keeps ``***`` and a keyed hash in ``secret_inputs``), the agent still gets the real value
in its task, and a resume without the process that held it asks for it with ``-i``.
``secret: false`` opts a name that only looks like a secret out. Real parts: the embedded
gateway with echo and command agents, driven through the ``workflow`` CLI.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.cli import workflow
from engine.redact import redact, secret_input_names
from engine.runs import read_events
from engine.secretnames import secret_name
from engine.workflow import load_workflow
from tests.helpers import write_config

PASSWORD = "hunter2hunter2"
API_KEY = "abcd1234efgh5678"

SEC = """\
name: sec
caller: boss
inputs: {password: {required: true}, api_key: {required: true}}
steps: [{id: a, agent: echo, task: "login {{ inputs.password }} {{ inputs.api_key }}"}]
"""

GATED = """\
name: gated
caller: boss
inputs: {api_key: {required: true}, query: {default: plain words}}
steps:
  - id: a
    agent: echo
    task: "fetch {{ inputs.query }} with {{ inputs.api_key }}"
  - id: b
    agent: echo
    depends_on: [a]
    gate: {prompt: "Send {{ inputs.api_key }} on? {{ steps.a.result }}"}
    task: "again {{ inputs.api_key }}"
"""


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A config (embedded gateway: `echo`, and `seer`, which keeps the task it got in
    tmp_path/seen.txt, outside the handoffs) and a workflow directory."""
    seen = tmp_path / "seen.txt"
    script = (
        "import os, pathlib\n"
        f"pathlib.Path({str(seen)!r}).write_text(os.environ['ORCH_TASK'])\n"
        "print('seen')\n"
    )
    raw: dict[str, Any] = {
        "handoffs_dir": str(tmp_path / "handoffs"),
        "default_timeout": 60,
        "gateway": {
            "embedded": True,
            "detach_on_exit": False,
            "agents": {
                "echo": {"kind": "echo"},
                "boss": {"kind": "echo"},
                "seer": {"kind": "command", "argv": [sys.executable, "-c", script]},
            },
        },
        "agents": {"echo": {"url": "local"}, "boss": {"url": "local"}, "seer": {"url": "local"}},
        "acl": {"boss": ["*"]},
        "workflow_dirs": [str(tmp_path / "wf")],
        "pool": {"enabled": False},
    }
    (tmp_path / "wf").mkdir()
    (tmp_path / "wf" / "sec.yaml").write_text(SEC, encoding="utf-8")
    (tmp_path / "wf" / "gated.yaml").write_text(GATED, encoding="utf-8")
    write_config(tmp_path, raw)
    return tmp_path


def _wf(home: Path, *args: str, stdin: str | None = None) -> Any:
    config = str(home / "orchestrator.yaml")
    return CliRunner().invoke(workflow, [*args, "--config", config], input=stdin)


def _handoff_files_with(home: Path, *values: str) -> list[str]:
    """Every file under handoffs/ that holds one of ``values``."""
    return sorted(
        str(p.relative_to(home))
        for p in (home / "handoffs").rglob("*")
        if p.is_file() and any(v.encode() in p.read_bytes() for v in values)
    )


def _runs(home: Path) -> list[Path]:
    return sorted((home / "handoffs" / "workflows").iterdir())


def _meta(run: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run / "run.json").read_text())
    return data


def test_inputs_named_as_secrets_are_never_written_or_printed(home: Path) -> None:
    res = _wf(
        home, "run", "sec", "-i", f"password={PASSWORD}", "-i", f"api_key={API_KEY}", "--json"
    )
    assert res.exit_code == 0, res.output
    assert PASSWORD not in res.output and API_KEY not in res.output
    assert PASSWORD not in res.stderr and API_KEY not in res.stderr
    assert _handoff_files_with(home, PASSWORD, API_KEY) == []
    (run,) = _runs(home)
    meta = _meta(run)
    assert meta["inputs"] == {"password": "***", "api_key": "***"}
    # each keyed hash survives the redaction of what is written (an input named api_key)
    assert set(meta["secret_inputs"]) == {"password", "api_key"}
    assert all(len(k["hmac"]) == 32 for k in meta["secret_inputs"].values())
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"
    assert "login *** ***" in (run / "a.json").read_text()


def test_the_agent_gets_the_real_value(home: Path) -> None:
    (home / "wf" / "seer.yaml").write_text(
        SEC.replace("name: sec", "name: seer").replace("agent: echo", "agent: seer"),
        encoding="utf-8",
    )
    res = _wf(home, "run", "seer", "-i", f"password={PASSWORD}", "-i", f"api_key={API_KEY}")
    assert res.exit_code == 0, res.output
    assert (home / "seen.txt").read_text() == f"login {PASSWORD} {API_KEY}"
    # the task as the agent got it, in the agent's own workspace, holds it (the agent's
    # input, as ORCH_TASK is); nothing the engine writes does
    written = _handoff_files_with(home, PASSWORD, API_KEY)
    assert [Path(p).name for p in written] == ["TASK.txt"], written
    assert all(p.startswith("handoffs/.workspaces/seer/") for p in written)


def test_secret_true_makes_an_innocuous_name_a_secret(home: Path) -> None:
    (home / "wf" / "plain.yaml").write_text(
        SEC.replace("name: sec", "name: plain")
        .replace(
            "inputs: {password: {required: true}, api_key: {required: true}}",
            "inputs: {password: {default: x}, api_key: {default: x}, "
            "query: {required: true, secret: true}}",
        )
        .replace("{{ inputs.password }}", "{{ inputs.query }}"),
        encoding="utf-8",
    )
    value = "the-plain-but-secret-query"
    res = _wf(home, "run", "plain", "-i", f"query={value}", "--json")
    assert res.exit_code == 0, res.output
    assert value not in res.output and _handoff_files_with(home, value) == []
    (run,) = _runs(home)
    assert _meta(run)["inputs"]["query"] == "***"
    assert "query" in _meta(run)["secret_inputs"]


def test_secret_false_opts_a_name_out(home: Path) -> None:
    (home / "wf" / "budget.yaml").write_text(
        "name: budget\ncaller: boss\n"
        "inputs: {token_budget: {required: true, secret: false}, password: {default: ''}}\n"
        'steps: [{id: a, agent: echo, task: "spend {{ inputs.token_budget }}"}]\n',
        encoding="utf-8",
    )
    res = _wf(home, "run", "budget", "-i", "token_budget=12000 tokens", "--json")
    assert res.exit_code == 0, res.output
    (run,) = _runs(home)
    meta = _meta(run)
    # an empty secret input hides nothing: shown as it is, nothing asked on resume
    assert meta["inputs"] == {"token_budget": "12000 tokens", "password": ""}
    assert "secret_inputs" not in meta
    assert "spend 12000 tokens" in (run / "a.json").read_text()


def test_resume_asks_for_a_secret_named_input_with_i(home: Path) -> None:
    res = _wf(home, "run", "gated", "-i", f"api_key={API_KEY}", "--non-interactive")
    assert res.exit_code == 3, res.output
    (run,) = _runs(home)
    assert _meta(run)["inputs"] == {"api_key": "***", "query": "plain words"}
    (waiting,) = [e for e in read_events(run / "events.jsonl") if e["event"] == "gate_waiting"]
    assert waiting["prompt"].startswith("Send *** on? echo: fetch plain words with ***")
    assert _wf(home, "approve", run.name, "b").exit_code == 0

    res = _wf(home, "resume", run.name)
    assert res.exit_code == 2, res.output
    assert "its input `api_key` held a secret" in res.output
    assert f"`workflow resume {run.name} -i api_key=VALUE`" in res.output
    res = _wf(home, "resume", run.name, "-i", "api_key=not-the-one-it-had")
    assert res.exit_code == 2, res.output
    assert "the value given for input `api_key` (`-i`) is not the one" in res.output

    res = _wf(home, "resume", run.name, "-i", f"api_key={API_KEY}")
    assert res.exit_code == 0, res.output
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"
    assert API_KEY not in res.output and _handoff_files_with(home, API_KEY) == []


def test_the_interactive_gate_prompt_masks_it(home: Path) -> None:
    res = _wf(home, "run", "gated", "-i", f"api_key={API_KEY}", "--interactive", stdin="y\n")
    assert res.exit_code == 0, res.output
    assert "Send *** on? echo: fetch" in res.output
    assert API_KEY not in res.output and _handoff_files_with(home, API_KEY) == []


@pytest.mark.parametrize("as_json", [False, True])
def test_dry_run_and_validate_do_not_show_it(home: Path, as_json: bool) -> None:
    args = ["-i", f"api_key={API_KEY}"]
    res = _wf(home, "run", "gated", *args, "--dry-run", *(["--json"] if as_json else []))
    assert res.exit_code == 0, res.output
    assert API_KEY not in res.output
    if as_json:
        plan = json.loads(res.output)
        assert plan["inputs"] == {"api_key": "***", "query": "plain words"}
        assert plan["steps"][0]["task"] == "fetch plain words with ***"
    else:
        assert "  api_key = ***" in res.output and "| fetch plain words with ***" in res.output
    res = _wf(home, "validate", "gated", *args)
    assert res.exit_code == 0 and API_KEY not in res.output, res.output


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("password", True),
        ("db_password", True),
        ("passwd", True),
        ("api_key", True),
        ("apikey", True),
        ("apiKey", True),
        ("OPENAI_API_KEY", True),
        ("GITHUB_TOKEN", True),
        ("authToken", True),
        ("basic_auth", True),
        ("private_key", True),
        ("AWS_ACCESS_KEY_ID", True),
        ("credentials", True),
        ("client_secret", True),
        ("query", False),
        ("author", False),
        ("tokenizer", False),
        ("secretary", False),
        ("max_tokens", False),
        ("keyword", False),
        ("key", False),
    ],
)
def test_secret_names_match_on_name_parts(name: str, secret: bool) -> None:
    assert secret_name(name) is secret


def test_declarations_decide_with_the_value_rule(tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text(
        "name: d\ncaller: boss\ninputs:\n"
        "  password: {required: true}\n  note: {secret: true, default: ''}\n"
        "  my_token: {secret: false, default: x}\n  query: {default: x}\n"
        'steps: [{id: a, agent: echo, task: "x"}]\n',
        encoding="utf-8",
    )
    spec = load_workflow(path)
    assert spec.secret_inputs == {"password", "note"}
    inputs = {"password": "p4ss", "note": "", "my_token": "Bearer abc123def456", "query": "q"}
    # `secret: false` only opts the name out: a secret-looking value is still a secret
    assert secret_input_names(inputs, spec.secret_inputs) == ["password", "my_token"]


def test_written_json_with_an_api_key_object_stays_json() -> None:
    for data in ({"api_key": {"hmac": "0f" * 16}}, {"api_key": ["x"]}, {"authorization": None}):
        assert json.loads(redact(json.dumps(data, indent=2))) == data
    assert json.loads(redact(json.dumps({"api_key": 12345678}))) == {"api_key": "***"}
    assert redact('{"api_key": "realkey123"}') == '{"api_key": "***"}'


def test_the_documented_inputs_example_declares_as_documented(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "workflows.md").read_text()
    (block,) = [b for b in doc.split("```yaml\n")[1:] if "auth_mode" in b.split("```")[0]]
    path = tmp_path / "doc.yaml"
    path.write_text(
        "name: doc\ncaller: boss\n"
        + block.split("```")[0]
        + 'steps: [{id: a, agent: echo, task: "x"}]\n',
        encoding="utf-8",
    )
    assert load_workflow(path).secret_inputs == {"api_key", "account"}
    for name in ("db_password", "GITHUB_TOKEN", "apiKey", "basic_auth", "AWS_ACCESS_KEY_ID"):
        assert secret_name(name) and f"`{name}`" in doc
    for name in ("author", "tokenizer", "max_tokens", "keyword"):
        assert not secret_name(name) and f"`{name}`" in doc
