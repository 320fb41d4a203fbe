"""The examples in the README and docs/ are run or validated, so they cannot rot."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.config import config_from_dict
from engine.handoff import validate_handoff
from tests import standins

#: The Discord stand-in's fixture, made visible to this module's tests.
discord_api = standins.discord_api

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_config_examples_validate(path: Path) -> None:
    checked = 0
    for text in blocks(path, "yaml"):
        data = yaml.safe_load(text)
        if isinstance(data, dict) and "agents" in data and "steps" not in data:
            config_from_dict(data, path=path)  # raises with every problem if invalid
            checked += 1
    if path.name == "README.md":
        assert checked >= 1, "README.md lost its config example"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_handoff_examples_validate(path: Path) -> None:
    checked = 0
    for text in blocks(path, "json"):
        if '"schemaVersion"' in text and text.strip().startswith("{"):
            validate_handoff(json.loads(text), path=path)
            checked += 1
    if path.name in ("README.md", "protocol.md"):
        assert checked >= 1, f"{path.name} lost its handoff example"


def test_shipped_example_configs_load() -> None:
    from engine.config import load_config

    for cfg in sorted((ROOT / "examples").glob("*/orchestrator.yaml")):
        loaded = load_config(cfg)
        assert len(loaded.agents) == 8


def test_readme_quick_start_commands_run(tmp_path: Path) -> None:
    """The commands shown after the quick start, in a copy of examples/quickstart."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert blocks_in(quick)[0].strip().splitlines() == [
        "bash scripts/demo.sh     # a 3-step workflow end to end on the embedded local gateway",
        "bash scripts/test.sh     # the whole test suite",
    ]
    work = tmp_path / "examples" / "quickstart"
    shutil.copytree(ROOT / "examples" / "quickstart", work)
    bindir = Path(sys.executable).parent
    for line in blocks_in(quick)[1].strip().splitlines():
        if line.startswith("cd "):
            continue
        argv = shlex.split(line)
        argv[0] = str(bindir / Path(argv[0]).name)
        out = subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, (line, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr


def blocks_in(markdown: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", markdown, flags=re.S)


def test_delegation_doc_examples_run(tmp_path: Path) -> None:
    """Every bash block of docs/delegation.md, in a copy of examples/quickstart."""
    import os

    work = tmp_path / "examples" / "quickstart"
    shutil.copytree(ROOT / "examples" / "quickstart", work)
    (tmp_path / "examples" / "quickstart" / "orchestrator.yaml").write_text(
        (work / "orchestrator.yaml").read_text().replace("../../handoffs", "handoffs")
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("ORCHESTRATOR_CONFIG", None)
    for block in blocks(ROOT / "docs" / "delegation.md", "bash"):
        out = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert out.returncode == 0, (block, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr
    tree = [p for p in (work / "handoffs" / "sub").glob("orch-*.json")]
    assert len(tree) == 1


def test_agents_doc_examples_run(tmp_path: Path, discord_api: Any) -> None:
    """The `sh` block of docs/agents.md's "Channel context", with the page's first config
    (its `channels:` block added, pointed at a Discord stand-in) and a notes.md: both
    commands delegate as `manager` and exit 0."""
    import os



    page = ROOT / "docs" / "agents.md"
    config = yaml.safe_load(blocks(page, "yaml")[0])
    channels = yaml.safe_load(blocks(page, "yaml")[1])["channels"]
    token = "discord-bot-token-docs-agents-71d3"
    technical = str(channels["map"]["technical"])
    said = standins.discord_message(
        1, "Margins look tight.", username="antoine", timestamp="2026-01-05T09:14:00+00:00"
    )
    api = discord_api(token=token, channels={technical: [said]})
    config["channels"] = {**channels, "base_url": api.base_url}
    config["handoffs_dir"] = str(tmp_path / "handoffs")
    # a fixed pool, as the quick start's: the adaptive one reads this host's load average,
    # and a busy test host past `pool.emergency_load` grants no token (exit 4)
    config.setdefault("pool", {})["adaptive"] = False
    (tmp_path / "orchestrator.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (tmp_path / "notes.md").write_text("# Notes\n\nCTE budget: 0.01 ppm/K\n", encoding="utf-8")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        channels["token_env"]: token,
    }
    env.pop("ORCHESTRATOR_CONFIG", None)
    (block,) = blocks(page, "sh")
    commands = block.replace("\\\n", " ").strip().splitlines()
    assert len(commands) == 2 and all(c.startswith("orchestrate tech-lead") for c in commands)
    for command in commands:
        out = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", f"{command} --json"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
        )
        assert out.returncode == 0, (command, out.stdout, out.stderr)
        record = json.loads(out.stdout)
        assert record["agent"] == "tech-lead", record
        assert record["envelope"]["caller"] == "manager", record
        assert record["status"] == "complete", record
    assert api.requests, "the --channel-context example did not read the channel"
