"""Command-line surface: a long value is cut in its middle (a path keeps its file name),
no string or path option takes "" (an empty path would mean the current directory),
`--help` wins over a repeated option, and a value from a variable names the variable."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from engine.cli import metrics, orchestrate, workflow
from engine.cli.common import usage_error
from engine.errors import OrchestratorError, clip_quoted
from tests.helpers import demo_config, write_config

PROGRAMS = {"orchestrate": orchestrate, "workflow": workflow, "metrics": metrics}

#: Options that may be given "" (each with why): free text whose empty value means
#: something, or a value another check refuses with its own words.
EMPTY_ALLOWED = {
    "orchestrate handoff write --result": "an empty result text is a result",
    "orchestrate handoff write --notes": "free-form notes",
    "orchestrate handoff write --question": "free text; `--status blocked` checks it",
    "orchestrate handoff write --data": "read as JSON, which refuses it by its own words",
    "workflow approve --input": "a gate's input given as plain text may be empty",
    "workflow run --input": "each `NAME=VALUE` is checked by its reader (`name=value`)",
    "workflow resume --input": "each `NAME=VALUE` is checked by its reader",
    "workflow validate --input": "each `NAME=VALUE` is checked by its reader",
    "workflow test --input": "each `NAME=VALUE` is checked by its reader",
}


def _run(group: Any, *args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner(env=env).invoke(group, list(args), catch_exceptions=False)


def _options(command: click.Command, path: str) -> Iterator[tuple[str, click.Option]]:
    """Every option of ``command`` and its subcommands that takes text or a path."""
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _options(sub, f"{path} {name}")
    for param in command.params:
        if not isinstance(param, click.Option) or param.is_flag or param.count:
            continue
        kind = param.type
        inner = getattr(kind, "inner", kind)
        if isinstance(inner, (click.types.StringParamType, click.Path)):
            longs = [o for o in param.opts if o.startswith("--")]
            yield f"{path} {(longs or param.opts)[0]}", param


def _all_options() -> list[tuple[str, click.Command, click.Option]]:
    found = []
    for name, group in PROGRAMS.items():
        for key, param in _options(group, name):
            found.append((key, group, param))
    return found


def test_the_walk_finds_the_options_named_in_the_fixes() -> None:
    keys = {key for key, _, _ in _all_options()}
    for key in [
        "orchestrate agent-skill install --workspace", "workflow test --fixtures",
        "orchestrate delegate --context-file", "orchestrate handoff write --dir",
        "orchestrate handoff progress --dir", "orchestrate handoff write --receiver",
        "orchestrate agents systemd --out", "workflow answer --by", "workflow approve --reason",
        "orchestrate delegate --validator", "orchestrate delegate --model",
        "workflow runs --server-token-env", "orchestrate delegate --capability",
        "workflow run --approve", "orchestrate handoff write --artifact",
    ]:
        assert key in keys, key
    assert set(EMPTY_ALLOWED) <= keys


@pytest.mark.parametrize("value", ["", "  "], ids=["empty", "blank"])
def test_every_text_or_path_option_refuses_an_empty_value(value: str) -> None:
    taken = []
    for key, group, param in _all_options():
        if key in EMPTY_ALLOWED:
            continue
        ctx = click.Context(group, info_name=key)
        try:
            param.process_value(ctx, (value,) if param.multiple else value)
        except (OrchestratorError, click.BadParameter) as exc:
            shown = exc if isinstance(exc, OrchestratorError) else usage_error(exc)
            text = str(shown)  # as the user reads it
            assert exc.exit_code == 2, key
            assert "empty" in text and any(f"`{o}`" in text for o in param.opts), (key, text)
        else:
            taken.append(key)
    assert taken == []


@pytest.mark.parametrize(
    ("group", "args", "expected"),
    [
        (orchestrate, ("agent-skill", "install", "--workspace", ""),
         "`--workspace` is empty: give the agent's workspace directory."),
        (workflow, ("test", "quick-research", "--fixtures", ""),
         "`--fixtures` is empty: give the fixtures directory."),
        (orchestrate, ("webster", "hi", "--caller", "manager", "--context-file", ""),
         "`--context-file` is empty: give the path of a text file, or leave the option out."),
        (orchestrate, ("handoff", "write", "--run-id", "r", "--agent", "a", "--status",
                       "complete", "--dir", ""),
         "`--dir` is empty: give the directory from the task message, or leave the option out."),
        (orchestrate, ("handoff", "progress", "--run-id", "r", "hi", "--dir", ""),
         "`--dir` is empty: give the directory from the task message, or leave the option out."),
        (orchestrate, ("handoff", "progress", "--run-id", "r", "hi", "--receiver", ""),
         "`--receiver` is empty: give the receiver's URL from the task message, or leave the "
         "option out."),
        (orchestrate, ("agents", "systemd", "--out", ""), "`--out` is empty: give a directory."),
        (workflow, ("answer", "wf-1", "s", "yes", "--by", ""),
         "`--by` is empty: name who answers, or leave the option out."),
        (workflow, ("approve", "wf-1", "s", "--reason", ""),
         "`--reason` is empty: say why the gate is approved, or leave the option out."),
        (orchestrate, ("webster", "hi", "--caller", "manager", "--validator", ""),
         "`--validator` is empty: name the validator agent, or leave the option out."),
        (orchestrate, ("webster", "hi", "--caller", "manager", "--model", ""),
         "`--model` is empty: name a model, or leave the option out."),
        (workflow, ("runs", "--server-token-env", ""),
         "`--server-token-env` is empty: name the environment variable that holds the "
         "server's token, or leave the option out."),
        (orchestrate, ("--capability", "", "hi", "--caller", "manager"),
         "`--capability` is empty: name a capability (config `agents.*.capabilities`), or "
         "leave the option out."),
    ],
    ids=["workspace", "fixtures", "context-file", "write-dir", "progress-dir", "receiver",
         "systemd-out", "by", "approve-reason", "validator", "model", "server-token-env",
         "capability"],
)
def test_an_empty_option_is_refused_before_anything_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, group: Any, args: tuple[str, ...],
    expected: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, demo_config(tmp_path))
    before = sorted(p.name for p in tmp_path.iterdir())
    res = _run(group, *args)
    assert res.exit_code == 2, res.output
    assert res.stderr.strip() == f"error: {expected}"
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written in the cwd


def test_an_empty_server_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    res = _run(workflow, "runs", env={"ORCH_SERVER": " "})
    assert res.exit_code == 2, res.output
    assert res.stderr.strip() == (
        "error: $ORCH_SERVER is empty (it gives `--server`): give the URL of `orchestrate "
        "serve`, or unset $ORCH_SERVER."
    )


@pytest.mark.parametrize(
    ("group", "args"),
    [
        (workflow, ("runs", "--limit", "1", "--limit", "2", "--help")),
        (orchestrate, ("handoff", "write", "--run-id", "a", "-h", "--run-id", "b")),
    ],
    ids=["long", "short"],
)
def test_help_wins_over_a_repeated_option(group: Any, args: tuple[str, ...]) -> None:
    res = _run(group, *args)
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("Usage: ")


def test_a_long_value_is_cut_in_its_middle() -> None:
    value = "a" * 80 + "b" * 300 + "c" * 100
    assert clip_quoted(f"x `{value}` y") == f"x `{'a' * 80}…{'c' * 100}` y"
    short = "d" * 180
    assert clip_quoted(f"`{short}`") == f"`{short}`"
    assert clip_quoted("odd ` backtick " + "e" * 500) == "odd ` backtick " + "e" * 500


LONG_DIR = "/".join(["d" * 30] * 8)


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_a_long_missing_config_path_keeps_its_file_name(tmp_path: Path, as_json: bool) -> None:
    path = tmp_path / LONG_DIR / "nonexist.yaml"
    res = _run(workflow, "runs", "--config", str(path), *(["--json"] if as_json else []))
    assert res.exit_code == 2, res.output
    line = res.stderr.strip()
    assert line.startswith(f"error: config file `{str(path)[:80]}…"), line
    assert f"…{str(path)[-100:]}` " in line and "/nonexist.yaml` " in line, line
    assert len(line) < 200 + len("error: config file `` (from --config) does not exist") + 200
    if as_json:
        assert json.loads(res.stdout)["error"] == line.removeprefix("error: ")


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_a_long_invalid_yaml_path_keeps_its_file_name(tmp_path: Path, as_json: bool) -> None:
    path = tmp_path / LONG_DIR / "broken.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("a: 1\nb: [\n", encoding="utf-8")
    res = _run(workflow, "runs", "--config", str(path), *(["--json"] if as_json else []))
    assert res.exit_code == 2, res.output
    line = res.stderr.strip()
    assert "/broken.yaml`" in line and "is not valid YAML" in line, line
    assert LONG_DIR not in line
    if as_json:
        assert json.loads(res.stdout)["error"] == line.removeprefix("error: ")
