"""Text from outside (agents, models, config files) cannot drive the user's terminal.

``engine.textio.terminal_text`` is held to a table; then the real CLI (subprocesses, one
of them on a pseudo-terminal, and click's runner) runs a command agent whose answer and
error text carry escape sequences, and every byte printed is checked.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import tty
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from engine.cli import orchestrate, workflow
from engine.textio import TerminalStream, json_text, terminal_text
from tests import standins
from tests.helpers import demo_config, write_config

HOSTILE = "\x1b[31mRED\x1b[0m\x07bell\x1b]0;pwned\x07 \r\rOVERWRITE"

#: Bytes a terminal may act on: C0 controls but tab and newline, DEL, and (as UTF-8)
#: the C1 controls U+0080-U+009F.
_C0 = {b for b in range(0x20) if b not in (0x09, 0x0A)} | {0x7F}


def _controls(out: bytes) -> list[str]:
    """The control characters in ``out`` (decoded as UTF-8), by name."""
    text = out.decode("utf-8")
    return [
        f"U+{ord(c):04X}"
        for c in text
        if ord(c) in _C0 or 0x80 <= ord(c) <= 0x9F or 0x202A <= ord(c) <= 0x202E
    ]


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain text", "plain text"),
        ("tab\tand\nnewline", "tab\tand\nnewline"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),  # CSI (colour)
        ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),  # OSC: window title, BEL-terminated
        ("\x1b]8;;http://x\x1b\\link", "\\x1b]8;;http://x\\x1b\\link"),  # OSC 8, ST
        ("\x1bP+q\x1b\\", "\\x1bP+q\\x1b\\"),  # DCS
        ("lone \x1b", "lone \\x1b"),
        ("\x9b31m", "\\x9b31m"),  # C1 CSI
        ("\x85\x9d\x80", "\\x85\\x9d\\x80"),
        ("a\rb", "a\\rb"),  # carriage return: overwriting a line
        ("line\r\n", "line\n"),  # CRLF is a line end
        (
            "bell\x07 back\x08 vt\x0b ff\x0c nul\x00 del\x7f",
            "bell\\x07 back\\x08 vt\\x0b ff\\x0c nul\\x00 del\\x7f",
        ),
        ("abc\u202edcba", "abc\\u202edcba"),  # bidi override (CVE-2021-42574)
        ("é ü 中 ✔ → \u00a0", "é ü 中 ✔ → \u00a0"),  # text, not controls
    ],
    ids=lambda v: repr(v)[:24],
)
def test_terminal_text_escapes_every_control(raw: str, shown: str) -> None:
    assert terminal_text(raw) == shown
    assert terminal_text(shown) == shown  # idempotent: printing twice changes nothing
    assert not _controls(shown.encode())


def test_json_text_keeps_the_value_and_drops_raw_controls() -> None:
    value = {"result": HOSTILE + "\x9b\x7f\u202e", "ok": "é"}
    text = json_text(json.dumps(value, ensure_ascii=False))
    assert json.loads(text) == value
    assert not _controls(text.encode())


def test_terminal_stream_refuses_bytes() -> None:
    import io

    buf = io.StringIO()
    stream = TerminalStream(buf)
    stream.write(HOSTILE)
    with pytest.raises(TypeError):
        stream.write(b"\x1b]0;pwned\x07")  # type: ignore[arg-type]
    assert buf.getvalue() == terminal_text(HOSTILE)


#: A command agent that answers ``blocked`` with ``question`` (its text in ``Q``).
ASKER = """import json, os
from pathlib import Path
from engine.handoff import make_handoff, write_handoff
h = make_handoff(run_id=os.environ["ORCH_RUN_ID"], agent=os.environ["ORCH_AGENT"],
                 status="blocked", result="I need to know", confidence="low",
                 key=os.environ["ORCH_HANDOFF_KEY"])
h["question"] = os.environ["Q"]
write_handoff(Path(os.environ["ORCH_HANDOFF_PATH"]), h)
"""


def _hostile_config(tmp_path: Path) -> Path:
    """webster answers HOSTILE; secretary asks HOSTILE as its question."""
    raw = demo_config(tmp_path)
    gw = raw["gateway"]["agents"]
    gw["webster"] = {"kind": "command", "argv": [sys.executable, "-c", f"print({HOSTILE!r})"]}
    gw["secretary"] = {
        "kind": "command",
        "argv": [sys.executable, "-c", ASKER],
        "env": {"Q": HOSTILE},
    }
    return write_config(tmp_path, raw)


def _cli(tmp_path: Path, *args: str, tty_out: bool = False) -> tuple[int, bytes]:
    """Run ``orchestrate``/``workflow`` ARGS as a process; stdout and stderr together, on
    a pseudo-terminal (raw: no newline translation) when ``tty_out``."""
    argv = [str(Path(sys.executable).parent / args[0]), *args[1:]]
    env = {**os.environ, "ORCHESTRATOR_CONFIG": str(tmp_path / "orchestrator.yaml")}
    if not tty_out:
        proc = subprocess.run(
            argv,
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=120,
        )
        return proc.returncode, proc.stdout
    master, slave = pty.openpty()
    tty.setraw(slave)
    with subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=slave, stderr=slave) as p:
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        rc = p.wait(timeout=120)
    os.close(master)
    return rc, b"".join(chunks)


def _run_id(out: bytes) -> str:
    import re

    found = re.search(rb"orch-\d{8}T\d{6}-[0-9a-f]{8}", out)
    assert found, out
    return found.group().decode()


def test_agent_result_cannot_drive_the_terminal(tmp_path: Path) -> None:
    _hostile_config(tmp_path)
    rc, out = _cli(tmp_path, "orchestrate", "webster", "go", "--caller", "manager", tty_out=True)
    assert rc == 0, out
    assert not _controls(out), out
    assert b"\\x1b]0;pwned\\x07 \\r\\rOVERWRITE" in out  # shown, escaped
    run_id = _run_id(out)
    for tty_out in (True, False):
        rc, out = _cli(tmp_path, "orchestrate", "show", run_id, tty_out=tty_out)
        assert rc == 0 and not _controls(out), out
        assert b"\\x07bell\\x1b]0;pwned\\x07 \\r\\rOVERWRITE" in out
    rc, out = _cli(tmp_path, "orchestrate", "show", run_id, "--json", tty_out=True)
    assert not _controls(out), out
    assert json.loads(out)["result"] == HOSTILE  # --json: the exact value, escaped as JSON


def test_agent_text_in_workflow_lines_outputs_status_and_runs(tmp_path: Path) -> None:
    _hostile_config(tmp_path)
    wf = tmp_path / "hostile.yaml"
    wf.write_text(
        yaml.safe_dump(
            {
                "name": "hostile",
                "caller": "manager",
                "steps": [
                    {"id": "find", "agent": "webster", "task": "go"},
                    {"id": "ask", "agent": "secretary", "task": "go"},
                ],
                "outputs": {"answer": "{{ steps.find.result }}"},
            }
        )
    )
    rc, out = _cli(tmp_path, "workflow", "run", str(wf), "--non-interactive")
    assert rc == 3, out  # waiting for the answer to secretary's question
    assert not _controls(out), out
    run_id = out.split(b"run ", 1)[1].split(b" ", 1)[0].decode()
    for args in (("status", run_id), ("runs",), ("status", run_id, "--json")):
        for tty_out in (True, False):
            rc, out = _cli(tmp_path, "workflow", *args, tty_out=tty_out)
            assert not _controls(out), (args, out)
    rc, out = _cli(tmp_path, "workflow", "status", run_id)
    assert b"\\x1b]0;pwned" in out, out  # the question, escaped
    for args in (("text",), ("json",)):
        rc, out = _cli(tmp_path, "metrics", *args, tty_out=True)
        assert rc == 0 and not _controls(out), out
    # on a terminal: rich's live table, which writes its own escape sequences
    rc, out = _cli(tmp_path, "workflow", "run", str(wf), "--non-interactive", tty_out=True)
    assert rc == 3, out
    assert b"\x1b]0;" not in out and b"\x07" not in out and b"\r\r" not in out, out
    assert b"\x1b[?25l" in out  # rich's own sequences still reach the terminal


def test_config_error_quoting_a_name_is_escaped(tmp_path: Path) -> None:
    cfg = tmp_path / "orchestrator.yaml"
    cfg.write_text(
        'handoffs_dir: h\nagents:\n  "evil\\e]0;pwned\\a\\r": {url: local}\n', encoding="utf-8"
    )
    res = CliRunner().invoke(orchestrate, ["show", "x", "--config", str(cfg)])
    assert res.exit_code == 2, res.output
    assert not _controls(res.output.encode()), res.output
    assert "evil\\x1b]0;pwned\\x07\\r" in res.output


def test_runner_sees_the_same_escapes(tmp_path: Path, demo_cfg: Any) -> None:
    """click's runner (the tests' way in) goes through the same stream as a terminal."""
    res = CliRunner().invoke(
        workflow, ["status", "wf-\x1b]0;x\x07", "--config", str(tmp_path / "orchestrator.yaml")]
    )
    assert not _controls(res.output.encode()), res.output


chat_api = standins.chat_api


def test_model_answer_cannot_drive_the_terminal(tmp_path: Path, chat_api: Any) -> None:
    """A model agent (kind: openai) whose answer carries escape sequences, behind a real
    chat-completions stand-in: the answer is the result, shown escaped."""
    api = chat_api(reply=lambda body: HOSTILE)
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {"kind": "openai", "base_url": api.base_url, "model": "m"}
    write_config(tmp_path, raw)
    rc, out = _cli(tmp_path, "orchestrate", "webster", "go", "--caller", "manager", tty_out=True)
    assert rc == 0, out
    assert not _controls(out), out
    assert b"\\x1b]0;pwned\\x07 \\r\\rOVERWRITE" in out
