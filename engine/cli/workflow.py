"""The ``workflow`` program: run, resume, approve, inspect and validate YAML workflows."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from engine.cli.common import (
    EngineGroup,
    NonEmpty,
    Where,
    collected,
    collector_paused,
    config_flag,
    config_option,
    dump,
    exiting,
    fail,
    int_option,
    interrupt_exit,
    interrupted,
    load,
    load_optional,
    non_empty_path,
    say,
    stopping_signals,
    where_options,
)
from engine.cli.common import client as _client


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
Exit codes: 0 complete · 1 a step failed · 2 bad input
            3 waiting: for approval, or for the answer to an agent's question
            4 timed out · 5 refused by the ACL or the pool
            6 (unusable) is a single delegation's: in a run, such a step fails (1)
            130 interrupted (Ctrl-C): the run stays resumable (workflow resume RUN)""",
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


caller_option = click.option(
    "--caller",
    # `--caller ""` names no one: refused, not taken as the template's caller
    type=NonEmpty("name the caller agent (`--caller manager`)"),
    help="Caller for the ACL (default: the template's `caller`).",
)
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
    type=NonEmpty("name the step whose gate is approved"),
    help="Approve this step's gate up front (repeatable).",
)
approve_all_option = click.option(
    "--approve-all", is_flag=True, help="Approve every gate up front."
)
parallel_option = int_option(
    "--max-parallel",
    low=1,
    high=256,
    default=4,
    help="Steps in flight at once (the token pool may allow fewer).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress output.")


@dataclass(frozen=True)
class _Driving:
    """How `run` and `resume` drive a run in this process and show it (their shared
    options: ``--interactive``, ``--approve``, ``--approve-all``, ``--max-parallel``,
    ``--json``, ``-q``)."""

    interactive: bool | None
    approve: tuple[str, ...]
    approve_all: bool
    max_parallel: int
    as_json: bool
    quiet: bool

    def run_options(self, **more: Any) -> Any:
        """The ``RunOptions`` these options ask for, plus ``more`` (the command's own)."""
        from engine.runner import RunOptions

        return RunOptions(
            max_parallel=self.max_parallel,
            approve=frozenset(self.approve),
            approve_all=self.approve_all,
            **more,
        )

    def local_options(self) -> list[str]:
        """The options given that only this host's executor uses, as ``--max-parallel``:
        ``--interactive`` (a server's run parks at a gate, as ``--non-interactive``) and
        ``--max-parallel`` (the server runs as many steps as its ``serve.max_parallel``),
        when given on the command line (a default is not refused)."""
        from click.core import ParameterSource

        ctx = click.get_current_context()
        given = []
        if self.interactive:
            given.append("--interactive")
        if ctx.get_parameter_source("max_parallel") not in (None, ParameterSource.DEFAULT):
            given.append("--max-parallel")
        return given

    def drive(self, cfg: Any, act: Any, *, run_id: str, fresh: bool = False) -> int:
        """Run ``act(runner)`` with the delegator, reporter and approver a run needs;
        render it. ``run_id``: the run ``act`` starts (``fresh``) or resumes.

        An OSError (a full disk) in a run that had started names `workflow resume RUN`
        (running it again would send its steps again, ``_run_os_error``)."""
        from engine.runner import SafePoint

        point = SafePoint()  # Ctrl-C, SIGTERM, SIGHUP stop the run where it can stop
        # The paragraph is printed while the handlers are still ours: a signal that comes
        # meanwhile is noted (``point.closing``), never a bare exit or a traceback.
        with stopping_signals(point.defer) as got:
            code = self._drive(cfg, act, point, got, run_id=run_id, fresh=fresh)
        if got:  # stopped by a signal: this process only exits now, and says nothing more
            _ignore_stop_signals()
        return code

    def _drive(
        self, cfg: Any, act: Any, point: Any, got: list[int], *, run_id: str, fresh: bool
    ) -> int:
        """``drive``'s body, within its signal handlers."""
        from engine.delegate import open_delegator
        from engine.runner import RunInterrupted, WorkflowRunner

        reporter = _reporter_for(self.as_json, self.quiet)
        try:
            with open_delegator(cfg, reporter=reporter) as delegator:
                approver = _approver(self.interactive)
                runner = WorkflowRunner(cfg, delegator, reporter=reporter, approver=approver)
                runner.safe_point = point
                try:
                    result = act(runner)
                finally:
                    point.closing = True  # a signal from now on is noted, not raised
                    getattr(reporter, "close", lambda: None)()
        except RunInterrupted as stop:
            point.closing = True
            cf = config_flag(cfg)
            hint = _interrupted_hint(stop.run_id, stop.in_flight, cf, stop.unsent)
            return interrupted(hint, as_json=self.as_json, code=interrupt_exit(got))
        except KeyboardInterrupt:  # before the run's loop, or while it was set up
            point.closing = True
            rid = _started(cfg, run_id) if fresh else run_id
            text = (
                f"interrupted: stopped waiting for run {rid}, which stays resumable. "
                f"Continue it with: workflow resume {rid}{config_flag(cfg)}"
                if rid
                else "interrupted: the run had not started; nothing was sent."
            )
            return interrupted(text, as_json=self.as_json, code=interrupt_exit(got))
        except BrokenPipeError:
            raise  # stdout's reader went away: quietly (EngineGroup)
        except OSError as exc:
            raise _run_os_error(exc, cfg, run_id, fresh) from None
        return _render_run(result, self.as_json, plain=self.quiet or None, cfg=cfg)


def _ignore_stop_signals() -> None:
    """Ignore Ctrl-C, SIGTERM and SIGHUP from now on (main thread only): the command was
    stopped by one and has printed its paragraph; one more while the process exits
    would end it with a traceback from the interpreter's shutdown."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)


def _run_os_error(exc: OSError, cfg: Any, run_id: str, fresh: bool) -> Exception:
    """The error for an OSError (a full disk, an unusable path) while running a workflow.

    A run that had started (a resumed one, or a ``fresh`` one whose journal has its
    ``run_started``) is named with `workflow resume RUN`: starting it again would send its
    steps again. A fresh run's directory left empty (it failed before ``run.json`` was
    written) is removed; then, nothing having started, the generic "run again"
    (``engine.cli.common.os_error``) holds."""
    from engine.cli.common import os_error
    from engine.errors import OrchestratorError
    from engine.textio import describe_oserror

    rid = _started(cfg, run_id) if fresh else run_id
    if rid is None:
        return os_error(exc)
    where = f" `{exc.filename}`" if exc.filename else " the handoffs directory"
    return OrchestratorError(
        f"cannot use{where}: {describe_oserror(exc)}. Run {rid} had started: what it "
        "recorded is kept, and a step in flight keeps its delegation. Fix this (free "
        f"space, or the path), then continue it with: workflow resume {rid} (running the "
        "workflow again would send its steps again)."
    )


def _started(cfg: Any, run_id: str) -> str | None:
    """``run_id`` when its journal starts with ``run_started`` (the run had started), else
    None, its directory removed if it was left empty (``os.rmdir``: only an empty one
    goes). File store only: another store has no such directory (None)."""
    import os

    from engine.store.file import RUNS_DIR

    path = Path(cfg.handoffs_dir) / RUNS_DIR / run_id
    try:
        if path.is_dir() and not any(os.scandir(path)):
            os.rmdir(path)  # failed before anything was written
            return None
        with open(path / "events.jsonl", "rb") as f:
            first = json.loads(f.readline() or b"null")
    except (OSError, ValueError):
        return None
    started = isinstance(first, dict) and first.get("event") == "run_started"
    return run_id if started else None


def _interrupted_hint(
    run_id: str,
    in_flight: list[str],
    cf: str = "",
    unsent: dict[str, dict[str, Any]] | None = None,
) -> str:
    """The one paragraph after Ctrl-C stopped a run's wait (``RunInterrupted``); ``cf``:
    the `` --config PATH`` its command carries (``config_flag``). The steps of
    ``in_flight`` in ``unsent`` (``engine.runs.replay.unsent``: queued for a pool token,
    waiting to retry) had nothing sent: resume sends them; the others (and a re-attached
    one waiting for a token: ``why`` ``reattached``) keep their delegation."""
    unsent = unsent or {}
    back = {sid for sid, gap in unsent.items() if gap.get("why") == "reattached"}
    unsent = {sid: gap for sid, gap in unsent.items() if sid not in back}
    sent = [sid for sid in in_flight if sid not in unsent]
    steps = ", ".join(
        f"`{sid}`" + (" (dispatched, re-attached: waiting for a pool token)" if sid in back else "")
        for sid in sent
    )
    one = len(sent) == 1
    flying = (
        f" The step{'' if one else 's'} in flight ({steps}) keep{'s its' if one else ' their'} "
        f"delegation{'' if one else 's'}: an agent that hands off later is taken when the "
        "run resumes, and nothing is sent again."
        if sent
        else ""
    )
    waiting = [sid for sid in in_flight if sid in unsent]
    if waiting:
        what = {"retry": "waiting to retry"}
        why = ", ".join(
            f"`{sid}` ({what.get(unsent[sid]['why'], 'queued for a pool token')})"
            for sid in waiting
        )
        one = len(waiting) == 1
        flying += (
            f" Not sent yet: {why}; nothing of {'it' if one else 'them'} is in flight, and "
            f"the resumed run sends {'it' if one else 'them'}."
        )
    return (
        f"interrupted: stopped waiting for run {run_id}, which stays resumable; no step "
        f"was recorded as ended.{flying} Continue it with: workflow resume {run_id}{cf}"
    )


#: The options of ``_Driving``, given to the command as one ``driving`` value.
_driving_options = collected(
    "driving",
    _Driving,
    interactive_option,
    approve_option,
    approve_all_option,
    parallel_option,
    json_option,
    quiet_option,
)


def _reporter_for(as_json: bool, quiet: bool = False) -> Any:
    from engine.reporter import Reporter

    if as_json or quiet:
        return Reporter()
    from engine.progress import progress_reporter

    return progress_reporter()


def _gate_value(text: str) -> Any:
    """A gate's input as typed: JSON when it parses as JSON, else the text itself."""
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text


def _bad_json(text: str | None) -> str | None:
    """Why ``text``, which looks like JSON (an object, a list, a quoted string), is not
    valid JSON; None when it parses or does not look like JSON (plain text)."""
    import json

    if text is None or not text.strip().startswith(("{", "[", '"')):
        return None
    try:
        json.loads(text)
    except ValueError as exc:
        return str(exc)
    return None


def _approver(interactive: bool | None) -> Any:
    """The terminal's approver (None: park at gates). Ctrl-D (end of input) at its prompt
    answers nothing: that gate and every later one park the run (``waiting_approval``,
    exit 3); Ctrl-C interrupts the run (``RunInterrupted``). With no standard input at
    all (closed: ``<&-``), gates park as with ``--non-interactive``."""
    if sys.stdin is None:  # nothing to read an answer from
        return None
    if interactive is None:
        interactive = sys.stdin.isatty()
    if not interactive:
        return None
    closed: list[bool] = []

    def ask(req: Any) -> Any:
        if closed:
            return None
        try:
            return prompt(req)
        except click.Abort as exc:  # click's word for both Ctrl-C and end of input
            if isinstance(exc.__context__, KeyboardInterrupt):
                raise KeyboardInterrupt from None
            closed.append(True)
            click.echo("\n(no answer: the run parks at this gate)", err=True)
            return None

    def prompt(req: Any) -> Any:
        click.echo(f"\n=== approval gate: step `{req.step}` (agent {req.agent}) ===", err=True)
        say(req.prompt, err=True)  # the run's secrets (its secret inputs too) masked
        for up, ctx in req.upstream.items():
            text = str(ctx.get("result", ""))
            if len(text) > 1500:
                text = text[:1500] + " …"
            say(
                f"--- {up}: {ctx.get('status')} (confidence "
                f"{ctx.get('confidence') or '-'})\n{text}",
                err=True,
            )
        answer = click.prompt(
            "Approve? [y/n]", type=click.Choice(["y", "n"]), err=True, show_choices=False
        )
        if answer == "y" and req.input_schema is not None:
            import json

            click.echo(f"input (JSON Schema): {json.dumps(req.input_schema)}", err=True)
            return ("approved", _gate_value(click.prompt("Value", err=True)))
        if answer == "y":
            return "approved"
        reason = click.prompt("Reason", default="rejected at the terminal", err=True)
        return ("rejected", reason)

    return ask


def _render_run(
    result: Any,
    as_json: bool,
    plain: bool | None = None,
    cfg: Any = None,
    flags: str = "",
    gate_inputs: frozenset[str] | None = None,
) -> int:
    """Print a run's summary (or its JSON) and, on stderr, what to do next; its exit code.

    ``flags`` (``Where.flags``, e.g. `` --server URL``) says the server runs it: the
    hints then carry them and need no `workflow resume` (the server continues the run);
    ``gate_inputs``: the gates that ask for a value, as the server's plan says.
    """
    summary = result.summary
    if as_json:
        dump({**summary, "run_dir": str(result.run_dir)})
        return int(result.exit_code)
    from engine.progress import summary_table

    click.echo(summary_table(summary, plain=plain))  # plain: -q, or not a terminal
    for name, value in (summary.get("outputs") or {}).items():
        click.echo(f"\n## {name}\n{value}")
    if flags:  # the run's directory is on the server's host: name what works from here
        rid = summary["runId"]
        say(f"\nrun: {rid} on the server (see it with: workflow status {rid}{flags})")
    else:
        click.echo(f"\nrun: {result.run_dir}")
    _next_steps(result, summary, cfg, flags, gate_inputs)
    return int(result.exit_code)


def _next_steps(
    result: Any,
    summary: dict[str, Any],
    cfg: Any,
    flags: str,
    gate_inputs: frozenset[str] | None = None,
) -> None:
    """What to do next, on stderr: decide a gate, answer a question, or retry; each line
    can be copied as printed (``flags``: the server's options, see ``_render_run``;
    without a server, each command carries ``config_flag(cfg)``)."""
    rid, status = summary["runId"], summary["status"]
    cf = "" if flags else config_flag(cfg)
    opts = flags or cf  # what every printed command carries
    from engine.runs.admin import resume_inputs

    again = "" if flags else resume_inputs(_run_meta(result, summary))
    then = "" if flags else f" && workflow resume {rid}{again}{cf}"
    if status in ("waiting_approval", "waiting_input"):
        for sid, st in summary["steps"].items():
            if st["status"] in ("waiting_approval", "waiting_input") and st.get("child_run_id"):
                click.echo(_child_hint(cfg, rid, sid, st, flags, cf), err=True)
    if status == "waiting_approval":
        _gate_hints(result, summary, then, opts, gate_inputs)
    elif status == "waiting_input" and _budget_spent(summary):
        click.echo(
            f"the run's budget is spent: an answer would not be sent (`workflow resume` "
            f"dispatches nothing more); start a new run with a larger `budget`: "
            f"{_rerun(result, summary, flags, cf)}   (or: `workflow cancel {rid}{opts}`)",
            err=True,
        )
    elif status == "waiting_input":
        for sid, st in summary["steps"].items():
            if st["status"] == "waiting_input" and not st.get("child_run_id"):
                q = (st.get("question") or {}).get("text", "")
                say(
                    f'`{sid}` asks: {q}\nanswer with: workflow answer {rid} {sid} "..."'
                    f"{opts}{then}",
                    err=True,
                )
    elif status == "failed":
        say(_failed_hint(summary, flags, _run_meta(result, summary, flags), cf), err=True)


def _run_meta(result: Any, summary: dict[str, Any], flags: str = "") -> dict[str, Any]:
    """The run's ``run.json`` when it is on this host (not through a server: ``flags``),
    else what the summary says of it (its workflow's name, its inputs)."""
    fallback = {"workflow": summary.get("workflow"), "inputs": summary.get("inputs")}
    if flags:
        return fallback
    try:
        meta = json.loads((Path(result.run_dir) / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return fallback
    return meta if isinstance(meta, dict) else fallback


def _rerun(result: Any, summary: dict[str, Any], flags: str = "", cf: str = "") -> str:
    """``workflow run REF [-i ...]`` for a new run of this run's workflow (with ``flags``
    or, on this host, ``cf``: ``config_flag``)."""
    from engine.runs import rerun_command

    return rerun_command(_run_meta(result, summary, flags), flags or cf)


def _gate_hints(
    result: Any,
    summary: dict[str, Any],
    then: str,
    flags: str,
    gate_inputs: frozenset[str] | None,
) -> None:
    rid = summary["runId"]
    for sid, st in summary["steps"].items():
        if st["status"] == "waiting_approval" and not st.get("child_run_id"):
            value = " --input VALUE" if _gate_input(result.run_dir, sid) else ""
            if gate_inputs is not None:  # the plan is on the server, which said
                value = " --input VALUE" if sid in gate_inputs else ""
            say(
                f"waiting for approval at `{sid}`: workflow approve {rid} {sid}{value}"
                f"{flags}{then}   (or: workflow reject {rid} {sid} --reason ...{flags})",
                err=True,
            )


#: Step states `workflow resume --retry-failed` runs again (docs/workflows.md, Resume).
_RETRIED = frozenset(
    {"failed", "timeout", "errored", "invalid", "blocked", "cancelled", "unusable", "lost"}
)
_BUDGET_SPENT = "the run's budget is spent"


def _budget_spent(summary: dict[str, Any]) -> bool:
    """True when a step (or an item of one) was skipped because the run's budget is spent."""
    return _BUDGET_SPENT in json.dumps(summary.get("steps") or {}, ensure_ascii=False)


def _failed_hint(summary: dict[str, Any], flags: str = "", meta: Any = None, cf: str = "") -> str:
    """What to do about a failed run: `--retry-failed` only when it would send something
    (a spent budget stops it, and so does a deadline that has passed; a rejected gate
    stays rejected), else start a new run (``rerun_command``: the workflow named as the
    run was started, from its ``run.json`` ``meta``). Through a server (``flags``),
    `--retry-failed` is for the server's host only; on this host the commands carry
    ``cf`` (``config_flag``)."""
    from engine.runs import rerun_command

    rid = summary["runId"]
    if not isinstance(meta, dict):
        meta = {"workflow": summary.get("workflow"), "inputs": summary.get("inputs")}
    again = rerun_command(meta, flags or cf)
    if _budget_spent(summary):
        return (
            "the run failed: its budget is spent, and a resumed run keeps counting, so "
            f"`workflow resume` sends nothing more; start a new run with a larger `budget`: "
            f"{again}"
        )
    if _deadline_passed(meta):
        return (
            f"the run failed: its deadline ({meta.get('deadline_at')}) has passed, so "
            f"`workflow resume` sends nothing more; start a new run: {again}"
        )
    steps = summary.get("steps") or {}
    if any(st.get("status") in _RETRIED for st in steps.values()):
        if flags:
            return (
                f"the run failed; after fixing the cause, start a new run: {again}   (or, "
                f"on the server's host: workflow resume {rid} --retry-failed)"
            )
        from engine.runs.admin import resume_inputs

        secrets = resume_inputs(meta)
        return (
            f"the run failed; after fixing the cause: workflow resume {rid}{secrets} "
            f"--retry-failed{cf}"
        )
    rejected = [sid for sid, st in steps.items() if st.get("status") == "rejected"]
    if rejected:
        approve = " ".join(f"--approve {sid}" for sid in rejected)
        return (
            f"the run failed: the gate of `{rejected[0]}` was rejected, which is final "
            f"(`workflow resume` does not run it); start a new run: {again} ({approve} to "
            "approve up front)"
        )
    return f"the run failed; start a new run: {again}"


def _deadline_passed(meta: dict[str, Any]) -> bool:
    """True when the run's ``deadline_at`` (``run.json``) is in the past."""
    import time

    from engine.files import parse_iso

    at = meta.get("deadline_at")
    try:
        return isinstance(at, str) and parse_iso(at).timestamp() <= time.time()
    except ValueError:
        return False


def _gate_input(run_dir: Any, sid: str) -> bool:
    """True when the run's plan (its `run.json`) says the gate of ``sid`` asks for a value."""
    try:
        meta = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False
    step = ((meta.get("plan") or {}).get("steps") or {}).get(sid) or {}
    return bool(step.get("gate_input"))


def _child_hint(
    cfg: Any, rid: str, sid: str, st: dict[str, Any], flags: str = "", cf: str = ""
) -> str:
    """What to do for a sub-workflow step parked because its child run is: the child run's
    own parked step (followed down nested children), decided there, then the parent
    resumed. Without the run store at hand (a server run), where to look instead. ``cf``:
    the `` --config PATH`` each command carries (``config_flag``)."""
    child = str(st["child_run_id"])
    again = ""  # the parent's `-i NAME=VALUE` (engine.runs.admin.resume_inputs)
    then = f" && workflow resume {rid}{cf}"
    if cfg is not None:
        from engine.errors import OrchestratorError
        from engine.runs.admin import resume_inputs
        from engine.runs.replay import replay_run
        from engine.states import StepState
        from engine.store import open_store

        try:
            store = open_store(cfg)
            again = "" if flags else resume_inputs(store.read_run(rid))
            then = f" && workflow resume {rid}{again}{cf}"
            run_id, seen = child, 0
            while seen < 20:  # nested sub-workflows, bounded
                seen += 1
                view = replay_run(store, run_id)
                parked = [
                    (csid, s)
                    for csid, s in view.steps.items()
                    if s.state in (StepState.WAITING_APPROVAL, StepState.WAITING_INPUT)
                ]
                if not parked:
                    break
                csid, s = parked[0]
                if s.child_run_id:
                    run_id = s.child_run_id
                    continue
                if s.state is StepState.WAITING_INPUT:
                    return (
                        f"`{sid}` waits on its child run {run_id}, where `{csid}` asks a "
                        f'question: workflow answer {run_id} {csid} "..."{cf}{then}'
                    )
                gate = ((view.meta.get("plan") or {}).get("steps") or {}).get(csid) or {}
                value = " --input VALUE" if gate.get("gate_input") else ""
                return (
                    f"`{sid}` waits on its child run {run_id}, at `{csid}`: "
                    f"workflow approve {run_id} {csid}{value}{cf}{then}"
                    f"   (or: workflow reject {run_id} {csid} --reason ...{cf})"
                )
        except OrchestratorError:
            pass
    return (
        f"`{sid}` waits on its child run {child}: see `workflow status {child}{flags or cf}`, "
        f"decide or answer there, then `workflow resume {rid}{again}{flags or cf}`"
    )


@workflow.command("run")
@click.argument("name")
@input_option
@caller_option
@click.option(
    "--dry-run", is_flag=True, help="Check everything and print the plan; dispatch nothing."
)
@_driving_options
@where_options
def workflow_run_cmd(
    name: str,
    inputs: tuple[str, ...],
    caller: str | None,
    dry_run: bool,
    driving: _Driving,
    where: Where,
) -> int:
    """Run workflow NAME (a name in ./workflows, the config's dirs, the shipped set, or a path)."""
    from engine.workflow import parse_inputs

    as_json = driving.as_json
    if where.server:
        where.refuse_local(*(["--dry-run"] if dry_run else []), *driving.local_options())
        with _client(where.server, where.token_env) as remote:
            result = remote.run_workflow(
                name,
                parse_inputs(list(inputs)),
                caller=caller,
                approve=driving.approve,
                approve_all=driving.approve_all,
            )
        return _render_run(
            result,
            as_json,
            plain=driving.quiet or None,
            flags=remote.flags,
            gate_inputs=remote.gate_inputs,
        )
    with collector_paused():
        from engine.prepare import prepare
        from engine.registry import check_secrets

        cfg = load(where.config)
        prepared = prepare(cfg, name, parse_inputs(list(inputs)), caller=caller)
        check_secrets(
            cfg,
            [a for ps in prepared.plan.steps.values() for a in (*ps.candidates, ps.validator) if a],
        )
        if dry_run:
            from engine.planview import dry_run_dict, dry_run_text
            from engine.prepare import check_approvals
            from engine.redact import held, input_secrets

            check_approvals(prepared.plan, driving.approve)  # as the run itself would
            # the secret inputs masked in the tasks, prompts and items, as a run masks them
            with held(input_secrets(prepared.plan.inputs, prepared.spec.secret_inputs)):
                if as_json:
                    dump(dry_run_dict(prepared.plan, prepared.renderer))
                else:
                    say(dry_run_text(prepared.plan, prepared.renderer))
            return 0
    run_options = driving.run_options(caller=caller)
    from engine.files import new_run_id

    rid = new_run_id("wf")
    return driving.drive(
        cfg, lambda r: r.start(prepared, run_options, run_id=rid), run_id=rid, fresh=True
    )


@workflow.command("resume")
@click.argument("run_id")
@click.option(
    "-i",
    "--input",
    "inputs",
    multiple=True,
    metavar="NAME=VALUE",
    help="An input the run holds only masked (a secret): give its value again; it is "
    "checked against the keyed hash in run.json. Other inputs stay as the run started.",
)
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Run again the steps that ended failed, timeout, errored, invalid, blocked, "
    "cancelled, unusable or lost (and what they skipped).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Resume even if the template, inputs or agents changed since the run started "
    "(its child runs' too): its steps with their current definitions. Never with a step "
    "added, removed or renamed.",
)
@_driving_options
@where_options
def workflow_resume_cmd(
    run_id: str,
    inputs: tuple[str, ...],
    retry_failed: bool,
    force: bool,
    driving: _Driving,
    where: Where,
) -> int:
    """Continue run RUN_ID: finished steps are never sent again (with `--server`, the
    server takes over a run that no process executes, and this waits as `run` does)."""
    if where.server:
        where.refuse_local(
            *(
                opt
                for opt, on in (
                    ("--retry-failed", retry_failed),
                    ("--force", force),
                    ("--approve", bool(driving.approve)),
                    ("--approve-all", driving.approve_all),
                )
                if on
            ),
            *driving.local_options(),
        )
        from engine.workflow import parse_inputs

        with _client(where.server, where.token_env) as remote:
            result = remote.resume(run_id, parse_inputs(list(inputs)))
        return _render_run(
            result,
            driving.as_json,
            plain=driving.quiet or None,
            flags=remote.flags,
            gate_inputs=remote.gate_inputs,
        )
    cfg = load(where.config)
    if ended := _complete(cfg, run_id):  # nothing to resume, and nothing is written
        click.echo(ended)
        return 0
    from engine.workflow import parse_inputs

    given = parse_inputs(list(inputs))
    run_options = driving.run_options(retry_failed=retry_failed, force=force)
    return driving.drive(cfg, lambda r: r.resume(run_id, run_options, inputs=given), run_id=run_id)


def _complete(cfg: Any, run_id: str) -> str:
    """What to say when run ``run_id`` has completed (its `resume` is a no-op), else
    ``""`` (resume it; a run that does not exist or is damaged is `resume`'s to say)."""
    from engine.errors import OrchestratorError
    from engine.runs import replay_run
    from engine.states import RunState
    from engine.store import open_store

    try:
        state = replay_run(open_store(cfg), run_id).state
    except (OrchestratorError, OSError):
        return ""
    if state is not RunState.COMPLETE:
        return ""
    return (
        f"run {run_id} has already ended (complete); nothing to resume, nothing changed "
        f"(see it with: workflow status {run_id})."
    )


@workflow.command("approve")
@click.argument("run_id")
@click.argument("step")
@click.option(
    "--reason", type=NonEmpty("say why the gate is approved"), help="Why (recorded)."
)
@click.option(
    "--input",
    "value",
    metavar="VALUE",
    help="The value a gate with `input` asks for: JSON (3, true, [..], {..}) or plain text.",
)
@json_option
@where_options
def workflow_approve_cmd(
    run_id: str, step: str, reason: str | None, value: str | None, as_json: bool, where: Where
) -> int:
    """Approve the gate of STEP in a parked run (then `workflow resume`)."""
    return _decide(
        where,
        run_id,
        step,
        as_json,
        approved=True,
        reason=reason,
        value=value,
        served=f"approved `{step}`; the server continues run {run_id}.",
        then="continue with",
    )


def _decide(
    where: Where,
    run_id: str,
    step: str,
    as_json: bool,
    *,
    approved: bool,
    reason: str | None,
    value: str | None,
    served: str,
    then: str,
) -> int:
    """Approve or reject (``approved``) STEP's gate, on the server or here, and say so
    (``_decided``: ``served`` when a server acted, else what to do ``then``). ``value``:
    the text of `--input` (``_gate_value``); a refused value that looks like JSON but is
    not gets a ``UsageError`` that names the JSON error. Returns exit code 0."""
    from engine.errors import UsageError
    from engine.runs import GateDecision, decide_gate

    given = None if value is None else _gate_value(value)
    decision = GateDecision(approved, reason=reason, value=given)
    try:
        event = where.act(
            lambda remote: remote.decide(run_id, step, decision),
            lambda cfg: decide_gate(cfg, run_id, step, decision),
        )
    except UsageError as exc:
        bad = _bad_json(value)
        if bad is None or "matching its schema" not in str(exc):  # not about the value
            raise
        raise UsageError(
            f"`--input {value}` is not valid JSON ({bad}), and as plain text it is refused: "
            f"{str(exc).rstrip('.')}. Fix the JSON, in single quotes for the shell "
            "(`--input '{...}'`)."
        ) from exc
    verb = "approved" if approved else "rejected"
    _decided(
        where,
        run_id,
        step,
        event,
        as_json,
        served,
        lambda: f"{verb} `{step}`; {_next_of(where, run_id, then)}",
    )
    return 0


def _decided(
    where: Where,
    run_id: str,
    step: str,
    event: Any,
    as_json: bool,
    served: str,
    here: Any,
) -> None:
    """Say what a gate's decision did: ``served`` (a server acted) or ``here()``; with
    ``--json``, one object: ``runId``, ``step``, ``decision`` (approved | rejected), ``by``,
    ``reason``, ``at``, ``input`` (the value given, when there is one) and ``next``, the
    sentence the text form prints. ``event`` is the journal's ``gate_decided`` (a
    server answers ``{"decision": event}``)."""
    if isinstance(event, dict) and isinstance(event.get("decision"), dict):
        event = event["decision"]  # the server's answer wraps the event
    ev = event if isinstance(event, dict) else {}
    text = served if where.server else here()
    if not as_json:
        click.echo(text)
        return
    dump(
        {
            "runId": run_id,
            "step": step,
            "decision": ev.get("decision"),
            "by": ev.get("by"),
            "reason": ev.get("reason"),
            "at": ev.get("at"),
            **({"input": ev["input"]} if "input" in ev else {}),
            "next": text,
        }
    )


@workflow.command("answer")
@click.argument("run_id")
@click.argument("step")
@click.argument("text")
@click.option(
    "--by",
    default="cli",
    show_default=True,
    type=NonEmpty("name who answers"),
    help="Who answers (recorded).",
)
@click.option(
    "--replace", is_flag=True, help="Replace an answer given already (else it is refused)."
)
@json_option
@where_options
def workflow_answer_cmd(
    run_id: str, step: str, text: str, by: str, replace: bool, as_json: bool, where: Where
) -> int:
    """Answer the question STEP's agent asked (then `workflow resume`; with `--server`, the
    server continues the run and records the token's name as the answerer). A question
    answered already is refused (exit 2) unless `--replace` is given."""
    from engine.ask import answer_step

    earlier: list[dict[str, Any]] = []

    def here(cfg: Any) -> Any:
        event = answer_step(cfg, run_id, step, text, by=by, replace=replace)
        if isinstance(event.get("replaced"), dict):  # looked at under the answer lock
            earlier.append(event["replaced"])
        return event

    event = where.act(lambda remote: remote.answer(run_id, step, text, replace=replace), here)
    replaced = ""
    if earlier:  # the last answer is the one sent: say that it replaced the one before
        was = earlier[0]
        replaced = (
            f" (this replaces the earlier answer {str(was.get('answer'))[:80]!r} by "
            f"{was.get('by') or 'someone'})"
        )
    said = (
        f"answered `{step}`; the server continues run {run_id}."
        if where.server
        else f"answered `{step}`{replaced}; {_next_of(where, run_id, 'continue with')}"
    )
    if not as_json:
        click.echo(said)
        return 0
    if isinstance(event, dict) and isinstance(event.get("answer"), dict):
        event = event["answer"]  # the server's answer wraps the event
    ev = event if isinstance(event, dict) else {}
    dump(
        {
            "runId": run_id,
            "step": step,
            "answer": ev.get("answer", text),
            "by": ev.get("by"),
            "at": ev.get("at"),
            "replaced": (
                {"answer": earlier[0].get("answer"), "by": earlier[0].get("by")}
                if earlier
                else None
            ),
            "next": said,
        }
    )
    return 0


@workflow.command("reject")
@click.argument("run_id")
@click.argument("step")
@click.option(
    "--reason",
    required=True,
    type=NonEmpty("say why the gate is rejected"),
    help="Why (recorded; dependents are skipped).",
)
@json_option
@where_options
def workflow_reject_cmd(run_id: str, step: str, reason: str, as_json: bool, where: Where) -> int:
    """Reject the gate of STEP in a parked run (then `workflow resume` to close it)."""
    return _decide(
        where,
        run_id,
        step,
        as_json,
        approved=False,
        reason=reason,
        value=None,
        served=f"rejected `{step}`; the server concludes run {run_id}.",
        then="finish the run with",
    )


@workflow.command("cancel")
@click.argument("run_id")
@json_option
@where_options
def workflow_cancel_cmd(run_id: str, as_json: bool, where: Where) -> int:
    """Cancel a run: stop dispatching, release what it holds, record `cancelled`."""
    from engine.runs import cancel_run
    from engine.states import RunState

    state = where.act(
        lambda remote: remote.cancel(run_id),
        lambda cfg: cancel_run(cfg, run_id),
    )
    if state is RunState.RUNNING:
        said = f"cancel requested; the process running {run_id} stops within a second."
    else:
        said = f"cancelled {run_id}."
    if as_json:  # `cancelled`: recorded now; else the running process records it
        dump(
            {
                "runId": run_id,
                "cancelled": state is not RunState.RUNNING,
                "status": state.value,
                "message": said,
            }
        )
    else:
        click.echo(said)
    return 0


@workflow.command("status")
@click.argument("run_id")
@json_option
@where_options
def workflow_status_cmd(run_id: str, as_json: bool, where: Where) -> int:
    """Show the steps of a run, and why a waiting step waits."""
    from engine.progress import summary_table
    from engine.runs import run_status

    status = where.act(
        lambda remote: remote.status(run_id),
        lambda cfg: run_status(cfg, run_id, cf=config_flag(cfg)),
    )
    if as_json:
        dump(status)
        return 0
    runner = _runner(status, where.server, "" if where.server else _owner(where, run_id))
    click.echo(f"{run_id}: {status['workflow']} — {_shown_status(status)}{runner}")
    parent = status.get("parent")
    if isinstance(parent, dict):
        click.echo(f"child run of `{parent.get('run_id')}` (its step `{parent.get('step')}`)")
    click.echo(summary_table(status, waiting=True))
    for warning in status.get("warnings") or ():  # journal lines replay skipped
        say(f"warning: {warning}", err=True)
    return 0


def _shown_status(row: dict[str, Any]) -> str:
    """A run's status in words: its ``status``, or, for a parked run whose gates and
    questions are all decided (``decided``: engine.runs.admin.decided), e.g. ``approved,
    waiting for resume``."""
    if row.get("decided"):
        return f"{row['decided']}, waiting for resume"
    return str(row["status"])


def _runner(status: dict[str, Any], server: str | None, owner: str = "") -> str:
    """Who runs it, as `` (…)``: this host's process, or the server that owns the run
    (``owner``: ``_owner``'s words for a local look at it); nothing once the run has
    finished (or is damaged: engine.runs.replay.journal_damage): no one resumes it."""
    if status["status"] in ("complete", "failed", "cancelled", "damaged"):
        return ""
    if server:
        return f" (the server {server} runs it)"
    if owner:
        return f" ({owner})"
    return " (running now)" if status["live"] else " (no process running it)"


def _owner(where: Where, run_id: str) -> str:
    """The live `orchestrate serve` that owns a run of this host (``engine.serve.run_owner``)
    in words, ``""`` when there is none (or the CLI acts through a server)."""
    from engine.serve import run_owner

    if where.server:
        return ""
    owner = run_owner(load(where.config).handoffs_dir, run_id)
    if owner is None:
        return ""
    url = f" {owner['url']}" if owner.get("url") else ""
    return f"the server{url} (pid {owner.get('pid')}) owns it; it continues by itself"


def _next_of(where: Where, run_id: str, verb: str) -> str:
    """What comes after a local decision or answer: nothing to do when a live server owns
    the run (``_owner``); wait for the process that holds its lock; else
    ``{verb}: workflow resume RUN``."""
    from engine.store import open_store

    if where.server:
        return ""
    cfg = load(where.config)
    cf = config_flag(cfg)
    if owner := _owner(where, run_id):
        return f"{owner} (see: workflow status {run_id}{cf})"
    from engine.runs.admin import resume_inputs

    store = open_store(cfg)
    again = resume_inputs(store.read_run(run_id))  # `-i NAME=VALUE` for its secret inputs
    if store.claimed(run_id):
        return (
            f"a process is executing run {run_id} right now; once it stops (see: workflow "
            f"status {run_id}{cf}), {verb}: workflow resume {run_id}{again}{cf}"
        )
    return f"{verb}: workflow resume {run_id}{again}{cf}"


@workflow.command("runs")
@int_option("--limit", low=1, high=10000, default=20, help="How many runs to list, newest first.")
@json_option
@where_options
def workflow_runs_cmd(limit: int, as_json: bool, where: Where) -> int:
    """List recent runs, newest first (with `--server`, the server's)."""
    from engine.runs import list_runs

    problems: list[str] = []
    rows = where.act(
        lambda remote: remote.runs(limit),
        lambda cfg: list_runs(cfg, limit=limit, problems=problems, damaged=True),
    )
    for problem in problems:  # a damaged run: its paragraph, the others still listed
        click.echo(f"error: {problem}", err=True)
    if as_json:
        dump(rows)
        return 0
    if not rows:
        click.echo("no workflow runs yet.")
        return 0
    from engine.progress import runs_table

    click.echo(runs_table([{**r, "status": _shown_status(r)} for r in rows]))
    return 0


@workflow.command("list")
@json_option
@config_option
def workflow_list_cmd(as_json: bool, config: str | None) -> int:
    """List the workflow templates that can be run by name."""
    from engine.workflow import list_workflows, missing_dir_warnings

    cfg = load_optional(config)
    for warning in missing_dir_warnings(cfg):
        say(f"warning: {warning}", err=True)
    rows = list_workflows(cfg)
    if as_json:
        dump([{"name": n, "path": str(p), "description": d} for n, p, d in rows])
        return 0
    width = max((len(n) for n, _, _ in rows), default=4)
    for name, path, desc in rows:
        click.echo(f"{name:<{width}}  {desc}  ({path})")
    return 0


@workflow.command("validate")
@click.argument("name")
@input_option
@caller_option
@json_option
@config_option
def workflow_validate_cmd(
    name: str, inputs: tuple[str, ...], caller: str | None, as_json: bool, config: str | None
) -> int:
    """Check a template against the config (agents, ACL, graph, templates) without running."""
    from engine.errors import OrchestratorError

    try:
        with collector_paused():
            from engine.prepare import prepare
            from engine.workflow import find_workflow, load_workflow, parse_inputs

            cfg = load(config)
            given = parse_inputs(list(inputs))
            spec = load_workflow(find_workflow(name, cfg))
            for key, inp in spec.inputs.items():  # placeholders for required inputs not given
                if inp.required and key not in given:
                    given[key] = f"<{key}>"
            prepared = prepare(cfg, str(spec.path), given, caller=caller, spec=spec)
    except OrchestratorError as exc:
        if not as_json:
            raise
        fail(exc, as_json=True, more={"ok": False, "workflow": name})
    from engine.workflow import brace_warnings

    warnings = brace_warnings(spec)
    for warning in warnings:
        say(f"warning: {warning}", err=True)
    plan = prepared.plan
    steps, groups = len(plan.steps), len(plan.groups)
    if as_json:
        dump(
            {
                "ok": True,
                "workflow": spec.name,
                "path": str(spec.path),
                "caller": plan.caller,
                "steps": [sid for group in plan.groups for sid in group],
                "groups": [list(g) for g in plan.groups],
                "warnings": warnings,
                "problems": [],
            }
        )
        return 0
    click.echo(
        f"`{spec.path}` is valid: {steps} step{'s' * (steps != 1)} in {groups} "
        f"group{'s' * (groups != 1)}, caller `{plan.caller}`."
    )
    return 0


@workflow.command("graph")
@click.argument("name")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["mermaid", "dot"]),
    default="mermaid",
    show_default=True,
    help="mermaid (Markdown renders it) or dot (Graphviz: `dot -Tsvg`).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the nodes and edges as JSON (with the drawing in `text`).",
)
@config_option
def workflow_graph_cmd(name: str, fmt: str, as_json: bool, config: str | None) -> int:
    """Print the step graph as Mermaid or Graphviz dot (gates drawn distinctly).

    A template whose graph is wrong (a repeated step id, an unknown dependency, a cycle)
    is refused with every problem (exit 2), as `workflow validate` refuses it."""
    from engine.planview import graph_dict, graph_text
    from engine.workflow import find_workflow, load_workflow

    spec = load_workflow(find_workflow(name, load_optional(config)))
    if as_json:
        dump(graph_dict(spec, fmt))
    else:
        click.echo(graph_text(spec, fmt))
    return 0


def workflow_main() -> None:
    """Entry point of the `workflow` console script."""
    try:
        workflow.main(prog_name="workflow")
    finally:
        exiting()


@workflow.command("test")
@click.argument("name", required=False)
@click.option(
    "--fixtures",
    "fixtures",
    required=True,
    type=non_empty_path("give the fixtures directory", file_okay=False, path_type=str),
    metavar="DIR",
    help="Fixture files: <step>.json|.yaml, gates.yaml, inputs.yaml (with --record: "
    "where to write them).",
)
@input_option
@caller_option
@click.option(
    "--expect",
    type=non_empty_path("give the path of the expected-result file", dir_okay=False, path_type=str),
    metavar="FILE",
    help="Check the run against FILE ({status, steps: {id: status}, outputs}); exit 1 "
    "when something differs.",
)
@click.option(
    "--record",
    metavar="RUN",
    type=NonEmpty("give the id of a past run"),
    help="Write fixtures from past run RUN instead.",
)
@json_option
@config_option
def workflow_test_cmd(
    name: str | None,
    fixtures: str,
    inputs: tuple[str, ...],
    caller: str | None,
    expect: str | None,
    record: str | None,
    as_json: bool,
    config: str | None,
) -> int:
    """Run workflow NAME offline: each step's handoff comes from a fixture; nothing is sent."""
    from pathlib import Path

    from engine.errors import UsageError
    from engine.fixtures import (
        check_expectations,
        check_fixtures_dir,
        load_expectations,
        run_fixtures,
    )
    from engine.workflow import parse_inputs

    cfg = load(config)
    if record is not None:
        return _record(cfg, record, Path(fixtures), name)
    if name is None:
        raise UsageError("`workflow test` needs a workflow NAME (or `--record RUN`).")
    check_fixtures_dir(Path(fixtures))  # a missing folder first, not its `--expect` file
    expected = load_expectations(Path(expect)) if expect else None
    report = run_fixtures(
        cfg,
        name,
        Path(fixtures),
        inputs=parse_inputs(list(inputs)),
        caller=caller,
        expect=Path(expect) if expect else None,
    )
    misses = check_expectations(report, expected) if expected is not None else []
    if as_json:
        dump({**report.as_dict(), **({"expectations": misses} if expected is not None else {})})
    else:
        click.echo(_fixture_report(report.as_dict()))
        if expected is not None:
            click.echo(
                f"\nexpectations of `{expect}`: "
                + ("all met." if not misses else f"{len(misses)} not met:")
            )
            for miss in misses:
                click.echo(f"  ✘ {miss}")
    if expected is not None:
        return 1 if misses else 0
    return int(report.exit_code)


def _record(cfg: Any, run_id: str, directory: Any, name: str | None) -> int:
    import shlex

    from engine.errors import UsageError
    from engine.fixtures import record_fixtures
    from engine.runs import replay_run, run_dir, workflow_ref
    from engine.store import open_store

    store = open_store(cfg)
    run_dir(cfg, run_id, store=store)
    view = replay_run(store, run_id)
    workflow_name = str(view.meta.get("workflow"))
    ref = workflow_ref(view.meta)
    if name is not None and not _same_workflow(cfg, name, view.meta):
        started = f" (started as {ref})" if ref != workflow_name else ""
        raise UsageError(
            f"run `{run_id}` is of workflow `{workflow_name}`, not `{name}`{started}; leave "
            "NAME out, or give that workflow's name or path."
        )
    written = record_fixtures(view, directory, store)
    click.echo(f"wrote {len(written)} files to {directory} from run {run_id}:")
    for path in written:
        click.echo(f"  {path.name}")
    fixtures = shlex.quote(str(directory))
    expect = shlex.quote(str(Path(directory) / "expect.json"))
    click.echo(f"test with: workflow test {ref} --fixtures {fixtures} --expect {expect}")
    return 0


def _same_workflow(cfg: Any, name: str, meta: dict[str, Any]) -> bool:
    """True when NAME (a name or a path, as `workflow test` takes it) is the workflow run
    ``meta`` (``run.json``) was started with: its name, or a path to the same file."""
    from engine.errors import OrchestratorError
    from engine.workflow import find_workflow

    if name == meta.get("workflow"):
        return True
    recorded = meta.get("workflow_path")
    if not isinstance(recorded, str):
        return False
    try:
        found = find_workflow(name, cfg).resolve()
    except (OrchestratorError, OSError):
        return False
    return found == Path(recorded).expanduser().resolve()


def _fixture_report(data: dict[str, Any]) -> str:
    """The offline run for a person: each step's status and why, the run, the outputs."""
    icons = {
        "complete": "✔",
        "partial": "◐",
        "skipped": "↷",
        "waiting_approval": "⏸",
        "waiting_input": "?",
        "pending": "·",
    }

    lines = [
        f"Test of `{data['workflow']}` with the fixtures in `{data['fixtures']}`: nothing was sent."
    ]
    width = max((len(s) for s in data["steps"]), default=0)
    for sid, row in data["steps"].items():
        tries = f", {row['attempts']} attempts" if row["attempts"] > 1 else ""
        fixture = f"  [{row['fixture']}{tries}]" if row["fixture"] else ""
        why = f": {row['why']}" if row["why"] else ""
        icon = icons.get(row["status"], "✘")
        lines.append(f"  {icon} {sid:<{width}}  {row['status']}{why}{fixture}")
    lines.append(f"run: {data['status']}")
    for name, value in data["outputs"].items():
        lines.append(f"\n## {name}\n{value}")
    return "\n".join(lines)
