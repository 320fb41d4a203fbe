"""Command-line shells over the engine: ``orchestrate`` (and ``workflow``, ``metrics``).

Thin by design: each command parses options, calls one engine function and renders the
result. Heavy modules are imported inside commands so ``--help`` starts fast.
"""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import click

from engine.errors import EXIT_USAGE, OrchestratorError
from engine.redact import redact

CONFIG_HELP = "Config file (default: $ORCHESTRATOR_CONFIG, else ./orchestrator.yaml)."


def _fail(exc: OrchestratorError) -> NoReturn:
    click.echo(f"error: {redact(str(exc))}", err=True)
    sys.exit(exc.exit_code)


def _os_error(exc: OSError) -> OrchestratorError:
    """An OSError that reached the CLI (a directory the engine writes to, a full disk)."""
    from engine.textio import describe_oserror

    where = f" `{exc.filename}`" if exc.filename else ""
    if not where and _LOADED:  # a write into an open file: the handoffs directory is the place
        where = f" the handoffs directory `{_LOADED[-1]}`"
    return OrchestratorError(
        f"cannot use{where}: {describe_oserror(exc)}. Nothing was lost; fix the path or its "
        "permissions (e.g. `handoffs_dir` in the config) and run again."
    )


class Seconds(click.ParamType[float]):
    """A finite number of seconds in ``(0, MAX_SECONDS]``: no nan, inf or 1e12."""

    name = "SECONDS"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        import math

        from engine.config import MAX_SECONDS

        if isinstance(value, float):
            return value
        text = str(value).strip()
        try:
            number = float(text) if len(text) <= 32 else math.nan
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or not 0 < number <= MAX_SECONDS:
            self.fail(
                f"`{text[:32]}` is not a number of seconds between 0 and {MAX_SECONDS} "
                "(e.g. `120`).",
                param,
                ctx,
            )
        return number


def _check_argv(args: list[str]) -> None:
    """Refuse command-line text that is not valid UTF-8 before any command runs.

    Bytes from a file saved as cp1252 (``$(cat notes.txt)``) reach Python as lone
    surrogates, which nothing could write; the message names the option or position.
    """
    from engine.errors import UsageError
    from engine.textio import check_text

    for i, arg in enumerate(args):
        if arg.startswith("--") and "=" in arg:
            what = f"the value of `{arg.split('=', 1)[0]}`"
        elif i and args[i - 1].startswith("-") and not arg.startswith("-"):
            what = f"the value of `{args[i - 1]}` (argument {i + 1})"
        else:
            what = f"argument {i + 1} `{arg.encode('utf-8', 'replace').decode()[:40]}`"
        check_text(arg, what=what, error=UsageError)


class EngineGroup(click.Group):
    """A click group whose user errors become one message and the documented exit code."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if args is None:
            args = sys.argv[1:]
        try:
            _check_argv(list(args))
            rv = super().main(
                args=args,
                prog_name=prog_name,
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
        except OrchestratorError as exc:
            _fail(exc)
        except OSError as exc:
            _fail(_os_error(exc))
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(EXIT_USAGE)
        except click.Abort:
            click.echo("aborted.", err=True)
            sys.exit(130)
        except KeyboardInterrupt:
            click.echo("interrupted.", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


#: The handoffs directory of the config each command loaded, to name it in OSError messages.
_LOADED: list[str] = []


def _load(config: str | None) -> Any:
    from engine.config import load_config

    cfg = load_config(config)
    _LOADED.append(str(cfg.handoffs_dir))
    return cfg


def _load_optional(config: str | None) -> Any:
    """The config if there is one (an invalid one is still an error), else None."""
    from engine.config import find_config, load_config
    from engine.errors import ConfigError

    try:
        path = find_config(config)
    except ConfigError:
        if config:
            raise
        return None
    return load_config(path)


def _dump(data: Any) -> None:
    from engine.redact import redact

    click.echo(redact(json.dumps(data, indent=2, ensure_ascii=False, default=str)))


def _say(text: str, *, err: bool = False) -> None:
    """Print a line that may carry text from an agent or a URL, with known secrets masked."""
    from engine.redact import redact

    click.echo(redact(text), err=err)


config_option = click.option(
    "--config", "config", type=click.Path(dir_okay=False), help=CONFIG_HELP
)


# --------------------------------------------------------------------------- orchestrate


class _DelegateByDefault(EngineGroup):
    """`orchestrate AGENT TASK ...` runs the `delegate` command; other words are commands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["delegate", *args]
        return super().parse_args(ctx, args)


@click.group(
    cls=_DelegateByDefault,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="""\b
Examples:
  orchestrate webster "Find CTE of Zerodur" --caller manager --timeout 120
  orchestrate handoff write --run-id RUN --agent webster --status complete --result "..."
  orchestrate gateway --config orchestrator.yaml --port 18900
Exit codes: 0 ok · 1 agent failed/blocked · 2 bad input · 3 waiting approval
            4 timed out · 5 refused by the ACL or the pool""",
)
@click.version_option(package_name="agent-orchestrator", prog_name="orchestrate")
def orchestrate() -> None:
    """Delegate a task to an agent and wait for its validated handoff.

    Usage: orchestrate AGENT TASK --caller CALLER [options]
    (the same as `orchestrate delegate AGENT TASK ...`).
    """


@orchestrate.command("delegate")
@click.argument("args", nargs=-1, required=True, metavar="AGENT TASK")
@click.option("--caller", required=True, help="Who delegates (checked against the ACL).")
@click.option(
    "--capability",
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
    help="Record as a sub-delegation of this run (from $ORCH_RUN_ID inside an agent's task).",
)
@click.option("--validate", is_flag=True, help="Have the validator check the result.")
@click.option("--validator", help="Validator agent (default: the config's `validator`).")
@click.option(
    "--fail-on-reject/--no-fail-on-reject",
    default=True,
    show_default=True,
    help="Exit 1 when the validator rejects the result.",
)
@click.option(
    "--channel-context",
    metavar="NAME",
    help="Put the recent messages of this channel (config `channels.map`) before the task.",
)
@click.option(
    "--channel-messages",
    type=click.IntRange(1, 100),
    default=20,
    show_default=True,
    help="How many channel messages.",
)
@click.option(
    "--context-file", type=click.Path(dir_okay=False), help="Put this file's text before the task."
)
@click.option("--model", help="Model override sent to the gateway.")
@click.option("--thinking", help="Thinking level sent to the gateway.")
@click.option("--channel", help="Channel sent to the gateway.")
@click.option("--dry-run", is_flag=True, help="Do every check (and the routing), send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines on stderr.")
@config_option
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
    config: str | None,
) -> int:
    """Delegate TASK to AGENT on behalf of --caller and wait for the handoff."""
    from engine.delegate import DelegationRequest, open_delegator
    from engine.errors import UsageError
    from engine.reporter import ConsoleReporter, Reporter

    want = 1 if capability else 2
    if len(args) != want:
        raise UsageError(
            "give `TASK` only with --capability"
            if capability
            else "give `AGENT TASK` (or `--capability NAME TASK`)"
        )
    task = args[-1]
    cfg = _load(config)
    if validate and not (validator or cfg.validator):
        raise UsageError(
            "`--validate` needs a validator: pass `--validator AGENT` or set "
            f"`validator:` in `{cfg.label}`."
        )
    context = _context_text(cfg, channel_context, channel_messages, context_file)
    reporter = Reporter() if (quiet or as_json) else ConsoleReporter()
    with open_delegator(cfg, reporter=reporter, pool=None if dry_run else "auto") as delegator:
        if validate:  # every check of the command before anything is dispatched
            delegator.registry.get(validator or str(cfg.validator), role="validator")
            delegator.acl.check(caller, validator or str(cfg.validator))
        route = delegator.route(caller, capability) if capability else None
        agent = route.agent if route else args[0]
        if dry_run:
            from engine.registry import check_secrets

            check_secrets(cfg, [agent, *([validator or str(cfg.validator)] if validate else [])])
        req = DelegationRequest(
            target=agent,
            task=task,
            caller=caller,
            timeout=timeout,
            deliver=deliver,
            parent_run_id=parent_run_id,
            model=model,
            thinking=thinking,
            channel=channel,
            context=context,
        )
        if dry_run:
            delegator.check(req)
            if route:
                click.echo(route.explain())
            click.echo(f"dry run: `{caller}` -> `{agent}` passes every check; nothing sent.")
            return 0
        result = delegator.delegate(req)
        verdict = None
        if validate and result.outcome.ok and result.handoff:
            from engine.validate import record_verdict, validate_result

            verdict = validate_result(
                delegator,
                caller=caller,
                validator=validator or str(cfg.validator),
                task=task,
                handoff=result.handoff,
            )
            record = record_verdict(delegator.store, result, verdict)
            result = type(result)(
                result.run_id, result.outcome, result.record_path, record, result.error
            )
    if as_json:
        _dump(result.record)
    else:
        if route:
            click.echo(route.explain(), err=True)
        _print_result(result)
        if verdict is not None:
            word = "approved" if verdict.approved else "REJECTED"
            click.echo(f"validation by {verdict.validator}: {word}: {verdict.reasons}")
    if result.error is not None and not as_json:
        click.echo(f"error: {result.error}", err=True)
    if verdict is not None and not verdict.approved and fail_on_reject and result.exit_code == 0:
        return 1
    return result.exit_code


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


def _print_result(result: Any) -> None:
    rec = result.record
    env = rec.get("envelope", {})
    outcome = result.outcome.value
    head = f"{outcome}"
    if rec.get("confidence"):
        head += f" (confidence {rec['confidence']})"
    dur = env.get("duration_ms")
    took = f", {dur / 1000:.2f} s" if isinstance(dur, int | float) else ""
    _say(f"{head}: {env.get('target')} for {env.get('caller')}, {result.run_id}{took}")
    if rec.get("result"):
        _say(rec["result"])
    if rec.get("notes"):
        _say(f"notes: {rec['notes']}")
    if rec.get("artifacts"):
        _say("artifacts: " + ", ".join(rec["artifacts"]))
    _say(f"record: {result.record_path}")
    if outcome == "blocked" and rec.get("question"):
        _say(f"question: {rec['question']}")
        _say(f'continue with: orchestrate answer {result.run_id} "YOUR ANSWER"', err=True)
    if outcome == "partial":
        _say("warning: the agent finished only part of the task (status partial).", err=True)


@orchestrate.group("handoff")
def handoff_group() -> None:
    """Write or show handoff files (agents call `handoff write`)."""


@handoff_group.command("write")
@click.option("--run-id", required=True, help="The run id from the task message.")
@click.option("--agent", required=True, help="Your agent name.")
@click.option(
    "--status", required=True, type=click.Choice(["complete", "partial", "blocked", "failed"])
)
@click.option("--result", "result_text", help="The result text ('-' reads stdin).")
@click.option(
    "--result-file",
    type=click.Path(exists=True, dir_okay=False),
    help="Read the result text from this file.",
)
@click.option(
    "--confidence",
    default="medium",
    show_default=True,
    type=click.Choice(["high", "medium", "low"]),
)
@click.option("--artifact", "artifacts", multiple=True, help="An artifact path (repeatable).")
@click.option("--notes", help="Free-form notes.")
@click.option("--question", help="With --status blocked: what you need to know to go on.")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    help="Directory to write into (as given in the task message).",
)
@click.option("--sub", is_flag=True, help="Write under <handoffs_dir>/sub (sub-delegation).")
@click.option("--receiver", help="POST to this receiver URL instead of writing a file.")
@click.option("--token-env", help="With --receiver: env var holding the hooks token.")
@click.option(
    "--key",
    envvar="ORCH_HANDOFF_KEY",
    show_envvar=True,
    help="The `key:` line of the task message (proves the handoff is yours).",
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
    directory: str | None,
    sub: bool,
    receiver: str | None,
    token_env: str | None,
    key: str | None,
    config: str | None,
) -> int:
    """Write a valid handoff atomically where the engine waits for it."""
    from pathlib import Path

    from engine.errors import UsageError
    from engine.files import check_id
    from engine.handoff import handoff_path, make_handoff, write_handoff

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
        key=key or None,
    )
    if question:
        if status != "blocked":
            raise UsageError("`--question` goes with `--status blocked`.")
        data["question"] = question
    if receiver:
        return _post_handoff(receiver, token_env, run_id, agent, data)
    if directory:
        path = Path(directory) / f"{run_id}.json"
    else:
        cfg = _load(config)
        path = handoff_path(cfg.handoffs_dir, run_id, sub=sub)
    written = write_handoff(path, data, replace=False)
    click.echo(str(written))
    if written != path:
        click.echo(
            f"note: `{path}` already held a handoff; yours was kept beside it as "
            f"`{written.name}` (the engine records the first valid one and lists the other).",
            err=True,
        )
    return 0


@handoff_group.command("progress")
@click.option("--run-id", required=True, help="The run id from the task message.")
@click.argument("text")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    help="The directory of handoff_path (as given in the task message).",
)
@click.option("--sub", is_flag=True, help="A sub-delegation (under <handoffs_dir>/sub).")
@click.option("--receiver", help="POST to this receiver URL instead (another host).")
@click.option("--token-env", help="With --receiver: env var holding the hooks token.")
@config_option
def handoff_progress_cmd(
    run_id: str,
    text: str,
    directory: str | None,
    sub: bool,
    receiver: str | None,
    token_env: str | None,
    config: str | None,
) -> int:
    """Report what you are doing while you work (the caller sees the latest line)."""
    from pathlib import Path

    from engine.files import check_id
    from engine.handoff import records_dir
    from engine.liveness import report_progress
    from engine.record import INBOX_DIR

    check_id(run_id, "run id")
    if receiver:
        return _post_progress(receiver, token_env, run_id, text)
    if directory:
        where = Path(directory)
        records = where.parent if where.name == INBOX_DIR else where
    else:
        records = records_dir(_load(config).handoffs_dir, sub=sub)
    report_progress(records, run_id, text)
    return 0


def _post_progress(receiver: str, token_env: str | None, run_id: str, text: str) -> int:
    import time

    from engine.errors import UsageError
    from engine.hooks import HooksClient, Target
    from engine.registry import read_secret

    if not token_env:
        raise UsageError("`--receiver` needs `--token-env VAR` (the env var with the token).")
    token = read_secret(env=token_env, file=None, what="--receiver")
    base = receiver.rstrip("/")
    for tail in (f"/handoffs/{run_id}/progress", f"/handoffs/{run_id}"):
        if base.endswith(tail):
            base = base[: -len(tail)]
            break
    target = Target(
        agent=run_id, url=base, token=token, token_source=f"environment variable `{token_env}`"
    )
    with HooksClient() as client:
        client.post_progress(target, run_id, text, deadline=time.monotonic() + 30)
    return 0


def _post_handoff(
    receiver: str, token_env: str | None, run_id: str, agent: str, data: dict[str, Any]
) -> int:
    import time

    from engine.config import url_problem
    from engine.errors import UsageError
    from engine.hooks import HooksClient, Target
    from engine.registry import read_secret

    bad_url = url_problem(receiver, "--receiver")
    if bad_url:
        raise UsageError(bad_url)
    if not token_env:
        raise UsageError("`--receiver` needs `--token-env VAR` (the env var with the token).")
    token = read_secret(env=token_env, file=None, what="--receiver")
    base, _, tail = receiver.rstrip("/").rpartition("/handoffs/")
    if not base or tail != run_id:
        base = receiver.rstrip("/")
    target = Target(
        agent=agent, url=base, token=token, token_source=f"environment variable `{token_env}`"
    )
    with HooksClient() as client:
        client.post_handoff(
            target,
            run_id,
            data,
            deadline=time.monotonic() + 60,
            hint=f"Check `--receiver {receiver}`, then run the same command again "
            "(each run tries for 60 s).",
        )
    _say(f"posted to {base}/handoffs/{run_id}")
    return 0


@orchestrate.command("answer")
@click.argument("run_id")
@click.argument("text")
@click.option("--by", default="cli", show_default=True, help="Who answers (recorded).")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds to wait (default: the asking run's).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@config_option
def answer_cmd(
    run_id: str,
    text: str,
    by: str,
    timeout: float | None,
    as_json: bool,
    quiet: bool,
    config: str | None,
) -> int:
    """Answer the question a delegation asked, send it back to the agent, and wait."""
    from engine.ask import answer_delegation
    from engine.delegate import open_delegator
    from engine.reporter import ConsoleReporter, Reporter

    reporter = Reporter() if (quiet or as_json) else ConsoleReporter()
    with open_delegator(_load(config), reporter=reporter) as delegator:
        result = answer_delegation(delegator, run_id, text, by=by, timeout=timeout)
    if as_json:
        _dump(result.record)
    else:
        _print_result(result)
        if result.error is not None:
            click.echo(f"error: {result.error}", err=True)
    return result.exit_code


@orchestrate.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@config_option
def show_cmd(run_id: str, as_json: bool, config: str | None) -> int:
    """Show the record of a delegation (merging a late handoff first)."""
    from engine.delegate import DelegationResult, Outcome
    from engine.store import open_store

    path, rec = open_store(_load(config)).find(run_id)
    if as_json:
        _dump(rec)
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
    outcome = env.get("outcome") or rec.get("status") or "unknown"
    if "status" not in rec and outcome in ("dispatched", "unknown"):
        click.echo(
            f"in flight: {env.get('target')} for {env.get('caller')}, {run_id} "
            f"(dispatched {env.get('dispatched_at') or env.get('created_at')}, deadline "
            f"{env.get('deadline_at')}); no handoff yet"
        )
        click.echo(f"pending: {path}")
        return 0
    try:
        oc = Outcome(outcome)
    except ValueError:
        oc = Outcome.ERRORED
    _print_result(DelegationResult(run_id, oc, path, rec))
    if env.get("late"):
        click.echo("note: this handoff arrived after the delegation had given up (late).")
    if env.get("supersedes"):
        click.echo(f"note: this handoff replaced an earlier `{env['supersedes']}` record.")
    if env.get("unverified"):
        click.echo("note: unverified: the handoff had no key (`handoff_key: optional`).")
    from engine.liveness import progress_note

    note = progress_note(path.parent.parent if path.parent.name == "inbox" else path.parent, run_id)
    if note:
        _say(f"progress: {note}")
    failed = ("timeout", "invalid", "errored", "cancelled", "unusable", "lost")
    if env.get("error") and outcome in failed:
        click.echo(f"error: {env['error']}")
    for item in env.get("also_received") or []:
        click.echo(f"also received: {item.get('file')}: {item.get('reason')}")
    for item in env.get("rejected") or []:
        click.echo(f"refused: {item.get('file')}: {item.get('reason')}")
    return 0


@orchestrate.command("tree")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the tree as JSON.")
@config_option
def tree_cmd(run_id: str, as_json: bool, config: str | None) -> int:
    """Print the delegation tree of RUN_ID: its sub-delegations, with statuses."""
    from engine.errors import RunStateError
    from engine.files import check_id
    from engine.store import open_store

    cfg = _load(config)
    check_id(run_id, "run id")
    root = open_store(cfg).tree(run_id)
    if root is None:
        raise RunStateError(f"no delegation `{run_id}` in `{cfg.handoffs_dir}`.")
    if as_json:
        _dump(root)
        return 0

    def line(n: dict[str, Any]) -> str:
        dur = n.get("duration_ms")
        took = f" {dur / 1000:.2f} s" if isinstance(dur, int | float) else ""
        conf = f" ({n['confidence']})" if n.get("confidence") else ""
        late = " late" if n.get("late") else ""
        return f"{n['run_id']}  {n['caller']} -> {n['target']}  {n['outcome']}{conf}{took}{late}"

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
@config_option
def pool_status_cmd(as_json: bool, config: str | None) -> int:
    """Size, mode, tokens in use (run, agent, PID, age), queue and recent load samples."""
    from engine.pool import PoolSettings, TokenPool, format_status

    cfg = _load(config)
    with TokenPool(PoolSettings.from_config(cfg)) as pool:
        status = pool.status()
    if as_json:
        _dump(status)
    else:
        click.echo(format_status(status))
    return 0


@pool_group.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=18950, show_default=True)
@click.option(
    "--token-env",
    default="ORCH_POOL_TOKEN",
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

    cfg = _load(config)
    token = os.environ.get(token_env, "").strip()
    if not token:
        raise ConfigError(
            f"environment variable `{token_env}` is not set: export the bearer token the "
            f"OpenClaw plugin sends (its `tokenFile` or `tokenEnv`), e.g. `export {token_env}=...`."
        )
    register(token)
    with TokenPool(PoolSettings.from_config(cfg)) as pool:
        server = PoolServer(pool, token=token, host=host, port=port)
        click.echo(f"pool endpoint on {server.url} (Ctrl-C to stop)", err=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
    return 0


@orchestrate.group("agent-skill")
def agent_skill_group() -> None:
    """Standing instructions for hook tasks, in an OpenClaw agent's workspace."""


@agent_skill_group.command("install")
@click.option(
    "--workspace",
    required=True,
    type=click.Path(file_okay=False),
    help="The OpenClaw agent workspace (the folder with its AGENTS.md).",
)
@click.option("--agent", help="The agent's registry name (checked against the config).")
@config_option
def agent_skill_install_cmd(workspace: str, agent: str | None, config: str | None) -> int:
    """Install the handoff skill and an AGENTS.md section (idempotent)."""
    from pathlib import Path

    from engine.agentskill import install
    from engine.registry import Registry

    cfg = _load_optional(config)
    if agent and cfg is not None:
        Registry.from_config(cfg).get(agent)
    changed = install(
        Path(workspace), agent=agent, handoffs_dir=cfg.handoffs_dir if cfg is not None else None
    )
    if not changed:
        click.echo(f"already installed in {workspace}")
        return 0
    for path in changed:
        click.echo(f"wrote {path}")
    if any(Path(p).name == "SKILL.md" for p in changed):
        click.echo("restart the agent's gateway so that hook runs pick up the new skill.", err=True)
    return 0


@agent_skill_group.command("uninstall")
@click.option(
    "--workspace",
    required=True,
    type=click.Path(file_okay=False),
    help="The OpenClaw agent workspace.",
)
def agent_skill_uninstall_cmd(workspace: str) -> int:
    """Remove the skill folder and the AGENTS.md section."""
    from pathlib import Path

    from engine.agentskill import uninstall

    changed = uninstall(Path(workspace))
    for path in changed:
        click.echo(f"removed {path}")
    if not changed:
        click.echo("nothing to remove")
    return 0


@orchestrate.command("gateway")
@click.option("--host", help="Address to bind (default: gateway.host, else 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default: gateway.port).")
@config_option
def gateway_cmd(host: str | None, port: int | None, config: str | None) -> int:
    """Serve the local gateway (OpenClaw hooks API + handoff receiver) until Ctrl-C."""
    from engine.errors import ConfigError
    from engine.gateway.server import LocalGateway
    from engine.registry import read_secret

    cfg = _load(config)
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
    click.echo(
        f"local gateway on {server.url} serving: {', '.join(gw.agents)} (Ctrl-C to stop)", err=True
    )
    try:
        server.serve_forever()
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
    default=5.0,
    show_default=True,
    help="Longest probe of one agent, in seconds.",
)
@config_option
def agents_status_cmd(
    names: tuple[str, ...], as_json: bool, timeout: float, config: str | None
) -> int:
    """Probe every agent's gateway: reachable, /health, hooks token, latency, in-flight.

    Exits 1 when any agent is not up.
    """
    from engine.health import check_agents, format_table

    report = check_agents(_load(config), names=list(names) or None, timeout=timeout)
    if as_json:
        _dump(report.as_dict())
    else:
        _say(format_table(report))
    return 0 if report.ok else 1


@agents_group.command("systemd")
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Directory to write into."
)
@config_option
def agents_systemd_cmd(out: str, config: str | None) -> int:
    """Write one systemd user unit per gateway (tokens from an EnvironmentFile)."""
    from pathlib import Path

    from engine.systemd import gateway_units, write_units

    units = gateway_units(_load(config))
    if not units:
        click.echo("no gateway on this host in the registry: nothing to write", err=True)
        return 0
    for path in write_units(units, Path(out)):
        click.echo(f"wrote {path}")
    return 0


@agents_group.command("logs")
@click.argument("agent")
@click.option("-f", "--follow", is_flag=True, help="Keep printing what is appended (Ctrl-C).")
@click.option("-n", "--lines", type=click.IntRange(0, 100000), default=50, show_default=True)
@config_option
def agents_logs_cmd(agent: str, follow: bool, lines: int, config: str | None) -> int:
    """Print the end of AGENT's gateway log (`operations.logs`); -f follows it."""
    from engine import opslog

    path = opslog.log_path(_load(config), agent)
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

    cfg = _load(config)
    client = DiscordClient.from_config(cfg)
    stop = threading.Event()
    try:
        with DiscordInbox(cfg, client, log=lambda line: _say(line, err=True)) as inbox:
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
    "--agent", help="Delegate to this agent (else TASK is `AGENT: ...` or `workflow ...`)."
)
@click.option("--model", help="Model or alias for the agent (e.g. cheap).")
@click.option("--thinking", type=click.Choice(["low", "medium", "high"]), help="Thinking level.")
@config_option
def inbox_submit_cmd(
    task: str, agent: str | None, model: str | None, thinking: str | None, config: str | None
) -> int:
    """Post TASK to the queue channel, as seed 002's submit-to-queue.sh does."""
    from engine.discord import DiscordClient
    from engine.inbox import InboxSettings, submission_text

    cfg = _load(config)
    text = submission_text(task, agent=agent, model=model, thinking=thinking)
    settings = InboxSettings.from_config(cfg)
    client = DiscordClient.from_config(cfg)
    try:
        posted = client.post(settings.queue, text)
    finally:
        client.close()
    click.echo(f"queued as message {posted.get('id')}: {text}")
    return 0


def orchestrate_main() -> None:
    """Entry point of the `orchestrate` console script."""
    orchestrate.main(prog_name="orchestrate")


# --------------------------------------------------------------------------- workflow


@click.group(
    cls=EngineGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="""\b
Examples:
  workflow list
  workflow run quick-research --input query="CTE of ULE" --dry-run
  workflow run material-trade-study --input materials="Zerodur, ULE" \\
      --input requirements="CTE < 0.01 ppm/K" --non-interactive
  workflow approve RUN review && workflow resume RUN
Exit codes: 0 complete · 1 a step failed · 2 bad input · 3 waiting for approval
            4 timed out · 5 refused by the ACL or the pool""",
)
@click.version_option(package_name="agent-orchestrator", prog_name="workflow")
def workflow() -> None:
    """Run YAML workflows: steps delegated to agents, in parallel where they can be."""


input_option = click.option(
    "--input",
    "-i",
    "inputs",
    multiple=True,
    metavar="KEY=VALUE",
    help="A workflow input (repeatable). Values are data, never template code.",
)
caller_option = click.option("--caller", help="Caller for the ACL (default: the template's).")
interactive_option = click.option(
    "--interactive/--non-interactive",
    default=None,
    help="Ask at approval gates on the terminal (default: when stdin is a terminal). "
    "Non-interactive runs park at a gate (exit 3).",
)
approve_option = click.option(
    "--approve",
    "approve",
    multiple=True,
    metavar="STEP",
    help="Approve this step's gate up front (repeatable).",
)
approve_all_option = click.option(
    "--approve-all", is_flag=True, help="Approve every gate up front."
)
parallel_option = click.option(
    "--max-parallel",
    type=click.IntRange(1, 256),
    default=4,
    show_default=True,
    help="Steps in flight at once (the token pool may allow fewer).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _reporter_for(as_json: bool, quiet: bool = False) -> Any:
    from engine.reporter import Reporter

    if as_json or quiet:
        return Reporter()
    from engine.progress import progress_reporter

    return progress_reporter()


def _approver(interactive: bool | None) -> Any:
    if interactive is None:
        interactive = sys.stdin.isatty()
    if not interactive:
        return None

    def ask(req: Any) -> Any:
        click.echo(f"\n=== approval gate: step `{req.step}` (agent {req.agent}) ===", err=True)
        click.echo(req.prompt, err=True)
        for up, ctx in req.upstream.items():
            text = str(ctx.get("result", ""))
            if len(text) > 1500:
                text = text[:1500] + " …"
            click.echo(
                f"--- {up}: {ctx.get('status')} (confidence "
                f"{ctx.get('confidence') or '-'})\n{text}",
                err=True,
            )
        answer = click.prompt(
            "Approve? [y/n]", type=click.Choice(["y", "n"]), err=True, show_choices=False
        )
        if answer == "y":
            return "approved"
        reason = click.prompt("Reason", default="rejected at the terminal", err=True)
        return ("rejected", reason)

    return ask


def _render_run(result: Any, as_json: bool) -> int:
    summary = result.summary
    if as_json:
        _dump({**summary, "run_dir": str(result.run_dir)})
        return int(result.exit_code)
    from engine.progress import summary_table

    click.echo(summary_table(summary))
    for name, value in (summary.get("outputs") or {}).items():
        click.echo(f"\n## {name}\n{value}")
    click.echo(f"\nrun: {result.run_dir}")
    rid = summary["runId"]
    if summary["status"] == "waiting_approval":
        for sid, st in summary["steps"].items():
            if st["status"] == "waiting_approval":
                click.echo(
                    f"waiting for approval at `{sid}`: workflow approve {rid} {sid} && "
                    f"workflow resume {rid}   (or: workflow reject {rid} {sid} "
                    "--reason ...)",
                    err=True,
                )
    elif summary["status"] == "waiting_input":
        for sid, st in summary["steps"].items():
            if st["status"] == "waiting_input":
                q = (st.get("question") or {}).get("text", "")
                _say(
                    f'`{sid}` asks: {q}\nanswer with: workflow answer {rid} {sid} "..." && '
                    f"workflow resume {rid}",
                    err=True,
                )
    elif summary["status"] == "failed":
        click.echo(
            f"the run failed; after fixing the cause: workflow resume {rid} --retry-failed",
            err=True,
        )
    return int(result.exit_code)


@workflow.command("run")
@click.argument("name")
@input_option
@caller_option
@click.option(
    "--dry-run", is_flag=True, help="Check everything and print the plan; dispatch nothing."
)
@interactive_option
@approve_option
@approve_all_option
@parallel_option
@json_option
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@config_option
def workflow_run_cmd(
    name: str,
    inputs: tuple[str, ...],
    caller: str | None,
    dry_run: bool,
    interactive: bool | None,
    approve: tuple[str, ...],
    approve_all: bool,
    max_parallel: int,
    as_json: bool,
    quiet: bool,
    config: str | None,
) -> int:
    """Run workflow NAME (a name in ./workflows, the config's dirs, the shipped set, or a path)."""
    from engine.registry import check_secrets
    from engine.runner import RunOptions, prepare
    from engine.workflow import parse_inputs

    cfg = _load(config)
    prepared = prepare(cfg, name, parse_inputs(list(inputs)), caller=caller)
    check_secrets(
        cfg,
        [a for ps in prepared.plan.steps.values() for a in (*ps.candidates, ps.validator) if a],
    )
    if dry_run:
        from engine.dag import dry_run_dict, dry_run_text

        if as_json:
            _dump(dry_run_dict(prepared.plan, prepared.renderer))
        else:
            click.echo(dry_run_text(prepared.plan, prepared.renderer))
        return 0
    options = RunOptions(
        caller=caller,
        max_parallel=max_parallel,
        approve=frozenset(approve),
        approve_all=approve_all,
    )
    return _drive(cfg, interactive, as_json, quiet, lambda r: r.start(prepared, options))


def _drive(cfg: Any, interactive: bool | None, as_json: bool, quiet: bool, act: Any) -> int:
    """Run ``act(runner)`` with the delegator, reporter and approver a run needs; render it."""
    from engine.delegate import open_delegator
    from engine.runner import WorkflowRunner

    reporter = _reporter_for(as_json, quiet)
    with open_delegator(cfg, reporter=reporter) as delegator:
        runner = WorkflowRunner(cfg, delegator, reporter=reporter, approver=_approver(interactive))
        try:
            result = act(runner)
        finally:
            getattr(reporter, "close", lambda: None)()
    return _render_run(result, as_json)


@workflow.command("resume")
@click.argument("run_id")
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Run failed, timed-out and errored steps again (and what they skipped).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Resume even if the template, inputs or agents changed since the run started.",
)
@interactive_option
@approve_option
@approve_all_option
@parallel_option
@json_option
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@config_option
def workflow_resume_cmd(
    run_id: str,
    retry_failed: bool,
    force: bool,
    interactive: bool | None,
    approve: tuple[str, ...],
    approve_all: bool,
    max_parallel: int,
    as_json: bool,
    quiet: bool,
    config: str | None,
) -> int:
    """Continue run RUN_ID: finished steps are never sent again."""
    from engine.runner import RunOptions

    options = RunOptions(
        max_parallel=max_parallel,
        approve=frozenset(approve),
        approve_all=approve_all,
        retry_failed=retry_failed,
        force=force,
    )
    return _drive(_load(config), interactive, as_json, quiet, lambda r: r.resume(run_id, options))


@workflow.command("approve")
@click.argument("run_id")
@click.argument("step")
@click.option("--reason", help="Why (recorded).")
@config_option
def workflow_approve_cmd(run_id: str, step: str, reason: str | None, config: str | None) -> int:
    """Approve the gate of STEP in a parked run (then `workflow resume`)."""
    from engine.runner import decide_gate

    decide_gate(_load(config), run_id, step, approved=True, reason=reason)
    click.echo(f"approved `{step}`; continue with: workflow resume {run_id}")
    return 0


@workflow.command("answer")
@click.argument("run_id")
@click.argument("step")
@click.argument("text")
@click.option("--by", default="cli", show_default=True, help="Who answers (recorded).")
@config_option
def workflow_answer_cmd(run_id: str, step: str, text: str, by: str, config: str | None) -> int:
    """Answer the question STEP's agent asked (then `workflow resume`)."""
    from engine.ask import answer_step

    answer_step(_load(config), run_id, step, text, by=by)
    click.echo(f"answered `{step}`; continue with: workflow resume {run_id}")
    return 0


@workflow.command("reject")
@click.argument("run_id")
@click.argument("step")
@click.option("--reason", required=True, help="Why (recorded; dependents are skipped).")
@config_option
def workflow_reject_cmd(run_id: str, step: str, reason: str, config: str | None) -> int:
    """Reject the gate of STEP in a parked run (then `workflow resume` to close it)."""
    from engine.runner import decide_gate

    decide_gate(_load(config), run_id, step, approved=False, reason=reason)
    click.echo(f"rejected `{step}`; finish the run with: workflow resume {run_id}")
    return 0


@workflow.command("cancel")
@click.argument("run_id")
@config_option
def workflow_cancel_cmd(run_id: str, config: str | None) -> int:
    """Cancel a run: stop dispatching, release what it holds, record `cancelled`."""
    from engine.runner import RunState, cancel_run

    state = cancel_run(_load(config), run_id)
    if state is RunState.RUNNING:
        click.echo(f"cancel requested; the process running {run_id} stops within a second.")
    else:
        click.echo(f"cancelled {run_id}.")
    return 0


@workflow.command("status")
@click.argument("run_id")
@json_option
@config_option
def workflow_status_cmd(run_id: str, as_json: bool, config: str | None) -> int:
    """Show the steps of a run, and why a waiting step waits."""
    from engine.progress import summary_table
    from engine.runner import run_status

    status = run_status(_load(config), run_id)
    if as_json:
        _dump(status)
        return 0
    live = "running now" if status["live"] else "no process running it"
    click.echo(f"{run_id}: {status['workflow']} — {status['status']} ({live})")
    click.echo(summary_table(status, waiting=True))
    return 0


@workflow.command("runs")
@click.option("--limit", type=click.IntRange(1, 10000), default=20, show_default=True)
@json_option
@config_option
def workflow_runs_cmd(limit: int, as_json: bool, config: str | None) -> int:
    """List recent runs, newest first."""
    from engine.runner import list_runs

    problems: list[str] = []
    rows = list_runs(_load(config), limit=limit, problems=problems)
    for problem in problems:  # a damaged run: its paragraph, the others still listed
        click.echo(f"error: {problem}", err=True)
    if as_json:
        _dump(rows)
        return 0
    if not rows:
        click.echo("no workflow runs yet.")
        return 0
    from engine.progress import runs_table

    click.echo(runs_table(rows))
    return 0


@workflow.command("list")
@json_option
@config_option
def workflow_list_cmd(as_json: bool, config: str | None) -> int:
    """List the workflow templates that can be run by name."""
    from engine.workflow import list_workflows

    rows = list_workflows(_load_optional(config))
    if as_json:
        _dump([{"name": n, "path": str(p), "description": d} for n, p, d in rows])
        return 0
    width = max((len(n) for n, _, _ in rows), default=4)
    for name, path, desc in rows:
        click.echo(f"{name:<{width}}  {desc}  ({path})")
    return 0


@workflow.command("validate")
@click.argument("name")
@input_option
@caller_option
@config_option
def workflow_validate_cmd(
    name: str, inputs: tuple[str, ...], caller: str | None, config: str | None
) -> int:
    """Check a template against the config (agents, ACL, graph, templates) without running."""
    from engine.runner import prepare
    from engine.workflow import find_workflow, load_workflow, parse_inputs

    cfg = _load(config)
    given = parse_inputs(list(inputs))
    spec = load_workflow(find_workflow(name, cfg))
    for key, inp in spec.inputs.items():  # placeholders for required inputs not given
        if inp.required and key not in given:
            given[key] = f"<{key}>"
    prepared = prepare(cfg, str(spec.path), given, caller=caller)
    plan = prepared.plan
    click.echo(
        f"`{spec.path}` is valid: {len(plan.steps)} steps in {len(plan.groups)} "
        f"group(s), caller `{plan.caller}`."
    )
    return 0


@workflow.command("graph")
@click.argument("name")
@click.option(
    "--format", "fmt", type=click.Choice(["mermaid", "dot"]), default="mermaid", show_default=True
)
@config_option
def workflow_graph_cmd(name: str, fmt: str, config: str | None) -> int:
    """Print the step graph as Mermaid or Graphviz dot (gates drawn distinctly)."""
    from engine.dag import graph_text
    from engine.workflow import find_workflow, load_workflow

    spec = load_workflow(find_workflow(name, _load_optional(config)))
    click.echo(graph_text(spec, fmt))
    return 0


def workflow_main() -> None:
    """Entry point of the `workflow` console script."""
    workflow.main(prog_name="workflow")


# --------------------------------------------------------------------------- metrics


def _metrics_options(fn: Any) -> Any:
    for opt in reversed(
        [
            click.option("--since", help="Only records since: 24h, 7d, 30m or an ISO date."),
            click.option(
                "--agent", help="Only this agent's delegations (and runs it took part in)."
            ),
            click.option(
                "--workflow", "workflow_name", help="Only this workflow's runs and steps."
            ),
            click.option("--caller", help="Only delegations made by this caller."),
            click.option(
                "--handoffs-dir",
                type=click.Path(file_okay=False),
                help="Read this directory instead of the config's `handoffs_dir`.",
            ),
            config_option,
        ]
    ):
        fn = opt(fn)
    return fn


def _metrics(
    since: str | None,
    agent: str | None,
    workflow_name: str | None,
    caller: str | None,
    handoffs_dir: str | None,
    config: str | None,
) -> Any:
    from pathlib import Path

    from engine.metrics import compute_metrics, parse_since

    when = parse_since(since) if since else None
    directory = Path(handoffs_dir) if handoffs_dir else _load(config).handoffs_dir
    return compute_metrics(
        directory, since=when, agent=agent, workflow=workflow_name, caller=caller
    )


@click.group(
    cls=EngineGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="""\b
Examples:
  metrics text
  metrics json --since 24h --agent webster
  metrics text --workflow material-trade-study --since 2026-11-01""",
)
@click.version_option(package_name="agent-orchestrator", prog_name="metrics")
def metrics() -> None:
    """What the delegations and workflows did: per agent, per edge, per workflow."""


@metrics.command("text")
@_metrics_options
def metrics_text_cmd(
    since: str | None,
    agent: str | None,
    workflow_name: str | None,
    caller: str | None,
    handoffs_dir: str | None,
    config: str | None,
) -> int:
    """Aligned tables for people."""
    import shutil

    from engine.metrics import render_text

    doc = _metrics(since, agent, workflow_name, caller, handoffs_dir, config)
    click.echo(render_text(doc, width=max(100, shutil.get_terminal_size((140, 40)).columns)))
    return 0


@metrics.command("json")
@_metrics_options
def metrics_json_cmd(
    since: str | None,
    agent: str | None,
    workflow_name: str | None,
    caller: str | None,
    handoffs_dir: str | None,
    config: str | None,
) -> int:
    """One JSON document (schema: schemas/metrics.schema.json) for scripts."""
    _dump(_metrics(since, agent, workflow_name, caller, handoffs_dir, config))
    return 0


def metrics_main() -> None:
    """Entry point of the `metrics` console script."""
    metrics.main(prog_name="metrics")
