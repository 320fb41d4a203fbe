"""Views of a plan: the dry run (text and JSON) and the step graph (Mermaid, Graphviz dot).

Pure: no IO. The planner (``engine.dag``) makes the ``Plan``; this module only draws it::

    print(dry_run_text(plan, renderer))
    print(graph_text(spec, "mermaid"))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.dag import (
    PLACEHOLDER_RUN_ID,
    Plan,
    finally_edges,
    graph_problems,
    rendered_outputs,
    rendered_steps,
)
from engine.errors import UsageError, WorkflowError, did_you_mean
from engine.workflow import RetryPolicy

if TYPE_CHECKING:
    from collections.abc import Iterable

    from engine.renderer import TaskRenderer
    from engine.workflow import StepSpec, WorkflowSpec

GRAPH_FORMATS = ("mermaid", "dot")


def dry_run_dict(plan: Plan, renderer: TaskRenderer) -> dict[str, Any]:
    """The plan as JSON-ready data: groups in order and every step rendered (a secret
    input, ``engine.redact.masked_inputs``, as ``***``)."""
    from engine.redact import masked_inputs

    spec = plan.workflow
    rendered = rendered_steps(plan, renderer)
    group_of = {sid: i for i, group in enumerate(plan.groups, 1) for sid in group}
    steps = []
    for group in plan.groups:
        for sid in group:
            p = plan.steps[sid]
            s = p.spec
            steps.append(
                {
                    "id": sid,
                    "group": group_of[sid],
                    "agent": p.agent,
                    "capability": s.capability,
                    "candidates": list(p.candidates),
                    "depends_on": list(p.depends_on),
                    "when": s.when,
                    # Upstream steps whose status the `when` tests: it decides when they
                    # end badly, instead of being skipped.
                    "decides_on": sorted(renderer.status_tests(sid).steps),
                    "finally": s.always,
                    "result_schema": s.result_schema,
                    "budget": _budget_dict(s.budget),
                    "for_each": (
                        {
                            "expression": s.for_each,
                            "as": s.item_name,
                            "split": s.split,
                            "max_parallel": s.max_parallel,
                            "items": rendered[sid]["items"],
                        }
                        if s.for_each is not None
                        else None
                    ),
                    "gate": (
                        {
                            "prompt": rendered[sid]["gate_prompt"],
                            "when": s.gate.when,
                            "timeout": s.gate.timeout,
                            "default": s.gate.default,
                            "input": s.gate.input_schema,
                        }
                        if s.gate is not None
                        else None
                    ),
                    "validator": p.validator,
                    "timeout": s.timeout,
                    "retries": s.retries,
                    "retry": _retry_dict(s),
                    "on_failure": s.on_failure,
                    "options": dict(s.options),
                    "task": rendered[sid].get("task"),
                    **_child_dict(plan, sid, rendered[sid]),
                }
            )
    outputs = rendered_outputs(plan, renderer)
    return {
        "workflow": spec.name,
        "version": spec.version,
        "path": str(spec.path),
        "caller": plan.caller,
        "deadline": spec.deadline,
        "budget": _budget_dict(spec.budget),
        # a secret input as `***` whole, as the run's run.json keeps it
        "inputs": masked_inputs(plan.inputs, spec.secret_inputs),
        "groups": [list(g) for g in plan.groups],
        "steps": steps,
        "outputs": outputs,
        "placeholders": {
            "result": "<result of ID>",
            "status": "complete",
            "confidence": "high",
            "run_id": PLACEHOLDER_RUN_ID,
        },
    }


def _child_dict(plan: Plan, sid: str, rendered: dict[str, Any]) -> dict[str, Any]:
    """``{"workflow": ...}`` for a sub-workflow step: its child's name, path, inputs
    rendered, groups of ``[step, agent]`` and output names (``{}`` for an agent step)."""
    child = plan.sub_plans.get(sid)
    if child is None:
        return {}
    return {
        "workflow": {
            "name": child.workflow.name,
            "path": str(child.workflow.path),
            "inputs": rendered.get("inputs", {}),
            "groups": [[[c, child.steps[c].agent] for c in g] for g in child.groups],
            "outputs": list(child.workflow.outputs),
        }
    }


def _budget_dict(budget: Any) -> dict[str, Any] | None:
    if budget is None:
        return None
    return {"usd": budget.usd, "tokens": budget.tokens}


def _budget_text(budget: dict[str, Any]) -> str:
    parts = [f"${budget['usd']:g}" if budget["usd"] is not None else None]
    parts.append(f"{budget['tokens']} tokens" if budget["tokens"] is not None else None)
    return " and ".join(p for p in parts if p)


def _retry_dict(s: StepSpec) -> dict[str, Any]:
    policy = s.retry
    return {
        "max": policy.max,
        "delay": policy.delay,
        "backoff": policy.backoff,
        "max_delay": policy.max_delay,
        "jitter": policy.jitter,
        "on": list(policy.on),
    }


def _retry_line(s: dict[str, Any]) -> str | None:
    """The retry policy in words, when it is more than ``retries: N``."""
    r = s["retry"]
    if r["max"] == 0:  # no retry (most steps): no policy to compare with
        return None
    plain = RetryPolicy.shorthand(r["max"], r["delay"])
    if (r["backoff"], r["max_delay"], r["jitter"], tuple(r["on"])) == (
        plain.backoff,
        plain.max_delay,
        plain.jitter,
        plain.on,
    ):
        return None
    return (
        f"      retry: up to {r['max']} more on {', '.join(r['on'])}; waits {r['delay']:g} s, "
        f"x{r['backoff']:g} each time, at most {r['max_delay']:g} s, "
        f"+{r['jitter'] * 100:g}% jitter"
    )


def _for_each_line(fe: dict[str, Any]) -> str:
    items = fe["items"]
    if items is None:
        which = "the items come from upstream results at run time"
    else:
        shown = ", ".join(str(i) for i in items[:5]) + (", ..." if len(items) > 5 else "")
        which = f"{_plural(len(items), 'item')}: {shown}" if items else "no items: skipped"
    bound = f", at most {fe['max_parallel']} at once" if fe["max_parallel"] else ""
    return f"      for each `{fe['as']}` of {fe['expression']} ({which}){bound}"


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line if line else prefix.rstrip() for line in text.splitlines())


def dry_run_text(plan: Plan, renderer: TaskRenderer) -> str:
    """The plan for a person: parallel groups in order, each step's agent and task."""
    data = dry_run_dict(plan, renderer)
    n_steps, n_groups = len(data["steps"]), len(data["groups"])
    lines = [
        f"Dry run of `{data['workflow']}` (version {data['version']}, {data['path']}): "
        "nothing is sent.",
        f"Caller: {data['caller']}",
    ]
    if data["budget"] is not None:
        lines.append(
            f"Budget: {_budget_text(data['budget'])} for the whole run (`finally` steps "
            "excepted), from the handoffs' usage."
        )
    if data["deadline"] is not None:
        lines.append(
            f"Deadline: {data['deadline']:g} s from the start for the whole run "
            "(`finally` steps excepted)."
        )
    if data["inputs"]:
        lines.append("Inputs:")
        for name, value in data["inputs"].items():
            first, *rest = (value or "").splitlines() or [""]
            lines.append(f"  {name} = {first}")
            lines.extend(f"  {' ' * len(name)}   {r}" for r in rest)
    lines.append(
        f"{_plural(n_steps, 'step')} in {_plural(n_groups, 'group')}; the steps of a group "
        "run in parallel."
    )
    lines.append(
        "Upstream results are placeholders: `<result of ID>`, status `complete`, confidence `high`."
    )
    by_group: dict[int, list[dict[str, Any]]] = {}
    for s in data["steps"]:
        by_group.setdefault(s["group"], []).append(s)
    for number in range(1, n_groups + 1):
        members = by_group.get(number, [])
        lines.append("")
        lines.append(f"Group {number} of {n_groups}: {', '.join(s['id'] for s in members)}")
        for s in members:
            lines.extend(_step_lines(s))
    if data["outputs"]:
        lines.append("")
        lines.append("Outputs:")
        for name, value in data["outputs"].items():
            lines.append(f"  {name}:")
            lines.append(_indent(value, "    "))
    return "\n".join(lines) + "\n"


def _common_lines(s: dict[str, Any]) -> list[str]:
    """The lines an agent step and a sub-workflow step both show under their first:
    the steps it runs after, its language checks and its gate."""
    lines = []
    if s["depends_on"]:
        lines.append(f"      after: {', '.join(s['depends_on'])}")
    lines += _language_lines(s)
    if s["gate"]:
        lines += _gate_lines(s["gate"])
    return lines


def _child_lines(s: dict[str, Any]) -> list[str]:
    """A sub-workflow step in the dry run: its child, inputs, steps and outputs."""
    w = s["workflow"]
    lines = [f"  - {s['id']}: workflow `{w['name']}` ({w['path']}), a child run"]
    lines += _common_lines(s)
    lines.append(f"      on failure: {s['on_failure']}")
    lines.append("      inputs:")
    lines += [_indent(f"{k} = {v}", "        | ") for k, v in w["inputs"].items()] or [
        "        (none)"
    ]
    groups = " -> ".join(", ".join(f"{c} ({a})" for c, a in g) for g in w["groups"])
    lines.append(f"      child steps: {groups}")
    outs = ", ".join(w["outputs"]) or "none"
    lines.append(f"      result: the child's outputs ({outs}), as `steps.{s['id']}.data.NAME`")
    return lines


def _step_lines(s: dict[str, Any]) -> list[str]:
    if s.get("workflow"):
        return _child_lines(s)
    if s["capability"]:
        if len(s["candidates"]) > 1:  # routed when dispatched (engine.runner._route)
            target = (
                f"capability `{s['capability']}` -> chosen at run time among "
                f"{', '.join(s['candidates'])}"
            )
        else:
            target = f"capability `{s['capability']}` -> {s['agent']}"
    else:
        target = s["agent"]
    lines = [f"  - {s['id']}: {target}"]
    lines += _common_lines(s)
    if s["validator"]:
        lines.append(f"      validate: by {s['validator']}")
    timeout = f"{s['timeout']:g} s" if s["timeout"] is not None else "agent default"
    extra = [f"timeout {timeout}", f"retries {s['retries']}", f"on failure: {s['on_failure']}"]
    extra += [f"{k} {json.dumps(v) if isinstance(v, bool) else v}" for k, v in s["options"].items()]
    lines.append(f"      {', '.join(extra)}")
    retry = _retry_line(s)
    if retry:
        lines.append(retry)
    lines.append("      task:")
    lines.append(_indent(s["task"], "        | "))
    return lines


def _short_json(value: Any) -> str:
    text = json.dumps(value, separators=(", ", ": "))
    return text if len(text) <= 100 else text[:99] + "…"


def _language_lines(s: dict[str, Any]) -> list[str]:
    """finally, when, for_each, budget, result schema and failure paths of a step."""
    lines = []
    if s["finally"]:
        lines.append("      finally: runs once every other step has ended, whatever happened")
    if s["when"]:
        lines.append(f"      when: {s['when']}")
    if s["for_each"]:
        lines.append(_for_each_line(s["for_each"]))
    if s["budget"] is not None:
        lines.append(f"      budget: {_budget_text(s['budget'])}")
    if s["result_schema"] is not None:
        lines.append(f"      data: {_short_json(s['result_schema'])}")
    if s["decides_on"]:
        lines.append(
            f"      runs even when {', '.join(s['decides_on'])} ended badly (its `when` "
            "tests their status)"
        )
    return lines


def _gate_lines(gate: dict[str, Any]) -> list[str]:
    cond = f" (only when {gate['when']})" if gate["when"] else ""
    after = (
        f"; {gate['default']} after {gate['timeout']:g} s without a decision"
        if gate.get("timeout") is not None
        else ""
    )
    lines = [f"      gate{cond}: approval needed before dispatch{after}"]
    if gate.get("input") is not None:
        lines.append(f"        input: {_short_json(gate['input'])}")
    lines.append(_indent(gate["prompt"], "        | "))
    return lines


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# --------------------------------------------------------------------------- graph export


def graph_text(plan_or_spec: Plan | WorkflowSpec, fmt: str) -> str:
    """The step graph as Mermaid (``flowchart``) or Graphviz DOT text.

    Steps with a gate are hexagons (Mermaid ``{{...}}``, DOT ``shape=hexagon``); steps
    with a ``when`` are dashed, as are the edges into them. From a ``Plan`` the chosen
    agents are shown; from a bare spec, the template's agent or capability. A spec whose
    graph is wrong (``engine.dag.graph_problems``: a repeated step id, an unknown
    dependency, a cycle) raises ``WorkflowError`` (exit 2) with every problem, as
    `workflow validate` does: its drawing would leave steps or edges out.
    """
    return _drawn(fmt, *_graph_parts(plan_or_spec))


def _drawn(fmt: str, nodes: list[_Node], edges: list[tuple[str, str]], name: str) -> str:
    if fmt not in GRAPH_FORMATS:
        raise UsageError(
            f"unknown graph format `{fmt}`{did_you_mean(fmt, GRAPH_FORMATS) or '.'} "
            f"Use one of: {', '.join(GRAPH_FORMATS)}."
        )
    if fmt == "mermaid":
        return _mermaid(nodes, edges)
    return _dot(name, nodes, edges)


def graph_dict(plan_or_spec: Plan | WorkflowSpec, fmt: str) -> dict[str, Any]:
    """The step graph as JSON-ready data (`workflow graph --json`): ``workflow``, ``path``,
    ``nodes`` (``id``, ``label``: the lines drawn, ``target``: the agent, capability or
    workflow, ``gate``, ``conditional``, ``finally``), ``edges`` (``from``, ``to``,
    ``conditional``: the arrow into a step with a ``when``), and ``format`` with ``text``,
    the drawing ``graph_text`` gives. Refuses what ``graph_text`` refuses."""
    nodes, edges, name = _graph_parts(plan_or_spec)
    text = _drawn(fmt, nodes, edges, name)
    spec = plan_or_spec.workflow if isinstance(plan_or_spec, Plan) else plan_or_spec
    conditional = {n.id for n in nodes if n.conditional}
    return {
        "workflow": name,
        "path": str(spec.path),
        "nodes": [
            {
                "id": n.id,
                "label": list(n.lines),
                "target": n.lines[1],
                "gate": n.gate,
                "conditional": n.conditional,
                "finally": n.always,
            }
            for n in nodes
        ],
        "edges": [{"from": a, "to": b, "conditional": b in conditional} for a, b in edges],
        "format": fmt,
        "text": text,
    }


@dataclass(frozen=True)
class _Node:
    id: str
    lines: tuple[str, ...]
    gate: bool
    conditional: bool
    always: bool = False


def _graph_parts(
    plan_or_spec: Plan | WorkflowSpec,
) -> tuple[list[_Node], list[tuple[str, str]], str]:
    if isinstance(plan_or_spec, Plan):
        spec = plan_or_spec.workflow
        agents: dict[str, str] = {}
        for sid, p in plan_or_spec.steps.items():
            cap = p.spec.capability
            agents[sid] = f"{p.agent} (capability {cap})" if cap else str(p.agent)
            if p.spec.workflow is not None:
                agents[sid] = f"workflow {p.spec.workflow}"
        edges = [(str(a), str(b)) for a, b in plan_or_spec.graph.edges()]
        steps: Iterable[StepSpec] = (p.spec for p in plan_or_spec.steps.values())
    else:
        spec = plan_or_spec
        problems = graph_problems(spec)
        if problems:
            raise WorkflowError(
                f"`{spec.path}` has no graph to draw:", path=spec.path, problems=problems
            )
        seen: dict[str, StepSpec] = {}
        for s in spec.steps:
            seen.setdefault(s.id, s)
        steps = seen.values()
        agents = {s.id: _target(s) for s in seen.values()}
        edges = [(d, s.id) for s in seen.values() for d in dict.fromkeys(s.depends_on) if d in seen]
        implicit = [e for e in finally_edges(list(seen.values())) if e not in edges]
        edges = [*implicit, *edges]
    nodes = [
        _Node(s.id, _node_lines(s, agents[s.id]), s.gate is not None, s.when is not None, s.always)
        for s in steps
    ]
    return nodes, edges, spec.name


def _node_lines(s: StepSpec, who: str) -> tuple[str, ...]:
    """A graph node's label: the step, who does it, and what the language adds."""
    lines = [s.id, who]
    if s.always:
        lines.append("finally")
    if s.for_each:
        lines.append(f"for each {s.item_name} of {s.for_each}")
    if s.result_schema is not None:
        lines.append("returns data")
    if s.when:
        lines.append(f"when {s.when}")
    if s.gate is not None:
        lines.append(f"gate when {s.gate.when}" if s.gate.when else "gate")
    return tuple(lines)


def _target(s: StepSpec) -> str:
    """Who does a step, as the template says: its agent, capability or workflow."""
    if s.workflow is not None:
        return f"workflow {s.workflow}"
    return s.agent if s.agent else f"capability {s.capability}"


def _mermaid_text(text: str) -> str:
    return (
        text.replace("&", "#amp;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
    )


def _mermaid(nodes: list[_Node], edges: list[tuple[str, str]]) -> str:
    # Mermaid ids cannot hold every step id (`-` reads as an arrow): use n0, n1, ...
    key = {n.id: f"n{i}" for i, n in enumerate(nodes)}
    out = ["flowchart TD"]
    for n in nodes:
        label = "<br/>".join(_mermaid_text(line) for line in n.lines)
        shape = ('{{"', '"}}') if n.gate else ('["', '"]')
        out.append(f"    {key[n.id]}{shape[0]}{label}{shape[1]}")
    conditional = {n.id for n in nodes if n.conditional}
    for a, b in edges:
        arrow = "-.->" if b in conditional else "-->"
        out.append(f"    {key[a]} {arrow} {key[b]}")
    out.append("    classDef gate fill:#fff3cd,stroke:#b58900,stroke-width:2px")
    out.append("    classDef conditional stroke-dasharray: 5 5")
    finals = [key[n.id] for n in nodes if n.always]
    if finals:
        out.append("    classDef finally fill:#e8eaf6,stroke:#3949ab")
    gates = [key[n.id] for n in nodes if n.gate]
    conds = [key[n.id] for n in nodes if n.conditional]
    if gates:
        out.append(f"    class {','.join(gates)} gate")
    if conds:
        out.append(f"    class {','.join(conds)} conditional")
    if finals:
        out.append(f"    class {','.join(finals)} finally")
    return "\n".join(out) + "\n"


def _dot_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _dot(name: str, nodes: list[_Node], edges: list[tuple[str, str]]) -> str:
    out = [f'digraph "{_dot_text(name)}" {{', "    rankdir=TB;", "    node [shape=box];"]
    conditional = {n.id for n in nodes if n.conditional}
    for n in nodes:
        attrs = ['label="' + "\\n".join(_dot_text(line) for line in n.lines) + '"']
        styles = []
        if n.gate:
            attrs += ["shape=hexagon", 'fillcolor="#fff3cd"']
            styles.append("filled")
        if n.conditional:
            styles.append("dashed")
        if n.always:
            styles.append("rounded")
        if styles:
            attrs.append(f'style="{",".join(styles)}"')
        out.append(f'    "{_dot_text(n.id)}" [{", ".join(attrs)}];')
    for a, b in edges:
        style = " [style=dashed]" if b in conditional else ""
        out.append(f'    "{_dot_text(a)}" -> "{_dot_text(b)}"{style};')
    out.append("}")
    return "\n".join(out) + "\n"
