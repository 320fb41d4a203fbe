"""The ``orchestrate`` program: delegate a task, write and show handoffs, the pool, the
gateway. Each command parses options, calls the engine and renders what it returns."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from engine.cli.common import (
    EngineGroup,
    NonEmpty,
    Seconds,
    Where,
    client,
    collected,
    config_option,
    dump,
    fail,
    int_option,
    interrupt_exit,
    interrupted,
    load,
    load_optional,
    non_empty_path,
    options,
    os_error,
    say,
    stopping_signals,
    where_options,
)
from engine.cli.store import store_group
from engine.states import Confidence, HandoffStatus

if TYPE_CHECKING:
    from engine.errors import UsageError


class _DelegateByDefault(EngineGroup):
    """`orchestrate AGENT TASK ...` runs the `delegate` command; other words are commands.

    A first word that is no agent of the config but close to a command's name (`shwo`) is
    taken for a mistyped command: ``UsageError`` (exit 2) with the near miss.
    """

    default_command = "delegate"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            _refuse_mistyped_command(self, args)
            args = ["delegate", *args]
        return super().parse_args(ctx, args)


def _refuse_mistyped_command(group: click.Group, args: list[str]) -> None:
    """``UsageError`` when ``args[0]`` is neither one of ``group``'s commands nor an agent
    of the config (the one ``--config`` names, else the default one) and is not plainly a
    delegation's agent: it is close to a command's name (`shwo`), or no ``--caller`` is
    given (`orchestrate config show`), which would otherwise be told it lacks ``--caller``.
    A delegation with ``--caller`` to an unknown agent is left to ``delegate`` (unknown
    agent, with the near miss). With no config to read, only a near miss of a command is
    refused, and not when a server is given (the server judges the word); with
    ``--capability`` the first word is the task."""
    import difflib
    import os

    word = args[0]
    if word.startswith("-") or _has_option(args, "--capability"):
        return
    commands = sorted(name for name in group.commands if name != "delegate")
    close = difflib.get_close_matches(word, commands, n=1, cutoff=0.75)
    if not close and _has_option(args, "--caller"):
        return
    from engine.errors import OrchestratorError

    try:
        cfg = load_optional(_last_value(args, "--config"))
    except OrchestratorError:
        cfg = None
    if cfg is not None and word in cfg.agents:
        return
    if cfg is None and (not close or "--server" in args or os.environ.get("ORCH_SERVER")):
        return  # no agents to judge by: `delegate` says what is missing
    raise _mistyped(word, close, sorted(cfg.agents) if cfg is not None else [])


def _mistyped(word: str, close: list[str], agents: list[str]) -> UsageError:
    """The ``UsageError`` for a first word that is neither a command nor an agent: with
    the command it is ``close`` to, else the nearest of ``agents`` or all of them."""
    from engine.errors import UsageError, did_you_mean

    near = f"; did you mean `{close[0]}`?" if close else did_you_mean(word, agents) or "."
    known = f" Agents of the config: {', '.join(agents)}." if agents and not close else ""
    return UsageError(
        f"`{word}` is neither a command of `orchestrate` nor an agent of the config{near} "
        "See `orchestrate --help` for the commands (`orchestrate AGENT TASK --caller C` "
        f"delegates to an agent).{known}"
    )


def _has_option(args: list[str], name: str) -> bool:
    """True when ``args`` give option ``name`` (``--name`` or ``--name=value``)."""
    return any(a.split("=")[0] == name for a in args)


def _last_value(args: list[str], name: str) -> str | None:
    """The value of the last ``name VALUE`` or ``name=VALUE`` in ``args``, or None."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


@click.group(
    cls=_DelegateByDefault,
    epilog="""\b
Examples:
  orchestrate webster "Find CTE of Zerodur" --caller manager --timeout 120
  orchestrate handoff write --run-id RUN --agent webster --key KEY --status complete --result "..."
  orchestrate gateway --config orchestrator.yaml --port 18900
Exit codes: 0 ok · 1 agent failed/blocked · 2 bad input
            3 waiting: for approval, or for the answer to the agent's question
            4 timed out or lost · 5 refused by the ACL or the pool
            6 unusable: the agent finished without a usable handoff""",
)
@click.version_option(package_name="agent-orchestrator", prog_name="orchestrate")
def orchestrate() -> None:
    """Delegate a task to an agent and wait for its validated handoff.

    Usage: orchestrate AGENT TASK --caller CALLER [options]
    (the same as `orchestrate delegate AGENT TASK ...`).
    """


@orchestrate.command("delegate")
@click.argument("args", nargs=-1, required=True, metavar="AGENT TASK")
@click.option(
    "--caller",
    required=True,
    type=NonEmpty("name the agent that delegates (e.g. `--caller manager`)"),
    help="Who delegates (checked against the ACL).",
)
@click.option(
    "--capability",
    type=NonEmpty("name a capability (config `agents.*.capabilities`)"),
    help="Route by capability instead of naming AGENT: the least "
    "busy capable agent the caller may use (give only TASK).",
)
@click.option(
    "--timeout",
    type=Seconds(),
    help="Seconds to wait for the handoff (default: the agent's, else 120).",
)
@click.option(
    "--deliver/--no-deliver",
    default=None,
    help="Ask the gateway to deliver the agent's reply to its channel (default from config: off).",
)
@click.option(
    "--parent-run-id",
    type=NonEmpty("give the run id of the parent delegation (from $ORCH_RUN_ID)"),
    help="Record as a sub-delegation of this run (from $ORCH_RUN_ID inside an agent's task).",
)
@click.option("--validate", is_flag=True, help="Have the validator check the result.")
@click.option(
    "--validator",
    type=NonEmpty("name the validator agent"),
    help="Validator agent (default: the config's `validator`).",
)
@click.option(
    "--fail-on-reject/--no-fail-on-reject",
    default=True,
    show_default=True,
    help="Exit 1 when the validator rejects the result.",
)
@click.option(
    "--channel-context",
    metavar="NAME",
    type=NonEmpty("name a channel of the config's `channels.map`"),
    help="Put the recent messages of this channel (config `channels.map`) before the task.",
)
@int_option("--channel-messages", low=1, high=100, default=20, help="How many channel messages.")
@click.option(
    "--context-file",
    type=non_empty_path("give the path of a text file", dir_okay=False),
    help="Put this file's text before the task.",
)
@click.option("--model", type=NonEmpty("name a model"), help="Model override sent to the gateway.")
@click.option(
    "--thinking", type=NonEmpty("name a thinking level"), help="Thinking level sent to the gateway."
)
@click.option("--channel", type=NonEmpty("name a channel"), help="Channel sent to the gateway.")
@click.option("--dry-run", is_flag=True, help="Do every check (and the routing), send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines on stderr.")
@click.option(
    "--idempotency-key",
    "key",
    type=NonEmpty("give a key that names this request"),
    help="A retry with this key returns the first result, unsent."
)
@where_options
def delegate_cmd(
    args: tuple[str, ...],
    caller: str,
    capability: str | None,
    timeout: float | None,
    deliver: bool | None,
    parent_run_id: str | None,
    validate: bool,
    validator: str | None,
    fail_on_reject: bool,
    channel_context: str | None,
    channel_messages: int,
    context_file: str | None,
    model: str | None,
    thinking: str | None,
    channel: str | None,
    dry_run: bool,
    as_json: bool,
    quiet: bool,
    key: str | None,
    where: Where,
) -> int:
    """Delegate TASK to AGENT on behalf of --caller and wait for the handoff."""
    from engine.delegate import DelegationRequest, open_delegator
    from engine.reporter import ConsoleReporter, Reporter
    from engine.store.postgres_retry import StoreConnectionLost
    from engine.validate import delegate_validated, validator_for

    task = _task_of(args, capability)
    if validator and not validate:
        from engine.errors import UsageError

        raise UsageError(
            f"`--validator {validator}` is given without `--validate`, so nothing would be "
            "validated: add `--validate` to have it check the result, or leave out "
            "`--validator`."
        )
    if where.server:
        given = {
            "--validate": validate,
            "--dry-run": dry_run,
            "--deliver" if deliver else "--no-deliver": deliver is not None,
            "--channel-context": bool(channel_context),
            "--context-file": bool(context_file),
        }
        where.refuse_local(*(name for name, on in given.items() if on))
        request = {
            "target": None if capability else args[0],
            "capability": capability,
            "task": task,
            "caller": caller,
            "timeout": timeout,
            "model": model,
            "thinking": thinking,
            "channel": channel,
            "parent_run_id": parent_run_id,
        }
        return _delegate_remote(where, request, key=key, as_json=as_json)
    cfg = load(where.config)
    checker = validator_for(cfg, validator) if validate else None
    req = DelegationRequest(
        target="" if capability else args[0],
        task=task,
        caller=caller,
        timeout=timeout,
        deliver=deliver,
        parent_run_id=parent_run_id,
        model=model,
        thinking=thinking,
        channel=channel,
        context=_context_text(cfg, channel_context, channel_messages, context_file),
    )
    reporter = Reporter() if (quiet or as_json) else ConsoleReporter()
    sent = _noting_dispatches(reporter)
    got: list[int] = []
    try:
        with (
            stopping_signals() as got,
            open_delegator(cfg, reporter=reporter, pool=None if dry_run else "auto") as delegator,
        ):
            done = delegate_validated(
                delegator, req, capability=capability, validator=checker, key=key, dry_run=dry_run
            )
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: the wait ends; the delegation goes on
        return interrupted(_interrupted(sent), as_json=as_json, code=interrupt_exit(got))
    except StoreConnectionLost as exc:  # exit 4; --json names the run as the paragraph does
        fail(exc, as_json=as_json, more={"runId": exc.run_id} if exc.run_id else None)
    if done.result is None:
        if done.route:
            click.echo(done.route.explain())
        click.echo(f"dry run: `{caller}` -> `{done.agent}` passes every check; nothing sent.")
        return 0
    return _render_delegation(
        done.result,
        done.verdict,
        None if quiet else done.route,
        as_json=as_json,
        strict=fail_on_reject,
    )


def _noting_dispatches(reporter: Any) -> list[str]:
    """The run ids ``reporter`` is told were dispatched, in a list filled as they are."""
    sent: list[str] = []
    forward = reporter.delegation_dispatched

    def noting(run_id: str, caller: str, target: str, attempts: int) -> None:
        sent.append(run_id)
        forward(run_id, caller, target, attempts)

    setattr(reporter, "delegation_dispatched", noting)  # noqa: B010 (an instance's method)
    return sent


def _interrupted(sent: list[str]) -> str:
    """The paragraph after Ctrl-C stopped a delegation's wait (exit 130)."""
    if not sent:
        return "interrupted before the task was dispatched; nothing was sent."
    rid = sent[-1]
    return (
        f"interrupted: stopped waiting for delegation {rid}; nothing was recorded as its "
        "ending. Its agent may still be working: a handoff it writes later is recorded as "
        f"it arrives (see it with: orchestrate show {rid})."
    )


def _delegate_remote(
    where: Where, request: dict[str, Any], *, key: str | None, as_json: bool
) -> int:
    """`delegate --server`: the serve API delegates; its record is printed here."""
    assert where.server is not None
    with client(where.server, where.token_env) as remote:
        result = remote.delegate(request, key=key)
    if as_json:
        _dump_ended(result, int(result.exit_code))
    else:
        _print_result(result, where.flags)
    return int(result.exit_code)


def _dump_ended(result: Any, code: int) -> None:
    """`--json` of a delegation that was recorded: its record. One that did not succeed
    (``code`` not 0) also carries ``exit_code``, and ``error`` (the paragraph, also on
    stderr) when the engine says why, so that a script reads the same two keys as from a
    command that failed before anything was recorded (docs/delegation.md)."""
    from engine.redact import redact

    doc = dict(result.record)
    if result.error is not None:
        text = redact(str(result.error))
        click.echo(f"error: {text}", err=True)
        doc["error"] = text
    if code:
        doc["exit_code"] = code
    dump(doc)


def _render_delegation(
    result: Any, verdict: Any, route: Any, *, as_json: bool, strict: bool
) -> int:
    """Print a delegation's record (and its validation); the exit code it comes to.

    ``route`` (the capability route taken, explained on stderr) is None with ``-q``."""
    code = int(result.exit_code)
    if verdict is not None and not verdict.approved and strict and code == 0:
        code = 1
    if as_json:
        _dump_ended(result, code)
    else:
        if route:
            click.echo(route.explain(), err=True)
        _print_result(result)
        if verdict is not None:
            word = "approved" if verdict.approved else "REJECTED"
            say(f"validation by {verdict.validator}: {word}: {verdict.reasons}")
        if result.error is not None:
            say(f"error: {result.error}", err=True)  # the error may quote an agent
    return code


def _task_of(args: tuple[str, ...], capability: str | None) -> str:
    """The TASK of `AGENT TASK` (or of `--capability NAME TASK`)."""
    from engine.errors import UsageError

    if len(args) != (1 if capability else 2):
        raise UsageError(
            "give `TASK` only with --capability"
            if capability
            else "give `AGENT TASK` (or `--capability NAME TASK`)"
        )
    return args[-1]


def _context_text(cfg: Any, channel: str | None, messages: int, path: str | None) -> str | None:
    parts = []
    if channel:
        from engine.context import channel_context

        parts.append(channel_context(cfg, channel, messages))
    if path:
        from pathlib import Path

        from engine.context import file_context

        parts.append(file_context(Path(path)))
    return "\n\n".join(parts) if parts else None


def _print_result(result: Any, flags: str = "") -> None:
    """A delegation's record for a person; ``flags`` (``Where.flags``) go into the answer
    hint of a delegation the server ran, so that it can be copied as printed."""
    from engine.ask import step_answer_hint, workflow_step_of

    rec = result.record
    env = rec.get("envelope", {})
    outcome = result.outcome.value
    head = f"{outcome}"
    if rec.get("confidence"):
        head += f" (confidence {rec['confidence']})"
    dur = env.get("duration_ms")
    took = f", {dur / 1000:.2f} s" if isinstance(dur, int | float) else ""
    say(f"{head}: {env.get('target')} for {env.get('caller')}, {result.run_id}{took}")
    if rec.get("result"):
        say(rec["result"])
    if rec.get("notes"):
        say(f"notes: {rec['notes']}")
    if rec.get("artifacts"):
        say("artifacts: " + ", ".join(rec["artifacts"]))
    from engine.progress import usage_text

    if usage := usage_text(rec.get("usage")):
        say(f"usage: {usage}")
    say(f"record: {result.record_path}")
    if outcome == "blocked" and rec.get("question"):
        say(f"question: {rec['question']}")
        done = [
            a for a in env.get("answers") or [] if isinstance(a, dict) and a.get("continued_as")
        ]
        if done:  # `engine.ask.answer_delegation` wrote it: the run goes on under a new id
            last = done[-1]
            say(
                f"answered by {last.get('by')} at {last.get('at')}: {last.get('text')!r}; "
                f"it continued as {last['continued_as']} "
                f"(follow it: orchestrate show {last['continued_as']}{flags})"
            )
        elif (owner := workflow_step_of(env)) is not None:  # its run answers it
            say(f"continue with: {step_answer_hint(*owner, 'YOUR ANSWER')}", err=True)
        else:
            say(f'continue with: orchestrate answer {result.run_id} "YOUR ANSWER"{flags}', err=True)
    if outcome == "partial":
        say("warning: the agent finished only part of the task (status partial).", err=True)


@dataclass(frozen=True)
class _Delivery:
    """Where an agent's command delivers: into ``directory`` (None: the config's handoffs
    directory, its ``sub`` part for a sub-delegation), or to the ``receiver`` URL with
    the token in the environment variable ``token_env``; ``key`` proves it is the agent's."""

    directory: str | None
    sub: bool
    receiver: str | None
    token_env: str | None
    key: str | None


def _delivery_options(directory: str, sub: str, receiver: str, key: str) -> Callable[[Any], Any]:
    """``--dir``, ``--sub``, ``--receiver``, ``--token-env`` and ``--key`` (default: the
    ``ORCH_HANDOFF_KEY`` variable) of an agent's command, given to it as one ``delivery``
    value (a ``_Delivery``); the strings are their help."""
    return collected(
        "delivery",
        _Delivery,
        click.option(
            "--dir",
            "directory",
            type=non_empty_path("give the directory from the task message", file_okay=False),
            help=directory,
        ),
        click.option("--sub", is_flag=True, help=sub),
        click.option(
            "--receiver", type=NonEmpty("give the receiver's URL from the task message"),
            help=receiver,
        ),
        click.option(
            "--token-env",
            type=NonEmpty("name the environment variable that holds the hooks token"),
            help="With --receiver: env var holding the hooks token.",
        ),
        click.option(
            "--key",
            envvar="ORCH_HANDOFF_KEY",
            show_envvar=True,
            type=NonEmpty("give the key from the task message"),
            help=key,
        ),
    )


@orchestrate.group("handoff")
def handoff_group() -> None:
    """What an agent runs: write its handoff, or say what it is doing (`handoff write`,
    `handoff progress`)."""


@handoff_group.command("write")
@click.option(
    "--run-id",
    required=True,
    type=NonEmpty("give the run id from the task message"),
    help="The run id from the task message.",
)
@click.option(
    "--agent", required=True, type=NonEmpty("give your agent name"), help="Your agent name."
)
@click.option(
    "--status",
    required=True,
    type=click.Choice([s.value for s in HandoffStatus]),
    help="How the task ended: complete, partial (part done), blocked (you need an answer: "
    "add --question) or failed.",
)
@click.option("--result", "result_text", help="The result text ('-' reads stdin).")
@click.option(
    "--result-file",
    type=non_empty_path("give the path of the result file", exists=True, dir_okay=False),
    help="Read the result text from this file.",
)
@click.option(
    "--confidence",
    default="medium",
    show_default=True,
    type=click.Choice([c.value for c in Confidence]),
    help="How sure you are of the result.",
)
@click.option(
    "--artifact",
    "artifacts",
    multiple=True,
    type=NonEmpty("give an artifact's path"),
    help="An artifact path (repeatable).",
)
@click.option("--notes", help="Free-form notes.")
@click.option("--question", help="With --status blocked: what you need to know to go on.")
@click.option(
    "--data",
    "data_json",
    metavar="JSON",
    help="The structured result (any JSON value) the task's result schema asks for.",
)
@click.option(
    "--data-file",
    type=non_empty_path("give the path of a JSON file", exists=True, dir_okay=False),
    help="Read the structured result (JSON) from this file.",
)
@_delivery_options(
    "Directory to write into (as given in the task message).",
    "Write under <handoffs_dir>/sub (sub-delegation).",
    "POST to this receiver URL instead of writing a file.",
    "The `key:` line of the task message (proves the handoff is yours).",
)
@config_option
def handoff_write_cmd(
    run_id: str,
    agent: str,
    status: str,
    result_text: str | None,
    result_file: str | None,
    confidence: str,
    artifacts: tuple[str, ...],
    notes: str | None,
    question: str | None,
    data_json: str | None,
    data_file: str | None,
    delivery: _Delivery,
    config: str | None,
) -> int:
    """Write a valid handoff atomically where the engine waits for it (``--data`` or
    ``--data-file``: its structured ``data``, a JSON value; bad JSON is exit 2).

    Refused before writing (exit 2): no key, a --dir that does not exist, a handoff
    larger than ``max_handoff_bytes`` (the pending envelope's, else the config's, else
    ``MAX_HANDOFF_BYTES``: what the engine reads it with), and where the run's pending
    envelope is readable, another agent than the run's or a wrong key."""
    from engine.errors import UsageError
    from engine.files import check_id
    from engine.handoff import MAX_HANDOFF_BYTES, check_deliverable, make_handoff, write_handoff

    check_id(run_id, "run id")
    from engine.textio import check_text, decode_utf8, read_text

    if result_file:
        result_text = read_text(result_file, error=UsageError, what="--result-file")
    elif result_text == "-":
        result_text = decode_utf8(sys.stdin.buffer.read(), source="stdin", error=UsageError)
    elif result_text is not None:
        check_text(result_text, what="`--result`", error=UsageError)
    if result_text is None:
        raise UsageError("give the result with `--result TEXT`, `--result -` or `--result-file`.")
    data = make_handoff(
        run_id=run_id,
        agent=agent,
        status=status,
        result=result_text,
        confidence=confidence,
        artifacts=artifacts,
        notes=notes,
        key=delivery.key or None,
    )
    if question:
        if status != "blocked":
            raise UsageError("`--question` goes with `--status blocked`.")
        data["question"] = question
    structured = _data_option(data_json, data_file)
    if structured is not _NO_DATA:
        data["data"] = structured
    if delivery.receiver:
        return _post_handoff(delivery, run_id, agent, data)
    from engine.store.file import FileRunStore

    path, policy, limit = _write_target(delivery, run_id, config)
    records = _records_of(path.parent)
    unkeyed = False
    if not any(p.exists() and not p.is_dir() for p in (path.parent, *path.parent.parents)):
        # (a file in the way: `write_handoff` names it)
        pending = FileRunStore(records).read_pending(run_id, sub=False)
        unkeyed = check_deliverable(data, pending, where=records, policy=policy)
        if pending is not None:  # the limit the engine reads this delegation's handoff with
            limit = int(pending.get("max_handoff_bytes") or MAX_HANDOFF_BYTES)
    _check_size(data, limit, path)
    written = write_handoff(path, data, replace=False)
    click.echo(str(written))
    if unkeyed:
        click.echo(
            f"note: written without a key (schemaVersion {data['schemaVersion']}): accepted "
            "unverified, as `handoff_key: optional` allows.",
            err=True,
        )
    if written != path:
        click.echo(
            f"note: `{path}` already held a handoff; yours was written beside it, not over "
            "it. The engine records the first valid one and keeps the other aside, listed "
            f"in the record: see `orchestrate show {run_id}`.",
            err=True,
        )
    return 0


_NO_DATA = object()


def _data_option(text: str | None, path: str | None) -> Any:
    """The JSON value of ``--data`` or ``--data-file``, or ``_NO_DATA`` when neither is
    given; ``UsageError`` (exit 2) for both at once or for text that is not JSON."""
    import json

    from engine.errors import UsageError
    from engine.textio import check_text, read_text

    if text is not None and path is not None:
        raise UsageError("give the structured result once: `--data JSON` or `--data-file PATH`.")
    if path is not None:
        text, what = read_text(path, error=UsageError, what="--data-file"), f"`--data-file {path}`"
    elif text is not None:
        check_text(text, what="`--data`", error=UsageError)
        what = "`--data`"
    else:
        return _NO_DATA

    from engine.gateway.server import MAX_DEPTH, too_deep
    from engine.handoff import DuplicateKeyError, unique_keys

    def no_constant(name: str) -> Any:
        raise ValueError(f"`{name}` is not a JSON value")

    deep = UsageError(
        f"{what} nests arrays or objects deeper than {MAX_DEPTH} levels (the limit of the "
        "engine's receiver); flatten it, or put the data in an artifact file."
    )
    try:
        value = json.loads(text, parse_constant=no_constant, object_pairs_hook=unique_keys)
    except RecursionError:
        raise deep from None
    except DuplicateKeyError as exc:  # the engine refuses it in a handoff file too
        raise UsageError(f"{what} refused: {exc}.") from None
    except ValueError as exc:
        raise UsageError(
            f"{what} is not JSON ({exc}); give one JSON value, e.g. "
            """`--data '{"cte_ppm_per_k": 0.02}'` (quote it for the shell)."""
        ) from None
    if too_deep(value):
        raise deep
    return value


@handoff_group.command("progress")
@click.option(
    "--run-id",
    required=True,
    type=NonEmpty("give the run id from the task message"),
    help="The run id from the task message.",
)
@click.argument("text")
@_delivery_options(
    "The directory of handoff_path (as given in the task message).",
    "A sub-delegation (under <handoffs_dir>/sub).",
    "POST to this receiver URL instead (another host).",
    "The `key:` line of the task message (progress is checked like a handoff).",
)
@config_option
def handoff_progress_cmd(run_id: str, text: str, delivery: _Delivery, config: str | None) -> int:
    """Report what you are doing while you work (the caller sees the latest line)."""
    from engine.files import check_id
    from engine.liveness import report_progress
    from engine.store.file import records_dir

    check_id(run_id, "run id")
    if delivery.receiver:
        return _post_progress(delivery, run_id, text)
    if delivery.directory:
        records = _records_of(_existing_dir(delivery.directory, "nothing was recorded"))
    else:
        handoffs_dir = load(config).handoffs_dir
        sub = delivery.sub or _waits_as_sub(handoffs_dir, run_id)  # as `handoff write` does
        records = records_dir(handoffs_dir, sub=sub)
    report_progress(records, run_id, text, key=delivery.key or None)
    return 0


def _waits_as_sub(handoffs_dir: Path, run_id: str) -> bool:
    """True when ``run_id`` is not a top-level delegation of ``handoffs_dir`` (no pending
    envelope, no record) but a sub-delegation of it waits (its pending envelope is under
    ``sub/``): the agent answering it need not pass ``--sub`` (docs/delegation.md)."""
    from engine.store.file import FileRunStore

    store = FileRunStore(handoffs_dir)
    if store.read_pending(run_id, sub=False) is not None:
        return False
    if store.record_locator(run_id, sub=False).exists():
        return False
    return store.read_pending(run_id, sub=True) is not None


def _existing_dir(directory: str, nothing: str = "nothing was written") -> Path:
    """``--dir`` as a path; ``UsageError`` (exit 2) when it is not an existing directory
    (an ``inbox`` not made yet in an existing records directory is one): nothing waits
    where the engine did not make the directory."""
    from engine.errors import UsageError
    from engine.record import INBOX_DIR

    where = Path(directory)
    if not (where.is_dir() or (where.name == INBOX_DIR and where.parent.is_dir())):
        raise UsageError(
            f"`--dir {directory}` is not an existing directory, so no delegation waits "
            "there: give the directory of the task message's `handoff_path:` line exactly; "
            f"{nothing}."
        )
    return where


def _records_of(directory: Path) -> Path:
    """The records directory an agent's directory belongs to (``inbox``'s parent)."""
    from engine.record import INBOX_DIR

    return directory.parent if directory.name == INBOX_DIR else directory


def _write_target(
    delivery: _Delivery, run_id: str, config: str | None
) -> tuple[Path, str | None, int]:
    """Where ``handoff write`` writes, the config's ``handoff_key`` and its
    ``max_handoff_bytes``. With ``--dir`` the config is optional (an agent given only
    ``--dir`` often has none: the pending envelope says both instead): without a valid
    one, no policy and ``MAX_HANDOFF_BYTES``."""
    from engine.errors import OrchestratorError
    from engine.handoff import MAX_HANDOFF_BYTES
    from engine.store.file import handoff_path

    if delivery.directory:
        path = _existing_dir(delivery.directory) / f"{run_id}.json"
        try:
            found = load_optional(config)
        except OrchestratorError:
            found = None
        if found is None:
            return path, None, MAX_HANDOFF_BYTES
        return path, str(found.handoff_key), found.max_handoff_bytes
    cfg = load(config)
    sub = delivery.sub or _waits_as_sub(cfg.handoffs_dir, run_id)
    path = handoff_path(cfg.handoffs_dir, run_id, sub=sub)
    return path, str(cfg.handoff_key), cfg.max_handoff_bytes


def _check_size(data: dict[str, Any], limit: int, path: Path) -> None:
    """Refuse (``UsageError``, exit 2) a handoff whose file would be larger than ``limit``
    bytes: the engine refuses such a file unread (``engine.handoff.read_handoff_bytes``),
    and the delegation would end without a usable handoff. Counted as written: indented
    UTF-8 JSON, ``data`` included."""
    from engine.errors import UsageError
    from engine.files import dumps_json
    from engine.redact import redact

    size = len((redact(dumps_json(data)) + "\n").encode("utf-8"))
    if size > limit:
        raise UsageError(
            f"the handoff for `{path}` would have {size} bytes, over the limit of {limit} "
            "bytes the engine reads (`max_handoff_bytes`), so it would be refused; nothing "
            "was written. Shorten the result (and `--data`, which counts too), or write the "
            "long text to a file and give its path in the result and with `--artifact PATH`."
        )


def _receiver_target(agent: str, base: str, token_env: str | None) -> Any:
    """The receiver at ``base`` (its URL without ``/handoffs/...``) as a hooks target,
    with the token read from the ``--token-env`` variable.

    Raises ``UsageError`` when ``--token-env`` is missing and the ``read_secret`` error
    when the variable is unset or empty.
    """
    from engine.errors import UsageError
    from engine.hooks import Target
    from engine.registry import read_secret

    if not token_env:
        raise UsageError("`--receiver` needs `--token-env VAR` (the env var with the token).")
    token = read_secret(env=token_env, file=None, what="--receiver")
    return Target(
        agent=agent, url=base, token=token, token_source=f"environment variable `{token_env}`"
    )


def _post_progress(delivery: _Delivery, run_id: str, text: str) -> int:
    import time

    from engine.hooks import HooksClient

    assert delivery.receiver is not None
    base = delivery.receiver.rstrip("/")
    for tail in (f"/handoffs/{run_id}/progress", f"/handoffs/{run_id}"):
        if base.endswith(tail):
            base = base[: -len(tail)]
            break
    target = _receiver_target(run_id, base, delivery.token_env)
    with HooksClient() as client:
        key = delivery.key or None
        client.post_progress(
            target,
            run_id,
            text,
            deadline=time.monotonic() + 30,
            key=key,
            hint=f"Check `--receiver {delivery.receiver}`, then run the same command again "
            "(each run tries for up to 30 s).",
        )
    return 0


def _post_handoff(delivery: _Delivery, run_id: str, agent: str, data: dict[str, Any]) -> int:
    import time

    from engine.config import url_problem
    from engine.errors import UsageError
    from engine.hooks import HooksClient

    receiver = delivery.receiver
    assert receiver is not None
    bad_url = url_problem(receiver, "--receiver")
    if bad_url:
        raise UsageError(bad_url)
    base, _, tail = receiver.rstrip("/").rpartition("/handoffs/")
    if not base or tail != run_id:
        base = receiver.rstrip("/")
    target = _receiver_target(agent, base, delivery.token_env)
    with HooksClient() as client:
        client.post_handoff(
            target,
            run_id,
            data,
            deadline=time.monotonic() + 60,
            hint=f"Check `--receiver {receiver}`, then run the same command again "
            "(each run tries for 60 s).",
        )
    say(f"posted to {base}/handoffs/{run_id}")
    return 0


@orchestrate.command("answer")
@click.argument("run_id")
@click.argument("text")
@click.option(
    "--by",
    type=NonEmpty("name who answers"),
    default="cli",
    show_default=True,
    help="Who answers (recorded).",
)
@click.option(
    "--timeout",
    type=Seconds(),
    help="Seconds to wait (default: the asking run's).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@where_options
def answer_cmd(
    run_id: str,
    text: str,
    by: str,
    timeout: float | None,
    as_json: bool,
    quiet: bool,
    where: Where,
) -> int:
    """Answer the question a delegation asked, send it back to the agent, and wait
    (with `--server`, the server does; the answerer recorded is the token's name)."""
    from engine.ask import answer_delegation
    from engine.delegate import DelegationResult, open_delegator
    from engine.reporter import ConsoleReporter, Reporter

    reporter = Reporter() if (quiet or as_json) else ConsoleReporter()

    def here(cfg: Any) -> DelegationResult:
        with open_delegator(cfg, reporter=reporter) as delegator:
            return answer_delegation(delegator, run_id, text, by=by, timeout=timeout)

    result: DelegationResult = where.act(
        lambda remote: remote.answer_delegation(run_id, text), here
    )
    if as_json:
        _dump_ended(result, result.exit_code)
    else:
        _print_result(result, where.flags)
        if result.error is not None:
            say(f"error: {result.error}", err=True)  # the error may quote an agent
    return result.exit_code


def _show_ended(
    run_id: str,
    outcome: str,
    where: Any,
    rec: dict[str, Any],
    env: dict[str, Any],
    path: Any,
    flags: str = "",
) -> None:
    """Print an ended delegation's record (an unknown outcome shows as errored) and its
    notes; ``where`` is the record's path or URL, ``path`` the local file, if any."""
    from engine.delegate import DelegationResult, Outcome

    try:
        oc = Outcome(outcome)
    except ValueError:
        oc = Outcome.ERRORED
    _print_result(DelegationResult(run_id, oc, where, rec), flags)
    _record_notes(env, path, run_id, outcome)


def _outcome_of(rec: dict[str, Any], env: dict[str, Any]) -> str:
    return str(env.get("outcome") or rec.get("status") or "unknown")


def _in_flight(
    rec: dict[str, Any], env: dict[str, Any], outcome: str, run_id: str, *, local: bool = False
) -> bool:
    """Say so and return True when ``rec`` is a delegation still waiting for its handoff
    (``local``: a pending envelope of this store, whose waiter ``waiter_alive`` judges:
    one whose process is gone is shown as abandoned, with what to do)."""
    if "status" in rec or outcome not in ("dispatched", "unknown"):
        return False
    if local and _abandoned(env, run_id):
        return True
    if env.get("queued"):  # engine.delegate: waiting for a pool token, nothing sent yet
        click.echo(
            f"queued: {env.get('target')} for {env.get('caller')}, {run_id} (waiting for a "
            f"pool token since {env.get('created_at')}, deadline {env.get('deadline_at')}); "
            "nothing sent yet"
        )
        return True
    click.echo(
        f"in flight: {env.get('target')} for {env.get('caller')}, {run_id} "
        f"(dispatched {env.get('dispatched_at') or env.get('created_at')}, deadline "
        f"{env.get('deadline_at')}); no handoff yet"
    )
    return True


def _abandoned(env: dict[str, Any], run_id: str) -> bool:
    """Print and return True when the process that waited for ``env``'s handoff is gone
    (``engine.store.liveness.waiter_alive``: its PID on this host, its renewals on
    another): nobody will record a timeout for it, so say what it is and what to do."""
    import shlex
    import time

    from engine.files import parse_iso
    from engine.store.liveness import waiter_alive

    if type(env.get("pid")) is not int and env.get("host") is None:
        return False  # no owner named (an envelope not written by a waiter): cannot judge
    if waiter_alive(env):
        return False
    target, caller = env.get("target"), env.get("caller")
    deadline = env.get("deadline_at")
    try:
        passed = deadline is not None and parse_iso(str(deadline)).timestamp() < time.time()
    except ValueError:
        passed = True
    when = f"deadline {deadline} passed" if passed else f"deadline {deadline}"
    owner = f"pid {env.get('pid')} on {env.get('host') or 'this host'}"
    from engine.ask import workflow_step_of

    step_of = workflow_step_of(env)
    task = str(env.get("task") or "")
    task_arg = shlex.quote(task) if task and len(task) <= 200 and "\n" not in task else "TASK"
    again = f"orchestrate {target} {task_arg} --caller {caller}"
    if env.get("parent_run_id"):
        again += f" --parent-run-id {env['parent_run_id']}"
    if env.get("queued"):  # engine.delegate: the token never came, so nothing was sent
        then = (
            f"it is step `{step_of[1]}` of workflow run {step_of[0]}: `workflow resume "
            f"{step_of[0]}` sends it"
            if step_of is not None
            else f"to have the task done, delegate it again: {again} (with its "
            "--idempotency-key, if it had one: this run is then sent)"
        )
        say(  # the task may quote a secret: `say` masks it
            f"never dispatched: {target} for {caller}, {run_id} (created "
            f"{env.get('created_at')}): it was queued for a pool token when its process "
            f"({owner}) ended; nothing was sent, and no handoff will come; {then}."
        )
        return True
    say(
        f"abandoned: {target} for {caller}, {run_id} (dispatched "
        f"{env.get('dispatched_at') or env.get('created_at')}, {when}): the process that "
        f"waited for its handoff ({owner}) is gone, and no handoff has come."
    )
    if step_of is not None:  # delegated again it would run twice
        say(
            f"It is step `{step_of[1]}` of workflow run {step_of[0]}: the agent may still answer "
            f"(`orchestrate show {run_id}` merges it). Do not delegate it again outside "
            f"its run: see `workflow status {step_of[0]}`."
        )
        return True
    say(  # the task may quote a secret: `say` masks it
        f"The agent may still answer: its handoff is merged (marked late) by the next "
        f"`orchestrate show {run_id}`. To have the task done now, delegate it again: {again}"
    )
    return True


@orchestrate.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@where_options
def show_cmd(run_id: str, as_json: bool, where: Where) -> int:
    """Show the record of a delegation (merging a late handoff first; with `--server`,
    the server's record: `GET /v1/delegations/RUN_ID`)."""
    from engine.store import open_store

    if where.server:
        return _show_remote(where, run_id, as_json)
    store = open_store(load(where.config))
    path, rec = store.find(run_id)
    if as_json:
        dump(rec)
        return 0
    env = rec.get("envelope")
    if not isinstance(env, dict):
        click.echo(
            f"unrecorded handoff: {rec.get('status', 'unknown')} from {rec.get('agent')} "
            f"for {run_id}; no delegation is known for this run (no record, nothing pending)"
        )
        if rec.get("result"):
            click.echo(str(rec["result"]))
        click.echo(f"file: {path}")
        return 0
    outcome = _outcome_of(rec, env)
    if _in_flight(rec, env, outcome, run_id, local=True):
        from engine.liveness import progress_note

        note = progress_note(store, run_id) or progress_note(store, run_id, sub=True)
        if note:
            say(f"progress: {note}")
        click.echo(f"pending: {path}")
        return 0
    _show_ended(run_id, outcome, path, rec, env, path)
    return 0


def _show_remote(where: Where, run_id: str, as_json: bool) -> int:
    """`show --server`: the server's record of a delegation (``GET /v1/delegations/ID``),
    printed as `show` prints a local one; an in-flight delegation as its pending record."""
    from engine.files import check_id
    from engine.record import record_of

    check_id(run_id, "run id")
    assert where.server is not None
    with client(where.server, where.token_env) as remote:
        doc = remote.delegation(run_id)
        url = f"{remote.url}/v1/delegations/{run_id}"
    rec = doc.get("record")
    env = doc.get("envelope")
    if not isinstance(rec, dict) and isinstance(env, dict):
        rec = record_of(None, env, run_id)  # as a local `show --json` of a pending one
    if as_json:
        dump(rec if isinstance(rec, dict) else doc)
        return 0
    if not isinstance(rec, dict):  # the server is starting it, or could not
        error = f": {doc['error']}" if doc.get("error") else ""
        say(f"{doc.get('status')}: {run_id}, started through the server{error}")
        return 0
    shown: dict[str, Any] = rec.get("envelope") or {}
    outcome = _outcome_of(rec, shown)
    if _in_flight(rec, shown, outcome, run_id):
        say(f"pending: {url}")
        return 0
    _show_ended(run_id, outcome, url, rec, shown, None, where.flags)
    return 0


def _record_notes(env: dict[str, Any], path: Any, run_id: str, outcome: str) -> None:
    """The notes under a shown record: late, superseded, unverified, progress, errors
    (``path``: the record's file, None for a server's record: no progress note)."""
    from engine.liveness import progress_note
    from engine.states import FINAL_OUTCOMES, Outcome

    if env.get("late"):
        click.echo("note: this handoff arrived after the delegation had given up (late).")
    if env.get("supersedes"):
        click.echo(f"note: this handoff replaced an earlier `{env['supersedes']}` record.")
    if env.get("unverified"):
        click.echo("note: unverified: the handoff had no key (`handoff_key: optional`).")
    if path is not None:
        parent = path.parent.parent if path.parent.name == "inbox" else path.parent
        note = progress_note(parent, run_id)
        if note:
            say(f"progress: {note}")
    failed = tuple(o.value for o in Outcome if o not in FINAL_OUTCOMES)
    if env.get("error") and outcome in failed:
        click.echo(f"error: {env['error']}")
    for item in env.get("also_received") or []:
        click.echo(f"also received: {item.get('file')}: {item.get('reason')}")
    for item in env.get("rejected") or []:
        click.echo(f"refused: {item.get('file')}: {item.get('reason')}")


@orchestrate.command("tree")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the tree as JSON.")
@where_options
def tree_cmd(run_id: str, as_json: bool, where: Where) -> int:
    """Print the delegation tree of RUN_ID: its sub-delegations, with statuses (with
    `--server`, the server's: `GET /v1/delegations/RUN_ID/tree`)."""
    from engine.errors import RunStateError
    from engine.files import check_id
    from engine.store import FileRunStore, open_store

    check_id(run_id, "run id")

    def here(cfg: Any) -> dict[str, Any]:
        store = open_store(cfg)
        found = store.tree(run_id)
        if found is None:  # the store named as `show` names it: the directory, or the database
            place = cfg.handoffs_dir if isinstance(store, FileRunStore) else store.location
            raise RunStateError(f"no delegation `{run_id}` in `{place}`.")
        return dict(found)

    root: dict[str, Any] = where.act(lambda remote: remote.tree(run_id), here)
    if as_json:
        dump(root)
        return 0

    def line(n: dict[str, Any]) -> str:
        dur = n.get("duration_ms")
        took = f" {dur / 1000:.2f} s" if isinstance(dur, int | float) else ""
        conf = f" ({n['confidence']})" if n.get("confidence") else ""
        late = " late" if n.get("late") else ""
        cont = f", answered: continued as {n['continued_as']}" if n.get("continued_as") else ""
        return (
            f"{n['run_id']}  {n['caller']} -> {n['target']}  {n['outcome']}{conf}{took}{late}{cont}"
        )

    def walk(n: dict[str, Any], prefix: str, last: bool, top: bool) -> None:
        click.echo(line(n) if top else f"{prefix}{'└── ' if last else '├── '}{line(n)}")
        kids = n["children"]
        for i, kid in enumerate(kids):
            walk(
                kid,
                prefix if top else prefix + ("    " if last else "│   "),
                i == len(kids) - 1,
                False,
            )

    walk(root, "", True, True)
    return 0


@orchestrate.group("pool")
def pool_group() -> None:
    """The token pool shared by every process on this host (no gateway needed)."""


@pool_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@where_options
def pool_status_cmd(as_json: bool, where: Where) -> int:
    """Size, mode, tokens in use (run, agent, PID, age), queue and recent load samples
    (with `--server`, the server's pool: `GET /v1/pool`)."""
    from engine.pool import PoolSettings, TokenPool, format_status

    def here(cfg: Any) -> dict[str, Any]:
        with TokenPool(PoolSettings.from_config(cfg)) as pool:
            found: dict[str, Any] = pool.status()
        return found

    status: dict[str, Any] = where.act(lambda remote: remote.pool(), here)
    if as_json:
        dump(status)
    elif where.server and set(status) == {"enabled"}:  # the server's pool is off
        click.echo(
            f"the server {where.server} runs without a token pool (`pool.enabled: false` "
            "in its config)."
        )
    else:
        click.echo(format_status(status))
    return 0


#: What an empty ``--host`` is told to give (empty would bind every interface).
_HOST_NEEDED = "give a name or address of this machine to bind (e.g. 127.0.0.1)"


@pool_group.command("serve")
@click.option(
    "--host",
    type=NonEmpty(_HOST_NEEDED),
    default="127.0.0.1",
    show_default=True,
    help="Address to bind.",
)
@int_option(
    "--port", low=0, high=65535, default=18950, help="Port to listen on (0: any free port)."
)
@click.option(
    "--token-env",
    default="ORCH_POOL_TOKEN",
    type=NonEmpty("name the environment variable that holds the token"),
    show_default=True,
    help="Environment variable holding the bearer token clients must send.",
)
@config_option
def pool_serve_cmd(host: str, port: int, token_env: str, config: str | None) -> int:
    """Serve the pool over HTTP for the OpenClaw plugin (docs/operations.md) until Ctrl-C."""
    import os

    from engine.errors import ConfigError
    from engine.pool import PoolSettings, TokenPool
    from engine.poolserver import PoolServer
    from engine.redact import register

    cfg = load(config)
    token = os.environ.get(token_env, "").strip()
    if not token:
        raise ConfigError(
            f"environment variable `{token_env}` is not set: export the bearer token the "
            f"OpenClaw plugin sends (its `tokenFile` or `tokenEnv`), e.g. `export {token_env}=...`."
        )
    register(token)
    from engine.serve.settings import MIN_TOKEN

    if len(token) < MIN_TOKEN:  # the rule of `orchestrate serve`'s tokens
        raise ConfigError(
            f"the token in environment variable `{token_env}` has {len(token)} characters; "
            f"pool tokens, as server tokens, need at least {MIN_TOKEN}: export a longer one "
            f"(e.g. `export {token_env}=$(openssl rand -hex 24)`) and give the OpenClaw "
            "plugin the same."
        )
    with TokenPool(PoolSettings.from_config(cfg)) as pool:
        server = PoolServer(pool, token=token, host=host, port=port)
        # SIGTERM and SIGHUP stop it as Ctrl-C does (exit 0), as a service manager
        # expects; the line that says it serves comes once they are handled
        with stopping_signals():
            return _serve_until_stopped(
                server, f"pool endpoint on {server.url} (Ctrl-C to stop)", ctrl_c_ok=True
            )


@orchestrate.group("agent-skill")
def agent_skill_group() -> None:
    """Standing instructions for hook tasks, in an OpenClaw agent's workspace."""


def _workspace_option(what: str) -> Callable[[Any], Any]:
    """``--workspace DIR`` (required) of the agent-skill commands; ``what`` is its help."""
    return click.option(
        "--workspace",
        required=True,
        type=non_empty_path("give the agent's workspace directory", file_okay=False),
        help=what,
    )


@agent_skill_group.command("install")
@_workspace_option("The OpenClaw agent workspace (the folder with its AGENTS.md).")
@click.option(
    "--agent",
    type=NonEmpty("name the agent (as the config's `agents` do)"),
    help="The agent's registry name (checked against the config).",
)
@config_option
def agent_skill_install_cmd(workspace: str, agent: str | None, config: str | None) -> int:
    """Install the handoff skill and an AGENTS.md section (idempotent).

    \b
    Writes <workspace>/skills/orchestrator-handoff/SKILL.md (the skill text: how to
    recognise a task from the engine and write its handoff; read it there after
    installing) and a section between orchestrator-handoff markers in
    <workspace>/AGENTS.md. docs/openclaw.md ("The agent skill") describes both;
    docs/protocol.md the handoff they teach."""
    from pathlib import Path

    from engine.agentskill import install
    from engine.registry import Registry

    cfg = load_optional(config)
    if agent and cfg is not None:
        Registry.from_config(cfg).get(agent)
    try:
        changed = install(
            Path(workspace), agent=agent, handoffs_dir=cfg.handoffs_dir if cfg else None
        )
    except OSError as exc:  # the workspace is where it writes, not the handoffs directory
        raise os_error(exc, fix=f"`--workspace {workspace}`") from exc
    if not changed:
        click.echo(f"already installed in {workspace}")
        return 0
    for path in changed:
        click.echo(f"wrote {path}")
    if any(Path(p).name == "SKILL.md" for p in changed):
        click.echo("restart the agent's gateway so that hook runs pick up the new skill.", err=True)
    return 0


@agent_skill_group.command("uninstall")
@_workspace_option("The OpenClaw agent workspace.")
def agent_skill_uninstall_cmd(workspace: str) -> int:
    """Remove the skill folder and the AGENTS.md section."""
    from pathlib import Path

    from engine.agentskill import uninstall

    try:
        changed = uninstall(Path(workspace))
    except OSError as exc:
        raise os_error(exc, fix=f"`--workspace {workspace}`") from exc
    for path in changed:
        click.echo(f"removed {path}")
    if not changed:
        click.echo("nothing to remove")
    return 0


def _bind_options(section: str, port: str = "") -> Callable[[Any], Any]:
    """``--host``, ``--port`` (defaults from the config's ``section``) and ``--config``."""
    return options(
        click.option(
            "--host",
            type=NonEmpty(_HOST_NEEDED),
            help=f"Address to bind (default: {section}.host, else 127.0.0.1).",
        ),
        click.option(
            "--port",
            type=click.IntRange(0, 65535),
            help=f"Port (default: {section}.port{port}).",
        ),
        config_option,
    )


@orchestrate.command("gateway")
@_bind_options("gateway")
def gateway_cmd(host: str | None, port: int | None, config: str | None) -> int:
    """Serve the local gateway (OpenClaw hooks API + handoff receiver) until Ctrl-C."""
    from engine.errors import ConfigError
    from engine.gateway.server import LocalGateway
    from engine.registry import read_secret

    cfg = load(config)
    gw = cfg.gateway
    if gw is None or not gw.agents:
        raise ConfigError(f"`{cfg.label}` has no `gateway.agents`: nothing to serve.")
    if not (gw.token_env or gw.token_file):
        raise ConfigError(
            f"`{cfg.label}`: a standalone gateway needs `gateway.token_env` or "
            "`gateway.token_file` so that callers can authenticate."
        )
    token = read_secret(env=gw.token_env, file=gw.token_file, what="the local gateway")
    server = LocalGateway(cfg, token=token, host=host, port=port).start()
    serving = f"local gateway on {server.url} serving: {', '.join(gw.agents)} (Ctrl-C to stop)"
    return _serve_until_stopped(server, serving, ctrl_c_ok=False)


def _serve_until_stopped(server: Any, serving: str, *, ctrl_c_ok: bool) -> int:
    """Say ``serving`` on stderr, serve until Ctrl-C (exit 0 with ``ctrl_c_ok``, else
    interrupted: 130), then stop the server (whatever ended the serving)."""
    try:
        click.echo(serving, err=True)
        server.serve_forever()
    except KeyboardInterrupt:
        if not ctrl_c_ok:
            raise
    finally:
        server.stop()
    return 0


@orchestrate.group("agents")
def agents_group() -> None:
    """The cluster's gateways: health, systemd units, logs."""


@agents_group.command("status")
@click.argument("names", nargs=-1, metavar="[AGENT]...")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 60.0),
    metavar="SECONDS",
    default=5.0,
    show_default=True,
    help="Longest probe of one agent, in seconds (0.1 to 60).",
)
@config_option
def agents_status_cmd(
    names: tuple[str, ...], as_json: bool, timeout: float, config: str | None
) -> int:
    """Probe every agent's gateway: reachable, /health, hooks token, latency, in-flight.

    Exits 1 when any agent is not up.
    """
    from engine.health import check_agents, format_table

    report = check_agents(load(config), names=list(names) or None, timeout=timeout)
    if as_json:
        dump(report.as_dict())
    else:
        say(format_table(report))
    return 0 if report.ok else 1


@agents_group.command("systemd")
@click.option(
    "--out",
    required=True,
    type=non_empty_path("give a directory"),
    help="Directory to write into (created if needed)."
)
@config_option
def agents_systemd_cmd(out: str, config: str | None) -> int:
    """Write one systemd user unit per gateway (tokens from an EnvironmentFile)."""
    from pathlib import Path

    from engine.systemd import check_out, gateway_units, write_units

    check_out(Path(out))
    units = gateway_units(load(config))
    if not units:
        click.echo("no gateway on this host in the registry: nothing to write", err=True)
        return 0
    for path in write_units(units, Path(out)):
        click.echo(f"wrote {path}")
    return 0


@agents_group.command("logs")
@click.argument("agent")
@click.option("-f", "--follow", is_flag=True, help="Keep printing what is appended (Ctrl-C).")
@int_option(
    "-n",
    "--lines",
    low=0,
    high=100000,
    default=50,
    help="How many of the last lines to print first.",
)
@config_option
def agents_logs_cmd(agent: str, follow: bool, lines: int, config: str | None) -> int:
    """Print the end of AGENT's gateway log (`operations.logs`); -f follows it."""
    from engine import opslog

    cfg = load(config)
    path = opslog.log_path(cfg, agent)
    assert path is not None
    for line in opslog.tail(path, lines):
        click.echo(line)
    if follow:
        for line in opslog.follow(path):
            click.echo(line)
    return 0


@orchestrate.group("inbox")
def inbox_group() -> None:
    """Tasks from a Discord channel: claim by reaction, post results (docs/discord.md)."""


@inbox_group.command("discord")
@click.option("--once", is_flag=True, help="One poll, wait for its tasks, exit (for cron).")
@config_option
def inbox_discord_cmd(once: bool, config: str | None) -> int:
    """Poll `channels.queue`, run the tasks claimed, post results until Ctrl-C."""
    import signal
    import threading

    from engine.discord import DiscordClient
    from engine.inbox import DiscordInbox

    cfg = load(config)

    def retrying(what: str, attempt: int, delay: float, reason: str) -> None:
        say(f"↻ Discord ({what}): {reason}; retry {attempt} in {delay:.1f} s", err=True)

    client = DiscordClient.from_config(cfg, on_retry=retrying)
    stop = threading.Event()
    try:
        with DiscordInbox(cfg, client, log=lambda line: say(line, err=True)) as inbox:
            if once:
                inbox.recover()
                inbox.poll_once()
                inbox.drain()
                return 0
            previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
            click.echo("inbox: polling Discord (Ctrl-C to stop)", err=True)
            try:
                inbox.run(stop)
            except KeyboardInterrupt:
                click.echo("inbox: stopping after the tasks in flight", err=True)
            finally:
                signal.signal(signal.SIGTERM, previous)
    finally:
        client.close()
    return 0


@inbox_group.command("submit")
@click.argument("task")
@click.option(
    "--agent",
    type=NonEmpty("name an agent"),
    help="Delegate to this agent (else TASK is `AGENT: ...` or `workflow ...`)."
)
@click.option(
    "--model",
    type=NonEmpty("name a model or an alias"),
    help="Model or alias for the agent (e.g. cheap).",
)
@click.option("--thinking", type=click.Choice(["low", "medium", "high"]), help="Thinking level.")
@config_option
def inbox_submit_cmd(
    task: str, agent: str | None, model: str | None, thinking: str | None, config: str | None
) -> int:
    """Post TASK to the queue channel, as seed 002's submit-to-queue.sh does."""
    from engine.discord import DiscordClient
    from engine.inbox import InboxSettings
    from engine.inboxtask import checked_submission

    cfg = load(config)
    text = checked_submission(cfg, task, agent=agent, model=model, thinking=thinking)
    settings = InboxSettings.from_config(cfg)
    client = DiscordClient.from_config(cfg)
    try:
        posted = client.post(settings.queue, text)
    finally:
        client.close()
    click.echo(f"queued as message {posted.get('id')}: {text}")
    return 0


@orchestrate.command("serve")
@_bind_options("serve", ", 8765")
def serve_cmd(host: str | None, port: int | None, config: str | None) -> int:
    """Run the server: API (/v1), live events, dashboard; it executes the runs it starts."""
    from engine.serve import ServeSettings, serve

    cfg = load(config)
    settings = ServeSettings.from_config(cfg, host=host, port=port)
    if warning := settings.unread_tokens_warning(cfg):
        click.echo(warning, err=True)
    serve(cfg, settings, on_started=lambda url: click.echo(f"serving on {url}", err=True))
    return 0


orchestrate.add_command(store_group)


def orchestrate_main() -> None:
    """Entry point of the `orchestrate` console script."""
    orchestrate.main(prog_name="orchestrate")
