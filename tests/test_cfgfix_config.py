"""What an operator met setting the tool up: `$VAR` in config paths and URLs taken
literally, a `handoffs_dir` that is a file or empty, `--json` failures without JSON,
misleading usage errors, hints naming the wrong knob, unchecked systemd templates, and one
file pool run at two sizes. Real CLI processes on a real config and handoffs directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import wait_for

NO_ENV = ("ORCHESTRATOR_CONFIG", "ORCH_SERVER", "ORCH_HANDOFF_KEY", "NO_COLOR")


def base(**extra: Any) -> dict[str, Any]:
    """The trial's `g.yaml`: one echo agent on the embedded gateway, a manager calling."""
    raw: dict[str, Any] = {
        "handoffs_dir": "hg",
        "workflow_dirs": ["wfs"],
        "gateway": {"embedded": True, "agents": {"webster": {"kind": "echo"}}},
        "agents": {"manager": {"url": "local"}, "webster": {"url": "local"}},
        # a fixed size: an adaptive pool reads the host's load, and a busy host's
        # emergency mode would hold these delegations (what is tested is elsewhere)
        "pool": {"adaptive": False},
    }
    raw.update(extra)
    return raw


def write(tmp_path: Path, raw: dict[str, Any], name: str = "g.yaml") -> Path:
    (tmp_path / "wfs").mkdir(exist_ok=True)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def program(name: str, *args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The console script ``name`` in a real process."""
    code = f"from engine.cli import {name}_main; {name}_main()"
    full = {k: v for k, v in os.environ.items() if k not in NO_ENV}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", code, *args], text=True, timeout=timeout, env=full,
        stdin=subprocess.DEVNULL, capture_output=True, cwd=cwd,
    )  # fmt: skip


# ------------------------------------------------------- 1. `$VAR` is not interpolated

INTERPOLATED = {
    "handoffs-braces": (
        {"handoffs_dir": "${TRIALC_UNSET}/h"}, "handoffs_dir", "${TRIALC_UNSET}", "path",
    ),
    "handoffs-home": ({"handoffs_dir": "$HOME/h"}, "handoffs_dir", "$HOME", "path"),
    "token-file": (
        {"agents": {"manager": {"url": "local"},
                    "webster": {"url": "http://127.0.0.1:9", "token_file": "$HOME/.tok"}}},
        "agents.webster.token_file", "$HOME", "path",
    ),
    "url": (
        {"agents": {"manager": {"url": "local"},
                    "webster": {"url": "http://${GW_HOST}:9", "token_env": "T"}}},
        "agents.webster.url", "${GW_HOST}", "URL",
    ),
    "workflow-dir": ({"workflow_dirs": ["$HOME/wf"]}, "workflow_dirs[0]", "$HOME", "path"),
}  # fmt: skip


@pytest.mark.parametrize("case", INTERPOLATED, ids=list(INTERPOLATED))
def test_dollar_names_in_paths_and_urls_are_refused(tmp_path: Path, case: str) -> None:
    extra, key, name, kind = INTERPOLATED[case]
    cfg = write(tmp_path, base(**extra))
    res = program("orchestrate", "webster", "hi", "--caller", "manager", "--config", str(cfg),
                  cwd=tmp_path, env={"GW_HOST": "127.0.0.1"})  # fmt: skip
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"`{key}` is `" in res.stderr
    assert f"the config does not expand environment variables, so `{name}` would be used " \
        "literally." in res.stderr
    assert f"Write the {kind} out" in res.stderr
    assert "`_env` keys" in res.stderr
    assert "Traceback" not in res.stderr
    assert not [p for p in tmp_path.rglob("*") if "$" in p.name]  # no literal `${X}` dir


def test_tilde_is_still_expanded(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    cfg = write(tmp_path, base(handoffs_dir="~/h"))
    res = program("orchestrate", "webster", "hi", "--caller", "manager", "--config", str(cfg),
                  cwd=tmp_path, env={"HOME": str(home)})  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert list((home / "h").glob("orch-*.json"))


def test_missing_workflow_dir_is_warned_about(tmp_path: Path) -> None:
    cfg = write(tmp_path, base(workflow_dirs=["wfs", "nowf"]))
    warning = (
        f"warning: `workflow_dirs` entry `{tmp_path / 'nowf'}` (`workflow_dirs[1]` of "
        f"`{cfg}`) does not exist; its templates cannot be found by name."
    )
    listed = program("workflow", "list", "--config", str(cfg), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert warning in listed.stderr
    assert "nowf" not in listed.stdout
    missing = program("workflow", "run", "nosuch", "--config", str(cfg), cwd=tmp_path)
    assert missing.returncode == 2
    assert "no workflow `nosuch`" in missing.stderr
    assert f"`workflow_dirs` entry `{tmp_path / 'nowf'}`" in missing.stderr
    ok = program("workflow", "list", "--config", str(write(tmp_path, base(), "ok.yaml")),
                 cwd=tmp_path)  # fmt: skip
    assert "warning" not in ok.stderr


# ------------------------------------------------ 2. a `handoffs_dir` that is a file

COMMANDS = {
    "delegate": ("orchestrate", "webster", "hi", "--caller", "manager"),
    "workflow-runs": ("workflow", "runs"),
    "metrics-text": ("metrics", "text"),
    "metrics-json": ("metrics", "json"),
    "pool-status": ("orchestrate", "pool", "status"),
    "show": ("orchestrate", "show", "orch-20261130T000000-abcdef12"),
}


@pytest.mark.parametrize("command", COMMANDS, ids=list(COMMANDS))
def test_handoffs_dir_that_is_a_file_is_refused_by_every_command(
    tmp_path: Path, command: str
) -> None:
    (tmp_path / "afile").write_text("not a directory\n")
    cfg = write(tmp_path, base(handoffs_dir="afile"))
    name, *args = COMMANDS[command]
    res = program(name, *args, "--config", str(cfg), cwd=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert (
        f"`handoffs_dir` of `{cfg}` names `{tmp_path / 'afile'}`, which is a file: records go "
        "into a directory." in res.stderr
    )
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "afile.pool").exists()


def test_empty_handoffs_dir_is_refused(tmp_path: Path) -> None:
    cfg = write(tmp_path, base(handoffs_dir=""))
    res = program("orchestrate", "webster", "hi", "--caller", "manager", "--config", str(cfg),
                  cwd=tmp_path)  # fmt: skip
    assert res.returncode == 2
    assert "`handoffs_dir` is empty: give the directory records go to" in res.stderr
    assert not list(tmp_path.glob("orch-*.json"))


# ------------------------------------------------------- 3. `--json` failure shapes


def _held_agent(started: Path, go: Path) -> dict[str, Any]:
    """A command agent that leaves ``started`` once running (it holds the pool's token),
    then runs until ``go`` exists (60 s at most)."""
    script = (
        "import os, pathlib, time\n"
        f"pathlib.Path({str(started)!r}).touch()\n"
        "deadline = time.monotonic() + 60\n"
        f"while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "print('done')\n"
    )
    return {"kind": "command", "argv": [sys.executable, "-c", script], "timeout": 90}


def test_recorded_refusal_prints_its_record_with_error_and_exit_code(tmp_path: Path) -> None:
    started, go = tmp_path / "started", tmp_path / "go"
    raw = base(pool={"max_tokens": 1, "min_tokens": 1, "adaptive": False, "queue_limit": 0})
    raw["gateway"]["agents"]["slow"] = _held_agent(started, go)
    raw["agents"]["slow"] = {"url": "local"}
    cfg = write(tmp_path, raw)
    code = "from engine.cli import orchestrate_main; orchestrate_main()"
    env = {k: v for k, v in os.environ.items() if k not in NO_ENV}
    slow = subprocess.Popen(
        [sys.executable, "-c", code, "slow", "t", "--caller", "manager", "--config", str(cfg)],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(started.exists, "the slow agent to start")
        res = program("orchestrate", "webster", "t", "--caller", "manager", "--json",
                      "--config", str(cfg), cwd=tmp_path)  # fmt: skip
    finally:
        go.touch()
        slow.wait(timeout=120)
    assert res.returncode == 5, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert doc["envelope"]["outcome"] == "errored"
    assert doc["exit_code"] == 5
    assert doc["error"].startswith("token pool refused run `")
    assert doc["error"] == doc["envelope"]["error"]
    assert f"error: {doc['error']}" in res.stderr
    recorded = json.loads((tmp_path / "hg" / f"{doc['runId']}.json").read_text())
    assert "exit_code" not in recorded and "error" not in recorded  # the record stays as is
    # the ACL's refusal (nothing recorded) has the same two keys
    acl = program("orchestrate", "webster", "t", "--caller", "webster", "--json",
                  "--config", str(cfg), cwd=tmp_path)  # fmt: skip
    assert acl.returncode == 5
    assert set(json.loads(acl.stdout)) == {"error", "exit_code"}


def test_successful_delegation_json_is_the_record_alone(tmp_path: Path) -> None:
    cfg = write(tmp_path, base())
    res = program("orchestrate", "webster", "hi", "--caller", "manager", "--json",
                  "--config", str(cfg), cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc == json.loads((tmp_path / "hg" / f"{doc['runId']}.json").read_text())


METRICS_FAILURES = {
    "handoffs-dir": (["--handoffs-dir", "nonex"], "`--handoffs-dir nonex` is not an existing"),
    "since": (["--since", "yesterday"], "`--since yesterday`: expected a duration"),
    "bad-config": (["--config", "bad.yaml"], "`bad.yaml` is not a valid config:"),
}


@pytest.mark.parametrize("case", METRICS_FAILURES, ids=list(METRICS_FAILURES))
def test_metrics_json_failure_prints_the_error_object(tmp_path: Path, case: str) -> None:
    write(tmp_path, base())
    (tmp_path / "bad.yaml").write_text("agents: {manager: {url: local}}\nhandoffs_dir: ''\n")
    args, start = METRICS_FAILURES[case]
    res = program("metrics", "json", *args, cwd=tmp_path, env={"ORCHESTRATOR_CONFIG": "g.yaml"})
    assert res.returncode == 2, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    # the object every --json command prints on failure (`problems` when the error lists some)
    assert set(doc) - {"problems"} == {"error", "exit_code"} and doc["exit_code"] == 2
    assert doc["error"].startswith(start)
    assert f"error: {doc['error']}" in res.stderr
    text = program("metrics", "text", *args, cwd=tmp_path, env={"ORCHESTRATOR_CONFIG": "g.yaml"})
    assert text.returncode == 2 and text.stdout == ""  # `metrics text` stays plain


# ------------------------- 4. a first word that is neither a command nor an agent

NOT_A_COMMAND = {
    "config-show": (["config", "show"], "`config`", "."),
    "config": (["config"], "`config`", "."),
    "foo-bar": (["foo", "bar"], "`foo`", "."),
    "near-command": (["pol", "status"], "`pol`", "; did you mean `pool`?"),
    "near-agent": (["webstr", "x"], "`webstr`", "; did you mean `webster`?"),
}


@pytest.mark.parametrize("case", NOT_A_COMMAND, ids=list(NOT_A_COMMAND))
def test_a_word_neither_command_nor_agent_is_named_as_such(tmp_path: Path, case: str) -> None:
    args, word, near = NOT_A_COMMAND[case]
    cfg = write(tmp_path, base())
    res = program("orchestrate", *args, "--config", str(cfg), cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.startswith(
        f"error: {word} is neither a command of `orchestrate` nor an agent of the config{near} "
        "See `orchestrate --help` for the commands"
    ), res.stderr
    assert "--caller CALLER" not in res.stderr
    if near == ".":
        assert res.stderr.rstrip().endswith("Agents of the config: manager, webster.")
    assert res.stdout == ""


def test_a_delegation_with_caller_to_an_unknown_agent_keeps_its_message(tmp_path: Path) -> None:
    cfg = write(tmp_path, base())
    res = program("orchestrate", "nosuch", "x", "--caller", "manager", "--config", str(cfg),
                  cwd=tmp_path)  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.startswith("error: unknown agent `nosuch`. Known agents: manager, webster.")
    agent = program("orchestrate", "webster", "x", "--config", str(cfg), cwd=tmp_path)
    assert "`orchestrate delegate` needs `--caller CALLER`" in agent.stderr  # an agent


# ------------------------------------- 5. an unwritable `--workspace` is named as such


@pytest.fixture
def unwritable(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody may create files in: read-only by mode, or, for root (whom
    modes do not stop), immutable (`chattr +i`; skipped where the file system has none)."""
    ws = tmp_path / "ws"
    ws.mkdir()
    if os.geteuid() != 0:
        ws.chmod(0o555)
        yield ws
        ws.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(ws)], capture_output=True).returncode != 0:
        pytest.skip("no immutable attribute here (chattr +i), and root ignores modes")
    try:
        yield ws
    finally:
        subprocess.run(["chattr", "-i", str(ws)], check=True)


def test_unwritable_workspace_hint_names_the_workspace_option(
    tmp_path: Path, unwritable: Path
) -> None:
    cfg = write(tmp_path, base())
    res = program("orchestrate", "agent-skill", "install", "--workspace", "ws", "--agent",
                  "webster", "--config", str(cfg), cwd=tmp_path)  # fmt: skip
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.startswith(f"error: cannot use `{unwritable / 'skills'}`: ")
    assert "fix the path or its permissions (e.g. `--workspace ws`) and run again." in res.stderr
    assert "handoffs_dir" not in res.stderr


# --------------------------- 6. systemd templates: unknown placeholders, relative paths

REMOTE = {
    "manager": {"url": "http://127.0.0.1:18800", "token_env": "T"},
    "webster": {"url": "http://127.0.0.1:18828", "token_env": "T"},
}


def test_systemd_refuses_unknown_placeholders(tmp_path: Path) -> None:
    cfg = write(tmp_path, {"handoffs_dir": "hg", "agents": REMOTE, "operations": {"systemd": {
        "exec_start": "/bin/true --port {port} {nosuch}", "unit_name": "gw-{nme}-{x}"}}})
    res = program("orchestrate", "agents", "systemd", "--out", "out", "--config", str(cfg),
                  cwd=tmp_path)  # fmt: skip
    assert res.returncode == 2, res.stdout + res.stderr
    assert "`operations.systemd.exec_start` has the unknown placeholder `{nosuch}`; the " \
        "known ones are `{name}`, `{port}`" in res.stderr
    assert "`operations.systemd.unit_name` has the unknown placeholders `{nme}`, `{x}`" \
        in res.stderr
    assert not (tmp_path / "out").exists()


def test_systemd_paths_are_absolute_from_the_config_directory(tmp_path: Path) -> None:
    cfg = write(tmp_path, {"handoffs_dir": "hg", "agents": REMOTE, "operations": {"systemd": {
        "exec_start": "/bin/true --port {port} --token ${TOKEN}", "state_dir": "rel/{name}",
        "environment_file": "{name}.env"}}})
    res = program("orchestrate", "agents", "systemd", "--out", "out", "--config", str(cfg),
                  cwd=tmp_path / "wfs")  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = (tmp_path / "wfs" / "out" / "openclaw-webster.service").read_text().splitlines()
    assert "ExecStart=/bin/true --port 18828 --token ${TOKEN}" in lines  # systemd's own
    assert f"Environment=OPENCLAW_STATE_DIR={tmp_path}/rel/webster" in lines
    assert f"EnvironmentFile={tmp_path}/webster.env" in lines
    default = write(tmp_path, {"handoffs_dir": "hg", "agents": REMOTE}, "d.yaml")
    program("orchestrate", "agents", "systemd", "--out", "d", "--config", str(default),
            cwd=tmp_path)  # fmt: skip
    text = (tmp_path / "d" / "openclaw-webster.service").read_text()
    assert "EnvironmentFile=%h/.config/orchestrate/webster.env" in text  # specifiers kept


# ------------------------------------ 7. two configs sharing one file pool must agree


def test_two_configs_sharing_a_file_pool_must_agree(tmp_path: Path) -> None:
    started, go = tmp_path / "started", tmp_path / "go"
    raws = {}
    for name, size in (("a.yaml", 2), ("b.yaml", 6)):
        raw = base(pool={"max_tokens": size, "min_tokens": 1, "adaptive": False})
        raw["gateway"]["agents"]["slow"] = _held_agent(started, go)
        raw["agents"]["slow"] = {"url": "local"}
        raws[name] = write(tmp_path, raw, name)
    code = "from engine.cli import orchestrate_main; orchestrate_main()"
    env = {k: v for k, v in os.environ.items() if k not in NO_ENV}
    slow = subprocess.Popen(
        [sys.executable, "-c", code, "slow", "t", "--caller", "manager", "--config",
         str(raws["a.yaml"])],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(started.exists, "the slow agent to start")
        res = program("orchestrate", "webster", "t", "--caller", "manager", "--config",
                      str(raws["b.yaml"]), cwd=tmp_path)  # fmt: skip
        status = program("orchestrate", "pool", "status", "--config", str(raws["b.yaml"]),
                         cwd=tmp_path)  # fmt: skip
        as_json = program("orchestrate", "pool", "status", "--json", "--config",
                          str(raws["b.yaml"]), cwd=tmp_path)  # fmt: skip
    finally:
        go.touch()
        slow.wait(timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.startswith(
        f"error: the token pool `{tmp_path / 'hg' / '.pool'}` is in use under other settings: "
        "`pool.max_tokens` is 6 here but 2 there (another config with the same "
        "`handoffs_dir`, or `pool.dir`, uses it)."
    ), res.stderr
    assert status.returncode == 0, status.stderr
    assert "settings differ: `pool.max_tokens` is 6 here but 2 in the pool" in status.stdout
    assert json.loads(as_json.stdout)["agreed_differs"] == {"max_tokens": {"here": 6, "pool": 2}}
    # idle again: b's settings become the pool's
    again = program("orchestrate", "webster", "t", "--caller", "manager", "--config",
                    str(raws["b.yaml"]), cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0, again.stderr
