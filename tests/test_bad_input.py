"""Bad input from users: one clear paragraph and the documented exit code, never a traceback.

A table of cases across configs, workflow templates and command-line arguments. Each case
asserts the exit code, a substring naming the file, field or value, that no traceback was
printed, and that nothing was written outside the handoffs directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from engine.cli import metrics, orchestrate, workflow
from tests.helpers import demo_config

PROGRAMS = {"orchestrate": orchestrate, "workflow": workflow, "metrics": metrics}
TOKEN = "sk-distinctive-token-9f8e7d"


def _listing(root: Path) -> set[str]:
    """Every path under ``root`` except the handoffs directory's contents."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if rel.parts[:1] == ("handoffs",):
            continue
        out.update(str(rel / n) for n in dirnames + filenames)
    return out


def invoke(program: str, args: list[str], env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(PROGRAMS[program], args, env=env, catch_exceptions=True)


def check(res: Any, code: int, needle: str | tuple[str, ...]) -> str:
    """Assert the exit code, the message and the absence of a traceback; return the text."""
    text = res.output
    assert "Traceback" not in text, text
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"uncaught {type(res.exception).__name__}: {res.exception}")
    assert res.exit_code == code, text
    for n in (needle,) if isinstance(needle, str) else needle:
        assert n in text, text
    return str(text)


# --------------------------------------------------------------------------- configs


def base_config(tmp: Path) -> dict[str, Any]:
    return demo_config(tmp)


def dump(raw: dict[str, Any]) -> str:
    return yaml.safe_dump(raw, sort_keys=False)


@dataclass(frozen=True)
class ConfigCase:
    """A config (a change to the demo config, or extra YAML text) and what is said of it."""

    change: Callable[[dict[str, Any]], None] | None = None
    text: str = ""  # appended to the dumped config
    raw: bytes | None = None  # the whole file instead
    needle: tuple[str, ...] = ()
    code: int = 2


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = raw
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value

    return change


def _rename_agent(new: str) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        raw["agents"][new] = raw["agents"].pop("secretary")
        raw["gateway"]["agents"][new] = raw["gateway"]["agents"].pop("secretary")

    return change


_BOMB = "".join(
    f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9) if i else ', '.join(['lol'] * 9)}]\n"
    for i in range(8)
)

CONFIG_CASES: dict[str, ConfigCase] = {
    "acl-list": ConfigCase(_set("acl", ["manager"]), needle=("`acl` must be an object",)),
    "gateway-agents-list": ConfigCase(
        _set("gateway.agents", ["webster"]), needle=("`gateway.agents` must be an object",)
    ),
    "agents-list": ConfigCase(_set("agents", ["webster"]), needle=("`agents` must be",)),
    "agent-spec-list": ConfigCase(
        _set("agents.webster", ["local"]), needle=("`agents.webster` must be",)
    ),
    "capabilities-string": ConfigCase(
        _set("agents.webster.capabilities", "research"), needle=("capabilities",)
    ),
    "gateway-string": ConfigCase(_set("gateway", "embedded"), needle=("`gateway` must be",)),
    "pool-list": ConfigCase(_set("pool", [1, 2]), needle=("`pool` must be",)),
    "retry-string": ConfigCase(_set("retry", "fast"), needle=("`retry` must be",)),
    "models-list": ConfigCase(_set("models", ["a"]), needle=("`models` must be",)),
    "channels-list": ConfigCase(_set("channels", ["a"]), needle=("`channels` must be",)),
    "workflow-dirs-string": ConfigCase(
        _set("workflow_dirs", "workflows"), needle=("`workflow_dirs` must be",)
    ),
    "handoffs-dir-int": ConfigCase(_set("handoffs_dir", 5), needle=("`handoffs_dir` must be",)),
    "acl-row-string": ConfigCase(_set("acl", {"manager": "*"}), needle=("`acl.manager` must",)),
    "url-no-host": ConfigCase(
        _set("agents.webster", {"url": "http://", "token_env": "T"}),
        needle=("`agents.webster.url` has no host",),
    ),
    "url-port-range": ConfigCase(
        _set("agents.webster", {"url": "http://127.0.0.1:99999", "token_env": "T"}),
        needle=("`agents.webster.url` is not a valid URL", "port"),
    ),
    "url-port-zero": ConfigCase(
        _set("agents.webster", {"url": "http://127.0.0.1:0", "token_env": "T"}),
        needle=("port 0",),
    ),
    "url-scheme": ConfigCase(
        _set("agents.webster", {"url": "ftp://127.0.0.1", "token_env": "T"}),
        needle=("`agents.webster.url` must start with http:// or https://",),
    ),
    "url-space": ConfigCase(
        _set("agents.webster", {"url": "http://exa mple.com", "token_env": "T"}),
        needle=("`agents.webster.url` contains whitespace",),
    ),
    "receiver-url-no-host": ConfigCase(
        _set("receiver_url", "https://"), needle=("`receiver_url` has no host",)
    ),
    "channels-base-url": ConfigCase(
        _set("channels", {"provider": "discord", "base_url": "discord.com/api"}),
        needle=("`channels.base_url` must start with",),
    ),
    "openai-base-url": ConfigCase(
        _set(
            "gateway.agents.webster",
            {"kind": "openai", "base_url": "http:///v1", "model": "m"},
        ),
        needle=("`gateway.agents.webster.base_url` has no host",),
    ),
    **{
        f"agent-named-{name}": ConfigCase(
            _rename_agent(name), needle=(f"`agents.{name}`", "subcommand")
        )
        for name in ("show", "tree", "pool", "handoff", "gateway", "delegate", "agent-skill")
    },
    "default-timeout-huge": ConfigCase(
        _set("default_timeout", 1e12), needle=("`default_timeout` must be <= 604800",)
    ),
    "default-timeout-negative": ConfigCase(
        _set("default_timeout", -1), needle=("`default_timeout` must be > 0",)
    ),
    "handoff-grace-huge": ConfigCase(
        _set("handoff_grace", 99999), needle=("`handoff_grace` must be <=",)
    ),
    "retry-delay-huge": ConfigCase(
        _set("retry.delays", [1e9]), needle=("`retry.delays[0]` must be <=",)
    ),
    "retry-jitter": ConfigCase(_set("retry.jitter", 5), needle=("`retry.jitter` must be <= 1",)),
    "pool-max-tokens": ConfigCase(
        _set("pool.max_tokens", 10**6), needle=("`pool.max_tokens` must be <=",)
    ),
    "pool-min-tokens-zero": ConfigCase(
        _set("pool.min_tokens", 0), needle=("`pool.min_tokens` must be >= 1",)
    ),
    "pool-queue-limit": ConfigCase(
        _set("pool.queue_limit", 10**9), needle=("`pool.queue_limit` must be <=",)
    ),
    "max-depth": ConfigCase(_set("max_depth", 1000), needle=("`max_depth` must be <= 10",)),
    "agent-timeout-zero": ConfigCase(
        _set("agents.webster.timeout", 0), needle=("`agents.webster.timeout` must be > 0",)
    ),
    "gateway-port": ConfigCase(_set("gateway.port", 70000), needle=("`gateway.port` must be <=",)),
    "temperature": ConfigCase(
        _set(
            "gateway.agents.webster",
            {"kind": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "m", "temperature": 9},
        ),
        needle=("`gateway.agents.webster.temperature` must be <= 2",),
    ),
    "token-in-file": ConfigCase(
        _set("agents.webster.token", "abc"), needle=("`agents.webster.token` is not allowed",)
    ),
    "unknown-key-near-miss": ConfigCase(
        _set("default_timout", 5), needle=("`default_timout`", "did you mean `default_timeout`")
    ),
    "agent-spec-null": ConfigCase(_set("agents.webster", None), needle=("`agents.webster`",)),
    "gateway-agent-null": ConfigCase(
        _set("gateway.agents.webster", None), needle=("`gateway.agents.webster`",)
    ),
    "acl-row-null": ConfigCase(_set("acl", {"manager": None}), needle=("`acl.manager`",)),
    "acl-target-int": ConfigCase(_set("acl", {"manager": [1]}), needle=("`acl.manager[0]`",)),
    "retry-delays-scalar": ConfigCase(_set("retry.delays", 5), needle=("`retry.delays` must",)),
    "pool-min-over-max": ConfigCase(
        _set("pool", {"min_tokens": 3, "max_tokens": 2}), needle=("`pool.min_tokens` is larger",)
    ),
    "agent-id-list": ConfigCase(_set("agents.webster.agent_id", ["x"]), needle=("agent_id",)),
    # ---- YAML text
    "duplicate-top-key": ConfigCase(
        text="default_timeout: 5\n", needle=("key `default_timeout` is written twice",)
    ),
    "duplicate-acl-row": ConfigCase(
        text="acl:\n  tech-lead: [webster]\n  tech-lead: ['*']\n",
        needle=("line", "key `acl.tech-lead` is written twice"),
    ),
    "duplicate-nested-key": ConfigCase(
        text="channels:\n  map:\n    general: '1'\n    general: '2'\n",
        needle=("key `channels.map.general` is written twice",),
    ),
    "alias-bomb": ConfigCase(
        text="description_bomb:\n  " + _BOMB.replace("\n", "\n  "), needle=("expands to more than",)
    ),
    "recursive-alias": ConfigCase(text="models: &m {aliases: *m}\n", needle=("recursive",)),
    "deep-flow-nesting": ConfigCase(
        text="models: " + "[" * 1000 + "]" * 1000 + "\n", needle=("nesting",)
    ),
    "deep-block-nesting": ConfigCase(
        text="models:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(80)),
        needle=("deeper than 64",),
    ),
    "timeout-nan": ConfigCase(
        text="handoff_grace: .nan\n",
        needle=(
            "kept as text",
            "`handoff_grace` must be a number",
        ),
    ),
    "timeout-inf": ConfigCase(
        text="handoff_grace: .inf\n",
        needle=(
            "kept as text",
            "`handoff_grace` must be a number",
        ),
    ),
    "timeout-1e999": ConfigCase(text="handoff_grace: 1e999\n", needle=("not a finite",)),
    "int-5000-digits": ConfigCase(text="max_depth: " + "9" * 5000 + "\n", needle=("30 digits",)),
    "bool-yes": ConfigCase(
        text="deliver: yes\n",
        needle=(
            "kept as text",
            "`deliver` must be a boolean",
        ),
    ),
    "bool-NO": ConfigCase(
        text="deliver: NO\n",
        needle=(
            "kept as text",
            "`deliver` must be a boolean",
        ),
    ),
    "octal": ConfigCase(
        text="max_depth: 0777\n",
        needle=(
            "kept as text",
            "`max_depth` must be ",
        ),
    ),
    "underscore-int": ConfigCase(
        text="max_depth: 1_000\n",
        needle=(
            "kept as text",
            "`max_depth` must be ",
        ),
    ),
    "sexagesimal": ConfigCase(
        text="handoff_grace: 12:30\n",
        needle=(
            "kept as text",
            "`handoff_grace` must be ",
        ),
    ),
    "date": ConfigCase(
        text="handoff_grace: 2026-11-01\n",
        needle=(
            "kept as text",
            "`handoff_grace` must be",
        ),
    ),
    "python-tag": ConfigCase(
        text="validator: !!python/object:os.system x\n", needle=("tag", "not supported")
    ),
    "binary-tag": ConfigCase(text="validator: !!binary aGVsbG8=\n", needle=("tag",)),
    "syntax-tab": ConfigCase(text="deliver:\tfalse\n  x: [\n", needle=("not valid YAML", "line")),
    "two-documents": ConfigCase(text="---\nagents: {}\n", needle=("not valid YAML",)),
    "jinja-unquoted": ConfigCase(
        text="validator: {{ inputs.x }}\n", needle=("`validator`", "quote the value")
    ),
    "not-utf8": ConfigCase(raw=b"agents:\n  caf\xe9: {url: local}\n", needle=("not UTF-8",)),
    "top-level-list": ConfigCase(raw=b"- a\n- b\n", needle=("must be a mapping",)),
    "empty-file": ConfigCase(raw=b"", needle=("must be a mapping",)),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES), ids=list(CONFIG_CASES))
def test_bad_config(case: str, tmp_path: Path) -> None:
    c = CONFIG_CASES[case]
    raw = base_config(tmp_path)
    if c.change:
        c.change(raw)
    path = tmp_path / "orchestrator.yaml"
    data = c.raw if c.raw is not None else (dump(raw) + c.text).encode()
    path.write_bytes(data)
    before = _listing(tmp_path)
    res = invoke(
        "orchestrate", ["webster", "t", "--caller", "manager", "--dry-run", "--config", str(path)]
    )
    text = check(res, c.code, c.needle)
    assert str(path) in text or "orchestrator.yaml" in text
    assert _listing(tmp_path) == before


def test_config_paths_that_are_not_files(tmp_path: Path) -> None:
    args = ["webster", "t", "--caller", "manager", "--dry-run", "--config"]
    check(invoke("orchestrate", [*args, "/dev/null"]), 2, "`/dev/null` is a character device")
    check(invoke("orchestrate", [*args, str(tmp_path / "nope.yaml")]), 2, "does not exist")
    check(invoke("orchestrate", [*args, str(tmp_path)]), 2, "is a directory")


def test_config_fifo_neither_hangs_nor_is_missing(tmp_path: Path) -> None:
    fifo = tmp_path / "orchestrator.yaml"
    os.mkfifo(fifo)
    proc = subprocess.run(
        [sys.executable, "-c", "from engine.cli import orchestrate_main; orchestrate_main()"]
        + ["webster", "t", "--caller", "manager", "--dry-run", "--config", str(fifo)],
        capture_output=True,
        timeout=30,
        text=True,
    )
    assert proc.returncode == 2
    assert "is a FIFO (named pipe), not a regular file" in proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- templates

GOOD_STEPS = """\
name: t
caller: manager
inputs:
  query: {}
steps:
  - id: research
    agent: webster
    task: "Find {{ inputs.query }}"
"""


@dataclass(frozen=True)
class TemplateCase:
    text: str | bytes
    needle: tuple[str, ...]
    code: int = 2
    command: str = "validate"
    inputs: list[str] = field(default_factory=list)


def _step(extra: str) -> str:
    return GOOD_STEPS + "".join(f"    {line}\n" for line in extra.splitlines())


TEMPLATE_CASES: dict[str, TemplateCase] = {
    "jinja-unquoted-task": TemplateCase(
        "name: t\nsteps:\n  - id: a\n    agent: webster\n    task: {{ inputs.query }}\n",
        ("line 5", "`steps[0].task`", "quote the value"),
    ),
    "jinja-unquoted-task-dry-run": TemplateCase(
        "name: t\nsteps:\n  - id: a\n    agent: webster\n    task: {{ inputs.query }}\n",
        ("line 5", "quote the value"),
        command="dry-run",
    ),
    "jinja-unquoted-when": TemplateCase(_step("when: {{ inputs.query }}"), ("quote the value",)),
    "jinja-as-key": TemplateCase(
        "name: t\n{{ x }}: 1\nsteps: []\n", ("a mapping or list is used as a key",)
    ),
    "duplicate-step-key": TemplateCase(
        _step("timeout: 5\ntimeout: 9"), ("key `steps[0].timeout` is written twice",)
    ),
    "duplicate-top-key": TemplateCase(GOOD_STEPS + "name: u\n", ("key `name` is written twice",)),
    "alias-bomb": TemplateCase(
        GOOD_STEPS + "outputs:\n  " + _BOMB.replace("\n", "\n  "), ("expands to more than",)
    ),
    "recursive-alias": TemplateCase(GOOD_STEPS + "defaults: &d {x: *d}\n", ("recursive",)),
    "deep-nesting": TemplateCase(
        GOOD_STEPS + "outputs: " + "[" * 1000 + "]" * 1000 + "\n", ("nesting",)
    ),
    "timeout-nan": TemplateCase(
        _step("timeout: .nan"),
        (
            "kept as text",
            "`steps[0].timeout` must be ",
        ),
    ),
    "timeout-inf": TemplateCase(
        _step("timeout: .inf"),
        (
            "kept as text",
            "`steps[0].timeout` must be ",
        ),
    ),
    "timeout-1e999": TemplateCase(_step("timeout: 1e999"), ("not a finite",)),
    "timeout-1e12": TemplateCase(_step("timeout: 1e12"), ("`steps[0].timeout` must be <=",)),
    "timeout-negative": TemplateCase(_step("timeout: -3"), ("`steps[0].timeout` must be > 0",)),
    "retries-5000-digits": TemplateCase(_step("retries: " + "7" * 5000), ("30 digits",)),
    "retries-underscore": TemplateCase(
        _step("retries: 1_000"),
        (
            "kept as text",
            "`steps[0].retries` must be ",
        ),
    ),
    "retries-huge": TemplateCase(_step("retries: 100000"), ("`steps[0].retries` must be <=",)),
    "defaults-timeout-nan": TemplateCase(
        GOOD_STEPS + "defaults:\n  timeout: .nan\n", ("`defaults.timeout` must be",)
    ),
    "deliver-yes": TemplateCase(
        _step("deliver: yes"),
        (
            "kept as text",
            "`steps[0].deliver` must be ",
        ),
    ),
    "default-float": TemplateCase(
        GOOD_STEPS.replace("query: {}", "query: {default: 0.10}"), ("quote it",)
    ),
    "version-float": TemplateCase(GOOD_STEPS + "version: 1.10\n", ("`version`", "quote it")),
    "python-tag": TemplateCase(GOOD_STEPS + "description: !!python/name:os.system\n", ("tag",)),
    "timestamp-tag": TemplateCase(GOOD_STEPS + "description: !!timestamp 2026-11-01\n", ("tag",)),
    "not-utf8": TemplateCase(
        GOOD_STEPS.encode() + b"description: caf\xe9\n", ("not UTF-8", "line 9")
    ),
    "steps-mapping": TemplateCase("name: t\nsteps: {a: 1}\n", ("`steps` must be an array",)),
    "step-list": TemplateCase("name: t\nsteps:\n  - [a, b]\n", ("`steps[0]` must be",)),
    "inputs-list": TemplateCase(
        GOOD_STEPS.replace("inputs:\n  query: {}", "inputs: [query]"), ("`inputs` must be",)
    ),
    "defaults-list": TemplateCase(GOOD_STEPS + "defaults: [1]\n", ("`defaults` must be",)),
    "outputs-list": TemplateCase(GOOD_STEPS + "outputs: [1]\n", ("`outputs` must be",)),
    "gate-string": TemplateCase(_step("gate: yes"), ("`steps[0].gate` must be",)),
    "input-spec-list": TemplateCase(
        GOOD_STEPS.replace("query: {}", "query: []"), ("`inputs.query` must be",)
    ),
    "depends-on-int": TemplateCase(_step("depends_on: 5"), ("`steps[0].depends_on` must be",)),
    "gate-prompt-unquoted-jinja": TemplateCase(
        _step("gate:\n  prompt: {{ inputs.query }}"), ("`steps[0].gate.prompt`", "quote")
    ),
    "step-id-int": TemplateCase(_step("").replace("id: research", "id: 7"), ("`steps[0].id`",)),
    "top-level-scalar": TemplateCase("just text\n", ("must be a mapping",)),
    "empty": TemplateCase("", ("must be a mapping",)),
    "syntax": TemplateCase("name: t\nsteps: [\n", ("not valid YAML", "line")),
    "unknown-agent": TemplateCase(_step("").replace("webster", "webstr"), ("webstr",)),
    "input-not-utf8": TemplateCase(
        GOOD_STEPS, ("the value of `--input`", "not valid UTF-8"), inputs=["query=caf\udce9"]
    ),
    "input-no-equals": TemplateCase(GOOD_STEPS, ("name=value",), inputs=["query"]),
    "input-twice": TemplateCase(GOOD_STEPS, ("given twice",), inputs=["query=a", "query=b"]),
    "input-not-utf8-run": TemplateCase(
        GOOD_STEPS,
        ("the value of `--input`", "not valid UTF-8"),
        command="run",
        inputs=["query=\udc93quoted\udc94"],
    ),
}


@pytest.fixture
def cfg_file(tmp_path: Path) -> Path:
    path = tmp_path / "orchestrator.yaml"
    path.write_text(dump(base_config(tmp_path)), encoding="utf-8")
    return path


@pytest.mark.parametrize("case", list(TEMPLATE_CASES), ids=list(TEMPLATE_CASES))
def test_bad_template(case: str, tmp_path: Path, cfg_file: Path) -> None:
    c = TEMPLATE_CASES[case]
    tpl = tmp_path / "wf.yaml"
    tpl.write_bytes(c.text if isinstance(c.text, bytes) else c.text.encode())
    inputs = [a for i in c.inputs for a in ("--input", i)]
    args = {
        "validate": ["validate", str(tpl), *inputs],
        "dry-run": ["run", str(tpl), "--dry-run", "--input", "query=x"],
        "run": ["run", str(tpl), "--non-interactive", *inputs],
    }[c.command] + ["--config", str(cfg_file)]
    before = _listing(tmp_path)
    text = check(invoke("workflow", args), c.code, c.needle)
    assert "Traceback" not in text
    assert _listing(tmp_path) == before
    handoffs = tmp_path / "handoffs"
    assert not handoffs.exists() or not list(handoffs.rglob("run.json"))


@pytest.mark.parametrize(
    ("written", "shown"),
    [
        ("NO", "NO"),
        ("yes", "yes"),
        ("off", "off"),
        ("0777", "0777"),
        ("1_000", "1_000"),
        ("12:30", "12:30"),
        ("2026-11-01", "2026-11-01"),
        (".nan", ".nan"),
        (".inf", ".inf"),
        ("'0.10'", "0.10"),
    ],
    ids=["NO", "yes", "off", "octal", "underscore", "sexagesimal", "date", "nan", "inf", "quoted"],
)
def test_defaults_are_kept_as_written(
    written: str, shown: str, tmp_path: Path, cfg_file: Path
) -> None:
    tpl = tmp_path / "wf.yaml"
    tpl.write_text(GOOD_STEPS.replace("query: {}", f"query: {{default: {written}}}"))
    res = invoke("workflow", ["run", str(tpl), "--dry-run", "--json", "--config", str(cfg_file)])
    check(res, 0, f"Find {shown}")


def test_template_paths_that_are_not_files(tmp_path: Path, cfg_file: Path) -> None:
    fifo = tmp_path / "wf.yaml"
    os.mkfifo(fifo)
    args = ["--config", str(cfg_file)]
    check(invoke("workflow", ["validate", str(fifo), *args]), 2, "is a FIFO (named pipe)")
    check(invoke("workflow", ["graph", "/dev/null", *args]), 2, "is a character device")
    check(invoke("workflow", ["run", str(tmp_path) + "/", "--dry-run", *args]), 2, "a directory")


def test_one_broken_template_does_not_break_the_listing(
    tmp_path: Path, cfg_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "bad.yaml").write_text(
        "name: bad\ndescription: x\nsteps:\n  - id: a\n    agent: webster\n"
        "    task: {{ inputs.query }}\n"
    )
    (tmp_path / "workflows" / "good.yaml").write_text(GOOD_STEPS + "description: the good one\n")
    monkeypatch.chdir(tmp_path)
    text = check(invoke("workflow", ["list", "--config", str(cfg_file)]), 0, "the good one")
    assert "bad" in text and "cannot be read" in text
    check(invoke("workflow", ["validate", "bad", "--config", str(cfg_file)]), 2, "quote the value")


# --------------------------------------------------------------------------- CLI arguments

DELEGATE = ["webster", "Find CTE", "--caller", "manager", "--dry-run"]


@dataclass(frozen=True)
class CliCase:
    program: str
    args: list[str]
    needle: tuple[str, ...]
    code: int = 2


CLI_CASES: dict[str, CliCase] = {
    **{
        f"timeout-{v}": CliCase(
            "orchestrate", [*DELEGATE, "--timeout", v], ("--timeout", "seconds")
        )
        for v in ("nan", "inf", "-inf", "1e12", "0", "-5", "abc", "1" * 5000, "NaN")
    },
    "task-not-utf8": CliCase(
        "orchestrate",
        ["webster", "caf\udce9", "--caller", "manager"],
        ("argument 2 `caf?`", "0xe9"),
    ),
    "task-cp1252-quotes": CliCase(
        "orchestrate",
        ["webster", "\udc93quoted\udc94", "--caller", "manager"],
        ("not valid UTF-8", "iconv"),
    ),
    "caller-not-utf8": CliCase(
        "orchestrate", ["webster", "t", "--caller", "man\udce9"], ("`--caller`",)
    ),
    "model-not-utf8": CliCase("orchestrate", [*DELEGATE, "--model", "m\udcff"], ("`--model`",)),
    "task-nul": CliCase("orchestrate", ["webster", "a\x00b", "--caller", "manager"], ("NUL",)),
    "unknown-agent": CliCase(
        "orchestrate", ["webstr", "t", "--caller", "manager", "--dry-run"], ("webster",)
    ),
    "unknown-caller": CliCase(
        "orchestrate", ["webster", "t", "--caller", "nobody", "--dry-run"], ("nobody",)
    ),
    "validator-path": CliCase(
        "orchestrate", [*DELEGATE, "--validate", "--validator", "../x"], ("../x",)
    ),
    "channel-messages-zero": CliCase(
        "orchestrate", [*DELEGATE, "--channel-messages", "0"], ("--channel-messages",)
    ),
    "channel-messages-5000-digits": CliCase(
        "orchestrate", [*DELEGATE, "--channel-messages", "9" * 5000], ("--channel-messages",)
    ),
    "context-file-missing": CliCase(
        "orchestrate", [*DELEGATE, "--context-file", "/nonexistent/x"], ("/nonexistent/x",)
    ),
    "context-file-devnull": CliCase(
        "orchestrate", [*DELEGATE, "--context-file", "/dev/null"], ("not a regular file",)
    ),
    "parent-run-id-path": CliCase(
        "orchestrate", [*DELEGATE, "--parent-run-id", "../../etc"], ("../../etc",)
    ),
    "gateway-port": CliCase("orchestrate", ["gateway", "--port", "70000"], ("--port",)),
    "show-bad-id": CliCase("orchestrate", ["show", "../x"], ("../x",)),
    "tree-bad-id": CliCase("orchestrate", ["tree", "../x"], ("../x",)),
    "handoff-write-result-not-utf8": CliCase(
        "orchestrate",
        ["handoff", "write", "--run-id", "orch-1", "--agent", "webster", "--status", "complete"]
        + ["--result", "caf\udce9"],
        ("`--result`", "not valid UTF-8"),
    ),
    "handoff-write-receiver-no-host": CliCase(
        "orchestrate",
        ["handoff", "write", "--run-id", "orch-1", "--agent", "webster", "--status", "complete"]
        + ["--result", "r", "--receiver", "http://", "--token-env", "HOME"],
        ("`--receiver` has no host",),
    ),
    "handoff-write-receiver-port": CliCase(
        "orchestrate",
        ["handoff", "write", "--run-id", "orch-1", "--agent", "webster", "--status", "complete"]
        + ["--result", "r", "--receiver", "http://127.0.0.1:99999", "--token-env", "HOME"],
        ("`--receiver` is not a valid URL",),
    ),
    "handoff-write-notes-not-utf8": CliCase(
        "orchestrate",
        ["handoff", "write", "--run-id", "orch-1", "--agent", "webster", "--status", "complete"]
        + ["--result", "r", "--notes", "n\udce9"],
        ("the value of `--notes`", "0xe9"),
    ),
    "handoff-write-artifact-not-utf8": CliCase(
        "orchestrate",
        ["handoff", "write", "--run-id", "orch-1", "--agent", "webster", "--status", "complete"]
        + ["--result", "r", "--artifact=a\udce9"],
        ("the value of `--artifact`", "0xe9"),
    ),
    "wf-reject-reason-not-utf8": CliCase(
        "workflow", ["reject", "wf-x", "a", "--reason", "\udc93no\udc94"], ("`--reason`", "0x93")
    ),
    "metrics-agent-not-utf8": CliCase("metrics", ["text", "--agent", "w\udce9"], ("`--agent`",)),
    "handoff-write-bad-run-id": CliCase(
        "orchestrate",
        ["handoff", "write", "--run-id", "../x", "--agent", "webster", "--status", "complete"]
        + ["--result", "r"],
        ("../x",),
    ),
    "wf-max-parallel-zero": CliCase(
        "workflow", ["run", "quick-research", "--max-parallel", "0"], ("--max-parallel",)
    ),
    "wf-max-parallel-5000-digits": CliCase(
        "workflow", ["run", "quick-research", "--max-parallel", "9" * 5000], ("--max-parallel",)
    ),
    "wf-runs-limit-zero": CliCase("workflow", ["runs", "--limit", "0"], ("--limit",)),
    "wf-status-bad-id": CliCase("workflow", ["status", "../x"], ("../x",)),
    "wf-status-unknown": CliCase("workflow", ["status", "wf-nope"], ("no workflow run `wf-nope`",)),
    "wf-resume-unknown": CliCase("workflow", ["resume", "wf-nope"], ("no workflow run `wf-nope`",)),
    "wf-unknown-name": CliCase("workflow", ["validate", "quick-reserch"], ("quick-research",)),
    "wf-missing-file": CliCase("workflow", ["validate", "/nonexistent.yaml"], ("does not exist",)),
    "wf-unknown-input": CliCase(
        "workflow", ["run", "quick-research", "--dry-run", "--input", "qery=x"], ("qery",)
    ),
    "since-huge": CliCase("metrics", ["text", "--since", "99999999999d"], ("100 years",)),
    "since-5000-digits": CliCase("metrics", ["json", "--since", "9" * 5000 + "d"], ("100 years",)),
    "since-garbage": CliCase("metrics", ["text", "--since", "yesterday"], ("`--since yesterday`",)),
    "since-overflow-date": CliCase(
        "metrics", ["text", "--since", "9999-12-31T23:59:59-12:00"], ("out of range",)
    ),
    "since-year-zero": CliCase("metrics", ["text", "--since", "0000-01-01"], ("--since",)),
}


@pytest.mark.parametrize("case", list(CLI_CASES), ids=list(CLI_CASES))
def test_bad_cli_argument(case: str, tmp_path: Path, cfg_file: Path) -> None:
    c = CLI_CASES[case]
    before = _listing(tmp_path)
    res = invoke(c.program, [*c.args, "--config", str(cfg_file)])
    check(res, c.code, c.needle)
    assert _listing(tmp_path) == before
    handoffs = tmp_path / "handoffs"
    records = [p for p in handoffs.rglob("*.json")] if handoffs.exists() else []
    assert not [p for p in records if "pool" not in p.parts], records


def test_validator_is_refused_before_the_task_is_dispatched(tmp_path: Path, cfg_file: Path) -> None:
    """Live, with the embedded demo gateway: nothing may be sent before `../x` is refused."""
    res = invoke(
        "orchestrate",
        ["webster", "Find CTE", "--caller", "manager", "--validate", "--validator", "../x"]
        + ["--config", str(cfg_file)],
    )
    check(res, 2, "unknown validator `../x`")
    handoffs = tmp_path / "handoffs"
    sent = [p.name for p in handoffs.rglob("orch-*.json")] if handoffs.exists() else []
    assert sent == []


def test_non_utf8_argv_bytes_in_a_real_process(tmp_path: Path, cfg_file: Path) -> None:
    """The real path: bytes from `$(cat cp1252.txt)` in argv, and no run directory left."""
    code = "from engine.cli import orchestrate_main; orchestrate_main()"
    argv = [sys.executable.encode(), b"-c", code.encode(), b"webster", b"\x93CTE\x94 caf\xe9"]
    argv += [b"--caller", b"manager", b"--config", str(cfg_file).encode()]
    proc = subprocess.run(argv, capture_output=True, timeout=60)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, err
    assert "argument 2 `?CTE? caf?` is not valid UTF-8 text (0x93" in err and "Traceback" not in err
    handoffs = tmp_path / "handoffs"
    assert not handoffs.exists() or not list(handoffs.rglob("orch-*"))


def test_handoff_write_result_file_not_utf8(tmp_path: Path, cfg_file: Path) -> None:
    bad = tmp_path / "result.txt"
    bad.write_bytes(b"caf\xe9 \x93quoted\x94\n")
    res = invoke(
        "orchestrate",
        ["handoff", "write", "--run-id", "orch-1", "--agent", "webster", "--status", "complete"]
        + ["--result-file", str(bad), "--config", str(cfg_file)],
    )
    check(res, 2, ("--result-file", "not UTF-8", "0xe9"))


def test_context_file_not_utf8_and_fifo(tmp_path: Path, cfg_file: Path) -> None:
    bad = tmp_path / "ctx.txt"
    bad.write_bytes(b"caf\xe9\n")
    res = invoke("orchestrate", [*DELEGATE, "--context-file", str(bad), "--config", str(cfg_file)])
    check(res, 2, ("--context-file", "not UTF-8"))
    fifo = tmp_path / "ctx.fifo"
    os.mkfifo(fifo)
    res = invoke("orchestrate", [*DELEGATE, "--context-file", str(fifo), "--config", str(cfg_file)])
    check(res, 2, "not a regular file")


# --------------------------------------------------------------------------- tokens


def _remote_cfg(tmp: Path, **source: str) -> Path:
    raw = {
        "handoffs_dir": str(tmp / "handoffs"),
        "retry": {"delays": [0.01], "jitter": 0.0, "request_timeout": 1},
        "pool": {"enabled": False},
        "agents": {
            "manager": {"url": "http://127.0.0.1:9", "token_env": "UNUSED_TOKEN"},
            "webster": {"url": "http://127.0.0.1:9", **source},
        },
    }
    path = tmp / "orchestrator.yaml"
    path.write_text(dump(raw))
    return path


TOKEN_FILES: dict[str, tuple[bytes, tuple[str, ...]]] = {
    "second-line": (
        (TOKEN + "\nrotated 2026-11-01 by ops\n").encode(),
        ("more than one line",),
    ),
    "typographic-quotes": (f"\u201c{TOKEN}\u201d".encode(), ("wrapped in quotes",)),
    "ascii-quotes": (f"'{TOKEN}'\n".encode(), ("wrapped in quotes",)),
    "non-ascii": (f"{TOKEN}\u00e9".encode(), ("non-ASCII",)),
    "nbsp": (f"{TOKEN}\u00a0x".encode(), ("non-ASCII",)),
    "control-char": (f"{TOKEN}\x01".encode(), ("control character",)),
    "inner-space": (f"{TOKEN} x".encode(), ("contains a space",)),
    "empty": (b"\n", ("is empty",)),
    "not-utf8": (b"sk-\xe9\n", ("not UTF-8",)),
}


@pytest.mark.parametrize("case", list(TOKEN_FILES), ids=list(TOKEN_FILES))
def test_bad_token_file(case: str, tmp_path: Path) -> None:
    data, needle = TOKEN_FILES[case]
    tok = tmp_path / "token"
    tok.write_bytes(data)
    cfg = _remote_cfg(tmp_path, token_file=str(tok))
    res = invoke("orchestrate", ["webster", "t", "--caller", "manager", "--config", str(cfg)])
    text = check(res, 2, (*needle, f"token file `{tok}`"))
    assert TOKEN not in text
    handoffs = tmp_path / "handoffs"
    assert not handoffs.exists() or not [p for p in handoffs.rglob("*.json")]


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (TOKEN + "\nrotated", "more than one line"),
        (f"\u201c{TOKEN}\u201d", "wrapped in quotes"),
        (f"{TOKEN}\x7f", "control character"),
    ],
    ids=["env-second-line", "env-typographic-quotes", "env-del"],
)
def test_bad_token_env(value: str, needle: str, tmp_path: Path) -> None:
    cfg = _remote_cfg(tmp_path, token_env="WEBSTER_TOKEN")
    res = invoke(
        "orchestrate",
        ["webster", "t", "--caller", "manager", "--config", str(cfg)],
        env={"WEBSTER_TOKEN": value},
    )
    text = check(res, 2, (needle, "environment variable `WEBSTER_TOKEN`"))
    assert TOKEN not in text


@pytest.mark.parametrize("command", ["run", "dry-run", "delegate-dry-run"])
def test_bad_token_is_refused_before_a_run_starts(command: str, tmp_path: Path) -> None:
    tok = tmp_path / "token"
    tok.write_text(TOKEN + "\nrotated 2026-11-01 by ops\n")
    raw = base_config(tmp_path)
    raw["agents"]["webster"] = {
        "url": "http://127.0.0.1:9",
        "token_file": str(tok),
        "capabilities": ["research"],
    }
    cfg = tmp_path / "orchestrator.yaml"
    cfg.write_text(dump(raw))
    args = {
        "run": ["run", "quick-research", "--input", "query=x", "--non-interactive"],
        "dry-run": ["run", "quick-research", "--input", "query=x", "--dry-run"],
        "delegate-dry-run": ["webster", "t", "--caller", "manager", "--dry-run"],
    }[command]
    program = "orchestrate" if command.startswith("delegate") else "workflow"
    text = check(invoke(program, [*args, "--config", str(cfg)]), 2, "more than one line")
    assert TOKEN not in text
    assert not (tmp_path / "handoffs").exists()


def test_message_template_not_utf8(tmp_path: Path) -> None:
    tpl = tmp_path / "message.j2"
    tpl.write_bytes(b"caf\xe9 {{ task }}\n")
    raw = base_config(tmp_path)
    raw["message_template"] = str(tpl)
    cfg = tmp_path / "orchestrator.yaml"
    cfg.write_text(dump(raw))
    res = invoke("orchestrate", ["webster", "t", "--caller", "manager", "--config", str(cfg)])
    check(res, 2, ("`message_template`", "not UTF-8"))


def test_bad_discord_token_is_refused_naming_its_variable(tmp_path: Path) -> None:
    raw = base_config(tmp_path)
    raw["channels"] = {
        "provider": "discord",
        "base_url": "http://127.0.0.1:9",
        "token_env": "DISCORD_TOKEN",
        "map": {"general": "1"},
    }
    cfg = tmp_path / "orchestrator.yaml"
    cfg.write_text(dump(raw))
    res = invoke(
        "orchestrate",
        [*DELEGATE, "--channel-context", "general", "--config", str(cfg)],
        env={"DISCORD_TOKEN": TOKEN + "\nrotated by ops"},
    )
    text = check(res, 2, ("environment variable `DISCORD_TOKEN`", "more than one line"))
    assert TOKEN not in text


@pytest.mark.parametrize("value", ["inf", "nan", "1e12", "-1"])
def test_model_agent_timeout_env_must_be_finite(value: str) -> None:
    from engine.config import GatewayAgentConfig
    from engine.gateway.models import model_timeout

    spec = GatewayAgentConfig(name="m", kind="openai", argv=(), timeout=30.0)
    assert model_timeout(spec, None, env={"TIMEOUT": value}) == 30.0


def test_token_file_with_one_trailing_newline_is_fine(tmp_path: Path) -> None:
    tok = tmp_path / "token"
    tok.write_text(TOKEN + "\n")
    cfg = _remote_cfg(tmp_path, token_file=str(tok))
    res = invoke("orchestrate", ["webster", "t", "--caller", "manager", "--config", str(cfg)])
    text = check(res, 4, "127.0.0.1:9")  # the token was accepted; nothing listens there
    assert TOKEN not in text


# --------------------------------------------------------------------------- filesystem


def test_handoffs_dir_that_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "handoffs-file"
    blocker.write_text("keep me\n")
    raw = base_config(tmp_path)
    raw["handoffs_dir"] = str(blocker)
    cfg = tmp_path / "orchestrator.yaml"
    cfg.write_text(dump(raw))
    res = invoke("orchestrate", ["webster", "t", "--caller", "manager", "--config", str(cfg)])
    check(res, 2, (str(blocker), "handoffs_dir"))
    assert blocker.read_text() == "keep me\n"
    res = invoke(
        "orchestrate",
        ["handoff", "write", "--run-id", "orch-1", "--agent", "webster", "--status", "complete"]
        + ["--result", "r", "--config", str(cfg)],
    )
    check(res, 2, str(blocker))
    assert blocker.read_text() == "keep me\n"


@pytest.mark.parametrize(
    ("number", "needle"),
    [
        ("9" * 5000, "4300 digits"),
        ("NaN", "`NaN`"),
        ("Infinity", "`Infinity`"),
        ("1e999", "not finite"),
        ("[" * 100000 + "]" * 100000, "nested too deeply"),
    ],
    ids=["5000-digits", "nan", "infinity", "1e999", "100000-deep"],
)
def test_handoff_usage_number_is_refused_not_raised(
    number: str, needle: str, tmp_path: Path
) -> None:
    from engine.handoff import HandoffProblem, load_handoff

    path = tmp_path / "orch-1.json"
    path.write_text('{"runId": "orch-1", "usage": {"input_tokens": ' + number + "}}")
    with pytest.raises(HandoffProblem, match=needle):
        load_handoff(path)
    res = invoke("metrics", ["json", "--handoffs-dir", str(tmp_path)])
    check(res, 0, "orch-1.json")


def test_describe_oserror_names_errno_and_what_to_do() -> None:
    import errno

    from engine.textio import describe_oserror

    text = describe_oserror(OSError(errno.ENOSPC, "No space left on device", "/x"))
    assert text == "No space left on device (ENOSPC); the disk is full; free some space"
    assert "read-only" in describe_oserror(OSError(errno.EROFS, "Read-only file system"))


# --------------------------------------------------------------------------- run state


def _runs(tmp: Path) -> Path:
    d = tmp / "handoffs" / "workflows"
    d.mkdir(parents=True)
    return d


_AT = "2026-11-30T10:00:00.000Z"
_META = {
    "runId": "RID",
    "workflow": "t",
    "caller": "manager",
    "inputs": {"query": "x"},
    "fingerprint": {"template": "0", "inputs": "0", "agents": "0"},
    "plan": {"groups": [["a"]], "steps": {"a": {"agent": "webster"}}},
}
_EVENTS = [
    {"event": "run_started", "at": _AT, "run_id": "RID", "workflow": "t"},
    {"event": "step_started", "at": _AT, "step": "a", "attempt": 1, "agent": "webster"}
    | {"delegation_run_id": "RID-a-1"},
    {"event": "step_finished", "at": _AT, "step": "a", "status": "complete", "attempt": 1},
    {"event": "run_finished", "at": _AT, "status": "complete"},
]
_STEP = {
    "step": "a",
    "agent": "webster",
    "status": "complete",
    "handoff": {"runId": "RID-a-1", "agent": "webster", "status": "complete"}
    | {"result": "r", "confidence": "high", "artifacts": []},
    "attempts": [],
}


def _record(meta: Any = None, events: Any = None, step: Any = None) -> dict[str, bytes]:
    """The files of a finished one-step run, with the parts given replaced."""
    ev = _EVENTS if events is None else events
    return {
        "run.json": json.dumps(_META if meta is None else meta).encode(),
        "events.jsonl": b"".join(json.dumps(e).encode() + b"\n" for e in ev),
        "a.json": json.dumps(_STEP if step is None else step).encode(),
    }


def _with(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(base))
    *parents, last = path.split(".")
    node = out
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


DAMAGED_RUNS: dict[str, dict[str, bytes]] = {
    "run-json-empty": _record(meta={}),
    "run-json-list": _record(meta=[1, 2]),
    "run-json-not-json": {**_record(), "run.json": b"{not json"},
    "run-json-deep": {**_record(), "run.json": b"[" * 100000 + b"]" * 100000},
    "run-id-int": _record(meta=_with(_META, "runId", 7)),
    "workflow-int": _record(meta=_with(_META, "workflow", 2**70)),
    "caller-list": _record(meta=_with(_META, "caller", [[1]])),
    "inputs-null": _record(meta=_with(_META, "inputs", None)),
    "fingerprint-null": _record(meta=_with(_META, "fingerprint", None)),
    "plan-groups-int": _record(meta=_with(_META, "plan.groups", 5)),
    "plan-group-unknown-step": _record(meta=_with(_META, "plan.groups", [["a", "b"]])),
    "plan-group-emptied": _record(meta=_with(_META, "plan.groups", [[]])),
    "plan-steps-list": _record(meta=_with(_META, "plan.steps", ["a"])),
    "plan-step-text": _record(meta=_with(_META, "plan.steps.a", "garbage")),
    "step-handoff-text": _record(step=_with(_STEP, "handoff", "complete")),
    "step-confidence-mapping": _record(step=_with(_STEP, "handoff.confidence", {"a": 1})),
    "step-attempts-text": _record(step=_with(_STEP, "attempts", "x")),
}

#: Journal events that are malformed: the replay skips each one with a warning.
SKIPPED_EVENTS: dict[str, dict[str, bytes]] = {
    "events-missing-keys": _record(
        events=[{"event": "step_started", "step": "a"}, {"event": "run_finished"}]
    ),
    "events-bad-status": _record(events=[{"event": "run_finished", "status": "exploded"}]),
    "events-at-garbage": _record(events=[_with(_EVENTS[0], "at", "2026-13-45T99:99:99Z")]),
    "events-at-bool": _record(events=[_with(_EVENTS[0], "at", True)]),
    "events-attempt-text": _record(events=[_EVENTS[0], _with(_EVENTS[1], "attempt", "x")]),
    "events-attempt-null": _record(events=[_EVENTS[0], _with(_EVENTS[1], "attempt", None)]),
    "events-agent-int": _record(events=[_EVENTS[0], _with(_EVENTS[1], "agent", -1)]),
    "events-deep": {
        **_record(),
        "events.jsonl": b"[" * 100000 + b"]" * 100000 + b'\n{"event": "run_finished"}\n',
    },
}


def _two_runs(tmp: Path, files: dict[str, bytes]) -> tuple[Path, str, str]:
    runs = _runs(tmp)
    rid, good = "wf-20261130-000000-aaaa", "wf-20261130-000001-bbbb"
    for run, record in ((rid, files), (good, _record())):
        (runs / run).mkdir()
        for name, data in record.items():
            (runs / run / name).write_bytes(data.replace(b"RID", run.encode()))
    with (runs / rid / "events.jsonl").open("ab") as fh:
        fh.write(b"\xff\xfe a line that is not UTF-8\n")
    return runs, rid, good


@pytest.mark.parametrize("case", list(DAMAGED_RUNS), ids=list(DAMAGED_RUNS))
def test_damaged_run(case: str, tmp_path: Path, cfg_file: Path) -> None:
    runs, rid, good = _two_runs(tmp_path, DAMAGED_RUNS[case])
    before = {p.name: p.read_bytes() for p in (runs / rid).iterdir()}
    text = check(invoke("workflow", ["runs", "--config", str(cfg_file)]), 0, "error: ")
    assert rid in text
    assert good in text and "complete" in text
    check(invoke("workflow", ["status", good, "--config", str(cfg_file)]), 0, good)
    for cmd in (
        ["status", rid],
        ["status", rid, "--json"],
        ["resume", rid, "--non-interactive"],
        ["approve", rid, "a"],
        ["reject", rid, "a", "--reason", "no"],
        ["cancel", rid],
    ):
        check(invoke("workflow", [*cmd, "--config", str(cfg_file)]), 2, rid)
    after = {p.name: p.read_bytes() for p in (runs / rid).iterdir() if p.name != ".lock"}
    assert after == before  # left as it was


@pytest.mark.parametrize("case", list(SKIPPED_EVENTS), ids=list(SKIPPED_EVENTS))
def test_malformed_events_are_skipped_not_raised(case: str, tmp_path: Path, cfg_file: Path) -> None:
    runs, rid, good = _two_runs(tmp_path, SKIPPED_EVENTS[case])
    text = check(invoke("workflow", ["runs", "--config", str(cfg_file)]), 0, rid)
    assert good in text
    check(invoke("workflow", ["status", rid, "--config", str(cfg_file)]), 0, rid)
    res = invoke("workflow", ["status", rid, "--json", "--config", str(cfg_file)])
    check(res, 0, rid)


# --------------------------------------------------------------------------- pins


def test_every_orchestrate_subcommand_is_a_reserved_agent_name() -> None:
    from engine.config import RESERVED_AGENT_NAMES

    assert set(orchestrate.commands) <= RESERVED_AGENT_NAMES


def test_the_engine_has_one_yaml_loader() -> None:
    engine = Path(__file__).resolve().parent.parent / "engine"
    offenders = [
        str(p.relative_to(engine))
        for p in engine.rglob("*.py")
        if p.name != "yamlio.py"
        and any(w in p.read_text() for w in ("yaml.safe_load", "yaml.load(", "SafeLoader"))
    ]
    assert offenders == []


def test_the_tables_hold_at_least_120_cases() -> None:
    tables = (CONFIG_CASES, TEMPLATE_CASES, CLI_CASES, TOKEN_FILES, DAMAGED_RUNS, SKIPPED_EVENTS)
    assert sum(len(t) for t in tables) >= 120


# --------------------------------------------------------------------------- the loader


YAML_CASES = {
    "duplicate": ("a: 1\nb:\n  c: 1\n  c: 2\n", "key `b.c` is written twice"),
    "jinja": ("task: {{ inputs.query }}\n", "quote the value"),
    "bomb": (_BOMB, "expands to more than"),
    "recursive": ("a: &a [*a]\n", "recursive"),
    "deep-block": ("".join("  " * i + f"k{i}:\n" for i in range(100)), "deeper than 64"),
    "deep-flow": ("a: " + "[" * 100 + "]" * 100 + "\n", "deeper than 64"),
    "big-int": ("a: " + "9" * 5000 + "\n", "30 digits"),
    "inf": ("a: !!float .inf\n", "not a finite"),
    "set": ("a: !!set {x}\n", "tag"),
}


@pytest.mark.parametrize("pure", [False, True], ids=["c-loader", "python-loader"])
@pytest.mark.parametrize("case", list(YAML_CASES), ids=list(YAML_CASES))
def test_loader_bounds_with_either_parser(
    case: str, pure: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine import yamlio
    from engine.errors import ConfigError

    if pure:
        monkeypatch.setattr(yamlio, "_loader_base", lambda: yaml.SafeLoader)
    yamlio._loader_class.cache_clear()
    try:
        text, needle = YAML_CASES[case]
        try:
            _, problems = yamlio.parse_yaml(text, source="f.yaml", error=ConfigError)
        except ConfigError as exc:
            assert needle in str(exc) and "`f.yaml`" in str(exc)
        else:
            assert any(needle in p for p in problems), problems
    finally:
        yamlio._loader_class.cache_clear()


def test_loader_keeps_values_as_written() -> None:
    from engine.errors import ConfigError
    from engine.yamlio import parse_yaml

    text = (
        "a: NO\nb: 0777\nc: 1_000\nd: 12:30\ne: 2026-11-01\nf: .nan\ng: .inf\nh: yes\n"
        "i: 1.5\nj: -3\nk: true\nl: ~\nm: 1e3\n1: x\nn: 0x1F\no: off\n"
    )
    data, problems = parse_yaml(text, source="f.yaml", error=ConfigError)
    assert problems == []
    assert data == {
        "a": "NO",
        "b": "0777",
        "c": "1_000",
        "d": "12:30",
        "e": "2026-11-01",
        "f": ".nan",
        "g": ".inf",
        "h": "yes",
        "i": 1.5,
        "j": -3,
        "k": True,
        "l": None,
        "m": 1000.0,
        "1": "x",
        "n": "0x1F",
        "o": "off",
    }
