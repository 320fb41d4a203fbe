"""A task message and its result post: the syntax the inbox reads, the text it posts.

Example::

    parse_task("webster: find the CTE of ULE model=cheap")
    # TaskRequest(kind="delegation", target="webster", task="find the CTE of ULE", model="cheap")
    submission_text("find X", agent="webster", thinking="low")   # "webster: find X thinking=low"

Pure functions and values, apart from reading a finished workflow's step records.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.errors import OrchestratorError, UsageError
from engine.redact import MASK, redact

# States of a claimed message, in order.
CLAIMING = "claiming"  # the state file exists; the reaction claim is not confirmed yet
CLAIMED = "claimed"  # the claim holds; the task has not started
RUNNING = "running"  # dispatched (delegation) or started (workflow)
WAITING = "waiting"  # parked at an approval gate or on an agent's question
FINISHED = "finished"  # the result is recorded here, not yet posted
POSTED = "posted"  # the result is in the results channel: done
REFUSED = "refused"  # refused (unmapped author, syntax, ACL): the reply says why
#: Run states the inbox announces and resumes.
PARKED = ("waiting_approval", "waiting_input")

_OPTIONS = ("model", "thinking")
_THINKING = ("low", "medium", "high")


class InboxError(UsageError):
    """Raised when a task message cannot be run as written (the reply says why)."""


@dataclass(frozen=True)
class TaskRequest:
    """A parsed task message."""

    kind: str  # "delegation" | "workflow"
    target: str  # the agent, or the workflow's name
    task: str = ""
    inputs: dict[str, str] = field(default_factory=dict)
    model: str | None = None
    thinking: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """As recorded in the state file."""
        return {
            "kind": self.kind,
            "target": self.target,
            "task": self.task,
            "inputs": dict(self.inputs),
            "model": self.model,
            "thinking": self.thinking,
        }


def parse_task(text: str, *, default_agent: str | None = None) -> TaskRequest:
    """Parse a task message; raise InboxError with the syntax when it is not one.

    ``default_agent`` (``channels.default_agent``): a message that is neither ``AGENT: ...``
    nor ``workflow ...`` (seed 002's queue: "Summarize X model=cheap thinking=low") is a
    delegation to that agent, the whole message its task."""
    body = text.strip()
    if body.startswith("workflow ") or body == "workflow":
        return _parse_workflow(body[len("workflow") :])
    agent, sep, task = body.partition(":")
    agent = agent.strip()
    if (not sep or not agent or " " in agent) and default_agent and body:
        agent, task = default_agent, body
    elif not sep or not agent or " " in agent:
        raise InboxError(
            "not a task: write `AGENT: task text` (e.g. `webster: find the CTE of ULE`) or "
            '`workflow NAME key="value" ...`, optionally ending with `model=...` and '
            "`thinking=low|medium|high`."
        )
    words = task.strip().split(" ")
    options: dict[str, str] = {}
    while words and "=" in words[-1] and words[-1].split("=", 1)[0] in _OPTIONS:
        key, value = words.pop().split("=", 1)
        options.setdefault(key, value)
    task = " ".join(words).strip()
    if not task:
        raise InboxError(f"the task for `{agent}` is empty: write `{agent}: what to do`.")
    _check_options(options)
    return TaskRequest(
        "delegation", agent, task, model=options.get("model"), thinking=options.get("thinking")
    )


def _parse_workflow(rest: str) -> TaskRequest:
    try:
        words = shlex.split(rest)
    except ValueError as exc:
        raise InboxError(f"cannot read the workflow's inputs: {exc} (close the quotes).") from None
    if not words or "=" in words[0]:
        raise InboxError('name the workflow: `workflow NAME key="value" ...`.')
    name, inputs = words[0], {}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise InboxError(f'workflow input `{word}` is not `key="value"`.')
        inputs[key] = value
    options = {k: inputs.pop(k) for k in _OPTIONS if k in inputs}
    if options:
        raise InboxError(
            "`model=` and `thinking=` apply to delegations only: a workflow's steps use "
            "their agents' settings."
        )
    return TaskRequest("workflow", name, inputs=inputs)


def _check_options(options: dict[str, str]) -> None:
    thinking = options.get("thinking")
    if thinking is not None and thinking not in _THINKING:
        raise InboxError(f"`thinking={thinking}`: use low, medium or high.")


def submission_text(
    task: str,
    *,
    agent: str | None,
    model: str | None = None,
    thinking: str | None = None,
    default_agent: str | None = None,
) -> str:
    """The queue message ``orchestrate inbox submit`` posts (the syntax ``parse_task`` reads,
    with ``channels.default_agent`` as ``default_agent``)."""
    text = task.strip()
    if agent:
        text = f"{agent}: {text}"
    for key, value in (("model", model), ("thinking", thinking)):
        if value:
            text += f" {key}={value}"
    parse_task(text, default_agent=default_agent)  # what we post must be readable by the inbox
    return text


def checked_submission(
    cfg: Config,
    task: str,
    *,
    agent: str | None,
    model: str | None = None,
    thinking: str | None = None,
) -> str:
    """``submission_text``, checked as the inbox will check it, so ``orchestrate inbox
    submit`` never claims to have queued what the inbox would cut or refuse:

    - a message longer than Discord's limit (``engine.discord.MAX_CONTENT``, 2,000
      characters; Discord's API reference, "Create Message") is refused: Discord would
      cut it, and the inbox reads the message's text only, not attachments;
    - an agent that is not in ``agents:`` is refused, with the nearest name;
    - a TASK that is neither ``AGENT: ...`` nor ``workflow ...``, without ``--agent``,
      is told to add ``--agent NAME``.

    ``InboxError`` (exit 2) with one paragraph for each."""
    from engine.discord import MAX_CONTENT
    from engine.errors import did_you_mean

    default_agent = cfg.channels.get("default_agent")
    try:
        text = submission_text(
            task, agent=agent, model=model, thinking=thinking, default_agent=default_agent
        )
    except InboxError as exc:
        if agent is None and exc.message.startswith("not a task"):
            names = sorted(cfg.agents)
            example = names[0] if names else "webster"
            raise InboxError(
                "not a task: TASK names no agent. Add `--agent NAME` (e.g. `orchestrate "
                f'inbox submit "{redact(task.strip()[:40])}" --agent {example}`), or write '
                '`AGENT: task text` or `workflow NAME key="value" ...` as TASK, or set '
                "`channels.default_agent` for tasks that name none."
            ) from None
        raise
    req = parse_task(text, default_agent=default_agent)
    if req.kind == "delegation" and req.target not in cfg.agents:
        known = ", ".join(f"`{n}`" for n in sorted(cfg.agents)) or "none"
        hint = did_you_mean(req.target, set(cfg.agents))
        raise InboxError(
            f"no agent `{req.target}` in `agents:` of {cfg.path}{hint or '.'} "
            f"Known agents: {known}. Nothing was posted."
        )
    if len(text) > MAX_CONTENT:
        raise InboxError(
            f"the task is {len(text):,} characters as posted, over Discord's 2,000-character "
            "limit for a message: Discord would cut it, and the agent would work on the cut "
            "text. Nothing was posted. Shorten the task (put long material in a file the "
            "agent can read, and name the file in the task)."
        )
    return text


#: An absolute path between backticks in a message (``/tmp/t4/a/workflows``).
_QUOTED_PATH = re.compile(r"`(/[^`\n]*)`")


def public_text(text: str, roots: tuple[Path, ...] = ()) -> str:
    """``text`` for a channel anyone in the server can read: an absolute path between
    backticks (a server's directory, a config file) is shown by its last part only
    (`.../workflows`), and so is any path under one of ``roots`` (the handoffs and the
    workspaces directories, which errors name unquoted: ``still recorded (marked late) in
    /srv/orch/handoffs`` becomes ``... in .../handoffs``), so posts do not map the host's
    file system (docs/discord.md, "Task syntax")."""
    text = _QUOTED_PATH.sub(lambda m: f"`.../{Path(m.group(1)).name or '/'}`", text)
    for root in sorted({str(r).rstrip("/") for r in roots if str(r).startswith("/")}, key=len,
                       reverse=True):  # fmt: skip
        under = re.compile(re.escape(root) + r"(?:/[^\s`'\"<>()\[\]{},;]*)?(?![\w-])")
        text = under.sub(lambda m: _last_part(m.group(0)), text)
    return text


def _last_part(path: str) -> str:
    """``.../name`` for an absolute path; a sentence's full stop after it stays outside."""
    stop = ""
    while path.endswith((".", ":")) and len(path) > 1:
        path, stop = path[:-1], path[-1] + stop
    return f".../{Path(path).name or '/'}{stop}"


def check_workflow_name(cfg: Config, name: str) -> None:
    """Refuse (``InboxError``) a workflow task whose NAME is not a known workflow's, naming
    the known ones (names only, no directories: the reply is public); a path is refused
    too: a Discord task runs a workflow by name, never a file of the host."""
    from engine.errors import did_you_mean
    from engine.workflow import EXTENSIONS, _files_in, search_path

    if "/" in name or name.startswith(".") or name.endswith(EXTENSIONS):
        raise InboxError(
            f"`{name}` is not a workflow name: a task names a workflow (`workflow NAME "
            'key="value" ...`), never a file.'
        )
    dirs = search_path(cfg)
    if any((d / f"{name}{ext}").is_file() for d in dirs for ext in EXTENSIONS):
        return
    known = sorted({p.stem for d in dirs for p in _files_in(d)})
    listed = ", ".join(f"`{k}`" for k in known) or "none"
    raise InboxError(
        f"no workflow `{name}`{did_you_mean(name, known) or '.'} Known workflows: {listed}."
    )


def mask_secret_inputs(cfg: Config, text: str) -> tuple[str, dict[str, str]]:
    """A task message as the inbox keeps and shows it, and the secret inputs it held.

    For a workflow task (``workflow NAME key=value ...``), each input that holds a secret
    (``engine.redact.secret_input_names``: declared ``secret: true`` in the template, or
    named so by ``engine.secretnames.secret_name``, or a value ``redact`` masks) is
    written ``key=***``; the result is ``(masked text, {key: real value})``. Any other
    message, or one that cannot be read as a task, is returned as it is with ``{}``
    (every post masks it through ``redact`` anyway). Example::

        mask_secret_inputs(cfg, "workflow sec q=hi acct=A1")  # acct: secret: true
        # ("workflow sec q=hi acct=***", {"acct": "A1"})
    """
    if not text.strip().startswith("workflow "):
        return text, {}
    try:
        req = parse_task(text)
    except InboxError:
        return text, {}
    from engine.secretnames import secret_name

    declared = {n for n in req.inputs if secret_name(n)}
    try:
        from engine.workflow import find_workflow, load_workflow

        check_workflow_name(cfg, req.target)
        declared = set(load_workflow(find_workflow(req.target, cfg)).secret_inputs)
    except (OrchestratorError, OSError):
        pass  # not runnable: refused later; the names alone decide here
    from engine.redact import secret_input_names

    names = set(secret_input_names(req.inputs, declared))
    if not names:
        return text, {}
    words = [f"{k}={MASK if k in names else shlex.quote(v)}" for k, v in req.inputs.items()]
    masked = " ".join(["workflow", shlex.quote(req.target), *words])
    return masked, {k: v for k, v in req.inputs.items() if k in names}


def summarize_delegation(cfg: Config, result: Any, req: TaskRequest) -> dict[str, Any]:
    rec = result.record or {}
    env = result.envelope or {}
    raw_usage = rec.get("usage")
    usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
    text = rec.get("result") if isinstance(rec.get("result"), str) else None
    if text is None and result.error is not None:
        text = str(result.error)
    agent = cfg.agents.get(req.target)
    model = usage.get("model") or req.model or (agent.model if agent else None)
    return {
        "status": result.outcome.value,
        "agent": req.target,
        "model": model,
        "input_tokens": usage.get("input_tokens"),
        "output_tokens": usage.get("output_tokens"),
        "cost": _cost(cfg, usage, model),
        "duration_ms": env.get("duration_ms"),
        "run_id": result.run_id,
        "task": req.task,
        "text": redact(text or ""),
    }


def summarize_workflow(cfg: Config, req: TaskRequest, result: Any) -> dict[str, Any]:
    """The result post's fields for a workflow run (same keys as ``summarize_delegation``).

    Tokens and cost are summed over the steps' handoff ``usage``; they are ``None`` when no
    step reported any. The text is the run's outputs, else one line per step.
    """
    summary = result.summary
    steps = summary.get("steps", {})
    usage = _workflow_usage(cfg, result.run_dir, steps)
    return {
        "status": summary.get("status"),
        "agent": f"workflow {req.target}",
        "duration_ms": summary.get("duration_ms"),
        "run_id": result.run_id,
        "task": " ".join(f'{k}="{v}"' for k, v in req.inputs.items()),
        "text": redact(_workflow_text(summary.get("outputs") or {}, steps)),
        **usage,
    }


def _step_usage(run_dir: Path, sid: str) -> dict[str, Any] | None:
    handoff = (_read_json(run_dir / f"{sid}.json") or {}).get("handoff") or {}
    usage = handoff.get("usage")
    return usage if isinstance(usage, dict) and usage else None


def _workflow_usage(cfg: Config, run_dir: Path, steps: dict[str, Any]) -> dict[str, Any]:
    """``model``, ``input_tokens``, ``output_tokens`` and ``cost`` summed over the steps."""
    usages = [u for u in (_step_usage(run_dir, sid) for sid in steps) if u is not None]
    models = list(dict.fromkeys(str(u["model"]) for u in usages if u.get("model")))
    if not usages:
        return {"model": None, "input_tokens": None, "output_tokens": None, "cost": None}
    return {
        "model": ", ".join(models) or None,
        "input_tokens": sum(int(u.get("input_tokens") or 0) for u in usages),
        "output_tokens": sum(int(u.get("output_tokens") or 0) for u in usages),
        "cost": round(sum(_cost(cfg, u, u.get("model")) or 0.0 for u in usages), 8),
    }


def _workflow_text(outputs: dict[str, Any], steps: dict[str, Any]) -> str:
    if outputs:
        return "\n\n".join(f"## {k}\n{v}" for k, v in outputs.items())
    return "\n".join(
        f"- {sid}: {st.get('status')}" + (f" ({st['error']})" if st.get("error") else "")
        for sid, st in steps.items()
    )


def _cost(cfg: Config, usage: dict[str, Any], model: Any) -> float | None:
    if isinstance(usage.get("cost"), int | float):
        return float(usage["cost"])
    from engine.cost import compute_cost, price_for

    price = price_for(cfg.models, model if isinstance(model, str) else None)
    tin, tout = usage.get("input_tokens"), usage.get("output_tokens")
    if price is None or not isinstance(tin, int) or not isinstance(tout, int):
        return None
    return compute_cost(tin, tout, price)


def headline(res: dict[str, Any]) -> str:
    tokens = (
        f"{res['input_tokens']} in / {res['output_tokens']} out"
        if res.get("input_tokens") is not None
        else "-"
    )
    cost = f"${res['cost']:.4f}" if isinstance(res.get("cost"), int | float) else "-"
    return (
        f"**{res.get('status')}** · agent `{res.get('agent')}` · model {res.get('model') or '-'} "
        f"· tokens {tokens} · cost {cost} · {seconds_text(res.get('duration_ms'))} "
        f"· run `{res.get('run_id')}`"
    )


def seconds_text(ms: Any) -> str:
    return f"{ms / 1000:.1f} s" if isinstance(ms, int | float) else "-"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
