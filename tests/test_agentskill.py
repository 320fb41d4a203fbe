"""The agent-side skill: install and uninstall in an OpenClaw workspace, idempotent."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from engine.agentskill import (
    AGENTS_FILE,
    BEGIN,
    END,
    SKILL_DIR,
    SKILL_NAME,
    agents_section,
    install,
    is_installed,
    skill_files,
    uninstall,
)
from engine.errors import InvalidIdError, UsageError
from engine.handoff import load_handoff

SEEDED = "# AGENTS.md - Your Workspace\n\nBe kind. Write things down.\n"


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    """A workspace as OpenClaw seeds it (AGENTS.md present)."""
    d = tmp_path / "workspace"
    d.mkdir()
    (d / AGENTS_FILE).write_text(SEEDED, encoding="utf-8")
    return d


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_install_writes_skill_and_section_once(ws: Path) -> None:
    changed = install(ws, agent="webster", handoffs_dir=ws.parent / "handoffs")
    skill = ws / SKILL_DIR / "SKILL.md"
    assert changed == [skill, ws / AGENTS_FILE]
    text = (ws / AGENTS_FILE).read_text()
    assert text.startswith(SEEDED.rstrip("\n") + "\n\n" + BEGIN + "\n")
    assert text.endswith(END + "\n")
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    assert "addressed to you as\n`webster`" in text
    assert is_installed(ws)


def test_install_again_changes_nothing(ws: Path) -> None:
    install(ws, agent="webster", handoffs_dir=ws.parent / "handoffs")
    before = _snapshot(ws)
    mtimes = {p: p.stat().st_mtime_ns for p in ws.rglob("*") if p.is_file()}
    assert install(ws, agent="webster", handoffs_dir=ws.parent / "handoffs") == []
    assert _snapshot(ws) == before
    assert {p: p.stat().st_mtime_ns for p in ws.rglob("*") if p.is_file()} == mtimes


def test_install_with_another_agent_updates_in_place(ws: Path) -> None:
    install(ws, agent="webster")
    (ws / AGENTS_FILE).write_text((ws / AGENTS_FILE).read_text() + "\n## Mine\nkeep me\n")
    changed = install(ws, agent="secretary")
    assert changed == [ws / SKILL_DIR / "SKILL.md", ws / AGENTS_FILE]
    text = (ws / AGENTS_FILE).read_text()
    assert text.count(BEGIN) == 1
    assert "`secretary`" in text and "`webster`" not in text
    assert text.endswith("## Mine\nkeep me\n")
    assert "--caller secretary" in (ws / SKILL_DIR / "SKILL.md").read_text()


def test_uninstall_restores_the_workspace(ws: Path) -> None:
    (ws / "skills" / "mine").mkdir(parents=True)
    (ws / "skills" / "mine" / "SKILL.md").write_text("---\nname: mine\n---\n")
    before = _snapshot(ws)
    install(ws, agent="webster")
    changed = uninstall(ws)
    assert changed == [ws / SKILL_DIR / "SKILL.md", ws / AGENTS_FILE]
    assert _snapshot(ws) == before
    assert not (ws / SKILL_DIR).exists() and (ws / "skills" / "mine").is_dir()
    assert uninstall(ws) == []
    assert not is_installed(ws)


def test_uninstall_removes_what_it_created(tmp_path: Path) -> None:
    install(tmp_path)
    assert (tmp_path / AGENTS_FILE).read_text() == agents_section() + "\n"
    uninstall(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_section_moved_by_the_user_is_replaced_where_it_is(ws: Path) -> None:
    install(ws, agent="webster")
    text = (ws / AGENTS_FILE).read_text()
    moved = "# Top\n\n" + text[text.index(BEGIN):] + "\n## After\ntext\n"
    (ws / AGENTS_FILE).write_text(moved)
    install(ws, agent="auditor")
    new = (ws / AGENTS_FILE).read_text()
    assert new.startswith("# Top\n\n" + BEGIN) and new.endswith("## After\ntext\n")
    uninstall(ws)
    assert (ws / AGENTS_FILE).read_text() == "# Top\n\n## After\ntext\n"


def test_file_mode_is_kept(ws: Path) -> None:
    (ws / AGENTS_FILE).chmod(0o600)
    install(ws)
    assert (ws / AGENTS_FILE).stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("content,message", [
    (f"x\n{BEGIN}\nhalf\n", "line 2: the `orchestrator-handoff` BEGIN marker has no"),
    (f"{BEGIN}\n{END}\n{BEGIN}\n{END}\n", "BEGIN marker more than once"),
], ids=["no-end", "twice"])
def test_broken_markers_are_refused(ws: Path, content: str, message: str) -> None:
    (ws / AGENTS_FILE).write_text(content)
    for action in (lambda: install(ws), lambda: uninstall(ws)):
        with pytest.raises(UsageError) as err:
            action()
        assert message in str(err.value) and str(ws / AGENTS_FILE) in str(err.value)
    assert (ws / AGENTS_FILE).read_text() == content


def test_bad_workspace_and_agent_name(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"`--workspace` `.*nowhere` is not a directory"):
        install(tmp_path / "nowhere")
    with pytest.raises(UsageError):
        uninstall(tmp_path / "nowhere")
    with pytest.raises(InvalidIdError):
        install(tmp_path, agent="../x")
    assert list(tmp_path.iterdir()) == []


def test_skill_frontmatter_is_what_openclaw_expects() -> None:
    text = skill_files(agent="webster")["SKILL.md"]
    m = re.match(r"---\n(.*?)\n---\n", text, flags=re.S)
    assert m, "SKILL.md must start with YAML frontmatter"
    meta = yaml.safe_load(m.group(1))
    assert meta["name"] == SKILL_NAME == SKILL_DIR.name
    assert re.fullmatch(r"[a-z0-9-]+", meta["name"])
    assert "\n" not in meta["description"] and len(meta["description"]) < 160
    for needle in ("handoff_path", "orchestrate handoff write", "`blocked`", "`partial`",
                   "run_id", "--parent-run-id"):
        assert needle in text


def test_handoffs_dir_and_agent_appear_in_the_skill(tmp_path: Path) -> None:
    text = skill_files(agent="nx-expert", handoffs_dir=tmp_path / "h")["SKILL.md"]
    assert f"live in `{(tmp_path / 'h').resolve()}`" in text
    assert "you are `nx-expert`" in text
    assert "live in `" not in skill_files()["SKILL.md"]


def test_the_command_in_the_skill_works(tmp_path: Path) -> None:
    """The `orchestrate handoff write` example runs as written (placeholders filled in)."""
    from engine.cli import orchestrate

    text = skill_files(agent="webster")["SKILL.md"]
    m = re.search(r"^ +(orchestrate handoff write .*?)\n\n", text, flags=re.S | re.M)
    assert m
    line = re.sub(r"\\\n\s*", "", m.group(1))
    run_id = "orch-20261121T104026-36872363"
    line = (line.replace("DIR_OF_HANDOFF_PATH", str(tmp_path))
            .replace("RUN_ID", run_id))
    args = shlex.split(line)[1:]
    result = CliRunner().invoke(orchestrate, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    handoff = load_handoff(tmp_path / f"{run_id}.json", run_id=run_id, agent="webster")
    assert handoff["status"] == "complete"


def test_the_json_example_in_the_skill_is_a_valid_handoff(tmp_path: Path) -> None:
    text = skill_files(agent="webster")["SKILL.md"]
    m = re.search(r"^ +(\{\n.*?\n +\})\n", text, flags=re.S | re.M)
    assert m
    data = json.loads(m.group(1).replace("RUN_ID", "orch-20261121T104026-36872363"))
    path = tmp_path / "orch-20261121T104026-36872363.json"
    path.write_text(json.dumps(data))
    load_handoff(path, run_id="orch-20261121T104026-36872363", agent="webster")


def test_agent_skill_cli(tmp_path: Path, demo_cfg: Any) -> None:
    from click.testing import CliRunner

    from engine.cli import orchestrate

    ws = tmp_path / "ws"
    ws.mkdir()
    run = CliRunner().invoke
    c = ["--config", str(demo_cfg.path)]
    res = run(orchestrate, ["agent-skill", "install", "--workspace", str(ws), "--agent",
                            "webster", *c])
    assert res.exit_code == 0 and "wrote" in res.stdout
    assert "restart the agent's gateway" in res.stderr
    res = run(orchestrate, ["agent-skill", "install", "--workspace", str(ws), "--agent",
                            "webster", *c])
    assert res.stdout.strip() == f"already installed in {ws}"
    res = run(orchestrate, ["agent-skill", "install", "--workspace", str(ws), "--agent",
                            "webstr", *c])
    assert res.exit_code == 2 and "did you mean `webster`" in res.stderr
    res = run(orchestrate, ["agent-skill", "uninstall", "--workspace", str(ws)])
    assert res.exit_code == 0 and "removed" in res.stdout
    res = run(orchestrate, ["agent-skill", "uninstall", "--workspace", str(ws)])
    assert res.stdout.strip() == "nothing to remove"
