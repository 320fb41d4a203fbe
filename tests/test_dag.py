"""The planner: every problem before dispatch, parallel groups, dry run and graph export."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import networkx as nx
import pytest
import yaml

from engine.acl import Acl
from engine.config import Config, config_from_dict
from engine.dag import Plan, placeholder_result, plan_workflow, rendered_steps
from engine.errors import UsageError, WorkflowError
from engine.planview import dry_run_dict, dry_run_text, graph_text
from engine.registry import Registry
from engine.renderer import TaskRenderer, render_context
from engine.workflow import WorkflowSpec, load_workflow, shipped_workflows_dir, workflow_from_dict

SAMPLES = Path(__file__).parent / "workflows"
DOCS = Path(__file__).parent.parent / "docs" / "workflows.md"

#: The eight seed agents (seed 001/004) with capabilities like examples/atomizer.
CAPABILITIES = {
    "manager": ["orchestration"],
    "tech-lead": ["technical-review", "validation"],
    "secretary": ["notes"],
    "auditor": ["audit", "quality-review"],
    "optimizer": ["optimization"],
    "study-builder": ["study-setup", "research"],
    "nx-expert": ["cad"],
    "webster": ["research", "literature"],
}
AGENTS = ", ".join(CAPABILITIES)
TECH_LEAD_MAY = "`secretary`, `study-builder`, `nx-expert`, `webster`"


def seed_config(**extra: Any) -> Config:
    raw: dict[str, Any] = {
        "validator": "tech-lead",
        "agents": {
            name: {
                "url": f"http://127.0.0.1:{18800 + 4 * i}",
                "token_env": "X",
                "capabilities": caps,
            }
            for i, (name, caps) in enumerate(CAPABILITIES.items())
        },
    }
    raw.update(extra)
    return config_from_dict(raw)


CFG = seed_config()
REGISTRY = Registry.from_config(CFG)
ACL = Acl(CFG.acl, REGISTRY.names)


def plan(
    spec: WorkflowSpec,
    inputs: dict[str, str] | None = None,
    *,
    caller: str | None = None,
    validator: str | None = "tech-lead",
    renderer: TaskRenderer | None = None,
) -> Plan:
    return plan_workflow(
        spec,
        registry=REGISTRY,
        acl=ACL,
        inputs=inputs or {},
        caller=caller,
        validator=validator,
        renderer=renderer,
    )


def problems_of(spec: WorkflowSpec, inputs: dict[str, str] | None = None, **kw: Any) -> list[str]:
    with pytest.raises(WorkflowError) as err:
        plan(spec, inputs, **kw)
    assert err.value.message == f"`{spec.path}` cannot run:"
    assert err.value.path == str(spec.path)
    return err.value.problems


def inline(steps: list[dict[str, Any]], **top: Any) -> WorkflowSpec:
    raw: dict[str, Any] = {"name": "inline", "caller": "manager", "steps": steps}
    raw.update(top)
    return workflow_from_dict(raw, path=Path("inline.yaml"))


def shipped(name: str) -> WorkflowSpec:
    return load_workflow(shipped_workflows_dir() / f"{name}.yaml")


# --------------------------------------------------------------------------- the table

PLAN_CASES: list[tuple[str, dict[str, str], str]] = [
    (
        "cycle",
        {},
        "steps form a cycle: draft -> check -> review -> draft; remove one of these `depends_on` "
        "entries.",
    ),
    ("duplicate-id", {}, "step id `research` is used by 2 steps; step ids must be unique."),
    (
        "unknown-dependency",
        {},
        "step `review` depends on unknown step `reserch`; did you mean `research`?",
    ),
    (
        "not-upstream",
        {},
        "step `audit` uses `steps.evaluate` in `task` but `evaluate` is not upstream of it; add "
        "it to `depends_on`.",
    ),
    (
        "when-not-upstream",
        {},
        "step `backup` uses `steps.research` in `when` but `research` is not upstream of it; add "
        "it to `depends_on`.",
    ),
    (
        "dashed-reference",
        {},
        "step `audit` uses `steps.tech` in `task` but there is no step `tech`; an id with `-` "
        "needs brackets: `steps['tech-review']`.",
    ),
    (
        "unknown-agent",
        {},
        f"step `research`: unknown agent `webstr`; did you mean `webster`? Known agents: {AGENTS}.",
    ),
    (
        "unknown-capability",
        {},
        "step `research`: no agent has capability `reserch`; did you mean `research`? Known "
        "capabilities: audit, cad, literature, notes, optimization, orchestration, "
        "quality-review, research, study-setup, technical-review, validation.",
    ),
    (
        "acl-violation",
        {},
        f"step `audit`: ACL refuses `tech-lead` -> `auditor`: `tech-lead` may delegate to: "
        f"{TECH_LEAD_MAY}. Nothing was sent.",
    ),
    (
        "validator-acl",
        {},
        f"step `research` (validator): ACL refuses `tech-lead` -> `auditor`: `tech-lead` may "
        f"delegate to: {TECH_LEAD_MAY}. Nothing was sent.",
    ),
    (
        "capability-acl",
        {},
        "step `audit`: no agent with capability `audit` may be used by `optimizer` (capable: "
        "`auditor`); `optimizer` may delegate to: `secretary`, `study-builder`, `webster`.",
    ),
    (
        "inputs",
        {},
        "missing required input `query` (The question to research): pass `--input query=...`.",
    ),
    (
        "inputs",
        {"query": "x", "qurey": "x"},
        "unknown input `qurey` (`--input qurey=...`); did you mean `query`? `inputs` takes: "
        "`query`.",
    ),
    (
        "undeclared-input",
        {"query": "x"},
        "step `research` uses `inputs.qurey` in `task` but the workflow declares no input "
        "`qurey`; did you mean `query`?",
    ),
    ("bad-syntax", {}, "step `research`: `task` has a template error at line 2: unexpected '}'."),
    (
        "unknown-filter",
        {"query": "x"},
        "step `research`: `task` has a template error at line 1: No filter named 'uper'; did you "
        "mean `upper`?",
    ),
    (
        "undefined-field",
        {},
        "step `review`: `task` fails to render: 'dict object' has no attribute 'reslt'.",
    ),
    (
        "sandbox-escape",
        {},
        "step `research`: `task` fails to render: access to attribute '__class__' of 'str' "
        "object is unsafe.",
    ),
]


@pytest.mark.parametrize(
    ("case", "inputs", "expected"),
    PLAN_CASES,
    ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(PLAN_CASES)],
)
def test_planner_reports(case: str, inputs: dict[str, str], expected: str) -> None:
    problems = problems_of(load_workflow(SAMPLES / f"{case}.yaml"), inputs)
    assert problems == [expected]


def test_every_problem_at_once() -> None:
    assert problems_of(load_workflow(SAMPLES / "many-problems.yaml")) == [
        "step `a` depends on itself; remove it from `depends_on`.",
        "steps form a cycle: b -> c -> b; remove one of these `depends_on` entries.",
        "no caller: give the workflow a `caller` key or pass `--caller NAME` (the agent on "
        "whose behalf the steps are delegated, e.g. `manager`).",
        f"step `a`: unknown agent `webstr`; did you mean `webster`? Known agents: {AGENTS}.",
        "step `c` uses `inputs.nothing` in `task` but the workflow declares no input `nothing`.",
    ]


def test_each_cycle_is_shown() -> None:
    spec = inline(
        [
            {"id": "a", "agent": "webster", "task": "t", "depends_on": ["b"]},
            {"id": "b", "agent": "webster", "task": "t", "depends_on": ["a"]},
            {"id": "c", "agent": "webster", "task": "t", "depends_on": ["e"]},
            {"id": "d", "agent": "webster", "task": "t", "depends_on": ["c"]},
            {"id": "e", "agent": "webster", "task": "t", "depends_on": ["d", "d"]},
        ]
    )
    assert problems_of(spec) == [
        "step `e` lists `d` twice in `depends_on`.",
        "steps form a cycle: a -> b -> a; remove one of these `depends_on` entries.",
        "steps form a cycle: c -> d -> e -> c; remove one of these `depends_on` entries.",
    ]


def test_caller_argument_overrides_the_template() -> None:
    spec = load_workflow(SAMPLES / "acl-violation.yaml")  # caller: tech-lead
    assert plan(spec, caller="manager").caller == "manager"
    assert problems_of(spec, caller="mangr") == [
        f"unknown caller `mangr`; did you mean `manager`? Known agents: {AGENTS}."
    ]


@pytest.mark.parametrize(
    ("step", "validator", "expected"),
    [
        (
            {"validate": True},
            None,
            "step `a` has `validate: true` but no validator is configured: set `validator` in "
            "orchestrator.yaml, or name the agent (`validate: auditor`).",
        ),
        (
            {"validate": "webster"},
            None,
            "step `a` would be validated by its own agent `webster`; name another agent in "
            "`validate`.",
        ),
        (
            {"validate": "audtor"},
            None,
            "step `a`: unknown validator `audtor`; did you mean `auditor`?",
        ),
        ({"depends_on": ["a"]}, None, "step `a` depends on itself; remove it from `depends_on`."),
        (
            {"task": "{{ steps.a.result }}"},
            None,
            "step `a` uses `steps.a` in `task`, its own result, which does not exist yet; a step "
            "can only use the results of steps upstream of it.",
        ),
        (
            {"when": "steps.a.status == 'x'"},
            None,
            "step `a` uses `steps.a` in `when`, its own result, which does not exist yet; a step "
            "can only use the results of steps upstream of it.",
        ),
        (
            {"gate": {"prompt": "{{ inputs.nope }}"}},
            None,
            "step `a` uses `inputs.nope` in `gate.prompt` but the workflow declares no "
            "input `nope`.",
        ),
    ],
    ids=[
        "no-validator",
        "self-validation",
        "unknown-validator",
        "self-dependency",
        "own-result",
        "own-status",
        "gate-input",
    ],
)
def test_step_problems(step: dict[str, Any], validator: str | None, expected: str) -> None:
    spec = inline([{"id": "a", "agent": "webster", "task": "t", **step}])
    assert problems_of(spec, validator=validator) == [expected]


def test_trial_render_checks_conditions_gates_and_outputs() -> None:
    spec = inline(
        [
            {"id": "a", "agent": "webster", "task": "t"},
            {
                "id": "b",
                "agent": "auditor",
                "depends_on": ["a"],
                "task": "t",
                "when": "steps.a.stauts == 'partial'",
                "gate": {"prompt": "{{ steps.a.reslt }}", "when": "steps.a.confidence == 'low'"},
            },
        ],
        outputs={
            "x": "{{ steps.b.result }}",
            "y": "{{ steps.zz.result }}",
            "z": "{{ steps.a.nope }}",
        },
    )
    assert problems_of(spec) == [
        "output `y` uses `steps.zz` but there is no step `zz`.",
        "step `b`: `when` cannot be evaluated: 'dict object' has no attribute 'stauts'.",
        "step `b`: `gate.prompt` fails to render: 'dict object' has no attribute 'reslt'.",
        "output `z` fails to render: 'dict object' has no attribute 'nope'.",
    ]


# --------------------------------------------------------------------------- valid plans

SHIPPED_INPUTS = {
    "quick-research": {"query": "CTE of ULE"},
    "material-trade-study": {
        "materials": "Zerodur, Clearceram-Z HS, ULE",
        "requirements": "CTE < 0.01 ppm/K",
    },
    "design-review": {"design": "M1 mirror mount rev C"},
}


@pytest.mark.parametrize("name", sorted(SHIPPED_INPUTS))
def test_shipped_templates_plan_cleanly(name: str) -> None:
    spec = shipped(name)
    p = plan(spec, SHIPPED_INPUTS[name], caller="manager")
    assert p.caller == "manager"
    assert set(p.inputs) == set(spec.inputs)
    assert all(
        s.agent in ("webster", "tech-lead", "auditor", "optimizer") for s in p.steps.values()
    )
    text = dry_run_text(p, TaskRenderer(spec))
    assert "{{" not in text and "{%" not in text


@pytest.mark.parametrize(
    ("name", "groups", "agents"),
    [
        ("quick-research", [["research"], ["verify"]], ["webster", "tech-lead"]),
        (
            "material-trade-study",
            [["research"], ["evaluate"], ["audit"]],
            ["webster", "tech-lead", "auditor"],
        ),
        (
            "design-review",
            [["technical", "optimization"], ["consolidate"]],
            ["tech-lead", "optimizer", "auditor"],
        ),
    ],
)
def test_shipped_groups_and_agents(name: str, groups: list[list[str]], agents: list[str]) -> None:
    p = plan(shipped(name), SHIPPED_INPUTS[name])
    assert p.groups == groups
    assert [s.agent for s in p.steps.values()] == agents


def test_shipped_required_inputs() -> None:
    assert problems_of(shipped("material-trade-study"), {"material": "ULE"}) == [
        "unknown input `material` (`--input material=...`); did you mean `materials`? "
        "`material-trade-study` takes: `materials`, `requirements`, `application`.",
        "missing required input `materials` (Candidate materials, comma-separated, e.g. "
        '"Zerodur, Clearceram-Z HS, ULE".): pass `--input materials=...`.',
        'missing required input `requirements` (The requirements to meet, e.g. "CTE < 0.01 '
        'ppm/K over 15-25 °C".): pass `--input requirements=...`.',
    ]


def test_trade_study_gate_fires_only_on_low_confidence() -> None:
    spec = shipped("material-trade-study")
    renderer = TaskRenderer(spec)
    p = plan(spec, SHIPPED_INPUTS["material-trade-study"], renderer=renderer)
    assert p.steps["audit"].spec.gate is not None

    def context(confidence: str) -> dict[str, Any]:
        done = {"status": "complete", "result": "r", "confidence": confidence}
        return render_context(
            inputs=p.inputs,
            steps={"research": done, "evaluate": done},
            run_id="wf-1",
            workflow=spec.name,
        )

    assert renderer.evaluate_gate_when("audit", context("low")) is True
    assert renderer.evaluate_gate_when("audit", context("medium")) is False
    assert renderer.evaluate_gate_when("audit", context("high")) is False
    assert renderer.render_gate_prompt("audit", context("low")).startswith(
        "The Tech-Lead rated its evaluation `low` confidence."
    )


def test_defaults_and_optional_inputs() -> None:
    spec = load_workflow(SAMPLES / "full.yaml")
    p = plan(spec, {"query": "q"})
    assert p.inputs == {"query": "q", "depth": "3", "note": ""}


def test_capability_routing_respects_the_acl() -> None:
    spec = inline([{"id": "r", "capability": "research", "task": "t"}])
    by_manager = plan(spec).steps["r"]
    assert (by_manager.agent, by_manager.candidates) == (
        "study-builder",
        ("study-builder", "webster"),
    )
    restricted = seed_config(acl={"manager": ["*"], "secretary": ["webster"]})
    registry = Registry.from_config(restricted)
    p = plan_workflow(
        spec,
        registry=registry,
        acl=Acl(restricted.acl, registry.names),
        inputs={},
        caller="secretary",
        validator=None,
    )
    assert (p.steps["r"].agent, p.steps["r"].candidates) == ("webster", ("webster",))


def test_upstream_downstream_and_graph() -> None:
    spec = inline(
        [
            {"id": "a", "agent": "webster", "task": "t"},
            {"id": "b", "agent": "webster", "task": "t", "depends_on": ["a"]},
            {"id": "c", "agent": "webster", "task": "t"},
            {"id": "d", "agent": "auditor", "task": "t", "depends_on": ["c", "b"]},
        ]
    )
    p = plan(spec)
    assert p.groups == [["a", "c"], ["b"], ["d"]]
    assert p.upstream("d") == {"a", "b", "c"} and p.upstream("a") == set()
    assert p.downstream("a") == {"b", "d"}
    assert isinstance(p.graph, nx.DiGraph) and sorted(p.graph.edges) == [
        ("a", "b"),
        ("b", "d"),
        ("c", "d"),
    ]
    assert p.steps["d"].depends_on == ("c", "b")


# --------------------------------------------------------------------------- dry run

DRY_SPEC: dict[str, Any] = {
    "name": "dry",
    "version": "1.2",
    "caller": "manager",
    "inputs": {"query": {"required": True}, "tone": {"default": "plain"}},
    "defaults": {"timeout": 300},
    "steps": [
        {
            "id": "research",
            "capability": "research",
            "validate": True,
            "task": "Find {{ inputs.query }} ({{ inputs.tone }}).\nRun {{ run.id }}.",
        },
        {
            "id": "check",
            "agent": "tech-lead",
            "depends_on": ["research"],
            "retries": 2,
            "when": "steps.research.confidence != 'high'",
            "task": "Check {{ steps.research.result }} ({{ steps.research.confidence }}).",
        },
        {
            "id": "audit",
            "agent": "auditor",
            "depends_on": ["research", "check"],
            "model": "gemini-2.5-pro",
            "deliver": True,
            "gate": {
                "prompt": "Audit {{ steps.research.status }} research?",
                "when": "steps.check.confidence == 'low'",
            },
            "task": "Audit:\n{% for id in steps %}- {{ id }}: {{ steps[id].result }}\n{% endfor %}",
        },
    ],
    "outputs": {"answer": "{{ steps.research.result }}"},
}

DRY_TEXT = """\
Dry run of `dry` (version 1.2, dry.yaml): nothing is sent.
Caller: manager
Inputs:
  query = {{ 7*7 }}
  tone = plain
3 steps in 3 groups; the steps of a group run in parallel.
Upstream results are placeholders: `<result of ID>`, status `complete`, confidence `high`.

Group 1 of 3: research
  - research: capability `research` -> chosen at run time among study-builder, webster
      validate: by tech-lead
      timeout 300 s, retries 0, on failure: stop
      task:
        | Find {{ 7*7 }} (plain).
        | Run <run id>.

Group 2 of 3: check
  - check: tech-lead
      after: research
      when: steps.research.confidence != 'high'
      timeout 300 s, retries 2, on failure: stop
      task:
        | Check <result of research> (high).

Group 3 of 3: audit
  - audit: auditor
      after: research, check
      gate (only when steps.check.confidence == 'low'): approval needed before dispatch
        | Audit complete research?
      timeout 300 s, retries 0, on failure: stop, deliver true, model gemini-2.5-pro
      task:
        | Audit:
        | - research: <result of research>
        | - check: <result of check>

Outputs:
  answer:
    <result of research>
"""


def test_dry_run_text() -> None:
    spec = workflow_from_dict(DRY_SPEC, path=Path("dry.yaml"))
    renderer = TaskRenderer(spec)
    p = plan(spec, {"query": "{{ 7*7 }}"}, renderer=renderer)
    assert dry_run_text(p, renderer) == DRY_TEXT


def test_dry_run_dict_is_json() -> None:
    spec = workflow_from_dict(DRY_SPEC, path=Path("dry.yaml"))
    renderer = TaskRenderer(spec)
    data = dry_run_dict(plan(spec, {"query": "q"}, renderer=renderer), renderer)
    assert json.loads(json.dumps(data)) == data
    assert data["groups"] == [["research"], ["check"], ["audit"]]
    research, check, audit = data["steps"]
    assert research == {
        "id": "research",
        "group": 1,
        "agent": "study-builder",
        "capability": "research",
        "candidates": ["study-builder", "webster"],
        "depends_on": [],
        "when": None,
        "decides_on": [],
        "finally": False,
        "result_schema": None,
        "budget": None,
        "for_each": None,
        "gate": None,
        "validator": "tech-lead",
        "timeout": 300.0,
        "retries": 0,
        "retry": {
            "max": 0,
            "delay": 2.0,
            "backoff": 2.0,
            "max_delay": 60.0,
            "jitter": 0.2,
            "on": ["failed", "timeout", "lost"],
        },
        "on_failure": "stop",
        "options": {},
        "task": "Find q (plain).\nRun <run id>.",
    }
    assert check["task"] == "Check <result of research> (high)."
    assert audit["gate"] == {
        "prompt": "Audit complete research?",
        "when": "steps.check.confidence == 'low'",
        "timeout": None,
        "default": None,
        "input": None,
    }
    assert audit["options"] == {"model": "gemini-2.5-pro", "deliver": True}
    assert data["outputs"] == {"answer": "<result of research>"}


def test_placeholder_result() -> None:
    assert placeholder_result("research") == {
        "result": "<result of research>",
        "status": "complete",
        "confidence": "high",
        "artifacts": [],
        "notes": "",
        "reason": "",
    }


# --------------------------------------------------------------------------- graphs

MERMAID = """\
flowchart TD
    n0["research<br/>study-builder (capability research)"]
    n1["check<br/>tech-lead<br/>when steps.research.confidence != 'high'"]
    n2{{"audit<br/>auditor<br/>gate when steps.check.confidence == 'low'"}}
    n0 -.-> n1
    n0 --> n2
    n1 --> n2
    classDef gate fill:#fff3cd,stroke:#b58900,stroke-width:2px
    classDef conditional stroke-dasharray: 5 5
    class n2 gate
    class n1 conditional
"""

DOT = """\
digraph "dry" {
    rankdir=TB;
    node [shape=box];
    "research" [label="research\\ncapability research"];
    "check" [label="check\\ntech-lead\\nwhen steps.research.confidence != 'high'", style="dashed"];
    "audit" [label="audit\\nauditor\\ngate when steps.check.confidence == 'low'", shape=hexagon, fillcolor="#fff3cd", style="filled"];
    "research" -> "check" [style=dashed];
    "research" -> "audit";
    "check" -> "audit";
}
"""  # noqa: E501


def test_graph_mermaid_from_a_plan() -> None:
    spec = workflow_from_dict(DRY_SPEC, path=Path("dry.yaml"))
    assert graph_text(plan(spec, {"query": "q"}), "mermaid") == MERMAID


def test_graph_dot_from_a_spec() -> None:
    assert graph_text(workflow_from_dict(DRY_SPEC, path=Path("dry.yaml")), "dot") == DOT


def test_graph_escapes_labels() -> None:
    spec = inline(
        [
            {
                "id": "a",
                "agent": "webster",
                "task": "t",
                "when": "inputs.x == \"<b>\" and '\\\\' != ''",
            }
        ],
        inputs={"x": {"default": ""}},
    )
    assert "when inputs.x == #quot;#lt;b#gt;#quot;" in graph_text(spec, "mermaid")
    assert "\\nwhen inputs.x == \\\"<b>\\\" and '\\\\\\\\' != ''\"" in graph_text(spec, "dot")


def test_graph_unknown_format() -> None:
    with pytest.raises(UsageError) as err:
        graph_text(workflow_from_dict(DRY_SPEC, path=Path("dry.yaml")), "mermiad")
    assert err.value.message == (
        "unknown graph format `mermiad`; did you mean `mermaid`? Use one of: mermaid, dot."
    )


# --------------------------------------------------------------------------- scale


def generated(n: int, *, bad_reference: bool = False) -> WorkflowSpec:
    """A generated workflow: each step depends on up to three of the previous twenty."""
    steps: list[dict[str, Any]] = []
    agents = ["webster", "tech-lead", "auditor", "optimizer", "secretary"]
    for i in range(n):
        deps = [f"s{j:04d}" for j in sorted({max(0, i - k) for k in (1, 7, 19)}) if j < i]
        task = f"Step {i} of {{{{ run.id }}}} on {{{{ inputs.query }}}}." + "".join(
            f"\nUse {{{{ steps.{d}.result }}}}." for d in deps
        )
        step: dict[str, Any] = {"id": f"s{i:04d}", "agent": agents[i % 5], "task": task}
        if deps:
            step["depends_on"] = deps
        if i % 10 == 5:
            step["when"] = f"steps.{deps[0]}.status != 'failed'"
        if i % 100 == 50:
            step["gate"] = {"prompt": f"Continue after {deps[0]}?"}
        steps.append(step)
    if bad_reference:
        steps[10]["task"] += f"\n{{{{ steps.s{n - 1:04d}.result }}}}"
    raw = {
        "name": "generated",
        "caller": "manager",
        "inputs": {"query": {"required": True}},
        "steps": steps,
        "outputs": {"last": f"{{{{ steps.s{n - 1:04d}.result }}}}"},
    }
    return workflow_from_dict(raw, path=Path("generated.yaml"))


def test_a_thousand_steps_plan_and_dry_run() -> None:
    spec = generated(1000)
    renderer = TaskRenderer(spec)
    p = plan(spec, {"query": "q"}, renderer=renderer)
    assert len(p.steps) == 1000
    assert p.groups[0] == ["s0000"] and p.groups[-1] == ["s0999"]
    assert sum(len(g) for g in p.groups) == 1000
    assert len(p.groups) == 1000  # each step depends on the one before it
    text = dry_run_text(p, renderer)
    assert "  - s0999: secretary\n      after: s0980, s0992, s0998\n" in text
    assert "        | Use <result of s0998>.\n" in text
    assert problems_of(generated(1000, bad_reference=True), {"query": "q"}) == [
        "step `s0010` uses `steps.s0999` in `task` but `s0999` is not upstream of it; add it "
        "to `depends_on`."
    ]


def test_dry_run_shows_what_the_trial_render_made() -> None:
    """The plan keeps its trial render; the dry run shows it, equal to rendering again."""
    spec = inline(
        [
            {"id": "a", "agent": "webster", "task": "find {{ inputs.topic }}"},
            {
                "id": "b",
                "agent": "webster",
                "depends_on": ["a"],
                "for_each": "inputs.names",
                "task": "check {{ item }} against {{ steps.a.result }}",
            },
            {
                "id": "c",
                "agent": "tech-lead",
                "depends_on": ["b"],
                "for_each": "steps.b.results",
                "when": "steps.b.status == 'complete'",
                "gate": {"prompt": "Go on after {{ steps.b.result }}?"},
                "task": "sum {{ item }}",
            },
        ],
        inputs={"topic": {"required": True}, "names": {"default": "x, y"}},
    )
    renderer = TaskRenderer(spec)
    p = plan(spec, {"topic": "ULE"}, renderer=renderer)
    assert p.trial is not None and p.trial[0] is renderer
    again = rendered_steps(dataclasses.replace(p, trial=None), renderer)
    assert again["b"] == {"items": ["x", "y"], "task": "check x against <result of a>"}
    assert again["c"]["items"] is None  # read from a step: known only when it ran
    assert again["c"]["gate_prompt"].startswith("Go on after ")
    assert rendered_steps(p, renderer) == again
    assert rendered_steps(p, TaskRenderer(spec)) == again  # another renderer: rendered anew


# --------------------------------------------------------------------------- docs


def test_docs_example_is_valid_and_plans() -> None:
    """The complete example in docs/workflows.md loads and plans as documented."""
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(r"<!-- example: (\S+) -->\n```yaml\n(.*?)```", text, re.S)
    assert match, "docs/workflows.md lost its complete example"
    name, body = match.group(1), match.group(2)
    where = Path(f"/home/me/atomizer/workflows/{name}.yaml")  # where the page saves it
    spec = workflow_from_dict(yaml.safe_load(body), path=where, source_text=body)
    assert spec.name == name
    renderer = TaskRenderer(spec)
    p = plan(
        spec, {"materials": "Zerodur, ULE", "requirements": "CTE < 0.01 ppm/K"}, renderer=renderer
    )
    documented = re.search(r"<!-- dry-run: (\S+) -->\n```text\n(.*?)```", text, re.S)
    assert documented and documented.group(1) == name
    assert dry_run_text(p, renderer) == documented.group(2)
    drawn = re.search(r"<!-- graph: (\S+) -->\n```mermaid\n(.*?)```", text, re.S)
    assert drawn and drawn.group(1) == name
    assert graph_text(spec, "mermaid") == drawn.group(2)
