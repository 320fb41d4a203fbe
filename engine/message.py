"""The message sent to an agent: its task, then the handoff block it must answer with."""

from __future__ import annotations

import functools
import shlex
import threading
from pathlib import Path
from typing import Any

from engine.errors import ConfigError

_compiling = threading.Lock()


def _template(path: str | None) -> Any:
    """The compiled message template (once per process: the first steps of a run ask for
    it from many threads at once, and each compile costs about 20 ms)."""
    with _compiling:
        return _compiled(path)


@functools.cache
def _compiled(path: str | None) -> Any:
    import jinja2

    if path is None:
        from importlib import resources

        source = resources.files("engine").joinpath("templates/message.j2").read_text("utf-8")
        name = "message.j2"
    else:
        from engine.textio import read_text

        source = read_text(path, error=ConfigError, what="`message_template`")
        name = path
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False
    )
    try:
        return env.from_string(source, globals={"template_name": name})
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(
            f"`message_template` `{name}` line {exc.lineno}: {exc.message}.", path=path
        ) from exc


def write_command(run_id: str, agent: str, records_dir: Path, key: str | None = None) -> str:
    """The `orchestrate handoff write` command line an agent may run instead of writing JSON."""
    args = [
        "orchestrate",
        "handoff",
        "write",
        "--dir",
        str(records_dir),
        "--run-id",
        run_id,
        "--agent",
        agent,
        "--status",
        "complete",
        "--confidence",
        "high",
        *(["--key", key] if key else []),
        "--result",
        "YOUR RESULT",
    ]
    return " ".join(shlex.quote(a) for a in args)


def progress_command(run_id: str, records_dir: Path, key: str | None = None) -> str:
    """The `orchestrate handoff progress` command line an agent may run while it works
    (with the delegation's ``key``: progress is checked like a handoff)."""
    args = ["orchestrate", "handoff", "progress", "--dir", str(records_dir), "--run-id", run_id]
    args += ["--key", key] if key else []
    return " ".join(shlex.quote(a) for a in args) + " 'NOW DOING'"


def render_message(
    *,
    task: str,
    run_id: str,
    agent: str,
    caller: str,
    handoff_path: Path,
    receiver_url: str | None = None,
    timeout: float | None = None,
    parent_run_id: str | None = None,
    context: str | None = None,
    template: Path | None = None,
    key: str | None = None,
) -> str:
    """Render the message for one delegation (task and context are data, not template).

    ``key`` is the delegation's secret: the message is the only place it is written.
    """
    values: dict[str, Any] = dict(
        task=task,
        run_id=run_id,
        agent=agent,
        caller=caller,
        handoff_path=str(handoff_path),
        receiver_url=receiver_url,
        timeout=timeout,
        parent_run_id=parent_run_id,
        context=context,
        key=key,
        write_command=write_command(run_id, agent, handoff_path.parent, key),
        progress_command=progress_command(run_id, handoff_path.parent, key),
    )
    if template is None:
        return default_message(**values)
    import jinja2

    tpl = _template(str(template))
    try:
        text: str = tpl.render(**values)
    except jinja2.TemplateError as exc:
        raise ConfigError(f"`message_template` failed to render: {exc}.") from exc
    return text


def default_message(
    *,
    task: str,
    run_id: str,
    agent: str,
    caller: str,
    handoff_path: str,
    receiver_url: str | None,
    timeout: float | None,
    parent_run_id: str | None,
    context: str | None,
    key: str | None,
    write_command: str,
    progress_command: str,
) -> str:
    """The message of ``engine/templates/message.j2`` (the default, and the reference for
    a ``message_template`` of one's own), built without Jinja2: importing it and compiling
    that template cost ~30 ms of every process's first delegation. A test renders both
    over every branch of the template and compares them.
    """
    version = "1.1" if key else "1.0"
    by = f" (sub-delegation of run {parent_run_id})" if parent_run_id else ""
    deadline = f" (deadline: {_jinja_int(timeout)} s)" if timeout else ""
    out = [f"{context}\n\n" if context else "", f"{task}\n\n--- HANDOFF (required) ---\n"]
    out.append(f"You were given this task by `{caller}` through the orchestrator{by}.\n")
    out.append(
        "When you are done, write ONE JSON file; the caller is blocked until it exists"
        f"{deadline}.\n"
    )
    out.append(f"run_id: {run_id}\nagent: {agent}\n")
    out.append(f"key: {key}\n" if key else "")
    out.append(f"handoff_path: {handoff_path}\n")
    if receiver_url:
        out.append(
            f"receiver_url: {receiver_url}\n(on another host, POST the same JSON to "
            "receiver_url with your hooks token instead of writing the file)\n"
        )
    out.append(
        f'\nFields (schemaVersion "{version}"):\n- "schemaVersion": "{version}"\n'
        f'- "runId": "{run_id}"\n- "agent": "{agent}"\n'
    )
    if key:
        out.append(
            '- "key": the key above, exactly (it proves the answer is yours; keep it secret)\n'
        )
    out.append(
        '- "status": one of "complete" | "partial" | "blocked" | "failed"\n'
        '- "result": your answer as text (or why you could not answer)\n'
        '- "confidence": one of "high" | "medium" | "low"\n'
        '- "timestamp": ISO-8601 UTC time, e.g. "2026-01-01T12:00:00Z"\n'
        '- optional: "artifacts" (list of file paths), "notes" (text), "usage" '
        '({"input_tokens", "output_tokens", "cost", "model"})\n'
        f"Write it atomically (temp file + rename), or run:\n{write_command}\n"
        "To ask the caller: --status blocked --question 'YOUR QUESTION'\n"
        f"Progress (optional): {progress_command}"
    )
    return "".join(out)


def _jinja_int(value: Any) -> int:
    """Jinja2's ``int`` filter: the number truncated, 0 when it is none."""
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return 0


def parse_handoff_block(message: str) -> dict[str, str]:
    """Read `run_id`, `agent`, `handoff_path`, `receiver_url`, `key` from a message's
    handoff block.

    The last occurrence wins, so a task text cannot override the block that follows it.
    """
    import re

    found: dict[str, str] = {}
    for m in re.finditer(
        r"^(run_id|agent|handoff_path|receiver_url|key): (\S.*?)\s*$", message, flags=re.M
    ):
        found[m.group(1)] = m.group(2)
    return found
