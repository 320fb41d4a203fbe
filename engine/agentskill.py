"""The agent-side skill: standing instructions for hook tasks, written into an OpenClaw workspace.

``install`` writes ``skills/orchestrator-handoff/SKILL.md`` (OpenClaw loads workspace
skills from ``<workspace>/skills``) and a short section in the workspace's ``AGENTS.md``,
between BEGIN and END markers, added once; ``uninstall`` removes both. Both are
idempotent and return only the files they changed.

Example::

    changed = install(Path("~/.openclaw/workspace").expanduser(), agent="webster",
                      handoffs_dir=cfg.handoffs_dir)
    install(workspace, agent="webster", handoffs_dir=cfg.handoffs_dir)   # -> []
    uninstall(workspace)            # -> [.../SKILL.md, .../AGENTS.md]
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import Any

from engine.errors import UsageError
from engine.files import check_id

SKILL_NAME = "orchestrator-handoff"
SKILL_DIR = Path("skills") / SKILL_NAME
AGENTS_FILE = "AGENTS.md"
BEGIN = f"<!-- BEGIN {SKILL_NAME} (managed by `orchestrate agent-skill`; edits here are lost) -->"
END = f"<!-- END {SKILL_NAME} -->"
_BEGIN_PREFIX = f"<!-- BEGIN {SKILL_NAME}"
#: Template files (in engine/templates/skill/) and where they go in the skill folder.
_SKILL_FILES = {"SKILL.md": "SKILL.md"}
_SECTION_TEMPLATE = "AGENTS.section.md"


def skill_files(*, agent: str | None = None, handoffs_dir: Path | None = None) -> dict[str, str]:
    """The skill folder's files, rendered: name inside the folder -> text."""
    values = _values(agent, handoffs_dir)
    return {dest: _render(src, values) for src, dest in _SKILL_FILES.items()}


def agents_section(*, agent: str | None = None, handoffs_dir: Path | None = None) -> str:
    """The AGENTS.md block, markers included, without a trailing newline."""
    body = _render(_SECTION_TEMPLATE, _values(agent, handoffs_dir)).strip("\n")
    return f"{BEGIN}\n{body}\n{END}"


def install(
    workspace: Path, *, agent: str | None = None, handoffs_dir: Path | None = None
) -> list[Path]:
    """Write the skill folder and the AGENTS.md section into ``workspace``.

    Files already as they should be are left alone, so a second call returns ``[]``.
    Installing again with another ``agent`` or ``handoffs_dir`` updates them in place;
    the AGENTS.md section is added once and replaced between its markers afterwards.
    """
    ws = _workspace(workspace)
    if agent is not None:
        check_id(agent, "agent name")
    changed: list[Path] = []
    folder = ws / SKILL_DIR
    for name, text in skill_files(agent=agent, handoffs_dir=handoffs_dir).items():
        if _write_if_changed(folder / name, text):
            changed.append(folder / name)
    agents_md = ws / AGENTS_FILE
    current = _read(agents_md)
    updated = _with_section(
        current, agents_section(agent=agent, handoffs_dir=handoffs_dir), agents_md
    )
    if updated != current and _write_if_changed(agents_md, updated):
        changed.append(agents_md)
    return changed


def uninstall(workspace: Path) -> list[Path]:
    """Remove the skill folder's files and the AGENTS.md section; return what changed.

    Only files this module writes are removed; the skill folder (and an empty
    ``skills/``) go once empty. An AGENTS.md left empty is deleted, since only the
    section was in it.
    """
    ws = _workspace(workspace)
    changed: list[Path] = []
    folder = ws / SKILL_DIR
    for name in _SKILL_FILES.values():
        path = folder / name
        if path.is_file():
            path.unlink()
            changed.append(path)
    for d in (folder, folder.parent):
        try:
            d.rmdir()
        except OSError:  # missing, or holds files of someone else's
            break
    agents_md = ws / AGENTS_FILE
    current = _read(agents_md)
    if current is not None:
        stripped = _without_section(current, agents_md)
        if stripped != current:
            if stripped.strip():
                _write_text_atomic(agents_md, stripped)
            else:
                agents_md.unlink()
            changed.append(agents_md)
    return changed


def is_installed(workspace: Path) -> bool:
    """True when the skill file and the AGENTS.md section are both there."""
    ws = Path(workspace).expanduser()
    text = _read(ws / AGENTS_FILE) or ""
    return (ws / SKILL_DIR / "SKILL.md").is_file() and _BEGIN_PREFIX in text


# ----------------------------------------------------------------------------- helpers


def _workspace(workspace: Path) -> Path:
    ws = Path(workspace).expanduser()
    if not ws.is_dir():
        raise UsageError(
            f"`--workspace` `{ws}` is not a directory: give the agent's OpenClaw workspace "
            "(`agents.defaults.workspace` or `agents.entries.<id>.workspace` in the "
            "gateway's config; by default `~/.openclaw/workspace`).",
            path=ws,
        )
    return ws.resolve()


#: The run id, caller and key of the skill's example block (a made-up delegation).
EXAMPLE_RUN_ID = "orch-20261121T104026-36872363"
_EXAMPLE_KEY = "3f6c0a9e51d24b7c8e0f1a2b3c4d5e6f"


def example_block(agent: str | None, handoffs_dir: Path | None) -> str:
    """The HANDOFF block of a task message as ``engine.message.render_message`` renders
    it, for a made-up delegation to ``agent`` (``webster`` when None) whose handoffs live
    in ``handoffs_dir`` (``/home/me/project/handoffs`` when None): from its
    ``--- HANDOFF (required) ---`` line to its ``handoff_path:`` line, so that the skill's
    example cannot drift from real messages (``handoff_path`` is the file store's
    ``handoff_target``: the ``inbox/`` file, not the record)."""
    from engine.message import render_message
    from engine.store.file import handoff_path

    path = handoff_path(handoffs_dir or Path("/home/me/project/handoffs"), EXAMPLE_RUN_ID)
    text = render_message(
        task="(the task)",
        run_id=EXAMPLE_RUN_ID,
        agent=agent or "webster",
        caller="manager",
        handoff_path=path,
        key=_EXAMPLE_KEY,
    )
    lines = text[text.index("--- HANDOFF (required) ---") :].splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("handoff_path: "))
    return "\n".join(lines[: end + 1])


def _values(agent: str | None, handoffs_dir: Path | None) -> dict[str, Any]:
    hdir = Path(handoffs_dir).expanduser().resolve() if handoffs_dir is not None else None
    block = example_block(agent, hdir)
    return {
        "agent": agent,
        "handoffs_dir": str(hdir) if hdir else None,
        "example_block": "\n".join("      " + line for line in block.splitlines()),
    }


@functools.cache
def _template(name: str) -> Any:
    from importlib import resources

    import jinja2

    source = resources.files("engine").joinpath(f"templates/skill/{name}").read_text("utf-8")
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
    )
    return env.from_string(source)


def _render(name: str, values: dict[str, Any]) -> str:
    text: str = _template(name).render(**values)
    return text


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read `{path}`: {exc}.", path=path) from exc


def _span(text: str, path: Path) -> tuple[int, int] | None:
    """Start and end offsets of the managed block (END line included), or None."""
    start = text.find(_BEGIN_PREFIX)
    if start < 0:
        return None
    if text.find(_BEGIN_PREFIX, start + 1) >= 0:
        raise UsageError(
            f"`{path}` has the `{SKILL_NAME}` BEGIN marker more than once: keep one block "
            "(or delete them all) by hand, then run again.",
            path=path,
        )
    end = text.find(END, start)
    if end < 0:
        line = text.count("\n", 0, start) + 1
        raise UsageError(
            f"`{path}` line {line}: the `{SKILL_NAME}` BEGIN marker has no `{END}` after "
            "it. Restore the END line (or delete the block) by hand, then run again.",
            path=path,
        )
    return start, end + len(END)


def _with_section(current: str | None, section: str, path: Path) -> str:
    if current is None or not current.strip():
        return section + "\n"
    span = _span(current, path)
    if span is None:
        return current.rstrip("\n") + "\n\n" + section + "\n"
    start, end = span
    return current[:start] + section + current[end:]


def _without_section(current: str, path: Path) -> str:
    span = _span(current, path)
    if span is None:
        return current
    start, end = span
    before = current[:start].rstrip("\n")
    after = current[end:].lstrip("\n")
    if before and after:
        return before + "\n\n" + after
    text = before or after
    return text + "\n" if text else ""


def _write_if_changed(path: Path, text: str) -> bool:
    if _read(path) == text:
        return False
    _write_text_atomic(path, text)
    return True


def _write_text_atomic(path: Path, text: str) -> None:
    """Temp file in the same directory, then rename; keep the mode of a file replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
