"""Secrets by their key or their issuer's shape, inline `env` secrets and URL query
tokens are masked: in `redact`, and in everything a run or a delegation leaves."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine import redact as redaction
from engine.cli import orchestrate, workflow
from engine.redact import redact, secret_parts
from tests.helpers import demo_config, write_config

GHP = "ghp_" + "abcdefghijklmnopqrstuvwxyz0123456789"
AKIA = "AKIAIOSFODNN7EXAMPLE"
GOOGLE = "AIza" + "SyA1234567890abcdefghijklmnopqrstuv"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("password=pw99zz token=tk77yy", "password=*** token=***"),
        ("secret: se88xx, passwd=pa55wd", "secret: ***, passwd=***"),
        ("passphrase = 'two words'", "passphrase = '***'"),
        ('{"password": "correct horse", "token": "t0k"}', '{"password": "***", "token": "***"}'),
        ("{'client_secret': 'cs-123'}", "{'client_secret': '***'}"),
        ("DB_PASSWORD=hunter3 GITHUB_TOKEN=abc123", "DB_PASSWORD=*** GITHUB_TOKEN=***"),
        ("aws_secret_access_key=abc/def+g", "aws_secret_access_key=***"),
        ('"password": 123456', '"password": "***"'),
        (f"push with {GHP} now", "push with ghp_*** now"),
        ("gho_" + "A" * 36 + " ghs_" + "b1" * 18, "gho_*** ghs_***"),
        ("github_pat_11ABCDEFG0123456789_abcdef", "github_pat_***"),
        (f"id {AKIA}.", "id AKIA***."),
        ("xoxb-1234-5678-abcdefgh", "xoxb-***"),
        ("glpat-abcdefghij0123456789", "glpat-***"),
        ("sk_live_" + "a1" * 12 + " rk_live_" + "Z9" * 12, "sk_live_*** rk_live_***"),
        (f"key={GOOGLE}", "key=AIza***"),
        (f"k {GOOGLE}", "k AIza***"),
        ("http://h:1/?token=qsecret777&page=2", "http://h:1/?token=***&page=2"),
        ("GET /x?a=1&X-Amz-Signature=ab12cd&sig=zz#f", "GET /x?a=1&X-Amz-Signature=***&sig=***#f"),
        ("https://h/p?access_token=abc;api_key=def", "https://h/p?access_token=***;api_key=***"),
    ],
)
def test_secret_keys_and_token_shapes_are_masked(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "-i api_key=VALUE, or `--input password=VALUE`.",
        "password={{ inputs.pw }} token=$GWTOK password=${DB_PASSWORD}",
        "inputs:\n  pw: {secret: true}\n  token: null\n",
        "PWD=/home/x OLDPWD=/tmp",
        "max_tokens: 100 tokens=5 tokenizer=x author: bob, the design of the signal",
        "token_env: ORCH_GATEWAY_TOKEN, api_key_env: OPENAI_API_KEY",
        '{"token": null, "secret": true, "password": {"min": 8}}',
        "ghp_tooshort AKIAshort AIzaShort xoxz-1234567890 sk_live_short glpat-short",
        "the key is AKIAIOSFODNN7EXAMPLEX1 long",  # not an access key id: 21 characters
        "http://h:1/?page=2&sort=name ssh://git@github.com/acme",
        "password: ***",
        # prose and the engine's own words, which the key rule first masked
        "an input that held no secret: `q` was recorded as given at the start",
        "workflow '/etc/passwd': give a workflow name",
        '{"agent": "manager", "token": "accepted"}',
        '{"token": "rejected (401)"}',
        "the URL holds a password (`?password=`)",
    ],
)
def test_placeholders_flags_and_near_misses_are_left_alone(text: str) -> None:
    assert redact(text) == text


def test_secret_parts_lists_the_new_shapes() -> None:
    parts = secret_parts(f"password=pw99zz {GHP} http://h/?token=qs777")
    assert parts == ["pw99zz", "qs777", GHP[4:]]


def test_register_url_registers_secret_query_values() -> None:
    redaction.register_url("http://127.0.0.1:1/?token=qsecret%2F777&sort=nameasc")
    try:
        assert redact("bare qsecret/777 and qsecret%2F777") == "bare *** and ***"
        assert redact("sorted by nameasc") == "sorted by nameasc"
    finally:
        redaction.forget_all()


# -- end to end ---------------------------------------------------------------------------

WF = """\
name: s
caller: manager
inputs:
  q: {required: true}
steps:
  - id: a
    agent: webster
    task: "{{ inputs.q }}"
"""

FREE_TEXT = {
    "pw99zz": "password=pw99zz",
    "tk77yy": "token=tk77yy",
    "se88xx": "secret=se88xx",
    "AK11zz22": "api_key=AK11zz22",
    GHP[4:]: GHP,
    AKIA[4:]: AKIA,
    "5678-abcdefgh": "xoxb-1234-5678-abcdefgh",
}


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_free_text_secrets_are_masked_in_a_workflow_run(tmp_path: Path) -> None:
    """The ops repro: one `echo` step repeats an input holding secrets of every kind."""
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {"kind": "echo"}
    cfg = write_config(tmp_path, raw)
    wf = tmp_path / "s.yaml"
    wf.write_text(WF, encoding="utf-8")
    q = " ".join(FREE_TEXT.values())
    res = CliRunner().invoke(
        workflow,
        ["run", str(wf), "-i", f"q={q}", "--config", str(cfg), "--json"],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    (run_dir,) = (tmp_path / "handoffs" / "workflows").iterdir()
    step = json.loads((run_dir / "a.json").read_text())
    assert step["handoff"]["result"].startswith(
        "echo: password=*** token=*** secret=*** api_key=*** ghp_*** AKIA*** xoxb-***"
    )
    for secret in FREE_TEXT:
        assert secret not in res.output, secret
        for f in _files_under(tmp_path / "handoffs"):
            assert secret not in f.read_text(errors="replace"), (secret, f)


def test_inline_env_secrets_of_a_command_agent_are_masked(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {
        "kind": "command",
        "argv": [
            sys.executable,
            "-c",
            "import os; print('pw=' + os.environ['DB_PASSWORD'] + ' tok=' + os.environ['MY_TOKEN']"
            " + ' lang=' + os.environ['LANG_NAME'])",
        ],
        "env": {"DB_PASSWORD": "hunter3abc", "MY_TOKEN": "mytok777", "LANG_NAME": "plainval"},
        "timeout": 60,
    }
    cfg = write_config(tmp_path, raw)
    res = CliRunner().invoke(
        orchestrate,
        ["delegate", "webster", "hi", "--caller", "manager", "--config", str(cfg), "--json"],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["result"] == "pw=*** tok=*** lang=plainval"
    files = _files_under(tmp_path / "handoffs")
    assert any(f.name == "stdout.log" for f in files)
    assert any("lang=plainval" in f.read_text(errors="replace") for f in files)
    for f in files:
        text = f.read_text(errors="replace")
        assert "hunter3abc" not in text and "mytok777" not in text, f


def test_a_token_in_an_agent_urls_query_is_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = demo_config(tmp_path)
    raw["agents"]["webster"] = {
        "url": "http://127.0.0.1:1/?token=qsecret777",
        "token_env": "GWTOK",
        "capabilities": ["research"],
    }
    raw["retry"] = {"delays": [0.01], "jitter": 0.0, "request_timeout": 2}
    cfg = write_config(tmp_path, raw)
    monkeypatch.setenv("GWTOK", "gwtok-123456")
    status = CliRunner().invoke(
        orchestrate, ["agents", "status", "--config", str(cfg), "--json"], catch_exceptions=False
    )
    assert "qsecret777" not in status.output
    rows = json.loads(status.stdout)
    rows = rows.get("agents", rows) if isinstance(rows, dict) else rows
    assert {"agent": "webster", "url": "http://127.0.0.1:1/?token=***"}.items() <= next(
        r for r in rows if r["agent"] == "webster"
    ).items()
    res = CliRunner().invoke(
        orchestrate,
        ["delegate", "webster", "hi", "--caller", "manager", "--config", str(cfg), "--json"],
        catch_exceptions=False,
    )
    assert res.exit_code != 0
    assert "?token=***" in res.output and "qsecret777" not in res.output
    files = _files_under(tmp_path / "handoffs")
    assert files  # the pending envelope and the record
    for f in files:
        assert "qsecret777" not in f.read_text(errors="replace"), f


def test_each_serve_token_of_a_tokens_file_and_variable_is_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.config import load_config

    (tmp_path / "tokens.yaml").write_text(
        "- {name: alice, role: operate, token: AliceServeTok3nValue123}\n"
    )
    monkeypatch.setenv("SERVE_TOKENS_T", "bob:read:BobServe:Tok3nWithColon99")
    raw = demo_config(tmp_path)
    raw["serve"] = {"tokens_file": "tokens.yaml", "tokens_env": "SERVE_TOKENS_T"}
    load_config(write_config(tmp_path, raw))
    said = redact("alice used AliceServeTok3nValue123; bob used BobServe:Tok3nWithColon99")
    assert "AliceServeTok3nValue123" not in said and "Tok3nWithColon99" not in said, said
