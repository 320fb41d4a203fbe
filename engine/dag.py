"""The planner: a workflow's step graph and every check before dispatch.

Pure: no IO. ``plan_workflow`` turns a ``WorkflowSpec`` into a ``Plan`` (agents chosen,
parallel groups in order) or raises one WorkflowError listing every problem found::

    renderer = TaskRenderer(spec)
    plan = plan_workflow(spec, registry=registry, acl=acl, inputs={"query": "CTE of ULE"},
                         caller="manager", validator=cfg.validator, renderer=renderer)
    plan.groups                       # [["research"], ["verify"]]
    print(dry_run_text(plan, renderer))  # engine.planview draws it

The dry run, and the planner's trial render, give every upstream step the placeholder
result ``<result of ID>`` with status ``complete`` and confidence ``high``; ``finally``
steps and outputs see ``run.status`` ``complete``.

``finally`` steps (``StepSpec.always``) come after every other step: the graph has an
edge from each step of ``steps`` that nothing in ``steps`` depends on to each of them
(``finally_edges``), so every step is upstream of them.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import EXIT_REFUSED, AclDeniedError, WorkflowError, did_you_mean
from engine.renderer import TaskRenderer
from engine.states import Confidence, RunState, StepState
from engine.workflow import StepSpec, WorkflowSpec

if TYPE_CHECKING:
    import networkx as nx

    from engine.acl import Acl
    from engine.registry import Registry

#: Finds a sub-workflow's template: ``(name or path, the parent template's path)`` ->
#: the loaded spec; raises WorkflowError when there is none or it is not valid.
ChildLoader = Callable[[str, Path], WorkflowSpec]

#: The run id shown in a dry run, where ``{{ run.id }}`` is not known yet.
PLACEHOLDER_RUN_ID = "<run id>"


def placeholder_data(schema: Any, label: str) -> Any:
    """An example value of a JSON Schema, for dry runs: ``<label.field>`` for text
    (``engine.schemas.example_value``)."""
    from engine.schemas import example_value

    return example_value(schema, label, lambda where: f"<{where}>", paths=True)


def placeholder_result(
    step_id: str, *, fan_out: bool = False, data_schema: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What a dry run shows of an upstream step: ``<result of ID>``, complete, high.

    A ``for_each`` step has one item result, ``<result of ID[0]>``: ``results`` lists it
    and ``result`` is the list as a JSON array. A step with a ``result_schema`` has
    ``data``, an example of its schema (``placeholder_data``; for a ``for_each`` step, a
    list of one).
    """
    out: dict[str, Any] = {
        "result": f"<result of {step_id}>",
        "status": "complete",
        "confidence": "high",
        "artifacts": [],
        "notes": "",
        "reason": "",
    }
    if fan_out:
        out["results"] = [f"<result of {step_id}[0]>"]
        out["result"] = json.dumps(out["results"])
    if data_schema is not None:
        data = placeholder_data(data_schema, f"{step_id}.data")
        out["data"] = [data] if fan_out else data
    return out


#: The statuses a step can have once it has ended: what a ``when`` can compare
#: ``steps.<id>.status`` with (engine.states.StepState).
ENDED_STATUSES = tuple(s.value for s in StepState if s.final)
#: What ``finally`` steps and outputs can compare ``run.status`` with.
RUN_END_STATUSES = (RunState.COMPLETE.value, RunState.FAILED.value)


def finally_edges(steps: list[StepSpec]) -> list[tuple[str, str]]:
    """Edges into the ``finally`` steps: from each step of ``steps`` that no other step
    of ``steps`` depends on, to each ``finally`` step (template order both ways)."""
    if not any(s.always for s in steps):
        return []
    main = [s for s in steps if not s.always]
    needed = {d for s in main for d in s.depends_on}
    sinks = [s.id for s in main if s.id not in needed]
    return [(a, f.id) for f in steps if f.always for a in sinks]


@dataclass(frozen=True)
class PlannedStep:
    """A step with its agent chosen and its validator resolved."""

    id: str
    #: The agent the step goes to: the first of ``candidates``.
    agent: str | None
    #: For a capability step, every capable agent the caller may use, in registry order;
    #: for an agent step, just that agent.
    candidates: tuple[str, ...]
    depends_on: tuple[str, ...]
    #: The agent that validates the result, or None.
    validator: str | None
    spec: StepSpec


@dataclass(frozen=True)
class Plan:
    """A checked workflow: who runs each step, and in which order."""

    workflow: WorkflowSpec
    caller: str
    #: Inputs with defaults applied (an optional input without default is "").
    inputs: dict[str, str] = field(hash=False)
    #: Planned steps in template order.
    steps: dict[str, PlannedStep] = field(hash=False)
    #: Topological generations: each group's steps may run in parallel once the groups
    #: before it are done; template order inside a group.
    groups: list[list[str]] = field(hash=False)
    #: The dependency edges ``(dependency, dependent)``, each once, in the order the
    #: planner found them (edges into ``finally`` steps first).
    edges: tuple[tuple[str, str], ...] = field(hash=False, repr=False)
    #: Sub-workflow step id -> the child workflow's plan (with trial inputs).
    sub_plans: dict[str, Plan] = field(default_factory=dict, hash=False, repr=False)
    #: The planner's trial render of each step (``rendered_steps``' entries) and the
    #: renderer that made it: a dry run with that renderer shows these, not a second render.
    trial: tuple[TaskRenderer, dict[str, dict[str, Any]]] | None = field(
        default=None, hash=False, repr=False, compare=False
    )

    @functools.cached_property
    def graph(self) -> nx.DiGraph:
        """The step graph as a networkx ``DiGraph`` (edges from a dependency to its
        dependent), built on first use: planning and running do not import networkx."""
        import networkx as nx

        graph = nx.DiGraph()
        graph.add_nodes_from(self.steps)
        graph.add_edges_from(self.edges)
        return graph

    def children(self, step_id: str) -> list[str]:
        """The steps that depend on ``step_id`` directly, in edge order."""
        return self._links.successors(step_id)

    def upstream(self, step_id: str) -> set[str]:
        """Every step ``step_id`` depends on, directly or not."""
        return _reach(self._links.parents, step_id)

    def downstream(self, step_id: str) -> set[str]:
        """Every step that depends on ``step_id``, directly or not."""
        return _reach(self._links.children, step_id)

    @functools.cached_property
    def _links(self) -> _Links:
        return _Links(self.steps, self.edges)


class _Links:
    """The step graph as adjacency lists: what the planner and the executor ask of it."""

    def __init__(self, nodes: Any, edges: Any) -> None:
        self.children: dict[str, list[str]] = {n: [] for n in nodes}
        self.parents: dict[str, list[str]] = {n: [] for n in nodes}
        for a, b in edges:
            self.children[a].append(b)
            self.parents[b].append(a)

    def successors(self, node: str) -> list[str]:
        return self.children.get(node, [])

    def predecessors(self, node: str) -> list[str]:
        return self.parents.get(node, [])

    def has_edge(self, a: str, b: str) -> bool:
        return b in self.children.get(a, ())

    def generations(self, order: list[str]) -> list[list[str]] | None:
        """Kahn's layers: each step in the first layer after all its dependencies, in
        ``order`` inside a layer; None when the edges have a cycle."""
        waiting = {n: len(self.parents[n]) for n in order}
        rank = {n: i for i, n in enumerate(order)}
        layer = [n for n in order if waiting[n] == 0]
        layers: list[list[str]] = []
        done = 0
        while layer:
            layers.append(layer)
            done += len(layer)
            nxt = []
            for n in layer:
                for c in self.children[n]:
                    waiting[c] -= 1
                    if waiting[c] == 0:
                        nxt.append(c)
            layer = sorted(nxt, key=rank.__getitem__)
        return layers if done == len(order) else None


def _reach(links: dict[str, list[str]], start: str) -> set[str]:
    """Every node reached from ``start`` along ``links`` (``start`` itself only on a cycle)."""
    seen: set[str] = set()
    todo = list(links.get(start, ()))
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(links.get(node, ()))
    return seen


class _Upstream:
    """Answers "is a upstream of b" fast: ancestor sets as bitsets when the graph is a DAG."""

    def __init__(
        self,
        parents: dict[str, list[str]],
        position: dict[str, int],
        generations: list[list[str]] | None,
    ) -> None:
        self._parents = parents
        self._position = position
        self._ids = list(position)
        self._bits: dict[str, int] | None = None
        self._sets: dict[str, set[str]] = {}
        if generations is not None:  # acyclic: one pass in topological order
            bits: dict[str, int] = {}
            for layer in generations:
                for node in layer:
                    acc = 0
                    for pred in parents[node]:
                        acc |= bits[pred] | (1 << position[pred])
                    bits[node] = acc
            self._bits = bits

    def knows(self, step: str) -> bool:
        """True when ``step`` is a step of the graph."""
        return step in self._position

    def contains(self, ancestor: str, step: str) -> bool:
        """True when ``ancestor`` is upstream of ``step``."""
        if self._bits is not None:
            return bool(self._bits[step] >> self._position[ancestor] & 1)
        return ancestor in self._set(step)

    def of(self, step: str) -> list[str]:
        """The steps upstream of ``step``, in template order."""
        if self._bits is not None:
            bits = self._bits[step]
            return [s for i, s in enumerate(self._ids) if bits >> i & 1]
        found = self._set(step)
        return [s for s in self._ids if s in found]

    def _set(self, step: str) -> set[str]:
        if step not in self._sets:
            self._sets[step] = _reach(self._parents, step) - {step}
        return self._sets[step]


def plan_workflow(
    spec: WorkflowSpec,
    *,
    registry: Registry,
    acl: Acl,
    inputs: dict[str, str],
    caller: str | None,
    validator: str | None,
    renderer: TaskRenderer | None = None,
    load_child: ChildLoader | None = None,
    parents: tuple[WorkflowSpec, ...] = (),
) -> Plan:
    """Check everything a run would need and return the plan; dispatches nothing.

    ``caller`` overrides the template's ``caller``; ``validator`` is the configured
    validator used by steps with ``validate: true``. Raises WorkflowError whose
    ``problems`` list every problem at once: step ids, dependencies, cycles, references
    to steps that are not upstream, agents and capabilities, the ACL, inputs, template
    syntax, and a trial render of every template with placeholder results.

    A sub-workflow step's child is found with ``load_child(name, parent_path)`` (IO,
    injected) and planned the same way for the same caller, with its inputs rendered
    from placeholders; ``parents`` are the workflows above this one, so that a workflow
    that would run itself (directly or through others) is refused.
    """
    if renderer is None:
        renderer = TaskRenderer(spec)
    problems: list[str] = []
    first, position = _unique_steps(spec, problems)
    edges = _step_edges(first, problems)
    graph = _Links(first, edges)
    # Kahn's layers tell acyclic graphs apart; only a cycle's report needs networkx.
    generations = graph.generations(list(first))
    if generations is None:
        problems.extend(_cycle_problems(first, edges, position))
    upstream = _Upstream(graph.parents, position, generations)
    who = caller or spec.caller
    known = _known_caller(who, registry, problems)
    planned = {
        step.id: _plan_step(step, graph, registry, acl, known, validator, problems)
        for step in first.values()
    }
    resolved = _resolve_inputs(spec, inputs, problems)
    problems.extend(renderer.problems)
    _status_problems(renderer, first, problems)
    data_skip = _data_problems(renderer, first, problems) | _boolish_when(first, problems)
    skip = _step_reference_problems(spec, renderer, first, upstream, problems) | data_skip
    skip_outputs = _output_reference_problems(spec, renderer, first, problems) | data_skip
    trial_inputs = {n: resolved.get(n, f"<input {n}>") for n in spec.inputs}
    trial = _Trial(spec, renderer, upstream, trial_inputs, _Placeholders(first.values()))
    rendered = _trial_render(trial, first, skip, skip_outputs, problems)
    children = _Children(spec, renderer, registry, acl, known, validator, load_child, parents)
    for step in first.values():
        if step.workflow is not None and step.id not in skip:
            children.plan(step, trial.context(step.id, children.placeholders), problems)
    if problems:
        error = WorkflowError(f"`{spec.path}` cannot run:", path=spec.path, problems=problems)
        if all(isinstance(p, _AclProblem) for p in problems):
            error.exit_code = EXIT_REFUSED  # refused by the ACL, as a delegation is (exit 5)
        raise error
    assert who is not None  # a missing caller is a problem above
    assert generations is not None  # a cycle is a problem above
    return Plan(
        workflow=spec,
        caller=who,
        inputs=resolved,
        steps=planned,
        groups=generations,
        edges=tuple(edges),
        sub_plans=children.plans,
        trial=(renderer, rendered),
    )


def _unique_steps(
    spec: WorkflowSpec, problems: list[str]
) -> tuple[dict[str, StepSpec], dict[str, int]]:
    """The first step of each id, and each id's position; a repeated id is a problem."""
    position: dict[str, int] = {}
    first: dict[str, StepSpec] = {}
    counts: dict[str, int] = {}
    for step in spec.steps:
        counts[step.id] = counts.get(step.id, 0) + 1
        if step.id not in first:
            position[step.id] = len(position)
            first[step.id] = step
    for sid, n in counts.items():
        if n > 1:
            problems.append(f"step id `{sid}` is used by {n} steps; step ids must be unique.")
    return first, position


def _step_edges(first: dict[str, StepSpec], problems: list[str]) -> list[tuple[str, str]]:
    """The dependency edges ``(dependency, dependent)``, each once (edges into ``finally``
    steps first); a self, repeated or unknown dependency is a problem (no edge)."""
    ids = list(first)
    edges = list(dict.fromkeys(finally_edges(list(first.values()))))
    known = set(edges)
    for step in first.values():
        seen: set[str] = set()
        for dep in step.depends_on:
            if dep in first and first[dep].always and not step.always:
                problems.append(
                    f"step `{step.id}` depends on `{dep}`, a `finally` step; `finally` steps "
                    "run after every step of `steps`, so no step of `steps` can depend on "
                    "one. Move the step to `finally`, or drop the dependency."
                )
            elif dep == step.id:
                problems.append(f"step `{step.id}` depends on itself; remove it from `depends_on`.")
            elif dep in seen:
                problems.append(f"step `{step.id}` lists `{dep}` twice in `depends_on`.")
            elif dep not in first:
                problems.append(
                    f"step `{step.id}` depends on unknown step `{dep}`"
                    f"{did_you_mean(dep, ids) or '.'}"
                )
            elif (dep, step.id) not in known:
                known.add((dep, step.id))
                edges.append((dep, step.id))
            seen.add(dep)
    return edges


def _known_caller(who: str | None, registry: Registry, problems: list[str]) -> str | None:
    """``who`` when it is a registered agent; else None and the problem."""
    if who is None:
        problems.append(
            "no caller: give the workflow a `caller` key or pass `--caller NAME` "
            "(the agent on whose behalf the steps are delegated, e.g. `manager`)."
        )
        return None
    if who not in registry.agents:
        problems.append(
            f"unknown caller `{who}`{did_you_mean(who, registry.names) or '.'} "
            f"Known agents: {', '.join(registry.names)}."
        )
        return None
    return who


def _plan_step(
    step: StepSpec,
    graph: _Links,
    registry: Registry,
    acl: Acl,
    caller: str | None,
    validator: str | None,
    problems: list[str],
) -> PlannedStep:
    """One step's agent, candidates and validator, checked against the registry and ACL
    (a sub-workflow step has none: its child's steps do)."""
    if step.workflow is not None:
        candidates: tuple[str, ...] = ()
    else:
        candidates = _candidates(step, registry, acl, caller, problems)
    agent = candidates[0] if candidates else None
    return PlannedStep(
        id=step.id,
        agent=agent,
        candidates=candidates,
        # What the graph says: for a `finally` step, the steps nothing depended on too.
        depends_on=tuple(
            dict.fromkeys(
                [
                    *(d for d in step.depends_on if graph.has_edge(d, step.id)),
                    *graph.predecessors(step.id),
                ]
            )
        ),
        validator=None
        if step.workflow is not None
        else _validator(step, agent, registry, acl, caller, validator, problems),
        spec=step,
    )


def _step_reference_problems(
    spec: WorkflowSpec,
    renderer: TaskRenderer,
    first: dict[str, StepSpec],
    upstream: _Upstream,
    problems: list[str],
) -> set[str]:
    """Steps whose templates read a step that is not upstream or an unknown input."""
    ids = list(first)
    skip: set[str] = set()
    for step in first.values():
        for field_name, refs in renderer.references(step.id).items():
            for ref in sorted(refs.steps):
                msg = _step_ref_problem(step.id, field_name, ref, ids, upstream)
                if msg:
                    problems.append(msg)
                    skip.add(step.id)
            for name in sorted(refs.inputs):
                if name not in spec.inputs:
                    problems.append(_input_ref_problem(f"step `{step.id}`", field_name, name, spec))
                    skip.add(step.id)
    return skip


#: What YAML 1.1 read as a boolean, and this loader keeps as text (engine.yamlio).
_BOOLISH = re.compile(r"^(?:y|Y|yes|Yes|YES|n|N|no|No|NO|on|On|ON|off|Off|OFF)$")


def _kept_as_text(step_id: str, field: str, value: str) -> str:
    """The problem of a YAML 1.1 boolean written where a boolean is meant (as
    ``engine.yamlio.explain_types`` words it for a field typed boolean)."""
    return (
        f"step `{step_id}`: `{field}: {value}` is kept as text (this loader does not read "
        "YAML 1.1 forms); write `true` or `false`."
    )


def _boolish_when(first: dict[str, StepSpec], problems: list[str]) -> set[str]:
    """``when: yes`` (and the other YAML 1.1 booleans): the steps whose ``when`` is one
    (their trial render would only say ``'yes' is undefined``)."""
    found = set()
    for step in first.values():
        if isinstance(step.when, str) and _BOOLISH.match(step.when.strip()):
            problems.append(_kept_as_text(step.id, "when", step.when.strip()))
            found.add(step.id)
    return found


def _status_problems(
    renderer: TaskRenderer, first: dict[str, StepSpec], problems: list[str]
) -> None:
    """A ``when`` comparing a status with a string no status can be is a problem."""
    levels = tuple(c.value for c in Confidence)  # engine.states: high, medium, low
    for step in first.values():
        if step.when is None or renderer.is_broken(step.id, "when"):
            continue  # no `when`, no status tests
        tests = renderer.status_tests(step.id)
        for subject, literal in tests.compared:
            known: tuple[str, ...]
            if subject == "run":
                known, what = RUN_END_STATUSES, "`run.status`"
                if not step.always:
                    problems.append(
                        f"step `{step.id}`: `when` tests `run.status`, which is `running` "
                        "for every step of `steps`; only `finally` steps and outputs see "
                        "how the run ended. Move the step to `finally`."
                    )
                    continue
            elif subject not in first or subject == step.id:
                continue  # the reference itself is the problem, reported with the others
            else:
                known, what = ENDED_STATUSES, f"`steps.{subject}.status`"
            if literal not in known:
                problems.append(
                    f"step `{step.id}`: `when` compares {what} with `'{literal}'`, which it "
                    f"never is{did_you_mean(literal, known) or '.'} It is one of: "
                    f"{', '.join(known)}."
                )
        for subject, literal in tests.confidence:
            if subject in first and subject != step.id and literal not in (*levels, ""):
                problems.append(
                    f"step `{step.id}`: `when` compares `steps.{subject}.confidence` with "
                    f"`'{literal}'`, which it never is{did_you_mean(literal, levels) or '.'} "
                    f"It is one of: {', '.join(levels)}."
                )


def _data_problems(
    renderer: TaskRenderer, first: dict[str, StepSpec], problems: list[str]
) -> set[str]:
    """``steps.x.data...`` read where ``x`` has no ``result_schema``, or reading a property
    that schema does not declare; returns the steps and outputs found wrong (their trial
    render would only repeat it)."""
    wrong: set[str] = set()
    whole = [sid for sid in first if not renderer.is_broken(sid)]
    for key in ("data", "input"):
        reads = [
            (sid, f"step `{sid}`", f" in `{name}`", found)
            for sid in whole
            for name, found in renderer.data_reads(sid, key).items()
            if found
        ]
        reads += [(n, f"output `{n}`", "", f) for n, f in renderer.output_data_reads(key).items()]
        for owner, who, where, found in reads:
            for ref, keys in sorted(found, key=str):
                target = first.get(ref)
                msg = (
                    _data_read_problem(target, ref, keys)
                    if key == "data"
                    else _input_read_problem(target, ref, keys)
                )
                if msg:
                    text = f"steps.{ref}.{key}{_path_text(keys)}"
                    problems.append(f"{who} reads `{text}`{where} {msg}")
                    wrong.add(owner)
    return wrong


def _input_read_problem(target: StepSpec | None, ref: str, keys: tuple[Any, ...]) -> str | None:
    if target is None:
        return None  # an unknown step: reported with the references
    if target.gate is None or target.gate.input_schema is None:
        return (
            f"but `{ref}` has no gate that asks for an input; give its gate "
            "`input: {schema: ...}`."
        )
    return _data_path_problem(target.gate.input_schema, keys, "its gate's input schema", "input")


def _data_read_problem(target: StepSpec | None, ref: str, keys: tuple[Any, ...]) -> str | None:
    if target is None:
        return None  # an unknown step: reported with the references
    if target.workflow is not None:
        return None  # the child's outputs: checked when the child is planned (_Children)
    if target.result_schema is None:
        return (
            f"but `{ref}` declares no `result_schema`; give `{ref}` one, or read "
            f"`steps.{ref}.result`."
        )
    schema: Any = target.result_schema
    if target.for_each is not None:
        schema = {"type": "array", "items": schema}
    return _data_path_problem(schema, keys)


def _path_text(keys: tuple[Any, ...]) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys)


def _data_path_problem(
    schema: Any, keys: tuple[Any, ...], what: str = "the `result_schema`", root: str = "data"
) -> str | None:
    """Why ``keys`` cannot be read from data of ``schema`` (None: it can, or it is unknown)."""
    for depth, key in enumerate(keys):
        if not isinstance(schema, dict):
            return None
        if isinstance(key, int):
            schema = schema.get("items")
            continue
        props = schema.get("properties")
        if not isinstance(props, dict):
            return None
        if key not in props:
            at = f" `{root}{_path_text(keys[:depth])}`" if depth else f" the top of `{root}`"
            known = ", ".join(f"`{p}`" for p in props) or "none"
            return (
                f"but {what} declares no property `{key}` at{at}"
                f"{did_you_mean(str(key), list(props)) or '.'} Properties there: {known}."
            )
        schema = props[key]
    return None


def _output_reference_problems(
    spec: WorkflowSpec, renderer: TaskRenderer, first: dict[str, StepSpec], problems: list[str]
) -> set[str]:
    """Outputs whose templates read an unknown step or input."""
    ids = list(first)
    skip: set[str] = set()
    for out_name, refs in renderer.output_references().items():
        for ref in sorted(refs.steps):
            if ref not in first:
                problems.append(_unknown_step_problem(f"output `{out_name}`", None, ref, ids))
                skip.add(out_name)
        for name in sorted(refs.inputs):
            if name not in spec.inputs:
                problems.append(_input_ref_problem(f"output `{out_name}`", None, name, spec))
                skip.add(out_name)
    return skip


@dataclass(frozen=True)
class _Trial:
    """The contexts a dry run renders templates with: each upstream result a placeholder
    (the planner's trial render and the dry-run views share them)."""

    spec: WorkflowSpec
    renderer: TaskRenderer
    upstream: _Upstream
    inputs: dict[str, str]
    placeholders: _Placeholders

    def context(
        self, step_id: str, placeholders: _Placeholders | None = None, *, ended: bool = False
    ) -> dict[str, Any]:
        """The context of step ``step_id`` (``ended``: a ``finally`` step's)."""
        given = self.placeholders if placeholders is None else placeholders
        steps = _trial_steps(step_id, self.renderer, self.upstream, given)
        return _context(self.spec, self.inputs, steps, ended=ended)

    def outputs_context(self, ids: Any) -> dict[str, Any]:
        """The context of the workflow's outputs: steps ``ids`` all ended."""
        return _context(self.spec, self.inputs, {s: self.placeholders[s] for s in ids}, ended=True)


def _trial_render(
    trial: _Trial,
    first: dict[str, StepSpec],
    skip: set[str],
    skip_outputs: set[str],
    problems: list[str],
) -> dict[str, dict[str, Any]]:
    """Render every template not already found wrong, with placeholder upstream results;
    return what each step rendered to (``rendered_steps``' entries, for the dry run)."""
    spec, renderer = trial.spec, trial.renderer
    rendered: dict[str, dict[str, Any]] = {}
    for step in first.values():
        if step.id in skip or renderer.is_broken(step.id):
            continue
        ctx = trial.context(step.id, ended=step.always)
        problems.extend(_trial_problems(step, renderer, ctx, rendered))
    if not spec.outputs:
        return rendered
    ctx = trial.outputs_context(first)
    for out_name in spec.outputs:
        if out_name in skip_outputs or out_name not in renderer.output_references():
            continue
        try:
            renderer.render_output(out_name, ctx)
        except WorkflowError as exc:
            problems.append(exc.message)
    return rendered


def _cycle_problems(
    first: dict[str, StepSpec], edges: list[tuple[str, str]], position: dict[str, int]
) -> list[str]:
    """One problem per group of steps that depend on each other, as a path (networkx)."""
    import networkx as nx

    graph = nx.DiGraph()
    graph.add_nodes_from(first)
    graph.add_edges_from(edges)
    out: list[tuple[int, str]] = []
    for component in nx.strongly_connected_components(graph):
        if len(component) < 2:
            continue  # a self-loop is never added to the graph
        start = min(component, key=position.__getitem__)
        edges = nx.find_cycle(graph.subgraph(component), source=start)
        path = [edges[0][0], *(e[1] for e in edges)]
        out.append(
            (
                position[start],
                f"steps form a cycle: {' -> '.join(path)}; remove one of these "
                "`depends_on` entries.",
            )
        )
    return [msg for _, msg in sorted(out)]


def _candidates(
    step: StepSpec, registry: Registry, acl: Acl, caller: str | None, problems: list[str]
) -> tuple[str, ...]:
    """The agents a step may go to; problems for unknown names and ACL refusals."""
    if step.agent is not None:
        if step.agent not in registry.agents:
            problems.append(
                f"step `{step.id}`: unknown agent `{step.agent}`"
                f"{did_you_mean(step.agent, registry.names) or '.'} "
                f"Known agents: {', '.join(registry.names)}."
            )
            return ()
        if registry.agents[step.agent].caller_only:
            from engine.registry import caller_only_problem

            problems.append(f"step `{step.id}`: {caller_only_problem(step.agent)}")
            return ()
        if caller is not None:
            _acl_problem(acl, caller, step.agent, f"step `{step.id}`: ", problems)
        return (step.agent,)
    capability = step.capability or ""
    capable = tuple(a.name for a in registry.with_capability(capability))
    if not capable:
        known = registry.capabilities
        problems.append(
            f"step `{step.id}`: no agent has capability `{capability}`"
            f"{did_you_mean(capability, known) or '.'} "
            f"Known capabilities: {', '.join(known) or 'none'}."
        )
        return ()
    if caller is None:
        return capable
    allowed = tuple(a for a in capable if acl.allows(caller, a))
    if not allowed:
        listed = ", ".join(f"`{a}`" for a in capable)
        targets = acl.targets(caller)
        may = (
            f"`{caller}` may delegate to: {', '.join(f'`{a}`' for a in targets)}."
            if targets
            else f"`{caller}` may not delegate to anyone."
        )
        problems.append(
            _AclProblem(
                f"step `{step.id}`: no agent with capability `{capability}` may be used by "
                f"`{caller}` (capable: {listed}); {may}"
            )
        )
    return allowed


def _validator(
    step: StepSpec,
    agent: str | None,
    registry: Registry,
    acl: Acl,
    caller: str | None,
    configured: str | None,
    problems: list[str],
) -> str | None:
    """The agent validating a step (None when it is not validated); problems as found."""
    if step.validate is False:
        return None
    if step.validate is True:
        if configured is None:
            problems.append(
                f"step `{step.id}` has `validate: true` but no validator is configured: "
                "set `validator` in orchestrator.yaml, or name the agent (`validate: auditor`)."
            )
            return None
        name = configured
    else:
        name = str(step.validate)
    if name not in registry.agents:
        if step.validate is not True and _BOOLISH.match(name):
            problems.append(_kept_as_text(step.id, "validate", name))
            return None
        problems.append(
            f"step `{step.id}`: unknown validator `{name}`"
            f"{did_you_mean(name, registry.names) or '.'}"
        )
        return None
    if agent is not None and name == agent and step.agent is not None:
        problems.append(
            f"step `{step.id}` would be validated by its own agent `{name}`; "
            "name another agent in `validate`."
        )
    if caller is not None:
        _acl_problem(acl, caller, name, f"step `{step.id}` (validator): ", problems)
    return name


class _AclProblem(str):
    """A plan problem that is an ACL refusal: a plan refused for these alone exits 5."""

    __slots__ = ()


def _acl_problem(acl: Acl, caller: str, target: str, prefix: str, problems: list[str]) -> None:
    try:
        acl.check(caller, target)
    except AclDeniedError as exc:
        problems.append(_AclProblem(prefix + exc.message))


def _resolve_inputs(
    spec: WorkflowSpec, given: dict[str, str], problems: list[str]
) -> dict[str, str]:
    """Apply defaults; problems for unknown and missing inputs."""
    declared = list(spec.inputs)
    takes = (
        f"`{spec.name}` takes: {', '.join(f'`{n}`' for n in declared)}."
        if declared
        else f"`{spec.name}` takes no inputs."
    )
    for name in given:
        if name not in spec.inputs:
            problems.append(
                f"unknown input `{name}` (`--input {name}=...`)"
                f"{did_you_mean(name, declared) or '.'} {takes}"
            )
    resolved: dict[str, str] = {}
    for name, ispec in spec.inputs.items():
        if name in given:
            resolved[name] = given[name]
            if ispec.required and not str(given[name]).strip():  # `-i q=`: given, yet nothing
                problems.append(
                    f"required input `{name}` is empty: pass a value, `--input {name}=...`."
                )
        elif ispec.default is not None:
            resolved[name] = ispec.default
        elif ispec.required:
            about = f" ({ispec.description.strip()})" if ispec.description.strip() else ""
            problems.append(f"missing required input `{name}`{about}: pass `--input {name}=...`.")
        else:
            resolved[name] = ""
    return resolved


def _unknown_step_problem(who: str, field_name: str | None, ref: str, ids: list[str]) -> str:
    where = f" in `{field_name}`" if field_name else ""
    dashed = [s for s in ids if s.startswith(ref + "-")]
    if dashed:  # `steps.tech-review` parses as `steps.tech - review`
        hint = f"; an id with `-` needs brackets: `steps['{dashed[0]}']`."
    else:
        hint = did_you_mean(ref, ids) or "."
    return f"{who} uses `steps.{ref}`{where} but there is no step `{ref}`{hint}"


def _step_ref_problem(
    step_id: str, field_name: str, ref: str, ids: list[str], upstream: _Upstream
) -> str | None:
    who = f"step `{step_id}`"
    if not upstream.knows(ref):
        return _unknown_step_problem(who, field_name, ref, ids)
    if ref == step_id:
        return (
            f"{who} uses `steps.{ref}` in `{field_name}`, its own result, which does not "
            "exist yet; a step can only use the results of steps upstream of it."
        )
    if not upstream.contains(ref, step_id):
        return (
            f"{who} uses `steps.{ref}` in `{field_name}` but `{ref}` is not upstream of it; "
            "add it to `depends_on`."
        )
    return None


def _input_ref_problem(who: str, field_name: str | None, name: str, spec: WorkflowSpec) -> str:
    where = f" in `{field_name}`" if field_name else ""
    return (
        f"{who} uses `inputs.{name}`{where} but the workflow declares no input `{name}`"
        f"{did_you_mean(name, list(spec.inputs)) or '.'}"
    )


class _ChildOutputs(dict[str, str]):
    """The placeholder ``data`` of a sub-workflow step: any output name reads as
    ``<output NAME of ID>`` (which names exist is checked against the child)."""

    def __init__(self, step_id: str) -> None:
        super().__init__()
        self.step_id = step_id

    def __missing__(self, key: str) -> str:
        return f"<output {key} of {self.step_id}>"


class _Placeholders(dict[str, dict[str, Any]]):
    """Placeholder results, made on first use and shared (templates cannot change them)."""

    def __init__(self, steps: Any = ()) -> None:
        super().__init__()
        self.specs: dict[str, StepSpec] = {s.id: s for s in steps}

    def __missing__(self, key: str) -> dict[str, Any]:
        spec = self.specs.get(key)
        value = placeholder_result(
            key,
            fan_out=spec is not None and spec.for_each is not None,
            data_schema=spec.result_schema if spec is not None else None,
        )
        if spec is not None and spec.workflow is not None:
            value["data"] = _ChildOutputs(key)
        if spec is not None and spec.gate is not None and spec.gate.input_schema is not None:
            value["input"] = placeholder_data(spec.gate.input_schema, f"{key}.input")
        self[key] = value
        return value


def trial_items(
    step: StepSpec, renderer: TaskRenderer, ctx: dict[str, Any]
) -> tuple[list[Any], bool]:
    """A ``for_each`` step's items with the trial context, and whether they are known
    now (they read no step); raises WorkflowError as the run would."""
    from engine.workflow import items_of

    known = not renderer.references(step.id)["for_each"].steps
    value = renderer.evaluate_for_each(step.id, ctx)
    where = f"step `{step.id}`: `for_each` ({step.for_each})"
    return items_of(value, step.split, where=where), known


def _with_item(step: StepSpec, renderer: TaskRenderer, ctx: dict[str, Any]) -> dict[str, Any]:
    """The trial context of a ``for_each`` step: its first item (or a placeholder)."""
    if step.for_each is None:
        return ctx
    try:
        items, _ = trial_items(step, renderer, ctx)
    except WorkflowError:
        items = []
    return {**ctx, step.item_name: items[0] if items else f"<item of {step.id}>"}


def _trial_steps(
    step_id: str, renderer: TaskRenderer, upstream: _Upstream, placeholders: _Placeholders
) -> dict[str, dict[str, Any]]:
    """The ``steps`` a step sees in a dry run: its upstream steps, as placeholders.

    A template that only names steps statically needs only those; one that loops over
    ``steps`` gets every upstream step.
    """
    refs = renderer.references(step_id)
    if any(r.dynamic_steps for r in refs.values()):
        return {s: placeholders[s] for s in upstream.of(step_id)}
    return {
        s: placeholders[s]
        for s in sorted(renderer.referenced_steps(step_id))
        if upstream.knows(s) and s != step_id and upstream.contains(s, step_id)
    }


def _context(
    spec: WorkflowSpec,
    inputs: dict[str, str],
    steps: dict[str, dict[str, Any]],
    *,
    ended: bool = False,
) -> dict[str, Any]:
    """The trial context; ``ended`` (finally steps, outputs): ``run.status`` is complete."""
    status = RunState.COMPLETE.value if ended else RunState.RUNNING.value
    return {
        "inputs": inputs,
        "steps": steps,
        "run": {"id": PLACEHOLDER_RUN_ID, "workflow": spec.name, "status": status},
    }


def _trial_problems(
    step: StepSpec,
    renderer: TaskRenderer,
    ctx: dict[str, Any],
    rendered: dict[str, dict[str, Any]],
) -> list[str]:
    """The problems of one step's trial render; when there are none, what it rendered to
    (``rendered_steps``' entry) goes into ``rendered`` under the step's id."""
    out: list[str] = []
    entry: dict[str, Any] = {}
    task_ctx = ctx
    if step.for_each is not None:  # only the task sees the item: the rest decides once
        items: list[Any] = []
        try:
            items, known = trial_items(step, renderer, ctx)
            entry["items"] = items if known else None
        except WorkflowError as exc:
            out.append(exc.message)
        task_ctx = {**ctx, step.item_name: items[0] if items else f"<item of {step.id}>"}
    parts: list[tuple[str | None, Callable[[str, dict[str, Any]], Any], dict[str, Any]]] = [
        ("inputs", renderer.render_workflow_inputs, task_ctx)
        if step.workflow is not None
        else ("task", renderer.render_task, task_ctx)
    ]
    if step.when is not None:  # without one, evaluate_when is True
        parts.append((None, renderer.evaluate_when, ctx))
    if step.gate is not None:
        parts += [
            ("gate_prompt", renderer.render_gate_prompt, ctx),
            (None, renderer.evaluate_gate_when, ctx),
        ]
    for key, check, with_ctx in parts:
        try:
            value = check(step.id, with_ctx)
        except WorkflowError as exc:
            out.append(exc.message)
        else:
            if key is not None:
                entry[key] = value
    if not out:
        rendered[step.id] = entry
    return out


def rendered_steps(plan: Plan, renderer: TaskRenderer) -> dict[str, dict[str, Any]]:
    """Each step's task (and gate prompt) rendered with placeholder upstream results.

    What a dry run shows; the same placeholders as the planner's trial render, whose
    results the plan keeps (``Plan.trial``): with the renderer that planned it, nothing is
    rendered again.
    """
    if plan.trial is not None and plan.trial[0] is renderer:
        made = plan.trial[1]
        if made.keys() == plan.steps.keys():
            return dict(made)
    trial = _plan_trial(plan, renderer)
    out: dict[str, dict[str, Any]] = {}
    for sid, planned in plan.steps.items():
        ctx = trial.context(sid, ended=planned.spec.always)
        entry: dict[str, Any] = {}
        task_ctx = ctx
        if planned.spec.for_each is not None:
            items, known = trial_items(planned.spec, renderer, ctx)
            entry["items"] = items if known else None
            task_ctx = _with_item(planned.spec, renderer, ctx)
        if planned.spec.workflow is not None:
            entry["inputs"] = renderer.render_workflow_inputs(sid, task_ctx)
        else:
            entry["task"] = renderer.render_task(sid, task_ctx)
        if planned.spec.gate is not None:
            entry["gate_prompt"] = renderer.render_gate_prompt(sid, ctx)
        out[sid] = entry
    return out


def rendered_outputs(plan: Plan, renderer: TaskRenderer) -> dict[str, str]:
    """The workflow's outputs rendered with every step's placeholder result."""
    if not renderer.spec.outputs:  # nothing to render: no trial contexts to build
        return {}
    return renderer.render_outputs(_plan_trial(plan, renderer).outputs_context(plan.steps))


def _plan_trial(plan: Plan, renderer: TaskRenderer) -> _Trial:
    """The trial contexts of a plan (what the planner rendered it with)."""
    position = {sid: i for i, sid in enumerate(plan.steps)}
    upstream = _Upstream(plan._links.parents, position, plan.groups)
    placeholders = _Placeholders(p.spec for p in plan.steps.values())
    return _Trial(plan.workflow, renderer, upstream, plan.inputs, placeholders)


class _Children:
    """Plans the children of a workflow's sub-workflow steps (``plan_workflow``)."""

    def __init__(
        self,
        spec: WorkflowSpec,
        renderer: TaskRenderer,
        registry: Registry,
        acl: Acl,
        caller: str | None,
        validator: str | None,
        load_child: ChildLoader | None,
        parents: tuple[WorkflowSpec, ...],
    ) -> None:
        self.spec = spec
        self.renderer = renderer
        self.registry, self.acl, self.caller, self.validator = registry, acl, caller, validator
        self.load_child = load_child
        self.parents = (*parents, spec)
        self.placeholders = _Placeholders(spec.steps)
        self.plans: dict[str, Plan] = {}

    def plan(self, step: StepSpec, ctx: dict[str, Any], problems: list[str]) -> None:
        """Load, check and plan ``step``'s child; each problem is appended, labelled."""
        assert step.workflow is not None
        label = f"step `{step.id}` (workflow `{step.workflow}`)"
        if self.load_child is None:
            problems.append(f"{label}: sub-workflows cannot be found here (no loader).")
            return
        try:
            child = self.load_child(step.workflow, self.spec.path)
        except WorkflowError as exc:
            problems.append(f"{label}: {exc.message}")
            problems.extend(f"{label}: {p}" for p in exc.problems)
            return
        loop = self._loop(child)
        if loop:
            problems.append(
                f"{label} would run a workflow inside itself: {loop}. A workflow cannot run "
                "itself, directly or through other workflows; move the shared steps into a "
                "workflow of their own."
            )
            return
        given = self._inputs(step, child, ctx, label, problems)
        self._output_reads(step, child, problems)
        if given is None or self.caller is None:
            return
        try:
            self.plans[step.id] = plan_workflow(
                child,
                registry=self.registry,
                acl=self.acl,
                inputs=given,
                caller=self.caller,
                validator=self.validator,
                load_child=self.load_child,
                parents=self.parents,
            )
        except WorkflowError as exc:
            problems.extend(f"{label}: {p}" for p in exc.problems or [exc.message])

    def _loop(self, child: WorkflowSpec) -> str | None:
        """``a -> b -> a`` when ``child`` is one of the workflows above it (None: it is not)."""
        paths = [p.path.resolve() for p in self.parents]
        here = child.path.resolve()
        if here not in paths:
            return None
        chain = [p.name for p in self.parents[paths.index(here) :]]
        return " -> ".join(f"`{n}`" for n in (*chain, child.name))

    def _inputs(
        self,
        step: StepSpec,
        child: WorkflowSpec,
        ctx: dict[str, Any],
        label: str,
        problems: list[str],
    ) -> dict[str, str] | None:
        """The trial values of the child's inputs; None when they do not fit the child."""
        found = len(problems)
        for name in step.workflow_inputs:
            if name not in child.inputs:
                problems.append(
                    f"{label}: `inputs.{name}` is not an input of `{child.name}`"
                    f"{did_you_mean(name, list(child.inputs)) or '.'} Its inputs: "
                    f"{', '.join(f'`{n}`' for n in child.inputs) or 'none'}."
                )
        for name, ispec in child.inputs.items():
            if ispec.required and name not in step.workflow_inputs:
                problems.append(
                    f"{label}: `{child.name}` needs the input `{name}`; give it under the "
                    f'step\'s `inputs` (e.g. `{name}: "{{{{ inputs.{name} }}}}"`).'
                )
        if len(problems) > found:
            return None
        try:
            return self.renderer.render_workflow_inputs(step.id, ctx)
        except WorkflowError:  # reported by the trial render
            return {n: f"<input {n}>" for n in step.workflow_inputs}

    def _output_reads(self, step: StepSpec, child: WorkflowSpec, problems: list[str]) -> None:
        """``steps.<step>.data.<name>`` where the child has no output ``name``."""
        r = self.renderer
        reads = [(f"step `{sid}`", r.data_reads(sid)) for sid in r.spec.step_ids]
        reads.append(("outputs", r.output_data_reads()))
        for who, by_field in reads:
            for ref, keys in sorted({x for f in by_field.values() for x in f}, key=str):
                if ref != step.id or not keys or keys[0] in child.outputs:
                    continue
                problems.append(
                    f"{who} reads `steps.{ref}.data.{keys[0]}`, but `{child.name}` has no "
                    f"output `{keys[0]}`{did_you_mean(str(keys[0]), list(child.outputs)) or '.'}"
                    f" Its outputs: {', '.join(f'`{n}`' for n in child.outputs) or 'none'}."
                )


def graph_problems(spec: WorkflowSpec) -> list[str]:
    """The problems of a template's step graph alone, worded as ``plan_workflow`` words
    them: repeated step ids, self, repeated or unknown dependencies, cycles. No config is
    needed (agents and the ACL are not checked): `workflow graph` refuses to draw a graph
    these make wrong (a second step of one id, an edge to no step)."""
    problems: list[str] = []
    first, position = _unique_steps(spec, problems)
    edges = _step_edges(first, problems)
    if _Links(first, edges).generations(list(first)) is None:
        problems.extend(_cycle_problems(first, edges, position))
    return problems
