"""What a newcomer met on the command line, second round: click's own usage dumps, `--json`
that gave no JSON on failure, a closed pipe's exit code, styling despite NO_COLOR, an
unchecked `metrics --caller`, error wording that differed by path. Real CLI (CliRunner or
a subprocess), real delegations and runs on the embedded demo gateway."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.cli import metrics, orchestrate, workflow
from tests.helpers import demo_config, write_config

GROUPS = {"orchestrate": orchestrate, "workflow": workflow, "metrics": metrics}
NO_ENV: dict[str, str | None] = {
    "ORCHESTRATOR_CONFIG": None,
    "ORCH_SERVER": None,
    "ORCH_HANDOFF_KEY": None,
    "NO_COLOR": None,
}


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("clifix")
    return write_config(tmp, demo_config(tmp))


@pytest.fixture(scope="module")
def run_id(config: Path) -> str:
    """A finished run of `quick-research`, for `workflow status`."""
    res = CliRunner(env=NO_ENV).invoke(
        workflow, ["run", "quick-research", "-i", "query=CTE", "-q", "--json",
                   "--config", str(config)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    rid: str = json.loads(res.stdout)["runId"]
    return rid


def cli(program: str, *args: str, **env: str) -> Any:
    return CliRunner(env={**NO_ENV, **env}).invoke(GROUPS[program], list(args))


def program(name: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """The console script ``name`` in a real process."""
    code = f"from engine.cli import {name}_main; {name}_main()"
    env = {k: v for k, v in os.environ.items() if k not in NO_ENV}
    env.update(kw.pop("env", {}))
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.run(
        [sys.executable, "-c", code, *args], text=True, timeout=120, env=env,
        stdin=subprocess.DEVNULL, **kw,
    )  # fmt: skip


# ------------------------------------------------------------------ 1. usage errors

USAGE = {
    "missing-caller": (
        "orchestrate", ["webster", "x"],
        "error: `orchestrate delegate` needs `--caller CALLER`: who delegates (checked against "
        "the ACL). Add it, or see `orchestrate delegate --help`.",
    ),
    "mistyped-command": (
        "orchestrate", ["shwo", "orch-x"],
        "error: `shwo` is neither a command of `orchestrate` nor an agent of the config; did "
        "you mean `show`? See `orchestrate --help` for the commands (`orchestrate AGENT TASK "
        "--caller C` delegates to an agent).",
    ),
    "missing-reason": (
        "workflow", ["reject", "RUN", "STEP"],
        "error: `workflow reject` needs `--reason REASON`: why (recorded; dependents are "
        "skipped). Add it, or see `workflow reject --help`.",
    ),
    "bad-choice": (
        "orchestrate", ["handoff", "write", "--run-id", "r", "--agent", "a", "--key", "k",
                        "--status", "done", "--result", "x"],
        "error: `--status` must be one of `complete`, `partial`, `blocked`, `failed`, not "
        "`done`. See `orchestrate handoff write --help`.",
    ),
    "near-choice": (
        "workflow", ["graph", "x", "--format", "dott"],
        "error: `--format` must be one of `mermaid`, `dot`, not `dott`; did you mean `dot`? "
        "See `workflow graph --help`.",
    ),
    "unknown-option": (
        "workflow", ["list", "--server", "http://127.0.0.1:9"],
        "error: `workflow list` has no option `--server`. See `workflow list --help`.",
    ),
    "near-option": (
        "workflow", ["runs", "--limt", "3"],
        "error: `workflow runs` has no option `--limt`; did you mean `--limit`? See "
        "`workflow runs --help`.",
    ),
    "unknown-command": (
        "metrics", ["bogus"],
        "error: `metrics` has no command `bogus`. Its commands: `json`, `text`. See "
        "`metrics --help`.",
    ),
    "near-command": (
        "workflow", ["stauts", "wf-x"],
        "error: `workflow` has no command `stauts`; did you mean `status`? Its commands: "
        "`answer`, `approve`, `cancel`, `graph`, `list`, `reject`, `resume`, `run`, `runs`, "
        "`status`, `test`, `validate`. See `workflow --help`.",
    ),
    "range": (  # docs/agents.md, "Limits and errors"
        "orchestrate", ["webster", "x", "--caller", "manager", "--channel-messages", "200"],
        "error: `--channel-messages` must be a whole number from 1 to 100, not `200`. See "
        "`orchestrate delegate --help`.",
    ),
    "missing-argument": (
        "workflow", ["answer", "RUN"],
        "error: `workflow answer` needs the argument `STEP`. Add it, or see "
        "`workflow answer --help`.",
    ),
    "option-without-value": (
        "orchestrate", ["handoff", "write", "--run-id"],
        "error: `--run-id` needs a value. See `orchestrate handoff write --help`.",
    ),
    "extra-argument": (
        "workflow", ["runs", "extra"],
        'error: `workflow runs` does not take `extra`: too many arguments (a text with spaces '
        'goes in quotes, "like this"). See `workflow runs --help`.',
    ),
}  # fmt: skip


@pytest.mark.parametrize(("prog", "args", "said"), USAGE.values(), ids=list(USAGE))
def test_a_usage_error_is_the_projects_one_paragraph(
    prog: str, args: list[str], said: str, config: Path
) -> None:
    res = cli(prog, *args, "--config", str(config)) if prog == "orchestrate" and args[0] in (
        "webster", "shwo"
    ) else cli(prog, *args)
    assert res.exit_code == 2, res.output
    assert res.stderr.splitlines() == [said]
    assert res.stdout == ""


def test_a_usage_error_in_a_real_process_and_help_unchanged(config: Path) -> None:
    proc = program("orchestrate", "webster", "x", "--config", str(config))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: `orchestrate delegate` needs `--caller CALLER`")
    assert "Usage:" not in proc.stderr and "Try '" not in proc.stderr
    helped = program("orchestrate", "delegate", "--help")
    assert helped.returncode == 0
    assert helped.stdout.startswith("Usage: orchestrate delegate [OPTIONS] AGENT TASK\n")
    bare = cli("workflow")  # a program given no command still shows its help
    assert bare.exit_code == 2 and "Usage: workflow [OPTIONS] COMMAND" in bare.output


def test_an_agent_named_like_a_command_is_still_delegated_to(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["agents"]["shows"] = {"url": "local"}
    raw["gateway"]["agents"]["shows"] = {"kind": "echo"}
    config = write_config(tmp_path, raw)
    res = cli("orchestrate", "shows", "hello", "--caller", "manager", "--json",
              "--config", str(config))  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["agent"] == "shows"


# ------------------------------------------------------------------ 2. --json on failure

FAILING = {
    "unknown-agent": ("orchestrate", ["nosuch", "x", "--caller", "manager"], 2,
                      "unknown agent `nosuch`"),
    "no-record": ("orchestrate", ["show", "orch-nope"], 2, "no record for `orch-nope`"),
    "acl": ("orchestrate", ["manager", "x", "--caller", "webster"], 5,
            "ACL refuses `webster` -> `manager`"),
    "fixtures": ("workflow", ["test", "nosuch", "--fixtures", "fx"], 2,
                 "the fixtures folder `fx` (`--fixtures`) does not exist"),
    "usage": ("orchestrate", ["webster", "x"], 2, "`orchestrate delegate` needs `--caller"),
}  # fmt: skip


@pytest.mark.parametrize(("prog", "args", "code", "said"), FAILING.values(), ids=list(FAILING))
def test_json_failures_print_one_json_object(
    prog: str, args: list[str], code: int, said: str, config: Path
) -> None:
    res = cli(prog, *args, "--json", "--config", str(config))
    assert res.exit_code == code, res.output
    doc = json.loads(res.stdout)
    assert set(doc) == {"error", "exit_code"} and doc["exit_code"] == code
    assert doc["error"].startswith(said), doc
    assert res.stderr.strip() == f"error: {doc['error']}"  # the paragraph, as without --json


def test_json_failure_of_a_real_process(config: Path) -> None:
    proc = program("orchestrate", "manager", "x", "--caller", "webster", "--json",
                   "--config", str(config))  # fmt: skip
    assert proc.returncode == 5
    assert json.loads(proc.stdout) == {
        "error": proc.stderr.strip().removeprefix("error: "), "exit_code": 5
    }


# ------------------------------------------------------------------ 7. closed pipe


@pytest.mark.parametrize(
    "words",
    [["workflow", "status", "RUN"], ["workflow", "list"], ["workflow", "runs"],
     ["metrics", "text"], ["workflow", "status", "RUN", "--json"]],
    ids=["status", "list", "runs", "metrics-text", "status-json"],
)  # fmt: skip
def test_a_closed_pipe_keeps_the_commands_exit_code(
    words: list[str], config: Path, run_id: str
) -> None:
    """`workflow status RUN | head -1`: the reader gone before the first write, the
    command still ends 0, with nothing on stderr, every time."""
    args = [run_id if w == "RUN" else w for w in words[1:]]
    for _ in range(2):
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            proc = program(words[0], *args, "--config", str(config),
                           stdout=write_end, stderr=subprocess.PIPE)  # fmt: skip
        finally:
            os.close(write_end)
        assert (proc.returncode, proc.stderr) == (0, "")


# ------------------------------------------------------------------ 8. NO_COLOR


def _on_a_terminal(argv: list[str], env: dict[str, str]) -> str:
    """What ``argv`` writes to a pseudo-terminal (its stdout and stderr)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            proc.kill()
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=60) == 0, out
    return out.decode("utf-8", "replace")


def test_no_color_on_a_terminal_prints_plain_progress_lines(config: Path) -> None:
    argv = [sys.executable, "-c", "from engine.cli import workflow_main; workflow_main()",
            "run", "quick-research", "-i", "query=x", "--config", str(config)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in NO_ENV}
    styled = _on_a_terminal(argv, env)
    assert "\x1b[" in styled  # the live table, on a terminal
    plain = _on_a_terminal(argv, {**env, "NO_COLOR": "1"})
    assert "\x1b" not in plain, plain
    assert "▶ research → webster" in plain and "✔ verify complete in " in plain


# ------------------------------------------------------------------ 9. metrics --caller


def test_metrics_checks_caller_as_it_checks_agent(config: Path, run_id: str) -> None:
    res = cli("metrics", "json", "--caller", "nobody", "--config", str(config))
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("error: unknown agent `nobody` (`--caller`): neither the config")
    near = cli("metrics", "json", "--caller", "managr", "--config", str(config))
    assert near.exit_code == 2 and "did you mean `manager`?" in near.stderr
    known = cli("metrics", "json", "--caller", "auditor", "--config", str(config))
    assert known.exit_code == 0, known.output  # in the config, nothing delegated by it
    assert json.loads(known.stdout)["agents"] == {}
    made = cli("metrics", "json", "--caller", "manager", "--config", str(config))
    assert made.exit_code == 0 and json.loads(made.stdout)["totals"]["workflow_runs"] >= 1


# ------------------------------------------------------------------ 6, 10. wording


def test_handoff_help_names_its_two_commands() -> None:
    res = cli("orchestrate", "handoff", "--help")
    assert res.exit_code == 0
    assert "What an agent runs: write its handoff, or say what it is doing" in res.stdout
    assert "show" not in res.stdout.split("Options:")[0]


def test_answer_names_the_handoffs_directory_as_a_path(config: Path) -> None:
    res = cli("orchestrate", "answer", "orch-nope", "x", "--config", str(config))
    assert res.exit_code == 2
    handoffs = config.parent / "handoffs"
    assert res.stderr.startswith(f"error: no record for `orch-nope` in `{handoffs}`.")
    assert "file://" not in res.stderr


def test_an_unreachable_server_is_said_in_words() -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        res = cli("orchestrate", "show", "orch-nope", "--server", url)
    assert res.exit_code == 2
    assert res.stderr.strip() == (
        f"error: cannot reach the server `{url}`: connection refused (nothing listens on that "
        "host and port). Start `orchestrate serve` there, or give the address it serves on "
        "(`--server URL` or $ORCH_SERVER)."
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.servekit import Served

    srv = Served(tmp_path_factory.mktemp("clifix-serve")).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_a_servers_not_found_keeps_the_local_hint(served: Any) -> None:
    from tests.servekit import TOKENS

    env = {"ORCH_SERVER_TOKEN": TOKENS["alice"][1]}
    shown = cli("orchestrate", "show", "orch-nope", "--server", served.url, **env)
    assert shown.exit_code == 2
    assert shown.stderr.startswith("error: no delegation `orch-nope` in ")
    assert shown.stderr.rstrip().endswith(
        "Run ids are printed by `orchestrate` (`record: ...`) and listed by `metrics json` on "
        "the server's host."
    )
    status = cli("workflow", "status", "wf-nope", "--server", served.url, **env)
    assert status.exit_code == 2
    assert status.stderr.startswith("error: no workflow run `wf-nope` in ")
    assert status.stderr.rstrip().endswith(
        f"List runs with `workflow runs --server {served.url}`."
    )
