"""The one YAML reader of the engine: strict, bounded, and faithful to what the user wrote.

Every YAML file the engine reads (``orchestrator.yaml``, workflow templates) goes through
``read_yaml`` / ``parse_yaml``. Compared with ``yaml.safe_load`` it:

- refuses a key written twice in one mapping, at any depth (``file:line``);
- refuses a mapping or list used as a key, which is what an unquoted Jinja2 value such as
  ``task: {{ inputs.query }}`` is, and says to quote the value;
- bounds nesting depth and the size of the document once aliases are expanded (alias
  bombs), and refuses recursive aliases;
- types only what YAML 1.2's core schema types: ``true``/``false``, ``null``/``~``,
  decimal integers and floats. ``NO``, ``on``, ``0777``, ``1_000``, ``12:30``,
  ``2026-11-01``, ``.nan``, ``.inf`` stay the strings the user wrote;
- refuses numbers that are not finite or have more digits than any setting needs;
- keeps every mapping key as the text written (``1:`` is the key ``"1"``);
- allows only the core tags (``!!str``, ``!!int``, ``!!float``, ``!!bool``, ``!!null``,
  ``!!seq``, ``!!map``) and merge keys.

Example::

    data, problems = parse_yaml(text, source="workflows/x.yaml", error=WorkflowError)
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from typing import Any

from engine.errors import OrchestratorError

#: Deepest nesting of mappings and lists accepted.
MAX_DEPTH = 64
#: Most nodes a document may have once its aliases are expanded.
MAX_NODES = 100_000
#: Most digits an integer may have (the int-str limit is 4300; no setting needs 20).
MAX_INT_DIGITS = 30

_TAG = "tag:yaml.org,2002:"
_ALLOWED_TAGS = frozenset(
    _TAG + t for t in ("str", "int", "float", "bool", "null", "seq", "map", "merge")
)

_BOOL_RE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_NULL_RE = re.compile(r"^(?:~|null|Null|NULL|)$")
_INT_RE = re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$")
_FLOAT_RE = re.compile(r"^[-+]?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$")
#: Values YAML 1.1 would have silently typed; reported when they meet a typed field.
YAML11_LOOKALIKE = re.compile(
    r"^(?:y|Y|yes|Yes|YES|n|N|no|No|NO|on|On|ON|off|Off|OFF|"
    r"[-+]?0[0-7_]+|[-+]?0x[0-9a-fA-F_]+|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?|"
    r"[-+]?[0-9][0-9_]*_[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)|"
    r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}.*)$"
)


def _loader_base() -> Any:
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def _loader_class() -> Any:
    import yaml
    from yaml.constructor import ConstructorError, SafeConstructor
    from yaml.nodes import ScalarNode

    base = _loader_base()

    class _Strict(base):  # type: ignore[misc, valid-type]
        """A safe loader with the core schema's implicit types and strict constructors."""

        yaml_implicit_resolvers: dict[Any, Any] = {}
        yaml_constructors = dict(SafeConstructor.yaml_constructors)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            self.flatten_mapping(node)
            mapping: dict[str, Any] = {}
            for key_node, value_node in node.value:
                # keys were checked to be scalars; keep them as written
                key = key_node.value if isinstance(key_node, ScalarNode) else str(key_node)
                mapping[key] = self.construct_object(value_node, deep=deep)
            return mapping

        def _int(self, node: Any) -> int:
            text = str(self.construct_scalar(node)).strip()
            if not _INT_RE.match(text) or len(text.lstrip("+-")) > MAX_INT_DIGITS:
                raise ConstructorError(
                    None,
                    None,
                    f"`{_short(text)}` is not a decimal integer of at most {MAX_INT_DIGITS} "
                    "digits; write a plain number, or quote the value",
                    node.start_mark,
                )
            return int(text)

        def _float(self, node: Any) -> float:
            text = str(self.construct_scalar(node)).strip()
            value = math.nan
            if _FLOAT_RE.match(text) and len(text) <= 64:
                value = float(text)
            if not math.isfinite(value):
                raise ConstructorError(
                    None,
                    None,
                    f"`{_short(text)}` is not a finite decimal number; write a plain number "
                    "such as `30` or `0.5`, or quote the value",
                    node.start_mark,
                )
            return value

    _Strict.add_constructor(_TAG + "int", _Strict._int)
    _Strict.add_constructor(_TAG + "float", _Strict._float)
    _Strict.add_implicit_resolver(_TAG + "bool", _BOOL_RE, list("tTfF"))
    _Strict.add_implicit_resolver(_TAG + "null", _NULL_RE, ["~", "n", "N", ""])
    _Strict.add_implicit_resolver(_TAG + "int", _INT_RE, list("-+0123456789"))
    _Strict.add_implicit_resolver(_TAG + "float", _FLOAT_RE, list("-+0123456789."))
    _Strict.add_implicit_resolver(_TAG + "merge", re.compile(r"^<<$"), ["<"])
    _ = yaml  # the module is imported for its side effect of being loaded once
    return _Strict


_TOO_DEEP = f"nesting is deeper than {MAX_DEPTH} levels; flatten the document."
_TOO_MANY = (
    f"the document expands to more than {MAX_NODES} values through its aliases (`*name`); "
    "write the values out or use fewer aliases."
)


def _line(mark: Any) -> int | None:
    return None if mark is None else int(mark.line) + 1


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _fail(error: type[OrchestratorError], source: str, line: int | None, problem: str) -> Any:
    where = f" at line {line}" if line else ""
    return error(f"`{source}`{where}: {problem}", path=source)


def _check_events(text: str, source: str, error: type[OrchestratorError]) -> None:
    """First pass over the event stream: depth, expanded size and recursive aliases."""
    import yaml

    loader = _loader_base()(text)
    try:
        sizes: dict[str, int] = {}  # anchor -> values it stands for
        stack: list[tuple[str | None, int]] = []  # (anchor, count at start) per collection
        count = 0  # values so far, aliases expanded
        while loader.check_event():
            ev = loader.get_event()
            if isinstance(ev, yaml.CollectionStartEvent):
                stack.append((ev.anchor, count))
                count += 1
                if len(stack) > MAX_DEPTH:
                    raise _fail(
                        error,
                        source,
                        _line(ev.start_mark),
                        _TOO_DEEP,
                    )
            elif isinstance(ev, yaml.CollectionEndEvent):
                anchor, start = stack.pop()
                if anchor is not None:
                    sizes[anchor] = count - start
            elif isinstance(ev, yaml.AliasEvent):
                if any(frame[0] == ev.anchor for frame in stack):
                    raise _fail(
                        error,
                        source,
                        _line(ev.start_mark),
                        f"alias `*{ev.anchor}` refers to a node that contains it; "
                        "recursive structures are not supported.",
                    )
                count += sizes.get(str(ev.anchor), 1)
            elif isinstance(ev, yaml.ScalarEvent):
                count += 1
                if ev.anchor is not None:
                    sizes[ev.anchor] = 1
            if count > MAX_NODES:
                raise _fail(
                    error,
                    source,
                    _line(ev.start_mark),
                    _TOO_MANY,
                )
    finally:
        loader.dispose()


def _check_nodes(root: Any, source: str, error: type[OrchestratorError]) -> list[str]:
    """Second pass over the composed nodes: tags, key shapes, duplicate keys; and, for a
    document without anchors (which ``_check_events`` did not read), depth and size."""
    from yaml.nodes import MappingNode, ScalarNode, SequenceNode

    problems: list[str] = []
    seen_ids: set[int] = set()
    todo: list[tuple[Any, str, int]] = [(root, "", 1)]
    count = 0  # values so far (no aliases here, or the first pass bounded them)
    while todo:
        node, label, depth = todo.pop()
        if id(node) in seen_ids:
            continue
        seen_ids.add(id(node))
        if node.tag not in _ALLOWED_TAGS:
            raise _fail(
                error,
                source,
                node.start_mark.line + 1,
                f"the tag `{node.tag}` is not supported; remove it (only plain values, "
                "lists and mappings are read).",
            )
        count += 1 + (len(node.value) if isinstance(node, MappingNode) else 0)
        if count > MAX_NODES:
            raise _fail(error, source, node.start_mark.line + 1, _TOO_MANY)
        if isinstance(node, ScalarNode):
            continue
        if depth > MAX_DEPTH:
            raise _fail(error, source, node.start_mark.line + 1, _TOO_DEEP)
        # A scalar's label is never read (it has no keys), so only containers get one.
        if isinstance(node, SequenceNode):
            todo.extend(
                (child, "" if isinstance(child, ScalarNode) else f"{label}[{i}]", depth + 1)
                for i, child in enumerate(node.value)
            )
        elif isinstance(node, MappingNode):
            _walk_mapping(node, label, depth, (source, error), problems, todo)
    return problems


def _plain_and_valid(root: Any) -> bool:
    """True when a document without anchors has nothing ``_check_nodes`` would report.

    The same rules (tags, plain keys written once, depth, size), checked in one tight
    walk that makes no labels and keeps no order: for a valid document (nearly every
    one) it is the whole check, at half the cost. False at the first doubt (a merge key
    too), and ``_check_nodes`` then finds and words the problems in its own order.
    """
    from yaml.nodes import ScalarNode, SequenceNode

    allowed, merge = _ALLOWED_TAGS, _TAG + "merge"
    count = 0
    todo: list[tuple[Any, int]] = [(root, 1)]
    while todo:
        node, depth = todo.pop()
        if node.tag not in allowed:
            return False
        if node.__class__ is ScalarNode:
            count += 1
            continue
        if depth > MAX_DEPTH:
            return False
        if node.__class__ is SequenceNode:
            count += 1
            children = node.value
        else:
            pairs = node.value
            count += 1 + len(pairs)
            keys = set()
            for key, _ in pairs:
                if key.__class__ is not ScalarNode or key.tag == merge:
                    return False
                keys.add(key.value)
            if len(keys) != len(pairs):
                return False
            children = [value for _, value in pairs]
        for child in children:
            if child.__class__ is ScalarNode:
                if child.tag not in allowed:
                    return False
                count += 1
            else:
                todo.append((child, depth + 1))
    return count <= MAX_NODES


def _walk_mapping(
    node: Any,
    label: str,
    depth: int,
    where: tuple[str, type[OrchestratorError]],
    problems: list[str],
    todo: list[tuple[Any, str, int]],
) -> None:
    """One mapping of ``_check_nodes``: its keys checked (plain, not written twice, no
    unquoted ``{{`` value), its values queued with their dotted labels."""
    from yaml.nodes import MappingNode, ScalarNode

    source, error = where
    merge = _TAG + "merge"
    keys: dict[str, int] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, ScalarNode):
            raise _fail(error, source, key_node.start_mark.line + 1, _key_problem(label))
        key = str(key_node.value)
        if isinstance(value_node, ScalarNode) and key not in keys and key_node.tag != merge:
            keys[key] = key_node.start_mark.line + 1  # the common case, no label
            todo.append((value_node, "", depth + 1))
            continue
        name = f"{label}.{key}" if label else key
        if isinstance(value_node, MappingNode) and any(
            not isinstance(k, ScalarNode) for k, _ in value_node.value
        ):
            raise _fail(
                error,
                source,
                value_node.start_mark.line + 1,
                f"the value of `{name}` starts with `{{` and YAML reads it as a "
                f'mapping; quote the value, e.g. `{key}: "{{{{ inputs.query }}}}"`.',
            )
        if key_node.tag == merge:
            todo.append((value_node, label, depth + 1))
            continue
        if key in keys:
            problems.append(
                f"line {key_node.start_mark.line + 1}: key `{name}` is written twice "
                f"(first at line {keys[key]}); keep one of them."
            )
        else:
            keys[key] = key_node.start_mark.line + 1
        todo.append((value_node, name, depth + 1))


def _key_problem(label: str) -> str:
    where = f" under `{label}`" if label else ""
    return (
        f"a mapping or list is used as a key{where}. If this is a Jinja2 template "
        '(`{{ ... }}`), quote the whole value, e.g. `task: "{{ inputs.query }}"`.'
    )


def parse_yaml(
    text: str, *, source: str | Path, error: type[OrchestratorError]
) -> tuple[Any, list[str]]:
    """Parse one YAML document strictly; return ``(data, problems)``.

    ``problems`` lists the duplicate keys (each with its line); the caller reports them
    with its other problems. Anything that makes the document unusable (bad syntax, a
    mapping used as a key, too deep, an alias bomb, an unsupported tag, a number out of
    range) raises ``error`` naming the file and line.
    """
    import yaml
    from yaml.constructor import ConstructorError

    label = str(source)
    try:
        if "&" in text:  # an anchor, so maybe aliases: bound them before composing
            _check_events(text, label, error)
        loader = _loader_class()(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None, []
            plain = "&" not in text and _plain_and_valid(node)
            problems = [] if plain else _check_nodes(node, label, error)
            data = loader.construct_document(node)
        finally:
            loader.dispose()
    except ConstructorError as exc:
        raise error(f"`{label}`{_where(exc)}: {_problem(exc)}.", path=label) from exc
    except yaml.YAMLError as exc:
        raise error(
            f"`{label}` is not valid YAML{_where(exc)}: {_problem(exc)}.{_tab_hint(exc, text)} "
            "Fix the syntax and run again.",
            path=label,
        ) from exc
    except (RecursionError, MemoryError) as exc:  # belt and braces; the bounds come first
        raise error(f"`{label}` is too deeply nested or too large to read.", path=label) from exc
    return data, problems


def _tab_hint(exc: Any, text: str) -> str:
    """`` The line is indented with a tab ...`` when the error's line starts with a tab
    (YAML indents with spaces only; PyYAML then says only "cannot start any token")."""
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return ""
    lines = text.splitlines()
    line = lines[mark.line] if 0 <= mark.line < len(lines) else ""
    indent = line[: len(line) - len(line.lstrip(" \t"))]
    if "\t" not in indent:
        return ""
    return f" Line {mark.line + 1} is indented with a tab: YAML indents with spaces only."


def _where(exc: Any) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _problem(exc: Any) -> str:
    problem = str(getattr(exc, "problem", None) or "invalid YAML")
    context, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and cmark is not None:
        problem += f" ({context} at line {cmark.line + 1}, column {cmark.column + 1})"
    return problem


def read_yaml(
    path: str | Path, *, error: type[OrchestratorError], what: str = "file"
) -> tuple[Any, list[str], str]:
    """Read and parse a YAML file: ``(data, duplicate-key problems, text)``."""
    from engine.textio import read_text

    text = read_text(path, error=error, what=what)
    data, problems = parse_yaml(text, source=path, error=error)
    return data, problems, text


_TYPE_PROBLEM = re.compile(r"^(.*`([^`]+)` must be an? ([a-z ]+))\.$")
_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def explain_types(problems: list[str], raw: Any) -> list[str]:
    """Add to "must be a <type>" problems why a value YAML 1.1 would have typed is text.

    ``deliver: yes`` or ``timeout: 1_000`` are kept as written (see the module docstring);
    the schema then says the type is wrong, and this says what to write instead.
    """
    out = []
    for line in problems:
        m = _TYPE_PROBLEM.match(line)
        value = _lookup(raw, m.group(2)) if m else None
        if m and isinstance(value, str) and YAML11_LOOKALIKE.match(value):
            want = "`true` or `false`" if "boolean" in m.group(3) else "a plain decimal number"
            line = (
                f"{m.group(1)}: `{_short(value)}` is kept as text (this loader does not read "
                f"YAML 1.1 forms); write {want}."
            )
        out.append(line)
    return out


def _lookup(raw: Any, dotted: str) -> Any:
    node = raw
    for name, index in _PART.findall(dotted):
        if index and isinstance(node, list) and int(index) < len(node):
            node = node[int(index)]
        elif name and isinstance(node, dict) and name in node:
            node = node[name]
        else:
            return None
    return node
