"""Small fixes to `workflow`'s answers: each bad input gets the sentence that helps.

A confidence typo in `when` (did you mean), `when: yes`/`validate: yes` (kept as text),
`--caller ""` (refused), malformed JSON given to a gate, YAML indented with tabs, a second
answer to one question (said to replace the first), an `--expect` file kept among the
fixtures, numbers in a fixtures' inputs file (taken as text) and unknown inputs there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from engine.cli import workflow
from tests.helpers import demo_config, write_config

ASKER = Path(__file__).parent / "peers" / "misbehaving_agent.py"


def _cli(*args: str) -> Any:
    return CliRunner().invoke(workflow, list(args), catch_exceptions=False)


def _setup(tmp_path: Path, doc: dict[str, Any], **raw_extra: Any) -> tuple[str, str]:
    raw = demo_config(tmp_path)
    raw.update(raw_extra)
    cfg = write_config(tmp_path, raw)
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return str(cfg), str(path)


def _two(**second: Any) -> dict[str, Any]:
    return {
        "name": "two",
        "caller": "manager",
        "steps": [
            {"id": "a", "agent": "webster", "task": "Find papers."},
            {"id": "b", "agent": "secretary", "depends_on": ["a"], "task": "Note.", **second},
        ],
    }


def test_a_confidence_typo_in_when_gets_did_you_mean(tmp_path: Path) -> None:
    cfg, wf = _setup(tmp_path, _two(when='steps.a.confidence == "hgh"'))
    res = _cli("validate", wf, "--config", cfg)
    assert res.exit_code == 2
    assert (
        "step `b`: `when` compares `steps.a.confidence` with `'hgh'`, which it never is; "
        "did you mean `high`? It is one of: high, medium, low."
    ) in res.stderr
    cfg, wf = _setup(tmp_path, _two(when="steps.a.confidence in ['low', 'medium']"))
    assert _cli("validate", wf, "--config", cfg).exit_code == 0


@pytest.mark.parametrize("field", ["when", "validate"])
def test_yes_in_when_or_validate_is_said_to_be_text(tmp_path: Path, field: str) -> None:
    cfg, wf = _setup(tmp_path, _two())
    text = Path(wf).read_text(encoding="utf-8")
    assert text.endswith("  task: Note.\n")  # the last step's last key, as safe_dump writes
    Path(wf).write_text(text + f"  {field}: yes\n", encoding="utf-8")
    res = _cli("validate", wf, "--config", cfg)
    assert res.exit_code == 2
    assert (
        f"step `b`: `{field}: yes` is kept as text (this loader does not read YAML 1.1 "
        "forms); write `true` or `false`."
    ) in res.stderr
    assert "undefined" not in res.stderr and "unknown validator" not in res.stderr


@pytest.mark.parametrize("command", ["run", "validate"])
def test_an_empty_caller_is_refused(tmp_path: Path, command: str) -> None:
    cfg, wf = _setup(tmp_path, _two())
    res = _cli(command, wf, "--caller", "", "--config", cfg)
    assert res.exit_code == 2
    assert "`--caller` is empty" in res.stderr
    assert not (tmp_path / "handoffs" / "workflows").exists() or not list(
        (tmp_path / "handoffs" / "workflows").iterdir()
    )


def test_malformed_json_for_a_gate_is_said_to_be_malformed(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"depth": {"enum": ["quick", "full"]}}}
    doc = {
        "name": "gin",
        "caller": "manager",
        "steps": [
            {
                "id": "review",
                "agent": "tech-lead",
                "gate": {"prompt": "How deep?", "input": {"schema": schema}},
                "task": "Review.",
            }
        ],
    }
    cfg, wf = _setup(tmp_path, doc)
    run = _cli("run", wf, "--non-interactive", "--json", "--config", cfg)
    rid = json.loads(run.stdout)["runId"]
    res = _cli("approve", rid, "review", "--input", '{"depth": "full"', "--config", cfg)
    assert res.exit_code == 2
    assert '`--input {"depth": "full"` is not valid JSON (Expecting \',\' delimiter' in (res.stderr)
    ok = _cli("approve", rid, "review", "--input", '{"depth": "full"}', "--config", cfg)
    assert ok.exit_code == 0, ok.output


def test_yaml_indented_with_tabs_says_so(tmp_path: Path) -> None:
    cfg, wf = _setup(tmp_path, _two())
    Path(wf).write_text("name: t\ncaller: manager\nsteps:\n\t- id: a\n\t  agent: webster\n")
    res = _cli("validate", wf, "--config", cfg)
    assert res.exit_code == 2
    assert "Line 4 is indented with a tab: YAML indents with spaces only." in res.stderr


def _asking(tmp_path: Path) -> tuple[str, str]:
    """A run whose one step's agent asked a question: its config and run id (parked)."""
    raw_agents = demo_config(tmp_path)["gateway"]["agents"]
    raw_agents["asker"] = {
        "kind": "command",
        "argv": [sys.executable, str(ASKER), "ask"],
        "env": {"AGENT_STATE": str(tmp_path / "asker-state")},
        "timeout": 60,
        "fallback_handoff": False,
    }
    gateway = {**demo_config(tmp_path)["gateway"], "agents": raw_agents}
    agents = {**demo_config(tmp_path)["agents"], "asker": {"url": "local"}}
    doc = {
        "name": "ask",
        "caller": "manager",
        "steps": [{"id": "research", "agent": "asker", "task": "Find the CTE."}],
    }
    cfg, wf = _setup(tmp_path, doc, gateway=gateway, agents=agents, acl={"manager": ["asker"]})
    run = _cli("run", wf, "--non-interactive", "--json", "--config", cfg)
    assert run.exit_code == 3, run.output
    rid = json.loads(run.stdout)["runId"]
    return cfg, rid


def test_a_second_answer_says_it_replaced_the_first(tmp_path: Path) -> None:
    cfg, rid = _asking(tmp_path)
    first = _cli("answer", rid, "research", "0 to 50 C", "--config", cfg)
    assert first.exit_code == 0 and "replaces" not in first.stdout
    refused = _cli("answer", rid, "research", "20 to 30 C", "--by", "ana", "--config", cfg)
    assert refused.exit_code == 2, refused.output
    assert "was answered already: '0 to 50 C' by cli" in refused.stderr
    assert "Give `--replace` to replace that answer" in refused.stderr
    second = _cli(
        "answer", rid, "research", "20 to 30 C", "--by", "ana", "--replace", "--config", cfg
    )
    assert second.exit_code == 0
    assert "(this replaces the earlier answer '0 to 50 C' by cli)" in second.stdout


def test_answers_given_at_once_record_one_and_refuse_the_others(tmp_path: Path) -> None:
    import subprocess

    cfg, rid = _asking(tmp_path)
    exe = str(Path(sys.executable).parent / "workflow")
    procs = [
        subprocess.Popen(
            [exe, "answer", rid, "research", f"answer {n}", "--by", f"p{n}", "--config", cfg],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for n in range(4)
    ]
    ends = [(p.wait(timeout=60), *p.communicate(timeout=60)) for p in procs]
    codes = sorted(code for code, _, _ in ends)
    assert codes == [0, 2, 2, 2], ends
    (winner,) = [n for n, (code, _, _) in enumerate(ends) if code == 0]
    assert "replaces" not in ends[winner][1], ends[winner]
    for code, _, err in ends:
        if code == 2:
            assert f"was answered already: 'answer {winner}' by p{winner}" in err, err
    events = [
        json.loads(line)
        for line in (tmp_path / "handoffs" / "workflows" / rid / "events.jsonl")
        .read_text()
        .splitlines()
    ]
    answered = [e for e in events if e["event"] == "step_answered"]
    assert [(e["answer"], e["by"]) for e in answered] == [(f"answer {winner}", f"p{winner}")]


def test_fixtures_take_an_expect_file_of_any_name_and_numeric_inputs(tmp_path: Path) -> None:
    doc = {
        "name": "numbers",
        "caller": "manager",
        "inputs": {"q": {"required": True}},
        "steps": [{"id": "a", "agent": "webster", "task": "Find {{ inputs.q }}."}],
        "outputs": {"asked": "{{ inputs.q }}"},
    }
    cfg, wf = _setup(tmp_path, doc)
    fixtures = tmp_path / "fx"
    fixtures.mkdir()
    (fixtures / "a.json").write_text(json.dumps({"result": "found"}))
    (fixtures / "inputs.json").write_text(json.dumps({"q": 1}))
    (fixtures / "wanted.yaml").write_text(yaml.safe_dump({"status": "complete"}))
    res = _cli(
        "test", wf, "--fixtures", str(fixtures), "--expect", str(fixtures / "wanted.yaml"),
        "--json", "--config", cfg,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["inputs"] == {"q": "1"} and report["outputs"] == {"asked": "1"}
    assert report["expectations"] == []
    (fixtures / "inputs.json").write_text(json.dumps({"q": 1, "qq": "x"}))
    res = _cli("test", wf, "--fixtures", str(fixtures), "--config", cfg)
    assert res.exit_code == 2
    assert "the workflow has no input `qq`; did you mean `q`? Its inputs: `q`." in res.stderr
