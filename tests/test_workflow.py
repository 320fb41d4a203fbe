"""Workflow templates: finding, loading, schema problems and sandboxed rendering."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.config import Config, config_from_dict
from engine.errors import WorkflowError
from engine.renderer import (
    TaskRenderer,
    _Compiled,
    _environment,
    _fast_template,
    _quick_parse,
    _references,
    _step_lookups,
    render_context,
    step_context,
)
from engine.workflow import (
    GateSpec,
    InputSpec,
    WorkflowSpec,
    brace_warnings,
    find_workflow,
    list_workflows,
    load_workflow,
    parse_inputs,
    shipped_workflows_dir,
    workflow_from_dict,
)

SAMPLES = Path(__file__).parent / "workflows"
SHIPPED = ("design-review", "material-survey", "material-trade-study", "quick-research")


def sample(case: str) -> Path:
    return SAMPLES / f"{case}.yaml"


def spec_of(steps: list[dict[str, Any]], **top: Any) -> WorkflowSpec:
    """A spec from an inline template (no file), with a caller and an input `query`."""
    raw: dict[str, Any] = {"name": "inline", "caller": "manager", "steps": steps}
    raw.setdefault("inputs", {"query": {"required": True}})
    raw.update(top)
    return workflow_from_dict(raw, path=Path("inline.yaml"))


def ctx(inputs: dict[str, str] | None = None, **steps: dict[str, Any]) -> dict[str, Any]:
    return render_context(
        inputs=inputs if inputs is not None else {"query": "CTE of ULE"},
        steps=steps,
        run_id="wf-20260101T000000-0000abcd",
        workflow="inline",
    )


def handoff(
    status: str = "complete", confidence: str = "high", result: str = "R"
) -> dict[str, Any]:
    return {"status": status, "confidence": confidence, "result": result, "runId": "x"}


# --------------------------------------------------------------------------- inputs


def test_parse_inputs_keeps_equals_signs_in_values() -> None:
    assert parse_inputs(["query=CTE of ULE", "requirements=CTE < 0.01 ppm/K", "eq=a=b", "e="]) == {
        "query": "CTE of ULE",
        "requirements": "CTE < 0.01 ppm/K",
        "eq": "a=b",
        "e": "",
    }


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (
            ["query"],
            '`--input query` must look like `name=value` (e.g. `--input query="CTE of ULE"`).',
        ),
        (["=x"], '`--input =x` must look like `name=value` (e.g. `--input query="CTE of ULE"`).'),
        (["q=1", "q=2"], "input `q` is given twice; pass each `--input` once."),
    ],
    ids=["no-equals", "empty-name", "twice"],
)
def test_parse_inputs_refuses(pairs: list[str], message: str) -> None:
    with pytest.raises(WorkflowError) as err:
        parse_inputs(pairs)
    assert err.value.message == message


# --------------------------------------------------------------------------- finding


def _cfg(tmp_path: Path, *dirs: str) -> Config:
    return config_from_dict(
        {
            "workflow_dirs": list(dirs),
            "agents": {"manager": {"url": "http://127.0.0.1:18800", "token_env": "X"}},
        },
        path=tmp_path / "orchestrator.yaml",
    )


def _write(path: Path, name: str, description: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = {
        "name": name,
        "description": description,
        "steps": [{"id": "a", "agent": "manager", "task": "x"}],
    }
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_find_shipped_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in SHIPPED:
        assert find_workflow(name, None) == shipped_workflows_dir() / f"{name}.yaml"


def test_search_order_local_then_configured_then_shipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    local = _write(tmp_path / "workflows" / "quick-research.yaml", "quick-research", "Local.")
    configured = _write(tmp_path / "team" / "quick-research.yml", "quick-research", "Team.")
    extra = _write(tmp_path / "team" / "extra.yml", "extra", "Extra one.\nSecond line.")
    cfg = _cfg(tmp_path, "team")
    assert find_workflow("quick-research", cfg) == local
    assert find_workflow("extra", cfg) == extra
    local.unlink()
    assert find_workflow("quick-research", cfg) == configured
    listed = list_workflows(cfg)
    assert [(n, p, d) for n, p, d in listed if n in ("extra", "quick-research")] == [
        ("extra", extra, "Extra one."),
        ("quick-research", configured, "Team."),
    ]
    assert [n for n, _, _ in listed] == sorted(["extra", *SHIPPED])


def test_list_shipped_with_descriptions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    listed = list_workflows(None)
    assert [n for n, _, _ in listed] == list(SHIPPED)
    assert all(d for _, _, d in listed)
    assert listed[3][2].startswith("Answer a factual question with sources: Webster researches")


def test_list_marks_unreadable_templates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "broken.yaml").write_text("name: [", encoding="utf-8")
    assert list_workflows(None)[0] == (
        "broken",
        tmp_path / "workflows" / "broken.yaml",
        "(cannot be read: run `workflow validate` on it)",
    )


def test_find_by_path(tmp_path: Path) -> None:
    assert find_workflow(str(sample("full")), None) == sample("full")
    with pytest.raises(WorkflowError) as err:
        find_workflow(str(tmp_path / "nope.yaml"), None)
    assert err.value.message == f"workflow file `{tmp_path / 'nope.yaml'}` does not exist."


def test_find_unknown_name_suggests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WorkflowError) as err:
        find_workflow("quik-research", None)
    assert err.value.message == (
        "no workflow `quik-research`; did you mean `quick-research`? Looked in "
        f"`{tmp_path / 'workflows'}`, `{shipped_workflows_dir()}`. Known workflows: "
        "`design-review`, `material-survey`, `material-trade-study`, `quick-research`."
    )


# --------------------------------------------------------------------------- loading


def test_load_applies_defaults_and_keeps_source() -> None:
    spec = load_workflow(sample("full"))
    assert spec.source_text == sample("full").read_text(encoding="utf-8")
    assert (spec.name, spec.version, spec.caller) == ("full", "2", "manager")
    assert spec.description.startswith("Every key of the format")
    assert spec.inputs == {
        "query": InputSpec("query", required=True, default=None, description="The question."),
        "depth": InputSpec(
            "depth", required=False, default="3", description="How many sources to read."
        ),
        "note": InputSpec("note", required=False, default=None, description="Optional remark."),
    }
    research, deep, review = spec.steps
    assert (research.capability, research.agent, research.validate) == ("research", None, True)
    assert (research.timeout, research.retries, research.on_failure) == (120.0, 2, "stop")
    assert research.options == {"model": "gemini-2.5-pro", "deliver": False}
    assert deep.depends_on == ("research",)  # a single string is accepted
    assert deep.on_failure == "continue"
    assert deep.options == {"model": "gemini-2.5-pro", "deliver": False, "thinking": "high"}
    assert (review.timeout, review.retries, review.validate) == (60.0, 0, "tech-lead")
    # `when: "{{ expr }}"` is read as the expression itself.
    assert review.gate == GateSpec(
        prompt="Research came back {{ steps.research.confidence }}; audit anyway?",
        when="steps.research.confidence == 'low'",
    )
    assert spec.outputs == {
        "answer": "{{ steps.research.result }}",
        "audit": "{{ steps.review.result | trim }}",
    }


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_templates_load(name: str) -> None:
    spec = load_workflow(shipped_workflows_dir() / f"{name}.yaml")
    assert spec.name == name
    assert spec.caller == "manager"
    assert spec.description and spec.outputs
    assert not TaskRenderer(spec).problems


LOAD_CASES = [
    (
        "malformed-yaml",
        "is not valid YAML at line 7, column 1: found unexpected end of stream (while "
        "scanning a quoted scalar at line 5, column 11). Fix the syntax and run again.",
    ),
    (
        "unknown-key",
        "step `review`: `steps[1].depends-on` is not a known key; did you mean `depends_on`?",
    ),
    (
        "duplicate-key",
        "line 7: key `steps[0].task` is written twice (first at line 6); keep one of them.",
    ),
    (
        "schema-errors",
        "`name` is `Schema Errors`, which is not allowed: use lowercase letters, digits, "
        "`-` and `_` (1 to 64 characters, the first a letter or digit).",
    ),
    (
        "schema-errors",
        "step `research`: `steps[0].on_failure`: `ignore` is not one of `stop`, `continue`",
    ),
    ("schema-errors", "step `research`: `steps[0].retries` must be >= 0."),
    ("schema-errors", "step `research` has both `agent` and `capability`."),
    ("schema-errors", "step `items` needs one of `agent` and `capability`."),
    (
        "schema-errors",
        "step `items`: the id `items` is reserved (in a template `steps.items` is a dict "
        "method); choose another id.",
    ),
]


@pytest.mark.parametrize(
    ("case", "expected"),
    LOAD_CASES,
    ids=[f"{c}-{i}" for i, (c, _) in enumerate(LOAD_CASES)],
)
def test_load_reports(case: str, expected: str) -> None:
    with pytest.raises(WorkflowError) as err:
        load_workflow(sample(case))
    assert err.value.path == str(sample(case))
    if case == "malformed-yaml":
        assert err.value.message == f"`{sample(case)}` {expected}"
    else:
        assert err.value.message == f"`{sample(case)}` is not a valid workflow:"
        assert expected in err.value.problems


def test_load_reports_every_schema_problem_at_once() -> None:
    with pytest.raises(WorkflowError) as err:
        load_workflow(sample("schema-errors"))
    assert len(err.value.problems) == 6


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ([], "`x.yaml` must be a mapping with at least `name` and `steps` keys."),
        ({"name": "x"}, "`(top level)`: missing required key `steps`."),
        (
            {
                "name": "x",
                "inputs": {"my-query": {}},
                "steps": [{"id": "a", "agent": "b", "task": "t"}],
            },
            "`inputs.my-query`: input names use letters, digits and `_` and start with a letter "
            "or `_`, so that templates can write `inputs.<name>`.",
        ),
        (
            {
                "name": "x",
                "inputs": {"q": {"required": True, "default": "d"}},
                "steps": [{"id": "a", "agent": "b", "task": "t"}],
            },
            "`inputs.q` is `required: true` but has a `default`; keep one of them.",
        ),
        (
            {"name": "x", "steps": [{"id": "a", "agent": "b", "task": "t", "gate": {"when": "x"}}]},
            "step `a`: `steps[0].gate`: missing required key `prompt`.",
        ),
    ],
    ids=["not-a-mapping", "no-steps", "input-name", "required-and-default", "gate-without-prompt"],
)
def test_workflow_from_dict_reports(raw: Any, expected: str) -> None:
    with pytest.raises(WorkflowError) as err:
        workflow_from_dict(raw, path=Path("x.yaml"))
    assert expected == err.value.message or expected in err.value.problems


# --------------------------------------------------------------------------- rendering


def test_input_values_are_data_not_template() -> None:
    spec = spec_of([{"id": "a", "agent": "webster", "task": "Find {{ inputs.query }}."}])
    renderer = TaskRenderer(spec)
    for value in ("{{ 7*7 }}", "{% for x in range(3) %}x{% endfor %}", "{{ ''.__class__ }}"):
        assert renderer.render_task("a", ctx({"query": value})) == f"Find {value}."


def test_upstream_results_are_data_too() -> None:
    spec = spec_of(
        [
            {"id": "a", "agent": "webster", "task": "x"},
            {
                "id": "b",
                "agent": "auditor",
                "depends_on": ["a"],
                "task": "Got: {{ steps.a.result }}",
            },
        ]
    )
    c = ctx(a=handoff(result="{{ 7*7 }}"))
    assert TaskRenderer(spec).render_task("b", c) == "Got: {{ 7*7 }}"


def test_run_context_and_step_fields() -> None:
    spec = spec_of(
        [
            {"id": "a", "agent": "webster", "task": "x"},
            {
                "id": "b",
                "agent": "auditor",
                "depends_on": ["a"],
                "task": "{{ run.workflow }}/{{ run.id }}: {{ steps.a.status }} "
                "{{ steps.a.confidence }} {{ steps.a.artifacts }} [{{ steps.a.notes }}] "
                "{{ steps.a.artifacts[0] }}",
            },
        ]
    )
    c = ctx(a={"status": "partial", "confidence": "low", "result": "", "artifacts": ["r.pdf"]})
    assert TaskRenderer(spec).render_task("b", c) == (
        "inline/wf-20260101T000000-0000abcd: partial low ['r.pdf'] [] r.pdf"
    )


def test_step_context_keeps_the_five_fields_and_a_reason() -> None:
    assert step_context(
        {
            "status": "complete",
            "result": "r",
            "confidence": "high",
            "runId": "x",
            "notes": None,
            "envelope": {},
        }
    ) == {
        "result": "r",
        "status": "complete",
        "confidence": "high",
        "artifacts": [],
        "notes": "",
        "reason": "",
    }


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("{{ ''.__class__ }}", "access to attribute '__class__' of 'str' object is unsafe."),
        (
            "{{ inputs.__class__.__mro__ }}",
            "access to attribute '__class__' of 'dict' object is unsafe.",
        ),
        ("{{ run.id.__len__() }}", "access to attribute '__len__' of 'str' object is unsafe."),
        ("{{ inputs.query.upper() }}", None),  # calling a harmless method is allowed
        (
            "{{ inputs.update({'query': 1}) }}",
            "access to attribute 'update' of 'dict' object is unsafe.",
        ),
    ],
    ids=["str-class", "dict-class", "dunder-call", "safe-method", "mutation"],
)
def test_sandbox_blocks_escapes(task: str, expected: str | None) -> None:
    renderer = TaskRenderer(spec_of([{"id": "a", "agent": "webster", "task": task}]))
    if expected is None:
        assert renderer.render_task("a", ctx()) == "CTE OF ULE"
        return
    with pytest.raises(WorkflowError) as err:
        renderer.render_task("a", ctx())
    assert err.value.message == f"step `a`: `task` fails to render: {expected}"
    assert err.value.step == "a"


def test_strict_undefined_names() -> None:
    renderer = TaskRenderer(
        spec_of([{"id": "a", "agent": "webster", "task": "{{ inputs.qurey }}"}])
    )
    with pytest.raises(WorkflowError) as err:
        renderer.render_task("a", ctx())
    assert (
        err.value.message
        == "step `a`: `task` fails to render: 'dict object' has no attribute 'qurey'."
    )


WHEN_CASES = [
    ("steps.research.status == 'partial'", handoff("partial"), True),
    ("steps.research.status == 'partial'", handoff("complete"), False),
    ("steps.research.confidence in ['low', 'medium']", handoff(confidence="medium"), True),
    ("steps.research.confidence in ['low', 'medium']", handoff(confidence="high"), False),
    ("steps.research.status != 'failed' and steps.research.confidence != 'low'", handoff(), True),
    ("not steps.research.result", handoff(result=""), True),
    ("steps.research.result | length > 3", handoff(result="long"), True),
    (
        "steps['research'].confidence == 'low' or steps.research.status == 'blocked'",
        handoff("blocked"),
        True,
    ),
    ("{{ steps.research.status == 'partial' }}", handoff("partial"), True),
]


@pytest.mark.parametrize(
    ("when", "research", "expected"),
    WHEN_CASES,
    ids=[f"when-{i}" for i in range(len(WHEN_CASES))],
)
def test_evaluate_when(when: str, research: dict[str, Any], expected: bool) -> None:
    spec = spec_of(
        [
            {"id": "research", "agent": "webster", "task": "x"},
            {
                "id": "next",
                "agent": "auditor",
                "depends_on": ["research"],
                "when": when,
                "task": "y",
                "gate": {"prompt": "p", "when": when},
            },
        ]
    )
    renderer = TaskRenderer(spec)
    c = ctx(research=research)
    assert renderer.evaluate_when("next", c) is expected
    assert renderer.evaluate_gate_when("next", c) is expected
    assert renderer.evaluate_when("research", c) is True  # no `when`: always
    assert renderer.evaluate_gate_when("research", c) is True


def test_when_on_a_missing_step_is_an_error_not_false() -> None:
    spec = spec_of(
        [{"id": "a", "agent": "webster", "task": "x", "when": "steps.gone.status == 'complete'"}]
    )
    with pytest.raises(WorkflowError) as err:
        TaskRenderer(spec).evaluate_when("a", ctx())
    assert err.value.message == (
        "step `a`: `when` cannot be evaluated: 'dict object' has no attribute 'gone'."
    )


def test_gate_prompt_and_outputs_render() -> None:
    spec = spec_of(
        [
            {
                "id": "a",
                "agent": "webster",
                "task": "x",
                "gate": {"prompt": "Confidence {{ steps.a.confidence }}?"},
            }
        ],
        outputs={"answer": "{{ steps.a.result }}", "upper": "{{ steps.a.result | upper }}"},
    )
    renderer = TaskRenderer(spec)
    c = ctx(a=handoff(confidence="low", result="zerodur"))
    assert renderer.render_gate_prompt("a", c) == "Confidence low?"
    assert renderer.render_outputs(c) == {"answer": "zerodur", "upper": "ZERODUR"}
    with pytest.raises(WorkflowError) as err:
        renderer.render_outputs(ctx())
    assert (
        err.value.message == "output `answer` fails to render: 'dict object' has no attribute 'a'."
    )


def test_referenced_steps_come_from_the_syntax_tree() -> None:
    task = (
        "Text that mentions steps.fake and {{ 'steps.quoted' }}.\n"
        "{# {{ steps.commented.result }} #}\n"
        "{{ steps.a.result }} {{ steps['b-c'].notes | trim }}\n"
        "{% if steps.d.status == 'partial' %}{{ steps.e.result }}{% endif %}\n"
        "{{ inputs.query }} {{ inputs['depth'] }}"
    )
    spec = spec_of(
        [
            {
                "id": "x",
                "agent": "webster",
                "task": task,
                "when": "steps.f.confidence == 'low'",
                "gate": {"prompt": "{{ steps.g.result }}", "when": "steps.h.status == 'complete'"},
            },
        ]
    )
    renderer = TaskRenderer(spec)
    assert renderer.referenced_steps("x") == {"a", "b-c", "d", "e", "f", "g", "h"}
    assert renderer.referenced_inputs("x") == {"query", "depth"}
    refs = renderer.references("x")
    assert sorted(refs) == ["gate.prompt", "gate.when", "task", "when"]
    assert refs["when"].steps == {"f"}
    assert not refs["task"].dynamic_steps


def test_loops_over_steps_are_dynamic() -> None:
    spec = spec_of(
        [
            {
                "id": "x",
                "agent": "webster",
                "task": "{% for id in steps %}{{ steps[id].result }}{% endfor %}",
            }
        ]
    )
    refs = TaskRenderer(spec).references("x")["task"]
    assert refs.dynamic_steps and refs.steps == frozenset()


def test_syntax_errors_are_collected_not_raised() -> None:
    spec = spec_of(
        [
            {"id": "a", "agent": "webster", "task": "{% if x %}no end"},
            {
                "id": "b",
                "agent": "webster",
                "task": "ok",
                "when": "steps.a.status ==",
                "gate": {"prompt": "{{ }}", "when": "a b"},
            },
        ],
        outputs={"o": "{{ steps.a.result | nofilter }}"},
    )
    renderer = TaskRenderer(spec)
    assert renderer.problems == [
        "step `a`: `task` has a template error at line 1: Unexpected end of template. Jinja "
        "was looking for the following tags: 'elif' or 'else' or 'endif'. The innermost block "
        "that needs to be closed is 'if'.",
        "step `b`: `when` has a template error: unexpected 'end of template'.",
        "step `b`: `gate.prompt` has a template error at line 1: Expected an expression, got "
        "'end of print statement'.",
        "step `b`: `gate.when` has a template error: unexpected 'b' after the expression.",
        "output `o`: `outputs` has a template error at line 1: No filter named 'nofilter'.",
    ]
    assert renderer.is_broken("a") and renderer.is_broken("b", "when")
    assert not renderer.is_broken("b", "task")
    with pytest.raises(WorkflowError) as err:
        renderer.render_task("a", ctx())
    assert err.value.message == "step `a`: `task` has a template error; run `workflow validate`."


def test_unknown_step_id_is_reported() -> None:
    renderer = TaskRenderer(spec_of([{"id": "research", "agent": "webster", "task": "x"}]))
    with pytest.raises(WorkflowError) as err:
        renderer.render_task("reserch", ctx())
    assert err.value.message == "`inline` has no step `reserch`; did you mean `research`?"


def test_templates_are_compiled_once(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = spec_of(
        [
            {
                "id": "a",
                "agent": "webster",
                "task": "{{ inputs.query | upper }}",
                "when": "inputs.query | length > 1",
            },
        ]
    )
    renderer = TaskRenderer(spec)
    env = _environment()

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("compiled again")

    monkeypatch.setattr(env, "from_string", refuse)
    monkeypatch.setattr(env, "compile_expression", refuse)
    monkeypatch.setattr(env, "parse", refuse)
    for _ in range(3):
        assert renderer.render_task("a", ctx()) == "CTE OF ULE"
        assert renderer.evaluate_when("a", ctx()) is True


# ------------------------------------------- the fast paths agree with Jinja2 itself

PARSE_CORPUS = [
    "",
    "plain text",
    "trailing newline\n",
    "two trailing\n\n",
    "crlf\r\nlines\r\n",
    "old mac\rline",
    "x {{ inputs.query }} y",
    "{{steps.a.result}}",
    "{{ steps['a-b'].notes }}\n",
    "{{ steps[ 'x' ] }}",
    "l1\n{{ steps.a.result }}\nl3 {{ run.id }}\n",
    "}} braces { alone }",
    "{ {{ run.workflow }} }",
    "{{\n  inputs.query\n}}",
    "{{ inputs.q }}{{ inputs.r }}",
    "{{ inputs.q }}{",
    "a\n{{\n steps[ 'x'\n ].y }}\nb {{ run.id }}",
]


@pytest.mark.parametrize("source", PARSE_CORPUS, ids=[f"src-{i}" for i in range(len(PARSE_CORPUS))])
def test_quick_parse_builds_jinjas_own_tree(source: str) -> None:
    quick = _quick_parse(source)
    assert quick is not None
    assert quick == _environment().parse(source)


@pytest.mark.parametrize(
    "source",
    [
        "{% if x %}{% endif %}",
        "{# c #}",
        "{{ x }}",
        "{{- inputs.q }}",
        "{{ inputs.q -}}",
        "{{ inputs.q|upper }}",
        "{{{ run.id }}",
        "a{{{ run.id }}",
        "{{ run.id }}{{{ inputs.q }}",
        "x {%{{ inputs.q }}",
        "{{ steps.0 }}",
        "{{ steps['a\\'b'] }}",
        "{{ steps.a-b }}",
        "{% raw %}{{ x }}{% endraw %}",
    ],
)
def test_quick_parse_leaves_the_rest_to_jinja(source: str) -> None:
    assert _quick_parse(source) is None


def test_quick_parse_fuzz() -> None:
    pieces = [
        "a",
        " ",
        "\n",
        "\r\n",
        "{",
        "}",
        "{{ ",
        " }}",
        "inputs",
        "steps",
        "run",
        ".x",
        ".result",
        "['a-b']",
        "{%",
        "{#",
        "-",
        "'",
        "7*7",
        "[0]",
    ]
    rng = random.Random(4)
    env = _environment()
    accepted = 0
    for _ in range(3000):
        source = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        quick = _quick_parse(source)
        if quick is not None:
            accepted += 1
            assert quick == env.parse(source), source
    assert accepted > 300


PARTS_CORPUS = [
    *PARSE_CORPUS,
    "{{ steps.a.data.x.y }} and {{ steps['b'].input.k }}",
    "{{ steps.a.data }} {{ steps.a.data.x }} {{ steps.c.status }}",
    "{{ steps }} {{ inputs }} {{ run.status }}",
    "{{ steps.a._private }}",
]


@pytest.mark.parametrize("source", PARTS_CORPUS, ids=[f"src-{i}" for i in range(len(PARTS_CORPUS))])
def test_template_from_parts_reads_what_its_tree_reads(source: str) -> None:
    """A trivial template is rendered and read from its parts, without a tree: its
    references, ``steps.x.<key>`` lookups and text are the ones its Jinja2 tree gives."""
    compiled = _Compiled(source, is_expr=False)
    tree = _environment().parse(source)
    assert compiled.refs == _references(tree)
    assert compiled.step_lookups() == _step_lookups(tree)
    assert compiled.tree == tree
    fast = _fast_template(tree)
    c = ctx(
        {"q": "Q", "r": "R", "query": "x"},
        a={"status": "complete", "result": "r", "data": {"x": {"y": 1}}},
        b={"status": "complete", "input": {"k": "v"}},
        c={"status": "partial"},
    )
    assert _outcome(compiled, c) == _outcome(compiled.jinja, c)
    if fast is not None and _outcome(fast[0], c)[0] == "ok":  # else Jinja2 answers
        assert _outcome(compiled, c) == _outcome(fast[0], c)


def test_same_source_is_parsed_once() -> None:
    spec = workflow_from_dict(
        {
            "name": "twice",
            "steps": [
                {"id": "a", "agent": "webster", "task": "look up {{ inputs.q }}"},
                {"id": "b", "agent": "webster", "task": "look up {{ inputs.q }}"},
            ],
            "inputs": {"q": {"required": True}},
        },
        path=Path("twice.yaml"),
    )
    first, second = TaskRenderer(spec), TaskRenderer(spec)
    assert first._steps["a"]["task"] is first._steps["b"]["task"] is second._steps["a"]["task"]


def test_validating_plain_lookups_does_not_import_jinja2(tmp_path: Path) -> None:
    import subprocess
    import sys

    wf = tmp_path / "plain.yaml"
    wf.write_text(
        "name: plain\ncaller: manager\nsteps:\n- {id: a, agent: webster, task: find it}\n"
        "- {id: b, agent: webster, depends_on: [a], task: 'after {{ steps.a.result }}'}\n",
        encoding="utf-8",
    )
    cfg = tmp_path / "orchestrator.yaml"
    cfg.write_text(
        "handoffs_dir: handoffs\npool: {enabled: false}\n"
        "gateway: {embedded: true, agents: {manager: {kind: echo}, webster: {kind: echo}}}\n"
        "agents: {manager: {url: local}, webster: {url: local}}\n",
        encoding="utf-8",
    )
    code = (
        "import sys; from engine.cli import workflow_main\n"
        f"sys.argv = ['workflow', 'validate', {str(wf)!r}, '--config', {str(cfg)!r}]\n"
        "try:\n    workflow_main()\nexcept SystemExit as e:\n    code = e.code\n"
        "print(code, 'jinja2' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-2:] == ["0", "False"], out.stdout + out.stderr


RENDER_CORPUS = [
    "{{ inputs.query }} / {{ run.id }}",
    "{{ steps.a.result }} {{ steps.a.artifacts }} {{ steps.a.artifacts[0] }}",
    "{{ steps.a.artifacts[-1] }}",
    "{{ steps['a'].notes }}|{{ steps.a.confidence }}",
    "{{ steps.missing.result }}",
    "{{ steps.a.nothing }}",
    "{{ steps.a.artifacts[5] }}",
    "{{ inputs.items }}",
    "{{ steps.a.result.upper }}",
    "{{ nothing }}",
]
EXPR_CORPUS = [
    "steps.a.status == 'partial'",
    "steps.a.status != 'partial' and steps.a.confidence == 'high'",
    "steps.a.confidence in ['low', 'medium'] or not steps.a.result",
    "steps.a.confidence not in ('low',)",
    "1 < 2 < 3",
    "steps.a.missing == 'x'",
    "steps.zzz.status == 'x'",
    "steps.a.result",
    "inputs.query == 'CTE of ULE'",
]
CONTEXTS = [
    ctx(a={"status": "partial", "confidence": "low", "result": "r", "artifacts": ["p.pdf"]}),
    ctx(a={"status": "complete", "confidence": "high", "result": "", "artifacts": []}),
    ctx({"query": "CTE of ULE"}),
]


def _outcome(func: Any, c: dict[str, Any]) -> tuple[str, Any]:
    try:
        return ("ok", func(c))
    except Exception as exc:  # compare the error type and text too
        return (type(exc).__name__, str(exc))


@pytest.mark.parametrize(
    ("source", "is_expr"),
    [(s, False) for s in RENDER_CORPUS] + [(s, True) for s in EXPR_CORPUS],
    ids=[f"tpl-{i}" for i in range(len(RENDER_CORPUS))]
    + [f"expr-{i}" for i in range(len(EXPR_CORPUS))],
)
def test_fast_evaluation_matches_jinja(source: str, is_expr: bool) -> None:
    compiled = _Compiled(source, is_expr=is_expr)
    for c in CONTEXTS:
        assert _outcome(compiled, c) == _outcome(compiled.jinja, c)


@pytest.mark.parametrize(
    ("task", "warned"),
    [
        ("use {{ inputs.topic }} after {{ steps.a.result }}", []),
        ("{{{topic}}} and {{topic}", []),  # every brace is part of a `{{` or `}}`
        ("use {topic} after {{ steps.a.result }}", ["{topic}"]),
        ("{{ inputs.topic }}{ a }", ["{ a }"]),
        ("{topic}{{x}}{a}", ["{topic}", "{a}"]),
    ],
)
def test_brace_warnings_find_single_braces_beside_double(task: str, warned: list[str]) -> None:
    spec = workflow_from_dict(
        {
            "name": "b",
            "caller": "manager",
            "inputs": {"topic": {"required": True}},
            "steps": [
                {"id": "a", "agent": "webster", "task": "first"},
                {"id": "b", "agent": "webster", "depends_on": ["a"], "task": task},
            ],
        },
        path=Path("b.yaml"),
    )
    found = [w.split("holds `", 1)[1].split("`", 1)[0] for w in brace_warnings(spec)]
    assert found == warned
