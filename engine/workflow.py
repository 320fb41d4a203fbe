"""Workflow templates: finding them, loading them and checking their shape (the spec).

A template is a YAML file ``workflows/<name>.yaml`` checked against
``schemas/workflow.schema.json``; ``docs/workflows.md`` describes it key by key. The
planner (``engine.dag``) checks what a template means; ``engine.renderer`` renders its
tasks, conditions, gate prompts and outputs in a sandbox::

    spec = load_workflow(find_workflow("quick-research", cfg))
    renderer = TaskRenderer(spec)
    ctx = render_context(inputs={"query": "CTE of ULE"}, steps={}, run_id="wf-1",
                         workflow=spec.name)
    renderer.render_task("research", ctx)
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import WorkflowError, did_you_mean
from engine.secretnames import secret_name

if TYPE_CHECKING:
    from engine.config import Config

#: Pattern for input names: identifiers, so that templates can write ``inputs.<name>``.
INPUT_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
#: Agent options a step (or ``defaults``) may set; passed to the hooks call.
OPTION_KEYS = ("deliver", "model", "thinking", "channel")
#: Where the shipped templates live inside the package.
SHIPPED_DIR = "workflows"
EXTENSIONS = (".yaml", ".yml")

# In Jinja2 ``steps.items`` is the dict method, not the step `items`: such ids are refused.
_RESERVED = frozenset(n for n in dir(dict) if not n.startswith("_"))


@dataclass(frozen=True)
class InputSpec:
    """A declared input: ``--input name=value`` on the command line."""

    name: str
    required: bool
    default: str | None
    description: str
    #: The whole value is a secret (masked in all a run writes, asked again on resume):
    #: ``secret: true``, or a name that says so (``engine.secretnames.secret_name``)
    #: without ``secret: false``. docs/workflows.md, "Inputs".
    secret: bool = False


@dataclass(frozen=True)
class GateSpec:
    """An approval gate before a step; ``when`` (an expression) limits when it fires."""

    prompt: str
    when: str | None = None
    #: Who may decide it through `orchestrate serve` (token names); empty: any operator.
    approvers: tuple[str, ...] = ()
    #: Seconds a parked gate waits; then ``default`` is decided (None: it waits forever).
    timeout: float | None = None
    #: ``approved`` or ``rejected``: the decision once ``timeout`` has passed.
    default: str | None = None
    #: The JSON Schema of the value an approver gives with an approval (None: no value).
    input_schema: dict[str, Any] | None = field(default=None, hash=False)


#: Names a ``for_each`` item may not take (``as:``): the context's own names.
RESERVED_ITEM_NAMES = frozenset({"inputs", "steps", "run", "loop", "range", "namespace"})
#: The most items one ``for_each`` may have.
MAX_ITEMS = 10_000

#: Step endings a retry policy may name in ``on`` (engine.states.StepState values).
RETRY_ON = ("failed", "timeout", "lost", "unusable", "invalid")
#: What ``retries: N`` retries: the agent said it failed, no handoff in time, or silent.
RETRY_ON_DEFAULT = ("failed", "timeout", "lost")


@dataclass(frozen=True)
class RetryPolicy:
    """When and how a step is sent again (``retry:``; ``retries: N`` is short for it).

    Retry number ``n`` (1 = the first) waits ``delay * backoff ** (n - 1)`` seconds, at
    most ``max_delay``, stretched by up to ``jitter`` (a fraction) at random, and never
    longer than the step's timeout. Example::

        RetryPolicy(max=3, delay=5.0, backoff=2.0, max_delay=60.0, jitter=0.2,
                    on=("failed", "timeout"))   # waits ~5, ~10, ~20 s
    """

    #: How many more times the step may be sent (0: never retried).
    max: int = 0
    #: Seconds before the first retry (0 retries at once).
    delay: float = 2.0
    #: Each next retry waits this many times longer.
    backoff: float = 2.0
    #: The longest wait, in seconds.
    max_delay: float = 60.0
    #: Up to this fraction is added to each wait, at random.
    jitter: float = 0.2
    #: The step endings that are retried (``RETRY_ON``).
    on: tuple[str, ...] = RETRY_ON_DEFAULT

    @classmethod
    def shorthand(cls, retries: int, delay: float) -> RetryPolicy:
        """The policy ``retries: N`` (with ``retry_delay``) stands for."""
        return cls(max=retries, delay=delay)


@functools.lru_cache(maxsize=64, typed=True)
def _shorthand(retries: int, delay: float) -> RetryPolicy:
    """``RetryPolicy.shorthand``, one (frozen) policy per value: most steps of a template
    share ``retries``/``retry_delay``, and a dry run asks every step's ``retry``."""
    return RetryPolicy.shorthand(retries, delay)


@dataclass(frozen=True)
class Budget:
    """What a run or a step may spend (``budget:``), counted from the handoffs' ``usage``.

    Example: ``Budget(usd=2.5, tokens=200_000)``; None means no limit of that kind.
    """

    usd: float | None = None
    tokens: int | None = None

    def spent_by(self, usd: float, tokens: int) -> str | None:
        """Why ``usd``/``tokens`` reach this budget (None: they do not)."""
        if self.usd is not None and usd >= self.usd:
            return f"${usd:.4g} of its ${self.usd:g}"
        if self.tokens is not None and tokens >= self.tokens:
            return f"{tokens} of its {self.tokens} tokens"
        return None


def _budget(raw: Any) -> Budget | None:
    if not isinstance(raw, dict):
        return None
    usd, tokens = raw.get("usd"), raw.get("tokens")
    return Budget(
        usd=None if usd is None else float(usd), tokens=None if tokens is None else int(tokens)
    )


@dataclass(frozen=True)
class StepSpec:
    """One step of a template, with the template's ``defaults`` already applied."""

    id: str
    agent: str | None
    capability: str | None
    task: str
    depends_on: tuple[str, ...] = ()
    when: str | None = None
    timeout: float | None = None
    retries: int = 0
    #: Seconds before the first retry; each next retry waits twice as long (plus jitter).
    retry_delay: float = 2.0
    #: Corrective messages when the agent ends without a usable handoff (None: the agent's).
    repair_attempts: int | None = None
    #: Seconds without progress after which the agent counts as lost (None: the agent's).
    heartbeat_timeout: float | None = None
    #: True: validated by the configured validator; a str: by that agent; False: not.
    validate: bool | str = False
    gate: GateSpec | None = None
    #: "stop" (dependents are skipped, the run fails) or "continue".
    on_failure: str = "stop"
    #: Agent options for the hooks call: deliver, model, thinking, channel (when set).
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    #: When and how the step is sent again; ``retries`` and ``retry_delay`` are its
    #: ``max`` and ``delay`` (None: the shorthand of those two).
    retry_policy: RetryPolicy | None = None
    #: An expression whose value the step runs once per item of (None: once).
    for_each: str | None = None
    #: The name templates read the item as (``as:``).
    item_name: str = "item"
    #: How a text value is cut into items: a separator, or ``lines``.
    split: str = ","
    #: Items in flight at once (None: as many as the run allows).
    max_parallel: int | None = None
    #: The JSON Schema the handoff's ``data`` must match (None: no structured result).
    result_schema: dict[str, Any] | None = field(default=None, hash=False)
    #: What the step may spend on its attempts, repairs and items (None: no limit).
    budget: Budget | None = None
    #: True for a step of the template's ``finally`` list: it runs once every step of
    #: ``steps`` has ended, whatever happened (docs/workflows.md, "Failure paths").
    always: bool = False
    #: A sub-workflow step: the workflow (a NAME or a PATH) run as a child run, whose
    #: outputs become the step's result (docs/workflows.md, "Sub-workflows").
    workflow: str | None = None
    #: With ``workflow``: the child's inputs, as templates rendered with the step's context.
    workflow_inputs: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def retry(self) -> RetryPolicy:
        """The step's retry policy (``retry:``, or what ``retries``/``retry_delay`` say)."""
        if self.retry_policy is not None:
            return self.retry_policy
        return _shorthand(self.retries, self.retry_delay)


@dataclass(frozen=True)
class WorkflowSpec:
    """A loaded, schema-valid workflow template."""

    name: str
    description: str
    version: str
    caller: str | None
    inputs: dict[str, InputSpec] = field(hash=False)
    defaults: dict[str, Any] = field(hash=False)
    steps: tuple[StepSpec, ...]
    #: Output name -> Jinja2 template rendered when the run ends.
    outputs: dict[str, str] = field(hash=False)
    path: Path
    #: The file's exact text, for fingerprints.
    source_text: str = field(repr=False)
    #: Seconds the whole run may take from its start (None: no deadline).
    deadline: float | None = None
    #: What the whole run may spend (None: no limit).
    budget: Budget | None = None

    @property
    def step_ids(self) -> tuple[str, ...]:
        """Step ids in template order, ``finally`` steps last (duplicates included)."""
        return tuple(s.id for s in self.steps)

    @property
    def secret_inputs(self) -> frozenset[str]:
        """The inputs whose whole value is a secret (``InputSpec.secret``)."""
        return frozenset(n for n, i in self.inputs.items() if i.secret)

    @property
    def finally_ids(self) -> tuple[str, ...]:
        """The ids of the ``finally`` steps, in template order."""
        return tuple(s.id for s in self.steps if s.always)

    def step(self, step_id: str) -> StepSpec:
        """Return the first step with id ``step_id``, or raise WorkflowError."""
        for s in self.steps:
            if s.id == step_id:
                return s
        raise WorkflowError(
            f"`{self.name}` has no step `{step_id}`{did_you_mean(step_id, self.step_ids)}",
            path=self.path,
            step=step_id,
        )


# --------------------------------------------------------------------------- finding


def shipped_workflows_dir() -> Path:
    """The directory of the templates shipped inside the package."""
    from importlib import resources

    return Path(str(resources.files("engine").joinpath(SHIPPED_DIR)))


def search_path(cfg: Config | None) -> tuple[Path, ...]:
    """Where names are looked up, first match wins: ./workflows, configured, shipped.

    A directory that is the shipped one under another name (the repository's top-level
    ``workflows/`` links into the package) is left out: its templates are the shipped
    ones, not the user's own.
    """
    shipped = shipped_workflows_dir()
    dirs = [Path.cwd() / "workflows"]
    if cfg is not None:
        dirs.extend(cfg.workflow_dirs)
    return (*(d for d in dirs if not _same_dir(d, shipped)), shipped)


def missing_dir_warnings(cfg: Config | None) -> list[str]:
    """One line per ``workflow_dirs`` entry of ``cfg`` that is not a directory (missing,
    or a file): its templates cannot be found by name, which is otherwise silent."""
    if cfg is None:
        return []
    out: list[str] = []
    for i, d in enumerate(cfg.workflow_dirs):
        if d.is_dir():
            continue
        what = "is not a directory" if os.path.lexists(d) else "does not exist"
        out.append(
            f"`workflow_dirs` entry `{d}` (`workflow_dirs[{i}]` of `{cfg.label}`) {what}; "
            "its templates cannot be found by name. Fix the path (relative to the config "
            "file) or remove the entry."
        )
    return out


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # missing, unreadable, or a name with a NUL
        return False


def _looks_like_path(text: str) -> bool:
    return "/" in text or os.sep in text or text.endswith(EXTENSIONS)


def _files_in(directory: Path) -> Iterator[Path]:
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return
    for p in entries:
        if p.suffix in EXTENSIONS and p.is_file():
            yield p


def find_workflow(name_or_path: str, cfg: Config | None) -> Path:
    """Return the template file for a name (see ``search_path``) or an existing path.

    A value containing ``/`` or ending in ``.yaml``/``.yml`` is a path; anything else is a
    name. Raises WorkflowError naming the places searched and the closest known name.
    """
    text = str(name_or_path)
    if _looks_like_path(text):
        candidate = Path(text).expanduser()
        if candidate.is_dir():
            raise WorkflowError(
                f"`{text}` is a directory; give a workflow file or a name.", path=candidate
            )
        if os.path.lexists(candidate):
            return candidate  # load_workflow names a FIFO or a device as such
        raise WorkflowError(f"workflow file `{text}` does not exist.", path=candidate)
    dirs = search_path(cfg)
    for directory in dirs:
        for ext in EXTENSIONS:
            candidate = directory / f"{text}{ext}"
            try:
                if candidate.is_file():
                    return candidate
            except OSError:  # a name too long for a file name (ENAMETOOLONG): no such file
                continue
    known = sorted({p.stem for d in dirs for p in _files_in(d)})
    looked = ", ".join(f"`{d}`" for d in dirs)
    listed = ", ".join(f"`{k}`" for k in known) or "none"
    missing = "".join(f" Note: {w}" for w in missing_dir_warnings(cfg))
    raise WorkflowError(
        f"no workflow `{text}`{did_you_mean(text, known) or '.'} Looked in {looked}. "
        f"Known workflows: {listed}.{missing}"
    )


def load_child_workflow(name_or_path: str, parent: Path, cfg: Config | None) -> WorkflowSpec:
    """The template a sub-workflow step names, loaded: a NAME is found as ``workflow run``
    finds it (``find_workflow``); a relative PATH is relative to the directory of the
    parent template ``parent``. Raises WorkflowError (not found, not valid)."""
    text = str(name_or_path)
    if _looks_like_path(text) and not Path(text).expanduser().is_absolute():
        text = str(parent.parent / text)
    return load_workflow(find_workflow(text, cfg))


def list_workflows(cfg: Config | None) -> list[tuple[str, Path, str]]:
    """Return ``(name, path, description)`` of every findable template, sorted by name.

    A name found in an earlier directory of ``search_path`` shadows the same name later.
    The description is the first line of the file's ``description`` (or a note when the
    file cannot be parsed; ``load_workflow`` says why).
    """
    found: dict[str, tuple[str, Path, str]] = {}
    for directory in search_path(cfg):
        for path in _files_in(directory):
            if path.stem in found:
                continue
            found[path.stem] = (path.stem, path, _description_of(path))
    return [found[k] for k in sorted(found)]


def _description_of(path: Path) -> str:
    from engine.textio import read_text

    try:
        raw, _ = _parse_yaml(read_text(path, error=WorkflowError), path)
    except WorkflowError:
        return "(cannot be read: run `workflow validate` on it)"
    desc = raw.get("description") if isinstance(raw, dict) else None
    if not isinstance(desc, str) or not desc.strip():
        return ""
    return desc.strip().splitlines()[0]


# --------------------------------------------------------------------------- loading


def parse_inputs(pairs: list[str]) -> dict[str, str]:
    """Turn ``["k=v", ...]`` into a mapping; the value may itself contain ``=``.

    Raises WorkflowError for a pair without ``=``, an empty name, or a name given twice.
    """
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise WorkflowError(
                f'`--input {pair}` must look like `name=value` (e.g. `--input query="CTE of ULE"`).'
            )
        if name in out:
            raise WorkflowError(f"input `{name}` is given twice; pass each `--input` once.")
        from engine.textio import check_text

        check_text(name, what="an `--input` name", error=WorkflowError)
        check_text(value, what=f"the value of `--input {name}`", error=WorkflowError)
        out[name] = value
    return out


def _parse_yaml(text: str, path: Path) -> tuple[Any, list[str]]:
    """Parse YAML text strictly (``engine.yamlio``); return the data and duplicate keys."""
    from engine.yamlio import parse_yaml

    return parse_yaml(text, source=path, error=WorkflowError)


def load_workflow(path: Path) -> WorkflowSpec:
    """Read, parse and validate a template file; every problem of the file is reported.

    Raises WorkflowError (``problems`` lists each one, naming the key) when the file cannot
    be read, is not YAML, or breaks the schema. What the steps *mean* (references, cycles,
    agents, ACL) is checked by ``engine.dag.plan_workflow``.
    """
    from engine.textio import read_text

    path = Path(path)
    text = read_text(path, error=WorkflowError, what="workflow file")
    raw, duplicates = _parse_yaml(text, path)
    return workflow_from_dict(raw, path=path, source_text=text, extra_problems=duplicates)


def workflow_from_dict(
    raw: Any,
    *,
    path: Path,
    source_text: str = "",
    extra_problems: list[str] | None = None,
) -> WorkflowSpec:
    """Validate a parsed template mapping and build the ``WorkflowSpec`` (defaults applied)."""
    from engine.schemas import schema_problems
    from engine.yamlio import explain_types

    if not isinstance(raw, dict):
        raise WorkflowError(
            f"`{path}` must be a mapping with at least `name` and `steps` keys.", path=path
        )
    problems = list(extra_problems or [])
    schema_lines = _seed_advice(explain_types(schema_problems("workflow", raw), raw), raw)
    problems += _label_steps(schema_lines, raw)
    problems += _semantic_problems(raw, source_text)
    if problems:
        raise WorkflowError(f"`{path}` is not a valid workflow:", path=path, problems=problems)
    return _build_spec(raw, path=path, source_text=source_text)


#: Keys of the seeds' hand-written pipelines, and what to do instead: a step key -> advice.
SEED_STEP_KEYS = {
    "parallel": "steps without `depends_on` on each other already run in parallel (a step "
    "waits only for its `depends_on`); remove it",
    "approval_gate": 'to pause for a person before the step, write `gate: {prompt: "Approve?"}` '
    "(docs/workflows.md, 'Approval gates')",
}
#: The shape of ``inputs`` the schema wants, for a template that gives a list (seed form).
INPUTS_SHAPE = "{name: {required: true, default: …}}"


def _seed_advice(problems: list[str], raw: dict[str, Any]) -> list[str]:
    """Replace the schema's line for a seed pipeline's key (``SEED_STEP_KEYS``, ``inputs``
    as a list) by one that says what to write instead. The schema's line for `blocked` in
    ``retry.on`` (which lists ``RETRY_ON``) is left out: ``_retry_problems`` says why a
    blocked step is not retried."""
    out = []
    for line in problems:
        if re.search(r"retry\.on\[\d+\]`: `blocked` is not one of ", line):
            continue
        line = _when_advice(line, raw)
        m = re.match(r"`((?:steps|finally)\[\d+\])\.([A-Za-z_]+)` is not a known key", line)
        if m and m.group(2) in SEED_STEP_KEYS:
            line = f"`{m.group(1)}.{m.group(2)}` is not a key: {SEED_STEP_KEYS[m.group(2)]}."
        elif line.startswith("`inputs` must be an object") and isinstance(raw.get("inputs"), list):
            names = [n for n in raw["inputs"] if isinstance(n, str)][:2] or ["design"]
            example = ", ".join(f"{n}: {{required: true}}" for n in names)
            line = (
                f"`inputs` must be a mapping of input names, not a list: "
                f"`inputs: {INPUTS_SHAPE}`, e.g. `inputs: {{{example}}}`."
            )
        out.append(line)
    return out


def _when_advice(line: str, raw: dict[str, Any]) -> str:
    """The schema's line for a ``when`` (or ``gate.when``) that YAML read as a boolean or a
    number (``when: true``), with the fix: quote it, or write an expression."""
    w = re.match(r"`((steps|finally)\[(\d+)\]\.(gate\.)?when)` must be a string\.$", line)
    group = raw.get(w.group(2)) if w else None
    if not w or not isinstance(group, list) or int(w.group(3)) >= len(group):
        return line
    step = group[int(w.group(3))]
    owner = step.get("gate") if isinstance(step, dict) and w.group(4) else step
    value = owner.get("when") if isinstance(owner, dict) else None
    if not isinstance(value, bool | int | float):
        return line
    shown = str(value).lower() if isinstance(value, bool) else str(value)
    kind = "a boolean" if isinstance(value, bool) else "a number"
    return (
        f"`{w.group(1)}` must be a string, a condition written as text (`when: {shown}` is "
        f'read as {kind}); quote it, `when: "{shown}"`, or write an expression, e.g. '
        "`when: steps.a.confidence == 'high'`."
    )


def _label_steps(problems: list[str], raw: dict[str, Any]) -> list[str]:
    """Prefix problems under ``steps[i]`` with the step's id, when it has one."""
    steps = raw.get("steps")
    if not isinstance(steps, list):
        return problems
    lists = {"steps": steps, "finally": raw.get("finally")}
    out = []
    for line in problems:
        m = re.match(r"`(steps|finally)\[(\d+)\]", line)
        group = lists.get(m.group(1)) if m else None
        if m and isinstance(group, list) and int(m.group(2)) < len(group):
            step = group[int(m.group(2))]
            sid = step.get("id") if isinstance(step, dict) else None
            if isinstance(sid, str):
                line = f"step `{sid}`: {line}"
        out.append(line)
    return out


def _written(text: str, key: str, value: float) -> str:
    """How the file ``text`` wrote the decimal number ``value`` of a ``key:`` (``0.10``,
    not Python's ``0.1``), so that the advice to quote it keeps it as written; Python's
    form when the text does not show it (a template built in code)."""
    for m in re.finditer(rf"\b{key}:[ \t]*([-+]?[0-9][0-9_.eE+-]*)[ \t]*(?=[,}}#\n]|$)", text):
        try:
            if float(m.group(1)) == value:
                return m.group(1)
        except ValueError:
            continue
    return str(value)


def _semantic_problems(raw: dict[str, Any], text: str = "") -> list[str]:
    """Cross-key checks the schema cannot express, reported with the schema's problems
    (``text``: the file's, to quote a value as it was written)."""
    problems: list[str] = []
    inputs = raw.get("inputs")
    if isinstance(inputs, dict):
        for name, spec in inputs.items():
            _input_problems(name, spec, problems, text)
    if isinstance(raw.get("defaults"), dict):
        _retry_problems("`defaults`", raw["defaults"], problems)
    if isinstance(raw.get("version"), float):
        problems.append(
            f"`version` is a decimal number, which YAML may not keep as written (`1.10` "
            f'becomes `1.1`); quote it as written, `version: "'
            f'{_written(text, "version", raw["version"])}"`.'
        )
    for key in ("steps", "finally"):
        steps = raw.get(key)
        for i, step in enumerate(steps if isinstance(steps, list) else []):
            if isinstance(step, dict):
                _step_problems(i, step, problems, key)
    outputs = raw.get("outputs")
    for name in outputs if isinstance(outputs, dict) else ():
        if not isinstance(name, str) or not INPUT_NAME_RE.match(name):
            problems.append(
                f"`outputs.{name}`: output names use letters, digits and `_` and start "
                "with a letter or `_`."
            )
    return problems


def _input_problems(name: Any, spec: Any, problems: list[str], text: str = "") -> None:
    if not isinstance(name, str) or not INPUT_NAME_RE.match(name):
        problems.append(
            f"`inputs.{name}`: input names use letters, digits and `_` and start with a "
            "letter or `_`, so that templates can write `inputs.<name>`."
        )
    elif name in _RESERVED:
        problems.append(
            f"`inputs.{name}`: `{name}` is reserved (in a template `inputs.{name}` is "
            "a dict method); choose another name."
        )
    if not isinstance(spec, dict):
        return
    default = spec.get("default")
    if isinstance(default, float):
        problems.append(
            f"`inputs.{name}.default` is a decimal number, which YAML may not keep as "
            f"written (`0.10` becomes `0.1`); quote it as written, "
            f'`default: "{_written(text, "default", default)}"`.'
        )
    if spec.get("required") is True and "default" in spec:
        problems.append(
            f"`inputs.{name}` is `required: true` but has a `default`; keep one of them."
        )


def _step_problems(i: int, step: dict[str, Any], problems: list[str], key: str = "steps") -> None:
    sid = step.get("id")
    label = f"step `{sid}`" if isinstance(sid, str) else f"`{key}[{i}]`"
    if "workflow" in step:
        _sub_workflow_problems(label, step, problems)
    else:
        _agent_step_problems(label, step, problems)
    _retry_problems(label, step, problems)
    _fan_out_problems(label, step, problems)
    _result_schema_problems(label, step.get("result_schema"), problems)
    gate = step.get("gate")
    gate_input = gate.get("input") if isinstance(gate, dict) else None
    if isinstance(gate_input, dict):
        _result_schema_problems(label, gate_input.get("schema"), problems, "gate.input.schema")
    if isinstance(gate, dict) and ("timeout" in gate) != ("default" in gate):
        has, needs = ("timeout", "default") if "timeout" in gate else ("default", "timeout")
        problems.append(
            f"{label}: `gate.{has}` needs `gate.{needs}`: a gate that times out takes its "
            "`default` decision (`approved` or `rejected`) once `timeout` seconds have passed."
        )
    if isinstance(sid, str) and sid in _RESERVED:
        problems.append(
            f"{label}: the id `{sid}` is reserved (in a template `steps.{sid}` is a dict "
            "method); choose another id."
        )


#: The keys a sub-workflow step may have (the child has its own agents and settings).
SUB_WORKFLOW_KEYS = ("id", "workflow", "inputs", "depends_on", "when", "gate", "on_failure")


def _sub_workflow_problems(label: str, step: dict[str, Any], problems: list[str]) -> None:
    """A ``workflow`` step with a key that belongs to agent steps."""
    extra = [k for k in step if k not in SUB_WORKFLOW_KEYS]
    if extra:
        problems.append(
            f"{label} runs the workflow `{step['workflow']}`, so it cannot have "
            + ", ".join(f"`{k}`" for k in extra)
            + ": the child's own steps say who does what and how. A sub-workflow step takes "
            + ", ".join(f"`{k}`" for k in SUB_WORKFLOW_KEYS)
            + "."
        )


def _agent_step_problems(label: str, step: dict[str, Any], problems: list[str]) -> None:
    """An agent step: exactly one of ``agent`` and ``capability``, a ``task``, no ``inputs``."""
    has_agent, has_cap = "agent" in step, "capability" in step
    if has_agent == has_cap:
        which = "has both" if has_agent else "needs one of"
        problems.append(f"{label} {which} `agent` and `capability`.")
    if "task" not in step:
        problems.append(f"{label} has no `task`: the message for its agent.")
    elif isinstance(step["task"], str) and step["task"] and not step["task"].strip():
        problems.append(f"{label}: `task` is only whitespace: write the message for its agent.")
    if "inputs" in step:
        problems.append(
            f"{label} has `inputs` but no `workflow`; `inputs` gives a sub-workflow its "
            "inputs. Read the run's inputs in `task` as `{{ inputs.<name> }}` instead."
        )


def _retry_problems(label: str, step: dict[str, Any], problems: list[str]) -> None:
    """`retry` beside its shorthand, and a cap below the first delay."""
    retry = step.get("retry")
    if not isinstance(retry, dict):
        return
    for short in ("retries", "retry_delay"):
        if short in step:
            problems.append(
                f"{label} has both `retry` and `{short}`; `retries: N` and `retry_delay: S` "
                "are short for `retry: {max: N, delay: S}`: keep `retry` alone."
            )
    delay, cap = retry.get("delay"), retry.get("max_delay")
    if isinstance(delay, int | float) and isinstance(cap, int | float) and cap < delay:
        problems.append(
            f"{label}: `retry.max_delay` ({cap:g} s) is shorter than `retry.delay` "
            f"({delay:g} s), the first wait; raise `max_delay` or lower `delay`."
        )
    if "blocked" in (retry.get("on") or ()):
        problems.append(
            f"{label}: `retry.on` cannot hold `blocked`: a blocked agent needs something "
            "(an answer, a permission) that sending the same task again does not give it."
        )


def _fan_out_problems(label: str, step: dict[str, Any], problems: list[str]) -> None:
    """`as`, `split`, `max_parallel` without `for_each`; an item name the context uses."""
    if "for_each" not in step:
        for key in ("as", "split", "max_parallel"):
            if key in step:
                problems.append(
                    f"{label} has `{key}` but no `for_each`; add `for_each` or drop it."
                )
        return
    name = step.get("as")
    if isinstance(name, str) and name in RESERVED_ITEM_NAMES:
        problems.append(
            f"{label}: `as: {name}` would hide `{name}` from the step's templates; choose "
            "another name (e.g. `as: item`)."
        )


def _result_schema_problems(
    label: str, schema: Any, problems: list[str], key: str = "result_schema"
) -> None:
    """A `result_schema` (or ``key``) that is no valid JSON Schema (2020-12), with the
    pointer."""
    if not isinstance(schema, dict):
        return  # absent, or the workflow schema reports its type
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/" + "/".join(str(p) for p in exc.absolute_path)
        problems.append(f"{label}: `{key}` is not a valid JSON Schema at `{where}`: {exc.message}.")


def value_problems(schema: dict[str, Any], value: Any) -> list[str]:
    """One line per way ``value`` breaks ``schema`` (JSON Schema 2020-12): ``/pointer``:
    why, sorted, at most 20. Used for a handoff's ``data`` and a gate's input."""
    from jsonschema import Draft202012Validator

    from engine.schemas import pointer

    errors = Draft202012Validator(schema).iter_errors(value)
    return sorted({f"`{pointer(e.absolute_path)}`: {e.message}" for e in errors})[:20]


def items_of(value: Any, split: str, *, where: str) -> list[Any]:
    """The items a ``for_each`` value stands for (docs/workflows.md, "Fan-out").

    A list is its items; a text that starts with ``[`` is parsed as a JSON array; any
    other text is cut at ``split`` (``lines``: at line ends), each piece stripped, empty
    pieces dropped. Raises WorkflowError naming ``where`` for a JSON text that is not an
    array, any other kind of value, or more than ``MAX_ITEMS`` items.
    """
    import json

    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise WorkflowError(
                f"{where} starts with `[` but is not a JSON array: {exc}."
            ) from None
    if isinstance(value, str):
        parts = value.splitlines() if split == "lines" else value.split(split)
        items: list[Any] = [p.strip() for p in parts if p.strip()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise WorkflowError(
            f"{where} is {type(value).__name__}, not a list or a text to split; "
            "`for_each` takes a list, a JSON array, or text such as `a, b, c`."
        )
    if len(items) > MAX_ITEMS:
        raise WorkflowError(
            f"{where} has {len(items)} items; a `for_each` takes at most {MAX_ITEMS}."
        )
    return items


def _build_spec(raw: dict[str, Any], *, path: Path, source_text: str) -> WorkflowSpec:
    defaults: dict[str, Any] = dict(raw.get("defaults") or {})
    inputs: dict[str, InputSpec] = {}
    for name, spec in (raw.get("inputs") or {}).items():
        spec = spec or {}
        default = spec.get("default")
        if isinstance(default, bool):
            default = "true" if default else "false"
        inputs[name] = InputSpec(
            name=name,
            required=bool(spec.get("required", default is None)),
            default=None if default is None else str(default),
            description=str(spec.get("description", "")),
            secret=bool(spec["secret"]) if "secret" in spec else secret_name(name),
        )
    base = {k: defaults[k] for k in OPTION_KEYS if k in defaults}  # the same for every step
    steps = [_build_step(s, defaults, base, always=False) for s in raw["steps"]]
    steps += [_build_step(s, defaults, base, always=True) for s in raw.get("finally") or ()]
    return WorkflowSpec(
        name=raw["name"],
        description=str(raw.get("description", "")).strip(),
        version=str(raw.get("version", "1")),
        caller=raw.get("caller"),
        inputs=inputs,
        defaults=defaults,
        steps=tuple(steps),
        outputs=dict(raw.get("outputs") or {}),
        path=path,
        source_text=source_text,
        deadline=None if raw.get("deadline") is None else float(raw["deadline"]),
        budget=_budget(raw.get("budget")),
    )


def _build_step(
    s: dict[str, Any], defaults: dict[str, Any], base_options: dict[str, Any], *, always: bool
) -> StepSpec:
    """One schema-valid step mapping as a ``StepSpec``, ``defaults`` applied
    (``base_options``: the ``OPTION_KEYS`` that ``defaults`` sets)."""
    deps = s.get("depends_on", ())
    gate = s.get("gate")
    timeout = s.get("timeout", defaults.get("timeout"))
    if "retry" in s:
        retry = s["retry"]
    else:  # `retries`/`retry_delay` on the step replace a default `retry`
        retry = None if "retries" in s or "retry_delay" in s else defaults.get("retry")
    return StepSpec(
        id=s["id"],
        agent=s.get("agent"),
        capability=s.get("capability"),
        task=s.get("task", ""),
        depends_on=(deps,) if isinstance(deps, str) else tuple(deps),
        when=_strip_braces(s.get("when")),
        timeout=None if timeout is None else float(timeout),
        retries=int(retry["max"])
        if retry is not None
        else int(s.get("retries", defaults.get("retries", 0))),
        retry_delay=float(s.get("retry_delay", defaults.get("retry_delay", 2.0))),
        repair_attempts=s.get("repair_attempts", defaults.get("repair_attempts")),
        heartbeat_timeout=s.get("heartbeat_timeout", defaults.get("heartbeat_timeout")),
        validate=s.get("validate", defaults.get("validate", False)),
        gate=(
            GateSpec(
                prompt=gate["prompt"],
                when=_strip_braces(gate.get("when")),
                approvers=tuple(gate.get("approvers", ())),
                timeout=None if gate.get("timeout") is None else float(gate["timeout"]),
                default=gate.get("default"),
                input_schema=(gate.get("input") or {}).get("schema"),
            )
            if gate
            else None
        ),
        on_failure=s.get("on_failure", defaults.get("on_failure", "stop")),
        options={**base_options, **{k: s[k] for k in OPTION_KEYS if k in s}}
        if base_options or any(k in s for k in OPTION_KEYS)
        else {},
        retry_policy=None if retry is None else _retry_policy(retry, s, defaults),
        for_each=_strip_braces(s.get("for_each")),
        item_name=s.get("as", "item"),
        split=s.get("split", ","),
        max_parallel=s.get("max_parallel"),
        result_schema=s.get("result_schema"),
        budget=_budget(s["budget"]) if "budget" in s else None,
        always=always,
        workflow=s.get("workflow"),
        workflow_inputs=dict(s["inputs"] or {}) if "inputs" in s else {},
    )


def _retry_policy(
    retry: dict[str, Any], step: dict[str, Any], defaults: dict[str, Any]
) -> RetryPolicy:
    """A schema-valid ``retry`` mapping as a policy; ``delay`` defaults to ``retry_delay``."""
    base = RetryPolicy()
    return RetryPolicy(
        max=int(retry["max"]),
        delay=float(retry.get("delay", step.get("retry_delay", defaults.get("retry_delay", 2.0)))),
        backoff=float(retry.get("backoff", base.backoff)),
        max_delay=float(retry.get("max_delay", base.max_delay)),
        jitter=float(retry.get("jitter", base.jitter)),
        on=tuple(dict.fromkeys(retry.get("on", RETRY_ON_DEFAULT))),
    )


def _strip_braces(expr: str | None) -> str | None:
    """Accept ``when: "{{ x }}"`` as the expression ``x`` (a common slip)."""
    if expr is None:
        return None
    text = expr.strip()
    if text.startswith("{{") and text.endswith("}}") and text.count("{{") == 1:
        text = text[2:-2].strip()
    return text


#: A seed-style ``{name}`` placeholder: one brace each side, not part of ``{{ … }}``.
_SINGLE_BRACE_RE = re.compile(r"(?<!\{)\{\s*([A-Za-z_][A-Za-z0-9_-]*)\s*\}(?!\})")


def brace_warnings(spec: WorkflowSpec) -> list[str]:
    """Warnings (not errors: ``{x}`` may be meant literally) for each ``{name}`` in a step's
    ``task`` that names an input or a step id: the seeds' placeholder form, which the
    Jinja2 renderer leaves as written. Each says the form to write instead
    (``{{ inputs.name }}`` or ``{{ steps.name.result }}``; docs/workflows.md, "How the
    YAML is read")."""
    ids = set(spec.step_ids)
    out: list[str] = []
    for step in spec.steps:
        task = step.task or ""
        if "{" not in task.replace("{{", ""):
            continue  # every brace is part of a `{{`: nothing the pattern can match
        seen: set[str] = set()
        for m in _SINGLE_BRACE_RE.finditer(task):
            name = m.group(1)
            if name in seen:
                continue
            seen.add(name)
            if name in spec.inputs:
                better = f"{{{{ inputs.{name} }}}}"
            elif name in ids:
                better = f"{{{{ steps.{name}.result }}}}"
            else:
                continue
            out.append(
                f"`{spec.path}`: step `{step.id}`: `task` holds `{m.group(0)}`, which is sent "
                f"as written (templates use double braces); to insert the "
                f"{'input' if name in spec.inputs else 'step result'} write `{better}`, "
                "or leave it if the braces are meant literally."
            )
    return out
