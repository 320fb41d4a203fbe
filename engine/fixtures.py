"""Testing a workflow offline: every step's handoff from a fixture file, nothing dispatched.

``workflow test NAME --fixtures DIR`` runs the whole plan through the real runner
(conditions, failure paths, gates, retries, ``finally`` steps, outputs), but each
delegation is answered by a file of ``DIR`` instead of an agent; ``docs/workflows.md``
("Testing a workflow offline") describes the files::

    DIR/<step-id>.json|.yaml   the step's ending: a handoff's fields (``usage`` counts
                               against budgets), or {outcome: ...};
                               a list gives one ending per attempt (the last repeats)
    DIR/<step-id>.<i>.json     item ``i`` (from 0) of a ``for_each`` step, when it differs
    DIR/gates.json|.yaml       {step: approved | rejected | {decision, reason, input}}; a gate
                               without an answer takes its ``default`` (as if timed out)
    DIR/inputs.json|.yaml      default inputs (``--input`` wins)

    case = Path("tests/workflows/fixtures/material-trade-study/low-rejected")
    report = run_fixtures(cfg, "material-trade-study", case, inputs={})
    report.state, report.steps["audit"]["status"], report.outputs
    check_expectations(report, load_expectations(case / "expect.yaml"))  # [] when met

``record_fixtures`` writes such a directory from a real past run (and ``expect.json``,
what that run came to).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.delegate import DelegationRequest, DelegationResult, Delegator
from engine.errors import UsageError, did_you_mean
from engine.files import utcnow_iso
from engine.reporter import Reporter
from engine.states import Confidence, HandoffStatus, Outcome, RunState, StepState
from engine.store import FileRunStore, RunStore

if TYPE_CHECKING:
    from engine.config import Config
    from engine.runner import GateRequest
    from engine.runs import RunView

__all__ = [
    "FixtureSet",
    "TestReport",
    "check_expectations",
    "check_fixtures_dir",
    "load_expectations",
    "load_fixtures",
    "record_fixtures",
    "run_fixtures",
]

EXTENSIONS = (".json", ".yaml", ".yml")
#: Keys a step fixture may hold (one attempt's ending).
ENDING_KEYS = (
    "status",
    "outcome",
    "result",
    "confidence",
    "notes",
    "artifacts",
    "question",
    "validation",
    "data",
    "outputs",
    "usage",
)
#: Endings without a usable handoff that a fixture may name as ``outcome``.
FIXTURE_OUTCOMES = tuple(
    o.value
    for o in (Outcome.TIMEOUT, Outcome.UNUSABLE, Outcome.LOST, Outcome.INVALID, Outcome.ERRORED)
)
_STATUSES = tuple(s.value for s in HandoffStatus)
_CONFIDENCES = tuple(c.value for c in Confidence)
#: Keys of a fixture's ``usage`` (a handoff's, as budgets count it: engine.handoff).
_USAGE_KEYS = ("cost", "input_tokens", "output_tokens")
#: Files of a fixture directory that are not step fixtures.
SPECIAL = ("gates", "inputs", "expect")


def _read(path: Path, what: str = "fixture file") -> Any:
    """A JSON or YAML file's data (UsageError naming the file when it cannot be read).

    JSON is read as strictly as the YAML reader reads YAML (engine/yamlio.py): a key
    written twice in one object, ``NaN``/``Infinity``, a number too large to be finite
    and an integer of more than ``MAX_INT_DIGITS`` digits are refused, naming the key."""
    from engine.textio import read_text
    from engine.yamlio import parse_yaml

    text = read_text(path, error=UsageError, what=what)
    if path.suffix == ".json":
        try:
            return _strict_json(text)
        except _Refused as exc:
            raise UsageError(f"`{path}`: {exc}.", path=path) from None
        except (ValueError, RecursionError) as exc:
            raise UsageError(f"`{path}` is not valid JSON: {exc}.", path=path) from None
    data, problems = parse_yaml(text, source=path, error=UsageError)
    if problems:
        raise UsageError(f"`{path}` cannot be used:", path=path, problems=problems)
    return data


class _Refused(ValueError):
    """Valid JSON that a fixture may not hold (``_strict_json``); its text names the key."""


@dataclass(frozen=True)
class _BadNumber:
    """A number ``_strict_json`` refuses, kept until the object holding it names its key."""

    text: str
    why: str


def _strict_json(text: str) -> Any:
    """``json.loads`` refusing (``_Refused``) what engine/yamlio.py refuses in YAML: a key
    written twice, ``NaN``/``Infinity``, a number too large to be finite, an integer of
    more than ``MAX_INT_DIGITS`` digits; ValueError for text that is not JSON."""
    import math

    from engine.handoff import DuplicateKeyError, unique_keys
    from engine.yamlio import MAX_INT_DIGITS

    def constant(word: str) -> _BadNumber:
        return _BadNumber(word, "which JSON does not allow (only finite numbers)")

    def number(word: str) -> float | _BadNumber:
        value = float(word)
        if math.isinf(value):
            return _BadNumber(word, "a number too large to be finite")
        return value

    def integer(word: str) -> int | _BadNumber:
        if len(word.lstrip("-")) > MAX_INT_DIGITS:
            return _BadNumber(
                f"{word[:12]}…", f"an integer of more than {MAX_INT_DIGITS} digits"
            )
        return int(word)

    def check(value: Any, key: str | None) -> None:
        if isinstance(value, _BadNumber):
            where = f"`{key}` holds" if key is not None else "it holds"
            raise _Refused(
                f"{where} `{value.text}`, {value.why}; write a plain number, or quote the "
                "value as text"
            )
        if isinstance(value, list):
            for item in value:
                check(item, key)

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        try:
            data = unique_keys(items)
        except DuplicateKeyError as exc:
            raise _Refused(str(exc)) from None
        for key, value in items:
            check(value, key)
        return data

    data = json.loads(
        text, parse_constant=constant, parse_float=number, parse_int=integer,
        object_pairs_hook=pairs,
    )  # fmt: skip
    check(data, None)
    return data


def _kind(value: Any, path: Path) -> str:
    """What ``value`` is, in the words of the file's language: JSON's (null, an array, an
    object) for a ``.json`` file, YAML's (null, a list, a mapping) for a YAML one."""
    json_file = path.suffix == ".json"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "an array" if json_file else "a list"
    if isinstance(value, dict):
        return "an object" if json_file else "a mapping"
    return f"`{value}`"


def _a_mapping(path: Path) -> str:
    """A mapping, in the words of the file's language (``_kind``)."""
    return "an object" if path.suffix == ".json" else "a mapping"


def _find(directory: Path, stem: str) -> Path | None:
    for ext in EXTENSIONS:
        candidate = directory / f"{stem}{ext}"
        if candidate.is_file():
            return candidate
    return None


def _special(
    directory: Path, stem: str, problems: list[str], must: str
) -> tuple[Path, dict[Any, Any]] | None:
    """The special file ``stem`` of ``directory`` (``gates``, ``inputs``) and its mapping;
    None when there is none, or when it holds no mapping (then a problem saying what it
    ``must`` map is added)."""
    path = _find(directory, stem)
    if path is None:
        return None
    data = _read(path)
    if not isinstance(data, dict):
        problems.append(f"`{path}` must map {must}, not {_kind(data, path)}.")
        return None
    return path, data


@dataclass(frozen=True)
class FixtureSet:
    """The fixtures of one directory, checked: step endings, gate answers, inputs."""

    directory: Path
    #: Step id -> its endings, one per attempt (the last repeats), each a checked mapping.
    steps: dict[str, list[dict[str, Any]]] = field(hash=False)
    #: Step id -> the fixture file it came from.
    files: dict[str, Path] = field(hash=False)
    #: Step id -> ("approved" | "rejected", reason, {"input": value} or {}).
    gates: dict[str, tuple[str, str | None, dict[str, Any]]] = field(hash=False)
    inputs: dict[str, str] = field(hash=False)


def check_fixtures_dir(directory: Path) -> Path:
    """``directory`` when it is a folder; UsageError saying the ``--fixtures`` folder is
    missing (or is a file) otherwise."""
    directory = Path(directory)
    if directory.is_dir():
        return directory
    what = "is a file, not a folder" if directory.exists() else "does not exist"
    raise UsageError(
        f"the fixtures folder `{directory}` (`--fixtures`) {what}; give the folder that "
        "holds the step files (e.g. tests/workflows/fixtures/material-trade-study/high), or "
        "write one from a past run with `workflow test --record RUN --fixtures DIR`.",
        path=directory,
    )


def load_fixtures(
    directory: Path,
    step_ids: tuple[str, ...],
    *,
    expect: Path | None = None,
    input_names: tuple[str, ...] | None = None,
) -> FixtureSet:
    """Read and check every file of ``directory``; UsageError listing every problem.

    A file named for no step of the workflow is a problem (with the near miss), as is an
    ending with an unknown key, an unknown status, outcome or confidence, or both a
    ``status`` and an ``outcome``. ``expect``: the `--expect` file, whatever its name, is
    no fixture. ``input_names``: the workflow's inputs (an unknown one in the inputs file
    is a problem; None: not checked).
    """
    directory = check_fixtures_dir(directory)
    problems: list[str] = []
    steps: dict[str, list[dict[str, Any]]] = {}
    files: dict[str, Path] = {}
    skipped = _resolved(expect) if expect is not None else None
    for path in sorted(directory.iterdir()):
        if path.suffix not in EXTENSIONS or path.stem in SPECIAL or not path.is_file():
            continue
        if skipped is not None and _resolved(path) == skipped:
            continue
        step, dot, index = path.stem.rpartition(".")
        if not (dot and index.isdigit()):
            step = path.stem
        if step not in step_ids:
            problems.append(
                f"`{path}` is named for no step{did_you_mean(step, list(step_ids)) or '.'} "
                f"Steps: {', '.join(step_ids)}."
            )
            continue
        endings = _endings(path, _read(path), problems)
        key = f"{step}.{int(index)}" if step != path.stem else step
        if endings:
            steps[key], files[key] = endings, path
    gates = _gates(directory, step_ids, problems)
    inputs = _inputs(directory, problems, input_names)
    if problems:
        raise UsageError(f"the fixtures in `{directory}` cannot be used:", problems=problems)
    return FixtureSet(directory, steps, files, gates, inputs)


def _endings(path: Path, data: Any, problems: list[str]) -> list[dict[str, Any]]:
    items = data if isinstance(data, list) else [data]
    if not items:
        problems.append(f"`{path}` is an empty list; give at least one ending.")
    out = []
    for i, item in enumerate(items):
        where = f"`{path}`" + (f" item {i + 1}" if isinstance(data, list) else "")
        if not isinstance(item, dict):
            problems.append(
                f"{where} must be {_a_mapping(path)} (a handoff's fields, or `outcome`), "
                f"not {_kind(item, path)}."
            )
            continue
        before = len(problems)
        _check_ending(where, item, problems)
        if len(problems) == before:
            out.append(item)
    return out


def _check_ending(where: str, item: dict[str, Any], problems: list[str]) -> None:
    for key in item:
        if key not in ENDING_KEYS:
            problems.append(
                f"{where}: unknown key `{key}`{did_you_mean(str(key), ENDING_KEYS) or '.'} "
                f"A fixture holds: {', '.join(ENDING_KEYS)}."
            )
    if "status" in item and "outcome" in item:
        problems.append(
            f"{where} has both `status` (what the agent said) and `outcome` (an ending "
            "without a usable handoff); keep one."
        )
    for key, known in (
        ("status", _STATUSES),
        ("outcome", FIXTURE_OUTCOMES),
        ("confidence", _CONFIDENCES),
    ):
        value = item.get(key)
        if key in item and value not in known:
            problems.append(
                f"{where}: `{key}` is `{value}`{did_you_mean(str(value), known) or '.'} "
                f"It is one of: {', '.join(known)}."
            )
    _check_shapes(where, item, problems)
    validation = item.get("validation")
    if validation is not None and validation not in ("approved", "rejected"):
        problems.append(f"{where}: `validation` is `approved` or `rejected`.")


def _check_shapes(where: str, item: dict[str, Any], problems: list[str]) -> None:
    """Texts that must be text, and the lists and mappings of an ending."""
    for key in ("result", "notes", "question"):
        if key in item and not isinstance(item[key], str):
            problems.append(f"{where}: `{key}` must be text.")
    arts = item.get("artifacts", [])
    if not isinstance(arts, list) or not all(isinstance(a, str) for a in arts):
        problems.append(f"{where}: `artifacts` must be a list of paths.")
    outputs = item.get("outputs", {})
    if not isinstance(outputs, dict) or not all(isinstance(v, str) for v in outputs.values()):
        problems.append(f"{where}: `outputs` (a sub-workflow's) must map names to text.")
    usage = item.get("usage", {})
    if not isinstance(usage, dict) or not all(
        isinstance(v, int | float)
        and not isinstance(v, bool)
        and v >= 0
        and (k == "cost" or isinstance(v, int))
        for k, v in usage.items()
        if k in _USAGE_KEYS
    ):
        problems.append(
            f"{where}: `usage` (what the delegation spent, for budgets) maps `cost` (US "
            "dollars) and `input_tokens`, `output_tokens` (whole numbers) to numbers >= 0."
        )


def _gates(
    directory: Path, step_ids: tuple[str, ...], problems: list[str]
) -> dict[str, tuple[str, str | None, dict[str, Any]]]:
    found = _special(directory, "gates", problems, "step ids to `approved` or `rejected`")
    if found is None:
        return {}
    path, data = found
    gates: dict[str, tuple[str, str | None, dict[str, Any]]] = {}
    for step, answer in data.items():
        if step not in step_ids:
            problems.append(
                f"`{path}`: `{step}` is no step{did_you_mean(str(step), list(step_ids)) or '.'}"
            )
            continue
        decision, reason = (
            (answer.get("decision"), answer.get("reason"))
            if isinstance(answer, dict)
            else (answer, None)
        )
        if decision not in ("approved", "rejected"):
            problems.append(
                f"`{path}`: the answer for `{step}` is `approved`, `rejected`, or "
                "`{decision: rejected, reason: ...}`."
            )
            continue
        given = {"input": answer["input"]} if isinstance(answer, dict) and "input" in answer else {}
        gates[str(step)] = (str(decision), None if reason is None else str(reason), given)
    return gates


def _resolved(path: Path) -> Path | None:
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):
        return None


def _inputs(
    directory: Path, problems: list[str], names: tuple[str, ...] | None = None
) -> dict[str, str]:
    """The inputs file: names to values; a number or a boolean is taken as its text (as
    `--input q=1` gives it: ``1``, ``true``), as the inputs are elsewhere. An unknown
    name (when ``names`` are known) or a value that is no scalar is a problem."""
    found = _special(
        directory, "inputs", problems, "input names to values (text, numbers, booleans)"
    )
    if found is None:
        return {}
    path, data = found
    out: dict[str, str] = {}
    for key, value in data.items():
        name = str(key)
        if names is not None and name not in names:
            known = ", ".join(f"`{n}`" for n in names) or "none"
            problems.append(
                f"`{path}`: the workflow has no input `{name}`"
                f"{did_you_mean(name, list(names)) or '.'} Its inputs: {known}."
            )
        elif isinstance(value, str):
            out[name] = value
        elif isinstance(value, bool | int | float):
            out[name] = json.dumps(value)
        else:
            problems.append(
                f"`{path}`: input `{name}` must be text, a number or a boolean, not "
                f"{_kind(value, path)}."
            )
    return out


# --------------------------------------------------------------------------- the run


class FixtureDelegator(Delegator):
    """A delegator whose delegations are answered by fixtures: nothing is dispatched.

    The ACL and the registry are checked as for a real delegation; the handoff is the
    step's fixture (``engine.handoff`` fields filled in), and a step with no fixture ends
    ``errored`` with a sentence naming the files looked for.
    """

    def __init__(self, cfg: Config, fixtures: FixtureSet, store: FileRunStore) -> None:
        super().__init__(cfg, store=store)
        self.fixtures = fixtures
        self._steps_by_run: dict[str, str] = {}
        self._lock = threading.Lock()
        #: Step id -> the attempts answered so far.
        self.used: dict[str, int] = {}

    def delegate(
        self,
        req: DelegationRequest,
        *,
        reattach: bool = False,
        cancel: threading.Event | None = None,
        reporter: Reporter | None = None,
        interrupted: threading.Event | None = None,
    ) -> DelegationResult:
        """Answer ``req`` from the fixtures (the validator's request from the step's)."""
        self.check(req)
        run_id = str(req.run_id)
        validates = (req.labels or {}).get("validates")
        if validates is not None:
            return self._validation(req, run_id, str(validates))
        step = str((req.labels or {}).get("step"))
        item = (req.labels or {}).get("item")
        key = (
            f"{step}.{item}"
            if item is not None and f"{step}.{item}" in self.fixtures.steps
            else step
        )
        with self._lock:
            self._steps_by_run[run_id] = key
            n = self.used[run_id.rsplit("-", 1)[0]] = self.used.get(run_id.rsplit("-", 1)[0], 0) + 1
        endings = self.fixtures.steps.get(key)
        if not endings:
            names = [step] if item is None else [f"{step}.{item}", step]
            looked = ", ".join(f"`{n}{e}`" for n in names for e in EXTENSIONS)
            return self._result(
                req,
                run_id,
                {"outcome": "errored"},
                f"no fixture for step `{step}` in `{self.fixtures.directory}` (looked for "
                f"{looked})",
            )
        return self._result(req, run_id, endings[min(n, len(endings)) - 1], None)

    def _validation(self, req: DelegationRequest, run_id: str, of: str) -> DelegationResult:
        key = self._steps_by_run.get(of, "")
        endings = self.fixtures.steps.get(key) or [{}]
        last = endings[min(self.used.get(of.rsplit("-", 1)[0], 1), len(endings)) - 1]
        verdict = last.get("validation", "approved")
        text = (
            "APPROVED: from the fixture" if verdict == "approved" else "REJECTED: from the fixture"
        )
        return self._result(req, run_id, {"status": "complete", "result": text}, None)

    def _result(
        self, req: DelegationRequest, run_id: str, ending: dict[str, Any], error: str | None
    ) -> DelegationResult:
        now = utcnow_iso()
        outcome = Outcome(ending.get("outcome") or ending.get("status") or "complete")
        envelope = {
            "caller": req.caller,
            "target": req.target,
            "task": req.task,
            "outcome": outcome.value,
            "dispatched_at": now,
            "received_at": now,
            "duration_ms": 0.0,
            "token_wait_ms": 0.0,
            "fixture": True,
        }
        record: dict[str, Any] = {"envelope": envelope}
        if "outcome" not in ending:
            record.update(
                schemaVersion="1.0",
                runId=run_id,
                agent=req.target,
                status=outcome.value,
                result=ending.get("result", f"<fixture result of {req.target}>"),
                artifacts=list(ending.get("artifacts", [])),
                confidence=ending.get("confidence", "high"),
                notes=ending.get("notes", ""),
                timestamp=now,
                **({"question": ending["question"]} if "question" in ending else {}),
                **({"data": ending["data"]} if "data" in ending else {}),
                **({"usage": dict(ending["usage"])} if "usage" in ending else {}),
            )
        message = error or (
            f"the fixture says `{outcome.value}`"
            if not outcome.ok and "outcome" in ending
            else None
        )
        return DelegationResult(
            run_id=run_id,
            outcome=outcome,
            record_path=self.store.handoff_target(run_id, sub=False),
            record=record,
            error=UsageError(message) if message else None,
        )


@dataclass(frozen=True)
class TestReport:
    """What an offline run came to."""

    workflow: str
    fixtures: Path
    state: RunState
    exit_code: int
    #: Step id -> {status, why, fixture, attempts} in plan order.
    steps: dict[str, dict[str, Any]]
    outputs: dict[str, str]
    inputs: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "workflow": self.workflow,
            "fixtures": str(self.fixtures),
            "status": self.state.value,
            "inputs": self.inputs,
            "steps": self.steps,
            "outputs": self.outputs,
        }


def run_fixtures(
    cfg: Config,
    name_or_path: str,
    directory: Path,
    *,
    inputs: dict[str, str],
    caller: str | None = None,
    reporter: Reporter | None = None,
    expect: Path | None = None,
) -> TestReport:
    """Plan the workflow and run it offline with the fixtures of ``directory``
    (``expect``: the `--expect` file, which may lie in it under any name).

    Raises WorkflowError (the planner's problems) or UsageError (fixture problems) before
    anything runs; the run's records are kept in a temporary directory, removed after.
    """
    from engine.runner import RunOptions, WorkflowRunner, prepare
    from engine.workflow import find_workflow, load_workflow

    spec = load_workflow(find_workflow(name_or_path, cfg))
    fixtures = load_fixtures(
        directory, spec.step_ids, expect=expect, input_names=tuple(spec.inputs)
    )
    given = {**fixtures.inputs, **inputs}
    prepared = prepare(cfg, name_or_path, given, caller=caller)
    defaults = {
        sid: str(p.spec.gate.default)
        for sid, p in prepared.plan.steps.items()
        if p.spec.gate is not None and p.spec.gate.default is not None
    }
    scratch = Path(tempfile.mkdtemp(prefix="workflow-test-"))
    try:
        delegator = FixtureDelegator(cfg, fixtures, FileRunStore(scratch))
        try:
            runner = WorkflowRunner(
                cfg,
                delegator,
                reporter=reporter,
                approver=lambda req: _answer(fixtures, req, defaults),
                retry_wait=lambda cancel, seconds: False,  # no wait: nothing is sent
                child_runs=lambda sid, given: _child_run(fixtures, sid),
            )
            result = runner.start(prepared, RunOptions(caller=caller))
        finally:
            delegator.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return TestReport(
        workflow=spec.name,
        fixtures=Path(directory),
        state=result.state,
        exit_code=result.exit_code,
        steps=_step_rows(result.summary, fixtures),
        outputs=dict(result.summary.get("outputs") or {}),
        inputs=dict(prepared.plan.inputs),
    )


def _child_run(fixtures: FixtureSet, sid: str) -> dict[str, Any]:
    """What a sub-workflow step's child came to, from the step's fixture: its
    ``outputs``, and ``complete`` unless the fixture says ``status: failed`` (or another
    ending, or an ``outcome``)."""
    endings = fixtures.steps.get(sid)
    if not endings:
        raise UsageError(
            f"no fixture for the sub-workflow step `{sid}` in `{fixtures.directory}`: add "
            f"`{sid}.yaml` with the child's `outputs` (and `status: failed` for a failed child)."
        )
    ending = endings[0]
    ok = ending.get("status", "complete") in ("complete", "partial") and "outcome" not in ending
    return {
        "status": "complete" if ok else "failed",
        "outputs": dict(ending.get("outputs") or {}),
        "steps": {},
    }


def _answer(
    fixtures: FixtureSet, req: GateRequest, defaults: dict[str, str]
) -> str | tuple[str, Any] | None:
    answer = fixtures.gates.get(req.step)
    if answer is None and req.step in defaults:  # as if its timeout had passed
        return "approved" if defaults[req.step] == "approved" else ("rejected", "its default")
    if answer is None:
        return None  # parks: the report says the gate waits
    decision, reason, given = answer
    if decision == "approved":
        return ("approved", given["input"]) if "input" in given else "approved"
    return ("rejected", reason or "rejected (fixture)")


def _step_rows(summary: dict[str, Any], fixtures: FixtureSet) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for sid, st in summary.get("steps", {}).items():
        why = st.get("skip_reason") or st.get("error")
        gate = st.get("gate")
        if gate and not why:
            why = f"gate {gate.get('decision')}"
        if st["status"] == StepState.WAITING_APPROVAL.value:
            why = f"its gate has no answer in `{fixtures.directory}/gates.yaml`"
        path = fixtures.files.get(sid)
        rows[sid] = {
            "status": st["status"],
            "why": why,
            "fixture": path.name if path is not None and st.get("attempts") else None,
            "attempts": st.get("attempts", 0),
        }
    return rows


# --------------------------------------------------------------------------- expectations


def load_expectations(path: Path) -> dict[str, Any]:
    """An expectations file: ``{status?, steps?: {id: status}, outputs?: {name: text}}``."""
    data = _read(Path(path), what="expectations file (`--expect`)")
    problems = []
    if not isinstance(data, dict):
        raise UsageError(
            f"`{path}` must be {_a_mapping(Path(path))} with `status`, `steps` or `outputs`, "
            f"not {_kind(data, Path(path))}."
        )
    for key in data:
        if key not in ("status", "steps", "outputs"):
            problems.append(
                f"`{path}`: unknown key `{key}`"
                f"{did_you_mean(str(key), ['status', 'steps', 'outputs']) or '.'}"
            )
    for key in ("steps", "outputs"):
        if key in data and not isinstance(data[key], dict):
            problems.append(
                f"`{path}`: `{key}` must be {_a_mapping(Path(path))}, not "
                f"{_kind(data[key], Path(path))}."
            )
    if problems:
        raise UsageError(f"`{path}` cannot be used:", path=Path(path), problems=problems)
    return data


def check_expectations(report: TestReport, expected: dict[str, Any]) -> list[str]:
    """One sentence per expectation that does not hold (empty: all hold)."""
    out: list[str] = []
    status = expected.get("status")
    if status is not None and status != report.state.value:
        out.append(f"the run is `{report.state.value}`, expected `{status}`.")
    for sid, want in (expected.get("steps") or {}).items():
        row = report.steps.get(sid)
        if row is None:
            out.append(f"no step `{sid}`{did_you_mean(sid, list(report.steps)) or '.'}")
        elif row["status"] != want:
            why = f" ({row['why']})" if row.get("why") else ""
            out.append(f"step `{sid}` is `{row['status']}`{why}, expected `{want}`.")
    for name, want in (expected.get("outputs") or {}).items():
        got = report.outputs.get(name)
        if got is None:
            out.append(f"no output `{name}` (the run is `{report.state.value}`).")
        elif got != want:
            out.append(f"output `{name}` is {got!r}, expected {want!r}.")
    return out


# --------------------------------------------------------------------------- recording


def record_fixtures(view: RunView, directory: Path, store: RunStore) -> list[Path]:
    """Write fixtures (and ``expect.json``) from a past run; return the files written.

    Each step that ran gets its endings, one per attempt (earlier attempts as their
    outcome, the last with its handoff); each item of a ``for_each`` step its own
    ``<step>.<i>.json`` with its last ending; decided gates go to ``gates.json``, the run's
    inputs to ``inputs.json``, and what the run came to to ``expect.json``. Refuses a
    directory that already holds fixtures.
    """
    from engine.files import write_json_atomic

    _check_replayable(view)
    summary = _recorded_files(view)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    taken = [p.name for p in directory.iterdir() if p.suffix in EXTENSIONS]
    if taken:
        raise UsageError(
            f"`{directory}` already holds {', '.join(sorted(taken)[:5])}: record into an empty "
            "directory, so that no fixture is mixed with another run's."
        )
    written = []
    gates: dict[str, Any] = {}
    for sid, s in view.steps.items():
        data = store.read_step(view.run_id, sid)
        items = data.get("items") if isinstance(data, dict) else None
        if isinstance(items, list):
            for rec in items:
                ending = _item_ending(rec)
                if ending is not None:
                    path = directory / f"{sid}.{rec['index']}.json"
                    written.append(write_json_atomic(path, ending))
            continue
        endings = _recorded_endings(s)
        if endings:
            written.append(write_json_atomic(directory / f"{sid}.json", endings))
        if s.gate and s.gate.get("decision") in ("approved", "rejected"):
            gates[sid] = {"decision": s.gate["decision"], "reason": s.gate.get("reason")}
            if "input" in s.gate:
                gates[sid]["input"] = s.gate["input"]
    if gates:
        written.append(write_json_atomic(directory / "gates.json", gates))
    inputs = view.meta.get("inputs")
    if isinstance(inputs, dict) and inputs:
        written.append(write_json_atomic(directory / "inputs.json", inputs))
    outputs = summary.get("outputs") if isinstance(summary.get("outputs"), dict) else {}
    expect = {
        "status": view.state.value,
        "steps": {sid: s.state.value for sid, s in view.steps.items()},
        **({"outputs": outputs} if outputs else {}),
    }
    written.append(write_json_atomic(directory / "expect.json", expect))
    return written


#: Run states whose replay does not come to what the run came to, and why.
_NOT_REPLAYABLE = {
    RunState.RUNNING: "is still `running` (or its process died): it has not come to an end "
    "yet. Wait for it, or resume it (`workflow resume {run}`), then record it.",
    RunState.WAITING_APPROVAL: "is parked at a gate (`waiting_approval`{gates}): a replay "
    "runs on past the gate, so the expectations would not hold. Resume it (`workflow "
    "resume {run}`) so that it ends, then record it.",
    RunState.WAITING_INPUT: "is waiting for an answer (`waiting_input`): a replay would "
    "not stop where it stopped. Answer and resume it (`workflow resume {run}`), then "
    "record it.",
    RunState.CANCELLED: "was `cancelled`: a replay runs every step to its end, so the "
    "expectations would not hold. Record a run that ended by itself (complete or failed).",
}


def _check_replayable(view: RunView) -> None:
    """``UsageError`` when the run has not ended by itself (``_NOT_REPLAYABLE``): fixtures
    recorded from it would replay to something else than its ``expect.json``."""
    why = _NOT_REPLAYABLE.get(view.state)
    if why is None:
        return
    decided = [
        f"`{sid}` {s.gate['decision']}"
        for sid, s in view.steps.items()
        if s.gate and s.gate.get("decision") in ("approved", "rejected")
    ]
    gates = f"; decided but not resumed: {', '.join(decided)}" if decided else ""
    raise UsageError(
        f"run `{view.run_id}` cannot be recorded as fixtures: it "
        + why.format(run=view.run_id, gates=gates)
        + " Nothing was written."
    )


def _recorded_files(view: RunView) -> dict[str, Any]:
    """The run's ``summary.json`` (``{}`` when there is none), after checking it and each
    step's ``<step>.json`` are readable JSON objects; ``UsageError`` naming every damaged
    file (and what is wrong with it) otherwise, before anything is written."""
    from engine.record import read_json_checked

    problems: list[str] = []
    files = [view.path / "summary.json", *(view.path / f"{sid}.json" for sid in view.steps)]
    summary: dict[str, Any] = {}
    for path in files:
        data, problem = read_json_checked(path)
        if problem is None and data is not None and not isinstance(data, dict):
            problem = f"not an object: the JSON is {_kind(data, path)}"
        if problem is not None:
            problems.append(f"`{path}`: {problem}.")
        elif path.name == "summary.json" and isinstance(data, dict):
            summary = data
    if problems:
        raise UsageError(
            f"run `{view.run_id}` cannot be recorded as fixtures: "
            + ("a file of it is" if len(problems) == 1 else "files of it are")
            + " damaged. Restore "
            + ("it" if len(problems) == 1 else "them")
            + " from a backup, or record another run; nothing was written.",
            path=view.path,
            problems=problems,
        )
    return summary


def _item_ending(rec: Any) -> dict[str, Any] | None:
    """One item of a ``for_each`` step as a fixture (its last ending)."""
    if not isinstance(rec, dict) or not isinstance(rec.get("index"), int):
        return None
    h = rec.get("handoff")
    if isinstance(h, dict):
        keys = ("status", "result", "confidence", "notes", "artifacts", "data", "usage")
        return {k: h[k] for k in keys if k in h}
    status = rec.get("status")
    return {"outcome": status if status in FIXTURE_OUTCOMES else "errored"}


def _recorded_endings(s: Any) -> list[dict[str, Any]]:
    """A step's endings as fixtures: earlier attempts by outcome, the last in full."""
    if s.state in (StepState.SKIPPED, StepState.PENDING, StepState.REJECTED) or not s.attempts:
        return []
    if s.child_run_id:  # a sub-workflow step: what its child came to
        ok = s.state is StepState.COMPLETE
        return [
            {
                "status": "complete" if ok else "failed",
                "outputs": (s.handoff or {}).get("data") or {},
            }
        ]
    endings: list[dict[str, Any]] = []
    for attempt in s.attempts[:-1]:
        outcome = attempt.get("outcome")
        if outcome in _STATUSES:
            endings.append({"status": outcome})
        elif outcome in FIXTURE_OUTCOMES:
            endings.append({"outcome": outcome})
    h = s.handoff
    if h is not None:
        last: dict[str, Any] = {
            k: h[k]
            for k in (
                "status",
                "result",
                "confidence",
                "notes",
                "artifacts",
                "question",
                "data",
                "usage",
            )
            if k in h
        }
    elif s.state.value in FIXTURE_OUTCOMES:
        last = {"outcome": s.state.value}
    else:
        last = {"outcome": "errored"}
    if s.validation is not None:
        last["validation"] = "approved" if s.validation.get("approved") else "rejected"
    endings.append(last)
    return endings
