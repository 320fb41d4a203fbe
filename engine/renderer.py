"""Rendering a workflow template's Jinja2 parts: tasks, conditions, gate prompts, outputs.

Rendering uses Jinja2's immutable sandbox with strict undefined names. Values (inputs,
upstream results) only ever enter as context data, never as template source, so an input
``{{ 7*7 }}`` reaches the agent as those characters. Each template is parsed once;
templates that only look values up (``{{ inputs.query }}``, ``steps.a.status == 'partial'``)
are evaluated straight from their syntax tree, and anything else is compiled once by
Jinja2 (compiling costs about half a millisecond per template, rendering microseconds).
"""

from __future__ import annotations

import functools
import operator
import re
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine import sandbox
from engine.errors import WorkflowError, did_you_mean

if TYPE_CHECKING:
    from jinja2 import nodes

    from engine.workflow import WorkflowSpec

_DICT_ATTRS = frozenset(dir(dict))


def step_context(handoff: Mapping[str, Any]) -> dict[str, Any]:
    """What templates see of one finished step: its handoff's five public fields.

    Plus ``reason``: why a step that did not end well ended so (its error or skip
    reason; ``""`` otherwise), taken from the mapping's own ``reason`` key.
    """
    return {
        "result": handoff.get("result", ""),
        "status": handoff.get("status", ""),
        "confidence": handoff.get("confidence", ""),
        "artifacts": list(handoff.get("artifacts") or ()),
        "notes": handoff.get("notes") or "",
        "reason": handoff.get("reason") or "",
        **({"results": list(handoff["results"])} if "results" in handoff else {}),
        **({"data": handoff["data"]} if "data" in handoff else {}),
        **({"input": handoff["input"]} if "input" in handoff else {}),
    }


def render_context(
    *,
    inputs: dict[str, str],
    steps: dict[str, dict[str, Any]],
    run_id: str,
    workflow: str,
    run_status: str = "running",
) -> dict[str, Any]:
    """Build the rendering context ``{"inputs", "steps", "run": {"id", "workflow", "status"}}``.

    ``steps`` maps step ids to their handoffs (or any mapping with the handoff fields);
    each becomes ``{result, status, confidence, artifacts, notes, reason}`` (see
    ``step_context``). Pass the steps upstream of the step being rendered: a template that
    loops over ``steps`` then sees the same steps in every run. ``run_status`` is
    ``running`` while steps run; ``finally`` steps and outputs see ``complete`` or
    ``failed``, what the steps of ``steps`` came to (docs/workflows.md, "Failure paths").
    """
    return {
        "inputs": dict(inputs),
        "steps": {sid: step_context(h) for sid, h in steps.items()},
        "run": {"id": run_id, "workflow": workflow, "status": run_status},
    }


@dataclass(frozen=True)
class StatusTests:
    """What a ``when`` expression tests of statuses, found in its syntax tree."""

    #: Step ids whose ``status`` the expression reads (``steps.<id>.status``).
    steps: frozenset[str] = frozenset()
    #: ``(subject, literal)`` for each comparison of a status with a string: the subject
    #: is a step id, or ``run`` for ``run.status``.
    compared: tuple[tuple[str, str], ...] = ()
    #: ``(step id, literal)`` for each comparison of ``steps.<id>.confidence`` with a string.
    confidence: tuple[tuple[str, str], ...] = ()


def _status_subject(node: nodes.Node, key: str = "status") -> str | None:
    """``steps.a.status`` -> "a", ``run.status`` -> "run"; None for anything else
    (``key``: another field of a step, as ``confidence``; then ``run`` has none)."""
    path = _lookup_path(node)
    if path is None:
        return None
    root, keys = path
    if root == "run" and len(keys) == 1 and keys[0][1] == key == "status":
        return "run"
    if root == "steps" and len(keys) == 2 and keys[1][1] == key and type(keys[0][1]) is str:
        return str(keys[0][1])
    return None


def _string_consts(node: nodes.Node) -> list[str]:
    """The strings of a constant, or of a list or tuple of constants (else none)."""
    from jinja2 import nodes

    if isinstance(node, nodes.Const):
        return [node.value] if isinstance(node.value, str) else []
    if isinstance(node, nodes.List | nodes.Tuple):
        return [v for i in node.items for v in _string_consts(i)]
    return []


def data_reads(ast: nodes.Node, key: str = "data") -> set[tuple[str, tuple[Any, ...]]]:
    """``(step, keys)`` for each ``steps.<step>.data...`` lookup of a tree (or ``key``
    instead of ``data``), longest only: ``steps.a.data.x.y`` gives ``("a", ("x", "y"))``."""
    return _longest_reads(_step_lookups(ast), key)


def _longest_reads(
    lookups: frozenset[tuple[str, tuple[Any, ...]]], key: str
) -> set[tuple[str, tuple[Any, ...]]]:
    """``data_reads`` from a tree's ``steps.<step>.<key>...`` lookups."""
    found = {(step, keys[1:]) for step, keys in lookups if keys[0] == key}
    longest = set()
    for step, keys in found:
        if not any(s == step and len(k) > len(keys) and k[: len(keys)] == keys for s, k in found):
            longest.add((step, keys))
    return longest


#: Tree -> its ``steps.<step>.<key>...`` lookups: one walk serves every ``key`` asked.
_LOOKUPS: weakref.WeakKeyDictionary[Any, frozenset[tuple[str, tuple[Any, ...]]]] = (
    weakref.WeakKeyDictionary()
)


def _step_lookups(ast: nodes.Node) -> frozenset[tuple[str, tuple[Any, ...]]]:
    """``(step, (key, ...))`` for each ``steps.<step>.<key>...`` lookup of a tree."""
    from jinja2 import nodes

    cached = _LOOKUPS.get(ast)
    if cached is not None:
        return cached
    found: set[tuple[str, tuple[Any, ...]]] = set()
    for node in (ast, *ast.find_all((nodes.Getattr, nodes.Getitem))):
        path = _lookup_path(node)
        if path is not None:
            _add_step_lookup(found, path[0], path[1])
    result = _LOOKUPS[ast] = frozenset(found)
    return result


def _add_step_lookup(
    found: set[tuple[str, tuple[Any, ...]]], root: str, keys: tuple[tuple[bool, Any], ...]
) -> None:
    """Add ``steps.<step>.<key>...`` of one lookup path to ``found`` (other roots: nothing)."""
    if root != "steps" or len(keys) < 2:
        return
    chain = [k for _, k in keys]
    if isinstance(chain[0], str):
        found.add((chain[0], tuple(chain[1:])))


def status_tests(ast: nodes.Node) -> StatusTests:
    """The statuses an expression's tree reads, and the strings they are compared with."""
    from jinja2 import nodes

    read: set[str] = set()
    compared: list[tuple[str, str]] = []
    sure: list[tuple[str, str]] = []
    for node in (ast, *ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Compare))):
        if isinstance(node, nodes.Compare):
            operands = [node.expr, *(o.expr for o in node.ops)]
            for left, right in zip(operands, operands[1:], strict=False):
                for a, b in ((left, right), (right, left)):
                    subject = _status_subject(a)
                    if subject is not None:
                        compared.extend((subject, lit) for lit in _string_consts(b))
                    subject = _status_subject(a, "confidence")
                    if subject is not None:
                        sure.extend((subject, lit) for lit in _string_consts(b))
            continue
        subject = _status_subject(node)
        if subject is not None and subject != "run":
            read.add(subject)
    return StatusTests(frozenset(read), tuple(compared), tuple(sure))


@dataclass(frozen=True)
class TemplateRefs:
    """What one template reads, found in its Jinja2 syntax tree."""

    #: Step ids read as ``steps.<id>`` or ``steps['<id>']``.
    steps: frozenset[str] = frozenset()
    #: Input names read as ``inputs.<name>`` or ``inputs['<name>']``.
    inputs: frozenset[str] = frozenset()
    #: True when ``steps`` is used otherwise (a loop, a computed key): any step may be read.
    dynamic_steps: bool = False


def _environment() -> Any:
    """The one sandboxed Jinja2 environment of the process (bounded: see engine.sandbox)."""
    return sandbox.environment()


class _Fallback(Exception):
    """The fast evaluator cannot be sure of Jinja2's answer: let Jinja2 render it."""


_Eval = Callable[[Mapping[str, Any]], Any]

_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "lteq": operator.le,
    "gt": operator.gt,
    "gteq": operator.ge,
    "in": lambda a, b: a in b,
    "notin": lambda a, b: a not in b,
}


def _fast_expr(node: nodes.Node) -> _Eval | None:
    """Return an evaluator for a plain lookup/comparison expression, or None.

    Only forms whose Jinja2 result is certain are accepted; at run time the evaluator
    raises ``_Fallback`` for anything but plain dict/list lookups that hit, so the answer
    (or the error) is then Jinja2's own.
    """
    from jinja2 import nodes

    builders: tuple[tuple[Any, Callable[[Any], _Eval | None]], ...] = (
        (nodes.Const, _fast_const),
        (nodes.List | nodes.Tuple, _fast_sequence),
        (nodes.Not, _fast_not),
        (nodes.And | nodes.Or, _fast_bool),
        (nodes.Compare, _fast_compare),
    )
    for kinds, build in builders:
        if isinstance(node, kinds):
            return build(node)
    return _fast_lookup(node)


def _fast_const(node: nodes.Const) -> _Eval | None:
    value = node.value
    if value is None or isinstance(value, str | int | float | bool):
        return lambda ctx: value
    return None


def _fast_sequence(node: nodes.List | nodes.Tuple) -> _Eval | None:
    from jinja2 import nodes

    items = [_fast_expr(i) for i in node.items]
    if any(i is None for i in items):
        return None
    funcs = [i for i in items if i is not None]
    if isinstance(node, nodes.List):
        return lambda ctx: [f(ctx) for f in funcs]
    return lambda ctx: tuple(f(ctx) for f in funcs)


def _fast_not(node: nodes.Not) -> _Eval | None:
    inner = _fast_expr(node.node)
    return None if inner is None else (lambda ctx: not inner(ctx))


def _fast_bool(node: nodes.And | nodes.Or) -> _Eval | None:
    from jinja2 import nodes

    left, right = _fast_expr(node.left), _fast_expr(node.right)
    if left is None or right is None:
        return None
    if isinstance(node, nodes.And):
        return lambda ctx: left(ctx) and right(ctx)
    return lambda ctx: left(ctx) or right(ctx)


def _fast_compare(node: nodes.Compare) -> _Eval | None:
    first = _fast_expr(node.expr)
    ops = [(_COMPARE.get(o.op), _fast_expr(o.expr)) for o in node.ops]
    if first is None or any(op is None or f is None for op, f in ops):
        return None
    pairs = [(op, f) for op, f in ops if op is not None and f is not None]

    def compare(ctx: Mapping[str, Any]) -> Any:
        left = first(ctx)
        result: Any = True
        for op, f in pairs:  # a chained comparison, as in Python
            right = f(ctx)
            result = op(left, right)
            if not result:
                return result
            left = right
        return result

    return compare


def _fast_lookup(node: nodes.Node) -> _Eval | None:
    path = _lookup_path(node)
    return None if path is None else _path_lookup(*path)


def _path_lookup(root: str, keys: tuple[tuple[bool, Any], ...]) -> _Eval:
    """The evaluator of one lookup path (see ``_lookup_path``); ``_Fallback`` on a miss."""

    def lookup(ctx: Mapping[str, Any]) -> Any:
        try:
            obj = ctx[root]
        except KeyError:
            raise _Fallback from None
        for is_attr, key in keys:
            if type(obj) is dict:
                # Jinja2 tries getattr() first for `a.b`: a dict attribute would win.
                if (is_attr and key in _DICT_ATTRS) or key not in obj:
                    raise _Fallback
                obj = obj[key]
            elif type(obj) is list and type(key) is int and -len(obj) <= key < len(obj):
                obj = obj[key]
            else:
                raise _Fallback
        return obj

    return lookup


def _lookup_path(node: nodes.Node) -> tuple[str, tuple[tuple[bool, Any], ...]] | None:
    """``steps.a['b']`` -> ("steps", ((True, "a"), (False, "b"))); None for other forms."""
    from jinja2 import nodes

    keys: list[tuple[bool, Any]] = []
    while True:
        if isinstance(node, nodes.Getattr):
            if node.attr.startswith("_"):
                return None
            keys.append((True, node.attr))
            node = node.node
        elif isinstance(node, nodes.Getitem):
            arg = node.arg
            if not isinstance(arg, nodes.Const) or type(arg.value) not in (str, int):
                return None
            keys.append((False, arg.value))
            node = node.node
        elif isinstance(node, nodes.Name) and node.ctx == "load":
            return node.name, tuple(reversed(keys))
        else:
            return None


def _fast_template(
    ast: nodes.Template,
) -> tuple[Callable[[Mapping[str, Any]], str], TemplateRefs] | None:
    """An evaluator (and the references) for text and plain lookups only, or None."""
    from jinja2 import nodes

    parts: list[str | _Eval] = []
    steps: set[str] = set()
    inputs: set[str] = set()
    dynamic = False
    for stmt in ast.body:
        if not isinstance(stmt, nodes.Output):
            return None
        for child in stmt.nodes:
            if isinstance(child, nodes.TemplateData):
                parts.append(child.data)
                continue
            path = _lookup_path(child)
            func = _fast_expr(child) if path is not None else None
            if path is None or func is None:
                return None
            parts.append(func)
            dynamic = _add_ref(*path, steps, inputs) or dynamic
    return _joined(parts), TemplateRefs(frozenset(steps), frozenset(inputs), dynamic)


def _add_ref(
    root: str, keys: tuple[tuple[bool, Any], ...], steps: set[str], inputs: set[str]
) -> bool:
    """Add the step or input a lookup ``root`` + ``keys`` reads to ``steps`` or ``inputs``;
    True when it reads ``steps`` by a key that is not a constant name (dynamic)."""
    first = keys[0][1] if keys else None
    if root == "steps":
        if isinstance(first, str):
            steps.add(first)
            return False
        return True
    if root == "inputs" and isinstance(first, str):
        inputs.add(first)
    return False


def _joined(parts: list[str | _Eval]) -> Callable[[Mapping[str, Any]], str]:
    """An evaluator that joins the text parts and the lookups' values."""

    def render(ctx: Mapping[str, Any]) -> str:
        return "".join(p if type(p) is str else str(p(ctx)) for p in parts)  # type: ignore[operator]

    return render


# The trivial subset of Jinja2 most tasks are written in: text and `{{ root.a['b'] }}`.
_OPEN_RE = re.compile(r"\{[{%#]")
#: One lookup ``{{ root.path }}``: groups the whole lookup, its root and its path.
_VAR_RE = re.compile(
    r"(\{\{\s*(inputs|steps|run)((?:\.[A-Za-z_][A-Za-z0-9_]*|\[\s*'[A-Za-z0-9_-]*'\s*\])*)\s*\}\})"
)
_PART_RE = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[\s*'([A-Za-z0-9_-]*)'\s*\]")
_NEWLINE_RE = re.compile(r"\r\n|\r|\n")


#: One part of a trivial template: its text, or ``(root, keys, lineno)`` of a lookup
#: (``keys`` as ``_lookup_path`` gives them).
_Part = str | tuple[str, tuple[tuple[bool, Any], ...], int]


def _quick_parts(source: str) -> list[_Part] | None:
    """The text and lookups of a template in the trivial subset (see ``_quick_parse``).

    Returns None for anything else. No Jinja2 import: a task of plain text and lookups
    is rendered, and its references found, from these parts alone.

    One ``split`` on the lookups: the text between them must open no tag (``{{``,
    ``{%``, ``{#``), also not across a lookup's first brace (a text ending in ``{``):
    then the first tag Jinja2's lexer finds is always the next lookup, and the parts are
    the ones a scan from tag to tag would give.
    """
    if "{" not in source and "\r" not in source:  # plain text: no tag can open
        text = source[:-1] if source.endswith("\n") else source
        return [text] if text else []
    # As Jinja2's lexer does: normalize newlines, drop one trailing newline.
    text = "\n".join(_NEWLINE_RE.split(source)) if "\r" in source else source
    if text.endswith("\n"):
        text = text[:-1]
    pieces = _VAR_RE.split(text)  # text, (lookup, root, path, text) per lookup
    last = len(pieces) - 1
    parts: list[_Part] = []
    lineno = 1
    for i in range(0, last + 1, 4):
        chunk = pieces[i]
        if chunk:
            if "{" in chunk and (_OPEN_RE.search(chunk) or (i < last and chunk[-1] == "{")):
                return None
            parts.append(chunk)
            lineno += chunk.count("\n")
        if i == last:
            return parts
        whole, root, path = pieces[i + 1], pieces[i + 2], pieces[i + 3]
        if "[" in path:
            keys = tuple(
                (True, attr) if attr else (False, key) for attr, key in _PART_RE.findall(path)
            )
        else:  # only `.name` parts (what _VAR_RE allows without a bracket)
            keys = tuple([(True, attr) for attr in path.split(".")[1:]])
        parts.append((root, keys, lineno))
        lineno += whole.count("\n")
    return parts  # not reached: a split ends with a text piece


def _quick_parse(source: str) -> nodes.Template | None:
    """Build the syntax tree Jinja2's parser would, for the trivial subset only; else None.

    Jinja2's parser costs about 0.3 ms for a typical task, too much for a 1,000-step
    dry run. A template of plain text and ``{{ inputs.x }}`` / ``{{ steps.a.result }}`` /
    ``{{ steps['a-b'].notes }}`` lookups gets the identical tree here (the tests compare
    with ``Environment.parse``); anything else -- blocks, comments, filters, whitespace
    control -- returns None and goes to Jinja2's parser.
    """
    parts = _quick_parts(source)
    return None if parts is None else _parts_tree(parts)


def _parts_tree(parts: list[_Part]) -> nodes.Template:
    """The Jinja2 syntax tree of ``_quick_parts``' parts (what ``Environment.parse`` gives)."""
    from jinja2 import nodes

    body: list[nodes.Expr] = []
    lineno = 1
    for part in parts:
        if isinstance(part, str):
            body.append(nodes.TemplateData(part, lineno=lineno))
            lineno += part.count("\n")
            continue
        root, keys, lineno = part
        node: nodes.Expr = nodes.Name(root, "load", lineno=lineno)
        for is_attr, key in keys:
            if is_attr:
                node = nodes.Getattr(node, key, "load", lineno=lineno)
            else:
                node = nodes.Getitem(node, nodes.Const(key, lineno=lineno), "load", lineno=lineno)
        body.append(node)
    return nodes.Template([nodes.Output(body, lineno=1)] if body else [], lineno=1)


_Lookups = frozenset[tuple[str, tuple[Any, ...]]]


def _parts_template(
    parts: list[_Part],
) -> tuple[Callable[[Mapping[str, Any]], str], TemplateRefs, _Lookups]:
    """``_fast_template``'s evaluator and references, and the ``steps.<id>.<key>...``
    lookups, straight from the parts (no syntax tree)."""
    funcs: list[str | _Eval] = []
    steps: set[str] = set()
    inputs: set[str] = set()
    lookups: set[tuple[str, tuple[Any, ...]]] = set()
    dynamic = False
    for part in parts:
        if isinstance(part, str):
            funcs.append(part)
            continue
        root, keys, _ = part
        funcs.append(_path_lookup(root, keys))
        first = keys[0][1] if keys else None
        if root == "steps":  # what _add_ref and _add_step_lookup find, inline
            if type(first) is not str:
                dynamic = True
                continue
            steps.add(first)
            if len(keys) == 2:  # every Getattr/Getitem node of the tree under steps.<id>
                lookups.add((first, (keys[1][1],)))
            elif len(keys) > 2:
                chain = tuple([k for _, k in keys[1:]])
                lookups.update([(first, chain[:n]) for n in range(1, len(chain) + 1)])
        elif root == "inputs" and type(first) is str:
            inputs.add(first)
    refs = TemplateRefs(frozenset(steps), frozenset(inputs), dynamic)
    return _joined(funcs), refs, frozenset(lookups)


def _references(ast: nodes.Node) -> TemplateRefs:
    """Collect the steps and inputs a syntax tree reads (see ``TemplateRefs``)."""
    from jinja2 import nodes

    steps: set[str] = set()
    inputs: set[str] = set()
    dynamic = False
    stack: list[tuple[nodes.Node, nodes.Node | None]] = [(ast, None)]
    while stack:
        node, parent = stack.pop()
        if isinstance(node, nodes.Name) and node.name in ("steps", "inputs"):
            key: Any = None
            if isinstance(parent, nodes.Getattr) and parent.node is node:
                key = parent.attr
            elif (
                isinstance(parent, nodes.Getitem)
                and parent.node is node
                and isinstance(parent.arg, nodes.Const)
            ):
                key = parent.arg.value
            if node.name == "steps":
                if isinstance(key, str):
                    steps.add(key)
                else:
                    dynamic = True
            elif isinstance(key, str):
                inputs.add(key)
        stack.extend((child, node) for child in node.iter_child_nodes())
    return TemplateRefs(frozenset(steps), frozenset(inputs), dynamic)


class _Compiled:
    """One template or expression: source, syntax tree, references, evaluators."""

    __slots__ = ("source", "is_expr", "refs", "_fast", "_jinja", "_ast", "_parts", "_lookups")

    def __init__(self, source: str, *, is_expr: bool) -> None:
        """Parse ``source``; compile it now unless the fast evaluator covers it.

        A template of text and plain lookups (``_quick_parts``) gets no syntax tree until
        one is asked for (``tree``), and Jinja2 is not imported for it.
        Raises jinja2.TemplateSyntaxError (or TemplateAssertionError on compiling).
        """
        self.source = source
        self.is_expr = is_expr
        self._jinja: Any = None
        self._fast: Callable[[Mapping[str, Any]], Any] | None = None
        self._ast: nodes.Node | None = None
        self._parts: list[_Part] | None = None
        self._lookups: frozenset[tuple[str, tuple[Any, ...]]] | None = None
        if not is_expr:
            parts = _quick_parts(source)
            if parts is not None and (
                "._" not in source  # a `.name` lookup starting with `_` has this text
                or not any(
                    not isinstance(p, str) and any(a and k.startswith("_") for a, k in p[1])
                    for p in parts
                )
            ):
                self._parts = parts
                self._fast, self.refs, self._lookups = _parts_template(parts)
                return
        refs: TemplateRefs | None = None
        if is_expr:
            from jinja2.lexer import describe_token
            from jinja2.parser import Parser

            parser = Parser(_environment(), source, state="variable")
            self._ast = parser.parse_expression()
            if not parser.stream.eos:
                tok = parser.stream.current
                parser.fail(f"unexpected {describe_token(tok)!r} after the expression", tok.lineno)
            self._fast = _fast_expr(self._ast)
        else:
            self._ast = _quick_parse(source) or _environment().parse(source)
            fast = _fast_template(self._ast)
            if fast is not None:  # the references were read from the same tree on the way
                self._fast, refs = fast
        self.refs = refs if refs is not None else _references(self._ast)
        if self._fast is None:
            self._compile()

    @property
    def tree(self) -> nodes.Node:
        """The parsed syntax tree (a template, or an expression)."""
        if self._ast is None:
            assert self._parts is not None  # set whenever no tree was built
            self._ast = _parts_tree(self._parts)
        return self._ast

    def step_lookups(self) -> frozenset[tuple[str, tuple[Any, ...]]]:
        """``(step, (key, ...))`` for each ``steps.<step>.<key>...`` lookup it makes."""
        if self._lookups is None:
            self._lookups = _step_lookups(self.tree)
        return self._lookups

    def _compile(self) -> Any:
        if self._jinja is None:
            env = _environment()
            if self.is_expr:
                self._jinja = env.compile_expression(self.source, undefined_to_none=False)
            else:  # from the tree parsed in __init__: no second parse
                tree = sandbox.guard_loops(self.tree)  # refs were read already
                tree.set_environment(env)
                self._jinja = env.from_string(tree)
        return self._jinja

    def __call__(
        self, ctx: Mapping[str, Any], limits: sandbox.RenderLimits = sandbox.DEFAULT_LIMITS
    ) -> Any:
        """Render (a template, to str) or evaluate (an expression, to its value)."""
        if self._fast is not None:
            try:
                value = self._fast(ctx)
            except _Fallback:
                pass
            else:
                if not self.is_expr and len(value) > limits.max_chars:
                    with sandbox.render_budget(limits):
                        sandbox.check_output(value)
                return value
        return self.jinja(ctx, limits)

    def jinja(
        self, ctx: Mapping[str, Any], limits: sandbox.RenderLimits = sandbox.DEFAULT_LIMITS
    ) -> Any:
        """Render or evaluate with Jinja2 itself (the fast evaluator's reference)."""
        compiled = self._compile()
        with sandbox.render_budget(limits):
            if self.is_expr:
                value = compiled(**ctx)
                bool(value)  # a StrictUndefined result raises here, as it would in `if`
                return value
            return sandbox.bounded_render(compiled, ctx)


@functools.lru_cache(maxsize=4096)
def _compiled(source: str, is_expr: bool) -> _Compiled:
    """The ``_Compiled`` of one source, parsed once per process: the same text in many
    steps, or the same workflow prepared again (a server, a sub-workflow), reuses it.
    A source that fails to parse raises each time (errors are not cached)."""
    return _Compiled(source, is_expr=is_expr)


def _jinja_problem(exc: Exception) -> str:
    """A readable sentence for a Jinja2 (or Python) error, with a near miss for filters."""
    text = str(getattr(exc, "message", None) or exc).strip().rstrip(".") or type(exc).__name__
    m = re.fullmatch(r"No (filter|test) named '([^']+)'", text)
    if m:
        env = _environment()
        known = env.filters if m.group(1) == "filter" else env.tests
        return text + (did_you_mean(m.group(2), list(known)) or ".")
    return text + "."


class TaskRenderer:
    """Renders a template's tasks, conditions, gate prompts and outputs in a sandbox.

    Every template is parsed (and, unless trivially evaluable, compiled) once here;
    syntax errors are collected in ``problems`` instead of raised. Render methods raise
    WorkflowError naming the step and field.

    Example::

        renderer = TaskRenderer(spec)
        assert not renderer.problems
        renderer.render_task("research", ctx)
        renderer.evaluate_when("review", ctx)   # True when the step has no `when`
    """

    def __init__(
        self, spec: WorkflowSpec, *, limits: sandbox.RenderLimits = sandbox.DEFAULT_LIMITS
    ) -> None:
        """Parse and compile every template of ``spec``; each render stays within ``limits``."""
        self.spec = spec
        self.limits = limits
        self.problems: list[str] = []
        self._steps: dict[str, dict[str, _Compiled]] = {}
        self._outputs: dict[str, _Compiled] = {}
        self._broken: set[tuple[str, str]] = set()
        for step in spec.steps:
            if step.id in self._steps:
                continue  # a duplicate id; the planner reports it
            fields: list[tuple[str, str, bool]] = (
                [(f"inputs.{k}", v, False) for k, v in step.workflow_inputs.items()]
                if step.workflow is not None
                else [("task", step.task, False)]
            )
            if step.for_each is not None:
                fields.append(("for_each", step.for_each, True))
            if step.when is not None:
                fields.append(("when", step.when, True))
            if step.gate is not None:
                fields.append(("gate.prompt", step.gate.prompt, False))
                if step.gate.when is not None:
                    fields.append(("gate.when", step.gate.when, True))
            compiled: dict[str, _Compiled] = {}
            for name, source, is_expr in fields:
                item = self._compile(f"step `{step.id}`", name, source, is_expr)
                if item is None:
                    self._broken.add((step.id, name))
                else:
                    compiled[name] = item
            self._steps[step.id] = compiled
        for name, source in spec.outputs.items():
            item = self._compile(f"output `{name}`", "outputs", source, False)
            if item is not None:
                self._outputs[name] = item

    def _compile(self, label: str, name: str, source: str, is_expr: bool) -> _Compiled | None:
        try:
            return _compiled(source, is_expr)
        except Exception as exc:
            import jinja2  # imported already when a template failed to parse

            if not isinstance(exc, jinja2.TemplateSyntaxError):  # incl. TemplateAssertionError
                raise
            line = f" at line {exc.lineno}" if not is_expr else ""
            self.problems.append(
                f"{label}: `{name}` has a template error{line}: {_jinja_problem(exc)}"
            )
        return None

    # -- inspection

    def references(self, step_id: str) -> dict[str, TemplateRefs]:
        """What each template field of a step reads: ``{"task": ..., "when": ..., ...}``."""
        return {name: c.refs for name, c in self._fields(step_id).items()}

    def output_references(self) -> dict[str, TemplateRefs]:
        """What each output template reads."""
        return {name: c.refs for name, c in self._outputs.items()}

    def referenced_steps(self, step_id: str) -> set[str]:
        """Step ids read as ``steps.<id>`` / ``steps['id']`` by the step's task, when, gate."""
        return {s for c in self._fields(step_id).values() for s in c.refs.steps}

    def referenced_inputs(self, step_id: str) -> set[str]:
        """Input names read as ``inputs.<name>`` / ``inputs['name']`` by the step."""
        return {s for c in self._fields(step_id).values() for s in c.refs.inputs}

    def status_tests(self, step_id: str) -> StatusTests:
        """What the step's ``when`` tests of statuses (nothing when it has no ``when``).

        A step whose ``when`` reads an upstream step's ``status`` decides for itself what
        happens when that step ends badly, instead of being skipped (engine.runner).
        """
        item = self._fields(step_id).get("when")
        if item is None:
            return StatusTests()
        return status_tests(item.tree)

    def data_reads(
        self, step_id: str, key: str = "data"
    ) -> dict[str, set[tuple[str, tuple[Any, ...]]]]:
        """Field name -> the ``steps.<id>.data...`` (or ``key``) lookups of the step."""
        return {
            name: _longest_reads(c.step_lookups(), key) for name, c in self._fields(step_id).items()
        }

    def output_data_reads(self, key: str = "data") -> dict[str, set[tuple[str, tuple[Any, ...]]]]:
        """Output name -> the ``steps.<id>.data...`` (or ``key``) lookups of its template."""
        return {name: _longest_reads(c.step_lookups(), key) for name, c in self._outputs.items()}

    def is_broken(self, step_id: str, field_name: str | None = None) -> bool:
        """True when a template of the step (or the given field) failed to compile."""
        return bool(self._broken) and any(  # the planner asks ~4 times per step
            sid == step_id and (field_name is None or f == field_name) for sid, f in self._broken
        )

    def _fields(self, step_id: str) -> dict[str, _Compiled]:
        try:
            return self._steps[step_id]
        except KeyError:
            raise WorkflowError(
                f"`{self.spec.name}` has no step `{step_id}`"
                f"{did_you_mean(step_id, list(self._steps))}",
                path=self.spec.path,
                step=step_id,
            ) from None

    # -- rendering

    def _run(self, step_id: str, name: str, context: Mapping[str, Any]) -> Any:
        fields = self._fields(step_id)
        item = fields.get(name)
        if item is None:
            raise WorkflowError(
                f"step `{step_id}`: `{name}` has a template error; run `workflow validate`.",
                path=self.spec.path,
                step=step_id,
            )
        try:
            return item(context, self.limits)
        except sandbox.RenderLimitError as exc:
            raise WorkflowError(
                f"step `{step_id}`: `{name}` was stopped: {exc}. {self._bounds()}",
                path=self.spec.path,
                step=step_id,
            ) from exc
        except Exception as exc:  # the boundary: no jinja2 error type leaves the engine
            verb = "cannot be evaluated" if item.is_expr else "fails to render"
            raise WorkflowError(
                f"step `{step_id}`: `{name}` {verb}: {_jinja_problem(exc)}",
                path=self.spec.path,
                step=step_id,
            ) from exc

    def _bounds(self) -> str:
        return (
            f"A render may use at most {self.limits.describe()}; make the template do less "
            "(loop over fewer items, build shorter text)."
        )

    def render_task(self, step_id: str, context: Mapping[str, Any]) -> str:
        """Render the step's ``task``."""
        return str(self._run(step_id, "task", context))

    def render_sendable_task(self, step_id: str, context: Mapping[str, Any]) -> str:
        """Render the step's ``task`` to send it: ``WorkflowError`` when it renders to no
        text (only whitespace), which is never sent (docs/workflows.md, "Rendering").

        Not for trial renders: placeholder results may render empty where real ones
        would not."""
        task = self.render_task(step_id, context)
        if not task.strip():
            raise WorkflowError(
                f"step `{step_id}`'s task rendered to empty text, so nothing was sent: check "
                "the values it reads (an input or a step result may be empty).",
                step=step_id,
            )
        return task

    def render_workflow_inputs(self, step_id: str, context: Mapping[str, Any]) -> dict[str, str]:
        """Render the ``inputs`` of a sub-workflow step: input name -> text.

        Raises WorkflowError naming the step and the first input that fails."""
        spec = next(s for s in self.spec.steps if s.id == step_id)
        return {
            name: str(self._run(step_id, f"inputs.{name}", context))
            for name in spec.workflow_inputs
        }

    def _has(self, step_id: str, name: str) -> bool:
        return name in self._fields(step_id) or (step_id, name) in self._broken

    def render_gate_prompt(self, step_id: str, context: Mapping[str, Any]) -> str:
        """Render the prompt of the step's gate (WorkflowError if it has none)."""
        if not self._has(step_id, "gate.prompt"):
            raise WorkflowError(f"step `{step_id}` has no gate.", step=step_id)
        return str(self._run(step_id, "gate.prompt", context))

    def evaluate_when(self, step_id: str, context: Mapping[str, Any]) -> bool:
        """Evaluate the step's ``when`` (True when it has none)."""
        if not self._has(step_id, "when"):
            return True
        return bool(self._run(step_id, "when", context))

    def evaluate_for_each(self, step_id: str, context: Mapping[str, Any]) -> Any:
        """The value of the step's ``for_each`` (WorkflowError if it has none)."""
        if not self._has(step_id, "for_each"):
            raise WorkflowError(f"step `{step_id}` has no `for_each`.", step=step_id)
        return self._run(step_id, "for_each", context)

    def evaluate_gate_when(self, step_id: str, context: Mapping[str, Any]) -> bool:
        """Evaluate the ``when`` of the step's gate (True when it has none)."""
        if not self._has(step_id, "gate.when"):
            return True
        return bool(self._run(step_id, "gate.when", context))

    def render_output(self, name: str, context: Mapping[str, Any]) -> str:
        """Render one output template."""
        if name not in self.spec.outputs:
            raise WorkflowError(
                f"`{self.spec.name}` has no output `{name}`"
                f"{did_you_mean(name, list(self.spec.outputs))}",
                path=self.spec.path,
            )
        item = self._outputs.get(name)
        if item is None:
            raise WorkflowError(
                f"output `{name}` has a template error; run `workflow validate`.",
                path=self.spec.path,
            )
        try:
            return str(item(context, self.limits))
        except sandbox.RenderLimitError as exc:
            raise WorkflowError(
                f"output `{name}` was stopped: {exc}. {self._bounds()}", path=self.spec.path
            ) from exc
        except Exception as exc:  # the boundary, as in _run
            raise WorkflowError(
                f"output `{name}` fails to render: {_jinja_problem(exc)}", path=self.spec.path
            ) from exc

    def render_outputs(self, context: Mapping[str, Any]) -> dict[str, str]:
        """Render every output template; raises WorkflowError naming the first that fails."""
        return {name: self.render_output(name, context) for name in self.spec.outputs}
