"""What the three programs share: loading the config, printing, mapping errors to exit codes.

``EngineGroup`` is the click group every program uses: an ``OrchestratorError`` (or an
``OSError`` from a directory the engine writes to) becomes one message and the exit code
from DESIGN.md, never a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any, NoReturn, TypeVar

import click

from engine.errors import EXIT_USAGE, OrchestratorError

CONFIG_HELP = "Config file (default: $ORCHESTRATOR_CONFIG, else ./orchestrator.yaml)."


def discard_stdout() -> None:
    """The reader of stdout went away (``| head -1``): what is left to print goes to
    /dev/null, so the command still ends with its own exit code (Python's docs, "Note on
    SIGPIPE", in the signal module's)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file behind stdout: nothing to redirect
        pass


def echo(text: str, *, err: bool = False) -> None:
    """``click.echo``, except that a closed stdout discards the output quietly."""
    try:
        click.echo(text, err=err)
    except BrokenPipeError:
        if err:
            raise
        discard_stdout()


def fail(
    exc: OrchestratorError, *, as_json: bool = False, more: dict[str, Any] | None = None
) -> NoReturn:
    """End the command with ``exc``: its paragraph on stderr as ``error: …``, secrets
    masked, and its ``exit_code``. With ``as_json`` (``--json`` was given) stdout also
    gets one JSON object, ``{"error": "<the paragraph>", "exit_code": N}``, so a script
    reading stdout always gets JSON (README, "Exit codes"); an error that lists problems
    (a template's: ``WorkflowError.problems``) adds them as ``problems``, and ``more``
    adds a command's own keys (`workflow validate`'s ``ok``)."""
    from engine.errors import clip_quoted
    from engine.redact import redact

    text = clip_quoted(redact(str(exc)))  # a long value given is shown cut
    click.echo(f"error: {text}", err=True)
    if as_json:
        problems = [clip_quoted(redact(str(p))) for p in getattr(exc, "problems", None) or ()]
        dump(
            {
                **(more or {}),
                "error": text,
                "exit_code": exc.exit_code,
                **({"problems": problems} if problems else {}),
            }
        )
    sys.exit(exc.exit_code)


def wants_json(args: list[str]) -> bool:
    """Whether ``--json`` is among the command-line words (before a ``--``): decided on the
    words, so that a usage error that stops parsing still answers in JSON."""
    words = args[: args.index("--")] if "--" in args else args
    return "--json" in words


def _quoted(text: str) -> str:
    """Click's quoting, 'x', as the project's backticks."""
    import re

    return re.sub(r"'([^'\n]*)'", r"`\1`", text)


def _option_name(param: click.Parameter) -> str:
    """How a message names an option (its long name) or an argument (its metavar)."""
    if isinstance(param, click.Option):
        longs = [o for o in param.opts if o.startswith("--")]
        return (longs or param.opts)[0]
    return param.metavar or (param.name or "ARG").upper()


def _value_of(message: str) -> str:
    """The refused value at the start of a click message (``'done' is not one of …``)."""
    import re

    found = re.match(r"^'?(.*?)'? is not ", message)
    return found.group(1) if found else ""


def _bad_value(param: click.Parameter, message: str) -> str:
    """What is wrong with the value of ``param``, in the project's words."""
    from engine.errors import did_you_mean

    name, value = _option_name(param), _value_of(message)
    kind = param.type
    if isinstance(kind, click.Choice) and value:
        choices = [str(c) for c in kind.choices]
        listed = ", ".join(f"`{c}`" for c in choices)
        return (
            f"`{name}` must be one of {listed}, not `{value}`"
            f"{did_you_mean(value, choices) or '.'}"
        )
    if isinstance(kind, (click.IntRange, click.FloatRange)) and value:
        what = "a whole number" if isinstance(kind, click.IntRange) else "a number"
        if kind.min is not None and kind.max is not None:
            bounds = f"from {kind.min} to {kind.max}"
        elif kind.min is not None:
            bounds = f"of at least {kind.min}"
        else:
            bounds = f"of at most {kind.max}"
        return f"`{name}` must be {what} {bounds}, not `{value}`."
    return f"invalid value for `{name}`: {_sentence(_quoted(message))}"


def usage_error(exc: click.ClickException, where: str = "") -> OrchestratorError:
    """A click usage error (a missing or unknown option, a bad value or choice, an unknown
    command, a missing argument) as the project's one paragraph (exit 2): what is wrong,
    named in backticks, the near miss, and the command's ``--help`` to read. ``where``
    names the command when click's error does not carry its context (``--caller`` given
    no value)."""
    from engine.errors import UsageError

    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else where
    see = f" See `{path} --help`." if path else ""
    param = getattr(exc, "param", None)
    if isinstance(exc, click.MissingParameter) and param is not None:
        return UsageError(f"{_missing(param, path)} Add it, or see `{path} --help`.")
    if isinstance(exc, click.BadParameter) and param is not None:
        return UsageError(f"{_bad_value(param, exc.message)}{see}")
    if isinstance(exc, click.NoSuchOption):
        near = sorted(exc.possibilities or [])
        hint = f"; did you mean `{near[0]}`?" if near else "."
        return UsageError(f"`{path}` has no option `{exc.option_name}`{hint}{see}")
    return UsageError(f"{_by_message(exc, ctx, path)}{see}")


def _missing(param: click.Parameter, path: str) -> str:
    """What a command misses: an option (with its value's name and help) or an argument."""
    name = _option_name(param)
    if not isinstance(param, click.Option):
        return f"`{path}` needs the argument `{name}`."
    meta = param.metavar or (param.name or "value").upper()
    needs = name if param.is_flag else f"{name} {meta}"
    why = _sentence(param.help or "")
    return f"`{path}` needs `{needs}`{f': {why}' if why else '.'}"


def _by_message(exc: click.ClickException, ctx: click.Context | None, path: str) -> str:
    """The usage errors click tells apart by their text only: an unknown command (with
    the near miss and the group's commands), extra arguments, an option without its
    value; anything else as click words it."""
    import re

    from engine.errors import did_you_mean

    unknown = re.match(r"^No such command '(.*)'\.$", exc.message)
    if unknown and ctx is not None and isinstance(ctx.command, click.Group):
        commands = ctx.command.list_commands(ctx)
        word = unknown.group(1)
        near = did_you_mean(word, commands)
        if not near and "run" in commands and path.split()[-1:] == ["workflow"]:
            # the seeds' `workflow.py NAME` form: a workflow's name where a command goes
            near = f"; to run the workflow `{word}`, write `{path} run {word}` (then its options)."
        return (
            f"`{path}` has no command `{word}`{near or '.'} "
            f"Its commands: {', '.join(f'`{c}`' for c in commands)}."
        )
    extra = re.match(r"^Got unexpected extra arguments? \((.*)\)$", exc.message)
    if extra and path.endswith("inbox submit"):
        hint = _submit_options(extra.group(1))
        if hint:
            return (
                f"`{path}` does not take `{extra.group(1)}`: the model and thinking level are "
                f"options (seed 002's positional form), e.g. `{path} \"TASK\" {hint}`."
            )
    if extra:
        return (
            f"`{path}` does not take `{extra.group(1)}`: too many arguments (a text with "
            f'spaces goes in quotes, "like this").'
        )
    message = exc.format_message()
    if isinstance(exc, click.BadOptionUsage) and "requires an argument" in message:
        return f"`{exc.option_name}` needs a value."
    return _sentence(_quoted(message))


def _submit_options(words: str) -> str:
    """``--model M --thinking T`` for seed 002's ``submit TASK MODEL THINKING`` words (as
    click quotes them), or "" when they are not one model and/or one thinking level."""
    parts = [w.strip("'\"") for w in words.split()]
    levels = ("low", "medium", "high")
    models = [w for w in parts if w not in levels]
    thinking = [w for w in parts if w in levels]
    if len(models) > 1 or len(thinking) > 1 or not parts:
        return ""
    return " ".join(
        [*(f"--model {m}" for m in models), *(f"--thinking {t}" for t in thinking)]
    )


def _sentence(text: str) -> str:
    """``text`` as a clause inside a paragraph: a lower-case start (unless a name or an
    acronym starts it) and one full stop."""
    text = text.strip()
    if not text:
        return ""
    if text[1:2].islower():
        text = text[:1].lower() + text[1:]
    return text if text.endswith((".", "?", "!")) else f"{text}."


def os_error(exc: OSError, *, fix: str = "`handoffs_dir` in the config") -> OrchestratorError:
    """An OSError that reached the CLI (a directory the engine writes to, a full disk);
    ``fix`` names what the user changes to pick another place (a command writing where an
    option says, such as `agent-skill install --workspace`, passes that option)."""
    from engine.textio import describe_oserror

    where = f" `{exc.filename}`" if exc.filename else ""
    if not where and LOADED:  # a write into an open file: the handoffs directory is the place
        where = f" the handoffs directory `{LOADED[-1]}`"
    return OrchestratorError(
        f"cannot use{where}: {describe_oserror(exc)}. Nothing was lost; fix the path or its "
        f"permissions (e.g. {fix}) and run again."
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
                f"`{text[:32]}` is not a number of seconds more than 0 and at most "
                f"{MAX_SECONDS} (e.g. `120`).",
                param,
                ctx,
            )
        return number


class NonEmpty(click.ParamType[Any]):
    """A value that may not be empty or blank, else ``inner``'s (default: any text).

    An option given ``""`` (``--config ""``, ``--host ""``, an unset variable in
    ``--caller "$WHO"``) is refused with ``UsageError`` (exit 2) naming the option and
    ``what`` to give, rather than read as "not given" or as a real value (an empty host
    binds every interface).
    """

    def __init__(self, what: str, inner: click.ParamType[Any] | None = None) -> None:
        self.what = what
        self.inner = inner if inner is not None else click.STRING
        self.name = self.inner.name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            from engine.errors import UsageError

            name = _option_name(param) if param is not None else "the value"
            optional = param is None or not param.required
            env = _from_environment(param, ctx)
            if env:  # the user set a variable, not the option: name what they set
                raise UsageError(
                    f"${env} is empty (it gives `{name}`): {self.what}, or unset ${env}."
                )
            raise UsageError(
                f"`{name}` is empty: {self.what}{', or leave the option out' if optional else ''}."
            )
        return self.inner.convert(value, param, ctx)

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[Any]:
        return self.inner.shell_complete(ctx, param, incomplete)


def _from_environment(param: click.Parameter | None, ctx: click.Context | None) -> str:
    """The environment variable that gave ``param`` its value (``$ORCH_SERVER`` for
    ``--server``), or "" when the command line (or a default) gave it; click records the
    source before it converts the value (``Context.get_parameter_source``)."""
    if param is None or ctx is None or not param.name:
        return ""
    if ctx.get_parameter_source(param.name) is not click.core.ParameterSource.ENVIRONMENT:
        return ""
    names = param.envvar if isinstance(param.envvar, (list, tuple)) else [param.envvar]
    return next((str(n) for n in names if n and os.environ.get(str(n)) is not None), "")


def non_empty_path(what: str, **path: Any) -> NonEmpty:
    """The type of a path option: ``click.Path(**path)`` that refuses ``""`` and blank
    (``NonEmpty``, exit 2, naming the option and ``what`` to give): an empty path would
    otherwise mean the current directory (`agent-skill install --workspace ""` writing
    into it)."""
    return NonEmpty(what, click.Path(**path))


def check_argv(args: list[str]) -> None:
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


def _stdout_stream(underlying: Any) -> Any:
    from engine.textio import TerminalStream

    class Stdout(TerminalStream):
        """stdout for the length of a command. When its reader goes away (``| head -1``)
        what is left to print is discarded (``discard_stdout``) and the command goes on to
        its own exit code: every command ends the same way, whether the reader left before
        its first write or its last (the one shared path; ``head``'s ``PIPESTATUS`` is the
        command's code, 0 for one that succeeded)."""

        def write(self, s: str) -> int:
            try:
                return super().write(s)
            except BrokenPipeError:
                discard_stdout()
                return len(s)

        def flush(self) -> None:
            try:
                super().flush()
            except BrokenPipeError:
                discard_stdout()

    return Stdout(underlying)


#: click's "no command given: show the group's help" (click 8.2 on), shown as click shows it.
_NoArgsIsHelp: tuple[type[click.ClickException], ...] = tuple(
    kind for kind in [getattr(click.exceptions, "NoArgsIsHelpError", None)] if kind is not None
)


#: The signals that stop a waiting command as Ctrl-C does (``stopping_signals``).
STOP_SIGNALS = ("SIGTERM", "SIGHUP")


@contextlib.contextmanager
def stopping_signals(defer: Callable[[], bool] | None = None) -> Iterator[list[int]]:
    """Within: SIGTERM and SIGHUP raise ``KeyboardInterrupt`` in the main thread, so that
    ``kill``, a closed terminal or a service manager stop a run the clean way Ctrl-C does
    (a resumable run, one paragraph). Yields a list that receives the signal's number;
    ``interrupt_exit`` turns it into the exit code (the first signal's). Outside the main
    thread (where no handler can be set), nothing changes. The handlers before are
    restored after.

    With ``defer``, SIGINT is handled too, and a signal for which ``defer()`` is True is
    only noted, not raised (``engine.runner.SafePoint``: the run is already stopping)."""
    import signal
    import threading

    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return

    def handler(signum: int, frame: Any) -> None:
        got.append(signum)
        if defer is not None and defer():
            return
        raise KeyboardInterrupt

    previous: dict[int, Any] = {}
    for name in (*STOP_SIGNALS, *(("SIGINT",) if defer is not None else ())):
        sig = getattr(signal, name, None)
        if sig is None:
            continue
        if name == "SIGINT" and signal.getsignal(sig) is signal.SIG_IGN:
            continue  # started in the background without job control: Ctrl-C is not ours
        try:
            previous[sig] = signal.signal(sig, handler)
        except (OSError, ValueError):
            continue
    try:
        yield got
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)


def interrupt_exit(got: list[int]) -> int:
    """The exit code after an interruption: 128 + the signal's number (the shell's
    convention: 143 for SIGTERM, 129 for SIGHUP), 130 for Ctrl-C (SIGINT)."""
    return 128 + got[0] if got else 130


def interrupted(text: str, *, as_json: bool, code: int = 130) -> int:
    """What a command that stopped waiting on Ctrl-C (or SIGTERM/SIGHUP) prints: ``text``
    on stderr (secrets masked) and, with ``--json``, the JSON object of ``fail`` on stdout
    (``{"error": text, "exit_code": code}``, README "Exit codes"); returns ``code``
    (``interrupt_exit``) for the command to exit with. Every interrupted path ends here."""
    say(text, err=True)
    if as_json:
        from engine.redact import redact

        dump({"error": redact(text), "exit_code": code})
    return code


def _interrupted(text: str, *, as_json: bool) -> NoReturn:
    """Ctrl-C (or an aborted prompt): ``interrupted``, then exit 130."""
    sys.exit(interrupted(text, as_json=as_json))


class EngineCommand(click.Command):
    """A click command that refuses an option taking one value given more than once
    (``--caller good --caller manager``: click keeps the last one silently, and the ACL
    would judge a caller the user may not have meant): ``UsageError``, exit 2."""

    def make_parser(self, ctx: click.Context) -> Any:
        parser = super().make_parser(ctx)
        parse = parser.parse_args

        def once(args: list[str]) -> Any:
            opts, rest, order = parse(args)
            helps = set(ctx.help_option_names)
            if not any(set(p.opts) & helps for p in order):  # `--help` wins: shown, not refused
                _refuse_repeated(order)
            return opts, rest, order

        parser.parse_args = once  # type: ignore[method-assign]
        return parser


def _refuse_repeated(order: list[click.Parameter]) -> None:
    """Raise ``UsageError`` for the first option of ``order`` (the parameters in the order
    the command line gave them, one entry per occurrence) that takes one value (no
    ``multiple``, no flag or count) and occurs more than once."""
    from collections import Counter

    from engine.errors import UsageError

    seen = Counter(id(p) for p in order)
    for p in order:
        single = isinstance(p, click.Option) and not (p.multiple or p.count or p.is_flag)
        if single and seen[id(p)] > 1:
            name = _option_name(p)
            raise UsageError(
                f"`{name}` is given {seen[id(p)]} times, but it takes one value: give it "
                "once (the command would otherwise use the last one only)."
            )


class _EngineSubGroup(click.Group):
    """A program's subcommand group (``orchestrate handoff``): its commands and groups are
    ``EngineCommand`` objects and such groups."""

    command_class = EngineCommand
    group_class = type


class EngineGroup(click.Group):
    """A click group whose user errors become one message and the documented exit code.

    Its programs take ``-h`` as well as ``--help``; its commands are ``EngineCommand`` objects.
    """

    command_class = EngineCommand
    group_class = _EngineSubGroup

    #: The command that runs when the first word is not a command's name (``orchestrate
    #: AGENT TASK`` is ``orchestrate delegate AGENT TASK``), or None.
    default_command: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("context_settings", {"help_option_names": ["-h", "--help"]})
        # Printed text goes through TerminalStream, which shows ESC as `\x1b`; click must
        # not strip CSI sequences first (it does when stdout is no terminal): unseen.
        kwargs["context_settings"] = {"color": True, **kwargs["context_settings"]}
        super().__init__(*args, **kwargs)

    def command_path_of(self, args: list[str], prog: str) -> str:
        """The command the words ``args`` name, as ``orchestrate handoff write``: the
        program ``prog``, then each word that names a subcommand of the one before."""
        return " ".join(self._command_of(args, prog)[0])

    def takes_json(self, args: list[str]) -> bool:
        """Whether ``--json`` is among the words (``wants_json``) and the command they
        name has that option: a command without it answers a usage error in plain text,
        as the error says it has no such option."""
        if not wants_json(args):
            return False
        command = self._command_of(args, "")[1]
        if command is self and self.default_command:  # `orchestrate --capability X ...`
            command = self.commands.get(self.default_command, self)
        return any("--json" in p.opts for p in command.params)

    def _command_of(self, args: list[str], prog: str) -> tuple[list[str], click.Command]:
        path: list[str] = [prog]
        command: click.Command = self
        for word in args:
            if not isinstance(command, click.Group) or word.startswith("-"):
                break
            found = command.commands.get(word)
            if found is None and command is self and self.default_command:
                found, word = command.commands.get(self.default_command), self.default_command
            if found is None:
                break
            path.append(word)
            command = found
        return path, command

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        from engine.textio import TerminalStream

        if isinstance(sys.stdout, TerminalStream):  # a command run by another one
            return self._main(args, prog_name, complete_var, standalone_mode, **extra)
        # Everything printed goes through terminal_text: text from agents, models and
        # config files cannot drive the terminal (escape sequences, BEL, CR).
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _stdout_stream(out), TerminalStream(err)
        try:
            return self._main(args, prog_name, complete_var, standalone_mode, **extra)
        finally:
            sys.stdout, sys.stderr = out, err

    def _main(
        self,
        args: list[str],
        prog_name: str | None,
        complete_var: str | None,
        standalone_mode: bool,
        **extra: Any,
    ) -> Any:
        def run() -> Any:
            check_argv(args)
            return super(EngineGroup, self).main(
                args=args,
                prog_name=prog_name,
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )

        if not standalone_mode:  # the caller handles errors and the exit code itself
            return run()
        as_json = self.takes_json(args)
        try:
            rv = run()
        except OrchestratorError as exc:
            fail(exc, as_json=as_json)
        except BrokenPipeError:  # stdout's reader went away: quietly, as `cat | head` does
            discard_stdout()
            sys.exit(0)
        except OSError as exc:
            fail(os_error(exc), as_json=as_json)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except _NoArgsIsHelp as exc:  # a group given no command: its help, as click shows it
            exc.show()
            sys.exit(EXIT_USAGE)
        except click.ClickException as exc:
            where = self.command_path_of(args, prog_name or self.name or "")
            fail(usage_error(exc, where), as_json=as_json)
        except click.Abort:
            _interrupted("aborted.", as_json=as_json)
        except KeyboardInterrupt:
            _interrupted("interrupted.", as_json=as_json)
        except Exception as exc:  # a database driver's error: one paragraph, not a traceback
            if not type(exc).__module__.startswith("psycopg"):
                raise
            from engine.store.postgres_db import driver_error

            fail(driver_error(exc), as_json=as_json)
        sys.exit(rv if isinstance(rv, int) else 0)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a command reads and checks its input.

    Reading a template builds many small objects that stay alive (YAML nodes, the parsed
    data, the spec, the plan), so the collector's passes free next to nothing and only
    cost time: ~160 of them while `workflow validate` read a 1,000-step file, 20-35 ms of
    a ~140 ms command. The work inside is bounded by the input's bounds
    (``engine.yamlio.MAX_NODES``). When the block ends the collector is back on (if it was
    on), before a run's steps start, and what the block left alive is moved to the oldest
    generation first (``gc.freeze`` then ``gc.unfreeze``, which moves without walking):
    turned on with all of it still counted as young, its first pass would walk it at once
    (~10 ms), to find it alive. It stays collectable by the collector's full passes.
    Objects freed by reference counting (nearly all) are freed at once as usual.
    """
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.freeze()
            gc.unfreeze()
            gc.enable()


def exiting() -> None:
    """The program's process is about to end: take its objects out of the collector's sight
    (``gc.freeze``), so that Python's last full collection at exit does not walk them all
    only to find them alive (~17 ms after reading a 1,000-step template). Called by a
    console script's entry point as it returns, never by a command: a caller that goes on
    (a test calling ``main``) keeps a collector that can still free its cycles. Files and
    sockets are closed by their ``with`` blocks and ``atexit`` handlers as before.
    """
    gc.freeze()


#: The handoffs directory of the config each command loaded, to name it in OSError messages.
LOADED: list[str] = []


def load(config: str | None) -> Any:
    from engine.config import load_config

    cfg = load_config(config)
    LOADED.append(str(cfg.handoffs_dir))
    _warn_about(cfg)
    return cfg


def _warn_about(cfg: Any) -> None:
    """Print the config's warnings (``engine.acl.acl_warnings``) on stderr."""
    from engine.acl import acl_warnings

    for warning in acl_warnings(cfg.acl):
        click.echo(f"warning: {warning}", err=True)


def load_optional(config: str | None) -> Any:
    """The config if there is one (an invalid one is still an error), else None."""
    from engine.config import find_config, load_config
    from engine.errors import ConfigError

    try:
        path = find_config(config)
    except ConfigError:
        if config:
            raise
        return None
    cfg = load_config(path)
    _warn_about(cfg)
    return cfg


def config_flag(cfg: Any) -> str:
    """`` --config PATH`` (absolute, shell-quoted) for a follow-up command a hint prints,
    when the config ``cfg`` (a ``Config``, or None) was not found as such a command typed
    here would find it (``engine.config.find_config``: $ORCHESTRATOR_CONFIG, else
    ./orchestrator.yaml), e.g. it was given by ``--config``; else empty. Every printed
    `workflow approve/reject/answer/resume/run` hint of a local run carries it."""
    import shlex
    from pathlib import Path

    from engine.config import find_config
    from engine.errors import ConfigError

    path = getattr(cfg, "path", None)
    if not path:
        return ""
    here = Path(path).absolute()
    try:
        found: Path | None = find_config(None).absolute()
    except ConfigError:
        found = None
    try:
        same = found is not None and found.resolve() == here.resolve()
    except OSError:
        same = False
    return "" if same else f" --config {shlex.quote(str(here))}"


def dump(data: Any) -> None:
    """Print ``data`` as indented JSON, secrets masked, controls escaped as ``\\uXXXX``
    (``engine.textio.json_text``): the output stays JSON and cannot drive a terminal."""
    from engine.redact import redact
    from engine.textio import json_text

    echo(json_text(redact(json.dumps(data, indent=2, ensure_ascii=False, default=str))))


def say(text: str, *, err: bool = False) -> None:
    """Print a line that may carry text from an agent or a URL, with known secrets masked."""
    from engine.redact import redact

    echo(redact(text), err=err)


config_option = click.option(
    "--config",
    "config",
    type=NonEmpty("give the path of a config file", click.Path()),
    help=CONFIG_HELP,
)


def int_option(*decls: str, low: int, high: int, default: int, help: str) -> Callable[[Any], Any]:
    """A click option taking a whole number from ``low`` to ``high`` (both included; a
    value outside is a usage error, exit 2), ``default`` when not given, shown in ``--help``."""
    return click.option(
        *decls, type=click.IntRange(low, high), default=default, show_default=True, help=help
    )


def options(*decorators: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """One decorator applying click options in the order listed (the order ``--help``
    shows them in)."""

    def add(fn: Any) -> Any:
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return add


_T = TypeVar("_T")


@dataclass(frozen=True)
class Where:
    """Where a command acts: through `orchestrate serve` at ``server`` (its token in the
    environment variable ``token_env``), or on this host with the config file ``config``
    (None: the default one)."""

    server: str | None
    token_env: str | None
    config: str | None

    def __post_init__(self) -> None:
        """Refuse ``--config`` with a server: the server acts with its own config, so the
        file would be silently ignored (``UsageError``, exit 2, saying which to drop)."""
        if self.server and self.config:
            from engine.errors import UsageError

            raise UsageError(
                f"`--config {self.config}` and {_server_source(self.server)} do not go "
                "together: through a server, the server's own config applies. Drop "
                "`--config` to act through the server, or drop the server (`--server` / "
                "unset $ORCH_SERVER) to act on this host with that config."
            )

    @property
    def flags(self) -> str:
        """The options that name the same server in a hint (`` --server URL``, and
        `` --server-token-env VAR`` when not the default); empty without a server."""
        if not self.server:
            return ""
        from engine.serve.client import DEFAULT_TOKEN_ENV, check_server_url

        env = self.token_env or DEFAULT_TOKEN_ENV
        more = f" --server-token-env {env}" if env != DEFAULT_TOKEN_ENV else ""
        return f" --server {check_server_url(self.server)}{more}"

    def refuse_local(self, *given: str) -> None:
        """Refuse options that act on this host (``given``: their names, as ``--dry-run``)
        when a server is given: ``UsageError`` (exit 2) saying which to drop. Every
        program refuses them in these words (docs/serve.md, "The CLI as a client")."""
        if not self.server or not given:
            return
        from engine.errors import UsageError

        names = " and ".join(f"`{g}`" for g in given)
        verb = "are" if len(given) > 1 else "is"
        why = "".join(f" {_SERVER_SIDE[g]}" for g in given if g in _SERVER_SIDE)
        raise UsageError(
            f"{names} {verb} local (acting on this host), and a server was given "
            f"(`--server {self.server}` or $ORCH_SERVER): drop {names} to act through "
            f"the server, or drop the server (unset $ORCH_SERVER) to act on this host.{why}"
        )

    def act(self, remote: Callable[[Any], _T], local: Callable[[Any], _T]) -> _T:
        """``remote(client)`` through the server when one is given, else ``local(cfg)``."""
        if self.server:
            with client(self.server, self.token_env) as served:
                return remote(served)
        return local(load(self.config))

    def report(self, served: str, here: str) -> None:
        """Print what was done: ``served`` when the server acted, else ``here``."""
        click.echo(served if self.server else here)


#: What the server does instead of a refused option that has a counterpart there.
_SERVER_SIDE = {
    "--interactive": "A server's run parks at a gate until `workflow approve` (as with "
    "`--non-interactive`).",
    "--max-parallel": "The server runs as many steps at once as its `serve.max_parallel` "
    "says.",
}


def _server_source(server: str) -> str:
    """How the server was given, for a message: ``--server URL`` or ``$ORCH_SERVER``."""
    ctx = click.get_current_context(silent=True)
    source = ctx.get_parameter_source("server") if ctx is not None else None
    if source is click.core.ParameterSource.ENVIRONMENT:
        return f"$ORCH_SERVER (`{server}`)"
    return f"`--server {server}`"


def collected(
    name: str, kind: type[Any], *decorators: Callable[[Any], Any]
) -> Callable[[Any], Any]:
    """One decorator applying click options in the order listed, whose values reach the
    command as one value, its argument ``name``: ``kind(**values)`` (a dataclass whose
    fields are the options' parameter names)."""
    keys = [f.name for f in fields(kind)]

    def add(fn: Any) -> Any:
        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            kwargs[name] = kind(**{key: kwargs.pop(key) for key in keys})
            return fn(*args, **kwargs)

        return options(*decorators)(command)

    return add


#: `--server URL` (or $ORCH_SERVER), `--server-token-env VAR` and `--config`, given to the
#: command as one ``where`` value (a ``Where``).
where_options = collected(
    "where",
    Where,
    click.option(
        "--server",
        envvar="ORCH_SERVER",
        metavar="URL",
        type=NonEmpty("give the URL of `orchestrate serve`"),
        help="Act through `orchestrate serve`.",
    ),
    click.option(
        "--server-token-env",
        "token_env",
        metavar="VAR",
        type=NonEmpty("name the environment variable that holds the server's token"),
        help="Env var with the server token [ORCH_SERVER_TOKEN].",
    ),
    config_option,
)


def client(server: str, token_env: str | None) -> Any:
    """A client of `orchestrate serve` at ``server``."""
    from engine.serve.client import ServerClient

    return ServerClient(server, token_env=token_env)
