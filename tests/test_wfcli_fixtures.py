"""A fixture directory's JSON files (`workflow test NAME --fixtures DIR`) are read as
strictly as YAML is (engine/yamlio.py): a key written twice, NaN/Infinity, a number too
large to be finite and an integer of more than 30 digits are refused naming the file and
the key, and a value of the wrong kind is named as JSON names it (null, array, object)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from engine.cli import workflow

CONFIG = {
    "handoffs_dir": "./handoffs",
    "gateway": {"embedded": True,
                "agents": {"echo": {"kind": "echo"}, "checker": {"kind": "echo"}}},
    "agents": {"boss": {"url": "local"}, "echo": {"url": "local"}, "checker": {"url": "local"}},
    "acl": {"boss": ["*"]},
}  # fmt: skip
WF = {
    "name": "one",
    "caller": "boss",
    "inputs": {"q": {"required": True}},
    "steps": [{"id": "a", "agent": "echo", "task": "Find {{ inputs.q }}."}],
    "outputs": {"asked": "{{ inputs.q }}"},
}


def _test(
    tmp_path: Path, inputs_text: str, name: str = "inputs.json", step: str = '{"result": "found"}'
) -> Any:
    cfg = tmp_path / "orchestrator.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    wf = tmp_path / "one.yaml"
    wf.write_text(yaml.safe_dump(WF), encoding="utf-8")
    fx = tmp_path / "fx"
    fx.mkdir(exist_ok=True)
    (fx / "a.json").write_text(step, encoding="utf-8")
    (fx / name).write_text(inputs_text, encoding="utf-8")
    return CliRunner(env={"ORCHESTRATOR_CONFIG": None}).invoke(
        workflow, ["test", str(wf), "--fixtures", str(fx), "--json", "--config", str(cfg)]
    )


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('{"q": "ok", "q": "dup"}',
         "key `q` is written twice in one object: keep one, as the last would silently win."),
        ('{"q": 1.0e400}',
         "`q` holds `1.0e400`, a number too large to be finite; write a plain number, or "
         "quote the value as text."),
        ('{"q": NaN}',
         "`q` holds `NaN`, which JSON does not allow (only finite numbers); write a plain "
         "number, or quote the value as text."),
        ('{"q": -Infinity}', "`q` holds `-Infinity`, which JSON does not allow"),
        ('{"q": ' + "1" * 50 + "}",
         "`q` holds `111111111111…`, an integer of more than 30 digits; write a plain number, "
         "or quote the value as text."),
        ('{"q": [1, NaN]}', "`q` holds `NaN`"),
    ],
    ids=["duplicate-key", "too-large", "nan", "infinity", "50-digits", "in-an-array"],
)  # fmt: skip
def test_inputs_json_is_read_strictly(tmp_path: Path, text: str, said: str) -> None:
    res = _test(tmp_path, text)
    assert res.exit_code == 2, res.output
    path = tmp_path / "fx" / "inputs.json"
    assert res.stderr.startswith(f"error: `{path}`: {said}"), res.stderr
    assert json.loads(res.stdout)["exit_code"] == 2


def test_a_step_fixture_is_read_as_strictly(tmp_path: Path) -> None:
    res = _test(tmp_path, '{"q": "x"}')
    assert res.exit_code == 0, res.output
    res = _test(tmp_path, '{"q": "x"}', step='{"status": "failed", "status": "complete"}')
    assert res.exit_code == 2
    assert "key `status` is written twice in one object" in res.stderr


def test_what_json_allows_still_reads(tmp_path: Path) -> None:
    res = _test(tmp_path, '{"q": 12345678901234567890}')
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["inputs"] == {"q": "12345678901234567890"}
    res = _test(tmp_path, '{"q": 1.5e3}')
    assert json.loads(res.stdout)["inputs"] == {"q": "1500.0"}


@pytest.mark.parametrize(
    ("value", "json_word", "yaml_word"),
    [(None, "null", "null"), ([1], "an array", "a list"), ({"a": 1}, "an object", "a mapping")],
    ids=["null", "array", "object"],
)
def test_wrong_kinds_are_named_as_the_files_language_names_them(
    tmp_path: Path, value: Any, json_word: str, yaml_word: str
) -> None:
    res = _test(tmp_path, json.dumps({"q": value}))
    assert res.exit_code == 2
    path = tmp_path / "fx" / "inputs.json"
    assert (
        f"`{path}`: input `q` must be text, a number or a boolean, not {json_word}." in res.stderr
    )
    assert "NoneType" not in res.stderr and "dict" not in res.stderr
    (path).unlink()
    res = _test(tmp_path, yaml.safe_dump({"q": value}), name="inputs.yaml")
    assert res.exit_code == 2
    assert f"input `q` must be text, a number or a boolean, not {yaml_word}." in res.stderr


def test_a_file_of_the_wrong_kind_is_named_in_json_words(tmp_path: Path) -> None:
    res = _test(tmp_path, "[1, 2]")
    assert res.exit_code == 2
    path = tmp_path / "fx" / "inputs.json"
    assert (
        f"`{path}` must map input names to values (text, numbers, booleans), not an array."
        in res.stderr
    )
